"""probreg.nn.PredictionHead: the step-0 distribution (A = init_precision * I, mu =
init_location or the given base location) for every d, covariance structure and
parameterisation; the output layout against huber_nll and HuberL2; invariance to the
target units; from_targets; gradients; argument errors."""
import math

import numpy as np
import pytest
import torch

import probreg
from probreg.nn import PredictionHead, raw_for_precision

F64 = torch.float64
COVARIANCES = ["full", "diagonal", "identity"]


def make_head(d, covariance, parameterization, **kwargs):
    kwargs.setdefault("init_precision", 3.0)
    return PredictionHead(6, 4, d, covariance=covariance, parameterization=parameterization, dtype=F64, **kwargs)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("covariance", COVARIANCES)
@pytest.mark.parametrize("parameterization", ["v", "mu"])
@pytest.mark.parametrize("theta", [None, 0.5, 10.0])  # init_precision 3: linear branch, and theta above it (exp branch)
def test_step_zero_distribution(d, covariance, parameterization, theta):
    location = torch.linspace(-2, 2, 4 * d, dtype=F64).view(4, d)
    head = make_head(d, covariance, parameterization, init_location=location, theta=theta)
    features = torch.randn(5, 3, 6, dtype=F64)
    pred = head(features)
    assert pred.shape == (5, 3, 4, probreg.nll.pred_width(d, covariance))
    expected_A = torch.eye(d, dtype=F64) * (1.0 if covariance == "identity" else 3.0)
    torch.testing.assert_close(head.precision_sqrt(pred), expected_A.expand(5, 3, 4, d, d), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(head.location(pred), location.expand(5, 3, 4, d), rtol=1e-14, atol=1e-14)
    # a base location given to forward replaces init_location, per input
    base = torch.randn(5, 3, 4, d, dtype=F64)
    torch.testing.assert_close(head.location(head(features, base)), base, rtol=1e-13, atol=1e-13)


def test_raw_for_precision_inverts_the_remap():
    for theta in (0.1, 1.0, 7.0):
        for a in (1e-3, 0.5, 1.0, 3.0, 50.0):
            l = raw_for_precision(a, theta)
            g = l if l > theta else theta * math.exp(l / theta - 1.0)  # paper eq. 9
            assert g == pytest.approx(a, rel=1e-14)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("covariance", COVARIANCES)
@pytest.mark.parametrize("parameterization", ["v", "mu"])
def test_layout_is_what_huber_nll_and_huberl2_read(d, covariance, parameterization):
    head = make_head(d, covariance, parameterization, delta=0.7, theta=0.4)
    with torch.no_grad():
        head.linear.weight.normal_(0, 0.1)  # A stays well conditioned (eigenvalues ~ 3 +- 1)
        head.linear.bias.add_(torch.randn_like(head.linear.bias) * 0.1)
    features = torch.randn(8, 6, dtype=F64)
    base = torch.randn(8, 4, d, dtype=F64)
    pred = head(features, base)
    y = torch.randn(8, 4, d, dtype=F64)
    nll = probreg.huber_nll(pred, y, 0.7, 0.4, parameterization=parameterization, covariance=covariance,
                            reduction="none")
    torch.testing.assert_close(head.loss(reduction="none")(pred, y), nll, rtol=0, atol=0)
    torch.testing.assert_close(head.distribution(pred).log_prob(y), -nll, rtol=0, atol=0)
    # the head's own definition: mu = base + z_loc / p ("mu", identity) or A^-1 (A base + z_loc) ("v")
    z = head.linear(features).view(8, 4, -1)
    A = head.precision_sqrt(pred)
    if parameterization == "mu" or covariance == "identity":
        mu = base + z[..., :d] / 3.0
    else:
        mu = base + torch.linalg.solve(A, z[..., :d].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(head.location(pred), mu, rtol=1e-12, atol=1e-12)
    # covariance in the HuberL2 convention: kappa (A^T A)^-1
    kappa = probreg.huber_variance_factor(d, 0.7)
    expected = kappa * torch.linalg.inv(A.transpose(-1, -2) @ A)
    torch.testing.assert_close(head.covariance_matrix(pred), expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("parameterization", ["v", "mu"])
def test_unit_invariance(parameterization):
    """Targets in units c times larger with init_precision and theta c times smaller and the
    same linear layer: mu scales by c, A by 1/c, and the NLL shifts by d log c."""
    c, d = 8.0, 2
    small = make_head(d, "full", parameterization, init_precision=3.0, theta=0.5)
    with torch.no_grad():
        small.linear.weight.normal_(0, 0.5)
    large = make_head(d, "full", parameterization, init_precision=3.0 / c, theta=0.5 / c)
    large.linear.load_state_dict(small.linear.state_dict())
    features = torch.randn(10, 6, dtype=F64)
    y = torch.randn(10, 4, d, dtype=F64)
    p_small, p_large = small(features), large(features)
    torch.testing.assert_close(large.location(p_large), c * small.location(p_small), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(large.precision_sqrt(p_large), small.precision_sqrt(p_small) / c, rtol=1e-12,
                               atol=1e-12)
    nll_small = small.loss(reduction="none")(p_small, y)
    nll_large = large.loss(reduction="none")(p_large, c * y)
    torch.testing.assert_close(nll_large, nll_small + d * math.log(c), rtol=1e-12, atol=1e-12)


def test_from_targets_uses_median_and_mad():
    g = torch.Generator().manual_seed(1)
    targets = 5.0 + 3.0 * torch.randn(401, 3, 3, generator=g, dtype=F64)  # odd counts: one middle value
    targets[:40] = 1e4  # outliers move neither estimate much
    head = PredictionHead.from_targets(16, targets, dtype=F64)
    t = targets.numpy()
    median = np.median(t, axis=0)
    mad = np.median(np.abs(t - median))
    np.testing.assert_allclose(head.init_location.numpy(), median, rtol=1e-12)
    assert head.init_precision == pytest.approx(1.0 / (1.4826 * mad), rel=1e-12)
    assert (head.num_targets, head.dim) == (3, 3)
    assert 1.0 / head.init_precision == pytest.approx(3.0, rel=0.25)


def test_one_step_moves_only_through_the_gradient():
    head = make_head(2, "full", "v")
    features = torch.randn(32, 6, dtype=F64)
    y = torch.randn(32, 4, 2, dtype=F64)
    loss = head.loss()(head(features), y)
    loss.backward()
    assert head.linear.weight.grad.abs().sum() > 0 and torch.isfinite(head.linear.weight.grad).all()
    assert torch.autograd.gradcheck(lambda f: head(f, None), (features[:3].clone().requires_grad_(),))
    base = torch.randn(3, 4, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b: head(features[:3], b), (base,))


def test_float32_default_parameters():
    head = PredictionHead(5, 2)
    pred = head(torch.randn(3, 5))
    assert pred.dtype == torch.float32 and pred.shape == (3, 2, 5)
    assert head.theta == pytest.approx(0.25)  # the documented default init_precision / 4
    assert "init_precision=1" in repr(head)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(in_features=0), "in_features"),
        (dict(num_targets=-1), "num_targets"),
        (dict(dim=4), "dim"),
        (dict(dim=2.0), "dim"),
        (dict(covariance="spherical"), "covariance"),
        (dict(parameterization="A"), "parameterization"),
        (dict(init_precision=0.0), "init_precision"),
        (dict(init_precision=math.inf), "init_precision"),
        (dict(init_precision=math.nan), "init_precision"),
        (dict(theta=-1.0), "theta"),
        (dict(delta=0.0), "delta"),
        (dict(init_location=torch.zeros(3, 2)), "init_location"),
        (dict(init_location=math.nan), "init_location"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    args = dict(in_features=4, num_targets=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        PredictionHead(**args)


def test_bad_forward_inputs_name_the_argument():
    head = PredictionHead(4, 2, 2)
    with pytest.raises(ValueError, match="features"):
        head(torch.randn(3, 5))
    with pytest.raises(ValueError, match="location"):
        head(torch.randn(3, 4), torch.randn(3, 2, 3))
    with pytest.raises(ValueError, match="pred"):
        head.location(torch.randn(3, 2, 4))
    with pytest.raises(ValueError, match="targets"):
        PredictionHead.from_targets(4, torch.randn(10, 2))
    with pytest.raises(ValueError, match="init_precision"):
        PredictionHead.from_targets(4, torch.randn(10, 2, 2), init_precision=2.0)


# ------------------------------------------------------------------ OutlierMixtureNLLLoss
@pytest.mark.parametrize("family", ["huber", "gauss", "laplace", "charbonnier"])
def test_outlier_mixture_value(family):
    """-log((1 - eps) p(y) + eps u) from the family's log-density, in float64."""
    from probreg.nn import OutlierMixtureNLLLoss

    pred = torch.randn(6, 5, dtype=F64)
    y = torch.randn(6, 2, dtype=F64) * 3
    loss = OutlierMixtureNLLLoss(0.2, -math.log(16.0), 0.7, 0.5, family=family, reduction="none")
    log_p = -probreg.huber_nll(pred, y, 0.7, 0.5, family=family, reduction="none")
    expected = -torch.log(0.8 * log_p.exp() + 0.2 / 16.0)
    torch.testing.assert_close(loss(pred, y), expected, rtol=1e-12, atol=1e-12)
    posterior = 0.8 * log_p.exp() / (0.8 * log_p.exp() + 0.2 / 16.0)
    torch.testing.assert_close(loss.inlier_probability(pred, y), posterior, rtol=1e-12, atol=1e-12)
    weight = torch.tensor([1.0, 0.0, 2.0, 1.0, 1.0, 0.5], dtype=F64)
    mean = OutlierMixtureNLLLoss(0.2, -math.log(16.0), 0.7, 0.5, family=family)(pred, y, weight)
    torch.testing.assert_close(mean, (weight * expected).sum() / weight.sum(), rtol=1e-12, atol=1e-12)


def test_outlier_mixture_recovers_the_inlier_scale():
    """1-D labels: 85% N(0, 0.1^2) and 15% uniform on [-4, 4]. The maximum-likelihood A of the
    plain Huber NLL is inflated by the outliers; with the uniform component it matches the
    ML fit of the inliers alone (the true inlier scale up to sampling error)."""
    from probreg.nn import OutlierMixtureNLLLoss

    g = torch.Generator().manual_seed(0)
    n = 20000
    inlier = torch.rand(n, generator=g) > 0.15
    y = torch.where(inlier, 0.1 * torch.randn(n, generator=g, dtype=F64),
                    8 * torch.rand(n, generator=g, dtype=F64) - 4).unsqueeze(-1)

    def fitted_precision(loss, labels):
        raw = torch.tensor([5.0], dtype=F64, requires_grad=True)  # mu = 0, A = g(raw) (linear branch)
        opt = torch.optim.LBFGS([raw], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            pred = torch.cat([torch.zeros(1, dtype=F64), raw]).expand(labels.shape[0], 2)
            value = loss(pred, labels)
            value.backward()
            return value

        opt.step(closure)
        return float(raw.detach())

    plain = fitted_precision(probreg.HuberNLLLoss(1.0, 0.1, parameterization="mu"), y)
    clean = fitted_precision(probreg.HuberNLLLoss(1.0, 0.1, parameterization="mu"), y[inlier])
    mixture = fitted_precision(OutlierMixtureNLLLoss(0.15, -math.log(8.0), 1.0, 0.1, parameterization="mu"), y)
    assert plain < 0.5 * clean
    assert mixture == pytest.approx(clean, rel=0.03)


def test_outlier_mixture_from_the_head_and_errors():
    from probreg.nn import OutlierMixtureNLLLoss

    head = PredictionHead(4, 3, 2, delta=0.8, theta=0.3)
    loss = head.loss(outlier_fraction=0.1, outlier_log_density=-2.0)
    assert isinstance(loss, OutlierMixtureNLLLoss)
    assert (loss.nll.delta, loss.nll.theta) == (0.8, 0.3)
    pred = head(torch.randn(7, 4, requires_grad=True))
    value = loss(pred, torch.randn(7, 3, 2) * 100)
    value.backward()
    assert torch.isfinite(head.linear.weight.grad).all()
    for kwargs, name in [(dict(outlier_fraction=0.0, outlier_log_density=0.0), "outlier_fraction"),
                         (dict(outlier_fraction=1.0, outlier_log_density=0.0), "outlier_fraction"),
                         (dict(outlier_fraction=0.1, outlier_log_density=math.inf), "outlier_log_density"),
                         (dict(outlier_fraction=0.1, outlier_log_density=None), "outlier_log_density")]:
        with pytest.raises(ValueError, match=name):
            OutlierMixtureNLLLoss(**kwargs)
    with pytest.raises(ValueError, match="reduction"):
        OutlierMixtureNLLLoss(0.1, 0.0, reduction="max")
    with pytest.raises(ValueError, match="family"):
        OutlierMixtureNLLLoss(0.1, 0.0, family="cauchy")
