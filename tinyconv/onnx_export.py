"""ONNX export: a tinyconv net as an ONNX graph that ONNX Runtime (and every ONNX tool) can run.

    tc.export_onnx(model, "net.onnx", input_shape=(1, 3, 32, 32))      # needs `pip install onnx`
    # then, anywhere:  onnxruntime.InferenceSession("net.onnx").run(None, {"input": x})

The exporter walks the module tree, as `repr(model)` does, and writes one ONNX node (or a few)
per layer; it does not run the model or trace autograd. What each layer computes is therefore
stated once, here, in the converter for its class: a layer with no converter, or a subclass that
overrides `forward` (its graph could be anything), is refused with its dotted path and class.

The graph is the evaluation form of the net, whatever mode the model is in: batch norm uses its
running statistics, dropout is the identity. Layer by layer:

    Conv2d              Conv (strides, pads, dilations, group)
    BatchNorm2d/1d      BatchNormalization (inference form; affine=False: scale 1, shift 0)
    ReLU, LeakyReLU     Relu, LeakyRelu
    GELU                Gelu from opset 20; before that its formula, 0.5 x (1 + erf(x / sqrt 2))
    MaxPool2d/AvgPool2d MaxPool / AveragePool (zero padding counted in the mean, as torch)
    Adaptive pools      GlobalAveragePool/GlobalMaxPool for output 1x1, a pool when the windows
                        tile the input, else one Slice + pool per window row and column
    Flatten             Flatten (start_dim 1 to the end), else Reshape
    Linear              Gemm (2-D input), else MatMul + Add
    Scale               Mul by a constant          Residual   x + res2(res1(x)): an Add
    Dropout             nothing                    Sequential its children, in order
    AdaptiveConcatPool2d  both adaptive pools and a Concat (fastai's head, nn/head.py)
    ResNet, BasicBlock, Bottleneck (resnets.py), ConvGroup (airbench.py): their forward, spelt
                        out with the converters above

Tensors are float32. The batch dimension is dynamic (named "batch"); the other input dimensions are
fixed by `input_shape`. Weights are initializers named by their state_dict keys ("0.0.weight").
Class names, normalisation statistics and the architecture go into the model's metadata_props
(strings; lists and dicts as JSON), so a deployment knows how to prepare an image.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np

from . import airbench, resnets
from .nn import layers as L
from .nn.head import AdaptiveConcatPool2d, BatchNorm1d
from .nn.layers import _pair
from .nn.module import Module, Sequential
from .ops.pool import _windows
from .serialize import atomic_write, string_metadata

__all__ = ["export_onnx", "OnnxExportError", "MIN_OPSET"]

MIN_OPSET = 13          # Slice, Gemm, BatchNormalization, Reshape as used here exist since then


class OnnxExportError(ValueError):
    """A model that cannot be written as ONNX: a layer without a converter, a bad input shape."""


class _Value(NamedTuple):
    """A tensor of the graph being built: its ONNX name and its shape (shape[0] is the batch)."""
    name: str
    shape: tuple


class _Graph:
    """The nodes and initializers of the graph being built, with unique names for both."""

    def __init__(self, onnx, opset: int):
        self.onnx, self.opset = onnx, opset
        self.nodes, self.initializers, self._arrays = [], [], {}
        self._names = {"input", "output"}        # the graph's own input and output

    def _unique(self, name: str) -> str:
        base, i = name, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def weight(self, name: str, array: np.ndarray) -> str:
        """An initializer holding `array` (float32 unless integer), named `name` if still free;
        the same array twice (tied weights) is stored once."""
        key = id(array)
        if key not in self._arrays:
            values = array if np.issubdtype(array.dtype, np.integer) else \
                array.astype(np.float32, copy=False)
            unique = self._unique(name)
            self.initializers.append(self.onnx.numpy_helper.from_array(values, unique))
            self._arrays[key] = (unique, array)       # keep `array` alive: its id stays its own
        return self._arrays[key][0]

    def const(self, name: str, values, dtype=np.int64) -> str:
        """An initializer for a constant the graph needs (axes, shapes, a scale factor)."""
        return self.weight(name, np.asarray(values, dtype=dtype))

    def node(self, op: str, inputs: list, name: str, **attrs) -> str:
        """Append one node computing `op(*inputs)`; returns the name of its output."""
        name = self._unique(name)
        out = self._unique(f"{name}:out")
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=name, **attrs))
        return out


def _fail(path: str, module: Module, why: str):
    raise OnnxExportError(f"export_onnx: layer {path or '(the model)'} "
                          f"({type(module).__name__}): {why}")


def _check_rank(path, module, x: _Value, rank: int) -> None:
    if len(x.shape) != rank:
        _fail(path, module, f"expected a {rank}-D input, got shape {_shape_str(x.shape)}")


def _shape_str(shape) -> str:
    return "(batch, " + ", ".join(str(d) for d in shape[1:]) + ")"


def _out_size(path, module, size: int, k: int, s: int, p: int, d: int = 1) -> int:
    out = (size + 2 * p - d * (k - 1) - 1) // s + 1
    if out < 1:
        _fail(path, module, f"its window (kernel {k}, dilation {d}, padding {p}) does not fit "
                            f"an input of size {size}")
    return out


# ---- converters: one per layer class, (graph, module, dotted path, input) -> output -----------

def _conv2d(g: _Graph, m: L.Conv2d, path: str, x: _Value) -> _Value:
    _check_rank(path, m, x, 4)
    if x.shape[1] != m.in_channels:
        _fail(path, m, f"expects {m.in_channels} input channels, gets {_shape_str(x.shape)}")
    inputs = [x.name, g.weight(f"{path}.weight", m.weight.data)]
    if m.bias is not None:
        inputs.append(g.weight(f"{path}.bias", m.bias.data))
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = m.kernel_size, m.stride, m.padding, m.dilation
    out = g.node("Conv", inputs, path, kernel_shape=[kh, kw], strides=[sh, sw],
                 pads=[ph, pw, ph, pw], dilations=[dh, dw], group=m.groups)
    oh = _out_size(path, m, x.shape[2], kh, sh, ph, dh)
    ow = _out_size(path, m, x.shape[3], kw, sw, pw, dw)
    return _Value(out, (x.shape[0], m.out_channels, oh, ow))


def _batch_norm(g: _Graph, m: L.BatchNorm2d, path: str, x: _Value) -> _Value:
    """BatchNorm2d (N, C, H, W) and BatchNorm1d (N, C) or (N, C, L): one ONNX op for all."""
    if isinstance(m, BatchNorm1d):
        if len(x.shape) not in (2, 3):
            _fail(path, m, f"expected a 2-D or 3-D input, got shape {_shape_str(x.shape)}")
    else:
        _check_rank(path, m, x, 4)
    if x.shape[1] != m.num_features:
        _fail(path, m, f"normalises {m.num_features} channels, gets {_shape_str(x.shape)}")
    if m.weight is not None:
        scale, shift = g.weight(f"{path}.weight", m.weight.data), \
            g.weight(f"{path}.bias", m.bias.data)
    else:                                     # affine=False: what torch computes, scale 1, shift 0
        scale = g.const(f"{path}.ones", np.ones(m.num_features), np.float32)
        shift = g.const(f"{path}.zeros", np.zeros(m.num_features), np.float32)
    inputs = [x.name, scale, shift, g.weight(f"{path}.running_mean", m.running_mean.data),
              g.weight(f"{path}.running_var", m.running_var.data)]
    return _Value(g.node("BatchNormalization", inputs, path, epsilon=float(m.eps)), x.shape)


def _relu(g, m, path, x):
    return _Value(g.node("Relu", [x.name], path), x.shape)


def _leaky_relu(g, m, path, x):
    return _Value(g.node("LeakyRelu", [x.name], path, alpha=float(m.negative_slope)), x.shape)


def _gelu(g: _Graph, m: Module, path: str, x: _Value) -> _Value:
    approximate = getattr(m, "approximate", "none")
    if g.opset >= 20:
        return _Value(g.node("Gelu", [x.name], path, approximate=approximate), x.shape)
    half = g.const(f"{path}.half", 0.5, np.float32)
    one = g.const(f"{path}.one", 1.0, np.float32)
    if approximate == "none":                 # 0.5 x (1 + erf(x / sqrt 2)), torch's default
        inner = g.node("Div", [x.name, g.const(f"{path}.sqrt2", math.sqrt(2), np.float32)],
                       f"{path}.div")
        inner = g.node("Erf", [inner], f"{path}.erf")
    elif approximate == "tanh":               # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = g.node("Pow", [x.name, g.const(f"{path}.three", 3.0, np.float32)], f"{path}.cube")
        cube = g.node("Mul", [cube, g.const(f"{path}.c", 0.044715, np.float32)], f"{path}.mul_c")
        inner = g.node("Add", [x.name, cube], f"{path}.add_cube")
        inner = g.node("Mul", [inner, g.const(f"{path}.k", math.sqrt(2 / math.pi), np.float32)],
                       f"{path}.mul_k")
        inner = g.node("Tanh", [inner], f"{path}.tanh")
    else:
        _fail(path, m, f"unknown approximate={approximate!r} (expected 'none' or 'tanh')")
    inner = g.node("Add", [inner, one], f"{path}.add_one")
    half_x = g.node("Mul", [x.name, half], f"{path}.half_x")
    return _Value(g.node("Mul", [half_x, inner], path), x.shape)


def _pool(g: _Graph, m: L.MaxPool2d, path: str, x: _Value) -> _Value:
    _check_rank(path, m, x, 4)
    (kh, kw) = _pair(m.kernel_size, f"{path} kernel_size")
    (sh, sw) = _pair(m.stride if m.stride is not None else m.kernel_size, f"{path} stride")
    (ph, pw) = _pair(m.padding, f"{path} padding")
    attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw])
    if isinstance(m, L.AvgPool2d):
        out = g.node("AveragePool", [x.name], path, count_include_pad=1, **attrs)
    else:
        out = g.node("MaxPool", [x.name], path, **attrs)
    oh = _out_size(path, m, x.shape[2], kh, sh, ph)
    ow = _out_size(path, m, x.shape[3], kw, sw, pw)
    return _Value(out, x.shape[:2] + (oh, ow))


def _adaptive_pool(g: _Graph, m: L.AdaptiveAvgPool2d, path: str, x: _Value) -> _Value:
    return _adaptive(g, m, path, x, mean=not isinstance(m, L.AdaptiveMaxPool2d))


def _concat_pool(g: _Graph, m: Module, path: str, x: _Value) -> _Value:
    """fastai's AdaptiveConcatPool2d: [max pool, average pool] joined along the channels."""
    a = _adaptive(g, m, f"{path}.max", x, mean=False)
    b = _adaptive(g, m, f"{path}.avg", x, mean=True)
    return _Value(g.node("Concat", [a.name, b.name], path, axis=1),
                  (x.shape[0], 2 * x.shape[1]) + a.shape[2:])


