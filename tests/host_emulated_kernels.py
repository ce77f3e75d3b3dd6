"""The CUDA kernels (csrc/cuda/*.cu) built for the host and bound with ctypes.

The .cu files are compiled as C++ by the host compiler with -DPROBREG_CUDA_HOST_EMULATION
(csrc/host_emulation/host_emulation.h): every launch runs on the CPU, the threads of a
block as fibers with real __syncthreads barriers and function-local __shared__ tiles.
This tests the kernels' own code (tiling, indexing, grid-stride loops, dispatch, storage
conversions) on machines without a GPU. Needs a C++ compiler and the CUDA toolkit's
headers (cuda_runtime.h, cuda_fp16.h, cuda_bf16.h), not a GPU or libcudart.

Every buffer handed to a kernel sits inside a guard region (GuardedBuffers): inputs
between NaNs, so an out-of-bounds read poisons the results; outputs between sentinels
that must survive, and pre-filled with NaN, so an element never written shows up.
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
BUILD = os.path.join(ROOT, "build", "cuda_host_emulation")

# kernel_api.h Dtype
DTYPE_CODES = {torch.float64: 0, torch.float32: 1, torch.float16: 2, torch.bfloat16: 3}
# host_emulation.h Order
ORDERS = {"ascending": 0, "descending": 1, "shuffled": 2, "rotating": 3}

# -O1: IEEE semantics (no fast-math, no FMA contraction: no -march), quick to build. The
# __CUDA_NO_* defines are those torch's CUDAExtension passes to nvcc (no implicit half
# conversions), so the host build accepts only what the real build accepts.
_FLAGS = ["-std=c++17", "-O1", "-fno-fast-math", "-fPIC", "-Wno-unknown-pragmas", "-Wno-psabi",
          "-DPROBREG_CUDA_HOST_EMULATION", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
          "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
          # Launches of at most 700 items (kernel_common.cuh launch_in_chunks; 2^31 in the
          # extension): 1000 items run as two launches, the second from item 700.
          "-DPROBREG_CUDA_MAX_LAUNCH_ITEMS=700"]


def cuda_include_dir():
    """The CUDA toolkit's include/ with the runtime and half-type headers, or None."""
    nvcc = shutil.which("nvcc")
    candidates = [os.path.join(os.environ[k], "include") for k in ("CUDA_HOME", "CUDA_PATH") if k in os.environ]
    if nvcc:
        candidates.append(os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include"))
    candidates.append("/usr/local/cuda/include")
    for c in candidates:
        if all(os.path.exists(os.path.join(c, h)) for h in ("cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h")):
            return c
    return None


def _sources():
    kernels = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    host = sorted(glob.glob(os.path.join(CSRC, "host_emulation", "*.cpp")))
    headers = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cuh")) + glob.glob(os.path.join(CSRC, "cuda", "*.h"))
                     + glob.glob(os.path.join(CSRC, "host_emulation", "*.h"))
                     + glob.glob(os.path.join(CSRC, "include", "probreg", "*.h")))
    return kernels, host, headers


def build(cxx: str | None = None) -> str:
    """Compiles (once per source state) and returns the shared library's path."""
    cxx = cxx or os.environ.get("CXX", "g++")
    include = cuda_include_dir()
    if include is None:
        raise FileNotFoundError("no CUDA toolkit headers (cuda_runtime.h, cuda_fp16.h, cuda_bf16.h) found")
    kernels, host, headers = _sources()
    digest = hashlib.sha256(" ".join([cxx, include, *_FLAGS]).encode())
    for path in kernels + host + headers:
        with open(path, "rb") as f:
            digest.update(path.encode() + f.read())
    out_dir = os.path.join(BUILD, digest.hexdigest()[:16])
    library = os.path.join(out_dir, "libprobreg_cuda_host_emulation.so")
    if os.path.exists(library):
        return library
    os.makedirs(out_dir, exist_ok=True)
    incs = [f"-I{os.path.join(CSRC, 'include')}", f"-I{os.path.join(CSRC, 'cuda')}", f"-I{include}"]

    def compile_one(src):
        obj = os.path.join(out_dir, os.path.basename(src) + ".o")
        lang = ["-x", "c++"] if src.endswith(".cu") else []
        result = subprocess.run([cxx, *_FLAGS, *incs, *lang, "-c", src, "-o", obj], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"host emulation build failed for {src}:\n{result.stderr[-4000:]}")
        return obj

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        objects = list(pool.map(compile_one, kernels + host))
    tmp = library + f".tmp{os.getpid()}"
    subprocess.run([cxx, "-shared", *objects, "-o", tmp], check=True, capture_output=True)
    os.replace(tmp, library)
    return library


