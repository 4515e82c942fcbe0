"""Softmax, log-softmax and the losses: cross-entropy, negative log-likelihood, mean squared error.

Stability: softmax subtracts the row maximum before exp, so logits of 1e4 do not overflow.
"""
import numpy as np

from ..tensor import Function

__all__ = ["Softmax", "LogSoftmax", "CrossEntropy", "NLLLoss", "MSELoss"]

_REDUCTIONS = ("mean", "sum", "none")


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _check_targets(op: str, scores: np.ndarray, target: np.ndarray, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if scores.ndim != 2:
        raise ValueError(f"{op}: expected scores of shape (N, classes), got {scores.shape}")
    if target.shape != (scores.shape[0],) or not np.issubdtype(target.dtype, np.integer):
        raise ValueError(f"{op}: expected integer class targets of shape ({scores.shape[0]},), "
                         f"got {target.dtype} {target.shape}")
    if len(target) and (target.min() < 0 or target.max() >= scores.shape[1]):
        raise ValueError(f"{op}: targets must lie in [0, {scores.shape[1]}), got values from "
                         f"{target.min()} to {target.max()}")


def _reduce(losses: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "mean":
        return np.asarray(losses.mean())
    if reduction == "sum":
        return np.asarray(losses.sum())
    return losses


def _reduce_backward(dy: np.ndarray, n: int, reduction: str) -> np.ndarray:
    """The upstream gradient per sample, shape (N, 1)."""
    if reduction == "mean":
        return np.full((n, 1), dy / n, dtype=dy.dtype)
    if reduction == "sum":
        return np.full((n, 1), dy, dtype=dy.dtype)
    return dy[:, None]


class Softmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        ctx.y, ctx.axis = e / e.sum(axis=axis, keepdims=True), axis
        return ctx.y

    @staticmethod
    def backward(ctx, dy):
        # y = softmax(x)  =>  dx = y * (dy - sum(dy * y))
        y = ctx.y
        return y * (dy - (dy * y).sum(axis=ctx.axis, keepdims=True))


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        y = _log_softmax(x, axis)
        ctx.y, ctx.axis = y, axis
        return y

    @staticmethod
    def backward(ctx, dy):
        # y = x - logsumexp(x)  =>  dx = dy - softmax(x) * sum(dy)
        return dy - np.exp(ctx.y) * dy.sum(axis=ctx.axis, keepdims=True)


class CrossEntropy(Function):
    """Softmax + negative log-likelihood in one op: the gradient is simply softmax - onehot."""

    @staticmethod
    def forward(ctx, logits, target, reduction="mean", label_smoothing=0.0):
        _check_targets("cross_entropy", logits, target, reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], "
                             f"got {label_smoothing}")
        N, K = logits.shape
        log_p = _log_softmax(logits, axis=1)
        # smoothed target distribution: (1 - eps) on the class, eps / K spread over all classes
        q = np.full((N, K), label_smoothing / K, dtype=logits.dtype)
        q[np.arange(N), target] += logits.dtype.type(1 - label_smoothing)
        ctx.log_p, ctx.q, ctx.reduction = log_p, q, reduction
        return _reduce(-(q * log_p).sum(axis=1), reduction)

    @staticmethod
    def backward(ctx, dy):
        # loss_n = -sum_k q_nk log softmax(x_n)_k  =>  dx_n = (softmax(x_n) - q_n) * dy_n
        per_sample = _reduce_backward(dy, len(ctx.q), ctx.reduction)
        return (np.exp(ctx.log_p) - ctx.q) * per_sample, None


class NLLLoss(Function):
    @staticmethod
    def forward(ctx, log_probs, target, reduction="mean"):
        _check_targets("nll_loss", log_probs, target, reduction)
        ctx.shape, ctx.target, ctx.reduction = log_probs.shape, target, reduction
        return _reduce(-log_probs[np.arange(len(target)), target], reduction)

    @staticmethod
    def backward(ctx, dy):
        # loss_n = -log_probs[n, t_n]  =>  dlog_probs[n, t_n] = -dy_n, 0 elsewhere
        N = ctx.shape[0]
        dx = np.zeros(ctx.shape, dtype=dy.dtype)
        dx[np.arange(N), ctx.target] = -_reduce_backward(dy, N, ctx.reduction)[:, 0]
        return dx, None


class MSELoss(Function):
    @staticmethod
    def forward(ctx, x, target, reduction="mean"):
        if reduction not in _REDUCTIONS:
            raise ValueError(f"mse_loss: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if x.shape != target.shape:
            raise ValueError(f"mse_loss: input {x.shape} and target {target.shape} differ")
        ctx.diff, ctx.reduction = x - target, reduction
        losses = ctx.diff ** 2
        return _reduce(losses, reduction) if reduction != "none" else losses

    @staticmethod
    def backward(ctx, dy):
        # loss = mean((x - t)^2)  =>  dx = 2 (x - t) dy / n,  dt = -dx
        scale = 2 / ctx.diff.size if ctx.reduction == "mean" else 2
        dx = ctx.diff * (dy * ctx.diff.dtype.type(scale))
        return dx, -dx
