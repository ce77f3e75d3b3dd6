#!/usr/bin/env bash
# GPU validation for a session that is lent a GPU (issue 5), in phases that each fit a
# 10-minute command limit:
#
#   OUT=/some/dir bash tools/gpu_session.sh build        # extension against the machine's torch
#   OUT=/some/dir bash tools/gpu_session.sh test         # whole suite, CPU + CUDA
#   OUT=/some/dir bash tools/gpu_session.sh sanitize [memcheck|racecheck|initcheck]
#   OUT=/some/dir bash tools/gpu_session.sh bench [spd|nll|fuse] [--quick]
#   OUT=/some/dir bash tools/gpu_session.sh profile      # roofline diagnosis: kernel times under
#                                                        # both float32 policies + Nsight Compute
#   OUT=/some/dir bash tools/gpu_session.sh occupancy [N]  # profile with the tiled kernels built for
#                                                        # >= N blocks/SM (default 3), then rebuild
#   OUT=/some/dir bash tools/gpu_session.sh all          # everything, no time limit
#
# Benchmark suites merge into build/gpu-results/<gpu>.{json,md,png} (build/ survives
# between commands on a warm machine), copied to $OUT after each suite: commit them to
# benchmarks/results/ with the commands recorded in the .md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu-session}
RESULTS=build/gpu-results
mkdir -p "$OUT" "$RESULTS"
export PYTHONUNBUFFERED=1
phase=${1:-all}
shift || true

log() { tee -a "$OUT/$phase.log"; }

environment() {
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv 2>/dev/null
}

build() {
  MAX_JOBS=16 pip install --no-build-isolation --no-deps -e . 2>&1 | tail -5
  python -c "import probreg, torch; print('probreg CUDA ops:', torch.ops.probreg.spd_from_raw.default._schema)"
}

run_tests() {
  # --maxfail: a broken kernel shows up in many tests; 30 failures are enough to see why.
  python -m pytest tests -q -p no:cacheprovider --maxfail=30 -rfE 2>&1 | tail -60
}

sanitize() {
  # The sanitizer slows kernels ~100x: the CUDA-parametrised tests minus the
  # million-input sweep, one tool per call. test_cuda_kernels_on_host and
  # test_cuda_numerics_on_cpu have "cuda" in their names but run no device code.
  local tools=${1:-memcheck racecheck initcheck}
  for tool in $tools; do
    echo "-- $tool"
    compute-sanitizer --tool "$tool" --error-exitcode 9 --print-limit 20 \
      python -m pytest tests -q -x -p no:cacheprovider -k "cuda and not million and not on_host and not on_cpu" 2>&1 | tail -15
    echo "exit status ($tool): ${PIPESTATUS[0]}"
  done
}

bench() {
  local suites=()
  local quick=()
  for a in "$@"; do
    case "$a" in
      --quick) quick=(--quick) ;;
      *) suites+=(--suite "$a") ;;
    esac
  done
  python -m benchmarks --device cuda "${suites[@]}" "${quick[@]}" --merge --out "$RESULTS" 2>&1 | tail -40
  cp "$RESULTS"/* "$OUT"/ 2>/dev/null
}

profile() {
  # Kernel and autograd times of the four issue-5 target cases, float32 policy mixed vs
  # double (tools/gpu_profile.py), then Nsight Compute on their kernels: occupancy,
  # registers, DRAM/SM throughput and stall reasons say whether a case is bound by
  # memory, latency or arithmetic; executed instructions and issue-slot use against the
  # static SASS counts of tools/sass_counts.py say how far the per-item instruction count
  # is from the issue budget.
  python tools/gpu_profile.py --out "$RESULTS" 2>&1 | tail -15
  cp "$RESULTS"/profile.json "$OUT"/ 2>/dev/null
  python tools/sass_counts.py --policy both --json "$OUT/sass-counts.json" 2>&1 | tail -20
  if command -v ncu >/dev/null 2>&1; then
    ncu --clock-control none --kernel-name regex:'spd_from_raw|huber_nll' --section SpeedOfLight \
      --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
      --section ComputeWorkloadAnalysis --section InstructionStats \
      python tools/gpu_profile.py --once > "$OUT/ncu-profile.txt" 2>&1
    echo "ncu exit status: $? (report: $OUT/ncu-profile.txt)"
    grep -E "Kernel|_kernel<|Duration|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per Thread|Executed Instructions  |Issue Slots Busy" \
      "$OUT/ncu-profile.txt" | head -160
  else
    echo "profile: no ncu on this machine"
  fi
}

occupancy() {
  # A/B of the tiled kernels' launch bounds (kernel_common.cuh PROBREG_CUDA_MIN_BLOCKS_PER_SM):
  # rebuild in place with N, profile, rebuild the default. --force: setuptools would
  # otherwise skip the build (the sources did not change, only the flags).
  local n=${1:-3}
  PROBREG_NVCC_FLAGS="-DPROBREG_CUDA_MIN_BLOCKS_PER_SM=$n" MAX_JOBS=16 python setup.py -q build_ext --inplace --force 2>&1 | tail -3
  python tools/gpu_profile.py --out "$RESULTS/min-blocks-$n" 2>&1 | tail -15
  cp "$RESULTS/min-blocks-$n/profile.json" "$OUT/profile-min-blocks-$n.json" 2>/dev/null
  MAX_JOBS=16 python setup.py -q build_ext --inplace --force 2>&1 | tail -3
}

case "$phase" in
  build) { environment; build; } 2>&1 | log ;;
  test) run_tests 2>&1 | log ;;
  sanitize) sanitize "$@" 2>&1 | log ;;
  bench) bench "$@" 2>&1 | log ;;
  profile) profile 2>&1 | log ;;
  occupancy) occupancy "$@" 2>&1 | log ;;
  all)
    { environment; build; run_tests; sanitize; } 2>&1 | log
    bench 2>&1 | log
    profile 2>&1 | log
    ;;
  *) echo "usage: tools/gpu_session.sh build|test|sanitize [tool]|bench [suite...] [--quick]|profile|occupancy [N]|all" >&2; exit 2 ;;
esac
ls -la "$OUT"
