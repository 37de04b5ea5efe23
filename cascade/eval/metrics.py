"""Image-generation metrics: CLIP score, Fréchet distance, CMMD, KID, retrieval, PSNR, SSIM.

Feature-set metrics take two feature matrices (N, D) and (M, D) (numpy or torch) and compute
in float64 numpy, so that they do not depend on the device or dtype the features came from.
Images are (B, 3, H, W) float tensors in [-1, 1], as the pipeline returns them.

- CLIP score: 100 · max(cos(text, image), 0) per pair, as torchmetrics' CLIPScore
  (Hessel et al. 2021 weight it by 2.5 instead; the clamp only matters for unrelated pairs).
- Fréchet distance (Heusel et al. 2017): ‖μ₁−μ₂‖² + tr(C₁ + C₂ − 2 (C₁^½ C₂ C₁^½)^½), with the
  trace of the root taken from the eigenvalues of the symmetric PSD matrix C₁^½ C₂ C₁^½ (equal
  to tr (C₁C₂)^½, but real and stable where scipy's sqrtm of the non-symmetric C₁C₂ is not).
- CMMD (Jayasumana et al. 2024, "Rethinking FID"): MMD² between CLIP embeddings with the
  Gaussian RBF kernel k(x, y) = exp(−‖x−y‖² / 2σ²), σ = 10, times 1000. The paper calls its
  estimator unbiased; its reference code (google-research/cmmd/distance.py) takes plain means
  over every pair, the biased (V-statistic, minimum-variance) estimate. `mmd2(unbiased=True)`
  leaves the diagonals out of the within-set means (Gretton et al. 2012, eq. 3); the reports
  give `cmmd` (unbiased, can be slightly negative) and `cmmd_biased` (the reference code's
  number, exactly 0 for a set against itself).
- KID (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel (x·y/D + 1)³,
  averaged over random subsets.
- PSNR and SSIM (Wang et al. 2004: 11×11 Gaussian window, σ 1.5, K₁ 0.01, K₂ 0.03, valid
  positions only) on images mapped to [0, 1], per RGB channel then averaged, one value per image.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CMMD_SIGMA", "CMMD_SCALE", "clip_image_features", "clip_text_features", "clip_score",
    "feature_stats", "frechet_distance", "frechet_distance_from_stats", "mmd2", "cmmd", "kid",
    "retrieval_accuracy", "psnr", "ssim", "quantize",
]

CMMD_SIGMA = 10.0     # the RBF bandwidth of Jayasumana et al. 2024
CMMD_SCALE = 1000.0   # their reporting scale


# ---------------------------------------------------------------------------- features
def _as_array(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be a matrix (N, D), got shape {x.shape}")
    return x


def quantize(images: Tensor) -> Tensor:
    """Images in [-1, 1] rounded to the 256 levels a saved PNG keeps (what a user gets)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


@torch.no_grad()
def clip_image_features(clip: Any, images: Tensor | Sequence[Any], batch_size: int = 64) -> Tensor:
    """Normalised CLIP image embeddings (N, D) float32 on the CPU, of a (N, 3, H, W) tensor in
    [-1, 1] or a list of PIL images, through cascade's CLIP wrapper (any open_clip model)."""
    out = [clip.encode_image(images[i:i + batch_size]).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, clip.embed_dim)


@torch.no_grad()
def clip_text_features(clip: Any, prompts: Sequence[str], batch_size: int = 256) -> Tensor:
    """Normalised CLIP text embeddings (N, D) float32 on the CPU."""
    prompts = list(prompts)
    out = [clip.encode_text(prompts[i:i + batch_size], with_tokens=False).embed.float().cpu()
           for i in range(0, len(prompts), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, clip.embed_dim)


def clip_score(image_features: Any, text_features: Any, clamp: bool = True) -> np.ndarray:
    """Per-pair CLIP score (N,): 100 · cos(image_i, text_i), clamped at 0 unless `clamp=False`."""
    a, b = _as_array(image_features), _as_array(text_features)
    if a.shape != b.shape:
        raise ValueError(f"clip_score: {a.shape[0]} images against {b.shape[0]} texts")
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return 100.0 * (np.maximum(cos, 0.0) if clamp else cos)


# ---------------------------------------------------------------------------- Fréchet
def feature_stats(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) (unbiased, N − 1) of features (N, D), N ≥ 2."""
    x = _as_array(x)
    if x.shape[0] < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 feature vectors per set, got {x.shape[0]}")
    return x.mean(0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((c + c.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(mu1: Any, cov1: Any, mu2: Any, cov2: Any) -> float:
    """Fréchet (2-Wasserstein²) distance between N(mu1, cov1) and N(mu2, cov2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: means {mu1.shape}, {mu2.shape}; covariances {cov1.shape}, {cov2.shape}")
    s1 = _sqrt_psd(cov1)
    middle = s1 @ cov2 @ s1
    tr_root = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())
    diff = mu1 - mu2
    return max(float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_root), 0.0)


