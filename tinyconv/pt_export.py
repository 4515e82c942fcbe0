"""PyTorch .pt export: a model's state_dict as the file torch.save writes, without torch.

    tc.save_pt(model, "net.pt")
    # in PyTorch:  net.load_state_dict(torch.load("net.pt", weights_only=True))

torch.save's file (PyTorch >= 1.6) is a zip, stored uncompressed, of

    archive/data.pkl     a pickle of the state_dict: an OrderedDict whose every value is the call
                         torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, {})
    archive/data/<i>     the raw bytes of storage i (here one storage per tensor, little-endian)
    archive/byteorder    "little"
    archive/version      "3"

A pickle is a small program of opcodes, and this one is written opcode by opcode below rather
than by pickle.dump: pickle.dump can only name a function it can import (it would need torch),
and writing the program by hand shows all it contains. It names four things, all of them on the
list torch.load(weights_only=True) accepts: collections.OrderedDict, _rebuild_tensor_v2, the
storage types (torch.FloatStorage, ...) and the persistent ids that point to archive/data/<i>.
Nothing in it is an object of ours, so loading it runs nothing but torch's own rebuilders.

Each storage starts on a 64-byte boundary, as torch.save aligns them (the padding goes into the
zip's "extra field" of the entry), so torch.load(mmap=True) can map the tensors in place.
"""
from __future__ import annotations

import os
import struct
import zipfile

import numpy as np

from .nn.module import Module
from .serialize import atomic_write

__all__ = ["save_pt", "state_dict_pickle", "STORAGE_TYPES"]

# NumPy dtype -> the torch storage type that holds it (what the pickle names)
STORAGE_TYPES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                 np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
                 np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
                 np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage",
                 np.dtype(np.bool_): "BoolStorage"}
ARCHIVE = "archive"
ALIGNMENT = 64


# ---- the pickle, opcode by opcode (pickletools.dis(data) lists them) ---------------------------

def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"        # GLOBAL


def _str(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data                     # BINUNICODE


def _int(value: int) -> bytes:
    if -2 ** 31 <= value < 2 ** 31:
        return b"J" + struct.pack("<i", value)                            # BININT
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data                            # LONG1


def _tuple(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t" if values else b")"   # MARK..TUPLE


def _empty_ordered_dict() -> bytes:
    return _global("collections", "OrderedDict") + b")R"                 # OrderedDict()


def state_dict_pickle(state: dict) -> bytes:
    """The data.pkl of torch.save for `state` (name -> array): storage i is tensor i."""
    out = [b"\x80\x02", _empty_ordered_dict(), b"("]                      # PROTO 2, {}, MARK
    for i, (name, array) in enumerate(state.items()):
        strides = [s // array.itemsize for s in array.strides]            # in elements
        kind = STORAGE_TYPES[array.dtype.newbyteorder("=")]
        # the persistent id ("storage", type, key, device, size); BINPERSID hands it to
        # torch.load, which answers with the storage read from archive/data/<key>
        storage = (b"(" + _str("storage") + _global("torch", kind) + _str(str(i)) + _str("cpu")
                   + _int(array.size) + b"t" + b"Q")
        out += [_str(name), _global("torch._utils", "_rebuild_tensor_v2"), b"(", storage,
                _int(0), _tuple(array.shape), _tuple(strides), b"\x89",      # NEWFALSE
                _empty_ordered_dict(), b"t", b"R"]       # the argument tuple, then the call
    out += [b"u", b"."]                                  # SETITEMS into the dict, STOP
    return b"".join(out)


# ---- the zip -------------------------------------------------------------------------------------

def _write_aligned(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    """One stored entry whose data starts on an ALIGNMENT boundary of the file."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    # the local header is 30 bytes, then the name, then the extra field (4 bytes + padding)
    start = zf.fp.tell() + 30 + len(name.encode()) + 4
    pad = -start % ALIGNMENT
    info.extra = struct.pack("<HH", 0x4246, pad) + b"\0" * pad            # id "FB", as torch
    zf.writestr(info, data, compress_type=zipfile.ZIP_STORED)


def save_pt(model: Module, path) -> str:
    """Write `model.state_dict()` to `path` as torch.save would, atomically; returns the path.

    torch.load(path, weights_only=True) gives an OrderedDict of tensors with the same names,
    dtypes and shapes, which load_state_dict takes into the same net written in PyTorch.
    """
    if not isinstance(model, Module):
        raise TypeError(f"save_pt: expected a Module, got {type(model).__name__}")
    state = {}
    for name, array in model.state_dict().items():
        if array.dtype.newbyteorder("=") not in STORAGE_TYPES:
            raise TypeError(f"save_pt: {name} has dtype {array.dtype}, which has no torch "
                            f"storage here (known: {', '.join(map(str, STORAGE_TYPES))})")
        # little-endian C order (astype, not ascontiguousarray: that one makes a 0-d array 1-d)
        state[name] = array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)
    pickle_bytes = state_dict_pickle(state)

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            _write_aligned(zf, f"{ARCHIVE}/data.pkl", pickle_bytes)
            _write_aligned(zf, f"{ARCHIVE}/byteorder", b"little")
            for i, array in enumerate(state.values()):
                _write_aligned(zf, f"{ARCHIVE}/data/{i}", array.tobytes())
            _write_aligned(zf, f"{ARCHIVE}/version", b"3\n")

    atomic_write(path, write)
    return os.fspath(path)
