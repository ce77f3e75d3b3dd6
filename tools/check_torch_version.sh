#!/usr/bin/env bash
# probreg against one torch release, in a venv of its own (no system site-packages):
#
#   tools/check_torch_version.sh VERSION [PYTEST_ARGS...]
#
# 1. venv ${TMPDIR:-/tmp}/probreg-torch-VERSION/venv (kept, and reused by a rerun) with
#    torch==VERSION and what make deps installs (numpy, scipy, pytest, ninja, ...,
#    setuptools >= 77);
# 2. a fresh clone of the committed tree (HEAD), built in place (make build) and tested:
#    pytest PYTEST_ARGS (default: the whole suite without the slow statistical tests);
# 3. pip install --no-build-isolation of that clone into the venv, then
#    tools/smoke_install.py from outside the clone.
# Without a visible GPU the build is CPU-only (PROBREG_FORCE_CPU=1, unless set): PyPI's
# torch wheels are CUDA builds, and a minimal CUDA toolkit (no cuBLAS headers) cannot
# compile against their headers. PyPI's CUDA builds of torch need about 3 GB of downloads
# (torch plus the nvidia-* wheels) and 5 GB in the venv.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 TORCH_VERSION [PYTEST_ARGS...]" >&2; exit 2; }
VERSION=$1
shift
PYTEST_ARGS=("$@")
[ ${#PYTEST_ARGS[@]} -gt 0 ] || PYTEST_ARGS=(tests -q -m "not slow")

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK="${TMPDIR:-/tmp}/probreg-torch-$VERSION"
VENV="$WORK/venv"
SRC="$WORK/src"

step() { echo "check-torch $VERSION: $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "venv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
step "installing torch==$VERSION and the test dependencies"
"$VENV/bin/python" -m pip install -q "torch==$VERSION" numpy scipy pytest ninja wheel matplotlib tqdm "setuptools>=77"
export PATH="$VENV/bin:$PATH"  # the venv's ninja
"$VENV/bin/python" -c 'import torch, numpy; print("check-torch: torch", torch.__version__, "cuda", torch.version.cuda, "numpy", numpy.__version__)'
if [ -z "${PROBREG_FORCE_CPU:-}" ]; then
  PROBREG_FORCE_CPU=$("$VENV/bin/python" -c 'import torch; print(int(not torch.cuda.is_available()))')
fi
export PROBREG_FORCE_CPU

rm -rf "$SRC"
git clone -q "$ROOT" "$SRC"
step "clone of $(git -C "$SRC" rev-parse --short HEAD), PROBREG_FORCE_CPU=$PROBREG_FORCE_CPU"
start=$(date +%s)
make -C "$SRC" --no-print-directory build PYTHON="$VENV/bin/python"
step "in-place build: $(($(date +%s) - start)) s"
start=$(date +%s)
(cd "$SRC" && "$VENV/bin/python" -m pytest "${PYTEST_ARGS[@]}")
step "pytest ${PYTEST_ARGS[*]}: $(($(date +%s) - start)) s"

start=$(date +%s)
(cd "$SRC" && "$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps .)
mkdir -p "$WORK/elsewhere"
(cd "$WORK/elsewhere" && "$VENV/bin/python" "$SRC/tools/smoke_install.py")
"$VENV/bin/python" -m pip uninstall -q -y probreg
step "pip install --no-build-isolation + smoke: $(($(date +%s) - start)) s"
step "passed"
