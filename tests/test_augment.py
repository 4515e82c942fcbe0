"""Augmentations: exact identities, replay, one interpolation, kernel parity, presets, normalise."""
import numpy as np
import pytest

from tinyconv import augment as A
from tinyconv.kernels import augment as K


def images(n=4, h=6, w=6, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def gen(seed=0):
    return np.random.default_rng(seed)


def apply_with(tfm, x, **fixed):
    """Apply one transform with some of its drawn parameters overwritten (replay of a draw)."""
    comp = A.Compose([tfm])
    d = comp.draw(gen(), x.shape[0], x.shape[1:3])
    for k, v in fixed.items():
        d.params[0][k] = np.broadcast_to(np.asarray(v), d.params[0][k].shape).copy()
    return comp.apply(x, d)


# --- exact identities -----------------------------------------------------------------------------

@pytest.mark.parametrize("tfm, axis", [(A.flip_lr, 2), (A.flip_ud, 1)])
def test_flip_is_np_flip_and_twice_is_identity(tfm, axis):
    x = images(h=5, w=7)
    t = tfm(p=1.0)
    once = t(x, gen())
    np.testing.assert_array_equal(once, np.flip(x, axis=axis))
    np.testing.assert_array_equal(t(once, gen(1)), x)


@pytest.mark.parametrize("size", [6, 7])
@pytest.mark.parametrize("kernel", [K.warp, K.warp_reference])
def test_rotate_90_through_affine_path_equals_np_rot90(size, kernel, monkeypatch):
    monkeypatch.setattr(K, "warp", kernel)          # the Numba kernel and the NumPy spec
    x = images(h=size, w=size)
    for angle, k in ((90, 1), (-90, 3), (180, 2), (270, 3)):
        out = A.rotate(degrees=(angle, angle), p=1.0)(x, gen())
        np.testing.assert_array_equal(out, np.rot90(x, k, axes=(1, 2)))
    for k in range(4):
        np.testing.assert_array_equal(A.rot90(k=k)(x, gen()), np.rot90(x, k, axes=(1, 2)))


@pytest.mark.parametrize("tfm", [A.zoom(max_zoom=1.0, min_zoom=1.0, p=1.0),
                                 A.rotate(degrees=(0, 0), p=1.0),
                                 A.translate(max_pct=0.0, p=1.0),
                                 A.warp(magnitude=0.0, p=1.0),
                                 A.random_crop(size=(5, 7), padding=0),
                                 A.resize((5, 7)),
                                 A.lighting(b=0.0, c=0.0),
                                 A.brightness(max_lighting=0.0, p=1.0),
                                 A.contrast(max_lighting=0.0, p=1.0)])
def test_neutral_parameters_are_the_identity(tfm):
    x = images(h=5, w=7)
    np.testing.assert_array_equal(tfm(x, gen()), x)


def test_probability_zero_is_the_identity_for_every_random_transform():
    x = images(h=9, w=8)
    tfm = A.Compose([A.flip_lr(p=0), A.flip_ud(p=0), A.dihedral(p=0), A.rot90(p=0),
                     A.rotate(30, p=0), A.zoom(2.0, p=0), A.translate(0.3, p=0), A.warp(0.4, p=0),
                     A.lighting(0.3, 0.3, p=0), A.brightness(0.5, p=0), A.contrast(0.5, p=0),
                     A.cutout(4, p=0)])
    np.testing.assert_array_equal(tfm(x, gen()), x)


def test_dihedral_gives_the_8_distinct_symmetries():
    x = images(n=1, h=5, w=5)
    outs = [apply_with(A.dihedral(), x, k=k)[0] for k in range(8)]
    keys = {o.tobytes() for o in outs}
    assert len(keys) == 8
    expected = {np.rot90(f, k).tobytes() for f in (x[0], x[0][:, ::-1]) for k in range(4)}
    assert keys == expected


def test_dihedral_draws_are_uniform_over_8():
    d = A.Compose([A.dihedral()]).draw(gen(), 8000, (4, 4))
    counts = np.bincount(d.params[0]["k"], minlength=8)
    assert counts.min() > 850 and counts.max() < 1150


# --- one matrix, one interpolation ----------------------------------------------------------------

def test_affine_draws_compose_into_one_interpolation():
    x = images(h=12, w=12)
    there_and_back = A.Compose([A.rotate((30, 30), p=1), A.rotate((-30, -30), p=1)])
    np.testing.assert_array_equal(there_and_back(x, gen()), x)      # one matrix: exactly I
    sequential = A.rotate((-30, -30), p=1)(A.rotate((30, 30), p=1)(x, gen()), gen())
    assert not np.array_equal(sequential, x)                         # two resamplings blur


def test_composed_matrix_is_the_product_in_list_order():
    tfms = [A.flip_lr(p=1), A.rotate(20, p=1), A.zoom(1.3, p=1), A.warp(0.3, p=1)]
    comp = A.Compose(tfms)
    d = comp.draw(gen(), 3, (8, 10))
    expected = np.eye(3)
    for t, p in zip(tfms, d.params):
        expected = expected @ t.matrix(p, (8, 10), (8, 10))
    np.testing.assert_allclose(comp.matrices(d), expected, rtol=0, atol=1e-9)


def test_rotation_is_counter_clockwise_and_flip_then_rotate_order():
    """flip then rotate 90 (list order = order applied to the picture)."""
    x = images(n=1, h=5, w=5)
    out = A.Compose([A.flip_lr(p=1), A.rot90(k=1)])(x, gen())
    np.testing.assert_array_equal(out[0], np.rot90(x[0][:, ::-1], 1))


# --- replay ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", [A.aug_transforms, A.transforms_top_down,
                                    lambda: A.cifar_transforms(size=12, cutout=4),
                                    lambda: A.aug_transforms(size=8, min_scale=0.5)])
