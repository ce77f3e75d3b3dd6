"""Fast-mode runs of examples/robust_training.py, imported by path."""

import math
from pathlib import Path

import pytest
import torch

import probreg
from helpers import load_module

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "robust_training.py"


@pytest.fixture(scope="module")
def example():
    return load_module(str(EXAMPLE), "robust_training_example")


def _check_rows(rows, methods, dims, capsys):
    assert [(r["dim"], r["method"]) for r in rows] == [(d, m) for d in dims for m in methods]
    printed = capsys.readouterr().out
    for r in rows:
        assert math.isfinite(r["rmse"]) and math.isfinite(r["median"]) and r["seconds"] >= 0
        assert 0 <= r["median"] <= r["rmse"] * 1.5 + 1e-9
        assert f"{r['method']:<8} {r['rmse']:>7.4f}" in printed  # the table shows the returned numbers
    by_key = {(r["dim"], r["method"]): r for r in rows}
    for d in dims:
        l2 = by_key[(d, "l2")]["rmse"]
        # Even in fast mode, 30% one-sided outliers bias L2 by several tenths, and the clean
        # function itself has RMS ~1: every robust method must beat L2.
        for m in methods:
            if m != "l2":
                assert by_key[(d, m)]["rmse"] < l2, (d, m, by_key[(d, m)]["rmse"], l2)
        gum_row = by_key[(d, "deepgum")]
        assert gum_row["outlier_precision"] >= 0.9 and gum_row["outlier_recall"] >= 0.8
    return printed


def test_fast_mode_without_huber_arm(example, capsys):
    methods = ["l2", "deepgum", "ebm"]
    threads = torch.get_num_threads()
    rows = example.main(["--fast", "--methods", ",".join(methods)])
    assert torch.get_num_threads() == threads  # main restores the thread setting
    _check_rows(rows, methods, [1, 2], capsys)


@pytest.mark.skipif(not hasattr(probreg, "huber_nll"),
                    reason="needs probreg.huber_nll from the compiled probreg core (not built in this branch)")
def test_fast_mode_all_arms(example, capsys):
    rows = example.main(["--fast"])
    _check_rows(rows, list(example.METHODS), [1, 2], capsys)


def test_bad_arguments_are_rejected(example):
    with pytest.raises(SystemExit):
        example.main(["--fast", "--methods", "l2,svm"])
    with pytest.raises(SystemExit):
        example.main(["--fast", "--dims", "3"])
    if not hasattr(probreg, "huber_nll"):  # asking for the huber arm without the core fails up front
        with pytest.raises(SystemExit):
            example.main(["--fast"])
