"""Reading NumPy arrays out of a pickle without letting the pickle call NumPy (or anything else).

A pickle is a small program: GLOBAL names a callable, REDUCE calls it, BUILD calls the result's
`__setstate__`. The CIFAR-10 batches are pickles of a dict holding one uint8 array, so loading them
needs a few NumPy globals - but NumPy's own constructors are not safe to hand to a file:
`numpy.ndarray(shape, dtype, buffer, offset, strides)` accepts a negative `offset` or zero strides
and so builds a view over memory the file never contained (heap bytes, or a crash).

So the unpickler here resolves every allowed name to a wrapper of ours instead. How NumPy pickles
an array, and what each wrapper accepts:

- protocol 2..4: `_reconstruct(ndarray, (0,), b'b')` then BUILD with the state
  `(version, shape, dtype, is_fortran, raw_bytes)` -> `_reconstruct` returns an `_ArrayState`
  placeholder whose `__setstate__` builds the array; `load` swaps placeholders for the arrays.
- protocol 5: `_frombuffer(raw_bytes, dtype, shape, order)` -> built directly.
- dtypes: `dtype('u1', False, True)` then BUILD with `(3, '|', None, ...)` -> only the simple
  numeric codes in `_DTYPE_CODES`, byte order from the state; structured and object dtypes refused.
- NumPy scalars (e.g. labels saved as np.int64): `scalar(dtype, raw_bytes)`.
- bytes in protocol 2: `_codecs.encode(text, 'latin1')`, and `bytes()` for b''.

Every array is a fresh C-contiguous copy of bytes the pickle itself holds, and its declared size is
checked against those bytes before anything is allocated. Memory stays bounded by the file: all the
arrays of one load together may not exceed the pickle's size (a memoised 30 MB string referenced a
thousand times must not become a thousand arrays), and memo indices are checked before loading
(CPython's unpickler grows its memo table to the largest index a PUT names: 9 KB asking for
index 190,000,000 would take 1.5 GB).
"""
import contextvars
import io
import pickle
import pickletools

import numpy as np

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "load"]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asks for something outside the allowed few: refused before anything runs."""


# Simple numeric dtypes, by the code NumPy writes into a pickle (dtype.str without byte order).
_DTYPE_CODES = {"b1", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8"}
_MAX_NDIM = 32
_MAX_DIM = 2 ** 40   # bounds dims of empty arrays, whose product of 0 says nothing


class _DtypeSpec:
    """What `numpy.dtype(code, align, copy)` + BUILD describe, checked; `.dtype` is the result."""

    dtype = None   # set by __init__; a pickle that skips __init__ (NEWOBJ) leaves None: refused

    def __init__(self, code, align=False, copy=True):
        if isinstance(code, bytes):
            code = code.decode("latin1")
        if not isinstance(code, str) or code not in _DTYPE_CODES or align:
            raise UnsafePickleError(f"refusing dtype {code!r} (align={align!r}): only the simple "
                                    f"numeric codes {sorted(_DTYPE_CODES)} are allowed")
        self.dtype = np.dtype(code)

    def __setstate__(self, state):
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not isinstance(state, tuple) or len(state) < 5 or \
                any(part is not None for part in state[2:5]):
            raise UnsafePickleError(f"refusing dtype state {_short(state)}: only simple numeric "
                                    f"dtypes (no subarray, names or fields) are allowed")
        order = state[1].decode("latin1") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "="):
            raise UnsafePickleError(f"refusing dtype byte order {order!r}")
        if self.dtype is None:
            raise UnsafePickleError("refusing a dtype state without a dtype")
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)


def _checked_dtype(spec, where):
    if not isinstance(spec, _DtypeSpec) or spec.dtype is None:
        raise UnsafePickleError(f"{where}: expected a pickled numpy dtype, got {_short(spec)}")
    return spec.dtype


def _checked_shape(shape, where):
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, tuple) or len(shape) > _MAX_NDIM or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= _MAX_DIM for d in shape):
        raise UnsafePickleError(f"refusing array shape {_short(shape)}: expected a tuple of at "
                                f"most {_MAX_NDIM} non-negative ints")
    return shape


def _raw_bytes(raw, where):
    """The pickle's own bytes (a Python 2 str arrives as latin1 text)."""
    if isinstance(raw, str):
        return raw.encode("latin1")
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw) if isinstance(raw, bytearray) else raw
    raise UnsafePickleError(f"{where}: array data must be bytes held in the pickle, "
                            f"got {_short(raw)}")


