"""Give a trained UNet stage another block layout and carry over every weight that still fits.

    python tools/relayout_unet.py MODEL_DIR ROLE --config TOML --out OUT_DIR

For a decoder or super-resolution stage whose new [ROLE.network] (in TOML) differs from the
trained one in its blocks per level (`num_res_blocks`) or its upsampling (`subpixel_upsample`),
not in its levels or widths. What is kept, level by level:

- down blocks: the first min(old, new) of each level; extra new blocks start as the identity
  (their last convolution and attention output are zero at initialisation);
- up blocks: an up level reads its down level's skip connections in reverse order. With more
  blocks, the old first block stays first and the extra ones follow it as pass-throughs (the
  skip connection keeps the main input and drops the skip; the residual branch is zero), so a
  network with only added blocks computes what the old one did. With fewer, the blocks are
  aligned from the end (the last reads the level's first skip, which is still there);
- resampling blocks of the same kind, and every weight outside the levels (embeddings, text
  adapter, input and output convolutions), as they are;
- a sub-pixel upsampling block that replaces a BigGAN one starts as nearest-neighbour
  upsampling of the first channels.

The new network does not compute what the old one did (the tool prints the difference on a
probe batch). It is the warm start of a distillation run that teaches it the old stage's
predictions, e.g. `cascade train decoder --model OUT_DIR --run RUN --set teacher=MODEL_DIR`
(see docs/shipped-model.md, session 17).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grow_stage import old_and_new, probe  # noqa: E402  (tools/ is not a package)

from cascade.checkpoint import CheckpointError, save_stage  # noqa: E402
from cascade.clip import CLIP  # noqa: E402
from stages.unet import ResBlock, SubpixelUpsample, UNet  # noqa: E402


def _unet(network: nn.Module) -> tuple[UNet, str]:
    if isinstance(network, UNet):
        return network, ""
    if isinstance(getattr(network, "unet", None), UNet):
        return network.unet, "unet."
    raise CheckpointError(f"{type(network).__name__} has no UNet to re-lay out")


def block_map(old: UNet, new: UNet) -> dict[str, str]:
    """New module name → old module name, for the blocks of the levels that carry over."""
    oc, nc = old.config, new.config
    if oc.channel_mult != nc.channel_mult or oc.model_channels != nc.model_channels:
        raise CheckpointError(f"levels or widths differ (channel_mult {oc.channel_mult} → {nc.channel_mult}, "
                              f"model_channels {oc.model_channels} → {nc.model_channels}): only blocks per level "
                              "and the upsampling kind can change")
    levels = len(nc.channel_mult)
    pairs: dict[str, str] = {}
    for level in range(levels):
        ob, nb = oc.blocks(level), nc.blocks(level)
        for i in range(min(ob, nb)):
            for kind in ("res", "attn"):
                pairs[f"down.{level}.{kind}.{i}"] = f"down.{level}.{kind}.{i}"
        pairs[f"down.{level}.downsample"] = f"down.{level}.downsample"
        u = levels - 1 - level
        k = nb - ob
        # An up level reads its down level's skips in reverse. With k more blocks, the first k + 1
        # skips it reads are the old last block's output (the extra down blocks are identities):
        # block 0 is the old block 0, blocks 1 … k pass through, the rest are the old blocks 1 ….
        # With fewer blocks the skips of the removed down blocks are gone: align from the end.
        source = {0: 0, **{j: j - k for j in range(k + 1, nb + 1)}} if k >= 0 else {j: j - k for j in range(nb + 1)}
        for j, jo in source.items():
            for kind in ("res", "attn"):
                pairs[f"up.{u}.{kind}.{j}"] = f"up.{u}.{kind}.{jo}"
        pairs[f"up.{u}.upsample"] = f"up.{u}.upsample"
    return pairs


def _init_new_blocks(new: UNet, carried: set[str]) -> None:
    """Pass-through up blocks (skip conv = [I, 0]) and nearest-neighbour sub-pixel upsampling
    for the blocks nothing was carried into."""
    with torch.no_grad():
        for name, module in new.named_modules():
            if name in carried:
                continue
            if isinstance(module, ResBlock) and name.startswith("up.") and module.skip is not None:
                w = module.skip.weight  # (out, in, 1, 1): keep the first `out` channels, the main input
                w.zero_()
                n = min(w.shape[0], w.shape[1])
                w[torch.arange(n), torch.arange(n), 0, 0] = 1.0
                module.skip.bias.zero_()
            elif isinstance(module, SubpixelUpsample):
                w = module.conv.weight  # (4 out, in, 3, 3); pixel_shuffle takes channel 4c + s to sub-pixel s of c
                out = w.shape[0] // 4
                w.zero_()
                for c in range(min(out, w.shape[1])):
                    w[4 * c: 4 * c + 4, c, 1, 1] = 1.0
                module.conv.bias.zero_()


def relayout(old_net: nn.Module, new_net: nn.Module) -> tuple[list[str], list[str]]:
    """Copy old_net's weights into new_net by the block map. Returns (new tensors carried over,
    new tensors left at their initialisation)."""
    old, prefix = _unet(old_net)
    new, _ = _unet(new_net)
    pairs = block_map(old, new)
    old_state, new_state = old_net.state_dict(), new_net.state_dict()
    carried, fresh = [], []
    carried_modules = set()
    for key in new_state:
        source = key
        if key.startswith(prefix + "down.") or key.startswith(prefix + "up."):
            inner = key[len(prefix):]
            parts = inner.split(".")
            module = ".".join(parts[:4]) if parts[2] in ("res", "attn") else ".".join(parts[:3])
            source = prefix + pairs[module] + inner[len(module):] if module in pairs else None
        if source is not None and source in old_state and old_state[source].shape == new_state[key].shape:
            new_state[key] = old_state[source].clone()
            carried.append(key)
            carried_modules.add(".".join(key[len(prefix):].split(".")[:-2]))
        else:
            fresh.append(key)
    new_net.load_state_dict(new_state)
    _init_new_blocks(new, carried_modules)  # a module any tensor was carried into is left alone
    return carried, fresh


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="model folder holding the trained stage")
    ap.add_argument("role", choices=["decoder", "sr256", "sr1024"])
    ap.add_argument("--config", required=True, type=Path, help="TOML whose [ROLE] table is the new layout")
    ap.add_argument("--out", required=True, type=Path, help="write a copy of the model folder here")
    args = ap.parse_args(argv)
    try:
        if args.out.exists():
            raise CheckpointError(f"{args.out} exists")
        torch.manual_seed(0)
        old, new = old_and_new(args.model, args.role, args.config)
        carried, fresh = relayout(old.network, new.network)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    clip = CLIP.from_pretrained(args.model / "clip")
    with torch.inference_mode():
        x, t, cond = probe(old, clip)
        before, after = old.denoiser(x, t, cond), new.denoiser(x, t, cond)
    diff = float((before - after).pow(2).mean().sqrt())
    shutil.copytree(args.model, args.out)
    save_stage(new, args.out / args.role)
    state = new.network.state_dict()
    print(f"{args.out / args.role}: {sum(state[k].numel() for k in carried):,} parameters carried over, "
          f"{sum(state[k].numel() for k in fresh):,} new ({len(fresh)} tensors); RMS difference from the old "
          f"stage's prediction on the probe {diff:.3g} (of RMS {float(before.pow(2).mean().sqrt()):.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
