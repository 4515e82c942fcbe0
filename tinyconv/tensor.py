"""Tensor, an ndarray that remembers how it was made, and Function, one differentiable op.

A `Function` subclass is one differentiable op. Its `forward` and `backward` are static methods on
plain NumPy arrays; the instance (`ctx`) is the node of the graph: it keeps its input Tensors, in
order, and whatever backward needs under readable names (`ctx.x_shape = x.shape`). Every subclass
registers itself in `Function.registry`, so a test can ask that each op has a gradient check.

Each Tensor method is one line that calls one op (a Function in tinyconv/ops/); read the op to see
its forward and backward side by side. autograd.py walks the graph backward.

The package's one import circle: the ops subclass Function (defined here) and Tensor's methods
call the ops, so the ops are imported at the bottom of this file, once Function and Tensor exist.
"""
from __future__ import annotations

from numbers import Number

import numpy as np

from . import autograd

__all__ = ["Function", "Tensor"]


class Function:
    """One differentiable op. Subclasses define `forward(ctx, *arrays, **params)` and
    `backward(ctx, dy)`, both static, on arrays; `backward` returns one gradient (or None) per
    input.
    """

    registry: dict[str, type] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__name__ in Function.registry:
            raise TypeError(f"Function {cls.__name__!r} is defined twice "
                            f"({Function.registry[cls.__name__].__module__} and {cls.__module__})")
        Function.registry[cls.__name__] = cls

    def __init__(self, inputs: tuple):
        self.inputs = inputs                                   # the input Tensors, in order
        self.needs_input_grad = tuple(t.requires_grad for t in inputs)
        self.freed = False

    @staticmethod
    def forward(ctx, *arrays, **params):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, dy):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **params) -> "Tensor":
        """Run the op on Tensors: unwrap, forward on arrays, wrap, and record the node.

        Non-Tensor inputs (Python numbers, arrays) become constant Tensors; a Python number takes
        the dtype of the first Tensor input, so `x * 2` keeps float32 float32.
        """
        tensors = _as_tensors(cls, inputs)
        ctx = cls(tensors)
        out = cls.forward(ctx, *[t.data for t in tensors], **params)
        if autograd.is_grad_enabled() and any(ctx.needs_input_grad):
            return Tensor(out, requires_grad=True, _ctx=ctx)
        return Tensor(out)


def _as_tensors(op: type, inputs: tuple) -> tuple:
    like = next((x for x in inputs if isinstance(x, Tensor)), None)
    if like is None or all(isinstance(x, Tensor) for x in inputs):
        return tuple(x if isinstance(x, Tensor) else Tensor(x) for x in inputs)
    tensors = []
    for x in inputs:
        if isinstance(x, Tensor):
            tensors.append(x)
        elif isinstance(x, Number) and not isinstance(x, bool):
            tensors.append(Tensor(np.asarray(x, dtype=like.dtype)))
        elif isinstance(x, (np.ndarray, Number, list, tuple)):
            tensors.append(Tensor(np.asarray(x)))
        else:
            raise TypeError(f"{op.__name__}: cannot use an input of type {type(x).__name__}")
    return tuple(tensors)


