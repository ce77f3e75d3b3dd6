"""Property-based hostile-input sweep (issue 15) over every public function: probreg.__all__,
the public functions of probreg.wiberg / ebm / gum / nn, and every torch.ops.probreg operator
(backward operators included).

Each example draws one function's arguments: each tensor argument in a dtype (float64,
float32, float16, bfloat16) and a layout (contiguous, transposed strides, stride-0
expanded, overlapping as_strided windows, flipped), each scalar as a Python or numpy
number, and batch sizes including 0. At most one argument is then made bad: an integer,
bool or complex tensor, a list, a batch or dimension that does not match the others, or a
scalar that is 0, negative, NaN, inf, huge, a bool, a string or None where the function
does not accept it. The call must then end in one of two ways:
  - an exception (ValueError, TypeError or RuntimeError only) whose message names the
    offending argument (as a word), when an argument was made bad;
  - a result equal to the reference: the float64 reference of probreg.reference (or an
    independent float64 formula written here) evaluated on the very values passed (half
    inputs as rounded), within the tolerance of the computation's precision, when none was.
Hypothesis runs derandomized (the same examples on every run, no example database), so
CI is reproducible; the whole module runs in about a minute on 2 cores.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import probreg
from probreg import ebm, gum, reference, wiberg
from probreg.nll import pred_width

ops = torch.ops.probreg
F64 = torch.float64
FLOATS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
FULL_PRECISION = (torch.float64, torch.float32)
LAYOUTS = ("contiguous", "transposed", "expanded", "overlapping", "flipped")
ALLOWED_ERRORS = (ValueError, TypeError, RuntimeError)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- one example
@dataclass
class Case:
    """A drawn call: fn(*args, **kwargs); `bad` names the argument made bad (None: all
    valid); reference() -> the expected result on the same values; compare(out, ref)."""

    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    bad: Optional[str] = None
    reference: Optional[Callable[[], Any]] = None
    compare: Optional[Callable[[Any, Any], None]] = None
    label: str = ""


def run_case(case: Case) -> None:
    try:
        out = case.fn(*case.args, **case.kwargs)
    except ALLOWED_ERRORS as exc:
        message = str(exc)
        assert case.bad is not None, f"{case.label}: valid input raised {type(exc).__name__}: {message}"
        assert re.search(rf"(?<![A-Za-z0-9_]){re.escape(case.bad)}(?![A-Za-z0-9_])", message), (
            f"{case.label}: the error does not name {case.bad!r}: {type(exc).__name__}: {message}")
        return
    assert case.bad is None, f"{case.label}: bad {case.bad!r} accepted, returned {_short(out)}"
    if case.reference is not None:
        case.compare(out, case.reference())


def _short(x) -> str:
    return repr(x)[:200]


def close(out, ref, dtype, what="", scale=None, rtol=None):
    """out (any dtype) equals ref (float64) within the precision `dtype` computes in:
    |out - ref| <= tol * (1 + max|finite ref|), NaN where ref is NaN, +-inf where ref is
    beyond out's dtype."""
    out = torch.as_tensor(out).detach()
    ref = torch.as_tensor(ref).detach().to(F64)
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    if rtol is None:
        rtol = {torch.float64: 1e-8, torch.float32: 2e-5}.get(dtype, 2e-2)
    finite = torch.isfinite(ref)
    if scale is None:
        scale = 1.0 + (ref[finite].abs().max().item() if finite.any() else 0.0)
    if out.is_floating_point():  # values beyond the output dtype's range are +-inf there
        big = torch.finfo(out.dtype).max
        ref = torch.where(ref.abs() > big, ref * math.inf, ref)
        finite = torch.isfinite(ref)
    out = out.to(F64)
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), f"{what}: NaN pattern differs"
    infinite = torch.isinf(ref)
    assert torch.equal(out[infinite], ref[infinite]), f"{what}: overflow pattern differs"
    err = (out[finite] - ref[finite]).abs().max().item() if finite.any() else 0.0
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol:g} * {scale:.3g} ({dtype})"


def canon(t: torch.Tensor) -> torch.Tensor:
    """The values a call saw, as a contiguous float64 tensor."""
    return t.detach().to(F64).contiguous()


