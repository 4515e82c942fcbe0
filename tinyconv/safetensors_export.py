"""safetensors export: a model's state_dict in the file format PyTorch and Hugging Face load.

    tc.save_safetensors(model, "net.safetensors")
    # in PyTorch:  net.load_state_dict(safetensors.torch.load_file("net.safetensors"))

The state_dict keys are already PyTorch's ("0.0.weight", "3.res1.1.running_mean",
"layer1.0.bn1.num_batches_tracked"), so the file loads into the same net written in torch.

The format, all of it:

    8 bytes     n, the header's length, an unsigned little-endian integer
    n bytes     JSON: {"<name>": {"dtype": "F32", "shape": [64, 3, 3, 3],
                                  "data_offsets": [begin, end]}, ...,
                       "__metadata__": {"<key>": "<string>", ...}}
    the rest    each tensor's bytes, C order, little-endian, at [begin, end) from here on

The writer is these few lines rather than the `safetensors` package: the format is that simple,
tinyconv stays NumPy-only (the package is a compiled extension), and the write goes through the
same atomic temporary-file-and-rename as model files (the package writes in place). The tests
read the files back with the package itself and with torch, so the two are checked against the
reference implementation, not against themselves.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np

from .nn.module import Module
from .serialize import atomic_write, string_metadata

__all__ = ["save_safetensors", "DTYPE_NAMES"]

# NumPy dtype -> the safetensors name of it (every dtype a tinyconv state_dict can hold, and more)
DTYPE_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64",
               np.dtype(np.float16): "F16", np.dtype(np.int64): "I64", np.dtype(np.int32): "I32",
               np.dtype(np.int16): "I16", np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8",
               np.dtype(np.bool_): "BOOL"}


def save_safetensors(model: Module, path, metadata: dict | None = None) -> str:
    """Write `model.state_dict()` to `path` as a .safetensors file, atomically; returns the path.

    Tensors keep their dtype (float32 weights, int64 num_batches_tracked). The header's
    __metadata__ holds "format": "pt" (what torch-side loaders expect), the architecture and
    `model.meta` (classes, mean, std) updated by `metadata`; values that are not strings are
    stored as JSON, since safetensors metadata is strings only.
    """
    if not isinstance(model, Module):
        raise TypeError(f"save_safetensors: expected a Module, got {type(model).__name__}")
    header = {"__metadata__": string_metadata(model, {"format": "pt", **(metadata or {})})}
    arrays, offset = [], 0
    for name, array in model.state_dict().items():
        code = DTYPE_NAMES.get(array.dtype.newbyteorder("="))
        if code is None:
            raise TypeError(f"save_safetensors: {name} has dtype {array.dtype}, which safetensors "
                            f"cannot hold (known: {', '.join(map(str, DTYPE_NAMES))})")
        # astype, not ascontiguousarray, which makes a 0-d array (num_batches_tracked) 1-d
        array = array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)
        header[name] = {"dtype": code,
                        "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        arrays.append(array)
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)     # spaces, so the data starts 8-byte aligned (as the package)

    def write(f):
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for array in arrays:
            f.write(array.tobytes())

    atomic_write(path, write)
    return os.fspath(path)
