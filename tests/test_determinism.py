"""Bitwise reproducibility of every op, forward and backward, on the CPU (issue 15,
acceptance 4): outputs and gradients are identical between 1 and 2 intra-op threads and
for an item at any batch position, and a NaN item leaves every other item untouched.

The CPU kernels run every item through the same SIMD lane code (partial blocks padded)
and send exactly the items the SIMD path does not take (NaN/Inf, zero, extreme scales)
through the scalar path, item by item (csrc/cpu/cpu_loop.h). The inputs below mix both
kinds in one batch on purpose: random items next to c*I, zero, repeated eigenvalues,
huge/tiny float64 scales (scalar path) and a few NaN items. The batch (2 * kCpuGrain +
odd) spans several OpenMP chunks whose boundaries are not multiples of the lane width.
"""
import itertools

import pytest
import torch

import probreg

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
N = 2 * 2048 + 37  # two threads split it mid-block
SHIFTS = [3, 13]  # item i moves to i + shift (cyclically): another lane, block, chunk


@pytest.fixture
def threads():
    """Sets the intra-op thread count for the call (restored afterwards)."""
    previous = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(previous)


def _symmetric_batch(d, dtype, n=N, seed=0):
    """(n, d, d) symmetric matrices of every kind; some exact special cases."""
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(n, d, d, generator=g, dtype=torch.float64)
    B = B + B.mT
    B[5::97] = 2.5 * torch.eye(d, dtype=torch.float64)  # c*I
    B[11::101] = 0.0  # zero matrix (scalar path)
    B[23::89] = torch.diag_embed(torch.tensor([1.0, 1.0, 2.0][:d], dtype=torch.float64))  # exact tie
    B[31::83] *= 1e-3  # small eigenvalues: the exponential branch
    if dtype == torch.float64:
        B[41::79] *= 1e200  # outside the SIMD range: scalar path
        B[47::73] *= 1e-200
    return B.to(dtype)


def _raw_batch(d, dtype, n=N, seed=0):
    return probreg.pack_sym(_symmetric_batch(d, dtype, n, seed).double()).to(dtype)


