"""One training step, tinyconv against PyTorch (CPU), on the three reference nets and airbench94.

    python benchmarks/bench_train_step.py                       # all four nets, 3 rounds each
    python benchmarks/bench_train_step.py --nets airbench94 --rounds 2   # batch 1024
    python benchmarks/bench_train_step.py --ops airbench94      # its layers, one by one
    python benchmarks/bench_train_step.py --nets mnist_cnn --rounds 5 --steps 20
    python benchmarks/bench_train_step.py --profile resnet9_half   # where tinyconv's time goes

The step (REFERENCE.md): batch 128 (airbench94: 1024, its training batch), float32, BatchNorm in
train mode, zero_grad + forward + mean cross-entropy + backward + SGD(lr 0.01, momentum 0.9,
weight_decay 5e-4), 2 threads. The last column is tinyconv's effective GFLOP/s (3x the forward
FLOPs per image).

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
    "airbench94": ({}, (3, 32, 32)),
}
BATCH = 128
BATCHES = {"airbench94": 1024}    # airbench's batch; the others use BATCH
GFLOP_FORWARD = {"mnist_cnn": 0.00848, "resnet9_half": 0.1905, "resnet9": 0.7585,
                 "airbench94": 0.236}   # per image (REFERENCE.md; airbench94: its paper)


def _build(module, net_name):
    """The net called net_name from `module` (tinyconv.models or tests/torch_nets)."""
    args, _ = NETS[net_name]
    builder = {"resnet9_half": "resnet9"}.get(net_name, net_name)
    return getattr(module, builder)(**args)


def _batch(shape, seed=0, batch=BATCH):
    import numpy as np
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, size=batch).astype(np.int64)
    return x, y


# ---- workers: one framework, one net, in this process --------------------------------------------

def _tinyconv_step(net_name):
    sys.path.insert(0, str(ROOT))
    import tinyconv as tc
    from tinyconv import models
    from tinyconv.nn import functional as F
    from tinyconv.optim import SGD
    model = _build(models, net_name)
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x_np, y = _batch(NETS[net_name][1], batch=BATCHES.get(net_name, BATCH))
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
    model = _build(torch_nets, net_name)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01,
                          momentum=0.9, weight_decay=5e-4)
    x_np, y_np = _batch(NETS[net_name][1], batch=BATCHES.get(net_name, BATCH))
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
    from tinyconv import Function
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
    print(f"{net_name}: {total * 1e3:.1f} ms per step "
          f"({BATCHES.get(net_name, BATCH) / total:.0f} img/s), "
          f"mean of {steps} steps")
    for t, k in rows:
        if t >= 0.0005 * total:
            print(f"  {k:<28} {t * 1e3:8.2f} ms  {100 * t / total:5.1f} %")
    rest = total - accounted
    print(f"  {'engine + Python (rest)':<28} {rest * 1e3:8.2f} ms  {100 * rest / total:5.1f} %")


def profile_torch(net_name, steps, warmup, threads):
    """The same breakdown for torch (torch.profiler, self CPU time per aten op), for comparison."""
    import torch
    torch.set_num_threads(threads)
    step = _torch_step(net_name)
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    total = (time.perf_counter() - start) / steps
    print(f"torch {net_name}: {total * 1e3:.1f} ms per step under the profiler "
          f"(self CPU time per op; threads' time is summed, so rows can exceed wall time)")
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    for e in rows[:14]:
        t = e.self_cpu_time_total / 1e6 / steps
        print(f"  {e.key:<40} {t * 1e3:8.2f} ms")


def _leaf_calls(model, x):
    """[(module, input shape)] of every distinct leaf layer call in one forward pass."""
    from tinyconv import nn
    calls, seen = [], set()
    original = nn.Module.__call__

    def record(module, inp, *args, **kwargs):
        key = (type(module).__name__, module.extra_repr(), inp.shape)
        if not any(True for _ in module.children()) and key not in seen:
            seen.add(key)
            calls.append((module, inp.shape))
        return original(module, inp, *args, **kwargs)
    nn.Module.__call__ = record
    try:
        model(x)
    finally:
        nn.Module.__call__ = original
    return calls


def compare_ops(net_name, threads):
    """Each distinct layer of the net at its real input shape, forward and backward, tinyconv
    against the same torch layer; each framework in its own process (in one process their
    thread pools fight over the two cores)."""
    rows = {}
    for framework in ("tinyconv", "torch"):
        env = dict(os.environ, TINYCONV_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, __file__, "--ops-worker", framework, "--ops", net_name,
               "--threads", str(threads)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{framework} ops worker failed:\n{out.stderr}")
        rows[framework] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{net_name}, batch {BATCHES.get(net_name, BATCH)}: best of 5 calls, ms "
          f"(ratio = tinyconv / torch)")
    print(f"{'layer':<34}{'input':>20}{'fwd tc':>9}{'torch':>8}{'ratio':>7}"
          f"{'bwd tc':>9}{'torch':>8}{'ratio':>7}")
    for (label, in_shape, f_tc, b_tc), (_, _, f_t, b_t) in zip(rows["tinyconv"], rows["torch"]):
        print(f"{label[:33]:<34}{str(tuple(in_shape)):>20}{f_tc * 1e3:>9.2f}{f_t * 1e3:>8.2f}"
              f"{f_tc / f_t:>7.2f}{b_tc * 1e3:>9.2f}{b_t * 1e3:>8.2f}{b_tc / b_t:>7.2f}")


def ops_worker(framework, net_name, threads, reps=5):
    """Time each layer of the net (forward; backward alone), best of `reps`; print JSON rows."""
    import numpy as np
    sys.path.insert(0, str(ROOT))
    import tinyconv as tc
    from tinyconv import models
    args, shape = NETS[net_name]
    model = _build(models, net_name)
    batch = BATCHES.get(net_name, BATCH)
    calls = _leaf_calls(model, tc.Tensor(_batch(shape, batch=batch)[0]))   # shapes, from tinyconv
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    for module, in_shape in calls:
        if type(module).__name__ in ("Flatten", "Scale"):
            continue
        x = rng.standard_normal(in_shape).astype(np.float32)
        if framework == "torch":
            twin = _torch_twin(torch, module)
            fwd, bwd = zip(*[_time_torch(torch, twin, x) for _ in range(reps)])
        else:
            fwd, bwd = zip(*[_time_tc(tc, module, x) for _ in range(reps)])
        rows.append((f"{type(module).__name__}({module.extra_repr()})", in_shape,
                     min(fwd), min(bwd)))
    print(json.dumps(rows))


def _torch_twin(torch, module):
    """The torch layer equal to a tinyconv leaf layer, with the same weights."""
    tnn, kind = torch.nn, type(module).__name__
    if kind == "Conv2d":
        twin = tnn.Conv2d(module.in_channels, module.out_channels, module.kernel_size,
                          module.stride, module.padding, module.dilation, module.groups,
                          bias=module.bias is not None)
    elif kind == "BatchNorm2d":
        twin = tnn.BatchNorm2d(module.num_features)
    elif kind == "GELU":
        twin = tnn.GELU()
    elif kind == "Linear":
        twin = tnn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    elif kind == "MaxPool2d":
        twin = tnn.MaxPool2d(module.kernel_size, module.stride, module.padding)
    elif kind == "ReLU":
        twin = tnn.ReLU()
    else:
        raise ValueError(f"no torch twin for {kind}")
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in module.state_dict().items()})
    return twin


def _time_tc(tc, module, x):
    import numpy as np
    xt = tc.Tensor(x, requires_grad=True)
    start = time.perf_counter()
    y = module(xt)
    mid = time.perf_counter()
    y.backward(np.ones_like(y.data))
    return mid - start, time.perf_counter() - mid


def _time_torch(torch, module, x):
    xt = torch.from_numpy(x).requires_grad_()
    start = time.perf_counter()
    y = module(xt)
    mid = time.perf_counter()
    y.backward(torch.ones_like(y))
    return mid - start, time.perf_counter() - mid


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
    parser.add_argument("--ops-worker", choices=["tinyconv", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--profile", metavar="NET", help="per-op breakdown of tinyconv's step")
    parser.add_argument("--profile-torch", metavar="NET", help="per-op breakdown of torch's step")
    parser.add_argument("--ops", metavar="NET", help="each layer of NET, tinyconv vs torch")
    args = parser.parse_args(argv)
    default_steps = {"mnist_cnn": 30, "resnet9_half": 10, "resnet9": 5, "airbench94": 4}
    if args.worker:
        worker(args.worker, args.nets, args.steps or default_steps[args.nets], args.warmup,
               args.threads)
        return
    if args.ops_worker:
        ops_worker(args.ops_worker, args.ops, args.threads)
        return
    if args.ops:
        compare_ops(args.ops, args.threads)
        return
    if args.profile_torch:
        profile_torch(args.profile_torch, args.steps or default_steps[args.profile_torch],
                      args.warmup, args.threads)
        return
    if args.profile:
        os.environ.setdefault("TINYCONV_NUM_THREADS", str(args.threads))
        profile(args.profile, args.steps or default_steps[args.profile], args.warmup)
        return
    print(f"training step, batch {BATCH} ({', '.join(f'{k} {v}' for k, v in BATCHES.items())}), "
          f"float32, {args.threads} threads; median step time of "
          f"the best of {args.rounds} rounds; largest peak RSS of a process; load average "
          f"{os.getloadavg()[0]:.2f} at the start (other processes skew the timings)")
    print(f"{'net':<14}{'tinyconv img/s':>15}{'torch img/s':>13}{'time ratio':>12}"
          f"{'tc MB':>8}{'torch MB':>10}{'mem ratio':>11}{'tc GFLOP/s':>12}")
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
        batch = BATCHES.get(net, BATCH)
        gflops = 3 * GFLOP_FORWARD[net] * batch / ours          # a step is ~3x a forward pass
        print(f"{net:<14}{batch / ours:>15.0f}{batch / theirs:>13.0f}{ours / theirs:>12.2f}"
              f"{peak['tinyconv']:>8.0f}{peak['torch']:>10.0f}"
              f"{peak['tinyconv'] / peak['torch']:>11.2f}{gflops:>12.0f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
