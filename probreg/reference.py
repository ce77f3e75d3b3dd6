"""Pure-PyTorch references of every probreg operator.

Oracles for the tests (accuracy and gradient comparisons, usually in float64) and peers for
the benchmarks; never a production path (d > 3 runs probreg/_fallback.py). They are built
on torch.linalg.eigh with the same stable backward as the kernels (custom autograd
Functions), so they are exact at repeated eigenvalues too.
Everything here works in any floating dtype that torch.linalg.eigh supports.
"""
from __future__ import annotations

import math

import torch

from ._fuse_torch import huber_fuse_solve, huber_fuse_weighted_least_squares  # noqa: F401  (re-exported)
from .packing import INV_SQRT2, pack_sym, unpack_sym  # noqa: F401  (re-exported for the references' users)

__all__ = [
    "remap_g",
    "remap_log_g",
    "remap_divided_difference",
    "symeig",
    "spd_remap",
    "spd_from_raw",
    "spd_from_raw_naive",
    "spd_from_raw_closed_form_2x2",
    "spd_from_raw_closed_form_3x3",
    "family_rho",
    "huber_nll_reference",
    "huber_nll_naive",
    "huber_nll_closed_form_2x2",
    "huber_nll_closed_form_3x3",
    "huber_nll_closed_form_diagonal",
    "huber_energy",
    "huber_fuse",
    "huber_fuse_weighted_least_squares",
    "huber_fuse_damped_solve",
    "huber_fuse_mm_reference",
    "huber_fuse_authors",
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


def _closed_form_2x2(packed: torch.Tensor, theta: float):
    """Sylvester's formula on packed (..., 3) = (a, sqrt(2) b, c) of B = [[a, b], [b, c]]:
    -> (a00, a01, a11) of A = g(l1) I + (g(l2) - g(l1)) / (2h) (B - l1 I), and the
    eigenvalues (l1, l2) = m -+ h; h floored at 1e-12 so autograd stays finite."""
    a = packed[..., 0]
    b = packed[..., 1] * INV_SQRT2
    c = packed[..., 2]
    mean = 0.5 * (a + c)
    half_diff = 0.5 * (a - c)
    h = torch.sqrt(half_diff * half_diff + b * b + 1e-24)
    l1 = mean - h
    l2 = mean + h
    g1 = remap_g(l1, theta)
    k = (remap_g(l2, theta) - g1) / (2.0 * h)
    return (g1 + k * (a - l1), k * b, g1 + k * (c - l1)), (l1, l2)


def spd_from_raw_closed_form_2x2(raw: torch.Tensor, theta: float = 1.0) -> torch.Tensor:
    """Closed-form pure-PyTorch spd_from_raw for d = 2 (benchmark peer, eager or compiled).

    Eigenvalues m -+ h of [[a, b], [b, c]] and Sylvester's formula
    A = g(l1) I + (g(l2) - g(l1)) / (2h) (B - l1 I); h is floored at 1e-12 so autograd
    stays finite (at exact ties the result is then only approximately right).
    """
    (a00, a01, a11), _ = _closed_form_2x2(raw, theta)
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
    loss is NaN there); 'mean' is the weighted mean sum(w l) / sum(w) (0 if sum(w) == 0,
    an empty batch included)."""
    if weight is not None:
        w = torch.broadcast_to(torch.as_tensor(weight, dtype=loss.dtype, device=loss.device), loss.shape)
        loss = torch.where(w != 0, w * loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        if weight is None:  # an empty batch has total weight 0: mean 0, as probreg.huber_nll
            return loss.mean() if loss.numel() > 0 else loss.sum()
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
    y0, y1 = target[..., 0], target[..., 1]
    (a00, a01, a11), (l1, l2) = _closed_form_2x2(pred[..., 2:5], theta)
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
# ---------------------------------------------------------------- fusion of Huber estimates
# E(y) = sum_i w_i h_delta(||A_i y - v_i||) per problem (paper app. E); shapes: y (..., d),
# v (..., n, d), A (..., n, d, d) any square matrices, weight (..., n) >= 0.
def huber_energy(y: torch.Tensor, v: torch.Tensor, A: torch.Tensor, weight: torch.Tensor, delta: float) -> torch.Tensor:
    """E(y) (...,), twice differentiable by autograd wherever E is (finite derivatives at a
    zero residual). An estimate with weight 0 contributes 0, and its weight still gets the
    derivative dE/dw_i = h_i (non-finite padding there counts as h_i = 0). delta may be
    +inf (Gaussian: every estimate on its quadratic piece)."""
    e = (A @ y.unsqueeze(-2).unsqueeze(-1)).squeeze(-1) - v
    sq = (e * e).sum(-1)
    finite_delta = delta if math.isfinite(delta) else 1.0
    inside = sq <= delta * delta
    r_outside = torch.sqrt(torch.where(inside, torch.ones_like(sq), sq))
    h = torch.where(inside, 0.5 * sq, finite_delta * (r_outside - 0.5 * finite_delta))
    h = torch.where((weight == 0) & ~torch.isfinite(h), torch.zeros_like(h), h)
    return (weight * h).sum(-1)


def huber_fuse_damped_solve(H, damping, grad_y, n_active):
    """z = (H + damping I)^+ grad_y via eigh, cutoff 16 * n_active * eps * max|eigenvalue|
    (the pseudo-inverse rule of fuse.h's backward)."""
    l, V = torch.linalg.eigh(H)
    mu = l + damping
    eps = torch.finfo(H.dtype).eps
    cutoff = 16.0 * n_active.clamp_min(1).to(H.dtype) * eps * mu.abs().amax(-1)
    keep = mu > cutoff.unsqueeze(-1)
    inv = torch.where(keep, 1.0 / torch.where(keep, mu, torch.ones_like(mu)), torch.zeros_like(mu))
    return (V @ (inv.unsqueeze(-1) * (V.transpose(-1, -2) @ grad_y.unsqueeze(-1)))).squeeze(-1)


class _HuberFuse(torch.autograd.Function):
    """Pure-PyTorch huber_fuse with the implicit gradient. The backward is independent of
    the closed forms of fuse.h: it differentiates huber_energy twice with autograd
    (dL/dtheta = -VJP of grad_y E with cotangent z)."""

    @staticmethod
    def forward(ctx, v, A, weight, init, delta, max_iter, tol, damping):
        y, hessian, iterations, converged = huber_fuse_solve(v, A, weight, delta, max_iter, tol, init)
        ctx.save_for_backward(y, hessian, v, A, weight)
        ctx.delta = delta
        ctx.damping = damping
        ctx.mark_non_differentiable(hessian, iterations, converged)
        return y, hessian, iterations, converged

    @staticmethod
    def backward(ctx, grad_y, grad_hessian, grad_iterations, grad_converged):
        y, hessian, v, A, weight = ctx.saved_tensors
        all_zero = (weight == 0).all(-1)
        z = huber_fuse_damped_solve(
            torch.where(all_zero.unsqueeze(-1).unsqueeze(-1), torch.zeros_like(hessian), hessian),
            ctx.damping, grad_y, (weight > 0).sum(-1))
        with torch.enable_grad():
            y_ = torch.where(all_zero.unsqueeze(-1), torch.zeros_like(y), y).detach().requires_grad_(True)
            v_ = v.detach().requires_grad_(True)
            A_ = A.detach().requires_grad_(True)
            w_ = weight.detach().requires_grad_(True)
            energy = huber_energy(y_, v_, A_, w_, ctx.delta).sum()
            (g,) = torch.autograd.grad(energy, y_, create_graph=True)
            gv, gA, gw = torch.autograd.grad(g, (v_, A_, w_), grad_outputs=-z, allow_unused=True)
        gv = torch.zeros_like(v) if gv is None else gv
        gA = torch.zeros_like(A) if gA is None else gA
        gw = torch.zeros_like(weight) if gw is None else gw
        keep = ~all_zero
        gv = torch.where(keep.unsqueeze(-1).unsqueeze(-1), gv, torch.zeros_like(gv))
        gA = torch.where(keep.unsqueeze(-1).unsqueeze(-1).unsqueeze(-1), gA, torch.zeros_like(gA))
        gw = torch.where(keep.unsqueeze(-1), gw, torch.zeros_like(gw))
        return gv, gA, gw, None, None, None, None, None


def huber_fuse(v, A, weight, delta=1.0, max_iter=50, tol=1e-6, damping=0.0, init=None):
    """Pure-PyTorch probreg.huber_fuse for any d: the solver of fuse.h vectorised over
    problems (probreg/_fuse_torch.py, shared with the d > 3 kernel) with an implicit gradient
    that autograd derives from huber_energy (independent of the closed forms). Returns
    (y (..., d), hessian (..., d, d), iterations int32 (...), converged bool (...))."""
    return _HuberFuse.apply(v, A, weight, init, float(delta), int(max_iter), float(tol), float(damping))


def huber_fuse_mm_reference(v, A, weight=None, delta=1.0, *, iterations=None, tol=None, max_iter=100000, init=None):
    """Batched eager MM (paper app. E), vectorised over problems: what a user writes in
    PyTorch (einsum contractions, one batched torch.linalg.solve per step; A^T A and A^T v
    precomputed once). Starts at `init` or the weighted least-squares point; runs
    `iterations` MM steps, or (tol given) until every problem's step is <= tol (1 + ||y||)
    (one host sync per step; at most max_iter). float64-capable.
    Returns (y (..., d), steps run)."""
    if weight is None:
        weight = torch.ones(v.shape[:-1], dtype=v.dtype, device=v.device)
    if (iterations is None) == (tol is None):
        raise ValueError("huber_fuse_mm_reference: give exactly one of iterations or tol")
    G = torch.einsum("...nki,...nkj->...nij", A, A)
    Atv = torch.einsum("...nki,...nk->...ni", A, v)
    y = init.clone() if init is not None else torch.linalg.solve(
        torch.einsum("...n,...nij->...ij", weight, G), torch.einsum("...n,...ni->...i", weight, Atv))
    limit = iterations if iterations is not None else max_iter
    steps = 0
    for steps in range(1, limit + 1):
        e = torch.einsum("...nij,...j->...ni", A, y) - v
        r = torch.linalg.vector_norm(e, dim=-1)
        wpsi = weight * torch.where(r <= delta, 1.0, delta / r)
        y_new = torch.linalg.solve(torch.einsum("...n,...nij->...ij", wpsi, G), torch.einsum("...n,...ni->...i", wpsi, Atv))
        if tol is not None:
            step = torch.linalg.vector_norm(y_new - y, dim=-1) / (1 + torch.linalg.vector_norm(y_new, dim=-1))
            y = y_new
            if bool((step <= tol).all()):
                break
        else:
            y = y_new
    return y, steps


def huber_fuse_authors(v, A, delta=1.0, iterations=20):
    """The authors' fusion procedure: `iterations` (20) MM steps from the first estimate's
    point A_0^{-1} v_0, unweighted, no convergence test. Returns y (..., d)."""
    y = torch.linalg.solve(A[..., 0, :, :], v[..., 0, :])
    return huber_fuse_mm_reference(v, A, None, delta, iterations=iterations, init=y)[0]


# d = 3 closed-form benchmark peers (their own module; they build on the helpers above).
from .closed_form_3x3 import huber_nll_closed_form_3x3, spd_from_raw_closed_form_3x3  # noqa: E402
