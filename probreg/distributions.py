"""HuberL2: the L2 multivariate Huber distribution as a torch.distributions.Distribution.

    p(y) = |A| / c_d(delta) * exp(-h_delta(||A (y - mu)||))      (paper eq. 3, 19)

with A = Lambda^{1/2} symmetric positive definite, mean = mode = mu and
Cov[y] = kappa_d(delta) (A^T A)^-1 (app. A.2). A comes either from the raw network
parameterisation (packed B, A = V diag(g(l)) V^T, as in huber_nll) or from an explicit
matrix. Sampling is exact and reparameterised: y = mu + A^-1 (R u), u uniform on the unit
sphere and R from the radial density proportional to r^(d-1) exp(-h_delta(r)).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch.distributions import Distribution, constraints
from torch.distributions.utils import lazy_property

from . import _validation as check
from ._spectral import remap_g
from .nll import COVARIANCE_CODES, huber_nll, pred_width
from .normalizer import _log_a  # noqa: PLC2701  (the inside radial mass a(n))
from .normalizer import (
    huber_expected_rho,
    huber_log_normalizer,
    huber_radius_inside_probability,
    huber_variance_factor,
)
from .packing import dim_from_packed_size, pack_sym
from .regions import huber_region_radius
from .spd import spd_from_raw

__all__ = ["HuberL2", "sample_huber_radius"]


def _check_positive(value, name: str) -> float:
    return check.positive_finite(value, name, "probreg.HuberL2")


def _dim_from_width(width: int, covariance: str) -> int:
    if covariance == "diagonal":
        d = width // 2
    elif covariance == "identity":
        d = width
    elif covariance == "full":
        d = next((k for k in range(1, width + 1) if k + k * (k + 1) // 2 >= width), 0)
    else:
        raise ValueError(f"HuberL2: covariance must be one of {tuple(COVARIANCE_CODES)}, got {covariance!r}")
    if d < 1 or pred_width(d, covariance) != width:
        raise ValueError(f"HuberL2: prediction width {width} is not valid for covariance={covariance!r}")
    return d


@torch.no_grad()
def sample_huber_radius(shape, d: int, delta: float, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Exact samples of R = ||A (y - mu)|| under the Huber distribution: density
    proportional to r^(d-1) exp(-h_delta(r)) on r >= 0.

    Inside (r <= delta, with probability a(d-1)/m(d-1)): density r^(d-1) exp(-r^2/2) on
    [0, delta], by rejection from whichever proposal accepts more often: r = delta U^(1/d)
    accepted with probability exp(-r^2/2), or a chi_d variate accepted when r <= delta.
    Outside: r = delta + t with density (delta + t)^(d-1) exp(-delta t), t > 0, which is
    the binomial mixture sum_k C(d-1, k) delta^(d-1-k) t^k exp(-delta t): choose k with
    weight (d-1)!/(d-1-k)! delta^(d-2-2k), then t ~ Gamma(k+1, rate delta) as a sum of
    k+1 exponentials. Computed in float64, returned in dtype.
    """
    shape = torch.Size(shape)
    n = shape.numel()
    p_inside = huber_radius_inside_probability(d, delta)
    r = torch.empty(n, dtype=torch.float64, device=device)
    inside = torch.rand(n, dtype=torch.float64, device=device) < p_inside
    n_in = int(inside.sum())
    r[inside] = _sample_truncated_chi(n_in, d, delta, device)
    n_out = n - n_in
    if n_out:
        k = torch.arange(d, dtype=torch.float64)
        log_w = math.lgamma(d) - torch.lgamma(d - k) + (d - 2 - 2 * k) * math.log(delta)
        comp = torch.multinomial(torch.softmax(log_w, 0), n_out, replacement=True).to(device)
        expo = torch.empty(n_out, d, dtype=torch.float64, device=device).exponential_()
        keep = torch.arange(d, device=device).unsqueeze(0) <= comp.unsqueeze(1)
        r[~inside] = delta + (expo * keep).sum(1) / delta
    return r.reshape(shape).to(dtype)


def _sample_truncated_chi(n: int, d: int, delta: float, device) -> torch.Tensor:
    """n samples of the density proportional to r^(d-1) exp(-r^2/2) on [0, delta]."""
    if n == 0:
        return torch.empty(0, dtype=torch.float64, device=device)
    log_a = _log_a(d - 1, delta)  # log int_0^delta r^(d-1) exp(-r^2/2) dr
    accept_ball = math.exp(log_a + math.log(d) - d * math.log(delta))
    accept_chi = math.exp(log_a - 0.5 * (d - 2) * math.log(2.0) - math.lgamma(0.5 * d))
    use_ball = accept_ball >= accept_chi
    rate = max(accept_ball, accept_chi)
    out = []
    remaining = n
    while remaining > 0:
        m = int(remaining / rate * 1.2) + 64
        if use_ball:
            cand = delta * torch.rand(m, dtype=torch.float64, device=device).pow(1.0 / d)
            ok = torch.rand(m, dtype=torch.float64, device=device) < torch.exp(-0.5 * cand * cand)
        else:
            cand = torch.linalg.vector_norm(torch.randn(m, d, dtype=torch.float64, device=device), dim=1)
            ok = cand <= delta
        accepted = cand[ok][:remaining]
        out.append(accepted)
        remaining -= accepted.numel()
    return torch.cat(out)


