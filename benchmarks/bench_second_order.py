"""The cost of second derivatives (issue 16): a Hessian-vector product against the
gradient, float64, over batch sizes.

    gradient       loss.backward()                                   (first order: fused kernels)
    hvp_reverse    g = grad(loss, create_graph=True); grad(<g, u>)   (double backward)
    hvp_forward    torch.func.jvp(torch.func.grad(loss), u)           (forward-over-reverse,
                                                                       what torch.func.hessian runs)
for huber_nll (d = 2, 3, full covariance, Huber family, v parameterisation, w.r.t. pred)
and spd_from_raw (d = 2, 3; loss = sum(A * C), w.r.t. raw). probreg's second-order rules
run in plain torch ops (probreg/_second_order.py: divided differences, the NLL's
closed-form Hessian-vector product), the first order in the fused kernels.

Peer in the same run:
  eager_reference   torch.linalg.eigh + plain autograd, twice differentiated
                    (reference.huber_nll_naive / reference.spd_from_raw_naive; NaN
                    gradients at repeated eigenvalues, fine at these random inputs)
Accuracy: max relative difference of each Hessian-vector product from the eager
reference's (float64, random inputs: both are exact there).
"""
from __future__ import annotations

import torch

import probreg
from probreg import reference

from .common import max_rel_error, suite_sizes, time_ms

DELTA = 1.0
THETA = 1.0
GROUP_KEYS = ["op", "d", "batch", "mode"]
COLUMNS = ["op", "d", "batch", "mode", "impl", "ms", "x_gradient", "speedup_vs_eager", "max_diff_vs_eager"]


def _losses(op: str, d: int, batch: int, device: str):
    """(inputs x, direction u, {impl: loss(x)}) for the op."""
    gen = torch.Generator().manual_seed(batch + 10 * d)
    P = d * (d + 1) // 2
    if op == "huber_nll":
        x = torch.randn(batch, d + P, generator=gen, dtype=torch.float64).to(device)
        target = torch.randn(batch, d, generator=gen, dtype=torch.float64).to(device)
        losses = {
            "probreg": lambda p: probreg.huber_nll(p, target, DELTA, THETA, reduction="sum"),
            "eager_reference": lambda p: reference.huber_nll_naive(p, target, DELTA, THETA, reduction="sum"),
        }
    else:
        x = torch.randn(batch, P, generator=gen, dtype=torch.float64).to(device)
        C = torch.randn(batch, d, d, generator=gen, dtype=torch.float64).to(device)
        losses = {
            "probreg": lambda r: (probreg.spd_from_raw(r, THETA) * C).sum(),
            "eager_reference": lambda r: (reference.spd_from_raw_naive(r, THETA) * C).sum(),
        }
    u = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device)
    return x, u, losses


def _modes(loss, x, u):
    def gradient():
        xg = x.detach().requires_grad_(True)
        loss(xg).backward()
        return xg.grad

    def hvp_reverse():
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(xg), xg, create_graph=True)
        (h,) = torch.autograd.grad((g * u).sum(), xg)
        return h

    def hvp_forward():
        return torch.func.jvp(torch.func.grad(loss), (x,), (u,))[1]

    return {"gradient": gradient, "hvp_reverse": hvp_reverse, "hvp_forward": hvp_forward}


# Above this batch the eigh + autograd peer is skipped on CUDA (cuSOLVER's batched eigh of
# millions of tiny matrices takes minutes and adds nothing), as in the nll suite.
_EAGER_MAX_CUDA_BATCH = 2**18


def run(device: str, quick: bool = False):
    if device == "cpu":
        default_batches = [2**10] if quick else [2**10, 2**13]
    else:
        default_batches = [2**10, 2**16] if quick else [2**10, 2**14, 2**18, 2**20]
    batches, dims = suite_sizes(default_batches)
    rows = []
    for op in ("huber_nll", "spd_from_raw"):
        for d in dims:
            for batch in batches:
                x, u, losses = _losses(op, d, batch, device)
                if device != "cpu" and batch > _EAGER_MAX_CUDA_BATCH:
                    del losses["eager_reference"]
                results = {}
                group = len(rows)
                for impl, loss in losses.items():
                    for mode, fn in _modes(loss, x, u).items():
                        results[impl, mode] = fn()
                        rows.append({"op": op, "d": d, "batch": batch, "mode": mode, "impl": impl, "dtype": "float64",
                                     "ms": time_ms(fn, device, warmup=1, reps=7, budget_s=5.0)})
                for r in rows[group:]:
                    r["x_gradient"] = r["ms"] / next(q["ms"] for q in rows[group:] if q["impl"] == r["impl"]
                                                      and q["mode"] == "gradient")
                    if ("eager_reference", r["mode"]) in results:
                        r["max_diff_vs_eager"] = max_rel_error(results[r["impl"], r["mode"]],
                                                               results["eager_reference", r["mode"]])
    return rows


def summary(rows) -> str:
    """The second-order cost: probreg's Hessian-vector products against its own gradient, at
    the largest batch of each op and d."""
    lines = []
    for op in ("huber_nll", "spd_from_raw"):
        for d in (2, 3):
            sel = [r for r in rows if r["op"] == op and r["d"] == d and r["impl"] == "probreg"]
            if not sel:
                continue
            batch = max(r["batch"] for r in sel)
            pick = {r["mode"]: r for r in sel if r["batch"] == batch}
            parts = [f"{op} d={d} float64 batch={batch}: gradient {pick['gradient']['ms']:.2f} ms"]
            eager = {r["mode"]: r for r in rows if r["op"] == op and r["d"] == d and r["batch"] == batch
                     and r["impl"] == "eager_reference"}
            for mode in ("hvp_reverse", "hvp_forward"):
                r = pick[mode]
                peer = f"; eigh + autograd {eager[mode]['ms']:.2f} ms" if mode in eager else ""
                parts.append(f"{mode} {r['ms']:.2f} ms ({r['x_gradient']:.0f}x the gradient{peer})")
            lines.append("; ".join(parts))
    return "\n".join(lines)
