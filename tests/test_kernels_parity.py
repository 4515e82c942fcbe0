"""The NumPy reference kernels and their Numba twins agree, on one table of cases.

Data movement (im2col, col2im, max pooling) must agree exactly in float64; arithmetic whose
summation order differs (the GEMMs, means, batch-norm sums, Winograd's transforms) to rounding.
Every case runs through each code path of the Numba convolution: the default choice, im2col +
GEMM on one-row tiles and on several-image tiles, the direct loops, and Winograd (where it
applies: 3x3, stride 1) on one-tile-row blocks and on several-image chunks, so a slip in any
tiling shows up.
"""
import numpy as np
import pytest

from tinyconv import kernels
from tinyconv.kernels import numba_kernels as nb
from tinyconv.kernels import reference as ref

# N, C, H, W, C_out, KH, KW, stride, padding, dilation, groups
CONV_CASES = [
    (1, 1, 5, 7, 2, 2, 3, (1, 1), (0, 0), (1, 1), 1),
    (3, 3, 6, 9, 4, 3, 2, (2, 2), (1, 1), (1, 1), 1),
    (3, 3, 7, 5, 2, 3, 3, (1, 2), (2, 2), (2, 2), 1),
    (1, 3, 8, 6, 5, 1, 3, (2, 1), (0, 1), (1, 2), 1),
    (3, 1, 9, 4, 3, 4, 2, (1, 1), (2, 0), (2, 1), 1),
    (3, 4, 9, 7, 6, 3, 3, (1, 1), (1, 1), (1, 1), 2),        # groups=2
    (2, 6, 7, 8, 6, 3, 3, (2, 2), (1, 1), (1, 1), 6),        # depthwise
    (2, 4, 6, 6, 8, 3, 3, (1, 1), (1, 1), (1, 1), 4),        # depthwise, 2 filters per channel
    (2, 16, 9, 7, 8, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (3, 16, 12, 10, 8, 3, 2, (2, 2), (2, 1), (2, 1), 1),
    (2, 12, 8, 11, 6, 5, 3, (1, 1), (2, 1), (1, 1), 3),      # "same" padding, groups=3
    (2, 10, 6, 7, 4, 3, 3, (1, 1), (2, 2), (2, 2), 1),       # "same" with dilation 2
    (2, 8, 7, 6, 5, 3, 3, (1, 1), (0, 0), (1, 1), 1),        # Winograd: no padding, odd OH
    (1, 9, 5, 8, 4, 3, 3, (1, 1), (2, 2), (1, 1), 1),        # Winograd: padding 2
    (3, 8, 3, 3, 6, 3, 3, (1, 1), (1, 2), (1, 1), 1),        # Winograd: tiny, uneven padding
]
DTYPES = [np.float64, np.float32]
PATHS = ["default", "gemm-rows", "gemm-images", "direct", "winograd-rows", "winograd-images"]


def _tol(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-5)


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Force one code path of the Numba convolution."""
    if request.param != "default":
        monkeypatch.setattr(nb, "WINOGRAD", request.param.startswith("winograd"))
    if request.param.startswith("winograd"):
        monkeypatch.setattr(nb, "DIRECT_MAX_TAPS", 0)
        monkeypatch.setattr(nb, "WINOGRAD_MIN_CHANNELS", 1)
    if request.param == "winograd-rows":      # one tile row (two output rows) per block
        monkeypatch.setattr(nb, "TRANSFORM_BYTES", 1)
    elif request.param == "winograd-images":  # several whole images per chunk, one thread
        monkeypatch.setattr(nb, "TRANSFORM_BYTES", 1 << 30)
        monkeypatch.setenv("TINYCONV_NUM_THREADS", "1")
    elif request.param == "gemm-rows":        # one output row per tile
        monkeypatch.setattr(nb, "DIRECT_MAX_TAPS", 0)
        monkeypatch.setattr(nb, "COLS_BYTES_FORWARD", 1)
        monkeypatch.setattr(nb, "COLS_BYTES_BACKWARD", 1)
    elif request.param == "gemm-images":      # several whole images per tile, one thread
        monkeypatch.setattr(nb, "DIRECT_MAX_TAPS", 0)
        monkeypatch.setattr(nb, "COLS_BYTES_FORWARD", 1 << 30)
        monkeypatch.setattr(nb, "COLS_BYTES_BACKWARD", 1 << 30)
        monkeypatch.setenv("TINYCONV_NUM_THREADS", "1")
    elif request.param == "direct":
        monkeypatch.setattr(nb, "DIRECT_MAX_TAPS", 1 << 30)
    return request.param


def _conv_inputs(case, dtype, rng, contiguous=True):
    N, C, H, W, C_out, KH, KW, stride, padding, dilation, groups = case
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    if not contiguous:                        # same values, strided memory
        x = np.swapaxes(np.ascontiguousarray(np.swapaxes(x, 2, 3)), 2, 3)
        assert not x.flags.c_contiguous
    w = rng.standard_normal((C_out, C // groups, KH, KW)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype)
    return x, w, b, (stride, padding, dilation, groups)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_forward_and_backward_match_reference(case, dtype, path, rng):
    x, w, b, geometry = _conv_inputs(case, dtype, rng)
    for bias in (None, b):
        y_ref = ref.conv2d_forward(x, w, bias, *geometry)
        y_nb = nb.conv2d_forward(x, w, bias, *geometry)
        assert y_nb.dtype == dtype and y_nb.shape == y_ref.shape
        np.testing.assert_allclose(y_nb, y_ref, **_tol(dtype))
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    dx_ref, dw_ref = ref.conv2d_backward(dy, x, w, *geometry)
    dx_nb, dw_nb = nb.conv2d_backward(dy, x, w, *geometry)
    assert dx_nb.dtype == dtype and dw_nb.dtype == dtype
    np.testing.assert_allclose(dx_nb, dx_ref, **_tol(dtype))
    np.testing.assert_allclose(dw_nb, dw_ref, **_tol(dtype))
    # a gradient nobody needs is not computed
    assert nb.conv2d_backward(dy, x, w, *geometry, need_dx=False)[0] is None
    dx_only, dw_none = nb.conv2d_backward(dy, x, w, *geometry, need_dw=False)
    assert dw_none is None
    np.testing.assert_allclose(dx_only, dx_ref, **_tol(dtype))


@pytest.mark.parametrize("case", CONV_CASES[1:4] + CONV_CASES[8:10], ids=str)
def test_conv2d_non_contiguous_input_matches_reference(case, path, rng):
    x, w, b, geometry = _conv_inputs(case, np.float64, rng, contiguous=False)
    np.testing.assert_allclose(nb.conv2d_forward(x, w, b, *geometry),
                               ref.conv2d_forward(np.ascontiguousarray(x), w, b, *geometry),
                               rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(ref.conv2d_forward(x, w, b, *geometry).shape)
    for got, want in zip(nb.conv2d_backward(dy, x, w, *geometry),
                         ref.conv2d_backward(dy, x, w, *geometry)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_im2col_and_col2im_match_reference_exactly(case, dtype, rng):
    x, w, _, (stride, padding, dilation, _) = _conv_inputs(case, dtype, rng, contiguous=False)
    k = w.shape[2:]
    cols = nb.im2col(x, k, stride, padding, dilation)
    np.testing.assert_array_equal(cols, ref.im2col(x, k, stride, padding, dilation))
    dcols = rng.standard_normal(cols.shape).astype(dtype)
    kept = dcols.copy()
    np.testing.assert_array_equal(nb.col2im(dcols, x.shape, k, stride, padding, dilation),
                                  ref.col2im(dcols, x.shape, k, stride, padding, dilation))
    np.testing.assert_array_equal(dcols, kept)               # the caller's columns are untouched


def test_im2col_layout_is_channel_then_kernel_row_then_column():
    # one 1x3x4 image, 2x2 kernel, no padding: column p is output pixel p, row (c, kh, kw)
    x = np.arange(12, dtype=np.float64).reshape(1, 1, 3, 4)
    cols = nb.im2col(x, (2, 2), (1, 1), (0, 0), (1, 1))
    assert cols.shape == (1, 4, 6)
    np.testing.assert_array_equal(cols[0, :, 0], [0, 1, 4, 5])     # window at (0, 0)
    np.testing.assert_array_equal(cols[0, 0], [0, 1, 2, 4, 5, 6])  # tap (0, 0) over the outputs


# kernel, stride, padding (pairs)
POOL_CASES = [((2, 2), (2, 2), (0, 0)), ((3, 2), (2, 1), (1, 1)), ((3, 3), (1, 1), (1, 1)),
              ((2, 3), (1, 2), (1, 0)), ((4, 4), (4, 4), (0, 0)), ((3, 3), (2, 2), (1, 1))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 8, 8), (3, 3, 7, 9)], ids=str)
def test_pooling_matches_reference(shape, case, dtype, rng):
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(dtype)   # no ties
    x = np.swapaxes(np.ascontiguousarray(np.swapaxes(x, 2, 3)), 2, 3)   # non-contiguous
    y_ref, arg_ref = ref.max_pool2d_forward(x, *case)
    y_nb, arg_nb = nb.max_pool2d_forward(x, *case)
    np.testing.assert_array_equal(y_nb, y_ref)
    np.testing.assert_array_equal(arg_nb, arg_ref)
    assert y_nb.dtype == dtype and arg_nb.dtype == np.int32
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    np.testing.assert_array_equal(nb.max_pool2d_backward(dy, arg_nb, x.shape),
                                  ref.max_pool2d_backward(dy, arg_ref, x.shape))
    np.testing.assert_allclose(nb.avg_pool2d_forward(x, *case), ref.avg_pool2d_forward(x, *case),
                               **_tol(dtype))
    np.testing.assert_allclose(nb.avg_pool2d_backward(dy, x.shape, *case),
                               ref.avg_pool2d_backward(dy, x.shape, *case), **_tol(dtype))


def test_max_pool_ties_pick_the_first_maximum_in_both():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = x[0, 0, 0, 1] = 1.0
    for impl in (ref, nb):
        _, arg = impl.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0))
        assert arg[0, 0, 0, 0] == 1                       # (0, 1) comes before (1, 1)
        assert arg[0, 0, 1, 1] == 2 * 4 + 2               # all zeros: the window's first pixel


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 4, 5, 7), (1, 3, 2, 2), (6, 2, 1, 1), (5, 3, 1, 4)],
                         ids=str)
def test_batch_norm_matches_reference(shape, dtype, rng):
    x = (rng.standard_normal(shape) * 3 + 5).astype(dtype)          # |mean| > std
    C = shape[1]
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    got, want = nb.batch_norm_train(x, w, b, 1e-5), ref.batch_norm_train(x, w, b, 1e-5)
    for g, r in zip(got, want):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, r, **_tol(dtype))
    mean, var = want[1], want[2]
    np.testing.assert_allclose(nb.batch_norm_eval(x, w, b, mean, var, 1e-5),
                               ref.batch_norm_eval(x, w, b, mean, var, 1e-5), **_tol(dtype))
    dy = rng.standard_normal(shape).astype(dtype)
    for training in (True, False):
        got = nb.batch_norm_backward(dy, x, w, mean, var, 1e-5, training)
        want = ref.batch_norm_backward(dy, x, w, mean, var, 1e-5, training)
        for g, r in zip(got, want):
            assert g.dtype == dtype
            np.testing.assert_allclose(g, r, rtol=_tol(dtype)["rtol"] * 10,
                                       atol=_tol(dtype)["atol"] * 10)


def test_batch_norm_variance_is_exact_for_a_large_offset():
    # one-pass variance without the shift would lose every digit here
    x = (1e4 + np.arange(8.0)).reshape(2, 1, 2, 2).astype(np.float32)
    _, mean, var = nb.batch_norm_train(x, np.ones(1, np.float32), np.zeros(1, np.float32), 0.0)
    assert mean[0] == pytest.approx(10003.5)
    assert var[0] == pytest.approx(5.25, rel=1e-6)


def test_backend_selection_and_context_manager():
    start = kernels.backend_name()
    with kernels.use_backend("numpy") as impl:
        assert impl is ref and kernels.backend() is ref and kernels.backend_name() == "numpy"
        with kernels.use_backend("numba"):
            assert kernels.backend() is nb
        assert kernels.backend() is ref
    assert kernels.backend_name() == start
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        kernels.set_backend("cuda")
    assert kernels.backend_name() == start


def test_both_backends_export_the_same_functions():
    import inspect
    assert ref.__all__ == nb.__all__
    for name in ref.__all__:
        assert inspect.signature(getattr(ref, name)) == inspect.signature(getattr(nb, name)), name


# ---- the thread pool the Numba kernels run on ----------------------------------------------------

def test_parallel_for_runs_every_task_once_and_reraises_errors():
    from tinyconv._threads import parallel_for
    seen = []
    parallel_for(lambda i, worker: seen.append(i), 50)
    assert sorted(seen) == list(range(50))

    def task(i, worker):
        if i == 7:
            raise KeyError("task 7")
    with pytest.raises(KeyError, match="task 7"):
        parallel_for(task, 20)


def test_single_threaded_blas_restores_the_previous_setting():
    from tinyconv import _threads
    with _threads.single_threaded_blas():
        pass
    if not _threads._blas:
        pytest.skip("no OpenBLAS found in this process")
    setter, getter = _threads._blas
    before = getter()
    with _threads.single_threaded_blas():
        assert getter() == 1
        with _threads.single_threaded_blas():
            assert getter() == 1
        assert getter() == 1
    assert getter() == before


def test_convolutions_from_two_threads_at_once_do_not_share_scratch(rng):
    # two callers use the pool at the same time: scratch memory is per thread, not per worker
    import threading
    cases = [_conv_inputs(CONV_CASES[i], np.float32, rng) for i in (8, 9)]
    expected = [nb.conv2d_backward(np.ones_like(nb.conv2d_forward(x, w, b, *g)), x, w, *g)
                for x, w, b, g in cases]
    results, errors = [None, None], []

    def run(k):
        x, w, b, g = cases[k]
        try:
            for _ in range(20):
                y = nb.conv2d_forward(x, w, b, *g)
                results[k] = nb.conv2d_backward(np.ones_like(y), x, w, *g)
        except Exception as error:       # noqa: BLE001  reported below
            errors.append(error)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, expected):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("case", [(20, 3, 9, 8, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1),      # direct
                                  (20, 16, 9, 8, 8, 3, 3, (2, 2), (1, 1), (1, 1), 1),     # im2col
                                  (20, 16, 9, 8, 8, 3, 3, (1, 1), (1, 1), (1, 1), 1)],    # Winograd
                         ids=["direct", "im2col", "winograd"])
def test_gradients_are_bit_identical_on_one_or_two_threads(case, monkeypatch, rng):
    # the weight gradient sums over the batch in fixed groups, not per thread
    x, w, _, geometry = _conv_inputs(case, np.float32, rng)
    dy = rng.standard_normal(nb.conv2d_forward(x, w, None, *geometry).shape).astype(np.float32)
    results = []
    for threads in ("1", "2"):
        monkeypatch.setenv("TINYCONV_NUM_THREADS", threads)
        results.append(nb.conv2d_backward(dy, x, w, *geometry))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_winograd_float32_is_as_accurate_as_im2col(monkeypatch, rng):
    # Winograd's transforms add and halve; in float32 its error must stay at im2col's level
    x = rng.standard_normal((2, 64, 12, 12))
    w = rng.standard_normal((32, 64, 3, 3)) / np.sqrt(9 * 64)
    geometry = ((1, 1), (1, 1), (1, 1), 1)
    y_exact = ref.conv2d_forward(x, w, None, *geometry)
    dy = rng.standard_normal(y_exact.shape)
    exact = (y_exact, *ref.conv2d_backward(dy, x, w, *geometry))
    x32, w32, dy32 = (a.astype(np.float32) for a in (x, w, dy))
    monkeypatch.setattr(nb, "WINOGRAD", True)
    got = (nb.conv2d_forward(x32, w32, None, *geometry), *nb.conv2d_backward(dy32, x32, w32,
                                                                               *geometry))
    for g, e in zip(got, exact):
        assert np.abs(g - e).max() <= 2e-6 * np.abs(e).max()
