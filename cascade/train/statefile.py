"""Nested training state (optimizer, scheduler, RNG) saved without pickle: tensors in a
safetensors file, everything else in a JSON skeleton that names them. Loading runs no code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from ..checkpoint import atomic_write, write_json


def _encode(x: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(x, Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = x.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(x, dict):
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in x.items()]}
    if isinstance(x, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in x]}
    if isinstance(x, list):
        return [_encode(v, tensors) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"cannot save a {type(x).__name__} in a training state file")


def _decode(x: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(x, list):
        return [_decode(v, tensors) for v in x]
    if isinstance(x, dict):
        if "__tensor__" in x:
            return tensors[x["__tensor__"]]
        if "__tuple__" in x:
            return tuple(_decode(v, tensors) for v in x["__tuple__"])
        if "__dict__" in x:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in x["__dict__"]}
        raise ValueError(f"unknown entry in a training state file: {sorted(x)}")
    return x


def save_state(state: Any, path: str | Path) -> None:
    """Write PATH.safetensors and PATH.json (each atomically)."""
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    skeleton = _encode(state, tensors)
    atomic_write(path.with_suffix(".safetensors"), lambda tmp: save_file(tensors, tmp))
    write_json(path.with_suffix(".json"), skeleton)


def load_state(path: str | Path) -> Any:
    """The state written by save_state."""
    path = Path(path)
    tensors = load_file(str(path.with_suffix(".safetensors")))
    return _decode(json.loads(path.with_suffix(".json").read_text()), tensors)


def state_exists(path: str | Path) -> bool:
    path = Path(path)
    return path.with_suffix(".json").is_file() and path.with_suffix(".safetensors").is_file()
