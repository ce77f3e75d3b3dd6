"""The second-order rules of the probreg operators: derivatives of the backward operators
(`_<op>_backward`, and of their d > 3 twins), used by their backward (double backward)
and jvp (forward-over-reverse, e.g. torch.func.hessian) rules in probreg/_autograd.py.
They run in plain torch ops, slower than the fused first-order kernels:

- spd_remap / spd_from_raw: d2F[G, E], the second-order Daleckii-Krein form with stable
  second divided differences of g (probreg/_spectral.py), exact at B = c I, repeated
  eigenvalues and eigenvalues at theta. Operator `probreg::_spd_remap_second`.
- huber_nll: the closed-form Hessian-vector product of the per-target loss
  (probreg/_nll_torch.py), every family x covariance x parameterisation. Operator
  `probreg::_huber_nll_hvp`.
  These are operators (kernels below, schemas in csrc/probreg.cpp) whose own derivatives
  raise at every autograd / functorch level: a third derivative through them would be
  inexact exactly where they are exact (their divided differences at ties).
- symeig: torch.func through the composite of its backward formula (_spectral.py); exact
  away from ties (symeig's backward is not gauge invariant at a tie, by nature, so neither
  is this). Differentiable again by autograd, under the same caveat.
- huber_fuse: when its backward operator is differentiated, its Autograd kernel runs the
  differentiable torch composite of the implicit-gradient formula with y an input
  (_fuse_torch.fuse_backward, probreg/_autograd.py) instead of the fused kernel, so
  autograd and torch.func differentiate that formula directly; the dependence through
  y = y*(theta) is the chain rule through huber_fuse's own rules. Differentiable again
  (exact wherever no residual sits exactly at delta).
"""
from __future__ import annotations

import torch

from . import _fallback as checks
from . import _nll_torch
from . import _spectral as spectral


def third_order_error(op: str) -> RuntimeError:
    return RuntimeError(
        f"probreg::{op}: third-order derivatives are not supported ({op} is already a second "
        "derivative of a probreg operator and is not differentiable again). Differentiate probreg "
        "operators at most twice (double backward, torch.func.hessian, jacfwd(jacrev)); for a "
        "higher order, take finite differences of the second derivative."
    )


def compute_args(*tensors):
    """The tensors (None kept) in the compute dtype of the first one."""
    dtype = spectral.compute_dtype(tensors[0].dtype)
    return [None if t is None else t.to(dtype) for t in tensors]


def zeros_if_none(t, like):
    return torch.zeros_like(like) if t is None else t


# ---------------------------------------------------------------- operators
def check_spd_remap_second(B, G, E, theta) -> None:
    """Argument checks of _spd_remap_second (its kernel and fake kernel)."""
    op = "_spd_remap_second"
    checks.check_square(B, op)
    checks.check_theta(theta, op)
    for name, t in (("G", G), ("E", E)):
        checks.check_floating(t, op, name)
        checks.check_same_shape(t, B, op, name, "B")
        checks.check_same_device(t, B, op, name, "B")


def check_huber_nll_hvp(grad_loss, pred, target, dpred, dtarget, delta, theta, family, covariance) -> None:
    """Argument checks of _huber_nll_hvp (its kernel and fake kernel)."""
    op = "_huber_nll_hvp"
    checks.check_nll_backward(grad_loss, pred, target, delta, theta, family, covariance, op)
    for name, t, like, like_name in (("dpred", dpred, pred, "pred"), ("dtarget", dtarget, target, "target")):
        checks.check_floating(t, op, name)
        checks.check_same_shape(t, like, op, name, like_name)
        checks.check_same_device(t, like, op, name, like_name)


@torch.library.impl("probreg::_spd_remap_second", "CompositeExplicitAutograd")
def _spd_remap_second(B, G, E, theta):
    check_spd_remap_second(B, G, E, theta)
    Bc, Gc, Ec = compute_args(B, G, E)
    l, V = spectral.decompose(Bc)
    return spectral.daleckii_krein_second(V, spectral.remap_second_dd(l, theta), Gc, Ec).to(B.dtype)


@torch.library.impl("probreg::_huber_nll_hvp", "CompositeExplicitAutograd")
def _huber_nll_hvp(grad_loss, pred, target, dpred, dtarget, delta, theta, family, covariance, mu_parameterization,
                   need_grad_target):
    check_huber_nll_hvp(grad_loss, pred, target, dpred, dtarget, delta, theta, family, covariance)
    return _nll_torch.nll_hessian_vector_product(grad_loss, pred, target, dpred, dtarget, delta, theta, family,
                                                 covariance, mu_parameterization, need_grad_target)


# ---------------------------------------------------------------- symeig
def symeig_backward_vjp(grad_l, grad_V, l, V, cotangent):
    """The vjp of _symeig_backward(grad_l, grad_V, l, V) -> 4 gradients (closed form)."""
    primals = (grad_l, grad_V, l, V)
    grads = spectral.symeig_backward_cotangent(*compute_args(*primals, cotangent))
    return tuple(g.to(p.dtype) for g, p in zip(grads, primals))


def symeig_backward_jvp(grad_l, grad_V, l, V, d_grad_l, d_grad_V, dl, dV):
    """The jvp of _symeig_backward(grad_l, grad_V, l, V) (closed form); None tangents are zero."""
    primals = (grad_l, grad_V, l, V)
    tangents = [zeros_if_none(t, p) for t, p in zip((d_grad_l, d_grad_V, dl, dV), primals)]
    return spectral.symeig_backward_tangent(*compute_args(*primals, *tangents)).to(V.dtype)
