"""A model family's TOML file: the CLIP model, every stage's config, every stage's training recipe.

```toml
[clip]                      # cascade.clip.ClipConfig
model_name = "cascade-tiny"
[prior]                     # cascade.stage.StageConfig (role prior)
[prior.network]             # stages.PriorConfig
[prior.schedule]            # cascade.diffusion.ScheduleConfig
[prior.diffusion]           # cascade.diffusion.DiffusionConfig
[prior.sampling]            # cascade.stage.SamplingConfig
[prior.train]               # cascade.train's TrainConfig (checked by the trainer)
[decoder] … [sr256] … [sr1024] …
```
Unknown tables and keys are refused with their names before anything is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .config import ConfigError, from_dict, load_toml
from .stage import ROLES, StageConfig, stage_config_from_dict

TOP_LEVEL = ("clip", *ROLES, "train")


@dataclass(frozen=True)
class ModelConfig:
    clip: Any  # cascade.clip.ClipConfig
    stages: Mapping[str, StageConfig]  # role -> config, in cascade order
    train: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # role (or "clip") -> recipe table
    source: str | None = None  # the file it was read from


def model_config_from_dict(data: Mapping[str, Any], source: str | None = None) -> ModelConfig:
    from .clip_config import ClipConfig

    where = source or "config"
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(f"{where}: unknown table{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(map(repr, unknown))} (known: {', '.join(TOP_LEVEL)})")
    if "clip" not in data:
        raise ConfigError(f"{where}: missing table [clip]")
    if "decoder" not in data:
        raise ConfigError(f"{where}: missing table [decoder]: a cascade needs at least its decoder")
    train: dict[str, Mapping[str, Any]] = {}
    clip_table = dict(data["clip"])
    if "train" in clip_table:
        train["clip"] = clip_table.pop("train")
    clip = from_dict(ClipConfig, clip_table, where="clip")
    stages: dict[str, StageConfig] = {}
    for role in ROLES:
        if role not in data:
            continue
        table = dict(data[role])
        if "train" in table:
            train[role] = table.pop("train")
        stages[role] = stage_config_from_dict(role, table)
    if "sr1024" in stages and "sr256" not in stages:
        raise ConfigError(f"{where}: [sr1024] needs [sr256] before it")
    _check_chain(stages, where)
    return ModelConfig(clip=clip, stages=stages, train=train, source=source)


def _check_chain(stages: Mapping[str, StageConfig], where: str) -> None:
    """Each super-resolution stage must take the previous stage's output size."""
    previous = stages["decoder"].resolution
    for role in ("sr256", "sr1024"):
        if role in stages:
            cfg = stages[role]
            if cfg.lowres_resolution != previous:
                raise ConfigError(f"{where}: [{role}] lowres_resolution {cfg.lowres_resolution} "
                                  f"but the stage before it makes {previous}×{previous}")
            previous = cfg.resolution


def load_model_config(path: str | Path) -> ModelConfig:
    """Read and check a model family's TOML file."""
    return model_config_from_dict(load_toml(path), source=str(path))


def replace_sampling(config: StageConfig, **changes: Any) -> StageConfig:
    """The stage config with some sampling defaults changed (checked)."""
    return dataclasses.replace(config, sampling=dataclasses.replace(config.sampling, **changes))


__all__ = ["ModelConfig", "load_model_config", "model_config_from_dict", "replace_sampling", "from_dict"]
