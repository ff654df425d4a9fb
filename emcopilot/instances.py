"""Binary foreground -> instance label map, splitting touching particles.

Used by the classical coarse masker and by segmentor inference (probability map -> particles).
Marker-controlled watershed: markers are the maxima of the Euclidean distance transform (at least
``min_distance`` px apart and at least ``h`` px higher than the saddle to a neighbouring maximum),
the flooded surface is ``-distance`` or, when a probability map is given, ``-prob`` (its valleys
follow the boundaries the network saw). Every connected component gets at least one marker, so
no foreground component is lost by the splitting.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential, watershed

__all__ = ["binary_to_instances", "remove_small_instances"]

_EIGHT = np.ones((3, 3), dtype=bool)


def remove_small_instances(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Zero out instances with fewer than ``min_area`` pixels and relabel 1..N (int32)."""
    labels = np.asarray(labels)
    if labels.max(initial=0) == 0:
        return np.zeros(labels.shape, np.int32)
    if min_area > 1:
        areas = np.bincount(labels.ravel())
        small = areas < min_area
        small[0] = False
        if small.any():
            labels = np.where(small[labels], 0, labels)
    out, _, _ = relabel_sequential(labels.astype(np.int32, copy=False))
    return out.astype(np.int32, copy=False)


def binary_to_instances(
    binary: np.ndarray,
    *,
    min_distance: int = 3,
    prob: np.ndarray | None = None,
    min_area: int = 10,
    footprint: np.ndarray | None = None,
    h: float = 2.0,
    h_share: float = 0.0,
) -> np.ndarray:
    """Split a binary foreground mask into particle instances.

    Args:
        binary: 2-D mask, non-zero = particle pixels.
        min_distance: minimum distance in px between two particle centres (markers); 0 disables
            splitting (connected components only).
        prob: optional 2-D particle probability map in [0, 1] of the same shape; when given the
            watershed floods ``-prob`` instead of ``-distance``.
        min_area: instances smaller than this (px) are removed (before and after splitting).
        footprint: optional boolean neighbourhood for the local-maximum search; overrides
            ``min_distance`` for that search (``min_distance`` still decides whether to split).
        h: dynamic in px of the distance transform that a maximum needs to count as a separate
            particle (h-maxima); the neck between two touching round particles must be at least
            ``h`` px narrower than their radii. 0 keeps every local maximum.
        h_share: the dynamic also needs to be at least this share of the lower of the two
            peaks (a relative h: a long rod whose width varies along it is not cut at each
            waist, while touching particles, whose neck is far narrower, still are). 0: ``h``
            alone.

    Returns:
        ``numpy.int32`` label map, 0 = background, 1..N = particles.
    """
    mask = np.asarray(binary).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"binary must be 2-D, got shape {mask.shape}")
    if prob is not None:
        prob = np.asarray(prob, dtype=np.float32)
        if prob.shape != mask.shape:
            raise ValueError(f"prob shape {prob.shape} != binary shape {mask.shape}")
    cc, n = ndi.label(mask, structure=_EIGHT)
    if n == 0:
        return np.zeros(mask.shape, np.int32)
    if min_area > 1:
        cc = remove_small_instances(cc, min_area)
        mask = cc > 0
        n = int(cc.max())
        if n == 0:
            return cc
    if min_distance <= 0 and footprint is None:
        return cc.astype(np.int32)

    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    # Local maxima within the neighbourhood (a plateau gives one connected marker).
    if footprint is None:
        size = 2 * int(min_distance) + 1
        local_max = ndi.maximum_filter(dist, size=size, mode="constant") == dist
    else:
        local_max = ndi.maximum_filter(dist, footprint=np.asarray(footprint, bool),
                                       mode="constant") == dist
    markers, n_markers = ndi.label(local_max & mask, structure=_EIGHT)
    # Components without a marker get one at their deepest pixel.
    has_marker = np.zeros(n + 1, bool)
    has_marker[cc[markers > 0]] = True
    missing = np.flatnonzero(~has_marker[1:]) + 1
    if missing.size:
        pos = ndi.maximum_position(dist, cc, missing)
        rows, cols = np.asarray(pos, dtype=np.intp).reshape(-1, 2).T
        markers[rows, cols] = n_markers + 1 + np.arange(missing.size)
        n_markers += missing.size
    surface = -prob if prob is not None else -dist
    labels = watershed(surface, markers, mask=mask)
    if (h > 0 or h_share > 0) and n_markers > n:
        labels = _merge_shallow(labels, dist, h, h_share)
    return remove_small_instances(labels, min_area)


def _merge_shallow(labels: np.ndarray, dist: np.ndarray, h: float,
                   h_share: float = 0.0) -> np.ndarray:
    """Merge neighbouring watershed regions whose separation is shallower than ``h``.

    The saddle between two touching regions is the highest ``min(dist[p], dist[q])`` over pairs of
    4-adjacent pixels p, q on either side of their shared boundary. Pairs are merged in descending
    saddle order (union-find over the region adjacency graph) when the lower of the two region
    peaks rises less than ``h`` (or ``h_share`` of that peak) above the saddle: the h-maxima
    criterion, without the slow greyscale reconstruction on the whole image.
    """
    n = int(labels.max())
    peaks = np.zeros(n + 1, np.float64)
    np.maximum.at(peaks, labels.ravel(), dist.ravel())
    a_parts, b_parts, s_parts = [], [], []
    for la, lb, da, db in (
        (labels[:, :-1], labels[:, 1:], dist[:, :-1], dist[:, 1:]),
        (labels[:-1, :], labels[1:, :], dist[:-1, :], dist[1:, :]),
    ):
        sel = (la != lb) & (la > 0) & (lb > 0)
        if sel.any():
            x, y = la[sel], lb[sel]
            a_parts.append(np.minimum(x, y))
            b_parts.append(np.maximum(x, y))
            s_parts.append(np.minimum(da[sel], db[sel]))
    if not a_parts:
        return labels
    a = np.concatenate(a_parts).astype(np.int64)
    b = np.concatenate(b_parts).astype(np.int64)
    sad = np.concatenate(s_parts)
    key = a * (n + 1) + b
    order = np.lexsort((-sad, key))
    key, sad = key[order], sad[order]
    first = np.r_[True, key[1:] != key[:-1]]
    key, sad = key[first], sad[first]  # highest saddle per region pair
    pa, pb = key // (n + 1), key % (n + 1)
    parent = np.arange(n + 1)
    top = peaks.copy()

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    merged = False
    for k in np.argsort(-sad, kind="stable"):
        ra, rb = find(int(pa[k])), find(int(pb[k]))
        if ra == rb:
            continue
        low = min(top[ra], top[rb])
        if low - sad[k] < max(h, h_share * low):
            parent[rb] = ra
            top[ra] = max(top[ra], top[rb])
            merged = True
    if not merged:
        return labels
    roots = np.array([find(i) for i in range(n + 1)])
    return roots[labels]
