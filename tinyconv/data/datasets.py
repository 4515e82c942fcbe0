"""Datasets: whole image collections held in memory as uint8 arrays.

Every dataset here is an `ArrayDataset`: `images` (N, H, W, C) uint8, `labels` (N,) int64 and
`classes` (a list of names, `labels` index into it). Holding the decoded pixels as one array is what
makes batching and augmentation fast: a batch is `images[idx]`, no per-item Python.

Readers for the formats people actually have:

- `MNIST`: the IDX files of LeCun et al. (gzipped or not); `root=None` reads the copy shipped in the
  package, so the default run needs no download.
- `CIFAR10`: the official `cifar-10-batches-py` pickles (read with an unpickler that only knows the
  handful of NumPy globals those files need, so a malicious file cannot run code) or
  `cifar-10-batches-bin`.
- `ImageFolder`: `root/<class>/<image>` decoded with Pillow, with an `.npy` cache so the second run
  skips decoding.

A truncated, corrupt or foreign file raises `DatasetError` naming the file: never a hang, never a
silently short dataset.
"""
import contextlib
import gzip
import hashlib
import json
import math
import os
import pickle
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tinyconv.data import safe_pickle
from tinyconv.data.safe_pickle import RestrictedUnpickler, UnsafePickleError

__all__ = ["DatasetError", "UnsafePickleError", "RestrictedUnpickler", "ArrayDataset", "MNIST",
           "CIFAR10", "ImageFolder", "split", "read_idx", "decode_image", "IMAGE_EXTENSIONS",
           "default_cache_dir"]

MNIST_DIR = Path(__file__).resolve().parent / "mnist"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm")


class DatasetError(ValueError):
    """A data file is missing, truncated, corrupt or not in the expected format."""


# --------------------------------------------------------------------------------------------------
# The one in-memory dataset type
# --------------------------------------------------------------------------------------------------

class ArrayDataset:
    """Images and integer labels held as arrays.

    images (N, H, W, C) uint8, labels (N,) int64 in [0, len(classes)), classes list[str];
    files (optional) list of N source paths, kept by `ImageFolder` for reports such as top losses.
    `ds[i]` -> (image (H, W, C) uint8, label int).
    """

    def __init__(self, images, labels, classes, files=None):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"ArrayDataset: images must be (N, H, W, C) uint8, "
                             f"got shape {images.shape} dtype {images.dtype}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"ArrayDataset: labels must be ({images.shape[0]},) to match images "
                             f"{images.shape}, got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"ArrayDataset: labels must be integers, got dtype {labels.dtype}")
        classes = [str(c) for c in classes]
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"ArrayDataset: labels span [{labels.min()}, {labels.max()}] but "
                             f"there are {len(classes)} classes")
        if files is not None and len(files) != images.shape[0]:
            raise ValueError(f"ArrayDataset: {len(files)} files for {images.shape[0]} images")
        self.images = images
        self.labels = labels.astype(np.int64, copy=False)
        self.classes = classes
        self.files = None if files is None else [str(f) for f in files]

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])

    def subset(self, indices):
        """A new ArrayDataset of the items at `indices` (copies the pixels)."""
        indices = np.asarray(indices, dtype=np.int64)
        files = None if self.files is None else [self.files[i] for i in indices]
        return ArrayDataset(self.images[indices], self.labels[indices], self.classes, files)

    def __repr__(self):
        N, H, W, C = self.images.shape
        return (f"{type(self).__name__}({N} images of {H}x{W}x{C}, "
                f"{len(self.classes)} classes)")


