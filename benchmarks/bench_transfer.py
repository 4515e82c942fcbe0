"""Transfer learning at 224 px: ResNet-34 inference, a fine-tuning step, and the precomputed head,
tinyconv against PyTorch (CPU) in the same run.

    python benchmarks/bench_transfer.py                    # inference + head, 2 rounds
    python benchmarks/bench_transfer.py --step --rounds 3  # also a full fine-tuning step (slow)

inference: ResNet-34 in eval mode, a batch of --batch images of 3x224x224 -> images/s.
step: the whole net training (batch 32: forward, cross-entropy, backward, SGD momentum 0.9).
head: what precompute buys. One training step of fastai's head (BatchNorm1d, Dropout, Linear,
ReLU, ..., on the (32, 1024) cached activations) against the forward pass of the frozen body it
replaces (32 images, no gradients) -> images/s of each and their ratio (target >= 50x).

Each measurement runs in a fresh process (`--worker`), tinyconv and torch alternated round by
round so that both see the same background load; the median time after one warm-up call.
Targets (issue 17): inference <= 1.3x torch's time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _median_time(f, reps):
    f()                                                   # warm-up: compilation, allocations
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _tinyconv(task, batch, reps):
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import tinyconv as tc
    from tinyconv.nn import functional as F
    rng = np.random.default_rng(0)
    if task == "head":
        net = tc.models.transfer_net("resnet34", n_out=10, rng=rng)
        head = tc.nn.Sequential(*net.head.layers[2:]).train()
        feats = tc.Tensor(rng.standard_normal((32, 1024), dtype=np.float32))
        y = rng.integers(0, 10, 32)
        opt = tc.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)
        x = tc.Tensor(rng.standard_normal((32, 3, 224, 224), dtype=np.float32))
        body = net.body.eval()

        def head_step():
            opt.zero_grad()
            F.cross_entropy(head(feats), y).backward()
            opt.step()

        def body_forward():
            with tc.no_grad():
                body(x)
        return {"head": _median_time(head_step, reps * 5), "body": _median_time(body_forward, reps)}
    net = tc.models.resnet34(num_classes=10, rng=rng)
    x = tc.Tensor(rng.standard_normal((batch, 3, 224, 224), dtype=np.float32))
    if task == "inference":
        net.eval()

        def run():
            with tc.no_grad():
                net(x)
        return {"inference": _median_time(run, reps)}
    y = rng.integers(0, 10, batch)
    opt = tc.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return {"step": _median_time(step, reps)}


def _torch(task, batch, reps):
    import torch
    sys.path.insert(0, str(ROOT / "tests"))
    from torch_resnets import resnet
    torch.manual_seed(0)
    net = resnet("resnet34", 10, randomize_bn=False)
    if task == "head":
        tnn = torch.nn
        head = tnn.Sequential(tnn.BatchNorm1d(1024), tnn.Dropout(0.25),
                              tnn.Linear(1024, 512, bias=False), tnn.ReLU(), tnn.BatchNorm1d(512),
                              tnn.Dropout(0.5), tnn.Linear(512, 10, bias=False))
        feats, y = torch.randn(32, 1024), torch.randint(0, 10, (32,))
        opt = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)
        body = tnn.Sequential(*list(net.children())[:-2]).eval()
        x = torch.randn(32, 3, 224, 224)

        def head_step():
            opt.zero_grad()
            tnn.functional.cross_entropy(head(feats), y).backward()
            opt.step()

        def body_forward():
            with torch.no_grad():
                body(x)
        return {"head": _median_time(head_step, reps * 5), "body": _median_time(body_forward, reps)}
    x = torch.randn(batch, 3, 224, 224)
    if task == "inference":
        net.eval()

        def run():
            with torch.no_grad():
                net(x)
        return {"inference": _median_time(run, reps)}
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net.train()

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return {"step": _median_time(step, reps)}


def _worker(argv):
    framework, task, batch, reps, threads = argv[0], argv[1], int(argv[2]), int(argv[3]), argv[4]
    if framework == "torch":
        import torch
        torch.set_num_threads(int(threads))
    result = (_torch if framework == "torch" else _tinyconv)(task, batch, reps)
    print(json.dumps(result))


def _measure(framework, task, batch, reps, threads):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, __file__, "--worker", framework, task, str(batch),
                          str(reps), str(threads)], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return _worker(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--reps", type=int, default=3, help="timed calls per process")
    p.add_argument("--batch", type=int, default=16, help="inference batch")
    p.add_argument("--step", action="store_true", help="also time a fine-tuning step (batch 32)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    tasks = [("inference", args.batch), ("head", 32)] + ([("step", 32)] if args.step else [])
    times = {}
    for _ in range(args.rounds):
        for task, batch in tasks:
            for fw in ("tinyconv", "torch"):
                for k, v in _measure(fw, task, batch, args.reps, args.threads).items():
                    times.setdefault((fw, k), []).append(v)
    med = {key: statistics.median(v) for key, v in times.items()}
    print(f"ResNet-34, 224 px, {args.threads} threads, {args.rounds} rounds x {args.reps} reps "
          f"(median seconds per call)")
    for what, n in (("inference", args.batch), ("step", 32), ("body", 32), ("head", 32)):
        if ("tinyconv", what) not in med:
            continue
        a, b = med[("tinyconv", what)], med[("torch", what)]
        print(f"  {what:<10} tinyconv {a * 1e3:9.1f} ms ({n / a:8.1f} img/s)   torch "
              f"{b * 1e3:9.1f} ms ({n / b:8.1f} img/s)   ratio {a / b:5.2f}x")
    for fw in ("tinyconv", "torch"):
        if (fw, "head") in med:
            speedup = med[(fw, 'body')] / med[(fw, 'head')]
            print(f"  precompute, {fw}: a head step is {speedup:.0f}x "
                  f"faster than the body's forward pass it replaces")


if __name__ == "__main__":
    main()
