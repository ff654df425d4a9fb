"""Time of the segment stage's "matching the particles with the coarse masks" step for one
segmentor: :func:`emcopilot.inference.choose_min_peak` on a finished pipeline run's stored
probability maps, exactly as the stage calls it (the run's bright-particle images, its coarse
masks, its faint-particle level and data-bar setting), on a throwaway copy of the checkpoint
(the run is left as it is). Prints the seconds and the choice, so two code versions can be
timed on the same run and shown to choose the same:

    python -m bench.bench_matching_cost --run runs/cat39 --candidate seed0

and the code of another commit on the same run (this file copied into its checkout):

    git worktree add /tmp/before ead3ee8 && cp bench/bench_matching_cost.py /tmp/before/bench/
    run="$PWD/runs/cat39"; (cd /tmp/before && PYTHONPATH=. python -m \\
        bench.bench_matching_cost --run "$run" --candidate seed0)

``--candidate``: a folder name under ``RUN/segmentation/candidates`` (a run that trained
several segmentors) or ``selected`` (the kept one: ``RUN/segmentation/prob``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import emcopilot
from bench.common import write_json
from emcopilot import io
from emcopilot.evaluate import read_probability_map
from emcopilot.inference import Segmentor, choose_min_peak


def candidate_paths(run: Path, candidate: str) -> tuple[Path, Path]:
    """(folder of the candidate's probability maps, its checkpoint) in a finished run."""
    record = json.loads((run / "pipeline.json").read_text())["stages"]
    if candidate == "selected":
        return run / "segmentation" / "prob", Path(record["segment"]["model"])
    cdir = run / "segmentor" / candidate  # seedN: a training folder; mean: a checkpoint
    ckpt = next((c for c in (cdir / "best_miou", cdir / "last", cdir)
                 if (c / "config.json").is_file()), cdir)
    return run / "segmentation" / "candidates" / candidate, ckpt


def time_matching(run: Path, candidate: str) -> dict:
    stages = json.loads((run / "pipeline.json").read_text())["stages"]
    segment = stages["segment"]
    maps, ckpt = candidate_paths(run, candidate)
    stems = sorted(p.stem for p in maps.glob("*.png"))
    if not stems:
        raise SystemExit(f"no probability maps in {maps}")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "checkpoint"
        shutil.copytree(ckpt, copy)
        segmentor = Segmentor.load(copy, device="cpu")

        def image(k: int):
            return io.normalize(io.read_micrograph(run / "images" / f"{stems[k]}.png").image)

        start = time.perf_counter()
        choice = choose_min_peak(
            segmentor, copy, (read_probability_map(maps / f"{s}.png") for s in stems),
            (io.read_label_map(run / "coarse_masks" / f"{s}.png") for s in stems),
            images=image, min_snr=segment.get("min_snr"),
            data_bar=bool(stages["images"].get("data_bar", True)),
            annotations=bool(segment.get("annotations")))
        seconds = time.perf_counter() - start
    return {"run": str(run), "candidate": candidate, "images": len(stems),
            "code": str(Path(emcopilot.__file__).parent), "seconds": round(seconds, 1),
            "min_peak": choice["min_peak"], "grow_to": choice["grow_to"],
            "score": choice["score"], "f1": choice["f1"], "grow_f1": choice["grow_f1"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished `emcopilot pipeline` run")
    ap.add_argument("--candidate", default="selected",
                    help="seedN or mean (RUN/segmentation/candidates/...), or selected")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    result = time_matching(args.run, args.candidate)
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