def _adaptive(g: _Graph, m: Module, path: str, x: _Value, mean: bool) -> _Value:
    """Adaptive mean (or max) pooling of `x` to `m.output_size`."""
    _check_rank(path, m, x, 4)
    items = m.output_size if isinstance(m.output_size, (tuple, list)) else (m.output_size,) * 2
    size = tuple(x.shape[2 + i] if s is None else int(s) for i, s in enumerate(items))
    pool = "AveragePool" if mean else "MaxPool"
    H, W = x.shape[2:]
    out_shape = x.shape[:2] + size
    if size == (1, 1):
        return _Value(g.node("GlobalAveragePool" if mean else "GlobalMaxPool", [x.name], path),
                      out_shape)
    if H % size[0] == 0 and W % size[1] == 0:   # the windows tile the input: one plain pool
        k = [H // size[0], W // size[1]]
        return _Value(g.node(pool, [x.name], path, kernel_shape=k, strides=k), out_shape)
    # Uneven windows (torch's rule, ops/pool.py): a window is a block of rows times a block of
    # columns, and both mean and max reduce separably, so pool each row block to one row, then
    # each column block to one column. Averaging the row means of a block is the block's mean
    # because every row of it has the same number of columns.
    name = x.name
    for axis, n_out, n_in in ((2, size[0], H), (3, size[1], W)):
        parts = []
        for i, (start, end) in enumerate(_windows(n_in, n_out)):
            piece = g.node("Slice", [name, g.const(f"{path}.start", [start]),
                                     g.const(f"{path}.end", [end]),
                                     g.const(f"{path}.axis", [axis])], f"{path}.slice{axis}_{i}")
            kernel = [end - start, 1] if axis == 2 else [1, end - start]
            parts.append(g.node(pool, [piece], f"{path}.pool{axis}_{i}", kernel_shape=kernel))
        name = g.node("Concat", parts, f"{path}.concat{axis}", axis=axis)
    return _Value(name, out_shape)


def _flatten(g: _Graph, m: L.Flatten, path: str, x: _Value) -> _Value:
    rank = len(x.shape)
    start, end = m.start_dim % rank, m.end_dim % rank
    if start == 0:
        _fail(path, m, "start_dim 0 merges the batch dimension, which the file keeps dynamic")
    shape = x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:]
    if start == 1 and end == rank - 1:
        return _Value(g.node("Flatten", [x.name], path, axis=1), shape)
    # 0 copies the (dynamic) batch dimension from the input; the others are fixed
    target = [0] + list(shape[1:])
    return _Value(g.node("Reshape", [x.name, g.const(f"{path}.shape", target)], path), shape)


