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
