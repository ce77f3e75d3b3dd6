"""Autograd and vmap rules of every probreg operator, fused (d <= 3) and fallback (d > 3).

Mechanism. Each operator gets its own kernel at the Autograd dispatch key (what
torch.library.register_autograd installs, but calling a new-style autograd.Function with
backward AND jvp rules), and a torch.library.register_vmap batching rule:
- reverse mode: backward calls the backward operator (`_<op>_backward`), which is
  differentiable again (double backward); huber_nll at d = 2 and 3 on the CPU, where only a
  first-order backward is to be recorded, takes a one-pass route instead (_HuberNllOnePass: loss and
  gradients from one decomposition per target);
- forward mode (torch.func.jvp/jacfwd, torch.autograd.forward_ad): jvp rules, mostly the
  backward operators again (the Daleckii-Krein map is self-adjoint);
- torch.func: the Autograd kernel runs at one functorch level, like a built-in operator's
  (probreg/_single_level.py), and the vmap rules batch every operator with one call (no
  slow per-sample fallback);
- torch.compile: dynamo puts the operators in the graph as they are; AOTAutograd traces
  these kernels (the backward operators appear in the backward graph).
Second-order rules (the derivatives of the backward operators) are in
probreg/_second_order.py.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as forward_ad

from . import _fuse_torch, _second_order, _single_level
from . import _spectral as spectral
from ._ops import ops
from .packing import pack_sym, unpack_sym

_LIB = torch.library.Library("probreg", "IMPL")  # kept alive for the process


def _function(name: str, op, setup_context, backward, jvp):
    """A new-style autograd.Function whose forward runs op below this level's autograd.

    Under functorch, the jvp rule also runs below this level's autograd with the caller's
    grad modes (autograd.Function turns forward-mode AD off around it), so that outer
    levels differentiate the tangent computation (jacfwd(jacfwd(...)), jvp of a jvp). The
    backward rule runs in the autograd engine with grad mode = create_graph, as any
    built-in backward formula."""

    def forward(*args):
        with _single_level.caller_grad_modes():
            return op(*args)

    def jvp_at_level(ctx, *tangents):
        if torch._C._are_functorch_transforms_active():
            with _single_level.caller_grad_modes():
                return jvp(ctx, *tangents)
        return jvp(ctx, *tangents)

    members = {key: staticmethod(fn) for key, fn in
               (("forward", forward), ("setup_context", setup_context), ("backward", backward), ("jvp", jvp_at_level))}
    return type(f"{name}_function", (torch.autograd.Function,), members)


def _batch_first(x, bdim, size):
    if not isinstance(x, torch.Tensor):
        return x
    return x.expand(size, *x.shape) if bdim is None else x.movedim(bdim, 0)


def _vmap_rule(op, out_dims=None):
    """Batching rule of an operator batched over leading dims: the vmapped dim goes first,
    unbatched tensor inputs are expanded to it, and the operator runs once."""

    def rule(info, in_dims, *args):
        out = op(*(_batch_first(a, d, info.batch_size) for a, d in zip(args, in_dims)))
        if out_dims is not None:
            return out, out_dims(*args)
        return out, (0,) * len(out) if isinstance(out, tuple) else 0

    return rule


def _register(name: str, function, vmap_out_dims=None, shortcut=None) -> None:
    """shortcut(args): the result of a cheaper route to the same values and first-order
    gradients where it applies, None where it does not (then `function` records)."""
    op = getattr(ops, name).default

    def autograd_kernel(keyset, *args):
        if _single_level.needs_autograd(args):
            out = None if shortcut is None else shortcut(args)
            return _single_level.apply(function, args) if out is None else out
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    _LIB.impl(name, autograd_kernel, "Autograd", with_keyset=True)
    torch.library.register_vmap(f"probreg::{name}", _vmap_rule(op, vmap_out_dims), lib=_LIB)


def _save(ctx, *tensors) -> None:
    """Save tensors for the backward and the jvp rule."""
    ctx.save_for_backward(*tensors)
    ctx.save_for_forward(*tensors)


def _none(n: int):
    return (None,) * n


def _add(a, b):
    return b if a is None else (a if b is None else a + b)


# ---------------------------------------------------------------- symeig
def _register_symeig(forward_name: str, backward_name: str) -> None:
    forward_op = getattr(ops, forward_name)
    backward_op = getattr(ops, backward_name)

    def setup_context(ctx, inputs, output):
        _save(ctx, *output)

    def backward(ctx, grad_l, grad_V):
        l, V = ctx.saved_tensors
        return backward_op(_second_order.zeros_if_none(grad_l, l), _second_order.zeros_if_none(grad_V, V), l, V)

    def jvp(ctx, dB):
        l, V = ctx.saved_tensors
        return spectral.symeig_tangent(l, V, dB)

    _register(forward_name, _function(forward_name, forward_op, setup_context, backward, jvp))

    def b_setup_context(ctx, inputs, output):
        _save(ctx, *inputs)

    def b_backward(ctx, cotangent):
        return _second_order.symeig_backward_vjp(*ctx.saved_tensors, cotangent)

    def b_jvp(ctx, *tangents):
        return _second_order.symeig_backward_jvp(*ctx.saved_tensors, *tangents)

    _register(backward_name, _function(backward_name, backward_op, b_setup_context, b_backward, b_jvp))


# ---------------------------------------------------------------- spd_remap
def _register_spd_remap(forward_name: str, backward_name: str) -> None:
    forward_op = getattr(ops, forward_name)
    backward_op = getattr(ops, backward_name)

    def setup_context(ctx, inputs, output):
        B, ctx.theta = inputs
        _save(ctx, B)

    def backward(ctx, grad_A):
        (B,) = ctx.saved_tensors
        return backward_op(grad_A, B, ctx.theta), None

    def jvp(ctx, dB, _dtheta):
        (B,) = ctx.saved_tensors
        return backward_op(dB, B, ctx.theta)  # dF[dB] = DK_B(dB), the backward's own map

    _register(forward_name, _function(forward_name, forward_op, setup_context, backward, jvp))

    # _spd_remap_backward(G, B) = DK_B(G): linear in G (derivative DK_B, self-adjoint), and
    # d/dB in direction E is d2F_B[G, E], symmetric in (G, E).
    def b_setup_context(ctx, inputs, output):
        G, B, ctx.theta = inputs
        _save(ctx, G, B)

    def b_backward(ctx, cotangent):
        G, B = ctx.saved_tensors
        grad_G = backward_op(cotangent, B, ctx.theta) if ctx.needs_input_grad[0] else None
        grad_B = ops._spd_remap_second(B, G, cotangent, ctx.theta) if ctx.needs_input_grad[1] else None
        return grad_G, grad_B, None

    def b_jvp(ctx, dG, dB, _dtheta):
        G, B = ctx.saved_tensors
        out = None if dG is None else backward_op(dG, B, ctx.theta)
        return _add(out, None if dB is None else ops._spd_remap_second(B, G, dB, ctx.theta))

    _register(backward_name, _function(backward_name, backward_op, b_setup_context, b_backward, b_jvp))


# ---------------------------------------------------------------- spd_from_raw (fused only:
# d > 3 composes unpack_sym with _spd_remap_fallback). _spd_from_raw_backward(G, raw) =
# pack(DK_B(G)), B = unpack(raw); pack is the adjoint of unpack.
def _spd_from_raw_second(raw, G, e, theta):
    """pack(d2F_B[G, unpack(e)]), B = unpack(raw)."""
    return pack_sym(ops._spd_remap_second(unpack_sym(raw), G, unpack_sym(e), theta))


def _register_spd_from_raw() -> None:
    def setup_context(ctx, inputs, output):
        raw, ctx.theta = inputs
        _save(ctx, raw)

    def backward(ctx, grad_A):
        (raw,) = ctx.saved_tensors
        return ops._spd_from_raw_backward(grad_A, raw, ctx.theta), None

    def jvp(ctx, draw, _dtheta):
        (raw,) = ctx.saved_tensors
        return ops._spd_remap_backward(unpack_sym(draw), unpack_sym(raw), ctx.theta)

    _register("spd_from_raw", _function("spd_from_raw", ops.spd_from_raw, setup_context, backward, jvp))

    def b_setup_context(ctx, inputs, output):
        G, raw, ctx.theta = inputs
        _save(ctx, G, raw)

    def b_backward(ctx, cotangent):
        G, raw = ctx.saved_tensors
        grad_G = None
        if ctx.needs_input_grad[0]:
            grad_G = ops._spd_remap_backward(unpack_sym(cotangent), unpack_sym(raw), ctx.theta)
        grad_raw = _spd_from_raw_second(raw, G, cotangent, ctx.theta) if ctx.needs_input_grad[1] else None
        return grad_G, grad_raw, None

    def b_jvp(ctx, dG, draw, _dtheta):
        G, raw = ctx.saved_tensors
        out = None if dG is None else ops._spd_from_raw_backward(dG, raw, ctx.theta)
        return _add(out, None if draw is None else _spd_from_raw_second(raw, G, draw, ctx.theta))

    _register("_spd_from_raw_backward",
              _function("_spd_from_raw_backward", ops._spd_from_raw_backward, b_setup_context, b_backward, b_jvp))


# ---------------------------------------------------------------- huber_nll
# loss = huber_nll(pred, target, *options); _huber_nll_backward(go, pred, target, *options,
# need_grad_target) = go * grad(loss) (exactly 0 where go == 0).
def _register_huber_nll(forward_name: str, backward_name: str) -> None:
    forward_op = getattr(ops, forward_name)
    backward_op = getattr(ops, backward_name)

    def setup_context(ctx, inputs, output):
        pred, target, *ctx.options = inputs
        _save(ctx, pred, target)
        ctx.loss_dtype = output.dtype

    def backward(ctx, grad_loss):
        pred, target = ctx.saved_tensors
        need_pred, need_target = ctx.needs_input_grad[:2]
        grad_pred, grad_target = backward_op(grad_loss, pred, target, *ctx.options, need_target)
        return (grad_pred if need_pred else None, grad_target if need_target else None, *_none(5))

    def jvp(ctx, dpred, dtarget, *_):
        pred, target = ctx.saved_tensors
        ones = torch.ones(target.shape[:-1], dtype=ctx.loss_dtype, device=target.device)
        grad_pred, grad_target = backward_op(ones, pred, target, *ctx.options, dtarget is not None)
        out = None if dpred is None else (grad_pred * dpred).sum(-1)
        if dtarget is not None:
            out = _add(out, (grad_target * dtarget).sum(-1))
        return out.to(ctx.loss_dtype)

    shortcut = _huber_nll_one_pass if forward_name == "huber_nll" else None
    _register(forward_name, _function(forward_name, forward_op, setup_context, backward, jvp), shortcut=shortcut)

    # d/d(go) = grad(loss); d/d(pred, target) = go * Hess(loss) (symmetric: the same
    # Hessian-vector product serves the vjp and the jvp).
    def b_setup_context(ctx, inputs, output):
        grad_loss, pred, target, *ctx.options, ctx.need_grad_target = inputs
        _save(ctx, grad_loss, pred, target)

    def b_backward(ctx, c_pred, c_target):
        grad_loss, pred, target = ctx.saved_tensors
        if not ctx.need_grad_target:
            c_target = None
        grad_go = None
        if ctx.needs_input_grad[0]:
            ones = torch.ones_like(grad_loss)
            g_pred, g_target = backward_op(ones, pred, target, *ctx.options, c_target is not None)
            if c_pred is not None:
                grad_go = (g_pred * c_pred).sum(-1).to(grad_loss.dtype)
            if c_target is not None:
                grad_go = _add(grad_go, (g_target * c_target).sum(-1).to(grad_loss.dtype))
        grad_pred = grad_target = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_pred, grad_target = ops._huber_nll_hvp(
                grad_loss, pred, target, _second_order.zeros_if_none(c_pred, pred),
                _second_order.zeros_if_none(c_target, target), *ctx.options, True)
        return (grad_go, grad_pred if ctx.needs_input_grad[1] else None,
                grad_target if ctx.needs_input_grad[2] else None, *_none(6))

    def b_jvp(ctx, d_grad_loss, dpred, dtarget, *_):
        grad_loss, pred, target = ctx.saved_tensors
        out_pred, out_target = ops._huber_nll_hvp(
            grad_loss, pred, target, _second_order.zeros_if_none(dpred, pred),
            _second_order.zeros_if_none(dtarget, target), *ctx.options, ctx.need_grad_target)
        if d_grad_loss is not None:
            g_pred, g_target = backward_op(d_grad_loss, pred, target, *ctx.options, ctx.need_grad_target)
            out_pred, out_target = out_pred + g_pred, out_target + g_target
        return out_pred, out_target

    _register(backward_name, _function(backward_name, backward_op, b_setup_context, b_backward, b_jvp),
              vmap_out_dims=lambda *args: (0, 0 if args[-1] else None))


class _HuberNllOnePass(torch.autograd.Function):
    """huber_nll recorded for a first-order backward on the CPU (d = 2, 3): the forward computes the
    loss and its gradients for a unit upstream gradient in one pass (ops._huber_nll_and_grad: one
    eigendecomposition per target instead of one in the forward and one in the backward)
    and keeps them (memory: grad_pred (..., W), and grad_target (..., d) where target
    requires grad, held from the forward to the backward); the backward returns them
    times the upstream gradient, exactly 0 where it is 0, in place. Two outputs:
    - mean=False: the per-target loss (...), unit gradients for grad_loss = 1 per target;
    - mean=True (probreg.huber_nll's mean reduction without weights): the mean
      loss.sum() * (1/n) as _weighted_reduce computes it, and the unit gradients are the
      mean's, grad_loss = 1/n folded into the kernel (no second pass over grad_pred to
      scale it); the upstream is then the mean's gradient (1 for mean.backward()).
    A second backward through a retained graph recomputes the unit gradients
    (_huber_nll_backward with 1 or 1/n broadcast, the same values bit for bit); a backward
    that records a graph (create_graph=True) computes the same product with
    differentiable operators, so every backward of this node returns the same values.
    Old-style (ctx in forward): used only where no functorch transform, forward-AD level or
    tracing is active (_huber_nll_one_pass)."""

    @staticmethod
    def forward(ctx, mean, pred, target, *options):
        batch_shape = target.shape[:-1]
        ctx.unit = 1.0 / batch_shape.numel() if mean else 1.0
        loss, grad_pred, grad_target = ops._huber_nll_and_grad(pred, target, *options, ctx.needs_input_grad[2],
                                                              ctx.unit)
        ctx.save_for_backward(pred, target)
        ctx.options = options
        ctx.mean = mean
        ctx.unit_grads = (grad_pred, grad_target)
        return loss.sum() * ctx.unit if mean else loss

    @staticmethod
    def backward(ctx, grad_out):
        pred, target = ctx.saved_tensors
        need_pred, need_target = ctx.needs_input_grad[1:3]
        grad_loss = grad_out.expand(target.shape[:-1])  # per target (the mean's: one broadcast value)
        unit_grads, ctx.unit_grads = ctx.unit_grads, None
        record = torch.is_grad_enabled()
        if unit_grads is None or record:
            unit = grad_loss.new_full((), ctx.unit).expand(grad_loss.shape)
            unit_grads = ops._huber_nll_backward(unit, pred, target, *ctx.options, need_target)
        scale = _upstream_times if record else _scale_by_upstream
        grad_pred, grad_target = (scale(g, grad_loss) if g.numel() else g for g in unit_grads)
        return (None, grad_pred if need_pred else None, grad_target if need_target else None, *_none(5))


def _scale_by_upstream(grad, grad_loss):
    """_upstream_times(grad, grad_loss), the same values, in place in grad. One value
    broadcast over the batch (sum and mean reductions) is read once: 1 leaves grad as it is."""
    if all(stride == 0 or size == 1 for stride, size in zip(grad_loss.stride(), grad_loss.shape)):
        value = grad_loss.as_strided((), (), grad_loss.storage_offset()).item()
        if value == 1.0:
            return grad
        return grad.zero_() if value == 0.0 else grad.mul_(value)
    grad.mul_(grad_loss.unsqueeze(-1))
    masked = grad_loss == 0
    if masked.any():
        grad.masked_fill_(masked.unsqueeze(-1), 0)
    return grad


def _upstream_times(grad, grad_loss):
    """grad (..., k) times grad_loss (...) per target, exactly 0 where grad_loss is 0 (masked
    targets, whose inputs may be non-finite), as _huber_nll_backward gives; differentiable."""
    go = grad_loss.unsqueeze(-1)
    return torch.where(go == 0, grad.new_zeros(()), go * grad)


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _huber_nll_one_pass(args, mean: bool = False):
    """huber_nll's loss (mean: its mean, huber_nll_mean_one_pass) through _HuberNllOnePass
    where it applies: plain reverse mode on the
    CPU (no functorch transform, no forward-AD level, no tensor subclass such as torch.compile's
    fake tensors), float32 or float64, d = 2 and 3, where one decomposition and one read of
    the inputs instead of two pay (tools/nll_route_ab.py, 2^20 targets, full covariance, AVX2,
    forward+backward: d = 3 52.0 vs 68.2 ms, d = 2 26.7 vs 29.4 ms). None elsewhere (d = 1
    and the pure-PyTorch d > 3 keep the two-pass rule), and for invalid arguments (the
    two-pass route then raises huber_nll's own error)."""
    pred, target = args[:2]
    if (torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0
            or not torch.is_grad_enabled() or torch.compiler.is_compiling()
            or type(pred) not in _PLAIN_TENSORS or type(target) not in _PLAIN_TENSORS
            or pred.device.type != "cpu" or pred.dtype not in (torch.float32, torch.float64)
            or target.dim() == 0 or target.shape[-1] not in (2, 3)):
        return None
    try:
        return _HuberNllOnePass.apply(mean, *args)
    except RuntimeError:
        return None


def huber_nll_mean_one_pass(args):
    """The mean of huber_nll(*args) over its targets (no weights) through _HuberNllOnePass,
    the mean's 1/n folded into the one pass, where a backward is to be recorded and the
    route applies (a nonempty batch); None elsewhere: the caller then reduces huber_nll's
    per-target loss (probreg.nll._weighted_reduce, the same value)."""
    if not _single_level.needs_autograd(args) or args[1].numel() == 0:
        return None
    return _huber_nll_one_pass(args, mean=True)


# ---------------------------------------------------------------- huber_fuse
# (y, hessian, iterations, converged) = huber_fuse(v, A, weight, init, delta, max_iter, tol,
# damping); only y is differentiable (implicit function theorem at y*; init does not move y*).
def _register_huber_fuse(forward_name: str, backward_name: str) -> None:
    forward_op = getattr(ops, forward_name)
    backward_op = getattr(ops, backward_name)

    def setup_context(ctx, inputs, output):
        v, A, weight, _init, ctx.delta, _max_iter, _tol, ctx.damping = inputs
        y, hessian, iterations, converged = output
        ctx.mark_non_differentiable(hessian, iterations, converged)
        _save(ctx, y, v, A, weight)

    def backward(ctx, grad_y, _grad_hessian, _grad_iterations, _grad_converged):
        y, v, A, weight = ctx.saved_tensors
        grads = backward_op(_second_order.zeros_if_none(grad_y, y), y, v, A, weight, ctx.delta, ctx.damping)
        return (*grads, *_none(5))

    def jvp(ctx, dv, dA, d_weight, *_):
        y, v, A, weight = ctx.saved_tensors
        args = _second_order.compute_args(y, v, A, weight, dv, dA, d_weight)
        dy = _fuse_torch.fuse_tangent(*args, ctx.delta, ctx.damping).to(y.dtype)
        return dy, None, None, None

    _register(forward_name, _function(forward_name, forward_op, setup_context, backward, jvp))

    _register_differentiated_as_composite(backward_name, _fuse_backward_composite)


def _fuse_backward_composite(grad_y, y, v, A, weight, delta, damping):
    """_huber_fuse_backward as differentiable torch ops (probreg/_fuse_torch.py), in the
    kernels' compute dtype."""
    args = _second_order.compute_args(v, grad_y, y, A, weight)
    grads = _fuse_torch.fuse_backward(args[1], args[2], args[0], args[3], args[4], delta, damping)
    return tuple(g.to(v.dtype) for g in grads)


def _register_differentiated_as_composite(name: str, composite) -> None:
    """An Autograd kernel that runs the fused kernel when nothing is to be recorded, and the
    differentiable torch composite otherwise (when the operator itself is differentiated:
    double backward, torch.func), which autograd and functorch then differentiate like
    any torch code (to any order)."""
    op = getattr(ops, name).default

    def autograd_kernel(keyset, *args):
        if _single_level.needs_autograd(args):
            return composite(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    _LIB.impl(name, autograd_kernel, "Autograd", with_keyset=True)
    torch.library.register_vmap(f"probreg::{name}", _vmap_rule(op), lib=_LIB)


for _register_rules, _name in ((_register_symeig, "symeig"), (_register_spd_remap, "spd_remap"),
                              (_register_huber_nll, "huber_nll"), (_register_huber_fuse, "huber_fuse")):
    _register_rules(_name, f"_{_name}_backward")  # fused kernels, d <= 3
    _register_rules(f"_{_name}_fallback", f"_{_name}_fallback_backward")  # d > 3
_register_spd_from_raw()


# ---------------------------------------------------------------- second-order rules
# The second-order operators are not differentiable: their Function's backward and jvp
# raise, at every level (each functorch level dispatches the operator to this kernel).
def _register_not_differentiable(name: str, error, vmap_out_dims=None) -> None:
    def setup_context(ctx, inputs, output):
        pass

    def raise_error(ctx, *_):
        raise error(name)

    _register(name, _function(name, getattr(ops, name), setup_context, raise_error, raise_error),
              vmap_out_dims=vmap_out_dims)


_register_not_differentiable("_spd_remap_second", _second_order.third_order_error)
_register_not_differentiable("_huber_nll_hvp", _second_order.third_order_error,
                             vmap_out_dims=lambda *args: (0, 0 if args[-1] else None))


def _and_grad_error(name: str) -> RuntimeError:
    return RuntimeError(
        f"probreg::{name} is not differentiable: it is huber_nll's one-pass forward for a first-order "
        "backward (its outputs are the loss and its gradients). Differentiate probreg.huber_nll "
        "(probreg::huber_nll) instead; its derivatives are exact to second order."
    )


_register_not_differentiable("_huber_nll_and_grad", _and_grad_error,
                             vmap_out_dims=lambda *args: (0, 0, 0 if args[7] else None))
