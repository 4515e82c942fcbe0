"""ImageFolder(size, crop=True): photos resized keeping their aspect (centre box), JPEG shrunk
while decoding; the uncropped path and its cache keys unchanged."""
import numpy as np
import pytest
from PIL import Image

from tinyconv.data import ImageFolder
from tinyconv.data.datasets import _centre_box


@pytest.fixture
def photos(tmp_path):
    """Two classes of 600x900 'photos' (landscape) with a white left and a black right band,
    and one portrait 900x600 image: what a centre crop must cut off."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for k, name in enumerate(["a", "b"]):
        (root / name).mkdir(parents=True)
        for i in range(2):
            im = rng.integers(60, 200, (600, 900, 3), dtype=np.uint8)
            im[:, :150], im[:, -150:] = 255, 0
            Image.fromarray(im).save(root / name / f"{i}.jpg", quality=95)
    tall = rng.integers(60, 200, (900, 600, 3), dtype=np.uint8)
    tall[:150], tall[-150:] = 255, 0
    Image.fromarray(tall).save(root / "a" / "tall.png")
    return root


def test_crop_keeps_the_centre_and_drops_the_bands(photos):
    squashed = ImageFolder(photos, size=64, cache=False)
    cropped = ImageFolder(photos, size=64, cache=False, crop=True)
    assert cropped.images.shape == squashed.images.shape == (5, 64, 64, 3)
    assert squashed.images[[0, 1, 3, 4], :, :5].min() > 240       # the bands survive a squash
    assert squashed.images[2, :5].min() > 240
    inner = cropped.images[:, 2:-2, 2:-2]
    assert 100 < inner.mean() < 160 and inner.max() < 250 and inner.min() > 5
    assert cropped.classes == ["a", "b"] and list(cropped.labels) == [0, 0, 0, 1, 1]


def test_crop_matches_pillow_s_centre_crop_then_resize(photos):
    # the reference: torchvision's recipe done by hand (crop the centre box, then resize)
    with Image.open(photos / "a" / "tall.png") as im:
        box = _centre_box(*im.size, (32, 48))
        want = np.asarray(im.crop(tuple(round(v) for v in box)).resize((48, 32),
                                                                        Image.BILINEAR))
    got = ImageFolder(photos, size=(32, 48), cache=False, crop=True).images[2]   # tall.png
    assert np.abs(got.astype(int) - want).mean() < 1.0


@pytest.mark.parametrize("width,height,size,box", [(900, 600, (224, 224), (150, 0, 750, 600)),
                                                    (600, 900, (224, 224), (0, 150, 600, 750)),
                                                    (400, 200, (100, 200), (0, 0, 400, 200))])
def test_centre_box(width, height, size, box):
    assert _centre_box(width, height, size) == pytest.approx(box)


def test_crop_has_its_own_cache_entry(photos, tmp_path):
    cache = tmp_path / "cache"
    a = ImageFolder(photos, size=32, cache=cache)
    b = ImageFolder(photos, size=32, cache=cache, crop=True)
    assert len(list(cache.glob("*.npy"))) == 2
    assert not np.array_equal(a.images, b.images)
    np.testing.assert_array_equal(ImageFolder(photos, size=32, cache=cache, crop=True).images,
                                  b.images)
