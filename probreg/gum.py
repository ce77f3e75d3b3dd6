"""DeepGUM: robust regression with a Gaussian-uniform mixture (Lathuiliere et al.,
papers/deepgum.md).

The residuals ``delta_n = y_n - phi(x_n)`` of a regressor are modelled as a mixture of a
zero-mean Gaussian (inliers) and a uniform distribution (outliers), eq. 1::

    p(delta) = pi N(delta; 0, Sigma) + (1 - pi) gamma

:func:`em` fits ``(pi, gamma, Sigma)`` and the inlier posteriors ``r_n`` (eq. 2-6),
:func:`weighted_l2` is the responsibility-weighted loss of eq. 7, and :class:`GUMTrainer`
alternates the two as in Algorithm 1.  Everything is plain PyTorch, vectorised over the
samples and over all mixture models at once (no Python loop over landmarks/coordinates).

Residual layout
---------------
``residuals`` has shape ``(N, K, d)``: ``N`` samples, ``K`` landmarks, ``d`` coordinates
per landmark (``D = K d`` target numbers per sample).  A 2-D tensor ``(N, D)`` is read as
``(N, 1, D)``, one landmark of ``D`` coordinates, and the length-1 landmark axis is left
out of every output.

Granularity (paper section 3.1) decides which numbers share an inlier/outlier label and
therefore one GUM (``pi``, ``gamma``, ``Sigma``):

===============  ======================  ==================  ===========  ===============
granularity      one GUM per             responsibilities    pi, gamma    Sigma
===============  ======================  ==================  ===========  ===============
``"sample"``     whole sample (D dims)   ``(N,)``            ``()``       ``(D, D)``
``"landmark"``   landmark (d dims)       ``(N, K)``          ``(K,)``     ``(K, d, d)``
``"coordinate"`` coordinate (scalar)     ``(N, K, d)``       ``(K, d)``   ``(K, d, 1, 1)``
===============  ======================  ==================  ===========  ===============

(for ``(N, D)`` input: ``"landmark"`` equals ``"sample"``; ``"coordinate"`` gives
``(N, D)``, ``(D,)`` and ``(D, 1, 1)``).  For ``"sample"`` the ``D`` axis of ``Sigma`` is the
landmark-major flattening ``k * d + j``.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor, nn

from . import _validation as check

__all__ = ["GUMFit", "em", "responsibilities", "weighted_l2", "GUMTrainer", "GUMRound", "GRANULARITIES"]

GRANULARITIES = ("sample", "landmark", "coordinate")
_REDUCTIONS = ("mean", "sum", "none")
_LOG_2_SQRT3 = math.log(2.0 * math.sqrt(3.0))  # a uniform of variance v has width 2 sqrt(3 v)


class GUMFit(NamedTuple):
    """Fitted Gaussian-uniform mixture(s); shapes per granularity in the module docstring.

    Attributes:
        responsibilities: posterior probability of being an inlier, ``r`` in [0, 1] (eq. 2),
            evaluated with the returned parameters.
        pi: inlier prior(s) (eq. 4).
        gamma: uniform density value(s) ``1 / volume`` (eq. 5). For large ``D`` in float32
            this can under/overflow; the fit itself works with ``log gamma``.
        Sigma: inlier covariance(s) (eq. 3, normalised by ``sum r_n``).
    """

    responsibilities: Tensor
    pi: Tensor
    gamma: Tensor
    Sigma: Tensor


def _grouped(residuals: Tensor, granularity: str) -> tuple[Tensor, tuple[int, ...], tuple[int, ...]]:
    """Validate and reshape residuals to ``(N, G, e)``; return it with the output group
    shape (for pi/gamma) and the responsibility shape."""
    if not isinstance(residuals, Tensor):
        raise TypeError(f"residuals must be a torch.Tensor of shape (N, K, d) or (N, D); got {type(residuals).__name__}")
    check.choice(granularity, "granularity", "probreg.gum", GRANULARITIES)
    if residuals.ndim not in (2, 3):
        raise ValueError(
            f"residuals must have shape (N, K, d) (samples, landmarks, coordinates) or (N, D); got {tuple(residuals.shape)}"
        )
    if residuals.numel() == 0:
        raise ValueError(f"residuals must have shape (N, K, d) or (N, D) with N, K, d >= 1; got {tuple(residuals.shape)}")
    if not residuals.is_floating_point():
        raise ValueError(f"residuals must be a floating-point tensor; got dtype {residuals.dtype}")
    if not bool(torch.isfinite(residuals).all()):
        raise ValueError("residuals must be finite (found NaN or Inf)")
    squeeze_k = residuals.ndim == 2
    res = residuals.unsqueeze(1) if squeeze_k else residuals
    if res.dtype not in (torch.float32, torch.float64):
        res = res.float()
    n, k, d = res.shape
    if granularity == "sample":
        grouped, group_shape = res.reshape(n, 1, k * d), ()
    elif granularity == "landmark":
        grouped, group_shape = res, (k,)
    else:
        grouped, group_shape = res.reshape(n, k * d, 1), (k, d)
    if squeeze_k and granularity != "sample":
        group_shape = group_shape[1:]
    return grouped, group_shape, (n, *group_shape)


def _log_gaussian(delta: Tensor, sigma: Tensor) -> Tensor:
    """log N(delta; 0, Sigma) for delta (N, G, e), Sigma (G, e, e) -> (N, G)."""
    e = delta.shape[-1]
    chol = torch.linalg.cholesky(sigma)  # (G, e, e)
    # Solve L z = delta for every sample: (G, e, N)
    z = torch.linalg.solve_triangular(chol, delta.permute(1, 2, 0), upper=False)
    maha = z.square().sum(-2).transpose(0, 1)  # (N, G)
    half_logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (G,)
    return -0.5 * maha - half_logdet - 0.5 * e * math.log(2.0 * math.pi)


def _e_step(delta: Tensor, pi: Tensor, log_gamma: Tensor, sigma: Tensor) -> Tensor:
    log_inlier = torch.log(pi) + _log_gaussian(delta, sigma)
    log_outlier = torch.log1p(-pi) + log_gamma
    return torch.sigmoid(log_inlier - log_outlier)  # r = inlier / (inlier + outlier)


def _uniform_log_gamma(delta: Tensor, weights: Tensor, var_floor: Tensor) -> Tensor:
    """eq. 5-6: log gamma from weighted first/second moments; weights (N, G) sum to 1."""
    c1 = torch.einsum("ng,nge->ge", weights, delta)
    c2 = torch.einsum("ng,nge->ge", weights, delta.square())
    var = torch.maximum(c2 - c1.square(), var_floor.unsqueeze(-1))
    return -(_LOG_2_SQRT3 + 0.5 * torch.log(var)).sum(-1)


def em(
    residuals: Tensor,
    iters: int = 200,
    tol: float = 1e-6,
    granularity: str = "sample",
    *,
    init: Optional[GUMFit] = None,
) -> GUMFit:
    """Fit the Gaussian-uniform mixture of eq. 1 to regression residuals by EM (eq. 2-6).

    E-step (eq. 2): ``r_n = pi N(delta_n; 0, Sigma) / (pi N(delta_n; 0, Sigma) + (1 - pi) gamma)``.
    M-step: ``Sigma = sum_n r_n delta_n delta_n^T / sum_n r_n`` (eq. 3 with the
    normalisation the paper omits), ``pi = sum_n r_n / N`` (eq. 4) and
    ``1/gamma = prod_j 2 sqrt(3 (C2_j - C1_j^2))`` (eq. 5) with the outlier-weighted moments
    ``C1, C2`` of eq. 6 (weights ``(1 - r_n) / sum_n (1 - r_n)``).  All ``G`` mixtures of the
    chosen granularity are fitted simultaneously.

    Initialisation (``init=None``): ``r_n = 1/2`` for all n, i.e. ``pi = 1/2``, ``Sigma`` the
    second-moment matrix of all residuals and ``gamma`` the uniform with the moments of all
    residuals; or warm-start from a previous :class:`GUMFit` of the same layout via ``init``.

    Edge cases: variances are floored at ``100 eps`` times the group's mean squared
    residual (plus the dtype's ``sqrt(tiny)``) so that exact-zero or collinear residuals
    give a finite fit (all-zero residuals: every ``r > 0.99``); ``pi`` is kept in
    ``[eps, 1 - eps]``; a group with (numerically) no inlier or no outlier mass keeps its
    previous ``Sigma`` or ``gamma`` instead of dividing by zero. Float16/bfloat16
    residuals are computed and returned in float32.

    Caveat (a property of eq. 2-6, not of this implementation): the outlier term is the
    constant ``gamma`` everywhere, with a moment-matched volume. On residuals *without*
    outliers it absorbs the Gaussian's tail, and the more so the larger the group
    dimension ``e``: on clean ``N(0, I)`` residuals (N = 1000) EM converges, from
    ``pi_0 = 0.5`` as from ``0.999``, to ``pi`` of about 0.90-0.99 for ``e = 1``, 0.55-0.78
    for ``e = 2`` and 0.33 for ``e = 6`` (varying with the draw). With
    genuine outliers (which then set the volume) the fit is accurate; prefer the
    ``"landmark"`` or ``"coordinate"`` granularity when outliers may be absent.

    Args:
        residuals: ``(N, K, d)`` or ``(N, D)`` residuals ``y - phi(x)``, finite, ``N >= 1``
            (see the module docstring for the layout). Treated as data (no gradient).
        iters: maximum number of EM iterations (``>= 1``).
        tol: stop once the largest change in ``pi``, ``log gamma`` and relative Frobenius
            change in ``Sigma`` over all groups is below ``tol`` (``>= 0``).
        granularity: ``"sample"``, ``"landmark"`` or ``"coordinate"``.
        init: optional warm start (same granularity and layout).

    Returns:
        :class:`GUMFit` ``(responsibilities, pi, gamma, Sigma)``; the responsibilities are
        the E-step under the returned parameters.

    Raises:
        ValueError: bad shape / empty / non-finite residuals, unknown granularity,
            ``iters < 1``, ``tol < 0`` or an ``init`` whose shapes do not match.
    """
    delta, group_shape, r_shape = _grouped(residuals, granularity)
    iters = check.integer(iters, "iters", "probreg.gum.em", low=1)
    tol = check.nonnegative(tol, "tol", "probreg.gum.em", "a number >= 0")
    delta = delta.detach()
    n, g, e = delta.shape
    dtype, device = delta.dtype, delta.device
    finfo = torch.finfo(dtype)
    eye = torch.eye(e, dtype=dtype, device=device)
    pi_min = float(finfo.eps)

    second_moment = torch.einsum("nge,ngf->gef", delta, delta) / n  # (G, e, e)
    scale = torch.diagonal(second_moment, dim1=-2, dim2=-1).mean(-1)  # (G,)
    var_floor = 100 * finfo.eps * scale + math.sqrt(finfo.tiny)

    if init is None:
        sigma = second_moment + var_floor[:, None, None] * eye
        pi = torch.full((g,), 0.5, dtype=dtype, device=device)
        log_gamma = _uniform_log_gamma(delta, torch.full((n, g), 1.0 / n, dtype=dtype, device=device), var_floor)
    else:
        sigma_shape = (*group_shape, e, e) if granularity != "sample" else (e, e)
        if not isinstance(init, GUMFit) or tuple(init.pi.shape) != group_shape or tuple(init.Sigma.shape) != sigma_shape:
            raise ValueError(
                f"init must be a GUMFit with pi of shape {group_shape} and Sigma of shape {sigma_shape} "
                f"for residuals {tuple(residuals.shape)} and granularity {granularity!r}"
            )
        pi = init.pi.detach().to(dtype=dtype, device=device).reshape(g).clamp(pi_min, 1 - pi_min)
        sigma = init.Sigma.detach().to(dtype=dtype, device=device).reshape(g, e, e)
        log_gamma = torch.log(init.gamma.detach().to(dtype=dtype, device=device).reshape(g))
        if not bool(torch.isfinite(log_gamma).all()):
            log_gamma = torch.where(
                torch.isfinite(log_gamma),
                log_gamma,
                _uniform_log_gamma(delta, torch.full((n, g), 1.0 / n, dtype=dtype, device=device), var_floor),
            )

    for _ in range(iters):
        r = _e_step(delta, pi, log_gamma, sigma)  # (N, G)
        inlier_mass = r.sum(0)  # (G,)
        outlier_mass = n - inlier_mass
        # eq. 3 (normalised by sum r), with a variance floor on the diagonal
        weighted = torch.einsum("ng,nge,ngf->gef", r, delta, delta)
        sigma_new = weighted / inlier_mass.clamp_min(finfo.tiny)[:, None, None] + var_floor[:, None, None] * eye
        sigma_new = torch.where((inlier_mass > n * finfo.eps)[:, None, None], sigma_new, sigma)
        # eq. 4
        pi_new = (inlier_mass / n).clamp(pi_min, 1 - pi_min)
        # eq. 5-6
        outlier_weights = (1 - r) / outlier_mass.clamp_min(finfo.tiny)
        log_gamma_new = _uniform_log_gamma(delta, outlier_weights, var_floor)
        log_gamma_new = torch.where(outlier_mass > n * finfo.eps, log_gamma_new, log_gamma)

        change = torch.maximum(
            (pi_new - pi).abs(),
            torch.maximum(
                (log_gamma_new - log_gamma).abs(),
                torch.linalg.matrix_norm(sigma_new - sigma) / torch.linalg.matrix_norm(sigma_new),
            ),
        )
        sigma, pi, log_gamma = sigma_new, pi_new, log_gamma_new
        if float(change.max()) <= tol:
            break

    r = _e_step(delta, pi, log_gamma, sigma)
    sigma_out = sigma.reshape(e, e) if granularity == "sample" else sigma.reshape(*group_shape, e, e)
    return GUMFit(
        responsibilities=r.reshape(r_shape),
        pi=pi.reshape(group_shape),
        gamma=torch.exp(log_gamma).reshape(group_shape),
        Sigma=sigma_out,
    )


def responsibilities(residuals: Tensor, fit: GUMFit, granularity: str = "sample") -> Tensor:
    """E-step (eq. 2) only: inlier posteriors of new residuals under fitted parameters.

    Used e.g. for the validation set in Algorithm 1.

    Args:
        residuals: ``(N, K, d)`` or ``(N, D)`` with the same ``K, d`` (or ``D``) as the
            residuals ``fit`` was obtained from; any ``N >= 1``.
        fit: a :class:`GUMFit` from :func:`em` with the same granularity.
        granularity: the granularity ``fit`` was fitted with.

    Returns:
        Responsibilities with the shape given in the module docstring, e.g. ``(N,)``.
    """
    delta, group_shape, r_shape = _grouped(residuals, granularity)
    n, g, e = delta.shape
    sigma_shape = (e, e) if granularity == "sample" else (*group_shape, e, e)
    if not isinstance(fit, GUMFit):
        raise TypeError(f"probreg.gum.responsibilities: fit must be a GUMFit from gum.em, got {type(fit).__name__}")
    if tuple(fit.pi.shape) != group_shape or tuple(fit.Sigma.shape) != sigma_shape:
        raise ValueError(
            f"fit must have pi of shape {group_shape} and Sigma of shape {sigma_shape} for residuals "
            f"{tuple(residuals.shape)} and granularity {granularity!r}; got pi {tuple(fit.pi.shape)}, "
            f"Sigma {tuple(fit.Sigma.shape)}"
        )
    dtype, device = delta.dtype, delta.device
    eps = float(torch.finfo(dtype).eps)
    pi = fit.pi.detach().to(dtype=dtype, device=device).reshape(g).clamp(eps, 1 - eps)
    log_gamma = torch.log(fit.gamma.detach().to(dtype=dtype, device=device).reshape(g))
    sigma = fit.Sigma.detach().to(dtype=dtype, device=device).reshape(g, e, e)
    return _e_step(delta.detach(), pi, log_gamma, sigma).reshape(r_shape)


def weighted_l2(pred: Tensor, target: Tensor, responsibilities: Tensor, reduction: str = "mean") -> Tensor:
    """Responsibility-weighted squared error, eq. 7: ``sum_n r_n ||y_n - phi(x_n)||^2``.

    The responsibilities are constants (they are detached): gradients flow into ``pred``
    only, and each sample's gradient is simply scaled by its ``r``.

    Args:
        pred: ``(N, ...)`` predictions, e.g. ``(N, D)`` or ``(N, K, d)``.
        target: same shape as ``pred``.
        responsibilities: weights whose shape is a leading part of ``pred.shape``
            (``(N,)`` per sample, ``(N, K)`` per landmark, ``(N, K, d)`` per coordinate);
            each weight multiplies the squared error summed over the remaining axes.
        reduction: ``"sum"`` (eq. 7 exactly), ``"mean"`` (eq. 7 divided by ``N``, for
            mini-batches) or ``"none"`` (per-sample terms, shape ``(N,)``).

    Raises:
        ValueError: mismatched shapes, empty batch, unknown reduction.
    """
    op = "probreg.gum.weighted_l2"
    check.choice(reduction, "reduction", op, _REDUCTIONS)
    check.tensor(pred, "pred", op, shape_text="(N, ...)")
    check.tensor(target, "target", op, shape_text="(N, ...)")
    check.tensor(responsibilities, "responsibilities", op, shape_text="(N, ...)")
    check.same_device([("pred", pred), ("target", target), ("responsibilities", responsibilities)], op)
    if pred.shape != target.shape:
        raise ValueError(f"target must have the shape of pred {tuple(pred.shape)}; got {tuple(target.shape)}")
    if pred.ndim < 1 or pred.shape[0] == 0:
        raise ValueError(f"pred must have shape (N, ...) with N >= 1; got {tuple(pred.shape)}")
    r = responsibilities.detach()
    if r.ndim < 1 or r.ndim > pred.ndim or r.shape != pred.shape[: r.ndim]:
        raise ValueError(
            f"responsibilities must have a leading part of pred's shape {tuple(pred.shape)}, e.g. "
            f"(N,) = {tuple(pred.shape[:1])}; got {tuple(r.shape)}"
        )
    sq = (target - pred).square()
    if sq.ndim > r.ndim:
        sq = sq.sum(dim=tuple(range(r.ndim, sq.ndim)))
    per_sample = (r * sq).reshape(sq.shape[0], -1).sum(-1)
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    return per_sample


class GUMRound(NamedTuple):
    """One round of :meth:`GUMTrainer.fit` (round 0 is the all-inlier initialisation).

    Attributes:
        round: 0, 1, 2, ...
        epochs: SGD epochs run in this round (including the ``patience`` unimproved ones).
        val_loss: best validation ``L_DEEPGUM`` (mean reduction) of the round, with that
            round's validation responsibilities.
        pi: mean inlier prior of the EM fit that preceded the SGD (1.0 for round 0).
    """

    round: int
    epochs: int
    val_loss: float
    pi: float


class GUMTrainer:
    """Algorithm 1 of DeepGUM: alternate EM outlier detection and weighted-L2 SGD.

    1. SGD on eq. 7 with ``r_n = 1`` until early stopping on the validation set.
    2. Repeat: EM on the training residuals (until the parameters are stable); E-step on
       the validation residuals with those parameters; SGD on eq. 7 with the training
       responsibilities, early-stopped with ``patience`` epochs on the validation
       ``L_DEEPGUM``; stop when that validation loss grows, restoring the previous round.

    The model maps a batch of inputs ``(N, ...)`` to predictions with the targets' shape,
    ``(N, D)`` or ``(N, K, d)`` (the residual layout of :func:`em`). Data are in-memory
    tensors on the model's device. After :meth:`fit` the model holds the kept weights,
    ``self.fit_result`` is a final EM fit on that model's training residuals (its
    responsibilities flag the training outliers), ``self.val_responsibilities`` the
    matching validation E-step and ``self.history`` the list of :class:`GUMRound`.

    Args:
        model: the regressor ``phi``.
        optimizer: optimizer over ``model``'s parameters (its state is kept across rounds).
        granularity: ``"sample"``, ``"landmark"`` or ``"coordinate"`` (see :func:`em`).
        batch_size: SGD mini-batch size.
        max_epochs: cap on the epochs of one SGD phase.
        patience: early-stopping patience ``K`` (epochs without validation improvement).
        max_rounds: cap on the EM+SGD rounds after the initialisation.
        em_iters, em_tol: passed to :func:`em`.
        seed: seed of the mini-batch shuffling generator.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        granularity: str = "sample",
        batch_size: int = 64,
        max_epochs: int = 200,
        patience: int = 10,
        max_rounds: int = 10,
        em_iters: int = 200,
        em_tol: float = 1e-6,
        seed: int = 0,
    ) -> None:
        op = "probreg.gum.GUMTrainer"
        check.choice(granularity, "granularity", op, GRANULARITIES)
        for name, value, low in (("batch_size", batch_size, 1), ("max_epochs", max_epochs, 1),
                                 ("patience", patience, 1), ("max_rounds", max_rounds, 0),
                                 ("em_iters", em_iters, 1), ("seed", seed, -(2**63))):
            check.integer(value, name, op, low=low)
        check.nonnegative(em_tol, "em_tol", op, "a number >= 0")
        self.model = model
        self.optimizer = optimizer
        self.granularity = granularity
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.max_rounds = max_rounds
        self.em_iters = em_iters
        self.em_tol = em_tol
        self.seed = seed
        self.fit_result: Optional[GUMFit] = None
        self.val_responsibilities: Optional[Tensor] = None
        self.history: list[GUMRound] = []

    def _predict(self, x: Tensor) -> Tensor:
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            out = self.model(x)
        self.model.train(was_training)
        return out

    def _sgd_phase(self, x: Tensor, y: Tensor, r: Tensor, x_val: Tensor, y_val: Tensor, r_val: Tensor,
                   generator: torch.Generator) -> tuple[float, int]:
        best_loss, best_state, since_best, epochs = math.inf, copy.deepcopy(self.model.state_dict()), 0, 0
        n = x.shape[0]
        for epochs in range(1, self.max_epochs + 1):
            self.model.train()
            order = torch.randperm(n, generator=generator).to(x.device)
            for start in range(0, n, self.batch_size):
                idx = order[start:start + self.batch_size]
                self.optimizer.zero_grad(set_to_none=True)
                loss = weighted_l2(self.model(x[idx]), y[idx], r[idx])
                loss.backward()
                self.optimizer.step()
            val_loss = float(weighted_l2(self._predict(x_val), y_val, r_val))
            if val_loss < best_loss:
                best_loss, best_state, since_best = val_loss, copy.deepcopy(self.model.state_dict()), 0
            else:
                since_best += 1
                if since_best >= self.patience:
                    break
        self.model.load_state_dict(best_state)
        return best_loss, epochs

    def fit(self, x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor) -> list[GUMRound]:
        """Run Algorithm 1 on in-memory data; returns (and stores) the per-round history.

        Args:
            x_train, x_val: ``(N_T, ...)``, ``(N_V, ...)`` inputs.
            y_train, y_val: ``(N_T, D)`` / ``(N_T, K, d)`` and matching validation targets.
        """
        for name, x, y in (("train", x_train, y_train), ("val", x_val, y_val)):
            if x.shape[0] != y.shape[0] or x.shape[0] == 0:
                raise ValueError(f"{name} inputs and targets must have the same, non-zero N; got {tuple(x.shape)} "
                                 f"and {tuple(y.shape)}")
            if y.ndim not in (2, 3):
                raise ValueError(f"{name} targets must have shape (N, D) or (N, K, d); got {tuple(y.shape)}")
        generator = torch.Generator().manual_seed(self.seed)
        r_shape = _grouped(y_train, self.granularity)[2]
        r_val_shape = _grouped(y_val, self.granularity)[2]
        r_train = torch.ones(r_shape, dtype=y_train.dtype, device=y_train.device)
        r_val = torch.ones(r_val_shape, dtype=y_val.dtype, device=y_val.device)
        val_loss, epochs = self._sgd_phase(x_train, y_train, r_train, x_val, y_val, r_val, generator)
        self.history = [GUMRound(0, epochs, val_loss, 1.0)]
        prev_state = copy.deepcopy(self.model.state_dict())
        for round_index in range(1, self.max_rounds + 1):
            fit = em(y_train - self._predict(x_train), self.em_iters, self.em_tol, self.granularity)
            r_val_new = responsibilities(y_val - self._predict(x_val), fit, self.granularity)
            new_loss, epochs = self._sgd_phase(x_train, y_train, fit.responsibilities.to(y_train.dtype),
                                               x_val, y_val, r_val_new.to(y_val.dtype), generator)
            self.history.append(GUMRound(round_index, epochs, new_loss, float(fit.pi.mean())))
            if new_loss > val_loss:  # L_DEEPGUM grew on V: keep the previous round
                self.model.load_state_dict(prev_state)
                break
            val_loss, prev_state = new_loss, copy.deepcopy(self.model.state_dict())
        # Describe the returned model: EM on its training residuals, E-step on validation.
        self.fit_result = em(y_train - self._predict(x_train), self.em_iters, self.em_tol, self.granularity)
        self.val_responsibilities = responsibilities(y_val - self._predict(x_val), self.fit_result, self.granularity)
        return self.history
