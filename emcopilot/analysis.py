"""Particle size distributions (PSD): summaries, plots, overlays and batch reports.

Particle tables come from :func:`emcopilot.priors.particle_table` (one row per particle, lengths
in px and, when the pixel size is known, in nm). The size of a particle is its
**equivalent-circle diameter** (``equivalent_diameter_px`` / ``equivalent_diameter_nm``, the
diameter of the disc of the same area). Percentiles D10/D50/D90 are number-weighted.

Units are never mixed silently: a batch whose images are all calibrated is summarised in nm;
otherwise in px, with a warning when some images were calibrated and others not.

>>> import numpy as np
>>> from skimage.draw import disk
>>> from emcopilot.priors import particle_table
>>> lab = np.zeros((100, 100), np.int32)
>>> lab[disk((30, 30), 10)] = 1; lab[disk((70, 70), 10)] = 2
>>> s = psd_summary(particle_table(lab, pixel_size_nm=0.5), image_area_px=lab.size)
>>> s["count"], s["unit"], round(s["mean"], 1), round(s["number_density"])
(2, 'nm', 9.9, 800)
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from emcopilot.atomic import atomic_path, atomic_write_text
from emcopilot.errors import InputError

__all__ = ["diameters", "psd_summary", "plot_psd", "overlay", "write_psd_report", "PsdItem"]

Progress = Callable[[int, int, str], None]


# --------------------------------------------------------------------------- helpers

def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars -> Python, NaN/inf -> None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def _table_unit(table: pd.DataFrame, pixel_size_nm: float | None) -> str:
    if pixel_size_nm is not None:
        return "nm"
    col = table.get("equivalent_diameter_nm")
    if col is not None and len(table) and col.notna().all():
        return "nm"
    return "px"


def diameters(table: pd.DataFrame, unit: str, pixel_size_nm: float | None = None) -> np.ndarray:
    """Equivalent diameters (float64, finite, > 0) in ``unit`` ("nm" or "px").

    For "nm" the ``equivalent_diameter_nm`` column is used, or ``equivalent_diameter_px *
    pixel_size_nm`` when the table has no nm column. InputError when nm is asked for and neither
    is available (the sizes would otherwise be pixels passed off as nm).
    """
    if unit not in ("nm", "px"):
        raise InputError(f"unit must be 'nm' or 'px', got {unit!r}")
    if len(table) == 0:
        return np.zeros(0)
    if unit == "px":
        if "equivalent_diameter_px" not in table:
            raise InputError("particle table has no equivalent_diameter_px column")
        d = table["equivalent_diameter_px"].to_numpy(dtype=np.float64)
    elif pixel_size_nm is not None and (
            "equivalent_diameter_nm" not in table or table["equivalent_diameter_nm"].isna().any()):
        d = table["equivalent_diameter_px"].to_numpy(dtype=np.float64) * float(pixel_size_nm)
    elif "equivalent_diameter_nm" in table and table["equivalent_diameter_nm"].notna().all():
        d = table["equivalent_diameter_nm"].to_numpy(dtype=np.float64)
    else:
        raise InputError("sizes in nm need a pixel size: some particles have no "
                         "equivalent_diameter_nm (give pixel_size_nm or use unit='px')")
    return d[np.isfinite(d) & (d > 0)]


def _lognormal(d: np.ndarray) -> dict | None:
    """Log-normal fit with loc = 0 (scipy.stats.lognorm.fit): mu and sigma of ln(d), the
    geometric mean exp(mu) and the one-sample KS statistic and p-value."""
    from scipy import stats

    if len(d) < 3 or np.ptp(np.log(d)) <= 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s, _loc, scale = stats.lognorm.fit(d, floc=0)
        ks = stats.kstest(d, "lognorm", args=(s, 0, scale))
    return {"mu": math.log(scale), "sigma": float(s), "geometric_mean": float(scale),
            "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue)}


def psd_summary(table: pd.DataFrame, *, pixel_size_nm: float | None = None,
                image_area_px: float | None = None,
                image_area_um2: float | None = None) -> dict:
    """Number-weighted size statistics of the equivalent diameters in ``table``.

    Unit: "nm" when ``pixel_size_nm`` is given or the table carries ``equivalent_diameter_nm``
    for every particle, else "px". Returns a JSON-ready dict (None where undefined, never NaN):
    count, unit, mean, std (sample, ddof=1), median, d10, d50, d90, min, max (in ``unit``),
    number_density and number_density_unit ("per um2" when calibrated: count / area in µm²,
    from ``image_area_um2`` or ``image_area_px * pixel_size_nm**2 / 1e6``; else "per megapixel"
    from ``image_area_px``), and lognormal ({mu, sigma, geometric_mean (in ``unit``),
    ks_statistic, ks_pvalue} or None below 3 particles).
    """
    if pixel_size_nm is not None:
        pixel_size_nm = float(pixel_size_nm)
        if not (math.isfinite(pixel_size_nm) and pixel_size_nm > 0):
            raise InputError(f"pixel size must be a positive number of nm, got {pixel_size_nm}")
    unit = _table_unit(table, pixel_size_nm)
    d = diameters(table, unit, pixel_size_nm)
    n = int(len(d))
    out: dict[str, Any] = {"count": n, "unit": unit, "diameter": "equivalent_circle_diameter"}
    if n:
        p10, p50, p90 = np.percentile(d, [10, 50, 90])
        out.update(mean=float(d.mean()), std=float(d.std(ddof=1)) if n > 1 else None,
                   median=float(np.median(d)), d10=float(p10), d50=float(p50), d90=float(p90),
                   min=float(d.min()), max=float(d.max()))
    else:
        out.update(mean=None, std=None, median=None, d10=None, d50=None, d90=None,
                   min=None, max=None)
    # number density
    density, density_unit = None, None
    if unit == "nm":
        px = pixel_size_nm
        if px is None and n and "equivalent_diameter_px" in table:
            ratio = (table["equivalent_diameter_nm"] / table["equivalent_diameter_px"]).to_numpy(float)
            ratio = ratio[np.isfinite(ratio)]
            px = float(np.median(ratio)) if len(ratio) and np.ptp(ratio) < 1e-6 * ratio.max() else None
        area_um2 = image_area_um2
        if area_um2 is None and image_area_px is not None and px is not None:
            area_um2 = float(image_area_px) * px * px / 1e6
        if area_um2 is not None and area_um2 > 0:
            density, density_unit = n / area_um2, "per um2"
    elif image_area_px is not None and image_area_px > 0:
        density, density_unit = n / (float(image_area_px) / 1e6), "per megapixel"
    out["number_density"] = density
    out["number_density_unit"] = density_unit
    out["lognormal"] = _lognormal(d)
    return _clean(out)


def _new_figure(figsize=(6.0, 4.2)):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=120, layout="constrained")


def _save_figure(fig, png_path: str | Path | None, svg_path: str | Path | None) -> None:
    import matplotlib

    # SVG text stays text (editable, searchable) instead of glyph outlines.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "emcopilot"}):
        for path, fmt in ((png_path, "png"), (svg_path, "svg")):
            if path is None:
                continue
            with atomic_path(path, suffix=f".{fmt}") as tmp:
                fig.savefig(tmp, format=fmt)


def plot_psd(table: pd.DataFrame, png_path: str | Path | None, svg_path: str | Path | None, *,
             unit: str, title: str = "", bins: int | str = "auto",
             pixel_size_nm: float | None = None) -> None:
    """Histogram (density) of equivalent diameters in ``unit`` ("nm" or "px") with the fitted
    log-normal curve and dashed D10/D50/D90 lines; writes PNG and/or SVG atomically (either path
    may be None). An empty table gives a figure that says "no particles"."""
    from scipy import stats

    d = diameters(table, unit, pixel_size_nm)
    fig = _new_figure()
    ax = fig.add_subplot()
    label = "nm" if unit == "nm" else "px"
    ax.set_xlabel(f"equivalent diameter ({label})")
    ax.set_ylabel(f"probability density (1/{label})")
    if len(d) == 0:
        ax.text(0.5, 0.5, "no particles", ha="center", va="center", transform=ax.transAxes,
                fontsize=14)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    else:
        ax.hist(d, bins=bins, density=True, color="#8fb3d9", edgecolor="#3b6ea5",
                label=f"N = {len(d)}")
        fit = _lognormal(d)
        if fit is not None:
            x = np.linspace(max(d.min() * 0.5, 1e-9), d.max() * 1.2, 400)
            y = stats.lognorm.pdf(x, fit["sigma"], 0, fit["geometric_mean"])
            ax.plot(x, y, color="#c0392b", lw=2,
                    label=f"log-normal: GM {fit['geometric_mean']:.3g} {label}, "
                          f"σ {fit['sigma']:.2f}")
        for q, style in zip((10, 50, 90), (":", "--", ":")):
            v = float(np.percentile(d, q))
            ax.axvline(v, color="k", ls=style, lw=1.2, label=f"D{q} = {v:.3g} {label}")
        ax.legend(fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    _save_figure(fig, png_path, svg_path)


def overlay(image01: np.ndarray, labels: np.ndarray, *, color: tuple[int, int, int] = (255, 64, 0),
            numbers: bool = False) -> np.ndarray:
    """RGB uint8 (H, W, 3) of the grey image with particle outlines in ``color``
    (``skimage.segmentation.find_boundaries``, mode "inner"); with ``numbers`` each particle's
    label id is written at its centroid."""
    from skimage.segmentation import find_boundaries

    from emcopilot.io import to_uint8

    img = np.asarray(image01)
    lab = np.asarray(labels)
    if img.ndim != 2 or lab.shape != img.shape:
        raise InputError(f"overlay: image {img.shape} and label map {lab.shape} must be 2-D and "
                         "the same size")
    grey = to_uint8(img)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    edges = find_boundaries(lab, mode="inner") & (lab > 0)
    rgb[edges] = np.asarray(color, dtype=np.uint8)
    if numbers and lab.max() > 0:
        import cv2
        from skimage.measure import regionprops

        scale = max(0.3, min(img.shape) / 1200.0)
        for rp in regionprops(lab.astype(np.int32)):
            y, x = rp.centroid
            cv2.putText(rgb, str(rp.label), (int(x) - 4, int(y) + 4), cv2.FONT_HERSHEY_SIMPLEX,
                        scale, tuple(int(c) for c in color), 1, cv2.LINE_AA)
    return rgb


# --------------------------------------------------------------------------- batch reports

class PsdItem:
    """One image of a report: ``name``, ``labels`` (int label map), ``pixel_size_nm`` (nm/px or
    None) and ``image01`` (float [0, 1] or None: no overlay)."""

    __slots__ = ("name", "labels", "pixel_size_nm", "image01")

    def __init__(self, name: str, labels: np.ndarray, pixel_size_nm: float | None = None,
                 image01: np.ndarray | None = None):
        self.name, self.labels = name, labels
        self.pixel_size_nm, self.image01 = pixel_size_nm, image01


def _as_item(obj: Any) -> PsdItem:
    if isinstance(obj, PsdItem):
        return obj
    if isinstance(obj, dict):
        return PsdItem(obj["name"], obj["labels"], obj.get("pixel_size_nm"),
                       obj.get("image01", obj.get("image")))
    if isinstance(obj, (tuple, list)):
        if not 2 <= len(obj) <= 4:
            raise InputError("report items are (name, labels, pixel_size_nm, image01) tuples")
        return PsdItem(*obj)
    if hasattr(obj, "name") and hasattr(obj, "labels"):
        return PsdItem(obj.name, obj.labels, getattr(obj, "pixel_size_nm", None),
                       getattr(obj, "image01", getattr(obj, "image", None)))
    raise InputError(f"cannot use {type(obj).__name__} as a report item: give (name, labels, "
                     "pixel_size_nm, image01)")


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _file_name(name: str) -> str:
    s = _UNSAFE.sub("_", str(name)).strip("._") or "image"
    return s[:120]


def write_psd_report(items: Iterable[Any], out_dir: str | Path, *, min_area: int = 10,
                     per_image_plots: bool = False, progress: Progress | None = None) -> dict:
    """Measure every particle of every item and write a PSD report to ``out_dir``.

    ``items``: (name, labels, pixel_size_nm, image01 or None) tuples, dicts or objects with
    those attributes (:class:`PsdItem`); processed one at a time. Particles below ``min_area``
    px are ignored. Writes

    - ``particles.csv``: all particles (:func:`emcopilot.priors.particle_table` columns plus
      ``pixel_size_nm``; nm columns empty for uncalibrated images),
    - ``summary.json``: {"batch": summary, "per_image": {name: summary}, "warnings": [...],
      "min_area": ..., "n_images": ...} (see :func:`psd_summary`),
    - ``psd.png`` / ``psd.svg``: the batch histogram with the log-normal fit,
    - ``overlays/<name>.png`` for items with an image, and ``per_image/<name>_psd.png`` when
      ``per_image_plots``.

    The batch is in nm only when every image is calibrated; otherwise in px, with a warning if
    some were. Returns the summary dict.
    """
    from emcopilot.priors import particle_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = len(items) if hasattr(items, "__len__") else 0  # type: ignore[arg-type]
    tables: list[pd.DataFrame] = []
    per_image: dict[str, dict] = {}
    warn: list[str] = []
    areas_px: list[float] = []
    areas_um2: list[float | None] = []
    calibrated: list[bool] = []
    used_files: set[str] = set()
    n = 0
    for n, raw in enumerate(items):
        item = _as_item(raw)
        name = str(item.name)
        if progress:
            progress(n, max(total, n + 1), name)
        if name in per_image:
            k = 2
            while f"{name}_{k}" in per_image:
                k += 1
            warn.append(f"duplicate image name {name!r} renamed to {name}_{k}")
            name = f"{name}_{k}"
        px = item.pixel_size_nm
        if px is not None:
            px = float(px)
            if not (math.isfinite(px) and px > 0):
                warn.append(f"{name}: invalid pixel size {item.pixel_size_nm!r} ignored; sizes in px")
                px = None
        labels = np.asarray(item.labels)
        t = particle_table(labels, pixel_size_nm=px, min_area=min_area, image_name=name)
        t.insert(t.columns.get_loc("label"), "pixel_size_nm", px if px is not None else np.nan)
        area_px = float(labels.shape[0] * labels.shape[1]) if labels.ndim == 2 else None
        per_image[name] = psd_summary(t, pixel_size_nm=px, image_area_px=area_px)
        tables.append(t)
        areas_px.append(area_px or 0.0)
        areas_um2.append(area_px * px * px / 1e6 if (px is not None and area_px) else None)
        calibrated.append(px is not None)
        fname = _file_name(name)
        while fname in used_files:
            fname += "_"
        used_files.add(fname)
        if item.image01 is not None:
            from emcopilot.io import write_image

            image = np.asarray(item.image01)
            if image.shape != labels.shape:
                warn.append(f"{name}: image {image.shape} and label map {labels.shape} differ in "
                            "size; no overlay")
            else:
                write_image(out / "overlays" / f"{fname}.png", overlay(image, labels))
        if per_image_plots:
            plot_psd(t, out / "per_image" / f"{fname}_psd.png", None,
                     unit=per_image[name]["unit"], title=name, pixel_size_nm=px)
    n_images = len(per_image)
    if progress:
        progress(n_images, n_images, "report")

    all_cal = n_images > 0 and all(calibrated)
    if any(calibrated) and not all_cal:
        cal = [k for k, c in zip(per_image, calibrated) if c]
        unc = [k for k, c in zip(per_image, calibrated) if not c]
        warn.append(f"{len(cal)} image(s) have a pixel size and {len(unc)} do not "
                    f"(e.g. {unc[0]!r}): the batch summary and plot are in px, not nm")
    elif n_images and not any(calibrated):
        warn.append("no pixel size known: sizes are in px")
    if all_cal and len({float(t["pixel_size_nm"].iloc[0]) for t in tables if len(t)}) > 1:
        warn.append("images have different pixel sizes; the batch combines their sizes in nm")
    unit = "nm" if all_cal else "px"

    frames = [t for t in tables if len(t)]
    if frames:
        batch_table = pd.concat(frames, ignore_index=True)
    elif tables:
        batch_table = tables[0].iloc[0:0]
    else:
        batch_table = particle_table(np.zeros((1, 1), np.int32), min_area=min_area)
        batch_table.insert(1, "pixel_size_nm", pd.Series(dtype=float))
    if unit == "px" and "equivalent_diameter_nm" in batch_table:
        # keep the nm columns for the calibrated rows but summarise the batch in px
        batch_for_stats = batch_table.drop(columns=[c for c in batch_table.columns
                                                    if c.endswith("_nm") or c.endswith("_nm2")])
    else:
        batch_for_stats = batch_table
    if unit == "nm":
        batch = psd_summary(batch_for_stats, image_area_um2=float(sum(a for a in areas_um2 if a)))
    else:
        batch = psd_summary(batch_for_stats, image_area_px=float(sum(areas_px)) or None)
    batch["n_images"] = n_images

    # CSV: px columns first, then nm columns (empty where unknown)
    with atomic_path(out / "particles.csv", suffix=".csv") as tmp:
        batch_table.to_csv(tmp, index=False)
    plot_psd(batch_for_stats, out / "psd.png", out / "psd.svg", unit=unit,
             title=f"Particle size distribution ({batch['count']} particles, {n_images} image(s))")
    summary = _clean({"batch": batch, "per_image": per_image, "warnings": warn,
                      "min_area": int(min_area), "n_images": n_images})
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    return summary
