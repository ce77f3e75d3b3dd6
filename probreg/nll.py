"""Negative log-likelihood losses of the L2 multivariate Huber distribution (paper eq. 6)
and of the Gauss / Laplace / Charbonnier ablation families (eq. 11-13).

One fused kernel computes the per-target loss from the network prediction and the target
(eigen-decomposition, log|A| from the eigenvalues, residual, rho), one more its gradient
w.r.t. the prediction and the target; d in {1, 2, 3}. d > 3 takes the pure-PyTorch operator
probreg::_huber_nll_fallback (probreg/_fallback.py: torch.linalg.eigh, the same contract and
autograd rules). Weighting, reduction and the constant normaliser are cheap and done here.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _validation as check
from ._autograd import huber_nll_mean_one_pass
from ._ops import ops
from .normalizer import log_normalizer

__all__ = ["huber_nll", "HuberNLLLoss", "FAMILY_CODES", "COVARIANCE_CODES", "pred_width"]

# Integer codes of the op schemas (csrc/include/probreg/huber.h NllFamily / NllCovariance).
FAMILY_CODES = {"huber": 0, "gauss": 1, "laplace": 2, "charbonnier": 3}
COVARIANCE_CODES = {"identity": 0, "diagonal": 1, "full": 2}
PARAMETERIZATIONS = ("v", "mu")
REDUCTIONS = ("none", "sum", "mean")
_FUSED_MAX_DIM = 3
_HALF_TYPES = (torch.float16, torch.bfloat16)


def pred_width(d: int, covariance: str = "full") -> int:
    """Width W of a prediction row for targets in R^d: d + d(d+1)/2 (full), 2d (diagonal), d (identity)."""
    if covariance == "full":
        return d + d * (d + 1) // 2
    if covariance == "diagonal":
        return 2 * d
    if covariance == "identity":
        return d
    raise ValueError(f"covariance must be one of {tuple(COVARIANCE_CODES)}, got {covariance!r}")


def _check_options(delta, theta, parameterization, family, covariance, reduction, name: str) -> None:
    check.choice(family, "family", name, FAMILY_CODES)
    check.choice(covariance, "covariance", name, COVARIANCE_CODES)
    check.choice(parameterization, "parameterization", name, PARAMETERIZATIONS)
    check.choice(reduction, "reduction", name, REDUCTIONS)
    check.nonnegative_finite(delta, "delta", name)
    check.positive_finite(theta, "theta", name)


def _static_size(n) -> int:
    """A tensor size as a Python int. Under torch.compile(dynamic=True) sizes are symbolic;
    comparing one with constants makes dynamo guard on (specialise) it, as the target
    dimension d must be: the kernels and the normaliser are specialised on it."""
    if not torch.compiler.is_compiling():
        return int(n)
    for k in range(0, 4097):
        if n == k:
            return k
    raise ValueError(f"target dimension {n} is larger than 4096")


def _check_tensors(pred, target, covariance: str, name: str) -> int:
    check.tensor(pred, "pred", name, min_dim=1, shape_text="(..., W)")
    check.tensor(target, "target", name, min_dim=1, shape_text="(..., d)")
    check.same_device([("pred", pred), ("target", target)], name)
    d = _static_size(target.shape[-1])
    if d < 1:
        raise ValueError(f"{name}: target must have shape (..., d) with d >= 1, got {tuple(target.shape)}")
    if pred.shape[:-1] != target.shape[:-1]:
        raise ValueError(
            f"{name}: pred (..., W) and target (..., d) must have the same batch shape "
            f"(no broadcasting), got pred {tuple(pred.shape)} and target {tuple(target.shape)}"
        )
    width = pred_width(d, covariance)
    if pred.shape[-1] != width:
        raise ValueError(
            f"{name}: for d = {d} (target {tuple(target.shape)}) and covariance={covariance!r}, pred must "
            f"have width {width} (location then covariance parameters), got pred {tuple(pred.shape)}"
        )
    return d


def _check_weight(weight, batch_shape, dtype: torch.dtype, device: torch.device, name: str):
    """weight: None, a real number, or a real (floating, integer or bool) tensor on pred's
    device (a 0-d CPU tensor also serves), broadcastable to the batch shape (...) without
    changing it; >= 0 (the package-wide rule, probreg._validation.nonnegative_weight).
    Returned as a tensor of the loss dtype."""
    if weight is None:
        return None
    if not isinstance(weight, torch.Tensor):
        check.nonnegative(weight, "weight", name, "a tensor broadcastable to the batch shape or a real number >= 0")
        return torch.tensor(float(weight), dtype=dtype, device=device)
    if weight.is_complex():
        raise TypeError(f"{name}: weight must be a real tensor (floating point, integer or bool), got {weight.dtype}")
    if weight.dim() > 0 and weight.device != device:
        raise ValueError(f"{name}: weight is on {weight.device} but pred is on {device}; they must be on the same device")
    try:
        broadcast = torch.broadcast_shapes(weight.shape, batch_shape)
    except RuntimeError:
        broadcast = None
    if broadcast != batch_shape:
        raise ValueError(
            f"{name}: weight must be broadcastable to the batch shape (...) = {tuple(batch_shape)} of target "
            f"(one weight per target), got weight of shape {tuple(weight.shape)}"
        )
    return check.nonnegative_weight(weight.to(dtype=dtype, device=device), "weight", name)


def _weighted_reduce(loss: torch.Tensor, weight, reduction: str, constant) -> torch.Tensor:
    """Reduce the per-target loss + constant (the normaliser: None, a float, or a 0-d
    tensor under torch.compile), folded in after the reduction so that no extra
    elementwise pass is spent on it.

    Per-target weights broadcast to loss's shape. A zero weight removes the target exactly
    (no cost, no gradient, even where its loss is NaN). 'mean' is the weighted mean
    sum(w l) / sum(w), as in torch.nn.NLLLoss, but 0 (not NaN) when the total weight is 0:
    every weight 0, or an empty batch with or without weights.
    """
    if weight is None:
        if reduction == "none":
            return loss if constant is None else loss + constant
        if reduction == "sum":
            return loss.sum() if constant is None else loss.sum() + constant * loss.numel()
        # sum * (1/n), not mean(): the backward then hands the fused op one broadcast
        # value instead of a materialised (...)-shaped gradient. An empty batch gives 0, as
        # a zero total weight does (README "Errors and guarantees"; torch's losses give NaN).
        if loss.numel() == 0:
            return loss.sum()
        mean = loss.sum() * (1.0 / loss.numel())
        return mean if constant is None else mean + constant
    w = torch.broadcast_to(torch.as_tensor(weight, dtype=loss.dtype, device=loss.device), loss.shape)
    weighted = torch.where(w != 0, w * (loss if constant is None else loss + constant), torch.zeros_like(loss))
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    total = w.sum()
    return weighted.sum() / torch.where(total != 0, total, torch.ones_like(total))


def _normalizer_constant(d: int, family: str, delta: float):
    """log c as a float; under torch.compile a 0-d float64 tensor from the
    probreg::_log_normalizer op, because delta may be symbolic there (a changing delta
    becomes a dynamic float after the first recompilation)."""
    if torch.compiler.is_compiling():
        return ops._log_normalizer(d, family, delta)
    return log_normalizer(d, family, delta)


def huber_nll(
    pred: torch.Tensor,
    target: torch.Tensor,
    delta: float = 1.0,
    theta: float = 1.0,
    *,
    parameterization: str = "v",
    family: str = "huber",
    covariance: str = "full",
    reduction: str = "mean",
    normalized: bool = True,
    weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Negative log-likelihood -log p(target | pred) of the L2 multivariate Huber
    distribution (or an ablation family), fused forward and backward.

    Args:
        pred: (..., W) network prediction per target: the location (v, or mu) then the
            covariance parameters: full -> packed raw B (d(d+1)/2 values, upper triangle
            row-major, off-diagonals carrying sqrt(2)), W = d + d(d+1)/2; diagonal -> d raw
            diagonal values, W = 2d; identity -> nothing, W = d.
            A = V diag(g(l)) V^T from B = V diag(l) V^T, g(l) = l (l > theta) else
            theta exp(l/theta - 1).
        target: (..., d), same batch shape as pred (no broadcasting).
        delta: Huber threshold >= 0 (huber family only).
        theta: > 0, the smallest reasonable precision eigenvalue (the remap g).
        parameterization: "v": r = A y - v (paper eq. 6); "mu": r = A (y - mu).
        family: "huber" (h_delta), "gauss" (s^2/2), "laplace" (s), "charbonnier" (sqrt(s^2+1)-1).
        covariance: "full", "diagonal" or "identity" (A = I).
        reduction: "none" -> (...), "sum" or "mean" -> scalar.
        normalized: add the family's log normaliser log c (probreg.normalizer.log_normalizer),
            making the loss an exact negative log-density.
        weight: optional per-target weights broadcastable to (...); 0 masks a target
            exactly (its loss and gradient are 0 whatever its values, NaN included);
            "mean" then divides by sum(weight).
    Returns:
        The loss: per target -log|A| + rho(||r||) (+ log c). float32 for float16/bfloat16
        inputs (autocast-friendly, computed in float32 or better), else pred's dtype.
        Mixed pred/target dtypes are promoted to the wider one.
    Gradients w.r.t. pred and target (fused backward, finite for every finite input:
    log|A| is differentiated in the eigenbasis, -1/max(l, theta) per eigenvalue).
    """
    name = "probreg.huber_nll"
    _check_options(delta, theta, parameterization, family, covariance, reduction, name)
    d = _check_tensors(pred, target, covariance, name)
    normalized = check.boolean(normalized, "normalized", name)
    if normalized and family == "huber" and delta == 0:
        raise ValueError(
            f"{name}: the Huber density with delta = 0 is not normalisable (log c_d(0) = +inf); "
            "use delta > 0 or normalized=False"
        )
    if pred.dtype != target.dtype:
        common = torch.promote_types(pred.dtype, target.dtype)
        pred, target = pred.to(common), target.to(common)
    loss_dtype = torch.float32 if pred.dtype in _HALF_TYPES else pred.dtype
    weight = _check_weight(weight, target.shape[:-1], loss_dtype, pred.device, name)
    args = (pred, target, float(delta), float(theta), FAMILY_CODES[family], COVARIANCE_CODES[covariance],
            parameterization == "mu")
    constant = _normalizer_constant(d, family, float(delta)) if normalized else None
    if isinstance(constant, torch.Tensor):  # as eager's Python float: in the loss dtype
        constant = constant.to(loss_dtype)
    if reduction == "mean" and weight is None:
        # The mean and its gradients in one pass where huber_nll's one-pass route applies
        # (probreg/_autograd.py _HuberNllOnePass): the same value as below.
        mean = huber_nll_mean_one_pass(args)
        if mean is not None:
            return mean if constant is None else mean + constant
    op = ops.huber_nll if d <= _FUSED_MAX_DIM else ops._huber_nll_fallback
    return _weighted_reduce(op(*args), weight, reduction, constant)


