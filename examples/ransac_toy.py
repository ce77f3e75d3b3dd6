"""RanSaC-like toy of the Wibergian-learning paper (section 3, figure 2).

Each problem: 10 inliers ~ N(c, 4^2) with c ~ U[-40, 40], and 100 outliers ~ U[-40, 40].
The estimate of the inlier mean is the local minimum, reached by descent from the
sample mean, of

    E(t; sigma) = -sum_i exp(-(x_i - t)^2 / sigma^2).

sigma is learned by SGD with momentum 0.999 on the squared error between the minimum
and the inliers' sample mean, once with the trust-region damped gradient (lambda = 0.1,
paper eq. 10) and once with the undamped implicit gradient of Samuel and Tappen
(lambda = 0, eq. 9), on the same stream of problems.

Per step k the damped gradient obeys the bound (H >= 0 at a minimum)

    |dL/dsigma| <= G_k = mean_b 2 |t*_b - mean_b| |d(dE_b/dt)/dsigma| / lambda,

with d(dE/dt)/dsigma = sum_i 4 (x_i - t)(1 - u_i) exp(-u_i) / sigma^3, u_i =
(x_i - t)^2/sigma^2, computed here in closed form, independently of probreg. An
"exploding" step of the undamped run is one whose gradient exceeds 10 G_k: a minimum
whose curvature is below lambda / 10, which no damped step can produce.

Run:  python examples/ransac_toy.py [--fast] [--out DIR]
"""

from __future__ import annotations

import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import example_utils  # noqa: E402  (first: it locates probreg)
from probreg import wiberg  # noqa: E402

DTYPE = torch.float64
NUM_INLIERS = 10
NUM_OUTLIERS = 100
HALF_RANGE = 40.0
INLIER_STD = 4.0
EXPLODING_FACTOR = 10.0
TRUST_REGION_DAMPING = 0.1  # lambda of the paper


def sample_problems(generator: torch.Generator, batch: int):
    """Draw `batch` problems.

    Returns:
        samples (batch, 110) float64, inliers first; inlier_mean (batch,) float64.
    """
    centre = (torch.rand(batch, 1, generator=generator, dtype=DTYPE) * 2 - 1) * HALF_RANGE
    inliers = centre + INLIER_STD * torch.randn(batch, NUM_INLIERS, generator=generator, dtype=DTYPE)
    outliers = (torch.rand(batch, NUM_OUTLIERS, generator=generator, dtype=DTYPE) * 2 - 1) * HALF_RANGE
    return torch.cat([inliers, outliers], dim=1), inliers.mean(dim=1)


def ransac_energy(t, samples, sigma):
    """E(t) = -sum_i exp(-(x_i - t)^2 / sigma^2); t (B, 1), samples (B, N), sigma shared
    scalar or (B, 1). Returns (B,)."""
    return -torch.exp(-((samples - t) ** 2) / sigma**2).sum(dim=-1)


def gradient_sigma_derivative(t, samples, sigma):
    """d(dE/dt)/dsigma in closed form; t (B, 1), samples (B, N). Returns (B,)."""
    diff = samples - t
    u = diff**2 / sigma**2
    return (4.0 * diff * (1.0 - u) * torch.exp(-u) / sigma**3).sum(dim=-1)


def estimate(samples, sigma, damping):
    """Minimum reached from the sample mean: (B,), differentiable in sigma."""
    t0 = samples.mean(dim=1, keepdim=True)
    return wiberg.argmin(ransac_energy, t0, samples, sigma, damping=damping)[:, 0]


RUNS = (("damped", TRUST_REGION_DAMPING), ("undamped", 0.0))


