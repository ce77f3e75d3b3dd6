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

.PHONY: all deps build test bench cuda-check sanitize clean

all: test

deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	@$(PYTHON) -c "import numpy, scipy, pytest, setuptools, wheel, ninja, matplotlib, tqdm, hypothesis" 2>/dev/null || \
		$(PIP) install numpy scipy pytest setuptools wheel ninja matplotlib tqdm hypothesis
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

# ---- sanitize: AddressSanitizer + UBSan (issue 15) -------------------------------------
# The C++ math tests (CMake) and the extension, built with -fsanitize=address,undefined in
# $(SANITIZE_DIR) (the in-place build is left alone), then ctest and $(SANITIZE_TESTS) run
# against the sanitized probreg (a copy of the package with the sanitized _C, imported from
# $(SANITIZE_DIR)/lib): libasan preloaded into the uninstrumented CPython, leak detection off
# (CPython's own allocations), any ASan or UBSan report fatal. Passes when nothing is reported.
# The extension is built at -O0 -g1: optimising the instrumented SIMD lane code is what is slow
# (the -O1 build of csrc/cpu/nll_cpu.cpp had not finished after 40 minutes; -O0 takes about 4).
# pytest captures at the Python level only (--capture=sys), so a sanitizer report on fd 2 is shown.
SANITIZE_DIR ?= build/sanitize
SANITIZE_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g
SANITIZE_TESTS ?= tests/test_bad_inputs.py tests/test_hostile_sweep.py tests/test_spd.py tests/test_nll.py tests/test_fuse.py
# PROBREG_CPU_OUTPUT_CACHE_MB=0: every output from torch's allocator at its exact size, so that
# ASan sees each output's bounds and each free (csrc/output_cache.h keeps page-rounded blocks).
SANITIZE_ENV := ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	PROBREG_CPU_OUTPUT_CACHE_MB=0
CXX_FOR_SANITIZE ?= $(shell command -v g++ || command -v c++)
# libasan first, then libstdc++: CPython is not linked against libstdc++, and ASan's
# __cxa_throw interceptor must find the real one when it starts ("CHECK failed:
# asan_interceptors.cpp ... real___cxa_throw" at the first C++ exception otherwise).
SANITIZE_PRELOAD = $(shell $(CXX_FOR_SANITIZE) -print-file-name=libasan.so) $(shell $(CXX_FOR_SANITIZE) -print-file-name=libstdc++.so)

sanitize: deps
	@command -v cmake >/dev/null || $(PIP) install cmake
	cmake -S . -B $(SANITIZE_DIR)/cmake -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER=OFF \
		-DCMAKE_CXX_COMPILER=$(CXX_FOR_SANITIZE) "-DCMAKE_CXX_FLAGS=$(SANITIZE_FLAGS)" >/dev/null
	cmake --build $(SANITIZE_DIR)/cmake -j $(JOBS)
	$(SANITIZE_ENV) ctest --test-dir $(SANITIZE_DIR)/cmake --output-on-failure
	CXX=$(CXX_FOR_SANITIZE) CFLAGS="$(SANITIZE_FLAGS)" LDFLAGS="-fsanitize=address,undefined" \
		PROBREG_EXTRA_CXX_FLAGS="-O0 -g1" PROBREG_FORCE_CPU=1 MAX_JOBS=$(JOBS) $(PYTHON) setup.py -q build_ext --build-lib $(SANITIZE_DIR)/lib \
		--build-temp $(SANITIZE_DIR)/temp
	mkdir -p $(SANITIZE_DIR)/lib/probreg && cp probreg/*.py $(SANITIZE_DIR)/lib/probreg/
	cd $(SANITIZE_DIR)/lib && $(SANITIZE_ENV) LD_PRELOAD="$(SANITIZE_PRELOAD)" \
		$(PYTHON) -c "import probreg, os; assert os.path.realpath(probreg.__file__).startswith(os.path.realpath('.')), probreg.__file__; print('sanitize: testing', probreg._C.__file__)"
	cd $(SANITIZE_DIR)/lib && $(SANITIZE_ENV) LD_PRELOAD="$(SANITIZE_PRELOAD)" \
		$(PYTHON) -m pytest -q -p no:cacheprovider --capture=sys $(addprefix $(CURDIR)/,$(SANITIZE_TESTS)) $(PYTEST_ARGS)

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
