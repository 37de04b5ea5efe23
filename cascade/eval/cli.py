"""`cascade eval`: the ShapeWorld suite or an image–caption folder, into report.json, report.md
and figures (registered by cascade.cli). Every bad input is a one-line error before any work."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Optional

SUITES = ("shapeworld", "folder")


class EvalError(ValueError):
    """A user error: `cascade` prints it as one line and exits with status 2."""
SWEEPS = ("none", "guidance", "steps")
SIZES = (64, 256, 1024)



def _variation_eta(value: str):
    """--variation-eta: "default", "none" or a number ≥ 0 (checked before any work)."""
    from ..cli import parse_eta

    return parse_eta(value, "--variation-eta")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a model (ShapeWorld judge suite, or an image-caption folder)",
        description="Evaluate a model and write report.json, report.md and PNG figures into --out. "
                    "ShapeWorld: exact judge accuracy per attribute for single objects (in distribution and "
                    "held-out pairs) and two-object relations at every stage output, variations, CLIP retrieval, "
                    "prior and super-resolution stage metrics, optional sweeps. A folder of image-caption pairs: "
                    "CLIP score, CLIP-FD, CMMD (and FID with local Inception weights).")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--suite", help="shapeworld (default) or folder (implied by --data)")
    p.add_argument("--data", help="image-caption folder, CSV or JSONL (the folder suite)")
    p.add_argument("--n", type=int, default=300, help="prompts to evaluate (default 300)")
    p.add_argument("--out", default="eval", help="output folder (default: eval)")
    p.add_argument("--seed", type=int, default=0, help="evaluation seed: scenes and sampling noise (default 0)")
    p.add_argument("--size", type=int, help="largest output evaluated: 64, 256 or 1024 (default: the model's largest)")
    p.add_argument("--steps", action="append", metavar="[STAGE=]N", help="sampling steps, for every stage or one")
    p.add_argument("--guidance", action="append", metavar="[STAGE=]W", help="guidance scale, e.g. decoder=3")
    p.add_argument("--sampler", action="append", metavar="[STAGE=]NAME", help="ddpm, ddim, dpmpp_2m or heun")
    p.add_argument("--candidates", action="append", metavar="[STAGE=]K",
                   help="decoder (bare K) or prior candidates per output, CLIP-reranked (default: the model's)")
    p.add_argument("--variation-eta", metavar="ETA|none", default="default",
                   help="DDIM η of variations from the inverted source (default: the pipeline's); none: fresh noise")
    p.add_argument("--sweep", default="none", help="none (default), guidance (decoder) or steps (per sampler and stage)")
    p.add_argument("--sweep-values", metavar="V,V,...", help="guidance scales (default 1,2,3,5,8) or steps (5,10,25,50)")
    p.add_argument("--sweep-n", type=int, help="prompts per sweep point (default min(n, 50))")
    p.add_argument("--sweep-samplers", metavar="NAME,...", help="samplers of the steps sweep (default: all)")
    p.add_argument("--sweep-stages", metavar="STAGE,...", help="stages of the steps sweep (default: all)")
    p.add_argument("--parts", metavar="PART,...",
                   help="ShapeWorld parts (default all): judge, variations, retrieval, prior, super_resolution")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per batch (part of the seeding; default 16)")
    p.add_argument("--clip", metavar="DIR|NAME:WEIGHTS",
                   help="CLIP for the metrics: a CLIP folder, or an open_clip NAME:TAG / NAME:FILE.safetensors "
                        "(default: the model's own CLIP)")
    p.add_argument("--inception-weights", metavar="FILE",
                   help="Inception-V3 .safetensors for FID (folder suite; default $CASCADE_INCEPTION_WEIGHTS)")
    p.add_argument("--bf16", metavar="STAGE,...|all|none",
                   help="run these stages' networks under bf16 autocast (default: all where the "
                        "device has native bf16; none elsewhere)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def _list(value: Optional[str], kind: type, name: str) -> Optional[list]:
    if value is None:
        return None
    out = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(kind(item))
        except ValueError:
            raise ValueError(f"--{name}: {item!r} is not a valid {kind.__name__}") from None
    if not out:
        raise ValueError(f"--{name}: no values given")
    return out


def _load_clip(spec: str, device: str) -> Any:
    from ..clip import CLIP, ClipConfig

    if Path(spec).is_dir():
        return CLIP.from_pretrained(spec).to(device)
    name, sep, weights = spec.partition(":")
    if not sep or not name or not weights:
        raise ValueError(f"--clip {spec!r}: expected a CLIP folder or NAME:TAG / NAME:FILE.safetensors "
                         "(a CLIP without weights measures nothing)")
    return CLIP.from_config(ClipConfig(name, weights)).to(device)


def _check(args: argparse.Namespace) -> tuple[str, Path]:
    """Every check that needs no model: one clear error before any work."""
    from ..pipeline import DEFAULT_MODEL_DIR

    suite = args.suite or ("folder" if args.data else "shapeworld")
    if suite not in SUITES:
        raise EvalError(f"unknown suite {suite!r} (suites: {', '.join(SUITES)})")
    if suite == "folder" and not args.data:
        raise EvalError("the folder suite needs --data FOLDER (image-caption pairs)")
    if suite == "shapeworld" and args.data:
        raise EvalError("--data is for the folder suite: use --suite folder (or leave --suite out)")
    if args.n < 1:
        raise EvalError(f"--n must be at least 1, got {args.n}")
    if args.batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1, got {args.batch_size}")
    _variation_eta(args.variation_eta)
    if args.seed < 0:
        raise EvalError(f"--seed must be non-negative, got {args.seed}")
    if args.size is not None and args.size not in SIZES:
        raise EvalError(f"--size must be one of 64, 256, 1024, got {args.size}")
    if args.sweep not in SWEEPS:
        raise EvalError(f"unknown sweep {args.sweep!r} (sweeps: {', '.join(SWEEPS)})")
    if args.sweep != "none" and suite != "shapeworld":
        raise EvalError("sweeps run on the ShapeWorld suite")
    if args.sweep_n is not None and args.sweep_n < 1:
        raise EvalError(f"--sweep-n must be at least 1, got {args.sweep_n}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out} exists and is not a folder")
    model = Path(args.model) if args.model else DEFAULT_MODEL_DIR
    if args.model is None and not DEFAULT_MODEL_DIR.is_dir():
        raise EvalError("no default model is shipped with this installation yet: pass --model DIR")
    if not model.is_dir():
        raise EvalError(f"model folder not found: {model}")
    if not (model / "model_index.json").is_file():
        raise EvalError(f"{model} is not a model folder (no model_index.json)")
    return suite, model


def _headline(data: dict) -> str:
    if data["suite"] == "folder":
        size, entry = max(data["sizes"].items(), key=lambda kv: int(kv[0]))
        line = f"{size}px: CLIP score {entry['clip_score']:.2f}"
        if entry["cmmd"] is not None:
            line += f", CMMD {entry['cmmd']:.4g}"
        if data["fid"].get("fid") is not None:
            line += f", FID {data['fid']['fid']:.2f}"
        return line
    if not data.get("judge"):
        return "done"
    parts = []
    for size, entry in data["judge"].items():
        acc = entry["accuracy"]
        splits = ", ".join(f"{s} {100 * v['full']:.1f}%" for s, v in acc.items() if s != "all")
        parts.append(f"{size}px full match {100 * acc['all']['full']:.1f}% ({splits})")
    return "; ".join(parts)


def cmd_eval(args: argparse.Namespace) -> None:
    from ..cli import CliError, _stage_values
    from .suites import PARTS, check_sweep_values

    suite, model = _check(args)
    try:
        steps = _stage_values(args.steps, int, "steps")
        guidance = _stage_values(args.guidance, float, "guidance")
        sampler = _stage_values(args.sampler, str, "sampler")
        candidates = _stage_values(args.candidates, int, "candidates", bare_roles=["decoder"])
    except CliError as e:
        raise EvalError(str(e)) from None
    sweep_kind = float if args.sweep == "guidance" else int
    sweep_values = check_sweep_values(args.sweep, _list(args.sweep_values, sweep_kind, "sweep-values"))
    parts = _list(args.parts, str, "parts") or list(PARTS)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise EvalError(f"--parts: unknown part(s) {', '.join(unknown)} (parts: {', '.join(PARTS)})")
    dataset = inception = None
    if suite == "folder":
        from ..data import ImageCaptionFolder
        from .inception import FID_SKIPPED, InceptionFeatures, find_weights

        dataset = ImageCaptionFolder(args.data)  # a missing or empty folder fails here, before the model loads
        weights = find_weights(args.inception_weights)
        if weights is not None:
            inception = InceptionFeatures.from_file(weights).to(args.device)
        elif not args.quiet:
            print(FID_SKIPPED)

    from ..cli import _stage_choice
    from ..pipeline import CascadePipeline
    from .report import write_report
    from .suites import folder_suite, shapeworld_suite

    pipe = CascadePipeline.from_pretrained(model, progress=False, bf16=_stage_choice(args.bf16)).to(args.device)
    if candidates:
        try:
            pipe.set_sampling_defaults({role: {"candidates": k} for role, k in candidates.items()})
        except ValueError as e:
            raise EvalError(f"--candidates: {e}") from None
    clip = _load_clip(args.clip, args.device) if args.clip else None
    start = time.time()
    label = args.model or f"weights/{model.name} (the shipped model)"
    common = dict(n=args.n, seed=args.seed, size=args.size, steps=steps, guidance=guidance, sampler=sampler,
                  batch_size=args.batch_size, clip=clip, progress=not args.quiet, model=label)
    if suite == "folder":
        result = folder_suite(pipe, dataset, inception=inception, **common)
    else:
        result = shapeworld_suite(pipe, sweep=args.sweep, sweep_values=sweep_values or None, sweep_n=args.sweep_n,
                                  sweep_samplers=_list(args.sweep_samplers, str, "sweep-samplers"),
                                  sweep_stages=_list(args.sweep_stages, str, "sweep-stages"), parts=parts,
                                  variation_eta=_variation_eta(args.variation_eta), **common)
    paths = write_report(args.out, result)
    if not args.quiet:
        print(f"{_headline(result.data)} [{time.time() - start:.0f} s]")
    print(os.fspath(paths[0].parent))
