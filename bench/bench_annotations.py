"""Annotations drawn on micrographs (``emcopilot.annotations``): on which images of each set
some are found, how many manually labelled particles lie on them (each one a particle the
filter would drop wrongly), speed, and what dropping the particles on them does to the
classical masker's accuracy on EMPS test.

    .venv/bin/python -m bench.bench_annotations --out bench/results/annotations.json

Rows per set (EMPS test, EMPS train, the 33 catalyst S/TEM images): images with an annotation
found, the labelled particles flagged (``annotation_particles`` of the manual label map, EMPS
only), and the median / max seconds per image of ``find_annotations``, each image taken as the
pipeline takes it (normalised, particles bright). On EMPS test, the classical masker
("isolated" preset, the pipeline's on EMPS; data bar left out) is scored with
``emcopilot.evaluate`` with the filter on and off.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.common import Timer, survey_main
from emcopilot import io
from emcopilot.annotations import annotation_particles, find_annotations
from emcopilot.polarity import describe_polarity

KEYS = ("dice_mean", "obj_precision", "obj_recall", "obj_f1", "count_rel_abs_error_mean",
        "count_rel_abs_error_median", "median_diameter_rel_error", "ks_distance", "n_pred")


def bright(path: Path) -> np.ndarray:
    image01 = io.normalize(io.read_micrograph(path).image)
    return io.bright_particles(image01, describe_polarity(image01)["polarity"])


def _survey(items: list[tuple[Path, Path | None]]) -> dict:
    timer, found, labelled, flagged = Timer(), {}, 0, {}
    for image_path, truth_path in items:
        image01 = bright(image_path)
        with timer():
            mask = find_annotations(image01)
        if mask.any():
            found[image_path.stem] = int(mask.sum())
        if truth_path is not None:
            truth = io.read_label_map(truth_path)
            labelled += int(truth.max())
            n = int(annotation_particles(image01, truth, mask).sum())
            if n:
                flagged[image_path.stem] = n
    return {"images": len(items), "with_annotations": len(found), "annotation_pixels": found,
            "labelled_particles": labelled, "labelled_flagged": sum(flagged.values()),
            "labelled_flagged_by_image": flagged, "seconds": timer.summary()}


def _line(name: str, r: dict) -> str:
    s = r["seconds"]
    return (f"{name}: annotations on {r['with_annotations']} of {r['images']} images; "
            f"labelled particles on them: {r['labelled_flagged']} of "
            f"{r['labelled_particles']} ({r['labelled_flagged_by_image'] or 'none'}); "
            f"find_annotations {s['median_s'] * 1e3:.1f} ms median, "
            f"{s['max_s'] * 1e3:.1f} ms max")


def main(argv: list[str] | None = None) -> int:
    return survey_main(
        argv, description=__doc__.splitlines()[0], out="bench/results/annotations.json",
        skip_help="skip the classical masker on EMPS test with and without the filter",
        survey=_survey, line=_line,
        settings={"kept": {"filters": {"annotations": False}},
                  "annotations dropped": {"filters": {"annotations": True}}}, keys=KEYS)


if __name__ == "__main__":
    sys.exit(main())
