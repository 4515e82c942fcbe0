"""vision_learner: fine-tune a pre-trained ResNet the fast.ai way (fastai's name; fastai 0.7 called
it ConvLearner.pretrained).

    learn = tc.vision_learner("resnet34", (train_dl, valid_dl), weights="resnet34.pth",
                              precompute=True, metrics=[tc.metrics.accuracy])
    learn.fit(1, 1e-2)                       # the head, on the body's cached activations
    learn.precompute = False                 # back to images (and their augmentation)
    learn.fit_sgdr(3, 1, 1e-2)
    learn.unfreeze(); learn.fit_sgdr(3, 1, slice(1e-4, 1e-2), cycle_mult=2)

What it sets up: the body of the ResNet (cut before its pooling) with the file's weights, a new
fastai head for the data's classes (nn/head.py), three layer groups (two body halves, the head),
the body frozen, and, with pre-trained weights, the loaders normalising with the ImageNet
statistics the body was trained with (a body sees the colours it knows).

precompute (fastai 0.7): while the body is frozen, its output for an image never changes, so it
is computed once per image -- after the head's parameter-free concat pooling, a (2C,) vector --
and the head trains on those vectors: an epoch costs a few small matrix products instead of a
ResNet forward pass per image. There is no augmentation then (the cached vector is of the plain
image), and the body runs in evaluation mode (its running statistics), so a precomputed step is
exactly a step of the full net with the body frozen and train_bn=False. The cache lives in
memory, or -- when it would take more than `precompute_memory` bytes -- in a memory-mapped .npy
in the cache directory, named by a hash of the body's weights and the images, so the next run on
the same data and weights loads it instead of recomputing.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import uuid
from pathlib import Path

import numpy as np

from .autograd import no_grad
from .learner import Learner
from .nn.module import Sequential
from .resnets import RESNET_CONFIGS
from .tensor import Tensor
from .transfer_net import TransferNet

__all__ = ["vision_learner", "VisionLearner", "ActivationLoader", "IMAGENET_STATS"]

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))     # mean, std on [0, 1]

PRECOMPUTE_MEMORY = 1 << 30            # bytes of activations kept in memory; more: a file


class ActivationLoader:
    """Batches (features (B, F) float32, labels (B,) int64) of cached activations, in the same
    order as the image loader `source` would give its images (same rng draws, same plan)."""

    def __init__(self, features: np.ndarray, source, shuffle=None, drop_last=None):
        self.features, self.source = features, source
        self.labels = source.labels
        self.rng = source.rng
        self.batch_size = source.batch_size
        self.shuffle = source.shuffle if shuffle is None else shuffle
        self.drop_last = source.drop_last if drop_last is None else drop_last

    def __len__(self) -> int:
        n, b = len(self.labels), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        # draw as DataLoader.__iter__ does when it shuffles: the same seed, so the same order
        seed = int(self.rng.integers(0, 2 ** 63)) if self.shuffle else 0
        order, _ = self.source.plan(seed)
        B = self.batch_size
        for b in range(len(self)):
            idx = order[b * B:(b + 1) * B]
            yield np.asarray(self.features[idx], dtype=np.float32), self.labels[idx]

    @property
    def dataset(self):
        """The image loader's dataset (class names and images for interpretation)."""
        return self.source.dataset

    @property
    def classes(self):
        return self.source.classes

    @property
    def mean(self):
        return self.source.mean

    @property
    def std(self):
        return self.source.std

    def __repr__(self) -> str:
        return (f"ActivationLoader({self.features.shape[0]} x {self.features.shape[1]} features, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle})")


