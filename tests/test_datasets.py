"""Dataset readers: round trips through files written here, and every way a file can be bad."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from tinyconv.data import (CIFAR10, MNIST, ArrayDataset, DatasetError, ImageFolder,
                           UnsafePickleError, read_idx, split)
from tinyconv.data import datasets as datasets_module

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


# --- helpers that write each format ---------------------------------------------------------------

def idx_bytes(array):
    """An IDX file for a uint8 array: 0, 0, type 0x08, ndim, then big-endian dims and the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root, n_train=12, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(arr)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (root / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
        out[prefix] = (images, labels)
    return out


def cifar_arrays(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n)


def write_cifar_py(root, n=4, protocol=2):
    """Six batches with the official keys; returns {stem: (data, labels)}."""
    root.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, stem in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = cifar_arrays(n, seed=i)
        d = {"batch_label": f"batch {i}", "labels": [int(v) for v in labels], "data": data,
             "filenames": [f"img{j}.png" for j in range(n)]}
        (root / stem).write_bytes(pickle.dumps(d, protocol=protocol))
        batches[stem] = (data, labels)
    names = [f"class{k}" for k in range(10)]
    meta = {"label_names": names, "num_cases_per_batch": n, "num_vis": 3072}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return batches


def write_cifar_bin(root, n=4):
    root.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, stem in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = cifar_arrays(n, seed=10 + i)
        records = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
        (root / (stem + ".bin")).write_bytes(records.tobytes())
        batches[stem] = (data, labels)
    (root / "batches.meta.txt").write_text("\n".join(f"name{k}" for k in range(10)) + "\n\n")
    return batches


def cut(path, keep):
    """Truncate a file to its first `keep` bytes (negative: drop that many from the end)."""
    raw = path.read_bytes()
    path.write_bytes(raw[:keep])


def cifar_rows_to_nhwc(data):
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


# --- MNIST / IDX ----------------------------------------------------------------------------------

def test_mnist_shipped_copy_has_reference_counts():
    ds = MNIST()
    assert ds.images.shape == (60000, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64
    assert np.bincount(ds.labels).tolist() == MNIST_TRAIN_COUNTS
    assert ds.classes == [str(d) for d in range(10)]
    img, label = ds[0]
    assert img.shape == (28, 28, 1) and label == 5
    assert len(MNIST(train=False)) == 10000


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_round_trip_raw_and_gzip(tmp_path, gz):
    written = write_mnist(tmp_path, gz=gz)
    for train, prefix in ((True, "train"), (False, "t10k")):
        ds = MNIST(tmp_path, train=train)
        images, labels = written[prefix]
        np.testing.assert_array_equal(ds.images[..., 0], images)
        np.testing.assert_array_equal(ds.labels, labels.astype(np.int64))


def test_read_idx_other_types_and_byte_order(tmp_path):
    a = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    path = tmp_path / "x.idx"
    path.write_bytes(bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 3, 4) + a.tobytes())
    out = read_idx(path)
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, np.arange(-6, 6).reshape(3, 4))


def test_idx_wrong_magic_names_file(tmp_path):
    path = tmp_path / "bad-idx"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(DatasetError, match="bad-idx.*not an IDX file"):
        read_idx(path)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated_or_trailing_bytes_names_file(tmp_path, gz):
    data = idx_bytes(np.zeros((5, 28, 28), np.uint8))
    for name, body, what in (("short", data[:-1], "truncated"),
                             ("long", data + b"\0", "trailing bytes"),
                             ("header", data[:10], "truncated IDX header")):
        path = tmp_path / name
        path.write_bytes(gzip.compress(body) if gz else body)
        with pytest.raises(DatasetError, match=f"{name}.*{what}"):
            read_idx(path)


def test_gzip_truncated_or_corrupt_names_file(tmp_path):
    packed = gzip.compress(idx_bytes(np.arange(4000, dtype=np.uint8).reshape(4, 1000) % 7))
    (tmp_path / "cut.gz").write_bytes(packed)
    cut(tmp_path / "cut.gz", len(packed) // 2)
    with pytest.raises(DatasetError, match="cut.gz.*gzip"):
        read_idx(tmp_path / "cut.gz")
    corrupt = bytearray(packed)
    corrupt[-6] ^= 0xFF          # inside the CRC32/size trailer
    (tmp_path / "crc.gz").write_bytes(bytes(corrupt))
    with pytest.raises(DatasetError, match="crc.gz.*gzip"):
        read_idx(tmp_path / "crc.gz")


def test_mnist_mismatched_counts_and_missing_files(tmp_path):
    write_mnist(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(11, np.uint8)))
    with pytest.raises(DatasetError, match="11 labels for 12 images"):
        MNIST(tmp_path)
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        MNIST(tmp_path / "nowhere", train=False)


