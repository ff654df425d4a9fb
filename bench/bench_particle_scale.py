"""How well coarse masks measure a micrograph's particle scale.

For every image with both a coarse mask (``--coarse``, e.g. a pipeline run's ``coarse_masks/``)
and a manual instance mask (``--truth``), compares the typical particle width measured on the
coarse mask with the manual labels' median equivalent diameter: the area-weighted median that
``emcopilot.particle_scale`` uses, and the plain median for reference.

    python -m bench.bench_particle_scale --coarse runs/emps/coarse_masks \
        --truth ../shared/data/emps_test/segmaps
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from emcopilot import io
from emcopilot.particle_scale import typical_diameter


def _median_diameter(labels: np.ndarray) -> float | None:
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.sqrt(4 * np.median(areas) / np.pi)) if areas.size else None


def _agreement(est: list[float | None], true: list[float | None]) -> dict:
    pairs = np.array([(e, t) for e, t in zip(est, true) if e and t], dtype=float)
    ratio = pairs[:, 1] / pairs[:, 0]
    return {"n": int(len(pairs)),
            "log_correlation": round(float(np.corrcoef(np.log(pairs[:, 0]),
                                                       np.log(pairs[:, 1]))[0, 1]), 3),
            "median_ratio_true_over_estimate": round(float(np.median(ratio)), 3),
            "within_x2": round(float(np.mean((ratio < 2) & (ratio > 0.5))), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coarse", required=True, type=Path)
    ap.add_argument("--truth", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=Path("bench/results/particle_scale.json"))
    args = ap.parse_args(argv)
    true, weighted, plain = [], [], []
    for f in sorted(args.coarse.glob("*.png")):
        if not (args.truth / f.name).is_file():
            continue
        coarse = io.read_label_map(f)
        true.append(_median_diameter(io.read_label_map(args.truth / f.name)))
        weighted.append(typical_diameter(coarse))
        plain.append(_median_diameter(coarse))
    widths = np.array([t for t in true if t])
    result = {"true_median_width_px_percentiles_0_50_100":
              [round(float(np.percentile(widths, q)), 1) for q in (0, 50, 100)],
              "area_weighted_median": _agreement(weighted, true),
              "plain_median": _agreement(plain, true)}
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
