"""The segmentor of a pipeline run at other particle scales than the one its coarse masks give.

The pipeline resizes each image so that its typical particle (the area-weighted median width of
its coarse mask, ``emcopilot.particle_scale``) is as wide as the segmentor's training particles.
On the S/TEM catalysts that width comes out about 25 % larger than the boxes' (the coarse masks
hold support patches; ``bench_particle_scale``), so the images are shrunk more than intended
and small particles fall below what the segmentor sees. This bench segments a run's images again
with the factor multiplied by each ``--factors`` value (1 = the pipeline's own factor), with
the run's core probability, growth, support removal and coarse-particle addition, and scores
every folder as ``emcopilot evaluate`` does; "union" rows add, to the factor-1 particles,
the particles of a larger factor that no factor-1 particle covers (at most 10 % of their pixels).

Two label-free choices between the factors are scored too, by the rule the pipeline uses to
choose its segmentor and core probability: the object F1 (IoU 0.5) of the segmentor's own
particles (before coarse particles are added) against the run's coarse masks. Each factor row
reports that F1 pooled over the run (``f1_vs_coarse``: the per-run choice is the row with the
highest), and the row "per image, F1 vs coarse" takes for each image the factor whose own
particles match that image's coarse mask best (ties to the first factor), by the rule
``emcopilot pipeline --scale-choice`` uses (``postprocess.best_matching``).

    python -m bench.bench_scale_factor --run runs/cat27 \
        --truth ../shared/data/ardagen_stem_catalysts_yolo/labels --truth-format yolo \
        --factors 1 1.5

``--model`` picks another segmentor checkpoint than the run's kept one (the segment record's),
e.g. one member of the mean (half the time). As in the pipeline, particles are derived from the
probability map rounded to 8 bits (what the run stores), so factor 1 with the kept segmentor
gives the run's own particles. Choosing a factor on test labels is optimistic: the rows
are a diagnosis (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_postprocess import KEYS
from bench.common import write_json
from emcopilot import io
from emcopilot.evaluate import evaluate_dirs
from emcopilot.inference import Segmentor, _above_bar
from emcopilot.metrics import match_instances
from emcopilot.postprocess import add_coarse_particles, best_matching


def _checkpoint(base: Path) -> Path:
    for sub in ("", "best_miou", "last"):
        if (base / sub / "config.json").is_file():
            return base / sub
    raise SystemExit(f"no segmentor checkpoint under {base}")


def pipeline_factor(segmentor: Segmentor, image01: np.ndarray, coarse: np.ndarray,
                    data_bar: bool) -> float:
    """The resize factor the pipeline's segment stage uses for this image (measured on the
    coarse mask's rows above a data bar, as ``Segmentor.probability`` does)."""
    _, rows, labels = _above_bar(segmentor.prepare(image01, "bright"), coarse, data_bar)
    return segmentor.resolve_scale(rows, None, labels, data_bar=False)


def segment_image(segmentor: Segmentor, image01: np.ndarray, coarse: np.ndarray, scale: float,
                  record: dict, *, support: bool, data_bar: bool) -> tuple[np.ndarray, np.ndarray]:
    """(particles as the pipeline's segment stage makes them, the segmentor's own particles
    before the coarse ones are added) of one bright-particle image at resize factor ``scale``,
    with the core probability, growth and addition of the run's segment ``record``."""
    prob = segmentor.probability(image01, polarity="bright", scale=scale, data_bar=data_bar,
                                 support=support)
    prob = io.to_uint8(prob).astype(np.float32) / 255.0  # as the run stores it
    own = segmentor.instances(prob, min_peak=record["min_peak"], grow_to=record["grow_to"])
    labels = add_coarse_particles(own, coarse, prob) if record.get("add_coarse") else own
    return labels, own


def f1_counts(labels: np.ndarray, reference: np.ndarray) -> tuple[int, int, int]:
    """(matches at IoU 0.5, particles, reference particles) of one label map."""
    m = match_instances(labels, reference)
    return len(m.pairs), len(m.pred_ids), len(m.true_ids)


