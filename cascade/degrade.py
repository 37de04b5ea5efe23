"""Low-resolution conditioning for the super-resolution stages, shared by training and sampling.

`lowres_condition` turns a low-resolution image into what a super-resolution network sees:
optionally degraded (blur; for SR-1024 also a down/up-sampling round trip, the "stronger
degradation" of DALL·E 2 App. C), upsampled to the output size, then noised at the
augmentation level a ∈ [0, 1] (x·cos(aπ/2) + ε·sin(aπ/2), Ho et al. 2021 §3). Training and
sampling call the same function, so the network is conditioned on the same distribution.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .stage import AugmentationConfig


def upsample(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bicubic, antialiased resize of (B, C, H, W) images in [-1, 1]."""
    size = (size, size) if isinstance(size, int) else size
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1).to(x.dtype)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Blur each image of (B, C, H, W) with its own σ (B,) (in pixels), separably, reflect-padded."""
    B, C, H, W = x.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    s = sigma.float().to(x.device).clamp(min=1e-3).view(B, 1)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / s) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, K)
    k = kernel.repeat_interleave(C, dim=0)  # (B*C, K)
    flat = x.float().reshape(1, B * C, H, W)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect" if W > radius else "replicate")
    flat = F.conv2d(flat, k.view(B * C, 1, 1, -1), groups=B * C)
    flat = F.pad(flat, (0, 0, radius, radius), mode="reflect" if H > radius else "replicate")
    flat = F.conv2d(flat, k.view(B * C, 1, -1, 1), groups=B * C)
    return flat.reshape(B, C, H, W).to(x.dtype)


def _uniform(n: int, lo: float, hi: float, generator: Optional[torch.Generator]) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def lowres_condition(
    lowres: Tensor,
    size: int | tuple[int, int],
    aug_level: Tensor,
    config: AugmentationConfig | None,
    *,
    generator: Optional[torch.Generator] = None,
    train: bool = False,
) -> Tensor:
    """The network's `lowres` input: (degraded if training), upsampled to `size`, noised at aug_level (B,)."""
    B = lowres.shape[0]
    x = lowres
    if train and config is not None:
        blur = torch.rand(B, generator=generator) < config.blur_prob
        if config.kind == "degrade":
            # round trip through a random smaller size, then blur: JPEG-free BSR-lite
            factor = float(_uniform(1, 1.0, 2.0, generator))
            h, w = x.shape[-2:]
            small = (max(1, round(h / factor)), max(1, round(w / factor)))
            x = upsample(upsample(x, small), (h, w))
        if blur.any():
            sigma = _uniform(B, *config.blur_sigma, generator)
            x = torch.where(blur.view(B, 1, 1, 1).to(x.device), gaussian_blur(x, sigma), x)
    x = upsample(x, size)
    a = aug_level.float().to(x.device).view(B, 1, 1, 1)
    if torch.any(a > 0):
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)
        x = (x.float() * torch.cos(a * math.pi / 2) + noise * torch.sin(a * math.pi / 2)).to(x.dtype)
    return x