class Tensor:
    """An n-dimensional array with an optional gradient.

    data: np.ndarray (its dtype is kept; Python lists become float32).  grad: ndarray like data,
    or None until backward() reaches this tensor (leaves only).  requires_grad: whether gradients
    should flow to this tensor.  _ctx: the Function node that produced it (None for a leaf).
    """

    __array_priority__ = 1000          # make `ndarray * Tensor` call Tensor.__rmul__

    def __init__(self, data, requires_grad: bool = False, _ctx=None):
        if isinstance(data, Tensor):
            data = data.data
        if not isinstance(data, np.ndarray):
            from_python = not isinstance(data, np.generic)
            data = np.asarray(data)
            if from_python and data.dtype == np.float64:
                data = data.astype(np.float32)      # Python lists and floats: float32, as torch
        if requires_grad and not np.issubdtype(data.dtype, np.floating):
            raise TypeError(f"Tensor: only floating-point tensors can require grad, "
                            f"got dtype {data.dtype} with shape {data.shape}")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx = _ctx

    # ---- array-like attributes -------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def is_leaf(self) -> bool:
        return self._ctx is None

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.data, precision=4, threshold=20)}{grad})"

    def numpy(self) -> np.ndarray:
        """The underlying array (shared, not copied)."""
        return self.data

    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item(): tensor has {self.data.size} elements (shape {self.shape})")
        return self.data.item()

    def detach(self) -> "Tensor":
        """The same data, cut from the graph: no gradient flows through the result."""
        return Tensor(self.data)

    def astype(self, dtype) -> "Tensor":
        """A copy with another dtype (not differentiable: use it on inputs, not mid-graph)."""
        return Tensor(self.data.astype(dtype), requires_grad=self.requires_grad)

    def zero_grad(self) -> None:
        self.grad = None

    # ---- autograd --------------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Backpropagate from this tensor; `grad` defaults to 1 for a one-element tensor."""
        if not self.requires_grad:
            raise RuntimeError(f"backward(): this tensor (shape {self.shape}) does not require "
                               f"grad: no input of the ops that made it requires grad")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward(): grad can be omitted only for a one-element "
                                   f"tensor, this one has shape {self.shape}; pass grad=")
            grad = np.ones_like(self.data)
        grad = np.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"backward(): grad has shape {grad.shape}, tensor has {self.shape}")
        autograd.backward(self, grad, retain_graph=retain_graph)

    # ---- arithmetic (NumPy broadcasting) ---------------------------------------------------------
    def __add__(self, other):
        return elementwise.Add.apply(self, other)

    def __radd__(self, other):
        return elementwise.Add.apply(other, self)

    def __sub__(self, other):
        return elementwise.Sub.apply(self, other)

    def __rsub__(self, other):
        return elementwise.Sub.apply(other, self)

    def __mul__(self, other):
        return elementwise.Mul.apply(self, other)

    def __rmul__(self, other):
        return elementwise.Mul.apply(other, self)

    def __truediv__(self, other):
        return elementwise.Div.apply(self, other)

    def __rtruediv__(self, other):
        return elementwise.Div.apply(other, self)

    def __neg__(self):
        return elementwise.Neg.apply(self)

    def __pow__(self, exponent):
        return self.pow(exponent)

    def __matmul__(self, other):
        return matmul.MatMul.apply(self, other)

    def __rmatmul__(self, other):
        return matmul.MatMul.apply(other, self)

    def __getitem__(self, index):
        return shape_ops.GetItem.apply(self, index=index)

    # ---- elementwise -----------------------------------------------------------------------------
    def pow(self, exponent: float) -> "Tensor":
        """x ** exponent for a scalar exponent."""
        return elementwise.Pow.apply(self, exponent=exponent)

    def exp(self) -> "Tensor":
        """e ** x, elementwise."""
        return elementwise.Exp.apply(self)

    def log(self) -> "Tensor":
        """Natural logarithm, elementwise."""
        return elementwise.Log.apply(self)

    def sqrt(self) -> "Tensor":
        """Square root, elementwise."""
        return elementwise.Sqrt.apply(self)

    def abs(self) -> "Tensor":
        """|x|, elementwise (gradient 0 at 0)."""
        return elementwise.Abs.apply(self)

    def relu(self) -> "Tensor":
        """max(x, 0), elementwise."""
        return elementwise.ReLU.apply(self)

    def leaky_relu(self, negative_slope: float = 0.01) -> "Tensor":
        """x if x > 0 else negative_slope * x, elementwise."""
        return elementwise.LeakyReLU.apply(self, negative_slope=negative_slope)

    def gelu(self, approximate: str = "none") -> "Tensor":
        """x * Phi(x) (Phi the standard normal CDF), elementwise; "tanh" approximates Phi."""
        return elementwise.GELU.apply(self, approximate=approximate)

    def sigmoid(self) -> "Tensor":
        """1 / (1 + e^-x), elementwise."""
        return elementwise.Sigmoid.apply(self)

    def tanh(self) -> "Tensor":
        """Hyperbolic tangent, elementwise."""
        return elementwise.Tanh.apply(self)

    def clip(self, min=None, max=None) -> "Tensor":
        """Clamp into [min, max]; the gradient is 0 where the value was clipped."""
        return elementwise.Clip.apply(self, min=min, max=max)

    # ---- reductions ------------------------------------------------------------------------------
    def sum(self, axis=None, keepdims: bool = False) -> "Tensor":
        """Sum over `axis` (int, tuple or None for all)."""
        return reduce.Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims: bool = False) -> "Tensor":
        """Mean over `axis`."""
        return reduce.Mean.apply(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims: bool = False) -> "Tensor":
        """Maximum over `axis`; tied maxima share the gradient equally."""
        return reduce.Max.apply(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims: bool = False) -> "Tensor":
        """Minimum over `axis`; tied minima share the gradient equally."""
        return reduce.Min.apply(self, axis=axis, keepdims=keepdims)

    def var(self, axis=None, keepdims: bool = False, correction: int = 1) -> "Tensor":
        """Variance over `axis` with `correction` (1: unbiased, as torch.var; 0: biased)."""
        return reduce.Var.apply(self, axis=axis, keepdims=keepdims, correction=correction)

    # ---- shape -----------------------------------------------------------------------------------
    def reshape(self, *shape) -> "Tensor":
        """Same data, new shape (one dimension may be -1)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return shape_ops.Reshape.apply(self, shape=shape)

    def view(self, *shape) -> "Tensor":
        """Alias of reshape, for PyTorch users."""
        return self.reshape(*shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> "Tensor":
        """Merge dimensions start_dim..end_dim into one."""
        return shape_ops.flatten(self, start_dim, end_dim)

    def transpose(self, *axes) -> "Tensor":
        """Permute axes (like np.transpose); with two ints, swap those two axes (like torch).

        Two ints always swap, also on a 2-d tensor: `w.transpose(0, 1)` is w.T, as in torch.
        """
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        if len(axes) == 2:
            if not all(-self.ndim <= ax < self.ndim for ax in axes):
                raise ValueError(f"transpose: axes {axes} out of range for shape {self.shape}")
            a, b = (ax % self.ndim for ax in axes)
            order = list(range(self.ndim))
            order[a], order[b] = order[b], order[a]
            axes = tuple(order)
        return shape_ops.Transpose.apply(self, axes=axes or None)

    def permute(self, *axes) -> "Tensor":
        """Reorder all axes: x.permute(0, 2, 3, 1)."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return shape_ops.Transpose.apply(self, axes=axes)

    @property
    def T(self) -> "Tensor":
        return shape_ops.Transpose.apply(self, axes=None)

    def pad(self, pad_width, value: float = 0.0) -> "Tensor":
        """Constant padding, `pad_width` as np.pad: ((before, after), ...) per axis."""
        return shape_ops.Pad.apply(self, pad_width=pad_width, value=value)

    # ---- activations and losses ------------------------------------------------------------------
    def softmax(self, axis: int = -1) -> "Tensor":
        """exp(x) / sum(exp(x)) along `axis`."""
        return loss.Softmax.apply(self, axis=axis)

    def log_softmax(self, axis: int = -1) -> "Tensor":
        """x - logsumexp(x) along `axis`, computed stably."""
        return loss.LogSoftmax.apply(self, axis=axis)


from .ops import elementwise  # noqa: E402
from .ops import loss  # noqa: E402
from .ops import matmul  # noqa: E402
from .ops import reduce  # noqa: E402
from .ops import shape as shape_ops  # noqa: E402
