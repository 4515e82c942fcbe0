"""SGD: REFERENCE.md golden values, torch.optim.SGD as oracle, state_dict, errors, no copies."""

import json
import tracemalloc

import numpy as np
import pytest

import tinyconv as tc
from tinyconv.optim import SGD, Optimizer


def _param(values, dtype=np.float32):
    return tc.Tensor(np.array(values, dtype=dtype), requires_grad=True)


# --- golden values: f(p) = p**2 / 2 (so grad = p), p0 = 1, lr = 0.1, three steps ------------------

GOLDEN = [
    (dict(), [0.9, 0.81, 0.729]),
    (dict(momentum=0.9), [0.9, 0.72, 0.486]),
    (dict(momentum=0.9, dampening=0.5), [0.9, 0.765, 0.60525]),
    (dict(momentum=0.9, nesterov=True), [0.81, 0.5751, 0.327321]),
    (dict(momentum=0.9, weight_decay=0.1), [0.89, 0.6931, 0.439649]),
    # fastai's decoupled decay, by hand: p *= 1 - 0.01, then the momentum step on grad = old p
    (dict(momentum=0.9, weight_decay=0.1, decoupled_wd=True), [0.89, 0.7021, 0.463769]),
]


@pytest.mark.parametrize("kwargs, expected", GOLDEN)
def test_sgd_golden_values_through_autograd(kwargs, expected):
    p = _param([1.0], np.float64)
    opt = SGD([p], lr=0.1, **kwargs)
    got = []
    for _ in range(3):
        opt.zero_grad()
        ((p * p).sum() * 0.5).backward()
        opt.step()
        got.append(p.data[0])
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_step_is_in_place_keeps_float32_and_leaves_grad_alone(rng):
    p = _param(rng.standard_normal((3, 4)))
    data = p.data
    grad = rng.standard_normal((3, 4)).astype(np.float32)
    p.grad = grad.copy()
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)
    for _ in range(3):
        opt.step()
    assert p.data is data and p.data.dtype == np.float32
    assert opt.state[id(p)]["momentum_buffer"].dtype == np.float32
    np.testing.assert_array_equal(p.grad, grad)


def test_parameters_without_grad_are_skipped():
    p, q = _param([1.0, 2.0]), _param([3.0])
    p.grad = np.ones(2, np.float32)
    SGD([p, q], lr=0.5, momentum=0.9).step()
    np.testing.assert_array_equal(p.data, [0.5, 1.5])
    np.testing.assert_array_equal(q.data, [3.0])


def test_second_step_allocates_no_temporaries(rng):
    ps = [_param(rng.standard_normal(100_000)) for _ in range(4)]
    for p in ps:
        p.grad = rng.standard_normal(100_000).astype(np.float32)
    opt = SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=5e-4, nesterov=False)
    opt.step()                      # creates the momentum buffers and the work arrays
    tracemalloc.start()
    try:
        opt.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000, f"step allocated {peak} bytes; one temporary would be 400,000"


# --- torch.optim.SGD as the oracle ----------------------------------------------------------------

