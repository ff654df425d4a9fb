"""What the particle core probability (``min_peak``) does to a finished pipeline run's output,
scored against manual labels, and how the label-free choice sees it.

For each value of the grid, the run's particles are made again from its stored probability
maps (``segmentation/prob``) exactly as its segment stage makes them (the kept segmentor's
threshold, hole filling and growth; the coarse particles it missed added when the run adds
them; the faint particles dropped at the run's level), scored with ``evaluate`` against the
labels, and printed beside the object F1 against the coarse masks that the label-free choice
(:func:`emcopilot.inference.choose_min_peak`) compares, with and without the faint filter
applied before scoring. Only a run whose segment stage took neither ``--scale-choice`` nor
``--support-check`` is re-derived this way (those re-run the segmentor per image).

    python -m bench.bench_core_probability --run runs/cat36 \
        --truth ../shared/data/ardagen_stem_catalysts_yolo/labels --truth-format yolo
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import (rederivable_segment_record, run_arguments,
                          segment_stage_particles, write_json)
from emcopilot import io
from emcopilot.evaluate import evaluate_dirs, read_probability_map
from emcopilot.inference import Segmentor, drop_faint_above_bar, noise_level_above_bar
from emcopilot.postprocess import MIN_PEAK_GRID, select_min_peak

KEYS = ("dice_mean", "obj_precision", "obj_recall", "obj_f1", "count_rel_abs_error_mean",
        "count_rel_abs_error_median", "ks_distance", "ks_distance_mean", "n_pred")


def _grid(text: str) -> list[float | None]:
    return [None if v.strip().lower() == "none" else float(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run_arguments(ap, "bench/results/core_probability.json")
    ap.add_argument("--grid", type=_grid, default=list(MIN_PEAK_GRID),
                    help="core probabilities, comma-separated ('none': every particle)")
    args = ap.parse_args(argv)

    record = rederivable_segment_record(args.run)
    seg = Segmentor.load(record["model"], device="cpu")  # as recorded, from where the run ran
    level, add = record.get("min_snr"), bool(record.get("add_coarse"))
    stems = sorted(p.stem for p in (args.run / "segmentation" / "prob").glob("*.png"))
    images = {s: io.normalize(io.read_micrograph(args.run / "images" / f"{s}.png").image)
              for s in stems}
    sigmas = {s: noise_level_above_bar(image) for s, image in images.items()}
    probs = [read_probability_map(args.run / "segmentation" / "prob" / f"{s}.png") for s in stems]
    coarse = [io.read_label_map(args.run / "coarse_masks" / f"{s}.png") for s in stems]

    rows = []
    for g in args.grid:
        with tempfile.TemporaryDirectory() as tmp:
            for stem, prob, co in zip(stems, probs, coarse):
                io.write_label_map(Path(tmp) / f"{stem}.png", segment_stage_particles(
                    seg, prob, co, images[stem], record, sigmas[stem], min_peak=g))
            agg = evaluate_dirs(tmp, args.truth, args.truth_format)["aggregate"]
        rows.append({"min_peak": g, **{k: agg.get(k) for k in KEYS}})

    def finish(k, labels):
        return drop_faint_above_bar(images[stems[k]], labels, level, sigma=sigmas[stems[k]])[0]

    plain = select_min_peak(probs, coarse, threshold=seg.threshold, fill_holes=seg.fill_holes,
                            grid=args.grid)
    kept = select_min_peak(probs, coarse, threshold=seg.threshold, fill_holes=seg.fill_holes,
                           grid=args.grid, finish=finish if level else None)
    print(f"{args.run}: min_snr {level}, add_coarse {add}, recorded min_peak "
          f"{record.get('min_peak')}; chosen without / with the faint filter: "
          f"{plain['min_peak']} / {kept['min_peak']}")
    print(f"{'min_peak':>8s} {'coarseF1':>8s} {'+faint':>7s} | "
          + " ".join(f"{k.replace('count_rel_abs_error', 'count'):>12s}" for k in KEYS))
    for r in rows:
        g = str(r["min_peak"])
        print(f"{g:>8s} {plain['f1'][g]:8.4f} {kept['f1'][g]:7.4f} | "
              + " ".join(f"{(r[k] if r[k] is not None else float('nan')):12.3f}" for k in KEYS))
    write_json(args.out, {"run": str(args.run), "truth": str(args.truth), "min_snr": level,
                          "add_coarse": add, "recorded_min_peak": record.get("min_peak"),
                          "coarse_f1": plain["f1"], "coarse_f1_after_faint_filter": kept["f1"],
                          "chosen": plain["min_peak"], "chosen_after_faint_filter":
                          kept["min_peak"], "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