# bytes the arrays of the current load() may still allocate: the pickle's size, set by load()
_BUDGET = contextvars.ContextVar("safe_pickle_budget", default=0)


def _fresh_array(raw, dtype, shape, fortran, where):
    """A new C-contiguous array of `shape` copied out of `raw`, whose size must match exactly."""
    count = 1
    for d in shape:
        count *= d
    if count * dtype.itemsize != len(raw):
        raise UnsafePickleError(f"{where}: array declares shape {shape} of {dtype} "
                                f"({count * dtype.itemsize} bytes) but the pickle holds "
                                f"{len(raw)} bytes")
    left = _BUDGET.get() - len(raw)
    if left < 0:
        raise UnsafePickleError(f"{where}: the arrays built so far exceed the size of the pickle "
                                f"(its data is referenced more than once)")
    _BUDGET.set(left)
    flat = np.frombuffer(raw, dtype) if raw else np.empty(0, dtype)
    return np.array(flat.reshape(shape, order="F" if fortran else "C"), order="C", copy=True)


class _ArrayState:
    """Placeholder from `_reconstruct`; BUILD's `__setstate__` turns it into `.array`."""

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        # (version, shape, dtype, is_fortran, raw); pickles older than NumPy 1.0 omit the version
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise UnsafePickleError(f"refusing ndarray state {_short(state)}")
        shape, spec, fortran, raw = state
        where = "ndarray state"
        self.array = _fresh_array(_raw_bytes(raw, where), _checked_dtype(spec, where),
                                  _checked_shape(shape, where), bool(fortran), where)


class _NDArrayName:
    """What 'numpy.ndarray' resolves to: a token `_reconstruct` checks for, never a constructor."""

    def __call__(self, *args):
        raise UnsafePickleError("refusing to call numpy.ndarray(...): its buffer, offset and "
                                "strides arguments can view memory the file does not hold")


_NDARRAY = _NDArrayName()


def _reconstruct(subtype, shape, typecode):
    """numpy's `_reconstruct(ndarray, (0,), b'b')`: an empty placeholder that BUILD fills in."""
    if subtype is not _NDARRAY:
        raise UnsafePickleError(f"refusing _reconstruct of {_short(subtype)}: only numpy.ndarray")
    _checked_shape(shape, "_reconstruct")
    return _ArrayState()


def _frombuffer(buf, spec, shape, order):
    """numpy's protocol-5 `_frombuffer(raw, dtype, shape, order)`, as a fresh copy."""
    where = "_frombuffer"
    if order not in ("C", "F"):
        raise UnsafePickleError(f"{where}: refusing order {_short(order)}")
    return _fresh_array(_raw_bytes(buf, where), _checked_dtype(spec, where),
                        _checked_shape(shape, where), order == "F", where)


def _scalar(spec, raw):
    """numpy's `scalar(dtype, raw)`: one number, e.g. a label saved as np.int64."""
    raw = _raw_bytes(raw, "scalar")
    return _fresh_array(raw, _checked_dtype(spec, "scalar"), (), False, "scalar")[()]


def _bytes_from_latin1(text, encoding="latin1"):
    """What protocol 2 calls as _codecs.encode(text, 'latin1') to spell bytes; nothing else."""
    if not isinstance(text, str) or not isinstance(encoding, str) or \
            encoding.lower().replace("-", "") != "latin1":
        raise UnsafePickleError(f"refusing _codecs.encode({type(text).__name__}, "
                                f"{encoding!r}): only latin1 text is expected")
    return text.encode("latin1")


