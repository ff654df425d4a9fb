"""Algorithm 1 filters and instance splitting on constructed label maps."""

from __future__ import annotations

import time

import numpy as np
import pytest

from emcopilot.errors import InputError
from emcopilot.instances import binary_to_instances, remove_small_instances
from emcopilot.masking.filters import filter_regions


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _scene():
    """100x100: bright disc (label 1, value 200/255) in the middle, dim disc (label 2, 40/255),
    a bright disc touching the left border (label 3); background 20/255."""
    shape = (100, 100)
    labels = np.zeros(shape, np.int32)
    img = np.full(shape, 20 / 255, np.float32)
    for lab, (cy, cx, r, v) in enumerate([(50, 50, 8, 200), (20, 75, 6, 40), (50, 4, 6, 200)], 1):
        d = _disc(shape, cy, cx, r)
        labels[d] = lab
        img[d] = v / 255
    return labels, img


def _kept_values(out, labels):
    """Original labels that survive, as a set (each output region is one input region)."""
    return {int(np.unique(labels[out == k])[0]) for k in range(1, int(out.max()) + 1)}


def test_drops_dim_and_edge_regions_and_relabels():
    labels, img = _scene()
    out = filter_regions(labels, img)
    assert out.dtype == np.int32
    assert out.max() == 1 and _kept_values(out, labels) == {1}
    np.testing.assert_array_equal(out > 0, labels == 1)


def test_each_filter_can_be_switched_off():
    labels, img = _scene()
    assert _kept_values(filter_regions(labels, img, edge_margin=0), labels) == {1, 3}
    assert _kept_values(filter_regions(labels, img, intensity_threshold=0), labels) == {1, 2}
    out = filter_regions(labels, img, intensity_threshold=0, edge_margin=0)
    assert _kept_values(out, labels) == {1, 2, 3}
    assert sorted(np.unique(out)) == [0, 1, 2, 3]


def test_polarity_dark_flips_the_intensity_test():
    labels, img = _scene()
    dark = 1.0 - img  # bright-field version: particles dark on a bright background
    assert _kept_values(filter_regions(labels, dark, polarity="dark"), labels) == {1}
    # Read with the wrong polarity the test is inverted: particles 1 and 3 (55/255) are dim, the
    # dim particle 2 (215/255 in the dark image) passes.
    assert _kept_values(filter_regions(labels, dark, polarity="bright", edge_margin=0),
                        labels) == {2}
    assert _kept_values(filter_regions(labels, dark, polarity="auto"), labels) == {1}


@pytest.mark.parametrize("value,kept", [(60, True), (59, False), (61, True)])
def test_intensity_threshold_boundary(value, kept):
    labels = np.zeros((40, 40), np.int32)
    labels[15:25, 15:25] = 1
    img = np.zeros((40, 40), np.float32)
    img[labels == 1] = value / 255
    out = filter_regions(labels, img, intensity_threshold=60)
    assert bool(out.max() == 1) is kept


def test_intensity_uses_the_region_mean():
    labels = np.zeros((40, 40), np.int32)
    labels[10:30, 10:20] = 1  # 200 px: half at 100, half at 10 -> mean 55 < 60
    img = np.zeros((40, 40), np.float32)
    img[10:20, 10:20] = 100 / 255
    img[20:30, 10:20] = 10 / 255
    assert filter_regions(labels, img).max() == 0
    img[20:30, 10:20] = 30 / 255  # mean 65
    assert filter_regions(labels, img).max() == 1


@pytest.mark.parametrize("margin", [1, 5, 7])
def test_edge_margin_boundary(margin):
    """Distance to the border < margin -> dropped; == margin -> kept (all four sides)."""
    img = np.ones((50, 60), np.float32)
    for side in range(4):
        for offset, kept in ((margin, True), (margin - 1, False)):
            labels = np.zeros((50, 60), np.int32)
            r0, c0 = 20, 25
            if side == 0:
                r0 = offset
            elif side == 1:
                r0 = 50 - 1 - offset - 4
            elif side == 2:
                c0 = offset
            else:
                c0 = 60 - 1 - offset - 4
            labels[r0:r0 + 5, c0:c0 + 5] = 7
            out = filter_regions(labels, img, edge_margin=margin)
            assert bool(out.max() == 1) is kept, (side, offset)


def test_area_limits_inclusive():
    labels = np.zeros((60, 60), np.int32)
    labels[10:20, 10:20] = 1  # 100 px
    labels[30:35, 30:35] = 2  # 25 px
    labels[40:50, 40:52] = 3  # 120 px
    img = np.ones((60, 60), np.float32)
    out = filter_regions(labels, img, min_area=25, max_area=100)
    assert _kept_values(out, labels) == {1, 2}
    out = filter_regions(labels, img, min_area=26, max_area=99)
    assert out.max() == 0


def test_non_consecutive_labels_and_empty():
    labels = np.zeros((40, 40), np.int32)
    labels[10:20, 10:20] = 1000
    img = np.ones((40, 40), np.float32)
    out = filter_regions(labels, img)
    assert out.max() == 1 and (out > 0).sum() == 100
    assert filter_regions(np.zeros((40, 40), np.int32), img).max() == 0


