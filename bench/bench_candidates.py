"""Which label-free judge would pick a pipeline run's best segmentor? Every candidate of a run
(``--segmentor-seeds N``: each seed, and the mean of their maps), its output against manual
labels beside the scores that could choose among them without labels.

For each candidate the run's particles are made again as its segment stage makes them from that
candidate's stored maps (``segmentation/candidates/<name>``): its own core probability and
growth as chosen and recorded in its checkpoint, the coarse particles it missed added when the
run adds them, the faint particles dropped at the run's level. Then they are scored

- against the labels (``emcopilot evaluate``'s :func:`~emcopilot.evaluate.evaluate_dirs`);
- against the run's coarse masks with the same function, as if they were labels (object F1 is
  what the pipeline compares today; pixel Dice, the size distribution's KS distance and the
  count error are other judges needing no label);
- against the other single-seed candidates' particles (mean pixel Dice: agreement among the
  segmentors; a mean is scored against every seed, its own members included, so this judge
  favours means by construction);
- by the best synthetic validation mIoU of its training (the mean: the mean of its seeds').

With ``--subset-means``, a run of three or more seeds also gets a candidate for the mean of
every smaller set of its seeds (at least two), made and chosen as the pipeline makes its
"mean" (the stored 8-bit maps averaged, the core probability and growth chosen by
:func:`~emcopilot.inference.choose_min_peak` on an :func:`ensemble_checkpoint` of them), and
for each set of seeds the candidate each judge would keep is printed: what a run with only
those segmentors would have kept by that judge.

With several runs (``--runs A B``, runs of the same images: the EMPS runs' coarse masks do not
depend on the seed), their candidates are pooled. Prints a row per candidate and, with three or
more, each judge's Spearman rank correlation with the labels' Dice and object F1, and which
candidate each judge would keep. Runs whose segment stage used ``--scale-choice`` or
``--support-check`` are refused (those re-run the segmentor per image).

    python -m bench.bench_candidates --runs runs/emps44 \
        --truth ../shared/data/emps_test/segmaps --truth-format instance
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from bench.common import rederivable_segment_record, segment_stage_particles, write_json
from emcopilot import io
from emcopilot.evaluate import evaluate_dirs, read_probability_map
from emcopilot.inference import Segmentor, choose_min_peak, noise_level_above_bar
from emcopilot.training.checkpoint import ensemble_checkpoint

LABEL_KEYS = ("dice_mean", "obj_precision", "obj_recall", "obj_f1",
              "count_rel_abs_error_mean", "count_rel_abs_error_median", "ks_distance", "n_pred")
# label-free judges: name -> (how it is read from a row, True when higher is better)
JUDGES = {
    "recorded F1 vs coarse": ("recorded_f1_vs_coarse", True),
    "Dice vs coarse": ("coarse_dice_mean", True),
    "KS vs coarse": ("coarse_ks_distance", False),
    "count error vs coarse": ("coarse_count_rel_abs_error_mean", False),
    "agreement": ("agreement_dice", True),
    "synthetic val mIoU": ("synthetic_val_miou", True),
}


def _checkpoint(run_dir: Path) -> Path:
    """The checkpoint the pipeline segments with from a segmentor folder."""
    return run_dir / "best_miou" if (run_dir / "best_miou").is_dir() else run_dir / "last"


def candidates_of(run: Path) -> dict[str, dict]:
    """A finished run's candidates: name ("seedN", "mean") -> maps folder, checkpoint and the
    best synthetic validation mIoU of its training."""
    state = json.loads((run / "pipeline.json").read_text())["stages"]
    seg = state.get("segmentor")
    if not seg:
        raise SystemExit(f"{run}: its segmentor stage has not finished")
    record = rederivable_segment_record(run, state)
    trained = seg.get("candidates") or {}
    results = seg["result"]
    single = len(trained) <= 1
    out = {}
    for s, folder in trained.items():
        name = f"seed{s}"
        result = results if single else results[name]
        out[name] = {"maps": run / "segmentation" / ("prob" if single else f"candidates/{name}"),
                     "checkpoint": _checkpoint(run / folder),
                     "synthetic_val_miou": (result.get("best") or {}).get("miou")}
    if "mean" in record.get("f1_vs_coarse", {}):
        seeds = [v["synthetic_val_miou"] for v in out.values()]
        out["mean"] = {"maps": run / "segmentation" / "candidates" / "mean",
                       "checkpoint": run / "segmentor" / "mean", "members": list(out),
                       "synthetic_val_miou": (float(np.mean(seeds)) if None not in seeds
                                              else None)}
    return out


def subset_means(cands: dict[str, dict], stems: list[str], images: dict, coarse: dict,
                 record: dict, tmp: Path) -> dict[str, dict]:
    """A candidate for the mean of every set of at least two (and fewer than all) of the run's
    seeds, made as the segment stage makes its "mean": name "mean_1_2" (seeds 1 and 2)."""
    seeds = sorted((n for n in cands if n.startswith("seed")), key=lambda n: int(n[4:]))
    out = {}
    for size in range(2, len(seeds)):
        for members in itertools.combinations(seeds, size):
            name = "mean_" + "_".join(m[4:] for m in members)
            maps = tmp / f"maps_{name}"
            maps.mkdir(parents=True, exist_ok=True)
            for stem in stems:
                io.write_image(maps / f"{stem}.png", np.mean(
                    [read_probability_map(cands[m]["maps"] / f"{stem}.png") for m in members],
                    axis=0))
            ckpt = ensemble_checkpoint([cands[m]["checkpoint"] for m in members],
                                       tmp / f"ckpt_{name}")
            first = Segmentor.load(cands[members[0]]["checkpoint"], device="cpu")
            choice = choose_min_peak(
                first, ckpt, (read_probability_map(maps / f"{s}.png") for s in stems),
                (coarse[s] for s in stems),
                images=lambda k: images[stems[k]], min_snr=record.get("min_snr"),
                annotations=bool(record.get("annotations")))
            miou = [cands[m]["synthetic_val_miou"] for m in members]
            out[name] = {"maps": maps, "checkpoint": ckpt, "score": choice["score"],
                         "members": list(members),
                         "synthetic_val_miou": float(np.mean(miou)) if None not in miou
                         else None}
    return out


def derive(cand: dict, stems: list[str], images: dict, sigmas: dict, coarse: dict,
           record: dict, dest: Path) -> Segmentor:
    """The run's output had it kept this candidate, written to ``dest``; returns the
    candidate's segmentor (its recorded choices)."""
    seg = Segmentor.load(cand["checkpoint"], device="cpu")
    dest.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        io.write_label_map(dest / f"{stem}.png", segment_stage_particles(
            seg, read_probability_map(cand["maps"] / f"{stem}.png"), coarse[stem],
            images[stem], record, sigmas[stem]))
    return seg


