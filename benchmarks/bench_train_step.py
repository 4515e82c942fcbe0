"""One training step, tinyconv against PyTorch (CPU), on the three reference nets.

    python benchmarks/bench_train_step.py                       # all three nets, 3 rounds each
    python benchmarks/bench_train_step.py --nets mnist_cnn --rounds 5 --steps 20
    python benchmarks/bench_train_step.py --profile resnet9_half   # where tinyconv's time goes

The step (REFERENCE.md): batch 128, float32, BatchNorm in train mode, zero_grad + forward + mean
cross-entropy + backward + SGD(lr 0.01, momentum 0.9, weight_decay 5e-4), 2 threads.

Each measurement runs in a fresh process (`--worker`), tinyconv and torch alternated round by round
so that both see the same background load, and reports the median step time after warm-up steps
(Numba compilation, first allocations) and the peak resident memory of the process (ru_maxrss).
The table shows images/s for each, the step-time ratio tinyconv/torch (target <= 1.6) and the
peak-memory ratio (target <= 2).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NETS = {                          # name -> (builder arguments, input shape of one image)
    "mnist_cnn": ({}, (1, 28, 28)),
    "resnet9_half": ({"width": 32}, (3, 32, 32)),
    "resnet9": ({"width": 64}, (3, 32, 32)),
}
BATCH = 128


def _batch(shape, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, *shape)).astype(np.float32)
    y = rng.integers(0, 10, size=BATCH).astype(np.int64)
    return x, y


# ---- workers: one framework, one net, in this process --------------------------------------------

def _tinyconv_step(net_name):
    sys.path.insert(0, str(ROOT))
    import tinyconv as tc
    from tinyconv import models
    from tinyconv.nn import functional as F
    from tinyconv.optim import SGD
    args, shape = NETS[net_name]
    model = models.mnist_cnn() if net_name == "mnist_cnn" else models.resnet9(**args)
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x_np, y = _batch(shape)
    x = tc.Tensor(x_np)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def _torch_step(net_name):
    import torch
    sys.path.insert(0, str(ROOT / "tests"))
    import torch_nets                                 # the same nets, written in PyTorch
    args, shape = NETS[net_name]
    model = torch_nets.mnist_cnn() if net_name == "mnist_cnn" else torch_nets.resnet9(**args)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x_np, y_np = _batch(shape)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    model.train()

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def worker(framework, net_name, steps, warmup, threads):
    """Time `steps` training steps after `warmup`; print one JSON line."""
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
        step = _torch_step(net_name)
    else:
        step = _tinyconv_step(net_name)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux
    print(json.dumps({"median": times[len(times) // 2], "min": times[0], "peak_mb": peak_mb}))


def _run_worker(framework, net_name, steps, warmup, threads):
    env = dict(os.environ, TINYCONV_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               NUMBA_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-X", "faulthandler", __file__, "--worker", framework,
           "--nets", net_name, "--steps", str(steps), "--warmup", str(warmup),
           "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{framework} worker for {net_name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- profile: tinyconv's step split by op --------------------------------------------------------

def profile(net_name, steps, warmup):
    """Time every Function's forward and backward, the optimizer, and the rest (engine overhead:
    graph sort, gradient bookkeeping, Tensor wrapping, Python calls), per step."""
    step = _tinyconv_step(net_name)
    from tinyconv import optim
    from tinyconv.autograd import Function
    totals = defaultdict(float)

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[key] += time.perf_counter() - start
        return wrapper

    for name, cls in Function.registry.items():
        cls.forward = staticmethod(timed(cls.forward, f"{name} forward"))
        cls.backward = staticmethod(timed(cls.backward, f"{name} backward"))
    optim.SGD.step = timed(optim.SGD.step, "SGD step")
    for _ in range(warmup):
        step()
    totals.clear()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    total = (time.perf_counter() - start) / steps
    rows = sorted(((v / steps, k) for k, v in totals.items()), reverse=True)
    accounted = sum(t for t, _ in rows)
    print(f"{net_name}: {total * 1e3:.1f} ms per step ({BATCH / total:.0f} img/s), "
          f"mean of {steps} steps")
    for t, k in rows:
        if t >= 0.0005 * total:
            print(f"  {k:<28} {t * 1e3:8.2f} ms  {100 * t / total:5.1f} %")
    rest = total - accounted
    print(f"  {'engine + Python (rest)':<28} {rest * 1e3:8.2f} ms  {100 * rest / total:5.1f} %")


# ---- driver --------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default=",".join(NETS),
                        help="comma-separated: " + ", ".join(NETS))
    parser.add_argument("--rounds", type=int, default=3, help="alternations tinyconv/torch")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per process "
                        "(default: 30 mnist_cnn, 10 resnet9_half, 5 resnet9)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=["tinyconv", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--profile", metavar="NET", help="per-op breakdown of tinyconv's step")
    args = parser.parse_args(argv)
    default_steps = {"mnist_cnn": 30, "resnet9_half": 10, "resnet9": 5}
    if args.worker:
        worker(args.worker, args.nets, args.steps or default_steps[args.nets], args.warmup,
               args.threads)
        return
    if args.profile:
        os.environ.setdefault("TINYCONV_NUM_THREADS", str(args.threads))
        profile(args.profile, args.steps or default_steps[args.profile], args.warmup)
        return
    print(f"training step, batch {BATCH}, float32, {args.threads} threads; median step time of "
          f"the best of {args.rounds} rounds; largest peak RSS of a process")
    print(f"{'net':<14}{'tinyconv img/s':>15}{'torch img/s':>13}{'time ratio':>12}"
          f"{'tc MB':>8}{'torch MB':>10}{'mem ratio':>11}")
    for net in args.nets.split(","):
        steps = args.steps or default_steps[net]
        step_time = {"tinyconv": float("inf"), "torch": float("inf")}
        peak = {"tinyconv": 0.0, "torch": 0.0}
        for _ in range(args.rounds):
            for framework in ("tinyconv", "torch"):
                r = _run_worker(framework, net, steps, args.warmup, args.threads)
                step_time[framework] = min(step_time[framework], r["median"])
                peak[framework] = max(peak[framework], r["peak_mb"])
        ours, theirs = step_time["tinyconv"], step_time["torch"]
        print(f"{net:<14}{BATCH / ours:>15.0f}{BATCH / theirs:>13.0f}{ours / theirs:>12.2f}"
              f"{peak['tinyconv']:>8.0f}{peak['torch']:>10.0f}"
              f"{peak['tinyconv'] / peak['torch']:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
