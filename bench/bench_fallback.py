"""A per-image fallback to the coarse masks, simulated from two ``evaluate --out`` reports.

Rule (label-free): where the segmentor finds fewer than ``r`` times as many particles as the
coarse masker in an image, that image's particles are taken from the coarse mask instead. The
bench reads the per-image rows (``per_image.csv``) of ``evaluate`` on a run's
``segmentation/`` (``--pred-eval``) and on the same run's ``coarse_masks/`` (``--coarse-eval``),
and prints for each ``r`` the pooled object F1 (one-to-one at IoU 0.5, summed over images as
``evaluate`` does) and the mean / median absolute relative count error, as ``evaluate`` would
report them for the mixed folder (pixel Dice and KS are not recomputed).

    python -m bench.bench_fallback --pred-eval runs/eval/cat19 --coarse-eval runs/eval/cat19_coarse
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

RATIOS = (0.25, 0.33, 0.5, 0.67, 1.0)


def _rows(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "per_image.csv", newline="", encoding="utf-8") as fh:
        return {r["name"]: r for r in csv.DictReader(fh)}


def score(pred: dict, coarse: dict, ratio: float | None) -> dict:
    """Pooled object F1 and count errors when images with n_pred < ratio x n_coarse take the
    coarse row (``ratio`` None: the segmentor everywhere)."""
    names = [n for n in pred if n in coarse]
    tp = fp = fn = used = 0
    errors = []
    for n in names:
        take = ratio is not None and int(pred[n]["n_pred"]) < ratio * int(coarse[n]["n_pred"])
        row = coarse[n] if take else pred[n]
        used += take
        tp, fp, fn = (tp + int(row["obj_tp"]), fp + int(row["obj_fp"]), fn + int(row["obj_fn"]))
        if int(row["n_true"]) > 0:
            errors.append(abs(float(row["relative_count_error"])))
    return {"ratio": ratio, "images_from_coarse": used, "images": len(names),
            "obj_f1": round(2 * tp / max(1, 2 * tp + fp + fn), 3),
            "count_rel_abs_error_mean": round(float(np.mean(errors)), 3),
            "count_rel_abs_error_median": round(float(np.median(errors)), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pred-eval", required=True, type=Path)
    ap.add_argument("--coarse-eval", required=True, type=Path)
    ap.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    args = ap.parse_args(argv)
    pred, coarse = _rows(args.pred_eval), _rows(args.coarse_eval)
    rows = [score(pred, coarse, None)] + [score(pred, coarse, r) for r in args.ratios]
    only = score(coarse, coarse, None)
    rows.append(dict(only, ratio="coarse masks only", images_from_coarse=only["images"]))
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
