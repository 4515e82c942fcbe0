"""The `tinyconv` command: train, lr-find, evaluate, predict, show-aug, plot-schedule, export.

    tinyconv train                            # mnist_cnn on the bundled MNIST: LR finder, one-cycle
    tinyconv train --data pets/ --arch resnet9 --aug side_on --epochs 10 --tta
    tinyconv evaluate runs/<stamp>/model.npz --data mnist --json

Bad arguments and bad data end in one line on stderr and exit code 2 (no traceback; --debug shows
one). Everything a run makes goes into --out: the model file, the pictures, metrics.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from functools import partial

import numpy as np

from .cli_types import finite_float, int_at_least
from .augment import TTA_MODES
from .cli_recipe import RECIPES
from . import sched
from .sched import POLICIES

__all__ = ["main", "build_parser", "UsageError"]

AUGS = ("auto", "none", "shift", "basic", "side_on", "top_down", "cifar")
ARCHS = ("auto", "mnist_cnn", "resnet9", "resnet18", "resnet34", "resnet50")
PLOT_MAX_POINTS = 1_000_000   # plot-schedule evaluates the schedule once per batch
TRAIN_EPOCHS, BATCH_SIZE = 8, 64   # train's defaults (a --recipe brings its own)


class UsageError(Exception):
    """A problem with the command's arguments or data: printed as one line, exit code 2."""


# ---- data ----------------------------------------------------------------------------------------
class DataSpec:
    """What `--data` resolved to: datasets, where they came from, and a name for the report."""

    def __init__(self, kind, train, valid, test, classes):
        self.kind, self.classes = kind, classes
        self.train, self.valid, self.test = train, valid, test


def load_data(args, valid_pct: float, hold_out: bool = True) -> DataSpec:
    """`detect_data` for the command's --data, --size and --seed, then its --limit."""
    ds = detect_data(args.data, valid_pct, args.seed, size=args.size,
                     crop=getattr(args, "crop", False), hold_out=hold_out)
    limit = getattr(args, "limit", None)
    if limit is not None:
        if limit < 1:
            raise UsageError(f"--limit must be >= 1, got {limit}")
        if limit < len(ds.train):
            keep = np.random.default_rng(args.seed).choice(len(ds.train), limit, replace=False)
            ds.train = ds.train.subset(np.sort(keep))
    return ds


def detect_data(spec: str, valid_pct: float, seed: int, size=None,
                crop=False, hold_out: bool = True) -> DataSpec:
    """Resolve `--data`: "mnist" (bundled), an MNIST IDX folder, a cifar-10-batches-py folder, or
    an image folder (PATH/<class>/*, or PATH/train/<class> with PATH/valid|test/<class>).
    A plain image folder without valid_pct holds out 0.2 of it, unless hold_out=False."""
    from . import data

    if spec == "mnist":
        train, test = data.MNIST(train=True), data.MNIST(train=False)
        return _with_valid("mnist", train, test, valid_pct, seed)
    kind, held_out = _data_kind(spec)
    if kind == "mnist":
        return _with_valid("mnist", data.MNIST(spec, train=True), data.MNIST(spec, train=False),
                           valid_pct, seed)
    if kind == "cifar10":
        return _with_valid("cifar10", data.CIFAR10(spec, train=True),
                           data.CIFAR10(spec, train=False), valid_pct, seed)
    if kind == "split folder":
        train = data.ImageFolder(os.path.join(spec, "train"), size=size, crop=crop)
        other = data.ImageFolder(os.path.join(spec, held_out), size=size, crop=crop)
        if other.classes != train.classes:
            raise UsageError(f"--data {spec}: train/ has classes {train.classes} but "
                             f"{held_out}/ has {other.classes}")
        if held_out == "test":
            return _with_valid("folder", train, other, valid_pct, seed)
        return DataSpec("folder", train, other, None, train.classes)
    folder = data.ImageFolder(spec, size=size, crop=crop)
    if not valid_pct and not hold_out:                 # train on every image, score nothing
        return DataSpec("folder", folder, None, None, folder.classes)
    train, valid = data.split(folder, valid_pct=valid_pct or 0.2, seed=seed)
    return DataSpec("folder", train, valid, None, folder.classes)


def _data_kind(spec: str):
    """(kind, held-out folder name) of a --data folder: "mnist" (IDX files), "cifar10" (the
    batches, or the folder holding cifar-10-batches-py/-bin), "split folder" (PATH/train with
    PATH/valid or PATH/test) or "folder" (PATH/<class>/<images>)."""
    if not os.path.exists(spec):
        raise UsageError(f"--data {spec}: no such file or folder")
    if not os.path.isdir(spec):
        raise UsageError(f"--data {spec}: expected a folder (an image folder, an MNIST IDX "
                         f"folder or a cifar-10-batches-py folder), got a file")
    names = set(os.listdir(spec))
    if any(n.startswith("train-images-idx3-ubyte") or n.startswith("t10k-images-idx3-ubyte")
           for n in names):
        return "mnist", None
    cifar_dirs = {"cifar-10-batches-py", "cifar-10-batches-bin"}
    if names & {"data_batch_1", "data_batch_1.bin", "test_batch", "test_batch.bin"} or \
            any(os.path.isdir(os.path.join(spec, n)) for n in names & cifar_dirs):
        return "cifar10", None
    held_out = next((n for n in ("valid", "test") if os.path.isdir(os.path.join(spec, n))), None)
    if "train" in names and os.path.isdir(os.path.join(spec, "train")) and held_out:
        return "split folder", held_out
    return "folder", None


