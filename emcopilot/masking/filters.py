"""Algorithm 1 of the paper: filter coarse particle masks.

A region is dropped when
- its mean intensity, on the 0-255 scale of the bright-particle image (``io.bright_particles``),
  is below ``intensity_threshold`` (support or noise: real particles are bright in that image);
- it comes within ``edge_margin`` px of the image border (particles cut by the border would bias
  the size distribution);
- its area is outside ``[min_area, max_area]`` px;
- (off by default) it stands out from its surroundings by at most ``min_snr`` times its noise
  (:func:`emcopilot.postprocess.particle_snr`: blobs of a noisy support's texture; not in the
  paper, measured in BENCHMARKS.md, stop 28);
- (with ``annotations``) at least half of it lies on text or a scale bar drawn on the image
  (:func:`emcopilot.annotations.annotation_particles`; not in the paper, BENCHMARKS.md, stop 37).

The paper resizes every image to 512x512 first; here the filters act on the image at its own
resolution, so ``edge_margin`` and the area limits are in pixels of the image given.
"""

from __future__ import annotations

import numpy as np
from skimage.segmentation import relabel_sequential

from emcopilot.errors import InputError

__all__ = ["filter_regions", "bright_image", "resolve_polarity"]

POLARITIES = ("bright", "dark", "auto")


def resolve_polarity(image01: np.ndarray, polarity: str) -> str:
    """``"bright"``/``"dark"`` as given; ``"auto"`` via ``io.detect_polarity``."""
    if polarity not in POLARITIES:
        raise InputError(f"polarity must be one of {', '.join(POLARITIES)}, got {polarity!r}")
    if polarity != "auto":
        return polarity
    from emcopilot.io import detect_polarity

    return detect_polarity(image01)


def bright_image(image01: np.ndarray, polarity: str) -> np.ndarray:
    """The image in the bright-particle convention (float32 in [0, 1]); ``polarity`` resolved."""
    polarity = resolve_polarity(image01, polarity)
    try:
        from emcopilot.io import bright_particles
    except ImportError:  # io.py not importable: same definition as io.bright_particles
        img = np.asarray(image01, np.float32)
        return (1.0 - img) if polarity == "dark" else img
    return np.asarray(bright_particles(image01, polarity), np.float32)


def filter_regions(
    labels: np.ndarray,
    image01: np.ndarray,
    *,
    polarity: str = "bright",
    intensity_threshold: float = 60,
    edge_margin: int = 5,
    min_area: int = 0,
    max_area: int | None = None,
    min_snr: float | None = 0,
    annotations: bool = False,
) -> np.ndarray:
    """Drop dim, border and out-of-size regions from a label map (Algorithm 1).

    Args:
        labels: 2-D label map, 0 = background, each positive value = one region.
        image01: the micrograph, float32 in [0, 1], same shape as ``labels``.
        polarity: ``"bright"`` (particles brighter than the background), ``"dark"`` or ``"auto"``.
        intensity_threshold: a region whose mean intensity in the bright-particle image, scaled
            to 0-255, is strictly below this is dropped (0 disables). A mean equal to it is kept.
        edge_margin: a region with any pixel in the outer ``edge_margin`` rows or columns of the
            image (distance to the border < ``edge_margin`` px, so a pixel on the border has
            distance 0) is dropped; 0 disables.
        min_area: regions with fewer pixels are dropped.
        max_area: regions with more pixels are dropped (None = no limit).
        min_snr: regions whose :func:`emcopilot.postprocess.particle_snr` in the bright-particle
            image is at most this are dropped (0 or None disables; a region with no background
            ring around it is kept).
        annotations: drop the regions on annotation text and scale bars drawn on ``image01``
            (:func:`emcopilot.annotations.annotation_particles`).

    Returns:
        ``numpy.int32`` label map relabelled 1..N in the order of the input labels.
    """
    labels = np.asarray(labels)
    image01 = np.asarray(image01, np.float32)
    if labels.ndim != 2 or image01.shape != labels.shape:
        raise InputError(
            f"labels {labels.shape} and image {image01.shape} must be 2-D and the same size")
    if polarity not in POLARITIES:
        raise InputError(f"polarity must be one of {', '.join(POLARITIES)}, got {polarity!r}")
    if labels.size and labels.min() < 0:
        raise InputError("label map has negative values; 0 = background, 1..N = particles")
    labels = labels.astype(np.int64, copy=False)
    n = int(labels.max(initial=0))
    if n == 0:
        return np.zeros(labels.shape, np.int32)

    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)
    keep = area > 0
    keep[0] = False
    if min_area > 0:
        keep &= area >= min_area
    if max_area is not None:
        keep &= area <= max_area
    if intensity_threshold > 0:
        bright = bright_image(image01, polarity).ravel().astype(np.float64) * 255.0
        total = np.bincount(flat, weights=bright, minlength=n + 1)
        mean = np.divide(total, area, out=np.zeros(n + 1), where=area > 0)
        # float32 images carry rounding of ~1e-5 on the 0-255 scale; do not let it flip the test.
        keep &= mean >= intensity_threshold - 1e-4
    from emcopilot.postprocess import check_min_snr, faint_particles

    if check_min_snr(min_snr) is not None:
        keep &= ~faint_particles(bright_image(image01, polarity), labels, min_snr)
    if annotations:
        from emcopilot.annotations import annotation_particles

        keep &= ~annotation_particles(image01, labels)
    if edge_margin > 0:
        m = int(edge_margin)
        band = np.concatenate([labels[:m].ravel(), labels[-m:].ravel(),
                               labels[:, :m].ravel(), labels[:, -m:].ravel()])
        keep[np.unique(band)] = False
    keep[0] = False
    out = np.where(keep[labels], labels, 0)
    out, _, _ = relabel_sequential(out)
    return out.astype(np.int32, copy=False)
