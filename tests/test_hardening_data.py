"""Data files under attack: memory stays bounded by what the header declares and what the
consumer needs, and every malformed file is a DatasetError naming the file."""
import gzip
import struct

import pytest

from tinyconv.data import CIFAR10, DatasetError, read_idx

from test_hardening_files import peak_mib


def idx_gz_bomb(path, n_images, declared):
    """An IDX images file (28x28 uint8) declaring `declared` images whose gzip holds n_images."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", declared, 28, 28))
        block = bytes(28 * 28 * 1000)
        for _ in range(n_images // 1000):
            f.write(block)


def test_an_idx_gzip_holding_more_than_its_header_declares_stops_decompressing(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    idx_gz_bomb(path, n_images=200_000, declared=10)      # 157 MB of zeros behind a 10-image header
    assert path.stat().st_size < 2 * 2 ** 20
    with pytest.raises(DatasetError, match=r"train-images.*trailing bytes: header declares "
                                           r"shape \(10, 28, 28\)"):
        read_idx(path)
    assert peak_mib(lambda: read_idx(path)) < 32


def test_an_idx_gzip_declaring_more_than_it_holds_is_refused_without_allocating(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    idx_gz_bomb(path, n_images=1000, declared=2 ** 31)    # a 1.6 TB declaration
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(path)
    assert peak_mib(lambda: read_idx(path)) < 32


def test_a_gzip_bomb_in_place_of_a_cifar_batch_is_refused(tmp_path):
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    for stem in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        with gzip.open(root / f"{stem}.bin", "wb", compresslevel=1) as f:
            block = bytes(3073 * 1000)
            for _ in range(100 if stem == "data_batch_1" else 1):    # 307 MB: 3x a real batch
                f.write(block)
    with pytest.raises(DatasetError, match=r"data_batch_1.bin: holds more than 67,108,864 "
                                           r"bytes once decompressed"):
        CIFAR10(root)
    assert peak_mib(lambda: CIFAR10(root)) < 200


def test_image_folder_cache_sees_a_file_rewritten_with_the_same_size_and_mtime(tmp_path):
    """The cache key holds ctime and inode too: restoring the mtime does not hide a rewrite."""
    import os
    import numpy as np
    from PIL import Image
    from tinyconv.data import ImageFolder
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "imgs" / c / "0.bmp")
    target = tmp_path / "imgs" / "a" / "0.bmp"
    first = ImageFolder(tmp_path / "imgs", cache=tmp_path / "cache")
    st = target.stat()
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(target)   # BMP: same size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    second = ImageFolder(tmp_path / "imgs", cache=tmp_path / "cache")
    assert first.images[0].max() == 0 and second.images[0].min() == 255
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    assert not list((tmp_path / "cache").glob(".*.tmp"))
