"""Pixel loops of the augmentation pipeline: a NumPy reference (the spec) and its Numba twin.

All work on uint8 images (N, H, W, C). The hot one is `warp`: for every output pixel, map its
coordinates through a 3x3 matrix (output pixel -> source pixel) and sample the source bilinearly.
Coordinates are pixel centres: x in [0, W-1] left to right, y in [0, H-1] top to bottom. Outside the
image a padding mode decides what is sampled:

    zeros       neighbours outside the image count as 0
    border      the coordinate is clamped to the image (edge pixels repeat)
    reflection  the coordinate is mirrored about the edge pixel centres, like
                np.pad(mode="reflect"): ... 2 1 | 0 1 2 ... W-1 | W-2 W-3 ...

The Numba kernels are compiled with nogil=True: the DataLoader runs them in a background thread
while the model computes in the main one. They are not parallel on purpose: one core augments,
the others train. The reference and the Numba twin do the same float64 operations in the same
order, so they agree bit for bit (a parity test pins this).
"""
import numpy as np
from numba import njit

__all__ = ["PAD_MODES", "warp", "warp_reference", "apply_luts", "apply_luts_reference",
           "histograms", "channel_histograms", "normalize_nchw", "normalize_nchw_reference"]

ZEROS, BORDER, REFLECTION = 0, 1, 2
PAD_MODES = {"zeros": ZEROS, "border": BORDER, "reflection": REFLECTION}
# Source coordinates beyond this (a perspective matrix whose denominator nears 0, or NaN) are
# treated as far outside the image instead of overflowing the integer conversion.
_FAR = 1e7


def _check_warp_args(src, mats, out_size, mode):
    if src.ndim != 4 or src.dtype != np.uint8:
        raise ValueError(f"warp: images must be (N, H, W, C) uint8, got {src.shape} {src.dtype}")
    if mats.shape != (src.shape[0], 3, 3):
        raise ValueError(f"warp: matrices must be ({src.shape[0]}, 3, 3) for images {src.shape}, "
                         f"got {mats.shape}")
    if mode not in PAD_MODES:
        raise ValueError(f"warp: pad_mode must be one of {sorted(PAD_MODES)}, got {mode!r}")
    OH, OW = int(out_size[0]), int(out_size[1])
    if OH < 1 or OW < 1:
        raise ValueError(f"warp: output size must be positive, got {out_size}")
    return np.ascontiguousarray(mats, dtype=np.float64), OH, OW


# --------------------------------------------------------------------------------------------------
# NumPy reference
# --------------------------------------------------------------------------------------------------

def _fold_reference(x, last, mode):
    """Map coordinates into [0, last] by clamping (border) or mirroring (reflection)."""
    if mode == BORDER:
        return np.minimum(np.maximum(x, 0.0), last)
    if last == 0:
        return np.zeros_like(x)
    period = 2.0 * last
    r = np.abs(x) % period
    r = np.where(r > last, period - r, r)
    return np.where((x >= 0.0) & (x <= last), x, r)


