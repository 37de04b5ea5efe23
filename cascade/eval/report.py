"""Writing an evaluation: report.json (the numbers), report.md (tables) and PNG figures.

Figures use matplotlib when it is installed (``pip install cascade-diffusion[eval]``) and
simple Pillow-drawn charts otherwise, from the same panel descriptions, so a report always
has its figures. `write_report(out_dir, result)` returns the paths it wrote.
"""
from __future__ import annotations

import json
import math
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

from . import report_md

__all__ = ["Panel", "write_report", "to_json", "draw_panels", "samples_figure", "figure_backend"]

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
ATTRIBUTES = ("full", "colour", "shape", "size", "position", "relation", "background", "count")


# ---------------------------------------------------------------------------- JSON
def to_json(value: Any, digits: int = 6) -> Any:
    """JSON-ready data: floats to `digits` significant digits, inf as "inf", NaN as null."""
    if isinstance(value, dict):
        return {str(k): to_json(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v, digits) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return float(f"{value:.{digits}g}")
    return value if isinstance(value, (int, str)) else str(value)


# ---------------------------------------------------------------------------- panels
@dataclass
class Panel:
    """One chart: lines over numeric x, or grouped bars over `categories`."""
    title: str
    xlabel: str
    ylabel: str
    series: dict[str, tuple[list, list]] = field(default_factory=dict)   # name -> (xs, ys); ys may hold None
    kind: str = "line"
    categories: Optional[list[str]] = None
    xlog: bool = False
    ylim: Optional[tuple[float, float]] = None
    marker_x: Optional[float] = None                                        # a dashed vertical line (the default)


def figure_backend(backend: str = "auto") -> str:
    """"matplotlib" if asked for or (auto) installed, else "pillow"; $CASCADE_FIGURES overrides auto."""
    if backend == "auto":
        backend = os.environ.get("CASCADE_FIGURES", "auto")
    if backend == "auto":
        try:
            import matplotlib  # noqa: F401
            return "matplotlib"
        except ImportError:
            return "pillow"
    if backend not in ("matplotlib", "pillow"):
        raise ValueError(f"figure backend must be auto, matplotlib or pillow, got {backend!r}")
    return backend


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:   # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int(math.ceil((hi - start) / step)) + 1)]


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.0e}"


def _y_range(panel: Panel) -> tuple[float, float]:
    if panel.ylim:
        return panel.ylim
    ys = [y for _, (_, yy) in panel.series.items() for y in yy if y is not None and math.isfinite(y)]
    if not ys:
        return 0.0, 1.0
    lo, hi = min(ys + [0.0]) if min(ys) >= 0 else min(ys), max(ys)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
    return lo - (pad if lo < 0 else 0), hi + pad


