"""The ShapeWorld judge: validated on renders (clean, noisy, blurred; 64/256/1024 px) and on
renders of wrong scenes (one attribute changed), which must not score a full match."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from cascade.data import shapeworld as sw
from cascade.data.judge import accuracy, judge, score
from cascade.data.shapeworld import Obj, Scene, held_out_scenes, render, sample_scenes

MEASURED: dict = {}       # group -> accuracy dict (printed with -s)


def _scenes(n, seed):
    """Half training scenes, half scenes with a held-out pair; 1 and 2 objects."""
    return sample_scenes(n - n // 2, seed) + held_out_scenes(n // 2, seed + 1)


def _degrade(img: Image.Image, kind: str, rng) -> Image.Image:
    size = img.size[0]
    if kind == "noise":       # Gaussian, sigma = 8/255
        a = np.asarray(img, np.float32) + rng.standard_normal((size, size, 3), np.float32) * 8.0
        return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))
    if kind == "blur":        # radius 0.6 px at 64, scaled with the resolution
        return img.filter(ImageFilter.GaussianBlur(0.6 * size / 64))
    return img


def _run_group(size, kind, n, seed):
    rng = np.random.default_rng(seed)
    scenes = _scenes(n, seed)
    scores = [score(judge(_degrade(render(s, size), kind, rng)), s) for s in scenes]
    acc = accuracy(scores)
    MEASURED[(size, kind)] = acc
    print(f"judge {size}px {kind}: " + ", ".join(f"{k}={v:.3f}" for k, v in acc.items() if k != "n"))
    return acc, scores


@pytest.mark.parametrize("kind", ["clean", "noise", "blur"])
def test_judge_reads_renders_64(kind):
    acc, scores = _run_group(64, kind, 300, 100)
    assert {s["n_objects"] for s in scores} == {1, 2}
    assert acc["full"] >= 0.99, acc


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["clean", "noise", "blur"])
def test_judge_reads_renders_256(kind):
    acc, _ = _run_group(256, kind, 300, 200)
    assert acc["full"] >= 0.99, acc


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["clean", "noise", "blur"])
def test_judge_reads_renders_1024(kind):
    acc, _ = _run_group(1024, kind, 60, 300)
    assert acc["full"] >= 0.99, acc


def _variant(scene: Scene, rng) -> tuple[Scene, str]:
    """A scene that differs from ``scene`` in exactly one attribute (and the attribute's name)."""
    pick = lambda seq, not_: [v for v in seq if v != not_][int(rng.integers(len(seq) - 1))]
    objs = list(scene.objects)
    if len(objs) == 1:
        attr = ["background", "colour", "shape", "size", "position"][int(rng.integers(5))]
        o = objs[0]
        if attr == "background":
            return dataclasses.replace(scene, background=pick(list(sw.BACKGROUNDS), scene.background)), attr
        if attr == "position":
            old = sw.position_name(o)
            new = pick(list(sw.POSITIONS), old)
            x = o.x - sw.POSITIONS[old][0] + sw.POSITIONS[new][0]
            y = o.y - sw.POSITIONS[old][1] + sw.POSITIONS[new][1]
            return Scene(scene.background, (dataclasses.replace(o, x=x, y=y),)), attr
        values = {"colour": list(sw.COLOURS), "shape": list(sw.SHAPES), "size": list(sw.SIZES)}[attr]
        return Scene(scene.background, (dataclasses.replace(o, **{attr: pick(values, getattr(o, attr))}),)), attr
    attr = ["background", "colour", "shape", "relation"][int(rng.integers(4))]
    if attr == "background":
        return dataclasses.replace(scene, background=pick(list(sw.BACKGROUNDS), scene.background)), attr
    if attr == "relation":
        rel = pick(list(sw.RELATIONS), scene.relation)
        a, b = objs
        d = max(abs(a.x - b.x), abs(a.y - b.y))      # the along-axis distance
        dx, dy = sw.RELATION_AXIS[rel]
        a = dataclasses.replace(a, x=0.5 + dx * d / 2, y=0.5 + dy * d / 2)
        b = dataclasses.replace(b, x=0.5 - dx * d / 2, y=0.5 - dy * d / 2)
        return Scene(scene.background, (a, b), rel), attr
    i = int(rng.integers(2))
    other = objs[1 - i]
    values = list(sw.COLOURS) if attr == "colour" else list(sw.SHAPES)
    while True:
        new = dataclasses.replace(objs[i], **{attr: pick(values, getattr(objs[i], attr))})
        if (new.shape, new.colour) != (other.shape, other.colour):
            break
    objs[i] = new
    return Scene(scene.background, tuple(objs), scene.relation), attr


@pytest.mark.parametrize("size, n", [(64, 300), (256, 100)])
def test_judge_rejects_wrong_images(size, n):
    rng = np.random.default_rng(size)
    wrong, flagged = 0, 0
    for scene in _scenes(n, 400 + size):
        variant, attr = _variant(scene, rng)
        assert sw.scene_problems(variant) == [], (variant, sw.scene_problems(variant))
        s = score(judge(render(variant, size)), scene)
        wrong += not s["full"]
        flagged += s[attr] is False or (not isinstance(s[attr], bool) and s[attr] < 1)
    print(f"judge {size}px wrong images: full=False on {wrong}/{n}; changed attribute flagged on {flagged}/{n}")
    assert wrong >= 0.99 * n
    assert flagged >= 0.99 * n


def test_relation_is_order_independent():
    a = Obj("circle", "red", "small", 0.3, 0.52)
    b = Obj("square", "blue", "small", 0.68, 0.48)
    left = Scene("white", (a, b), "left of")
    right = Scene("white", (b, a), "right of")
    img = render(left, 64)
    assert score(judge(img), left)["full"] and score(judge(img), right)["full"]
    assert score(judge(img), Scene("white", (a, b), "right of"))["relation"] is False
    reading = judge(img, right)
    assert [o.shape for o in reading.objects] == ["square", "circle"] and reading.relation == "right of"


def test_judge_inputs_and_empty_images():
    scene = sample_scenes(1, 5, n_objects=1)[0]
    img = render(scene, 64)
    arr = np.array(img)
    tensor = torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1
    for x in (img, arr, arr / 255.0, tensor):
        assert score(judge(x), scene)["full"]
    blank = Image.new("RGB", (64, 64), sw.BACKGROUNDS["gray"])
    r = judge(blank)
    assert r.background == "gray" and r.count == 0
    s = score(r, scene)
    assert s["count"] is False and s["full"] is False and s["shape"] is False
    two = sample_scenes(1, 0, n_objects=2)[0]
    s2 = score(r, two)
    assert s2["relation"] is False and s2["colour"] == 0.0 and not s2["full"]


def test_judge_ignores_specks_and_counts_extra_objects():
    scene = Scene("black", (Obj("star", "yellow", "small", 0.5, 0.5),))
    arr = np.array(render(scene, 64))
    arr[5, 5] = (220, 40, 40)                     # a one-pixel speck: ignored
    assert score(judge(arr), scene)["full"]
    extra = Scene("black", (Obj("star", "yellow", "small", 0.3, 0.5), Obj("circle", "red", "small", 0.7, 0.5)), "left of")
    s = score(judge(render(extra, 64)), scene)    # two objects where one is asked for
    assert s["count"] is False and s["full"] is False and s["shape"] and s["colour"]


def test_accuracy_means():
    acc = accuracy([{"full": True, "colour": True, "n_objects": 1},
                    {"full": False, "colour": 0.5, "relation": True, "n_objects": 2}])
    assert acc == {"full": 0.5, "colour": 0.75, "relation": 1.0, "n": 2}
