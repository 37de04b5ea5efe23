"""ShapeWorld: scenes, captions, parsing, seeded sampling and rendering.

Implements /work/shared/SHAPEWORLD.md exactly. A scene is a background and one or two
objects whose bounding-box centres are given as fractions of the canvas, so one scene renders
with the same layout at any resolution. Rendering computes each pixel's coverage by the shape
(a box filter over the pixel: ``ky`` sub-rows per row, the exact covered length along each
sub-row) and blends the flat colour over the background, so edges are anti-aliased and the
geometry carries no rasteriser bias (numpy only; ~9k images/s at 64 px on one thread).

Geometry (``s`` = the object's size as a fraction of the canvas side, 0.22 small / 0.40 large):

- circle: diameter ``s``; square: side ``s``;
- triangle: equilateral, apex up, side ``s``, height ``0.866 s`` (bbox ``s`` wide);
- star: five points, one up; the outer points lie on a circle of radius
  ``R = s / (2 cos 18°)`` so the bbox is exactly ``s`` wide (and ``0.951 s`` tall); the inner
  vertices lie at ``STAR_INNER_RATIO * R`` with ``STAR_INNER_RATIO = sin 18° / sin 54° ≈ 0.382``,
  the regular pentagram (collinear edges; fill ≈ 0.33 of its bbox).

An object's ``(x, y)`` is always the centre of its bounding box (not of its circumcircle).
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

__all__ = [
    "BACKGROUNDS", "COLOURS", "SHAPES", "SIZES", "POSITIONS", "POSITION_PHRASES", "RELATIONS",
    "RELATION_PHRASES", "MIRRORED_RELATION", "HELD_OUT", "JITTER", "STAR_INNER_RATIO", "TEMPLATES", "N_TEMPLATES",
    "Obj", "Scene", "position_name", "is_held_out", "scene_has_held_out", "scene_problems",
    "caption", "paraphrases", "vocabulary_captions", "parse_caption", "sample_scene", "sample_scenes", "scene_at",
    "held_out_scenes", "edit_scene", "editable_attributes", "EDITABLE", "render", "render_array",
    "render_batch", "scene_to_dict",
    "scene_from_dict", "unit_polygon", "SHAPE_EXTENT", "SHAPE_AREA", "SHAPE_CENTROID_DY",
    "default_supersample", "object_coverage",
]

# ---------------------------------------------------------------------------- vocabulary
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245), "gray": (128, 128, 128), "black": (20, 20, 20)}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (235, 205, 40), "purple": (140, 60, 180), "orange": (240, 130, 30)}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
SIZES: dict[str, float] = {"small": 0.22, "large": 0.40}   # larger bbox side / canvas side
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5), "left": (0.25, 0.5), "right": (0.75, 0.5),
    "top": (0.5, 0.25), "bottom": (0.5, 0.75)}
POSITION_PHRASES: dict[str, str] = {
    "center": "in the center", "left": "on the left", "right": "on the right",
    "top": "at the top", "bottom": "at the bottom"}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
RELATION_PHRASES: dict[str, str] = {
    "left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
MIRRORED_RELATION: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
RELATION_AXIS = {"left of": (-1.0, 0.0), "right of": (1.0, 0.0), "above": (0.0, -1.0),
                 "below": (0.0, 1.0)}   # direction from the second object to the first (y down)
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("triangle", "green"), ("circle", "purple"), ("square", "orange"), ("star", "blue")})
JITTER = 0.04                       # single objects: each coordinate jittered by up to ±0.04
REL_DIST = (0.25, 0.5)              # relation: distance along the axis (canvas fractions)
REL_ACROSS = 0.1                    # relation: at most this far across the axis
REL_NOMINAL = 0.375                 # parsed relation scenes: nominal along-axis distance
STAR_INNER_RATIO = math.sin(math.radians(18)) / math.sin(math.radians(54))   # ≈ 0.381966

ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((s, c) for s in SHAPES for c in COLOURS)
TRAIN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p not in HELD_OUT)
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p in HELD_OUT)


# ---------------------------------------------------------------------------- geometry
def _star_vertices() -> np.ndarray:
    radius = 0.5 / math.cos(math.radians(18))          # bbox exactly 1 wide
    pts = []
    for i in range(10):
        ang = math.radians(-90 + 36 * i)                 # start at the top point, y down
        r = radius if i % 2 == 0 else radius * STAR_INNER_RATIO
        pts.append((r * math.cos(ang), r * math.sin(ang)))
    return np.array(pts)


def _centre_bbox(pts: np.ndarray) -> np.ndarray:
    lo, hi = pts.min(0), pts.max(0)
    return pts - (lo + hi) / 2


_H = math.sqrt(3) / 2
_UNIT_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]),
    "triangle": np.array([(0.0, -_H / 2), (0.5, _H / 2), (-0.5, _H / 2)]),
    "star": _centre_bbox(_star_vertices()),
}


def unit_polygon(shape: str) -> np.ndarray | None:
    """Vertices (V, 2) of ``shape`` with size 1 centred on its bbox centre (y down); None for circle."""
    return None if shape == "circle" else _UNIT_POLYGONS[shape].copy()


def _polygon_area_centroid(p: np.ndarray) -> tuple[float, float, float]:
    x, y = p[:, 0], p[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    return (float(abs(area)), float(((x + xn) * cross).sum() / (6 * area)),
            float(((y + yn) * cross).sum() / (6 * area)))


SHAPE_EXTENT: dict[str, tuple[float, float]] = {"circle": (1.0, 1.0)}   # bbox (w, h) at size 1
SHAPE_AREA: dict[str, float] = {"circle": math.pi / 4}                 # area at size 1
SHAPE_CENTROID_DY: dict[str, float] = {"circle": 0.0}                  # centroid below bbox centre
for _k, _p in _UNIT_POLYGONS.items():
    SHAPE_EXTENT[_k] = tuple(float(v) for v in (_p.max(0) - _p.min(0)))
    SHAPE_AREA[_k], _, SHAPE_CENTROID_DY[_k] = _polygon_area_centroid(_p)


# ---------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class Obj:
    """One object; ``x, y`` = bounding-box centre as fractions of the canvas (y down)."""
    shape: str
    colour: str
    size: str
    x: float
    y: float

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; expected one of {tuple(COLOURS)}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; expected one of {tuple(SIZES)}")

    @property
    def extent(self) -> tuple[float, float]:
        """Bounding-box (width, height) as canvas fractions."""
        w, h = SHAPE_EXTENT[self.shape]
        return w * SIZES[self.size], h * SIZES[self.size]


@dataclass(frozen=True)
class Scene:
    """A background and one or two objects; ``relation`` (two objects only) is the first's to the second."""
    background: str
    objects: tuple[Obj, ...]
    relation: str | None = None

    def __post_init__(self):
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {tuple(BACKGROUNDS)}")
        if not isinstance(self.objects, tuple):
            object.__setattr__(self, "objects", tuple(self.objects))
        if len(self.objects) not in (1, 2):
            raise ValueError(f"a scene has 1 or 2 objects, got {len(self.objects)}")
        if len(self.objects) == 2 and self.relation not in RELATIONS:
            raise ValueError(f"two-object scene needs a relation in {RELATIONS}, got {self.relation!r}")
        if len(self.objects) == 1 and self.relation is not None:
            raise ValueError("a one-object scene has no relation")


