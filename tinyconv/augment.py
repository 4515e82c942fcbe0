"""Data augmentation on batches of uint8 images, fastai style.

Decision: transforms take and return uint8 arrays (N, H, W, C), before normalisation. One byte per
value keeps the memory traffic of every pass small, the source pixels are 8-bit anyway (rounding a
bilinear sample back to uint8 costs at most 0.5/255), and `normalize` then turns the batch into the
float32 (N, C, H, W) the model wants in one fused pass.

A transform has a probability `p` (applied per image) and three kinds:

- geometric (flips, alternating flip, dihedral, rot90, rotate, zoom, translate, warp, random_crop,
  random_resized_crop, resize): each gives one 3x3 matrix per image that maps output pixel
  coordinates to input pixel coordinates. `Compose` multiplies all of them into ONE matrix per
  image, so the batch is resampled by ONE bilinear interpolation (not one per transform: no
  accumulated blur, no corners lost to padding in between);
- value (lighting, brightness, contrast): each gives a curve on [0, 1] per image; the composed
  curve becomes one 256-entry lookup table per image;
- erase (cutout): rectangles filled after everything else.

Order: all geometric transforms (in list order), then value transforms (in list order), then erase.

Per-sample transforms (`per_sample = True`, e.g. AlternatingFlip) also see WHICH images a batch
holds and in WHICH epoch: the DataLoader passes a `BatchInfo` (dataset indices, epoch number, the
loader's fixed per-run seed), so a choice can be made once per image and replayed every epoch.

Randomness is drawn first and recorded: `draws = tfm.draw(rng, n, (H, W))` returns a `Draws`
record (the arrays of every random choice), `tfm.apply(images, draws)` is a pure function of it.
`tfm(images, rng)` does both; replaying recorded draws reproduces a batch bit for bit.

Coordinates are pixel centres, x = column in [0, W-1], y = row in [0, H-1]; rotations, flips and
zooms are about the image centre ((W-1)/2, (H-1)/2); positive angles turn the picture
counter-clockwise (rotate by 90 degrees == np.rot90).
"""
import math
from dataclasses import dataclass, field

import numpy as np

from tinyconv.kernels import augment as K

__all__ = [
    "Transform", "Compose", "Draws", "BatchInfo",
    "FlipLR", "FlipUD", "AlternatingFlip", "Dihedral", "Rot90", "Rotate", "Zoom", "Translate",
    "Shift", "Warp",
    "RandomCrop", "RandomResizedCrop", "Resize", "Lighting", "Brightness", "Contrast", "Cutout",
    "flip_lr", "flip_ud", "alternating_flip", "dihedral", "rot90", "rotate", "zoom", "translate",
    "warp",
    "random_crop", "random_resized_crop", "resize", "lighting", "brightness", "contrast", "cutout",
    "transforms_basic", "transforms_side_on", "transforms_top_down", "aug_transforms",
    "cifar_transforms", "airbench_transforms", "CIFAR10_MEAN", "CIFAR10_STD",
    "normalize", "denormalize", "channel_stats", "tta_combine", "TTA_MODES", "tta_views",
    "warp_antialiased", "antialias_taps",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_PAD_ALIASES = {"reflect": "reflection", "zero": "zeros", "constant": "zeros", "edge": "border"}


def _pad_mode(mode):
    if mode is None:
        return None
    mode = _PAD_ALIASES.get(mode, mode)
    if mode not in K.PAD_MODES:
        raise ValueError(f"pad_mode must be one of {sorted(K.PAD_MODES)}, got {mode!r}")
    return mode


def _size2(size, what):
    if isinstance(size, (int, np.integer)):
        size = (size, size)
    size = (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise ValueError(f"{what}: size must be positive, got {size}")
    return size


# --------------------------------------------------------------------------------------------------
# 3x3 matrices, batched (n, 3, 3), in pixel coordinates, mapping output -> input
# --------------------------------------------------------------------------------------------------

def _eye(n):
    return np.repeat(np.eye(3)[None], n, axis=0)


def _linear_about_centre(a, size):
    """(n, 2, 2) linear maps applied about the image centre: p -> c + a @ (p - c)."""
    H, W = size
    c = np.array([(W - 1) / 2, (H - 1) / 2])
    m = _eye(a.shape[0])
    m[:, :2, :2] = a
    m[:, :2, 2] = c - a @ c
    return m


def _rotation(angle_rad):
    cos, sin = np.cos(angle_rad), np.sin(angle_rad)
    return np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)


def _quarter_turns(k):
    """Exact integer rotation matrices for k * 90 degrees (no cos(pi/2) = 6e-17 residue)."""
    cos = np.array([1, 0, -1, 0])[k % 4]
    sin = np.array([0, 1, 0, -1])[k % 4]
    return np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2).astype(float)


def _where(do, m):
    """m for the images drawn to be transformed, the identity for the others."""
    return np.where(do[:, None, None], m, _eye(len(do)))


def _snap(m, tol=1e-9):
    """Round entries within `tol` of an integer: products of exact turns and flips stay exact."""
    r = np.round(m)
    return np.where(np.abs(m - r) < tol, r, m)


# --------------------------------------------------------------------------------------------------
# Base classes and the recorded draws
# --------------------------------------------------------------------------------------------------

@dataclass
class Draws:
    """Every random choice of one call: replay with `Compose.apply(images, draws)`.

    params: one dict of arrays per transform (each has 'do' (n,) bool: was it applied);
    n: batch size; in_size / out_size: (H, W) before and after.
    """
    n: int
    in_size: tuple
    out_size: tuple
    params: list = field(default_factory=list)


