"""Model files: one .npz holding the state_dict arrays plus a JSON header. No pickle, anywhere.

    tc.save(model, "mnist.npz", classes=["0", ..., "9"], mean=[0.1307], std=[0.3081])
    model = tc.load("mnist.npz")          # rebuilt from the header, weights loaded, in eval mode
    model.meta["classes"]                 # the metadata given to save()

Layout of the file (a plain zip of .npy files that any NumPy can read):
    "<dotted name>"      one array per state_dict entry ("0.0.weight", "3.res1.1.running_var", ...)
    "__tinyconv__"       a 0-d unicode array holding the JSON header:
                         {"format": "tinyconv-model", "format_version": 1, "tinyconv_version": ...,
                          "arch": "resnet9", "arch_args": {"num_classes": 10, "width": 64},
                          "keys": [...state_dict order...], "meta": {...}}

Loading uses np.load(allow_pickle=False): a model file holds numbers and text only, so opening one
cannot run code. Writes go to a temporary file in the same folder, then os.replace() puts it in
place in one step: a crash mid-write never leaves a half-written model under the real name.
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid
import zipfile

import numpy as np

from . import models
from .nn.module import Module, StateDictError

__all__ = ["save", "load", "read_model_file", "write_model_file", "model_header",
           "atomic_write", "string_metadata", "ModelFileError", "HEADER_KEY", "FORMAT",
           "FORMAT_VERSION"]

HEADER_KEY = "__tinyconv__"
FORMAT = "tinyconv-model"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file that cannot be used: truncated, foreign, wrong architecture, missing keys."""


def _model_of(obj) -> Module:
    """The Module to save: `obj` itself, or a Learner's `obj.model`."""
    if isinstance(obj, Module):
        return obj
    model = getattr(obj, "model", None)
    if isinstance(model, Module):
        return model
    raise TypeError(f"save: expected a Module or a Learner (with a .model Module), "
                    f"got {type(obj).__name__}")


def _jsonable(value):
    """json.dumps hook: NumPy arrays and scalars (normalisation stats) as plain lists/numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"save: metadata value of type {type(value).__name__} is not JSON-serialisable "
                    f"(use str, numbers, lists, dicts or NumPy arrays)")


def string_metadata(model: Module, extra: dict) -> dict:
    """What an exported file (ONNX, safetensors) records about `model`, every value a string.

    `model.meta` (classes, mean, std of a loaded model) updated by `extra` (None values skipped),
    plus "arch" and "arch_args" when the model has them; lists, numbers and dicts become JSON,
    as both formats store only strings.
    """
    meta = {**getattr(model, "meta", {}), **{k: v for k, v in extra.items() if v is not None}}
    for key, attr in (("arch", "arch_name"), ("arch_args", "arch_args")):
        if getattr(model, attr, None) is not None:
            meta.setdefault(key, getattr(model, attr))
    return {k: v if isinstance(v, str) else json.dumps(v, default=_jsonable)
            for k, v in meta.items()}


def save(model_or_learner, path, **meta) -> str:
    """Write the model's state_dict and a JSON header (architecture, `meta`) to `path`, atomically.

    meta: JSON-serialisable extras, e.g. classes=[...], mean=[...], std=[...]. Metadata a loaded
    model carries in `model.meta` is kept unless overridden. Returns the path.
    """
    model = _model_of(model_or_learner)
    state = model.state_dict()
    header = model_header(model, list(state), meta)
    write_model_file(path, state, header)
    return os.fspath(path)


def model_header(model: Module, keys: list, meta: dict) -> dict:
    """The JSON header describing `model`: format, versions, architecture, state keys, metadata.

    Callers that store more (a Learner's optimizer state) add their own header entries and arrays
    and write with write_model_file: the file stays loadable by tc.load.
    """
    from . import __version__
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "tinyconv_version": __version__,
            "arch": getattr(model, "arch_name", None),
            "arch_args": getattr(model, "arch_args", None),
            "model_class": type(model).__name__, "keys": list(keys),
            "meta": {**getattr(model, "meta", {}), **meta}}


def write_model_file(path, arrays: dict, header: dict) -> None:
    """Write `arrays` and the JSON `header` as one .npz, atomically (temporary file + rename)."""
    path = os.fspath(path)
    if HEADER_KEY in arrays:
        raise ValueError(f"save: an array is named {HEADER_KEY!r}, reserved for the header")
    text = json.dumps(header, default=_jsonable)          # fails before anything is written
    atomic_write(path, lambda f: np.savez(f, **arrays, **{HEADER_KEY: np.array(text)}))


def atomic_write(path, write) -> None:
    """Call `write(f)` on a new binary file next to `path`, then rename it to `path` in one step.

    Whatever stops `write` half-way (an error, Ctrl-C) leaves `path` as it was and removes the
    temporary file. Used for every file tinyconv writes: models, checkpoints, exports.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    _remove_stale_temporaries(folder, os.path.basename(path))
    # a unique name in the same folder (so os.replace is a rename on one file system), holding the
    # writer's pid so a later write can tell a crashed writer's leftover from a live one; "xb"
    # never overwrites, and unlike mkstemp the file gets the usual permissions
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}-"
                               f"{uuid.uuid4().hex[:8]}.tmp")
    try:
        f = open(tmp, "xb")
    except OSError as e:            # name the file the caller asked for, not the temporary one
        raise type(e)(e.errno, f"cannot write {path!r}: {e.strerror}") from None
    try:
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# What a model file may make tinyconv allocate: the arrays it declares (their uncompressed sizes,
# summed) may exceed the file's own size only by this factor. np.savez stores arrays uncompressed
# (factor 1); a compressed archive of weights shrinks little. A zip bomb declares far more.
MAX_EXPANSION = 16
MIN_BUDGET = 64 * 2 ** 20      # bytes always allowed, so small files are never refused for this
MAX_HEADER_BYTES = 64 * 2 ** 20