# ---------------------------------------------------------------- tensor and scalar variants
def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """t in another memory layout; 'expanded' and 'overlapping' change the values (the
    reference always uses the values actually passed)."""
    if kind == "contiguous" or t.numel() == 0 or t.dim() == 0:
        return t.contiguous()
    if kind == "transposed":  # reversed (Fortran) strides
        return torch.empty(t.shape[::-1], dtype=t.dtype).permute(*reversed(range(t.dim()))).copy_(t)
    if kind == "expanded":  # stride 0 along the first dim
        return t[:1].expand_as(t)
    if kind == "overlapping":  # consecutive items share memory (stride 1 along the first dim)
        item = t[0].numel()
        flat = t.flatten()
        storage = flat.repeat((t.shape[0] + item) // max(flat.numel(), 1) + 1)[: t.shape[0] - 1 + item].clone()
        item_strides = torch.empty(t.shape[1:]).stride()
        return storage.as_strided(t.shape, (1, *item_strides))
    if kind == "flipped":
        return t.flip(0)
    raise AssertionError(kind)


@st.composite
def tensor_variant(draw, base: torch.Tensor, dtypes=FLOATS, layouts=LAYOUTS):
    """base (float64) in a drawn dtype and layout."""
    dtype = draw(st.sampled_from(dtypes))
    return layout(base.to(dtype), draw(st.sampled_from(layouts)))


def bad_tensors(base: torch.Tensor, extra=()):
    """Invalid replacements of a floating tensor argument: integer, bool, complex, a list."""
    return [("int64", base.to(torch.int64)), ("bool", base > 0), ("complex", base.to(torch.complex64)),
            ("list", base.tolist()), *extra]


def number_variants(value):
    """The same number as Python and numpy scalars."""
    if isinstance(value, int):
        return [value, np.int64(value), np.int32(value)]
    return [value, np.float64(value), np.float32(value) if abs(value) < 1e30 else value]


BAD_NUMBERS = {
    "positive_finite": [0.0, -1.0, math.nan, math.inf, -math.inf, True, "1", None, 1 + 0j],
    "nonnegative_finite": [-1.0, math.nan, math.inf, True, "0.1", None],
    "positive": [0.0, -1.0, math.nan, True, "1", None],
    "int>=0": [-1, 1.5, True, "3", None, math.nan],
    "int>=1": [0, -2, 2.0, False, "3", None],
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@st.composite
def choose_bad(draw, names):
    """None (every argument valid) about half the time, else one argument name."""
    if draw(st.booleans()):
        return None
    return draw(st.sampled_from(names))


def compute_dtype(*tensors) -> torch.dtype:
    """The precision a call computes in for the given inputs (tolerance class)."""
    dtype = F64
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            dtype = t.dtype if FLOATS.index(t.dtype) > FLOATS.index(dtype) else dtype
    return dtype


# ---------------------------------------------------------------- the spd functions
def _spd_batch(draw, seed):
    n = draw(st.sampled_from([0, 1, 5, 9]))
    d = draw(st.sampled_from([1, 2, 3, 4]))
    B = torch.randn(n, d, d, generator=gen(seed), dtype=F64)
    return n, d, B


def _spectral_check(L, V, B64, dtype):
    """eigenvalues ascending and V diag(L) V^T == sym(B): the decomposition, not V's gauge."""
    ref_L = torch.linalg.eigvalsh(0.5 * (B64 + B64.mT))
    close(L, ref_L, dtype, "eigenvalues")
    V64 = V.detach().to(F64)
    close((V64 * L.to(F64).unsqueeze(-2)) @ V64.mT, 0.5 * (B64 + B64.mT), dtype, "V diag(L) V^T")


@st.composite
def symeig_case(draw):
    n, d, B = _spd_batch(draw, draw(st.integers(0, 99)))
    bad = draw(choose_bad(["B"]))
    if bad:
        B_arg = draw(st.sampled_from([t for _, t in bad_tensors(B, [("not square", torch.cat([B, B[..., :1]], -1)), ("0-d", B.sum())])]))
        return Case(probreg.symeig, (B_arg,), bad="B", label="symeig")
    B_arg = draw(tensor_variant(B))
    return Case(probreg.symeig, (B_arg,), reference=lambda: canon(B_arg),
                compare=lambda out, B64: _spectral_check(out[0], out[1], B64, B_arg.dtype), label="symeig")


@st.composite
def spd_case(draw, packed: bool):
    n, d, B = _spd_batch(draw, draw(st.integers(0, 99)))
    raw = probreg.pack_sym(B)
    fn, name = (probreg.spd_from_raw, "raw") if packed else (probreg.spd_remap, "B")
    x = raw if packed else B
    theta = draw(st.sampled_from([0.1, 1.0, 3.0, 1e6]))
    bad = draw(choose_bad([name, "theta"]))
    if bad == name:
        wrong = (("P = 4", raw[..., :1].expand(n, 4)),) if packed else (("not square", torch.cat([B, B[..., :1]], -1)),)
        x_arg = draw(st.sampled_from([t for _, t in bad_tensors(x, wrong)]))
        return Case(fn, (x_arg, theta), bad=name, label=fn.__name__)
    if bad == "theta":
        return Case(fn, (x, draw(st.sampled_from(BAD_NUMBERS["positive_finite"]))), bad="theta", label=fn.__name__)
    x_arg = draw(tensor_variant(x))
    theta_arg = draw(st.sampled_from(number_variants(theta)))
    ref = reference.spd_from_raw if packed else reference.spd_remap
    return Case(fn, (x_arg, theta_arg), reference=lambda: ref(canon(x_arg), float(theta_arg)),
                compare=lambda out, r: close(out, r, x_arg.dtype, fn.__name__), label=fn.__name__)


def _unpack_formula(raw64: torch.Tensor, d: int) -> torch.Tensor:
    """Independent unpacking: row-major upper triangle, off-diagonals / sqrt(2)."""
    B = torch.zeros(*raw64.shape[:-1], d, d, dtype=F64)
    k = 0
    for i in range(d):
        for j in range(i, d):
            value = raw64[..., k] if i == j else raw64[..., k] / math.sqrt(2.0)
            B[..., i, j] = value
            B[..., j, i] = value
            k += 1
    return B


@st.composite
def packing_case(draw, unpack: bool):
    n, d, B = _spd_batch(draw, draw(st.integers(0, 99)))
    B = 0.5 * (B + B.mT)
    raw = probreg.pack_sym(B)
    fn, name, x = (probreg.unpack_sym, "raw", raw) if unpack else (probreg.pack_sym, "B", B)
    bad = draw(choose_bad([name]))
    if bad:
        wrong = (("P = 4", torch.zeros(n, 4, dtype=F64)),) if unpack else (("not square", torch.cat([B, B[..., :1]], -1)),)
        return Case(fn, (draw(st.sampled_from([t for _, t in bad_tensors(x, wrong)])),), bad=name, label=fn.__name__)
    x_arg = draw(tensor_variant(x))
    if unpack:
        return Case(fn, (x_arg,), reference=lambda: _unpack_formula(canon(x_arg), d),
                    compare=lambda out, r: close(out, r, x_arg.dtype, "unpack_sym"), label="unpack_sym")
    # pack_sym(B) is the inverse of the formula on sym(B)
    return Case(fn, (x_arg,), reference=lambda: 0.5 * (canon(x_arg) + canon(x_arg).mT),
                compare=lambda out, r: close(_unpack_formula(out.to(F64), d), r, x_arg.dtype, "pack_sym"),
                label="pack_sym")


# ---------------------------------------------------------------- huber_nll and HuberNLLLoss
COVARIANCES = ("full", "diagonal", "identity")


@st.composite
def nll_case(draw, module: bool):
    seed = draw(st.integers(0, 99))
    n = draw(st.sampled_from([0, 1, 6, 9]))
    d = draw(st.sampled_from([1, 2, 3, 4]))
    covariance = draw(st.sampled_from(COVARIANCES))
    family = draw(st.sampled_from(("huber", "gauss", "laplace", "charbonnier")))
    parameterization = draw(st.sampled_from(("v", "mu")))
    reduction = draw(st.sampled_from(("none", "sum", "mean")))
    normalized = draw(st.booleans())
    delta, theta = draw(st.sampled_from([0.5, 1.0, 3.0])), draw(st.sampled_from([0.2, 1.0]))
    pred = torch.randn(n, probreg.nll.pred_width(d, covariance), generator=gen(seed), dtype=F64)
    target = torch.randn(n, d, generator=gen(seed + 1), dtype=F64)
    weight = torch.rand(n, generator=gen(seed + 2), dtype=F64) if draw(st.booleans()) else None
    options = dict(parameterization=parameterization, family=family, covariance=covariance, reduction=reduction,
                   normalized=normalized)
    names = ["pred", "target", "delta", "theta", "family", "covariance", "reduction", "weight"]
    bad = draw(choose_bad(names if not module else names[:2] + ["family", "weight"]))
    args = dict(pred=pred, target=target, delta=delta, theta=theta, weight=weight)
    if bad in ("pred", "target"):
        x = args[bad]
        wrong = [("batch + 1", torch.zeros(x.shape[0] + 1, x.shape[1], dtype=F64)),
                 ("last dim + 1", torch.zeros(x.shape[0], x.shape[1] + 1, dtype=F64)),
                 ("0-d", torch.tensor(1.0, dtype=F64))]
        args[bad] = draw(st.sampled_from([t for _, t in bad_tensors(args[bad], wrong)]))
    elif bad == "delta":
        args["delta"] = draw(st.sampled_from(BAD_NUMBERS["nonnegative_finite"]))
    elif bad == "theta":
        args["theta"] = draw(st.sampled_from(BAD_NUMBERS["positive_finite"]))
    elif bad in ("family", "covariance", "reduction"):
        options[bad] = draw(st.sampled_from(["cauchy", ["huber"], None, 3]))
    elif bad == "weight":
        base = torch.rand(n, dtype=F64)
        args["weight"] = draw(st.sampled_from([
            torch.ones(n, 1, dtype=F64), torch.ones(n + 2, dtype=F64), base.to(torch.complex64), base.tolist() + [1.0, 1.0],
            -torch.ones(n, dtype=F64) if n else torch.ones(2, dtype=F64), "1", -1.0]))
    else:
        dtypes = draw(st.sampled_from([(t,) for t in FLOATS] + [(F64, torch.float32), (torch.float32, torch.float16)]))
        args["pred"] = draw(tensor_variant(pred, dtypes=(dtypes[0],)))
        args["target"] = draw(tensor_variant(target, dtypes=(dtypes[-1],)))
        args["delta"] = draw(st.sampled_from(number_variants(delta)))
        args["theta"] = draw(st.sampled_from(number_variants(theta)))
        if weight is not None:
            args["weight"] = draw(st.sampled_from([draw(tensor_variant(weight)), weight > 0.5]))

    if module:
        def call(pred, target, delta, theta, weight):
            return probreg.HuberNLLLoss(delta, theta, **options)(pred, target, weight)
    else:
        def call(pred, target, delta, theta, weight):
            return probreg.huber_nll(pred, target, delta, theta, weight=weight, **options)

    def ref():
        w = args["weight"]
        w = None if w is None else canon(w)
        return reference.huber_nll_reference(canon(args["pred"]), canon(args["target"]), float(args["delta"]),
                                             float(args["theta"]), weight=w, **options)

    dtype = compute_dtype(args["pred"], args["target"])
    return Case(call, kwargs=args, bad=bad, reference=ref,
                compare=lambda out, r: close(out, r, dtype, "huber_nll"), label=f"huber_nll module={module}")


# ---------------------------------------------------------------- normalisers and HuberL2
def _quad_log_moment(n: int, delta: float) -> float:
    """log int_0^inf r^n exp(-h_delta(r)) dr by scipy quadrature, pieces at unit scale."""
    from scipy.integrate import quad

    if delta > 50:
        inside = math.log(quad(lambda r: r**n * math.exp(-r * r / 2), 0, math.inf)[0])
    else:
        inside = (n + 1) * math.log(delta) + math.log(quad(lambda s: s**n * math.exp(-delta * delta * s * s / 2), 0, 1)[0])
    if delta > 1e150:
        return inside
    outside = -delta * delta / 2 - (n + 1) * math.log(delta) + math.log(
        quad(lambda t: (delta * delta + t) ** n * math.exp(-t), 0, math.inf)[0])
    hi, lo = max(inside, outside), min(inside, outside)
    return hi + math.log1p(math.exp(lo - hi))


@st.composite
def normalizer_case(draw, variance: bool):
    fn = probreg.huber_variance_factor if variance else probreg.huber_log_normalizer
    d = draw(st.sampled_from([1, 2, 3, 6]))
    delta = draw(st.sampled_from([1e-200, 1e-20, 0.01, 0.5, 1.0, 4.0, 60.0, 1e10, 1e160, 1e300]))
    bad = draw(choose_bad(["d", "delta"]))
    if bad == "d":
        return Case(fn, (draw(st.sampled_from([0, -1, 1.5, True, "2", None])), delta), bad="d", label=fn.__name__)
    if bad == "delta":
        values = [-1.0, math.nan, True, "1", None, torch.ones(2), torch.tensor(1j)]
        return Case(fn, (d, draw(st.sampled_from(values))), bad="delta", label=fn.__name__)
    delta_arg = draw(st.sampled_from(number_variants(delta) + [torch.tensor(delta, dtype=F64)]))

    def ref():
        delta = float(delta_arg)  # the value passed (np.float32(1e-200) is 0.0)
        if delta == 0.0:
            return math.inf
        log_sphere = math.log(2.0) + 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d)
        if variance:
            log_kappa = _quad_log_moment(d + 1, delta) - _quad_log_moment(d - 1, delta) - math.log(d)
            return math.inf if log_kappa > 709.78 else math.exp(log_kappa)
        return log_sphere + _quad_log_moment(d - 1, delta)

    def compare(out, r):
        assert isinstance(out, float)
        assert out == r or math.isclose(out, r, rel_tol=1e-9, abs_tol=1e-9), (out, r)

    return Case(fn, (np.int64(d) if draw(st.booleans()) else d, delta_arg), reference=ref, compare=compare,
                label=fn.__name__)


@st.composite
def huber_l2_case(draw):
    seed = draw(st.integers(0, 99))
    n, d = draw(st.sampled_from([0, 1, 4])), draw(st.sampled_from([1, 2, 3]))
    loc = torch.randn(n, d, generator=gen(seed), dtype=F64)
    raw = torch.randn(n, d * (d + 1) // 2, generator=gen(seed + 1), dtype=F64)
    y = torch.randn(n, d, generator=gen(seed + 2), dtype=F64)
    delta, theta = draw(st.sampled_from([0.5, 1.0, 1e200])), draw(st.sampled_from([0.3, 1.0]))
    bad = draw(choose_bad(["loc", "raw", "delta", "theta"]))
    kw = dict(raw=raw, delta=delta, theta=theta)
    loc_arg = loc
    if bad == "loc":
        loc_arg = draw(st.sampled_from([t for _, t in bad_tensors(loc)]))
    elif bad == "raw":
        kw["raw"] = draw(st.sampled_from([t for _, t in bad_tensors(raw, [("P + 1", torch.cat([raw, raw[..., :1]], -1))])]))
    elif bad in ("delta", "theta"):
        kw[bad] = draw(st.sampled_from(BAD_NUMBERS["positive_finite"]))
    else:
        dtype = draw(st.sampled_from(FULL_PRECISION))
        loc_arg = draw(tensor_variant(loc, dtypes=(dtype,)))
        kw["raw"] = draw(tensor_variant(raw, dtypes=(dtype,)))
        kw["delta"] = draw(st.sampled_from(number_variants(delta)))

    def call(loc, **kw):
        dist = probreg.HuberL2(loc, **kw)
        return dist.log_prob(y.to(loc.dtype)), dist.entropy()

    def ref():
        pred = torch.cat([canon(loc_arg), canon(kw["raw"])], -1)
        log_prob = -reference.huber_nll_reference(pred, canon(y.to(loc_arg.dtype)), float(kw["delta"]), float(kw["theta"]),
                                                  parameterization="mu", reduction="none")
        A = reference.spd_from_raw(canon(kw["raw"]), float(kw["theta"]))
        d_ = loc_arg.shape[-1]
        # entropy of |A| / c exp(-h(||A (y - mu)||)): log c - log|A| + E[h]
        entropy = (probreg.normalizer.huber_log_normalizer(d_, float(kw["delta"]))
                   + probreg.normalizer.huber_expected_rho(d_, float(kw["delta"])) - torch.linalg.slogdet(A)[1])
        return log_prob, entropy

    def compare(out, r):
        close(out[0], r[0], loc_arg.dtype, "log_prob")
        close(out[1], r[1], loc_arg.dtype, "entropy")

    return Case(call, (loc_arg,), kw, bad=bad, reference=ref, compare=compare, label="HuberL2")


# ---------------------------------------------------------------- probability regions
def _quad_radial_masses(d: int, delta: float, s: float):
    """(P(R <= s), P(R > s)) of the radial density r^(d-1) exp(-h_delta(r)) / m by scipy
    quadrature, split at delta (where h changes form); each side integrated directly, so
    the smaller one keeps its relative accuracy."""
    from scipy.integrate import quad

    def density(r):
        return r ** (d - 1) * math.exp(-(0.5 * r * r if r <= delta else delta * (r - 0.5 * delta)))

    def integral(a, b):
        pieces = ((a, min(b, delta)), (max(a, delta), b))
        return sum(quad(density, lo, hi, epsabs=0, epsrel=1e-13, limit=200)[0] for lo, hi in pieces if hi > lo)

    s = max(s, 0.0)
    total = integral(0.0, math.inf)
    return integral(0.0, s) / total, integral(s, math.inf) / total


REGION_DELTAS = [0.3, 1.0, 4.0, math.inf]


def _region_args(draw, names):
    """(d, delta) drawn as Python or numpy numbers, or one of them made bad."""
    d = draw(st.sampled_from([1, 2, 3, 6]))
    delta = draw(st.sampled_from(REGION_DELTAS))
    bad = draw(choose_bad(names))
    d_arg = draw(st.sampled_from([0, -1, 1.5, True, "2", None])) if bad == "d" else draw(st.sampled_from(number_variants(d)))
    delta_arg = (draw(st.sampled_from([0.0, -1.0, math.nan, True, "1", None, torch.tensor(1.0)])) if bad == "delta"
                 else draw(st.sampled_from(number_variants(delta))))
    return d, d_arg, delta_arg, bad


RADII = [-1.0, 0.0, 0.3, 1.3, 3.0, 12.0, math.inf]
PROBABILITIES = [0.0, 1e-6, 0.1, 0.5, 0.9, 1 - 1e-6, 1.0]


def _region_case(draw, fn, name: str, values, bad_values, reference_of):
    """fn(d, delta, x): a valid example evaluates every x of `values` (each a Python or
    numpy number) for one drawn (d, delta); a bad one makes d, delta or x bad."""
    d, d_arg, delta_arg, bad = _region_args(draw, ["d", "delta", name])
    if bad is not None:
        x = draw(st.sampled_from(bad_values)) if bad == name else values[len(values) // 2]
        return Case(fn, (d_arg, delta_arg, x), bad=bad, label=fn.__name__)
    xs = [draw(st.sampled_from(number_variants(x))) for x in values]

    def compare(outs, refs):
        for x, out, r in zip(xs, outs, refs):
            assert isinstance(out, float)
            assert out == r or math.isclose(out, r, rel_tol=1e-8, abs_tol=1e-13), (d, delta_arg, x, out, r)

    return Case(lambda: [fn(d_arg, delta_arg, x) for x in xs],
                reference=lambda: [reference_of(d, float(delta_arg), float(x)) for x in xs], compare=compare,
                label=fn.__name__)


def _cdf_reference(d: int, delta: float, s: float) -> float:
    return 1.0 if s == math.inf else _quad_radial_masses(d, delta, s)[0]


def _radius_reference(d: int, delta: float, p: float) -> float:
    """The root of the quadrature CDF (of the tail for p > 1/2) by Brent's method."""
    from scipy.optimize import brentq

    if p in (0.0, 1.0):
        return 0.0 if p == 0.0 else math.inf
    side = 0 if p <= 0.5 else 1
    target = p if side == 0 else 1.0 - p

    def f(s):  # increasing in s
        return (_quad_radial_masses(d, delta, s)[side] - target) * (1 if side == 0 else -1)

    hi = 1.0
    while f(hi) < 0:
        hi *= 2
    return brentq(f, 0.0, hi, xtol=1e-300, rtol=1e-13)


@st.composite
def radius_cdf_case(draw):
    return _region_case(draw, probreg.huber_radius_cdf, "s", RADII,
                        [math.nan, True, "1", None, 1j, torch.tensor(1.0)], _cdf_reference)


@st.composite
def region_radius_case(draw):
    return _region_case(draw, probreg.huber_region_radius, "p", PROBABILITIES,
                        [-0.1, 1.1, math.nan, math.inf, True, "0.5", None, torch.tensor(0.5)], _radius_reference)


# ---------------------------------------------------------------- probreg.nn
def _g(raw: torch.Tensor, theta: float) -> torch.Tensor:
    """The eigenvalue remap g_theta (huber_nll's docstring), elementwise."""
    return torch.where(raw > theta, raw, theta * torch.exp(raw / theta - 1))


@st.composite
def prediction_head_case(draw):
    seed = draw(st.integers(0, 99))
    F_, K, d = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2, 3]))
    n = draw(st.sampled_from([0, 1, 5]))
    covariance = draw(st.sampled_from(COVARIANCES))
    parameterization = draw(st.sampled_from(("v", "mu")))
    init = dict(in_features=F_, num_targets=K, dim=d, covariance=covariance, parameterization=parameterization,
                init_precision=draw(st.sampled_from([0.5, 2.0])), theta=draw(st.sampled_from([None, 0.3])),
                delta=1.0, init_location=draw(st.sampled_from([0.0, 1.5, "tensor"])))
    if init["init_location"] == "tensor":
        init["init_location"] = torch.randn(K, d, generator=gen(seed + 3), dtype=F64)
    features = torch.randn(n, F_, generator=gen(seed), dtype=F64)
    location = torch.randn(n, K, d, generator=gen(seed + 1), dtype=F64) if draw(st.booleans()) else None
    names = ["in_features", "num_targets", "dim", "covariance", "parameterization", "init_precision", "theta",
             "delta", "init_location", "features", "location"]
    bad = draw(choose_bad(names))
    dtype = F64
    if bad in ("in_features", "num_targets"):
        init[bad] = draw(st.sampled_from(BAD_NUMBERS["int>=1"]))
    elif bad == "dim":
        init["dim"] = draw(st.sampled_from([0, 4, 2.0, True, "2", None]))
    elif bad in ("covariance", "parameterization"):
        init[bad] = draw(st.sampled_from(["cauchy", ["full"], None, 3]))
    elif bad in ("init_precision", "theta", "delta"):
        init[bad] = draw(st.sampled_from(BAD_NUMBERS["positive_finite"] + ([1e-320, 1e300] if bad == "init_precision" else [])))
    elif bad == "init_location":
        init["init_location"] = draw(st.sampled_from([math.nan, math.inf, "a", True, None, torch.zeros(K + 1, d + 1),
                                                      torch.zeros(K, d, dtype=torch.int64)]))
    elif bad == "features":
        features = draw(st.sampled_from([x for _, x in bad_tensors(features, [
            ("last dim + 1", torch.zeros(n, F_ + 1, dtype=F64)), ("0-d", torch.tensor(1.0, dtype=F64)),
            ("another float dtype", features.float())])]))
    elif bad == "location":
        base = torch.zeros(n, K, d, dtype=F64)
        location = draw(st.sampled_from([x for _, x in bad_tensors(base, [
            ("K + 1", torch.zeros(n, K + 1, d, dtype=F64)), ("d + 1", torch.zeros(n, K, d + 1, dtype=F64)),
            ("batch + 2", torch.zeros(n + 2, K, d, dtype=F64)), ("(K,)", torch.zeros(K, dtype=F64))])]))
    else:
        dtype = draw(st.sampled_from(FLOATS))
        features = draw(tensor_variant(features, dtypes=(dtype,)))
        if location is not None:
            location = draw(tensor_variant(location, dtypes=(draw(st.sampled_from([dtype, F64])),)))
        for k in ("in_features", "num_targets", "dim", "init_precision"):
            init[k] = draw(st.sampled_from(number_variants(init[k])))
    # a valid example checks every (covariance, parameterization) layout, a bad one the drawn one
    layouts = [(c, m) for c in COVARIANCES for m in ("v", "mu")] if bad is None else [(init["covariance"], init["parameterization"])]
    weights = {c: 0.5 * torch.randn(K * pred_width(d, c), F_, generator=gen(seed + 2), dtype=F64) for c in COVARIANCES}
    biases = {}

    def call(features, location):
        outs = []
        for c, m in layouts:
            head = probreg.PredictionHead(**{**init, "covariance": c, "parameterization": m}, dtype=dtype)
            with torch.no_grad():
                head.linear.weight.copy_(weights[c])  # random weights (zero at initialisation)
            biases[c] = head.linear.bias.detach().to(F64).clone()
            outs.append(head(features, location))
        return outs

    def ref():
        """The module docstring's map written out: z = W f + b, raw = p z_cov, mu = base +
        z_loc / p or v = A base + z_loc with A = g(raw) (full: reference.spd_from_raw)."""
        p = float(init["init_precision"])
        theta = p / 4 if init["theta"] is None else init["theta"]
        loc0 = torch.as_tensor(init["init_location"], dtype=F64).to(dtype).to(F64)  # the buffer's values
        base = torch.broadcast_to(loc0, (K, d)) if location is None else canon(location)
        refs = []
        for c, m in layouts:
            W = weights[c].to(dtype).to(F64)  # the weights as the head holds them
            z = (canon(features) @ W.mT + biases[c]).unflatten(-1, (K, -1))
            raw = p * z[..., d:]
            if m == "mu" or c == "identity":
                loc = base + z[..., :d] / p
            else:
                A = reference.spd_from_raw(raw, theta) if c == "full" else torch.diag_embed(_g(raw, theta))
                loc = (A @ base.unsqueeze(-1)).squeeze(-1) + z[..., :d]
            loc = torch.broadcast_to(loc, torch.broadcast_shapes(loc.shape, z.shape[:-1] + (d,)))
            refs.append(torch.cat([loc, raw.expand(loc.shape[:-1] + raw.shape[-1:])], -1))
        return refs

    def compare(outs, refs):
        for (c, m), out, r in zip(layouts, outs, refs):
            close(out, r, compute_dtype(features), f"PredictionHead({c}, {m})")

    return Case(call, (features, location), bad=bad, reference=ref, compare=compare, label="PredictionHead")


