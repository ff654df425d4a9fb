"""Which images the classical preset "auto" judges "supported", with and without its second rule
(the largest Otsu region taken as a support, ``masking.classical.AUTO_SUPPORT_REGION``).

    .venv/bin/python -m bench.bench_auto_preset --out bench/results/auto_preset.json

For the 33 catalyst images and the EMPS train and test splits: the preset ``choose_preset`` picks
with the rule and with it switched off, and the images where they differ. On EMPS train (where
the rule's thresholds were checked) it also scores the images on which the largest-region size
alone would fire (Otsu foreground <= AUTO_SUPPORT_FOREGROUND, largest Otsu region >
AUTO_SUPPORT_REGION, the "supported" masker finds >= AUTO_MIN_PARTICLES): pixel Dice and object
F1 of the "isolated" and the "supported" masker against the manual masks, i.e. what a rule on
the region's size alone would cost there.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from bench.common import catalyst_items, describe, emps_pairs, machine, write_json
from emcopilot import io
from emcopilot.masking import classical
from emcopilot.masking.classical import ClassicalMasker, choose_preset
from emcopilot.masking.filters import bright_image, resolve_polarity
from emcopilot.metrics import object_scores, pixel_scores


def _without_region_rule(image01: np.ndarray) -> str:
    saved = classical.AUTO_SUPPORT_REGION
    classical.AUTO_SUPPORT_REGION = float("inf")
    try:
        return choose_preset(image01)[0]
    finally:
        classical.AUTO_SUPPORT_REGION = saved


def _otsu_cues(image01: np.ndarray) -> tuple[float, float]:
    """(Otsu foreground share, largest Otsu region share) as ``choose_preset`` measures them."""
    otsu = classical.otsu_foreground(bright_image(image01, resolve_polarity(image01, "auto")))
    return float(otsu.mean()), float(classical.largest_region(otsu).mean())


def bench_set(name: str, items: list, score_size_rule: bool) -> dict[str, Any]:
    rows, changed, negatives = [], [], []
    for k, (img_path, truth_path) in enumerate(items, 1):
        img = io.normalize(io.read_micrograph(img_path).image)
        with_rule, before = choose_preset(img)[0], _without_region_rule(img)
        fg, largest = _otsu_cues(img)
        row = {"image": img_path.stem, "preset": with_rule, "preset_without_rule": before,
               "otsu_foreground": fg, "largest_region": largest}
        if with_rule != before:
            changed.append(img_path.stem)
        if (score_size_rule and fg <= classical.AUTO_SUPPORT_FOREGROUND
                and largest > classical.AUTO_SUPPORT_REGION):
            sup = ClassicalMasker.from_preset("supported")(img)
            if sup.max() >= classical.AUTO_MIN_PARTICLES:
                iso = ClassicalMasker.from_preset("isolated")(img)
                truth = io.read_label_map(truth_path)
                row.update({f"{tag}_{m}": float(fn(lab, truth)[m])
                            for tag, lab in (("isolated", iso), ("supported", sup))
                            for m, fn in (("dice", pixel_scores), ("f1", object_scores))})
                row["n_true"] = int(np.count_nonzero(np.unique(truth)))
                negatives.append(row)
        rows.append(row)
        print(f"\r{name}: {k}/{len(items)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    out = {"n_images": len(rows), "supported": sum(r["preset"] == "supported" for r in rows),
           "supported_without_rule": sum(r["preset_without_rule"] == "supported" for r in rows),
           "changed": changed, "per_image": rows}
    if score_size_rule:
        out["size_rule_alone"] = {"n_images": len(negatives),
                                  "images": [r["image"] for r in negatives],
                                  **{k: describe([r[k] for r in negatives]) for k in
                                     ("isolated_dice", "supported_dice", "isolated_f1",
                                      "supported_f1", "n_true")}}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/results/auto_preset.json")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set (smoke)")
    args = ap.parse_args(argv)
    sets = {"catalysts": (catalyst_items(), False), "emps_train": (emps_pairs("train"), True),
            "emps_test": (emps_pairs("test"), False)}
    result: dict[str, Any] = {"benchmark": "auto_preset", "command": " ".join(sys.argv),
                              "machine": machine()}
    for name, (items, score) in sets.items():
        result[name] = bench_set(name, items[: args.limit], score)
        r = result[name]
        print(f"{name}: {r['supported']}/{r['n_images']} supported "
              f"({r['supported_without_rule']} without the rule); changed: {r['changed']}")
        if score:
            s = r["size_rule_alone"]
            if s["n_images"]:
                print(f"  size rule alone would fire on {s['n_images']}: Dice "
                      f"{s['isolated_dice']['mean']:.2f} -> {s['supported_dice']['mean']:.2f}, "
                      f"F1 {s['isolated_f1']['mean']:.2f} -> {s['supported_f1']['mean']:.2f}")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
