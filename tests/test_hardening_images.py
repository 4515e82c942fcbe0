"""Images decoded faithfully: wide (16-bit, 32-bit, float) grey images scaled by their range,
alpha composited over black, CMYK and palette images as Pillow converts them, and a
decompression bomb refused in one line."""
import numpy as np
import pytest
from PIL import Image

from tinyconv.data import DatasetError, ImageFolder
from tinyconv.data.datasets import decode_image


def folder_of(tmp_path, images, ext):
    """root/a/<i>.<ext> and root/b/<i>.<ext>, each class holding `images` (Pillow images)."""
    for c in ("a", "b"):
        (tmp_path / "root" / c).mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            im.save(tmp_path / "root" / c / f"{i}.{ext}")
    return ImageFolder(tmp_path / "root", cache=False)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], np.uint16)
    ds = folder_of(tmp_path, [Image.fromarray(values)], "png")
    np.testing.assert_array_equal(ds.images[0, ..., 0], [[0, 1, 128, 255]])


def test_32_bit_integer_tiff_within_16_bits_and_beyond(tmp_path):
    within = np.array([[0, 65535]], np.int32)
    beyond = np.array([[-100, 100_000]], np.int32)                  # its own min..max
    for values, expected in ((within, [[0, 255]]), (beyond, [[0, 255]])):
        Image.fromarray(values).save(tmp_path / "x.tif")
        np.testing.assert_array_equal(decode_image(tmp_path / "x.tif")[..., 0], expected)
    Image.fromarray(np.array([[0, 30000, 60000]], np.int32)).save(tmp_path / "x.tif")
    np.testing.assert_array_equal(decode_image(tmp_path / "x.tif")[..., 0], [[0, 117, 233]])


@pytest.mark.parametrize("values, expected", [
    ([[0.0, 0.5, 1.0]], [[0, 128, 255]]),                          # [0, 1]
    ([[0.0, 100.0, 255.0]], [[0, 100, 255]]),                      # [0, 255]
    ([[-1.0, 0.0, 1.0]], [[0, 128, 255]]),                         # its own min..max
    ([[np.nan, 0.5, np.inf]], [[0, 128, 0]]),                      # non-finite -> 0
])
def test_float_tiff_is_scaled_by_its_range(tmp_path, values, expected):
    Image.fromarray(np.array(values, np.float32)).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(decode_image(tmp_path / "f.tif")[..., 0], expected)


def test_alpha_is_composited_over_black(tmp_path):
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    got = decode_image(tmp_path / "a.png")
    np.testing.assert_array_equal(got[0, 0], [200, 100, 50])
    np.testing.assert_array_equal(got[0, 1], [0, 0, 0])               # transparent: black
    np.testing.assert_allclose(got[0, 2], np.round(np.array([200, 100, 50]) * 128 / 255), atol=1)
    la = Image.fromarray(np.array([[[90, 255], [90, 0]]], np.uint8), "LA")
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "la.png")[..., 0], [[90, 0]])


def test_palette_with_a_transparent_colour_and_cmyk(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 1
    p.save(tmp_path / "p.png", transparency=1)
    np.testing.assert_array_equal(decode_image(tmp_path / "p.png")[0], [[255, 0, 0], [0, 0, 0]])
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))              # pure red in CMYK
    cmyk.save(tmp_path / "c.jpg", quality=100)
    got = decode_image(tmp_path / "c.jpg")[0, 0]
    expected = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"))[0, 0]
    np.testing.assert_array_equal(got, expected)


def test_channels_are_forced_for_a_model(tmp_path):
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "g.png")
    rgb = decode_image(tmp_path / "g.png", channels=3)
    assert rgb.shape == (1, 2, 3) and (rgb[0, 1] == 255).all()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "c.png")
    assert decode_image(tmp_path / "c.png", channels=1).shape == (2, 2, 1)


@pytest.mark.parametrize("side", [40, 100])            # over the limit (warning) / over 2x (error)
def test_a_decompression_bomb_is_one_line(tmp_path, monkeypatch, side):
    Image.new("L", (side, side)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DatasetError, match=r"bomb.png: refusing to decode it: .*pixels") as err:
        decode_image(tmp_path / "bomb.png")
    assert "\n" not in str(err.value)
