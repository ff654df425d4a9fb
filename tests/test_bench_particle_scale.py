"""bench_particle_scale end to end on a bundled real image (the split it scores:
test_particle_scale)."""

from __future__ import annotations

import json

import numpy as np

from bench.bench_particle_scale import main
from emcopilot import io


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