STALE_SECONDS = 3600   # a temporary of the older pid-less naming is left over after an hour


def _remove_stale_temporaries(folder: str, name: str) -> None:
    """Delete what interrupted writes of `name` left in `folder` (SIGKILL, power loss: no
    cleanup ran): `.<name>.<pid>-<hex>.tmp` whose process is gone, and pid-less
    `.<name>.<hex>.tmp` of earlier versions older than STALE_SECONDS. Only tinyconv's own
    pattern, for this one target, is ever touched."""
    pattern = re.compile(rf"\.{re.escape(name)}\.(?:(\d+)-[0-9a-f]{{8}}|[0-9a-f]{{12}})\.tmp")
    try:
        entries = [e for e in os.scandir(folder) if pattern.fullmatch(e.name)]
    except OSError:
        return                     # an unreadable folder: the write itself will say so
    for entry in entries:
        pid = pattern.fullmatch(entry.name).group(1)
        try:
            stale = not _process_alive(int(pid)) if pid else \
                time.time() - entry.stat().st_mtime > STALE_SECONDS
            if stale:
                os.remove(entry.path)
        except OSError:
            pass                   # removed meanwhile, or not ours to remove


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)            # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True                # exists (another user's) or not a pid: leave the file alone
    return True


def read_model_file(path) -> tuple[dict, dict]:
    """(state_dict of arrays, header dict) of a model file, every array read and checked.

    Before anything is allocated, each member's .npy header (shape, dtype) is checked against the
    bytes the zip declares for it, and their sum against the file's real size (`MAX_EXPANSION`);
    only simple numeric dtypes are read. Raises FileNotFoundError, or ModelFileError naming the
    file and what is wrong with it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                is_npy = f.read(6) == b"\x93NUMPY"
            raise ModelFileError(f"{path}: not a tinyconv model file (a .npy array, not a .npz)"
                                 if is_npy else f"{path}: cannot read the model file: not a .npz "
                                 f"(zip) archive")
        with zipfile.ZipFile(path) as zf:
            members = {n[:-4]: zf.getinfo(n) for n in zf.namelist() if n.endswith(".npy")}
            header = _read_header(path, zf, members)
            budget = max(MAX_EXPANSION * os.path.getsize(path), MIN_BUDGET)
            # every array member, also those a Learner checkpoint adds (optimizer state) and
            # reads after this check, must be plain numbers of the size its member declares
            specs = {k: _member_spec(path, zf, info) for k, info in members.items()
                     if k != HEADER_KEY}
            declared = sum(info.file_size for info in members.values())
            if declared > budget:
                raise ModelFileError(
                    f"{path}: declares {declared:,} bytes of arrays but the file holds only "
                    f"{os.path.getsize(path):,} bytes (more than {MAX_EXPANSION}x): refusing to "
                    f"decompress it")
            state = {k: _read_member(zf, members[k], specs[k]) for k in header["keys"]}
    except (ModelFileError, PermissionError, IsADirectoryError):
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError,
            NotImplementedError, RuntimeError) as e:     # RuntimeError: encrypted members
        raise ModelFileError(f"{path}: cannot read the model file: truncated, corrupt or not a "
                             f".npz ({type(e).__name__}: {e})") from None
    return state, header


def _member_spec(path: str, zf, info, header=False):
    """(shape, fortran, dtype, data offset) from one member's .npy header, checked against the
    size the zip declares for it: simple numbers only (the header: one unicode string)."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ModelFileError(f"{path}: array {info.filename!r} is in .npy format {version}, "
                                 f"not 1.0 or 2.0")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
            else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        offset = f.tell()
    if header:
        simple = dtype.kind == "U" and shape == ()
    else:
        simple = dtype.kind in "biuf" and dtype.fields is None and dtype.subdtype is None
    if not simple:
        what = "a 0-d unicode string" if header else "booleans, integers or floats"
        raise ModelFileError(f"{path}: array {info.filename!r} has dtype {dtype} and shape "
                             f"{shape}; a model file holds only {what}")
    count = 1
    for d in shape:
        count *= d
    if offset + count * dtype.itemsize != info.file_size:
        raise ModelFileError(f"{path}: array {info.filename!r} declares shape {shape} of {dtype} "
                             f"({count * dtype.itemsize:,} bytes) but its member holds "
                             f"{info.file_size - offset:,} bytes (truncated or corrupt)")
    return shape, fortran, dtype, offset


