"""Segmentation, object and image metrics.

Segmentation and object metrics are plain numpy functions over 2-D arrays (label maps, binary
masks or probability maps); torch tensors are accepted too (moved to the CPU). Image metrics
(SSIM, MS-SSIM, LPIPS, FID, KID) use torch / torchmetrics / lpips.

Conventions
-----------
- Foreground: ``label > 0`` for integer and boolean arrays; ``value >= 0.5`` for float arrays
  (so float label maps and probability maps both work).
- A ratio whose denominator is 0 is 1.0 when prediction and truth are both empty (nothing to
  find, nothing found) and 0.0 otherwise; "empty vs empty" therefore scores a perfect 1.0.
- Values that are undefined (e.g. the mean IoU of zero matches, ROC AUC of a one-class truth)
  are ``float("nan")``.

>>> import numpy as np
>>> truth = np.zeros((8, 8), np.int32); truth[2:6, 2:6] = 1
>>> pixel_scores(truth, truth)["dice"]
1.0
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "foreground",
    "pixel_scores",
    "mean_class_scores",
    "InstanceMatch",
    "match_instances",
    "object_scores",
    "scores_from_match",
    "probability_scores",
    "ssim",
    "ms_ssim",
    "MS_SSIM_BETAS",
    "ms_ssim_config",
    "LpipsMetric",
    "FidMetric",
    "KidMetric",
    "frechet_distance",
]


# --------------------------------------------------------------------------- helpers

def _as_numpy(a: Any) -> np.ndarray:
    """numpy view of an array-like or a torch tensor (detached, on the CPU)."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _squeeze2d(a: np.ndarray, what: str) -> np.ndarray:
    if a.ndim > 2:
        a = np.squeeze(a)
    if a.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (H, W), got shape {a.shape}")
    return a


def foreground(a: Any, threshold: float = 0.5) -> np.ndarray:
    """Boolean particle mask of a label map, binary mask or probability map.

    Integer/boolean input: ``a > 0``. Float input: ``a >= threshold`` (probabilities in [0, 1];
    float-typed label maps with ids 1, 2, ... also pass).
    """
    a = _as_numpy(a)
    if a.dtype == bool:
        return a
    if a.dtype.kind == "f":
        return a >= threshold
    return a > 0


def _ratio(num: float, den: float, both_empty: bool) -> float:
    if den > 0:
        return float(num) / float(den)
    return 1.0 if both_empty else 0.0


def _confusion(pred: Any, truth: Any) -> tuple[int, int, int, int]:
    p = _squeeze2d(foreground(pred), "pred")
    t = _squeeze2d(foreground(truth), "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred and truth shapes differ: {p.shape} vs {t.shape}")
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    tn = int(p.size - tp - fp - fn)
    return tp, fp, fn, tn


# --------------------------------------------------------------------------- pixel metrics

