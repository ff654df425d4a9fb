"""Where a set of particles loses YOLO boxes: for every box, what the particles do under it.

Categories per box: matched (some particle's bounding box has IoU >= 0.5 with it), nothing
there (particles cover under 10 % of the box), merged (the particle covering most of the box has
a bounding box over twice the box's area), fragment (under half), otherwise offset/shape; each
split by whether the coarse masks match the box. Used on the catalysts to see why the pipeline
under-counts (BENCHMARKS.md, run 18):

    python -m bench.bench_box_misses --pred runs/cat18/segmentation \
        --coarse runs/cat18/coarse_masks --truth ../shared/data/ardagen_stem_catalysts_yolo/labels
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from bench.common import write_json
from emcopilot import io
from emcopilot.evaluate import box_iou, label_boxes, read_yolo_boxes

CATEGORIES = ("matched", "nothing there", "merged (bigger)", "fragment (smaller)",
              "offset/shape")


def box_categories(labels: np.ndarray, boxes: np.ndarray) -> list[str]:
    """The category of each box (``CATEGORIES``) for the particles of ``labels``."""
    own = label_boxes(labels)
    best = box_iou(boxes, own).max(axis=1) if len(own) else np.zeros(len(boxes))
    found = ndi.find_objects(labels.astype(np.int64))
    out = []
    for b, iou in zip(boxes, best):
        x0, y0, x1, y1 = (int(round(v)) for v in b)
        sub = labels[max(y0, 0):y1, max(x0, 0):x1]
        box_area = max((x1 - max(x0, 0)) * (y1 - max(y0, 0)), 1)
        if iou >= 0.5:
            out.append("matched")
        elif sub.size == 0 or (sub > 0).mean() < 0.1:
            out.append("nothing there")
        else:
            ids, counts = np.unique(sub[sub > 0], return_counts=True)
            sl = found[int(ids[np.argmax(counts)]) - 1]
            area = (sl[0].stop - sl[0].start) * (sl[1].stop - sl[1].start)
            out.append("merged (bigger)" if area > 2 * box_area else
                       "fragment (smaller)" if area < 0.5 * box_area else "offset/shape")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pred", type=Path, required=True, help="predicted label maps")
    ap.add_argument("--coarse", type=Path, required=True, help="coarse masks of the same images")
    ap.add_argument("--truth", type=Path, required=True, help="YOLO box labels (.txt)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/box_misses.json"))
    args = ap.parse_args(argv)

    totals: dict[str, int] = {}
    per_image = []
    for path in sorted(args.pred.glob("*.png")):
        if not (args.coarse / path.name).is_file() or not (args.truth / f"{path.stem}.txt").is_file():
            continue
        labels = io.read_label_map(path)
        boxes = read_yolo_boxes(args.truth / f"{path.stem}.txt", labels.shape)
        if len(boxes) == 0:
            continue
        cats = box_categories(labels, boxes)
        by_coarse = box_categories(io.read_label_map(args.coarse / path.name), boxes)
        row = {"image": path.stem, "boxes": len(boxes)}
        for c, cc in zip(cats, by_coarse):
            key = f"coarse {'matched' if cc == 'matched' else 'not matched'} | {c}"
            totals[key] = totals.get(key, 0) + 1
            row[c] = row.get(c, 0) + 1
        per_image.append(row)
    for key in sorted(totals):
        print(f"{key:45s} {totals[key]:6d}")
    write_json(args.out, {"pred": str(args.pred), "coarse": str(args.coarse),
                          "truth": str(args.truth), "totals": totals, "images": per_image})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