class VisionLearner(Learner):
    """A Learner for a TransferNet, with the body frozen at the start and `precompute` (see the
    module docstring). Other arguments are the Learner's; precompute_memory and cache_dir say
    where cached activations live."""

    def __init__(self, model: TransferNet, train_dl, valid_dl=None, *, precompute=False,
                 cache_dir=None, precompute_memory: int = PRECOMPUTE_MEMORY, **kwargs):
        if not isinstance(model, TransferNet):
            raise TypeError(f"VisionLearner: model must be a TransferNet (transfer_net(...)), "
                            f"got {type(model).__name__}")
        super().__init__(model, train_dl, valid_dl, **kwargs)
        self.net, self.image_dls = model, (train_dl, valid_dl)
        self.cache_dir, self.precompute_memory = cache_dir, int(precompute_memory)
        self._precompute, self._cached = False, {}
        self.freeze()
        self.precompute = precompute

    # ---- precompute ----------------------------------------------------------------------------
    @property
    def precompute(self) -> bool:
        return self._precompute

    @precompute.setter
    def precompute(self, value: bool) -> None:
        value = bool(value)
        if value == self._precompute:
            return
        if value:
            if self.frozen_to < self.n_groups - 1:
                raise ValueError("precompute: the body must be frozen (learn.freeze()) for its "
                                 "activations to be cached")
            loaders = [ActivationLoader(self._activations(dl), dl) if dl is not None else None
                       for dl in self.image_dls]
            self.train_dl, self.valid_dl = loaders
            self.model = Sequential(*self.net.head.layers[2:])   # after pooling and flatten
        else:
            self.model = self.net
            self.train_dl, self.valid_dl = self.image_dls
        self._precompute = value

    def _activations(self, dl) -> np.ndarray:
        """(N, F) pooled body activations of dl's images in dataset order, no augmentation;
        from this learner's memory, a cache file, or computed (and cached) now."""
        for attr in ("images", "plan", "with_transform", "mean", "std"):
            if not hasattr(dl, attr):
                raise TypeError(f"precompute: the loader ({type(dl).__name__}) has no {attr}; "
                                f"use a tc.data.DataLoader")
        key = self._cache_key(dl)
        if key in self._cached:
            return self._cached[key]
        N = dl.images.shape[0]
        F = self.net.num_features * (2 if self.net.arch_args["concat_pool"] else 1)
        path = None
        if N * F * 4 > self.precompute_memory:
            folder = Path(self.cache_dir) if self.cache_dir is not None else _default_cache()
            path = folder / "activations" / f"{key}.npy"
            if path.exists():
                out = np.load(path, mmap_mode="r")
                if out.shape == (N, F):
                    self._cached[key] = out
                    return out
        plain = dl.with_transform(None)
        plain.shuffle, plain.drop_last = False, False
        if path is None:
            out = np.empty((N, F), np.float32)
            self._compute_into(out, plain)
        else:
            out = self._compute_to_file(path, (N, F), plain)
        self._cached[key] = out
        return out

    def _compute_into(self, out: np.ndarray, plain) -> None:
        pool = Sequential(*self.net.head.layers[:2])         # concat pool + flatten
        self.net.body.eval()
        start = 0
        with no_grad():
            for x, _ in plain.epoch(0):
                feats = pool(self.net.body(Tensor(x))).data
                out[start:start + len(feats)] = feats
                start += len(feats)

    def _compute_to_file(self, path: Path, shape, plain) -> np.ndarray:
        """Activations written to a .npy memory map under a temporary name, then renamed."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            self._compute_into(mm, plain)
            mm.flush()
            del mm
            os.replace(tmp, path)
        except BaseException:
            if tmp.exists():
                tmp.unlink()
            raise
        return np.load(path, mmap_mode="r")

    def _cache_key(self, dl) -> str:
        """A hash of everything the activations depend on: the body's weights and running
        statistics, the images, their normalisation and the pooling."""
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((self.net.arch_args, dl.mean, dl.std, dl.images.shape)).encode())
        for name, array in self.net.body.state_dict().items():
            h.update(name.encode())
            h.update(np.ascontiguousarray(array).tobytes())
        h.update(np.ascontiguousarray(dl.images).data)
        return h.hexdigest()

    # ---- freezing: no unfreezing under precompute ---------------------------------------------
    def freeze_to(self, n: int) -> None:
        frozen = n if n >= 0 else self.n_groups + n
        if getattr(self, "_precompute", False) and frozen < self.n_groups - 1:
            raise ValueError("unfreeze: the body's activations are precomputed, so the body "
                             "cannot train; set learn.precompute = False first")
        super().freeze_to(n)

    # ---- whatever needs images runs the full net -----------------------------------------------
    @contextlib.contextmanager
    def full_net(self):
        """Within the block: the whole net and the image loaders, even under precompute."""
        saved = self.model, self.train_dl, self.valid_dl
        self.model = self.net
        self.train_dl, self.valid_dl = self.image_dls
        try:
            yield
        finally:
            self.model, self.train_dl, self.valid_dl = saved

    def _do_validate(self, dl):
        if self._precompute and not isinstance(dl, ActivationLoader):
            with self.full_net():                    # get_preds / validate on image batches
                return super()._do_validate(dl)
        return super()._do_validate(dl)

    def tta(self, *args, **kwargs):
        with self.full_net():
            return super().tta(*args, **kwargs)

    def predict(self, x):
        with self.full_net():
            return super().predict(x)

    def save(self, *args, **kwargs):
        with self.full_net():
            return super().save(*args, **kwargs)

    def load(self, *args, **kwargs):
        with self.full_net():
            super().load(*args, **kwargs)
        self._cached.clear()                         # the body may have changed
        if self._precompute:
            self._precompute = False
            self.precompute = True
        return self


def _default_cache() -> Path:
    from .data import default_cache_dir
    return Path(default_cache_dir())


def _loaders_of(dls):
    """(train_dl, valid_dl) from a pair, or an object with .train and .valid (fastai's)."""
    if isinstance(dls, (list, tuple)) and len(dls) == 2:
        return tuple(dls)
    if hasattr(dls, "train") and hasattr(dls, "valid"):
        return dls.train, dls.valid
    raise TypeError(f"vision_learner: dls must be (train_dl, valid_dl), got {type(dls).__name__}")


def _with_stats(dl, stats):
    """A shallow copy of loader dl normalising with `stats` (mean, std)."""
    if dl is None:
        return None
    if not hasattr(dl, "mean"):
        raise TypeError(f"vision_learner: the loader ({type(dl).__name__}) has no mean/std to "
                        f"set the ImageNet statistics on; use a tc.data.DataLoader")
    out = copy.copy(dl)
    out.mean, out.std = stats
    return out


def vision_learner(arch, dls, weights=None, precompute: bool = False, n_out=None,
                   lin_ftrs=None, ps=0.5, concat_pool: bool = True, normalize: bool = True,
                   seed=None, cache_dir=None, precompute_memory: int = PRECOMPUTE_MEMORY,
                   **learner_kwargs) -> VisionLearner:
    """A VisionLearner for `arch` (a name, "resnet34", or tc.models.resnet34) on dls =
    (train_dl, valid_dl): a TransferNet whose body has the weights in file `weights` (None: a
    random body, as fastai's pretrained=False) and whose head has n_out outputs (default: the
    number of classes of the training data), the body frozen.

    normalize: with weights, the loaders (copies of them) use the ImageNet statistics.
    seed: the head's initialisation and dropout, and the Learner's seed. Other keywords go to
    Learner (metrics, loss_func, opt_func, wd, train_bn, silent, ...).
    """
    name = getattr(arch, "__name__", arch)
    if name not in RESNET_CONFIGS:
        raise ValueError(f"vision_learner: arch must be one of {', '.join(RESNET_CONFIGS)} (or "
                         f"tc.models.resnet18/34/50), got {arch!r}")
    train_dl, valid_dl = _loaders_of(dls)
    if n_out is None:
        classes = getattr(train_dl, "classes", None)
        n_out = len(classes) if classes else int(np.max(train_dl.labels)) + 1
    images = getattr(train_dl, "images", None)
    if images is not None and images.shape[-1] != 3:
        raise ValueError(f"vision_learner: a ResNet body takes RGB images, the training images "
                         f"have {images.shape[-1]} channel(s) (shape {images.shape})")
    if weights is not None and normalize:
        train_dl, valid_dl = _with_stats(train_dl, IMAGENET_STATS), \
            _with_stats(valid_dl, IMAGENET_STATS)
    rng = np.random.default_rng(seed)
    net = TransferNet(name, n_out, lin_ftrs, ps, concat_pool, weights=weights, rng=rng)
    return VisionLearner(net, train_dl, valid_dl, precompute=precompute, cache_dir=cache_dir,
                         precompute_memory=precompute_memory, seed=seed, **learner_kwargs)
