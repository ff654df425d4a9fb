"""SamMasker end to end with a tiny randomly initialised SAM (no download) on a real micrograph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emcopilot import io
from emcopilot.errors import InputError, WeightsUnavailableError
from emcopilot.masking.sam import SAM_PRESETS, SamMasker, masks_to_labels
from tests.tiny_sam import LOOSE, assert_label_map, one_thread, tiny_sam  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def image01(examples_dir) -> np.ndarray:
    m = io.read_micrograph(examples_dir / "catalysts" / "images" / "Pt4.jpg")
    return io.normalize(m.image)


def test_end_to_end_label_map_on_real_image(image01):
    masker = SamMasker.from_model(tiny_sam(0), work_size=256, **LOOSE)
    crop = image01[:300, :200]  # non-square: the longer side goes to work_size, then back
    recs = masker.masks(crop, polarity="bright")
    assert len(recs) > 3
    assert all(r["segmentation"].shape == (256, 171) for r in recs)
    labels = masker(crop, polarity="bright")
    assert_label_map(labels, crop.shape)
    assert labels.max() >= 2


def test_max_mask_region_area_removes_large_masks(image01):
    image01 = image01[:320, :320]  # native size (work_size=None): areas are image pixels
    model = tiny_sam(0)
    free = SamMasker.from_model(model, work_size=None, **LOOSE)
    areas = np.array([int(r["area"]) for r in free.masks(image01, polarity="bright")])
    assert len(areas) > 3 and areas.max() > areas.min()
    limit = float(np.median(areas))
    capped = SamMasker.from_model(model, work_size=None, max_mask_region_area=limit, **LOOSE)
    kept = capped.masks(image01, polarity="bright")
    assert 0 < len(kept) < len(areas)
    assert all(r["area"] <= limit for r in kept)
    assert len(kept) == int((areas <= limit).sum())
    labels = capped(image01, polarity="bright")
    assert_label_map(labels, image01.shape)
    region_areas = np.bincount(labels.ravel())[1:]
    assert region_areas.max() <= limit


def test_overlaps_smaller_mask_wins():
    big = np.zeros((20, 20), bool)
    big[2:18, 2:18] = True
    small = np.zeros((20, 20), bool)
    small[5:9, 5:9] = True
    recs = [{"segmentation": small, "area": 16, "predicted_iou": 0.1},
            {"segmentation": big, "area": 256, "predicted_iou": 0.9}]
    lab = masks_to_labels(recs, (20, 20), overlap="smaller")
    assert len(np.unique(lab[5:9, 5:9])) == 1 and lab[5, 5] != lab[3, 3] != 0
    lab = masks_to_labels(recs, (20, 20), overlap="iou")  # the big one covers the small one
    assert lab.max() == 1 and lab[5, 5] == 1


def test_progress_reports_every_point_batch(image01):
    masker = SamMasker.from_model(tiny_sam(1), work_size=128, points_per_batch=5, **LOOSE)
    assert masker.n_batches() == 4  # 16 points in batches of 5
    seen = []
    masker(image01, polarity="auto", progress=lambda d, t, m: seen.append((d, t)))
    assert [d for d, _ in seen[:4]] == [1, 2, 3, 4] and all(t == 4 for _, t in seen)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_loads_from_path(tmp_path, image01, suffix):
    from safetensors.torch import save_file

    ref_model = tiny_sam(0)
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".pth":
        torch.save(ref_model.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in ref_model.state_dict().items()}, str(path))
    other = tiny_sam(5)  # different random weights
    loaded = SamMasker.from_model(other, checkpoint=path, work_size=128, **LOOSE)
    for k, v in ref_model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    ref = SamMasker.from_model(ref_model, work_size=128, **LOOSE)
    assert np.array_equal(loaded(image01, polarity="bright"), ref(image01, polarity="bright"))


def test_constructor_loads_checkpoint_into_registry_model(tmp_path, monkeypatch, image01):
    """SamMasker(model_type=..., checkpoint=...) builds sam_model_registry[model_type] without
    weights and loads the file itself (weights_only); presets keep their documented values."""
    import segment_anything

    torch.save(tiny_sam(0).state_dict(), tmp_path / "sam.pth")
    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_b",
                        lambda checkpoint=None: tiny_sam(9))
    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_h",
                        lambda checkpoint=None: tiny_sam(9))
    m = SamMasker("vit_b", checkpoint=tmp_path / "sam.pth", device="cpu", work_size=128, **LOOSE)
    assert m.model_type == "vit_b" and m.device == "cpu"
    ref = tiny_sam(0).state_dict()
    assert all(torch.equal(m.model.state_dict()[k], v) for k, v in ref.items())
    assert_label_map(m(image01, polarity="bright"), image01.shape)

    paper = SamMasker.preset("paper", checkpoint=tmp_path / "sam.pth", device="cpu")
    assert (paper.model_type, paper.points_per_side, paper.pred_iou_thresh,
            paper.stability_score_thresh, paper.crop_n_layers, paper.max_mask_region_area,
            paper.work_size) == ("vit_b", 32, 0.5, 0.9, 0, None, 512)
    authors = SamMasker.preset("authors", checkpoint=tmp_path / "sam.pth", device="cpu")
    assert (authors.model_type, authors.pred_iou_thresh, authors.crop_n_layers,
            authors.max_mask_region_area) == ("vit_h", 0.01, 1, 1000)
    assert SAM_PRESETS["paper"]["model_type"] == "vit_b"

    torch.save(tiny_sam(0, dim=48).state_dict(), tmp_path / "other.pth")
    with pytest.raises(InputError, match="does not fit"):
        SamMasker("vit_b", checkpoint=tmp_path / "other.pth", device="cpu")


def test_without_weights_raises_with_way_forward():
    with pytest.raises(WeightsUnavailableError) as ei:
        SamMasker()
    msg = str(ei.value)
    assert "sam_vit_b_01ec64.pth" in msg and "EMCOPILOT_WEIGHTS_DIR" in msg
    assert "--sam-checkpoint" in msg and "classical masker" in msg and "\n" not in msg


def test_wrong_file_in_weights_dir_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EMCOPILOT_WEIGHTS_DIR", str(tmp_path))
    torch.save(tiny_sam(0).state_dict(), tmp_path / "sam_vit_b_01ec64.pth")
    with pytest.raises(WeightsUnavailableError, match="expected 375042383"):
        SamMasker()


def test_bad_settings_are_input_errors():
    with pytest.raises(InputError, match="model_type"):
        SamMasker("vit_x")
    with pytest.raises(InputError, match="pred_iou_thresh"):
        SamMasker(pred_iou_thresh=1.5)  # checked before looking for weights
    with pytest.raises(InputError, match="unknown SAM preset"):
        SamMasker.preset("fast")
    with pytest.raises(InputError, match="unknown SAM setting"):
        SamMasker.from_model(tiny_sam(0), model_type="vit_b")


def test_prompt_returns_one_mask_of_image_shape(image01):
    masker = SamMasker.from_model(tiny_sam(2), work_size=128, **LOOSE)
    by_point = masker.prompt(image01, points=[(320, 300)])
    by_box = masker.prompt(image01, box=(100, 120, 400, 380))
    both = masker.prompt(image01, points=[(320, 300), (10, 10)], point_labels=[1, 0],
                         box=(100, 120, 400, 380))
    for m in (by_point, by_box, both):
        assert m.dtype == bool and m.shape == image01.shape
    assert by_point.any() or by_box.any() or both.any()
    with pytest.raises(InputError):
        masker.prompt(image01)
    with pytest.raises(InputError, match="box"):
        masker.prompt(image01, box=(10, 10, 5, 20))
    with pytest.raises(InputError):
        masker(np.zeros((4, 4, 3), np.float32))
