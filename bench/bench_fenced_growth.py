"""Fenced growth, tried at stop 40 and not kept: what the output of a finished pipeline run
would be if its particles grew only into what no dropped particle holds.

The segment stage drops the particles whose highest probability is under the segmentor's core
probability (``min_peak``), then grows the kept ones out to a lower level (``grow_to``, the
image's Otsu level): a kept particle then floods the dropped particles that touch it, as on EMPS
8bf3782470, where a panel-letter box grew over eight touching spheres (one particle for eight).
Fenced, the growth is seeded by every particle, the dropped ones too, and the dropped ones are
taken out after, so a kept particle stops where a dropped one starts. Both outputs are made
from the run's stored probability maps as its segment stage makes them (coarse particles the
segmentor missed added, annotation and faint particles dropped, ``bench.common``) and scored
with ``evaluate`` against the labels.

    python -m bench.bench_fenced_growth --run runs/emps_s0 --truth ../shared/data/emps_test/segmaps
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import rederivable_segment_record, run_arguments, write_json
from emcopilot import io
from emcopilot.evaluate import evaluate_dirs, read_probability_map
from emcopilot.inference import OutputFilter, Segmentor
from emcopilot.instances import remove_small_instances
from emcopilot.postprocess import (_peaks, add_coarse_particles, grow_instances,
                                   keep_confident, prob_to_instances)

KEYS = ("dice_mean", "obj_precision", "obj_recall", "obj_f1", "count_rel_abs_error_mean",
        "count_rel_abs_error_median", "ks_distance", "n_pred")


def fenced_instances(segmentor: Any, prob: np.ndarray) -> np.ndarray:
    """The particles of ``prob`` as ``segmentor.instances`` makes them (its threshold, hole
    filling, core probability and growth level), but grown together with the particles the core
    probability drops, which are then taken out: a kept particle grows only where no dropped
    one does. Without a core probability or growth, the particles as made."""
    every = prob_to_instances(prob, segmentor.threshold, fill_holes=segmentor.fill_holes)
    grown = (every if segmentor.grow_to is None
             else grow_instances(prob, every, segmentor.grow_to))
    if segmentor.min_peak is None:
        return grown
    kept = keep_confident(every, _peaks(prob, every), segmentor.min_peak)  # ids of `every`
    ids = np.unique(kept[kept > 0])
    return remove_small_instances(np.where(np.isin(grown, ids), grown, 0), 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run_arguments(ap, "bench/results/fenced_growth.json")
    args = ap.parse_args(argv)

    record = rederivable_segment_record(args.run)
    seg = Segmentor.load(record["model"], device="cpu")
    add = bool(record.get("add_coarse"))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {name: Path(tmp) / name for name in ("as run", "fenced")}
        for d in dirs.values():
            d.mkdir()
        for path in sorted((args.run / "segmentation" / "prob").glob("*.png")):
            stem = path.stem
            image01 = io.normalize(io.read_micrograph(args.run / "images" / f"{stem}.png").image)
            prob = read_probability_map(path)
            coarse = io.read_label_map(args.run / "coarse_masks" / f"{stem}.png")
            # one frame's data bar, annotations and noise found once for both outputs
            finish = OutputFilter(image01, min_snr=record.get("min_snr"),
                                  annotations=bool(record.get("annotations")))
            fenced = fenced_instances(seg, prob)
            for name, labels in (("as run", seg.map_particles(prob, coarse, add_coarse=add)[0]),
                                 ("fenced", add_coarse_particles(fenced, coarse, prob)
                                  if add else fenced)):
                io.write_label_map(dirs[name] / f"{stem}.png", finish(labels)[0])
        for name, d in dirs.items():
            agg = evaluate_dirs(d, args.truth, args.truth_format)["aggregate"]
            rows[name] = {k: agg.get(k) for k in KEYS}
    print(f"{args.run}: core probability {seg.min_peak}, growth {seg.grow_to}")
    print(f"{'growth':>8s} | " + " ".join(f"{k.replace('count_rel_abs_error', 'count'):>12s}"
                                        for k in KEYS))
    for name, r in rows.items():
        print(f"{name:>8s} | " + " ".join(f"{(r[k] if r[k] is not None else float('nan')):12.3f}"
                                         for k in KEYS))
    write_json(args.out, {"run": str(args.run), "truth": str(args.truth), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