def test_replaying_recorded_draws_reproduces_the_batch_bit_for_bit(preset):
    x = images(n=16, h=12, w=12)
    tfm = preset()
    out, draws = tfm(x, gen(5), return_draws=True)
    np.testing.assert_array_equal(tfm.apply(x, draws), out)
    np.testing.assert_array_equal(tfm(x, gen(5)), out)               # same seed, same batch
    assert not np.array_equal(tfm(x, gen(6)), out)
    assert out.dtype == np.uint8 and not np.shares_memory(out, x)


def test_apply_checks_draws_match_the_images():
    tfm = A.aug_transforms()
    d = tfm.draw(gen(), 4, (6, 6))
    with pytest.raises(ValueError, match="draws were made for 4 images"):
        tfm.apply(images(n=3), d)
    with pytest.raises(TypeError, match="Generator"):
        tfm(images(), 0)
    with pytest.raises(ValueError, match="uint8"):
        tfm(images().astype(np.float32), gen())


# --- padding modes and crops ----------------------------------------------------------------------

@pytest.mark.parametrize("mode, np_mode", [("reflection", "reflect"), ("zeros", "constant"),
                                           ("border", "edge")])
def test_random_crop_with_padding_matches_np_pad(mode, np_mode):
    x = images(n=6, h=8, w=9)
    comp = A.Compose([A.random_crop(size=(8, 9), padding=3, pad_mode=mode)])
    out, d = comp(x, gen(2), return_draws=True)
    padded = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)), mode=np_mode)
    for n in range(6):
        top, left = d.params[0]["top"][n], d.params[0]["left"][n]
        np.testing.assert_array_equal(out[n], padded[n, top:top + 8, left:left + 9])


def test_random_crop_offsets_cover_the_padded_range():
    d = A.Compose([A.random_crop(32, padding=4)]).draw(gen(), 5000, (32, 32))
    assert set(d.params[0]["top"]) == set(range(9)) and set(d.params[0]["left"]) == set(range(9))


