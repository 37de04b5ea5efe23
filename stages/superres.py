"""Super-resolution stages: a UNet conditioned on the upsampled low-resolution image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .common import TimestepMLP, count_parameters
from .unet import UNet, UNetConfig


@dataclass(frozen=True)
class SuperResConfig(UNetConfig):
    """Super-resolution architecture: the UNet fields (no attention by default) plus aug-level input."""

    image_size: int = 256  # nominal output size (only places attention_resolutions)
    model_channels: int = 128
    num_res_blocks: int | tuple[int, ...] = 2
    attention_resolutions: tuple[int, ...] = ()  # no attention at high resolution (DALL-E 2 App. C)
    mid_attention: bool = False
    aug_level_conditioning: bool = True  # embed the noise-augmentation level and add it to the time embedding


class SuperRes(nn.Module):
    """Diffusion upsampler of DALL-E 2 §2.1 / Imagen §2.5: x_t and the upsampled low-res image, concatenated.

    Input channels: concat(x, lowres) (the low-res image already resized to x's size by the
    caller). With `aug_level_conditioning` the noise-conditioning augmentation level
    (Imagen §2.5, Cascaded Diffusion §4.1) in [0, 1] is embedded like a timestep (scaled to
    [0, 1000]) and added to the time embedding. Fully convolutional: any H, W that are
    multiples of `config.downsampling_factor` work, so training on crops and tiled sampling
    need nothing special. Karlo's upsamplers are this with `scale_shift_norm = false`,
    `aug_level_conditioning = false`.
    """

    config_class: ClassVar[type] = SuperResConfig

    def __init__(self, config: SuperResConfig):
        super().__init__()
        self.config = c = config
        if c.aug_level_conditioning:
            self.aug_embed = TimestepMLP(c.model_channels, c.emb_dim, c.emb_dim)
        self.unet = UNet(c, input_channels=2 * c.in_channels)

    def num_parameters(self) -> int:
        return count_parameters(self)

    def forward(self, x: Tensor, t: Tensor, *, lowres: Tensor, aug_level: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W) noised high-res image; lowres: (B, C, H, W); aug_level: (B,) in [0, 1] or None (= 0).

        Returns (B, out_channels, H, W). aug_level is ignored without aug_level_conditioning.
        """
        if lowres.shape != x.shape:
            raise ValueError(f"lowres {tuple(lowres.shape)} must be upsampled to x's shape {tuple(x.shape)}")
        emb = None
        if self.config.aug_level_conditioning:
            if aug_level is None:
                aug_level = torch.zeros(x.shape[0], device=x.device)
            emb = self.aug_embed(aug_level.float() * 1000.0)
        return self.unet(torch.cat([x, lowres], dim=1), t, emb=emb)
