"""ShapeWorld: vocabulary, geometry, captions and parsing, sampling, rendering, datasets."""
import math

import numpy as np
import pytest
import torch

from cascade.data import shapeworld as sw
from cascade.data.pool import ScenePool, ShapeWorldDataset, collate_shapeworld
from cascade.data.shapeworld import (BACKGROUNDS, COLOURS, HELD_OUT, N_TEMPLATES, Obj, Scene,
                                     caption, held_out_scenes, paraphrases, parse_caption,
                                     position_name, render, render_array, render_batch,
                                     sample_scenes, scene_at, scene_problems)


def test_vocabulary_matches_spec():
    assert BACKGROUNDS == {"white": (245, 245, 245), "gray": (128, 128, 128), "black": (20, 20, 20)}
    assert COLOURS == {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
                       "yellow": (235, 205, 40), "purple": (140, 60, 180), "orange": (240, 130, 30)}
    assert sw.SHAPES == ("circle", "square", "triangle", "star")
    assert sw.SIZES == {"small": 0.22, "large": 0.40}
    assert sw.POSITIONS == {"center": (0.5, 0.5), "left": (0.25, 0.5), "right": (0.75, 0.5),
                            "top": (0.5, 0.25), "bottom": (0.5, 0.75)}
    assert HELD_OUT == {("triangle", "green"), ("circle", "purple"), ("square", "orange"), ("star", "blue")}


def test_geometry_constants():
    assert sw.SHAPE_EXTENT["triangle"] == pytest.approx((1.0, math.sqrt(3) / 2))
    assert sw.SHAPE_EXTENT["star"][0] == pytest.approx(1.0)          # bbox exactly s wide
    assert sw.SHAPE_EXTENT["star"][1] == pytest.approx((1 + math.cos(math.radians(36))) / (2 * math.cos(math.radians(18))))
    star = sw.unit_polygon("star")
    assert star[0, 0] == pytest.approx(0.0) and star[0, 1] == pytest.approx(star[:, 1].min())  # point up
    outer, inner = star[0::2], star[1::2]
    centre = outer.mean(0)
    r_out = np.hypot(*(outer - centre).T)
    r_in = np.hypot(*(inner - centre).T)
    assert np.allclose(r_out, 0.5 / math.cos(math.radians(18)))
    assert np.allclose(r_in / r_out, sw.STAR_INNER_RATIO) and sw.STAR_INNER_RATIO == pytest.approx(0.381966, abs=1e-6)


@pytest.mark.parametrize("shape", sw.SHAPES)
def test_rendered_shape_matches_analytic_geometry(shape):
    size = 512
    scene = Scene("black", (Obj(shape, "yellow", "large", 0.43, 0.56),))
    img = render_array(scene, size).astype(np.float64)
    bg, fg = np.array(BACKGROUNDS["black"]), np.array(COLOURS["yellow"])
    alpha = ((img - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg))
    side = 0.40 * size
    assert alpha.sum() == pytest.approx(sw.SHAPE_AREA[shape] * side ** 2, rel=0.01)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    cx = (alpha * xs).sum() / alpha.sum()
    cy = (alpha * ys).sum() / alpha.sum()
    assert cx == pytest.approx(0.43 * size, abs=0.3)
    assert cy == pytest.approx(0.56 * size + sw.SHAPE_CENTROID_DY[shape] * side, abs=0.3)
    cols = np.nonzero((alpha > 0.5).any(0))[0]
    rows = np.nonzero((alpha > 0.5).any(1))[0]
    w, h = sw.SHAPE_EXTENT[shape]
    assert cols.max() - cols.min() + 1 == pytest.approx(w * side, abs=3)   # star/triangle tips are thin
    assert rows.max() - rows.min() + 1 == pytest.approx(h * side, abs=3)


def test_spec_caption_examples():
    one = Scene("white", (Obj("circle", "red", "large", 0.5, 0.5),))
    assert caption(one) == "a large red circle in the center on a white background"
    star = Scene("black", (Obj("star", "blue", "small", 0.52, 0.23),))
    assert caption(star) == "a small blue star at the top on a black background"
    two = Scene("gray", (Obj("square", "green", "small", 0.3, 0.5),
                         Obj("triangle", "yellow", "small", 0.7, 0.5)), "left of")
    assert caption(two) == "a small green square to the left of a small yellow triangle on a gray background"


