"""Coarse particles a segmentor missed: ``emcopilot.postprocess.add_coarse_particles`` and its
variants, scored against manual labels.

The segmentor's own particles are re-derived from its stored 8-bit probability maps with the
checkpoint's settings (``Segmentor.instances``: threshold, core probability, growth, holes), as
``emcopilot pipeline`` makes them before the addition; then each rule adds coarse particles and
``emcopilot.evaluate`` scores the result exactly as ``emcopilot evaluate`` does.

    python -m bench.bench_add_coarse --prob runs/emps16/segmentation/prob \
        --model runs/emps16/segmentor/selected --coarse runs/emps16/coarse_masks \
        --truth ../shared/data/emps_test/segmaps

Rows: no addition (the segmentor alone), then (covered_max, min_area_ratio, and which evidence
must say a candidate is a particle: none, the probability map, the image's contrast against
the particles both found (``--images``), or either) of ``add_coarse_particles``; the row marked
"(default)" is what the pipeline does.
Choosing a rule on test labels is optimistic: the rows are a diagnosis (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

from bench.bench_postprocess import KEYS
from bench.common import write_json
from emcopilot import io
from emcopilot.evaluate import evaluate_dirs, read_probability_map
from emcopilot.inference import Segmentor
from emcopilot.postprocess import add_coarse_particles

# (name, covered_max, min_area_ratio, evidence: "" none, "p" probability >= Otsu, "c" contrast
# >= the quantile of the particles both agree on, "p|c" either; that quantile); None: nothing
RULES: list[tuple[str, float | None, float, str, float]] = [
    ("nothing added", None, 0.0, "", 0.0),
    ("covered <= 10 %", 0.1, 0.0, "", 0.0),
    ("covered <= 10 %, area >= 0.5 x median", 0.1, 0.5, "", 0.0),
    ("covered <= 30 %, area >= 0.5 x median", 0.3, 0.5, "", 0.0),
    ("covered <= 10 %, probability >= Otsu", 0.1, 0.0, "p", 0.0),
    ("covered <= 10 %, area >= 0.5 x median, probability >= Otsu (default)", 0.1, 0.5, "p", 0.0),
    ("covered <= 10 %, area >= 0.5 x median, contrast >= q10 of agreed", 0.1, 0.5, "c", 0.1),
    ("covered <= 10 %, area >= 0.5 x median, contrast >= q25 of agreed", 0.1, 0.5, "c", 0.25),
    ("covered <= 10 %, area >= 0.5 x median, contrast >= q50 of agreed", 0.1, 0.5, "c", 0.5),
    ("covered <= 10 %, area >= 0.5 x median, probability or contrast q10", 0.1, 0.5, "p|c", 0.1),
    ("covered <= 10 %, area >= 0.5 x median, probability or contrast q25", 0.1, 0.5, "p|c", 0.25),
    ("covered <= 10 %, area >= 0.5 x median, probability or contrast q50", 0.1, 0.5, "p|c", 0.5),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prob", type=Path, required=True, help="folder of 8-bit probability maps")
    ap.add_argument("--model", type=Path, required=True,
                    help="the segmentor checkpoint that made them (its particle settings)")
    ap.add_argument("--coarse", type=Path, required=True, help="coarse masks of the same images")
    ap.add_argument("--truth", type=Path, required=True, help="manual label maps")
    ap.add_argument("--images", type=Path, default=None,
                    help="the images, for the contrast rules (left out without it)")
    ap.add_argument("--polarity", default="bright", choices=("bright", "auto"),
                    help="bright (default): --images have bright particles (a pipeline run's "
                         "images/); auto: detect each image's polarity and convert, as "
                         "`emcopilot segment` does")
    ap.add_argument("--only", nargs="*", default=None,
                    help="score only the rules whose names contain one of these strings")
    ap.add_argument("--truth-format", default="instance", help="as `emcopilot evaluate`'s")
    ap.add_argument("--out", type=Path, default=Path("bench/results/add_coarse.json"))
    args = ap.parse_args(argv)

    seg = Segmentor.load(args.model, device="cpu")
    stems = sorted(p.stem for p in args.prob.glob("*.png") if (args.coarse / p.name).is_file())
    results = []

    @functools.lru_cache(maxsize=None)
    def bright(stem: str):  # each image once, in the bright-particle convention
        return io.bright_particles(io.normalize(io.read_micrograph(
            args.images / f"{stem}.png").image), args.polarity)

    print(f"{'rule':70s} " + " ".join(f"{k[:12]:>12s}" for k in KEYS))
    with tempfile.TemporaryDirectory() as tmp:
        own_dir = Path(tmp) / "own"
        for stem in stems:  # the segmentor's own particles, once
            prob = read_probability_map(args.prob / f"{stem}.png")
            io.write_label_map(own_dir / f"{stem}.png", seg.instances(prob))
        for name, covered_max, area_ratio, evidence, quantile in RULES:
            if "c" in evidence and args.images is None:
                continue
            if args.only and not any(o in name for o in args.only):
                continue
            t0 = time.perf_counter()
            pred = own_dir
            if covered_max is not None:
                pred = Path(tmp) / "added"
                for stem in stems:
                    prob = (read_probability_map(args.prob / f"{stem}.png") if "p" in evidence
                            else None)
                    image01 = bright(stem) if "c" in evidence else None
                    io.write_label_map(pred / f"{stem}.png", add_coarse_particles(
                        io.read_label_map(own_dir / f"{stem}.png"),
                        io.read_label_map(args.coarse / f"{stem}.png"), prob, image01=image01,
                        covered_max=covered_max, min_area_ratio=area_ratio,
                        contrast_quantile=quantile))
            agg = evaluate_dirs(pred, args.truth, truth_format=args.truth_format,
                                prob_dir=None)["aggregate"]
            row = {"rule": name, "covered_max": covered_max, "min_area_ratio": area_ratio,
                   "evidence": evidence,
                   "contrast_quantile": quantile if "c" in evidence else None,
                   **{k: agg.get(k) for k in KEYS},
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