def test_mnist_rejects_label_out_of_range(tmp_path):
    write_mnist(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(12, 10, np.uint8)))
    with pytest.raises(DatasetError, match="train-labels.*out of range"):
        MNIST(tmp_path)


# --- CIFAR-10 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_python_round_trip(tmp_path, protocol):
    batches = write_cifar_py(tmp_path / "cifar-10-batches-py", protocol=protocol)
    ds = CIFAR10(tmp_path)                     # the parent folder works too
    expected = np.concatenate([batches[f"data_batch_{k}"][0] for k in range(1, 6)])
    np.testing.assert_array_equal(ds.images, cifar_rows_to_nhwc(expected))
    np.testing.assert_array_equal(
        ds.labels, np.concatenate([batches[f"data_batch_{k}"][1] for k in range(1, 6)]))
    assert ds.images.shape == (20, 32, 32, 3) and ds.labels.dtype == np.int64
    assert ds.classes == [f"class{k}" for k in range(10)]
    test = CIFAR10(tmp_path / "cifar-10-batches-py", train=False)
    np.testing.assert_array_equal(test.images, cifar_rows_to_nhwc(batches["test_batch"][0]))


def test_cifar_python_pixel_layout_is_rgb_planes():
    """Row layout: 1024 red, 1024 green, 1024 blue values, each plane row-major."""
    data = np.zeros((1, 3072), np.uint8)
    data[0, 0], data[0, 1024 + 33], data[0, 2048 + 1023] = 10, 20, 30
    img = cifar_rows_to_nhwc(data)[0]
    assert img[0, 0, 0] == 10 and img[1, 1, 1] == 20 and img[31, 31, 2] == 30


def test_cifar_binary_round_trip(tmp_path):
    batches = write_cifar_bin(tmp_path / "cifar-10-batches-bin")
    ds = CIFAR10(tmp_path)
    expected = np.concatenate([batches[f"data_batch_{k}"][0] for k in range(1, 6)])
    np.testing.assert_array_equal(ds.images, cifar_rows_to_nhwc(expected))
    assert ds.classes == [f"name{k}" for k in range(10)]
    test = CIFAR10(tmp_path, train=False)
    np.testing.assert_array_equal(test.labels, batches["test_batch"][1])


