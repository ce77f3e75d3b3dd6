"""Diagnosis of the roofline targets of issue 5 on a GPU (tools/gpu_session.sh profile).

For spd_from_raw and huber_nll (full covariance, huber family), d = 2 and 3, float32, at
--batch items (default 2^22): the time of the forward and backward kernels called
directly (torch.ops.probreg, no autograd) and of forward+backward through autograd (what
the benchmark suite times), under both float32 compute policies of the CUDA kernels
(PROBREG_CUDA_FLOAT32_COMPUTE unset = mixed, and =double; kernel_api.h), each as a
fraction of the device copy bandwidth over the bytes the benchmark suite counts.
Writes <out>/profile.json and prints a markdown table.

--once runs every kernel once per policy and exits: the workload for Nsight Compute
(`ncu ... python tools/gpu_profile.py --once`), which then reports per-kernel occupancy,
registers, DRAM and SM throughput, and warp stall reasons.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import probreg  # noqa: E402
from benchmarks import bench_nll, bench_spd  # noqa: E402
from benchmarks.common import copy_bandwidth_gbps, environment, markdown_table, time_ms  # noqa: E402

ops = torch.ops.probreg
POLICIES = ["mixed", "double"]
DELTA, THETA = 1.0, 1.0
HUBER, FULL = 0, 2


def _set_policy(policy: str) -> None:
    if policy == "double":
        os.environ["PROBREG_CUDA_FLOAT32_COMPUTE"] = "double"
    else:
        os.environ.pop("PROBREG_CUDA_FLOAT32_COMPUTE", None)


def _cases(batch: int, device: str):
    """name -> (d, bytes of forward+backward, forward, backward, autograd fwd+bwd)."""
    cases = {}
    gen = torch.Generator().manual_seed(0)
    for d in (2, 3):
        P = d * (d + 1) // 2
        raw = torch.randn(batch, P, generator=gen).to(device)
        grad_A = torch.randn(batch, d, d, generator=gen).to(device)

        def spd_autograd(raw=raw, grad_A=grad_A):
            r = raw.detach().requires_grad_(True)
            probreg.spd_from_raw(r, THETA).backward(grad_A)

        cases[f"spd_from_raw d={d}"] = (
            bench_spd.bytes_moved(d, batch, "forward+backward"),
            lambda raw=raw: ops.spd_from_raw(raw, THETA),
            lambda raw=raw, grad_A=grad_A: ops._spd_from_raw_backward(grad_A, raw, THETA),
            spd_autograd)
        width = d + P
        pred = torch.randn(batch, width, generator=gen).to(device)
        target = torch.randn(batch, d, generator=gen).to(device)
        grad_loss = torch.full((batch,), 1.0 / batch, device=device)

        def nll_autograd(pred=pred, target=target):
            p = pred.detach().requires_grad_(True)
            probreg.huber_nll(p, target, DELTA, THETA, covariance="full", reduction="mean").backward()

        cases[f"huber_nll full d={d}"] = (
            bench_nll.bytes_moved(d, width, batch, "forward+backward"),
            lambda pred=pred, target=target: ops.huber_nll(pred, target, DELTA, THETA, HUBER, FULL, False),
            lambda pred=pred, target=target, g=grad_loss: ops._huber_nll_backward(
                g, pred, target, DELTA, THETA, HUBER, FULL, False, False),
            nll_autograd)
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2**22)
    parser.add_argument("--out", default="build/gpu-results")
    parser.add_argument("--once", action="store_true", help="run each kernel once per policy (for ncu)")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of this script (the policy is CUDA-only)")
    args = parser.parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_profile: no CUDA device")
        return 1
    cases = _cases(args.batch, device)
    if args.once:
        for policy in POLICIES:
            _set_policy(policy)
            for _, fwd, bwd, _ in cases.values():
                fwd()
                bwd()
        if device == "cuda":
            torch.cuda.synchronize()
        _set_policy("mixed")
        return 0
    copy = copy_bandwidth_gbps(device)
    rows = []
    for policy in POLICIES:
        _set_policy(policy)
        for name, (nbytes, fwd, bwd, autograd) in cases.items():
            ms_fwd = time_ms(fwd, device)
            ms_bwd = time_ms(bwd, device)
            ms_autograd = time_ms(autograd, device)
            rows.append({
                "case": name, "policy": policy, "batch": args.batch,
                "fwd_ms": ms_fwd, "bwd_ms": ms_bwd, "kernels_frac_of_copy": nbytes / ((ms_fwd + ms_bwd) * 1e-3) / 1e9 / copy,
                "autograd_ms": ms_autograd, "autograd_frac_of_copy": nbytes / (ms_autograd * 1e-3) / 1e9 / copy,
            })
    _set_policy("mixed")
    table = markdown_table(rows, ["case", "policy", "fwd_ms", "bwd_ms", "kernels_frac_of_copy", "autograd_ms",
                                  "autograd_frac_of_copy"])
    print(f"copy bandwidth: {copy:.0f} GB/s\n\n{table}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "profile.json"), "w") as f:
        json.dump({"environment": environment(device), "copy_gbps": copy, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
