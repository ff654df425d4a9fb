"""Annotations burned into a micrograph: text (panel letters, scale-bar labels, instrument
lines) and scale bars drawn over the specimen.

Like an instrument data bar (:mod:`emcopilot.data_bar`) they are not part of the specimen, but
maskers and segmentors take their glyphs for small particles: of nine of the ten EMPS test
images whose particle counts were furthest off in run 49 (BENCHMARKS.md, stop 36), seven had
annotation text counted as particles. Every place that makes particles with the data bar left
out (``masking.coarse_mask``, the pipeline's segment stage, ``Segmentor.segment_detail``) also
drops the particles that lie on annotations (:func:`drop_annotation_particles`).

An annotation is recognised by what a drawing program gives it and a specimen rarely has, on
the image's own grey levels (no label, no vendor layout):

- it is drawn in the image's darkest or brightest grey (black or white ink): its pixels lie
  within ``TOLERANCE`` of the image's minimum or maximum, and its outline is sharp: the pixels
  two to three pixels outside it are far from that level (a particle whose core saturates has
  a bright body around the core, so its core's outline is not sharp). A figure enlarged from a
  small panel blurs its ink over several pixels: ink whose outline is sharp only four to five
  pixels out (``MIN_FAR_RING_STEP``) is taken too, with a wider rim (``BLURRED_RIM``), but only
  in a band along the top and bottom of the frame (``TEXT_BAND``, where labels are drawn) and
  not when there are more than ``MAX_BLURRED_GLYPHS`` such specks (blurred saturated rods in
  rows look the same);
- text: glyphs of strokes thin for their height (``MAX_STROKE``), at least ``MIN_HEIGHT`` px
  and at most ``MAX_HEIGHT`` of the image high, standing in a line with at least one more such
  glyph (tops and bottoms level, heights alike, gaps under ``MAX_GAP`` heights), most of them
  not plain bars or blobs (solidity under ``MAX_SOLIDITY``: letters and digits have curves and
  bowls; a row of saturated rods side by side is not text); glyph-like ink that continues a
  text line (the next word of its row within ``WORD_GAP`` heights, a piece of a glyph just
  under or over it) is taken with it;
- a scale bar: a filled, flat rectangle at least ``MIN_BAR_ASPECT`` times as long as high near
  a text line (its label), or ``MIN_LONE_BAR_ASPECT`` times near the frame's edge;
- a scale bar's label: beside such a bar, glyph-like ink is taken without the text tests (one
  glyph is enough, plain strokes too) and with a less sharp outline (``MIN_LABEL_RING_STEP``:
  a label written half over the specimen), when it lies at most ``LABEL_GAP`` of its heights
  from the bar;
- a label box: a flat rectangle of one ink (white or black, holes filled, at least
  ``MIN_BAR_EXTENT`` of its bounding box, at least ``MIN_BOX`` px and at most ``MAX_BOX`` of
  the frame's height and width, less than ``MIN_BAR_ASPECT`` times as long as high, its
  outline sharp) with glyph-like ink with a sharp outline 2-3 px out, or a scale bar, of the
  other ink drawn inside it: the whole box, its content too, even one lone glyph (a panel
  letter on a square, a scale bar and its label on a plate). A masker takes such a box for
  one flat particle.

A glyph drawn alone away from a scale bar and not on a box (a single panel digit), text in a mid
grey or on a noisy background that reaches the same level, and text in a colour the conversion
to grey leaves mid-grey are missed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from emcopilot.errors import InputError

__all__ = ["find_annotations", "annotation_particles", "drop_annotation_particles"]

TOLERANCE = 0.03       # share of the image's grey range around its darkest/brightest level
MIN_RING_STEP = 0.35   # share of the range between the ink and the pixels 2-3 px outside it
MIN_LABEL_RING_STEP = 0.25  # the same for the glyphs of a scale bar's label
MIN_FAR_RING_STEP = 0.4  # blurred ink: the same between the ink and the pixels 4-5 px outside
RIM = 2                # px: the anti-aliased rim around ink, part of the annotation
BLURRED_RIM = 4        # px: the same around blurred ink
MAX_BLURRED_GLYPHS = 30  # more blurred glyph-like specks at one ink level: none of them is text
TEXT_BAND = 0.25       # share of the height from the top or bottom where blurred text is taken
LABEL_GAP = 1.0        # a scale bar's label lies at most this many of its heights from the bar
MIN_HEIGHT = 8         # px: a glyph at least this high
MAX_HEIGHT = 0.15      # share of the image height: a glyph at most this high
MAX_STROKE = 0.22      # a glyph's half stroke width (its deepest inside pixel) / its height
MAX_GAP = 1.2          # horizontal gap between neighbouring glyphs of a line / their height
WORD_GAP = 2.0         # the same between a text line and the next word in its row
MIN_BAR_ASPECT = 4.0   # a scale bar's length / its height
MIN_LONE_BAR_ASPECT = 8.0  # the same for a scale bar with no text line beside it
MAX_SOLIDITY = 0.75    # a text line's median glyph is less solid than this (curves, bowls)
MIN_BAR_EXTENT = 0.85  # share of a scale bar's bounding box it fills
EDGE_BAND = 0.2        # share of the height/width from the frame's edge a lone scale bar lies in
MIN_OVERLAP = 0.5      # a particle with at least this share of its pixels on annotations
MIN_BOX = 2 * MIN_HEIGHT  # px: a label box at least this high and wide
MAX_BOX = 0.3          # share of the height/width: a label box at most this high/wide


def _grey01(image01: np.ndarray) -> np.ndarray:
    img = np.asarray(image01, np.float32)
    if img.ndim != 2:
        raise InputError(f"expected a 2-D greyscale image, got shape {img.shape}")
    return np.nan_to_num(img, nan=0.0, posinf=1.0, neginf=0.0)


def _ring_step(ink_level: float, g: np.ndarray, obj: np.ndarray, span: float,
               near: int = 1, far: int = 3) -> float:
    """How far the pixels ``near + 1`` to ``far`` px outside the object ``obj`` (bool, a crop of
    ``g``) lie from the ink's level, as a share of the image's grey ``span`` (median; 0 with no
    such pixels)."""
    inner = ndi.binary_dilation(obj, iterations=near)
    ring = ndi.binary_dilation(obj, iterations=far) & ~inner
    if not ring.any():
        return 0.0
    return float(np.median(np.abs(g[ring] - ink_level))) / span


def _rim(ink_level: float, g: np.ndarray, obj: np.ndarray, span: float,
         near_step: float) -> int:
    """How wide (px) the rim of ink with a sharp outline is: ``RIM`` with a step of
    ``MIN_RING_STEP`` 2-3 px outside it (``near_step``); ``BLURRED_RIM`` with
    ``MIN_FAR_RING_STEP`` 4-5 px outside it (a figure enlarged from a smaller one, its ink
    edges blurred over several px); 0: not sharp."""
    if near_step >= MIN_RING_STEP:
        return RIM
    far_step = _ring_step(ink_level, g, obj, span, near=3, far=5)
    return BLURRED_RIM if far_step >= MIN_FAR_RING_STEP else 0


def _lines(boxes: list[tuple[int, int, int, int]]) -> list[list[int]]:
    """Groups (indices) of glyph boxes ``(top, left, bottom, right)`` standing in one line."""
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (t1, l1, b1, r1) in enumerate(boxes):
        h1 = b1 - t1
        for j in range(i + 1, len(boxes)):
            t2, l2, b2, r2 = boxes[j]
            h2 = b2 - t2
            if max(h1, h2) > 3 * min(h1, h2):
                continue
            if min(b1, b2) - max(t1, t2) < 0.5 * min(h1, h2):  # rows shared
                continue
            gap = max(l1, l2) - min(r1, r2)
            if gap > MAX_GAP * max(h1, h2):
                continue
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(boxes)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def find_annotations(image01: np.ndarray) -> np.ndarray:
    """Boolean mask of the annotation text, scale bars and label boxes drawn on ``image01``
    (2-D, float in [0, 1] or any range: only its own grey levels count), widened by ``RIM`` px
    to cover the ink's anti-aliased rim (``BLURRED_RIM`` around blurred ink). All False when
    there is none."""
    from skimage.morphology import convex_hull_image

    g = _grey01(image01)
    h, w = g.shape
    out = np.zeros((h, w), np.uint8)  # each annotation pixel's rim (px), 0 elsewhere
    lo, hi = float(g.min(initial=0.0)), float(g.max(initial=0.0))
    span = hi - lo
    if span <= 1e-6 or h < 2 * MIN_HEIGHT or w < 2 * MIN_HEIGHT:
        return out > 0
    tol = TOLERANCE * span
    pad = 6  # the window around a component holds its rings
    # per ink level: the flat rectangles that may be label boxes, and the sharp ink (glyphs,
    # bars) that may be drawn in a box of the other level; as [id, box, pixels, rim]
    label_boxes: list[list] = [[], []]
    box_ink: list[list] = [[], []]
    for side, (level, ink) in enumerate(((hi, g >= hi - tol), (lo, g <= lo + tol))):
        # a noisy image has 10^5 specks at its extremes: only those at least MIN_HEIGHT across
        # are looked at (bounding boxes from find_objects, no per-speck objects)
        comps, _ = ndi.label(ink, structure=np.ones((3, 3), bool))
        # [id, (top, left, bottom, right), its pixels in its box, its rim (px)]; faint:
        # glyph-like, outline less sharp (text partly over the specimen), taken only as a scale
        # bar's label
        glyphs, faint, bars = [], [], []
        for k, box in enumerate(ndi.find_objects(comps), start=1):
            if box is None:
                continue
            t, b, lf, rt = box[0].start, box[0].stop, box[1].start, box[1].stop
            rh, rw = b - t, rt - lf
            if max(rh, rw) < MIN_HEIGHT:
                continue
            own = comps[box] == k
            t0, l0 = max(0, t - pad), max(0, lf - pad)
            window = (slice(t0, min(h, b + pad)), slice(l0, min(w, rt + pad)))
            if (min(rh, rw) >= MIN_BOX and rh <= MAX_BOX * h and rw <= MAX_BOX * w
                    and max(rh, rw) < MIN_BAR_ASPECT * min(rh, rw)):
                filled = ndi.binary_fill_holes(own)
                if filled.mean() >= MIN_BAR_EXTENT and filled.sum() > own.sum():
                    obj = np.zeros(g[window].shape, bool)
                    obj[t - t0:b - t0, lf - l0:rt - l0] = filled
                    rim = _rim(level, g[window], obj, span,
                               _ring_step(level, g[window], obj, span))
                    if rim:
                        label_boxes[side].append([k, (t, lf, b, rt), filled, rim])
            if rw >= MIN_BAR_ASPECT * rh and own.mean() >= MIN_BAR_EXTENT and rh <= 0.05 * h:
                obj = comps[window] == k
                rim = _rim(level, g[window], obj, span, _ring_step(level, g[window], obj, span))
                if rim:
                    bars.append([k, (t, lf, b, rt), own, rim])
                continue
            if not MIN_HEIGHT <= rh <= MAX_HEIGHT * h:
                continue
            stroke = float(ndi.distance_transform_edt(np.pad(own, 1)).max())
            if stroke > max(2.0, MAX_STROKE * rh):
                continue
            obj = comps[window] == k
            step = _ring_step(level, g[window], obj, span)
            rim = _rim(level, g[window], obj, span, step)
            if rim:
                glyphs.append([k, (t, lf, b, rt), own, rim])
            elif step >= MIN_LABEL_RING_STEP:
                faint.append([k, (t, lf, b, rt), own, RIM])
        # blurred glyph-like ink is text only where labels are drawn (a band along the top and
        # bottom of the frame) and only when there is little of it: blurred saturated rods in
        # rows look the same, and ink like that everywhere is a specimen, not a few labels
        blurred = [glyph for glyph in glyphs if glyph[3] == BLURRED_RIM]
        glyphs = [glyph for glyph in glyphs if glyph[3] != BLURRED_RIM]
        if len(blurred) > MAX_BLURRED_GLYPHS:
            blurred = []
        blurred = [glyph for glyph in blurred
                   if glyph[1][0] <= TEXT_BAND * h or glyph[1][2] >= (1 - TEXT_BAND) * h]
        # lines of sharp glyphs, then of blurred ones (apart, so a blurred speck does not
        # change a sharp line's tests): (its glyphs, its box)
        text_boxes, lines, rest = [], [], []  # rest: the lines not taken as text
        for kind in (glyphs, blurred):
            for group in _lines([glyph[1] for glyph in kind]):
                line = [kind[i] for i in group]
                boxes = np.array([glyph[1] for glyph in line])
                box = (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(),
                       boxes[:, 3].max())
                lines.append((line, box))
                if len(line) < 2 or np.median([
                        glyph[2].sum() / convex_hull_image(glyph[2]).sum() for glyph in line
                ]) >= MAX_SOLIDITY:
                    rest.append((line, box))
                    continue
                for glyph in line:
                    _mark(out, *glyph)
                text_boxes.append(box)
        # the rest of a text line's row: the next word ("nm" after "200"), pieces of a glyph
        # its blur broke apart (a descender), taken without the solidity test
        while True:
            grown = [any(_continues(box, text) for text in text_boxes) for _, box in rest]
            if not any(grown):
                break
            for (line, box), taken in zip(rest, grown):
                if taken:
                    for glyph in line:
                        _mark(out, *glyph)
                    text_boxes.append(box)
            rest = [item for item, taken in zip(rest, grown) if not taken]
        for item in bars:
            t, lf, b, rt = item[1]
            labelled = any(_beside(item[1], box) for box in text_boxes)
            at_edge = (b >= (1 - EDGE_BAND) * h or t <= EDGE_BAND * h) and \
                (lf <= EDGE_BAND * w or rt >= (1 - EDGE_BAND) * w) and \
                rt - lf >= MIN_LONE_BAR_ASPECT * (b - t)
            if not (labelled or at_edge):
                continue
            _mark(out, *item)
            # its label: any glyph-like ink beside it (a lone glyph, a line of plain strokes,
            # text whose outline runs over the specimen)
            for line, box in lines:
                if _beside(item[1], box, LABEL_GAP):
                    for glyph in line:
                        _mark(out, *glyph)
            for glyph in faint:
                if _beside(item[1], glyph[1], LABEL_GAP):
                    _mark(out, *glyph)
        box_ink[side] = glyphs + bars
    # a label box: a flat rectangle of one ink with sharp ink of the other drawn inside it (a
    # panel letter on a white or black square, a scale bar and its label on a plate): the whole
    # box, its content included, even a lone glyph
    for side in (0, 1):
        for item in label_boxes[side]:
            t, lf, b, rt = item[1]
            inside = [ink for ink in box_ink[1 - side] if ink[1][0] >= t and ink[1][1] >= lf
                      and ink[1][2] <= b and ink[1][3] <= rt]
            if inside:
                _mark(out, *item)
                for ink in inside:
                    _mark(out, *ink)
    if not out.any():
        return out > 0
    return ndi.binary_dilation(out > 0, iterations=RIM) | \
        ndi.binary_dilation(out == BLURRED_RIM, iterations=BLURRED_RIM)


def _continues(box: tuple[int, int, int, int], text: tuple[int, int, int, int]) -> bool:
    """Whether glyph-like ink in ``box`` ``(top, left, bottom, right)`` continues a ``text``
    line: in its row (rows shared) at most ``WORD_GAP`` of its heights to the side, or under
    or over it (columns shared) at most half its height away."""
    t, lf, b, rt = box
    tt, tl, tb, tr = text
    height = tb - tt
    if min(b, tb) - max(t, tt) >= 0.5 * min(b - t, height):
        return max(lf, tl) - min(rt, tr) <= WORD_GAP * height
    return min(rt, tr) > max(lf, tl) and max(t - tb, tt - b) <= 0.5 * height


def _beside(bar: tuple[int, int, int, int], text: tuple[int, int, int, int],
            heights: float = 2.0) -> bool:
    """Whether a ``text`` box ``(top, left, bottom, right)`` shares columns with a scale
    ``bar``'s box and lies at most ``heights`` text heights above or below it."""
    t, lf, b, rt = bar
    tt, tl, tb, tr = text
    return min(rt, tr) > max(lf, tl) and max(t - tb, tt - b) <= heights * (tb - tt)