def position_name(obj: Obj) -> str:
    """The nearest of the five position anchors to the object's bbox centre."""
    return min(POSITIONS, key=lambda k: (POSITIONS[k][0] - obj.x) ** 2 + (POSITIONS[k][1] - obj.y) ** 2)


def is_held_out(obj: Obj) -> bool:
    return (obj.shape, obj.colour) in HELD_OUT


def scene_has_held_out(scene: Scene) -> bool:
    return any(is_held_out(o) for o in scene.objects)


def scene_problems(scene: Scene) -> list[str]:
    """Ways ``scene`` breaks the spec's layout rules (empty when it follows them)."""
    out = []
    boxes = []
    for i, o in enumerate(scene.objects):
        w, h = o.extent
        box = (o.x - w / 2, o.y - h / 2, o.x + w / 2, o.y + h / 2)
        boxes.append(box)
        if box[0] < 0 or box[1] < 0 or box[2] > 1 or box[3] > 1:
            out.append(f"object {i} not fully inside the canvas")
    if len(scene.objects) == 2:
        a, b = scene.objects
        (x0, y0, x1, y1), (u0, v0, u1, v1) = boxes
        if x0 < u1 and u0 < x1 and y0 < v1 and v0 < y1:
            out.append("objects overlap")
        if (a.shape, a.colour) == (b.shape, b.colour):
            out.append("same (shape, colour) twice")
        if a.size != "small" or b.size != "small":
            out.append("two-object scenes have small objects only")
        dx, dy = RELATION_AXIS[scene.relation]
        along = (a.x - b.x) * dx + (a.y - b.y) * dy
        across = abs((a.x - b.x) * dy) + abs((a.y - b.y) * dx)
        if not REL_DIST[0] - 1e-9 <= along <= REL_DIST[1] + 1e-9:
            out.append(f"along-axis distance {along:.3f} outside {REL_DIST}")
        if across > REL_ACROSS + 1e-9:
            out.append(f"across-axis offset {across:.3f} > {REL_ACROSS}")
    else:
        o = scene.objects[0]
        px, py = POSITIONS[position_name(o)]
        if abs(o.x - px) > JITTER + 1e-9 or abs(o.y - py) > JITTER + 1e-9:
            out.append("single object further than the jitter from every anchor")
    return out


