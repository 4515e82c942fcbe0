"""DataLoader: shuffled, augmented, normalised batches, prepared by a background thread.

A batch is made in four steps, all on arrays:

    idx    = order[b * batch_size : (b + 1) * batch_size]     # the epoch's (shuffled) order
    images = dataset.images[idx]                                # (B, H, W, C) uint8
    images = transform(images, rng_b[, info])                   # augmentation, still uint8
    x      = normalize(images, mean, std)                       # (B, C, H, W) float32

and `y = dataset.labels[idx]` (int64), which no transform ever sees.

Reproducible whatever the timing: each epoch takes ONE integer seed from the loader's Generator;
a SeedSequence spawns from it the shuffle and one independent stream per batch. The background
worker may run ahead or behind, batch b always gets stream b, so the same seed gives the same
batches. `dl.epoch(seed)` replays an epoch, `dl.last_seed` is the seed of the latest one.

Per-sample transforms (AlternatingFlip) also get `info`, a BatchInfo: the batch's dataset indices,
the epoch NUMBER and `dl.sample_seed`, a per-run seed derived from the seed of `rng` without
drawing from it (the epoch seeds stay what they were). The number comes from `dl.set_epoch(k)`
(the Learner calls it before every training epoch, so a fit resumed at epoch k continues the
pattern), else from a counter that each `iter(dl)` advances. A per-image choice made "once" is
then a pure function of (sample_seed, index, epoch), whatever the shuffle or the batch size.

Overlap: the worker thread builds the next `prefetch` batches while the model trains on the
current one; the augmentation kernels release the GIL, so this is real parallel work.
"""
import copy
import queue
import threading

import numpy as np

from tinyconv.augment import BatchInfo, Compose, channel_stats, normalize

__all__ = ["DataLoader", "loaders"]

_END = object()


class _Failure:
    """An exception raised in the worker, carried to the consumer to be re-raised there."""

    def __init__(self, exc):
        self.exc = exc


