"""Data pipeline speed on ONE core: decoding, augmentation presets, whole batches.

    python benchmarks/bench_data.py                  # everything (~1-2 minutes)
    python benchmarks/bench_data.py --skip-decode --skip-baseline

(a) decoding the CIFAR-10 training folder (../shared/datasets/cifar10/train, 50,000 JPEGs) into
    arrays: cold (Pillow, one thread) and from the .npy cache;
(b) the CIFAR preset (pad 4 reflect + crop 32 + flip, optionally cutout 16) and aug_transforms on
    32x32 batches of 128;
(c) aug_transforms on 224x224 batches of 64 (CIFAR images upscaled to 224).

"batch" rows time DataLoader.make_batch: gather the images, augment, normalise to float32 NCHW,
i.e. everything the training loop receives; "transform" rows time the augmentation alone. All run
in the main thread, single-threaded (the Numba kernels are not parallel): images/s by the wall
clock and by the thread's CPU time (less sensitive to other load on a shared machine), best of 3.

Baseline, measured in the same run: images/s of a resnet9(width=32) training step in PyTorch
(batch 128, 2 threads, via bench_train_step.py's worker). Targets: CIFAR preset >= 5x that,
aug_transforms at 224x224 >= 500 images/s.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tinyconv import augment as A  # noqa: E402
from tinyconv.data import ArrayDataset, DataLoader, ImageFolder  # noqa: E402

CIFAR_TRAIN = ROOT.parent / "shared" / "datasets" / "cifar10" / "train"


def timed(fn, n_images, min_seconds=1.0, repeats=3):
    """(wall img/s, cpu img/s): best of `repeats` runs of fn repeated for >= min_seconds."""
    fn()                                   # warm-up: Numba compile or cache load
    best_wall = best_cpu = 0.0
    for _ in range(repeats):
        calls, wall0, cpu0 = 0, time.perf_counter(), time.thread_time()
        while True:
            fn()
            calls += 1
            wall = time.perf_counter() - wall0
            if wall >= min_seconds:
                break
        cpu = time.thread_time() - cpu0
        best_wall = max(best_wall, calls * n_images / wall)
        best_cpu = max(best_cpu, calls * n_images / cpu)
    return best_wall, best_cpu


def row(name, wall, cpu, note=""):
    print(f"  {name:<52}{wall:>12,.0f}{cpu:>12,.0f}  {note}", flush=True)


def bench_decode(cache_dir):
    print(f"(a) decode {CIFAR_TRAIN}  [images/s: wall, cpu]")
    t0, c0 = time.perf_counter(), time.process_time()
    ds = ImageFolder(CIFAR_TRAIN, cache=False, num_workers=1)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    row(f"cold, Pillow, 1 thread ({len(ds)} JPEGs)", len(ds) / wall, len(ds) / cpu,
        f"{wall:.1f} s")
    ImageFolder(CIFAR_TRAIN, cache=cache_dir)           # decodes once more and writes the cache
    t0, c0 = time.perf_counter(), time.process_time()
    cached = ImageFolder(CIFAR_TRAIN, cache=cache_dir)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert np.array_equal(cached.images, ds.images)
    row("from the .npy cache (listing + stat + load)", len(ds) / wall, len(ds) / cpu,
        f"{wall:.2f} s")
    return ds


def bench_configs(ds, batch, configs, results, prefix=""):
    """Time each (name, transform) alone and as whole DataLoader batches of `batch` images."""
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(ds))[:batch]
    for name, tfm in configs:
        if tfm is not None:
            wall, cpu = timed(lambda: tfm(ds.images[idx], rng), batch)
            row(f"transform  {name}", wall, cpu)
        dl = DataLoader(ds, batch_size=batch, transform=tfm, prefetch=0, mean=A.CIFAR10_MEAN,
                        std=A.CIFAR10_STD)
        seq = np.random.SeedSequence(1)
        wall, cpu = timed(lambda: dl.make_batch(idx, seq), batch)
        row(f"batch      {name}", wall, cpu)
        results[prefix + name] = (wall, cpu)


def bench_augment(ds, big_n):
    results = {}
    print("(b) 32x32, batch 128, one core  [images/s: wall, cpu]")
    bench_configs(ds, 128, [("no augmentation (gather + normalise)", None),
                            ("CIFAR preset (pad 4 + crop 32 + flip)", A.cifar_transforms()),
                            ("CIFAR preset + cutout 16", A.cifar_transforms(cutout=16)),
                            ("aug_transforms()", A.aug_transforms()),
                            ("transforms_side_on() (fastai 0.7)", A.transforms_side_on())],
                  results)
    print("(c) 224x224, batch 64, one core  [images/s: wall, cpu]")
    big = A.resize(224)(ds.images[:big_n], np.random.default_rng(0))
    big_ds = ArrayDataset(big, ds.labels[:big_n], ds.classes)
    bench_configs(big_ds, 64, [("aug_transforms()", A.aug_transforms()),
                               ("aug_transforms(size=160, min_scale=0.35)",
                                A.aug_transforms(size=160, min_scale=0.35)),
                               ("transforms_side_on() (fastai 0.7)", A.transforms_side_on())],
                  results, prefix="224 ")
    return results


def baseline(framework="torch"):
    """resnet9(width=32) training step images/s, via bench_train_step.py's worker process."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_train_step.py"), "--worker",
           framework, "--nets", "resnet9_half", "--steps", "8", "--warmup", "2", "--threads", "2"]
    env = dict(os.environ, TINYCONV_NUM_THREADS="2", OMP_NUM_THREADS="2")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"  ({framework} baseline failed: {out.stderr.strip().splitlines()[-1:]})")
        return None
    return 128 / json.loads(out.stdout.strip().splitlines()[-1])["median"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-decode", action="store_true",
                        help="load the folder through the default cache instead of timing decode")
    parser.add_argument("--skip-baseline", action="store_true", help="no training-step baseline")
    parser.add_argument("--tinyconv-baseline", action="store_true",
                        help="also time tinyconv's own resnet9(width=32) step")
    parser.add_argument("--big", type=int, default=512, help="images upscaled to 224x224")
    args = parser.parse_args(argv)
    print(f"{'':<54}{'wall':>10}{'cpu':>12}")
    with tempfile.TemporaryDirectory() as cache_dir:
        ds = ImageFolder(CIFAR_TRAIN) if args.skip_decode else bench_decode(cache_dir)
    results = bench_augment(ds, args.big)
    if args.skip_baseline:
        return
    print("baseline: resnet9(width=32) training step, batch 128, 2 threads")
    frameworks = ["torch"] + (["tinyconv"] if args.tinyconv_baseline else [])
    for framework in frameworks:
        step = baseline(framework)
        if step is None:
            continue
        cifar = results["CIFAR preset (pad 4 + crop 32 + flip)"][0]
        print(f"  {framework} step: {step:,.0f} img/s; CIFAR preset batches (wall) are "
              f"{cifar / step:,.0f}x that (target >= 5x)")
    big = results["224 aug_transforms()"][0]
    print(f"  aug_transforms 224x224 batches: {big:,.0f} img/s (target >= 500)")


if __name__ == "__main__":
    main()