def scene_to_dict(scene: Scene) -> dict:
    return {"background": scene.background, "relation": scene.relation,
            "objects": [dict(shape=o.shape, colour=o.colour, size=o.size, x=o.x, y=o.y)
                        for o in scene.objects]}


def scene_from_dict(d: dict) -> Scene:
    return Scene(d["background"], tuple(Obj(**o) for o in d["objects"]), d.get("relation"))


# ---------------------------------------------------------------------------- captions
TEMPLATES: tuple[str, ...] = (
    "{body} on a {bg} background",          # 0: canonical
    "{body} against a {bg} background",
    "on a {bg} background, {body}",
    "a {bg} background with {body}",
    "{body}, {bg} background",
)
N_TEMPLATES = len(TEMPLATES)


def _noun(o: Obj) -> str:
    return f"a {o.size} {o.colour} {o.shape}"


def caption(scene: Scene, template: int = 0) -> str:
    """The caption of ``scene`` from template ``template`` (0 = the canonical form)."""
    if len(scene.objects) == 1:
        o = scene.objects[0]
        body = f"{_noun(o)} {POSITION_PHRASES[position_name(o)]}"
    else:
        a, b = scene.objects
        body = f"{_noun(a)} {RELATION_PHRASES[scene.relation]} {_noun(b)}"
    return TEMPLATES[template].format(body=body, bg=scene.background)


def paraphrases(scene: Scene) -> list[str]:
    """Every template's caption of ``scene``; element 0 is the canonical caption."""
    return [caption(scene, t) for t in range(N_TEMPLATES)]


def vocabulary_captions() -> list[str]:
    """Captions that together hold every word the caption templates write and the parser reads:
    each template over each value of each attribute, and the parser's aliases (plurals, "big",
    "in the middle", "grey", "centre", ...). The words a CLIP trained on ShapeWorld has seen."""
    out = []
    for t in TEMPLATES:
        for size, colour, shape, bg in itertools.product(SIZES, COLOURS, SHAPES, BACKGROUNDS):
            out.append(t.format(body=f"a {size} {colour} {shape} in the center", bg=bg))
        for phrase in (*POSITION_PHRASES.values(), *RELATION_PHRASES.values()):
            out.append(t.format(body=f"a small red circle {phrase} a large blue square", bg="white"))
    aliases = [*_WORDS_SHAPE, *_POS_ALIASES, *_REL_ALIASES, *_FILLER, "big", "grey", "centre"]
    return out + [f"{a} on a white background" for a in aliases]


_WORDS_SHAPE = {"circle": "circle", "circles": "circle", "square": "square", "squares": "square",
                "triangle": "triangle", "triangles": "triangle", "star": "star", "stars": "star"}
