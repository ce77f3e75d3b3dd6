"""huber_nll (d = 2, 3; full and diagonal covariance, Huber family, v parameterisation,
reduction="mean"): forward and forward+backward over batch sizes.

Peers in the same run:
  eager_reference       what a user writes by hand: torch.linalg.eigh + torch.logdet of
                        the reconstructed A + plain autograd (reference.huber_nll_naive;
                        diagonal: diag_embed + logdet)
  closed_form_eager     closed-form pure PyTorch (full: reference.huber_nll_closed_form_2x2
  closed_form_compiled  and _3x3; diagonal: reference.huber_nll_closed_form_diagonal),
                        eager and under torch.compile
  probreg               probreg.huber_nll (one fused kernel forward, one backward)
The peers of one row are timed in alternation (common.time_interleaved_ms).
Accuracy: max relative error of the per-target loss (reduction="none") against the
float64 reference (reference.huber_nll_reference, eigh) on the same float32 inputs.
"""
from __future__ import annotations

import functools

import torch

import probreg
from probreg import reference

from .common import OVERRIDES, interleaved_forward_and_backward_rows, max_rel_error, suite_sizes

DELTA = 1.0
THETA = 1.0


# Every (closed form, d, reduction, requires_grad, static/dynamic batch) combination is
# one dynamo compilation of the same function; past dynamo's recompile limit (default 8)
# it would silently run eagerly, so the limit is raised for this suite.
_RECOMPILE_LIMIT = 64


@functools.lru_cache(maxsize=None)
def _compiled(fn, d: int, reduction: str):
    return torch.compile(functools.partial(fn, reduction=reduction))


def _impls(d: int, covariance: str, reduction: str):
    """name -> fn(pred, target, delta, theta) with the given reduction."""
    impls = {
        "probreg": functools.partial(probreg.huber_nll, covariance=covariance, reduction=reduction),
        "eager_reference": functools.partial(reference.huber_nll_naive, covariance=covariance, reduction=reduction),
    }
    closed = None
    if covariance == "full" and d == 2:
        closed = reference.huber_nll_closed_form_2x2
    elif covariance == "full" and d == 3:
        closed = reference.huber_nll_closed_form_3x3
    elif covariance == "diagonal":
        closed = reference.huber_nll_closed_form_diagonal
    if closed is not None:
        impls["closed_form_eager"] = functools.partial(closed, reduction=reduction)
        impls["closed_form_compiled"] = _compiled(closed, d, reduction)
    return impls


def bytes_moved(d: int, width: int, batch: int, mode: str, itemsize: int = 4) -> int:
    """Minimum bytes: forward reads pred (W) and target (d) and writes the loss (1);
    backward reads grad_loss, pred, target and writes grad_pred (W) and grad_target (d)."""
    fwd = (width + d + 1) * itemsize * batch
    bwd = (1 + 2 * (width + d)) * itemsize * batch
    return fwd if mode == "forward" else fwd + bwd


def _inputs(d: int, covariance: str, batch: int, device: str):
    gen = torch.Generator(device="cpu").manual_seed(batch + 10 * d)
    width = probreg.nll.pred_width(d, covariance)
    pred = torch.randn(batch, width, generator=gen)
    target = torch.randn(batch, d, generator=gen)
    return pred.to(device), target.to(device)


def _forward_backward(fn, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = pred.detach().requires_grad_(True)
    fn(p, target, DELTA, THETA).backward()
    return p.grad


def run(device: str, quick: bool = False):
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _RECOMPILE_LIMIT)
    rows = []
    if device == "cpu":
        batches = [2**10, 2**14] if quick else [2**10, 2**14, 2**17, 2**20]
    else:
        batches = [2**10, 2**16] if quick else [2**10, 2**14, 2**18, 2**20, 2**22, 2**24]
    batches, dims = suite_sizes(batches)
    for covariance in OVERRIDES["covariances"] or ("full", "diagonal"):
        for d in dims:
            width = probreg.nll.pred_width(d, covariance)
            for batch in batches:
                pred, target = _inputs(d, covariance, batch, device)
                ref64 = reference.huber_nll_reference(pred.double(), target.double(), DELTA, THETA,
                                                      covariance=covariance, reduction="none")
                per_target = _impls(d, covariance, "none")
                impl_rows, forwards, forward_backwards = {}, {}, {}
                for impl, fn in _impls(d, covariance, "mean").items():
                    if impl == "eager_reference" and device != "cpu" and batch > 2**20 and not OVERRIDES["batches"]:
                        continue  # cuSOLVER batched eigh on 2^22+ tiny matrices: minutes, adds nothing
                    with torch.no_grad():
                        err = max_rel_error(per_target[impl](pred, target, DELTA, THETA), ref64)
                    impl_rows[impl] = {"op": "huber_nll", "covariance": covariance, "d": d, "batch": batch,
                                       "dtype": "float32", "impl": impl, "max_err_vs_float64": err}
                    forwards[impl] = functools.partial(fn, pred, target, DELTA, THETA)
                    forward_backwards[impl] = functools.partial(_forward_backward, fn, pred, target)
                rows += interleaved_forward_and_backward_rows(impl_rows, forwards, forward_backwards, device,
                                                              lambda mode: bytes_moved(d, width, batch, mode))
    return rows


def summary(rows) -> str:
    """The acceptance figures: full covariance, float32, forward+backward, largest batch."""
    lines = []
    for d in (2, 3):
        sel = [r for r in rows if r["covariance"] == "full" and r["d"] == d and r["mode"] == "forward+backward"]
        if not sel:
            continue
        batch = max(r["batch"] for r in sel)
        pick = {r["impl"]: r for r in sel if r["batch"] == batch}
        if "probreg" not in pick:
            continue
        mine = pick["probreg"]
        parts = [f"huber_nll d={d} full float32 batch={batch} forward+backward: probreg {mine['ms']:.2f} ms"]
        for peer in ("eager_reference", "closed_form_compiled"):
            if peer in pick:
                parts.append(f"{pick[peer]['ms'] / mine['ms']:.1f}x vs {peer} ({pick[peer]['ms']:.1f} ms)")
        if "frac_of_copy" in mine:
            parts.append(f"{mine['frac_of_copy'] * 100:.1f}% of copy bandwidth")
        lines.append("; ".join(parts))
    return "\n".join(lines) if lines else "huber_nll: no full-covariance forward+backward rows in this run"


GROUP_KEYS = ["op", "covariance", "d", "batch", "dtype", "mode"]
COLUMNS = [
    "op", "covariance", "d", "batch", "mode", "impl", "ms", "GB/s", "frac_of_copy",
    "speedup_vs_eager", "speedup_vs_compiled", "max_err_vs_float64",
]
