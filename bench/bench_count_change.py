"""Where a change in the mean count error comes from: two ``evaluate --out`` reports compared
image by image.

The mean absolute relative count error (``evaluate``'s ``count_rel_abs_error_mean``) weighs an
image with one labelled particle like one with a hundred. This reads the per-image rows
(``per_image.csv``) of two reports on the same images (``--before``, ``--after``) and prints:
how many images keep, lower or raise their absolute relative count error; that mean per bin of
labelled particles per image (``--bins``: the bins' lower edges); the pooled count error (the
sum over images of |predicted - labelled| over the sum labelled); and the images whose error
changed most (``--top``).

    python -m bench.bench_count_change --before runs/eval/emps28_segmentation \
        --after runs/eval/emps30_segmentation
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import per_image_rows, write_json
from emcopilot.evaluate import count_agreement


def _error(row: dict[str, str]) -> float:
    return abs(int(row["n_pred"]) - int(row["n_true"])) / int(row["n_true"])


def compare(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]],
            bins: tuple[int, ...] = (1, 5, 20), top: int = 5) -> dict:
    """The comparison above over the images both reports hold with at least one labelled
    particle (rows as :func:`bench.common.per_image_rows` reads them)."""
    names = [n for n in before if n in after and int(before[n]["n_true"]) > 0]
    if not names:
        raise SystemExit("the two reports share no image with labelled particles")
    for n in names:
        if before[n]["n_true"] != after[n]["n_true"]:
            raise SystemExit(f"{n}: the reports disagree on its labelled particles")
    err = {n: (_error(before[n]), _error(after[n])) for n in names}
    change = {n: b - a for n, (a, b) in err.items()}
    true = {n: int(before[n]["n_true"]) for n in names}

    def pooled(rows: dict) -> float:
        return sum(abs(int(rows[n]["n_pred"]) - true[n]) for n in names) / sum(true.values())

    edges = sorted(bins) + [None]
    by_bin = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = [n for n in names if true[n] >= lo and (hi is None or true[n] < hi)]
        if inside:
            by_bin.append({"labelled": f"{lo}-{hi - 1}" if hi else f">={lo}",
                           "images": len(inside),
                           "mean_error_before": sum(err[n][0] for n in inside) / len(inside),
                           "mean_error_after": sum(err[n][1] for n in inside) / len(inside)})
    ranked = sorted(names, key=lambda n: (-abs(change[n]), n))[:top]
    return {
        "images": len(names),
        "kept": sum(abs(change[n]) < 1e-9 for n in names),
        "lower": sum(change[n] <= -1e-9 for n in names),
        "higher": sum(change[n] >= 1e-9 for n in names),
        "before": count_agreement([int(before[n]["n_pred"]) for n in names],
                                  [true[n] for n in names]),
        "after": count_agreement([int(after[n]["n_pred"]) for n in names],
                                 [true[n] for n in names]),
        "pooled_count_error_before": pooled(before),
        "pooled_count_error_after": pooled(after),
        "by_labelled_particles": by_bin,
        "largest_changes": [{"name": n, "labelled": true[n],
                             "predicted_before": int(before[n]["n_pred"]),
                             "predicted_after": int(after[n]["n_pred"]),
                             "error_change": change[n]} for n in ranked],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, type=Path, help="an `evaluate --out` folder")
    ap.add_argument("--after", required=True, type=Path, help="an `evaluate --out` folder")
    ap.add_argument("--bins", type=int, nargs="+", default=[1, 5, 20],
                    help="lower edges of the bins of labelled particles per image")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("bench/results/count_change.json"))
    args = ap.parse_args(argv)
    result = compare(per_image_rows(args.before), per_image_rows(args.after),
                     tuple(args.bins), args.top)
    write_json(args.out, {"before": str(args.before), "after": str(args.after), **result})
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