@st.composite
def outlier_mixture_case(draw):
    seed = draw(st.integers(0, 99))
    n, d = draw(st.sampled_from([0, 1, 6])), draw(st.sampled_from([1, 2, 3]))
    covariance = draw(st.sampled_from(COVARIANCES))
    options = dict(parameterization=draw(st.sampled_from(("v", "mu"))), family=draw(st.sampled_from(("huber", "gauss"))),
                   covariance=covariance, reduction=draw(st.sampled_from(("none", "sum", "mean"))))
    init = dict(outlier_fraction=draw(st.sampled_from([1e-6, 0.1, 0.9])),
                outlier_log_density=draw(st.sampled_from([-50.0, -1.4, 3.0])),
                delta=draw(st.sampled_from([0.5, 2.0])), theta=draw(st.sampled_from([0.2, 1.0])))
    args = dict(pred=torch.randn(n, pred_width(d, covariance), generator=gen(seed), dtype=F64),
                target=2 * torch.randn(n, d, generator=gen(seed + 1), dtype=F64),
                weight=torch.rand(n, generator=gen(seed + 2), dtype=F64) if draw(st.booleans()) else None)
    bad = draw(choose_bad(["outlier_fraction", "outlier_log_density", "delta", "reduction", "pred", "target", "weight"]))
    if bad == "outlier_fraction":
        init[bad] = draw(st.sampled_from([0.0, 1.0, -0.1, math.nan, True, "0.1", None]))
    elif bad == "outlier_log_density":
        init[bad] = draw(st.sampled_from([math.nan, math.inf, -math.inf, True, "1", None]))
    elif bad == "delta":
        init[bad] = draw(st.sampled_from(BAD_NUMBERS["nonnegative_finite"]))
    elif bad == "reduction":
        options["reduction"] = draw(st.sampled_from(["max", ["mean"], None]))
    elif bad in ("pred", "target"):
        x = args[bad]
        args[bad] = draw(st.sampled_from([t for _, t in bad_tensors(x, [
            ("batch + 1", torch.zeros(n + 1, x.shape[1], dtype=F64)), ("0-d", torch.tensor(1.0, dtype=F64))])]))
    elif bad == "weight":
        args["weight"] = draw(st.sampled_from([torch.ones(n, 1, dtype=F64), torch.ones(n + 2, dtype=F64),
                                               torch.ones(n, dtype=torch.complex64), [1.0] * (n + 2), "1", -1.0,
                                               -torch.ones(n, dtype=F64) if n else -torch.ones(1, dtype=F64)]))
    else:
        dtype = draw(st.sampled_from(FLOATS))
        args["pred"] = draw(tensor_variant(args["pred"], dtypes=(dtype,)))
        args["target"] = draw(tensor_variant(args["target"], dtypes=(dtype,)))
        if args["weight"] is not None:
            args["weight"] = draw(st.sampled_from([draw(tensor_variant(args["weight"])), args["weight"] > 0.5]))
        for k in ("outlier_fraction", "outlier_log_density", "delta"):
            init[k] = draw(st.sampled_from(number_variants(init[k])))

    def call(pred, target, weight):
        return probreg.nn.OutlierMixtureNLLLoss(**init, **options)(pred, target, weight)

    def ref():
        """-log((1 - eps) p + eps u) per target from the NLL reference, then the weighted reduction."""
        eps, log_u = float(init["outlier_fraction"]), float(init["outlier_log_density"])
        nll = reference.huber_nll_reference(canon(args["pred"]), canon(args["target"]), float(init["delta"]),
                                            float(init["theta"]), reduction="none",
                                            **{k: v for k, v in options.items() if k != "reduction"})
        loss = -torch.logaddexp(math.log1p(-eps) - nll, torch.full_like(nll, math.log(eps) + log_u))
        w = torch.ones_like(loss) if args["weight"] is None else canon(args["weight"]).expand_as(loss)
        weighted = torch.where(w != 0, w * loss, torch.zeros_like(loss))
        if options["reduction"] == "none":
            return weighted
        if options["reduction"] == "sum":
            return weighted.sum()
        return weighted.sum() / w.sum() if w.sum() != 0 else torch.zeros((), dtype=F64)

    return Case(call, kwargs=args, bad=bad, reference=ref,
                compare=lambda out, r: close(out, r, compute_dtype(args["pred"], args["target"]), "OutlierMixtureNLLLoss"),
                label="OutlierMixtureNLLLoss")


