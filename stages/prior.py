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

    @property
    def prefix_len(self) -> int:
        """The leading positions that see no x_t or t (the text token states and the pooled text
        embedding): under the causal mask their states at every layer are the same at every step."""
        return self.config.text_context + 1

    def _prefix_tokens(self, text_embed: Tensor, text_tokens: Tensor | None, text_mask: Tensor | None,
                       text_drop: Tensor | None) -> tuple[Tensor, Tensor]:
        """The prefix's input tokens (B, prefix_len, width), positions added, and its key bias (B, prefix_len)."""
        c = self.config
        B = text_embed.shape[0]
        text_embed = self.text_embed_in(select(text_drop, self.null_text_embed, text_embed))[:, None]
        dtype = text_embed.dtype  # the compute dtype (bfloat16 under autocast)
        parts, key_bias = [], [torch.zeros(B, 1, device=text_embed.device)]
        if c.text_context > 0:
            text_tokens, text_mask = self._text_tokens(text_tokens, text_mask, text_drop, B)
            parts.append(self.text_tokens_in(text_tokens).to(dtype))  # (B, L, width)
            key_bias.insert(0, (~text_mask).float() * MASK_BIAS)
        parts.append(text_embed.to(dtype))
        h = torch.cat(parts, dim=1) + self.positional_embedding[:, : self.prefix_len].to(dtype)
        return h, torch.cat(key_bias, dim=1)

    def _suffix_tokens(self, x: Tensor, t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """The per-step tokens (B, 3, width): timestep, noised image embedding, query; positions added.
        In `dtype`, else the compute dtype (bfloat16 under autocast)."""
        B = x.shape[0]
        if t.dim() == 0:
            t = t.expand(B)
        parts = [self.time_embed(t)[:, None], self.image_in(x)[:, None], self.query.expand(B, -1, -1)]
        dtype = dtype or parts[1].dtype
        h = torch.cat([p.to(dtype) for p in parts], dim=1)
        return h + self.positional_embedding[:, self.prefix_len :].to(dtype)

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
        prefix, key_bias = self._prefix_tokens(text_embed, text_tokens, text_mask, text_drop)
        h = torch.cat([prefix, self._suffix_tokens(x, t, prefix.dtype)], dim=1)  # (B, S, width)
        key_bias = nn.functional.pad(key_bias, (0, self.seq_len - self.prefix_len))
        bias = self.causal_bias[None, None] + key_bias[:, None, None, :]  # (B, 1, S, S)
        for block in self.blocks:
            h = block(h, bias)
        return self.norm_out(h)

    def prepare_condition(self, cond: dict) -> dict:
        """The condition a sampler passes at every step, with the step-invariant work done once.

        Returns {"prefix": (B, layers, 2, heads, prefix_len, head_dim), "prefix_bias": (B,
        prefix_len)}: every layer's keys and values of the prefix positions (the text tokens and
        the pooled text embedding, which the causal mask keeps from seeing x_t and t) and their
        key bias. `forward(x, t, prefix=..., prefix_bias=...)` then runs only the three per-step
        positions (the last layer only the query) and equals the full forward up to rounding.
        """
        if "prefix" in cond:
            return dict(cond)
        rest = {k: v for k, v in cond.items() if k not in ("text_embed", "text_tokens", "text_mask", "text_drop")}
        if rest:
            raise ValueError(f"unexpected prior condition keys: {sorted(rest)}")
        h, key_bias = self._prefix_tokens(cond["text_embed"], cond.get("text_tokens"), cond.get("text_mask"),
                                          cond.get("text_drop"))
        bias = self.causal_bias[None, None, : self.prefix_len, : self.prefix_len] + key_bias[:, None, None, :]
        kv = []
        for i, block in enumerate(self.blocks):
            kv.append(torch.stack(block.attn.keys_values(block.norm1(h)), dim=1))  # (B, 2, heads, P, d)
            if i < len(self.blocks) - 1:  # the last block's output is never read: only its keys and values
                h = block(h, bias)
        return {"prefix": torch.stack(kv, dim=1), "prefix_bias": key_bias}

    def _forward_cached(self, x: Tensor, t: Tensor, prefix: Tensor, prefix_bias: Tensor) -> Tensor:
        B, P = x.shape[0], self.prefix_len
        if prefix.shape[0] != B or prefix.shape[1] != len(self.blocks) or prefix.shape[-2] != P:
            raise ValueError(f"prefix {tuple(prefix.shape)} does not match a batch of {B} for this prior "
                             f"({len(self.blocks)} layers, {P} prefix positions): use prepare_condition")
        h = self._suffix_tokens(x, t)
        n = h.shape[1]
        bias = torch.cat([prefix_bias[:, None, None, :].expand(B, 1, n, P),
                          self.causal_bias[None, None, P:, P:].expand(B, 1, n, n)], dim=-1)  # (B, 1, n, P + n)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            past = (prefix[:, i, 0], prefix[:, i, 1])
            h = block(h, bias[:, :, -1:] if i == last else bias, past, last_only=i == last)
        return self.proj_out(self.norm_out(h)[:, -1])

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        *,
        text_embed: Tensor | None = None,
        text_tokens: Tensor | None = None,
        text_mask: Tensor | None = None,
        text_drop: Tensor | None = None,
        prefix: Tensor | None = None,
        prefix_bias: Tensor | None = None,
    ) -> Tensor:
        """x: (B, embed_dim) noised image embedding; t: (B,) in [0, 1000). Returns (B, embed_dim).

        text_embed: (B, embed_dim); text_tokens: (B, L <= text_context, text_width), needed
        when text_context > 0 (ignored otherwise); text_mask: (B, L) bool, True = real token;
        text_drop: (B,) bool, True = use the learned null text instead. Or, in place of the four,
        `prefix` and `prefix_bias` from `prepare_condition` (what samplers pass: the same result
        for a fraction of the work).
        """
        if prefix is not None:
            if prefix_bias is None or any(v is not None for v in (text_embed, text_tokens, text_mask, text_drop)):
                raise ValueError("pass either the text inputs or prefix and prefix_bias (prepare_condition), not both")
            return self._forward_cached(x, t, prefix, prefix_bias)
        if text_embed is None:
            raise ValueError("the prior needs text_embed (or a prepared prefix)")
        h = self.encode_sequence(
            x, t, text_embed=text_embed, text_tokens=text_tokens, text_mask=text_mask, text_drop=text_drop
        )
        return self.proj_out(h[:, -1])
