"""Faint particles: how ``drop_faint_particles`` (``--min-snr``) moves a run's particles against
manual labels, at each level of a grid, and how well a level chosen on the other images does on
each held-out image (leave one image out).

A pipeline run folder holds the images as the segmentor saw them (``RUN/images``, bright
particles) and the particles (``RUN/segmentation`` or the coarse masks ``RUN/coarse_masks``:
``--labels``). For each ``--grid`` level the label maps are filtered (on the rows above a data
bar, as the pipeline does) into ``OUT/snr<level>/`` and scored with ``emcopilot evaluate``'s
``evaluate_dirs``; the same test on the labelled particles (instance masks, or the ellipses
inscribed in YOLO boxes) says how many real particles each level would drop. Leave one out: for each image, the grid level with the lowest mean absolute
relative count error over the *other* images is applied to it; the held-out rows are then
pooled (object F1 from the pooled matches, count error mean/median over images). Level 0 is
no filter.

    python -m bench.bench_faint_particles --run runs/cat29 --labels segmentation \\
        --truth ../shared/data/ardagen_stem_catalysts_yolo/labels --truth-format yolo \\
        --out runs/faint/cat29
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.common import write_json
from emcopilot import io
from emcopilot.evaluate import count_agreement, evaluate_dirs, read_yolo_boxes
from emcopilot.inference import drop_faint_above_bar

GRID = (0.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0)
KEYS = ("obj_f1", "count_rel_abs_error_mean", "count_rel_abs_error_median",
        "count_within_factor_2", "ks_distance", "median_diameter_rel_error", "dice_pooled")


def boxes_as_particles(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """YOLO boxes (``evaluate.read_yolo_boxes``) as a label map: the ellipse inscribed in each
    box (later boxes on top)."""
    from skimage.draw import ellipse

    lab = np.zeros(shape, np.int32)
    for k, (x0, y0, x1, y1) in enumerate(boxes, 1):
        rr, cc = ellipse((y0 + y1) / 2 - 0.5, (x0 + x1) / 2 - 0.5, max((y1 - y0) / 2, 1),
                         max((x1 - x0) / 2, 1), shape=shape)
        lab[rr, cc] = k
    return lab


def _truth_particles(truth: Path, truth_format: str, stem: str,
                     shape: tuple[int, int]) -> np.ndarray | None:
    """The labelled particles of one image as a label map (YOLO boxes: their ellipses), None
    when the truth folder has no file for it or the format holds no instances."""
    if truth_format == "yolo":
        path = truth / f"{stem}.txt"
        return boxes_as_particles(read_yolo_boxes(path, shape), shape) if path.is_file() \
            else None
    if truth_format != "instance":
        return None
    path = next((truth / f"{stem}{ext}" for ext in (".png", ".tif", ".tiff")
                 if (truth / f"{stem}{ext}").is_file()), None)
    return None if path is None else io.read_label_map(path)


def filtered_maps(run: Path, labels: str, grid: tuple[float, ...], out: Path,
                  truth: Path, truth_format: str) -> tuple[dict, dict]:
    """Write each label map of ``run/labels`` filtered at each level of ``grid`` into
    ``out/snr<level>/`` (``inference.drop_faint_above_bar``, as the pipeline's segment stage
    does); returns ``{level: particles dropped}``, per level how many of the labelled particles
    (and per image) the same test would drop, and per image the median time of a call at a
    level > 0 (``{stem: [seconds, height, width, particles]}``)."""
    dropped = {level: 0 for level in grid}
    labelled = {level: {"total": 0, "faint": 0, "per_image": {}} for level in grid}
    seconds = {}
    files = sorted((run / labels).glob("*.png"))
    files = [f for f in files if (run / "images" / f.name).is_file()]
    if not files:
        raise SystemExit(f"no label maps with a namesake image in {run / labels}")
    for f in files:
        lab = io.read_label_map(f)
        image01 = io.normalize(io.read_micrograph(run / "images" / f.name).image)
        true = _truth_particles(truth, truth_format, f.stem, lab.shape)
        calls = []
        for level in grid:
            start = time.perf_counter()
            kept, n = drop_faint_above_bar(image01, lab, level)
            if level > 0:
                calls.append(time.perf_counter() - start)
            dropped[level] += n
            io.write_label_map(out / f"snr{level:g}" / f.name, kept)
            if true is not None:
                n_true = len(np.unique(true)) - int((true == 0).any())
                faint = drop_faint_above_bar(image01, true, level)[1]
                labelled[level]["total"] += n_true
                labelled[level]["faint"] += faint
                labelled[level]["per_image"][f.stem] = [faint, n_true]
        if calls:
            seconds[f.stem] = [float(np.median(calls)), *lab.shape, int(lab.max())]
    return dropped, labelled, seconds


def _rel(row: dict) -> float:
    return abs(int(row["n_pred"]) - int(row["n_true"])) / max(int(row["n_true"]), 1)


def leave_one_out(per_level: dict[float, dict[str, dict]]) -> dict:
    """Per image, the level with the lowest mean count error on the other images, applied to
    it; the held-out rows pooled."""
    levels = sorted(per_level)
    names = sorted(set.intersection(*(set(rows) for rows in per_level.values())))
    names = [n for n in names if int(per_level[levels[0]][n]["n_true"]) > 0]
    chosen, rows = {}, []
    for n in names:
        others = [m for m in names if m != n]
        best = min(levels, key=lambda lv: (np.mean([_rel(per_level[lv][m]) for m in others]),
                                           lv))
        chosen[n] = best
        rows.append(per_level[best][n])
    tp = sum(int(r["obj_tp"]) for r in rows)
    fp = sum(int(r["obj_fp"]) for r in rows)
    fn = sum(int(r["obj_fn"]) for r in rows)
    counts = count_agreement([int(r["n_pred"]) for r in rows], [int(r["n_true"]) for r in rows])
    return {"chosen": chosen, "levels_chosen": sorted(set(chosen.values())),
            "obj_f1": 2 * tp / max(2 * tp + fp + fn, 1),
            **{k: counts[k] for k in ("count_rel_abs_error_mean", "count_rel_abs_error_median",
                                      "count_within_factor_2")}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a pipeline run folder")
    ap.add_argument("--labels", default="segmentation", choices=("segmentation", "coarse_masks"))
    ap.add_argument("--truth", required=True)
    ap.add_argument("--truth-format", default="instance")
    ap.add_argument("--grid", default=",".join(f"{g:g}" for g in GRID))
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    grid = tuple(sorted({float(x) for x in args.grid.split(",") if x.strip()}))
    run, out = Path(args.run), Path(args.out)
    dropped, labelled, seconds = filtered_maps(run, args.labels, grid, out, Path(args.truth),
                                               args.truth_format)
    table, per_level = [], {}
    for level in grid:
        res = evaluate_dirs(out / f"snr{level:g}", args.truth, args.truth_format)
        agg = res["aggregate"]
        per_level[level] = {r["name"]: r for r in res["per_image"]}
        table.append({"min_snr": level, "dropped": dropped[level],
                      "labelled_faint": labelled[level]["faint"],
                      "labelled": labelled[level]["total"],
                      "n_pred": agg["n_pred"], "n_true": agg["n_true"],
                      **{k: agg.get(k) for k in KEYS if k in agg}})
        print(f"min_snr {level:5g}: dropped {dropped[level]:5d} (labelled particles: "
              f"{labelled[level]['faint']}/{labelled[level]['total']})  " + "  ".join(
            f"{k} {agg[k]:.3f}" for k in KEYS if agg.get(k) is not None))
    loo = leave_one_out(per_level)
    print(f"leave one image out (level by mean count error on the others, chose "
          f"{loo['levels_chosen']}): F1 {loo['obj_f1']:.3f}, count error mean "
          f"{loo['count_rel_abs_error_mean']:.3f} / median {loo['count_rel_abs_error_median']:.3f}")
    if seconds:
        slowest = max(seconds, key=lambda n: seconds[n][0])
        print(f"seconds per image and level: median {np.median([v[0] for v in seconds.values()]):.3f}"
              f", slowest {slowest} {seconds[slowest][0]:.2f} ({seconds[slowest][1]} x "
              f"{seconds[slowest][2]} px, {seconds[slowest][3]} particles)")
    result = {"config": vars(args), "grid": table, "leave_one_out": loo, "seconds": seconds,
              "labelled_faint_per_image": {f"{lv:g}": labelled[lv]["per_image"] for lv in grid}}
    write_json(out / "faint_particles.json", result)
    return result


if __name__ == "__main__":
    main()
