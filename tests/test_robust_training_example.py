"""Fast-mode runs of examples/robust_training.py, imported by path."""

import json
import math
from pathlib import Path

import pytest
import torch

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
        assert f"{r['method']:<14} {r['rmse']:>7.4f}" in printed  # the table shows the returned numbers
    by_key = {(r["dim"], r["method"]): r for r in rows}
    for d in dims:
        l2 = by_key[(d, "l2")]["rmse"]
        # Even in fast mode, 30% one-sided outliers bias L2 by several tenths, and the clean
        # function itself has RMS ~1: every robust method must beat L2.
        for m in methods:
            if m != "l2":
                assert by_key[(d, m)]["rmse"] < l2, (d, m, by_key[(d, m)]["rmse"], l2)
        for flagging in ("deepgum", "huber+outliers"):
            if flagging in methods:
                row = by_key[(d, flagging)]
                assert row["outlier_precision"] >= 0.9 and row["outlier_recall"] >= 0.8, row
    return printed


def test_fast_mode_all_arms(example, capsys, tmp_path):
    threads = torch.get_num_threads()
    rows = example.main(["--fast", "--no-progress", "--out", str(tmp_path)])
    assert torch.get_num_threads() == threads  # main restores the thread setting
    _check_rows(rows, list(example.METHODS), [1, 2], capsys)
    by_key = {(r["dim"], r["method"]): r["rmse"] for r in rows}
    for d in (1, 2):
        # the outlier component removes the Huber NLL's bias under one-sided outliers
        assert by_key[(d, "huber+outliers")] < 0.6 * by_key[(d, "huber")]
    with open(tmp_path / "robust_training.json") as f:
        assert json.load(f)["rows"] == rows
    with open(tmp_path / "robust_training.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_one_dimension_subset(example, capsys, tmp_path):
    methods = ["l2", "huber", "deepgum"]
    rows = example.main(["--fast", "--no-progress", "--methods", ",".join(methods), "--dims", "1",
                         "--delta", "0.5", "--out", str(tmp_path)])
    _check_rows(rows, methods, [1], capsys)


def test_bad_arguments_are_rejected(example):
    with pytest.raises(SystemExit):
        example.main(["--fast", "--methods", "l2,svm"])
    with pytest.raises(SystemExit):
        example.main(["--fast", "--dims", "3"])
    with pytest.raises(SystemExit):
        example.main(["--fast", "--delta", "0"])
    with pytest.raises(SystemExit):
        example.main(["--fast", "--methods", "huber+outliers", "--outlier-fraction", "0"])
