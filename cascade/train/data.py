"""Training data: sources of (image, caption), a seekable sample stream, and the CLIP embedding cache.

A *source* answers `len`, `caption(i)` and `image(i, size)` ((3, size, size) float in [-1, 1]):
ShapeWorld (pre-rendered uint8 pools where they fit in memory, rendered on access above),
an image–caption folder, or a file of pre-computed CLIP embeddings (prior only).

The *stream* is what makes resume exact and the data split independent of the number of
processes: sample number p of a run (its *position*) is item perm_e[p mod N] of the source,
with perm_e a permutation drawn from (seed, epoch e = p div N), and every random choice
made for that sample (t, noise, condition drops, crops, augmentation) comes from a generator
seeded by (seed, p). The whole data state of a run is therefore one integer, the position;
batches are cut from the stream in order and split across processes by accelerate.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from ..checkpoint import atomic_write

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 1_000_003  # ShapeWorld's held-out batch comes from another scene stream
POOL_LIMIT_BYTES = 1 << 30  # pre-render a ShapeWorld resolution when its pool fits in this


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence hashing: nearby inputs, unrelated outputs)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def sample_generator(seed: int, position: int) -> torch.Generator:
    """The generator of every random choice made for stream position `position`."""
    return torch.Generator().manual_seed(mix_seed(seed, position, 0x5EED))


# ----------------------------------------------------------------------------- sources
class Source:
    """Items with a caption and an image at any requested size."""

    kind = "source"
    has_images = True

    def __len__(self) -> int:
        raise NotImplementedError

    def caption(self, index: int) -> str:
        raise NotImplementedError

    def image(self, index: int, size: int) -> Tensor:
        raise NotImplementedError

    def images(self, indices: Sequence[int], size: int) -> Tensor:
        return torch.stack([self.image(int(i), size) for i in indices])

    def prepare(self, sizes: Sequence[int]) -> None:
        """Pre-render or pre-load what the given sizes need (before DataLoader workers fork)."""

    def fingerprint(self) -> str:
        """What identifies the items (for cache keys)."""
        raise NotImplementedError


def _uint8_to_float(arr: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class ShapeWorldSource(Source):
    """`n` ShapeWorld scenes of stream `seed` (cascade.data), rendered at any resolution."""

    kind = "shapeworld"

    def __init__(self, n: int, seed: int, captions: str = "canonical", pool_limit_bytes: int = POOL_LIMIT_BYTES):
        from ..data import ShapeWorldDataset

        self.n, self.seed, self.captions_mode = int(n), int(seed), captions
        base = ShapeWorldDataset(self.n, self.seed, resolution=8, captions=captions, pool=False, return_scene=False)
        self.scenes = base.scenes
        self.captions = base.captions
        self.pool_limit_bytes = pool_limit_bytes
        self._pools: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.n

    def caption(self, index: int) -> str:
        return self.captions[index]

    def prepare(self, sizes: Sequence[int]) -> None:
        from ..data import render_batch

        for size in sorted(set(sizes)):
            if size not in self._pools and self.n * size * size * 3 <= self.pool_limit_bytes:
                self._pools[size] = render_batch(self.scenes, size)

    def image_uint8(self, index: int, size: int) -> np.ndarray:
        from ..data import render_array

        pool = self._pools.get(size)
        return pool[index] if pool is not None else render_array(self.scenes[index], size)

    def image(self, index: int, size: int) -> Tensor:
        return _uint8_to_float(self.image_uint8(index, size))

    def fingerprint(self) -> str:
        return f"shapeworld:n={self.n}:seed={self.seed}:captions={self.captions_mode}"


class FolderSource(Source):
    """An image–caption folder, CSV or JSONL (cascade.data.ImageCaptionFolder), resized and centre-cropped."""

    kind = "folder"

    def __init__(self, root: str | Path):
        from ..data import ImageCaptionFolder

        self.root = Path(root)
        self.folder = ImageCaptionFolder(self.root)  # refuses a folder with no usable pair

    def __len__(self) -> int:
        return len(self.folder)

    def caption(self, index: int) -> str:
        return self.folder.items[index][1]

    def image(self, index: int, size: int) -> Tensor:
        from ..data.folder import image_to_tensor, resize_center_crop

        pil, _ = self.folder[index]
        return image_to_tensor(resize_center_crop(pil, size))

    def fingerprint(self) -> str:
        h = hashlib.sha1()
        for path, cap in self.folder.items:
            h.update(f"{path}\0{cap}\0".encode())
        return f"folder:{self.root.resolve()}:n={len(self)}:{h.hexdigest()[:16]}"


class EmbeddingSource(Source):
    """Pre-computed CLIP embeddings (a safetensors file like the run's cache): the prior trains without images."""

    kind = "embeddings"
    has_images = False

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.cache = EmbeddingCache.load(self.path)
        if self.cache is None:
            raise ValueError(f"{self.path}: not a CLIP embedding file (needs image_embed, caption_index and the "
                             "text_embed / text_tokens / text_mask / text_ids of each caption)")

    def __len__(self) -> int:
        return len(self.cache)

    def caption(self, index: int) -> str:
        return self.cache.captions[int(self.cache.caption_index[index])] if self.cache.captions else ""

    def image(self, index: int, size: int) -> Tensor:
        raise ValueError(f"{self.path} holds embeddings only: it can train the prior, not an image stage")

    def fingerprint(self) -> str:
        return f"embeddings:{self.path.resolve()}:{self.cache.key}"


class IndexView(Source):
    """Items `indices` of another source (train / held-out splits)."""

    def __init__(self, source: Source, indices: Sequence[int]):
        self.source = source
        self.indices = [int(i) for i in indices]
        self.kind = source.kind
        self.has_images = source.has_images

    def __len__(self) -> int:
        return len(self.indices)

    def caption(self, index: int) -> str:
        return self.source.caption(self.indices[index])

    def image(self, index: int, size: int) -> Tensor:
        return self.source.image(self.indices[index], size)

    def prepare(self, sizes: Sequence[int]) -> None:
        self.source.prepare(sizes)

    def fingerprint(self) -> str:
        h = hashlib.sha1(np.asarray(self.indices, np.int64).tobytes()).hexdigest()[:16]
        return f"{self.source.fingerprint()}:view={len(self)}:{h}"


def open_sources(data: str, dataset_size: int, seed: int, captions: str, eval_size: int) -> tuple[Source, Source]:
    """(training source, held-out source) for `--data`: "shapeworld", a folder/CSV/JSONL, or a .safetensors file."""
    if data == "shapeworld":
        return (ShapeWorldSource(dataset_size, seed, captions),
                ShapeWorldSource(eval_size, seed + EVAL_SEED_OFFSET, captions))
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"--data {data}: no such folder or file (or pass 'shapeworld')")
    source: Source = EmbeddingSource(path) if path.suffix == ".safetensors" else FolderSource(path)
    n = len(source)
    if n >= 2 * eval_size:  # hold out the last eval_size items
        return IndexView(source, range(n - eval_size)), IndexView(source, range(n - eval_size, n))
    log.warning("%s: only %d items, so the sample/eval batch is drawn from the training items", data, n)
    return source, IndexView(source, range(min(eval_size, n)))


