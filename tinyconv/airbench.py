"""airbench94: Keller Jordan's CIFAR-10 speed-run net (cifar10-airbench; arXiv 2404.00498).

    (N, 3, 32, 32)
    whiten   Conv2d(3, 24, 2) + bias, GELU        -> (N, 24, 31, 31)   fixed whitening filters
    block1   ConvGroup(24, 64)                    -> (N, 64, 15, 15)
    block2   ConvGroup(64, 256)                   -> (N, 256, 7, 7)
    block3   ConvGroup(256, 256)                  -> (N, 256, 3, 3)
    head     MaxPool2d(3), Flatten, Linear(256, 10, bias=False), Scale(1/9)  -> (N, 10) logits

    ConvGroup(c_in, c_out): conv3x3 -> MaxPool2d(2) -> BN -> GELU -> conv3x3 -> BN -> GELU

1,972,792 parameters for 10 classes (0.236 GFLOP forward per image), of which 1,972,280 train
(the 288 whitening filter values and the 1,152 BatchNorm scales are frozen; see below).

What each choice does (the paper's ablations; ours are in the README):
- Whitening stem: the first layer's 24 filters are the 12 eigenvectors of the covariance of the
  training images' 2x2 patches, scaled by 1/sqrt(eigenvalue + eps), and their negatives
  (init.patch_whitening_ with center=False, eps=5e-4). They stay fixed; only the bias trains, and
  only for the first few epochs (`WhiteningBiasFreeze`).
- Pooling before batch norm: a ConvGroup pools right after its first conv, so the BN and GELU
  that follow work on a quarter of the pixels.
- BatchNorm without a scale (weight=False): the next conv can scale, the BN only centres and
  shifts; momentum 0.4 in torch's convention (airbench writes 0.6 for the old statistics),
  eps 1e-12.
- Dirac init: each 3x3 conv's first C_in filters start as identities (init.dirac_), so a deep
  plain net starts close to a shallow one, as a residual net would.
- Logit scale 1/9 and label smoothing 0.2 keep the soft-max from saturating early.

The training recipe around the net (schedule, BN-bias learning rates, lookahead, alternating
flip, translation, test-time augmentation) is `tinyconv.recipes.airbench94`.
"""
from __future__ import annotations

import numpy as np

from .callbacks import Callback
from .nn import init
from .nn.layers import GELU, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, Scale
from .nn.module import Module, Sequential

__all__ = ["ConvGroup", "AirBench94", "airbench94", "WhiteningBiasFreeze", "WHITEN_EPS"]

WHITEN_EPS = 5e-4            # airbench's: keeps the faintest of the 12 directions from blowing up
BN_MOMENTUM, BN_EPS = 0.4, 1e-12


def _dirac_conv(c_in: int, c_out: int, rng=None, dirac: bool = True) -> Conv2d:
    """Conv2d(c_in, c_out, 3, padding 1, no bias), torch's default init, then (dirac) its first
    min(c_in, c_out) filters made identities."""
    conv = Conv2d(c_in, c_out, 3, padding=1, bias=False, rng=rng)
    if dirac:
        init.dirac_(conv.weight.data[:c_in])
    return conv


class ConvGroup(Module):
    """conv1 -> pool -> norm1 -> activ -> conv2 -> norm2 -> activ:
    (N, c_in, H, W) -> (N, c_out, H // 2, W // 2). Names as airbench's (state_dict keys)."""

    def __init__(self, c_in: int, c_out: int, rng=None, dirac: bool = True):
        super().__init__()
        self.conv1 = _dirac_conv(c_in, c_out, rng, dirac)
        self.pool = MaxPool2d(2)
        self.norm1 = BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM, weight=False)
        self.conv2 = _dirac_conv(c_out, c_out, rng, dirac)
        self.norm2 = BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM, weight=False)
        self.activ = GELU()

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class AirBench94(Sequential):
    """The airbench94 net: (N, 3, 32, 32) -> (N, num_classes) logits (see the module docstring).

    widths: the channels of the three ConvGroups. Index 0 is the whitening conv: call
    `init_whitening(images)` before training (its weight is frozen from the start).
    dirac=False keeps torch's random init in every 3x3 conv (for ablations).
    """

    arch_name = "airbench94"

    def __init__(self, num_classes: int = 10, widths=(64, 256, 256), logit_scale: float = 1 / 9,
                 rng=None, dirac: bool = True):
        w1, w2, w3 = (int(w) for w in widths)
        whiten = Conv2d(3, 24, 2, padding=0, bias=True, rng=rng)
        whiten.weight.frozen = True
        super().__init__(whiten, GELU(), ConvGroup(24, w1, rng, dirac),
                         ConvGroup(w1, w2, rng, dirac), ConvGroup(w2, w3, rng, dirac),
                         MaxPool2d(3), Flatten(), Linear(w3, num_classes, bias=False, rng=rng),
                         Scale(logit_scale))
        self.arch_args = {"num_classes": num_classes, "widths": [w1, w2, w3],
                          "logit_scale": float(logit_scale)}

    def init_whitening(self, images, eps: float = WHITEN_EPS) -> "AirBench94":
        """Set the stem's filters from `images` (N, 3, H, W), normalised as the model sees them
        (airbench uses 5,000 training images), and zero its bias."""
        init.patch_whitening_(self[0].weight, np.asarray(images, dtype=np.float32), eps=eps,
                              center=False)
        self[0].bias.data[...] = 0
        return self

    def unfreeze_stem(self) -> "AirBench94":
        """Train the stem's weight too, from its random init (the no-whitening ablation)."""
        self[0].weight.frozen = False
        return self

    def groups(self) -> list[Module]:
        """[whitening stem + block1, block2, block3 + head]: layer groups for freezing and
        discriminative learning rates."""
        return [self[0:3], self[3:4], self[4:]]


def airbench94(num_classes: int = 10, widths=(64, 256, 256), logit_scale: float = 1 / 9,
               rng=None) -> AirBench94:
    """airbench94 (1,972,792 parameters for 10 classes); call `init_whitening` before training."""
    return AirBench94(num_classes, widths, logit_scale, rng=rng)


class WhiteningBiasFreeze(Callback):
    """Train the whitening stem's bias for the first `epochs` epochs, then freeze it
    (airbench: 3 of its 10 epochs). `param` is that bias (model[0].bias)."""

    def __init__(self, param, epochs: int = 3):
        self.param, self.epochs = param, epochs

    def before_epoch(self):
        self.param.frozen = self.learn.epoch >= self.epochs
