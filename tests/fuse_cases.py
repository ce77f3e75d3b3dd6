"""Fusion test problems (random and hard) and an independent high-accuracy minimiser.

Problems are dicts of float64 CPU tensors v (P, n, d), A (P, n, d, d), weight (P, n) and
delta. The independent minimiser works per problem in numpy/scipy: BFGS on the convex
energy, then Powell's hybrid root finder (MINPACK hybr) on its gradient. The root finder
is what makes it accurate: it does not compare energies (whose rounding limits an
energy-based minimiser to about sqrt(eps) in y), and any root of the gradient of a convex
C1 energy is a global minimiser.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize, root

FUSE_DELTA = 1.0


def _near_identity(g, shape, spread=0.5):
    d = shape[-1]
    return torch.eye(d, dtype=torch.float64) + spread * torch.randn(*shape, generator=g, dtype=torch.float64)


def random_problems(P: int, n: int, d: int, seed: int = 0, spread: float = 2.0) -> dict:
    """A_i = I + 0.5 N(0, 1) (not symmetric), v_i ~ N(0, spread^2), w_i ~ U(0.2, 1)."""
    g = torch.Generator().manual_seed(seed)
    A = _near_identity(g, (P, n, d, d))
    v = spread * torch.randn(P, n, d, generator=g, dtype=torch.float64)
    w = 0.2 + 0.8 * torch.rand(P, n, generator=g, dtype=torch.float64)
    return {"v": v, "A": A, "weight": w, "delta": FUSE_DELTA}


def far_apart_problems(P: int, d: int, seed: int = 1) -> dict:
    """Two estimates whose centres A_i^{-1} v_i are 20x their scale delta / a_i apart
    (A_i = a_i (I + 0.2 N), a_i ~ U(0.5, 2), random weights)."""
    g = torch.Generator().manual_seed(seed)
    a = 0.5 + 1.5 * torch.rand(P, 2, 1, 1, generator=g, dtype=torch.float64)
    A = a * _near_identity(g, (P, 2, d, d), 0.2)
    direction = torch.nn.functional.normalize(torch.randn(P, d, generator=g, dtype=torch.float64), dim=-1)
    scale = FUSE_DELTA / a.reshape(P, 2).min(-1).values
    centre0 = torch.randn(P, d, generator=g, dtype=torch.float64)
    centres = torch.stack([centre0, centre0 + 20.0 * scale.unsqueeze(-1) * direction], dim=1)
    v = (A @ centres.unsqueeze(-1)).squeeze(-1)
    w = 0.2 + 0.8 * torch.rand(P, 2, generator=g, dtype=torch.float64)
    return {"v": v, "A": A, "weight": w, "delta": FUSE_DELTA}


def nearly_singular_problems(P: int, n: int, d: int, seed: int = 2) -> dict:
    """Every A_i = U diag(s) V^T with its smallest singular value 1e-6 (random directions),
    others in [0.5, 2]."""
    g = torch.Generator().manual_seed(seed)
    U, _, Vh = torch.linalg.svd(torch.randn(P, n, d, d, generator=g, dtype=torch.float64))
    s = 0.5 + 1.5 * torch.rand(P, n, d, generator=g, dtype=torch.float64)
    s[..., -1] = 1e-6
    A = U @ torch.diag_embed(s) @ Vh
    v = 2.0 * torch.randn(P, n, d, generator=g, dtype=torch.float64)
    w = 0.2 + 0.8 * torch.rand(P, n, generator=g, dtype=torch.float64)
    return {"v": v, "A": A, "weight": w, "delta": FUSE_DELTA}


def spread_out_problems(P: int, n: int, d: int, seed: int = 3) -> dict:
    """Estimates 30 units apart with delta = 1: at y* (almost) every residual lies outside
    delta (all_outside() selects the problems where all do)."""
    out = random_problems(P, n, d, seed=seed, spread=30.0)
    return out


def with_zero_weights(problems: dict, seed: int = 4, pad_value=float("nan")) -> tuple[dict, torch.Tensor]:
    """The same problems with the last estimate of every other problem (and the first of
    some others) removed by weight 0 and its v/A overwritten with `pad_value` (None: kept).
    Returns (padded problems, mask of the zero weights)."""
    g = torch.Generator().manual_seed(seed)
    v, A, w = problems["v"].clone(), problems["A"].clone(), problems["weight"].clone()
    P, n = w.shape
    zero = torch.zeros(P, n, dtype=torch.bool)
    zero[::2, -1] = True
    zero[1::4, 0] = torch.rand(zero[1::4, 0].shape, generator=g) < 0.5
    zero[:, 0] = zero[:, 0] & ~zero[:, -1]  # keep at least one estimate
    w[zero] = 0.0
    if pad_value is not None:
        v[zero] = pad_value
        A[zero] = pad_value
    return {"v": v, "A": A, "weight": w, "delta": problems["delta"]}, zero


def concat(*problem_sets: dict) -> dict:
    """Problem sets stacked along the batch; smaller n padded with zero-weight estimates
    (v = 0, A = I, so the padding is finite)."""
    n = max(p["weight"].shape[-1] for p in problem_sets)

    def pad(p):
        extra = n - p["weight"].shape[-1]
        P, d = p["v"].shape[0], p["v"].shape[-1]
        return {
            "v": torch.cat([p["v"], torch.zeros(P, extra, d, dtype=p["v"].dtype)], 1),
            "A": torch.cat([p["A"], torch.eye(d, dtype=p["A"].dtype).expand(P, extra, d, d)], 1),
            "weight": torch.cat([p["weight"], torch.zeros(P, extra, dtype=p["weight"].dtype)], 1),
        }

    padded = [pad(p) for p in problem_sets]
    return {
        "v": torch.cat([p["v"] for p in padded]),
        "A": torch.cat([p["A"] for p in padded]),
        "weight": torch.cat([p["weight"] for p in padded]),
        "delta": problem_sets[0]["delta"],
    }


def shared_null_direction_problems(P: int, n: int, d: int, seed: int = 3, eps: float = 1e-6,
                                   noise: float = 10.0) -> dict:
    """n estimates A_i = U_i diag(s_i) V^T sharing their right singular vectors V, with the
    smallest singular value eps along the same direction for all of them (s_i in [0.5, 2]
    otherwise), v_i = A_i y + noise N(0, 1), unit weights: E has a flat direction, where
    H's smallest eigenvalue is ~eps^2 and a step test on y is rounding-limited."""
    g = torch.Generator().manual_seed(seed)
    Vh = torch.linalg.qr(torch.randn(P, 1, d, d, generator=g, dtype=torch.float64))[0].transpose(-1, -2)
    U = torch.linalg.qr(torch.randn(P, n, d, d, generator=g, dtype=torch.float64))[0]
    s = 0.5 + 1.5 * torch.rand(P, n, d, generator=g, dtype=torch.float64)
    s[..., -1] = eps
    A = U @ torch.diag_embed(s) @ Vh.expand(P, n, d, d)
    y = torch.randn(P, 1, d, 1, generator=g, dtype=torch.float64)
    v = (A @ y).squeeze(-1) + noise * torch.randn(P, n, d, generator=g, dtype=torch.float64)
    return {"v": v, "A": A, "weight": torch.ones(P, n, dtype=torch.float64), "delta": FUSE_DELTA}


