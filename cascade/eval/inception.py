"""Inception-V3 pool3 features for FID, from a local .safetensors weights file.

No weights ship with cascade and none are downloaded: FID runs when the user points to a
weights file (``--inception-weights FILE`` or the environment variable
``CASCADE_INCEPTION_WEIGHTS``) and is skipped with a message otherwise. The network is
torchvision's ``inception_v3``; the file is read with safetensors only (a pickle is never
loaded, since unpickling can run code).

Two kinds of weights are recognised by their classifier size:

- 1008 classes: the TF Inception (2015-12-05) that FID is defined with, as ported by
  pytorch-fid (``pt_inception-2015-12-05-6726825d.pth``). Its blocks differ from
  torchvision's in their pooling branch (TF's average pool leaves padding out of the mean;
  the last block max-pools), patched here as pytorch-fid does, so the numbers are the
  standard FID. cascade reads safetensors only: convert that .pth once, outside cascade and
  in an environment you trust (load its state dict, `safetensors.torch.save_file` it).
- 1000 classes: torchvision's ImageNet weights. Usable, but their FID is not comparable
  with published numbers (reported as ``variant: torchvision``).

Images (B, 3, H, W) in [-1, 1] (generated images quantised to 8 bits first, as saved) are
resized to 299×299 (bilinear, as pytorch-fid) and fed as they are (both weight sets take
inputs in [-1, 1]).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ENV_VAR", "FID_SKIPPED", "InceptionError", "InceptionFeatures", "find_weights"]

ENV_VAR = "CASCADE_INCEPTION_WEIGHTS"
FID_SKIPPED = (f"FID skipped: no Inception-V3 weights (pass --inception-weights FILE.safetensors or set {ENV_VAR}; "
               "CLIP-FD and CMMD are reported instead)")


class InceptionError(ValueError):
    """Inception weights that cannot be used (one line, naming the file and the problem)."""


def find_weights(path: str | os.PathLike | None = None) -> Optional[Path]:
    """The weights file to use: `path`, else $CASCADE_INCEPTION_WEIGHTS, else None (FID skipped).
    A file that is named but missing or not .safetensors is an error, not a silent skip."""
    source = "--inception-weights"
    if path is None or str(path) == "":
        path, source = os.environ.get(ENV_VAR) or None, ENV_VAR
        if path is None:
            return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise InceptionError(f"{source}: Inception weights not found: {p}")
    if p.suffix != ".safetensors":
        raise InceptionError(f"{source}: {p} is not a .safetensors file (pickled checkpoints are never loaded; "
                             "convert it once, see cascade/eval/inception.py)")
    return p


def _tf_avg_pool(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _tf_max_pool(x: Tensor) -> Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def _patch_pool_branch(block: nn.Module, pool) -> None:
    """Make an InceptionA/C/E block pool its last branch with `pool` (the TF graph's pooling).
    torchvision's `_forward` returns the branches with the pooling branch last."""
    original = block._forward

    def _forward(x: Tensor) -> list[Tensor]:
        outputs = original(x)
        outputs[-1] = block.branch_pool(pool(x))
        return outputs

    block._forward = _forward


class InceptionFeatures(nn.Module):
    """torchvision Inception-V3 up to the 2048-d average pool ("pool3"), frozen, eval mode."""

    def __init__(self, num_classes: int = 1008):
        super().__init__()
        from torchvision.models import inception_v3

        self.variant = "fid" if num_classes == 1008 else "torchvision"
        self.net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=num_classes,
                                transform_input=False)
        if self.variant == "fid":
            for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7b"):
                _patch_pool_branch(getattr(self.net, name), _tf_avg_pool)
            _patch_pool_branch(self.net.Mixed_7c, _tf_max_pool)
        self.net.dropout = nn.Identity()
        self.net.fc = nn.Identity()
        self.input_size = 299          # what FID is defined at (smaller only to test the plumbing quickly)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "InceptionFeatures":
        """Load a .safetensors state dict of torchvision's inception_v3 (aux classifier optional)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = find_weights(path)
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise InceptionError(f"{path} is not a readable safetensors file: {e}") from None
        fc = state.get("fc.weight")
        if fc is None or fc.dim() != 2 or fc.shape[1] != 2048:
            raise InceptionError(f"{path}: not Inception-V3 weights (no fc.weight of shape (classes, 2048))")
        model = cls(num_classes=int(fc.shape[0]))
        state = {k: v.float() for k, v in state.items() if not k.startswith(("AuxLogits.", "fc."))}
        expected = {k for k in model.net.state_dict() if not k.startswith("fc.")}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            what = (f"missing {', '.join(missing[:3])}" if missing else "") + \
                   (f"{'; ' if missing else ''}unexpected {', '.join(unexpected[:3])}" if unexpected else "")
            raise InceptionError(f"{path}: not torchvision Inception-V3 weights ({what}"
                                 f"{' …' if len(missing) > 3 or len(unexpected) > 3 else ''})")
        try:
            model.net.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise InceptionError(f"{path}: weights do not fit Inception-V3: {str(e).splitlines()[0]}") from None
        return model

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Pool3 features (B, 2048) of images (B, 3, H, W) in [-1, 1]."""
        x = images.float().clamp(-1, 1).to(next(self.parameters()).device)
        side = self.input_size
        if tuple(x.shape[-2:]) != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        return self.net(x).float().cpu()

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int = 32) -> Tensor:
        out = [self(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, 2048)
