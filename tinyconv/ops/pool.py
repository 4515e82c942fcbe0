"""Pooling ops: max and average over windows, and their adaptive (fixed output size) versions.

    max:  y = the largest value of each window; backward routes dy to that one input pixel
          (the forward saves its position, `argmax`).
    avg:  y = the mean of each window (zero padding counted, PyTorch's count_include_pad=True);
          backward spreads dy / (KH*KW) evenly over the window.
    adaptive: window i along an axis of length H covers [floor(i*H/OH), ceil((i+1)*H/OH)), so
          any input size maps to the requested output size (windows may overlap or differ).
"""
import math

import numpy as np

from .. import kernels
from ..tensor import Function, Tensor
from ._args import pair

__all__ = ["MaxPool2d", "AvgPool2d", "AdaptiveMaxPool2d", "AdaptiveAvgPool2d", "max_pool2d",
           "avg_pool2d", "adaptive_max_pool2d", "adaptive_avg_pool2d"]


def _check(op: str, x, kernel_size, stride, padding) -> None:
    if x.ndim != 4:
        raise ValueError(f"{op}: expected a 4-D input (N, C, H, W), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{op}: expected a floating-point input, got {x.dtype}")
    for k, p in zip(kernel_size, padding):
        if p > k // 2:
            raise ValueError(f"{op}: padding {padding} must be at most half the kernel "
                             f"{kernel_size} (a window would see only padding)")
    H, W = x.shape[2:]
    if kernel_size[0] > H + 2 * padding[0] or kernel_size[1] > W + 2 * padding[1]:
        raise ValueError(f"{op}: kernel {kernel_size} is larger than the padded input "
                         f"{H + 2 * padding[0]}x{W + 2 * padding[1]} (input {x.shape}, padding "
                         f"{padding})")


def _geometry(op: str, kernel_size, stride, padding) -> dict:
    kernel_size = pair(kernel_size, "kernel_size", op, 1)
    stride = kernel_size if stride is None else pair(stride, "stride", op, 1)
    return dict(kernel_size=kernel_size, stride=stride, padding=pair(padding, "padding", op, 0))


class MaxPool2d(Function):
    @staticmethod
    def forward(ctx, x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)):
        _check("max_pool2d", x, kernel_size, stride, padding)
        y, ctx.argmax = kernels.backend().max_pool2d_forward(x, kernel_size, stride, padding)
        ctx.x_shape = x.shape
        return y

    @staticmethod
    def backward(ctx, dy):
        # y = x[argmax]  =>  dx[argmax] += dy, zero elsewhere
        return kernels.backend().max_pool2d_backward(dy, ctx.argmax, ctx.x_shape)


class AvgPool2d(Function):
    @staticmethod
    def forward(ctx, x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)):
        _check("avg_pool2d", x, kernel_size, stride, padding)
        ctx.x_shape, ctx.geometry = x.shape, (kernel_size, stride, padding)
        return kernels.backend().avg_pool2d_forward(x, kernel_size, stride, padding)

    @staticmethod
    def backward(ctx, dy):
        # y = sum(window) / (KH*KW)  =>  every pixel of the window gets dy / (KH*KW)
        return kernels.backend().avg_pool2d_backward(dy, ctx.x_shape, *ctx.geometry)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max over windows, as torch.nn.functional.max_pool2d (padding counts as -inf).

    x (N, C, H, W) -> (N, C, OH, OW), OH = (H + 2*padding - KH) // stride + 1; stride defaults to
    kernel_size; padding at most half the kernel.
    """
    return MaxPool2d.apply(x, **_geometry("max_pool2d", kernel_size, stride, padding))


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Mean over windows, as torch.nn.functional.avg_pool2d (zero padding counted in the mean).

    x (N, C, H, W) -> (N, C, OH, OW), OH = (H + 2*padding - KH) // stride + 1.
    """
    return AvgPool2d.apply(x, **_geometry("avg_pool2d", kernel_size, stride, padding))


# ---- adaptive pooling ----------------------------------------------------------------------------

