"""tools/gpu_session.sh quick (issue 18) must not be found broken in a GPU window: its
syntax, and tools/gpu_summary.py's verdicts on a hand-written result file and step log.
(The whole dry run, `bash tools/gpu_session.sh quick OUTDIR --dry-run`, takes minutes on
2 cores and is run by hand before a GPU session.)"""
import json
import os
import subprocess

from helpers import ROOT, load_module


def test_gpu_session_script_parses():
    subprocess.run(["bash", "-n", os.path.join(ROOT, "tools", "gpu_session.sh")], check=True)


def _row(op, impl, mode, batch, **extra):
    return {"op": op, "d": 2, "impl": impl, "mode": mode, "batch": batch, "dtype": "float32", **extra}


def test_gpu_summary_verdicts(tmp_path):
    big = 2**24
    suites = {
        "spd": [_row("spd_from_raw", "probreg", "forward+backward", 2**20, frac_of_copy=0.1),
                _row("spd_from_raw", "probreg", "forward+backward", big, frac_of_copy=0.85,
                     speedup_vs_eager=250.0, speedup_vs_compiled=2.5)],
        "nll": [_row("huber_nll", "probreg", "forward+backward", big, covariance="full", frac_of_copy=0.5,
                     speedup_vs_eager=float("nan"), speedup_vs_compiled=4.0)],
        "fuse": [{"op": "huber_fuse", "d": 2, "n": 2, "impl": "probreg", "mode": "forward", "batch": big,
                  "speedup_vs_eager": 150.0}],
    }
    with open(tmp_path / "nvidia-h200.json", "w") as f:
        json.dump({"environment": {"gpu": "NVIDIA H200"}, "suites": suites}, f)
    log = "\n".join([
        "==== step tests: timeout 75s: python -m pytest ...", "12 passed, 3 skipped in 9.1s",
        "---- tests exit 0 after 10s (total 90s)",
        "==== step memcheck: timeout 45s: compute-sanitizer ...", "========= ERROR SUMMARY: 2 errors",
        "---- memcheck exit 9 after 30s (total 120s)",
    ])
    (tmp_path / "quick.log").write_text(log + "\n")
    tool = load_module(os.path.join(ROOT, "tools", "gpu_summary.py"), "gpu_summary")
    text = tool.summarize(str(tmp_path))
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in text.splitlines() if line.startswith("| ")}
    spd = "spd_from_raw d=2 fwd+bwd batch=16777216"
    nll = "huber_nll d=2 fwd+bwd batch=16777216"
    assert "85.0%" in rows[(spd, "frac_of_copy")] and rows[(spd, "frac_of_copy")].endswith("| met |")
    assert rows[(spd, "speedup_vs_eager")].endswith("| met |")
    assert "2.5x" in rows[(spd, "speedup_vs_compiled")] and "MISSED" in rows[(spd, "speedup_vs_compiled")]
    assert "MISSED" in rows[(nll, "frac_of_copy")]
    assert rows[(nll, "speedup_vs_eager")].endswith("| not measured |")
    assert "150.0x" in text and rows[("huber_fuse n=2 d=2 fwd batch=16777216", "speedup_vs_eager (batched eager MM)")].endswith("| met |")
    assert "12 passed, 3 skipped" in rows[("CUDA tests", "pytest")] and rows[("CUDA tests", "pytest")].endswith("| met |")
    assert rows[("compute-sanitizer memcheck", "errors")].endswith("| 2 | MISSED |")
    assert (tmp_path / "summary.md").read_text() == text
