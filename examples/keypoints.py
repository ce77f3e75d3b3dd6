"""Robust keypoint regression with probreg: the paper's loss ablation on synthetic data.

Trains a small MLP with a probreg.nn.PredictionHead to regress K 2-D keypoints
(synthetic_keypoints.py: heteroscedastic, anisotropic, rotated label noise plus a fraction of
gross outliers) with every family (huber, gauss, laplace, charbonnier) x covariance
(identity, diagonal, full), like tables 2-4 of the paper, and prints the mean location
error (against the clean keypoints) and the test NLL of the inlier labels (normalised,
nats per keypoint) as mean +- std over seeds. The head follows the README training recipe:
initialised from the training labels (PredictionHead.from_targets: A = I / spread at step
0), theta and delta at their defaults. One more run trains the Huber NLL with an outlier
component (probreg.nn.OutlierMixtureNLLLoss). The calibration figure (calibration.png)
shows, for the Huber full-covariance runs, the expected error from the predicted covariance
against the empirical error (paper figure 3) and the coverage of the p-probability regions
(HuberL2.region_radius) of the inlier labels against p.

    python examples/keypoints.py                 # full run (about 2 minutes on 2 cores)
    python examples/keypoints.py --fast          # seconds (what the tests run)
    python examples/keypoints.py --out DIR       # calibration.png and results.json in DIR
"""
from __future__ import annotations

import math
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import example_utils  # noqa: E402
from probreg.nn import PredictionHead  # noqa: E402
from synthetic_keypoints import INPUT_DIM, make_keypoint_data  # noqa: E402

FAMILIES = ["huber", "gauss", "laplace", "charbonnier"]
COVARIANCES = ["identity", "diagonal", "full"]
D = 2
DELTA = 1.0
OUTLIER_LOG_DENSITY = -math.log(16.0)  # synthetic_keypoints draws wrong labels uniformly in [-2, 2]^2
COVERAGE_LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


