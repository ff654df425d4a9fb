"""Instrument data bars: the strip of text many electron microscopes burn into the bottom of
each micrograph (date, high voltage, magnification, working distance, detector, scale bar).

The bar is not part of the specimen, but its letters and digits look like small bright (or
dark) particles to any masker or segmentor: on the EMPS test set, two of the four images whose
particle counts were furthest off (2-3 particles, about 100 counted) were counts of a data bar's
characters. Every place that makes particles (``masking.coarse_mask``,
``inference.Segmentor``) therefore works on the rows above the bar, and its particles end
there, so a particle cut by the bar is treated like one cut by the image border.

A bar is recognised by what every instrument's bar shares, not by a vendor's layout:

- it spans the full width at the bottom, at most ``search`` (a quarter) of the image high;
- a straight, sharp, full-width step separates it from the micrograph above;
- at least 45 % of it is one flat grey level (the bar's background: black, white or grey),
  and that level is rare in the rows just above it;
- that level runs through nearly every column (text may cover a column only in part): a row of
  labels or boxes over only part of the width is not a bar.

On ../shared/data it finds 10 of the 99 EMPS test images and 36 of the 366 train images, every
one a real bar when checked by eye, and none of the 33 S/TEM catalyst images (which have none).
A bar of the same grey as the micrograph just above it has no edge to find and is missed. An
overlay box over most (not all) of the width above a flat background can pass for the top of a
bar: on one train image (b0e3041a0d) the 25 rows of flat micrograph below such a box are taken
for the bar and the box stays in.
"""

from __future__ import annotations

import numpy as np

from emcopilot.errors import InputError

__all__ = ["find_data_bar", "on_rows_above_bar", "pad_below"]

TOLERANCE = 12      # grey levels (0-255) around the bar's background level
MIN_FLAT = 0.45     # share of the bar's pixels at its background level
MAX_ABOVE = 0.25    # share of the rows just above it at that level
MIN_STEP = 0.6      # share of the columns with a sharp step at the bar's top edge
MIN_COLUMNS = 0.85  # share of the columns that show the background level somewhere in the bar
CANDIDATES = 8      # the strongest steps examined


def _grey255(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 2:
        raise InputError(f"expected a 2-D greyscale image, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.int16)
    img = np.nan_to_num(np.asarray(img, np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.int16)


def find_data_bar(image: np.ndarray, *, search: float = 0.25,
                  min_height: int = 8) -> int | None:
    """The first row of an instrument data bar at the bottom of ``image``, or None.

    Args:
        image: 2-D greyscale micrograph, float in [0, 1] (``io.normalize``) or uint8.
        search: the bar lies within this share of the image height from the bottom.
        min_height: the bar is at least this many rows high.

    Returns:
        The row index where the bar starts (rows ``[:row]`` are the micrograph), or None.
    """
    shape = np.shape(image)
    if len(shape) != 2:
        raise InputError(f"expected a 2-D greyscale image, got shape {shape}")
    h, w = shape
    if h < 4 * min_height or w < 16:
        return None
    lo = max(15, int(h * (1.0 - search)))
    hi = h - min_height
    if hi <= lo:
        return None
    # only the bottom rows are read; g's row i is the image's row start + i
    start = lo - 15
    g = _grey255(image[start:])
    # a sharp step over 3 rows (edges are often blurred by resampling): share of columns
    step = (np.abs(g[3:] - g[:-3]) > 2 * TOLERANCE).mean(axis=1)  # step[i]: rows i .. i+3
    rows = np.arange(lo, hi) - start
    strength = np.array([step[r - 3:r + 1].max() for r in rows])
    order = rows[np.argsort(-strength, kind="stable")][:CANDIDATES]
    for r in sorted(int(x) for x in order if strength[x - rows[0]] >= MIN_STEP):
        band = g[r + 3:]  # below the edge's blur
        level = int(np.bincount(band.ravel().astype(np.int64), minlength=256).argmax())
        flat = np.abs(band - level) <= TOLERANCE
        if flat.mean() < MIN_FLAT:
            continue
        above = np.abs(g[max(0, r - 12):max(1, r - 2)] - level) <= TOLERANCE
        if above.mean() > MAX_ABOVE:
            continue
        if (flat.mean(axis=0) >= 0.1).mean() < MIN_COLUMNS:
            continue
        # the topmost edge that passes (bars often hold ruled lines of their own), placed at
        # the sharpest single-row step near it: the bar's first row
        near = np.arange(r - 2, min(len(g), r + 4))
        jumps = (np.abs(g[near] - g[near - 1]) > 2 * TOLERANCE).mean(axis=1)
        return start + int(near[np.argmax(jumps)])
    return None


def on_rows_above_bar(image: np.ndarray, *arrays: np.ndarray | None):
    """``(top, image[:top], *(a[:top] for a in arrays))`` where ``top`` is
    :func:`find_data_bar`'s row, or ``(None, image, *arrays)`` when there is no bar. Arrays that
    are None stay None. :func:`pad_below` brings results back to the image's height."""
    top = find_data_bar(image)
    if top is None:
        return (None, image, *arrays)
    return (top, image[:top], *(None if a is None else a[:top] for a in arrays))


def pad_below(top: int | None, height: int, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The arrays (rows above a bar starting at ``top``) padded with zeros back to ``height``
    rows; as given when ``top`` is None (no bar)."""
    if top is None:
        return arrays
    return tuple(np.pad(a, ((0, height - top), (0, 0))) for a in arrays)
