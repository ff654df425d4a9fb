"""How well coarse masks measure a micrograph's particle scale.

For every image with both a coarse mask (``--coarse``, e.g. a pipeline run's ``coarse_masks/``)
and a manual instance mask (``--truth``), compares the typical particle width measured on the
coarse mask with the manual labels' median equivalent diameter: the area-weighted median that
``emcopilot.particle_scale`` uses, and the plain median for reference. The truth's
area-weighted median is compared too. With ``--images`` it also scores an estimate that does not
go through a mask: scale-space blob widths (the scale of the largest scale-normalised
Laplacian-of-Gaussian response at its spatial peaks, widths 2 sqrt(2) sigma; tried at stop 17
and not used by the pipeline). ``--truth-format yolo`` reads YOLO boxes (widths sqrt(w h)).
It also scores the area-weighted median after touching coarse particles are split
(:func:`emcopilot.particle_scale.split_touching`; stop 29: the catalysts' small-particle images).

    python -m bench.bench_particle_scale --coarse runs/emps/coarse_masks \
        --truth ../shared/data/emps_test/segmaps
    python -m bench.bench_particle_scale --coarse runs/cat19/coarse_masks \
        --truth ../shared/data/ardagen_stem_catalysts_yolo/labels --truth-format yolo \
        --images ../shared/data/ardagen_stem_catalysts_yolo/images
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from emcopilot import io
from emcopilot.evaluate import _box_diameters, read_yolo_boxes
from emcopilot.particle_scale import area_weighted_median, typical_diameter


def _median_diameter(labels: np.ndarray) -> float | None:
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.sqrt(4 * np.median(areas) / np.pi)) if areas.size else None


def scale_space_widths(image01: np.ndarray, min_sigma: float = 1.0, max_sigma: float = 48.0,
                       num_sigma: int = 14, rel: float = 0.2) -> np.ndarray:
    """Blob widths (px) of a bright-particle image by scale selection: at each spatial peak of
    the largest scale-normalised LoG response (above ``rel`` x its 99.9th percentile), the width
    2 sqrt(2) sigma of the scale that gave it."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    sigmas = np.geomspace(min_sigma, max_sigma, num_sigma)
    img = np.asarray(image01, dtype=np.float32)
    stack = np.stack([-(s ** 2) * ndi.gaussian_laplace(img, s) for s in sigmas])
    best, which = stack.max(0), stack.argmax(0)
    floor = max(1e-6, rel * float(np.percentile(best, 99.9)))
    peaks = peak_local_max(best, min_distance=2, threshold_abs=floor, exclude_border=False)
    return 2 * np.sqrt(2) * sigmas[which[peaks[:, 0], peaks[:, 1]]]


def _truth_widths(truth: Path, name: str, shape: tuple[int, int], fmt: str) -> np.ndarray:
    if fmt == "yolo":  # box widths as evaluate measures them
        return _box_diameters(read_yolo_boxes(truth / f"{name}.txt", shape))
    areas = np.bincount(io.read_label_map(truth / f"{name}.png").ravel())[1:]
    return np.sqrt(4 * areas[areas > 0] / np.pi)


def _agreement(est: list[float | None], true: list[float | None]) -> dict:
    pairs = np.array([(e, t) for e, t in zip(est, true) if e and t], dtype=float)
    ratio = pairs[:, 1] / pairs[:, 0]
    return {"n": int(len(pairs)),
            "log_correlation": round(float(np.corrcoef(np.log(pairs[:, 0]),
                                                       np.log(pairs[:, 1]))[0, 1]), 3),
            "median_ratio_true_over_estimate": round(float(np.median(ratio)), 3),
            "within_x2": round(float(np.mean((ratio < 2) & (ratio > 0.5))), 3)}


def _round(width: float | None) -> float | None:
    return None if width is None else round(float(width), 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coarse", required=True, type=Path)
    ap.add_argument("--truth", required=True, type=Path)
    ap.add_argument("--truth-format", choices=("instance", "yolo"), default="instance")
    ap.add_argument("--images", type=Path, default=None,
                    help="the micrographs, to score the scale-space estimate too")
    ap.add_argument("--out", type=Path, default=Path("bench/results/particle_scale.json"))
    args = ap.parse_args(argv)
    suffix = ".txt" if args.truth_format == "yolo" else ".png"
    true, true_w, weighted, plain, space, seconds = [], [], [], [], [], []
    split, names = [], []
    for f in sorted(args.coarse.glob("*.png")):
        if not (args.truth / (f.stem + suffix)).is_file():
            continue
        coarse = io.read_label_map(f)
        names.append(f.stem)
        t = _truth_widths(args.truth, f.stem, coarse.shape, args.truth_format)
        # the width of the median area (as _median_diameter)
        true.append(float(np.sqrt(np.median(t ** 2))) if t.size else None)
        true_w.append(area_weighted_median(t))
        weighted.append(typical_diameter(coarse))
        plain.append(_median_diameter(coarse))
        split.append(typical_diameter(coarse, split=True))
        if args.images is not None:
            found = sorted(args.images.glob(f.stem + ".*"))
            if found:
                im = io.bright_particles(io.normalize(io.read_micrograph(found[0]).image), "auto")
                t0 = time.perf_counter()
                w = scale_space_widths(im)
                seconds.append(time.perf_counter() - t0)
                space.append(float(np.median(w)) if w.size else None)
            else:
                space.append(None)
    widths = np.array([t for t in true if t])
    result = {"true_median_width_px_percentiles_0_50_100":
              [round(float(np.percentile(widths, q)), 1) for q in (0, 50, 100)],
              "area_weighted_median": _agreement(weighted, true),
              "plain_median": _agreement(plain, true),
              "split_area_weighted_median": _agreement(split, true),
              "area_weighted_median_vs_true_area_weighted": _agreement(weighted, true_w)}
    if space:
        result["scale_space_median"] = _agreement(space, true)
        result["scale_space_median_vs_true_area_weighted"] = _agreement(space, true_w)
        result["scale_space_seconds_per_image_median"] = round(float(np.median(seconds)), 2)
    print(json.dumps(result, indent=1))
    # per image (written, not printed): the labels' median width and the two mask estimates
    result["per_image"] = [
        {"name": n, "true_median_width_px": _round(t), "area_weighted_median_px": _round(w),
         "split_area_weighted_median_px": _round(p)}
        for n, t, w, p in zip(names, true, weighted, split)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
