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
    # a unique name in the same folder (so os.replace is a rename on one file system); "xb" never
    # overwrites, and unlike mkstemp the file gets the usual permissions
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
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


def read_model_file(path) -> tuple[dict, dict]:
    """(state_dict of arrays, header dict) of a model file, every array read and checked.

    Raises FileNotFoundError, or ModelFileError naming the file and what is wrong with it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ModelFileError(f"{path}: not a tinyconv model file (a .npy array, not a .npz)")
        with data as npz:
            header = _read_header(path, npz)
            state = {k: npz[k] for k in header["keys"]}      # reads (and CRC-checks) every array
    except (ModelFileError, PermissionError, IsADirectoryError):
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: cannot read the model file: truncated, corrupt or not a "
                             f".npz ({type(e).__name__}: {e})") from None
    return state, header


def _read_header(path: str, npz) -> dict:
    """The JSON header of an open .npz, checked: format, version, and every listed array present."""
    if HEADER_KEY not in npz.files:
        raise ModelFileError(f"{path}: not a tinyconv model file (a .npz without the "
                             f"{HEADER_KEY!r} header; it holds {sorted(npz.files)[:5]})")
    header = json.loads(str(npz[HEADER_KEY][()]))
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a tinyconv model file (its header is not a "
                             f"{FORMAT!r} header)")
    if header.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: written in model-file format {header['format_version']} "
                             f"by tinyconv {header.get('tinyconv_version')}; this version reads "
                             f"up to format {FORMAT_VERSION}")
    absent = [k for k in header.get("keys", []) if k not in npz.files]
    if absent or "keys" not in header:
        raise ModelFileError(f"{path}: the header lists arrays the file lacks: "
                             f"{', '.join(absent) or 'no key list'}")
    return header


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
        try:
            model = models.build(arch, **arch_args)
        except ValueError as e:
            raise ModelFileError(f"{path}: {e}") from None
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
