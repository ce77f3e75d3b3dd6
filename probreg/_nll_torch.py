"""Per-target negative log-likelihood in plain torch ops, any d: the loss, its gradient and
its Hessian-vector product. The loss and gradient are the d > 3 kernels
(probreg/_fallback.py); the Hessian-vector product is the exact second-order rule of both
the fused and the fallback NLL operators (probreg/_second_order.py).

Layout and semantics are those of csrc/include/probreg/huber.h: pred (..., W) = location
(v or mu, d values) then the covariance parameters (full: packed raw B; diagonal: raw
diagonal b; identity: none), target y (..., d). A = F(B) (probreg/_spectral.py), z = y
("v") or y - mu ("mu"), r = A z - v ("v") or A z ("mu"), s = ||r||, u = r / s.
    loss  = -sum_i log g(l_i) + rho(s)                      (without the constant log c)
    grad:  t = rho'(s) u;  dz: A t;  dv: -t;  dB: DK_g(sym(t z^T)) - V diag(h(l)) V^T
with h = (log g)' = 1 / max(l, theta). The Hessian of psi(r) = rho(||r||) is
    a u u^T + b (I - u u^T),   a = rho''(s),  b = rho'(s) / s,
and the Hessian-vector product in direction (dv, dB, dz), dA = DK_g(dB),
dr = dA z + A dz - dv, w = Hess(psi) dr, is
    dz: A w + dA t;   dv: -w;   dB: DK_g(sym(w z^T + t dz^T)) + d2F[dB, t z^T] - DK_h(dB)
(mu: the location gets -(dz part); diagonal covariance: the same with V = I elementwise).

Conventions where the loss is not twice differentiable:
- huber at s == delta (rho'' jumps from 1 to 0, rho' is continuous): rho'' = 1/2, the mean
  of the one-sided values (the limit of a central difference, so gradgradcheck holds there);
  delta == 0: rho' = 0 everywhere, Hessian 0.
- laplace at s == 0 (rho' itself jumps): the kernel's subgradient rho' = 0 there, Hessian 0.
- charbonnier beyond s = 1e8: the kernel's asymptotic rho' = 1 (Hessian (1/s)(I - u u^T)).
- g'' and h' = (log g)'' at an eigenvalue exactly at theta: the means of the one-sided
  values, 1/(2 theta) and -1/(2 theta^2) (probreg/_spectral.py).
"""
from __future__ import annotations

import torch

from . import _spectral as spectral
from .packing import pack_sym, unpack_sym

HUBER, GAUSS, LAPLACE, CHARBONNIER = 0, 1, 2, 3
IDENTITY, DIAGONAL, FULL = 0, 1, 2
_CHARBONNIER_FAR = 1e8  # csrc/include/probreg/huber.h charbonnier_far


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _Target:
    """One batch of targets in the compute dtype: location, A and its eigen-decomposition,
    z, r and the rho coefficients."""

    def __init__(self, pred, target, delta, theta, family, covariance, mu):
        d = target.shape[-1]
        dtype = spectral.compute_dtype(pred.dtype)
        pred, target = pred.to(dtype), target.to(dtype)
        self.d, self.theta, self.covariance, self.mu = d, theta, covariance, mu
        self.loc = pred[..., :d]
        self.z = target - self.loc if mu else target
        if covariance == FULL:
            self.l, self.V = spectral.decompose(unpack_sym(pred[..., d:]))
            self.g = spectral.remap_g(self.l, theta)
            Az = self.V @ (self.g.unsqueeze(-1) * (self.V.transpose(-1, -2) @ self.z.unsqueeze(-1)))
            Az = Az.squeeze(-1)
        elif covariance == DIAGONAL:
            self.l = pred[..., d:]
            self.g = spectral.remap_g(self.l, theta)
            Az = self.g * self.z
        else:
            Az = self.z
        self.r = Az if mu else Az - self.loc
        self.s = torch.linalg.vector_norm(self.r, dim=-1)
        positive = self.s > 0
        self.u = self.r / torch.where(positive, self.s, torch.ones_like(self.s)).unsqueeze(-1)
        self.rho, self.rho_prime, self.a, self.b = _rho_terms(self.s, positive, family, delta)

    def apply_A(self, x):
        if self.covariance == FULL:
            return (self.V @ (self.g.unsqueeze(-1) * (self.V.transpose(-1, -2) @ x.unsqueeze(-1)))).squeeze(-1)
        if self.covariance == DIAGONAL:
            return self.g * x
        return x

    def neg_log_det(self):
        if self.covariance == IDENTITY:
            return torch.zeros_like(self.s)
        return -spectral.remap_log_g(self.l, self.theta).sum(-1)


def _rho_terms(s, positive, family, delta):
    """rho(s), rho'(s) and the Hessian coefficients a = rho''(s), b = rho'(s)/s."""
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    s_safe = torch.where(positive, s, one)
    if family == HUBER:
        inside = (s <= delta) & (delta > 0)
        rho = torch.where(s <= delta, 0.5 * s * s, delta * (s - 0.5 * delta))
        rho_prime = torch.clamp(s, max=delta)
        # rho'' jumps from 1 to 0 at s == delta: the mean 1/2 there
        a = torch.where(s == delta, torch.full_like(s, 0.5), torch.where(inside, one, zero))
        return rho, rho_prime, (a if delta > 0 else zero), torch.where(inside, one, delta / s_safe)
    if family == GAUSS:
        return 0.5 * s * s, s, one, one
    if family == LAPLACE:
        return s, torch.where(positive, one, zero), zero, torch.where(positive, 1.0 / s_safe, zero)
    if family == CHARBONNIER:
        near = s < _CHARBONNIER_FAR
        sc = torch.clamp(s, max=_CHARBONNIER_FAR)
        root = torch.sqrt(sc * sc + 1.0)
        rho = torch.where(near, sc * sc / (root + 1.0), s - 1.0)
        rho_prime = torch.where(near, sc / root, one)
        b = torch.where(near, 1.0 / root, 1.0 / s_safe)
        return rho, rho_prime, torch.where(near, b * b * b, zero), b
    raise ValueError(f"probreg: unknown NLL family code {family}")


