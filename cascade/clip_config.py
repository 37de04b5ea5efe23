"""Which open_clip model to build, and the helpers that register, resolve and check it."""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import open_clip
from open_clip.pretrained import has_hf_hub
from torch import Tensor
from torchvision.transforms import InterpolationMode

from .config import ConfigError

CLIP_CONFIG_DIR = Path(__file__).parent / "clip_configs"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# The image-preprocessing keys a ClipConfig may override (open_clip's PreprocessCfg fields
# that create_model_and_transforms takes as arguments).
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
_MODEL_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


class ClipError(ValueError):
    """A CLIP model that cannot be built, loaded or used as asked (one line, naming the problem)."""


@dataclass(frozen=True)
class ClipConfig:
    """Which open_clip model to build.

    model_name:        open_clip architecture name (``"ViT-B-32"``, ``"cascade-tiny"``, ...) or the
                       name under which ``model_config`` is registered.
    pretrained:        an open_clip pretrained tag (needs a hub) or a local ``.safetensors`` path;
                       None: random init.
    model_config:      a custom open_clip model config (the JSON's content: embed_dim, vision_cfg,
                       text_cfg, ...), registered with open_clip under ``model_name``.
    preprocess_config: overrides of the image transform (mean, std, interpolation, resize_mode);
                       ``save_pretrained`` records the resolved values here.
    """

    model_name: str
    pretrained: str | None = None
    model_config: dict | None = None
    preprocess_config: dict | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name.strip():
            raise ConfigError(f"ClipConfig.model_name: expected a non-empty string, got {self.model_name!r}")
        if self.pretrained is not None and (not isinstance(self.pretrained, str) or not self.pretrained):
            raise ConfigError(f"ClipConfig.pretrained: expected a tag or a path, got {self.pretrained!r}")
        if self.model_config is not None and not isinstance(self.model_config, dict):
            raise ConfigError(f"ClipConfig.model_config: expected a table, got {type(self.model_config).__name__}")
        if self.preprocess_config is not None:
            if not isinstance(self.preprocess_config, dict):
                raise ConfigError(
                    f"ClipConfig.preprocess_config: expected a table, got {type(self.preprocess_config).__name__}"
                )
            unknown = sorted(set(self.preprocess_config) - set(PREPROCESS_KEYS))
            if unknown:
                raise ConfigError(
                    f"ClipConfig.preprocess_config: unknown key{'s' if len(unknown) > 1 else ''} "
                    f"{', '.join(map(repr, unknown))} (known: {', '.join(PREPROCESS_KEYS)})"
                )


class TextEncoding(NamedTuple):
    """What the text encoder gives the cascade.

    embed:  (B, D) L2-normalised pooled embedding (== open_clip ``encode_text(ids, normalize=True)``).
    tokens: (B, L, W) per-token hidden states after the final LayerNorm (None if not asked for).
    mask:   (B, L) bool, True for real tokens (SOT, the words, EOT), False for padding.
    ids:    (B, L) token ids.
    """

    embed: Tensor
    tokens: Tensor | None
    mask: Tensor
    ids: Tensor


# ----------------------------------------------------------------------------- helpers


def _one_line(e: BaseException | str, limit: int = 400) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Drop open_clip's 'initialized randomly' warning (we load our own weights right after)."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


_SHIPPED_REGISTERED = False
_REGISTRY_DIR: Path | None = None


def _ensure_shipped_configs() -> None:
    """Register cascade's own open_clip configs (cascade-tiny, cascade-shapes) once."""
    global _SHIPPED_REGISTERED
    if not _SHIPPED_REGISTERED:
        open_clip.add_model_config(CLIP_CONFIG_DIR)
        _SHIPPED_REGISTERED = True


def _registry_dir() -> Path:
    global _REGISTRY_DIR
    if _REGISTRY_DIR is None:
        _REGISTRY_DIR = Path(tempfile.mkdtemp(prefix="cascade-clip-configs-"))
        atexit.register(shutil.rmtree, _REGISTRY_DIR, True)
    return _REGISTRY_DIR


_NAME_RE = re.compile(r"^[A-Za-z0-9_.+@=-]+$")


