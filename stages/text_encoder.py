"""The decoder's own text transformer (GLIDE §2 / DALL-E 2 §2.1), trained with the decoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .common import TransformerBlock


class TextTransformer(nn.Module):
    """GLIDE's text encoder: token + positional embeddings, pre-LN blocks, a final LayerNorm.

    Positions where `mask` is False (padding) take a learned per-position padding embedding
    instead of their token embedding (GLIDE's `xf_padding`); attention is unmasked, so every
    position sees every other. An all-False mask is the empty caption, which is how GLIDE
    (and cascade's decoder) represents dropped text. Returns (B, context, width) states; the
    decoder pools the last position (GLIDE's `xf_out[:, -1]`).
    """

    def __init__(self, vocab_size: int, context: int, width: int, layers: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.context = context
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.01)
        self.padding_embedding = nn.Parameter(torch.randn(context, width) * 0.01)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, dropout) for _ in range(layers))
        self.final_norm = nn.LayerNorm(width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids: (B, L) long token ids, L <= context (shorter inputs are padded); mask: (B, L) bool."""
        B, L = ids.shape
        if L > self.context:
            raise ValueError(f"text_ids has {L} positions, the text transformer takes at most {self.context}")
        if L < self.context:
            ids = nn.functional.pad(ids, (0, self.context - L))
            mask = nn.functional.pad(mask, (0, self.context - L), value=False)
        x = self.token_embedding(ids) + self.positional_embedding  # (B, ctx, W)
        x = torch.where(mask[..., None], x, self.padding_embedding.to(x.dtype))
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)
