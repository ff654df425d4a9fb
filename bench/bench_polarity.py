"""Polarity detection (``emcopilot.polarity``): accuracy on labelled images, speed, and the fit of
its weights.

    .venv/bin/python -m bench.bench_polarity --out bench/results/polarity.json
    .venv/bin/python -m bench.bench_polarity --fit     # also re-derive polarity.WEIGHTS

Truth: the side the labelled particles are on (mean intensity inside the manual masks against
outside; images where the two differ by under 0.02 of the range are left out as undecidable).
Sets: EMPS train (the weights are fitted here, and only here), EMPS test, and the 33 catalyst
S/TEM images (box centres as particles) with each image's inverse. Rows: the library's
``detect_polarity`` and the earlier rule (the histogram tail alone, full resolution) it replaced.

``--fit``: L2-regularised logistic regression without intercept (so the answer flips exactly
when the image is inverted) on the EMPS train cues, regularisation strength chosen by 5-fold
cross-validation; prints the weights to paste into ``emcopilot/polarity.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import minimize

from bench.common import Timer, catalyst_items, emps_pairs, machine, write_json
from emcopilot import io
from emcopilot.data_bar import find_data_bar
from emcopilot.evaluate import read_yolo_boxes
from emcopilot.polarity import WEIGHTS, polarity_cues, tail_margin, weighted_score

#: smallest particle-background mean difference (image in [0, 1]) that decides the truth
MIN_CONTRAST = 0.02
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def histogram_tail_rule(image01: np.ndarray) -> str:
    """The rule ``io.detect_polarity`` used before ``emcopilot.polarity`` (for comparison): the
    histogram-tail cue alone, on the full-resolution image smoothed with sigma 1.5 px."""
    smooth = ndi.gaussian_filter(np.asarray(image01, np.float32), 1.5)
    return "bright" if tail_margin(smooth) >= 0 else "dark"


def _box_centres(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Mask of the central half of each YOLO box (the particle, not its corners)."""
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in read_yolo_boxes(path, shape):
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, max(1.0, min(x1 - x0, y1 - y0) / 4)
        mask[max(0, int(cy - r)):int(cy + r) + 1, max(0, int(cx - r)):int(cx + r) + 1] = True
    return mask


def labelled(split: str) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image01, particle mask) of a set: "emps_train", "emps_test" or "catalysts"."""
    if split == "catalysts":
        for img_path, lab_path in catalyst_items():
            image01 = io.normalize(io.read_micrograph(img_path).image)
            mask = _box_centres(lab_path, image01.shape)
            yield img_path.stem, image01, mask
            yield img_path.stem + " (inverted)", 1.0 - image01, mask
        return
    for img_path, seg_path in emps_pairs(split.removeprefix("emps_")):
        yield img_path.stem, io.normalize(io.read_micrograph(img_path).image), \
            io.read_label_map(seg_path) > 0


def measure(split: str, above_data_bar: bool = False) -> list[dict[str, Any]]:
    rows, timer = [], Timer()
    for name, image01, mask in labelled(split):
        if not mask.any() or mask.all():
            continue
        contrast = float(image01[mask].mean() - image01[~mask].mean())
        if abs(contrast) < MIN_CONTRAST:
            continue
        with timer():
            cues = polarity_cues(image01[:find_data_bar(image01)] if above_data_bar
                                 else image01)
        score = weighted_score(cues)
        rows.append({"image": name, "truth": "bright" if contrast > 0 else "dark",
                     "contrast": contrast, "cues": cues, "score": score,
                     "detected": "bright" if score >= 0 else "dark",
                     "histogram_tail_rule": histogram_tail_rule(image01)})
    print(f"{split}: {len(rows)} images, cues {timer.median:.3f} s / image (median)", flush=True)
    return rows


def _matrix(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([[r["cues"][k] for k in WEIGHTS] for r in rows], np.float64)
    y = np.array([r["truth"] == "bright" for r in rows])
    return x, y


def fit(x: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    """L2 logistic regression without intercept; cues scaled by their RMS for the penalty."""
    scale = np.sqrt((x ** 2).mean(axis=0)) + 1e-9
    z, sign = x / scale, np.where(y, 1.0, -1.0)

    def loss(w: np.ndarray) -> float:
        return float(np.logaddexp(0.0, -sign * (z @ w)).sum() + 0.5 / c * (w ** 2).sum())

    return minimize(loss, np.zeros(x.shape[1]), method="L-BFGS-B").x / scale


def accuracy(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(((x @ w >= 0) == y).mean())


def fit_weights(train: list[dict]) -> dict[str, Any]:
    x, y = _matrix(train)
    fold = np.arange(len(y)) % 5
    cv = {}
    for c in C_GRID:
        cv[c] = float(np.mean([accuracy(fit(x[fold != k], y[fold != k], c), x[fold == k],
                                        y[fold == k]) for k in range(5)]))
        print(f"C {c:g}: 5-fold accuracy {cv[c]:.3f}", flush=True)
    best = max(C_GRID, key=lambda c: (round(cv[c], 9), -c))
    w = fit(x, y, best)
    weights = {k: round(float(v), 3) for k, v in zip(WEIGHTS, w)}
    print(f"chosen C {best:g}; WEIGHTS = {weights}", flush=True)
    return {"cv_accuracy": {str(c): a for c, a in cv.items()}, "C": best, "weights": weights}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="JSON results file")
    ap.add_argument("--fit", action="store_true", help="re-derive the weights on EMPS train")
    ap.add_argument("--above-data-bar", action="store_true",
                    help="measure the cues on the rows above an instrument data bar (the library "
                         "measures the whole frame; BENCHMARKS.md compares the two)")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {"machine": machine(), "weights": WEIGHTS, "sets": {}}
    for split in ("emps_train", "emps_test", "catalysts"):
        rows = measure(split, args.above_data_bar)
        n = len(rows)
        new = sum(r["detected"] == r["truth"] for r in rows)
        old = sum(r["histogram_tail_rule"] == r["truth"] for r in rows)
        out["sets"][split] = {"n_images": n, "detect_polarity_right": new,
                              "histogram_tail_rule_right": old, "per_image": rows}
        print(f"{split}: detect_polarity {new}/{n} right, histogram tail rule {old}/{n}"
              + (" (weights fitted here)" if split == "emps_train" else ""), flush=True)
        wrong = [r["image"] for r in rows if r["detected"] != r["truth"]]
        if wrong:
            print(f"  wrong: {', '.join(wrong)}", flush=True)
    if args.fit:
        out["fit"] = fit_weights(out["sets"]["emps_train"]["per_image"])
        for split in ("emps_test", "catalysts"):
            rows = out["sets"][split]["per_image"]
            right = sum((weighted_score(r["cues"], out["fit"]["weights"]) >= 0)
                        == (r["truth"] == "bright") for r in rows)
            print(f"refitted weights on {split}: {right}/{len(rows)} right", flush=True)
    if args.out:
        write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
