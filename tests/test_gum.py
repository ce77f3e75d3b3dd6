"""Tests for probreg.gum on synthetic residuals with known outlier labels."""

import numpy as np
import pytest
import torch

from probreg import gum

OUTLIER_HALF_WIDTH = 10.0  # outliers ~ U[-10, 10] per coordinate


# Small tensors: one intra-op thread (conftest.py one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def _inlier_factor(e, seed):
    """A fixed, correlated inlier covariance factor (e x e), std ~0.3-0.6 per coordinate."""
    g = torch.Generator().manual_seed(seed)
    return 0.4 * torch.eye(e, dtype=torch.float64) + 0.15 * torch.randn(e, e, generator=g, dtype=torch.float64)


def _contaminate(inliers, outlier_mask, g):
    outliers = (2 * torch.rand(inliers.shape, generator=g, dtype=inliers.dtype) - 1) * OUTLIER_HALF_WIDTH
    return torch.where(outlier_mask, outliers, inliers)


def _precision_recall(flagged, truth):
    tp = (flagged & truth).sum().item()
    return tp / max(flagged.sum().item(), 1), tp / max(truth.sum().item(), 1)


def _residuals(granularity, outlier_fraction, n=2000, k=3, d=2, seed=0, dtype=torch.float64):
    """Residuals (N, K, d) and the boolean outlier labels at the granularity's resolution."""
    g = torch.Generator().manual_seed(seed)
    if granularity == "sample":
        factor = _inlier_factor(k * d, seed)
        inliers = (torch.randn(n, k * d, generator=g, dtype=torch.float64) @ factor.T).reshape(n, k, d)
        labels = torch.rand(n, generator=g) < outlier_fraction
        mask = labels[:, None, None].expand(n, k, d)
    elif granularity == "landmark":
        factor = _inlier_factor(d, seed)
        inliers = torch.randn(n, k, d, generator=g, dtype=torch.float64) @ factor.T
        labels = torch.rand(n, k, generator=g) < outlier_fraction
        mask = labels[:, :, None].expand(n, k, d)
    else:
        # In 1-D an outlier is only separable if it lands outside the inlier bulk: with
        # U[-10, 10] outliers, inlier std 0.05-0.1 leaves ~3% of outliers inside +-4 std.
        scale = torch.linspace(0.05, 0.1, k * d, dtype=torch.float64).reshape(k, d)
        inliers = torch.randn(n, k, d, generator=g, dtype=torch.float64) * scale
        labels = torch.rand(n, k, d, generator=g) < outlier_fraction
        mask = labels
    residuals = _contaminate(inliers, mask, g)
    return residuals.to(dtype), labels


# --------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("granularity", ["sample", "landmark", "coordinate"])
@pytest.mark.parametrize("outlier_fraction", [0.1, 0.2, 0.3, 0.4])
def test_em_recovers_pi_and_flags_outliers(outlier_fraction, granularity, dtype):
    residuals, labels = _residuals(granularity, outlier_fraction, seed=int(outlier_fraction * 10), dtype=dtype)
    fit = gum.em(residuals, granularity=granularity)
    n, k, d = residuals.shape
    expected_r_shape = {"sample": (n,), "landmark": (n, k), "coordinate": (n, k, d)}[granularity]
    assert fit.responsibilities.shape == expected_r_shape == labels.shape
    assert fit.responsibilities.dtype == dtype
    true_pi = 1 - labels.double().mean(0)  # per group
    assert fit.pi.shape == true_pi.shape
    assert (fit.pi.double() - true_pi).abs().max().item() < 0.03, (fit.pi, true_pi)
    precision, recall = _precision_recall(fit.responsibilities < 0.5, labels)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    # gamma is the density of the outliers' box, (2 a)^-e per group.
    e = {"sample": k * d, "landmark": d, "coordinate": 1}[granularity]
    expected_gamma = (2 * OUTLIER_HALF_WIDTH) ** -e
    assert torch.allclose(fit.gamma.double(), torch.full_like(fit.gamma.double(), expected_gamma), rtol=0.15)


