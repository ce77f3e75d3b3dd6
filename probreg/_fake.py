"""Fake (meta) kernels of every probreg operator, for torch.compile and opcheck: output
shapes and dtypes only, with the same argument checks as the real kernels
(csrc/checks.h, csrc/spd_args.h, csrc/nll_checks.h, csrc/fuse_checks.h): every tensor's
dtype, device and shape against the others, messages naming the argument. Shapes may be
symbolic under torch.compile(dynamic=True): equalities go through torch._check."""
from __future__ import annotations

import math
import sys

import torch
from torch.fx.experimental.symbolic_shapes import sym_eq

_FLOATING = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_HALF = (torch.float16, torch.bfloat16)
_MAX_ITER_LIMIT = 2**30
# csrc/include/probreg/huber.h NllFamily / NllCovariance codes.
_FAMILIES = 4
_COVARIANCE_FULL, _COVARIANCE_DIAGONAL = 2, 1


# ---------------------------------------------------------------- shared checks
def _check_floating(t, op, name):
    torch._check(
        t.dtype in _FLOATING,
        lambda: f"{op}: {name} must be a floating-point tensor (float64, float32, float16 or bfloat16), got {t.dtype}",
    )


def _check_companion(t, ref, op, name, ref_name):
    """t accompanies ref: floating, same dtype, same device (csrc/checks.h check_companion)."""
    _check_floating(t, op, name)
    torch._check(t.dtype == ref.dtype, lambda: f"{op}: {name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")
    torch._check(
        t.device == ref.device,
        lambda: f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; they must be on the same device",
    )


def _check_shape(t, expected, op, name, text, ref, ref_name):
    """t.shape == expected, which follows from ref's shape (named in the message)."""
    torch._check(
        sym_eq(tuple(t.shape), tuple(expected)),
        lambda: f"{op}: {name} must have shape {text} = {tuple(expected)} to match {ref_name} {tuple(ref.shape)}, "
        f"got {tuple(t.shape)}",
    )


def _check_square(B, op, name):
    """(..., d, d), d in {1, 2, 3}; returns d."""
    _check_floating(B, op, name)
    torch._check(B.dim() >= 2, lambda: f"{op}: {name} must have shape (..., d, d), got {tuple(B.shape)}")
    d = B.shape[-1]
    torch._check(d == B.shape[-2], lambda: f"{op}: {name} must have shape (..., d, d), got {tuple(B.shape)}")
    torch._check(
        (d >= 1) & (d <= 3),
        lambda: f"{op}: {name} must have shape (..., d, d) with d in {{1, 2, 3}} for the fused kernel, got {tuple(B.shape)}",
    )
    return d


def _check_packed(raw, op, name):
    """(..., P), P in {1, 3, 6}; returns d."""
    _check_floating(raw, op, name)
    torch._check(raw.dim() >= 1, lambda: f"{op}: {name} must have shape (..., P), got a 0-d tensor")
    P = raw.shape[-1]
    torch._check(
        (P == 1) | (P == 3) | (P == 6),
        lambda: f"{op}: {name} must have shape (..., P) with P = d(d+1)/2 in {{1, 3, 6}} (d = 1, 2, 3), got {tuple(raw.shape)}",
    )
    return 1 if P == 1 else (2 if P == 3 else 3)


def _in_range(x, low, high, low_open: bool, high_open: bool):
    """low < x < high (ends open or closed) as one bool or SymBool (x may be symbolic)."""
    return ((x > low) if low_open else (x >= low)) & ((x < high) if high_open else (x <= high))


def _check_theta(theta, op):
    torch._check(_in_range(theta, sys.float_info.min, math.inf, False, True),
                 lambda: f"{op}: theta must be a finite positive normal number (>= {sys.float_info.min!r}), got {theta}")


def _empty_like(t):
    return torch.empty_like(t, memory_format=torch.contiguous_format)


# ---------------------------------------------------------------- symeig
@torch.library.register_fake("probreg::symeig")
def _symeig_fake(B):
    _check_square(B, "probreg.symeig", "B")
    return B.new_empty(B.shape[:-1]), _empty_like(B)


