"""The cpu-profile segmentor against the paper-size one, trained on the same labelled pairs.

Issue #4 asks for the cpu profile's segmentor to stay within 0.02 Dice of the paper-size model
"on the same data". Neither model can be trained to the paper's schedule on two CPU cores, so
this bench is meant for a GPU. Each variant trains a CBAM-UNet++ on the EMPS *train* manual
labels, segments the EMPS *test* images with the `segment` command's defaults and scores them
with `evaluate`; then it times the model's probability map for 512 px crops on the same device.

Variants (``--variant``):
  paper        the paper profile: base 32, depth 4, 512 px crops, batch 8, lr 1e-4, 40 epochs
  paper-base8  the same recipe with the cpu profile's width (base 8): width alone
  paper-baseN  the same recipe at width N = 12, 16, 24
  cpu          the cpu profile as shipped: base 8, 256 px crops, batch 4, lr 1e-3, 12 x 300
  cpu-baseN    the cpu profile's recipe at width N = 12, 16: what a wider cpu profile would
               reach on the budget it trains with (stop 20 measured widths only with the
               paper's recipe)

The data, as the GPU run used it (8-bit grey copies, small enough for a machine that takes
64 MiB of files; the first ``--train-limit`` train images by name):

    python -m bench.bench_gpu_segmentor --prepare-data D --train-limit 250

Run one variant per process (they can share a GPU), then summarise:

    python -m bench.bench_gpu_segmentor --variant paper --out OUT \\
        --train-images TRAIN/images --train-masks TRAIN/segmaps \\
        --test-images TEST/images --test-masks TEST/segmaps [--deadline-s 400]
    python -m bench.bench_gpu_segmentor --summarise OUT

The CPU side of the trade (no training, random weights: the speed does not depend on them):

    python -m bench.bench_gpu_segmentor --time-widths 8,12,16,32 [--threads 2]

times the probability map of a bundled 512 px EMPS crop and one cpu-profile training step
(batch 4 x 256 px, forward, backward and Adam) at each width on the CPU, with
`bench_nets.bench_segmentor` (which times the two profiles the same way).

``--deadline-s`` stops training cleanly after that many seconds (the best checkpoint so far is
scored, and the result says the run was cut short). ``--epochs`` and ``--limit`` shrink a run
for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VARIANTS: dict[str, dict] = {
    "paper": {"profile": "paper"},
    "paper-base8": {"profile": "paper", "base": 8},
    "paper-base12": {"profile": "paper", "base": 12},
    "paper-base16": {"profile": "paper", "base": 16},
    "paper-base24": {"profile": "paper", "base": 24},
    "cpu": {"profile": "cpu"},
    "cpu-base12": {"profile": "cpu", "base": 12},
    "cpu-base16": {"profile": "cpu", "base": 16},
}


def _subset(src: Path, dest: Path, limit: int) -> Path:
    """The first ``limit`` files of ``src`` linked into ``dest`` (smoke tests)."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir())[:limit]:
        link = dest / p.name
        if not link.exists():
            link.symlink_to(p.resolve())
    return dest


def _time_inference(model_dir: Path, images: list[Path], repeat: int) -> dict:
    """Median seconds for the probability map of a 512 x 512 crop (whole image in one pass)."""
    import numpy as np
    import torch

    from bench.common import Timer
    from emcopilot import io
    from emcopilot.inference import Segmentor

    seg = Segmentor.load(model_dir)
    crops = [np.ascontiguousarray(a[:512, :512]) for a in
             (io.normalize(io.read_micrograph(p).image) for p in images) if min(a.shape) >= 512]
    if not crops:
        return {"error": "no test image is 512 px on both sides"}
    cuda = seg.device.type == "cuda"

    def run(crop: np.ndarray) -> None:
        seg.predict_proba(crop, tiled=False)
        if cuda:
            torch.cuda.synchronize()

    for c in crops[:2]:
        run(c)  # warm-up: cuDNN's algorithm choice, the allocator
    timer = Timer()
    for _ in range(repeat):
        for c in crops:
            with timer():
                run(c)
    out = {"device": str(seg.device), "images": len(crops), "calls": len(timer.times),
           "median_s": timer.median, "min_s": min(timer.times)}
    if cuda:
        out["gpu"] = torch.cuda.get_device_name(seg.device)
    return out


