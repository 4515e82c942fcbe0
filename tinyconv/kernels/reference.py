"""The kernels in plain NumPy: the readable specification.

Every function here has a twin with the same name and signature in numba_kernels.py (the fast
path); tests/test_kernels_parity.py runs both on the same cases. Arrays in, arrays out, no
autograd. Images are NCHW. `kernel_size`, `stride`, `padding`, `dilation` are (rows, cols) pairs.

Convolution is a matrix product in disguise (im2col): copy every receptive field of the input
into a column of a matrix, and a 3x3 convolution with C_out filters becomes

    cols (N, C*KH*KW, OH*OW)     one column per output pixel, one row per (channel, kh, kw)
    y    (N, C_out, OH*OW)  =  weight (C_out, C*KH*KW) @ cols

and its backward is two more products plus col2im (the adjoint of im2col: add every column back
where it came from).
"""
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["conv_output_size", "im2col", "col2im", "conv2d_forward", "conv2d_backward",
           "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward",
           "avg_pool2d_backward", "batch_norm_train", "batch_norm_eval", "batch_norm_backward",
           "gelu_forward", "gelu_backward"]


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length along an axis: (size + 2*padding - dilation*(kernel - 1) - 1) // stride + 1"""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _windows(x, kernel_size, stride, padding, dilation, fill=0.0):
    """Every receptive field of x as a view: (N, C, H, W) -> (N, C, OH, OW, KH, KW)."""
    (KH, KW), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    span = ((KH - 1) * dh + 1, (KW - 1) * dw + 1)              # a dilated kernel's extent
    win = sliding_window_view(xp, span, axis=(2, 3))           # (N, C, H', W', span_h, span_w)
    return win[:, :, ::sh, ::sw, ::dh, ::dw]


def im2col(x, kernel_size, stride, padding, dilation):
    """x (N, C, H, W) -> cols (N, C*KH*KW, OH*OW); row index (c*KH + kh)*KW + kw."""
    N, C = x.shape[:2]
    win = _windows(x, kernel_size, stride, padding, dilation)  # (N, C, OH, OW, KH, KW)
    OH, OW, KH, KW = win.shape[2:]
    return win.transpose(0, 1, 4, 5, 2, 3).reshape(N, C * KH * KW, OH * OW)


