"""The autograd engine: accumulation, graph order, no_grad/detach, dtypes, freeing, and errors."""
import numpy as np
import pytest

import tinyconv as tc
from gradcases import GRAD_CASES
from tinyconv import Function, Tensor
from tinyconv.autograd import unbroadcast
from tinyconv.nn import functional as F
from tinyconv.ops import shape as shape_ops


# Test-only Functions, defined once at module level (the registry refuses a second class of the
# same name) and ignored by the coverage test because their module is not in tinyconv.
class _AutogradTestWrongShape(Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, dy):
        return dy[:-1]                                    # deliberately one row short


class _AutogradTestTooManyGrads(Function):
    @staticmethod
    def forward(ctx, x):
        return x.copy()

    @staticmethod
    def backward(ctx, dy):
        return dy, dy                                     # two gradients for one input


class _AutogradTestCountedIdentity(Function):
    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.copy()

    @staticmethod
    def backward(ctx, dy):
        _AutogradTestCountedIdentity.calls += 1
        return dy


# ---- gradients flow and add up ----------------------------------------------------------------

def test_tensor_used_twice_accumulates_a_plus_a_times_a_gives_12():
    a = Tensor(3.0, requires_grad=True)
    ((a + a) * a).sum().backward()
    assert a.grad == 12.0                  # d/da (2 a^2) = 4 a


def test_diamond_graph_sums_both_paths():
    x = Tensor(np.array([0.5, -1.0, 2.0]), requires_grad=True)
    b, c = x * 2.0, x.exp()
    (b * c).backward(np.ones(3))
    xv = x.data
    np.testing.assert_allclose(x.grad, 2 * np.exp(xv) + 2 * xv * np.exp(xv), rtol=1e-12)


def test_stacked_diamonds_run_each_node_backward_once_with_the_full_gradient():
    # each layer splits y into two halves and joins them: the value (and gradient) stays y, so a
    # node visited before all its consumers had reported would show up as a wrong gradient
    _AutogradTestCountedIdentity.calls = 0
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x
    for _ in range(30):
        y = _AutogradTestCountedIdentity.apply(y)
        y = y * 0.25 + y * 0.75
    y.backward(np.array([1.0, 3.0]))
    np.testing.assert_allclose(x.grad, [1.0, 3.0], rtol=1e-12)
    assert _AutogradTestCountedIdentity.calls == 30


def test_leaf_gradients_accumulate_across_backward_calls_until_zeroed():
    w = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (w * 3.0).sum().backward()
    (w * w).sum().backward()
    np.testing.assert_array_equal(w.grad, [3 + 2, 3 + 4])
    w.zero_grad()
    assert w.grad is None


def test_leaf_gradient_is_a_private_copy_of_the_upstream_array():
    x = Tensor(np.zeros(3), requires_grad=True)
    upstream = np.ones(3)
    (x + 0.0).backward(upstream)
    upstream[:] = 7.0
    np.testing.assert_array_equal(x.grad, [1, 1, 1])


def test_only_leaves_keep_grad_and_the_graph_is_freed_after_backward():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x * 2.0
    y = (h * h).sum()
    node = h._ctx
    y.backward()
    assert h.grad is None and x.grad is not None
    assert node.freed and node.inputs == () and not hasattr(node, "a")   # saved arrays dropped


def test_1000_layer_chain_does_not_hit_the_recursion_limit():
    x = Tensor(np.array([0.5, -0.25]), requires_grad=True)
    y = x
    for _ in range(5000):                    # five times the default recursion limit
        y = y * 1.0 + 0.0
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0, 1.0])


# ---- what requires grad ---------------------------------------------------------------------

def test_requires_grad_propagates_only_from_inputs_that_require_it():
    a = Tensor(np.ones(2), requires_grad=True)
    c = Tensor(np.ones(2))
    assert not (c * 2.0).requires_grad and (c * 2.0)._ctx is None
    y = a * c + c
    assert y.requires_grad and not y.is_leaf
    y.sum().backward()
    assert c.grad is None
    np.testing.assert_array_equal(a.grad, [1, 1])


