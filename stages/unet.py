"""The UNet family of the decoder and the super-resolution stages (guided-diffusion / GLIDE layout).

One generic `UNet` built from a `UNetConfig`: residual blocks conditioned on an embedding
vector (scale-shift norm or additive), BigGAN-style resampling residual blocks, attention
blocks whose keys and values can be extended with context tokens (GLIDE's `encoder_kv`),
optional pixel-(un)shuffle patching. Module layout mirrors diffusers' UNet2DConditionModel /
UNet2DModel block for block (down levels of `num_res_blocks` blocks plus a downsampling
block, a middle block, up levels of `num_res_blocks + 1` blocks plus an upsampling block),
so a diffusers or guided-diffusion checkpoint maps onto it by renaming keys.

The efficient layout (the idea of Imagen's Efficient U-Net, Saharia et al. 2022, appendix:
weights moved from the high-resolution levels to the low ones, convolutions done before
upsampling) is two options: per-level `num_res_blocks` (0 at the top level leaves it the input
convolution and one up block) and `subpixel_upsample`. The shipped SR stages use it (session 16).
`norm_free_levels` leaves the highest-resolution levels without norm layers (EDSR, Lim et al. 2017:
super-resolution networks do without them); the shipped SR-256 has none at its top level (session 20).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .common import (ChannelLayerNorm, EmbeddingLinear, TimestepMLP, attention, key_padding_bias, make_norm,
                     zero_module)


@dataclass(frozen=True)
class UNetConfig:
    """Fields shared by every UNet stage (the decoder and SR configs extend it)."""

    in_channels: int = 3  # channels of the noised image x
    out_channels: int = 3  # 6 = prediction + learned variance (GLIDE / Karlo); samplers use the first 3
    image_size: int = 64  # nominal input size; only places `attention_resolutions`
    patch_size: int = 1  # pixel-unshuffle the input by this factor (and shuffle the output back)
    model_channels: int = 192  # width of the first level
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)  # width of each level, in units of model_channels
    num_res_blocks: int | tuple[int, ...] = 3  # blocks per down level (or per level); up levels: one more
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # feature-map sizes (at image_size) with attention
    mid_attention: bool = True  # attention in the middle block
    head_dim: int = 64  # channels per attention head
    emb_mult: int = 4  # embedding width = emb_mult * model_channels
    norm: Literal["group", "layer"] = "group"  # GroupNorm (GLIDE, Karlo) or per-pixel LayerNorm (fast on CPU)
    norm_groups: int = 32
    norm_eps: float = 1e-5
    norm_free_levels: int = 0  # the first N levels (the highest resolutions) without norm layers (EDSR-style)
    scale_shift_norm: bool = True  # AdaGN: norm(h) * (1 + scale) + shift; False: h + emb before the norm
    resblock_updown: bool = True  # BigGAN-style resampling residual blocks; False: strided / upsampling convs
    subpixel_upsample: bool = False  # upsample by a 3x3 conv at the low resolution + pixel shuffle (see SubpixelUpsample)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not self.channel_mult:
            raise ValueError("channel_mult must name at least one level")
        if self.patch_size < 1 or self.model_channels < 1:
            raise ValueError("patch_size and model_channels must be positive")
        if isinstance(self.num_res_blocks, tuple) and len(self.num_res_blocks) != len(self.channel_mult):
            raise ValueError(f"num_res_blocks names {len(self.num_res_blocks)} levels, channel_mult "
                             f"{len(self.channel_mult)}")
        counts = [self.blocks(level) for level in range(len(self.channel_mult))]
        if min(counts) < 0 or max(counts) < 1:
            raise ValueError(f"num_res_blocks {self.num_res_blocks}: counts must be >= 0, one at least positive")
        if len(counts) > 1 and counts[-1] == 0 and self.channel_mult[-1] != self.channel_mult[-2]:
            raise ValueError(f"num_res_blocks {self.num_res_blocks}: the last level changes the width "
                             f"({self.channel_mult[-2]} -> {self.channel_mult[-1]}), so it needs a block")
        if not 0 <= self.norm_free_levels <= len(self.channel_mult):
            raise ValueError(f"norm_free_levels {self.norm_free_levels} must be between 0 and the "
                             f"{len(self.channel_mult)} levels")
        for mult in self.channel_mult:
            ch = mult * self.model_channels
            if self.attention_resolutions or self.mid_attention:
                if ch % self.head_dim:
                    raise ValueError(f"level width {ch} is not divisible by head_dim {self.head_dim}")
            if self.norm == "group" and ch % self.norm_groups:
                raise ValueError(f"level width {ch} is not divisible by norm_groups {self.norm_groups}")

    def blocks(self, level: int) -> int:
        """Residual blocks of down level `level` (its up level has one more)."""
        n = self.num_res_blocks
        return n[level] if isinstance(n, tuple) else n

    @property
    def emb_dim(self) -> int:
        return self.emb_mult * self.model_channels

    @property
    def downsampling_factor(self) -> int:
        """H and W of an input must be multiples of this."""
        return self.patch_size * 2 ** (len(self.channel_mult) - 1)

    def level_norm(self, level: int) -> str:
        """The norm kind of the blocks at `level`: "none" for the first `norm_free_levels` levels."""
        return "none" if level < self.norm_free_levels else self.norm

    def level_resolution(self, level: int) -> int:
        return self.image_size // (self.patch_size * 2**level)


class Downsample(nn.Module):
    """Strided 3x3 convolution (guided-diffusion `Downsample(use_conv=True)`)."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x then 3x3 convolution (guided-diffusion `Upsample(use_conv=True)`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SubpixelUpsample(nn.Module):
    """3x3 convolution at the low resolution to 4x the channels, then pixel shuffle (Shi et al. 2016).

    The upsampling block of a `subpixel_upsample` UNet: it outputs the next (higher-resolution)
    level's width. Against the BigGAN upsampling ResBlock (two 3x3 convolutions at the high
    resolution) it has about as many weights when that width is half the level's, and a quarter
    of the multiply-adds. Imagen's Efficient U-Net likewise convolves before it upsamples.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4 * out_channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


class ResBlock(nn.Module):
    """Residual block conditioned on an embedding (Improved DDPM / guided-diffusion `ResBlock`).

    h = conv1(resample(SiLU(norm1(x)))); then with scale-shift norm (AdaGN, Dhariwal & Nichol
    §3.1) h = norm2(h) * (1 + scale) + shift, else h = norm2(h + proj(emb)); out = skip(
    resample(x)) + conv2(dropout(SiLU(h))). `resample` "down" = 2x2 average pooling and "up" =
    nearest 2x, applied to both branches (BigGAN-style resampling, §3 of the same paper).
    Same as diffusers' ResnetBlock2D with time_embedding_norm "scale_shift" / "default".
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        config: UNetConfig,
        resample: Literal["none", "down", "up"] = "none",
        norm: str | None = None,
    ):
        super().__init__()
        c = config
        norm = norm or c.norm
        self.resample = resample
        self.scale_shift = c.scale_shift_norm
        self.norm1 = make_norm(norm, in_channels, c.norm_groups, c.norm_eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = EmbeddingLinear(emb_dim, 2 * out_channels if c.scale_shift_norm else out_channels)
        self.norm2 = make_norm(norm, out_channels, c.norm_groups, c.norm_eps)
        self.dropout = nn.Dropout(c.dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        # Without autograd the activations are updated in place and the modulation is fused into
        # the norm (fewer passes over the feature map, which dominate at high resolution); the
        # result is the same up to bf16 rounding order.
        fast = not torch.is_grad_enabled()
        h = F.silu(self.norm1(x), inplace=fast and not isinstance(self.norm1, nn.Identity))  # x itself is kept
        h = self._resample(h)
        x = self._resample(x)
        e = self.emb_proj(F.silu(emb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            if fast and h.shape[0] == 1 and isinstance(self.norm2, nn.Identity):
                h = _modulated_conv(self.conv1, h, scale, shift)
            elif fast:
                h = _modulated_norm(self.norm2, self.conv1(h), scale, shift)
            else:
                h = self.norm2(self.conv1(h)) * (1 + scale) + shift
        else:
            h = self.norm2(self.conv1(h) + e)
        h = self.conv2(self.dropout(F.silu(h, inplace=fast)))
        if self.skip is not None:
            x = self.skip(x)
        return h.add_(x) if fast and h.dtype == x.dtype else x + h  # add_ cannot promote a bf16 h


def _modulated_norm(norm: nn.Module, h: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """norm(h) * (1 + scale) + shift in one pass where possible (inference only).

    With one sample, scale and shift fold into the norm's own per-channel affine (weight * (1 +
    scale), bias * (1 + scale) + shift) of a per-pixel LayerNorm or a GroupNorm; otherwise one
    fused multiply-add.
    """
    if h.shape[0] == 1 and isinstance(norm, (ChannelLayerNorm, nn.GroupNorm)) and norm.weight is not None:
        s = 1 + scale.reshape(-1).to(norm.weight.dtype)
        weight = norm.weight * s
        bias = torch.addcmul(shift.reshape(-1).to(norm.bias.dtype), norm.bias, s)
        if isinstance(norm, nn.GroupNorm):
            return F.group_norm(h, norm.num_groups, weight, bias, norm.eps)
        return norm(h, weight, bias)
    return torch.addcmul(shift, norm(h), 1 + scale)


def _modulated_conv(conv: nn.Conv2d, h: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """conv(h) * (1 + scale) + shift for one sample, as one convolution (inference, no norm between):
    the per-output-channel scale folds into the kernel and the bias, which saves a pass over the map."""
    s = 1 + scale.reshape(-1).float()
    weight = conv.weight.float() * s[:, None, None, None]
    bias = torch.addcmul(shift.reshape(-1).float(), conv.bias.float(), s)
    if not torch.is_autocast_enabled(h.device.type):  # (under autocast the convolution casts them)
        weight, bias = weight.to(h.dtype), bias.to(h.dtype)
    if h.is_contiguous(memory_format=torch.channels_last):
        weight = weight.contiguous(memory_format=torch.channels_last)
    return F.conv2d(h, weight, bias, conv.stride, conv.padding)


class AttentionBlock(nn.Module):
    """Spatial self-attention whose keys/values are extended by context tokens (GLIDE §2, `encoder_kv`).

    q = W_q norm(x); keys and values are [W_ck ctx, W_k norm(x)] and [W_cv ctx, W_v norm(x)]
    (context first), so every pixel attends to the text / image tokens and to all pixels in
    one softmax; out = x + W_o attention. Same as diffusers' Attention with
    AttnAddedKVProcessor (Karlo's SimpleCrossAttn blocks). `context_mask` (B, Lc) bool hides
    context tokens (True = visible); pixels are always visible.
    """

    def __init__(self, channels: int, config: UNetConfig, context_dim: int | None = None):
        super().__init__()
        c = config
        self.heads = channels // c.head_dim
        self.norm = make_norm(c.norm, channels, c.norm_groups, c.norm_eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        if context_dim is not None:
            self.context_k = nn.Linear(context_dim, channels)
            self.context_v = nn.Linear(context_dim, channels)
        else:
            self.context_k = self.context_v = None
        self.to_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        h = self.heads
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C); free for channels-last x

        def split(y: Tensor) -> Tensor:
            return y.view(B, -1, h, C // h).transpose(1, 2)  # (B, h, S, d)

        q, k, v = split(self.to_q(tokens)), split(self.to_k(tokens)), split(self.to_v(tokens))
        bias = None
        if context is not None and self.context_k is not None:
            k = torch.cat([split(self.context_k(context)), k], dim=2)
            v = torch.cat([split(self.context_v(context)), v], dim=2)
            if context_mask is not None:
                bias = F.pad(key_padding_bias(context_mask), (0, H * W))[:, None, None, :]  # (B, 1, 1, Lc+HW)
        out = attention(q, k, v, bias).transpose(1, 2).reshape(B, H * W, C)
        out = self.to_out(out).transpose(1, 2).reshape(B, C, H, W)
        return x + out


class DownLevel(nn.Module):
    """num_res_blocks x (ResBlock [+ attention]), then an optional downsampling block."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, config: UNetConfig, attn: bool,
                 context_dim: int | None, downsample: bool, blocks: int, norm: str | None = None):
        super().__init__()
        self.res = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, emb_dim, config, norm=norm) for i in range(blocks)
        )
        self.attn = nn.ModuleList(AttentionBlock(out_ch, config, context_dim) for _ in range(blocks if attn else 0))
        self.downsample = None
        if downsample:  # a level without blocks changes the width here
            ds_in = out_ch if blocks else in_ch
            self.downsample = (
                ResBlock(ds_in, out_ch, emb_dim, config, resample="down", norm=norm) if config.resblock_updown
                else Downsample(ds_in, out_ch)
            )


class UpLevel(nn.Module):
    """(num_res_blocks + 1) x (concat skip, ResBlock [+ attention]), then an optional upsampling block."""

    def __init__(self, in_ch: int, out_ch: int, skip_chs: list[int], emb_dim: int, config: UNetConfig,
                 attn: bool, context_dim: int | None, upsample_to: int | None, norm: str | None = None):
        super().__init__()
        self.res = nn.ModuleList(
            ResBlock((in_ch if i == 0 else out_ch) + skip, out_ch, emb_dim, config, norm=norm)
            for i, skip in enumerate(skip_chs)
        )
        self.attn = nn.ModuleList(AttentionBlock(out_ch, config, context_dim) for _ in (skip_chs if attn else ()))
        self.upsample: nn.Module | None = None
        if upsample_to is not None and config.subpixel_upsample:
            self.upsample = SubpixelUpsample(out_ch, upsample_to)
        elif upsample_to is not None:
            self.upsample = (
                ResBlock(out_ch, out_ch, emb_dim, config, resample="up", norm=norm) if config.resblock_updown
                else Upsample(out_ch)
            )


class MidBlock(nn.Module):
    """ResBlock, [attention], ResBlock."""

    def __init__(self, ch: int, emb_dim: int, config: UNetConfig, context_dim: int | None):
        super().__init__()
        norm = config.level_norm(len(config.channel_mult) - 1)
        self.res1 = ResBlock(ch, ch, emb_dim, config, norm=norm)
        self.attn = AttentionBlock(ch, config, context_dim) if config.mid_attention else None
        self.res2 = ResBlock(ch, ch, emb_dim, config, norm=norm)


class UNet(nn.Module):
    """The generic UNet of Improved DDPM / ADM (Dhariwal & Nichol §3) as extended by GLIDE.

    `forward(x, t, emb=..., context=..., context_mask=...)`: x (B, input_channels, H, W);
    t (B,) timesteps; `emb` (B, emb_dim) is added to the timestep embedding (the stage's
    conditioning vector); `context` (B, Lc, context_dim) are the tokens attention blocks see.
    Returns (B, out_channels, H, W).
    """

    def __init__(self, config: UNetConfig, input_channels: int, context_dim: int | None = None):
        super().__init__()
        self.config = c = config
        p = c.patch_size
        emb_dim = c.emb_dim
        chs = [m * c.model_channels for m in c.channel_mult]
        n_levels = len(chs)
        self.time_embed = TimestepMLP(c.model_channels, emb_dim, emb_dim)
        self.conv_in = nn.Conv2d(input_channels * p * p, chs[0], 3, padding=1)

        skip_chs = [chs[0]]
        self.down = nn.ModuleList()
        for level, ch in enumerate(chs):
            in_ch = chs[level - 1] if level else chs[0]
            last = level == n_levels - 1
            attn = c.level_resolution(level) in c.attention_resolutions
            self.down.append(DownLevel(in_ch, ch, emb_dim, c, attn, context_dim, downsample=not last,
                                       blocks=c.blocks(level), norm=c.level_norm(level)))
            skip_chs += [ch] * (c.blocks(level) + (0 if last else 1))

        self.mid = MidBlock(chs[-1], emb_dim, c, context_dim)

        self.up = nn.ModuleList()
        prev = chs[-1]
        for level in reversed(range(n_levels)):
            ch = chs[level]
            level_skips = [skip_chs.pop() for _ in range(c.blocks(level) + 1)]
            attn = c.level_resolution(level) in c.attention_resolutions
            up_to = None if level == 0 else chs[level - 1] if c.subpixel_upsample else ch
            self.up.append(UpLevel(prev, ch, level_skips, emb_dim, c, attn, context_dim, upsample_to=up_to,
                                   norm=c.level_norm(level)))
            prev = ch if up_to is None else up_to

        self.norm_out = make_norm(c.level_norm(0), chs[0], c.norm_groups, c.norm_eps)
        self.conv_out = zero_module(nn.Conv2d(chs[0], c.out_channels * p * p, 3, padding=1))

    def _patch_conv_in(self, x: Tensor) -> Tensor:
        """conv_in(pixel_unshuffle(x, p)). Without autograd as one convolution of x with stride p: a 3x3
        kernel over p x p patches is a 3p x 3p kernel at stride p over pixels (padding p), so the
        unshuffled copy of x is never made (the same sums in another order)."""
        p = self.config.patch_size
        if p == 1:
            return self.conv_in(x)
        if torch.is_grad_enabled():
            return self.conv_in(F.pixel_unshuffle(x, p))
        w = rearrange(self.conv_in.weight, "o (c i j) kh kw -> o c (kh i) (kw j)", i=p, j=p)
        if x.is_contiguous(memory_format=torch.channels_last):
            w = w.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, w, self.conv_in.bias, stride=p, padding=p)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        emb: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        c = self.config
        B, _, H, W = x.shape
        f = c.downsampling_factor
        if H % f or W % f:
            raise ValueError(f"input size {H}x{W} is not a multiple of the UNet's downsampling factor {f}")
        if t.dim() == 0:
            t = t.expand(B)
        time_emb = self.time_embed(t)
        emb = time_emb if emb is None else time_emb + emb

        h = self._patch_conv_in(x)
        skips = [h]
        for level in self.down:
            for i, res in enumerate(level.res):
                h = res(h, emb)
                if len(level.attn):
                    h = level.attn[i](h, context, context_mask)
                skips.append(h)
            if level.downsample is not None:
                h = level.downsample(h, emb)
                skips.append(h)

        h = self.mid.res1(h, emb)
        if self.mid.attn is not None:
            h = self.mid.attn(h, context, context_mask)
        h = self.mid.res2(h, emb)

        for level in self.up:
            for i, res in enumerate(level.res):
                h = res(torch.cat([h, skips.pop()], dim=1), emb)
                if len(level.attn):
                    h = level.attn[i](h, context, context_mask)
            if level.upsample is not None:
                h = level.upsample(h, emb)

        h = self.conv_out(F.silu(self.norm_out(h), inplace=not torch.is_grad_enabled()))
        return F.pixel_shuffle(h, c.patch_size) if c.patch_size > 1 else h
