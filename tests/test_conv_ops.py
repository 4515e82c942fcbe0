"""Convolution, pooling, batch norm and dropout as ops: gradients, PyTorch agreement, errors.

GRAD_CASES below is a case table (see tests/gradcases.py): test_ops_grad.py checks every case
against float64 finite differences, for every input (conv: input, weight and bias). Here: the
same ops against torch (forward and backward, both kernel backends), batch norm's running
statistics, dropout's mask, the im2col view, and the error messages.
"""
import numpy as np
import pytest

from gradcases import GradCase, distinct, randn
from test_kernels_parity import CONV_CASES, POOL_CASES
from tinyconv import Tensor, kernels
from tinyconv.im2col_view import im2col_view
from tinyconv.ops.conv import conv2d
from tinyconv.ops.norm import batch_norm, dropout
from tinyconv.ops.pool import (adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d,
                               max_pool2d)

try:
    import torch
    import torch.nn.functional as TF
except ImportError:                     # the suite runs without torch; the oracle tests skip
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch (the oracle) is not installed")
BACKENDS = ["numba", "numpy"]

_running = (np.array([0.1, -0.2, 0.3]), np.array([0.5, 1.5, 2.0]))      # eval-mode statistics


GRAD_CASES = {
    "Conv2d": [
        GradCase(lambda x, w, b: conv2d(x, w, b, stride=2, padding=1),
                 (randn(2, 3, 5, 7), randn(4, 3, 3, 2), randn(4))),
        GradCase(lambda x, w, b: conv2d(x, w, b, padding=(2, 1), dilation=(2, 1)),
                 (randn(2, 5, 6, 5), randn(3, 5, 3, 3), randn(3))),           # im2col + GEMM
        GradCase(lambda x, w: conv2d(x, w, stride=(1, 2), padding=1, groups=2),
                 (randn(2, 4, 5, 6), randn(6, 2, 3, 3))),
        GradCase(lambda x, w, b: conv2d(x, w, b, padding=2, dilation=2, groups=3),
                 (randn(1, 3, 5, 6), randn(3, 1, 3, 3), randn(3))),           # depthwise
        GradCase(lambda x, w: conv2d(x, w, stride=2),
                 (randn(3, 1, 6, 5), randn(2, 1, 2, 3))),
        GradCase(lambda x, w, b: conv2d(x, w, b, padding=1),
                 (randn(2, 8, 5, 6), randn(3, 8, 3, 3), randn(3))),           # Winograd
    ],
    "MaxPool2d": [
        GradCase(lambda x: max_pool2d(x, 2), (distinct(2, 2, 5, 6),)),
        GradCase(lambda x: max_pool2d(x, 3, stride=2, padding=1), (distinct(2, 2, 6, 7),)),
        GradCase(lambda x: max_pool2d(x, (3, 2), stride=1), (distinct(1, 2, 5, 4),)),
    ],
    "AvgPool2d": [
        GradCase(lambda x: avg_pool2d(x, 2), (randn(2, 2, 5, 6),)),
        GradCase(lambda x: avg_pool2d(x, (3, 2), stride=(2, 1), padding=1), (randn(2, 2, 6, 5),)),
    ],
    "AdaptiveMaxPool2d": [
        GradCase(lambda x: adaptive_max_pool2d(x, (2, 3)), (distinct(2, 2, 5, 7),)),
        GradCase(lambda x: adaptive_max_pool2d(x, 2), (distinct(1, 3, 4, 6),)),      # even
    ],
    "AdaptiveAvgPool2d": [
        GradCase(lambda x: adaptive_avg_pool2d(x, (3, 2)), (randn(2, 2, 5, 7),)),
        GradCase(lambda x: adaptive_avg_pool2d(x, 1), (randn(2, 3, 4, 4),)),
    ],
    "BatchNorm": [
        GradCase(lambda x, w, b: batch_norm(x, None, None, w, b, training=True),
                 (randn(4, 3, 2, 3), randn(3), randn(3))),
        GradCase(lambda x, w, b: batch_norm(x, *_running, w, b, training=False),
                 (randn(2, 3, 2, 2), randn(3), randn(3))),
        GradCase(lambda x: batch_norm(x, None, None, training=True), (randn(5, 3),)),
        # ghost batches of 2: chunks of 2, 2 and 1 samples, each with its own statistics
        GradCase(lambda x, w, b: batch_norm(x, None, None, w, b, training=True,
                                            ghost_batch_size=2),
                 (randn(5, 3, 2, 2), randn(3), randn(3))),
    ],
    "Dropout": [
        GradCase(lambda x: dropout(x, 0.4, rng=np.random.default_rng(3)), (randn(3, 4, 5),)),
    ],
}


