"""Diffusion math: schedules, parametrisations, the denoiser interface, samplers, guidance, loss."""

from .denoiser import PARAMETRIZATIONS, Denoiser, DiffusionConfig, eps_from_x0, target, to_x0
from .guidance import ClassifierFreeGuidance, DynamicThreshold, StaticThreshold, concat_cond
from .loss import diffusion_loss
from .samplers import SAMPLERS, get_sampler, initial_noise, invert_ddim, network_evaluations
from .schedule import NoiseSchedule, ScheduleConfig, append_dims

__all__ = [
    "PARAMETRIZATIONS", "SAMPLERS", "ClassifierFreeGuidance", "Denoiser", "DiffusionConfig",
    "DynamicThreshold", "NoiseSchedule", "ScheduleConfig", "StaticThreshold", "append_dims",
    "concat_cond", "diffusion_loss", "eps_from_x0", "get_sampler", "initial_noise",
    "invert_ddim", "network_evaluations", "target", "to_x0",
]
