"""evaluate_dirs / write_evaluation_report on the real EMPS segmaps and catalyst YOLO labels."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from emcopilot.errors import InputError
from emcopilot.evaluate import evaluate_dirs, read_yolo_boxes, write_evaluation_report


def _read(p):
    with Image.open(p) as im:
        return np.asarray(im).astype(np.int32)


def _write(p, labels):
    Image.fromarray(np.ascontiguousarray(labels.astype(np.uint16))).save(p)


def _segmaps(examples_dir):
    return sorted((examples_dir / "emps" / "segmaps").glob("*.png"))


def test_examples_against_themselves_are_perfect(examples_dir, tmp_path):
    truth_dir = examples_dir / "emps" / "segmaps"
    calls = []
    r = evaluate_dirs(truth_dir, truth_dir, pixel_size_nm=0.5,
                      progress=lambda d, t, m: calls.append((d, t)))
    n_img = len(_segmaps(examples_dir))
    n_inst = sum(len(np.unique(_read(p))) - 1 for p in _segmaps(examples_dir))
    a = r["aggregate"]
    assert a["n_images"] == n_img and calls[-1] == (n_img, n_img)
    for k in ("dice_mean", "iou_pooled", "precision_pooled", "recall_pooled", "mIoU_mean",
              "obj_precision", "obj_recall", "obj_f1", "mean_matched_iou"):
        assert a[k] == pytest.approx(1.0), k
    assert a["n_true"] == a["n_pred"] == a["obj_tp"] == n_inst
    assert a["count_abs_error_mean"] == 0 and a["ks_distance"] == 0
    assert a["mean_diameter_rel_error"] == 0
    assert a["mean_diameter_true_nm"] == pytest.approx(a["mean_diameter_true_px"] * 0.5)
    assert r["missing"] == {"no_prediction": [], "no_truth": [], "no_probability": []}

    paths = write_evaluation_report(r, tmp_path / "out")
    back = json.loads(paths["json"].read_text())
    assert back["aggregate"]["obj_tp"] == n_inst
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_img and {"name", "dice", "obj_f1", "ks_distance"} <= set(rows[0])
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_removed_instances_drop_recall_by_the_removed_share(examples_dir, tmp_path):
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    n_true = removed = px_total = px_removed = 0
    for p in _segmaps(examples_dir):
        lab = _read(p)
        ids = np.unique(lab)[1:]
        drop = ids[: min(2, len(ids) - 1)]          # keep at least one particle per image
        n_true += len(ids)
        removed += len(drop)
        px_total += int((lab > 0).sum())
        px_removed += int(np.isin(lab, drop).sum())
        lab[np.isin(lab, drop)] = 0
        _write(pred_dir / p.name, lab)
    assert removed > 0
    a = evaluate_dirs(pred_dir, examples_dir / "emps" / "segmaps")["aggregate"]
    assert a["obj_fn"] == removed and a["obj_fp"] == 0
    assert a["obj_recall"] == pytest.approx((n_true - removed) / n_true)
    assert a["obj_precision"] == 1.0
    assert a["recall_pooled"] == pytest.approx(1 - px_removed / px_total)
    assert a["precision_pooled"] == 1.0
    assert a["count_abs_error_mean"] == pytest.approx(removed / len(_segmaps(examples_dir)))
    assert a["matched_diameter_abs_rel_error_mean"] == 0


def test_eroded_prediction_scores_drop_as_expected(examples_dir, tmp_path):
    from scipy import ndimage

    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    t_px = e_px = 0
    expected_rel = []
    for p in _segmaps(examples_dir):
        lab = _read(p)
        er = np.zeros_like(lab)
        for i, sl in enumerate(ndimage.find_objects(lab), 1):
            if sl is None:
                continue
            m = np.pad(lab[sl] == i, 1)
            e = ndimage.binary_erosion(m, iterations=2)[1:-1, 1:-1]
            er[sl][e] = i
            a0, a1 = int(m.sum()), int(e.sum())
            if a1 and a1 / a0 >= 0.5:   # still an IoU >= 0.5 match
                expected_rel.append(1 - math.sqrt(a1 / a0))
        t_px += int((lab > 0).sum())
        e_px += int((er > 0).sum())
        _write(pred_dir / p.name, er)
    r = evaluate_dirs(pred_dir, examples_dir / "emps" / "segmaps")
    a = r["aggregate"]
    assert a["precision_pooled"] == pytest.approx(1.0)
    assert a["recall_pooled"] == pytest.approx(e_px / t_px)
    assert a["dice_pooled"] == pytest.approx(2 * e_px / (e_px + t_px))
    assert a["dice_pooled"] < 1
    assert a["obj_tp"] == len(expected_rel)
    assert a["matched_diameter_abs_rel_error_mean"] == pytest.approx(np.mean(expected_rel))
    assert a["mean_diameter_rel_error"] < 0 and a["ks_distance"] > 0


def test_missing_files_formats_and_probabilities(examples_dir, tmp_path):
    segs = _segmaps(examples_dir)
    pred_dir, bin_dir, cls_dir, prob_dir = (tmp_path / n for n in ("pred", "bin", "cls", "prob"))
    for d in (pred_dir, bin_dir, cls_dir, prob_dir):
        d.mkdir()
    from skimage.measure import label

    for p in segs[1:]:
        lab = _read(p)
        cc = label(lab > 0, connectivity=2)
        _write(pred_dir / p.name, cc)
        Image.fromarray(((lab > 0) * 255).astype(np.uint8)).save(bin_dir / p.name)
        Image.fromarray(((lab > 0) * 2).astype(np.uint8)).save(cls_dir / p.name)
        Image.fromarray(((lab > 0) * 200 + 20).astype(np.uint8)).save(prob_dir / p.name)
    _write(pred_dir / "not_in_truth.png", np.zeros((8, 8)))
    r = evaluate_dirs(pred_dir, bin_dir, truth_format="binary", prob_dir=prob_dir)
    a = r["aggregate"]
    assert r["missing"]["no_truth"] == ["not_in_truth"]
    assert a["n_images"] == len(segs) - 1
    assert a["obj_f1"] == 1.0 and a["dice_pooled"] == 1.0
    assert a["auc_mean"] == pytest.approx(1.0) and a["ap_mean"] == pytest.approx(1.0)
    r2 = evaluate_dirs(pred_dir, cls_dir, truth_format="class:2")
    assert r2["aggregate"]["obj_f1"] == 1.0
    assert evaluate_dirs(pred_dir, cls_dir, truth_format="class:1")["aggregate"]["n_true"] == 0
    r3 = evaluate_dirs(pred_dir, examples_dir / "emps" / "segmaps")
    assert r3["missing"]["no_prediction"] == [segs[0].stem]
    # a size mismatch is reported per image, not a crash
    _write(pred_dir / segs[1].name, np.zeros((10, 10)))
    r4 = evaluate_dirs(pred_dir, bin_dir, truth_format="binary")
    assert [f["name"] for f in r4["failed"]] == [segs[1].stem]
    with pytest.raises(InputError):
        evaluate_dirs(pred_dir, tmp_path / "empty_does_not_exist")
    (tmp_path / "other").mkdir()
    _write(tmp_path / "other" / "zzz.png", np.zeros((8, 8)))
    with pytest.raises(InputError, match="no file names"):
        evaluate_dirs(pred_dir, tmp_path / "other")
    with pytest.raises(InputError, match="truth_format"):
        evaluate_dirs(pred_dir, bin_dir, truth_format="semantic")


def test_yolo_counts_and_box_sizes(examples_dir, tmp_path):
    labels = sorted((examples_dir / "catalysts" / "labels").glob("*.txt"))
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    n_boxes = {}
    for lp in labels:
        with Image.open(examples_dir / "catalysts" / "images" / f"{lp.stem}.jpg") as im:
            w, h = im.size
        boxes = read_yolo_boxes(lp, (h, w))
        n_boxes[lp.stem] = len(boxes)
        lab = np.zeros((h, w), np.int32)
        # draw outlines only, so overlapping boxes keep their own extent
        for i, (x0, y0, x1, y1) in enumerate(np.round(boxes).astype(int), 1):
            x1, y1 = min(x1, w), min(y1, h)
            lab[y0:y1, x0] = lab[y0:y1, x1 - 1] = i
            lab[y0, x0:x1] = lab[y1 - 1, x0:x1] = i
        _write(pred_dir / f"{lp.stem}.png", lab)
    r = evaluate_dirs(pred_dir, examples_dir / "catalysts" / "labels", truth_format="yolo")
    rows = {row["name"]: row for row in r["per_image"]}
    assert set(rows) == set(n_boxes)
    for stem, n in n_boxes.items():
        assert rows[stem]["n_true"] == n
        assert rows[stem]["n_pred"] == n
        assert rows[stem]["obj_recall"] > 0.95
    a = r["aggregate"]
    assert a["count_abs_error_mean"] == 0
    assert a["count_rel_abs_error_median"] == 0 and a["count_within_factor_2"] == 1
    assert len(n_boxes) == 4 and a["count_pearson_r"] == pytest.approx(1.0)
    assert abs(a["mean_diameter_rel_error"]) < 0.05   # pixel rounding of the boxes only
    assert a["ks_distance"] < 0.1
    assert "dice_mean" not in a


def test_emps_test_split_self_and_with_instances_removed(shared_data, tmp_path):
    truth_dir = shared_data / "emps_test" / "segmaps"
    segs = sorted(truth_dir.glob("*.png"))
    r = evaluate_dirs(truth_dir, truth_dir)
    a = r["aggregate"]
    assert a["n_images"] == len(segs) == 99
    assert a["n_true"] == 2608 and a["obj_f1"] == 1.0 and a["dice_pooled"] == 1.0
    # every third image loses its largest-id instance
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    removed = 0
    for i, p in enumerate(segs):
        if i % 3 == 0:
            lab = _read(p)
            lab[lab == lab.max()] = 0
            _write(pred_dir / p.name, lab)
            removed += 1
        else:
            shutil.copy(p, pred_dir / p.name)
    b = evaluate_dirs(pred_dir, truth_dir)["aggregate"]
    assert b["obj_fn"] == removed and b["obj_fp"] == 0
    assert b["obj_recall"] == pytest.approx((2608 - removed) / 2608)
    assert b["count_abs_error_mean"] == pytest.approx(removed / 99)


def test_count_agreement_known_values():
    from emcopilot.evaluate import count_agreement

    c = count_agreement([10, 30, 5, 0], [10, 10, 10, 0])  # the empty image is left out
    assert c["count_rel_abs_error_median"] == pytest.approx(0.5)
    assert c["count_rel_abs_error_mean"] == pytest.approx((0 + 2 + 0.5) / 3)
    assert c["count_within_factor_2"] == pytest.approx(2 / 3)
    assert c["count_pearson_r"] is not None and c["count_spearman_rho"] is not None
    assert count_agreement([3, 4], [3, 4])["count_pearson_r"] is None  # too few images
    assert count_agreement([3, 3, 3], [1, 2, 3])["count_pearson_r"] is None  # constant counts
