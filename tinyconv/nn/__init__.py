"""Neural-network building blocks: Module, Parameter, Buffer, Sequential, layers, init, functional.

    from tinyconv import nn
    from tinyconv.nn import functional as F
"""
from . import functional, init
from . import functional as F
from .layers import (AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, BatchNorm2d, Conv2d,
                     Dropout, Flatten, GELU, Linear, MaxPool2d, ReLU, Residual, Scale, conv_bn)
from .head import AdaptiveConcatPool2d, BatchNorm1d, create_head
from .module import Buffer, Module, Parameter, Sequential, StateDictError

__all__ = ["Module", "Parameter", "Buffer", "Sequential", "StateDictError", "Conv2d", "Linear",
           "BatchNorm2d", "ReLU", "GELU", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
           "AdaptiveMaxPool2d", "Flatten", "Scale", "Dropout", "Residual", "conv_bn", "functional",
           "F", "init", "BatchNorm1d", "AdaptiveConcatPool2d", "create_head"]