_RE_BG = re.compile(r"\b(white|gray|black) background\b")
_RE_REL = re.compile(r"\b(to the left of|to the right of|left of|right of|above|below)\b")
_RE_POS = re.compile(r"\b(in the center|in the middle|on the left|on the right|at the top|at the bottom)\b")
_RE_OBJ = re.compile(r"\b(?:(small|large|big) )?(?:(" + "|".join(COLOURS) + r") )?(circle|square|triangle|star)s?\b")
_POS_ALIASES = {"in the center": "center", "in the middle": "center", "on the left": "left",
                "on the right": "right", "at the top": "top", "at the bottom": "bottom"}
_REL_ALIASES = {"to the left of": "left of", "left of": "left of", "to the right of": "right of",
                "right of": "right of", "above": "above", "below": "below"}
_FILLER = {"a", "an", "on", "against", "with", "and", "the", "there", "is", "of", "in", "at", "to"}


def _normalise(text: str) -> str:
    t = text.lower().replace("grey", "gray").replace("centre", "center")
    t = re.sub(r"[^a-z ]+", " ", t)
    return " ".join(t.split())


def parse_caption(text: str) -> Scene:
    """Parse a canonical caption (or a paraphrase) into a Scene at nominal, un-jittered positions.

    Raises ValueError naming what could not be parsed.
    """
    t = _normalise(text)
    spans: list[tuple[int, int]] = []
    bgs = _RE_BG.findall(t)
    if len(bgs) != 1:
        raise ValueError(f"caption {text!r}: expected one background phrase "
                         f"('on a white|gray|black background'), found {len(bgs)}")
    spans += [m.span() for m in _RE_BG.finditer(t)]
    objs = list(_RE_OBJ.finditer(t))
    if not objs or len(objs) > 2:
        raise ValueError(f"caption {text!r}: expected 1 or 2 objects like 'a small red circle', "
                         f"found {len(objs)}")
    parsed = []
    for m in objs:
        size, colour, shape = m.group(1), m.group(2), m.group(3)
        if size is None:
            raise ValueError(f"caption {text!r}: no size (small|large) for object {m.group(0)!r}")
        if colour is None:
            raise ValueError(f"caption {text!r}: no colour ({'|'.join(COLOURS)}) for object {m.group(0)!r}")
        parsed.append((_WORDS_SHAPE[shape], colour, "large" if size == "big" else size))
        spans.append(m.span())
    rels = list(_RE_REL.finditer(t))
    poss = list(_RE_POS.finditer(t))
    spans += [m.span() for m in rels] + [m.span() for m in poss]
    leftover = list(t)
    for a, b in spans:
        leftover[a:b] = [" "] * (b - a)
    unknown = [w for w in "".join(leftover).split() if w not in _FILLER]
    if unknown:
        raise ValueError(f"caption {text!r}: could not parse the words {unknown}")
    bg = bgs[0]
    if len(parsed) == 1:
        if rels:
            raise ValueError(f"caption {text!r}: a relation ({rels[0].group(0)!r}) needs two objects")
        if len(poss) != 1:
            raise ValueError(f"caption {text!r}: expected one position phrase "
                             f"({', '.join(repr(p) for p in POSITION_PHRASES.values())}), found {len(poss)}")
        x, y = POSITIONS[_POS_ALIASES[poss[0].group(0)]]
        shape, colour, size = parsed[0]
        return Scene(bg, (Obj(shape, colour, size, x, y),), None)
    if poss:
        raise ValueError(f"caption {text!r}: a position phrase ({poss[0].group(0)!r}) "
                         f"cannot go with two objects")
    between = [m for m in rels if objs[0].end() <= m.start() and m.end() <= objs[1].start()]
    if len(rels) != 1 or len(between) != 1:
        raise ValueError(f"caption {text!r}: expected one relation phrase "
                         f"({', '.join(repr(p) for p in RELATION_PHRASES.values())}) between the objects")
    relation = _REL_ALIASES[rels[0].group(0)]
    if any(p[2] != "small" for p in parsed):
        raise ValueError(f"caption {text!r}: two-object scenes have small objects only")
    dx, dy = RELATION_AXIS[relation]
    h = REL_NOMINAL / 2
    a = Obj(*parsed[0], 0.5 + dx * h, 0.5 + dy * h)
    b = Obj(*parsed[1], 0.5 - dx * h, 0.5 - dy * h)
    return Scene(bg, (a, b), relation)


