"""Images in and out: any file or PIL mode to tensors in [-1, 1], tensors to PIL, grids and GIFs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor


class ImageError(ValueError):
    """An image that cannot be read or used."""


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """8-bit RGB from any PIL mode: transparency (alpha, or a palette's or RGB's transparent
    colour) composited on `background`; 16-bit, 32-bit and float grey scaled to 8 bits."""
    if not isinstance(image, Image.Image):
        raise ImageError(f"expected a PIL image, got {type(image).__name__}")
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("P", "RGB", "L") and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(image).astype(np.float64)
        if mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0  # float images in [0, 1]
        elif mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr / 257.0  # 16-bit range -> 8 bits
        arr = np.clip(np.nan_to_num(arr) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"cannot convert a PIL image of mode {mode!r} to RGB: {e}") from e


def load_image(path_or_image: str | Path | Image.Image) -> Image.Image:
    """An RGB PIL image from a path or a PIL image of any mode; a clear error otherwise."""
    if isinstance(path_or_image, Image.Image):
        return to_rgb(path_or_image)
    if not isinstance(path_or_image, (str, Path)):
        raise ImageError(f"expected an image path or a PIL image, got {type(path_or_image).__name__}")
    path = Path(path_or_image)
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from e


def pil_to_tensor(image: Image.Image, size: int | None = None) -> Tensor:
    """(3, H, W) float in [-1, 1]; resized (Lanczos) to size×size after a centre square crop if given."""
    image = to_rgb(image)
    if size is not None:
        w, h = image.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
    arr = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return arr.float() / 127.5 - 1


def tensor_to_pil(x: Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] to RGB PIL images (rounded, clipped)."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, "RGB") for a in arr]


def grid(images: Sequence[Image.Image], cols: int | None = None, pad: int = 2, fill=(255, 255, 255)) -> Image.Image:
    """Images of one size tiled row-major into one picture."""
    if not images:
        raise ImageError("no images to put in a grid")
    cols = cols or len(images)
    rows = (len(images) + cols - 1) // cols
    w, h = images[0].size
    canvas = Image.new("RGB", (cols * w + (cols - 1) * pad, rows * h + (rows - 1) * pad), fill)
    for i, im in enumerate(images):
        canvas.paste(im, ((i % cols) * (w + pad), (i // cols) * (h + pad)))
    return canvas


def save_gif(images: Sequence[Image.Image], path: str | Path, duration_ms: int = 120, bounce: bool = True) -> None:
    """An animated GIF of the frames (played forward then back when `bounce`)."""
    frames = list(images) + (list(images[-2:0:-1]) if bounce and len(images) > 2 else [])
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
