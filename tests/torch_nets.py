"""The reference nets of REFERENCE.md written in PyTorch, for oracle tests and the benchmark.

Written the way a PyTorch user would (nn.Sequential, a Residual module with res1/res2), so that
their state_dict names are the ones tinyconv.models must line up with. Needs torch: import this
only where torch is installed (tests skip otherwise).
"""
import torch
from torch import nn as tnn

__all__ = ["conv_bn", "Residual", "mnist_cnn", "resnet9", "ConvGroup", "airbench94"]


def conv_bn(c_in, c_out):
    """Conv2d(3x3, padding 1, no bias) -> BatchNorm2d -> ReLU."""
    return tnn.Sequential(tnn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                          tnn.BatchNorm2d(c_out), tnn.ReLU())


class Residual(tnn.Module):
    """x + res2(res1(x))."""

    def __init__(self, c):
        super().__init__()
        self.res1, self.res2 = conv_bn(c, c), conv_bn(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res2(self.res1(x))


def mnist_cnn(num_classes=10):
    """(N, 1, 28, 28) -> (N, num_classes)."""
    return tnn.Sequential(conv_bn(1, 32), tnn.MaxPool2d(2), conv_bn(32, 64), tnn.MaxPool2d(2),
                          tnn.Flatten(), tnn.Linear(3136, 128), tnn.ReLU(),
                          tnn.Linear(128, num_classes))


def resnet9(num_classes=10, width=64):
    """(N, 3, 32, 32) -> (N, num_classes), widths (w, 2w, 4w, 8w)."""
    c0, c1, c2, c3 = width, 2 * width, 4 * width, 8 * width
    return tnn.Sequential(conv_bn(3, c0), conv_bn(c0, c1), tnn.MaxPool2d(2), Residual(c1),
                          conv_bn(c1, c2), tnn.MaxPool2d(2), conv_bn(c2, c3), tnn.MaxPool2d(2),
                          Residual(c3), tnn.MaxPool2d(4), tnn.Flatten(),
                          tnn.Linear(c3, num_classes, bias=False))


class ConvGroup(tnn.Module):
    """airbench's: conv -> pool -> BN -> GELU -> conv -> BN -> GELU (BN scale frozen at 1)."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv1 = tnn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = tnn.MaxPool2d(2)
        self.norm1 = tnn.BatchNorm2d(c_out, eps=1e-12, momentum=0.4)
        self.conv2 = tnn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = tnn.BatchNorm2d(c_out, eps=1e-12, momentum=0.4)
        self.activ = tnn.GELU()
        for norm in (self.norm1, self.norm2):
            norm.weight.requires_grad = False

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class Mul(tnn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


def airbench94(num_classes=10, widths=(64, 256, 256)):
    """(N, 3, 32, 32) -> (N, num_classes): airbench94's net, whitening conv frozen."""
    net = tnn.Sequential(tnn.Conv2d(3, 24, 2, bias=True), tnn.GELU(),
                         ConvGroup(24, widths[0]), ConvGroup(widths[0], widths[1]),
                         ConvGroup(widths[1], widths[2]), tnn.MaxPool2d(3), tnn.Flatten(),
                         tnn.Linear(widths[2], num_classes, bias=False), Mul(1 / 9))
    net[0].weight.requires_grad = False
    return net
