"""Normalising constants and moments of the radial densities behind probreg's losses.

Every density here is p(y) = |A| / c * exp(-rho(||A (y - mu)||)) on R^d, so
c = |S_{d-1}| * int_0^inf r^(d-1) exp(-rho(r)) dr with |S_{d-1}| = 2 pi^(d/2) / Gamma(d/2)
(paper app. A.1). All functions are plain Python float arithmetic (math module only):
cheap, float64-accurate (~1e-14 relative), and constants under torch.compile.

L2 multivariate Huber (rho = h_delta): with the radial moments
    m(n) = int_0^inf r^n exp(-h_delta(r)) dr = a(n) + exp(delta^2/2) b(n),
    a(n) = int_0^delta r^n exp(-r^2/2) dr   = 2^((n-1)/2) * gamma_lower((n+1)/2, delta^2/2)
    b(n) = int_delta^inf r^n exp(-delta r) dr = delta^-(n+1) * Gamma_upper(n+1, delta^2)
(exact closed forms for every delta, unlike the paper's b-recursion, which drops a
factor for delta != 1), c_d(delta) = |S_{d-1}| m(d-1) and the covariance factor
kappa_d(delta) = m(d+1) / (d m(d-1)), Cov[y] = kappa * (A^T A)^-1 (app. A.2).
Everything is combined in log space, so large delta (the Gaussian limit) neither
overflows nor cancels. delta -> 0: exp(-h_delta) -> 1 is not normalisable; c_d(delta) ~
|S_{d-1}| Gamma(d) delta^-d, the normaliser of a Laplace density of scale 1/delta, so
huber_log_normalizer(d, 0) = +inf and huber_variance_factor(d, 0) = +inf.
"""
from __future__ import annotations

import functools
import math
import numbers

import torch

__all__ = [
    "FAMILIES",
    "huber_log_normalizer",
    "huber_variance_factor",
    "huber_expected_rho",
    "huber_radius_inside_probability",
    "log_normalizer",
    "log_unit_sphere_area",
]

FAMILIES = ("huber", "gauss", "laplace", "charbonnier")

_LOG2 = math.log(2.0)
_LOGPI = math.log(math.pi)
_TINY = 1e-300


def _constant_under_compile(fn):
    """torch.compiler.assume_constant_result for these functions of Python numbers: under
    torch.compile(dynamic=True) a symbolic number argument is specialised first
    (guard_scalar: one graph per value, as dynamic=False compiles), so the function runs
    once at trace time and its float result is a constant of the graph."""
    from torch.fx.experimental.symbolic_shapes import guard_scalar

    constant_fn = torch.compiler.assume_constant_result(fn)

    @functools.wraps(fn, updated=())  # not fn.__dict__: it holds the constant-result mark
    def wrapper(*args, **kwargs):
        def concrete(x):
            compiling = torch.compiler.is_compiling()
            return guard_scalar(x) if compiling and isinstance(x, numbers.Real) and not isinstance(x, bool) else x

        return constant_fn(*map(concrete, args), **{k: concrete(v) for k, v in kwargs.items()})

    return wrapper


def _check_dim(d) -> int:
    if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
        raise ValueError(f"d must be an integer >= 1, got {d!r}")
    return int(d)


def _check_delta(delta, allow_inf: bool = True) -> float:
    if isinstance(delta, torch.Tensor):
        delta = float(delta)
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
        raise ValueError(f"delta must be a real number >= 0, got {delta!r}")
    delta = float(delta)
    if not (delta >= 0) or (math.isinf(delta) and not allow_inf):
        raise ValueError(f"delta must be a {'' if allow_inf else 'finite '}number >= 0, got {delta!r}")
    return delta


def _logaddexp(a: float, b: float) -> float:
    hi, lo = (a, b) if a >= b else (b, a)
    if hi == -math.inf:
        return -math.inf
    return hi + math.log1p(math.exp(lo - hi))


# ------------------------------------------------------------------ incomplete gamma
def _log_gamma_series(s: float, x: float) -> float:
    """log gamma_lower(s, x) by its power series (all terms positive); for x < s + 1."""
    ap, term, total = s, 1.0 / s, 1.0 / s
    for _ in range(10000):
        ap += 1.0
        term *= x / ap
        total += term
        if term < total * 1e-17:
            break
    return -x + s * math.log(x) + math.log(total)


