"""Training benchmark: a small soft-argmax CNN regressing 5 keypoints on 32x32 images with
10% outlier labels (examples/synthetic_keypoints.py, make_keypoint_images), trained from
scratch with each loss, several seeds.

    python -m benchmarks.train_keypoints                   # the main table, 3 seeds (full)
    python -m benchmarks.train_keypoints --fast            # 1 seed, shorter (smoke run)
    python -m benchmarks.train_keypoints --experiment NAME # a recipe experiment (EXPERIMENTS)

Each run writes benchmarks/results/training-<name>.md and .json (--out DIR elsewhere):
per arm, mean +- std over seeds of
  RMSE      sqrt(mean ||mu - true||^2) against the true keypoint positions (not the labels);
  NLL       the arm's own normalised negative log-likelihood (probreg.huber_nll with its
            family, normalized=True) of the clean test labels (true + label noise, no
            outliers), nats per keypoint: every family's density is a proper density, so the
            numbers compare directly;
  cover@p   the fraction of clean test labels inside the predicted p-probability region
            {y : ||A (y - mu)|| <= s_p} (Huber: HuberL2.region_radius, Gauss: the chi_2
            quantile), p = 50/80/90/95%;
and the training time. The model: three 3x3 convolutions (3-16-32-32 channels, two with
stride 2) to an 8x8 map, a 1x1 convolution to one heatmap per keypoint whose soft-argmax is
the base location, and a probreg.nn.PredictionHead on the pooled features (mean and max)
that adds a location offset and predicts the covariance.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import shlex
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))

import probreg  # noqa: E402
from probreg.nn import PredictionHead  # noqa: E402
from synthetic_keypoints import IMAGE_KEYPOINTS, make_keypoint_images  # noqa: E402

COVERAGE_LEVELS = (0.5, 0.8, 0.9, 0.95)
K = IMAGE_KEYPOINTS
D = 2


@dataclasses.dataclass(frozen=True)
class Arm:
    """One training configuration.

    loss: "mse" (mean squared error of the location) or an NLL family ("huber", "gauss",
        "laplace", "charbonnier").
    head: "recipe" (probreg.nn.PredictionHead on the pooled features, the soft-argmax as its
        base location) or "naive" (what the README alone suggested before: the soft-argmax
        coordinates as pred[..., :2] and a default-initialised nn.Linear for the raw matrix,
        HuberNLLLoss's defaults theta = delta = 1).
    precision_factor: recipe head: A at step 0 is this times 1 / (1.4826 MAD of the training
        labels) (PredictionHead.from_targets: ~2.2 here); naive head: None keeps nn.Linear's
        initialisation (A ~ g(0) = e^-1 I), 0 zeroes the layer (A = e^-1 I for every input),
        a number c > 0 starts at A = c I by a bias of 1 on the diagonal and an output scale c
        (the output_scale trick of the previous examples/keypoints.py).
    theta_ratio: recipe head: theta / init_precision (None: the head's default 1/4).
    warmup: steps of MSE warm-up at the start (mean squared error of the location mu), then
        the NLL (the workaround the issue's user found).
    outlier_fraction: > 0: train with OutlierMixtureNLLLoss (uniform outliers over the
        image, log u = -log 4) with this prior fraction.
    """

    loss: str = "huber"
    head: str = "recipe"
    parameterization: str = "v"
    covariance: str = "full"
    precision_factor: Optional[float] = 1.0
    theta_ratio: Optional[float] = None
    delta: float = 1.0
    lr: float = 1e-3
    warmup: int = 0
    outlier_fraction: float = 0.0


IMAGE_LOG_AREA = math.log(4.0)  # the image is [-1, 1]^2 in target units
RECIPE = Arm()
ROBUST = dataclasses.replace(RECIPE, outlier_fraction=0.1, delta=2.0)  # delta: the "delta" experiment
MAIN_ARMS = {
    "mse": Arm(loss="mse", covariance="identity"),
    "huber": RECIPE,
    "gauss": dataclasses.replace(RECIPE, loss="gauss"),
    "laplace": dataclasses.replace(RECIPE, loss="laplace"),
    "charbonnier": dataclasses.replace(RECIPE, loss="charbonnier"),
    "huber+outliers": ROBUST,
    "gauss+outliers": dataclasses.replace(ROBUST, loss="gauss"),
    "laplace+outliers": dataclasses.replace(ROBUST, loss="laplace"),
    "charbonnier+outliers": dataclasses.replace(ROBUST, loss="charbonnier"),
}
NAIVE = Arm(head="naive", precision_factor=None)
# Recipe experiments: each backs one recommendation of the README "Training recipe".
EXPERIMENTS: Dict[str, Dict[str, Arm]] = {
    "main": MAIN_ARMS,
    "stall": {
        "naive v (the user's setup)": NAIVE,
        "naive v + A0 = 20 I (output_scale trick)": dataclasses.replace(NAIVE, precision_factor=20.0),
        "naive v + 1 epoch MSE warm-up": dataclasses.replace(NAIVE, warmup=125),
        "naive mu": dataclasses.replace(NAIVE, parameterization="mu"),
        "naive mu + zero-initialised raw layer": dataclasses.replace(NAIVE, parameterization="mu",
                                                                     precision_factor=0.0),
        "head v + A0 = e^-1 I + theta = 1": dataclasses.replace(RECIPE, precision_factor=math.exp(-1) / 2.2,
                                                                theta_ratio=math.e),
        "head v + A0 = 1/spread (recipe)": RECIPE,
        "head mu + A0 = 1/spread": dataclasses.replace(RECIPE, parameterization="mu"),
        "head v + A0 = 10/spread": dataclasses.replace(RECIPE, precision_factor=10.0),
        "head v + A0 = 1/spread + 1 epoch MSE warm-up": dataclasses.replace(RECIPE, warmup=125),
    },
    "theta": {f"theta = A0 x {r:g}": dataclasses.replace(ROBUST, theta_ratio=r) for r in (0.01, 0.25, 1.0, 10.0)},
    "lr": {f"lr = {lr:g}": dataclasses.replace(ROBUST, lr=lr) for lr in (3e-4, 1e-3, 3e-3, 1e-2)},
    "delta": {
        **{f"huber delta = {v:g}": dataclasses.replace(RECIPE, delta=v) for v in (0.25, 0.5, 1.0, 2.0)},
        **{f"huber+outliers delta = {v:g}": dataclasses.replace(ROBUST, delta=v)
           for v in (0.25, 0.5, 1.0, 2.0, 3.0, 4.0)},
        "laplace": dataclasses.replace(RECIPE, loss="laplace"),
        "laplace+outliers": dataclasses.replace(ROBUST, loss="laplace"),
    },
    "outliers": {
        "no outlier component": dataclasses.replace(ROBUST, outlier_fraction=0.0),
        **{f"outlier_fraction = {e:g}": dataclasses.replace(ROBUST, outlier_fraction=e) for e in (0.03, 0.1, 0.3)},
    },
}


@dataclasses.dataclass(frozen=True)
class Budget:
    n_train: int
    n_test: int
    steps: int
    batch_size: int = 64


FULL = Budget(n_train=8000, n_test=2000, steps=1500)
FAST = Budget(n_train=3000, n_test=1000, steps=400)


class SoftArgmaxNet(nn.Module):
    """images (N, 3, 32, 32) -> predictions (N, K, W) in the huber_nll layout (or (N, K, 2)
    locations for the MSE arm, through an identity-covariance head)."""

    def __init__(self, arm: Arm, train_labels: torch.Tensor):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        )
        self.heatmaps = nn.Conv2d(32, K, 1)
        cells = (torch.arange(8, dtype=torch.float32) + 0.5) * (2.0 / 8) - 1.0
        yy, xx = torch.meshgrid(cells, cells, indexing="ij")
        self.register_buffer("grid", torch.stack([xx.flatten(), yy.flatten()], dim=-1))  # (64, 2)
        self.arm = arm
        features = 64
        if arm.head == "naive":
            self.raw = nn.Linear(features, K * 3)
            self.output_scale = 1.0
            if arm.precision_factor == 0.0:  # zero weights and bias: A = g(0) I = e^-1 I for every input
                with torch.no_grad():
                    self.raw.weight.zero_()
                    self.raw.bias.zero_()
            elif arm.precision_factor is not None:  # examples/keypoints.py's trick: bias 1, output scale c
                self.output_scale = arm.precision_factor
                with torch.no_grad():
                    self.raw.bias.view(K, 3).zero_()
                    self.raw.bias.view(K, 3)[:, [0, 2]] = 1.0
        else:
            head = PredictionHead.from_targets(features, train_labels, covariance=arm.covariance,
                                               parameterization=arm.parameterization, delta=arm.delta)
            precision = head.init_precision * arm.precision_factor
            theta = precision * (0.25 if arm.theta_ratio is None else arm.theta_ratio)
            self.head = PredictionHead(features, K, D, covariance=arm.covariance, parameterization=arm.parameterization,
                                       init_precision=precision, init_location=head.init_location, theta=theta,
                                       delta=arm.delta)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.trunk(images)
        weights = self.heatmaps(maps).flatten(2).softmax(dim=-1)  # (N, K, 64)
        location = weights @ self.grid  # soft-argmax (N, K, 2)
        features = torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=-1)
        if self.arm.head == "naive":
            raw = self.output_scale * self.raw(features).view(-1, K, 3)
            return torch.cat([location, raw], dim=-1)
        return self.head(features, location)

    @property
    def theta(self) -> float:
        return 1.0 if self.arm.head == "naive" else self.head.theta

    def loss_fn(self):
        if self.arm.loss == "mse":
            return lambda pred, y: nn.functional.mse_loss(pred, y)
        if self.arm.outlier_fraction:
            return probreg.nn.OutlierMixtureNLLLoss(self.arm.outlier_fraction, -IMAGE_LOG_AREA, self.arm.delta,
                                                    self.theta, parameterization=self.arm.parameterization,
                                                    family=self.arm.loss, covariance=self.arm.covariance)
        return probreg.HuberNLLLoss(self.arm.delta, self.theta, parameterization=self.arm.parameterization,
                                    family=self.arm.loss, covariance=self.arm.covariance)

    def distribution(self, pred: torch.Tensor) -> probreg.HuberL2:
        return probreg.HuberL2.from_prediction(pred, self.arm.parameterization, self.arm.covariance,
                                               delta=self.arm.delta, theta=self.theta)


def gauss_region_radius(p: float) -> float:
    """chi_2 quantile: P(||z|| <= s) = 1 - exp(-s^2/2) for z ~ N(0, I_2)."""
    return math.sqrt(-2.0 * math.log1p(-p))


@torch.no_grad()
def evaluate(net: SoftArgmaxNet, test, validation=None) -> dict:
    """Metrics on the test set; the validation set (another draw) only gives nll_val, the
    number to choose hyperparameters such as delta by."""
    net.eval()
    pred = torch.cat([net(chunk) for chunk in torch.split(test.images, 500)])
    arm = net.arm
    out = {}
    if validation is not None and arm.loss != "mse":
        pred_val = torch.cat([net(chunk) for chunk in torch.split(validation.images, 500)])
        out["nll_val"] = probreg.huber_nll(pred_val, validation.clean_labels, arm.delta, net.theta,
                                           parameterization=arm.parameterization, family=arm.loss,
                                           covariance=arm.covariance).item()
    if arm.loss == "mse":
        mu = pred[..., :D]
    else:
        dist = net.distribution(pred)
        mu = dist.loc
        nll = probreg.huber_nll(pred, test.clean_labels, arm.delta, net.theta, parameterization=arm.parameterization,
                                family=arm.loss, covariance=arm.covariance, reduction="none")
        out["nll"] = nll.mean().item()
        radius = dist.radius(test.clean_labels)
        radius_noisy = dist.radius(test.labels)
        if arm.loss in ("huber", "gauss"):
            for p in COVERAGE_LEVELS:
                s = float(dist.region_radius(p)) if arm.loss == "huber" else gauss_region_radius(p)
                out[f"cover{round(100 * p)}"] = (radius <= s).double().mean().item()
                out[f"cover{round(100 * p)}_labels"] = (radius_noisy <= s).double().mean().item()
        out["nll_labels"] = probreg.huber_nll(pred, test.labels, arm.delta, net.theta,
                                              parameterization=arm.parameterization, family=arm.loss,
                                              covariance=arm.covariance).item()
        out["median_A"] = torch.linalg.eigvalsh(dist.precision_sqrt).median().item()
    error = (mu - test.true).square().sum(-1)  # (N, K)
    out["rmse"] = error.mean().sqrt().item()
    out["median_error"] = error.sqrt().median().item()
    out["rmse_per_keypoint"] = error.mean(0).sqrt().tolist()
    out["worst_keypoint_rmse"] = max(out["rmse_per_keypoint"])
    net.train()
    return out


def train_arm(arm: Arm, train, test, budget: Budget, seed: int, progress: bool = True, label: str = "",
              validation=None) -> dict:
    torch.manual_seed(seed)
    net = SoftArgmaxNet(arm, train.labels)
    loss_fn = net.loss_fn()
    opt = torch.optim.Adam(net.parameters(), lr=arm.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, budget.steps)
    g = torch.Generator().manual_seed(seed)
    n = train.images.shape[0]
    steps = range(budget.steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc=f"{label} seed {seed}", leave=False, mininterval=1.0, file=sys.stderr)
    started, cpu_started = time.perf_counter(), time.process_time()
    for step in steps:
        idx = torch.randint(0, n, (budget.batch_size,), generator=g)
        pred = net(train.images[idx])
        target = train.labels[idx]
        if step < arm.warmup:  # MSE of the location: the soft-argmax itself for the naive head
            location = pred[..., :D] if arm.head == "naive" else net.distribution(pred).loc
            loss = nn.functional.mse_loss(location, target)
        else:
            loss = loss_fn(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    result = evaluate(net, test, validation)
    result["train_seconds"] = seconds
    result["train_cpu_seconds"] = cpu_seconds
    result["final_train_loss"] = loss.item()
    return result


def summarise(values: List[float]) -> str:
    if not values:
        return "-"
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} +- {sd:.4f}" if abs(mean) < 10 else f"{mean:.2f} +- {sd:.2f}"


def markdown(name: str, arms: Dict[str, Arm], results: Dict[str, List[dict]], commands: Dict[str, str],
             budget: Budget, seeds: List[int], wall: float, jobs: int, threads: int) -> str:
    cpu = sum(r["train_cpu_seconds"] for runs in results.values() for r in runs)
    distinct = list(dict.fromkeys(commands.values()))
    shown = " and ".join(f"`{c}`" + (f" (arms {', '.join(n for n in arms if commands[n] == c)})" if len(distinct) > 1
                                      else "") for c in distinct)
    lines = [f"# Training benchmark: {name}", "",
             f"Command: {shown} ({len(seeds)} seed(s): {seeds}; {budget.steps} Adam steps of "
             f"{budget.batch_size} images, cosine schedule; {budget.n_train} training / {budget.n_test} test images; "
             f"torch {torch.__version__}, {jobs} run(s) in parallel with {threads} thread(s) each; wall time "
             f"{wall:.0f} s, training CPU time {cpu:.0f} s)", "",
             "| arm | RMSE vs true | worst keypoint RMSE | NLL clean (nats/kp) | NLL clean, validation | cover 50% | "
             "cover 80% | cover 90% | cover 95% | median A | train s (wall / cpu) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm_name, runs in results.items():
        def col(key):
            return summarise([r[key] for r in runs if key in r])

        lines.append(f"| {arm_name} | {col('rmse')} | {col('worst_keypoint_rmse')} | {col('nll')} | {col('nll_val')} | "
                     + " | ".join(
            col(f"cover{round(100 * p)}") for p in COVERAGE_LEVELS) + f" | {col('median_A')} | "
            f"{statistics.mean(r['train_seconds'] for r in runs):.0f} / "
            f"{statistics.mean(r['train_cpu_seconds'] for r in runs):.0f} |")
    lines += ["", "Arms:", ""]
    for arm_name, arm in arms.items():
        fields = ", ".join(f"{f.name}={getattr(arm, f.name)!r}" for f in dataclasses.fields(arm)
                           if getattr(arm, f.name) != getattr(RECIPE, f.name) or f.name == "loss")
        lines.append(f"- `{arm_name}`: {fields}")
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=2)
def _data(n_train: int, n_test: int, outliers: float, seed: int):
    """(train, test, validation) images of one seed."""
    return (make_keypoint_images(n_train, outliers, seed=1000 + seed),
            make_keypoint_images(n_test, outliers, seed=2000 + seed),
            make_keypoint_images(n_test, outliers, seed=3000 + seed))


def _run_job(job, progress: bool = False) -> dict:
    """One (arm, seed) run; top level so that worker processes can unpickle it."""
    name, arm, seed, budget, outliers, threads = job
    torch.set_num_threads(threads)
    train, test, validation = _data(budget.n_train, budget.n_test, outliers, seed)
    return train_arm(arm, train, test, budget, seed, progress=progress, label=name, validation=validation)


def _print_run(name: str, seed: int, r: dict) -> None:
    print(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items() if isinstance(v, float)),
          flush=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="1 seed, fewer images and steps")
    parser.add_argument("--experiment", default="main", choices=sorted(EXPERIMENTS))
    parser.add_argument("--arms", default=None, help="comma-separated subset of the experiment's arms (names have no commas)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, --fast 1)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one process each (default 2)")
    parser.add_argument("--outliers", type=float, default=0.1, help="fraction of outlier labels (train and test)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"), help="output directory")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other arms of an existing result file of the experiment (same budget and seeds)")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be >= 1")
    budget = FAST if args.fast else FULL
    if args.steps:
        budget = dataclasses.replace(budget, steps=args.steps)
    arms = EXPERIMENTS[args.experiment]
    if args.arms:
        names = args.arms.split(",")
        unknown = [a for a in names if a not in arms]
        if unknown:
            parser.error(f"--arms: unknown {unknown}; experiment {args.experiment!r} has {sorted(arms)}")
        arms = {a: arms[a] for a in names}
    seeds = list(range(args.seeds or (1 if args.fast else 3)))
    started = time.perf_counter()
    jobs = [(name, arm, seed, budget, args.outliers, args.threads) for seed in seeds for name, arm in arms.items()]
    done: Dict[tuple, dict] = {}
    if args.jobs == 1:
        for job in jobs:
            done[job[0], job[2]] = _run_job(job, progress=not args.no_progress)
            _print_run(job[0], job[2], done[job[0], job[2]])
    else:  # one process per core; each run is seeded, so the results do not depend on the schedule
        import concurrent.futures
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run_job, job): job for job in jobs}
            finished = concurrent.futures.as_completed(futures)
            if not args.no_progress:
                from tqdm import tqdm

                finished = tqdm(finished, total=len(jobs), desc=f"{args.experiment}: runs", file=sys.stderr)
            for future in finished:
                job = futures[future]
                done[job[0], job[2]] = future.result()
                _print_run(job[0], job[2], done[job[0], job[2]])
    results: Dict[str, List[dict]] = {name: [done[name, seed] for seed in seeds] for name in arms}
    wall = time.perf_counter() - started
    command = ("python -m benchmarks.train_keypoints " + shlex.join(argv if argv is not None else sys.argv[1:])).strip()
    label = args.experiment + ("-fast" if args.fast else "")
    json_path = os.path.join(args.out, f"training-{label}.json")
    commands = {name: command for name in arms}
    if args.merge and os.path.exists(json_path):  # keep the arms of earlier runs that were not run now
        with open(json_path) as f:
            previous = json.load(f)
        if previous["budget"] != dataclasses.asdict(budget) or previous["seeds"] != seeds:
            parser.error(f"--merge: {json_path} has another budget or other seeds")
        order = list(EXPERIMENTS[args.experiment])
        kept = [name for name in previous["results"] if name not in arms and name in order]
        names = sorted(kept + list(arms), key=order.index)
        results = {name: results[name] if name in arms else previous["results"][name] for name in names}
        old_commands = previous.get("commands") or {name: previous["command"] for name in previous["results"]}
        commands = {name: commands.get(name) or old_commands[name] for name in names}
        arms = {name: EXPERIMENTS[args.experiment][name] for name in names}
        wall += previous["wall_seconds"]
    table = markdown(label, arms, results, commands, budget, seeds, wall, args.jobs, args.threads)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"training-{label}.md"), "w") as f:
        f.write(table)
    with open(json_path, "w") as f:
        json.dump({"commands": commands, "budget": dataclasses.asdict(budget), "seeds": seeds,
                   "arms": {k: dataclasses.asdict(v) for k, v in arms.items()}, "results": results,
                   "wall_seconds": wall, "torch": torch.__version__}, f, indent=1)
    return {"results": results, "table": table, "wall_seconds": wall}


if __name__ == "__main__":
    main()
