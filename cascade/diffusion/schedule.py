"""Noise schedules of the variance-preserving process x_t = alpha_t * x0 + sigma_t * eps.

A schedule is trained with T discrete steps (t = 0 … T-1) and is read by samplers in its
continuous form: alpha(t), sigma(t) and the log signal-to-noise ratio log(alpha²/sigma²) at
any real t in [0, T-1], so that any number of sampling steps can be drawn from it
(respacing, Nichol & Dhariwal 2021 §4) and samplers never see betas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

ScheduleName = Literal["cosine", "linear"]
Spacing = Literal["trailing", "leading", "linspace", "karras"]


@dataclass(frozen=True)
class ScheduleConfig:
    kind: ScheduleName = "cosine"  # cosine: Nichol & Dhariwal 2021 eq. 17; linear: Ho et al. 2020
    timesteps: int = 1000  # T, the number of discrete training steps
    cosine_offset: float = 0.008  # s in eq. 17
    linear_beta_start: float = 1e-4  # beta_1 of the linear schedule (scaled to T = 1000)
    linear_beta_end: float = 0.02  # beta_T of the linear schedule
    max_beta: float = 0.999  # betas are clipped here (eq. 17's note), so alpha_T > 0

    def __post_init__(self) -> None:
        if self.timesteps < 2:
            raise ValueError(f"timesteps must be at least 2, got {self.timesteps}")
        if not 0 < self.max_beta < 1:
            raise ValueError(f"max_beta must lie in (0, 1), got {self.max_beta}")


def cosine_alphas_cumprod(timesteps: int, offset: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """ᾱ_t = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), betas clipped at max_beta (eq. 17)."""
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, dim=0)


def linear_alphas_cumprod(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Ho et al. 2020: betas linear from beta_start to beta_end, rescaled for T != 1000."""
    scale = 1000 / timesteps
    betas = torch.linspace(scale * beta_start, scale * beta_end, timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


class NoiseSchedule:
    """The discrete ᾱ_t of a trained schedule, with its continuous (log-SNR) view.

    Between integer steps the log-SNR is interpolated linearly, so alpha(t) and sigma(t) are
    defined for every real t in [0, T-1] and agree exactly with ᾱ at integers.
    """

    def __init__(self, config: ScheduleConfig | None = None, alphas_cumprod: Tensor | None = None):
        self.config = config or ScheduleConfig()
        c = self.config
        if alphas_cumprod is None:
            if c.kind == "cosine":
                alphas_cumprod = cosine_alphas_cumprod(c.timesteps, c.cosine_offset, c.max_beta)
            elif c.kind == "linear":
                alphas_cumprod = linear_alphas_cumprod(c.timesteps, c.linear_beta_start, c.linear_beta_end)
            else:
                raise ValueError(f"unknown noise schedule {c.kind!r} (known: cosine, linear)")
        self.alphas_cumprod = alphas_cumprod.to(torch.float64)  # (T,)
        self.log_snrs = torch.log(self.alphas_cumprod) - torch.log1p(-self.alphas_cumprod)  # (T,)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @property
    def betas(self) -> Tensor:
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        return 1 - self.alphas_cumprod / prev

    def log_snr(self, t: Tensor | float) -> Tensor:
        """λ(t) = log(α²/σ²), piecewise linear in t between the trained integer steps."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.num_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_timesteps - 2)
        frac = t - lo
        return self.log_snrs[lo] * (1 - frac) + self.log_snrs[lo + 1] * frac

    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """(α_t, σ_t) with α² + σ² = 1, in float64."""
        lam = self.log_snr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        """The inverse of log_snr(t) (λ decreases with t), clamped to [0, T-1]."""
        lam = torch.as_tensor(log_snr, dtype=torch.float64)
        decreasing = -self.log_snrs  # increasing in t
        idx = torch.searchsorted(decreasing, (-lam).reshape(-1)).clamp(1, self.num_timesteps - 1)
        lo, hi = decreasing[idx - 1], decreasing[idx]
        frac = ((-lam.reshape(-1) - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1 + frac).reshape(lam.shape)

    def timesteps(self, steps: int, spacing: Spacing = "trailing") -> Tensor:
        """`steps` timesteps, decreasing, drawn from the T trained ones (respacing).

        trailing (Lin et al. 2024, table 2) always starts at T-1; leading and linspace as in
        the same table; `steps` = T gives every step T-1 … 0. karras (Karras et al. 2022,
        eq. 5, ρ = 7) spaces σ/α between the schedule's extremes and returns real-valued t.
        """
        T = self.num_timesteps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if steps > T:
            raise ValueError(f"steps ({steps}) cannot exceed the schedule's {T} trained timesteps")
        if spacing == "trailing":
            ts = torch.round(torch.arange(T, 0, -T / steps, dtype=torch.float64)) - 1
        elif spacing == "leading":
            ts = torch.arange(0, steps, dtype=torch.float64).mul(T // steps).flip(0)
        elif spacing == "linspace":
            ts = torch.linspace(T - 1, 0, steps, dtype=torch.float64).round()
        elif spacing == "karras":
            rho = 7.0
            # σ̃ = σ/α = exp(−λ/2); λ is decreasing in t, so log_snrs[-1] gives σ̃_max
            s_max, s_min = torch.exp(-self.log_snrs[[-1, 0]] / 2).tolist()
            s_max = min(s_max, 80.0)  # EDM's σ_max: the clipped cosine end (σ̃ ≈ 2e4) wastes steps
            s_max, s_min = s_max ** (1 / rho), s_min ** (1 / rho)
            ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
            sigmas = (s_max + ramp * (s_min - s_max)) ** rho
            return self.t_from_log_snr(-2 * torch.log(sigmas)).clamp(0, T - 1)
        else:
            raise ValueError(f"unknown timestep spacing {spacing!r} (known: trailing, leading, linspace, karras)")
        return ts.long()

    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = α_t x0 + σ_t ε, with t of shape (B,)."""
        alpha, sigma = self.alpha_sigma(t)
        return append_dims(alpha, x0.ndim).to(x0.dtype) * x0 + append_dims(sigma, x0.ndim).to(x0.dtype) * noise


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """(B,) -> (B, 1, …, 1) with `ndim` dimensions in all, for broadcasting against x."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))
