"""Segmentor output -> particles: threshold the probability map and split touching particles.

``prob_to_instances`` is the one place that turns a particle-probability map into an instance
label map (used by :class:`emcopilot.inference.Segmentor`, the CLI, the pipeline and the app).
``calibrate_threshold`` finds the probability threshold with the best Dice on pairs with known
masks: segmentor training records it for its validation pairs (synthetic in the label-free
pipeline). Measured on EMPS, a threshold calibrated on synthetic pairs did not transfer to the
real images (0.65 there, 0.5 better on the real ones), so inference uses it only when asked.
``select_min_peak`` picks the particle core probability (``prob_to_instances``'s ``min_peak``)
whose particles best match reference masks; against the coarse masks it needs no label, and the
pipeline records its choice in the segmentor checkpoint. ``grow_instances`` (``prob_to_instances``'s
``grow_to``) lets each particle reach out to a lower probability level without making new ones:
the segmentor is under-confident on real images, so particles cut at 0.5 come out too small.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError
from .instances import binary_to_instances, remove_small_instances

__all__ = ["prob_to_instances", "calibrate_threshold", "otsu_threshold", "config_threshold",
           "config_grow_to",
           "select_min_peak", "keep_confident", "grow_instances", "select_growth", "check_grow_to",
           "add_coarse_particles", "particle_contrast", "expand_labels_near", "best_matching",
           "COARSE_MIN_SNR_DEFAULT",
           "noise_sigma", "particle_snr", "faint_particles", "drop_faint_particles",
           "check_min_snr",
           "recorded_min_snr",
           "MIN_SNR_DEFAULT",
           "THRESHOLD_GRID", "MIN_PEAK_GRID", "GROW_OPTIONS"]

#: what :func:`select_min_peak` / :func:`select_growth` do to the ``k``-th image's particles
#: before scoring them: ``finish(k, labels) -> labels``
Finish = Callable[[int, np.ndarray], np.ndarray]
#: thresholds ``calibrate_threshold`` tries
THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.1, 0.91, 0.05))
#: particle core probabilities ``select_min_peak`` tries (None: every particle)
MIN_PEAK_GRID = (None, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
#: particle growth levels ``select_growth`` tries (None: no growth)
GROW_OPTIONS = (None, "otsu")
#: the pipeline's default :func:`drop_faint_particles` level (``min_snr``): the one with the
#: lowest mean count error on the S/TEM catalysts (each image left out in turn, the others pick
#: 25 or 30; BENCHMARKS.md, "Stop 28: faint particles"); it changes next to nothing on EMPS
MIN_SNR_DEFAULT = 25.0
#: the pipeline's default level for the same test on its coarse masks (``coarse_min_snr``), so
#: the priors, the generator and the segmentor learn without the faint blobs: with the scale
#: split it gave the best catalyst run and, on EMPS, object F1 0.553 -> 0.575 and the count
#: error down, pixel Dice 0.753 -> 0.740 (BENCHMARKS.md, stop 30)
COARSE_MIN_SNR_DEFAULT = 25.0


def config_threshold(checkpoint_config: dict, key: str = "calibrated_threshold") -> float | None:
    """A probability threshold recorded in a checkpoint's config.json (its ``config`` section):
    ``"threshold"`` (the default used at inference) or ``"calibrated_threshold"``; None when
    absent or not in (0, 1)."""
    t = (checkpoint_config or {}).get("config", {}).get(key)
    try:
        t = float(t)
    except (TypeError, ValueError):
        return None
    return t if 0.0 < t < 1.0 else None


def config_grow_to(checkpoint_config: dict) -> float | str | None:
    """The particle growth recorded in a checkpoint's config.json (its ``config`` section's
    ``grow_to``: ``"otsu"`` or a probability); None when absent or not a valid level."""
    g = (checkpoint_config or {}).get("config", {}).get("grow_to")
    try:
        return check_grow_to(g)
    except (InputError, TypeError, ValueError):
        return None


def otsu_threshold(prob: np.ndarray, lo: float = 0.1, hi: float = 0.9) -> float:
    """Otsu's threshold of a probability map, clipped to [lo, hi] (a map with no particles would
    otherwise put the threshold inside the background noise)."""
    from skimage.filters import threshold_otsu

    p = np.asarray(prob, dtype=np.float32)
    if p.size == 0 or float(p.max()) - float(p.min()) < 1e-6:
        return 0.5
    return float(np.clip(threshold_otsu(p), lo, hi))


def prob_to_instances(prob: np.ndarray, threshold: float | str = 0.5, *, min_distance: int = 3,
                      h: float = 2.0, min_area: int = 10, surface: str = "prob",
                      fill_holes: bool = False, opening: int = 0,
                      min_peak: float | None = None,
                      grow_to: float | str | None = None) -> np.ndarray:
    """Instance label map (int32, 0 = background) from a particle-probability map in [0, 1].

    Args:
        prob: 2-D float map.
        threshold: pixels with probability > threshold are particles; ``"otsu"`` picks it per
            image (:func:`otsu_threshold`).
        min_distance, h, min_area: splitting of touching particles, see
            :func:`emcopilot.instances.binary_to_instances` (``min_distance`` 0: no splitting).
        surface: ``"prob"`` floods the inverted probability (boundaries follow the network's
            valleys), ``"distance"`` the inverted distance transform.
        fill_holes: fill holes inside particles (hollow shells, specular centres).
        opening: radius in px of a binary opening before labelling (removes 1-2 px bridges and
            speckle); 0 = none.
        min_peak: keep only particles whose highest probability exceeds this (hysteresis: a
            particle needs a confident core; its extent still follows ``threshold``). None = all.
        grow_to: grow every (kept) particle out to this lower probability level, or ``"otsu"``
            (the image's :func:`otsu_threshold`), with :func:`grow_instances`; None: no growth.
    """
    grow_to = check_grow_to(grow_to)
    p = np.asarray(prob, dtype=np.float32)
    if p.ndim != 2:
        raise InputError(f"probability map must be 2-D, got shape {p.shape}")
    p = np.nan_to_num(p, nan=0.0)
    if isinstance(threshold, str):
        if threshold != "otsu":
            raise InputError(f"threshold must be a number or 'otsu', got {threshold!r}")
        thr = otsu_threshold(p)
    else:
        thr = float(threshold)
    binary = p > thr
    if opening > 0:
        r = int(opening)
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        binary = ndi.binary_opening(binary, structure=(yy * yy + xx * xx) <= r * r)
    if fill_holes:
        binary = ndi.binary_fill_holes(binary)
    if surface not in ("prob", "distance"):
        raise InputError(f"surface must be 'prob' or 'distance', got {surface!r}")
    labels = binary_to_instances(binary, min_distance=int(min_distance), h=float(h),
                                 min_area=int(min_area), prob=p if surface == "prob" else None)
    if min_peak is not None:
        labels = remove_small_instances(keep_confident(labels, _peaks(p, labels), min_peak), 1)
    if grow_to is not None:
        labels = grow_instances(p, labels, grow_to)
    return labels.astype(np.int32, copy=False)


def check_grow_to(grow_to: float | str | None) -> float | str | None:
    """``grow_to`` validated: None, ``"otsu"`` or a probability in (0, 1) (InputError else)."""
    if grow_to is None or grow_to == "otsu":
        return grow_to
    if isinstance(grow_to, str):
        raise InputError(f"grow_to must be a probability in (0, 1), 'otsu' or None, got "
                         f"{grow_to!r}")
    level = float(grow_to)
    if not 0.0 < level < 1.0:
        raise InputError(f"grow_to must be a probability in (0, 1), got {grow_to}")
    return level


def grow_instances(prob: np.ndarray, labels: np.ndarray, level: float | str = "otsu"
                   ) -> np.ndarray:
    """Particles grown into the pixels above a lower probability level, no new particle made.

    Each particle of ``labels`` is flooded outwards over the inverted probability (a seeded
    watershed, :func:`skimage.segmentation.watershed`) through the connected pixels with
    probability > ``level`` (holes filled); neighbours meet where the probability is lowest, and
    regions above ``level`` that touch no particle stay background, so the particles and their
    count are those of ``labels``, only their extent changes. ``level``: a probability, or
    ``"otsu"`` for the image's :func:`otsu_threshold`. A level above the one that made the
    particles changes nothing. Returns an int32 label map with the ids of ``labels``.
    """
    from skimage.segmentation import watershed

    lab = np.asarray(labels)
    p = np.nan_to_num(np.asarray(prob, dtype=np.float32), nan=0.0)
    if p.shape != lab.shape:
        raise InputError(f"probability map {p.shape} and labels {lab.shape} differ in shape")
    level = check_grow_to(level)
    if level is None or not lab.any():
        return lab.astype(np.int32, copy=True)
    lv = otsu_threshold(p) if level == "otsu" else float(level)
    region = ndi.binary_fill_holes((p > lv) | (lab > 0))
    return watershed(-p, markers=lab.astype(np.int32), mask=region).astype(np.int32, copy=False)


def _peaks(prob: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Highest probability of each particle 1..N (index 0: background, 0)."""
    n = int(labels.max())
    peaks = np.zeros(n + 1, np.float32)
    if n:
        peaks[1:] = ndi.maximum(prob, labels, np.arange(1, n + 1))
    return peaks


def keep_confident(labels: np.ndarray, peaks: np.ndarray, min_peak: float) -> np.ndarray:
    """``labels`` without the particles whose peak probability (``peaks[id]``, see
    :func:`prob_to_instances`'s ``min_peak``) is not above ``min_peak``; ids are not renumbered."""
    keep = peaks > float(min_peak)
    keep[0] = False
    return np.where(keep[labels], labels, 0)


def calibrate_threshold(probs: Iterable[np.ndarray], truths: Iterable[np.ndarray],
                        grid: Iterable[float] = THRESHOLD_GRID) -> dict:
    """The threshold with the best mean per-image Dice of ``prob > t`` against ``truth > 0``.

    Returns ``{"threshold": t, "dice": best mean Dice, "dice_at_0.5": ..., "grid": {t: dice}}``.
    Ties go to the threshold closest to 0.5.
    """
    grid = np.asarray(sorted(float(t) for t in grid), dtype=np.float32)
    sums = np.zeros(len(grid), np.float64)
    n = 0
    for prob, truth in zip(probs, truths):
        p = np.asarray(prob, dtype=np.float32).ravel()
        t = np.asarray(truth).ravel() > 0
        n_true = int(t.sum())
        # counts of predicted and true-positive pixels above each threshold, via sorting
        order = np.sort(p)
        pos = np.sort(p[t])
        n_pred = p.size - np.searchsorted(order, grid, side="right")
        n_tp = pos.size - np.searchsorted(pos, grid, side="right")
        den = n_pred + n_true
        sums += np.where(den > 0, 2.0 * n_tp / np.maximum(den, 1), 1.0)
        n += 1
    if n == 0:
        return {"threshold": 0.5, "dice": None, "dice_at_0.5": None, "grid": {}}
    dice = sums / n
    best = float(dice.max())
    cands = np.flatnonzero(dice >= best - 1e-9)
    k = int(cands[np.argmin(np.abs(grid[cands] - 0.5))])
    at05 = np.flatnonzero(np.isclose(grid, 0.5))
    return {"threshold": round(float(grid[k]), 2), "dice": best,
            "dice_at_0.5": float(dice[at05[0]]) if at05.size else None,
            "grid": {f"{g:.2f}": round(float(d), 4) for g, d in zip(grid, dice)}}


def select_min_peak(probs: Iterable[np.ndarray], references: Iterable[np.ndarray], *,
                    threshold: float = 0.5, grid: Iterable[float | None] = MIN_PEAK_GRID,
                    fill_holes: bool = False, finish: Finish | None = None) -> dict:
    """The ``min_peak`` of :func:`prob_to_instances` whose particles best match reference label
    maps (object F1 at IoU 0.5, pooled over images; ties go to the smaller value).
    ``threshold`` and ``fill_holes`` as the particles will be made with; ``finish(k, labels)``,
    when given, is applied to the ``k``-th image's particles before they are scored (what the
    output does to them after, e.g. dropping faint particles), so the value is chosen for the
    particles that are kept.

    With the coarse masks as references this needs no manual label: measured on EMPS, the value
    with the best F1 against the coarse masks was, on each of four segmentors, the one with the
    best F1 against the manual labels among the values tried (BENCHMARKS.md, runs 6-8). Returns ``{"min_peak": value or None,
    "f1": {str(value): F1}}``.
    """
    grid = list(grid)

    def variants(p: np.ndarray):
        base = prob_to_instances(p, threshold, fill_holes=fill_holes)  # each value only filters
        peaks = _peaks(p, base)
        return {str(g): base if g is None else keep_confident(base, peaks, g) for g in grid}

    f1 = _pooled_f1(probs, references, [str(g) for g in grid], variants, finish)
    best = max(grid, key=lambda g: (round(f1[str(g)], 12), -(g or 0.0)))
    return {"min_peak": best, "f1": {k: round(v, 4) for k, v in f1.items()}}


def select_growth(probs: Iterable[np.ndarray], references: Iterable[np.ndarray], *,
                  threshold: float = 0.5, fill_holes: bool = False,
                  min_peak: float | None = None,
                  options: Iterable[float | str | None] = GROW_OPTIONS,
                  finish: Finish | None = None) -> dict:
    """The ``grow_to`` of :func:`prob_to_instances` (None = no growth) whose particles best
    match reference label maps (object F1 at IoU 0.5, pooled; ties go to the earlier option,
    so to no growth), the particles made with ``threshold``, ``fill_holes`` and ``min_peak``
    and scored after ``finish`` as :func:`select_min_peak` does.
    Returns ``{"grow_to": option, "f1": {str(option): F1}}``."""
    options = [check_grow_to(g) for g in options]
    if not options:
        raise InputError("select_growth needs at least one option")

    def variants(p: np.ndarray):
        base = prob_to_instances(p, threshold, fill_holes=fill_holes, min_peak=min_peak)
        return {str(g): base if g is None else grow_instances(p, base, g) for g in options}

    f1 = _pooled_f1(probs, references, [str(g) for g in options], variants, finish)
    best = max(options, key=lambda g: (round(f1[str(g)], 12), -options.index(g)))
    return {"grow_to": best, "f1": {k: round(v, 4) for k, v in f1.items()}}


def _pooled_f1(probs: Iterable[np.ndarray], references: Iterable[np.ndarray], names: list[str],
               variants, finish: Finish | None = None) -> dict:
    """Object F1 (IoU 0.5, matches pooled over images) of each particle map that
    ``variants(prob) -> {name: labels}`` makes (then ``finish(k, labels)`` for the ``k``-th
    image, when given), against the references; ``{name: F1}`` (1.0 where neither side has a
    particle, e.g. no images)."""
    from .metrics import match_instances

    counts: dict[str, list[int]] = {name: [0, 0, 0] for name in names}
    for k, (prob, ref) in enumerate(zip(probs, references)):
        for name, labels in variants(np.asarray(prob, dtype=np.float32)).items():
            m = match_instances(labels if finish is None else finish(k, labels), ref)
            c = counts[name]
            c[0] += len(m.pairs)
            c[1] += len(m.pred_ids)
            c[2] += len(m.true_ids)
    return {k: (2 * tp / (n_p + n_t) if n_p + n_t else 1.0) for k, (tp, n_p, n_t) in counts.items()}


def best_matching(candidates: Sequence[np.ndarray], reference: np.ndarray) -> int:
    """Index of the label map among ``candidates`` whose particles match ``reference`` (e.g.
    the image's coarse mask) best by object F1 at IoU 0.5 (one-to-one,
    :func:`emcopilot.metrics.object_scores`); ties go to the earliest. The label-free referee
    of the segmentor's per-image choices (:meth:`emcopilot.inference.Segmentor.segment_detail`'s
    ``scale_choice``, :func:`emcopilot.support.removal_kept`).

    >>> ref = np.zeros((8, 8), np.int32); ref[1:4, 1:4] = 1; ref[5:8, 5:8] = 2
    >>> one = np.where(ref == 1, 1, 0)
    >>> best_matching([one, ref], ref), best_matching([ref, ref], ref)
    (1, 0)
    """
    from .metrics import object_scores

    if not len(candidates):
        raise InputError("best_matching needs at least one candidate")
    scores = [round(float(object_scores(c, reference)["f1"]), 12) for c in candidates]
    return int(np.argmax(scores))  # the first of the highest


def expand_labels_near(labels: np.ndarray, distance: int) -> np.ndarray:
    """:func:`skimage.segmentation.expand_labels` of a 2-D label map, the same pixels with the
    same labels, computed only in windows around the particles: each group of particles whose
    bounding boxes, widened by ``distance``, touch is expanded in its group's bounding box (a
    pixel's nearest particles within ``distance`` are all in it), and background outside every
    widened box is never visited. The faint-particle filter's rings (:func:`particle_contrast`)
    are made this way, once per image and per core probability tried: on the 2048 px catalyst
    frames, a few dozen particles each, the whole filter call takes 0.6 of the time it took with
    the whole frame expanded (BENCHMARKS.md, stop 32).

    >>> lab = np.zeros((7, 9), np.int32); lab[3, 2] = 1; lab[3, 6] = 2
    >>> expand_labels_near(lab, 1)[3]
    array([0, 1, 1, 1, 0, 2, 2, 2, 0], dtype=int32)
    """
    from skimage.segmentation import expand_labels

    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise InputError(f"expand_labels_near needs a 2-D label map, got shape {lab.shape}")
    d = int(distance)
    if d <= 0 or not lab.any():
        return lab.copy()
    # each particle's bounding box widened by d holds every pixel within d of it
    near = np.zeros(lab.shape, bool)
    for box in ndi.find_objects(lab.astype(np.intp, copy=False)):
        if box is not None:
            near[tuple(slice(max(b.start - d, 0), b.stop + d) for b in box)] = True
    groups, _ = ndi.label(near, structure=np.ones((3, 3), bool))
    out = np.zeros_like(lab)
    for g, box in enumerate(ndi.find_objects(groups), start=1):
        if box is None:
            continue
        mine = groups[box] == g
        out[box][mine] = expand_labels(lab[box], d)[mine]
    return out


def particle_contrast(image01: np.ndarray, labels: np.ndarray, *, ring_px: int = 3,
                      exclude: np.ndarray | None = None) -> np.ndarray:
    """Per particle of ``labels`` (index = id, index 0 unused): its mean intensity minus that of
    the ring of background pixels within ``ring_px`` of it (the nearest particle's ring:
    :func:`skimage.segmentation.expand_labels`), pixels of ``exclude`` (e.g. other particles)
    left out of the rings; NaN where a particle has no ring. Positive: brighter than its
    surroundings (bright-particle convention).

    >>> img = np.zeros((9, 9), np.float32); img[3:6, 3:6] = 0.8
    >>> lab = np.zeros((9, 9), np.int32); lab[3:6, 3:6] = 1
    >>> round(float(particle_contrast(img, lab)[1]), 2)
    0.8
    """
    img = np.asarray(image01, dtype=np.float64)
    lab = np.asarray(labels).astype(np.int64, copy=False)
    if img.shape != lab.shape:
        raise InputError(f"image {img.shape} and labels {lab.shape} differ in shape")
    n = int(lab.max(initial=0))
    img = np.nan_to_num(img, nan=0.0)
    area = np.bincount(lab.ravel(), minlength=n + 1)
    inside = np.bincount(lab.ravel(), weights=img.ravel(), minlength=n + 1) / np.maximum(area, 1)
    grown = expand_labels_near(lab, int(ring_px))
    ring = (grown > 0) & (lab == 0)
    if exclude is not None:
        ring &= ~np.asarray(exclude, bool)
    ring_n = np.bincount(grown[ring], minlength=n + 1)
    ring_sum = np.bincount(grown[ring], weights=img[ring], minlength=n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = inside - ring_sum / ring_n
    out[ring_n == 0] = np.nan
    out[0] = np.nan
    return out


def add_coarse_particles(labels: np.ndarray, coarse_labels: np.ndarray,
                         prob: np.ndarray | None = None, *, image01: np.ndarray | None = None,
                         covered_max: float = 0.1, min_area_ratio: float = 0.5,
                         contrast_quantile: float = 0.1, confirmed_min: int = 3,
                         blind_map_says: bool = False) -> np.ndarray:
    """``labels`` plus the coarse particles the segmentor missed.

    A particle of ``coarse_labels`` (e.g. the classical or SAM coarse mask of the same image) is
    a candidate when at most ``covered_max`` of its pixels belong to a particle of ``labels``
    and its area is at least ``min_area_ratio`` times the median area of that image's coarse
    particles (fragments of textured background are small). A candidate is added when one of
    the given sources says it is a particle (all candidates when neither is given):

    - ``prob``, the segmentor's probability map: its mean there is at least the image's
      :func:`otsu_threshold` (the segmentor saw a faint particle, not background it rejected).
      Where ``labels`` has no particle at all the map is blind to the image and says nothing
      (unless ``blind_map_says``, the rule before stop 35): a segmentor seed can find nothing
      on a whole micrograph whose particles another seed finds (its probability inside the
      coarse particles 0.01-0.08 where the other's is 0.3-0.9, BENCHMARKS.md, "Stop 35"), and
      the Otsu level of such a map sits in its noise;
    - ``image01`` (bright-particle convention, the image the coarse mask was made of): it
      stands out from its surroundings (:func:`particle_contrast`, other particles left out of
      the ring) at least as much as the ``contrast_quantile`` quantile of the coarse particles
      the segmentor found too (covered at least half); with fewer than ``confirmed_min`` of
      those the image says nothing.

    It takes its uncovered pixels and a new id after those of ``labels``; particles of
    ``labels`` are never changed. On EMPS the segmentor trained on synthetic pairs misses whole
    dense films of particles (its probability there stays under 0.5 but above the
    background's) that the coarse masker finds (BENCHMARKS.md, "coarse particles the segmentor
    missed"). The pipeline, ``emcopilot segment`` and the app pass ``prob`` only: the image's
    say-so raised box F1 and lowered the count error on the S/TEM catalysts but raised the
    count error on EMPS (BENCHMARKS.md, "Run 19"). Returns an int32 label map.

    >>> seg = np.zeros((20, 20), np.int32); seg[2:8, 2:8] = 1
    >>> coarse = np.zeros((20, 20), np.int32); coarse[2:8, 2:8] = 1; coarse[12:18, 12:18] = 2
    >>> out = add_coarse_particles(seg, coarse)
    >>> int(out.max()), int((out == 2).sum())
    (2, 36)
    """
    lab = np.asarray(labels)
    co = np.asarray(coarse_labels)
    if lab.shape != co.shape:
        raise InputError(f"coarse labels {co.shape} and labels {lab.shape} differ in shape")
    if prob is not None and np.shape(prob) != lab.shape:
        raise InputError(f"probability map {np.shape(prob)} and labels {lab.shape} differ in "
                         f"shape")
    if not 0.0 <= float(covered_max) < 1.0:
        raise InputError(f"covered_max must be in [0, 1), got {covered_max}")
    if float(min_area_ratio) < 0.0:
        raise InputError(f"min_area_ratio must be >= 0, got {min_area_ratio}")
    if not 0.0 <= float(contrast_quantile) <= 1.0:
        raise InputError(f"contrast_quantile must be in [0, 1], got {contrast_quantile}")
    out = lab.astype(np.int32, copy=True)
    co = co.astype(np.int64, copy=False)
    if co.min(initial=0) < 0:
        raise InputError("coarse labels must be non-negative particle ids")
    n = int(co.max(initial=0))
    if n == 0:
        return out
    flat = co.ravel()
    area = np.bincount(flat, minlength=n + 1)
    covered = np.bincount(flat, weights=(lab > 0).ravel(), minlength=n + 1)
    present = area[1:] > 0
    median = float(np.median(area[1:][present])) if present.any() else 0.0
    add = np.zeros(n + 1, bool)
    add[1:] = (present & (covered[1:] <= covered_max * area[1:])
               & (area[1:] >= min_area_ratio * median))
    evidence = []  # per coarse particle: does this source say it is a particle? (any will do)
    if prob is not None and add.any() and (blind_map_says or lab.max(initial=0) > 0):
        p = np.nan_to_num(np.asarray(prob, dtype=np.float32), nan=0.0)
        mean = np.bincount(flat, weights=p.ravel(), minlength=n + 1) / np.maximum(area, 1)
        evidence.append(mean >= otsu_threshold(p))
    if image01 is not None and add.any():
        if np.shape(image01) != lab.shape:
            raise InputError(f"image {np.shape(image01)} and labels {lab.shape} differ in shape")
        contrast = particle_contrast(image01, co, exclude=lab > 0)
        confirmed = np.zeros(n + 1, bool)  # coarse particles the segmentor found too
        confirmed[1:] = present & (covered[1:] >= 0.5 * area[1:])
        ref = contrast[confirmed]
        ref = ref[np.isfinite(ref)]
        if ref.size >= max(int(confirmed_min), 1):
            level = float(np.quantile(ref, float(contrast_quantile)))
            evidence.append(np.nan_to_num(contrast, nan=-np.inf) >= level)
    if evidence:
        add &= np.logical_or.reduce(evidence)
    if not add.any():
        return out
    new_id = np.zeros(n + 1, np.int64)
    new_id[add] = int(out.max(initial=0)) + np.arange(1, int(add.sum()) + 1)
    take = add[co] & (out == 0)
    out[take] = new_id[co[take]]
    return out


def noise_sigma(image01: np.ndarray) -> float:
    """Standard deviation of an image's pixel noise, by Immerkaer's method (J. Immerkaer, "Fast
    noise variance estimation", CVIU 64, 1996): the mean absolute response to the 3 x 3 mask
    that cancels any plane and each 1-D second derivative, times sqrt(pi/2) / 6. NaNs count
    as 0. scikit-image's ``estimate_sigma`` (wavelet, needs PyWavelets) was measured too and
    separated the catalysts' support texture from particles less well (BENCHMARKS.md).

    >>> rng = np.random.default_rng(0)
    >>> round(noise_sigma(0.5 + 0.05 * rng.standard_normal((256, 256))), 2)
    0.05
    """
    img = np.nan_to_num(np.asarray(image01, dtype=np.float64), nan=0.0)
    if img.ndim != 2:
        raise InputError(f"noise_sigma needs a 2-D image, got shape {img.shape}")
    if min(img.shape) < 3:
        return 0.0
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)
    response = ndi.convolve(img, mask)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2.0) * np.abs(response).mean() / 6.0)


