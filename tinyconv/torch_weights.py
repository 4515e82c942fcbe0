"""PyTorch weight files without PyTorch, and without running any code from the file.

    tc.load_state_dict_file(model, "resnet34-b627a593.pth")     # what torch.save wrote
    tc.load_state_dict_file(model, "model.safetensors")         # what safetensors wrote
    state = read_state_dict_file(path)                          # name -> np.ndarray

The format is told by the first bytes, not by the name: "PK\\x03\\x04" is a zip (torch.save's, or
a tinyconv .npz), a bare pickle is torch.save's legacy format (before PyTorch 1.6: the 2017-2019
model-zoo files, read_torch_legacy), an 8-byte length followed by "{" is a safetensors file.

torch.save's zip (PyTorch >= 1.6) holds
    <name>/data.pkl      a pickle of the state_dict, every tensor written as a call
                         torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)
    <name>/data/<key>    each storage's raw bytes (a tensor is a strided view of one)
    <name>/byteorder     "little" or "big" (absent in older files: little)

A pickle is a small program: opcodes that push values and call the functions the file names
("GLOBAL os system" followed by "REDUCE" runs a shell command). Unpickling a stranger's file with
pickle.load runs their program. Here a restricted Unpickler looks each named function up in a
short table of our own stand-ins -- collections.OrderedDict, the tensor rebuilders, the storage
types -- and refuses any other name with an error, at the moment the pickle names it and so
before it could be called (the model of torch.load's weights_only=True). The stand-ins build
NumPy arrays; torch is never imported. Storages are read from the zip by key (persistent_load),
their length checked against every tensor that views them.

safetensors: an 8-byte little-endian header length n, n bytes of JSON
{"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": ...},
then the data. A reader is thirty lines, so it is written here rather than depending on the
`safetensors` package (which would also need a framework or NumPy glue and brings a compiled
extension): every offset is checked against the file and against the shape.

Dtypes: float16, bfloat16 (NumPy has none: its 16 bits are the top half of a float32) and
float64 are read as float32; integer tensors (num_batches_tracked) keep their type.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np

from .nn.module import Module, StateDictError

__all__ = ["load_state_dict_file", "read_state_dict_file", "read_torch_zip", "read_torch_legacy",
           "read_safetensors", "WeightFileError", "ALLOWED_GLOBALS"]


class WeightFileError(ValueError):
    """A weight file that cannot be read safely: refused pickle names, truncated data, bad
    offsets, or tensors that do not fit the model. The message names the file."""


# --- dtypes ---------------------------------------------------------------------------------------

# torch's storage classes (named in the pickle) -> the dtype of their bytes on disk
STORAGE_DTYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
                  "BFloat16Storage": "bfloat16", "LongStorage": "<i8", "IntStorage": "<i4",
                  "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
                  "BoolStorage": "?"}

# safetensors' dtype names -> the same
SAFETENSORS_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "BF16": "bfloat16",
                      "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1",
                      "BOOL": "?"}


def _raw_dtype(name: str) -> np.dtype:
    """The NumPy dtype that holds the bytes (bfloat16: as uint16)."""
    return np.dtype("<u2") if name == "bfloat16" else np.dtype(name)


def _to_numpy(raw: np.ndarray, name: str) -> np.ndarray:
    """A C-contiguous, native-order array from raw stored values (of either byte order): floats
    as float32 (bfloat16 widened by putting its 16 bits on top of a float32), integers kept."""
    if name == "bfloat16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    # np.array, not np.ascontiguousarray: that one turns a 0-d tensor (num_batches_tracked) 1-d
    if raw.dtype.kind == "f":
        return np.array(raw, dtype=np.float32, order="C")
    return np.array(raw, dtype=raw.dtype.newbyteorder("="), order="C")


# --- the restricted unpickler ---------------------------------------------------------------------

class _StorageType:
    """Stand-in for torch.FloatStorage etc.: only a dtype name. Not callable."""

    def __init__(self, name: str):
        self.name, self.dtype = name, STORAGE_DTYPES[name]

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Storage:
    """One storage: a flat array of its dtype (values as stored). In the legacy format the bytes
    come after the pickle, so `raw` is None until they are read (numel says how many)."""

    def __init__(self, key: str, raw, dtype_name: str, numel: int):
        self.key, self.raw, self.dtype_name, self.numel = key, raw, dtype_name, numel


class _Pending:
    """A tensor of a legacy file whose storage bytes are not read yet (see read_torch_legacy)."""

    def __init__(self, storage, storage_offset, size, stride):
        self.args = storage, storage_offset, size, stride


class _Refused(Exception):
    """Raised inside the unpickler; re-raised as WeightFileError with the file's name."""


