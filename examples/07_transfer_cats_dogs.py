"""The fast.ai transfer recipe, small: pre-train a ResNet-9 body on 8 CIFAR classes, then teach it
cat vs dog with freeze -> lr_find -> fit_sgdr -> unfreeze -> discriminative LRs -> fit_sgdr -> TTA.

Run: python examples/07_transfer_cats_dogs.py [--data ../shared/datasets/cifar10/train]
        [--pretrain-epochs 4] [--limit N]
Prints the cat-vs-dog validation accuracy after each step.
"""
import argparse
from functools import partial

import numpy as np

import tinyconv as tc
from tinyconv import augment as A
from tinyconv.data import ArrayDataset

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", default="../shared/datasets/cifar10/train")
parser.add_argument("--width", type=int, default=32)
parser.add_argument("--pretrain-epochs", type=int, default=4)
parser.add_argument("--limit", type=int, default=None, help="images per task (quick look)")
args = parser.parse_args()

cifar = tc.data.ImageFolder(args.data)
pets = [cifar.classes.index("cat"), cifar.classes.index("dog")]


def only(classes_kept):
    """The images of `classes_kept` with labels renumbered 0..k-1, at most --limit of them."""
    keep = np.flatnonzero(np.isin(cifar.labels, classes_kept))
    if args.limit:
        keep = np.random.default_rng(0).choice(keep, min(args.limit, len(keep)), replace=False)
    relabel = {old: new for new, old in enumerate(classes_kept)}
    labels = np.array([relabel[k] for k in cifar.labels[keep]], dtype=np.int64)
    return ArrayDataset(cifar.images[keep], labels, [cifar.classes[k] for k in classes_kept])


def learner(ds, num_classes, seed=0):
    train, valid = tc.data.split(ds, valid_pct=0.1, seed=seed)
    train_dl, valid_dl = tc.data.loaders(train, valid, batch_size=128, seed=seed,
                                         transform=A.cifar_transforms())
    model = tc.models.resnet9(num_classes=num_classes, width=args.width,
                              rng=np.random.default_rng(seed))
    return tc.Learner(model, train_dl, valid_dl, metrics=[tc.metrics.accuracy], wd=5e-4,
                      opt_func=partial(tc.optim.SGD, momentum=0.9, nesterov=True), seed=seed,
                      silent=True)


def report(step, learn):
    print(f"{step:<48} accuracy {learn.validate()[1]:.4f}", flush=True)


# 0. Pre-training: the 8 classes that are neither cats nor dogs (our stand-in for ImageNet).
others = [k for k in range(len(cifar.classes)) if k not in pets]
base = learner(only(others), len(others))
base.fit_one_cycle(args.pretrain_epochs, 0.2)
report(f"pre-trained body on {len(others)} other classes", base)

# 1. A new head for cat vs dog on the pre-trained body (all weights but the last layer's).
learn = learner(only(pets), 2, seed=1)
body = {k: v for k, v in base.model.state_dict().items() if not k.startswith("11.")}
learn.model.load_state_dict(body, strict=False)
report("new head, before any training", learn)

# 2. Freeze the body; find a learning rate for the head; train it with SGDR, 1-epoch cycles.
learn.freeze()
lr = learn.lr_find().valley
learn.fit_sgdr(2, 1, lr_max=lr * 10, cycle_mult=1)
report(f"frozen body, head trained (lr {lr * 10:.1e})", learn)

# 3. Unfreeze and train everything, earlier layers at smaller learning rates (slice: geometric
#    spread from lr/100 for the first group to lr for the head), cycles doubling: 1 + 2 epochs.
learn.unfreeze()
learn.fit_sgdr(2, 1, lr_max=slice(lr / 10, lr * 10), cycle_mult=2)
report("unfrozen, discriminative LRs, SGDR cycle_mult=2", learn)

# 4. Test-time augmentation: average the predictions over 4 augmented copies and the plain one.
probs, targets = learn.tta()
print(f"{'with TTA':<48} accuracy {(probs.argmax(1) == targets).mean():.4f}")
