"""DataLoader: batch layout, shuffling, normalisation, determinism whatever the timing, worker."""
import copy
import threading
import time

import numpy as np
import pytest

from tinyconv import augment as A
from tinyconv.data import ArrayDataset, DataLoader, loaders


def labelled_dataset(n=50, size=8, channels=3):
    """Image i is constant with value 5 * label (+ a channel offset): x and y can be matched."""
    labels = np.arange(n) % 10
    images = (5 * labels[:, None, None, None] + np.arange(channels)) \
        * np.ones((1, size, size, 1), np.int64)
    return ArrayDataset(images.astype(np.uint8), labels, [str(k) for k in range(10)])


def random_dataset(n=40, h=12, w=10, seed=0):
    g = np.random.default_rng(seed)
    return ArrayDataset(g.integers(0, 256, (n, h, w, 3), dtype=np.uint8), g.integers(0, 4, n),
                        ["a", "b", "c", "d"])


def batches(dl):
    return [(x.copy(), y.copy()) for x, y in dl]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_batches_are_float32_nchw_and_int64_with_partial_last():
    ds = random_dataset(n=23)
    dl = DataLoader(ds, batch_size=5)
    out = batches(dl)
    assert len(dl) == len(out) == 5
    assert [len(y) for _, y in out] == [5, 5, 5, 5, 3]
    x, y = out[0]
    assert x.shape == (5, 3, 12, 10) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(np.concatenate([y for _, y in out]), ds.labels)
    dl = DataLoader(ds, batch_size=5, drop_last=True)
    assert len(dl) == 4 and [len(y) for _, y in dl] == [5] * 4


def test_normalisation_computed_from_data_gives_zero_mean_unit_std():
    ds = random_dataset(n=30)
    dl = DataLoader(ds, batch_size=7)
    x = np.concatenate([x for x, _ in dl]).astype(np.float64)
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-5)
    np.testing.assert_array_equal(next(iter(dl))[0], A.normalize(ds.images[:7], dl.mean, dl.std))


def test_given_statistics_and_no_normalisation():
    ds = random_dataset(n=6)
    x, _ = next(iter(DataLoader(ds, batch_size=6, mean=0.5, std=0.25)))
    np.testing.assert_allclose(x, (ds.images.transpose(0, 3, 1, 2) / 255 - 0.5) / 0.25, atol=1e-5)
    x, _ = next(iter(DataLoader(ds, batch_size=6, normalize=False)))
    np.testing.assert_allclose(x, ds.images.transpose(0, 3, 1, 2) / 255, atol=1e-7)
    with pytest.raises(ValueError, match="both mean and std"):
        DataLoader(ds, mean=0.5)


def test_shuffle_is_a_new_permutation_each_epoch():
    ds = labelled_dataset(n=40)
    dl = DataLoader(ds, batch_size=8, shuffle=True, rng=np.random.default_rng(0))
    orders = []
    for _ in range(2):
        y = np.concatenate([y for _, y in dl])
        order, _ = dl.plan(dl.last_seed)
        np.testing.assert_array_equal(y, ds.labels[order])
        assert sorted(order) == list(range(40))
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])


@pytest.mark.parametrize("tfm", [A.cifar_transforms(size=8, padding=2, cutout=None),
                                 A.transforms_top_down()])
def test_labels_never_change_and_stay_with_their_images(tfm):
    """Constant images survive crops/flips/rotations unchanged, so x identifies its label."""
    ds = labelled_dataset(n=60)
    if isinstance(tfm.tfms[-1], A.Dihedral):
        tfm = A.Compose([t for t in tfm.tfms if not isinstance(t, A.Lighting)])
    dl = DataLoader(ds, batch_size=16, shuffle=True, transform=tfm, normalize=False,
                    rng=np.random.default_rng(1))
    for x, y in dl:
        red = np.round(x[:, 0] * 255)
        assert (red == 5 * y[:, None, None]).all()


def test_same_seed_same_batches_whatever_the_timing():
    ds = random_dataset(n=64, h=16, w=16)
    tfm = A.aug_transforms()

    def run(prefetch, delay):
        dl = DataLoader(ds, batch_size=8, shuffle=True, transform=tfm, prefetch=prefetch,
                        rng=np.random.default_rng(42))
        out = []
        for _ in range(2):                       # two epochs: the per-epoch seeds line up too
            for x, y in dl:
                time.sleep(delay * np.random.default_rng(len(out)).random())
                out.append((x.copy(), y.copy()))
        return out

    reference = run(prefetch=0, delay=0)
    assert_same_batches(run(prefetch=1, delay=0.01), reference)
    assert_same_batches(run(prefetch=4, delay=0), reference)