def score_runs(runs: list[Path], truth: Path, truth_format: str, tmp: Path,
               with_subset_means: bool = False) -> list[dict]:
    rows = []
    for r, run in enumerate(runs):
        record = json.loads((run / "pipeline.json").read_text())["stages"]["segment"]
        stems = sorted(p.stem for p in (run / "segmentation" / "prob").glob("*.png"))
        images = {s: io.normalize(io.read_micrograph(run / "images" / f"{s}.png").image)
                  for s in stems}
        sigmas = {s: noise_level_above_bar(image) for s, image in images.items()}
        coarse_masks = {s: io.read_label_map(run / "coarse_masks" / f"{s}.png") for s in stems}
        cands = candidates_of(run)
        if with_subset_means:
            cands.update(subset_means(cands, stems, images, coarse_masks, record,
                                      tmp / f"{r}_subsets"))
        outputs = {}
        for name, cand in cands.items():
            dest = tmp / f"{r}_{name}"
            seg = derive(cand, stems, images, sigmas, coarse_masks, record, dest)
            outputs[name] = dest
            labels = evaluate_dirs(dest, truth, truth_format)["aggregate"]
            coarse = evaluate_dirs(dest, run / "coarse_masks", "instance")["aggregate"]
            rows.append({
                "run": str(run), "candidate": name,
                "kept": len(cands) == 1 or _is_kept(run, name),
                "members": cand.get("members", [name]),
                "min_peak": seg.min_peak, "grow_to": seg.grow_to,
                "recorded_f1_vs_coarse": cand.get("score",
                                                  record.get("f1_vs_coarse", {}).get(name)),
                "synthetic_val_miou": cand["synthetic_val_miou"],
                **{f"coarse_{k}": coarse.get(k) for k in LABEL_KEYS},
                **{k: labels.get(k) for k in LABEL_KEYS}})
        seeds = [n for n in outputs if n.startswith("seed")]
        for row in rows[-len(outputs):]:
            others = [n for n in seeds if n != row["candidate"]]
            row["agreement_dice"] = (float(np.mean([
                evaluate_dirs(outputs[row["candidate"]], outputs[o], "instance")
                ["aggregate"]["dice_mean"] for o in others])) if others else None)
    return rows


def _is_kept(run: Path, name: str) -> bool:
    """Whether the run's kept segmentor (segmentor/selected) is candidate ``name``."""
    cfg = json.loads((run / "segmentor" / "selected" / "config.json").read_text())["config"]
    if "ensemble" in cfg:
        return name == "mean"
    return name == f"seed{cfg.get('seed')}"


