"""Tiled super-resolution equals untiled evaluation, with bounded per-call size."""

import dataclasses

import pytest
import torch

from cascade.diffusion.tiling import TiledDenoiser, receptive_radius
from cascade.stage import Stage, stage_config_from_dict


def _sr_stage(norm="layer"):
    config = stage_config_from_dict("sr1024", {
        "resolution": 256, "lowres_resolution": 64,
        "network": {"image_size": 256, "patch_size": 2, "model_channels": 8, "channel_mult": [1, 2],
                    "num_res_blocks": 1, "norm": norm, "norm_groups": 4},
        "diffusion": {"parametrization": "v", "clip_denoised": 1.0},
        "sampling": {"sampler": "dpmpp_2m", "steps": 3},
    })
    torch.manual_seed(0)
    stage = Stage(config).eval()
    with torch.no_grad():  # a fresh UNet outputs zeros; give every weight a value
        for p in stage.network.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return stage


def test_windows_cover_the_image_once():
    tiler = TiledDenoiser(lambda x, t, c: x, tile=48, margin=16, factor=8)
    cover = torch.zeros(100, 130)
    for win, core in tiler.windows(100, 130):
        y0, y1, x0, x1 = win
        assert y0 % 8 == 0 and x0 % 8 == 0 and win[0] <= core[0] and core[1] <= win[1]
        cover[core[0]:core[1], core[2]:core[3]] += 1
    assert torch.all(cover == 1)
    with pytest.raises(ValueError, match="multiples"):
        TiledDenoiser(lambda x, t, c: x, tile=50, margin=16, factor=8)


def test_tiled_sampling_equals_untiled_for_a_local_network():
    stage = _sr_stage()
    B, size = 2, 256
    g = torch.Generator().manual_seed(0)
    lowres = torch.rand(B, 3, size, size, generator=g) * 2 - 1
    cond = {"lowres": lowres, "aug_level": torch.zeros(B)}
    x = torch.randn(B, 3, size, size, generator=g)
    radius = receptive_radius(stage.denoiser, x[:1], torch.tensor([500.0]), {k: v[:1] for k, v in cond.items()})
    assert 0 < radius < 96
    margin = -(-radius // 4) * 4  # aligned to the downsampling factor 4
    calls = []
    stage.network.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    full = stage.sample(x.shape, cond, noise=x)
    calls.clear()
    tiled_cfg = dataclasses.replace(stage.config.sampling, tile=64, tile_margin=margin)
    tiled = stage.sample(x.shape, cond, noise=x, sampling=tiled_cfg)
    assert torch.allclose(full, tiled, atol=1e-4), (full - tiled).abs().max()
    # every network call saw one window of one image: memory is bounded by the window, not the batch
    assert max(c[0] for c in calls) == 1 and max(c[-1] for c in calls) <= 64 + 2 * margin


def test_group_norm_tiling_is_an_approximation():
    stage = _sr_stage(norm="group")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 128, 128, generator=g)
    cond = {"lowres": torch.rand(1, 3, 128, 128, generator=g) * 2 - 1, "aug_level": torch.zeros(1)}
    t = torch.tensor([300.0])
    full = stage.denoiser(x, t, cond)
    tiled = TiledDenoiser(stage.denoiser, 64, 32, factor=4)(x, t, cond)
    assert not torch.equal(full, tiled)  # global statistics differ per window
    assert (full - tiled).abs().mean() < 0.1
