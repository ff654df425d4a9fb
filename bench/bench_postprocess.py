"""Post-processing sweep: probability maps -> instance label maps, scored against manual labels.

Takes the probability maps a segmentor wrote (``emcopilot segment`` / ``emcopilot pipeline``
write ``<out>/prob/<stem>.png``) and re-runs only the last step (threshold + watershed split +
small-object removal) with several settings, scoring each with ``emcopilot.evaluate`` exactly as
``emcopilot evaluate`` does. It isolates the post-processing from the network: which threshold
and which splitting turn a good pixel ranking (AUC) into good objects.

    python -m bench.bench_postprocess --prob runs/emps/segmentation/prob \
        --truth ../shared/data/emps_test/segmaps --out bench/results/postprocess.json

With ``--coarse DIR`` (the run's ``coarse_masks/``) it also tries a label-free minimum particle
area per image: a fraction of the median area of that image's coarse-mask particles (priors),
and the ``min_peak`` that ``emcopilot.postprocess.select_min_peak`` picks against the coarse
masks (no manual label involved in the choice).
It prints percentiles of the pooled probabilities first (how compressed the maps are).

Choosing settings on the test labels is optimistic; the rows are a diagnosis, the shipped
defaults are chosen without labels (see ``emcopilot.postprocess``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from emcopilot import io
from emcopilot.evaluate import evaluate_dirs, read_probability_map
from emcopilot.postprocess import prob_to_instances, select_min_peak

KEYS = ("dice_mean", "obj_precision", "obj_recall", "obj_f1", "obj_f1_mean",
        "count_rel_abs_error_mean", "count_rel_abs_error_median", "median_diameter_rel_error",
        "ks_distance")

# (name, keyword arguments of prob_to_instances)
CONFIGS: list[tuple[str, dict]] = [
    ("t0.5 split3 h2 (old default)", dict(threshold=0.5, min_distance=3, h=2.0, min_area=10)),
    ("t0.3", dict(threshold=0.3)),
    ("t0.4", dict(threshold=0.4)),
    ("t0.45", dict(threshold=0.45)),
    ("t0.52", dict(threshold=0.52)),
    ("t0.54", dict(threshold=0.54)),
    ("t0.6", dict(threshold=0.6)),
    ("otsu", dict(threshold="otsu")),
    ("t0.5 no split", dict(threshold=0.5, min_distance=0)),
    ("t0.5 split h4", dict(threshold=0.5, h=4.0)),
    ("t0.5 split7 h4", dict(threshold=0.5, min_distance=7, h=4.0)),
    ("t0.5 min_area 30", dict(threshold=0.5, min_area=30)),
    ("t0.5 distance surface", dict(threshold=0.5, surface="distance")),
    ("t0.5 hole fill + open", dict(threshold=0.5, fill_holes=True, opening=1)),
    ("t0.5 min peak 0.6", dict(threshold=0.5, min_peak=0.6)),
    ("t0.5 min peak 0.7", dict(threshold=0.5, min_peak=0.7)),
    ("t0.5 min peak 0.8", dict(threshold=0.5, min_peak=0.8)),
    ("t0.5 holes filled", dict(threshold=0.5, fill_holes=True)),
    ("t0.5 holes filled + min peak 0.7", dict(threshold=0.5, fill_holes=True, min_peak=0.7)),
]
#: with --coarse: min_area = max(10, fraction x median coarse-mask particle area of the image)
PRIOR_CONFIGS = [("t0.5 min area 0.1 x coarse median", 0.1),
                 ("t0.5 min area 0.25 x coarse median", 0.25)]


def _coarse_min_areas(coarse_dir: Path, stems, fraction: float) -> dict[str, int]:
    out = {}
    for stem in stems:
        labels = io.read_label_map(coarse_dir / f"{stem}.png")
        areas = np.bincount(labels.ravel())[1:]
        areas = areas[areas > 0]
        out[stem] = int(max(10, fraction * np.median(areas))) if areas.size >= 3 else 10
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prob", required=True, type=Path, help="folder of probability maps")
    ap.add_argument("--truth", required=True, type=Path, help="folder of instance label maps")
    ap.add_argument("--out", type=Path, default=Path("bench/results/postprocess.json"))
    ap.add_argument("--truth-format", default="instance",
                    help="as `emcopilot evaluate --truth-format` (instance, binary, class:N, yolo)")
    ap.add_argument("--coarse", type=Path, default=None,
                    help="the run's coarse_masks/ folder: adds the priors-based minimum-area rows")
    ap.add_argument("--only", nargs="*", help="run only configs whose name contains one of these")
    ap.add_argument("--extra", type=str, default=None,
                    help='extra config as JSON, e.g. \'{"threshold": 0.35, "h": 3}\'')
    args = ap.parse_args(argv)
    paths = {p.stem: p for p in sorted(args.prob.iterdir()) if p.suffix in (".png", ".npy")}
    probs = {stem: read_probability_map(path) for stem, path in paths.items()}  # read once
    pooled = np.concatenate([p.ravel() for p in probs.values()])
    pct = {q: round(float(np.percentile(pooled, q)), 3) for q in (1, 10, 50, 60, 90, 99)}
    print(f"pooled probability percentiles: {pct}")
    configs = list(CONFIGS)
    if args.coarse:
        for name, fraction in PRIOR_CONFIGS:
            configs.append((name, {"threshold": 0.5,
                                   "min_area": _coarse_min_areas(args.coarse, probs, fraction)}))
        coarse = [io.read_label_map(args.coarse / f"{stem}.png") for stem in probs]
        # as the pipeline did before holes were filled, and as it does now (its particles)
        for fill in (False, True):
            chosen = select_min_peak(list(probs.values()), coarse, fill_holes=fill)
            print(f"min_peak chosen against the coarse masks{', holes filled' if fill else ''}: "
                  f"{chosen['min_peak']} (object F1 vs coarse: {chosen['f1']})")
            configs.append((f"t0.5 {'holes filled + ' if fill else ''}min peak "
                            f"{chosen['min_peak']} (chosen vs coarse)",
                            {"threshold": 0.5, "min_peak": chosen["min_peak"],
                             "fill_holes": fill}))
    if args.extra:
        configs.append((f"extra {args.extra}", json.loads(args.extra)))
    if args.only:
        configs = [c for c in configs if any(s in c[0] for s in args.only)]
    results = []
    print(f"{'setting':34s} " + " ".join(f"{k[:12]:>12s}" for k in KEYS))
    for name, kw in configs:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            for stem, prob in probs.items():
                per_image = {k: (v[stem] if isinstance(v, dict) else v) for k, v in kw.items()}
                labels = prob_to_instances(prob, **per_image)
                io.write_label_map(Path(tmp) / f"{stem}.png", labels)
            res = evaluate_dirs(tmp, args.truth, truth_format=args.truth_format, prob_dir=None)
        agg = res["aggregate"]
        shown = {k: ("per image" if isinstance(v, dict) else v) for k, v in kw.items()}
        row = {"setting": name, "kwargs": shown, **{k: agg.get(k) for k in KEYS},
               "seconds": round(time.perf_counter() - t0, 1)}
        results.append(row)
        print(f"{name:34s} " + " ".join(f"{(row[k] if row[k] is not None else float('nan')):12.3f}"
                                        for k in KEYS), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"prob": str(args.prob), "truth": str(args.truth),
                                    "n_images": len(probs), "probability_percentiles": pct,
                                    "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