def f1_of(counts: tuple[int, int, int]) -> float:
    """Object F1 of ``f1_counts`` (summed over images); 1.0 when both sides are empty."""
    tp, n_pred, n_ref = counts
    return 2 * tp / (n_pred + n_ref) if n_pred + n_ref else 1.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, type=Path, help="a finished `emcopilot pipeline` --out")
    ap.add_argument("--truth", required=True, type=Path)
    ap.add_argument("--truth-format", default="yolo")
    ap.add_argument("--factors", type=float, nargs="+", default=[1.0, 1.5])
    ap.add_argument("--model", type=Path, default=None,
                    help="segmentor checkpoint (default: the run's kept one, as its segment "
                         "stage records it: segmentor/selected, or segmentor/best_miou for one "
                         "segmentor)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/scale_factor.json"))
    ap.add_argument("--keep", type=Path, default=None,
                    help="keep every row's particles (label maps) in this folder, one "
                         "subfolder per row (default: a temporary folder)")
    args = ap.parse_args(argv)

    record = json.loads((args.run / "pipeline.json").read_text())
    stages = record.get("stages", record)
    seg = stages["segment"]
    meta = stages["images"]["images"]
    removed = set(seg.get("support_removed", []))
    data_bar = bool(stages["images"].get("data_bar", True))
    model = _checkpoint(args.model or Path(seg["model"]))
    segmentor = Segmentor.load(model, device="cpu")
    if segmentor.particle_diameter_px is None:
        raise SystemExit("this run's segmentor was not trained at a common particle scale")
    print(f"segmentor {model}: core {seg['min_peak']}, growth {seg['grow_to']}, "
          f"coarse added {seg.get('add_coarse')}, support removed on {len(removed)} images")

    rows: dict[str, dict] = {}
    with (contextlib.nullcontext(str(args.keep)) if args.keep
          else tempfile.TemporaryDirectory()) as tmp:
        folders = {f: Path(tmp) / f"x{f:g}" for f in args.factors}
        bare = {f: Path(tmp) / f"bare_x{f:g}" for f in args.factors}
        seconds = {f: 0.0 for f in args.factors}
        vs_coarse: dict[float, dict[str, tuple[int, int, int]]] = {f: {} for f in args.factors}
        chosen: dict[str, float] = {}
        for k, stem in enumerate(meta):
            image01 = io.normalize(io.read_micrograph(args.run / "images" / f"{stem}.png").image)
            coarse = io.read_label_map(args.run / "coarse_masks" / f"{stem}.png")
            factor = pipeline_factor(segmentor, image01, coarse, data_bar)
            own = []
            for f in args.factors:
                t0 = time.perf_counter()
                labels, bare_labels = segment_image(segmentor, image01, coarse, factor * f,
                                                    seg, support=stem in removed,
                                                    data_bar=data_bar)
                seconds[f] += time.perf_counter() - t0
                io.write_label_map(bare[f] / f"{stem}.png", bare_labels)
                vs_coarse[f][stem] = f1_counts(bare_labels, coarse)
                own.append(bare_labels)
                io.write_label_map(folders[f] / f"{stem}.png", labels)
            # the library's per-image rule (Segmentor.segment_detail's scale_choice)
            chosen[stem] = args.factors[best_matching(own, coarse)]
            print(f"{k + 1}/{len(meta)} {stem} (factor {factor:.3g})", flush=True)
        first = args.factors[0]
        for f in args.factors[1:]:
            union = Path(tmp) / f"union_x{f:g}"
            for stem in meta:
                # every particle of the larger factor that is at most 10 % covered
                io.write_label_map(union / f"{stem}.png", add_coarse_particles(
                    io.read_label_map(folders[first] / f"{stem}.png"),
                    io.read_label_map(bare[f] / f"{stem}.png"), min_area_ratio=0.0))
            folders[f"x{first:g} + uncovered x{f:g}"] = union
        if len(args.factors) > 1:
            per_image = Path(tmp) / "per_image_choice"
            for stem, f in chosen.items():
                io.write_label_map(per_image / f"{stem}.png",
                                   io.read_label_map(folders[f] / f"{stem}.png"))
            folders["per image, F1 vs coarse"] = per_image
        for name, folder in folders.items():
            label = f"x{name:g}" if isinstance(name, float) else name
            agg = evaluate_dirs(folder, args.truth, truth_format=args.truth_format)["aggregate"]
            rows[label] = {k: agg.get(k) for k in KEYS}
            if isinstance(name, float):
                rows[label]["seconds_per_image"] = seconds[name] / max(1, len(meta))
                rows[label]["f1_vs_coarse"] = f1_of(tuple(
                    int(sum(c[i] for c in vs_coarse[name].values())) for i in range(3)))
            print(label, " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in rows[label].items()), flush=True)
    write_json(args.out, {"run": str(args.run), "model": str(model), "rows": rows,
                          "per_image_choice": {stem: f"x{f:g}" for stem, f in chosen.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
