"""Constant vs cyclical (Smith) vs SGDR vs one-cycle: the same net, data and epoch budget.

Run: python examples/05_compare_policies.py [--epochs 3] [--limit 12000] [--lr 0.05] [--out DIR]
Prints the validation accuracy of each policy and writes policies.png (lr per batch and the
validation loss of each run).
"""
import argparse
import os
from functools import partial

import numpy as np
from matplotlib.figure import Figure

import tinyconv as tc

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=3, help="epochs per policy (SGDR: 1 + 2)")
parser.add_argument("--limit", type=int, default=12000, help="training images")
parser.add_argument("--lr", type=float, default=0.05, help="peak learning rate of every policy")
parser.add_argument("--out", default=os.path.join("runs", "policies"))
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)

train = tc.data.MNIST(train=True).subset(np.arange(args.limit))
test = tc.data.MNIST(train=False)


def run(policy: str):
    """Train a fresh mnist_cnn (same seed) with `policy`; -> (recorder, accuracy)."""
    train_dl, valid_dl = tc.data.loaders(train, test, batch_size=128, seed=0)
    model = tc.models.mnist_cnn(rng=np.random.default_rng(0))
    learn = tc.Learner(model, train_dl, valid_dl, metrics=[tc.metrics.accuracy], wd=5e-4,
                       opt_func=partial(tc.optim.SGD, momentum=0.9), silent=True)
    n_iter = len(train_dl)
    if policy == "constant":
        learn.fit(args.epochs, args.lr)
    elif policy == "cyclic (triangular)":
        learn.fit_cyclic(args.epochs, args.lr / 10, args.lr, step_size=n_iter // 2)
    elif policy == "SGDR":
        cycles = 1 + int(np.log2(args.epochs))       # 1 + 2 (+ 4 ...) epochs, within budget
        learn.fit_sgdr(cycles, 1, args.lr, cycle_mult=2)
    else:
        learn.fit_one_cycle(args.epochs, args.lr)
    return learn.recorder, learn.validate()[1]


fig = Figure(figsize=(11, 4))
ax_lr, ax_loss = fig.subplots(1, 2)
for policy in ("constant", "cyclic (triangular)", "SGDR", "one-cycle"):
    recorder, accuracy = run(policy)
    print(f"{policy:>20}: validation accuracy {accuracy:.4f}")
    ax_lr.plot(recorder.lrs, label=policy)
    valid_losses = [row[1] for row in recorder.values]
    ax_loss.plot(range(1, len(valid_losses) + 1), valid_losses, marker="o", label=policy)
ax_lr.set(xlabel="batch", ylabel="learning rate", title="the schedules")
ax_loss.set(xlabel="epoch", ylabel="validation loss", title="what they give")
ax_lr.legend()
ax_loss.legend()
fig.tight_layout()
fig.savefig(os.path.join(args.out, "policies.png"), dpi=100)
print(f"wrote {os.path.join(args.out, 'policies.png')}")
