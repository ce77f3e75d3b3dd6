"""A/B of huber_nll's two CPU autograd routes (probreg/_autograd.py): the one-pass route
(_huber_nll_and_grad in the forward, the gradient scaled in the backward) against the
two-pass rule (huber_nll forward, _huber_nll_backward), and the operators alone.

    python tools/nll_route_ab.py [--batch-log2 20] [--reps 9]

Full covariance, float32, reduction="mean", forward+backward; prints the median of
interleaved runs in ms. The default route is the one-pass route at d = 2 and 3
(probreg/_autograd.py _huber_nll_one_pass). The two-pass rule is selected by opening a forward-AD dual level
(the one-pass route does not apply there; no tensor is dual, so nothing else changes).
The benchmark suite (python -m benchmarks) times whatever route applies; this script
only decides between them.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

import probreg
from probreg._ops import ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-log2", type=int, default=20)
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    n = 2**args.batch_log2
    gen = torch.Generator().manual_seed(0)
    for d in (2, 3):
        width = probreg.nll.pred_width(d, "full")
        pred, target = torch.randn(n, width, generator=gen), torch.randn(n, d, generator=gen)
        options = (1.0, 1.0, 0, 2, False)

        def route(context):
            def run():
                p = pred.detach().requires_grad_(True)
                with context():
                    loss = probreg.huber_nll(p, target, 1.0, 1.0)
                loss.backward()
            return run

        unit = torch.ones(1).expand(n)
        runs = {
            "autograd, default route": route(contextlib.nullcontext),
            "autograd, two-pass rule forced": route(torch.autograd.forward_ad.dual_level),
            "_huber_nll_and_grad": lambda: ops._huber_nll_and_grad(pred, target, *options, False),
            "huber_nll + _huber_nll_backward": lambda: (ops.huber_nll(pred, target, *options),
                                                        ops._huber_nll_backward(unit, pred, target, *options, False)),
        }
        times = {name: [] for name in runs}
        for run in runs.values():
            run()
        for _ in range(args.reps):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - start) * 1e3)
        summary = ", ".join(f"{name} {statistics.median(t):.1f} ms" for name, t in times.items())
        print(f"huber_nll full d={d} batch=2^{args.batch_log2} float32 ({torch.get_num_threads()} threads): {summary}")


if __name__ == "__main__":
    main()