# ---------------------------------------------------------------------------- sampling
def _pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


def sample_scene(rng: np.random.Generator | int, *, n_objects: int | None = None,
                 allow_held_out: bool = False, only_held_out: bool = False) -> Scene:
    """One random scene per the spec.

    ``n_objects``: 1, 2 or None (either, with equal probability). Held-out (shape, colour)
    pairs never appear unless ``allow_held_out``; ``only_held_out`` samples scenes that
    contain at least one held-out pair (for evaluation).
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    if n_objects is None:
        n_objects = 1 + int(rng.integers(2))
    if n_objects not in (1, 2):
        raise ValueError(f"n_objects must be 1, 2 or None, got {n_objects}")
    pairs = ALL_PAIRS if (allow_held_out or only_held_out) else TRAIN_PAIRS
    background = _pick(rng, tuple(BACKGROUNDS))
    if n_objects == 1:
        shape, colour = _pick(rng, HELD_OUT_PAIRS if only_held_out else pairs)
        size = _pick(rng, tuple(SIZES))
        px, py = POSITIONS[_pick(rng, tuple(POSITIONS))]
        jx, jy = rng.uniform(-JITTER, JITTER, 2)
        return Scene(background, (Obj(shape, colour, size, float(px + jx), float(py + jy)),), None)
    while True:
        p1, p2 = _pick(rng, pairs), _pick(rng, pairs)
        if p1 != p2 and (not only_held_out or p1 in HELD_OUT or p2 in HELD_OUT):
            break
    relation = _pick(rng, RELATIONS)
    dist = float(rng.uniform(*REL_DIST))
    across = float(rng.uniform(-REL_ACROSS, REL_ACROSS))
    half = SIZES["small"] / 2
    # pair midpoint: along the axis anywhere that keeps both inside; across it, near the middle
    mid_along = float(rng.uniform(half + dist / 2, 1 - half - dist / 2))
    mid_across = float(rng.uniform(0.3, 0.7))
    dx, dy = RELATION_AXIS[relation]
    if dx:   # horizontal relation: along = x
        a_xy = (mid_along + dx * dist / 2, mid_across + across / 2)
        b_xy = (mid_along - dx * dist / 2, mid_across - across / 2)
    else:
        a_xy = (mid_across + across / 2, mid_along + dy * dist / 2)
        b_xy = (mid_across - across / 2, mid_along - dy * dist / 2)
    a = Obj(p1[0], p1[1], "small", *a_xy)
    b = Obj(p2[0], p2[1], "small", *b_xy)
    return Scene(background, (a, b), relation)


EDITABLE = ("colour", "shape", "size", "position", "background", "relation")


def editable_attributes(scene: Scene) -> tuple[str, ...]:
    """The EDITABLE attributes that apply to ``scene``: size and position to single objects, relation to pairs."""
    if len(scene.objects) == 2:
        return ("colour", "shape", "background", "relation")
    return ("colour", "shape", "size", "position", "background")


def edit_scene(scene: Scene, rng: np.random.Generator | int, attribute: str | None = None) -> Scene:
    """A twin of ``scene`` that differs in exactly one attribute (a hard negative for CLIP training).

    ``attribute`` is one of EDITABLE (default: a random one that applies; ``relation`` only to
    two-object scenes, ``size`` and ``position`` only to single objects). A colour or shape edit of a
    two-object scene changes one of the objects. A relation edit mirrors both objects across the
    canvas centre on the relation's axis, so the relation flips (left of ↔ right of, above ↔ below)
    and the layout stays legal. The twin never holds a held-out (shape, colour) pair that the scene
    does not, and it obeys the layout rules whenever the scene does.
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    allowed = editable_attributes(scene)
    if attribute is None:
        attribute = _pick(rng, allowed)
    if attribute not in allowed:
        raise ValueError(f"cannot edit {attribute!r} of a {len(scene.objects)}-object scene; "
                         f"expected one of {allowed}")
    if attribute == "background":
        return replace(scene, background=_pick(rng, tuple(b for b in BACKGROUNDS if b != scene.background)))
    if attribute == "relation":
        dx, _ = RELATION_AXIS[scene.relation]
        objs = tuple(replace(o, x=1 - o.x) if dx else replace(o, y=1 - o.y) for o in scene.objects)
        return replace(scene, objects=objs, relation=MIRRORED_RELATION[scene.relation])
    k = int(rng.integers(len(scene.objects)))
    o = scene.objects[k]
    if attribute == "position":
        here = position_name(o)
        px, py = POSITIONS[_pick(rng, tuple(p for p in POSITIONS if p != here))]
        new = replace(o, x=float(px + o.x - POSITIONS[here][0]), y=float(py + o.y - POSITIONS[here][1]))
    elif attribute == "size":
        new = replace(o, size=_pick(rng, tuple(s for s in SIZES if s != o.size)))
    else:
        values = COLOURS if attribute == "colour" else SHAPES
        others = {(p.shape, p.colour) for i, p in enumerate(scene.objects) if i != k}
        options = [v for v in values if v != getattr(o, attribute)
                   and (pair := (v, o.colour) if attribute == "shape" else (o.shape, v)) not in others
                   and (pair not in HELD_OUT or is_held_out(o))]
        new = replace(o, **{attribute: _pick(rng, tuple(options))})
    objs = list(scene.objects)
    objs[k] = new
    return replace(scene, objects=tuple(objs))