def test_no_grad_builds_no_graph_and_restores_the_mode_even_after_an_error():
    a = Tensor(np.ones(2), requires_grad=True)
    with tc.no_grad():
        assert not tc.is_grad_enabled()
        y = a * 2.0
        with tc.enable_grad():
            z = a * 2.0
    assert not y.requires_grad and y._ctx is None
    assert z.requires_grad
    with pytest.raises(ZeroDivisionError):
        with tc.no_grad():
            1 / 0
    assert tc.is_grad_enabled()
    assert (a * 2.0).requires_grad


def test_detach_shares_data_and_stops_the_gradient():
    x = Tensor(np.array([2.0, 3.0]), requires_grad=True)
    d = x.detach()
    assert not d.requires_grad and d.data is x.data
    (d * x).sum().backward()                      # d is a constant: d(d x)/dx = d
    np.testing.assert_array_equal(x.grad, [2.0, 3.0])


def test_backward_with_retain_graph_can_run_twice_and_accumulates():
    x = Tensor(np.array([1.0, -2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(x.grad, 2 * 2 * x.data)


def test_second_backward_through_a_freed_graph_raises_a_clear_error():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match=r"Sum a second time.*retain_graph=True"):
        y.backward()


# ---- dtypes -------------------------------------------------------------------------------------

_CORE_CASES = [pytest.param(name, case, id=f"{name}-{i}")
               for name, cases in GRAD_CASES.items() for i, case in enumerate(cases)]


@pytest.mark.parametrize("name, case", _CORE_CASES)
def test_float32_stays_float32_forward_and_backward(name, case):
    tensors = [Tensor(np.asarray(a, dtype=np.float32), requires_grad=True) for a in case.inputs]
    out = case.fn(*tensors)
    assert out.dtype == np.float32
    # ask every node of the graph directly, so an upcast cannot hide behind the leaf's cast
    stack, seen = [out], set()
    while stack:
        t = stack.pop()
        if t._ctx is None or id(t) in seen:
            continue
        seen.add(id(t))
        grads = t._ctx.backward(t._ctx, np.ones(t.shape, dtype=np.float32))
        for g in grads if isinstance(grads, tuple) else (grads,):
            assert g is None or g.dtype == np.float32, f"{type(t._ctx).__name__}: {g.dtype}"
        stack.extend(t._ctx.inputs)
    out.backward(np.ones(out.shape, dtype=np.float32))
    assert all(t.grad.dtype == np.float32 for t in tensors)


def test_python_numbers_and_lists_do_not_upcast_float32():
    x = Tensor([1.0, 2.0])
    assert x.dtype == np.float32
    assert (x * 2.5 + 1).dtype == np.float32
    assert (1.0 / x - 3).dtype == np.float32
    assert (x ** 2).dtype == np.float32 and x.clip(0.5, 1.5).dtype == np.float32
    assert Tensor(np.arange(3.0)).dtype == np.float64            # arrays keep their dtype


def test_integer_tensors_compute_forward_without_a_graph():
    labels = Tensor(np.array([[3, 1, 3], [0, 2, 2]]))
    assert labels.max().item() == 3 and labels.min(axis=1).data.tolist() == [1, 0]
    assert labels.sum(axis=0).data.tolist() == [3, 3, 5]
    np.testing.assert_allclose(Tensor(np.array([0, 2])).sigmoid().data, [0.5, 1 / (1 + np.exp(-2))])


def test_a_0d_tensor_reduces_over_dim_0_or_minus_1_like_torch():
    x = Tensor(np.array(3.0), requires_grad=True)
    assert x.sum(axis=0).shape == () and x.max(axis=-1).item() == 3.0
    x.mean(axis=0).backward()
    assert x.grad == 1.0


# ---- broadcasting -----------------------------------------------------------------------------

def _grads(op, a, b, upstream):
    ta, tb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    op(ta, tb).backward(upstream)
    return ta.grad, tb.grad


def test_broadcasting_in_every_binary_elementwise_op(rng):
    a, b = rng.standard_normal((2, 1, 3)), rng.uniform(0.5, 2.0, (4, 1))
    g = rng.standard_normal((2, 4, 3))
    expected = {          # (da, db) before undoing broadcasting, both shaped like g
        "add": (lambda x, y: x + y, g, g),
        "sub": (lambda x, y: x - y, g, -g),
        "mul": (lambda x, y: x * y, g * b, g * a),
        "div": (lambda x, y: x / y, g / b, -g * a / b ** 2),
    }
    for name, (op, da, db) in expected.items():
        ga, gb = _grads(op, a, b, g)
        assert ga.shape == a.shape and gb.shape == b.shape, name
        np.testing.assert_allclose(ga, da.sum(axis=1, keepdims=True), rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(gb, db.sum(axis=(0, 2))[:, None], rtol=1e-12, err_msg=name)


def test_broadcasting_in_batched_matmul(rng):
    a, b = rng.standard_normal((2, 1, 3, 4)), rng.standard_normal((5, 4, 2))
    g = rng.standard_normal((2, 5, 3, 2))
    ga, gb = _grads(lambda x, y: x @ y, a, b, g)
    np.testing.assert_allclose(ga, (g @ b.swapaxes(-1, -2)).sum(axis=1, keepdims=True),
                               rtol=1e-12)
    np.testing.assert_allclose(gb, (a.swapaxes(-1, -2) @ g).sum(axis=0), rtol=1e-12)


def test_reflected_ops_with_arrays_and_numbers_return_tensors():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = np.array([3.0, 4.0]) * x + 1.0 - (2.0 / x)
    assert isinstance(y, Tensor)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [3 + 2 / 1, 4 + 2 / 4], rtol=1e-12)


@pytest.mark.parametrize("grad, shape, expected", [
    (np.ones((2, 3, 4)), (3, 4), np.full((3, 4), 2.0)),
    (np.ones((2, 3, 4)), (3, 1), np.full((3, 1), 8.0)),
    (np.ones((2, 3, 4)), (), np.array(24.0)),
    (np.ones((2, 3)), (2, 3), np.ones((2, 3))),
    (np.ones((5, 1, 3)), (1, 1), np.full((1, 1), 15.0)),
])
def test_unbroadcast_sums_over_the_broadcast_axes(grad, shape, expected):
    np.testing.assert_array_equal(unbroadcast(grad, shape), expected)


# ---- errors that teach ----------------------------------------------------------------------

def test_backward_of_the_wrong_shape_names_the_op_and_both_shapes():
    x = Tensor(np.ones((3, 2)), requires_grad=True)
    y = _AutogradTestWrongShape.apply(x)
    with pytest.raises(RuntimeError, match=r"_AutogradTestWrongShape\.backward .*shape \(2, 2\)"
                                           r".*input 0 of shape \(3, 2\)"):
        y.sum().backward()


def test_backward_returning_too_many_gradients_is_an_error():
    x = Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"_AutogradTestTooManyGrads.*2 gradients for 1"):
        _AutogradTestTooManyGrads.apply(x).sum().backward()


@pytest.mark.parametrize("op, pattern", [
    (lambda a, b: a + b, r"add: shapes \(2, 3\) and \(4,\) cannot be broadcast"),
    (lambda a, b: a - b, r"sub: shapes \(2, 3\) and \(4,\)"),
    (lambda a, b: a * b, r"mul: shapes \(2, 3\) and \(4,\)"),
    (lambda a, b: a / b, r"div: shapes \(2, 3\) and \(4,\)"),
    (lambda a, b: a @ b, r"matmul: inner dimensions differ: \(2, 3\) @ \(4,\)"),
    (lambda a, b: shape_ops.concat([a, b]), r"concat: shapes \[\(2, 3\), \(4,\)\]"),
    (lambda a, b: shape_ops.stack([a, b]), r"stack: all inputs need the same shape"),
    (lambda a, b: F.mse_loss(a, b), r"mse_loss: input \(2, 3\) and target \(4,\)"),
    (lambda a, b: F.linear(a, b.reshape(2, 2)), r"linear: input has 3 features but weight "
                                                r"\(2, 2\) expects 2"),
    (lambda a, b: F.linear(a.reshape(1, 2, 3), b), r"linear: expected x \(\*, in_features\) .* "
                                                   r"got \(1, 2, 3\) and \(4,\)"),
    (lambda a, b: F.linear(a.reshape(1, 2, 3), b.reshape(2, 2)), r"linear: input has 3 features"),
    (lambda a, b: a.reshape(4, 2), r"reshape: cannot reshape \(2, 3\) \(6 elements\) into "
                                   r"\(4, 2\)"),
])
def test_mismatched_shapes_raise_errors_naming_the_op_and_shapes(op, pattern):
    a, b = Tensor(np.ones((2, 3)), requires_grad=True), Tensor(np.ones(4))
    with pytest.raises(ValueError, match=pattern):
        op(a, b)


def test_batched_matmul_with_incompatible_batches_names_both_shapes():
    with pytest.raises(ValueError, match=r"matmul: batch dimensions of \(2, 3, 4\) and "
                                         r"\(3, 4, 5\)"):
        Tensor(np.ones((2, 3, 4))) @ Tensor(np.ones((3, 4, 5)))


def test_integer_tensor_cannot_require_grad():
    with pytest.raises(TypeError, match=r"only floating-point .* dtype int64 with shape \(3,\)"):
        Tensor(np.arange(3), requires_grad=True)


def test_non_scalar_backward_without_gradient_names_the_shape():
    y = Tensor(np.ones((2, 3)), requires_grad=True) * 2.0
    with pytest.raises(RuntimeError, match=r"backward\(\): .*one-element.*shape \(2, 3\)"):
        y.backward()


def test_backward_with_a_gradient_of_the_wrong_shape_names_both_shapes():
    y = Tensor(np.ones((2, 3)), requires_grad=True) * 2.0
    with pytest.raises(ValueError, match=r"grad has shape \(3, 2\), tensor has \(2, 3\)"):
        y.backward(np.ones((3, 2)))


def test_backward_of_a_tensor_that_needs_no_grad_is_an_error():
    with pytest.raises(RuntimeError, match=r"does not require grad"):
        (Tensor(np.ones(2)) * 2.0).sum().backward()


@pytest.mark.parametrize("target, pattern", [
    (np.array([0.0, 1.0]), r"cross_entropy: expected integer class targets of shape \(2,\), "
                           r"got float64 \(2,\)"),
    (np.array([0, 1, 2]), r"cross_entropy: expected integer class targets of shape \(2,\)"),
    (np.array([0, 3]), r"cross_entropy: targets must lie in \[0, 3\), got values from 0 to 3"),
])
def test_cross_entropy_rejects_bad_targets(target, pattern):
    with pytest.raises(ValueError, match=pattern):
        F.cross_entropy(Tensor(np.zeros((2, 3)), requires_grad=True), target)


def test_bad_axes_raise_instead_of_wrapping_around():
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"concat: axis 2 is out of range"):
        shape_ops.concat([x, x], axis=2)
    with pytest.raises(ValueError, match=r"stack: axis 3 is out of range"):
        shape_ops.stack([x, x], axis=3)
    with pytest.raises(ValueError, match=r"reduction: axis 2 is out of range for a 2-d input"):
        x.sum(axis=2)
    with pytest.raises(ValueError, match=r"transpose: axes \(0, 2\) out of range"):
        x.transpose(0, 2)


