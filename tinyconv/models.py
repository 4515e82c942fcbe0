"""The model zoo: the reference nets of REFERENCE.md, built exactly (same graph, same names).

    mnist_cnn(num_classes=10)              1x28x28 -> num_classes     421,738 parameters
    resnet9(num_classes=10, width=64)      3x32x32 -> num_classes   6,573,120 parameters
    resnet9(width=32)  ("resnet9_half")                             1,646,112 parameters
    airbench94(num_classes=10)             3x32x32 -> num_classes   1,972,792 parameters

Each net is a Sequential, so its state_dict keys are those of the same net written with torch's
nn.Sequential ("0.0.weight" is the first conv, "3.res1.1.running_mean" a BatchNorm buffer inside
the first Residual), and a torch state_dict loads directly.

`groups()` splits a net into layer groups (early body, late body, head) for freezing and
discriminative learning rates. `arch_name` and `arch_args` let tc.load rebuild the net.
"""
from __future__ import annotations

from .nn.layers import Flatten, Linear, MaxPool2d, ReLU, Residual, Scale, conv_bn
from .nn.module import Module, Sequential
from .airbench import airbench94  # Jordan's CIFAR-10 speed-run net (airbench.py)
from .resnets import resnet18, resnet34, resnet50  # torchvision's ResNets (resnets.py)
from .transfer_net import transfer_net  # a ResNet body + fastai's head (vision_learner)

__all__ = ["MnistCNN", "ResNet9", "mnist_cnn", "resnet9", "ARCHITECTURES", "build", "airbench94",
           "resnet18", "resnet34", "resnet50"]


class MnistCNN(Sequential):
    """conv_bn(1,32), MaxPool2, conv_bn(32,64), MaxPool2, Flatten, Linear(3136,128), ReLU,
    Linear(128, num_classes): (N, 1, 28, 28) -> (N, num_classes) logits."""

    arch_name = "mnist_cnn"

    def __init__(self, num_classes: int = 10, rng=None):
        super().__init__(conv_bn(1, 32, rng), MaxPool2d(2),
                         conv_bn(32, 64, rng), MaxPool2d(2), Flatten(),
                         Linear(64 * 7 * 7, 128, rng=rng), ReLU(),
                         Linear(128, num_classes, rng=rng))
        self.arch_args = {"num_classes": num_classes}

    def groups(self) -> list[Module]:
        """[first conv block, second conv block, classifier head], each a Sequential view."""
        return [self[0:2], self[2:5], self[5:]]


class ResNet9(Sequential):
    """David Page's DAWNBench ResNet-9, widths c = (w, 2w, 4w, 8w):
    (N, 3, 32, 32) -> (N, num_classes) logits.

    conv_bn(3,c0), conv_bn(c0,c1), MaxPool2, Residual(c1),      32x32 -> 16x16
    conv_bn(c1,c2), MaxPool2, conv_bn(c2,c3), MaxPool2,          16x16 -> 8x8 -> 4x4
    Residual(c3), MaxPool2d(4), Flatten, Linear(c3, num_classes, bias=False)

    logit_scale != 1 appends Scale(logit_scale), Page's final Mul(0.125) (no parameters, so the
    state_dict keys are unchanged); the default 1 is the exact graph of REFERENCE.md.
    """

    arch_name = "resnet9"

    def __init__(self, num_classes: int = 10, width: int = 64, logit_scale: float = 1.0, rng=None):
        if not logit_scale > 0:
            raise ValueError(f"resnet9: logit_scale must be positive, got {logit_scale}")
        c0, c1, c2, c3 = width, 2 * width, 4 * width, 8 * width
        head = [Scale(logit_scale)] if logit_scale != 1 else []
        super().__init__(conv_bn(3, c0, rng), conv_bn(c0, c1, rng), MaxPool2d(2), Residual(c1, rng),
                         conv_bn(c1, c2, rng), MaxPool2d(2), conv_bn(c2, c3, rng), MaxPool2d(2),
                         Residual(c3, rng),
                         MaxPool2d(4), Flatten(), Linear(c3, num_classes, bias=False, rng=rng),
                         *head)
        self.arch_args = {"num_classes": num_classes, "width": width}
        if logit_scale != 1:
            self.arch_args["logit_scale"] = float(logit_scale)

    def groups(self) -> list[Module]:
        """[stem + first residual (32x32 and 16x16), deeper body (8x8 and 4x4), pool + linear]."""
        return [self[0:4], self[4:9], self[9:]]


def mnist_cnn(num_classes: int = 10, rng=None) -> MnistCNN:
    """The MNIST reference CNN (421,738 parameters for 10 classes)."""
    return MnistCNN(num_classes, rng=rng)


def resnet9(num_classes: int = 10, width: int = 64, logit_scale: float = 1.0, rng=None) -> ResNet9:
    """ResNet-9 (6,573,120 parameters at width 64; 1,646,112 at width 32); logit_scale=0.125 is
    Page's scaled classifier output."""
    return ResNet9(num_classes, width, logit_scale, rng=rng)


ARCHITECTURES = {"mnist_cnn": mnist_cnn, "resnet9": resnet9}
ARCHITECTURES.update(airbench94=airbench94, resnet18=resnet18, resnet34=resnet34, resnet50=resnet50)
ARCHITECTURES.update(transfer_net=transfer_net)  # what tc.load rebuilds a vision_learner's net with


def build(arch_name: str, **arch_args) -> Module:
    """The zoo net called `arch_name`, built with `arch_args` (what tc.load uses)."""
    if arch_name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch_name!r}; known: "
                         f"{', '.join(sorted(ARCHITECTURES))}")
    try:
        return ARCHITECTURES[arch_name](**arch_args)
    except TypeError as e:
        raise ValueError(f"architecture {arch_name!r}: bad arguments {arch_args}: {e}") from None
