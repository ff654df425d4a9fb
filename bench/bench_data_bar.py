"""Instrument data bars (``emcopilot.data_bar``): which images of each set have one, where the
manual labels put particles relative to it, speed, and what leaving it out does to the
classical masker's accuracy on EMPS test.

    .venv/bin/python -m bench.bench_data_bar --out bench/results/data_bar.json

Rows per set (EMPS test, EMPS train, the 33 catalyst S/TEM images): images with a bar found,
their names, the labelled particles that reach into the rows the bar takes and how many rows
deep (0 means leaving those rows out cannot lose a labelled particle) and the median / max seconds per image of
``find_data_bar``. On EMPS test, the classical masker ("isolated" preset, the pipeline's on
EMPS) is scored with ``emcopilot.evaluate`` with and without the bar left out.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import Timer, catalyst_items, emps_pairs, machine, write_json
from emcopilot import io
from emcopilot.data_bar import find_data_bar

KEYS = ("dice_mean", "obj_f1", "count_rel_abs_error_mean", "count_rel_abs_error_median",
        "median_diameter_rel_error", "ks_distance", "n_pred")


def _survey(items: list[tuple[Path, Path | None]]) -> dict:
    timer, found, labelled_in_bar, deepest = Timer(), {}, 0, 0
    for image_path, truth_path in items:
        image01 = io.normalize(io.read_micrograph(image_path).image)
        with timer():
            top = find_data_bar(image01)
        if top is None:
            continue
        found[image_path.stem] = {"row": top, "height": int(image01.shape[0])}
        if truth_path is not None:
            below = io.read_label_map(truth_path)[top:]
            n = int(np.unique(below[below > 0]).size)
            found[image_path.stem]["labelled_particles_in_bar"] = n
            labelled_in_bar += n
            rows = np.flatnonzero((below > 0).any(axis=1))
            deepest = max(deepest, int(rows.max()) + 1 if rows.size else 0)
    return {"images": len(items), "with_bar": len(found), "bars": found,
            "labelled_particles_in_bar_rows": labelled_in_bar,
            "labelled_rows_into_bar_max": deepest, "seconds": timer.summary()}


def _classical_scores(pairs: list[tuple[Path, Path]]) -> dict:
    from emcopilot.evaluate import evaluate_dirs
    from emcopilot.masking import coarse_mask

    truth_dir = pairs[0][1].parent
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for setting in (True, False):
            folder = Path(tmp) / str(setting)
            for image_path, _ in pairs:
                image01 = io.normalize(io.read_micrograph(image_path).image)
                labels = coarse_mask(image01, method="classical", data_bar=setting,
                                     classical_options={"preset": "isolated"})
                io.write_label_map(folder / f"{image_path.stem}.png", labels)
            summary = evaluate_dirs(folder, truth_dir)["aggregate"]
            out["bar left out" if setting else "every row"] = {k: summary[k] for k in KEYS}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/data_bar.json"))
    ap.add_argument("--no-accuracy", action="store_true",
                    help="skip the classical masker on EMPS test with and without the bar")
    args = ap.parse_args(argv)
    results: dict = {"machine": machine(), "sets": {}}
    sets = {"emps_test": emps_pairs("test"), "emps_train": emps_pairs("train"),
            "catalysts": [(p, None) for p, _ in catalyst_items()]}
    for name, items in sets.items():
        r = results["sets"][name] = _survey(items)
        s = r["seconds"]
        print(f"{name}: {r['with_bar']} of {r['images']} images with a bar "
              f"({', '.join(r['bars']) or 'none'}); labelled particles in the bar rows: "
              f"{r['labelled_particles_in_bar_rows']} (at most {r['labelled_rows_into_bar_max']} "
              f"rows into it); find_data_bar {s['median_s'] * 1e3:.1f} ms "
              f"median, {s['max_s'] * 1e3:.1f} ms max", flush=True)
    if not args.no_accuracy:
        results["classical_emps_test"] = scores = _classical_scores(sets["emps_test"])
        for row, vals in scores.items():
            print(f"classical (isolated), {row}: "
                  + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in vals.items()), flush=True)
    write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
