"""CIFAR-10 the speed-run way: Keller Jordan's airbench94, every trick a tinyconv part.

The net (tc.models.airbench94): a frozen 2x2 patch-whitening stem, three conv -> pool -> BN ->
GELU -> conv -> BN -> GELU groups with dirac-initialised convs and scale-free batch norms, a
bias-free linear head scaled by 1/9. The training (tc.recipes): Nesterov SGD with the batch-norm
biases at 64x the learning rate, airbench's piecewise-linear schedule, label smoothing 0.2,
lookahead weight averaging from epoch 3, alternating flips and 2-pixel translations, and the
6-view flip + shift test-time augmentation.

Run: python examples/09_airbench94_cifar10.py [--data ../shared/datasets/cifar10/train]
        [--epochs 10] [--limit N] [--batch-size 1024]
Holds out 10% of the training folder (5,000 images, seeded) and reports the accuracy on it
with and without TTA. The same run from the shell: tinyconv train --recipe airbench94 ...
"""
import argparse
import time

import numpy as np

import tinyconv as tc

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", default="../shared/datasets/cifar10/train")
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--batch-size", type=int, default=1024)
parser.add_argument("--limit", type=int, default=None, help="train on N images (quick look)")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

started = time.time()
train, valid = tc.data.split(tc.data.ImageFolder(args.data), valid_pct=0.1, seed=args.seed)
if args.limit:
    train = train.subset(np.arange(args.limit))
learn = tc.recipes.airbench94_learner(train, valid, seed=args.seed, batch_size=args.batch_size)
print(f"{len(train)} training and {len(valid)} validation images, "
      f"{len(learn.train_dl)} batches/epoch")
tc.recipes.fit_airbench94(learn, epochs=args.epochs)

probs, targets = learn.get_preds()
tta_probs, _ = learn.tta(mode="shift")        # the image, its mirror and 1-pixel shifts
print(f"validation accuracy: {(probs.argmax(1) == targets).mean():.4f}, with shift TTA "
      f"{(tta_probs.argmax(1) == targets).mean():.4f}, in {(time.time() - started) / 60:.1f} min")
