"""Evaluate predicted label maps against ground truth in a folder: pixel, object, count and
particle-size-distribution (PSD) agreement.

Files are matched by stem (``abc.png`` <-> ``abc.png`` / ``abc.tif`` / ``abc.txt``). Predictions
are instance label maps (16-bit PNG or TIFF, 0 = background). Ground truth formats
(``truth_format``):

- ``"instance"``: instance label maps (e.g. the EMPS ``segmaps``).
- ``"binary"``: 0 / non-zero masks; instances = 8-connected components (touching particles in
  such a mask count as one).
- ``"class:N"``: pixels equal to N are particles (semantic maps); instances as for binary.
- ``"yolo"``: YOLO box files, one box per line ``class xc yc w h`` (normalised to the image
  size; the image size is the prediction's). No pixel scores; objects are matched by box IoU
  (predicted boxes = the instances' bounding boxes) and sizes are *box-equivalent diameters*
  ``sqrt(w * h)`` (pixels) on both sides: the diameter of the circle with the area of the
  ellipse inscribed in the box, exact for a circular or axis-aligned elliptical particle.
  (``sqrt(4 w h / pi)``, the circle with the box's own area, would overestimate a round
  particle's diameter by 12.8 %.)

Sizes elsewhere are equivalent-circle diameters ``sqrt(4 * area / pi)`` in pixels (``*_nm``
too when ``pixel_size_nm`` is given).

>>> result = evaluate_dirs("pred_masks", "truth_masks")          # doctest: +SKIP
>>> write_evaluation_report(result, "eval_out")                  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import InputError
from .metrics import (match_instances, mean_class_scores, pixel_scores, probability_scores,
                      scores_from_match)

__all__ = ["evaluate_dirs", "write_evaluation_report", "read_yolo_boxes", "count_agreement",
           "read_probability_map", "LABEL_SUFFIXES",
           "PROB_SUFFIXES", "TRUTH_FORMATS"]

LABEL_SUFFIXES = (".png", ".tif", ".tiff")
PROB_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
TRUTH_FORMATS = ("instance", "binary", "class:N", "yolo")

Progress = Callable[[int, int, str], None]


# --------------------------------------------------------------------------- reading

def _read_labels(path: Path) -> np.ndarray:
    try:
        from .io import read_label_map
    except ImportError:  # pragma: no cover - io.py is part of the package
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im).astype(np.int32)
    return read_label_map(path)


def read_probability_map(path: str | os.PathLike) -> np.ndarray:
    """Probability map as float32 in [0, 1]: float files as stored (clipped), uint8 / 255,
    uint16 / 65535. ``.npy`` is read with ``allow_pickle=False``."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
    except Exception as exc:
        raise InputError(f"{path.name}: cannot read probability map ({_one_line(exc)})") from None
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"{path.name}: probability map must be 2-D, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    return np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0)


def read_yolo_boxes(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Boxes of a YOLO txt file in pixels, (n, 4) float: x0, y0, x1, y1 for an image of
    ``shape`` = (H, W). Lines: ``class xc yc w h [confidence]`` (normalised). Blank lines and
    lines starting with ``#`` are skipped; a malformed line raises InputError."""
    p = Path(path)
    h, w = shape
    boxes = []
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"{p.name}: cannot read YOLO labels ({_one_line(exc)})") from None
    for i, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            xc, yc, bw, bh = (float(v) for v in parts[1:5])
            if len(parts) < 5:
                raise ValueError
        except ValueError:
            raise InputError(f"{p.name} line {i}: expected 'class xc yc w h', got {line!r}") \
                from None
        boxes.append(((xc - bw / 2) * w, (yc - bh / 2) * h, (xc + bw / 2) * w, (yc + bh / 2) * h))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _truth_instances(truth: np.ndarray, truth_format: str) -> np.ndarray:
    from skimage.measure import label

    if truth_format == "instance":
        return truth
    if truth_format == "binary":
        return label(truth > 0, connectivity=2).astype(np.int32)
    value = int(truth_format.split(":", 1)[1])
    return label(truth == value, connectivity=2).astype(np.int32)


