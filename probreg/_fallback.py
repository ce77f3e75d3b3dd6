"""Kernels of the d > 3 operators (`probreg::_<op>_fallback`, schemas in csrc/probreg.cpp):
plain torch ops on any device (torch.linalg.eigh, probreg/_spectral.py, _nll_torch.py,
_fuse_torch.py), with the fused ops' arguments, results and semantics for any d >= 1.
Their autograd (first and second order, forward mode) and vmap rules are the fused ops'
own (probreg/_autograd.py); their fake kernels are in probreg/_fake.py.

The argument checks below are shared by these kernels and their fake kernels (shape
logic only, torch._check, so they also hold for symbolic shapes).

Compute types as the fused kernels: float64 and float32 inputs compute in float64, half
types in float32; results in the input dtype (the NLL loss in float32 for half inputs).
"""
from __future__ import annotations

import math
import sys

import torch

from . import _fuse_torch, _nll_torch
from . import _validation as check
from . import _spectral as spectral

_FAMILIES = 4
_COVARIANCES = 3


# ---------------------------------------------------------------- argument checks
def _check(cond, op: str, message) -> None:
    torch._check(cond, lambda: f"probreg.{op}: {message() if callable(message) else message}")


def check_floating(t: torch.Tensor, op: str, name: str) -> None:
    _check(t.is_floating_point(), op, lambda: f"{name} must be a floating-point tensor, got {t.dtype}")


def check_same_device(a: torch.Tensor, b: torch.Tensor, op: str, name_a: str, name_b: str) -> None:
    _check(a.device == b.device, op, lambda: f"{name_a} is on {a.device} but {name_b} is on {b.device}")


