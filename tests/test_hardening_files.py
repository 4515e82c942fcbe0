"""Model files under attack: memory stays bounded by what the file really holds, and every
malformed file is a ModelFileError naming the file."""
import json
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from tinyconv import models
from tinyconv.serialize import HEADER_KEY, ModelFileError, load, read_model_file, save


@pytest.fixture
def small_model_file(tmp_path):
    path = tmp_path / "net.npz"
    save(models.resnet9(num_classes=3, width=4, rng=np.random.default_rng(0)), path,
         classes=["a", "b", "c"], mean=[0.5] * 3, std=[0.25] * 3)
    return path


def rewrite(path, state, header):
    np.savez(path, **state, **{HEADER_KEY: np.array(json.dumps(header))})


def npy_header(shape, descr="<f4"):
    """The bytes of a version-1.0 .npy header for `shape`, padded as NumPy pads it."""
    text = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    text += " " * (63 - (10 + len(text)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def peak_mib(fn):
    """Peak memory NumPy and Python allocate while fn() runs, in MiB."""
    tracemalloc.start()
    try:
        fn()
    except ValueError:      # ModelFileError, DatasetError: the refusal being measured
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2 ** 20


# --- model files: memory bounded by the file --------------------------------------------------

def test_a_zip_bomb_member_is_refused_before_decompressing(small_model_file):
    state, header = read_model_file(small_model_file)
    header["keys"].append("bomb")
    rewrite(small_model_file, state, header)
    n = 256 * 2 ** 20                                    # 256 MiB of zeros, a few hundred KB zipped
    with zipfile.ZipFile(small_model_file, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("bomb.npy", "w", force_zip64=True) as f:
            f.write(npy_header((n // 4,)))
            chunk = bytes(2 ** 20)
            for _ in range(n // len(chunk)):
                f.write(chunk)
    size = small_model_file.stat().st_size
    assert size < 2 * 2 ** 20
    with pytest.raises(ModelFileError, match=r"net\.npz: declares [\d,]+ bytes of arrays but "
                                             r"the file holds only"):
        load(small_model_file)
    assert peak_mib(lambda: load(small_model_file)) < 32


def test_a_member_declaring_more_than_it_holds_is_refused(small_model_file):
    """A .npy header claiming (10**9,) floats over a few bytes: refused, nothing allocated."""
    state, header = read_model_file(small_model_file)
    with zipfile.ZipFile(small_model_file, "a") as zf:
        zf.writestr("huge.npy", npy_header((10 ** 9,)) + b"\0" * 16)
    header["keys"].append("huge")
    with zipfile.ZipFile(small_model_file) as zf:
        contents = {n: zf.read(n) for n in zf.namelist() if n != f"{HEADER_KEY}.npy"}
    with zipfile.ZipFile(small_model_file, "w") as zf:
        for name, data in contents.items():
            zf.writestr(name, data)
        with zf.open(f"{HEADER_KEY}.npy", "w") as f:
            np.lib.format.write_array(f, np.array(json.dumps(header)))
    with pytest.raises(ModelFileError, match=r"'huge.npy' declares shape \(1000000000,\) of "
                                             r"float32 \(4,000,000,000 bytes\) but its member "
                                             r"holds 16 bytes"):
        load(small_model_file)
    assert peak_mib(lambda: load(small_model_file)) < 32


def test_a_header_asking_for_a_bigger_net_than_its_weights_is_refused_before_building(
        small_model_file, monkeypatch):
    state, header = read_model_file(small_model_file)
    header["arch_args"]["width"] = 4096
    rewrite(small_model_file, state, header)

    def spy(*args, **kwargs):
        raise AssertionError(f"built a net from an oversized header: {args} {kwargs}")
    monkeypatch.setattr(models, "build", spy)
    with pytest.raises(ModelFileError, match=r"asks for resnet9\(.*'width': 4096.*largest "
                                             r"dimension of the \d+ stored arrays is 32"):
        load(small_model_file)


def test_saved_zoo_nets_still_load(tmp_path):
    rng = np.random.default_rng(0)
    for net in (models.mnist_cnn(rng=rng), models.resnet9(num_classes=7, width=8, rng=rng)):
        path = tmp_path / "m.npz"
        save(net, path)
        again = load(path)
        for (k, a), (k2, b) in zip(net.state_dict().items(), again.state_dict().items()):
            assert k == k2 and a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


# --- model files: malformed headers and members are ModelFileError -----------------------------

@pytest.mark.parametrize("entry, value, words", [
    ("arch_args", [1, 2], "'arch_args' must be an object"),
    ("meta", "classes", "'meta' must be an object"),
    ("keys", "0.0.weight", "'keys' must be a list"),
    ("keys", [1, 2], "'keys' must list distinct array names"),
    ("format_version", "1", "'format_version' must be an integer"),
    ("arch", 7, "'arch' must be a name"),
])
def test_wrong_json_types_in_the_header(small_model_file, entry, value, words):
    state, header = read_model_file(small_model_file)
    header[entry] = value
    rewrite(small_model_file, state, header)
    with pytest.raises(ModelFileError, match=rf"net\.npz: header entry {words}"):
        load(small_model_file)


def test_a_deeply_nested_header_is_refused(small_model_file):
    state, _ = read_model_file(small_model_file)
    np.savez(small_model_file, **state, **{HEADER_KEY: np.array("[" * 100_000 + "]" * 100_000)})
    with pytest.raises(ModelFileError, match="net.npz: its header nests too deeply"):
        load(small_model_file)


@pytest.mark.parametrize("bad", [
    np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")]),          # structured
    np.zeros(3, dtype="<U4"),                                 # text
    np.zeros(3, dtype="<c8"),                                 # complex
    np.zeros(3, dtype="<M8[s]"),                              # datetime
], ids=["structured", "unicode", "complex", "datetime"])
def test_members_of_other_dtypes_are_refused(small_model_file, bad):
    state, header = read_model_file(small_model_file)
    state["0.0.weight"] = bad
    rewrite(small_model_file, state, header)
    with pytest.raises(ModelFileError, match=r"'0.0.weight.npy' has dtype .* a model file holds "
                                             r"only booleans, integers or floats"):
        load(small_model_file)


@pytest.mark.parametrize("cut", [1, 10, 200])
def test_a_truncated_npy_member_is_refused(small_model_file, cut):
    with zipfile.ZipFile(small_model_file) as zf:
        contents = {n: zf.read(n) for n in zf.namelist()}
    contents["0.0.weight.npy"] = contents["0.0.weight.npy"][:-cut]
    with zipfile.ZipFile(small_model_file, "w") as zf:
        for name, data in contents.items():
            zf.writestr(name, data)
    with pytest.raises(ModelFileError, match=r"net\.npz: array '0.0.weight.npy'"):
        load(small_model_file)


def test_fortran_and_big_endian_members_load_as_native_c_arrays(small_model_file):
    state, header = read_model_file(small_model_file)
    w = state["0.0.weight"]
    state["0.0.weight"] = np.asfortranarray(w.astype(">f4"))
    rewrite(small_model_file, state, header)
    got, _ = read_model_file(small_model_file)
    a = got["0.0.weight"]
    np.testing.assert_array_equal(a, w)
    assert a.dtype == np.float32 and a.dtype.isnative and a.flags.c_contiguous
