"""The autograd engine: no_grad, unbroadcast, and backward().

It imports nothing from tinyconv. backward() walks any graph whose nodes follow a small protocol:
a tensor has `.requires_grad`, `.shape`, `.dtype`, `.grad` and `._ctx` (the node that made it, or
None for a leaf); a node (a `tinyconv.Function`, defined beside Tensor in tensor.py) has
`.inputs`, `.needs_input_grad`, `.freed` and `.backward(ctx, dy)`.

    y = Mul.apply(a, b)          # forward on arrays, wrap the result, remember the node
    y.sum().backward()           # visit the nodes in reverse topological order, chain rule
"""
from __future__ import annotations

import contextlib

import numpy as np

__all__ = ["no_grad", "enable_grad", "is_grad_enabled", "unbroadcast", "backward"]

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


def backward(root, grad: np.ndarray, retain_graph: bool = False) -> None:
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


def _free(ctx) -> None:
    """Drop what forward saved for backward and the links to the inputs (the big activations).

    The node itself stays on its output, marked freed, so a second backward() can say why it fails.
    """
    for name in list(vars(ctx)):
        if name != "needs_input_grad":
            delattr(ctx, name)
    ctx.inputs, ctx.freed = (), True


def _reverse_topological_order(root) -> list:
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

