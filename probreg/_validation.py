"""Argument validation shared by every public probreg function.

One message format, always naming the function and the argument:
    "probreg.huber_fuse: max_iter must be an int in [0, 2^30], got True"
Scalar checks accept what a user passes for a number (Python, numpy and torch.compile
symbolic numbers: numbers.Real / numbers.Integral, torch.SymFloat / torch.SymInt) and
reject bool, complex, strings, tensors and None, with a ValueError (a wrong type and a
wrong value of a scalar argument read the same); a non-tensor or a non-floating tensor
where a tensor is expected is a TypeError. They use comparisons only (no
math.isfinite, no float() of a symbolic value), so they also run inside
torch.compile(fullgraph=True, dynamic=True), where a float argument may be symbolic.

Non-negative weights (the package-wide rule, README "Errors and guarantees"): a negative
weight is an error wherever checking it costs nothing (a CPU tensor in eager mode); where
the check would need a device-to-host synchronisation (CUDA) or where the values are not
known (inside torch.compile or a torch.func transform), the affected result is NaN
instead. A NaN weight makes its own item NaN.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional

import numpy as np
import torch

_INF = math.inf


def _is_real(value) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, (numbers.Real, torch.SymFloat, torch.SymInt))


def _is_integer(value) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, (numbers.Integral, torch.SymInt))


def _as_number(value):
    """A concrete number as a Python float (numpy scalars included); symbolic values unchanged."""
    if isinstance(value, (torch.SymFloat, torch.SymInt)):
        return value
    return float(value)


def _fail(op: str, name: str, what: str, value, exc=ValueError):
    if torch.compiler.is_compiling():  # torch.compile cannot format a symbolic value into a string
        raise exc(op + ": " + name + " must be " + what)
    raise exc(f"{op}: {name} must be {what}, got {value!r}")


def real(value, name: str, op: str, what: str, *, low=None, low_open: bool = False, high=None,
         high_open: bool = False):
    """A real number in the given range (NaN always fails: every comparison with it is
    False); `what` describes the range in the message. Returns it as a float (or the
    symbolic value under torch.compile)."""
    if not _is_real(value):
        _fail(op, name, what, value)
    value = _as_number(value)  # numpy scalars as Python floats: no comparison in float32 against a wider bound
    ok = True
    if low is not None:
        ok = (value > low) if low_open else (value >= low)
    if ok and high is not None:
        ok = (value < high) if high_open else (value <= high)
    if not ok:
        _fail(op, name, what, value)
    return value


def positive_finite(value, name: str, op: str, what: str = "a finite real number > 0"):
    """0 < value < inf (theta)."""
    return real(value, name, op, what, low=0.0, low_open=True, high=_INF, high_open=True)


def nonnegative_finite(value, name: str, op: str, what: str = "a finite real number >= 0"):
    """0 <= value < inf (tol, damping, rcond, the NLL's delta)."""
    return real(value, name, op, what, low=0.0, high=_INF, high_open=True)


def positive(value, name: str, op: str, what: str = "a real number > 0 (+inf allowed)"):
    """0 < value <= inf (the fusion delta: +inf is Gaussian fusion)."""
    return real(value, name, op, what, low=0.0, low_open=True)


def nonnegative(value, name: str, op: str, what: str = "a real number >= 0 (+inf allowed)"):
    """0 <= value <= inf (the normalisers' delta)."""
    return real(value, name, op, what, low=0.0)


def integer(value, name: str, op: str, low: int = 0, high: Optional[int] = None, high_text: Optional[str] = None):
    """An integer (not bool) in [low, high]. Returns it as an int (symbolic under compile)."""
    what = f"an int >= {low}" if high is None else f"an int in [{low}, {high_text or high}]"
    if not _is_integer(value):
        _fail(op, name, what, value)
    if value < low or (high is not None and value > high):
        _fail(op, name, what, value)
    return value if isinstance(value, torch.SymInt) else int(value)


def boolean(value, name: str, op: str) -> bool:
    """True or False (Python or numpy bool; not 0/1 or a string)."""
    if not isinstance(value, (bool, np.bool_)):
        _fail(op, name, "a bool", value)
    return bool(value)


def choice(value, name: str, op: str, options: Iterable[str]) -> str:
    """One of the option strings (unhashable or non-string values give the same clear error)."""
    options = tuple(options)
    if not (isinstance(value, str) and value in options):
        _fail(op, name, f"one of {options}", value)
    return value


def tensor(x, name: str, op: str, *, floating: bool = True, min_dim: int = 0, shape_text: Optional[str] = None):
    """x is a torch.Tensor; floating: float64/32/16 or bfloat16 (not complex, int or bool);
    at least min_dim dimensions (shape_text describes the expected shape)."""
    if not isinstance(x, torch.Tensor):
        _fail(op, name, f"a torch.Tensor{'' if shape_text is None else ' of shape ' + shape_text}",
              type(x).__name__, TypeError)
    if floating and not x.is_floating_point():
        raise TypeError(
            f"{op}: {name} must be a floating-point tensor (float64, float32, float16 or bfloat16), got {x.dtype}"
        )
    if x.dim() < min_dim:
        raise ValueError(
            f"{op}: {name} must have shape {shape_text or f'with at least {min_dim} dimensions'}, "
            f"got {tuple(x.shape)}"
        )
    return x


def same_device(tensors, op: str) -> None:
    """tensors: (name, tensor) pairs, all on the first one's device."""
    first_name, first = tensors[0]
    for name, t in tensors[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{op}: {name} is on {t.device} but {first_name} is on {first.device}; they must be on the same device"
            )


def _values_known(t: torch.Tensor) -> bool:
    """Whether t's values can be read on the host for free: a concrete CPU tensor outside
    torch.compile tracing and torch.func transforms."""
    if t.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(t):
        return False
    from torch._subclasses.fake_tensor import is_fake

    return not is_fake(t)


def nonnegative_tensor(t: torch.Tensor, name: str, op: str, note: str = "") -> torch.Tensor:
    """The package-wide rule for tensors whose values must be >= 0 (weights, a tensor
    delta): raises ValueError for a negative value where the check is free (module
    docstring); elsewhere returns t with negative entries replaced by NaN, so that the
    affected results are NaN."""
    if _values_known(t):
        if t.numel() and bool((t < 0).any()):
            raise ValueError(f"{op}: {name} must be >= 0{note}, got a negative value")
        return t
    return torch.where(t < 0, torch.full_like(t, math.nan), t)


def nonnegative_weight(weight: torch.Tensor, name: str, op: str) -> torch.Tensor:
    """nonnegative_tensor for weights (0 removes an item)."""
    return nonnegative_tensor(weight, name, op, " (0 removes an item)")
