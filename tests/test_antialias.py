"""Antialiased shrinking in the augmentation warp (Resize, RandomResizedCrop)."""
import numpy as np
import pytest

from tinyconv import augment as A
from tinyconv.kernels import augment as K


def _stripes(H=240, W=240, period=3):
    """One bright column in every `period`: the detail a plain bilinear shrink turns to moire."""
    row = ((np.arange(W) % period == 0) * 255).astype(np.uint8)
    return np.broadcast_to(row[None, None, :, None], (2, H, W, 3)).copy()


def test_shrinking_averages_instead_of_aliasing():
    src = _stripes()
    rng = np.random.default_rng(0)
    smooth = A.Compose([A.Resize(32)])(src, rng)                    # antialias is the default
    plain = A.Compose([A.Resize(32, antialias=False)])(src, rng)
    assert plain.max() - plain.min() > 150                          # the moire the filter removes
    assert smooth.max() - smooth.min() < 40
    assert abs(smooth.mean() - src.mean()) < 1.0 < abs(plain.mean() - src.mean())


def test_without_shrinking_it_is_the_plain_warp_bit_for_bit():
    src = np.random.default_rng(1).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    mats = A.Compose([A.Resize((40, 30))]).matrices(
        A.Compose([A.Resize((40, 30))]).draw(np.random.default_rng(0), 3, (20, 24)))
    assert A.antialias_taps(mats) == (1, 1)
    np.testing.assert_array_equal(A.warp_antialiased(src, mats, (40, 30)),
                                  K.warp(src, mats, (40, 30), "reflection"))
    for seed in range(3):               # a crop that is enlarged: same draws, same pixels
        crop = A.RandomResizedCrop(20, scale=(0.2, 0.5))
        a = crop(src, np.random.default_rng(seed))
        b = A.RandomResizedCrop(20, scale=(0.2, 0.5), antialias=False)(
            src, np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("in_size,out_size,taps", [((100, 100), (25, 25), (4, 4)),
                                                    ((100, 60), (50, 60), (2, 1)),
                                                    ((30, 30), (30, 30), (1, 1)),
                                                    ((900, 900), (30, 30), (8, 8))])
def test_taps_follow_the_shrink_factor_capped(in_size, out_size, taps):
    t = A.Compose([A.Resize(out_size)])
    mats = t.matrices(t.draw(np.random.default_rng(0), 2, in_size))
    assert A.antialias_taps(mats) == taps


def test_a_flat_image_stays_flat_and_shapes_dtypes_hold():
    src = np.full((5, 64, 48, 3), 77, np.uint8)
    out = A.Compose([A.RandomResizedCrop(16, scale=(0.5, 1.0))])(src, np.random.default_rng(2))
    assert out.shape == (5, 16, 16, 3) and out.dtype == np.uint8
    assert (out == 77).all()
