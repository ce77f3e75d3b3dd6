# probreg: `make test` and `make bench` are self-sufficient on a fresh machine with only
# Python: they install what is missing (torch only if absent), build in place, then run.
# A torch that is already installed (e.g. a CUDA build on a GPU machine) is used as is.

PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
PIP := $(PYTHON) -m pip
# Compile parallelism for the extension build (ninja) and the CMake gate.
JOBS ?= 2
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: all deps build test bench cuda-check clean

all: test

deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	@$(PYTHON) -c "import numpy, scipy, pytest, setuptools, wheel, ninja, matplotlib, tqdm" 2>/dev/null || \
		$(PIP) install numpy scipy pytest setuptools wheel ninja matplotlib tqdm
	@$(PYTHON) -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" || \
		$(PIP) install "setuptools>=77"
	@$(PYTHON) -c "import torch; print('probreg: using torch', torch.__version__, 'cuda', torch.version.cuda)"

# In-place build of probreg._C against the installed torch (no build isolation).
build: deps
	MAX_JOBS=$(JOBS) $(PYTHON) setup.py -q build_ext --inplace

test: build
	$(PYTHON) -m pytest tests -q $(PYTEST_ARGS)

bench: build
	$(PYTHON) -m benchmarks $(BENCH_ARGS)

# Compile gate: C++ unit tests of the torch-free math headers (ctest) and, when nvcc
# exists, every csrc/cuda/*.cu kernel for sm_80 and sm_90; plus a syntax check of the
# CUDA registration glue against the installed torch's headers.
cuda-check:
	@command -v cmake >/dev/null || $(PIP) install cmake
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release $(if $(NVCC),-DCMAKE_CUDA_COMPILER=$(NVCC),) >/dev/null
	cmake --build build/cmake -j $(JOBS)
	ctest --test-dir build/cmake --output-on-failure
	@if [ -n "$(NVCC)" ]; then \
		$(PYTHON) tools/check_cuda_glue.py --nvcc "$(NVCC)"; \
	else \
		echo "cuda-check: no nvcc found: CUDA kernels were NOT compiled (C++ math tests ran)"; \
	fi

clean:
	rm -rf build probreg/_C*.so probreg/*.so *.egg-info

# Install checks: a built wheel and the pip routes, each in a fresh venv over the installed
# torch, smoke-tested from outside the checkout (tools/install_check.sh, tools/smoke_install.py).
# wheel: dist/probreg-*.whl from `pip wheel --no-build-isolation`, in this checkout, so it
#   reuses make build's objects (same build/temp.* directory: ninja only links).
# wheel-check: that wheel installed into a fresh venv and smoke-tested (CI).
# install-check: the four routes (install, editable, sdist, wheel), each from a fresh clone
#   of HEAD; with ccache installed, they hit make build's objects instead of compiling.
.PHONY: wheel wheel-check install-check
wheel: build
	rm -f dist/probreg-*.whl
	MAX_JOBS=$(JOBS) $(PIP) wheel -v --no-build-isolation --no-deps . -w dist >build/wheel.log 2>&1 || \
		{ cat build/wheel.log; exit 1; }
	@grep -E "ninja: no work to do|^ *\[[0-9]+/[0-9]+\]|Created wheel" build/wheel.log | cut -c1-150

wheel-check: wheel
	PYTHON=$(PYTHON) bash tools/install_check.sh --wheel dist/probreg-*.whl

install-check: build
	PYTHON=$(PYTHON) MAX_JOBS=$(JOBS) bash tools/install_check.sh $(ROUTES)