_STREAM_TRAIN, _STREAM_HELD_OUT = 0, 1


def scene_at(seed: int, index: int, *, n_objects: int | None = None, allow_held_out: bool = False,
             only_held_out: bool = False) -> Scene:
    """Scene number ``index`` of the stream ``seed``: random access, independent of any other index."""
    stream = _STREAM_HELD_OUT if only_held_out else _STREAM_TRAIN
    rng = np.random.default_rng((int(seed), stream, int(index)))
    return sample_scene(rng, n_objects=n_objects, allow_held_out=allow_held_out,
                        only_held_out=only_held_out)


def sample_scenes(n: int, seed: int, *, n_objects: int | None = None,
                  allow_held_out: bool = False) -> list[Scene]:
    """``n`` scenes, deterministic for ``seed``; element i equals ``scene_at(seed, i, ...)``."""
    return [scene_at(seed, i, n_objects=n_objects, allow_held_out=allow_held_out) for i in range(n)]


def held_out_scenes(n: int, seed: int, *, n_objects: int | None = None) -> list[Scene]:
    """``n`` scenes that each contain at least one held-out (shape, colour) pair (evaluation)."""
    return [scene_at(seed, i, n_objects=n_objects, only_held_out=True) for i in range(n)]


# ---------------------------------------------------------------------------- rendering
_EDGES: dict[str, tuple[np.ndarray, ...]] = {}
for _k, _p in _UNIT_POLYGONS.items():
    _q = np.roll(_p, -1, axis=0)
    _keep = np.abs(_p[:, 1] - _q[:, 1]) > 1e-9          # horizontal edges never cross a row
    _EDGES[_k] = (_p[_keep, 0], _p[_keep, 1], _q[_keep, 0], _q[_keep, 1])


def default_supersample(size: int) -> int:
    """Sub-rows per pixel row: 16 up to 128 px, 8 up to 256, 4 above (coverage along x is exact)."""
    return 16 if size <= 128 else 8 if size <= 256 else 4


