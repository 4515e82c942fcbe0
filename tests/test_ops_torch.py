"""Every core op against PyTorch in float64: same inputs, same random upstream gradient, forward
and every input's gradient within a tight tolerance.  Skipped when torch is not installed.

Inputs include the awkward points where conventions differ between frameworks: ties for max/min,
repeated indices, exact zeros for relu/abs/pow, values on clip bounds, logits of 1e4.
"""
import numpy as np
import pytest

from tinyconv import Function, Tensor
from tinyconv.nn import functional as F
from tinyconv.ops import shape as shape_ops

torch = pytest.importorskip("torch")
TF = torch.nn.functional

RTOL, ATOL = 1e-10, 1e-12
_CORE_MODULES = {f"tinyconv.ops.{m}" for m in ("elementwise", "reduce", "shape", "matmul", "loss")}

_rng = np.random.default_rng(7)


def randn(*shape):
    return _rng.standard_normal(shape)


def both(fn, *inputs):
    """A case whose expression reads the same in tinyconv and torch."""
    return fn, fn, inputs


def pair(ours, theirs, *inputs):
    """A case that needs a different spelling in each framework."""
    return ours, theirs, inputs


_ties = np.array([[1.0, 3.0, 3.0, 2.0], [5.0, 5.0, 5.0, 0.0], [-1.0, -4.0, -1.0, -4.0]])
_with_zeros = np.array([[-1.5, 0.0, 0.7], [2.0, -0.3, 0.0]])
_on_bounds = np.array([-2.0, -1.0, -0.2, 0.0, 1.0, 3.0])
_targets = np.array([2, 0, 3, 3, 1])
_huge = np.array([[1e4, 0.0, -1e4, 3.0], [1e4, 1e4, 1e4 - 1.0, -1e4], [0.1, 0.2, 0.3, 0.4],
                  [-1e4, -1e4, 2.0, 1e4], [5.0, -5.0, 0.0, 1e4]])
_idx = np.array([0, 2, 0, 0])


def _ce_cases():
    out = []
    for reduction in ("mean", "sum", "none"):
        for eps in (0.0, 0.1, 1.0):
            out.append(pair(lambda a, r=reduction, e=eps: F.cross_entropy(a, _targets, r, e),
                            lambda a, r=reduction, e=eps: TF.cross_entropy(
                                a, torch.from_numpy(_targets), reduction=r, label_smoothing=e),
                            randn(5, 4)))
    out.append(pair(lambda a: F.cross_entropy(a, _targets, label_smoothing=0.2),
                    lambda a: TF.cross_entropy(a, torch.from_numpy(_targets), label_smoothing=0.2),
                    _huge))
    return out