def detect_eval_data(spec: str, size=None, crop=False):
    """What `evaluate --data` scores -> (dataset, kind, what it is), decoding only that split:
    the test split of MNIST or CIFAR-10, PATH/valid or PATH/test of a split folder, and every
    image of a plain class folder (nothing was held out of it for a model to have been tuned on;
    scoring a random 20% would silently drop the rest)."""
    from . import data

    if spec == "mnist":
        return data.MNIST(train=False), "mnist", "the MNIST test split"
    kind, held_out = _data_kind(spec)
    if kind == "mnist":
        return data.MNIST(spec, train=False), kind, f"the test split of {spec}"
    if kind == "cifar10":
        return data.CIFAR10(spec, train=False), kind, f"the test split of {spec}"
    if kind == "split folder":
        path = os.path.join(spec, held_out)
        return data.ImageFolder(path, size=size, crop=crop), "folder", path
    return data.ImageFolder(spec, size=size, crop=crop), "folder", f"every image of {spec}"


def _with_valid(kind, train, test, valid_pct, seed) -> DataSpec:
    """With --valid-pct, hold out part of train for validation; else the epochs are validated on
    the test split itself (nothing is tuned on it: the LR finder only sees training batches)."""
    if valid_pct and valid_pct > 0:
        from . import data
        train, valid = data.split(train, valid_pct=valid_pct, seed=seed)
        return DataSpec(kind, train, valid, test, train.classes)
    return DataSpec(kind, train, test, test, train.classes)


def augmentation(name: str, kind: str, image_size: int, cutout=None, fill=0):
    """The training transform for `--aug`; "auto" picks 2-pixel shifts for MNIST-like grey
    digits, the classic pad-4 crop + flip for CIFAR, and fastai's side-on preset for photos.
    cutout: also erase one square of that side per image, filled with `fill` (uint8 scale: the
    training images' mean, which is 0 after normalisation, as DeVries & Taylor)."""
    from . import augment as A

    if name == "auto":
        name = {"mnist": "shift", "cifar10": "cifar"}.get(kind, "side_on")
    presets = {"none": lambda: A.Compose([]),
               "shift": lambda: A.Compose([A.RandomCrop(image_size, padding=2, pad_mode="zeros")]),
               "cifar": lambda: A.cifar_transforms(size=image_size),
               "basic": A.transforms_basic, "side_on": A.transforms_side_on,
               "top_down": A.transforms_top_down}
    transform = presets[name]()
    if cutout:
        transform = A.Compose([transform, A.Cutout(cutout, fill=fill)], pad_mode=transform.pad_mode)
    return transform if transform.tfms else None


def build_model(arch: str, width: int, num_classes: int, image_shape: tuple, seed: int,
                logit_scale: float = 1.0):
    """The model for `--arch`, checked against one image of the data (H, W, C)."""
    from . import models, nn
    from .autograd import no_grad
    from .tensor import Tensor

    H, W, C = image_shape
    if arch == "auto":
        arch = "mnist_cnn" if (C, H, W) == (1, 28, 28) else "resnet9"
    rng = np.random.default_rng(seed)
    if arch == "mnist_cnn":
        model = models.mnist_cnn(num_classes=num_classes, rng=rng)
    elif arch in ("resnet18", "resnet34", "resnet50"):       # train: cli_transfer.py instead
        model = models.build(arch, num_classes=num_classes, rng=rng)
    else:
        model = models.resnet9(num_classes=num_classes, width=width, logit_scale=logit_scale,
                               rng=rng)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    if first_conv.in_channels != C:
        raise UsageError(f"--arch {arch} takes images with {first_conv.in_channels} channel(s); "
                         f"the data has {C} (images {H}x{W}x{C})")
    try:
        with no_grad():
            model.eval()
            model(Tensor(np.zeros((1, C, H, W), dtype=np.float32)))
    except ValueError as error:
        raise UsageError(f"--arch {arch} does not fit images of {H}x{W}x{C}: {error}") from None
    return arch, model


def whiten_first_conv(model, train, train_dl, seed: int, n: int = 5000):
    """--whiten: initialise the model's first convolution by patch whitening (nn.init) of n
    seeded random training images, normalised as the loader normalises them."""
    from . import augment as A
    from . import nn

    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    keep = np.random.default_rng(seed).choice(len(train.images), min(n, len(train.images)),
                                              replace=False)
    images = A.normalize(train.images[np.sort(keep)], train_dl.mean, train_dl.std)
    try:
        nn.init.patch_whitening_(conv.weight, images)
    except ValueError as error:
        raise UsageError(f"--whiten: {error}") from None


def use_ghost_batch_norm(model, ghost_batch_size: int):
    """--ghost-bn: every BatchNorm2d of the model normalises chunks of ghost_batch_size samples
    separately while training (evaluation is unchanged, so the saved model is too)."""
    from . import nn

    if ghost_batch_size < 2:
        raise UsageError(f"--ghost-bn must be at least 2 samples, got {ghost_batch_size}")
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.ghost_batch_size = ghost_batch_size


