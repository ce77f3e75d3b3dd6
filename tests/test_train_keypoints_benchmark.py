"""Smoke run of the training benchmark (benchmarks/train_keypoints.py): a few steps of two
arms, the result files, --merge, and the naive / head models' step-0 state."""
import json
import math

import pytest
import torch

from benchmarks import train_keypoints as bench


def test_smoke_run_and_merge(tmp_path, capsys):
    common = ["--fast", "--steps", "3", "--seeds", "1", "--jobs", "1", "--no-progress", "--out", str(tmp_path)]
    out = bench.main(common + ["--arms", "mse,huber+outliers"])
    assert list(out["results"]) == ["mse", "huber+outliers"]
    robust = out["results"]["huber+outliers"][0]
    for key in ("rmse", "worst_keypoint_rmse", "nll", "nll_val", "cover50", "cover95", "median_A"):
        assert math.isfinite(robust[key]), key
    assert "nll" not in out["results"]["mse"][0]
    bench.main(common + ["--arms", "laplace", "--merge"])
    with open(tmp_path / "training-main-fast.json") as f:
        saved = json.load(f)
    assert list(saved["results"]) == ["mse", "laplace", "huber+outliers"]  # the experiment's order
    assert saved["commands"]["laplace"].endswith("--merge") and "--arms mse,huber+outliers" in saved["commands"]["mse"]
    table = (tmp_path / "training-main-fast.md").read_text()
    assert "| laplace |" in table and "| huber+outliers |" in table


def test_bad_arguments():
    with pytest.raises(SystemExit):
        bench.main(["--arms", "nope"])
    with pytest.raises(SystemExit):
        bench.main(["--jobs", "0"])


def test_step_zero_models():
    """The recipe head starts at A = I / spread for every image; the naive model at
    A = g(l) of a random linear layer (about e^-1 I)."""
    data = bench.make_keypoint_images(64, seed=1)
    torch.manual_seed(0)
    recipe = bench.SoftArgmaxNet(bench.RECIPE, data.labels)
    with torch.no_grad():
        A = recipe.distribution(recipe(data.images)).precision_sqrt
    spread = 1.4826 * (data.labels - data.labels.median(0).values).abs().median()
    torch.testing.assert_close(A, torch.eye(2).expand_as(A) / spread, rtol=1e-5, atol=1e-6)
    naive = bench.SoftArgmaxNet(bench.NAIVE, data.labels)
    with torch.no_grad():
        eig = torch.linalg.eigvalsh(naive.distribution(naive(data.images)).precision_sqrt)
    assert 0.1 < float(eig.median()) < 1.0