def _huber_rho(r: torch.Tensor, delta) -> torch.Tensor:
    """h_delta(||r||) over the last dim; the quadratic piece from sum(r^2), smooth at r = 0."""
    sq = (r * r).sum(-1)
    inside = sq <= delta * delta
    return torch.where(inside, 0.5 * sq, delta * (torch.sqrt(torch.where(inside, torch.ones_like(sq), sq)) - 0.5 * delta))


class HuberL2(Distribution):
    """L2 multivariate Huber distribution over R^d (event shape (d,)).

    Construct from the location and one of
        precision_sqrt: (..., d, d) symmetric positive-definite A, or
        raw: (..., d(d+1)/2) packed raw B (A = spd_from_raw(raw, theta)),
    or from a network prediction with HuberL2.from_prediction(pred, ...), which keeps the
    prediction as is so that log_prob equals -huber_nll(pred, y, reduction="none").

    Args:
        loc: (..., d) the mean mu (also the mode).
        delta: Huber threshold > 0. theta: > 0, the remap's threshold (raw only).
    Batch shape: the broadcast of loc's and the matrix's batch shapes.
    """

    arg_constraints = {
        "loc": constraints.real_vector,
        "precision_sqrt": constraints.positive_definite,
        "raw": constraints.real_vector,
    }
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        loc: torch.Tensor,
        precision_sqrt: Optional[torch.Tensor] = None,
        *,
        raw: Optional[torch.Tensor] = None,
        delta: float = 1.0,
        theta: float = 1.0,
        validate_args: Optional[bool] = None,
    ) -> None:
        if (precision_sqrt is None) == (raw is None):
            raise ValueError("HuberL2: give exactly one of precision_sqrt and raw")
        op = "probreg.HuberL2"
        check.tensor(loc, "loc", op, min_dim=1, shape_text="(..., d)")
        d = loc.shape[-1]
        if precision_sqrt is not None:
            check.tensor(precision_sqrt, "precision_sqrt", op, min_dim=2, shape_text=f"(..., {d}, {d})")
            if precision_sqrt.dim() < 2 or precision_sqrt.shape[-2:] != (d, d):
                raise ValueError(
                    f"HuberL2: precision_sqrt must have shape (..., {d}, {d}) for loc {tuple(loc.shape)}, "
                    f"got {tuple(precision_sqrt.shape)}"
                )
            batch = torch.broadcast_shapes(loc.shape[:-1], precision_sqrt.shape[:-2])
            self.loc = loc.expand(batch + (d,))
            self.precision_sqrt = precision_sqrt.expand(batch + (d, d))
            self._init_common(None, "matrix", False, d, delta, theta, batch, validate_args)
        else:
            check.tensor(raw, "raw", op, min_dim=1, shape_text=f"(..., {d * (d + 1) // 2})")
            if raw.dim() < 1 or dim_from_packed_size(raw.shape[-1], f"{op}: raw") != d:
                raise ValueError(
                    f"HuberL2: raw must have shape (..., {d * (d + 1) // 2}) for loc {tuple(loc.shape)}, "
                    f"got {tuple(raw.shape)}"
                )
            batch = torch.broadcast_shapes(loc.shape[:-1], raw.shape[:-1])
            self.loc = loc.expand(batch + (d,))
            self.raw = raw.expand(batch + raw.shape[-1:])
            pred = torch.cat([self.loc, self.raw], dim=-1)
            self._init_common(pred, "full", True, d, delta, theta, batch, validate_args)

    @classmethod
    def from_prediction(
        cls,
        pred: torch.Tensor,
        parameterization: str = "v",
        covariance: str = "full",
        *,
        delta: float = 1.0,
        theta: float = 1.0,
        validate_args: Optional[bool] = None,
    ) -> "HuberL2":
        """The distribution of a network prediction pred (..., W), laid out as for
        probreg.huber_nll (location v or mu, then full / diagonal / no covariance
        parameters). log_prob(y) == -huber_nll(pred, y, reduction="none") exactly."""
        op = "probreg.HuberL2.from_prediction"
        check.choice(parameterization, "parameterization", op, ("v", "mu"))
        check.tensor(pred, "pred", op, min_dim=1, shape_text="(..., W)")
        d = _dim_from_width(pred.shape[-1], covariance)
        self = cls.__new__(cls)
        if parameterization == "mu":
            self.loc = pred[..., :d]
        if covariance == "full":
            self.raw = pred[..., d:]
        self._init_common(pred, covariance, parameterization == "mu", d, delta, theta, pred.shape[:-1], validate_args)
        return self

    def _init_common(self, pred, covariance, mu_param, d, delta, theta, batch, validate_args) -> None:
        self.delta = _check_positive(delta, "delta")
        self.theta = _check_positive(theta, "theta")
        self._pred = pred
        self._covariance = covariance  # "full" | "diagonal" | "identity" | "matrix" (explicit A)
        self._mu_param = mu_param
        self._d = d
        # An empty batch has nothing to validate (and torch's constraint checks fail to
        # reshape zero elements).
        if torch.Size(batch).numel() == 0:
            validate_args = False
        super().__init__(torch.Size(batch), torch.Size((d,)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(HuberL2, _instance)
        batch_shape = torch.Size(batch_shape)
        d = self._d
        for name, event in (("loc", (d,)), ("precision_sqrt", (d, d)), ("raw", None)):
            if name in self.__dict__:
                value = self.__dict__[name]
                setattr(new, name, value.expand(batch_shape + (event or value.shape[-1:])))
        pred = None if self._pred is None else self._pred.expand(batch_shape + self._pred.shape[-1:])
        new.delta, new.theta = self.delta, self.theta
        new._pred, new._covariance, new._mu_param, new._d = pred, self._covariance, self._mu_param, d
        super(HuberL2, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    # ------------------------------------------------------------------ parameters
    @lazy_property
    def precision_sqrt(self) -> torch.Tensor:
        """A (..., d, d), symmetric positive definite."""
        d = self._d
        cov = self._pred[..., d:]
        if self._covariance == "full":
            return spd_from_raw(cov, self.theta)
        if self._covariance == "diagonal":
            return torch.diag_embed(remap_g(cov, self.theta))
        eye = torch.eye(d, dtype=self._pred.dtype, device=self._pred.device)
        return eye.expand(self.batch_shape + (d, d))

    @lazy_property
    def raw(self) -> Optional[torch.Tensor]:
        """Packed raw B (..., d(d+1)/2) with A = spd_from_raw(raw, theta); None when built
        from an explicit precision_sqrt matrix."""
        if self._covariance == "matrix":
            return None
        d = self._d
        if self._covariance == "diagonal":
            return pack_sym(torch.diag_embed(self._pred[..., d:]))
        # identity: g(b) = 1 for b = g^-1(1) = 1 (theta < 1) or theta (1 + log(1/theta))
        b = 1.0 if self.theta < 1.0 else self.theta * (1.0 + math.log(1.0 / self.theta))
        eye = torch.eye(d, dtype=self._pred.dtype, device=self._pred.device) * b
        return pack_sym(eye).expand(self.batch_shape + (d * (d + 1) // 2,))

    @lazy_property
    def precision_sqrt_inverse(self) -> torch.Tensor:
        """A^-1 (..., d, d)."""
        return torch.linalg.inv(self.precision_sqrt)

    @lazy_property
    def loc(self) -> torch.Tensor:
        """mu (..., d); for the v parameterisation mu = A^-1 v."""
        v = self._pred[..., : self._d]
        return (self.precision_sqrt_inverse @ v.unsqueeze(-1)).squeeze(-1)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def mode(self) -> torch.Tensor:
        return self.loc

    @lazy_property
    def covariance_matrix(self) -> torch.Tensor:
        """kappa_d(delta) (A^T A)^-1 (..., d, d)."""
        inv = self.precision_sqrt_inverse
        cov = inv @ inv.transpose(-1, -2)
        return huber_variance_factor(self._d, self.delta) * 0.5 * (cov + cov.transpose(-1, -2))

    @property
    def variance(self) -> torch.Tensor:
        return torch.diagonal(self.covariance_matrix, dim1=-2, dim2=-1)

    # ------------------------------------------------------------------ probability regions
    def region_radius(self, p) -> torch.Tensor:
        """The radius s_p of the p-probability region {y : ||A (y - mu)|| <= s_p}, an
        ellipsoid with semi-axes s_p / sigma_i(A): P(||A (y - mu)|| <= s_p) = p, exact
        (probreg.huber_region_radius) for every d and delta.

        Args:
            p: a probability in [0, 1], or a tensor of them (torch.compile(fullgraph=True)
                takes a Python number only: a tensor p is read on the host).
        Returns:
            A tensor of p's shape (0-d for a number) in loc's dtype and device; the same for
            every batch element (s_p depends on d, delta and p only). Not differentiable.
        For drawing: the boundary is mu + s_p A^-1 u over unit vectors u; in covariance
        terms, the set (y - mu)^T Sigma^-1 (y - mu) <= s_p^2 / kappa with
        Sigma = covariance_matrix and kappa = huber_variance_factor(d, delta).
        """
        loc = self.loc
        if isinstance(p, bool) or (isinstance(p, torch.Tensor) and p.dtype == torch.bool):
            raise ValueError(f"HuberL2.region_radius: p must be probabilities in [0, 1], got {p!r}")
        if check._is_real(p):  # one radius, a graph constant under torch.compile
            return torch.full((), huber_region_radius(self._d, self.delta, p), dtype=loc.dtype, device=loc.device)
        values = torch.as_tensor(p).detach().to(device="cpu", dtype=torch.float64)
        if not bool(((values >= 0) & (values <= 1)).all()):
            raise ValueError(f"HuberL2.region_radius: p must be probabilities in [0, 1], got {p!r}")
        radii = [huber_region_radius(self._d, self.delta, float(q)) for q in values.reshape(-1).tolist()]
        return torch.tensor(radii, dtype=loc.dtype, device=loc.device).reshape(values.shape)

    def radius(self, value: torch.Tensor) -> torch.Tensor:
        """The standardised radius ||A (value - mu)|| (shape broadcast(value.shape[:-1],
        batch_shape)): value lies in the p-probability region iff radius <= region_radius(p)."""
        if self._validate_args:
            self._validate_sample(value)
        diff = (value - self.loc).unsqueeze(-1)
        return torch.linalg.vector_norm(self.precision_sqrt @ diff, dim=(-2, -1))

    def _log_det_precision_sqrt(self) -> torch.Tensor:
        """log|A| (...): slogdet of an explicit matrix; for the raw parameterisations the fused
        NLL at a zero residual (-log|A| from the eigenvalues, with the NLL operator's exact
        first and second derivatives, also at repeated eigenvalues)."""
        d = self._d
        if self._covariance == "matrix":
            return torch.linalg.slogdet(self.precision_sqrt)[1]
        if self._covariance == "identity":
            return torch.zeros(self.batch_shape, dtype=self._pred.dtype, device=self._pred.device)
        cov = self._pred[..., d:]
        zeros = cov.new_zeros(cov.shape[:-1] + (d,))
        return -huber_nll(torch.cat([zeros, cov], dim=-1), zeros, self.delta, self.theta, parameterization="mu",
                          family="gauss", covariance=self._covariance, reduction="none", normalized=False)

    # ------------------------------------------------------------------ densities
    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(value), shape broadcast(value.shape[:-1], batch_shape). Raw / prediction
        parameterisations evaluate the fused probreg.huber_nll op; an explicit
        precision_sqrt evaluates the same formula with torch.linalg.slogdet."""
        if self._validate_args:
            self._validate_sample(value)
        d = self._d
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        y = value.expand(shape + (d,))
        if self._covariance == "matrix":
            A = self.precision_sqrt
            r = (A @ (y - self.loc).unsqueeze(-1)).squeeze(-1)
            energy = _huber_rho(r, self.delta)
            return torch.linalg.slogdet(A)[1] - energy - huber_log_normalizer(d, self.delta)
        pred = self._pred.expand(shape + self._pred.shape[-1:])
        return -huber_nll(
            pred,
            y,
            self.delta,
            self.theta,
            parameterization="mu" if self._mu_param else "v",
            covariance=self._covariance,
            reduction="none",
            normalized=True,
        )

    def entropy(self) -> torch.Tensor:
        """-log|A| + log c_d(delta) + E[h_delta(R)] (closed form, probreg.normalizer)."""
        constant = huber_log_normalizer(self._d, self.delta) + huber_expected_rho(self._d, self.delta)
        return constant - self._log_det_precision_sqrt()

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Exact reparameterised samples (sample_shape + batch_shape + (d,)):
        y = mu + A^-1 (R u), u uniform on the sphere, R ~ sample_huber_radius."""
        shape = self._extended_shape(sample_shape)
        loc = self.loc
        with torch.no_grad():
            u = torch.randn(shape, dtype=torch.float64, device=loc.device)
            norm = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
            u = u / torch.where(norm > 0, norm, torch.ones_like(norm))
            radius = sample_huber_radius(shape[:-1], self._d, self.delta, device=loc.device)
            z = (radius.unsqueeze(-1) * u).to(loc.dtype)
        return loc + (self.precision_sqrt_inverse @ z.unsqueeze(-1)).squeeze(-1)