def test_em_recovers_inlier_covariance():
    residuals, _ = _residuals("sample", 0.3, n=4000, seed=11)
    factor = _inlier_factor(6, 11)
    fit = gum.em(residuals, granularity="sample")
    assert fit.Sigma.shape == (6, 6)
    true_sigma = factor @ factor.T
    rel = torch.linalg.matrix_norm(fit.Sigma - true_sigma) / torch.linalg.matrix_norm(true_sigma)
    assert rel.item() < 0.1


def test_em_result_is_a_fixed_point_of_equations_2_to_6():
    """Re-derive the M-step from the returned responsibilities in numpy (eq. 3-6)."""
    residuals, _ = _residuals("landmark", 0.25, n=1500, seed=3)
    fit = gum.em(residuals, iters=2000, tol=1e-13, granularity="landmark")
    delta = residuals.numpy()
    r = fit.responsibilities.numpy()
    n, k, d = delta.shape
    for j in range(k):
        rj, dj = r[:, j], delta[:, j]
        sigma = (rj[:, None, None] * dj[:, :, None] * dj[:, None, :]).sum(0) / rj.sum()  # eq. 3, normalised
        pi = rj.mean()  # eq. 4
        w = (1 - rj) / ((1 - pi) * n)  # eq. 6
        c1, c2 = (w[:, None] * dj).sum(0), (w[:, None] * dj**2).sum(0)
        gamma = 1 / np.prod(2 * np.sqrt(3 * (c2 - c1**2)))  # eq. 5
        np.testing.assert_allclose(fit.Sigma[j].numpy(), sigma, rtol=1e-9)
        np.testing.assert_allclose(fit.pi[j].item(), pi, rtol=1e-9)
        np.testing.assert_allclose(fit.gamma[j].item(), gamma, rtol=1e-6)
        # eq. 2 with the returned parameters
        inv = np.linalg.inv(fit.Sigma[j].numpy())
        maha = np.einsum("ni,ij,nj->n", dj, inv, dj)
        gauss = np.exp(-0.5 * maha) / np.sqrt((2 * np.pi) ** d * np.linalg.det(fit.Sigma[j].numpy()))
        expected_r = pi * gauss / (pi * gauss + (1 - fit.pi[j].item()) * fit.gamma[j].item())
        np.testing.assert_allclose(rj, expected_r, rtol=1e-9, atol=1e-12)


def test_granularities_are_batched_independent_fits():
    """landmark == K separate sample-level fits; coordinate == K*d scalar fits; (N, D) input."""
    residuals, _ = _residuals("coordinate", 0.2, n=800, seed=5)
    n, k, d = residuals.shape
    by_landmark = gum.em(residuals, iters=50, tol=0.0, granularity="landmark")
    by_coordinate = gum.em(residuals, iters=50, tol=0.0, granularity="coordinate")
    assert by_coordinate.Sigma.shape == (k, d, 1, 1) and by_coordinate.pi.shape == (k, d)
    for j in range(k):
        single = gum.em(residuals[:, j], iters=50, tol=0.0, granularity="sample")
        assert torch.allclose(by_landmark.responsibilities[:, j], single.responsibilities, atol=1e-12)
        assert torch.allclose(by_landmark.Sigma[j], single.Sigma, rtol=1e-10)
        assert torch.allclose(by_landmark.gamma[j], single.gamma, rtol=1e-10)
        for c in range(d):
            scalar = gum.em(residuals[:, j, c : c + 1], iters=50, tol=0.0, granularity="sample")
            assert torch.allclose(by_coordinate.responsibilities[:, j, c], scalar.responsibilities, atol=1e-12)
            assert torch.allclose(by_coordinate.Sigma[j, c], scalar.Sigma, rtol=1e-10)
    # 2-D (N, D) input: one landmark; "landmark" is then the same model as "sample".
    flat = residuals.reshape(n, k * d)
    a = gum.em(flat, granularity="landmark")
    b = gum.em(flat, granularity="sample")
    assert a.responsibilities.shape == (n,) and a.pi.shape == () and a.Sigma.shape == (k * d, k * d)
    assert torch.allclose(a.responsibilities, b.responsibilities) and torch.allclose(a.Sigma, b.Sigma)
    c = gum.em(flat, granularity="coordinate")
    assert c.responsibilities.shape == (n, k * d) and c.pi.shape == (k * d,) and c.Sigma.shape == (k * d, 1, 1)
    assert torch.allclose(c.responsibilities, by_coordinate.responsibilities.reshape(n, k * d), atol=1e-6)