def pixel_scores(pred: Any, truth: Any) -> dict[str, float]:
    """Foreground (particle) pixel scores of a prediction against the truth.

    Args:
        pred, truth: 2-D label maps, binary masks or probability maps of the same shape
            (foreground as in :func:`foreground`).

    Returns:
        dict with ``dice`` = 2TP/(2TP+FP+FN), ``iou`` = TP/(TP+FP+FN), ``precision`` =
        TP/(TP+FP), ``recall`` = TP/(TP+FN), ``pixel_accuracy`` = (TP+TN)/N, and the raw
        counts ``tp``, ``fp``, ``fn``, ``tn`` (pixels). Empty vs empty scores 1.0 everywhere;
        a zero denominator otherwise gives 0.0.
    """
    tp, fp, fn, tn = _confusion(pred, truth)
    empty = (tp + fp + fn) == 0
    n = tp + fp + fn + tn
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, empty),
        "iou": _ratio(tp, tp + fp + fn, empty),
        "precision": _ratio(tp, tp + fp, empty),
        "recall": _ratio(tp, tp + fn, empty),
        "pixel_accuracy": _ratio(tp + tn, n, True),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def mean_class_scores(pred: Any, truth: Any) -> dict[str, float]:
    """Class-averaged scores over the two classes background and particle (the paper's
    segmentor metrics mPA, mIoU, mDice).

    For each class c: PA_c = TP_c / (TP_c + FN_c) (class pixel accuracy = recall of c),
    IoU_c = TP_c / (TP_c + FP_c + FN_c), Dice_c = 2 TP_c / (2 TP_c + FP_c + FN_c); a class
    absent from both prediction and truth scores 1.0. mPA, mIoU, mDice are the means over the
    two classes. Per-class values are returned too (``pa_background``, ``iou_particle``, ...).
    """
    tp, fp, fn, tn = _confusion(pred, truth)
    out: dict[str, float] = {}
    # particle class: (tp, fp, fn); background class: roles swap -> (tn, fn, fp)
    for name, (a, b, c) in (("background", (tn, fn, fp)), ("particle", (tp, fp, fn))):
        empty = (a + b + c) == 0
        out[f"pa_{name}"] = _ratio(a, a + c, empty)
        out[f"iou_{name}"] = _ratio(a, a + b + c, empty)
        out[f"dice_{name}"] = _ratio(2 * a, 2 * a + b + c, empty)
    out["mPA"] = (out["pa_background"] + out["pa_particle"]) / 2
    out["mIoU"] = (out["iou_background"] + out["iou_particle"]) / 2
    out["mDice"] = (out["dice_background"] + out["dice_particle"]) / 2
    return out


# --------------------------------------------------------------------------- object metrics

def _dense_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relabel to 0..n (0 stays background). Returns (dense map, original ids (n,), areas (n,))."""
    lab = labels.ravel()
    if lab.dtype.kind == "b":
        lab = lab.astype(np.int64)
    if lab.dtype.kind == "f":
        if lab.size and not np.all(lab == np.round(lab)):
            raise ValueError("label maps must hold integer ids")
        lab = lab.astype(np.int64)
    if lab.size and lab.min() < 0:
        raise ValueError("label maps must not hold negative ids")
    mx = int(lab.max()) if lab.size else 0
    if mx <= 4 * lab.size + 65536:
        counts = np.bincount(lab, minlength=mx + 1)
        ids = np.flatnonzero(counts)
        ids = ids[ids > 0]
        lut = np.zeros(mx + 1, dtype=np.int64)
        lut[ids] = np.arange(1, len(ids) + 1)
        dense = lut[lab]
        areas = counts[ids]
    else:  # huge sparse ids: sort-based
        uniq, inv, cnt = np.unique(lab, return_inverse=True, return_counts=True)
        if uniq[0] == 0:
            dense, ids, areas = inv.astype(np.int64), uniq[1:], cnt[1:]
        else:
            dense, ids, areas = inv.astype(np.int64) + 1, uniq, cnt
    return dense, ids.astype(np.int64), areas.astype(np.int64)


@dataclass
class InstanceMatch:
    """Result of :func:`match_instances`.

    Attributes:
        pred_ids, true_ids: original instance ids present in each map (sorted).
        pred_areas, true_areas: their areas in pixels (same order).
        pairs: (m, 2) int array of matched (index into pred_ids, index into true_ids).
        pair_iou: (m,) IoU of each matched pair.
    """

    pred_ids: np.ndarray
    true_ids: np.ndarray
    pred_areas: np.ndarray
    true_areas: np.ndarray
    pairs: np.ndarray
    pair_iou: np.ndarray


def _overlaps(pd: np.ndarray, td: np.ndarray, n_p: int, n_t: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency of label pairs (both > 0): (pred index, true index, pixels)."""
    both = (pd > 0) & (td > 0)
    p = pd[both] - 1
    t = td[both] - 1
    if p.size == 0:
        z = np.zeros(0, np.int64)
        return z, z, z
    code = p * n_t + t
    if n_p * n_t <= 8_000_000:
        counts = np.bincount(code, minlength=n_p * n_t)
        nz = np.flatnonzero(counts)
        return nz // n_t, nz % n_t, counts[nz]
    uniq, cnt = np.unique(code, return_counts=True)
    return uniq // n_t, uniq % n_t, cnt


