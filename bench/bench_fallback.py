"""A per-image fallback to the coarse masks, simulated from two ``evaluate --out`` reports.

Rule (label-free): where the segmentor finds fewer than ``r`` times as many particles as the
coarse masker in an image, that image's particles are taken from the coarse mask instead. The
bench reads the per-image rows (``per_image.csv``) of ``evaluate`` on a run's
``segmentation/`` (``--pred-eval``) and on the same run's ``coarse_masks/`` (``--coarse-eval``),
and prints for each ``r`` the pooled object F1 (one-to-one at IoU 0.5, summed over images as
``evaluate`` does) and the count agreement (``evaluate.count_agreement``: mean / median
absolute relative count error, within x2, correlations), as ``evaluate`` would report them for
the mixed folder (pixel Dice and KS are not recomputed).

    python -m bench.bench_fallback --pred-eval runs/eval/cat19 --coarse-eval runs/eval/cat19_coarse
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import per_image_rows
from emcopilot.evaluate import count_agreement

RATIOS = (0.25, 0.33, 0.5, 0.67, 1.0)


def score(pred: dict, coarse: dict, ratio: float | None) -> dict:
    """Pooled object F1 and count errors when images with n_pred < ratio x n_coarse take the
    coarse row (``ratio`` None: the segmentor everywhere)."""
    names = [n for n in pred if n in coarse]
    chosen = [coarse[n] if ratio is not None
              and int(pred[n]["n_pred"]) < ratio * int(coarse[n]["n_pred"]) else pred[n]
              for n in names]
    col = {k: [int(r[k]) for r in chosen] for k in ("n_pred", "n_true", "obj_tp")}
    tp, n_pred, n_true = sum(col["obj_tp"]), sum(col["n_pred"]), sum(col["n_true"])
    counts = count_agreement(col["n_pred"], col["n_true"])
    return {"ratio": ratio, "images": len(names),
            "images_from_coarse": sum(r is not pred[n] for n, r in zip(names, chosen)),
            "obj_f1": round(2 * tp / max(1, n_pred + n_true), 3),
            **{k: round(v, 3) if isinstance(v, float) else v for k, v in counts.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pred-eval", required=True, type=Path)
    ap.add_argument("--coarse-eval", required=True, type=Path)
    ap.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    args = ap.parse_args(argv)
    pred, coarse = per_image_rows(args.pred_eval), per_image_rows(args.coarse_eval)
    rows = [score(pred, coarse, None)] + [score(pred, coarse, r) for r in args.ratios]
    only = score(coarse, coarse, None)
    rows.append(dict(only, ratio="coarse masks only", images_from_coarse=only["images"]))
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
