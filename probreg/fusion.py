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
from typing import NamedTuple, Optional, Tuple

import torch

from . import _validation as check
from ._ops import ops
from .distributions import HuberL2
from .normalizer import huber_variance_factor
from .spd import spd_from_raw

__all__ = ["FuseResult", "huber_fuse", "fuse_predictions"]

_FUSED_MAX_DIM = 3


class FuseResult(NamedTuple):
    """Result of huber_fuse / fuse_predictions (batch shape (...) of the problems).

    y: (..., d) the fused estimate y* (input dtype). Differentiable (implicit gradient).
    hessian: (..., d, d) the true Hessian of E at y, i.e. the precision matrix of the
        Laplace approximation of the fused density (not differentiable). Its inverse is
        not in the HuberL2.covariance_matrix convention (kappa (A^T A)^-1): use
        covariance_matrix(delta, total_weight) / distribution(...) for that.
    iterations: (...) int32, accepted solver steps.
    converged: (...) bool, whether the convergence test passed within max_iter.
    """

    y: torch.Tensor
    hessian: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor

    def distribution(self, delta: float = 1.0, total_weight: float = 1.0):
        """The fused estimate as a HuberL2: loc y, A = hessian^(1/2), threshold
        delta * sqrt(total_weight).

        Exact when the fused estimates agree (same A and v: sum_i w_i h_delta(||A y - v||)
        = h_{delta sqrt(W)}(||sqrt(W) A y - sqrt(W) v||) with W = sum_i w_i, so the product
        of the densities is that Huber density, and its Hessian at y* is W A^T A = hessian);
        otherwise the Huber density with the fused mode, curvature and tail. For one
        estimate (W = 1) it is the estimate's own HuberL2. Pass delta as given to the fusion
        and total_weight = W (2 for two unweighted test-time augmentations).
        Use it for calibrated regions (region_radius) and covariance_matrix; a singular
        hessian (estimates far apart in 1-D) has no such distribution (inf/NaN entries).
        """
        _check_total_weight(total_weight)
        w, V = torch.linalg.eigh(0.5 * (self.hessian + self.hessian.transpose(-1, -2)))
        sqrt_h = (V * w.clamp_min(0).sqrt().unsqueeze(-2)) @ V.transpose(-1, -2)
        return HuberL2(self.y.detach(), sqrt_h, delta=float(delta) * math.sqrt(total_weight))

    def covariance_matrix(self, delta: float = 1.0, total_weight: float = 1.0) -> torch.Tensor:
        """kappa_d(delta sqrt(W)) hessian^-1 (..., d, d): the covariance of distribution(),
        in the convention of HuberL2.covariance_matrix. hessian^-1 alone is the Laplace
        (Gaussian) approximation, kappa times smaller (kappa_2 = 3.08 at delta = 1, W = 1)."""
        _check_total_weight(total_weight)
        d = self.y.shape[-1]
        return huber_variance_factor(d, float(delta) * math.sqrt(total_weight)) * torch.linalg.inv(self.hessian)


def _check_total_weight(total_weight) -> None:
    if isinstance(total_weight, bool) or not isinstance(total_weight, (int, float)) or not 0 < total_weight < math.inf:
        raise ValueError(f"FuseResult: total_weight must be a finite number > 0, got {total_weight!r}")


_FUSE = "probreg.huber_fuse"
# Largest max_iter (the kernels count iterations in int32).
_MAX_ITER_LIMIT = 2**30


def _check_tensor(x, name: str, min_dim: int, shape_text: str) -> None:
    check.tensor(x, name, _FUSE, min_dim=min_dim, shape_text=shape_text)


def _check_scalars(delta, max_iter, tol, damping, op: str = _FUSE):
    """The validated (delta, max_iter, tol, damping)."""
    return (
        check.positive(delta, "delta", op, "> 0 (h_delta vanishes at delta = 0; +inf allowed)"),
        check.integer(max_iter, "max_iter", op, 0, _MAX_ITER_LIMIT, "2^30"),
        check.nonnegative_finite(tol, "tol", op),
        check.nonnegative_finite(damping, "damping", op),
    )


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
        max_iter: at most this many solver steps per problem, an integer in [0, 2^30].
        tol: >= 0. A problem has converged when its step is <= tol * (1 + ||y||), or
            (H singular) its gradient is <= tol * sum_i ||w_i psi_i A_i^T e_i||_1, or its
            energy is optimal to machine precision: the predicted decrease of the next
            step is at the rounding level of E (fuse.h). tol = 0 therefore means "to
            machine precision" (and terminates).
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
    Negative weights: ValueError on CPU; on CUDA (no host sync) that problem's y is NaN
    with converged = False. A float32/half y beyond the dtype's range is stored as +-inf
    with converged = False.
    """
    delta, max_iter, tol, damping = _check_scalars(delta, max_iter, tol, damping)
    _check_tensor(v, "v", 2, "(..., n, d)")
    n, d = v.shape[-2], v.shape[-1]
    if d < 1:
        raise ValueError(f"probreg.huber_fuse: v must have shape (..., n, d) with d >= 1, got {tuple(v.shape)}")
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


def _check_broadcast(x, batch, tail_dims: int, tail, name: str, shape_text: str, op: str) -> None:
    """x (..., *tail) whose batch dims broadcast with `batch` (the estimates' (..., n))."""
    ok = tuple(x.shape[x.dim() - tail_dims:]) == tuple(tail)
    if ok:
        try:
            torch.broadcast_shapes(x.shape[:x.dim() - tail_dims], batch)
        except RuntimeError:
            ok = False
    if not ok:
        raise ValueError(f"{op}: {name} must have shape {shape_text} broadcastable to the estimates' (..., n) = "
                         f"{tuple(batch)}, got {tuple(x.shape)}")


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
    op = "probreg.fuse_predictions"
    check.tensor(pred, "pred", op, min_dim=2, shape_text="(..., n, d + d(d+1)/2)")
    d = _dim_from_prediction_size(pred.shape[-1])
    check.choice(parameterization, "parameterization", op, ("v", "mu"))
    theta = check.positive_finite(theta, "theta", op)
    _check_scalars(delta, max_iter, tol, damping, op)
    A = spd_from_raw(pred[..., d:], theta)
    v = pred[..., :d]
    if parameterization == "mu":
        v = (A @ v.unsqueeze(-1)).squeeze(-1)
    if transforms is not None:
        if not isinstance(transforms, (tuple, list)) or len(transforms) != 2:
            raise ValueError(f"{op}: transforms must be a pair (M, t) with t possibly None, got {transforms!r}")
        M, t = transforms
        check.tensor(M, "M", op, min_dim=2, shape_text=f"(..., n, {d}, {d})")
        _check_broadcast(M, A.shape[:-2], 2, (d, d), "M", f"(..., n, {d}, {d})", op)
        check.same_device([("pred", pred), ("M", M)], op)
        A = _right_solve(M, A)  # A M^{-1}
        if t is not None:
            check.tensor(t, "t", op, min_dim=1, shape_text=f"(..., n, {d})")
            _check_broadcast(t, A.shape[:-2], 1, (d,), "t", f"(..., n, {d})", op)
            check.same_device([("pred", pred), ("t", t)], op)
            v = v + (A @ t.to(A.dtype).unsqueeze(-1)).squeeze(-1)
    return huber_fuse(v, A, weight, delta, max_iter=max_iter, tol=tol, damping=damping, init=init)