# ---- train ---------------------------------------------------------------------------------------
def setup_learner(args):
    """The data, model, loaders and Learner that `train` and `lr-find` share -> (ds, arch, learn).

    SGD with Nesterov momentum 0.9 (one-cycle moves it between 0.95 and 0.85), weight decay
    --wd, cross-entropy with --label-smoothing.
    """
    import tinyconv as tc
    from .learner import Learner
    from .metrics import accuracy

    ds = load_data(args, args.valid_pct)
    if len(ds.classes) < 2:
        print(f"tinyconv: warning: --data {args.data} has a single class ({ds.classes[0]}): "
              f"every prediction will be it, so accuracy says nothing", file=sys.stderr)
    image_shape = ds.train.images.shape[1:]
    arch, model = build_model(args.arch, args.width, len(ds.classes), image_shape, args.seed,
                              args.logit_scale)
    if args.cutout is not None and not 0 < args.cutout <= min(image_shape[:2]):
        raise UsageError(f"--cutout must be between 1 and the image size {image_shape[0]}, got "
                         f"{args.cutout}")
    mean_pixel = np.round(ds.train.images.mean(axis=(0, 1, 2))).astype(np.uint8) \
        if args.cutout else 0
    transform = augmentation(args.aug, ds.kind, image_shape[0], args.cutout, mean_pixel)
    train_dl, valid_dl, _ = make_loaders(ds.train, ds.valid, args.batch_size, transform, args.seed)
    if args.whiten:
        whiten_first_conv(model, ds.train, train_dl, args.seed)
    if args.ghost_bn is not None:
        use_ghost_batch_norm(model, args.ghost_bn)
    learn = Learner(model, train_dl, valid_dl, metrics=[accuracy], seed=args.seed, wd=args.wd,
                    opt_func=partial(tc.optim.SGD, momentum=0.9, nesterov=args.nesterov),
                    loss_func=partial(tc.nn.functional.cross_entropy,
                                      label_smoothing=args.label_smoothing),
                    silent=args.quiet)
    _say(args, f"data: {args.data} ({ds.kind}), {len(ds.train)} training / {len(ds.valid)} "
               f"validation images of {image_shape}, {len(ds.classes)} classes; model: {arch} "
               f"({model.num_parameters():,} parameters)")
    return ds, arch, learn


def cmd_train(args) -> int:
    import tinyconv as tc
    from . import plot

    if args.recipe is not None:                        # a published run, start to end
        from .cli_recipe import cmd_train_recipe
        return cmd_train_recipe(args)
    args.epochs = TRAIN_EPOCHS if args.epochs is None else args.epochs
    args.batch_size = BATCH_SIZE if args.batch_size is None else args.batch_size
    if args.arch in ("resnet18", "resnet34", "resnet50") or args.weights is not None or \
            args.precompute:
        from .cli_transfer import cmd_train_transfer   # fast.ai's eight transfer steps
        return cmd_train_transfer(args)
    started = time.time()
    resuming = args.resume is not None
    if resuming:
        args = _resume_args(args)
    out = args.out if resuming else _new_run_dir(args.out)
    args.run_dir = out                                 # for main's Ctrl-C message
    ds, arch, learn = setup_learner(args)
    model, stats = learn.model, (learn.train_dl.mean, learn.train_dl.std)
    image_shape = ds.train.images.shape[1:]
    lr = args.resume_lr if resuming else _choose_lr(args, learn, out)
    start_epoch = _checkpointing(args, learn, out, lr, resuming)
    save_model = partial(tc.save, model, os.path.join(out, "model.npz"), classes=ds.classes,
                         mean=list(stats[0]), std=list(stats[1]), image_shape=list(image_shape))
    with warnings.catch_warnings():   # a divergence is reported below, as one line
        warnings.filterwarnings("ignore", message="training stopped: the loss became")
        _fit(args, learn, lr, start_epoch)
    if _diverged(learn):
        return _fail_diverged(args, learn, out, save_model, started, lr)
    learn.recorder.plot_loss(path=os.path.join(out, "losses.png"))
    learn.recorder.plot_sched(path=os.path.join(out, "schedule.png"))

    eval_ds, eval_name = (ds.test, "test") if ds.test is not None else (ds.valid, "valid")
    eval_dl = learn.valid_dl if eval_ds is ds.valid else make_loader(eval_ds, args.batch_size,
                                                                     None, stats, shuffle=False)
    probs, targets = learn.get_preds(eval_dl)
    metrics = {f"{eval_name}_accuracy": float((probs.argmax(1) == targets).mean())}
    if args.tta:
        tta_probs, _ = learn.tta(eval_dl, mode=args.tta)
        metrics["tta"] = args.tta
        metrics[f"{eval_name}_accuracy_tta"] = float((tta_probs.argmax(1) == targets).mean())
    plot.plot_confusion_matrix(_confusion(probs.argmax(1), targets, len(ds.classes)), ds.classes,
                               path=os.path.join(out, "confusion.png"))
    model_path = save_model()
    metrics.update(seconds=round(time.time() - started, 1), lr=lr, epochs=args.epochs,
                   policy=args.policy, arch=arch, data=args.data, model=model_path,
                   options={k: v for k, v in vars(args).items() if k != "func"})  # to reproduce
    _write_json(os.path.join(out, "metrics.json"), metrics)
    for key, value in metrics.items():
        if key.endswith("accuracy") or key.endswith("_tta"):
            print(f"{key}: {value:.4f}")
    print(f"wrote {out}/ ({', '.join(sorted(os.listdir(out)))}) in {metrics['seconds']:.0f} s")
    return 0


RUN_FILE = "run.json"                # a --checkpoint run's options and lr: what --resume rebuilds
CHECKPOINT_FILE = "checkpoint.npz"   # model, optimizer, random state after the last whole epoch


def _new_run_dir(out) -> str:
    """train's output folder, new: one that already holds a run is refused (its model and metrics
    would be mixed with this run's); the default runs/<timestamp> gets a -2, -3, ... suffix."""
    if out is None:
        base = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
        for n in range(1, 1000):
            out = base if n == 1 else f"{base}-{n}"
            try:
                os.makedirs(out)
                return out
            except FileExistsError:
                continue
        raise UsageError(f"{base}: 999 runs started this second; pass --out")
    held = [f for f in ("metrics.json", RUN_FILE, "model.npz", CHECKPOINT_FILE)
            if os.path.exists(os.path.join(out, f))]
    if held:
        hint = f"; continue it with --resume {out}" if RUN_FILE in held else ""
        raise UsageError(f"--out {out} already holds a run ({', '.join(held)}); pick a new "
                         f"folder{hint}")
    os.makedirs(out, exist_ok=True)
    return out