def warp_reference(src, mats, out_size, mode="reflection"):
    """Bilinear warp. src (N, H, W, C) uint8, mats (N, 3, 3) -> (N, OH, OW, C) uint8.

    Output pixel (x=j, y=i) takes the source at (u/w, v/w) where (u, v, w) = mats[n] @ (j, i, 1).
    """
    mats, OH, OW = _check_warp_args(src, mats, out_size, mode)
    mode = PAD_MODES[mode]
    N, H, W, C = src.shape
    i = np.arange(OH, dtype=np.float64)[:, None]
    j = np.arange(OW, dtype=np.float64)[None, :]
    out = np.empty((N, OH, OW, C), np.uint8)
    for n in range(N):
        m = mats[n]
        # grouped as the Numba kernel groups them (row part once per row), for identical bits
        x = m[0, 0] * j + (m[0, 1] * i + m[0, 2])
        y = m[1, 0] * j + (m[1, 1] * i + m[1, 2])
        if not (m[2, 0] == 0.0 and m[2, 1] == 0.0 and m[2, 2] == 1.0):
            w = m[2, 0] * j + (m[2, 1] * i + m[2, 2])
            with np.errstate(divide="ignore", invalid="ignore"):
                x, y = x / w, y / w
            x = np.where(np.abs(x) < _FAR, x, -_FAR)     # also replaces NaN
            y = np.where(np.abs(y) < _FAR, y, -_FAR)
        img = src[n].astype(np.float64)
        if mode == ZEROS:
            x0f, y0f = np.floor(x), np.floor(y)
            fx, fy = x - x0f, y - y0f
            x0, y0 = x0f.astype(np.int64), y0f.astype(np.int64)
            x1, y1 = x0 + 1, y0 + 1

            def at(yy, xx):
                inside = (xx >= 0) & (xx < W) & (yy >= 0) & (yy < H)
                v = img[np.clip(yy, 0, H - 1), np.clip(xx, 0, W - 1)]
                return np.where(inside[..., None], v, 0.0)
        else:
            x, y = _fold_reference(x, W - 1.0, mode), _fold_reference(y, H - 1.0, mode)
            x0, y0 = x.astype(np.int64), y.astype(np.int64)
            fx, fy = x - x0, y - y0
            x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)

            def at(yy, xx):
                return img[yy, xx]
        fx, fy = fx[..., None], fy[..., None]
        v = ((at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx) * (1.0 - fy)
             + (at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx) * fy)
        out[n] = np.floor(v + 0.5).astype(np.uint8)
    return out


def apply_luts_reference(images, luts, rows):
    """images[rows[k]] = luts[k][images[rows[k]]], in place. luts (K, 256) uint8, rows (K,)."""
    for k, n in enumerate(rows):
        images[n] = luts[k][images[n]]
    return images


def normalize_nchw_reference(images, scale, shift):
    """uint8 (N, H, W, C) -> float32 (N, C, H, W): x * scale[c] + shift[c] in float32."""
    x = images.transpose(0, 3, 1, 2).astype(np.float32)
    return x * scale.astype(np.float32)[:, None, None] + shift.astype(np.float32)[:, None, None]


# --------------------------------------------------------------------------------------------------
# Numba twins
# --------------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _fold(x, last, mode):
    if mode == BORDER:
        return min(max(x, 0.0), last)
    if x >= 0.0 and x <= last:
        return x
    if last == 0.0:
        return 0.0
    period = 2.0 * last
    r = abs(x) % period
    return period - r if r > last else r


@njit(cache=True, nogil=True)
def _fold_int(x, last, mode):
    """Integer twin of _fold; -1 means 'outside' for zeros padding."""
    if 0 <= x <= last:
        return x
    if mode == ZEROS:
        return -1
    if mode == BORDER or last == 0:
        return 0 if x < 0 else last
    period = 2 * last
    r = abs(x) % period
    return period - r if r > last else r


@njit(cache=True, nogil=True)
def _is_integral(m):
    """An affine matrix with integer entries maps pixel centres onto pixel centres."""
    if not (m[2, 0] == 0.0 and m[2, 1] == 0.0 and m[2, 2] == 1.0):
        return False
    for r in range(2):
        for c in range(3):
            v = m[r, c]
            if not (abs(v) < _FAR and v == np.floor(v)):
                return False
    return True


@njit(cache=True, nogil=True)
def _gather(src, m, mode, out):
    """Exact copy for integral matrices (flips, rot90, integer crops): what bilinear gives there."""
    H, W, C = src.shape
    OH, OW, _ = out.shape
    a, b, tx = int(m[0, 0]), int(m[0, 1]), int(m[0, 2])
    c, d, ty = int(m[1, 0]), int(m[1, 1]), int(m[1, 2])
    for i in range(OH):
        for j in range(OW):
            x = _fold_int(a * j + b * i + tx, W - 1, mode)
            y = _fold_int(c * j + d * i + ty, H - 1, mode)
            if x < 0 or y < 0:
                for ch in range(C):
                    out[i, j, ch] = 0
            else:
                for ch in range(C):
                    out[i, j, ch] = src[y, x, ch]