def _t(array, grad=True):
    return torch.tensor(array, requires_grad=grad)


def _backward_both(ours, theirs, dy):
    ours.backward(dy)
    theirs.backward(torch.tensor(dy))


# ---- against torch ----------------------------------------------------------------------------

@needs_torch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_matches_torch_forward_and_backward(case, backend, rng):
    N, C, H, W, C_out, KH, KW, stride, padding, dilation, groups = case
    x, w, b = randn(N, C, H, W), randn(C_out, C // groups, KH, KW), randn(C_out)
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    X, Wt, B = (Tensor(a, requires_grad=True) for a in (x, w, b))
    tx, tw, tb = _t(x), _t(w), _t(b)
    with kernels.use_backend(backend):
        y = conv2d(X, Wt, B, **geometry)
        ty = TF.conv2d(tx, tw, tb, **geometry)
        np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
        _backward_both(y, ty, rng.standard_normal(y.shape))
    for ours, theirs in ((X, tx), (Wt, tw), (B, tb)):
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-10, atol=1e-10)


@needs_torch
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_float32_matches_torch_and_stays_float32(backend, rng):
    x = rng.standard_normal((4, 16, 10, 9)).astype(np.float32)
    w = (rng.standard_normal((8, 16, 3, 3)) * 0.1).astype(np.float32)
    X, Wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    tx, tw = _t(x), _t(w)
    with kernels.use_backend(backend):
        y = conv2d(X, Wt, padding=1)
        ty = TF.conv2d(tx, tw, padding=1)
        assert y.dtype == np.float32
        np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-4, atol=1e-4)
        _backward_both(y, ty, rng.standard_normal(y.shape).astype(np.float32))
    assert X.grad.dtype == np.float32 and Wt.grad.dtype == np.float32
    np.testing.assert_allclose(X.grad, tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(Wt.grad, tw.grad.numpy(), rtol=1e-4, atol=1e-3)


@needs_torch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_pooling_with_padding_matches_torch(case, backend, rng):
    kernel, stride, padding = case
    x = distinct(3, 2, 7, 9)
    for ours_fn, torch_fn in ((max_pool2d, TF.max_pool2d), (avg_pool2d, TF.avg_pool2d)):
        X, tx = Tensor(x, requires_grad=True), _t(x)
        with kernels.use_backend(backend):
            y = ours_fn(X, kernel, stride, padding)
            ty = torch_fn(tx, kernel, stride, padding)
            np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
            _backward_both(y, ty, rng.standard_normal(y.shape))
        np.testing.assert_allclose(X.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-12)


@needs_torch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [(7, 9, 3, 4), (5, 5, 2, 2), (8, 6, 4, 3), (6, 6, 1, 1),
                                  (5, 7, None, 3)], ids=str)
def test_adaptive_pooling_matches_torch(size, backend, rng):
    H, W, OH, OW = size
    x = distinct(2, 3, H, W)
    for ours_fn, torch_fn in ((adaptive_max_pool2d, TF.adaptive_max_pool2d),
                              (adaptive_avg_pool2d, TF.adaptive_avg_pool2d)):
        X, tx = Tensor(x, requires_grad=True), _t(x)
        with kernels.use_backend(backend):
            y = ours_fn(X, (OH, OW))
            ty = torch_fn(tx, (OH, OW))
            np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
            _backward_both(y, ty, rng.standard_normal(y.shape))
        np.testing.assert_allclose(X.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-12)


@needs_torch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (6, 3)], ids=str)
def test_batch_norm_train_then_eval_matches_torch_including_running_stats(shape, backend, rng):
    C = shape[1]
    w, b = randn(C), randn(C)
    ours_stats = [np.zeros(C), np.ones(C)]
    torch_stats = [torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)]
    with kernels.use_backend(backend):
        for step, training in enumerate([True, True, False]):
            x = randn(*shape) * 2 + step
            X, Wt, B = (Tensor(a, requires_grad=True) for a in (x, w, b))
            tx, tw, tb = _t(x), _t(w), _t(b)
            y = batch_norm(X, *ours_stats, Wt, B, training=training, momentum=0.3, eps=1e-4)
            ty = TF.batch_norm(tx, *torch_stats, tw, tb, training=training, momentum=0.3,
                               eps=1e-4)
            np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(ours_stats[0], torch_stats[0].numpy(), rtol=1e-12)
            np.testing.assert_allclose(ours_stats[1], torch_stats[1].numpy(), rtol=1e-12)
            _backward_both(y, ty, rng.standard_normal(y.shape))
            for ours, theirs in ((X, tx), (Wt, tw), (B, tb)):
                np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-9, atol=1e-9)


