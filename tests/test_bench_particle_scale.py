"""bench_particle_scale's split of touching coarse particles, and the bench end to end on a
bundled real image."""

from __future__ import annotations

import json

import numpy as np

from bench.bench_particle_scale import main, split_touching
from emcopilot import io


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2


def test_two_touching_discs_become_two_and_a_lone_disc_stays_one():
    lab = np.zeros((60, 90), np.int32)
    lab[_disc(lab.shape, 30, 25, 10) | _disc(lab.shape, 30, 43, 10)] = 1  # touching pair
    lab[_disc(lab.shape, 30, 75, 8)] = 2
    out = split_touching(lab)
    assert out.max() == 3
    assert out[30, 25] != out[30, 43] and out[30, 25] > 0 and out[30, 43] > 0
    assert (out > 0).sum() == (lab > 0).sum()
    areas = np.bincount(out.ravel())[1:]
    assert abs(int(areas[out[30, 25] - 1]) - int(areas[out[30, 43] - 1])) < 0.1 * areas.max()


def test_bench_scores_every_estimate_on_a_bundled_image(tmp_path, examples_dir):
    truth = examples_dir / "emps" / "segmaps"
    coarse = tmp_path / "coarse"
    coarse.mkdir()
    stems = sorted(p.stem for p in truth.glob("*.png"))[:3]
    for stem in stems:  # the manual masks as "coarse" masks: the estimate must follow them
        io.write_label_map(coarse / f"{stem}.png", io.read_label_map(truth / f"{stem}.png"))
    out = tmp_path / "r.json"
    assert main(["--coarse", str(coarse), "--truth", str(truth), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["plain_median"]["n"] == len(stems)
    assert result["plain_median"]["median_ratio_true_over_estimate"] == 1.0
    assert result["split_area_weighted_median"]["n"] == len(stems)
    rows = result["per_image"]
    assert [r["name"] for r in rows] == stems
    for row in rows:  # the manual masks' own widths, split or not, near their median width
        assert row["true_median_width_px"] > 0
        assert 0.5 < row["area_weighted_median_px"] / row["true_median_width_px"] < 3
