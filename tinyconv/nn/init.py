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
           "default_uniform_", "dirac_", "patch_whitening_"]


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


def dirac_(tensor, groups: int = 1):
    """Identity filters, as torch.nn.init.dirac_: a conv with this weight copies its input.

    weight (C_out, C_in, *kernel) with 1 to 3 spatial dimensions. Within each of the `groups`
    blocks of C_out/groups filters, filter d is 1 at input channel d and the kernel's centre
    (index k // 2 along each axis), for d < min(C_out/groups, C_in); everything else is 0. So
    the first C_in outputs of each group are the inputs and any further ones are 0.

    Why (airbench): a conv initialised as dirac_ on its first C_in filters starts out as an
    implicit residual connection (identity plus what the other filters add), which deep plain
    nets train better from. Apply it to those filters only with `dirac_(conv.weight.data[:C_in])`.
    """
    w = _array(tensor)
    if not 3 <= w.ndim <= 5:
        raise ValueError(f"dirac_: needs a conv weight (C_out, C_in, *kernel) with 1 to 3 "
                         f"spatial dimensions, got shape {w.shape}")
    if groups < 1 or w.shape[0] % groups:
        raise ValueError(f"dirac_: C_out ({w.shape[0]}) must be divisible by groups ({groups}), "
                         f"weight {w.shape}")
    per_group = w.shape[0] // groups
    centre = tuple(k // 2 for k in w.shape[2:])
    w[...] = 0
    for g in range(groups):
        for d in range(min(per_group, w.shape[1])):
            w[(g * per_group + d, d) + centre] = 1
    return tensor


def patch_whitening_(weight, images, eps: float = 1e-2, chunk: int = 256,
                     center: bool = True):
    """Patch whitening as an initialisation (Page's ResNet-9 follow-ups; Jordan's airbench):
    the filters of a conv weight (C_out, C, KH, KW) become the principal directions of the
    images' KH x KW patches, scaled to give unit-variance, uncorrelated outputs.

    With lambda_i, v_i the eigenvalues (largest first) and eigenvectors of the patch covariance,
    filter i is v_i / sqrt(lambda_i + eps) and filter i + C_out/2 its negative, for the C_out/2
    largest: the +/- pairs let a following ReLU keep both signs of each component.
    images: (N, C, H, W) as the model sees them (normalised); C_out must be even and at most
    2 * C * KH * KW. eps keeps the faint components from being blown up into noise.

    Why: in natural images the first principal component (the patch's mean brightness) holds most
    of the variance (about 3/4 on CIFAR-10), so random filters mostly see brightness; whitened
    filters start out seeing every direction equally, and early training goes faster (CIFAR-10,
    ResNet-9 width 32: 62% instead of 49% after the first epoch; after 20 epochs the two were
    equal). The filters ignore the patches' mean: in conv_bn the BatchNorm after them removes it.

    center=False uses the patches' second moment E[p p^T] instead of their covariance (the mean
    is not subtracted), as airbench does: its whitening conv has no BatchNorm after it, so the
    filters must also account for the patches' mean. airbench's stem is
    patch_whitening_(w (24, 3, 2, 2), first 5000 training images, eps=5e-4, center=False):
    all 12 directions of a 2x2x3 patch and their negatives.
    """
    w = _array(weight)
    x = np.asarray(images)
    if w.ndim != 4 or x.ndim != 4 or x.shape[1] != w.shape[1]:
        raise ValueError(f"patch_whitening_: needs a conv weight (C_out, C, KH, KW) and images "
                         f"(N, C, H, W) with the same C, got weight {w.shape} and images {x.shape}")
    c_out, C, kh, kw = w.shape
    dim = C * kh * kw
    if c_out % 2 or c_out > 2 * dim:
        raise ValueError(f"patch_whitening_: C_out must be even and at most 2 * {dim} (the patch "
                         f"size), got weight {w.shape}")
    if x.shape[2] < kh or x.shape[3] < kw:
        raise ValueError(f"patch_whitening_: images {x.shape} are smaller than the kernel "
                         f"{kh}x{kw}")
    # patch covariance (or second moment), accumulated a chunk of images at a time (all patches
    # at once could take gigabytes): sum of p p^T and sum of p over every position of every image
    total, outer, count = np.zeros(dim), np.zeros((dim, dim)), 0
    for start in range(0, len(x), chunk):
        windows = np.lib.stride_tricks.sliding_window_view(
            x[start:start + chunk].astype(np.float64), (kh, kw), axis=(2, 3))
        patches = windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, dim)   # (n*H'*W', C*KH*KW)
        total += patches.sum(0)
        outer += patches.T @ patches
        count += len(patches)
    mean = total / count
    covariance = outer / count - (np.outer(mean, mean) if center else 0.0)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)                   # ascending
    k = c_out // 2
    top_values, top_vectors = eigenvalues[::-1][:k], eigenvectors[:, ::-1][:, :k]
    filters = (top_vectors / np.sqrt(np.maximum(top_values, 0.0) + eps)).T  # (k, C*KH*KW)
    w[...] = np.concatenate([filters, -filters]).reshape(w.shape)
    return weight
