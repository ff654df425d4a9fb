"""Particle scale: how wide a micrograph's particles are, and the resize that brings them to a
common width.

Micrographs differ in magnification by orders of magnitude (EMPS: typical particle widths from
8 to 465 px), while a segmentor sees a fixed training crop and a fixed receptive field. The
label-free pipeline therefore resizes every training pair and every image it segments so that
its typical particle is ``target`` px wide. The typical width is measured on a mask: the
equivalent diameter of the particle at the *area-weighted* median (half of the particle area
lies in particles at least this large), which is robust to the small fragments a coarse
masker leaves (on the EMPS test split, against the manual labels' median width: log
correlation 0.66 and 77 % within a factor 2, where the plain median reached 0.30 and 63 %).
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

__all__ = ["area_weighted_median", "typical_diameter", "split_touching", "normalising_scale",
           "resize_image", "resize_labels", "estimate_scale", "check_scale_multiples",
           "multiplied_scale", "recorded_scale_choice", "check_scale_split",
           "recorded_scale_split", "SCALE_LIMITS", "SCALE_SPLIT_DEFAULT", "SPLIT_MIN_DISTANCE",
           "DEFAULT_DIAMETER_PX", "MAX_ENLARGED_PIXELS"]

#: typical particle width (px) the pipeline's segmentor is trained and run at
DEFAULT_DIAMETER_PX = 32.0
#: the resize factor is clipped to this range (a mask with a wrong or no particle cannot blow an
#: image up or shrink it to nothing)
SCALE_LIMITS = (0.125, 4.0)
#: an image is never enlarged beyond this many pixels (memory and time of training and
#: inference); images already larger are not enlarged at all
MAX_ENLARGED_PIXELS = 2048 * 2048
#: the pipeline's and the app's training's default: "auto" gave the catalysts' small particles
#: their width (box F1 0.390 -> 0.404, median size +22 % -> +11 %) and reaches no image of a
#: run whose coarse masks say the particles are free (BENCHMARKS.md, stop 30)
SCALE_SPLIT_DEFAULT = "auto"
#: distance (px) between two maxima of the distance transform that :func:`split_touching` keeps
#: apart
SPLIT_MIN_DISTANCE = 2


def area_weighted_median(widths: np.ndarray) -> float | None:
    """The width at which half of the particles' area (width squared) lies in particles at
    least this wide; None for no width."""
    d = np.sort(np.asarray(widths, dtype=np.float64).ravel())
    if d.size == 0:
        return None
    cum = np.cumsum(d ** 2) / np.sum(d ** 2)
    return float(d[int(np.searchsorted(cum, 0.5))])


def split_touching(labels: np.ndarray, min_distance: int = SPLIT_MIN_DISTANCE) -> np.ndarray:
    """``labels`` with touching particles split: the project's distance-transform watershed
    (:func:`emcopilot.instances.binary_to_instances`) on the mask's foreground, every local
    maximum of the distance at least ``min_distance`` px apart a particle (no h-maxima merge, no
    size limit: the coarse masker already split at its own, coarser settings). On the catalysts'
    coarse masks, where small particles touch in clusters, it brings the typical width closer
    to the labelled one (BENCHMARKS.md, stop 29: within a factor 2 on 76 -> 85 % of the images);
    on EMPS' mostly free particles it cuts whole particles up (84 -> 75 %)."""
    from .instances import binary_to_instances

    return binary_to_instances(np.asarray(labels) > 0, min_distance=int(min_distance), h=0,
                               min_area=1)


def check_scale_split(mode: str) -> str:
    """A scale split mode checked: whether touching particles of a mask are split before its
    typical width is measured (:func:`split_touching`), with support removal's modes and reach
    (:data:`emcopilot.support.SUPPORT_MODES`, :func:`emcopilot.support.scope`): "auto" on the
    images the classical masker judges to show particles on a support, "on" every image, "off"
    none; InputError otherwise."""
    from .support import resolve_support_mode

    return resolve_support_mode(mode, "scale split")


def recorded_scale_split(config: dict) -> str:
    """The scale split a checkpoint's ``config`` section records (``scale_split``); "off" when
    absent (models from before it) or not valid."""
    from .support import recorded_mode

    return recorded_mode(config, "scale_split")


