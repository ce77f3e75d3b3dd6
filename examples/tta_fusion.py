"""Test-time augmentation with maximum-likelihood fusion (paper sec. 4.1, app. E, tables 6/8).

Trains the keypoint model of keypoints.py (Huber NLL, full covariance, v-parameterisation,
probreg.nn.PredictionHead) with mirror augmentation, then predicts on each test input and
on its mirrored rendering, maps the mirrored prediction back with its affine transform
(x -> M x, M = diag(-1, 1)), and compares: no TTA, mean fusion of the two locations, and ML
fusion with probreg.fuse_predictions (the argmin of the summed Huber energies). The figure
(tta_fusion.png) draws the 50% and 90% probability regions of the fused estimate
(FuseResult.distribution with total weight 2: the Huber density with the fused mode and
curvature, whose region radius is HuberL2.region_radius) and the 90% region of the plain
prediction alone.

    python examples/tta_fusion.py [--fast] [--out DIR]     # tta_fusion.png, tta_fusion.json
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import example_utils  # noqa: E402
import probreg  # noqa: E402
from keypoints import DELTA, KeypointNet  # noqa: E402
from synthetic_keypoints import make_keypoint_data  # noqa: E402

MIRROR = torch.diag(torch.tensor([-1.0, 1.0]))


def train_with_mirror_augmentation(steps, n_train, outliers, seed=0, batch_size=256, show_progress=True):
    torch.manual_seed(seed)
    plain = make_keypoint_data(n_train, outlier_fraction=outliers, seed=100 + seed)
    mirrored = make_keypoint_data(n_train, outlier_fraction=outliers, seed=200 + seed, mirror=True)
    inputs = torch.cat([plain.inputs, mirrored.inputs])
    labels = torch.cat([plain.labels, mirrored.labels])
    net = KeypointNet.for_labels(labels, "full")
    loss_fn = net.head.loss()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in example_utils.progress(range(steps), "training (Huber NLL, mirror augmentation)", show_progress):
        idx = torch.randint(0, inputs.shape[0], (batch_size,))
        loss = loss_fn(net(inputs[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net


def fuse_tta(net, plain_inputs, mirrored_inputs):
    """Predictions on both renderings -> (plain prediction, mu_plain, mu_mirror mapped back,
    mean fusion, FuseResult of the ML fusion)."""
    with torch.no_grad():
        pred_plain = net(plain_inputs)  # (N, K, 5)
        pred_mirror = net(mirrored_inputs)  # in the mirrored frame
        mu_plain = net.head.location(pred_plain)
        mu_mirror = net.head.location(pred_mirror) @ MIRROR.T  # mapped back: x -> M x
        preds = torch.stack([pred_plain, pred_mirror], dim=-2)  # (N, K, 2, 5)
        M = torch.stack([torch.eye(2), MIRROR]).expand(*preds.shape[:-1], 2, 2)
        t = torch.zeros(*preds.shape[:-1], 2)
        fused = probreg.fuse_predictions(preds, theta=net.head.theta, delta=DELTA, parameterization="v",
                                         transforms=(M, t))
    return pred_plain, mu_plain, mu_mirror, 0.5 * (mu_plain + mu_mirror), fused


def region_boundary(centre, precision_sqrt, radius, n=100):
    """Points of {y : ||A (y - centre)|| = radius}: centre + radius A^-1 u over the unit circle."""
    angle = torch.linspace(0, 2 * torch.pi, n)
    circle = torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    return centre + radius * circle @ torch.linalg.inv(precision_sqrt).T


def ellipse_figure(out_dir, sample, clean, mu_plain, mu_mirror, fused_dist, plain_dist):
    """Regions of test sample `sample`: fused 50% / 90% (green), plain prediction 90% (blue)."""
    plt = example_utils.pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.4))
    r50, r90 = fused_dist.region_radius(0.5).item(), fused_dist.region_radius(0.9).item()
    r90_plain = plain_dist.region_radius(0.9).item()
    for k in range(clean.shape[0]):
        A = fused_dist.precision_sqrt[k]
        for radius, style, label in ((r50, ":", "fused 50% region"), (r90, "-", "fused 90% region")):
            ring = region_boundary(fused_dist.loc[k], A, radius)
            ax.plot(ring[:, 0], ring[:, 1], style, color="tab:green", lw=1, label=label if k == 0 else None)
        ring = region_boundary(plain_dist.loc[k], plain_dist.precision_sqrt[k], r90_plain)
        ax.plot(ring[:, 0], ring[:, 1], "--", color="tab:blue", lw=0.8,
                label="plain prediction 90% region" if k == 0 else None)
    ax.plot(clean[:, 0], clean[:, 1], "k+", ms=9, label="ground truth")
    ax.plot(mu_plain[:, 0], mu_plain[:, 1], "o", color="tab:blue", ms=4, label="prediction")
    ax.plot(mu_mirror[:, 0], mu_mirror[:, 1], "s", color="tab:orange", ms=4, label="mirrored prediction, mapped back")
    ax.plot(fused_dist.loc[:, 0], fused_dist.loc[:, 1], "x", color="tab:red", ms=7, label="ML fusion")
    ax.set_aspect("equal")
    ax.set_xlabel("keypoint x (target units)")
    ax.set_ylabel("keypoint y (target units)")
    ax.set_title(f"Test-time augmentation fusion, test sample {sample}", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return example_utils.save_figure(fig, out_dir, "tta_fusion.png")


def main(argv=None):
    parser = example_utils.parser(__doc__)
    parser.add_argument("--outliers", type=float, default=0.2)
    args = parser.parse_args(argv)
    steps, n_train, n_test, batch = (150, 2000, 500, 128) if args.fast else (2500, 20000, 4000, 256)
    started = time.perf_counter()
    with example_utils.torch_threads(args.threads):
        net = train_with_mirror_augmentation(steps, n_train, args.outliers, batch_size=batch,
                                             show_progress=not args.no_progress)
        plain = make_keypoint_data(n_test, outlier_fraction=args.outliers, seed=999)
        mirrored = make_keypoint_data(n_test, outlier_fraction=args.outliers, seed=999, mirror=True)
        pred_plain, mu_plain, mu_mirror, mean_fused, fused = fuse_tta(net, plain.inputs, mirrored.inputs)
    clean = plain.clean

    def err(mu):
        return (mu - clean).norm(dim=-1).mean().item()

    rows = {
        "no TTA (plain input)": err(mu_plain),
        "no TTA (mirrored input, mapped back)": err(mu_mirror),
        "mean fusion": err(mean_fused),
        "ML fusion (probreg.fuse_predictions)": err(fused.y),
    }
    converged = fused.converged.float().mean().item()
    print(f"\nTest-time augmentation on {n_test} test samples x {clean.shape[1]} keypoints "
          f"({args.outliers:.0%} outlier labels in training); mean location error vs clean keypoints")
    print("| method | mean error |\n|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:.4f} |")
    print(f"ML fusion: converged {converged:.1%}, median iterations {fused.iterations.float().median().item():.0f}")
    sample = 0
    fused_sample = probreg.FuseResult(*(t[sample] for t in fused)).distribution(DELTA, total_weight=2.0)
    plain_sample = net.head.distribution(pred_plain[sample])
    png = ellipse_figure(args.out, sample, clean[sample], mu_plain[sample], mu_mirror[sample], fused_sample,
                         plain_sample)
    json_path = example_utils.save_json({"errors": rows, "converged_fraction": converged, "steps": steps},
                                        args.out, "tta_fusion.json")
    print(f"wrote {png} and {json_path} ({time.perf_counter() - started:.0f} s)")
    return {"errors": rows, "converged_fraction": converged, "png": png, "json": json_path}


if __name__ == "__main__":
    main()