@st.composite
def raw_for_precision_case(draw):
    """A valid example checks the whole grid (both branches of g^-1, near and at theta) with
    each number drawn as a Python or numpy scalar; a bad one makes one argument bad."""
    grid = [(a, t) for a in (1e-3, 0.3, 0.45, 0.5, 0.95, 2.0, 1e5) for t in (0.1, 0.5, 1.0)]
    bad = draw(choose_bad(["precision", "theta"]))
    if bad:
        args = dict(precision=2.0, theta=0.5)
        args[bad] = draw(st.sampled_from(BAD_NUMBERS["positive_finite"] + [torch.tensor(1.0)]))
        return Case(probreg.nn.raw_for_precision, kwargs=args, bad=bad, label="raw_for_precision")
    pairs = [(draw(st.sampled_from(number_variants(a))), draw(st.sampled_from(number_variants(t)))) for a, t in grid]

    def compare(outs, _):
        """The defining property g_theta(raw) = precision."""
        for (a, t), out in zip(pairs, outs):
            assert isinstance(out, float)
            back = _g(torch.tensor(out, dtype=F64), float(t)).item()
            assert math.isclose(back, float(a), rel_tol=1e-12), (a, t, out, back)

    return Case(lambda: [probreg.nn.raw_for_precision(a, t) for a, t in pairs], reference=lambda: None,
                compare=compare, label="raw_for_precision")

# ---------------------------------------------------------------- fusion
def _fuse_problem(seed, batch, n, d):
    g = gen(seed)
    A = torch.eye(d, dtype=F64) + 0.3 * torch.randn(*batch, n, d, d, generator=g, dtype=F64)
    v = 2 * torch.randn(*batch, n, d, generator=g, dtype=F64)
    w = 0.2 + torch.rand(*batch, n, generator=g, dtype=F64)
    return v, A, w


def _fuse_compare(out, ref, dtype):
    y, converged = out.y, out.converged
    ref_y, ref_converged = ref
    both = converged & ref_converged
    # y* of these well-conditioned problems is stable to ~cond * input rounding
    close(torch.where(both.unsqueeze(-1), y.to(F64), 0.0), torch.where(both.unsqueeze(-1), ref_y, 0.0), dtype, "y",
          rtol={torch.float64: 1e-6, torch.float32: 1e-4}.get(dtype, 5e-2))
    assert out.hessian.shape == (*y.shape, y.shape[-1])
    if dtype in FULL_PRECISION:  # these well-conditioned problems converge
        assert bool(converged.all()) and bool(ref_converged.all())


@st.composite
def fuse_case(draw):
    seed = draw(st.integers(0, 99))
    batch = draw(st.sampled_from([(0,), (3,), (2, 2)]))
    n, d = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2, 3, 4]))
    v, A, w = _fuse_problem(seed, batch, n, d)
    init = v[..., 0, :] if draw(st.booleans()) else None
    args = dict(v=v, A=A, weight=w, delta=draw(st.sampled_from([0.5, 1.0, math.inf])),
                max_iter=draw(st.sampled_from([50, 200])), tol=draw(st.sampled_from([1e-10, 0.0])),
                damping=draw(st.sampled_from([0.0, 0.1])), init=init)
    bad = draw(choose_bad(["v", "A", "weight", "init", "delta", "max_iter", "tol", "damping"]))
    if bad in ("v", "A", "weight", "init"):
        x = args[bad] if args[bad] is not None else v[..., 0, :]
        dim = {"v": -2, "A": -3, "weight": -1, "init": -1}[bad]  # n + 1 estimates (init: d + 1)
        wrong = [("n + 1", torch.cat([x, x.narrow(dim, 0, 1)], dim))]
        if bad == "weight":
            wrong.append(("negative", -x))
        args[bad] = draw(st.sampled_from([t for _, t in bad_tensors(x, wrong)]))
    elif bad == "delta":
        args["delta"] = draw(st.sampled_from(BAD_NUMBERS["positive"]))
    elif bad == "max_iter":
        args["max_iter"] = draw(st.sampled_from(BAD_NUMBERS["int>=0"] + [2**31]))
    elif bad in ("tol", "damping"):
        args[bad] = draw(st.sampled_from(BAD_NUMBERS["nonnegative_finite"]))
    else:
        dtype = draw(st.sampled_from(FLOATS))
        for k in ("v", "A", "weight", "init"):
            if args[k] is not None:
                args[k] = draw(tensor_variant(args[k], dtypes=(dtype,), layouts=("contiguous", "transposed", "flipped")))
        args["max_iter"] = draw(st.sampled_from(number_variants(args["max_iter"])))
    dtype = compute_dtype(args["v"], args["A"]) if bad is None else F64

    def ref():
        v64, A64, w64 = canon(args["v"]), canon(args["A"]), canon(args["weight"])
        y, _, _, conv = reference.huber_fuse(v64, A64, w64, args["delta"], 500, 1e-13, 0.0)
        return y, conv

    return Case(probreg.huber_fuse, kwargs=args, bad=bad, reference=ref, compare=lambda o, r: _fuse_compare(o, r, dtype),
                label="huber_fuse")


