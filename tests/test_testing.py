"""tinyconv.testing catches wrong gradients, says where, and is not fooled by a sum() upstream."""
import re

import numpy as np
import pytest

from tinyconv import Function, Tensor
from tinyconv.testing import (GradientCheckError, check_grads, check_grads_directional,
                              numerical_grad)


# Deliberately broken ops (module level: the registry refuses a second class of the same name).
class _TestingSquareWrongAtOneElement(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.x = x
        return x * x

    @staticmethod
    def backward(ctx, dy):
        dx = 2 * ctx.x * dy
        dx[1, 2] *= 2                                     # the bug: one element twice too big
        return dx


class _TestingReverseForgetsToReverse(Function):
    @staticmethod
    def forward(ctx, x):
        return x[::-1].copy()

    @staticmethod
    def backward(ctx, dy):
        return dy                                         # the bug: should be dy[::-1]


class _TestingMulWrongSecondInput(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.a, ctx.b = a, b
        return a * b

    @staticmethod
    def backward(ctx, dy):
        return dy * ctx.b, dy * ctx.b                     # the bug: db should be dy * a


def _numbers(message, *names):
    return [float(re.search(rf"{name} ([-+0-9.e]+)", message).group(1)) for name in names]


def test_check_grads_passes_a_correct_composite(rng):
    x, w = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    check_grads(lambda x, w: (x @ w).tanh() * 2.0, x, w)


def test_check_grads_reports_input_worst_index_and_both_values(rng):
    x = rng.standard_normal((2, 3))
    with pytest.raises(GradientCheckError) as info:
        check_grads(_TestingSquareWrongAtOneElement.apply, x)
    message = str(info.value)
    assert "input 0 (shape (2, 3))" in message and "at index (1, 2)" in message
    assert "1 of 6 elements out of tolerance" in message
    # check_grads draws its upstream gradient from default_rng(seed=0)
    upstream = np.random.default_rng(0).standard_normal((2, 3))
    analytic, numeric, value = _numbers(message, "analytic", "numeric", "input value")
    true_grad = 2 * x[1, 2] * upstream[1, 2]
    np.testing.assert_allclose([analytic, numeric, value], [2 * true_grad, true_grad, x[1, 2]],
                               rtol=1e-5)


def test_random_upstream_catches_a_bug_that_a_sum_would_hide(rng):
    x = rng.standard_normal(5)
    with pytest.raises(GradientCheckError, match=r"input 0 \(shape \(5,\)\)"):
        check_grads(_TestingReverseForgetsToReverse.apply, x)
    # with an all-ones upstream (what `.sum().backward()` sends) the bug is invisible
    ones = np.ones(5)
    t = Tensor(x, requires_grad=True)
    _TestingReverseForgetsToReverse.apply(t).backward(ones)
    np.testing.assert_allclose(t.grad, numerical_grad(_TestingReverseForgetsToReverse.apply,
                                                      [x.copy()], ones, 0), rtol=1e-8)


def test_check_grads_names_the_input_that_is_wrong_and_wrt_limits_the_check(rng):
    a, b = rng.standard_normal(4), rng.standard_normal(4)
    with pytest.raises(GradientCheckError, match=r"^input 1 "):
        check_grads(_TestingMulWrongSecondInput.apply, a, b)
    check_grads(_TestingMulWrongSecondInput.apply, a, b, wrt=[0])


def test_directional_check_passes_correct_and_catches_wrong_gradients(rng):
    x, w = rng.standard_normal((20, 30)), rng.standard_normal((30, 10))
    check_grads_directional(lambda x, w: (x @ w).sigmoid(), x, w)
    with pytest.raises(GradientCheckError, match=r"directional derivative: backward\(\) gives .* "
                                                 r"finite differences give .*\[\(50,\)\]"):
        check_grads_directional(_TestingReverseForgetsToReverse.apply, rng.standard_normal(50))


def test_numerical_grad_matches_the_derivative_of_a_cubic(rng):
    x, upstream = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    grad = numerical_grad(lambda t: t ** 3, [x], upstream, 0)
    np.testing.assert_allclose(grad, 3 * x ** 2 * upstream, rtol=1e-7, atol=1e-9)


def test_inputs_that_do_not_affect_the_output_get_zero_gradients(rng):
    check_grads(lambda a, b: a * 2.0, rng.standard_normal(3), rng.standard_normal(2))


def test_check_grads_refuses_float32_and_leaves_inputs_untouched(rng):
    with pytest.raises(TypeError, match=r"input 1 has dtype float32.*float64"):
        check_grads(lambda a, b: a * b, np.ones(2), np.ones(2, dtype=np.float32))
    x = rng.standard_normal(4)
    before = x.copy()
    check_grads(lambda t: t.exp(), x)
    np.testing.assert_array_equal(x, before)