@njit(cache=True, nogil=True, inline="always")
def _blend(s, o, q, p00, p01, p10, p11, fx, fy, C):
    """o[q:q+C] = bilinear mix of the 4 source pixels at flat offsets p.. (weights fx, fy)."""
    gx, gy = 1.0 - fx, 1.0 - fy
    if C == 3:          # the common case; a constant trip count lets LLVM unroll it (1.6x faster)
        for ch in range(3):
            v = ((s[p00 + ch] * gx + s[p01 + ch] * fx) * gy
                 + (s[p10 + ch] * gx + s[p11 + ch] * fx) * fy)
            o[q + ch] = np.uint8(int(v + 0.5))      # v >= 0: truncation is floor
    else:
        for ch in range(C):
            v = ((s[p00 + ch] * gx + s[p01 + ch] * fx) * gy
                 + (s[p10 + ch] * gx + s[p11 + ch] * fx) * fy)
            o[q + ch] = np.uint8(int(v + 0.5))


@njit(cache=True, nogil=True)
def _bilinear_zeros_edge(s, o, q, x, y, H, W, C):
    """Zeros padding where some of the 4 neighbours fall outside: those count as 0."""
    x, y = max(min(x, _FAR), -_FAR), max(min(y, _FAR), -_FAR)   # far outside: all zero anyway
    x0f, y0f = np.floor(x), np.floor(y)
    fx, fy = x - x0f, y - y0f
    x0, y0 = int(x0f), int(y0f)
    x1, y1 = x0 + 1, y0 + 1
    in_x0, in_x1 = 0 <= x0 < W, 0 <= x1 < W
    in_y0, in_y1 = 0 <= y0 < H, 0 <= y1 < H
    for ch in range(C):
        v00 = float(s[(y0 * W + x0) * C + ch]) if in_y0 and in_x0 else 0.0
        v01 = float(s[(y0 * W + x1) * C + ch]) if in_y0 and in_x1 else 0.0
        v10 = float(s[(y1 * W + x0) * C + ch]) if in_y1 and in_x0 else 0.0
        v11 = float(s[(y1 * W + x1) * C + ch]) if in_y1 and in_x1 else 0.0
        v = (v00 * (1.0 - fx) + v01 * fx) * (1.0 - fy) + (v10 * (1.0 - fx) + v11 * fx) * fy
        o[q + ch] = np.uint8(int(v + 0.5))


@njit(cache=True, nogil=True, error_model="numpy")   # x / 0 -> inf (then clamped), no exception
def _bilinear(src, m, mode, out):
    H, W, C = src.shape
    OH, OW, _ = out.shape
    s = src.reshape(H * W * C)      # flat views: index arithmetic instead of 3-D indexing
    o = out.reshape(OH * OW * C)
    projective = not (m[2, 0] == 0.0 and m[2, 1] == 0.0 and m[2, 2] == 1.0)
    lastx, lasty = W - 1.0, H - 1.0
    for i in range(OH):
        row_x, row_y, row_w = m[0, 1] * i + m[0, 2], m[1, 1] * i + m[1, 2], m[2, 1] * i + m[2, 2]
        for j in range(OW):
            x = m[0, 0] * j + row_x
            y = m[1, 0] * j + row_y
            if projective:
                w = m[2, 0] * j + row_w
                x, y = x / w, y / w
                if not abs(x) < _FAR:   # w near 0, or NaN: far outside, not an int overflow
                    x = -_FAR
                if not abs(y) < _FAR:
                    y = -_FAR
            q = (i * OW + j) * C
            if mode == ZEROS:
                if not (0.0 <= x and x < lastx and 0.0 <= y and y < lasty):
                    _bilinear_zeros_edge(s, o, q, x, y, H, W, C)
                    continue
                # all 4 neighbours inside: the same arithmetic as the edge case, faster
                x0, y0 = int(x), int(y)
                x1, y1 = x0 + 1, y0 + 1
            else:
                if not (0.0 <= x and x <= lastx):
                    x = _fold(x, lastx, mode)
                if not (0.0 <= y and y <= lasty):
                    y = _fold(y, lasty, mode)
                x0, y0 = int(x), int(y)
                x1 = x0 + 1 if x0 < W - 1 else x0
                y1 = y0 + 1 if y0 < H - 1 else y0
            _blend(s, o, q, (y0 * W + x0) * C, (y0 * W + x1) * C, (y1 * W + x0) * C,
                   (y1 * W + x1) * C, x - x0, y - y0, C)


