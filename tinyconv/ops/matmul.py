"""Matrix products: batched, broadcasting matmul, and the fully connected layer's op.

A small fully connected layer (a classifier head on precomputed features: (32, 1024) @
(1024, 512)) runs its GEMMs with BLAS on one thread. Two BLAS threads hardly gain there, and
handing the work over costs more than it saves: the threads wait for each other (measured in
issue 17; the figures are in benchmarks/README.md).
"""
import contextlib

import numpy as np

from .._threads import single_threaded_blas
from ..autograd import unbroadcast
from ..tensor import Function

SMALL_GEMM = 1 << 25     # multiply-adds: below this a Linear's GEMMs use one BLAS thread

__all__ = ["MatMul", "Linear"]


class MatMul(Function):
    @staticmethod
    def forward(ctx, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: inputs must have at least 1 dimension, got {a.shape} "
                             f"and {b.shape}")
        k_a, k_b = a.shape[-1], b.shape[-2] if b.ndim > 1 else b.shape[0]
        if k_a != k_b:
            raise ValueError(f"matmul: inner dimensions differ: {a.shape} @ {b.shape} "
                             f"({k_a} != {k_b})")
        try:
            np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except ValueError:
            raise ValueError(f"matmul: batch dimensions of {a.shape} and {b.shape} cannot be "
                             f"broadcast together") from None
        ctx.a, ctx.b = a, b
        return np.matmul(a, b)

    @staticmethod
    def backward(ctx, dy):
        # y = a @ b  =>  da = dy @ b^T,  db = a^T @ dy   (vectors promoted to matrices, batch
        # dimensions unbroadcast)
        a, b = ctx.a, ctx.b
        a2 = a[None, :] if a.ndim == 1 else a                   # (k,) -> (1, k)
        b2 = b[:, None] if b.ndim == 1 else b                   # (k,) -> (k, 1)
        dy2 = dy                  # restore the dropped axes: b's column first (vec @ vec is 0-d)
        if b.ndim == 1:
            dy2 = np.expand_dims(dy2, -1)
        if a.ndim == 1:
            dy2 = np.expand_dims(dy2, -2)
        da = db = None
        if ctx.needs_input_grad[0]:
            da = unbroadcast(np.matmul(dy2, np.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
        if ctx.needs_input_grad[1]:
            db = unbroadcast(np.matmul(np.swapaxes(a2, -1, -2), dy2), b2.shape).reshape(b.shape)
        return da, db


class Linear(Function):
    @staticmethod
    def forward(ctx, x, weight, bias=None):
        if x.ndim != 2 or weight.ndim != 2:
            raise ValueError(f"linear: expected x (N, in_features) and weight (out_features, "
                             f"in_features), got {x.shape} and {weight.shape}")
        N, F_in = x.shape
        F_out, F_w = weight.shape
        if F_w != F_in:
            raise ValueError(f"linear: input has {F_in} features but weight {weight.shape} "
                             f"expects {F_w} (weight is (out_features, in_features))")
        ctx.x, ctx.weight = x, weight
        small = N * F_in * F_out < SMALL_GEMM
        with single_threaded_blas() if small else contextlib.nullcontext():
            y = x @ weight.T
        if bias is not None:
            if bias.shape != (F_out,):
                raise ValueError(f"linear: bias shape {bias.shape}, expected ({F_out},)")
            y += bias
        return y

    @staticmethod
    def backward(ctx, dy):
        # y = x W^T + b  =>  dx = dy W,  dW = dy^T x,  db = sum over the batch of dy
        small = ctx.x.size * ctx.weight.shape[0] < SMALL_GEMM
        with single_threaded_blas() if small else contextlib.nullcontext():
            dx = dy @ ctx.weight if ctx.needs_input_grad[0] else None
            dw = dy.T @ ctx.x if ctx.needs_input_grad[1] else None
        if len(ctx.needs_input_grad) == 2:
            return dx, dw
        db = dy.sum(axis=0) if ctx.needs_input_grad[2] else None
        return dx, dw, db