def split(dataset, valid_pct=0.1, seed=0):
    """Random split into (train, valid) ArrayDatasets; valid holds round(valid_pct * N) items.

    `seed` is an int or a np.random.Generator. Each part keeps the original item order.
    """
    if not 0.0 < valid_pct < 1.0:
        raise ValueError(f"split: valid_pct must be in (0, 1), got {valid_pct}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    n = len(dataset)
    n_valid = int(round(valid_pct * n))
    if n_valid == 0 or n_valid == n:
        raise ValueError(f"split: valid_pct={valid_pct} of {n} items leaves an empty part")
    perm = rng.permutation(n)
    return dataset.subset(np.sort(perm[n_valid:])), dataset.subset(np.sort(perm[:n_valid]))


_CHUNK = 16 * 2 ** 20


def _open_data(path):
    """`path` opened for reading, through gzip when it starts with the gzip magic (not trusting
    the name)."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        return gzip.GzipFile(fileobj=f, mode="rb"), f
    f.seek(0)
    return f, f


def _read_at_most(path, f, n):
    """Up to `n` bytes of `f`, read in chunks: memory follows what the file really holds, never
    what a header claims it holds."""
    buf = bytearray()
    try:
        while len(buf) < n:
            chunk = f.read(min(_CHUNK, n - len(buf)))
            if not chunk:
                break
            buf += chunk
    except (EOFError, OSError, zlib.error) as e:   # truncated stream, bad CRC, corrupt deflate
        raise DatasetError(f"{path}: corrupt or truncated gzip file ({e})") from e
    return bytes(buf)


def _read_bytes(path, limit):
    """The file's bytes (gunzipped if gzip), refusing a file that holds more than `limit` bytes
    before reading past the limit: a small .gz can decompress to gigabytes."""
    f, raw = _open_data(path)
    with raw:
        data = _read_at_most(path, f, limit + 1)
    if len(data) > limit:
        raise DatasetError(f"{path}: holds more than {limit:,} bytes"
                           f"{' once decompressed' if f is not raw else ''}, more than this "
                           f"format ever needs; refusing to read it")
    return data


# --------------------------------------------------------------------------------------------------
# MNIST (IDX files)
# --------------------------------------------------------------------------------------------------

# IDX header: 2 zero bytes, a type code, the number of dimensions; then a big-endian int32 per dim.
_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path):
    """Read an IDX file (gzipped or raw) into an array of the shape its header declares.

    Raises DatasetError naming the file on a wrong magic number or a size that does not match the
    header (truncated or with trailing bytes). Reads at most one byte more than the header
    declares, so a gzip bomb behind a small header is never decompressed.
    """
    f, raw = _open_data(path)
    with raw:
        head = _read_at_most(path, f, 4)
        if len(head) < 4:
            raise DatasetError(f"{path}: {len(head)} bytes is too short for an IDX header")
        zero, code, ndim = head[:2], head[2], head[3]
        if zero != b"\x00\x00" or code not in _IDX_TYPES or ndim == 0:
            raise DatasetError(f"{path}: not an IDX file (magic bytes {head.hex()}, expected "
                               f"0000 then a type code in {sorted(_IDX_TYPES)} and ndim >= 1)")
        dims = _read_at_most(path, f, 4 * ndim)
        if len(dims) < 4 * ndim:
            raise DatasetError(f"{path}: truncated IDX header ({4 + len(dims)} bytes, need "
                               f"{4 + 4 * ndim})")
        shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
        dtype = _IDX_TYPES[code]
        expected = math.prod(shape) * dtype.itemsize      # Python ints: no overflow
        data = _read_at_most(path, f, expected + 1)       # one byte more tells trailing bytes
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        got = f"{len(data)} bytes" if len(data) <= expected else f"more than {expected} bytes"
        raise DatasetError(f"{path}: {what}: header declares shape {shape} ({expected:,} bytes "
                           f"of data) but the file has {got} after its header")
    # copy: a writable array that owns its memory, in native byte order
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _find_mnist_file(root, prefix, kind):
    """Path of e.g. train-images-idx3-ubyte(.gz) in root (also the common '.idx3' spelling)."""
    ndim = 3 if kind == "images" else 1
    names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    for name in names:
        for candidate in (root / name, root / (name + ".gz")):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"MNIST: no {names[0]}(.gz) in {root}")


class MNIST(ArrayDataset):
    """MNIST digits: images (N, 28, 28, 1) uint8, labels (N,) int64, classes '0'..'9'.

    root: a folder with the four IDX files (gzipped or not); None uses the copy in the package.
    train: the 60,000 training images, else the 10,000 test images.
    """

    def __init__(self, root=None, train=True):
        root = MNIST_DIR if root is None else Path(root)
        prefix = "train" if train else "t10k"
        img_path = _find_mnist_file(root, prefix, "images")
        lbl_path = _find_mnist_file(root, prefix, "labels")
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DatasetError(f"{img_path}: expected (N, H, W) uint8 images, "
                               f"got {images.shape} {images.dtype}")
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise DatasetError(f"{lbl_path}: expected (N,) uint8 labels, "
                               f"got {labels.shape} {labels.dtype}")
        if labels.shape[0] != images.shape[0]:
            raise DatasetError(f"{lbl_path}: {labels.shape[0]} labels for {images.shape[0]} "
                               f"images in {img_path}")
        if labels.size and labels.max() > 9:
            raise DatasetError(f"{lbl_path}: label {labels.max()} out of range 0..9")
        super().__init__(images[..., None], labels.astype(np.int64), [str(d) for d in range(10)])
        self.root = root


# --------------------------------------------------------------------------------------------------
# CIFAR-10 (python pickles or binary records)
# --------------------------------------------------------------------------------------------------

# A batch holds 10,000 images: 30.7 MB as binary records, 31 MB as a pickle. Twice that bounds
# what one batch file may make us read (a 1 MB .gz of zeros could otherwise decompress to GBs).
CIFAR_MAX_BYTES = 64 * 2 ** 20

def _load_pickle(path):
    """The pickle at `path` via `safe_pickle.load`: no code runs, arrays are fresh copies."""
    data = _read_bytes(path, CIFAR_MAX_BYTES)
    try:
        return safe_pickle.load(data)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except pickle.UnpicklingError as e:
        raise DatasetError(f"{path}: corrupt or truncated pickle ({e})") from e
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            MemoryError, OverflowError) as e:
        raise DatasetError(f"{path}: corrupt or truncated pickle ({type(e).__name__}: {e})") from e


def _cifar_py_batch(path):
    """(images (N, 32, 32, 3) uint8, labels (N,) int64) from one python-format batch."""
    d = _load_pickle(path)
    if not isinstance(d, dict):
        raise DatasetError(f"{path}: expected a dict, got {type(d).__name__}")
    d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DatasetError(f"{path}: missing 'data' or 'labels' (keys: {sorted(map(str, d))})")
    data = d["data"]
    try:
        labels = np.asarray(d["labels"])
    except (ValueError, TypeError, OverflowError) as e:    # ragged or exotic nested values
        raise DatasetError(f"{path}: 'labels' is not a list of integers ({e})") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DatasetError(f"{path}: 'data' must be (N, 3072) uint8, got {shape} "
                           f"{getattr(data, 'dtype', type(data).__name__)}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: 'labels' must be {data.shape[0]} integers, "
                           f"got shape {labels.shape} dtype {labels.dtype}")
    return data, labels


def _cifar_bin_batch(path):
    """One binary batch: records of 1 label byte + 3072 pixel bytes (R, G, B planes, rows)."""
    raw = _read_bytes(path, CIFAR_MAX_BYTES)
    if len(raw) == 0 or len(raw) % 3073:
        raise DatasetError(f"{path}: {len(raw)} bytes is not a whole number of 3073-byte "
                           f"CIFAR-10 records (truncated or not a CIFAR-10 binary batch)")
    records = np.frombuffer(raw, np.uint8).reshape(-1, 3073)
    return records[:, 1:], records[:, 0].astype(np.int64)


class CIFAR10(ArrayDataset):
    """CIFAR-10: images (N, 32, 32, 3) uint8, labels (N,) int64, the 10 class names.

    root: a `cifar-10-batches-py` or `cifar-10-batches-bin` folder, or a folder containing one.
    train: data_batch_1..5 (50,000 images), else test_batch (10,000). Every batch file must be
    present and whole.
    """

    def __init__(self, root, train=True):
        root = Path(root)
        for sub in ("cifar-10-batches-py", "cifar-10-batches-bin"):
            if not (root / "data_batch_1").exists() and not (root / "data_batch_1.bin").exists() \
                    and (root / sub).is_dir():
                root = root / sub
        stems = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        if (root / "data_batch_1").exists() or (root / "batches.meta").exists():
            paths, read = [root / s for s in stems], _cifar_py_batch
        elif (root / "data_batch_1.bin").exists() or (root / "batches.meta.txt").exists():
            paths, read = [root / (s + ".bin") for s in stems], _cifar_bin_batch
        else:
            raise FileNotFoundError(f"CIFAR10: {root} has neither cifar-10-batches-py files "
                                    f"(data_batch_1, ...) nor cifar-10-batches-bin files "
                                    f"(data_batch_1.bin, ...)")
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"CIFAR10: missing batch files {missing}")
        parts = [read(p) for p in paths]
        data = np.concatenate([d for d, _ in parts])
        labels = np.concatenate([lab for _, lab in parts]).astype(np.int64)
        for p, (_, lab) in zip(paths, parts):
            if lab.size and (lab.min() < 0 or lab.max() > 9):
                raise DatasetError(f"{p}: label {lab.max()} out of range 0..9")
        # the rows store 3 colour planes of 32x32; NHWC is what augmentation and display want
        images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        super().__init__(images, labels, self._class_names(root, read is _cifar_py_batch))
        self.root = root

    @staticmethod
    def _class_names(root, python_format):
        if python_format and (root / "batches.meta").is_file():
            meta = _load_pickle(root / "batches.meta")
            names = meta.get("label_names", meta.get(b"label_names")) \
                if isinstance(meta, dict) else None
            if names is None or len(names) != 10:
                raise DatasetError(f"{root / 'batches.meta'}: no list of 10 'label_names'")
            return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        if not python_format and (root / "batches.meta.txt").is_file():
            names = [s.strip() for s in (root / "batches.meta.txt").read_text().splitlines()]
            names = [s for s in names if s]
            if len(names) != 10:
                raise DatasetError(f"{root / 'batches.meta.txt'}: expected 10 class names, "
                                   f"got {len(names)}")
            return names
        return list(CIFAR10_CLASSES)


# --------------------------------------------------------------------------------------------------
# Image folders (Pillow) with an .npy cache
# --------------------------------------------------------------------------------------------------

def default_cache_dir():
    """$TINYCONV_CACHE, else $XDG_CACHE_HOME/tinyconv, else ~/.cache/tinyconv."""
    if os.environ.get("TINYCONV_CACHE"):
        return Path(os.environ["TINYCONV_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tinyconv"


def _is_visible(name):
    return not name.startswith(".")


def _scan_folder(root):
    """(classes, [(path, class_index, size_bytes, stamp)]) with classes and files sorted.

    stamp = (mtime_ns, ctime_ns, inode): a file rewritten in place with the same size and its
    mtime set back still changes ctime, and a file replaced by another changes the inode."""
    try:
        class_dirs = sorted((e for e in os.scandir(root) if e.is_dir() and _is_visible(e.name)),
                            key=lambda e: e.name)
    except OSError as e:
        raise FileNotFoundError(f"ImageFolder: cannot list {root} ({e})") from e
    classes, items = [], []
    for k, d in enumerate(class_dirs):
        classes.append(d.name)
        entries = sorted((e for e in os.scandir(d.path) if e.is_file() and _is_visible(e.name)
                          and e.name.lower().endswith(IMAGE_EXTENSIONS)), key=lambda e: e.name)
        for e in entries:
            st = os.stat(e.path)           # DirEntry.stat() may leave st_ino 0 on some systems
            items.append((e.path, k, st.st_size, (st.st_mtime_ns, st.st_ctime_ns, st.st_ino)))
    if not classes:
        raise FileNotFoundError(f"ImageFolder: no class folders in {root} (expected "
                                f"root/<class>/<images>)")
    if not items:
        raise FileNotFoundError(f"ImageFolder: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                                f"under {root}")
    # a class without images would silently shift every later label's meaning for a model trained
    # on the complete folder, and can never be learned: refuse it, as torchvision does
    empty = [c for k, c in enumerate(classes) if not any(item[1] == k for item in items)]
    if empty:
        raise FileNotFoundError(f"ImageFolder: class folder(s) with no image files under {root}: "
                                f"{', '.join(empty)}")
    return classes, items


_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}   # more than 8 bits per pixel
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def _range_to_uint8(a):
    """(H, W) 16/32-bit integer or float grey values -> uint8, scaled by the range they come
    from (Pillow's own conversion to 8 bits clips: a 16-bit 60000 would become 255, a float 0.5
    would become 0). Integers within 0..65535 (16-bit, also when stored as 32-bit): / 65535;
    floats within [0, 1]: x 255, within [0, 255]: as they are; anything else: its own min..max.
    NaN and inf become 0."""
    x = np.asarray(a, dtype=np.float64)
    x = np.where(np.isfinite(x), x, 0.0)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
    for kinds, top in (("ui", 65535.0), ("f", 1.0), ("f", 255.0)):
        if a.dtype.kind in kinds and lo >= 0 and hi <= top:
            lo, hi = 0.0, top
            break
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.round((x - lo) * scale).astype(np.uint8)


def _to_mode(im, mode):
    """A Pillow image as `mode` ("L" or "RGB"), faithfully: wide grey images scaled by range
    (`_range_to_uint8`); alpha (RGBA, LA, PA, a palette or image with a transparent colour)
    composited over black, so a fully transparent pixel is 0 whatever colour it stores; CMYK,
    YCbCr, LAB, HSV and palette images by Pillow's conversion to RGB; 1-bit as 0 / 255."""
    from PIL import Image
    if im.mode in _WIDE_MODES:
        grey = Image.fromarray(_range_to_uint8(np.asarray(im)))
        return grey if mode == "L" else grey.convert("RGB")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        black = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, im.convert("RGBA"))
    return im if im.mode == mode else im.convert(mode)