def _log_gamma_continued_fraction(s: float, x: float) -> float:
    """log Gamma_upper(s, x) by its Legendre continued fraction (modified Lentz); x >= s + 1."""
    b = x + 1.0 - s
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - s)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-16:
            break
    return -x + s * math.log(x) + math.log(h)


def _log_lower_gamma(s: float, x: float) -> float:
    """log of the lower incomplete gamma function int_0^x t^(s-1) e^-t dt, s > 0, x >= 0."""
    if x == 0.0:
        return -math.inf
    if math.isinf(x):
        return math.lgamma(s)
    if x < s + 1.0:
        return _log_gamma_series(s, x)
    upper = _log_gamma_continued_fraction(s, x)  # Q <= ~1/2 here: no cancellation
    return math.lgamma(s) + math.log1p(-math.exp(upper - math.lgamma(s)))


def _log_upper_gamma(s: float, x: float) -> float:
    """log of the upper incomplete gamma function int_x^inf t^(s-1) e^-t dt, s > 0, x >= 0."""
    if x == 0.0:
        return math.lgamma(s)
    if math.isinf(x):
        return -math.inf
    if x < s + 1.0:
        lower = _log_gamma_series(s, x)
        return math.lgamma(s) + math.log1p(-math.exp(lower - math.lgamma(s)))
    return _log_gamma_continued_fraction(s, x)


# ------------------------------------------------------------------ Huber radial moments
def _log_a(n: int, delta: float) -> float:
    """log int_0^delta r^n exp(-r^2/2) dr."""
    return 0.5 * (n - 1) * _LOG2 + _log_lower_gamma(0.5 * (n + 1), 0.5 * delta * delta)


def _log_b_scaled(n: int, delta: float) -> float:
    """log(exp(delta^2/2) * int_delta^inf r^n exp(-delta r) dr) = log int_delta^inf r^n exp(-h_delta(r)) dr."""
    return 0.5 * delta * delta - (n + 1) * math.log(delta) + _log_upper_gamma(n + 1.0, delta * delta)


def _log_huber_moment(n: int, delta: float) -> float:
    """log m(n) = log int_0^inf r^n exp(-h_delta(r)) dr (+inf at delta = 0)."""
    if delta == 0.0:
        return math.inf
    if math.isinf(delta):  # Gaussian: int r^n e^{-r^2/2} = 2^((n-1)/2) Gamma((n+1)/2)
        return 0.5 * (n - 1) * _LOG2 + math.lgamma(0.5 * (n + 1))
    return _logaddexp(_log_a(n, delta), _log_b_scaled(n, delta))


def log_unit_sphere_area(d: int) -> float:
    """log |S_{d-1}| = log(2 pi^(d/2) / Gamma(d/2)), the area of the unit sphere in R^d."""
    d = _check_dim(d)
    return _LOG2 + 0.5 * d * _LOGPI - math.lgamma(0.5 * d)


@_constant_under_compile
def huber_log_normalizer(d: int, delta: float = 1.0) -> float:
    """log c_d(delta): the L2 multivariate Huber density is |A| / c_d exp(-h_delta(||A y - v||)).

    Args:
        d: dimension, any integer >= 1.
        delta: Huber threshold >= 0 (inf gives the Gaussian (d/2) log(2 pi); 0 gives +inf,
            see the module docstring).
    Returns:
        float, accurate to ~1e-14 relative.
    """
    return _huber_log_normalizer(_check_dim(d), _check_delta(delta))


@functools.lru_cache(maxsize=256)
def _huber_log_normalizer(d: int, delta: float) -> float:
    return log_unit_sphere_area(d) + _log_huber_moment(d - 1, delta)


@_constant_under_compile
def huber_variance_factor(d: int, delta: float = 1.0) -> float:
    """kappa_d(delta) with Cov[y] = kappa_d(delta) * (A^T A)^-1 (paper eq. 33-34).

    kappa = m(d+1) / (d m(d-1)), m the radial moments of exp(-h_delta); 1 for delta = inf
    (Gaussian), +inf for delta = 0.
    """
    return _huber_variance_factor(_check_dim(d), _check_delta(delta))


@functools.lru_cache(maxsize=256)
def _huber_variance_factor(d: int, delta: float) -> float:
    if delta == 0.0:
        return math.inf
    return math.exp(_log_huber_moment(d + 1, delta) - _log_huber_moment(d - 1, delta)) / d


