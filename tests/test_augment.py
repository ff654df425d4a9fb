"""Algorithm 6: each of the 18 variants changes the image as its parameters say."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from emcopilot import augment as A
from emcopilot import io
from emcopilot.errors import InputError

N = 256


def flat(level: float, n: int = N) -> np.ndarray:
    return np.full((n, n), level, np.float32)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_strategy_tables():
    assert list(A.NOISE_STRATEGIES) == ["shot150", "shot250", "gauss003", "gauss005",
                                        "shot250_gauss003", "shot250_gauss003_scan"]
    assert list(A.CONTRAST_STRATEGIES) == ["sigmoid_k2", "sigmoid_k5", "none"]
    assert len(A.VARIANTS) == 18
    assert set(A.VARIANTS.values()) == {(n, c) for n in A.NOISE_STRATEGIES
                                        for c in A.CONTRAST_STRATEGIES}
    for name, (n, c) in A.VARIANTS.items():
        assert name == f"{n}__{c}"
        assert all(ch.isalnum() or ch == "_" for ch in name)  # safe in file names
    assert A.NOISE_STRATEGIES["shot150"]["dose"] == 150
    assert A.NOISE_STRATEGIES["gauss005"]["gauss_std"] == 0.05
    assert A.NOISE_STRATEGIES["shot250_gauss003_scan"]["scan"]["sigma_px"] == 2.0
    assert A.NOISE_STRATEGIES["shot250_gauss003_scan"]["scan"]["frequency"] == 0.001
    assert A.CONTRAST_STRATEGIES["sigmoid_k5"] == {"k": 5.0, "i0": 0.3}


@pytest.mark.parametrize("strategy,dose", [("shot150", 150), ("shot250", 250)])
@pytest.mark.parametrize("level", [0.2, 0.5])
def test_shot_noise_variance_is_level_over_dose(strategy, dose, level):
    out = A.apply_noise(flat(level), strategy, rng(1))
    assert out.dtype == np.float32 and out.shape == (N, N)
    assert abs(out.mean() - level) < 0.01
    assert out.var() == pytest.approx(level / dose, rel=0.10)
    # Poisson: output values are multiples of 1/dose
    k = out.astype(np.float64) * dose
    assert np.allclose(k, np.round(k), atol=1e-3)


def test_shot_noise_leaves_black_black():
    assert np.all(A.apply_noise(flat(0.0), "shot150", rng()) == 0)


@pytest.mark.parametrize("strategy,std", [("gauss003", 0.03), ("gauss005", 0.05)])
def test_gaussian_noise_std(strategy, std):
    out = A.apply_noise(flat(0.5), strategy, rng(2))
    assert abs(out.mean() - 0.5) < 0.005
    assert out.std() == pytest.approx(std, rel=0.05)
    # no Poisson quantisation
    assert len(np.unique(out)) > 1000


def test_shot_plus_gauss_variances_add():
    level = 0.5
    out = A.apply_noise(flat(level), "shot250_gauss003", rng(3))
    expected = level / 250 + 0.03 ** 2
    assert out.var() == pytest.approx(expected, rel=0.10)
    # clearly more than either contribution alone
    assert out.var() > 1.2 * level / 250 and out.var() > 2 * 0.03 ** 2


def _edge_positions(img: np.ndarray) -> np.ndarray:
    """Per-row position of a 0 -> 1 step: with linear interpolation a shifted step keeps its
    integral, so W - sum(row) is the sub-pixel edge position."""
    return img.shape[1] - img.sum(axis=1, dtype=np.float64)


def test_scan_distortion_jitters_a_vertical_edge():
    img = np.zeros((512, 256), np.float32)
    img[:, 128:] = 1.0
    assert np.allclose(_edge_positions(img), 128)
    out, shifts = A.scan_distort(img, rng(4), return_shifts=True)
    pos = _edge_positions(out)
    # measured edge positions follow the applied shifts
    assert np.allclose(pos - 128, shifts, atol=1e-3)
    # line jitter: successive-row differences have std sqrt(2) * 2 px (the slow sine adds
    # < 0.02 px per row at f = 0.001)
    jitter = np.diff(pos).std() / np.sqrt(2)
    assert jitter == pytest.approx(2.0, rel=0.10)
    # the slow sine: without jitter the shift is A sin(2 pi f r + phi), |shift| <= A
    out0, s0 = A.scan_distort(img, rng(5), sigma_px=0.0, return_shifts=True)
    rows = np.arange(512)
    assert np.abs(s0).max() <= A.SCAN_AMPLITUDE_PX + 1e-9
    d = np.diff(s0)
    assert np.abs(d).max() <= 2 * np.pi * 0.001 * A.SCAN_AMPLITUDE_PX + 1e-9
    fit = np.linalg.lstsq(np.stack([np.sin(2 * np.pi * 0.001 * rows),
                                    np.cos(2 * np.pi * 0.001 * rows)], 1), s0, rcond=None)[0]
    assert np.hypot(*fit) == pytest.approx(A.SCAN_AMPLITUDE_PX, rel=1e-6)


def test_scan_strategy_jitters_edge_and_adds_noise():
    img = np.zeros((512, 256), np.float32)
    img[:, 128:] = 0.8
    out = A.apply_noise(img, "shot250_gauss003_scan", rng(6))
    pos = img.shape[1] - out.sum(axis=1, dtype=np.float64) / 0.8
    # jitter 2 px per row plus the per-row sum of the pixel noise (about 0.9 px here)
    jitter = np.diff(pos).std() / np.sqrt(2)
    assert 1.8 < jitter < 2.6
    # without the scan term the edge stays put up to the noise only
    out2 = A.apply_noise(img, "shot250_gauss003", rng(6))
    pos2 = img.shape[1] - out2.sum(axis=1, dtype=np.float64) / 0.8
    assert np.diff(pos2).std() / np.sqrt(2) < 1.2
    # noise away from the edge matches shot 250 + Gaussian 0.03
    interior = out[:, 160:240]
    assert interior.var() == pytest.approx(0.8 / 250 + 0.03 ** 2, rel=0.10)


def test_scan_distortion_leaves_row_constant_image_unchanged():
    img = np.repeat(np.linspace(0, 1, 200, dtype=np.float32)[:, None], 300, axis=1)
    out = A.scan_distort(img, rng(7))
    assert np.allclose(out, img, atol=1e-6)


def test_sigmoid_mapping():
    x = np.linspace(0, 1, 101, dtype=np.float32)[None, :]
    for name, k in (("sigmoid_k2", 2.0), ("sigmoid_k5", 5.0)):
        y = A.apply_contrast(x, name)[0].astype(np.float64)
        assert y[0] == pytest.approx(0.0, abs=1e-6) and y[-1] == pytest.approx(1.0, abs=1e-6)
        assert np.all(np.diff(y) > 0)  # strictly increasing
        s = 1 / (1 + np.exp(-k * (x[0].astype(np.float64) - 0.3)))
        assert np.allclose(y, (s - s[0]) / (s[-1] - s[0]), atol=1e-6)
        # steepest at i0 = 0.3
        assert abs(x[0, np.argmax(np.diff(y))] - 0.3) <= 0.011
    # contrast between grey levels 0.2 and 0.4: none < k=2 < k=5
    pair = np.array([[0.2, 0.4]], np.float32)
    gaps = {c: float(np.diff(A.apply_contrast(pair, c)[0])[0]) for c in A.CONTRAST_STRATEGIES}
    assert gaps["none"] == pytest.approx(0.2, abs=1e-6)
    assert gaps["none"] < gaps["sigmoid_k2"] < gaps["sigmoid_k5"]
    assert gaps["sigmoid_k2"] == pytest.approx(0.2225, abs=1e-3)
    assert gaps["sigmoid_k5"] == pytest.approx(0.3107, abs=1e-3)


def test_none_is_identity():
    img = np.random.default_rng(8).random((32, 40)).astype(np.float32)
    assert np.array_equal(A.apply_contrast(img, "none"), img)


def test_every_variant_changes_the_image_as_specified():
    base = np.random.default_rng(9).uniform(0.1, 0.9, (128, 128)).astype(np.float32)
    out = A.augment_image(base, seed=0)
    assert list(out) == list(A.VARIANTS)
    for name, img in out.items():
        noise, contrast = A.VARIANTS[name]
        assert img.dtype == np.float32 and img.shape == base.shape
        assert img.min() >= 0 and img.max() <= 1
        clean = A.apply_contrast(base, contrast)
        resid = img - clean
        p = A.NOISE_STRATEGIES[noise]
        if p["scan"] is None:
            # pure pixel noise: residual has zero mean and the expected variance
            expected = (np.mean(clean) / p["dose"] if p["dose"] else 0.0) + (p["gauss_std"] or 0) ** 2
            assert abs(resid.mean()) < 0.005, name
            assert resid.var() == pytest.approx(expected, rel=0.15), name
        else:
            # rows displaced: residual much larger than the pixel noise alone
            assert resid.var() > 3 * (np.mean(clean) / 250 + 0.03 ** 2), name


def test_reproducible_with_seed():
    base = np.random.default_rng(10).random((64, 64)).astype(np.float32)
    a, b, c = A.augment_image(base, seed=3), A.augment_image(base, seed=3), A.augment_image(base, seed=4)
    for k in A.VARIANTS:
        assert np.array_equal(a[k], b[k])
        assert not np.array_equal(a[k], c[k])
    r1 = A.apply_variant(base, "gauss005__none", np.random.default_rng(1))
    r2 = A.apply_variant(base, ("gauss005", "none"), np.random.default_rng(1))
    assert np.array_equal(r1, r2)


def test_bad_names_raise_input_error():
    img = flat(0.5, 8)
    with pytest.raises(InputError):
        A.apply_variant(img, "shot999__none", rng())
    with pytest.raises(InputError):
        A.apply_contrast(img, "gamma")
    with pytest.raises(InputError):
        A.apply_noise(np.zeros((2, 2, 2), np.float32), "shot150", rng())


def test_augment_folder_on_bundled_images(examples_dir, tmp_path):
    src = examples_dir / "emps"
    images, masks = tmp_path / "in" / "images", tmp_path / "in" / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    stems = ["31121ca5cf", "391ef00939"]  # 512 x 512 and 513 x 512
    for s in stems:
        shutil.copy(src / "images" / f"{s}.png", images)
        shutil.copy(src / "segmaps" / f"{s}.png", masks)
    calls = []
    out = tmp_path / "out"
    written = A.augment_folder(images, out, masks_dir=masks, seed=1,
                               progress=lambda d, t, m: calls.append((d, t)))
    assert len(written) == 18 * len(stems)
    assert calls[0] == (0, 2) and calls[-1] == (2, 2)
    for s in stems:
        orig = io.normalize(io.read_micrograph(images / f"{s}.png").image)
        truth = io.read_label_map(masks / f"{s}.png")
        for v in A.VARIANTS:
            ip = out / "images" / f"{s}__{v}.png"
            mp = out / "masks" / f"{s}__{v}.png"
            assert ip in written and ip.is_file() and mp.is_file()
            img = io.read_micrograph(ip).image
            assert img.shape == orig.shape
            assert np.array_equal(io.read_label_map(mp), truth)
        # variant images differ from each other and from the input
        a = io.read_micrograph(out / "images" / f"{s}__shot150__none.png").image
        b = io.read_micrograph(out / "images" / f"{s}__gauss005__sigmoid_k5.png").image
        assert not np.array_equal(a, b)
        assert np.abs(a / 255 - orig).mean() > 0.01
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 1 and len(manifest["files"]) == 36
    assert manifest["noise_strategies"]["shot250"]["dose"] == 250
    # reproducible: a second run writes identical files
    out2 = tmp_path / "out2"
    A.augment_folder(images, out2, masks_dir=masks, seed=1)
    for p in written[:18]:
        assert (out2 / "images" / p.name).read_bytes() == p.read_bytes()


def test_augment_folder_missing_mask(examples_dir, tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    shutil.copy(examples_dir / "emps" / "images" / "c1cccb3332.png", images)
    with pytest.raises(InputError, match="no mask"):
        A.augment_folder(images, tmp_path / "out", masks_dir=masks)