@torch.library.register_fake("probreg::_symeig_backward")
def _symeig_backward_fake(grad_eigenvalues, grad_eigenvectors, eigenvalues, eigenvectors):
    op = "probreg._symeig_backward"
    _check_square(eigenvectors, op, "eigenvectors")
    for name, t in (("eigenvalues", eigenvalues), ("grad_eigenvalues", grad_eigenvalues),
                    ("grad_eigenvectors", grad_eigenvectors)):
        _check_companion(t, eigenvectors, op, name, "eigenvectors")
    V = eigenvectors
    _check_shape(eigenvalues, V.shape[:-1], op, "eigenvalues", "(..., d)", V, "eigenvectors")
    _check_shape(grad_eigenvalues, V.shape[:-1], op, "grad_eigenvalues", "(..., d)", V, "eigenvectors")
    _check_shape(grad_eigenvectors, V.shape, op, "grad_eigenvectors", "(..., d, d)", V, "eigenvectors")
    return _empty_like(eigenvectors)


# ---------------------------------------------------------------- spd_remap
@torch.library.register_fake("probreg::spd_remap")
def _spd_remap_fake(B, theta):
    _check_square(B, "probreg.spd_remap", "B")
    _check_theta(theta, "probreg.spd_remap")
    return _empty_like(B)


@torch.library.register_fake("probreg::_spd_remap_backward")
def _spd_remap_backward_fake(grad_A, B, theta):
    op = "probreg._spd_remap_backward"
    _check_square(B, op, "B")
    _check_companion(grad_A, B, op, "grad_A", "B")
    _check_shape(grad_A, B.shape, op, "grad_A", "(..., d, d)", B, "B")
    _check_theta(theta, op)
    return _empty_like(B)


# ---------------------------------------------------------------- spd_from_raw
@torch.library.register_fake("probreg::spd_from_raw")
def _spd_from_raw_fake(raw, theta):
    d = _check_packed(raw, "probreg.spd_from_raw", "raw")
    _check_theta(theta, "probreg.spd_from_raw")
    return raw.new_empty((*raw.shape[:-1], d, d))


@torch.library.register_fake("probreg::_spd_from_raw_backward")
def _spd_from_raw_backward_fake(grad_A, raw, theta):
    op = "probreg._spd_from_raw_backward"
    d = _check_packed(raw, op, "raw")
    _check_theta(theta, op)
    _check_companion(grad_A, raw, op, "grad_A", "raw")
    _check_shape(grad_A, (*raw.shape[:-1], d, d), op, "grad_A", "(..., d, d)", raw, "raw")
    return _empty_like(raw)


# ---------------------------------------------------------------- huber_nll
def _nll_loss_dtype(dtype: torch.dtype) -> torch.dtype:
    # float16/bfloat16 inputs give a float32 loss (csrc/nll_checks.h nll_loss_dtype).
    return torch.float32 if dtype in _HALF else dtype


def _check_nll(pred, target, delta, theta, family, covariance, op):
    """csrc/nll_checks.h check_nll_scalars + check_nll_inputs; returns d."""
    torch._check(_in_range(delta, 0, math.inf, False, True), lambda: f"{op}: delta must be a finite number >= 0, got {delta}")
    _check_theta(theta, op)
    torch._check(_in_range(family, 0, _FAMILIES, False, True),
                 lambda: f"{op}: family must be 0 (huber), 1 (gauss), 2 (laplace) or 3 (charbonnier), got {family}")
    torch._check(_in_range(covariance, 0, _COVARIANCE_FULL, False, False),
                 lambda: f"{op}: covariance must be 0 (identity), 1 (diagonal) or 2 (full), got {covariance}")
    _check_floating(pred, op, "pred")
    _check_companion(target, pred, op, "target", "pred")
    torch._check(target.dim() >= 1, lambda: f"{op}: target must have shape (..., d), got a 0-d tensor")
    d = target.shape[-1]
    torch._check(
        (d >= 1) & (d <= 3),
        lambda: f"{op}: target must have shape (..., d) with d in {{1, 2, 3}} for the fused kernel, got {tuple(target.shape)}",
    )
    width = d + d * (d + 1) // 2 if covariance == _COVARIANCE_FULL else (2 * d if covariance == _COVARIANCE_DIAGONAL else d)
    torch._check(
        (pred.dim() == target.dim()) and sym_eq(tuple(pred.shape[:-1]), tuple(target.shape[:-1])),
        lambda: f"{op}: pred (..., W) and target (..., d) must have the same batch shape, got pred "
        f"{tuple(pred.shape)} and target {tuple(target.shape)}",
    )
    torch._check(pred.shape[-1] == width,
                 lambda: f"{op}: pred must have width {width} for d = {d} (target {tuple(target.shape)}) and covariance "
                 f"{covariance}, got pred {tuple(pred.shape)}")
    return d


