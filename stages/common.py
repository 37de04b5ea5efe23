"""Blocks shared by every stage: timestep embeddings, norms, attention, transformer blocks.

The numerics mirror the reference implementations cascade can import weights from
(guided-diffusion / GLIDE, and diffusers' PriorTransformer, UNet2DConditionModel and
UNet2DModel as used by Karlo), so that a converted checkpoint reproduces them:
sinusoidal embeddings with cosines first, additive -10000 attention biases, GroupNorm with
eps 1e-5, pre-LN transformer blocks with exact GELU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Added to attention logits of keys a query may not see (as diffusers and Karlo do). A finite
# value, not -inf: a query whose every key is masked (a padding token in the prior's causal
# sequence) then gets a harmless average instead of NaN, and exp(-10000) is exactly 0 in
# float32, bfloat16 and float16, so masked keys contribute nothing to any other query.
MASK_BIAS = -10000.0

_ATTENTION_IMPL = "sdpa"


def set_attention_implementation(name: str) -> None:
    """Choose how attention is computed: "sdpa" (torch's fused kernel, the default) or "matmul".

    "matmul" is plain softmax(q k^T / sqrt(d)) v; on some CPUs its backward pass is faster than
    the fused kernel's. Both give the same result up to rounding. Not part of any config: it is
    a property of the machine, not of the model.
    """
    global _ATTENTION_IMPL
    if name not in ("sdpa", "matmul"):
        raise ValueError(f"attention implementation must be 'sdpa' or 'matmul', got {name!r}")
    _ATTENTION_IMPL = name


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, dropout: float = 0.0) -> Tensor:
    """Multi-head attention on (B, heads, S, head_dim) tensors; `bias` is added to the logits."""
    if bias is not None:
        bias = bias.to(q.dtype)
    if _ATTENTION_IMPL == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
    logits = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if bias is not None:
        logits = logits + bias
    weights = logits.float().softmax(dim=-1).to(q.dtype)
    if dropout > 0.0:
        weights = F.dropout(weights, dropout)
    return torch.matmul(weights, v)


def key_padding_bias(mask: Tensor) -> Tensor:
    """(B, L) bool mask, True = visible, to a (B, L) float additive bias (0 or MASK_BIAS)."""
    return (~mask).float() * MASK_BIAS


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (B,) timesteps on the [0, 1000) scale, cosines first (DDPM §3.2, Transformer §3.5).

    Equal to guided-diffusion's `timestep_embedding` and to diffusers' `Timesteps(dim,
    flip_sin_to_cos=True, downscale_freq_shift=0)`. Computed in float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class EmbeddingLinear(nn.Linear):
    """A Linear applied to a few rows (per-sample embeddings: time, conditioning, AdaGN scale-shift).

    On a CPU without autograd it computes in fp32 outside autocast, with its weights kept in fp32
    while `cascade.hardware.bf16_weights` holds the others in bf16 (`hold_fp32`): oneDNN's bf16
    path costs ~45 us per call for one row against ~8 us in fp32 (session 20), and a UNet
    evaluation makes one such call per residual block. The output has the dtype autocast would
    give it; the product is more precise than the bf16 one, not bit for bit equal. Same
    parameters as nn.Linear: checkpoints are unchanged.
    """

    hold_fp32 = True

    def forward(self, x: Tensor) -> Tensor:
        if (x.device.type != "cpu" or torch.is_grad_enabled() or self.weight.dtype != torch.float32
                or x.numel() > 64 * x.shape[-1]):
            return super().forward(x)
        out_dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        with torch.autocast("cpu", enabled=False):
            return super().forward(x.float()).to(out_dtype)


class TimestepMLP(nn.Module):
    """sinusoid(t) -> Linear -> SiLU -> Linear: the time embedding of guided-diffusion and diffusers."""

    def __init__(self, sinusoid_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.sinusoid_dim = sinusoid_dim
        self.fc1 = EmbeddingLinear(sinusoid_dim, hidden_dim)
        self.fc2 = EmbeddingLinear(hidden_dim, out_dim)

    def forward(self, t: Tensor) -> Tensor:
        emb = timestep_embedding(t, self.sinusoid_dim).to(self.fc1.weight.dtype)
        return self.fc2(F.silu(self.fc1(emb)))


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel of a (B, C, H, W) map.

    Much cheaper than GroupNorm on a CPU; with channels-last tensors the permutes are free.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """`weight` and `bias` (C,) replace the module's own affine when given."""
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        weight = self.weight if weight is None else weight
        bias = self.bias if bias is None else bias
        x = F.layer_norm(x, x.shape[-1:], weight, bias, self.eps)
        return x.permute(0, 3, 1, 2)


def make_norm(kind: str, channels: int, groups: int, eps: float) -> nn.Module:
    """The normalisation of a UNet: "group" (GroupNorm, as GLIDE/Karlo), "layer" (per-pixel) or "none"
    (identity: a `norm_free_levels` level, as EDSR's normalisation-free super-resolution blocks)."""
    if kind == "none":
        return nn.Identity()
    if kind == "group":
        if channels % groups:
            raise ValueError(f"GroupNorm: {channels} channels are not divisible by {groups} groups")
        return nn.GroupNorm(groups, channels, eps=eps)
    if kind == "layer":
        return ChannelLayerNorm(channels, eps=eps)
    raise ValueError(f"unknown norm {kind!r} (expected 'group' or 'layer')")


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters (guided-diffusion's init of residual branches' last layers)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class SelfAttention(nn.Module):
    """Multi-head self-attention over a (B, S, W) sequence with biased q/k/v/out projections."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"attention width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.to_q = nn.Linear(width, width)
        self.to_k = nn.Linear(width, width)
        self.to_v = nn.Linear(width, width)
        self.to_out = nn.Linear(width, width)

    def _split(self, y: Tensor) -> Tensor:
        B, S, W = y.shape
        return y.view(B, S, self.heads, W // self.heads).transpose(1, 2)  # (B, heads, S, d)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The keys and values of x's positions, (B, heads, S, head_dim) each."""
        return self._split(self.to_k(x)), self._split(self.to_v(x))

    def forward(self, x: Tensor, bias: Tensor | None = None, past: tuple[Tensor, Tensor] | None = None,
                last_only: bool = False) -> Tensor:
        """x (B, S, W). `past`: the keys and values of earlier positions x's positions also attend to
        (a cached prefix, `keys_values`), put before x's own; `bias` then covers both. `last_only`:
        only the last position's output, (B, 1, W)."""
        B, S, W = x.shape
        q = self._split(self.to_q(x[:, -1:] if last_only else x))
        k, v = self.keys_values(x)
        if past is not None:
            k = torch.cat([past[0].to(k.dtype), k], dim=2)
            v = torch.cat([past[1].to(v.dtype), v], dim=2)
        out = attention(q, k, v, bias, self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, q.shape[2], W)
        return F.dropout(self.to_out(out), self.dropout, self.training)


class MLP(nn.Module):
    """Linear -> GELU (exact) -> dropout -> Linear, 4x wide."""

    def __init__(self, width: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(width, width * mult)
        self.fc2 = nn.Linear(width * mult, width)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        x = F.dropout(F.gelu(self.fc1(x)), self.dropout, self.training)
        return self.fc2(x)


class TransformerBlock(nn.Module):
    """Pre-LN transformer block: x + attn(norm1(x)); x + mlp(norm2(x)) (GPT-2 §2.3 layout).

    Same computation as diffusers' BasicTransformerBlock (self-attention only, attention_bias
    =True, activation "gelu") and GLIDE's text transformer block.
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, dropout=dropout)

    def forward(self, x: Tensor, bias: Tensor | None = None, past: tuple[Tensor, Tensor] | None = None,
                last_only: bool = False) -> Tensor:
        """`past` and `last_only` as in SelfAttention (with `last_only` the output is (B, 1, W))."""
        h = self.attn(self.norm1(x), bias, past, last_only)
        x = (x[:, -1:] if last_only else x) + h
        return x + self.mlp(self.norm2(x))


def select(drop: Tensor | None, null: Tensor, value: Tensor) -> Tensor:
    """Per-sample choice: `null` (broadcast) where `drop` is True, `value` elsewhere.

    drop: (B,) bool or None; value: (B, ...); null: (...) broadcastable to one row of value.
    """
    if drop is None:
        return value
    drop = drop.to(device=value.device, dtype=torch.bool).view(-1, *([1] * (value.dim() - 1)))
    return torch.where(drop, null.to(value.dtype), value)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())
