"""The autograd engine: Function (one class per op), no_grad, unbroadcast, and backward().

A `Function` subclass is one differentiable op. Its `forward` and `backward` are static methods on
plain NumPy arrays; the instance (`ctx`) is the node of the graph: it keeps its input Tensors, in
order, and whatever backward needs under readable names (`ctx.x_shape = x.shape`).

    y = Mul.apply(a, b)          # forward on arrays, wrap the result, remember the node
    y.sum().backward()           # visit the nodes in reverse topological order, chain rule

Every subclass registers itself in `Function.registry`, so a test can ask that each op has a
gradient check.
"""
from __future__ import annotations

import contextlib
from numbers import Number

import numpy as np

__all__ = ["Function", "no_grad", "enable_grad", "is_grad_enabled", "unbroadcast", "backward"]

_grad_enabled = True


def is_grad_enabled() -> bool:
    """True unless inside `no_grad()`."""
    return _grad_enabled


@contextlib.contextmanager
def _set_grad_enabled(mode: bool):
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, mode
    try:
        yield
    finally:
        _grad_enabled = previous


def no_grad():
    """Context manager: ops inside build no graph (inference, optimizer steps, evaluation)."""
    return _set_grad_enabled(False)


def enable_grad():
    """Context manager: turn graph building back on inside a `no_grad()` block."""
    return _set_grad_enabled(True)


def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum `grad` down to `shape`, undoing NumPy broadcasting.

    Broadcasting copies an input along new leading axes and along axes of size 1; the gradient of a
    copy is the sum of the gradients of its copies.  grad (*broadcast_shape) -> (*shape).
    """
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    kept_as_one = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if kept_as_one:
        grad = grad.sum(axis=kept_as_one, keepdims=True)
    return grad


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
        if _grad_enabled and any(ctx.needs_input_grad):
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


def backward(root: "Tensor", grad: np.ndarray, retain_graph: bool = False) -> None:
    """Backpropagate `grad` (shaped like root) to every leaf that requires grad.

    The graph is sorted iteratively (a 1,000-layer chain does not hit the recursion limit);
    gradients of a tensor used several times are summed before they flow on; leaves accumulate
    into `.grad`; each node's saved arrays are freed after use unless `retain_graph`.
    """
    grads = {id(root): grad}
    for tensor in _reverse_topological_order(root):
        dy = grads.pop(id(tensor), None)
        if dy is None:
            continue
        ctx = tensor._ctx
        if ctx is None:                                        # a leaf: keep its gradient
            dy = np.array(dy, dtype=tensor.dtype)    # a private copy: optimizers update in place
            tensor.grad = dy if tensor.grad is None else tensor.grad + dy
            continue
        op = type(ctx).__name__
        if ctx.freed:
            raise RuntimeError(f"backward through {op} a second time: its saved arrays were freed "
                               f"by the first backward(); call backward(retain_graph=True) the "
                               f"first time if you need to go through the graph twice")
        input_grads = ctx.backward(ctx, dy)
        if not isinstance(input_grads, tuple):
            input_grads = (input_grads,)
        if len(input_grads) != len(ctx.inputs):
            raise RuntimeError(f"{op}.backward returned {len(input_grads)} gradients for "
                               f"{len(ctx.inputs)} inputs")
        for i, (parent, g) in enumerate(zip(ctx.inputs, input_grads)):
            if g is None or not parent.requires_grad:
                continue
            if g.shape != parent.shape:
                raise RuntimeError(f"{op}.backward returned a gradient of shape {g.shape} for "
                                   f"input {i} of shape {parent.shape}")
            previous = grads.get(id(parent))
            grads[id(parent)] = g if previous is None else previous + g
        if not retain_graph:
            _free(ctx)


def _free(ctx: Function) -> None:
    """Drop what forward saved for backward and the links to the inputs (the big activations).

    The node itself stays on its output, marked freed, so a second backward() can say why it fails.
    """
    for name in list(vars(ctx)):
        if name != "needs_input_grad":
            delattr(ctx, name)
    ctx.inputs, ctx.freed = (), True


def _reverse_topological_order(root: "Tensor") -> list:
    """Tensors reachable from root that require grad, each before every tensor it was made from.

    Iterative depth-first search: a tensor is appended after all the tensors it was made from
    (post-order), so the reversed list visits every consumer before its inputs.
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        tensor, parents_done = stack.pop()
        if parents_done:
            order.append(tensor)
            continue
        if id(tensor) in visited:
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        if tensor._ctx is not None:
            for parent in tensor._ctx.inputs:
                if parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    order.reverse()
    return order


# Tensor's methods call the ops, and the ops subclass Function above: importing Tensor last, once
# Function exists, lets tensor.py and the ops import this module without a cycle.
from .tensor import Tensor  # noqa: E402
