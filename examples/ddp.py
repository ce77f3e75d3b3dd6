"""The keypoint training run under torch.distributed (gloo, 2 processes on this machine).

Each rank trains on its own shard with DistributedDataParallel; the probreg loss, the SPD
map and the probreg.nn.PredictionHead are ordinary autograd ops, so DDP averages their
gradients like any built-in op. Rank 0 shows the progress; the test NLL of the trained
model is written to ddp.json.

    python examples/ddp.py [--fast] [--out DIR]  # train with 2 processes (200 steps; --fast: 30)
    python examples/ddp.py --check-step         # one DDP step vs a single process on the concatenated batch
"""
from __future__ import annotations

import datetime
import os
import socket
import sys
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import example_utils  # noqa: E402
from keypoints import KeypointNet  # noqa: E402
from synthetic_keypoints import make_keypoint_data  # noqa: E402

WORLD_SIZE = 2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(seed: int = 0) -> KeypointNet:
    """The same model on every rank (A = 2 I, mu = 0 at step 0: unit-scale keypoints)."""
    torch.manual_seed(seed)
    return KeypointNet(8, "full", init_precision=2.0).double()


def loss_fn():
    return make_model().head.loss()


def _worker(rank, port, mode, steps, inputs, labels, out_dir, show_progress=False):
    """One rank. It ends with os._exit after a barrier: letting Python tear down the DDP
    reducer can deadlock (its gloo destructor joins a worker thread that waits for the GIL
    the tearing-down thread holds), and everything the parent needs is on disk by then."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=120),
    )
    status, model = 1, None
    try:
        model = _run_rank(rank, mode, steps, inputs, labels, out_dir, show_progress)  # kept alive until _exit
        dist.barrier()
        status = 0
    except Exception:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _run_rank(rank, mode, steps, inputs, labels, out_dir, show_progress=False) -> DistributedDataParallel:
    """Train (or take one step on) this rank's shard; returns the DDP model."""
    model = DistributedDataParallel(make_model())
    shard = slice(rank * inputs.shape[0] // WORLD_SIZE, (rank + 1) * inputs.shape[0] // WORLD_SIZE)
    x, y = inputs[shard], labels[shard]
    criterion = loss_fn()
    if mode == "check":
        criterion(model(x), y).backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        torch.save(grads, os.path.join(out_dir, f"grads_rank{rank}.pt"))
        return model
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in example_utils.progress(range(steps), "DDP training (rank 0)", show_progress and rank == 0):
        idx = torch.randint(0, x.shape[0], (128,))
        loss = criterion(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if rank == 0:
        print(f"rank 0: final training loss {loss.item():.4f}", flush=True)
    if rank == 0:
        torch.save(model.module.state_dict(), os.path.join(out_dir, "model.pt"))
    return model


def _spawn_and_wait(args, timeout_s: float = 300.0) -> None:
    """mp.spawn WORLD_SIZE workers and wait for them, killing them after timeout_s."""
    context = mp.spawn(_worker, args=args, nprocs=WORLD_SIZE, join=False)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=2.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"DDP workers did not finish within {timeout_s:.0f} s")


def ddp_step_gradients(inputs, labels):
    """Gradients of one DDP step (2 gloo processes, one shard each), as rank 0 sees them."""
    with tempfile.TemporaryDirectory() as out_dir:
        _spawn_and_wait((free_port(), "check", 1, inputs, labels, out_dir, False))
        g0 = torch.load(os.path.join(out_dir, "grads_rank0.pt"))
        g1 = torch.load(os.path.join(out_dir, "grads_rank1.pt"))
    return g0, g1


def single_process_gradients(inputs, labels):
    model = make_model()
    loss_fn()(model(inputs), labels).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def main(argv=None):
    parser = example_utils.parser(__doc__, fast_help="30 steps on 1024 samples (seconds)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 200, --fast: 30)")
    parser.add_argument("--check-step", action="store_true", help="compare one DDP step with a single process")
    args = parser.parse_args(argv)
    steps = args.steps or (30 if args.fast else 200)
    started = time.perf_counter()
    data = make_keypoint_data(64 if args.check_step else (1024 if args.fast else 4096), seed=3)
    inputs, labels = data.inputs.double(), data.labels.double()
    if args.check_step:
        g_ddp, g_ddp_rank1 = ddp_step_gradients(inputs, labels)
        g_single = single_process_gradients(inputs, labels)
        worst = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) for a, b in zip(g_ddp, g_single))
        same_on_ranks = all(torch.equal(a, b) for a, b in zip(g_ddp, g_ddp_rank1))
        print(f"DDP (2 x gloo) vs single process on the concatenated batch: max relative gradient difference "
              f"{worst:.2e}; ranks identical: {same_on_ranks}")
        result = {"max_rel_diff": worst, "ranks_identical": same_on_ranks}
    else:
        with tempfile.TemporaryDirectory() as out_dir:
            _spawn_and_wait((free_port(), "train", steps, inputs, labels, out_dir, not args.no_progress),
                            timeout_s=1800.0)
            state = torch.load(os.path.join(out_dir, "model.pt"))
        model = make_model()
        model.load_state_dict(state)
        test = make_keypoint_data(1000, seed=4)
        with torch.no_grad():
            nll = loss_fn()(model(test.inputs.double()), test.labels.double()).item()
        print(f"trained with {WORLD_SIZE} processes for {steps} steps; test NLL {nll:.3f}")
        result = {"test_nll": nll, "steps": steps}
    result["json"] = example_utils.save_json(result, args.out, "ddp.json")
    print(f"wrote {result['json']} ({time.perf_counter() - started:.0f} s)")
    return result


if __name__ == "__main__":
    main()
