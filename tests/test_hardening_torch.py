"""Where a docstring says "as torch", the edge cases behave as torch's: Tensor.var with no
degrees of freedom left, nn.Conv2d(padding="same"), optimizer state_dict numbering."""
import warnings

import numpy as np
import pytest

import tinyconv as tc
from tinyconv import nn

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("shape, axis, correction", [
    ((1,), None, 1),            # one element, unbiased: 0 / 0
    ((3, 1), 1, 1),             # per row of one
    ((2, 3), 0, 2),             # two elements, correction 2: (positive) / 0
    ((0, 4), 0, 1),             # nothing at all
])
def test_var_without_degrees_of_freedom_is_nan_or_inf_as_torch(shape, axis, correction):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    t = torch.tensor(x, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = (t.var(correction=correction) if axis is None
                    else t.var(dim=axis, correction=correction))
    a = tc.Tensor(x, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="degrees of freedom <= 0"):
        got = a.var(axis=axis, correction=correction)
    np.testing.assert_array_equal(got.data, expected.detach().numpy())
    if x.size:
        upstream = rng.standard_normal(got.shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")       # inf * upstream summed: nan, in both
            expected.backward(torch.tensor(upstream))
            (got * tc.Tensor(upstream)).sum().backward()
        np.testing.assert_array_equal(a.grad, t.grad.numpy())


def test_var_with_degrees_of_freedom_is_unchanged():
    x = np.random.default_rng(1).standard_normal((4, 5))
    np.testing.assert_allclose(tc.Tensor(x).var(axis=1).data,
                               torch.tensor(x).var(dim=1).numpy(), rtol=1e-12)


@pytest.mark.parametrize("kernel, dilation", [(3, 1), (5, 1), (3, 2), ((3, 5), 1)])
def test_conv2d_module_accepts_padding_same_as_torch(kernel, dilation):
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(3, 4, kernel, padding="same", dilation=dilation, rng=rng)
    ref = torch.nn.Conv2d(3, 4, kernel, padding="same", dilation=dilation)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(conv.weight.data))
        ref.bias.copy_(torch.tensor(conv.bias.data))
    x = rng.standard_normal((2, 3, 7, 9)).astype(np.float32)
    got = conv(tc.Tensor(x)).data
    assert got.shape == (2, 4, 7, 9)
    np.testing.assert_allclose(got, ref(torch.tensor(x)).detach().numpy(), atol=1e-5)
    assert "padding=same" in repr(conv)
    valid = nn.Conv2d(3, 4, 3, padding="valid", rng=rng)
    assert valid(tc.Tensor(x)).shape == (2, 4, 5, 7)


def test_optimizer_state_dict_numbers_parameters_as_torch():
    """Numbered across the groups in order; state only for parameters that have stepped."""
    rng = np.random.default_rng(0)
    params = [tc.nn.Parameter(rng.standard_normal(3).astype(np.float32)) for _ in range(4)]
    tparams = [torch.nn.Parameter(torch.tensor(p.data)) for p in params]
    def groups(ps):
        return [{"params": [ps[2], ps[3]]}, {"params": [ps[0], ps[1]], "lr": 0.01}]

    opt = tc.optim.SGD(groups(params), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(groups(tparams), lr=0.1, momentum=0.9)
    for i in (1, 2, 3):                                 # parameter 0 has no gradient
        params[i].grad = np.ones(3, np.float32)
        tparams[i].grad = torch.ones(3)
    opt.step()
    topt.step()
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == \
        [g["params"] for g in tsd["param_groups"]]
    assert sorted(sd["state"]) == sorted(tsd["state"])
    for k in sd["state"]:
        np.testing.assert_allclose(sd["state"][k]["momentum_buffer"],
                                   tsd["state"][k]["momentum_buffer"].numpy())
