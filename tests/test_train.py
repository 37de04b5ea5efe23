"""The trainer on the micro config: every stage trains and exports, exact resume, atomic checkpoints,
EMA math, the loss falls on a fixed batch, bad requests refused before any work."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import default_collate

from cascade.cli import main
from cascade.config import ConfigError
from cascade.pipeline import CascadePipeline
from cascade.train import EMA, TrainConfig, latest_checkpoint, read_loss_csv, train_config_from_table

MICRO = "configs/micro.toml"
FAST = ["--quiet", "--set", "eval_size=4", "--set", "sample_count=1", "--set", "dataset_size=16"]


@pytest.fixture
def model(micro_dir, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(micro_dir, path)
    return path


def train(capsys, stage, model, run, *extra):
    code = main(["train", stage, "--config", MICRO, "--model", str(model), "--run", str(run), *FAST, *map(str, extra)])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def folder_data(path, n=6, size=48):
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = np.full((size, size + 8, 3), 30 * i, np.uint8)
        arr[8:24, 8 + i:24 + i] = rng.integers(0, 255, 3, dtype=np.uint8)
        Image.fromarray(arr).save(path / f"{i}.png")
        (path / f"{i}.txt").write_text(f"a square number {i}")
    (path / "broken.png").write_bytes(b"not a png")
    (path / "broken.txt").write_text("never loaded")
    return path


# ------------------------------------------------------------------ config and EMA
def test_train_config_defaults_and_refusals():
    c = train_config_from_table("decoder", {"batch_size": 8, "grad_accum": 2})
    assert c.micro_batch_size == 4 and c.text_drop_prob == 0.1 and c.image_drop_prob == 0.1
    assert c.decoder_text_drop_prob == 0.5 and c.mixed_precision in ("no", "bf16")
    with pytest.raises(ConfigError, match="batch_szie"):
        train_config_from_table("decoder", {"batch_szie": 8})
    with pytest.raises(ConfigError, match="not divisible"):
        train_config_from_table("decoder", {"batch_size": 6, "grad_accum": 4})
    with pytest.raises(ConfigError, match="mixed_precision"):
        train_config_from_table("prior", {"mixed_precision": "fp16"})
    with pytest.raises(ConfigError, match="image_drop_prob"):
        train_config_from_table("decoder", {"image_drop_prob": 1.5})
    with pytest.raises(ConfigError, match="unknown stage"):
        train_config_from_table("upsampler", {})
    with pytest.raises(ConfigError, match="split over 3 processes"):
        TrainConfig(batch_size=8).check_processes(3)


def test_ema_math():
    net = torch.nn.Linear(3, 2)
    net.register_buffer("count", torch.zeros(()))
    ema = EMA(net, decay=0.9, warmup=True)
    theta0 = net.weight.detach().clone()
    expected = theta0.clone()
    for n in range(30):
        with torch.no_grad():
            net.weight.add_(1.0)
            net.count.fill_(n)
        ema.update(net)
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * net.weight.detach()
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(1000) == 0.9
    assert torch.allclose(ema.params["weight"], expected, atol=1e-5)
    out = torch.nn.Linear(3, 2)
    out.register_buffer("count", torch.zeros(()))
    ema.copy_to(out)
    assert torch.allclose(out.weight, expected, atol=1e-5) and out.count.item() == 29  # buffers copied
    plain = EMA(torch.nn.Linear(1, 1, bias=False), decay=0.5, warmup=False)
    assert plain.decay_at(0) == 0.5


# ------------------------------------------------------------------ the loss falls on a fixed batch
@pytest.mark.parametrize("role", ["prior", "decoder"])
def test_loss_decreases_on_a_fixed_batch(role, micro_pipe, micro_config, micro_dir):
    from cascade.stage import Stage
    from cascade.train.data import ShapeWorldSource, build_embedding_cache, sample_generator
    from cascade.train.tasks import make_task

    B = 2 if role == "decoder" else 4  # the micro decoder runs at full 64×64 width: keep it small
    train = train_config_from_table(role, {"batch_size": B, "min_snr_gamma": 5.0, "text_drop_prob": 0.0,
                                           "image_drop_prob": 0.0, "decoder_text_drop_prob": 0.0})
    torch.manual_seed(0)
    stage = Stage(micro_config.stages[role])
    source = ShapeWorldSource(B, seed=0)
    task = make_task(role, train, micro_pipe.clip, source, source, stage)
    task.cache = build_embedding_cache(micro_pipe.clip, source, micro_dir / "clip" / "model.safetensors", None)
    batch = default_collate([task.fetch(i, sample_generator(0, i)) for i in range(B)])
    module = task.build_module().train()
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = module(*task.prepare(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses


def test_high_noise_share_draws_that_share_of_t_from_the_noisy_end(micro_config):
    from cascade.stage import Stage
    from cascade.train.data import sample_generator
    from cascade.train.tasks import StageTask

    def draws(**kw):
        task = StageTask(Stage(micro_config.stages["decoder"]), train_config_from_table("decoder", kw), None, None, None)
        return np.array([int(task._diffusion((1,), sample_generator(0, i))["t"]) for i in range(4000)]), task.T

    t, T = draws()
    assert abs((t >= 0.7 * T).mean() - 0.3) < 0.03  # uniform
    t, T = draws(high_noise_share=0.5, high_noise_from=0.7)
    assert abs((t >= 0.7 * T).mean() - (0.5 + 0.5 * 0.3)) < 0.03 and t.min() < 0.1 * T and t.max() == T - 1
    with pytest.raises(ConfigError, match="high_noise_share"):
        train_config_from_table("decoder", {"high_noise_share": 1.5})
    with pytest.raises(ConfigError, match="high_noise_from"):
        train_config_from_table("decoder", {"high_noise_from": 1.0})


def test_loss_weighting_reaches_the_stage_loss(micro_config):
    """loss_weighting = "min_snr" hands min_snr_gamma to the diffusion loss; "plain" hands it None
    (the parametrisation's own MSE, which keeps the high-noise steps that min-SNR weights ~0)."""
    from cascade.stage import Stage
    from cascade.train.tasks import DiffusionLoss, make_task

    stage = Stage(micro_config.stages["sr256"])
    assert stage.config.diffusion.parametrization == "v"
    gammas = {}
    for weighting in ("min_snr", "plain"):
        train = train_config_from_table("sr256", {"loss_weighting": weighting, "min_snr_gamma": 5.0})
        module = make_task("sr256", train, None, None, None, stage).build_module()
        assert isinstance(module, DiffusionLoss)
        gammas[weighting] = module.min_snr_gamma
    assert gammas == {"min_snr": 5.0, "plain": None}
    with pytest.raises(Exception, match="loss_weighting"):
        train_config_from_table("sr256", {"loss_weighting": "snr"})


# ------------------------------------------------------------------ every stage, end to end
@pytest.mark.parametrize("stage,extra", [
    ("clip", ["--set", "batch_size=4"]),
    ("prior", ["--set", "mixed_precision='no'", "--max-minutes", "0"]),
    ("decoder", ["--set", "mixed_precision='bf16'", "--set", "grad_accum=2", "--set", "batch_size=2"]),
    ("sr256", ["--set", "mixed_precision='no'", "--data", "FOLDER"]),
    ("sr1024", []),
])
def test_each_stage_trains_and_exports(stage, extra, model, tmp_path, capsys):
    if "FOLDER" in extra:
        extra = [str(folder_data(tmp_path / "images")) if e == "FOLDER" else e for e in extra]
    before = load_file(str(model / stage / "model.safetensors"))
    out = train(capsys, stage, model, tmp_path / "run", "--max-steps", 2, *extra)
    assert f"{stage}: step" in out
    rows = read_loss_csv(tmp_path / "run")
    assert rows and all(math.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in rows)
    if "--max-minutes" in extra:  # zero minutes: one step, then checkpoint and stop
        assert "max_minutes" in out and rows[-1]["step"] == 1
    else:
        assert [r["step"] for r in rows] == [1, 2]
    ckpt = latest_checkpoint(tmp_path / "run")
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == rows[-1]["step"] and state["role"] == stage
    # the exported weights are the checkpoint's EMA, and the folder still loads as a whole model
    after = load_file(str(model / stage / "model.safetensors"))
    ema = load_file(str(ckpt / "ema.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for k, v in after.items():
        assert torch.equal(v, ema[f"param.{k}"] if f"param.{k}" in ema else ema[f"buffer.{k}"]), k
    samples = sorted(p.name for p in (tmp_path / "run" / "samples").iterdir())
    assert any(n.endswith(".json") for n in samples)
    if stage in ("decoder", "sr256", "sr1024"):
        assert any(n.endswith(".png") for n in samples)
    pipe = CascadePipeline.from_pretrained(model, progress=False)
    assert stage == "clip" or stage in pipe.stages


# ------------------------------------------------------------------ exact resume and atomic checkpoints
def test_resume_is_exact_and_checkpoints_are_atomic(model, tmp_path, capsys):
    common = ["--set", "batch_size=2", "--set", "checkpoint_every=3", "--set", "sample_every=0",
              "--set", "log_every=1", "--set", "keep_checkpoints=2", "--set", "decoder_text_drop_prob=0.5"]
    straight_model = tmp_path / "straight_model"
    shutil.copytree(model, straight_model)
    train(capsys, "decoder", straight_model, tmp_path / "straight", "--max-steps", 6, *common)
    train(capsys, "decoder", model, tmp_path / "split", "--max-steps", 3, *common)
    # a crash mid-write leaves tmp-* (ignored), a folder without state.json is not a checkpoint
    ckpts = tmp_path / "split" / "checkpoints"
    (ckpts / "tmp-step-00000005").mkdir()
    (ckpts / "tmp-step-00000005" / "model.safetensors").write_bytes(b"garbage")
    (ckpts / "step-00000004").mkdir()
    assert latest_checkpoint(tmp_path / "split").name == "step-00000003"
    train(capsys, "decoder", model, tmp_path / "split", "--max-steps", 6, "--resume", *common)
    straight, split = read_loss_csv(tmp_path / "straight"), read_loss_csv(tmp_path / "split")
    assert [r["step"] for r in split] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in split] == [r["loss"] for r in straight]  # equal, not just close
    assert [r["lr"] for r in split] == [r["lr"] for r in straight]
    a = load_file(str(straight_model / "decoder" / "model.safetensors"))
    b = load_file(str(model / "decoder" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the exported EMA weights too
    names = sorted(p.name for p in ckpts.iterdir())
    assert "tmp-step-00000005" not in names and "step-00000006" in names
    assert len([n for n in names if (ckpts / n / "state.json").is_file()]) == 2  # keep the last 2
    # a run folder continues only the stage and recipe it was started with
    code = main(["train", "prior", "--config", MICRO, "--model", str(model), "--run", str(tmp_path / "split"),
                 "--resume", *FAST])
    assert code == 2 and "checkpoint of stage 'decoder'" in capsys.readouterr().err
    code = main(["train", "decoder", "--config", MICRO, "--model", str(model), "--run", str(tmp_path / "split"),
                 *FAST, *common])
    assert code == 2 and "--resume" in capsys.readouterr().err


# ------------------------------------------------------------------ refused before any work
def test_bad_requests_are_refused_before_work(model, tmp_path, capsys):
    run = tmp_path / "run"

    def refused(*argv, match):
        code = main(["train", *map(str, argv)])
        err = capsys.readouterr().err
        assert code == 2 and match in err, err
        assert not run.exists() or not any(run.iterdir())

    base = ["--config", MICRO, "--model", model, "--run", run]
    refused("upsampler", *base, match="unknown stage")
    refused("decoder", "--config", MICRO, "--model", tmp_path / "nowhere", "--run", run, match="model folder not found")
    refused("decoder", *base, "--set", "batch_szie=4", match="batch_szie")
    refused("decoder", *base, "--data", tmp_path / "nowhere", match="no such folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.png").write_bytes(b"corrupt")
    (empty / "a.txt").write_text("a caption")
    refused("decoder", *base, "--data", empty, match="no usable image-caption pairs")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text(open(MICRO).read().replace("[decoder.train]\n", "[decoder.train]\nlearning_rate = 1\n"))
    refused("decoder", "--config", bad_toml, "--model", model, "--run", run, match="learning_rate")
    shutil.rmtree(model / "clip")
    refused("prior", *base, match="needs the frozen CLIP")


# ------------------------------------------------------------------ distillation from a teacher stage
def test_a_student_equal_to_its_teacher_has_zero_loss_and_bad_teachers_are_refused(model, micro_dir, tmp_path,
                                                                                      capsys):
    common = ["--max-steps", 2, "--set", "batch_size=2", "--set", "log_every=1", "--set", "sample_every=0",
              "--set", "mixed_precision='no'"]
    train(capsys, "decoder", model, tmp_path / "plain", *common)
    plain = read_loss_csv(tmp_path / "plain")[0]["loss"]
    student = tmp_path / "student"
    shutil.copytree(micro_dir, student)
    train(capsys, "decoder", student, tmp_path / "taught", *common, "--set", f"teacher='{micro_dir}'")
    taught = read_loss_csv(tmp_path / "taught")
    assert plain > 1e-3 and all(r["loss"] < 1e-10 for r in taught)  # the same weights predict the same: no gradient
    # half the teacher, half the true target: at step 1 (same weights, same batch) a quarter of the plain loss
    train(capsys, "decoder", student, tmp_path / "half", *common, "--set", f"teacher='{micro_dir}'",
          "--set", "teacher_weight=0.5")
    assert read_loss_csv(tmp_path / "half")[0]["loss"] == pytest.approx(plain / 4, rel=1e-4)
    # with the guided term too: still nothing to learn from an equal teacher (a fresh copy: "half" moved the student)
    shutil.rmtree(student)
    shutil.copytree(micro_dir, student)
    train(capsys, "decoder", student, tmp_path / "guided", *common, "--set", f"teacher='{micro_dir}'",
          "--set", "teacher_guidance=3.0")
    assert all(r["loss"] < 1e-10 for r in read_loss_csv(tmp_path / "guided"))
    train(capsys, "prior", student, tmp_path / "guided-prior", *common, "--set", f"teacher='{micro_dir}'",
          "--set", "teacher_guidance=2.0")
    assert all(r["loss"] < 1e-10 for r in read_loss_csv(tmp_path / "guided-prior"))
    # a stage folder names the teacher too; a missing one, or one of another parametrization, is refused
    train(capsys, "decoder", student, tmp_path / "taught2", *common, "--set", f"teacher='{micro_dir / 'decoder'}'")
    for role, extra, match in (("decoder", ["--set", "teacher_guidance=3.0"], "needs a teacher"),
                               ("sr256", ["--set", f"teacher='{micro_dir}'", "--set", "teacher_guidance=3.0"],
                                "samples without guidance")):
        code = main(["train", role, "--config", MICRO, "--model", str(student), "--run", str(tmp_path / "r"),
                     *FAST, *extra])
        err = capsys.readouterr().err
        assert code == 2 and match in err, err
    for teacher, match in ((tmp_path / "nowhere", "holds neither"), (tmp_path / "x0", "parametrization")):
        if teacher.name == "x0":
            shutil.copytree(micro_dir, teacher)
            cfg = json.loads((teacher / "decoder" / "config.json").read_text())
            cfg["config"]["diffusion"]["parametrization"] = "x0"
            (teacher / "decoder" / "config.json").write_text(json.dumps(cfg))
        code = main(["train", "decoder", "--config", MICRO, "--model", str(student), "--run", str(tmp_path / "r"),
                     *FAST, "--set", f"teacher='{teacher}'"])
        err = capsys.readouterr().err
        assert code == 2 and match in err, err
        assert not (tmp_path / "r").exists()


def test_state_files_round_trip_without_pickle(tmp_path):
    from cascade.train.statefile import load_state, save_state
    from cascade.train.trainer import rng_state

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": rng_state(), "nested": ({1: [1.5, None, "x"]},)}
    save_state(state, tmp_path / "s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.safetensors"]
    back = load_state(tmp_path / "s")
    assert back["nested"] == ({1: [1.5, None, "x"]},)
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"]) and back["rng"]["python"] == state["rng"]["python"]
    opt2 = torch.optim.AdamW(net.parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(v, opt2.state_dict()["state"][0][k])


def test_clip_hard_negatives_double_the_contrastive_batch(micro_pipe):
    """train.hard_negatives: each item brings a rendered twin that differs in one attribute, so
    B items give 2B (image, caption) pairs; the twins are deterministic in the sample's generator."""
    from cascade.train.data import ShapeWorldSource, sample_generator
    from cascade.train.tasks import make_task

    B = 6
    train = train_config_from_table("clip", {"batch_size": B, "hard_negatives": True})
    source = ShapeWorldSource(B, seed=0)
    task = make_task("clip", train, micro_pipe.clip, source, source)
    items = [task.fetch(i, sample_generator(0, i)) for i in range(B)]
    again = task.fetch(2, sample_generator(0, 2))
    assert again["twin_caption"] == items[2]["twin_caption"]
    assert torch.equal(again["twin_image"], items[2]["twin_image"])
    images, ids = task.prepare(default_collate(items))
    assert images.shape[0] == ids.shape[0] == 2 * B
    for item in items:
        assert item["twin_caption"] != item["caption"]
        assert not torch.equal(item["twin_image"], item["image"])
    loss = task.build_module()(images, ids)
    assert math.isfinite(loss.item())


def test_stop_file_checkpoints_and_stops(model, tmp_path, capsys):
    """`touch RUN/STOP` (or SIGTERM) ends a run after its current step with a checkpoint, as
    --max-minutes does; the file is removed, so the next --resume trains on."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "STOP").touch()
    common = ["--set", "batch_size=2", "--set", "sample_every=0", "--set", "log_every=1"]
    out = train(capsys, "prior", model, run, "--max-steps", 5, *common)
    assert "stop request" in out and not (run / "STOP").exists()
    assert [r["step"] for r in read_loss_csv(run)] == [1]
    assert latest_checkpoint(run).name == "step-00000001"
    train(capsys, "prior", model, run, "--max-steps", 3, "--resume", *common)
    assert [r["step"] for r in read_loss_csv(run)] == [1, 2, 3]


def test_bf16_falls_back_to_fp32_without_native_bf16(model, tmp_path, capsys, monkeypatch):
    """On a device without native bf16 (emulated: many times slower) a bf16 recipe trains in fp32, and says so."""
    import cascade.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "native_bf16", lambda device: False)
    code = main(["train", "prior", "--config", MICRO, "--model", str(model), "--run", str(tmp_path / "run"), *FAST,
                 "--max-steps", "1", "--set", "mixed_precision='bf16'"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "no native bf16" in err and "global batch 8, no" in err, err


def test_shared_embedding_cache_encodes_a_pool_once(model, tmp_path, capsys, monkeypatch):
    """With $CASCADE_EMBEDDING_CACHE set, the decoder's run takes the prior's embeddings of the same pool
    (same CLIP, same pool) instead of encoding it again; its own run cache holds the same tensors."""
    from cascade.train.data import SHARED_CACHE_ENV

    shared = tmp_path / "shared"
    monkeypatch.setenv(SHARED_CACHE_ENV, str(shared))
    logs = {}
    for stage in ("prior", "decoder"):
        code = main(["train", stage, "--config", MICRO, "--model", str(model), "--run", str(tmp_path / stage), *FAST,
                     "--max-steps", "1", "--set", "mixed_precision='no'"])
        logs[stage] = capsys.readouterr().err
        assert code == 0, logs[stage]
    assert "encoding 16 images" in logs["prior"] and "from the shared cache" not in logs["prior"]
    assert "encoding" not in logs["decoder"] and "from the shared cache" in logs["decoder"]
    (cached,) = shared.glob("clip-embeddings-*.safetensors")
    a = load_file(str(cached))
    b = load_file(str(tmp_path / "decoder" / "cache" / "clip-embeddings.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
