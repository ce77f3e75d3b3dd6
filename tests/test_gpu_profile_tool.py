"""tools/gpu_profile.py (the roofline diagnosis of tools/gpu_session.sh profile) runs: a
CPU dry run here, so a GPU session does not find it broken."""
import json
import os

from helpers import ROOT, load_module


def _tool():
    return load_module(os.path.join(ROOT, "tools", "gpu_profile.py"), "gpu_profile")


def test_gpu_profile_dry_run(tmp_path):
    tool = _tool()
    assert tool.main(["--device", "cpu", "--batch", "256", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "profile.json") as f:
        rows = json.load(f)["rows"]
    cases = {"spd_from_raw d=2", "spd_from_raw d=3", "huber_nll full d=2", "huber_nll full d=3"}
    assert {(r["case"], r["policy"]) for r in rows} == {(c, p) for c in cases for p in ("mixed", "double")}
    for r in rows:
        assert r["fwd_ms"] > 0 and r["bwd_ms"] > 0 and r["autograd_ms"] > 0
        assert 0 < r["kernels_frac_of_copy"] < 100 and 0 < r["autograd_frac_of_copy"] < 100
    assert "PROBREG_CUDA_FLOAT32_COMPUTE" not in os.environ


def test_gpu_profile_once_workload():
    assert _tool().main(["--device", "cpu", "--batch", "64", "--once"]) == 0