def check_companion(t: torch.Tensor, ref: torch.Tensor, op: str, name: str, ref_name: str) -> None:
    """t accompanies ref: floating point, ref's dtype, ref's device (the fused kernels' rule)."""
    check_floating(t, op, name)
    _check(t.dtype == ref.dtype, op, lambda: f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")
    check_same_device(t, ref, op, name, ref_name)


def check_square(B: torch.Tensor, op: str, name: str = "B") -> None:
    check_floating(B, op, name)
    _check(B.dim() >= 2 and B.shape[-1] == B.shape[-2], op, lambda: f"{name} must have shape (..., d, d), got {tuple(B.shape)}")


def check_theta(theta: float, op: str) -> None:
    # Normal: the kernels form 1/theta (csrc/checks.h check_theta).
    _check(sys.float_info.min <= theta < math.inf, op,
           lambda: f"theta must be a finite positive normal number (>= {sys.float_info.min!r}), got {theta}")


def check_same_shape(a: torch.Tensor, b: torch.Tensor, op: str, name_a: str, name_b: str) -> None:
    _check(a.shape == b.shape, op, lambda: f"{name_a} {tuple(a.shape)} must have the shape of {name_b} {tuple(b.shape)}")


def check_symeig_backward(grad_l, grad_V, l, V, op: str) -> None:
    check_square(V, op, "eigenvectors")
    check_same_shape(grad_V, V, op, "grad_eigenvectors", "eigenvectors")
    _check(l.shape == V.shape[:-1], op, lambda: f"eigenvalues must have shape (..., d) for eigenvectors {tuple(V.shape)}, got {tuple(l.shape)}")
    check_same_shape(grad_l, l, op, "grad_eigenvalues", "eigenvalues")
    for name, t in (("grad_eigenvalues", grad_l), ("grad_eigenvectors", grad_V), ("eigenvalues", l)):
        check_companion(t, V, op, name, "eigenvectors")


def check_spd_remap_backward(grad_A, B, theta, op: str) -> None:
    check_square(B, op)
    check_companion(grad_A, B, op, "grad_A", "B")
    check_same_shape(grad_A, B, op, "grad_A", "B")
    check_theta(theta, op)


def check_nll(pred, target, delta, theta, family, covariance, op: str) -> None:
    check_floating(pred, op, "pred")
    check_companion(target, pred, op, "target", "pred")
    _check(0 <= delta < math.inf, op, lambda: f"delta must be a finite number >= 0, got {delta}")
    check_theta(theta, op)
    _check(0 <= family < _FAMILIES, op, lambda: f"unknown family code {family}")
    _check(0 <= covariance < _COVARIANCES, op, lambda: f"unknown covariance code {covariance}")
    _check(target.dim() >= 1 and target.shape[-1] >= 1, op,
           lambda: f"target must have shape (..., d) with d >= 1, got {tuple(target.shape)}")
    d = target.shape[-1]
    _check(pred.dim() == target.dim() and pred.shape[:-1] == target.shape[:-1], op,
           lambda: f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same batch shape")
    width = d + (d * (d + 1) // 2 if covariance == 2 else (d if covariance == 1 else 0))
    _check(pred.shape[-1] == width, op,
           lambda: f"pred must have width {width} for d = {d} (target {tuple(target.shape)}), got {tuple(pred.shape)}")


def check_nll_backward(grad_loss, pred, target, delta, theta, family, covariance, op: str) -> None:
    check_nll(pred, target, delta, theta, family, covariance, op)
    check_floating(grad_loss, op, "grad_loss")
    loss_dtype = torch.float32 if pred.dtype in (torch.float16, torch.bfloat16) else pred.dtype
    _check(grad_loss.dtype == loss_dtype, op,
           lambda: f"grad_loss must have the loss dtype {loss_dtype} (pred has dtype {pred.dtype}), got {grad_loss.dtype}")
    check_same_device(grad_loss, pred, op, "grad_loss", "pred")
    _check(grad_loss.shape == target.shape[:-1], op,
           lambda: f"grad_loss must have the batch shape {tuple(target.shape[:-1])}, got {tuple(grad_loss.shape)}")


def check_fuse(v, A, weight, init, op: str):
    """-> (batch, n, d)."""
    check_floating(v, op, "v")
    _check(v.dim() >= 2 and v.shape[-1] >= 1, op, lambda: f"v must have shape (..., n, d) with d >= 1, got {tuple(v.shape)}")
    batch, n, d = v.shape[:-2], v.shape[-2], v.shape[-1]
    for name, t, shape in (("A", A, (*batch, n, d, d)), ("weight", weight, (*batch, n))):
        check_companion(t, v, op, name, "v")
        _check(t.shape == shape, op, lambda: f"{name} must have shape {shape} to match v {tuple(v.shape)}, got {tuple(t.shape)}")
    if init is not None:
        check_companion(init, v, op, "init", "v")
        _check(init.shape == (*batch, d), op,
               lambda: f"init must have shape {(*batch, d)} to match v {tuple(v.shape)}, got {tuple(init.shape)}")
    return batch, n, d


def check_fuse_delta_damping(delta, damping, op: str) -> None:
    _check(delta > 0, op, lambda: f"delta must be > 0 (h_delta is identically zero at delta = 0), got {delta}")
    _check(0 <= damping < math.inf, op, lambda: f"damping must be a finite number >= 0, got {damping}")


def check_fuse_scalars(delta, max_iter, tol, damping, op: str) -> None:
    check_fuse_delta_damping(delta, damping, op)
    _check(0 <= max_iter <= 2**30, op, lambda: f"max_iter must be in [0, 2^30], got {max_iter}")
    _check(0 <= tol < math.inf, op, lambda: f"tol must be a finite number >= 0, got {tol}")


def check_fuse_backward(grad_y, y, v, A, weight, delta, damping, op: str) -> None:
    batch, _, d = check_fuse(v, A, weight, None, op)
    check_fuse_delta_damping(delta, damping, op)
    for name, t in (("y", y), ("grad_y", grad_y)):
        check_companion(t, v, op, name, "v")
        _check(t.shape == (*batch, d), op,
               lambda: f"{name} must have shape {(*batch, d)} to match v {tuple(v.shape)}, got {tuple(t.shape)}")


# ---------------------------------------------------------------- kernels
def _compute(*tensors):
    dtype = spectral.compute_dtype(tensors[0].dtype)
    return [t.to(dtype) for t in tensors]


@torch.library.impl("probreg::_symeig_fallback", "CompositeExplicitAutograd")
def _symeig_fallback(B):
    check_square(B, "_symeig_fallback")
    (Bc,) = _compute(B)
    l, V = torch.linalg.eigh(spectral.sym(Bc))
    return l.to(B.dtype).contiguous(), V.to(B.dtype).contiguous()  # eigh's V is column-major


@torch.library.impl("probreg::_symeig_fallback_backward", "CompositeExplicitAutograd")
def _symeig_fallback_backward(grad_eigenvalues, grad_eigenvectors, eigenvalues, eigenvectors):
    check_symeig_backward(grad_eigenvalues, grad_eigenvectors, eigenvalues, eigenvectors, "_symeig_fallback_backward")
    V, gl, gV, l = _compute(eigenvectors, grad_eigenvalues, grad_eigenvectors, eigenvalues)
    return spectral.symeig_backward(gl, gV, l, V).to(eigenvectors.dtype)


@torch.library.impl("probreg::_spd_remap_fallback", "CompositeExplicitAutograd")
def _spd_remap_fallback(B, theta):
    check_square(B, "_spd_remap_fallback")
    check_theta(theta, "_spd_remap_fallback")
    (Bc,) = _compute(B)
    l, V = torch.linalg.eigh(spectral.sym(Bc))
    return spectral.from_eigenbasis(V, torch.diag_embed(spectral.remap_g(l, theta))).to(B.dtype)


@torch.library.impl("probreg::_spd_remap_fallback_backward", "CompositeExplicitAutograd")
def _spd_remap_fallback_backward(grad_A, B, theta):
    check_spd_remap_backward(grad_A, B, theta, "_spd_remap_fallback_backward")
    Bc, G = _compute(B, grad_A)
    l, V = torch.linalg.eigh(spectral.sym(Bc))
    return spectral.daleckii_krein(V, spectral.remap_first_dd(l, theta), G).to(B.dtype)


@torch.library.impl("probreg::_huber_nll_fallback", "CompositeExplicitAutograd")
def _huber_nll_fallback(pred, target, delta, theta, family, covariance, mu_parameterization):
    check_nll(pred, target, delta, theta, family, covariance, "_huber_nll_fallback")
    return _nll_torch.nll_loss(pred, target, delta, theta, family, covariance, mu_parameterization)


@torch.library.impl("probreg::_huber_nll_fallback_backward", "CompositeExplicitAutograd")
def _huber_nll_fallback_backward(grad_loss, pred, target, delta, theta, family, covariance, mu_parameterization,
                                 need_grad_target):
    check_nll_backward(grad_loss, pred, target, delta, theta, family, covariance, "_huber_nll_fallback_backward")
    return _nll_torch.nll_backward(grad_loss, pred, target, delta, theta, family, covariance, mu_parameterization,
                                   need_grad_target)


@torch.library.impl("probreg::_huber_fuse_fallback", "CompositeExplicitAutograd")
def _huber_fuse_fallback(v, A, weight, init, delta, max_iter, tol, damping):
    op = "_huber_fuse_fallback"
    check_fuse(v, A, weight, init, op)
    check_fuse_scalars(delta, max_iter, tol, damping, op)
    # The fused kernels' weight rule: a negative weight is an error on CPU, NaN elsewhere.
    weight = check.nonnegative_weight(weight, "weight", "probreg." + op)
    vc, Ac, wc = _compute(v, A, weight)
    y, hessian, iterations, converged = _fuse_torch.huber_fuse_solve(
        vc, Ac, wc, delta, max_iter, tol, None if init is None else init.to(vc.dtype))
    y = y.to(v.dtype)
    # converged only where y fits the output dtype, as in the fused kernels
    return y, hessian.to(v.dtype), iterations, converged & torch.isfinite(y).all(-1)


@torch.library.impl("probreg::_huber_fuse_fallback_backward", "CompositeExplicitAutograd")
def _huber_fuse_fallback_backward(grad_y, y, v, A, weight, delta, damping):
    check_fuse_backward(grad_y, y, v, A, weight, delta, damping, "_huber_fuse_fallback_backward")
    vc, gy, yc, Ac, wc = _compute(v, grad_y, y, A, weight)
    grads = _fuse_torch.fuse_backward(gy, yc, vc, Ac, wc, delta, damping)
    return tuple(g.to(v.dtype) for g in grads)
