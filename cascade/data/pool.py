"""Pre-rendered ShapeWorld pools (uint8) and the ShapeWorld torch Dataset built on them.

A pool holds N scenes, their captions and their renders as one uint8 array (N, H, W, 3):
~12 KB per image at 64 px, rendered at ~9k images/s on one thread, so a 100k pool costs
1.2 GB and ~11 s. Pools save to a folder (``images.npy`` + ``scenes.json``; no pickle) and
load memory-mapped.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .shapeworld import (N_TEMPLATES, Scene, caption, held_out_scenes, render_array, render_batch,
                         sample_scenes, scene_from_dict, scene_to_dict)

__all__ = ["ScenePool", "ShapeWorldDataset", "collate_shapeworld", "uint8_to_tensor"]

POOL_LIMIT_BYTES = 1 << 30      # ShapeWorldDataset pre-renders when the pool fits in this


def uint8_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) or (N, H, W, 3) -> float32 (3, H, W) or (N, 3, H, W) in [-1, 1]."""
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:          # e.g. a read-only memory-mapped pool
        images = images.copy()
    t = torch.from_numpy(images)
    t = t.permute(2, 0, 1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    return t.float().div_(127.5).sub_(1.0)


def _choose_templates(n: int, seed: int, captions: str) -> np.ndarray:
    if captions == "canonical":
        return np.zeros(n, np.int64)
    if captions == "paraphrase":
        return np.random.default_rng((int(seed), 2)).integers(N_TEMPLATES, size=n)
    raise ValueError(f"captions must be 'canonical' or 'paraphrase', got {captions!r}")


def _scenes(n: int, seed: int, held_out: bool, n_objects: int | None) -> list[Scene]:
    if held_out:
        return held_out_scenes(n, seed, n_objects=n_objects)
    return sample_scenes(n, seed, n_objects=n_objects)


@dataclass
class ScenePool:
    """Scenes, their captions and their renders, uint8 (N, size, size, 3)."""
    scenes: list[Scene]
    captions: list[str]
    images: np.ndarray

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.scenes)

    @classmethod
    def build(cls, n: int, seed: int, size: int = 64, *, held_out: bool = False,
              n_objects: int | None = None, captions: str = "canonical") -> "ScenePool":
        """Sample ``n`` scenes for ``seed`` (held-out scenes if ``held_out``) and render them."""
        scenes = _scenes(n, seed, held_out, n_objects)
        templates = _choose_templates(n, seed, captions)
        return cls(scenes, [caption(s, int(t)) for s, t in zip(scenes, templates)],
                   render_batch(scenes, size))

    @classmethod
    def from_scenes(cls, scenes, size: int = 64, captions: list[str] | None = None) -> "ScenePool":
        scenes = list(scenes)
        return cls(scenes, captions or [caption(s) for s in scenes], render_batch(scenes, size))

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``images.npy`` and ``scenes.json`` into ``folder`` (atomically, file by file)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format": "cascade.shapeworld.pool/1", "size": self.size,
                "scenes": [scene_to_dict(s) for s in self.scenes], "captions": self.captions}
        for name, write in (("images.npy", lambda f: np.save(f, self.images, allow_pickle=False)),
                            ("scenes.json", lambda f: f.write(json.dumps(meta).encode()))):
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
            try:
                with os.fdopen(fd, "wb") as f:
                    write(f)
                os.replace(tmp, folder / name)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise

    def save_image_folder(self, folder: str | os.PathLike) -> None:
        """Write the pool as an image–caption folder (what ``ImageCaptionFolder`` reads, so the
        folder paths of training and ``cascade eval --data`` can be tried on ShapeWorld):
        ``000000.png`` + ``000000.txt`` per scene, and ``scenes.jsonl`` with each file's scene."""
        from PIL import Image

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        width = max(6, len(str(len(self) - 1)))
        lines = []
        for i, (scene, text) in enumerate(zip(self.scenes, self.captions)):
            path = folder / f"{i:0{width}d}.png"
            Image.fromarray(np.asarray(self.images[i])).save(path)
            path.with_suffix(".txt").write_text(text + "\n")
            lines.append(json.dumps({"path": path.name, "caption": text, "scene": scene_to_dict(scene)}))
        (folder / "scenes.jsonl").write_text("\n".join(lines) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike, *, mmap: bool = True) -> "ScenePool":
        folder = Path(folder)
        meta = json.loads((folder / "scenes.json").read_text())
        images = np.load(folder / "images.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
        if images.shape[0] != len(meta["scenes"]):
            raise ValueError(f"{folder}: {images.shape[0]} images but {len(meta['scenes'])} scenes")
        return cls([scene_from_dict(d) for d in meta["scenes"]], list(meta["captions"]), images)


class ShapeWorldDataset(Dataset):
    """ShapeWorld as a torch Dataset of (image (3, H, W) in [-1, 1], caption, scene).

    Item i is deterministic for (seed, i): scene ``i`` of the stream ``seed``
    (``sample_scenes``; with ``held_out=True`` instead the evaluation stream of scenes that
    each contain a held-out (shape, colour) pair, ``held_out_scenes``). ``captions`` =
    "canonical" (template 0) or "paraphrase" (a template drawn per item from the seed).
    The images are pre-rendered into a uint8 pool (``.pool``, (N, H, W, 3)) when it fits in
    ``pool_limit_bytes`` (or when ``pool=True``), else rendered on access. Batch with
    ``collate_shapeworld`` (the default collate cannot stack scenes), or pass
    ``return_scene=False`` to get plain (image, caption) pairs.
    """

    def __init__(self, n: int, seed: int = 0, resolution: int = 64, held_out: bool = False,
                 captions: str = "canonical", *, n_objects: int | None = None,
                 pool: bool | None = None, pool_limit_bytes: int = POOL_LIMIT_BYTES,
                 return_scene: bool = True):
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        self.n, self.seed, self.resolution = int(n), int(seed), int(resolution)
        self.held_out, self.return_scene = held_out, return_scene
        self.scenes = _scenes(self.n, self.seed, held_out, n_objects)
        templates = _choose_templates(self.n, self.seed, captions)
        self.captions = [caption(s, int(t)) for s, t in zip(self.scenes, templates)]
        if pool is None:
            pool = self.n * self.resolution ** 2 * 3 <= pool_limit_bytes
        self.pool = render_batch(self.scenes, self.resolution) if pool else None

    def __len__(self) -> int:
        return self.n

    def image_uint8(self, index: int) -> np.ndarray:
        if self.pool is not None:
            return self.pool[index]
        return render_array(self.scenes[index], self.resolution)

    def __getitem__(self, index: int):
        if not -self.n <= index < self.n:
            raise IndexError(index)
        index %= self.n
        image = uint8_to_tensor(self.image_uint8(index))
        if self.return_scene:
            return image, self.captions[index], self.scenes[index]
        return image, self.captions[index]


def collate_shapeworld(batch):
    """(images (B, 3, H, W), captions list[str], scenes list[Scene]) from ShapeWorldDataset items."""
    images = torch.stack([b[0] for b in batch])
    captions = [b[1] for b in batch]
    if len(batch[0]) == 3:
        return images, captions, [b[2] for b in batch]
    return images, captions
