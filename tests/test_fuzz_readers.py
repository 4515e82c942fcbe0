"""Fuzzing the readers of untrusted files: IDX (raw and gzipped), CIFAR pickles and binary
batches, model .npz files and their JSON headers.

Each case starts from a valid file and mutates it (flipped bytes, cuts, insertions, size fields
overwritten with extreme values), or writes an arbitrary JSON header. The promise checked: the
reader returns a valid result or raises one of tinyconv's own errors (DatasetError,
UnsafePickleError, ModelFileError) - never another exception - and its memory stays bounded
(tracemalloc peak). The default suite runs a short deterministic budget; `-m slow` runs longer.
"""
import gzip
import json
import os
import pickle
import struct
import tempfile
import tracemalloc

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from tinyconv import models  # noqa: E402
from tinyconv.data import DatasetError, UnsafePickleError, read_idx  # noqa: E402
from tinyconv.data import datasets  # noqa: E402
from tinyconv.serialize import HEADER_KEY, ModelFileError, load, save  # noqa: E402

OWN_ERRORS = (DatasetError, UnsafePickleError, ModelFileError)
PEAK_LIMIT = 64 * 2 ** 20      # every seed file is < 1 MB; a reader may not grow it to 64 MiB

SHORT = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=1500, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


# --- seed files ----------------------------------------------------------------------------------

def idx_seed():
    a = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    return bytes([0, 0, 8, 3]) + struct.pack(">3I", *a.shape) + a.tobytes()


def cifar_seed(protocol):
    rng = np.random.default_rng(0)
    d = {"batch_label": "b", "data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
         "labels": [1, np.int64(2)], "filenames": ["a.png", "b.png"]}
    return pickle.dumps(d, protocol=protocol)


def model_seed():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.npz")
        save(models.mnist_cnn(rng=np.random.default_rng(0)), path, classes=list("0123456789"),
             mean=[0.5], std=[0.25])
        with open(path, "rb") as f:
            return f.read()


SEEDS = {"idx": idx_seed(), "idx.gz": gzip.compress(idx_seed()), "cifar2": cifar_seed(2),
         "cifar5": cifar_seed(5), "cifar.bin": (bytes(range(256)) * 25)[:2 * 3073],
         "model": model_seed()}
EXTREMES = [b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x00", b"\x80\x00\x00\x00",
            b"\xff" * 8, b"\x7f\xff\xff\xff\xff\xff\xff\xff", b"\x01\x00\x00\x00"]


@st.composite
def mutated(draw, seed):
    """`seed` after 1..4 random edits."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "cut", "drop", "insert", "extreme"]))
        if op == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[i:]
        elif op == "drop":
            del data[i:i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            value = draw(st.sampled_from(EXTREMES))
            data[i:i + len(value)] = value
    return bytes(data)


def check(read, data, suffix=""):
    """read(path of a file holding `data`): a result or one of our errors, bounded memory."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "case" + suffix)
        with open(path, "wb") as f:
            f.write(data)
        tracemalloc.start()
        try:
            read(path)
        except OWN_ERRORS:
            pass
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    assert peak < PEAK_LIMIT, f"peak {peak / 2 ** 20:.0f} MiB"


READERS = {"idx": read_idx, "idx.gz": read_idx, "cifar2": datasets._cifar_py_batch,
           "cifar5": datasets._cifar_py_batch, "cifar.bin": datasets._cifar_bin_batch,
           "model": load}


def fuzz_file(kind, budget):
    @budget
    @given(data=mutated(SEEDS[kind]))
    def run(data):
        check(READERS[kind], data, ".npz" if kind == "model" else "")
    run()


# --- arbitrary JSON headers ----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False) |
    st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12)
HEADER_ENTRIES = ["format_version", "keys", "arch", "arch_args", "model_class", "meta",
                  "tinyconv_version"]


def write_with_header(path, changes):
    state = models.mnist_cnn(rng=np.random.default_rng(0)).state_dict()
    header = {"format": "tinyconv-model", "format_version": 1, "arch": "mnist_cnn",
              "arch_args": {"num_classes": 10}, "keys": list(state), "meta": {}}
    header.update(changes)
    np.savez(path, **state, **{HEADER_KEY: np.array(json.dumps(header))})


def fuzz_header(budget):
    @budget
    @given(changes=st.dictionaries(st.sampled_from(HEADER_ENTRIES), json_values, min_size=1,
                                   max_size=3))
    def run(changes):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.npz")
            write_with_header(path, changes)
            with open(path, "rb") as f:
                data = f.read()
        check(load, data, ".npz")
    run()


# --- the tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_fuzz_readers_short(kind):
    fuzz_file(kind, SHORT)


def test_fuzz_model_headers_short():
    fuzz_header(SHORT)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_fuzz_readers_long(kind):
    fuzz_file(kind, LONG)


@pytest.mark.slow
def test_fuzz_model_headers_long():
    fuzz_header(LONG)


def test_seeds_are_valid_files():
    """The mutations start from files every reader accepts."""
    for kind, data in SEEDS.items():
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "case" + (".npz" if kind == "model" else ""))
            with open(path, "wb") as f:
                f.write(data)
            READERS[kind](path)
