"""The training loss: one call to the same denoiser the samplers use.

The error is measured in the network's own output space (ε, v or x0), which is the
x0-space error weighted by SNR, SNR + 1 or 1 respectively. Min-SNR-γ (Hang et al. 2023)
replaces that implicit x0-space weight by min(SNR, γ).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .denoiser import Cond, Denoiser, target
from .schedule import append_dims


def implicit_x0_weight(snr: Tensor, parametrization: str) -> Tensor:
    """The weight on ||x0_hat − x0||² that an unweighted loss in `parametrization` space carries."""
    if parametrization == "eps":
        return snr
    if parametrization == "v":
        return snr + 1
    return torch.ones_like(snr)


def diffusion_loss(
    denoiser: Denoiser,
    x0: Tensor,
    cond: Cond,
    *,
    t: Optional[Tensor] = None,
    noise: Optional[Tensor] = None,
    min_snr_gamma: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    reduce: bool = True,
    teacher: Optional[Denoiser] = None,
    teacher_weight: float = 1.0,
    uncond: Optional[Cond] = None,
    guidance: float = 0.0,
) -> Tensor:
    """Mean squared error of the network's prediction at a random t ~ U{0 … T-1} (per sample

    if `reduce` is False). With `min_snr_gamma`, each sample is weighted so that the
    effective x0-space weight is min(SNR_t, γ).

    With a `teacher` (a denoiser of the same schedule and parametrization, e.g. a trained stage
    of another layout) the target is `teacher_weight` × the teacher's prediction on the same
    x_t, t and condition + (1 − `teacher_weight`) × the true target: knowledge distillation,
    whose target is far less noisy than the true one (the teacher has already averaged over the
    x0 that could have made x_t).

    With a teacher and `uncond` (the unconditional condition of each sample), the loss adds the
    squared difference of the classifier-free-guided predictions pred(uncond) + s·(pred(cond) −
    pred(uncond)) of the student and the teacher at `guidance` s: sampling amplifies the student's
    errors with and without the condition by s and s − 1 unless they cancel as the teacher's do,
    and this term asks them to (it costs a second forward pass of both networks).
    """
    B = x0.shape[0]
    T = denoiser.schedule.num_timesteps
    if t is None:
        t = torch.randint(0, T, (B,), generator=generator, device="cpu").to(x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device="cpu", dtype=x0.dtype).to(x0.device)
    alpha, sigma = denoiser.schedule.alpha_sigma(t.cpu())
    x_t = append_dims(alpha, x0.ndim).to(x0) * x0 + append_dims(sigma, x0.ndim).to(x0) * noise
    pred, _ = denoiser.predict(x_t, t, cond)
    param = denoiser.config.parametrization
    goal = target(x0, noise, append_dims(alpha, x0.ndim).to(x0), append_dims(sigma, x0.ndim).to(x0), param)
    extra: Tensor | float = 0.0
    if teacher is not None:
        if teacher.config.parametrization != param:
            raise ValueError(f"the teacher predicts {teacher.config.parametrization}, the network {param}")
        with torch.no_grad():
            taught = teacher.predict(x_t, t, cond)[0].float()
            taught_u = teacher.predict(x_t, t, uncond)[0].float() if uncond is not None else None
        goal = taught if teacher_weight == 1.0 else torch.lerp(goal.float(), taught, teacher_weight)
        if taught_u is not None:
            pred_u = denoiser.predict(x_t, t, uncond)[0].float()
            guided = guidance * (pred.float() - taught) + (1 - guidance) * (pred_u - taught_u)
            extra = guided.pow(2).reshape(B, -1).mean(dim=1)
    per_sample = (pred.float() - goal.float()).pow(2).reshape(B, -1).mean(dim=1) + extra
    if min_snr_gamma is not None:
        snr = (alpha / sigma) ** 2
        weight = snr.clamp(max=min_snr_gamma) / implicit_x0_weight(snr, param)
        per_sample = per_sample * weight.to(per_sample)
    return per_sample.mean() if reduce else per_sample
