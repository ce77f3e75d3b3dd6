"""Fusion of Huber estimates in plain torch ops, any d: the safeguarded Newton/MM solver of
csrc/include/probreg/fuse.h vectorised over problems (the d > 3 kernel,
probreg/_fallback.py), and the implicit gradient's closed forms as differentiable torch
composites: the backward (the d > 3 backward kernel, and through torch.func the exact
second-order rule of both huber_fuse operators, probreg/_second_order.py) and the
forward-mode tangent (the jvp rule of both, probreg/_autograd.py).

Shapes: y (..., d), v (..., n, d), A (..., n, d, d) any square matrices, weight (..., n).
Per estimate at y: e = A y - v, r = ||e||, inside = (r <= delta), psi = 1 inside and
delta / r outside, s = psi e = grad_e h, J = I inside and psi (I - e e^T / r^2) outside
(the Hessian of h; one-sided at r == delta: the inside piece, fuse.h's `r <= delta`).
    grad_y E = sum_i w_i A_i^T s_i,   H = sum_i w_i A_i^T J_i A_i
    z = (H + damping I)^+ grad_y      (eigenvalues <= 16 n_active eps max|eigenvalue| cut)
    backward: grad_v_i = w_i J_i A_i z, grad_A_i = -w_i (s_i z^T + J_i A_i z y^T),
              grad_w_i = -(A_i z) . s_i
    tangent:  dy = -(H + damping I)^+ sum_i [dw_i A_i^T s_i + w_i (dA_i^T s_i + A_i^T J_i (dA_i y - dv_i))]
An estimate with weight 0 only enters through dw (how adding it would move y*), 0 where it
holds non-finite padding; a problem whose weights are all 0 gets zero gradients; a
negative or NaN weight makes every gradient of its problem NaN.
"""
from __future__ import annotations

import math

import torch

_PINV_REL = 16.0  # fuse.h kFusePinvRel


def _fuse_evaluate(y, v, A, weight, delta):
    """Energy, gradient, true Hessian H, MM matrix N >= H, gradient-term scale and the
    number of active estimates at y, vectorised over problems (closed forms of fuse.h)."""
    active = weight > 0
    e = (A @ y.unsqueeze(-2).unsqueeze(-1)).squeeze(-1) - v
    r = torch.linalg.vector_norm(e, dim=-1)
    inside = r <= delta
    r_safe = torch.where(inside | (r == 0), torch.ones_like(r), r)
    psi = torch.where(inside, torch.ones_like(r), delta / r_safe)
    finite_delta = delta if math.isfinite(delta) else 1.0
    h = torch.where(inside, 0.5 * r * r, finite_delta * (r - 0.5 * finite_delta))
    zero = torch.zeros_like(r)
    w = torch.where(active, weight, zero)
    wpsi = torch.where(active, w * psi, zero)
    q = (A.transpose(-1, -2) @ e.unsqueeze(-1)).squeeze(-1)  # A^T e
    G = A.transpose(-1, -2) @ A
    qu = torch.where(inside.unsqueeze(-1), torch.zeros_like(q), q / r_safe.unsqueeze(-1))
    Hi = G - qu.unsqueeze(-1) * qu.unsqueeze(-2)
    mask = active.unsqueeze(-1)
    grad = torch.where(mask, wpsi.unsqueeze(-1) * q, torch.zeros_like(q)).sum(-2)
    mask2 = active.unsqueeze(-1).unsqueeze(-1)
    wpsi2 = wpsi.unsqueeze(-1).unsqueeze(-1)
    return {
        "energy": torch.where(active, w * h, zero).sum(-1),
        "grad": grad,
        "grad_scale": torch.where(active, wpsi * q.abs().sum(-1), zero).sum(-1),
        "hess": torch.where(mask2, wpsi2 * Hi, torch.zeros_like(G)).sum(-3),
        "mm": torch.where(mask2, wpsi2 * G, torch.zeros_like(G)).sum(-3),
        "active": active.sum(-1),
        "weights_ok": ~((weight < 0) | torch.isnan(weight)).any(-1),
    }


def _fuse_floor(ev, eps):
    """Pivot floor of fuse.h: 100 * n_active * eps * trace(N)."""
    return 100.0 * ev["active"].to(ev["mm"].dtype) * eps * torch.diagonal(ev["mm"], dim1=-2, dim2=-1).sum(-1)


