"""Exponential moving average of a module's weights (Polyak averaging; what the trainer exports).

After update n (counting from 0) the shadow is  s ← d_n · s + (1 − d_n) · θ  with
d_n = ema_decay, or with warm-up d_n = min(ema_decay, (1 + n) / (10 + n)) (the schedule of
tf.train.ExponentialMovingAverage's num_updates), so the random initialisation fades within
the first few hundred steps instead of ~1/(1 − decay). Buffers are copied, not averaged.
The shadow is kept in fp32 whatever the module's dtype.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn


class EMA:
    def __init__(self, module: nn.Module, decay: float, warmup: bool = True):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.params = {k: p.detach().float().clone() for k, p in module.named_parameters()}
        self.buffers = {k: b.detach().clone() for k, b in module.named_buffers()}

    def decay_at(self, n: int) -> float:
        """d_n, the decay used by update number n (0-based)."""
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        weight = 1.0 - self.decay_at(self.num_updates)
        names, shadows, currents = [], [], []
        for k, p in module.named_parameters():
            names.append(k)
            shadows.append(self.params[k])
            currents.append(p.detach().float())
        if shadows:
            torch._foreach_lerp_(shadows, currents, weight)  # s += w (θ − s)
        for k, b in module.named_buffers():
            if k in self.buffers:
                self.buffers[k].copy_(b)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged weights into `module` (same architecture)."""
        for k, p in module.named_parameters():
            p.copy_(self.params[k].to(p.dtype))
        for k, b in module.named_buffers():
            if k in self.buffers:
                b.copy_(self.buffers[k])

    def state_tensors(self) -> dict[str, Tensor]:
        """Flat name → tensor map (for safetensors); buffers under a 'buffer.' prefix."""
        out = {f"param.{k}": v for k, v in self.params.items()}
        out.update({f"buffer.{k}": v for k, v in self.buffers.items()})
        return out

    def load_state_tensors(self, state: Mapping[str, Tensor], num_updates: int) -> None:
        expected = set(self.state_tensors())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"EMA state does not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
        for k, v in self.params.items():
            v.copy_(state[f"param.{k}"])
        for k, v in self.buffers.items():
            v.copy_(state[f"buffer.{k}"])
        self.num_updates = int(num_updates)


__all__ = ["EMA"]
