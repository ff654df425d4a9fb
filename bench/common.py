"""Helpers shared by the benchmarks: data paths, timing, memory, machine description, JSON output.

Benchmarks run as ``python -m bench.<name> --out bench/results/<name>.json`` from the repository
root; they read ``../shared/data`` (or ``$EMCOPILOT_SHARED_DATA``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"


def shared_data_dir() -> Path:
    """``$EMCOPILOT_SHARED_DATA`` or ``../shared/data`` next to the repository."""
    env = os.environ.get("EMCOPILOT_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def require_dir(path: Path, what: str) -> Path:
    """Exit with a one-line message when a data folder is missing."""
    if not path.is_dir():
        sys.exit(f"{what} not found at {path} "
                 "(set EMCOPILOT_SHARED_DATA to the shared data folder)")
    return path


def emps_dir(split: str = "test") -> Path:
    """EMPS split folder with ``images/`` and ``segmaps/`` (16-bit instance maps)."""
    return require_dir(shared_data_dir() / f"emps_{split}", f"EMPS {split} split")


def emps_pairs(split: str = "test") -> list[tuple[Path, Path]]:
    """Sorted (image, instance segmap) path pairs of an EMPS split."""
    d = emps_dir(split)
    return [(p, d / "segmaps" / p.name) for p in sorted((d / "images").glob("*.png"))]


def catalyst_dir() -> Path:
    """Genc et al. supported-catalyst S/TEM JPEGs with YOLO box labels."""
    return require_dir(shared_data_dir() / "ardagen_stem_catalysts_yolo", "catalyst data set")


def catalyst_items() -> list[tuple[Path, Path]]:
    """Sorted (image, YOLO label file) path pairs of the catalyst set."""
    d = catalyst_dir()
    return [(p, d / "labels" / f"{p.stem}.txt") for p in sorted((d / "images").glob("*.jpg"))]


def survey_sets() -> dict[str, list[tuple[Path, Path | None]]]:
    """The three sets the image surveys read, as ``(image, manual label map or None)``: EMPS
    test, EMPS train (instance masks) and the 33 catalyst images (boxes only: None)."""
    return {"emps_test": emps_pairs("test"), "emps_train": emps_pairs("train"),
            "catalysts": [(p, None) for p, _ in catalyst_items()]}


def classical_scores(pairs: list[tuple[Path, Path]], settings: dict[str, dict[str, Any]],
                     keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The classical masker ("isolated" preset) on EMPS ``pairs`` with each setting's
    ``coarse_mask`` keyword arguments (``"classical"``: ``ClassicalMasker`` overrides of the
    preset), scored by ``emcopilot.evaluate`` (its ``keys``)."""
    import tempfile

    from emcopilot import io
    from emcopilot.evaluate import evaluate_dirs
    from emcopilot.masking import coarse_mask

    truth_dir = pairs[0][1].parent
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, options) in enumerate(settings.items()):
            folder = Path(tmp) / str(k)
            for image_path, _ in pairs:
                image01 = io.normalize(io.read_micrograph(image_path).image)
                overrides = {k: v for k, v in options.items() if k != "classical"}
                labels = coarse_mask(image01, method="classical",
                                     classical_options={"preset": "isolated",
                                                        **options.get("classical", {})},
                                     **overrides)
                io.write_label_map(folder / f"{image_path.stem}.png", labels)
            summary = evaluate_dirs(folder, truth_dir)["aggregate"]
            out[name] = {key: summary[key] for key in keys}
    return out


def print_scores(scores: dict[str, dict[str, Any]]) -> None:
    """One line per :func:`classical_scores` setting."""
    for row, vals in scores.items():
        print(f"classical (isolated), {row}: "
              + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in vals.items()), flush=True)