def typical_diameter(labels: np.ndarray, min_area: int = 4, split: bool = False) -> float | None:
    """Area-weighted median equivalent diameter (px) of the instances in a label map; None when
    it holds no instance of at least ``min_area`` px. With ``split`` touching instances are
    split first (:func:`split_touching`)."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise InputError(f"label map must be 2-D, got shape {lab.shape}")
    if lab.size == 0 or int(lab.max(initial=0)) <= 0:
        return None
    if split:
        lab = split_touching(lab)
    areas = np.bincount(lab.ravel().astype(np.int64, copy=False))[1:]
    areas = areas[areas >= max(1, int(min_area))].astype(np.float64)
    return area_weighted_median(np.sqrt(4.0 * areas / np.pi))


def normalising_scale(labels: np.ndarray, target: float = DEFAULT_DIAMETER_PX,
                      limits: tuple[float, float] = SCALE_LIMITS,
                      max_pixels: int = MAX_ENLARGED_PIXELS, split: bool = False) -> float:
    """Resize factor that makes the typical particle of ``labels`` ``target`` px wide, clipped to
    ``limits`` and, when it enlarges, to at most ``max_pixels`` pixels for the resized map;
    1.0 when the map holds no particle. ``split``: measure after touching particles are split
    (:func:`typical_diameter`)."""
    if not target > 0:
        raise InputError(f"target particle width must be > 0 px, got {target}")
    lab = np.asarray(labels)
    d = typical_diameter(lab, split=split)
    if d is None:
        return 1.0
    return _held(float(target) / d, lab.size, limits, max_pixels)


def _held(s: float, pixels: int, limits: tuple[float, float], max_pixels: int) -> float:
    """Resize factor ``s`` clipped to ``limits`` and, when it enlarges an image of ``pixels``
    pixels, to at most ``max_pixels`` pixels (none for an image already larger)."""
    s = float(np.clip(s, limits[0], limits[1]))
    if s > 1.0:
        s = min(s, max(1.0, float(np.sqrt(max_pixels / max(1, pixels)))))
    return s


def check_scale_multiples(multiples) -> tuple[float, ...]:
    """Further multiples of an image's resize factor to try (a segmentor's ``scale_choice``),
    validated: positive numbers other than 1 (the factor itself is always tried), at most 4,
    duplicates dropped, order kept; InputError otherwise."""
    if isinstance(multiples, (str, bytes)) or not hasattr(multiples, "__iter__"):
        raise InputError(f"scale multiples must be a list of numbers, got {multiples!r}")
    out: list[float] = []
    for m in multiples:
        try:
            v = float(m)
        except (TypeError, ValueError):
            raise InputError(f"scale multiple must be a number, got {m!r}") from None
        if not (np.isfinite(v) and v > 0) or v == 1.0:
            raise InputError(f"scale multiple must be a positive number other than 1, got {m!r}")
        if v not in out:
            out.append(v)
    if len(out) > 4:
        raise InputError(f"at most 4 scale multiples, got {len(out)}")
    return tuple(out)


def multiplied_scale(factor: float | None, multiple: float, shape: tuple[int, ...],
                     limits: tuple[float, float] = SCALE_LIMITS,
                     max_pixels: int = MAX_ENLARGED_PIXELS) -> float:
    """``factor`` (None: the image as it is, 1) times ``multiple``, held to the limits of
    :func:`normalising_scale` (``limits``; an enlargement to at most ``max_pixels`` pixels,
    none for an image already larger)."""
    return _held((1.0 if factor is None else float(factor)) * float(multiple),
                 shape[0] * shape[1], limits, max_pixels)


def recorded_scale_choice(config: dict) -> tuple[float, ...]:
    """The multiples a checkpoint's config (its ``"config"`` dict) records as ``scale_choice``,
    validated; none when absent or not valid (:func:`check_scale_multiples`)."""
    try:
        return check_scale_multiples(config.get("scale_choice") or ())
    except InputError:
        return ()


def _size(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    h, w = shape[:2]
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_image(image: np.ndarray, scale: float) -> np.ndarray:
    """A grey image resized by ``scale`` (area averaging when shrinking, bilinear when
    enlarging), float32."""
    import cv2

    a = np.asarray(image, dtype=np.float32)
    if scale == 1.0:
        return a
    nh, nw = _size(a.shape, scale)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(a, (nw, nh), interpolation=interp)


def resize_labels(labels: np.ndarray, scale: float) -> np.ndarray:
    """A label map resized by ``scale`` with nearest-neighbour sampling (ids kept), int32."""
    import cv2

    lab = np.asarray(labels).astype(np.int32, copy=False)
    if scale == 1.0:
        return lab
    nh, nw = _size(lab.shape, scale)
    return cv2.resize(lab, (nw, nh), interpolation=cv2.INTER_NEAREST)


def estimate_scale(image01: np.ndarray, target: float = DEFAULT_DIAMETER_PX,
                   preset: str = "auto", polarity: str = "auto") -> float:
    """:func:`normalising_scale` of an image without a mask: its particles are found first with
    the classical coarse masker (``preset`` and ``polarity`` as in
    :func:`emcopilot.masking.coarse_mask`; ~0.05-0.1 s per 512 px image)."""
    from .masking import coarse_mask

    labels = coarse_mask(np.asarray(image01, dtype=np.float32), method="classical",
                         polarity=polarity, classical_options={"preset": preset})
    return normalising_scale(labels, target)