@st.composite
def fuse_predictions_case(draw):
    seed = draw(st.integers(0, 99))
    batch, n, d = draw(st.sampled_from([(0,), (3,)])), draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2, 3]))
    pred = torch.randn(*batch, n, d + d * (d + 1) // 2, generator=gen(seed), dtype=F64)
    M = torch.eye(d, dtype=F64) + 0.2 * torch.randn(*batch, n, d, d, generator=gen(seed + 1), dtype=F64)
    t = torch.randn(*batch, n, d, generator=gen(seed + 2), dtype=F64)
    kw = dict(theta=draw(st.sampled_from([0.5, 1.0])), delta=1.0, parameterization=draw(st.sampled_from(["v", "mu"])),
              transforms=(M, t) if draw(st.booleans()) else None, tol=1e-12)
    bad = draw(choose_bad(["pred", "theta", "parameterization", "M", "t", "max_iter"]))
    pred_arg = pred
    if bad == "pred":
        pred_arg = draw(st.sampled_from([x for _, x in bad_tensors(pred, [("K = 4", pred[..., :4] if d == 2 else pred[..., :1])])]))
    elif bad == "theta":
        kw["theta"] = draw(st.sampled_from(BAD_NUMBERS["positive_finite"]))
    elif bad == "parameterization":
        kw["parameterization"] = draw(st.sampled_from(["w", ["v"], None]))
    elif bad == "M":
        kw["transforms"] = (draw(st.sampled_from([x for _, x in bad_tensors(M, [("d + 1", torch.eye(d + 1, dtype=F64))])])), t)
    elif bad == "t":
        kw["transforms"] = (M, draw(st.sampled_from([x for _, x in bad_tensors(t, [("d + 1", torch.zeros(d + 1, dtype=F64))])])))
    elif bad == "max_iter":
        kw["max_iter"] = draw(st.sampled_from(BAD_NUMBERS["int>=0"]))
    else:
        pred_arg = draw(tensor_variant(pred, dtypes=FULL_PRECISION, layouts=("contiguous", "transposed", "flipped")))

    def ref():
        p64 = canon(pred_arg)
        A = reference.spd_from_raw(p64[..., d:], kw["theta"])
        v = p64[..., :d]
        if kw["parameterization"] == "mu":
            v = (A @ v.unsqueeze(-1)).squeeze(-1)
        if kw["transforms"] is not None:
            A = A @ torch.linalg.inv(M)
            v = v + (A @ t.unsqueeze(-1)).squeeze(-1)
        y, _, _, conv = reference.huber_fuse(v, A, torch.ones(v.shape[:-1], dtype=F64), 1.0, 500, 1e-13, 0.0)
        return y, conv

    dtype = pred_arg.dtype if isinstance(pred_arg, torch.Tensor) and pred_arg.is_floating_point() else F64
    return Case(probreg.fuse_predictions, (pred_arg,), kw, bad=bad, reference=ref,
                compare=lambda o, r: _fuse_compare(o, r, dtype), label="fuse_predictions")


# ---------------------------------------------------------------- wiberg
def _quadratic(y, c, a):
    """E_b(y) = sum_k a_bk (y_bk - c_bk)^2 / 2 + cosh-free quartic: minimum at y = c."""
    return (a * (y - c) ** 2).sum(-1) / 2 + ((y - c) ** 4).sum(-1)


@st.composite
def argmin_case(draw, solver: str):
    seed = draw(st.integers(0, 99))
    B, d = draw(st.sampled_from([1, 4])), draw(st.sampled_from([1, 3]))
    c = torch.randn(B, d, generator=gen(seed), dtype=F64)
    a = 0.5 + torch.rand(B, d, generator=gen(seed + 1), dtype=F64)
    y0 = torch.zeros(B, d, dtype=F64)
    kw = dict(max_iter=draw(st.sampled_from([50, 100])), tol=draw(st.sampled_from([None, 1e-12, 0.0])))
    names = ["y0", "max_iter", "tol"] + (["damping", "newton_polish"] if solver == "argmin" else ["initial_damping"])
    bad = draw(choose_bad(names))
    y0_arg = y0
    if bad == "y0":
        y0_arg = draw(st.sampled_from([y0[0], y0.long(), y0.unsqueeze(0), y0.tolist(), y0[:, :0]]))
    elif bad == "max_iter":
        kw["max_iter"] = draw(st.sampled_from(BAD_NUMBERS["int>=0"]))
    elif bad == "tol":
        kw["tol"] = draw(st.sampled_from([-1.0, math.nan, math.inf, True, "x"]))
    elif bad in ("damping", "initial_damping"):
        kw[bad] = draw(st.sampled_from([-0.1, math.nan, math.inf, True, torch.ones(B + 1)]))
    elif bad == "newton_polish":
        kw["newton_polish"] = draw(st.sampled_from(["yes", 1, None]))
    else:
        y0_arg = draw(tensor_variant(y0, dtypes=FULL_PRECISION, layouts=("contiguous", "transposed", "expanded")))
        kw["max_iter"] = draw(st.sampled_from(number_variants(kw["max_iter"])))
        if solver == "argmin":
            kw["damping"] = draw(st.sampled_from([0.1, np.float32(0.1), torch.tensor(0.1), torch.full((B,), 0.2, dtype=F64)]))
    fn = wiberg.argmin if solver == "argmin" else wiberg.trust_region_newton
    dtype = y0_arg.dtype if isinstance(y0_arg, torch.Tensor) else F64
    return Case(fn, (_quadratic, y0_arg, c.to(dtype), a.to(dtype)), kw, bad=bad, reference=lambda: c,
                compare=lambda out, r: close(out, r, dtype, solver, rtol=1e-6 if dtype == F64 else 1e-3), label=solver)


@st.composite
def energy_derivatives_case(draw):
    seed = draw(st.integers(0, 99))
    B, d = draw(st.sampled_from([1, 4])), draw(st.sampled_from([1, 2]))
    c = torch.randn(B, d, generator=gen(seed), dtype=F64)
    a = 0.5 + torch.rand(B, d, dtype=F64)
    y = torch.randn(B, d, generator=gen(seed + 1), dtype=F64)
    bad = draw(choose_bad(["y"]))
    if bad:
        return Case(wiberg.energy_derivatives, (_quadratic, draw(st.sampled_from([y[0], y.long(), y.tolist()])), c, a),
                    bad="y", label="energy_derivatives")
    y_arg = draw(tensor_variant(y, dtypes=FULL_PRECISION))

    def ref():
        y64 = canon(y_arg)
        e = y64 - c
        return (_quadratic(y64, c, a), a * e + 4 * e**3, torch.diag_embed(a + 12 * e**2))

    def compare(out, r):
        for o, x, what in zip(out, r, ("E", "grad", "H")):
            close(o, x, y_arg.dtype, what)

    return Case(wiberg.energy_derivatives, (_quadratic, y_arg, c.to(y_arg.dtype), a.to(y_arg.dtype)), reference=ref,
                compare=compare, label="energy_derivatives")


@st.composite
def lstsq_case(draw):
    seed = draw(st.integers(0, 99))
    m, n = draw(st.sampled_from([(4, 2), (3, 3), (2, 4)]))
    A = torch.randn(3, m, n, generator=gen(seed), dtype=F64)
    b = torch.randn(3, m, generator=gen(seed + 1), dtype=F64)
    kw = dict(rcond=draw(st.sampled_from([None, 1e-10])), method=draw(st.sampled_from(["auto", "pinv"])))
    bad = draw(choose_bad(["A", "b", "rcond", "method"]))
    A_arg, b_arg = A, b
    if bad == "A":
        A_arg = draw(st.sampled_from([x for _, x in bad_tensors(A, [("(6, 0)", torch.zeros(6, 0, dtype=F64)),
                                                                    ("half with half b", A.half())])]))
        b_arg = b.half() if isinstance(A_arg, torch.Tensor) and A_arg.dtype == torch.float16 else b
    elif bad == "b":
        b_arg = draw(st.sampled_from([x for _, x in bad_tensors(b, [("(m + 1,)", torch.zeros(m + 1, dtype=F64))])]))
    elif bad == "rcond":
        kw["rcond"] = draw(st.sampled_from([-1.0, math.nan, math.inf, True, "0.1"]))
    elif bad == "method":
        kw["method"] = draw(st.sampled_from(["qr", ["pinv"], None]))
    else:
        A_arg = draw(tensor_variant(A, dtypes=FULL_PRECISION))
        b_arg = draw(tensor_variant(b, dtypes=FULL_PRECISION))
    dtype = compute_dtype(A_arg, b_arg) if bad is None else F64
    return Case(wiberg.lstsq, (A_arg, b_arg), kw, bad=bad,
                reference=lambda: (torch.linalg.pinv(canon(A_arg)) @ canon(b_arg).unsqueeze(-1)).squeeze(-1),
                compare=lambda out, r: close(out, r, dtype, "lstsq", rtol=1e-7 if dtype == F64 else 1e-3), label="lstsq")


@st.composite
def fusion_energy_case(draw):
    seed = draw(st.integers(0, 99))
    B, n, d = draw(st.sampled_from([0, 3])), 3, draw(st.sampled_from([1, 2]))
    v, A, w = _fuse_problem(seed, (B,), n, d)
    y = torch.randn(B, d, generator=gen(seed + 5), dtype=F64)
    args = dict(y=y, v=v, A=A, w=w, delta=draw(st.sampled_from([0.0, 0.7, math.inf])))
    bad = draw(choose_bad(list(args)))
    if bad in ("y", "v", "A", "w"):
        wrong = {"y": y[:, :0], "v": v[:, :2], "A": torch.cat([A, A[..., :1]], -1), "w": w[:, :2]}[bad]
        args[bad] = draw(st.sampled_from([x for _, x in bad_tensors(args[bad], [("shape", wrong)])]))
    elif bad == "delta":
        args["delta"] = draw(st.sampled_from([-1.0, math.nan, True, "1", torch.ones(B + 1, n + 1)]))
    else:
        dtype = draw(st.sampled_from(FULL_PRECISION))
        for k in ("y", "v", "A", "w"):
            args[k] = draw(tensor_variant(args[k], dtypes=(dtype,)))
        args["delta"] = draw(st.sampled_from(number_variants(args["delta"]) + [torch.full((B, n), 0.7, dtype=dtype)]))

    def ref():
        delta = 0.7 if isinstance(args["delta"], torch.Tensor) else float(args["delta"])
        return reference.huber_energy(canon(args["y"]), canon(args["v"]), canon(args["A"]), canon(args["w"]), delta)

    dtype = compute_dtype(args["y"]) if bad is None else F64
    return Case(wiberg.huber_fusion_energy, kwargs=args, bad=bad, reference=ref,
                compare=lambda out, r: close(out, r, dtype, "huber_fusion_energy"), label="huber_fusion_energy")


def _rbf_formula(y, centers, sizes, ref_sizes, time, sp, ss, s, ta, tb):
    """Supplement eq. 14-16 written out per tracker (float64)."""
    total = torch.zeros(y.shape[0], dtype=F64)
    for k in range(centers.shape[-2]):
        position = ((y - centers[:, k]) ** 2 / sp[:, k] ** 2).sum(-1)
        size = ((sizes[:, k] - ref_sizes[:, k]) ** 2 / ss[:, k] ** 2).sum(-1)
        theta = 1 / (1 + ta[:, k] ** 2 * time + tb[:, k] ** 2 * time**2)
        total = total - s[:, k] * torch.exp(-size) * theta * torch.exp(-position)
    return total


@st.composite
def rbf_energy_case(draw):
    seed = draw(st.integers(0, 99))
    names = ["y", "centers", "sizes", "ref_sizes", "time", "sigma_pos", "sigma_size", "weight_scale", "temporal_a",
             "temporal_b"]
    bad = draw(choose_bad(names))
    # B, T >= 2 where an argument is made bad: a size-1 dim broadcasts against any other
    B, T = draw(st.sampled_from([2, 4] if bad else [1, 4])), draw(st.sampled_from([2, 3] if bad else [1, 3]))
    g = gen(seed)
    y = torch.randn(B, 2, generator=g, dtype=F64)
    args = [y, torch.randn(B, T, 2, generator=g, dtype=F64), 1 + torch.rand(B, T, 2, generator=g, dtype=F64),
            1 + torch.rand(B, T, 2, generator=g, dtype=F64), torch.rand(B, generator=g, dtype=F64),
            1 + torch.rand(B, T, 2, generator=g, dtype=F64), 1 + torch.rand(B, T, 2, generator=g, dtype=F64),
            torch.rand(B, T, generator=g, dtype=F64), torch.rand(B, T, generator=g, dtype=F64),
            torch.rand(B, T, generator=g, dtype=F64)]
    if bad is not None:
        i = names.index(bad)
        x = args[i]
        wrong = torch.cat([x, x.narrow(-1, 0, 1)], -1)  # last dim + 1: breaks the broadcast
        args[i] = draw(st.sampled_from([x.long(), x.tolist(), x.to(torch.complex64), wrong]))
        return Case(wiberg.rbf_fusion_energy, tuple(args), bad=bad, label="rbf_fusion_energy")
    args = [draw(tensor_variant(a, dtypes=FULL_PRECISION[:1])) for a in args]
    return Case(wiberg.rbf_fusion_energy, tuple(args), reference=lambda: _rbf_formula(*[canon(a) for a in args]),
                compare=lambda out, r: close(out, r, F64, "rbf_fusion_energy"), label="rbf_fusion_energy")


@st.composite
def rbf_module_case(draw):
    seed = draw(st.integers(0, 99))
    B, T = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2]))
    g = gen(seed)
    corner = 100 * torch.rand(B, T, 2, generator=g, dtype=F64)
    boxes = torch.cat([corner, corner + 20 + 10 * torch.rand(B, T, 2, generator=g, dtype=F64)], -1)
    ref_boxes = boxes + torch.randn(B, T, 4, generator=g, dtype=F64)
    time = torch.rand(B, generator=g, dtype=F64)
    init = dict(num_trackers=T)
    call = dict(boxes=boxes, ref_boxes=ref_boxes, time=time)
    bad = draw(choose_bad(["num_trackers", "sigma_pos", "boxes", "ref_boxes", "time"]))
    if bad == "num_trackers":
        init["num_trackers"] = draw(st.sampled_from(BAD_NUMBERS["int>=1"]))
    elif bad == "sigma_pos":
        init["sigma_pos"] = draw(st.sampled_from(BAD_NUMBERS["positive_finite"]))
    elif bad in ("boxes", "ref_boxes"):
        call[bad] = draw(st.sampled_from([x for _, x in bad_tensors(call[bad], [("(B, T, 3)", call[bad][..., :3]),
                                                                                  ("T + 1", torch.cat([call[bad], call[bad][:, :1]], 1))])]))
    elif bad == "time":
        call["time"] = draw(st.sampled_from([x for _, x in bad_tensors(time, [("(B + 1,)", torch.rand(B + 1, dtype=F64))])]))
    else:
        for k in call:
            call[k] = draw(tensor_variant(call[k], dtypes=FULL_PRECISION[:1]))
        init["num_trackers"] = draw(st.sampled_from(number_variants(T)))

    def run(**call):
        torch.manual_seed(0)
        return wiberg.RBFFusion(**init)(**call)

    def ref():
        torch.manual_seed(0)
        return wiberg.RBFFusion(T)(**{k: canon(x) for k, x in call.items()})

    return Case(run, kwargs=call, bad=bad, reference=ref, compare=lambda out, r: close(out, r, F64, "RBFFusion"),
                label="RBFFusion")


