"""Coarse particles a segmentor missed: ``emcopilot.postprocess.add_coarse_particles`` and its
variants, scored against manual labels.

The segmentor's own particles are re-derived from its stored 8-bit probability maps with the
checkpoint's settings (``Segmentor.instances``: threshold, core probability, growth, holes), as
``emcopilot pipeline`` makes them before the addition; then each rule adds coarse particles and
``emcopilot.evaluate`` scores the result exactly as ``emcopilot evaluate`` does.

    python -m bench.bench_add_coarse --prob runs/emps16/segmentation/prob \
        --model runs/emps16/segmentor/selected --coarse runs/emps16/coarse_masks \
        --truth ../shared/data/emps_test/segmaps

Rows: no addition (the segmentor alone), then (covered_max, min_area_ratio, with or without the
probability condition) of ``add_coarse_particles``; the last row is the pipeline's default.
Choosing a rule on test labels is optimistic: the rows are a diagnosis (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.bench_postprocess import KEYS
from bench.common import write_json
from emcopilot import io
from emcopilot.evaluate import evaluate_dirs, read_probability_map
from emcopilot.inference import Segmentor
from emcopilot.postprocess import add_coarse_particles

# (name, covered_max, min_area_ratio, with the probability condition); None: nothing added
RULES: list[tuple[str, float | None, float, bool]] = [
    ("nothing added", None, 0.0, False),
    ("covered <= 10 %", 0.1, 0.0, False),
    ("covered <= 10 %, area >= 0.25 x median", 0.1, 0.25, False),
    ("covered <= 10 %, area >= 0.5 x median", 0.1, 0.5, False),
    ("covered <= 10 %, area >= 1 x median", 0.1, 1.0, False),
    ("covered <= 10 %, area >= 2 x median", 0.1, 2.0, False),
    ("covered <= 30 %, area >= 0.5 x median", 0.3, 0.5, False),
    ("covered <= 10 %, probability >= Otsu", 0.1, 0.0, True),
    ("covered <= 10 %, area >= 0.5 x median, probability >= Otsu (default)", 0.1, 0.5, True),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prob", type=Path, required=True, help="folder of 8-bit probability maps")
    ap.add_argument("--model", type=Path, required=True,
                    help="the segmentor checkpoint that made them (its particle settings)")
    ap.add_argument("--coarse", type=Path, required=True, help="coarse masks of the same images")
    ap.add_argument("--truth", type=Path, required=True, help="manual label maps")
    ap.add_argument("--truth-format", default="instance", help="as `emcopilot evaluate`'s")
    ap.add_argument("--out", type=Path, default=Path("bench/results/add_coarse.json"))
    args = ap.parse_args(argv)

    seg = Segmentor.load(args.model, device="cpu")
    stems = sorted(p.stem for p in args.prob.glob("*.png") if (args.coarse / p.name).is_file())
    results = []
    print(f"{'rule':70s} " + " ".join(f"{k[:12]:>12s}" for k in KEYS))
    with tempfile.TemporaryDirectory() as tmp:
        own_dir = Path(tmp) / "own"
        for stem in stems:  # the segmentor's own particles, once
            prob = read_probability_map(args.prob / f"{stem}.png")
            io.write_label_map(own_dir / f"{stem}.png", seg.instances(prob))
        for name, covered_max, area_ratio, use_prob in RULES:
            t0 = time.perf_counter()
            pred = own_dir
            if covered_max is not None:
                pred = Path(tmp) / "added"
                for stem in stems:
                    prob = read_probability_map(args.prob / f"{stem}.png") if use_prob else None
                    io.write_label_map(pred / f"{stem}.png", add_coarse_particles(
                        io.read_label_map(own_dir / f"{stem}.png"),
                        io.read_label_map(args.coarse / f"{stem}.png"), prob,
                        covered_max=covered_max, min_area_ratio=area_ratio))
            agg = evaluate_dirs(pred, args.truth, truth_format=args.truth_format,
                                prob_dir=None)["aggregate"]
            row = {"rule": name, "covered_max": covered_max, "min_area_ratio": area_ratio,
                   "probability_condition": use_prob, **{k: agg.get(k) for k in KEYS},
                   "seconds": round(time.perf_counter() - t0, 1)}
            results.append(row)
            print(f"{name:70s} " + " ".join(
                f"{(row[k] if row[k] is not None else float('nan')):12.3f}" for k in KEYS),
                flush=True)
    write_json(args.out, {"prob": str(args.prob), "model": str(args.model),
                          "coarse": str(args.coarse), "truth": str(args.truth),
                          "truth_format": args.truth_format,
                          "n_images": len(stems), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