@dataclass(frozen=True)
class BatchInfo:
    """Which images a batch holds, and when: what a per-sample transform decides from.

    index (n,) int64: the dataset positions of the batch's images; epoch: the epoch number
    (0 first); seed: the loader's per-run seed (the same every epoch); n_items: the dataset size.
    """
    index: np.ndarray
    epoch: int
    seed: int
    n_items: int


class Transform:
    """A random augmentation with per-image probability `p`; subclasses set `kind`."""

    kind = None          # "affine", "value" or "erase"
    pad_mode = None      # affine transforms may require one; Compose checks they agree
    antialias = False    # affine transforms that shrink may ask Compose to filter (see warp)
    per_sample = False   # True: draw(rng, n, size, info) also gets the batch's BatchInfo

    def __init__(self, p):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{type(self).__name__}: p must be in [0, 1], got {p}")
        self.p = float(p)

    def _do(self, rng, n):
        return rng.random(n) < self.p

    def draw(self, rng, n, size):
        """Random parameters for n images of `size` (H, W): a dict of arrays with 'do'."""
        raise NotImplementedError

    def out_size(self, size):
        return size

    def __call__(self, images, rng, return_draws=False, info=None):
        return Compose([self])(images, rng, return_draws=return_draws, info=info)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class AffineTransform(Transform):
    kind = "affine"

    def matrix(self, d, in_size, out_size):
        """(n, 3, 3) matrices mapping output pixel (x, y, 1) to input pixel coordinates."""
        raise NotImplementedError


class ValueTransform(Transform):
    kind = "value"
    needs_mean = False   # True if the curve depends on the image's mean value

    def curve(self, d, x, mean):
        """x (n, 256) values in [0, 1] -> (n, 256); `mean` (n,) mean of each image under x."""
        raise NotImplementedError


