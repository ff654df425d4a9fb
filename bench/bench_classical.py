"""Accuracy and speed of the classical coarse masker (no weights).

    .venv/bin/python -m bench.bench_classical --out bench/results/classical.json

- EMPS test split (99 images, manual instance masks): pixel Dice/IoU, object precision/recall/F1
  at IoU 0.5, count error, seconds per image; for three settings:
  ``masker`` (ClassicalMasker alone, polarity auto), ``masker_true_polarity`` (polarity taken
  from the ground truth: isolates errors of ``io.detect_polarity``) and ``coarse_mask``
  (masker + Algorithm 1 filters with the paper defaults, what stage 1 produces).
- Catalyst set (33 HAADF/BF S/TEM images, YOLO boxes only): predicted particle count against the
  number of boxes (median absolute relative error, Pearson and Spearman correlation), seconds per
  image, for ``masker`` and ``coarse_mask`` with the default ("isolated") and the "supported"
  preset. The "supported" preset was chosen on these same 33 images (no other labelled catalyst
  set is available), so its numbers are optimistic.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.common import (Timer, catalyst_items, describe, emps_pairs, machine, peak_rss_mib,
                          write_json, yolo_box_count)
from emcopilot import io
from emcopilot.evaluate import count_agreement
from emcopilot.masking import DEFAULT_FILTERS, coarse_mask
from emcopilot.masking.classical import ClassicalMasker
from emcopilot.metrics import object_scores, pixel_scores


def _num(d: Any, *keys: str) -> float:
    """First of ``keys`` present in the metrics result (dict or attribute object)."""
    for k in keys:
        if isinstance(d, dict) and k in d:
            return float(d[k])
        if hasattr(d, k):
            return float(getattr(d, k))
    raise KeyError(f"none of {keys} in metrics result {d!r}")


def true_polarity(image01: np.ndarray, truth: np.ndarray) -> str:
    """Polarity from the ground truth: particles brighter than the background or not."""
    fg = truth > 0
    if not fg.any() or fg.all():
        return io.detect_polarity(image01)
    return "bright" if image01[fg].mean() >= image01[~fg].mean() else "dark"


def _settings(masker: ClassicalMasker) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    return {
        "masker": lambda img, gt: masker(img, polarity="auto"),
        "masker_true_polarity": lambda img, gt: masker(img, polarity=true_polarity(img, gt)),
        "coarse_mask": lambda img, gt: coarse_mask(img, method="classical", polarity="auto",
                                                   classical_options={"preset": "isolated",
                                                                      **masker.options()}),
        "coarse_mask_auto_preset": lambda img, gt: coarse_mask(img, method="classical"),
    }


def bench_emps(masker: ClassicalMasker, limit: int | None = None) -> dict[str, Any]:
    pairs = emps_pairs("test")[:limit]
    data = []
    for img_path, seg_path in pairs:
        img = io.normalize(io.read_micrograph(img_path).image)
        gt = io.read_label_map(seg_path)
        data.append((img_path.stem, img, gt))
    polarity_ok = sum(io.detect_polarity(img) == true_polarity(img, gt) for _, img, gt in data)
    n_truth = int(sum(np.count_nonzero(np.unique(gt)) for *_, gt in data))
    out: dict[str, Any] = {"n_images": len(data), "n_particles_truth": n_truth,
                           "detect_polarity_accuracy": polarity_ok / max(len(data), 1)}
    for name, fn in _settings(masker).items():
        timer = Timer()
        rows = []
        for stem, img, gt in data:
            with timer():
                pred = fn(img, gt)
            px = pixel_scores(pred, gt)
            ob = object_scores(pred, gt, iou_threshold=0.5)
            n_pred, n_true = int(ob["n_pred"]), int(ob["n_true"])
            rows.append({
                "image": stem, "dice": _num(px, "dice"), "iou": _num(px, "iou", "jaccard"),
                "precision": _num(ob, "precision"), "recall": _num(ob, "recall"),
                "f1": _num(ob, "f1"), "n_pred": n_pred, "n_true": n_true,
                "count_abs_rel_error": abs(n_pred - n_true) / max(n_true, 1),
            })
        summ = {k: describe([r[k] for r in rows])
                for k in ("dice", "iou", "precision", "recall", "f1", "count_abs_rel_error")}
        summ["count_diff"] = describe([r["n_pred"] - r["n_true"] for r in rows])
        summ["seconds_per_image"] = timer.summary()
        out[name] = {"summary": summ, "per_image": rows}
        print(f"EMPS {name:22s} Dice {summ['dice']['mean']:.3f} "
              f"(median {summ['dice']['median']:.3f})"
              f"  F1 {summ['f1']['mean']:.3f} (median {summ['f1']['median']:.3f})"
              f"  count |rel err| median {summ['count_abs_rel_error']['median']:.2f}"
              f"  {timer.median:.3f} s/img", flush=True)
    return out


def bench_catalysts(masker: ClassicalMasker, limit: int | None = None) -> dict[str, Any]:
    items = catalyst_items()[:limit]
    data = []
    for img_path, lab_path in items:
        mg = io.read_micrograph(img_path)
        data.append((img_path.stem, io.normalize(mg.image), yolo_box_count(lab_path)))
    out: dict[str, Any] = {"n_images": len(data), "n_boxes": sum(d[2] for d in data)}
    supported = ClassicalMasker.from_preset("supported")
    runs = {
        "masker": lambda img: masker(img, polarity="auto"),
        "coarse_mask": lambda img: coarse_mask(img, method="classical", polarity="auto",
                                               classical_options={"preset": "isolated",
                                                                  **masker.options()}),
        "coarse_mask_auto_preset": lambda img: coarse_mask(img, method="classical"),
        "masker_supported": lambda img: supported(img, polarity="auto"),
        "coarse_mask_supported": lambda img: coarse_mask(
            img, method="classical", polarity="auto", classical_options={"preset": "supported"}),
    }
    for name, fn in runs.items():
        timer = Timer()
        rows = []
        for stem, img, n_boxes in data:
            with timer():
                pred = fn(img)
            n = int(pred.max())
            rows.append({"image": stem, "shape": list(img.shape),
                         "polarity": io.detect_polarity(img),
                         "n_pred": n, "n_boxes": n_boxes,
                         "abs_rel_error": abs(n - n_boxes) / max(n_boxes, 1),
                         "seconds": timer.times[-1]})
        pred_n = np.array([r["n_pred"] for r in rows], float)
        box_n = np.array([r["n_boxes"] for r in rows], float)
        agree = count_agreement(pred_n, box_n)
        summ = {
            "abs_rel_error": describe([r["abs_rel_error"] for r in rows]),
            "within_factor_2": agree["count_within_factor_2"],
            "pearson_r": agree["count_pearson_r"],
            "spearman_rho": agree["count_spearman_rho"],
            "seconds_per_image": timer.summary(),
        }
        out[name] = {"summary": summ, "per_image": rows}
        print(f"catalysts {name:22s} count |rel err| median {summ['abs_rel_error']['median']:.2f}"
              f"  Pearson r {summ['pearson_r']:.2f}  Spearman {summ['spearman_rho']:.2f}"
              f"  within x2 {summ['within_factor_2']:.2f}  {timer.median:.3f} s/img", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/classical.json"))
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set (smoke)")
    args = ap.parse_args(argv)
    masker = ClassicalMasker()
    t0 = time.perf_counter()
    result = {
        "benchmark": "classical coarse masker",
        "command": "python -m bench.bench_classical "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "masker_options": masker.options(),
        "supported_preset": ClassicalMasker.from_preset("supported").options(),
        "filters": DEFAULT_FILTERS,
        "emps_test": bench_emps(masker, args.limit),
        "catalysts": bench_catalysts(masker, args.limit),
    }
    result["total_seconds"] = time.perf_counter() - t0
    result["peak_rss_mib"] = peak_rss_mib()
    result["machine"] = machine()
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