def _empty_bytes(*args):
    """What protocol 2 calls as bytes() to spell b''; bytes(n) would allocate n bytes: refused."""
    if args:
        raise UnsafePickleError(f"refusing bytes{_short(args)}: only bytes() is expected")
    return b""


def _short(obj, depth=0):
    """A bounded description of a value from the pickle (never the repr of 30 MB of bytes)."""
    if isinstance(obj, (bytes, bytearray, str)):
        return repr(obj) if len(obj) <= 40 else f"<{type(obj).__name__} of length {len(obj)}>"
    if isinstance(obj, int) and not isinstance(obj, bool):
        return repr(obj) if obj.bit_length() <= 64 else f"<int of {obj.bit_length()} bits>"
    if isinstance(obj, (float, bool, type(None))):
        return repr(obj)
    if isinstance(obj, (tuple, list)) and len(obj) <= 8 and depth < 2:
        inner = ", ".join(_short(v, depth + 1) for v in obj)
        return f"({inner})" if isinstance(obj, tuple) else f"[{inner}]"
    if isinstance(obj, (tuple, list, dict)):
        return f"<{type(obj).__name__} of length {len(obj)}>"
    return f"<{type(obj).__name__}>"


# Every global a CIFAR pickle names (written by Python 2 cPickle, or by Python 3 with NumPy 1 or 2
# and any protocol), each mapped to its checked wrapper.
_ALLOWED = {}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _scalar
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _frombuffer
_ALLOWED.update({("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _DtypeSpec,
                 ("_codecs", "encode"): _bytes_from_latin1,
                 ("__builtin__", "bytes"): _empty_bytes, ("builtins", "bytes"): _empty_bytes})


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the names in `_ALLOWED`, each to a checked wrapper.

    A pickle can call any importable function while loading (os.system, eval, ...); refusing every
    other name makes loading a downloaded CIFAR batch as safe as reading an array.
    `RestrictedUnpickler(file).load()` reads the whole stream first (to check its memo indices
    and bound its arrays by its size) and returns fresh ndarrays, as `load(data)` does.
    """

    def __init__(self, file):
        self._data = file.read()
        super().__init__(io.BytesIO(self._data), encoding="latin1")   # latin1: Python 2 str

    def load(self):
        _check_memo_indices(self._data)
        token = _BUDGET.set(len(self._data))
        try:
            return _resolve(super().load())
        finally:
            _BUDGET.reset(token)

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global '{module}.{name}' (only the NumPy array globals of a "
                f"CIFAR batch are allowed)") from None

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing a persistent id: a CIFAR batch has none")


def _resolve(obj, depth=0):
    """`obj` with every `_ArrayState` in it (dict values, list and tuple items) made an array."""
    if isinstance(obj, _ArrayState):
        if obj.array is None:
            raise UnsafePickleError("an ndarray was reconstructed but never given its data")
        return obj.array
    if depth >= 4:   # a CIFAR batch nests 1 level; deeper placeholders stay and fail type checks
        return obj
    if isinstance(obj, dict):
        return {k: _resolve(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v, depth + 1) for v in obj)
    return obj


def load(data):
    """Unpickle `data` (bytes) with `RestrictedUnpickler`; arrays come back as fresh ndarrays.

    Raises UnsafePickleError for anything outside the allowed globals and array forms; a corrupt
    stream raises what pickle raises (UnpicklingError, EOFError, ...).
    """
    return RestrictedUnpickler(io.BytesIO(data)).load()


_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _check_memo_indices(data):
    """Refuse a PUT whose memo index exceeds the pickle's length (no real pickle memoises more
    objects than it has bytes), before CPython's unpickler sizes its memo table by it."""
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in _PUTS and not 0 <= int(arg) <= len(data):
                raise UnsafePickleError(f"refusing memo index {arg} in a pickle of {len(data)} "
                                        f"bytes")
            if opcode.name == "STOP":
                return
    except UnsafePickleError:
        raise
    except Exception as e:        # genops is a pure-Python reader: it fails where load would
        raise pickle.UnpicklingError(f"{type(e).__name__}: {e}") from None