GROUPS = [  # hyper-parameters per group; the shapes are non-square on purpose
    dict(lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True),
    dict(lr=0.03, momentum=0.5, dampening=0.3),
    dict(lr=0.2),
    dict(lr=0.05, momentum=0.8, weight_decay=5e-4),
]
SHAPES = [[(5, 3), (3,)], [(2, 3, 4)], [(7,)], [(4, 1, 3, 2), (6,)]]


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_sgd_matches_torch_with_param_groups(dtype, rtol):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    init = [[rng.standard_normal(s).astype(dtype) for s in shapes] for shapes in SHAPES]
    ours = [[tc.Tensor(a.copy(), requires_grad=True) for a in g] for g in init]
    theirs = [[torch.nn.Parameter(torch.from_numpy(a.copy())) for a in g] for g in init]
    opt = SGD([{"params": ps, **h} for ps, h in zip(ours, GROUPS)], lr=1.0)
    topt = torch.optim.SGD([{"params": ps, **h} for ps, h in zip(theirs, GROUPS)], lr=1.0)
    for step in range(6):
        for k, (mine, ref) in enumerate(zip(opt.param_groups, topt.param_groups)):
            mine["lr"] = ref["lr"] = GROUPS[k]["lr"] * (1 + 0.5 * step)   # as a schedule would
        for g_ours, g_theirs in zip(ours, theirs):
            for p, tp in zip(g_ours, g_theirs):
                grad = rng.standard_normal(p.shape).astype(dtype)
                p.grad, tp.grad = grad, torch.from_numpy(grad.copy())
        opt.step()
        topt.step()
    for g_ours, g_theirs in zip(ours, theirs):
        for p, tp in zip(g_ours, g_theirs):
            assert p.data.dtype == dtype
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=rtol, atol=rtol)
            buf = topt.state[tp].get("momentum_buffer")
            if buf is not None:
                np.testing.assert_allclose(opt.state[id(p)]["momentum_buffer"], buf.numpy(),
                                           rtol=rtol, atol=rtol)


# --- state_dict -----------------------------------------------------------------------------------

def _run(opt, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.copy()
        opt.step()


def test_state_dict_round_trip_restores_exactly(rng):
    params = [_param(rng.standard_normal((4, 3))), _param(rng.standard_normal(5))]
    opt = SGD([{"params": [params[0]], "lr": 0.1, "nesterov": True},
               {"params": [params[1]], "lr": 0.01, "weight_decay": 0.1}], lr=0.1, momentum=0.9)
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params] for _ in range(5)]
    _run(opt, params, grads[:3])
    saved_opt = opt.state_dict()
    saved_data = [p.data.copy() for p in params]

    _run(opt, params, grads[3:])                    # the path we want to reproduce
    expected = [p.data.copy() for p in params]

    opt.param_groups[0]["lr"] = 123.0               # an LR sweep wrecks lr and buffers...
    _run(opt, params, grads[:3])
    for p, d in zip(params, saved_data):            # ...then the model and optimizer come back
        p.data[...] = d
    opt.load_state_dict(saved_opt)
    assert opt.param_groups[0]["lr"] == 0.1
    _run(opt, params, grads[3:])
    for p, e in zip(params, expected):
        np.testing.assert_array_equal(p.data, e)


def _after_one_momentum_step(rng):
    """A parameter and an SGD (momentum 0.9) that has stepped once with grad = ones."""
    p = _param(rng.standard_normal(3))
    p.grad = np.ones(3, np.float32)
    opt = SGD([p], lr=0.1, momentum=0.9)
    opt.step()
    return p, opt


def test_state_dict_is_a_snapshot_of_plain_values(rng):
    _, opt = _after_one_momentum_step(rng)
    sd = opt.state_dict()
    buf = sd["state"][0]["momentum_buffer"].copy()
    opt.step()
    np.testing.assert_array_equal(sd["state"][0]["momentum_buffer"], buf)  # not moved by the step
    json.dumps(sd["param_groups"])                  # everything but the arrays is plain JSON


def test_load_state_dict_accepts_json_string_keys_into_a_fresh_optimizer(rng):
    p, opt = _after_one_momentum_step(rng)
    sd = opt.state_dict()
    sd = {"state": {str(k): v for k, v in sd["state"].items()},
          "param_groups": json.loads(json.dumps(sd["param_groups"]))}
    fresh = SGD([p], lr=0.5)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["momentum"] == 0.9
    np.testing.assert_array_equal(fresh.state[id(p)]["momentum_buffer"], np.ones(3))


