"""Fusion of several L2 multivariate Huber estimates of one target (paper app. E).

    y* = argmin_y E(y),   E(y) = sum_i w_i h_delta(||A_i y - v_i||)

per problem, for A_i any square matrices (a mirrored or affinely transformed prediction has
a non-symmetric A_i). The fused kernels (d in {1, 2, 3}) run a safeguarded Newton/MM solver
per problem (csrc/include/probreg/fuse.h) with a per-problem convergence test and no host
synchronisation (CUDA-graph capturable); d > 3 takes the pure-PyTorch operator
probreg::_huber_fuse_fallback (probreg/_fuse_torch.py: same algorithm, vectorised, one host
sync per iteration).

Gradients are implicit (papers/wibergian-learning.md eq. 9-10): at y*,
dy*/dtheta = -(H + damping I)^{-1} d(grad_y E)/dtheta with H the true Hessian of E. The
returned `hessian`, `iterations` and `converged` are not differentiable.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional, Tuple

import torch

from ._ops import ops
from .spd import spd_from_raw

__all__ = ["FuseResult", "huber_fuse", "fuse_predictions"]

_FUSED_MAX_DIM = 3


class FuseResult(NamedTuple):
    """Result of huber_fuse / fuse_predictions (batch shape (...) of the problems).

    y: (..., d) the fused estimate y* (input dtype). Differentiable (implicit gradient).
    hessian: (..., d, d) the true Hessian of E at y, i.e. the precision matrix of the
        Laplace approximation of the fused density (not differentiable).
    iterations: (...) int32, accepted solver steps.
    converged: (...) bool, whether the convergence test passed within max_iter.
    """

    y: torch.Tensor
    hessian: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor


def _check_tensor(x, name: str, min_dim: int, shape_text: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"probreg.huber_fuse: {name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"probreg.huber_fuse: {name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"probreg.huber_fuse: {name} must have shape {shape_text}, got {tuple(x.shape)}")


def _is_real(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, numbers.Real)


def _check_scalars(delta, max_iter, tol, damping) -> None:
    # Comparisons rather than math.isfinite: they also work on torch.compile's symbolic floats.
    if not (_is_real(delta) and delta > 0):  # NaN fails too; +inf is allowed
        raise ValueError(f"probreg.huber_fuse: delta must be > 0 (h_delta vanishes at delta = 0), got {delta!r}")
    if not (isinstance(max_iter, numbers.Integral) and not isinstance(max_iter, bool) and 0 <= max_iter <= 2**30):
        raise ValueError(f"probreg.huber_fuse: max_iter must be an int in [0, 2^30], got {max_iter!r}")
    if not (_is_real(tol) and 0 <= tol < math.inf):
        raise ValueError(f"probreg.huber_fuse: tol must be a finite number >= 0, got {tol!r}")
    if not (_is_real(damping) and 0 <= damping < math.inf):
        raise ValueError(f"probreg.huber_fuse: damping must be a finite number >= 0, got {damping!r}")


def huber_fuse(
    v: torch.Tensor,
    A: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    delta: float = 1.0,
    *,
    max_iter: int = 50,
    tol: float = 1e-6,
    damping: float = 0.0,
    init: Optional[torch.Tensor] = None,
) -> FuseResult:
    """Maximum-likelihood fusion of n Huber estimates per problem.

    Args:
        v: (..., n, d) estimates' v (residual of estimate i: A_i y - v_i).
        A: (..., n, d, d) any square matrices.
        weight: (..., n) >= 0, default 1. A zero weight removes an estimate (its v and A
            are ignored; pad ragged groups with weight 0).
        delta: > 0 Huber threshold (+inf: Gaussian fusion).
        max_iter: at most this many solver steps per problem.
        tol: stop a problem when its step is <= tol * (1 + ||y||) or its gradient is
            <= tol * sum_i ||w_i psi_i A_i^T e_i|| (fuse.h).
        damping: >= 0, the trust-region damping lambda of the implicit gradient
            (0: exact gradient; a pseudo-inverse where H is singular).
        init: (..., d) optional starting point (default: the weighted least-squares point).
    Batch dims (...) of v, A, weight and init broadcast. Inputs must be floating point; they
    are promoted to a common dtype (float32 computes in float64 internally, half types in
    float32; outputs have that dtype).
    Returns:
        FuseResult(y (..., d), hessian (..., d, d), iterations int32 (...), converged bool (...)).
    Problems whose weights are all zero: y = NaN, hessian = 0, converged = False (and zero
    gradients). A NaN/Inf in an active estimate makes only its own problem NaN.
    Negative weights: RuntimeError on CPU; on CUDA (no host sync) that problem's y is NaN
    with converged = False.
    """
    _check_scalars(delta, max_iter, tol, damping)
    _check_tensor(v, "v", 2, "(..., n, d)")
    n, d = v.shape[-2], v.shape[-1]
    _check_tensor(A, "A", 3, "(..., n, d, d)")
    if A.shape[-2:] != (d, d):
        raise ValueError(f"probreg.huber_fuse: A must have shape (..., n, d, d) with d = {d} (from v {tuple(v.shape)}), got {tuple(A.shape)}")
    if A.shape[-3] != n:
        raise ValueError(f"probreg.huber_fuse: A has n = {A.shape[-3]} estimates but v has n = {n} (v {tuple(v.shape)}, A {tuple(A.shape)})")
    if weight is None:
        weight = torch.ones(v.shape[:-1], dtype=v.dtype, device=v.device)
    _check_tensor(weight, "weight", 1, "(..., n)")
    if weight.shape[-1] != n:
        raise ValueError(f"probreg.huber_fuse: weight has n = {weight.shape[-1]} estimates but v has n = {n} (v {tuple(v.shape)}, weight {tuple(weight.shape)})")
    tensors = [v, A, weight]
    if init is not None:
        _check_tensor(init, "init", 1, "(..., d)")
        if init.shape[-1] != d:
            raise ValueError(f"probreg.huber_fuse: init must have shape (..., d) with d = {d}, got {tuple(init.shape)}")
        tensors.append(init)
    for t in tensors[1:]:
        if t.device != v.device:
            raise ValueError(f"probreg.huber_fuse: all inputs must be on one device, got {v.device} and {t.device}")
    dtype = v.dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    shapes = [v.shape[:-2], A.shape[:-3], weight.shape[:-1]] + ([init.shape[:-1]] if init is not None else [])
    try:
        batch = torch.broadcast_shapes(*shapes)
    except RuntimeError as exc:
        raise ValueError(f"probreg.huber_fuse: batch dims do not broadcast: {[tuple(s) for s in shapes]}") from exc
    v = v.to(dtype).expand(*batch, n, d)
    A = A.to(dtype).expand(*batch, n, d, d)
    weight = weight.to(dtype).expand(*batch, n)
    if init is not None:
        init = init.to(dtype).expand(*batch, d)
    op = ops.huber_fuse if d <= _FUSED_MAX_DIM else ops._huber_fuse_fallback
    return FuseResult(*op(v, A, weight, init, float(delta), int(max_iter), float(tol), float(damping)))


def _dim_from_prediction_size(K: int) -> int:
    """d with d + d(d+1)/2 == K (K = 2, 5, 9, 14, ...)."""
    d = int(round((math.sqrt(9 + 8 * K) - 3) / 2))
    if d < 1 or d + d * (d + 1) // 2 != K:
        raise ValueError(
            f"probreg.fuse_predictions: pred's last dim must be d + d(d+1)/2 (2, 5, 9, 14, ... for d = 1, 2, 3, 4), got {K}"
        )
    return d


def _right_solve(M: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """A M^{-1} (differentiable; half types solve in float32)."""
    if A.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.solve(M.float(), A.float(), left=False).to(A.dtype)
    return torch.linalg.solve(M.to(A.dtype), A, left=False)


def fuse_predictions(
    pred: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    *,
    theta: float = 1.0,
    delta: float = 1.0,
    parameterization: str = "v",
    transforms: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None,
    max_iter: int = 50,
    tol: float = 1e-6,
    damping: float = 0.0,
    init: Optional[torch.Tensor] = None,
) -> FuseResult:
    """Fuse n network predictions per target directly.

    Args:
        pred: (..., n, d + P), P = d(d+1)/2: v (or mu) then the packed raw matrix;
            A = probreg.spd_from_raw(raw, theta).
        weight: (..., n) >= 0, default 1 (0 removes an estimate).
        parameterization: "v": residual A y - v; "mu": residual A (y - mu) = A y - A mu.
        transforms: optional (M (..., n, d, d), t (..., n, d) or None): estimate i's frame x
            maps to the common frame z = M_i x + t_i (e.g. the mirrored test-time
            augmentation). Its residual A x - v becomes A M^{-1} (z - t) - v, i.e.
            A' = A M^{-1} (no longer symmetric) and v' = v + A M^{-1} t; with "mu",
            v = A mu first. y, hessian and init are in the common frame.
        theta, delta, max_iter, tol, damping, init: as in spd_from_raw / huber_fuse.
    Returns:
        FuseResult(y (..., d), hessian (..., d, d), iterations, converged); gradients flow
        to pred (and to weight and the transforms) through huber_fuse and spd_from_raw.
    """
    if not isinstance(pred, torch.Tensor) or pred.dim() < 2:
        raise ValueError("probreg.fuse_predictions: pred must be a tensor of shape (..., n, d + d(d+1)/2)")
    d = _dim_from_prediction_size(pred.shape[-1])
    if parameterization not in ("v", "mu"):
        raise ValueError(f"probreg.fuse_predictions: parameterization must be 'v' or 'mu', got {parameterization!r}")
    A = spd_from_raw(pred[..., d:], theta)
    v = pred[..., :d]
    if parameterization == "mu":
        v = (A @ v.unsqueeze(-1)).squeeze(-1)
    if transforms is not None:
        if not isinstance(transforms, (tuple, list)) or len(transforms) != 2:
            raise ValueError("probreg.fuse_predictions: transforms must be a pair (M, t); t may be None")
        M, t = transforms
        if M.shape[-2:] != (d, d):
            raise ValueError(f"probreg.fuse_predictions: M must have shape (..., n, d, d) with d = {d}, got {tuple(M.shape)}")
        A = _right_solve(M, A)  # A M^{-1}
        if t is not None:
            if t.shape[-1] != d:
                raise ValueError(f"probreg.fuse_predictions: t must have shape (..., n, d) with d = {d}, got {tuple(t.shape)}")
            v = v + (A @ t.to(A.dtype).unsqueeze(-1)).squeeze(-1)
    return huber_fuse(v, A, weight, delta, max_iter=max_iter, tol=tol, damping=damping, init=init)