def _sample_seed(rng):
    """A per-run seed for per-sample transforms, from the SeedSequence that seeded `rng` (a
    spawned child of it), so the same loader seed gives the same per-image choices, and nothing is
    drawn from rng itself. Restoring rng's state (a checkpoint) does not change it."""
    seq = rng.bit_generator.seed_seq
    if getattr(seq, "entropy", None) is None:       # a legacy-seeded bit generator: no seed
        return None
    child = np.random.SeedSequence(seq.entropy, spawn_key=(*seq.spawn_key, 0x5A3B1E))
    return int(child.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _dataset_arrays(dataset):
    """(images (N, H, W, C) uint8, labels (N,) int64) of an ArrayDataset or any ds[i] dataset."""
    if hasattr(dataset, "images") and hasattr(dataset, "labels"):
        images, labels = dataset.images, dataset.labels
    else:
        items = [dataset[i] for i in range(len(dataset))]
        images = np.stack([np.asarray(im) for im, _ in items]) if items else np.zeros((0, 1, 1, 1))
        labels = np.array([lab for _, lab in items], np.int64)
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"DataLoader: dataset images must be (N, H, W, C) uint8, "
                         f"got {images.shape} {images.dtype}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"DataLoader: labels {labels.shape} do not match images {images.shape}")
    if images.shape[0] == 0:
        raise ValueError("DataLoader: the dataset is empty")
    return images, labels.astype(np.int64, copy=False)


class DataLoader:
    """Iterate over (x, y) batches: x (B, C, H, W) float32 normalised, y (B,) int64 (NumPy).

    dataset: an ArrayDataset (or anything with len and ds[i] -> (image HWC uint8, label)).
    shuffle: a new order every epoch. drop_last: skip a final partial batch.
    transform: an augmentation (a Compose, a Transform or a list of them), or any callable
      (images (B, H, W, C) uint8, rng) -> uint8 images; applied to every batch. One whose
      `per_sample` is true is called as transform(images, rng, info=BatchInfo(...)).
    rng: np.random.Generator; one seed per epoch is drawn from it when shuffling or augmenting
      (default: a fresh unseeded Generator); `sample_seed` is derived from its seed.
    mean, std: per-channel statistics on the [0, 1] scale; None computes them from the dataset.
      Give a validation loader the training loader's (`loaders` does). normalize=False: x / 255.
    prefetch: batches the background thread prepares ahead; 0 makes batches in the caller.
    """

    def __init__(self, dataset, batch_size=64, shuffle=False, drop_last=False, transform=None,
                 rng=None, mean=None, std=None, normalize=True, prefetch=2):
        if batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise TypeError(f"DataLoader: rng must be a np.random.Generator, "
                            f"got {type(rng).__name__}")
        self.dataset = dataset
        self.images, self.labels = _dataset_arrays(dataset)
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.transform = Compose(transform) if isinstance(transform, (list, tuple)) else transform
        self.rng = rng if rng is not None else np.random.default_rng()
        C = self.images.shape[3]
        if not normalize:
            mean, std = (0.0,) * C, (1.0,) * C
        elif mean is None and std is None:
            mean, std = channel_stats(self.images)
        elif mean is None or std is None:
            raise ValueError("DataLoader: give both mean and std, or neither (to compute them)")
        self.mean = tuple(float(v) for v in np.broadcast_to(np.asarray(mean, np.float64), (C,)))
        self.std = tuple(float(v) for v in np.broadcast_to(np.asarray(std, np.float64), (C,)))
        self.prefetch = int(prefetch)
        self.last_seed = None
        self.sample_seed = _sample_seed(self.rng)
        self.next_epoch, self.last_epoch = 0, None

    # --- the plan of an epoch ---------------------------------------------------------------------

    def __len__(self):
        n, b = len(self.labels), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    @property
    def classes(self):
        return getattr(self.dataset, "classes", None)

    def plan(self, seed):
        """(order (N,) int64, [SeedSequence per batch]) of the epoch with this seed."""
        order_seq, *batch_seqs = np.random.SeedSequence(seed).spawn(len(self) + 1)
        n = len(self.labels)
        order = np.random.default_rng(order_seq).permutation(n) if self.shuffle else np.arange(n)
        return order, batch_seqs

    def make_batch(self, idx, seed_seq=None, epoch=0):
        """(x (B, C, H, W) float32, y (B,) int64) for dataset indices `idx` in epoch number
        `epoch`; the transform draws from np.random.default_rng(seed_seq). A pure function of
        its arguments (and of sample_seed)."""
        images = self.images[idx]
        if self.transform is not None:
            rng = np.random.default_rng(seed_seq)
            if getattr(self.transform, "per_sample", False):
                if self.sample_seed is None:
                    raise ValueError("DataLoader: a per-sample transform needs an rng made from "
                                     "a seed (np.random.default_rng(seed)); this one has none")
                info = BatchInfo(np.asarray(idx), int(epoch), self.sample_seed, len(self.labels))
                images = self.transform(images, rng, info=info)
            else:
                images = self.transform(images, rng)
        return normalize(images, self.mean, self.std), self.labels[idx]

    def epoch(self, seed, number=0):
        """Iterate the batches of the epoch with this seed and epoch number (the number matters
        to per-sample transforms only), prepared by the worker thread."""
        order, seqs = self.plan(seed)
        B = self.batch_size
        jobs = [(order[b * B:(b + 1) * B], seqs[b], number) for b in range(len(self))]
        if self.prefetch <= 0:
            return (self.make_batch(*job) for job in jobs)
        return self._prefetched(jobs)

    def set_epoch(self, number):
        """The epoch number of the next iteration (then counted on from there)."""
        if int(number) != number or number < 0:
            raise ValueError(f"DataLoader.set_epoch: the epoch must be a whole number >= 0, "
                             f"got {number!r}")
        self.next_epoch = int(number)

    def __iter__(self):
        randomised = self.shuffle or self.transform is not None
        # no draw when nothing is random: iterating a validation loader leaves the rng untouched
        self.last_seed = int(self.rng.integers(0, 2 ** 63)) if randomised else 0
        self.last_epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        return iter(self.epoch(self.last_seed, self.last_epoch))

    def one_batch(self, seed=0, epoch=0):
        """The first batch of the epoch with `seed` (does not touch the loader's rng)."""
        order, seqs = self.plan(seed)
        return self.make_batch(order[:self.batch_size], seqs[0], epoch)

    def with_transform(self, transform, rng=None):
        """A copy of this loader (same data, order rule and statistics) with another transform,
        e.g. the training augmentation on validation images for test-time augmentation."""
        dl = copy.copy(self)
        dl.transform = Compose(transform) if isinstance(transform, (list, tuple)) else transform
        dl.rng = rng if rng is not None else np.random.default_rng()
        dl.last_seed, dl.sample_seed = None, _sample_seed(dl.rng)
        dl.next_epoch, dl.last_epoch = 0, None
        return dl

    # --- the background worker --------------------------------------------------------------------

    def _prefetched(self, jobs):
        q = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item):
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work():
            try:
                for job in jobs:
                    if not put(self.make_batch(*job)):
                        return
                put(_END)
            except BaseException as e:   # carried to the consumer: never a silent short epoch
                put(_Failure(e))

        worker = threading.Thread(target=work, name="tinyconv-DataLoader", daemon=True)
        worker.start()
        try:
            while True:
                try:
                    item = q.get(timeout=1.0)
                except queue.Empty:
                    if not worker.is_alive() and q.empty():
                        raise RuntimeError("DataLoader: the worker thread stopped without "
                                           "finishing the epoch") from None
                    continue
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item
        finally:   # also when the consumer breaks out early: stop the worker, do not leak it
            stop.set()
            worker.join()

    def __repr__(self):
        N, H, W, C = self.images.shape
        return (f"DataLoader({N} images {H}x{W}x{C}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, "
                f"transform={type(self.transform).__name__ if self.transform else None})")


def loaders(train_ds, valid_ds, batch_size=64, transform=None, seed=0, valid_batch_size=None,
            mean=None, std=None, prefetch=2):
    """(train_dl, valid_dl): training shuffled and augmented, validation in order and plain, both
    normalised with the TRAINING statistics (computed from train_ds unless given).

    The training loader drops a final partial batch (a batch of one breaks BatchNorm) unless the
    dataset is no bigger than one batch. valid_ds None: valid_dl is None (train on everything).
    """
    train_dl = DataLoader(train_ds, batch_size, shuffle=True,
                          drop_last=len(train_ds) > batch_size, transform=transform,
                          rng=np.random.default_rng(seed), mean=mean, std=std, prefetch=prefetch)
    if valid_ds is None:
        return train_dl, None
    valid_dl = DataLoader(valid_ds, valid_batch_size or batch_size, shuffle=False,
                          rng=np.random.default_rng([seed, 1]), mean=train_dl.mean,
                          std=train_dl.std, prefetch=prefetch)
    return train_dl, valid_dl