def nll_loss(pred, target, delta, theta, family, covariance, mu):
    """Per-target loss (...) without the constant log c; float32 for half inputs."""
    t = _Target(pred, target, delta, theta, family, covariance, mu)
    return (t.neg_log_det() + t.rho).to(loss_dtype(pred.dtype))


def _masked(grad_loss, x):
    """grad_loss * x, exactly 0 where grad_loss == 0 (masked targets, NaN inputs included)."""
    go = grad_loss.unsqueeze(-1)
    return torch.where(go == 0, torch.zeros_like(x), go * x)


def _split_outputs(t, g_z, g_loc, g_cov, grad_loss, pred, target, need_grad_target):
    """Assemble (grad_pred, grad_target) in the input dtypes, scaled by grad_loss."""
    if t.mu:
        g_loc = -g_z
    parts = [g_loc] if g_cov is None else [g_loc, g_cov]
    go = grad_loss.to(g_z.dtype)
    grad_pred = _masked(go, torch.cat(parts, dim=-1)).to(pred.dtype)
    grad_target = _masked(go, g_z).to(target.dtype) if need_grad_target else target.new_empty(0)
    return grad_pred, grad_target


def nll_backward(grad_loss, pred, target, delta, theta, family, covariance, mu, need_grad_target):
    """(grad_pred (..., W), grad_target (..., d) or an empty tensor), the semantics of
    probreg::_huber_nll_backward."""
    t = _Target(pred, target, delta, theta, family, covariance, mu)
    grad_r = t.rho_prime.unsqueeze(-1) * t.u
    g_z = t.apply_A(grad_r)
    g_cov = None
    if covariance == FULL:
        K = spectral.remap_first_dd(t.l, theta)
        outer = grad_r.unsqueeze(-1) * t.z.unsqueeze(-2)
        h = spectral.remap_log_g_prime(t.l, theta)
        g_B = spectral.daleckii_krein(t.V, K, outer) - spectral.from_eigenbasis(t.V, torch.diag_embed(h))
        g_cov = pack_sym(g_B)
    elif covariance == DIAGONAL:
        g_cov = spectral.remap_g_prime(t.l, theta) * grad_r * t.z - spectral.remap_log_g_prime(t.l, theta)
    return _split_outputs(t, g_z, -grad_r, g_cov, grad_loss, pred, target, need_grad_target)


def nll_hessian_vector_product(grad_loss, pred, target, dpred, dtarget, delta, theta, family, covariance, mu,
                               need_grad_target):
    """grad_loss * Hess(loss) . (dpred, dtarget) per target, as (pred part (..., W),
    target part (..., d) or an empty tensor); exactly 0 where grad_loss == 0."""
    t = _Target(pred, target, delta, theta, family, covariance, mu)
    d = t.d
    dtype = t.s.dtype
    dpred = dpred.to(dtype)
    dloc, dcov = dpred[..., :d], dpred[..., d:]
    dz = dtarget.to(dtype) - dloc if mu else dtarget.to(dtype)
    grad_r = t.rho_prime.unsqueeze(-1) * t.u
    g_cov = None
    if covariance == FULL:
        K = spectral.remap_first_dd(t.l, theta)
        dB = unpack_sym(dcov)
        dA = spectral.daleckii_krein(t.V, K, dB)
        dA_z = (dA @ t.z.unsqueeze(-1)).squeeze(-1)
        dA_t = (dA @ grad_r.unsqueeze(-1)).squeeze(-1)
    elif covariance == DIAGONAL:
        g_prime = spectral.remap_g_prime(t.l, theta)
        dA_z = g_prime * dcov * t.z
        dA_t = g_prime * dcov * grad_r
    else:
        dA_z = dA_t = torch.zeros_like(dz)
    dr = dA_z + t.apply_A(dz) - (0 if mu else dloc)
    u_dr = (t.u * dr).sum(-1, keepdim=True)
    w = t.a.unsqueeze(-1) * u_dr * t.u + t.b.unsqueeze(-1) * (dr - u_dr * t.u)
    g_z = t.apply_A(w) + dA_t
    if covariance == FULL:
        outer = w.unsqueeze(-1) * t.z.unsqueeze(-2) + grad_r.unsqueeze(-1) * dz.unsqueeze(-2)
        K3 = spectral.remap_second_dd(t.l, theta)
        K_h = spectral.log_g_prime_first_dd(t.l, theta)
        g_B = (
            spectral.daleckii_krein(t.V, K, outer)
            + spectral.daleckii_krein_second(t.V, K3, dB, grad_r.unsqueeze(-1) * t.z.unsqueeze(-2))
            - spectral.daleckii_krein(t.V, K_h, dB)
        )
        g_cov = pack_sym(g_B)
    elif covariance == DIAGONAL:
        g_second = spectral.remap_g_second(t.l, theta)
        h_prime = spectral.remap_log_g_second(t.l, theta)
        g_cov = g_prime * (w * t.z + grad_r * dz) + g_second * dcov * grad_r * t.z - h_prime * dcov
    return _split_outputs(t, g_z, -w, g_cov, grad_loss, pred, target, need_grad_target)
