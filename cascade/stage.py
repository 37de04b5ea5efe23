"""A stage: one network with its noise schedule, parametrisation and sampling defaults.

The prior, the decoder and both super-resolution stages are all `Stage`s; the pipeline
runs any of them through one `Stage.sample()` (denoiser → guidance → threshold → sampler),
and the trainer trains any of them through one `Stage.loss()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional

import torch
from torch import Tensor, nn

from .config import ConfigError, from_dict, to_dict
from .diffusion import (
    ClassifierFreeGuidance, Denoiser, DiffusionConfig, DynamicThreshold, NoiseSchedule, ScheduleConfig,
    diffusion_loss, get_sampler, initial_noise, invert_ddim,
)
from .diffusion.denoiser import Cond
from .diffusion.schedule import Spacing
from .diffusion.tiling import TiledDenoiser

ROLES = ("prior", "decoder", "sr256", "sr1024")
DEFAULT_CLASS = {"prior": "PriorTransformer", "decoder": "Decoder", "sr256": "SuperRes", "sr1024": "SuperRes"}


@dataclass(frozen=True)
class SamplingConfig:
    sampler: str = "ddim"  # ddpm | ddim | dpmpp_2m | heun
    steps: int = 50  # sampling steps drawn from the trained schedule
    guidance: float = 1.0  # classifier-free guidance scale (1 = off, 0 = unconditional)
    eta: float = 0.0  # DDIM's η (0 = deterministic)
    spacing: Spacing = "trailing"  # how the steps are drawn from the schedule
    dynamic_threshold: Optional[float] = None  # Imagen's percentile (e.g. 0.995); None = off
    candidates: int = 1  # prior: draw k embeddings, keep the one closest to the text (DALL·E 2 §2.2);
    #   decoder: draw k images, keep the one its CLIP scores closest to the text (to the image embedding
    #   where there is no text: variations); 1 for super-resolution stages and interpolation frames
    aug_level: float = 0.0  # super-resolution only: noise-conditioning augmentation at sampling
    tile: Optional[int] = None  # super-resolution only: evaluate in tile×tile cores (bounded memory)
    tile_margin: int = 0  # context pixels around each tile (≥ the network's receptive radius for exactness)

    def __post_init__(self) -> None:
        check_sampling(self.sampler, self.steps, self.guidance)
        if self.eta < 0:
            raise ValueError(f"eta must be non-negative, got {self.eta}")
        if self.candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {self.candidates}")
        if not 0 <= self.aug_level <= 1:
            raise ValueError(f"aug_level must lie in [0, 1], got {self.aug_level}")
        if (self.tile is not None and self.tile < 1) or self.tile_margin < 0:
            raise ValueError(f"tile must be positive and tile_margin non-negative, got {self.tile}, {self.tile_margin}")
        if self.dynamic_threshold is not None and not 0 < self.dynamic_threshold <= 1:
            raise ValueError(f"dynamic_threshold must lie in (0, 1], got {self.dynamic_threshold}")


def check_sampling(sampler: str, steps: Any, guidance: Any) -> None:
    """The checks every sampling request passes before any work: named sampler, steps ≥ 1, guidance ≥ 0."""
    get_sampler(sampler)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or guidance < 0:
        raise ValueError(f"guidance must be a number at least 0, got {guidance!r}")


@dataclass(frozen=True)
class AugmentationConfig:
    """Noise-conditioning augmentation of a super-resolution stage's low-resolution input
    (Ho et al. 2021 "Cascaded diffusion" §3; DALL·E 2 App. C): the input is blurred and
    noised at a level a ∈ [0, 1] that the network is told."""

    kind: Literal["gaussian", "degrade"] = "gaussian"  # degrade: also down/up-sampling, stronger blur (SR-1024)
    max_level: float = 0.3  # training draws a ~ U[0, max_level]
    blur_sigma: tuple[float, float] = (0.4, 0.6)  # Gaussian blur σ range (in low-res pixels), drawn per sample
    blur_prob: float = 0.5  # probability of blurring a training sample


@dataclass(frozen=True)
class StageConfig:
    role: Literal["prior", "decoder", "sr256", "sr1024"]
    network_class: str  # a name in stages.NETWORKS
    network: Mapping[str, Any]  # that class's config, as a table
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    resolution: Optional[int] = None  # output side in pixels (None for the prior)
    lowres_resolution: Optional[int] = None  # super-resolution only: the input side
    augmentation: Optional[AugmentationConfig] = None  # super-resolution only
    train_crop: Optional[int] = None  # super-resolution only: train on random crops of this side
    data_scale: Optional[float] = None  # prior only: x0 = data_scale · z_i (None: √D, unit variance per coordinate)

    def __post_init__(self) -> None:
        if self.role != "prior" and self.resolution is None:
            raise ValueError(f"{self.role}: resolution is required")
        if self.role.startswith("sr") and self.lowres_resolution is None:
            raise ValueError(f"{self.role}: lowres_resolution is required")


def stage_config_from_dict(role: str, table: Mapping[str, Any]) -> StageConfig:
    """A StageConfig from a TOML table or config.json, with the network config checked too."""
    if role not in ROLES:
        raise ConfigError(f"unknown stage {role!r} (known: {', '.join(ROLES)})")
    data = dict(table)
    data.setdefault("role", role)
    data.setdefault("network_class", DEFAULT_CLASS[role])
    if data["role"] != role:
        raise ConfigError(f"[{role}]: role says {data['role']!r}")
    if "network" not in data:
        raise ConfigError(f"[{role}]: missing table [{role}.network]")
    config = from_dict(StageConfig, data, where=role)
    network_cls = network_class(config.network_class, role)
    net_config = from_dict(network_cls.config_class, config.network, where=f"{role}.network")
    out_channels = getattr(net_config, "out_channels", None)
    if out_channels is not None and out_channels != 3 and config.diffusion.data_channels != 3:
        raise ConfigError(f"{role}: the network outputs {out_channels} channels; set "
                          f"[{role}.diffusion] data_channels = 3 (the rest is the learned variance)")
    return dataclasses.replace(config, network=to_dict(net_config))


def network_class(name: str, role: str = "stage") -> type[nn.Module]:
    from stages import NETWORKS

    try:
        return NETWORKS[name]
    except KeyError:
        raise ConfigError(f"{role}: unknown network class {name!r} (known: {', '.join(NETWORKS)})") from None


class Stage(nn.Module):
    """A network made a denoiser by its schedule and parametrisation, with its sampling defaults."""

    def __init__(self, config: StageConfig):
        super().__init__()
        self.config = config
        cls = network_class(config.network_class, config.role)
        self.network = cls(from_dict(cls.config_class, config.network, where=f"{config.role}.network"))
        self.schedule = NoiseSchedule(config.schedule)
        self.denoiser = Denoiser(self.network, self.schedule, config.diffusion)

    @property
    def role(self) -> str:
        return self.config.role

    def embed_to_data(self, image_embed: Tensor) -> Tensor:
        """Prior only: a normalised CLIP image embedding (B, D) in the prior's diffusion space:
        (z − mean)/std with the network's CLIP statistics (Karlo), else z · data_scale (default √D)."""
        if getattr(self.network.config, "clip_stats", False):
            return self.network.normalize_image_embed(image_embed)
        return image_embed * (self.config.data_scale or image_embed.shape[-1] ** 0.5)

    def data_to_embed(self, x: Tensor) -> Tensor:
        """Prior only: the inverse of embed_to_data, L2-normalised (what the decoder is given)."""
        if getattr(self.network.config, "clip_stats", False):
            x = self.network.denormalize_image_embed(x)
        return torch.nn.functional.normalize(x.float(), dim=-1)

    def loss(self, x0: Tensor, cond: Cond, **kw: Any) -> Tensor:
        """The training loss on clean samples x0 (see cascade.diffusion.loss)."""
        return diffusion_loss(self.denoiser, x0, cond, **kw)

    @torch.inference_mode()
    def sample(
        self,
        shape: tuple[int, ...],
        cond: Cond,
        uncond: Optional[Cond] = None,
        *,
        generator: Optional[torch.Generator] = None,
        noise: Optional[Tensor] = None,
        sampling: Optional[SamplingConfig] = None,
        progress: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Draw samples of `shape` for condition `cond` (and `uncond` when guided)."""
        s = sampling or self.config.sampling
        device = next(self.parameters()).device
        cond, uncond = self.prepare_condition(cond), self.prepare_condition(uncond)
        denoise = self._sampling_denoiser(s, uncond, images=len(shape) == 4)
        x = noise if noise is not None else initial_noise(shape, self.schedule, generator, device, dtype)
        sampler = get_sampler(s.sampler)
        kwargs: dict[str, Any] = {"spacing": s.spacing, "progress": self.role if progress else False}
        if s.sampler == "ddim":
            kwargs["eta"] = s.eta
        return sampler(denoise, self.schedule, x.to(device), s.steps, cond, generator, **kwargs)

    def prepare_condition(self, cond: Optional[Cond]) -> Optional[Cond]:
        """`cond` with the work that is the same at every sampling step done once, where the network
        can (the prior's text prefix, the decoder's context: their `prepare_condition`); else `cond` itself."""
        prepare = getattr(self.network, "prepare_condition", None)
        return cond if cond is None or prepare is None else prepare(cond)

    def _sampling_denoiser(self, s: SamplingConfig, uncond: Optional[Cond], images: bool):
        """The denoiser `sample` integrates: tiled, guided and thresholded as `s` says."""
        denoise = self.denoiser
        if s.tile is not None and images:
            factor = getattr(self.network.config, "downsampling_factor", 1)
            denoise = TiledDenoiser(denoise, s.tile, s.tile_margin, factor=factor)
        if s.guidance != 1.0:
            if uncond is None:
                raise ValueError(f"{self.role}: guidance {s.guidance} needs an unconditional condition")
            denoise = ClassifierFreeGuidance(denoise, uncond, s.guidance)
        if s.dynamic_threshold is not None:
            denoise = DynamicThreshold(denoise, s.dynamic_threshold)
        return denoise

    @torch.inference_mode()
    def invert(self, x0: Tensor, cond: Cond, uncond: Optional[Cond] = None, *,
               sampling: Optional[SamplingConfig] = None, steps: Optional[int] = None,
               progress: bool = False) -> Tensor:
        """The noise x_T from which DDIM (η = 0) draws x0 for `cond` with `sampling`'s guidance:
        DDIM inversion of the same guided ODE (DALL·E 2 §3.1's bipartite latent) on a grid of
        `steps` (default: `sampling.steps`). The ODE needs a finer grid backwards than forwards:
        on the shapes decoder, inverting with 200 steps and sampling with 50 reconstructs to a mean
        error of 5 / 255 (50 and 50: 57 / 255). `sample(..., noise=x_T)` with DDIM then varies x0 by its η."""
        s = sampling or self.config.sampling
        device = next(self.parameters()).device
        cond, uncond = self.prepare_condition(cond), self.prepare_condition(uncond)
        denoise = self._sampling_denoiser(s, uncond, images=x0.dim() == 4)
        return invert_ddim(denoise, self.schedule, x0.to(device), steps or s.steps, cond, spacing=s.spacing,
                           progress=f"{self.role} (inverting)" if progress else False)
