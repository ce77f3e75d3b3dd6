"""huber_fuse: maximum-likelihood fusion of n Huber estimates per problem (d = 2, float32),
n in {2, 8, 72}, over batch sizes.

Problems: A_i = I + 0.5 N(0, 1) (not symmetric), v_i ~ N(0, 2^2), w_i ~ U(0.2, 1), delta = 1.
Peers in the same run (rows' `impl`):
- eager_reference: batched eager MM in PyTorch (probreg.reference.huber_fuse_mm_reference),
  vectorised over problems, from the weighted least-squares point, with probreg's stopping
  rule (every problem's step <= 1e-6 (1 + |y|)), capped at EAGER_MAX_ITER steps: a batched
  loop runs until its slowest problem stops. `median_iterations` is the steps it ran.
- eager_mm20: the same loop with 20 fixed steps (the authors' count).
- authors: the authors' procedure (20 MM steps from the first estimate, unweighted); its
  error is measured against the unweighted minimiser (accuracy peer).
- torch_newton: probreg's algorithm in plain PyTorch at the input precision
  (probreg.reference.huber_fuse, the d > 3 path; one host sync per iteration and batched
  eigh solves: run up to TORCH_NEWTON_MAX_BATCH problems only).
- probreg: the fused kernel (default tol 1e-6); also forward+backward (implicit gradient,
  damping 0.1, grad_y = 1).
Accuracy `max_err`: max over problems of |y - y*|_inf / (1 + |y*|_inf) with y* the float64
high-accuracy solution of the same float32-rounded inputs: probreg's float64 kernel at
tol 1e-12 (tests/test_fuse.py checks that kernel against an independent scipy minimiser to
1e-9; observed <= 5e-11).
"""
from __future__ import annotations

import torch

import probreg
from probreg import reference

from .common import OVERRIDES, time_ms

D = 2
DELTA = 1.0
TOL = 1e-6
EAGER_MAX_ITER = 500
TORCH_NEWTON_MAX_BATCH = {"cpu": 2**16, "cuda": 2**20}