def _psd_solve(M, b, floor):
    """x = M^+ b for symmetric PSD M through eigh; eigenvalues <= floor count as zero.
    Returns (x, every eigenvalue > floor)."""
    l, V = torch.linalg.eigh(M)
    keep = l > floor.unsqueeze(-1)
    inv = torch.where(keep, 1.0 / torch.where(keep, l, torch.ones_like(l)), torch.zeros_like(l))
    x = (V @ (inv.unsqueeze(-1) * (V.transpose(-1, -2) @ b.unsqueeze(-1)))).squeeze(-1)
    return x, keep.all(-1)


def huber_fuse_weighted_least_squares(v, A, weight):
    """(sum w A^T A)^+ sum w A^T v per problem (every estimate on its quadratic piece)."""
    w = torch.where(weight > 0, weight, torch.zeros_like(weight))
    At = A.transpose(-1, -2)
    G = (w.unsqueeze(-1).unsqueeze(-1) * (At @ A)).sum(-3)
    rhs = (w.unsqueeze(-1) * (At @ v.unsqueeze(-1)).squeeze(-1)).sum(-2)
    n_active = (weight > 0).sum(-1).to(v.dtype)
    floor = 100.0 * n_active * torch.finfo(v.dtype).eps * torch.diagonal(G, dim1=-2, dim2=-1).sum(-1)
    return _psd_solve(G, rhs, floor)[0]


def _blended_step(ev, mu, floor):
    M = ev["hess"] + mu.unsqueeze(-1).unsqueeze(-1) * (ev["mm"] - ev["hess"])
    return _psd_solve(M, -ev["grad"], floor)


def _propose(ev, mu, floor):
    """Vectorised fuse_propose (fuse.h): Newton where mu < 1e-6 and H is PD enough, else the
    blended step with mu raised x8 (from >= 1e-12) until PD enough or mu = 1."""
    p_newton, ok_newton = _blended_step(ev, torch.zeros_like(mu), floor)
    try_newton = mu < 1e-6
    use_newton = try_newton & ok_newton
    mu_cur = torch.where(use_newton, torch.zeros_like(mu), torch.where(try_newton, mu.clamp_min(1e-12), mu))
    p = torch.where(use_newton.unsqueeze(-1), p_newton, torch.zeros_like(p_newton))
    need = ~use_newton
    while bool(need.any()):
        pm, ok = _blended_step(ev, mu_cur, floor)
        take = need & (ok | (mu_cur >= 1))
        p = torch.where(take.unsqueeze(-1), pm, p)
        need = need & ~take
        mu_cur = torch.where(need, (8.0 * mu_cur).clamp_max(1.0), mu_cur)
    return p, mu_cur, ok_newton


def _select(mask, new, old):
    return {k: torch.where(mask.view(mask.shape + (1,) * (old[k].dim() - mask.dim())), new[k], old[k]) for k in old}


