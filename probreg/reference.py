"""Pure-PyTorch references of every probreg operator.

Shared by the tests (accuracy and gradient comparisons, usually in float64) and the
benchmarks (as peers), and used by the public API for the cases the fused kernels do not
cover (d > 3). They are built on torch.linalg.eigh with the same stable backward as the
kernels (custom autograd Functions), so they are exact at repeated eigenvalues too.
Everything here works in any floating dtype that torch.linalg.eigh supports.
"""
from __future__ import annotations

import math

import torch

from .packing import pack_sym, unpack_sym  # noqa: F401  (re-exported for the references' users)

__all__ = [
    "remap_g",
    "remap_log_g",
    "remap_divided_difference",
    "symeig",
    "spd_remap",
    "spd_from_raw",
    "spd_from_raw_naive",
    "spd_from_raw_closed_form_2x2",
]


def _sym(M: torch.Tensor) -> torch.Tensor:
    return 0.5 * (M + M.transpose(-1, -2))


# ---------------------------------------------------------------- the remap g (paper eq. 9)
def remap_g(l: torch.Tensor, theta: float) -> torch.Tensor:
    """g(l) = l if l > theta else theta * exp(l/theta - 1)."""
    return torch.where(l > theta, l, theta * torch.exp(torch.clamp(l / theta - 1.0, max=0.0)))


def remap_log_g(l: torch.Tensor, theta: float) -> torch.Tensor:
    """log g(l), exact on the exponential branch (never log of an underflowed g)."""
    safe = torch.where(l > theta, l, torch.ones_like(l))
    return torch.where(l > theta, torch.log(safe), l / theta - 1.0 + math.log(theta))


def _sinhc(x: torch.Tensor) -> torch.Tensor:
    """sinh(x)/x, x >= 0, with the Taylor series near 0."""
    x2 = x * x
    series = 1.0 + x2 * (1.0 / 6.0 + x2 * (1.0 / 120.0 + x2 / 5040.0))
    safe = torch.where(x2 < 1e-4, torch.ones_like(x), x)
    return torch.where(x2 < 1e-4, series, torch.sinh(safe) / safe)


def remap_divided_difference(l: torch.Tensor, theta: float) -> torch.Tensor:
    """K (..., d, d) with K_ij = (g(l_i) - g(l_j)) / (l_i - l_j) and K_ii = g'(l_i).

    Evaluated per branch pair without cancellation or a tie threshold (DESIGN.md sec. 1).
    """
    li = l.unsqueeze(-1)
    lj = l.unsqueeze(-2)
    hi = torch.maximum(li, lj)
    lo = torch.minimum(li, lj)
    gap = hi - lo
    both_linear = lo > theta
    mixed = (hi > theta) & (lo <= theta)
    one = torch.ones_like(gap)
    k_mixed = ((hi - theta) - theta * torch.expm1(torch.clamp((lo - theta) / theta, max=0.0))) / torch.where(
        mixed, gap, one
    )
    half_gap = 0.5 * gap
    x = half_gap / theta
    mean = lo + half_gap
    k_exp_near = torch.exp(torch.clamp(mean / theta - 1.0, max=0.0)) * _sinhc(torch.clamp(x, max=1.0))
    k_exp_far = (remap_g(hi, theta) - remap_g(lo, theta)) / torch.where(x > 1.0, gap, one)
    k_exp = torch.where(x > 1.0, k_exp_far, k_exp_near)
    return torch.where(both_linear, one, torch.where(mixed, k_mixed, k_exp))


# ---------------------------------------------------------------- symeig
class _SymEig(torch.autograd.Function):
    @staticmethod
    def forward(ctx, B):
        L, V = torch.linalg.eigh(_sym(B))
        ctx.save_for_backward(L, V)
        return L, V

    @staticmethod
    def backward(ctx, gL, gV):
        L, V = ctx.saved_tensors
        gap = L.unsqueeze(-2) - L.unsqueeze(-1)  # gap[i, j] = l_j - l_i
        F = torch.where(gap != 0, 1.0 / torch.where(gap != 0, gap, torch.ones_like(gap)), torch.zeros_like(gap))
        M = torch.diag_embed(gL) + F * (V.transpose(-1, -2) @ gV)
        return _sym(V @ M @ V.transpose(-1, -2))


def symeig(B: torch.Tensor):
    """(eigenvalues ascending (..., d), eigenvectors as columns (..., d, d)) of sym(B).

    Backward: V (diag(gl) + F o V^T gV) V^T with F_ij = 1/(l_j - l_i), 0 at exact ties.
    """
    return _SymEig.apply(B)


# ---------------------------------------------------------------- spectral remap
class _SpectralRemap(torch.autograd.Function):
    @staticmethod
    def forward(ctx, B, theta):
        L, V = torch.linalg.eigh(_sym(B))
        ctx.save_for_backward(L, V)
        ctx.theta = theta
        return (V * remap_g(L, theta).unsqueeze(-2)) @ V.transpose(-1, -2)

    @staticmethod
    def backward(ctx, gA):
        L, V = ctx.saved_tensors
        K = remap_divided_difference(L, ctx.theta)
        M = (V.transpose(-1, -2) @ _sym(gA) @ V) * K
        return V @ M @ V.transpose(-1, -2), None


def spd_remap(B: torch.Tensor, theta: float = 1.0) -> torch.Tensor:
    """A = V diag(g(l)) V^T of sym(B) (..., d, d), Daleckii-Krein backward."""
    return _SpectralRemap.apply(B, theta)


def spd_from_raw(raw: torch.Tensor, theta: float = 1.0) -> torch.Tensor:
    """raw (..., P) packed -> A (..., d, d)."""
    return spd_remap(unpack_sym(raw), theta)


def spd_from_raw_naive(raw: torch.Tensor, theta: float = 1.0) -> torch.Tensor:
    """What a user writes by hand: torch.linalg.eigh and plain autograd through it.

    A benchmark peer only: its gradient is NaN/Inf at repeated eigenvalues.
    """
    L, V = torch.linalg.eigh(unpack_sym(raw))
    return (V * remap_g(L, theta).unsqueeze(-2)) @ V.transpose(-1, -2)


def spd_from_raw_closed_form_2x2(raw: torch.Tensor, theta: float = 1.0) -> torch.Tensor:
    """Closed-form pure-PyTorch spd_from_raw for d = 2 (benchmark peer, eager or compiled).

    Eigenvalues m -+ h of [[a, b], [b, c]] and Sylvester's formula
    A = g(l1) I + (g(l2) - g(l1)) / (2h) (B - l1 I); h is floored at 1e-12 so autograd
    stays finite (at exact ties the result is then only approximately right).
    """
    a = raw[..., 0]
    b = raw[..., 1] * (1.0 / math.sqrt(2.0))
    c = raw[..., 2]
    mean = 0.5 * (a + c)
    half_diff = 0.5 * (a - c)
    h = torch.sqrt(half_diff * half_diff + b * b + 1e-24)
    l1 = mean - h
    l2 = mean + h
    g1 = remap_g(l1, theta)
    k = (remap_g(l2, theta) - g1) / (2.0 * h)
    a00 = g1 + k * (a - l1)
    a11 = g1 + k * (c - l1)
    a01 = k * b
    return torch.stack([a00, a01, a01, a11], dim=-1).unflatten(-1, (2, 2))