@needs_torch
@pytest.mark.parametrize("backend", BACKENDS)
def test_ghost_batch_norm_is_torch_batch_norm_per_chunk(backend, rng):
    # 7 samples in ghost batches of 3: torch normalises the chunks 0:3, 3:6, 6:7 separately; the
    # running statistics move towards the chunks' size-weighted average mean and unbiased variance
    x, w, b = randn(7, 2, 3, 2) * 2 + 1, randn(2), randn(2)
    running = [np.zeros(2), np.ones(2)]
    X, Wt, B = (Tensor(a, requires_grad=True) for a in (x, w, b))
    tx, tw, tb = _t(x), _t(w), _t(b)
    with kernels.use_backend(backend):
        y = batch_norm(X, *running, Wt, B, training=True, momentum=0.3, ghost_batch_size=3)
    chunks = [slice(0, 3), slice(3, 6), slice(6, 7)]
    ty = torch.cat([TF.batch_norm(tx[c], None, None, tw, tb, training=True) for c in chunks])
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    g = rng.standard_normal(y.shape)
    _backward_both(y, ty, g)
    for ours, theirs in ((X, tx), (Wt, tw), (B, tb)):
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-9, atol=1e-9)
    sizes = np.array([3, 3, 1]) / 7
    means = np.array([x[c].mean(axis=(0, 2, 3)) for c in chunks])
    variances = np.array([x[c].var(axis=(0, 2, 3), ddof=1) for c in chunks])
    np.testing.assert_allclose(running[0], 0.3 * sizes @ means, rtol=1e-12)
    np.testing.assert_allclose(running[1], 0.7 + 0.3 * sizes @ variances, rtol=1e-12)


def test_ghost_batch_size_of_the_whole_batch_is_plain_batch_norm():
    x, w, b = randn(6, 3, 2, 2), randn(3), randn(3)
    plain_stats, ghost_stats = [np.zeros(3), np.ones(3)], [np.zeros(3), np.ones(3)]
    plain = batch_norm(Tensor(x), *plain_stats, w, b, training=True)
    ghost = batch_norm(Tensor(x), *ghost_stats, w, b, training=True, ghost_batch_size=6)
    np.testing.assert_array_equal(plain.data, ghost.data)
    np.testing.assert_allclose(plain_stats, ghost_stats, rtol=1e-15)
    bigger = batch_norm(Tensor(x), None, None, w, b, training=True, ghost_batch_size=64)
    np.testing.assert_array_equal(plain.data, bigger.data)


# ---- batch norm and dropout conventions ---------------------------------------------------------

def test_batch_norm_running_stats_use_pytorch_momentum_and_unbiased_variance():
    x = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)        # mean 3.5, biased var 5.25
    mean, var = np.zeros(1, np.float32), np.ones(1, np.float32)
    y = batch_norm(Tensor(x), mean, var, training=True, momentum=0.1, eps=0.0)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.data.mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(y.data.var(), 1.0, rtol=1e-5)             # normalised: biased
    np.testing.assert_allclose(mean, [0.35], rtol=1e-6)                   # 0.9*0 + 0.1*3.5
    np.testing.assert_allclose(var, [0.9 + 0.1 * 6.0], rtol=1e-6)        # unbiased: 5.25*8/7
    before = (mean.copy(), var.copy())
    y = batch_norm(Tensor(x), mean, var, training=False, eps=0.0)
    np.testing.assert_allclose(y.data, (x - mean) / np.sqrt(var), rtol=1e-6)
    np.testing.assert_array_equal(mean, before[0])                        # eval: not updated
    np.testing.assert_array_equal(var, before[1])


def test_dropout_mask_comes_from_the_generator_and_keeps_the_expectation():
    x = Tensor(np.ones((200, 100), dtype=np.float32), requires_grad=True)
    a = dropout(x, 0.3, rng=np.random.default_rng(7))
    b = dropout(x, 0.3, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a.data, b.data)
    assert a.dtype == np.float32
    assert set(np.unique(a.data)) <= {0.0, np.float32(1 / 0.7)}
    assert abs((a.data == 0).mean() - 0.3) < 0.01
    assert abs(a.data.mean() - 1.0) < 0.02
    a.backward(np.full(a.shape, 2.0, dtype=np.float32))
    np.testing.assert_array_equal(x.grad, 2.0 * a.data)                  # same mask
    np.testing.assert_array_equal(dropout(x, 0.3, training=False).data, x.data)
    np.testing.assert_array_equal(dropout(x, 1.0, rng=np.random.default_rng(0)).data, 0.0)


# ---- the im2col view ----------------------------------------------------------------------------

