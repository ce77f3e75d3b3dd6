"""Autograd formulas of the probreg operators. Each backward is an operator of its own
(`probreg::_<op>_backward`), so torch.compile(fullgraph=True) and opcheck see through it."""
from __future__ import annotations

import torch

ops = torch.ops.probreg


# ---------------------------------------------------------------- symeig
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
def _spd_remap_setup_context(ctx, inputs, output):
    B, theta = inputs
    ctx.save_for_backward(B)
    ctx.theta = theta


def _spd_remap_backward(ctx, grad_A):
    (B,) = ctx.saved_tensors
    return ops._spd_remap_backward(grad_A, B, ctx.theta), None


torch.library.register_autograd("probreg::spd_remap", _spd_remap_backward, setup_context=_spd_remap_setup_context)


# ---------------------------------------------------------------- spd_from_raw
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


# ---------------------------------------------------------------- huber_fuse
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
