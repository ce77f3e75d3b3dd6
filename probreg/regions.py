"""Probability regions of the L2 multivariate Huber distribution.

Under HuberL2(mu, A, delta) in R^d the standardised radius R = ||A (y - mu)|| has the
density r^(d-1) exp(-h_delta(r)) / m(d-1) on r >= 0 (probreg.normalizer), so the
p-probability region {y : ||A (y - mu)|| <= s_p} (an ellipsoid) has a radius s_p that
depends only on (d, delta, p). Its CDF in closed form, with the incomplete gamma
functions of probreg.normalizer:

    r <= delta:  int_0^r t^(d-1) e^(-t^2/2) dt      = 2^(d/2 - 1) gamma_lower(d/2, r^2/2)
    r >= delta:  int_r^inf t^(d-1) e^(-h_delta(t)) dt = e^(delta^2/2) delta^-d Gamma_upper(d, delta r)

and s_p is found by a safeguarded Newton iteration on log F (p <= 1/2) or log(1 - F)
(p > 1/2), in float64, bisecting whenever a Newton step leaves the bracket; both
logarithms are computed without cancellation, so radii are accurate to ~1e-14 relative
for every delta > 0 (delta = inf: the chi_d quantiles of the Gaussian) and p in [0, 1].
"""
from __future__ import annotations

import math

from . import _validation as check
from .normalizer import _LOG2, _constant_under_compile, _log_huber_moment, _log_lower_gamma, _log_upper_gamma

__all__ = ["huber_radius_cdf", "huber_region_radius"]


def _check(d, delta, op: str):
    """d an int >= 1, delta in (0, inf] (Python or numpy numbers; not bool, NaN or a tensor)."""
    return check.integer(d, "d", op, low=1), check.positive(delta, "delta", op, "a real number > 0 (inf: Gaussian)")


def _log_sub(a: float, b: float) -> float:
    """log(e^a - e^b), a >= b."""
    if b == -math.inf:
        return a
    return a + math.log(-math.expm1(b - a))


def _log_masses(d: int, delta: float, s: float):
    """(log P(R <= s), log P(R > s)), each without cancellation where it is the small one."""
    log_m = _log_huber_moment(d - 1, delta)
    half_d = 0.5 * d
    scale = (half_d - 1.0) * _LOG2  # a(d-1, r) = 2^(d/2 - 1) gamma_lower(d/2, r^2/2)
    if s <= delta:
        log_inside = scale + _log_lower_gamma(half_d, 0.5 * s * s)
        # inside mass beyond s: gamma_lower(d/2, delta^2/2) - gamma_lower(d/2, s^2/2) as upper-gamma difference
        upper_s = _log_upper_gamma(half_d, 0.5 * s * s)
        if math.isinf(delta):
            log_beyond = scale + upper_s
        else:
            upper_delta = _log_upper_gamma(half_d, 0.5 * delta * delta)
            ring = scale + _log_sub(upper_s, upper_delta) if upper_s > upper_delta else -math.inf
            tail = 0.5 * delta * delta - d * math.log(delta) + _log_upper_gamma(float(d), delta * delta)
            hi, lo = max(ring, tail), min(ring, tail)
            log_beyond = hi + math.log1p(math.exp(lo - hi)) if lo > -math.inf else hi
        return log_inside - log_m, log_beyond - log_m
    log_beyond = 0.5 * delta * delta - d * math.log(delta) + _log_upper_gamma(float(d), delta * s)
    log_s = log_beyond - log_m
    return math.log(-math.expm1(log_s)) if log_s < 0 else -math.inf, min(log_s, 0.0)


def _log_density(d: int, delta: float, s: float) -> float:
    """log of the radial density r^(d-1) exp(-h_delta(r)) / m(d-1) at s > 0."""
    h = 0.5 * s * s if s <= delta else delta * (s - 0.5 * delta)
    return (d - 1) * math.log(s) - h - _log_huber_moment(d - 1, delta)


@_constant_under_compile
def huber_radius_cdf(d: int, delta: float, s: float) -> float:
    """P(||A (y - mu)|| <= s) under the L2 Huber distribution in R^d (float64)."""
    op = "probreg.huber_radius_cdf"
    d, delta = _check(d, delta, op)
    s = check.real(s, "s", op, "a real number (not NaN; +-inf allowed)", low=-math.inf)
    if s <= 0:
        return 0.0
    if math.isinf(s):
        return 1.0
    log_in, log_out = _log_masses(d, delta, float(s))
    return math.exp(log_in) if log_in < math.log(0.5) else -math.expm1(log_out)


@_constant_under_compile
def huber_region_radius(d: int, delta: float, p: float) -> float:
    """The radius s_p of the p-probability region: P(||A (y - mu)|| <= s_p) = p.

    Args:
        d: dimension, an integer >= 1.
        delta: Huber threshold > 0 (inf gives the Gaussian: the chi_d quantile).
        p: probability in [0, 1] (0 -> 0.0, 1 -> inf).
    Returns:
        s_p as a float (~1e-14 relative accuracy). The region {y : ||A (y - mu)|| <= s_p}
        is the ellipsoid with semi-axes s_p / (singular values of A).
    """
    op = "probreg.huber_region_radius"
    d, delta = _check(d, delta, op)
    p = check.real(p, "p", op, "a probability in [0, 1]", low=0.0, high=1.0)
    if p == 0.0:
        return 0.0
    if p == 1.0:
        return math.inf
    lower_side = p <= 0.5
    target = math.log(p) if lower_side else math.log1p(-p)

    def residual(s):  # increasing in s on both sides
        log_in, log_out = _log_masses(d, delta, s)
        return (log_in - target) if lower_side else (target - log_out)

    lo, hi = 0.0, max(math.sqrt(d), delta if math.isfinite(delta) else 0.0, 1.0)
    while residual(hi) < 0:
        lo, hi = hi, 2.0 * hi
    s = 0.5 * (lo + hi)
    for _ in range(200):
        value = residual(s)
        if value == 0:
            return s
        if value < 0:
            lo = s
        else:
            hi = s
        log_in, log_out = _log_masses(d, delta, s)
        # d/ds log F = f / F, d/ds log(1 - F) = -f / (1 - F)
        slope = math.exp(_log_density(d, delta, s) - (log_in if lower_side else log_out))
        step = value / slope if slope > 0 else math.inf
        candidate = s - step
        if not lo < candidate < hi:
            candidate = 0.5 * (lo + hi)
        if abs(candidate - s) <= 4e-16 * s or hi - lo <= 4e-16 * hi:
            return candidate
        s = candidate
    return s
