"""Give one stage of a model folder a grown architecture and keep everything it has learned.

    python tools/grow_stage.py MODEL_DIR ROLE --config TOML [--out OUT_DIR]

The stage is rebuilt from the TOML's [ROLE] table. Every weight of the old network is copied
(same name, same shape); the new ones keep their initialisation. The result is written only if
the grown network computes what the old one did on a probe batch (to 1e-5): additions that start
at zero, such as the decoder's `text_adapter_layers`, pass; a changed width or a removed layer is
refused with the weights that differ. Then `cascade train ROLE --model OUT_DIR --run NEW_RUN_DIR`
continues training from the old weights (a fresh optimizer: an old run's checkpoints hold the
old architecture and cannot be resumed).

Without --out the stage is replaced in MODEL_DIR itself.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from cascade.checkpoint import CheckpointError, load_stage, save_stage
from cascade.clip import CLIP
from cascade.degrade import lowres_condition
from cascade.model_config import load_model_config
from cascade.pipeline import decoder_condition, prior_condition
from cascade.stage import Stage

PROBE_PROMPTS = ["a large red circle in the center on a white background",
                 "a small blue star to the left of a small yellow square on a gray background"]


def copy_weights(old: torch.nn.Module, new: torch.nn.Module) -> list[str]:
    """Copy old's weights into new by name; return new's weights that old does not have.
    Raises CheckpointError if old has a weight that new lacks or holds in another shape."""
    target = new.state_dict()
    state = old.state_dict()
    gone = sorted(k for k in state if k not in target)
    reshaped = sorted(k for k in state if k in target and target[k].shape != state[k].shape)
    if gone or reshaped:
        raise CheckpointError("the new architecture cannot take the old weights: "
                              + "; ".join(f"{what}: {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}"
                                          for what, keys in (("removed", gone), ("reshaped", reshaped)) if keys))
    new.load_state_dict(state, strict=False)
    return sorted(k for k in target if k not in state)


def probe(stage: Stage, clip: CLIP, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A probe batch (x_t, t, cond) for the stage's role: two prompts, random noise levels."""
    g = torch.Generator().manual_seed(seed)
    text = clip.encode_text(PROBE_PROMPTS)
    B = len(PROBE_PROMPTS)
    no = torch.zeros(B, dtype=torch.bool)
    c = stage.config
    t = torch.tensor([150.0, 850.0])
    if c.role == "prior":
        return torch.randn(B, text.embed.shape[-1], generator=g), t, prior_condition(text, no)
    x = torch.randn(B, 3, c.resolution, c.resolution, generator=g)
    if c.role == "decoder":
        z = F.normalize(torch.randn(B, text.embed.shape[-1], generator=g), dim=-1)
        return x, t, decoder_condition(stage, z, text, no, no)
    low = torch.rand(B, 3, c.lowres_resolution, c.lowres_resolution, generator=g) * 2 - 1
    aug = torch.full((B,), 0.05)
    return x, t, {"lowres": lowres_condition(low, c.resolution, aug, c.augmentation, generator=g), "aug_level": aug}


def old_and_new(model: Path, role: str, config: Path) -> tuple[Stage, Stage]:
    """The model folder's stage and a freshly initialised one built from the TOML's [role] table."""
    old = load_stage(model / role, role)
    new_config = load_model_config(config).stages.get(role)
    if new_config is None:
        raise CheckpointError(f"{config} has no [{role}] table")
    if new_config.network_class != old.config.network_class:
        raise CheckpointError(f"{config}: [{role}] is a {new_config.network_class}, "
                              f"the model folder's is a {old.config.network_class}")
    return old, Stage(new_config).eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="model folder (from `cascade init` or a training run)")
    ap.add_argument("role", choices=["prior", "decoder", "sr256", "sr1024"])
    ap.add_argument("--config", required=True, type=Path, help="TOML whose [ROLE] table is the grown architecture")
    ap.add_argument("--out", type=Path, help="write a copy of the model folder here (default: change MODEL_DIR)")
    args = ap.parse_args(argv)
    try:
        old, new = old_and_new(args.model, args.role, args.config)
        added = copy_weights(old.network, new.network)
        clip = CLIP.from_pretrained(args.model / "clip")
        with torch.inference_mode():
            x, t, cond = probe(old, clip)
            before, after = old.denoiser(x, t, cond), new.denoiser(x, t, cond)
        diff = float((before - after).abs().max())
        if diff > 1e-5:
            raise CheckpointError(f"the grown {args.role} computes something else (max difference {diff:.3g}): "
                                  "its new weights do not start at zero")
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = args.out or args.model
    if args.out is not None:
        if args.out.exists():
            print(f"error: {args.out} exists", file=sys.stderr)
            return 1
        shutil.copytree(args.model, args.out)
    save_stage(new, out / args.role)
    n_added = sum(new.network.state_dict()[k].numel() for k in added)
    print(f"{out / args.role}: {len(added)} new tensors ({n_added:,} parameters) beside the old "
          f"{sum(p.numel() for p in old.network.parameters()):,}; same output on the probe (max difference {diff:.1g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
