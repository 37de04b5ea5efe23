"""The timing harness of `cascade bench`, and the peers' side of it.

This file imports only torch (and, inside the peer builders, diffusers and dalle2_pytorch): it
is imported by `cascade.bench` in cascade's environment and also run as a script, by path,
with the peers' virtual environment's python (`python -I bench_worker.py`), where it serves
JSON-lines requests on stdin: build the peers' networks at a size, time one round of one,
count FLOPs, time a training step. The peers are never imported into cascade's environment.

Every network of every implementation is timed through the same `Runner`: the same inputs
(seeded), the same thread count, the same settings per mode (inference_mode always;
channels-last tensors for the UNets in the "_cl" modes; bf16 autocast in "bf16_cl", with the
convolution and linear weights held in bf16 across a timed sample's calls, as cascade's pipeline
holds them across a stage's sampling steps: `cascade.hardware.bf16_autocast`, for every
implementation alike; before session 20 they were cast at every call, which added a fixed
~1-2 ms to every evaluation of every implementation).
Peers that cannot patchify take pixel-unshuffled inputs (and shuffle their output back)
inside the timed call, so that they run at the same internal resolution as cascade.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    from .hardware import bf16_autocast, bf16_held
except ImportError:  # run by path in the peers' environment: the sibling file (it needs only torch)
    import os

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from hardware import bf16_autocast, bf16_held

MODES = ("fp32", "fp32_cl", "bf16_cl")  # fp32 NCHW is the plain baseline; the pipeline runs channels-last
PRIOR_MODES = ("fp32", "bf16_cl")  # no convolutions: channels-last means nothing to the prior
COMPILED = "+compile"  # a mode with this suffix runs the call through torch.compile (`cascade bench --compile`)
DTYPE_OF_MODE = {"fp32": "fp32", "fp32_cl": "fp32", "bf16_cl": "bf16",
                 "fp32_cl" + COMPILED: "fp32", "bf16_cl" + COMPILED: "bf16"}


def modes_for(kind: str, bf16: bool = True, compiled: bool = False) -> tuple[str, ...]:
    """The modes timed: the bf16 ones only with `bf16` (where the CPU has it natively; nobody runs them
    elsewhere); with `compiled`, also the fastest precision's channels-last mode under torch.compile."""
    modes = PRIOR_MODES if kind == "prior" else MODES
    if compiled:
        modes += (("bf16_cl" if bf16 else "fp32_cl") + COMPILED,)
    return modes if bf16 else tuple(m for m in modes if DTYPE_OF_MODE[m] != "bf16")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------- inputs
def make_inputs(kind: str, cfg: dict[str, Any], batch: int, seed: int = 0) -> dict[str, Tensor]:
    """Seeded inputs of cascade's shapes for a network of `kind` with cascade config `cfg`."""
    g = torch.Generator().manual_seed(seed)
    B = batch
    t = torch.rand(B, generator=g) * 999.0
    if kind == "prior":
        E, L, W = cfg["embed_dim"], cfg["text_context"], cfg["text_width"]
        return {"x": torch.randn(B, E, generator=g), "t": t, "text_embed": torch.randn(B, E, generator=g),
                "text_tokens": torch.randn(B, L, W, generator=g), "text_mask": _text_mask(B, L)}
    if kind == "decoder":
        S, E, L, W = cfg["image_size"], cfg["embed_dim"], cfg["text_context"], cfg["text_width"]
        return {"x": torch.randn(B, 3, S, S, generator=g), "t": t, "image_embed": torch.randn(B, E, generator=g),
                "text_embed": torch.randn(B, E, generator=g), "text_tokens": torch.randn(B, L, W, generator=g),
                "text_mask": _text_mask(B, L)}
    if kind == "sr":
        S = cfg["image_size"]
        return {"x": torch.randn(B, 3, S, S, generator=g), "t": t,
                "lowres": torch.randn(B, 3, S, S, generator=g).clamp(-1, 1), "aug_level": torch.full((B,), 0.05)}
    raise ValueError(f"unknown network kind {kind!r}")