def test_shape_mismatch_and_bad_polarity_are_input_errors():
    with pytest.raises(InputError):
        filter_regions(np.zeros((10, 10), np.int32), np.zeros((10, 11), np.float32))
    with pytest.raises(InputError):
        filter_regions(np.zeros((10, 10), np.int32), np.zeros((10, 10), np.float32),
                       polarity="sideways")


# ----------------------------------------------------------------------------- instances

def test_two_touching_discs_split_one_disc_kept():
    shape = (100, 120)
    two = _disc(shape, 50, 40, 15) | _disc(shape, 50, 67, 15)  # centres 27 px apart: they overlap
    from scipy import ndimage as ndi

    assert ndi.label(two)[1] == 1  # one connected blob
    lab = binary_to_instances(two)
    assert lab.dtype == np.int32 and lab.max() == 2
    # each half belongs to one instance
    assert len(np.unique(lab[:, :50][two[:, :50]])) == 1
    assert len(np.unique(lab[:, 60:][two[:, 60:]])) == 1
    assert lab[50, 40] != lab[50, 67]
    np.testing.assert_array_equal(lab > 0, two)

    one = _disc(shape, 50, 60, 20)
    lab1 = binary_to_instances(one)
    assert lab1.max() == 1
    np.testing.assert_array_equal(lab1 > 0, one)


def test_splitting_off_and_min_area():
    shape = (100, 120)
    two = _disc(shape, 50, 40, 15) | _disc(shape, 50, 67, 15)
    assert binary_to_instances(two, min_distance=0).max() == 1
    speck = two.copy()
    speck[5:7, 5:7] = True  # 4 px
    assert binary_to_instances(speck, min_area=10).max() == 2
    assert binary_to_instances(speck, min_area=1).max() == 3
    assert binary_to_instances(np.zeros(shape, bool)).max() == 0


def test_probability_map_drives_the_boundary():
    shape = (60, 100)
    two = _disc(shape, 30, 35, 14) | _disc(shape, 30, 60, 14)
    prob = two.astype(np.float32) * 0.9
    prob[:, 45:48] = 0.2  # a valley left of the geometric neck (x ~ 47.5)
    lab = binary_to_instances(two, prob=prob)
    assert lab.max() == 2
    assert lab[30, 44] != lab[30, 49]
    assert lab[30, 44] == lab[30, 35]
    with pytest.raises(ValueError):
        binary_to_instances(two, prob=prob[:, :50])


def test_many_particles_fast_and_one_label_each():
    rng = np.random.default_rng(0)
    shape = (512, 512)
    mask = np.zeros(shape, bool)
    centres = [(y, x) for y in range(20, 500, 40) for x in range(20, 500, 40)]
    for cy, cx in centres:
        mask |= _disc(shape, cy + rng.integers(-3, 4), cx + rng.integers(-3, 4), 12)
    binary_to_instances(mask)  # warm-up
    t = time.perf_counter()
    lab = binary_to_instances(mask)
    dt = time.perf_counter() - t
    assert lab.max() == len(centres)
    assert dt < 0.25  # ~25 ms measured on the 2-core dev box; generous for CI noise


def test_remove_small_instances_relabels():
    lab = np.zeros((20, 20), np.int32)
    lab[0:5, 0:5] = 4
    lab[10:12, 10:12] = 9
    out = remove_small_instances(lab, 5)
    assert sorted(np.unique(out)) == [0, 1] and (out == 1).sum() == 25


def test_min_snr_drops_the_faint_regions_only_when_asked():
    """The faint-particle filter (off by default): on a noisy image, regions of plain noise go
    and bright particles stay, as postprocess.drop_faint_particles decides; dark particles are
    judged in the bright-particle image."""
    from emcopilot.postprocess import drop_faint_particles

    rng = np.random.default_rng(0)
    img = (0.3 + 0.04 * rng.standard_normal((80, 80))).astype(np.float32)
    labels = np.zeros((80, 80), np.int32)
    img[10:20, 10:20] += 0.3
    labels[10:20, 10:20] = 1
    img[40:50, 40:50] += 0.3
    labels[40:50, 40:50] = 2
    labels[60:64, 20:24] = 3  # plain noise
    labels[25:29, 60:64] = 4  # plain noise
    off = dict(intensity_threshold=0, edge_margin=0)
    np.testing.assert_array_equal(filter_regions(labels, img, **off), labels)
    out = filter_regions(labels, img, **off, min_snr=25)
    assert _kept_values(out, labels) == {1, 2}
    np.testing.assert_array_equal(out, drop_faint_particles(img, labels, 25)[0])
    dark = filter_regions(labels, 1.0 - img, polarity="dark", **off, min_snr=25)
    np.testing.assert_array_equal(dark, out)
    with pytest.raises(InputError, match="min_snr"):
        filter_regions(labels, img, min_snr=-1)