# ---------------------------------------------------------------- independent minimiser
def _terms(y, v, A, w, delta):
    active = w > 0
    A, v, w = A[active], v[active], w[active]
    e = A @ y - v
    r = np.linalg.norm(e, axis=-1)
    inside = r <= delta
    psi = np.where(inside, 1.0, delta / np.where(inside, 1.0, r))
    return A, v, w, e, r, inside, psi


def energy_np(y, v, A, w, delta):
    A, v, w, e, r, inside, psi = _terms(y, v, A, w, delta)
    return float((w * np.where(inside, 0.5 * r * r, delta * (r - 0.5 * delta))).sum())


def gradient_np(y, v, A, w, delta):
    A, v, w, e, r, inside, psi = _terms(y, v, A, w, delta)
    return np.einsum("n,nji,nj->i", w * psi, A, e)


def hessian_np(y, v, A, w, delta):
    A, v, w, e, r, inside, psi = _terms(y, v, A, w, delta)
    d = y.shape[0]
    u = e / np.where(inside, 1.0, r)[:, None]
    J = psi[:, None, None] * (np.eye(d) - np.where(inside[:, None, None], 0.0, u[:, :, None] * u[:, None, :]))
    return np.einsum("n,nki,nkl,nlj->ij", w, A, J, A)


def independent_minimiser(problems: dict) -> torch.Tensor:
    """y* (P, d) float64 of every problem: BFGS from the weighted least-squares point, then
    hybr on grad E = 0 (xtol 1e-15)."""
    v = problems["v"].double().numpy()
    A = problems["A"].double().numpy()
    w = problems["weight"].double().numpy()
    delta = problems["delta"]
    out = np.empty(v.shape[0:1] + v.shape[2:])
    for p in range(v.shape[0]):
        args = (v[p], A[p], w[p], delta)
        act = w[p] > 0
        G = np.einsum("n,nki,nkj->ij", w[p][act], A[p][act], A[p][act])
        b = np.einsum("n,nki,nk->i", w[p][act], A[p][act], v[p][act])
        y0 = np.linalg.lstsq(G, b, rcond=None)[0]
        y1 = minimize(energy_np, y0, args=args, jac=gradient_np, method="BFGS", options={"gtol": 1e-12}).x
        sol = root(gradient_np, y1, args=args, jac=hessian_np, method="hybr", options={"xtol": 1e-15})
        out[p] = sol.x
    return torch.from_numpy(out)


def residual_norms(problems: dict, y: torch.Tensor) -> torch.Tensor:
    e = (problems["A"] @ y.unsqueeze(-2).unsqueeze(-1)).squeeze(-1) - problems["v"]
    return torch.linalg.vector_norm(e, dim=-1)


def scaled_error(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-problem max_k |y_k - ref_k| / (1 + max_k |ref_k|) in float64."""
    y = y.double()
    ref = ref.double()
    return (y - ref).abs().amax(-1) / (1.0 + ref.abs().amax(-1))


def round_to(problems: dict, dtype: torch.dtype) -> dict:
    """Inputs rounded to `dtype` and back to float64 (the problem a low-precision call solves)."""
    return {k: (t.to(dtype).double() if isinstance(t, torch.Tensor) else t) for k, t in problems.items()}


__all__ = [
    "FUSE_DELTA",
    "random_problems",
    "far_apart_problems",
    "nearly_singular_problems",
    "spread_out_problems",
    "shared_null_direction_problems",
    "with_zero_weights",
    "concat",
    "energy_np",
    "gradient_np",
    "hessian_np",
    "independent_minimiser",
    "residual_norms",
    "scaled_error",
    "round_to",
    "math",
]