@pytest.mark.parametrize("groups", [1, 2])
def test_im2col_view_product_is_the_convolution(groups, rng):
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = rng.standard_normal((6, 4 // groups, 3, 2)).astype(np.float32)
    view = im2col_view(x, w, stride=(2, 1), padding=1, groups=groups)
    assert view.cols.shape == (2, 4 * 3 * 2, 4 * 7)
    assert view.weight_matrix.shape == (6, 4 // groups * 3 * 2)
    assert view.gemm == (6 // groups, 4 // groups * 3 * 2, 28)
    assert view.output_shape == (2, 6, 4, 7)
    expected = conv2d(x, w, stride=(2, 1), padding=1, groups=groups).data
    np.testing.assert_allclose(view.output(), expected, rtol=1e-5, atol=1e-5)
    M, K = 6 // groups, 24 // groups
    assert f"weight ({M}, {K}) @ cols ({K}, 28) -> ({M}, 28)" in str(view)
    assert ("once per image and group (4 products)" in str(view)) == (groups == 2)


def test_im2col_view_reads_the_settings_of_a_layer(rng):
    class Layer:                            # what nn.Conv2d exposes
        weight = Tensor(rng.standard_normal((3, 2, 3, 3)))
        stride, padding, dilation, groups = (1, 1), (2, 2), (2, 2), 1
    x = rng.standard_normal((1, 2, 5, 5))
    view = im2col_view(Tensor(x), Layer())
    np.testing.assert_allclose(view.output(),
                               conv2d(x, Layer.weight, padding=2, dilation=2).data, rtol=1e-12)


# ---- errors that teach --------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda: conv2d(randn(2, 3, 5, 5), randn(4, 2, 3, 3)),
     r"input has 3 channels but weight expects 2"),
    (lambda: conv2d(randn(2, 3, 5, 5), randn(4, 3, 7, 3)),
     r"kernel 7x3 \(dilated extent 7x3\) is larger than the padded input 5x5"),
    (lambda: conv2d(randn(2, 3, 5, 5), randn(4, 3, 3, 3), dilation=3),
     r"dilated extent 7x7"),
    (lambda: conv2d(randn(3, 5, 5), randn(4, 3, 3, 3)), r"expected a 4-D input \(N, C, H, W\)"),
    (lambda: conv2d(randn(2, 6, 5, 5), randn(4, 3, 3, 3), groups=4),
     r"groups=4 must divide both the 6 input channels and the 4 output channels"),
    (lambda: conv2d(randn(2, 3, 5, 5), randn(4, 3, 3, 3), randn(3)),
     r"bias shape \(3,\), expected \(4,\)"),
    (lambda: conv2d(randn(2, 3, 5, 5), randn(4, 3, 3, 3), stride=0), r"stride must be >= 1"),
    (lambda: conv2d(randn(2, 3, 5, 5), randn(4, 3, 3, 3), padding=-1), r"padding must be >= 0"),
    (lambda: conv2d(randn(2, 3, 5, 5), randn(4, 3, 3, 3), stride=2, padding="same"),
     r"padding='same' needs stride 1"),
    (lambda: max_pool2d(randn(2, 3, 5), 2), r"max_pool2d: expected a 4-D input"),
    (lambda: max_pool2d(randn(1, 1, 4, 4), 2, padding=2), r"at most half the kernel"),
    (lambda: avg_pool2d(randn(1, 1, 4, 4), 3, stride=0), r"avg_pool2d: stride must be >= 1"),
    (lambda: avg_pool2d(randn(1, 1, 2, 2), 5, padding=1), r"larger than the padded input 4x4"),
    (lambda: adaptive_avg_pool2d(randn(1, 2, 4), 2), r"adaptive_avg_pool2d: expected a 4-D"),
    (lambda: batch_norm(randn(4, 3, 2, 2), np.zeros(2), np.ones(3)),
     r"running_mean has shape \(2,\), expected \(3,\)"),
    (lambda: batch_norm(randn(4, 3, 2, 2), None, None), r"evaluation .* needs running_mean"),
    (lambda: batch_norm(randn(1, 3, 1, 1), None, None, training=True),
     r"more than one value per channel"),
    (lambda: batch_norm(randn(5, 3), None, None, training=True, ghost_batch_size=2),
     r"more than one value per channel, got input \(5, 3\) \(ghost_batch_size=2\)"),
    (lambda: batch_norm(randn(4, 3), None, None, training=True, ghost_batch_size=0),
     r"ghost_batch_size must be a positive integer"),
    (lambda: dropout(randn(3), 1.5), r"dropout: p must be in \[0, 1\]"),
])
def test_errors_name_the_op_and_the_shapes(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_dtype_mismatch_is_an_error():
    with pytest.raises(TypeError, match="input dtype float32 and weight dtype float64 differ"):
        conv2d(randn(1, 1, 4, 4).astype(np.float32), randn(1, 1, 3, 3))