# ----------------------------------------------------------------------------- the stream
class StreamSampler(Sampler[int]):
    """Stream positions start, start + 1, … (endless)."""

    def __init__(self, start: int = 0):
        self.start = int(start)

    def __iter__(self):
        p = self.start
        while True:
            yield p
            p += 1


class StreamDataset(Dataset):
    """Position p → fetch(index = perm_{p div N}[p mod N], generator of (seed, p))."""

    def __init__(self, n: int, seed: int, fetch: Callable[[int, torch.Generator], dict[str, Any]]):
        if n < 1:
            raise ValueError("the training source is empty")
        self.n, self.seed, self.fetch = int(n), int(seed), fetch
        self._epoch, self._perm = -1, None

    def index(self, position: int) -> int:
        epoch, k = divmod(int(position), self.n)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 0x9E73))
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
        return int(self._perm[k])

    def __len__(self) -> int:  # nominal: the stream is endless
        return self.n

    def __getitem__(self, position: int) -> dict[str, Any]:
        item = self.fetch(self.index(position), sample_generator(self.seed, position))
        item["position"] = int(position)
        return item


# ----------------------------------------------------------------------------- CLIP embedding cache
class EmbeddingCache:
    """The frozen CLIP's view of a source: one image embedding per item, text encodings per unique caption.

    image_embed (N, D); caption_index (N,) into the unique captions; text_embed (U, D),
    text_tokens (U, L, W), text_mask (U, L), text_ids (U, L). Stored as safetensors with the
    key (CLIP weights hash + source fingerprint) in the metadata.
    """

    TEXT_KEYS = ("text_embed", "text_tokens", "text_mask", "text_ids")

    def __init__(self, tensors: dict[str, Tensor], key: str, captions: Optional[list[str]] = None):
        self.t = tensors
        self.key = key
        self.captions = captions
        self.image_embed = tensors["image_embed"]
        self.caption_index = tensors["caption_index"]

    def __len__(self) -> int:
        return int(self.image_embed.shape[0])

    def subset(self, indices: Sequence[int]) -> "EmbeddingCache":
        """The items `indices` (the caption tables are shared)."""
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        tensors = {**self.t, "image_embed": self.image_embed[idx], "caption_index": self.caption_index[idx]}
        return EmbeddingCache(tensors, self.key, self.captions)

    def text(self, index: int) -> dict[str, Tensor]:
        u = int(self.caption_index[index])
        return {k: self.t[k][u] for k in self.TEXT_KEYS}

    def save(self, path: Path) -> None:
        import json

        meta = {"key": self.key, "captions": json.dumps(self.captions or [])}
        atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in self.t.items()}, tmp, metadata=meta))

    @classmethod
    def load(cls, path: Path, key: Optional[str] = None) -> Optional["EmbeddingCache"]:
        """The cache at `path` if it exists, is readable, complete and (when given) has `key`."""
        import json

        from safetensors import safe_open

        if not path.is_file():
            return None
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError):
            return None
        needed = ("image_embed", "caption_index", *cls.TEXT_KEYS)
        if any(k not in tensors for k in needed) or (key is not None and meta.get("key") != key):
            return None
        return cls(tensors, meta.get("key", ""), json.loads(meta.get("captions", "[]")))


