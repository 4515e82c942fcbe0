"""Inference speed of an exported net: ONNX Runtime and PyTorch against tinyconv, same inputs.

    python benchmarks/bench_export.py                          # three nets, batch 64, 3 rounds
    python benchmarks/bench_export.py --nets mnist_cnn --rounds 1 --iters 3

What a user gains by exporting: the same trained weights, run forward in evaluation mode
(batch norm with running statistics, no gradients) at batch 64, float32, 2 threads, by
    tinyconv      the model itself, under tc.no_grad()
    onnxruntime   the file tc.export_onnx wrote, in an InferenceSession (CPU provider)
    torch         the torch twin of the net (tests/torch_nets.py), loaded with load_state_dict
                  from the file tc.save_safetensors wrote

Each measurement runs in a fresh process, the three alternated round by round so that they see
the same background load; a worker reports the median time per batch after warm-up batches
(Numba compilation, ONNX Runtime's first-run graph optimisation). Every worker also returns its
logits for the batch, and the table shows the largest difference from tinyconv's: the speeds are
of the same computation. A report only: there is no target.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NETS = {                          # name -> (resnet9 width or None for mnist_cnn, one image's shape)
    "mnist_cnn": (None, (1, 28, 28)),
    "resnet9_half": (32, (3, 32, 32)),
    "resnet9": (64, (3, 32, 32)),
}
FRAMEWORKS = ("tinyconv", "onnxruntime", "torch")


def _tinyconv_net(net_name):
    """The seeded tinyconv net (the same weights in every worker), in eval mode."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import tinyconv as tc
    width, _ = NETS[net_name]
    rng = np.random.default_rng(0)
    net = tc.models.mnist_cnn(rng=rng) if width is None else tc.models.resnet9(width=width,
                                                                               rng=rng)
    return net.eval()


def _batch(net_name, batch):
    import numpy as np
    return np.random.default_rng(1).standard_normal((batch, *NETS[net_name][1])).astype(
        np.float32)


def _forward(framework, net_name, batch, threads, folder):
    """A function running one forward pass of the batch in `framework`; returns the logits."""
    net = _tinyconv_net(net_name)
    x = _batch(net_name, batch)
    if framework == "tinyconv":
        import tinyconv as tc

        def run():
            with tc.no_grad():
                return net(tc.Tensor(x)).data
        return run
    if framework == "onnxruntime":
        import onnxruntime as ort
        import tinyconv as tc
        path = tc.export_onnx(net, os.path.join(folder, f"{net_name}.onnx"),
                              input_shape=(1, *NETS[net_name][1]))
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return lambda: session.run(None, {"input": x})[0]
    import torch
    import tinyconv as tc
    from safetensors.torch import load_file
    sys.path.insert(0, str(ROOT / "tests"))
    import torch_nets                                 # the same nets, written in PyTorch
    torch.set_num_threads(threads)
    width = NETS[net_name][0]
    twin = torch_nets.mnist_cnn() if width is None else torch_nets.resnet9(width=width)
    twin.load_state_dict(load_file(tc.save_safetensors(
        net, os.path.join(folder, f"{net_name}.safetensors"))))
    twin.eval()
    xt = torch.from_numpy(x)

    def run():
        with torch.no_grad():
            return twin(xt).numpy()
    return run


def worker(framework, net_name, batch, iters, warmup, threads):
    """Time `iters` forward passes after `warmup`; print one JSON line."""
    with tempfile.TemporaryDirectory() as folder:
        run = _forward(framework, net_name, batch, threads, folder)
        for _ in range(warmup):
            logits = run()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            logits = run()
            times.append(time.perf_counter() - start)
    times.sort()
    print(json.dumps({"median": times[len(times) // 2], "logits": logits.tolist()}))


def _run_worker(framework, net_name, args):
    env = dict(os.environ, TINYCONV_NUM_THREADS=str(args.threads),
               OMP_NUM_THREADS=str(args.threads), NUMBA_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--worker", framework, "--nets", net_name,
           "--batch", str(args.batch), "--iters", str(args.iters), "--warmup", str(args.warmup),
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{framework} worker for {net_name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default=",".join(NETS), help="comma-separated: " + ", ".join(NETS))
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=10, help="timed batches per worker")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="alternated processes per framework")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.nets, args.batch, args.iters, args.warmup, args.threads)

    import numpy as np
    nets, frameworks = args.nets.split(","), args.frameworks.split(",")
    print(f"forward, eval mode, batch {args.batch}, float32, {args.threads} threads; "
          f"images/s (median of {args.rounds} x {args.iters} batches)")
    print(f"{'net':<14}{'framework':<13}{'images/s':>10}{'vs tinyconv':>13}{'max |diff|':>12}")
    for net_name in nets:
        samples = {f: [] for f in frameworks}
        logits = {}
        for _ in range(args.rounds):
            for framework in frameworks:
                result = _run_worker(framework, net_name, args)
                samples[framework].append(result["median"])
                logits[framework] = np.asarray(result["logits"])
        rate = {f: args.batch / float(np.median(samples[f])) for f in frameworks}
        base = rate.get("tinyconv")
        for f in frameworks:
            ratio = f"{rate[f] / base:.2f}x" if base else "-"
            diff = f"{np.abs(logits[f] - logits['tinyconv']).max():.1e}" \
                if "tinyconv" in logits else "-"
            print(f"{net_name:<14}{f:<13}{rate[f]:>10.0f}{ratio:>13}{diff:>12}")


if __name__ == "__main__":
    main()