TORCH_CASES = {
    "Add": [both(lambda a, b: a + b, randn(2, 1, 3), randn(4, 1)),
            both(lambda a: 2.5 + a, randn(3))],
    "Sub": [both(lambda a, b: a - b, randn(3), randn(2, 3)),
            both(lambda a: 1.0 - a, randn(3))],
    "Mul": [both(lambda a, b: a * b, randn(2, 1, 3), randn(4, 1))],
    "Div": [both(lambda a, b: a / b, randn(2, 1, 3), randn(4, 1) + 3.0),
            both(lambda a: 2.0 / a, randn(3) + 3.0)],
    "Neg": [both(lambda a: -a, randn(2, 3))],
    "Pow": [both(lambda a: a ** 3, _with_zeros), both(lambda a: a ** 0, _with_zeros),
            both(lambda a: a ** 0.5, np.abs(randn(2, 3)) + 0.1),
            both(lambda a: a ** -2, randn(4) + 3.0)],
    "Exp": [both(lambda a: a.exp(), randn(2, 3))],
    "Log": [both(lambda a: a.log(), np.abs(randn(2, 3)) + 0.1)],
    "Sqrt": [both(lambda a: a.sqrt(), np.abs(randn(2, 3)) + 0.1)],
    "Abs": [both(lambda a: a.abs(), _with_zeros)],
    "ReLU": [both(lambda a: a.relu(), _with_zeros)],
    "LeakyReLU": [pair(lambda a: F.leaky_relu(a, 0.2), lambda a: TF.leaky_relu(a, 0.2),
                       _with_zeros)],
    "GELU": [pair(lambda a: a.gelu(), TF.gelu, randn(3, 4) * 3),
             pair(lambda a: F.gelu(a, "tanh"), lambda a: TF.gelu(a, approximate="tanh"),
                  randn(3, 4) * 3),
             pair(F.gelu, TF.gelu, np.array([-40.0, -9.0, -0.5, 0.0, 0.5, 9.0, 40.0]))],
    "Sigmoid": [both(lambda a: a.sigmoid(), np.array([-800.0, -30.0, -1.0, 0.0, 2.0, 40.0]))],
    "Tanh": [both(lambda a: a.tanh(), randn(2, 3) * 2)],
    "Clip": [both(lambda a: a.clip(-1.0, 1.0), _on_bounds),
             both(lambda a: a.clip(min=0.0), _on_bounds),
             both(lambda a: a.clip(max=-0.2), _on_bounds)],
    "Sum": [both(lambda a: a.sum(), randn(2, 3)), both(lambda a: a.sum(-1), randn(2, 3, 4)),
            pair(lambda a: a.sum(axis=(0, 2), keepdims=True),
                 lambda a: a.sum(dim=(0, 2), keepdim=True), randn(2, 3, 4))],
    "Mean": [both(lambda a: a.mean(), randn(2, 3)),
             pair(lambda a: a.mean(axis=1, keepdims=True), lambda a: a.mean(dim=1, keepdim=True),
                  randn(2, 3, 4))],
    "Max": [pair(lambda a: a.max(axis=1), lambda a: a.amax(dim=1), _ties),
            pair(lambda a: a.max(), lambda a: a.amax(), _ties),
            pair(lambda a: a.max(axis=0, keepdims=True), lambda a: a.amax(dim=0, keepdim=True),
                 _ties)],
    "Min": [pair(lambda a: a.min(axis=-1), lambda a: a.amin(dim=-1), _ties),
            pair(lambda a: a.min(axis=(0, 1)), lambda a: a.amin(dim=(0, 1)), _ties)],
    "Var": [both(lambda a: a.var(), randn(3, 4)),
            both(lambda a: a.var(1, correction=0), randn(3, 4)),
            pair(lambda a: a.var(axis=(0, 2), keepdims=True, correction=2),
                 lambda a: a.var(dim=(0, 2), keepdim=True, correction=2), randn(2, 3, 4))],
    "Reshape": [both(lambda a: a.reshape(4, -1), randn(2, 3, 2)),
                both(lambda a: a.flatten(1), randn(2, 3, 2, 2)),
                both(lambda a: a.flatten(0, 1), randn(2, 3, 2)),
                both(lambda a: a.flatten(), randn(2, 3))],
    "Transpose": [both(lambda a: a.T, randn(2, 3)),
                  both(lambda a: a.transpose(0, 1), randn(2, 3)),
                  both(lambda a: a.transpose(-1, 0), randn(2, 3, 4)),
                  both(lambda a: a.permute(2, 0, 1), randn(2, 3, 4))],
    "GetItem": [both(lambda a: a[1:, ::2], randn(3, 5)),
                both(lambda a: a[_idx], randn(3, 2)),
                both(lambda a: a[np.array([1, 1, 0]), np.array([2, 2, -1])], randn(2, 3)),
                both(lambda a: a[np.array([True, False, True])], randn(3, 2)),
                both(lambda a: a[None, ..., 1], randn(2, 3)),
                both(lambda a: a[-1], randn(3, 2))],
    "Pad": [pair(lambda a: a.pad(((0, 0), (1, 0), (2, 3)), value=0.5),
                 lambda a: TF.pad(a, (2, 3, 1, 0), value=0.5), randn(2, 3, 4))],
    "Concat": [pair(lambda *xs: shape_ops.concat(xs, axis=1), lambda *xs: torch.cat(xs, dim=1),
                    randn(2, 1, 3), randn(2, 3, 3), randn(2, 2, 3)),
               pair(lambda *xs: shape_ops.concat(xs, axis=-1), lambda *xs: torch.cat(xs, dim=-1),
                    randn(2, 3), randn(2, 1))],
    "Stack": [pair(lambda *xs: shape_ops.stack(xs), lambda *xs: torch.stack(xs),
                   randn(2, 3), randn(2, 3), randn(2, 3)),
              pair(lambda *xs: shape_ops.stack(xs, axis=-1), lambda *xs: torch.stack(xs, dim=-1),
                   randn(2, 3), randn(2, 3))],
    "MatMul": [both(lambda a, b: a @ b, randn(3, 4), randn(4, 2)),
               both(lambda a, b: a @ b, randn(2, 1, 3, 4), randn(5, 4, 2)),
               both(lambda a, b: a @ b, randn(4), randn(4, 2)),
               both(lambda a, b: a @ b, randn(3, 4), randn(4)),
               both(lambda a, b: a @ b, randn(4), randn(4)),
               both(lambda a, b: a @ b, randn(4), randn(2, 4, 3)),
               both(lambda a, b: a @ b, randn(2, 3, 4), randn(4))],
    "Linear": [pair(F.linear, TF.linear, randn(5, 3), randn(4, 3), randn(4)),
               pair(F.linear, TF.linear, randn(2, 3), randn(4, 3)),
               pair(F.linear, TF.linear, randn(2, 3, 5), randn(4, 5), randn(4)),
               pair(F.linear, TF.linear, randn(3), randn(2, 3))],
    "Softmax": [pair(lambda a: F.softmax(a, dim=0), lambda a: TF.softmax(a, dim=0), randn(3, 4)),
                both(lambda a: a.softmax(-1), _huge)],
    "LogSoftmax": [pair(lambda a: F.log_softmax(a, 1), lambda a: TF.log_softmax(a, 1), _huge),
                   pair(lambda a: F.log_softmax(a, 0), lambda a: TF.log_softmax(a, 0),
                        randn(3, 4))],
    "CrossEntropy": _ce_cases(),
    "NLLLoss": [pair(lambda a, r=r: F.nll_loss(a, _targets, reduction=r),
                     lambda a, r=r: TF.nll_loss(a, torch.from_numpy(_targets), reduction=r),
                     randn(5, 4)) for r in ("mean", "sum", "none")],
    "MSELoss": [pair(lambda a, b, r=r: F.mse_loss(a, b, reduction=r),
                     lambda a, b, r=r: TF.mse_loss(a, b, reduction=r), randn(3, 4), randn(3, 4))
                for r in ("mean", "sum", "none")],
}