def _register_model_config(name: str, cfg: dict) -> str:
    """Register `cfg` with open_clip (open_clip.add_model_config) and return the name to build it by.

    Registered under `name` itself when that name is free or already holds the same config;
    otherwise (a built-in or an earlier, different config of that name) under a name derived
    from `name` and the config's hash, so that no other model's config is overridden.
    """
    existing = open_clip.get_model_config(name)
    if existing == cfg:
        return name
    reg_name = name
    if existing is not None:
        digest = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
        reg_name = f"{name}--cascade-{digest}"
        if open_clip.get_model_config(reg_name) == cfg:
            return reg_name
    path = _registry_dir() / f"{reg_name}.json"
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    os.replace(tmp, path)
    open_clip.add_model_config(path)
    if open_clip.get_model_config(reg_name) != cfg:
        raise ClipError(f"could not register the model_config of CLIP model {name!r} with open_clip")
    return reg_name


def _normalise_model_config(name: str, cfg: Any) -> dict:
    try:
        cfg = json.loads(json.dumps(cfg))
    except (TypeError, ValueError) as e:
        raise ClipError(f"model_config of CLIP model {name!r} is not plain JSON data: {_one_line(e)}") from e
    if not isinstance(cfg, dict):
        raise ClipError(f"model_config of CLIP model {name!r} must be a table, got {type(cfg).__name__}")
    missing = [k for k in _MODEL_CONFIG_KEYS if k not in cfg]
    if missing:
        raise ClipError(
            f"model_config of CLIP model {name!r} is not an open_clip model config: missing "
            f"{', '.join(map(repr, missing))} (needs {', '.join(_MODEL_CONFIG_KEYS)})"
        )
    if not isinstance(cfg["vision_cfg"], dict) or not isinstance(cfg["text_cfg"], dict):
        raise ClipError(f"model_config of CLIP model {name!r}: vision_cfg and text_cfg must be tables")
    return cfg


def _resolve_pretrained(name: str, pretrained: str) -> tuple[Path, dict]:
    """The local .safetensors file behind `pretrained` (a tag is downloaded), and the tag's config."""
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag_cfg:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            tags = open_clip.list_pretrained_tags_by_model(name)
            known = f" (known tags for {name!r}: {', '.join(tags)})" if tags else ""
            raise ClipError(
                f"pretrained {pretrained!r} for CLIP model {name!r}: no such file, and not an open_clip tag{known}"
            )
        _refuse_pickle(path, name)
        return path, {}
    # A tag: open_clip downloads it. Refuse before downloading when it can only be a pickle.
    source = tag_cfg.get("file") or ""
    if not source and not (tag_cfg.get("hf_hub") and has_hf_hub()):
        source = tag_cfg.get("url", "")
        if source and not source.endswith(".safetensors"):
            raise ClipError(
                f"pretrained tag {pretrained!r} of CLIP model {name!r} is only published as a pickle ({source}); "
                "cascade loads .safetensors only (convert it once, in a trusted environment, and pass the path)"
            )
    try:
        downloaded = open_clip.download_pretrained(tag_cfg)
    except Exception as e:  # network, hub, missing file
        raise ClipError(
            f"could not fetch open_clip weights {name!r}/{pretrained!r} (is a hub reachable?): {_one_line(e)}"
        ) from e
    if not downloaded:
        raise ClipError(f"open_clip has no download for pretrained tag {pretrained!r} of CLIP model {name!r}")
    path = Path(downloaded)
    _refuse_pickle(path, name)
    return path, tag_cfg


def _refuse_pickle(path: Path, name: str) -> None:
    if path.suffix != ".safetensors":
        raise ClipError(
            f"refusing to load {str(path)!r} for CLIP model {name!r}: only .safetensors checkpoints are loaded "
            "(.pt/.bin/.pth are pickles, which can run code); convert it once in a trusted environment"
        )


def _interpolation(name: str) -> InterpolationMode:
    # open_clip: 'bilinear' -> BILINEAR, anything else ('bicubic', 'random') -> BICUBIC at eval time
    return InterpolationMode.BILINEAR if name == "bilinear" else InterpolationMode.BICUBIC