@torch.library.register_fake("probreg::huber_nll")
def _huber_nll_fake(pred, target, delta, theta, family, covariance, mu_parameterization):
    _check_nll(pred, target, delta, theta, family, covariance, "probreg.huber_nll")
    return pred.new_empty(target.shape[:-1], dtype=_nll_loss_dtype(pred.dtype))


@torch.library.register_fake("probreg::_huber_nll_backward")
def _huber_nll_backward_fake(grad_loss, pred, target, delta, theta, family, covariance, mu_parameterization,
                             need_grad_target):
    op = "probreg._huber_nll_backward"
    _check_nll(pred, target, delta, theta, family, covariance, op)
    _check_floating(grad_loss, op, "grad_loss")
    loss_dtype = _nll_loss_dtype(pred.dtype)
    torch._check(grad_loss.dtype == loss_dtype,
                 lambda: f"{op}: grad_loss must have the loss dtype {loss_dtype} (pred has dtype {pred.dtype}), got {grad_loss.dtype}")
    torch._check(
        grad_loss.device == pred.device,
        lambda: f"{op}: grad_loss is on {grad_loss.device} but pred is on {pred.device}; they must be on the same device",
    )
    _check_shape(grad_loss, target.shape[:-1], op, "grad_loss", "(...)", target, "target")
    return _nll_backward_results(pred, target, need_grad_target)


@torch.library.register_fake("probreg::_huber_nll_and_grad")
def _huber_nll_and_grad_fake(pred, target, delta, theta, family, covariance, mu_parameterization, need_grad_target,
                             grad_loss=1.0):
    _check_nll(pred, target, delta, theta, family, covariance, "probreg._huber_nll_and_grad")
    return (pred.new_empty(target.shape[:-1], dtype=_nll_loss_dtype(pred.dtype)),
            *_nll_backward_results(pred, target, need_grad_target))


def _nll_backward_results(pred, target, need_grad_target):
    """(grad_pred (..., W), grad_target (..., d), or an empty tensor without need_grad_target)."""
    return _empty_like(pred), (_empty_like(target) if need_grad_target else target.new_empty(0))


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
def _check_fuse(v, A, weight, init, delta, damping, op):
    """csrc/fuse_checks.h check_fuse_inputs + check_fuse_delta; returns (batch, n, d)."""
    _check_floating(v, op, "v")
    torch._check(v.dim() >= 2, lambda: f"{op}: v must have shape (..., n, d), got {tuple(v.shape)}")
    batch, n, d = tuple(v.shape[:-2]), v.shape[-2], v.shape[-1]
    torch._check(
        (d >= 1) & (d <= 3),
        lambda: f"{op}: v must have shape (..., n, d) with d in {{1, 2, 3}} for the fused kernel, got {tuple(v.shape)}",
    )
    _check_shape(A, (*batch, n, d, d), op, "A", "(..., n, d, d)", v, "v")
    _check_shape(weight, (*batch, n), op, "weight", "(..., n)", v, "v")
    _check_companion(A, v, op, "A", "v")
    _check_companion(weight, v, op, "weight", "v")
    if init is not None:
        _check_shape(init, (*batch, d), op, "init", "(..., d)", v, "v")
        _check_companion(init, v, op, "init", "v")
    torch._check(delta > 0, lambda: f"{op}: delta must be > 0 (h_delta is identically zero at delta = 0), got {delta}")
    torch._check(_in_range(damping, 0, math.inf, False, True), lambda: f"{op}: damping must be a finite number >= 0, got {damping}")
    return batch, n, d


def _fuse_results(v, batch, d):
    """(y (..., d), hessian (..., d, d), iterations int32 (...), converged bool (...))."""
    return (
        v.new_empty((*batch, d)),
        v.new_empty((*batch, d, d)),
        v.new_empty(batch, dtype=torch.int32),
        v.new_empty(batch, dtype=torch.bool),
    )


def _fuse_backward_results(v, A, weight):
    """(grad_v, grad_A, grad_weight) of the fuse backward operators."""
    return _empty_like(v), _empty_like(A), _empty_like(weight)


@torch.library.register_fake("probreg::huber_fuse")
def _huber_fuse_fake(v, A, weight, init, delta, max_iter, tol, damping):
    op = "probreg.huber_fuse"
    batch, n, d = _check_fuse(v, A, weight, init, delta, damping, op)
    torch._check(_in_range(max_iter, 0, _MAX_ITER_LIMIT, False, False), lambda: f"{op}: max_iter must be in [0, 2^30], got {max_iter}")
    torch._check(_in_range(tol, 0, math.inf, False, True), lambda: f"{op}: tol must be a finite number >= 0, got {tol}")
    return _fuse_results(v, batch, d)