_CASES = [pytest.param(ours, theirs, inputs, id=f"{name}-{i}")
          for name, cases in TORCH_CASES.items()
          for i, (ours, theirs, inputs) in enumerate(cases)]


@pytest.mark.parametrize("ours, theirs, inputs", _CASES)
def test_forward_and_backward_match_torch_float64(ours, theirs, inputs):
    xs = [Tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in inputs]
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in inputs]
    y, t = ours(*xs), theirs(*ts)
    assert y.dtype == np.float64 and y.shape == tuple(t.shape)
    np.testing.assert_allclose(y.data, t.detach().numpy(), rtol=RTOL, atol=ATOL)
    upstream = np.random.default_rng(1).standard_normal(y.shape)
    y.backward(upstream)
    t.backward(torch.from_numpy(upstream))
    for i, (x, tt) in enumerate(zip(xs, ts)):
        expected = tt.grad.numpy() if tt.grad is not None else np.zeros(x.shape)
        got = x.grad if x.grad is not None else np.zeros(x.shape)
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, err_msg=f"input {i}")


def test_every_core_op_has_a_torch_case():
    core = {name for name, cls in Function.registry.items() if cls.__module__ in _CORE_MODULES}
    assert not core - set(TORCH_CASES), f"core ops without a torch case: {core - set(TORCH_CASES)}"
    assert not set(TORCH_CASES) - core, f"unknown names: {set(TORCH_CASES) - core}"
