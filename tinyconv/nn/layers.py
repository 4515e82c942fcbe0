"""Layers: Modules that hold parameters (and buffers) and call one functional op in forward.

Shapes follow PyTorch: images are (N, C, H, W), a Conv2d weight is (C_out, C_in/groups, KH, KW),
a Linear weight is (out_features, in_features). Parameters are created float32 and C-contiguous,
once; the optimizer updates them in place, so nothing is reallocated from step to step.

Initialisation is PyTorch's default (see nn/init.py), drawn from the `rng` argument
(a np.random.Generator; None draws fresh entropy).
"""
from __future__ import annotations

import numpy as np

from . import functional as F
from . import init
from ..ops._args import pair
from .module import Buffer, Module, Parameter, Sequential

__all__ = ["Conv2d", "Linear", "BatchNorm2d", "ReLU", "GELU", "MaxPool2d", "AvgPool2d",
           "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Flatten", "Scale", "Dropout", "Residual",
           "conv_bn"]


def _pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints -> (vertical, horizontal); name is "Layer setting"."""
    layer, setting = name.split(" ", 1)
    return pair(value, setting, layer, 0)


def _empty(*shape) -> Parameter:
    return Parameter(np.zeros(shape, dtype=np.float32))


class Conv2d(Module):
    """2-D convolution: (N, in_channels, H, W) -> (N, out_channels, OH, OW)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, rng=None):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must both be divisible by groups ({groups})")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "Conv2d kernel_size")
        self.stride = _pair(stride, "Conv2d stride")
        # "same" / "valid" as torch.nn.Conv2d (F.conv2d works out the pads); else an int or pair
        self.padding = padding if padding in ("same", "valid") else _pair(padding, "Conv2d padding")
        self.dilation = _pair(dilation, "Conv2d dilation")
        self.weight = _empty(out_channels, in_channels // groups, *self.kernel_size)
        self.bias = _empty(out_channels) if bias else None
        init.default_uniform_(self.weight, self.bias, generator=rng)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                        dilation=self.dilation, groups=self.groups)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        defaults = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1)}
        for name, default in defaults.items():
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")


class Linear(Module):
    """Fully connected layer: (*, in_features) -> (*, out_features), y = x W^T + b."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _empty(out_features, in_features)
        self.bias = _empty(out_features) if bias else None
        init.default_uniform_(self.weight, self.bias, generator=rng)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        bias = "" if self.bias is not None else ", bias=False"
        return f"in_features={self.in_features}, out_features={self.out_features}{bias}"


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) per channel: (N, C, H, W) -> (N, C, H, W).

    Training: normalise with the batch's statistics and move the running ones towards them,
    running = (1 - momentum) * running + momentum * batch (unbiased variance), as torch.
    momentum=None: a cumulative average over all batches seen (num_batches_tracked counts them).
    ghost_batch_size=g: training normalises each chunk of g samples on its own (ghost batch
    norm, a regulariser; see ops/norm.py). Evaluation: normalise with the running statistics.

    affine=False: no weight and no bias (scale 1, shift 0), as torch. weight=False: the scale is
    pinned at 1 and never trained, only the bias is (airbench's BatchNorm, whose conv and BN
    bias carry everything the scale would). The weight is then still there, a frozen Parameter
    of ones, so the state_dict has torch's keys and a torch BatchNorm2d's state loads.
    (airbench writes momentum 0.6 for the weight of the OLD statistics; in torch's convention,
    used here, that is momentum=0.4, with eps=1e-12.)
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, *, weight: bool = True,
                 ghost_batch_size: int | None = None):
        super().__init__()
        if not affine and not weight:
            raise ValueError("BatchNorm2d: weight=False pins the scale of an affine batch norm; "
                             "with affine=False there is no weight to pin")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.ghost_batch_size = affine, ghost_batch_size
        self.weight = self.bias = None
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=np.float32), frozen=not weight)
            self.bias = Parameter(np.zeros(num_features, dtype=np.float32))
        self.running_mean = Buffer(np.zeros(num_features, dtype=np.float32))
        self.running_var = Buffer(np.ones(num_features, dtype=np.float32))
        self.num_batches_tracked = Buffer(np.zeros((), dtype=np.int64))

    def forward(self, x):
        momentum = self.momentum
        if self.training:
            self.num_batches_tracked.data += 1          # in place: the Buffer keeps its array
            if momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked.data)
        return F.batch_norm(x, self.running_mean.data, self.running_var.data, self.weight,
                            self.bias, training=self.training, momentum=momentum, eps=self.eps,
                            ghost_batch_size=self.ghost_batch_size)

    def extra_repr(self) -> str:
        s = f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
        if not self.affine:
            s += ", affine=False"
        elif self.weight.frozen:
            s += ", weight=False"
        if self.ghost_batch_size is not None:
            s += f", ghost_batch_size={self.ghost_batch_size}"
        return s


class ReLU(Module):
    """max(x, 0), elementwise."""

    def forward(self, x):
        return F.relu(x)


class GELU(Module):
    """x * Phi(x), Phi the standard normal CDF, elementwise (torch.nn.GELU): a smooth ReLU.

    approximate: "none" (exact, with erf) or "tanh" (torch's tanh approximation).
    """

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return "" if self.approximate == "none" else f"approximate={self.approximate!r}"


class MaxPool2d(Module):
    """Max over kernel_size windows: (N, C, H, W) -> (N, C, OH, OW); stride defaults to kernel."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride or self.kernel_size}, " \
               f"padding={self.padding}"


class AvgPool2d(MaxPool2d):
    """Mean over kernel_size windows (zero padding counted, as torch's default)."""

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class AdaptiveAvgPool2d(Module):
    """Mean pooling to a fixed output size: (N, C, H, W) -> (N, C, *output_size)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveMaxPool2d(AdaptiveAvgPool2d):
    """Max pooling to a fixed output size: (N, C, H, W) -> (N, C, *output_size)."""

    def forward(self, x):
        return F.adaptive_max_pool2d(x, self.output_size)


class Flatten(Module):
    """Merge dimensions start_dim..end_dim: (N, C, H, W) -> (N, C*H*W) by default."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)


class Scale(Module):
    """Multiply by a fixed number: (N, ...) -> (N, ...). Page's ResNet-9 ends with Scale(0.125):
    smaller logits at init and a 64x smaller effective step for the classifier, which lets the
    body train at a high learning rate without the head's logits blowing up."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x):
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class Dropout(Module):
    """Zero each element with probability p while training, scaling the rest by 1/(1-p)."""

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p
        self.rng = rng if rng is not None else np.random.default_rng()

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.rng)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def conv_bn(c_in: int, c_out: int, rng=None) -> Sequential:
    """Conv2d(3x3, padding 1, no bias) -> BatchNorm2d -> ReLU: (N, c_in, H, W) -> (N, c_out, H, W).

    No conv bias: the BatchNorm that follows subtracts the mean, which would cancel it.
    """
    return Sequential(Conv2d(c_in, c_out, 3, padding=1, bias=False, rng=rng),
                      BatchNorm2d(c_out), ReLU())


class Residual(Module):
    """x + res2(res1(x)) with two conv_bn(c, c): (N, c, H, W) -> (N, c, H, W)."""

    def __init__(self, c: int, rng=None):
        super().__init__()
        self.res1 = conv_bn(c, c, rng)
        self.res2 = conv_bn(c, c, rng)

    def forward(self, x):
        return x + self.res2(self.res1(x))
