#!/usr/bin/env bash
# One-shot GPU validation for a session that is lent a GPU (issue 5). Builds against the
# machine's torch, runs the test suite on CUDA, compute-sanitizer (memcheck, racecheck,
# initcheck) over the CUDA tests, and the benchmark suite; everything lands in $OUT
# (at most 8 files: logs + benchmarks/results/<gpu>.{md,json,png}).
#
#   OUT=/some/dir bash tools/gpu_session.sh [--quick]
#
# Copy $OUT/<gpu>.{md,json,png} into benchmarks/results/ and commit them with this command.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu-session}
QUICK=${1:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

{
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv 2>/dev/null
} 2>&1 | tee "$OUT/session.log"

echo "== build" | tee -a "$OUT/session.log"
MAX_JOBS=16 python setup.py -q build_ext --inplace 2>&1 | tail -5 | tee -a "$OUT/session.log"

echo "== tests (CPU + CUDA)" | tee -a "$OUT/session.log"
python -m pytest tests -q -x -p no:cacheprovider 2>&1 | tail -40 | tee -a "$OUT/session.log"

echo "== compute-sanitizer over the CUDA tests" | tee -a "$OUT/session.log"
# The sanitizer slows kernels ~100x: run the CUDA-parametrised tests minus the
# million-input sweep, once per tool.
for tool in memcheck racecheck initcheck; do
  echo "-- $tool" | tee -a "$OUT/sanitizer.log"
  compute-sanitizer --tool "$tool" --error-exitcode 9 --print-limit 20 \
    python -m pytest tests -q -x -p no:cacheprovider -k "cuda and not million" 2>&1 | tail -15 | tee -a "$OUT/sanitizer.log"
  echo "exit status ($tool): ${PIPESTATUS[0]}" | tee -a "$OUT/sanitizer.log"
done

echo "== benchmarks" | tee -a "$OUT/session.log"
python -m benchmarks --device cuda ${QUICK:+--quick} --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -30
ls -la "$OUT"