def _linear(g: _Graph, m: L.Linear, path: str, x: _Value) -> _Value:
    if x.shape[-1] != m.in_features:
        _fail(path, m, f"expects {m.in_features} input features, gets {_shape_str(x.shape)}")
    weight = g.weight(f"{path}.weight", m.weight.data)          # (out, in), as torch
    shape = x.shape[:-1] + (m.out_features,)
    if len(x.shape) == 2:
        bias = [] if m.bias is None else [g.weight(f"{path}.bias", m.bias.data)]
        inputs = [x.name, weight] + bias
        return _Value(g.node("Gemm", inputs, path, transB=1), shape)
    out = g.node("MatMul", [x.name, g.node("Transpose", [weight], f"{path}.weight_t")],
                 f"{path}.matmul")
    if m.bias is not None:
        out = g.node("Add", [out, g.weight(f"{path}.bias", m.bias.data)], path)
    return _Value(out, shape)


def _scale(g, m: L.Scale, path, x):
    factor = g.const(f"{path}.factor", m.factor, np.float32)
    return _Value(g.node("Mul", [x.name, factor], path), x.shape)


def _identity(g, m, path, x):
    return x


def _sequential(g: _Graph, m: Sequential, path: str, x: _Value) -> _Value:
    for name, child in m.named_children():
        x = _convert(g, child, f"{path}.{name}" if path else name, x)
    return x


