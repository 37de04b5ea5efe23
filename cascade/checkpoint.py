"""Model folders: `model_index.json` plus one sub-folder per stage (`config.json`, `model.safetensors`).

Loading never runs code (safetensors only, no pickle), and never loads partially: the
format version is checked, and a missing, unexpected or mis-shaped weight is an error that
names it. Every file is written atomically (temp file in the same folder, then rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

if TYPE_CHECKING:
    from .stage import Stage, StageConfig

FORMAT = "cascade"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
INDEX_NAME = "model_index.json"


_UMASK = os.umask(0o022)
os.umask(_UMASK)


class CheckpointError(ValueError):
    """A model folder that cannot be loaded as it is."""


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) on a temp file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp (and safetensors) make 0600; a model is as readable as any file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing file {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def save_weights(module: nn.Module | Mapping[str, torch.Tensor], path: str | Path, dtype: torch.dtype | None = None,
                 metadata: Mapping[str, str] | None = None) -> None:
    """The module's state dict (or a state dict) as safetensors (floating tensors cast to `dtype` if given)."""
    state = {}
    items = module.state_dict().items() if isinstance(module, nn.Module) else module.items()
    for k, v in items:
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        state[k] = v.contiguous().clone()  # clone: tied/shared storage cannot be saved as views
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=dict(metadata or {})))


def load_weights(module: nn.Module, path: str | Path, *, where: str | None = None) -> None:
    """Load safetensors weights into `module` strictly: every key present, none extra, shapes equal."""
    path = Path(path)
    where = where or str(path.parent)
    if not path.is_file():
        raise CheckpointError(f"{where}: missing weights file {path.name}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{where}: cannot read {path.name}: {e}") from e
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing weight(s): {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weight(s): {', '.join(unexpected[:5])}{' …' if len(unexpected) > 5 else ''}")
        raise CheckpointError(f"{where}: weights do not match the config: {'; '.join(parts)}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{where}: weight {k} has shape {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the config"
            )
    module.load_state_dict({k: state[k].to(expected[k].dtype) for k in expected}, strict=True)


def check_format(data: Mapping[str, Any], path: Path) -> None:
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cascade model folder (format {data.get('format')!r})")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {version!r}, but this cascade reads version {FORMAT_VERSION}"
        )


def index_data(stages: Mapping[str, str]) -> dict[str, Any]:
    from . import __version__

    return {"format": FORMAT, "format_version": FORMAT_VERSION, "cascade_version": __version__, "stages": dict(stages)}


def save_stage(stage: "Stage", folder: str | Path, dtype: torch.dtype | None = None) -> None:
    """One stage's folder: config.json (with the format version) and model.safetensors."""
    from .config import to_dict

    folder = Path(folder)
    save_weights(stage.network, folder / WEIGHTS_NAME, dtype=dtype)
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": to_dict(stage.config)}
    write_json(folder / CONFIG_NAME, data)


def load_stage_config(folder: str | Path, role: str) -> "StageConfig":
    """A stage folder's config.json, checked (format version, role, every field), without its weights."""
    from .config import ConfigError
    from .stage import stage_config_from_dict

    path = Path(folder) / CONFIG_NAME
    data = read_json(path)
    check_format(data, path)
    try:
        return stage_config_from_dict(role, data["config"])
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{path}: {e}") from e


def load_stage(folder: str | Path, role: str, expected_class: str | None = None) -> "Stage":
    """A stage from its folder, strictly (see load_weights)."""
    from .stage import Stage

    folder = Path(folder)
    config = load_stage_config(folder, role)
    if expected_class is not None and config.network_class != expected_class:
        raise CheckpointError(f"{folder}: class {config.network_class} but model_index.json says {expected_class}")
    stage = Stage(config)
    load_weights(stage.network, folder / WEIGHTS_NAME, where=str(folder))
    return stage.eval()