def match_instances(pred_labels: Any, truth_labels: Any, iou_threshold: float = 0.5
                    ) -> InstanceMatch:
    """One-to-one matching of predicted and true instances by IoU.

    The IoU of every overlapping pair comes from the joint histogram of the two label maps
    (O(pixels), no per-pair masks). The assignment is optimal (Hungarian,
    ``scipy.optimize.linear_sum_assignment``) over the pairs with IoU >= ``iou_threshold``:
    it maximises first the number of matches, then their summed IoU. For thresholds >= 0.5 a
    pair is unique anyway (two instances cannot both overlap a third by more than half).

    Args:
        pred_labels, truth_labels: 2-D instance label maps (0 = background), same shape.
            A binary mask counts as one instance; use connected components first if needed.
        iou_threshold: minimum IoU of a match, in (0, 1].
    """
    from scipy.optimize import linear_sum_assignment

    pa = _squeeze2d(_as_numpy(pred_labels), "pred_labels")
    ta = _squeeze2d(_as_numpy(truth_labels), "truth_labels")
    if pa.shape != ta.shape:
        raise ValueError(f"pred and truth shapes differ: {pa.shape} vs {ta.shape}")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    pd, pids, pareas = _dense_ids(pa)
    td, tids, tareas = _dense_ids(ta)
    n_p, n_t = len(pids), len(tids)
    empty_pairs = np.zeros((0, 2), np.int64)
    result = InstanceMatch(pids, tids, pareas, tareas, empty_pairs, np.zeros(0))
    if n_p == 0 or n_t == 0:
        return result
    pi, ti, inter = _overlaps(pd, td, n_p, n_t)
    union = pareas[pi] + tareas[ti] - inter
    iou = inter / union
    keep = iou >= iou_threshold - 1e-12
    pi, ti, iou = pi[keep], ti[keep], iou[keep]
    if pi.size == 0:
        return result
    # Hungarian on the sub-matrix of candidates only
    rows, r_inv = np.unique(pi, return_inverse=True)
    cols, c_inv = np.unique(ti, return_inverse=True)
    k = float(min(len(rows), len(cols)) + 1)  # > any match count: count first, then IoU
    w = np.zeros((len(rows), len(cols)))
    w[r_inv, c_inv] = k + iou
    r, c = linear_sum_assignment(w, maximize=True)
    ok = w[r, c] > 0
    r, c = r[ok], c[ok]
    result.pairs = np.stack([rows[r], cols[c]], axis=1).astype(np.int64)
    result.pair_iou = w[r, c] - k
    return result


def object_scores(pred_labels: Any, truth_labels: Any, iou_threshold: float = 0.5
                  ) -> dict[str, float]:
    """Instance detection scores: one-to-one matches with IoU >= ``iou_threshold``.

    Returns:
        dict with ``tp`` (matches), ``fp`` (unmatched predictions), ``fn`` (unmatched true
        instances), ``precision`` = tp/n_pred, ``recall`` = tp/n_true, ``f1`` =
        2 tp/(n_pred + n_true) (1.0 when both are 0, 0.0 when only one is), ``mean_matched_iou``
        (nan without matches), ``n_pred``, ``n_true``, ``count_error`` = n_pred - n_true and
        ``relative_count_error`` = (n_pred - n_true) / n_true (0.0 when both are 0, nan when
        only n_true is 0).

    Fast: ~300 instances on a 2048x2048 map take a fraction of a second (see
    :func:`match_instances`).
    """
    return scores_from_match(match_instances(pred_labels, truth_labels, iou_threshold))


