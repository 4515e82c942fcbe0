"""airbench's training augmentation: alternating flip (reproducible per image and epoch, resumable)
and reflect-padded translation by whole pixels, alone and in the `airbench_transforms` preset."""
import numpy as np
import pytest

from tinyconv import augment as A
from tinyconv import nn
from tinyconv.callbacks import CancelFit, Callback, Checkpoint
from tinyconv.data import ArrayDataset, DataLoader, loaders
from tinyconv.learner import Learner


def distinct_dataset(n=30, h=4, w=5, seed=0):
    """Random images: no image equals another, nor its own mirror (w > 1)."""
    g = np.random.default_rng(seed)
    return ArrayDataset(g.integers(0, 256, (n, h, w, 3), dtype=np.uint8), np.arange(n) % 3,
                        ["a", "b", "c"])


def flip_loader(ds, seed=0, batch_size=7, shuffle=True, prefetch=2):
    return DataLoader(ds, batch_size, shuffle=shuffle, transform=A.Compose([A.AlternatingFlip()]),
                      rng=np.random.default_rng(seed), normalize=False, prefetch=prefetch)


def flips_of_epoch(dl):
    """Iterate one epoch; (N,) bool: was dataset image i mirrored in it (every image checked)."""
    ds_images = dl.images
    out = np.concatenate([x for x, _ in dl])
    order, _ = dl.plan(dl.last_seed)
    got = np.round(out.transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    flipped = np.zeros(len(order), bool)
    for k, i in enumerate(order):
        mirror = np.array_equal(got[k], ds_images[i][:, ::-1])
        assert mirror or np.array_equal(got[k], ds_images[i]), "neither the image nor its mirror"
        flipped[i] = mirror
    return flipped


# --- alternating flip ----------------------------------------------------------------------------

def test_each_image_alternates_orientation_every_epoch():
    dl = flip_loader(distinct_dataset())
    epochs = [flips_of_epoch(dl) for _ in range(4)]
    assert 0 < epochs[0].sum() < len(epochs[0])                  # a random choice per image
    np.testing.assert_array_equal(epochs[1], ~epochs[0])
    np.testing.assert_array_equal(epochs[2], epochs[0])
    np.testing.assert_array_equal(epochs[3], ~epochs[0])
    assert [dl.last_epoch, dl.next_epoch] == [3, 4]


def test_flips_are_a_function_of_the_seed_and_the_image_not_of_order_or_batching():
    ds = distinct_dataset()
    first = flips_of_epoch(flip_loader(ds, seed=4))
    np.testing.assert_array_equal(flips_of_epoch(flip_loader(ds, seed=4, batch_size=11,
                                                             shuffle=False, prefetch=0)), first)
    assert not np.array_equal(flips_of_epoch(flip_loader(ds, seed=5)), first)


def test_about_half_the_images_are_flipped_on_epoch_0():
    d = A.Compose([A.AlternatingFlip()]).draw(
        np.random.default_rng(0), 4000, (2, 2), A.BatchInfo(np.arange(4000), 0, 123, 4000))
    flipped = d.params[0]["do"].sum()
    assert abs(flipped - 2000) < 4 * np.sqrt(4000 * 0.25)        # binomial: 4 sigma is 126


def test_alternating_flip_does_not_draw_from_the_loader_rng():
    """Epoch seeds (shuffle, other augmentations) are those of the same loader without it."""
    ds = distinct_dataset()
    with_flip, without = flip_loader(ds, seed=2), DataLoader(
        ds, 7, shuffle=True, transform=A.Compose([A.FlipLR(0.0)]),
        rng=np.random.default_rng(2), normalize=False)
    for _ in range(2):
        list(with_flip), list(without)
        assert with_flip.last_seed == without.last_seed


def test_resume_at_epoch_k_gives_the_same_batches():
    """A new loader with the same seed, its rng state restored and set_epoch(k) (what
    Learner.load + fit(start_epoch=k) do) makes epoch k bit for bit: flips and translations."""
    ds = distinct_dataset(n=25, h=6, w=6)

    def make():
        return DataLoader(ds, 8, shuffle=True, transform=A.airbench_transforms(translate=2),
                          rng=np.random.default_rng(9), normalize=False)

    run = make()
    list(run), list(run)
    state = run.rng.bit_generator.state
    epoch2, epoch3 = [[x for x, _ in run] for _ in range(2)]

    resumed = make()
    resumed.rng.bit_generator.state = state
    resumed.set_epoch(2)
    for expected in (epoch2, epoch3):
        got = [x for x, _ in resumed]
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="set_epoch"):
        resumed.set_epoch(-1)


def test_bare_call_without_batch_info_is_a_random_flip():
    x = distinct_dataset(n=200, h=2, w=3).images
    out, d = A.Compose([A.AlternatingFlip()])(x, np.random.default_rng(1), return_draws=True)
    do = d.params[0]["do"]
    assert 60 < do.sum() < 140
    np.testing.assert_array_equal(out[do], x[do][:, :, ::-1])
    np.testing.assert_array_equal(out[~do], x[~do])
    with pytest.raises(ValueError, match="BatchInfo holds 3 indices"):
        A.AlternatingFlip().draw(np.random.default_rng(), 4, (2, 2),
                                 A.BatchInfo(np.arange(3), 0, 1, 10))


