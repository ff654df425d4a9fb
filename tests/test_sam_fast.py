"""SamMasker's "blobs" prompt mode (prompts at candidate particle centres), with the tiny random
SAM of tests/tiny_sam.py (no download)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emcopilot.errors import InputError
from emcopilot.masking.sam import SAM_PRESETS, SamMasker, detect_blobs
from tests.tiny_sam import LOOSE, assert_label_map, one_thread, tiny_sam  # noqa: F401 (fixture)

CENTRES = [(40, 50), (120, 30), (200, 90), (70, 180), (180, 200)]  # (x, y) px
RADII = [8, 10, 6, 12, 9]


def discs(shape=(240, 256), seed=0) -> np.ndarray:
    """Five bright discs (known centres/radii) on a noisy grey background, in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = 0.2 + rng.normal(0, 0.02, shape)
    for (x, y), r in zip(CENTRES, RADII):
        img[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] += 0.5
    return np.clip(img, 0, 1).astype(np.float32)


def _nearest(points: np.ndarray) -> np.ndarray:
    """Distance (px) from each true centre to its nearest detected point."""
    c = np.asarray(CENTRES, dtype=np.float64)
    d = np.linalg.norm(c[:, None, :] - points[None, :, :2], axis=2)
    return d.min(axis=1)


def test_detector_finds_the_five_discs_near_their_centres():
    pts = detect_blobs(discs())
    assert pts.shape == (5, 3)
    assert np.all(_nearest(pts) <= 2.0)
    # sigma ~ r / sqrt(2), within the scale grid's spacing
    order = [int(np.argmin(np.linalg.norm(pts[:, :2] - c, axis=1))) for c in CENTRES]
    assert np.allclose(pts[order, 2], np.array(RADII) / np.sqrt(2), rtol=0.35)
    # dark particles on a bright background: no candidate at their centres until the polarity
    # is corrected
    assert np.all(_nearest(detect_blobs(1.0 - discs())) > 3.0)
    assert len(detect_blobs(np.full((64, 64), 0.3, np.float32))) == 0


def test_candidate_points_are_in_input_pixels_and_capped():
    img = discs()
    masker = SamMasker.from_model(tiny_sam(0), work_size=128, prompt_mode="blobs", **LOOSE)
    pts = masker.candidate_points(img, polarity="bright")  # found at 128 px, returned at 256
    assert pts.shape[1] == 2 and 5 <= len(pts) <= 6  # at most one noise candidate
    assert np.all(_nearest(pts[:5]) <= 3.0)  # the discs are the strongest five
    dark = masker.candidate_points(1.0 - img, polarity="dark")  # polarity corrected
    assert np.all(_nearest(dark[:5]) <= 3.0)
    capped = SamMasker.from_model(tiny_sam(0), work_size=128, prompt_mode="blobs",
                                  max_prompts=3, **LOOSE)
    three = capped.candidate_points(img, polarity="bright")
    assert len(three) == 3
    # the strongest first: the three largest discs (stronger after smoothing) are kept
    assert np.allclose(three, pts[:3])


def test_blobs_mode_prompts_sam_at_the_blobs_and_returns_a_label_map():
    img = discs()
    masker = SamMasker.from_model(tiny_sam(0), work_size=128, prompt_mode="blobs",
                                  points_per_batch=2, **LOOSE)
    seen: list[np.ndarray] = []
    real = masker._predictor.predict_torch

    def spy(point_coords, *args, **kwargs):
        seen.append(point_coords.detach().cpu().numpy().reshape(-1, 2))
        return real(point_coords, *args, **kwargs)

    masker._predictor.predict_torch = spy
    calls: list[tuple[int, int]] = []
    recs = masker.masks(img, polarity="bright", progress=lambda d, t, m: calls.append((d, t)))
    prompts = np.concatenate(seen)  # SAM input frame (128 px here)
    expected = masker.candidate_points(img, polarity="bright")
    n = len(expected)
    assert len(prompts) == n and len(seen) == (n + 1) // 2  # in batches of 2
    in_px = prompts * 256 / masker.model.image_encoder.img_size - 0.5
    assert np.allclose(in_px, expected, atol=1e-3)  # SAM is prompted exactly there
    assert np.all(_nearest(in_px) <= 3.0)
    assert masker.n_batches() == (n + 1) // 2 and calls[-1] == ((n + 1) // 2,) * 2
    assert len(recs) >= 1 and all(r["segmentation"].shape == (120, 128) for r in recs)
    # every mask comes from one of the blob prompts (work-image px)
    pts = np.array([r["point_coords"][0] for r in recs], dtype=np.float64)
    d = np.linalg.norm((pts * 2.0 - 0.5)[:, None] - expected[None].astype(np.float64), axis=2)
    assert np.all(d.min(axis=1) <= 1e-3)
    labels = masker(img, polarity="bright")
    assert_label_map(labels, img.shape)
    assert labels.max() >= 1


def test_blobs_mode_with_nothing_to_prompt_is_empty():
    masker = SamMasker.from_model(tiny_sam(0), work_size=64, prompt_mode="blobs", **LOOSE)
    flat = np.full((64, 64), 0.4, np.float32)
    assert masker.masks(flat, polarity="bright") == []
    labels = masker(flat, polarity="bright")
    assert labels.shape == (64, 64) and labels.max() == 0


def test_grid_mode_unchanged_and_encoder_precision():
    img = discs()
    stock = SamMasker.from_model(tiny_sam(0), work_size=128, **LOOSE)
    assert stock.prompt_mode == "grid" and stock.n_batches() == 1
    again = SamMasker.from_model(tiny_sam(0), work_size=128, prompt_mode="grid", max_prompts=1,
                                 **LOOSE)
    a, b = stock(img, polarity="bright"), again(img, polarity="bright")
    assert np.array_equal(a, b) and a.max() >= 2  # blob knobs do not touch grid mode
    bf = SamMasker.from_model(tiny_sam(0), work_size=128, encoder_precision="bf16", **LOOSE)
    rgb = bf._work_image(bf._rgb(img, "bright"))
    bf._predictor.set_image(rgb)
    stock._predictor.set_image(rgb)
    f16, f32 = bf._predictor.features, stock._predictor.features
    assert f16.dtype == torch.float32  # the decoder always sees float32
    rel = float((f16 - f32).norm() / f32.norm())
    assert 0 < rel < 0.05


def test_settings_and_presets():
    fast = SAM_PRESETS["paper-fast"]
    assert fast["prompt_mode"] == "blobs" and fast["crop_n_layers"] == 0
    assert {k: v for k, v in fast.items() if k not in ("prompt_mode", "max_prompts",
                                                        "encoder_precision")} == \
        SAM_PRESETS["paper"]
    m = SamMasker.from_model(tiny_sam(0), prompt_mode="blobs", max_prompts=7)
    s = m.settings()
    assert s["prompt_mode"] == "blobs" and s["max_prompts"] == 7 and "blob_threshold" in s
    with pytest.raises(InputError, match="prompt_mode"):
        SamMasker.from_model(tiny_sam(0), prompt_mode="boxes")
    with pytest.raises(InputError, match="max_prompts"):
        SamMasker(max_prompts=0)  # checked before looking for weights
    with pytest.raises(InputError, match="blob sigmas"):
        SamMasker.from_model(tiny_sam(0), blob_min_sigma=5, blob_max_sigma=2)
    with pytest.raises(InputError, match="encoder_precision"):
        SamMasker.from_model(tiny_sam(0), encoder_precision="fp16")