def _read_member(zf, info, spec):
    """The array of one checked member; reading to the end makes zipfile verify its CRC."""
    shape, fortran, dtype, offset = spec
    with zf.open(info) as f:
        f.read(offset)
        raw = f.read(info.file_size - offset)
        f.read()                  # nothing is left; at the end zipfile checks the CRC
    flat = np.frombuffer(raw, dtype=dtype)
    # a fresh, writable, native-endian C array (np.savez writes Fortran order as it is in memory)
    return np.array(flat.reshape(shape, order="F" if fortran else "C"),
                    dtype=dtype.newbyteorder("="), order="C")


def _read_header(path: str, zf, members: dict) -> dict:
    """The JSON header of an open model archive, checked: format, version, the type of every
    entry, and every listed array present."""
    if HEADER_KEY not in members:
        raise ModelFileError(f"{path}: not a tinyconv model file (a .npz without the "
                             f"{HEADER_KEY!r} header; it holds {sorted(members)[:5]})")
    info = members[HEADER_KEY]
    if info.file_size > MAX_HEADER_BYTES:
        raise ModelFileError(f"{path}: its header declares {info.file_size:,} bytes (at most "
                             f"{MAX_HEADER_BYTES:,} are read)")
    spec = _member_spec(path, zf, info, header=True)
    try:
        header = json.loads(str(_read_member(zf, info, spec)[()]))
    except ValueError as e:
        raise ModelFileError(f"{path}: its header is not valid JSON ({e})") from None
    except RecursionError:     # json nests by recursion: 100,000 '[' exhaust the stack
        raise ModelFileError(f"{path}: its header nests too deeply to be a model header") \
            from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a tinyconv model file (its header is not a "
                             f"{FORMAT!r} header)")
    _check_header_types(path, header)
    if header.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: written in model-file format {header['format_version']} "
                             f"by tinyconv {header.get('tinyconv_version')}; this version reads "
                             f"up to format {FORMAT_VERSION}")
    absent = [k for k in header.get("keys", []) if k not in members]
    if absent or "keys" not in header:
        raise ModelFileError(f"{path}: the header lists arrays the file lacks: "
                             f"{', '.join(absent) or 'no key list'}")
    return header