def test_cifar_missing_batch_is_an_error_not_a_short_dataset(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    write_cifar_py(root)
    (root / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        CIFAR10(root)


def test_cifar_truncated_pickle_names_file(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    write_cifar_py(root)
    cut(root / "data_batch_2", (root / "data_batch_2").stat().st_size // 2)
    with pytest.raises(DatasetError, match="data_batch_2.*corrupt or truncated"):
        CIFAR10(root)


def test_cifar_foreign_pickle_content_names_file(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    write_cifar_py(root)
    (root / "data_batch_4").write_bytes(pickle.dumps({"data": np.zeros((2, 10), np.uint8),
                                                      "labels": [0, 1]}))
    with pytest.raises(DatasetError, match="data_batch_4.*3072"):
        CIFAR10(root)
    (root / "data_batch_4").write_bytes(b"this is not a pickle at all")
    with pytest.raises(DatasetError, match="data_batch_4"):
        CIFAR10(root)


def test_cifar_binary_wrong_size_names_file(tmp_path):
    root = tmp_path / "cifar-10-batches-bin"
    write_cifar_bin(root)
    cut(root / "data_batch_5.bin", -100)
    with pytest.raises(DatasetError, match="data_batch_5.bin.*3073-byte"):
        CIFAR10(root)


def test_cifar_binary_label_out_of_range(tmp_path):
    root = tmp_path / "cifar-10-batches-bin"
    write_cifar_bin(root)
    raw = bytearray((root / "data_batch_1.bin").read_bytes())
    raw[0] = 200
    (root / "data_batch_1.bin").write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="data_batch_1.bin.*out of range"):
        CIFAR10(root)


class _Evil:
    """Pickles as a call to `func(*args)`; loading it must never make that call."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("func, name", [(open, "io.open"), (os.system, "system"),
                                        (np.load, "numpy.load"), (eval, "builtin__.eval")])
def test_restricted_unpickler_refuses_other_globals(tmp_path, func, name):
    marker = tmp_path / "ran"
    args = {open: (str(marker), "w"), os.system: (f"touch {marker}",), np.load: (str(marker),),
            eval: (f"open({str(marker)!r}, 'w')",)}[func]
    root = tmp_path / "cifar-10-batches-py"
    write_cifar_py(root)
    payload = {"data": _Evil(func, args), "labels": [0]}
    (root / "data_batch_1").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UnsafePickleError, match=f"data_batch_1.*{name}"):
        CIFAR10(root)
    assert not marker.exists()


def test_restricted_unpickler_allows_codecs_encode_only_for_latin1(tmp_path):
    import codecs
    root = tmp_path / "cifar-10-batches-py"
    write_cifar_py(root)
    payload = {"data": _Evil(codecs.encode, ("abc", "rot13")), "labels": [0]}
    (root / "data_batch_1").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UnsafePickleError, match="rot13"):
        CIFAR10(root)


# --- image folders --------------------------------------------------------------------------------

def write_folder(root, ext, n_per_class=3, size=(6, 5), mode="RGB", seed=0):
    """root/<class>/<i>.<ext> for classes b_cat, a_dog (sorted order is a_dog, b_cat)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for cls in ("b_cat", "a_dog"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            shape = size + ((3,) if mode == "RGB" else ())
            a = rng.integers(0, 256, shape, dtype=np.uint8)
            path = root / cls / f"{i:02d}.{ext}"
            Image.fromarray(a, mode=mode).save(path, quality=95) if ext == "jpg" \
                else Image.fromarray(a, mode=mode).save(path)
            arrays[str(path)] = a
    return arrays


def test_image_folder_png_round_trip_exact(tmp_path):
    arrays = write_folder(tmp_path, "png")
    (tmp_path / "a_dog" / ".hidden.png").write_bytes(b"junk")        # hidden: skipped
    (tmp_path / "a_dog" / "notes.txt").write_text("not an image")     # not an image: skipped
    (tmp_path / ".git").mkdir()                                       # hidden folder: no class
    ds = ImageFolder(tmp_path, cache=False)
    assert ds.classes == ["a_dog", "b_cat"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.images.shape == (6, 6, 5, 3)
    for img, f in zip(ds.images, ds.files):
        np.testing.assert_array_equal(img, arrays[f])


def test_image_folder_jpeg_matches_pillow_decode(tmp_path):
    write_folder(tmp_path, "jpg", size=(8, 8))
    ds = ImageFolder(tmp_path, cache=False, num_workers=2)
    for img, f in zip(ds.images, ds.files):
        np.testing.assert_array_equal(img, np.asarray(Image.open(f).convert("RGB")))


def test_image_folder_grey_stays_one_channel_and_mixed_becomes_rgb(tmp_path):
    arrays = write_folder(tmp_path / "grey", "png", mode="L")
    grey = ImageFolder(tmp_path / "grey", cache=False)
    assert grey.images.shape == (6, 6, 5, 1)
    np.testing.assert_array_equal(grey.images[0, ..., 0], arrays[grey.files[0]])
    write_folder(tmp_path / "grey", "jpg", n_per_class=1, mode="RGB", seed=1)
    mixed = ImageFolder(tmp_path / "grey", cache=False)
    assert mixed.images.shape == (8, 6, 5, 3)
    i = mixed.files.index(grey.files[0])
    np.testing.assert_array_equal(mixed.images[i], np.repeat(arrays[grey.files[0]][..., None], 3,
                                                             axis=2))


def test_image_folder_resizes_and_requires_size_for_mixed_sizes(tmp_path):
    write_folder(tmp_path, "png", size=(6, 5))
    Image.fromarray(np.zeros((9, 7, 3), np.uint8)).save(tmp_path / "b_cat" / "big.png")
    with pytest.raises(DatasetError, match="big.png.*size="):
        ImageFolder(tmp_path, cache=False)
    ds = ImageFolder(tmp_path, size=4, cache=False)
    assert ds.images.shape == (7, 4, 4, 3)
    ds = ImageFolder(tmp_path, size=(3, 8), cache=False)
    assert ds.images.shape == (7, 3, 8, 3)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_image_folder_corrupt_or_truncated_file_names_it(tmp_path, ext):
    write_folder(tmp_path, ext, size=(16, 16))
    victim = tmp_path / "b_cat" / f"01.{ext}"
    cut(victim, victim.stat().st_size // 2)
    with pytest.raises(DatasetError, match=f"01.{ext}"):
        ImageFolder(tmp_path, cache=False)
    victim.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DatasetError, match=f"01.{ext}.*cannot decode"):
        ImageFolder(tmp_path, cache=False)


def test_image_folder_without_classes_or_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="no class folders"):
        ImageFolder(tmp_path, cache=False)
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no image files"):
        ImageFolder(tmp_path, cache=False)


def test_image_folder_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_folder(data, "png")
    first = ImageFolder(data, cache=cache)
    assert len(list(cache.glob("*.npy"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded although the cache is valid")
    monkeypatch.setattr(datasets_module, "_decode_all", no_decoding)
    second = ImageFolder(data, cache=cache)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)
    monkeypatch.undo()

    victim = data / "a_dog" / "00.png"
    Image.fromarray(np.full((6, 5, 3), 7, np.uint8)).save(victim)
    os.utime(victim, ns=(1, 1))                   # a different mtime even on a coarse clock
    third = ImageFolder(data, cache=cache)
    assert (third.images[0] == 7).all()


def test_image_folder_ignores_a_corrupt_cache(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_folder(data, "png")
    first = ImageFolder(data, cache=cache)
    (npy,) = cache.glob("*.npy")
    npy.write_bytes(b"\x93NUMPY garbage")
    with pytest.warns(UserWarning, match="cache"):
        again = ImageFolder(data, cache=cache)
    np.testing.assert_array_equal(first.images, again.images)


# --- split and ArrayDataset -----------------------------------------------------------------------

def small_dataset(n=50):
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
    files = [f"f{i}" for i in range(n)]
    return ArrayDataset(images, np.arange(n) % 3, ["a", "b", "c"], files=files)


def test_split_partitions_deterministically():
    ds = small_dataset()
    train, valid = split(ds, valid_pct=0.2, seed=3)
    assert len(train) == 40 and len(valid) == 10
    ids_t, ids_v = train.images[:, 0, 0, 0], valid.images[:, 0, 0, 0]
    assert sorted(np.concatenate([ids_t, ids_v]).tolist()) == list(range(50))
    assert np.all(np.diff(ids_t) > 0) and np.all(np.diff(ids_v) > 0)   # original order kept
    np.testing.assert_array_equal(train.labels, ids_t % 3)
    assert train.files == [f"f{i}" for i in ids_t] and valid.classes == ["a", "b", "c"]
    again_t, _ = split(ds, valid_pct=0.2, seed=3)
    np.testing.assert_array_equal(again_t.images, train.images)
    other_t, _ = split(ds, valid_pct=0.2, seed=4)
    assert not np.array_equal(other_t.images, train.images)


def test_split_rejects_bad_fractions():
    for pct in (0.0, 1.0, -0.1, 0.001):
        with pytest.raises(ValueError, match="split"):
            split(small_dataset(), valid_pct=pct)


def test_array_dataset_checks_shapes_and_labels():
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset(np.zeros((2, 3, 3, 1), np.float32), [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="labels must be \\(2,\\)"):
        ArrayDataset(np.zeros((2, 3, 3, 1), np.uint8), [0, 1, 1], ["a", "b"])
    with pytest.raises(ValueError, match="2 classes"):
        ArrayDataset(np.zeros((2, 3, 3, 1), np.uint8), [0, 2], ["a", "b"])


def test_image_folder_refuses_an_empty_class_folder(tmp_path):
    (tmp_path / "cat").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "cat" / "0.png")
    (tmp_path / "dog").mkdir()
    with pytest.raises(FileNotFoundError, match="dog"):
        ImageFolder(tmp_path, cache=False)
