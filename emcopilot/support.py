"""Support removal: the textured support under supported-catalyst particles, taken out of a
real image before the segmentor sees it.

The pipeline's segmentor learns from synthetic micrographs that the pix2pix generator draws from
particle masks. A mask says nothing about the support the particles sit on: on the catalysts
the generator paints a cloudy, support-like background with halos round the particles wherever
it likes (run 19), and on the real HAADF-STEM images the segmentor then took bright support
grains for particles and missed small particles on them (BENCHMARKS.md, "Stop 18"). A white
top-hat with a disc a little wider than the particles (``radius_widths`` typical particle
widths) keeps structures narrower than the disc (particles) and removes wider ones (support
grains, thickness and illumination gradients) before the segmentor sees the image. Giving the
generator the support-removed images too (:func:`write_support_removed`, the pipeline's
``support_in_training``) was measured worse on the catalysts (BENCHMARKS.md, "Stop 19").

Which images get it follows the classical preset the run's coarse masks were made with
(:meth:`emcopilot.inference.Segmentor.resolve_support`): "isolated" says the particles are free
(none), "supported" says they sit on a support (all), and "auto" leaves it to the masker's
judgement per image (:func:`shows_support`, i.e.
:func:`emcopilot.masking.classical.choose_preset`: an Otsu foreground over a quarter of the
frame and the top-hat masker finds at least ten particles, or the largest Otsu region is over a
tenth of the frame and the top-hat masker finds many small particles on it). Free particles on a flat background
are best left as they are: the top-hat also cuts down particles wider than the disc, and on
EMPS, whose dense figure crops the masker often judges "supported", removal cost F1 and count
error (BENCHMARKS.md, stop 18).
"""

from __future__ import annotations

import numpy as np

from . import io
from .errors import InputError

__all__ = ["SUPPORT_MODES", "SUPPORT_RADIUS_WIDTHS", "remove_support", "remove_support_at_mask_scale",
           "write_support_removed", "shows_support", "preset_followed", "recorded_mode", "scope",
           "resolve_support_mode", "removal_kept", "SUPPORT_CHECK_DEFAULT"]

#: "auto": as the classical preset says (per image with preset "auto"); "on": every image;
#: "off": none.
SUPPORT_MODES = ("auto", "on", "off")
#: disc radius of the top-hat in typical particle widths (structures wider than about twice this
#: are removed); measured on the catalysts and EMPS test with run 19 (BENCHMARKS.md, stop 18)
SUPPORT_RADIUS_WIDTHS = 1.5
#: whether the pipeline and the app's training keep an image's support removal only where it
#: matches the coarse mask at least as well as without it (:func:`removal_kept`); off: on run
#: 26 it won box F1 and the mean count error and lost the median count error and KS
#: (BENCHMARKS.md, stop 24)
SUPPORT_CHECK_DEFAULT = False


def remove_support(image01: np.ndarray, particle_width_px: float,
                   radius_widths: float = SUPPORT_RADIUS_WIDTHS) -> np.ndarray:
    """A bright-particle grey image with everything wider than the disc of radius
    ``radius_widths`` x ``particle_width_px`` removed (white top-hat), renormalised to [0, 1]
    (:func:`emcopilot.io.normalize`); float32 of the input's shape."""
    import cv2

    a = np.asarray(image01, dtype=np.float32)
    if a.ndim != 2:
        raise InputError(f"expected a 2-D grey image, got shape {a.shape}")
    if not (particle_width_px > 0 and radius_widths > 0):
        raise InputError("particle width and disc radius must be > 0, got "
                         f"{particle_width_px} px and {radius_widths} widths")
    r = max(1, int(round(float(radius_widths) * float(particle_width_px))))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0)
    return io.normalize(cv2.morphologyEx(a, cv2.MORPH_TOPHAT, disc))


def remove_support_at_mask_scale(image01: np.ndarray, labels: np.ndarray | None,
                                 radius_widths: float = SUPPORT_RADIUS_WIDTHS,
                                 target: float | None = None) -> np.ndarray:
    """:func:`remove_support` on an image at its own pixel scale, with the particle width the
    segmentor's support removal works at for it: a segmentor trained at a common particle width
    ``target`` (default :data:`emcopilot.particle_scale.DEFAULT_DIAMETER_PX`) resizes the image by
    :func:`emcopilot.particle_scale.normalising_scale` of ``labels`` (its coarse mask) and
    removes the support at ``target`` px, so here the width is ``target`` / that factor. Used to
    give the generator the real images as the segmentor will see them."""
    from .particle_scale import DEFAULT_DIAMETER_PX, normalising_scale

    target = DEFAULT_DIAMETER_PX if target is None else float(target)
    a = np.asarray(image01, dtype=np.float32)
    lab = np.zeros(a.shape, np.int32) if labels is None else np.asarray(labels)
    return remove_support(a, target / normalising_scale(lab, target), radius_widths)


