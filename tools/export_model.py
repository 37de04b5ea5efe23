"""Copy a model folder with its weights cast (e.g. to fp16 for shipping), and report its size.

    python tools/export_model.py MODEL_DIR OUT_DIR [--fp16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cascade.pipeline import CascadePipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--fp16", action="store_true", help="cast floating-point weights to float16")
    args = ap.parse_args()
    pipe = CascadePipeline.from_pretrained(args.model, progress=False)
    pipe.save_pretrained(args.out, dtype=torch.float16 if args.fp16 else None)
    total = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    print(f"{args.out}: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