def scores_from_match(m: InstanceMatch) -> dict[str, float]:
    """The :func:`object_scores` dict of an existing :class:`InstanceMatch`."""
    n_pred, n_true, tp = len(m.pred_ids), len(m.true_ids), len(m.pairs)
    both_empty = n_pred == 0 and n_true == 0
    if n_true > 0:
        rel = (n_pred - n_true) / n_true
    else:
        rel = 0.0 if n_pred == 0 else float("nan")
    return {
        "tp": tp,
        "fp": n_pred - tp,
        "fn": n_true - tp,
        "precision": _ratio(tp, n_pred, both_empty),
        "recall": _ratio(tp, n_true, both_empty),
        "f1": _ratio(2 * tp, n_pred + n_true, both_empty),
        "mean_matched_iou": float(np.mean(m.pair_iou)) if tp else float("nan"),
        "n_pred": n_pred,
        "n_true": n_true,
        "count_error": n_pred - n_true,
        "relative_count_error": float(rel),
    }


# --------------------------------------------------------------------------- probability metrics

def probability_scores(prob: Any, truth: Any, max_pixels: int = 1_000_000, seed: int = 0
                       ) -> dict[str, float]:
    """Threshold-free scores of a particle-probability map against the truth.

    Args:
        prob: 2-D particle probabilities in [0, 1] (floats; other values are clipped).
        truth: 2-D label map or binary mask (foreground = > 0).
        max_pixels: images with more pixels are scored on a deterministic random subset of this
            many pixels (``numpy.random.default_rng(seed)``), to bound time and memory.

    Returns:
        dict with ``auc`` (ROC AUC, torchmetrics ``binary_auroc``) and ``ap`` (average
        precision, ``binary_average_precision``); both nan when the truth holds one class only.
    """
    import torch
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision

    p = _squeeze2d(_as_numpy(prob), "prob").astype(np.float32, copy=False)
    t = _squeeze2d(foreground(truth), "truth")
    if p.shape != t.shape:
        raise ValueError(f"prob and truth shapes differ: {p.shape} vs {t.shape}")
    p = np.clip(np.nan_to_num(p.ravel(), nan=0.0), 0.0, 1.0)
    t = t.ravel()
    if p.size > max_pixels:
        idx = np.sort(np.random.default_rng(seed).choice(p.size, size=max_pixels, replace=False))
        p, t = p[idx], t[idx]
    n_pos = int(t.sum())
    if n_pos == 0 or n_pos == t.size:
        return {"auc": float("nan"), "ap": float("nan")}
    pt = torch.from_numpy(np.ascontiguousarray(p))
    tt = torch.from_numpy(t.astype(np.int64))
    return {"auc": float(binary_auroc(pt, tt, validate_args=False)),
            "ap": float(binary_average_precision(pt, tt, validate_args=False))}


# --------------------------------------------------------------------------- image metrics

#: Wang et al. (2003) MS-SSIM scale weights (torchmetrics' default), finest scale first.
MS_SSIM_BETAS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _to_nchw(a: Any, what: str = "image"):
    """float32 tensor (N, C, H, W) from an (H, W), (N, H, W) or (N, C, H, W) array or tensor.

    A 3-D input is read as a batch of grey images (N, H, W), the library's convention.
    """
    import torch

    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(_as_numpy(a)))
    t = t.detach()
    if t.dtype == torch.bool:
        t = t.float()
    elif not torch.is_floating_point(t):
        raise ValueError(f"{what} must hold floats in [0, 1], got dtype {t.dtype}")
    t = t.float()
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[:, None]
    elif t.ndim != 4:
        raise ValueError(f"{what} must have shape (H, W), (N, H, W) or (N, C, H, W), "
                         f"got {tuple(t.shape)}")
    return t


def _pair(a: Any, b: Any):
    ta, tb = _to_nchw(a, "a"), _to_nchw(b, "b")
    if ta.shape != tb.shape:
        raise ValueError(f"images differ in shape: {tuple(ta.shape)} vs {tuple(tb.shape)}")
    return ta, tb.to(ta.device)


