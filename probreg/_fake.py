"""Fake (meta) kernels of every probreg operator, for torch.compile and opcheck: output
shapes and dtypes only, with the same argument checks as the real kernels."""
from __future__ import annotations

import torch


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


# ---------------------------------------------------------------- spd_remap
@torch.library.register_fake("probreg::spd_remap")
def _spd_remap_fake(B, theta):
    return torch.empty_like(B, memory_format=torch.contiguous_format)


@torch.library.register_fake("probreg::_spd_remap_backward")
def _spd_remap_backward_fake(grad_A, B, theta):
    return torch.empty_like(B, memory_format=torch.contiguous_format)


# ---------------------------------------------------------------- spd_from_raw
@torch.library.register_fake("probreg::spd_from_raw")
def _spd_from_raw_fake(raw, theta):
    return raw.new_empty(_matrix_shape(raw))


@torch.library.register_fake("probreg::_spd_from_raw_backward")
def _spd_from_raw_backward_fake(grad_A, raw, theta):
    return torch.empty_like(raw, memory_format=torch.contiguous_format)


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
def _fuse_results(v, batch, d):
    """(y (..., d), hessian (..., d, d), iterations int32 (...), converged bool (...))."""
    return (
        v.new_empty((*batch, d)),
        v.new_empty((*batch, d, d)),
        v.new_empty(batch, dtype=torch.int32),
        v.new_empty(batch, dtype=torch.bool),
    )


@torch.library.register_fake("probreg::huber_fuse")
def _huber_fuse_fake(v, A, weight, init, delta, max_iter, tol, damping):
    torch._check(v.dim() >= 2, lambda: f"probreg.huber_fuse: v must have shape (..., n, d), got {tuple(v.shape)}")
    batch, n, d = v.shape[:-2], v.shape[-2], v.shape[-1]
    torch._check(1 <= d <= 3, lambda: f"probreg.huber_fuse: d must be in {{1, 2, 3}}, got {d}")
    torch._check(A.shape == (*batch, n, d, d), lambda: f"probreg.huber_fuse: A must have shape (..., n, d, d), got {tuple(A.shape)}")
    torch._check(weight.shape == (*batch, n), lambda: f"probreg.huber_fuse: weight must have shape (..., n), got {tuple(weight.shape)}")
    if init is not None:
        torch._check(init.shape == (*batch, d), lambda: f"probreg.huber_fuse: init must have shape (..., d), got {tuple(init.shape)}")
    return _fuse_results(v, batch, d)


@torch.library.register_fake("probreg::_huber_fuse_backward")
def _huber_fuse_backward_fake(grad_y, y, v, A, weight, delta, damping):
    return (
        torch.empty_like(v, memory_format=torch.contiguous_format),
        torch.empty_like(A, memory_format=torch.contiguous_format),
        torch.empty_like(weight, memory_format=torch.contiguous_format),
    )


# ---------------------------------------------------------------- d > 3 (probreg/_fallback.py)
# Same results as the fused ops; the argument checks are the real kernels' own.
from . import _fallback as fallback  # noqa: E402


@torch.library.register_fake("probreg::_symeig_fallback")
def _symeig_fallback_fake(B):
    fallback.check_square(B, "_symeig_fallback")
    return _symeig_fake(B)


@torch.library.register_fake("probreg::_symeig_fallback_backward")
def _symeig_fallback_backward_fake(grad_eigenvalues, grad_eigenvectors, eigenvalues, eigenvectors):
    fallback.check_symeig_backward(grad_eigenvalues, grad_eigenvectors, eigenvalues, eigenvectors,
                                   "_symeig_fallback_backward")
    return _symeig_backward_fake(grad_eigenvalues, grad_eigenvectors, eigenvalues, eigenvectors)


@torch.library.register_fake("probreg::_spd_remap_fallback")
def _spd_remap_fallback_fake(B, theta):
    fallback.check_square(B, "_spd_remap_fallback")
    fallback.check_theta(theta, "_spd_remap_fallback")
    return _spd_remap_fake(B, theta)


@torch.library.register_fake("probreg::_spd_remap_fallback_backward")
def _spd_remap_fallback_backward_fake(grad_A, B, theta):
    op = "_spd_remap_fallback_backward"
    fallback.check_square(B, op)
    fallback.check_same_shape(grad_A, B, op, "grad_A", "B")
    fallback.check_theta(theta, op)
    return _spd_remap_backward_fake(grad_A, B, theta)


@torch.library.register_fake("probreg::_huber_nll_fallback")
def _huber_nll_fallback_fake(pred, target, delta, theta, family, covariance, mu_parameterization):
    fallback.check_nll(pred, target, delta, theta, family, covariance, "_huber_nll_fallback")
    return _huber_nll_fake(pred, target, delta, theta, family, covariance, mu_parameterization)


@torch.library.register_fake("probreg::_huber_nll_fallback_backward")
def _huber_nll_fallback_backward_fake(grad_loss, pred, target, delta, theta, family, covariance, mu_parameterization,
                                      need_grad_target):
    fallback.check_nll_backward(grad_loss, pred, target, delta, theta, family, covariance,
                                "_huber_nll_fallback_backward")
    return _huber_nll_backward_fake(grad_loss, pred, target, delta, theta, family, covariance, mu_parameterization,
                                    need_grad_target)


@torch.library.register_fake("probreg::_huber_fuse_fallback")
def _huber_fuse_fallback_fake(v, A, weight, init, delta, max_iter, tol, damping):
    batch, n, d = fallback.check_fuse(v, A, weight, init, "_huber_fuse_fallback")
    fallback.check_fuse_scalars(delta, max_iter, tol, damping, "_huber_fuse_fallback")
    return _fuse_results(v, batch, d)


@torch.library.register_fake("probreg::_huber_fuse_fallback_backward")
def _huber_fuse_fallback_backward_fake(grad_y, y, v, A, weight, delta, damping):
    fallback.check_fuse_backward(grad_y, y, v, A, weight, "_huber_fuse_fallback_backward")
    return _huber_fuse_backward_fake(grad_y, y, v, A, weight, delta, damping)


# ---------------------------------------------------------------- second-order rules (probreg/_second_order.py)
from . import _second_order as second_order  # noqa: E402


@torch.library.register_fake("probreg::_spd_remap_second")
def _spd_remap_second_fake(B, G, E, theta):
    second_order.check_spd_remap_second(B, G, E, theta)
    return torch.empty_like(B, memory_format=torch.contiguous_format)


@torch.library.register_fake("probreg::_huber_nll_hvp")
def _huber_nll_hvp_fake(grad_loss, pred, target, dpred, dtarget, delta, theta, family, covariance,
                        mu_parameterization, need_grad_target):
    second_order.check_huber_nll_hvp(grad_loss, pred, target, dpred, dtarget, delta, theta, family, covariance)
    return _huber_nll_backward_fake(grad_loss, pred, target, delta, theta, family, covariance, mu_parameterization,
                                    need_grad_target)

