"""Samplers: plain functions of (denoise, schedule, x_T, steps, cond, generator).

Every sampler has the same signature (as in k-diffusion), keeps no state between calls and
talks to a stage only through `denoise(x_t, t, cond) -> x0_hat`. The same code runs on the
prior's (B, D) embeddings and on (B, C, H, W) images. Timesteps come from the schedule's
respacing; the last step always lands on the clean sample (ᾱ = 1).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .denoiser import Cond, DenoiseFn
from .schedule import NoiseSchedule, Spacing

Callback = Callable[[int, Tensor, Tensor], None]  # (step index, x_t, x0_hat)


def _grid(schedule: NoiseSchedule, steps: int, spacing: Spacing, x: Tensor):
    """Timesteps t_0 > … > t_{n-1} and their (α, σ, λ), with a final clean point α=1, σ=0."""
    ts = schedule.timesteps(steps, spacing)
    alpha, sigma = schedule.alpha_sigma(ts)
    alpha = torch.cat([alpha, torch.ones(1, dtype=alpha.dtype)])
    sigma = torch.cat([sigma, torch.zeros(1, dtype=sigma.dtype)])
    return ts, alpha.tolist(), sigma.tolist()


def _denoise(denoise: DenoiseFn, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
    return denoise(x, t.to(x.device).float().expand(x.shape[0]), cond)


def _noise_like(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device if generator is None else generator.device).to(x.device)


def _steps_iter(n: int, progress: bool | str, desc: str):
    """range(n), with a progress bar when `progress` is true (a string names the bar)."""
    return tqdm(range(n), desc=progress if isinstance(progress, str) else desc, disable=not progress, leave=False)


@torch.inference_mode()
def sample_ddim(
    denoise: DenoiseFn,
    schedule: NoiseSchedule,
    x: Tensor,
    steps: int,
    cond: Cond,
    generator: Optional[torch.Generator] = None,
    *,
    eta: float = 0.0,
    spacing: Spacing = "trailing",
    callback: Optional[Callback] = None,
    progress: bool | str = False,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12); eta = 0 is deterministic, eta = 1 is DDPM's posterior."""
    if eta < 0:
        raise ValueError(f"eta must be non-negative, got {eta}")
    ts, alpha, sigma = _grid(schedule, steps, spacing, x)
    for i in _steps_iter(len(ts), progress, "ddim"):
        x0 = _denoise(denoise, x, ts[i], cond)
        a_t, s_t, a_s, s_s = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
        eps = (x - a_t * x0) / s_t
        # σ_η² = η² · (σ_s²/σ_t²) · (1 − α_t²/α_s²): the DDPM posterior variance at η = 1
        var = eta**2 * (s_s**2 / s_t**2) * (1 - (a_t / a_s) ** 2) if s_s > 0 else 0.0
        x = a_s * x0 + max(s_s**2 - var, 0.0) ** 0.5 * eps
        if var > 0:
            x = x + var**0.5 * _noise_like(x, generator)
        if callback is not None:
            callback(i, x, x0)
    return x


@torch.inference_mode()
def invert_ddim(
    denoise: DenoiseFn,
    schedule: NoiseSchedule,
    x: Tensor,
    steps: int,
    cond: Cond,
    *,
    spacing: Spacing = "trailing",
    progress: bool | str = False,
) -> Tensor:
    """DDIM inversion: the deterministic DDIM ODE run backwards, from a clean sample x to the
    noisiest step of the same `steps` grid (Song et al. 2021 §4.3 "encoding"; DALL·E 2 §3.1's
    bipartite latent x_T). `sample_ddim` with eta = 0 from the result returns x up to the ODE's
    discretisation error. x is taken as the grid's least noisy step (its σ is small), as usual;
    steps − 1 network evaluations."""
    ts, alpha, sigma = _grid(schedule, steps, spacing, x)
    for i in _steps_iter(len(ts) - 1, progress, "invert"):
        j = len(ts) - 1 - i  # from the least noisy step up
        x0 = _denoise(denoise, x, ts[j], cond)
        eps = (x - alpha[j] * x0) / sigma[j]
        x = alpha[j - 1] * x0 + sigma[j - 1] * eps
    return x


@torch.inference_mode()
def sample_ddpm(
    denoise: DenoiseFn,
    schedule: NoiseSchedule,
    x: Tensor,
    steps: int,
    cond: Cond,
    generator: Optional[torch.Generator] = None,
    *,
    spacing: Spacing = "trailing",
    callback: Optional[Callback] = None,
    progress: bool | str = False,
) -> Tensor:
    """Ancestral sampling from the posterior q(x_s | x_t, x0_hat) (Ho et al. 2020, eqs. 6–7),

    on any respaced grid: β_ts = 1 − ᾱ_t/ᾱ_s, variance β̃ = β_ts (1 − ᾱ_s)/(1 − ᾱ_t).
    """
    ts, alpha, sigma = _grid(schedule, steps, spacing, x)
    for i in _steps_iter(len(ts), progress, "ddpm"):
        x0 = _denoise(denoise, x, ts[i], cond)
        a_t, s_t, a_s, s_s = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
        beta = 1 - (a_t / a_s) ** 2
        x = (a_s * beta / s_t**2) * x0 + ((a_t / a_s) * s_s**2 / s_t**2) * x
        if s_s > 0:
            x = x + (beta * s_s**2 / s_t**2) ** 0.5 * _noise_like(x, generator)
        if callback is not None:
            callback(i, x, x0)
    return x


