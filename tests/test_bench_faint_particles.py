"""The faint-particle bench: a run's label maps filtered at each level, scored, and the level
chosen leave-one-image-out."""

from __future__ import annotations

import numpy as np
import pytest

from bench.bench_faint_particles import leave_one_out, main
from emcopilot import io


def _run(tmp_path, n_images=3, blobs=(6, 0, 3)):
    """A run folder: noisy images with four bright particles each (the truth) and label maps
    holding those four plus ``blobs[i]`` noise patches taken for particles."""
    run, truth = tmp_path / "run", tmp_path / "truth"
    rng = np.random.default_rng(0)
    for i in range(n_images):
        img = 0.3 + 0.04 * rng.standard_normal((96, 96))
        true = np.zeros((96, 96), np.int32)
        for k, (y, x) in enumerate(((8, 8), (8, 50), (50, 8), (50, 50)), 1):
            img[y:y + 12, x:x + 12] += 0.3
            true[y:y + 12, x:x + 12] = k
        pred = true.copy()
        for b in range(blobs[i]):  # 4 x 4 patches of plain noise along the bottom row
            pred[84:88, 4 + 12 * b:8 + 12 * b] = 5 + b
        io.write_image(run / "images" / f"im{i}.png", np.clip(img, 0, 1))
        io.write_label_map(run / "segmentation" / f"im{i}.png", pred)
        io.write_label_map(truth / f"im{i}.png", true)
    return run, truth


def test_the_grid_drops_the_noise_particles_and_scores_each_level(tmp_path):
    run, truth = _run(tmp_path)
    out = tmp_path / "out"
    got = main(["--run", str(run), "--truth", str(truth), "--truth-format", "instance",
                "--grid", "0,25,1000", "--out", str(out)])
    rows = {r["min_snr"]: r for r in got["grid"]}
    assert rows[0.0]["dropped"] == 0 and rows[0.0]["n_pred"] == 12 + 9
    # the noise patches go, the bright particles stay
    assert rows[25.0]["dropped"] == 9 and rows[25.0]["n_pred"] == 12
    assert rows[25.0]["obj_f1"] == pytest.approx(1.0)
    # the labelled particles are bright: none of the 12 would be dropped at either level
    assert rows[0.0]["labelled"] == rows[25.0]["labelled"] == 12
    assert rows[25.0]["labelled_faint"] == 0
    assert rows[1000.0]["labelled_faint"] == 12  # their SNR is about 90: all go at 1000
    assert got["labelled_faint_per_image"]["25"] == {f"im{i}": [0, 4] for i in range(3)}
    assert rows[0.0]["obj_f1"] == pytest.approx(2 * 12 / (21 + 12))
    for i in range(3):
        kept = io.read_label_map(out / "snr25" / f"im{i}.png")
        np.testing.assert_array_equal(kept, io.read_label_map(truth / f"im{i}.png"))
    # leave one out: every image's level chosen on the others is 25 (it lowers their error)
    assert got["leave_one_out"]["levels_chosen"] == [25.0]
    assert got["leave_one_out"]["count_rel_abs_error_mean"] == pytest.approx(0.0)
    assert (out / "faint_particles.json").is_file()
    assert set(got["seconds"]) == {"im0", "im1", "im2"}
    assert all(v[0] > 0 and v[1:3] == [96, 96] for v in got["seconds"].values())


def test_leave_one_out_chooses_on_the_other_images_only():
    def row(n_pred, n_true=10, tp=None):
        tp = min(n_pred, n_true) if tp is None else tp
        return {"n_pred": n_pred, "n_true": n_true, "obj_tp": tp, "obj_fp": n_pred - tp,
                "obj_fn": n_true - tp}

    # level 5 helps a and b, hurts c; on c's held-out turn a and b choose 5 for it
    per_level = {0.0: {"a": row(20), "b": row(20), "c": row(10)},
                 5.0: {"a": row(10), "b": row(10), "c": row(4)}}
    got = leave_one_out(per_level)
    assert got["chosen"] == {"a": 5.0, "b": 5.0, "c": 5.0}
    assert got["count_rel_abs_error_mean"] == pytest.approx(0.6 / 3)
    # with one image that likes 0 and one that likes 5, each gets the other's choice
    two = {0.0: {"a": row(10), "b": row(20)}, 5.0: {"a": row(4), "b": row(10)}}
    assert leave_one_out(two)["chosen"] == {"a": 5.0, "b": 0.0}