# entry -> (allowed types, what to call them); None is allowed for every entry but "keys"
_HEADER_TYPES = {"format_version": ((int,), "an integer"), "keys": ((list,), "a list of names"),
                 "arch": ((str,), "a name"), "arch_args": ((dict,), "an object"),
                 "model_class": ((str,), "a name"), "meta": ((dict,), "an object"),
                 "tinyconv_version": ((str,), "a version string")}


def _check_header_types(path: str, header: dict) -> None:
    for key, (types, what) in _HEADER_TYPES.items():
        value = header.get(key)
        if key not in header or (value is None and key != "keys"):
            continue          # absent entries have defaults; a missing key list is named later
        if isinstance(value, bool) or not isinstance(value, types):
            raise ModelFileError(f"{path}: header entry {key!r} must be {what}, got "
                                 f"{type(value).__name__}")
    keys = header.get("keys", [])
    if not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        raise ModelFileError(f"{path}: header entry 'keys' must list distinct array names")


def _ints_in(value):
    """Every int in a JSON value (bools excluded), depth first."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, (list, dict)):
        for v in (value.values() if isinstance(value, dict) else value):
            yield from _ints_in(v)


def _check_arch_args(path: str, arch, arch_args: dict, state: dict) -> None:
    """Refuse a header whose architecture is bigger than the arrays stored with it, before the
    net is built: every size in arch_args (num_classes, width, ...) is a dimension of some weight,
    so none can exceed the largest stored dimension. (A header edited to width 4096 over width-64
    weights would otherwise build a 10 GB net only to fail loading the weights into it.)"""
    largest = max((d for a in state.values() for d in a.shape), default=0)
    too_big = [v for v in _ints_in(arch_args) if v > max(largest, len(state))]
    if too_big:
        raise ModelFileError(f"{path}: the header asks for {arch}({arch_args}) but the largest "
                             f"dimension of the {len(state)} stored arrays is {largest}: the "
                             f"header does not describe these weights")


def load(path, model: Module | None = None) -> Module:
    """The model saved in `path`, in eval mode, with the file's metadata in `model.meta`.

    model=None rebuilds a zoo architecture from the header (tc.models); pass a model to load the
    weights into your own net (its architecture must match the file's). Errors name the file.
    """
    path = os.fspath(path)
    state, header = read_model_file(path)
    arch, arch_args = header.get("arch"), header.get("arch_args") or {}
    if model is None:
        if arch is None:
            raise ModelFileError(f"{path}: saved from a custom model ({header.get('model_class')}) "
                                 f"that tinyconv cannot rebuild; build it and pass "
                                 f"load(path, model=net)")
        _check_arch_args(path, arch, arch_args, state)
        try:
            model = models.build(arch, **arch_args)
        except (ValueError, TypeError, OverflowError, MemoryError) as e:
            raise ModelFileError(f"{path}: {type(e).__name__}: {e}" if not
                                 isinstance(e, ValueError) else f"{path}: {e}") from None
    else:
        own_arch = getattr(model, "arch_name", None)
        if arch is not None and own_arch is not None and (arch, arch_args) != \
                (own_arch, getattr(model, "arch_args", {})):
            raise ModelFileError(f"{path}: wrong architecture: the file holds {arch}({arch_args}),"
                                 f" the model is {own_arch}({getattr(model, 'arch_args', {})})")
    try:
        model.load_state_dict(state, strict=True)
    except StateDictError as e:
        raise ModelFileError(f"{path}: does not fit {type(model).__name__}: {e}") from None
    model.meta = dict(header.get("meta") or {})
    return model.eval()