def test_load_state_dict_rejects_mismatches_and_changes_nothing(rng):
    p, q = _param(rng.standard_normal(3)), _param(rng.standard_normal(2))
    p.grad, q.grad = np.ones(3, np.float32), np.ones(2, np.float32)
    opt = SGD([p, q], lr=0.1, momentum=0.9)
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="2 parameters in the saved state, 1 here"):
        SGD([p], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="has 1 param groups, this optimizer has 2"):
        SGD([{"params": [p]}, {"params": [q]}], lr=0.1).load_state_dict(sd)
    other = SGD([q, p], lr=0.3)                     # same count, shapes swapped
    with pytest.raises(ValueError, match=r"shape \(3,\), the parameter \(2,\)"):
        other.load_state_dict(sd)
    assert other.param_groups[0]["lr"] == 0.3 and other.state == {}


# --- groups, zero_grad, errors --------------------------------------------------------------------

def test_add_param_group_takes_defaults_and_trains():
    p, q = _param([1.0]), _param([1.0])
    opt = SGD([p], lr=0.1, momentum=0.9)
    opt.add_param_group({"params": q, "lr": 0.5})
    assert opt.param_groups[1]["momentum"] == 0.9 and opt.param_groups[1]["params"] == [q]
    p.grad, q.grad = np.ones(1, np.float32), np.ones(1, np.float32)
    opt.step()
    assert p.data[0] == pytest.approx(0.9) and q.data[0] == pytest.approx(0.5)


def test_lr_may_be_given_per_group_only():
    p, q = _param([1.0]), _param([1.0])
    opt = SGD([{"params": [p], "lr": 0.1}, {"params": [q], "lr": 0.2}])
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.2]
    with pytest.raises(ValueError, match="'lr' is required"):
        SGD([{"params": [p], "lr": 0.1}, {"params": [q]}])


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    p = _param([1.0, 2.0])
    p.grad = np.ones(2, np.float32)
    grad = p.grad
    SGD([p], lr=0.1).zero_grad(set_to_none=set_to_none)
    if set_to_none:
        assert p.grad is None
    else:
        assert p.grad is grad and not grad.any()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(lr=-0.1), ValueError, "Invalid learning rate: -0.1"),
    (dict(lr=0.1, momentum=-0.5), ValueError, "Invalid momentum value: -0.5"),
    (dict(lr=0.1, weight_decay=-1e-4), ValueError, "Invalid weight_decay value"),
    (dict(lr=0.1, nesterov=True), ValueError, "Nesterov momentum requires"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "Nesterov"),
    (dict(lr=[0.1, 0.2]), TypeError, "lr must be a number"),
    (dict(), ValueError, "'lr' is required"),
])
def test_sgd_rejects_bad_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        SGD([_param([1.0])], **kwargs)


def test_bad_groups_are_rejected_in_each_group():
    p, q = _param([1.0]), _param([1.0])
    with pytest.raises(ValueError, match="Invalid learning rate"):
        SGD([{"params": [p]}, {"params": [q], "lr": -1.0}], lr=0.1)


def test_params_must_be_a_nonempty_ordered_collection_of_distinct_float_params():
    p = _param([1.0])
    with pytest.raises(TypeError, match="ordered iterable"):
        SGD(p, lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(TypeError, match="dtype int64"):
        SGD([tc.Tensor(np.array([1, 2]))], lr=0.1)
    with pytest.raises(TypeError, match="parameter 1 of group 0 is a list"):
        SGD([p, [1.0]], lr=0.1)


def test_step_rejects_a_gradient_of_the_wrong_shape():
    p = _param(np.ones((2, 3)))
    p.grad = np.ones((3,), np.float32)     # would broadcast silently without the check
    with pytest.raises(ValueError, match=r"group 0 has shape \(3,\), the parameter \(2, 3\)"):
        SGD([p], lr=0.1).step()


def test_base_optimizer_step_is_abstract():
    with pytest.raises(NotImplementedError):
        Optimizer([_param([1.0])], dict(lr=0.1)).step()
