"""Convolution speed: tinyconv (Numba kernels, NumPy reference) against PyTorch, layer by layer.

    python benchmarks/bench_conv.py                    # 3 rounds, all three implementations
    python benchmarks/bench_conv.py --rounds 5 --skip numpy
    python benchmarks/bench_conv.py --compile-time     # first-call Numba compile / cache load

The nine reference layers (3x3, padding 1, no bias, batch 128, float32, 2 threads), timed forward
and forward+backward (gradients of the input and of the weight). Each implementation runs in its
own process; the processes alternate (numba, numpy, torch, numba, ...) for `--rounds` rounds so
that all see the same background load, with no sleeps between samples. Reported: the median over
all samples of all rounds, in ms per layer, the ratio to torch per layer, and the summed ratio.
Targets (issue 3): summed fwd+bwd <= 1.5x torch, no layer worse than 2.5x, Numba >= 2x faster
than the NumPy reference.

On a shared machine the numbers move with the neighbours' load: compare ratios from one run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128
# (C_in, C_out, H = W, stride)
LAYERS = [(1, 32, 28, 1), (32, 64, 28, 1), (32, 64, 14, 1), (3, 64, 32, 1), (64, 64, 32, 1),
          (64, 128, 32, 2), (128, 128, 16, 1), (128, 256, 16, 2), (256, 256, 8, 1)]
IMPLS = ["numba", "numpy", "torch"]


def layer_name(layer) -> str:
    c_in, c_out, hw, stride = layer
    return f"{c_in}->{c_out} @{hw}" + (f" s{stride}" if stride > 1 else "")


def _inputs(layer, seed=0):
    import numpy as np
    c_in, c_out, hw, stride = layer
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, c_in, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((c_out, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32)
    out = (hw + 2 - 3) // stride + 1
    dy = rng.standard_normal((BATCH, c_out, out, out)).astype(np.float32)
    return x, w, dy


def _tinyconv_layer(layer, backend):
    sys.path.insert(0, str(ROOT))
    import tinyconv as tc
    from tinyconv import kernels
    from tinyconv.ops.conv import conv2d
    kernels.set_backend(backend)
    x_np, w_np, dy = _inputs(layer)
    stride = layer[3]

    def forward():
        x = tc.Tensor(x_np, requires_grad=True)
        w = tc.Tensor(w_np, requires_grad=True)
        return conv2d(x, w, stride=stride, padding=1)

    def backward(y):
        y.backward(dy)
    return forward, backward


def _torch_layer(layer):
    import torch
    x_np, w_np, dy_np = _inputs(layer)
    dy = torch.from_numpy(dy_np)
    stride = layer[3]

    def forward():
        x = torch.from_numpy(x_np).requires_grad_(True)
        w = torch.from_numpy(w_np).requires_grad_(True)
        return torch.nn.functional.conv2d(x, w, stride=stride, padding=1)

    def backward(y):
        y.backward(dy)
    return forward, backward


def worker(impl: str, samples: int, threads: int) -> None:
    """Time every layer in this process: one warm-up, then `samples` fwd / fwd+bwd pairs."""
    if impl == "torch":
        import torch
        torch.set_num_threads(threads)
    result = {}
    for layer in LAYERS:
        forward, backward = _torch_layer(layer) if impl == "torch" else \
            _tinyconv_layer(layer, impl)
        backward(forward())                                    # warm-up (compile, allocate)
        fwd, total = [], []
        for _ in range(samples):
            start = time.perf_counter()
            y = forward()
            middle = time.perf_counter()
            backward(y)
            end = time.perf_counter()
            fwd.append(middle - start)
            total.append(end - start)
            del y
        result[layer_name(layer)] = {"fwd": fwd, "total": total}
    print(json.dumps(result))


def _env(threads: int, **extra) -> dict:
    return dict(os.environ, TINYCONV_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                NUMBA_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), **extra)


def _run(args: list, env: dict) -> str:
    out = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker {args} failed:\n{out.stderr}")
    return out.stdout.strip().splitlines()[-1]


def _median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def compare(impls, rounds, samples, threads):
    """Alternate the implementations' processes; return {impl: {layer: {fwd, total}}} medians."""
    samples_of = {impl: {layer_name(l): {"fwd": [], "total": []} for l in LAYERS}
                  for impl in impls}
    for r in range(rounds):
        for impl in impls:
            data = json.loads(_run(["--worker", impl, "--samples", str(samples),
                                    "--threads", str(threads)], _env(threads)))
            for name, d in data.items():
                samples_of[impl][name]["fwd"] += d["fwd"]
                samples_of[impl][name]["total"] += d["total"]
            print(f"  round {r + 1}/{rounds}: {impl} done", file=sys.stderr, flush=True)
    return {impl: {name: {k: _median(v) * 1e3 for k, v in d.items()}
                   for name, d in per.items()} for impl, per in samples_of.items()}


