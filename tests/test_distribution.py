"""probreg.HuberL2: normalisation (numerical integration of exp(log_prob)), agreement with
huber_nll, exact sampling (radial law and 10^6-sample moments against mean and
covariance_matrix within Monte-Carlo error), reparameterised gradients, entropy, shapes."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate

import probreg
from probreg import HuberL2, reference
from probreg.distributions import sample_huber_radius

F64 = torch.float64


def make_dist(delta=1.0, theta=0.5, d=2):
    loc = torch.tensor([0.3, -0.2, 1.0][:d], dtype=F64)
    raw = torch.tensor([1.5, 0.7, 0.4, 0.9, -0.3, 2.0][: d * (d + 1) // 2], dtype=F64)
    return HuberL2(loc, raw=raw, delta=delta, theta=theta)


def density(dist):
    def f(points):
        y = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float64))
        return dist.log_prob(y).exp().numpy()

    return f


@pytest.mark.parametrize("delta", [0.3, 1.0, 3.0])
def test_log_prob_integrates_to_one_d1(delta):
    dist = HuberL2(torch.tensor([0.4], dtype=F64), raw=torch.tensor([-0.7], dtype=F64), delta=delta, theta=0.5)
    f = lambda y: float(dist.log_prob(torch.tensor([y], dtype=F64)).exp())  # noqa: E731
    total, _ = integrate.quad(f, -np.inf, np.inf, epsabs=1e-13, epsrel=1e-12, limit=400)
    assert total == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("construction", ["raw", "precision_sqrt", "prediction_v_diagonal"])
def test_log_prob_integrates_to_one_d2(construction):
    if construction == "raw":
        dist = make_dist(delta=1.0)
    elif construction == "precision_sqrt":
        A = torch.tensor([[1.3, -0.4], [-0.4, 0.6]], dtype=F64)
        dist = HuberL2(torch.tensor([0.3, -0.2], dtype=F64), precision_sqrt=A, delta=0.5)
    else:
        pred = torch.tensor([0.5, -1.0, 0.2, 1.4], dtype=F64)
        dist = HuberL2.from_prediction(pred, "v", "diagonal", delta=2.0, theta=1.0)
    res = integrate.cubature(density(dist), [-np.inf, -np.inf], [np.inf, np.inf], rtol=1e-9)
    assert res.status == "converged"
    assert res.estimate == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("parameterization", ["v", "mu"])
@pytest.mark.parametrize("covariance", ["full", "diagonal", "identity"])
def test_log_prob_is_negative_huber_nll(parameterization, covariance):
    d = 2
    pred = torch.randn(5, probreg.nll.pred_width(d, covariance), dtype=F64)
    y = torch.randn(7, 5, d, dtype=F64)
    dist = HuberL2.from_prediction(pred, parameterization, covariance, delta=0.7, theta=0.5)
    nll = probreg.huber_nll(pred.expand(7, 5, -1), y, 0.7, 0.5, parameterization=parameterization,
                            covariance=covariance, reduction="none")
    torch.testing.assert_close(dist.log_prob(y), -nll, rtol=0, atol=0)
    ref = reference.huber_nll_reference(pred.expand(7, 5, -1), y, 0.7, 0.5, parameterization=parameterization,
                                        covariance=covariance, reduction="none")
    torch.testing.assert_close(dist.log_prob(y), -ref, rtol=1e-12, atol=1e-12)
    # The same distribution from (loc, raw) or (loc, precision_sqrt).
    A = dist.precision_sqrt
    explicit = HuberL2(dist.loc, precision_sqrt=A, delta=0.7, theta=0.5)
    torch.testing.assert_close(explicit.log_prob(y), dist.log_prob(y), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dist.mean, dist.mode)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_radius_law_is_exact(d):
    """Empirical CDF of sample_huber_radius against the quadrature CDF of
    r^(d-1) exp(-h_delta(r)), within 5 binomial standard errors."""
    n = 200_000
    for delta in (0.3, 1.0, 3.0):
        torch.manual_seed(d)
        r = sample_huber_radius((n,), d, delta)
        h = lambda x: 0.5 * x * x if x <= delta else delta * (x - 0.5 * delta)  # noqa: E731
        f = lambda x: x ** (d - 1) * math.exp(-h(x))  # noqa: E731
        total = probreg.normalizer.math.exp(probreg.normalizer._log_huber_moment(d - 1, delta))
        for q in (0.5 * delta, delta, 1.5 * delta + 0.5, 3.0 / delta + delta):
            pieces = [(0, min(q, delta))] + ([(delta, q)] if q > delta else [])
            F = sum(integrate.quad(f, a, b, epsrel=1e-12)[0] for a, b in pieces) / total
            emp = float((r <= q).double().mean())
            assert abs(emp - F) <= 5 * math.sqrt(F * (1 - F) / n) + 1e-12, (delta, q, emp, F)


def _assert_moments(dist, n):
    torch.manual_seed(1)
    y = dist.sample((n,))
    assert y.shape == (n,) + dist.batch_shape + dist.event_shape
    d = dist.event_shape[0]
    centred = y - y.mean(0)
    # Mean: 5 standard errors from the sample covariance.
    se_mean = (dist.covariance_matrix.diagonal() / n).sqrt()
    assert ((y.mean(0) - dist.mean).abs() <= 5 * se_mean).all()
    # Covariance: each entry's standard error from the spread of the products.
    for i in range(d):
        for j in range(d):
            prod = centred[:, i] * centred[:, j]
            se = prod.std() / math.sqrt(n)
            assert abs(float(prod.mean() - dist.covariance_matrix[i, j])) <= 5 * float(se), (i, j)


@pytest.mark.parametrize("delta", [0.3, 1.0, 3.0])
def test_sample_moments_d2_1e6(delta):
    _assert_moments(make_dist(delta=delta, d=2), 1_000_000)


@pytest.mark.parametrize("d", [1, 3])
def test_sample_moments_d1_d3(d):
    _assert_moments(make_dist(delta=1.0, d=d), 200_000)


def test_rsample_is_reparameterised():
    loc = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)
    raw = torch.tensor([1.5, 0.7, 0.4], dtype=F64, requires_grad=True)
    y = HuberL2(loc, raw=raw, delta=1.0, theta=0.5).rsample((100,))
    y.sum().backward()
    torch.testing.assert_close(loc.grad, torch.full((2,), 100.0, dtype=F64))

    def draw(loc_, raw_):
        torch.manual_seed(3)  # common random numbers: y is a smooth function of (loc, raw)
        return HuberL2(loc_, raw=raw_, delta=1.0, theta=0.5).rsample((4,))

    assert torch.autograd.gradcheck(draw, (loc.detach().requires_grad_(), raw.detach().requires_grad_()))


@pytest.mark.parametrize("d", [1, 2])
def test_entropy(d):
    for delta in (0.3, 1.0, 3.0):
        dist = make_dist(delta=delta, d=d)
        torch.manual_seed(0)
        logp = dist.log_prob(dist.sample((200_000,)))
        mc, se = float(-logp.mean()), float(logp.std() / math.sqrt(logp.numel()))
        assert abs(float(dist.entropy()) - mc) <= 5 * se
    # d = 1: -int p log p by quadrature.
    dist = make_dist(delta=0.7, d=1)
    f = lambda y: (lambda lp: -math.exp(lp) * lp)(float(dist.log_prob(torch.tensor([y], dtype=F64))))  # noqa: E731
    mu, a = float(dist.loc), float(dist.precision_sqrt)
    edges = [-np.inf, mu - 0.7 / a, mu, mu + 0.7 / a, np.inf]  # split at the kinks of h_delta
    total = sum(integrate.quad(f, lo, hi, epsabs=1e-13, epsrel=1e-13, limit=400)[0] for lo, hi in zip(edges, edges[1:]))
    assert float(dist.entropy()) == pytest.approx(total, abs=1e-11)


def test_shapes_expand_and_variance():
    loc = torch.randn(4, 2, dtype=F64)
    raw = torch.randn(3, 1, 3, dtype=F64)
    dist = HuberL2(loc, raw=raw)
    assert dist.batch_shape == (3, 4) and dist.event_shape == (2,)
    assert dist.sample((5,)).shape == (5, 3, 4, 2)
    assert dist.log_prob(torch.randn(2, 1, 1, 2, dtype=F64)).shape == (2, 3, 4)
    assert dist.entropy().shape == (3, 4)
    torch.testing.assert_close(dist.variance, dist.covariance_matrix.diagonal(dim1=-2, dim2=-1))
    big = dist.expand((6, 3, 4))
    assert big.batch_shape == (6, 3, 4) and big.sample().shape == (6, 3, 4, 2)
    y = torch.randn(6, 3, 4, 2, dtype=F64)
    torch.testing.assert_close(big.log_prob(y), dist.log_prob(y))
    # v parameterisation: mean = A^-1 v.
    pred = torch.randn(3, 5, dtype=F64)
    dv = HuberL2.from_prediction(pred)
    torch.testing.assert_close(dv.precision_sqrt @ dv.mean.unsqueeze(-1), pred[:, :2].unsqueeze(-1))
    kappa = probreg.huber_variance_factor(2, 1.0)
    A = dv.precision_sqrt
    torch.testing.assert_close(dv.covariance_matrix, kappa * torch.linalg.inv(A @ A.transpose(-1, -2)))


def test_validation():
    loc = torch.zeros(2, dtype=F64)
    with pytest.raises(ValueError):
        HuberL2(loc, precision_sqrt=torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64), validate_args=True)
    with pytest.raises(ValueError, match="exactly one"):
        HuberL2(loc)
    with pytest.raises(ValueError, match="delta"):
        HuberL2(loc, raw=torch.zeros(3, dtype=F64), delta=0.0)
    with pytest.raises(ValueError, match="theta"):
        HuberL2(loc, raw=torch.zeros(3, dtype=F64), theta=-1.0)
    with pytest.raises(ValueError, match="raw must have shape"):
        HuberL2(loc, raw=torch.zeros(6, dtype=F64))
    with pytest.raises(ValueError, match="width"):
        HuberL2.from_prediction(torch.zeros(4, dtype=F64), covariance="full")
    ok = HuberL2(loc, raw=torch.zeros(3, dtype=F64), validate_args=True)
    with pytest.raises(ValueError):
        ok.log_prob(torch.tensor([float("nan"), 0.0], dtype=F64))