def particle_snr(image01: np.ndarray, labels: np.ndarray, *, ring_px: int = 3,
                 sigma: float | None = None) -> np.ndarray:
    """Per particle of ``labels`` (index = id, index 0 unused): how far its mean intensity
    stands above its surroundings in units of that mean's noise, ``contrast * sqrt(area) /
    sigma`` (:func:`particle_contrast` with other particles left out of the ring,
    :func:`noise_sigma`) -- the signal-to-noise ratio of the Rose criterion. NaN where a
    particle has no ring; +inf for a contrast above 0 on a noise-free image. ``sigma``: the
    image's :func:`noise_sigma` when already known (it does not depend on the particles, so a
    caller trying several label maps of one image measures it once).

    >>> rng = np.random.default_rng(0)
    >>> img = 0.3 + 0.05 * rng.standard_normal((40, 40)); img[5:15, 5:15] += 0.5
    >>> lab = np.zeros((40, 40), np.int32); lab[5:15, 5:15] = 1
    >>> round(float(particle_snr(img, lab)[1]))  # 0.5 * sqrt(100) / 0.05, edges add to sigma
    98
    """
    lab = np.asarray(labels).astype(np.int64, copy=False)
    contrast = particle_contrast(image01, lab, ring_px=ring_px, exclude=lab > 0)
    area = np.bincount(lab.ravel(), minlength=len(contrast)).astype(np.float64)
    sigma = noise_sigma(image01) if sigma is None else float(sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        return contrast * np.sqrt(area) / sigma


def check_min_snr(min_snr: float | None) -> float | None:
    """``min_snr`` as :func:`drop_faint_particles` takes it: None (or 0: keep every particle)
    or a finite number > 0; anything else raises InputError."""
    if min_snr is None:
        return None
    try:
        value = float(min_snr)
    except (TypeError, ValueError):
        raise InputError(f"min_snr must be a number >= 0, got {min_snr!r}") from None
    if not np.isfinite(value) or value < 0:
        raise InputError(f"min_snr must be a finite number >= 0, got {min_snr!r}")
    return value or None


def recorded_min_snr(config: dict) -> float | None:
    """The ``min_snr`` a checkpoint's config records (None when absent or not a valid level: a
    bad record keeps every particle rather than stopping segmentation)."""
    try:
        return check_min_snr(config.get("min_snr"))
    except InputError:
        return None


def faint_particles(image01: np.ndarray, labels: np.ndarray, min_snr: float | None, *,
                    ring_px: int = 3, sigma: float | None = None) -> np.ndarray:
    """Per particle id of ``labels`` (index 0: background, False): whether its
    :func:`particle_snr` is at most ``min_snr`` (None or 0: none is). A particle with no
    background ring around it (NaN) is not faint: there is nothing to compare it with."""
    level = check_min_snr(min_snr)
    n = int(np.asarray(labels).max(initial=0))
    faint = np.zeros(n + 1, bool)
    if level is not None and n:
        snr = particle_snr(image01, labels, ring_px=ring_px, sigma=sigma)
        faint[1:] = snr[1:n + 1] <= level  # NaN compares False
    return faint


def drop_faint_particles(image01: np.ndarray, labels: np.ndarray, min_snr: float | None,
                         *, ring_px: int = 3, sigma: float | None = None
                         ) -> tuple[np.ndarray, int]:
    """``labels`` without the particles whose :func:`particle_snr` is at most ``min_snr``
    (None or 0: none dropped), renumbered 1..n, and how many were dropped. A particle with no
    background ring around it is kept (nothing to compare it with). ``sigma``: as
    :func:`particle_snr`.

    ``image01``: the image the particles were found in, particles bright. On noisy supports
    (the silica and alumina images of the S/TEM catalysts) the segmentor takes blobs of support
    texture for particles; their contrast is a few times the pixel noise where real particles'
    is tens of times (BENCHMARKS.md, "Stop 28: faint particles"). Returns an int32 label map.

    >>> rng = np.random.default_rng(0)
    >>> img = 0.3 + 0.05 * rng.standard_normal((40, 40))
    >>> img[5:15, 5:15] += 0.5                     # a particle
    >>> lab = np.zeros((40, 40), np.int32); lab[5:15, 5:15] = 1
    >>> lab[25:30, 25:30] = 2                      # noise taken for a particle
    >>> out, dropped = drop_faint_particles(img, lab, 30)
    >>> int(out.max()), dropped, bool((out[5:15, 5:15] == 1).all())
    (1, 1, True)
    """
    from skimage.segmentation import relabel_sequential

    lab = np.asarray(labels)
    if np.shape(image01) != lab.shape:
        raise InputError(f"image {np.shape(image01)} and labels {lab.shape} differ in shape")
    out = lab.astype(np.int32, copy=True)
    faint = faint_particles(image01, out, min_snr, ring_px=ring_px, sigma=sigma)
    present = np.bincount(out.ravel(), minlength=len(faint)) > 0
    dropped = int((faint & present).sum())
    if dropped:
        out[faint[out]] = 0
        out = relabel_sequential(out)[0].astype(np.int32, copy=False)
    return out, dropped
