"""ShapeWorld judging, the building blocks of the suites: evaluation scenes and their split,
generators, the generate-and-judge loop, reference features, variations and CLIP retrieval.

A suite takes a *generator*, ``generate(prompts, seed) -> {size: (B, 3, size, size)}`` in
[-1, 1], rather than the pipeline itself: `pipeline_generator` wraps a `CascadePipeline`
(every stage output up to the requested size, from `return_intermediates`), and
`oracle_generator` draws the prompt's true render, a perfect generator that proves the
suites' bookkeeping (it must score ~100%). Variations likewise take
``vary(images, seed) -> {size: images}``.

Everything is seeded: the scenes come from streams derived from the evaluation seed (never
the small integer seeds training uses) and batch b of part p is sampled with the seed
``mix_seed(seed, p, b)``, so the same seed and batch size give the same numbers.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data import caption, held_out_scenes, judge, parse_caption, render_batch, sample_scenes, score
from ..data.judge import accuracy
from ..data.pool import uint8_to_tensor
from ..data.shapeworld import EDITABLE, Scene, edit_scene, editable_attributes
from .metrics import clip_image_features, clip_score, clip_text_features, cmmd, frechet_distance, quantize

__all__ = [
    "SPLITS", "SPLIT_DESCRIPTIONS", "Images", "Generate", "Vary", "Sample", "SizeStats", "mix_seed",
    "plan_split", "shapeworld_items", "variation_scenes", "pipeline_generator", "oracle_generator",
    "pipeline_varier", "oracle_varier", "render_tensor", "generate_and_judge", "summarise",
    "distribution_metrics", "References", "thumbnail", "judge_images", "accuracy_by_split", "variation_suite", "retrieval_suite", "twin_accuracy", "Progress",
]

SPLITS = ("single_in", "single_held_out", "two_object")
SPLIT_DESCRIPTIONS = {
    "single_in": "one object, (shape, colour) pairs seen in training",
    "single_held_out": "one object of a held-out (shape, colour) pair (compositional generalisation)",
    "two_object": "two objects and their spatial relation (in-distribution pairs)",
}
EVAL_STREAM = 0xE7A1                         # separates evaluation scenes from training streams

Images = dict[int, Tensor]                   # size -> (B, 3, size, size) in [-1, 1]
Generate = Callable[[list[str], int], Mapping[int, Tensor]]
Vary = Callable[[Tensor, int], Mapping[int, Tensor]]


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from integers and names (numpy's SeedSequence hashing)."""
    ints = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    if any(i < 0 for i in ints):
        raise ValueError(f"seeds must be non-negative, got {parts}")
    return int(np.random.SeedSequence(ints).generate_state(1, np.uint64)[0] >> np.uint64(1))


