"""The SPD parameterisation: raw network output -> positive-definite matrix.

Fused kernels serve d in {1, 2, 3}; d > 3 takes the pure-PyTorch operators of
probreg/_fallback.py (torch.linalg.eigh with the same stable backward and the same autograd
rules; slower). All functions accept any batch shape (including
empty), non-contiguous inputs and float64/float32/float16/bfloat16 (half types compute in
float32 and return the input dtype; float32 computes the decomposition in float64).
"""
from __future__ import annotations

import math
import numbers

import torch

from ._ops import ops
from .packing import dim_from_packed_size, unpack_sym

__all__ = ["symeig", "spd_remap", "spd_from_raw"]

_FUSED_MAX_DIM = 3


def _check_theta(theta: float, name: str) -> float:
    # Comparisons rather than math.isfinite: they also work on torch.compile's symbolic floats.
    if isinstance(theta, bool) or not isinstance(theta, numbers.Real) or not (0 < theta < math.inf):
        raise ValueError(f"{name}: theta must be a finite positive number, got {theta!r}")
    return theta if isinstance(theta, float) else float(theta)


def _check_square(B: torch.Tensor, name: str) -> int:
    if not isinstance(B, torch.Tensor):
        raise TypeError(f"{name}: B must be a torch.Tensor, got {type(B).__name__}")
    if B.dim() < 2 or B.shape[-1] != B.shape[-2]:
        raise ValueError(f"{name}: B must have shape (..., d, d), got {tuple(B.shape)}")
    if not B.is_floating_point():
        raise TypeError(f"{name}: B must be a floating-point tensor, got {B.dtype}")
    return B.shape[-1]


def symeig(B: torch.Tensor):
    """Eigen-decomposition of symmetric matrices.

    Args:
        B: (..., d, d). Only the symmetric part (B + B^T)/2 is used.
    Returns:
        (eigenvalues (..., d) ascending, eigenvectors (..., d, d) as columns) with
        sym(B) = V diag(l) V^T (the torch.linalg.eigh convention).
    Gradients: eigenvalue gradients always; eigenvector gradients by the standard formula
    V (F o V^T dV) V^T with F_ij = 1/(l_j - l_i). At an exact tie l_i == l_j the
    eigenvectors are not unique and F_ij is taken as 0 (finite, gauge-invariant part only).
    """
    d = _check_square(B, "probreg.symeig")
    if d > _FUSED_MAX_DIM:
        return ops._symeig_fallback(B)
    return ops.symeig(B)


def spd_remap(B: torch.Tensor, theta: float = 1.0) -> torch.Tensor:
    """A = V diag(g(l)) V^T, g(l) = l if l > theta else theta*exp(l/theta - 1) (paper eq. 9-10).

    Args:
        B: (..., d, d) symmetric (its symmetric part is used).
        theta: > 0, the smallest "reasonable" eigenvalue; g maps R onto (0, inf).
    Returns:
        A (..., d, d) symmetric positive definite (positive semi-definite only where
        g(l) underflows the dtype, e.g. l < -87*theta in float32-rounded output).
    Backward: exact Daleckii-Krein divided differences, finite at repeated eigenvalues.
    """
    theta = _check_theta(theta, "probreg.spd_remap")
    d = _check_square(B, "probreg.spd_remap")
    if d > _FUSED_MAX_DIM:
        return ops._spd_remap_fallback(B, theta)
    return ops.spd_remap(B, theta)


def spd_from_raw(raw: torch.Tensor, theta: float = 1.0) -> torch.Tensor:
    """Raw network output -> SPD matrix, fused (one kernel forward, one backward).

    Args:
        raw: (..., P), P = d(d+1)/2, packed upper triangle row-major with off-diagonal
            entries carrying sqrt(2): d=2 -> (b00, sqrt2*b01, b11).
        theta: > 0, see spd_remap.
    Returns:
        A (..., d, d).
    """
    theta = _check_theta(theta, "probreg.spd_from_raw")
    if not isinstance(raw, torch.Tensor) or raw.dim() < 1:
        raise ValueError("probreg.spd_from_raw: raw must be a tensor of shape (..., P)")
    P = raw.shape[-1]
    if P not in (1, 3, 6):
        dim_from_packed_size(P)  # raises a clear error if P is not d(d+1)/2
        if not raw.is_floating_point():
            raise TypeError(f"probreg.spd_from_raw: raw must be a floating-point tensor, got {raw.dtype}")
        return ops._spd_remap_fallback(unpack_sym(raw), theta)
    return ops.spd_from_raw(raw, theta)