def _nominal(scene):
    if len(scene.objects) == 1:
        o = scene.objects[0]
        x, y = sw.POSITIONS[position_name(o)]
        return Scene(scene.background, (Obj(o.shape, o.colour, o.size, x, y),))
    dx, dy = sw.RELATION_AXIS[scene.relation]
    h = sw.REL_NOMINAL / 2
    a, b = scene.objects
    return Scene(scene.background, (Obj(a.shape, a.colour, a.size, 0.5 + dx * h, 0.5 + dy * h),
                                    Obj(b.shape, b.colour, b.size, 0.5 - dx * h, 0.5 - dy * h)),
                 scene.relation)


def test_parse_round_trip_all_templates():
    scenes = sample_scenes(300, 1, allow_held_out=True)
    assert {len(s.objects) for s in scenes} == {1, 2}
    for s in scenes:
        texts = paraphrases(s)
        assert len(texts) == N_TEMPLATES and texts[0] == caption(s) and len(set(texts)) == N_TEMPLATES
        for t in texts:
            assert parse_caption(t) == _nominal(s), t
        assert scene_problems(parse_caption(texts[0])) == []


def test_parse_is_lenient_about_case_punctuation_and_spelling():
    s = parse_caption("A large Purple Circle in the centre, on a grey background.")
    assert s == Scene("gray", (Obj("circle", "purple", "large", 0.5, 0.5),))


@pytest.mark.parametrize("text, words", [
    ("a red circle in the center on a white background", "no size"),
    ("a large circle in the center on a white background", "no colour"),
    ("a large red circle in the center", "background"),
    ("a large red hexagon in the center on a white background", "hexagon"),
    ("a large red circle on a white background", "position"),
    ("a small red circle a small blue square on a white background", "relation"),
    ("a large red circle to the left of a small blue square on a white background", "small objects only"),
    ("a small red circle to the left of on a white background", "relation"),
])
def test_parse_errors_name_the_problem(text, words):
    with pytest.raises(ValueError, match=words):
        parse_caption(text)


def test_sampling_is_deterministic_and_random_access():
    a, b = sample_scenes(200, 7), sample_scenes(200, 7)
    assert a == b
    assert a != sample_scenes(200, 8)
    assert sample_scenes(50, 7) == a[:50]
    assert scene_at(7, 123) == a[123]
    assert held_out_scenes(20, 3) == held_out_scenes(20, 3)


def test_sampled_scenes_follow_the_spec():
    scenes = sample_scenes(3000, 0)
    assert not any(sw.scene_has_held_out(s) for s in scenes)
    for s in scenes:
        assert scene_problems(s) == [], (s, scene_problems(s))
    ones = [s for s in scenes if len(s.objects) == 1]
    twos = [s for s in scenes if len(s.objects) == 2]
    assert 0.4 < len(ones) / len(scenes) < 0.6
    assert {s.relation for s in twos} == set(sw.RELATIONS)
    assert {position_name(s.objects[0]) for s in ones} == set(sw.POSITIONS)
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    assert {(o.shape, o.colour) for s in scenes for o in s.objects} == set(sw.TRAIN_PAIRS)
    jit = np.array([[o.x - sw.POSITIONS[position_name(o)][0], o.y - sw.POSITIONS[position_name(o)][1]]
                    for s in ones for o in s.objects])
    assert np.abs(jit).max() <= sw.JITTER and np.abs(jit).max() > 0.035   # jitter used, in range


def test_held_out_only_when_asked():
    allowed = sample_scenes(2000, 5, allow_held_out=True)
    assert any(sw.scene_has_held_out(s) for s in allowed)
    held = held_out_scenes(300, 5)
    assert all(sw.scene_has_held_out(s) for s in held)
    assert {len(s.objects) for s in held} == {1, 2}
    assert all(scene_problems(s) == [] for s in held)
    assert {(o.shape, o.colour) for s in held for o in s.objects} >= set(HELD_OUT)


def test_render_pixel_colours():
    for s in sample_scenes(60, 2, allow_held_out=True):
        for size in (64, 256):
            img = render_array(s, size)
            assert img.shape == (size, size, 3) and img.dtype == np.uint8
            assert tuple(img[0, 0]) == BACKGROUNDS[s.background]
            assert tuple(img[-1, -1]) == BACKGROUNDS[s.background]
            for o in s.objects:
                px = img[int(o.y * size), int(o.x * size)]
                assert tuple(px) == COLOURS[o.colour], (caption(s), size, px)
    im = render(sample_scenes(1, 0)[0], 96)
    assert im.mode == "RGB" and im.size == (96, 96)


