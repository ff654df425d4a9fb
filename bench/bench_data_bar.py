"""Instrument data bars (``emcopilot.data_bar``): which images of each set have one, where the
manual labels put particles relative to it, speed, and what leaving it out does to the
classical masker's accuracy on EMPS test.

    .venv/bin/python -m bench.bench_data_bar --out bench/results/data_bar.json

Rows per set (EMPS test, EMPS train, the 33 catalyst S/TEM images): images with a bar found,
their names, the labelled particles that reach into the rows the bar takes and how many rows
deep (0 means leaving those rows out cannot lose a labelled particle) and the median / max seconds per image of
``find_data_bar``. On EMPS test, the classical masker ("isolated" preset, the pipeline's on
EMPS) is scored with ``emcopilot.evaluate`` with and without the bar left out (the annotation
filter of stop 37 off in both, so the rows measure the bar alone, as they did before it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.common import Timer, survey_main
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


def _line(name: str, r: dict) -> str:
    s = r["seconds"]
    return (f"{name}: {r['with_bar']} of {r['images']} images with a bar "
            f"({', '.join(r['bars']) or 'none'}); labelled particles in the bar rows: "
            f"{r['labelled_particles_in_bar_rows']} (at most {r['labelled_rows_into_bar_max']} "
            f"rows into it); find_data_bar {s['median_s'] * 1e3:.1f} ms "
            f"median, {s['max_s'] * 1e3:.1f} ms max")


def main(argv: list[str] | None = None) -> int:
    return survey_main(
        argv, description=__doc__.splitlines()[0], out="bench/results/data_bar.json",
        skip_help="skip the classical masker on EMPS test with and without the bar",
        survey=_survey, line=_line,
        settings={"bar left out": {"data_bar": True, "filters": {"annotations": False}},
                  "every row": {"data_bar": False, "filters": {"annotations": False}}},
        keys=KEYS)


if __name__ == "__main__":
    sys.exit(main())
