"""tinyconv: a from-scratch CNN framework in NumPy + Numba that you can read end to end."""
# autograd first: it defines Function, then imports Tensor, whose methods import the ops.
from .autograd import Function, enable_grad, is_grad_enabled, no_grad
from .tensor import Tensor

__version__ = "0.1.0"

__all__ = ["Function", "Tensor", "no_grad", "enable_grad", "is_grad_enabled", "__version__"]
