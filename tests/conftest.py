"""Shared fixtures: a randomly initialised micro cascade, built once per session, and the scripts in tools/."""

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.toml"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def short_inversion(monkeypatch):
    """Variations (from the image's DDIM-inverted x_T by default), interpolation and text diffs with
    invert=True: a 10-step inversion grid instead of 200. The tests check how the inverted x_T is used;
    the inversion's accuracy against its step count is tested on invert_ddim itself (test_diffusion)."""
    monkeypatch.setattr("cascade.pipeline.INVERSION_STEPS", 10)


@pytest.fixture(scope="session")
def tools():
    """`tools(name)`: the script tools/NAME.py loaded as a module (tools/ is not a package)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def micro_config():
    from cascade.model_config import load_model_config

    return load_model_config(MICRO)


@pytest.fixture(scope="session")
def unzeroed():
    """`unzeroed(config, **kw)`: a micro cascade with its zero-initialised output layers filled in (else
    every UNet outputs 0 and two computations that should agree agree trivially)."""
    def build(config, **kw):
        from cascade.pipeline import CascadePipeline

        pipe = CascadePipeline.from_config(config, seed=0, progress=False, **kw)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for role in ("decoder", "sr256"):
                for p in pipe.stages[role].network.parameters():
                    if not p.any():
                        p.copy_(0.05 * torch.randn(p.shape, generator=g))
        return pipe

    return build


@pytest.fixture(scope="session")
def micro_pipe(micro_config):
    from cascade.pipeline import CascadePipeline

    return CascadePipeline.from_config(micro_config, seed=0, progress=False)


@pytest.fixture(scope="session")
def micro_dir(micro_pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("micro") / "model"
    micro_pipe.save_pretrained(path)
    return path


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter: zero-initialised layers and nulls would hide differences."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()
