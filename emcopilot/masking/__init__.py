"""Stage 1: coarse particle masks (SAM or classical) followed by the Algorithm 1 filters.

``coarse_mask(image01, method="auto")`` uses SAM when its weights are on this machine and the
weight-free classical masker otherwise. Nothing heavy (torch, segment-anything) is imported until
SAM is actually used, so ``import emcopilot.masking`` stays fast.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from emcopilot.errors import InputError
from emcopilot.masking.filters import filter_regions, resolve_polarity

__all__ = ["METHODS", "DEFAULT_FILTERS", "resolve_method", "coarse_mask", "filter_regions"]

METHODS = ("auto", "sam", "classical")

#: Algorithm 1 defaults (DESIGN.md): mean intensity below 60 of 255 -> dropped; regions within
#: 5 px of the border -> dropped; no area limits; no faint-particle test (``min_snr`` 0: an
#: option, see ``filter_regions``); and, not in the paper, regions on annotation text and scale
#: bars drawn on the image dropped (``annotations``, :mod:`emcopilot.annotations`).
DEFAULT_FILTERS: dict[str, Any] = {
    "intensity_threshold": 60,
    "edge_margin": 5,
    "min_area": 0,
    "max_area": None,
    "min_snr": 0,
    "annotations": True,
}


def resolve_method(method: str = "auto", model_type: str = "vit_b") -> str:
    """``"sam"`` or ``"classical"``. ``"auto"`` is ``"sam"`` only when the SAM ``model_type``
    weights (registry name ``sam_<model_type>``) are already on this machine."""
    if method not in METHODS:
        raise InputError(f"masking method must be one of {', '.join(METHODS)}, got {method!r}")
    if method != "auto":
        return method
    try:
        from emcopilot.weights import weights_available
    except ImportError:
        return "classical"
    try:
        return "sam" if weights_available(f"sam_{model_type}") else "classical"
    except Exception:  # a broken registry or cache must not stop the weight-free path
        return "classical"


def coarse_mask(
    image01: np.ndarray,
    *,
    method: str = "auto",
    polarity: str = "auto",
    filters: Mapping[str, Any] | None = None,
    sam_options: Mapping[str, Any] | None = None,
    classical_options: Mapping[str, Any] | None = None,
    data_bar: bool = True,
) -> np.ndarray:
    """Coarse particle label map of one micrograph: masker, then ``filter_regions``.

    Args:
        image01: 2-D float32 image in [0, 1] (``io.normalize``).
        method: ``"auto"``, ``"sam"`` or ``"classical"`` (see :func:`resolve_method`).
        polarity: ``"bright"``, ``"dark"`` or ``"auto"`` (resolved once, used by both steps).
        filters: overrides of :data:`DEFAULT_FILTERS` (keyword arguments of ``filter_regions``;
            ``None`` = the defaults). ``{"intensity_threshold": 0, "edge_margin": 0,
            "annotations": False}`` turns the filters off.
        sam_options: keyword arguments of ``SamMasker`` (``model_type`` included).
        classical_options: keyword arguments of ``ClassicalMasker``; ``"preset"`` picks one of
            ``classical.PRESETS`` ("isolated": free particles, "supported": catalysts) or
            ``"auto"`` (default: ``classical.choose_preset`` decides per image).
        data_bar: True (default): when the image has an instrument data bar at the bottom
            (:func:`emcopilot.data_bar.find_data_bar`), mask only the rows above it (the bar's
            text is not particles; the edge filter then drops particles cut by the bar).

    Returns:
        ``numpy.int32`` label map, 0 = background, 1..N = particles.
    """
    image01 = np.asarray(image01, np.float32)
    if image01.ndim != 2:
        raise InputError(f"expected a 2-D greyscale image, got shape {image01.shape}")
    # polarity from the whole frame, as detect_polarity's weights were fitted (BENCHMARKS.md:
    # measured above a data bar, it got one more EMPS test image wrong)
    polarity = resolve_polarity(image01, polarity)
    if data_bar:
        from emcopilot.data_bar import find_data_bar, pad_below

        top = find_data_bar(image01)
        if top is not None:
            labels = coarse_mask(image01[:top], method=method, polarity=polarity,
                                 filters=filters, sam_options=sam_options,
                                 classical_options=classical_options, data_bar=False)
            return pad_below(top, image01.shape[0], labels)[0]
    filt = dict(DEFAULT_FILTERS)
    if filters:
        unknown = set(filters) - set(DEFAULT_FILTERS)
        if unknown:
            raise InputError(f"unknown filter option(s) {', '.join(sorted(unknown))}; "
                             f"use {', '.join(DEFAULT_FILTERS)}")
        filt.update(filters)
    sam_opts = dict(sam_options or {})
    model_type = sam_opts.pop("model_type", "vit_b")
    if resolve_method(method, model_type) == "sam":
        from emcopilot.masking.sam import SamMasker

        labels = SamMasker(model_type=model_type, **sam_opts)(image01, polarity=polarity)
    else:
        from emcopilot.masking.classical import ClassicalMasker

        from emcopilot.masking.classical import choose_preset

        opts = dict(classical_options or {})
        preset = opts.pop("preset", "auto")
        labels = None
        if preset == "auto":
            preset, labels = choose_preset(image01, polarity)
            if opts:  # overrides given: recompute with them on the chosen preset
                labels = None
        if labels is None:
            labels = ClassicalMasker.from_preset(preset, **opts)(image01, polarity=polarity)
    return filter_regions(labels, image01, polarity=polarity, **filt)