@torch.library.register_fake("probreg::_huber_fuse_backward")
def _huber_fuse_backward_fake(grad_y, y, v, A, weight, delta, damping):
    op = "probreg._huber_fuse_backward"
    batch, n, d = _check_fuse(v, A, weight, None, delta, damping, op)
    _check_shape(y, (*batch, d), op, "y", "(..., d)", v, "v")
    _check_shape(grad_y, (*batch, d), op, "grad_y", "(..., d)", v, "v")
    _check_companion(y, v, op, "y", "v")
    _check_companion(grad_y, v, op, "grad_y", "v")
    return _fuse_backward_results(v, A, weight)


# ---------------------------------------------------------------- d > 3 (probreg/_fallback.py)
# Same results as the fused ops for any d >= 1; the argument checks are the real kernels' own
# (the fused fake kernels above reject d > 3).
from . import _fallback as fallback  # noqa: E402


@torch.library.register_fake("probreg::_symeig_fallback")
def _symeig_fallback_fake(B):
    fallback.check_square(B, "_symeig_fallback")
    return B.new_empty(B.shape[:-1]), _empty_like(B)


@torch.library.register_fake("probreg::_symeig_fallback_backward")
def _symeig_fallback_backward_fake(grad_eigenvalues, grad_eigenvectors, eigenvalues, eigenvectors):
    fallback.check_symeig_backward(grad_eigenvalues, grad_eigenvectors, eigenvalues, eigenvectors,
                                   "_symeig_fallback_backward")
    return _empty_like(eigenvectors)


@torch.library.register_fake("probreg::_spd_remap_fallback")
def _spd_remap_fallback_fake(B, theta):
    fallback.check_square(B, "_spd_remap_fallback")
    fallback.check_theta(theta, "_spd_remap_fallback")
    return _empty_like(B)


@torch.library.register_fake("probreg::_spd_remap_fallback_backward")
def _spd_remap_fallback_backward_fake(grad_A, B, theta):
    fallback.check_spd_remap_backward(grad_A, B, theta, "_spd_remap_fallback_backward")
    return _empty_like(B)


@torch.library.register_fake("probreg::_huber_nll_fallback")
def _huber_nll_fallback_fake(pred, target, delta, theta, family, covariance, mu_parameterization):
    fallback.check_nll(pred, target, delta, theta, family, covariance, "_huber_nll_fallback")
    return pred.new_empty(target.shape[:-1], dtype=_nll_loss_dtype(pred.dtype))


@torch.library.register_fake("probreg::_huber_nll_fallback_backward")
def _huber_nll_fallback_backward_fake(grad_loss, pred, target, delta, theta, family, covariance, mu_parameterization,
                                      need_grad_target):
    fallback.check_nll_backward(grad_loss, pred, target, delta, theta, family, covariance,
                                "_huber_nll_fallback_backward")
    return _nll_backward_results(pred, target, need_grad_target)


@torch.library.register_fake("probreg::_huber_fuse_fallback")
def _huber_fuse_fallback_fake(v, A, weight, init, delta, max_iter, tol, damping):
    batch, n, d = fallback.check_fuse(v, A, weight, init, "_huber_fuse_fallback")
    fallback.check_fuse_scalars(delta, max_iter, tol, damping, "_huber_fuse_fallback")
    return _fuse_results(v, batch, d)


@torch.library.register_fake("probreg::_huber_fuse_fallback_backward")
def _huber_fuse_fallback_backward_fake(grad_y, y, v, A, weight, delta, damping):
    fallback.check_fuse_backward(grad_y, y, v, A, weight, delta, damping, "_huber_fuse_fallback_backward")
    return _fuse_backward_results(v, A, weight)


# ---------------------------------------------------------------- second-order rules (probreg/_second_order.py)
from . import _second_order as second_order  # noqa: E402


@torch.library.register_fake("probreg::_spd_remap_second")
def _spd_remap_second_fake(B, G, E, theta):
    second_order.check_spd_remap_second(B, G, E, theta)
    return _empty_like(B)


@torch.library.register_fake("probreg::_huber_nll_hvp")
def _huber_nll_hvp_fake(grad_loss, pred, target, dpred, dtarget, delta, theta, family, covariance,
                        mu_parameterization, need_grad_target):
    second_order.check_huber_nll_hvp(grad_loss, pred, target, dpred, dtarget, delta, theta, family, covariance)
    return _nll_backward_results(pred, target, need_grad_target)