def huber_fuse_solve(v, A, weight, delta, max_iter, tol, init):
    """The solver of fuse.h, vectorised over problems in plain PyTorch (host syncs once per
    iteration). Returns (y, hessian, iterations int32, converged bool)."""
    dtype = v.dtype
    eps = torch.finfo(dtype).eps
    y = init.to(dtype).clone() if init is not None else huber_fuse_weighted_least_squares(v, A, weight)
    ev = _fuse_evaluate(y, v, A, weight, delta)
    batch = y.shape[:-1]
    dev = y.device

    def finite(e):
        return e["weights_ok"] & torch.isfinite(e["energy"]) & torch.isfinite(e["grad"]).all(-1)

    all_zero = ev["weights_ok"] & (ev["active"] == 0)
    valid = finite(ev) & ~all_zero
    mu = torch.zeros(batch, dtype=dtype, device=dev)
    iterations = torch.zeros(batch, dtype=torch.int32, device=dev)
    converged = torch.zeros(batch, dtype=torch.bool, device=dev)
    running = valid.clone()
    stale = torch.zeros(batch, dtype=torch.bool, device=dev)
    for _ in range(max_iter):
        running = running & (iterations < max_iter)
        if not bool(running.any()):
            break
        floor = _fuse_floor(ev, eps)
        p, mu_used, ok_newton = _propose(ev, mu, floor)
        bound = tol * (1.0 + torch.linalg.vector_norm(y, dim=-1))
        small = running & (torch.linalg.vector_norm(p, dim=-1) <= bound)
        p_newton, _ = _blended_step(ev, torch.zeros_like(mu), floor)
        swap = small & (mu_used > 0) & ok_newton & (torch.linalg.vector_norm(p_newton, dim=-1) <= 4 * bound)
        p_final = torch.where(swap.unsqueeze(-1), p_newton, p)
        y = torch.where(small.unsqueeze(-1), y + p_final, y)
        iterations = iterations + small.to(torch.int32)
        converged = converged | small
        stale = stale | small
        running = running & ~small
        grad_small = ~ok_newton & (torch.linalg.vector_norm(ev["grad"], dim=-1) <= tol * ev["grad_scale"])
        pending = running.clone()
        while bool(pending.any()):
            cand = y + p
            trial = _fuse_evaluate(cand, v, A, weight, delta)
            ok = finite(trial)
            bad = pending & ~ok
            valid = valid & ~bad
            running = running & ~bad
            pending = pending & ok
            slope = (ev["grad"] * p).sum(-1)
            accept = pending & ((mu_used >= 1) | (trial["energy"] <= ev["energy"] * (1 + 4 * eps) + 1e-4 * slope))
            y = torch.where(accept.unsqueeze(-1), cand, y)
            ev = _select(accept, trial, ev)
            mu = torch.where(accept, 0.25 * mu_used, mu)
            iterations = iterations + accept.to(torch.int32)
            done = accept & grad_small
            converged = converged | done
            running = running & ~done
            reject = pending & ~accept
            pending = reject
            if bool(reject.any()):
                mu_r = torch.where(reject, (8.0 * mu_used).clamp(min=1.0 / 64.0, max=1.0), mu)
                p_r, mu_used_r, _ = _propose(ev, mu_r, floor)
                p = torch.where(reject.unsqueeze(-1), p_r, p)
                mu_used = torch.where(reject, mu_used_r, mu_used)
    ev_final = _fuse_evaluate(y, v, A, weight, delta)
    valid = valid & finite(ev_final)
    hessian = ev_final["hess"]
    nan = torch.full_like(y, float("nan"))
    y = torch.where(valid.unsqueeze(-1), y, nan)
    hessian = torch.where(valid.unsqueeze(-1).unsqueeze(-1), hessian, torch.full_like(hessian, float("nan")))
    hessian = torch.where(all_zero.unsqueeze(-1).unsqueeze(-1), torch.zeros_like(hessian), hessian)
    converged = converged & valid
    return y, hessian, iterations, converged


# ---------------------------------------------------------------- implicit gradient
class _Terms:
    """The per-estimate quantities at y, differentiable in (y, v, A, weight). Non-finite
    padding of a zero-weight estimate is replaced by zeros (fuse.h zeroes it too), and a
    problem whose weights are all 0 is evaluated at y = 0 instead of its NaN y*, so that no
    NaN reaches a derivative through a masked branch."""

    def __init__(self, y, v, A, weight, delta):
        self.active = weight > 0
        self.weights_ok = ~((weight < 0) | torch.isnan(weight)).any(-1)
        self.undefined = self.weights_ok & ~self.active.any(-1)
        finite = torch.isfinite(A).all(-1).all(-1) & torch.isfinite(v).all(-1)
        keep = self.active | finite
        self.A = torch.where(keep[..., None, None], A, torch.zeros_like(A))
        v = torch.where(keep[..., None], v, torch.zeros_like(v))
        self.y = torch.where(self.undefined[..., None], torch.zeros_like(y), y)
        # A zero weight contributes nothing but keeps its derivative (how adding the estimate
        # would move y*); only non-finite padding is cut off.
        self.w = torch.where(keep, weight, torch.zeros_like(weight))
        self.e = (self.A @ self.y[..., None, :, None]).squeeze(-1) - v
        with torch.no_grad():
            r = torch.linalg.vector_norm(self.e, dim=-1)
        self.inside = r <= delta
        sq = (self.e * self.e).sum(-1)
        self.inv_r = torch.where(self.inside, torch.zeros_like(sq), torch.rsqrt(torch.where(self.inside, torch.ones_like(sq), sq)))
        finite_delta = delta if math.isfinite(delta) else 1.0
        self.psi = torch.where(self.inside, torch.ones_like(sq), finite_delta * self.inv_r)
        self.s = self.psi[..., None] * self.e

    def J(self, x):
        """J_i x_i for x (..., n, d)."""
        proj = (self.e * x).sum(-1, keepdim=True) * (self.inv_r * self.inv_r)[..., None]
        return self.psi[..., None] * (x - self.e * proj)

    def hessian(self):
        """H = sum_i w_i A_i^T J_i A_i (..., d, d)."""
        eA = self.e.unsqueeze(-2) @ self.A  # e_i^T A_i (..., n, 1, d)
        scale = (self.inv_r * self.inv_r)[..., None, None]
        JA = self.psi[..., None, None] * (self.A - self.e.unsqueeze(-1) * eA * scale)
        return (self.w[..., None, None] * (self.A.transpose(-1, -2) @ JA)).sum(-3)

    def finish(self, x):
        """x where the problem is defined, 0 where all weights are 0, NaN for bad weights."""
        shape = self.undefined.shape + (1,) * (x.dim() - self.undefined.dim())
        x = torch.where(self.undefined.view(shape), torch.zeros_like(x), x)
        return torch.where(self.weights_ok.view(shape), x, torch.full_like(x, float("nan")))