def _nll_batch(d, covariance, dtype, n=N, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    width = probreg.nll.pred_width(d, covariance)
    pred = torch.randn(n, width, generator=g, dtype=torch.float64)
    if covariance == "full":
        pred[:, d:] = _raw_batch(d, torch.float64, n, seed)
    target = torch.randn(n, d, generator=g, dtype=torch.float64)
    target[7::61] = pred[7::61, :d]  # zero residual
    return pred.to(dtype), target.to(dtype)


def _bitwise_equal(a, b):
    """Equal bit patterns (NaN == NaN, +0 != -0)."""
    if a.dtype.is_floating_point:
        width = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
        return torch.equal(a.contiguous().view(width), b.contiguous().view(width))
    return torch.equal(a, b)


def _assert_same(outs_a, outs_b, what):
    for k, (a, b) in enumerate(zip(outs_a, outs_b)):
        assert _bitwise_equal(a, b), f"{what}: output {k} differs"


# ---- the ops under test: name -> (make inputs (dtype) -> tuple, run (*inputs) -> tuple of
# item-major tensors, item axis 0 everywhere). Backward ops run through autograd with a
# fixed upstream gradient, so the public path and the _*_backward ops are both covered.
def _with_grads(fn, inputs, index=None, upstream_seed=5):
    """Outputs of fn(*inputs[index]) and the gradients of its inputs under the fixed
    upstream gradients (generated for the whole batch, then indexed the same way)."""
    index = torch.arange(inputs[0].shape[0]) if index is None else index
    leaves = [x[index].detach().clone().requires_grad_(x.dtype.is_floating_point) for x in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    g = torch.Generator().manual_seed(upstream_seed)
    differentiable = [o for o in outs if o.requires_grad]
    grads = [torch.randn((inputs[0].shape[0],) + o.shape[1:], generator=g, dtype=torch.float64)[index].to(o.dtype)
             for o in differentiable]
    torch.autograd.backward(differentiable, grads)
    return tuple(o.detach() for o in outs) + tuple(x.grad for x in leaves if x.grad is not None)


def _symeig(B):
    L, V = probreg.symeig(B)
    return L, V * V  # the sign of an eigenvector is a gauge; its square is not


SPD_CASES = {
    "symeig": (lambda d, dt: (_symmetric_batch(d, dt),), _symeig),
    "spd_remap": (lambda d, dt: (_symmetric_batch(d, dt),), lambda B: probreg.spd_remap(B, 0.5)),
    "spd_from_raw": (lambda d, dt: (_raw_batch(d, dt),), lambda r: probreg.spd_from_raw(r, 0.5)),
}

# every family on the full covariance (v), every covariance structure and both
# parameterisations on the Huber family
NLL_OPTIONS = sorted({(fam, "full", "v") for fam in ("huber", "gauss", "laplace", "charbonnier")} |
                     {("huber", cov, par) for cov in ("full", "diagonal", "identity") for par in ("v", "mu")})
NLL_CASES = {f"huber_nll-{fam}-{cov}-{par}": (fam, cov, par) for fam, cov, par in NLL_OPTIONS}


def _nll_fn(fam, cov, par):
    def fn(pred, target):
        return probreg.huber_nll(pred, target, delta=0.7, theta=0.5, parameterization=par, family=fam,
                                 covariance=cov, reduction="none")
    return fn


def _cases(d):
    for name, (make, fn) in SPD_CASES.items():
        yield name, (lambda dt, make=make: make(d, dt)), fn
    for name, (fam, cov, par) in NLL_CASES.items():
        yield name, (lambda dt, cov=cov: _nll_batch(d, cov, dt)), _nll_fn(fam, cov, par)


ALL = [(d, name, make, fn) for d in (1, 2, 3) for name, make, fn in _cases(d)]
IDS = [f"{name}-d{d}" for d, name, _, _ in ALL]
# the spd ops for every dtype; huber_nll for float32/float64 on the full matrix of options
# and for the half types on one option each (their kernels are the same item bodies)
PARAMS = [(d, name, make, fn, dt) for d, name, make, fn in ALL for dt in DTYPES
          if dt in (torch.float64, torch.float32) or not name.startswith("huber_nll")
          or name.endswith("huber-full-v") or name.endswith("laplace-diagonal-mu")]
PARAM_IDS = [f"{name}-d{d}-{str(dt).split('.')[-1]}" for d, name, _, _, dt in PARAMS]


@pytest.mark.parametrize("d,name,make,fn,dtype", PARAMS, ids=PARAM_IDS)
def test_one_and_two_threads_agree_bitwise(threads, d, name, make, fn, dtype):
    inputs = make(dtype)
    threads(1)
    one = _with_grads(fn, inputs)
    threads(2)
    two = _with_grads(fn, inputs)
    _assert_same(one, two, f"{name} d={d} {dtype}: 1 vs 2 threads")


@pytest.mark.parametrize("d,name,make,fn,dtype", PARAMS, ids=PARAM_IDS)
def test_result_does_not_depend_on_batch_position(threads, d, name, make, fn, dtype):
    threads(2)
    inputs = make(dtype)
    base = _with_grads(fn, inputs)
    for shift in SHIFTS:
        index = torch.roll(torch.arange(N), shift)
        moved = _with_grads(fn, inputs, index)
        _assert_same([x[index] for x in base], moved, f"{name} d={d} {dtype}: shift {shift}")
    # a few items alone: a partial block, at lane 0
    for items in ([23], [5, 11, 41, 47, N - 1]):
        index = torch.tensor(items)
        alone = _with_grads(fn, inputs, index)
        _assert_same([x[index] for x in base], alone, f"{name} d={d} {dtype}: items {items} alone")


@pytest.mark.parametrize("d,name,make,fn,dtype", PARAMS, ids=PARAM_IDS)
def test_nan_item_leaves_the_others_untouched(threads, d, name, make, fn, dtype):
    threads(2)
    inputs = make(dtype)
    clean = _with_grads(fn, inputs)
    bad = [x.clone() for x in inputs]
    poisoned = torch.tensor([0, 9, 10, 17, 2048, 2049, N - 1])  # lane 0, block edges, chunk edge, last
    bad[0][poisoned] = float("nan")
    dirty = _with_grads(fn, tuple(bad))
    keep = torch.ones(N, dtype=torch.bool)
    keep[poisoned] = False
    _assert_same([x[keep] for x in clean], [x[keep] for x in dirty], f"{name} d={d} {dtype}: NaN neighbours")


# ---- symeig backward with an eigenvector upstream gradient (the gauge-invariant V*V above
# exercises it only through V*V); and huber_fuse
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_symeig_backward_op_thread_and_position_invariant(threads, d, dtype):
    B = _symmetric_batch(d, dtype)
    L, V = probreg.symeig(B)
    g = torch.Generator().manual_seed(9)
    gL = torch.randn(L.shape, generator=g, dtype=torch.float64).to(dtype)
    gV = torch.randn(V.shape, generator=g, dtype=torch.float64).to(dtype)
    run = lambda *xs: (torch.ops.probreg._symeig_backward(*xs),)  # noqa: E731
    threads(1)
    one = run(gL, gV, L, V)
    threads(2)
    two = run(gL, gV, L, V)
    _assert_same(one, two, "symeig backward: threads")
    moved = run(*(torch.roll(x, 5, 0) for x in (gL, gV, L, V)))
    _assert_same([torch.roll(one[0], 5, 0)], moved, "symeig backward: position")


def _fuse_inputs(d, dtype, problems=1037, n=3, seed=3):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(problems, n, d, generator=g, dtype=torch.float64)
    M = torch.randn(problems, n, d, d, generator=g, dtype=torch.float64)
    A = M @ M.mT + 0.1 * torch.eye(d, dtype=torch.float64)
    w = torch.rand(problems, n, generator=g, dtype=torch.float64)
    w[3::17, 0] = 0.0
    return v.to(dtype), A.to(dtype), w.to(dtype)


def _fuse(v, A, w):
    r = probreg.huber_fuse(v, A, w, delta=0.8)
    return r.y, r.hessian, r.iterations, r.converged


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_huber_fuse_thread_and_nan_invariant(threads, d, dtype):
    inputs = _fuse_inputs(d, dtype)
    threads(1)
    one = _with_grads(_fuse, inputs)
    threads(2)
    two = _with_grads(_fuse, inputs)
    _assert_same(one, two, "huber_fuse: threads")
    bad = [x.clone() for x in inputs]
    bad[0][[0, 8, 500]] = float("nan")
    dirty = _with_grads(_fuse, tuple(bad))
    keep = torch.ones(inputs[0].shape[0], dtype=torch.bool)
    keep[[0, 8, 500]] = False
    _assert_same([x[keep] for x in one], [x[keep] for x in dirty], "huber_fuse: NaN neighbours")


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_huber_fuse_position_invariant(threads, d, dtype):
    threads(2)
    inputs = _fuse_inputs(d, dtype)
    base = _with_grads(_fuse, inputs)
    index = torch.roll(torch.arange(inputs[0].shape[0]), 3)
    moved = _with_grads(_fuse, inputs, index)
    _assert_same([x[index] for x in base], moved, "huber_fuse: position")
    items = torch.tensor([5, 500, inputs[0].shape[0] - 1])  # a partial block at lane 0
    alone = _with_grads(_fuse, inputs, items)
    _assert_same([x[items] for x in base], alone, "huber_fuse: items alone")
