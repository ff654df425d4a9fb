"""Segmentation, object, probability and image metrics on constructed and real (EMPS) data."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from emcopilot import metrics as M
from emcopilot.errors import WeightsUnavailableError

torch.set_num_threads(2)


def _read_segmap(examples_dir, stem="c363833ad2"):
    from PIL import Image

    with Image.open(examples_dir / "emps" / "segmaps" / f"{stem}.png") as im:
        return np.asarray(im).astype(np.int32)


def _grey_image(examples_dir, stem="dbbbce5020", size=256):
    from PIL import Image

    with Image.open(examples_dir / "emps" / "images" / f"{stem}.png") as im:
        a = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    return np.ascontiguousarray(a[:size, :size])


def _noisy(img, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 1).astype(np.float32)


# --------------------------------------------------------------------------- pixel metrics

def test_pixel_scores_on_overlapping_squares():
    truth = np.zeros((20, 20), np.int32)
    pred = np.zeros((20, 20), np.int32)
    truth[0:10, 0:10] = 7           # 100 px
    pred[0:10, 5:15] = 3            # 100 px, 50 of them overlapping
    s = M.pixel_scores(pred, truth)
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (50, 50, 50, 250)
    assert s["dice"] == pytest.approx(2 * 50 / (2 * 50 + 50 + 50))
    assert s["iou"] == pytest.approx(50 / 150)
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(0.5)
    assert s["pixel_accuracy"] == pytest.approx(300 / 400)

    mc = M.mean_class_scores(pred, truth)
    assert mc["iou_particle"] == pytest.approx(50 / 150)
    assert mc["iou_background"] == pytest.approx(250 / (250 + 50 + 50))
    assert mc["mIoU"] == pytest.approx((50 / 150 + 250 / 350) / 2)
    assert mc["pa_background"] == pytest.approx(250 / 300)   # TN / (TN + FP)
    assert mc["mPA"] == pytest.approx((0.5 + 250 / 300) / 2)
    assert mc["mDice"] == pytest.approx((0.5 + 500 / 600) / 2)


def test_empty_and_input_kinds():
    z = np.zeros((8, 8), np.int32)
    one = z.copy()
    one[2:4, 2:4] = 1
    e = M.pixel_scores(z, z)
    assert e["dice"] == 1.0 and e["iou"] == 1.0 and e["precision"] == 1.0
    miss = M.pixel_scores(z, one)
    assert miss["dice"] == 0.0 and miss["recall"] == 0.0 and miss["precision"] == 0.0
    assert M.mean_class_scores(z, z)["mIoU"] == 1.0
    # probability maps threshold at 0.5, bool masks and torch tensors work too
    prob = one.astype(np.float32) * 0.7 + 0.2          # 0.9 inside, 0.2 outside
    assert M.pixel_scores(prob, one.astype(bool))["dice"] == 1.0
    assert M.pixel_scores(torch.from_numpy(one), one)["iou"] == 1.0
    with pytest.raises(ValueError):
        M.pixel_scores(z, np.zeros((8, 9)))


# --------------------------------------------------------------------------- object metrics

def test_object_scores_real_segmap_self_removed_and_added(examples_dir):
    truth = _read_segmap(examples_dir)
    ids = np.unique(truth)
    ids = ids[ids > 0]
    n = len(ids)
    assert n >= 5
    s = M.object_scores(truth, truth)
    assert (s["tp"], s["fp"], s["fn"], s["n_true"]) == (n, 0, 0, n)
    assert s["f1"] == 1.0 and s["mean_matched_iou"] == 1.0

    # permuting ids changes nothing
    perm = np.zeros(int(truth.max()) + 1, np.int32)
    perm[ids] = np.random.default_rng(1).permutation(np.arange(1, n + 1)) + 1000
    assert M.object_scores(perm[truth], truth)["tp"] == n

    # remove 3 instances -> 3 false negatives
    pred = truth.copy()
    pred[np.isin(pred, ids[:3])] = 0
    s = M.object_scores(pred, truth)
    assert (s["tp"], s["fp"], s["fn"]) == (n - 3, 0, 3)
    assert s["recall"] == pytest.approx((n - 3) / n) and s["precision"] == 1.0
    assert s["count_error"] == -3 and s["relative_count_error"] == pytest.approx(-3 / n)

    # add a particle where there is background -> 1 false positive
    pred = truth.copy()
    ys, xs = np.nonzero(truth == 0)
    pred[ys[0], xs[0]] = 60000
    s = M.object_scores(pred, truth)
    assert (s["tp"], s["fp"], s["fn"]) == (n, 1, 0)


def test_object_matching_equals_brute_force_iou():
    from skimage.draw import disk

    rng = np.random.default_rng(3)
    truth = np.zeros((128, 128), np.int32)
    pred = np.zeros_like(truth)
    for i in range(12):
        c = rng.integers(12, 116, 2)
        r = int(rng.integers(4, 9))
        truth[disk(tuple(c), r, shape=truth.shape)] = i + 1
        shift = rng.integers(-4, 5, 2)
        pred[disk(tuple(c + shift), r, shape=truth.shape)] = 50 + i
    m = M.match_instances(pred, truth, 0.5)
    brute = {}
    for pi, p in enumerate(m.pred_ids):
        for ti, t in enumerate(m.true_ids):
            a, b = pred == p, truth == t
            brute[pi, ti] = (a & b).sum() / (a | b).sum()
    assert len(m.pairs) > 0
    for (pi, ti), iou in zip(m.pairs, m.pair_iou):
        assert iou == pytest.approx(brute[pi, ti])
        assert iou >= 0.5
    # every pair above the threshold is matched (they are unique for IoU > 0.5)
    above = {k for k, v in brute.items() if v >= 0.5}
    assert above == {tuple(p) for p in m.pairs}
    # a lower threshold can only add matches
    assert M.object_scores(pred, truth, 0.1)["tp"] >= len(m.pairs)
    # a stricter threshold can only remove matches
    assert M.object_scores(pred, truth, 0.99)["tp"] <= len(m.pairs)


def test_object_scores_fast_on_2048px_with_300_instances():
    from skimage.draw import disk

    rng = np.random.default_rng(0)
    truth = np.zeros((2048, 2048), np.int32)
    for i in range(300):
        truth[disk(tuple(rng.integers(30, 2018, 2)), 14, shape=truth.shape)] = i + 1
    pred = np.roll(truth, 2, axis=1)
    M.object_scores(pred[:64, :64], truth[:64, :64])   # warm imports
    t0 = time.perf_counter()
    s = M.object_scores(pred, truth)
    dt = time.perf_counter() - t0
    n = len(np.unique(truth)) - 1
    assert s["n_true"] == n and s["tp"] >= n - 2
    assert dt < 3.0, f"object_scores took {dt:.2f} s"


# --------------------------------------------------------------------------- probability metrics

def test_probability_scores():
    rng = np.random.default_rng(0)
    truth = np.zeros((64, 64), np.int32)
    truth[16:40, 10:50] = 1
    perfect = truth * 0.8 + 0.1
    s = M.probability_scores(perfect, truth)
    assert s["auc"] == pytest.approx(1.0) and s["ap"] == pytest.approx(1.0)
    inverted = M.probability_scores(1 - perfect, truth)
    assert inverted["auc"] == pytest.approx(0.0, abs=1e-6)
    noise = M.probability_scores(rng.random((64, 64)), truth)
    assert 0.35 < noise["auc"] < 0.65
    assert noise["ap"] == pytest.approx(truth.mean(), abs=0.1)
    # subsampling is deterministic and close to the full value
    noisy = np.clip(perfect + rng.normal(0, 0.4, perfect.shape), 0, 1)
    full = M.probability_scores(noisy, truth)
    sub1 = M.probability_scores(noisy, truth, max_pixels=2000)
    sub2 = M.probability_scores(noisy, truth, max_pixels=2000)
    assert sub1 == sub2
    assert sub1["auc"] == pytest.approx(full["auc"], abs=0.05)
    one_class = M.probability_scores(perfect, np.zeros_like(truth))
    assert np.isnan(one_class["auc"]) and np.isnan(one_class["ap"])


# --------------------------------------------------------------------------- SSIM / MS-SSIM

def test_ssim_and_ms_ssim_identical_and_monotone(examples_dir):
    img = _grey_image(examples_dir, size=256)
    assert img.shape == (256, 256)
    assert M.ssim(img, img) == pytest.approx(1.0, abs=1e-4)
    assert M.ms_ssim(img, img) == pytest.approx(1.0, abs=1e-4)
    s_vals = [M.ssim(img, _noisy(img, s)) for s in (0.02, 0.08, 0.2)]
    ms_vals = [M.ms_ssim(img, _noisy(img, s)) for s in (0.02, 0.08, 0.2)]
    assert s_vals[0] > s_vals[1] > s_vals[2]
    assert ms_vals[0] > ms_vals[1] > ms_vals[2]
    # 256 px runs the full standard 5-scale MS-SSIM
    k, betas = M.ms_ssim_config(256, 256)
    assert k == 11 and betas == M.MS_SSIM_BETAS
    # small images fall back to fewer scales instead of failing; batches (N, C, H, W) work
    small = img[:64, :64]
    k, betas = M.ms_ssim_config(64, 64)
    assert len(betas) < 5 and sum(betas) == pytest.approx(1.0)
    assert M.ms_ssim(small, small) == pytest.approx(1.0, abs=1e-4)
    batch = torch.from_numpy(np.stack([img, img[::-1].copy()]))[:, None]
    assert M.ssim(batch, batch) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError):
        M.ssim(img, img[:128])


# --------------------------------------------------------------------------- LPIPS

def _random_lpips():
    import warnings

    import lpips

    torch.manual_seed(0)
    # random AlexNet backbone + the lpips wheel's linear heads: no download
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's 'pretrained' deprecation
        return lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, verbose=False)


def test_lpips_injected_identical_zero_and_monotone(examples_dir):
    m = M.LpipsMetric(net=_random_lpips(), device="cpu")
    assert m.available and m.reason == ""
    img = _grey_image(examples_dir, size=96)
    assert m.compute(img, img) == pytest.approx(0.0, abs=1e-6)
    vals = [m.compute(img, _noisy(img, s)) for s in (0.03, 0.1, 0.3)]
    assert 0 < vals[0] < vals[1] < vals[2]


def test_lpips_unavailable_weights_reports_reason(monkeypatch):
    def refuse(name, path, cache_dir):
        raise WeightsUnavailableError(f"{name} not here: put the file in the weights folder")

    monkeypatch.setattr(M, "_resolve", refuse)
    m = M.LpipsMetric(device="cpu")
    assert m.available is False
    assert "lpips_alex not here" in m.reason
    assert m.compute(np.zeros((64, 64), np.float32), np.ones((64, 64), np.float32)) is None
    # a wrong explicit file is refused by the hash check, also without raising
    m2 = M.LpipsMetric(weights_path="/nonexistent/alexnet.pth", device="cpu")
    assert m2.available is False and m2.reason


def test_lpips_loads_alexnet_backbone_file(tmp_path, monkeypatch):
    import torchvision

    torch.manual_seed(1)
    state = torchvision.models.alexnet(weights=None).state_dict()
    f = tmp_path / "alexnet.pth"
    torch.save(state, f)
    monkeypatch.setattr(M, "_resolve", lambda name, path, cache_dir: f)
    m = M.LpipsMetric(device="cpu")
    assert m.available, m.reason
    conv0 = dict(m.model.net.slice1.named_children())["0"]
    conv10 = dict(m.model.net.slice5.named_children())["10"]
    assert torch.equal(conv0.weight, state["features.0.weight"])
    assert torch.equal(conv10.bias, state["features.10.bias"])


# --------------------------------------------------------------------------- FID / KID

def _tiny_extractor():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, stride=2), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


def _crops(examples_dir, n=24, size=48):
    img = _grey_image(examples_dir, size=512)
    rng = np.random.default_rng(5)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, min(img.shape) - size, 2)
        out.append(img[y:y + size, x:x + size])
    return np.stack(out)


def test_fid_injected_same_sets_zero_and_monotone(examples_dir):
    real = _crops(examples_dir)
    fid = M.FidMetric(feature_extractor=_tiny_extractor(), feature_dim=8, device="cpu")
    assert fid.available
    assert fid.score(real, real) == pytest.approx(0.0, abs=1e-3)
    vals = [fid.score(real, np.stack([_noisy(x, s, i) for i, x in enumerate(real)]))
            for s in (0.05, 0.15, 0.4)]
    assert vals[0] < vals[1] < vals[2]
    fid.reset()
    fid.update(real[:1], real=True)
    assert fid.compute() is None           # fewer than 2 images: undefined, no exception


def test_kid_injected_and_unavailable(examples_dir, monkeypatch):
    real = _crops(examples_dir, n=16)
    kid = M.KidMetric(feature_extractor=_tiny_extractor(), feature_dim=8, subsets=5,
                      subset_size=8, device="cpu")
    assert kid.available
    same = kid.score(real, real)
    far = kid.score(real, np.stack([_noisy(x, 0.4, i) for i, x in enumerate(real)]))
    assert abs(same) < 0.1 * far and far > 0
    assert kid.score(real, real) == pytest.approx(same)   # seeded subsets: reproducible

    def refuse(name, path, cache_dir):
        raise WeightsUnavailableError(f"{name} missing")

    monkeypatch.setattr(M, "_resolve", refuse)
    for cls in (M.FidMetric, M.KidMetric):
        m = cls(device="cpu")
        assert m.available is False and m.reason
        m.update(real, real=True)            # no-op, no exception
        assert m.compute() is None and m.score(real, real) is None
