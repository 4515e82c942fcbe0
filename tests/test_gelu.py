"""GELU: gradient checks (float64), torch in float32 and float64, the NumPy reference against the
Numba kernels (float32's fast formula and float64's exact one), special values, bad input."""
import math

import numpy as np
import pytest

import tinyconv as tc
from gradcases import GradCase, randn
from tinyconv import kernels, nn
from tinyconv.kernels import numba_kernels, reference
from tinyconv.nn import functional as F

try:
    import torch
except ImportError:                                 # the suite also runs without torch
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

GRAD_CASES = {
    "GELU": [GradCase(lambda a: a.gelu(), (randn(3, 4) * 2,)),
             GradCase(lambda a: F.gelu(a, approximate="tanh"), (randn(3, 4) * 2,)),
             GradCase(lambda a: nn.GELU()(a), (np.array([-6.0, -2.5, -0.1, 0.0, 0.3, 4.0]),)),
             GradCase(lambda a: a.gelu().gelu(), (randn(2, 5),))],
}


def _exact(x):
    """x * Phi(x) in float64 from math.erfc (no cancellation in the negative tail)."""
    return np.array([v * 0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x.reshape(-1)],
                    dtype=np.float64).reshape(x.shape)


@needs_torch
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_matches_torch_forward_and_backward(approximate, dtype, rng):
    x = (rng.standard_normal((4, 3, 5, 7)) * 3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    ours = tc.Tensor(x, requires_grad=True)
    theirs = torch.tensor(x, requires_grad=True)
    y, yt = F.gelu(ours, approximate), torch.nn.functional.gelu(theirs, approximate=approximate)
    y.backward(dy)
    yt.backward(torch.from_numpy(dy))
    assert y.dtype == dtype and ours.grad.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(y.data, yt.detach().numpy(), **tol)
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), **tol)


@needs_torch
def test_gelu_module_matches_torch_module(rng):
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    for ours, theirs in [(nn.GELU(), torch.nn.GELU()),
                         (nn.GELU("tanh"), torch.nn.GELU(approximate="tanh"))]:
        np.testing.assert_allclose(ours(tc.Tensor(x)).data,
                                   theirs(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
    assert repr(nn.GELU("tanh")) == "GELU(approximate='tanh')"
    assert list(nn.GELU().parameters()) == []


PARITY_SHAPES = [(7,), (3, 5), (2, 3, 9, 11), (1 << 16) + 3]       # the last: several tasks


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", PARITY_SHAPES)
def test_gelu_kernels_match_reference(shape, dtype, approximate, rng):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y_ref, dx_ref = (reference.gelu_forward(x, approximate),
                     reference.gelu_backward(dy, x, approximate))
    y, dx = numba_kernels.gelu_forward(x, approximate), numba_kernels.gelu_backward(dy, x,
                                                                                   approximate)
    assert y.dtype == dx.dtype == dtype and y.shape == dx.shape == x.shape
    # float32 runs the vectorised formula: within 4 ulp; results below 1.2e-38 are subnormal
    # numbers, whose steps are 1.4e-45, and within 16 of those. float64 runs libm's erfc, as
    # the reference does.
    tiny = np.finfo(np.float32).smallest_subnormal
    rtol, atol = (4 * np.finfo(np.float32).eps, 16 * tiny) if dtype == np.float32 \
        else (1e-14, 1e-300)
    np.testing.assert_allclose(y, y_ref, rtol=rtol, atol=atol)
    # dx = dy (Phi + x Phi') cancels near x = -0.75 (GELU's minimum), so its error is bounded
    # relative to the terms (|dy| times Phi and |x Phi'|, both below 1), not to the result
    assert np.all(np.abs(dx - dx_ref) <= rtol * (np.abs(dx_ref) + np.abs(dy)))


def test_gelu_kernels_take_non_contiguous_input(rng):
    x = rng.standard_normal((6, 8)).astype(np.float32)[:, ::2]
    dy = rng.standard_normal((4, 6)).astype(np.float32).T                    # transposed
    for ops in (reference, numba_kernels):
        np.testing.assert_allclose(ops.gelu_forward(x, "none"),
                                   ops.gelu_forward(x.copy(), "none"), rtol=1e-7)
        np.testing.assert_allclose(ops.gelu_backward(dy, x, "none"),
                                   ops.gelu_backward(dy.copy(), x.copy(), "none"), rtol=1e-7)


def test_gelu_float32_is_accurate_to_4_ulp_across_the_range():
    """The fast float32 path against x * erfc(-x/sqrt 2)/2 at the same (float32) inputs: relative
    error within 4 ulp everywhere on [-12, 12], the negative tail included (where 1 + erf(x)
    would cancel: torch's float32 GELU loses every digit there)."""
    x = np.linspace(-12, 12, 40001).astype(np.float32)
    exact = _exact(x.astype(np.float64))
    got = F.gelu(tc.Tensor(x)).data.astype(np.float64)
    big = np.abs(exact) > 1e-37                                      # normal float32 results
    rel = np.abs(got[big] - exact[big]) / np.abs(exact[big])
    assert rel.max() < 4 * np.finfo(np.float32).eps


def test_gelu_special_values():
    """inf -> inf (torch 2.x's float32 erf form gives nan there), -inf and nan -> nan, huge
    negative inputs -> -0, and the gradient at 0 is 1/2."""
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e30, -1e30, -200.0], dtype=np.float32)
    for dtype in (np.float32, np.float64):
        y = F.gelu(tc.Tensor(x.astype(dtype))).data
        assert y[0] == np.inf and np.isnan(y[2]) and y[3] == 0 and y[5] == np.float32(1e30)
        assert abs(y[6]) == 0 and abs(y[7]) < 1e-30
        t = tc.Tensor(x.astype(dtype), requires_grad=True)
        F.gelu(t).backward(np.ones(len(x), dtype=dtype))
        np.testing.assert_allclose(t.grad[[3, 4, 5, 6, 7]], [0.5, 0.5, 1.0, 0.0, 0.0],
                                   rtol=np.finfo(dtype).eps, atol=0)   # float32: one ulp


def test_gelu_float16_keeps_its_dtype_in_both_backends():
    x = np.linspace(-3, 3, 7).astype(np.float16)
    expected = _exact(x.astype(np.float64))
    for name in ("numba", "numpy"):
        with kernels.use_backend(name):
            t = tc.Tensor(x, requires_grad=True)
            y = F.gelu(t)
            y.backward(np.ones(7, dtype=np.float16))
        assert y.dtype == t.grad.dtype == np.float16
        np.testing.assert_allclose(y.data, expected, rtol=1e-3, atol=1e-4)   # float16: 3 digits


def test_gelu_refuses_bad_input():
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh', got 'erf'"):
        F.gelu(tc.Tensor(np.ones(3, dtype=np.float32)), approximate="erf")
    with pytest.raises(ValueError, match="GELU: approximate"):
        nn.GELU("fast")
    with pytest.raises(TypeError, match=r"gelu: expected a floating-point input, got int64"):
        F.gelu(tc.Tensor(np.arange(3)))


def test_gelu_uses_the_selected_backend(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    with kernels.use_backend("numpy"):
        slow = F.gelu(tc.Tensor(x)).data
    np.testing.assert_allclose(F.gelu(tc.Tensor(x)).data, slow, rtol=4e-7)
