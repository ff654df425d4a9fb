"""Cost of the faint-particle filter (``--min-snr``): the particles' background rings expanded
over the whole frame (skimage's ``expand_labels``, the code before stop 32) against the windowed
expansion (``emcopilot.postprocess.expand_labels_near``), which gives the same pixels.

The filter runs once per image in ``segment`` and, since stop 31, once per image *and per core
probability and growth option tried* (10 times) while the pipeline and the app choose the core
probability, so its cost on large frames adds up. For each image of ``--images`` (bright
particles made with ``polarity``) the particles are the label maps of ``--labels`` (same stems,
e.g. a run's ``segmentation/``) or, without it, the classical masker's. Each round times both
variants on every image, interleaved (A B A B ...); the median over ``--repeat`` rounds is
reported per image, with the ratio and whether both dropped the same particles.

    python -m bench.bench_faint_filter --images ../shared/data/ardagen_stem_catalysts_yolo/images \\
        --repeat 5 --out bench/results/faint_filter.json

or a run's own particles: ``--images runs/cat39/images --polarity bright --labels
runs/cat39/segmentation``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path
from unittest import mock

import numpy as np

from bench.common import write_json
from emcopilot import io, postprocess
from emcopilot.inference import drop_faint_above_bar
from emcopilot.postprocess import MIN_SNR_DEFAULT


def whole_frame_expansion(labels: np.ndarray, distance: int) -> np.ndarray:
    """The expansion as it was: skimage over the whole frame."""
    from skimage.segmentation import expand_labels

    return expand_labels(np.asarray(labels), int(distance))


def load(images: Path, labels: Path | None,
         polarity: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from emcopilot.masking import coarse_mask

    items = []
    for path in io.list_images(images):
        image = io.bright_particles(io.normalize(io.read_micrograph(path).image), polarity)
        stem = io.safe_stem(path.name)
        if labels is not None:
            lab = io.read_label_map(labels / f"{stem}.png")
        else:
            lab = coarse_mask(image, method="classical", polarity="bright")
        items.append((stem, image, lab))
    return items


def run(items, repeat: int, min_snr: float) -> dict:
    times: dict[str, dict[str, list[float]]] = {s: {"whole": [], "windowed": []}
                                                for s, _, _ in items}
    same = {}
    for _ in range(repeat):
        for stem, image, lab in items:
            for name in ("whole", "windowed"):
                patch = (mock.patch.object(postprocess, "expand_labels_near", whole_frame_expansion)
                         if name == "whole" else contextlib.nullcontext())
                with patch:
                    t = time.perf_counter()
                    out, dropped = drop_faint_above_bar(image, lab, min_snr)
                    times[stem][name].append(time.perf_counter() - t)
                if name == "whole":
                    reference = out
                else:
                    same[stem] = same.get(stem, True) and bool(np.array_equal(out, reference))
    rows = []
    for stem, image, lab in items:
        whole = statistics.median(times[stem]["whole"])
        windowed = statistics.median(times[stem]["windowed"])
        rows.append({"image": stem, "size": f"{image.shape[1]}x{image.shape[0]}",
                     "particles": int(lab.max()), "whole_s": round(whole, 4),
                     "windowed_s": round(windowed, 4), "ratio": round(windowed / whole, 3),
                     "same_particles_kept": same[stem]})
    by_size = {}
    for size in sorted({r["size"] for r in rows}):
        sel = [r for r in rows if r["size"] == size]
        by_size[size] = {"images": len(sel),
                         "median_whole_s": round(statistics.median(r["whole_s"] for r in sel), 4),
                         "median_windowed_s": round(
                             statistics.median(r["windowed_s"] for r in sel), 4),
                         "median_ratio": round(statistics.median(r["ratio"] for r in sel), 3)}
    return {"min_snr": min_snr, "repeat": repeat, "images": len(rows),
            "all_same_particles_kept": all(r["same_particles_kept"] for r in rows),
            "sum_whole_s": round(sum(r["whole_s"] for r in rows), 3),
            "sum_windowed_s": round(sum(r["windowed_s"] for r in rows), 3),
            "median_ratio": round(statistics.median(r["ratio"] for r in rows), 3),
            "by_size": by_size, "per_image": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--labels", type=Path, help="label maps with the images' stems "
                    "(default: the classical masker's particles)")
    ap.add_argument("--polarity", default="auto", help="of the images (default auto)")
    ap.add_argument("--min-snr", type=float, default=MIN_SNR_DEFAULT)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    result = run(load(args.images, args.labels, args.polarity), args.repeat, args.min_snr)
    summary = {k: v for k, v in result.items() if k != "per_image"}
    print(json.dumps(summary, indent=2))
    if args.out:
        write_json(args.out, result)
    return 0 if result["all_same_particles_kept"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
