#!/usr/bin/env bash
# Runs every benchmark in turn, saving each one's output under bench/results/.
set -u
cd "$(dirname "$0")/.."
export MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824 NO_ALBUMENTATIONS_UPDATE=1
for b in "$@"; do
  echo "== $b $(date +%T)"
  .venv/bin/python "bench/bench_$b.py" > "bench/results/$b.txt" 2> "bench/results/$b.err" || echo "FAILED $b"
  tail -12 "bench/results/$b.txt"
done
