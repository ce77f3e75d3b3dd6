"""Spectral functions of symmetric matrices in plain torch ops: the remap g, its first and
second divided differences, and the first- and second-order Daleckii-Krein maps. Used by
the pure-PyTorch kernels of the d > 3 operators (probreg/_fallback.py) and by the exact
second-order rules of every operator (probreg/_second_order.py). Not an oracle: the tests
check it against mpmath divided differences and finite differences of the fused kernels.

Notation: B = V diag(l) V^T (l ascending, V columns), X^ = V^T sym(X) V.
    g(l) = l (l > theta), theta exp(l/theta - 1) (l <= theta). With u = (l - theta)/theta,
    g(l) = theta G(u), G(u) = 1 + u (u > 0), e^u (u <= 0), so that
    g[a, b] = G[u_a, u_b] and g[a, b, c] = G[u_a, u_b, u_c] / theta.
    F(B) = V diag(g(l)) V^T.
    dF[E]    = V (E^ o K) V^T,                                   K_ij = g[l_i, l_j]
    d2F[G, E] = V T V^T, T_ij = sum_k g[l_i, l_k, l_j] (G^_ik E^_kj + E^_ik G^_kj)
d2F is symmetric in (G, E), and <C, d2F[G, E]> is symmetric in (C, G, E) (it is the third
derivative of the spectral function sum_i integral g(l_i)). Both maps are gauge invariant,
so with divided differences evaluated without a tie threshold they are exact at repeated
eigenvalues.

Convention at the kink: g is C1 but not C2 at l = theta (g'' = 1/theta below, 0 above),
and likewise h = (log g)' = 1/max(l, theta) is continuous with h' = 0 below and -1/theta^2
above. Only a divided difference with every point exactly at theta needs a value there
(g'' or h' at theta; any other tie at theta needs only g' or h, which are continuous); it
takes the mean of the one-sided values, g''(theta) = 1/(2 theta), h'(theta) =
-1/(2 theta^2): the limit of a central difference across the kink, so finite-difference
checks (gradgradcheck) hold there too. Every formula below is a sum of non-negative terms
over positive denominators: no cancellation at any gap.
"""
from __future__ import annotations

import functools
import math

import torch

from ._ops import ops

