"""Rules that would join the pieces of a large particle the classical masker cut at a waist,
scored on the EMPS *train* split (the test split is kept for what is adopted).

    .venv/bin/python -m bench.bench_split_rules --out bench/results/split_rules.json

- ``split_share``: the watershed's h-maxima merge also asks the dip between two regions to
  be at least this share of the lower peak (``instances.binary_to_instances(h_share=)``);
- convex merge: after the split, the two neighbouring particles whose union is most convex
  are joined while some union's solidity is at least the threshold (a wire cut at a waist is
  nearly convex whole, two touching spheres are not).

Each row: the classical masker ("isolated", annotations dropped, the default filters) scored
with ``emcopilot.evaluate``. Stop 39 kept neither rule (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from bench.common import classical_scores, emps_pairs, machine, print_scores, write_json

KEYS = ("dice_mean", "obj_precision", "obj_recall", "obj_f1", "count_rel_abs_error_mean",
        "count_rel_abs_error_median", "ks_distance", "n_pred")


def merge_convex(labels: np.ndarray, min_solidity: float) -> np.ndarray:
    """``labels`` with neighbouring particles joined, the most convex union first, while a
    union's solidity (area / convex hull area) is at least ``min_solidity``."""
    from skimage.morphology import convex_hull_image

    lab = labels.copy()
    while True:
        pairs = set()
        for a, b in ((lab[:, :-1], lab[:, 1:]), (lab[:-1, :], lab[1:, :])):
            sel = (a != b) & (a > 0) & (b > 0)
            pairs.update(zip(np.minimum(a[sel], b[sel]).tolist(),
                             np.maximum(a[sel], b[sel]).tolist()))
        boxes = ndi.find_objects(lab)
        best = None
        for a, b in pairs:
            box = tuple(slice(min(x.start, y.start), max(x.stop, y.stop))
                        for x, y in zip(boxes[a - 1], boxes[b - 1]))
            union = np.isin(lab[box], (a, b))
            solidity = union.sum() / convex_hull_image(union).sum()
            if solidity >= min_solidity and (best is None or solidity > best[0]):
                best = (solidity, a, b)
        if best is None:
            return lab
        lab[lab == best[2]] = best[1]


@contextlib.contextmanager
def convex_merge(min_solidity: float):
    """The classical masker's split followed by :func:`merge_convex`, within the block."""
    import emcopilot.masking.classical as classical

    split = classical.binary_to_instances
    classical.binary_to_instances = lambda *a, **k: merge_convex(split(*a, **k), min_solidity)
    try:
        yield
    finally:
        classical.binary_to_instances = split


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/split_rules.json"))
    ap.add_argument("--shares", default="0,0.2,0.3,0.4,0.5")
    ap.add_argument("--solidities", default="0.95,0.92")
    ap.add_argument("--limit", type=int, default=None, help="first N train images only")
    args = ap.parse_args(argv)
    pairs = emps_pairs("train")[:args.limit]
    scores = classical_scores(pairs, {f"split_share {s}": {"classical": {"split_share": float(s)}}
                                      for s in args.shares.split(",")}, KEYS)
    for t in args.solidities.split(","):
        with convex_merge(float(t)):
            scores.update({f"convex merge {t}": v for v in
                           classical_scores(pairs, {"": {}}, KEYS).values()})
    print_scores(scores)
    write_json(args.out, {"machine": machine(), "images": len(pairs), "scores": scores})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
