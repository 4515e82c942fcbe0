"""Reductions: sum, mean, max, min, var over an axis (int, tuple, or None for all).

Backward puts the reduced axes back (as size 1) and broadcasts the gradient over them.
Max and min: tied extremes SHARE the gradient equally (the subgradient a test can pin
down exactly, and the one that keeps the gradient check symmetric); torch's `amax` does the same.
"""
import warnings

import numpy as np

from ..tensor import Function

__all__ = ["Sum", "Mean", "Max", "Min", "Var"]


def _axes(axis, ndim: int) -> tuple:
    """Normalise `axis` to a sorted tuple of non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    for a in axes:
        if not -max(ndim, 1) <= a < max(ndim, 1):
            raise ValueError(f"reduction: axis {a} is out of range for a {ndim}-d input")
    return tuple(sorted(a % ndim for a in axes)) if ndim else ()    # a 0-d tensor: dim 0 is itself


def _expand(dy: np.ndarray, x_shape: tuple, axes: tuple, keepdims: bool) -> np.ndarray:
    """dy with the reduced axes restored as size 1, so it broadcasts against x."""
    if not keepdims:
        dy = np.expand_dims(dy, axes)
    return dy


def _winners(x: np.ndarray, extreme: np.ndarray, axes: tuple) -> np.ndarray:
    """Weights 1/k at the k elements equal to their extreme, 0 elsewhere: ties share equally.

    Float even for integer x (whose max is allowed, though it never needs a gradient).
    """
    winners = (x == extreme).astype(x.dtype if x.dtype.kind == "f" else np.float64)
    return winners / winners.sum(axis=axes, keepdims=True)


class Sum(Function):
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.x_shape, ctx.axes, ctx.keepdims = x.shape, _axes(axis, x.ndim), keepdims
        return np.asarray(x.sum(axis=ctx.axes, keepdims=keepdims))

    @staticmethod
    def backward(ctx, dy):
        # y = sum_i x_i  =>  dx_i = dy
        return np.broadcast_to(_expand(dy, ctx.x_shape, ctx.axes, ctx.keepdims), ctx.x_shape)


class Mean(Function):
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.x_shape, ctx.axes, ctx.keepdims = x.shape, _axes(axis, x.ndim), keepdims
        ctx.count = int(np.prod([x.shape[a] for a in ctx.axes]))
        return np.asarray(x.mean(axis=ctx.axes, keepdims=keepdims))

    @staticmethod
    def backward(ctx, dy):
        # y = sum_i x_i / n  =>  dx_i = dy / n
        dy = _expand(dy, ctx.x_shape, ctx.axes, ctx.keepdims) / dy.dtype.type(ctx.count)
        return np.broadcast_to(dy, ctx.x_shape)


def _extreme(ctx, x, axis, keepdims, pick) -> np.ndarray:
    """Forward of max (pick=np.max) and min (np.min): remember who won, and how many tied."""
    ctx.axes, ctx.keepdims = _axes(axis, x.ndim), keepdims
    y = pick(x, axis=ctx.axes, keepdims=True)
    ctx.winners = _winners(x, y, ctx.axes)
    return np.asarray(y if keepdims else y.squeeze(ctx.axes))


class Max(Function):
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        return _extreme(ctx, x, axis, keepdims, np.max)

    @staticmethod
    def backward(ctx, dy):
        # y = max_i x_i  =>  dx_i = dy / (number of maxima) where x_i is a maximum, else 0
        return _expand(dy, ctx.winners.shape, ctx.axes, ctx.keepdims) * ctx.winners


class Min(Function):
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        return _extreme(ctx, x, axis, keepdims, np.min)

    @staticmethod
    def backward(ctx, dy):
        # y = min_i x_i  =>  dx_i = dy / (number of minima) where x_i is a minimum, else 0
        return _expand(dy, ctx.winners.shape, ctx.axes, ctx.keepdims) * ctx.winners


class Var(Function):
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False, correction=1):
        ctx.axes, ctx.keepdims = _axes(axis, x.ndim), keepdims
        n = int(np.prod([x.shape[a] for a in ctx.axes]))
        # as torch: no degrees of freedom left (n <= correction) divides by max(n - correction, 0)
        # -> nan (0 / 0) or inf, with a warning, rather than an error
        ctx.divisor = max(n - correction, 0)
        if ctx.divisor == 0:
            warnings.warn(f"var: {n} element(s) over axes {ctx.axes} of shape {x.shape} with "
                          f"correction={correction}: degrees of freedom <= 0, the result is "
                          f"nan or inf (as torch.var)", RuntimeWarning, stacklevel=3)
        with np.errstate(invalid="ignore", divide="ignore"):
            ctx.centered = x - x.mean(axis=ctx.axes, keepdims=True) if n else x
            squares = (ctx.centered ** 2).sum(axis=ctx.axes, keepdims=keepdims)
            return np.asarray(squares / x.dtype.type(ctx.divisor))

    @staticmethod
    def backward(ctx, dy):
        # y = sum_i (x_i - mean)^2 / d  =>  dx_i = dy * 2 (x_i - mean) / d
        # (the terms through the mean sum to 0)
        dy = _expand(dy, ctx.centered.shape, ctx.axes, ctx.keepdims)
        with np.errstate(invalid="ignore", divide="ignore"):   # divisor 0: nan/inf, as torch
            scale = ctx.centered.dtype.type(2) / ctx.centered.dtype.type(ctx.divisor)
            return dy * ctx.centered * scale
