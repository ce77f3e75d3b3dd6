"""Build probreg._C against the torch that is already installed.

CPU sources are always built. CUDA sources (csrc/cuda) are added, as a CUDAExtension,
only when a CUDA toolkit is found AND the installed torch is a CUDA build.
Overrides: PROBREG_FORCE_CPU=1 (never CUDA), PROBREG_FORCE_CUDA=1 (CUDA even without a
visible GPU, e.g. in a container build; still needs a CUDA build of torch).

Always build with `pip install --no-build-isolation ...` (or `make build`): build
isolation would need a second torch to compile against, so the in-tree build backend
(tools/probreg_build_backend.py) stops an isolated build at once, saying what to run.
"""
import glob
import os
import runpy
import shlex
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover - explained to the user
    raise SystemExit(
        "probreg builds against an installed PyTorch (>= 2.9.1). Install torch first, then "
        "`pip install --no-build-isolation .` (build isolation would fetch a second torch)."
    ) from exc

# Sources are given relative to this file's directory (setuptools refuses absolute source
# paths in sdist, wheel and editable builds); chdir makes them resolve when setup.py is run
# from elsewhere (pip runs it from here). Include directories stay absolute (torch's ninja
# build compiles from build/temp.*).
ROOT = os.path.dirname(os.path.abspath(__file__))
os.chdir(ROOT)
MIN_TORCH_VERSION = runpy.run_path(os.path.join("probreg", "_version.py"))["MIN_TORCH_VERSION"]
if torch.__version__ < MIN_TORCH_VERSION:
    raise SystemExit(f"probreg needs torch >= {MIN_TORCH_VERSION}; the installed torch is {torch.__version__}.")


def _want_cuda() -> bool:
    if os.environ.get("PROBREG_FORCE_CPU", "0") == "1":
        return False
    if os.environ.get("PROBREG_FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def _cpu_isa_flags():
    """Vector ISA for the CPU kernels' SIMD lanes (csrc/include/probreg/lanes.h).

    The extension is built on the machine that runs it, so it targets the ISA torch
    itself detects there (AVX-512 / AVX2), falling back to the compiler default.
    PROBREG_CPU_ISA=default|avx2|avx512 overrides.
    """
    choice = os.environ.get("PROBREG_CPU_ISA")
    if choice is None:
        try:
            choice = torch.backends.cpu.get_cpu_capability().lower()
        except Exception:  # older torch
            choice = "default"
    if choice.startswith("avx512"):
        return ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma"]
    if choice == "avx2":
        return ["-mavx2", "-mfma"]
    return []


def _openmp_flags():
    """OpenMP for the CPU kernels' batch loop.

    at::parallel_for is header-only: it runs on torch's intra-op threads only when the
    extension itself is compiled with OpenMP (torch's CPU parallel backend); without it
    every CPU kernel runs on one thread. Linking with -fopenmp resolves libgomp.so.1 to
    the copy torch has already loaded (same SONAME), so torch.set_num_threads governs these
    loops too. PROBREG_NO_OPENMP=1 disables it.
    """
    if os.environ.get("PROBREG_NO_OPENMP", "0") == "1":
        return []
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        return ["-fopenmp"]
    return []


def _extension():
    csrc = "csrc"
    sources = [os.path.join(csrc, "probreg.cpp")] + sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    include_dirs = [os.path.join(ROOT, csrc, "include"), os.path.join(ROOT, csrc)]
    # No fast-math anywhere (the numerics rely on IEEE semantics); -fno-math-errno only
    # drops errno writes so that sqrt vectorises. -ffp-contract=off: GCC would otherwise
    # fuse a*b+c into an FMA wherever its inlining context allows, so the same item body
    # inlined at two call sites (two SIMD blocks, a lane block and its pair) could round
    # differently: results must not depend on an item's batch position or the thread
    # count (tests/test_determinism.py). Explicit FMAs are unaffected.
    # -g0: no debug info (Python's own CFLAGS carry -g): variable tracking through the large
    # inlined SIMD item bodies of csrc/cpu/nll_*.cpp multiplied their compile time here.
    cxx_flags = ["-O3", "-g0", "-fno-fast-math", "-fno-math-errno", "-ffp-contract=off", "-Wno-psabi"] + _cpu_isa_flags() + _openmp_flags()
    # PROBREG_EXTRA_CXX_FLAGS: appended last (e.g. -O1 for `make sanitize`, whose ASan/UBSan
    # build takes tens of minutes at -O3).
    cxx_flags += shlex.split(os.environ.get("PROBREG_EXTRA_CXX_FLAGS", ""))
    link_flags = _openmp_flags()
    if _want_cuda():
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cpp")))
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
        # PROBREG_NVCC_FLAGS: extra nvcc flags, e.g. -DPROBREG_CUDA_MIN_BLOCKS_PER_SM=3
        # (csrc/cuda/kernel_common.cuh).
        nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"] + shlex.split(os.environ.get("PROBREG_NVCC_FLAGS", ""))
        return CUDAExtension(
            "probreg._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=link_flags,
        )
    return CppExtension(
        "probreg._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )


setup(
    packages=find_packages(include=["probreg", "probreg.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
