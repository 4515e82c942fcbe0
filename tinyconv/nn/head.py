"""fastai's head for a pre-trained body: concat pooling, then batch norm / dropout / linear blocks.

    head = create_head(512, n_out=10)     # after a ResNet-34 body (512 channels)
    # AdaptiveConcatPool2d -> Flatten -> BatchNorm1d(1024) -> Dropout(0.25) -> Linear(1024, 512)
    # -> ReLU -> BatchNorm1d(512) -> Dropout(0.5) -> Linear(512, n_out)

Why concat pooling: the average says how much of a feature the image holds, the max whether it
holds it anywhere; giving the classifier both (2 x the channels) costs nothing and helps (fastai).
Why batch norm before each linear layer: the pooled activations of a frozen body have whatever
scale the body gives them; normalising them lets one learning rate suit the head.
"""
from __future__ import annotations

import numpy as np

from ..ops.pool import adaptive_avg_pool2d, adaptive_max_pool2d
from ..ops.shape import concat
from . import init
from .layers import AdaptiveAvgPool2d, BatchNorm2d, Dropout, Flatten, Linear, ReLU
from .module import Module, Sequential

__all__ = ["BatchNorm1d", "AdaptiveConcatPool2d", "create_head"]


class BatchNorm1d(BatchNorm2d):
    """Batch normalisation per feature: (N, C) or (N, C, L) -> the same shape, statistics over
    N (and L). The same op, buffers and torch conventions as BatchNorm2d (see ops/norm.py)."""

    def forward(self, x):
        if x.ndim not in (2, 3) or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm1d({self.num_features}): expected an input (N, "
                             f"{self.num_features}) or (N, {self.num_features}, L), got shape "
                             f"{tuple(x.shape)}")
        return super().forward(x)


class AdaptiveConcatPool2d(Module):
    """[adaptive max pool, adaptive average pool] joined along the channels (fastai's order):
    (N, C, H, W) -> (N, 2C, *output_size)."""

    def __init__(self, output_size=1):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return concat([adaptive_max_pool2d(x, self.output_size),
                       adaptive_avg_pool2d(x, self.output_size)], axis=1)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def create_head(nf: int, n_out: int, lin_ftrs=None, ps=0.5, concat_pool: bool = True,
                rng=None) -> Sequential:
    """fastai's classifier head for a body giving (N, nf, H, W): -> (N, n_out) logits.

    lin_ftrs: the hidden widths (default [512]). ps: dropout probabilities, one per linear
    layer; a single number p gives p/2 to the hidden layers and p to the last (fastai). Each
    linear layer follows a BatchNorm1d, so it has no bias (fastai v2's LinBnDrop); its weight is
    He-normal (fastai's init of a new head), drawn from `rng`.
    """
    nf = 2 * nf if concat_pool else nf
    widths = [nf] + (list(lin_ftrs) if lin_ftrs is not None else [512]) + [n_out]
    ps = list(ps) if isinstance(ps, (list, tuple)) else [ps]
    if len(ps) == 1:
        ps = [ps[0] / 2] * (len(widths) - 2) + ps
    if len(ps) != len(widths) - 1:
        raise ValueError(f"create_head: {len(ps)} dropout probabilities for {len(widths) - 1} "
                         f"linear layers (widths {widths})")
    rng = rng if rng is not None else np.random.default_rng()
    layers = [AdaptiveConcatPool2d(1) if concat_pool else AdaptiveAvgPool2d(1), Flatten()]
    for k, (n_in, n_next, p) in enumerate(zip(widths[:-1], widths[1:], ps)):
        layers.append(BatchNorm1d(n_in))
        if p:
            layers.append(Dropout(p, rng=rng))
        linear = Linear(n_in, n_next, bias=False, rng=rng)
        init.kaiming_normal_(linear.weight, generator=rng)
        layers.append(linear)
        if k < len(widths) - 2:
            layers.append(ReLU())
    return Sequential(*layers)