def _problems(batch: int, n: int, device: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    A = torch.eye(D) + 0.5 * torch.randn(batch, n, D, D, generator=g)
    v = 2.0 * torch.randn(batch, n, D, generator=g)
    w = 0.2 + 0.8 * torch.rand(batch, n, generator=g)
    return v.to(device), A.to(device), w.to(device)


def _scaled_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    y = y.detach().double().cpu()
    ref = ref.detach().double().cpu()
    if not bool(torch.isfinite(y).all()):
        return float("nan")
    return float(((y - ref).abs().amax(-1) / (1.0 + ref.abs().amax(-1))).max())


def bytes_moved(n: int, batch: int, mode: str, itemsize: int = 4) -> int:
    """Minimum bytes a fused implementation must move: read v, A, weight; write y, the
    Hessian, iterations (int32) and converged (bool); backward reads grad_y, y and the
    inputs again and writes their gradients."""
    inputs = n * (D + D * D + 1) * itemsize
    fwd = (inputs + (D + D * D) * itemsize + 4 + 1) * batch
    bwd = (2 * inputs + 2 * D * itemsize) * batch
    return fwd if mode == "forward" else fwd + bwd


def _batches(device: str, quick: bool):
    if OVERRIDES["batches"]:
        return {2: OVERRIDES["batches"]}  # the headline case (n = 2) at the requested sizes
    if device == "cpu":
        if quick:
            return {2: [2**10], 8: [2**10], 72: [2**8]}
        return {2: [2**12, 2**18], 8: [2**12, 2**16], 72: [2**10, 2**13]}
    if quick:
        return {2: [2**12], 8: [2**12], 72: [2**10]}
    return {2: [2**14, 2**18, 2**22], 8: [2**14, 2**18, 2**20], 72: [2**12, 2**16]}


def run(device: str, quick: bool = False):
    rows = []
    for n, batches in _batches(device, quick).items():
        for batch in batches:
            v, A, w = _problems(batch, n, device, seed=1000 * n + batch)
            ref = probreg.huber_fuse(v.double(), A.double(), w.double(), DELTA, tol=1e-12).y
            ones = torch.ones_like(w)
            ref_unweighted = probreg.huber_fuse(v.double(), A.double(), ones.double(), DELTA, tol=1e-12).y
            steps = {}

            def eager():
                y, steps["eager_reference"] = reference.huber_fuse_mm_reference(
                    v, A, w, DELTA, tol=TOL, max_iter=EAGER_MAX_ITER)
                return y

            impls = {
                "probreg": (lambda: probreg.huber_fuse(v, A, w, DELTA, tol=TOL).y, ref),
                "eager_reference": (eager, ref),
                "eager_mm20": (lambda: reference.huber_fuse_mm_reference(v, A, w, DELTA, iterations=20)[0], ref),
                "authors": (lambda: reference.huber_fuse_authors(v, A, DELTA), ref_unweighted),
                "torch_newton": (lambda: reference.huber_fuse(v, A, w, DELTA, tol=TOL)[0], ref),
            }
            if batch > TORCH_NEWTON_MAX_BATCH["cuda" if device.startswith("cuda") else "cpu"]:
                del impls["torch_newton"]
            for impl, (fn, target) in impls.items():
                slow = impl != "probreg"
                last = {}

                def timed(fn=fn, last=last):
                    last["y"] = fn()

                # slow peers: no warm-up (nothing to warm in eager PyTorch), 2 timed runs
                ms = time_ms(timed, device, warmup=0 if slow else 3, reps=2 if slow else 20, budget_s=20.0)
                err = _scaled_error(last["y"], target)
                if impl == "probreg":
                    its = probreg.huber_fuse(v, A, w, DELTA, tol=TOL).iterations.double().median().item()
                elif impl == "torch_newton":
                    its = reference.huber_fuse(v, A, w, DELTA, tol=TOL)[2].double().median().item()
                elif impl == "eager_reference":
                    its = float(steps["eager_reference"])
                else:
                    its = 20.0
                rows.append(_row(n, batch, impl, "forward", ms, err, its))
            grad_y = torch.ones(batch, D, device=device)

            def fwd_bwd():
                vv, AA, ww = (t.detach().requires_grad_(True) for t in (v, A, w))
                y = probreg.huber_fuse(vv, AA, ww, DELTA, tol=TOL, damping=0.1).y
                return torch.autograd.grad(y, (vv, AA, ww), grad_y)

            ms = time_ms(fwd_bwd, device, warmup=3, reps=20)
            rows.append(_row(n, batch, "probreg", "forward+backward", ms, float("nan"), float("nan")))
    return rows


def _row(n, batch, impl, mode, ms, err, its):
    return {
        "op": "huber_fuse",
        "d": D,
        "n": n,
        "batch": batch,
        "dtype": "float32",
        "impl": impl,
        "mode": mode,
        "ms": ms,
        "GB/s": bytes_moved(n, batch, mode) / (ms * 1e-3) / 1e9,
        "max_err": err,
        "median_iterations": its,
    }


GROUP_KEYS = ["op", "d", "n", "batch", "dtype", "mode"]
COLUMNS = ["op", "d", "n", "batch", "mode", "impl", "ms", "GB/s", "frac_of_copy", "speedup_vs_eager", "max_err",
           "median_iterations"]


def summary(rows):
    """Headline: probreg vs the eager peers at the largest n = 2 batch."""
    sel = [r for r in rows if r["n"] == 2 and r["mode"] == "forward"]
    if not sel:
        return ""
    batch = max(r["batch"] for r in sel)
    by = {r["impl"]: r for r in sel if r["batch"] == batch}
    mine = by["probreg"]
    lines = [f"Headline (n=2, d=2, float32, batch={batch}, forward):"]
    lines.append(f"- probreg {mine['ms']:.1f} ms, max_err {mine['max_err']:.1e}, median {mine['median_iterations']:.0f} iterations")
    for impl in ("eager_reference", "eager_mm20", "torch_newton", "authors"):
        if impl in by:
            r = by[impl]
            lines.append(f"- {impl}: {r['ms']:.1f} ms ({r['ms'] / mine['ms']:.1f}x probreg's time), "
                         f"max_err {r['max_err']:.1e}, {r['median_iterations']:.0f} iterations")
    return "\n".join(lines)
