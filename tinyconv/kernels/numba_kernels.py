"""The kernels again, fast: Numba loops for the data movement, BLAS for the products.

Same public names and signatures as reference.py (read that first: it is the specification).
What is different here, and why:

- Tiles, not whole batches. im2col of a 64-channel 32x32 batch of 128 is 300 MB; writing it out
  and reading it back costs more than the product itself on a laptop. So the batch is cut into
  tiles (one image's rows, or a few small images) whose columns fit in the core's cache; each tile
  is unfolded (im2col), multiplied, and its result written straight into the NCHW output.
- Threads over tiles. `parallel_for` (tinyconv/_threads.py) runs the tiles on one thread per core,
  each calling single-threaded BLAS; the Numba loops are `nogil`, so the threads run in parallel.
  (Not Numba's parallel=True: its thread pool and OpenBLAS's would take turns spinning on the same
  two cores; one pool for both is measured faster, see _threads.py.)
- No copies around the GEMMs: a tile's result is a view into the output; a transposed weight is a
  transposed view (BLAS reads it as is).
- Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions: 2.25x fewer multiplications, still as
  BLAS products (see its section below). im2col + GEMM serves the strided, dilated, grouped rest.
- A direct loop (no im2col) when a group has few input values per output (C/groups * KH * KW
  small: the first layer of a net, depthwise convolutions), where a GEMM would be mostly overhead.
- Reproducible: weight gradients are summed over fixed groups of tiles, in order, so they do not
  depend on the number of threads or on which thread ran what.
- Batch norm: statistics and normalisation fused per channel (a channel of a batch fits in cache,
  so x is read from memory once), and a fused backward.
- GELU in float32: erfc and exp written as float32 arithmetic, so that the loop runs on SIMD
  lanes (libm's erf and exp are one element per call: 8x slower, measured).

Kernels are compiled on first use and cached on disk (cache=True).
"""
import math

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.extending import intrinsic

from .._threads import num_threads, parallel_for, scratch
from .reference import INV_SQRT_2PI, SQRT_2_OVER_PI, SQRT_HALF, TANH_CUBIC, conv_output_size

__all__ = ["conv_output_size", "im2col", "col2im", "conv2d_forward", "conv2d_backward",
           "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward",
           "avg_pool2d_backward", "batch_norm_train", "batch_norm_eval", "batch_norm_backward",
           "gelu_forward", "gelu_backward"]

_jit = njit(cache=True, nogil=True)
# Small helpers are inlined into their callers at Numba level: a call per row segment (a few
# dozen elements) would otherwise cost as much as the copy.
_inline = njit(cache=True, nogil=True, inline="always")
# Sums may be reordered (vectorised); no assumption about NaN or infinity.
_jit_sum = njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})

COLS_BYTES_FORWARD = 2 << 20     # a forward tile's im2col columns (measured: 2-4 MB are best)
COLS_BYTES_BACKWARD = 4 << 20    # backward: larger, the dW product sums over the tile
DIRECT_MAX_TAPS = 32             # C/groups*KH*KW at or below this: direct loops, no im2col
MIN_GEMM_COLUMNS = 256           # columns of a product at least (small maps: several images)
MIN_TASKS = 4                    # a batch is cut into at least this many tiles (when it can be)


# ---- vector helpers ------------------------------------------------------------------------------
# Numba guards every index against Python's negative indexing (a[-1]) unless it can prove the index
# is not negative, and that guard stops the loop from being vectorised (8x slower, measured). A loop
# over a fresh slice indexed from 0 needs no guard: the kernels below are written with these.

@_inline
def _copy(dst, src):
    """dst[:] = src."""
    for j in range(dst.size):
        dst[j] = src[j]


@_inline
def _zero(dst):
    """dst[:] = 0."""
    for j in range(dst.size):
        dst[j] = 0


@_inline
def _add(dst, src):
    """dst += src."""
    for j in range(dst.size):
        dst[j] += src[j]


@_inline
def _axpy(dst, a, src):
    """dst += a * src."""
    for j in range(dst.size):
        dst[j] += a * src[j]


@_jit_sum
def _dot(a, b):
    """sum(a * b), accumulated in float64."""
    s = 0.0
    for j in range(a.size):
        s += a[j] * b[j]
    return s


# ---- im2col / col2im on a tile -------------------------------------------------------------------

@_inline
def _valid_range(offset, stride, size, out_len):
    """Output positions o in [lo, hi) whose input position o*stride + offset is in [0, size)."""
    lo = 0 if offset >= 0 else (-offset + stride - 1) // stride
    hi = 0 if size - 1 - offset < 0 else (size - 1 - offset) // stride + 1
    hi = min(hi, out_len)
    return min(lo, hi), hi


