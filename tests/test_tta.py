"""Learner.tta's fixed-view modes: "flip" and "shift" (airbench's tta_level 1 and 2) equal the
hand-computed logit averages on a tiny conv net; "aug" stays the default; bad modes are refused."""
import numpy as np
import pytest

import tinyconv as tc
from tinyconv import augment as A
from tinyconv import nn
from tinyconv.data import ArrayDataset, DataLoader
from tinyconv.learner import Learner


class TinyConv(nn.Module):
    """conv 3x3 -> ReLU -> flatten -> linear: sensitive to flips and shifts (no pooling)."""

    def __init__(self, size=6, classes=4):
        super().__init__()
        rng = np.random.default_rng(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, rng=rng)
        self.head = nn.Linear(4 * size * size, classes, rng=rng)

    def forward(self, x):
        h = self.conv(x).relu()
        return self.head(h.reshape(h.shape[0], -1))


def setup(n=20, size=6):
    g = np.random.default_rng(1)
    ds = ArrayDataset(g.integers(0, 256, (n, size, size, 3), dtype=np.uint8), g.integers(0, 4, n),
                      list("abcd"))
    dl = DataLoader(ds, batch_size=8, mean=0.5, std=0.25)
    learn = Learner(TinyConv(size), dl, dl, silent=True, seed=0)
    return learn, ds


def logits(learn, images):
    """The model's raw outputs on uint8 images (N, H, W, C), normalised as the loader does."""
    x = (images.astype(np.float32) / 255 - 0.5) / 0.25
    learn.model.eval()
    with tc.no_grad():
        return learn.model(tc.Tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).data


def softmax(z):
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def mirror_average(learn, images):
    return (logits(learn, images) + logits(learn, images[:, :, ::-1])) / 2


def test_flip_is_the_softmax_of_the_mean_logits_of_the_image_and_its_mirror():
    learn, ds = setup()
    probs, targets = learn.tta(mode="flip")
    expected = softmax(mirror_average(learn, ds.images))
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(targets, ds.labels)
    assert not np.allclose(probs, learn.get_preds()[0], atol=1e-4)   # the mirror mattered


def test_shift_is_airbench_tta_level_2():
    """0.5 * mirror average + 0.25 * each mirror average of the reflect-padded 1-pixel shifts:
    padded[:, 0:H, 0:W] (content moved down-right) and padded[:, 2:H+2, 2:W+2] (up-left)."""
    learn, ds = setup()
    probs, _ = learn.tta(learn.valid_dl, mode="shift")
    H, W = ds.images.shape[1:3]
    padded = np.pad(ds.images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifted = [padded[:, 0:H, 0:W], padded[:, 2:H + 2, 2:W + 2]]
    expected = 0.5 * mirror_average(learn, ds.images) \
        + 0.5 * np.mean([mirror_average(learn, s) for s in shifted], axis=0)
    np.testing.assert_allclose(probs, softmax(expected), rtol=1e-5, atol=1e-7)
    flip, _ = learn.tta(learn.valid_dl, mode="flip")
    assert not np.allclose(probs, flip, atol=1e-4)                  # the shifts mattered


def test_view_weights_sum_to_one():
    for mode, count in (("flip", 2), ("shift", 6)):
        views = A.tta_views(mode)
        assert len(views) == count and sum(w for w, _ in views) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="tta_views: mode"):
        A.tta_views("aug")


def test_default_mode_is_fastai_aug_and_bad_modes_are_refused():
    learn, _ = setup()
    with pytest.raises(ValueError, match="no augmentation"):    # aug: needs a training transform
        learn.tta()
    with pytest.raises(ValueError, match=r"mode must be one of aug, flip, shift, got 'mirror'"):
        learn.tta(mode="mirror")
    blank = ArrayDataset(np.zeros((4, 6, 6, 3), np.uint8), np.zeros(4, np.int64), ["a"])
    shuffled = DataLoader(blank, batch_size=2, shuffle=True, mean=0.5, std=0.25)
    with pytest.raises(ValueError, match="the loader shuffles"):
        learn.tta(shuffled, mode="flip")