def damped_solve(H, damping, n_active, g):
    """(H + damping I)^+ g (..., d), the pseudo-inverse rule of fuse.h's backward:
    eigenvalues <= 16 max(n_active, 1) eps max|eigenvalue| count as zero. Differentiable
    (torch.linalg.pinv's derivative at fixed rank)."""
    eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)
    rtol = _PINV_REL * torch.clamp(n_active, min=1).to(H.dtype) * torch.finfo(H.dtype).eps
    M = H + damping * eye
    return (torch.linalg.pinv(M, rtol=rtol, hermitian=True) @ g.unsqueeze(-1)).squeeze(-1)


def fuse_backward(grad_y, y, v, A, weight, delta, damping):
    """(grad_v, grad_A, grad_weight) of the implicit gradient at y (= y*), the semantics of
    probreg::_huber_fuse_backward, differentiable in every tensor argument."""
    t = _Terms(y, v, A, weight, delta)
    z = damped_solve(t.hessian(), damping, t.active.sum(-1), grad_y)
    q = (t.A @ z[..., None, :, None]).squeeze(-1)  # A_i z
    Jq = t.J(q)
    w = t.w[..., None]
    grad_v = w * Jq
    grad_A = -w[..., None] * (t.s[..., :, None] * z[..., None, None, :] + Jq[..., :, None] * t.y[..., None, None, :])
    grad_weight = -(q * t.s).sum(-1)
    return t.finish(grad_v), t.finish(grad_A), t.finish(grad_weight)


def fuse_tangent(y, v, A, weight, dv, dA, dweight, delta, damping):
    """dy = -(H + damping I)^+ d(grad_y E)[dv, dA, dweight] at y (= y*): the forward-mode
    tangent of huber_fuse's y (tangents may be None), differentiable in every argument."""
    t = _Terms(y, v, A, weight, delta)
    dg = torch.zeros_like(t.y)
    At = t.A.transpose(-1, -2)
    if dweight is not None:
        dg = dg + (dweight[..., None] * (At @ t.s[..., None]).squeeze(-1)).sum(-2)
    if dA is not None:
        dA = torch.where(t.active[..., None, None], dA, torch.zeros_like(dA))
        inner = (dA.transpose(-1, -2) @ t.s[..., None]).squeeze(-1) + (
            At @ t.J((dA @ t.y[..., None, :, None]).squeeze(-1))[..., None]
        ).squeeze(-1)
        dg = dg + (t.w[..., None] * inner).sum(-2)
    if dv is not None:
        dv = torch.where(t.active[..., None], dv, torch.zeros_like(dv))
        dg = dg - (t.w[..., None] * (At @ t.J(dv)[..., None]).squeeze(-1)).sum(-2)
    dy = -damped_solve(t.hessian(), damping, t.active.sum(-1), dg)
    return t.finish(dy)