def _check_format(truth_format: str) -> str:
    f = truth_format.strip().lower()
    if f in ("instance", "binary", "yolo"):
        return f
    if f.startswith("class:"):
        try:
            int(f.split(":", 1)[1])
        except ValueError:
            pass
        else:
            return f
    raise InputError(f"truth_format {truth_format!r} is not one of instance, binary, class:N "
                     f"(N an integer), yolo")


def _index(folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"{what} folder {folder} does not exist")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."):
            out.setdefault(p.stem, p)
    return out


# --------------------------------------------------------------------------- sizes

def _diameters_from_areas(areas: np.ndarray) -> np.ndarray:
    return np.sqrt(4.0 * np.asarray(areas, np.float64) / math.pi)


def label_boxes(labels: np.ndarray) -> np.ndarray:
    """(n, 4) x0, y0, x1, y1 pixel-edge boxes of the instances, in label order."""
    from scipy import ndimage

    from .metrics import _dense_ids

    dense, _, _ = _dense_ids(labels)
    dense = dense.reshape(labels.shape)
    sl = ndimage.find_objects(dense)
    return np.asarray([(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in sl if s is not None],
                      dtype=np.float64).reshape(-1, 4)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of x0, y0, x1, y1 boxes (0 where a union is empty)."""
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _box_match(pred: np.ndarray, true: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian one-to-one matching of boxes with IoU >= thr -> (pairs (m, 2), ious (m,))."""
    from scipy.optimize import linear_sum_assignment

    if len(pred) == 0 or len(true) == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    iou = box_iou(pred, true)
    ok = iou >= thr
    if not ok.any():
        return np.zeros((0, 2), np.int64), np.zeros(0)
    k = min(len(pred), len(true)) + 1.0
    w = np.where(ok, k + iou, 0.0)
    r, c = linear_sum_assignment(w, maximize=True)
    keep = w[r, c] > 0
    r, c = r[keep], c[keep]
    return np.stack([r, c], axis=1).astype(np.int64), iou[r, c]


def _box_diameters(boxes: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None)
                   * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))


def _psd_scores(d_pred: np.ndarray, d_true: np.ndarray, pairs: np.ndarray) -> dict[str, Any]:
    """Size agreement of one image (or the pooled set): diameters in pixels."""
    from scipy.stats import ks_2samp

    out: dict[str, Any] = {
        "mean_diameter_pred_px": float(d_pred.mean()) if d_pred.size else float("nan"),
        "mean_diameter_true_px": float(d_true.mean()) if d_true.size else float("nan"),
        "median_diameter_pred_px": float(np.median(d_pred)) if d_pred.size else float("nan"),
        "median_diameter_true_px": float(np.median(d_true)) if d_true.size else float("nan"),
    }
    out["mean_diameter_rel_error"] = (
        (out["mean_diameter_pred_px"] - out["mean_diameter_true_px"]) / out["mean_diameter_true_px"]
        if d_pred.size and d_true.size else float("nan"))
    out["median_diameter_rel_error"] = (
        (out["median_diameter_pred_px"] - out["median_diameter_true_px"])
        / out["median_diameter_true_px"] if d_pred.size and d_true.size else float("nan"))
    if len(pairs):
        rel = np.abs(d_pred[pairs[:, 0]] - d_true[pairs[:, 1]]) / d_true[pairs[:, 1]]
        out["matched_diameter_abs_rel_error_mean"] = float(rel.mean())
        out["matched_diameter_abs_rel_error_median"] = float(np.median(rel))
    else:
        out["matched_diameter_abs_rel_error_mean"] = float("nan")
        out["matched_diameter_abs_rel_error_median"] = float("nan")
    if d_pred.size and d_true.size:
        ks = ks_2samp(d_pred, d_true)
        out["ks_distance"] = float(ks.statistic)
        out["ks_pvalue"] = float(ks.pvalue)
    else:
        out["ks_distance"] = float("nan")
        out["ks_pvalue"] = float("nan")
    return out


# --------------------------------------------------------------------------- evaluation

