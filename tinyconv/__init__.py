"""tinyconv: a from-scratch CNN framework in NumPy + Numba that you can read end to end.

    import tinyconv as tc
    from tinyconv import nn
    from tinyconv.nn import functional as F
"""
# _threads first: it configures OpenBLAS, which reads its settings when NumPy is first imported.
from . import _threads  # noqa: F401  (imported for its side effect)
from . import _memory  # noqa: F401  (imported for its side effect: freed arrays are reused)

from .autograd import enable_grad, is_grad_enabled, no_grad
from .tensor import Function, Tensor

from . import callbacks, data, interpret, metrics, models, nn, optim, sched  # noqa: E402
from . import recipes  # noqa: E402
from .interpret import ClassificationInterpretation  # noqa: E402
from .learner import Learner  # noqa: E402
from .serialize import load, save  # noqa: E402
from .onnx_export import export_onnx  # noqa: E402  (onnx itself is imported when called)
from .safetensors_export import save_safetensors  # noqa: E402
from .pt_export import save_pt  # noqa: E402
from .torch_weights import load_state_dict_file  # noqa: E402
from .vision_learner import vision_learner  # noqa: E402

__version__ = "0.1.0"

# tinyconv.plot, tinyconv.augment and tinyconv.cli are imported where used (plot loads matplotlib).
__all__ = ["Function", "Tensor", "no_grad", "enable_grad", "is_grad_enabled", "nn", "models",
           "optim", "sched", "data", "callbacks", "metrics", "interpret", "recipes", "Learner",
           "ClassificationInterpretation", "save", "load", "load_state_dict_file", "vision_learner",
           "export_onnx", "save_safetensors", "save_pt", "__version__"]
