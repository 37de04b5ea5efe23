"""Wrappers that keep the denoiser's signature: classifier-free guidance and thresholding."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .denoiser import Cond, DenoiseFn


def concat_cond(a: Cond, b: Cond) -> dict[str, Any]:
    """Two condition dicts stacked along the batch: tensors concatenated, other values equal."""
    if a.keys() != b.keys():
        raise ValueError(f"conditions differ in keys: {sorted(a)} vs {sorted(b)}")
    out: dict[str, Any] = {}
    for k in a:
        va, vb = a[k], b[k]
        if isinstance(va, Tensor):
            out[k] = torch.cat([va, vb])
        elif va is None and vb is None:
            out[k] = None
        elif va == vb:
            out[k] = va
        else:
            raise ValueError(f"condition {k!r} is not a tensor and differs between the two batches")
    return out


class ClassifierFreeGuidance:
    """x0 = x0_u + w (x0_c − x0_u) (Ho & Salimans 2022, eq. 6; equal to guiding ε for fixed x_t).

    The conditional and unconditional halves run as one batch. `uncond` is the stage's
    unconditional condition for the same batch (its drop flags set). w = 1 skips the
    unconditional pass; w = 0 runs only the unconditional one.
    """

    def __init__(self, denoise: DenoiseFn, uncond: Cond, scale: float):
        if scale < 0:
            raise ValueError(f"guidance scale must be at least 0, got {scale}")
        self.denoise, self.uncond, self.scale = denoise, uncond, float(scale)

    def __call__(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        if self.scale == 1.0:
            return self.denoise(x, t, cond)
        if self.scale == 0.0:
            return self.denoise(x, t, self.uncond)
        both = self.denoise(torch.cat([x, x]), torch.cat([t, t]), concat_cond(cond, self.uncond))
        x0_cond, x0_uncond = both.chunk(2)
        return x0_uncond + self.scale * (x0_cond - x0_uncond)


class DynamicThreshold:
    """Imagen's dynamic thresholding (Saharia et al. 2022, §2.3): per sample, s = the
    `percentile` of |x0_hat|, at least 1; x0_hat is clipped to [−s, s] and divided by s."""

    def __init__(self, denoise: DenoiseFn, percentile: float = 0.995):
        if not 0 < percentile <= 1:
            raise ValueError(f"dynamic threshold percentile must lie in (0, 1], got {percentile}")
        self.denoise, self.percentile = denoise, percentile

    def __call__(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        x0 = self.denoise(x, t, cond)
        flat = x0.reshape(x0.shape[0], -1).abs().float()
        s = torch.quantile(flat, self.percentile, dim=1).clamp(min=1.0).to(x0.dtype)
        s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
        return torch.maximum(torch.minimum(x0, s), -s) / s


class StaticThreshold:
    """Clip x0_hat to [−limit, limit] (guided-diffusion's clip_denoised)."""

    def __init__(self, denoise: DenoiseFn, limit: float = 1.0):
        self.denoise, self.limit = denoise, limit

    def __call__(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        return self.denoise(x, t, cond).clamp(-self.limit, self.limit)
