"""`tinyconv train --arch resnet34 --weights FILE --precompute`: fast.ai's eight steps (2018,
lesson 1) to a world-class classifier of your own photos, starting from an ImageNet ResNet.

    1. precompute the frozen body's activations (--precompute; else the head sees images)
    2. lr_find on the head: the lr of the lowest loss / 10 (fast.ai: "an order of magnitude
       before the minimum"), or --lr
    3. train the head for 2 epochs (on the cached activations: seconds)
    4. precompute off: train the head with augmentation, --cycles SGDR cycles of 1 epoch
    5. unfreeze the body
    6. discriminative learning rates: lr/9, lr/3, lr for the two body halves and the head
    7. lr_find again on the whole net: its valley, kept within [lr/10, lr]
    8. train everything, --cycles SGDR cycles with cycle_mult=2 (1 + 2 + 4 epochs for 3)

then test-time augmentation. Image folders are read at --size (default 224) keeping the aspect
(the centre square, resized: `ImageFolder(crop=True)`). The validation accuracy is printed
after every step; the model (tc.load-able, with classes, normalisation and crop=True) goes to
--out like any `tinyconv train` run, so `tinyconv evaluate` (which then crops too) and
`tinyconv predict` work on it.
"""
from __future__ import annotations

import os
import sys
import time
from functools import partial

__all__ = ["RESNET_ARCHS", "WEIGHT_URLS", "cmd_train_transfer", "weights_help"]

RESNET_ARCHS = ("resnet18", "resnet34", "resnet50")
DEFAULT_SIZE = 224                       # what the ImageNet ResNets were trained at

# torchvision's ImageNet weights (IMAGENET1K_V1), readable by tc.load_state_dict_file
WEIGHT_URLS = {"resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
               "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
               "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth"}


def weights_help(arch: str) -> str:
    """How to get a weight file for `arch`."""
    url = WEIGHT_URLS.get(arch, WEIGHT_URLS["resnet34"])
    return (f"download torchvision's ImageNet weights for {arch}, e.g. `curl -LO {url}`, and "
            f"pass --weights {os.path.basename(url)} (a .pth from torch.save or a .safetensors "
            f"file of the same architecture also works; nothing in it is run)")


def _check_weights(args) -> None:
    from .cli import UsageError
    if args.arch not in RESNET_ARCHS:
        raise UsageError(f"--weights and --precompute need --arch {'/'.join(RESNET_ARCHS)} "
                         f"(a pre-trained body), got --arch {args.arch}")
    if args.weights == "":
        raise UsageError(f"--weights needs a file: {weights_help(args.arch)}")
    if args.weights is not None and not os.path.isfile(args.weights):
        raise UsageError(f"--weights {args.weights}: no such file; {weights_help(args.arch)}")


def _accuracy(learn) -> float:
    return float(learn.validate()[1])


