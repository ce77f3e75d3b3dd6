"""Probability regions of the L2 Huber distribution: huber_region_radius / huber_radius_cdf
against numerical quadrature of the radial density r^(d-1) exp(-h_delta(r)) (an
independent computation) for d = 1..3 and deltas from 1e-3 to 1e3, HuberL2.region_radius
against Monte-Carlo coverage of HuberL2.rsample within binomial error, and the
FuseResult covariance convention."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import probreg
from probreg import HuberL2, huber_radius_cdf, huber_region_radius

F64 = torch.float64
DELTAS = [1e-3, 0.05, 0.5, 1.0, 1.345, 3.0, 10.0, 1e3]
LEVELS = [1e-6, 0.05, 0.5, 0.8, 0.9, 0.95, 0.999]


def radial_masses(d, delta, s):
    """(P(R <= s), P(R > s)) by adaptive quadrature, each integrated directly (no 1 - x)."""
    def f(r):
        h = 0.5 * r * r if r <= delta else delta * (r - 0.5 * delta)
        return r ** (d - 1) * math.exp(-h)

    def quad(a, b):
        if a >= b:
            return 0.0
        return integrate.quad(f, a, b, epsabs=0, epsrel=1e-13, limit=500)[0]

    knots = sorted({0.0, min(delta, 1e6), s})
    pieces = [quad(a, b) for a, b in zip(knots[:-1], knots[1:])]
    inside = sum(p for p, b in zip(pieces, knots[1:]) if b <= s)
    between = sum(p for p, a in zip(pieces, knots[:-1]) if a >= s)
    beyond = between + quad(max(s, min(delta, 1e6)), math.inf)
    total = inside + beyond
    return inside / total, beyond / total


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("delta", DELTAS)
def test_region_radius_against_quadrature(d, delta):
    for p in LEVELS:
        s = huber_region_radius(d, delta, p)
        inside, beyond = radial_masses(d, delta, s)
        # relative accuracy of the smaller tail (quadrature itself is ~1e-12 relative)
        assert inside == pytest.approx(p, rel=1e-9), (p, s)
        assert beyond == pytest.approx(1 - p, rel=1e-9), (p, s)
        assert huber_radius_cdf(d, delta, s) == pytest.approx(p, rel=1e-12)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_limits(d):
    """delta = inf is the Gaussian (chi_d quantiles); delta = 1e3 is numerically the same;
    delta -> 0 is the Laplace limit: delta R ~ Gamma(d, 1), so s_p ~ Gamma(d).ppf(p) / delta."""
    for p in (0.1, 0.5, 0.95, 0.999):
        chi = stats.chi(d).ppf(p)
        assert huber_region_radius(d, math.inf, p) == pytest.approx(chi, rel=1e-12)
        assert huber_region_radius(d, 1e3, p) == pytest.approx(chi, rel=1e-12)
        delta = 1e-6
        assert delta * huber_region_radius(d, delta, p) == pytest.approx(stats.gamma(d).ppf(p), rel=1e-5)
    assert huber_region_radius(d, 1.0, 0.0) == 0.0
    assert huber_region_radius(d, 1.0, 1.0) == math.inf
    assert huber_radius_cdf(d, 1.0, 0.0) == 0.0 and huber_radius_cdf(d, 1.0, math.inf) == 1.0
    # monotone in p
    radii = [huber_region_radius(d, 0.7, p) for p in (0.01, 0.2, 0.4, 0.6, 0.8, 0.99)]
    assert radii == sorted(radii) and len(set(radii)) == len(radii)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("delta", [0.02, 0.3, 1.0, 4.0, 50.0])
def test_region_coverage_monte_carlo(d, delta):
    """Fraction of HuberL2.rsample draws inside the p-region vs p, within 5 binomial
    standard errors (n = 200k), through an explicit non-diagonal A and a batch."""
    torch.manual_seed(d * 100 + int(delta * 10))
    n = 200_000
    A = torch.tensor([[1.6, 0.4, -0.2], [0.4, 0.9, 0.1], [-0.2, 0.1, 2.2]], dtype=F64)[:d, :d]
    loc = torch.tensor([[0.5, -1.0, 2.0], [3.0, 0.0, -1.0]], dtype=F64)[:, :d]
    dist = HuberL2(loc, A.expand(2, d, d), delta=delta)
    y = dist.sample((n // 2,))
    radius = dist.radius(y).flatten()
    levels = torch.tensor([0.5, 0.8, 0.9, 0.95, 0.99], dtype=F64)
    for p, s in zip(levels.tolist(), dist.region_radius(levels).tolist()):
        covered = (radius <= s).double().mean().item()
        assert abs(covered - p) <= 5 * math.sqrt(p * (1 - p) / n), (p, covered)


def test_region_radius_shapes_and_errors():
    dist = HuberL2(torch.zeros(4, 2), torch.eye(2).expand(4, 2, 2), delta=1.0)
    r = dist.region_radius(0.9)
    assert r.shape == () and r.dtype == torch.float32
    assert float(r) == pytest.approx(huber_region_radius(2, 1.0, 0.9), rel=1e-6)
    assert dist.region_radius(torch.tensor([[0.5, 0.9]])).shape == (1, 2)
    assert dist.radius(torch.ones(3, 4, 2)).shape == (3, 4)
    for bad in (-0.1, 1.5, math.nan, True, torch.tensor([0.5, 2.0])):
        with pytest.raises(ValueError, match="p"):
            dist.region_radius(bad)
    with pytest.raises(ValueError, match="delta"):
        huber_region_radius(2, 0.0, 0.5)
    with pytest.raises(ValueError, match="d must"):
        huber_region_radius(0, 1.0, 0.5)
    with pytest.raises(ValueError, match="s must"):
        huber_radius_cdf(2, 1.0, math.nan)


# ------------------------------------------------------------------ fused estimates
def test_fused_distribution_of_agreeing_estimates_is_exact():
    """n agreeing estimates with weights w: sum_i w_i h_delta(||A y - v||) is the energy of
    HuberL2(mu, sqrt(W) A, sqrt(W) delta): the log densities differ by a constant, and
    covariance_matrix matches a 2-D quadrature of the normalised product density."""
    A = torch.tensor([[1.5, 0.4], [0.4, 0.8]], dtype=F64)
    mu = torch.tensor([0.3, -0.7], dtype=F64)
    w = torch.tensor([1.0, 0.5, 1.5], dtype=F64)
    delta = 0.8
    result = probreg.huber_fuse((A @ mu).expand(3, 2), A.expand(3, 2, 2), w, delta)
    fused = result.distribution(delta, total_weight=float(w.sum()))
    y = torch.randn(50, 2, dtype=F64) * 2
    energy = (w * probreg.reference.family_rho((A @ y.unsqueeze(-1)).squeeze(-1).unsqueeze(-2) - A @ mu, "huber",
                                               delta)).sum(-1)
    diff = fused.log_prob(y) + energy
    assert float(diff.max() - diff.min()) < 1e-12
    torch.testing.assert_close(fused.loc, mu, rtol=1e-12, atol=1e-12)

    def second_moments(points):  # (n, 2) -> (n, 4): p(y) (y - mu)_i (y - mu)_j
        y = torch.from_numpy(points).to(F64)
        e = y - mu
        return (fused.log_prob(y).exp().unsqueeze(-1) * (e.unsqueeze(-1) * e.unsqueeze(-2)).flatten(1)).numpy()

    res = integrate.cubature(second_moments, [-np.inf, -np.inf], [np.inf, np.inf], rtol=1e-9)
    assert res.status == "converged"
    quad = torch.from_numpy(res.estimate).view(2, 2)
    torch.testing.assert_close(result.covariance_matrix(delta, float(w.sum())), quad, rtol=1e-7, atol=1e-9)


def test_fused_single_estimate_is_its_own_distribution():
    A = torch.tensor([[2.0, -0.3], [-0.3, 0.7]], dtype=F64)
    mu = torch.tensor([1.0, 2.0], dtype=F64)
    single = probreg.huber_fuse((A @ mu).view(1, 2), A.view(1, 2, 2), delta=1.3)
    ref = HuberL2(mu, A, delta=1.3)
    torch.testing.assert_close(single.covariance_matrix(1.3), ref.covariance_matrix, rtol=1e-12, atol=1e-12)
    # the Laplace covariance (hessian^-1) is kappa times smaller
    kappa = probreg.huber_variance_factor(2, 1.3)
    torch.testing.assert_close(torch.linalg.inv(single.hessian) * kappa, ref.covariance_matrix, rtol=1e-12, atol=1e-12)
    assert float(single.distribution(1.3).region_radius(0.9)) == pytest.approx(float(ref.region_radius(0.9)))
    with pytest.raises(ValueError, match="total_weight"):
        single.covariance_matrix(1.3, total_weight=0.0)
