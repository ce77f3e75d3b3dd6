"""Smoke test of an installed probreg: run it from a directory outside the source checkout.

    python /path/to/checkout/tools/smoke_install.py                 # a regular install
    python /path/to/checkout/tools/smoke_install.py --editable SRC  # an editable install of SRC

Checks that probreg is imported from where the install put it (this interpreter's
site-packages; for --editable, the source tree SRC through the editable finder, never
through the current directory), that the installed metadata agrees with the package
(version, MIT licence expression and LICENSE file, py.typed), then runs forward and
backward of spd_from_raw, huber_nll and huber_fuse on the CPU (and CUDA when available) in
float64 and compares them with probreg.reference. Prints one line per check; exits non-zero
on the first mismatch.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import sysconfig

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([path, directory]) == directory


def check_location(probreg, editable_source):
    location = os.path.dirname(probreg.__file__)
    if os.path.realpath(location) == os.path.realpath(os.path.join(os.getcwd(), "probreg")):
        sys.exit(f"smoke: probreg imported from the current directory ({location}); run from elsewhere")
    if editable_source is not None:
        if not _inside(location, editable_source):
            sys.exit(f"smoke: editable install expected under {editable_source}, probreg is at {location}")
        return location
    site_dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    if not any(_inside(location, d) for d in site_dirs):
        sys.exit(f"smoke: probreg at {location} is not in this interpreter's site-packages {sorted(site_dirs)}")
    if _inside(location, CHECKOUT):
        sys.exit(f"smoke: probreg imported from the checkout {CHECKOUT}, not from the install")
    return location


def check_metadata(probreg):
    dist = importlib.metadata.distribution("probreg")
    if dist.version != probreg.__version__:
        sys.exit(f"smoke: installed metadata says {dist.version}, probreg.__version__ is {probreg.__version__}")
    if dist.metadata["License-Expression"] != "MIT":
        sys.exit(f"smoke: License-Expression is {dist.metadata['License-Expression']!r}, expected 'MIT'")
    licence_files = [f for f in (dist.files or []) if f.name == "LICENSE"]
    if not licence_files or "MIT License" not in licence_files[0].read_text():
        sys.exit(f"smoke: no MIT LICENSE file among the installed files of probreg {dist.version}")
    if not os.path.isfile(os.path.join(os.path.dirname(probreg.__file__), "py.typed")):
        sys.exit("smoke: probreg/py.typed is not installed")


def _compare(name, device, got, expected, rtol, atol):
    import torch

    for i, (g, e) in enumerate(zip(got, expected)):
        try:
            torch.testing.assert_close(g, e, rtol=rtol, atol=atol)
        except AssertionError as exc:
            sys.exit(f"smoke: {name} on {device}, output {i}: mismatch with probreg.reference\n{exc}")
    print(f"smoke: {name:<32} {device:<5} matches probreg.reference")


def _forward_backward(fn, inputs, seed):
    """fn(*inputs) and the gradient of <fn(*inputs), C> with respect to every input, C a
    fixed random cotangent."""
    import torch

    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype).to(out.device)
    grads = torch.autograd.grad((out * cotangent).sum(), leaves)
    return [out.detach(), *grads]


def check_ops(device):
    import torch

    import probreg
    from probreg import reference

    gen = torch.Generator().manual_seed(0)
    f64 = dict(dtype=torch.float64)
    for d in (2, 3):
        P = d * (d + 1) // 2
        raw = torch.randn(64, P, generator=gen, **f64).to(device)
        _compare(f"spd_from_raw d={d} fwd+bwd", device,
                 _forward_backward(lambda r: probreg.spd_from_raw(r, theta=0.5), [raw], seed=d),
                 _forward_backward(lambda r: reference.spd_from_raw(r, theta=0.5), [raw], seed=d),
                 rtol=1e-9, atol=1e-11)

        pred = torch.randn(64, d + P, generator=gen, **f64).to(device)
        target = torch.randn(64, d, generator=gen, **f64).to(device)
        for parameterization in ("v", "mu"):
            options = dict(delta=0.7, theta=0.3, parameterization=parameterization, reduction="none")
            _compare(f"huber_nll d={d} {parameterization} fwd+bwd", device,
                     _forward_backward(lambda p, t: probreg.huber_nll(p, t, **options), [pred, target], seed=d),
                     _forward_backward(lambda p, t: reference.huber_nll_reference(p, t, **options), [pred, target],
                                       seed=d),
                     rtol=1e-9, atol=1e-11)

        v = 3 * torch.randn(16, 5, d, generator=gen, **f64)
        A = torch.eye(d, **f64) + 0.3 * torch.randn(16, 5, d, d, generator=gen, **f64)
        weight = torch.rand(16, 5, generator=gen, **f64) + 0.1
        inputs = [t.to(device) for t in (v, A, weight)]
        _compare(f"huber_fuse d={d} fwd+bwd", device,
                 _forward_backward(lambda v, A, w: probreg.huber_fuse(v, A, w, 0.8, tol=1e-13).y, inputs, seed=d),
                 _forward_backward(lambda v, A, w: reference.huber_fuse(v, A, w, 0.8, tol=1e-13)[0], inputs, seed=d),
                 rtol=1e-8, atol=1e-10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--editable", metavar="SRC", help="probreg is an editable install of the source tree SRC")
    args = parser.parse_args()
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != os.path.realpath(os.path.dirname(__file__))]

    import torch

    import probreg

    location = check_location(probreg, args.editable)
    print(f"smoke: probreg {probreg.__version__} from {location} (torch {torch.__version__})")
    check_metadata(probreg)
    print("smoke: metadata: version, License-Expression MIT, LICENSE file, py.typed")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        check_ops(device)
    print(f"smoke: OK ({', '.join(devices)})")


if __name__ == "__main__":
    main()