@torch.inference_mode()
def sample_dpmpp_2m(
    denoise: DenoiseFn,
    schedule: NoiseSchedule,
    x: Tensor,
    steps: int,
    cond: Cond,
    generator: Optional[torch.Generator] = None,
    *,
    spacing: Spacing = "trailing",
    callback: Optional[Callback] = None,
    progress: bool | str = False,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), multistep in λ = log(α/σ).

    First order on the first step and on the last (into σ = 0), as k-diffusion does.
    """
    ts, alpha, sigma = _grid(schedule, steps, spacing, x)
    x0_prev, h_prev = None, None
    for i in _steps_iter(len(ts), progress, "dpm++2m"):
        x0 = _denoise(denoise, x, ts[i], cond)
        a_t, s_t, a_s, s_s = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
        if s_s == 0:
            x = x0
        else:
            lam_t = torch.log(torch.tensor(a_t / s_t, dtype=torch.float64))
            lam_s = torch.log(torch.tensor(a_s / s_s, dtype=torch.float64))
            h = float(lam_s - lam_t)
            d = x0
            if x0_prev is not None:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = (s_s / s_t) * x - a_s * torch.expm1(torch.tensor(-h)).item() * d
            h_prev = h
        x0_prev = x0
        if callback is not None:
            callback(i, x, x0)
    return x


HEUN_MAX_RATIO = 100.0


@torch.inference_mode()
def sample_heun(
    denoise: DenoiseFn,
    schedule: NoiseSchedule,
    x: Tensor,
    steps: int,
    cond: Cond,
    generator: Optional[torch.Generator] = None,
    *,
    spacing: Spacing = "trailing",
    callback: Optional[Callback] = None,
    progress: bool | str = False,
) -> Tensor:
    """Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1),

    in the scaled variables x̃ = x/α, σ̃ = σ/α where dx̃/dσ̃ = (x̃ − D)/σ̃; Euler on the last step,
    and on a step that shrinks σ̃ more than HEUN_MAX_RATIO-fold: a grid that starts at t = T
    ("trailing") starts at σ̃ ≈ 3·10⁴ for a cosine schedule, where the trapezoid multiplies the
    second slope's error by σ̃ (samples of a N(0.5, 0.3²) had std 6.7 after 5 such steps).
    Costs at most 2·steps − 1 network evaluations.
    """
    ts, alpha, sigma = _grid(schedule, steps, spacing, x)
    x_scaled = x / alpha[0]  # x̃ at t_0
    for i in _steps_iter(len(ts), progress, "heun"):
        sig_t, sig_s = sigma[i] / alpha[i], sigma[i + 1] / alpha[i + 1]
        x0 = _denoise(denoise, x_scaled * alpha[i], ts[i], cond)
        slope = (x_scaled - x0) / sig_t
        x_next = x_scaled + (sig_s - sig_t) * slope
        if sig_s > 0 and sig_t <= HEUN_MAX_RATIO * sig_s:
            x0_next = _denoise(denoise, x_next * alpha[i + 1], ts[i + 1], cond)
            slope_next = (x_next - x0_next) / sig_s
            x_next = x_scaled + (sig_s - sig_t) * (slope + slope_next) / 2
        x_scaled = x_next
        if callback is not None:
            callback(i, x_scaled * alpha[i + 1], x0)
    return x_scaled * alpha[-1]


SAMPLERS = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "heun": sample_heun,
}


def get_sampler(name: str):
    """The sampler function called `name`; a clear error for an unknown one."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r} (known: {', '.join(SAMPLERS)})") from None


def network_evaluations(sampler: str, steps: int) -> int:
    """How many denoiser calls a sampler makes for `steps` at most (before guidance doubling)."""
    get_sampler(sampler)
    return 2 * steps - 1 if sampler == "heun" else steps


def initial_noise(shape: tuple[int, ...], schedule: NoiseSchedule, generator: Optional[torch.Generator] = None,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """x_T ~ N(0, I): the process's marginal at t = T-1 up to α_T (≈ 0.0063 for cosine)."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


__all__ = [
    "SAMPLERS",
    "get_sampler",
    "initial_noise",
    "invert_ddim",
    "network_evaluations",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_heun",
]
