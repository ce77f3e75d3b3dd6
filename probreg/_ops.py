"""Loads probreg._C (which registers the operators) and, for every operator, its fake
(meta) kernel and autograd formula. Backward passes are operators of their own
(`probreg::_<op>_backward`), so torch.compile(fullgraph=True) and opcheck see through them.
"""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (loading the library runs the TORCH_LIBRARY registrations)

ops = torch.ops.probreg


def _matrix_shape(raw: torch.Tensor) -> list:
    """(..., P) packed -> (..., d, d); P may be symbolic under torch.compile."""
    P = raw.shape[-1]
    torch._check(
        (P == 1) or (P == 3) or (P == 6),
        lambda: f"probreg: raw must have shape (..., P) with P in {{1, 3, 6}}, got {tuple(raw.shape)}",
    )
    d = 1 if P == 1 else (2 if P == 3 else 3)
    return [*raw.shape[:-1], d, d]


# ---------------------------------------------------------------- symeig
@torch.library.register_fake("probreg::symeig")
def _symeig_fake(B):
    return B.new_empty(B.shape[:-1]), torch.empty_like(B, memory_format=torch.contiguous_format)


@torch.library.register_fake("probreg::_symeig_backward")
def _symeig_backward_fake(grad_eigenvalues, grad_eigenvectors, eigenvalues, eigenvectors):
    return torch.empty_like(eigenvectors, memory_format=torch.contiguous_format)


def _symeig_setup_context(ctx, inputs, output):
    eigenvalues, eigenvectors = output
    ctx.save_for_backward(eigenvalues, eigenvectors)


def _symeig_backward(ctx, grad_eigenvalues, grad_eigenvectors):
    eigenvalues, eigenvectors = ctx.saved_tensors
    if grad_eigenvalues is None:
        grad_eigenvalues = torch.zeros_like(eigenvalues)
    if grad_eigenvectors is None:
        grad_eigenvectors = torch.zeros_like(eigenvectors)
    return ops._symeig_backward(grad_eigenvalues, grad_eigenvectors, eigenvalues, eigenvectors)


torch.library.register_autograd("probreg::symeig", _symeig_backward, setup_context=_symeig_setup_context)


# ---------------------------------------------------------------- spd_remap
@torch.library.register_fake("probreg::spd_remap")
def _spd_remap_fake(B, theta):
    return torch.empty_like(B, memory_format=torch.contiguous_format)


@torch.library.register_fake("probreg::_spd_remap_backward")
def _spd_remap_backward_fake(grad_A, B, theta):
    return torch.empty_like(B, memory_format=torch.contiguous_format)


def _spd_remap_setup_context(ctx, inputs, output):
    B, theta = inputs
    ctx.save_for_backward(B)
    ctx.theta = theta


def _spd_remap_backward(ctx, grad_A):
    (B,) = ctx.saved_tensors
    return ops._spd_remap_backward(grad_A, B, ctx.theta), None


torch.library.register_autograd("probreg::spd_remap", _spd_remap_backward, setup_context=_spd_remap_setup_context)


# ---------------------------------------------------------------- spd_from_raw
@torch.library.register_fake("probreg::spd_from_raw")
def _spd_from_raw_fake(raw, theta):
    return raw.new_empty(_matrix_shape(raw))


@torch.library.register_fake("probreg::_spd_from_raw_backward")
def _spd_from_raw_backward_fake(grad_A, raw, theta):
    return torch.empty_like(raw, memory_format=torch.contiguous_format)


def _spd_from_raw_setup_context(ctx, inputs, output):
    raw, theta = inputs
    ctx.save_for_backward(raw)
    ctx.theta = theta


def _spd_from_raw_backward(ctx, grad_A):
    (raw,) = ctx.saved_tensors
    return ops._spd_from_raw_backward(grad_A, raw, ctx.theta), None


torch.library.register_autograd(
    "probreg::spd_from_raw", _spd_from_raw_backward, setup_context=_spd_from_raw_setup_context
)


# ---------------------------------------------------------------- huber_nll
def _nll_loss_dtype(dtype: torch.dtype) -> torch.dtype:
    # float16/bfloat16 inputs give a float32 loss (csrc/nll_checks.h nll_loss_dtype).
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@torch.library.register_fake("probreg::huber_nll")
def _huber_nll_fake(pred, target, delta, theta, family, covariance, mu_parameterization):
    torch._check(
        pred.shape[:-1] == target.shape[:-1],
        lambda: f"probreg.huber_nll: pred {tuple(pred.shape)} and target {tuple(target.shape)} batch shapes differ",
    )
    return pred.new_empty(target.shape[:-1], dtype=_nll_loss_dtype(pred.dtype))


