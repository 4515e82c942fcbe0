"""`tinyconv train --recipe airbench94`: Jordan's CIFAR-10 speed run (tinyconv.recipes), from a
folder of 32x32 images to a saved, scored model.

    tinyconv train --data cifar10/train --recipe airbench94 --valid-pct 0.1 [--epochs 10]

--epochs, --batch-size and --seed are the recipe's unless given; --tta defaults to "shift"
(airbench's 6 views). With --valid-pct 0 it trains on every image and scores nothing (score the
saved model later with `tinyconv evaluate MODEL --data TEST_FOLDER --tta shift`).
Writes model.npz, metrics.json, losses.png, schedule.png and (when scored) confusion.png.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict

__all__ = ["RECIPES", "cmd_train_recipe"]

RECIPES = ("airbench94",)


def cmd_train_recipe(args) -> int:
    import tinyconv as tc
    from . import plot
    from .cli import UsageError, _confusion, _out_dir, _say, _write_json, load_data
    from .recipes import AirBenchHyper, airbench94_learner, fit_airbench94

    started = time.time()
    out = _out_dir(args.out)
    ds = load_data(args, args.valid_pct, hold_out=False)
    shape = ds.train.images.shape[1:]
    if shape != (32, 32, 3):
        raise UsageError(f"--recipe airbench94 trains on 32x32 colour images; {args.data} has "
                         f"images of {shape} (use --size 32 for an image folder)")
    hyper = AirBenchHyper()
    if args.epochs is not None:
        hyper.epochs = args.epochs
    if args.batch_size is not None:
        hyper.batch_size = args.batch_size
    learn = airbench94_learner(ds.train, ds.valid, hyper=hyper, seed=args.seed, silent=args.quiet)
    _say(args, f"data: {args.data}, {len(ds.train)} training / "
               f"{len(ds.valid) if ds.valid is not None else 0} validation images; recipe "
               f"airbench94: {hyper.epochs} epochs at batch {hyper.batch_size}, "
               f"{learn.model.num_parameters():,} parameters")
    valid_dl, learn.valid_dl = learn.valid_dl, None       # score once, at the end
    fit_started = time.time()
    fit_airbench94(learn)
    learn.valid_dl = valid_dl
    train_seconds = time.time() - fit_started
    learn.recorder.plot_loss(path=os.path.join(out, "losses.png"), with_valid=False)
    learn.recorder.plot_sched(path=os.path.join(out, "schedule.png"))
    stats = (learn.train_dl.mean, learn.train_dl.std)
    model_path = tc.save(learn.model, os.path.join(out, "model.npz"), classes=ds.classes,
                         mean=list(stats[0]), std=list(stats[1]), image_shape=list(shape))
    metrics = {"recipe": "airbench94", "hyper": asdict(hyper), "train_seconds":
               round(train_seconds, 1)}
    if valid_dl is not None:
        probs, targets = learn.get_preds(valid_dl)
        metrics["valid_accuracy"] = float((probs.argmax(1) == targets).mean())
        tta = args.tta or "shift"
        tta_probs, _ = learn.tta(valid_dl, mode=tta)
        metrics.update(tta=tta, valid_accuracy_tta=float((tta_probs.argmax(1) == targets).mean()))
        plot.plot_confusion_matrix(_confusion(tta_probs.argmax(1), targets, len(ds.classes)),
                                   ds.classes, path=os.path.join(out, "confusion.png"))
    metrics.update(seconds=round(time.time() - started, 1), data=args.data, model=model_path,
                   n_train=len(ds.train), seed=args.seed,
                   options={k: v for k, v in vars(args).items() if k != "func"})
    _write_json(os.path.join(out, "metrics.json"), metrics)
    for key in ("valid_accuracy", "valid_accuracy_tta"):
        if key in metrics:
            print(f"{key}: {metrics[key]:.4f}")
    print(f"wrote {out}/ ({', '.join(sorted(os.listdir(out)))}) in {metrics['seconds']:.0f} s "
          f"(training {train_seconds:.0f} s)")
    return 0

