"""The evaluation suites: `shapeworld_suite` (exact judge) and `folder_suite` (image–caption
pairs). Each returns a `SuiteResult`: the report's data (JSON-ready, seeded, reproducible)
and a few samples with their prompts for the figure; `cascade.eval.report` writes them.

ShapeWorld, for `n` prompts (the split is written into the report):

- judge: 2/3 single objects (a third of them held-out (shape, colour) pairs), 1/3 two-object
  relations; accuracy per attribute and full match for every stage output up to `size`
  (64, 256, 1024), with CLIP score and CMMD / CLIP-FD against the true renders;
- variations: judge(variation of a true render) against its scene (n // 3 scenes);
- retrieval: the model's CLIP, text→image and image→text top-1 among 32 candidates;
- prior: predicted vs true CLIP image embeddings (all n scenes); super_resolution: each SR
  stage from true low-resolution renders against bicubic (n // 3 scenes);
- sweeps (optional): decoder guidance, or steps × sampler per stage (min(n, 50) prompts).
"""
from __future__ import annotations

import dataclasses
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .judging import (SPLIT_DESCRIPTIONS, Generate, Progress, References, Sample, Vary, distribution_metrics,
                      generate_and_judge, mix_seed, pipeline_generator, pipeline_varier, plan_split, retrieval_suite,
                      shapeworld_items, summarise, thumbnail, variation_scenes, variation_suite)
from .metrics import clip_image_features, clip_score, clip_text_features, frechet_distance, kid
from .per_stage import guidance_sweep, prior_suite, steps_sweep, super_resolution_suite

__all__ = ["PARTS", "SWEEPS", "SUITES", "DEFAULT_GUIDANCE_VALUES", "DEFAULT_STEPS_VALUES", "SuiteResult",
           "shapeworld_suite", "folder_suite", "check_sweep_values"]

SUITES = ("shapeworld", "folder")
PARTS = ("judge", "variations", "retrieval", "prior", "super_resolution")
SWEEPS = ("none", "guidance", "steps")
DEFAULT_GUIDANCE_VALUES = (1.0, 2.0, 3.0, 5.0, 8.0)
DEFAULT_STEPS_VALUES = (5, 10, 25, 50)
FORMAT = 1


@dataclass
class SuiteResult:
    data: dict                                          # report.json
    samples: list[Sample] = field(default_factory=list)  # for the samples figure


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_sweep_values(sweep: str, values: Optional[Sequence[Any]]) -> list:
    """The sweep's values (defaults when None), checked: guidance ≥ 0, steps ≥ 1."""
    if sweep not in SWEEPS:
        raise ValueError(f"unknown sweep {sweep!r} (sweeps: {', '.join(SWEEPS)})")
    if sweep == "none":
        return []
    if values is None:
        return list(DEFAULT_GUIDANCE_VALUES if sweep == "guidance" else DEFAULT_STEPS_VALUES)
    values = list(values)
    if not values:
        raise ValueError(f"--sweep {sweep}: no values given")
    for v in values:
        if sweep == "guidance" and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise ValueError(f"guidance sweep values must be numbers at least 0, got {v!r}")
        if sweep == "steps":
            _positive(v, "steps sweep values")
    return values


def _sampling_record(pipe: Any, steps: Any, guidance: Any, sampler: Any) -> dict:
    return {role: dataclasses.asdict(cfg) for role, cfg in pipe._sampling(steps, guidance, sampler).items()}