def _pillow_panel(panel: Panel, h: int = 320) -> Image.Image:
    w = max(460, 72 * len(panel.categories or []) + 72)
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    f, fs = _font(13), _font(11)
    left, right, top, bottom = 58, 14, 46, 44
    pw, ph = w - left - right, h - top - bottom
    d.text((w // 2, 6), panel.title, fill="black", font=f, anchor="ma")
    d.text((left + pw // 2, h - 6), panel.xlabel, fill="black", font=fs, anchor="md")
    d.text((4, top - 14), panel.ylabel, fill="black", font=fs)
    y0, y1 = _y_range(panel)
    ticks = [t for t in _nice_ticks(y0, y1) if y0 - 1e-12 <= t <= y1 + 1e-12]
    Y = lambda y: top + ph - (y - y0) / (y1 - y0 or 1.0) * ph  # noqa: E731
    for t in ticks:
        d.line([(left, Y(t)), (left + pw, Y(t))], fill="#e6e6e6")
        d.text((left - 4, Y(t)), _fmt(t), fill="black", font=fs, anchor="rm")
    d.rectangle([left, top, left + pw, top + ph], outline="black")
    names = list(panel.series)
    if panel.kind == "bar":
        cats = panel.categories or []
        slot = pw / max(len(cats), 1)
        bw = slot * 0.8 / max(len(names), 1)
        for ci, cat in enumerate(cats):
            d.text((left + slot * (ci + 0.5), top + ph + 4), cat, fill="black", font=fs, anchor="ma")
            for si, name in enumerate(names):
                ys = panel.series[name][1]
                if ci < len(ys) and ys[ci] is not None:
                    x = left + slot * ci + slot * 0.1 + bw * si
                    d.rectangle([x, Y(ys[ci]), x + bw - 1, Y(max(y0, 0.0))], fill=PALETTE[si % len(PALETTE)])
    else:
        xs_all = sorted({x for xs, _ in panel.series.values() for x in xs})
        tx = (lambda x: math.log(x)) if panel.xlog else (lambda x: x)
        lo, hi = (tx(xs_all[0]), tx(xs_all[-1])) if xs_all else (0.0, 1.0)
        X = lambda x: left + 12 + (tx(x) - lo) / ((hi - lo) or 1.0) * (pw - 24)  # noqa: E731
        for x in xs_all:
            d.text((X(x), top + ph + 4), _fmt(x), fill="black", font=fs, anchor="ma")
        if panel.marker_x is not None and xs_all and xs_all[0] <= panel.marker_x <= xs_all[-1]:
            for yy in range(top, top + ph, 8):
                d.line([(X(panel.marker_x), yy), (X(panel.marker_x), yy + 4)], fill="#888888")
        for si, name in enumerate(names):
            colour = PALETTE[si % len(PALETTE)]
            pts = [(X(x), Y(y)) for x, y in zip(*panel.series[name]) if y is not None and math.isfinite(y)]
            if len(pts) > 1:
                d.line(pts, fill=colour, width=2)
            for px, py in pts:
                d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    lx, ly = left + 60, top - 18                    # the legend: one row between the title and the plot
    for si, name in enumerate(names):
        d.rectangle([lx, ly + 3, lx + 9, ly + 12], fill=PALETTE[si % len(PALETTE)])
        d.text((lx + 13, ly), name, fill="black", font=fs)
        lx += 13 + int(d.textlength(name, font=fs)) + 12
    return im


def _matplotlib_panels(panels: Sequence[Panel], path: Path, cols: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.3 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        names = list(panel.series)
        if panel.kind == "bar":
            cats = panel.categories or []
            width = 0.8 / max(len(names), 1)
            for si, name in enumerate(names):
                ys = [y if y is not None else 0.0 for y in panel.series[name][1]]
                ax.bar([c + width * (si - (len(names) - 1) / 2) for c in range(len(ys))], ys, width,
                       label=name, color=PALETTE[si % len(PALETTE)])
            ax.set_xticks(range(len(cats)), cats, fontsize=8, rotation=25)
        else:
            for si, name in enumerate(names):
                pts = [(x, y) for x, y in zip(*panel.series[name]) if y is not None and math.isfinite(y)]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=name, color=PALETTE[si % len(PALETTE)])
            if panel.xlog:
                ax.set_xscale("log")
                ax.minorticks_off()
            xs = sorted({x for xs, _ in panel.series.values() for x in xs})
            if xs:
                ax.set_xticks(xs, [_fmt(x) for x in xs])
            if panel.marker_x is not None:
                ax.axvline(panel.marker_x, color="#888888", linestyle="--", linewidth=1)
        if panel.ylim:
            ax.set_ylim(*panel.ylim)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def draw_panels(panels: Sequence[Panel], path: str | os.PathLike, cols: int = 2, backend: str = "auto") -> Path:
    """Draw `panels` in a grid of `cols` columns into a PNG."""
    path = Path(path)
    cols = max(1, min(cols, len(panels)))
    if figure_backend(backend) == "matplotlib":
        _matplotlib_panels(panels, path, cols)
        return path
    tiles = [_pillow_panel(p) for p in panels]
    w, h = max(t.size[0] for t in tiles), tiles[0].size[1]
    rows = math.ceil(len(tiles) / cols)
    canvas = Image.new("RGB", (cols * w, rows * h), "white")
    for i, t in enumerate(tiles):
        canvas.paste(t, ((i % cols) * w, (i // cols) * h))
    canvas.save(path)
    return path


# ---------------------------------------------------------------------------- samples
def _verdict(score: Optional[dict]) -> tuple[str, str]:
    if not score:
        return "", "black"
    if score.get("full"):
        return "judge: full match", "#1a7f37"
    wrong = [k for k in ATTRIBUTES[1:] if k in score and score[k] is not None and float(score[k]) < 1.0]
    return "judge: wrong " + ", ".join(wrong or ["?"]), "#b42318"


def samples_figure(samples: Sequence[Any], path: str | os.PathLike, cols: int = 4, tile: int = 192) -> Path:
    """Samples in a grid, each with its prompt written under it (and the judge's verdict, if any)."""
    path = Path(path)
    f = _font(12)
    width = max(12, tile // 7)
    texts = []
    for s in samples:
        verdict, colour = _verdict(s.score)
        lines = [(line, "black") for line in textwrap.wrap(s.prompt, width=width) or [""]]
        texts.append(lines + [(line, colour) for line in textwrap.wrap(verdict, width=width)])
    th = tile + 10 + max(len(t) for t in texts) * 15
    cols = max(1, min(cols, len(samples)))
    rows = math.ceil(len(samples) / cols)
    canvas = Image.new("RGB", (cols * (tile + 8), rows * th), "white")
    d = ImageDraw.Draw(canvas)
    for i, (s, lines) in enumerate(zip(samples, texts)):
        x, y = (i % cols) * (tile + 8) + 4, (i // cols) * th + 4
        im = s.image if s.image.size == (tile, tile) else s.image.resize((tile, tile), Image.BICUBIC)
        canvas.paste(im, (x, y))
        for j, (line, colour) in enumerate(lines):
            d.text((x, y + tile + 3 + 15 * j), line, fill=colour, font=f)
    canvas.save(path)
    return path


# ---------------------------------------------------------------------------- figures from data
def _accuracy_panels(judge: dict) -> list[Panel]:
    panels = []
    for size, entry in judge.items():
        acc = {k: v for k, v in entry["accuracy"].items() if k != "all"}
        cats = [a for a in ATTRIBUTES if any(a in v for v in acc.values())]
        series = {split: (cats, [v.get(a) for a in cats]) for split, v in acc.items()}
        panels.append(Panel(f"judge accuracy at {size}x{size}", "attribute", "accuracy", series, kind="bar",
                            categories=cats, ylim=(0.0, 1.0)))
    return panels


def _guidance_panels(sweep: dict) -> list[Panel]:
    xs = [p["guidance"] for p in sweep["points"]]
    attrs = [a for a in ("full", "colour", "shape", "size", "position", "relation")
             if any(a in p["accuracy"]["all"] for p in sweep["points"])]
    acc = Panel(f"judge accuracy vs decoder guidance ({sweep['size']}px, n={sweep['n']})", "guidance scale",
                "accuracy", {a: (xs, [p["accuracy"]["all"].get(a) for p in sweep["points"]]) for a in attrs},
                ylim=(0.0, 1.0), marker_x=sweep.get("default"))
    dist = Panel("CMMD to true renders vs decoder guidance", "guidance scale", "CMMD (x1000)",
                 {"CMMD": (xs, [p.get("cmmd") for p in sweep["points"]])}, marker_x=sweep.get("default"))
    return [acc, dist]


def _steps_panels(sweep: dict) -> list[Panel]:
    acc, dist = [], []
    for role, entry in sweep["stages"].items():
        per = entry["samplers"]
        acc.append(Panel(f"{role}: judge full match ({entry['size']}px)", "sampling steps", "accuracy",
                         {s: ([p["steps"] for p in pts], [p["accuracy"].get("full") for p in pts]) for s, pts in per.items()},
                         xlog=True, ylim=(0.0, 1.0)))
        dist.append(Panel(f"{role}: CMMD to true renders", "sampling steps", "CMMD (x1000)",
                          {s: ([p["steps"] for p in pts], [p.get("cmmd") for p in pts]) for s, pts in per.items()},
                          xlog=True))
    return acc + dist


def write_report(out_dir: str | os.PathLike, result: Any, backend: str = "auto") -> list[Path]:
    """Write report.json, report.md and the figures of a SuiteResult into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = dict(result.data)
    figures: list[Path] = []
    if result.samples:
        figures.append(samples_figure(result.samples, out / "samples.png"))
    if data.get("judge"):
        panels = _accuracy_panels(data["judge"])
        figures.append(draw_panels(panels, out / "accuracy.png", cols=len(panels), backend=backend))
    sweeps = data.get("sweeps", {})
    if "guidance" in sweeps:
        figures.append(draw_panels(_guidance_panels(sweeps["guidance"]), out / "guidance_sweep.png", backend=backend))
    if "steps" in sweeps and sweeps["steps"]["stages"]:
        panels = _steps_panels(sweeps["steps"])
        figures.append(draw_panels(panels, out / "steps_sweep.png", cols=len(panels) // 2, backend=backend))
    data["figures"] = [p.name for p in figures]
    data = to_json(data)
    (out / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "report.md").write_text(report_md.render(data))
    return [out / "report.json", out / "report.md", *figures]
