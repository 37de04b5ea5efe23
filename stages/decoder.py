"""The 64x64 decoder: a GLIDE UNet conditioned on a CLIP image embedding (and optionally text)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from .common import TransformerBlock, count_parameters, key_padding_bias, select, zero_module
from .text_encoder import TextTransformer
from .unet import UNet, UNetConfig


@dataclass(frozen=True)
class DecoderConfig(UNetConfig):
    """Decoder architecture: the UNet fields plus how CLIP and text conditioning enter it."""

    out_channels: int = 3  # 6 = learned variance (DALL-E 2, Karlo)
    embed_dim: int = 1024  # CLIP embedding width (image, and pooled text when text_source == "clip")
    num_image_tokens: int = 4  # context tokens projected from the image embedding
    context_dim: int = 1024  # width of the context tokens attention layers see (diffusers' cross_attention_dim)
    text_source: Literal["clip", "own", "none"] = "clip"  # CLIP token states, own text transformer, or no text
    text_context: int = 77  # text token positions
    text_width: int = 1024  # "clip": width of CLIP's token states; "own": the text transformer's width
    text_layers: int = 24  # "own" only: text transformer depth
    text_heads: int = 32  # "own" only: text transformer heads
    text_vocab_size: int = 49408  # "own" only: vocabulary of text_ids (open_clip's tokenizer)
    null_text_length: int = 0  # "clip" only: leading null token positions visible where text is dropped
    text_adapter_layers: int = 0  # "clip" only: bidirectional transformer layers over the text tokens (see Decoder)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_image_tokens < 1:
            raise ValueError("num_image_tokens must be at least 1")
        if not 0 <= self.null_text_length <= self.text_context:
            raise ValueError(f"null_text_length {self.null_text_length} must be in [0, text_context]")
        if self.text_adapter_layers < 0:
            raise ValueError(f"text_adapter_layers must be at least 0, got {self.text_adapter_layers}")
        if self.text_adapter_layers and self.text_source != "clip":
            raise ValueError('text_adapter_layers needs text_source "clip" (the "own" encoder is trained already)')
        if self.text_adapter_layers and self.context_dim % self.head_dim:
            raise ValueError(f"context_dim {self.context_dim} is not divisible by head_dim {self.head_dim}")
        if self.text_source == "own" and self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} is not divisible by text_heads {self.text_heads}")


class Decoder(nn.Module):
    """The unCLIP decoder P(x | z_i, y) of DALL-E 2 §2.1, on GLIDE's UNet (Nichol et al. 2021).

    The CLIP image embedding z_i is projected and added to the timestep embedding, and
    projected into `num_image_tokens` extra context tokens that every attention layer sees
    beside the text tokens. Text enters per `text_source`:

    - "clip" (Karlo): the pooled CLIP text embedding is projected and added to the timestep
      embedding; CLIP's token states are projected to `context_dim` then LayerNormed, and
      padding tokens are masked out of attention. This is diffusers' UnCLIPTextProjModel.
    - "own" (GLIDE / DALL-E 2): a text transformer trained with the decoder reads token ids;
      its last position is projected into the timestep embedding and all its states (to
      `context_dim` by a linear layer when the widths differ) are context tokens.
    - "none": image conditioning only.

    `text_adapter_layers` > 0 ("clip" only) runs that many bidirectional pre-LN transformer
    blocks (with a learned position embedding) over the projected token states before the
    UNet sees them. CLIP's causal token states are close to a bag of words: they say "red",
    "circle", "left" but not which object "left of" binds, and a decoder reading them directly
    draws the two objects of "A to the left of B" in either order. The adapter is trained with
    the decoder; its blocks' output layers and the position embedding start at zero, so
    adding it to a trained decoder leaves the decoder's function unchanged until it learns.

    Classifier-free guidance: where `image_drop` is True the image embedding is replaced by
    a learned null (before both projections; diffusers' learned_classifier_free_guidance_
    embeddings); where `text_drop` is True, "clip" text takes a learned null embedding and
    null token states (all masked but the first `null_text_length`), and "own" text becomes
    the empty caption (all padding).
    """

    config_class: ClassVar[type] = DecoderConfig

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = c = config
        emb_dim = c.emb_dim
        self.null_image_embed = nn.Parameter(torch.zeros(c.embed_dim))
        self.image_to_emb = nn.Linear(c.embed_dim, emb_dim)
        self.image_to_tokens = nn.Linear(c.embed_dim, c.num_image_tokens * c.context_dim)
        if c.text_source == "clip":
            self.null_text_embed = nn.Parameter(torch.zeros(c.embed_dim))
            self.null_text_tokens = nn.Parameter(torch.zeros(c.text_context, c.text_width))
            self.text_to_emb = nn.Linear(c.embed_dim, emb_dim)
            self.text_tokens_proj = nn.Linear(c.text_width, c.context_dim)
            self.text_tokens_norm = nn.LayerNorm(c.context_dim)
            if c.text_adapter_layers:
                self.text_adapter_pos = nn.Parameter(torch.zeros(c.text_context, c.context_dim))
                self.text_adapter = nn.ModuleList(
                    TransformerBlock(c.context_dim, c.context_dim // c.head_dim, c.dropout)
                    for _ in range(c.text_adapter_layers))
                for block in self.text_adapter:
                    zero_module(block.attn.to_out)
                    zero_module(block.mlp.fc2)
        elif c.text_source == "own":
            self.text_encoder = TextTransformer(
                c.text_vocab_size, c.text_context, c.text_width, c.text_layers, c.text_heads, c.dropout
            )
            self.text_to_emb = nn.Linear(c.text_width, emb_dim)
            self.text_tokens_proj = (
                nn.Linear(c.text_width, c.context_dim) if c.text_width != c.context_dim else nn.Identity()
            )
        self.unet = UNet(c, input_channels=c.in_channels, context_dim=c.context_dim)

    def num_parameters(self) -> int:
        return count_parameters(self)

    def _clip_text(self, text_embed, text_tokens, text_mask, text_drop, B):
        c = self.config
        if text_embed is None or text_tokens is None:
            raise ValueError('text_source "clip" needs text_embed (B, D) and text_tokens (B, L, W)')
        L = text_tokens.shape[1]
        if L > c.text_context:
            raise ValueError(f"text_tokens has {L} positions, the decoder takes at most {c.text_context}")
        if text_mask is None:
            text_mask = torch.ones(B, L, dtype=torch.bool, device=text_tokens.device)
        text_mask = text_mask.to(torch.bool)
        null_mask = torch.arange(L, device=text_mask.device) < c.null_text_length
        text_embed = select(text_drop, self.null_text_embed, text_embed)
        text_tokens = select(text_drop, self.null_text_tokens[:L], text_tokens)
        text_mask = select(text_drop, null_mask, text_mask)
        tokens = self.text_tokens_norm(self.text_tokens_proj(text_tokens))  # (B, L, context_dim)
        if c.text_adapter_layers:
            tokens = tokens + self.text_adapter_pos[:L]
            bias = key_padding_bias(text_mask)[:, None, None, :]  # (B, 1, 1, L): padding is never attended
            for block in self.text_adapter:
                tokens = block(tokens, bias)
        return self.text_to_emb(text_embed), tokens, text_mask

    def _own_text(self, text_ids, text_mask, text_drop):
        if text_ids is None:
            raise ValueError('text_source "own" needs text_ids (B, L) long token ids')
        mask = (text_ids != 0) if text_mask is None else text_mask.to(torch.bool)
        if text_drop is not None:
            mask = mask & ~text_drop.to(device=mask.device, dtype=torch.bool)[:, None]
        states = self.text_encoder(text_ids, mask)  # (B, text_context, text_width)
        return self.text_to_emb(states[:, -1]), self.text_tokens_proj(states)

    def prepare_condition(self, cond: dict) -> dict:
        """The condition a sampler passes at every step, with the step-invariant work done once:
        {"cond_emb": (B, emb_dim), "context": (B, Lc, context_dim), "context_mask": (B, Lc) bool
        or None} — the embedding added to the timestep's and the tokens attention sees (the image
        tokens, the text tokens through the adapter). `forward(x, t, **prepared)` equals
        `forward(x, t, **cond)`; on the shipped decoder it saves ~6% of an evaluation."""
        if "cond_emb" in cond:
            return dict(cond)
        names = ("image_embed", "text_embed", "text_tokens", "text_ids", "text_mask", "image_drop", "text_drop")
        unknown = sorted(set(cond) - set(names))
        if unknown:
            raise ValueError(f"unexpected decoder condition keys: {unknown}")
        if "image_embed" not in cond:
            raise ValueError("the decoder needs image_embed")
        emb, context, context_mask = self._condition(**cond)
        return {"cond_emb": emb, "context": context, "context_mask": context_mask}

    def _condition(
        self,
        image_embed: Tensor,
        text_embed: Tensor | None = None,
        text_tokens: Tensor | None = None,
        text_ids: Tensor | None = None,
        text_mask: Tensor | None = None,
        image_drop: Tensor | None = None,
        text_drop: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(the conditioning embedding, the context tokens, their mask or None)."""
        c = self.config
        B = image_embed.shape[0]
        image_embed = select(image_drop, self.null_image_embed, image_embed)
        emb = self.image_to_emb(image_embed)
        # (B, n * C) -> (B, C, n) -> (B, n, C): the layout of diffusers' UnCLIPTextProjModel
        context = self.image_to_tokens(image_embed).view(B, c.context_dim, c.num_image_tokens).transpose(1, 2)
        context_mask = None
        if c.text_source == "clip":
            text_emb, tokens, mask = self._clip_text(text_embed, text_tokens, text_mask, text_drop, B)
            emb = emb + text_emb
            context = torch.cat([context, tokens], dim=1)
            context_mask = torch.cat([torch.ones(B, c.num_image_tokens, dtype=torch.bool, device=mask.device), mask], 1)
        elif c.text_source == "own":
            text_emb, tokens = self._own_text(text_ids, text_mask, text_drop)
            emb = emb + text_emb
            context = torch.cat([context, tokens], dim=1)
        return emb, context, context_mask

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        *,
        image_embed: Tensor | None = None,
        text_embed: Tensor | None = None,
        text_tokens: Tensor | None = None,
        text_ids: Tensor | None = None,
        text_mask: Tensor | None = None,
        image_drop: Tensor | None = None,
        text_drop: Tensor | None = None,
        cond_emb: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        """x: (B, in_channels, H, W) noised image; t: (B,) in [0, 1000). Returns (B, out_channels, H, W).

        image_embed: (B, embed_dim). "clip": text_embed (B, embed_dim), text_tokens (B, L,
        text_width), text_mask (B, L) bool (True = real token). "own": text_ids (B, L) long,
        text_mask optional (default: ids != 0, open_clip's padding). Text arguments that the
        configured text_source does not use are ignored. image_drop / text_drop: (B,) bool.
        Or, in place of all of them, `cond_emb`, `context` and `context_mask` from
        `prepare_condition` (what samplers pass).
        """
        if cond_emb is not None:
            given = (image_embed, text_embed, text_tokens, text_ids, text_mask, image_drop, text_drop)
            if context is None or any(v is not None for v in given):
                raise ValueError("pass either the condition inputs or cond_emb and context (prepare_condition), not both")
            if cond_emb.shape[0] != x.shape[0]:
                raise ValueError(f"cond_emb has {cond_emb.shape[0]} rows for a batch of {x.shape[0]}")
        elif image_embed is None:
            raise ValueError("the decoder needs image_embed (or a prepared condition)")
        else:
            cond_emb, context, context_mask = self._condition(image_embed, text_embed, text_tokens, text_ids,
                                                              text_mask, image_drop, text_drop)
        return self.unet(x, t, emb=cond_emb, context=context, context_mask=context_mask)
