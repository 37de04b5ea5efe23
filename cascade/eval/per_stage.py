"""Per-stage metrics and sweeps on ShapeWorld.

- Prior: the cosine between the prior's z_i and the true CLIP image embedding of a render of
  the same scene, beside the text–image cosine baseline, as DALLE2-pytorch's
  `report_cosine_sims` reports it (prior fed the captions rolled by one gives the
  "unrelated" floor; difference = cos(z_t, ẑ_i) − cos(z_t, z_i)).
- Super-resolution: SR(true low-resolution render) against the true render at the stage's
  resolution (PSNR, SSIM, judge accuracy, CMMD), against plain bicubic upsampling.
- Sweeps: judge accuracy and CMMD against the decoder's guidance scale (the fidelity–
  alignment trade-off of GLIDE / DALL·E 2 / Imagen), and against the number of sampling
  steps for each sampler, stage by stage (prior and decoder judged on the 64×64 output of
  text → prior → decoder; SR stages from true low-resolution renders).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import caption
from ..data.judge import accuracy
from ..data.shapeworld import EDITABLE, Scene, edit_scene, editable_attributes
from ..degrade import lowres_condition, upsample
from .judging import (Progress, References, distribution_metrics, generate_and_judge, judge_images, mix_seed,
                      pipeline_generator, render_tensor, summarise)
from .metrics import clip_image_features, psnr, quantize, ssim

__all__ = ["with_stage", "prior_suite", "super_resolve", "super_resolution_suite", "guidance_sweep", "steps_sweep"]


def with_stage(value: Any, role: str, v: Any, roles: Sequence[str]) -> dict:
    """A per-stage option (None, one value for every stage, or {role: value}) with `role` set to v."""
    if value is None:
        return {role: v}
    if isinstance(value, Mapping):
        return {**value, role: v}
    return {**{r: value for r in roles}, role: v}


def _cos(a: Tensor, b: Tensor) -> np.ndarray:
    return (F.normalize(a.float().cpu(), dim=-1) * F.normalize(b.float().cpu(), dim=-1)).sum(-1).numpy()


# ---------------------------------------------------------------------------- prior
@torch.no_grad()
def prior_suite(pipe: Any, scenes: Sequence[Scene], *, seed: int, batch_size: int, steps: Any = None,
                guidance: Any = None, sampler: Any = None, progress: Optional[Progress] = None) -> dict:
    """Cosines between the prior's predicted image embeddings, the captions' text embeddings and
    the true image embeddings of the scenes' renders (at CLIP's input size, as training encodes them)."""
    if "prior" not in pipe.stages:
        return {"skipped": "this model has no prior"}
    options = pipe._sampling(steps, guidance, sampler)["prior"]
    size = pipe.clip.image_size[0]
    captions = [caption(s) for s in scenes]
    rolled = captions[1:] + captions[:1]
    rows: dict[str, list[np.ndarray]] = {k: [] for k in (
        "text_image", "predicted_image", "text_predicted", "unrelated_predicted_image", "text_unrelated_predicted")}
    twin_rng = np.random.default_rng(mix_seed(seed, "prior twins"))
    twins: dict[str, list[float]] = {}
    for b, start in enumerate(range(0, len(scenes), batch_size)):
        chunk = list(scenes[start:start + batch_size])
        g = torch.Generator().manual_seed(mix_seed(seed, "prior", b))
        text = pipe._encode_text(captions[start:start + batch_size])
        drop = torch.zeros(len(chunk), dtype=torch.bool, device=text.embed.device)
        predicted = pipe._prior(text, drop, options, g)
        unrelated = pipe._prior(pipe._encode_text(rolled[start:start + batch_size]), drop, options, g)
        true = clip_image_features(pipe.clip, render_tensor(chunk, size))
        rows["text_image"].append(_cos(text.embed, true))
        rows["predicted_image"].append(_cos(predicted, true))
        rows["text_predicted"].append(_cos(text.embed, predicted))
        rows["unrelated_predicted_image"].append(_cos(unrelated, true))
        rows["text_unrelated_predicted"].append(_cos(text.embed, unrelated))
        # does the prediction keep each attribute? closer to the true render than to a twin's render
        own = _cos(predicted, true)
        for attr in EDITABLE:
            idx = [i for i, sc in enumerate(chunk) if attr in editable_attributes(sc)]
            if idx:
                edited = render_tensor([edit_scene(chunk[i], twin_rng, attr) for i in idx], size)
                other = _cos(predicted[idx], clip_image_features(pipe.clip, edited))
                twins.setdefault(attr, []).extend((own[idx] > other).astype(float).tolist())
        if progress is not None:
            progress.step(len(chunk), "prior")
    out: dict[str, Any] = {k: float(np.concatenate(v).mean()) for k, v in rows.items()}
    out["difference"] = out["text_predicted"] - out["text_image"]
    out["twins"] = {attr: {"accuracy": float(np.mean(v)), "n": len(v)} for attr, v in twins.items()}
    out["n"] = len(scenes)
    out["sampling"] = {"sampler": options.sampler, "steps": options.steps, "guidance": options.guidance,
                       "candidates": options.candidates}
    return out


# ---------------------------------------------------------------------------- super-resolution
@torch.no_grad()
def super_resolve(pipe: Any, role: str, lowres: Tensor, sampling: Any, generator: torch.Generator) -> Tensor:
    """One super-resolution stage on given low-resolution images (B, 3, h, w) in [-1, 1], with the
    conditioning `CascadePipeline._decode` gives it (upsampled, noised at the sampling aug_level)."""
    stage = pipe.stages[role]
    B, res = lowres.shape[0], stage.config.resolution
    aug = torch.full((B,), sampling.aug_level)
    cond = lowres_condition(lowres.to(pipe.device), res, aug, stage.config.augmentation, generator=generator)
    x = pipe._run_stage(role, (B, 3, res, res), {"lowres": cond, "aug_level": aug.to(cond.device)}, None,
                        sampling, generator)
    return x.clamp(-1, 1)


def super_resolution_suite(pipe: Any, role: str, scenes: Sequence[Scene], *, seed: int, batch_size: int,
                           steps: Any = None, guidance: Any = None, sampler: Any = None, sampling: Any = None,
                           clip: Any = None, progress: Optional[Progress] = None) -> dict:
    """SR(true render at the low resolution) against the true render at the stage's resolution,
    beside bicubic upsampling of the same input: PSNR, SSIM, judge accuracy, CMMD."""
    stage = pipe.stages[role]
    res, low = stage.config.resolution, stage.config.lowres_resolution
    sampling = sampling or pipe._sampling(steps, guidance, sampler)[role]
    acc: dict[str, list] = {k: [] for k in ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic")}
    scores: dict[str, list[dict]] = {"sr": [], "bicubic": []}
    feats: dict[str, list[Tensor]] = {"sr": [], "bicubic": [], "true": []}
    for b, start in enumerate(range(0, len(scenes), batch_size)):
        chunk = list(scenes[start:start + batch_size])
        lowres, target = render_tensor(chunk, low), render_tensor(chunk, res)
        g = torch.Generator().manual_seed(mix_seed(seed, "sr", role, b))
        outputs = {"sr": quantize(super_resolve(pipe, role, lowres, sampling, g).cpu()),
                   "bicubic": quantize(upsample(lowres, res))}
        for name, x in outputs.items():
            suffix = "" if name == "sr" else "_bicubic"
            acc["psnr" + suffix].append(psnr(x, target).numpy())
            acc["ssim" + suffix].append(ssim(x, target).numpy())
            scores[name] += judge_images(x, chunk)
            if clip is not None:
                feats[name].append(clip_image_features(clip, x))
        if clip is not None:
            feats["true"].append(clip_image_features(clip, target))
        if progress is not None:
            progress.step(len(chunk), role)
    out: dict[str, Any] = {"size": res, "lowres_size": low, "n": len(scenes)}
    out.update({k: float(np.concatenate(v).mean()) for k, v in acc.items()})
    out["judge"], out["judge_bicubic"] = accuracy(scores["sr"]), accuracy(scores["bicubic"])
    if clip is not None:
        true = torch.cat(feats["true"])
        for name, suffix in (("sr", ""), ("bicubic", "_bicubic")):
            out.update({k + suffix: v for k, v in distribution_metrics(torch.cat(feats[name]), true).items()})
    out["sampling"] = {"sampler": sampling.sampler, "steps": sampling.steps, "aug_level": sampling.aug_level}
    return out


# ---------------------------------------------------------------------------- sweeps
def guidance_sweep(pipe: Any, items: Sequence[tuple[str, Scene]], values: Sequence[float], *, seed: int,
                   batch_size: int, steps: Any = None, guidance: Any = None, sampler: Any = None,
                   refs: Optional[References] = None, progress: Optional[Progress] = None) -> dict:
    """Judge accuracy, CLIP score and CMMD of the decoder's output against its guidance scale
    (the same prompts and seeds at every scale)."""
    size = pipe.stages["decoder"].config.resolution
    clip = refs.clip if refs is not None else None
    points = []
    for v in values:
        generate = pipeline_generator(pipe, size=size, steps=steps, sampler=sampler,
                                      guidance=with_stage(guidance, "decoder", float(v), ("prior", "decoder")))
        stats, _ = generate_and_judge(generate, items, seed=seed, part="sweep", batch_size=batch_size, clip=clip,
                                      progress=progress, only_size=size)
        points.append({"guidance": float(v), **summarise(stats, refs)[str(size)]})
    default = pipe._sampling(steps, guidance, sampler)["decoder"].guidance
    return {"size": size, "n": len(items), "default": default, "points": points}


def steps_sweep(pipe: Any, items: Sequence[tuple[str, Scene]], values: Sequence[int], *, samplers: Sequence[str],
                stages: Sequence[str], seed: int, batch_size: int, steps: Any = None, guidance: Any = None,
                sampler: Any = None, refs: Optional[References] = None, progress: Optional[Progress] = None) -> dict:
    """Judge full-match accuracy and CMMD against the number of sampling steps, for each sampler,
    stage by stage (the other stages keep their settings)."""
    roles = tuple(pipe.stages)
    dec_size = pipe.stages["decoder"].config.resolution
    clip = refs.clip if refs is not None else None
    scenes = [s for _, s in items]
    out: dict[str, Any] = {}
    for role in stages:
        per_sampler: dict[str, list] = {}
        for name in samplers:
            points = []
            for k in values:
                st, sm = with_stage(steps, role, int(k), roles), with_stage(sampler, role, name, roles)
                if role in ("prior", "decoder"):
                    generate = pipeline_generator(pipe, size=dec_size, steps=st, guidance=guidance, sampler=sm)
                    stats, _ = generate_and_judge(generate, items, seed=seed, part="sweep", batch_size=batch_size,
                                                  clip=clip, progress=progress, only_size=dec_size)
                    summary = summarise(stats, refs)[str(dec_size)]
                    point = {"steps": int(k), "accuracy": summary["accuracy"]["all"], "cmmd": summary.get("cmmd"),
                             "clip_score": summary.get("clip_score")}
                else:
                    sampling = pipe._sampling(st, guidance, sm)[role]
                    r = super_resolution_suite(pipe, role, scenes, seed=seed, batch_size=batch_size,
                                               sampling=sampling, clip=clip, progress=progress)
                    point = {"steps": int(k), "accuracy": r["judge"], "cmmd": r.get("cmmd"),
                             "psnr": r["psnr"], "ssim": r["ssim"]}
                points.append(point)
            per_sampler[name] = points
        size = dec_size if role in ("prior", "decoder") else pipe.stages[role].config.resolution
        out[role] = {"size": size, "samplers": per_sampler}
    return {"values": [int(v) for v in values], "samplers": list(samplers), "n": len(items), "stages": out}