def _windows(size: int, out: int) -> list:
    """[(start, end)] of the out adaptive windows along an axis of length size (PyTorch's rule)."""
    return [(i * size // out, math.ceil((i + 1) * size / out)) for i in range(out)]


def _array(x) -> np.ndarray:
    return x.data if isinstance(x, Tensor) else np.asarray(x)


def _adaptive_size(op: str, x, output_size) -> tuple:
    if x.ndim != 4:
        raise ValueError(f"{op}: expected a 4-D input (N, C, H, W), got shape {x.shape}")
    items = (output_size, output_size) if output_size is None or \
        isinstance(output_size, (int, np.integer)) else tuple(output_size)
    if len(items) != 2:
        raise ValueError(f"{op}: output_size must be an int or a pair, got {output_size!r}")
    size = tuple(x.shape[2 + i] if s is None else int(s) for i, s in enumerate(items))
    if min(size) < 1:
        raise ValueError(f"{op}: output_size must be positive, got {output_size!r}")
    return size


def _uniform(x_shape, size):
    """(kernel, stride) when the adaptive windows tile the input evenly, else None."""
    H, W = x_shape[2:]
    if H % size[0] == 0 and W % size[1] == 0:
        k = (H // size[0], W // size[1])
        return k, k
    return None


class AdaptiveMaxPool2d(Function):
    @staticmethod
    def forward(ctx, x, output_size=(1, 1)):
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"adaptive_max_pool2d: expected a floating-point input, got {x.dtype}")
        ctx.x_shape = x.shape
        even = _uniform(x.shape, output_size)
        if even:                                   # plain max pooling: use the kernel
            y, ctx.argmax = kernels.backend().max_pool2d_forward(x, *even, (0, 0))
            return y
        N, C, H, W = x.shape
        y = np.empty((N, C) + tuple(output_size), dtype=x.dtype)
        ctx.argmax = np.empty(y.shape, dtype=np.int32)
        for i, (h0, h1) in enumerate(_windows(H, output_size[0])):
            for j, (w0, w1) in enumerate(_windows(W, output_size[1])):
                win = x[:, :, h0:h1, w0:w1].reshape(N, C, -1)
                k = np.argmax(win, axis=-1)                      # first maximum, like the kernel
                y[:, :, i, j] = np.take_along_axis(win, k[..., None], axis=-1)[..., 0]
                ctx.argmax[:, :, i, j] = (h0 + k // (w1 - w0)) * W + w0 + k % (w1 - w0)
        return y

    @staticmethod
    def backward(ctx, dy):
        # as max pooling: the gradient goes to the position of each window's maximum
        return kernels.backend().max_pool2d_backward(dy, ctx.argmax, ctx.x_shape)


class AdaptiveAvgPool2d(Function):
    @staticmethod
    def forward(ctx, x, output_size=(1, 1)):
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"adaptive_avg_pool2d: expected a floating-point input, got {x.dtype}")
        ctx.x_shape, ctx.output_size = x.shape, output_size
        even = _uniform(x.shape, output_size)
        if even:
            return kernels.backend().avg_pool2d_forward(x, *even, (0, 0))
        N, C, H, W = x.shape
        y = np.empty((N, C) + tuple(output_size), dtype=x.dtype)
        for i, (h0, h1) in enumerate(_windows(H, output_size[0])):
            for j, (w0, w1) in enumerate(_windows(W, output_size[1])):
                y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
        return y

    @staticmethod
    def backward(ctx, dy):
        # y[i, j] = mean of its window  =>  each window pixel gets dy[i, j] / (window size)
        even = _uniform(ctx.x_shape, ctx.output_size)
        if even:
            return kernels.backend().avg_pool2d_backward(dy, ctx.x_shape, *even, (0, 0))
        N, C, H, W = ctx.x_shape
        dx = np.zeros(ctx.x_shape, dtype=dy.dtype)
        for i, (h0, h1) in enumerate(_windows(H, ctx.output_size[0])):
            for j, (w0, w1) in enumerate(_windows(W, ctx.output_size[1])):
                dx[:, :, h0:h1, w0:w1] += (dy[:, :, i, j] / ((h1 - h0) * (w1 - w0)))[..., None,
                                                                                     None]
        return dx


def adaptive_max_pool2d(x, output_size):
    """Max pooling to a fixed output size, as torch.nn.functional.adaptive_max_pool2d.

    x (N, C, H, W) -> (N, C, OH, OW) with (OH, OW) = output_size (an int, a pair; None keeps
    that input dimension).
    """
    size = _adaptive_size("adaptive_max_pool2d", _array(x), output_size)
    return AdaptiveMaxPool2d.apply(x, output_size=size)


def adaptive_avg_pool2d(x, output_size):
    """Mean pooling to a fixed output size, as torch.nn.functional.adaptive_avg_pool2d.

    x (N, C, H, W) -> (N, C, OH, OW) with (OH, OW) = output_size (an int, a pair; None keeps
    that input dimension).
    """
    size = _adaptive_size("adaptive_avg_pool2d", _array(x), output_size)
    return AdaptiveAvgPool2d.apply(x, output_size=size)
