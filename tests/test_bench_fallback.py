"""The per-image fallback bench: which images fall back and what it pools."""

from __future__ import annotations

from bench.bench_fallback import score


def _row(n_true, n_pred, tp):
    return {"n_true": str(n_true), "n_pred": str(n_pred), "obj_tp": str(tp),
            "obj_fp": str(n_pred - tp), "obj_fn": str(n_true - tp),
            "relative_count_error": str((n_pred - n_true) / n_true)}


def test_fallback_takes_coarse_rows_only_below_the_ratio():
    pred = {"a": _row(10, 2, 2), "b": _row(10, 9, 8)}
    coarse = {"a": _row(10, 10, 6), "b": _row(10, 18, 5)}
    none = score(pred, coarse, None)
    assert none["images_from_coarse"] == 0
    assert none["obj_f1"] == round(2 * 10 / (2 * 10 + 1 + 10), 3)
    half = score(pred, coarse, 0.5)  # a: 2 < 5 falls back; b: 9 >= 9 stays
    assert half["images_from_coarse"] == 1
    assert half["obj_f1"] == round(2 * 14 / (2 * 14 + 5 + 6), 3)
    assert half["count_rel_abs_error_mean"] == round((0.0 + 0.1) / 2, 3)
    assert score(pred, coarse, 1.0)["images_from_coarse"] == 2
