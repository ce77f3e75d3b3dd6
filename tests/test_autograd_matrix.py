"""Every public callable (probreg.__all__, HuberL2's members) and every operator in
torch.ops.probreg through the autograd matrix (issue 16, point 5):

    backward          torch.autograd.gradcheck (float64 finite differences)
    double_backward   torch.autograd.gradgradcheck, reverse-over-reverse and forward-over-reverse
    jvp               gradcheck's forward-mode check (torch.autograd.forward_ad) and torch.func.jvp
    func              torch.func.grad / jacrev / jacfwd / vmap(grad) against autograd
    hessian           torch.func.hessian (forward-over-reverse) against autograd's double backward
    vmap              torch.vmap against a loop (with torch's slow-fallback warning an error)
    compile_static    torch.compile(fullgraph=True, dynamic=False) against eager, forward and
    compile_dynamic   backward, (dynamic=True) with theta / delta changing between calls

A cell is supported (it must pass), unsupported with a reason (the call must raise: never
a silent zero), or not applicable (no tensor input, or a constructor covered through the
entries that use it). The tables must name every public callable and every operator, so a
new one cannot skip the matrix (test_tables_cover_*). README.md's support table is
rendered from these tables (test_readme_support_table_is_the_tested_matrix). The exhaustive
second-order checks (every NLL family, degenerate points) are tests/test_second_order.py;
torch.library.opcheck covers every operator here (backward operators included).
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import probreg
from probreg._ops import ops

from helpers import ROOT

# No operator may reach torch's "autograd kernel was not registered" fallback (a silent zero).
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("error:.*autograd kernel was not registered:UserWarning")]

F64 = torch.float64
MODES = ("backward", "double_backward", "jvp", "func", "hessian", "vmap", "compile_static", "compile_dynamic")
THIRD_ORDER = "third order: the second-order rules are not differentiable (raises)"
AND_GRAD = "huber_nll's one-pass forward (loss and gradients), not differentiable (raises): differentiate huber_nll"


@dataclass
class Case:
    fn: Callable  # fn(*tensors, *params) -> tensor (or tuple of tensors)
    tensors: Callable  # () -> tuple of float64 tensors
    params: tuple = ((),)  # scalar arguments; compile calls with each in turn
    unsupported: dict = field(default_factory=dict)  # mode -> reason: the call must raise
    not_applicable: dict = field(default_factory=dict)  # mode -> reason: no test
    compile_fn: Optional[Callable] = None  # what torch.compile runs (default fn)
    op_args: Optional[Callable] = None  # operators: () -> the full argument tuple (opcheck)
    slow: tuple = ()  # modes marked slow (pytest -m "not slow" skips them)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _sym(n, d, seed=0):
    B = torch.randn(n, d, d, generator=_gen(seed), dtype=F64)
    return B + B.mT


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=_gen(seed), dtype=F64)


def _fuse_inputs(d, n=2, batch=2, seed=0):
    g = _gen(seed)
    v = 2.0 * torch.randn(batch, n, d, generator=g, dtype=F64)
    A = torch.randn(batch, n, d, d, generator=g, dtype=F64) + 2.0 * torch.eye(d, dtype=F64)
    w = 0.5 + torch.rand(batch, n, generator=g, dtype=F64)
    return v, A, w


THETAS = ((0.5,), (0.7,))
DELTAS_THETAS = ((0.5, 0.5), (0.8, 0.7))
NO_TENSORS = "no tensor inputs (a Python float of Python numbers)"
CONSTRUCTOR = "a constructor: covered through the members of the distribution it returns"

# ------------------------------------------------------------------ public callables
_P2, _P4 = 3, 10


def _huber_l2(loc, raw, delta=0.6, theta=0.5):
    return probreg.HuberL2(loc, raw=raw, delta=delta, theta=theta)


def _distribution_tensors(d=2):
    P = d * (d + 1) // 2
    return (_randn(3, d, seed=1), _randn(3, P, seed=2))


def _member(name):
    """A HuberL2 member as a function of (loc, raw)."""
    return lambda loc, raw: getattr(_huber_l2(loc, raw), name)


REGION_CONSTANT = "no tensor input it depends on: s_p is a number of (d, delta, p)"


def _head(d, covariance, parameterization):
    """A float64 PredictionHead (4 features, 2 targets) with seeded random weights."""
    head = probreg.PredictionHead(4, 2, d, covariance=covariance, parameterization=parameterization,
                                  init_precision=2.0, delta=0.6).double()
    with torch.no_grad():
        head.linear.weight.copy_(0.3 * torch.randn(head.linear.weight.shape, generator=_gen(23), dtype=F64))
    return head


_HEAD_FULL_V, _HEAD_DIAGONAL_MU = _head(2, "full", "v"), _head(3, "diagonal", "mu")
_OUTLIER_MIXTURE = probreg.nn.OutlierMixtureNLLLoss(0.1, -1.4, 0.6, 0.5, reduction="none")


def _rsample(loc, raw):
    torch.manual_seed(0)  # the same draw on every call (gradcheck evaluates repeatedly)
    return _huber_l2(loc, raw).rsample((2,))


PUBLIC = {
    "symeig": Case(lambda B: probreg.symeig(B), lambda: (_sym(3, 2),)),
    "symeig[d>3]": Case(lambda B: probreg.symeig(B), lambda: (_sym(2, 4),)),
    "spd_remap": Case(lambda B, th: probreg.spd_remap(B, th), lambda: (_sym(3, 2),), THETAS),
    "spd_remap[d>3]": Case(lambda B, th: probreg.spd_remap(B, th), lambda: (_sym(2, 4),), THETAS),
    "spd_from_raw": Case(lambda r, th: probreg.spd_from_raw(r, th), lambda: (_randn(3, _P2),), THETAS),
    "spd_from_raw[d>3]": Case(lambda r, th: probreg.spd_from_raw(r, th), lambda: (_randn(2, _P4),), THETAS),
    "pack_sym": Case(lambda B: probreg.pack_sym(B), lambda: (_sym(3, 4),)),
    "unpack_sym": Case(lambda r: probreg.unpack_sym(r), lambda: (_randn(3, _P4),)),
    "huber_nll": Case(lambda p, t, de, th: probreg.huber_nll(p, t, de, th, reduction="none"),
                      lambda: (_randn(3, 5, seed=3), _randn(3, 2, seed=4)), DELTAS_THETAS),
    "huber_nll[d>3]": Case(lambda p, t, de, th: probreg.huber_nll(p, t, de, th, parameterization="mu", reduction="sum"),
                           lambda: (_randn(2, 14, seed=3), _randn(2, 4, seed=4)), DELTAS_THETAS),
    "HuberNLLLoss": Case(lambda p, t: probreg.HuberNLLLoss(0.6, 0.5, covariance="diagonal", family="charbonnier")(p, t),
                         lambda: (_randn(3, 4, seed=5), _randn(3, 2, seed=6))),
    "huber_log_normalizer": Case(lambda de: torch.tensor(probreg.huber_log_normalizer(3, de)), lambda: (), ((0.5,), (0.8,)),
                                 not_applicable={m: NO_TENSORS for m in MODES[:6]}),
    "huber_variance_factor": Case(lambda de: torch.tensor(probreg.huber_variance_factor(3, de)), lambda: (), ((0.5,), (0.8,)),
                                  not_applicable={m: NO_TENSORS for m in MODES[:6]}),
    "huber_fuse": Case(lambda v, A, w, de: probreg.huber_fuse(v, A, w, de, tol=1e-14, max_iter=200).y,
                       lambda: _fuse_inputs(2), ((1.0,), (1.3,)),
                       compile_fn=lambda v, A, w, de: tuple(probreg.huber_fuse(v, A, w, de, tol=1e-14, max_iter=200)[:3])),
    "huber_fuse[d>3]": Case(lambda v, A, w, de: probreg.huber_fuse(v, A, w, de, tol=1e-14, max_iter=200).y,
                            lambda: _fuse_inputs(4, batch=1), ((1.0,), (1.3,))),
    "fuse_predictions": Case(lambda p, th, de: probreg.fuse_predictions(p, theta=th, delta=de, tol=1e-14, max_iter=200).y,
                             lambda: (_randn(2, 2, 5, seed=7),), DELTAS_THETAS),
    "FuseResult": Case(None, lambda: (), not_applicable={m: "the result type of huber_fuse / fuse_predictions" for m in MODES}),
    "HuberL2": Case(None, lambda: (), not_applicable={m: CONSTRUCTOR for m in MODES}),
    "HuberL2.log_prob": Case(lambda loc, raw, y, de, th: _huber_l2(loc, raw, de, th).log_prob(y),
                             lambda: (*_distribution_tensors(), _randn(3, 2, seed=8)), DELTAS_THETAS),
    "HuberL2.log_prob[d>3]": Case(lambda loc, raw, y, de, th: _huber_l2(loc, raw, de, th).log_prob(y),
                                  lambda: (*_distribution_tensors(4), _randn(3, 4, seed=8)), DELTAS_THETAS),
    "HuberL2.entropy": Case(lambda loc, raw, de, th: _huber_l2(loc, raw, de, th).entropy(), _distribution_tensors,
                            DELTAS_THETAS),
    "HuberL2.rsample": Case(_rsample, _distribution_tensors, unsupported={
        "vmap": "random draws under vmap (torch.vmap randomness='error')",
        "func": "jacrev / jacfwd vmap over basis vectors: random draws under vmap (torch.func.grad works)",
        "hessian": "torch.func.hessian vmaps: random draws under vmap",
        "compile_static": "rejection sampling of the radius is data-dependent (a graph break)",
        "compile_dynamic": "rejection sampling of the radius is data-dependent (a graph break)"}),
    "HuberL2.from_prediction": Case(lambda p, y: probreg.HuberL2.from_prediction(p, "mu", "diagonal", delta=0.6).log_prob(y),
                                    lambda: (_randn(3, 4, seed=9), _randn(3, 2, seed=10))),
    "HuberL2.expand": Case(lambda loc, raw: _huber_l2(loc, raw).expand((2, 3)).mean, _distribution_tensors),
    **{f"HuberL2.{name}": Case(_member(name), _distribution_tensors)
       for name in ("precision_sqrt", "raw", "precision_sqrt_inverse", "loc", "mean", "mode", "covariance_matrix", "variance")},
    **{name: Case(None, lambda: (), not_applicable={m: "a submodule of plain-PyTorch functions (its own tests)" for m in MODES})
       for name in ("reference", "wiberg", "ebm", "gum")},
    # probability regions: functions of Python numbers, and the members of HuberL2
    "huber_region_radius": Case(lambda de: torch.tensor(probreg.huber_region_radius(2, de, 0.9)), lambda: (),
                                ((0.5,), (0.8,)), not_applicable={m: NO_TENSORS for m in MODES[:6]}),
    "huber_radius_cdf": Case(lambda de: torch.tensor(probreg.huber_radius_cdf(3, de, 1.3)), lambda: (),
                             ((0.5,), (0.8,)), not_applicable={m: NO_TENSORS for m in MODES[:6]}),
    "HuberL2.region_radius": Case(lambda loc, raw, p: _huber_l2(loc, raw).region_radius(p), _distribution_tensors,
                                  ((0.5,), (0.9,)), not_applicable={m: REGION_CONSTANT for m in MODES[:6]}),
    "HuberL2.radius": Case(lambda loc, raw, y: _huber_l2(loc, raw).radius(y),
                           lambda: (*_distribution_tensors(), _randn(3, 2, seed=8))),
    # probreg.nn: the prediction head (random weights: at its zero initialisation the
    # derivatives w.r.t. the features vanish) and the outlier-mixture loss
    "nn": Case(None, lambda: (), not_applicable={m: "a submodule: its callables have rows of their own" for m in MODES}),
    "PredictionHead": Case(lambda f, loc: _HEAD_FULL_V(f, loc), lambda: (_randn(3, 4, seed=20), _randn(3, 2, 2, seed=21))),
    "PredictionHead[d=3, diagonal, mu]": Case(lambda f: _HEAD_DIAGONAL_MU(f), lambda: (_randn(3, 4, seed=22),)),
    "nn.OutlierMixtureNLLLoss": Case(lambda p, t: _OUTLIER_MIXTURE(p, t),
                                     lambda: (_randn(3, 5, seed=3), _randn(3, 2, seed=4))),
    "nn.raw_for_precision": Case(lambda a: torch.tensor(probreg.nn.raw_for_precision(a, 0.5)), lambda: (), ((0.3,), (2.0,)),
                                 not_applicable={m: NO_TENSORS for m in MODES[:6]}),
}
HUBER_L2_ATTRIBUTES = {"arg_constraints", "support", "has_rsample"}  # class attributes, not callables
# Compiling is the slow part (seconds per graph): the members that are plain torch on top of
# spd_from_raw / huber_nll (compiled in the fast subset) run in the slow set only.
for _name in ("HuberNLLLoss", "HuberL2.from_prediction", "HuberL2.expand", "HuberL2.precision_sqrt", "HuberL2.raw",
              "HuberL2.precision_sqrt_inverse", "HuberL2.loc", "HuberL2.mean", "HuberL2.mode",
              "HuberL2.covariance_matrix", "HuberL2.variance"):
    PUBLIC[_name].slow = ("compile_static", "compile_dynamic")

# ------------------------------------------------------------------ operators
def _op_case(name, tensors, scalars=(), output=None, **kwargs):
    """An operator called as op(*tensors, *scalars) (every probreg operator takes its
    tensors first); `output` selects one output for the derivative checks."""
    op = getattr(ops, name).default

    def fn(*t):
        out = op(*t, *scalars)
        return out if output is None else out[output]

    return Case(fn, tensors, op_args=lambda: (*tensors(), *scalars), **kwargs)


_NLL = (0.6, 0.5, 0, 2, False)  # delta, theta, huber, full covariance, v parameterisation
_NLL_MU = (0.6, 0.5, 3, 1, True)  # charbonnier, diagonal covariance, mu
_FUSE = (None, 1.0, 200, 1e-14, 0.0)  # init, delta, max_iter, tol, damping


def _nll_tensors(d=2, width=5, n=3):
    return (_randn(n, width, seed=11), _randn(n, d, seed=12))


def _fuse_state(d, op, damping=0.0):
    v, A, w = _fuse_inputs(d, batch=1 if d > 3 else 2, seed=13)
    y = op(v, A, w, None, 1.0, 200, 1e-14, damping)[0]
    return _randn(*y.shape, seed=14), y, v, A, w


def _symeig_state(d, op):
    l, V = op(_sym(2, d, seed=15))
    return _randn(*l.shape, seed=16), _randn(*V.shape, seed=17), l, V


OPS = {
    "symeig": _op_case("symeig", lambda: (_sym(3, 2),)),
    "_symeig_fallback": _op_case("_symeig_fallback", lambda: (_sym(2, 4),)),
    "_symeig_backward": _op_case("_symeig_backward", lambda: _symeig_state(2, ops.symeig)),
    "_symeig_fallback_backward": _op_case("_symeig_fallback_backward", lambda: _symeig_state(4, ops._symeig_fallback)),
    "spd_remap": _op_case("spd_remap", lambda: (_sym(3, 2),), (0.5,)),
    "_spd_remap_fallback": _op_case("_spd_remap_fallback", lambda: (_sym(2, 4),), (0.5,)),
    "spd_from_raw": _op_case("spd_from_raw", lambda: (_randn(3, 6),), (0.5,)),
    "huber_nll": _op_case("huber_nll", _nll_tensors, _NLL),
    "_huber_nll_fallback": _op_case("_huber_nll_fallback", lambda: _nll_tensors(4, 8, 2), _NLL_MU),
    "huber_fuse": _op_case("huber_fuse", lambda: _fuse_inputs(2), _FUSE, output=0),
    "_huber_fuse_fallback": _op_case("_huber_fuse_fallback", lambda: _fuse_inputs(4, batch=1), _FUSE, output=0),
    # backward operators: their derivatives are the second-order rules (differentiating
    # those again is third order)
    "_spd_remap_backward": _op_case("_spd_remap_backward", lambda: (_randn(3, 2, 2), _sym(3, 2, 1)), (0.5,)),
    "_spd_remap_fallback_backward": _op_case("_spd_remap_fallback_backward", lambda: (_randn(2, 4, 4), _sym(2, 4, 1)), (0.5,)),
    "_spd_from_raw_backward": _op_case("_spd_from_raw_backward", lambda: (_randn(3, 2, 2), _randn(3, 3, seed=1)), (0.5,)),
    "_huber_nll_backward": _op_case("_huber_nll_backward", lambda: (_randn(3, seed=2).abs(), *_nll_tensors()), (*_NLL, True)),
    "_huber_nll_fallback_backward": _op_case("_huber_nll_fallback_backward",
                                             lambda: (_randn(2, seed=2).abs(), *_nll_tensors(4, 8, 2)), (*_NLL_MU, True)),
    "_huber_fuse_backward": _op_case("_huber_fuse_backward", lambda: _fuse_state(2, ops.huber_fuse, 0.3), (1.0, 0.3)),
    "_huber_fuse_fallback_backward": _op_case("_huber_fuse_fallback_backward", lambda: _fuse_state(4, ops._huber_fuse_fallback),
                                              (1.0, 0.0)),
    # second-order rules
    "_spd_remap_second": _op_case("_spd_remap_second", lambda: (_sym(3, 2), _randn(3, 2, 2), _randn(3, 2, 2, seed=1)), (0.5,)),
    "_huber_nll_hvp": _op_case("_huber_nll_hvp", lambda: (_randn(3, seed=2).abs(), *_nll_tensors(), _randn(3, 5, seed=3),
                                                          _randn(3, 2, seed=4)), (*_NLL, True)),
    # huber_nll's one-pass forward for a first-order backward (loss and gradients)
    "_huber_nll_and_grad": _op_case("_huber_nll_and_grad", _nll_tensors, (*_NLL, True)),
    "_log_normalizer": _op_case("_log_normalizer", lambda: (), (3, "huber", 0.6),
                                not_applicable={m: "no tensor inputs (float arguments only)" for m in MODES}),
}
# (symeig's and huber_fuse's backward operators are differentiable again: closed forms / a
# torch composite, exact away from ties and from residuals exactly at delta)
for _name in ("_spd_remap_backward", "_spd_remap_fallback_backward", "_spd_from_raw_backward", "_huber_nll_backward",
              "_huber_nll_fallback_backward"):
    OPS[_name].unsupported.update({"double_backward": THIRD_ORDER, "hessian": THIRD_ORDER})
for _name in ("_spd_remap_second", "_huber_nll_hvp"):
    OPS[_name].unsupported.update({m: THIRD_ORDER for m in ("backward", "double_backward", "jvp", "func", "hessian")})
OPS["_huber_nll_and_grad"].unsupported.update({m: AND_GRAD for m in ("backward", "double_backward", "jvp", "func", "hessian")})
for _case in OPS.values():  # operators compile through the public functions and opcheck's AOT test
    _case.not_applicable.update({m: "operators: opcheck (test_aot_dispatch_dynamic) and the public functions"
                                 for m in ("compile_static", "compile_dynamic")})


# ------------------------------------------------------------------ checks
def _fresh(case):
    return tuple(t.detach().clone().requires_grad_(True) for t in case.tensors())


def _call(case, tensors, params=None):
    params = case.params[0] if params is None else params
    return case.fn(*tensors, *params)


def _outputs(out):
    return [o for o in (out if isinstance(out, tuple) else (out,)) if o.is_floating_point() and o.numel()]


def _scalar(case):
    """A scalar function of the inputs with nonzero second derivatives."""

    def f(*tensors):
        total = 0.0
        for k, o in enumerate(_outputs(_call(case, tensors))):
            weights = torch.linspace(0.5, 1.5, o.numel(), dtype=o.dtype).reshape(o.shape)
            total = total + (weights * o).sum() + 0.1 * (k + 1) * (o * o).sum()
        return total

    return f


def check_backward(case):
    assert gradcheck(lambda *t: _call(case, t), _fresh(case), fast_mode=True)


def check_double_backward(case):
    fn = lambda *t: _call(case, t)  # noqa: E731
    assert gradgradcheck(fn, _fresh(case), fast_mode=True)
    assert gradgradcheck(fn, _fresh(case), fast_mode=True, check_fwd_over_rev=True, check_rev_over_rev=False,
                         check_undefined_grad=False)


def check_jvp(case):
    tensors = _fresh(case)
    assert gradcheck(lambda *t: _call(case, t), tensors, fast_mode=True, check_forward_ad=True, check_backward_ad=False,
                     check_undefined_grad=False, check_batched_grad=False)
    primals = tuple(t.detach() for t in tensors)
    tangents = tuple(torch.randn_like(t) for t in primals)
    _, jvp_out = torch.func.jvp(lambda *t: _call(case, t), primals, tangents)
    for out in _outputs(jvp_out):
        assert torch.isfinite(out).all()


def check_func(case):
    """torch.func.grad, jacrev and jacfwd against autograd."""
    f = _scalar(case)
    tensors = _fresh(case)
    grads = torch.autograd.grad(f(*tensors), tensors, allow_unused=True, materialize_grads=True)
    argnums = tuple(range(len(tensors)))
    primals = tuple(t.detach() for t in tensors)
    for got in (torch.func.grad(f, argnums=argnums)(*primals), torch.func.jacrev(f, argnums=argnums)(*primals),
                torch.func.jacfwd(f, argnums=argnums)(*primals)):
        for a, b in zip(got, grads):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def check_hessian(case):
    f = _scalar(case)
    primals = tuple(t.detach() for t in case.tensors())
    argnums = tuple(range(len(primals)))
    H = torch.func.hessian(f, argnums=argnums)(*primals)
    H_ref = torch.autograd.functional.hessian(f, primals)
    for i in argnums:
        for j in argnums:
            scale = max(1.0, H_ref[i][j].abs().max().item()) if H_ref[i][j].numel() else 1.0
            torch.testing.assert_close(H[i][j], H_ref[i][j], rtol=0, atol=1e-10 * scale)


def check_vmap(case):
    """torch.vmap of the callable and (where differentiable) vmap(grad) over two perturbed
    copies of the inputs, against one call each; torch's slow per-sample fallback is an
    error."""
    primals = tuple(t.detach() for t in case.tensors())
    stacked = tuple(torch.stack([p, 1.01 * p]) for p in primals)
    argnums = tuple(range(len(primals)))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*(fall ?back|atching rule).*")
        batched = torch.vmap(lambda *t: _call(case, t))(*stacked)
        batched_grad = None if "backward" in case.unsupported else torch.vmap(
            torch.func.grad(_scalar(case), argnums=argnums))(*stacked)
    for k in range(2):
        single = _call(case, tuple(s[k] for s in stacked))
        for a, b in zip(_outputs(batched), _outputs(single)):
            torch.testing.assert_close(a[k], b, rtol=1e-12, atol=1e-12)
        if batched_grad is not None:
            single_grad = torch.func.grad(_scalar(case), argnums=argnums)(*(s[k] for s in stacked))
            for a, b in zip(batched_grad, single_grad):
                torch.testing.assert_close(a[k], b, rtol=1e-9, atol=1e-11)


def _check_compile(case, dynamic):
    fn = case.compile_fn or case.fn
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic)
    for params in case.params:
        eager_in, compiled_in = _fresh(case), _fresh(case)
        eager, got = fn(*eager_in, *params), compiled(*compiled_in, *params)
        eager_out = eager if isinstance(eager, tuple) else (eager,)
        got_out = got if isinstance(got, tuple) else (got,)
        for a, b in zip(eager_out, got_out):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12, equal_nan=True)
        differentiable = [o for o in eager_out if o.requires_grad]
        if differentiable and eager_in:
            loss_e = sum((o * o).sum() for o in differentiable)
            loss_c = sum((o * o).sum() for o in got_out if o.requires_grad)
            grads = [torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)
                     for loss, inputs in ((loss_e, eager_in), (loss_c, compiled_in))]
            for a, b in zip(*grads):
                torch.testing.assert_close(b, a, rtol=1e-11, atol=1e-12)


CHECKS = {
    "backward": check_backward,
    "double_backward": check_double_backward,
    "jvp": check_jvp,
    "func": check_func,
    "hessian": check_hessian,
    "vmap": check_vmap,
    "compile_static": lambda case: _check_compile(case, False),
    "compile_dynamic": lambda case: _check_compile(case, True),
}


def _cells(table, modes=MODES):
    return [pytest.param(name, mode, id=f"{name}-{mode}", marks=[pytest.mark.slow] if mode in case.slow else [])
            for name, case in table.items() for mode in modes if mode not in case.not_applicable]


def _run(case, mode):
    if mode in case.unsupported:
        with pytest.raises(Exception):
            CHECKS[mode](case)
    else:
        CHECKS[mode](case)


@pytest.mark.parametrize("name,mode", _cells(PUBLIC))
def test_public_callable(name, mode):
    _run(PUBLIC[name], mode)


@pytest.mark.parametrize("name,mode", _cells(OPS))
def test_operator(name, mode):
    _run(OPS[name], mode)


@pytest.mark.parametrize("name", [n for n in OPS])
def test_opcheck(name):
    """torch.library.opcheck (schema, autograd registration, fake tensor, AOT dispatch) on
    every operator, the backward and second-order operators included; inputs require grad
    where the operator is differentiable."""
    case = OPS[name]
    differentiable = "backward" not in case.unsupported
    args = tuple(a.clone().requires_grad_(differentiable and a.is_floating_point()) if isinstance(a, torch.Tensor) else a
                 for a in case.op_args())
    torch.library.opcheck(getattr(ops, name).default, args)


# ------------------------------------------------------------------ completeness
def test_tables_cover_every_public_callable():
    members = {f"HuberL2.{k}" for k in vars(probreg.HuberL2) if not k.startswith("_")} - {
        f"HuberL2.{k}" for k in HUBER_L2_ATTRIBUTES}
    submodule = {f"nn.{k}" for k in probreg.nn.__all__} - {"nn.PredictionHead"}  # exported at the top level
    names = {n.split("[")[0] for n in PUBLIC}
    assert set(probreg.__all__) | members | submodule == names, (set(probreg.__all__) | members | submodule) ^ names


def test_tables_cover_every_operator():
    registered = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("probreg::")}
    assert registered == set(OPS), registered ^ set(OPS)


# ------------------------------------------------------------------ README
COLUMNS = (("backward", ("backward",)), ("double backward", ("double_backward",)), ("jvp", ("jvp",)),
           ("vmap", ("vmap",)), ("func.grad / hessian", ("func", "hessian")),
           ("compile static / dynamic", ("compile_static", "compile_dynamic")))


def render_support_table() -> str:
    """README.md's support table, rendered from PUBLIC and OPS: `yes` (tested to pass),
    `raises [n]` (tested to raise, reason n below the table), `n/a` (no tensor input, or
    covered elsewhere: reason given). Rows with no tensor input at all are listed below."""
    reasons = []

    def note(reason):
        if reason not in reasons:
            reasons.append(reason)
        return reasons.index(reason) + 1

    def cell(case, modes):
        marks = []
        for m in modes:
            if m in case.unsupported:
                marks.append(f"raises [{note(case.unsupported[m])}]")
            elif m in case.not_applicable:
                marks.append(f"n/a [{note(case.not_applicable[m])}]")
            else:
                marks.append("yes")
        return marks[0] if len(set(marks)) == 1 else " / ".join(marks)

    lines = ["| callable | " + " | ".join(c for c, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    others = []
    for prefix, table in (("probreg.", PUBLIC), ("torch.ops.probreg.", OPS)):
        for name, case in table.items():
            if all(m in case.not_applicable for m in MODES[:6]):
                compiled = "" if "compile_static" in case.not_applicable else " (compile static / dynamic: yes)"
                others.append(f"`{prefix}{name}`: {case.not_applicable[MODES[0]]}{compiled}")
                continue
            lines.append(f"| `{prefix}{name}` | " + " | ".join(cell(case, modes) for _, modes in COLUMNS) + " |")
    lines.append("")
    lines += [f"[{k}] {reason}" for k, reason in enumerate(reasons, 1)]
    lines.append("")
    lines += ["Not in the table (no tensor input, or not a function):", ""] + [f"- {o}" for o in others]
    return "\n".join(lines)


def test_readme_support_table_is_the_tested_matrix():
    readme = open(os.path.join(ROOT, "README.md")).read()
    match = re.search(r"<!-- support-table:begin -->\n(.*?)\n<!-- support-table:end -->", readme, re.S)
    assert match, "README.md has no support table between <!-- support-table:begin/end --> markers"
    assert match.group(1).strip() == render_support_table().strip(), (
        "README's support table differs from the tested matrix; paste the output of "
        "`python -c \"import sys; sys.path.insert(0, 'tests'); import test_autograd_matrix as m; "
        "print(m.render_support_table())\"`")
