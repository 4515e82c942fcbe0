"""The functional API, PyTorch's names and semantics: `from tinyconv.nn import functional as F`.

Each function is a thin, documented entry to one op in tinyconv/ops/.
"""
import numpy as np

from ..ops import elementwise
from ..ops import loss
from ..ops import matmul
# convolution, pooling, batch norm and dropout are documented where they are defined
from ..ops.conv import conv2d
from ..ops.norm import batch_norm, dropout
from ..ops.pool import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d
from ..tensor import Tensor

__all__ = ["linear", "relu", "leaky_relu", "gelu", "sigmoid", "tanh", "softmax", "log_softmax",
           "cross_entropy", "nll_loss", "mse_loss", "conv2d", "max_pool2d", "avg_pool2d",
           "adaptive_avg_pool2d", "adaptive_max_pool2d", "batch_norm", "dropout"]


def linear(x, weight, bias=None):
    """x (*, in) @ weight (out, in).T + bias (out,) -> (*, out), as torch.nn.functional.linear.

    The op multiplies a batch (N, in); any other input shape is flattened to one and back.
    """
    params = (weight,) if bias is None else (weight, bias)
    if x.ndim == 2:
        return matmul.Linear.apply(x, *params)
    if x.ndim == 0 or weight.ndim != 2:
        raise ValueError(f"linear: expected x (*, in_features) and weight (out_features, "
                         f"in_features), got {x.shape} and {weight.shape}")
    y = matmul.Linear.apply(x.reshape(-1, x.shape[-1]), *params)        # (prod(*), out)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def relu(x):
    """max(x, 0), elementwise."""
    return elementwise.ReLU.apply(x)


def leaky_relu(x, negative_slope: float = 0.01):
    """x if x > 0 else negative_slope * x."""
    return elementwise.LeakyReLU.apply(x, negative_slope=negative_slope)


def gelu(x, approximate: str = "none"):
    """x * Phi(x), Phi the standard normal CDF, as torch.nn.functional.gelu. x (...) -> like x.

    approximate="none": the exact form 0.5 x (1 + erf(x / sqrt 2)); "tanh": torch's
    approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    """
    return elementwise.GELU.apply(x, approximate=approximate)


def sigmoid(x):
    """1 / (1 + e^-x)."""
    return elementwise.Sigmoid.apply(x)


def tanh(x):
    """Hyperbolic tangent."""
    return elementwise.Tanh.apply(x)


def softmax(x, dim: int = -1):
    """exp(x) / sum(exp(x)) along `dim`."""
    return loss.Softmax.apply(x, axis=dim)


def log_softmax(x, dim: int = -1):
    """log(softmax(x)) along `dim`, computed stably."""
    return loss.LogSoftmax.apply(x, axis=dim)


def cross_entropy(logits, target, reduction: str = "mean", label_smoothing: float = 0.0):
    """logits (N, K), integer targets (N,) -> mean/sum loss () or per-sample losses (N,)."""
    return loss.CrossEntropy.apply(logits, _targets(target), reduction=reduction,
                                 label_smoothing=label_smoothing)


def nll_loss(log_probs, target, reduction: str = "mean"):
    """Negative log-likelihood of integer targets (N,) under log_probs (N, K)."""
    return loss.NLLLoss.apply(log_probs, _targets(target), reduction=reduction)


def mse_loss(x, target, reduction: str = "mean"):
    """Mean (or sum, or per-element) of (x - target)^2."""
    return loss.MSELoss.apply(x, target, reduction=reduction)


def _targets(target):
    """Class indices as an integer array (a Tensor, list or array is accepted).

    No cast here: float targets must reach the op's check, not be silently truncated to ints.
    """
    return np.asarray(target.data if isinstance(target, Tensor) else target)
