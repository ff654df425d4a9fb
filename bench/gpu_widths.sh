#!/usr/bin/env bash
# The cpu profile's recipe at widths 8, 12 and 16 beside the paper-size model, on a GPU
# (bench/bench_gpu_segmentor.py; issue #4's "Dice within 0.02 of the paper-size model").
# All variants train at once, sharing the GPU, each stopping cleanly at the deadline.
#
#   bench/gpu_widths.sh DATA OUT [DEADLINE_S] [extra bench_gpu_segmentor options...]
#
# DATA: `python -m bench.bench_gpu_segmentor --prepare-data DATA --train-limit 250` (8-bit grey
# copies of EMPS train/test, small enough to carry to a device machine). OUT gets one folder per
# variant, a log each, and summary.json. Smoke test on a CPU:
#   bench/gpu_widths.sh DATA /tmp/w 60 --epochs 1 --limit 3 --repeat 1 --device cpu
set -euo pipefail
data=${1:?DATA folder}; out=${2:?OUT folder}; deadline=${3:-300}; shift $(( $# < 3 ? $# : 3 ))
py=${PYTHON:-python3}
variants=${VARIANTS:-"paper cpu cpu-base12 cpu-base16"}
mkdir -p "$out"
pids=()
for v in $variants; do
  EMCOPILOT_LOADER_WORKERS=${EMCOPILOT_LOADER_WORKERS:-4} "$py" -m bench.bench_gpu_segmentor \
    --variant "$v" --out "$out" --deadline-s "$deadline" \
    --train-images "$data/emps_train/images" --train-masks "$data/emps_train/segmaps" \
    --test-images "$data/emps_test/images" --test-masks "$data/emps_test/segmaps" "$@" \
    > "$out/$v.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
"$py" -m bench.bench_gpu_segmentor --summarise "$out"
exit $status
