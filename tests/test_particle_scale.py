"""Particle scale: typical particle width of a mask, the resize to a common width, and the
training set gathered at that width."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emcopilot import io
from emcopilot.errors import InputError
from emcopilot.particle_scale import (SCALE_LIMITS, check_scale_split, estimate_scale,
                                      normalising_scale, recorded_scale_split, resize_image,
                                      resize_labels, split_touching, typical_diameter)
from emcopilot.training.datasets import gather_pairs


def discs(shape, centres, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    lab = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, 1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = k
    return lab


def test_typical_diameter_of_equal_discs_is_their_diameter():
    lab = discs((200, 200), [(40, 40), (40, 120), (120, 80)], 15)
    assert typical_diameter(lab) == pytest.approx(30, rel=0.05)


def test_typical_diameter_ignores_many_small_fragments():
    lab = discs((300, 300), [(60, 60), (60, 200), (200, 130)], 25)
    rng = np.random.default_rng(0)
    k = lab.max() + 1
    for _ in range(40):  # 40 fragments of 2x2 px: the plain median would be 2 px wide
        y, x = rng.integers(120, 160), rng.integers(5, 290)
        if lab[y:y + 2, x:x + 2].max() == 0:
            lab[y:y + 2, x:x + 2] = k
            k += 1
    areas = np.bincount(lab.ravel())[1:]
    assert np.sqrt(4 * np.median(areas) / np.pi) < 5
    assert typical_diameter(lab) == pytest.approx(50, rel=0.05)


def test_no_particle_means_no_diameter_and_scale_one():
    empty = np.zeros((50, 60), np.int32)
    assert typical_diameter(empty) is None
    assert normalising_scale(empty) == 1.0
    with pytest.raises(InputError):
        typical_diameter(np.zeros((2, 3, 4), np.int32))
    with pytest.raises(InputError):
        normalising_scale(empty, target=0)


def test_scale_brings_particles_to_the_target_width_within_limits():
    lab = discs((400, 400), [(100, 100), (100, 300), (300, 200)], 40)  # 80 px wide
    s = normalising_scale(lab, target=32)
    assert s == pytest.approx(0.4, rel=0.05)
    small = resize_labels(lab, s)
    assert small.shape == (160, 160)
    assert set(np.unique(small)) == {0, 1, 2, 3}  # ids kept, no blended values
    assert typical_diameter(small) == pytest.approx(32, rel=0.1)
    tiny = discs((100, 100), [(50, 50)], 1)  # 3 px wide: factor clipped at the upper limit
    assert normalising_scale(tiny, target=32) == SCALE_LIMITS[1]
    # enlarging stops at MAX_ENLARGED_PIXELS (here 4x the map's pixels: factor 2, not 4)
    assert normalising_scale(tiny, target=32, max_pixels=4 * tiny.size) == pytest.approx(2.0)
    assert normalising_scale(tiny, target=32, max_pixels=tiny.size // 2) == 1.0
    assert resize_image(np.ones((10, 20), np.float32), 2.0).shape == (20, 40)
    assert resize_image(np.ones((10, 20), np.float32), 1.0).shape == (10, 20)


def test_estimate_scale_on_a_real_micrograph_matches_its_labels(examples_dir):
    d = examples_dir / "emps"
    stem = "31121ca5cf"
    image = io.normalize(io.read_micrograph(d / "images" / f"{stem}.png").image)
    truth = io.read_label_map(d / "segmaps" / f"{stem}.png")
    s_est = estimate_scale(image, 32, preset="isolated")  # polarity detected (dark particles)
    assert s_est == estimate_scale(1 - image, 32, preset="isolated", polarity="bright")
    s_true = normalising_scale(truth, 32)
    assert 0.5 < s_est / s_true < 2.0


def test_gather_pairs_at_a_common_particle_width(tmp_path):
    rng = np.random.default_rng(1)
    src_i, src_m = tmp_path / "i", tmp_path / "m"
    src_i.mkdir()
    src_m.mkdir()
    for name, radius in (("big", 32), ("small", 8)):
        lab = discs((256, 256), [(64, 64), (64, 190), (190, 128)], radius)
        img = (lab > 0) * 0.7 + 0.1 + rng.normal(0, 0.02, lab.shape)
        io.write_image(src_i / f"{name}.png", np.clip(img, 0, 1).astype(np.float32))
        io.write_label_map(src_m / f"{name}.png", lab)
    io.write_image(src_i / "unpaired.png", np.zeros((20, 20), np.float32))
    images, masks = gather_pairs([(src_i, src_m, "s_")], tmp_path / "out",
                                 particle_diameter_px=32)
    scales = json.loads((tmp_path / "out" / "scales.json").read_text())
    assert scales == {"s_big": pytest.approx(0.5, rel=0.05), "s_small": pytest.approx(2, rel=0.05)}
    for name in ("s_big", "s_small"):
        img = io.read_micrograph(images / f"{name}.png").image
        lab = io.read_label_map(masks / f"{name}.png")
        assert img.shape == lab.shape
        assert typical_diameter(lab) == pytest.approx(32, rel=0.1)
        # the image was resized with its mask: particles are still where the mask says
        assert img[lab > 0].mean() > img[lab == 0].mean() + 100
    assert not (images / "s_unpaired.png").exists()
    # a second call rebuilds the folder (no stale pairs), by links when not resizing
    gather_pairs([(src_i, src_m, "t_")], tmp_path / "out")
    assert sorted(p.name for p in masks.iterdir()) == ["t_big.png", "t_small.png"]
    # one source, no prefix, no resizing: used where it is, nothing copied
    assert gather_pairs([(src_i, src_m, "")], tmp_path / "other") == (src_i, src_m)
    assert not (tmp_path / "other").exists()


def test_area_weighted_median_follows_the_area_not_the_count():
    from emcopilot.particle_scale import area_weighted_median

    # three small particles hold 300 of 1,900 px^2: the large one holds most of the area
    assert area_weighted_median([10, 10, 10, 40]) == 40
    assert area_weighted_median([10, 10, 10, 10]) == 10
    assert area_weighted_median([]) is None


def test_scale_multiples_are_validated_and_held_to_the_scale_limits():
    from emcopilot.particle_scale import MAX_ENLARGED_PIXELS, check_scale_multiples, multiplied_scale

    assert check_scale_multiples([]) == ()
    assert check_scale_multiples(["1.5", 0.75, 1.5]) == (1.5, 0.75)  # order kept, once each
    for bad in ([1], [0], [-2], [float("nan")], ["x"], "1.5", 1.5, [2, 3, 4, 5, 6]):
        with pytest.raises(InputError):
            check_scale_multiples(bad)
    assert multiplied_scale(None, 1.5, (100, 100)) == 1.5
    assert multiplied_scale(0.4, 1.5, (100, 100)) == pytest.approx(0.6)
    assert multiplied_scale(3.0, 2.0, (100, 100)) == SCALE_LIMITS[1]
    assert multiplied_scale(0.1, 0.5, (100, 100)) == SCALE_LIMITS[0]
    # an enlargement is held to MAX_ENLARGED_PIXELS, an image already larger is not enlarged
    side = 1024
    assert multiplied_scale(1.5, 2.0, (side, side)) == pytest.approx(
        np.sqrt(MAX_ENLARGED_PIXELS) / side)
    assert multiplied_scale(1.0, 1.5, (4096, 4096)) == 1.0


def test_two_touching_discs_become_two_and_a_lone_disc_stays_one():
    yy, xx = np.mgrid[:60, :90]
    lab = np.zeros((60, 90), np.int32)
    lab[((yy - 30) ** 2 + (xx - 25) ** 2 <= 100) | ((yy - 30) ** 2 + (xx - 43) ** 2 <= 100)] = 1
    lab[(yy - 30) ** 2 + (xx - 75) ** 2 <= 64] = 2
    out = split_touching(lab)
    assert out.max() == 3
    assert out[30, 25] != out[30, 43] and out[30, 25] > 0 and out[30, 43] > 0
    assert (out > 0).sum() == (lab > 0).sum()
    areas = np.bincount(out.ravel())[1:]
    assert abs(int(areas[out[30, 25] - 1]) - int(areas[out[30, 43] - 1])) < 0.1 * areas.max()


def test_split_measures_clusters_of_touching_particles_one_by_one():
    """Clusters of touching 16 px particles masked as one particle each (as a coarse masker
    leaves them on a support): the plain width is the cluster's, the split one the particles'."""
    lab = np.zeros((240, 240), np.int32)
    for k, (cy, cx) in enumerate([(50, 50), (50, 170), (170, 110)], 1):
        chain = discs((240, 240), [(cy, cx + d) for d in (-28, -14, 0, 14, 28)], 8) > 0
        lab[chain] = k
    assert typical_diameter(lab) > 2 * 16
    assert typical_diameter(lab, split=True) == pytest.approx(16, rel=0.15)
    assert normalising_scale(lab, 32, split=True) == pytest.approx(2.0, rel=0.15)
    assert normalising_scale(lab, 32) < 1.0
    # free round particles are measured alike either way
    free = discs((200, 200), [(40, 40), (40, 120), (120, 80)], 15)
    assert typical_diameter(free, split=True) == pytest.approx(typical_diameter(free), rel=0.05)


def test_scale_split_modes_are_checked_and_old_records_are_off():
    assert [check_scale_split(m) for m in ("auto", "on", "off")] == ["auto", "on", "off"]
    with pytest.raises(InputError, match="scale split"):
        check_scale_split("sometimes")
    assert recorded_scale_split({}) == "off" and recorded_scale_split({"scale_split": "x"}) == "off"
    assert recorded_scale_split({"support_removal": "on"}) == "off"  # its own key
    assert recorded_scale_split({"scale_split": "auto"}) == "auto"
