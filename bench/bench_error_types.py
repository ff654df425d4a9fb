"""What kind of object errors a set of particles makes against manual labels.

Object F1 counts a particle as found only when one prediction overlaps it with IoU >= 0.5. This
splits the misses: for every true particle, the best IoU any predicted particle reaches (none /
below 0.2 / 0.2-0.5 / matched), the same for every predicted particle, and for predicted
particles that overlap a true one with IoU below 0.2, whether they merge several true particles
(cover more than half of two or more) or are fragments (smaller than half of the true particle
they overlap most).

    python -m bench.bench_error_types --pred runs/emps/segmentation \
        --truth ../shared/data/emps_test/segmaps
    python -m bench.bench_error_types --pred runs/emps/coarse_masks \
        --truth ../shared/data/emps_test/segmaps
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.common import write_json
from emcopilot import io

BINS = ("none", "iou<0.2", "iou 0.2-0.5", "matched (iou>=0.5)")


def best_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each particle 1..max of label map ``a``: its highest IoU with any particle of ``b``."""
    na, nb = int(a.max()), int(b.max())
    out = np.zeros(na + 1)
    if na and nb:
        both = (a > 0) & (b > 0)
        pair = a[both].astype(np.int64) * (nb + 1) + b[both]
        keys, inter = np.unique(pair, return_counts=True)
        ia, ib = keys // (nb + 1), keys % (nb + 1)
        size_a = np.bincount(a.ravel(), minlength=na + 1)
        size_b = np.bincount(b.ravel(), minlength=nb + 1)
        np.maximum.at(out, ia, inter / (size_a[ia] + size_b[ib] - inter))
    present = np.bincount(a.ravel(), minlength=na + 1)[1:] > 0
    return out[1:][present]


def _bins(x: np.ndarray) -> np.ndarray:
    return np.array([(x == 0).sum(), ((x > 0) & (x < 0.2)).sum(),
                     ((x >= 0.2) & (x < 0.5)).sum(), (x >= 0.5).sum()])


def low_iou_kinds(pred: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """Predicted particles overlapping a true one with best IoU < 0.2: merged / fragment / other."""
    kinds = {"merged": 0, "fragment": 0, "other": 0}
    if pred.max() == 0 or truth.max() == 0:
        return kinds
    ious = np.zeros(int(pred.max()) + 1)
    ids = np.unique(pred[pred > 0])
    ious[ids] = best_iou(pred, truth)
    true_area = np.bincount(truth.ravel(), minlength=int(truth.max()) + 1)
    for i in ids[(ious[ids] > 0) & (ious[ids] < 0.2)]:
        inside = pred == i
        t_ids, t_px = np.unique(truth[inside], return_counts=True)
        keep = t_ids > 0
        t_ids, t_px = t_ids[keep], t_px[keep]
        if np.sum(t_px > 0.5 * true_area[t_ids]) >= 2:
            kinds["merged"] += 1
        elif inside.sum() < 0.5 * true_area[t_ids[np.argmax(t_px)]]:
            kinds["fragment"] += 1
        else:
            kinds["other"] += 1
    return kinds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pred", required=True, type=Path, help="folder of predicted label maps")
    ap.add_argument("--truth", required=True, type=Path, help="folder of true label maps")
    ap.add_argument("--out", type=Path, default=Path("bench/results/error_types.json"))
    args = ap.parse_args(argv)
    t_bins, p_bins = np.zeros(4, int), np.zeros(4, int)
    kinds = {"merged": 0, "fragment": 0, "other": 0}
    n = 0
    for path in sorted(args.pred.glob("*.png")):
        if not (args.truth / path.name).is_file():
            continue
        pred, truth = io.read_label_map(path), io.read_label_map(args.truth / path.name)
        t_bins += _bins(best_iou(truth, pred))
        p_bins += _bins(best_iou(pred, truth))
        for k, v in low_iou_kinds(pred, truth).items():
            kinds[k] += v
        n += 1
    res = {"images": n, "true_by_best_iou": dict(zip(BINS, t_bins.tolist())),
           "pred_by_best_iou": dict(zip(BINS, p_bins.tolist())), "pred_low_iou_kinds": kinds}
    for name, b in (("true particles", t_bins), ("predicted particles", p_bins)):
        print(f"{name} ({b.sum()}) by best IoU: " + ", ".join(
            f"{k} {v} ({v / max(b.sum(), 1):.0%})" for k, v in zip(BINS, b)))
    print(f"predicted particles with 0 < IoU < 0.2: {kinds}")
    write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