@pytest.mark.parametrize("op, error, pattern", [
    (lambda x: x ** x, TypeError, r"pow: the exponent must be a scalar, got Tensor"),
    (lambda x: x.clip(), ValueError, r"clip: give min, max or both"),
    (lambda x: F.mse_loss(x, x, reduction="avg"), ValueError, r"mse_loss: reduction must be"),
    (lambda x: F.cross_entropy(x, [0, 1], label_smoothing=1.5), ValueError,
     r"cross_entropy: label_smoothing must be in \[0, 1\], got 1.5"),
    (lambda x: x.pad(-1), ValueError, r"pad: negative padding .* for shape \(2, 3\)"),
    (lambda x: x[5], IndexError, r"getitem: index 5 is out of bounds .*shape \(2, 3\)"),
    (lambda x: x.permute(0, 0), ValueError, r"transpose: axes \(0, 0\) are not a permutation"),
])
def test_bad_arguments_raise_errors_naming_the_op(op, error, pattern):
    with pytest.raises(error, match=pattern):
        op(Tensor(np.ones((2, 3)), requires_grad=True))


def test_leaky_relu_refuses_integers_instead_of_rounding_the_slope_to_zero():
    with pytest.raises(TypeError, match=r"leaky_relu: expected a floating-point input, got int64 "
                                        r"of shape \(3,\)"):
        F.leaky_relu(Tensor(np.array([-2, 0, 3])), 0.1)
