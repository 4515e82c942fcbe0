"""Gradient-check cases for the core ops, and the machinery every case table shares.

How gradient-check coverage works (read this before adding an op)
------------------------------------------------------------------
A *case table* is a module-level dict named ``GRAD_CASES`` in a file ``tests/*.py``, mapping a
Function's class name (its key in ``Function.registry``) to a list of ``GradCase``::

    from gradcases import GradCase, randn

    GRAD_CASES = {
        "Conv2d": [GradCase(lambda x, w: F.conv2d(x, w, stride=2), (randn(2, 3, 5, 7),
                                                                   randn(4, 3, 3, 2)))],
    }

``tests/test_ops_grad.py`` finds every ``tests/*.py`` that assigns ``GRAD_CASES`` at the top level
(a text search, so nothing has to be registered by hand), imports it under its plain module name
(as pytest's default import mode does, so it is not imported twice), then

1. runs every case: ``check_grads`` in float64, a random upstream gradient, every element of every
   input (or one random direction when ``directional=True``), and asserts that the Function the
   case is filed under really is in the graph that ``fn`` builds;
2. fails when a Function registered by a module of the ``tinyconv`` package (all its modules are
   imported first) has no case.  Functions defined in tests (module not in ``tinyconv``) are
   ignored, so a test may define a deliberately broken op; define it at module level (a second
   class of the same name is refused by the registry) and give it a name no other test uses.

A contributing file must import without torch (the suite also runs without it): give its torch
tests a ``pytest.mark.skipif`` marker instead of a module-level ``pytest.importorskip("torch")``,
which would skip the import and is therefore reported as an error.

This file holds the table for the core ops (elementwise, reduce, shape, matmul, loss).  A file
that contributes cases need not run them itself; ``test_ops_grad.py`` runs every table.

Inputs are float64 arrays made here at import time from a fixed seed, signed, and kept away from
kinks (ReLU at 0, tied maxima, clip bounds) where finite differences are meaningless.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from tinyconv import Tensor
from tinyconv.nn import functional as F
from tinyconv.ops import shape as shape_ops
from tinyconv.testing import check_grads, check_grads_directional

__all__ = ["GradCase", "randn", "away_from_zero", "positive", "distinct", "run_case",
           "graph_functions", "GRAD_CASES"]

ATOL, RTOL = 1e-7, 1e-6        # float64 central differences are good to ~1e-9 at these sizes

_rng = np.random.default_rng(20240602)


@dataclass(frozen=True)
class GradCase:
    """One gradient check: fn(*Tensors) -> Tensor at the float64 `inputs`.

    Every input is checked unless `wrt` lists the indices to check; non-differentiable arguments
    (class targets, shapes) belong in the closure, not in `inputs`.  `directional=True` checks
    one random direction instead of every element (for big inputs).
    """
    fn: Callable
    inputs: tuple
    wrt: tuple | None = None
    directional: bool = False


def randn(*shape) -> np.ndarray:
    """Standard normal float64 array."""
    return _rng.standard_normal(shape)


def away_from_zero(*shape, low: float = 0.2) -> np.ndarray:
    """Random signs, magnitudes in [low, 1.5): safe for ReLU, abs, division."""
    return _rng.choice([-1.0, 1.0], size=shape) * _rng.uniform(low, 1.5, size=shape)


def positive(*shape, low: float = 0.3) -> np.ndarray:
    """Values in [low, 2): safe for log, sqrt, fractional powers."""
    return _rng.uniform(low, 2.0, size=shape)


def distinct(*shape) -> np.ndarray:
    """Shuffled values at least 0.1 apart: no ties for max/min within finite-difference reach."""
    n = int(np.prod(shape))
    return (_rng.permutation(n) * 0.1 - n * 0.05).reshape(shape)


def graph_functions(out: Tensor) -> set:
    """Names of the Functions in the graph that produced `out` (call before backward frees it)."""
    names, stack, seen = set(), [out], set()
    while stack:
        t = stack.pop()
        if id(t) in seen or t._ctx is None:
            continue
        seen.add(id(t))
        names.add(type(t._ctx).__name__)
        stack.extend(t._ctx.inputs)
    return names


def run_case(name: str, case: GradCase) -> None:
    """Check `case` numerically, after making sure it exercises the Function called `name`."""
    inputs = [np.array(a, dtype=np.float64) for a in case.inputs]
    used = graph_functions(case.fn(*[Tensor(a, requires_grad=True) for a in inputs]))
    assert name in used, f"case filed under {name} builds a graph of {sorted(used)} only"
    if case.directional:
        check_grads_directional(case.fn, *inputs, atol=ATOL, rtol=RTOL)
    else:
        check_grads(case.fn, *inputs, atol=ATOL, rtol=RTOL, wrt=case.wrt)


_targets = np.array([2, 0, 3, 3, 1])                    # class indices for the (5, 4) logits


GRAD_CASES = {
    # ---- elementwise (binary ones with broadcasting both ways) ----
    "Add": [GradCase(lambda a, b: a + b, (randn(3, 4), randn(3, 4))),
            GradCase(lambda a, b: a + b, (randn(2, 1, 3), randn(4, 1))),
            GradCase(lambda a, b: a + b, (randn(), randn(2, 3))),
            GradCase(lambda a: 2.5 + a, (randn(3),))],
    "Sub": [GradCase(lambda a, b: a - b, (randn(2, 1, 3), randn(4, 1))),
            GradCase(lambda a, b: a - b, (randn(3), randn(2, 3))),
            GradCase(lambda a: 1.0 - a, (randn(3),))],
    "Mul": [GradCase(lambda a, b: a * b, (randn(2, 1, 3), randn(4, 1))),
            GradCase(lambda a: a * a, (randn(2, 3),)),
            GradCase(lambda a: 3.0 * a, (randn(3),))],
    "Div": [GradCase(lambda a, b: a / b, (randn(2, 1, 3), away_from_zero(4, 1))),
            GradCase(lambda a, b: a / b, (randn(3), away_from_zero(2, 3))),
            GradCase(lambda a: 2.0 / a, (away_from_zero(3),))],
    "Neg": [GradCase(lambda a: -a, (randn(2, 3),))],
    "Pow": [GradCase(lambda a: a ** 3, (randn(2, 3),)),
            GradCase(lambda a: a ** 2, (randn(4),)),
            GradCase(lambda a: a.pow(0.5), (positive(2, 3),)),
            GradCase(lambda a: a.pow(-1.5), (positive(3),)),
            GradCase(lambda a: a ** 0, (randn(3),))],
    "Exp": [GradCase(lambda a: a.exp(), (randn(2, 3),))],
    "Log": [GradCase(lambda a: a.log(), (positive(2, 3),))],
    "Sqrt": [GradCase(lambda a: a.sqrt(), (positive(2, 3),))],
    "Abs": [GradCase(lambda a: a.abs(), (away_from_zero(2, 3),))],
    "ReLU": [GradCase(lambda a: a.relu(), (away_from_zero(3, 4),)),
             GradCase(lambda a: F.relu(a), (away_from_zero(5),))],
    "LeakyReLU": [GradCase(lambda a: a.leaky_relu(0.2), (away_from_zero(3, 4),)),
                  GradCase(lambda a: F.leaky_relu(a), (away_from_zero(5),))],
    "Sigmoid": [GradCase(lambda a: a.sigmoid(), (randn(3, 4) * 3,)),
                GradCase(lambda a: F.sigmoid(a), (np.array([-30.0, -5.0, 0.0, 5.0, 30.0]),))],
    "Tanh": [GradCase(lambda a: a.tanh(), (randn(3, 4),)),
             GradCase(lambda a: F.tanh(a), (randn(4),))],
    "Clip": [GradCase(lambda a: a.clip(-0.5, 0.5), (np.array([-1.2, -0.3, 0.1, 0.45, 0.9]),)),
             GradCase(lambda a: a.clip(min=0.0), (away_from_zero(2, 3),)),
             GradCase(lambda a: a.clip(max=0.0), (away_from_zero(2, 3),))],
    # ---- reductions ----
    "Sum": [GradCase(lambda a: a.sum(), (randn(2, 3),)),
            GradCase(lambda a: a.sum(axis=1), (randn(2, 3, 4),)),
            GradCase(lambda a: a.sum(axis=(0, 2), keepdims=True), (randn(2, 3, 4),)),
            GradCase(lambda a: a.sum(axis=-1), (randn(2, 3),))],
    "Mean": [GradCase(lambda a: a.mean(), (randn(2, 3),)),
             GradCase(lambda a: a.mean(axis=(1, 2)), (randn(2, 3, 4),)),
             GradCase(lambda a: a.mean(axis=0, keepdims=True), (randn(3, 2),))],
    "Max": [GradCase(lambda a: a.max(), (distinct(3, 4),)),
            GradCase(lambda a: a.max(axis=1), (distinct(2, 3, 4),)),
            GradCase(lambda a: a.max(axis=(0, 2), keepdims=True), (distinct(2, 3, 4),))],
    "Min": [GradCase(lambda a: a.min(), (distinct(3, 4),)),
            GradCase(lambda a: a.min(axis=-1), (distinct(2, 3, 4),)),
            GradCase(lambda a: a.min(axis=0, keepdims=True), (distinct(3, 4),))],
    "Var": [GradCase(lambda a: a.var(), (randn(3, 4),)),
            GradCase(lambda a: a.var(axis=1, correction=0), (randn(3, 4),)),
            GradCase(lambda a: a.var(axis=(0, 2), keepdims=True), (randn(2, 3, 4),))],
    # ---- shape ----
    "Reshape": [GradCase(lambda a: a.reshape(4, -1), (randn(2, 3, 2),)),
                GradCase(lambda a: a.flatten(1), (randn(2, 3, 2),)),
                GradCase(lambda a: a.view(6), (randn(2, 3),))],
    "Transpose": [GradCase(lambda a: a.T, (randn(2, 3),)),
                  GradCase(lambda a: a.permute(2, 0, 1), (randn(2, 3, 4),)),
                  GradCase(lambda a: a.transpose(0, 2), (randn(2, 3, 4),)),
                  GradCase(lambda a: a.transpose(0, 1), (randn(2, 3),))],
    "GetItem": [GradCase(lambda a: a[1:, ::2], (randn(3, 5),)),
                GradCase(lambda a: a[np.array([0, 2, 0, 0])], (randn(3, 2),)),
                GradCase(lambda a: a[np.array([1, 1, 0]), np.array([2, 2, 0])], (randn(2, 3),)),
                GradCase(lambda a: a[:, np.array([3, -1, 3])], (randn(2, 4),)),
                GradCase(lambda a: a[np.array([True, False, True])], (randn(3, 2),)),
                GradCase(lambda a: a[None, ..., 1], (randn(2, 3),)),
                GradCase(lambda a: a[1], (randn(3, 2),))],
    "Pad": [GradCase(lambda a: a.pad(((1, 0), (2, 3))), (randn(2, 3),)),
            GradCase(lambda a: a.pad(1, value=0.5), (randn(2, 2),))],
    "Concat": [GradCase(lambda a, b, c: shape_ops.concat([a, b, c], axis=1),
                        (randn(2, 1, 3), randn(2, 3, 3), randn(2, 2, 3))),
               GradCase(lambda a, b: shape_ops.concat([a, b], axis=-1),
                        (randn(2, 3), randn(2, 1)))],
    "Stack": [GradCase(lambda a, b, c: shape_ops.stack([a, b, c]),
                       (randn(2, 3), randn(2, 3), randn(2, 3))),
              GradCase(lambda a, b: shape_ops.stack([a, b], axis=-1), (randn(2, 3), randn(2, 3)))],
    # ---- matrix products ----
    "MatMul": [GradCase(lambda a, b: a @ b, (randn(3, 4), randn(4, 2))),
               GradCase(lambda a, b: a @ b, (randn(2, 1, 3, 4), randn(5, 4, 2))),
               GradCase(lambda a, b: a @ b, (randn(4), randn(4, 2))),
               GradCase(lambda a, b: a @ b, (randn(3, 4), randn(4))),
               GradCase(lambda a, b: a @ b, (randn(4), randn(4))),
               GradCase(lambda a, b: a @ b, (randn(4), randn(2, 4, 3))),
               GradCase(lambda a, b: a @ b, (randn(2, 3, 4), randn(4)))],
    "Linear": [GradCase(lambda x, w, b: F.linear(x, w, b), (randn(5, 3), randn(4, 3), randn(4))),
               GradCase(lambda x, w: F.linear(x, w), (randn(2, 3), randn(4, 3))),
               GradCase(lambda x, w, b: F.linear(x, w, b), (randn(2, 3, 5), randn(4, 5), randn(4))),
               GradCase(lambda x, w: F.linear(x, w), (randn(3), randn(2, 3)))],
    # ---- softmax and losses ----
    "Softmax": [GradCase(lambda a: a.softmax(), (randn(3, 4),)),
                GradCase(lambda a: F.softmax(a, dim=0), (randn(3, 4),))],
    "LogSoftmax": [GradCase(lambda a: a.log_softmax(), (randn(3, 4),)),
                   GradCase(lambda a: F.log_softmax(a, dim=0), (randn(3, 4),))],
    "CrossEntropy": [GradCase(lambda a: F.cross_entropy(a, _targets), (randn(5, 4),)),
                     GradCase(lambda a: F.cross_entropy(a, _targets, reduction="sum"),
                              (randn(5, 4),)),
                     GradCase(lambda a: F.cross_entropy(a, _targets, reduction="none"),
                              (randn(5, 4),)),
                     GradCase(lambda a: F.cross_entropy(a, _targets, label_smoothing=0.1),
                              (randn(5, 4),)),
                     GradCase(lambda a: F.cross_entropy(a, _targets, reduction="none",
                                                        label_smoothing=0.3), (randn(5, 4),))],
    "NLLLoss": [GradCase(lambda a: F.nll_loss(a, _targets), (randn(5, 4),)),
                GradCase(lambda a: F.nll_loss(a, _targets, reduction="sum"), (randn(5, 4),)),
                GradCase(lambda a: F.nll_loss(a.log_softmax(), _targets, reduction="none"),
                         (randn(5, 4),))],
    "MSELoss": [GradCase(lambda a, b: F.mse_loss(a, b), (randn(3, 4), randn(3, 4))),
                GradCase(lambda a, b: F.mse_loss(a, b, reduction="sum"), (randn(5), randn(5))),
                GradCase(lambda a, b: F.mse_loss(a, b, reduction="none"), (randn(2, 3),
                                                                             randn(2, 3)))],
}
