"""Batch normalisation and dropout.

Batch norm (Ioffe & Szegedy 2015), per channel c over the M = N*H*W values it has in a batch:

    training:  mean, var = batch mean, biased batch variance (divide by M)
               y = (x - mean) / sqrt(var + eps) * weight + bias
               running_mean = (1 - momentum) * running_mean + momentum * mean
               running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)
    eval:      the same y with the running statistics instead of the batch ones.

PyTorch's conventions exactly: momentum weighs the NEW value, and the running variance is the
unbiased one while normalisation uses the biased one.

Ghost batch norm (Hoffer et al. 2017; Page's fast CIFAR-10 ResNet): with ghost_batch_size=g, a
training batch is cut into consecutive chunks of g samples and each chunk is normalised with its
own statistics, as if it were a batch of its own. The noisier statistics regularise. The running
statistics move towards the chunks' average mean and average (unbiased) variance.

Dropout: zero each element with probability p, scale the survivors by 1/(1 - p) so the expected
value is unchanged; identity when not training. The mask comes from a np.random.Generator.
"""
import numpy as np

from .. import kernels
from ..tensor import Function, Tensor

__all__ = ["BatchNorm", "Dropout", "batch_norm", "dropout"]


def _stats_array(value, name: str, C: int, dtype):
    """A running statistic as the ndarray to update in place (a Buffer or Tensor gives its data)."""
    if value is None:
        return None
    array = value.data if isinstance(value, Tensor) else value
    if not isinstance(array, np.ndarray):
        raise TypeError(f"batch_norm: {name} must be an ndarray (updated in place), got "
                        f"{type(value).__name__}")
    if array.shape != (C,):
        raise ValueError(f"batch_norm: {name} has shape {array.shape}, expected ({C},)")
    return array


def _chunks(N: int, ghost_batch_size):
    """Slices cutting a batch of N into consecutive chunks of ghost_batch_size (one: the batch)."""
    g = N if ghost_batch_size is None else ghost_batch_size
    return [slice(i, min(i + g, N)) for i in range(0, N, g)]


