"""Entry point of the benchmark suite: `python -m benchmarks [--device cpu|cuda] [--quick]`.

Runs every suite on every available device (CPU always, CUDA when present), prints
markdown tables with speedup columns, and writes benchmarks/results/<device>.json and
.md (and, on CUDA, a throughput plot).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import torch

from .common import add_speedups, copy_bandwidth_gbps, device_label, environment, markdown_table, write_json
from .plot import plot_throughput

SUITES = ["spd", "nll", "fuse"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", action="append", choices=["cpu", "cuda"], help="default: cpu and cuda if available")
    parser.add_argument("--suite", action="append", choices=SUITES, help="default: all")
    parser.add_argument("--quick", action="store_true", help="small batches only (smoke run)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)

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
        payload = {"environment": env, "command": "python -m benchmarks " + " ".join(argv or sys.argv[1:]), "suites": {}}
        md = [f"# probreg benchmarks: {device_label(device)}", "", "Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), ""]
        md.append(f"Command: `{payload['command']}`")
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
            table = markdown_table(rows, module.COLUMNS)
            print(f"\n### {name} ({time.perf_counter() - started:.0f} s)\n\n{table}")
            md += ["", f"## {name}", "", table]
            payload["suites"][name] = rows
            if hasattr(module, "summary"):
                summary = module.summary(rows)
                print("\n" + summary)
                md += ["", summary]
        label = device_label(device) + ("-quick" if args.quick else "")
        all_rows = [r for rows in payload["suites"].values() for r in rows]
        png = plot_throughput(all_rows, env["copy_GB/s"], os.path.join(args.out, label + ".png"),
                              f"probreg throughput on {device_label(device)} (dashed: measured copy bandwidth)")
        if png:
            md += ["", f"![throughput]({os.path.basename(png)})"]
        write_json(os.path.join(args.out, label + ".json"), payload)
        with open(os.path.join(args.out, label + ".md"), "w") as f:
            f.write("\n".join(md) + "\n")
        print(f"\nwrote {os.path.join(args.out, label)}.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
