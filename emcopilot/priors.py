"""Morphology priors (Algorithm 2): per-particle descriptors, contours, NND and g(r).

Plain functions over label maps (2-D int, 0 = background, 1..N = particles). Lengths are in
pixels (``*_px`` columns) and, when the pixel size is known, in nanometres (``*_nm``, areas
``*_nm2``).

Choices (measured, see tests/test_priors.py):

- Perimeter: ``skimage`` ``perimeter_crofton`` (Crofton formula, 4 directions). On digitised
  discs of radius 10/20/40 px it gives circularity 4*pi*A/P^2 = 0.995/1.008/1.011, whereas the
  boundary-chain ``perimeter`` gives 0.977/0.946/0.929, so Crofton is closer to the continuous
  value. Circularity is clipped to <= 1 (small discs come out slightly above 1).
- Feret diameters: from the convex hull of the particle's pixel *corners* (every pixel is a unit
  square), by rotating calipers: a w x h px rectangle gives ``feret_min_px = min(w, h)`` and
  ``feret_max_px = hypot(w, h)``; a 1-px-wide line has width 1.
- Aspect ratio: ``axis_major_length / axis_minor_length`` of the second-moment ellipse (>= 1;
  ``inf`` for a one-pixel-wide line whose minor axis is 0).

Example:

>>> import numpy as np
>>> from skimage.draw import disk
>>> lab = np.zeros((64, 64), np.int32); lab[disk((32, 32), 10)] = 1
>>> t = particle_table(lab, pixel_size_nm=0.5)
>>> round(float(t.circularity[0]), 2), round(float(t.equivalent_diameter_nm[0]), 1)
(1.0, 9.9)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from emcopilot.atomic import atomic_path, atomic_write_text
from emcopilot.errors import InputError

DESCRIPTORS = ("area", "perimeter", "eccentricity", "aspect_ratio", "circularity", "solidity")

# Descriptor name -> table column (lengths in px; the column used for statistics and plots).
DESCRIPTOR_COLUMNS = {
    "area": "area_px",
    "perimeter": "perimeter_px",
    "eccentricity": "eccentricity",
    "aspect_ratio": "aspect_ratio",
    "circularity": "circularity",
    "solidity": "solidity",
}

_PX_COLUMNS = ["image", "label", "centroid_y", "centroid_x", "area_px", "perimeter_px",
               "eccentricity", "aspect_ratio", "circularity", "solidity",
               "equivalent_diameter_px", "feret_max_px", "feret_min_px", "orientation", "nnd_px"]
_NM_COLUMNS = ["area_nm2", "perimeter_nm", "equivalent_diameter_nm", "feret_max_nm",
               "feret_min_nm", "nnd_nm"]

Progress = Callable[[int, int, str], None]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim != 2:
        raise InputError(f"label map must be 2-D, got shape {a.shape}")
    if a.dtype == bool:
        a = a.astype(np.int32)
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise InputError(f"label map must hold integers, got {a.dtype}")
    if a.size and a.min() < 0:
        raise InputError("label map has negative labels")
    return a


def _columns(pixel_size_nm: float | None) -> list[str]:
    return _PX_COLUMNS + (_NM_COLUMNS if pixel_size_nm is not None else [])


def _feret(image: np.ndarray) -> tuple[float, float]:
    """(max, min) caliper diameters in px of a binary crop, from the hull of pixel corners."""
    from scipy.spatial import ConvexHull, QhullError

    img = np.asarray(image, bool)
    rows = np.flatnonzero(img.any(axis=1))
    if rows.size == 0:
        return 0.0, 0.0
    sub = img[rows]
    first = sub.argmax(axis=1)  # leftmost pixel per row
    last = img.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)  # rightmost pixel per row
    # Only the outer corners of each row's extreme pixels can be hull vertices.
    r = rows.astype(np.float64)
    corners = np.concatenate([
        np.stack([r, first], 1), np.stack([r + 1, first], 1),
        np.stack([r, last + 1.0], 1), np.stack([r + 1, last + 1.0], 1),
    ]).astype(np.float64)
    try:
        hull = corners[ConvexHull(corners).vertices]
    except QhullError:  # pragma: no cover - corners of >= 1 pixel always span an area
        return 0.0, 0.0
    diff = hull[:, None, :] - hull[None, :, :]
    fmax = float(np.sqrt((diff ** 2).sum(-1)).max())
    # Rotating calipers: the minimum width of a convex polygon is attained with one caliper
    # flush with an edge, so take, for every edge, the farthest vertex from its line.
    edges = np.roll(hull, -1, axis=0) - hull
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1) / lengths[:, None]
    dist = np.abs(np.einsum("ek,evk->ev", normals, hull[None, :, :] - hull[:, None, :]))
    fmin = float(dist.max(axis=1).min())
    return fmax, fmin


def nearest_neighbour_distances(centroids: np.ndarray) -> np.ndarray:
    """Distance from each point to its nearest other point (same units as ``centroids``).

    ``centroids`` is (N, 2). Returns (N,) float64; all NaN when N == 1, empty when N == 0.

    >>> nearest_neighbour_distances(np.array([[0, 0], [0, 3], [4, 3]]))
    array([3., 3., 4.])
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return np.zeros(0)
    if len(pts) == 1:
        return np.full(1, np.nan)
    d, _ = cKDTree(pts).query(pts, k=2)
    return d[:, 1].astype(np.float64)


