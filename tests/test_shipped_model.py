"""The shipped default model (cascade/weights/shapes) follows its prompts: judged on a fixed,
seeded set of ShapeWorld captions, every stage's output must clear a floor set a little below
what the committed weights measure (docs/shipped-model.md), so that a regression in any stage
(a broken checkpoint, a sampler or conditioning change, an SR stage that smears what the decoder
drew) fails here. The floors are regression guards, not the quality targets of issue 3."""

import pytest
from PIL import Image

from cascade.cli import main
from cascade.data import caption, judge, parse_caption, score
from cascade.data.judge import accuracy
from cascade.eval.judging import pipeline_generator, shapeworld_items, twin_accuracy
from cascade.pipeline import DEFAULT_MODEL_DIR, CascadePipeline

# Per output size: a little below what the committed weights measure with this file's prompts and
# seeds (docs/shipped-model.md), so that noise in the judge, or another CPU's float rounding
# changing a few samples, does not fail CI but a broken stage does. Measured (seed 7) on the
# session-8 weights (decoder 27,401 steps, default settings): 64 px every attribute and full match
# 1.00; 256 px the same but shape and full 0.96 (23 of 24). (Session 3: colour 0.96, position 0.75,
# shape 0.42, full 0.33.) Shape and full match allow four to six misses of the 24.
FLOOR = {"background": 0.95, "colour": 0.9, "count": 0.9, "size": 0.9, "position": 0.9, "shape": 0.8, "full": 0.75}
FLOORS = {64: FLOOR, 256: FLOOR}
N_SINGLE = 24


@pytest.fixture(scope="module")
def shipped():
    assert DEFAULT_MODEL_DIR.is_dir(), f"the shipped model is missing: {DEFAULT_MODEL_DIR}"
    return CascadePipeline.from_pretrained(DEFAULT_MODEL_DIR, progress=False)


def test_shipped_stages_are_what_the_training_config_builds(shipped):
    """tools/train_shapes.sh trains configs/shapes.toml: its stage configs (networks, sampling,
    training recipe) must be the shipped folder's, or the README's reproduction claim is false."""
    from pathlib import Path

    from cascade.model_config import load_model_config

    config = load_model_config(Path(__file__).resolve().parents[1] / "configs" / "shapes.toml")
    assert set(config.stages) == set(shipped.stages)
    for role, stage in shipped.stages.items():
        assert stage.config == config.stages[role], role


def test_shipped_model_is_complete(shipped):
    assert set(shipped.stages) == {"prior", "decoder", "sr256", "sr1024"}
    assert shipped.stages["sr1024"].config.resolution == 1024
    size = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file())
    # Issue 3 asks for "at most ~60 MB". Session 16's efficient SR stages took the folder from 60.8 to
    # 62.6 MB; session 18 stored the CLIP's token embedding compactly (the 49 rows ShapeWorld's words
    # use, of 49,408: tools/export_model.py --vocabulary shapeworld), 53.2 MB. Past 60 MB fails.
    assert size < 60e6, f"shipped weights are {size / 1e6:.1f} MB"
    clip_file = DEFAULT_MODEL_DIR / "clip" / "model.safetensors"
    assert clip_file.stat().st_size < 6e6, "the shipped CLIP's token embedding is no longer compact"


@pytest.fixture(scope="module")
def judged(shipped):
    """24 seeded in-distribution single-object captions, default settings, the 64 and 256 outputs."""
    items = [it for it in shapeworld_items(54, seed=1234) if it[0] == "single_in"][:N_SINGLE]
    scenes = [s for _, s in items]
    outputs = pipeline_generator(shipped, size=256)([caption(s) for s in scenes], 7)
    return scenes, outputs, {size: [score(judge(img, s), s) for img, s in zip(outputs[size], scenes)]
                             for size in FLOORS}


@pytest.mark.parametrize("size", sorted(FLOORS))
def test_shipped_model_follows_single_object_prompts(judged, size):
    _, outputs, scores = judged
    assert outputs[size].shape == (N_SINGLE, 3, size, size)
    acc = accuracy(scores[size])
    for attr, floor in FLOORS[size].items():
        assert acc[attr] >= floor, f"{size}px {attr}: {acc[attr]:.2f} < floor {floor} ({acc})"


