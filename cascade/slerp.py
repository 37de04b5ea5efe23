"""Spherical interpolation: between CLIP embeddings (unit vectors) and between noise tensors x_T."""

from __future__ import annotations

import torch
from torch import Tensor


def slerp(a: Tensor, b: Tensor, frac: Tensor | float) -> Tensor:
    """Spherical interpolation between unit vectors a and b (B, D) at fraction(s) `frac`."""
    a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    frac = torch.as_tensor(frac, dtype=a.dtype, device=a.device).reshape(-1, 1)
    omega = torch.arccos((a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    out = (torch.sin((1 - frac) * omega) / so) * a + (torch.sin(frac * omega) / so) * b
    return torch.nn.functional.normalize(out, dim=-1)


def slerp_noise(a: Tensor, b: Tensor, frac: Tensor) -> Tensor:
    """Per fraction, x_T between two noise tensors a and b (each (1, ...)): the slerp of their
    directions scaled by the linear blend of their norms (DALL·E 2 §3.2 interpolates inverted x_T)."""
    fa, fb = a.reshape(1, -1).float(), b.reshape(1, -1).float()
    frac = frac.reshape(-1, 1).to(fa)
    norm = (1 - frac) * fa.norm() + frac * fb.norm()
    out = slerp(fa.expand(len(frac), -1), fb.expand(len(frac), -1), frac) * norm
    return out.view(len(frac), *a.shape[1:])