def prepare_data(dest: Path, train_limit: int) -> None:
    """8-bit grey copies of the EMPS train (first ``train_limit`` by name; 0 = all) and test
    images in ``dest/emps_{train,test}/images``, with their label maps copied unchanged."""
    import shutil

    from bench.common import require_dir, shared_data_dir
    from emcopilot import io

    for split, limit in (("emps_train", train_limit), ("emps_test", 0)):
        src = require_dir(shared_data_dir() / split, f"EMPS {split}")
        names = sorted(p.name for p in (src / "images").glob("*.png"))
        names = names[:limit] if limit else names
        for sub in ("images", "segmaps"):
            (dest / split / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            io.write_image(dest / split / "images" / name,
                           io.normalize(io.read_micrograph(src / "images" / name).image))
            shutil.copyfile(src / "segmaps" / name, dest / split / "segmaps" / name)
        print(f"{split}: {len(names)} images -> {dest / split}")


def run_variant(args: argparse.Namespace) -> dict:
    from emcopilot.evaluate import evaluate_dirs
    from emcopilot.training import train_segmentor

    spec = dict(VARIANTS[args.variant])
    out = args.out / args.variant
    out.mkdir(parents=True, exist_ok=True)
    train_images, train_masks = args.train_images, args.train_masks
    test_images, test_masks = args.test_images, args.test_masks
    if args.limit:
        train_images = _subset(train_images, out / "data" / "train_images", args.limit)
        train_masks = _subset(train_masks, out / "data" / "train_masks", args.limit)
        test_images = _subset(test_images, out / "data" / "test_images", args.limit)
    t0 = time.perf_counter()
    deadline = t0 + args.deadline_s if args.deadline_s else None
    log = open(out / "progress.txt", "a")

    def progress(done: int, total: int, msg: str) -> None:
        print(f"[{args.variant} {time.perf_counter() - t0:7.1f} s] {msg}", file=log, flush=True)

    r = train_segmentor(train_images, train_masks, out / "model", profile=spec.pop("profile"),
                        augment=True, seed=args.seed, device=args.device, resume=False,
                        epochs=args.epochs, progress=progress,
                        should_stop=(lambda: time.perf_counter() > deadline) if deadline else None,
                        **spec)
    train_s = time.perf_counter() - t0
    model_dir = out / "model" / "best_miou"
    result: dict = {"variant": args.variant, "device": r["device"], "epochs_done": r["epoch"],
                    "epochs": r["epochs"], "cut_short": bool(r["cancelled"]),
                    "best": r["best"], "train_seconds": round(train_s, 1)}
    if not (model_dir / "config.json").is_file():
        # stopped before its first validation: nothing to score (a deadline too short)
        result["error"] = (f"no best checkpoint in {model_dir}: training stopped after "
                           f"{train_s:.0f} s, before its first epoch ended")
        (out / "result.json").write_text(json.dumps(result, indent=2, default=str))
        return result
    result["recipe"] = json.loads((model_dir / "config.json").read_text()) \
        .get("config", {}).get("training")
    seg_dir = out / "segmentation"
    t1 = time.perf_counter()
    cmd = [sys.executable, "-m", "emcopilot.cli", "segment", str(test_images), "--model",
           str(model_dir), "--out", str(seg_dir), "--device", args.device, "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    result["segment_seconds"] = round(time.perf_counter() - t1, 1)
    if proc.returncode:
        result["segment_error"] = (proc.stderr or proc.stdout)[-2000:]
    else:
        ev = evaluate_dirs(seg_dir, test_masks, "instance", prob_dir=seg_dir / "prob")
        keep = ("n_images", "dice_mean", "iou_mean", "precision_mean", "recall_mean",
                "auc_mean", "ap_mean", "obj_precision", "obj_recall", "obj_f1",
                "count_rel_abs_error_mean", "count_rel_abs_error_median", "ks_distance",
                "median_diameter_rel_error", "n_pred", "n_true")
        agg = ev.get("aggregate", ev)
        result["test"] = {k: agg.get(k) for k in keep if k in agg}
    images = sorted(p for p in Path(test_images).iterdir() if p.suffix.lower() == ".png")
    result["inference_512"] = _time_inference(model_dir, images[:8], args.repeat)
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def summarise(folder: Path) -> dict:
    rows = {}
    for f in sorted(folder.glob("*/result.json")):
        rows[f.parent.name] = json.loads(f.read_text())
    dice = {k: (v.get("test") or {}).get("dice_mean") for k, v in rows.items()}
    summary = {"variants": rows}
    if dice.get("paper") is not None:
        summary["dice_gap_to_paper"] = {k: (None if d is None else round(d - dice["paper"], 4))
                                        for k, d in dice.items() if k != "paper"}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    for k, v in rows.items():
        t, inf = v.get("test") or {}, v.get("inference_512") or {}
        print(f"{k:12s} epochs {v['epochs_done']}/{v['epochs']} train {v['train_seconds']} s  "
              f"Dice {t.get('dice_mean')}  obj F1 {t.get('obj_f1')}  "
              f"512 px {inf.get('median_s')} s on {inf.get('device')}"
              + (f"  ERROR {v['error']}" if v.get("error") else ""))
    if "dice_gap_to_paper" in summary:
        print("Dice minus the paper-size model's:", summary["dice_gap_to_paper"])
    return summary


def time_widths(widths: list[int], threads: int, repeat: int, json_out: Path | None = None) -> dict:
    """CPU seconds per 512 px image and per cpu-profile training step (batch 4 x 256 px) of a
    depth-4 CBAM-UNet++ at each width: `bench_nets.bench_segmentor` with the width overridden,
    on one bundled 512 px EMPS crop."""
    import torch

    from bench.bench_inference import _images
    from bench.bench_nets import bench_segmentor
    from emcopilot.device import set_cpu_threads

    set_cpu_threads(threads)
    crop = _images()[0][1]
    out = {}
    for b in widths:
        r = bench_segmentor("cpu", crop, torch.device("cpu"), repeat, max_batch=4, base=b)
        out[str(b)] = {"median_s": round(r["inference_s_per_512px_image"], 3),
                       "train_step_median_s": round(r["train_step_s"], 3)}
    print(json.dumps({"threads": threads, "cpu_seconds_per_512px": out}))
    if json_out is not None:
        from bench.common import machine, peak_rss_mib, write_json

        write_json(json_out, {"machine": machine(), "threads": threads, "repeat": repeat,
                              "widths": out, "peak_rss_mib": peak_rss_mib()})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=sorted(VARIANTS))
    ap.add_argument("--summarise", type=Path, metavar="OUT")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--train-images", type=Path)
    ap.add_argument("--train-masks", type=Path)
    ap.add_argument("--test-images", type=Path)
    ap.add_argument("--test-masks", type=Path)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="default: the profile's")
    ap.add_argument("--deadline-s", type=float, default=None)
    ap.add_argument("--limit", type=int, default=0, help="first N images only (smoke test)")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds of the 512 px crops")
    ap.add_argument("--time-widths", metavar="N,N,...", help="CPU timing only, see above")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for --time-widths")
    ap.add_argument("--json", type=Path, default=None, help="--time-widths: also write a JSON file")
    ap.add_argument("--prepare-data", type=Path, metavar="D", help="write the data, see above")
    ap.add_argument("--train-limit", type=int, default=250,
                    help="--prepare-data: the first N train images by name (0 = all 366)")
    args = ap.parse_args(argv)
    if args.prepare_data:
        prepare_data(args.prepare_data, args.train_limit)
        return
    if args.time_widths:
        time_widths([int(x) for x in args.time_widths.split(",")], args.threads, args.repeat,
                    args.json)
        return
    if args.summarise:
        summarise(args.summarise)
        return
    need = ("variant", "out", "train_images", "train_masks", "test_images", "test_masks")
    missing = [n for n in need if getattr(args, n) is None]
    if missing:
        ap.error("missing " + ", ".join("--" + n.replace("_", "-") for n in missing))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    r = run_variant(args)
    print(json.dumps({k: r.get(k) for k in ("variant", "epochs_done", "train_seconds", "test",
                                            "inference_512")}, default=str))


if __name__ == "__main__":
    main()
