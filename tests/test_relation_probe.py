"""tools/relation_probe.py: its reading of a two-object image against the caption's relation."""
from __future__ import annotations

import copy

import pytest
import torch

from cascade.data import judge
from cascade.data.shapeworld import Obj, Scene, render


@pytest.fixture(scope="module")
def probe(tools):
    return tools("relation_probe")


def test_outcomes_of_true_mirrored_and_wrong_renders(probe):
    a = Obj("circle", "red", "small", 0.3, 0.52)
    b = Obj("square", "blue", "small", 0.68, 0.48)
    scene = Scene("white", (a, b), "left of")
    mirrored = Scene("white", (Obj("circle", "red", "small", 0.68, 0.52), Obj("square", "blue", "small", 0.3, 0.48)),
                     "right of")
    stacked = Scene("white", (Obj("circle", "red", "small", 0.5, 0.3), Obj("square", "blue", "small", 0.5, 0.7)),
                    "above")
    one = Scene("white", (a,))
    assert probe.outcome(judge(render(scene, 64), scene), scene) == "right"
    assert probe.outcome(judge(render(mirrored, 64), scene), scene) == "mirrored"
    assert probe.outcome(judge(render(stacked, 64), scene), scene) == "other axis"
    assert probe.outcome(judge(render(one, 64), scene), scene) == "count != 2"
    flipped = Scene("white", (b, a), "right of")
    # the same image read against the caption that says it the other way round ("B right of A") is right too
    assert probe.outcome(judge(render(scene, 64), flipped), flipped) == "right"


def test_order_gap_pairs_noise_and_sees_only_the_text(probe, micro_pipe):
    from cascade.data.shapeworld import sample_scenes

    scenes = sample_scenes(4, 0, n_objects=2)
    assert [probe.mirrored(probe.mirrored(s)) for s in scenes] == scenes
    assert all(probe.mirrored(s).relation != s.relation for s in scenes)
    # text dropped: both captions give the same loss on the same noise and t, so the gap is exactly 0
    assert probe.order_gap(micro_pipe, scenes, "image", (0.7, 1.0), reps=1) == (0.0, 0.0, 0.0)
    # text kept: a decoder that sees its tokens gets a different loss for the mirrored caption (the
    # micro decoder's zero-initialised output layers, text adapter and cross-attention filled with noise)
    pipe = copy.deepcopy(micro_pipe)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in pipe.stages["decoder"].network.parameters():
            if not w.any():
                w.copy_(0.05 * torch.randn(w.shape, generator=g))
    mean, err, positive = probe.order_gap(pipe, scenes, "text", (0.7, 1.0), reps=2)
    assert mean != 0.0 and err > 0.0 and 0.0 <= positive <= 1.0
