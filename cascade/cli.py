"""The `cascade` command line: generate, vary, interpolate, edit, info, init (and train, eval, bench
when those parts are installed). Every bad input is a one-line error before any sampling."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

STAGE_NAMES = ("prior", "decoder", "sr256", "sr1024")


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _stage_values(pairs: Optional[Sequence[str]], kind: type, name: str,
                  bare_roles: Optional[Sequence[str]] = None) -> Optional[Any]:
    """`--steps 20` (all stages) or `--steps decoder=30 --steps prior=10` → value or {role: value};
    with `bare_roles`, a bare value is theirs and the result is always {role: value}."""
    if not pairs:
        return None
    out: dict[str, Any] = {}
    single = None
    for item in pairs:
        role, sep, value = item.partition("=")
        if not sep:
            role, value = None, item
        try:
            v = kind(value)
        except ValueError:
            raise CliError(f"--{name}: {value!r} is not a valid {kind.__name__}") from None
        if role is None:
            single = v
        else:
            if role not in STAGE_NAMES:
                raise CliError(f"--{name}: unknown stage {role!r} (stages: {', '.join(STAGE_NAMES)})")
            out[role] = v
    if single is not None and (out or bare_roles):
        stages = bare_roles or [r for r in STAGE_NAMES if not (name == "guidance" and r.startswith("sr"))]
        return {**{r: single for r in stages}, **out}
    return out or single


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes; default 0)")
    p.add_argument("--steps", action="append", metavar="[STAGE=]N",
                   help="sampling steps, for every stage or one (repeatable): --steps 20 --steps prior=10")
    p.add_argument("--guidance", action="append", metavar="[STAGE=]W", help="classifier-free guidance scale, likewise")
    p.add_argument("--sampler", action="append", metavar="[STAGE=]NAME", help="ddpm, ddim, dpmpp_2m or heun, likewise")
    p.add_argument("--candidates", action="append", metavar="[STAGE=]K",
                   help="draw K decoder images per output and keep the one CLIP ranks closest to the prompt "
                        "(prior=K: the prior's embeddings likewise); default: the model's")
    p.add_argument("--size", type=int, choices=(64, 256, 1024), help="final image size (default: the largest stage)")
    p.add_argument("--bf16", metavar="STAGE,...|all|none",
                   help="run these stages' networks under bf16 autocast (default: all where the "
                        "device has native bf16, as AMX or AVX-512 BF16 CPUs do; none elsewhere)")
    p.add_argument("--compile", metavar="STAGE,...|all|none", default="none",
                   help="torch.compile these stages' networks (default none). The first image pays about a "
                        "minute per stage to compile: worth it for many images (docs/bench-quick.md)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _stage_choice(value: Optional[str], flag: str = "bf16") -> frozenset[str] | bool | None:
    """--bf16 / --compile: all, none or STAGE,... (None: not given, the pipeline's default)."""
    if value is None:
        return None  # --bf16 not given: the pipeline's default (cascade.pipeline.DEFAULT_BF16)
    if value == "none":
        return False
    if value == "all":
        return True
    roles = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [r for r in roles if r not in STAGE_NAMES]
    if unknown or not roles:
        raise CliError(f"--{flag} {value}: expected all, none or stages from {', '.join(STAGE_NAMES)}")
    return frozenset(roles)


def _load(args: argparse.Namespace):
    from .pipeline import DEFAULT_MODEL_DIR, CascadePipeline

    path = Path(args.model) if args.model else DEFAULT_MODEL_DIR
    if args.model is None and not DEFAULT_MODEL_DIR.is_dir():
        raise CliError("no default model is shipped with this installation yet: pass --model DIR "
                       "(make one with `cascade init configs/micro.toml DIR`)")
    bf16 = _stage_choice(args.bf16)
    compiled = _stage_choice(args.compile, "compile")
    pipe = CascadePipeline.from_pretrained(path, progress=not args.quiet, bf16=bf16, compile=compiled)
    return pipe.to(args.device)


def _sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    candidates = _stage_values(args.candidates, int, "candidates", bare_roles=["decoder"])
    return {
        "seed": args.seed,
        "steps": _stage_values(args.steps, int, "steps"),
        "guidance": _stage_values(args.guidance, float, "guidance"),
        "sampler": _stage_values(args.sampler, str, "sampler"),
        "stage_options": {role: {"candidates": k} for role, k in (candidates or {}).items()} or None,
        "final_size": args.size,
    }


def _check_out_png(out: str) -> Path:
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise CliError(f"--out {out}: expected a .png file or a folder")
    return path


def shapeworld_notes(prompts: Sequence[str]) -> list[str]:
    """The shipped model draws ShapeWorld scenes only: a note for each prompt that names none of
    its shapes (a user typing "a photo of a cat" otherwise gets a shape and no word why)."""
    import re

    from .data.shapeworld import SHAPES

    return [f"note: {p!r} names none of ShapeWorld's shapes ({', '.join(SHAPES)}): the shipped model was trained "
            "on ShapeWorld captions only, e.g. \"a large red circle in the center on a white background\" "
            "(--model DIR for another model)"
            for p in prompts if p.strip() and not set(re.findall(r"[a-z]+", p.lower())) & set(SHAPES)]


def cmd_generate(args: argparse.Namespace) -> None:
    prompts = list(args.prompts)
    if args.prompts_file:
        f = Path(args.prompts_file)
        if not f.is_file():
            raise CliError(f"prompts file not found: {f}")
        prompts += [line.strip() for line in f.read_text().splitlines() if line.strip()]
    if not prompts:
        raise CliError("no prompt given: pass PROMPT... or --prompts-file FILE (use \"\" for unconditional)")
    if args.n < 1:
        raise CliError(f"-n must be at least 1, got {args.n}")
    single_file = len(prompts) == 1 and args.n == 1 and args.out.lower().endswith(".png")
    if not single_file and args.out.lower().endswith(".png"):
        raise CliError(f"--out {args.out}: several images are written to a folder, not one .png file")
    if args.model is None:
        for note in shapeworld_notes(prompts):
            print(note, file=sys.stderr)
    pipe = _load(args)
    images = pipe(prompts, args.n, **_sampling_kwargs(args))
    if single_file:
        path = _check_out_png(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        images[0].save(path)
        print(path)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        p, k = divmod(i, args.n)
        name = f"{p:04d}.png" if args.n == 1 else f"{p:04d}_{k}.png"
        image.save(out / name)
    if args.grid and len(images) > 1:
        from .images import grid

        grid(images, cols=args.n if args.n > 1 else min(len(images), 8)).save(out / "grid.png")
    print(out)


def cmd_vary(args: argparse.Namespace) -> None:
    from .images import load_image

    image = load_image(args.image)  # a clear error before the model loads
    eta = parse_eta(args.eta, "--eta")
    pipe = _load(args)
    images = pipe.variations(image, args.n, **({} if eta == "default" else {"eta": eta}), **_sampling_kwargs(args))
    print(_save_images(images, args.out, "grid.png"))


def _save_images(images, folder: str, sheet: str) -> Path:
    """OUT/0000.png, 0001.png, … and all of them side by side in OUT/`sheet`; returns OUT."""
    from .images import grid

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        im.save(out / f"{i:04d}.png")
    grid(images).save(out / sheet)
    return out


def parse_eta(value: str, flag: str) -> Any:
    """A variations η option (`flag`): "default" (kept as is: the pipeline's), "none" (None: fresh
    noise) or a number ≥ 0; anything else is a ValueError naming the flag, before any work."""
    if value in ("default", "none"):
        return None if value == "none" else value
    try:
        eta = float(value)
    except ValueError:
        raise ValueError(f"{flag} must be a number, none or default, got {value!r}") from None
    if not eta >= 0:
        raise ValueError(f"{flag} must be at least 0, got {value}")
    return eta


def _endpoint(value: str):
    """An image path if it names a file (or looks like an image path), else text for the prior."""
    from .images import load_image

    if Path(value).is_file() or Path(value).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"):
        return load_image(value)
    return value


def cmd_interpolate(args: argparse.Namespace) -> None:
    from .images import save_gif

    a, b = _endpoint(args.a), _endpoint(args.b)
    if args.frames < 2:
        raise CliError(f"--frames must be at least 2, got {args.frames}")
    if args.invert and any(isinstance(x, str) for x in (a, b)):
        raise CliError("--invert needs two images (a text has no x_T to invert)")
    pipe = _load(args)
    images = pipe.interpolate(a, b, args.frames, invert=args.invert, **_sampling_kwargs(args))
    out = _save_images(images, args.out, "strip.png")
    save_gif(images, out / "interpolation.gif")
    print(out)


def _amounts(value: str) -> list[float]:
    try:
        amounts = [float(v) for v in value.split(",")]
    except ValueError:
        raise CliError(f"--amount must be numbers in [0, 1] separated by commas, got {value!r}") from None
    if not all(0 <= v <= 1 for v in amounts):
        raise CliError(f"--amount must be numbers in [0, 1], got {value!r}")
    return amounts


def cmd_edit(args: argparse.Namespace) -> None:
    from .images import load_image

    image = load_image(args.image)  # a clear error before the model loads
    amounts = _amounts(args.amount)
    pipe = _load(args)
    images = pipe.text_diff(image, args.from_text, args.to_text, amounts, invert=args.invert, **_sampling_kwargs(args))
    print(_save_images(images, args.out, "strip.png"))


def cmd_info(args: argparse.Namespace) -> None:
    from .pipeline import DEFAULT_MODEL_DIR, CascadePipeline

    path = Path(args.model_dir) if args.model_dir else DEFAULT_MODEL_DIR
    pipe = CascadePipeline.from_pretrained(path, progress=False)
    print(f"model: {path}")
    clip_params = sum(p.numel() for p in pipe.clip.parameters())
    print(f"  clip     {pipe.clip.config.model_name:<18} {clip_params / 1e6:9.2f}M params  embed_dim {pipe.clip.embed_dim}")
    for role, stage in pipe.stages.items():
        n = sum(p.numel() for p in stage.network.parameters())
        c = stage.config
        res = f"{c.lowres_resolution}→{c.resolution}px" if c.lowres_resolution else (f"{c.resolution}px" if c.resolution else "embeddings")
        s = c.sampling
        print(f"  {role:<8} {c.network_class:<18} {n / 1e6:9.2f}M params  {res:<12} "
              f"{c.diffusion.parametrization}-pred {c.schedule.kind}; default {s.sampler} {s.steps} steps, guidance {s.guidance}")


def cmd_init(args: argparse.Namespace) -> None:
    from .model_config import load_model_config
    from .pipeline import CascadePipeline

    config = load_model_config(args.config)
    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise CliError(f"{out} exists and is not empty (use --force to overwrite)")
    pipe = CascadePipeline.from_config(config, seed=args.seed, progress=False)
    pipe.save_pretrained(out)
    print(out)


def cmd_shapeworld(args: argparse.Namespace) -> None:
    from .data import ScenePool

    if args.n < 1 or args.size < 8:
        raise CliError(f"--n must be at least 1 and --size at least 8 (got {args.n}, {args.size})")
    out = Path(args.out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise CliError(f"{out} exists and is not an empty folder (use --force to write into it)")
    pool = ScenePool.build(args.n, args.seed, args.size, held_out=args.held_out, n_objects=args.objects,
                           captions=args.captions)
    pool.save_image_folder(out)
    print(f"{out}: {len(pool)} images of {args.size}×{args.size} px with captions")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="cascade", description="Hierarchical text-to-image diffusion (unCLIP).")
    parser.add_argument("--version", action="version", version=f"cascade {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="text to images")
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="one or more prompts (\"\" = unconditional)")
    p.add_argument("--prompts-file", help="a file with one prompt per line")
    p.add_argument("-n", type=int, default=1, help="images per prompt")
    p.add_argument("--out", default="out", help="a .png file (one prompt, -n 1) or a folder (default: out)")
    p.add_argument("--grid", action="store_true", help="also write grid.png")
    _sampling_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("vary", help="variations of an image")
    p.add_argument("image")
    p.add_argument("-n", type=int, default=4)
    p.add_argument("--out", default="variations")
    p.add_argument("--eta", default="default", metavar="ETA|none",
                   help="DDIM η from the image's DDIM-inverted x_T (DALL·E 2 §3.1; default 0.25; 0 redraws the "
                        "image, larger varies more); none: decode its CLIP embedding from fresh noise instead")
    _sampling_args(p)
    p.set_defaults(func=cmd_vary)

    p = sub.add_parser("interpolate", help="frames between two images or texts (a strip and a GIF)")
    p.add_argument("a", help="an image file or a text")
    p.add_argument("b", help="an image file or a text")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--out", default="interpolation")
    p.add_argument("--invert", action="store_true",
                   help="two images: also move between their DDIM-inverted x_T (DALL·E 2 §3.2), so the end frames "
                        "redraw the images themselves")
    _sampling_args(p)
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("edit", help="edit an image along a text diff (DALL·E 2 §3.3)")
    p.add_argument("image")
    p.add_argument("--from", dest="from_text", required=True, metavar="TEXT", help="what the image shows")
    p.add_argument("--to", dest="to_text", required=True, metavar="TEXT", help="what it should show")
    p.add_argument("--amount", default="0.25,0.5", metavar="A,A,...",
                   help="how far towards the diff, each in [0, 1] (one image each; default 0.25,0.5)")
    p.add_argument("--invert", action="store_true",
                   help="decode from the image's DDIM-inverted x_T, as the paper does, so the edits keep its layout")
    p.add_argument("--out", default="edits")
    _sampling_args(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("info", help="describe a model folder")
    p.add_argument("model_dir", nargs="?", metavar="MODEL", help="model folder (default: the shipped model)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("init", help="a randomly initialised model folder from a config (the start of training)")
    p.add_argument("config", help="a model config TOML, e.g. configs/micro.toml")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("shapeworld", help="write ShapeWorld scenes as an image-caption folder (PNG + .txt)",
                       description="Render seeded ShapeWorld scenes into OUT as NNNNNN.png with a same-named .txt "
                                   "caption (and scenes.jsonl): a folder for `cascade train --data` and "
                                   "`cascade eval --data`.")
    p.add_argument("out_dir", metavar="OUT")
    p.add_argument("--n", type=int, default=1000, help="scenes (default 1000)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objects", type=int, choices=(1, 2), help="objects per scene (default: either)")
    p.add_argument("--held-out", action="store_true", help="only scenes with a held-out shape-colour pair")
    p.add_argument("--captions", default="canonical", choices=("canonical", "paraphrase"))
    p.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    p.set_defaults(func=cmd_shapeworld)

    for name, module in (("train", "cascade.train.cli"), ("eval", "cascade.eval.cli"), ("bench", "cascade.bench")):
        _optional_command(sub, name, module)
    return parser


def _optional_command(sub: Any, name: str, module: str) -> None:
    """Commands whose parts register themselves with `add_parser(sub)` when present."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not module.startswith(e.name):
            raise
        return
    mod.add_parser(sub)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .checkpoint import CheckpointError
    from .config import ConfigError

    try:
        args.func(args)
    except (CliError, CheckpointError, ConfigError, ValueError, TypeError, FileNotFoundError) as e:
        print(f"cascade {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
