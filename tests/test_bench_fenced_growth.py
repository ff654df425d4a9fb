"""bench_fenced_growth: a kept particle's growth stops where a dropped particle starts."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from scipy import ndimage as ndi

from bench.bench_fenced_growth import fenced_instances
from emcopilot.postprocess import prob_to_instances


def two_touching_discs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A probability map of two touching discs, a confident one (peak 0.97) and a weak one
    (peak 0.85), on a background of 0.02, and the two discs' masks."""
    yy, xx = np.mgrid[:80, :120]
    left = (yy - 40) ** 2 + (xx - 40) ** 2 <= 20 ** 2
    right = ((yy - 40) ** 2 + (xx - 78) ** 2 <= 19 ** 2) & ~left
    prob = np.full((80, 120), 0.02, np.float32)
    prob[left], prob[right] = 0.97, 0.85
    return ndi.gaussian_filter(prob, 1.0), left, right


def test_fenced_growth_keeps_the_confident_particle_off_the_dropped_one():
    prob, left, right = two_touching_discs()
    seg = SimpleNamespace(threshold=0.5, fill_holes=True, min_peak=0.9, grow_to=0.3)
    # as the segment stage grows: the confident disc floods its weak neighbour
    plain = prob_to_instances(prob, seg.threshold, fill_holes=True, min_peak=0.9, grow_to=0.3)
    assert plain.max() == 1 and (plain[right] > 0).mean() > 0.9
    # the two particles before the core probability: the weak one is dropped
    every = prob_to_instances(prob, seg.threshold, fill_holes=True)
    assert every.max() == 2
    weak = every == every[right].max()
    assert prob[weak].max() < 0.9 and (weak & right).sum() > 0.5 * right.sum()
    # fenced: only the confident disc, grown up to the dropped particle and not into it
    fenced = fenced_instances(seg, prob)
    assert fenced.max() == 1 and (fenced[left] > 0).mean() > 0.95
    assert not fenced[weak].any() and (plain[weak] > 0).all()
    # without a core probability nothing is dropped: the particles as made
    seg.min_peak = None
    np.testing.assert_array_equal(
        fenced_instances(seg, prob),
        prob_to_instances(prob, seg.threshold, fill_holes=True, grow_to=0.3))