def _join(parts):
    """The chunks' results as one batch (no copy when there is one chunk, the usual case)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class BatchNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean=None, running_var=None, training=False,
                momentum=0.1, eps=1e-5, ghost_batch_size=None):
        if x.ndim < 2:
            raise ValueError(f"batch_norm: expected an input (N, C, ...), got shape {x.shape}")
        N, C = x.shape[:2]
        for name, p in (("weight", weight), ("bias", bias)):
            if p.shape != (C,):
                raise ValueError(f"batch_norm: {name} has shape {p.shape}, expected ({C},) for "
                                 f"input {x.shape}")
        x4 = x.reshape(N, C, -1, 1)                 # (N, C), (N, C, L), (N, C, H, W) alike
        ops = kernels.backend()
        if training:
            chunks = _chunks(N, ghost_batch_size)
            outputs, means, variances = [], [], []
            batch_mean = batch_var = 0.0     # chunk averages weighted by size: running stats
            for chunk in chunks:
                M = x4[chunk].size // C
                if M < 2:
                    raise ValueError(f"batch_norm: training needs more than one value per "
                                     f"channel, got input {x.shape} (ghost_batch_size="
                                     f"{ghost_batch_size})")
                y, mean, var = ops.batch_norm_train(x4[chunk], weight, bias, eps)
                outputs.append(y)
                means.append(mean)
                variances.append(var)
                share = M * C / x4.size
                batch_mean = batch_mean + share * mean
                batch_var = batch_var + share * var * (M / (M - 1))    # unbiased, as PyTorch
            y = _join(outputs)
            if running_mean is not None:
                running_mean *= 1 - momentum
                running_mean += momentum * batch_mean
            if running_var is not None:
                running_var *= 1 - momentum
                running_var += momentum * batch_var
        else:
            if running_mean is None or running_var is None:
                raise ValueError("batch_norm: evaluation (training=False) needs running_mean "
                                 "and running_var")
            # copies: the running statistics may move (in place) before backward runs
            mean, var = running_mean.copy(), running_var.copy()
            y = ops.batch_norm_eval(x4, weight, bias, mean, var, eps)
            chunks, means, variances = [slice(0, N)], [mean], [var]
        ctx.x, ctx.weight, ctx.eps, ctx.training, ctx.x_shape = x4, weight, eps, training, x.shape
        ctx.chunks, ctx.means, ctx.vars = chunks, means, variances
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        # xhat = (x - mean) * invstd, y = weight * xhat + bias  =>  dbias = sum dy,
        # dweight = sum dy*xhat, dx = weight*invstd/M * (M*dy - dbias - xhat*dweight) in training
        # (the batch statistics depend on x), weight*invstd*dy in eval. Ghost chunks are
        # independent batch norms sharing weight and bias: their dweight and dbias add up.
        need = ctx.needs_input_grad
        dy = dy.reshape(ctx.x.shape)
        dxs, dweight, dbias = [], 0, 0
        for chunk, mean, var in zip(ctx.chunks, ctx.means, ctx.vars):
            dx, dw, db = kernels.backend().batch_norm_backward(
                dy[chunk], ctx.x[chunk], ctx.weight, mean, var, ctx.eps, ctx.training)
            dxs.append(dx)
            dweight, dbias = dweight + dw, dbias + db
        dx = _join(dxs)
        return (dx.reshape(ctx.x_shape) if need[0] else None, dweight if need[1] else None,
                dbias if need[2] else None)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, ghost_batch_size=None):
    """Batch normalisation, as torch.nn.functional.batch_norm, plus ghost batches.

    x (N, C, ...) -> like x. running_mean, running_var: (C,) arrays (or None when training),
    updated in place when training. weight, bias: (C,) Tensors, or None for 1 and 0.
    ghost_batch_size: when training, normalise each consecutive chunk of that many samples with
    its own statistics (None: the whole batch at once).
    """
    data = x.data if isinstance(x, Tensor) else np.asarray(x)
    if data.ndim < 2:
        raise ValueError(f"batch_norm: expected an input (N, C, ...), got shape {data.shape}")
    if momentum is None or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"batch_norm: momentum must be in [0, 1], got {momentum!r}")
    if ghost_batch_size is not None and (int(ghost_batch_size) != ghost_batch_size
                                         or ghost_batch_size < 1):
        raise ValueError(f"batch_norm: ghost_batch_size must be a positive integer or None, "
                         f"got {ghost_batch_size!r}")
    C = data.shape[1]
    running_mean = _stats_array(running_mean, "running_mean", C, data.dtype)
    running_var = _stats_array(running_var, "running_var", C, data.dtype)
    weight = np.ones(C, dtype=data.dtype) if weight is None else weight
    bias = np.zeros(C, dtype=data.dtype) if bias is None else bias
    ghost = None if ghost_batch_size is None else int(ghost_batch_size)
    return BatchNorm.apply(x, weight, bias, running_mean=running_mean, running_var=running_var,
                           training=bool(training), momentum=float(momentum), eps=float(eps),
                           ghost_batch_size=ghost)


class Dropout(Function):
    @staticmethod
    def forward(ctx, x, p=0.5, training=True, rng=None):
        if not training or p == 0.0:
            ctx.mask = None
            return x
        if p == 1.0:
            ctx.mask = np.zeros_like(x)
        else:
            keep = rng.random(x.shape, dtype=x.dtype if x.dtype == np.float32 else np.float64)
            ctx.mask = (keep >= p).astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))
        return x * ctx.mask

    @staticmethod
    def backward(ctx, dy):
        # y = x * mask  =>  dx = dy * mask  (mask = kept / (1 - p))
        return dy if ctx.mask is None else dy * ctx.mask


def dropout(x, p=0.5, training=True, rng=None):
    """Zero each element with probability p and scale the rest by 1/(1-p), as
    torch.nn.functional.dropout; identity when not training. x (...) -> like x.

    rng: a np.random.Generator for the mask (None: a fresh, unseeded one).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if rng is None:
        rng = np.random.default_rng()
    elif not isinstance(rng, np.random.Generator):
        raise TypeError(f"dropout: rng must be a np.random.Generator, got {type(rng).__name__}")
    return Dropout.apply(x, p=float(p), training=bool(training), rng=rng)
