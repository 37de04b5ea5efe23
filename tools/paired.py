"""Compare two `cascade eval` reports prompt by prompt: the same prompts, judged twice.

    python tools/paired.py BASE/report.json OTHER/report.json [--size 64]

Two ShapeWorld reports made with the same seed, n and batch size judge the same prompts in the
same order, so their full-match outcomes pair up (each report's judge part keeps them under
`items`). A paired comparison is far tighter than two independent percentages: prompts both
models get right or both get wrong cancel, and only the discordant ones count. Printed per split
and over all prompts: each report's full match, the difference (OTHER − BASE) with its 95%
interval (normal approximation of the paired differences), the discordant counts and McNemar's
exact two-sided p-value (binomial on the discordant pairs).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence


def mcnemar_p(base_only: int, other_only: int) -> float:
    """Exact two-sided McNemar p-value: the discordant pairs as a fair coin's tosses."""
    n = base_only + other_only
    if n == 0:
        return 1.0
    k = min(base_only, other_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired(base: Sequence[int], other: Sequence[int]) -> dict[str, Any]:
    """Full-match rates of two paired outcome lists, their difference with a 95% interval, McNemar."""
    if len(base) != len(other) or not base:
        raise ValueError(f"paired outcomes must have the same non-zero length, got {len(base)} and {len(other)}")
    n = len(base)
    d = [o - b for b, o in zip(base, other)]
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    base_only = sum(1 for b, o in zip(base, other) if b and not o)
    other_only = sum(1 for b, o in zip(base, other) if o and not b)
    return {"n": n, "base": sum(base) / n, "other": sum(other) / n, "difference": mean,
            "interval": (mean - half, mean + half), "base_only": base_only, "other_only": other_only,
            "p": mcnemar_p(base_only, other_only)}


def _items(report: dict, size: str, name: str) -> dict[str, list]:
    try:
        return report["judge"][size]["items"]
    except KeyError:
        raise SystemExit(f"{name}: no per-prompt outcomes at size {size} (a report from before they were kept, "
                         "or one without the judge part)") from None


def compare(base: dict, other: dict, size: str) -> dict[str, dict]:
    """Paired results per split and "all" at one output size; refuses reports of different prompts."""
    for key in ("suite", "seed", "n", "batch_size"):
        if base.get(key) != other.get(key):
            raise SystemExit(f"the reports judged different prompts: {key} {base.get(key)!r} vs {other.get(key)!r}")
    a, b = _items(base, size, "BASE"), _items(other, size, "OTHER")
    if a["split"] != b["split"]:
        raise SystemExit("the reports' prompts are in different splits or orders")
    out = {}
    for split in [*dict.fromkeys(a["split"]), "all"]:
        idx = [i for i, s in enumerate(a["split"]) if split in (s, "all")]
        out[split] = paired([a["full"][i] for i in idx], [b["full"][i] for i in idx])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", type=Path)
    ap.add_argument("other", type=Path)
    ap.add_argument("--size", default=None, help="output size to compare (default: the smallest both judged)")
    args = ap.parse_args(argv)
    base, other = (json.loads(p.read_text()) for p in (args.base, args.other))
    sizes = sorted(set(base.get("judge", {})) & set(other.get("judge", {})), key=int)
    if not sizes:
        raise SystemExit("the reports share no judged output size")
    size = args.size or sizes[0]
    rows = compare(base, other, size)
    print(f"full match at {size}x{size}, paired ({args.base} -> {args.other})")
    print(f"{'split':<16}{'n':>5}{'base':>8}{'other':>8}{'diff':>8}   95% interval     base only  other only  McNemar p")
    for split, r in rows.items():
        lo, hi = r["interval"]
        print(f"{split:<16}{r['n']:>5}{r['base']:>8.1%}{r['other']:>8.1%}{r['difference']:>+8.1%}   "
              f"[{lo:+.1%}, {hi:+.1%}]  {r['base_only']:>9}  {r['other_only']:>10}  {r['p']:>9.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