def test_epoch_replays_from_its_seed_and_one_batch_is_deterministic():
    ds = random_dataset(n=30)
    dl = DataLoader(ds, batch_size=8, shuffle=True, transform=A.aug_transforms(),
                    rng=np.random.default_rng(3))
    first = batches(dl)
    assert_same_batches(batches(dl.epoch(dl.last_seed)), first)
    second = batches(dl)
    assert not np.array_equal(first[0][0], second[0][0])
    assert_same_batches([dl.one_batch(seed=9)], [dl.one_batch(seed=9)])


def test_validation_loader_leaves_its_rng_untouched():
    rng = np.random.default_rng(0)
    dl = DataLoader(random_dataset(), batch_size=16, rng=rng)
    before = rng.bit_generator.state
    batches(dl)
    assert rng.bit_generator.state == before


def test_worker_error_reaches_the_consumer():
    calls = []

    def failing(images, rng):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom in batch 3")
        return images

    dl = DataLoader(random_dataset(n=40), batch_size=8, transform=failing, prefetch=2)
    with pytest.raises(RuntimeError, match="boom in batch 3"):
        batches(dl)


def _workers():
    return [t for t in threading.enumerate() if t.name == "tinyconv-DataLoader"]


def test_breaking_out_early_stops_the_worker():
    dl = DataLoader(random_dataset(n=80), batch_size=4, prefetch=2)
    it = iter(dl)
    next(it)
    assert len(_workers()) == 1
    it.close()
    assert _workers() == []
    for _ in dl:
        break
    del _
    assert _workers() == []


def test_generic_dataset_with_getitem():
    class Pairs:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.full((4, 4, 1), 10 * i, np.uint8), i % 2

    x, y = next(iter(DataLoader(Pairs(), batch_size=5, normalize=False)))
    assert x.shape == (5, 1, 4, 4)
    np.testing.assert_allclose(x[:, 0, 0, 0] * 255, [0, 10, 20, 30, 40], atol=1e-4)
    np.testing.assert_array_equal(y, [0, 1, 0, 1, 0])


def test_loaders_share_training_statistics_and_with_transform_copies():
    train, valid = random_dataset(n=40, seed=1), random_dataset(n=12, seed=2)
    train_dl, valid_dl = loaders(train, valid, batch_size=8, transform=A.aug_transforms(), seed=0)
    assert train_dl.shuffle and train_dl.drop_last and not valid_dl.shuffle
    assert valid_dl.transform is None
    assert valid_dl.mean == train_dl.mean and valid_dl.std == train_dl.std
    assert train_dl.mean == tuple(A.channel_stats(train.images)[0])
    tta_dl = valid_dl.with_transform(train_dl.transform, rng=np.random.default_rng(5))
    assert tta_dl.transform is train_dl.transform and valid_dl.transform is None
    plain = np.concatenate([y for _, y in valid_dl])
    np.testing.assert_array_equal(np.concatenate([y for _, y in tta_dl]), plain)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="rng must be a np.random.Generator"):
        DataLoader(random_dataset(), rng=3)
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(random_dataset(), batch_size=0)


def test_show_batch_from_loader_dataset_and_arrays(tmp_path):
    from tinyconv.plot_data import show_batch
    ds = labelled_dataset(n=20)
    dl = DataLoader(ds, batch_size=6, shuffle=True, rng=np.random.default_rng(0))
    fig = show_batch(dl, path=tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    _, y = dl.one_batch()
    assert [ax.get_title() for ax in fig.axes if ax.images] == [ds.classes[k] for k in y]
    shown = fig.axes[0].images[0].get_array()
    assert (np.asarray(shown) == 5 * y[0] + np.arange(3)).all()     # un-normalised pixels
    assert len([ax for ax in show_batch(ds, n=4).axes if ax.images]) == 4
    x, y = next(iter(dl))
    with pytest.raises(ValueError, match="mean and std"):
        show_batch((x, y))
    show_batch((x, y), mean=dl.mean, std=dl.std, classes=ds.classes)


def test_sample_seed_comes_from_the_seed_without_drawing_and_epochs_are_counted():
    ds = random_dataset(n=12)
    rng = np.random.default_rng(4)
    before = copy.deepcopy(rng.bit_generator.state)
    dl = DataLoader(ds, batch_size=5, shuffle=True, rng=rng)
    assert rng.bit_generator.state == before                     # nothing drawn for it
    assert dl.sample_seed == DataLoader(ds, rng=np.random.default_rng(4)).sample_seed
    assert dl.sample_seed != DataLoader(ds, rng=np.random.default_rng(5)).sample_seed
    assert (dl.next_epoch, dl.last_epoch) == (0, None)
    list(dl), list(dl)
    assert (dl.next_epoch, dl.last_epoch) == (2, 1)
    dl.set_epoch(7)
    list(dl)
    assert (dl.next_epoch, dl.last_epoch) == (8, 7)
    copy_ = dl.with_transform(A.flip_lr(), rng=np.random.default_rng(4))
    assert (copy_.next_epoch, copy_.last_epoch, copy_.sample_seed) == (0, None, dl.sample_seed)
