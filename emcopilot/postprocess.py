"""Segmentor output -> particles: threshold the probability map and split touching particles.

``prob_to_instances`` is the one place that turns a particle-probability map into an instance
label map (used by :class:`emcopilot.inference.Segmentor`, the CLI, the pipeline and the app).
``calibrate_threshold`` finds the probability threshold with the best Dice on pairs with known
masks: segmentor training records it for its validation pairs (synthetic in the label-free
pipeline). Measured on EMPS, a threshold calibrated on synthetic pairs did not transfer to the
real images (0.65 there, 0.5 better on the real ones), so inference uses it only when asked.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError
from .instances import binary_to_instances

__all__ = ["prob_to_instances", "calibrate_threshold", "otsu_threshold", "config_threshold",
           "THRESHOLD_GRID"]

#: thresholds ``calibrate_threshold`` tries
THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.1, 0.91, 0.05))


def config_threshold(checkpoint_config: dict, key: str = "calibrated_threshold") -> float | None:
    """A probability threshold recorded in a checkpoint's config.json (its ``config`` section):
    ``"threshold"`` (the default used at inference) or ``"calibrated_threshold"``; None when
    absent or not in (0, 1)."""
    t = (checkpoint_config or {}).get("config", {}).get(key)
    try:
        t = float(t)
    except (TypeError, ValueError):
        return None
    return t if 0.0 < t < 1.0 else None


def otsu_threshold(prob: np.ndarray, lo: float = 0.1, hi: float = 0.9) -> float:
    """Otsu's threshold of a probability map, clipped to [lo, hi] (a map with no particles would
    otherwise put the threshold inside the background noise)."""
    from skimage.filters import threshold_otsu

    p = np.asarray(prob, dtype=np.float32)
    if p.size == 0 or float(p.max()) - float(p.min()) < 1e-6:
        return 0.5
    return float(np.clip(threshold_otsu(p), lo, hi))


def prob_to_instances(prob: np.ndarray, threshold: float | str = 0.5, *, min_distance: int = 3,
                      h: float = 2.0, min_area: int = 10, surface: str = "prob",
                      fill_holes: bool = False, opening: int = 0) -> np.ndarray:
    """Instance label map (int32, 0 = background) from a particle-probability map in [0, 1].

    Args:
        prob: 2-D float map.
        threshold: pixels with probability > threshold are particles; ``"otsu"`` picks it per
            image (:func:`otsu_threshold`).
        min_distance, h, min_area: splitting of touching particles, see
            :func:`emcopilot.instances.binary_to_instances` (``min_distance`` 0: no splitting).
        surface: ``"prob"`` floods the inverted probability (boundaries follow the network's
            valleys), ``"distance"`` the inverted distance transform.
        fill_holes: fill holes inside particles (hollow shells, specular centres).
        opening: radius in px of a binary opening before labelling (removes 1-2 px bridges and
            speckle); 0 = none.
    """
    p = np.asarray(prob, dtype=np.float32)
    if p.ndim != 2:
        raise InputError(f"probability map must be 2-D, got shape {p.shape}")
    p = np.nan_to_num(p, nan=0.0)
    if isinstance(threshold, str):
        if threshold != "otsu":
            raise InputError(f"threshold must be a number or 'otsu', got {threshold!r}")
        thr = otsu_threshold(p)
    else:
        thr = float(threshold)
    binary = p > thr
    if opening > 0:
        r = int(opening)
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        binary = ndi.binary_opening(binary, structure=(yy * yy + xx * xx) <= r * r)
    if fill_holes:
        binary = ndi.binary_fill_holes(binary)
    if surface not in ("prob", "distance"):
        raise InputError(f"surface must be 'prob' or 'distance', got {surface!r}")
    return binary_to_instances(binary, min_distance=int(min_distance), h=float(h),
                               min_area=int(min_area),
                               prob=p if surface == "prob" else None).astype(np.int32, copy=False)


def calibrate_threshold(probs: Iterable[np.ndarray], truths: Iterable[np.ndarray],
                        grid: Iterable[float] = THRESHOLD_GRID) -> dict:
    """The threshold with the best mean per-image Dice of ``prob > t`` against ``truth > 0``.

    Returns ``{"threshold": t, "dice": best mean Dice, "dice_at_0.5": ..., "grid": {t: dice}}``.
    Ties go to the threshold closest to 0.5.
    """
    grid = np.asarray(sorted(float(t) for t in grid), dtype=np.float32)
    sums = np.zeros(len(grid), np.float64)
    n = 0
    for prob, truth in zip(probs, truths):
        p = np.asarray(prob, dtype=np.float32).ravel()
        t = np.asarray(truth).ravel() > 0
        n_true = int(t.sum())
        # counts of predicted and true-positive pixels above each threshold, via sorting
        order = np.sort(p)
        pos = np.sort(p[t])
        n_pred = p.size - np.searchsorted(order, grid, side="right")
        n_tp = pos.size - np.searchsorted(pos, grid, side="right")
        den = n_pred + n_true
        sums += np.where(den > 0, 2.0 * n_tp / np.maximum(den, 1), 1.0)
        n += 1
    if n == 0:
        return {"threshold": 0.5, "dice": None, "dice_at_0.5": None, "grid": {}}
    dice = sums / n
    best = float(dice.max())
    cands = np.flatnonzero(dice >= best - 1e-9)
    k = int(cands[np.argmin(np.abs(grid[cands] - 0.5))])
    at05 = np.flatnonzero(np.isclose(grid, 0.5))
    return {"threshold": round(float(grid[k]), 2), "dice": best,
            "dice_at_0.5": float(dice[at05[0]]) if at05.size else None,
            "grid": {f"{g:.2f}": round(float(d), 4) for g, d in zip(grid, dice)}}
