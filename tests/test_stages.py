"""The networks on tiny configs (width 32): shapes, per-sample guidance dropping, masking,
causality, full convolutionality, config handling, and the paper-sized configs on the meta device."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from cascade.config import ConfigError, from_dict, load_toml, to_dict
from stages.common import ChannelLayerNorm
from stages.unet import ResBlock
from stages import (
    NETWORKS,
    Decoder,
    DecoderConfig,
    PriorConfig,
    PriorTransformer,
    SuperRes,
    SuperResConfig,
)

from conftest import perturbed

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
B = 3
D = 16  # CLIP embedding width of the tiny configs
TOKEN_WIDTH = 24
CONTEXT = 6

TINY_PRIOR = dict(embed_dim=D, text_width=TOKEN_WIDTH, text_context=CONTEXT, width=32, layers=2, heads=4)
TINY_UNET = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, head_dim=16, norm_groups=8)
TINY_DECODER = dict(
    TINY_UNET, image_size=16, attention_resolutions=(8,), embed_dim=D, context_dim=32, text_context=CONTEXT,
    text_width=TOKEN_WIDTH, text_layers=1, text_heads=4, text_vocab_size=100,
)


def prior_inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, CONTEXT, dtype=torch.bool)
    mask[:, 4:] = False
    mask[1, 2:] = False
    return dict(
        x=torch.randn(B, D, generator=g),
        t=torch.tensor([3.0, 500.0, 999.0]),
        text_embed=torch.randn(B, D, generator=g),
        text_tokens=torch.randn(B, CONTEXT, TOKEN_WIDTH, generator=g),
        text_mask=mask,
    )


def decoder_inputs(seed: int = 1, size: int = 16) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, CONTEXT, dtype=torch.bool)
    mask[:, 4:] = False
    ids = torch.randint(1, 100, (B, CONTEXT), generator=g)
    ids[:, 4:] = 0
    return dict(
        x=torch.randn(B, 3, size, size, generator=g),
        t=torch.tensor([3.0, 500.0, 999.0]),
        image_embed=torch.randn(B, D, generator=g),
        text_embed=torch.randn(B, D, generator=g),
        text_tokens=torch.randn(B, CONTEXT, TOKEN_WIDTH, generator=g),
        text_ids=ids,
        text_mask=mask,
    )


def run(net, inputs: dict, **extra) -> torch.Tensor:
    kw = dict(inputs, **extra)
    x, t = kw.pop("x"), kw.pop("t")
    with torch.no_grad():
        return net(x, t, **kw)


def assert_drop_is_per_sample(net, inputs: dict, flag: str) -> None:
    """Dropping rows 0 and 2 changes exactly those rows, to what dropping every row gives them."""
    base = run(net, inputs)
    drop = torch.tensor([True, False, True])
    some = run(net, inputs, **{flag: drop})
    every = run(net, inputs, **{flag: torch.ones(B, dtype=torch.bool)})
    torch.testing.assert_close(some[1], base[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(some[[0, 2]], every[[0, 2]], rtol=1e-5, atol=1e-5)
    assert (some[[0, 2]] - base[[0, 2]]).abs().amax() > 1e-3, f"{flag} did not change the dropped rows"


# ---------------------------------------------------------------- registry and configs


def test_registry_names_every_network():
    assert NETWORKS == {"PriorTransformer": PriorTransformer, "Decoder": Decoder, "SuperRes": SuperRes}
    for cls, cfg_cls in ((PriorTransformer, PriorConfig), (Decoder, DecoderConfig), (SuperRes, SuperResConfig)):
        assert cls.config_class is cfg_cls


@pytest.mark.parametrize("cls, data", [
    (PriorConfig, TINY_PRIOR),
    (DecoderConfig, dict(TINY_DECODER, text_source="own", patch_size=2, norm="layer")),
    (SuperResConfig, dict(TINY_UNET, aug_level_conditioning=False, attention_resolutions=(64,))),
    (SuperResConfig, dict(TINY_UNET, num_res_blocks=(0, 2), subpixel_upsample=True)),
])
def test_config_round_trip(cls, data):
    config = from_dict(cls, data)
    assert from_dict(cls, to_dict(config)) == config
    assert set(to_dict(config)) == {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("cls", [PriorConfig, DecoderConfig, SuperResConfig])
def test_unknown_config_key_is_refused_by_name(cls):
    with pytest.raises(ConfigError, match="chanel_mult"):
        from_dict(cls, {"chanel_mult": [1, 2]})


def test_bad_config_values_are_refused():
    with pytest.raises(ConfigError, match="text_source"):
        from_dict(DecoderConfig, {"text_source": "t5"})
    with pytest.raises(ConfigError, match="norm"):
        from_dict(SuperResConfig, {"norm": "batch"})
    with pytest.raises(ConfigError, match="heads"):
        from_dict(PriorConfig, {"width": 30, "heads": 4})
    with pytest.raises(ConfigError, match="num_res_blocks names 3 levels, channel_mult 2"):
        from_dict(SuperResConfig, dict(TINY_UNET, num_res_blocks=[1, 1, 1]))
    with pytest.raises(ConfigError, match="num_res_blocks"):
        from_dict(SuperResConfig, dict(TINY_UNET, num_res_blocks=[0, 0]))
    with pytest.raises(ConfigError, match="the last level changes the width"):
        from_dict(SuperResConfig, dict(TINY_UNET, channel_mult=[1, 2], num_res_blocks=[1, 0]))


# ---------------------------------------------------------------- prior


def test_prior_shape_and_text_drop():
    prior = perturbed(PriorTransformer(from_dict(PriorConfig, TINY_PRIOR)))
    inputs = prior_inputs()
    assert run(prior, inputs).shape == (B, D)
    assert_drop_is_per_sample(prior, inputs, "text_drop")


def test_prior_is_causal():
    """Changing the noised image embedding leaves every earlier position's output unchanged."""
    prior = perturbed(PriorTransformer(from_dict(PriorConfig, TINY_PRIOR)))
    inputs = prior_inputs()
    kw = {k: v for k, v in inputs.items() if k not in ("x", "t")}
    with torch.no_grad():
        a = prior.encode_sequence(inputs["x"], inputs["t"], **kw)
        b = prior.encode_sequence(inputs["x"] + 1.0, inputs["t"], **kw)
    x_pos = CONTEXT + 2  # [tokens, text_embed, time, x, query]
    assert a.shape == (B, CONTEXT + 4, 32)
    assert torch.equal(a[:, :x_pos], b[:, :x_pos])
    assert (a[:, x_pos:] - b[:, x_pos:]).abs().amax() > 1e-3


