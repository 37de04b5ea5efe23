"""Copy a model folder with its weights cast (e.g. to fp16 for shipping), and report its size.

    python tools/export_model.py MODEL_DIR OUT_DIR [--fp16] [--vocabulary shapeworld]

--vocabulary shapeworld stores the CLIP's token embedding compactly: the rows of the words
ShapeWorld's captions use (49 of 49,408) exactly, one shared row for every other token
(`CLIP.save_pretrained(token_rows=...)`); every ShapeWorld prompt encodes bit for bit as before.
Only for a CLIP trained on ShapeWorld alone: a CLIP trained on other captions needs its rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cascade.clip import shapeworld_token_rows
from cascade.pipeline import CascadePipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--fp16", action="store_true", help="cast floating-point weights to float16")
    ap.add_argument("--vocabulary", choices=["full", "shapeworld"], default="full",
                    help="the CLIP token-embedding rows to keep exactly (default: all)")
    args = ap.parse_args()
    pipe = CascadePipeline.from_pretrained(args.model, progress=False)
    dtype = torch.float16 if args.fp16 else None
    pipe.save_pretrained(args.out, dtype=dtype)
    if args.vocabulary == "shapeworld":
        pipe.clip.save_pretrained(Path(args.out) / "clip", dtype=dtype, token_rows=shapeworld_token_rows(pipe.clip))
    total = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    print(f"{args.out}: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