def col2im(cols, x_shape, kernel_size, stride, padding, dilation):
    """The adjoint of im2col: cols (N, C*KH*KW, OH*OW) -> (N, C, H, W), overlaps summed."""
    N, C, H, W = x_shape
    (KH, KW), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    OH = conv_output_size(H, KH, sh, ph, dh)
    OW = conv_output_size(W, KW, sw, pw, dw)
    cols = cols.reshape(N, C, KH, KW, OH, OW)
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for kh in range(KH):
        for kw in range(KW):
            # the input pixels that tap (kh, kw) of every window reads
            xp[:, :, kh * dh: kh * dh + sh * OH: sh, kw * dw: kw * dw + sw * OW: sw] += \
                cols[:, :, kh, kw]
    return xp[:, :, ph: ph + H, pw: pw + W]


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups):
    """x (N, C, H, W), weight (C_out, C/groups, KH, KW), bias (C_out,) or None
    -> (N, C_out, OH, OW).

    Each group is its own convolution: input channels [g*C/G, (g+1)*C/G) make output channels
    [g*C_out/G, (g+1)*C_out/G).
    """
    N = x.shape[0]
    C_out, C_g, KH, KW = weight.shape
    G = groups
    cols = im2col(x, (KH, KW), stride, padding, dilation)             # (N, C*KH*KW, P)
    P = cols.shape[-1]
    cols = cols.reshape(N, G, C_g * KH * KW, P)
    w = weight.reshape(G, C_out // G, C_g * KH * KW)
    y = np.matmul(w, cols)                                             # (N, G, C_out/G, P)
    OH = conv_output_size(x.shape[2], KH, stride[0], padding[0], dilation[0])
    y = y.reshape(N, C_out, OH, P // OH)
    if bias is not None:
        y += bias.reshape(1, C_out, 1, 1)
    return y


def conv2d_backward(dy, x, weight, stride, padding, dilation, groups, need_dx=True, need_dw=True):
    """Gradients of conv2d_forward (without bias): dy (N, C_out, OH, OW) -> (dx, dweight).

    y = W @ cols  =>  dW = sum over images of dy @ cols^T,  dcols = W^T @ dy,  dx = col2im(dcols).
    A gradient that is not needed is returned as None.
    """
    N = x.shape[0]
    C_out, C_g, KH, KW = weight.shape
    G, K = groups, C_g * KH * KW
    dy_g = dy.reshape(N, G, C_out // G, -1)                            # (N, G, C_out/G, P)
    dx = dw = None
    if need_dw:
        cols = im2col(x, (KH, KW), stride, padding, dilation).reshape(N, G, K, -1)
        # contract over the images and the output pixels, one group at a time
        dw = np.stack([np.tensordot(dy_g[:, g], cols[:, g], axes=([0, 2], [0, 2]))
                       for g in range(G)]).reshape(weight.shape)
    if need_dx:
        w_t = weight.reshape(G, C_out // G, K).transpose(0, 2, 1)      # (G, K, C_out/G)
        dcols = np.matmul(w_t, dy_g).reshape(N, G * K, -1)             # (N, C*KH*KW, P)
        dx = col2im(dcols, x.shape, (KH, KW), stride, padding, dilation)
    return dx, dw


def max_pool2d_forward(x, kernel_size, stride, padding):
    """x (N, C, H, W) -> (y (N, C, OH, OW), argmax (N, C, OH, OW) int32).

    argmax is the flat index ih*W + iw, within its (n, c) plane, of the maximum (the first one on
    ties, a NaN if there is one); padding counts as -inf, so it is never chosen.
    """
    N, C, H, W = x.shape
    win = _windows(x, kernel_size, stride, padding, (1, 1), fill=-np.inf)
    OH, OW, KH, KW = win.shape[2:]
    flat = win.reshape(N, C, OH, OW, KH * KW)
    k = np.argmax(flat, axis=-1)                                       # which tap of the window
    y = np.take_along_axis(flat, k[..., None], axis=-1)[..., 0]
    kh, kw = np.divmod(k, KW)
    ih = np.arange(OH)[:, None] * stride[0] - padding[0] + kh          # back to input rows/cols
    iw = np.arange(OW)[None, :] * stride[1] - padding[1] + kw
    return np.ascontiguousarray(y), (ih * W + iw).astype(np.int32)


def max_pool2d_backward(dy, argmax, x_shape):
    """Route each output gradient to the input pixel that was the maximum (sums where shared)."""
    N, C, H, W = x_shape
    dx = np.zeros((N * C, H * W), dtype=dy.dtype)
    rows = np.repeat(np.arange(N * C), argmax[0, 0].size)
    np.add.at(dx, (rows, argmax.reshape(-1)), dy.reshape(-1))
    return dx.reshape(x_shape)


def avg_pool2d_forward(x, kernel_size, stride, padding):
    """x (N, C, H, W) -> (N, C, OH, OW), the mean of each window; zero padding is counted in the
    divisor KH*KW (PyTorch's count_include_pad=True)."""
    win = _windows(x, kernel_size, stride, padding, (1, 1))
    return win.mean(axis=(-2, -1)).astype(x.dtype)


def avg_pool2d_backward(dy, x_shape, kernel_size, stride, padding):
    """Spread each output gradient evenly (1/(KH*KW)) over its window; drop what fell on padding."""
    KH, KW = kernel_size
    N, C, OH, OW = dy.shape
    cols = np.broadcast_to((dy / (KH * KW)).reshape(N, C, 1, OH * OW), (N, C, KH * KW, OH * OW))
    return col2im(cols.reshape(N, C * KH * KW, OH * OW), x_shape, kernel_size, stride, padding,
                  (1, 1))


def batch_norm_train(x, weight, bias, eps):
    """Normalise each channel with its batch statistics.

    x (N, C, H, W), weight (C,), bias (C,) -> (y like x, mean (C,), var (C,)), where var is the
    biased variance (divided by N*H*W) used to normalise: y = (x - mean) / sqrt(var + eps) * weight
    + bias. Statistics are accumulated in float64.
    """
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    var = ((x - mean.reshape(1, -1, 1, 1)) ** 2).mean(axis=(0, 2, 3), dtype=np.float64)
    y = batch_norm_eval(x, weight, bias, mean, var, eps)
    return y, mean.astype(x.dtype), var.astype(x.dtype)


def batch_norm_eval(x, weight, bias, mean, var, eps):
    """y = (x - mean) / sqrt(var + eps) * weight + bias with given per-channel mean, var (C,)."""
    invstd = 1.0 / np.sqrt(var.astype(np.float64) + eps)
    scale = weight * invstd                                # fold into one multiply-add per pixel
    shift = bias - mean * scale
    return (x * scale.reshape(1, -1, 1, 1).astype(x.dtype)
            + shift.reshape(1, -1, 1, 1).astype(x.dtype))


def batch_norm_backward(dy, x, weight, mean, var, eps, training):
    """Gradients of batch norm: dy like x -> (dx like x, dweight (C,), dbias (C,)).

    With xhat = (x - mean) * invstd and M = N*H*W values per channel:
      dbias = sum(dy),  dweight = sum(dy * xhat)
      training (mean and var depend on x):  dx = weight*invstd/M * (M*dy - dbias - xhat*dweight)
      eval (running statistics are constants):  dx = weight * invstd * dy
    """
    M = x.size // x.shape[1]
    invstd = (1.0 / np.sqrt(var.astype(np.float64) + eps)).reshape(1, -1, 1, 1)
    xhat = (x - mean.reshape(1, -1, 1, 1)) * invstd
    dbias = dy.sum(axis=(0, 2, 3), dtype=np.float64)
    dweight = (dy * xhat).sum(axis=(0, 2, 3), dtype=np.float64)
    k = weight.reshape(1, -1, 1, 1) * invstd
    if training:
        dx = k / M * (M * dy - dbias.reshape(1, -1, 1, 1) - xhat * dweight.reshape(1, -1, 1, 1))
    else:
        dx = k * dy
    return dx.astype(x.dtype), dweight.astype(x.dtype), dbias.astype(x.dtype)


# GELU (Hendrycks & Gimpel 2016): y = x * Phi(x), Phi the standard normal CDF, or torch's tanh
# approximation of it. math.erfc, one element at a time, is slow but exact: this is the spec.
_erfc = np.vectorize(math.erfc, otypes=[np.float64])
SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_CUBIC = 0.044715


def _gelu_cdf(x, approximate):
    """(Phi(x), dPhi/dx) in float64: exact, or the tanh approximation 0.5 (1 + tanh(u))."""
    x = x.astype(np.float64)
    if approximate == "tanh":
        # u = sqrt(2/pi) (x + 0.044715 x^3),  Phi ~ 0.5 (1 + tanh u) = sigmoid(2u), computed as
        # a sigmoid from e = exp(-2|u|) so that the negative tail does not cancel;
        # dPhi = sigmoid(2u) (1 - sigmoid(2u)) 2u' = e / (1 + e)^2 * 2u'
        u = SQRT_2_OVER_PI * (x + TANH_CUBIC * x * x * x)
        e = np.exp(-2 * np.abs(u))
        cdf = np.where(u >= 0, 1 / (1 + e), e / (1 + e))
        return cdf, 2 * e / (1 + e) ** 2 * SQRT_2_OVER_PI * (1 + 3 * TANH_CUBIC * x * x)
    # Phi = (1 + erf(x / sqrt 2)) / 2 = erfc(-x / sqrt 2) / 2 (the latter keeps the digits of the
    # negative tail, where 1 + erf cancels),  dPhi = exp(-x^2 / 2) / sqrt(2 pi)
    return 0.5 * _erfc(-x * SQRT_HALF), np.exp(-0.5 * x * x) * INV_SQRT_2PI


def gelu_forward(x, approximate):
    """x (any shape) -> x * Phi(x) like x; approximate: "none" (erf) or "tanh"."""
    cdf, _ = _gelu_cdf(x, approximate)
    return (x * cdf).astype(x.dtype)


def gelu_backward(dy, x, approximate):
    """dy, x like each other -> dx = dy * (Phi(x) + x * Phi'(x))."""
    cdf, pdf = _gelu_cdf(x, approximate)
    return (dy * (cdf + x * pdf)).astype(x.dtype)
