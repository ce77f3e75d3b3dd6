"""Applying autograd.Functions at the current autograd level, as a built-in operator's
autograd kernel does (used by the Autograd kernels of probreg/_autograd.py and by the
second-order rules of probreg/_second_order.py, which run inside those kernels' backward
and jvp rules).

Inside an Autograd kernel the inputs are that level's plain tensors (functorch has already
unwrapped them), so functorch's Python-level handling of autograd.Function (which wraps the
Function once more and dispatches a higher-order operator) must be bypassed: the Function
records its node at this level only, and the operators its rules call are dispatched
through the remaining functorch levels like any operator.
"""
from __future__ import annotations

import contextlib
import threading

import torch
import torch.autograd.forward_ad as forward_ad
from torch._functorch.utils import enable_single_level_autograd_function


def needs_autograd(args) -> bool:
    """Whether autograd has anything to record: a functorch transform (grad, jvp, vmap of
    either) is active, a forward-AD dual level is open, or an input requires grad."""
    if torch._C._are_functorch_transforms_active():
        return True
    if forward_ad._current_level >= 0 and torch._C._is_fwd_grad_enabled():
        return True
    return torch.is_grad_enabled() and torch._C._any_requires_grad(*(a for a in args if isinstance(a, torch.Tensor)))


_modes = threading.local()


def apply(function, args):
    """function.apply(*args) at the current autograd level. The Function's forward must run
    inside `caller_grad_modes()`."""
    apply_here = super(torch.autograd.Function, function).apply
    stack = _modes.__dict__.setdefault("stack", [])
    stack.append((torch.is_grad_enabled(), torch._C._is_fwd_grad_enabled()))
    try:
        if torch._C._are_functorch_transforms_active():
            with enable_single_level_autograd_function():
                return apply_here(*args)
        return apply_here(*args)
    finally:
        stack.pop()


@contextlib.contextmanager
def caller_grad_modes():
    """Restore, inside a Function's forward, the grad and forward-grad modes of apply()'s
    caller. autograd.Function.apply turns both off around forward so that the forward is
    not recorded at this level; here this level's autograd keys are excluded instead
    (torch._C._AutoDispatchBelowAutograd), and the modes are restored so that the outer
    functorch levels (torch.func.hessian, jvp of grad, ...) record the forward exactly as
    they record a built-in operator's."""
    grad, fwd_grad = _modes.stack[-1]
    previous_fwd_grad = torch._C._is_fwd_grad_enabled()
    torch._C._set_fwd_grad_enabled(fwd_grad)
    try:
        with torch.set_grad_enabled(grad), torch._C._AutoDispatchBelowAutograd():
            yield
    finally:
        torch._C._set_fwd_grad_enabled(previous_fwd_grad)
