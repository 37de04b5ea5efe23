"""cascade.hardware: oneDNN weight prepacking under bf16 autocast (what the pipeline's stages run)."""

from __future__ import annotations

import pytest
import torch

from cascade.config import from_dict
from cascade.hardware import bf16_autocast, native_bf16, onednn_prepacked, onednn_prepacking_available
from stages import Decoder, DecoderConfig, SuperRes, SuperResConfig

from conftest import perturbed

needs_onednn = pytest.mark.skipif(not onednn_prepacking_available(), reason="this torch has no oneDNN prepacked ops")

TINY_DECODER = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, head_dim=16, image_size=16,
                    attention_resolutions=(8,), embed_dim=16, context_dim=32, text_context=6, text_width=24,
                    text_layers=1, text_heads=4, text_vocab_size=100, norm="layer")


def _decoder_and_inputs(batch: int = 2):
    net = perturbed(Decoder(from_dict(DecoderConfig, TINY_DECODER))).to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 16, 16, generator=g).contiguous(memory_format=torch.channels_last)
    mask = torch.ones(batch, 6, dtype=torch.bool)
    mask[:, 4:] = False
    cond = dict(image_embed=torch.randn(batch, 16, generator=g), text_embed=torch.randn(batch, 16, generator=g),
                text_tokens=torch.randn(batch, 6, 24, generator=g), text_mask=mask)
    return net, x, torch.tensor([10.0, 700.0][:batch]), cond


def _layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if type(m) in (torch.nn.Conv2d, torch.nn.Linear)]


@needs_onednn
@pytest.mark.parametrize("role", ["decoder", "sr"])
def test_prepacked_layers_compute_what_autocast_does(role):
    """Under bf16 autocast without autograd, the prepacked convolutions and linears give the
    autocast path's output (bit for bit where bf16 is native: the same kernels on the same
    operands), over several calls with the packs reused, every patched layer is restored, and
    packs kept from an earlier context are not used once the weights change."""
    if role == "decoder":
        net, x, t, cond = _decoder_and_inputs()
        run = lambda: net(x, t, **net.prepare_condition(cond))  # noqa: E731
    else:
        sr = perturbed(SuperRes(from_dict(SuperResConfig, dict(
            model_channels=32, channel_mult=(1, 2), num_res_blocks=(0, 2), subpixel_upsample=True, patch_size=2,
            norm="layer", norm_free_levels=1)))).to(memory_format=torch.channels_last)
        g = torch.Generator().manual_seed(2)
        x = torch.randn(1, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
        low = torch.randn(1, 3, 32, 32, generator=g).clamp(-1, 1).contiguous(memory_format=torch.channels_last)
        net, run = sr, lambda: sr(x, torch.tensor([300.0]), lowres=low, aug_level=torch.tensor([0.1]))  # noqa: E731
    with torch.inference_mode(), bf16_autocast("cpu", net):
        plain = run()
    with torch.inference_mode(), onednn_prepacked(net) as calls, bf16_autocast("cpu", net):
        packed = [run(), run()]
    convs = [m for m in _layers(net) if isinstance(m, torch.nn.Conv2d)]
    # both calls, each over most convolutions (not the scale-shift-folded ones of a norm-free level) and the linears
    assert len(convs) > 3 and calls[0] >= len(convs)
    assert plain.dtype == packed[0].dtype and plain.shape == packed[0].shape and plain.std() > 0.01
    for out in packed:
        _same(out, plain)
    assert all("forward" not in m.__dict__ for m in net.modules())
    assert all(p.dtype == torch.float32 for p in net.parameters())
    # the packs outlive the context, and follow the weights: changed in place or replaced, they are packed anew
    with torch.no_grad():
        for m in convs[:3]:
            m.weight.mul_(-1.5)
        convs[3].weight = torch.nn.Parameter(convs[3].weight.flip(0).contiguous())  # another tensor
    with torch.inference_mode(), bf16_autocast("cpu", net):
        changed = run()
    with torch.inference_mode(), bf16_autocast("cpu", net, prepack=True):
        repacked = run()
    assert (changed.float() - plain.float()).abs().max() > 0.05 * plain.abs().max()
    _same(repacked, changed)


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    if native_bf16():
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=2e-2 * b.abs().max().item())


@needs_onednn
def test_prepacking_steps_aside_where_it_does_not_apply():
    """fp32 (no autocast), autograd, a non-dense input and an outer context's packs: each layer runs
    its own forward (or the outer packs), so gradients still flow and nothing is packed twice."""
    net, x, t, cond = _decoder_and_inputs()
    with onednn_prepacked(net) as calls:
        fp32 = net(x, t, **cond)  # no autocast: fp32 weights, own forward
        assert calls[0] == 0 and fp32.dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            trained = net(x, t, **cond)  # autograd on: own forward
        assert calls[0] == 0
        trained.float().square().mean().backward()
        assert all(m.weight.grad is not None for m in _layers(net) if isinstance(m, torch.nn.Conv2d))
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), onednn_prepacked(net) as inner:
            net(x, t, **cond)
        assert inner[0] == 0 and calls[0] > 0  # the inner context patched nothing: the outer's ran
        linear = next(m for m in _layers(net) if type(m) is torch.nn.Linear)
        before = calls[0]
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            rows = torch.randn(linear.in_features, 4).t()  # a transposed view: not contiguous
            assert linear(rows).shape == (4, linear.out_features) and calls[0] == before
            assert linear(torch.randn(linear.in_features)).shape == (linear.out_features,) and calls[0] == before
    assert all("forward" not in m.__dict__ for m in net.modules())


@needs_onednn
def test_the_pipeline_prepacks_its_bf16_stages(micro_config, unzeroed, monkeypatch):
    """`CascadePipeline` samples its bf16 decoder on prepacked weights (`PREPACKED`: the stage where
    reordering pays), in generation and inversion alike, and its images are those of the unpacked path."""
    import contextlib

    import cascade.hardware as hardware_module
    from PIL import Image

    from cascade.pipeline import PREPACKED

    pipe = unzeroed(micro_config, bf16=True)
    real, counts = hardware_module.onednn_prepacked, []

    @contextlib.contextmanager
    def spy(module, enabled=True):
        with real(module, enabled) as calls:
            yield calls
        counts.append(calls[0])

    monkeypatch.setattr(hardware_module, "onednn_prepacked", spy)
    packed = pipe("a red circle", seed=3, final_size=256, return_intermediates=True)
    pipe.variations(Image.new("RGB", (64, 64), (200, 30, 30)), 1, seed=1, final_size=64)
    assert PREPACKED == {"decoder"}
    assert sorted(c > 0 for c in counts) == [False, False, True, True, True]  # the decoder's three runs only
    monkeypatch.setattr(hardware_module, "onednn_prepacked",
                        lambda module, enabled=True: contextlib.nullcontext([0]))
    plain = pipe("a red circle", seed=3, final_size=256, return_intermediates=True)
    for role in packed.stages:
        if native_bf16():
            assert torch.equal(packed.stages[role], plain.stages[role]), role
        else:
            torch.testing.assert_close(packed.stages[role], plain.stages[role], rtol=0, atol=5e-2)
    assert all(p.dtype == torch.float32 for s in pipe.stages.values() for p in s.network.parameters())
