"""2-D convolution as one differentiable op (im2col -> GEMM; col2im in backward).

The arithmetic lives in the kernels (tinyconv/kernels/reference.py is the readable version);
this file checks the arguments, saves what backward needs, and routes the gradients:

    y = conv(x, W) + b       x (N, C, H, W), W (C_out, C/groups, KH, KW), b (C_out,)
    dx = col2im(W^T @ dy)    dW = sum over images of dy @ im2col(x)^T      db = sum of dy
"""
import numpy as np

from .. import kernels
from ..tensor import Function
from ._args import pair

__all__ = ["Conv2d", "conv2d", "pair", "resolve_padding"]


def resolve_padding(padding, kernel_size: tuple, stride: tuple, dilation: tuple) -> tuple:
    """padding as a pair: an int, a pair, 'valid' (0) or 'same' (output size = input size).

    'same' needs stride 1 and an even total padding dilation*(k - 1) on each axis (the kernels pad
    both sides equally; PyTorch would pad one extra row at the end).
    """
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0
        if padding != "same":
            raise ValueError(f"conv2d: padding must be an int, a pair, 'valid' or 'same', "
                             f"got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"conv2d: padding='same' needs stride 1, got stride={stride}")
        total = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
        if any(t % 2 for t in total):
            raise ValueError(f"conv2d: padding='same' with kernel {kernel_size} and dilation "
                             f"{dilation} needs uneven padding, which is not supported")
        return total[0] // 2, total[1] // 2
    return pair(padding, "padding", "conv2d", 0)


def _check(x, weight, bias, stride, padding, dilation, groups) -> None:
    """Shapes, dtypes and sizes, with messages that say what was expected."""
    if x.ndim != 4:
        raise ValueError(f"conv2d: expected a 4-D input (N, C, H, W), got shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"conv2d: expected a 4-D weight (C_out, C/groups, KH, KW), got shape "
                         f"{weight.shape}")
    N, C, H, W = x.shape
    C_out, C_w, KH, KW = weight.shape
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    if C % groups or C_out % groups:
        raise ValueError(f"conv2d: groups={groups} must divide both the {C} input channels and "
                         f"the {C_out} output channels (input {x.shape}, weight {weight.shape})")
    if C_w * groups != C:
        raise ValueError(f"conv2d: input has {C} channels but weight expects {C_w * groups} "
                         f"(weight {weight.shape}, groups={groups})")
    if x.dtype != weight.dtype:
        raise TypeError(f"conv2d: input dtype {x.dtype} and weight dtype {weight.dtype} differ")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"conv2d: expected a floating-point input, got {x.dtype}")
    if bias is not None:
        if bias.shape != (C_out,):
            raise ValueError(f"conv2d: bias shape {bias.shape}, expected ({C_out},)")
        if bias.dtype != x.dtype:
            raise TypeError(f"conv2d: input dtype {x.dtype} and bias dtype {bias.dtype} differ")
    span = (dilation[0] * (KH - 1) + 1, dilation[1] * (KW - 1) + 1)
    padded = (H + 2 * padding[0], W + 2 * padding[1])
    if span[0] > padded[0] or span[1] > padded[1]:
        raise ValueError(f"conv2d: kernel {KH}x{KW} (dilated extent {span[0]}x{span[1]}) is "
                         f"larger than the padded input {padded[0]}x{padded[1]} (input "
                         f"{x.shape}, padding {padding}, dilation {dilation})")


class Conv2d(Function):
    @staticmethod
    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                groups=1):
        _check(x, weight, bias, stride, padding, dilation, groups)
        ctx.x, ctx.weight = x, weight                      # im2col(x) is recomputed in backward
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return kernels.backend().conv2d_forward(x, weight, bias, stride, padding, dilation,
                                                groups)

    @staticmethod
    def backward(ctx, dy):
        # y = W @ im2col(x) + b  =>  dx = col2im(W^T @ dy),  dW = dy @ im2col(x)^T,  db = sum dy
        need = ctx.needs_input_grad
        dx, dw = kernels.backend().conv2d_backward(dy, ctx.x, ctx.weight, *ctx.geometry,
                                                   need_dx=need[0], need_dw=need[1])
        if not ctx.has_bias:
            return dx, dw
        db = dy.sum(axis=(0, 2, 3)) if need[2] else None
        return dx, dw, db


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, as torch.nn.functional.conv2d.

    x (N, C, H, W), weight (C_out, C/groups, KH, KW), bias (C_out,) or None -> (N, C_out, OH, OW),
    OH = (H + 2*padding - dilation*(KH - 1) - 1) // stride + 1 (likewise OW).
    stride, padding, dilation: an int or a (rows, cols) pair; padding may also be 'valid' or
    'same'. groups splits the channels into independent convolutions (groups=C: depthwise).
    """
    kernel_size = tuple(getattr(weight, "shape", (0, 0, 1, 1))[2:])
    stride = pair(stride, "stride", "conv2d", 1)
    dilation = pair(dilation, "dilation", "conv2d", 1)
    padding = resolve_padding(padding, kernel_size, stride, dilation)
    params = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    if bias is None:
        return Conv2d.apply(x, weight, **params)
    return Conv2d.apply(x, weight, bias, **params)
