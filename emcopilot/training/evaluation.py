"""Validation metrics for the loops, through :mod:`emcopilot.metrics`.

Generator: SSIM, MS-SSIM and (when their weights are available) LPIPS between real and generated
validation images and FID between the two sets. Segmentor: mPA, mIoU, mDice (means over the background and particle classes),
precision and recall of the particle class, pooled over the validation images.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["image_scores", "lpips_metric", "fid_metric", "FidScorer", "segmentation_scores"]


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


def fid_metric(device: Any = None) -> Any | None:
    """An ``emcopilot.metrics.FidMetric`` (standard Inception features) on ``device``. It may be
    unavailable (``.available`` False, ``.reason`` says why: torch-fidelity or the
    ``fid_inception`` weights missing); None only when the metrics module lacks FidMetric."""
    m = _metrics()
    if m is None or not hasattr(m, "FidMetric"):
        return None
    try:
        return m.FidMetric(device=device)
    except Exception:  # FidMetric reports missing weights itself; anything else: no FID
        return None


class FidScorer:
    """FID of generated validation images against the fixed real validation set.

    The real images' features are extracted once (on the first :meth:`score`), the generated
    ones every call, and the distance is :func:`emcopilot.metrics.frechet_distance` (exact, cheap
    for small sets). ``available``/``reason`` mirror the metric; :meth:`score` returns None when
    it is unavailable, when either set has fewer than 2 images, or when extraction fails (the
    failure is kept in ``reason``, and FID is then skipped for the rest of the run).
    """

    def __init__(self, metric: Any | None) -> None:
        self.metric = metric
        self.available = bool(metric is not None and getattr(metric, "available", False))
        self.reason = "" if self.available else (
            getattr(metric, "reason", "") or "FID unavailable: emcopilot.metrics.FidMetric missing")
        self._real = None

    def _features(self, images: Sequence[np.ndarray], chunk: int = 16) -> Any:
        import torch

        return torch.cat([self.metric.features(np.stack(images[i:i + chunk]))
                          for i in range(0, len(images), chunk)])

    def score(self, real01: Sequence[np.ndarray], fake01: Sequence[np.ndarray]) -> float | None:
        """FID (>= 0, lower = closer) between real and generated images (each (H, W) float in
        [0, 1]); ``real01`` must be the same set on every call."""
        if not self.available or len(real01) < 2 or len(fake01) < 2:
            return None
        m = _metrics()
        try:
            if self._real is None:
                self._real = self._features(real01)
            fake = self._features(fake01)
            return _finite(m.frechet_distance(self._real, fake))
        except Exception as exc:  # never let a metric stop training
            self.available = False
            self.reason = f"FID failed: {' '.join(str(exc).split())[:200] or type(exc).__name__}"
            return None


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