def train(steps, lr, sigma0, seed, batch=1, show_progress=False):
    """SGD (momentum 0.999) on sigma, damped (lambda = 0.1) and undamped (lambda = 0) runs
    in lockstep on the same problems: one argmin call solves both runs' problems, with a
    per-problem damping tensor. Returns {run: dict of per-step float64 tensors}: sigma
    (after the step), grad, bound (G_k), curvature (min H at the minima), loss."""
    generator = torch.Generator().manual_seed(seed)
    sigmas = [torch.tensor(sigma0, dtype=DTYPE, requires_grad=True) for _ in RUNS]
    optimizer = torch.optim.SGD(sigmas, lr=lr, momentum=0.999)  # elementwise: two independent runs
    damping = torch.tensor([lam for _, lam in RUNS], dtype=DTYPE).repeat_interleave(batch)
    keys = ("sigma", "grad", "bound", "curvature", "loss")
    records = {name: {key: torch.full((steps,), math.nan, dtype=DTYPE) for key in keys} for name, _ in RUNS}
    for name, _ in RUNS:
        records[name]["diverged_at"] = -1
    for step in example_utils.progress(range(steps), "SGD on sigma (damped and undamped)", show_progress):
        samples, inlier_mean = sample_problems(generator, batch)
        samples_all = samples.repeat(len(RUNS), 1)  # rows: run-major
        sigma_all = torch.stack(sigmas).repeat_interleave(batch).unsqueeze(-1)  # (R*batch, 1)
        t_all = wiberg.argmin(ransac_energy, samples_all.mean(1, keepdim=True), samples_all, sigma_all, damping=damping)
        losses = ((t_all[:, 0].view(len(RUNS), batch) - inlier_mean) ** 2).mean(dim=1)
        optimizer.zero_grad()
        losses.sum().backward()
        with torch.no_grad():
            for r, (name, _) in enumerate(RUNS):
                if records[name]["diverged_at"] >= 0:
                    sigmas[r].grad = None  # a diverged run is frozen: SGD skips it
                    continue
                t_col = t_all[r * batch : (r + 1) * batch].detach()
                s = sigmas[r].detach()
                loss_slope = 2.0 * (t_col[:, 0] - inlier_mean).abs()
                bound = (loss_slope * gradient_sigma_derivative(t_col, samples, s).abs()).mean() / TRUST_REGION_DAMPING
                u = (samples - t_col) ** 2 / s**2
                curvature = (2.0 / s**2 * (1.0 - 2.0 * u) * torch.exp(-u)).sum(-1)  # d2E/dt2
                rec = records[name]
                rec["bound"][step] = bound
                rec["curvature"][step] = curvature.min()
                rec["grad"][step] = sigmas[r].grad
                rec["loss"][step] = losses[r]
        previous = [float(p.detach()) for p in sigmas]
        optimizer.step()
        for r, (name, _) in enumerate(RUNS):
            if records[name]["diverged_at"] >= 0:
                continue
            value = float(sigmas[r].detach())
            if not (math.isfinite(value) and abs(value) > 1e-3):
                # sigma left the domain of the energy (non-finite or ~0): the run has
                # diverged; keep its last value so the shared solve stays finite.
                records[name]["diverged_at"] = step
                with torch.no_grad():
                    sigmas[r].fill_(previous[r])
                continue
            records[name]["sigma"][step] = sigmas[r].detach()
    return records


def evaluate(sigma, samples, inlier_mean):
    """Held-out metrics of the minimum at a fixed sigma."""
    with torch.no_grad():
        t_star = estimate(samples, torch.tensor(sigma, dtype=DTYPE), 0.1)
    error = (t_star - inlier_mean).abs()
    return {
        "sigma": abs(sigma),
        "mse": float((error**2).mean()),
        "median_abs_error": float(error.median()),
        "within_2": float((error < 2.0).double().mean()),
    }


def run_stats(record, sigma0):
    """Summary of one run over its steps before any divergence."""
    n = record["diverged_at"] if record["diverged_at"] >= 0 else len(record["grad"])
    grad = record["grad"][:n].abs()
    ratio = grad / record["bound"][:n]
    sigma = torch.cat([record["sigma"].new_tensor([sigma0]), record["sigma"][:n]])
    return {
        "diverged_at": record["diverged_at"],
        "final_sigma": float(sigma[-1].abs()),
        "max_abs_grad": float(grad.max()),
        "median_abs_grad": float(grad.median()),
        "max_grad_over_bound": float(ratio.max()),
        "exploding_steps": int((ratio > EXPLODING_FACTOR).sum()),
        "first_exploding_step": int((ratio > EXPLODING_FACTOR).nonzero()[0, 0]) if bool((ratio > EXPLODING_FACTOR).any()) else -1,
        "min_curvature": float(record["curvature"][:n].min()),
        "max_abs_sigma_update": float(sigma.diff().abs().max()),
    }


