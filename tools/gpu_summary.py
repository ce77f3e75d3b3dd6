"""Summary of a `tools/gpu_session.sh quick` run: the issue-18 targets against what the run
measured, read from the benchmark result file and the step logs in OUTDIR.

    python tools/gpu_summary.py OUTDIR [--device-label nvidia-h200]

Writes OUTDIR/summary.md and prints it. Exit status 0 whether or not targets are met (the
summary says which are); 2 when the benchmark results are missing.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

BATCH = 2**24
# (suite, row filter, label) of the bandwidth/speedup targets, forward+backward, d = 2, float32.
RATIO_TARGETS = {"frac_of_copy": 0.80, "speedup_vs_eager": 100.0, "speedup_vs_compiled": 3.0}
FUSE_TARGET = 100.0


def _largest(rows, **match):
    sel = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    if not sel:
        return None
    batch = max(r["batch"] for r in sel)
    return next(r for r in sel if r["batch"] == batch)


def _verdict(value, target):
    if value is None or value != value:
        return "not measured"
    return "met" if value >= target else "MISSED"


def _pytest_counts(text: str) -> str:
    lines = [l for l in text.splitlines() if re.search(r"\b(passed|failed|error|skipped|deselected)\b", l) and " in " in l]
    return lines[-1].strip("= ") if lines else "no pytest summary line (see the log)"


def _section(log: str, step: str) -> str:
    """The log of one step: from its "==== step NAME:" line to its "---- NAME exit RC" line."""
    m = re.search(rf"^==== step {re.escape(step)}:.*?^---- {re.escape(step)} exit -?\d+.*?$", log, re.S | re.M)
    return m.group(0) if m else ""


def _exit_code(section: str):
    m = re.search(r"^---- \S+ exit (-?\d+)", section, re.M)
    return int(m.group(1)) if m else None


def summarize(outdir: str, label: str = None) -> str:
    jsons = sorted(glob.glob(os.path.join(outdir, f"{label}.json" if label else "*.json")))
    jsons = [j for j in jsons if not j.endswith("profile.json")]
    if not jsons:
        raise FileNotFoundError(f"no benchmark result (*.json) in {outdir}")
    with open(jsons[0]) as f:
        payload = json.load(f)
    suites = payload["suites"]
    env = payload["environment"]
    log_path = os.path.join(outdir, "quick.log")
    log = open(log_path).read() if os.path.exists(log_path) else ""
    out = [f"# GPU quick check: {os.path.basename(jsons[0])[:-5]}", "",
           "Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), ""]
    out += ["| case | measure | target | measured | verdict |", "|---|---|---|---|---|"]
    for suite, match in (("spd", {"op": "spd_from_raw", "d": 2}),
                         ("nll", {"op": "huber_nll", "d": 2, "covariance": "full"})):
        row = _largest(suites.get(suite, []), impl="probreg", mode="forward+backward", **match)
        case = f"{match['op']} d=2 fwd+bwd" + (f" batch={row['batch']}" if row else "")
        for key, target in RATIO_TARGETS.items():
            value = row.get(key) if row else None
            shown = "-" if value is None else (f"{value * 100:.1f}%" if key == "frac_of_copy" else f"{value:.1f}x")
            goal = f">= {target * 100:.0f}%" if key == "frac_of_copy" else f">= {target:.0f}x"
            out.append(f"| {case} | {key} | {goal} | {shown} | {_verdict(value, target)} |")
        if row and row["batch"] != BATCH:
            out.append(f"| {case} | batch | {BATCH} | {row['batch']} | smaller than the target batch |")
    fuse = _largest(suites.get("fuse", []), impl="probreg", mode="forward", n=2)
    value = fuse.get("speedup_vs_eager") if fuse else None
    case = "huber_fuse n=2 d=2 fwd" + (f" batch={fuse['batch']}" if fuse else "")
    out.append(f"| {case} | speedup_vs_eager (batched eager MM) | >= {FUSE_TARGET:.0f}x | "
               f"{'-' if value is None else f'{value:.1f}x'} | {_verdict(value, FUSE_TARGET)} |")
    tests = _section(log, "tests")
    out.append(f"| CUDA tests | pytest | all pass | {_pytest_counts(tests)} | "
               f"{'met' if _exit_code(tests) == 0 else ('not run' if not tests else 'MISSED')} |")
    memcheck = _section(log, "memcheck")
    m = re.search(r"ERROR SUMMARY: (\d+) error", memcheck)
    clean = bool(m) and m.group(1) == "0" and _exit_code(memcheck) == 0
    out.append(f"| compute-sanitizer memcheck | errors | 0 | {m.group(1) if m else '-'} | "
               f"{'met' if clean else ('not run' if not m else 'MISSED')} |")
    out += ["", "Step exit codes and times:", ""]
    out += [f"- {l[5:].strip()}" for l in log.splitlines() if l.startswith("---- ")]
    text = "\n".join(out) + "\n"
    with open(os.path.join(outdir, "summary.md"), "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("outdir")
    parser.add_argument("--device-label", help="result file stem, e.g. nvidia-h200 (default: the first *.json)")
    args = parser.parse_args(argv)
    try:
        print(summarize(args.outdir, args.device_label))
    except FileNotFoundError as exc:
        print(f"gpu_summary: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