def ssim(a: Any, b: Any, *, kernel_size: int = 11, sigma: float = 1.5) -> float:
    """Structural similarity of two images in [0, 1] (data range 1), mean over the batch.

    Args:
        a, b: float images, (H, W), (N, H, W) or (N, C, H, W) arrays or tensors of one shape.
        kernel_size, sigma: Gaussian window (pixels), the usual 11 / 1.5.

    Returns 1.0 for identical images; lower is less similar (torchmetrics
    ``structural_similarity_index_measure``).
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    ta, tb = _pair(a, b)
    k = min(kernel_size, _largest_odd(min(ta.shape[-2:])))
    return float(structural_similarity_index_measure(ta, tb, data_range=1.0, kernel_size=k,
                                                     sigma=sigma))


def _largest_odd(n: int) -> int:
    return max(1, n if n % 2 else n - 1)


def ms_ssim_config(height: int, width: int, kernel_size: int = 11
                   ) -> tuple[int, tuple[float, ...]]:
    """Kernel size and betas (scale weights) that :func:`ms_ssim` uses for an image size.

    torchmetrics needs ``min(H, W) // (n_scales - 1)**2 > kernel_size - 1`` and
    ``min(H, W) >= 2**n_scales``. With the standard 11-px window all five scales fit from
    176 px on, so 256 px images use the standard MS-SSIM (5 scales, :data:`MS_SSIM_BETAS`).
    Smaller images drop the coarsest scales (the remaining betas are renormalised to sum to 1)
    and, below that, shrink the window to the largest odd size that fits.
    """
    side = min(height, width)

    def fits(n: int, k: int) -> bool:
        return side >= 2 ** n and side // max(1, n - 1) ** 2 > k - 1

    for n in range(len(MS_SSIM_BETAS), 0, -1):
        if fits(n, kernel_size):
            k = kernel_size
            break
    else:
        n = 1
        k = _largest_odd(min(kernel_size, side))
        while k > 1 and not fits(n, k):
            k -= 2
        if not fits(n, k):
            raise ValueError(f"image of {height}x{width} px is too small for MS-SSIM")
    betas = MS_SSIM_BETAS[:n]
    total = sum(betas)
    return k, tuple(float(x / total) for x in betas) if n < len(MS_SSIM_BETAS) else betas


def ms_ssim(a: Any, b: Any, *, kernel_size: int = 11, sigma: float = 1.5) -> float:
    """Multi-scale SSIM of two images in [0, 1] (data range 1), mean over the batch.

    Standard 5-scale MS-SSIM (11-px Gaussian window, sigma 1.5, Wang et al. betas) for images
    of 176 px and more (so 256 and 512 px images get the paper's metric); smaller images use
    fewer scales, see :func:`ms_ssim_config`. Returns 1.0 for identical images.
    """
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    ta, tb = _pair(a, b)
    k, betas = ms_ssim_config(int(ta.shape[-2]), int(ta.shape[-1]), kernel_size)
    return float(multiscale_structural_similarity_index_measure(
        ta, tb, data_range=1.0, kernel_size=k, sigma=sigma, betas=betas))


def _rgb01(images: Any):
    """(N, 3, H, W) float tensor in [0, 1] (grey replicated to three channels)."""
    t = _to_nchw(images, "images").clamp(0.0, 1.0)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    elif t.shape[1] != 3:
        raise ValueError(f"images must have 1 or 3 channels, got {t.shape[1]}")
    return t.contiguous()


def _unavailable_reason(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg


def _resolve(name: str, path: Any, cache_dir: Any) -> Path:
    """resolve_weights through emcopilot.weights (ImportError when that module is missing)."""
    from .weights import resolve_weights

    return resolve_weights(name, path=path, cache_dir=cache_dir, offline=None)


def _load_plain_state_dict(path: Path) -> dict:
    try:
        from .weights import load_state_dict
    except ImportError:  # pragma: no cover - weights.py is part of the package
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    return load_state_dict(path)


def _default_device(device: Any):
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class LpipsMetric:
    """LPIPS perceptual distance (Zhang et al. 2018), lower = more similar; 0 for identical images.

    The standard metric uses the ``lpips`` package's AlexNet variant: its linear heads ship with
    the package, the AlexNet ImageNet backbone is the registered weights ``"lpips_alex"``
    (resolved by :func:`emcopilot.weights.resolve_weights`, never downloaded by torchvision).
    When they cannot be had, ``available`` is False, ``reason`` says why and :meth:`compute`
    returns None: constructing or using the metric never raises for missing weights.

    Args:
        net: ``"alex"`` (standard) or a ready ``lpips.LPIPS``-like module called as
            ``net(x0, x1, normalize=True)`` on (N, 3, H, W) images in [0, 1] (tests inject
            ``lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True)``, a random backbone that
            needs no download).
        weights_path: AlexNet weights file (or folder) instead of the registry look-up.
        cache_dir: Hugging Face cache folder for the look-up.
        device: torch device (default: CUDA when available).

    >>> m = LpipsMetric()
    >>> m.compute(img_a, img_b) if m.available else None   # doctest: +SKIP
    """

    def __init__(self, net: Any = "alex", *, weights_path: Any = None, cache_dir: Any = None,
                 device: Any = None) -> None:
        self.available = False
        self.reason = ""
        self.device = _default_device(device)
        self.model = None
        try:
            import torch

            if isinstance(net, torch.nn.Module):
                self.model = net
            elif net == "alex":
                self.model = self._build_alex(weights_path, cache_dir)
            else:
                raise ValueError(f"LPIPS net {net!r} is not supported: use 'alex' or pass a module")
            self.model = self.model.to(self.device).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
            self.available = True
        except ImportError as exc:
            self.reason = f"LPIPS unavailable: {_unavailable_reason(exc)}"
        except Exception as exc:  # WeightsUnavailableError, bad weights file, ...
            self.reason = f"LPIPS unavailable: {_unavailable_reason(exc)}"

    @staticmethod
    def _build_alex(weights_path: Any, cache_dir: Any):
        import warnings

        import lpips

        path = _resolve("lpips_alex", weights_path, cache_dir)
        state = _load_plain_state_dict(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, verbose=False)
        # torchvision AlexNet keys "features.<i>.<param>" -> lpips slices holding module "<i>"
        own = {}
        for sname in ("slice1", "slice2", "slice3", "slice4", "slice5"):
            for idx, _mod in getattr(model.net, sname).named_children():
                for param in ("weight", "bias"):
                    key = f"features.{idx}.{param}"
                    if key in state:
                        own[f"{sname}.{idx}.{param}"] = state[key]
        expected = {k for k in model.net.state_dict()}
        missing = expected - set(own)
        if missing:
            raise ValueError(f"{path.name} is not an AlexNet state dict (missing "
                             f"{sorted(missing)[0]}...)")
        model.net.load_state_dict(own)
        return model

    def compute(self, a: Any, b: Any) -> float | None:
        """Mean LPIPS distance between images ``a`` and ``b`` (floats in [0, 1]; (H, W),
        (N, H, W) or (N, C, H, W) with C = 1 or 3). None when the metric is unavailable."""
        if not self.available or self.model is None:
            return None
        import torch

        ta, tb = _rgb01(a), _rgb01(b)
        if ta.shape != tb.shape:
            raise ValueError(f"images differ in shape: {tuple(ta.shape)} vs {tuple(tb.shape)}")
        with torch.no_grad():
            d = self.model(ta.to(self.device), tb.to(self.device), normalize=True)
        return float(d.mean())

    __call__ = compute


def _make_feature_module(extractor: Any, feature_dim: int | None):
    """Wrap an injected extractor: (N, 3, H, W) in [0, 1] -> (N, D) float features."""
    import torch

    class _Features(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module, dim: int | None) -> None:
            super().__init__()
            self.inner = inner
            if dim is not None:
                self.num_features = int(dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dtype == torch.uint8:  # torchmetrics' probe image
                x = x.float() / 255.0
            f = self.inner(x)
            return f.reshape(f.shape[0], -1)

    return _Features(extractor, feature_dim)


def _make_inception(feature: int, weights_path: Any, cache_dir: Any):
    """torch-fidelity's FID Inception-v3 with the registered weights ``fid_inception``, as a
    module on (N, 3, H, W) float images in [0, 1]. Needs no network once the file is here."""
    import io

    import torch
    from torchmetrics.image.fid import NoTrainInceptionV3
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not _TORCH_FIDELITY_AVAILABLE:
        raise ImportError("FID/KID need the torch-fidelity package (pip install torch-fidelity) "
                          "and the 'fid_inception' weights")
    path = _resolve("fid_inception", weights_path, cache_dir)
    # torch-fidelity reads the file with torch.load(weights_only=False), i.e. it would unpickle
    # it: load the tensors safely here and hand it an in-memory copy of only those tensors.
    state = _load_plain_state_dict(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    del state
    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(feature)],
                             feature_extractor_weights_path=buf)  # type: ignore[arg-type]

    class _Inception(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.num_features = int(feature)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dtype != torch.uint8:
                x = (x.clamp(0, 1) * 255).to(torch.uint8)
            return self.net(x).reshape(x.shape[0], -1)

    return _Inception()


class _DistributionMetric:
    """Shared plumbing of :class:`FidMetric` and :class:`KidMetric`."""

    _name = "FID"

    def __init__(self, *, feature_extractor: Any = None, feature_dim: int | None = None,
                 feature: int = 2048, weights_path: Any = None, cache_dir: Any = None,
                 device: Any = None) -> None:
        self.available = False
        self.reason = ""
        self.device = _default_device(device)
        self.metric = None
        try:
            if feature_extractor is not None:
                module = _make_feature_module(feature_extractor, feature_dim)
            else:
                module = _make_inception(feature, weights_path, cache_dir)
            self.metric = self._build(module).to(self.device)
            self.available = True
        except ImportError as exc:
            self.reason = f"{self._name} unavailable: {_unavailable_reason(exc)}"
        except Exception as exc:  # WeightsUnavailableError, bad weights, ...
            self.reason = f"{self._name} unavailable: {_unavailable_reason(exc)}"

    def _build(self, module: Any):  # pragma: no cover - overridden
        raise NotImplementedError

    def update(self, images: Any, real: bool) -> None:
        """Add a batch of images (floats in [0, 1]; (H, W), (N, H, W) or (N, C, H, W), C = 1
        or 3; grey is replicated to 3 channels) to the real or the generated set."""
        if not self.available or self.metric is None:
            return
        import torch

        with torch.no_grad():
            self.metric.update(_rgb01(images).to(self.device), real=bool(real))

    def reset(self) -> None:
        """Forget both image sets."""
        if self.metric is not None:
            self.metric.reset()

    def score(self, real_images: Any, fake_images: Any) -> float | None:
        """reset(), add both sets, compute()."""
        if not self.available:
            return None
        self.reset()
        self.update(real_images, real=True)
        self.update(fake_images, real=False)
        return self.compute()


def frechet_distance(real_features: Any, fake_features: Any) -> float | None:
    """Exact Frechet distance between the Gaussians fitted to two feature sets (the FID formula
    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)``, unbiased covariances, float64).

    ``real_features`` (N, D) and ``fake_features`` (M, D) are arrays or tensors. The trace term
    is computed from the centred feature matrices Xc, Yc: the non-zero eigenvalues of S1 S2 are
    the squared singular values of Xc Yc^T / sqrt((N-1)(M-1)), so tr sqrt(S1 S2) is that
    matrix's nuclear norm. This costs O(N M D) instead of the O(D^3) eigen-decomposition of a
    D x D matrix (seconds to a minute on a CPU for D = 2048), and gives the same value as
    torchmetrics' ``FrechetInceptionDistance``. Meant for small sets (validation images);
    returns None when either set has fewer than 2 rows.
    """
    import torch

    x = torch.as_tensor(_as_numpy(real_features), dtype=torch.float64).reshape(
        len(real_features), -1)
    y = torch.as_tensor(_as_numpy(fake_features), dtype=torch.float64).reshape(
        len(fake_features), -1)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
    n, m = int(x.shape[0]), int(y.shape[0])
    if n < 2 or m < 2:
        return None
    mu1, mu2 = x.mean(0), y.mean(0)
    xc, yc = x - mu1, y - mu2
    tr1 = float(xc.square().sum()) / (n - 1)
    tr2 = float(yc.square().sum()) / (m - 1)
    cross = float(torch.linalg.svdvals(xc @ yc.T).sum()) / float(np.sqrt((n - 1) * (m - 1)))
    d = float((mu1 - mu2).square().sum()) + tr1 + tr2 - 2.0 * cross
    return max(0.0, d)


class FidMetric(_DistributionMetric):
    """Frechet Inception Distance between real and generated images (lower = closer; ~0 for the
    same image set), via torchmetrics ``FrechetInceptionDistance``.

    Standard use needs the torch-fidelity package and the registered Inception weights
    ``"fid_inception"``; when either is missing ``available`` is False, ``reason`` says why and
    :meth:`compute` returns None (never raises). Tests and custom studies inject any
    ``feature_extractor`` module mapping (N, 3, H, W) images in [0, 1] to (N, D) features
    (``feature_dim`` = D, probed on a 299 px image when omitted).

    >>> fid = FidMetric(feature_extractor=my_net, feature_dim=64)   # doctest: +SKIP
    >>> fid.update(real, real=True); fid.update(fake, real=False); fid.compute()  # doctest: +SKIP
    """

    _name = "FID"

    def _build(self, module: Any):
        from torchmetrics.image.fid import FrechetInceptionDistance

        return FrechetInceptionDistance(feature=module, normalize=True)

    def features(self, images: Any) -> Any:
        """Features (N, D) float64 on the CPU of images (floats in [0, 1]; (H, W), (N, H, W) or
        (N, C, H, W)), from this metric's feature extractor; None when unavailable. With
        :func:`frechet_distance` this scores small sets fast (e.g. once per training epoch,
        extracting the fixed real set's features only once)."""
        if not self.available or self.metric is None:
            return None
        import torch

        with torch.no_grad():
            f = self.metric.inception(_rgb01(images).to(self.device))
        return f.reshape(f.shape[0], -1).double().cpu()

    def compute(self) -> float | None:
        """FID of the sets added so far; None when unavailable or either set has < 2 images."""
        if not self.available or self.metric is None:
            return None
        if int(self.metric.real_features_num_samples) < 2 or \
                int(self.metric.fake_features_num_samples) < 2:
            return None
        return max(0.0, float(self.metric.compute()))


class KidMetric(_DistributionMetric):
    """Kernel Inception Distance (unbiased MMD with a cubic polynomial kernel; lower = closer,
    ~0 for the same distribution), via torchmetrics ``KernelInceptionDistance``. Better than FID
    on small sets. Availability, weights and injection as in :class:`FidMetric`.

    Args (besides FidMetric's): ``subsets`` random subsets of ``subset_size`` images each
    (capped at the smaller set's size); ``seed`` makes the subsets reproducible.
    After :meth:`compute`, ``last_std`` holds the standard deviation over the subsets.
    """

    _name = "KID"

    def __init__(self, *, subsets: int = 50, subset_size: int = 1000, seed: int = 0,
                 **kwargs: Any) -> None:
        self._subsets, self._subset_size, self._seed = int(subsets), int(subset_size), seed
        self.last_std: float | None = None
        super().__init__(**kwargs)

    def _build(self, module: Any):
        import warnings

        from torchmetrics.image.kid import KernelInceptionDistance

        with warnings.catch_warnings():  # "will save all extracted features": intended
            warnings.simplefilter("ignore", UserWarning)
            return KernelInceptionDistance(feature=module, subsets=self._subsets,
                                           subset_size=self._subset_size, normalize=True)

    def compute(self) -> float | None:
        """KID (mean over subsets) of the sets added so far; None when unavailable or either
        set has < 2 images."""
        if not self.available or self.metric is None:
            return None
        import torch

        n_real = sum(int(f.shape[0]) for f in self.metric.real_features)
        n_fake = sum(int(f.shape[0]) for f in self.metric.fake_features)
        if min(n_real, n_fake) < 2:
            return None
        self.metric.subset_size = min(self._subset_size, n_real, n_fake)
        state = torch.random.get_rng_state()
        torch.manual_seed(self._seed)
        try:
            mean, std = self.metric.compute()
        finally:
            torch.random.set_rng_state(state)
        self.last_std = float(std)
        return float(mean)
