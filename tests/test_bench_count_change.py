"""The count-change bench: which images move the mean count error, from two evaluate reports."""

from __future__ import annotations

import csv

import pytest

from bench.bench_count_change import compare, main
from bench.common import per_image_rows


def _report(folder, counts):
    folder.mkdir()
    with open(folder / "per_image.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["name", "n_true", "n_pred"])
        w.writeheader()
        for name, (n_true, n_pred) in counts.items():
            w.writerow({"name": name, "n_true": n_true, "n_pred": n_pred})
    return folder


def test_count_change_splits_the_mean_error_by_image_and_labelled_particles(tmp_path):
    before = _report(tmp_path / "before", {"one": (1, 3), "few": (4, 4), "many": (50, 30),
                                           "same": (10, 12), "empty": (0, 5)})
    after = _report(tmp_path / "after", {"one": (1, 5), "few": (4, 4), "many": (50, 45),
                                         "same": (10, 8), "empty": (0, 9)})
    got = compare(per_image_rows(before), per_image_rows(after), bins=(1, 5), top=2)
    # "empty" has no labelled particle: no relative error, left out as evaluate does
    assert got["images"] == 4
    # errors before / after: one 2 -> 4, few 0 -> 0, many 0.4 -> 0.1, same 0.2 -> 0.2
    assert (got["kept"], got["lower"], got["higher"]) == (2, 1, 1)
    assert got["before"]["count_rel_abs_error_mean"] == pytest.approx((2 + 0 + 0.4 + 0.2) / 4)
    assert got["after"]["count_rel_abs_error_mean"] == pytest.approx((4 + 0 + 0.1 + 0.2) / 4)
    assert got["pooled_count_error_before"] == pytest.approx((2 + 0 + 20 + 2) / 65)
    assert got["pooled_count_error_after"] == pytest.approx((4 + 0 + 5 + 2) / 65)
    assert got["by_labelled_particles"] == [
        {"labelled": "1-4", "images": 2, "mean_error_before": pytest.approx(1.0),
         "mean_error_after": pytest.approx(2.0)},
        {"labelled": ">=5", "images": 2, "mean_error_before": pytest.approx(0.3),
         "mean_error_after": pytest.approx(0.15)}]
    assert [r["name"] for r in got["largest_changes"]] == ["one", "many"]
    assert got["largest_changes"][0]["error_change"] == pytest.approx(2.0)
    assert main(["--before", str(before), "--after", str(after),
                 "--out", str(tmp_path / "out.json")]) == 0
    assert (tmp_path / "out.json").is_file()


def test_reports_that_disagree_on_the_labels_are_refused(tmp_path):
    before = _report(tmp_path / "before", {"a": (3, 3)})
    after = _report(tmp_path / "after", {"a": (4, 3)})
    with pytest.raises(SystemExit, match="disagree"):
        compare(per_image_rows(before), per_image_rows(after))