@_constant_under_compile
def huber_expected_rho(d: int, delta: float = 1.0) -> float:
    """E[h_delta(||A (y - mu)||)] under the Huber distribution (the entropy's energy term).

    = (a(d+1)/2 + e^{delta^2/2} (delta b(d) - delta^2/2 b(d-1))) / m(d-1), every term
    positive (b(d) >= delta b(d-1)); d/2 for delta = inf.
    """
    d = _check_dim(d)
    delta = _check_delta(delta)
    if delta == 0.0:
        raise ValueError("huber_expected_rho: delta = 0 is not a distribution")
    if math.isinf(delta):
        return 0.5 * d
    log_norm = _log_huber_moment(d - 1, delta)
    inside = math.exp(_log_a(d + 1, delta) - _LOG2 - log_norm)
    # e^{delta^2/2} (delta b(d) - delta^2/2 b(d-1)) = delta e^{..}b(d) (1 - delta b(d-1) / (2 b(d)))
    log_bd = _log_b_scaled(d, delta)
    log_bd1 = _log_b_scaled(d - 1, delta)
    outside = math.exp(math.log(delta) + log_bd - log_norm) * (1.0 - 0.5 * delta * math.exp(log_bd1 - log_bd))
    return inside + outside


def huber_radius_inside_probability(d: int, delta: float = 1.0) -> float:
    """P(||A (y - mu)|| <= delta) = a(d-1) / m(d-1) under the Huber distribution."""
    d = _check_dim(d)
    delta = _check_delta(delta, allow_inf=False)
    if delta == 0.0:
        return 0.0
    return math.exp(_log_a(d - 1, delta) - _log_huber_moment(d - 1, delta))


# ------------------------------------------------------------------ the ablation families
def _log_bessel_k(nu: float, x: float) -> float:
    """log K_nu(x), x > 0, from K_nu(x) = int_0^inf exp(-x cosh t) cosh(nu t) dt.

    The integrand is even and entire in t and decays double-exponentially, so the
    trapezoidal rule with step h converges like exp(-pi^2 / h): h = 1/32 is exact to
    double precision. Summed in log space around the peak (no overflow for large nu).
    """
    h = 1.0 / 32.0

    def log_f(t):
        y = nu * t
        return -x * math.cosh(t) + y + math.log1p(math.exp(-2.0 * y)) - _LOG2

    peak = math.asinh(nu / x)
    log_peak = log_f(peak)
    total, k = 0.5 * math.exp(log_f(0.0) - log_peak), 1
    while True:
        t = k * h
        term = math.exp(log_f(t) - log_peak)
        total += term
        if t > peak and term < 1e-18 * total:
            break
        k += 1
    return log_peak + math.log(h * total)


@_constant_under_compile
def log_normalizer(d: int, family: str = "huber", delta: float = 1.0) -> float:
    """log c of the family's density |A| / c exp(-rho(||A y - v||)) in R^d.

    huber        log c_d(delta)                       (huber_log_normalizer)
    gauss        (d/2) log(2 pi)
    laplace      log(|S_{d-1}| Gamma(d))
    charbonnier  log(|S_{d-1}| int_0^inf r^(d-1) exp(1 - sqrt(r^2 + 1)) dr)
                 = log(|S_{d-1}| e Gamma(d/2) 2^((d-1)/2) K_{(d+1)/2}(1) / sqrt(pi))
    delta only matters for huber. Cached; a constant under torch.compile.
    """
    d = _check_dim(d)
    if family == "huber":
        return _huber_log_normalizer(d, _check_delta(delta))
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return _log_normalizer_other(d, family)


@functools.lru_cache(maxsize=64)
def _log_normalizer_other(d: int, family: str) -> float:
    if family == "gauss":
        return 0.5 * d * (_LOG2 + _LOGPI)
    if family == "laplace":
        return log_unit_sphere_area(d) + math.lgamma(d)
    if family == "charbonnier":
        # r = sinh t: int sinh^(d-1) t cosh t e^{1 - cosh t} dt = -e d/dz [int sinh^(d-1) t
        # e^{-z cosh t} dt] at z = 1, and int sinh^(2 nu) t e^{-z cosh t} dt =
        # Gamma(nu + 1/2) (2/z)^nu K_nu(z) / sqrt(pi), d/dz[z^-nu K_nu] = -z^-nu K_{nu+1}.
        log_radial = (
            1.0 + math.lgamma(0.5 * d) + 0.5 * (d - 1) * _LOG2 - 0.5 * _LOGPI + _log_bessel_k(0.5 * (d + 1), 1.0)
        )
        return log_unit_sphere_area(d) + log_radial
    raise AssertionError(family)
