"""The `cascade` command line, run in-process on the micro model."""

import numpy as np
import pytest
from PIL import Image

from cascade.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_init_and_info(tmp_path, capsys):
    code, out, _ = run(capsys, "init", "configs/micro.toml", tmp_path / "m")
    assert code == 0 and (tmp_path / "m" / "model_index.json").is_file()
    code, out, _ = run(capsys, "info", tmp_path / "m")
    assert code == 0
    for role in ("clip", "prior", "decoder", "sr256", "sr1024"):
        assert role in out
    code, _, err = run(capsys, "init", "configs/micro.toml", tmp_path / "m")
    assert code == 2 and "not empty" in err


def test_generate_files_in_prompt_order(micro_dir, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n\na blue star\n")
    code, _, err = run(capsys, "generate", "a green square", "--prompts-file", prompts, "--model", micro_dir,
                       "--size", "64", "--out", tmp_path / "o", "--quiet", "--steps", "2", "--steps", "prior=2")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    code, _, err = run(capsys, "generate", "a", "b", "-n", "2", "--model", micro_dir, "--size", "64",
                       "--out", tmp_path / "o2", "--quiet", "--steps", "2", "--grid")
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "o2").iterdir())
    assert names == ["0000_0.png", "0000_1.png", "0001_0.png", "0001_1.png", "grid.png"]
    # one prompt, --out FILE.png
    code, _, err = run(capsys, "generate", "a red circle", "--model", micro_dir, "--size", "256",
                       "--out", tmp_path / "one.png", "--quiet", "--steps", "2", "--seed", "4")
    assert code == 0, err
    assert Image.open(tmp_path / "one.png").size == (256, 256)
    code, _, err = run(capsys, "generate", "a red circle", "--model", micro_dir, "--size", "256",
                       "--out", tmp_path / "two.png", "--quiet", "--steps", "2", "--seed", "4")
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes()


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "steps"),
    (["--steps", "decoder=abc"], "not a valid int"),
    (["--guidance", "-1"], "guidance"),
    (["--sampler", "magic"], "unknown sampler"),
    (["--steps", "upscaler=3"], "unknown stage"),
    (["--candidates", "0"], "candidates must be at least 1"),
    (["--candidates", "sr1024=2"], "candidates must be 1"),
])
def test_generate_bad_options(micro_dir, tmp_path, capsys, args, message):
    code, _, err = run(capsys, "generate", "a red circle", "--model", micro_dir, "--out", tmp_path / "x", "--quiet", *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_generate_with_a_model_gives_no_shapeworld_note(micro_dir, tmp_path, capsys):
    code, _, err = run(capsys, "generate", "a photo of a cat", "--model", micro_dir, "--size", "64",
                       "--out", tmp_path / "cat.png", "--quiet", "--steps", "1")
    assert code == 0 and "note:" not in err, err


def test_generate_without_model_and_bad_model(tmp_path, capsys):
    code, _, err = run(capsys, "generate", "a", "--model", tmp_path / "none", "--out", tmp_path / "x")
    assert code == 2 and "not found" in err
    code, _, err = run(capsys, "generate", "--out", tmp_path / "x", "--model", tmp_path)
    assert code == 2 and "no prompt" in err


def test_vary_and_interpolate(micro_dir, tmp_path, capsys):
    src = tmp_path / "src.png"
    Image.new("RGBA", (50, 40), (200, 30, 30, 128)).save(src)
    code, _, err = run(capsys, "vary", src, "-n", "2", "--model", micro_dir, "--size", "64", "--out", tmp_path / "v",
                       "--quiet", "--steps", "2")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["0000.png", "0001.png", "grid.png"]
    code, _, err = run(capsys, "vary", src, "-n", "2", "--model", micro_dir, "--size", "64", "--out", tmp_path / "w",
                       "--quiet", "--steps", "2", "--eta", "0")  # from the inverted image: η = 0 draws it alike twice
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "w" / "0000.png")), np.asarray(Image.open(tmp_path / "w" / "0001.png")))
    code, _, err = run(capsys, "interpolate", src, "a blue star", "--frames", "3", "--model", micro_dir, "--size", "64",
                       "--out", tmp_path / "i", "--quiet", "--steps", "2")
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "i").iterdir())
    assert names == ["0000.png", "0001.png", "0002.png", "interpolation.gif", "strip.png"]
    assert Image.open(tmp_path / "i" / "interpolation.gif").format == "GIF"
    assert Image.open(tmp_path / "i" / "strip.png").size == (3 * 64 + 2 * 2, 64)  # frames side by side
    code, _, err = run(capsys, "interpolate", src, src, "--frames", "2", "--model", micro_dir, "--size", "64",
                       "--out", tmp_path / "j", "--quiet", "--steps", "2", "--invert")  # the same image's x_T twice
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "j" / "0000.png")), np.asarray(Image.open(tmp_path / "j" / "0001.png")))
    code, _, err = run(capsys, "interpolate", src, "a blue star", "--invert", "--model", micro_dir, "--out", tmp_path / "k")
    assert code == 2 and "two images" in err and not (tmp_path / "k").exists()
    code, _, err = run(capsys, "edit", src, "--from", "a red circle", "--to", "a blue circle", "--amount", "0,0.5",
                       "--model", micro_dir, "--size", "64", "--out", tmp_path / "e", "--quiet", "--steps", "2", "--invert")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["0000.png", "0001.png", "strip.png"]
    code, _, err = run(capsys, "edit", src, "--from", "a", "--to", "b", "--amount", "0.5,2", "--model", micro_dir,
                       "--out", tmp_path / "f")
    assert code == 2 and "--amount" in err and not (tmp_path / "f").exists()
    code, _, err = run(capsys, "vary", src, "-n", "1", "--model", micro_dir, "--size", "64", "--out", tmp_path / "n",
                       "--quiet", "--steps", "2", "--eta", "none")  # from fresh noise
    assert code == 0, err
    code, _, err = run(capsys, "vary", src, "--eta", "-1", "--model", micro_dir, "--out", tmp_path / "m")
    assert code == 2 and "--eta must be at least 0" in err and not (tmp_path / "m").exists()
    code, _, err = run(capsys, "vary", tmp_path / "missing.png", "--model", micro_dir)
    assert code == 2 and "not found" in err
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    code, _, err = run(capsys, "vary", tmp_path / "bad.jpg", "--model", micro_dir)
    assert code == 2 and "cannot read image" in err


def test_bf16_flag(micro_dir, tmp_path, capsys):
    """--bf16 takes all, none or stage names; anything else is refused before the model loads."""
    from cascade.cli import _stage_choice

    assert _stage_choice(None) is None and _stage_choice("none") is False and _stage_choice("all") is True
    assert _stage_choice("decoder, sr1024") == {"decoder", "sr1024"}
    out = tmp_path / "x.png"
    code, _, err = run(capsys, "generate", "a red circle", "--model", micro_dir, "--out", out, "--size", "64",
                       "--bf16", "decoder,sr512", "--quiet")
    assert code != 0 and "--bf16" in err and "sr512" in err and not out.exists()
    code, _, err = run(capsys, "generate", "a red circle", "--model", micro_dir, "--out", out, "--size", "64",
                       "--compile", "sr512", "--quiet")
    assert code != 0 and "--compile" in err and "sr512" in err and not out.exists()
    code, _, err = run(capsys, "generate", "a red circle", "--model", micro_dir, "--out", out, "--size", "64",
                       "--bf16", "none", "--quiet")
    assert code == 0, err
    assert out.exists()
