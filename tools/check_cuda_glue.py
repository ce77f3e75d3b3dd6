"""Compile gate for the CUDA side on machines without a CUDA build of torch.

1. Syntax-checks every CUDA registration file (csrc/cuda/*.cpp, the torch glue) with the
   host compiler against the installed torch's headers (the c10/cuda headers ship in
   CPU wheels too) and the CUDA toolkit's runtime headers.
(The .cu kernels themselves are compiled by CMake for sm_80 and sm_90.)
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nvcc", required=True, help="path to nvcc (its toolkit's include/ is used)")
    parser.add_argument("--cxx", default=os.environ.get("CXX", "g++"))
    args = parser.parse_args(argv)

    try:
        from torch.utils.cpp_extension import include_paths
    except ImportError:
        print("check_cuda_glue: torch is not installed; skipping the glue syntax check")
        return 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = [
        os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(args.nvcc))), "include"),
        os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include"),
        "/usr/local/cuda/include",
    ]
    cuda_include = next((c for c in candidates if os.path.exists(os.path.join(c, "cuda_runtime.h"))), None)
    if cuda_include is None:
        print(f"check_cuda_glue: no cuda_runtime.h found near {args.nvcc}; tried {candidates}")
        return 1
    # CPU wheels lack the generated c10/cuda/impl/cuda_cmake_macros.h; its one macro
    # only controls symbol export, irrelevant to a syntax check.
    flags = ["-std=c++20", "-fsyntax-only", "-DTORCH_EXTENSION_NAME=_C", "-DC10_USING_CUSTOM_GENERATED_MACROS", "-w"]
    incs = [f"-I{p}" for p in include_paths()] + [
        f"-I{cuda_include}",
        f"-I{os.path.join(root, 'csrc', 'include')}",
        f"-I{os.path.join(root, 'csrc')}",
    ]
    files = sorted(glob.glob(os.path.join(root, "csrc", "cuda", "*.cpp")))
    failed = 0
    for path in files:
        cmd = [args.cxx, *flags, *incs, path]
        result = subprocess.run(cmd, capture_output=True, text=True)
        status = "ok" if result.returncode == 0 else "FAILED"
        print(f"check_cuda_glue: {os.path.relpath(path, root)}: {status}")
        if result.returncode != 0:
            failed += 1
            sys.stderr.write(result.stderr[-4000:])
    print(f"check_cuda_glue: {len(files) - failed}/{len(files)} CUDA registration files compile")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
