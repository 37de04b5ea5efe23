"""tools/relation_probe.py: its reading of a two-object image against the caption's relation."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cascade.data.shapeworld import Obj, Scene, render

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("relation_probe", ROOT / "tools" / "relation_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_outcomes_of_true_mirrored_and_wrong_renders(probe):
    a = Obj("circle", "red", "small", 0.3, 0.52)
    b = Obj("square", "blue", "small", 0.68, 0.48)
    scene = Scene("white", (a, b), "left of")
    mirrored = Scene("white", (Obj("circle", "red", "small", 0.68, 0.52), Obj("square", "blue", "small", 0.3, 0.48)),
                     "right of")
    stacked = Scene("white", (Obj("circle", "red", "small", 0.5, 0.3), Obj("square", "blue", "small", 0.5, 0.7)),
                    "above")
    one = Scene("white", (a,))
    assert probe.outcome(render(scene, 64), scene) == "right"
    assert probe.outcome(render(mirrored, 64), scene) == "mirrored"
    assert probe.outcome(render(stacked, 64), scene) == "other axis"
    assert probe.outcome(render(one, 64), scene) == "count != 2"
    # the same image read against the caption that says it the other way round ("B right of A") is right too
    assert probe.outcome(render(scene, 64), Scene("white", (b, a), "right of")) == "right"
