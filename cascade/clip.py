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

import copy
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import open_clip
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from open_clip.transform import center_crop_or_pad
from open_clip.transformer import TextTransformer, text_global_pool
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import Compose

from .config import from_dict, to_dict
from .images import to_rgb

__all__ = ["ClipConfig", "CLIP", "ClipError", "TextEncoding", "to_rgb", "CLIP_CONFIG_DIR"]

from .clip_config import (  # noqa: F401  (ClipConfig, ClipError, TextEncoding are part of this module's API)
    CONFIG_NAME,
    WEIGHTS_NAME,
    PREPROCESS_KEYS,
    CLIP_CONFIG_DIR,
    ClipError,
    ClipConfig,
    TextEncoding,
    _one_line,
    _quiet_open_clip,
    _ensure_shipped_configs,
    _NAME_RE,
    _register_model_config,
    _normalise_model_config,
    _resolve_pretrained,
    _refuse_pickle,
    _interpolation,
)


# ----------------------------------------------------------------------------- compact token embeddings

ROWS_SUFFIX = ".rows"  # KEY.rows (int32, K): the token ids whose rows KEY (K + 1, W) holds; its last row is every other id's


def _compact_rows(table: Tensor, rows: Iterable[int]) -> tuple[Tensor, Tensor]:
    """(the kept rows + the mean of the others as one last row, the kept ids) of an embedding table."""
    ids = torch.as_tensor(sorted({int(r) for r in rows}), dtype=torch.long)
    if ids.numel() == 0 or ids[0] < 0 or ids[-1] >= table.shape[0]:
        raise ClipError(f"token_rows must be token ids in [0, {table.shape[0]}), got {ids.numel()} ids"
                        + (f" from {int(ids[0])} to {int(ids[-1])}" if ids.numel() else ""))
    others = torch.ones(table.shape[0], dtype=torch.bool)
    others[ids] = False
    fill = table[others].mean(dim=0, keepdim=True) if others.any() else torch.zeros_like(table[:1])
    return torch.cat([table[ids], fill.to(table.dtype)]), ids.to(torch.int32)


def _expand_rows(state: dict[str, Tensor], expected: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Expand every compact table (KEY + KEY.rows, from `_compact_rows`) in a loaded state dict to its full size."""
    for rows_key in [k for k in state if k.endswith(ROWS_SUFFIX)]:
        key = rows_key[: -len(ROWS_SUFFIX)]
        rows, table = state.pop(rows_key).long(), state.get(key)
        full = expected.get(key)
        ok = (full is not None and table is not None and rows.ndim == 1 and table.ndim == 2
              and table.shape == (rows.numel() + 1, full.shape[1]) and rows.numel() > 0
              and int(rows.min()) >= 0 and int(rows.max()) < full.shape[0] and rows.unique().numel() == rows.numel())
        if not ok:
            raise ClipError(f"{str(path)!r}: {rows_key} does not describe a compact form of {key} "
                            f"(rows {tuple(rows.shape)}, table {None if table is None else tuple(table.shape)}, "
                            f"model {None if full is None else tuple(full.shape)})")
        expanded = table[-1:].expand(full.shape[0], -1).clone()
        expanded[rows] = table[:-1]
        state[key] = expanded
    return state


def _is_compact(path: str | os.PathLike) -> bool:
    if not str(path).endswith(".safetensors"):
        return False
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return any(k.endswith(ROWS_SUFFIX) for k in f.keys())


def shapeworld_token_rows(clip: "CLIP") -> list[int]:
    """The token ids of every word ShapeWorld's captions, paraphrases and caption parser use (with
    the start, end and padding tokens): the rows of the token embedding a ShapeWorld CLIP trained."""
    from .data.shapeworld import vocabulary_captions

    return sorted(int(i) for i in clip.tokenize(vocabulary_captions()).unique())


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
                if _is_compact(weights):  # written by save_pretrained(token_rows=...): open_clip cannot read it
                    from safetensors.torch import load_file

                    model.load_state_dict(_expand_rows(load_file(str(weights), device="cpu"), model.state_dict(), Path(weights)))
                else:
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
        state = _expand_rows(state, expected, path)
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

    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None,
                        token_rows: Iterable[int] | None = None) -> None:
        """Write model.safetensors (floating weights cast to `dtype` if given) and config.json
        (the resolved ClipConfig), each atomically.

        With `token_rows` (the token ids the CLIP was trained on, e.g. `shapeworld_token_rows`), the
        token embedding keeps those rows exactly and one shared row, the mean of the others, for
        every other token: a CLIP trained on a small vocabulary ships without the tens of thousands
        of rows it never trained. Loading expands the table again, so every prompt made of those
        tokens encodes bit for bit as before; a word outside them reads the shared row."""
        from .checkpoint import save_weights, write_json

        folder = Path(folder)
        state = self.model.state_dict()
        if token_rows is not None:
            key = self._token_embedding_key()
            state[key], state[key + ROWS_SUFFIX] = _compact_rows(state[key], token_rows)
        save_weights(state, folder / WEIGHTS_NAME, dtype=dtype, metadata={"format": "pt"})
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

    def _token_embedding_key(self) -> str:
        """The state-dict key of the text tower's token embedding table."""
        return "token_embedding.weight" if self._text_tower()["kind"] == "clip" else "text.token_embedding.weight"

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