@_jit
def _im2col_tile(x, cols, n0, n1, oh0, oh1, KH, KW, sh, sw, ph, pw, dh, dw):
    """cols (C*KH*KW, (n1-n0)*(oh1-oh0)*OW) <- receptive fields of images n0..n1, rows oh0..oh1.

    Column (i*(oh1-oh0) + r)*OW + ow holds the window of output pixel (n0+i, oh0+r, ow).
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    OW = (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    R = oh1 - oh0
    flat = sh == 1 and sw == 1 and OW == W
    for c in range(C):
        for kh in range(KH):
            r_lo, r_hi = _valid_range(oh0 * sh + kh * dh - ph, sh, H, R)
            ih0 = oh0 * sh + kh * dh - ph             # input row read by output row r: ih0 + r*sh
            for kw in range(KW):
                off = kw * dw - pw                    # input column read by column o: o*sw + off
                lo, hi = _valid_range(off, sw, W, OW)
                row = (c * KH + kh) * KW + kw
                for i in range(n1 - n0):
                    src = x[n0 + i, c].reshape(H * W)
                    dst = cols[row, i * R * OW:(i + 1) * R * OW]
                    _zero(dst[:r_lo * OW])            # output rows whose tap is on the padding
                    _zero(dst[r_hi * OW:])
                    if flat:
                        _unfold_block(src, dst[r_lo * OW:r_hi * OW], (ih0 + r_lo) * W + off,
                                      OW, lo, hi)
                    else:
                        for r in range(r_lo, r_hi):
                            _unfold_row(src, dst[r * OW:(r + 1) * OW],
                                        (ih0 + r * sh) * W + off, sw, lo, hi)


@_inline
def _unfold_row(src, dst, start, sw, lo, hi):
    """dst[o] = src[start + o*sw] for o in [lo, hi), zero outside (the padding)."""
    _zero(dst[:lo])
    _zero(dst[hi:])
    d = dst[lo:hi]
    if sw == 1:                                          # contiguous: vectorised copy
        _copy(d, src[start + lo:start + hi])
        return
    s = src[start + lo * sw:start + hi * sw]
    for o in range(d.size):
        d[o] = s[o * sw]


@_inline
def _unfold_block(src, dst, shift, OW, lo, hi):
    """dst[j] = src[j + shift] for a block of whole rows (stride 1, OW == W): one contiguous copy,
    then the columns outside [lo, hi) - taps on the left/right padding - are zeroed."""
    j_lo = max(0, -shift)
    j_hi = max(j_lo, min(dst.size, src.size - shift))     # never a negative end
    _zero(dst[:j_lo])
    _copy(dst[j_lo:j_hi], src[j_lo + shift:j_hi + shift])
    _zero(dst[j_hi:])
    if lo > 0 or hi < OW:
        for r in range(dst.size // OW):
            _zero(dst[r * OW:r * OW + lo])
            _zero(dst[r * OW + hi:(r + 1) * OW])


@_jit
def _col2im_tile(cols, dx, n0, n1, oh0, oh1, KH, KW, sh, sw, ph, pw, dh, dw):
    """dx[n0:n1] += the columns of a tile added back where _im2col_tile took them from.

    cols is scratch: in the "same"/stride-1 case its padding columns are zeroed here, so that
    whole blocks can be added contiguously (a padding column lines up with a neighbour pixel).
    """
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    OW = (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    R = oh1 - oh0
    flat = sh == 1 and sw == 1 and OW == W
    for c in range(C):
        for kh in range(KH):
            r_lo, r_hi = _valid_range(oh0 * sh + kh * dh - ph, sh, H, R)
            ih0 = oh0 * sh + kh * dh - ph
            for kw in range(KW):
                off = kw * dw - pw
                lo, hi = _valid_range(off, sw, W, OW)
                row = (c * KH + kh) * KW + kw
                for i in range(n1 - n0):
                    src = cols[row, i * R * OW:(i + 1) * R * OW]
                    dst = dx[n0 + i, c].reshape(H * W)
                    if flat:
                        _fold_block(src[r_lo * OW:r_hi * OW], dst, (ih0 + r_lo) * W + off,
                                    OW, lo, hi)
                    else:
                        for r in range(r_lo, r_hi):
                            _fold_row(src[r * OW:(r + 1) * OW], dst, (ih0 + r * sh) * W + off,
                                      sw, lo, hi)


@_inline
def _fold_row(src, dst, start, sw, lo, hi):
    """dst[start + o*sw] += src[o] for o in [lo, hi): the adjoint of _unfold_row."""
    s = src[lo:hi]
    if sw == 1:
        _add(dst[start + lo:start + hi], s)
        return
    d = dst[start + lo * sw:start + hi * sw]
    for o in range(s.size):
        d[o * sw] += s[o]


@_inline
def _fold_block(src, dst, shift, OW, lo, hi):
    """dst[j + shift] += src[j]: the adjoint of _unfold_block (zeroes src's padding columns)."""
    if lo > 0 or hi < OW:
        for r in range(src.size // OW):
            _zero(src[r * OW:r * OW + lo])
            _zero(src[r * OW + hi:(r + 1) * OW])
    j_lo = max(0, -shift)
    j_hi = max(j_lo, min(src.size, dst.size - shift))
    _add(dst[j_lo + shift:j_hi + shift], src[j_lo:j_hi])


@_jit
def _images_to_rows(y, out, n0, n1):
    """out (C, (n1-n0)*P) <- y[n0:n1] (g, C, P): a few images side by side as one matrix."""
    C, P = y.shape[1], y.shape[2]
    for i in range(n1 - n0):
        for c in range(C):
            _copy(out[c, i * P:(i + 1) * P], y[n0 + i, c])


@_jit
def _rows_to_images(out, y, n0, n1):
    """y[n0:n1] (g, C, P) <- out (C, (n1-n0)*P): the inverse of _images_to_rows."""
    C, P = y.shape[1], y.shape[2]
    for i in range(n1 - n0):
        for c in range(C):
            _copy(y[n0 + i, c], out[c, i * P:(i + 1) * P])


def _tiles(N, OH, OW, rows_of_cols, itemsize, budget):
    """Cut N images of OH*OW output pixels into tiles whose im2col fits in `budget` bytes.

    Returns [(n0, n1, [(oh0, oh1), ...])]: image ranges (the unit a thread owns, so col2im never
    races), each with the output-row ranges it is processed in. Either a range is one image cut
    into row blocks, or several whole images.
    """
    # columns per tile: what fits the budget, but never so few that BLAS spends its time packing
    # the weight (small feature maps: many images side by side)
    width = max(OW, budget // (rows_of_cols * itemsize), MIN_GEMM_COLUMNS)
    if OH * OW <= width:
        # at least MIN_TASKS tiles, and the same tiles whatever the thread count (reproducible)
        per = max(1, min(width // (OH * OW), math.ceil(N / MIN_TASKS)))
        return [(n, min(n + per, N), [(0, OH)]) for n in range(0, N, per)]
    rows = max(1, width // OW)
    blocks = [(r, min(r + rows, OH)) for r in range(0, OH, rows)]
    return [(n, n + 1, blocks) for n in range(N)]


def _conv_shapes(x, weight, stride, padding, dilation):
    N, C, H, W = x.shape
    C_out, C_g, KH, KW = weight.shape
    OH = conv_output_size(H, KH, stride[0], padding[0], dilation[0])
    OW = conv_output_size(W, KW, stride[1], padding[1], dilation[1])
    return N, C_out, C_g, KH, KW, OH, OW


DW_GROUPS = 8    # weight gradients are summed over this many fixed groups of tiles


def _sum_over_groups(n_items, work):
    """Run work(i, acc) -> acc for items 0..n_items, summing a weight gradient reproducibly.

    The items are cut into DW_GROUPS fixed runs, run in parallel; each run carries its own
    running sum (acc is None before its first item) and the runs' sums are added in order at
    the end. So the rounding never depends on which thread took which item: the same inputs give
    bit-identical gradients on 1 or 2 threads, loaded machine or not.
    """
    n_groups = max(1, min(DW_GROUPS, n_items))
    bounds = [round(g * n_items / n_groups) for g in range(n_groups + 1)]
    sums = [None] * n_groups

    def task(g, worker):
        acc = None
        for i in range(bounds[g], bounds[g + 1]):
            acc = work(i, acc)
        sums[g] = acc
    parallel_for(task, n_groups)
    total = sums[0]
    for part in sums[1:]:
        if part is not None:
            total += part
    return total


# ---- public: im2col / col2im (whole batch, for inspection and parity) ---------------------------

def im2col(x, kernel_size, stride, padding, dilation):
    """x (N, C, H, W) -> cols (N, C*KH*KW, OH*OW); row index (c*KH + kh)*KW + kw."""
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    (KH, KW), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    OH, OW = conv_output_size(H, KH, sh, ph, dh), conv_output_size(W, KW, sw, pw, dw)
    cols = np.empty((N, C * KH * KW, OH * OW), dtype=x.dtype)

    def task(n, worker):
        _im2col_tile(x, cols[n], n, n + 1, 0, OH, KH, KW, sh, sw, ph, pw, dh, dw)
    parallel_for(task, N)
    return cols


def col2im(cols, x_shape, kernel_size, stride, padding, dilation):
    """The adjoint of im2col: cols (N, C*KH*KW, OH*OW) -> (N, C, H, W), overlaps summed."""
    cols = np.array(cols, order="C", copy=True)        # _col2im_tile zeroes padding entries
    (KH, KW), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    OH = conv_output_size(x_shape[2], KH, sh, ph, dh)
    dx = np.zeros(x_shape, dtype=cols.dtype)

    def task(n, worker):
        _col2im_tile(cols[n], dx, n, n + 1, 0, OH, KH, KW, sh, sw, ph, pw, dh, dw)
    parallel_for(task, x_shape[0])
    return dx


# ---- convolution ---------------------------------------------------------------------------------

def conv2d_forward(x, weight, bias, stride, padding, dilation, groups):
    """x (N, C, H, W), weight (C_out, C/groups, KH, KW), bias (C_out,) or None
    -> (N, C_out, OH, OW)."""
    x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
    N, C_out, C_g, KH, KW, OH, OW = _conv_shapes(x, weight, stride, padding, dilation)
    if C_g * KH * KW <= DIRECT_MAX_TAPS:
        return _direct_forward(x, weight, bias, stride, padding, dilation, groups)
    if _winograd_applies(x.shape[1], weight.shape, stride, dilation, groups):
        return _winograd_forward(x, weight, bias, padding)
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    G, K, C_og = groups, C_g * KH * KW, C_out // groups
    w = weight.reshape(G, C_og, K)
    y = np.empty((N, C_out, OH, OW), dtype=x.dtype)
    tiles = [(n0, n1, r0, r1) for n0, n1, blocks in
             _tiles(N, OH, OW, G * K, x.itemsize, COLS_BYTES_FORWARD) for r0, r1 in blocks]

    def task(t, worker):
        n0, n1, oh0, oh1 = tiles[t]
        T = (n1 - n0) * (oh1 - oh0) * OW
        cols = scratch("cols", (G * K, T), x.dtype)
        _im2col_tile(x, cols, n0, n1, oh0, oh1, KH, KW, sh, sw, ph, pw, dh, dw)
        if n1 - n0 == 1:       # the product lands directly in y (a strided view, fine for BLAS)
            out = y[n0].reshape(C_out, OH * OW)[:, oh0 * OW:oh1 * OW]
        else:                  # several images: (C_out, g*P) here, then one copy into NCHW
            out = scratch("out", (C_out, T), x.dtype)
        for g in range(G):
            np.matmul(w[g], cols[g * K:(g + 1) * K], out=out[g * C_og:(g + 1) * C_og])
        if bias is not None:
            out += bias[:, None]
        if n1 - n0 > 1:
            _rows_to_images(out, y.reshape(N, C_out, OH * OW), n0, n1)
    parallel_for(task, len(tiles))
    return y


def conv2d_backward(dy, x, weight, stride, padding, dilation, groups, need_dx=True, need_dw=True):
    """Gradients of conv2d_forward (without bias): dy (N, C_out, OH, OW) -> (dx, dweight).

    Per tile: dW += dy_tile @ cols_tile^T (im2col recomputed: cheaper than keeping 300 MB of
    columns), dcols = W^T @ dy_tile, then col2im into dx. A gradient not needed is None.
    """
    x, weight, dy = (np.ascontiguousarray(a) for a in (x, weight, dy))
    N, C_out, C_g, KH, KW, OH, OW = _conv_shapes(x, weight, stride, padding, dilation)
    if C_g * KH * KW <= DIRECT_MAX_TAPS:
        return _direct_backward(dy, x, weight, stride, padding, dilation, groups, need_dx,
                                need_dw)
    if _winograd_applies(x.shape[1], weight.shape, stride, dilation, groups):
        return _winograd_backward(dy, x, weight, padding, need_dx, need_dw)
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    G, K, C_og, P = groups, C_g * KH * KW, C_out // groups, OH * OW
    w = weight.reshape(G, C_og, K)
    dy_rows = dy.reshape(N, C_out, P)
    dx = np.zeros(x.shape, dtype=x.dtype) if need_dx else None
    tiles = _tiles(N, OH, OW, G * K, x.itemsize, COLS_BYTES_BACKWARD)

    def work(t, acc):
        n0, n1, blocks = tiles[t]
        for oh0, oh1 in blocks:
            T = (n1 - n0) * (oh1 - oh0) * OW
            if n1 - n0 == 1:
                dyt = dy_rows[n0, :, oh0 * OW:oh1 * OW]
            else:
                dyt = scratch("dyt", (C_out, T), x.dtype)
                _images_to_rows(dy_rows, dyt, n0, n1)
            if need_dw:
                cols = scratch("cols", (G * K, T), x.dtype)
                _im2col_tile(x, cols, n0, n1, oh0, oh1, KH, KW, sh, sw, ph, pw, dh, dw)
                part = np.empty((G, C_og, K), x.dtype) if acc is None else \
                    scratch("dw", (G, C_og, K), x.dtype)
                for g in range(G):
                    np.matmul(dyt[g * C_og:(g + 1) * C_og], cols[g * K:(g + 1) * K].T,
                              out=part[g])
                if acc is None:
                    acc = part
                else:
                    acc += part
            if need_dx:
                dcols = scratch("dcols", (G * K, T), x.dtype)
                for g in range(G):
                    np.matmul(w[g].T, dyt[g * C_og:(g + 1) * C_og], out=dcols[g * K:(g + 1) * K])
                _col2im_tile(dcols, dx, n0, n1, oh0, oh1, KH, KW, sh, sw, ph, pw, dh, dw)
        return acc
    dweight = _sum_over_groups(len(tiles), work)
    if need_dw:
        dweight = dweight.reshape(weight.shape)
    return dx, dweight


# ---- Winograd F(2x2, 3x3): the same convolution with 2.25x fewer multiplications -----------------
# Lavin & Gray (2016). A 3x3 stride-1 convolution computes each 2x2 block of outputs (a "tile")
# from a 4x4 block of input. Transform the input block (V = B^T d B) and the filter (U = G g G^T)
# to 4x4, multiply them elementwise, transform back (Y = A^T (U . V) A): 16 multiplications per
# tile and channel pair instead of 36. Summed over the input channels, each of the 16 positions
# xi of the 4x4 becomes a matrix product, so the heavy work is still BLAS:
#
#     M[xi] (C_out, tiles) = U[xi] (C_out, C) @ V[xi] (C, tiles)          for xi = 4a + b
#
# The backward uses the same transforms (linear maps; their adjoints are the transposes):
#     Dy = A dY A^T;   dx tiles = B (U[xi]^T @ Dy[xi]) B^T, overlapping;   dW = G^T (sum Dy V^T) G
# Every 2-D transform applies a 1-D one to the rows, then to the columns (see _bt, _at, _a, _b).
#
# Layout: tiles are numbered th*K + tw with K = TW + 1 ("wide" rows: the last tile of each row is
# junk, computed and dropped). Then the 4x4 block of tile j is found at fixed offsets from j in the
# input's four polyphase planes P[p, q][i*K + k] = x_padded[2i + p, 2k + q], and every transform
# step is one long vectorisable loop over all tiles of a channel instead of many short ones.

WINOGRAD = True                  # use Winograd where it applies (3x3, stride 1, no dilation/groups)
WINOGRAD_MIN_CHANNELS = 8        # below this, the transforms cost more than the products save
TRANSFORM_BYTES = 2 << 20        # a Winograd chunk's transformed input (16 x C x tiles)


def _winograd_applies(C, weight_shape, stride, dilation, groups):
    return (WINOGRAD and groups == 1 and weight_shape[2:] == (3, 3) and stride == (1, 1)
            and dilation == (1, 1) and C >= WINOGRAD_MIN_CHANNELS)


# (Outputs are passed as separate 1-D rows: a row of a 2-D slice would have unknown strides for
# Numba, and its loop would not be vectorised.)

@_inline
def _bt(o0, o1, o2, o3, d0, d1, d2, d3):
    """o0..o3 = B^T [d0, d1, d2, d3] elementwise = [d0 - d2, d1 + d2, d2 - d1, d1 - d3]."""
    for j in range(o0.size):
        o0[j] = d0[j] - d2[j]
        o1[j] = d1[j] + d2[j]
        o2[j] = d2[j] - d1[j]
        o3[j] = d1[j] - d3[j]


@_inline
def _at(o0, o1, m0, m1, m2, m3):
    """o0, o1 = A^T [m0, m1, m2, m3] elementwise = [m0 + m1 + m2, m1 - m2 - m3]."""
    for j in range(o0.size):
        o0[j] = m0[j] + m1[j] + m2[j]
        o1[j] = m1[j] - m2[j] - m3[j]


@_inline
def _a(o0, o1, o2, o3, y0, y1):
    """o0..o3 = A [y0, y1] elementwise = [y0, y0 + y1, y0 - y1, -y1] (the adjoint of A^T)."""
    for j in range(o0.size):
        o0[j] = y0[j]
        o1[j] = y0[j] + y1[j]
        o2[j] = y0[j] - y1[j]
        o3[j] = -y1[j]


@_inline
def _b(o0, o1, o2, o3, q0, q1, q2, q3):
    """o0..o3 = B [q0, .., q3] elementwise = [q0, q1 - q2 + q3, q1 + q2 - q0, -q3]."""
    for j in range(o0.size):
        o0[j] = q0[j]
        o1[j] = q1[j] - q2[j] + q3[j]
        o2[j] = q1[j] + q2[j] - q0[j]
        o3[j] = -q3[j]


@_jit
def _wino_weight(g, U, o0, o1):
    """U (16, C_out, C) <- G g G^T for output channels o0..o1 of g (C_out, C, 3, 3), with
    G [k0, k1, k2] = [k0, (k0 + k1 + k2)/2, (k0 - k1 + k2)/2, k2] on the columns, then the rows."""
    t = np.empty((4, 3))                              # G g, reused for every filter
    for o in range(o0, o1):
        for c in range(g.shape[1]):
            k = g[o, c]
            for j in range(3):
                t[0, j] = k[0, j]
                t[1, j] = 0.5 * (k[0, j] + k[1, j] + k[2, j])
                t[2, j] = 0.5 * (k[0, j] - k[1, j] + k[2, j])
                t[3, j] = k[2, j]
            for a in range(4):
                U[4 * a + 0, o, c] = t[a, 0]
                U[4 * a + 1, o, c] = 0.5 * (t[a, 0] + t[a, 1] + t[a, 2])
                U[4 * a + 2, o, c] = 0.5 * (t[a, 0] - t[a, 1] + t[a, 2])
                U[4 * a + 3, o, c] = t[a, 2]


@_jit
def _wino_weight_grad(Z, dw, o0, o1):
    """dw (C_out, C, 3, 3) <- G^T z G for output channels o0..o1 of Z (16, C_out, C), with
    G^T [z0, .., z3] = [z0 + (z1 + z2)/2, (z1 - z2)/2, (z1 + z2)/2 + z3] (the adjoint of G)."""
    t = np.empty((3, 4))                              # G^T z on the rows, reused
    for o in range(o0, o1):
        for c in range(Z.shape[2]):
            for b in range(4):
                z0, z1, z2, z3 = Z[b, o, c], Z[4 + b, o, c], Z[8 + b, o, c], Z[12 + b, o, c]
                t[0, b] = z0 + 0.5 * (z1 + z2)
                t[1, b] = 0.5 * (z1 - z2)
                t[2, b] = 0.5 * (z1 + z2) + z3
            for i in range(3):
                dw[o, c, i, 0] = t[i, 0] + 0.5 * (t[i, 1] + t[i, 2])
                dw[o, c, i, 1] = 0.5 * (t[i, 1] - t[i, 2])
                dw[o, c, i, 2] = 0.5 * (t[i, 1] + t[i, 2]) + t[i, 3]


@_jit
def _wino_input(x, V, n0, n1, th0, th1, ph, pw, Xp, T):
    """V (16, C, (n1-n0)*R*K) <- B^T d B for every tile of tile rows th0..th1 (R of them) of
    images n0..n1; tile (th, tw) reads the input block at rows 2th - ph, columns 2tw - pw.

    Scratch: Xp (2, (R+1)*Wq), the block's zero-padded input rows (Wq = 2K wide), even rows then
    odd rows: Xp[p, i*Wq + col] = x_padded[2(th0 + i) + p, col]. Then row r of a tile is a fixed
    offset away in Xp[r % 2], and B^T on the rows is one flat loop. T (4, R*Wq + 2) holds that
    result; tile j's four columns are then T[a, 2j .. 2j+3] (since Wq = 2K): B^T on the columns
    is one flat loop too.
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    R = th1 - th0
    Wq = Xp.shape[1] // (R + 1)
    L = R * (Wq // 2)
    n = R * Wq
    _zero(Xp.reshape(Xp.size))          # the padding stays zero for every plane
    _zero(T.reshape(T.size))            # T's two-element tail is only read by junk tiles
    for i in range(n1 - n0):
        for c in range(C):
            for r in range(R + 1):
                for p in range(2):
                    ih = 2 * (th0 + r) + p - ph
                    if 0 <= ih < H:
                        _copy(Xp[p, r * Wq + pw:r * Wq + pw + W], x[n0 + i, c, ih])
            _bt(T[0, :n], T[1, :n], T[2, :n], T[3, :n],
                Xp[0, :n], Xp[1, :n], Xp[0, Wq:Wq + n], Xp[1, Wq:Wq + n])
            e = i * L
            for a in range(4):
                t = T[a]
                v0, v1 = V[4 * a, c, e:e + L], V[4 * a + 1, c, e:e + L]
                v2, v3 = V[4 * a + 2, c, e:e + L], V[4 * a + 3, c, e:e + L]
                for j in range(L):
                    d0, d1, d2, d3 = t[2 * j], t[2 * j + 1], t[2 * j + 2], t[2 * j + 3]
                    v0[j] = d0 - d2
                    v1[j] = d1 + d2
                    v2[j] = d2 - d1
                    v3[j] = d1 - d3


@_jit
def _wino_output(M, y, bias, n0, n1, th0, th1, S, Yp):
    """y[n0:n1] rows 2*th0..2*th1 <- A^T m A + bias for every tile of M (16, C_out, tiles).

    Scratch: S (2, 4, L), A^T along the rows; Yp (2, 2, L), the output tiles in polyphase,
    Yp[a, b][(th - th0)*K + tw] = y[2th + a, 2tw + b], then interleaved into y (junk dropped).
    """
    C_out, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    R = th1 - th0
    L = S.shape[2]
    K = L // R
    for i in range(n1 - n0):
        for co in range(C_out):
            e = i * L
            for b in range(4):
                _at(S[0, b], S[1, b], M[b, co, e:e + L], M[4 + b, co, e:e + L],
                    M[8 + b, co, e:e + L], M[12 + b, co, e:e + L])
            for a in range(2):
                _at(Yp[a, 0], Yp[a, 1], S[a, 0], S[a, 1], S[a, 2], S[a, 3])
            bv = bias[co]
            for th in range(th0, th1):
                for a in range(2):
                    oh = 2 * th + a
                    if oh >= OH:
                        continue
                    row = y[n0 + i, co, oh]
                    e = Yp[a, 0, (th - th0) * K:(th - th0 + 1) * K]
                    o = Yp[a, 1, (th - th0) * K:(th - th0 + 1) * K]
                    for tw in range(OW // 2):
                        row[2 * tw] = e[tw] + bv
                        row[2 * tw + 1] = o[tw] + bv
                    if OW % 2:
                        row[OW - 1] = e[OW // 2] + bv


@_jit
def _wino_dy(dy, D, n0, n1, th0, th1, Yp, E):
    """D (16, C_out, tiles) <- A dY A^T for every 2x2 tile of dy (zero beyond the output's edge).

    Scratch: Yp (2, R*Wq), the block's rows of dy, even rows then odd rows, as in _wino_input;
    E (4, R*Wq), A along the rows; tile j's two columns are then E[a, 2j], E[a, 2j + 1].
    """
    C_out, OH, OW = dy.shape[1], dy.shape[2], dy.shape[3]
    R = th1 - th0
    n = Yp.shape[1]
    Wq = n // R
    L = n // 2
    _zero(Yp.reshape(Yp.size))          # beyond the edges (and the junk tiles) stays zero
    for i in range(n1 - n0):
        for co in range(C_out):
            for r in range(R):
                for p in range(2):
                    oh = 2 * (th0 + r) + p
                    if oh < OH:
                        _copy(Yp[p, r * Wq:r * Wq + OW], dy[n0 + i, co, oh])
            _a(E[0], E[1], E[2], E[3], Yp[0], Yp[1])
            e = i * L
            for a in range(4):
                t = E[a]
                d0, d1 = D[4 * a, co, e:e + L], D[4 * a + 1, co, e:e + L]
                d2, d3 = D[4 * a + 2, co, e:e + L], D[4 * a + 3, co, e:e + L]
                for j in range(L):
                    y0, y1 = t[2 * j], t[2 * j + 1]
                    d0[j] = y0
                    d1[j] = y0 + y1
                    d2[j] = y0 - y1
                    d3[j] = -y1


@_jit
def _wino_dx(Q, dXp, n0, n1, th0, th1, G, BG):
    """dXp += the adjoint of _wino_input applied to Q (16, C, tiles): dXp (n1-n0, C, 2, TH+1, Wq)
    is the padded input gradient of images n0..n1, even rows then odd rows.

    Scratch: G (4, R*Wq + 2), the gradient of _wino_input's T: B q on the columns, where tile j
    writes 2j .. 2j+3 and so overlaps its neighbour (position 2m gets tile m's first and tile
    m-1's third value); BG (4, R*Wq), B on the rows.
    """
    C = Q.shape[1]
    R = th1 - th0
    n = BG.shape[1]
    Wq = n // R
    L = n // 2
    base = th0 * Wq
    for i in range(n1 - n0):
        for c in range(C):
            e = i * L
            for a in range(4):
                q0, q1 = Q[4 * a, c, e:e + L], Q[4 * a + 1, c, e:e + L]
                q2, q3 = Q[4 * a + 2, c, e:e + L], Q[4 * a + 3, c, e:e + L]
                g = G[a]
                g[0] = q0[0]
                g[1] = q1[0] - q2[0] + q3[0]
                # B q = [q0, q1 - q2 + q3, q1 + q2 - q0, -q3] at 2m .. 2m+3, overlapping
                p0, p1, p2, p3 = q0[1:], q1[1:], q2[1:], q3[1:]
                g2 = g[2:]
                for j in range(L - 1):
                    g2[2 * j] = p0[j] + q1[j] + q2[j] - q0[j]
                    g2[2 * j + 1] = p1[j] - p2[j] + p3[j] - q3[j]
            _b(BG[0], BG[1], BG[2], BG[3], G[0, :n], G[1, :n], G[2, :n], G[3, :n])
            for r in range(4):         # row r of the tiles is row r // 2 of phase r % 2
                start = base + (r // 2) * Wq
                _add(dXp[i, c, r % 2].reshape(-1)[start:start + n], BG[r])


@_jit
def _wino_dx_finish(dXp, dx, n0, n1, ph, pw):
    """dx[n0:n1] <- the padded gradient without its padding: input row ih is padded row ih + ph,
    stored as row (ih + ph) // 2 of phase (ih + ph) % 2."""
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    for i in range(n1 - n0):
        for c in range(C):
            for ih in range(H):
                _copy(dx[n0 + i, c, ih], dXp[i, c, (ih + ph) % 2, (ih + ph) // 2, pw:pw + W])


def _wino_chunks(N, TH, K, C, itemsize):
    """[(n0, n1, [(th0, th1), ...])]: image ranges, each with its blocks of tile rows, such that a
    block's transformed input (16 x C x tiles) fits in TRANSFORM_BYTES."""
    tiles = max(K, TRANSFORM_BYTES // (16 * C * itemsize), MIN_GEMM_COLUMNS)
    if TH * K <= tiles:
        per = max(1, min(tiles // (TH * K), math.ceil(N / MIN_TASKS)))
        return [(n, min(n + per, N), [(0, TH)]) for n in range(0, N, per)]
    rows = max(1, tiles // K)
    return [(n, n + 1, [(t, min(t + rows, TH)) for t in range(0, TH, rows)]) for n in range(N)]


def _wino_transform_weight(weight):
    C_out = weight.shape[0]
    U = np.empty((16, C_out, weight.shape[1]), dtype=weight.dtype)
    n_tasks, span = _plane_tasks(C_out)
    parallel_for(lambda t, worker: _wino_weight(weight, U, *span(t)), n_tasks)
    return U


def _wino_geometry(H, W, padding):
    """(OH, OW, TH, TW, K): output size, tiles per column and row, wide row length."""
    OH, OW = H + 2 * padding[0] - 2, W + 2 * padding[1] - 2
    TH, TW = (OH + 1) // 2, (OW + 1) // 2
    return OH, OW, TH, TW, TW + 1


def _winograd_forward(x, weight, bias, padding):
    N, C, H, W = x.shape
    C_out = weight.shape[0]
    OH, OW, TH, TW, K = _wino_geometry(H, W, padding)
    U = _wino_transform_weight(weight)                          # (16, C_out, C)
    b = np.zeros(C_out, x.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    y = np.empty((N, C_out, OH, OW), dtype=x.dtype)
    tasks = [(n0, n1, t0, t1) for n0, n1, blocks in _wino_chunks(N, TH, K, C, x.itemsize)
             for t0, t1 in blocks]

    def task(t, worker):
        n0, n1, th0, th1 = tasks[t]
        L = (th1 - th0) * K
        buf = lambda name, *shape: scratch(name, shape, x.dtype)  # noqa: E731
        V, M = buf("wino_v", 16, C, (n1 - n0) * L), buf("wino_m", 16, C_out, (n1 - n0) * L)
        _wino_input(x, V, n0, n1, th0, th1, *padding, buf("wino_xp", 2, (th1 - th0 + 1) * 2 * K),
                    buf("wino_t", 4, 2 * L + 2))
        np.matmul(U, V, out=M)                                  # the 16 products, one call
        _wino_output(M, y, b, n0, n1, th0, th1, buf("wino_s", 2, 4, L), buf("wino_y", 2, 2, L))
    parallel_for(task, len(tasks))
    return y


def _winograd_backward(dy, x, weight, padding, need_dx, need_dw):
    N, C, H, W = x.shape
    C_out = weight.shape[0]
    OH, OW, TH, TW, K = _wino_geometry(H, W, padding)
    U_t = _wino_transform_weight(weight).transpose(0, 2, 1) if need_dx else None
    dx = np.empty(x.shape, dtype=x.dtype) if need_dx else None
    chunks = _wino_chunks(N, TH, K, max(C, C_out), x.itemsize)

    def work(t, acc):
        n0, n1, blocks = chunks[t]
        buf = lambda name, *shape: scratch(name, shape, x.dtype)  # noqa: E731
        if need_dx:
            dXp = buf("wino_dxp", n1 - n0, C, 2, TH + 1, 2 * K)
            dXp[...] = 0
        for th0, th1 in blocks:
            L = (th1 - th0) * K
            D = buf("wino_d", 16, C_out, (n1 - n0) * L)
            _wino_dy(dy, D, n0, n1, th0, th1, buf("wino_yp", 2, 2 * L), buf("wino_e", 4, 2 * L))
            if need_dw:                                         # sum over tiles of Dy V^T
                V = buf("wino_v", 16, C, (n1 - n0) * L)
                _wino_input(x, V, n0, n1, th0, th1, *padding,
                            buf("wino_xp", 2, (th1 - th0 + 1) * 2 * K), buf("wino_t", 4, 2 * L + 2))
                if acc is None:
                    acc = np.matmul(D, V.transpose(0, 2, 1))
                else:
                    Z = buf("wino_z", 16, C_out, C)
                    np.matmul(D, V.transpose(0, 2, 1), out=Z)
                    acc += Z
            if need_dx:
                Q = buf("wino_q", 16, C, (n1 - n0) * L)
                np.matmul(U_t, D, out=Q)
                _wino_dx(Q, dXp, n0, n1, th0, th1, buf("wino_g", 4, 2 * L + 2),
                         buf("wino_bg", 4, 2 * L))
        if need_dx:
            _wino_dx_finish(dXp, dx, n0, n1, *padding)
        return acc
    Z = _sum_over_groups(len(chunks), work)
    dweight = None
    if need_dw:
        dweight = np.empty(weight.shape, dtype=x.dtype)
        n_tasks, span = _plane_tasks(C_out)
        parallel_for(lambda t, worker: _wino_weight_grad(Z, dweight, *span(t)), n_tasks)
    return dx, dweight


# ---- direct convolution (few input values per output) ------------------------------------------

@_jit
def _pad_image(x, n, xpad, ph, pw):
    """xpad (C, H+2ph, W+2pw) <- x[n] with a zero border."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    _zero(xpad.reshape(xpad.size))
    for c in range(C):
        for h in range(H):
            _copy(xpad[c, h + ph, pw:pw + W], x[n, c, h])


@_jit_sum
def _direct_forward_images(x, w, bias, y, n0, n1, sh, sw, ph, pw, dh, dw, G, xpad, acc):
    """y[n0:n1] = conv(x, w) + bias by direct loops over the taps (bias has C_out entries).

    acc holds one output plane in "wide" rows of the padded width Wp: with stride 1, output
    (oh, ow) and its input tap share one flat offset, so a whole plane is one long vectorisable
    loop (the columns ow >= OW of each wide row are junk and dropped at the end).
    """
    C_out, C_g, KH, KW = w.shape
    OH, OW = y.shape[2], y.shape[3]
    Hp, Wp = xpad.shape[1], xpad.shape[2]
    C_og = C_out // G
    L = (OH - 1) * Wp + OW
    for n in range(n0, n1):
        _pad_image(x, n, xpad, ph, pw)
        for co in range(C_out):
            g = co // C_og
            acc[:] = bias[co]
            for ci in range(C_g):
                src = xpad[g * C_g + ci].reshape(Hp * Wp)
                for kh in range(KH):
                    for kw in range(KW):
                        wv = w[co, ci, kh, kw]
                        if sh == 1 and sw == 1:
                            base = kh * dh * Wp + kw * dw
                            _axpy(acc[:L], wv, src[base:base + L])
                            continue
                        for oh in range(OH):
                            s0 = (oh * sh + kh * dh) * Wp + kw * dw
                            _axpy(acc[oh * Wp:oh * Wp + OW], wv, src[s0:s0 + OW * sw:sw])
            for oh in range(OH):
                _copy(y[n, co, oh], acc[oh * Wp:oh * Wp + OW])


@_jit_sum
def _direct_backward_images(dy, x, w, dx, dwp, n0, n1, sh, sw, ph, pw, dh, dw, G, xpad, dxpad,
                            dyw, need_dx, need_dw):
    """dx[n0:n1] = the input gradient, and dwp += the weight gradient, of images n0..n1.

    dw[co, ci, kh, kw] = sum over pixels of dy * (the input under that tap); dx is the same sum
    scattered back: both reuse the forward's wide-row trick (dyw: dy in wide rows, zero junk).
    """
    C_out, C_g, KH, KW = w.shape
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    OH, OW = dy.shape[2], dy.shape[3]
    Hp, Wp = xpad.shape[1], xpad.shape[2]
    C_og = C_out // G
    L = (OH - 1) * Wp + OW
    for n in range(n0, n1):
        _pad_image(x, n, xpad, ph, pw)
        _zero(dxpad.reshape(dxpad.size))
        for co in range(C_out):
            g = co // C_og
            _zero(dyw)
            for oh in range(OH):
                _copy(dyw[oh * Wp:oh * Wp + OW], dy[n, co, oh])
            for ci in range(C_g):
                src = xpad[g * C_g + ci].reshape(Hp * Wp)
                dst = dxpad[g * C_g + ci].reshape(Hp * Wp)
                for kh in range(KH):
                    for kw in range(KW):
                        wv = w[co, ci, kh, kw]
                        if sh == 1 and sw == 1:
                            base = kh * dh * Wp + kw * dw
                            if need_dw:
                                dwp[co, ci, kh, kw] += _dot(dyw[:L], src[base:base + L])
                            if need_dx:
                                _axpy(dst[base:base + L], wv, dyw[:L])
                            continue
                        for oh in range(OH):
                            s0 = (oh * sh + kh * dh) * Wp + kw * dw
                            row = dyw[oh * Wp:oh * Wp + OW]
                            if need_dw:
                                dwp[co, ci, kh, kw] += _dot(row, src[s0:s0 + OW * sw:sw])
                            if need_dx:
                                _axpy(dst[s0:s0 + OW * sw:sw], wv, row)
        if need_dx:
            for c in range(C):
                for h in range(H):
                    _copy(dx[n, c, h], dxpad[c, h + ph, pw:pw + W])


def _direct_forward(x, weight, bias, stride, padding, dilation, groups):
    N, C_out, C_g, KH, KW, OH, OW = _conv_shapes(x, weight, stride, padding, dilation)
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    C, H, W = x.shape[1:]
    y = np.empty((N, C_out, OH, OW), dtype=x.dtype)
    b = np.zeros(C_out, x.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    per = max(1, math.ceil(N / (4 * num_threads())))

    def task(t, worker):
        xpad = scratch("xpad", (C, H + 2 * ph, W + 2 * pw), x.dtype)
        acc = scratch("acc", (OH * (W + 2 * pw),), x.dtype)
        _direct_forward_images(x, weight, b, y, t * per, min(N, (t + 1) * per), sh, sw, ph, pw,
                               dh, dw, groups, xpad, acc)
    parallel_for(task, math.ceil(N / per))
    return y


def _direct_backward(dy, x, weight, stride, padding, dilation, groups, need_dx, need_dw):
    N, C_out, C_g, KH, KW, OH, OW = _conv_shapes(x, weight, stride, padding, dilation)
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    C, H, W = x.shape[1:]
    dx = np.empty(x.shape, dtype=x.dtype) if need_dx else np.empty((0, C, H, W), x.dtype)
    def work(n, acc):                                           # one image at a time
        Hp, Wp = H + 2 * ph, W + 2 * pw
        if acc is None:
            acc = np.zeros(weight.shape, dtype=x.dtype)
        _direct_backward_images(dy, x, weight, dx, acc, n, n + 1, sh, sw,
                                ph, pw, dh, dw, groups, scratch("xpad", (C, Hp, Wp), x.dtype),
                                scratch("dxpad", (C, Hp, Wp), x.dtype),
                                scratch("dyw", (OH * Wp,), x.dtype), need_dx, need_dw)
        return acc
    dweight = _sum_over_groups(N, work)
    return (dx if need_dx else None), (dweight if need_dw else None)


# ---- pooling -------------------------------------------------------------------------------------

@_jit
def _max_pool_planes(x, y, arg, p0, p1, KH, KW, sh, sw, ph, pw):
    """y, arg (planes, OH, OW) <- max and its flat index over each window of x (planes, H, W).

    One output row at a time, tap by tap, each tap a vectorisable pass over the row: the running
    maximum starts at -inf with the window's first pixel as its position, a value replaces it if
    it is larger (so the first maximum wins) or is the first NaN.
    """
    H, W = x.shape[1], x.shape[2]
    OH, OW = y.shape[1], y.shape[2]
    for p in range(p0, p1):
        for oh in range(OH):
            best, where = y[p, oh], arg[p, oh]
            h_first = max(oh * sh - ph, 0)
            for ow in range(OW):
                best[ow] = -np.inf
                where[ow] = h_first * W + max(ow * sw - pw, 0)
            for kh in range(KH):
                ih = oh * sh - ph + kh
                if ih < 0 or ih >= H:
                    continue
                for kw in range(KW):
                    lo, hi = _valid_range(kw - pw, sw, W, OW)
                    src = x[p, ih, lo * sw + kw - pw:]
                    b, w = best[lo:hi], where[lo:hi]
                    pos = ih * W + lo * sw + kw - pw
                    for j in range(b.size):
                        v, m = src[j * sw], b[j]
                        take = v > m or (v != v and m == m)
                        b[j] = v if take else m
                        w[j] = pos + j * sw if take else w[j]


@_jit
def _max_pool_2x2_planes(x, y, arg, p0, p1):
    """The common case, kernel 2, stride 2, no padding: four candidates per output, one pass."""
    W = x.shape[2]
    OH, OW = y.shape[1], y.shape[2]
    for p in range(p0, p1):
        for oh in range(OH):
            top, bottom = x[p, 2 * oh], x[p, 2 * oh + 1]
            best, where = y[p, oh], arg[p, oh]
            for j in range(OW):
                m, i = top[2 * j], 0
                v = top[2 * j + 1]
                if v > m or (v != v and m == m):
                    m, i = v, 1
                v = bottom[2 * j]
                if v > m or (v != v and m == m):
                    m, i = v, W
                v = bottom[2 * j + 1]
                if v > m or (v != v and m == m):
                    m, i = v, W + 1
                best[j] = m
                where[j] = 2 * oh * W + 2 * j + i


@_jit
def _max_pool_backward_planes(dy, arg, dx, p0, p1):
    """dx (planes, H*W) += dy at the argmax positions (zeroed here first)."""
    for p in range(p0, p1):
        dx[p, :] = 0
        for i in range(dy.shape[1]):
            dx[p, arg[p, i]] += dy[p, i]


@_jit
def _avg_pool_planes(x, y, p0, p1, KH, KW, sh, sw, ph, pw):
    """y (planes, OH, OW) <- window sums of x / (KH*KW) (padding counted as zeros)."""
    H, W = x.shape[1], x.shape[2]
    OH, OW = y.shape[1], y.shape[2]
    inv = 1.0 / (KH * KW)
    for p in range(p0, p1):
        for oh in range(OH):
            h_lo, h_hi = max(oh * sh - ph, 0), min(oh * sh - ph + KH, H)
            for ow in range(OW):
                w_lo, w_hi = max(ow * sw - pw, 0), min(ow * sw - pw + KW, W)
                s = 0.0
                for ih in range(h_lo, h_hi):
                    for iw in range(w_lo, w_hi):
                        s += x[p, ih, iw]
                y[p, oh, ow] = s * inv


@_jit
def _avg_pool_backward_planes(dy, dx, p0, p1, KH, KW, sh, sw, ph, pw):
    """dx (planes, H, W) <- each output gradient / (KH*KW) spread over its window."""
    H, W = dx.shape[1], dx.shape[2]
    OH, OW = dy.shape[1], dy.shape[2]
    inv = 1.0 / (KH * KW)
    for p in range(p0, p1):
        dx[p] = 0
        for oh in range(OH):
            h_lo, h_hi = max(oh * sh - ph, 0), min(oh * sh - ph + KH, H)
            for ow in range(OW):
                w_lo, w_hi = max(ow * sw - pw, 0), min(ow * sw - pw + KW, W)
                g = dy[p, oh, ow] * inv
                for ih in range(h_lo, h_hi):
                    for iw in range(w_lo, w_hi):
                        dx[p, ih, iw] += g


def _plane_tasks(n_planes):
    """Split n planes (or channels) into a few ranges per thread: (count, range of task t)."""
    per = max(1, math.ceil(n_planes / (4 * num_threads())))
    return math.ceil(n_planes / per), lambda t: (t * per, min(n_planes, (t + 1) * per))


def _pool_output(x, kernel_size, stride, padding):
    N, C, H, W = x.shape
    OH = conv_output_size(H, kernel_size[0], stride[0], padding[0], 1)
    OW = conv_output_size(W, kernel_size[1], stride[1], padding[1], 1)
    return N, C, H, W, OH, OW


def max_pool2d_forward(x, kernel_size, stride, padding):
    """x (N, C, H, W) -> (y (N, C, OH, OW), argmax (N, C, OH, OW) int32: ih*W + iw in the plane)."""
    x = np.ascontiguousarray(x)
    N, C, H, W, OH, OW = _pool_output(x, kernel_size, stride, padding)
    y = np.empty((N * C, OH, OW), dtype=x.dtype)
    arg = np.empty((N * C, OH, OW), dtype=np.int32)
    xs = x.reshape(N * C, H, W)
    n_tasks, span = _plane_tasks(N * C)

    plain_2x2 = kernel_size == stride == (2, 2) and padding == (0, 0)

    def task(t, worker):
        if plain_2x2:
            _max_pool_2x2_planes(xs, y, arg, *span(t))
        else:
            _max_pool_planes(xs, y, arg, *span(t), *kernel_size, *stride, *padding)
    parallel_for(task, n_tasks)
    return y.reshape(N, C, OH, OW), arg.reshape(N, C, OH, OW)


def max_pool2d_backward(dy, argmax, x_shape):
    """Route each output gradient to the input pixel that was the maximum (sums where shared)."""
    N, C, H, W = x_shape
    dys = np.ascontiguousarray(dy).reshape(N * C, -1)
    args = np.ascontiguousarray(argmax).reshape(N * C, -1)
    dx = np.empty((N * C, H * W), dtype=dy.dtype)
    n_tasks, span = _plane_tasks(N * C)

    def task(t, worker):
        _max_pool_backward_planes(dys, args, dx, *span(t))
    parallel_for(task, n_tasks)
    return dx.reshape(x_shape)


def avg_pool2d_forward(x, kernel_size, stride, padding):
    """x (N, C, H, W) -> (N, C, OH, OW), the mean of each window; zero padding is counted in the
    divisor KH*KW (PyTorch's count_include_pad=True)."""
    x = np.ascontiguousarray(x)
    N, C, H, W, OH, OW = _pool_output(x, kernel_size, stride, padding)
    y = np.empty((N * C, OH, OW), dtype=x.dtype)
    xs = x.reshape(N * C, H, W)
    n_tasks, span = _plane_tasks(N * C)

    def task(t, worker):
        _avg_pool_planes(xs, y, *span(t), *kernel_size, *stride, *padding)
    parallel_for(task, n_tasks)
    return y.reshape(N, C, OH, OW)


def avg_pool2d_backward(dy, x_shape, kernel_size, stride, padding):
    """Spread each output gradient evenly (1/(KH*KW)) over its window; drop what fell on padding."""
    N, C, H, W = x_shape
    dys = np.ascontiguousarray(dy).reshape(N * C, dy.shape[2], dy.shape[3])
    dx = np.empty((N * C, H, W), dtype=dy.dtype)
    n_tasks, span = _plane_tasks(N * C)

    def task(t, worker):
        _avg_pool_backward_planes(dys, dx, *span(t), *kernel_size, *stride, *padding)
    parallel_for(task, n_tasks)
    return dx.reshape(x_shape)


# ---- batch norm ----------------------------------------------------------------------------------

@_jit_sum
def _bn_train_channels(x, weight, bias, eps, y, mean, var, c0, c1):
    """Per channel of x (N, C, HW): batch mean and biased variance, then y = normalised x.

    One channel of a batch (e.g. 128 x 32 x 32 floats = 512 KB) stays in cache between the
    statistics pass and the normalising pass, so x comes from memory once.
    """
    N, HW = x.shape[0], x.shape[2]
    M = N * HW
    for c in range(c0, c1):
        pilot = np.float64(x[0, c, 0])   # shifting by a sample keeps the one-pass variance exact
        s = 0.0
        ss = 0.0
        for n in range(N):
            row = x[n, c]
            for i in range(HW):
                v = row[i] - pilot
                s += v
                ss += v * v
        m = s / M
        mean[c] = pilot + m
        var[c] = max(ss / M - m * m, 0.0)
        scale = weight[c] / math.sqrt(var[c] + eps)
        shift = bias[c] - mean[c] * scale
        _affine_rows(x, y, c, scale, shift)


@_jit
def _affine_rows(x, y, c, a, b):
    """y[:, c] = x[:, c] * a + b, in x's dtype."""
    a, b = x.dtype.type(a), x.dtype.type(b)
    for n in range(x.shape[0]):
        src, dst = x[n, c], y[n, c]
        for i in range(src.size):
            dst[i] = src[i] * a + b


@_jit
def _bn_affine_channels(x, scale, shift, y, c0, c1):
    """y (N, C, HW) <- x * scale[c] + shift[c] for channels c0..c1."""
    for c in range(c0, c1):
        _affine_rows(x, y, c, scale[c], shift[c])


@_jit_sum
def _bn_backward_channels(dy, x, weight, mean, invstd, training, dx, dweight, dbias, c0, c1):
    """Fused batch-norm backward per channel: two sums, then dx = a*dy + b*x + d in one pass."""
    N, HW = x.shape[0], x.shape[2]
    M = N * HW
    for c in range(c0, c1):
        mu, r = mean[c], invstd[c]
        s_dy = 0.0
        s_dyx = 0.0
        for n in range(N):
            g_row, x_row = dy[n, c], x[n, c]
            for i in range(HW):
                s_dy += g_row[i]
                s_dyx += g_row[i] * (x_row[i] - mu)
        dbias[c] = s_dy
        dweight[c] = s_dyx * r
        k = weight[c] * r
        if training:
            # dx = k * (dy - s_dy/M - xhat * dweight/M),  xhat = (x - mu) * r
            a = k
            b = -k * r * dweight[c] / M
            d = -k * s_dy / M - b * mu
        else:
            a, b, d = k, 0.0, 0.0
        a32, b32, d32 = x.dtype.type(a), x.dtype.type(b), x.dtype.type(d)
        for n in range(N):
            g_row, x_row, out = dy[n, c], x[n, c], dx[n, c]
            for i in range(HW):
                out[i] = a32 * g_row[i] + b32 * x_row[i] + d32


def batch_norm_train(x, weight, bias, eps):
    """Normalise each channel with its batch statistics.

    x (N, C, H, W), weight (C,), bias (C,) -> (y like x, mean (C,), var (C,)), where var is the
    biased variance (divided by N*H*W) used to normalise. Statistics are accumulated in float64.
    """
    x = np.ascontiguousarray(x)
    N, C = x.shape[:2]
    xs = x.reshape(N, C, -1)
    y = np.empty_like(xs)
    mean, var = np.empty(C), np.empty(C)
    w, b = weight.astype(np.float64), bias.astype(np.float64)
    n_tasks, span = _plane_tasks(C)

    def task(t, worker):
        _bn_train_channels(xs, w, b, eps, y, mean, var, *span(t))
    parallel_for(task, n_tasks)
    return y.reshape(x.shape), mean.astype(x.dtype), var.astype(x.dtype)


def batch_norm_eval(x, weight, bias, mean, var, eps):
    """y = (x - mean) / sqrt(var + eps) * weight + bias with given per-channel mean, var (C,)."""
    x = np.ascontiguousarray(x)
    N, C = x.shape[:2]
    invstd = 1.0 / np.sqrt(var.astype(np.float64) + eps)
    scale = weight * invstd
    shift = (bias - mean * scale).astype(x.dtype)
    scale = scale.astype(x.dtype)
    xs = x.reshape(N, C, -1)
    y = np.empty_like(xs)
    n_tasks, span = _plane_tasks(C)

    def task(t, worker):
        _bn_affine_channels(xs, scale, shift, y, *span(t))
    parallel_for(task, n_tasks)
    return y.reshape(x.shape)


def batch_norm_backward(dy, x, weight, mean, var, eps, training):
    """Gradients of batch norm: dy like x -> (dx like x, dweight (C,), dbias (C,)).

    training: mean and var are the batch statistics (they depend on x); eval: constants.
    """
    x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    N, C = x.shape[:2]
    xs, dys = x.reshape(N, C, -1), dy.reshape(N, C, -1)
    dx = np.empty_like(xs)
    dweight, dbias = np.empty(C), np.empty(C)
    invstd = 1.0 / np.sqrt(var.astype(np.float64) + eps)
    w, mu = weight.astype(np.float64), mean.astype(np.float64)
    n_tasks, span = _plane_tasks(C)

    def task(t, worker):
        _bn_backward_channels(dys, xs, w, mu, invstd, bool(training), dx, dweight, dbias,
                              *span(t))
    parallel_for(task, n_tasks)
    return dx.reshape(x.shape), dweight.astype(x.dtype), dbias.astype(x.dtype)


# ---- GELU ----------------------------------------------------------------------------------------
# float32 (training) takes a vectorised path: erfc and exp from float32 arithmetic, 16 lanes of
# AVX-512 at a time; max relative error of y 4.3e-7 on [-12, 12] against math.erfc (under 4
# ulp, the negative tail included). Other dtypes (float64: the gradient checks) take libm's erfc
# and exp, exact but one element at a time (libm has no vector erf: 8x slower, measured).
# error_model="numpy": a division by zero gives inf instead of raising, so Numba adds no check
# (a branch) to each division, and the loop vectorises; "contract" lets a * b + c be one fused
# multiply-add. Measured, one core, float32: 1.2 ns per element forward, 1.6 backward.
_SIMD = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
_jit_simd = njit(**_SIMD)
_inline_simd = njit(inline="always", **_SIMD)
MIN_SPAN = 1 << 15               # elements per task at least (a thread hand-off costs ~10 us)
_f32 = np.float32
LOG2E, LN2_HI, LN2_LO = _f32(1.0 / math.log(2.0)), _f32(0.693359375), _f32(-2.12194440e-4)
ROUNDER = _f32(12582912.0)       # 1.5 * 2^23: x + ROUNDER - ROUNDER is x rounded to an integer
EXP_MIN = _f32(-103.9)           # exp(-103.9) = 7e-46, half of float32's smallest number


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 `bits` (LLVM's bitcast: one lane op, no call)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _fma32(typingctx, a, b, c):
    """a * b + c with one rounding (LLVM's fma): fma(v, v, -v*v) is the exact error of v*v."""
    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    return types.float32(types.float32, types.float32, types.float32), codegen


@_inline_simd
def _exp32(hi, lo):
    """exp(hi + lo) in float32 for hi + lo <= 0, where lo is a small correction to hi.

    exp(a) = 2^k exp(r) with k = round(a / ln 2) and |r| <= ln(2) / 2: r = a - k ln 2 in two
    parts (Cody & Waite: k * LN2_HI is exact, so hi - k * LN2_HI loses nothing), exp(r) a
    degree-7 Taylor series (error 5e-9), 2^k built from exponent bits as 2^k1 * 2^(k - k1),
    k1 = k // 2, so that results below float32's normal range (k < -126) come out as
    subnormal numbers, not as garbage bits. 0 below EXP_MIN.
    """
    a = hi + lo
    k = (max(a, EXP_MIN) * LOG2E + ROUNDER) - ROUNDER
    r = (_fma32(-k, LN2_HI, hi) - k * LN2_LO) + lo
    p = _f32(1) + r * (_f32(1) + r * (_f32(1 / 2) + r * (_f32(1 / 6) + r * (_f32(1 / 24) + r * (
        _f32(1 / 120) + r * (_f32(1 / 720) + r * _f32(1 / 5040)))))))
    k1 = np.int32(k) >> np.int32(1)
    k2 = np.int32(k) - k1
    e = p * _float32_from_bits((k1 + np.int32(127)) << np.int32(23)) \
        * _float32_from_bits((k2 + np.int32(127)) << np.int32(23))
    return e if a > EXP_MIN else _f32(0)


@_inline_simd
def _erf_cdf32(v):
    """(Phi(v), Phi'(v)) of the standard normal for a float32 v: Phi(v) = erfc(-v / sqrt 2) / 2.

    erfc(z) for z >= 0 is Numerical Recipes' Chebyshev fit (erfcc, fractional error < 1.2e-7):
    t = 1 / (1 + z/2), erfc(z) = t exp(-z^2 + P(t)). Taken at |v|, so the tail Phi(-|v|) keeps
    its relative accuracy (1 + erf would cancel), and Phi(|v|) = 1 - Phi(-|v|). The exponent
    -z^2 = -v^2 / 2 goes to _exp32 in two parts, its float32 rounding and the exact error of
    that rounding: rounded once, exp(-v^2 / 2) would be off by v^2 * 6e-8 (1e-5 at v = 12).
    """
    sq = v * v
    half_sq, half_err = _f32(-0.5) * sq, _f32(-0.5) * _fma32(v, v, -sq)    # -v^2/2 in two parts
    z = abs(v) * _f32(SQRT_HALF)
    t = _f32(1) / (_f32(1) + _f32(0.5) * z)
    p = _f32(-1.26551223) + t * (_f32(1.00002368) + t * (_f32(0.37409196) + t * (
        _f32(0.09678418) + t * (_f32(-0.18628806) + t * (_f32(0.27886807) + t * (
            _f32(-1.13520398) + t * (_f32(1.48851587) + t * (_f32(-0.82215223)
                                                             + t * _f32(0.17087277)))))))))
    tail = _f32(0.5) * t * _exp32(half_sq, half_err + p)
    cdf = tail if v < 0 else _f32(1) - tail
    return cdf, _exp32(half_sq, half_err) * _f32(INV_SQRT_2PI)


@_inline_simd
def _tanh_cdf32(v):
    """(0.5 (1 + tanh u), its derivative) for a float32 v, u = sqrt(2/pi) (v + 0.044715 v^3).

    0.5 (1 + tanh u) is the sigmoid of 2u: with e = exp(-2|u|) and s = 1 / (1 + e) it is s for
    u >= 0 and e*s below, and its derivative is e s^2 * 2u' in both cases. -2|u| is formed in
    float64 and passed to _exp32 as a float32 and the rest (as in _erf_cdf32).
    """
    v64 = np.float64(v)
    a = -2.0 * abs(SQRT_2_OVER_PI * (v64 + TANH_CUBIC * v64 * v64 * v64))
    hi = _f32(a)
    e = _exp32(hi, _f32(a - np.float64(hi)))
    s = _f32(1) / (_f32(1) + e)
    cdf = s if v >= 0 else e * s
    du = _f32(SQRT_2_OVER_PI) * (_f32(1) + _f32(3 * TANH_CUBIC) * v * v)
    return cdf, _f32(2) * e * s * s * du


@_inline
def _cdf_exact(v, tanh):
    """(Phi(v), Phi'(v)) from libm, exact: erfc(-v / sqrt 2) / 2, or the tanh approximation."""
    if tanh:                                  # as a sigmoid of 2u (see _tanh_cdf32)
        u = SQRT_2_OVER_PI * (v + TANH_CUBIC * v * v * v)
        e = math.exp(-2.0 * abs(u))
        s = 1.0 / (1.0 + e)
        return (s if u >= 0 else e * s), \
            2.0 * e * s * s * SQRT_2_OVER_PI * (1.0 + 3.0 * TANH_CUBIC * v * v)
    return 0.5 * math.erfc(-v * SQRT_HALF), math.exp(-0.5 * v * v) * INV_SQRT_2PI


@_jit_simd
def _gelu_forward_fast(x, y, tanh):
    """y = x * Phi(x) on flat float32 arrays (a task's span: slices indexed from 0, see _copy);
    one loop per formula, so that each one vectorises."""
    if tanh:
        for i in range(x.size):
            y[i] = x[i] * _tanh_cdf32(x[i])[0]
    else:
        for i in range(x.size):
            y[i] = x[i] * _erf_cdf32(x[i])[0]


@_jit_simd
def _gelu_backward_fast(dy, x, dx, tanh):
    """dx = dy * (Phi(x) + x Phi'(x)) on flat float32 arrays."""
    if tanh:
        for i in range(x.size):
            cdf, pdf = _tanh_cdf32(x[i])
            dx[i] = dy[i] * (cdf + x[i] * pdf)
    else:
        for i in range(x.size):
            cdf, pdf = _erf_cdf32(x[i])
            dx[i] = dy[i] * (cdf + x[i] * pdf)


@_jit
def _gelu_forward_exact(x, y, tanh):
    """The same with libm (and no fused multiply-adds): as exact as the reference."""
    for i in range(x.size):
        v = np.float64(x[i])
        y[i] = v * _cdf_exact(v, tanh)[0]


@_jit
def _gelu_backward_exact(dy, x, dx, tanh):
    for i in range(x.size):
        v = np.float64(x[i])
        cdf, pdf = _cdf_exact(v, tanh)
        dx[i] = dy[i] * (cdf + v * pdf)


def _span_tasks(n):
    """Split n elements into a few spans per thread, each at least MIN_SPAN long."""
    per = max(MIN_SPAN, math.ceil(n / (4 * num_threads())))
    return max(1, math.ceil(n / per)), lambda t: (t * per, min(n, (t + 1) * per))


def gelu_forward(x, approximate):
    """x (any shape) -> x * Phi(x) like x; approximate: "none" (erf) or "tanh"."""
    if x.dtype not in (np.float32, np.float64):         # float16: Numba has no such type
        return gelu_forward(x.astype(np.float64), approximate).astype(x.dtype)
    x = np.ascontiguousarray(x)
    flat = x.reshape(-1)
    y = np.empty_like(flat)
    kernel = _gelu_forward_fast if x.dtype == np.float32 else _gelu_forward_exact
    n_tasks, span = _span_tasks(flat.size)

    def task(t, worker):
        lo, hi = span(t)
        kernel(flat[lo:hi], y[lo:hi], approximate == "tanh")
    parallel_for(task, n_tasks)
    return y.reshape(x.shape)


def gelu_backward(dy, x, approximate):
    """dy, x like each other -> dx = dy * (Phi(x) + x * Phi'(x))."""
    if x.dtype not in (np.float32, np.float64):
        return gelu_backward(dy.astype(np.float64), x.astype(np.float64),
                             approximate).astype(x.dtype)
    x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy, dtype=x.dtype)
    flat, dflat = x.reshape(-1), dy.reshape(-1)
    dx = np.empty_like(flat)
    kernel = _gelu_backward_fast if x.dtype == np.float32 else _gelu_backward_exact
    n_tasks, span = _span_tasks(flat.size)

    def task(t, worker):
        lo, hi = span(t)
        kernel(dflat[lo:hi], flat[lo:hi], dx[lo:hi], approximate == "tanh")
    parallel_for(task, n_tasks)
    return dx.reshape(x.shape)