def write_support_removed(images_dir, masks_dir, dest, reach: str, *,
                          data_bar_rows: dict[str, int | None] | None = None,
                          radius_widths: float = SUPPORT_RADIUS_WIDTHS,
                          progress=None) -> list[str]:
    """Write a copy of every bright-particle PNG of ``images_dir`` to ``dest`` (rebuilt), with
    the support taken out (:func:`remove_support_at_mask_scale`, the width measured on the
    coarse mask of the same stem in ``masks_dir``) where ``reach`` (:func:`scope`) says: "all",
    "per image" (:func:`shows_support`) or "none" (plain copies). Rows from an instrument data
    bar on (``data_bar_rows[stem]``, the first bar row) are copied unchanged and left out of
    the judgement, as the segmentor leaves them out. Returns the stems whose support was
    removed."""
    import shutil
    from pathlib import Path

    if reach not in ("none", "all", "per image"):
        raise InputError(f"reach must be 'none', 'all' or 'per image', got {reach!r}")
    images_dir, masks_dir, dest = Path(images_dir), Path(masks_dir), Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    files = sorted(images_dir.glob("*.png"))
    removed = []
    for k, f in enumerate(files):
        if progress:
            progress(k, len(files), f.stem)
        raw = io.read_micrograph(f).image
        top = (data_bar_rows or {}).get(f.stem)
        top = raw.shape[0] if top is None else int(top)
        above = io.normalize(raw)[:top]  # as the pipeline's segment stage reads it
        if reach == "none" or top < 2 or not (reach == "all" or shows_support(above, "bright")):
            shutil.copyfile(f, dest / f.name)
            continue
        mask = masks_dir / f.name
        labels = io.read_label_map(mask)[:top] if mask.exists() else None
        out = io.to_uint8(io.normalize(raw))  # the bar's rows as the pipeline reads them
        out[:top] = io.to_uint8(remove_support_at_mask_scale(above, labels, radius_widths))
        io.write_image(dest / f.name, out)
        removed.append(f.stem)
    if progress:
        progress(len(files), len(files), "")
    return removed


def shows_support(image01: np.ndarray, polarity: str = "auto") -> bool:
    """Whether an image shows particles on a textured support: the classical masker picks its
    "supported" preset for it (:func:`emcopilot.masking.classical.choose_preset`)."""
    from .masking.classical import choose_preset

    return choose_preset(np.asarray(image01, dtype=np.float32), polarity)[0] == "supported"


def preset_followed(config: dict) -> str:
    """The classical preset that "auto" support removal follows for a checkpoint's ``config``
    section: its ``support_preset``, else its ``scale_preset`` (the preset its coarse masks
    were made with), else "auto"."""
    preset = config.get("support_preset") or config.get("scale_preset") or "auto"
    return preset if preset in ("auto", "isolated", "supported") else "auto"


def recorded_mode(config: dict, key: str = "support_removal") -> str:
    """The support removal (or another choice with the same reach, ``key``: e.g. the
    ``scale_split`` of :mod:`emcopilot.particle_scale`) a checkpoint's ``config`` section
    records; "off" when absent (models from before it) or not one of :data:`SUPPORT_MODES`."""
    mode = config.get(key, "off")
    return mode if mode in SUPPORT_MODES else "off"


def scope(mode: str, preset: str) -> str:
    """Which images a support removal ``mode`` ("auto", "on", "off") reaches for a model whose
    "auto" follows the classical ``preset`` (:func:`preset_followed`): "none", "all", or
    "per image" (the masker's judgement, :func:`shows_support`)."""
    if mode == "off":
        return "none"
    if mode == "on" or preset == "supported":
        return "all"
    return "none" if preset == "isolated" else "per image"


def resolve_support_mode(mode: str, what: str = "support removal") -> str:
    """``mode`` checked against :data:`SUPPORT_MODES` (``what``: the choice named in the
    error)."""
    if mode not in SUPPORT_MODES:
        raise InputError(f"{what} must be one of {', '.join(SUPPORT_MODES)}, got {mode!r}")
    return mode


def removal_kept(with_removal: np.ndarray, without: np.ndarray, coarse: np.ndarray) -> bool:
    """Whether an image's particles segmented with its support removed (``with_removal``) are
    kept over those segmented without (``without``): unless the latter match the image's coarse
    mask (``coarse``, label maps of one shape) better by object F1 at IoU 0.5
    (:func:`emcopilot.postprocess.best_matching`), i.e. ties keep the removal.

    The removal lets the segmentor find small particles on a support, and on some images it
    leaves support texture that the segmentor then takes for particles (BENCHMARKS.md, run 25:
    Cu_silica1 319 particles for 30 boxes with it, 22 without); the coarse mask, made without
    any model, is the label-free referee, as it is for the segmentor's other choices
    (:func:`emcopilot.inference.choose_min_peak`). Measured on run 26 (BENCHMARKS.md, stop
    24) it is not the default (:data:`SUPPORT_CHECK_DEFAULT`)."""
    from .postprocess import best_matching

    return best_matching([with_removal, without], coarse) == 0