def _chain(g: _Graph, m: Module, path: str, x: _Value, *names: str) -> _Value:
    """The children of `m` called `names`, applied one after the other."""
    for name in names:
        x = _convert(g, getattr(m, name), f"{path}.{name}" if path else name, x)
    return x


def _add(g: _Graph, m: Module, path: str, x: _Value, y: _Value) -> _Value:
    """x + y, for the skip connections (the shapes must agree: no broadcasting)."""
    if y.shape[1:] != x.shape[1:]:
        _fail(path, m, f"cannot add {_shape_str(x.shape)} and {_shape_str(y.shape)}")
    return _Value(g.node("Add", [x.name, y.name], f"{path}.add" if path else "add"), x.shape)


def _residual(g: _Graph, m: L.Residual, path: str, x: _Value) -> _Value:
    return _add(g, m, path, x, _chain(g, m, path, x, "res1", "res2"))


# torchvision's ResNets (resnets.py): each converter is its class's forward, written as a graph
def _resnet_block(g: _Graph, m: Module, path: str, x: _Value) -> _Value:
    """BasicBlock and Bottleneck: relu(bn_last(conv_last(...)) + shortcut(x))."""
    shortcut = x if m.downsample is None else \
        _convert(g, m.downsample, f"{path}.downsample", x)
    names = ["conv1", "bn1", "relu", "conv2", "bn2"]
    if isinstance(m, resnets.Bottleneck):
        names += ["relu", "conv3", "bn3"]
    out = _add(g, m, path, _chain(g, m, path, x, *names), shortcut)
    return _convert(g, m.relu, f"{path}.relu", out)


