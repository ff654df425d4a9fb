"""Run the speed and accuracy benchmarks that need no trained model, one after another
(``make bench``). Each writes its JSON under bench/results/; BENCHMARKS.md quotes them.

The pipeline accuracy rows (``emcopilot pipeline`` + ``emcopilot evaluate``, then
``bench.bench_postprocess``, ``bench.bench_add_coarse`` and ``bench.bench_adabn`` on its
outputs) take an hour or more on 2 cores and are run by hand with the commands in BENCHMARKS.md.
"""

from __future__ import annotations

import subprocess
import sys
import time

BENCHMARKS = [
    ["bench.bench_classical"],
    ["bench.bench_annotations"],
    ["bench.bench_auto_preset"],
    ["bench.bench_local_noise"],
    ["bench.bench_polarity"],
    ["bench.bench_inference", "--profiles", "cpu", "--repeat", "7"],
    ["bench.bench_nets"],
    ["bench.bench_gpu_segmentor", "--time-widths", "8,12,16,24,32", "--repeat", "5",
     "--json", "bench/results/widths.json"],
    ["bench.bench_sam", "--skip-grid32"],
]


def main() -> int:
    failed = []
    for argv in BENCHMARKS:
        t0 = time.perf_counter()
        print(f"== python -m {' '.join(argv)}", flush=True)
        rc = subprocess.call([sys.executable, "-m", *argv])
        print(f"== {argv[0]}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(argv[0])
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