class KeypointNet(nn.Module):
    """MLP trunk + PredictionHead: inputs (N, INPUT_DIM) -> predictions (N, K, W) in the
    huber_nll layout (v-parameterisation). The head starts at A = init_precision * I and
    mu = init_location for every input (see probreg.nn)."""

    def __init__(self, num_keypoints: int, covariance: str, init_precision: float = 1.0, init_location=0.0,
                 hidden: int = 128):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(INPUT_DIM, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.head = PredictionHead(hidden, num_keypoints, D, covariance=covariance, init_precision=init_precision,
                                   init_location=init_location, delta=DELTA)

    @classmethod
    def for_labels(cls, labels: torch.Tensor, covariance: str, **kwargs) -> "KeypointNet":
        """Initialised from training labels (N, K, 2): their median and 1 / (1.4826 MAD)."""
        stats = PredictionHead.from_targets(1, labels)
        return cls(labels.shape[1], covariance, stats.init_precision, stats.init_location, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def train_one(family, covariance, train, test, steps, seed, batch_size=256, show_progress=True, outlier_fraction=0.0):
    """Adam (lr 2e-3, cosine schedule) on the family's NLL; returns (net, error, nll)."""
    torch.manual_seed(seed)
    net = KeypointNet.for_labels(train.labels, covariance)
    if outlier_fraction:
        loss_fn = net.head.loss(family, outlier_fraction=outlier_fraction, outlier_log_density=OUTLIER_LOG_DENSITY)
    else:
        loss_fn = net.head.loss(family)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    label = f"{family}{'+outliers' if outlier_fraction else ''}/{covariance} seed {seed}"
    n = train.inputs.shape[0]
    for _ in example_utils.progress(range(steps), label, show_progress):
        idx = torch.randint(0, n, (batch_size,))
        loss = loss_fn(net(train.inputs[idx]), train.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        pred = net(test.inputs)
        error = (net.head.location(pred) - test.clean).norm(dim=-1).mean().item()
        inlier = ~test.is_outlier
        nll = net.head.loss(family, reduction="none")(pred, test.labels)[inlier].mean().item()
    return net, error, nll


@torch.no_grad()
def calibration(net, test):
    """Per inlier label: expected error sqrt(tr Cov) (Cov = kappa (A^T A)^-1), empirical
    error |y - mu|, and the coverage of the p-regions for COVERAGE_LEVELS."""
    pred = net(test.inputs)
    dist = net.head.distribution(pred)
    keep = ~test.is_outlier
    expected_sq = torch.diagonal(dist.covariance_matrix, dim1=-2, dim2=-1).sum(-1)[keep]
    empirical_sq = ((test.labels - dist.loc) ** 2).sum(-1)[keep]
    radius = dist.radius(test.labels)[keep]
    radii = dist.region_radius(torch.tensor(COVERAGE_LEVELS))
    coverage = [(radius <= s).double().mean().item() for s in radii]
    order = torch.argsort(expected_sq)
    bins = torch.tensor_split(order, 20)
    exp_rms = torch.stack([expected_sq[b].mean().sqrt() for b in bins])
    emp_rms = torch.stack([empirical_sq[b].mean().sqrt() for b in bins])
    return {"expected_rms": exp_rms.tolist(), "empirical_rms": emp_rms.tolist(), "coverage": coverage,
            "median_empirical_over_expected": float((emp_rms / exp_rms).median())}


def calibration_figure(curves, out_dir):
    """curves: {label: calibration()} -> calibration.png (two panels)."""
    plt = example_utils.pyplot()
    fig, (ax_rms, ax_cov) = plt.subplots(1, 2, figsize=(9.5, 4.4))
    hi = 0.0
    for (label, c), colour in zip(curves.items(), ["tab:blue", "tab:orange"]):
        ax_rms.plot(c["expected_rms"], c["empirical_rms"], "x", color=colour, label=label)
        ax_cov.plot(COVERAGE_LEVELS, c["coverage"], "o-", color=colour, ms=3, label=label)
        hi = max(hi, max(c["expected_rms"]), max(c["empirical_rms"]))
    ax_rms.plot([0, hi * 1.1], [0, hi * 1.1], color="tab:red", lw=1, label="identity")
    ax_rms.set_xlabel("expected RMS error, sqrt(tr Cov) (20 equal-count bins)")
    ax_rms.set_ylabel("empirical RMS error of the inlier labels")
    ax_rms.set_title("Error vs predicted covariance (paper fig. 3)", fontsize=10)
    ax_rms.legend(fontsize=8)
    ax_cov.plot([0, 1], [0, 1], color="tab:red", lw=1, label="calibrated")
    ax_cov.set_xlabel("nominal probability p of the region")
    ax_cov.set_ylabel("fraction of inlier labels inside")
    ax_cov.set_title("Coverage of the p-regions (HuberL2.region_radius)", fontsize=10)
    ax_cov.legend(fontsize=8)
    fig.tight_layout()
    return example_utils.save_figure(fig, out_dir, "calibration.png")


def format_table(results):
    """results[(family, covariance)] = list of (error, nll) per seed -> markdown table."""
    header = "| family | " + " | ".join(f"{c} error | {c} NLL" for c in COVARIANCES) + " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(COVARIANCES))]

    def sd(xs):
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    for family in FAMILIES:
        cells = []
        for covariance in COVARIANCES:
            runs = results.get((family, covariance), [])
            errs = [r[0] for r in runs]
            nlls = [r[1] for r in runs]
            cells.append(f"{statistics.mean(errs):.4f} +- {sd(errs):.4f}" if errs else "-")
            cells.append(f"{statistics.mean(nlls):.3f} +- {sd(nlls):.3f}" if nlls else "-")
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    diffs = []
    for family in FAMILIES:  # paired by seed: what modelling the full matrix buys over the diagonal one
        full, diag = results.get((family, "full"), []), results.get((family, "diagonal"), [])
        paired = [f[1] - g[1] for f, g in zip(full, diag)]
        if paired:
            diffs.append(f"{family} {statistics.mean(paired):+.3f}")
    if diffs:
        lines.append("\nNLL(full) - NLL(diagonal), paired by seed: " + ", ".join(diffs))
    return "\n".join(lines)


def main(argv=None):
    parser = example_utils.parser(__doc__)
    parser.add_argument("--seeds", type=int, default=None, help="default 3 (--fast: 1)")
    parser.add_argument("--steps", type=int, default=None, help="Adam steps per run (default 1500, --fast: 120)")
    parser.add_argument("--outliers", type=float, default=0.2, help="fraction of wrong labels")
    parser.add_argument("--keypoints", type=int, default=8)
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.fast else 3)
    steps = args.steps or (120 if args.fast else 1500)
    n_train, n_test = (2000, 500) if args.fast else (20000, 4000)
    batch_size = 128 if args.fast else 256
    started = time.perf_counter()
    results, curves = {}, {}
    with example_utils.torch_threads(args.threads):
        for seed in range(seeds):
            train = make_keypoint_data(n_train, args.keypoints, args.outliers, seed=1000 + seed)
            test = make_keypoint_data(n_test, args.keypoints, args.outliers, seed=2000 + seed)
            for family in FAMILIES:
                for covariance in COVARIANCES:
                    net, error, nll = train_one(family, covariance, train, test, steps, seed, batch_size,
                                                show_progress=not args.no_progress)
                    results.setdefault((family, covariance), []).append((error, nll))
                    if seed == 0 and family == "huber" and covariance == "full":
                        curves["Huber NLL"] = calibration(net, test)
            if seed == 0:
                net, error, nll = train_one("huber", "full", train, test, steps, seed, batch_size,
                                            show_progress=not args.no_progress, outlier_fraction=args.outliers)
                robust = {"error": error, "nll": nll}
                curves[f"Huber NLL + outlier component (eps = {args.outliers:g})"] = calibration(net, test)
    table = format_table(results)
    print(f"\nKeypoint regression, {args.keypoints} keypoints, {args.outliers:.0%} outlier labels, "
          f"{seeds} seed(s) x {steps} steps; location error vs clean keypoints, NLL of the inlier test labels "
          "in nats/keypoint")
    print(table)
    print(f"Huber NLL + outlier component, full, seed 0: error {robust['error']:.4f}, NLL {robust['nll']:.3f}")
    for label, c in curves.items():
        print(f"{label}: coverage of the 50/80/90/95% regions of the inlier labels: "
              + ", ".join(f"{c['coverage'][COVERAGE_LEVELS.index(p)]:.3f}" for p in (0.5, 0.8, 0.9, 0.95)))
    png = calibration_figure(curves, args.out)
    json_path = example_utils.save_json({"results": {f"{f}/{c}": v for (f, c), v in results.items()},
                                         "robust": robust, "calibration": curves, "steps": steps, "seeds": seeds},
                                        args.out, "keypoints.json")
    print(f"wrote {png} and {json_path} ({time.perf_counter() - started:.0f} s)")
    return {"results": results, "table": table, "calibration": curves, "robust": robust, "png": png,
            "json": json_path}


if __name__ == "__main__":
    main()
