"""Support removal before the segmentor (``emcopilot.support``), scored against manual labels.

Re-runs the segment stage of a finished ``emcopilot pipeline`` run with its trained segmentor
(the particle core probability, growth and coarse-particle addition it recorded are kept, not
chosen again) for each support-removal setting: ``off`` (what the run did), ``auto`` (as the
classical preset says: never for "isolated", per image where the masker sees particles on a
support for "auto"; ``--preset`` overrides the checkpoint's) and ``on`` (every image), each at
several disc radii (``--widths``, in typical particle widths). Each setting's particles are
scored exactly as ``emcopilot evaluate`` scores a folder.

    python -m bench.bench_support --run runs/cat19 \
        --truth ../shared/data/ardagen_stem_catalysts_yolo/labels --truth-format yolo
    python -m bench.bench_support --run runs/emps19 --truth ../shared/data/emps_test/segmaps \
        --preset auto

The radius was chosen on these same two sets (there is no separate tuning split for the
catalysts), so the rows are optimistic for the chosen radius: BENCHMARKS.md says so, and checks
it on the 366 EMPS train images no run saw with ``emcopilot segment``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.bench_postprocess import KEYS
from bench.common import machine_string, write_json
from emcopilot import io
from emcopilot.data_bar import on_rows_above_bar
from emcopilot.evaluate import evaluate_dirs
from emcopilot.inference import Segmentor

WIDTHS = (1.0, 1.5, 2.0, 3.0)


def _checkpoint(run: Path) -> Path:
    """The segmentor a pipeline run kept (as its segment stage records it)."""
    state = json.loads((run / "pipeline.json").read_text())
    model = state["stages"].get("segment", {}).get("model")
    if model and Path(model).is_dir():
        return Path(model)
    for name in ("selected", "best_miou", "last"):
        if (run / "segmentor" / name).is_dir():
            return run / "segmentor" / name
    raise SystemExit(f"no trained segmentor in {run}/segmentor")


def segment_run(run: Path, seg: Segmentor, mode: str, out: Path, data_bar: bool) -> int:
    """The run's segment stage with support removal ``mode`` into ``out``; returns the number of
    images whose support was removed."""
    removed = 0
    for path in sorted((run / "images").glob("*.png")):
        stem = path.stem
        image01 = io.normalize(io.read_micrograph(path).image)
        coarse = io.read_label_map(run / "coarse_masks" / f"{stem}.png")
        prepared = seg.prepare(image01, "bright")
        cut = on_rows_above_bar(prepared, None)[1] if data_bar else prepared
        decided = seg.resolve_support(cut, mode)  # once: the masker's judgement is not free
        removed += decided
        prob = seg.probability(image01, polarity="bright", scale_labels=coarse,
                               data_bar=data_bar, support=decided)
        prob = io.to_uint8(prob).astype("float32") / 255.0  # as the pipeline stores it
        labels = seg.map_particles(prob, coarse)[0]
        io.write_label_map(out / f"{stem}.png", labels)
    return removed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished `emcopilot pipeline` folder")
    ap.add_argument("--truth", type=Path, required=True, help="manual labels")
    ap.add_argument("--truth-format", default="instance", help="as `emcopilot evaluate`'s")
    ap.add_argument("--modes", nargs="+", default=["auto", "on"], choices=("auto", "on"))
    ap.add_argument("--widths", nargs="+", type=float, default=list(WIDTHS))
    ap.add_argument("--preset", default=None, choices=("auto", "isolated", "supported"),
                    help="the classical preset that `auto` follows (default: the one the "
                         "checkpoint records, as segmenting does; auto: the masker's per-image "
                         "judgement even for a run made with isolated)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON results (default bench/results/support_<run name>.json)")
    args = ap.parse_args(argv)
    run = args.run
    state = json.loads((run / "pipeline.json").read_text())
    data_bar = bool(state["stages"].get("images", {}).get("data_bar", True))
    ckpt = _checkpoint(run)
    rows = []
    settings = [("off", None)] + [(m, w) for m in args.modes for w in args.widths]
    for mode, width in settings:
        seg = Segmentor.load(ckpt, device="cpu")
        if width is not None:
            seg.config.setdefault("config", {})["support_radius_widths"] = width
        if args.preset:
            seg.config.setdefault("config", {})["support_preset"] = args.preset
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            removed = segment_run(run, seg, mode, Path(tmp), data_bar)
            seconds = time.perf_counter() - t0
            agg = evaluate_dirs(tmp, args.truth, args.truth_format)["aggregate"]
        row = {"support_removal": mode, "radius_widths": width, "images_removed": removed,
               "seconds": round(seconds, 1),
               **{k: (round(agg[k], 3) if isinstance(agg.get(k), float) else agg.get(k))
                  for k in KEYS}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = args.out or Path("bench/results") / f"support_{run.name}.json"
    write_json(out, {"run": str(run), "model": str(ckpt), "truth": str(args.truth),
                     "preset": args.preset,
                     "machine": machine_string(), "rows": rows})
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