def frechet_distance(x: Any, y: Any) -> float:
    """Fréchet distance between Gaussians fitted to feature sets x (N, D) and y (M, D)."""
    return frechet_distance_from_stats(*feature_stats(x), *feature_stats(y))


# ---------------------------------------------------------------------------- MMD
def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def _mmd2_from_kernels(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray, unbiased: bool) -> float:
    n, m = kxx.shape[0], kyy.shape[0]
    if unbiased:
        if n < 2 or m < 2:
            raise ValueError(f"the unbiased MMD needs at least 2 samples per set, got {n} and {m}")
        xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    else:
        xx, yy = kxx.mean(), kyy.mean()
    return float(xx + yy - 2.0 * kxy.mean())


def mmd2(x: Any, y: Any, sigma: float = CMMD_SIGMA, unbiased: bool = True) -> float:
    """Squared MMD between x (N, D) and y (M, D), Gaussian RBF kernel exp(−‖a−b‖²/2σ²)."""
    x, y = _as_array(x), _as_array(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} and {y.shape[1]}")
    gamma = 1.0 / (2.0 * sigma * sigma)
    k = lambda a, b: np.exp(-gamma * _sq_dists(a, b))  # noqa: E731
    return _mmd2_from_kernels(k(x, x), k(y, y), k(x, y), unbiased)


def cmmd(x: Any, y: Any, unbiased: bool = True) -> float:
    """CMMD: 1000 · MMD² (σ = 10) between CLIP embeddings x and y (see the module docstring)."""
    return CMMD_SCALE * mmd2(x, y, CMMD_SIGMA, unbiased)


def kid(x: Any, y: Any, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std over `subsets` random subsets of the unbiased MMD²
    with the kernel (a·b/D + 1)³; subsets are as large as the smaller set allows."""
    x, y = _as_array(x), _as_array(y)
    size = min(subset_size, x.shape[0], y.shape[0])
    if size < 2:
        raise ValueError("KID needs at least 2 samples per set")
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    vals = []
    for _ in range(subsets):
        a = x[rng.choice(x.shape[0], size, replace=False)]
        b = y[rng.choice(y.shape[0], size, replace=False)]
        vals.append(_mmd2_from_kernels(k(a, a), k(b, b), k(a, b), unbiased=True))
    return float(np.mean(vals)), float(np.std(vals))


# ---------------------------------------------------------------------------- retrieval
def retrieval_accuracy(text_features: Any, image_features: Any, labels: Sequence[Any] | None = None) -> dict:
    """Top-1 retrieval among the N pairs: text→image (each text's best image is its own) and
    image→text. With `labels`, a retrieved item with the query's label counts as right (two
    pairs with the same caption are interchangeable)."""
    t, v = _as_array(text_features), _as_array(image_features)
    sim = t @ v.T                                            # (N texts, N images)
    labels = list(range(len(t))) if labels is None else list(labels)
    ids: dict[Any, int] = {}
    lab = np.array([ids.setdefault(x, len(ids)) for x in labels])
    t2i = float(np.mean(lab[sim.argmax(1)] == lab))
    i2t = float(np.mean(lab[sim.argmax(0)] == lab))
    return {"text_to_image": t2i, "image_to_text": i2t}


# ---------------------------------------------------------------------------- pixels
def _unit(x: Tensor) -> Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
    return (x.double().clamp(-1, 1) + 1) / 2


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """PSNR in dB (B,) between images in [-1, 1] (peak = the full range); inf where identical."""
    a, b = _unit(x), _unit(y)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(a.shape)} and {tuple(b.shape)}")
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return torch.where(mse > 0, -10.0 * torch.log10(mse.clamp_min(1e-300)), torch.full_like(mse, math.inf))


def _gaussian_window(size: int, sigma: float) -> Tensor:
    g = torch.exp(-0.5 * ((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) / sigma) ** 2)
    return g / g.sum()


def ssim(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Mean SSIM (B,) between images in [-1, 1], computed on [0, 1] (Wang et al. 2004)."""
    a, b = _unit(x), _unit(y)
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ, {tuple(a.shape)} and {tuple(b.shape)}")
    B, C, H, W = a.shape
    if min(H, W) < window:
        raise ValueError(f"ssim: images of {H}×{W} are smaller than the {window}×{window} window")
    g = _gaussian_window(window, sigma)
    gh, gv = g.view(1, 1, 1, -1).repeat(C, 1, 1, 1), g.view(1, 1, -1, 1).repeat(C, 1, 1, 1)

    def blur(t: Tensor) -> Tensor:  # separable Gaussian, valid positions only
        return F.conv2d(F.conv2d(t, gh, groups=C), gv, groups=C)

    c1, c2 = k1 ** 2, k2 ** 2   # data range 1
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)
