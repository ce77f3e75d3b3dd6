"""Tracker fusion with a learned RBF energy (Wibergian-learning paper, section 4, table 1).

Synthetic stand-in for the VOT2018 experiment: sequences of a moving, resizing box and
12 trackers of four kinds (3 each):
  good     corners within ~2 px of the truth;
  drifting accurate until an onset frame, then their box slides away at 0.5-1.5 px per
           frame and grows or shrinks;
  scaled   accurate centre, but a box 0.7-0.8 times too small;
  noisy    5 px noise and, on 15% of the frames, a jump of ~60 px.
Sequences are assigned at random to train and test. Each corner of the fused box is the
minimum of the RBF energy of supplement eq. 14-16 (probreg.wiberg.rbf_fusion_energy),
initialised at the lowest-energy tracker corner; the per-tracker parameters (RBF widths,
size-change widths, weight scales, temporal weights and box-scale corrections) are
learned end to end with Adam on the l1 error of the fused corners, through
probreg.wiberg.argmin (damped, lambda = 0.1, and undamped, lambda = 0, for comparison).

Run:  python examples/tracker_fusion.py [--fast] [--out DIR]
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import example_utils  # noqa: E402  (first: it locates probreg)
from probreg import wiberg  # noqa: E402

DTYPE = torch.float64
KINDS = ("good", "drifting", "scaled", "noisy")
PER_KIND = 3
NUM_TRACKERS = PER_KIND * len(KINDS)


def make_dataset(num_sequences: int, num_frames: int, seed: int):
    """Synthetic sequences.

    Returns a dict of float64 tensors, N = num_sequences * num_frames rows:
        truth (N, 4) ground-truth boxes (x0, y0, x1, y1);
        boxes (N, T, 4) tracker boxes; ref_boxes (N, T, 4) each tracker's box in the
        sequence's first frame; time (N,) normalised frame time in [0, 1];
        sequence (N,) int64 sequence index.
    """
    gen = torch.Generator().manual_seed(seed)
    S, F, T = num_sequences, num_frames, NUM_TRACKERS

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=DTYPE)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=DTYPE)

    # ground truth: smooth random motion and size change
    velocity = torch.cumsum(0.3 * randn(S, F, 2), dim=1) + 2.0 * randn(S, 1, 2)
    centre = 300.0 + 100.0 * (2 * rand(S, 1, 2) - 1) + torch.cumsum(velocity, dim=1)
    log_size = torch.log(40.0 + 80.0 * rand(S, 1, 2)) + torch.cumsum(0.005 * randn(S, F, 2), dim=1)
    size = log_size.exp()
    truth = torch.cat([centre - size / 2, centre + size / 2], dim=-1)  # (S, F, 4)

    frame = torch.arange(F, dtype=DTYPE).view(1, F, 1)
    t_centre = centre.unsqueeze(2).expand(S, F, T, 2).clone()
    t_size = size.unsqueeze(2).expand(S, F, T, 2).clone()
    kind = torch.arange(T) // PER_KIND
    noise_px = torch.tensor([2.0, 2.0, 1.5, 5.0], dtype=DTYPE)[kind]  # per tracker

    drift = kind == 1
    onset = (0.2 + 0.4 * rand(S, 1, T)) * F
    after = torch.clamp(frame - onset, min=0.0)  # (S, F, T)
    angle = 2 * math.pi * rand(S, 1, T)
    speed = 0.5 + rand(S, 1, T)
    direction = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)  # (S, 1, T, 2)
    growth = 1.0 + (2 * rand(S, 1, T, 1) - 1) * 0.006 * after.unsqueeze(-1)  # +-0.6% per frame
    t_centre = torch.where(drift.view(1, 1, T, 1), t_centre + direction * (speed * after).unsqueeze(-1), t_centre)
    t_size = torch.where(drift.view(1, 1, T, 1), t_size * torch.clamp(growth, min=0.3), t_size)

    scaled = kind == 2
    shrink = 0.7 + 0.1 * rand(1, 1, T, 1)
    t_size = torch.where(scaled.view(1, 1, T, 1), t_size * shrink, t_size)

    boxes = torch.cat([t_centre - t_size / 2, t_centre + t_size / 2], dim=-1)
    boxes = boxes + noise_px.view(1, 1, T, 1) * randn(S, F, T, 4)
    noisy = kind == 3
    jump = (rand(S, F, T, 1) < 0.15) & noisy.view(1, 1, T, 1)
    boxes = boxes + jump * 60.0 * randn(S, F, T, 2).repeat(1, 1, 1, 2)
    # keep boxes valid (x0 < x1, y0 < y1)
    lo = torch.minimum(boxes[..., :2], boxes[..., 2:] - 1.0)
    boxes = torch.cat([lo, boxes[..., 2:]], dim=-1)

    ref = boxes[:, :1].expand(S, F, T, 4)
    time_ = (frame[..., 0] / (F - 1)).expand(S, F)
    sequence = torch.arange(S).view(S, 1).expand(S, F)
    return {
        "truth": truth.reshape(S * F, 4),
        "boxes": boxes.reshape(S * F, T, 4),
        "ref_boxes": ref.reshape(S * F, T, 4),
        "time": time_.reshape(S * F),
        "sequence": sequence.reshape(S * F),
    }


def subset(data, mask):
    return {key: value[mask] for key, value in data.items()}


def iou(a, b):
    """IoU of boxes (N, 4) and (N, 4) -> (N,)."""
    lo = torch.maximum(a[:, :2], b[:, :2])
    hi = torch.minimum(a[:, 2:], b[:, 2:])
    inter = torch.clamp(hi - lo, min=0).prod(-1)
    area_a = torch.clamp(a[:, 2:] - a[:, :2], min=0).prod(-1)
    area_b = torch.clamp(b[:, 2:] - b[:, :2], min=0).prod(-1)
    return inter / (area_a + area_b - inter)


def metrics(pred, truth):
    return {"iou": float(iou(pred, truth).mean()), "l1": float((pred - truth).abs().mean())}


def fuse(model, data, damping, chunk=1024):
    with torch.no_grad():
        parts = [
            model(data["boxes"][i : i + chunk], data["ref_boxes"][i : i + chunk], data["time"][i : i + chunk], damping=damping)
            for i in range(0, len(data["time"]), chunk)
        ]
    return torch.cat(parts)


def train(train_data, steps, batch, lr, damping, seed, show_progress=False):
    """Adam on the l1 loss of the fused corners. Returns (model, history) where history
    lists per-step losses and the number of steps with a non-finite gradient (those
    steps are skipped)."""
    torch.manual_seed(seed)
    model = wiberg.RBFFusion(NUM_TRACKERS)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(train_data["time"])
    losses, nonfinite = [], 0
    for _ in example_utils.progress(range(steps), f"training (damping {damping:g})", show_progress):
        index = torch.randint(n, (batch,), generator=gen)
        fused = model(train_data["boxes"][index], train_data["ref_boxes"][index], train_data["time"][index], damping=damping)
        loss = (fused - train_data["truth"][index]).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        grads_finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
        if not (grads_finite and math.isfinite(float(loss.detach()))):
            nonfinite += 1
            continue
        optimizer.step()
        losses.append(float(loss.detach()))
    return model, {"losses": losses, "nonfinite_steps": nonfinite}


def group_summary(model):
    """Mean learned parameters per tracker kind (both corners)."""
    out = {}
    with torch.no_grad():
        theta_end = 1.0 / (1.0 + model.temporal_a**2 + model.temporal_b**2)  # theta at time 1
        for k, name in enumerate(KINDS):
            sl = slice(k * PER_KIND, (k + 1) * PER_KIND)
            out[name] = {
                "sigma_pos": float(model.log_sigma_pos.exp()[:, sl].mean()),
                "box_scale": float(model.box_scale[:, sl].mean()),
                "weight_scale": float(model.weight_scale[:, sl].mean()),
                "theta_at_end": float(theta_end[:, sl].mean()),
            }
    return out


def main(argv=None):
    parser = example_utils.parser(__doc__, fast_help="small data, few steps (seconds)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    num_sequences, num_frames = (12, 40) if args.fast else (36, 100)
    steps = args.steps or (25 if args.fast else 300)
    batch, lr = 128, 0.03
    torch.manual_seed(args.seed)
    start = time.time()

    data = make_dataset(num_sequences, num_frames, args.seed)
    order = torch.randperm(num_sequences, generator=torch.Generator().manual_seed(args.seed + 1))
    test_sequences = order[: num_sequences // 3]
    is_test = torch.isin(data["sequence"], test_sequences)
    train_data, test_data = subset(data, ~is_test), subset(data, is_test)

    results = {}
    per_tracker_l1 = (train_data["boxes"] - train_data["truth"].unsqueeze(1)).abs().mean(dim=(0, 2))
    best = int(per_tracker_l1.argmin())
    results["best single tracker (on train)"] = metrics(test_data["boxes"][:, best], test_data["truth"])
    results["mean fusion"] = metrics(test_data["boxes"].mean(dim=1), test_data["truth"])
    results["median fusion"] = metrics(test_data["boxes"].median(dim=1).values, test_data["truth"])
    initial = wiberg.RBFFusion(NUM_TRACKERS)
    results["RBF fusion, initial parameters"] = metrics(fuse(initial, test_data, 0.1), test_data["truth"])
    histories, models = {}, {}
    for label, damping in (("RBF fusion, undamped (Samuel & Tappen)", 0.0), ("RBF fusion, damped (Wibergian)", 0.1)):
        model, history = train(train_data, steps, batch, lr, damping, args.seed,
                               show_progress=not args.no_progress)
        models[label], histories[label] = model, history
        results[label] = metrics(fuse(model, test_data, damping), test_data["truth"])
        results[label]["nonfinite_steps"] = history["nonfinite_steps"]
        results[label]["train_l1_first_last"] = [history["losses"][0], history["losses"][-1]] if history["losses"] else None

    print(f"Tracker fusion: {NUM_TRACKERS} synthetic trackers ({', '.join(f'{PER_KIND} {k}' for k in KINDS)}), "
          f"{num_sequences} sequences x {num_frames} frames, {len(test_sequences)} test sequences; "
          f"{steps} Adam steps of {batch} frames, lr {lr:g}, seed {args.seed}")
    print()
    print(f"{'method':<42}{'test IoU':>10}{'test l1 (px)':>14}")
    for name, m in results.items():
        print(f"{name:<42}{m['iou']:>10.3f}{m['l1']:>14.2f}")
    for label, history in histories.items():
        if history["nonfinite_steps"]:
            print(f"note: {label}: {history['nonfinite_steps']} steps with a non-finite gradient were skipped")
    print()
    print("learned parameters (damped run), mean per tracker kind:")
    summary = group_summary(models["RBF fusion, damped (Wibergian)"])
    print(f"{'kind':<10}{'sigma_pos':>11}{'box_scale':>11}{'weight s_t':>12}{'theta(t=1)':>12}")
    for name, s in summary.items():
        print(f"{name:<10}{s['sigma_pos']:>11.2f}{s['box_scale']:>11.3f}{s['weight_scale']:>12.3f}{s['theta_at_end']:>12.3f}")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "tracker_fusion.json")
    with open(path, "w") as f:
        json.dump({"results": results, "learned_by_kind": summary, "steps": steps, "seed": args.seed}, f, indent=2)
    print()
    print(f"wrote {path}  ({time.time() - start:.1f} s)")
    return {"results": results, "summary": summary, "json": path}


if __name__ == "__main__":
    main()
