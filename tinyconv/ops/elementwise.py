"""Elementwise ops: arithmetic with broadcasting, and the pointwise functions.

Binary ops broadcast like NumPy; their backward undoes it with `unbroadcast`, visibly, per input.
"""
import numpy as np

from .. import kernels
from ..autograd import unbroadcast
from ..tensor import Function

__all__ = ["Add", "Sub", "Mul", "Div", "Neg", "Pow", "Exp", "Log", "Sqrt", "Abs", "ReLU",
           "LeakyReLU", "GELU", "Sigmoid", "Tanh", "Clip"]


def _check_broadcast(op: str, a: np.ndarray, b: np.ndarray) -> None:
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{op}: shapes {a.shape} and {b.shape} cannot be broadcast together") \
            from None


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_broadcast("add", a, b)
        ctx.a_shape, ctx.b_shape = a.shape, b.shape
        return a + b

    @staticmethod
    def backward(ctx, dy):
        # y = a + b  =>  da = dy, db = dy
        return unbroadcast(dy, ctx.a_shape), unbroadcast(dy, ctx.b_shape)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_broadcast("sub", a, b)
        ctx.a_shape, ctx.b_shape = a.shape, b.shape
        return a - b

    @staticmethod
    def backward(ctx, dy):
        # y = a - b  =>  da = dy, db = -dy
        return unbroadcast(dy, ctx.a_shape), unbroadcast(-dy, ctx.b_shape)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_broadcast("mul", a, b)
        ctx.a, ctx.b = a, b
        return a * b

    @staticmethod
    def backward(ctx, dy):
        # y = a * b  =>  da = dy * b, db = dy * a
        a, b = ctx.a, ctx.b
        da = unbroadcast(dy * b, a.shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(dy * a, b.shape) if ctx.needs_input_grad[1] else None
        return da, db


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_broadcast("div", a, b)
        ctx.a, ctx.b = a, b
        return a / b

    @staticmethod
    def backward(ctx, dy):
        # y = a / b  =>  da = dy / b, db = -dy * a / b^2
        a, b = ctx.a, ctx.b
        da = unbroadcast(dy / b, a.shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(-dy * a / (b * b), b.shape) if ctx.needs_input_grad[1] else None
        return da, db


class Neg(Function):
    @staticmethod
    def forward(ctx, x):
        return -x

    @staticmethod
    def backward(ctx, dy):
        # y = -x  =>  dx = -dy
        return -dy


class Pow(Function):
    @staticmethod
    def forward(ctx, x, exponent):
        if not np.isscalar(exponent):
            raise TypeError(f"pow: the exponent must be a scalar, got {type(exponent).__name__}")
        ctx.x, ctx.exponent = x, exponent
        return x ** x.dtype.type(exponent) if x.dtype.kind == "f" else x ** exponent

    @staticmethod
    def backward(ctx, dy):
        # y = x^p  =>  dx = dy * p * x^(p-1)
        p = ctx.exponent
        if p == 0:                    # y = 1 is constant; p * x^(p-1) would be 0 * inf at x = 0
            return np.zeros_like(dy)
        return dy * (p * ctx.x ** (p - 1)).astype(dy.dtype, copy=False)


class Exp(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.y = np.exp(x)
        return ctx.y

    @staticmethod
    def backward(ctx, dy):
        # y = e^x  =>  dx = dy * y
        return dy * ctx.y


class Log(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.x = x
        return np.log(x)

    @staticmethod
    def backward(ctx, dy):
        # y = ln x  =>  dx = dy / x
        return dy / ctx.x


class Sqrt(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.y = np.sqrt(x)
        return ctx.y

    @staticmethod
    def backward(ctx, dy):
        # y = sqrt(x)  =>  dx = dy / (2 y)
        return dy / (2 * ctx.y)


class Abs(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.sign = np.sign(x)
        return np.abs(x)

    @staticmethod
    def backward(ctx, dy):
        # y = |x|  =>  dx = dy * sign(x)   (0 at x = 0, as torch)
        return dy * ctx.sign


class ReLU(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.positive = x > 0
        return np.maximum(x, 0)

    @staticmethod
    def backward(ctx, dy):
        # y = max(x, 0)  =>  dx = dy where x > 0, else 0   (0 at x = 0, as torch)
        return dy * ctx.positive


class LeakyReLU(Function):
    @staticmethod
    def forward(ctx, x, negative_slope=0.01):
        if not np.issubdtype(x.dtype, np.floating):     # an integer slope would round to 0
            raise TypeError(f"leaky_relu: expected a floating-point input, got {x.dtype} "
                            f"of shape {x.shape}")
        ctx.slope = np.where(x > 0, 1, negative_slope).astype(x.dtype)
        return x * ctx.slope

    @staticmethod
    def backward(ctx, dy):
        # y = x if x > 0 else s x  =>  dx = dy * (1 or s)
        return dy * ctx.slope


class GELU(Function):
    """x * Phi(x), Phi the standard normal CDF (exact, with erf), or torch's tanh approximation
    0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) of it. The loops are kernels (gelu_forward,
    gelu_backward): erf has no NumPy ufunc, and a fused loop reads x once."""

    @staticmethod
    def forward(ctx, x, approximate="none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"gelu: expected a floating-point input, got {x.dtype} "
                            f"of shape {x.shape}")
        ctx.x, ctx.approximate = x, approximate        # only x: backward recomputes Phi from it
        return kernels.backend().gelu_forward(x, approximate)

    @staticmethod
    def backward(ctx, dy):
        # y = x Phi(x)  =>  dx = dy * (Phi(x) + x Phi'(x))
        return kernels.backend().gelu_backward(dy, ctx.x, ctx.approximate)


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, x):
        # exp of a negative number only: stable for large |x|
        e = np.exp(-np.abs(x))
        ctx.y = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return ctx.y

    @staticmethod
    def backward(ctx, dy):
        # y = sigmoid(x)  =>  dx = dy * y (1 - y)
        return dy * ctx.y * (1 - ctx.y)


class Tanh(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.y = np.tanh(x)
        return ctx.y

    @staticmethod
    def backward(ctx, dy):
        # y = tanh(x)  =>  dx = dy (1 - y^2)
        return dy * (1 - ctx.y * ctx.y)


class Clip(Function):
    @staticmethod
    def forward(ctx, x, min=None, max=None):
        if min is None and max is None:
            raise ValueError("clip: give min, max or both")
        ctx.inside = np.ones(x.shape, dtype=bool)
        if min is not None:
            ctx.inside &= x >= min
        if max is not None:
            ctx.inside &= x <= max
        return np.clip(x, min, max)

    @staticmethod
    def backward(ctx, dy):
        # y = clip(x, lo, hi)  =>  dx = dy inside [lo, hi], 0 where clipped
        return dy * ctx.inside
