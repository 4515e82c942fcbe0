"""Shape ops: they move values around without changing them, so backward moves gradients back.

reshape, transpose/permute, flatten, getitem (slices and integer arrays), pad, concat, stack.
"""
import numpy as np

from ..tensor import Function

__all__ = ["Reshape", "Transpose", "GetItem", "Pad", "Concat", "Stack", "flatten", "concat",
           "stack"]


class Reshape(Function):
    @staticmethod
    def forward(ctx, x, shape):
        ctx.x_shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape {x.shape} ({x.size} elements) "
                             f"into {tuple(shape)}") from None

    @staticmethod
    def backward(ctx, dy):
        # a reshape keeps the order of elements  =>  dx = dy reshaped back
        return dy.reshape(ctx.x_shape)


class Transpose(Function):
    @staticmethod
    def forward(ctx, x, axes=None):
        if axes is not None and sorted(a % x.ndim for a in axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes {tuple(axes)} are not a permutation of the "
                             f"{x.ndim} axes of shape {x.shape}")
        ctx.axes = axes
        return x.transpose(axes)

    @staticmethod
    def backward(ctx, dy):
        # y = x permuted by p  =>  dx = dy permuted by the inverse of p
        inverse = None if ctx.axes is None else tuple(np.argsort([a % dy.ndim for a in ctx.axes]))
        return dy.transpose(inverse)


class GetItem(Function):
    @staticmethod
    def forward(ctx, x, index):
        if isinstance(index, tuple):
            index = tuple(i.data if hasattr(i, "requires_grad") else i for i in index)
        elif hasattr(index, "requires_grad"):
            index = index.data
        ctx.x_shape, ctx.dtype, ctx.index = x.shape, x.dtype, index
        try:
            return np.asarray(x[index])
        except IndexError as e:
            raise IndexError(f"getitem: {e} (tensor of shape {x.shape})") from None

    @staticmethod
    def backward(ctx, dy):
        # y = x[index]  =>  dx = zeros with dy scattered back; np.add.at sums repeated indices
        dx = np.zeros(ctx.x_shape, dtype=dy.dtype)
        np.add.at(dx, ctx.index, dy)
        return dx


class Pad(Function):
    @staticmethod
    def forward(ctx, x, pad_width, value=0.0):
        pad_width = np.broadcast_to(np.asarray(pad_width, dtype=int), (x.ndim, 2))
        if (pad_width < 0).any():
            raise ValueError(f"pad: negative padding {pad_width.tolist()} for shape {x.shape}")
        ctx.inner = tuple(slice(b, b + n) for (b, _), n in zip(pad_width, x.shape))
        return np.pad(x, pad_width, mode="constant", constant_values=value)

    @staticmethod
    def backward(ctx, dy):
        # y = x surrounded by constants  =>  dx = the inner part of dy
        return dy[ctx.inner]


class Concat(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        shapes = [a.shape for a in arrays]
        if not -arrays[0].ndim <= axis < arrays[0].ndim:
            raise ValueError(f"concat: axis {axis} is out of range for shapes {shapes}")
        ax = axis % arrays[0].ndim
        first = shapes[0]
        if any(len(s) != len(first) or s[:ax] + s[ax + 1:] != first[:ax] + first[ax + 1:]
               for s in shapes):
            raise ValueError(f"concat: shapes {shapes} differ outside axis {axis}")
        ctx.axis, ctx.sizes = ax, [s[ax] for s in shapes]
        return np.concatenate(arrays, axis=ax)

    @staticmethod
    def backward(ctx, dy):
        # y = [x1 | x2 | ...] along axis  =>  dxk = the k-th block of dy
        return tuple(np.split(dy, np.cumsum(ctx.sizes)[:-1], axis=ctx.axis))


class Stack(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"stack: all inputs need the same shape, got {sorted(shapes)}")
        if not -arrays[0].ndim - 1 <= axis <= arrays[0].ndim:
            raise ValueError(f"stack: axis {axis} is out of range for inputs of shape "
                             f"{arrays[0].shape}")
        ctx.axis = axis % (arrays[0].ndim + 1)
        return np.stack(arrays, axis=ctx.axis)

    @staticmethod
    def backward(ctx, dy):
        # y = stack(x1, x2, ...)  =>  dxk = dy[..., k, ...] along the new axis
        return tuple(np.moveaxis(dy, ctx.axis, 0))


def flatten(x, start_dim: int = 0, end_dim: int = -1):
    """Merge dimensions start_dim..end_dim of x into one (a reshape)."""
    start, end = start_dim % x.ndim, end_dim % x.ndim
    shape = x.shape[:start] + (-1,) + x.shape[end + 1:]
    return Reshape.apply(x, shape=shape)


def concat(tensors, axis: int = 0):
    """Join tensors along an existing axis."""
    return Concat.apply(*tensors, axis=axis)


def stack(tensors, axis: int = 0):
    """Join same-shaped tensors along a new axis."""
    return Stack.apply(*tensors, axis=axis)
