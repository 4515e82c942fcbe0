"""The CIFAR pickle reader: crafted pickles are refused, real NumPy pickles of every protocol load.

The crafted pickles are assembled from opcodes here (`op`, `lit`) so each one says exactly which
calls it asks the unpickler to make.
"""
import pickle
import struct

import numpy as np
import pytest

from tinyconv.data import CIFAR10, DatasetError, UnsafePickleError
from tinyconv.data import safe_pickle

from test_datasets import cifar_rows_to_nhwc, write_cifar_py

# --- a tiny pickle assembler ----------------------------------------------------------------------

MARK, TUPLE, REDUCE, BUILD, STOP = b"(", b"t", b"R", b"b", b"."


def glob(module, name):
    """GLOBAL opcode: push module.name as resolved by the unpickler's find_class."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def lit(value, protocol=3):
    """The opcodes that push `value` (a plain Python value), without PROTO and STOP."""
    body = pickle.dumps(value, protocol=protocol)
    return body[2:-1]


def call(func_ops, *arg_ops):
    """func(*args): push the callable, a tuple of the arguments, REDUCE."""
    return func_ops + MARK + b"".join(arg_ops) + TUPLE + REDUCE


def program(*ops, protocol=3):
    return bytes([0x80, protocol]) + b"".join(ops) + STOP


def dtype_ops(code="u1", order="|"):
    """numpy.dtype(code, False, True) then BUILD with the simple-dtype state."""
    return call(glob("numpy", "dtype"), lit(code), lit(False), lit(True)) + \
        lit((3, order, None, None, None, -1, -1, 0)) + BUILD


def reconstruct_ops(shape, raw_ops, dtype=None, core="numpy._core"):
    """Protocols 2..4: _reconstruct(ndarray, (0,), b'b'), BUILD (1, shape, dtype, False, raw)."""
    dtype = dtype_ops() if dtype is None else dtype
    return call(glob(f"{core}.multiarray", "_reconstruct"), glob("numpy", "ndarray"), lit((0,)),
                lit(b"b")) + MARK + lit(1) + lit(shape) + dtype + lit(False) + raw_ops + TUPLE \
        + BUILD


def batch_program(data_ops, labels_ops=None):
    """A dict {'data': ..., 'labels': ...} as a CIFAR batch has."""
    labels_ops = lit([0]) if labels_ops is None else labels_ops
    return program(b"}" + MARK + lit("data") + data_ops + lit("labels") + labels_ops + b"u")


def write_batch(tmp_path, body):
    root = tmp_path / "cifar-10-batches-py"
    write_cifar_py(root)
    (root / "data_batch_1").write_bytes(body)
    return root


# --- crafted pickles are refused, and read no memory they do not hold ----------------------------

def test_ndarray_with_a_negative_offset_is_refused(tmp_path):
    """numpy.ndarray(shape, dtype, buffer, offset=-16) would view 16 bytes before the buffer."""
    evil = call(glob("numpy", "ndarray"), lit((1, 3072)), dtype_ops(), lit(b"A" * 3072),
                lit(-16))
    root = write_batch(tmp_path, batch_program(evil))
    with pytest.raises(UnsafePickleError, match="data_batch_1"):
        CIFAR10(root)


def test_ndarray_with_zero_strides_is_refused(tmp_path):
    """A zero stride makes 3072 * 10**6 'pixels' out of one byte."""
    evil = call(glob("numpy", "ndarray"), lit((10 ** 6, 3072)), dtype_ops(), lit(b"A"), lit(0),
                lit((0, 0)))
    with pytest.raises(UnsafePickleError):
        safe_pickle.load(batch_program(evil))


@pytest.mark.parametrize("shape, nbytes", [((2, 3072), 3072), ((10 ** 9, 3072), 8), ((3,), 4)])
def test_reconstruct_state_must_match_the_bytes_it_holds(shape, nbytes):
    body = batch_program(reconstruct_ops(shape, lit(b"x" * nbytes)))
    with pytest.raises(UnsafePickleError, match=r"declares shape .* holds %d bytes" % nbytes):
        safe_pickle.load(body)


def test_frombuffer_must_match_the_bytes_it_holds():
    evil = call(glob("numpy._core.numeric", "_frombuffer"), lit(bytearray(b"x" * 10), protocol=5),
                dtype_ops("u1"), lit((2, 3072)), lit("C"))
    with pytest.raises(UnsafePickleError, match="6144 bytes.*holds 10 bytes"):
        safe_pickle.load(batch_program(evil))


@pytest.mark.parametrize("shape", [(-1, 3072), (1.5,), "abc", (2,) * 40, (True,)])
def test_bad_shapes_are_refused(shape):
    with pytest.raises(UnsafePickleError, match="shape"):
        safe_pickle.load(batch_program(reconstruct_ops(shape, lit(b""))))


@pytest.mark.parametrize("dtype", [
    dtype_ops("O"),                                                   # object: a list of anything
    dtype_ops("V8"),                                                  # raw void
    call(glob("numpy", "dtype"), lit("u1"), lit(True), lit(True)),    # aligned
    call(glob("numpy", "dtype"), lit("u1"), lit(False), lit(True))    # structured state
    + lit((3, "|", None, ("a",), {"a": 1}, -1, -1, 0)) + BUILD,
    call(glob("numpy", "dtype"), lit("u1"), lit(False), lit(True))    # bad byte order
    + lit((3, "?", None, None, None, -1, -1, 0)) + BUILD,
    lit("u1"),                                                        # not a dtype at all
], ids=["object", "void", "aligned", "structured", "byte-order", "not-a-dtype"])
def test_only_simple_dtypes_are_allowed(dtype):
    with pytest.raises(UnsafePickleError, match="dtype"):
        safe_pickle.load(batch_program(reconstruct_ops((1,), lit(b"x"), dtype=dtype)))


def test_object_arrays_written_by_numpy_are_refused():
    with pytest.raises(UnsafePickleError, match="dtype 'O"):
        safe_pickle.load(pickle.dumps({"data": np.array([1, None], dtype=object)}, protocol=2))


@pytest.mark.parametrize("evil", [
    call(glob("numpy._core.multiarray", "_reconstruct"), glob("_codecs", "encode"), lit((0,)),
         lit(b"b")),                                                  # a subtype other than ndarray
    call(glob("builtins", "bytes"), lit(10 ** 12)),                   # bytes(n) allocates n bytes
    call(glob("numpy", "ndarray"), lit((1,))),                        # ndarray is not callable
    call(glob("numpy._core.numeric", "_frombuffer"), lit(b"x"), dtype_ops(), lit((1,)),
         lit("K")),                                                   # an unknown order
    reconstruct_ops((1,), lit([1])),                                  # data that is not bytes
], ids=["subtype", "bytes(n)", "ndarray-call", "order", "list-data"])
def test_wrappers_refuse_what_a_cifar_pickle_never_asks(evil):
    with pytest.raises((UnsafePickleError, TypeError)):
        safe_pickle.load(batch_program(evil))


def test_build_over_a_built_array_is_refused(tmp_path):
    """BUILD on an array we made would hand NumPy's own __setstate__ the attacker's state."""
    ok = call(glob("numpy._core.numeric", "_frombuffer"), lit(b""), dtype_ops(), lit((0,)),
              lit("C"))
    evil = ok + MARK + lit(1) + lit((10 ** 6,)) + dtype_ops() + lit(False) + lit(b"x") + TUPLE \
        + BUILD
    root = write_batch(tmp_path, batch_program(evil))
    with pytest.raises(DatasetError, match="data_batch_1"):
        CIFAR10(root)


def test_reconstruct_without_build_is_refused():
    evil = call(glob("numpy._core.multiarray", "_reconstruct"), glob("numpy", "ndarray"),
                lit((0,)), lit(b"b"))
    with pytest.raises(UnsafePickleError, match="never given its data"):
        safe_pickle.load(batch_program(evil))


def test_refusals_are_value_errors_the_cli_reports_in_one_line(tmp_path):
    root = write_batch(tmp_path, batch_program(call(glob("os", "system"), lit("true"))))
    with pytest.raises(ValueError, match="data_batch_1.*os.system"):
        CIFAR10(root)


# --- real pickles load --------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("labels", ["ints", "numpy ints", "array"])
def test_cifar_batches_written_by_numpy_load_in_every_protocol(tmp_path, protocol, labels):
    root = tmp_path / "cifar-10-batches-py"
    batches = write_cifar_py(root, protocol=protocol)
    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    raw = rng.integers(0, 10, 3)
    as_labels = {"ints": [int(v) for v in raw], "numpy ints": [np.int64(v) for v in raw],
                 "array": raw.astype(np.int64)}[labels]
    d = {"batch_label": "b", "data": data, "labels": as_labels, "filenames": ["a", "b", "c"]}
    (root / "data_batch_2").write_bytes(pickle.dumps(d, protocol=protocol))
    ds = CIFAR10(root)
    np.testing.assert_array_equal(ds.images[4:7], cifar_rows_to_nhwc(data))
    np.testing.assert_array_equal(ds.labels[4:7], raw)
    np.testing.assert_array_equal(ds.images[:4], cifar_rows_to_nhwc(batches["data_batch_1"][0]))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_arrays_come_back_equal_fresh_and_writable(protocol):
    arrays = {"u8": np.arange(12, dtype=np.uint8).reshape(3, 4),
              "big": np.arange(6, dtype=">i4").reshape(2, 3),
              "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
              "empty": np.zeros((0, 3072), np.uint8), "empty1": np.zeros(0, np.float32),
              "bool": np.array([True, False]), "scalar": np.float32(2.5)}
    body = pickle.dumps(arrays, protocol=protocol)
    got = safe_pickle.load(body)
    for key, a in arrays.items():
        b = got[key]
        assert b.dtype == a.dtype and b.shape == a.shape, key
        np.testing.assert_array_equal(b, a)
        if isinstance(b, np.ndarray):
            assert b.flags.c_contiguous and b.flags.owndata and b.flags.writeable, key


def test_a_python2_cifar_pickle_with_str_pixels_loads():
    """Python 2 cPickle wrote the pixels as a str (SHORT_BINSTRING / BINSTRING), read as latin1."""
    pixels = bytes(range(256)) * 12
    py2_str = b"T" + struct.pack("<I", len(pixels)) + pixels
    data = reconstruct_ops((1, 3072), py2_str, dtype=dtype_ops(), core="numpy.core")
    got = safe_pickle.load(batch_program(data, lit([3], protocol=2)))
    assert got["data"].shape == (1, 3072) and got["data"].tobytes() == pixels
    assert got["labels"] == [3]


# --- memory bounded by the pickle's size (found by tests/test_fuzz_readers.py) -------------------

def test_a_huge_memo_index_is_refused_before_the_unpickler_sizes_its_memo():
    """LONG_BINPUT 190,000,000 in a 9 KB file made CPython's unpickler allocate ~1.5 GB."""
    import tracemalloc
    body = program(b"}" + b"r" + struct.pack("<I", 190_000_000) + MARK + lit("data") + lit(1)
                   + b"u", protocol=2)
    tracemalloc.start()
    try:
        with pytest.raises(UnsafePickleError, match="memo index 190000000"):
            safe_pickle.load(body)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 16 * 2 ** 20