def machine_record() -> dict:
    """Where the evaluation ran: CPU, torch threads and versions (times in a report mean little without it)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}


@contextmanager
def _timed(seconds: dict, part: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[part] = round(time.perf_counter() - start, 1)


def _clip_name(clip: Any, pipe: Any) -> Optional[str]:
    if clip is None:
        return None
    name = getattr(getattr(clip, "config", None), "model_name", type(clip).__name__)
    return f"{name} (the model's own CLIP)" if pipe is not None and clip is pipe.clip else name


# ---------------------------------------------------------------------------- ShapeWorld
def shapeworld_suite(pipe: Any = None, *, n: int, seed: int = 0, size: Optional[int] = None, steps: Any = None,
                     guidance: Any = None, sampler: Any = None, sweep: str = "none",
                     sweep_values: Optional[Sequence[Any]] = None, sweep_n: Optional[int] = None,
                     sweep_samplers: Optional[Sequence[str]] = None, sweep_stages: Optional[Sequence[str]] = None,
                     parts: Sequence[str] = PARTS, batch_size: int = 16, clip: Any = None,
                     generate: Optional[Generate] = None, vary: Optional[Vary] = None,
                     variations_n: Optional[int] = None, variation_eta: Any = "default", sr_n: Optional[int] = None,
                     retrieval_candidates: int = 32,
                     progress: bool = False, model: Optional[str] = None) -> SuiteResult:
    """Run the ShapeWorld suite; every request is checked before any work. Give `pipe` (a
    CascadePipeline), or `generate` (and `vary`) alone to evaluate another generator."""
    from ..diffusion.samplers import SAMPLERS, get_sampler

    _positive(n, "n")
    _positive(batch_size, "batch size")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(unknown)} (parts: {', '.join(PARTS)})")
    values = check_sweep_values(sweep, sweep_values)
    if pipe is None and generate is None:
        raise ValueError("shapeworld_suite needs a pipeline or a generator")
    if sweep != "none" and pipe is None:
        raise ValueError("sweeps need a pipeline")
    clip = clip if clip is not None else (pipe.clip if pipe is not None else None)
    skipped: dict[str, str] = {}
    if pipe is not None:
        if generate is None and "prior" not in pipe.stages:
            raise ValueError("this model has no prior, so it cannot generate from text: the ShapeWorld suite needs one")
        final = pipe._final_role(size)
        size = pipe.stages[final].config.resolution
        generate = generate or pipeline_generator(pipe, size=size, steps=steps, guidance=guidance, sampler=sampler)
        if vary is None:
            vary = pipeline_varier(pipe, size=size, steps=steps, guidance=guidance, sampler=sampler, eta=variation_eta)
        sr_roles = [r for r in ("sr256", "sr1024") if r in pipe.stages and pipe.stages[r].config.resolution <= size]
    else:
        sr_roles = []
        for part in ("prior", "super_resolution"):
            skipped[part] = "needs a pipeline"
    samplers = list(sweep_samplers or SAMPLERS)
    for name in samplers:
        get_sampler(name)
    stages = list(sweep_stages or pipe.stages) if sweep == "steps" else []
    for role in stages:
        if role not in pipe.stages:
            raise ValueError(f"--sweep-stages: this model has no stage {role!r} (stages: {', '.join(pipe.stages)})")
    if "variations" in parts and vary is None:
        skipped["variations"] = "no variation function given"
    own_clip = pipe.clip if pipe is not None else clip       # retrieval and variations: the model's own CLIP
    if "retrieval" in parts and own_clip is None:
        skipped["retrieval"] = "no CLIP model"

    # the plan
    items = shapeworld_items(n, seed)
    n_var = variations_n or max(1, n // 3)
    n_sr = min(n, sr_n or max(1, n // 3))
    n_sweep = sweep_n or min(n, 50)
    sweep_items = shapeworld_items(n_sweep, seed) if sweep != "none" else []
    scenes = [s for _, s in items]
    rng = np.random.default_rng(mix_seed(seed, "sr-choice"))
    sr_scenes = [scenes[i] for i in sorted(rng.choice(n, n_sr, replace=False))]
    run = {p: p in parts and p not in skipped for p in PARTS}
    total = (n * run["judge"] + n_var * run["variations"] + n * run["prior"]
             + n_sr * len(sr_roles) * run["super_resolution"] + len(values) * n_sweep * (sweep == "guidance")
             + len(values) * n_sweep * len(samplers) * len(stages) * (sweep == "steps"))
    data: dict[str, Any] = {
        "suite": "shapeworld", "format": FORMAT, "model": model, "seed": seed, "n": n, "batch_size": batch_size,
        "split": {s: {"n": k, "description": SPLIT_DESCRIPTIONS[s]} for s, k in plan_split(n).items()},
        "sampling": _sampling_record(pipe, steps, guidance, sampler) if pipe is not None else None,
        "metric_clip": _clip_name(clip, pipe), "machine": machine_record(), "seconds": {},
    }
    seconds = data["seconds"]                            # wall time of each part, filled as they run
    bar = Progress(total, progress)
    refs = References(clip, scenes) if clip is not None else None
    samples: list[Sample] = []
    try:
        with torch.no_grad():
            if run["judge"]:
                with _timed(seconds, "judge"):
                    stats, samples = generate_and_judge(generate, items, seed=seed, part="judge", batch_size=batch_size,
                                                        clip=clip, progress=bar, keep_per_split=4)
                    data["sizes"] = sorted(stats)
                    data["judge"] = summarise(stats, refs)
            if run["variations"]:
                with _timed(seconds, "variations"):
                    source = max(64, own_clip.image_size[0]) if own_clip is not None else 64
                    data["variations"] = {"n": n_var, "source_size": source, **getattr(vary, "info", {}), "sizes": variation_suite(
                        vary, variation_scenes(n_var, seed), seed=seed, batch_size=batch_size, source_size=source,
                        clip=clip, progress=bar)}
            if run["retrieval"]:
                with _timed(seconds, "retrieval"):
                    data["retrieval"] = {"clip": _clip_name(own_clip, pipe),
                                         **retrieval_suite(own_clip, items, seed=seed, candidates=retrieval_candidates)}
            if run["prior"]:
                with _timed(seconds, "prior"):
                    data["prior"] = prior_suite(pipe, scenes, seed=seed, batch_size=batch_size, steps=steps,
                                                guidance=guidance, sampler=sampler, progress=bar)
            if run["super_resolution"] and sr_roles:
                with _timed(seconds, "super_resolution"):
                    data["super_resolution"] = {role: super_resolution_suite(
                        pipe, role, sr_scenes, seed=seed, batch_size=batch_size, steps=steps, guidance=guidance,
                        sampler=sampler, clip=clip, progress=bar) for role in sr_roles}
            if sweep != "none":
                with _timed(seconds, f"sweep_{sweep}"):
                    data["sweeps"] = {sweep: _run_sweep(pipe, sweep, sweep_items, values, samplers, stages, seed=seed,
                                                        batch_size=batch_size, steps=steps, guidance=guidance,
                                                        sampler=sampler, clip=clip, progress=bar)}
    finally:
        bar.close()
    data["skipped"] = {p: r for p, r in skipped.items() if p in parts}
    return SuiteResult(data, samples)


def _run_sweep(pipe, sweep, items, values, samplers, stages, *, seed, batch_size, steps, guidance, sampler, clip,
               progress) -> dict:
    refs = References(clip, [s for _, s in items]) if clip is not None else None
    if sweep == "guidance":
        return guidance_sweep(pipe, items, values, seed=seed, batch_size=batch_size, steps=steps, guidance=guidance,
                              sampler=sampler, refs=refs, progress=progress)
    return steps_sweep(pipe, items, values, samplers=samplers, stages=stages, seed=seed, batch_size=batch_size,
                       steps=steps, guidance=guidance, sampler=sampler, refs=refs, progress=progress)


# ---------------------------------------------------------------------------- folders
def _reference_tensor(images: Sequence[Any], size: int) -> torch.Tensor:
    from ..data.folder import image_to_tensor, resize_center_crop

    return torch.stack([image_to_tensor(resize_center_crop(im, size)) for im in images])


def folder_suite(pipe: Any = None, data: Any = None, *, n: int, seed: int = 0, size: Optional[int] = None,
                 steps: Any = None, guidance: Any = None, sampler: Any = None, batch_size: int = 16, clip: Any = None,
                 inception: Any = None, generate: Optional[Generate] = None, progress: bool = False,
                 model: Optional[str] = None) -> SuiteResult:
    """Generate from the captions of `n` pairs of an image–caption folder (a seeded subset when
    it holds more) and compare with its images, resized and centre-cropped to each output size:
    CLIP score, CLIP-FD, CMMD; FID and KID on Inception features at the final size if given."""
    from ..data import ImageCaptionFolder
    from .inception import FID_SKIPPED

    _positive(n, "n")
    _positive(batch_size, "batch size")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    dataset = data if isinstance(data, ImageCaptionFolder) else ImageCaptionFolder(data)
    if pipe is None and generate is None:
        raise ValueError("folder_suite needs a pipeline or a generator")
    if pipe is not None:
        size = pipe.stages[pipe._final_role(size)].config.resolution
        generate = generate or pipeline_generator(pipe, size=size, steps=steps, guidance=guidance, sampler=sampler)
    clip = clip if clip is not None else (pipe.clip if pipe is not None else None)
    if clip is None:
        raise ValueError("folder_suite needs a CLIP model for its metrics")
    available = len(dataset)
    if available > n:
        index = sorted(np.random.default_rng(mix_seed(seed, "folder")).choice(available, n, replace=False).tolist())
    else:
        index = list(range(available))
    gen_feats: dict[int, list] = {}
    ref_feats: dict[int, list] = {}
    text_feats, incep_gen, incep_ref, captions_used, samples = [], [], [], [], []
    bar = Progress(len(index), progress)
    started = time.perf_counter()
    try:
        with torch.no_grad():
            for b, start in enumerate(range(0, len(index), batch_size)):
                pairs = [dataset[i] for i in index[start:start + batch_size]]
                prompts = [c for _, c in pairs]
                captions_used += prompts
                outputs = generate(prompts, mix_seed(seed, "folder", b))
                final = max(outputs)
                text_feats.append(clip_text_features(clip, prompts))
                for s, x in outputs.items():
                    ref = _reference_tensor([im for im, _ in pairs], s)
                    gen_feats.setdefault(s, []).append(clip_image_features(clip, x))
                    ref_feats.setdefault(s, []).append(clip_image_features(clip, ref))
                    if s == final and inception is not None:
                        incep_gen.append(inception.features(x))
                        incep_ref.append(inception.features(ref))
                    if s == final and len(samples) < 8:
                        samples += [Sample(p, thumbnail(x[i])) for i, p in enumerate(prompts[:8 - len(samples)])]
                bar.step(len(pairs), "folder")
    finally:
        bar.close()
    text = torch.cat(text_feats)
    sizes = {}
    for s in sorted(gen_feats):
        g, r = torch.cat(gen_feats[s]), torch.cat(ref_feats[s])
        sizes[str(s)] = {"clip_score": float(clip_score(g, text).mean()),
                         "clip_score_reference": float(clip_score(r, text).mean()), **distribution_metrics(g, r)}
    out: dict[str, Any] = {
        "suite": "folder", "format": FORMAT, "model": model, "data": str(dataset.root), "seed": seed, "n": len(index),
        "available": available, "skipped_items": dict(sorted(dataset.skipped.items())), "batch_size": batch_size,
        "sampling": _sampling_record(pipe, steps, guidance, sampler) if pipe is not None else None,
        "metric_clip": _clip_name(clip, pipe), "sizes": sizes, "machine": machine_record(),
        "seconds": {"generate_and_measure": round(time.perf_counter() - started, 1)},
    }
    if inception is None:
        out["fid"] = {"skipped": FID_SKIPPED}
    elif len(index) < 2:
        out["fid"] = {"skipped": "FID needs at least 2 images"}
    else:
        g, r = torch.cat(incep_gen), torch.cat(incep_ref)
        k_mean, k_std = kid(g, r, seed=mix_seed(seed, "kid") % (2 ** 32))
        out["fid"] = {"fid": frechet_distance(g, r), "kid": k_mean, "kid_std": k_std, "size": max(gen_feats),
                      "variant": inception.variant, "n": len(index)}
    return SuiteResult(out, samples)
