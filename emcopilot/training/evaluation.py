"""Validation metrics for the loops, through :mod:`emcopilot.metrics`.

Generator: SSIM, MS-SSIM and (when its weights are available) LPIPS between real and generated
validation images. Segmentor: mPA, mIoU, mDice (means over the background and particle classes),
precision and recall of the particle class, pooled over the validation images.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["image_scores", "lpips_metric", "segmentation_scores"]


def _metrics():
    try:
        from .. import metrics
    except ImportError:  # pragma: no cover - metrics.py is part of the package
        return None
    return metrics


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def image_scores(real01: np.ndarray, fake01: np.ndarray) -> dict[str, float | None]:
    """SSIM and MS-SSIM of one generated image against the real one (both float in [0, 1]).
    MS-SSIM is None when the image is too small for its five scales."""
    m = _metrics()
    out: dict[str, float | None] = {}
    try:
        out["ssim"] = _finite(m.ssim(real01, fake01))
    except Exception:  # metrics.ssim missing or failing: scikit-image's definition
        from skimage.metrics import structural_similarity

        out["ssim"] = _finite(structural_similarity(real01, fake01, data_range=1.0))
    try:
        out["ms_ssim"] = _finite(m.ms_ssim(real01, fake01))
    except Exception:
        try:
            import torch
            from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

            out["ms_ssim"] = _finite(multiscale_structural_similarity_index_measure(
                torch.from_numpy(fake01)[None, None], torch.from_numpy(real01)[None, None],
                data_range=1.0))
        except Exception:  # too small for its five scales
            out["ms_ssim"] = None
    return out


def lpips_metric() -> Any | None:
    """An LPIPS scorer with ``.compute(a01, b01) -> float | None`` when its weights are on this
    machine, else None."""
    m = _metrics()
    if m is None or not hasattr(m, "LpipsMetric"):
        return None
    try:
        metric = m.LpipsMetric()
    except Exception:
        return None
    return metric if getattr(metric, "available", False) else None


def _confusion(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    p, t = pred.astype(bool).ravel(), truth.astype(bool).ravel()
    tp = np.count_nonzero(p & t)
    fp = np.count_nonzero(p & ~t)
    fn = np.count_nonzero(~p & t)
    tn = p.size - tp - fp - fn
    return np.array([tp, fp, fn, tn], dtype=np.int64)


def segmentation_scores(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]
                        ) -> dict[str, float]:
    """mPA, mIoU, mDice, precision, recall, accuracy of binary predictions, pooled over images.

    Uses ``emcopilot.metrics.pixel_scores``/``mean_class_scores`` when they are present, with the
    same definitions computed here otherwise (per class c in {background, particle}:
    PA_c = TP_c / (TP_c + FN_c), IoU_c = TP_c / (TP_c + FP_c + FN_c), Dice_c = 2 TP_c /
    (2 TP_c + FP_c + FN_c); m* = mean over the two classes).
    """
    m = _metrics()
    if m is not None and hasattr(m, "pixel_scores") and hasattr(m, "mean_class_scores"):
        try:
            pred_all = np.concatenate([np.asarray(p, bool).ravel() for p in preds])
            truth_all = np.concatenate([np.asarray(t, bool).ravel() for t in truths])
            px = m.pixel_scores(pred_all[None], truth_all[None])
            mc = m.mean_class_scores(pred_all[None], truth_all[None])
            out = {}
            for src, dst in (("mPA", "mPA"), ("mIoU", "mIoU"), ("mDice", "mDice"),
                             ("precision", "precision"), ("recall", "recall")):
                for d in (mc, px):
                    if isinstance(d, dict) and src in d:
                        out[dst] = float(d[src])
                        break
            if {"mPA", "mIoU", "mDice", "precision", "recall"} <= set(out):
                return out
        except Exception:
            pass  # fall back to the definitions below
    tp, fp, fn, tn = sum((_confusion(p, t) for p, t in zip(preds, truths)),
                         np.zeros(4, np.int64)).astype(np.float64)

    def ratio(a: float, b: float) -> float:
        return float(a / b) if b > 0 else 1.0

    pa = [ratio(tn, tn + fp), ratio(tp, tp + fn)]
    iou = [ratio(tn, tn + fn + fp), ratio(tp, tp + fp + fn)]
    dice = [ratio(2 * tn, 2 * tn + fn + fp), ratio(2 * tp, 2 * tp + fp + fn)]
    return {"mPA": float(np.mean(pa)), "mIoU": float(np.mean(iou)), "mDice": float(np.mean(dice)),
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "accuracy": ratio(tp + tn, tp + tn + fp + fn)}