def _ints(value, what: str) -> tuple:
    if not isinstance(value, tuple) or not all(type(v) is int for v in value):
        raise _Refused(f"the tensor's {what} is {value!r}, not a tuple of ints")
    return value


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False,
                    backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2 (and the older _rebuild_tensor): the strided view
    (size, stride) of `storage` from `storage_offset`, copied out as a contiguous array (or a
    _Pending one, while a legacy file's storages are still to be read)."""
    if not isinstance(storage, _Storage):
        raise _Refused(f"_rebuild_tensor_v2 got a {type(storage).__name__}, not a storage")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if type(storage_offset) is not int or storage_offset < 0 or len(size) != len(stride) or \
            any(s < 0 for s in size + stride):
        raise _Refused(f"bad tensor geometry: offset {storage_offset!r}, size {size}, "
                       f"stride {stride}")
    if storage.raw is None:
        return _Pending(storage, storage_offset, size, stride)
    return _view(storage, storage_offset, size, stride)


def _view(storage, storage_offset, size, stride) -> np.ndarray:
    """The checked strided view of a storage, copied: every index must lie inside it."""
    n = storage.raw.size
    last = storage_offset + sum((s - 1) * st for s, st in zip(size, stride))
    if 0 not in size and last >= n:
        raise _Refused(f"a tensor of size {size}, stride {stride} at offset {storage_offset} "
                       f"needs {last + 1} elements but storage {storage.key!r} holds {n}: the "
                       f"storage is shorter than the tensor")
    if 0 in size:
        view = np.zeros(size, dtype=storage.raw.dtype)
    else:
        item = storage.raw.itemsize
        view = np.lib.stride_tricks.as_strided(storage.raw[storage_offset:], shape=size,
                                               strides=[st * item for st in stride],
                                               writeable=False)
    return _to_numpy(view, storage.dtype_name)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None) -> np.ndarray:
    """torch._utils._rebuild_parameter: an nn.Parameter is its data here."""
    if not isinstance(data, (np.ndarray, _Pending)):
        raise _Refused(f"_rebuild_parameter got a {type(data).__name__}, not a tensor")
    return data


# The only names a plain state_dict's pickle uses, each mapped to our own stand-in. Everything
# else (os.system, builtins.eval, subprocess.Popen, torch.nn.Module subclasses...) is refused.
ALLOWED_GLOBALS = {("collections", "OrderedDict"): OrderedDict,
                   ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                   ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,      # before torch 0.4
                   ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
                   **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES}}
_ALLOWED_TEXT = ", ".join(f"{m}.{n}" for m, n in ALLOWED_GLOBALS if m != "torch") + \
    " and the torch.<Type>Storage classes"


