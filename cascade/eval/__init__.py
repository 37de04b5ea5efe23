"""Evaluation built in (`cascade eval`): metrics (CLIP score, Fréchet distance, CMMD, KID, PSNR,
SSIM), Inception-V3 FID features from a local weights file, the ShapeWorld judge suite and the
image–caption folder suite, per-stage metrics and sweeps, and reports (JSON, Markdown, figures).

Imported lazily, so that `cascade --help` does not pay for torch and open_clip.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "clip_score": "metrics", "clip_image_features": "metrics", "clip_text_features": "metrics",
    "frechet_distance": "metrics", "frechet_distance_from_stats": "metrics", "mmd2": "metrics", "cmmd": "metrics",
    "kid": "metrics", "psnr": "metrics", "ssim": "metrics", "retrieval_accuracy": "metrics",
    "InceptionFeatures": "inception", "find_weights": "inception",
    "pipeline_generator": "judging", "oracle_generator": "judging", "pipeline_varier": "judging",
    "oracle_varier": "judging", "plan_split": "judging", "shapeworld_items": "judging",
    "prior_suite": "per_stage", "super_resolution_suite": "per_stage", "guidance_sweep": "per_stage",
    "steps_sweep": "per_stage",
    "SuiteResult": "suites", "shapeworld_suite": "suites", "folder_suite": "suites",
    "write_report": "report",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
