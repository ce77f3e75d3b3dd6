"""probreg.nn: a prediction head for the Huber NLL and the helpers that read its output.

    head = probreg.nn.PredictionHead(in_features=F, num_targets=K, dim=2, init_precision=1.0)
    pred = head(features)                 # (..., F) -> (..., K, W), the huber_nll layout
    loss = head.loss()(pred, targets)     # HuberNLLLoss with the head's theta, delta, layout
    mu, cov = head.location(pred), head.covariance_matrix(pred)

The head is one linear layer whose output is expressed in units of the target scale
s = 1 / init_precision (what normalising the targets by their spread would do), with zero
weights at initialisation, so that at step 0, for every input,

    A = init_precision * I   and   mu = init_location (or the `location` given to forward).

Prediction layout (..., K, W), as probreg.huber_nll reads it: the location (v or mu, d
numbers), then the covariance parameters: full -> packed raw B (d(d+1)/2 numbers, upper
triangle row-major, off-diagonals carrying sqrt(2)), diagonal -> d raw diagonal values,
identity -> nothing (A = I). The linear layer's output z (..., K, W) maps to it as
    raw covariance = init_precision * z_cov        (A = g_theta(raw) = init_precision * g_{theta/init_precision}(z_cov))
    "mu": mu = location + z_loc / init_precision
    "v":  v  = A location + z_loc                  (so mu = A^-1 v = location + A^-1 z_loc;
                                                    identity covariance: v = mu as for "mu")
where location is init_location, or the base location passed to forward (e.g. a
soft-argmax), which then moves with the network instead of being a constant.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from . import _validation as check
from .distributions import HuberL2
from .nll import COVARIANCE_CODES, HuberNLLLoss, _check_weight, _weighted_reduce, pred_width
from .spd import spd_from_raw

__all__ = ["PredictionHead", "OutlierMixtureNLLLoss", "raw_for_precision"]

_NAME = "probreg.nn.PredictionHead"
_LOSS_NAME = "probreg.nn.OutlierMixtureNLLLoss"


def raw_for_precision(precision: float, theta: float) -> float:
    """The raw eigenvalue l with g_theta(l) = precision: g^-1(a) = a for a > theta, else
    theta (1 + log(a / theta)). A raw B = l I gives A = precision * I.
    precision, theta: finite real numbers > 0 (Python or numpy)."""
    op = "probreg.nn.raw_for_precision"
    precision = check.positive_finite(precision, "precision", op)
    theta = check.positive_finite(theta, "theta", op)
    if precision > theta:
        return precision
    return theta * (1.0 + math.log(precision / theta))


class PredictionHead(nn.Module):
    """Linear head from features (..., F) to Huber predictions (..., K, W).

    Args:
        in_features: F, the size of the last feature dimension.
        num_targets: K, the number of targets (keypoints) predicted per input.
        dim: d in {1, 2, 3}, the dimension of each target.
        covariance: "full" (W = d + d(d+1)/2), "diagonal" (W = 2d) or "identity" (W = d).
        parameterization: "v" (r = A y - v, paper eq. 6) or "mu" (r = A (y - mu)).
        init_precision: A = init_precision * I for every input at step 0, in inverse target
            units. The default 1 is right for targets normalised to unit spread (the README
            training recipe); otherwise pass 1 / (the spread of the targets around
            init_location), e.g. the standard deviation or 1.4826 * MAD of the training
            targets (see PredictionHead.from_targets). Its reciprocal is also the unit of
            the layer's location output, so the first steps move mu by about that much.
        init_location: mu at step 0 when forward gets no location: a float, or a tensor
            broadcastable to (K, d) (e.g. the mean of the training targets). Default 0.
        theta: > 0, the remap threshold of the SPD map (the smallest reasonable
            precision, in inverse target units). Default init_precision / 4: a
            distribution four times as wide as the targets' spread, wider than any worth
            representing (results do not depend on theta below the precisions training
            reaches: README, training recipe); pass the same value to the loss (head.loss()
            does).
        delta: > 0, the Huber threshold used by loss(), covariance_matrix() and
            distribution() (the head's output does not depend on it).
        device, dtype: of the linear layer's parameters.

    forward(features, location=None) -> pred (..., K, W). features: (..., F) in the
    parameters' dtype (as torch.nn.Linear; autocast excepted) and device. location: an
    optional base location (..., K, d) (e.g. from a soft-argmax) broadcastable with
    features' batch shape, on the same device; the head adds its learned offset to it (see
    the module docstring); a location of another floating dtype computes in the wider one.
    """

    def __init__(
        self,
        in_features: int,
        num_targets: int,
        dim: int = 2,
        *,
        covariance: str = "full",
        parameterization: str = "v",
        init_precision: float = 1.0,
        init_location=0.0,
        theta: Optional[float] = None,
        delta: float = 1.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.in_features = check.integer(in_features, "in_features", _NAME, low=1)
        self.num_targets = check.integer(num_targets, "num_targets", _NAME, low=1)
        self.dim = check.integer(dim, "dim", _NAME, low=1, high=3)
        self.covariance = check.choice(covariance, "covariance", _NAME, COVARIANCE_CODES)
        self.parameterization = check.choice(parameterization, "parameterization", _NAME, ("v", "mu"))
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"{_NAME}: dtype must be a floating-point torch.dtype, got {dtype!r}")
        # init_precision and its reciprocal (the unit of the location output) must both be
        # normal numbers of the parameters' dtype: [tiny, 1 / tiny]
        tiny = torch.finfo(dtype or torch.get_default_dtype()).tiny
        self.init_precision = check.real(init_precision, "init_precision", _NAME,
                                         f"a real number in [{tiny:g}, {1 / tiny:g}] (the parameters' dtype)",
                                         low=tiny, high=1 / tiny)
        self.theta = self.init_precision / 4.0 if theta is None else check.positive_finite(theta, "theta", _NAME)
        self.delta = check.positive_finite(delta, "delta", _NAME)
        self.width = pred_width(self.dim, self.covariance)
        self.linear = nn.Linear(self.in_features, self.num_targets * self.width, device=device, dtype=dtype)
        if isinstance(init_location, torch.Tensor):
            check.tensor(init_location, "init_location", _NAME, shape_text="broadcastable to (num_targets, dim)")
        elif check._is_real(init_location):
            init_location = check.real(init_location, "init_location", _NAME, "a finite real number or tensor",
                                       low=-math.inf, low_open=True, high=math.inf, high_open=True)
        else:
            raise TypeError(f"{_NAME}: init_location must be a real number or a floating-point tensor "
                            f"broadcastable to (num_targets, dim), got {type(init_location).__name__}")
        try:
            location = torch.as_tensor(init_location, dtype=self.linear.weight.dtype, device=self.linear.weight.device)
            location = torch.broadcast_to(location, (self.num_targets, self.dim)).clone()
        except RuntimeError as exc:
            raise ValueError(
                f"{_NAME}: init_location must be a number or broadcastable to (num_targets, dim) = "
                f"({self.num_targets}, {self.dim}), got shape {tuple(init_location.shape)}"
            ) from exc
        if not bool(torch.isfinite(location).all()):
            raise ValueError(f"{_NAME}: init_location must be finite, got {init_location!r}")
        self.register_buffer("init_location", location)
        self.reset_parameters()

    @classmethod
    def from_targets(cls, in_features: int, targets: torch.Tensor, **kwargs) -> "PredictionHead":
        """A head whose step-0 distribution matches the training targets (N, K, d):
        init_location = their per-target median, init_precision = 1 / (1.4826 * MAD), the
        median absolute deviation from that median over all targets and coordinates (a
        spread estimate that outlier labels do not inflate). Other arguments as __init__."""
        if not isinstance(targets, torch.Tensor) or targets.dim() != 3 or not targets.is_floating_point():
            raise ValueError(f"{_NAME}.from_targets: targets must be a float tensor (N, K, d), got "
                             f"{getattr(targets, 'shape', type(targets).__name__)}")
        if "init_precision" in kwargs or "init_location" in kwargs:
            raise ValueError(f"{_NAME}.from_targets: init_precision and init_location come from the targets")
        location = targets.median(dim=0).values
        spread = 1.4826 * (targets - location).abs().median()
        if not float(spread) > 0:
            raise ValueError(f"{_NAME}.from_targets: the targets have no spread (MAD = 0)")
        return cls(in_features, targets.shape[1], targets.shape[2], init_precision=float(spread) ** -1.0,
                   init_location=location, **kwargs)

    def reset_parameters(self) -> None:
        """Zero weights; biases giving A = init_precision * I and a zero location offset."""
        with torch.no_grad():
            self.linear.weight.zero_()
            bias = self.linear.bias.view(self.num_targets, self.width)
            bias.zero_()
            # z_cov = g_{theta / p}^-1(1): A = p * g_{theta/p}(z) = p
            unit = raw_for_precision(1.0, self.theta / self.init_precision)
            d = self.dim
            if self.covariance == "diagonal":
                bias[:, d:] = unit
            elif self.covariance == "full":
                diagonal = [d + i * d - i * (i - 1) // 2 for i in range(d)]  # packed (i, i) entries
                bias[:, diagonal] = unit

    def forward(self, features: torch.Tensor, location: Optional[torch.Tensor] = None) -> torch.Tensor:
        K, d = self.num_targets, self.dim
        weight = self.linear.weight
        check.tensor(features, "features", _NAME, min_dim=1, shape_text=f"(..., {self.in_features})")
        if features.shape[-1] != self.in_features:
            raise ValueError(f"{_NAME}: features must have shape (..., {self.in_features}), got {tuple(features.shape)}")
        check.same_device([("the head's weight", weight), ("features", features)], _NAME)
        if features.dtype != weight.dtype and not torch.is_autocast_enabled(features.device.type):
            raise TypeError(f"{_NAME}: features must have the dtype of the head's parameters ({weight.dtype}; "
                            f"convert one with .to()), got {features.dtype}")
        if location is not None:
            check.tensor(location, "location", _NAME, min_dim=2, shape_text=f"(..., {K}, {d})")
            if location.shape[-2:] != (K, d):
                raise ValueError(f"{_NAME}: location must have shape (..., {K}, {d}), got {tuple(location.shape)}")
            check.same_device([("features", features), ("location", location)], _NAME)
            try:
                torch.broadcast_shapes(location.shape[:-2], features.shape[:-1])
            except RuntimeError:
                raise ValueError(f"{_NAME}: location's batch shape {tuple(location.shape[:-2])} does not broadcast "
                                 f"with features' batch shape {tuple(features.shape[:-1])}") from None
        z = self.linear(features).unflatten(-1, (K, self.width))
        base = self.init_location if location is None else location
        if base.dtype != z.dtype:  # mixed dtypes compute in the wider one (as huber_nll)
            common = torch.promote_types(base.dtype, z.dtype)
            z, base = z.to(common), base.to(common)
        p = self.init_precision
        cov_raw = z[..., d:] * p
        if self.parameterization == "mu" or self.covariance == "identity":  # identity: A = I, v = mu
            loc = base + z[..., :d] * (1.0 / p)
        else:
            A = self._precision_from_raw(cov_raw)
            loc = (A @ base.unsqueeze(-1)).squeeze(-1) + z[..., :d]
        loc = torch.broadcast_to(loc, torch.broadcast_shapes(loc.shape, z.shape[:-1] + (d,)))
        return torch.cat([loc, cov_raw.expand(loc.shape[:-1] + cov_raw.shape[-1:])], dim=-1)

    def _precision_from_raw(self, cov_raw: torch.Tensor) -> torch.Tensor:
        if self.covariance == "full":
            return spd_from_raw(cov_raw, self.theta)
        return torch.diag_embed(spd_from_raw(cov_raw.unsqueeze(-1), self.theta)[..., 0, 0])

    def _check_pred(self, pred: torch.Tensor) -> None:
        shape = (self.num_targets, self.width)
        if not isinstance(pred, torch.Tensor) or pred.dim() < 2 or tuple(pred.shape[-2:]) != shape:
            raise ValueError(f"{_NAME}: pred must have shape (..., {shape[0]}, {shape[1]}), got "
                             f"{tuple(getattr(pred, 'shape', ()))}")

    # ------------------------------------------------------------------ reading a prediction
    def distribution(self, pred: torch.Tensor) -> HuberL2:
        """HuberL2 of a prediction (..., K, W): batch shape (..., K), event shape (d,);
        log_prob(y) == -huber_nll(pred, y, delta, theta, reduction="none")."""
        self._check_pred(pred)
        return HuberL2.from_prediction(pred, self.parameterization, self.covariance, delta=self.delta, theta=self.theta)

    def location(self, pred: torch.Tensor) -> torch.Tensor:
        """mu (..., K, d): the mean and mode (A^-1 v for the v parameterisation)."""
        return self.distribution(pred).loc

    def precision_sqrt(self, pred: torch.Tensor) -> torch.Tensor:
        """A (..., K, d, d), symmetric positive definite."""
        return self.distribution(pred).precision_sqrt

    def covariance_matrix(self, pred: torch.Tensor) -> torch.Tensor:
        """Cov[y] = kappa_d(delta) (A^T A)^-1 (..., K, d, d) (HuberL2.covariance_matrix)."""
        return self.distribution(pred).covariance_matrix

    def loss(self, family: str = "huber", reduction: str = "mean", normalized: bool = True, *,
             outlier_fraction: float = 0.0, outlier_log_density: Optional[float] = None) -> nn.Module:
        """The NLL loss reading this head's layout, with its theta and delta: a
        HuberNLLLoss, or with outlier_fraction > 0 an OutlierMixtureNLLLoss (then
        outlier_log_density is required)."""
        if outlier_fraction == 0.0 and outlier_log_density is None:
            return HuberNLLLoss(self.delta, self.theta, parameterization=self.parameterization, family=family,
                                covariance=self.covariance, reduction=reduction, normalized=normalized)
        return OutlierMixtureNLLLoss(outlier_fraction, outlier_log_density, self.delta, self.theta,
                                     parameterization=self.parameterization, family=family,
                                     covariance=self.covariance, reduction=reduction)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_targets={self.num_targets}, dim={self.dim}, "
                f"covariance={self.covariance!r}, parameterization={self.parameterization!r}, "
                f"init_precision={self.init_precision:g}, theta={self.theta:g}, delta={self.delta:g}")


class OutlierMixtureNLLLoss(nn.Module):
    """NLL of the prediction's density mixed with an outlier density:

        loss = -log((1 - eps) p(y | pred) + eps u(y))

    p the normalised density of probreg.huber_nll (any family, layout and options), u the
    density of a wrong label (e.g. uniform over the image: log u = -log(area in target
    units)) and eps = outlier_fraction its prior probability. The Huber NLL alone bounds an
    outlier's pull but still pays for it: with 10% labels anywhere in the image its maximum
    likelihood precision is ~2x too small for the correct labels (regions over-cover them)
    and, with one-sided outliers, its location is biased. The mixture gives a label that
    p explains worse than eps u / (1 - eps) a vanishing weight (inlier_probability), as
    DeepGUM's Gaussian-uniform mixture does, so A describes the correct labels.

    Args:
        outlier_fraction: eps in (0, 1).
        outlier_log_density: log u, a finite number (constant over the target domain).
        delta, theta, parameterization, family, covariance: as probreg.huber_nll.
        reduction: "none" | "sum" | "mean" (weighted mean with weight, as huber_nll).
    forward(pred (..., W), target (..., d), weight=None) -> loss (see reduction).
    """

    def __init__(self, outlier_fraction: float, outlier_log_density: float, delta: float = 1.0, theta: float = 1.0,
                 *, parameterization: str = "v", family: str = "huber", covariance: str = "full",
                 reduction: str = "mean") -> None:
        super().__init__()
        name = _LOSS_NAME
        outlier_fraction = check.real(outlier_fraction, "outlier_fraction", name, "a real number in (0, 1)",
                                      low=0.0, low_open=True, high=1.0, high_open=True)
        outlier_log_density = check.real(outlier_log_density, "outlier_log_density", name,
                                         "a finite real number (log of the outlier density)",
                                         low=-math.inf, low_open=True, high=math.inf, high_open=True)
        # the per-target NLL, validated by HuberNLLLoss (delta, theta, family, covariance, parameterization)
        self.nll = HuberNLLLoss(delta, theta, parameterization=parameterization, family=family,
                                covariance=covariance, reduction="none", normalized=True)
        check.choice(reduction, "reduction", name, ("none", "sum", "mean"))
        self.outlier_fraction = float(outlier_fraction)
        self.outlier_log_density = float(outlier_log_density)
        self.reduction = reduction

    def _log_terms(self, pred, target):
        inlier = math.log1p(-self.outlier_fraction) - self.nll(pred, target)
        # a float64 constant rounded to the loss dtype (+-inf beyond its range, not an overflow error)
        constant = torch.tensor(math.log(self.outlier_fraction) + self.outlier_log_density, dtype=torch.float64)
        outlier = constant.to(dtype=inlier.dtype, device=inlier.device).expand_as(inlier)
        return inlier, outlier

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        inlier, outlier = self._log_terms(pred, target)  # validates pred and target (huber_nll)
        weight = _check_weight(weight, inlier.shape, inlier.dtype, inlier.device, _LOSS_NAME)
        return _weighted_reduce(-torch.logaddexp(inlier, outlier), weight, self.reduction, None)

    @torch.no_grad()
    def inlier_probability(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(...) the posterior probability that each label is an inlier (its weight in the loss)."""
        inlier, outlier = self._log_terms(pred, target)
        return torch.sigmoid(inlier - outlier)

    def extra_repr(self) -> str:
        return (f"outlier_fraction={self.outlier_fraction:g}, outlier_log_density={self.outlier_log_density:g}, "
                f"reduction={self.reduction!r}")