def test_random_resized_crop_boxes_fit_and_follow_scale():
    t = A.random_resized_crop(8, scale=(0.25, 0.5), ratio=(0.75, 4 / 3))
    d = A.Compose([t]).draw(gen(), 2000, (40, 60))
    p = d.params[0]
    assert (p["top"] >= 0).all() and (p["top"] + p["height"] <= 40).all()
    assert (p["left"] >= 0).all() and (p["left"] + p["width"] <= 60).all()
    area = p["height"] * p["width"] / (40 * 60)
    assert area.min() > 0.2 and area.max() < 0.56
    out = t(images(n=3, h=40, w=60), gen())
    assert out.shape == (3, 8, 8, 3)


def test_resize_by_two_samples_between_pixels():
    """Downscale 2x maps output centres onto the midpoint of 2x2 source blocks (edges align)."""
    x = np.zeros((1, 4, 4, 1), np.uint8)
    x[0, :2, :2] = 100
    out = A.resize((2, 2))(x, gen())
    np.testing.assert_array_equal(out[0, ..., 0], [[100, 0], [0, 0]])


def test_translate_by_whole_pixels_is_a_shift():
    x = images(n=1, h=6, w=8)
    out = apply_with(A.translate(0.5, p=1.0, pad_mode="zeros"), x, shift_pct=[[0.25, 0.0]])
    np.testing.assert_array_equal(out[0, :, 2:], x[0, :, :-2])          # content moved right 2
    assert (out[0, :, :2] == 0).all()


def test_shift_moves_every_image_by_whole_pixels():
    x = images(n=3, h=6, w=8)
    out = A.Compose([A.Shift(dx=2, dy=-1, pad_mode="zeros")])(x, gen())
    np.testing.assert_array_equal(out[:, :-1, 2:], x[:, 1:, :-2])      # right 2, up 1, all images
    assert (out[:, :, :2] == 0).all() and (out[:, -1] == 0).all()
    back = A.Compose([A.Shift(-1, 0)])(A.Compose([A.Shift(1, 0)])(x, gen()), gen())
    np.testing.assert_array_equal(back[:, :, :-1], x[:, :, :-1])        # reflection keeps content


def test_pad_modes_must_agree_in_one_compose():
    with pytest.raises(ValueError, match="different pad modes"):
        A.Compose([A.rotate(10, pad_mode="zeros"), A.random_crop(4, 1, pad_mode="reflect")])
    c = A.Compose([A.rotate(10, pad_mode="zeros"), A.random_crop(4, 1)], pad_mode="border")
    assert c.pad_mode == "border"


