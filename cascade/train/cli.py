"""`cascade train STAGE --config FILE --model MODEL_DIR --run RUN_DIR [...]` (registered by cascade.cli)."""

from __future__ import annotations

import argparse
import logging
import sys

from .config import STAGES


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train one stage (clip, prior, decoder, sr256, sr1024) of a model folder",
        description="Train one stage. MODEL_DIR (from `cascade init`) gives the starting weights and the frozen "
                    "CLIP; the stage's EMA weights are written back into MODEL_DIR/STAGE at each checkpoint. "
                    "Runs unchanged under `accelerate launch` on several processes.")
    p.add_argument("stage", metavar="STAGE", help=f"one of {', '.join(STAGES)}")
    p.add_argument("--config", required=True, help="the model family's TOML (its [STAGE.train] table is the recipe)")
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="model folder to train (and write) the stage of")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="training state: checkpoints, logs, samples")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR's latest checkpoint (if any)")
    p.add_argument("--max-steps", type=int, help="train until this optimizer step (overrides the train table)")
    p.add_argument("--max-minutes", type=float,
                   help="checkpoint and stop after this many minutes of this session "
                        "(`touch RUN/STOP` or SIGTERM: checkpoint and stop now)")
    p.add_argument("--data", default="shapeworld",
                   help="shapeworld (default), an image-caption folder / CSV / JSONL, "
                        "or (prior only) an embeddings .safetensors")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one train-table key, e.g. --set batch_size=8 --set mixed_precision=no (TOML values)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: torch's choice). With another job on the same cores use 1: "
                        "two jobs of 2 threads on 2 cores each run ~6x slower than with 1 thread each")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _overrides(items: list[str]) -> dict:
    import tomllib

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value  # a bare string
    return out


def cmd_train(args: argparse.Namespace) -> None:
    from .trainer import Trainer

    if args.stage not in STAGES:
        raise ValueError(f"unknown stage {args.stage!r} (stages: {', '.join(STAGES)})")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be at least 1, got {args.max_steps}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("cascade.train")  # the trainer's and the data's messages, not open_clip's
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    trainer = Trainer(args.stage, args.config, args.model, args.run, data=args.data, resume=args.resume,
                      max_steps=args.max_steps, max_minutes=args.max_minutes, overrides=_overrides(args.set),
                      progress=not args.quiet)
    result = trainer.run()
    if not result.main_process:
        return
    if result.losses:
        print(f"{args.stage}: step {result.step} ({result.stopped}), loss {result.losses[-1][1]:.5f}")
    else:
        print(f"{args.stage}: step {result.step} ({result.stopped})")