def _resume_args(args):
    """The options of the run in `--resume DIR` (its run.json) and its lr, to continue it as it
    was started; other options on the command line are ignored."""
    run_path, ckpt = (os.path.join(args.resume, f) for f in (RUN_FILE, CHECKPOINT_FILE))
    if not (os.path.isfile(run_path) and os.path.isfile(ckpt)):
        raise UsageError(f"--resume {args.resume}: no {RUN_FILE} and {CHECKPOINT_FILE} there (a "
                         f"run started with --checkpoint writes them)")
    with open(run_path) as f:
        run = json.load(f)
    if not isinstance(run, dict) or not isinstance(run.get("options"), dict) or \
            not isinstance(run.get("lr"), (int, float)):
        raise UsageError(f"{run_path}: not a run file of tinyconv train --checkpoint")
    resumed = argparse.Namespace(**{**vars(args), **run["options"]})
    resumed.out, resumed.resume, resumed.checkpoint = args.resume, args.resume, True
    resumed.resume_lr = float(run["lr"])
    return resumed


def _checkpointing(args, learn, out, lr, resuming) -> int:
    """--checkpoint: record run.json, then a checkpoint after every epoch; with --resume, load
    the checkpoint first. -> the epoch training starts at."""
    if not args.checkpoint:
        return 0
    from .callbacks import Checkpoint
    path = os.path.join(out, CHECKPOINT_FILE)
    start = 0
    if resuming:
        learn.load(path, with_opt=True)   # weights, optimizer, every random generator's state
        start = int(learn.checkpoint_epoch or 0)
        _say(args, f"resuming {out} after epoch {start} of {args.epochs}")
    else:
        options = {k: v for k, v in vars(args).items() if k not in ("func", "run_dir")}
        _write_json(os.path.join(out, RUN_FILE), {"options": options, "lr": lr})
    learn.add_cbs([_FiniteCheckpoint(Checkpoint)(path)])
    return start


def _FiniteCheckpoint(Checkpoint):
    """Checkpoint, except that it never replaces the last finite weights by non-finite ones (a
    diverged run keeps the checkpoint it can be resumed from, at a lower --lr)."""
    class FiniteCheckpoint(Checkpoint):
        def after_epoch(self):
            if _weights_finite(self.learn.model):
                super().after_epoch()
    return FiniteCheckpoint


def _weights_finite(model) -> bool:
    return all(np.isfinite(a).all() for a in model.state_dict().values())


def _diverged(learn) -> bool:
    """Training stopped on a non-finite loss (TerminateOnNaN), or left non-finite weights."""
    loss = learn.loss_value
    stopped_on_nan = learn.stop_reason is not None and loss is not None and \
        not math.isfinite(loss)
    return stopped_on_nan or not _weights_finite(learn.model)


def _fail_diverged(args, learn, out, save_model, started, lr) -> int:
    """A diverged run is a failure: metrics.json records the stop, exit code 1, one line.

    The model is written only if its weights are all finite (TerminateOnNaN stops before the bad
    batch's step, so they are those of the last good batch); never a model of NaNs.
    """
    reason = learn.stop_reason or (f"training stopped: the weights became non-finite by epoch "
                                   f"{learn.epoch} batch {learn.iter}. Try a lower learning rate.")
    kept = _weights_finite(learn.model)
    metrics = {"stopped": reason, "diverged": True, "epoch": learn.epoch, "batch": learn.iter,
               "seconds": round(time.time() - started, 1), "lr": lr, "epochs": args.epochs,
               "policy": args.policy, "data": args.data,
               "model": save_model() if kept else None,
               "options": {k: v for k, v in vars(args).items() if k != "func"}}
    _write_json(os.path.join(out, "metrics.json"), metrics)
    where = (f"the last finite weights are in {metrics['model']}" if kept
             else "no model written (its weights are not finite)")
    checkpoint = os.path.join(out, CHECKPOINT_FILE)
    if os.path.isfile(checkpoint):
        metrics["checkpoint"] = checkpoint
        _write_json(os.path.join(out, "metrics.json"), metrics)
        where += f"; the last finite checkpoint is {checkpoint}"
    print(f"tinyconv: error: {reason} ({where}; see {out}/metrics.json)", file=sys.stderr)
    return 1


LR_PICKS = ("auto", "valley", "slide", "minimum", "steep")


def _choose_lr(args, learn, out) -> float:
    """A number from --lr, or the LR finder's pick.

    auto: the lr of the lowest smoothed loss of the sweep. fastai's `valley` is tuned for Adam;
    with SGD + momentum it lands where the loss has barely started to fall (on the default MNIST
    run: lr 4.8e-4 and 97.4% test accuracy, against 2.8e-2 and 99.3% for the lowest loss).
    One-cycle can peak that high because its warm-up and annealing keep it there only briefly
    (Smith, 2018: the peak is where the range test's loss stops improving).
    valley, slide, minimum, steep: that suggestion of `learn.lr_find()`.
    """
    if args.lr not in LR_PICKS:
        return _positive_float("--lr", args.lr)
    suggestions = learn.lr_find()
    learn.recorder.plot_lr_find(path=os.path.join(out, "lr_find.png"))
    recorder = learn.recorder
    if args.lr == "auto":
        lr = float(recorder.lrs[int(np.nanargmin(recorder.losses))])
    else:
        lr = float(getattr(suggestions, args.lr))
    _say(args, "lr_find: " + ", ".join(f"{k} {v:.2e}" for k, v in suggestions._asdict().items())
         + f" -> lr {lr:.2e} ({'lowest loss' if args.lr == 'auto' else args.lr})")
    return lr


