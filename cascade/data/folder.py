"""Image–caption datasets from disk.

``ImageCaptionFolder(root)`` reads either

- a folder tree of images (png, jpg, jpeg, webp, bmp, gif), each with a same-named ``.txt``
  caption beside it (``cat.png`` + ``cat.txt``);
- a CSV file with a ``path,caption`` header (paths relative to the CSV; ``image``/``file_name``
  and ``text`` are accepted as column names too);
- a JSONL file of ``{"path": ..., "caption": ...}`` (or ``"image"`` / ``"text"``) lines.

Bad items never stop a run: corrupt or unreadable images, missing images, missing caption
files, empty captions and malformed rows are skipped and counted in ``.skipped`` (a Counter
of reasons), with one summary line in the log. Images are verified cheaply on construction
(``PIL.Image.verify``); an image that still fails to decode in ``__getitem__`` is replaced by
the next good item and counted under ``"load_error"`` (counts made in DataLoader worker
processes stay in those processes). Every image mode (RGBA/LA/PA and palette transparency
composited on white, L, 1, P, CMYK, 16-bit and float) is converted to 8-bit RGB.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ..images import to_rgb

__all__ = ["ImageCaptionFolder", "IMAGE_EXTENSIONS", "to_rgb", "resize_center_crop",
           "image_to_tensor", "default_transform"]

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
_PATH_KEYS = ("path", "image", "file_name", "filename", "file")
_CAPTION_KEYS = ("caption", "text", "prompt")


# ---------------------------------------------------------------------------- conversion
def resize_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Resize the shorter side to ``resolution`` (bicubic, antialiased), then center-crop a square."""
    w, h = image.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.BICUBIC, reducing_gap=2.0)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 (3, H, W) in [-1, 1]."""
    arr = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def default_transform(resolution: int) -> Callable[[Image.Image], torch.Tensor]:
    """Resize + center crop to ``resolution``, then a float tensor (3, H, W) in [-1, 1]."""
    def transform(image: Image.Image) -> torch.Tensor:
        return image_to_tensor(resize_center_crop(image, resolution))
    return transform


# ---------------------------------------------------------------------------- indexing
def _pick(row: dict, keys) -> str | None:
    for k in keys:
        if k in row and row[k] is not None:
            return str(row[k])
    return None


class ImageCaptionFolder(Dataset):
    """(image, caption) pairs from a folder tree, a CSV or a JSONL file (see module docstring).

    ``resolution``: when given (and no ``transform``), images come out resized and
    center-cropped as float tensors (3, res, res) in [-1, 1]; otherwise as RGB PIL images.
    ``transform``: any callable on the RGB PIL image (overrides ``resolution``).
    ``verify``: check every image with ``PIL.Image.verify`` while indexing (cheap; default on).
    """

    def __init__(self, root: str | os.PathLike, resolution: int | None = None, *,
                 transform: Callable | None = None, verify: bool = True,
                 caption_extension: str = ".txt", extensions=IMAGE_EXTENSIONS,
                 recursive: bool = True):
        self.root = Path(root)
        self.resolution = resolution
        self.transform = transform if transform is not None else (
            default_transform(resolution) if resolution else None)
        self.extensions = tuple(e.lower() for e in extensions)
        self.skipped: Counter = Counter()
        self._bad: set[int] = set()
        if self.root.is_dir():
            candidates = self._scan_folder(caption_extension, recursive)
        elif self.root.is_file() and self.root.suffix.lower() == ".csv":
            candidates = self._read_csv()
        elif self.root.is_file() and self.root.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            candidates = self._read_jsonl()
        elif not self.root.exists():
            raise FileNotFoundError(f"image-caption data not found: {self.root}")
        else:
            raise ValueError(f"{self.root}: expected a folder, a .csv or a .jsonl file")
        self.items: list[tuple[Path, str]] = []
        for path, cap in candidates:
            if verify and not self._verify(path):
                continue
            self.items.append((path, cap))
        kept = len(self.items)
        if self.skipped:
            log.warning("%s: %d image-caption pairs, %d skipped (%s)", self.root, kept,
                        sum(self.skipped.values()),
                        ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())))
        else:
            log.info("%s: %d image-caption pairs", self.root, kept)
        if not kept:
            raise ValueError(f"no usable image-caption pairs in {self.root} "
                             f"(skipped: {dict(self.skipped) or 'nothing found'})")

    # -- sources
    def _caption_ok(self, cap: str | None) -> str | None:
        if cap is None or not cap.strip():
            self.skipped["empty_caption"] += 1
            return None
        return cap.strip()

    def _scan_folder(self, caption_extension: str, recursive: bool):
        walker = self.root.rglob("*") if recursive else self.root.glob("*")
        files = sorted(p for p in walker if p.is_file() and p.suffix.lower() in self.extensions)
        out = []
        for path in files:
            txt = path.with_suffix(caption_extension)
            if not txt.is_file():
                self.skipped["missing_caption"] += 1
                continue
            try:
                cap = txt.read_text(encoding="utf-8", errors="replace")
            except OSError:
                self.skipped["unreadable_caption"] += 1
                continue
            cap = self._caption_ok(cap)
            if cap is not None:
                out.append((path, cap))
        return out

    def _resolve(self, rel: str | None) -> Path | None:
        if not rel or not rel.strip():
            self.skipped["bad_row"] += 1
            return None
        path = Path(rel.strip())
        path = path if path.is_absolute() else self.root.parent / path
        if not path.is_file():
            self.skipped["missing_image"] += 1
            return None
        return path

    def _read_csv(self):
        out = []
        with open(self.root, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f)
            fields = [c.strip().lower() for c in (reader.fieldnames or [])]
            if not any(k in fields for k in _PATH_KEYS) or not any(k in fields for k in _CAPTION_KEYS):
                raise ValueError(f"{self.root}: CSV needs a header with 'path' and 'caption' columns, "
                                 f"got {reader.fieldnames}")
            for row in reader:
                row = {(k or "").strip().lower(): v for k, v in row.items()}
                path = self._resolve(_pick(row, _PATH_KEYS))
                if path is None:
                    continue
                cap = self._caption_ok(_pick(row, _CAPTION_KEYS))
                if cap is not None:
                    out.append((path, cap))
        return out

    def _read_jsonl(self):
        out = []
        with open(self.root, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError
                except ValueError:
                    self.skipped["bad_row"] += 1
                    continue
                path = self._resolve(_pick(row, _PATH_KEYS))
                if path is None:
                    continue
                cap = self._caption_ok(_pick(row, _CAPTION_KEYS))
                if cap is not None:
                    out.append((path, cap))
        return out

    def _verify(self, path: Path) -> bool:
        try:
            with Image.open(path) as im:
                im.verify()
            return True
        except Exception:   # noqa: BLE001 - any decoder error means "skip this file"
            self.skipped["unreadable_image"] += 1
            return False

    # -- access
    def __len__(self) -> int:
        return len(self.items)

    def load_image(self, path: Path) -> Image.Image:
        """Open, decode fully, apply EXIF orientation and convert to RGB."""
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)

    def __getitem__(self, index: int):
        n = len(self.items)
        if not -n <= index < n:
            raise IndexError(index)
        index %= n
        for step in range(n):
            i = (index + step) % n
            if i in self._bad:
                continue
            path, cap = self.items[i]
            try:
                image = self.load_image(path)
            except Exception as exc:   # noqa: BLE001 - decode failures are counted, not fatal
                self._bad.add(i)
                self.skipped["load_error"] += 1
                log.warning("skipping %s: %s", path, exc)
                continue
            return (self.transform(image) if self.transform else image), cap
        raise RuntimeError(f"no image in {self.root} could be loaded (skipped: {dict(self.skipped)})")
