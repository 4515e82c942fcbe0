"""A dataset from a path: find out what a folder holds and read it as train / valid / test.

    ds = from_path("mnist", valid_pct=0.0, seed=0)     # the bundled MNIST; valid is its test split
    ds = from_path("pets/", valid_pct=0.2, seed=0, size=128, crop=True)
    ds.kind, ds.classes, ds.train.images.shape         # "folder", [...], (N, 128, 128, 3) uint8
    test, kind, what = eval_from_path("cifar-10-batches-py")   # the split a model is scored on

A path is "mnist" (bundled), an MNIST IDX folder, a CIFAR-10 batches folder, or an image folder
(PATH/<class>/* or PATH/train/<class> with PATH/valid|test/<class>). A path that is none of these
raises ValueError with one line that says why.
"""
from __future__ import annotations

import os

from tinyconv.data.datasets import CIFAR10, MNIST, ImageFolder, split
from tinyconv.data.loader import DataLoader, loaders

__all__ = ["DataSpec", "from_path", "eval_from_path", "data_kind", "make_loaders", "make_loader"]


class DataSpec:
    """What a path resolved to: datasets (valid/test may be None), a kind and the class names."""

    def __init__(self, kind, train, valid, test, classes):
        self.kind, self.train, self.valid, self.test, self.classes = kind, train, valid, test, classes


def from_path(path: str, valid_pct: float, seed: int, size=None, crop=False,
              hold_out: bool = True) -> DataSpec:
    """The datasets at `path` (see the module docstring).

    size: resize images of an image folder to size x size (crop: keep the aspect, centre square).
    MNIST and CIFAR-10 without valid_pct are validated on their test split; a plain image
    folder without valid_pct holds out 0.2 of it, unless hold_out=False (train on every image).
    """
    if path == "mnist":
        return _with_valid("mnist", MNIST(train=True), MNIST(train=False), valid_pct, seed)
    kind, held_out = data_kind(path)
    if kind == "mnist":
        return _with_valid("mnist", MNIST(path, train=True), MNIST(path, train=False),
                           valid_pct, seed)
    if kind == "cifar10":
        return _with_valid("cifar10", CIFAR10(path, train=True), CIFAR10(path, train=False),
                           valid_pct, seed)
    if kind == "split folder":
        train = ImageFolder(os.path.join(path, "train"), size=size, crop=crop)
        other = ImageFolder(os.path.join(path, held_out), size=size, crop=crop)
        if other.classes != train.classes:
            raise ValueError(f"--data {path}: train/ has classes {train.classes} but "
                             f"{held_out}/ has {other.classes}")
        if held_out == "test":
            return _with_valid("folder", train, other, valid_pct, seed)
        return DataSpec("folder", train, other, None, train.classes)
    folder = ImageFolder(path, size=size, crop=crop)
    if not valid_pct and not hold_out:                 # train on every image, score nothing
        return DataSpec("folder", folder, None, None, folder.classes)
    train, valid = split(folder, valid_pct=valid_pct or 0.2, seed=seed)
    return DataSpec("folder", train, valid, None, folder.classes)


def data_kind(path: str):
    """(kind, held-out folder name) of a folder: "mnist" (IDX files), "cifar10" (the batches, or
    the folder holding cifar-10-batches-py/-bin), "split folder" (PATH/train with PATH/valid or
    PATH/test) or "folder" (PATH/<class>/<images>)."""
    if not os.path.exists(path):
        raise ValueError(f"--data {path}: no such file or folder")
    if not os.path.isdir(path):
        raise ValueError(f"--data {path}: expected a folder (an image folder, an MNIST IDX "
                         f"folder or a cifar-10-batches-py folder), got a file")
    names = set(os.listdir(path))
    if any(n.startswith("train-images-idx3-ubyte") or n.startswith("t10k-images-idx3-ubyte")
           for n in names):
        return "mnist", None
    cifar_dirs = {"cifar-10-batches-py", "cifar-10-batches-bin"}
    if names & {"data_batch_1", "data_batch_1.bin", "test_batch", "test_batch.bin"} or \
            any(os.path.isdir(os.path.join(path, n)) for n in names & cifar_dirs):
        return "cifar10", None
    held_out = next((n for n in ("valid", "test") if os.path.isdir(os.path.join(path, n))), None)
    if "train" in names and os.path.isdir(os.path.join(path, "train")) and held_out:
        return "split folder", held_out
    return "folder", None


def eval_from_path(path: str, size=None, crop=False):
    """What a model is scored on -> (dataset, kind, what it is), decoding only that split:
    the test split of MNIST or CIFAR-10, PATH/valid or PATH/test of a split folder, and every
    image of a plain class folder (nothing was held out of it for a model to have been tuned on;
    scoring a random 20% would silently drop the rest)."""
    if path == "mnist":
        return MNIST(train=False), "mnist", "the MNIST test split"
    kind, held_out = data_kind(path)
    if kind == "mnist":
        return MNIST(path, train=False), kind, f"the test split of {path}"
    if kind == "cifar10":
        return CIFAR10(path, train=False), kind, f"the test split of {path}"
    if kind == "split folder":
        folder = os.path.join(path, held_out)
        return ImageFolder(folder, size=size, crop=crop), "folder", folder
    return ImageFolder(path, size=size, crop=crop), "folder", f"every image of {path}"


def _with_valid(kind, train, test, valid_pct, seed) -> DataSpec:
    """With valid_pct, hold out part of train for validation; else the epochs are validated on
    the test split itself (nothing is tuned on it: the LR finder only sees training batches)."""
    if valid_pct and valid_pct > 0:
        train, valid = split(train, valid_pct=valid_pct, seed=seed)
        return DataSpec(kind, train, valid, test, train.classes)
    return DataSpec(kind, train, test, test, train.classes)


def make_loaders(train, valid, batch_size, transform, seed):
    """loaders() with the training statistics for both, validation batches twice as large
    -> (train_dl, valid_dl, (mean, std))."""
    train_dl, valid_dl = loaders(train, valid, batch_size, transform, seed=seed,
                                 valid_batch_size=2 * batch_size)
    return train_dl, valid_dl, (train_dl.mean, train_dl.std)


def make_loader(ds, batch_size, transform, stats, shuffle, rng=None):
    """One DataLoader normalising with stats = (mean, std); drops the last batch when shuffled."""
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle,
                      transform=transform, rng=rng, mean=stats[0], std=stats[1])