def sgdr_cycles(epochs: int, cycle_len: int, cycle_mult: int) -> int:
    """sched.sgdr_cycles, its refusal worded for the command line's flags."""
    try:
        return sched.sgdr_cycles(epochs, cycle_len, cycle_mult)
    except ValueError:
        raise UsageError(f"sgdr: --cycle-len and --cycle-mult must be >= 1, got {cycle_len} "
                         f"and {cycle_mult}") from None


def policy_kwargs(args, lr: float, n_iter: int) -> dict:
    """The arguments of --policy for a peak learning rate `lr` (see sched.policy).

    sgdr fits as many cycles as --epochs allows; cyclic runs one triangle per epoch from lr/10.
    """
    if args.policy == "one_cycle":
        moms = getattr(args, "moms", None)
        return {"lr_max": lr, **({"moms": moms} if moms else {})}
    if args.policy == "sgdr":
        return {"lr_max": lr, "n_cycles": sgdr_cycles(args.epochs, args.cycle_len, args.cycle_mult),
                "cycle_len": args.cycle_len, "cycle_mult": args.cycle_mult}
    if args.policy == "cyclic":
        return {"base_lr": lr / 10, "max_lr": lr, "step_size": max(1, n_iter // 2)}
    return {"lr": lr}


def _fit(args, learn, lr: float, start_epoch: int = 0) -> None:
    learn.fit_policy(args.policy, args.epochs, start_epoch=start_epoch,
                     **policy_kwargs(args, lr, len(learn.train_dl)))


def make_loaders(train, valid, batch_size, transform, seed):
    """tc.data.loaders (training statistics for both) -> (train_dl, valid_dl, (mean, std))."""
    from .data import loaders
    train_dl, valid_dl = loaders(train, valid, batch_size, transform, seed=seed,
                                 valid_batch_size=2 * batch_size)
    return train_dl, valid_dl, (train_dl.mean, train_dl.std)


def make_loader(ds, batch_size, transform, stats, shuffle, rng=None):
    from .data import DataLoader
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle,
                      transform=transform, rng=rng, mean=stats[0], std=stats[1])


def _confusion(pred, target, k) -> np.ndarray:
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (target, pred), 1)
    return cm


# ---- helpers -------------------------------------------------------------------------------------
def _out_dir(out) -> str:
    out = out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    return out


def _write_json(path: str, obj) -> None:
    """Atomic (serialize.atomic_write): a crash mid-write leaves the old file (or none)."""
    from .serialize import atomic_write
    text = json.dumps(obj, indent=2, default=str) + "\n"   # never lose a run to a value JSON lacks
    atomic_write(path, lambda f: f.write(text.encode()))


def _positive_float(name: str, text) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{name}: expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"{name}: must be a positive finite number, got {text}")
    return value


def _lr_arg(text: str):
    """--lr: one of LR_PICKS, or a positive finite number (checked while parsing)."""
    if text in LR_PICKS:
        return text
    try:
        return _positive_float("--lr", text)
    except UsageError:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LR_PICKS)} or a positive "
                                         f"finite number, got {text!r}") from None