def test_one_memoised_buffer_cannot_become_many_arrays():
    """BINGET of one 30 KB string a hundred times: 100 arrays would be 3 MB from a 30 KB file."""
    raw = lit(b"x" * 30_000) + b"q\x07"                        # the bytes, memoised as 7
    arrays = [call(glob("numpy._core.numeric", "_frombuffer"), raw if i == 0 else b"h\x07",
                   dtype_ops(), lit((30_000,)), lit("C")) for i in range(100)]
    body = program(b"]" + MARK + b"".join(arrays) + b"e")
    with pytest.raises(UnsafePickleError, match="exceed the size of the pickle"):
        safe_pickle.load(body)


def test_the_public_unpickler_class_returns_arrays_too():
    import io
    from tinyconv.data import RestrictedUnpickler
    a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for protocol in (2, 5):
        got = RestrictedUnpickler(io.BytesIO(pickle.dumps({"data": a}, protocol=protocol))).load()
        assert isinstance(got["data"], np.ndarray)
        np.testing.assert_array_equal(got["data"], a)


@pytest.mark.parametrize("labels", [[[1, 2], [3]], [1, [2]], "abc", [1.5, 2.5], [None, None]])
def test_labels_that_are_not_integers_are_a_dataset_error(tmp_path, labels):
    root = tmp_path / "cifar-10-batches-py"
    write_cifar_py(root, n=2)
    d = {"data": np.zeros((2, 3072), np.uint8), "labels": labels}
    (root / "data_batch_1").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(DatasetError, match="data_batch_1.*'labels'"):
        CIFAR10(root)
