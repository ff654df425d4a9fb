"""Probability map -> particles, and the label-free threshold calibration."""

from __future__ import annotations

import numpy as np
import pytest

from emcopilot import io
from emcopilot.errors import InputError
from emcopilot.postprocess import calibrate_threshold, otsu_threshold, prob_to_instances


def _discs(shape=(96, 96), centres=((30, 30), (30, 52), (70, 70)), r=11):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    out = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, 1):
        out[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return out


def test_touching_discs_are_split_and_threshold_orders_area():
    truth = _discs()
    prob = np.where(truth > 0, 0.35, 0.05).astype(np.float32)  # an under-confident network
    assert prob_to_instances(prob, 0.5).max() == 0  # 0.5 loses every particle
    labels = prob_to_instances(prob, 0.3)
    assert labels.max() == 3  # the two touching discs are split
    assert prob_to_instances(prob, 0.3, min_distance=0).max() == 2  # no splitting: merged
    assert prob_to_instances(prob, "otsu").max() == 3
    assert 0.05 < otsu_threshold(prob) < 0.35


def test_options_and_bad_arguments():
    truth = _discs()
    prob = (truth > 0).astype(np.float32)
    prob[28:33, 10:13] = 1.0  # a 15 px speckle
    assert prob_to_instances(prob, 0.5, min_area=10).max() == 4
    assert prob_to_instances(prob, 0.5, min_area=30).max() == 3
    assert prob_to_instances(prob, 0.5, opening=2).max() == 3  # opened away
    ring = prob.copy()
    ring[68:73, 68:73] = 0  # a hole in the third disc
    filled = prob_to_instances(ring, 0.5, fill_holes=True)
    assert filled[70, 70] > 0 and prob_to_instances(ring, 0.5)[70, 70] == 0
    assert prob_to_instances(np.full((20, 20), np.nan, np.float32)).max() == 0
    with pytest.raises(InputError, match="otsu"):
        prob_to_instances(prob, "median")
    with pytest.raises(InputError, match="surface"):
        prob_to_instances(prob, 0.5, surface="height")
    with pytest.raises(InputError, match="2-D"):
        prob_to_instances(prob[None])


def test_calibrate_threshold_finds_where_dice_is_best():
    rng = np.random.default_rng(0)
    truths = [_discs(), _discs(centres=((20, 20), (60, 40)))]
    # particles at 0.3 +- 0.03, background at 0.1 +- 0.03: the best cut is between them
    probs = [np.where(t > 0, 0.3, 0.1) + rng.normal(0, 0.03, t.shape) for t in truths]
    cal = calibrate_threshold(probs, truths)
    assert 0.15 <= cal["threshold"] <= 0.25
    assert cal["dice"] > 0.95 and cal["dice_at_0.5"] < 0.05
    assert cal["dice"] == pytest.approx(max(cal["grid"].values()), abs=1e-4)
    # well-separated maps keep 0.5 (ties go to the threshold nearest 0.5)
    exact = [(t > 0).astype(np.float32) for t in truths]
    assert calibrate_threshold(exact, truths)["threshold"] == 0.5
    # empty input is harmless
    assert calibrate_threshold([], [])["threshold"] == 0.5


def test_calibrated_dice_matches_the_metric(examples_dir):
    """The sorted-count Dice of calibrate_threshold equals metrics.pixel_scores on real masks."""
    from emcopilot.metrics import pixel_scores

    truth = io.read_label_map(next((examples_dir / "emps" / "segmaps").glob("*.png")))
    rng = np.random.default_rng(1)
    prob = np.clip((truth > 0) * 0.6 + rng.random(truth.shape) * 0.5, 0, 1).astype(np.float32)
    cal = calibrate_threshold([prob], [truth], grid=[0.3, 0.55, 0.7])
    for t, d in cal["grid"].items():
        assert d == pytest.approx(pixel_scores(prob > float(t), truth > 0)["dice"], abs=1e-4)


def test_min_peak_keeps_only_particles_with_a_confident_core():
    truth = _discs(centres=((20, 20), (20, 70), (70, 45)))
    prob = np.where(truth > 0, 0.6, 0.05).astype(np.float32)
    prob[truth == 1] = 0.95  # one confident particle
    yy, xx = np.mgrid[:96, :96]
    core = ((yy - 70) ** 2 + (xx - 45) ** 2 <= 9) & (truth == 3)
    prob[core] = 0.9  # one with a confident centre only
    assert prob_to_instances(prob, 0.5).max() == 3
    kept = prob_to_instances(prob, 0.5, min_peak=0.8)
    assert kept.max() == 2
    # the kept particles keep their full extent (threshold 0.5), not just their core
    assert np.count_nonzero(kept) == np.count_nonzero(truth == 1) + np.count_nonzero(truth == 3)
    assert kept[20, 70] == 0
    assert prob_to_instances(prob, 0.5, min_peak=0.99).max() == 0


def test_select_min_peak_against_reference_masks():
    from emcopilot.postprocess import select_min_peak

    truth = _discs(centres=((20, 20), (20, 70), (70, 45)))
    prob = np.where(truth > 0, 0.95, 0.05).astype(np.float32)
    prob[5:12, 40:50] = 0.7  # a false particle with a weak core
    assert prob_to_instances(prob, 0.5).max() == 4
    res = select_min_peak([prob], [truth])
    assert res["min_peak"] is not None and 0.7 <= res["min_peak"] < 0.95
    assert res["f1"][str(res["min_peak"])] == pytest.approx(1.0)
    assert res["f1"]["None"] == pytest.approx(2 * 3 / 7, abs=1e-4)
    # particles made with their holes filled: chosen with the same post-processing
    holed = prob.copy()
    yy, xx = np.mgrid[:96, :96]
    holed[(yy - 70) ** 2 + (xx - 45) ** 2 <= 72] = 0.05  # a hole of most of the third disc
    assert select_min_peak([holed], [truth], fill_holes=True) == res
    assert select_min_peak([holed], [truth])["f1"] != res["f1"]  # the hole costs that disc
    # nothing to gain: every particle is kept
    clean = np.where(truth > 0, 0.95, 0.05).astype(np.float32)
    assert select_min_peak([clean], [truth])["min_peak"] is None


def test_select_min_peak_scores_the_particles_the_output_keeps():
    """With ``finish`` (here the faint-particle filter the output applies) the particles are
    scored after it: a weak-cored false particle the filter removes anyway no longer makes the
    choice drop a weak-cored true one."""
    from emcopilot.postprocess import drop_faint_particles, select_growth, select_min_peak

    truth = _discs(centres=((20, 20), (20, 70), (70, 45), (70, 80)), r=9)
    prob = np.where(truth > 0, 0.95, 0.05).astype(np.float32)
    prob[truth == 4] = 0.75  # a true particle the segmentor is less sure of
    yy, xx = np.mgrid[:96, :96]
    false = (yy - 45) ** 2 + (xx - 45) ** 2 <= 36
    prob[false] = 0.7  # support texture taken for a particle, a little less sure still
    rng = np.random.default_rng(0)
    image = (0.2 + 0.02 * rng.standard_normal(truth.shape)).astype(np.float32)
    image[truth > 0] += 0.6  # the particles stand out; the false one does not
    assert prob_to_instances(prob, 0.5).max() == 5

    def finish(k: int, labels: np.ndarray) -> np.ndarray:
        assert k == 0
        return drop_faint_particles(image, labels, 25)[0]

    assert finish(0, prob_to_instances(prob, 0.5)).max() == 4  # the filter drops the false one
    plain = select_min_peak([prob], [truth])
    assert plain["min_peak"] == 0.7  # drops the false particle, keeps the weak true one
    assert plain["f1"]["None"] == pytest.approx(2 * 4 / 9, abs=1e-4)
    kept = select_min_peak([prob], [truth], finish=finish)
    assert kept["f1"]["None"] == pytest.approx(1.0)
    assert kept["min_peak"] is None  # ties go to the smaller value: every particle
    assert kept["f1"]["0.75"] == pytest.approx(2 * 3 / 7, abs=1e-4)  # 0.75 loses the true one
    # growth is scored after the same filter
    grown = select_growth([prob], [truth], min_peak=None, finish=finish)
    assert grown["f1"]["None"] == pytest.approx(1.0)
    assert select_growth([prob], [truth], min_peak=None)["f1"]["None"] == \
        pytest.approx(2 * 4 / 9, abs=1e-4)


def _halo_prob(truth: np.ndarray, core: float = 0.9, halo: float = 0.35,
               width: int = 4) -> np.ndarray:
    """A map that is confident inside each particle but ``halo`` over its outer ``width`` px
    (an under-confident rim, as the segmentor gives on real images)."""
    from scipy import ndimage as ndi

    inner = ndi.binary_erosion(truth > 0, iterations=width)
    prob = np.full(truth.shape, 0.05, np.float32)
    prob[truth > 0] = halo
    prob[inner] = core
    return prob


def test_grow_instances_restores_outlines_without_making_particles():
    from emcopilot.postprocess import grow_instances

    truth = _discs(centres=((24, 24), (24, 47), (70, 60)), r=11)  # 1 and 2 touch
    prob = _halo_prob(truth)
    prob[80:90, 5:15] = 0.4  # a faint blob with no confident core: must stay background
    base = prob_to_instances(prob, 0.5)
    assert base.max() == 3 and np.count_nonzero(base) < 0.6 * np.count_nonzero(truth)
    grown = grow_instances(prob, base, 0.3)
    assert grown.dtype == np.int32
    assert sorted(np.unique(grown)) == sorted(np.unique(base))  # same particles, same ids
    assert not grown[80:90, 5:15].any()
    assert np.all(grown[base > 0] == base[base > 0])  # nothing taken from a particle
    # each particle now covers its true disc (the touching pair meets at their common rim)
    from emcopilot.metrics import match_instances

    m = match_instances(grown, truth)
    assert len(m.pairs) == 3 and float(np.min(m.pair_iou)) > 0.9
    assert np.count_nonzero(grown) == np.count_nonzero(truth)
    # "otsu": the image's own Otsu level
    np.testing.assert_array_equal(grow_instances(prob, base, "otsu"),
                                  grow_instances(prob, base, otsu_threshold(prob)))
    # a level above the threshold, or no particles: unchanged
    np.testing.assert_array_equal(grow_instances(prob, base, 0.6), base)
    assert not grow_instances(prob, np.zeros_like(base), 0.3).any()
    # prob_to_instances(grow_to=) is the same step
    np.testing.assert_array_equal(prob_to_instances(prob, 0.5, grow_to=0.3), grown)
    with pytest.raises(InputError, match="grow_to"):
        grow_instances(prob, base, 1.5)
    with pytest.raises(InputError, match="grow_to"):
        prob_to_instances(prob, 0.5, grow_to="lots")
    with pytest.raises(InputError, match="shape"):
        grow_instances(prob[:50], base, 0.3)


def test_select_growth_against_reference_masks():
    from emcopilot.postprocess import select_growth

    truth = _discs(centres=((24, 24), (24, 60), (70, 45)), r=12)
    prob = _halo_prob(truth, halo=0.45, width=5)  # Otsu falls between rim and background
    res = select_growth([prob], [truth])
    assert res["grow_to"] == "otsu"
    assert res["f1"]["otsu"] == pytest.approx(1.0) and res["f1"]["None"] < 1.0
    # references as small as the confident cores: growth would only hurt, so none
    cores = prob_to_instances(prob, 0.5)
    assert select_growth([prob], [cores]) == {"grow_to": None,
                                              "f1": {"None": 1.0, "otsu": res["f1"]["None"]}}
    # a tie goes to no growth; a given option is scored as it is
    clean = np.where(truth > 0, 0.95, 0.05).astype(np.float32)
    assert select_growth([clean], [truth])["grow_to"] is None
    assert select_growth([prob], [truth], options=[0.3])["grow_to"] == 0.3
    with pytest.raises(InputError):
        select_growth([prob], [truth], options=[])


def test_growth_on_real_particles_with_an_under_confident_rim(examples_dir):
    """A real EMPS image's manual particles seen through an under-confident map (blurred, so
    that the 0.5 level cuts every particle small): growth to the image's Otsu level brings the
    outlines back closer to the labels and keeps the particle count."""
    from scipy import ndimage as ndi

    from emcopilot.metrics import match_instances
    from emcopilot.postprocess import grow_instances

    stem = sorted(p.stem for p in (examples_dir / "emps" / "segmaps").glob("*.png"))[0]
    truth = io.read_label_map(examples_dir / "emps" / "segmaps" / f"{stem}.png")
    prob = 0.75 * ndi.gaussian_filter((truth > 0).astype(np.float32), 2.0)
    base = prob_to_instances(prob, 0.5, min_distance=0)
    grown = grow_instances(prob, base, "otsu")

    def dice(a: np.ndarray) -> float:
        return 2 * np.count_nonzero((a > 0) & (truth > 0)) / (np.count_nonzero(a)
                                                              + np.count_nonzero(truth))

    assert len(np.unique(grown)) == len(np.unique(base))
    assert dice(grown) > dice(base) + 0.02
    iou_base = np.mean(match_instances(base, truth).pair_iou)
    iou_grown = np.mean(match_instances(grown, truth).pair_iou)
    assert iou_grown > iou_base


def test_add_coarse_particles_adds_only_the_missed_particles_of_typical_size():
    """A coarse particle the segmentor left (almost) uncovered is added with a new id; one it
    covers, one it partly covers and a small fragment are not; the segmentor's particles stay."""
    from emcopilot.postprocess import add_coarse_particles

    seg = _discs(centres=((30, 30),))
    coarse = _discs(centres=((30, 30), (70, 70), (70, 25)))  # 1 found, 2 and 3 missed
    coarse[(coarse == 3) & (np.arange(96)[None, :] > 25)] = 0  # 3: a half disc, still typical
    coarse[5:8, 85:88] = 4  # a 9 px fragment, well under half the median particle area
    out = add_coarse_particles(seg, coarse)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out[seg > 0], seg[seg > 0])
    assert set(np.unique(out)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(out == 2, coarse == 2)  # missed particle: new id after seg's
    np.testing.assert_array_equal(out == 3, coarse == 3)
    assert not out[5:8, 85:88].any()
    # partly covered (more than covered_max) is the segmentor's business: not added
    seg2 = seg.copy()
    seg2[(coarse == 2) & (np.arange(96)[:, None] < 66)] = 5
    out2 = add_coarse_particles(seg2, coarse)
    assert not np.any((out2 > 0) & (seg2 == 0) & (coarse == 2))
    assert add_coarse_particles(seg2, coarse, covered_max=0.5).max() == 7
    # a lower area ratio lets the fragment in; nothing to add leaves the labels as they were
    assert add_coarse_particles(seg, coarse, min_area_ratio=0.0)[6, 86] > 0
    np.testing.assert_array_equal(add_coarse_particles(seg, np.zeros_like(seg)), seg)
    # with the segmentor's map: only where it saw a faint particle (mean at least the image's
    # Otsu level), not where it saw background
    prob = np.where(seg > 0, 0.9, 0.05).astype(np.float32)
    prob[coarse == 2] = 0.5  # under-confident: still a particle to the segmentor
    out3 = add_coarse_particles(seg, coarse, prob)
    assert set(np.unique(out3)) == {0, 1, 2}
    np.testing.assert_array_equal(out3 == 2, coarse == 2)  # 3 sits on background: not added
    # a segmentor that found no particle in the image: its map is blind there and says
    # nothing, so every typical coarse particle is added (blind_map_says: the map decides)
    none = np.zeros_like(seg)
    blind = np.full(seg.shape, 0.02, np.float32)
    blind[coarse == 1] = 0.01
    np.testing.assert_array_equal(add_coarse_particles(none, coarse, blind),
                                  add_coarse_particles(none, coarse))
    assert set(np.unique(add_coarse_particles(none, coarse, blind))) == {0, 1, 2, 3}
    assert add_coarse_particles(none, coarse, blind, blind_map_says=True).max() == 0
    with pytest.raises(InputError, match="probability map"):
        add_coarse_particles(seg, coarse, prob[:50])
    with pytest.raises(InputError, match="shape"):
        add_coarse_particles(seg, coarse[:50])
    with pytest.raises(InputError, match="covered_max"):
        add_coarse_particles(seg, coarse, covered_max=1.0)


def test_particle_contrast_is_inside_minus_its_ring():
    from emcopilot.postprocess import particle_contrast

    labels = _discs(shape=(64, 64), centres=((16, 16), (45, 45)), r=6)
    img = np.full((64, 64), 0.2, np.float32)
    img[labels == 1] = 0.9
    img[labels == 2] = 0.1  # darker than its surroundings
    c = particle_contrast(img, labels)
    assert np.isnan(c[0])
    assert c[1] == pytest.approx(0.7) and c[2] == pytest.approx(-0.1)
    # a ring wholly excluded: no contrast
    assert np.isnan(particle_contrast(img, labels, exclude=labels == 0)[1])
    with pytest.raises(InputError, match="shape"):
        particle_contrast(img[:10], labels)


def test_add_coarse_particles_with_the_image_adds_what_looks_like_the_agreed_particles():
    """With the image, a missed coarse particle is also added when it stands out from its
    surroundings as much as the particles both maskers found (the given quantile of their
    contrast); a faint blob of background texture is not; with the probability map too, either
    one's say-so will do. Too few agreed particles: the image says nothing."""
    from emcopilot.postprocess import add_coarse_particles

    centres = ((15, 15), (15, 48), (15, 81), (48, 15), (48, 48), (81, 81))
    coarse = _discs(centres=centres, r=7)
    seg = np.where(coarse <= 3, coarse, 0).astype(np.int32)  # 1-3 found; 4, 5, 6 missed
    rng = np.random.default_rng(0)
    img = (0.2 + 0.01 * rng.standard_normal((96, 96))).astype(np.float32)
    for k, level in ((1, 0.80), (2, 0.85), (3, 0.90), (4, 0.84), (5, 0.30), (6, 0.86)):
        img[coarse == k] = level  # 5: faint texture the coarse masker picked up
    out = add_coarse_particles(seg, coarse, image01=img)
    assert [bool(np.all(out[coarse == k] > 3)) for k in (4, 5, 6)] == [True, False, True]
    np.testing.assert_array_equal(out[seg > 0], seg[seg > 0])
    # the lowest agreed contrast (0.6) as the level keeps 4 (0.64); the top one (0.7) drops it
    assert np.all(add_coarse_particles(seg, coarse, image01=img, contrast_quantile=0.0)[
        coarse == 4] > 3)
    assert not np.any(add_coarse_particles(seg, coarse, image01=img, contrast_quantile=1.0)[
        coarse == 4])
    # probability or image: 5 comes in on the segmentor's say-so, 4 and 6 on the image's
    prob = np.where(seg > 0, 0.9, 0.05).astype(np.float32)
    prob[coarse == 5] = 0.6
    both = add_coarse_particles(seg, coarse, prob, image01=img)
    assert all(np.all(both[coarse == k] > 3) for k in (4, 5, 6))
    only_prob = add_coarse_particles(seg, coarse, prob)
    assert np.all(only_prob[coarse == 5] > 3) and not only_prob[coarse == 4].any()
    # fewer agreed particles than confirmed_min: no say from the image (all typical ones added)
    loose = add_coarse_particles(seg, coarse, image01=img, confirmed_min=4)
    assert all(np.all(loose[coarse == k] > 3) for k in (4, 5, 6))
    with pytest.raises(InputError, match="image"):
        add_coarse_particles(seg, coarse, image01=img[:50])
    with pytest.raises(InputError, match="contrast_quantile"):
        add_coarse_particles(seg, coarse, image01=img, contrast_quantile=1.5)


def test_add_coarse_particles_restores_the_particles_of_real_masks(examples_dir):
    """A real EMPS image's manual particles as the coarse mask and a segmentation that missed
    every other one: the missed particles of typical size come back exactly, none is doubled."""
    from emcopilot.postprocess import add_coarse_particles

    stem = sorted(p.stem for p in (examples_dir / "emps" / "segmaps").glob("*.png"))[0]
    truth = io.read_label_map(examples_dir / "emps" / "segmaps" / f"{stem}.png")
    ids = [i for i in np.unique(truth) if i]
    assert len(ids) >= 6
    seg = np.where(np.isin(truth, ids[::2]), truth, 0).astype(np.int32)
    out = add_coarse_particles(seg, truth)
    area = np.bincount(truth.ravel())
    typical = [i for i in ids[1::2] if area[i] >= 0.5 * np.median(area[ids])]
    assert typical  # the test means something
    assert len(np.unique(out)) - 1 == len(ids[::2]) + len(typical)
    for i in typical:  # each missed particle of typical size is one new particle, whole
        new = np.unique(out[truth == i])
        assert len(new) == 1 and new[0] > seg.max()
        np.testing.assert_array_equal(out == new[0], truth == i)


def test_best_matching_picks_the_map_closest_to_the_reference_ties_to_the_first():
    from emcopilot.postprocess import best_matching

    ref = np.zeros((40, 40), np.int32)
    ref[5:15, 5:15], ref[25:35, 25:35] = 1, 2
    half = np.where(ref == 1, 1, 0)  # one of the two particles
    merged = np.zeros_like(ref)
    merged[5:35, 5:35] = 1  # one particle over both (IoU 1/9 with each)
    shifted = np.roll(ref, 6, axis=1)  # both moved: IoU 0.25
    assert best_matching([half, ref, merged], ref) == 1
    assert best_matching([merged, shifted, half], ref) == 2
    assert best_matching([half, half.copy()], ref) == 0  # a tie: the first
    assert best_matching([np.zeros_like(ref)], ref) == 0
    with pytest.raises(InputError):
        best_matching([], ref)


def test_noise_sigma_measures_the_pixel_noise_not_the_structure():
    """Immerkaer's estimate: Gaussian noise of known sigma on a smooth image with a gradient
    and large particles comes back within 10 %; the structure alone gives almost none."""
    from emcopilot.postprocess import noise_sigma

    yy, xx = np.mgrid[:256, :256]
    from scipy import ndimage as ndi

    smooth = 0.2 + 0.3 * xx / 255 + 0.4 * (((yy - 128) ** 2 + (xx - 90) ** 2) < 30 ** 2)
    smooth = ndi.gaussian_filter(smooth, 3)
    assert noise_sigma(smooth) < 0.003
    rng = np.random.default_rng(0)
    for sigma in (0.01, 0.05, 0.1):
        assert noise_sigma(smooth + sigma * rng.standard_normal(smooth.shape)) == \
            pytest.approx(sigma, rel=0.1)
    assert noise_sigma(np.zeros((2, 9))) == 0.0
    with pytest.raises(InputError):
        noise_sigma(np.zeros((4, 4, 3)))


def test_drop_faint_particles_drops_what_noise_makes_and_keeps_what_stands_out():
    """Particles of a noisy image: bright ones (contrast x sqrt(area) / sigma far above the
    level) are kept with their pixels, blobs of pure noise taken for particles are dropped,
    the rest renumbered 1..n; off (None, 0) keeps everything; bad levels are refused."""
    from scipy import ndimage as ndi

    from emcopilot.postprocess import drop_faint_particles, particle_snr

    rng = np.random.default_rng(1)
    img = 0.3 + 0.05 * rng.standard_normal((120, 120))
    lab = np.zeros((120, 120), np.int32)
    for k, (y, x) in enumerate(((10, 10), (10, 60), (60, 10), (60, 60)), 1):
        img[y:y + 12, x:x + 12] += 0.3  # real particles: SNR about 0.3 * 12 / 0.05 = 72
        lab[y:y + 12, x:x + 12] = k
    # noise blobs: the brightest 4 x 4 patches of the noise in the empty corner
    noise = ndi.uniform_filter(img, 4)
    for k in range(5, 9):
        corner = np.where(lab[95:, 95:] == 0, noise[95:, 95:], -1)
        y, x = np.unravel_index(np.argmax(corner), corner.shape)
        y, x = min(95 + y, 114), min(95 + x, 114)
        lab[y - 2:y + 2, x - 2:x + 2] = np.where(lab[y - 2:y + 2, x - 2:x + 2] == 0, k,
                                                 lab[y - 2:y + 2, x - 2:x + 2])
        noise[y - 3:y + 3, x - 3:x + 3] = -1
    snr = particle_snr(img, lab)
    assert (snr[1:5] > 50).all() and (snr[5:] < 25).all()
    out, dropped = drop_faint_particles(img, lab, 25)
    assert dropped == len(np.unique(lab[lab > 4]))
    assert int(out.max()) == 4 and set(np.unique(out)) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(out > 0, (lab > 0) & (lab <= 4))
    for level in (None, 0):
        same, none = drop_faint_particles(img, lab, level)
        np.testing.assert_array_equal(same, lab)
        assert none == 0
    # a particle with no background ring around it (it fills the frame) is kept
    full = np.ones((20, 20), np.int32)
    assert drop_faint_particles(img[:20, :20], full, 1000)[1] == 0
    for bad in (-1, float("nan"), "x"):
        with pytest.raises(InputError):
            drop_faint_particles(img, lab, bad)
    with pytest.raises(InputError):
        drop_faint_particles(img[:50], lab, 25)


def test_the_labelled_particles_of_real_catalyst_images_are_not_faint(examples_dir):
    """The bundled S/TEM catalyst images' labelled particles (their YOLO boxes' ellipses) stand
    out at the pipeline's level: at most 5 % of them would be dropped."""
    from bench.bench_faint_particles import boxes_as_particles
    from emcopilot.evaluate import read_yolo_boxes
    from emcopilot.postprocess import MIN_SNR_DEFAULT, drop_faint_particles

    total = dropped = 0
    for path in sorted((examples_dir / "catalysts" / "images").glob("*.jpg")):
        image = io.bright_particles(io.normalize(io.read_micrograph(path).image), "auto")
        boxes = read_yolo_boxes(examples_dir / "catalysts" / "labels" / f"{path.stem}.txt",
                                image.shape)
        lab = boxes_as_particles(boxes, image.shape)
        total += len(np.unique(lab)) - 1
        dropped += drop_faint_particles(image, lab, MIN_SNR_DEFAULT)[1]
    assert total > 400
    assert dropped <= 0.05 * total


def test_on_noisy_silica_supports_the_faint_particles_are_the_false_ones(shared_data):
    """The classical masker on two noisy Pd/silica HAADF images finds several times more
    particles than are labelled, mostly support texture; dropping the faint ones brings the
    count near the labelled one and raises the box F1 a lot (BENCHMARKS.md, stop 28)."""
    from emcopilot.evaluate import _box_match, label_boxes, read_yolo_boxes
    from emcopilot.masking import coarse_mask
    from emcopilot.postprocess import MIN_SNR_DEFAULT, drop_faint_particles

    root = shared_data / "ardagen_stem_catalysts_yolo"
    for stem in ("Pd_silica1", "Pd_silica2"):
        image = io.bright_particles(
            io.normalize(io.read_micrograph(root / "images" / f"{stem}.jpg").image), "auto")
        truth = read_yolo_boxes(root / "labels" / f"{stem}.txt", image.shape)

        def f1(labels):
            pred = label_boxes(labels)
            return 2 * len(_box_match(pred, truth, 0.5)[0]) / (len(pred) + len(truth))

        coarse = coarse_mask(image, method="classical", polarity="bright")
        kept, dropped = drop_faint_particles(image, coarse, MIN_SNR_DEFAULT)
        n_before, n_after = int(coarse.max()), int(kept.max())
        assert n_before > 2.5 * len(truth)
        assert abs(n_after - len(truth)) < 0.3 * abs(n_before - len(truth))
        assert f1(kept) > f1(coarse) + 0.15


def _expansions_agree(labels, distances=(1, 3, 5)):
    from skimage.segmentation import expand_labels

    from emcopilot.postprocess import expand_labels_near

    return all(np.array_equal(expand_labels_near(labels, d), expand_labels(labels, d))
               for d in distances)


def test_expand_labels_near_is_skimages_expand_labels(examples_dir):
    """The windowed expansion gives skimage's pixels and labels exactly: on real instance masks
    (dense EMPS particles), on the classical masker's particles of real catalyst frames (sparse,
    2048 px), and on random maps full of equidistant ties; a map without particles, a distance
    of 0 and a 3-D map are handled."""
    from skimage.segmentation import expand_labels

    from emcopilot.masking import coarse_mask
    from emcopilot.postprocess import expand_labels_near

    maps = [io.read_label_map(p) for p in sorted((examples_dir / "emps" / "segmaps").glob("*"))]
    for path in sorted((examples_dir / "catalysts" / "images").glob("*.jpg"))[:3]:
        image = io.normalize(io.read_micrograph(path).image)
        maps.append(coarse_mask(image, method="classical", polarity="auto"))
    assert len(maps) >= 5 and all(m.max() > 3 for m in maps)
    assert all(_expansions_agree(m) for m in maps)
    rng = np.random.default_rng(0)
    for k in range(200):
        lab = np.zeros((40, 50), np.int32)
        n = int(rng.integers(1, 30))
        lab[rng.integers(0, 40, n), rng.integers(0, 50, n)] = np.arange(1, n + 1)
        lab = expand_labels(lab, 1) if k % 2 else lab
        assert _expansions_agree(lab, (1, 2, 3, 4)), k
    empty = np.zeros((8, 8), np.int32)
    assert not expand_labels_near(empty, 3).any()
    assert np.array_equal(expand_labels_near(maps[0], 0), maps[0])
    with pytest.raises(InputError, match="2-D"):
        expand_labels_near(np.zeros((2, 4, 4), np.int32), 3)


def test_expand_labels_near_on_the_emps_test_masks(shared_data):
    """All 99 EMPS test instance masks at the faint filter's ring width: the same as skimage."""
    paths = sorted((shared_data / "emps_test" / "segmaps").glob("*.png"))
    assert len(paths) == 99
    assert all(_expansions_agree(io.read_label_map(p), (3,)) for p in paths)