def test_responsibilities_e_step_and_warm_start():
    residuals, labels = _residuals("sample", 0.3, n=3000, seed=7)
    train, val = residuals[:2000], residuals[2000:]
    fit = gum.em(train)
    r_val = gum.responsibilities(val, fit)
    precision, recall = _precision_recall(r_val < 0.5, labels[2000:])
    assert precision >= 0.95 and recall >= 0.95
    assert torch.allclose(gum.responsibilities(train, fit), fit.responsibilities, atol=1e-12)
    warm = gum.em(train, init=fit)
    assert torch.allclose(warm.pi, fit.pi, atol=1e-5) and torch.allclose(warm.Sigma, fit.Sigma, rtol=1e-4)


def test_edge_cases_no_outliers_and_zero_residuals():
    g = torch.Generator().manual_seed(9)
    # Outlier-free residuals: eq. 5's moment-matched uniform then absorbs the Gaussian's
    # tail (a property of the paper's model, see gum.em's docstring); the fit stays finite
    # and, in 1-D, most samples remain inliers.
    clean = 0.5 * torch.randn(1000, 1, generator=g, dtype=torch.float64)
    fit = gum.em(clean)
    assert all(torch.isfinite(t).all() for t in fit)
    assert 0.85 < fit.pi.item() < 1.0
    zeros = gum.em(torch.zeros(50, 4, 2), granularity="landmark")
    for t in zeros:
        assert torch.isfinite(t).all()
    assert (zeros.responsibilities > 0.99).all()
    single = gum.em(torch.ones(1, 1, 1))  # N = 1 is allowed: a degenerate but finite fit
    assert torch.isfinite(single.responsibilities).all()
    half = gum.em(clean.to(torch.float16))
    assert half.pi.dtype == torch.float32


@pytest.mark.parametrize(
    "residuals, kwargs, match",
    [
        (torch.zeros(10), {}, r"\(N, K, d\) \(samples, landmarks, coordinates\) or \(N, D\); got \(10,\)"),
        (torch.zeros(2, 3, 4, 5), {}, r"\(N, K, d\).*got \(2, 3, 4, 5\)"),
        (torch.zeros(0, 3, 2), {}, r"N, K, d >= 1; got \(0, 3, 2\)"),
        (torch.zeros(5, 0), {}, r"got \(5, 0\)"),
        (torch.tensor([[0.0], [float("nan")]]), {}, r"finite"),
        (torch.zeros(5, 2, dtype=torch.int32), {}, r"floating-point"),
        (torch.zeros(5, 2), {"granularity": "image"}, r"granularity must be one of"),
        (torch.zeros(5, 2), {"iters": 0}, r"iters must be an int >= 1"),
        (torch.zeros(5, 2), {"tol": -1.0}, r"tol must be a number >= 0"),
    ],
)
def test_em_rejects_bad_input(residuals, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gum.em(residuals, **kwargs)


def test_em_and_e_step_reject_mismatched_fit():
    fit = gum.em(torch.randn(20, 3, 2), granularity="landmark")
    with pytest.raises(ValueError, match=r"pi of shape \(4,\) and Sigma of shape \(4, 2, 2\)"):
        gum.em(torch.randn(20, 4, 2), granularity="landmark", init=fit)
    with pytest.raises(ValueError, match=r"pi of shape \(\) and Sigma of shape \(6, 6\)"):
        gum.responsibilities(torch.randn(20, 3, 2), fit, granularity="sample")


# --------------------------------------------------------------------------- weighted L2


def test_weighted_l2_matches_equation_7_for_each_granularity():
    g = torch.Generator().manual_seed(12)
    pred = torch.randn(5, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(5, 3, 2, generator=g, dtype=torch.float64)
    sq = (target - pred.detach()) ** 2
    for r in (torch.rand(5, generator=g, dtype=torch.float64), torch.rand(5, 3, generator=g, dtype=torch.float64),
              torch.rand(5, 3, 2, generator=g, dtype=torch.float64)):
        weights = r.reshape(r.shape + (1,) * (3 - r.ndim))
        per_sample = (weights * sq).sum((1, 2))
        assert torch.allclose(gum.weighted_l2(pred, target, r, reduction="none"), per_sample)
        assert torch.allclose(gum.weighted_l2(pred, target, r, reduction="sum"), per_sample.sum())
        assert torch.allclose(gum.weighted_l2(pred, target, r), per_sample.mean())
    r = torch.rand(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    gum.weighted_l2(pred, target, r, reduction="sum").backward()
    assert r.grad is None  # responsibilities are constants
    assert torch.allclose(pred.grad, -2 * r.detach()[..., None] * (target - pred.detach()))


@pytest.mark.parametrize(
    "shapes, reduction, match",
    [
        (((5, 2), (5, 3), (5,)), "mean", r"target must have the shape of pred \(5, 2\)"),
        (((5, 2), (5, 2), (4,)), "mean", r"leading part of pred's shape \(5, 2\), e\.g\. \(N,\) = \(5,\)"),
        (((5, 2), (5, 2), (5, 2, 1)), "mean", r"leading part"),
        (((0, 2), (0, 2), (0,)), "mean", r"N >= 1"),
        (((5, 2), (5, 2), (5,)), "avg", r"reduction must be one of"),
    ],
)
def test_weighted_l2_rejects_bad_input(shapes, reduction, match):
    pred, target, r = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        gum.weighted_l2(pred, target, r, reduction=reduction)


# --------------------------------------------------------------------------- trainer


def _linear_data(n, g, outlier_fraction):
    weight = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.8, -1.0]])
    x = torch.randn(n, 3, generator=g)
    y = x @ weight.T + 0.1 * torch.randn(n, 2, generator=g)
    labels = torch.rand(n, generator=g) < outlier_fraction
    # one-sided outliers: they bias an L2 fit
    y = torch.where(labels[:, None], 5 + 10 * torch.rand(n, 2, generator=g), y)
    return x, y, labels, weight