_FUSED_MAX_DIM = 3
# Below this |h| the phi functions use their Taylor series (ten terms: remainder below
# 0.1^10 / 12! ~ 2e-19); above it the expm1 forms lose at most about 2 eps / 0.1.
_SERIES_BELOW = 0.1


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64/float32 inputs, float32 for the half types (the kernels' policy)."""
    return torch.float64 if dtype in (torch.float64, torch.float32) else torch.float32


def sym(M: torch.Tensor) -> torch.Tensor:
    return 0.5 * (M + M.transpose(-1, -2))


def decompose(B: torch.Tensor):
    """(l (..., d) ascending, V (..., d, d)) of sym(B): the fused kernel for d <= 3, the
    torch.linalg.eigh fallback op otherwise."""
    if B.shape[-1] <= _FUSED_MAX_DIM:
        return ops.symeig(B)
    return ops._symeig_fallback(B)


def from_eigenbasis(V: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """V M V^T."""
    return V @ M @ V.transpose(-1, -2)


def to_eigenbasis(V: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """V^T sym(X) V."""
    return V.transpose(-1, -2) @ sym(X) @ V


# ---------------------------------------------------------------- eigen-decomposition
def _inverse_gaps(l: torch.Tensor) -> torch.Tensor:
    """F (..., d, d), F_ij = 1 / (l_j - l_i), 0 on the diagonal and at exact ties."""
    gap = l.unsqueeze(-2) - l.unsqueeze(-1)
    nonzero = gap != 0
    return torch.where(nonzero, 1.0 / torch.where(nonzero, gap, torch.ones_like(gap)), torch.zeros_like(gap))


def symeig_backward(grad_l: torch.Tensor, grad_V: torch.Tensor, l: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """sym(V (diag(grad_l) + F o V^T grad_V) V^T): the semantics of probreg::_symeig_backward
    (F_ij = 0 at an exact tie: the gauge-invariant part only)."""
    M = torch.diag_embed(grad_l) + _inverse_gaps(l) * (V.transpose(-1, -2) @ grad_V)
    return sym(from_eigenbasis(V, M))


def symeig_backward_tangent(grad_l, grad_V, l, V, d_grad_l, d_grad_V, dl, dV) -> torch.Tensor:
    """The jvp of symeig_backward: with W = V^T grad_V, M = diag(grad_l) + F o W,
    dF_ij = F_ij^2 (dl_i - dl_j), dM = diag(d_grad_l) + dF o W + F o (dV^T grad_V + V^T d_grad_V):
    d out = sym(dV (M + M^T) V^T) + sym(V dM V^T)."""
    F = _inverse_gaps(l)
    W = V.transpose(-1, -2) @ grad_V
    M = torch.diag_embed(grad_l) + F * W
    dF = F * F * (dl.unsqueeze(-1) - dl.unsqueeze(-2))
    dW = dV.transpose(-1, -2) @ grad_V + V.transpose(-1, -2) @ d_grad_V
    dM = torch.diag_embed(d_grad_l) + dF * W + F * dW
    return sym(dV @ (M + M.transpose(-1, -2)) @ V.transpose(-1, -2)) + sym(from_eigenbasis(V, dM))


def symeig_backward_cotangent(grad_l, grad_V, l, V, C):
    """The vjp of symeig_backward with cotangent C -> gradients w.r.t. (grad_l, grad_V, l, V):
    with C^ = V^T sym(C) V and P = C^ o W o F^2: diag(C^), V (F o C^), rowsum(P) - colsum(P),
    sym(C) V (M + M^T) + grad_V (F o C^)^T (the adjoint of symeig_backward_tangent)."""
    F = _inverse_gaps(l)
    W = V.transpose(-1, -2) @ grad_V
    M = torch.diag_embed(grad_l) + F * W
    Cs = sym(C)
    Ch = V.transpose(-1, -2) @ Cs @ V
    FC = F * Ch
    P = Ch * W * F * F
    grad_V_out = Cs @ V @ (M + M.transpose(-1, -2)) + grad_V @ FC.transpose(-1, -2)
    return torch.diagonal(Ch, dim1=-2, dim2=-1), V @ FC, P.sum(-1) - P.sum(-2), grad_V_out


def symeig_tangent(l: torch.Tensor, V: torch.Tensor, dB: torch.Tensor):
    """Forward-mode tangents (dl, dV) of symeig in direction dB: with E = V^T sym(dB) V,
    dl = diag(E), dV = V (F o E), F as in symeig_backward (its adjoint)."""
    E = to_eigenbasis(V, dB)
    return torch.diagonal(E, dim1=-2, dim2=-1), V @ (_inverse_gaps(l) * E)


# ---------------------------------------------------------------- g and log g
def remap_u(l: torch.Tensor, theta: float) -> torch.Tensor:
    """u = (l - theta) / theta; u <= 0 is g's exponential branch."""
    return (l - theta) * (1.0 / theta)


def remap_g(l: torch.Tensor, theta: float) -> torch.Tensor:
    """g(l) = l (l > theta), theta exp(l/theta - 1) (l <= theta)."""
    u = remap_u(l, theta)
    return torch.where(u > 0, l, theta * torch.exp(torch.clamp(u, max=0.0)))


def remap_log_g(l: torch.Tensor, theta: float) -> torch.Tensor:
    """log g(l) = log max(l, theta) + min(u, 0): exact where g underflows."""
    return torch.log(torch.clamp(l, min=theta)) + torch.clamp(remap_u(l, theta), max=0.0)


def remap_log_g_prime(l: torch.Tensor, theta: float) -> torch.Tensor:
    """h(l) = (log g)'(l) = 1 / max(l, theta)."""
    return 1.0 / torch.clamp(l, min=theta)


def remap_g_prime(l: torch.Tensor, theta: float) -> torch.Tensor:
    """g'(l) = 1 (l > theta), exp(l/theta - 1) (l <= theta): the diagonal of remap_first_dd."""
    u = remap_u(l, theta)
    return torch.where(u > 0, torch.ones_like(u), torch.exp(torch.clamp(u, max=0.0)))


def remap_g_second(l: torch.Tensor, theta: float) -> torch.Tensor:
    """g''(l) = 0 (l > theta), exp(l/theta - 1) / theta (l < theta), 1/(2 theta) at theta:
    twice the diagonal of remap_second_dd."""
    u = remap_u(l, theta)
    below = torch.exp(torch.clamp(u, max=0.0)) * torch.where(u == 0, 0.5 / theta, 1.0 / theta)
    return torch.where(u > 0, torch.zeros_like(u), below)


def remap_log_g_second(l: torch.Tensor, theta: float) -> torch.Tensor:
    """h'(l) = (log g)''(l) = -1/l^2 (l > theta), 0 (l < theta), -1/(2 theta^2) at theta:
    the diagonal of log_g_prime_first_dd."""
    lin = l > theta
    safe = torch.where(lin, l, torch.ones_like(l))
    at_theta = torch.where(l == theta, torch.full_like(l, -0.5 / (theta * theta)), torch.zeros_like(l))
    return torch.where(lin, -1.0 / (safe * safe), at_theta)


# ---------------------------------------------------------------- phi functions
def _expm1_over(h: torch.Tensor) -> torch.Tensor:
    """phi1(h) = (e^h - 1) / h, 1 at h = 0."""
    safe = torch.where(h == 0, torch.ones_like(h), h)
    return torch.where(h == 0, torch.ones_like(h), torch.expm1(safe) / safe)


def _phi2_series(h: torch.Tensor) -> torch.Tensor:
    """phi2(h) = sum_k h^k / (k + 2)! for |h| < 0.1, ten terms (remainder < 1e-19)."""
    out = torch.full_like(h, 1.0 / 479001600.0)  # 1/12!
    for k in range(9, -1, -1):
        out = out * h + 1.0 / math.factorial(k + 2)
    return out


def _phi2(h: torch.Tensor) -> torch.Tensor:
    """phi2(h) = (e^h - 1 - h) / h^2 (1/2 at 0) for h <= 1 (expm1 form: relative error
    about 2 eps / |h| above the series range)."""
    small = h.abs() < _SERIES_BELOW
    hl = torch.where(small, torch.ones_like(h), h)
    return torch.where(small, _phi2_series(torch.where(small, h, torch.zeros_like(h))), (torch.expm1(hl) - hl) / (hl * hl))


def _exp_times_phi2(y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """e^y phi2(h), without overflow wherever y + h <= 0 (e^(y+h) <= 1), however large h."""
    big = h > 1.0
    hb = torch.where(big, h, torch.full_like(h, 2.0))
    ey = torch.exp(y)
    far = (torch.exp(y + hb) - ey * (1.0 + hb)) / (hb * hb)  # no cancellation for h > 1
    return torch.where(big, far, ey * _phi2(torch.clamp(h, max=1.0)))


def _one_minus_exp_plus_x_exp(x: torch.Tensor) -> torch.Tensor:
    """x^2 e^x phi2(-x) = 1 - e^x + x e^x >= 0 for x <= 0."""
    small = x.abs() < _SERIES_BELOW
    xs = torch.where(small, x, torch.zeros_like(x))
    return torch.where(small, xs * xs * torch.exp(xs) * _phi2_series(-xs), -torch.expm1(x) + x * torch.exp(x))


def _expm1_minus_x(x: torch.Tensor) -> torch.Tensor:
    """x^2 phi2(x) = e^x - 1 - x >= 0."""
    small = x.abs() < _SERIES_BELOW
    xs = torch.where(small, x, torch.zeros_like(x))
    return torch.where(small, xs * xs * _phi2_series(xs), torch.expm1(x) - x)


# ---------------------------------------------------------------- divided differences of G
def remap_first_dd(l: torch.Tensor, theta: float) -> torch.Tensor:
    """K (..., d, d), K_ij = g[l_i, l_j] (g'(l_i) on the diagonal and at ties)."""
    u = remap_u(l, theta)
    ui, uj = u.unsqueeze(-1), u.unsqueeze(-2)
    lo, hi = torch.minimum(ui, uj), torch.maximum(ui, uj)
    one = torch.ones_like(lo)
    exp_branch = torch.exp(torch.clamp(hi, max=0.0)) * _expm1_over(torch.clamp(lo - hi, max=0.0))
    gap = torch.where(hi > lo, hi - lo, one)
    mixed = (hi - torch.expm1(torch.clamp(lo, max=0.0))) / gap  # lo <= 0 < hi: both terms >= 0
    return torch.where(lo > 0, one, torch.where(hi <= 0, exp_branch, mixed))


@functools.lru_cache(maxsize=None)
def _index_triples(d: int):
    """The index triples i <= k <= j of a d-vector (as a list) and, for each of the d^3
    ordered triples (i, k, j), the position of its sorted triple in that list: a symmetric
    function of three eigenvalues is evaluated once per multiset of indices."""
    triples = [(i, k, j) for i in range(d) for k in range(i, d) for j in range(k, d)]
    position = {t: n for n, t in enumerate(triples)}
    return triples, [position[tuple(sorted((i, k, j)))] for i in range(d) for k in range(d) for j in range(d)]


def remap_second_dd(l: torch.Tensor, theta: float) -> torch.Tensor:
    """K3 (..., d, d, d), K3[i, k, j] = g[l_i, l_k, l_j] (symmetric in i, k, j)."""
    u = remap_u(l, theta)
    d = u.shape[-1]
    triples, gather = _index_triples(d)
    x, y, z = torch.sort(u[..., torch.tensor(triples, device=u.device)], dim=-1).values.unbind(-1)
    one = torch.ones_like(x)
    # Clamped copies keep the branches not taken finite (they equal x, y, z where taken).
    xc, yc, zc = torch.clamp(x, max=0.0), torch.clamp(y, max=0.0), torch.clamp(z, max=0.0)
    zx = torch.where(z > x, z - x, one)
    zy = torch.where(z > y, z - y, one)
    yx = torch.where(y > x, y - x, one)
    left = (yc - xc) * _exp_times_phi2(yc, xc - yc)  # the Peano term of [x, y], >= 0
    # z <= 0 (every point on the exponential branch): two non-negative Peano terms
    all_exp = torch.where(
        z > x,
        (left + (zc - yc) * _exp_times_phi2(yc, zc - yc)) / zx,
        torch.where(y == 0, torch.full_like(y, 0.25), 0.5 * torch.exp(yc)),  # at theta: mean of G''(0-) = 1, G''(0+) = 0
    )
    # x <= y <= 0 < z
    two_exp = left / zx + (-z * torch.expm1(yc) + _one_minus_exp_plus_x_exp(yc)) / (zx * zy)
    # x <= 0 < y <= z
    one_exp = _expm1_minus_x(xc) / (zx * yx)
    out = torch.where(x > 0, torch.zeros_like(x), torch.where(z <= 0, all_exp, torch.where(y <= 0, two_exp, one_exp)))
    out = out * (1.0 / theta)
    return out[..., torch.tensor(gather, device=u.device)].unflatten(-1, (d, d, d))


def log_g_prime_first_dd(l: torch.Tensor, theta: float) -> torch.Tensor:
    """K_h (..., d, d), K_h[i, j] = h[l_i, l_j] for h = (log g)' = 1 / max(l, theta):
    0 (both <= theta), -1/(ab) (both > theta), -(a - theta)/(a theta (a - b)) (a > theta >= b);
    -1/(2 theta^2) where both are exactly theta (the mean of the one-sided h')."""
    li, lj = l.unsqueeze(-1), l.unsqueeze(-2)
    lo, hi = torch.minimum(li, lj), torch.maximum(li, lj)
    one = torch.ones_like(lo)
    lo_lin = torch.where(lo > theta, lo, one)
    hi_lin = torch.where(hi > theta, hi, one)
    both_linear = -1.0 / (lo_lin * hi_lin)
    gap = torch.where(hi > lo, hi - lo, one)
    mixed = -(hi - theta) / (hi_lin * theta * gap)
    at_theta = torch.where((hi == theta) & (lo == theta), torch.full_like(lo, -0.5 / (theta * theta)), torch.zeros_like(lo))
    return torch.where(lo > theta, both_linear, torch.where(hi > theta, mixed, at_theta))


# ---------------------------------------------------------------- Daleckii-Krein maps
def daleckii_krein(V: torch.Tensor, K: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """V (E^ o K) V^T: the derivative of the spectral function with divided differences K
    in direction E (only sym(E) matters); self-adjoint."""
    return from_eigenbasis(V, to_eigenbasis(V, E) * K)


def daleckii_krein_second(V: torch.Tensor, K3: torch.Tensor, G: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """d2F[G, E] = V T V^T, T_ij = sum_k K3[i, k, j] (G^_ik E^_kj + E^_ik G^_kj)."""
    Gh, Eh = to_eigenbasis(V, G), to_eigenbasis(V, E)
    # T_ij = sum_k K3_ikj (G_ik E_kj + E_ik G_kj)
    T = (K3 * (Gh.unsqueeze(-1) * Eh.unsqueeze(-3) + Eh.unsqueeze(-1) * Gh.unsqueeze(-3))).sum(-2)
    return from_eigenbasis(V, T)
