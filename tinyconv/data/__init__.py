"""Data: datasets held as uint8 arrays, and the DataLoader that batches, augments and normalises.

    ds = MNIST()                                   # images (N, 28, 28, 1) uint8, labels (N,) int64
    train, valid = split(ImageFolder("pets", size=128), valid_pct=0.2, seed=0)
    train_dl, valid_dl = loaders(train, valid, batch_size=64, transform=A.aug_transforms(), seed=0)
    for x, y in train_dl: ...                      # x (B, C, H, W) float32 normalised, y (B,) int64
"""
from tinyconv.data.datasets import (CIFAR10, IMAGE_EXTENSIONS, MNIST, ArrayDataset, DatasetError,
                                    ImageFolder, RestrictedUnpickler, UnsafePickleError,
                                    default_cache_dir, read_idx, split)
from tinyconv.data.loader import DataLoader, loaders

__all__ = ["ArrayDataset", "MNIST", "CIFAR10", "ImageFolder", "split", "read_idx", "DataLoader",
           "loaders", "DatasetError", "UnsafePickleError", "RestrictedUnpickler",
           "IMAGE_EXTENSIONS", "default_cache_dir"]