def test_gum_trainer_recovers_linear_model_under_outliers():
    g = torch.Generator().manual_seed(13)
    x, y, labels, weight = _linear_data(1000, g, 0.3)
    x_tr, y_tr, x_val, y_val = x[:800], y[:800], x[800:], y[800:]

    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        return model, torch.optim.Adam(model.parameters(), lr=0.05)

    model, opt = make()
    trainer = gum.GUMTrainer(model, opt, batch_size=100, max_epochs=60, patience=5, max_rounds=4)
    history = trainer.fit(x_tr, y_tr, x_val, y_val)
    assert history[0].round == 0 and history[0].pi == 1.0 and len(history) >= 2
    assert all(h.epochs >= 1 for h in history)
    gum_error = (model.weight.detach() - weight).abs().max().item()

    l2_model, l2_opt = make()
    l2_trainer = gum.GUMTrainer(l2_model, l2_opt, batch_size=100, max_epochs=60, patience=5, max_rounds=0)
    l2_trainer.fit(x_tr, y_tr, x_val, y_val)  # max_rounds=0: the plain-L2 initialisation only
    l2_error = (l2_model.weight.detach() - weight).abs().max().item()
    assert gum_error < 0.05 and l2_error > 0.3, (gum_error, l2_error)
    assert torch.allclose(model.bias.detach(), torch.zeros(2), atol=0.05)

    precision, recall = _precision_recall(trainer.fit_result.responsibilities < 0.5, labels[:800])
    assert precision >= 0.95 and recall >= 0.95
    assert trainer.val_responsibilities.shape == (200,)
    assert abs(trainer.fit_result.pi.item() - (1 - labels[:800].float().mean().item())) < 0.03


def test_gum_trainer_rejects_bad_configuration():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="granularity"):
        gum.GUMTrainer(model, opt, granularity="pixel")
    with pytest.raises(ValueError, match="patience must be an int >= 1"):
        gum.GUMTrainer(model, opt, patience=0)
    trainer = gum.GUMTrainer(model, opt)
    with pytest.raises(ValueError, match="same, non-zero N"):
        trainer.fit(torch.zeros(4, 3), torch.zeros(5, 2), torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\(N, D\) or \(N, K, d\)"):
        trainer.fit(torch.zeros(4, 3), torch.zeros(4), torch.zeros(2, 3), torch.zeros(2))
