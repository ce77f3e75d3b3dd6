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
    "family_rho",
    "huber_nll_reference",
    "huber_nll_naive",
    "huber_nll_closed_form_2x2",
    "huber_nll_closed_form_diagonal",
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


# ---------------------------------------------------------------- negative log-likelihood
# References of probreg.huber_nll (paper eq. 6, 11-13). pred (..., W) holds the location
# (v or mu, d values) then the covariance parameters: full -> packed raw B (d(d+1)/2),
# diagonal -> raw diagonal b (d), identity -> nothing. target (..., d).
_NLL_FAMILIES = ("huber", "gauss", "laplace", "charbonnier")
_NLL_COVARIANCES = ("identity", "diagonal", "full")


def family_rho(r: torch.Tensor, family: str, delta: float) -> torch.Tensor:
    """rho(||r||) over the last dim (..., d) -> (...), plain autograd.

    The quadratic pieces use sum(r^2) (smooth at r = 0); laplace's gradient at r = 0 is
    torch's vector_norm subgradient 0.
    """
    sq = (r * r).sum(-1)
    if family == "gauss":
        return 0.5 * sq
    if family == "charbonnier":
        return sq / (torch.sqrt(sq + 1.0) + 1.0)  # = sqrt(sq + 1) - 1 without cancellation
    s = torch.linalg.vector_norm(r, dim=-1)
    if family == "laplace":
        return s
    if family == "huber":
        return torch.where(s <= delta, 0.5 * sq, delta * (s - 0.5 * delta))
    raise ValueError(f"family must be one of {_NLL_FAMILIES}, got {family!r}")