def test_prior_ignores_padding_tokens_and_pads_short_inputs():
    prior = perturbed(PriorTransformer(from_dict(PriorConfig, TINY_PRIOR)))
    inputs = prior_inputs()
    base = run(prior, inputs)
    noisy = dict(inputs, text_tokens=inputs["text_tokens"] + 5.0 * (~inputs["text_mask"])[..., None])
    torch.testing.assert_close(run(prior, noisy), base, rtol=1e-5, atol=1e-5)
    short = dict(inputs, text_tokens=inputs["text_tokens"][:, :4], text_mask=inputs["text_mask"][:, :4])
    torch.testing.assert_close(run(prior, short), base, rtol=1e-5, atol=1e-5)


def test_prior_clip_stats_and_no_token_variant():
    prior = PriorTransformer(from_dict(PriorConfig, dict(TINY_PRIOR, text_context=0, clip_stats=True)))
    assert "clip_mean" in prior.state_dict() and "clip_std" in prior.state_dict()
    prior.clip_mean.fill_(0.5)
    prior.clip_std.fill_(2.0)
    z = torch.randn(B, D)
    torch.testing.assert_close(prior.denormalize_image_embed(prior.normalize_image_embed(z)), z)
    inputs = prior_inputs()
    del inputs["text_tokens"], inputs["text_mask"]
    assert run(prior, inputs).shape == (B, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(run(prior, inputs)).all()


@pytest.mark.parametrize("text_context", [CONTEXT, 0])
def test_prior_prepared_prefix_equals_the_full_forward(text_context):
    """Samplers pass `prepare_condition`'s cached text prefix: the same prediction (fp32 up to
    rounding, bf16 within its precision) for every timestep, text drop and padding mask."""
    prior = perturbed(PriorTransformer(from_dict(PriorConfig, dict(TINY_PRIOR, text_context=text_context)))).eval()
    inputs = prior_inputs()
    if not text_context:
        del inputs["text_tokens"], inputs["text_mask"]
    x, t = inputs.pop("x"), inputs.pop("t")
    inputs["text_drop"] = torch.tensor([False, True, False])
    for bf16 in (False, True):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            cond = prior.prepare_condition(inputs)
            assert cond["prefix"].shape == (B, 2, 2, 4, text_context + 1, 8)
            assert prior.prepare_condition(cond).keys() == cond.keys()  # preparing twice changes nothing
            for step in (t, t.flip(0), torch.zeros(B)):
                full, fast = prior(x, step, **inputs).float(), prior(x, step, **cond).float()
                tol = 2e-2 * full.abs().amax().item() if bf16 else 1e-5
                torch.testing.assert_close(fast, full, rtol=0, atol=tol)
    assert (prior(x + 1.0, t, **cond) - prior(x, t, **cond)).abs().amax() > 1e-3
    with pytest.raises(ValueError, match="not both"):
        prior(x, t, **cond, text_embed=inputs["text_embed"])
    with pytest.raises(ValueError, match="prepare_condition"):
        prior(x[:2], t[:2], **cond)


# ---------------------------------------------------------------- decoder


@pytest.mark.parametrize("text_source", ["clip", "own", "none"])
def test_decoder_shapes_and_image_drop(text_source):
    decoder = perturbed(Decoder(from_dict(DecoderConfig, dict(TINY_DECODER, text_source=text_source, out_channels=6))))
    inputs = decoder_inputs()
    assert run(decoder, inputs).shape == (B, 6, 16, 16)
    assert_drop_is_per_sample(decoder, inputs, "image_drop")


@pytest.mark.parametrize("text_source", ["clip", "own"])
def test_decoder_text_drop(text_source):
    decoder = perturbed(Decoder(from_dict(DecoderConfig, dict(TINY_DECODER, text_source=text_source))))
    assert_drop_is_per_sample(decoder, decoder_inputs(), "text_drop")


def test_decoder_masks_padding_tokens():
    decoder = perturbed(Decoder(from_dict(DecoderConfig, TINY_DECODER)))
    inputs = decoder_inputs()
    base = run(decoder, inputs)
    noisy = dict(inputs, text_tokens=inputs["text_tokens"] + 5.0 * (~inputs["text_mask"])[..., None])
    torch.testing.assert_close(run(decoder, noisy), base, rtol=1e-5, atol=1e-5)
    visible = dict(inputs, text_tokens=inputs["text_tokens"] + 5.0 * inputs["text_mask"][..., None])
    assert (run(decoder, visible) - base).abs().amax() > 1e-3


def test_decoder_text_adapter_reads_token_order():
    """Cross-attention alone cannot see where a token stands: swapping two visible token states
    leaves the output unchanged. The adapter (bidirectional, with positions) makes order count;
    it starts at zero, so a trained decoder grown by it computes what it did."""
    plain = perturbed(Decoder(from_dict(DecoderConfig, TINY_DECODER)))
    grown = Decoder(from_dict(DecoderConfig, dict(TINY_DECODER, text_adapter_layers=2))).eval()
    missing = grown.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("text_adapter") for k in missing)
    inputs = decoder_inputs()
    swapped = dict(inputs, text_tokens=inputs["text_tokens"][:, [1, 0, 2, 3, 4, 5]])  # tokens 0-3 are visible
    torch.testing.assert_close(run(grown, inputs), run(plain, inputs), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(run(plain, swapped), run(plain, inputs), rtol=1e-5, atol=1e-5)
    grown = perturbed(grown, seed=1)
    base = run(grown, inputs)
    assert (run(grown, swapped) - base).abs().amax() > 1e-3
    padded = dict(inputs, text_tokens=inputs["text_tokens"] + 5.0 * (~inputs["text_mask"])[..., None])
    torch.testing.assert_close(run(grown, padded), base, rtol=1e-5, atol=1e-5)
    assert_drop_is_per_sample(grown, inputs, "text_drop")
    grown.train()
    kw = dict(inputs)
    x, t = kw.pop("x"), kw.pop("t")
    grown(x, t, **kw).square().mean().backward()
    assert grown.text_adapter_pos.grad.abs().sum() > 0 and grown.text_adapter[0].attn.to_q.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="text_source"):
        DecoderConfig(**dict(TINY_DECODER, text_source="own", text_adapter_layers=1))