# ---------------------------------------------------------------- ebm and gum
def _mixture_log_density(samples, y, sigmas):
    """log (1/L) sum_l N(samples; y, sigma_l^2 I), written out (float64)."""
    d = y.shape[-1]
    diff2 = ((samples - y.unsqueeze(-2)) ** 2).sum(-1)
    comps = torch.stack([-0.5 * diff2 / s**2 - d * math.log(s) - 0.5 * d * math.log(2 * math.pi) for s in sigmas], -1)
    return torch.logsumexp(comps, -1) - math.log(len(sigmas))


@st.composite
def ebm_case(draw, which: str):
    seed = draw(st.integers(0, 99))
    n, d, M = draw(st.sampled_from([1, 4])), draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 5]))
    y = torch.randn(n, d, generator=gen(seed), dtype=F64)
    sigmas = draw(st.sampled_from([[0.5], [0.1, 1.0]]))
    if which == "sample_proposal":
        bad = draw(choose_bad(["y", "sigmas", "num_samples"]))
        args = dict(y=y, sigmas=sigmas, num_samples=M)
        if bad == "y":
            args["y"] = draw(st.sampled_from([y.long(), y.tolist(), y[:0], y.to(torch.complex64)]))
        elif bad == "sigmas":
            args["sigmas"] = draw(st.sampled_from([None, [0.0], [-1.0], [math.nan], "1", [], torch.ones(2, dtype=torch.complex64)]))
        elif bad == "num_samples":
            args["num_samples"] = draw(st.sampled_from(BAD_NUMBERS["int>=1"]))
        else:
            args["y"] = draw(tensor_variant(y, dtypes=FULL_PRECISION))
            args["num_samples"] = draw(st.sampled_from(number_variants(M)))
            args["sigmas"] = draw(st.sampled_from([sigmas, torch.tensor(sigmas), np.array(sigmas)]))

        args["generator"] = gen(seed + 7)

        def ref():
            return None

        def compare(out, _):
            samples, log_q = out
            assert samples.shape == (*args["y"].shape[:-1], int(args["num_samples"]), d)
            # the sigmas as passed (a float32 tensor holds 0.1 rounded)
            passed = [float(s) for s in torch.as_tensor(args["sigmas"]).to(args["y"].dtype)]
            close(log_q, _mixture_log_density(canon(samples), canon(args["y"]), passed), args["y"].dtype, "log_q")

        return Case(ebm.sample_proposal, kwargs=args, bad=bad, reference=ref, compare=compare, label=which)
    if which == "proposal_log_density":
        samples = torch.randn(n, M, d, generator=gen(seed + 1), dtype=F64)
        bad = draw(choose_bad(["samples", "y", "sigmas"]))
        args = dict(samples=samples, y=y, sigmas=sigmas)
        if bad == "samples":
            args["samples"] = draw(st.sampled_from([samples.tolist(), samples[0], samples[..., :0]]))
        elif bad == "y":
            args["y"] = draw(st.sampled_from([y.long(), y[:0]]))
        elif bad == "sigmas":
            args["sigmas"] = draw(st.sampled_from([None, [-1.0], [[1.0] * (d + 1)]]))
        else:
            args["samples"] = draw(tensor_variant(samples, dtypes=FULL_PRECISION[:1]))
            args["y"] = draw(tensor_variant(y, dtypes=FULL_PRECISION[:1]))
        return Case(ebm.proposal_log_density, kwargs=args, bad=bad,
                    reference=lambda: _mixture_log_density(canon(args["samples"]), canon(args["y"]), sigmas),
                    compare=lambda out, r: close(out, r, F64, which), label=which)
    # nll
    target = torch.randn(n, generator=gen(seed), dtype=F64)
    samples = torch.randn(n, M, generator=gen(seed + 1), dtype=F64)
    log_q = torch.randn(n, M, generator=gen(seed + 2), dtype=F64)
    args = dict(score_target=target, score_samples=samples, log_q=log_q,
                reduction=draw(st.sampled_from(["mean", "sum", "none"])))
    bad = draw(choose_bad(["score_target", "score_samples", "log_q", "reduction"]))
    if bad == "reduction":
        args["reduction"] = draw(st.sampled_from(["max", ["sum"], None]))
    elif bad is not None:
        x = args[bad]
        args[bad] = draw(st.sampled_from([x.tolist(), x.long(), torch.cat([x, x[:1]])]))
    else:
        for k in ("score_target", "score_samples", "log_q"):
            args[k] = draw(tensor_variant(args[k], dtypes=FULL_PRECISION[:1]))

    def ref():
        per = torch.logsumexp(canon(args["score_samples"]) - canon(args["log_q"]), -1) - math.log(M) - canon(args["score_target"])
        return {"mean": per.mean(), "sum": per.sum(), "none": per}[args["reduction"]]

    return Case(ebm.nll, kwargs=args, bad=bad, reference=ref, compare=lambda out, r: close(out, r, F64, "ebm.nll"),
                label=which)


@st.composite
def refine_case(draw):
    seed = draw(st.integers(0, 99))
    y0 = torch.randn(4, 2, generator=gen(seed), dtype=F64)
    args = dict(score_fn=lambda y: -(y**2).sum(-1), y0=y0, steps=draw(st.sampled_from([0, 3])),
                step_size=draw(st.sampled_from([0.1, 0.4])), decay=draw(st.sampled_from([0.5, 1.0])))
    bad = draw(choose_bad(["y0", "steps", "step_size", "decay"]))
    if bad == "y0":
        args["y0"] = draw(st.sampled_from([y0.long(), y0.tolist(), y0[:0]]))
    elif bad == "steps":
        args["steps"] = draw(st.sampled_from(BAD_NUMBERS["int>=0"]))
    elif bad == "step_size":
        args["step_size"] = draw(st.sampled_from([0.0, -1.0, math.nan, torch.ones(3), True, "1", torch.ones(2, dtype=torch.int64)]))
    elif bad == "decay":
        args["decay"] = draw(st.sampled_from([0.0, 1.5, math.nan, True, "1", None]))
    else:
        args["y0"] = draw(tensor_variant(y0, dtypes=FULL_PRECISION[:1]))
        args["steps"] = draw(st.sampled_from(number_variants(args["steps"])))

    def ref():
        y, lam = canon(args["y0"]), float(args["step_size"])
        for _ in range(int(args["steps"])):  # -y^2: gradient -2y; accepted iff the score rises
            new = y - 2 * lam * y
            better = (new**2).sum(-1) < (y**2).sum(-1)
            y = torch.where(better.unsqueeze(-1), new, y)  # (a rejected candidate is 0: it stays)
        return y

    return Case(ebm.refine, kwargs=args, bad=bad, reference=ref, compare=lambda out, r: close(out.y, r, F64, "refine"),
                label="refine")