def _text_mask(B: int, L: int) -> Tensor:
    """A caption of ~L/2 real tokens, the rest padding (ShapeWorld captions are short)."""
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[:, : max(1, L // 2)] = True
    return mask


# ---------------------------------------------------------------------------- the harness
class Runner:
    """One network of one implementation, callable once per evaluation in a given mode."""

    def __init__(self, module: nn.Module, call: Callable[[dict[str, Tensor]], Tensor], inputs: dict[str, Tensor],
                 evaluations: int = 1, prepack: bool = False):
        self.module = module.eval()
        self.prepack = prepack  # oneDNN-prepacked weights in the bf16 modes (cascade's, as its pipeline runs)
        self.call = call
        self.inputs = inputs
        self.evaluations = evaluations  # network evaluations one call makes (its times and FLOPs are divided by it)
        self.repeat: dict[str, int] = {}  # calls per timed sample, per mode (short calls are grouped)
        self.config: dict[str, Any] = {}  # the constructor arguments (peers)
        self._mode = None
        self._compiled: dict[str, Callable[[dict[str, Tensor]], Tensor]] = {}  # per mode: its own graphs

    def set_mode(self, mode: str) -> None:
        if mode == self._mode:
            return
        cl = "_cl" in mode
        self.module.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        self._inputs = {
            k: (v.contiguous(memory_format=torch.channels_last) if cl and v.dim() == 4 else v.contiguous())
            for k, v in self.inputs.items()
        }
        self._mode = mode

    def run(self, mode: str) -> Tensor:
        self.set_mode(mode)
        call = self.call
        if mode.endswith(COMPILED):  # wrapped once; it compiles on its first call (the warm-up), fixed shapes
            if mode not in self._compiled:
                self._compiled[mode] = torch.compile(self.call, dynamic=False)
            call = self._compiled[mode]
        # the weights held in bf16 for the call, as the pipeline holds them
        with torch.inference_mode(), bf16_autocast("cpu", self.module, mode.startswith("bf16"),
                                                   not mode.endswith(COMPILED), prepack=self.prepack):
            return call(self._inputs)

    def warmup(self, mode: str, min_seconds: float = 0.05) -> float:
        """Two untimed calls; fixes how many calls one timed sample groups. Returns ms per call."""
        self.run(mode)
        with self._held_weights(mode):
            t0 = time.perf_counter()
            self.run(mode)
            dt = time.perf_counter() - t0
        self.repeat[mode] = max(1, min(50, math.ceil(min_seconds / max(dt, 1e-6))))
        return dt * 1e3 / self.evaluations

    def time_once(self, mode: str) -> float:
        """ms per evaluation over one timed sample (of `repeat` calls)."""
        if mode not in self.repeat:
            self.warmup(mode)
        n = self.repeat[mode]
        self.set_mode(mode)
        with self._held_weights(mode):
            t0 = time.perf_counter()
            for _ in range(n):
                self.run(mode)
            return (time.perf_counter() - t0) * 1e3 / (n * self.evaluations)

    def _held_weights(self, mode: str):
        """The bf16 modes' weights held in bf16 (and, with `prepack`, prepacked) across several calls
        (each call's own `bf16_autocast` then finds nothing left to do), as the pipeline holds them
        across a stage's steps; compiled modes keep theirs (their graphs were traced with fp32 weights)."""
        return bf16_held(self.module, enabled=mode.startswith("bf16") and not mode.endswith(COMPILED),
                         prepack=self.prepack)

    def flops(self, mode: str = "fp32") -> int:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            self.run(mode)
        return int(counter.get_total_flops()) // self.evaluations


def _matmul_gflops(a: Tensor, b: Tensor) -> float:
    """GFLOP/s of one timed product of the square matrices `a` @ `b`."""
    t0 = time.perf_counter()
    torch.matmul(a, b)
    return 2 * a.shape[0] ** 3 / (time.perf_counter() - t0) / 1e9


def matmul_peak(threads: int, n: int = 2048, repeats: int = 5, bf16: bool = True) -> dict[str, float]:
    """This CPU's measured matmul peak, GFLOP/s: best of `repeats` n×n @ n×n products, fp32 and (with
    `bf16`) bf16."""
    torch.set_num_threads(threads)
    out = {}
    dtypes = (("fp32", torch.float32), ("bf16", torch.bfloat16)) if bf16 else (("fp32", torch.float32),)
    for name, dtype in dtypes:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        torch.matmul(a, b)
        out[name] = max(_matmul_gflops(a, b) for _ in range(repeats))
    return out


_PROBE_OPERANDS: dict[int, tuple[Tensor, Tensor]] = {}


def machine_probe(n: int = 2048) -> float:
    """How fast this machine runs right now: fp32 GFLOP/s of one n×n @ n×n product (~60 ms here). The
    bench takes one before its first timing round of a network and one after every round, to tell the
    rounds a shared virtual machine ran slowed from the others. fp32 because it steps most clearly: on
    session 23's AMX Xeon the slow stretches took fp32 products from 244–324 to 166–177 GFLOP/s, while
    bf16's read 670–730 in them and anywhere from 700 to 2,200 outside."""
    if n not in _PROBE_OPERANDS:
        _PROBE_OPERANDS[n] = (torch.randn(n, n), torch.randn(n, n))
    return _matmul_gflops(*_PROBE_OPERANDS[n])


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


# ---------------------------------------------------------------------------- peer configurations
def patch_of(cfg: dict[str, Any]) -> int:
    return int(cfg.get("patch_size", 1))


def diffusers_prior(cfg: dict[str, Any]) -> dict[str, Any]:
    """diffusers PriorTransformer configured like Karlo's prior at cascade's sizes.

    Its token states must be `embedding_dim` wide (cascade's are `text_width`), so it reads
    (B, L, embed_dim) token states; the sequence is the same (L text tokens + 4).
    """
    width, heads = cfg["width"], cfg["heads"]
    return dict(num_attention_heads=heads, attention_head_dim=width // heads, num_layers=cfg["layers"],
                embedding_dim=cfg["embed_dim"], num_embeddings=cfg["text_context"], additional_embeddings=4,
                dropout=0.0, time_embed_act_fn="gelu", clip_embed_dim=cfg["embed_dim"])


def dalle2_prior(cfg: dict[str, Any], ff_mult: float = 4.0) -> dict[str, Any]:
    """DALLE2-pytorch DiffusionPriorNetwork of cascade's depth, heads and width.

    Its embeddings are as wide as its transformer (`dim`): it reads width-wide inputs. Its
    feed-forward is a SwiGLU and its attention has one key/value head, so `ff_mult` is the
    knob that brings its parameter count to cascade's (`fit_peer_config`).
    """
    width, heads = cfg["width"], cfg["heads"]
    return dict(dim=width, depth=cfg["layers"], dim_head=width // heads, heads=heads, num_timesteps=None,
                max_text_len=cfg["text_context"], ff_mult=ff_mult)


def diffusers_unet(kind: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """UNet2DConditionModel (decoder) / UNet2DModel (SR) configured like Karlo's, at cascade's sizes.

    Block for block cascade's layout: the same widths, resblocks per level, attention levels,
    scale-shift norm and BigGAN resampling blocks; GroupNorm (32 groups as Karlo's, or the largest
    count that divides every width) where cascade's shapes configs use a per-pixel LayerNorm (same
    parameter count). Input and output channels are cascade's after pixel-unshuffling by its patch size.
    """
    p = patch_of(cfg)
    chs = [m * cfg["model_channels"] for m in cfg["channel_mult"]]
    levels = len(chs)
    emb_dim = cfg.get("emb_mult", 4) * cfg["model_channels"]
    res = [cfg["image_size"] // (p * 2**i) for i in range(levels)]
    groups = max(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in chs))  # Karlo's 32 where widths allow
    if kind == "decoder":
        attn = [r in cfg["attention_resolutions"] for r in res]
        down = ["SimpleCrossAttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attn]
        up = ["SimpleCrossAttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attn)]
        return dict(sample_size=cfg["image_size"] // p, in_channels=3 * p * p, out_channels=cfg.get("out_channels", 3) * p * p,
                    down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DSimpleCrossAttn",
                    block_out_channels=chs, layers_per_block=cfg["num_res_blocks"], attention_head_dim=cfg["head_dim"],
                    cross_attention_dim=cfg["context_dim"], class_embed_type="identity",
                    resnet_time_scale_shift="scale_shift", time_embedding_dim=emb_dim, norm_num_groups=groups,
                    norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0)
    return dict(sample_size=cfg["image_size"] // p, in_channels=6 * p * p, out_channels=3 * p * p,
                down_block_types=["ResnetDownsampleBlock2D"] * levels, up_block_types=["ResnetUpsampleBlock2D"] * levels,
                block_out_channels=chs, layers_per_block=cfg["num_res_blocks"], add_attention=False,
                class_embed_type="timestep", resnet_time_scale_shift="scale_shift", norm_num_groups=groups, norm_eps=1e-5,
                flip_sin_to_cos=True, freq_shift=0)


def dalle2_unet(kind: str, cfg: dict[str, Any], dim: int | None = None) -> dict[str, Any]:
    """DALLE2-pytorch Unet with cascade's levels, resblocks per level and attention levels.

    Its own block design (GroupNorm resnets with cross-attention to the conditioning tokens in
    the inner levels, a final resnet block, pixel-shuffle upsampling), a 3×3 input convolution
    as cascade's (instead of its default 3/7/15 cross-embed layer), `dim_mults` = cascade's
    channel_mult, and input and output channels cascade's after pixel-unshuffling. Its
    blocks are larger than cascade's at the same width, so the first level's width `dim` is
    the knob that brings its parameter count to cascade's (`fit_peer_config`). For SR its
    always-built middle attention is removed (see `build_peer`).
    """
    p = patch_of(cfg)
    mc = cfg["model_channels"]
    dim = dim or mc
    levels = len(cfg["channel_mult"])
    res = [cfg["image_size"] // (p * 2**i) for i in range(levels)]
    common = dict(dim=dim, dim_mults=tuple(cfg["channel_mult"]), channels=3 * p * p, channels_out=3 * p * p,
                  num_resnet_blocks=cfg["num_res_blocks"], resnet_groups=8 if dim % 8 == 0 else 4,
                  init_cross_embed=False, init_conv_kernel_size=3)
    if kind == "decoder":
        attn = tuple(r in cfg["attention_resolutions"] for r in res)
        return dict(common, image_embed_dim=cfg["embed_dim"], text_embed_dim=cfg["text_width"],
                    cond_dim=cfg["context_dim"], num_image_tokens=cfg["num_image_tokens"], self_attn=attn,
                    attn_dim_head=cfg["head_dim"], attn_heads=max(1, mc // cfg["head_dim"]),
                    cond_on_text_encodings=True, cond_on_image_embeds=True, max_text_len=cfg["text_context"])
    return dict(common, lowres_cond=True, lowres_noise_cond=True, cond_on_image_embeds=False,
                cond_on_text_encodings=False, self_attn=False)


def _meta_params(cls: type, kwargs: dict[str, Any], drop_mid_attn: bool = False) -> int:
    with torch.device("meta"):
        net = cls(**kwargs)
    if drop_mid_attn:
        net.mid_attn = None
    return count_parameters(net)


def is_uniform_layout(cfg: dict[str, Any]) -> bool:
    """Whether a cascade UNet config has the peers' layout: one block count for every level and
    BigGAN upsampling blocks (not the efficient layout's per-level counts and sub-pixel upsampling)."""
    return isinstance(cfg.get("num_res_blocks", 1), int) and not cfg.get("subpixel_upsample", False)


def uniform_layout(cfg: dict[str, Any]) -> dict[str, Any]:
    """cascade's config in the peers' (Karlo's) uniform layout: the same levels and width ratios,
    the mean block count per level (at least 1) everywhere, BigGAN resampling blocks."""
    if is_uniform_layout(cfg):
        return cfg
    counts = cfg["num_res_blocks"]
    n = counts if isinstance(counts, int) else max(1, round(sum(counts) / len(counts)))
    return dict(cfg, num_res_blocks=n, subpixel_upsample=False, resblock_updown=True)


def _fit_width(params_at: Any, start: int, target: int, step: int = 4) -> int:
    """The multiple of `step` near `start * sqrt(target / params_at(start))` whose count is closest to target."""
    guess = start * math.sqrt(target / params_at(start))
    candidates = sorted({max(2 * step, step * int(guess // step) + k * step) for k in (-1, 0, 1, 2)})
    return min(candidates, key=lambda w: abs(params_at(w) - target))


def fit_peer_config(peer: str, kind: str, cfg: dict[str, Any], target: int | None) -> dict[str, Any]:
    """The peer's constructor arguments at cascade's size; DALLE2-pytorch's knob (ff_mult for the
    prior, the base width for the UNets) set to bring its parameter count closest to `target`.

    A cascade UNet in the efficient layout (per-level block counts, sub-pixel upsampling) has no
    block-for-block counterpart in the peers: they get Karlo's uniform layout (`uniform_layout`)
    with their base width set so that their parameter count comes near cascade's (diffusers: at
    most cascade's, at a kernel-friendly width; DALLE2-pytorch: the closest)."""
    if kind != "prior":
        mirror = is_uniform_layout(cfg)
        cfg = uniform_layout(cfg)
    if peer == "diffusers":
        if kind == "prior":
            return diffusers_prior(cfg)
        if mirror or target is None:
            return diffusers_unet(kind, cfg)
        from diffusers import UNet2DConditionModel, UNet2DModel

        cls = UNet2DConditionModel if kind == "decoder" else UNet2DModel
        # The largest width that is a multiple of 8 (odd widths run the bf16 convolutions far below
        # peak: SR-256 at width 34 ran at 132 GFLOP/s, at 32 at 214) and does not exceed cascade's count: the
        # peer is never the larger network.
        def params(w: int) -> int:
            return _meta_params(cls, diffusers_unet(kind, dict(cfg, model_channels=w)))

        width = 8
        for w in range(16, 4 * cfg["model_channels"] + 1, 8):  # the count grows with the width: stop past it
            if params(w) > target:
                break
            width = w
        return diffusers_unet(kind, dict(cfg, model_channels=width))
    if kind == "prior":
        from dalle2_pytorch import DiffusionPriorNetwork

        if target is None:
            return dalle2_prior(cfg)
        # parameters are affine in the SwiGLU's inner width int(ff_mult * dim): solve, round to 32
        width = cfg["width"]
        a = _meta_params(DiffusionPriorNetwork, dalle2_prior(cfg, 2.0))
        b = _meta_params(DiffusionPriorNetwork, dalle2_prior(cfg, 4.0))
        inner = 2 * width + (target - a) * (2 * width) / max(b - a, 1)
        inner = max(32, int(round(inner / 32)) * 32)
        return dalle2_prior(cfg, inner / width)
    from dalle2_pytorch import Unet

    if target is None:
        return dalle2_unet(kind, cfg)
    best = _fit_width(lambda d: _meta_params(Unet, dalle2_unet(kind, cfg, d), kind == "sr"), cfg["model_channels"],
                      target)
    return dalle2_unet(kind, cfg, best)


def build_peer(peer: str, kind: str, cfg: dict[str, Any], batch: int, target: int | None = None) -> Runner:
    """A Runner for `peer` ("diffusers" or "dalle2") at cascade's size `cfg` (parameter count near
    `target` where the peer's design needs a knob); imports the peer. `runner.config` holds
    the peer's constructor arguments."""
    kwargs = fit_peer_config(peer, kind, cfg, target)
    runner = _build_peer(peer, kind, cfg, batch, kwargs)
    runner.config = kwargs
    return runner


def _build_peer(peer: str, kind: str, cfg: dict[str, Any], batch: int, kwargs: dict[str, Any]) -> Runner:
    torch.manual_seed(0)
    inputs = make_inputs(kind, cfg, batch)
    p = patch_of(cfg)
    if peer == "diffusers":
        if kind == "prior":
            from diffusers import PriorTransformer

            net = PriorTransformer(**kwargs)
            E = cfg["embed_dim"]
            B, L = inputs["text_tokens"].shape[:2]
            inputs["text_tokens"] = torch.randn(B, L, E, generator=torch.Generator().manual_seed(1))

            def call(i):
                return net(i["x"], i["t"], proj_embedding=i["text_embed"], encoder_hidden_states=i["text_tokens"],
                           attention_mask=i["text_mask"]).predicted_image_embedding

            return Runner(net, call, inputs)
        if kind == "decoder":
            from diffusers import UNet2DConditionModel
            from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

            E = cfg["embed_dim"]
            text_proj = UnCLIPTextProjModel(clip_extra_context_tokens=cfg["num_image_tokens"], clip_embeddings_dim=E,
                                            time_embed_dim=kwargs["time_embedding_dim"],
                                            cross_attention_dim=cfg["context_dim"])
            unet = UNet2DConditionModel(**kwargs)
            net = nn.ModuleDict({"text_proj": text_proj, "unet": unet})
            B, L = inputs["text_tokens"].shape[:2]
            inputs["text_tokens"] = torch.randn(B, L, E, generator=torch.Generator().manual_seed(1))
            n_img = cfg["num_image_tokens"]

            def call(i):
                context, additive = text_proj(image_embeddings=i["image_embed"], prompt_embeds=i["text_embed"],
                                              text_encoder_hidden_states=i["text_tokens"],
                                              do_classifier_free_guidance=False)
                mask = F.pad(i["text_mask"], (n_img, 0), value=True)  # as Karlo's pipeline
                x = F.pixel_unshuffle(i["x"], p) if p > 1 else i["x"]
                out = unet(x, i["t"], encoder_hidden_states=context, class_labels=additive,
                           attention_mask=mask).sample
                return F.pixel_shuffle(out, p) if p > 1 else out

            return Runner(net, call, inputs)
        from diffusers import UNet2DModel

        net = UNet2DModel(**kwargs)

        def call(i):
            x = torch.cat([i["x"], i["lowres"]], dim=1)
            x = F.pixel_unshuffle(x, p) if p > 1 else x
            out = net(x, i["t"], class_labels=i["aug_level"] * 1000.0).sample
            return F.pixel_shuffle(out, p) if p > 1 else out

        return Runner(net, call, inputs)

    if peer == "dalle2":
        if kind == "prior":
            from dalle2_pytorch import DiffusionPriorNetwork

            net = DiffusionPriorNetwork(**kwargs)
            g = torch.Generator().manual_seed(1)
            B, L, W = batch, cfg["text_context"], cfg["width"]
            tokens = torch.randn(B, L, W, generator=g) * inputs["text_mask"][..., None]  # padding = zeros, as it expects
            inputs = {"x": torch.randn(B, W, generator=g), "t": inputs["t"], "text_embed": torch.randn(B, W, generator=g),
                      "text_tokens": tokens}

            def call(i):
                return net(i["x"], i["t"], text_embed=i["text_embed"], text_encodings=i["text_tokens"])

            return Runner(net, call, inputs)
        from dalle2_pytorch import Unet

        net = Unet(**kwargs)
        if kind == "decoder":
            inputs["text_tokens"] = inputs["text_tokens"] * inputs["text_mask"][..., None]

            def call(i):
                x = F.pixel_unshuffle(i["x"], p) if p > 1 else i["x"]
                out = net(x, i["t"], image_embed=i["image_embed"], text_encodings=i["text_tokens"])
                return F.pixel_shuffle(out, p) if p > 1 else out

            return Runner(net, call, inputs)
        net.mid_attn = None  # SR networks have no attention (DALL-E 2 App. C); its forward skips a None

        def call(i):
            x = F.pixel_unshuffle(i["x"], p) if p > 1 else i["x"]
            low = F.pixel_unshuffle(i["lowres"], p) if p > 1 else i["lowres"]
            out = net(x, i["t"], image_embed=None, lowres_cond_img=low, lowres_noise_level=i["aug_level"] * 1000.0)
            return F.pixel_shuffle(out, p) if p > 1 else out

        return Runner(net, call, inputs)
    raise ValueError(f"unknown peer {peer!r}")


def make_adamw(params, lr: float) -> torch.optim.Optimizer:
    """AdamW with the fused CPU kernel where torch has it (as cascade's trainer), else foreach."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, foreach=True)


class DalleDecoderTrainStep:
    """One optimizer step of DALLE2-pytorch's `Decoder`: its own loss (v-prediction, as cascade's
    decoder; its default condition drops), backward, gradient clipping at 1, fused AdamW."""

    def __init__(self, cfg: dict[str, Any], batch: int, bf16: bool, channels_last: bool, lr: float = 3e-4,
                 target: int | None = None):
        from dalle2_pytorch import Decoder, Unet

        self.config = fit_peer_config("dalle2", "decoder", cfg, target)
        torch.manual_seed(0)
        p = patch_of(cfg)
        self.unet = Unet(**self.config)
        self.decoder = Decoder(self.unet, image_size=cfg["image_size"] // p, channels=3 * p * p, timesteps=1000,
                               learned_variance=False, predict_v=True, auto_normalize_img=False).train()
        self.cl = channels_last
        if channels_last:
            self.decoder.to(memory_format=torch.channels_last)
        self.bf16 = bf16
        self.opt = make_adamw(self.unet.parameters(), lr)
        i = make_inputs("decoder", cfg, batch, seed=2)
        x = F.pixel_unshuffle(i["x"].clamp(-1, 1), p) if p > 1 else i["x"].clamp(-1, 1)
        self.image = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        self.image_embed = i["image_embed"]
        self.text_encodings = i["text_tokens"] * i["text_mask"][..., None]

    def step(self) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.decoder(self.image, image_embed=self.image_embed, text_encodings=self.text_encodings)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss)


# ---------------------------------------------------------------------------- the peers' server
def serve() -> None:
    """JSON lines on stdin -> JSON lines on stdout (one reply per request)."""
    runners: dict[str, Runner] = {}
    trainers: dict[str, DalleDecoderTrainStep] = {}
    out = sys.stdout
    sys.stdout = sys.stderr  # libraries' prints must not corrupt the protocol
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        try:
            if cmd == "hello":
                torch.set_num_threads(int(req["threads"]))
                import diffusers
                import dalle2_pytorch  # noqa: F401
                from importlib.metadata import version

                reply = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                         "dalle2_pytorch": version("dalle2-pytorch"), "threads": torch.get_num_threads()}
            elif cmd == "build":
                r = build_peer(req["peer"], req["kind"], req["config"], req["batch"], req.get("target"))
                if req.get("trial", True):
                    r.run("fp32")  # a network that cannot run at this size fails here, at build time
                runners[req["key"]] = r
                reply = {"params": count_parameters(r.module), "config": r.config}
            elif cmd == "warmup":
                reply = {"ms": runners[req["key"]].warmup(req["mode"])}
            elif cmd == "time":
                reply = {"ms": runners[req["key"]].time_once(req["mode"])}
            elif cmd == "flops":
                reply = {"flops": runners[req["key"]].flops(req.get("mode", "fp32"))}
            elif cmd == "drop":
                runners.pop(req["key"], None)
                trainers.pop(req["key"], None)
                reply = {}
            elif cmd == "train_build":
                t = DalleDecoderTrainStep(req["config"], req["batch"], req["bf16"], req["channels_last"],
                                          target=req.get("target"))
                trainers[req["key"]] = t
                reply = {"params": count_parameters(t.unet), "config": t.config, "loss": t.step()}
            elif cmd == "train_step":
                t0 = time.perf_counter()
                loss = trainers[req["key"]].step()
                reply = {"seconds": time.perf_counter() - t0, "loss": loss}
            elif cmd == "quit":
                out.write(json.dumps({}) + "\n")
                out.flush()
                return
            else:
                raise ValueError(f"unknown request {cmd!r}")
        except Exception as e:  # reported to the parent, which decides
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    serve()
