"""fast.ai's eight steps from a pre-trained torchvision ResNet (2018, lesson 1), on cat vs dog.

Run: python examples/08_pretrained_transfer.py [--weights resnet34-b627a593.pth --arch resnet34]
        [--data ../shared/datasets/cifar10/train] [--size 64] [--limit N] [--pretrain-epochs 2]

With --weights (a torchvision .pth or .safetensors: tinyconv reads it without torch and without
running anything in it) the body is ImageNet's. Without, the example makes its own weight file
offline, as example 07 does: it pre-trains a ResNet on the 8 CIFAR classes that are neither cats
nor dogs, saves it, and starts from that file -- the same path a downloaded file takes.
Prints the cat-vs-dog validation accuracy after each step.
"""
import argparse
import os
import tempfile
from functools import partial

import numpy as np

import tinyconv as tc
from tinyconv import augment as A
from tinyconv.data import ArrayDataset

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--weights", default=None, help="a torchvision weight file (else: offline)")
parser.add_argument("--arch", default="resnet18", choices=("resnet18", "resnet34", "resnet50"))
parser.add_argument("--data", default="../shared/datasets/cifar10/train")
parser.add_argument("--size", type=int, default=64, help="images are upscaled to SIZE x SIZE")
parser.add_argument("--limit", type=int, default=2000, help="images per task")
parser.add_argument("--pretrain-epochs", type=int, default=2)
parser.add_argument("--batch-size", type=int, default=64)
args = parser.parse_args()

cifar = tc.data.ImageFolder(args.data)
upscale = A.Compose([A.Resize(args.size)])       # 32 px is too little for an ImageNet body
pets = [cifar.classes.index("cat"), cifar.classes.index("dog")]
opt = partial(tc.optim.SGD, momentum=0.9, nesterov=True)


def only(classes_kept):
    """The images of `classes_kept`, labels renumbered 0..k-1, at most --limit of them."""
    keep = np.flatnonzero(np.isin(cifar.labels, classes_kept))
    keep = np.random.default_rng(0).choice(keep, min(args.limit, len(keep)), replace=False)
    relabel = {old: new for new, old in enumerate(classes_kept)}
    labels = np.array([relabel[k] for k in cifar.labels[keep]], dtype=np.int64)
    images = upscale(cifar.images[keep], np.random.default_rng(0))
    return ArrayDataset(images, labels, [cifar.classes[k] for k in classes_kept])


def report(step, learn):
    print(f"{step:<58} accuracy {learn.validate()[1]:.4f}", flush=True)


weights, normalize = args.weights, True
if weights is None:
    # 0. No download: pre-train the whole ResNet on the other 8 classes, keep it as a file.
    others = [k for k in range(len(cifar.classes)) if k not in pets]
    train, valid = tc.data.split(only(others), valid_pct=0.1, seed=0)
    dls = tc.data.loaders(train, valid, batch_size=args.batch_size, seed=0,
                          transform=A.transforms_side_on())
    net = getattr(tc.models, args.arch)(num_classes=len(others), rng=np.random.default_rng(0))
    base = tc.Learner(net, *dls, metrics=[tc.metrics.accuracy], opt_func=opt, wd=5e-4,
                      silent=True)
    base.fit_one_cycle(args.pretrain_epochs, 0.1)
    report(f"0. pre-trained {args.arch} on {len(others)} other classes", base)
    weights = os.path.join(tempfile.mkdtemp(), f"{args.arch}-cifar8.npz")
    tc.save(net, weights)
    normalize = False            # this body knows the CIFAR statistics, not ImageNet's

train, valid = tc.data.split(only(pets), valid_pct=0.2, seed=1)
dls = tc.data.loaders(train, valid, batch_size=args.batch_size, seed=1,
                      transform=A.transforms_side_on())

# 1. The body with the file's weights, fastai's new head for 2 classes, the body frozen, and
#    its activations computed once: the head's epochs then cost almost nothing.
learn = tc.vision_learner(args.arch, dls, weights=weights, precompute=True, normalize=normalize,
                          metrics=[tc.metrics.accuracy], opt_func=opt, wd=5e-4, seed=1,
                          silent=True)
report("1. pre-trained body, new head, precompute=True", learn)

# 2. The learning-rate finder on the head (fast.ai: an order of magnitude below the minimum).
learn.lr_find()
lr = float(learn.recorder.lrs[int(np.nanargmin(learn.recorder.losses))]) / 10
report(f"2. lr_find: lr {lr:.1e}", learn)

# 3. Train the head on the precomputed activations.
learn.fit(2, lr)
report("3. head trained on precomputed activations, 2 epochs", learn)

# 4. Back to images, with augmentation; SGDR cycles of one epoch.
learn.precompute = False
learn.fit_sgdr(2, 1, lr_max=lr, cycle_mult=1)
report("4. precompute=False: head with augmentation, 2 cycles", learn)

# 5 + 6. Unfreeze; earlier layer groups learn 3x and 9x slower than the next.
learn.unfreeze()
lrs = [lr / 9, lr / 3, lr]
report("5, 6. unfrozen, lrs lr/9, lr/3, lr", learn)

# 7. lr_find again, on the whole net (fast.ai: lr_find(lrs / 1000)); its valley, kept within
#    [lr/10, lr] (a sweep over a few hundred images is noisy).
found = learn.lr_find(start_lr=[v / 1000 for v in lrs], end_lr=[v * 10 / lr for v in lrs],
                      num_it=50).valley
lrs = [v * min(max(found, lr / 10), lr) / lr for v in lrs]
report(f"7. lr_find on the whole net: head lr {lrs[-1]:.1e}", learn)

# 8. Train everything, cycles doubling: 1 + 2 epochs.
learn.fit_sgdr(2, 1, lr_max=lrs, cycle_mult=2)
report("8. everything, SGDR cycle_mult=2", learn)

probs, targets = learn.tta()
print(f"{'with TTA':<58} accuracy {(probs.argmax(1) == targets).mean():.4f}")
