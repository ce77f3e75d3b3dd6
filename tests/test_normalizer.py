"""Normalising constants and moments (probreg.normalizer) against independent numerical
quadrature (scipy.integrate.quad of the defining radial integrals)."""
import math

import pytest
import torch
from scipy import integrate

import probreg
from probreg import normalizer

DIMS = [1, 2, 3, 4]
DELTAS = [0.1, 0.5, 1.0, 2.0, 5.0]


def huber_h(r: float, delta: float) -> float:
    return 0.5 * r * r if r <= delta else delta * (r - 0.5 * delta)


def radial_integral(n: int, weight) -> float:
    """int_0^inf r^n exp(-weight(r)) dr by adaptive quadrature, split at the kink."""
    f = lambda r: r**n * math.exp(-weight(r))  # noqa: E731
    return sum(integrate.quad(f, a, b, epsabs=0, epsrel=1e-13, limit=400)[0] for a, b in ((0, 1), (1, math.inf)))


def huber_moment(n: int, delta: float) -> float:
    f = lambda r: r**n * math.exp(-huber_h(r, delta))  # noqa: E731
    parts = ((0, delta), (delta, math.inf))
    return sum(integrate.quad(f, a, b, epsabs=0, epsrel=1e-13, limit=400)[0] for a, b in parts)


def sphere_area(d: int) -> float:
    return 2 * math.pi ** (d / 2) / math.gamma(d / 2)


@pytest.mark.parametrize("d", DIMS)
def test_huber_log_normalizer_and_variance_factor_vs_quadrature(d):
    for delta in DELTAS:
        m_lo, m_hi = huber_moment(d - 1, delta), huber_moment(d + 1, delta)
        log_c = math.log(sphere_area(d) * m_lo)
        kappa = m_hi / (d * m_lo)
        assert abs(probreg.huber_log_normalizer(d, delta) - log_c) <= 1e-8 * max(1.0, abs(log_c))
        assert abs(probreg.huber_variance_factor(d, delta) / kappa - 1) <= 1e-8


def test_paper_value_and_limits():
    # Paper eq. 37: d = 2, delta = 1: E||Y||^2 ~ 3.07 tr(Sigma), i.e. kappa_2(1) ~ 3.07.
    assert abs(probreg.huber_variance_factor(2, 1.0) - 3.076) < 1e-3
    for d in DIMS:
        gauss = 0.5 * d * math.log(2 * math.pi)
        assert probreg.huber_log_normalizer(d, math.inf) == pytest.approx(gauss, rel=1e-15)
        assert probreg.huber_log_normalizer(d, 40.0) == pytest.approx(gauss, rel=1e-14)
        assert probreg.huber_variance_factor(d, 40.0) == pytest.approx(1.0, rel=1e-14)
        # delta -> 0: c_d(delta) delta^d -> |S_{d-1}| Gamma(d), the Laplace normaliser.
        laplace = math.log(sphere_area(d)) + math.lgamma(d)
        assert probreg.huber_log_normalizer(d, 1e-6) + d * math.log(1e-6) == pytest.approx(laplace, abs=1e-5)
        assert probreg.huber_log_normalizer(d, 0.0) == math.inf
        assert probreg.huber_variance_factor(d, 0.0) == math.inf
    # Any integer d (large d too), finite and increasing in d at fixed delta.
    values = [probreg.huber_log_normalizer(d, 1.0) for d in range(1, 60)]
    assert all(math.isfinite(v) for v in values)


def test_corrected_b_recursion():
    """b(n) = int_delta^inf r^n e^{-delta r} dr satisfies b(n) = delta^(n-1) e^{-delta^2}
    + (n / delta) b(n-1) (DESIGN.md erratum); the paper's n b(n-1) is wrong for delta != 1."""
    for delta in (0.5, 1.0, 2.0):
        b = [math.exp(normalizer._log_b_scaled(n, delta) - 0.5 * delta * delta) for n in range(6)]
        for n in range(1, 6):
            corrected = delta ** (n - 1) * math.exp(-delta * delta) + n / delta * b[n - 1]
            paper = delta ** (n - 1) * math.exp(-delta * delta) + n * b[n - 1]
            assert b[n] == pytest.approx(corrected, rel=1e-13)
            assert (b[n] == pytest.approx(paper, rel=1e-6)) == (delta == 1.0)


@pytest.mark.parametrize("d", DIMS)
def test_other_families_vs_quadrature(d):
    weights = {
        "gauss": lambda r: 0.5 * r * r,
        "laplace": lambda r: r,
        "charbonnier": lambda r: r * r / (math.sqrt(r * r + 1) + 1),
    }
    for family, w in weights.items():
        ref = math.log(sphere_area(d) * radial_integral(d - 1, w))
        assert abs(normalizer.log_normalizer(d, family) - ref) <= 1e-10 * max(1.0, abs(ref)), family
    assert normalizer.log_normalizer(d, "huber", 0.7) == probreg.huber_log_normalizer(d, 0.7)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_expected_rho_and_inside_probability_vs_quadrature(d):
    for delta in (0.3, 1.0, 4.0):
        m = huber_moment(d - 1, delta)
        f = lambda r: huber_h(r, delta) * r ** (d - 1) * math.exp(-huber_h(r, delta))  # noqa: E731
        e_rho = sum(integrate.quad(f, a, b, epsrel=1e-13, limit=400)[0] for a, b in ((0, delta), (delta, math.inf))) / m
        assert normalizer.huber_expected_rho(d, delta) == pytest.approx(e_rho, rel=1e-10)
        inside = integrate.quad(lambda r: r ** (d - 1) * math.exp(-0.5 * r * r), 0, delta, epsrel=1e-13)[0] / m
        assert normalizer.huber_radius_inside_probability(d, delta) == pytest.approx(inside, rel=1e-10)


def test_incomplete_gamma_against_torch():
    """The pure-Python incomplete gamma functions against torch.special (float64)."""
    for s in (0.5, 1.0, 1.5, 3.0, 7.5):
        for x in (1e-3, 0.4, 1.0, 2.5, 8.0, 40.0):
            lower = math.exp(normalizer._log_lower_gamma(s, x) - math.lgamma(s))
            upper = math.exp(normalizer._log_upper_gamma(s, x) - math.lgamma(s))
            P = float(torch.special.gammainc(torch.tensor(s, dtype=torch.float64), torch.tensor(x, dtype=torch.float64)))
            Q = float(torch.special.gammaincc(torch.tensor(s, dtype=torch.float64), torch.tensor(x, dtype=torch.float64)))
            assert lower == pytest.approx(P, rel=1e-12, abs=1e-300)
            assert upper == pytest.approx(Q, rel=1e-11, abs=1e-300)


def test_bad_arguments():
    for d in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="d must be"):
            probreg.huber_log_normalizer(d, 1.0)
    for delta in (-0.1, math.nan, "1"):
        with pytest.raises(ValueError, match="delta"):
            probreg.huber_variance_factor(2, delta)
    with pytest.raises(ValueError, match="family"):
        normalizer.log_normalizer(2, "cauchy")