def report(ms: dict, markdown: bool = False) -> None:
    impls = list(ms)
    base = "torch" if "torch" in ms else None
    cols = []
    for impl in impls:
        cols += [f"{impl} fwd", f"{impl} f+b"]
        if base and impl != base:
            cols += [f"{impl}/torch f+b"]
    sep = " | " if markdown else "  "
    header = f"{'layer':<16}" + sep + sep.join(f"{c:>16}" for c in cols)
    print(("| " + header + " |\n|" + "---|" * (len(cols) + 1)) if markdown else header)
    sums = {impl: {"fwd": 0.0, "total": 0.0} for impl in impls}
    worst = {impl: 0.0 for impl in impls}
    for layer in LAYERS:
        name = layer_name(layer)
        cells = []
        for impl in impls:
            f, t = ms[impl][name]["fwd"], ms[impl][name]["total"]
            sums[impl]["fwd"] += f
            sums[impl]["total"] += t
            cells += [f"{f:.1f}", f"{t:.1f}"]
            if base and impl != base:
                ratio = t / ms[base][name]["total"]
                worst[impl] = max(worst[impl], ratio)
                cells.append(f"{ratio:.2f}x")
        line = f"{name:<16}" + sep + sep.join(f"{c:>16}" for c in cells)
        print(("| " + line + " |") if markdown else line)
    cells = []
    for impl in impls:
        cells += [f"{sums[impl]['fwd']:.1f}", f"{sums[impl]['total']:.1f}"]
        if base and impl != base:
            cells.append(f"{sums[impl]['total'] / sums[base]['total']:.2f}x")
    line = f"{'sum':<16}" + sep + sep.join(f"{c:>16}" for c in cells)
    print(("| " + line + " |") if markdown else line)
    if base:
        for impl in impls:
            if impl != base:
                print(f"{impl}: summed fwd+bwd {sums[impl]['total'] / sums[base]['total']:.2f}x "
                      f"torch (fwd alone {sums[impl]['fwd'] / sums[base]['fwd']:.2f}x), worst "
                      f"layer {worst[impl]:.2f}x")
    if "numba" in sums and "numpy" in sums:
        print(f"numba is {sums['numpy']['total'] / sums['numba']['total']:.2f}x faster than the "
              f"numpy reference (summed fwd+bwd)")


# ---- compile time --------------------------------------------------------------------------------

def compile_worker() -> None:
    """First call vs second call of every kernel a training step uses (float32)."""
    sys.path.insert(0, str(ROOT))
    start = time.perf_counter()
    import numpy as np
    from tinyconv import Tensor
    from tinyconv.ops.conv import conv2d
    from tinyconv.ops.norm import batch_norm
    from tinyconv.ops.pool import max_pool2d
    imported = time.perf_counter() - start
    rng = np.random.default_rng(0)

    def step():
        for c_in in (3, 16):       # direct (3 channels) or Winograd, then im2col + GEMM (stride 2)
            x = Tensor(rng.standard_normal((8, c_in, 12, 12)).astype(np.float32), True)
            w = Tensor(rng.standard_normal((16, c_in, 3, 3)).astype(np.float32), True)
            y = conv2d(x, w, padding=1)
            y = conv2d(y, Tensor(w.data[:, :1].repeat(16, 1), True), stride=2, padding=1)
            y = batch_norm(y, np.zeros(16, np.float32), np.ones(16, np.float32),
                           Tensor(np.ones(16, np.float32), True), Tensor(np.zeros(16, np.float32),
                                                                         True), training=True)
            y = max_pool2d(y, 2)
            y.backward(np.ones(y.shape, np.float32))

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    step()
    second = time.perf_counter() - t0
    print(json.dumps({"import": imported, "first": first, "second": second}))


def compile_time(threads: int) -> None:
    cache = tempfile.mkdtemp(prefix="tinyconv-numba-cache-")
    try:
        env = _env(threads, NUMBA_CACHE_DIR=cache)
        cold = json.loads(_run(["--compile-worker"], env))
        warm = json.loads(_run(["--compile-worker"], env))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print("first call of the kernels of a training step (conv: direct, Winograd, im2col + GEMM; "
          "batch norm, max pool; fwd+bwd, float32):")
    print(f"  empty cache (compiling):   {cold['first'] - cold['second']:6.1f} s extra on the "
          f"first call (import {cold['import']:.1f} s)")
    print(f"  warm cache (loading):      {warm['first'] - warm['second']:6.2f} s extra on the "
          f"first call (import {warm['import']:.1f} s)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=3, help="timed calls per layer and process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma-separated implementations to leave out")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--json", help="also write the medians to this file")
    parser.add_argument("--compile-time", action="store_true")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--compile-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.samples, args.threads)
        return
    if args.compile_worker:
        compile_worker()
        return
    if args.compile_time:
        compile_time(args.threads)
        return
    impls = [i for i in IMPLS if i not in args.skip.split(",")]
    if "torch" in impls:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("torch is not installed: no baseline, no ratios", file=sys.stderr)
            impls.remove("torch")
    blas = _blas_line(args.threads)
    print(f"conv 3x3 pad 1, batch {BATCH}, float32, {args.threads} threads, median of "
          f"{args.rounds} rounds x {args.samples} samples, ms; {blas}; load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    ms = compare(impls, args.rounds, args.samples, args.threads)
    report(ms, args.markdown)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps(ms, indent=1))


def _blas_line(threads: int) -> str:
    code = ("import sys; sys.path.insert(0, %r); import tinyconv, numpy; "
            "from tinyconv._threads import blas_info; print(blas_info())" % str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=_env(threads), capture_output=True,
                         text=True)
    core = out.stdout.strip() or "unknown"
    return f"OpenBLAS kernels: {core} (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')})"


if __name__ == "__main__":
    main()
