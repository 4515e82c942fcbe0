"""Weight initialisation, PyTorch's formulas and names: `from tinyconv.nn import init`.

Each function fills a Parameter (or an ndarray) in place and returns it. Randomness comes from the
`generator` argument (a np.random.Generator; torch's argument name), so a seed replays an init.

Fans of a weight (C_out, C_in, KH, KW): fan_in = C_in*KH*KW, fan_out = C_out*KH*KW
(a Linear weight (out, in) has fan_in = in).

PyTorch's defaults, reproduced by the layers:
    Conv2d, Linear   weight  kaiming_uniform_(a=sqrt(5))  ==  U(-1/sqrt(fan_in), 1/sqrt(fan_in))
                     bias    U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    BatchNorm2d      weight 1, bias 0; running_mean 0, running_var 1
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["calculate_gain", "fan_in_and_fan_out", "uniform_", "normal_", "constant_", "zeros_",
           "ones_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
           "default_uniform_"]


def _array(tensor) -> np.ndarray:
    """The array to write into: a Tensor's (Parameter's) data, or the ndarray itself."""
    return tensor.data if not isinstance(tensor, np.ndarray) else tensor


def _rng(generator) -> np.random.Generator:
    return generator if generator is not None else np.random.default_rng()


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The gain that keeps activations' variance through `nonlinearity`, as torch.nn.init."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unknown nonlinearity {nonlinearity!r}")


def fan_in_and_fan_out(tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight (out, in, *kernel); needs at least 2 dimensions."""
    shape = _array(tensor).shape
    if len(shape) < 2:
        raise ValueError(f"fan_in_and_fan_out: needs a weight with at least 2 dimensions, "
                         f"got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _fan(tensor, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming init: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor, a: float = 0.0, b: float = 1.0, generator=None):
    """Fill with U(a, b)."""
    x = _array(tensor)
    x[...] = _rng(generator).uniform(a, b, size=x.shape)
    return tensor


def normal_(tensor, mean: float = 0.0, std: float = 1.0, generator=None):
    """Fill with N(mean, std^2)."""
    x = _array(tensor)
    x[...] = _rng(generator).normal(mean, std, size=x.shape)
    return tensor


def constant_(tensor, val: float):
    """Fill with `val`."""
    _array(tensor)[...] = val
    return tensor


def zeros_(tensor):
    """Fill with 0."""
    return constant_(tensor, 0.0)


def ones_(tensor):
    """Fill with 1."""
    return constant_(tensor, 1.0)


def kaiming_uniform_(tensor, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu", generator=None):
    """He et al. (2015), uniform: U(-bound, bound), bound = gain * sqrt(3 / fan)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    bound = math.sqrt(3.0) * std                  # a U(-b, b) has standard deviation b / sqrt(3)
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", generator=None):
    """He et al. (2015), normal: N(0, std^2), std = gain / sqrt(fan)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    return normal_(tensor, 0.0, std, generator)


def xavier_uniform_(tensor, gain: float = 1.0, generator=None):
    """Glorot & Bengio (2010), uniform: bound = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor, gain: float = 1.0, generator=None):
    """Glorot & Bengio (2010), normal: std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def default_uniform_(weight, bias=None, generator=None):
    """PyTorch's default for Conv2d and Linear: kaiming_uniform_(a=sqrt(5)) on the weight, and
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) on the bias."""
    kaiming_uniform_(weight, a=math.sqrt(5.0), generator=generator)
    if bias is not None:
        bound = 1.0 / math.sqrt(fan_in_and_fan_out(weight)[0])
        uniform_(bias, -bound, bound, generator)
    return weight