def test_loader_without_a_seed_sequence_refuses_per_sample_transforms():
    rng = np.random.Generator(np.random.MT19937())
    if not hasattr(rng.bit_generator, "_legacy_seeding"):
        pytest.skip("this NumPy has no legacy seeding")
    rng.bit_generator._legacy_seeding(3)                       # what RandomState(3) does
    dl = DataLoader(distinct_dataset(), 7, transform=A.airbench_transforms(), rng=rng)
    with pytest.raises(ValueError, match="per-sample transform needs an rng made from a seed"):
        dl.one_batch()


# --- translation by whole pixels -----------------------------------------------------------------

@pytest.mark.parametrize("mode, np_mode", [("reflection", "reflect"), ("zeros", "constant")])
def test_translate_pixels_is_pad_then_random_crop_of_the_same_size(mode, np_mode):
    x = distinct_dataset(n=300, h=6, w=7).images
    out, d = A.Compose([A.translate(pixels=2, pad_mode=mode)])(x, np.random.default_rng(3),
                                                              return_draws=True)
    assert out.shape == x.shape
    shift = d.params[0]["shift_px"]                                 # (dx, dy) per image
    assert d.params[0]["do"].all()                                  # p defaults to 1 here
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode=np_mode)
    for n, (dx, dy) in enumerate(shift):
        np.testing.assert_array_equal(out[n], padded[n, 2 - dy:2 - dy + 6, 2 - dx:2 - dx + 7])
    counts = np.array([[np.sum((shift[:, 0] == sx) & (shift[:, 1] == sy)) for sx in range(-2, 3)]
                       for sy in range(-2, 3)])
    assert counts.min() > 0 and counts.max() < 30                  # all 25 offsets, ~12 each


def test_translate_pixels_arguments():
    x = distinct_dataset(n=4).images
    np.testing.assert_array_equal(A.translate(pixels=0)(x, np.random.default_rng()), x)
    assert A.translate(pixels=2).p == 1.0 and A.translate(0.1).p == 0.75
    with pytest.raises(ValueError, match="pixels must be a whole number"):
        A.translate(pixels=1.5)
    with pytest.raises(ValueError, match="pixels must be a whole number"):
        A.translate(pixels=-1)


def test_airbench_preset():
    tfm = A.airbench_transforms()
    assert [type(t) for t in tfm.tfms] == [A.Translate, A.AlternatingFlip]
    assert tfm.tfms[0].pixels == 2 and tfm.pad_mode == "reflection" and tfm.per_sample
    random_flip = A.airbench_transforms(translate=0, flip="random")
    assert [type(t) for t in random_flip.tfms] == [A.FlipLR] and not random_flip.per_sample
    assert len(A.airbench_transforms(flip=None)) == 1
    with pytest.raises(ValueError, match="flip must be"):
        A.airbench_transforms(flip="sometimes")


# --- through the Learner --------------------------------------------------------------------------

class Flat(nn.Module):
    """A linear classifier of the whole (3, 4, 5) picture: a flip changes its outputs."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4 * 5 * 3, 3, rng=np.random.default_rng(0))

    def forward(self, x):
        return self.lin(x.reshape(x.shape[0], -1))


def test_learner_tells_the_loader_the_epoch_so_a_resumed_fit_continues_the_pattern():
    class Seen(Callback):
        def after_epoch(self):
            seen.append(self.learn.train_dl.last_epoch)

    seen = []
    dl = flip_loader(distinct_dataset())
    learn = Learner(Flat(), dl, None, silent=True, seed=0, cbs=[Seen()])
    learn.fit(4, 0.01, start_epoch=2)
    assert seen == [2, 3]
    learn.fit(2, 0.01)
    assert seen == [2, 3, 0, 1]


def test_checkpoint_resume_with_airbench_augmentation_is_bit_identical(tmp_path):
    """Interrupted after epoch 0, reloaded into a fresh Learner, resumed at epoch 1 (odd: the
    mirrored one): the same weights as the uninterrupted run, so the same flips and crops."""
    def learner():
        train_dl, valid_dl = loaders(distinct_dataset(n=40), distinct_dataset(n=9, seed=1),
                                     batch_size=8, transform=A.airbench_transforms(), seed=3)
        return Learner(Flat(), train_dl, valid_dl, silent=True, seed=3)

    class Crash(Callback):
        order = 65

        def after_epoch(self):
            if self.learn.epoch == 0:
                raise CancelFit

    full = learner()
    full.fit_one_cycle(4, 0.1)
    learner().fit_one_cycle(4, 0.1, cbs=[Checkpoint(tmp_path / "c.npz"), Crash()])
    resumed = learner().load(tmp_path / "c.npz")
    assert resumed.checkpoint_epoch == 1
    resumed.fit_one_cycle(4, 0.1, start_epoch=1)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)
