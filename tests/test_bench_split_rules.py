"""bench_split_rules: the two merge rules it scores, and its command line on real train images."""

from __future__ import annotations

import json

import numpy as np

from bench.bench_split_rules import main, merge_convex


def test_merge_convex_joins_a_wire_cut_at_its_waist_not_two_touching_discs():
    wire = np.zeros((40, 100), np.int32)
    wire[10:20, 10:50], wire[10:20, 50:90] = 1, 2  # one bar cut in two
    assert set(np.unique(merge_convex(wire, 0.95))) == {0, 1}
    yy, xx = np.mgrid[:60, :100]
    discs = np.zeros((60, 100), np.int32)
    discs[(yy - 30) ** 2 + (xx - 35) ** 2 <= 225] = 1
    discs[((yy - 30) ** 2 + (xx - 64) ** 2 <= 225) & (discs == 0)] = 2
    np.testing.assert_array_equal(merge_convex(discs, 0.95), discs)
    assert set(np.unique(merge_convex(discs, 0.5))) == {0, 1}  # any union passes a low bar


def test_command_scores_each_rule_on_train_images(shared_data, tmp_path, capsys):
    out = tmp_path / "rules.json"
    assert main(["--out", str(out), "--limit", "3", "--shares", "0,0.9",
                 "--solidities", "0.5"]) == 0
    got = json.loads(out.read_text())
    assert got["images"] == 3
    assert set(got["scores"]) == {"split_share 0", "split_share 0.9", "convex merge 0.5"}
    plain, merged = got["scores"]["split_share 0"], got["scores"]["convex merge 0.5"]
    assert merged["n_pred"] <= plain["n_pred"]  # merging only removes particles
    assert got["scores"]["split_share 0.9"]["n_pred"] <= plain["n_pred"]
    assert "convex merge 0.5" in capsys.readouterr().out