@st.composite
def gum_case(draw, which: str):
    seed = draw(st.integers(0, 99))
    N, K, d = 40, draw(st.sampled_from([1, 2])), 2
    g = gen(seed)
    residuals = torch.randn(N, K, d, generator=g, dtype=F64)
    residuals[:5] = 20 * torch.rand(5, K, d, generator=g, dtype=F64) - 10
    granularity = draw(st.sampled_from(["sample", "landmark", "coordinate"]))
    if which == "weighted_l2":
        pred, target = torch.randn(N, K, d, generator=g, dtype=F64), torch.randn(N, K, d, generator=g, dtype=F64)
        r = torch.rand(N, K, generator=g, dtype=F64)
        args = dict(pred=pred, target=target, responsibilities=r, reduction=draw(st.sampled_from(["mean", "sum", "none"])))
        bad = draw(choose_bad(["pred", "target", "responsibilities", "reduction"]))
        if bad == "reduction":
            args["reduction"] = draw(st.sampled_from(["avg", None]))
        elif bad is not None:
            x = args[bad]
            args[bad] = draw(st.sampled_from([x.tolist(), x[:1] if bad != "pred" else x[:0]] + ([x.long()] if bad != "responsibilities" else [])))
        else:
            for k in ("pred", "target", "responsibilities"):
                args[k] = draw(tensor_variant(args[k], dtypes=FULL_PRECISION[:1]))

        def ref():
            per = (canon(args["responsibilities"]) * ((canon(args["target"]) - canon(args["pred"])) ** 2).sum(-1)).sum(-1)
            return {"mean": per.mean(), "sum": per.sum(), "none": per}[args["reduction"]]

        return Case(gum.weighted_l2, kwargs=args, bad=bad, reference=ref,
                    compare=lambda out, r: close(out, r, F64, which), label=which)
    args = dict(residuals=residuals, iters=draw(st.sampled_from([1, 30])), tol=1e-8, granularity=granularity)
    bad = draw(choose_bad(["residuals", "iters", "tol", "granularity"]))
    if bad == "residuals":
        args["residuals"] = draw(st.sampled_from([residuals.tolist(), residuals.long(), residuals[:0],
                                                  residuals.unsqueeze(0), residuals.to(torch.complex64)]))
    elif bad == "iters":
        args["iters"] = draw(st.sampled_from(BAD_NUMBERS["int>=1"]))
    elif bad == "tol":
        args["tol"] = draw(st.sampled_from([-1.0, math.nan, True, "0"]))
    elif bad == "granularity":
        args["granularity"] = draw(st.sampled_from(["image", ["sample"], None]))
    else:
        args["residuals"] = draw(tensor_variant(residuals, dtypes=FULL_PRECISION[:1]))
        args["iters"] = draw(st.sampled_from(number_variants(args["iters"])))

    def ref():
        return gum.em(canon(args["residuals"]), int(args["iters"]), 1e-8, granularity)

    def compare(out, r):
        for o, x, what in zip(out, r, out._fields):
            close(o, x, F64, what)

    return Case(gum.em, kwargs=args, bad=bad, reference=ref, compare=compare, label=which)


@st.composite
def gum_trainer_case(draw):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    kw = dict(batch_size=8, max_epochs=5, patience=2, max_rounds=1, em_iters=10, em_tol=1e-6, granularity="sample")
    bad = draw(choose_bad(list(kw)))
    if bad in ("batch_size", "max_epochs", "patience", "em_iters"):
        kw[bad] = draw(st.sampled_from(BAD_NUMBERS["int>=1"]))
    elif bad == "max_rounds":
        kw[bad] = draw(st.sampled_from(BAD_NUMBERS["int>=0"]))
    elif bad == "em_tol":
        kw[bad] = draw(st.sampled_from([-1.0, math.nan, True, "x"]))
    elif bad == "granularity":
        kw[bad] = draw(st.sampled_from(["pixel", None]))
    else:
        kw["batch_size"] = draw(st.sampled_from(number_variants(8)))
    return Case(gum.GUMTrainer, (model, optimizer), kw, bad=bad, label="GUMTrainer")


# ---------------------------------------------------------------- the operators, backward ones included
def _grads_of(fn, inputs, grads):
    """Reference vector-Jacobian products in float64 (autograd of the reference)."""
    inputs = [canon(x).requires_grad_(True) for x in inputs]
    outputs = fn(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    pairs = [(o, canon(g)) for o, g in zip(outputs, grads) if g is not None]
    return torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True)


# The d > 3 operators (probreg/_fallback.py) take the fused ones' arguments for any d >= 1.
FALLBACK_OF = {f"_{op.lstrip('_').replace('_backward', '')}_fallback{'_backward' if op.endswith('_backward') else ''}": op
               for op in ("symeig", "_symeig_backward", "spd_remap", "_spd_remap_backward", "huber_nll",
                          "_huber_nll_backward", "huber_fuse", "_huber_fuse_backward")}