@njit(cache=True, nogil=True)
def _warp_kernel(src, mats, mode, out):
    N, H, W, C = src.shape
    OH, OW = out.shape[1], out.shape[2]
    for n in range(N):
        m = mats[n]
        if _is_integral(m):
            if (OH == H and OW == W and m[0, 0] == 1.0 and m[1, 1] == 1.0 and m[0, 1] == 0.0
                    and m[1, 0] == 0.0 and m[0, 2] == 0.0 and m[1, 2] == 0.0):
                out[n] = src[n]             # identity: nothing drawn for this image
            else:
                _gather(src[n], m, mode, out[n])
        else:
            _bilinear(src[n], m, mode, out[n])


def warp(src, mats, out_size, mode="reflection"):
    """Bilinear warp (Numba). src (N, H, W, C) uint8, mats (N, 3, 3) -> (N, OH, OW, C) uint8.

    Same contract and same bits as `warp_reference`. Integral matrices (flips, rot90, integer
    shifts) take an exact copy path, which gives what bilinear sampling gives at pixel centres.
    """
    mats, OH, OW = _check_warp_args(src, mats, out_size, mode)
    out = np.empty((src.shape[0], OH, OW, src.shape[3]), np.uint8)
    _warp_kernel(np.ascontiguousarray(src), mats, PAD_MODES[mode], out)
    return out


@njit(cache=True, nogil=True)
def _lut_kernel(images, luts, rows):
    _, H, W, C = images.shape
    for k in range(rows.shape[0]):
        n = rows[k]
        for i in range(H):
            for j in range(W):
                for ch in range(C):
                    images[n, i, j, ch] = luts[k, images[n, i, j, ch]]


def apply_luts(images, luts, rows):
    """images[rows[k]] = luts[k][images[rows[k]]], in place (Numba). luts (K, 256) uint8."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if luts.shape != (rows.shape[0], 256) or luts.dtype != np.uint8:
        raise ValueError(f"apply_luts: luts must be ({rows.shape[0]}, 256) uint8, "
                         f"got {luts.shape} {luts.dtype}")
    _lut_kernel(images, np.ascontiguousarray(luts), rows)
    return images


@njit(cache=True, nogil=True)
def _histogram_kernel(images, per_channel, out):
    N, H, W, C = images.shape
    for n in range(N):
        for i in range(H):
            for j in range(W):
                for ch in range(C):
                    out[ch if per_channel else n, images[n, i, j, ch]] += 1


def histograms(images):
    """Per-image histogram of all pixel values: (N, H, W, C) uint8 -> (N, 256) int64."""
    out = np.zeros((images.shape[0], 256), np.int64)
    _histogram_kernel(images, False, out)
    return out


def channel_histograms(images):
    """Per-channel histogram over the whole array: (N, H, W, C) uint8 -> (C, 256) int64."""
    out = np.zeros((images.shape[3], 256), np.int64)
    _histogram_kernel(images, True, out)
    return out


@njit(cache=True, nogil=True)
def _normalize_kernel(src, scale, shift, out):
    N, H, W, C = src.shape
    for n in range(N):
        for ch in range(C):
            s, b = scale[ch], shift[ch]
            for i in range(H):
                for j in range(W):
                    out[n, ch, i, j] = np.float32(src[n, i, j, ch]) * s + b


def normalize_nchw(images, scale, shift):
    """uint8 (N, H, W, C) -> float32 (N, C, H, W): x * scale[c] + shift[c] in float32 (Numba)."""
    N, H, W, C = images.shape
    out = np.empty((N, C, H, W), np.float32)
    _normalize_kernel(images, np.ascontiguousarray(scale, dtype=np.float32),
                      np.ascontiguousarray(shift, dtype=np.float32), out)
    return out
