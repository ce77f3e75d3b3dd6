#!/usr/bin/env bash
# GPU validation for a session that is lent a GPU.
#
# The one command for a 15-minute device window (issue 18): everything in <= 6 minutes,
# results in OUTDIR (at most 6 files, so they all come back from the device tool's $OUT):
#
#   bash tools/gpu_session.sh quick OUTDIR            # build (sm_90, MAX_JOBS=nproc), CUDA
#                                                     # tests, memcheck subset, spd/nll/fuse
#                                                     # benchmarks at 2^20/2^22/2^24 float32 with
#                                                     # the copy bandwidth, OUTDIR/summary.md
#   bash tools/gpu_session.sh quick OUTDIR --dry-run  # the same steps on the CPU, tiny sizes:
#                                                     # run it here before spending GPU time
#
# Longer phases for a longer window, each fitting a 10-minute command limit:
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
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
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

# ---- quick: the issue-18 check in one command ----
# Each step runs under `timeout`, appends to OUTDIR/quick.log between a
# "==== step NAME: ..." line and a "---- NAME exit RC after Ts" line (tools/gpu_summary.py
# reads them), and a failed step does not stop the later ones. Steps in order of what the
# acceptance needs first; the d = 3 benchmarks only run in the time that is left.
QUICK_BUDGET_S=${QUICK_BUDGET_S:-345}

step() {
  local name=$1 limit=$2
  shift 2
  local t=$SECONDS
  echo "==== step $name: timeout ${limit}s: $*"
  if declare -F "$1" >/dev/null; then  # a function of this script: run it in a child bash
    timeout --kill-after=10 "$limit" bash -c "$(declare -f "$1"); $*" 2>&1
  else
    timeout --kill-after=10 "$limit" "$@" 2>&1
  fi
  local rc=$?
  echo "---- $name exit $rc after $((SECONDS - t))s (total $((SECONDS - QUICK_T0))s)"
}

quick_build() {
  if [ "$QUICK_DRY_RUN" = 1 ]; then
    MAX_JOBS=$(nproc) PROBREG_FORCE_CPU=1 python setup.py -q build_ext --inplace 2>&1 | tail -3
  else
    # sm_90 only; PROBREG_FORCE_CUDA: build the CUDA kernels even if the toolkit probe misses.
    TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=$(nproc) PROBREG_FORCE_CUDA=1 python setup.py -q build_ext --inplace 2>&1 | tail -5
  fi
  python -c "import probreg, torch; print('probreg', probreg.__version__, 'built; CUDA kernel registered:', torch._C._dispatch_has_kernel_for_dispatch_key('probreg::spd_from_raw', 'CUDA'))"
}

quick() {
  local outdir=${1:?usage: tools/gpu_session.sh quick OUTDIR [--dry-run]}
  export QUICK_DRY_RUN=0
  [ "${2:-}" = "--dry-run" ] && QUICK_DRY_RUN=1
  mkdir -p "$outdir"
  outdir=$(cd "$outdir" && pwd)
  QUICK_T0=$SECONDS
  local device=cuda batches=20,22,24 budget=4 memcheck=(compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20)
  if [ "$QUICK_DRY_RUN" = 1 ]; then
    device=cpu batches=10,12 budget=0.5
    command -v compute-sanitizer >/dev/null || memcheck=(echo "compute-sanitizer: not on this machine; would run:")
  fi
  # The memcheck subset: every CUDA kernel, forward and backward, once per op, float32.
  local sanitize_k="cuda and float32 and not million and not on_host and not on_cpu"
  {
    environment
    step build 120 quick_build
    step tests 75 python -m pytest tests -q -p no:cacheprovider --maxfail=20 -rfE \
      -k "cuda and not million and not on_host and not on_cpu"
    step memcheck 45 "${memcheck[@]}" python -m pytest tests/test_spd.py tests/test_nll.py tests/test_fuse.py \
      -q -x -p no:cacheprovider -k "$sanitize_k"
    step bench 100 python -m benchmarks --device $device --suite spd --suite nll --suite fuse \
      --batches $batches --dims 2 --covariances full --budget-s $budget --out "$outdir"
    local left=$((QUICK_BUDGET_S - (SECONDS - QUICK_T0)))
    if [ $left -gt 30 ]; then
      step bench-d3 $left python -m benchmarks --device $device --suite spd --suite nll \
        --batches $batches --dims 2,3 --covariances full --budget-s $budget --merge --out "$outdir"
    else
      echo "---- bench-d3 skipped: ${left}s left"
    fi
    step summary 30 python tools/gpu_summary.py "$outdir"
  } > "$outdir/quick.log" 2>&1
  cat "$outdir/summary.md" 2>/dev/null || tail -40 "$outdir/quick.log"
  echo "quick: $((SECONDS - QUICK_T0))s; files in $outdir:"
  ls "$outdir"
}

case "$phase" in
  quick) quick "$@"; exit 0 ;;
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
  *) echo "usage: tools/gpu_session.sh quick OUTDIR [--dry-run]|build|test|sanitize [tool]|bench [suite...] [--quick]|profile|occupancy [N]|all" >&2; exit 2 ;;
esac
ls -la "$OUT"