class GuardedBuffers:
    """Host buffers with guard regions around each (see the module docstring)."""

    GUARD = 64
    SENTINEL = 3.0

    def __init__(self, shift: int = 0):
        # shift > 0 (elements) moves every buffer off the kernels' 8-byte chunk alignment
        # (for shift not a multiple of 8 bytes): their generic, value-by-value tile path.
        self.GUARD = GuardedBuffers.GUARD + shift
        self._inputs = []
        self._outputs = []

    def input(self, t: torch.Tensor) -> torch.Tensor:
        flat = torch.full((t.numel() + 2 * self.GUARD,), float("nan"), dtype=t.dtype)
        view = flat[self.GUARD:self.GUARD + t.numel()].view(t.shape)
        view.copy_(t)
        self._inputs.append((flat, t.clone()))
        return view

    def output(self, shape, dtype) -> torch.Tensor:
        numel = 1
        for s in shape:
            numel *= s
        if dtype in (torch.int32, torch.bool):
            storage = torch.full((numel + 2 * self.GUARD,), 77, dtype=torch.int32 if dtype == torch.int32 else torch.uint8)
            storage[self.GUARD:self.GUARD + numel] = -1 if dtype == torch.int32 else 0xEE
        else:
            storage = torch.full((numel + 2 * self.GUARD,), self.SENTINEL, dtype=dtype)
            storage[self.GUARD:self.GUARD + numel] = float("nan")
        self._outputs.append((storage, numel, dtype))
        return storage[self.GUARD:self.GUARD + numel].view(shape)

    def check(self) -> None:
        """Guards intact, inputs unmodified, every output element written."""
        g = self.GUARD
        for flat, original in self._inputs:
            assert torch.isnan(flat[:g].float()).all() and torch.isnan(flat[g + original.numel():].float()).all(), \
                "a kernel wrote into an input's guard region"
            body = flat[g:g + original.numel()].view(original.shape)
            same = (body == original) | (torch.isnan(body) & torch.isnan(original))
            assert same.all(), "a kernel modified an input"
        for storage, numel, dtype in self._outputs:
            guards = torch.cat([storage[:g], storage[g + numel:]])
            if dtype in (torch.int32, torch.bool):
                assert (guards == 77).all(), "a kernel wrote past an output"
                body = storage[g:g + numel]
                if dtype == torch.bool:
                    assert ((body == 0) | (body == 1)).all(), "a bool output was not written"
                else:
                    assert (body != -1).all(), "an int32 output was not written"
            else:
                assert (guards == self.SENTINEL).all(), "a kernel wrote past an output"


