"""Does bf16 autocast change what a stage draws? Same prompts, same seeds, the pipeline run with the
stages in fp32 and with the named stages in bf16: PSNR between the two outputs of each stage and how
often the ShapeWorld judge reads them the same, plus each setting's wall time.

    python tools/compare_precision.py [--model DIR] [--bf16 sr256,sr1024] [--n 16] [--size 1024]
"""
from __future__ import annotations

import argparse
import time

import torch

from cascade.cli import _stage_choice
from cascade.data import caption, judge, sample_scenes, score
from cascade.eval.metrics import psnr
from cascade.images import tensor_to_pil
from cascade.pipeline import CascadePipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: the shipped model)")
    ap.add_argument("--bf16", default="sr256,sr1024", metavar="STAGE,...|all")
    ap.add_argument("--n", type=int, default=16, help="prompts (seeded ShapeWorld captions)")
    ap.add_argument("--size", type=int, default=256, choices=(64, 256, 1024))
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    fp32 = CascadePipeline.from_pretrained(args.model, progress=False, bf16=False)
    mixed = CascadePipeline(fp32.clip, fp32.stages, progress=False, bf16=_stage_choice(args.bf16))
    scenes = sample_scenes(args.n, seed=2024)
    seconds = {"fp32": 0.0, "bf16": 0.0}
    gaps: dict[str, list[float]] = {}
    same, full = [], {"fp32": [], "bf16": []}
    for start in range(0, args.n, args.batch):
        chunk = scenes[start:start + args.batch]
        prompts = [caption(s) for s in chunk]
        outs = {}
        for name, pipe in (("fp32", fp32), ("bf16", mixed)):
            t = time.perf_counter()
            outs[name] = pipe(prompts, seed=start, final_size=args.size, return_intermediates=True)
            seconds[name] += time.perf_counter() - t
        for role, x in outs["fp32"].stages.items():
            if x.dim() == 4:
                gaps.setdefault(role, []).extend(psnr(x, outs["bf16"].stages[role]).tolist())
        final = list(outs["fp32"].stages)[-1]
        for i, scene in enumerate(chunk):
            scores = {k: score(judge(tensor_to_pil(outs[k].stages[final][i:i + 1])[0], scene), scene) for k in outs}
            same.append(scores["fp32"] == scores["bf16"])
            for k, sc in scores.items():
                full[k].append(bool(sc["full"]))
    print(f"bf16 stages: {', '.join(sorted(mixed.bf16))}; {args.n} prompts at {args.size}px, "
          f"{torch.get_num_threads()} threads")
    for role, v in gaps.items():
        finite = [g for g in v if g != float("inf")]
        shown = f"{sum(finite) / len(finite):.1f} dB" if finite else "identical"
        print(f"  {role:8s} PSNR fp32 vs bf16: {shown}")
    print(f"  judge scores every attribute the same: {100 * sum(same) / len(same):.0f}%; full match fp32 "
          f"{100 * sum(full['fp32']) / args.n:.0f}%, bf16 {100 * sum(full['bf16']) / args.n:.0f}%")
    print(f"  wall time fp32 {seconds['fp32']:.1f} s, bf16 {seconds['bf16']:.1f} s "
          f"({seconds['fp32'] / seconds['bf16']:.2f}x)")


if __name__ == "__main__":
    main()