class EraseTransform(Transform):
    kind = "erase"

    def erase(self, images, d):
        """Modify images (N, H, W, C) uint8 in place."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# Geometric transforms
# --------------------------------------------------------------------------------------------------

class FlipLR(AffineTransform):
    """Mirror left-right with probability p: x -> W-1-x."""

    def __init__(self, p=0.5):
        super().__init__(p)

    def draw(self, rng, n, size):
        return {"do": self._do(rng, n)}

    def matrix(self, d, in_size, out_size):
        return _where(d["do"], _linear_about_centre(np.diag([-1.0, 1.0])[None], in_size))


class FlipUD(FlipLR):
    """Mirror top-bottom with probability p: y -> H-1-y."""

    def matrix(self, d, in_size, out_size):
        return _where(d["do"], _linear_about_centre(np.diag([1.0, -1.0])[None], in_size))


class AlternatingFlip(FlipLR):
    """airbench's alternating flip: each image gets a random left-right flip ONCE (probability p,
    from the loader's per-run seed), and every odd epoch mirrors all of them, so every image is
    seen in both orientations in turn (Jordan 2024: more diverse than a fresh coin each epoch).

        flipped(i, epoch) = base[i] XOR (epoch is odd),  base = default_rng(seed).random(N) < p

    A pure function of (seed, index, epoch): resuming at epoch k repeats the same flips. Needs the
    loader's BatchInfo; called on a bare batch it acts as epoch 0 of a seed drawn from rng.
    """

    per_sample = True

    def draw(self, rng, n, size, info=None):
        if info is None:
            info = BatchInfo(np.arange(n), 0, int(rng.integers(0, 2 ** 63)), n)
        if len(info.index) != n:
            raise ValueError(f"AlternatingFlip: BatchInfo holds {len(info.index)} indices for a "
                             f"batch of {n} images")
        # all N coins from the per-run seed, every batch: 45,000 draws cost ~0.2 ms, no cache
        base = np.random.default_rng(info.seed).random(info.n_items) < self.p
        return {"do": base[info.index] ^ bool(info.epoch % 2)}


class Rot90(AffineTransform):
    """Rotate by k quarter turns counter-clockwise (k drawn from 0..3 when None), as np.rot90.

    Exact on square images; on others the turned picture is cropped/padded to the same size.
    """

    def __init__(self, k=None, p=1.0):
        super().__init__(p)
        self.k = k

    def draw(self, rng, n, size):
        k = rng.integers(0, 4, n) if self.k is None else np.full(n, int(self.k) % 4)
        return {"do": self._do(rng, n), "k": k}

    def matrix(self, d, in_size, out_size):
        return _where(d["do"], _linear_about_centre(_quarter_turns(d["k"]), in_size))


class Dihedral(AffineTransform):
    """One of the 8 symmetries of the square, uniformly: k in 0..7 = (k % 4) quarter turns of
    the picture, mirrored left-right first when k >= 4."""

    def __init__(self, p=1.0):
        super().__init__(p)

    def draw(self, rng, n, size):
        return {"do": self._do(rng, n), "k": rng.integers(0, 8, n)}

    def matrix(self, d, in_size, out_size):
        turn = _quarter_turns(d["k"])
        flip = np.where((d["k"] >= 4)[:, None, None], np.diag([-1.0, 1.0]), np.eye(2))
        return _where(d["do"], _linear_about_centre(flip @ turn, in_size))


class Rotate(AffineTransform):
    """Rotate about the centre by an angle ~ U(-degrees, degrees) (or U(lo, hi) for a pair)."""

    def __init__(self, degrees=10.0, p=0.75, pad_mode=None):
        super().__init__(p)
        lo, hi = (-degrees, degrees) if np.isscalar(degrees) else degrees
        self.degrees = (float(lo), float(hi))
        self.pad_mode = _pad_mode(pad_mode)

    def draw(self, rng, n, size):
        angle = rng.uniform(*self.degrees, n)
        do = self._do(rng, n)
        return {"do": do, "angle": np.where(do, angle, 0.0)}

    def matrix(self, d, in_size, out_size):
        return _linear_about_centre(_rotation(np.deg2rad(d["angle"])), in_size)


class Zoom(AffineTransform):
    """Zoom in by a scale ~ U(min_zoom, max_zoom) about a random centre (fastai v2 Zoom).

    The window of the source that fills the output moves by up to what keeps it inside the image.
    """

    def __init__(self, max_zoom=1.1, min_zoom=1.0, p=0.75, pad_mode=None):
        super().__init__(p)
        if not 0 < min_zoom <= max_zoom:
            raise ValueError(f"Zoom: need 0 < min_zoom <= max_zoom, got {min_zoom}, {max_zoom}")
        self.min_zoom, self.max_zoom = float(min_zoom), float(max_zoom)
        self.pad_mode = _pad_mode(pad_mode)

    def draw(self, rng, n, size):
        scale = rng.uniform(self.min_zoom, self.max_zoom, n)
        col, row = rng.random(n), rng.random(n)
        do = self._do(rng, n)
        return {"do": do, "scale": np.where(do, scale, 1.0), "col_pct": col, "row_pct": row}

    def matrix(self, d, in_size, out_size):
        H, W = in_size
        inv = 1.0 / d["scale"]
        m = _linear_about_centre(inv[:, None, None] * np.eye(2), in_size)
        # shift the window centre by up to (1 - 1/s) of the half extent (W/2, H/2)
        m[:, 0, 2] += (2 * d["col_pct"] - 1) * (1 - inv) * W / 2
        m[:, 1, 2] += (2 * d["row_pct"] - 1) * (1 - inv) * H / 2
        return m


class Translate(AffineTransform):
    """Shift by U(-max_pct, max_pct) of the width and of the height (fastai), or, with
    pixels=N, by a whole number of pixels drawn uniformly from -N..N on each axis: exactly "pad N
    on every side, crop a random window of the input size" (airbench's translate=2, and the
    classic CIFAR pad-and-crop), the uncovered edge filled by pad_mode.

    p: the probability per image; None means 0.75 for max_pct (fastai) and 1.0 for pixels.
    """

    def __init__(self, max_pct=0.1, p=None, pad_mode=None, pixels=None):
        super().__init__((0.75 if pixels is None else 1.0) if p is None else p)
        if pixels is not None and (int(pixels) != pixels or pixels < 0):
            raise ValueError(f"Translate: pixels must be a whole number >= 0, got {pixels!r}")
        self.max_pct = float(max_pct) if pixels is None else None     # pixels replaces it
        self.pixels = None if pixels is None else int(pixels)
        self.pad_mode = _pad_mode(pad_mode)

    def draw(self, rng, n, size):
        if self.pixels is None:
            t, key = rng.uniform(-self.max_pct, self.max_pct, (n, 2)), "shift_pct"
        else:
            t, key = rng.integers(-self.pixels, self.pixels + 1, (n, 2)), "shift_px"
        do = self._do(rng, n)
        return {"do": do, key: np.where(do[:, None], t, 0)}      # (x, y) columns

    def matrix(self, d, in_size, out_size):
        H, W = in_size
        shift = d["shift_px"] if "shift_px" in d else d["shift_pct"] * np.array([W, H])
        m = _eye(d["do"].shape[0])
        m[:, 0, 2], m[:, 1, 2] = -shift[:, 0], -shift[:, 1]
        return m


class Shift(AffineTransform):
    """Shift every image by fixed whole pixels, dx right and dy down (negative: left, up); the
    uncovered edge is filled by pad_mode. Not random: a test-time augmentation (airbench's TTA
    averages each image's predictions with those of its 1-pixel shifts)."""

    def __init__(self, dx=0, dy=0, pad_mode="reflection"):
        super().__init__(1.0)
        self.dx, self.dy = int(dx), int(dy)
        self.pad_mode = _pad_mode(pad_mode)

    def draw(self, rng, n, size):
        return {"do": np.ones(n, dtype=bool)}

    def matrix(self, d, in_size, out_size):
        m = _eye(d["do"].shape[0])
        m[:, 0, 2], m[:, 1, 2] = -self.dx, -self.dy      # output (x, y) reads input (x-dx, y-dy)
        return m


class Warp(AffineTransform):
    """Perspective warp (fastai v2 Warp): the corners of [-1, 1]^2 move by up to `magnitude`.

    Draws x_mag, y_mag ~ U(-magnitude, magnitude); the homography maps the moved corners
    ((-1-y, -1-x), (-1+y, 1+x), (1+y, -1+x), (1-y, 1-x)) of the output to the source corners.
    """

    def __init__(self, magnitude=0.2, p=0.75, pad_mode=None):
        super().__init__(p)
        self.magnitude = float(magnitude)
        self.pad_mode = _pad_mode(pad_mode)

    def draw(self, rng, n, size):
        mag = rng.uniform(-self.magnitude, self.magnitude, (n, 2))
        do = self._do(rng, n)
        return {"do": do, "x_mag": np.where(do, mag[:, 0], 0.0),
                "y_mag": np.where(do, mag[:, 1], 0.0)}

    @staticmethod
    def homography(src_pts, dst_pts):
        """(n, 3, 3) H with H @ (dst, 1) ~ (src, 1) for 4 point pairs (n, 4, 2) each."""
        n = src_pts.shape[0]
        A = np.zeros((n, 8, 8))
        for k in range(4):
            (x, y), (u, v) = dst_pts[:, k].T, src_pts[:, k].T
            A[:, 2 * k] = np.stack([x, y, np.ones(n), 0 * x, 0 * x, 0 * x, -u * x, -u * y], -1)
            A[:, 2 * k + 1] = np.stack([0 * x, 0 * x, 0 * x, x, y, np.ones(n), -v * x, -v * y], -1)
        coeffs = np.linalg.solve(A, src_pts.reshape(n, 8, 1))[..., 0]
        return np.concatenate([coeffs, np.ones((n, 1))], axis=1).reshape(n, 3, 3)

    def matrix(self, d, in_size, out_size):
        H, W = in_size
        do = d["do"]
        m = _eye(len(do))
        if not do.any():
            return m
        xm, ym = d["x_mag"][do], d["y_mag"][do]
        corners = np.array([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
        moved = np.stack([np.stack([-1 - ym, -1 - xm], -1), np.stack([-1 + ym, 1 + xm], -1),
                          np.stack([1 + ym, -1 + xm], -1), np.stack([1 - ym, 1 - xm], -1)], 1)
        h = self.homography(np.broadcast_to(corners, moved.shape), moved)
        # pixel -> [-1, 1] (pixel centres of the edges at -1 and 1) -> homography -> pixel
        hx, hy = max((W - 1) / 2, 0.5), max((H - 1) / 2, 0.5)
        to_unit = np.array([[1 / hx, 0, -(W - 1) / 2 / hx], [0, 1 / hy, -(H - 1) / 2 / hy],
                            [0, 0, 1]])
        to_pixel = np.array([[hx, 0, (W - 1) / 2], [0, hy, (H - 1) / 2], [0, 0, 1]])
        m[do] = to_pixel @ h @ to_unit
        return m


class RandomCrop(AffineTransform):
    """Pad by `padding` on every side (virtually, through the pad mode), then crop `size` at a
    random integer offset: the classic CIFAR augmentation (pad 4, crop 32)."""

    def __init__(self, size, padding=0, pad_mode="reflection"):
        super().__init__(1.0)
        self.size = _size2(size, "RandomCrop")
        self.padding = int(padding)
        self.pad_mode = _pad_mode(pad_mode)

    def out_size(self, size):
        return self.size

    def draw(self, rng, n, size):
        room = [size[k] + 2 * self.padding - self.size[k] for k in (0, 1)]
        if min(room) < 0:
            raise ValueError(f"RandomCrop: cannot crop {self.size} from {size} padded by "
                             f"{self.padding}")
        return {"do": np.ones(n, bool), "top": rng.integers(0, room[0] + 1, n),
                "left": rng.integers(0, room[1] + 1, n)}

    def matrix(self, d, in_size, out_size):
        m = _eye(d["do"].shape[0])
        m[:, 0, 2] = d["left"] - self.padding
        m[:, 1, 2] = d["top"] - self.padding
        return m


def _box_matrix(top, left, height, width, out_size):
    """Map an (OH, OW) output grid onto the source box, pixel edges to edges (resizing)."""
    OH, OW = out_size
    sx, sy = width / OW, height / OH
    m = _eye(np.shape(top)[0])
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    m[:, 0, 2] = left + 0.5 * sx - 0.5
    m[:, 1, 2] = top + 0.5 * sy - 0.5
    return m


class RandomResizedCrop(AffineTransform):
    """Crop a random box of area U(scale) of the image and aspect exp(U(log ratio)), resize it to
    `size` (torchvision's algorithm: 10 tries, then a centre crop). Bilinear; antialias (the
    default, as torchvision's): a box that is shrunk is averaged, not point-sampled (see
    `warp_antialiased`)."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), pad_mode=None,
                 antialias=True):
        super().__init__(1.0)
        self.size = _size2(size, "RandomResizedCrop")
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.pad_mode = _pad_mode(pad_mode)
        self.antialias = bool(antialias)

    def out_size(self, size):
        return self.size

    def draw(self, rng, n, size):
        H, W = size
        tries = 10
        area = H * W * rng.uniform(*self.scale, (n, tries))
        aspect = np.exp(rng.uniform(*np.log(self.ratio), (n, tries)))
        w = np.round(np.sqrt(area * aspect)).astype(np.int64)
        h = np.round(np.sqrt(area / aspect)).astype(np.int64)
        ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
        first = np.argmax(ok, axis=1)
        found = ok[np.arange(n), first]
        # fallback when no try fits: the largest centred box with the aspect clamped into ratio
        lo, hi = self.ratio
        if W / H < lo:
            fw, fh = W, int(round(W / lo))
        elif W / H > hi:
            fw, fh = int(round(H * hi)), H
        else:
            fw, fh = W, H
        w = np.where(found, w[np.arange(n), first], fw)
        h = np.where(found, h[np.arange(n), first], fh)
        u, v = rng.random(n), rng.random(n)
        top = np.where(found, np.floor(u * (H - h + 1)), (H - h) // 2).astype(np.int64)
        left = np.where(found, np.floor(v * (W - w + 1)), (W - w) // 2).astype(np.int64)
        return {"do": np.ones(n, bool), "top": top, "left": left, "height": h, "width": w}

    def matrix(self, d, in_size, out_size):
        return _box_matrix(d["top"], d["left"], d["height"], d["width"], out_size)


class Resize(AffineTransform):
    """Resize (squish) every image to `size` (H, W) bilinearly, antialiased when it shrinks
    (unless antialias=False); no randomness."""

    def __init__(self, size, antialias=True):
        super().__init__(1.0)
        self.size = _size2(size, "Resize")
        self.antialias = bool(antialias)

    def out_size(self, size):
        return self.size

    def draw(self, rng, n, size):
        return {"do": np.ones(n, bool)}

    def matrix(self, d, in_size, out_size):
        n = d["do"].shape[0]
        return _box_matrix(np.zeros(n), np.zeros(n), np.full(n, in_size[0]),
                           np.full(n, in_size[1]), out_size)


# --------------------------------------------------------------------------------------------------
# Value transforms (curves on [0, 1] -> one lookup table per image)
# --------------------------------------------------------------------------------------------------

_EPS = 1e-7   # fastai's logit clamp


def _logit(x):
    x = np.clip(x, _EPS, 1 - _EPS)
    return np.log(x / (1 - x))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


class Lighting(ValueTransform):
    """fastai 0.7 lighting: b' ~ U(-b, b), c0 ~ U(-c, c), c' = -1/(c0-1) if c0 < 0 else c0+1;
    x -> clip((x - mean(x)) * c' + mean(x) + b', 0, 1), mean over the whole image."""

    needs_mean = True

    def __init__(self, b=0.05, c=0.05, p=1.0):
        super().__init__(p)
        self.b, self.c = float(b), float(c)

    def draw(self, rng, n, size):
        b = rng.uniform(-self.b, self.b, n)
        c0 = rng.uniform(-self.c, self.c, n)
        c = np.where(c0 < 0, -1 / (c0 - 1), c0 + 1)
        do = self._do(rng, n)
        return {"do": do, "brightness": np.where(do, b, 0.0), "contrast": np.where(do, c, 1.0)}

    def curve(self, d, x, mean):
        mu = mean[:, None]
        return np.clip((x - mu) * d["contrast"][:, None] + mu + d["brightness"][:, None], 0, 1)


class Brightness(ValueTransform):
    """fastai v2 brightness: change ~ U(0.5(1-m), 0.5(1+m)); x -> sigmoid(logit(x) + logit(change))
    (change 0.5 is the identity)."""

    def __init__(self, max_lighting=0.2, p=0.75):
        super().__init__(p)
        self.max_lighting = float(max_lighting)

    def draw(self, rng, n, size):
        m = self.max_lighting
        change = rng.uniform(0.5 * (1 - m), 0.5 * (1 + m), n)
        do = self._do(rng, n)
        return {"do": do, "change": np.where(do, change, 0.5)}

    def curve(self, d, x, mean):
        return _sigmoid(_logit(x) + _logit(d["change"])[:, None])


class Contrast(ValueTransform):
    """fastai v2 contrast: change = exp(U(log(1-m), -log(1-m))); x -> sigmoid(logit(x) * change)."""

    def __init__(self, max_lighting=0.2, p=0.75):
        super().__init__(p)
        if not 0 <= max_lighting < 1:
            raise ValueError(f"Contrast: max_lighting must be in [0, 1), got {max_lighting}")
        self.max_lighting = float(max_lighting)

    def draw(self, rng, n, size):
        lim = np.log(1 / (1 - self.max_lighting))     # not -log(1 - m): that is -0.0 at m = 0
        change = np.exp(rng.uniform(-lim, lim, n))
        do = self._do(rng, n)
        return {"do": do, "change": np.where(do, change, 1.0)}

    def curve(self, d, x, mean):
        return _sigmoid(_logit(x) * d["change"][:, None])


# --------------------------------------------------------------------------------------------------
# Erasing
# --------------------------------------------------------------------------------------------------

class Cutout(EraseTransform):
    """Fill `n_holes` squares of side `size`, centred anywhere in the image (clipped at the
    edges), with `fill` (an int or one value per channel, uint8 scale) - DeVries & Taylor 2017."""

    def __init__(self, size=16, n_holes=1, p=1.0, fill=0):
        super().__init__(p)
        self.size, self.n_holes = int(size), int(n_holes)
        self.fill = np.asarray(fill, np.uint8)

    def draw(self, rng, n, size):
        H, W = size
        return {"do": self._do(rng, n), "cy": rng.integers(0, H, (n, self.n_holes)),
                "cx": rng.integers(0, W, (n, self.n_holes))}

    def erase(self, images, d):
        _, H, W, _ = images.shape
        half = self.size // 2
        for n in np.flatnonzero(d["do"]):
            for cy, cx in zip(d["cy"][n], d["cx"][n]):
                y0, y1 = max(cy - half, 0), min(cy - half + self.size, H)
                x0, x1 = max(cx - half, 0), min(cx - half + self.size, W)
                images[n, y0:y1, x0:x1] = self.fill


# Lower-case names, as in the API (A.flip_lr(p=0.5) builds a transform).
flip_lr, flip_ud, alternating_flip = FlipLR, FlipUD, AlternatingFlip
dihedral, rot90, rotate = Dihedral, Rot90, Rotate
zoom, translate, warp, random_crop = Zoom, Translate, Warp, RandomCrop
random_resized_crop, resize, lighting, brightness = RandomResizedCrop, Resize, Lighting, Brightness
contrast, cutout = Contrast, Cutout


# --------------------------------------------------------------------------------------------------
# Compose: one matrix, one interpolation, one lookup table per image
# --------------------------------------------------------------------------------------------------

class Compose:
    """A pipeline of transforms applied as one warp + one lookup table + erasing.

    tfms: Transforms (nested lists and Composes are flattened). pad_mode: for the single warp;
    None takes the one the geometric transforms ask for (they must agree), else "reflection".
    Call: images (N, H, W, C) uint8, rng -> (N, OH, OW, C) uint8 (a new array).
    """

    def __init__(self, tfms, pad_mode=None):
        self.tfms = []
        for t in tfms if isinstance(tfms, (list, tuple)) else [tfms]:
            if isinstance(t, Compose):
                self.tfms.extend(t.tfms)
            elif isinstance(t, (list, tuple)):
                self.tfms.extend(Compose(t).tfms)
            elif isinstance(t, Transform):
                self.tfms.append(t)
            else:
                raise TypeError(f"Compose: expected Transforms, got {type(t).__name__}")
        wanted = {t.pad_mode for t in self.tfms if t.kind == "affine" and t.pad_mode}
        pad_mode = _pad_mode(pad_mode)
        if pad_mode is None and len(wanted) > 1:
            raise ValueError(f"Compose: transforms ask for different pad modes {sorted(wanted)}; "
                             f"they share one interpolation, pass Compose(..., pad_mode=...)")
        self.pad_mode = pad_mode or (wanted.pop() if wanted else "reflection")

    def out_size(self, size):
        for t in self.tfms:
            size = t.out_size(size)
        return size

    @property
    def per_sample(self):
        """True if some transform wants the batch's BatchInfo (the DataLoader then passes it)."""
        return any(t.per_sample for t in self.tfms)

    def draw(self, rng, n, size, info=None):
        """Draw every transform's parameters for n images of size (H, W), in list order;
        `info` (a BatchInfo) goes to the per-sample transforms."""
        size = tuple(int(s) for s in size)
        params = []
        cur = size
        for t in self.tfms:
            params.append(t.draw(rng, n, cur, info) if t.per_sample else t.draw(rng, n, cur))
            cur = t.out_size(cur)
        return Draws(n, size, cur, params)

    def matrices(self, draws):
        """(n, 3, 3) composed matrices: M = M_1 @ M_2 @ ... (output of the last -> input)."""
        m, size = _eye(draws.n), draws.in_size
        for t, d in zip(self.tfms, draws.params):
            if t.kind == "affine":
                out = t.out_size(size)
                m = m @ t.matrix(d, size, out)
                size = out
        return _snap(m)

    def luts(self, draws, images):
        """(rows, luts): the images some value transform touches and their (K, 256) uint8 tables."""
        value = [(t, d) for t, d in zip(self.tfms, draws.params) if t.kind == "value"]
        if not value:
            return np.zeros(0, np.int64), np.zeros((0, 256), np.uint8)
        rows = np.flatnonzero(np.any([d["do"] for _, d in value], axis=0))
        x = np.broadcast_to(np.arange(256) / 255.0, (len(rows), 256))
        hist = None
        if any(t.needs_mean for t, _ in value):
            hist = K.histograms(images[rows]) / (images[0].size or 1)
        for t, d in value:
            mean = (hist * x).sum(axis=1) if t.needs_mean else None
            x = t.curve({k: v[rows] for k, v in d.items()}, x, mean)
        return rows, np.floor(np.clip(x, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)

    def apply(self, images, draws):
        """Apply recorded draws: a pure function, so replaying gives the same bits."""
        images = np.asarray(images)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"augment: images must be (N, H, W, C) uint8, "
                             f"got {images.shape} {images.dtype}")
        if images.shape[0] != draws.n or images.shape[1:3] != tuple(draws.in_size):
            raise ValueError(f"augment: draws were made for {draws.n} images of {draws.in_size}, "
                             f"got images {images.shape}")
        if any(t.kind == "affine" for t in self.tfms):
            mats = self.matrices(draws)
            if any(t.antialias for t in self.tfms):
                out = warp_antialiased(images, mats, draws.out_size, self.pad_mode)
            else:
                out = K.warp(images, mats, draws.out_size, self.pad_mode)
        else:
            out = images.copy()
        rows, luts = self.luts(draws, out)
        if len(rows):
            K.apply_luts(out, luts, rows)
        for t, d in zip(self.tfms, draws.params):
            if t.kind == "erase":
                t.erase(out, d)
        return out

    def __call__(self, images, rng, return_draws=False, info=None):
        """Draw then apply. images (N, H, W, C) uint8 -> augmented copy (and the Draws).
        info: the batch's BatchInfo, for per-sample transforms (the DataLoader passes it)."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"augment: rng must be a np.random.Generator, got {type(rng).__name__}")
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"augment: images must be (N, H, W, C), got shape {images.shape}")
        draws = self.draw(rng, images.shape[0], images.shape[1:3], info)
        out = self.apply(images, draws)
        return (out, draws) if return_draws else out

    def __len__(self):
        return len(self.tfms)

    def __repr__(self):
        inner = ",\n  ".join(repr(t) for t in self.tfms)
        return f"Compose([\n  {inner}], pad_mode={self.pad_mode!r})"


# --------------------------------------------------------------------------------------------------
# Antialiasing: a shrinking warp averages the source instead of point-sampling it
# --------------------------------------------------------------------------------------------------

MAX_TAPS = 8    # samples per output pixel and axis: shrinking more than 8x is filtered as 8x


def antialias_taps(mats) -> tuple:
    """(ky, kx): bilinear samples per output pixel along y and x so that neighbouring samples
    are at most one source pixel apart, for the most-shrinking matrix of the batch (n, 3, 3)."""
    sx = np.hypot(mats[:, 0, 0], mats[:, 1, 0]).max()    # source pixels per output pixel, x
    sy = np.hypot(mats[:, 0, 1], mats[:, 1, 1]).max()
    return (int(min(MAX_TAPS, max(1, math.ceil(sy - 1e-9)))),
            int(min(MAX_TAPS, max(1, math.ceil(sx - 1e-9)))))


def warp_antialiased(images, mats, out_size, pad_mode="reflection", chunk=16):
    """K.warp, but each output pixel the mean of ky x kx bilinear samples spread over it (a box
    filter one output pixel wide): shrinking s times then averages ~s x s source pixels, where
    plain bilinear reads 4 of them and aliases fine detail into moire. Without shrinking
    (ky = kx = 1) this is K.warp exactly. images (N, H, W, C) uint8 -> (N, OH, OW, C) uint8."""
    ky, kx = antialias_taps(mats) if len(mats) else (1, 1)
    if ky == kx == 1:
        return K.warp(images, mats, out_size, pad_mode)
    OH, OW = int(out_size[0]), int(out_size[1])
    # fine pixel (j', i') sits at output coordinates ((j' + 0.5) / kx - 0.5, (i' + 0.5) / ky - 0.5)
    fine = np.array([[1 / kx, 0, 0.5 / kx - 0.5], [0, 1 / ky, 0.5 / ky - 0.5], [0, 0, 1]])
    N, C = images.shape[0], images.shape[3]
    out = np.empty((N, OH, OW, C), np.uint8)
    for start in range(0, N, chunk):        # the fine grid is ky * kx times the output: chunks
        part = slice(start, start + chunk)
        dense = K.warp(images[part], mats[part] @ fine, (OH * ky, OW * kx), pad_mode)
        sums = dense.reshape(-1, OH, ky, OW, kx, C).sum(axis=(2, 4), dtype=np.uint32)
        out[part] = (sums + (ky * kx) // 2) // (ky * kx)        # rounded mean
    return out


# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------

def transforms_basic(max_rotate=10.0, b=0.05, c=0.05, max_zoom=None, pad_mode="reflection"):
    """fastai 0.7 transforms_basic: rotate +-10 degrees (p 0.75), lighting(b=0.05, c=0.05).
    max_zoom (e.g. 1.1, as in tfms_from_model(..., max_zoom=1.1)) adds a zoom U(1, max_zoom),
    p 0.75."""
    tfms = [Rotate(max_rotate, p=0.75)]
    if max_zoom is not None and max_zoom > 1:
        tfms.append(Zoom(max_zoom, p=0.75))
    tfms.append(Lighting(b, c))
    return Compose(tfms, pad_mode=pad_mode)


def transforms_side_on(**kwargs):
    """fastai 0.7: transforms_basic + flip left-right (p 0.5), for photos taken from the side."""
    return Compose([transforms_basic(**kwargs), FlipLR(0.5)], kwargs.get("pad_mode", "reflection"))


def transforms_top_down(**kwargs):
    """fastai 0.7: transforms_basic + any of the 8 dihedral symmetries, for satellite/microscopy."""
    return Compose([transforms_basic(**kwargs), Dihedral()], kwargs.get("pad_mode", "reflection"))


def aug_transforms(mult=1.0, do_flip=True, flip_vert=False, max_rotate=10.0, min_zoom=1.0,
                   max_zoom=1.1, max_lighting=0.2, max_warp=0.2, p_affine=0.75, p_lighting=0.75,
                   xtra_tfms=None, size=None, pad_mode="reflection", min_scale=1.0):
    """fastai v2 aug_transforms with its defaults: flip (p 0.5), warp 0.2, rotate +-10,
    zoom U(1, 1.1) (p_affine 0.75 each), brightness and contrast 0.2 (p_lighting 0.75); all
    geometric parts in one matrix and one bilinear interpolation. `size` resizes the output
    (with min_scale < 1: a random resized crop of scale (min_scale, 1), square aspect)."""
    max_rotate, max_lighting, max_warp = (v * mult for v in (max_rotate, max_lighting, max_warp))
    tfms = []
    if do_flip:
        tfms.append(Dihedral(p=0.5) if flip_vert else FlipLR(p=0.5))
    if max_warp:
        tfms.append(Warp(max_warp, p=p_affine))
    if max_rotate:
        tfms.append(Rotate(max_rotate, p=p_affine))
    if min_zoom < 1 or max_zoom > 1:
        tfms.append(Zoom(max_zoom, min_zoom, p=p_affine))
    if max_lighting:
        tfms += [Brightness(max_lighting, p=p_lighting), Contrast(max_lighting, p=p_lighting)]
    if size is not None:
        tfms.append(Resize(size) if min_scale == 1.0
                    else RandomResizedCrop(size, scale=(min_scale, 1.0), ratio=(1.0, 1.0)))
    tfms += list(xtra_tfms or [])
    return Compose(tfms, pad_mode=pad_mode)


def cifar_transforms(size=32, padding=4, flip=True, cutout=None, pad_mode="reflection",
                     fill=tuple(int(round(255 * m)) for m in CIFAR10_MEAN)):
    """The classic CIFAR-10 recipe: pad 4 (reflect) + random 32x32 crop + flip left-right,
    optionally cutout squares of side `cutout` (8 or 16) filled with the dataset mean, which is
    0 after normalisation as in DeVries & Taylor."""
    tfms = [RandomCrop(size, padding, pad_mode)]
    if flip:
        tfms.append(FlipLR(0.5))
    if cutout:
        tfms.append(Cutout(cutout, fill=fill))
    return Compose(tfms, pad_mode=pad_mode)


def airbench_transforms(translate=2, flip="alternating", pad_mode="reflection"):
    """airbench94's training augmentation (Jordan 2024): a random translation by up to
    `translate` pixels (pad `translate` on every side by pad_mode, crop back to the input size; a
    new window every epoch) and the flip: "alternating" (AlternatingFlip: random once, then
    mirrored every odd epoch; needs the DataLoader's BatchInfo), "random" (FlipLR(0.5), a new
    coin every epoch) or None."""
    if flip not in ("alternating", "random", None):
        raise ValueError(f"airbench_transforms: flip must be 'alternating', 'random' or None, "
                         f"got {flip!r}")
    tfms = [Translate(pixels=translate, pad_mode=pad_mode)] if translate else []
    if flip is not None:
        tfms.append(AlternatingFlip(0.5) if flip == "alternating" else FlipLR(0.5))
    return Compose(tfms, pad_mode=pad_mode)


# --------------------------------------------------------------------------------------------------
# Normalisation and TTA
# --------------------------------------------------------------------------------------------------

def channel_stats(images):
    """Per-channel mean and std on the [0, 1] scale: (N, H, W, C) uint8 -> ((C,), (C,)) float64.

    Exact (from a 256-bin histogram per channel), so the same data always gives the same stats.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"channel_stats: images must be (N, H, W, C) uint8, "
                         f"got {images.shape} {images.dtype}")
    hist = K.channel_histograms(np.ascontiguousarray(images)).astype(np.float64)
    v = np.arange(256) / 255.0
    count = hist.sum(axis=1)
    mean = hist @ v / count
    var = hist @ (v ** 2) / count - mean ** 2
    return mean, np.sqrt(np.maximum(var, 0.0))


def _scale_shift(mean, std, C):
    mean = np.broadcast_to(np.asarray(mean, np.float64), (C,))
    std = np.broadcast_to(np.asarray(std, np.float64), (C,))
    if np.any(std <= 0):
        raise ValueError(f"normalize: std must be positive, got {std}")
    return 1.0 / (255.0 * std), -mean / std


def normalize(images, mean, std):
    """uint8 (N, H, W, C) -> float32 (N, C, H, W): (x / 255 - mean[c]) / std[c].

    Computed as x * scale[c] + shift[c] in float32 (scale = 1/(255 std), shift = -mean/std).
    mean, std: per channel on the [0, 1] scale (scalars broadcast).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"normalize: images must be (N, H, W, C) uint8, "
                         f"got {images.shape} {images.dtype}")
    scale, shift = _scale_shift(mean, std, images.shape[3])
    return K.normalize_nchw(np.ascontiguousarray(images), scale, shift)


def denormalize(x, mean, std):
    """Inverse of normalize, for display: float (N, C, H, W) -> uint8 (N, H, W, C)."""
    x = np.asarray(x, np.float64)
    C = x.shape[1]
    mean = np.broadcast_to(np.asarray(mean, np.float64), (C,))[:, None, None]
    std = np.broadcast_to(np.asarray(std, np.float64), (C,))[:, None, None]
    v = (x * std + mean) * 255.0
    return np.floor(np.clip(v, 0, 255) + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def tta_combine(plain, augmented, beta=0.25):
    """fastai v2 TTA: (1 - beta) * mean(augmented passes) + beta * plain pass.

    plain (N, K) probabilities; augmented (n, N, K) or a list of n such arrays -> (N, K).
    """
    augmented = np.asarray(augmented)
    plain = np.asarray(plain)
    if augmented.ndim != 3 or augmented.shape[1:] != plain.shape:
        raise ValueError(f"tta_combine: augmented must be (n, *{plain.shape}), "
                         f"got {augmented.shape}")
    return (1 - beta) * augmented.mean(axis=0) + beta * plain


TTA_MODES = ("aug", "flip", "shift")


def tta_views(mode):
    """The fixed test-time views of `mode` as [(weight, transform or None for the plain image)];
    the TTA prediction is the weighted sum of the model's outputs (logits, as airbench) on them.

    flip: the image and its mirror, 1/2 each (airbench tta_level=1).
    shift: half the flip average, plus a quarter each of the flip averages of the image shifted
      one pixel down-right and one pixel up-left, reflect padded (airbench tta_level=2, 6 views).
    ("aug", fastai's random passes, is not a fixed set of views: see Learner.tta.)
    """
    def mirrored(weight, dx=0, dy=0):
        shift = [Shift(dx, dy, "reflection")] if dx or dy else []
        return [(weight / 2, Compose(shift) if shift else None),
                (weight / 2, Compose(shift + [FlipLR(1.0)]))]

    if mode == "flip":
        return mirrored(1.0)
    if mode == "shift":
        return mirrored(0.5) + mirrored(0.25, 1, 1) + mirrored(0.25, -1, -1)
    raise ValueError(f"tta_views: mode must be 'flip' or 'shift', got {mode!r}")