def _nll_split(pred: torch.Tensor, target: torch.Tensor, covariance: str):
    d = target.shape[-1]
    width = {"full": d + d * (d + 1) // 2, "diagonal": 2 * d, "identity": d}[covariance]
    if pred.shape[-1] != width or pred.shape[:-1] != target.shape[:-1]:
        raise ValueError(f"pred {tuple(pred.shape)} does not match target {tuple(target.shape)} for covariance={covariance!r}")
    return d, pred[..., :d], pred[..., d:]


def _nll_residual(A: torch.Tensor, loc: torch.Tensor, target: torch.Tensor, parameterization: str) -> torch.Tensor:
    if parameterization == "v":
        return (A @ target.unsqueeze(-1)).squeeze(-1) - loc
    if parameterization == "mu":
        return (A @ (target - loc).unsqueeze(-1)).squeeze(-1)
    raise ValueError(f"parameterization must be 'v' or 'mu', got {parameterization!r}")


def _nll_reduce(loss: torch.Tensor, weight, reduction: str) -> torch.Tensor:
    """Per-target weights (broadcastable; zero weight = masked, exactly no cost even if the
    loss is NaN there); 'mean' is the weighted mean sum(w l) / sum(w) (0 if sum(w) == 0)."""
    if weight is not None:
        w = torch.broadcast_to(torch.as_tensor(weight, dtype=loss.dtype, device=loss.device), loss.shape)
        loss = torch.where(w != 0, w * loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        if weight is None:
            return loss.mean()
        total = w.sum()
        return loss.sum() / torch.where(total != 0, total, torch.ones_like(total))
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")


def _nll_normalizer(d: int, family: str, delta: float) -> float:
    from .normalizer import log_normalizer

    return log_normalizer(d, family, delta)


def huber_nll_reference(pred, target, delta=1.0, theta=1.0, *, parameterization="v", family="huber",
                        covariance="full", reduction="mean", normalized=True, weight=None):
    """Reference NLL, exact in float64: A from torch.linalg.eigh with the Daleckii-Krein
    backward (spd_remap), log|A| = sum log g(l) from the eigenvalues (symeig)."""
    d, loc, cov = _nll_split(pred, target, covariance)
    if covariance == "full":
        B = unpack_sym(cov)
        A = spd_remap(B, theta)
        neg_logdet = -remap_log_g(symeig(B)[0], theta).sum(-1)
    elif covariance == "diagonal":
        A = torch.diag_embed(remap_g(cov, theta))
        neg_logdet = -remap_log_g(cov, theta).sum(-1)
    elif covariance == "identity":
        A = torch.eye(d, dtype=pred.dtype, device=pred.device).expand(*target.shape[:-1], d, d)
        neg_logdet = torch.zeros(target.shape[:-1], dtype=pred.dtype, device=pred.device)
    else:
        raise ValueError(f"covariance must be one of {_NLL_COVARIANCES}, got {covariance!r}")
    loss = neg_logdet + family_rho(_nll_residual(A, loc, target, parameterization), family, delta)
    if normalized:
        loss = loss + _nll_normalizer(d, family, delta)
    return _nll_reduce(loss, weight, reduction)


def huber_nll_naive(pred, target, delta=1.0, theta=1.0, *, parameterization="v", family="huber",
                    covariance="full", reduction="mean", normalized=True, weight=None):
    """What a user writes by hand: torch.linalg.eigh + torch.logdet of the reconstructed A
    + plain autograd. The benchmarks' "eager reference" peer; in float32 its logdet is
    -inf/NaN where g(l) underflows and its gradient is NaN at repeated eigenvalues."""
    d, loc, cov = _nll_split(pred, target, covariance)
    if covariance == "full":
        A = spd_from_raw_naive(cov, theta)
    elif covariance == "diagonal":
        A = torch.diag_embed(remap_g(cov, theta))
    else:
        A = torch.eye(d, dtype=pred.dtype, device=pred.device).expand(*target.shape[:-1], d, d)
    loss = -torch.logdet(A) + family_rho(_nll_residual(A, loc, target, parameterization), family, delta)
    if normalized:
        loss = loss + _nll_normalizer(d, family, delta)
    return _nll_reduce(loss, weight, reduction)


def _rho_from_components(r, family: str, delta: float):
    """rho(||r||) from a list of residual components (closed-form peers; elementwise ops
    only, so torch.compile fuses them)."""
    sq = r[0] * r[0]
    for x in r[1:]:
        sq = sq + x * x
    if family == "gauss":
        return 0.5 * sq
    if family == "charbonnier":
        return sq / (torch.sqrt(sq + 1.0) + 1.0)
    s = torch.sqrt(sq)
    if family == "laplace":
        return s
    return torch.where(s <= delta, 0.5 * sq, delta * (s - 0.5 * delta))


def huber_nll_closed_form_2x2(pred, target, delta=1.0, theta=1.0, *, parameterization="v", family="huber",
                              reduction="mean", normalized=True, weight=None):
    """Closed-form pure-PyTorch NLL for d = 2, full covariance (benchmark peer, eager or
    under torch.compile): eigenvalues m -+ h of B, log|A| = log g(l1) + log g(l2), A by
    Sylvester's formula (as spd_from_raw_closed_form_2x2; h floored at 1e-12)."""
    v0, v1 = pred[..., 0], pred[..., 1]
    a = pred[..., 2]
    b = pred[..., 3] * (1.0 / math.sqrt(2.0))
    c = pred[..., 4]
    y0, y1 = target[..., 0], target[..., 1]
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
    if parameterization == "mu":
        z0, z1 = y0 - v0, y1 - v1
        r = [a00 * z0 + a01 * z1, a01 * z0 + a11 * z1]
    else:
        r = [a00 * y0 + a01 * y1 - v0, a01 * y0 + a11 * y1 - v1]
    loss = -(remap_log_g(l1, theta) + remap_log_g(l2, theta)) + _rho_from_components(r, family, delta)
    if normalized:
        loss = loss + _nll_normalizer(2, family, delta)
    return _nll_reduce(loss, weight, reduction)


def huber_nll_closed_form_diagonal(pred, target, delta=1.0, theta=1.0, *, parameterization="v", family="huber",
                                   reduction="mean", normalized=True, weight=None):
    """Elementwise pure-PyTorch NLL for the diagonal covariance, any d (benchmark peer)."""
    d = target.shape[-1]
    loc, b = pred[..., :d], pred[..., d:]
    g = remap_g(b, theta)
    r = g * (target - loc) if parameterization == "mu" else g * target - loc
    loss = -remap_log_g(b, theta).sum(-1) + _rho_from_components([r[..., k] for k in range(d)], family, delta)
    if normalized:
        loss = loss + _nll_normalizer(d, family, delta)
    return _nll_reduce(loss, weight, reduction)