class Progress:
    """One progress bar over a whole evaluation (tqdm; silent when disabled)."""

    def __init__(self, total: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, disable=not enabled, desc="eval", unit="img", dynamic_ncols=True)

    def step(self, n: int, part: str) -> None:
        self.bar.set_postfix_str(part, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------------------- scenes
def plan_split(n: int) -> dict[str, int]:
    """How `n` prompts split: 2/3 single objects (of which 1/3 held-out pairs), 1/3 two objects."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    single = max(1, int(round(2 * n / 3)))
    held = int(round(single / 3))
    return {"single_in": single - held, "single_held_out": held, "two_object": n - single}


def shapeworld_items(n: int, seed: int) -> list[tuple[str, Scene]]:
    """The suite's (split, scene) list: every split from its own seeded stream, in split order."""
    plan = plan_split(n)
    k = plan["single_in"], plan["single_held_out"], plan["two_object"]
    scenes = (sample_scenes(k[0], mix_seed(seed, EVAL_STREAM, 1), n_objects=1),
              held_out_scenes(k[1], mix_seed(seed, EVAL_STREAM, 2), n_objects=1),
              sample_scenes(k[2], mix_seed(seed, EVAL_STREAM, 3), n_objects=2))
    return [(split, s) for split, group in zip(SPLITS, scenes) for s in group]


def variation_scenes(n: int, seed: int) -> list[Scene]:
    """In-distribution scenes (one or two objects) whose true renders are varied."""
    return sample_scenes(n, mix_seed(seed, EVAL_STREAM, 4))


def render_tensor(scenes: Sequence[Scene], size: int) -> Tensor:
    """True renders (B, 3, size, size) in [-1, 1]."""
    return uint8_to_tensor(render_batch(scenes, size))


# ---------------------------------------------------------------------------- generators
def pipeline_generator(pipe: Any, *, size: Optional[int] = None, steps: Any = None, guidance: Any = None,
                       sampler: Any = None) -> Generate:
    """Text → every stage's output up to `size` (default: the largest), quantised to 8 bits.
    The sampling options are checked here, before any work."""
    pipe._sampling(steps, guidance, sampler)
    pipe._final_role(size)

    def generate(prompts: list[str], seed: int) -> Images:
        out = pipe(list(prompts), 1, seed=seed, steps=steps, guidance=guidance, sampler=sampler,
                   final_size=size, return_intermediates=True)
        return {pipe.stages[role].config.resolution: quantize(x.cpu()) for role, x in out.stages.items()}

    return generate


def oracle_generator(sizes: Sequence[int] = (64,)) -> Generate:
    """A perfect generator: each prompt's scene (parsed back from the caption) rendered at every size."""
    def generate(prompts: list[str], seed: int) -> Images:
        scenes = [parse_caption(p) for p in prompts]
        return {s: render_tensor(scenes, s) for s in sizes}

    return generate


def pipeline_varier(pipe: Any, *, size: Optional[int] = None, steps: Any = None, guidance: Any = None,
                    sampler: Any = None, eta: Any = "default") -> Vary:
    """Variations as `CascadePipeline.variations` makes them (decode the CLIP image embedding of
    each source image, no text; with `eta`, from its DDIM-inverted x_T), one per source image, batched.
    `vary.info` says how ({"eta": η or None, "decoder_guidance": w}), for the report."""
    from ..images import tensor_to_pil
    from ..pipeline import VARIATION_ETA

    eta = VARIATION_ETA if eta == "default" else eta
    options = pipe._variation_sampling(eta, steps, guidance, sampler)
    final_role = pipe._final_role(size)

    @torch.no_grad()
    def vary(images: Tensor, seed: int) -> Images:
        g = torch.Generator().manual_seed(seed)
        sources = tensor_to_pil(images)
        image_embed = pipe.encode_images(sources)
        text, drop = pipe._empty_text(len(images))
        noise = None if eta is None else pipe._invert(sources, image_embed, options["decoder"])
        outputs = pipe._decode(image_embed, text, drop, options, final_role, g, noise=noise)
        return {pipe.stages[role].config.resolution: quantize(x.cpu()) for role, x in outputs.items()}

    vary.info = {"eta": eta, "decoder_guidance": options["decoder"].guidance}
    return vary


def oracle_varier(sizes: Sequence[int] = (64,)) -> Vary:
    """A perfect variation: the source image itself, resized to every size."""
    from ..degrade import upsample

    def vary(images: Tensor, seed: int) -> Images:
        return {s: quantize(upsample(images, s)) for s in sizes}

    return vary


# ---------------------------------------------------------------------------- judging
@dataclass
class Sample:
    """One generated image for the figure: its prompt and the judge's verdict."""
    prompt: str
    image: Image.Image
    split: str = ""
    score: Optional[dict] = None


@dataclass
class SizeStats:
    """What one output size accumulates: judge scores (split, score) and CLIP image features."""
    scores: list[tuple[str, dict]] = field(default_factory=list)
    features: list[Tensor] = field(default_factory=list)

    def feature_matrix(self) -> Optional[Tensor]:
        return torch.cat(self.features) if self.features else None


def _to_uint8(images: Tensor) -> np.ndarray:
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def judge_images(images: Tensor, scenes: Sequence[Scene]) -> list[dict]:
    """The judge's per-attribute score of each image (B, 3, H, W) against its scene."""
    return [score(judge(a), s) for a, s in zip(_to_uint8(images), scenes)]


def thumbnail(x: Tensor, side: int = 192) -> Image.Image:
    """One image (3, H, W) in [-1, 1] as a PIL image at most `side` pixels wide (for the figures)."""
    im = Image.fromarray(_to_uint8(x[None])[0], "RGB")
    return im if im.size[0] <= side else im.resize((side, side), Image.BICUBIC)


def generate_and_judge(generate: Generate, items: Sequence[tuple[str, Scene]], *, seed: int, part: str,
                       batch_size: int, clip: Any = None, progress: Optional[Progress] = None,
                       keep_per_split: int = 0, only_size: Optional[int] = None
                       ) -> tuple[dict[int, SizeStats], list[Sample]]:
    """Generate every item's canonical caption in batches, judge every output size, and collect
    CLIP features (if `clip`) and a few samples of the largest size for the figure."""
    stats: dict[int, SizeStats] = {}
    samples: list[Sample] = []
    kept: dict[str, int] = {}
    for b, start in enumerate(range(0, len(items), batch_size)):
        chunk = items[start:start + batch_size]
        scenes = [s for _, s in chunk]
        prompts = [caption(s) for s in scenes]
        outputs = generate(prompts, mix_seed(seed, part, b))
        sizes = sorted(outputs) if only_size is None else [only_size]
        for size in sizes:
            x = outputs[size]
            st = stats.setdefault(size, SizeStats())
            scores = judge_images(x, scenes)
            st.scores += [(split, sc) for (split, _), sc in zip(chunk, scores)]
            if clip is not None:
                st.features.append(clip_image_features(clip, x))
            if size == sizes[-1] and keep_per_split:
                for i, (split, _) in enumerate(chunk):
                    if kept.get(split, 0) < keep_per_split:
                        kept[split] = kept.get(split, 0) + 1
                        samples.append(Sample(prompts[i], thumbnail(x[i]), split, scores[i]))
        if progress is not None:
            progress.step(len(chunk), part)
    return stats, samples


def _split_order(split: str) -> tuple[int, str]:
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


def accuracy_by_split(scores: Sequence[tuple[str, dict]]) -> dict[str, dict]:
    """Judge accuracy per split present, and over all of them ("all")."""
    out = {split: accuracy([sc for sp, sc in scores if sp == split])
           for split in sorted({sp for sp, _ in scores}, key=_split_order)}
    out["all"] = accuracy([sc for _, sc in scores])
    return out


def distribution_metrics(generated: Optional[Tensor], reference: Optional[Tensor]) -> dict[str, Optional[float]]:
    """CMMD (unbiased and biased, ×1000) and the Fréchet distance on CLIP features; None when
    either set has fewer than 2 images."""
    if generated is None or reference is None or len(generated) < 2 or len(reference) < 2:
        return {"cmmd": None, "cmmd_biased": None, "clip_fd": None}
    return {"cmmd": cmmd(generated, reference), "cmmd_biased": cmmd(generated, reference, unbiased=False),
            "clip_fd": frechet_distance(generated, reference)}


class References:
    """CLIP features of the true renders of a scene list (per size, cached) and of its captions."""

    def __init__(self, clip: Any, scenes: Sequence[Scene], batch_size: int = 64):
        self.clip, self.scenes, self.batch_size = clip, list(scenes), batch_size
        self._images: dict[int, Tensor] = {}
        self._text: Optional[Tensor] = None

    def image_features(self, size: int) -> Tensor:
        if size not in self._images:
            chunks = [clip_image_features(self.clip, render_tensor(self.scenes[i:i + self.batch_size], size))
                      for i in range(0, len(self.scenes), self.batch_size)]
            self._images[size] = torch.cat(chunks)
        return self._images[size]

    def text_features(self) -> Tensor:
        if self._text is None:
            self._text = clip_text_features(self.clip, [caption(s) for s in self.scenes])
        return self._text


def summarise(stats: Mapping[int, SizeStats], refs: Optional[References]) -> dict[str, dict]:
    """Per output size: judge accuracy by split, CLIP score (generated and true renders), CMMD, CLIP-FD."""
    out = {}
    for size in sorted(stats):
        st = stats[size]
        entry: dict[str, Any] = {"accuracy": accuracy_by_split(st.scores),
                                 # per prompt, in evaluation order: for paired comparisons (tools/paired.py)
                                 "items": {"split": [sp for sp, _ in st.scores],
                                           "full": [int(sc["full"]) for _, sc in st.scores]}}
        feats = st.feature_matrix()
        if refs is not None and feats is not None:
            text, true = refs.text_features(), refs.image_features(size)
            entry["clip_score"] = float(clip_score(feats, text).mean())
            entry["clip_score_true"] = float(clip_score(true, text).mean())
            entry.update(distribution_metrics(feats, true))
        out[str(size)] = entry
    return out


# ---------------------------------------------------------------------------- variations
def variation_suite(vary: Vary, scenes: Sequence[Scene], *, seed: int, batch_size: int, source_size: int,
                    clip: Any = None, progress: Optional[Progress] = None) -> dict[str, dict]:
    """Judge each variation of a true render against the render's scene, per output size; also how
    far each variation lies from its source (mean absolute pixel difference, in 8-bit levels, from
    the true render at the variation's size: 0 for a copy), and with `clip` the CLIP image cosine
    between each variation and its source."""
    stats: dict[int, SizeStats] = {}
    cosines: dict[int, list[float]] = {}
    distances: dict[int, list[float]] = {}
    for b, start in enumerate(range(0, len(scenes), batch_size)):
        chunk = list(scenes[start:start + batch_size])
        source = render_tensor(chunk, source_size)
        outputs = vary(source, mix_seed(seed, "variations", b))
        src_feats = clip_image_features(clip, source) if clip is not None else None
        for size in sorted(outputs):
            st = stats.setdefault(size, SizeStats())
            st.scores += [("single_in" if len(s.objects) == 1 else "two_object", sc)
                          for s, sc in zip(chunk, judge_images(outputs[size], chunk))]
            reference = source if size == source_size else render_tensor(chunk, size)
            distances.setdefault(size, []).extend(
                ((outputs[size].float() - reference).abs().mean(dim=(1, 2, 3)) * 127.5).tolist())
            if src_feats is not None:
                feats = clip_image_features(clip, outputs[size])
                cosines.setdefault(size, []).extend((feats * src_feats).sum(1).tolist())
        if progress is not None:
            progress.step(len(chunk), "variations")
    out = {}
    for size in sorted(stats):
        entry: dict[str, Any] = {"accuracy": accuracy_by_split(stats[size].scores),
                                 "pixel_distance_to_source": float(np.mean(distances[size]))}
        if size in cosines:
            entry["clip_cosine_to_source"] = float(np.mean(cosines[size]))
        out[str(size)] = entry
    return out


# ---------------------------------------------------------------------------- retrieval
def retrieval_suite(clip: Any, items: Sequence[tuple[str, Scene]], *, seed: int, candidates: int = 32,
                    image_size: Optional[int] = None) -> dict[str, Any]:
    """CLIP top-1 retrieval on true renders: each caption against `candidates` images (text→image)
    and each image against as many captions (image→text), in seeded random groups of the suite's
    scenes (mixed splits). A retrieved item with the same caption counts as right."""
    if candidates < 2:
        raise ValueError(f"retrieval needs at least 2 candidates, got {candidates}")
    n = len(items)
    if n < 2:
        return {"skipped": "retrieval needs at least 2 scenes"}
    size = image_size or clip.image_size[0]
    order = np.random.default_rng(mix_seed(seed, "retrieval")).permutation(n)
    groups = [order[i:i + candidates] for i in range(0, n, candidates)]
    if len(groups) > 1 and len(groups[-1]) < 2:
        groups[-2] = np.concatenate(groups[-2:])
        groups.pop()
    hits: dict[str, list[tuple[float, float]]] = {}
    chance = []
    for group in groups:
        scenes = [items[i][1] for i in group]
        captions = [caption(s) for s in scenes]
        text = clip_text_features(clip, captions)
        image = clip_image_features(clip, render_tensor(scenes, size))
        sim = (text @ image.T).numpy()
        ids = {c: k for k, c in enumerate(dict.fromkeys(captions))}
        lab = np.array([ids[c] for c in captions])
        t2i, i2t = lab[sim.argmax(1)] == lab, lab[sim.argmax(0)] == lab
        for j, i in enumerate(group):
            hits.setdefault(items[i][0], []).append((float(t2i[j]), float(i2t[j])))
            chance.append(float(np.mean(lab == lab[j])))
    per_split = {split: {"text_to_image": float(np.mean([h[0] for h in v])),
                         "image_to_text": float(np.mean([h[1] for h in v])), "n": len(v)}
                 for split, v in sorted(hits.items(), key=lambda kv: _split_order(kv[0]))}
    everything = [h for v in hits.values() for h in v]
    return {"candidates": int(min(candidates, n)), "image_size": int(size), "chance": float(np.mean(chance)),
            "text_to_image": float(np.mean([h[0] for h in everything])),
            "image_to_text": float(np.mean([h[1] for h in everything])), "n": n, "by_split": per_split,
            "twins": twin_accuracy(clip, [s for _, s in items], seed=seed, image_size=size)}


def twin_accuracy(clip: Any, scenes: Sequence[Scene], *, seed: int, image_size: Optional[int] = None,
                  batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Hard-negative retrieval, per attribute: how often a true render's CLIP image embedding is
    closer to its own caption than to the caption of a twin scene that differs in that attribute
    alone (edit_scene; chance 50%). Random groups of captions (`retrieval_suite`) are told apart by
    colour and background alone, so they cannot show whether CLIP reads shape, size, position or
    relation: this does."""
    size = image_size or clip.image_size[0]
    rng = np.random.default_rng(mix_seed(seed, "twins"))
    hits: dict[str, list[float]] = {}
    for start in range(0, len(scenes), batch_size):
        chunk = list(scenes[start:start + batch_size])
        image = clip_image_features(clip, render_tensor(chunk, size))
        own = clip_text_features(clip, [caption(s) for s in chunk])
        base = (own * image).sum(-1)
        for attr in EDITABLE:
            rows = [i for i, s in enumerate(chunk) if attr in editable_attributes(s)]
            if not rows:
                continue
            twins = [caption(edit_scene(chunk[i], rng, attr)) for i in rows]
            other = (clip_text_features(clip, twins) * image[rows]).sum(-1)
            hits.setdefault(attr, []).extend((base[rows] > other).float().tolist())
    return {attr: {"accuracy": float(np.mean(v)), "n": len(v)} for attr, v in hits.items()}
