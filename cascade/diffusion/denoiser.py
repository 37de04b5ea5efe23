"""The one interface between networks and samplers: `denoise(x_t, t, cond) -> x0_hat`.

A network predicts eps, v or x0 (named in its stage's config, as guided-diffusion's
ModelMeanType); `Denoiser` converts that prediction to the estimate of the clean sample in
exactly one place (`to_x0`), and the training loss calls the same object the samplers call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Protocol

import torch
from torch import Tensor, nn

from .schedule import NoiseSchedule, append_dims

Parametrization = Literal["eps", "v", "x0"]
PARAMETRIZATIONS = ("eps", "v", "x0")
Cond = Mapping[str, Any]


class DenoiseFn(Protocol):
    def __call__(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor: ...


def to_x0(pred: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, parametrization: Parametrization) -> Tensor:
    """x0 from a network prediction: eps: (x_t − σε)/α; v: αx_t − σv (Salimans & Ho 2022 §4)."""
    if parametrization == "x0":
        return pred
    if parametrization == "eps":
        return (x_t - sigma * pred) / alpha
    if parametrization == "v":
        return alpha * x_t - sigma * pred
    raise ValueError(f"unknown parametrization {parametrization!r} (known: {', '.join(PARAMETRIZATIONS)})")


def target(x0: Tensor, noise: Tensor, alpha: Tensor, sigma: Tensor, parametrization: Parametrization) -> Tensor:
    """What the network should output for x_t = αx0 + σε: x0, ε or v = αε − σx0."""
    if parametrization == "x0":
        return x0
    if parametrization == "eps":
        return noise
    if parametrization == "v":
        return alpha * noise - sigma * x0
    raise ValueError(f"unknown parametrization {parametrization!r} (known: {', '.join(PARAMETRIZATIONS)})")


def eps_from_x0(x0: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """ε implied by an x0 estimate: (x_t − αx0)/σ."""
    return (x_t - alpha * x0) / sigma


@dataclass(frozen=True)
class DiffusionConfig:
    parametrization: Parametrization = "eps"  # what the network predicts
    clip_denoised: float | None = None  # clamp x0_hat to ±this (1.0 for images); None = no clamp
    data_channels: int | None = None  # use the first C output channels (Karlo's 6 = 3 + learned variance)

    def __post_init__(self) -> None:
        if self.parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"unknown parametrization {self.parametrization!r} (known: {', '.join(PARAMETRIZATIONS)})")
        if self.clip_denoised is not None and self.clip_denoised <= 0:
            raise ValueError(f"clip_denoised must be positive or absent, got {self.clip_denoised}")


class Denoiser(nn.Module):
    """Wraps a raw network `net(x_t, t, **cond)` into `denoise(x_t, t, cond) -> x0_hat`."""

    def __init__(self, network: nn.Module, schedule: NoiseSchedule, config: DiffusionConfig | None = None):
        super().__init__()
        self.network = network
        self.schedule = schedule
        self.config = config or DiffusionConfig()

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond) -> tuple[Tensor, Tensor]:
        """(raw network output restricted to the data channels, x0_hat)."""
        t = _batch_t(t, x_t)
        pred = self.network(x_t, t.float(), **cond)  # t stays fp32: bf16 cannot hold 999
        if self.config.data_channels is not None:
            pred = pred[:, : self.config.data_channels]
        pred = pred.to(x_t.dtype)
        alpha, sigma = self.schedule.alpha_sigma(t.cpu())
        alpha = append_dims(alpha, x_t.ndim).to(x_t)
        sigma = append_dims(sigma, x_t.ndim).to(x_t)
        x0 = to_x0(pred, x_t, alpha, sigma, self.config.parametrization)
        if self.config.clip_denoised is not None:
            x0 = x0.clamp(-self.config.clip_denoised, self.config.clip_denoised)
        return pred, x0

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        return self.predict(x_t, t, cond)[1]


def _batch_t(t: Tensor | float, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    return t

