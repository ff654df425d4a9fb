"""Segmentor output -> particles: threshold the probability map and split touching particles.

``prob_to_instances`` is the one place that turns a particle-probability map into an instance
label map (used by :class:`emcopilot.inference.Segmentor`, the CLI, the pipeline and the app).
``calibrate_threshold`` finds the probability threshold with the best Dice on pairs with known
masks: segmentor training records it for its validation pairs (synthetic in the label-free
pipeline). Measured on EMPS, a threshold calibrated on synthetic pairs did not transfer to the
real images (0.65 there, 0.5 better on the real ones), so inference uses it only when asked.
``select_min_peak`` picks the particle core probability (``prob_to_instances``'s ``min_peak``)
whose particles best match reference masks; against the coarse masks it needs no label, and the
pipeline records its choice in the segmentor checkpoint.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError
from .instances import binary_to_instances, remove_small_instances

__all__ = ["prob_to_instances", "calibrate_threshold", "otsu_threshold", "config_threshold",
           "select_min_peak", "keep_confident", "THRESHOLD_GRID", "MIN_PEAK_GRID"]

#: thresholds ``calibrate_threshold`` tries
THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.1, 0.91, 0.05))
#: particle core probabilities ``select_min_peak`` tries (None: every particle)
MIN_PEAK_GRID = (None, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


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
                      fill_holes: bool = False, opening: int = 0,
                      min_peak: float | None = None) -> np.ndarray:
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
        min_peak: keep only particles whose highest probability exceeds this (hysteresis: a
            particle needs a confident core; its extent still follows ``threshold``). None = all.
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
    labels = binary_to_instances(binary, min_distance=int(min_distance), h=float(h),
                                 min_area=int(min_area), prob=p if surface == "prob" else None)
    if min_peak is not None:
        labels = remove_small_instances(keep_confident(labels, _peaks(p, labels), min_peak), 1)
    return labels.astype(np.int32, copy=False)


def _peaks(prob: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Highest probability of each particle 1..N (index 0: background, 0)."""
    n = int(labels.max())
    peaks = np.zeros(n + 1, np.float32)
    if n:
        peaks[1:] = ndi.maximum(prob, labels, np.arange(1, n + 1))
    return peaks


def keep_confident(labels: np.ndarray, peaks: np.ndarray, min_peak: float) -> np.ndarray:
    """``labels`` without the particles whose peak probability (``peaks[id]``, see
    :func:`prob_to_instances`'s ``min_peak``) is not above ``min_peak``; ids are not renumbered."""
    keep = peaks > float(min_peak)
    keep[0] = False
    return np.where(keep[labels], labels, 0)


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


def select_min_peak(probs: Iterable[np.ndarray], references: Iterable[np.ndarray], *,
                    threshold: float = 0.5, grid: Iterable[float | None] = MIN_PEAK_GRID,
                    fill_holes: bool = False) -> dict:
    """The ``min_peak`` of :func:`prob_to_instances` whose particles best match reference label
    maps (object F1 at IoU 0.5, pooled over images; ties go to the smaller value).
    ``threshold`` and ``fill_holes`` as the particles will be made with.

    With the coarse masks as references this needs no manual label: measured on EMPS, the value
    with the best F1 against the coarse masks was, on each of four segmentors, the one with the
    best F1 against the manual labels among the values tried (BENCHMARKS.md, runs 6-8). Returns ``{"min_peak": value or None,
    "f1": {str(value): F1}}``.
    """
    from .metrics import match_instances

    grid = list(grid)
    counts = {str(g): [0, 0, 0] for g in grid}
    for prob, ref in zip(probs, references):
        p = np.asarray(prob, dtype=np.float32)
        base = prob_to_instances(p, threshold, fill_holes=fill_holes)  # each value only filters
        peaks = _peaks(p, base)
        for g in grid:
            m = match_instances(base if g is None else keep_confident(base, peaks, g), ref)
            c = counts[str(g)]
            c[0] += len(m.pairs)
            c[1] += len(m.pred_ids)
            c[2] += len(m.true_ids)
    f1 = {k: (2 * tp / (n_p + n_t) if n_p + n_t else 1.0) for k, (tp, n_p, n_t) in counts.items()}
    best = max(grid, key=lambda g: (round(f1[str(g)], 12), -(g or 0.0)))
    return {"min_peak": best, "f1": {k: round(v, 4) for k, v in f1.items()}}