def _centre_box(width: int, height: int, size) -> tuple:
    """(left, top, right, bottom): the largest centred box of the aspect of `size` (H, W)."""
    H, W = size
    if width * H > height * W:                     # too wide: keep the height
        w = height * W / H
        return ((width - w) / 2, 0.0, (width + w) / 2, float(height))
    h = width * H / W
    return (0.0, (height - h) / 2, float(width), (height + h) / 2)


def _decode(path, size, crop=False, channels=None):
    """One image file -> (H, W, 1) or (H, W, 3) uint8, resized to `size` (H, W) if given;
    crop: keep the aspect, resizing the centre box of that aspect (the shorter side to size).
    channels: 1 or 3 forces grey or RGB; None keeps grey images grey. Modes: see `_to_mode`.
    Call it inside `_bombs_refused()` (a thread-safe place to change the warning filters)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            mode = {1: "L", 3: "RGB"}.get(channels) or \
                ("L" if im.mode in _GREY_MODES else "RGB")
            if crop and size is not None:
                # JPEG decoders shrink by 1/2, 1/4 or 1/8 while decoding (a photo decodes
                # several times faster), never below the size asked for; the resize finishes
                s = max(size[0] / im.size[1], size[1] / im.size[0])
                im.draft(mode, (math.ceil(im.size[0] * s), math.ceil(im.size[1] * s)))
            im = _to_mode(im, mode)
            if crop and size is not None:
                # Pillow's resize filters over the whole footprint when it shrinks: antialiased
                im = im.resize((size[1], size[0]), Image.BILINEAR,
                               box=_centre_box(im.size[0], im.size[1], size))
            elif size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            a = np.asarray(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetError(f"{path}: refusing to decode it: {e} (if the image is genuine, raise "
                           f"PIL.Image.MAX_IMAGE_PIXELS)") from None
    except Exception as e:   # Pillow raises many types (UnidentifiedImageError, OSError, ...)
        raise DatasetError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    return a[..., None] if a.ndim == 2 else a


@contextlib.contextmanager
def _bombs_refused():
    """A context in which Pillow's DecompressionBombWarning (an image of more pixels than
    PIL.Image.MAX_IMAGE_PIXELS) is an error, so `_decode` refuses it in one line. The warning
    filters are global: set them once around all the decoding threads, never inside them."""
    from PIL import Image
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def decode_image(path, size=None, channels=None, crop=False):
    """One image file -> (H, W, C) uint8 as ImageFolder decodes it (16-bit and float images
    scaled by range, alpha composited over black); size (H, W) resizes (crop: its centre box of
    that aspect); channels 1 or 3 forces grey or RGB. Raises DatasetError naming the file."""
    with _bombs_refused():
        return _decode(path, None if size is None else (int(size[0]), int(size[1])), crop,
                       channels)


def _decode_all(paths, size, num_workers, crop=False):
    """Stack all images as (N, H, W, C); grey images are repeated to RGB if any image is colour."""
    with _bombs_refused():
        if num_workers > 1:   # Pillow releases the GIL while decoding: threads run in parallel
            with ThreadPoolExecutor(num_workers) as pool:
                arrays = list(pool.map(lambda p: _decode(p, size, crop), paths))
        else:
            arrays = [_decode(p, size, crop) for p in paths]
    shape = arrays[0].shape[:2]
    for p, a in zip(paths, arrays):
        if a.shape[:2] != shape:
            raise DatasetError(f"{p}: image is {a.shape[1]}x{a.shape[0]} (WxH) but {paths[0]} is "
                               f"{shape[1]}x{shape[0]}; pass ImageFolder(root, size=...) to resize")
    channels = max(a.shape[2] for a in arrays)
    out = np.empty((len(arrays),) + shape + (channels,), np.uint8)
    for i, a in enumerate(arrays):
        out[i] = a   # broadcasting repeats a grey (H, W, 1) image over 3 channels
    return out


class ImageFolder(ArrayDataset):
    """Images in `root/<class>/<file>`: classes sorted by folder name, files sorted by name.

    Hidden files and folders (a leading '.') and files without an image extension are skipped.
    Images are RGB (C=3), or grey (C=1) when every image is grey; `size` (int or (H, W)) resizes
    (bilinear, aspect not kept); crop=True keeps the aspect: the centred box of size's aspect is
    resized (the shorter side to size, as torchvision's Resize + CenterCrop; photos decode
    faster, JPEG shrinking while decoding); without `size` all images must share one size.
    cache: True (default) keeps the decoded arrays as .npy files in `default_cache_dir()`, a path
    puts them there, False never caches. The cache key covers every file's path, size, mtime,
    ctime and inode, so a changed folder is decoded again. num_workers: decoding threads
    (default: all cores for files over 32 KB on average, else 1).
    """

    CACHE_VERSION = 3   # 3: 16-bit and float images scaled by range, alpha composited

    def __init__(self, root, size=None, cache=True, num_workers=None, crop=False):
        root = Path(root).resolve()
        if isinstance(size, int):
            size = (size, size)
        size = None if size is None else (int(size[0]), int(size[1]))
        classes, items = _scan_folder(root)
        paths = [p for p, _, _, _ in items]
        labels = np.array([k for _, k, _, _ in items], np.int64)
        if num_workers is None:
            # Threads only pay off when decoding (which releases the GIL) outweighs Pillow's Python
            # overhead: measured 2x slower on 50,000 1-KB CIFAR JPEGs, faster on photos.
            mean_bytes = sum(nbytes for _, _, nbytes, _ in items) / len(items)
            num_workers = (os.cpu_count() or 1) if mean_bytes > 32_000 else 1
        cache_dir = None if cache is False else (default_cache_dir() if cache is True
                                                 else Path(cache))
        images = None
        if cache_dir is not None:
            key = self._cache_key(root, size, classes, items, crop)
            stem = cache_dir / f"imagefolder-{root.name}-{key}"
            images = self._read_cache(stem, len(items))
        if images is None:
            images = _decode_all(paths, size, num_workers, crop)
            if cache_dir is not None:
                self._write_cache(stem, images, root)
        super().__init__(images, labels, classes, files=paths)
        self.root = root

    @classmethod
    def _cache_key(cls, root, size, classes, items, crop=False):
        h = hashlib.sha1()
        # "crop" only when set: the keys (and caches) of uncropped folders stay what they were
        h.update(json.dumps([cls.CACHE_VERSION, str(root), size, classes]
                            + (["crop"] if crop and size is not None else [])).encode())
        for path, k, nbytes, stamp in items:
            h.update(f"{path}\0{k}\0{nbytes}\0{stamp}\n".encode())
        return h.hexdigest()[:20]

    @staticmethod
    def _read_cache(stem, n):
        path = stem.with_suffix(".npy")
        if not path.is_file():
            return None
        try:
            images = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            warnings.warn(f"ImageFolder: ignoring unreadable cache {path} ({e})")
            return None
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != n:
            warnings.warn(f"ImageFolder: ignoring cache {path} with shape {images.shape}")
            return None
        return images

    @staticmethod
    def _write_cache(stem, images, root):
        from tinyconv.serialize import atomic_write
        path = stem.with_suffix(".npy")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # atomic: a crash never leaves a half-written cache (nor, on the next write, its temp)
            atomic_write(path, lambda f: np.save(f, images, allow_pickle=False))
        except OSError as e:
            warnings.warn(f"ImageFolder: could not write the decode cache for {root} to {path} "
                          f"({e}); the next run will decode again")
