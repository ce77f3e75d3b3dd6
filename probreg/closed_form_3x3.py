"""Closed-form pure-PyTorch peers for d = 3 (benchmarks, eager or under torch.compile).

Elementwise tensor code only (no eigh, no batched matmul), so that torch.compile fuses
each into a few kernels: the fair "what a PyTorch user would write" peer of the fused
ops for 3x3, as spd_from_raw_closed_form_2x2 is for 2x2. Re-exported by
probreg.reference.

Eigenvalues: the trigonometric solution of the characteristic cubic (Smith 1961),
l1 <= l2 <= l3. A = g(B) by Newton's form of the interpolating polynomial,
    A = g(l1) I + g[l1, l2] (B - l1 I) + g[l1, l2, l3] (B - l1 I)(B - l2 I),
with the divided differences replaced by g' and g''/2 at exact ties (so c*I and
repeated pairs are exact). Near ties and in float32 the cubic loses accuracy (its error
grows like eps * ||B|| / gap in the eigenvalues); the benchmark reports it.
"""
from __future__ import annotations

import math

import torch

from .packing import INV_SQRT2
from .reference import _nll_normalizer, _nll_reduce, _rho_from_components, remap_g, remap_log_g


def _g_prime(l: torch.Tensor, theta: float) -> torch.Tensor:
    return torch.where(l > theta, torch.ones_like(l), torch.exp(torch.clamp(l / theta - 1.0, max=0.0)))


def _g_second_half(l: torch.Tensor, theta: float) -> torch.Tensor:
    """g''(l) / 2 (0 on the linear branch)."""
    return torch.where(l > theta, torch.zeros_like(l), torch.exp(torch.clamp(l / theta - 1.0, max=0.0)) / (2 * theta))


def _divided(num: torch.Tensor, den: torch.Tensor, at_tie: torch.Tensor) -> torch.Tensor:
    """num / den, or at_tie where den == 0 (no NaN in either branch's gradient)."""
    tie = den == 0
    return torch.where(tie, at_tie, num / torch.where(tie, torch.ones_like(den), den))


def _eig_and_remap(raw: torch.Tensor, theta: float):
    """raw (..., 6) -> eigenvalues (l1, l2, l3) and the 6 unique entries of A."""
    b00, b11, b22 = raw[..., 0], raw[..., 3], raw[..., 5]
    b01, b02, b12 = raw[..., 1] * INV_SQRT2, raw[..., 2] * INV_SQRT2, raw[..., 4] * INV_SQRT2
    q = (b00 + b11 + b22) / 3.0
    c00, c11, c22 = b00 - q, b11 - q, b22 - q
    off = b01 * b01 + b02 * b02 + b12 * b12
    p = torch.sqrt((c00 * c00 + c11 * c11 + c22 * c22 + 2.0 * off) / 6.0 + 1e-30)
    det = c00 * (c11 * c22 - b12 * b12) - b01 * (b01 * c22 - b12 * b02) + b02 * (b01 * b12 - c11 * b02)
    r = torch.clamp(det / (2.0 * p * p * p), -1.0 + 1e-7, 1.0 - 1e-7)  # acos' stays finite
    phi = torch.acos(r) / 3.0
    l3 = q + 2.0 * p * torch.cos(phi)
    l1 = q + 2.0 * p * torch.cos(phi + 2.0 * math.pi / 3.0)
    l2 = 3.0 * q - l1 - l3
    g1, g2, g3 = remap_g(l1, theta), remap_g(l2, theta), remap_g(l3, theta)
    d12 = _divided(g2 - g1, l2 - l1, _g_prime(l1, theta))
    d23 = _divided(g3 - g2, l3 - l2, _g_prime(l2, theta))
    d123 = _divided(d23 - d12, l3 - l1, _g_second_half(l1, theta))
    # M1 = B - l1 I, M2 = B - l2 I; A = g1 I + d12 M1 + d123 M1 M2 (symmetric).
    m00, m11, m22 = b00 - l1, b11 - l1, b22 - l1
    n00, n11, n22 = b00 - l2, b11 - l2, b22 - l2
    p00 = m00 * n00 + b01 * b01 + b02 * b02
    p11 = b01 * b01 + m11 * n11 + b12 * b12
    p22 = b02 * b02 + b12 * b12 + m22 * n22
    p01 = m00 * b01 + b01 * n11 + b02 * b12
    p02 = m00 * b02 + b01 * b12 + b02 * n22
    p12 = b01 * b02 + m11 * b12 + b12 * n22
    a00 = g1 + d12 * m00 + d123 * p00
    a11 = g1 + d12 * m11 + d123 * p11
    a22 = g1 + d12 * m22 + d123 * p22
    a01 = d12 * b01 + d123 * p01
    a02 = d12 * b02 + d123 * p02
    a12 = d12 * b12 + d123 * p12
    return (l1, l2, l3), (a00, a01, a02, a11, a12, a22)


def spd_from_raw_closed_form_3x3(raw: torch.Tensor, theta: float = 1.0) -> torch.Tensor:
    """Closed-form pure-PyTorch spd_from_raw for d = 3: raw (..., 6) -> A (..., 3, 3)."""
    _, (a00, a01, a02, a11, a12, a22) = _eig_and_remap(raw, theta)
    return torch.stack([a00, a01, a02, a01, a11, a12, a02, a12, a22], dim=-1).unflatten(-1, (3, 3))


def huber_nll_closed_form_3x3(pred, target, delta=1.0, theta=1.0, *, parameterization="v", family="huber",
                              reduction="mean", normalized=True, weight=None):
    """Closed-form pure-PyTorch NLL for d = 3, full covariance: pred (..., 9) = (loc, raw),
    target (..., 3); log|A| = sum log g(l_i) from the trigonometric eigenvalues."""
    (l1, l2, l3), (a00, a01, a02, a11, a12, a22) = _eig_and_remap(pred[..., 3:], theta)
    v0, v1, v2 = pred[..., 0], pred[..., 1], pred[..., 2]
    y0, y1, y2 = target[..., 0], target[..., 1], target[..., 2]
    if parameterization == "mu":
        z0, z1, z2 = y0 - v0, y1 - v1, y2 - v2
        r = [a00 * z0 + a01 * z1 + a02 * z2, a01 * z0 + a11 * z1 + a12 * z2, a02 * z0 + a12 * z1 + a22 * z2]
    else:
        r = [a00 * y0 + a01 * y1 + a02 * y2 - v0, a01 * y0 + a11 * y1 + a12 * y2 - v1,
             a02 * y0 + a12 * y1 + a22 * y2 - v2]
    log_det = remap_log_g(l1, theta) + remap_log_g(l2, theta) + remap_log_g(l3, theta)
    loss = -log_det + _rho_from_components(r, family, delta)
    if normalized:
        loss = loss + _nll_normalizer(3, family, delta)
    return _nll_reduce(loss, weight, reduction)