def test_shipped_model_beats_shuffled_prompts(judged):
    """The images match their own captions far better than someone else's: the model is conditioned."""
    scenes, outputs, scores = judged
    images, scores = outputs[64], scores[64]
    shuffled = scenes[1:] + scenes[:1]
    own = accuracy(scores)
    other = accuracy([score(judge(img, s), s) for img, s in zip(images, shuffled)])
    assert own["colour"] > other["colour"] + 0.45, (own, other)  # measured 0.96 against 0.33
    assert own["position"] > other["position"] + 0.25, (own, other)  # measured 0.75 against 0.29


# Two objects, 64 px: each object's colour and shape, the object count, their relation and the full
# match. Measured (seed 7) on the session-12 weights with the decoder's 4 candidates: background, size,
# shape, count and relation 1.00, colour 0.95 (one object of 20), full 0.90. (Session 11, a CLIP blind to
# the relation: relation 0.5, no floor; docs/shipped-model.md.)
PAIR_FLOOR = {"background": 0.95, "colour": 0.85, "shape": 0.85, "size": 0.9, "count": 0.8, "relation": 0.7,
              "full": 0.6}
N_PAIRS = 10
N_TWINS = 64


def test_shipped_model_draws_two_objects_with_their_colours_shapes_and_relation(shipped):
    scenes = [s for split, s in shapeworld_items(60, seed=1234) if split == "two_object"][:N_PAIRS]
    assert len(scenes) == N_PAIRS and all(len(s.objects) == 2 for s in scenes)
    images = pipeline_generator(shipped, size=64)([caption(s) for s in scenes], 7)[64]
    acc = accuracy([score(judge(img, s), s) for img, s in zip(images, scenes)])
    for attr, floor in PAIR_FLOOR.items():
        assert acc[attr] >= floor, f"two objects {attr}: {acc[attr]:.2f} < floor {floor} ({acc})"


def test_shipped_clip_tells_a_relation_from_its_mirror_image(shipped):
    """The model's CLIP puts a two-object render closer to its own caption than to the caption with the
    relation mirrored (and the other attributes too). It picks the decoder's candidates, so a CLIP blind
    to the relation leaves it a coin flip (sessions 1-11: 52%). Measured on the session-12 CLIP: 64
    scenes, relation and shape 0.98, colour and background 1.00."""
    scenes = [s for split, s in shapeworld_items(192, seed=1234) if split == "two_object"][:N_TWINS]
    twins = twin_accuracy(shipped.clip, scenes, seed=5)
    assert twins["relation"]["n"] == N_TWINS
    for attr, v in twins.items():
        assert v["accuracy"] >= 0.9, f"CLIP twins {attr}: {v}"


def test_cli_generate_uses_the_shipped_model_at_1024(tmp_path, capsys):
    """The README's first command: no --model, default settings, a 1024×1024 image that the judge
    reads as the prompt's colour and background."""
    prompt = "a large red circle in the center on a white background"
    out = tmp_path / "circle.png"
    assert main(["generate", prompt, "--out", str(out), "--quiet"]) == 0
    assert "note:" not in capsys.readouterr().err  # a ShapeWorld caption: no note
    image = Image.open(out)
    assert image.size == (1024, 1024) and image.mode == "RGB"
    result = score(judge(image), parse_caption(prompt))
    assert result["background"] and result["colour"], result


def test_cli_notes_prompts_outside_shapeworld(tmp_path, capsys):
    """The shipped model draws ShapeWorld only: a prompt naming none of its shapes gets a note (and
    an image); with --model the note is not given."""
    args = ["--size", "64", "--steps", "1", "--candidates", "1", "--quiet"]
    assert main(["generate", "a photo of a cat", "a red circle", "--out", str(tmp_path / "o"), *args]) == 0
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and "'a photo of a cat' names none of ShapeWorld's shapes" in err, err
    assert len(list((tmp_path / "o").iterdir())) == 2
