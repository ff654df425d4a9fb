"""Which way round is a micrograph: particles brighter than the background (HAADF-STEM, SEM) or
darker (bright-field TEM)?

Every later stage works on bright-particle images (``io.bright_particles``), so a wrong answer
here costs a whole image: on the 16 of 99 EMPS test images the earlier histogram-tail rule got
wrong, neither the classical masker nor the pipeline found a single particle.

The answer is the sign of a linear score of eleven cues, each of which changes sign when the
image is inverted (so ``detect_polarity(1 - x)`` is the opposite of ``detect_polarity(x)``):
which side of the intensity histogram's mode its tail reaches further (the earlier rule), the
skew of the background-flattened image, which Otsu phase covers less of the frame and of its
border, and which phase is made of compact blobs (area-weighted solidity, share in blobs,
largest connected piece) rather than a connected network: dense particle films, where the
background is only the thin network of gaps between particles, are the case a histogram alone
gets backwards. Cues are computed on a copy at most 256 px on a side (about 0.05 s per image).

``WEIGHTS`` were fitted (L2 logistic regression, no intercept, strength chosen by 5-fold
cross-validation) on the 365 EMPS *train* images whose masks say which side the particles are
on (353 / 365 right there; the histogram-tail rule alone: 304 / 365).
``python -m bench.bench_polarity --fit`` re-derives them and scores held-out sets: EMPS test
97 / 99 (was 83 / 99), S/TEM catalysts 66 / 66 (33 images and their inverses, as before).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError

__all__ = ["detect_polarity", "describe_polarity", "polarity_score", "polarity_cues",
           "weighted_score", "tail_margin", "WEIGHTS", "CUE_SIZE", "UNSURE_BELOW"]

#: longest side, in px, of the copy the cues are measured on
CUE_SIZE = 256

#: |score| below this: say the answer is unsure. On EMPS it flags 16 of 99 test images, holding
#: both of the 2 wrong answers (train: 44 of 365, holding 9 of the 12 wrong).
UNSURE_BELOW = 2.0

#: weight of each cue in :func:`polarity_score` (``python -m bench.bench_polarity --fit``)
WEIGHTS = {
    "tail": 4.547, "skew_flat": 0.724, "border": -11.918, "frac": 10.465,
    "solidity": 6.216, "giant": 1.23, "blobs": -2.43,
    "flat_solidity": 4.512, "flat_giant": -1.621, "flat_blobs": 2.473, "flat_frac": -0.657,
}


def tail_margin(a: np.ndarray) -> float:
    """How much further the 98th percentile lies above the histogram mode than the 2nd below it,
    as a fraction of the range (the background is the mode; particles make the longer tail)."""
    vmin, vmax = float(a.min()), float(a.max())
    if not vmax > vmin:
        return 0.0
    lo, hi = np.percentile(a, [2.0, 98.0])
    hist, edges = np.histogram(a, bins=64, range=(vmin, vmax))
    hist = ndi.gaussian_filter1d(hist.astype(np.float64), 1.5)
    k = int(hist.argmax())
    mode = 0.5 * (edges[k] + edges[k + 1])
    return float(((hi - mode) - (mode - lo)) / (vmax - vmin))


def _phase_shape(phase: np.ndarray) -> tuple[float, float, float]:
    """Of one binary phase: area-weighted mean solidity of its pieces (>= 8 px), the share of its
    area in its largest piece, and the share in compact blobs (solidity > 0.85, under a quarter
    of the frame)."""
    from skimage.measure import label, regionprops

    props = [r for r in regionprops(label(phase, connectivity=1)) if r.area >= 8]
    if not props:
        return 0.0, 0.0, 0.0
    total = max(int(phase.sum()), 1)
    areas = np.array([r.area for r in props], np.float64)
    solidity = np.array([r.solidity for r in props], np.float64)
    blobs = areas[(solidity > 0.85) & (areas < 0.25 * phase.size)].sum() / total
    return float(np.average(solidity, weights=areas)), float(areas.max() / total), float(blobs)


def _otsu_high(a: np.ndarray) -> np.ndarray:
    from skimage.filters import threshold_otsu

    return a > (threshold_otsu(a) if float(a.max()) > float(a.min()) else float(a.max()))


def polarity_cues(image01: np.ndarray) -> dict[str, float]:
    """The cues :func:`polarity_score` weighs (see the module docstring); each flips sign when
    the image is inverted, and all are 0 for a constant image."""
    import cv2

    a = np.asarray(image01, dtype=np.float32)
    if a.ndim != 2:
        raise InputError(f"detect_polarity needs a 2-D image, got shape {a.shape}")
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, np.median(a[finite]) if finite.any() else 0.0).astype(np.float32)
    h, w = a.shape
    s = min(1.0, CUE_SIZE / max(h, w))
    if s < 1.0:
        a = cv2.resize(a, (max(1, round(w * s)), max(1, round(h * s))),
                       interpolation=cv2.INTER_AREA)
    smooth = ndi.gaussian_filter(a, 1.0)
    if float(smooth.max()) - float(smooth.min()) < 1e-6:  # constant: no evidence either way
        return dict.fromkeys(WEIGHTS, 0.0)
    flat = smooth - ndi.gaussian_filter(smooth, max(smooth.shape) / 8)
    cues = {"tail": tail_margin(smooth)}
    z = flat - flat.mean()
    sd = float(z.std())
    cues["skew_flat"] = float((z ** 3).mean() / sd ** 3) if sd > 1e-9 else 0.0
    high = _otsu_high(smooth)
    border = np.concatenate([high[0], high[-1], high[:, 0], high[:, -1]])
    cues["border"] = float(border.mean() - 0.5)
    cues["frac"] = float(high.mean() - 0.5)
    (s1, g1, b1), (s0, g0, b0) = _phase_shape(high), _phase_shape(~high)
    cues.update(solidity=s1 - s0, giant=g1 - g0, blobs=b1 - b0)
    high = _otsu_high(flat)
    (s1, g1, b1), (s0, g0, b0) = _phase_shape(high), _phase_shape(~high)
    cues.update(flat_solidity=s1 - s0, flat_giant=g1 - g0, flat_blobs=b1 - b0,
                flat_frac=float(high.mean() - 0.5))
    return cues


def weighted_score(cues: dict[str, float], weights: dict[str, float] = WEIGHTS) -> float:
    """The score of measured cues (:func:`polarity_cues`) under ``weights``."""
    return float(sum(weights[k] * cues[k] for k in weights))


def polarity_score(image01: np.ndarray) -> float:
    """Positive: particles brighter than the background; negative: darker; 0: no evidence
    (a constant image). The magnitude is the logistic-regression margin (see
    :data:`UNSURE_BELOW`)."""
    return weighted_score(polarity_cues(image01))


def detect_polarity(image01: np.ndarray) -> str:
    """"bright" if particles are brighter than the background (HAADF, SEM), "dark" otherwise
    (bright-field TEM); a constant image gives "bright"."""
    return "bright" if polarity_score(image01) >= 0 else "dark"


def describe_polarity(image01: np.ndarray) -> dict:
    """``{"polarity": "bright"|"dark", "score": float, "unsure": bool}`` for reports and the
    UI: ``unsure`` when the score is within :data:`UNSURE_BELOW` of 0 (worth a look by eye)."""
    score = polarity_score(image01)
    return {"polarity": "bright" if score >= 0 else "dark", "score": round(score, 3),
            "unsure": bool(abs(score) < UNSURE_BELOW)}