def _resnet(g: _Graph, m: Module, path: str, x: _Value) -> _Value:
    if len(x.shape) != 4 or x.shape[1] != 3 or min(x.shape[2:]) < resnets.MIN_SIZE:
        _fail(path, m, f"expects images (batch, 3, H, W) with H, W >= {resnets.MIN_SIZE}, "
                       f"got {_shape_str(x.shape)}")
    return _chain(g, m, path, x, "conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                  "layer3", "layer4", "avgpool", "flatten", "fc")


def _conv_group(g: _Graph, m: Module, path: str, x: _Value) -> _Value:
    """airbench's ConvGroup: conv1 -> pool -> norm1 -> activ -> conv2 -> norm2 -> activ."""
    return _chain(g, m, path, x, "conv1", "pool", "norm1", "activ", "conv2", "norm2", "activ")


CONVERTERS = {L.Conv2d: _conv2d, L.BatchNorm2d: _batch_norm, L.ReLU: _relu, L.GELU: _gelu,
              L.MaxPool2d: _pool, L.AvgPool2d: _pool, L.AdaptiveAvgPool2d: _adaptive_pool,
              L.AdaptiveMaxPool2d: _adaptive_pool, L.Flatten: _flatten, L.Linear: _linear,
              L.Scale: _scale, L.Dropout: _identity, L.Residual: _residual,
              Sequential: _sequential, resnets.BasicBlock: _resnet_block,
              resnets.Bottleneck: _resnet_block, resnets.ResNet: _resnet,
              BatchNorm1d: _batch_norm, AdaptiveConcatPool2d: _concat_pool,
              airbench.ConvGroup: _conv_group}
# layers torch has and nn may gain (F.leaky_relu exists; exported as soon as the modules do)
for _name, _converter in (("LeakyReLU", _leaky_relu), ("Identity", _identity)):
    if hasattr(L, _name):
        CONVERTERS[getattr(L, _name)] = _converter


def _convert(g: _Graph, module: Module, path: str, x: _Value) -> _Value:
    """The converter of `module`'s class (or of the nearest base class with one), applied."""
    for cls in type(module).__mro__:
        if cls in CONVERTERS:
            break
    else:
        _fail(path, module, f"no ONNX converter for this layer; exportable layers: "
                            f"{', '.join(sorted(c.__name__ for c in CONVERTERS))}")
    if type(module).forward is not cls.forward:
        _fail(path, module, f"it overrides the forward() of {cls.__name__}, so its graph is "
                            f"not {cls.__name__}'s; add a converter for it to CONVERTERS")
    return CONVERTERS[cls](g, module, path, x)


# ---- the model file ------------------------------------------------------------------------------

def _input_shape(model: Module, input_shape) -> tuple:
    if input_shape is None:
        hwc = getattr(model, "meta", {}).get("image_shape")
        if hwc is None:
            raise OnnxExportError("export_onnx: pass input_shape=(1, C, H, W); the model has no "
                                  "image_shape in its metadata to take it from")
        return (1, int(hwc[2]), int(hwc[0]), int(hwc[1]))
    shape = tuple(input_shape)
    if len(shape) < 2 or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in shape):
        raise OnnxExportError(f"export_onnx: input_shape must be positive ints (batch, C, H, W), "
                              f"got {input_shape!r}")
    return tuple(int(d) for d in shape)


def export_onnx(model: Module, path, input_shape=None, opset: int = 17, *, classes=None,
                mean=None, std=None, metadata: dict | None = None) -> str:
    """Write `model` (its evaluation form) as an ONNX file at `path`, atomically; returns the path.

    input_shape: (batch, C, H, W) of one input (the batch is dynamic in the file); None takes
    (1, C, H, W) from `model.meta["image_shape"]` (a model from tc.load). opset: the ONNX opset,
    13 and up (GELU is one node from 20). classes, mean, std, metadata: stored as metadata_props,
    over what `model.meta` has. The graph's input is "input", its output "output".
    Raises OnnxExportError naming a layer that cannot be exported, ImportError without `onnx`.
    """
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401  (a submodule: imported for g.weight)
    except ImportError:
        raise ImportError("export_onnx needs the onnx package: pip install 'tinyconv[onnx]' "
                          "(or pip install onnx)") from None
    if not isinstance(model, Module):
        raise TypeError(f"export_onnx: expected a Module, got {type(model).__name__}")
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise OnnxExportError(f"export_onnx: opset must be an int from {MIN_OPSET} to "
                              f"{onnx.defs.onnx_opset_version()} (this onnx), got {opset!r}")
    shape = _input_shape(model, input_shape)
    g = _Graph(onnx, opset)
    out = _convert(g, model, "", _Value("input", shape))
    if out.name == "input":            # a net of identities: the graph still needs one node
        out = _Value(g.node("Identity", ["input"], "identity"), out.shape)
    # the last node's output becomes "output" (here, so that no converter has to know it is last)
    for node in g.nodes:
        node.output[:] = ["output" if o == out.name else o for o in node.output]
    helper, f32 = onnx.helper, onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes, type(model).__name__,
        [helper.make_tensor_value_info("input", f32, ["batch", *shape[1:]])],
        [helper.make_tensor_value_info("output", f32, ["batch", *out.shape[1:]])],
        initializer=g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    from . import __version__
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="tinyconv",
                              producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets),
                              doc_string=f"tinyconv {type(model).__name__}, evaluation form")
    helper.set_model_props(proto, string_metadata(model, {
        "classes": classes, "mean": mean, "std": std, **(metadata or {}),
        "input": "float32 (batch, C, H, W): pixels / 255, minus mean, divided by std"}))
    if proto.ByteSize() >= 2 ** 31:
        raise OnnxExportError(f"export_onnx: the model is {proto.ByteSize() / 2**30:.1f} GB; "
                              f"ONNX files over 2 GB need external data, not written here")
    try:                              # full_check: the schema of every node, and shape inference
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        # a bug here, not the user's: say so
        raise OnnxExportError(f"export_onnx: the graph built for {type(model).__name__} fails "
                              f"onnx.checker (a tinyconv bug, please report): {e}") from None
    atomic_write(path, lambda f: f.write(proto.SerializeToString()))
    return os.fspath(path)