def embedding_file_cache(source: Source) -> Optional[EmbeddingCache]:
    """The embeddings of a source that is (a view of) a pre-computed embedding file, else None."""
    if isinstance(source, EmbeddingSource):
        return source.cache
    if isinstance(source, IndexView) and isinstance(source.source, EmbeddingSource):
        return source.source.cache.subset(source.indices)
    return None


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:24]


@torch.no_grad()
def encode_items(clip: Any, source: Source, indices: Sequence[int], chunk: int = 256) -> Tensor:
    """Normalised CLIP image embeddings (len(indices), D) of source items rendered at CLIP's input size."""
    size = clip.image_size[0]
    out = []
    for i in range(0, len(indices), chunk):
        images = source.images(indices[i:i + chunk], size)
        out.append(clip.encode_image(images).float())
    return torch.cat(out) if out else torch.zeros(0, clip.embed_dim)


@torch.no_grad()
def encode_captions(clip: Any, captions: Sequence[str], chunk: int = 512) -> dict[str, Tensor]:
    """text_embed, text_tokens, text_mask, text_ids of captions, exactly as the pipeline's encode_text."""
    parts: dict[str, list[Tensor]] = {k: [] for k in EmbeddingCache.TEXT_KEYS}
    for i in range(0, len(captions), chunk):
        enc = clip.encode_text(list(captions[i:i + chunk]))
        parts["text_embed"].append(enc.embed.float())
        parts["text_tokens"].append(enc.tokens.float())
        parts["text_mask"].append(enc.mask)
        parts["text_ids"].append(enc.ids)
    return {k: torch.cat(v) for k, v in parts.items()}


def build_embedding_cache(clip: Any, source: Source, clip_weights: Path, path: Optional[Path]) -> EmbeddingCache:
    """Load the run's cache if its key matches, else encode every item and caption once and save it."""
    cache = embedding_file_cache(source)
    if cache is not None:
        return cache
    key = f"clip={file_digest(clip_weights)}:size={clip.image_size[0]}:{source.fingerprint()}"
    if path is not None:
        cached = EmbeddingCache.load(path, key)
        if cached is not None:
            return cached
    shared = shared_cache_path(key)
    if shared is not None:
        cached = EmbeddingCache.load(shared, key)
        if cached is not None:
            log.info("embeddings from the shared cache %s", shared)
            if path is not None:
                _link_or_copy(shared, path)
            return cached
    captions = [source.caption(i) for i in range(len(source))]
    unique = sorted(set(captions))
    where = {c: u for u, c in enumerate(unique)}
    log.info("encoding %d images and %d unique captions with the frozen CLIP", len(source), len(unique))
    tensors = encode_captions(clip, unique)
    tensors["image_embed"] = encode_items(clip, source, range(len(source)))
    tensors["caption_index"] = torch.tensor([where[c] for c in captions], dtype=torch.int64)
    cache = EmbeddingCache(tensors, key, unique)
    if path is not None:
        cache.save(path)
    if shared is not None:
        if path is not None:
            _link_or_copy(path, shared)
        else:
            cache.save(shared)
    return cache


SHARED_CACHE_ENV = "CASCADE_EMBEDDING_CACHE"  # a folder: runs that train on the same pool with the same CLIP
#   (the prior and the decoder of tools/train_shapes.sh) encode it once, not once per run


def shared_cache_path(key: str) -> Optional[Path]:
    """Where the shared cache of `key` lives ($CASCADE_EMBEDDING_CACHE/clip-embeddings-HASH.safetensors), or None."""
    import hashlib
    import os

    folder = os.environ.get(SHARED_CACHE_ENV)
    if not folder:
        return None
    return Path(folder) / f"clip-embeddings-{hashlib.sha256(key.encode()).hexdigest()[:20]}.safetensors"


def _link_or_copy(src: Path, dst: Path) -> None:
    """dst becomes src's content: a hard link where the file system allows, else an atomic copy."""
    import os
    import shutil

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + f".tmp-{os.getpid()}")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


__all__ = [
    "EmbeddingCache", "EmbeddingSource", "FolderSource", "IndexView", "ShapeWorldSource", "Source",
    "StreamDataset", "StreamSampler", "build_embedding_cache", "embedding_file_cache", "encode_captions",
    "encode_items", "mix_seed", "open_sources", "sample_generator",
]
