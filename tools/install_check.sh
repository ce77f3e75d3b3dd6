#!/usr/bin/env bash
# The pip routes a user takes, each in a fresh venv (--system-site-packages, so that the
# installed torch is reused, as the README says), each followed by tools/smoke_install.py
# run from outside the source tree. Prints each route's wall time.
#
#   tools/install_check.sh [ROUTE...]     routes from a fresh clone of the committed tree (HEAD):
#       install    pip install --no-build-isolation .
#       editable   pip install --no-build-isolation -e .  (then an edit to a .py file is seen)
#       sdist      python -m build --sdist --no-isolation, installed with pip install --no-build-isolation
#       wheel      pip wheel --no-build-isolation --no-deps . installed with pip
#     default: all four (make install-check)
#   tools/install_check.sh --wheel FILE   install a built wheel into a fresh venv, smoke (CI)
#
# Builds go through ccache when it is installed (torch's BuildExtension prepends it; the
# /usr/lib/ccache masquerade covers older torch), with CCACHE_BASEDIR set to the checkout
# and the clones and pip's temporary directories under build/install-check/, so that every
# route hits the objects of the in-place build (make build) instead of compiling again.
# The venvs and the smoke script's working directory are outside the checkout.
# Env: PYTHON (python3), KEEP=1 keeps the work directories for inspection.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK="$ROOT/build/install-check"               # clones, sdists, wheels, pip's TMPDIR
OUTSIDE=$(mktemp -d "${TMPDIR:-/tmp}/probreg-install-check.XXXXXX")  # venvs, smoke cwd
SMOKE="$ROOT/tools/smoke_install.py"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK" "$OUTSIDE"' EXIT

if command -v ccache >/dev/null 2>&1; then
  [ -d /usr/lib/ccache ] && export PATH="/usr/lib/ccache:$PATH"
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}" CCACHE_NOHASHDIR=1
else
  echo "install-check: no ccache: every route compiles the extension from scratch"
fi

now() { date +%s.%N; }
elapsed() { "$PYTHON" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
say() { echo "install-check: $*"; }

# fresh_venv DIR: a new venv over the system site-packages (torch reused) with a setuptools
# that builds probreg (Python 3.11's venv ships setuptools 65; probreg needs >= 77).
fresh_venv() {
  "$PYTHON" -m venv --system-site-packages "$1"
  "$1/bin/python" -m pip install -q "setuptools>=77"
}

# smoke VENV [--editable SRC]: the smoke script, run from an empty directory outside the tree.
smoke() {
  local venv=$1
  shift
  (cd "$OUTSIDE/cwd" && "$venv/bin/python" "$SMOKE" "$@")
}

fresh_clone() {
  git clone -q --no-hardlinks "$ROOT" "$1"
}

# Each route ROUTE gets $WORK/ROUTE (src: the clone, dist) and $OUTSIDE/ROUTE (venvs).
route_install() {
  fresh_clone "$1/src" && fresh_venv "$2/venv"
  (cd "$1/src" && "$2/venv/bin/python" -m pip install -q --no-build-isolation .)
  smoke "$2/venv"
}

route_editable() {
  fresh_clone "$1/src" && fresh_venv "$2/venv"
  (cd "$1/src" && "$2/venv/bin/python" -m pip install -q --no-build-isolation -e .)
  smoke "$2/venv" --editable "$1/src"
  # An edit to a .py file is seen without reinstalling.
  echo '_install_check_edit = "seen"' >>"$1/src/probreg/__init__.py"
  (cd "$OUTSIDE/cwd" && "$2/venv/bin/python" -c \
    'import probreg; assert probreg._install_check_edit == "seen"; print("smoke: editable: an edit to probreg/__init__.py is seen")')
}

route_sdist() {
  fresh_clone "$1/src" && fresh_venv "$2/venv"
  "$2/venv/bin/python" -m pip install -q build
  (cd "$1/src" && "$2/venv/bin/python" -m build -q --sdist --no-isolation --outdir "$1/dist" . >/dev/null)
  local sdist
  sdist=$(ls "$1"/dist/probreg-*.tar.gz)
  say "sdist: $(basename "$sdist")"
  "$2/venv/bin/python" -m pip install -q --no-build-isolation "$sdist"
  smoke "$2/venv"
}

route_wheel() {
  fresh_clone "$1/src" && fresh_venv "$2/venv"
  (cd "$1/src" && "$2/venv/bin/python" -m pip wheel -q --no-build-isolation --no-deps . -w "$1/dist")
  install_wheel "$(ls "$1"/dist/probreg-*.whl)" "$2/install-venv"
}

# install_wheel FILE VENV: a fresh venv, pip install of the wheel with no index: its
# dependencies (torch, numpy) are those already installed. (fresh_venv's setuptools
# upgrade is needed here too: torch 2.13 itself requires setuptools >= 77.0.3.)
install_wheel() {
  fresh_venv "$2"
  "$2/bin/python" -m pip install -q --no-index "$1"
  smoke "$2"
}

rm -rf "$WORK"
mkdir -p "$WORK/tmp" "$OUTSIDE/cwd"
# pip and setuptools build under TMPDIR (an sdist is unpacked there, an editable build's
# temp directory is there): keep it under the ccache base directory too.
export TMPDIR="$WORK/tmp"

if [ "${1:-}" = "--wheel" ]; then
  [ $# -eq 2 ] || { echo "usage: $0 --wheel FILE" >&2; exit 2; }
  start=$(now)
  install_wheel "$(cd "$(dirname "$2")" && pwd)/$(basename "$2")" "$OUTSIDE/wheel-venv"
  say "wheel $(basename "$2") installed into a fresh venv and smoke-tested in $(elapsed "$start") s"
  exit 0
fi

git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1 || { echo "install-check: $ROOT is not a git checkout" >&2; exit 2; }
routes=("$@")
[ ${#routes[@]} -gt 0 ] || routes=(install editable sdist wheel)
say "routes from a fresh clone of $(git -C "$ROOT" rev-parse --short HEAD) (committed tree only), $("$PYTHON" -c 'import torch; print("torch", torch.__version__)')"
[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ] || say "note: uncommitted changes in $ROOT are not part of the check"
summary=()
for route in "${routes[@]}"; do
  declare -F "route_$route" >/dev/null || { echo "install-check: unknown route $route" >&2; exit 2; }
  say "--- route $route"
  start=$(now)
  "route_$route" "$WORK/$route" "$OUTSIDE/$route"
  summary+=("$(printf '%-9s %7s s' "$route" "$(elapsed "$start")")")
done
say "all routes passed (wall time per route, clone + venv + build + install + smoke):"
printf '  %s\n' "${summary[@]}"
