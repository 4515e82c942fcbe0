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


# --- item 8: an interrupted save leaves nothing behind on the next run ----------------------------

def dead_pid():
    import os
    for pid in range(4_000_000, 4_100_000):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    pytest.skip("no free pid found")


def test_the_next_save_removes_temporaries_of_interrupted_saves(small_model_file):
    import os
    import time
    folder, name = small_model_file.parent, small_model_file.name
    crashed = folder / f".{name}.{dead_pid()}-0123abcd.tmp"          # its writer is gone
    old_style = folder / f".{name}.0123456789ab.tmp"                 # pid-less, two hours old
    live = folder / f".{name}.{os.getpid()}-89abcdef.tmp"            # a write in progress
    recent = folder / f".{name}.ba9876543210.tmp"                    # pid-less, just written
    other = folder / f".other.npz.{dead_pid()}-0123abcd.tmp"         # another target's
    mine_not = folder / f".{name}.notes.tmp"                         # not tinyconv's pattern
    for p in (crashed, old_style, live, recent, other, mine_not):
        p.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old_style, (two_hours_ago, two_hours_ago))
    save(models.mnist_cnn(rng=np.random.default_rng(0)), small_model_file)
    assert not crashed.exists() and not old_style.exists()
    assert live.exists() and recent.exists() and other.exists() and mine_not.exists()
    leftovers = sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))
    assert leftovers == sorted(p.name for p in (live, recent, other, mine_not))


def test_a_killed_writer_leaves_a_temporary_the_next_save_removes(small_model_file):
    """SIGKILL a process in the middle of atomic_write; the next save cleans up after it."""
    import os
    import signal
    import subprocess
    import sys
    code = (f"import time; from tinyconv.serialize import atomic_write\n"
            f"def slow(f):\n    f.write(b'x' * 1000); f.flush(); print('writing', flush=True); "
            f"time.sleep(60)\n"
            f"atomic_write({str(small_model_file)!r}, slow)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert proc.stdout.readline().strip() == b"writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    folder = small_model_file.parent
    assert [p for p in folder.iterdir() if p.name.endswith(".tmp")]    # what the kill left
    load(small_model_file)                                             # the old file is intact
    save(models.mnist_cnn(rng=np.random.default_rng(0)), small_model_file)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_checkpoint_with_a_bomb_in_its_optimizer_state_is_refused(tmp_path):
    """Learner.load reads the optimizer arrays itself, after read_model_file has checked every
    member of the archive (not only the model's)."""
    import tinyconv as tc
    from tinyconv.learner import Learner
    from tinyconv.data import ArrayDataset, DataLoader
    rng = np.random.default_rng(0)
    ds = ArrayDataset(rng.integers(0, 256, (8, 28, 28, 1), dtype=np.uint8), np.arange(8) % 10,
                      [str(d) for d in range(10)])
    dl = DataLoader(ds, batch_size=4)
    learn = Learner(models.mnist_cnn(rng=rng), dl, dl, silent=True,
                    opt_func=lambda params, **kw: tc.optim.SGD(params, momentum=0.9, **kw))
    learn.fit(1, lr=0.01)
    path = tmp_path / "ckpt.npz"
    learn.save(path)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("__opt__/0/bomb.npy", "w", force_zip64=True) as f:
            f.write(npy_header((64 * 2 ** 20,)))
            for _ in range(256):
                f.write(bytes(2 ** 20))
    with pytest.raises(ModelFileError, match="declares [\\d,]+ bytes of arrays"):
        learn.load(path)
    assert peak_mib(lambda: learn.load(path)) < 32