def test_same_layout_at_every_resolution():
    for s in sample_scenes(4, 9, n_objects=2) + sample_scenes(4, 9, n_objects=1):
        small = render_array(s, 64).astype(np.float64)
        big = render_array(s, 1024).reshape(64, 16, 64, 16, 3).mean((1, 3))
        mid = render_array(s, 256).reshape(64, 4, 64, 4, 3).mean((1, 3))
        assert np.abs(big - small).mean() < 0.2 and np.abs(big - small).max() < 12
        assert np.abs(mid - small).mean() < 0.2 and np.abs(mid - small).max() < 12


def test_render_batch_matches_render():
    scenes = sample_scenes(20, 4)
    batch = render_batch(scenes, 64)
    assert batch.shape == (20, 64, 64, 3)
    for i, s in enumerate(scenes):
        np.testing.assert_array_equal(batch[i], render_array(s, 64))


def test_scene_validation():
    with pytest.raises(ValueError, match="hexagon"):
        Obj("hexagon", "red", "small", 0.5, 0.5)
    with pytest.raises(ValueError, match="relation"):
        Scene("white", (Obj("circle", "red", "small", 0.3, 0.5), Obj("star", "red", "small", 0.7, 0.5)))
    s = sample_scenes(5, 0)
    assert [sw.scene_from_dict(sw.scene_to_dict(x)) for x in s] == s


def test_shapeworld_dataset_and_pool(tmp_path):
    ds = ShapeWorldDataset(40, seed=3, resolution=32, captions="paraphrase")
    assert ds.pool is not None and ds.pool.shape == (40, 32, 32, 3)
    img, cap, scene = ds[5]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert -1.0 <= img.min() and img.max() <= 1.0
    assert parse_caption(cap) == _nominal(scene)
    assert len({ds.captions[i] != caption(ds.scenes[i]) for i in range(40)}) == 2  # some paraphrased
    again = ShapeWorldDataset(40, seed=3, resolution=32, captions="paraphrase", pool=False)
    img2, cap2, scene2 = again[5]
    assert torch.equal(img, img2) and cap == cap2 and scene == scene2
    held = ShapeWorldDataset(10, seed=3, resolution=32, held_out=True)
    assert all(sw.scene_has_held_out(s) for s in held.scenes)
    assert not any(sw.scene_has_held_out(s) for s in ds.scenes)
    images, caps, scenes = collate_shapeworld([ds[i] for i in range(4)])
    assert images.shape == (4, 3, 32, 32) and len(caps) == len(scenes) == 4
    pool = ScenePool.build(12, 1, 32)
    pool.save(tmp_path / "pool")
    back = ScenePool.load(tmp_path / "pool")
    assert back.scenes == pool.scenes and back.captions == pool.captions
    np.testing.assert_array_equal(np.asarray(back.images), pool.images)


def test_edit_scene_changes_exactly_one_attribute():
    """A twin (CLIP's hard negative) differs from its scene in the one edited attribute, as its
    caption reads back, keeps the layout rules and brings in no held-out pair."""
    from cascade.data.shapeworld import EDITABLE, edit_scene, scene_has_held_out

    def attributes(scene):
        parsed = parse_caption(caption(scene))
        out = {"background": parsed.background, "relation": parsed.relation}
        for k, o in enumerate(parsed.objects):
            out.update({f"{a}{k}": getattr(o, a) for a in ("colour", "shape", "size")})
            if len(parsed.objects) == 1:
                out["position"] = position_name(o)
        return out

    rng = np.random.default_rng(0)
    seen = set()
    for scene in sample_scenes(400, seed=11):
        twin = edit_scene(scene, rng)
        assert not scene_problems(twin) and not scene_has_held_out(twin)
        a, b = attributes(scene), attributes(twin)
        changed = {k.rstrip("01") for k in a if a[k] != b[k]}
        assert len(changed) == 1, (caption(scene), caption(twin))
        seen |= changed
    assert seen == set(EDITABLE)
    single = sample_scenes(1, seed=11, n_objects=1)[0]
    with pytest.raises(ValueError, match="relation"):
        edit_scene(single, rng, "relation")
