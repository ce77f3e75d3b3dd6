"""spd_from_raw (d = 2, 3): forward and forward+backward over batch sizes.

Peers in the same run: the eager reference (torch.linalg.eigh with the stable backward,
probreg.reference.spd_from_raw), the naive eager version (eigh + plain autograd), the
closed-form pure-PyTorch version (2x2: Sylvester; 3x3: trigonometric eigenvalues and
Newton's interpolation, probreg/closed_form_3x3.py) eager and under torch.compile, and
probreg, timed in alternation (common.time_interleaved_ms).
Accuracy: max relative error of the forward output against the float64 reference
computed from the same (float32-rounded) input.
"""
from __future__ import annotations

import functools
import math

import torch

import probreg
from probreg import reference

from .common import OVERRIDES, interleaved_forward_and_backward_rows, max_rel_error, suite_sizes

_CLOSED_FORMS = {2: reference.spd_from_raw_closed_form_2x2, 3: reference.spd_from_raw_closed_form_3x3}


@functools.lru_cache(maxsize=None)
def _closed_form_compiled(d: int):
    return torch.compile(_CLOSED_FORMS[d])


def _impls(d: int):
    return {
        "probreg": probreg.spd_from_raw,
        "eager_reference": reference.spd_from_raw,
        "eager_naive": reference.spd_from_raw_naive,
        "closed_form_eager": _CLOSED_FORMS[d],
        "closed_form_compiled": _closed_form_compiled(d),
    }


def bytes_moved(d: int, batch: int, mode: str, itemsize: int = 4) -> int:
    """Minimum bytes an implementation must move: forward reads raw (P) and writes A
    (d*d); backward reads grad_A (d*d) and raw (P) and writes grad_raw (P)."""
    P = d * (d + 1) // 2
    fwd = (P + d * d) * itemsize * batch
    bwd = (d * d + 2 * P) * itemsize * batch
    return fwd if mode == "forward" else fwd + bwd


def _forward_backward(fn, raw: torch.Tensor, theta: float, grad_A: torch.Tensor) -> torch.Tensor:
    r = raw.detach().requires_grad_(True)
    fn(r, theta).backward(grad_A)
    return r.grad


def run(device: str, quick: bool = False, theta: float = 1.0):
    rows = []
    if device == "cpu":
        batches = [2**10, 2**14] if quick else [2**10, 2**14, 2**17, 2**20]
    else:
        batches = [2**10, 2**16] if quick else [2**10, 2**14, 2**18, 2**20, 2**22, 2**24]
    batches, dims = suite_sizes(batches)
    for d in dims:
        P = d * (d + 1) // 2
        for batch in batches:
            gen = torch.Generator(device="cpu").manual_seed(batch + d)
            raw = torch.randn(batch, P, generator=gen).to(device)
            grad_A = torch.randn(batch, d, d, generator=gen).to(device)
            ref64 = reference.spd_from_raw(raw.double(), theta)
            impl_rows, forwards, forward_backwards = {}, {}, {}
            for impl, fn in _impls(d).items():
                if impl == "eager_naive" and device != "cpu" and batch > 2**20 and not OVERRIDES["batches"]:
                    continue  # cuSOLVER batched eigh on 2^22+ tiny matrices: minutes, adds nothing
                impl_rows[impl] = {"op": "spd_from_raw", "d": d, "batch": batch, "dtype": "float32", "impl": impl,
                                   "max_err_vs_float64": max_rel_error(fn(raw, theta), ref64)}
                forwards[impl] = functools.partial(fn, raw, theta)
                forward_backwards[impl] = functools.partial(_forward_backward, fn, raw, theta, grad_A)
            rows += interleaved_forward_and_backward_rows(impl_rows, forwards, forward_backwards, device,
                                                          lambda mode: bytes_moved(d, batch, mode))
    return rows


GROUP_KEYS = ["op", "d", "batch", "dtype", "mode"]
COLUMNS = ["op", "d", "batch", "mode", "impl", "ms", "GB/s", "frac_of_copy", "speedup_vs_eager",
           "speedup_vs_compiled", "max_err_vs_float64"]


def summary(rows):
    """The headline ratios of the issue's acceptance: largest batch, float32, d = 2."""
    lines = ["Headline (largest batch, float32, forward+backward):"]
    for d in (2, 3):
        sel = [r for r in rows if r["d"] == d and r["mode"] == "forward+backward"]
        if not sel:
            continue
        batch = max(r["batch"] for r in sel)
        mine = [r for r in sel if r["batch"] == batch and r["impl"] == "probreg"][0]
        text = f"- spd_from_raw d={d} batch={batch}: probreg {mine['ms']:.2f} ms, {mine['speedup_vs_eager']:.1f}x eager reference"
        if mine.get("speedup_vs_compiled") == mine.get("speedup_vs_compiled"):  # not NaN
            if "speedup_vs_compiled" in mine:
                text += f", {mine['speedup_vs_compiled']:.1f}x torch.compile'd closed form"
        lines.append(text + f", {mine['frac_of_copy'] * 100:.1f}% of copy bandwidth")
    return "\n".join(lines)
