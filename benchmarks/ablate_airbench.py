"""airbench94's tricks one at a time, at a reduced scale, and the recipe written in PyTorch.

    python benchmarks/ablate_airbench.py                    # the six variants of the README
    python benchmarks/ablate_airbench.py --variants base,no_dirac
    python benchmarks/ablate_airbench.py --torch            # the same run, trained by PyTorch

10,000 of the 45,000 training images of the seed-0 split, 5 epochs at batch 1024 (45 steps),
scored without TTA on that split's 5,000 held-out images. Each variant switches one
AirBenchHyper field. --torch feeds PyTorch the same batches (tinyconv's loader) and the same
initial weights, with the recipe written in torch (SGD groups, the schedule, airbench's
lookahead): a check that tinyconv trains as the recipe says, and a loop-time comparison.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import tinyconv as tc

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"base": {}, "no_whiten": {"whiten": False}, "no_dirac": {"dirac": False},
            "no_bn_bias_lr": {"bias_scaler": 1.0}, "no_lookahead": {"lookahead_every": 0},
            "random_flip": {"flip": "random"}}
EPOCHS = 5


def data(folder, n_train=10_000):
    train, valid = tc.data.split(tc.data.ImageFolder(folder), valid_pct=0.1, seed=0)
    keep = np.random.default_rng(0).choice(len(train), n_train, replace=False)
    return train.subset(np.sort(keep)), valid


def run_tinyconv(train, valid, overrides):
    learn = tc.recipes.airbench94_learner(train, valid, seed=0, silent=True, **overrides)
    valid_dl, learn.valid_dl = learn.valid_dl, None
    start = time.time()
    tc.recipes.fit_airbench94(learn, epochs=EPOCHS)
    probs, targets = learn.get_preds(valid_dl)
    return float((probs.argmax(1) == targets).mean()), time.time() - start


def run_torch(train, valid):
    import torch
    sys.path.insert(0, str(ROOT / "tests"))
    from torch_nets import airbench94
    torch.set_num_threads(2)
    learn = tc.recipes.airbench94_learner(train, valid, seed=0, silent=True)
    net = airbench94()
    net.load_state_dict({k: torch.from_numpy(np.array(v))
                         for k, v in learn.model.state_dict().items()})
    hyper = learn.hyper
    lr, wd = hyper.step_sizes()
    named = list(net.named_parameters())
    norm_biases = [p for k, p in named if "norm" in k and p.requires_grad]
    others = [p for k, p in named if "norm" not in k and p.requires_grad]
    opt = torch.optim.SGD([dict(params=norm_biases, lr=lr * 64, weight_decay=wd / 64),
                           dict(params=others, lr=lr, weight_decay=wd)],
                          momentum=hyper.momentum, nesterov=True)
    base = [g["lr"] for g in opt.param_groups]
    total = EPOCHS * len(learn.train_dl)
    average, step = None, 0

    def copy_back():
        for e, v in zip(average.values(), net.state_dict().values()):
            if v.dtype == torch.float32:
                v.copy_(e)
    start = time.time()
    for epoch in range(EPOCHS):
        net[0].bias.requires_grad = epoch < hyper.whiten_bias_epochs
        learn.train_dl.set_epoch(epoch)
        net.train()
        for xb, yb in learn.train_dl:
            for g, b in zip(opt.param_groups, base):
                g["lr"] = b * float(tc.sched.airbench(1.0)(step / total))
            loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(xb)),
                                                     torch.from_numpy(np.asarray(yb)),
                                                     label_smoothing=hyper.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if epoch >= hyper.lookahead_start_epoch and step % hyper.lookahead_every == 0:
                if average is None:
                    average = {k: v.clone() for k, v in net.state_dict().items()}
                else:
                    decay = 0.95 ** 5 * (step / total) ** 3
                    for e, v in zip(average.values(), net.state_dict().values()):
                        if v.dtype == torch.float32:
                            e.lerp_(v, 1 - decay)
                    copy_back()
        if average is not None:
            copy_back()
    net.eval()
    correct = n = 0
    with torch.no_grad():
        for xb, yb in learn.valid_dl:
            correct += int((net(torch.from_numpy(xb)).argmax(1).numpy() == np.asarray(yb)).sum())
            n += len(yb)
    return correct / n, time.time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/cifar10/train"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--torch", action="store_true")
    args = parser.parse_args()
    train, valid = data(args.data)
    if args.torch:
        acc, seconds = run_torch(train, valid)
        print(json.dumps({"framework": "torch", "acc": acc, "seconds": round(seconds)}))
        return
    for name in args.variants.split(","):
        acc, seconds = run_tinyconv(train, valid, VARIANTS[name])
        print(json.dumps({"variant": name, "acc": acc, "seconds": round(seconds)}), flush=True)


if __name__ == "__main__":
    main()
