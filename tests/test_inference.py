"""Tiled inference, probability -> instances, folder segmentation, on a briefly trained tiny net."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emcopilot import io
from emcopilot.errors import InputError
from emcopilot.inference import (Segmentor, blend_window, fuse_batchnorm, segment_folder,
                                 tiled_apply)
from emcopilot.nets import UNetPlusPlus
from emcopilot.training import save_checkpoint
from emcopilot.training.losses import segmentation_loss

torch.set_num_threads(2)
STEM = "31121ca5cf"


@pytest.fixture(scope="module")
def real(examples_dir):
    d = examples_dir / "emps"
    img = io.normalize(io.read_micrograph(d / "images" / f"{STEM}.png").image)
    truth = io.read_label_map(d / "segmaps" / f"{STEM}.png")
    return img, truth


@pytest.fixture(scope="module")
def segmentor(real):
    """UNet++ (base 4, depth 3) trained for a few steps on 64 px crops of one real image."""
    img, truth = real
    msk = (truth > 0).astype(np.float32)
    torch.manual_seed(0)
    net = UNetPlusPlus(base=4, depth=3, attention="cbam")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(25):
        ys, xs = rng.integers(0, img.shape[0] - 64, 2), rng.integers(0, img.shape[1] - 64, 2)
        x = torch.from_numpy(np.stack([img[y:y + 64, x:x + 64] for y, x in zip(ys, xs)]))[:, None]
        t = torch.from_numpy(np.stack([msk[y:y + 64, x:x + 64] for y, x in zip(ys, xs)]))[:, None]
        loss = segmentation_loss(net(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return Segmentor(net, {"config": {"image_size": 64}}, torch.device("cpu"))


def test_blend_window_is_positive_and_symmetric():
    w = blend_window(16)
    assert w.shape == (16, 16) and w.min() > 0 and w.max() <= 1
    assert np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])


def test_tiled_apply_is_exact_for_pointwise_functions():
    rng = np.random.default_rng(0)
    for shape in [(100, 70), (20, 13), (64, 64)]:
        a = rng.random(shape).astype(np.float32)
        out = tiled_apply(lambda t: t * 3 + 1, a, 32)
        assert out.shape == a.shape
        assert np.allclose(out, a * 3 + 1, atol=1e-5)


def test_tiled_matches_untiled_away_from_seams(segmentor, real):
    img, truth = real
    part = img[:128, :128]  # 2 x 2 tiles of the 64 px training size
    tiled = segmentor.predict_proba(part, tile=64)
    whole = segmentor.predict_proba(part, tiled=False)
    np.testing.assert_array_equal(segmentor.predict_proba(part), whole)  # fits: run whole
    assert tiled.shape == whole.shape == (128, 128)
    assert whole.std() > 0.05  # the net is not constant, so the comparison means something
    diff = np.abs(tiled - whole)[16:-16, 16:-16]
    assert diff.mean() < 0.03
    assert np.percentile(diff, 99) < 0.15


def test_fuse_batchnorm_keeps_outputs(segmentor, real):
    img, _ = real
    net = segmentor.model
    fused = fuse_batchnorm(net)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert n_bn > 0 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == n_bn  # untouched
    x = torch.from_numpy(np.ascontiguousarray(img[:128, :128]))[None, None]
    with torch.inference_mode():
        a, b = net(x), fused(x.contiguous(memory_format=torch.channels_last))
    assert a.abs().max() > 0.1
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    # the Segmentor runs the fused copy: same probabilities as the unfused model
    plain = Segmentor(net, segmentor.config, torch.device("cpu"), fuse=False)
    np.testing.assert_allclose(segmentor.predict_proba(img[:128, :128]),
                               plain.predict_proba(img[:128, :128]), atol=1e-5)
    # opt-in bf16 autocast on CPU: close to fp32, but not bit-identical
    bf = Segmentor(net, segmentor.config, torch.device("cpu"), cpu_bf16=True)
    p16, p32 = bf.predict_proba(img[:128, :128]), segmentor.predict_proba(img[:128, :128])
    assert p16.dtype == np.float32 and np.abs(p16 - p32).max() < 0.05
    assert np.mean((p16 > 0.5) != (p32 > 0.5)) < 0.01


def test_whole_image_agrees_with_training_size_tiles(segmentor, real):
    """The default (whole 512 px image) against the previous default (64 px training tiles)."""
    img, truth = real
    whole = segmentor.predict_proba(img)
    tiled = segmentor.predict_proba(img, tile=64)
    pw, pt = whole > 0.5, tiled > 0.5
    assert (pw & pt).sum() / (pw | pt).sum() > 0.9
    assert np.abs(whole - tiled).mean() < 0.03
    gt = truth > 0
    iou_w, iou_t = ((pw & gt).sum() / (pw | gt).sum()), ((pt & gt).sum() / (pt | gt).sum())
    assert iou_w > iou_t - 0.03
    # images larger than max_tile are tiled at max_tile
    small = Segmentor(segmentor.model, segmentor.config, torch.device("cpu"), max_tile=100)
    assert small.max_tile == 96  # multiple of 2**depth = 8
    np.testing.assert_array_equal(small.predict_proba(img[:200, :150]),
                                  segmentor.predict_proba(img[:200, :150], tile=96))
    with pytest.raises(InputError):
        segmentor.predict_proba(img, tile=60)


def test_predict_proba_any_size_and_scale(segmentor, real):
    img, truth = real
    prob = segmentor.predict_proba(img)
    assert prob.shape == img.shape and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    pred, gt = prob > 0.5, truth > 0
    iou = (pred & gt).sum() / (pred | gt).sum()
    assert iou > 0.6  # tiles are stitched coherently over the whole 512 px image
    small = segmentor.predict_proba(img[:50, :37])
    assert small.shape == (50, 37)
    scaled = segmentor.predict_proba(img, scale=0.5)
    assert scaled.shape == img.shape
    with pytest.raises(InputError):
        segmentor.predict_proba(np.zeros((4, 4, 3), np.float32))


def test_segment_returns_a_label_map(segmentor, real):
    img, truth = real
    labels, prob = segmentor.segment(img, threshold=0.5, min_area=10)
    assert labels.shape == img.shape and labels.dtype == np.int32
    n = int(labels.max())
    assert n >= 5
    assert set(np.unique(labels)) == set(range(n + 1))
    # particle pixels are above the threshold, or holes enclosed by such pixels (filled)
    from scipy import ndimage as ndi

    above = prob > 0.5
    assert np.all(above[labels > 0] | ndi.binary_fill_holes(above)[labels > 0])
    n_truth = len(np.unique(truth)) - 1
    assert 0.3 * n_truth <= n <= 3 * n_truth
    # a higher threshold never adds particle pixels
    labels_hi, _ = segmentor.segment(img, threshold=0.8)
    assert np.count_nonzero(labels_hi) <= np.count_nonzero(labels)


def test_segment_folder_writes_label_and_prob_maps(segmentor, examples_dir, tmp_path):
    ck = save_checkpoint(tmp_path / "ck", segmentor.model, None, {"image_size": 64}, epoch=1)
    loaded = Segmentor.load(ck, device="cpu")
    assert loaded.image_size == 64
    src = examples_dir / "emps" / "images"
    files = [src / f"{STEM}.png", src / "391ef00939.png"]
    done = []
    out = segment_folder(files, ck, tmp_path / "pred", device="cpu",
                         progress=lambda d, t, m: done.append(d))
    assert [p.name for p in out] == [f"{STEM}.png", "391ef00939.png"] and done == [1, 2]
    for p, f in zip(out, files):
        labels = io.read_label_map(p)
        shape = io.read_micrograph(f).image.shape
        assert labels.shape == shape and labels.max() > 0
        prob = io.read_micrograph(tmp_path / "pred" / "prob" / p.name).image
        assert prob.shape == shape
    # the loaded checkpoint predicts exactly what the in-memory model predicts
    img = io.normalize(io.read_micrograph(files[0]).image)
    np.testing.assert_array_equal(io.read_label_map(out[0]), segmentor.segment(img)[0])


def test_segment_uses_the_checkpoint_threshold(segmentor, real, tmp_path):
    img, _ = real
    assert segmentor.threshold == 0.5  # no calibrated threshold in this config
    ck = save_checkpoint(tmp_path / "ck", segmentor.model, None,
                         {"image_size": 64, "threshold": 0.8}, epoch=1)
    calibrated = Segmentor.load(ck, device="cpu")
    assert calibrated.threshold == 0.8
    np.testing.assert_array_equal(calibrated.segment(img)[0], segmentor.segment(img, 0.8)[0])
    # an explicit threshold still wins, and "otsu" picks one per image
    np.testing.assert_array_equal(calibrated.segment(img, 0.5)[0], segmentor.segment(img)[0])
    assert calibrated.segment(img, "otsu")[0].max() > 0
    # "calibrated": the validation-calibrated threshold recorded at training, when there is one
    with pytest.raises(InputError, match="no calibrated threshold"):
        calibrated.segment(img, "calibrated")
    ck2 = save_checkpoint(tmp_path / "ck2", segmentor.model, None,
                          {"image_size": 64, "calibrated_threshold": 0.7}, epoch=1)
    cal2 = Segmentor.load(ck2, device="cpu")
    assert cal2.threshold == 0.5 and cal2.calibrated_threshold == 0.7
    np.testing.assert_array_equal(cal2.segment(img, "calibrated")[0],
                                  segmentor.segment(img, 0.7)[0])


def test_a_bright_trained_segmentor_sees_every_image_with_bright_particles(segmentor, real,
                                                                           tmp_path):
    img, truth = real  # this example has dark particles on a light background
    assert img[truth > 0].mean() < img[truth == 0].mean()
    bright = (1.0 - img).astype(np.float32)
    assert segmentor.input_polarity is None  # trained on images as they are: nothing converted
    np.testing.assert_array_equal(segmentor.prepare(img, "dark"), img)
    ck = save_checkpoint(tmp_path / "ck", segmentor.model, None,
                         {"image_size": 64, "input_polarity": "bright"}, epoch=1)
    bright_model = Segmentor.load(ck, device="cpu")
    assert bright_model.input_polarity == "bright"
    np.testing.assert_allclose(bright_model.prepare(img, "dark"), bright, atol=1e-6)
    reference = segmentor.segment(bright)[0]  # what the network makes of the bright version
    # the dark-particle micrograph and its bright version give the same particles, whether the
    # polarity is given or detected
    for image, pol in ((img, "dark"), (img, "auto"), (bright, "bright"), (bright, "auto")):
        np.testing.assert_array_equal(bright_model.segment(image, polarity=pol)[0], reference)
    # without the conversion the network sees the other polarity and finds other particles
    assert not np.array_equal(segmentor.segment(img)[0], reference)


def test_a_scale_normalised_segmentor_resizes_each_image(segmentor, real, tmp_path):
    from emcopilot.particle_scale import normalising_scale

    img, truth = real
    assert segmentor.particle_diameter_px is None
    assert segmentor.resolve_scale(img, None, truth) is None
    ck = save_checkpoint(tmp_path / "ck", segmentor.model, None,
                         {"image_size": 64, "particle_diameter_px": 20.0,
                          "scale_preset": "isolated"}, epoch=1)
    scaled = Segmentor.load(ck, device="cpu")
    assert scaled.particle_diameter_px == 20.0
    s = scaled.resolve_scale(img, None, truth)
    assert s == pytest.approx(normalising_scale(truth, 20.0)) and s != 1.0
    assert scaled.resolve_scale(img, 0.7, truth) == 0.7  # an explicit factor wins
    # without a mask the classical masker measures the particles
    assert 0.5 < scaled.resolve_scale(img) / s < 2.0
    labels, prob = scaled.segment(img, scale_labels=truth)
    assert labels.shape == img.shape and prob.shape == img.shape
    np.testing.assert_allclose(prob, segmentor.predict_proba(img, scale=s), atol=1e-6)


def test_choose_min_peak_against_references_and_the_model_uses_it(segmentor, real, tmp_path):
    """choose_min_peak: "auto" records select_min_peak's choice in the checkpoint, where
    Segmentor reads it as its default core probability (segment / the app then drop the fainter
    particles); a given value is scored at that value and recorded as it is."""
    from emcopilot.inference import choose_min_peak
    from emcopilot.postprocess import MIN_PEAK_GRID, select_growth, select_min_peak

    img, truth = real
    ck = save_checkpoint(tmp_path / "ck", segmentor.model, None, {"image_size": 64}, epoch=1)
    prob = Segmentor.load(ck, device="cpu").probability(img)
    prob = np.round(prob * 255) / 255  # the choice is made on 8-bit maps, as the pipeline stores
    # a reference that keeps only the confident particles: the choice must drop the rest
    every = segmentor.instances(prob, min_peak=None)
    peaks = [float(prob[every == i].max()) for i in range(1, int(every.max()) + 1)]
    assert len(peaks) >= 3 and max(peaks) - min(peaks) > 0.1, peaks
    splits = [g for g in MIN_PEAK_GRID if g is not None and min(peaks) < g < max(peaks)]
    assert splits, peaks
    cut = min(splits, key=lambda g: abs(g - float(np.median(peaks))))
    reference = segmentor.instances(prob, min_peak=cut)
    assert 0 < reference.max() < every.max()
    choice = choose_min_peak(segmentor, ck, [prob], [reference], reference="test labels")
    expected = select_min_peak([prob], [reference], fill_holes=True)
    growth = select_growth([prob], [reference], fill_holes=True, min_peak=expected["min_peak"])
    assert growth["grow_to"] is None  # the reference is the particles as cut: nothing to grow
    assert choice == {**expected, "grow_to": None, "grow_f1": growth["f1"], "score": 1.0}
    assert choice["min_peak"] is not None and choice["f1"]["None"] < 1.0
    seg = Segmentor.load(ck, device="cpu")
    assert seg.min_peak == choice["min_peak"]
    assert seg.config["config"]["min_peak_reference"] == "test labels"
    np.testing.assert_array_equal(seg.instances(prob), reference)
    assert seg.instances(prob, min_peak=None).max() == every.max()
    # every particle: scored as it is, and the earlier choice does not survive in the record
    kept = choose_min_peak(segmentor, ck, [prob], [reference], min_peak=None)
    assert kept["min_peak"] is None and kept["score"] == expected["f1"]["None"]
    assert Segmentor.load(ck, device="cpu").min_peak is None
    # references with the particles grown to the image's Otsu level: growth is chosen,
    # recorded, and the model's particles are then the grown ones
    grown_ref = segmentor.instances(prob, min_peak=cut, grow_to="otsu")
    assert np.count_nonzero(grown_ref) > np.count_nonzero(reference)
    grown = choose_min_peak(segmentor, ck, [prob], [grown_ref])
    assert grown["grow_to"] == "otsu" and grown["score"] == grown["grow_f1"]["otsu"]
    seg = Segmentor.load(ck, device="cpu")
    assert seg.grow_to == "otsu" and seg.config["config"]["grow_f1"] == grown["grow_f1"]
    np.testing.assert_array_equal(seg.instances(prob, min_peak=grown["min_peak"]),
                                  segmentor.instances(prob, min_peak=grown["min_peak"],
                                                      grow_to="otsu"))
    assert seg.instances(prob, grow_to=None).max() == seg.instances(prob).max()
    # growth switched off by the caller
    assert choose_min_peak(segmentor, ck, [prob], [grown_ref], grow_to=None)["grow_to"] is None
    assert Segmentor.load(ck, device="cpu").grow_to is None


def test_choose_min_peak_scores_after_the_faint_filter(segmentor, real, tmp_path, monkeypatch):
    """With the images and a faint-particle level, choose_min_peak scores each core
    probability's particles after the filter segmenting applies (drop_faint_above_bar), and
    records the level; without a level (or without images) it scores them as they are."""
    from emcopilot.inference import choose_min_peak, drop_faint_above_bar
    from emcopilot.postprocess import particle_snr, select_growth, select_min_peak

    img, truth = real
    bright = io.bright_particles(img, "auto")
    ck = save_checkpoint(tmp_path / "ck", segmentor.model, None, {"image_size": 64}, epoch=1)
    prob = np.round(Segmentor.load(ck, device="cpu").probability(img) * 255) / 255
    every = segmentor.instances(prob, min_peak=None)
    snr = particle_snr(bright, every)[1:]
    snr = snr[np.isfinite(snr)]
    level = float(np.median(snr))  # a level that drops about half of the particles
    dropped = drop_faint_above_bar(bright, every, level)[1]
    assert 0 < dropped < every.max()

    def finish(k: int, labels: np.ndarray) -> np.ndarray:
        assert k in (0, 1)
        return drop_faint_above_bar(bright, labels, level)[0]

    images = [bright, bright]
    reads = []

    def image(k: int) -> np.ndarray:
        reads.append(k)
        return images[k]

    # the image twice: each is read, and its noise measured, once for all the values scored,
    # once per selector; the filter is handed that noise level instead of measuring it again
    import emcopilot.inference as inference_module
    import emcopilot.postprocess as postprocess_module

    measured = {"once": 0, "per_map": 0}

    def counting(where, real_sigma):
        def sigma(rows):
            measured[where] += 1
            return real_sigma(rows)
        return sigma

    monkeypatch.setattr(inference_module, "noise_sigma",
                        counting("once", postprocess_module.noise_sigma))
    monkeypatch.setattr(postprocess_module, "noise_sigma",
                        counting("per_map", postprocess_module.noise_sigma))
    choice = choose_min_peak(segmentor, ck, [prob, prob], [truth, truth], images=image,
                             min_snr=level)
    monkeypatch.undo()
    assert reads == [0, 1, 0, 1]
    assert measured == {"once": 4, "per_map": 0}
    expected = select_min_peak([prob] * 2, [truth] * 2, fill_holes=True, finish=finish)
    growth = select_growth([prob] * 2, [truth] * 2, fill_holes=True,
                           min_peak=expected["min_peak"], finish=finish)
    assert choice == {**expected, "grow_to": growth["grow_to"], "grow_f1": growth["f1"],
                      "score": growth["f1"][str(growth["grow_to"])]}
    plain = select_min_peak([prob] * 2, [truth] * 2, fill_holes=True)
    assert choice["f1"] != plain["f1"]  # the filter changed what was scored
    config = Segmentor.load(ck, device="cpu").config["config"]
    assert config["min_peak_min_snr"] == level and config["min_peak_f1"] == expected["f1"]
    # no level, or no images: the particles as they are, and no level recorded
    for kwargs in ({"images": images.__getitem__, "min_snr": None},
                   {"images": images.__getitem__, "min_snr": 0}, {"min_snr": level}):
        again = choose_min_peak(segmentor, ck, [prob] * 2, [truth] * 2, **kwargs)
        assert again["f1"] == plain["f1"]
        assert Segmentor.load(ck, device="cpu").config["config"]["min_peak_min_snr"] is None


def test_choose_min_peak_scores_without_the_particles_on_drawn_annotations(segmentor, tmp_path):
    """With the images and ``annotations``, choose_min_peak scores each candidate after the
    particles on drawn text and scale bars are dropped, found once per image on the rows above
    its data bar, as segmenting drops them; a bright label whose glyphs the probability map
    takes for particles then no longer counts against the candidates."""
    from skimage.measure import label

    from emcopilot.annotations import drop_annotation_particles
    from emcopilot.inference import choose_min_peak
    from emcopilot.postprocess import select_growth, select_min_peak
    from tests.conftest import with_data_bar
    from tests.test_annotations import dark_field, with_label

    scene = with_label(dark_field())  # particles and a white "200 nm" label with its bar
    framed = with_data_bar(np.round(scene * 255).astype(np.uint8)).astype(np.float32) / 255
    height = scene.shape[0]

    truth = np.zeros(framed.shape, np.int32)
    truth[:height] = label(dark_field() > 0.6)
    prob = np.zeros(framed.shape, np.float32)
    prob[:height] = scene  # the map sees the label's glyphs as particles too
    prob = np.round(prob * 255) / 255
    ck = save_checkpoint(tmp_path / "ck", segmentor.model, None, {"image_size": 64}, epoch=1)

    def finish(k: int, labels: np.ndarray) -> np.ndarray:
        out = labels.copy()
        out[:height] = drop_annotation_particles(scene, labels[:height])[0]
        out[height:] = 0
        return out

    choice = choose_min_peak(segmentor, ck, [prob], [truth], images=lambda k: framed,
                             annotations=True)
    expected = select_min_peak([prob], [truth], fill_holes=True, finish=finish)
    growth = select_growth([prob], [truth], fill_holes=True, min_peak=expected["min_peak"],
                           finish=finish)
    assert choice == {**expected, "grow_to": growth["grow_to"], "grow_f1": growth["f1"],
                      "score": growth["f1"][str(growth["grow_to"])]}
    plain = choose_min_peak(segmentor, ck, [prob], [truth])
    # every candidate scores at least as well without the label's glyphs, some better
    assert all(choice["f1"][v] >= plain["f1"][v] for v in plain["f1"])
    assert choice["f1"] != plain["f1"]
    # without images there is nothing to find annotations on: the particles as they are
    assert choose_min_peak(segmentor, ck, [prob], [truth], annotations=True)["f1"] == plain["f1"]


def test_output_filter_finds_bar_annotations_and_noise_once_and_drops_as_the_two_steps(
        monkeypatch):
    """OutputFilter: the particles on drawn annotations, then the faint ones, dropped on the rows
    above a data bar, the same as drop_annotations_above_bar then drop_faint_above_bar; the bar,
    the annotations and the noise are found once however many label maps it filters."""
    from skimage.measure import label

    import emcopilot.inference as inference
    from emcopilot.data_bar import find_data_bar
    from emcopilot.annotations import drop_annotation_particles
    from emcopilot.inference import (OutputFilter, drop_annotations_above_bar,
                                     drop_faint_above_bar)
    from emcopilot.postprocess import drop_faint_particles, particle_snr
    from tests.conftest import with_data_bar
    from tests.test_annotations import dark_field, with_label

    scene = with_label(dark_field())  # particles and a white "200 nm" label with its bar
    framed = with_data_bar(np.round(scene * 255).astype(np.uint8)).astype(np.float32) / 255
    height = scene.shape[0]
    labels = np.zeros(framed.shape, np.int32)
    labels[:height] = label(scene > 0.6)  # the particles and the label's glyphs
    labels[height + 2:height + 6, 5:40] = labels.max() + 1  # one on the data bar
    level = float(np.nanmedian(particle_snr(framed[:height], labels[:height])[1:]))

    calls = {"bar": 0, "annotations": 0, "noise": 0}

    def counted(name, f):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return f(*args, **kwargs)
        return wrapper

    monkeypatch.setattr("emcopilot.data_bar.find_data_bar", counted("bar", find_data_bar))
    monkeypatch.setattr(inference, "find_annotations",
                        counted("annotations", inference.find_annotations))
    monkeypatch.setattr(inference, "noise_sigma", counted("noise", inference.noise_sigma))
    filt = OutputFilter(framed, min_snr=level, annotations=True)
    out, n_drawn, n_faint = filt(labels)
    again = filt(labels.copy())
    assert calls == {"bar": 1, "annotations": 1, "noise": 1}
    np.testing.assert_array_equal(again[0], out)
    assert filt.top == height

    # the two steps by hand, on the rows above the bar
    rows = framed[:height]
    step, n_step = drop_annotation_particles(rows, labels[:height])
    step, f_step = drop_faint_particles(rows, step, level)
    np.testing.assert_array_equal(out[:height], step)
    assert (n_drawn, n_faint) == (n_step, f_step)
    # and the one-step helpers agree
    both = drop_faint_above_bar(framed, drop_annotations_above_bar(framed, labels)[0], level)[0]
    np.testing.assert_array_equal(both, out)
    assert n_drawn >= 4 and n_faint >= 1  # the label's glyphs and bar, some faint particles
    assert out.shape == labels.shape and not out[height:].any()  # nothing on the data bar
    assert set(np.unique(out)) <= set(np.unique(labels))
    # each step alone; neither: the particles above the bar as they are
    assert OutputFilter(framed, annotations=True)(labels)[2] == 0
    assert OutputFilter(framed, min_snr=level)(labels)[1] == 0
    calls["bar"] = 0
    kept, n0, f0 = OutputFilter(framed)(labels)  # nothing to drop: no bar looked for
    assert n0 == f0 == 0 and calls["bar"] == 0
    np.testing.assert_array_equal(kept, labels)
    # without the data bar rule every row is measured
    whole = OutputFilter(framed, min_snr=level, data_bar=False)
    assert whole.top is None and whole.rows.shape == framed.shape
    with pytest.raises(ValueError, match="rows"):
        filt(labels[:height])


def test_segmentor_grow_to_comes_from_the_checkpoint(segmentor, tmp_path):
    """``grow_to`` in a checkpoint's config is the segmentor's default particle growth; a value
    that is not a level is ignored (no growth), never an error at inference."""
    assert segmentor.grow_to is None
    for value, expected in (("otsu", "otsu"), (0.3, 0.3), (None, None), ("lots", None),
                            (7, None)):
        ck = save_checkpoint(tmp_path / f"ck{expected}{value}", segmentor.model, None,
                             {"image_size": 64, "grow_to": value}, epoch=1)
        assert Segmentor.load(ck, device="cpu").grow_to == expected, value


def test_segmentor_particles_have_their_holes_filled_unless_the_checkpoint_says_not(segmentor,
                                                                                 tmp_path):
    """A particle the network sees as a ring (a hollow shell, a specular centre) is one filled
    particle by default; a checkpoint with ``fill_holes: false`` keeps the hole."""
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    prob = np.where(r < 14, 0.9, 0.05).astype(np.float32)
    prob[r < 5] = 0.2  # the network's hole
    assert segmentor.fill_holes is True
    filled = segmentor.instances(prob)
    assert filled.max() == 1 and filled[32, 32] == 1
    ck = save_checkpoint(tmp_path / "ck", segmentor.model, None,
                         {"image_size": 64, "fill_holes": False}, epoch=1)
    kept = Segmentor.load(ck, device="cpu").instances(prob)
    assert kept.max() == 1 and kept[32, 32] == 0
    assert np.count_nonzero(filled) - np.count_nonzero(kept) == np.count_nonzero(r < 5)


def test_an_ensemble_checkpoint_averages_its_segmentors_probabilities(segmentor, real, tmp_path):
    """ensemble_checkpoint puts two segmentors in one folder; Segmentor.load runs both and
    returns the mean of their probabilities; members with other inputs are refused."""
    from emcopilot.training.checkpoint import ensemble_checkpoint, read_config

    img, _ = real
    torch.manual_seed(1)
    other = UNetPlusPlus(base=4, depth=3, attention="cbam")  # untrained: other outputs
    cfg = {"image_size": 64, "input_polarity": "bright"}
    a = save_checkpoint(tmp_path / "a", segmentor.model, None, cfg, epoch=1)
    b = save_checkpoint(tmp_path / "b", other, None, cfg, epoch=1)
    ens = ensemble_checkpoint([a, b], tmp_path / "mean")
    names = read_config(ens)["config"]["ensemble"]
    assert len(names) == 2 and names[1] == "member1"
    assert not (ens / "optimizer.safetensors").exists()
    pa = Segmentor.load(a, device="cpu").probability(img)
    pb = Segmentor.load(b, device="cpu").probability(img)
    assert np.abs(pa - pb).max() > 0.1  # the members differ
    both = Segmentor.load(ens, device="cpu")
    assert both.ensemble_size == 2 and Segmentor.load(a, device="cpu").ensemble_size == 1
    np.testing.assert_allclose(both.probability(img), (pa + pb) / 2, atol=1e-5)
    # the threshold and post-processing come from the first member's config
    assert both.input_polarity == "bright" and both.image_size == 64
    c = save_checkpoint(tmp_path / "c", other, None, {**cfg, "input_polarity": None}, epoch=1)
    with pytest.raises(InputError, match="input_polarity"):
        ensemble_checkpoint([a, c], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    wider = save_checkpoint(tmp_path / "w", UNetPlusPlus(base=8, depth=3, attention="cbam"),
                            None, cfg, epoch=1)
    with pytest.raises(InputError, match="architecture"):
        ensemble_checkpoint([a, wider], tmp_path / "bad")
    with pytest.raises(InputError, match="at least two"):
        ensemble_checkpoint([a], tmp_path / "bad")


def test_best_segmentor_prefers_a_single_segmentor_on_a_tie():
    from emcopilot.inference import best_segmentor

    assert best_segmentor({0: 0.4, 1: 0.5, "mean": 0.5}) == 1
    assert best_segmentor({0: 0.4, 1: 0.5, "mean": 0.51}) == "mean"
    assert best_segmentor({2: 0.5, 1: 0.5}) == 1


def test_segment_adds_the_coarse_particles_it_missed(segmentor, real, tmp_path):
    """add_coarse: the particles also take the coarse particles the segmentor missed, from the
    labels given (the image's coarse or edited mask) or else the classical masker with the
    checkpoint's preset; a checkpoint's ``add_coarse`` makes it the default."""
    from emcopilot.particle_scale import estimate_scale
    from emcopilot.postprocess import add_coarse_particles

    img, truth = real
    assert segmentor.add_coarse is False
    plain, prob = segmentor.segment(img)
    np.testing.assert_array_equal(segmentor.segment(img, add_coarse=False)[0], plain)
    # with the image's mask: exactly what add_coarse_particles makes of the plain particles
    with_mask, prob2 = segmentor.segment(img, add_coarse=True, scale_labels=truth)
    np.testing.assert_array_equal(prob2, prob)
    np.testing.assert_array_equal(with_mask, add_coarse_particles(plain, truth, prob))
    # a segmentor that finds nothing at its threshold: the classical masker's typical particles
    blind, _ = segmentor.segment(img, threshold=0.999, add_coarse=True)
    coarse = segmentor.coarse_labels(segmentor.prepare(img))
    assert coarse.max() >= 5
    np.testing.assert_array_equal(blind,
                                  add_coarse_particles(np.zeros_like(coarse), coarse, prob))
    assert blind.max() >= 3
    # recorded in the checkpoint: the default; the particle scale is measured on the same mask
    ck = save_checkpoint(tmp_path / "ck", segmentor.model, None,
                         {"image_size": 64, "add_coarse": True, "particle_diameter_px": 32,
                          "scale_preset": "isolated"}, epoch=1)
    loaded = Segmentor.load(ck, device="cpu")
    assert loaded.add_coarse is True
    prep = loaded.prepare(img)
    assert loaded.resolve_scale(prep) == estimate_scale(prep, 32, preset="isolated")
    labels, prob3 = loaded.segment(img, annotations=False)
    np.testing.assert_array_equal(
        labels, add_coarse_particles(loaded.instances(prob3), loaded.coarse_labels(prep), prob3))
    # by default the particles on drawn text and scale bars are dropped last
    from emcopilot.annotations import drop_annotation_particles

    np.testing.assert_array_equal(loaded.segment(img)[0],
                                  drop_annotation_particles(prep, labels)[0])
    np.testing.assert_array_equal(loaded.segment(img, add_coarse=False, annotations=False)[0],
                                  loaded.instances(prob3))


def test_map_particles_of_a_held_map_are_what_segment_makes_of_it(segmentor, real):
    """map_particles (the pipeline's segment stage and the benches, holding a map already): the
    particles and coarse additions segment_detail makes after its map, at one scale."""
    img, truth = real
    for add, peak in ((False, "model"), (True, "model"), (True, 0.999)):
        labels, prob, info = segmentor.segment_detail(img, add_coarse=add, scale_labels=truth,
                                                      min_snr=None, min_peak=peak,
                                                      annotations=False)
        mapped, added = segmentor.map_particles(prob, truth, add_coarse=add, min_peak=peak)
        np.testing.assert_array_equal(mapped, labels)
        assert added == info["coarse_added"]
    assert added > 0  # at a core probability of 0.999 it misses labelled particles
    # the core probability and growth as given, not the checkpoint's
    np.testing.assert_array_equal(segmentor.map_particles(prob, None, min_peak=0.9,
                                                          grow_to="otsu")[0],
                                  segmentor.instances(prob, min_peak=0.9, grow_to="otsu"))
    with pytest.raises(ValueError, match="coarse mask"):
        segmentor.map_particles(prob, None, add_coarse=True)


def test_the_segmentor_leaves_out_an_instrument_data_bar(segmentor, real):
    """An image with a data bar below it: particles and probabilities of the rows above are
    those of the image alone, and the bar's rows hold none (``data_bar=False``: the network
    sees the bar too)."""
    from tests.conftest import with_data_bar

    img, _ = real
    h = img.shape[0]
    barred = io.normalize(with_data_bar(np.round(img * 255).astype(np.uint8), level=0))
    plain_labels, plain_prob = segmentor.segment(io.normalize(np.round(img * 255)))
    labels, prob = segmentor.segment(barred)
    assert labels.shape == prob.shape == barred.shape
    assert not labels[h:].any() and not prob[h:].any()
    np.testing.assert_array_equal(labels[:h], plain_labels)
    np.testing.assert_allclose(prob[:h], plain_prob, atol=1e-6)
    np.testing.assert_array_equal(segmentor.probability(barred), prob)
    assert segmentor.probability(barred, data_bar=False)[h:].max() > 0


def test_data_bar_off_measures_the_particle_scale_on_every_row(segmentor, real, tmp_path):
    """A scale-normalised segmentor: with the bar left out, the scale comes from the rows above
    it; with ``data_bar=False`` from every row, bar included (as before bars were found)."""
    from emcopilot.masking import coarse_mask
    from emcopilot.particle_scale import normalising_scale
    from tests.conftest import with_data_bar

    img, _ = real
    h = img.shape[0]
    ck = save_checkpoint(tmp_path / "ck", segmentor.model, None,
                         {"image_size": 64, "particle_diameter_px": 32,
                          "scale_preset": "isolated", "input_polarity": "bright"}, epoch=1)
    seg = Segmentor.load(ck, device="cpu")
    barred = io.normalize(with_data_bar(np.round(img * 255).astype(np.uint8), level=255))
    full = seg.prepare(barred)

    def expected(rows, bar):
        labels = coarse_mask(full[:rows], method="classical", polarity="bright",
                             classical_options={"preset": "isolated"}, data_bar=bar)
        return seg.predict_proba(full[:rows], scale=normalising_scale(labels, 32))

    off = seg.probability(barred, data_bar=False)
    np.testing.assert_allclose(off, expected(len(full), False), atol=1e-6)
    on = seg.probability(barred)
    np.testing.assert_allclose(on[:h], expected(h, False), atol=1e-6)
    assert not on[h:].any()
    np.testing.assert_allclose(seg.segment(barred, data_bar=False)[1], off, atol=1e-6)


def test_scale_choice_keeps_per_image_the_factor_matching_the_coarse_mask(segmentor, real,
                                                                         tmp_path, capsys):
    """scale_choice: the segmentor also runs at multiples of the image's resize factor and keeps
    the factor whose own particles match the coarse mask best (ties to the factor itself); the
    coarse particles are added after the choice; a checkpoint's ``scale_choice`` is the
    default."""
    from emcopilot.postprocess import add_coarse_particles, best_matching

    img, truth = real[0][:192, :192], real[1][:192, :192]
    ck = save_checkpoint(tmp_path / "ck", segmentor.model, None,
                         {"image_size": 64, "particle_diameter_px": 20.0, "add_coarse": True,
                          "scale_preset": "isolated"}, epoch=1)
    seg = Segmentor.load(ck, device="cpu")
    assert seg.scale_choice == ()
    # (annotations=False: the particles as made, none dropped as drawn text after)
    plain, prob, info = seg.segment_detail(img, scale_labels=truth, annotations=False)
    assert info["scale_multiple"] == 1.0 and info["support_removed"] is False
    assert info["coarse_added"] == plain.max() - seg.instances(prob).max()
    s = seg.resolve_scale(img, None, truth)
    own = {m: seg.instances(seg.predict_proba(img, scale=s * m)) for m in (1.0, 0.5, 2.0)}
    results = {}
    for multiples in ((0.5,), (2.0,), (0.5, 2.0)):
        labels, prob_m, info = seg.segment_detail(img, scale_labels=truth, scale_choice=multiples,
                                                  annotations=False)
        results[multiples] = labels
        tried = (1.0, *multiples)
        kept = tried[best_matching([own[m] for m in tried], truth)]
        assert info["scale_multiple"] == kept, multiples
        np.testing.assert_allclose(prob_m, seg.predict_proba(img, scale=s * kept), atol=1e-6)
        np.testing.assert_array_equal(labels, add_coarse_particles(own[kept], truth, prob_m))
    # the multiples differ in what they find on this image, so the choice is a real one
    assert len({int(own[m].max()) for m in own}) > 1
    # recorded in the checkpoint: the default; "segment" is segment_detail's first two
    ck2 = save_checkpoint(tmp_path / "ck2", segmentor.model, None,
                          {"image_size": 64, "particle_diameter_px": 20.0, "add_coarse": True,
                           "scale_preset": "isolated", "scale_choice": [0.5, 2.0]}, epoch=1)
    recorded = Segmentor.load(ck2, device="cpu")
    assert recorded.scale_choice == (0.5, 2.0)
    np.testing.assert_array_equal(recorded.segment(img, scale_labels=truth,
                                                   annotations=False)[0], results[(0.5, 2.0)])
    np.testing.assert_array_equal(recorded.segment(img, scale_labels=truth, scale_choice=(),
                                                   annotations=False)[0], plain)
    with pytest.raises(InputError, match="other than 1"):
        seg.segment(img, scale_choice=(1.0,))
    # `emcopilot segment --scale-choice`: the library's particles (the classical masker's
    # particles as the coarse mask), said in its summary; "none" for a model that records it
    from emcopilot.cli import main

    io.write_image(tmp_path / "crop.png", img)
    image01 = io.normalize(io.read_micrograph(tmp_path / "crop.png").image)
    assert main(["segment", str(tmp_path / "crop.png"), "--model", str(ck), "--out",
                 str(tmp_path / "cli"), "--scale-choice", "0.5,2", "--device", "cpu", "-q"]) == 0
    assert "also segmented at 0.5x, 2x its resize factor" in capsys.readouterr().out
    np.testing.assert_array_equal(io.read_label_map(tmp_path / "cli" / "crop.png"),
                                  seg.segment(image01, scale_choice=(0.5, 2.0))[0])
    assert main(["segment", str(tmp_path / "crop.png"), "--model", str(ck2), "--out",
                 str(tmp_path / "one"), "--scale-choice", "none", "--device", "cpu", "-q"]) == 0
    assert "also segmented" not in capsys.readouterr().out
    np.testing.assert_array_equal(io.read_label_map(tmp_path / "one" / "crop.png"),
                                  seg.segment(image01)[0])
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(tmp_path / "crop.png"), "--model", str(ck), "--out",
              str(tmp_path / "bad"), "--scale-choice", "1"])
    assert exc.value.code == 2


def test_min_snr_drops_the_faint_particles_last_as_recorded_or_as_given(segmentor, real,
                                                                        tmp_path, capsys):
    """min_snr: the particles segment_detail would return, less those
    drop_faint_particles calls faint in the (bright-particle) image, counted in the info; a
    checkpoint's ``min_snr`` is the default (None: off); with a data bar the rows above it are
    measured, as drop_faint_above_bar does for the pipeline; `segment --min-snr`."""
    from emcopilot.inference import drop_faint_above_bar
    from emcopilot.postprocess import drop_faint_particles, particle_snr
    from tests.conftest import with_data_bar

    img, _ = real
    assert segmentor.min_snr is None
    plain, prob, info = segmentor.segment_detail(img)
    assert info["faint_dropped"] == 0
    np.testing.assert_array_equal(segmentor.segment_detail(img, min_snr=None)[0], plain)
    bright = io.bright_particles(segmentor.prepare(img), "auto")
    snr = particle_snr(bright, plain)
    assert plain.max() >= 6
    level = float(np.nanmedian(snr[1:]))  # about half of them faint at this level
    labels, prob2, info = segmentor.segment_detail(img, min_snr=level)
    expected, n = drop_faint_particles(bright, plain, level)
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(prob2, prob)
    assert info["faint_dropped"] == n and 0 < n < plain.max()
    # recorded in the checkpoint: the default, overridden by None
    ck = save_checkpoint(tmp_path / "ck", segmentor.model, None,
                         {"image_size": 64, "min_snr": level}, epoch=1)
    loaded = Segmentor.load(ck, device="cpu")
    assert loaded.min_snr == level
    np.testing.assert_array_equal(loaded.segment(img)[0], expected)
    np.testing.assert_array_equal(loaded.segment(img, min_snr=None)[0], plain)
    bad = save_checkpoint(tmp_path / "bad", segmentor.model, None,
                          {"image_size": 64, "min_snr": "loud"}, epoch=1)
    assert Segmentor.load(bad, device="cpu").min_snr is None  # an invalid record: off
    with pytest.raises(InputError, match="min_snr"):
        segmentor.segment(img, min_snr=-1)
    # a data bar below: the bar's rows are neither measured nor hold particles
    h = img.shape[0]
    img255 = io.normalize(np.round(img * 255))
    barred = io.normalize(with_data_bar(np.round(img * 255).astype(np.uint8), level=0))
    on_bar = segmentor.segment(barred, min_snr=level)[0]
    assert not on_bar[h:].any()
    np.testing.assert_array_equal(on_bar[:h], segmentor.segment(img255, min_snr=level)[0])
    bright_barred = np.concatenate([io.bright_particles(img255, "auto"), barred[h:]])
    barred_labels = segmentor.segment(barred, min_snr=None)[0]
    np.testing.assert_array_equal(drop_faint_above_bar(bright_barred, barred_labels, level)[0],
                                  on_bar)
    # the noise level handed in (as choose_min_peak does) is the one measured above the bar
    from emcopilot.inference import noise_level_above_bar
    from emcopilot.postprocess import noise_sigma

    sigma = noise_level_above_bar(bright_barred)
    assert sigma == noise_sigma(bright_barred[:h]) != noise_sigma(bright_barred)
    assert noise_level_above_bar(bright_barred, data_bar=False) == noise_sigma(bright_barred)
    np.testing.assert_array_equal(
        drop_faint_above_bar(bright_barred, barred_labels, level, sigma=sigma)[0], on_bar)
    assert drop_faint_above_bar(bright_barred, barred_labels, level, sigma=100 * sigma)[0].max() \
        == 0  # every particle faint against a hundredfold noise
    # `emcopilot segment`: the recorded level, said in the summary; "none" keeps every particle
    from emcopilot.cli import main

    io.write_image(tmp_path / "im.png", img)
    image01 = io.normalize(io.read_micrograph(tmp_path / "im.png").image)
    assert main(["segment", str(tmp_path / "im.png"), "--model", str(ck), "--out",
                 str(tmp_path / "cli"), "--device", "cpu", "-q"]) == 0
    assert f"at most {level:g} x their noise dropped" in capsys.readouterr().out
    np.testing.assert_array_equal(io.read_label_map(tmp_path / "cli" / "im.png"),
                                  loaded.segment(image01)[0])
    assert main(["segment", str(tmp_path / "im.png"), "--model", str(ck), "--out",
                 str(tmp_path / "none"), "--min-snr", "none", "--device", "cpu", "-q"]) == 0
    assert "noise dropped" not in capsys.readouterr().out
    np.testing.assert_array_equal(io.read_label_map(tmp_path / "none" / "im.png"),
                                  loaded.segment(image01, min_snr=None)[0])
