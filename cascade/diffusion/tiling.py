"""Tiled evaluation of a fully convolutional denoiser, so that peak memory is bounded.

`TiledDenoiser` keeps the denoiser's signature. It cuts the image (and every spatial
condition, e.g. a super-resolution stage's `lowres`) into windows: a core of `tile`×`tile`
pixels plus `margin` pixels of context on each side (the overlap-tile strategy of
Ronneberger et al. 2015, §2), evaluates them one image and `tiles_per_call` windows at a time,
and keeps only each window's core. Where `margin` covers the network's receptive radius and
the windows are aligned to its downsampling factor, the result equals untiled evaluation up to
floating-point rounding — for networks whose layers are all local (per-pixel LayerNorm, no
attention). GroupNorm and attention see only the window, so there tiling is an approximation.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from .denoiser import Cond, DenoiseFn


def _starts(size: int, tile: int) -> list[int]:
    """Core starts along one axis: 0, tile, 2·tile, … covering [0, size)."""
    return list(range(0, size, tile))


def _align_down(v: int, factor: int) -> int:
    return (v // factor) * factor


def _align_up(v: int, factor: int) -> int:
    return -(-v // factor) * factor


class TiledDenoiser:
    """denoise(x, t, cond) evaluated window by window; see the module docstring."""

    def __init__(self, denoise: DenoiseFn, tile: int, margin: int, *, factor: int = 1,
                 spatial_keys: Sequence[str] = ("lowres",), tiles_per_call: int = 1):
        if tile < 1 or margin < 0:
            raise ValueError(f"tile must be positive and margin non-negative, got tile={tile}, margin={margin}")
        if tile % factor or margin % factor:
            raise ValueError(f"tile ({tile}) and margin ({margin}) must be multiples of the network's "
                             f"downsampling factor {factor}")
        self.denoise, self.tile, self.margin, self.factor = denoise, tile, margin, factor
        self.spatial_keys, self.tiles_per_call = tuple(spatial_keys), max(1, tiles_per_call)

    def windows(self, height: int, width: int) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
        """[(window (y0, y1, x0, x1), core (y0, y1, x0, x1))] covering the image."""
        out = []
        for cy in _starts(height, self.tile):
            for cx in _starts(width, self.tile):
                core = (cy, min(cy + self.tile, height), cx, min(cx + self.tile, width))
                win = (max(0, _align_down(core[0] - self.margin, self.factor)),
                       min(height, _align_up(core[1] + self.margin, self.factor)),
                       max(0, _align_down(core[2] - self.margin, self.factor)),
                       min(width, _align_up(core[3] + self.margin, self.factor)))
                out.append((win, core))
        return out

    def __call__(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        B, _, H, W = x.shape
        if H <= self.tile and W <= self.tile:
            return self.denoise(x, t, cond)
        out = torch.empty_like(x)
        wins = self.windows(H, W)
        for b in range(B):  # one image at a time: peak memory does not grow with the batch
            one = {k: _index(v, b) for k, v in cond.items()}
            # windows of one size go through the network together
            by_shape: dict[tuple[int, int], list[int]] = {}
            for i, (win, _) in enumerate(wins):
                by_shape.setdefault((win[1] - win[0], win[3] - win[2]), []).append(i)
            for idx in by_shape.values():
                for s in range(0, len(idx), self.tiles_per_call):
                    chunk = idx[s: s + self.tiles_per_call]
                    xs = torch.cat([_crop(x[b: b + 1], wins[i][0]) for i in chunk])
                    cs = {k: (torch.cat([_crop(v, wins[i][0]) for i in chunk]) if k in self.spatial_keys
                              else _repeat(v, len(chunk))) for k, v in one.items()}
                    x0 = self.denoise(xs, t[b: b + 1].expand(len(chunk)), cs)
                    for j, i in enumerate(chunk):
                        (wy0, _, wx0, _), (cy0, cy1, cx0, cx1) = wins[i]
                        out[b, :, cy0:cy1, cx0:cx1] = x0[j, :, cy0 - wy0: cy1 - wy0, cx0 - wx0: cx1 - wx0]
        return out


def _index(v: Any, b: int) -> Any:
    return v[b: b + 1] if isinstance(v, Tensor) and v.ndim > 0 else v


def _repeat(v: Any, n: int) -> Any:
    return v.expand(n, *v.shape[1:]) if isinstance(v, Tensor) and v.ndim > 0 else v


def _crop(v: Tensor, win: tuple[int, int, int, int]) -> Tensor:
    y0, y1, x0, x1 = win
    return v[..., y0:y1, x0:x1]


def receptive_radius(denoise: DenoiseFn, x: Tensor, t: Tensor, cond: Cond, spatial_keys: Sequence[str] = ("lowres",)) -> int:
    """How far (in pixels) a change at the centre of the input reaches in the output: a measured
    lower bound on the margin a TiledDenoiser needs (for tests and for choosing a margin)."""
    base = denoise(x, t, cond)
    H, W = x.shape[-2:]
    xp = x.clone()
    xp[..., H // 2, W // 2] += 1.0
    cp = {k: (v.clone() if k in spatial_keys else v) for k, v in cond.items()}
    for k in spatial_keys:
        if k in cp:
            cp[k][..., H // 2, W // 2] += 1.0
    diff = (denoise(xp, t, cp) - base).abs().amax(dim=(0, 1)) > 0
    ys, xs = torch.nonzero(diff, as_tuple=True)
    if len(ys) == 0:
        return 0
    return int(max((ys - H // 2).abs().max(), (xs - W // 2).abs().max()))