class _StateDictUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves names through ALLOWED_GLOBALS only and reads persistent
    storage ids ('storage', storage_type, key, location, numel[, view_metadata]) with
    read_storage(key, dtype, numel) (the zip), or leaves them to be read later (read_storage
    None: the legacy format)."""

    def __init__(self, file, read_storage=None):
        super().__init__(file)
        self.read_storage = read_storage
        self.storages = {}

    def find_class(self, module: str, name: str):
        # called for every GLOBAL / STACK_GLOBAL opcode, before the name can be called
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(f"refused to load the global {module}.{name}: a plain state_dict "
                           f"needs only {_ALLOWED_TEXT}; this file may contain code") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and type(pid[4]) is int and pid[4] >= 0 and (len(pid) == 5 or pid[5] is None)):
            raise _Refused(f"unexpected persistent id {pid!r:.120} (expected ('storage', "
                           f"torch.<Type>Storage, key, location, numel))")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if key not in self.storages:
            raw = None if self.read_storage is None else \
                self.read_storage(key, _raw_dtype(storage_type.dtype), numel)
            self.storages[key] = _Storage(key, raw, storage_type.dtype, numel)
        return self.storages[key]


@contextlib.contextmanager
def _unpickling(path: str, what: str):
    """Within the block, a refusal or a broken pickle becomes a WeightFileError naming the file
    (`what`: the message for a broken one)."""
    try:
        yield
    except _Refused as e:
        raise WeightFileError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError,
            KeyError, struct.error) as e:
        raise WeightFileError(f"{path}: {what} ({type(e).__name__}: {e})") from None


# --- torch.save's zip -----------------------------------------------------------------------------

def read_torch_zip(path) -> "OrderedDict[str, np.ndarray]":
    """The state_dict in a zip written by torch.save, as name -> np.ndarray (float32 for floats).

    Raises WeightFileError naming the file: a refused pickle name (nothing it names runs), a
    missing member, a storage shorter than its tensors, a truncated or corrupt zip.
    """
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise WeightFileError(f"{path}: not a torch.save file: expected one "
                                      f"'<name>/data.pkl' member, found {len(pickles)} among "
                                      f"{names[:6]}")
            prefix = pickles[0][:-len("data.pkl")]
            big_endian = False
            if prefix + "byteorder" in names:
                order = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
                if order not in ("little", "big"):
                    raise WeightFileError(f"{path}: unknown byteorder {order!r}")
                big_endian = order == "big"

            def read_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
                member = f"{prefix}data/{key}"
                if member not in names:
                    raise _Refused(f"the pickle refers to storage {key!r} but the archive has "
                                   f"no member {member!r}")
                data = zf.read(member)
                if len(data) < numel * dtype.itemsize:
                    raise _Refused(f"storage {member!r} holds {len(data)} bytes, the pickle "
                                   f"says {numel} x {dtype.itemsize}: the storage is truncated")
                raw = np.frombuffer(data, dtype=dtype.newbyteorder(">" if big_endian else "<"),
                                    count=numel)
                return raw

            unpickler = _StateDictUnpickler(io.BytesIO(zf.read(pickles[0])), read_storage)
            with _unpickling(path, f"the pickle in {pickles[0]!r} is not a plain state_dict"):
                obj = unpickler.load()
    except WeightFileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise WeightFileError(f"{path}: cannot read the zip: truncated or corrupt "
                              f"({type(e).__name__}: {e})") from None
    return _state_dict_of(path, obj)


def _state_dict_of(path: str, obj) -> "OrderedDict[str, np.ndarray]":
    """The name -> array mapping in an unpickled object: the object itself, or the state_dict
    inside a training checkpoint ({"state_dict": ...}, {"model": ...})."""
    if isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        return OrderedDict((str(k), v) for k, v in obj.items())
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return _state_dict_of(path, obj[key])
    kind = type(obj).__name__
    keys = list(obj)[:6] if isinstance(obj, dict) else ""
    raise WeightFileError(f"{path}: holds a {kind} {keys}, not a state_dict of tensors (nor a "
                          f"checkpoint with one under 'state_dict' or 'model')")


# --- torch.save's legacy format (before PyTorch 1.6, or _use_new_zipfile_serialization=False) -----

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


def read_torch_legacy(path) -> "OrderedDict[str, np.ndarray]":
    """The state_dict of a file in torch.save's legacy format, as name -> np.ndarray.

    Five things follow each other in the file: four pickles -- the magic number, the protocol
    version (1001), system info (byte order), the state_dict -- then the pickled list of storage
    keys and, for each key in that order, an 8-byte element count and the raw bytes. The
    state_dict's tensors are rebuilt once those bytes are read. Every pickle goes through the
    same restricted unpickler as the zip's.
    """
    path = os.fspath(path)
    with open(path, "rb") as f, _unpickling(path, "not a readable legacy torch.save file: "
                                                  "truncated or not a plain state_dict"):
        if _StateDictUnpickler(f).load() != LEGACY_MAGIC:
            raise _Refused("not a torch.save file (its first pickle is not torch's magic "
                           "number)")
        version = _StateDictUnpickler(f).load()
        if version != LEGACY_PROTOCOL:
            raise _Refused(f"legacy protocol version {version!r}, expected "
                           f"{LEGACY_PROTOCOL}")
        info = _StateDictUnpickler(f).load()
        little = not isinstance(info, dict) or info.get("little_endian", True)
        unpickler = _StateDictUnpickler(f)
        obj = unpickler.load()
        keys = _StateDictUnpickler(f).load()
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _Refused(f"the storage key list is {type(keys).__name__}, not strings")
        for key in keys:
            _read_legacy_storage(f, unpickler.storages, key, little)
        obj = _resolve(obj)
    return _state_dict_of(path, obj)


def _read_legacy_storage(f, storages: dict, key: str, little: bool) -> None:
    """Read one storage's count and bytes from f into storages[key].raw."""
    storage = storages.get(key)
    if storage is None:
        raise _Refused(f"the file has bytes for storage {key!r}, which no tensor uses")
    head = f.read(8)
    if len(head) < 8:
        raise _Refused(f"storage {key!r}: the file ends before its length: truncated")
    (numel,) = struct.unpack("<q" if little else ">q", head)
    if numel != storage.numel:
        raise _Refused(f"storage {key!r} holds {numel} elements, the pickle says "
                       f"{storage.numel}")
    dtype = _raw_dtype(storage.dtype_name).newbyteorder("<" if little else ">")
    data = f.read(numel * dtype.itemsize)
    if len(data) < numel * dtype.itemsize:
        raise _Refused(f"storage {key!r} holds {len(data)} bytes, the pickle says {numel} x "
                       f"{dtype.itemsize}: the storage is truncated")
    storage.raw = np.frombuffer(data, dtype=dtype)