@pytest.mark.parametrize("norm, patch_size", [("layer", 1), ("group", 2), ("layer", 2)])
def test_decoder_norm_and_patch_options(norm, patch_size):
    config = from_dict(DecoderConfig, dict(TINY_DECODER, norm=norm, patch_size=patch_size, image_size=32))
    decoder = perturbed(Decoder(config))
    inputs = decoder_inputs(size=32)
    out = run(decoder, inputs)
    assert out.shape == (B, 3, 32, 32) and torch.isfinite(out).all()
    assert_drop_is_per_sample(decoder, inputs, "text_drop")


def test_decoder_channels_last_bf16_and_backward():
    decoder = perturbed(Decoder(from_dict(DecoderConfig, dict(TINY_DECODER, norm="layer"))))
    inputs = decoder_inputs()
    base = run(decoder, inputs)
    decoder = decoder.to(memory_format=torch.channels_last)
    cl = run(decoder, dict(inputs, x=inputs["x"].contiguous(memory_format=torch.channels_last)))
    torch.testing.assert_close(cl, base, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(run(decoder, inputs)).all()
    decoder.train()
    kw = dict(inputs, text_drop=torch.tensor([True, False, False]), image_drop=torch.tensor([False, True, False]))
    x, t = kw.pop("x"), kw.pop("t")
    decoder(x, t, **kw).square().mean().backward()
    assert decoder.null_image_embed.grad is not None and decoder.null_text_tokens.grad is not None


def test_decoder_refuses_missing_text_and_bad_sizes():
    decoder = Decoder(from_dict(DecoderConfig, TINY_DECODER))
    inputs = decoder_inputs()
    with pytest.raises(ValueError, match="text_tokens"):
        run(decoder, inputs, text_tokens=None)
    with pytest.raises(ValueError, match="multiple"):
        run(decoder, dict(inputs, x=torch.randn(B, 3, 15, 16)))


@pytest.mark.parametrize("text_source", ["clip", "own", "none"])
def test_decoder_prepared_condition_equals_the_full_forward(text_source):
    """Samplers pass `prepare_condition`'s context and conditioning embedding, computed once: the
    same prediction as from the raw condition (fp32 up to rounding), drops and masks included."""
    config = dict(TINY_DECODER, text_source=text_source, text_adapter_layers=1 if text_source == "clip" else 0)
    decoder = perturbed(Decoder(from_dict(DecoderConfig, config))).eval()
    inputs = decoder_inputs()
    x, t = inputs.pop("x"), inputs.pop("t")
    inputs.update(image_drop=torch.tensor([False, True, False]), text_drop=torch.tensor([False, False, True]))
    with torch.no_grad():
        cond = decoder.prepare_condition(inputs)
        assert set(cond) == {"cond_emb", "context", "context_mask"}
        assert (cond["context_mask"] is None) == (text_source != "clip")
        assert decoder.prepare_condition(cond).keys() == cond.keys()
        for step in (t, t.flip(0)):
            torch.testing.assert_close(decoder(x, step, **cond), decoder(x, step, **inputs), rtol=0, atol=1e-5)
        with pytest.raises(ValueError, match="not both"):
            decoder(x, t, **cond, image_embed=inputs["image_embed"])
        with pytest.raises(ValueError, match="rows"):
            decoder(x[:2], t[:2], **cond)
        with pytest.raises(ValueError, match="unexpected"):
            decoder.prepare_condition(dict(inputs, lowres=x))


# ---------------------------------------------------------------- super-resolution


def test_superres_is_fully_convolutional_and_uses_aug_level():
    sr = perturbed(SuperRes(from_dict(SuperResConfig, TINY_UNET)))
    for h, w in [(16, 24), (32, 8), (8, 8)]:
        x, lowres = torch.randn(2, 3, h, w), torch.randn(2, 3, h, w)
        with torch.no_grad():
            out = sr(x, torch.tensor([10.0, 900.0]), lowres=lowres, aug_level=torch.tensor([0.0, 0.0]))
            aug = sr(x, torch.tensor([10.0, 900.0]), lowres=lowres, aug_level=torch.tensor([0.0, 0.5]))
        assert out.shape == (2, 3, h, w)
        torch.testing.assert_close(aug[0], out[0])
        assert (aug[1] - out[1]).abs().amax() > 1e-3


def test_superres_layer_norm_and_patches_on_crops():
    """The options the CPU-trained model uses, on crops of two shapes; lowres must match x."""
    sr = perturbed(SuperRes(from_dict(SuperResConfig, dict(TINY_UNET, norm="layer", patch_size=2))))
    for h, w in [(16, 24), (8, 32)]:
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            assert sr(x, torch.tensor([5.0]), lowres=x).shape == (1, 3, h, w)
    with pytest.raises(ValueError, match="lowres"):
        sr(torch.randn(1, 3, 8, 8), torch.tensor([5.0]), lowres=torch.randn(1, 3, 4, 4))


def test_efficient_layout_moves_work_to_low_resolution():
    """Per-level block counts (0 at the top level) and sub-pixel upsampling: the same function
    class on any crop, about as many weights as the default layout and far fewer FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    wide = dict(TINY_UNET, channel_mult=(1, 2, 2), norm="layer", patch_size=2)
    plain = SuperRes(from_dict(SuperResConfig, wide))
    efficient = perturbed(SuperRes(from_dict(SuperResConfig, dict(wide, num_res_blocks=(0, 1, 2),
                                                                   subpixel_upsample=True))))
    assert not any(isinstance(m, ResBlock) and m.resample == "up" for m in efficient.modules())
    assert 0.9 < efficient.num_parameters() / plain.num_parameters() < 1.3
    flops = {}
    for name, net in (("plain", plain), ("efficient", efficient)):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(torch.randn(1, 3, 64, 64), torch.tensor([5.0]), lowres=torch.randn(1, 3, 64, 64))
        flops[name] = counter.get_total_flops()
    assert flops["efficient"] < 0.7 * flops["plain"]
    for h, w in [(16, 24), (8, 32)]:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            out = efficient(x, torch.tensor([5.0, 500.0]), lowres=x)
        assert out.shape == (2, 3, h, w) and out.std() > 1e-3
    loss = efficient(x, torch.tensor([5.0, 500.0]), lowres=x).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in efficient.parameters())
    # a level without blocks whose width changes: its downsampling block changes it (both kinds)
    for updown in (True, False):
        net = SuperRes(from_dict(SuperResConfig, dict(wide, num_res_blocks=(0, 0, 3), subpixel_upsample=True,
                                                      resblock_updown=updown)))
        assert net(x, torch.tensor([5.0, 500.0]), lowres=x).shape == x.shape


def test_norm_free_levels_drop_the_norms_of_the_top_levels_only():
    """`norm_free_levels = 1`: every block of level 0 (its down, downsampling and up blocks) and the
    output norm are identities, the lower levels keep theirs; bad counts are refused."""
    wide = dict(TINY_UNET, channel_mult=(1, 2, 2), norm="layer", patch_size=2, num_res_blocks=(1, 1, 2),
                subpixel_upsample=True)
    unet = SuperRes(from_dict(SuperResConfig, dict(wide, norm_free_levels=1))).unet
    top = [*unet.down[0].res, unet.down[0].downsample, *unet.up[-1].res]
    assert all(isinstance(b.norm1, torch.nn.Identity) and isinstance(b.norm2, torch.nn.Identity) for b in top)
    assert isinstance(unet.norm_out, torch.nn.Identity)
    rest = [*unet.down[1].res, *unet.down[2].res, unet.mid.res1, *unet.up[0].res, *unet.up[1].res]
    assert all(isinstance(b.norm1, ChannelLayerNorm) and isinstance(b.norm2, ChannelLayerNorm) for b in rest)
    shipped_like = SuperRes(from_dict(SuperResConfig, wide))
    assert shipped_like.num_parameters() - SuperRes(from_dict(SuperResConfig, dict(wide, norm_free_levels=1))
                                                    ).num_parameters() == 2 * (32 + 32 + 32 + 32 + 64 + 32 + 64 + 32 + 32)
    for bad in (-1, 4):
        with pytest.raises(ValueError, match="norm_free_levels"):
            from_dict(SuperResConfig, dict(wide, norm_free_levels=bad))


@pytest.mark.parametrize("norm, batch, layout, patch, cl", [
    ("layer", 1, "plain", 2, True), ("layer", 2, "plain", 2, True), ("group", 1, "plain", 2, True),
    ("group", 2, "plain", 1, True), ("layer", 2, "efficient", 2, True), ("layer", 1, "efficient", 4, False),
    ("layer", 1, "norm-free top", 2, True), ("layer", 2, "norm-free top", 2, False)])
def test_unet_inference_path_equals_the_training_path(norm, batch, layout, patch, cl):
    """Without autograd the ResBlocks work in place and fold the scale-shift into the norm, and the
    patching input convolution is one strided convolution; the result must be the autograd path's
    (fp32 exactly up to rounding; bf16 within its precision)."""
    extra = {"plain": {}, "efficient": dict(num_res_blocks=(0, 2), subpixel_upsample=True),
             "norm-free top": dict(num_res_blocks=(1, 2), subpixel_upsample=True, norm_free_levels=1)}[layout]
    sr = perturbed(SuperRes(from_dict(SuperResConfig, dict(TINY_UNET, norm=norm, patch_size=patch, **extra)))).eval()
    fmt = torch.channels_last if cl else torch.contiguous_format
    sr = sr.to(memory_format=fmt)
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, 32, 24, generator=g).contiguous(memory_format=fmt)
    lowres = torch.randn(x.shape, generator=g).contiguous(memory_format=fmt)
    t, aug = torch.tensor([30.0, 700.0][:batch]), torch.tensor([0.0, 0.2][:batch])
    for bf16 in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            with torch.enable_grad():
                slow = sr(x, t, lowres=lowres, aug_level=aug)
            with torch.inference_mode():
                fast = sr(x, t, lowres=lowres, aug_level=aug)
        assert slow.requires_grad and not fast.requires_grad
        # bf16: the two paths round in a different order, so single pixels may differ by a few
        # bf16 steps (unseeded, 1 run in 8 reached 2-3% of the largest output); on average they agree.
        scale = slow.abs().amax().item()
        tol = 5e-2 * scale if bf16 else 1e-5
        torch.testing.assert_close(fast.float(), slow.detach().float(), rtol=0, atol=tol)
        if bf16:
            assert (fast.float() - slow.detach().float()).abs().mean() < 5e-3 * scale


def test_embedding_linear_computes_in_fp32_without_autograd_and_keeps_its_weights():
    """The per-sample projections (time embedding, AdaGN scale-shift) run in fp32 outside autocast
    when no gradient is needed: autocast's dtype out, the fp32 product's value; with autograd they
    are a plain Linear; `bf16_weights` leaves their weights in fp32 and holds the others in bf16."""
    from cascade.hardware import bf16_weights
    from stages.common import EmbeddingLinear

    torch.manual_seed(0)
    lin, other = EmbeddingLinear(64, 96), torch.nn.Linear(64, 96)
    x = torch.randn(2, 64)
    exact = x @ lin.weight.T + lin.bias
    with torch.autocast("cpu", dtype=torch.bfloat16), bf16_weights(torch.nn.ModuleList([lin, other])):
        assert lin.weight.dtype == torch.float32 and other.weight.dtype == torch.bfloat16
        with torch.inference_mode():
            fast = lin(x)
        slow = lin(x)
    assert fast.dtype == slow.dtype == torch.bfloat16
    assert torch.equal(fast, exact.to(torch.bfloat16))  # fp32 product, rounded once
    assert not torch.equal(slow, fast) and (slow.float() - exact).abs().max() < 0.05  # the bf16 product
    assert slow.requires_grad and other.weight.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(lin(x), exact)  # no autocast: fp32 in, fp32 out


def test_karlo_style_superres_has_no_aug_embedding():
    config = from_dict(SuperResConfig, dict(TINY_UNET, scale_shift_norm=False, aug_level_conditioning=False))
    sr = perturbed(SuperRes(config))
    assert not any(name.startswith("aug_embed") for name, _ in sr.named_parameters())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert sr(x, torch.tensor([1.0, 2.0]), lowres=x).shape == (2, 3, 8, 8)


# ---------------------------------------------------------------- shipped config files


PAPER_SIZES = {"prior": 1.0e9, "decoder": 3.5e9, "sr256": 7.0e8, "sr1024": 3.0e8}
CLASSES = {"prior": PriorTransformer, "decoder": Decoder, "sr256": SuperRes, "sr1024": SuperRes}


def test_dalle2_config_matches_the_paper_sizes():
    data = load_toml(CONFIGS / "dalle2.toml")
    for role, target in PAPER_SIZES.items():
        cls = CLASSES[role]
        table = data[role]["network"]
        assert set(table) == {f.name for f in dataclasses.fields(cls.config_class)}, role
        with torch.device("meta"):
            net = cls(from_dict(cls.config_class, table, where=f"{role}.network"))
        count = net.num_parameters()
        assert abs(count - target) <= 0.15 * target, f"{role}: {count:.3e} parameters, paper {target:.1e}"


def test_micro_config_networks_build():
    path = CONFIGS / "micro.toml"
    if not path.is_file():
        pytest.skip("configs/micro.toml not present")
    data = load_toml(path)
    for role, cls in CLASSES.items():
        if role in data and "network" in data[role]:
            cls(from_dict(cls.config_class, data[role]["network"], where=f"{role}.network"))


def test_dalle2_is_a_complete_model_config():
    from cascade.model_config import load_model_config

    config = load_model_config(CONFIGS / "dalle2.toml")
    assert list(config.stages) == ["prior", "decoder", "sr256", "sr1024"]
    assert config.clip.model_name == "ViT-H-14"
    budget = {role: s.sampling.steps for role, s in config.stages.items()}
    assert budget == {"prior": 64, "decoder": 250, "sr256": 27, "sr1024": 15}
    assert config.stages["decoder"].diffusion.data_channels == 3


def test_fixed_length_tuples_round_trip_through_config_dicts():
    """tuple[float, float] fields (the SR degradation's blur range) survive to_dict → from_dict:
    a saved SR-1024 stage's config.json must load back to the same config and save again."""
    from cascade.config import from_dict, to_dict
    from cascade.stage import AugmentationConfig

    aug = AugmentationConfig(kind="degrade", max_level=0.3, blur_sigma=(0.4, 0.6))
    back = from_dict(AugmentationConfig, to_dict(aug), where="augmentation")
    assert back == aug and back.blur_sigma == (0.4, 0.6)