def _evaluate_one(name: str, pred_path: Path, truth_path: Path, truth_format: str,
                  prob_path: Path | None, iou_threshold: float
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """One image -> (row, pooled parts: confusion counts, diameters, pairs)."""
    pred = _read_labels(pred_path)
    row: dict[str, Any] = {"name": name, "height": int(pred.shape[0]), "width": int(pred.shape[1])}
    parts: dict[str, Any] = {}
    if truth_format == "yolo":
        true_boxes = read_yolo_boxes(truth_path, pred.shape)
        pred_boxes = label_boxes(pred)
        pairs, ious = _box_match(pred_boxes, true_boxes, iou_threshold)
        n_pred, n_true, tp = len(pred_boxes), len(true_boxes), len(pairs)
        d_pred, d_true = _box_diameters(pred_boxes), _box_diameters(true_boxes)
        obj = _counts_scores(n_pred, n_true, tp, ious)
    else:
        truth = _truth_instances(_read_labels(truth_path), truth_format)
        if truth.shape != pred.shape:
            raise InputError(f"{name}: prediction is {pred.shape[1]}x{pred.shape[0]} px but the "
                             f"truth is {truth.shape[1]}x{truth.shape[0]} px")
        px = pixel_scores(pred, truth)
        mc = mean_class_scores(pred, truth)
        for k in ("dice", "iou", "precision", "recall", "pixel_accuracy"):
            row[k] = px[k]
        for k in ("mPA", "mIoU", "mDice"):
            row[k] = mc[k]
        parts["confusion"] = np.array([px["tp"], px["fp"], px["fn"], px["tn"]], np.int64)
        m = match_instances(pred, truth, iou_threshold)
        obj = scores_from_match(m)
        pairs = m.pairs
        d_pred, d_true = _diameters_from_areas(m.pred_areas), _diameters_from_areas(m.true_areas)
        if prob_path is not None:
            prob = read_probability_map(prob_path)
            if prob.shape != truth.shape:
                raise InputError(f"{name}: probability map is {prob.shape[1]}x{prob.shape[0]} px "
                                 f"but the truth is {truth.shape[1]}x{truth.shape[0]} px")
            row.update(probability_scores(prob, truth))
    row.update({
        "n_true": obj["n_true"], "n_pred": obj["n_pred"], "count_error": obj["count_error"],
        "relative_count_error": obj["relative_count_error"],
        "obj_tp": obj["tp"], "obj_fp": obj["fp"], "obj_fn": obj["fn"],
        "obj_precision": obj["precision"], "obj_recall": obj["recall"], "obj_f1": obj["f1"],
        "mean_matched_iou": obj["mean_matched_iou"],
    })
    row.update(_psd_scores(d_pred, d_true, pairs))
    parts.update(d_pred=d_pred, d_true=d_true,
                 matched=(d_pred[pairs[:, 0]], d_true[pairs[:, 1]]) if len(pairs)
                 else (np.zeros(0), np.zeros(0)))
    return row, parts


def count_agreement(n_pred: Any, n_true: Any) -> dict[str, Any]:
    """How well per-image particle counts agree with the true counts: median and mean of
    |n_pred - n_true| / n_true (images with n_true > 0), the fraction of images within a factor
    of 2, and Pearson r / Spearman rho over images (None with fewer than 3 images or constant
    counts)."""
    from scipy import stats

    p, t = np.asarray(n_pred, np.float64), np.asarray(n_true, np.float64)
    has = t > 0
    rel = np.abs(p[has] - t[has]) / t[has]
    out: dict[str, Any] = {
        "count_rel_abs_error_median": float(np.median(rel)) if rel.size else float("nan"),
        "count_rel_abs_error_mean": float(rel.mean()) if rel.size else float("nan"),
        "count_within_factor_2": float(np.mean((p[has] >= t[has] / 2) & (p[has] <= 2 * t[has])))
        if rel.size else float("nan"),
        "count_pearson_r": None, "count_spearman_rho": None}
    if p.size > 2 and np.ptp(p) > 0 and np.ptp(t) > 0:
        out["count_pearson_r"] = float(stats.pearsonr(p, t)[0])
        out["count_spearman_rho"] = float(stats.spearmanr(p, t)[0])
    return out


def _counts_scores(n_pred: int, n_true: int, tp: int, ious: np.ndarray) -> dict[str, Any]:
    both_empty = n_pred == 0 and n_true == 0

    def r(a: float, b: float) -> float:
        return a / b if b > 0 else (1.0 if both_empty else 0.0)

    return {"tp": tp, "fp": n_pred - tp, "fn": n_true - tp, "precision": r(tp, n_pred),
            "recall": r(tp, n_true), "f1": r(2 * tp, n_pred + n_true),
            "mean_matched_iou": float(ious.mean()) if len(ious) else float("nan"),
            "n_pred": n_pred, "n_true": n_true, "count_error": n_pred - n_true,
            "relative_count_error": (n_pred - n_true) / n_true if n_true
            else (0.0 if n_pred == 0 else float("nan"))}


def _nanmean(values: list[Any]) -> float:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _aggregate(rows: list[dict[str, Any]], parts: list[dict[str, Any]], truth_format: str,
               pixel_size_nm: float | None) -> dict[str, Any]:
    agg: dict[str, Any] = {"n_images": len(rows)}
    if not rows:
        return agg
    col = lambda k: [r.get(k) for r in rows]  # noqa: E731
    if truth_format != "yolo":
        for k in ("dice", "iou", "precision", "recall", "pixel_accuracy", "mPA", "mIoU", "mDice"):
            agg[f"{k}_mean"] = _nanmean(col(k))
        tp, fp, fn, tn = (int(x) for x in sum(p["confusion"] for p in parts))
        empty = tp + fp + fn == 0

        def r(a: int, b: int) -> float:
            return a / b if b else (1.0 if empty else 0.0)

        agg.update(dice_pooled=r(2 * tp, 2 * tp + fp + fn), iou_pooled=r(tp, tp + fp + fn),
                   precision_pooled=r(tp, tp + fp), recall_pooled=r(tp, tp + fn))
        if any("auc" in row for row in rows):
            agg["auc_mean"] = _nanmean(col("auc"))
            agg["ap_mean"] = _nanmean(col("ap"))
    tp = sum(int(x) for x in col("obj_tp"))
    n_pred = sum(int(x) for x in col("n_pred"))
    n_true = sum(int(x) for x in col("n_true"))
    both_empty = n_pred == 0 and n_true == 0
    agg.update(
        n_true=n_true, n_pred=n_pred, obj_tp=tp, obj_fp=n_pred - tp, obj_fn=n_true - tp,
        obj_precision=tp / n_pred if n_pred else (1.0 if both_empty else 0.0),
        obj_recall=tp / n_true if n_true else (1.0 if both_empty else 0.0),
        obj_f1=2 * tp / (n_pred + n_true) if (n_pred + n_true) else 1.0,
        obj_f1_mean=_nanmean(col("obj_f1")),
        mean_matched_iou=_nanmean(col("mean_matched_iou")),
        count_abs_error_mean=_nanmean([abs(x) for x in col("count_error")]),
        count_rel_error_mean=_nanmean(col("relative_count_error")),
        **count_agreement(col("n_pred"), col("n_true")),
    )
    d_pred = np.concatenate([p["d_pred"] for p in parts])
    d_true = np.concatenate([p["d_true"] for p in parts])
    mp = np.concatenate([p["matched"][0] for p in parts])
    mt = np.concatenate([p["matched"][1] for p in parts])
    pooled = _psd_scores(d_pred, d_true, np.zeros((0, 2), np.int64))
    if mt.size:
        rel = np.abs(mp - mt) / mt
        pooled["matched_diameter_abs_rel_error_mean"] = float(rel.mean())
        pooled["matched_diameter_abs_rel_error_median"] = float(np.median(rel))
    agg.update(pooled)
    agg["ks_distance_mean"] = _nanmean(col("ks_distance"))
    if pixel_size_nm:
        for k in ("mean_diameter_pred", "mean_diameter_true", "median_diameter_pred",
                  "median_diameter_true"):
            agg[f"{k}_nm"] = agg[f"{k}_px"] * pixel_size_nm
    return agg


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars -> Python, nan/inf -> None."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def evaluate_dirs(pred_dir: str | os.PathLike, truth_dir: str | os.PathLike,
                  truth_format: str = "instance", prob_dir: str | os.PathLike | None = None,
                  pixel_size_nm: float | None = None, progress: Progress | None = None,
                  iou_threshold: float = 0.5) -> dict[str, Any]:
    """Score every prediction in ``pred_dir`` against its namesake in ``truth_dir``.

    Args:
        pred_dir: predicted instance label maps (PNG/TIFF, 0 = background).
        truth_dir: ground truth, see the module docstring for ``truth_format``.
        prob_dir: optional particle-probability maps (PNG 8/16-bit scaled to [0, 1], float
            TIFF or ``.npy``) with the same stems: adds ROC AUC and average precision.
        pixel_size_nm: nm per pixel; adds ``*_nm`` mean/median diameters to the aggregate.
        progress: ``progress(done, total, name)`` after each image.
        iou_threshold: minimum IoU of an object match (mask IoU, box IoU for ``"yolo"``).

    Returns:
        JSON-safe dict (undefined values are None): ``config``, ``aggregate`` (means over
        images ``*_mean`` and pooled pixel scores ``*_pooled``; object precision/recall/F1 from
        pooled matches; ``count_abs_error_mean`` and :func:`count_agreement` (relative count
        error median/mean, within a factor of 2, Pearson/Spearman over images); PSD agreement
        over the pooled diameters: ``mean_diameter_rel_error``, ``median_diameter_rel_error``,
        ``matched_diameter_abs_rel_error_mean/median``, ``ks_distance``/``ks_pvalue``
        (two-sample KS of predicted vs true diameters)), ``per_image`` (one row per image),
        ``missing`` (``no_prediction``: truth stems without a prediction; ``no_truth``;
        ``no_probability``) and ``failed`` (``{"name", "error"}`` for unreadable pairs).

    Raises:
        InputError: a folder is missing, the format is unknown, or no stem is in both folders.
    """
    fmt = _check_format(truth_format)
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    preds = _index(pred_dir, LABEL_SUFFIXES, "prediction")
    truths = _index(truth_dir, (".txt",) if fmt == "yolo" else LABEL_SUFFIXES, "ground-truth")
    probs = _index(Path(prob_dir), PROB_SUFFIXES, "probability") if prob_dir is not None else {}
    if pixel_size_nm is not None and not (pixel_size_nm > 0 and math.isfinite(pixel_size_nm)):
        raise InputError(f"pixel size must be a positive number of nm, got {pixel_size_nm}")
    common = sorted(set(preds) & set(truths))
    if not common:
        want = ".txt" if fmt == "yolo" else "PNG/TIFF"
        raise InputError(f"no file names in {pred_dir} match the {want} ground truth in "
                         f"{truth_dir} (files are paired by name without extension)")
    rows: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for i, name in enumerate(common):
        prob_path = probs.get(name) if fmt != "yolo" else None
        try:
            row, part = _evaluate_one(name, preds[name], truths[name], fmt, prob_path,
                                      iou_threshold)
        except InputError as exc:
            failed.append({"name": name, "error": str(exc)})
        else:
            rows.append(row)
            parts.append(part)
        if progress is not None:
            progress(i + 1, len(common), name)
    if not rows:
        raise InputError(f"none of the {len(common)} matched images could be evaluated: "
                         f"{failed[0]['error']}")
    result = {
        "config": {"pred_dir": str(pred_dir), "truth_dir": str(truth_dir), "truth_format": fmt,
                   "prob_dir": str(prob_dir) if prob_dir is not None else None,
                   "pixel_size_nm": pixel_size_nm, "iou_threshold": iou_threshold,
                   "diameter": ("box-equivalent sqrt(w*h) px" if fmt == "yolo"
                                else "equivalent-circle sqrt(4*area/pi) px")},
        "aggregate": _aggregate(rows, parts, fmt, pixel_size_nm),
        "per_image": rows,
        "missing": {"no_prediction": sorted(set(truths) - set(preds)),
                    "no_truth": sorted(set(preds) - set(truths)),
                    "no_probability": sorted(set(common) - set(probs)) if prob_dir is not None
                    and fmt != "yolo" else []},
        "failed": failed,
    }
    return _clean(result)


def write_evaluation_report(result: dict[str, Any], out_dir: str | os.PathLike
                            ) -> dict[str, Path]:
    """Write ``evaluation.json`` (the whole result) and ``per_image.csv`` (one row per image)
    into ``out_dir`` atomically. Returns ``{"json": path, "csv": path}``."""
    from .atomic import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = _clean(result)
    jpath, cpath = out / "evaluation.json", out / "per_image.csv"
    atomic_write_text(jpath, json.dumps(clean, indent=2, allow_nan=False) + "\n")
    rows = clean.get("per_image", [])
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields or ["name"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(cpath, buf.getvalue())
    return {"json": jpath, "csv": cpath}