def _moms(text: str) -> tuple:
    """--moms "0.95,0.85,0.95" (start, at the peak lr, end) or "0.9" (constant), checked while
    parsing so a typo fails before any training."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 3) or not all(0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected 1 or 3 comma-separated numbers in [0, 1), "
                                         f"got {text!r}")
    return tuple(values * 3 if len(values) == 1 else values)


def _say(args, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message, flush=True)


# ---- lr-find, evaluate, predict, show-aug, plot-schedule ----------------------------------------
def cmd_lr_find(args) -> int:
    if not args.start_lr < args.end_lr:
        raise UsageError(f"lr-find: --start-lr {args.start_lr:g} must be below --end-lr "
                         f"{args.end_lr:g} (the sweep goes up)")
    out = _out_dir(args.out)
    _, _, learn = setup_learner(args)
    suggestions = learn.lr_find(start_lr=args.start_lr, end_lr=args.end_lr, num_it=args.num_it)
    path = os.path.join(out, "lr_find.png")
    learn.recorder.plot_lr_find(path=path)
    for name, value in suggestions._asdict().items():
        print(f"{name:>8}: {value:.3e}")
    print(f"wrote {path}")
    return 0


def _load_model(path: str):
    import tinyconv as tc
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such model file")
    model = tc.load(path)
    meta = model.meta
    classes, shape = meta.get("classes"), meta.get("image_shape")
    if classes is not None and not (isinstance(classes, list) and classes
                                    and all(isinstance(c, str) for c in classes)):
        raise UsageError(f"{path}: its 'classes' must be a list of names, got {classes!r:.80}")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 3 and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise UsageError(f"{path}: its 'image_shape' must be [H, W, C], got {shape!r:.80}")
    return model, meta


def _model_stats(meta, path) -> tuple:
    """(mean, std) float32 of the data the model was trained on, as its file records them."""
    if meta.get("mean") is None or meta.get("std") is None:
        raise UsageError(f"{path} records no normalisation statistics (mean, std) of its training "
                         f"data, which the images must be normalised with; save it with "
                         f"tc.save(learn, path), or tc.save(model, path, mean=[...], std=[...])")
    try:
        mean, std = (np.asarray(meta[k], np.float64).reshape(-1) for k in ("mean", "std"))
    except (TypeError, ValueError):
        mean = std = np.array([])
    if mean.size == 0 or mean.shape != std.shape or not np.isfinite(mean).all() or \
            not np.isfinite(std).all() or not (std > 0).all():
        raise UsageError(f"{path}: its mean {meta['mean']!r:.60} and std {meta['std']!r:.60} "
                         f"must be lists of finite numbers of one length, std > 0")
    return mean.astype(np.float32), std.astype(np.float32)


def _check_outputs(n_out: int, classes, path) -> None:
    if n_out != len(classes):
        raise UsageError(f"{path}: the model outputs {n_out} scores per image but names "
                         f"{len(classes)} classes ({', '.join(map(str, classes))[:80]})")


def cmd_evaluate(args) -> int:
    from .learner import Learner

    model, meta = _load_model(args.model)
    eval_ds, kind, what = detect_eval_data(args.data, size=args.size,   # as in training:
                                           crop=args.crop or bool(meta.get("crop")))
    classes = meta.get("classes") or eval_ds.classes
    if list(classes) != list(eval_ds.classes):
        raise UsageError(f"{args.model} was trained on classes {classes}, --data {args.data} "
                         f"has {eval_ds.classes}")
    _check_image_shape(meta, eval_ds.images.shape[1:], args.model, args.data)
    stats = _model_stats(meta, args.model)
    dl = make_loader(eval_ds, args.batch_size, None, stats, shuffle=False)
    learn = Learner(model, dl, dl, silent=True, seed=args.seed)
    if args.tta:
        train_like = make_loader(eval_ds, args.batch_size, augmentation(args.aug, kind,
                                 eval_ds.images.shape[1]), stats, shuffle=False)
        learn.train_dl = train_like
        probs, targets = learn.tta(dl, mode=args.tta)
    else:
        probs, targets = learn.get_preds(dl)
    _check_outputs(probs.shape[1], classes, args.model)
    pred = probs.argmax(1)
    cm = _confusion(pred, targets, len(classes))
    per_class = {c: float(cm[i, i] / max(cm[i].sum(), 1)) for i, c in enumerate(classes)}
    result = {"accuracy": float((pred == targets).mean()), "n": int(len(targets)),
              "tta": args.tta or False, "per_class_accuracy": per_class,
              "confusion_matrix": cm.tolist(), "classes": list(classes), "scored": what}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"accuracy: {result['accuracy']:.4f} on {result['n']} images ({what})"
          f"{f' (with {args.tta} TTA)' if args.tta else ''}")
    width = max(len(str(c)) for c in classes)
    for c, acc in per_class.items():
        print(f"  {str(c):>{width}}: {acc:.4f}")
    print("confusion matrix (rows: true class, columns: predicted):")
    print(cm)
    return 0


def _check_image_shape(meta, shape, model_path, where) -> None:
    expected = meta.get("image_shape")
    if expected is not None and tuple(expected) != tuple(shape):
        raise UsageError(f"{model_path} takes images of {tuple(expected)} (H, W, C); {where} has "
                         f"{tuple(shape)}")


def cmd_predict(args) -> int:
    from .autograd import no_grad
    from .data.datasets import decode_image
    from .tensor import Tensor

    model, meta = _load_model(args.model)
    H, W, C = meta.get("image_shape") or (None, None, None)
    mean, std = _model_stats(meta, args.model)
    model.eval()
    for path in args.images:
        if not os.path.isfile(path):
            raise UsageError(f"{path}: no such image file")
        # decoded as training decoded its images (16-bit scaled by range, alpha over black); a
        # model trained on centre squares (--crop) sees its photos the same way
        pixels = decode_image(path, size=(H, W) if args.resize and H is not None else None,
                              channels=3 if C is None else C, crop=bool(meta.get("crop")))
        if H is not None and pixels.shape[:2] != (H, W):
            raise UsageError(f"{path}: image is {pixels.shape[0]}x{pixels.shape[1]}, the model "
                             f"takes {H}x{W} (pass --resize to resize it)")
        x = pixels.astype(np.float32) / 255.0
        x = ((x - mean) / std).transpose(2, 0, 1)[None]
        with no_grad():
            logits = model(Tensor(np.ascontiguousarray(x, dtype=np.float32))).data[0]
        classes = meta.get("classes") or [str(i) for i in range(len(logits))]
        _check_outputs(len(logits), classes, args.model)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[: args.top_k]
        print(f"{path}: " + ", ".join(f"{classes[i]} {p[i]:.3f}" for i in top))
    return 0


def cmd_show_aug(args) -> int:
    from .augment import channel_stats
    from .plot_data import plot_augmentations, show_batch

    out = _out_dir(args.out)
    ds = load_data(args, 0.0)
    transform = augmentation(args.aug, ds.kind, ds.train.images.shape[1])
    if transform is None:
        raise UsageError("show-aug: --aug none shows nothing; pick a preset")
    if args.index >= len(ds.train):
        raise UsageError(f"show-aug: --index {args.index} is out of range: there are "
                         f"{len(ds.train)} training images (0 to {len(ds.train) - 1})")
    rng = np.random.default_rng(args.seed)
    grid = os.path.join(out, "augmentations.png")
    plot_augmentations(ds.train.images[args.index], transform, n=args.n, rng=rng, path=grid,
                       title=f"--aug {args.aug}: variations of training image {args.index}")
    batch = os.path.join(out, "batch.png")
    dl = make_loader(ds.train, min(16, len(ds.train)), transform, channel_stats(ds.train.images),
                     shuffle=True, rng=rng)
    show_batch(dl, path=batch, title=f"an augmented training batch (--aug {args.aug})")
    print(f"wrote {grid} and {batch}")
    return 0


def cmd_plot_schedule(args) -> int:
    from . import plot

    if args.epochs * args.iters > PLOT_MAX_POINTS:   # one point per batch: bound the drawing
        raise UsageError(f"plot-schedule: --epochs {args.epochs} x --iters {args.iters} is more "
                         f"than {PLOT_MAX_POINTS:,} batches to draw; lower --iters")
    out = _out_dir(args.out)
    lr = _positive_float("--lr", args.lr)
    kwargs = policy_kwargs(args, lr, args.iters)
    path = os.path.join(out, "schedule.png")
    plot.plot_schedule(args.policy, n_epoch=args.epochs, n_iter=args.iters, path=path, **kwargs)
    scheds, n_epoch = sched.policy(args.policy, n_epoch=args.epochs, n_iter=args.iters, **kwargs)
    print(ascii_sketch(scheds["lr"], f"lr ({args.policy}, {n_epoch} epochs)"))
    print(f"wrote {path}")
    return 0


def ascii_sketch(f, title: str, width: int = 60, height: int = 10) -> str:
    """A schedule drawn in the terminal: `height` rows of `width` columns, pos 0 -> 1."""
    values = np.array([float(np.max(f(i / (width - 1)))) for i in range(width)])
    top = values.max() or 1.0
    rows = np.round(values / top * (height - 1)).astype(int)
    lines = [f"{title}, max {top:.3g}"]
    for r in range(height - 1, -1, -1):
        lines.append("|" + "".join("*" if rows[c] == r else " " for c in range(width)))
    lines.append("+" + "-" * width + "> progress")
    return "\n".join(lines)


# ---- export --------------------------------------------------------------------------------------
def cmd_export(args) -> int:
    """Write a model file as ONNX (for ONNX Runtime and other runtimes), or its state_dict as
    safetensors or as torch.save's .pt (for PyTorch's load_state_dict)."""
    from .onnx_export import export_onnx
    from .pt_export import save_pt
    from .safetensors_export import save_safetensors

    model, meta = _load_model(args.model)
    out = args.out or os.path.splitext(args.model)[0] + "." + args.format
    if os.path.abspath(out) == os.path.abspath(args.model):
        raise UsageError(f"--out {out} is the model file itself; pick another name")
    if args.format in ("safetensors", "pt"):
        (save_safetensors if args.format == "safetensors" else save_pt)(model, out)
        print(f"wrote {out} ({args.format}: {len(model.state_dict())} tensors, named as in "
              f"PyTorch)")
        return 0
    if args.input_shape is not None:
        shape = (1, *args.input_shape)
    elif "image_shape" in meta:
        shape = None                          # export_onnx takes it from model.meta
    else:
        raise UsageError(f"{args.model} records no image shape; pass --input-shape C,H,W")
    try:
        export_onnx(model, out, input_shape=shape, opset=args.opset)
    except ImportError as error:
        raise UsageError(str(error)) from None
    print(f"wrote {out} (ONNX opset {args.opset}; input 'input' (batch, C, H, W) float32, "
          f"normalised as in training; output 'output', the logits)")
    return 0


def _shape_arg(text: str) -> tuple:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W (three positive ints), got {text!r}")
    return shape


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a model as ONNX, or for PyTorch (safetensors, pt)")
    p.add_argument("model", help="a model file (.npz) from tinyconv train or tc.save")
    p.add_argument("--format", choices=("onnx", "safetensors", "pt"), required=True)
    p.add_argument("--out", default=None, help="the file to write (default: MODEL with the "
                                               "format's extension: .onnx, .safetensors, .pt)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
    p.add_argument("--input-shape", type=_shape_arg, default=None, metavar="C,H,W",
                   help="ONNX: one image's shape, when the model file does not record it")
    p.set_defaults(func=cmd_export)


# ---- parser --------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _data_args(p, data_default="mnist", batch_size=BATCH_SIZE):
    p.add_argument("--data", default=data_default,
                   help="mnist (bundled), an image folder, an MNIST IDX folder or a "
                        "cifar-10-batches-py folder (default: %(default)s)")
    p.add_argument("--size", type=int_at_least(1), default=None,
                   help="resize the images of an image folder to SIZE x SIZE")
    p.add_argument("--crop", action="store_true",
                   help="with --size: keep the aspect, resizing the centre square (photos)")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--batch-size", type=int_at_least(1), default=batch_size)
    p.add_argument("--limit", type=int_at_least(1), default=None,
                   help="train on a seeded random subset of LIMIT training images (quick runs)")


def _model_args(p):
    p.add_argument("--arch", choices=ARCHS, default="auto",
                   help="auto: mnist_cnn for 28x28 grey images, else resnet9")
    p.add_argument("--width", type=int_at_least(1), default=64,
                   help="resnet9 width (32 = half)")
    p.add_argument("--logit-scale", type=finite_float(0, low_open=True), default=0.125,
                   help="resnet9: multiply the logits by this, as Page's ResNet-9 does "
                        "(default: %(default)s; 1 is the plain graph of REFERENCE.md)")
    p.add_argument("--whiten", action="store_true",
                   help="initialise the first convolution by patch whitening of 5,000 training "
                        "images (airbench's first layer)")
    p.add_argument("--ghost-bn", type=int, default=None, metavar="N",
                   help="ghost batch norm: while training, normalise each chunk of N samples "
                        "of a batch with its own statistics (Page uses 32)")
    p.add_argument("--aug", choices=AUGS, default="auto")
    p.add_argument("--cutout", type=int_at_least(1), default=None, metavar="SIZE",
                   help="also cut out one SIZE x SIZE square per training image, filled with "
                        "the mean colour (DeVries & Taylor; Page uses 8 on CIFAR-10)")
    p.add_argument("--valid-pct", type=finite_float(0, 1, high_open=True), default=0.0,
                   help="hold out this fraction of train for validation (default: use the "
                        "dataset's test split, or 0.2 of an image folder)")
    p.add_argument("--wd", type=finite_float(0), default=5e-4, help="weight decay")
    p.add_argument("--label-smoothing", type=finite_float(0, 1, high_open=True), default=0.0)
    p.add_argument("--no-nesterov", dest="nesterov", action="store_false")
    p.add_argument("--out", default=None, help="output folder (default runs/<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tinyconv", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("train", help="train a model (default: mnist_cnn on the bundled MNIST)")
    _data_args(p, batch_size=None)                     # None: BATCH_SIZE, or the recipe's
    _model_args(p)
    p.add_argument("--epochs", type=int_at_least(1), default=None,
                   help=f"default {TRAIN_EPOCHS}, or the recipe's")
    p.add_argument("--recipe", choices=RECIPES, default=None,
                   help="airbench94: Jordan's CIFAR-10 speed run (its net, schedule, lookahead, "
                        "augmentation and 6-view TTA; tinyconv.recipes), 32x32 colour images")
    p.add_argument("--lr", type=_lr_arg, default="auto",
                   help="a learning rate; auto: the LR finder's lowest-loss lr; valley, slide, "
                        "minimum or steep: that LR-finder suggestion (default: %(default)s)")
    p.add_argument("--policy", choices=POLICIES, default="one_cycle")
    p.add_argument("--moms", type=_moms, default=None,
                   help="one_cycle momentum: start,peak,end (default 0.95,0.85,0.95) or one "
                        "constant value")
    p.add_argument("--cycle-len", type=int_at_least(1), default=1,
                   help="sgdr: epochs in the first cycle")
    p.add_argument("--cycle-mult", type=int_at_least(1), default=2,
                   help="sgdr: cycle length multiplier")
    p.add_argument("--tta", nargs="?", const="aug", choices=TTA_MODES, default=None,
                   help="also report test-time augmentation: aug (fastai's, the default), "
                        "flip (mean over the image and its mirror) or shift (flip, and flip of "
                        "1-pixel shifts)")
    p.add_argument("--checkpoint", action="store_true",
                   help="save model, optimizer and random state after every epoch (to --resume)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the --checkpoint run in DIR exactly where it stopped, with its "
                        "options")
    p.add_argument("--weights", nargs="?", const="", default=None, metavar="FILE",
                   help="resnet18/34/50: the pre-trained body's weights (a torchvision .pth or "
                        ".safetensors); runs fast.ai's eight transfer-learning steps")
    p.add_argument("--precompute", action="store_true",
                   help="with --weights: train the head first on the frozen body's cached "
                        "activations")
    p.add_argument("--cycles", type=int_at_least(1), default=3,
                   help="resnet18/34/50: SGDR cycles of the two long steps (default: 3)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("lr-find", help="run the LR finder and plot loss against lr")
    _data_args(p)
    _model_args(p)
    p.add_argument("--start-lr", type=finite_float(0, low_open=True), default=1e-7)
    p.add_argument("--end-lr", type=finite_float(0, low_open=True), default=10.0)
    p.add_argument("--num-it", type=int_at_least(1), default=100)
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix")
    p.add_argument("model")
    _data_args(p)
    p.add_argument("--tta", nargs="?", const="aug", choices=TTA_MODES, default=None,
                   help="test-time augmentation: aug (fastai's, the default), flip or shift")
    p.add_argument("--aug", choices=AUGS, default="auto", help="the augmentation TTA uses")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="top-k classes of images")
    p.add_argument("model")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int_at_least(1), default=3)
    p.add_argument("--resize", action="store_true", help="resize images to the model's size")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("show-aug", help="picture of augmented variations of one image")
    _data_args(p)
    p.add_argument("--aug", choices=AUGS, default="auto")
    p.add_argument("--index", type=int_at_least(0), default=0, help="which training image")
    p.add_argument("--n", type=int_at_least(1, 64), default=8,
                   help="variations (at most 64: one picture)")
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_show_aug)

    p = sub.add_parser("plot-schedule", help="preview a learning-rate policy (PNG + terminal)")
    p.add_argument("--policy", choices=POLICIES, default="one_cycle")
    p.add_argument("--lr", type=partial(_positive_float, "--lr"), default="0.1")
    p.add_argument("--epochs", type=int_at_least(1), default=8)
    p.add_argument("--iters", type=int_at_least(1), default=100, help="batches per epoch")
    p.add_argument("--cycle-len", type=int_at_least(1), default=1)
    p.add_argument("--cycle-mult", type=int_at_least(1), default=2)
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_plot_schedule)
    _export_parser(sub)
    return parser


def _one_line(error) -> str:
    """An error message as one line (some, such as a state_dict mismatch, list items)."""
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def main(argv=None) -> int:
    """Entry point of `tinyconv` and `python -m tinyconv`; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    args = None
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 2
        return args.func(args)
    except UsageError as error:
        if debug:
            raise
        print(f"tinyconv: error: {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:   # unreadable, corrupt or unsuitable data or model files
        if debug:
            raise
        print(f"tinyconv: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except MemoryError:
        if debug:
            raise
        print("tinyconv: error: out of memory; try a smaller --batch-size (or --size, --width, "
              "--limit)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        run_dir = getattr(args, "run_dir", None)
        if run_dir and os.path.isfile(os.path.join(run_dir, CHECKPOINT_FILE)):
            print(f"tinyconv: interrupted; continue with: tinyconv train --resume {run_dir}",
                  file=sys.stderr)
        elif run_dir:
            print("tinyconv: interrupted (no checkpoint yet: a run started with --checkpoint "
                  "can be continued with --resume)", file=sys.stderr)
        else:
            print("tinyconv: interrupted", file=sys.stderr)
        return 130