def _resolve(obj):
    """obj with every _Pending tensor (in dicts, lists, tuples) replaced by its array."""
    if isinstance(obj, _Pending):
        storage = obj.args[0]
        if storage.raw is None:
            raise _Refused(f"no bytes for storage {storage.key!r} in the file: truncated")
        return _view(*obj.args)
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = _resolve(v)
        return obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v) for v in obj)
    return obj


# --- safetensors ----------------------------------------------------------------------------------

def read_safetensors(path) -> "OrderedDict[str, np.ndarray]":
    """The tensors of a .safetensors file, name -> np.ndarray (float32 for floats), in file order.

    Every header entry is checked: a known dtype, data_offsets inside the data section and
    exactly as long as the shape needs. Errors (WeightFileError) name the file and the tensor.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise WeightFileError(f"{path}: {len(blob)} bytes, too short for a safetensors file")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise WeightFileError(f"{path}: the safetensors header claims {n} bytes but the file "
                              f"has {len(blob) - 8} after the length: truncated")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightFileError(f"{path}: the safetensors header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise WeightFileError(f"{path}: the safetensors header is not a JSON object")
    data = memoryview(blob)[8 + n:]
    state = OrderedDict()
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise WeightFileError(f"{path}: tensor {name!r}: bad header entry {entry!r} "
                                  f"({type(e).__name__}: {e}; known dtypes "
                                  f"{', '.join(SAFETENSORS_DTYPES)})") from None
        dtype = _raw_dtype(dtype_name)
        needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not 0 <= begin <= end <= len(data) or end - begin != needed or min(shape, default=0) < 0:
            raise WeightFileError(f"{path}: tensor {name!r} of shape {shape} ({entry['dtype']}) "
                                  f"needs {needed} bytes; its data_offsets [{begin}, {end}] "
                                  f"(data section {len(data)} bytes) do not fit")
        raw = np.frombuffer(data[begin:end], dtype=dtype.newbyteorder("<")).reshape(shape)
        state[name] = _to_numpy(raw, dtype_name)
    return state


# --- either format, into a model ------------------------------------------------------------------

def read_state_dict_file(path) -> "OrderedDict[str, np.ndarray]":
    """The state_dict in `path`: torch.save's zip, .safetensors, or a tinyconv .npz model file,
    told apart by the file's first bytes."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weight file {path!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                is_npz = "__tinyconv__.npy" in zf.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise WeightFileError(f"{path}: starts like a zip but cannot be opened as one: "
                                  f"truncated or corrupt ({type(e).__name__}: {e})") from None
        if is_npz:
            from .serialize import read_model_file
            return OrderedDict(read_model_file(path)[0])
        return read_torch_zip(path)
    if len(head) == 9 and head[8:9] == b"{":
        return read_safetensors(path)
    if head[:2] == b"\x80\x02":               # a bare pickle: torch.save's legacy format
        return read_torch_legacy(path)
    raise WeightFileError(f"{path}: neither a torch.save zip, nor a safetensors file, nor a "
                          f"tinyconv .npz (first bytes {head!r})")


def load_state_dict_file(model: Module, path, strict: bool = True, ignore=()) -> Module:
    """Load the weights in `path` (torch .pth zip or .safetensors, told by content) into `model`.

    Floats are cast to the model's dtype. A BatchNorm's num_batches_tracked, absent from files
    written before torch 0.4.1, keeps the model's value. strict: every key must match both ways;
    any mismatch raises WeightFileError listing the missing, unexpected and mis-shaped keys,
    before anything is written. ignore: key prefixes (e.g. ("fc.",), a classifier to replace)
    left out on both sides: the model keeps its own values there. Returns the model.
    """
    path = os.fspath(path)
    ignore = tuple(ignore)
    state = read_state_dict_file(path)
    own = model.state_dict()
    for key in [k for k in state if ignore and k.startswith(ignore)]:
        del state[key]
    for key in own:
        bn_counter = key.endswith("num_batches_tracked") and \
            key[:-len("num_batches_tracked")] + "running_mean" in state
        if key not in state and (bn_counter or (ignore and key.startswith(ignore))):
            state[key] = own[key]
    try:
        model.load_state_dict(state, strict=strict)
    except StateDictError as e:
        raise WeightFileError(f"{path}: does not fit {type(model).__name__}: {e}") from None
    return model
