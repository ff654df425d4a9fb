"""Does agreement with the coarse masks pick the better segmentor? (label-free model selection)

For each pipeline run folder given (its ``segmentation/prob/`` maps and ``coarse_masks/``), makes
the particles as the pipeline does (threshold 0.5, holes filled, the core probability
``select_min_peak`` chooses against the coarse masks), then scores them twice: against the
coarse masks (object F1: what ``emcopilot pipeline --segmentor-seeds N`` maximises, no label)
and against manual labels (``emcopilot.evaluate``). Prints one row per run and the rank
correlation of the two F1s: if it is high, choosing among segmentors by coarse-mask agreement
picks the ones the labels would have picked.

    python -m bench.bench_model_selection --runs runs/emps7 runs/emps7s1 runs/emps8 \
        --truth ../shared/data/emps_test/segmaps
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from bench.common import write_json
from emcopilot import io
from emcopilot.evaluate import evaluate_dirs, read_probability_map
from emcopilot.postprocess import prob_to_instances, select_min_peak

KEYS = ("dice_mean", "obj_f1", "count_rel_abs_error_mean", "ks_distance")


def score_run(run: Path, truth: Path, truth_format: str = "instance") -> dict:
    """The pipeline's particles of one run, scored against its coarse masks and the labels."""
    prob_dir, coarse_dir = run / "segmentation" / "prob", run / "coarse_masks"
    stems = sorted(p.stem for p in prob_dir.glob("*.png"))
    if not stems:
        raise SystemExit(f"{prob_dir}: no probability maps")
    probs = [read_probability_map(prob_dir / f"{s}.png") for s in stems]
    choice = select_min_peak(probs, (io.read_label_map(coarse_dir / f"{s}.png") for s in stems),
                             fill_holes=True)
    with tempfile.TemporaryDirectory() as tmp:
        for stem, prob in zip(stems, probs):
            io.write_label_map(Path(tmp) / f"{stem}.png",
                               prob_to_instances(prob, 0.5, fill_holes=True,
                                                 min_peak=choice["min_peak"]))
        agg = evaluate_dirs(tmp, truth, truth_format=truth_format, prob_dir=None)["aggregate"]
    return {"run": str(run), "min_peak": choice["min_peak"],
            "f1_vs_coarse": choice["f1"][str(choice["min_peak"])],
            **{k: agg.get(k) for k in KEYS}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True, type=Path, help="pipeline run folders")
    ap.add_argument("--truth", required=True, type=Path, help="manual labels")
    ap.add_argument("--truth-format", default="instance")
    ap.add_argument("--out", type=Path, default=Path("bench/results/model_selection.json"))
    args = ap.parse_args(argv)
    rows = []
    print(f"{'run':28s} {'min_peak':>8s} {'F1 coarse':>9s} " + " ".join(f"{k[:12]:>12s}"
                                                                      for k in KEYS))
    for run in args.runs:
        row = score_run(run, args.truth, args.truth_format)
        rows.append(row)
        print(f"{run.name:28s} {str(row['min_peak']):>8s} {row['f1_vs_coarse']:9.3f} "
              + " ".join(f"{(row[k] if row[k] is not None else float('nan')):12.3f}"
                         for k in KEYS), flush=True)
    result = {"runs": rows}
    if len(rows) >= 3:
        rho = spearmanr([r["f1_vs_coarse"] for r in rows], [r["obj_f1"] for r in rows])
        result["spearman_f1_coarse_vs_truth"] = float(rho.statistic)
        print(f"Spearman rho (F1 vs coarse masks, F1 vs labels) over {len(rows)} runs: "
              f"{rho.statistic:.2f}")
        best = max(rows, key=lambda r: r["f1_vs_coarse"])
        print(f"chosen by coarse agreement: {Path(best['run']).name} (labels' F1 "
              f"{best['obj_f1']:.3f}; best by labels {max(r['obj_f1'] for r in rows):.3f}, "
              f"mean {np.mean([r['obj_f1'] for r in rows]):.3f})")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
