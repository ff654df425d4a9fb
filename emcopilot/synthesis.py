"""Synthetic label maps: re-placed real particle contours (Algorithm 3) and a random baseline
without priors (Algorithm 4).

Algorithm 3 (``synthesize_masks``): every source mask's particle contours are re-placed
``per_mask`` times. Per synthetic mask the particles are visited in a random order; each is
rotated about its centroid by an angle drawn uniformly from [0, 360) degrees and translated by
an offset drawn uniformly from [-max_shift * H, +max_shift * H] x [-max_shift * W, +max_shift * W]
(px). The paper gives "a random shift within a range" without the range; ``max_shift=0.5``
(half the image size) lets a particle reach any part of the image from the centre while keeping
it near its original neighbourhood on average. A particle is skipped (never retried) when its
rasterised polygon overlaps or touches (8-neighbourhood) a particle already placed, touches or
leaves the image border (its outline reaches outside [0, H-1] x [0, W-1] or a pixel lands
on the outermost row/column: the border artefacts the paper removes), or comes out smaller than
``min_area`` px. So a synthetic mask never has more particles than its source, particles never
merge when the map is relabelled, and none is cut by the border.

Skipping loses particles: with a shift of up to half the frame about 44 % of them land across
the border on their one try, and on dense images most of the rest collide. Measured on the EMPS
test coarse masks, the synthetic masks held about a third of their source's particles (a film
covering 46 % of the frame came out at 10-18 %). ``attempts`` > 1 draws a new rotation and
shift for a particle that does not fit, up to that many times, placing the largest particles
first (random sequential packing: small ones fill the gaps); with 20 the masks keep about all
of the source's particles and most of its coverage (the 46 % film: 34-36 %).
``attempts=1`` (the default) is the paper's skip. In the label-free pipeline the denser masks
did not segment the real images better (BENCHMARKS.md, run 12), so the pipeline keeps the
paper's setting; ``emcopilot synth-masks --attempts N`` offers it.

Algorithm 4 (``random_masks``): circles and ellipses with parameters drawn from the paper's
sets; its statistics differ from real ones, which is the point of the comparison.

Everything is seeded through ``numpy.random.Generator``: the same seed gives the same masks.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from emcopilot.atomic import atomic_write_text
from emcopilot.errors import InputError
from emcopilot.priors import (DESCRIPTOR_COLUMNS, DESCRIPTORS, load_contours, load_particles,
                              particle_contours, particle_table)

Progress = Callable[[int, int, str], None]

# Authors' baseline script: 60 px mean diameter on 2048 px images, i.e. 15 px at 512 px.
_D0_FRACTION = 15.0 / 512.0
_MIN_RADIUS_PX = 3.0
_MAX_ATTEMPTS = 100


# --------------------------------------------------------------------------- helpers

def _as_doc(source: Any, index: int, min_area: int) -> dict:
    """A contours dict (as from ``load_contours``) from a dict, a label map or (name, labels)."""
    if isinstance(source, dict):
        if "particles" not in source or "shape" not in source:
            raise InputError("synthesis: a source dict needs 'shape' and 'particles' "
                             "(as written by the priors stage)")
        return source
    name = f"mask{index:03d}"
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], str):
        name, source = source
    a = np.asarray(source)
    if a.ndim != 2:
        raise InputError(f"synthesis: source {name!r} is not a 2-D label map (shape {a.shape})")
    return {"image": name, "shape": [int(a.shape[0]), int(a.shape[1])], "pixel_size_nm": None,
            "particles": particle_contours(a, min_area=min_area)}


def _centroid(poly: np.ndarray) -> np.ndarray:
    """Area centroid of a closed polygon (row, col); vertex mean when degenerate."""
    y, x = poly[:, 0], poly[:, 1]
    y1, x1 = np.roll(y, -1), np.roll(x, -1)
    cross = x * y1 - x1 * y
    a = cross.sum() / 2.0
    if abs(a) < 1e-9:
        return poly.mean(axis=0)
    return np.array([((y + y1) * cross).sum() / (6 * a), ((x + x1) * cross).sum() / (6 * a)])


def _smooth(poly: np.ndarray) -> np.ndarray:
    """3-vertex circular moving average of a closed contour.

    Contours of digitised particles are staircases with 0.5 px steps. Rotated by an angle that
    is not a multiple of 45 degrees and rasterised again, those steps become notches that lower
    circularity (-0.04 to -0.06 on EMPS particles at 10-25 degrees) and solidity. Averaging
    three neighbouring vertices removes them (measured: circularity within -0.007..+0.015,
    solidity within +-0.004, area -0.2 % at 0-90 degrees).
    """
    from scipy.ndimage import uniform_filter1d

    if len(poly) > 1 and np.allclose(poly[0], poly[-1]):
        poly = poly[:-1]
    if len(poly) < 6:
        return poly
    return uniform_filter1d(poly, 3, axis=0, mode="wrap")


def _simplify(poly: np.ndarray) -> np.ndarray:
    """Drop vertices that move the outline by < 0.2 px (Douglas-Peucker): ~4x fewer vertices
    and no rasterised pixel changes on the EMPS test masks; ``skimage.draw.polygon`` costs
    bounding-box pixels x vertices, so this makes synthesis ~4x faster."""
    from skimage.measure import approximate_polygon

    if len(poly) < 8:
        return poly
    closed = approximate_polygon(np.vstack([poly, poly[:1]]), tolerance=0.2)
    return closed[:-1] if len(closed) >= 4 else poly


_NEIGHBOURS = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]


def _try_place(out: np.ndarray, blocked: np.ndarray, rr: np.ndarray, cc: np.ndarray,
               label: int, min_area: int) -> bool:
    """Place pixels (rr, cc) as ``label`` unless they are too few, touch/leave the border or
    overlap/touch ``blocked``. Marks the particle and its 8-neighbourhood as blocked."""
    h, w = out.shape
    if rr.size < max(1, min_area):
        return False
    if rr.min() < 1 or cc.min() < 1 or rr.max() > h - 2 or cc.max() > w - 2:
        return False
    if blocked[rr, cc].any():
        return False
    out[rr, cc] = label
    for dr, dc in _NEIGHBOURS:
        blocked[rr + dr, cc + dc] = True
    return True


# --------------------------------------------------------------------------- Algorithm 3

def synthesize_masks(sources: Iterable[Any], per_mask: int = 10, *, max_shift: float = 0.5,
                     seed: int = 0, min_area: int = 10, attempts: int = 1,
                     progress: Progress | None = None) -> list[tuple[str, np.ndarray]]:
    """Algorithm 3: ``per_mask`` synthetic label maps per source by re-placing its particles.

    ``sources``: contour dicts as from :func:`emcopilot.priors.load_contours`, label maps
    (2-D int arrays) or ``(name, label_map)`` pairs. ``max_shift`` is the shift range as a
    fraction of the image height/width (see the module docstring); ``min_area`` in px.
    ``attempts``: placements tried per particle (1: the paper, random order, skipped when it
    does not fit; more: largest first, a new rotation and shift per try).
    Returns ``[("<source>_synNNN", int32 label map of the source's shape), ...]`` with labels
    1..n in placement order.

    >>> from skimage.draw import disk
    >>> lab = np.zeros((128, 128), np.int32)
    >>> for i, (r, c) in enumerate([(30, 30), (30, 90), (90, 60)], 1): lab[disk((r, c), 8)] = i
    >>> masks = synthesize_masks([lab], per_mask=2, seed=1)
    >>> [name for name, _ in masks], all(m.max() <= 3 for _, m in masks)
    (['mask000_syn000', 'mask000_syn001'], True)
    """
    from skimage.draw import polygon

    if per_mask < 1:
        raise InputError(f"per_mask must be at least 1, got {per_mask}")
    if int(attempts) < 1:
        raise InputError(f"attempts must be at least 1, got {attempts}")
    if not 0 <= max_shift <= 1:
        raise InputError(f"max_shift must be a fraction of the image size in [0, 1], "
                         f"got {max_shift}")
    docs = [_as_doc(s, i, min_area) for i, s in enumerate(sources)]
    rng = np.random.default_rng(seed)
    total = len(docs) * per_mask
    results: list[tuple[str, np.ndarray]] = []
    for si, doc in enumerate(docs):
        h, w = int(doc["shape"][0]), int(doc["shape"][1])
        name = str(doc.get("image") or f"mask{si:03d}")
        polys = [np.asarray(p["contour"], dtype=np.float64).reshape(-1, 2)
                 for p in doc["particles"]]
        polys = [_simplify(_smooth(p)) for p in polys if len(p) >= 3]
        centres = [_centroid(p) for p in polys]
        # largest first when particles get several tries (random sequential packing)
        by_size = np.argsort([-float(np.ptp(p[:, 0]) * np.ptp(p[:, 1])) for p in polys],
                             kind="stable")
        for k in range(per_mask):
            if progress:
                progress(si * per_mask + k, total, f"synthesis: {name} #{k}")
            out = np.zeros((h, w), np.int32)
            blocked = np.zeros((h, w), bool)
            label = 1
            order = rng.permutation(len(polys)) if attempts == 1 else by_size
            for j in order:
                for _try in range(int(attempts)):
                    theta = np.deg2rad(rng.uniform(0.0, 360.0))
                    shift = rng.uniform(-max_shift, max_shift, size=2) * np.array([h, w])
                    cos, sin = np.cos(theta), np.sin(theta)
                    rot = np.array([[cos, -sin], [sin, cos]])
                    pts = (polys[j] - centres[j]) @ rot.T + centres[j] + shift
                    lo, hi = pts.min(axis=0), pts.max(axis=0)
                    if lo[0] < 0 or lo[1] < 0 or hi[0] > h - 1 or hi[1] > w - 1:
                        continue  # the outline reaches the border: a border artefact
                    rr, cc = polygon(pts[:, 0], pts[:, 1])
                    if _try_place(out, blocked, rr, cc, label, min_area):
                        label += 1
                        break
            results.append((f"{name}_syn{k:03d}", out))
    if progress:
        progress(total, total, "synthesis: done")
    return results


# --------------------------------------------------------------------------- Algorithm 4

def random_masks(n: int, shape: tuple[int, int] = (512, 512), *, seed: int = 0,
                 particle_counts: Sequence[int] = (10, 20, 30, 40, 60, 80, 100),
                 size_variability: Sequence[float] = (0.4, 0.6, 0.8, 1.0),
                 ellipse_fraction: Sequence[float] = (0.2, 0.5, 0.8),
                 max_ellipticity: Sequence[float] = (0.3, 0.5, 0.7, 0.9),
                 ellipticity_variability: Sequence[float] = (0.05, 0.1, 0.2, 0.4, 0.6, 0.8),
                 mean_diameter: float | None = None, min_area: int = 10
                 ) -> list[tuple[str, np.ndarray]]:
    """Algorithm 4 (baseline without priors): ``n`` label maps of random circles and ellipses.

    Per mask one value is drawn from each set: particle count P, size variability v, ellipse
    fraction f, max ellipticity e, ellipticity variability u. Mean diameter
    D = min(D0, sqrt(H * W / P)) px, with D0 = ``mean_diameter`` or, by default, the authors'
    15 px per 512 px of image size. Per particle: semi-axis a = D / 2 * U(1 - v, 1 + v) (at
    least 3 px); with probability f an ellipse with b = a * (1 - U(0, u) * (1 - e)), else a
    circle (b = a); random rotation; random centre. Up to 100 attempts per particle to find a
    place that neither overlaps nor touches another particle or the border.
    Returns ``[("random_NNNN", int32 label map), ...]``.
    """
    from skimage.draw import ellipse

    if n < 0:
        raise InputError(f"number of random masks must be >= 0, got {n}")
    h, w = int(shape[0]), int(shape[1])
    if h < 16 or w < 16:
        raise InputError(f"random masks need an image of at least 16 x 16 px, got {shape}")
    rng = np.random.default_rng(seed)
    d0 = float(mean_diameter) if mean_diameter is not None else _D0_FRACTION * min(h, w)
    out_list: list[tuple[str, np.ndarray]] = []
    for i in range(n):
        p = int(rng.choice(particle_counts))
        v = float(rng.choice(size_variability))
        f = float(rng.choice(ellipse_fraction))
        e = float(rng.choice(max_ellipticity))
        u = float(rng.choice(ellipticity_variability))
        d = min(d0, float(np.sqrt(h * w / max(p, 1))))
        out = np.zeros((h, w), np.int32)
        blocked = np.zeros((h, w), bool)
        label = 1
        for _ in range(p):
            a = max(d / 2 * rng.uniform(1 - v, 1 + v), _MIN_RADIUS_PX)
            if rng.uniform() < f:
                b = max(a * (1 - rng.uniform(0, u) * (1 - e)), _MIN_RADIUS_PX)
            else:
                b = a
            rot = rng.uniform(0, np.pi)
            m = int(np.ceil(max(a, b))) + 2
            if 2 * m >= min(h, w):
                continue
            for _attempt in range(_MAX_ATTEMPTS):
                r0 = rng.uniform(m, h - m)
                c0 = rng.uniform(m, w - m)
                rr, cc = ellipse(r0, c0, a, b, rotation=rot)
                if _try_place(out, blocked, rr, cc, label, min_area):
                    label += 1
                    break
        out_list.append((f"random_{i:04d}", out))
    return out_list


# --------------------------------------------------------------------------- comparison

def compare_distributions(source_table: pd.DataFrame, synth_table: pd.DataFrame,
                          descriptors: Sequence[str] = DESCRIPTORS) -> pd.DataFrame:
    """Per descriptor: source/synthetic n, mean, std, two-sample KS statistic and p-value.

    Descriptor names map to table columns (area -> area_px, perimeter -> perimeter_px, other
    names are used as columns as they are). Columns: descriptor, column, source_n,
    synthetic_n, count_ratio (synthetic_n / source_n), source_mean, source_std,
    synthetic_mean, synthetic_std, ks_statistic, ks_pvalue. A last row, "particles_per_image",
    compares the particle counts per source image with those per synthetic mask.
    """
    from scipy.stats import ks_2samp

    def values(t: pd.DataFrame, col: str) -> np.ndarray:
        if col not in t.columns or not len(t):
            return np.zeros(0)
        v = pd.to_numeric(t[col], errors="coerce").to_numpy(dtype=np.float64)
        return v[np.isfinite(v)]

    def row(name: str, col: str, s: np.ndarray, y: np.ndarray) -> dict:
        ks = ks_2samp(s, y) if s.size and y.size else None
        return {
            "descriptor": name, "column": col,
            "source_n": int(s.size), "synthetic_n": int(y.size),
            "count_ratio": float(y.size / s.size) if s.size else np.nan,
            "source_mean": float(s.mean()) if s.size else np.nan,
            "source_std": float(s.std(ddof=1)) if s.size > 1 else np.nan,
            "synthetic_mean": float(y.mean()) if y.size else np.nan,
            "synthetic_std": float(y.std(ddof=1)) if y.size > 1 else np.nan,
            "ks_statistic": float(ks.statistic) if ks is not None else np.nan,
            "ks_pvalue": float(ks.pvalue) if ks is not None else np.nan,
        }

    rows = []
    for name in descriptors:
        col = DESCRIPTOR_COLUMNS.get(name, name)
        rows.append(row(name, col, values(source_table, col), values(synth_table, col)))

    def per_image(t: pd.DataFrame) -> np.ndarray:
        if "image" not in t.columns or not len(t):
            return np.zeros(0)
        return t.groupby("image").size().to_numpy(dtype=np.float64)

    rows.append(row("particles_per_image", "image", per_image(source_table),
                    per_image(synth_table)))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- folder level

def synthesize_from_priors_dir(priors_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                               per_mask: int = 10, random: bool = False,
                               n_random: int | None = None, seed: int = 0,
                               max_shift: float = 0.5, min_area: int = 10, attempts: int = 1,
                               progress: Progress | None = None) -> pd.DataFrame:
    """Synthesize masks from a priors folder (written by ``compute_priors``); returns the
    comparison table.

    Writes ``out_dir/masks/<name>.png`` (16-bit label maps; stale PNGs from an earlier run are
    removed), ``out_dir/particles.csv`` (descriptors of the synthetic masks, same units as the
    priors: px, plus nm when the source image's pixel size is known),
    ``out_dir/comparison.csv`` (:func:`compare_distributions` against the priors'
    ``particles.csv``) and ``out_dir/manifest.json`` (method, seed, parameters, counts).
    ``random=True`` uses Algorithm 4 instead: ``n_random`` masks (default: as many as
    Algorithm 3 would make) of the sources' most common shape. ``attempts``: see
    :func:`synthesize_masks`.
    """
    from emcopilot.io import write_label_map

    docs = load_contours(priors_dir)
    source = load_particles(priors_dir)
    out = Path(out_dir)
    mask_dir = out / "masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    if random:
        n = int(n_random) if n_random is not None else len(docs) * per_mask
        shapes = Counter(tuple(int(x) for x in d["shape"]) for d in docs)
        shape = shapes.most_common(1)[0][0] if shapes else (512, 512)
        masks = random_masks(n, shape, seed=seed, min_area=min_area)
        pixel = {name: None for name, _ in masks}
    else:
        if not docs:
            raise InputError(f"no particle contours in {priors_dir} (run the priors stage on "
                             f"at least one mask first)")
        masks = synthesize_masks(docs, per_mask, max_shift=max_shift, seed=seed,
                                 min_area=min_area, attempts=attempts, progress=progress)
        pixel = {}
        for d in docs:
            for k in range(per_mask):
                pixel[f"{d['image']}_syn{k:03d}"] = d.get("pixel_size_nm")
    tables = []
    written = set()
    for name, lab in masks:
        write_label_map(mask_dir / f"{name}.png", lab)
        written.add(f"{name}.png")
        tables.append(particle_table(lab, pixel_size_nm=pixel.get(name), min_area=min_area,
                                     image_name=name))
    for p in mask_dir.glob("*.png"):
        if p.name not in written:
            p.unlink(missing_ok=True)
    non_empty = [t for t in tables if len(t)]
    synth = (pd.concat(non_empty, ignore_index=True) if non_empty
             else particle_table(np.zeros((1, 1), np.int32)))
    atomic_write_text(out / "particles.csv", synth.to_csv(index=False))
    comparison = compare_distributions(source, synth)
    atomic_write_text(out / "comparison.csv", comparison.to_csv(index=False))
    manifest = {
        "method": "random (Algorithm 4)" if random else "priors (Algorithm 3)",
        "priors_dir": str(priors_dir),
        "seed": int(seed),
        "parameters": ({"n_random": len(masks)} if random else
                       {"per_mask": int(per_mask), "max_shift": float(max_shift),
                        "attempts": int(attempts)})
        | {"min_area": int(min_area)},
        "n_sources": len(docs),
        "n_masks": len(masks),
        "n_particles": int(len(synth)),
        "n_source_particles": int(len(source)),
        "masks": sorted(written),
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2))
    return comparison
