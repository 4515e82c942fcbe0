"""Every registered Function passes a float64 gradient check, and none is left without one.

The cases live in case tables (``GRAD_CASES`` dicts keyed by Function name) in the test modules
listed in ``CASE_MODULES`` below; the mechanism is described in ``tests/gradcases.py``, which holds
the table of the core ops. A new op's table goes in one of them, or in a new module added to the
list: the coverage test fails for any registered Function no listed table covers.
Below: the checks for every table, the coverage test, and the gradient conventions a numeric check
cannot pin (ties, repeated indices, extreme logits).
"""
import importlib
import pkgutil

import numpy as np
import pytest

import tinyconv
from gradcases import run_case
from tinyconv import Function, Tensor
from tinyconv.nn import functional as F

# Every test module that holds a GRAD_CASES table, by plain module name (as pytest imports them).
CASE_MODULES = ("gradcases", "test_conv_ops", "test_gelu", "test_head_layers")


def _case_tables() -> dict:
    """{module name: its GRAD_CASES} for every module in CASE_MODULES.

    Imported under the plain module name, as pytest imports test files, so a contributing test
    module is the same module object here and in its own run.
    """
    tables = {}
    for name in CASE_MODULES:
        try:
            tables[name] = importlib.import_module(name).GRAD_CASES
        except pytest.skip.Exception as skip:
            # a skipped import would silently drop its ops from the coverage test
            raise ImportError(f"{name}.py holds GRAD_CASES but skips at import ({skip}); a "
                              f"case table must import without torch: skip the torch tests "
                              f"with a marker, not a module-level importorskip") from None
    return tables


_TABLES = _case_tables()
_CASES = [pytest.param(name, case, id=f"{module}:{name}-{i}")
          for module, table in _TABLES.items()
          for name, cases in table.items()
          for i, case in enumerate(cases)]


@pytest.mark.parametrize("name, case", _CASES)
def test_gradient_matches_finite_differences(name, case):
    run_case(name, case)


def _import_every_tinyconv_module() -> None:
    """Import the whole package, so every Function subclass in it has registered itself."""
    def fail(name):
        raise ImportError(f"cannot import {name} to collect its Functions")

    for info in pkgutil.walk_packages(tinyconv.__path__, "tinyconv.", onerror=fail):
        importlib.import_module(info.name)


def test_every_registered_function_has_a_gradient_case():
    _import_every_tinyconv_module()
    ours = {name: cls.__module__ for name, cls in Function.registry.items()
            if cls.__module__.split(".")[0] == "tinyconv"}
    covered = {name for table in _TABLES.values() for name, cases in table.items() if cases}
    missing = sorted(f"{name} ({module})" for name, module in ours.items() if name not in covered)
    assert not missing, (f"Functions without a gradient-check case: {missing}; add a GradCase "
                         f"to a GRAD_CASES table (see tests/gradcases.py)")
    # the engine ops themselves are all there (guards against a vacuous registry)
    assert {"Add", "MatMul", "GetItem", "CrossEntropy"} <= set(ours)


def test_every_case_names_a_registered_function():
    _import_every_tinyconv_module()
    for module, table in _TABLES.items():
        unknown = sorted(set(table) - set(Function.registry))
        assert not unknown, f"{module}.GRAD_CASES has keys that name no Function: {unknown}"


# ---- conventions that a finite-difference check cannot decide ---------------------------------

def test_max_and_min_ties_share_the_gradient_equally():
    x = Tensor(np.array([[1.0, 3.0, 3.0, 2.0], [5.0, 5.0, 5.0, 0.0]]), requires_grad=True)
    x.max(axis=1).backward(np.array([1.0, 6.0]))
    np.testing.assert_array_equal(x.grad, [[0, 0.5, 0.5, 0], [2, 2, 2, 0]])
    y = Tensor(np.array([2.0, -1.0, 4.0, -1.0]), requires_grad=True)
    y.min().backward()
    np.testing.assert_array_equal(y.grad, [0, 0.5, 0, 0.5])


def test_getitem_repeated_indices_accumulate():
    x = Tensor(np.zeros(3), requires_grad=True)
    x[np.array([0, 0, 2, 0])].backward(np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(x.grad, [7.0, 0.0, 3.0])
    m = Tensor(np.zeros((2, 3)), requires_grad=True)
    m[np.array([1, 1, 0]), np.array([2, 2, 0])].sum().backward()
    np.testing.assert_array_equal(m.grad, [[1, 0, 0], [0, 0, 2]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_softmax_and_cross_entropy_are_stable_for_logits_of_1e4(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 1e4 - 1.0]], dtype=dtype)
    x = Tensor(logits, requires_grad=True)
    y = x.log_softmax()
    # exact: row 0 is (0, -1e4, -2e4); row 1 is (0, 0, -1) minus log(2 + e^-1)
    lse = np.log(2 + np.exp(-1.0))
    np.testing.assert_allclose(y.data, [[0, -1e4, -2e4], [-lse, -lse, -1 - lse]], rtol=1e-6)
    y.backward(np.ones_like(logits))
    assert np.isfinite(x.grad).all()
    np.testing.assert_allclose(x.softmax().data.sum(axis=1), [1, 1], rtol=1e-6)
    loss = F.cross_entropy(Tensor(logits, requires_grad=True), np.array([1, 2]))
    np.testing.assert_allclose(loss.item(), (1e4 + 1 + lse) / 2, rtol=1e-6)


def test_pow_with_zero_exponent_has_zero_gradient_even_at_zero():
    x = Tensor(np.array([0.0, 2.0, -1.0]), requires_grad=True)
    (x ** 0).backward(np.ones(3))
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 0.0])


def test_clip_passes_the_gradient_inside_and_on_the_bounds_only():
    x = Tensor(np.array([-2.0, -1.0, 0.3, 1.0, 4.0]), requires_grad=True)
    y = x.clip(-1.0, 1.0)
    np.testing.assert_array_equal(y.data, [-1, -1, 0.3, 1, 1])
    y.backward(np.full(5, 2.0))
    np.testing.assert_array_equal(x.grad, [0, 2, 2, 2, 0])      # as torch.clamp


@pytest.mark.parametrize("correction", [0, 1, 2])
def test_var_correction_divides_by_n_minus_correction(correction, rng):
    a = rng.standard_normal((4, 5))
    np.testing.assert_allclose(Tensor(a).var(axis=1, correction=correction).data,
                               a.var(axis=1, ddof=correction), rtol=1e-12)
    with pytest.warns(RuntimeWarning, match=r"var: 1 element.*correction=1.*as torch.var"):
        assert np.isnan(Tensor(a[:1]).var(axis=0).data).all()     # 0 / 0, as torch