def cmd_train_transfer(args) -> int:
    """The eight steps; returns the exit code."""
    import tinyconv as tc
    from .cli import (UsageError, _choose_lr, _out_dir, _say, _write_json, augmentation,
                      load_data, make_loaders)
    from .metrics import accuracy
    from .vision_learner import vision_learner

    _check_weights(args)
    started, out = time.time(), _out_dir(args.out)
    if args.size is None:
        args.size = DEFAULT_SIZE
    args.crop = True            # photos keep their aspect: the centre square (fastai 0.7's crop)
    ds = load_data(args, args.valid_pct)
    image_shape = ds.train.images.shape[1:]
    if image_shape[2] != 3 or min(image_shape[:2]) < 32:
        raise UsageError(f"--arch {args.arch} takes RGB images of at least 32x32; the data has "
                         f"{image_shape} (H, W, C)")
    transform = augmentation(args.aug, ds.kind, image_shape[0], args.cutout)
    train_dl, valid_dl, _ = make_loaders(ds.train, ds.valid, args.batch_size, transform,
                                         args.seed)
    if args.weights is None:                  # a warning even with --quiet
        print(f"tinyconv: warning: no --weights: the {args.arch} body is random, not "
              f"pre-trained (the recipe runs, its accuracy will not be the recipe's); "
              f"{weights_help(args.arch)}", file=sys.stderr)
    learn = vision_learner(args.arch, (train_dl, valid_dl), weights=args.weights,
                           precompute=args.precompute, metrics=[accuracy], seed=args.seed,
                           wd=args.wd, silent=args.quiet,
                           opt_func=partial(tc.optim.SGD, momentum=0.9, nesterov=args.nesterov),
                           loss_func=partial(tc.nn.functional.cross_entropy,
                                             label_smoothing=args.label_smoothing))
    _say(args, f"data: {args.data}, {len(ds.train)} training / {len(ds.valid)} validation "
               f"images of {image_shape}, {len(ds.classes)} classes; model: {args.arch} body"
               f"{' from ' + args.weights if args.weights else ' (random)'} + fastai head "
               f"({learn.net.num_parameters():,} parameters)")
    steps = []

    def step(k: int, text: str, trained: bool = True) -> None:
        acc = _accuracy(learn) if trained or not steps else steps[-1]["valid_accuracy"]
        steps.append({"step": k, "what": text, "valid_accuracy": acc})
        print(f"step {k}/8 {text}: valid accuracy {acc:.4f}"
              f"{'' if trained else ' (no training in this step)'}", flush=True)

    step(1, f"precompute={args.precompute}", trained=False)   # the accuracy of the new head
    if args.lr in ("auto", "valley", "slide", "minimum", "steep"):
        lr = _choose_lr(args, learn, out)
        lr = lr / 10 if args.lr == "auto" else lr
    else:
        lr = float(args.lr)
    step(2, f"lr_find -> lr {lr:.2e}", trained=False)
    learn.fit(2 if args.precompute else 1, lr)
    step(3, "train the head" + (" on precomputed activations" if args.precompute else ""))
    learn.precompute = False
    learn.fit_sgdr(args.cycles, 1, lr, cycle_mult=1)
    step(4, f"train the head with augmentation, {args.cycles} cycle(s) of 1 epoch")
    learn.unfreeze()
    step(5, "unfreeze", trained=False)
    lrs = [lr / 9, lr / 3, lr]
    step(6, "learning rates " + ", ".join(f"{v:.2e}" for v in lrs), trained=False)
    if args.lr == "auto":
        # fast.ai 0.7's lr_find(lrs / 1000): every group's lr scaled alike, the head's up to 10
        try:
            found = learn.lr_find(start_lr=[v / 1000 for v in lrs],
                                  end_lr=[v * 10 / lr for v in lrs],
                                  num_it=max(20, min(100, len(learn.train_dl)))).valley
            lrs = [v * min(max(found, lr / 10), lr) / lr for v in lrs]    # within [lr/10, lr]
            text = "lr_find on the whole net -> " + ", ".join(f"{v:.2e}" for v in lrs)
        except RuntimeError as e:            # a sweep too short to read (tiny data sets)
            text = f"lr_find on the whole net gave no reading ({str(e)[:60]}...); lrs kept"
        step(7, text, trained=False)
    else:
        step(7, "lr_find skipped (--lr given)", trained=False)
    learn.fit_sgdr(args.cycles, 1, lrs, cycle_mult=2)
    step(8, f"train everything, {args.cycles} cycle(s), cycle_mult=2")

    metrics = {"steps": steps, "valid_accuracy": steps[-1]["valid_accuracy"], "lr": lr,
               "lrs": lrs, "arch": args.arch, "weights": args.weights, "data": args.data}
    if transform is not None:
        probs, targets = learn.tta(mode=args.tta or "aug")
        metrics["valid_accuracy_tta"] = float((probs.argmax(1) == targets).mean())
        print(f"TTA ({args.tta or 'aug'}): valid accuracy {metrics['valid_accuracy_tta']:.4f}")
    stats = learn.image_dls[0].mean, learn.image_dls[0].std
    model_path = tc.save(learn.net, os.path.join(out, "model.npz"), classes=ds.classes,
                         mean=list(stats[0]), std=list(stats[1]), image_shape=list(image_shape),
                         crop=True)
    metrics.update(model=model_path, seconds=round(time.time() - started, 1),
                   options={k: v for k, v in vars(args).items() if k != "func"})
    _write_json(os.path.join(out, "metrics.json"), metrics)
    print(f"wrote {out}/ ({', '.join(sorted(os.listdir(out)))}) in {metrics['seconds']:.0f} s")
    return 0