def plot(path, samples, inlier_mean, sigmas, labels, records):
    """Energies of one held-out problem at each sigma, sigma trajectories and gradient
    magnitudes; written as PNG. matplotlib is imported here (optional dependency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    grid = torch.linspace(-HALF_RANGE - 10, HALF_RANGE + 10, 1201, dtype=DTYPE)
    x = samples[0]
    for ax, sigma, label in zip(axes[0], sigmas, labels):
        sig = torch.tensor(sigma, dtype=DTYPE)
        energy = ransac_energy(grid[:, None], x.expand(len(grid), -1), sig)
        with torch.no_grad():
            t_star = float(estimate(samples[:1], sig, 0.1)[0])
        ax.plot(grid, energy, color="purple", label=f"E(t), sigma = {abs(sigma):.2f}")
        low = float(energy.min())
        ax.scatter(x[NUM_INLIERS:], torch.full((NUM_OUTLIERS,), low), color="red", s=8, label="outliers")
        ax.scatter(x[:NUM_INLIERS], torch.full((NUM_INLIERS,), low), color="blue", s=12, label="inliers")
        ax.axvline(float(inlier_mean[0]), color="blue", ls="--", lw=1, label="inlier mean")
        e_star = float(ransac_energy(torch.tensor([[t_star]], dtype=DTYPE), x[None], sig)[0])
        ax.plot([t_star], [e_star], "x", color="green", ms=12, mew=3, label="minimum found")
        ax.set_title(label)
        ax.set_xlabel("t")
        ax.set_ylabel("energy E(t; sigma)")
        ax.legend(fontsize=7)
    for name, record in records.items():
        axes[1, 0].plot(record["sigma"].abs(), label=name)
        ratio = record["grad"].abs() / record["bound"]
        axes[1, 1].semilogy(ratio, ".", ms=2, label=name)
    axes[1, 1].axhline(1.0, color="k", lw=1, label="trust-region bound")
    axes[1, 1].axhline(EXPLODING_FACTOR, color="r", lw=1, ls="--", label="exploding threshold")
    axes[1, 0].set_title("sigma during SGD (momentum 0.999)")
    axes[1, 0].set_xlabel("step")
    axes[1, 0].set_ylabel("|sigma|")
    axes[1, 0].legend()
    axes[1, 1].set_title("|dL/dsigma| / trust-region bound G_k, per step")
    axes[1, 1].set_xlabel("step")
    axes[1, 1].set_ylabel("|dL/dsigma| / G_k")
    axes[1, 1].legend(fontsize=7)
    fig.tight_layout()
    example_utils.save_figure(fig, os.path.dirname(path), os.path.basename(path), dpi=90)


def main(argv=None):
    parser = example_utils.parser(__doc__)
    parser.add_argument("--steps", type=int, default=None, help="SGD steps per run")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--sigma0", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = args.steps or (600 if args.fast else 3000)
    lr = args.lr or (3e-5 if args.fast else 1e-5)
    torch.manual_seed(args.seed)

    start = time.time()
    records = train(steps, lr, args.sigma0, args.seed, show_progress=not args.no_progress)
    stats = {name: run_stats(record, args.sigma0) for name, record in records.items()}

    test_samples, test_mean = sample_problems(torch.Generator().manual_seed(args.seed + 1000), 200 if args.fast else 2000)
    evaluation = {
        "initial": evaluate(args.sigma0, test_samples, test_mean),
        "damped": evaluate(stats["damped"]["final_sigma"], test_samples, test_mean),
        "undamped": evaluate(stats["undamped"]["final_sigma"], test_samples, test_mean),
    }

    print(f"RanSaC toy: {NUM_INLIERS} inliers N(c, {INLIER_STD:g}^2), {NUM_OUTLIERS} outliers U[-40, 40]; "
          f"{steps} SGD steps, lr {lr:g}, momentum 0.999, sigma0 {args.sigma0:g}, seed {args.seed}")
    print()
    print(f"{'run':<22}{'final sigma':>12}{'max|grad|':>11}{'median|grad|':>14}{'max grad/bound':>16}"
          f"{'exploding':>11}{'min H':>10}{'max|dsigma|':>13}")
    for name, label in (("damped", "damped (lambda=0.1)"), ("undamped", "undamped (lambda=0)")):
        s = stats[name]
        print(f"{label:<22}{s['final_sigma']:>12.3f}{s['max_abs_grad']:>11.2f}{s['median_abs_grad']:>14.3f}"
              f"{s['max_grad_over_bound']:>16.3f}{s['exploding_steps']:>11d}{s['min_curvature']:>10.2e}"
              f"{s['max_abs_sigma_update']:>13.4f}")
    print(f"(exploding: steps with |grad| > {EXPLODING_FACTOR:g} x the trust-region bound G_k; "
          f"first undamped one at step {stats['undamped']['first_exploding_step']})")
    for name in ("damped", "undamped"):
        if stats[name]["diverged_at"] >= 0:
            print(f"{name} run diverged at step {stats[name]['diverged_at']} (sigma left (0, inf)); "
                  f"its statistics and final sigma are those before the divergence")
    print()
    print(f"held-out ({len(test_mean)} problems): minimum vs inlier mean")
    print(f"{'sigma':<22}{'value':>8}{'MSE':>10}{'median|err|':>13}{'|err|<2':>9}")
    for name, label in (("initial", "initial"), ("damped", "learned, damped"), ("undamped", "learned, undamped")):
        e = evaluation[name]
        print(f"{label:<22}{e['sigma']:>8.3f}{e['mse']:>10.2f}{e['median_abs_error']:>13.3f}{e['within_2']:>9.3f}")

    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "ransac_toy.png")
    plot(png, test_samples, test_mean, [args.sigma0, stats["damped"]["final_sigma"]],
         ["before learning", "after learning (damped)"], records)
    print()
    print(f"wrote {png}  ({time.time() - start:.1f} s)")
    return {"stats": stats, "evaluation": evaluation, "png": png, "records": records, "lr": lr, "momentum": 0.999}


if __name__ == "__main__":
    main()