def _rho(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation; None where either side is constant (undefined)."""
    if len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return float(spearmanr(a, b).statistic)


def judge_summary(rows: list[dict]) -> dict:
    """Each judge's rank correlation with the labels' Dice and object F1, and its pick."""
    out = {}
    for judge, (key, higher) in JUDGES.items():
        scored = [r for r in rows if r.get(key) is not None]
        if len(scored) < 3:
            continue
        sign = 1 if higher else -1
        values = [sign * r[key] for r in scored]
        pick = max(scored, key=lambda r: sign * r[key])
        out[judge] = {
            "n": len(scored),
            "spearman_dice": _rho(values, [r["dice_mean"] for r in scored]),
            "spearman_obj_f1": _rho(values, [r["obj_f1"] for r in scored]),
            "pick": f"{Path(pick['run']).name}/{pick['candidate']}",
            "pick_dice": pick["dice_mean"], "pick_obj_f1": pick["obj_f1"]}
    return out


def subset_picks(rows: list[dict]) -> list[dict]:
    """For each run and each set of its seeds that has a mean candidate (``--subset-means``,
    and the run's own "mean"), the candidate each judge keeps among those seeds and their mean:
    what a run with only those segmentors would have output by that judge."""
    out = []
    for run in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == run]
        for mean in (r for r in mine if r["candidate"].startswith("mean")):
            pool = [r for r in mine if r["candidate"] in mean["members"]] + [mean]
            picks = {}
            for judge, (key, higher) in JUDGES.items():
                scored = [r for r in pool if r.get(key) is not None]
                if len(scored) == len(pool):
                    pick = max(scored, key=lambda r: (1 if higher else -1) * r[key])
                    picks[judge] = {"candidate": pick["candidate"],
                                    **{k: pick[k] for k in LABEL_KEYS}}
            out.append({"run": run, "seeds": mean["members"], "picks": picks})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, type=Path, help="finished pipeline runs")
    ap.add_argument("--truth", required=True, type=Path, help="manual labels of their images")
    ap.add_argument("--truth-format", default="instance", help="as `emcopilot evaluate` takes it")
    ap.add_argument("--subset-means", action="store_true",
                    help="also score the mean of every smaller set of each run's seeds")
    ap.add_argument("--keep", type=Path, default=None,
                    help="write each candidate's output here (KEEP/<run index>_<candidate>, "
                         "label maps as the segment stage would have written them) for "
                         "`emcopilot evaluate`'s per-image report; default: a temporary folder")
    ap.add_argument("--out", type=Path, default=Path("bench/results/candidates.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = score_runs(args.runs, args.truth, args.truth_format, args.keep or Path(tmp),
                          with_subset_means=args.subset_means)
    cols = [("Dice", "dice_mean"), ("objF1", "obj_f1"), ("count", "count_rel_abs_error_mean"),
            ("KS", "ks_distance"), ("| F1~c", "recorded_f1_vs_coarse"),
            ("Dice~c", "coarse_dice_mean"), ("KS~c", "coarse_ks_distance"),
            ("cnt~c", "coarse_count_rel_abs_error_mean"), ("agree", "agreement_dice"),
            ("valmIoU", "synthetic_val_miou")]
    print(f"{'candidate':28s} {'peak':>5s} " + " ".join(f"{c:>7s}" for c, _ in cols))
    for r in rows:
        name = f"{Path(r['run']).name}/{r['candidate']}{' *' if r['kept'] else ''}"
        print(f"{name:28s} {str(r['min_peak']):>5s} " + " ".join(
            f"{r[k]:7.3f}" if r[k] is not None else f"{'-':>7s}" for _, k in cols))
    summary = judge_summary(rows)
    for judge, s in summary.items():
        rho = {k: "undefined" if s[k] is None else f"{s[k]:+.2f}"
               for k in ("spearman_dice", "spearman_obj_f1")}
        print(f"{judge:24s} rho vs Dice {rho['spearman_dice']}, vs object F1 "
              f"{rho['spearman_obj_f1']} over {s['n']}; keeps {s['pick']} (Dice "
              f"{s['pick_dice']:.3f}, F1 {s['pick_obj_f1']:.3f})")
    picks = subset_picks(rows)
    for p in picks:
        print(f"{Path(p['run']).name}, seeds {'+'.join(m[4:] for m in p['seeds'])}, kept by: "
              + "; ".join(f"{j} {v['candidate']} (Dice {v['dice_mean']:.3f}, F1 "
                          f"{v['obj_f1']:.3f})" for j, v in p["picks"].items()))
    write_json(args.out, {"runs": [str(r) for r in args.runs], "truth": str(args.truth),
                          "rows": rows, "judges": summary, "subset_picks": picks})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
