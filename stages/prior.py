"""The diffusion prior: a causal transformer that maps a CLIP text embedding to a CLIP image embedding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .common import MASK_BIAS, TimestepMLP, TransformerBlock, count_parameters, select


@dataclass(frozen=True)
class PriorConfig:
    """Architecture of the prior transformer. Defaults: the DALL-E 2 prior on ViT-H CLIP embeddings."""

    embed_dim: int = 1024  # CLIP embedding width (image and pooled text embeddings)
    text_width: int = 1024  # width of CLIP's per-token hidden states
    text_context: int = 77  # text token positions in the sequence; 0 = no per-token input
    width: int = 2048  # transformer width
    layers: int = 20  # transformer blocks
    heads: int = 32  # attention heads (head width = width / heads)
    dropout: float = 0.0
    null_text_length: int = 0  # leading null token positions visible where text is dropped (Karlo: 2)
    clip_stats: bool = False  # carry clip_mean / clip_std buffers (Karlo's embedding normalisation)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if not 0 <= self.null_text_length <= self.text_context:
            raise ValueError(f"null_text_length {self.null_text_length} must be in [0, text_context]")


class PriorTransformer(nn.Module):
    """Diffusion prior p(z_i | y) of DALL-E 2 §2.2: a decoder-only causal transformer.

    The sequence is, in order: the text's CLIP token states (projected), the CLIP text
    embedding (projected), the timestep embedding, the noised CLIP image embedding
    (projected) and a learned query; learned positional embeddings are added. The query's
    output, after a final LayerNorm and a linear layer, is the prediction (x0, eps or v: the
    schedule decides). Computation as diffusers' `PriorTransformer` (Karlo): pre-LN blocks
    with biased attention and a GELU MLP, a -10000 causal bias plus the text padding bias.

    Where `text_drop` is True the text embedding and token states are replaced by learned
    null values; all but the first `null_text_length` null tokens are masked out.

    With `clip_stats`, buffers `clip_mean`, `clip_std` (1, embed_dim) hold the statistics the
    prior's image embeddings were normalised with; the network itself works in the
    normalised space, see `normalize_image_embed` / `denormalize_image_embed`.
    """

    config_class: ClassVar[type] = PriorConfig

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = c = config
        self.time_embed = TimestepMLP(c.width, c.width, c.width)
        self.image_in = nn.Linear(c.embed_dim, c.width)  # noised image embedding -> token
        self.text_embed_in = nn.Linear(c.embed_dim, c.width)  # pooled text embedding -> token
        if c.text_context > 0:
            self.text_tokens_in = nn.Linear(c.text_width, c.width)
            self.null_text_tokens = nn.Parameter(torch.zeros(c.text_context, c.text_width))
        self.null_text_embed = nn.Parameter(torch.zeros(c.embed_dim))
        self.query = nn.Parameter(torch.randn(1, 1, c.width) * 0.02)
        self.positional_embedding = nn.Parameter(torch.randn(1, self.seq_len, c.width) * 0.01)
        self.blocks = nn.ModuleList(TransformerBlock(c.width, c.heads, c.dropout) for _ in range(c.layers))
        self.norm_out = nn.LayerNorm(c.width)
        self.proj_out = nn.Linear(c.width, c.embed_dim)
        causal = torch.full((self.seq_len, self.seq_len), MASK_BIAS).triu_(1)
        self.register_buffer("causal_bias", causal, persistent=False)
        if c.clip_stats:
            # (1, embed_dim), the shape of diffusers' PriorTransformer.clip_mean / clip_std
            self.register_buffer("clip_mean", torch.zeros(1, c.embed_dim))
            self.register_buffer("clip_std", torch.ones(1, c.embed_dim))

    @property
    def seq_len(self) -> int:
        return self.config.text_context + 4

    def num_parameters(self) -> int:
        return count_parameters(self)

    def normalize_image_embed(self, image_embed: Tensor) -> Tensor:
        """CLIP image embedding -> the prior's working space ((z - mean) / std; identity without stats)."""
        if not self.config.clip_stats:
            return image_embed
        return (image_embed - self.clip_mean) / self.clip_std

    def denormalize_image_embed(self, image_embed: Tensor) -> Tensor:
        """The prior's working space -> CLIP image embedding (z * std + mean; diffusers' post_process_latents)."""
        if not self.config.clip_stats:
            return image_embed
        return image_embed * self.clip_std + self.clip_mean

    def _text_tokens(self, text_tokens: Tensor | None, text_mask: Tensor | None, text_drop: Tensor | None, B: int):
        """Token states padded to text_context, with nulls where dropped; returns (tokens, mask)."""
        c = self.config
        if text_tokens is None:
            raise ValueError(f"this prior has text_context={c.text_context}: pass text_tokens (B, L, {c.text_width})")
        L = text_tokens.shape[1]
        if L > c.text_context:
            raise ValueError(f"text_tokens has {L} positions, the prior takes at most {c.text_context}")
        if text_mask is None:
            text_mask = torch.ones(B, L, dtype=torch.bool, device=text_tokens.device)
        text_mask = text_mask.to(torch.bool)
        if L < c.text_context:
            text_tokens = nn.functional.pad(text_tokens, (0, 0, 0, c.text_context - L))
            text_mask = nn.functional.pad(text_mask, (0, c.text_context - L), value=False)
        null_mask = torch.arange(c.text_context, device=text_mask.device) < c.null_text_length
        text_tokens = select(text_drop, self.null_text_tokens, text_tokens)
        text_mask = select(text_drop, null_mask, text_mask)
        return text_tokens, text_mask

    def encode_sequence(
        self,
        x: Tensor,
        t: Tensor,
        *,
        text_embed: Tensor,
        text_tokens: Tensor | None = None,
        text_mask: Tensor | None = None,
        text_drop: Tensor | None = None,
    ) -> Tensor:
        """All positions' outputs after the final LayerNorm, (B, text_context + 4, width)."""
        c = self.config
        B = x.shape[0]
        if t.dim() == 0:
            t = t.expand(B)
        text_embed = select(text_drop, self.null_text_embed, text_embed)
        image = self.image_in(x)[:, None]  # (B, 1, width)
        dtype = image.dtype  # the compute dtype (bfloat16 under autocast)
        parts = []
        if c.text_context > 0:
            text_tokens, text_mask = self._text_tokens(text_tokens, text_mask, text_drop, B)
            parts.append(self.text_tokens_in(text_tokens).to(dtype))  # (B, L, width)
        parts += [
            self.text_embed_in(text_embed)[:, None].to(dtype),
            self.time_embed(t)[:, None].to(dtype),
            image,
            self.query.to(dtype).expand(B, -1, -1),
        ]
        h = torch.cat(parts, dim=1) + self.positional_embedding.to(dtype)  # (B, S, width)

        bias = self.causal_bias[None, None]  # (1, 1, S, S)
        if c.text_context > 0:
            key_bias = torch.zeros(B, self.seq_len, device=x.device)
            key_bias[:, : c.text_context] = (~text_mask).float() * MASK_BIAS
            bias = bias + key_bias[:, None, None, :]  # (B, 1, S, S)
        for block in self.blocks:
            h = block(h, bias)
        return self.norm_out(h)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        *,
        text_embed: Tensor,
        text_tokens: Tensor | None = None,
        text_mask: Tensor | None = None,
        text_drop: Tensor | None = None,
    ) -> Tensor:
        """x: (B, embed_dim) noised image embedding; t: (B,) in [0, 1000). Returns (B, embed_dim).

        text_embed: (B, embed_dim); text_tokens: (B, L <= text_context, text_width), needed
        when text_context > 0 (ignored otherwise); text_mask: (B, L) bool, True = real token;
        text_drop: (B,) bool, True = use the learned null text instead.
        """
        h = self.encode_sequence(
            x, t, text_embed=text_embed, text_tokens=text_tokens, text_mask=text_mask, text_drop=text_drop
        )
        return self.proj_out(h[:, -1])
