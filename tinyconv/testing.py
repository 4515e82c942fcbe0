"""Gradient checking: compare backward() with central finite differences, in float64.

Public so that users can check their own ops:

    check_grads(lambda x, w: (x @ w).relu(), x, w)      # x, w: float64 arrays

A random upstream gradient is used (a plain `sum()` would hide swapped or transposed gradients),
every element of every input is perturbed, and a failure names the input, the worst element and
both values.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .tensor import Tensor

__all__ = ["numerical_grad", "check_grads", "check_grads_directional", "GradientCheckError"]


class GradientCheckError(AssertionError):
    """backward() disagrees with finite differences."""


def _scalar_objective(fn: Callable, arrays: list, upstream: np.ndarray) -> float:
    out = fn(*[Tensor(a) for a in arrays])
    return float(np.sum(out.data * upstream))


def _as_float64(arrays) -> list:
    out = []
    for i, a in enumerate(arrays):
        a = np.asarray(a.data if isinstance(a, Tensor) else a)
        if a.dtype != np.float64:
            raise TypeError(f"check_grads: input {i} has dtype {a.dtype}; gradient checks need "
                            f"float64 (finite differences in float32 are too coarse)")
        out.append(a.copy())
    return out


def _analytic(fn: Callable, arrays: list, upstream: np.ndarray) -> list:
    tensors = [Tensor(a, requires_grad=True) for a in arrays]
    out = fn(*tensors)
    if out.shape != upstream.shape:
        raise ValueError(f"check_grads: output shape changed between calls: {out.shape} vs "
                         f"{upstream.shape}")
    out.backward(upstream)
    return [t.grad if t.grad is not None else np.zeros_like(t.data) for t in tensors]


def numerical_grad(fn: Callable, arrays: list, upstream: np.ndarray, which: int,
                   eps: float = 1e-6) -> np.ndarray:
    """d sum(fn(*arrays) * upstream) / d arrays[which], by central differences, every element."""
    x = arrays[which]
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)     # views: writing flat[i] perturbs x
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + eps
        plus = _scalar_objective(fn, arrays, upstream)
        flat[i] = original - eps
        minus = _scalar_objective(fn, arrays, upstream)
        flat[i] = original
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def check_grads(fn: Callable, *arrays, atol: float = 1e-5, rtol: float = 1e-4,
                eps: float = 1e-6, seed: int = 0, wrt=None) -> None:
    """Assert that backward() of fn matches finite differences for every input element.

    fn: takes Tensors (one per array), returns a Tensor.  arrays: float64 inputs.
    wrt: indices of the inputs to check (default: all).  Raises GradientCheckError on a mismatch.
    """
    arrays = _as_float64(arrays)
    out = fn(*[Tensor(a) for a in arrays])
    upstream = np.random.default_rng(seed).standard_normal(out.shape)
    analytic = _analytic(fn, arrays, upstream)
    for i in (range(len(arrays)) if wrt is None else wrt):
        numeric = numerical_grad(fn, arrays, upstream, i, eps)
        _compare(i, arrays[i], analytic[i], numeric, atol, rtol)


def check_grads_directional(fn: Callable, *arrays, atol: float = 1e-5, rtol: float = 1e-4,
                            eps: float = 1e-6, seed: int = 0) -> None:
    """Check the gradient along one random direction of all inputs at once (big inputs).

    Compares <grad, v> from backward() with (f(x + eps v) - f(x - eps v)) / (2 eps): two calls of
    fn instead of two per element.
    """
    arrays = _as_float64(arrays)
    rng = np.random.default_rng(seed)
    out = fn(*[Tensor(a) for a in arrays])
    upstream = rng.standard_normal(out.shape)
    directions = [rng.standard_normal(a.shape) for a in arrays]
    analytic = _analytic(fn, arrays, upstream)
    predicted = sum(float(np.sum(g * v)) for g, v in zip(analytic, directions))
    plus = _scalar_objective(fn, [a + eps * v for a, v in zip(arrays, directions)], upstream)
    minus = _scalar_objective(fn, [a - eps * v for a, v in zip(arrays, directions)], upstream)
    numeric = (plus - minus) / (2 * eps)
    if not abs(predicted - numeric) <= atol + rtol * abs(numeric):
        raise GradientCheckError(f"directional derivative: backward() gives {predicted:.10g}, "
                                 f"finite differences give {numeric:.10g} "
                                 f"(input shapes {[a.shape for a in arrays]})")


def _compare(i: int, x: np.ndarray, analytic: np.ndarray, numeric: np.ndarray,
             atol: float, rtol: float) -> None:
    if analytic.shape != numeric.shape:
        raise GradientCheckError(f"input {i}: gradient shape {analytic.shape}, "
                                 f"input shape {numeric.shape}")
    error = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
    if (error > 0).any():
        worst = np.unravel_index(np.argmax(error), error.shape)
        raise GradientCheckError(
            f"input {i} (shape {x.shape}): backward() and finite differences disagree at index "
            f"{tuple(int(j) for j in worst)}: analytic {analytic[worst]:.10g}, numeric "
            f"{numeric[worst]:.10g}, input value {x[worst]:.6g}; "
            f"{int((error > 0).sum())} of {error.size} elements out of tolerance")
