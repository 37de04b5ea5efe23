"""The CLIP wrapper: any open_clip model, its tokenizer and its image transform, behind one class.

`CLIP` builds an open_clip model from a `ClipConfig` (an open_clip architecture name, or a
custom open_clip model config registered under that name, plus optional weights: an open_clip
pretrained tag when a hub is reachable, or a local ``.safetensors`` checkpoint) and gives the
cascade what it consumes:

* ``encode_text(prompts)`` -> `TextEncoding`: the L2-normalised pooled embedding ``embed`` (B, D)
  -- exactly ``model.encode_text(ids, normalize=True)`` -- and the per-token hidden states
  ``tokens`` (B, L, W) after the text tower's final LayerNorm (what Karlo's prior and decoder
  consume as ``last_hidden_state``), with ``mask`` (B, L) True for real tokens (SOT..EOT) and
  the token ``ids`` (B, L).
* ``encode_image(images)`` -> (B, D) L2-normalised: PIL images go through open_clip's eval
  transform; float tensors (B, 3, H, W) in [-1, 1] (generated images) are resized and
  normalised with torch ops, differentiably.

Frozen by default: parameters have ``requires_grad=False`` and the module stays in eval mode
even when a parent module calls ``.train()``. For the CLIP training stage call
``clip.unfreeze()`` (requires_grad on, train mode; ``.train()``/``.eval()`` then behave as
usual) and use ``clip.model`` (the open_clip model) with ``open_clip.ClipLoss``;
``clip.freeze()`` goes back.

Checkpoints never unpickle: ``save_pretrained`` writes ``config.json`` + ``model.safetensors``
(atomically), and only ``.safetensors`` weights are ever loaded.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
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
from typing import Any, Iterator, NamedTuple, Sequence

import open_clip
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from open_clip.pretrained import has_hf_hub
from open_clip.transform import center_crop_or_pad
from open_clip.transformer import TextTransformer, text_global_pool
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import Compose, InterpolationMode

from .config import ConfigError, from_dict, to_dict

__all__ = ["ClipConfig", "CLIP", "ClipError", "TextEncoding", "to_rgb", "CLIP_CONFIG_DIR"]

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


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL image as RGB; transparent pixels are composited over `background` (white)."""
    if not isinstance(image, Image.Image):
        raise ClipError(f"expected a PIL image, got {type(image).__name__}")
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if image.mode.startswith("I;16"):  # 16-bit grey: PIL's convert would saturate at 255
        import numpy as np

        grey = (np.asarray(image, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    try:
        if has_alpha:
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, background + (255,))
            return Image.alpha_composite(canvas, rgba).convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as e:
        raise ClipError(f"cannot convert a PIL image of mode {image.mode!r} to RGB: {_one_line(e)}") from e


def _interpolation(name: str) -> InterpolationMode:
    # open_clip: 'bilinear' -> BILINEAR, anything else ('bicubic', 'random') -> BICUBIC at eval time
    return InterpolationMode.BILINEAR if name == "bilinear" else InterpolationMode.BICUBIC


# ----------------------------------------------------------------------------- the wrapper


class CLIP(nn.Module):
    """An open_clip model with its tokenizer and transform; frozen (eval, no grads) by default."""

    def __init__(
        self,
        config: ClipConfig,
        model: nn.Module,
        tokenizer: Any,
        preprocess_val: Any,
        preprocess_train: Any,
        model_config: dict,
    ) -> None:
        super().__init__()
        self._frozen = False
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.model_config = model_config  # the resolved open_clip model config
        pp = dict(model.visual.preprocess_cfg)
        self.preprocess_config: dict = {k: pp[k] for k in PREPROCESS_KEYS if k in pp}
        self._pp = pp
        size = pp.get("size", getattr(model.visual, "image_size", None))
        if isinstance(size, int):
            size = (size, size)
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1]))
        # open_clip's eval / train transforms, preceded by an alpha-aware RGB conversion
        # (open_clip resizes before converting, which is nearest-neighbour for P / 1 images
        # and drops alpha without compositing).
        self.preprocess = Compose([to_rgb, preprocess_val])
        self.preprocess_train = Compose([to_rgb, preprocess_train])
        self.register_buffer("_mean", torch.tensor(pp["mean"], dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(pp["std"], dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.freeze()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, config: ClipConfig) -> "CLIP":
        """Build the model (random init, or the weights `config.pretrained` names)."""
        if not isinstance(config, ClipConfig):
            raise ClipError(f"CLIP.from_config expects a ClipConfig, got {type(config).__name__}")
        _ensure_shipped_configs()
        name = config.model_name
        if name.startswith(("hf-hub:", "local-dir:")):
            raise ClipError(
                f"CLIP model {name!r}: open_clip 'hf-hub:'/'local-dir:' names are not supported; "
                "pass the open_clip config as model_config and a local .safetensors file as pretrained"
            )
        lookup = name.replace("/", "-")
        if config.model_config is not None:
            model_cfg = _normalise_model_config(name, config.model_config)
        else:
            model_cfg = open_clip.get_model_config(lookup)
            if model_cfg is None:
                raise ClipError(
                    f"unknown CLIP model {name!r}: not an open_clip architecture nor a registered config "
                    "(give its open_clip config as model_config)"
                )
        weights, tag_cfg = (None, {}) if config.pretrained is None else _resolve_pretrained(lookup, config.pretrained)
        if tag_cfg.get("quick_gelu", False) and not model_cfg.get("quick_gelu", False):
            model_cfg = {**model_cfg, "quick_gelu": True}  # the tag was trained with QuickGELU
        if open_clip.get_model_config(lookup) == model_cfg:
            build_name = lookup
        else:
            if not _NAME_RE.match(lookup):
                raise ClipError(
                    f"CLIP model name {name!r}: a custom model_config needs a name of letters, digits and . _ - + @ ="
                )
            build_name = _register_model_config(lookup, model_cfg)

        preprocess = {k: tag_cfg[k] for k in PREPROCESS_KEYS if k in tag_cfg}
        preprocess.update(config.preprocess_config or {})
        try:
            with _quiet_open_clip():
                model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
                    build_name,
                    pretrained=None,
                    pretrained_image=False,
                    pretrained_text=False,
                    image_mean=tuple(preprocess["mean"]) if "mean" in preprocess else None,
                    image_std=tuple(preprocess["std"]) if "std" in preprocess else None,
                    image_interpolation=preprocess.get("interpolation"),
                    image_resize_mode=preprocess.get("resize_mode"),
                )
        except Exception as e:
            raise ClipError(f"open_clip could not build CLIP model {name!r}: {type(e).__name__}: {_one_line(e)}") from e
        if not hasattr(model, "visual") or not hasattr(model, "encode_text"):
            raise ClipError(f"CLIP model {name!r} is not a contrastive image-text model")
        if weights is not None:
            try:
                open_clip.load_checkpoint(model, str(weights), strict=True)
            except Exception as e:
                raise ClipError(
                    f"could not load {str(weights)!r} into CLIP model {name!r}: {type(e).__name__}: {_one_line(e)}"
                ) from e
        try:
            tokenizer = open_clip.get_tokenizer(build_name)
        except Exception as e:
            raise ClipError(f"open_clip has no tokenizer for CLIP model {name!r}: {_one_line(e)}") from e
        return cls(config, model, tokenizer, preprocess_val, preprocess_train, model_cfg)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "CLIP":
        """Load a folder written by `save_pretrained` (config.json + model.safetensors), strictly."""
        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        if not config_path.is_file():
            raise ClipError(f"not a CLIP checkpoint folder: {str(config_path)!r} is missing")
        if not weights_path.is_file():
            raise ClipError(f"not a CLIP checkpoint folder: {str(weights_path)!r} is missing")
        try:
            data = json.loads(config_path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ClipError(f"{str(config_path)!r} is not valid JSON: {_one_line(e)}") from e
        config = from_dict(ClipConfig, data, where=f"{config_path}")
        # The weights come from the folder: never fetch the original pretrained source again.
        clip = cls.from_config(dataclasses.replace(config, pretrained=None))
        clip.load_weights(weights_path)
        return clip

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load a .safetensors state dict of exactly this model (every key, every shape) into it."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise ClipError(f"CLIP weights not found: {str(path)!r}")
        _refuse_pickle(path, self.config.model_name)
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ClipError(f"{str(path)!r} is not a readable safetensors file: {_one_line(e)}") from e
        expected = self.model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        shapes = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
        problems = []

        def names(keys: list[str]) -> str:
            shown = ", ".join(keys[:5])
            return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

        if missing:
            problems.append(f"missing {len(missing)} weight(s): {names(missing)}")
        if unexpected:
            problems.append(f"unexpected weight(s): {names(unexpected)}")
        if shapes:
            k = shapes[0]
            problems.append(
                f"shape mismatch for {names(shapes)} (e.g. {k}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
            )
        if problems:
            raise ClipError(f"{str(path)!r} does not match CLIP model {self.config.model_name!r}: " + "; ".join(problems))
        self.model.load_state_dict(state, strict=True)

    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        """Write model.safetensors (floating weights cast to `dtype` if given) and config.json
        (the resolved ClipConfig), each atomically."""
        from .checkpoint import save_weights, write_json

        folder = Path(folder)
        save_weights(self.model, folder / WEIGHTS_NAME, dtype=dtype, metadata={"format": "pt"})
        write_json(folder / CONFIG_NAME, to_dict(self.resolved_config))

    @property
    def resolved_config(self) -> ClipConfig:
        """The config that rebuilds this architecture with no lookup: explicit model_config and
        preprocess_config, no pretrained source (the weights live next to it)."""
        return ClipConfig(
            model_name=self.config.model_name,
            pretrained=None,
            model_config=copy.deepcopy(self.model_config),
            preprocess_config={k: list(v) if isinstance(v, (tuple, list)) else v for k, v in self.preprocess_config.items()},
        )

    # ------------------------------------------------------------------ freezing

    def freeze(self) -> "CLIP":
        """Cascade use (the default): no gradients for the weights, eval mode that `.train()` keeps."""
        self._frozen = True
        self.requires_grad_(False)
        return super().train(False)

    def unfreeze(self) -> "CLIP":
        """CLIP training: weights require grad, train mode; `.train()`/`.eval()` work as usual."""
        self._frozen = False
        self.requires_grad_(True)
        return super().train(True)

    @property
    def frozen(self) -> bool:
        return self._frozen

    def train(self, mode: bool = True) -> "CLIP":
        return super().train(False if self._frozen else mode)

    # ------------------------------------------------------------------ sizes

    @property
    def device(self) -> torch.device:
        return self._mean.device

    @property
    def embed_dim(self) -> int:
        return int(self.model_config["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    @property
    def text_width(self) -> int:
        return int(self._text_tower()["width"])

    def _text_tower(self) -> dict:
        """The pieces of the text tower that expose per-token states, or a clear error."""
        m = self.model
        if isinstance(m, open_clip.CLIP):
            return {"kind": "clip", "width": m.transformer.width}
        text = getattr(m, "text", None)
        if isinstance(text, TextTransformer):
            return {"kind": "text", "width": text.width}
        raise ClipError(
            f"CLIP model {self.config.model_name!r} ({type(m).__name__} with a {type(text).__name__} text tower) "
            "does not expose per-token text states; only open_clip's own TextTransformer towers do"
        )

    # ------------------------------------------------------------------ text

    def tokenize(self, prompts: str | Sequence[str]) -> Tensor:
        """Token ids (B, context_length), long, on the CPU (long prompts are truncated, EOT kept)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ClipError("tokenize: no prompts given")
        bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
        if bad:
            raise ClipError(f"tokenize: prompts must be strings, got {bad[0]}")
        return torch.as_tensor(self.tokenizer(prompts)).long()

    def token_mask(self, ids: Tensor) -> Tensor:
        """(B, L) bool: True from SOT through the first EOT (SimpleTokenizer), else ids != pad."""
        eot = getattr(self.tokenizer, "eot_token_id", None)
        if eot is not None:
            is_eot = ids == eot
            upto = torch.arange(ids.shape[1], device=ids.device)[None] <= is_eot.int().argmax(dim=1, keepdim=True)
            return torch.where(is_eot.any(dim=1, keepdim=True), upto, ids != 0)
        pad = getattr(getattr(self.tokenizer, "tokenizer", None), "pad_token_id", None)
        if pad is None:
            pad = getattr(getattr(self.model, "text", None), "pad_id", 0)
        return ids != pad

    def encode_text(self, prompts: str | Sequence[str] | Tensor, with_tokens: bool = True) -> TextEncoding:
        """Pooled embedding and per-token states of prompts (or of token ids (B, context_length))."""
        if isinstance(prompts, Tensor):
            ids = prompts
            if ids.dim() != 2 or ids.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
                raise ClipError(f"encode_text: token ids must be an integer tensor (B, L), got {tuple(ids.shape)} {ids.dtype}")
            if ids.shape[1] != self.context_length:
                raise ClipError(
                    f"encode_text: token ids have length {ids.shape[1]}, CLIP model {self.config.model_name!r} "
                    f"takes {self.context_length}"
                )
            ids = ids.long()
        else:
            ids = self.tokenize(prompts)
        ids = ids.to(self.device)
        mask = self.token_mask(ids)
        if not with_tokens:
            return TextEncoding(self.model.encode_text(ids, normalize=True), None, mask, ids)
        pooled, tokens = self._text_forward(ids)
        return TextEncoding(F.normalize(pooled, dim=-1), tokens, mask, ids)

    def _text_forward(self, text: Tensor) -> tuple[Tensor, Tensor]:
        """open_clip's encode_text, step by step, keeping the token states after ln_final."""
        kind = self._text_tower()["kind"]
        if kind == "clip":  # open_clip.model.CLIP.encode_text
            m = self.model
            cast_dtype = m.transformer.get_cast_dtype()
            x = m.token_embedding(text).to(cast_dtype)
            x = x + m.positional_embedding.to(cast_dtype)
            x = m.transformer(x, attn_mask=m.attn_mask)
            tokens = x = m.ln_final(x)
            pooled = text_global_pool(
                x, text, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None)
            )
            proj = m.text_projection
        else:  # TextTransformer.forward (CustomTextCLIP, CoCa)
            t = self.model.text
            x, attn_mask = t._embeds(text)
            x = t.transformer(x, attn_mask=attn_mask)
            if t.cls_emb is not None:
                # appended CLS (CoCa): pooled is its LayerNormed state; token states get the same LN
                pooled = t.ln_final(text_global_pool(x, pool_type="last"))
                tokens = t.ln_final(x[:, :-1])
            else:
                tokens = x = t.ln_final(x)
                pooled = text_global_pool(
                    x, text, pool_type=t.pool_type, eos_token_id=getattr(t, "eos_id", None)
                )
            proj = t.text_projection
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        return pooled, tokens

    # ------------------------------------------------------------------ images

    def prepare_images(self, images: Image.Image | Sequence[Image.Image] | Tensor) -> Tensor:
        """The model's input (B, 3, H, W): PIL images through `preprocess`, or a float tensor in
        [-1, 1] resized (antialiased, as open_clip's transform would) and normalised with torch ops."""
        if isinstance(images, Tensor):
            return self._prepare_tensor(images)
        if isinstance(images, Image.Image):
            images = [images]
        images = list(images)
        if not images:
            raise ClipError("encode_image: no images given")
        batch = torch.stack([self.preprocess(im) for im in images])
        return batch.to(self.device, self._mean.dtype)

    def _prepare_tensor(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ClipError(
                f"encode_image: a tensor must be float (B, 3, H, W) in [-1, 1], got {tuple(x.shape)} {x.dtype}"
            )
        x = (x.to(self.device, self._mean.dtype) + 1) / 2
        th, tw = self.image_size
        h, w = x.shape[-2:]
        mode = self._pp.get("resize_mode", "shortest")
        interp = _interpolation(self._pp.get("interpolation", "bicubic"))
        if mode == "squash":
            if (h, w) != (th, tw):
                x = TF.resize(x, [th, tw], interpolation=interp, antialias=True)
        elif mode == "longest":
            ratio = max(h / th, w / tw)
            size = [round(h / ratio), round(w / ratio)]
            if size != [h, w]:
                x = TF.resize(x, size, interpolation=interp, antialias=True)
            fill = self._pp.get("fill_color", 0) / 255.0
            x = center_crop_or_pad(x, [th, tw], fill=fill)
        else:  # shortest edge to the target, then centre crop (open_clip's default)
            if th == tw:
                if min(h, w) != th:
                    x = TF.resize(x, [th], interpolation=interp, antialias=True)
            else:
                ratio = min(h / th, w / tw)
                size = [round(h / ratio), round(w / ratio)]
                if size != [h, w]:
                    x = TF.resize(x, size, interpolation=interp, antialias=True)
            x = TF.center_crop(x, [th, tw])
        return (x - self._mean) / self._std

    def encode_image(self, images: Image.Image | Sequence[Image.Image] | Tensor) -> Tensor:
        """(B, D) L2-normalised image embeddings (differentiable w.r.t. a tensor input)."""
        return self.model.encode_image(self.prepare_images(images), normalize=True)

    def extra_repr(self) -> str:
        return f"model_name={self.config.model_name!r}, embed_dim={self.embed_dim}, frozen={self._frozen}"