@torch.library.register_fake("probreg::_huber_nll_backward")
def _huber_nll_backward_fake(grad_loss, pred, target, delta, theta, family, covariance, mu_parameterization,
                             need_grad_target):
    grad_target = (
        torch.empty_like(target, memory_format=torch.contiguous_format) if need_grad_target else target.new_empty(0)
    )
    return torch.empty_like(pred, memory_format=torch.contiguous_format), grad_target


def _huber_nll_setup_context(ctx, inputs, output):
    pred, target, delta, theta, family, covariance, mu_parameterization = inputs
    ctx.save_for_backward(pred, target)
    ctx.scalars = (delta, theta, family, covariance, mu_parameterization)


def _huber_nll_backward(ctx, grad_loss):
    pred, target = ctx.saved_tensors
    need_grad_target = ctx.needs_input_grad[1]
    grad_pred, grad_target = ops._huber_nll_backward(grad_loss, pred, target, *ctx.scalars, need_grad_target)
    return (
        grad_pred if ctx.needs_input_grad[0] else None,
        grad_target if need_grad_target else None,
        None,
        None,
        None,
        None,
        None,
    )


torch.library.register_autograd("probreg::huber_nll", _huber_nll_backward, setup_context=_huber_nll_setup_context)


# ---------------------------------------------------------------- _log_normalizer
# Python kernel (no tensor inputs: one CompositeExplicitAutograd kernel serves every
# backend); the value comes from probreg.normalizer (cached float64 math).
@torch.library.impl("probreg::_log_normalizer", "CompositeExplicitAutograd")
def _log_normalizer_impl(d, family, delta):
    from .normalizer import log_normalizer

    return torch.tensor(log_normalizer(d, family, delta), dtype=torch.float64)


@torch.library.register_fake("probreg::_log_normalizer")
def _log_normalizer_fake(d, family, delta):
    return torch.empty((), dtype=torch.float64)
# ---------------------------------------------------------------- huber_fuse
@torch.library.register_fake("probreg::huber_fuse")
def _huber_fuse_fake(v, A, weight, init, delta, max_iter, tol, damping):
    torch._check(v.dim() >= 2, lambda: f"probreg.huber_fuse: v must have shape (..., n, d), got {tuple(v.shape)}")
    batch, n, d = v.shape[:-2], v.shape[-2], v.shape[-1]
    torch._check(1 <= d <= 3, lambda: f"probreg.huber_fuse: d must be in {{1, 2, 3}}, got {d}")
    torch._check(A.shape == (*batch, n, d, d), lambda: f"probreg.huber_fuse: A must have shape (..., n, d, d), got {tuple(A.shape)}")
    torch._check(weight.shape == (*batch, n), lambda: f"probreg.huber_fuse: weight must have shape (..., n), got {tuple(weight.shape)}")
    if init is not None:
        torch._check(init.shape == (*batch, d), lambda: f"probreg.huber_fuse: init must have shape (..., d), got {tuple(init.shape)}")
    return (
        v.new_empty((*batch, d)),
        v.new_empty((*batch, d, d)),
        v.new_empty(batch, dtype=torch.int32),
        v.new_empty(batch, dtype=torch.bool),
    )


@torch.library.register_fake("probreg::_huber_fuse_backward")
def _huber_fuse_backward_fake(grad_y, y, v, A, weight, delta, damping):
    return (
        torch.empty_like(v, memory_format=torch.contiguous_format),
        torch.empty_like(A, memory_format=torch.contiguous_format),
        torch.empty_like(weight, memory_format=torch.contiguous_format),
    )


def _huber_fuse_setup_context(ctx, inputs, output):
    v, A, weight, init, delta, max_iter, tol, damping = inputs
    y, hessian, iterations, converged = output
    ctx.save_for_backward(y, v, A, weight)
    ctx.delta = delta
    ctx.damping = damping
    # Only y is differentiable (the implicit gradient at y*); the Hessian output is not.
    ctx.mark_non_differentiable(hessian, iterations, converged)


def _huber_fuse_backward(ctx, grad_y, grad_hessian, grad_iterations, grad_converged):
    y, v, A, weight = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(y)
    grad_v, grad_A, grad_weight = ops._huber_fuse_backward(grad_y, y, v, A, weight, ctx.delta, ctx.damping)
    # y* does not depend on init (convex energy); delta, max_iter, tol, damping are floats/ints.
    return grad_v, grad_A, grad_weight, None, None, None, None, None


torch.library.register_autograd("probreg::huber_fuse", _huber_fuse_backward, setup_context=_huber_fuse_setup_context)