@st.composite
def op_case(draw, name: str):
    """The raw operators: the same dtype for every tensor (they do not promote), d <= 3 for
    the fused ones, d <= 4 for the d > 3 fallback operators (FALLBACK_OF: drawn as the
    fused operator, then called through the fallback one)."""
    operator_name, name = name, FALLBACK_OF.get(name, name)
    seed = draw(st.integers(0, 99))
    n = draw(st.sampled_from([0, 1, 5, 9]))
    d = draw(st.sampled_from([1, 2, 3] if operator_name == name else [1, 2, 4]))
    dtype = draw(st.sampled_from(FLOATS))
    g = gen(seed)
    theta = draw(st.sampled_from([0.3, 1.0]))

    def lay(t, dt=None):
        return draw(tensor_variant(t, dtypes=(dt or dtype,)))

    B = torch.randn(n, d, d, generator=g, dtype=F64)
    raw = probreg.pack_sym(B)
    if name in ("symeig", "_symeig_backward"):
        B_ = lay(B)
        if name == "symeig":
            case = Case(ops.symeig, (B_,), reference=lambda: canon(B_),
                        compare=lambda out, B64: _spectral_check(out[0], out[1], B64, dtype))
            names, args = ["B"], [B_]
        else:
            L, V = (ops.symeig if operator_name == name else ops._symeig_fallback)(B_)
            gL, gV = lay(torch.randn(n, d, generator=g, dtype=F64)), lay(torch.randn(n, d, d, generator=g, dtype=F64))
            args, names = [gL, gV, L, V], ["grad_eigenvalues", "grad_eigenvectors", "eigenvalues", "eigenvectors"]

            def ref():
                L64, V64 = canon(L), canon(V)
                gap = L64.unsqueeze(-2) - L64.unsqueeze(-1)
                F = torch.where(gap != 0, 1 / torch.where(gap != 0, gap, torch.ones_like(gap)), torch.zeros_like(gap))
                M = torch.diag_embed(canon(gL)) + F * (V64.mT @ canon(gV))
                G = V64 @ M @ V64.mT
                return 0.5 * (G + G.mT)

            # half types: eigenvalue gaps rounded to the dtype amplify into F; compare in the
            # precision of the inputs' own rounding
            case = Case(ops._symeig_backward, tuple(args), reference=ref,
                        compare=lambda out, r: close(out, r, dtype, name, rtol=None if dtype in FULL_PRECISION else 1.0))
            if dtype not in FULL_PRECISION:
                case.reference = None  # F = 1/gap of half-rounded eigenvalues: no stable reference
    elif name in ("spd_remap", "spd_from_raw"):
        x = lay(B if name == "spd_remap" else raw)
        ref_fn = reference.spd_remap if name == "spd_remap" else reference.spd_from_raw
        args, names = [x, theta], ["B" if name == "spd_remap" else "raw", "theta"]
        case = Case(getattr(ops, name), tuple(args), reference=lambda: ref_fn(canon(x), theta),
                    compare=lambda out, r: close(out, r, dtype, name))
    elif name in ("_spd_remap_backward", "_spd_from_raw_backward"):
        x = lay(B if name == "_spd_remap_backward" else raw)
        gA = lay(torch.randn(n, d, d, generator=g, dtype=F64))
        ref_fn = reference.spd_remap if name == "_spd_remap_backward" else reference.spd_from_raw
        args, names = [gA, x, theta], ["grad_A", "B" if name == "_spd_remap_backward" else "raw", "theta"]
        case = Case(getattr(ops, name), tuple(args), reference=lambda: _grads_of(lambda t: ref_fn(t, theta), [x], [gA])[0],
                    compare=lambda out, r: close(out, r, dtype, name, rtol=None if dtype in FULL_PRECISION else 5e-2))
    elif name in ("huber_nll", "_huber_nll_backward", "_huber_nll_and_grad"):
        family, covariance = draw(st.integers(0, 3)), draw(st.integers(0, 2))
        width = {2: d + d * (d + 1) // 2, 1: 2 * d, 0: d}[covariance]
        pred, target = lay(torch.randn(n, width, generator=g, dtype=F64)), lay(torch.randn(n, d, generator=g, dtype=F64))
        mu, delta = draw(st.booleans()), draw(st.sampled_from([0.5, 1.0]))
        options = dict(parameterization="mu" if mu else "v", family=("huber", "gauss", "laplace", "charbonnier")[family],
                       covariance=COVARIANCES[::-1][covariance], reduction="none", normalized=False)

        def ref_loss(p, t):
            return reference.huber_nll_reference(p, t, delta, theta, **options)

        if name == "huber_nll":
            args, names = [pred, target, delta, theta, family, covariance, mu], ["pred", "target", "delta", "theta", "family", "covariance", None]
            case = Case(ops.huber_nll, tuple(args), reference=lambda: ref_loss(canon(pred), canon(target)),
                        compare=lambda out, r: close(out, r, dtype, name))
        elif name == "_huber_nll_and_grad":  # the loss and its gradients for grad_loss = 1
            args = [pred, target, delta, theta, family, covariance, mu, True]
            names = ["pred", "target", "delta", "theta", "family", "covariance", None, None]

            def ref():
                p, t = canon(pred), canon(target)
                return (ref_loss(p, t), *_grads_of(ref_loss, [pred, target], [torch.ones(n, dtype=F64)]))

            grad_rtol = None if dtype in FULL_PRECISION else 5e-2
            case = Case(ops._huber_nll_and_grad, tuple(args), reference=ref,
                        compare=lambda out, r: (close(out[0], r[0], dtype, "loss"),
                                                close(out[1], r[1], dtype, "grad_pred", rtol=grad_rtol),
                                                close(out[2], r[2], dtype, "grad_target", rtol=grad_rtol)))
        else:
            loss_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
            grad = lay(torch.randn(n, generator=g, dtype=F64), loss_dtype)
            args = [grad, pred, target, delta, theta, family, covariance, mu, True]
            names = ["grad_loss", "pred", "target", "delta", "theta", "family", "covariance", None, None]
            case = Case(ops._huber_nll_backward, tuple(args), reference=lambda: _grads_of(ref_loss, [pred, target], [grad]),
                        compare=lambda out, r: (close(out[0], r[0], dtype, "grad_pred", rtol=None if dtype in FULL_PRECISION else 5e-2),
                                                close(out[1], r[1], dtype, "grad_target", rtol=None if dtype in FULL_PRECISION else 5e-2)))
    elif name == "_spd_remap_second":
        B_, G, E = (lay(0.5 * (t + t.mT)) for t in (B, torch.randn(n, d, d, generator=g, dtype=F64),
                                                     torch.randn(n, d, d, generator=g, dtype=F64)))
        args, names = [B_, G, E, theta], ["B", "G", "E", "theta"]

        def remap(b):  # F(B) = V diag(g(l)) V^T through eigh's own (twice differentiable) autograd
            L, V = torch.linalg.eigh(b)
            gl = torch.where(L > theta, L, theta * torch.exp(torch.clamp(L / theta - 1, max=0.0)))
            return (V * gl.unsqueeze(-2)) @ V.mT

        def ref():  # d/dt of the vjp DF*_{B + t E}[G] at t = 0 (random B: no ties); the
            # operator reads the symmetric parts (an overlapping layout is not symmetric)
            B64, G64, E64 = (0.5 * (canon(t) + canon(t).mT) for t in (B_, G, E))

            def vjp(b):
                return torch.func.vjp(remap, b)[1](G64)[0]

            return torch.func.jvp(vjp, (B64,), (E64,))[1]

        case = Case(ops._spd_remap_second, tuple(args), reference=ref if dtype in FULL_PRECISION else None,
                    compare=lambda out, r: close(out, r, dtype, name))
    elif name == "_huber_nll_hvp":
        family, covariance = draw(st.integers(0, 3)), draw(st.integers(0, 2))
        width = {2: d + d * (d + 1) // 2, 1: 2 * d, 0: d}[covariance]
        pred, target, dpred, dtarget = (lay(torch.randn(n, k, generator=g, dtype=F64)) for k in (width, d, width, d))
        mu, delta = draw(st.booleans()), draw(st.sampled_from([0.5, 1.0]))
        loss_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        grad = lay(torch.randn(n, generator=g, dtype=F64), loss_dtype)
        options = dict(parameterization="mu" if mu else "v", family=("huber", "gauss", "laplace", "charbonnier")[family],
                       covariance=COVARIANCES[::-1][covariance], reduction="none", normalized=False)
        args = [grad, pred, target, dpred, dtarget, delta, theta, family, covariance, mu, True]
        names = ["grad_loss", "pred", "target", "dpred", "dtarget", "delta", "theta", "family", "covariance", None, None]

        def ref():  # grad_loss * Hess(loss) . (dpred, dtarget): the jvp of the weighted loss's gradient
            def weighted_grad(p, t):
                return torch.func.grad(lambda p_, t_: (canon(grad) * reference.huber_nll_reference(
                    p_, t_, delta, theta, **options)).sum(), argnums=(0, 1))(p, t)

            return torch.func.jvp(weighted_grad, (canon(pred), canon(target)), (canon(dpred), canon(dtarget)))[1]

        case = Case(ops._huber_nll_hvp, tuple(args), reference=ref if dtype in FULL_PRECISION else None,
                    compare=lambda out, r: [close(o, x, dtype, name) for o, x in zip(out, r)])
    else:  # huber_fuse, _huber_fuse_backward
        v, A, w = (lay(t) for t in _fuse_problem(seed, (n,), 3, d))
        delta = draw(st.sampled_from([1.0, math.inf]))
        if name == "huber_fuse":
            args = [v, A, w, None, delta, 100, 1e-12, 0.0]
            names = ["v", "A", "weight", None, "delta", "max_iter", "tol", "damping"]

            def ref():
                y, _, _, conv = reference.huber_fuse(canon(v), canon(A), canon(w), delta, 500, 1e-13, 0.0)
                return y, conv

            def compare(out, r):
                _fuse_compare(probreg.FuseResult(*out), r, dtype)

            case = Case(ops.huber_fuse, tuple(args), reference=ref, compare=compare)
        else:
            y = reference.huber_fuse(canon(v), canon(A), canon(w), delta, 500, 1e-13, 0.0)[0].to(dtype)
            grad_y = lay(torch.randn(n, d, generator=g, dtype=F64))
            damping = 0.1
            args = [grad_y, y, v, A, w, delta, damping]
            names = ["grad_y", "y", "v", "A", "weight", "delta", "damping"]

            def ref():
                v_, A_, w_ = (canon(t).requires_grad_(True) for t in (v, A, w))
                y_ = reference.huber_fuse(v_, A_, w_, delta, 500, 1e-13, damping)[0]
                return torch.autograd.grad(y_, (v_, A_, w_), canon(grad_y), allow_unused=True)

            case = Case(ops._huber_fuse_backward, tuple(args), reference=ref if dtype in FULL_PRECISION else None,
                        compare=lambda out, r: [close(o, x, dtype, "grad", rtol=1e-6 if dtype == F64 else 1e-3)
                                                for o, x in zip(out, r)])
    if operator_name != name:
        case.fn = getattr(ops, operator_name)
    name = case.label = operator_name
    bad = draw(choose_bad([k for k in names if k is not None]))
    if bad is not None:
        index = names.index(bad)
        value = case.args[index]
        if isinstance(value, torch.Tensor):
            other = torch.float32 if value.dtype == F64 else F64
            wrong = [value.to(torch.int64), value.to(torch.complex64), value.to(other),
                     torch.cat([value, value[:1]]) if value.dim() and value.shape[0] else torch.zeros(1, *value.shape[1:], dtype=value.dtype),
                     value[..., :0] if value.dim() else value.reshape(1)]
            # a lone tensor (symeig, spd_remap, spd_from_raw) in float32 is valid
            if sum(isinstance(a, torch.Tensor) for a in case.args) == 1:
                wrong = [x for x in wrong if x.dtype in (torch.int64, torch.complex64) or x.shape[-1:] != value.shape[-1:]]
            replacement = draw(st.sampled_from(wrong))
        else:
            replacement = draw(st.sampled_from({"theta": [0.0, -1.0, math.nan, math.inf], "delta": [-1.0, math.nan],
                                                "family": [-1, 4], "covariance": [-1, 3], "max_iter": [-1, 2**31],
                                                "tol": [-1.0, math.nan, math.inf], "damping": [-1.0, math.inf]}[bad]))
            if FALLBACK_OF.get(name, name) in ("huber_fuse", "_huber_fuse_backward") and bad == "delta":
                replacement = draw(st.sampled_from([0.0, -1.0, math.nan]))
        args = list(case.args)
        args[index] = replacement
        return Case(case.fn, tuple(args), bad=bad, label=name)
    return case


# ---------------------------------------------------------------- the sweep
OP_NAMES = ["symeig", "_symeig_backward", "spd_remap", "_spd_remap_backward", "spd_from_raw", "_spd_from_raw_backward",
            "huber_nll", "_huber_nll_backward", "_huber_nll_and_grad", "huber_fuse", "_huber_fuse_backward", "_spd_remap_second",
            "_huber_nll_hvp", *FALLBACK_OF]

SWEEP = {
    # name: (strategy, examples)
    "symeig": (symeig_case(), 30),
    "spd_remap": (spd_case(False), 40),
    "spd_from_raw": (spd_case(True), 40),
    "pack_sym": (packing_case(False), 25),
    "unpack_sym": (packing_case(True), 25),
    "huber_nll": (nll_case(False), 60),
    "HuberNLLLoss": (nll_case(True), 25),
    "huber_log_normalizer": (normalizer_case(False), 25),
    "huber_variance_factor": (normalizer_case(True), 25),
    "HuberL2": (huber_l2_case(), 25),
    "huber_radius_cdf": (radius_cdf_case(), 25),
    "huber_region_radius": (region_radius_case(), 25),
    "PredictionHead": (prediction_head_case(), 60),
    "nn.OutlierMixtureNLLLoss": (outlier_mixture_case(), 80),
    "nn.raw_for_precision": (raw_for_precision_case(), 20),
    "huber_fuse": (fuse_case(), 40),
    "fuse_predictions": (fuse_predictions_case(), 25),
    "wiberg.argmin": (argmin_case("argmin"), 20),
    "wiberg.trust_region_newton": (argmin_case("trust_region_newton"), 20),
    "wiberg.energy_derivatives": (energy_derivatives_case(), 15),
    "wiberg.lstsq": (lstsq_case(), 30),
    "wiberg.huber_fusion_energy": (fusion_energy_case(), 30),
    "wiberg.rbf_fusion_energy": (rbf_energy_case(), 20),
    "wiberg.RBFFusion": (rbf_module_case(), 12),
    "ebm.sample_proposal": (ebm_case("sample_proposal"), 20),
    "ebm.proposal_log_density": (ebm_case("proposal_log_density"), 15),
    "ebm.nll": (ebm_case("nll"), 20),
    "ebm.refine": (refine_case(), 15),
    "gum.em": (gum_case("em"), 15),
    "gum.weighted_l2": (gum_case("weighted_l2"), 15),
    "gum.GUMTrainer": (gum_trainer_case(), 15),
    **{f"ops.{op}": (op_case(op), 30) for op in OP_NAMES},
}


def test_the_sweep_covers_every_public_function():
    def public(module, prefix=""):
        names = set()
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and not (isinstance(obj, type) and issubclass(obj, tuple)):  # NamedTuples: results only
                names.add(prefix + name)
        return names

    covered = set(SWEEP) | {"gum.responsibilities"}  # test_gum_responsibilities_hostile
    expected = public(probreg) | {f"ops.{op}" for op in OP_NAMES}
    for module in (wiberg, ebm, gum, probreg.nn):
        expected |= public(module, module.__name__.split(".")[-1] + ".")
    expected -= {"nn.PredictionHead"}  # exported at the top level too: swept as PredictionHead
    assert expected - covered == set()
    schemas = {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("probreg::")}
    assert schemas - {"_log_normalizer"} == set(OP_NAMES)  # _log_normalizer: a compile helper, no tensors


@pytest.mark.parametrize("name", list(SWEEP))
def test_hostile_inputs(name):
    strategy, examples = SWEEP[name]

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(strategy)
    def sweep(case):
        run_case(case)

    sweep()


def test_gum_responsibilities_hostile():
    residuals = torch.randn(30, 2, 2, dtype=F64)
    fit = gum.em(residuals, 20, 1e-8, "landmark")
    for layout_kind in LAYOUTS:
        x = layout(residuals, layout_kind)
        close(gum.responsibilities(x, fit, "landmark"), gum.responsibilities(canon(x), fit, "landmark"), F64, "r")
    for bad, value in (("residuals", residuals.tolist()), ("residuals", residuals.long()), ("fit", (1, 2)),
                       ("granularity", ["landmark"]), ("fit", gum.em(residuals, 5, 1e-8, "sample"))):
        args = {"residuals": residuals, "fit": fit, "granularity": "landmark", bad: value}
        run_case(Case(gum.responsibilities, kwargs=args, bad=bad, label="responsibilities"))