def _mark(out: np.ndarray, k: int, box: tuple[int, int, int, int], own: np.ndarray,
          rim: int) -> None:
    """Set the pixels of component ``k`` of an ink level (``own`` within its ``box``) in
    ``out`` to its ``rim`` (the widest rim wins)."""
    t, lf, b, rt = box
    region = out[t:b, lf:rt]
    region[own] = np.maximum(region[own], rim)


def annotation_particles(image01: np.ndarray, labels: np.ndarray,
                         annotations: np.ndarray | None = None) -> np.ndarray:
    """Boolean array over particle ids 0..N: True where at least half of the particle's pixels
    lie on :func:`find_annotations`'s mask (``annotations`` when already found). Id 0 False."""
    lab = np.asarray(labels)
    if lab.shape != np.shape(image01):
        raise InputError(f"labels {lab.shape} and image {np.shape(image01)} differ in shape")
    n = int(lab.max(initial=0))
    flagged = np.zeros(n + 1, bool)
    if n == 0:
        return flagged
    mask = find_annotations(image01) if annotations is None else np.asarray(annotations, bool)
    if mask.shape != lab.shape:
        raise InputError(f"annotation mask {mask.shape} and labels {lab.shape} differ in shape")
    if not mask.any():
        return flagged
    flat = lab.ravel().astype(np.int64)
    area = np.bincount(flat, minlength=n + 1)
    on = np.bincount(flat, weights=mask.ravel(), minlength=n + 1)
    flagged = (area > 0) & (on >= MIN_OVERLAP * np.maximum(area, 1))
    flagged[0] = False
    return flagged


def drop_annotation_particles(image01: np.ndarray, labels: np.ndarray, *,
                              annotations: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """``(labels without the particles on annotations, renumbered 1..n, how many were
    dropped)`` as an int32 label map. ``annotations``: :func:`find_annotations` of the image when
    already found."""
    from skimage.segmentation import relabel_sequential

    lab = np.asarray(labels).astype(np.int32, copy=True)
    flagged = annotation_particles(image01, lab, annotations)
    if not flagged.any():
        return lab, 0
    lab[flagged[lab]] = 0
    return relabel_sequential(lab)[0].astype(np.int32, copy=False), int(flagged.sum())
