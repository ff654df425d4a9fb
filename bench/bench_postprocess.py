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
masks (no manual label involved in the choice), then with those particles growth to each
image's Otsu level, always and as ``emcopilot.postprocess.select_growth`` chooses it.
Several ``--prob`` folders (a run's ``segmentation/candidates/seed*``) are averaged image by
image: the ensemble of those segmentors.
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

from bench.common import write_json
from emcopilot import io
from emcopilot.evaluate import evaluate_dirs, read_probability_map
from emcopilot.postprocess import (otsu_threshold, prob_to_instances, select_growth,
                                   select_min_peak)

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


#: margins above each image's Otsu level tried for the core probability
OTSU_MARGINS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


def _otsu_margin_vs_coarse(probs: dict, otsu: dict, coarse: list) -> float:
    """The margin whose particles (threshold: the image's Otsu level, holes filled, core
    probability Otsu + margin) best match the coarse masks: object F1, pooled, no label."""
    from emcopilot.metrics import match_instances

    f1 = {}
    for margin in OTSU_MARGINS:
        tp = n_pred = n_ref = 0
        for (stem, prob), ref in zip(probs.items(), coarse):
            t = otsu[stem]
            m = match_instances(prob_to_instances(prob, t, fill_holes=True,
                                                  min_peak=min(t + margin, 0.99)), ref)
            tp, n_pred, n_ref = tp + len(m.pairs), n_pred + len(m.pred_ids), n_ref + len(m.true_ids)
        f1[margin] = 2 * tp / max(n_pred + n_ref, 1)
    print(f"core margin above Otsu vs coarse masks (object F1): "
          f"{ {k: round(v, 3) for k, v in f1.items()} }", flush=True)
    return max(OTSU_MARGINS, key=lambda m: (round(f1[m], 12), -m))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prob", required=True, type=Path, nargs="+",
                    help="folder of probability maps; with several folders (e.g. a run's "
                         "segmentation/candidates/seed*), each image's maps are averaged: the "
                         "ensemble of those segmentors")
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
    paths = {p.stem: p for p in sorted(args.prob[0].iterdir()) if p.suffix in (".png", ".npy")}
    probs = {stem: np.mean([read_probability_map(folder / path.name) for folder in args.prob],
                           axis=0, dtype=np.float32)
             for stem, path in paths.items()}  # read once
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
        # those particles (holes filled: the pipeline's), grown to each image's Otsu level:
        # always, and as the pipeline chooses it against the coarse masks
        mp = chosen["min_peak"]
        growth = select_growth(list(probs.values()), coarse, fill_holes=True, min_peak=mp)
        print(f"growth chosen against the coarse masks: {growth['grow_to']} "
              f"(object F1 vs coarse: {growth['f1']})")
        base = {"threshold": 0.5, "fill_holes": True, "min_peak": mp}
        configs.append((f"t0.5 holes filled + min peak {mp} + grown to otsu",
                        {**base, "grow_to": "otsu"}))
        configs.append((f"t0.5 holes filled + min peak {mp} + growth {growth['grow_to']} "
                        f"(chosen vs coarse)", {**base, "grow_to": growth["grow_to"]}))
        # each image's own Otsu level (the segmentor's maps sit low on real images), holes
        # filled; and a core probability that far above it, the margin chosen vs coarse
        otsu = {stem: otsu_threshold(p) for stem, p in probs.items()}
        configs.append(("otsu, holes filled", {"threshold": otsu, "fill_holes": True}))
        margin = _otsu_margin_vs_coarse(probs, otsu, coarse)
        configs.append((f"otsu, holes filled + core otsu+{margin:g} (chosen vs coarse)",
                        {"threshold": otsu, "fill_holes": True,
                         "min_peak": {s: min(t + margin, 0.99) for s, t in otsu.items()}}))
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
    write_json(args.out, {"prob": [str(d) for d in args.prob], "truth": str(args.truth),
                          "n_images": len(probs), "probability_percentiles": pct,
                          "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