def survey_main(argv: list[str] | None, *, description: str, out: str, skip_help: str,
                survey: Callable[[list[tuple[Path, Path | None]]], dict[str, Any]],
                line: Callable[[str, dict[str, Any]], str],
                settings: dict[str, dict[str, Any]], keys: Sequence[str]) -> int:
    """The command line of an image survey bench: ``survey`` of each of :func:`survey_sets`
    (one ``line(set name, result)`` printed per set), then, unless ``--no-accuracy``
    (``skip_help``), :func:`classical_scores` of EMPS test with ``settings``; all written as
    JSON to ``--out`` (default ``out``)."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, default=Path(out))
    ap.add_argument("--no-accuracy", action="store_true", help=skip_help)
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"machine": machine(), "sets": {}}
    sets = survey_sets()
    for name, items in sets.items():
        results["sets"][name] = survey(items)
        print(line(name, results["sets"][name]), flush=True)
    if not args.no_accuracy:
        results["classical_emps_test"] = scores = classical_scores(sets["emps_test"], settings,
                                                                   keys)
        print_scores(scores)
    write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


def yolo_box_count(label_file: Path, cls: int = 0) -> int:
    """Number of boxes of class ``cls`` in a YOLO txt file (``class xc yc w h`` per line)."""
    n = 0
    for line in Path(label_file).read_text().splitlines():
        parts = line.split()
        if parts and int(float(parts[0])) == cls:
            n += 1
    return n


# ----------------------------------------------------------------------------- timing / memory

@dataclass
class Timer:
    """Collects durations (s) of repeated calls; ``median`` is what the reports quote."""

    times: list[float] = field(default_factory=list)

    @contextmanager
    def __call__(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times.append(time.perf_counter() - t0)

    @property
    def median(self) -> float:
        return float(statistics.median(self.times)) if self.times else float("nan")

    @property
    def total(self) -> float:
        return float(sum(self.times))

    def summary(self) -> dict[str, float]:
        """median / mean / max seconds and the number of calls."""
        if not self.times:
            return {"n": 0}
        return {"n": len(self.times), "median_s": self.median,
                "mean_s": float(np.mean(self.times)), "max_s": float(max(self.times))}


def per_image_rows(folder: str | os.PathLike) -> dict[str, dict[str, str]]:
    """The per-image rows of an ``emcopilot evaluate --out FOLDER`` report (``per_image.csv``),
    by image name."""
    import csv

    with open(Path(folder) / "per_image.csv", newline="", encoding="utf-8") as fh:
        return {r["name"]: r for r in csv.DictReader(fh)}


def time_call(fn: Callable[[], Any], repeat: int = 3, warmup: int = 1) -> tuple[float, Any]:
    """Median wall time (s) of ``fn()`` over ``repeat`` runs after ``warmup`` runs; and a result."""
    out = None
    for _ in range(warmup):
        out = fn()
    t = Timer()
    for _ in range(repeat):
        with t():
            out = fn()
    return t.median, out


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (``ru_maxrss``: KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


@contextmanager
def traced_peak() -> Iterator[dict[str, float]]:
    """Peak Python/numpy heap allocation inside the block, MiB (``tracemalloc``), in the dict
    yielded (key ``peak_mib``, filled on exit). Slows allocation-heavy code a little."""
    box: dict[str, float] = {}
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield box
    finally:
        box["peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        if not was:
            tracemalloc.stop()


# ----------------------------------------------------------------------------- description / stats

def machine() -> dict[str, Any]:
    """What the numbers were measured on (CPU, cores, Python, key library versions, GPU)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    versions = {}
    for mod in ("numpy", "scipy", "skimage", "cv2", "torch"):
        m = sys.modules.get(mod)
        if m is not None:
            versions[mod] = getattr(m, "__version__", "?")
    info["versions"] = versions
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine_string() -> str:
    """One line: CPU, cores, Python."""
    m = machine()
    return f"{m['cpu']}, {m['cpu_count']} cores, Python {m['python']}"


def describe(values: Sequence[float]) -> dict[str, float]:
    """mean, median, min, max, n of finite values (NaN when none)."""
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"n": 0, "mean": float("nan"), "median": float("nan")}
    return {"n": int(a.size), "mean": float(a.mean()), "median": float(np.median(a)),
            "min": float(a.min()), "max": float(a.max())}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` (numpy values converted, NaN -> null) atomically as indented JSON."""
    from emcopilot.atomic import atomic_write

    path = Path(path)
    with atomic_write(path, "w") as f:
        json.dump(_jsonable(data), f, indent=2, sort_keys=False)
        f.write("\n")
    return path


def run_arguments(ap: Any, out: str) -> None:
    """The arguments of a bench that re-derives a finished pipeline run's output: ``--run``,
    ``--truth``, ``--truth-format`` and ``--out`` (default ``out``)."""
    ap.add_argument("--run", type=Path, required=True, help="a finished `emcopilot pipeline` run")
    ap.add_argument("--truth", type=Path, required=True, help="manual labels of its images")
    ap.add_argument("--truth-format", default="instance", help="as `emcopilot evaluate` takes it")
    ap.add_argument("--out", type=Path, default=Path(out))


def rederivable_segment_record(run: Path, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's segment-stage record (``pipeline.json``; ``state``: its stages when already
    read), when its output can be made again from the stored maps (``segment_stage_particles``);
    exits with a one-line reason when the stage has not finished or took ``--support-check`` or
    ``--scale-choice`` (those re-run the segmentor per image)."""
    if state is None:
        state = json.loads((run / "pipeline.json").read_text())["stages"]
    record = state.get("segment")
    if not record:
        raise SystemExit(f"{run}: its segment stage has not finished")
    if record.get("support_check") or record.get("scale_choice"):
        raise SystemExit(f"{run}: its segment stage used --support-check or --scale-choice, "
                         "which this benchmark does not re-derive")
    return record


def segment_stage_particles(segmentor: Any, prob: np.ndarray, coarse: np.ndarray,
                            image01: np.ndarray, record: dict[str, Any], sigma: float,
                            min_peak: Any = "model") -> np.ndarray:
    """One image's particles from a stored probability map as a pipeline run's segment stage
    makes them (``record``: its ``pipeline.json`` segment record): ``segmentor``'s particles
    (its recorded core probability unless ``min_peak`` is given, and growth), the coarse
    particles they miss added when the run adds them, those on drawn text and scale bars dropped
    when the run drops them (its record's ``annotations``; runs before stop 37 did not), the
    faint ones dropped at the run's level (``sigma``: the image's noise level,
    ``inference.noise_level_above_bar``). Not for runs whose segment stage took
    ``--scale-choice`` or ``--support-check``."""
    from emcopilot.inference import OutputFilter

    labels = segmentor.map_particles(prob, coarse, min_peak=min_peak,
                                     add_coarse=bool(record.get("add_coarse")))[0]
    return OutputFilter(image01, min_snr=record.get("min_snr"),
                        annotations=bool(record.get("annotations")), sigma=sigma)(labels)[0]
