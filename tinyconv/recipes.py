"""Recipes: a whole published training run as a few library calls, every trick a named part.

airbench94 (Keller Jordan's CIFAR-10 speed run, arXiv 2404.00498), as tinyconv pieces:

    piece                                   tinyconv
    the net, whitened 2x2 stem, dirac init  airbench.airbench94, AirBench94.init_whitening
    stem bias trained 3 epochs, then fixed  airbench.WhiteningBiasFreeze
    SGD, Nesterov momentum 0.85             optim.SGD(nesterov=True)
    BN biases at 64x the lr, 1/64 the decay optim.bn_bias_kind (Learner(param_kinds=...))
    lr 0.2 -> 1 -> 0.07, piecewise linear   sched.airbench, Learner.fit_airbench
    label smoothing 0.2                     F.cross_entropy(label_smoothing=0.2)
    lookahead every 5 steps, decay ~ pos^3  callbacks.Lookahead
    alternating flip + 2-pixel translation  augment.airbench_transforms
    6-view flip + shift TTA                 Learner.tta(mode="shift")

    train, valid = tc.data.split(tc.data.ImageFolder("cifar10/train"), valid_pct=0.1, seed=0)
    learn = tc.recipes.airbench94_learner(train, valid, seed=0)
    tc.recipes.fit_airbench94(learn, epochs=10)
    probs, targets = learn.tta(mode="shift")

Hyper-parameters are airbench's, translated to tinyconv's conventions. airbench sums the loss
over the batch and writes its lr "per 1,024 examples" and its weight decay decoupled; with a mean
loss, as here, the same steps are taken with

    lr = lr_airbench * batch_size / (1024 * (1 + 1 / (1 - momentum)))    (1.5 at batch 1024)
    weight_decay = wd_airbench * batch_size / (1024 * (1 + 1 / (1 - momentum))) / lr

(torch-style coupled decay, g += weight_decay * p, so each step shrinks p by lr * weight_decay,
airbench's 0.0020 at the peak).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import partial

import numpy as np

from . import augment as A
from .airbench import AirBench94, WhiteningBiasFreeze
from .callbacks import Lookahead
from .data import loaders
from .learner import Learner
from .metrics import accuracy
from .nn import functional as F
from .optim import SGD, bn_bias_kind

__all__ = ["AirBenchHyper", "airbench94_learner", "fit_airbench94"]


@dataclass
class AirBenchHyper:
    """airbench94's hyper-parameters, in its own units (see the module docstring)."""

    epochs: int = 10                 # airbench: 9.9
    batch_size: int = 1024
    lr: float = 11.5                 # per 1,024 examples of a summed loss
    momentum: float = 0.85
    weight_decay: float = 0.0153     # per 1,024 examples, decoupled from the lr
    bias_scaler: float = 64.0        # BN biases: lr x this, weight decay / this
    label_smoothing: float = 0.2
    whiten_bias_epochs: int = 3
    whiten_images: int = 5000        # training images the whitening filters are measured on
    whiten: bool = True              # False: a trained stem from torch's random init (ablation)
    dirac: bool = True               # False: torch's random init in every 3x3 conv (ablation)
    translate: int = 2
    flip: str | None = "alternating"   # or "random" (a coin per image and epoch), None
    lookahead_every: int = 5         # 0: no lookahead; decay 0.95**5 * pos**3 (airbench's)
    lookahead_start_epoch: int = 3   # the average starts here; the net becomes it every epoch

    def step_sizes(self) -> tuple[float, float]:
        """(lr, weight_decay) for tinyconv's SGD on a mean loss."""
        kilostep = 1024 * (1 + 1 / (1 - self.momentum))
        lr = self.lr * self.batch_size / kilostep
        return lr, self.weight_decay * self.batch_size / kilostep / lr


def airbench94_learner(train, valid=None, *, hyper: AirBenchHyper | None = None, seed: int = 0,
                       silent: bool = False, **overrides) -> Learner:
    """A Learner set up as airbench94: loaders with its augmentation, the net with its whitened
    stem, SGD with its parameter kinds. train/valid: datasets of (N, 32, 32, 3) uint8 images.
    overrides: AirBenchHyper fields (e.g. batch_size=512, flip="random")."""
    hyper = hyper or AirBenchHyper()
    unknown = [name for name in overrides if not hasattr(hyper, name)]
    if unknown:
        raise TypeError(f"airbench94_learner: unknown hyper-parameter {unknown[0]!r}; known: "
                        f"{', '.join(asdict(hyper))}")
    hyper = replace(hyper, **overrides)                # the caller's object stays as it was
    transform = A.airbench_transforms(translate=hyper.translate, flip=hyper.flip)
    train_dl, valid_dl = loaders(train, valid, hyper.batch_size, transform, seed=seed,
                                 valid_batch_size=hyper.batch_size)
    model = AirBench94(num_classes=len(train.classes), rng=np.random.default_rng(seed),
                       dirac=hyper.dirac)
    if hyper.whiten:
        pick = np.random.default_rng(seed).choice(len(train.images),
                                                  min(hyper.whiten_images, len(train.images)),
                                                  replace=False)
        model.init_whitening(A.normalize(train.images[np.sort(pick)], train_dl.mean,
                                         train_dl.std))
    else:
        model.unfreeze_stem()
    lr, wd = hyper.step_sizes()
    learn = Learner(model, train_dl, valid_dl, metrics=[accuracy], seed=seed, lr=lr, wd=wd,
                    opt_func=partial(SGD, momentum=hyper.momentum, nesterov=True),
                    loss_func=partial(F.cross_entropy, label_smoothing=hyper.label_smoothing),
                    param_kinds=[bn_bias_kind(hyper.bias_scaler, 1 / hyper.bias_scaler)],
                    silent=silent)
    learn.hyper = hyper
    return learn


def fit_airbench94(learn: Learner, epochs: int | None = None, cbs=None) -> None:
    """Train `learn` (from airbench94_learner) with airbench's schedule, lookahead and whitening
    bias freeze, for `epochs` (default: the hyper-parameters')."""
    hyper = learn.hyper
    epochs = hyper.epochs if epochs is None else epochs
    extra = [WhiteningBiasFreeze(learn.model[0].bias, hyper.whiten_bias_epochs)]
    if hyper.lookahead_every:
        extra.append(Lookahead(every=hyper.lookahead_every,
                               start_epoch=hyper.lookahead_start_epoch))
    extra += list(cbs) if isinstance(cbs, (list, tuple)) else ([cbs] if cbs else [])
    learn.fit_airbench(epochs, hyper.step_sizes()[0], cbs=extra)
