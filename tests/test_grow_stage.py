"""tools/grow_stage.py: a trained stage given zero-initialised additions keeps its function."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cascade.checkpoint import load_stage

ROOT = Path(__file__).resolve().parents[1]
MICRO = (ROOT / "configs" / "micro.toml").read_text()


def config_with(tmp_path: Path, old: str, new: str) -> Path:
    assert old in MICRO
    path = tmp_path / "grown.toml"
    path.write_text(MICRO.replace(old, new, 1))
    return path


def test_grown_decoder_computes_what_the_trained_one_did(micro_dir, tmp_path, tools):
    tool = tools("grow_stage")
    old = load_stage(micro_dir / "decoder", "decoder")
    with torch.no_grad():  # a "trained" decoder: no zero layers left to hide a difference
        for p in old.network.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model = tmp_path / "model"
    import shutil
    shutil.copytree(micro_dir, model)
    from cascade.checkpoint import save_stage
    save_stage(old, model / "decoder")
    toml = config_with(tmp_path, 'text_width = 64\n[decoder.diffusion]', 'text_width = 64\ntext_adapter_layers = 1\n[decoder.diffusion]')
    assert tool.main([str(model), "decoder", "--config", str(toml), "--out", str(tmp_path / "grown")]) == 0
    grown = load_stage(tmp_path / "grown" / "decoder", "decoder")
    assert grown.network.config.text_adapter_layers == 1 and len(grown.network.text_adapter) == 1
    from cascade.clip import CLIP
    x, t, cond = tool.probe(old, CLIP.from_pretrained(model / "clip"), seed=3)
    with torch.no_grad():
        torch.testing.assert_close(grown.denoiser(x, t, cond), old.denoiser(x, t, cond), rtol=0, atol=1e-6)
    assert load_stage(model / "decoder", "decoder").network.config.text_adapter_layers == 0  # the source is untouched


def test_grow_refuses_a_reshaped_network(micro_dir, tmp_path, capsys, tools):
    toml = config_with(tmp_path, "model_channels = 32\nchannel_mult = [1, 2]", "model_channels = 64\nchannel_mult = [1, 2]")
    assert tools("grow_stage").main([str(micro_dir), "decoder", "--config", str(toml), "--out", str(tmp_path / "grown")]) == 1
    assert "reshaped" in capsys.readouterr().err and not (tmp_path / "grown").exists()


def _trained(micro_dir, tmp_path):
    """A copy of the micro model whose decoder has no zero layers left (as after training)."""
    import shutil

    from cascade.checkpoint import save_stage
    model = tmp_path / "model"
    shutil.copytree(micro_dir, model)
    old = load_stage(model / "decoder", "decoder")
    with torch.no_grad():
        for p in old.network.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_stage(old, model / "decoder")
    return model, old


def test_relayout_adds_blocks_exactly_and_carries_weights_into_the_efficient_layout(micro_dir, tmp_path, tools,
                                                                                   capsys):
    tool = tools("relayout_unet")
    model, old = _trained(micro_dir, tmp_path)
    from cascade.clip import CLIP
    x, t, cond = tool.probe(old, CLIP.from_pretrained(model / "clip"), seed=1)
    # one more block at each level: the new down block is the identity, the new up block a pass-through
    toml = config_with(tmp_path, "num_res_blocks = 1\nattention_resolutions", "num_res_blocks = [2, 2]\nattention_resolutions")
    assert tool.main([str(model), "decoder", "--config", str(toml), "--out", str(tmp_path / "more")]) == 0
    more = load_stage(tmp_path / "more" / "decoder", "decoder")
    assert len(more.network.unet.down[0].res) == 2 and len(more.network.unet.up[1].res) == 3
    with torch.no_grad():
        torch.testing.assert_close(more.denoiser(x, t, cond), old.denoiser(x, t, cond), rtol=0, atol=1e-5)
    # the efficient layout: level 0 loses its blocks, sub-pixel upsampling replaces the BigGAN block
    toml = config_with(tmp_path, "num_res_blocks = 1\nattention_resolutions",
                       "num_res_blocks = [0, 2]\nsubpixel_upsample = true\nattention_resolutions")
    assert tool.main([str(model), "decoder", "--config", str(toml), "--out", str(tmp_path / "eff")]) == 0
    out = capsys.readouterr().out
    eff = load_stage(tmp_path / "eff" / "decoder", "decoder")
    old_state, new_state = old.network.state_dict(), eff.network.state_dict()
    # the last up block of level 0 (it reads the input conv's skip) is the old one's last
    for name in ("conv1.weight", "conv2.weight", "emb_proj.weight"):
        assert torch.equal(new_state[f"unet.up.1.res.0.{name}"], old_state[f"unet.up.1.res.1.{name}"])
    # level 1 gains a block: its first up block stays first, the old second is now the third
    assert torch.equal(new_state["unet.up.0.res.0.conv1.weight"], old_state["unet.up.0.res.0.conv1.weight"])
    assert torch.equal(new_state["unet.up.0.res.2.conv1.weight"], old_state["unet.up.0.res.1.conv1.weight"])
    assert torch.equal(new_state["unet.down.1.res.0.conv1.weight"], old_state["unet.down.1.res.0.conv1.weight"])
    assert torch.equal(new_state["unet.conv_in.weight"], old_state["unet.conv_in.weight"])
    # the sub-pixel block starts as nearest-neighbour upsampling of the first channels
    up = eff.network.unet.up[0].upsample
    h = torch.randn(1, up.conv.in_channels, 4, 4)
    with torch.no_grad():
        expect = torch.nn.functional.interpolate(h[:, : up.conv.out_channels // 4], scale_factor=2.0)
        torch.testing.assert_close(up(h), expect)
    assert "parameters carried over" in out and "RMS difference" in out
    # widths cannot change
    toml = config_with(tmp_path, "model_channels = 32\nchannel_mult = [1, 2]", "model_channels = 64\nchannel_mult = [1, 2]")
    assert tool.main([str(model), "decoder", "--config", str(toml), "--out", str(tmp_path / "wide")]) == 1
    assert "widths differ" in capsys.readouterr().err and not (tmp_path / "wide").exists()
