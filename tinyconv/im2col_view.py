"""See a convolution as one matrix product: the im2col matrix and the GEMM shapes of a layer.

    >>> view = im2col_view(x, conv_layer)          # or im2col_view(x, weight, stride=..., ...)
    >>> print(view)
    conv2d as matrix products: weight (64, 27) @ cols (27, 1024) -> (64, 1024), once per image...
    >>> np.allclose(view.output(), conv_layer(Tensor(x)).data)
    True

Each column of `cols` is one receptive field of the input, flattened in (channel, kernel row,
kernel column) order; each row of `weight_matrix` is one filter flattened the same way. Their
product is the convolution's output, one output pixel per column.
"""
from dataclasses import dataclass

import numpy as np

from . import kernels
from .ops.conv import _check, pair, resolve_padding
from .tensor import Tensor

__all__ = ["Im2ColView", "im2col_view"]


@dataclass(frozen=True)
class Im2ColView:
    """The pieces of conv2d as a GEMM, for one input and one layer.

    cols           (N, C*KH*KW, OH*OW): the unfolded input (im2col)
    weight_matrix  (C_out, C/groups*KH*KW): the filters, one per row
    output_shape   (N, C_out, OH, OW)
    gemm           (M, K, P) = (C_out/groups, C/groups*KH*KW, OH*OW): each image and group is
                   one (M x K) @ (K x P) product
    groups         group g multiplies weight rows [g*M, (g+1)*M) by cols rows [g*K, (g+1)*K)
    """
    cols: np.ndarray
    weight_matrix: np.ndarray
    output_shape: tuple
    gemm: tuple
    groups: int

    def output(self) -> np.ndarray:
        """The convolution (without bias) computed as the matrix products: (N, C_out, OH, OW)."""
        M, K, P = self.gemm
        N, G = self.cols.shape[0], self.groups
        w = self.weight_matrix.reshape(G, M, K)
        cols = self.cols.reshape(N, G, K, P)
        return np.matmul(w, cols).reshape(self.output_shape)

    @property
    def flops(self) -> int:
        """Multiply-adds of the products, counted as 2 FLOPs each."""
        M, K, P = self.gemm
        return 2 * M * K * P * self.groups * self.cols.shape[0]

    def __str__(self) -> str:
        M, K, P = self.gemm
        N, G = self.cols.shape[0], self.groups
        where = "image" if G == 1 else "image and group"
        return (f"conv2d as matrix products: weight ({M}, {K}) @ cols ({K}, {P}) -> ({M}, {P}), "
                f"once per {where} ({N * G} products); cols {self.cols.shape} holds "
                f"{self.cols.size:,} values; output {self.output_shape}; "
                f"{self.flops / 1e6:.1f} MFLOP")


def im2col_view(x, weight, stride=1, padding=0, dilation=1, groups=1) -> Im2ColView:
    """The im2col matrix and GEMM shapes of conv2d(x, weight, ...).

    x: (N, C, H, W) array or Tensor. weight: a (C_out, C/groups, KH, KW) array or Tensor, or a
    layer with .weight, .stride, .padding, .dilation, .groups (nn.Conv2d), whose settings are used.
    """
    if hasattr(weight, "weight") and hasattr(weight, "stride"):
        layer = weight
        weight, stride, padding = layer.weight, layer.stride, layer.padding
        dilation, groups = layer.dilation, layer.groups
    x = x.data if isinstance(x, Tensor) else np.asarray(x)
    w = weight.data if isinstance(weight, Tensor) else np.asarray(weight)
    stride = pair(stride, "stride", "conv2d", 1)
    dilation = pair(dilation, "dilation", "conv2d", 1)
    padding = resolve_padding(padding, w.shape[2:], stride, dilation)
    _check(x, w, None, stride, padding, dilation, groups)
    C_out, C_g, KH, KW = w.shape
    cols = kernels.backend().im2col(x, (KH, KW), stride, padding, dilation)
    N, _, P = cols.shape
    OH = kernels.reference.conv_output_size(x.shape[2], KH, stride[0], padding[0], dilation[0])
    return Im2ColView(cols=cols, weight_matrix=w.reshape(C_out, C_g * KH * KW),
                      output_shape=(N, C_out, OH, P // OH),
                      gemm=(C_out // groups, C_g * KH * KW, P), groups=groups)
