"""Training: one accelerate-based trainer for every stage (`cascade train STAGE ...`).

Imported lazily, so that `cascade --help` does not pay for torch, open_clip and accelerate.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "STAGES": "config", "TrainConfig": "config", "train_config_from_table": "config",
    "EMA": "ema",
    "TrainResult": "trainer", "Trainer": "trainer", "check_request": "trainer", "latest_checkpoint": "trainer",
    "read_loss_csv": "trainer", "train": "trainer",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