def test_warp_homography_maps_moved_corners_to_corners():
    corners = np.array([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    moved = corners + np.random.default_rng(0).uniform(-0.3, 0.3, (4, 2))
    h = A.Warp.homography(corners[None], moved[None])[0]
    mapped = np.c_[moved, np.ones(4)] @ h.T
    np.testing.assert_allclose(mapped[:, :2] / mapped[:, 2:], corners, atol=1e-12)


# --- kernel parity (NumPy spec vs Numba) ----------------------------------------------------------

@pytest.mark.parametrize("mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("shape", [(3, 7, 9, 3), (2, 11, 5, 1), (2, 1, 6, 2), (1, 40, 56, 3)])
def test_warp_numba_matches_numpy_reference_bit_for_bit(mode, shape):
    x = images(*shape)
    g = gen(1)
    n = shape[0]
    mats = np.repeat(np.eye(3)[None], 4 * n, axis=0)
    mats[:, :2, :] += g.normal(0, 0.4, (4 * n, 2, 3))                 # general affine
    mats[:, :2, 2] += g.uniform(-3, 12, (4 * n, 2))                   # reaching outside
    mats[n:2 * n, 2, :2] = g.normal(0, 0.05, (n, 2))                  # projective
    mats[2 * n:3 * n] = np.round(mats[2 * n:3 * n])                   # integral: exact copy path
    mats[3 * n, 2] = [1.0, 0.0, -3.0]                                 # denominator crosses 0
    for k in range(4):
        m = mats[k * n:(k + 1) * n]
        for out_size in (shape[1:3], (5, 8)):
            np.testing.assert_array_equal(K.warp(x, m, out_size, mode),
                                          K.warp_reference(x, m, out_size, mode))


def test_reflection_matches_np_pad_reflect_far_outside():
    x = images(n=1, h=3, w=4)
    for shift in (-11, -5, 7, 13):
        m = np.eye(3)[None].copy()
        m[0, 0, 2], m[0, 1, 2] = shift, -shift
        padded = np.pad(x[0], ((20, 20), (20, 20), (0, 0)), mode="reflect")
        expected = padded[20 - shift:20 - shift + 3, 20 + shift:20 + shift + 4]
        for kernel in (K.warp, K.warp_reference):
            np.testing.assert_array_equal(kernel(x, m, (3, 4), "reflection")[0], expected)


def test_normalize_numba_matches_reference_and_formula():
    x = images(n=3, h=5, w=7)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = A.normalize(x, mean, std)
    assert out.dtype == np.float32 and out.shape == (3, 3, 5, 7)
    scale, shift = A._scale_shift(mean, std, 3)
    np.testing.assert_array_equal(out, K.normalize_nchw_reference(x, scale, shift))
    expected = (x.transpose(0, 3, 1, 2) / 255.0 - np.array(mean)[:, None, None]) \
        / np.array(std)[:, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(A.denormalize(out, mean, std), x)


def test_apply_luts_matches_reference():
    x = images(n=5)
    luts = gen().integers(0, 256, (2, 256), dtype=np.uint8)
    rows = np.array([3, 1])
    np.testing.assert_array_equal(K.apply_luts(x.copy(), luts, rows),
                                  K.apply_luts_reference(x.copy(), luts, rows))


def test_channel_stats_are_exact():
    x = images(n=7, h=5, w=6, c=3)
    mean, std = A.channel_stats(x)
    v = x.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, v.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, v.std(axis=0), rtol=1e-9)


# --- value transforms and cutout ------------------------------------------------------------------

def test_lighting_0_7_formula_with_image_mean():
    x = images(n=3, h=5, w=4)
    t = A.lighting(b=0.1, c=0.2)
    out, d = A.Compose([t])(x, gen(3), return_draws=True)
    b, c = d.params[0]["brightness"], d.params[0]["contrast"]
    f = x / 255.0
    mu = f.mean(axis=(1, 2, 3), keepdims=True)
    expected = np.clip((f - mu) * c[:, None, None, None] + mu + b[:, None, None, None], 0, 1)
    np.testing.assert_array_equal(out, np.floor(expected * 255 + 0.5).astype(np.uint8))


def test_lighting_0_7_contrast_mapping():
    d = A.lighting(b=0.0, c=0.5).draw(gen(), 10000, (2, 2))
    c = d["contrast"]
    assert c.min() >= 1 / 1.5 - 1e-12 and c.max() <= 1.5 + 1e-12
    assert abs(np.mean(c < 1) - 0.5) < 0.03       # c0 < 0 -> c' = -1/(c0-1) < 1


def test_brightness_then_contrast_compose_in_logit_space():
    x = images(n=4, h=5, w=5)
    comp = A.Compose([A.brightness(0.4, p=1.0), A.contrast(0.4, p=1.0)])
    out, d = comp(x, gen(4), return_draws=True)
    b, c = d.params[0]["change"], d.params[1]["change"]
    f = np.clip(x / 255.0, 1e-7, 1 - 1e-7)
    logit = np.log(f / (1 - f)) + np.log(b / (1 - b))[:, None, None, None]
    expected = 1 / (1 + np.exp(-logit * c[:, None, None, None]))
    np.testing.assert_allclose(out, expected * 255, atol=0.5 + 1e-6)
    assert np.abs(out.astype(int) - x).max() > 5


def test_cutout_fills_clipped_squares_and_leaves_the_rest():
    x = images(n=2, h=10, w=10)
    out = apply_with(A.cutout(4, fill=(1, 2, 3)), x, cy=[[0], [5]], cx=[[5], [9]])
    expected = x.copy()
    expected[0, 0:2, 3:7] = (1, 2, 3)
    expected[1, 3:7, 7:10] = (1, 2, 3)
    np.testing.assert_array_equal(out, expected)


# --- presets --------------------------------------------------------------------------------------

def test_presets_have_the_documented_parts():
    basic = A.transforms_basic()
    assert [type(t) for t in basic.tfms] == [A.Rotate, A.Lighting]
    assert basic.tfms[0].degrees == (-10.0, 10.0) and basic.tfms[0].p == 0.75
    assert (basic.tfms[1].b, basic.tfms[1].c) == (0.05, 0.05)
    assert [type(t) for t in A.transforms_side_on().tfms] == [A.Rotate, A.Lighting, A.FlipLR]
    assert [type(t) for t in A.transforms_top_down().tfms] == [A.Rotate, A.Lighting, A.Dihedral]
    assert type(A.transforms_basic(max_zoom=1.1).tfms[1]) is A.Zoom
    v2 = A.aug_transforms()
    assert [type(t) for t in v2.tfms] == [A.FlipLR, A.Warp, A.Rotate, A.Zoom, A.Brightness,
                                         A.Contrast]
    assert v2.pad_mode == "reflection" and v2.tfms[1].magnitude == 0.2 and v2.tfms[2].p == 0.75
    cifar = A.cifar_transforms(cutout=8)
    assert [type(t) for t in cifar.tfms] == [A.RandomCrop, A.FlipLR, A.Cutout]
    assert cifar.tfms[0].padding == 4 and cifar.pad_mode == "reflection"


def test_presets_keep_shape_dtype_and_sizes():
    x = images(n=8, h=32, w=32)
    for tfm in (A.transforms_basic(), A.transforms_side_on(), A.transforms_top_down(),
                A.aug_transforms(), A.aug_transforms(flip_vert=True),
                A.cifar_transforms(cutout=16)):
        out = tfm(x, gen())
        assert out.shape == x.shape and out.dtype == np.uint8
    assert A.aug_transforms(size=20)(x, gen()).shape == (8, 20, 20, 3)
    assert A.aug_transforms(size=(16, 24), min_scale=0.35)(x, gen()).shape == (8, 16, 24, 3)


def test_cifar_preset_only_moves_whole_pixels():
    """Crop + flip are integer maps: every output pixel is a copy of an input pixel."""
    x = images(n=20, h=32, w=32)
    out = A.cifar_transforms()(x, gen())
    for a, b in zip(out, x):
        assert set(map(bytes, a.reshape(-1, 3))) <= set(map(bytes, b.reshape(-1, 3)))


def test_tta_combine_is_fastai_lerp():
    plain = np.array([[0.2, 0.8]])
    aug = np.array([[[0.6, 0.4]], [[0.4, 0.6]]])
    np.testing.assert_allclose(A.tta_combine(plain, aug, beta=0.25), [[0.425, 0.575]])
    with pytest.raises(ValueError, match="tta_combine"):
        A.tta_combine(plain, aug[:, 0])


def test_plot_augmentations_writes_a_png_of_the_variations(tmp_path):
    from tinyconv.plot_data import plot_augmentations
    path = tmp_path / "aug.png"
    fig = plot_augmentations(images(n=1, h=16, w=16)[0], A.aug_transforms(), n=5, rng=gen(),
                             path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len([ax for ax in fig.axes if ax.images]) == 6          # the original + 5
    assert fig.axes[0].get_title() == "original"
    with pytest.raises(ValueError, match="plot_augmentations"):
        plot_augmentations(images(n=2), A.aug_transforms())