class Out:
    """An output argument: a buffer of this shape and dtype, allocated in a guard region."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), dtype


class HostEmulatedKernels:
    """ctypes binding of csrc/host_emulation/kernel_api_c.cpp. Each method takes contiguous
    CPU tensors laid out as kernel_api.h describes and returns the kernel's outputs."""

    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        self.lib.probreg_emu_last_error.restype = ctypes.c_char_p
        c_int, c_ll, c_d, c_p = ctypes.c_int, ctypes.c_longlong, ctypes.c_double, ctypes.c_void_p
        sig = {
            "symeig_forward": [c_int, c_int, c_p, c_p, c_p, c_ll],
            "symeig_backward": [c_int, c_int, c_p, c_p, c_p, c_p, c_p, c_ll],
            "spd_remap_forward": [c_int, c_int, c_p, c_p, c_ll, c_d],
            "spd_remap_backward": [c_int, c_int, c_p, c_p, c_p, c_ll, c_d],
            "spd_from_raw_forward": [c_int, c_int, c_p, c_p, c_ll, c_d],
            "spd_from_raw_backward": [c_int, c_int, c_p, c_p, c_p, c_ll, c_d],
            "huber_nll_forward": [c_int, c_int, c_int, c_int, c_int, c_p, c_p, c_p, c_ll, c_d, c_d],
            "huber_nll_backward": [c_int, c_int, c_int, c_int, c_int, c_p, c_ll, c_p, c_p, c_p, c_p, c_ll, c_d, c_d],
            "huber_fuse_forward": [c_int, c_int, c_p, c_p, c_p, c_p, c_p, c_p, c_p, c_p, c_ll, c_ll, c_d, c_int, c_d],
            "huber_fuse_backward": [c_int, c_int, c_p, c_p, c_p, c_p, c_p, c_p, c_p, c_p, c_ll, c_ll, c_d, c_d],
        }
        for name, argtypes in sig.items():
            fn = getattr(self.lib, "probreg_emu_" + name)
            fn.argtypes = argtypes
            fn.restype = c_int
        self.lib.probreg_emu_set_schedule.argtypes = [ctypes.c_uint, c_int, ctypes.c_ulonglong]
        self.set_schedule()
        self.shift = 0  # elements every buffer is moved by (GuardedBuffers)

    def set_schedule(self, max_blocks: int = 0, order: str = "rotating", seed: int = 0) -> None:
        """max_blocks: cap on the emulated grid (0: none); order: fiber order per round."""
        self.lib.probreg_emu_set_schedule(max_blocks, ORDERS[order], seed)

    def _run(self, name, *args):
        """Calls probreg_emu_<name>(*args) with each tensor copied into a guarded input
        buffer, each Out allocated as a guarded output, None as a null pointer; checks the
        launch status and the guards; returns the outputs in order."""
        buffers = GuardedBuffers(self.shift)
        outputs, c_args = [], []
        for a in args:
            if isinstance(a, torch.Tensor):
                c_args.append(ctypes.c_void_p(buffers.input(a).data_ptr()))
            elif isinstance(a, Out):
                outputs.append(buffers.output(a.shape, a.dtype))
                c_args.append(ctypes.c_void_p(outputs[-1].data_ptr()))
            else:
                c_args.append(a)
        status = getattr(self.lib, "probreg_emu_" + name)(*c_args)
        if status != 0:
            raise RuntimeError(f"{name}: launch failed ({status}): {self.lib.probreg_emu_last_error().decode()}")
        buffers.check()
        return outputs

    # ---- spd ----
    def symeig(self, B):
        n, d = B.shape[0], B.shape[-1]
        return tuple(self._run("symeig_forward", DTYPE_CODES[B.dtype], d, B, Out((n, d), B.dtype),
                               Out((n, d, d), B.dtype), n))

    def symeig_backward(self, gL, gV, L, V):
        n, d = V.shape[0], V.shape[-1]
        return self._run("symeig_backward", DTYPE_CODES[V.dtype], d, gL, gV, L, V, Out(V.shape, V.dtype), n)[0]

    def spd_remap(self, B, theta):
        n, d = B.shape[0], B.shape[-1]
        return self._run("spd_remap_forward", DTYPE_CODES[B.dtype], d, B, Out(B.shape, B.dtype), n, theta)[0]

    def spd_remap_backward(self, gA, B, theta):
        n, d = B.shape[0], B.shape[-1]
        return self._run("spd_remap_backward", DTYPE_CODES[B.dtype], d, gA, B, Out(B.shape, B.dtype), n, theta)[0]

    def spd_from_raw(self, raw, d, theta):
        n = raw.shape[0]
        return self._run("spd_from_raw_forward", DTYPE_CODES[raw.dtype], d, raw, Out((n, d, d), raw.dtype), n,
                         theta)[0]

    def spd_from_raw_backward(self, gA, raw, theta):
        n, d = gA.shape[0], gA.shape[-1]
        return self._run("spd_from_raw_backward", DTYPE_CODES[raw.dtype], d, gA, raw, Out(raw.shape, raw.dtype), n,
                         theta)[0]

    # ---- huber_nll ----
    @staticmethod
    def loss_dtype(dtype):
        return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    def huber_nll(self, pred, target, delta, theta, family, covariance, mu):
        n, d = target.shape
        return self._run("huber_nll_forward", DTYPE_CODES[pred.dtype], d, family, covariance, int(mu), pred, target,
                         Out((n,), self.loss_dtype(pred.dtype)), n, delta, theta)[0]

    def huber_nll_backward(self, grad_loss, pred, target, delta, theta, family, covariance, mu, need_grad_target):
        """grad_loss: (n,) or a single value broadcast (stride 0). -> (grad_pred, grad_target or None)"""
        n, d = target.shape
        stride = 0 if grad_loss.numel() == 1 else 1
        grad_target = Out((n, d), pred.dtype) if need_grad_target else None
        outputs = self._run("huber_nll_backward", DTYPE_CODES[pred.dtype], d, family, covariance, int(mu), grad_loss,
                            stride, pred, target, Out(pred.shape, pred.dtype), grad_target, n, delta, theta)
        return outputs[0], outputs[1] if need_grad_target else None

    # ---- huber_fuse ----
    def huber_fuse(self, v, A, w, init, delta, max_iter, tol):
        problems, n, d = v.shape
        y, hess, iterations, converged = self._run(
            "huber_fuse_forward", DTYPE_CODES[v.dtype], d, v, A, w, init, Out((problems, d), v.dtype),
            Out((problems, d, d), v.dtype), Out((problems,), torch.int32), Out((problems,), torch.bool), problems, n,
            delta, max_iter, tol)
        return y, hess, iterations, converged.view(torch.bool)

    def huber_fuse_backward(self, grad_y, y, v, A, w, delta, damping):
        problems, n, d = v.shape
        return tuple(self._run("huber_fuse_backward", DTYPE_CODES[v.dtype], d, grad_y, y, v, A, w,
                               Out(v.shape, v.dtype), Out(A.shape, v.dtype), Out(w.shape, v.dtype), problems, n,
                               delta, damping))
