"""Entry point of the benchmark suite: `python -m benchmarks [--device cpu|cuda] [--quick]`.

Runs every suite on every available device (CPU always, CUDA when present), prints
markdown tables with speedup columns, and writes benchmarks/results/<device>.json and
.md and a throughput plot. With --merge, the suites run now replace theirs in an
existing <device>.json and the other suites are kept (so suites can run in separate
invocations, e.g. under a per-command time limit); each suite records its command.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

import torch

from . import common
from .common import add_speedups, copy_bandwidth_gbps, device_label, environment, markdown_table, write_json
from .plot import plot_throughput

SUITES = ["spd", "nll", "fuse", "second_order"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", action="append", choices=["cpu", "cuda"], help="default: cpu and cuda if available")
    parser.add_argument("--suite", action="append", choices=SUITES, help="default: all")
    parser.add_argument("--quick", action="store_true", help="small batches only (smoke run)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--merge", action="store_true", help="keep the other suites of an existing result file")
    parser.add_argument("--batches", type=_log2_list, help="log2 batch sizes for every suite, e.g. 20,22,24 "
                        "(also runs the eager peers that the defaults skip at the largest batches)")
    parser.add_argument("--dims", type=_int_list, help="d values of the spd and nll suites, e.g. 2 or 2,3")
    parser.add_argument("--covariances", type=lambda t: t.split(","), help="covariance structures of the nll suite, "
                        "e.g. full (default full,diagonal)")
    parser.add_argument("--budget-s", type=float, help="cap on the seconds one timing may take (default 20)")
    args = parser.parse_args(argv)
    common.OVERRIDES.update(batches=args.batches, dims=args.dims, budget_s=args.budget_s, covariances=args.covariances)

    os.makedirs(args.out, exist_ok=True)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    suites = args.suite or SUITES
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("benchmarks: CUDA requested but not available", file=sys.stderr)
            return 2
        env = environment(device)
        # The bandwidth ceiling, measured in the same run (device-to-device copy).
        env["copy_GB/s"] = round(copy_bandwidth_gbps(device, 1 << 26 if args.quick else 1 << 28), 1)
        print(f"\n## probreg benchmarks on {device}: " + ", ".join(f"{k}={v}" for k, v in env.items()))
        label = device_label(device) + ("-quick" if args.quick else "")
        json_path = os.path.join(args.out, label + ".json")
        command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
        payload = {"environment": env, "suites": {}, "commands": {}, "environments": {}}
        if args.merge and os.path.exists(json_path):
            with open(json_path) as f:
                previous = json.load(f)
            payload["suites"] = previous.get("suites", {})
            payload["commands"] = previous.get("commands") or {k: previous.get("command", "") for k in payload["suites"]}
            payload["environments"] = previous.get("environments") or {k: previous["environment"] for k in payload["suites"]}
        for name in suites:
            module = importlib.import_module(f".bench_{name}", __package__)
            started = time.perf_counter()
            rows = module.run(device, quick=args.quick)
            add_speedups(rows, module.GROUP_KEYS, "eager_reference", "speedup_vs_eager")
            for r in rows:
                if "GB/s" in r:
                    r["frac_of_copy"] = r["GB/s"] / env["copy_GB/s"]
            if any(r["impl"] == "closed_form_compiled" for r in rows):
                add_speedups(rows, module.GROUP_KEYS, "closed_form_compiled", "speedup_vs_compiled")
            print(f"\n### {name} ({time.perf_counter() - started:.0f} s)\n\n{markdown_table(rows, module.COLUMNS)}")
            if hasattr(module, "summary"):
                print("\n" + module.summary(rows))
            payload["suites"][name] = rows
            payload["commands"][name] = command
            payload["environments"][name] = env
        _write_results(payload, device, label, args.out)
    return 0


def _int_list(text: str):
    return [int(x) for x in text.split(",") if x.strip()]


def _log2_list(text: str):
    return [2**k for k in _int_list(text)]


def _write_results(payload: dict, device: str, label: str, out: str) -> None:
    """<label>.json, <label>.md (a table and headline per suite) and <label>.png."""
    env = payload["environment"]
    md = [f"# probreg benchmarks: {device_label(device)}", "",
          "Environment: " + ", ".join(f"{k}={v}" for k, v in env.items())]
    for name in [s for s in SUITES if s in payload["suites"]]:
        module = importlib.import_module(f".bench_{name}", __package__)
        rows = payload["suites"][name]
        suite_env = payload["environments"].get(name, env)
        md += ["", f"## {name}", "", f"Command: `{payload['commands'].get(name, '')}` (copy_GB/s={suite_env['copy_GB/s']})", "",
               markdown_table(rows, module.COLUMNS)]
        if hasattr(module, "summary"):
            md += ["", module.summary(rows)]
    all_rows = [r for rows in payload["suites"].values() for r in rows]
    png = plot_throughput(all_rows, env["copy_GB/s"], os.path.join(out, label + ".png"),
                          f"probreg throughput on {device_label(device)} (dashed: measured copy bandwidth)")
    if png:
        md += ["", f"![throughput]({os.path.basename(png)})"]
    write_json(os.path.join(out, label + ".json"), payload)
    with open(os.path.join(out, label + ".md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"\nwrote {os.path.join(out, label)}.{{json,md}}")


if __name__ == "__main__":
    sys.exit(main())
