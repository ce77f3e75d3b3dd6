"""Damped implicit gradients through an argmin ("Wibergian learning").

Reference: Toso, Campbell and Russell, "Fixing Implicit Derivatives: Trust-Region
Based Learning of Continuous Energy Functions" (papers/wibergian-learning.md and its
supplement). For a batch of B independent problems with variables y_b in R^d and an
energy E_b(y_b; w), the minimiser y*_b(w) moves with the parameters w as

    dy*/dw = -(H + lambda I)^{-1} d(grad_y E)/dw        (paper eq. 10)

where H is the Hessian of E_b with respect to y_b at y*_b. lambda = 0 is the exact
implicit gradient of Samuel and Tappen (paper eq. 9); lambda > 0 is the trust-region
damped gradient, whose norm is bounded by ||d(grad_y E)/dw|| / lambda because H is
positive semi-definite at a minimum.

Public API
----------
argmin(energy, y0, *params, damping=0.1, ...)   differentiable batched local minimiser
trust_region_newton(energy, y0, *params, ...)    the batched damped-Newton solver it uses
energy_derivatives(energy, y, *params)           batched energies, gradients, Hessians
lstsq(A, b, rcond=None, method="auto")           differentiable least squares (supp. eq. 6-13)
huber_fusion_energy(y, v, A, w, delta)           sum_i w_i h_delta(||A_i y - v_i||)
rbf_fusion_energy(y, centers, sizes, ...)        tracker-fusion energy (supp. eq. 14-16)
RBFFusion                                        nn.Module learning that energy's parameters
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import _validation as check

__all__ = [
    "argmin",
    "trust_region_newton",
    "energy_derivatives",
    "lstsq",
    "huber_fusion_energy",
    "rbf_fusion_energy",
    "RBFFusion",
]

EnergyFn = Callable[..., Tensor]
SolverFn = Callable[..., Tensor]


# ---------------------------------------------------------------------------
# batched derivatives of a user energy
# ---------------------------------------------------------------------------


def _checked_energy(energy: EnergyFn, y: Tensor, params: Sequence[Tensor]) -> Tensor:
    """energy(y, *params), checked to return one value per problem: shape (B,)."""
    values = energy(y, *params)
    if not isinstance(values, Tensor) or values.shape != y.shape[:1]:
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(
            f"energy(y, *params) must return a tensor of shape (B,) = ({y.shape[0]},) "
            f"for y of shape {tuple(y.shape)}; got {shape}"
        )
    return values


def energy_derivatives(energy: EnergyFn, y: Tensor, *params: Tensor):
    """Batched energy values, gradients and Hessians with torch.func.

    Args:
        energy: callable, energy(y, *params) -> (B,). Problem b's energy must depend on
            y[b] only (the B problems are independent); params may be batched or shared.
        y: (B, d) floating tensor.
        *params: tensors passed through to energy.

    Returns:
        (E, g, H): E (B,), g = dE_b/dy_b (B, d), H = d^2E_b/dy_b^2 (B, d, d), same dtype
        as y. The Hessian is computed by reverse-over-reverse differentiation of
        grad_y sum_b E_b, vmapped over the d coordinate directions (each direction hits
        every problem at once because the total Hessian is block diagonal), so the cost
        is d vector-Hessian products whatever B is; there is no loop over problems.
    """
    _check_y0(y, "probreg.wiberg.energy_derivatives", "y")
    batch, dim = y.shape

    def gradient_and_energy(y_: Tensor):
        def total(yy: Tensor):
            values = _checked_energy(energy, yy, params)
            return values.sum(), values

        return torch.func.grad(total, has_aux=True)(y_)

    g, vjp_fn, values = torch.func.vjp(gradient_and_energy, y, has_aux=True)
    if dim == 1:  # one direction: no vmap needed
        (column,) = vjp_fn(torch.ones_like(y))
        return values, g, column.unsqueeze(-1)
    basis = torch.eye(dim, dtype=y.dtype, device=y.device).unsqueeze(1).expand(dim, batch, dim)
    (rows,) = torch.func.vmap(vjp_fn)(basis)  # rows[j, b, :] = H_b[j, :]
    hessian = rows.transpose(0, 1)
    hessian = 0.5 * (hessian + hessian.transpose(-1, -2))
    return values, g, hessian


def _default_tol(dtype: torch.dtype) -> float:
    return math.sqrt(torch.finfo(dtype).eps)


def _check_y0(y0, op: str, name: str = "y0") -> None:
    if not isinstance(y0, Tensor) or y0.dim() != 2 or not y0.is_floating_point():
        desc = f"shape {tuple(y0.shape)}, dtype {y0.dtype}" if isinstance(y0, Tensor) else type(y0).__name__
        raise ValueError(f"{op}: {name} must be a 2-D floating tensor of shape (B, d); got {desc}")
    if y0.shape[1] < 1:
        raise ValueError(f"{op}: {name} must have d >= 1 columns; got shape {tuple(y0.shape)}")


def _check_solver_options(max_iter, tol, op: str):
    """The validated (max_iter, tol): an integer >= 0 and None or a finite number >= 0."""
    max_iter = check.integer(max_iter, "max_iter", op, low=0)
    if tol is not None:
        tol = check.nonnegative_finite(tol, "tol", op)
    return max_iter, tol


# ---------------------------------------------------------------------------
# forward solvers
# ---------------------------------------------------------------------------


def trust_region_newton(
    energy: EnergyFn,
    y0: Tensor,
    *params: Tensor,
    max_iter: int = 50,
    tol: Optional[float] = None,
    initial_damping: float = 1e-3,
    return_converged: bool = False,
):
    """Batched damped-Newton (Levenberg-Marquardt / trust-region) minimisation.

    Every problem keeps its own damping mu_b. A step solves (H + (mu_b + s_b) I) p = -g
    in the eigenbasis of H, with s_b = max(0, -lambda_min(H_b)) so the model is convex
    even where H is indefinite. A step is accepted when the energy decreases (ratio of
    actual to predicted decrease > 1e-4); mu_b shrinks by 4 after good steps (ratio >
    0.75) and grows by 4 after poor or rejected ones. Near a strict minimum mu_b -> 0
    and the iteration is Newton's method with quadratic convergence.

    Args:
        energy: energy(y, *params) -> (B,), problems independent (see energy_derivatives).
        y0: (B, d) starting points.
        max_iter: maximum number of iterations (each costs one energy_derivatives call).
        tol: a problem has converged when its Newton step (undamped, made convex by the
            shift s_b) satisfies ||p||_inf <= tol * (1 + ||y||_inf).
            Default sqrt(machine epsilon) of y0's dtype.
        initial_damping: starting mu_b.
        return_converged: also return the (B,) bool mask of converged problems.

    Returns:
        y (B, d), detached; and the converged mask if return_converged.
    """
    op = "probreg.wiberg.trust_region_newton"
    _check_y0(y0, op)
    max_iter, tol = _check_solver_options(max_iter, tol, op)
    initial_damping = check.nonnegative_finite(initial_damping, "initial_damping", op)
    return_converged = check.boolean(return_converged, "return_converged", op)
    tol = _default_tol(y0.dtype) if tol is None else tol
    params = tuple(p.detach() if isinstance(p, Tensor) else p for p in params)
    y = y0.detach().clone()
    batch, dim = y.shape
    eps = torch.finfo(y.dtype).eps
    tiny = torch.finfo(y.dtype).tiny ** 0.5
    mu = torch.full((batch,), float(initial_damping), dtype=y.dtype, device=y.device)
    active = torch.ones(batch, dtype=torch.bool, device=y.device)
    values, g, hessian = energy_derivatives(energy, y, *params)
    for _ in range(max_iter):
        evals, evecs = torch.linalg.eigh(hessian)
        convex_shift = torch.clamp(-evals[:, 0], min=0.0)
        g_eig = (evecs.transpose(-1, -2) @ g.unsqueeze(-1)).squeeze(-1)
        newton_denom = evals + (convex_shift + tiny).unsqueeze(-1)
        newton_step = -(evecs @ (g_eig / newton_denom).unsqueeze(-1)).squeeze(-1)
        scale = 1.0 + y.abs().amax(-1)
        converged = active & ((newton_step.abs().amax(-1) <= tol * scale) | (g == 0).all(-1))
        # A converging problem takes its last (tiny) Newton step where H is positive
        # definite: it squares the error at no extra evaluation.
        final = converged & (evals[:, 0] > 0) & torch.isfinite(newton_step).all(-1)
        y = torch.where(final.unsqueeze(-1), y + newton_step, y)
        active = active & ~converged
        if not bool(active.any()):
            break
        damped_denom = evals + (mu + convex_shift).unsqueeze(-1)
        step = -(evecs @ (g_eig / damped_denom).unsqueeze(-1)).squeeze(-1)
        step = torch.where(active.unsqueeze(-1), step, torch.zeros_like(step))
        predicted = -(g * step).sum(-1) - 0.5 * (step * (hessian @ step.unsqueeze(-1)).squeeze(-1)).sum(-1)
        trial_values, trial_g, trial_h = energy_derivatives(energy, y + step, *params)
        actual = values - trial_values
        ratio = actual / torch.where(predicted > 0, predicted, torch.ones_like(predicted))
        # Within rounding noise of the energy, an energy decrease cannot be measured: accept
        # the step if it reduces the gradient instead (Newton converges in the gradient).
        noise = 64 * eps * (1.0 + values.abs())
        in_noise = (actual.abs() <= noise) & (predicted <= noise)
        smaller_gradient = trial_g.abs().amax(-1) < g.abs().amax(-1)
        decrease = (predicted > 0) & (ratio > 1e-4)
        accept = active & torch.isfinite(trial_values) & torch.isfinite(trial_g).all(-1)
        accept = accept & (decrease | (in_noise & smaller_gradient))
        y = torch.where(accept.unsqueeze(-1), y + step, y)
        values = torch.where(accept, trial_values, values)
        g = torch.where(accept.unsqueeze(-1), trial_g, g)
        hessian = torch.where(accept.view(-1, 1, 1), trial_h, hessian)
        good = accept & ((ratio > 0.75) | in_noise)
        poor = ~accept | ((ratio < 0.25) & ~in_noise)
        mu = torch.where(good, torch.clamp(mu / 4.0, min=tiny), mu)
        mu = torch.where(poor & active, torch.clamp(mu * 4.0, max=1e30), mu)
    else:
        evals, evecs = torch.linalg.eigh(hessian)
        convex_shift = torch.clamp(-evals[:, 0], min=0.0)
        g_eig = (evecs.transpose(-1, -2) @ g.unsqueeze(-1)).squeeze(-1)
        newton_step = -(evecs @ (g_eig / (evals + (convex_shift + tiny).unsqueeze(-1))).unsqueeze(-1)).squeeze(-1)
        converged = (newton_step.abs().amax(-1) <= tol * (1.0 + y.abs().amax(-1))) | (g == 0).all(-1)
        active = active & ~converged
    if return_converged:
        return y, ~active
    return y


def _newton_polish(energy: EnergyFn, y: Tensor, params: Sequence[Tensor], steps: int = 5) -> Tensor:
    """Up to `steps` pure Newton steps y <- y - H^{-1} g (stopping once every step is below
    sqrt(eps) relative), taken per problem only where H is positive definite and the
    energy does not increase beyond rounding; this makes an
    approximate minimiser (e.g. from L-BFGS or a fixed number of MM iterations) satisfy
    the fixed-point equation grad E = 0 that the implicit gradient assumes."""
    eps = torch.finfo(y.dtype).eps
    tol = _default_tol(y.dtype)
    for _ in range(steps):
        values, g, hessian = energy_derivatives(energy, y, *params)
        chol, info = torch.linalg.cholesky_ex(hessian)
        positive = info == 0
        chol = torch.where(positive.view(-1, 1, 1), chol, torch.eye(y.shape[1], dtype=y.dtype, device=y.device))
        step = -torch.cholesky_solve(g.unsqueeze(-1), chol).squeeze(-1)
        trial = y + step
        trial_values = _checked_energy(energy, trial, params)
        no_increase = trial_values <= values + 16 * eps * (1.0 + values.abs())
        accept = positive & torch.isfinite(trial_values) & torch.isfinite(step).all(-1) & no_increase
        y = torch.where(accept.unsqueeze(-1), trial, y)
        tiny_step = step.abs().amax(-1) <= tol * (1.0 + y.abs().amax(-1))
        if bool((tiny_step | ~accept).all()):  # the next step would be below rounding
            break
    return y


# ---------------------------------------------------------------------------
# differentiable argmin
# ---------------------------------------------------------------------------


class _ArgminFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, energy, solve, damping, y0, *params):
        with torch.no_grad():
            detached = tuple(p.detach() for p in params)
            y_star = solve(energy, y0.detach(), detached)
        ctx.energy = energy
        ctx.damping = damping
        ctx.save_for_backward(y_star, *params)
        return y_star

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y_star):
        y_star, *params = ctx.saved_tensors
        params = [p.detach() for p in params]
        energy = ctx.energy
        needs = ctx.needs_input_grad[4:]
        diff_index = [i for i, need in enumerate(needs) if need]
        if not diff_index:
            return (None,) * (4 + len(params))
        _, _, hessian = energy_derivatives(energy, y_star, *params)
        dim = y_star.shape[1]
        damping = ctx.damping
        if isinstance(damping, Tensor):
            damping = damping.to(hessian.dtype).view(-1, 1, 1)
        system = hessian + damping * torch.eye(dim, dtype=hessian.dtype, device=hessian.device)
        z, _ = torch.linalg.solve_ex(system, grad_y_star.to(hessian.dtype))

        def gradient_wrt_y(*diff_params: Tensor) -> Tensor:
            full = list(params)
            for index, value in zip(diff_index, diff_params):
                full[index] = value
            return torch.func.grad(lambda yy: energy(yy, *full).sum())(y_star)

        _, vjp_fn = torch.func.vjp(gradient_wrt_y, *[params[i] for i in diff_index])
        diff_grads = vjp_fn(-z)
        grads = [None] * len(params)
        for index, grad in zip(diff_index, diff_grads):
            grads[index] = grad
        return (None, None, None, None, *grads)


def argmin(
    energy: EnergyFn,
    y0: Tensor,
    *params: Tensor,
    damping: Union[float, Tensor] = 0.1,
    solver: Union[str, SolverFn] = "newton",
    max_iter: int = 50,
    tol: Optional[float] = None,
    newton_polish: bool = True,
) -> Tensor:
    """Differentiable local minimiser of a batch of independent energies.

    Forward: y* = a local minimum of energy(., *params) per problem, found from y0
    under no_grad by `solver`. Backward (paper eq. 10), per problem b:

        dL/dparams = -(d grad_y E_b / dparams)^T (H_b + damping I)^{-1} dL/dy*_b

    with H_b the Hessian at y*_b, computed batched with torch.func (energy_derivatives).

    Args:
        energy: callable energy(y, *params) -> (B,) for y of shape (B, d). Problem b's
            value must depend on y[b] only. It must be written with torch operations
            that torch.func can transform (vmap, grad, vjp): no .item(), no in-place
            writes into captured tensors. Every tensor that should receive a gradient
            must be passed in *params: tensors captured by closure are constants.
        y0: (B, d) floating tensor of starting points, 1 <= d (meant for d <= 16);
            receives no gradient (y* is locally independent of it).
        *params: tensors. Each may be batched (leading dim B, gradient per problem) or
            shared by all problems (any shape; its gradient is summed over problems):
            argmin never needs to know which, because the vector-Jacobian product of
            grad_y sum_b E_b does the bookkeeping.
        damping: lambda >= 0 of the trust-region damping, a float or a (B,) tensor (one
            lambda per problem; it receives no gradient). 0 is the undamped implicit
            gradient of Samuel and Tappen: it is non-finite where H is singular.
        solver: "newton" (trust_region_newton) or a callable
            solver(energy, y0, *params) -> (B, d) run under torch.no_grad on detached
            params.
        max_iter, tol: passed to trust_region_newton (ignored for a callable solver).
        newton_polish: after the solver, take up to five pure Newton steps where H is
            positive definite and the energy does not increase, so that a loosely
            converged solution satisfies grad E(y*) = 0 (paper section 3, "Using the
            derivative in learning").

    Returns:
        y* (B, d), same dtype and device as y0.

    Notes:
        Cost per solver iteration and in backward: d batched vector-Hessian products and
        a batched d x d solve, so d is meant to be small (1..16) while B can be large.
        The backward is once-differentiable (no double backward). Under torch.compile,
        argmin is excluded from tracing (torch.compiler.disable: the solver's
        convergence tests are data dependent) and runs eagerly between compiled regions.

    Raises:
        ValueError: y0 not a 2-D floating tensor, damping negative or not finite,
            unknown solver name, energy not returning shape (B,), solver returning a
            tensor of the wrong shape.
        TypeError: a param that is not a tensor.
    """
    op = "probreg.wiberg.argmin"
    _check_y0(y0, op)
    max_iter, tol = _check_solver_options(max_iter, tol, op)
    newton_polish = check.boolean(newton_polish, "newton_polish", op)
    if isinstance(damping, Tensor):
        if damping.is_complex() or damping.dtype == torch.bool:
            raise ValueError(f"{op}: damping must be a real number or a real tensor, got {damping.dtype}")
        if damping.dim() == 0:
            damping = damping.item()
    if isinstance(damping, Tensor):
        if damping.shape != y0.shape[:1]:
            raise ValueError(
                f"{op}: a damping tensor must have shape (B,) = ({y0.shape[0]},); got {tuple(damping.shape)}"
            )
        check.same_device([("y0", y0), ("damping", damping)], op)
        damping = damping.detach()
        if not bool((torch.isfinite(damping) & (damping >= 0)).all()):
            raise ValueError(f"{op}: damping must be finite and non-negative")
    else:
        damping = check.nonnegative_finite(damping, "damping", op)
    for index, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(
                f"params[{index}] must be a tensor (capture non-tensor constants in the "
                f"energy closure); got {type(p).__name__}"
            )
    if isinstance(solver, str):
        if solver != "newton":
            raise ValueError(f"unknown solver {solver!r}: use 'newton' or a callable")

        def run_solver(energy_, y_start, params_):
            return trust_region_newton(energy_, y_start, *params_, max_iter=max_iter, tol=tol)

    elif callable(solver):

        def run_solver(energy_, y_start, params_):
            return solver(energy_, y_start, *params_)

    else:
        raise ValueError(f"solver must be 'newton' or a callable; got {solver!r}")

    def solve(energy_, y_start, params_):
        _checked_energy(energy_, y_start, params_)
        y_star = run_solver(energy_, y_start, params_)
        if not isinstance(y_star, Tensor) or y_star.shape != y_start.shape:
            shape = tuple(y_star.shape) if isinstance(y_star, Tensor) else type(y_star).__name__
            raise ValueError(f"solver must return a tensor of shape {tuple(y_start.shape)}; got {shape}")
        y_star = y_star.detach().to(y_start.dtype)
        if newton_polish:
            y_star = _newton_polish(energy_, y_star, params_)
        return y_star

    return _apply_argmin(energy, solve, damping, y0, *params)


@torch.compiler.disable
def _apply_argmin(energy, solve, damping, y0, *params):
    # The solver stops on data-dependent convergence tests and validates shapes, which
    # torch.compile cannot trace: under compile, argmin runs as one eager region (a
    # graph break) while the code around it is compiled.
    return _ArgminFunction.apply(energy, solve, damping, y0, *params)


# ---------------------------------------------------------------------------
# quadratic energies: least squares (supplement section 2)
# ---------------------------------------------------------------------------


class _LstsqFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A, b, rcond, use_cholesky):
        if use_cholesky:
            normal = A.transpose(-1, -2) @ A
            chol, info = torch.linalg.cholesky_ex(normal)
            if bool((info != 0).any()):
                raise ValueError("lstsq(method='cholesky'): A^T A is not positive definite (A is rank-deficient); use method='pinv'")
            x = torch.cholesky_solve(A.transpose(-1, -2) @ b, chol)
            ctx.save_for_backward(A, b, x, chol)
        else:
            U, S, Vh = torch.linalg.svd(A, full_matrices=False)
            cutoff = rcond * S[..., :1]
            S_inv = torch.where(S > cutoff, 1.0 / torch.where(S > cutoff, S, torch.ones_like(S)), torch.zeros_like(S))
            pinv = Vh.transpose(-1, -2) @ (S_inv.unsqueeze(-1) * U.transpose(-1, -2))
            x = pinv @ b
            ctx.save_for_backward(A, b, x, pinv)
        ctx.use_cholesky = use_cholesky
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x):
        A, b, x, factor = ctx.saved_tensors
        residual = b - A @ x
        if ctx.use_cholesky:
            # supp. eq. 12-13 (sign corrected): dx = N^{-1}(dA^T r + A^T db - A^T dA x),
            # N = A^T A, r = b - A x.
            s = torch.cholesky_solve(grad_x, factor)
            A_s = A @ s
            grad_b = A_s
            grad_A = residual @ s.transpose(-1, -2) - A_s @ x.transpose(-1, -2)
        else:
            # supp. eq. 10-11 (Golub-Pereyra): dx = A+ db - A+ dA x + A+ A+^T dA^T r
            #                                      + (I - A+ A) dA^T A+^T x
            pinv = factor
            u = pinv.transpose(-1, -2) @ grad_x  # (m, k)
            q = grad_x - pinv @ (A @ grad_x)  # (I - A+ A) g, (n, k)
            grad_b = u
            grad_A = (
                -u @ x.transpose(-1, -2)
                + residual @ (pinv @ u).transpose(-1, -2)
                + (pinv.transpose(-1, -2) @ x) @ q.transpose(-1, -2)
            )
        return grad_A, grad_b, None, None


def lstsq(A: Tensor, b: Tensor, rcond: Optional[float] = None, method: str = "auto") -> Tensor:
    """Differentiable minimum-norm least squares x = A^+ b = argmin ||A x - b||^2.

    Args:
        A: (..., m, n) float32/float64 tensor, m, n >= 1.
        b: (m,), (..., m) with the batch shape of A, or (..., m, k); batch dims
            broadcast with A's (the vector rule of torch.linalg.solve). A and b are
            promoted to a common dtype.
        rcond: finite, >= 0: singular values <= rcond * sigma_max count as zero.
            Default max(m, n) * machine epsilon of A's dtype.
        method:
            "cholesky": A must have full column rank (m >= n); x = (A^T A)^{-1} A^T b by
                Cholesky, gradient by supplement eq. 12-13 (with its sign corrected:
                dx = N^{-1}(dA^T r + A^T db - A^T dA x), N = A^T A, r = b - A x).
                Raises ValueError if A^T A is not positive definite.
            "pinv": SVD pseudo-inverse with the rcond cut-off, gradient by the
                Golub-Pereyra derivative of the pseudo-inverse (supplement eq. 10-11),
                valid for any A along perturbations that keep its (rcond-)rank.
            "auto": "cholesky" when every matrix in the batch has m >= n and full
                column rank under rcond, else "pinv" (one host sync).

    Returns:
        x: (..., n) or (..., n, k), matching b.
    """
    op = "probreg.wiberg.lstsq"
    check.tensor(A, "A", op, min_dim=2, shape_text="(..., m, n)")
    check.tensor(b, "b", op, min_dim=1, shape_text="(..., m) or (..., m, k)")
    check.same_device([("A", A), ("b", b)], op)
    dtype = torch.promote_types(A.dtype, b.dtype)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: A and b must be float32 or float64 (torch.linalg's SVD and Cholesky), got "
                        f"{A.dtype} and {b.dtype}")
    check.choice(method, "method", op, ("auto", "cholesky", "pinv"))
    m, n = A.shape[-2:]
    if m < 1 or n < 1:
        raise ValueError(f"{op}: A must have shape (..., m, n) with m, n >= 1, got {tuple(A.shape)}")
    # torch.linalg.solve's rule: b is a (batch of) vector(s) if it is 1-D or has A's shape
    # without the last dim; otherwise it is (..., m, k)
    vector = b.dim() == 1 or (b.dim() == A.dim() - 1 and b.shape == A.shape[:-1])
    if vector:
        b = b.unsqueeze(-1)
    if b.dim() < 2 or b.shape[-2] != m:
        raise ValueError(f"{op}: b must have shape (..., {m}) or (..., {m}, k); got {tuple(b.shape)}")
    if rcond is None:
        rcond = max(m, n) * torch.finfo(dtype).eps
    rcond = check.nonnegative_finite(rcond, "rcond", op)
    try:
        batch = torch.broadcast_shapes(A.shape[:-2], b.shape[:-2])
    except RuntimeError:
        raise ValueError(f"{op}: the batch dims of A {tuple(A.shape)} and b {tuple(b.shape)} do not broadcast") from None
    A = A.expand(*batch, m, n).to(dtype)
    b = b.expand(*batch, m, b.shape[-1]).to(dtype)
    if method == "cholesky":
        if m < n:
            raise ValueError(f"{op}: method='cholesky' needs A (..., m, n) with m >= n; got A of shape (..., {m}, {n})")
        use_cholesky = True
    elif method == "pinv":
        use_cholesky = False
    else:
        if m < n:
            use_cholesky = False
        else:
            with torch.no_grad():
                s = torch.linalg.svdvals(A)
            use_cholesky = bool((s[..., -1] > rcond * s[..., 0]).all())
    x = _LstsqFunction.apply(A, b, float(rcond), use_cholesky)
    return x.squeeze(-1) if vector else x


# ---------------------------------------------------------------------------
# fusion energies
# ---------------------------------------------------------------------------


def _check_fusion_energy_args(y, v, A, w, delta):
    """Shapes, dtypes and devices of huber_fusion_energy's arguments (docstring there).
    Returns (w, delta) with delta as a tensor and the non-negativity rule applied."""
    op = "probreg.wiberg.huber_fusion_energy"
    check.tensor(y, "y", op, shape_text="(B, d)")
    if y.dim() != 2:
        raise ValueError(f"{op}: y must have shape (B, d), got {tuple(y.shape)}")
    d = y.shape[1]
    check.tensor(v, "v", op, min_dim=2, shape_text=f"(B, n, {d})")
    n = v.shape[-2]
    check.tensor(A, "A", op, min_dim=3, shape_text=f"(B, {n}, {d}, {d})")
    check.tensor(w, "w", op, min_dim=1, shape_text=f"(B, {n})")
    tails = (("v", v, (n, d)), ("A", A, (n, d, d)), ("w", w, (n,)))
    for name, t, tail in tails:
        text = "(B, " + ", ".join(str(k) for k in tail) + ")"
        ok = tuple(t.shape[t.dim() - len(tail):]) == tail
        if ok:
            try:
                ok = torch.broadcast_shapes(t.shape[:t.dim() - len(tail)], y.shape[:1]) == y.shape[:1]
            except RuntimeError:
                ok = False
        if not ok:
            raise ValueError(f"{op}: {name} must have shape {text} for y {tuple(y.shape)} and v {tuple(v.shape)} "
                             f"(a leading dim broadcasting to B), got {tuple(t.shape)}")
    check.same_device([("y", y), ("v", v), ("A", A), ("w", w)], op)
    w = check.nonnegative_weight(w, "w", op)
    if isinstance(delta, Tensor):
        if not delta.is_floating_point():
            raise TypeError(f"{op}: delta must be a number or a floating-point tensor, got {delta.dtype}")
        try:
            ok = torch.broadcast_shapes(delta.shape, (y.shape[0], n)) == (y.shape[0], n)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"{op}: delta must be a number or a tensor broadcastable to (B, n) = "
                             f"{(y.shape[0], n)}, got shape {tuple(delta.shape)}")
        if delta.dim() > 0:
            check.same_device([("y", y), ("delta", delta)], op)
        delta = check.nonnegative_tensor(delta, "delta", op)
    else:
        delta = torch.as_tensor(check.nonnegative(delta, "delta", op), dtype=y.dtype, device=y.device)
    return w, delta


def huber_fusion_energy(y: Tensor, v: Tensor, A: Tensor, w: Tensor, delta) -> Tensor:
    """E(y) = sum_i w_i h_delta(||A_i y - v_i||) (DESIGN.md section 1, "Fusion").

    h_delta(r) = r^2/2 for r <= delta, delta (r - delta/2) otherwise (C1, convex).

    Args:
        y: (B, d) fused estimate.
        v: (B, n, d) predictions.
        A: (B, n, d, d) per-prediction matrices (any square matrices).
        w: (B, n) non-negative weights.
        delta: >= 0, a number (+inf: every term quadratic) or a tensor broadcastable
            to (B, n).
        The leading B of v, A and w may also be any shape broadcasting to (B,) (e.g.
        parameters shared by every problem). Weights and delta follow the package's
        non-negativity rule (README "Errors and guarantees").

    Returns:
        E: (B,). Twice differentiable everywhere except on ||A_i y - v_i|| = delta; the
        square root is only evaluated on the outer branch, so gradients and Hessians
        are finite at zero residual.
    """
    w, delta = _check_fusion_energy_args(y, v, A, w, delta)
    residual = (A @ y.unsqueeze(-2).unsqueeze(-1)).squeeze(-1) - v  # (B, n, d)
    r_sq = (residual * residual).sum(-1)
    outer = r_sq > delta * delta
    r_outer = torch.sqrt(torch.where(outer, r_sq, delta * delta))
    huber = torch.where(outer, delta * (r_outer - 0.5 * delta), 0.5 * r_sq)
    return (w * huber).sum(-1)


def _check_rbf_args(*tensors) -> None:
    """rbf_fusion_energy's arguments: floating tensors whose shapes broadcast as documented
    (a clear error naming them instead of a broadcasting error inside the formula)."""
    op = "probreg.wiberg.rbf_fusion_energy"
    names = ("y", "centers", "sizes", "ref_sizes", "time", "sigma_pos", "sigma_size", "weight_scale", "temporal_a",
             "temporal_b")
    for name, t in zip(names, tensors):
        check.tensor(t, name, op)
    y, centers, sizes, ref_sizes, time, sigma_pos, sigma_size, weight_scale, temporal_a, temporal_b = tensors
    groups = (  # (what, last dim or None, members)
        ("(..., T, 2) corner terms", 2, (("y[..., None, :]", y.unsqueeze(-2)), ("centers", centers),
                                         ("sigma_pos", sigma_pos))),
        ("(..., T, 2) size terms", 2, (("sizes", sizes), ("ref_sizes", ref_sizes), ("sigma_size", sigma_size))),
        ("(..., T) tracker terms", None, (("time[..., None]", time.unsqueeze(-1)), ("weight_scale", weight_scale),
                                          ("temporal_a", temporal_a), ("temporal_b", temporal_b),
                                          ("centers[..., 0]", centers[..., 0]), ("sizes[..., 0]", sizes[..., 0]))),
    )
    for what, last, group in groups:
        ok = last is None or all(t.shape[-1:] == (last,) for _, t in group)
        if ok:
            try:
                torch.broadcast_shapes(*(t.shape for _, t in group))
            except RuntimeError:
                ok = False
        if not ok:
            shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in group)
            raise ValueError(f"{op}: the {what} must broadcast{'' if last is None else ' with a last dim of 2'}: {shapes}")


def rbf_fusion_energy(
    y: Tensor,
    centers: Tensor,
    sizes: Tensor,
    ref_sizes: Tensor,
    time: Tensor,
    sigma_pos: Tensor,
    sigma_size: Tensor,
    weight_scale: Tensor,
    temporal_a: Tensor,
    temporal_b: Tensor,
) -> Tensor:
    """RBF tracker-fusion energy for one box corner (supplement eq. 14-16).

        E(y) = -sum_t m_t exp(-(y_0 - a_t)^2 / sp_t0^2 - (y_1 - b_t)^2 / sp_t1^2)
        m_t  = s_t exp(-(w_t - w0_t)^2 / ss_t0^2 - (h_t - h0_t)^2 / ss_t1^2) theta_t
        theta_t = 1 / (1 + A_t^2 f + B_t^2 f^2)

    The supplement writes E with a + sign; as a sum of bumps it must be negated to be
    minimised at the trackers' consensus (as in the paper's RanSaC example). The
    temporal weight carries the tracker index (A_t, B_t are per tracker).

    Shapes (T trackers, ... any batch shape, broadcasting):
        y: (..., 2) corner position.
        centers: (..., T, 2) the trackers' candidate corner positions (a_t, b_t).
        sizes: (..., T, 2) the trackers' box (width, height) in this frame.
        ref_sizes: (..., T, 2) the trackers' box size in the first frame.
        time: (...,) frame time f (use a normalised time, e.g. frame / length).
        sigma_pos: (..., T, 2) RBF widths; sigma_size: (..., T, 2) size-change widths;
        weight_scale: (..., T) s_t; temporal_a, temporal_b: (..., T).

    Returns:
        E: (...,) energy, dtype of y.
    """
    _check_rbf_args(y, centers, sizes, ref_sizes, time, sigma_pos, sigma_size, weight_scale, temporal_a, temporal_b)
    position_term = (((y.unsqueeze(-2) - centers) / sigma_pos) ** 2).sum(-1)
    size_term = (((sizes - ref_sizes) / sigma_size) ** 2).sum(-1)
    f = time.unsqueeze(-1)
    theta = 1.0 / (1.0 + temporal_a**2 * f + temporal_b**2 * f * f)
    mixing = weight_scale * torch.exp(-size_term) * theta
    return -(mixing * torch.exp(-position_term)).sum(-1)


class RBFFusion(nn.Module):
    """Learnable RBF fusion of T trackers' boxes (paper section 4, supplement eq. 14-16).

    Two independent energies, one for the top-left and one for the bottom-right corner,
    each with its own per-tracker parameters (leading dim 2 = corner):

        sigma_pos = exp(log_sigma_pos)    (2, T, 2)  RBF widths in x and y
        sigma_size = exp(log_sigma_size)  (2, T, 2)  widths of the size-change weight
        weight_scale                      (2, T)     s_t
        temporal_a, temporal_b            (2, T)     A_t, B_t of the temporal weight
        box_scale                         (2, T, 2)  per-tracker box-size correction k_t:
                                                     corner = centre -/+ k_t * size / 2

    box_scale is the "scale factor that corrects for trackers that consistently
    underestimate the size of the bounding box" of the paper's section 4 (eq. 15's s_t
    only weights a tracker). Each corner is initialised at the tracker corner of lowest
    energy and refined by argmin (damped implicit gradient for learning).
    """

    def __init__(
        self,
        num_trackers: int,
        sigma_pos: float = 15.0,
        sigma_size: float = 30.0,
        temporal: float = 0.1,
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__()
        op = "probreg.wiberg.RBFFusion"
        T = check.integer(num_trackers, "num_trackers", op, low=1)
        sigma_pos = check.positive_finite(sigma_pos, "sigma_pos", op)
        sigma_size = check.positive_finite(sigma_size, "sigma_size", op)
        temporal = check.real(temporal, "temporal", op, "a finite real number", low=-math.inf, low_open=True,
                              high=math.inf, high_open=True)
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"{op}: dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.num_trackers = T
        self.log_sigma_pos = nn.Parameter(torch.full((2, T, 2), math.log(sigma_pos), dtype=dtype))
        self.log_sigma_size = nn.Parameter(torch.full((2, T, 2), math.log(sigma_size), dtype=dtype))
        self.weight_scale = nn.Parameter(torch.ones(2, T, dtype=dtype))
        self.temporal_a = nn.Parameter(torch.full((2, T), temporal, dtype=dtype))
        self.temporal_b = nn.Parameter(torch.full((2, T), temporal, dtype=dtype))
        self.box_scale = nn.Parameter(torch.ones(2, T, 2, dtype=dtype))

    def corner_problems(self, boxes: Tensor, ref_boxes: Tensor, time: Tensor):
        """The 2B corner problems' energy arguments (rbf_fusion_energy order after y).

        boxes, ref_boxes: (B, T, 4) as (x0, y0, x1, y1); time: (B,).
        Returns a tuple of tensors with leading dim 2B: rows [0, B) are top-left
        corners, rows [B, 2B) bottom-right corners.
        """
        op = "probreg.wiberg.RBFFusion"
        T = self.num_trackers
        for name, t in (("boxes", boxes), ("ref_boxes", ref_boxes)):
            check.tensor(t, name, op, shape_text=f"(B, {T}, 4)")
            if t.dim() != 3 or t.shape[1:] != (T, 4):
                raise ValueError(f"{op}: {name} must have shape (B, num_trackers, 4) = (B, {T}, 4) as "
                                 f"(x0, y0, x1, y1), got {tuple(t.shape)}")
        B = boxes.shape[0]
        if ref_boxes.shape != boxes.shape:
            raise ValueError(f"{op}: ref_boxes must have the shape of boxes {tuple(boxes.shape)}, "
                             f"got {tuple(ref_boxes.shape)}")
        check.tensor(time, "time", op, shape_text=f"(B,) = ({B},)")
        if time.shape != (B,):
            raise ValueError(f"{op}: time must have shape (B,) = ({B},), got {tuple(time.shape)}")
        check.same_device([("boxes", boxes), ("ref_boxes", ref_boxes), ("time", time)], op)
        centre = 0.5 * (boxes[..., :2] + boxes[..., 2:])
        size = boxes[..., 2:] - boxes[..., :2]
        ref_size = ref_boxes[..., 2:] - ref_boxes[..., :2]
        corner = torch.arange(2, device=boxes.device).repeat_interleave(B)  # (2B,)
        sign = torch.tensor([-1.0, 1.0], dtype=boxes.dtype, device=boxes.device)[corner]
        box_scale = self.box_scale[corner]  # (2B, T, 2)
        centres = centre.repeat(2, 1, 1) + sign.view(-1, 1, 1) * box_scale * size.repeat(2, 1, 1) / 2
        return (
            centres,
            size.repeat(2, 1, 1),
            ref_size.repeat(2, 1, 1),
            time.repeat(2),
            self.log_sigma_pos.exp()[corner],
            self.log_sigma_size.exp()[corner],
            self.weight_scale[corner],
            self.temporal_a[corner],
            self.temporal_b[corner],
        )

    def forward(
        self,
        boxes: Tensor,
        ref_boxes: Tensor,
        time: Tensor,
        damping: float = 0.1,
        max_iter: int = 50,
    ) -> Tensor:
        """Fuse boxes (B, T, 4) into (B, 4) (x0, y0, x1, y1).

        ref_boxes (B, T, 4): each tracker's box in the sequence's first frame.
        time (B,): normalised frame time in [0, 1].
        """
        problem = self.corner_problems(boxes, ref_boxes, time)  # validates the arguments
        B = boxes.shape[0]
        with torch.no_grad():
            centres = problem[0]
            broadcast = [p.unsqueeze(1) for p in problem]  # candidates along dim 1
            candidate_energy = rbf_fusion_energy(centres, *broadcast)  # (2B, T)
            best = candidate_energy.argmin(-1)
            y0 = centres[torch.arange(2 * B, device=boxes.device), best]
        corners = argmin(rbf_fusion_energy, y0, *problem, damping=damping, max_iter=max_iter)
        return torch.cat([corners[:B], corners[B:]], dim=-1)
