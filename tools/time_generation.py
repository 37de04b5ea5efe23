"""Wall time of one text → image generation, per stage, and peak resident memory.

    python tools/time_generation.py [--model DIR | --config configs/micro.toml] [--size 1024] [--repeats 3]
                                    [--bf16 STAGE,...] [--compile STAGE,...|all]

Prints the median over repeats (after one warm-up) of each stage's seconds and the total.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cascade.cli import _stage_choice
from cascade.hardware import peak_rss_mb
from cascade.pipeline import CascadePipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: the shipped model)")
    ap.add_argument("--config", help="a config TOML: time a randomly initialised model instead")
    ap.add_argument("--prompt", default="a large red circle in the center on a white background")
    ap.add_argument("--size", type=int, default=1024, choices=(64, 256, 1024))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bf16", metavar="STAGE,...|all|none", help="stages under bf16 autocast (default: all where bf16 is native)")
    ap.add_argument("--no-channels-last", action="store_true", help="UNets in the default (NCHW) memory order")
    ap.add_argument("--compile", metavar="STAGE,...|all|none", default="none", help="torch.compile these stages (default none); "
                    "the warm-up call, which compiles, is reported apart")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kw = dict(progress=False, bf16=_stage_choice(args.bf16), channels_last=not args.no_channels_last,
              compile=_stage_choice(args.compile, "compile"))
    pipe = (CascadePipeline.from_config(args.config, **kw) if args.config
            else CascadePipeline.from_pretrained(args.model, **kw))
    times: dict[str, list[float]] = {}
    original = pipe._run_stage

    def timed(role, *a, **kw):
        t = time.perf_counter()
        out = original(role, *a, **kw)
        times.setdefault(role, []).append(time.perf_counter() - t)
        return out

    pipe._run_stage = timed
    totals = []
    for i in range(args.repeats + 1):
        if i == 1:
            times.clear()
        t = time.perf_counter()
        pipe(args.prompt, seed=i, final_size=args.size)
        if i > 0:
            totals.append(time.perf_counter() - t)
        else:
            print(f"warm-up  {time.perf_counter() - t:8.3f} s  (the first call{', compiling' if pipe.compiled else ''})")
    for role, ts in times.items():
        print(f"{role:8s} {statistics.median(ts):8.3f} s")
    print(f"{'total':8s} {statistics.median(totals):8.3f} s  (text → {args.size}², median of {args.repeats}, "
          f"{torch.get_num_threads()} threads, bf16: {', '.join(sorted(pipe.bf16)) or 'none'}, "
          f"channels-last: {'yes' if pipe.channels_last else 'no'}, "
          f"compiled: {', '.join(sorted(pipe.compiled)) or 'none'})")
    print(f"peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
