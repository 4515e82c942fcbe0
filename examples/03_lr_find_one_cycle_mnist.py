"""The fast.ai loop on MNIST: find a learning rate, train with one-cycle, look at the mistakes.

Run: python examples/03_lr_find_one_cycle_mnist.py [--epochs 3] [--limit N] [--out DIR]
Writes lr_find.png, losses.png, schedule.png, confusion.png, top_losses.png into --out.
"""
import argparse
import os
from functools import partial

import numpy as np

import tinyconv as tc
from tinyconv import augment as A

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--limit", type=int, default=None, help="train on the first N images")
parser.add_argument("--out", default=os.path.join("runs", "lr_find_one_cycle"))
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)

train, test = tc.data.MNIST(train=True), tc.data.MNIST(train=False)
if args.limit:
    train = train.subset(np.arange(args.limit))
shifts = A.Compose([A.RandomCrop(28, padding=2, pad_mode="zeros")])   # random 2-pixel shifts
train_dl, valid_dl = tc.data.loaders(train, test, batch_size=128, transform=shifts, seed=0)

model = tc.models.mnist_cnn(rng=np.random.default_rng(0))
sgd = partial(tc.optim.SGD, momentum=0.9, nesterov=True)
learn = tc.Learner(model, train_dl, valid_dl, opt_func=sgd, metrics=[tc.metrics.accuracy],
                   wd=5e-4, seed=0)

# 1. The LR range test: 100 batches with the lr growing exponentially from 1e-7 to 10.
suggestions = learn.lr_find()
learn.recorder.plot_lr_find(path=os.path.join(args.out, "lr_find.png"))
print("LR finder suggestions:", ", ".join(f"{k} {v:.2e}" for k, v in suggestions._asdict().items()))
print("(the weights, optimizer and random state are restored: lr_find leaves no trace)")

# 2. One-cycle: warm up to lr_max for 25% of the steps, then cosine-anneal to lr_max / 1e5, with
#    momentum moving the other way (0.95 -> 0.85 -> 0.95). With SGD, the valley suggestion is
#    cautious (it is tuned for Adam); the lr of the lowest smoothed loss is a better peak.
lr_max = float(learn.recorder.lrs[int(np.argmin(learn.recorder.losses))])
print(f"training {args.epochs} epochs of one-cycle with lr_max {lr_max:.2e}")
learn.fit_one_cycle(args.epochs, lr_max)
learn.recorder.plot_loss(path=os.path.join(args.out, "losses.png"))
learn.recorder.plot_sched(path=os.path.join(args.out, "schedule.png"))

# 3. Where does it go wrong?
interp = tc.ClassificationInterpretation.from_learner(learn)
accuracy = np.trace(interp.confusion_matrix()) / interp.confusion_matrix().sum()
print(f"test accuracy: {accuracy:.4f}")
print("most confused (true, predicted, count):", interp.most_confused()[:5])
interp.plot_confusion_matrix(path=os.path.join(args.out, "confusion.png"))
interp.plot_top_losses(9, path=os.path.join(args.out, "top_losses.png"))
print(f"pictures in {args.out}/")