def pair_distribution(centroids: np.ndarray, shape: tuple[int, int], r_max: float | None = None,
                      n_bins: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Radial pair distribution function g(r) of points in a rectangular H x W window.

    Estimator with the translation edge correction (Ohser & Stoyan): every ordered pair at
    displacement (dy, dx) is weighted by 1 / ((H - |dy|) (W - |dx|)), the area of the window
    that contains both ends, so complete spatial randomness gives g ~ 1 at every r:

        g(r_k) = A^2 / (N (N - 1)) * sum_{pairs in bin k} w_ij / (pi (r_{k+1}^2 - r_k^2)).

    ``centroids`` (N, 2) in px (row, col); ``shape`` the window (H, W) in px; ``r_max`` in px
    (default min(H, W) / 4; it is clipped to that because the correction becomes noisy beyond).
    Returns (r, g): bin centres in px and g (dimensionless), each (n_bins,). g is all NaN with
    fewer than two points.
    """
    from scipy.spatial import cKDTree

    h, w = float(shape[0]), float(shape[1])
    if h <= 0 or w <= 0:
        raise InputError(f"pair_distribution: window shape must be positive, got {shape}")
    limit = min(h, w) / 4.0
    r_max = limit if r_max is None else min(float(r_max), limit)
    if not r_max > 0 or n_bins < 1:
        raise InputError("pair_distribution: r_max and n_bins must be positive")
    edges = np.linspace(0.0, r_max, n_bins + 1)
    r = 0.5 * (edges[1:] + edges[:-1])
    pts = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
    n = len(pts)
    if n < 2:
        return r, np.full(n_bins, np.nan)
    pairs = cKDTree(pts).query_pairs(r_max, output_type="ndarray")
    sums = np.zeros(n_bins)
    if len(pairs):
        disp = np.abs(pts[pairs[:, 0]] - pts[pairs[:, 1]])
        dist = np.hypot(disp[:, 0], disp[:, 1])
        weight = 2.0 / ((h - disp[:, 0]) * (w - disp[:, 1]))  # x2: ordered pairs
        idx = np.minimum((dist / r_max * n_bins).astype(np.int64), n_bins - 1)
        ok = dist < r_max
        np.add.at(sums, idx[ok], weight[ok])
    area = h * w
    shell = np.pi * (edges[1:] ** 2 - edges[:-1] ** 2)
    g = area * area / (n * (n - 1)) * sums / shell
    return r, g


def particle_table(labels: np.ndarray, *, pixel_size_nm: float | None = None, min_area: int = 10,
                   image_name: str = "") -> pd.DataFrame:
    """One row per particle of ``labels`` with area >= ``min_area`` px.

    Columns: image, label, centroid_y/centroid_x (px), area_px, perimeter_px (Crofton),
    eccentricity, aspect_ratio (major/minor axis, >= 1), circularity (4 pi A / P^2, <= 1),
    solidity, equivalent_diameter_px, feret_max_px, feret_min_px, orientation (rad, skimage
    convention), nnd_px (nearest-neighbour centroid distance among the kept particles; NaN when
    there is only one) and, when ``pixel_size_nm`` (nm/px) is given, area_nm2, perimeter_nm,
    equivalent_diameter_nm, feret_max_nm, feret_min_nm, nnd_nm. Empty input -> empty table with
    these columns.
    """
    from skimage.measure import regionprops, regionprops_table

    a = _check_labels(labels)
    if pixel_size_nm is not None:
        pixel_size_nm = float(pixel_size_nm)
        if not math.isfinite(pixel_size_nm) or pixel_size_nm <= 0:
            raise InputError(f"pixel size must be a positive number of nm, got {pixel_size_nm}")
    cols = _columns(pixel_size_nm)
    if not a.size or a.max() == 0:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "image" else float) for c in cols})
    props = regionprops_table(a, properties=(
        "label", "area", "centroid", "perimeter_crofton", "eccentricity", "axis_major_length",
        "axis_minor_length", "solidity", "equivalent_diameter_area", "orientation"))
    t = pd.DataFrame(props)
    keep = t["area"].to_numpy() >= min_area
    t = t[keep].reset_index(drop=True)
    if t.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "image" else float) for c in cols})
    feret = {}
    for rp in regionprops(a):
        if rp.area >= min_area:
            feret[rp.label] = _feret(rp.image)
    area = t["area"].to_numpy(dtype=np.float64)
    perim = t["perimeter_crofton"].to_numpy(dtype=np.float64)
    major = t["axis_major_length"].to_numpy(dtype=np.float64)
    minor = t["axis_minor_length"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = np.where(minor > 0, major / np.where(minor > 0, minor, 1), np.inf)
        circ = np.where(perim > 0, 4 * np.pi * area / np.where(perim > 0, perim, 1) ** 2, 1.0)
    aspect = np.maximum(aspect, 1.0)
    circ = np.clip(circ, 0.0, 1.0)
    cy = t["centroid-0"].to_numpy(dtype=np.float64)
    cx = t["centroid-1"].to_numpy(dtype=np.float64)
    nnd = nearest_neighbour_distances(np.stack([cy, cx], axis=1))
    lab = t["label"].to_numpy().astype(np.int64)
    out = pd.DataFrame({
        "image": [str(image_name)] * len(t),
        "label": lab,
        "centroid_y": cy,
        "centroid_x": cx,
        "area_px": area,
        "perimeter_px": perim,
        "eccentricity": t["eccentricity"].to_numpy(dtype=np.float64),
        "aspect_ratio": aspect,
        "circularity": circ,
        "solidity": t["solidity"].to_numpy(dtype=np.float64),
        "equivalent_diameter_px": t["equivalent_diameter_area"].to_numpy(dtype=np.float64),
        "feret_max_px": np.array([feret[i][0] for i in lab]),
        "feret_min_px": np.array([feret[i][1] for i in lab]),
        "orientation": t["orientation"].to_numpy(dtype=np.float64),
        "nnd_px": nnd,
    })
    if pixel_size_nm is not None:
        s = pixel_size_nm
        out["area_nm2"] = out["area_px"] * s * s
        out["perimeter_nm"] = out["perimeter_px"] * s
        out["equivalent_diameter_nm"] = out["equivalent_diameter_px"] * s
        out["feret_max_nm"] = out["feret_max_px"] * s
        out["feret_min_nm"] = out["feret_min_px"] * s
        out["nnd_nm"] = out["nnd_px"] * s
    return out[cols]


def _polygon_area(contour: np.ndarray) -> float:
    y, x = contour[:, 0], contour[:, 1]
    return 0.5 * float(np.abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def particle_contours(labels: np.ndarray, min_area: int = 10) -> list[dict]:
    """Outer boundary of every particle with area >= ``min_area`` px.

    Returns ``[{"label": int, "contour": [[row, col], ...]}, ...]`` in image pixel coordinates
    (sub-pixel, from ``skimage.measure.find_contours`` at level 0.5 on the particle's padded
    binary crop, so the polygon runs half-way between inside and outside pixel centres and
    ``skimage.draw.polygon`` of it gives back the particle). A particle made of several pieces
    keeps the boundary that encloses the largest area; holes are ignored.
    """
    from skimage.measure import find_contours, regionprops

    a = _check_labels(labels)
    out: list[dict] = []
    if not a.size or a.max() == 0:
        return out
    for rp in regionprops(a):
        if rp.area < min_area:
            continue
        crop = np.pad(rp.image.astype(np.float32), 1)
        contours = find_contours(crop, 0.5)
        if not contours:  # pragma: no cover - a padded non-empty crop always has one
            continue
        best = max(contours, key=_polygon_area)
        r0, c0 = rp.bbox[0] - 1, rp.bbox[1] - 1
        pts = np.round(best + np.array([r0, c0], dtype=np.float64), 3)
        out.append({"label": int(rp.label), "contour": pts.tolist()})
    return out


# --------------------------------------------------------------------------- folder level

def _write_csv(path: Path, table: pd.DataFrame) -> None:
    atomic_write_text(path, table.to_csv(index=False))


def _summary(table: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {"n_particles": int(len(table)),
                           "n_images": int(table["image"].nunique()) if len(table) else 0,
                           "descriptors": {}}
    names = list(DESCRIPTORS) + ["equivalent_diameter", "feret_max", "feret_min", "nnd"]
    for name in names:
        col = DESCRIPTOR_COLUMNS.get(name, f"{name}_px")
        v = table[col].to_numpy(dtype=np.float64) if col in table else np.zeros(0)
        v = v[np.isfinite(v)]
        out["descriptors"][name] = {
            "column": col,
            "count": int(v.size),
            "mean": float(v.mean()) if v.size else None,
            "std": float(v.std(ddof=1)) if v.size > 1 else None,
            "median": float(np.median(v)) if v.size else None,
        }
    return out


def _pooled_gr(items: list[tuple[np.ndarray, tuple[int, int]]], n_bins: int = 50
               ) -> pd.DataFrame:
    """g(r) pooled over images: common bins up to min(min(H, W)) / 4 px, images weighted by
    their number of ordered pairs N (N - 1)."""
    usable = [(c, s) for c, s in items if len(c) >= 2]
    if not usable:
        return pd.DataFrame({"r_px": pd.Series(dtype=float), "g": pd.Series(dtype=float)})
    r_max = min(min(s) for _, s in usable) / 4.0
    acc = np.zeros(n_bins)
    wsum = 0.0
    r = np.zeros(n_bins)
    for c, s in usable:
        r, g = pair_distribution(c, s, r_max=r_max, n_bins=n_bins)
        wgt = float(len(c) * (len(c) - 1))
        acc += wgt * g
        wsum += wgt
    return pd.DataFrame({"r_px": r, "g": acc / wsum})


def _plot_descriptors(table: pd.DataFrame, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from scipy.stats import gaussian_kde

    fig, axes = plt.subplots(2, 3, figsize=(12, 7), constrained_layout=True)
    for ax, name in zip(axes.ravel(), DESCRIPTORS):
        col = DESCRIPTOR_COLUMNS[name]
        v = table[col].to_numpy(dtype=np.float64) if len(table) else np.zeros(0)
        v = v[np.isfinite(v)]
        ax.set_title(f"{name} (n={v.size})")
        ax.set_xlabel(col)
        if v.size:
            ax.hist(v, bins=min(40, max(5, v.size // 5)), density=True, alpha=0.5,
                    color="tab:blue")
            if v.size > 2 and np.ptp(v) > 0:
                try:
                    kde = gaussian_kde(v)
                    xs = np.linspace(v.min(), v.max(), 200)
                    ax.plot(xs, kde(xs), color="tab:red", lw=1.5)
                except np.linalg.LinAlgError:  # pragma: no cover - degenerate data
                    pass
        else:
            ax.text(0.5, 0.5, "no particles", ha="center", transform=ax.transAxes)
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _plot_nnd_gr(table: pd.DataFrame, gr: pd.DataFrame, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    v = table["nnd_px"].to_numpy(dtype=np.float64) if len(table) else np.zeros(0)
    v = v[np.isfinite(v)]
    a1.set_title(f"nearest-neighbour distance (n={v.size})")
    a1.set_xlabel("NND (px)")
    if v.size:
        a1.hist(v, bins=min(40, max(5, v.size // 5)), color="tab:blue", alpha=0.7)
    a2.set_title("pair distribution function g(r)")
    a2.set_xlabel("r (px)")
    a2.axhline(1.0, color="grey", lw=0.8, ls="--")
    if len(gr):
        a2.plot(gr["r_px"], gr["g"], color="tab:red")
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def compute_priors(items: Iterable[tuple[str, np.ndarray, float | None]],
                   out_dir: str | os.PathLike, *, min_area: int = 10,
                   progress: Progress | None = None) -> pd.DataFrame:
    """Algorithm 2 over a set of label maps; returns the global particle table.

    ``items``: ``(name, labels, pixel_size_nm)`` triples (name = image stem, unique). Writes
    atomically into ``out_dir``:

    - ``per_image/<name>.csv``: :func:`particle_table` of that image;
    - ``contours/<name>.json``: ``{"image", "shape": [H, W], "pixel_size_nm", "particles":
      [{"label", "contour": [[r, c], ...]}]}``;
    - ``particles.csv``: all images (``*_nm`` columns present when any image has a pixel size);
    - ``summary.json``: per-descriptor count/mean/std/median (lengths in px);
    - ``gr.csv``: columns ``r_px``, ``g`` (g(r) pooled over images, see :func:`_pooled_gr`);
    - ``plots/descriptors.png`` (histogram + KDE per descriptor), ``plots/nnd_gr.png``.
    """
    items = list(items)
    out = Path(out_dir)
    (out / "per_image").mkdir(parents=True, exist_ok=True)
    (out / "contours").mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    total = len(items) + 1
    tables: list[pd.DataFrame] = []
    gr_items: list[tuple[np.ndarray, tuple[int, int]]] = []
    seen: set[str] = set()
    for i, (name, labels, pixel_size_nm) in enumerate(items):
        name = str(name)
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise InputError(f"priors: bad image name {name!r}")
        if name in seen:
            raise InputError(f"priors: image name {name!r} appears twice; names must be unique")
        seen.add(name)
        if progress:
            progress(i, total, f"priors: {name}")
        a = _check_labels(labels)
        t = particle_table(a, pixel_size_nm=pixel_size_nm, min_area=min_area, image_name=name)
        _write_csv(out / "per_image" / f"{name}.csv", t)
        contours = particle_contours(a, min_area=min_area)
        doc = {"image": name, "shape": [int(a.shape[0]), int(a.shape[1])],
               "pixel_size_nm": None if pixel_size_nm is None else float(pixel_size_nm),
               "particles": contours}
        atomic_write_text(out / "contours" / f"{name}.json", json.dumps(doc))
        tables.append(t)
        gr_items.append((t[["centroid_y", "centroid_x"]].to_numpy(dtype=np.float64),
                         (int(a.shape[0]), int(a.shape[1]))))
    for sub, suffix in (("per_image", ".csv"), ("contours", ".json")):
        for stale in (out / sub).glob(f"*{suffix}"):  # from an earlier run with other images
            if stale.name[: -len(suffix)] not in seen:
                stale.unlink(missing_ok=True)
    if progress:
        progress(len(items), total, "priors: global table and plots")
    non_empty = [t for t in tables if len(t)]
    if non_empty:
        table = pd.concat(non_empty, ignore_index=True)
    else:
        table = particle_table(np.zeros((1, 1), np.int32),
                               pixel_size_nm=1.0 if any(p is not None for _, _, p in items)
                               else None)
    _write_csv(out / "particles.csv", table)
    atomic_write_text(out / "summary.json", json.dumps(_summary(table), indent=2))
    gr = _pooled_gr(gr_items)
    _write_csv(out / "gr.csv", gr)
    _plot_descriptors(table, out / "plots" / "descriptors.png")
    _plot_nnd_gr(table, gr, out / "plots" / "nnd_gr.png")
    if progress:
        progress(total, total, "priors: done")
    return table


def load_contours(priors_dir: str | os.PathLike) -> list[dict]:
    """The contour documents written by :func:`compute_priors`, sorted by image name."""
    d = Path(priors_dir) / "contours"
    if not d.is_dir():
        raise InputError(f"no morphology priors in {priors_dir} (run the priors stage first)")
    docs = []
    for p in sorted(d.glob("*.json")):
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{p.name}: unreadable contour file ({exc})") from None
        if not isinstance(doc, dict) or "particles" not in doc or "shape" not in doc:
            raise InputError(f"{p.name}: not a contour file written by the priors stage")
        docs.append(doc)
    return docs


def load_particles(priors_dir: str | os.PathLike) -> pd.DataFrame:
    """The global particle table (``particles.csv``) written by :func:`compute_priors`."""
    p = Path(priors_dir) / "particles.csv"
    if not p.is_file():
        raise InputError(f"no particle table in {priors_dir} (run the priors stage first)")
    return pd.read_csv(p)