def object_coverage(shape: str, cx: float, cy: float, side: float, *, ky: int = 8,
                    canvas: tuple[int, int] | None = None) -> tuple[int, int, np.ndarray]:
    """Anti-aliased coverage (fraction of each pixel inside ``shape``), as (y0, x0, patch (h, w)).

    ``cx, cy`` (bbox centre) and ``side`` (size) are in pixels; pixel (i, j) spans
    [j, j+1] × [i, i+1]. Each pixel row is sampled at ``ky`` sub-rows, and along each sub-row
    the covered length of every pixel is exact (scanline intervals), so edges are
    anti-aliased with no sampling bias and the layout is the same at every resolution.
    ``canvas`` = (height, width) clips the patch to the canvas.
    """
    w, h = SHAPE_EXTENT[shape]
    x0, x1 = math.floor(cx - w * side / 2), math.ceil(cx + w * side / 2)
    y0, y1 = math.floor(cy - h * side / 2), math.ceil(cy + h * side / 2)
    if canvas is not None:
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, canvas[1]), min(y1, canvas[0])
        if x1 <= x0 or y1 <= y0:
            return y0, x0, np.zeros((0, 0))
    ys = (np.arange((y1 - y0) * ky) + 0.5) / ky + y0          # sub-row centres (n,)
    if shape == "circle":
        r = side / 2
        d = r * r - (ys - cy) ** 2
        half = np.sqrt(np.maximum(d, 0.0))
        lo, hi = (cx - half)[:, None], np.where(d > 0, cx + half, cx - half)[:, None]
    else:
        ex1, ey1, ex2, ey2 = _EDGES[shape]
        ex1, ex2 = ex1 * side + cx, ex2 * side + cx
        ey1, ey2 = ey1 * side + cy, ey2 * side + cy
        t = (ys[:, None] - ey1) / (ey2 - ey1)                 # (n, E) crossing parameter
        xs = np.where((t >= 0) & (t < 1), ex1 + t * (ex2 - ex1), np.inf)
        xs.sort(axis=1)                                        # crossings, left to right
        if xs.shape[1] % 2:
            xs = xs[:, :-1]
        lo, hi = xs[:, 0::2], xs[:, 1::2]                      # even-odd fill intervals
        empty = ~np.isfinite(hi)
        lo, hi = np.where(empty, 0.0, lo), np.where(empty, 0.0, hi)
    cols = np.arange(x0, x1, dtype=np.float64)
    cov = np.clip(np.minimum(hi[:, :1], cols + 1) - np.maximum(lo[:, :1], cols), 0.0, None)
    for i in range(1, lo.shape[1]):
        cov += np.clip(np.minimum(hi[:, i:i + 1], cols + 1) - np.maximum(lo[:, i:i + 1], cols), 0.0, None)
    return y0, x0, cov.reshape(y1 - y0, ky, x1 - x0).mean(1)


def _render_into(scene: Scene, size: int, ky: int | None) -> np.ndarray:
    ky = ky or default_supersample(size)
    bg = np.array(BACKGROUNDS[scene.background], np.float32)
    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = bg
    for o in scene.objects:
        y0, x0, cov = object_coverage(o.shape, o.x * size, o.y * size, SIZES[o.size] * size,
                                      ky=ky, canvas=(size, size))
        h, w = cov.shape
        delta = np.array(COLOURS[o.colour], np.float32) - bg
        canvas[y0:y0 + h, x0:x0 + w] += cov.astype(np.float32)[:, :, None] * delta
    canvas += 0.5
    return canvas.astype(np.uint8)


def render_array(scene: Scene, size: int = 64, *, supersample: int | None = None) -> np.ndarray:
    """Render ``scene`` as a uint8 array (size, size, 3); ``supersample`` = sub-rows per row."""
    return _render_into(scene, int(size), supersample)


def render(scene: Scene, size: int = 64, *, supersample: int | None = None) -> Image.Image:
    """Render ``scene`` as a ``size``×``size`` RGB PIL image (anti-aliased, exact geometry)."""
    return Image.fromarray(_render_into(scene, int(size), supersample), "RGB")


def render_batch(scenes: Iterable[Scene], size: int = 64, *, supersample: int | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Render many scenes into a uint8 array (N, size, size, 3) (or into ``out``)."""
    scenes = list(scenes)
    if out is None:
        out = np.empty((len(scenes), size, size, 3), np.uint8)
    for i, s in enumerate(scenes):
        out[i] = _render_into(s, int(size), supersample)
    return out