class HuberNLLLoss(torch.nn.Module):
    """Module form of probreg.huber_nll (torch.nn loss conventions).

    forward(input (..., W), target (..., d), weight=None) -> loss; see huber_nll for the
    layout, the options and the returned dtype.
    """

    def __init__(
        self,
        delta: float = 1.0,
        theta: float = 1.0,
        *,
        parameterization: str = "v",
        family: str = "huber",
        covariance: str = "full",
        reduction: str = "mean",
        normalized: bool = True,
    ) -> None:
        super().__init__()
        _check_options(delta, theta, parameterization, family, covariance, reduction, "probreg.HuberNLLLoss")
        self.delta = float(delta)
        self.theta = float(theta)
        self.parameterization = parameterization
        self.family = family
        self.covariance = covariance
        self.reduction = reduction
        self.normalized = check.boolean(normalized, "normalized", "probreg.HuberNLLLoss")

    def forward(self, input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        return huber_nll(
            input,
            target,
            self.delta,
            self.theta,
            parameterization=self.parameterization,
            family=self.family,
            covariance=self.covariance,
            reduction=self.reduction,
            normalized=self.normalized,
            weight=weight,
        )

    def extra_repr(self) -> str:
        return (
            f"delta={self.delta}, theta={self.theta}, parameterization={self.parameterization!r}, "
            f"family={self.family!r}, covariance={self.covariance!r}, reduction={self.reduction!r}, "
            f"normalized={self.normalized}"
        )
