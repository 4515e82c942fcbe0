"""A pre-trained body with a new head: what fastai's vision_learner trains.

    net = transfer_net("resnet34", n_out=2, weights="resnet34-b627a593.pth")
    net[0]   the body: a torchvision ResNet cut before its pooling, (N, 3, H, W) -> (N, 512, h, w)
    net[1]   fastai's head (nn/head.py), (N, 512, h, w) -> (N, n_out) logits

Layer groups (fastai's split of a ResNet): [stem, layer1, layer2], [layer3, layer4], [head].
The net is a zoo architecture ("transfer_net", with its arguments in `arch_args`), so tc.save
and tc.load keep and rebuild it like any other; the weights then come from the saved file.
"""
from __future__ import annotations

import os

import numpy as np

from .nn.head import create_head
from .nn.module import Sequential
from .resnets import RESNET_CONFIGS, ResNet

__all__ = ["TransferNet", "transfer_net", "create_body"]

# fastai cuts a ResNet body (8 children: conv1, bn1, relu, maxpool, layer1..4) after layer2
_BODY_SPLIT = 6


def create_body(arch: str, weights=None, rng=None) -> Sequential:
    """The body of a torchvision ResNet (`arch`), with the weights in file `weights` (a torch
    .pth, .safetensors or tinyconv .npz of the whole ResNet; its fc, whatever its size, is not
    used): (N, 3, H, W) -> (N, C, H/32, W/32)."""
    if arch not in RESNET_CONFIGS:
        raise ValueError(f"transfer_net: arch must be one of {', '.join(RESNET_CONFIGS)}, got "
                         f"{arch!r}")
    net = ResNet(arch, num_classes=1000, rng=rng)
    if weights is not None:
        from .torch_weights import load_state_dict_file
        load_state_dict_file(net, os.fspath(weights), ignore=("fc.",))
    return net.body()


class TransferNet(Sequential):
    """Sequential(body, head): (N, 3, H, W) -> (N, n_out) logits. See transfer_net()."""

    arch_name = "transfer_net"

    def __init__(self, arch: str = "resnet34", n_out: int = 2, lin_ftrs=None, ps=0.5,
                 concat_pool: bool = True, weights=None, rng=None):
        rng = rng if rng is not None else np.random.default_rng()
        body = create_body(arch, weights, rng)
        nf = 512 * RESNET_CONFIGS[arch][0].expansion
        super().__init__(body, create_head(nf, n_out, lin_ftrs, ps, concat_pool, rng=rng))
        self.num_features = nf
        self.arch_args = {"arch": arch, "n_out": int(n_out),
                          "lin_ftrs": None if lin_ftrs is None else [int(v) for v in lin_ftrs],
                          "ps": ps if isinstance(ps, (int, float)) else [float(p) for p in ps],
                          "concat_pool": bool(concat_pool)}

    @property
    def body(self) -> Sequential:
        return self[0]

    @property
    def head(self) -> Sequential:
        return self[1]

    def groups(self) -> list:
        """[body up to layer2, layer3 + layer4, head]: two body halves and the head (fastai)."""
        return [self.body[:_BODY_SPLIT], self.body[_BODY_SPLIT:], self.head]


def transfer_net(arch: str = "resnet34", n_out: int = 2, lin_ftrs=None, ps=0.5,
                 concat_pool: bool = True, weights=None, rng=None) -> TransferNet:
    """A ResNet body (pre-trained with `weights`, a file) and fastai's head for n_out classes."""
    return TransferNet(arch, n_out, lin_ftrs, ps, concat_pool, weights, rng)
