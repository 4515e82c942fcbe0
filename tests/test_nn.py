"""nn: module discovery, modes, state_dict, repr, init, layers (against torch when installed),
and a float64 gradient check of a whole conv block."""
import math

import numpy as np
import pytest

import tinyconv as tc
from tinyconv import nn
from tinyconv.nn import functional as F
from tinyconv.nn import init
from tinyconv.testing import check_grads_directional


class Block(nn.Module):
    """Own parameter, then a buffer, then a child, then a list and a tuple of children."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(np.ones(3, dtype=np.float32))
        self.count = nn.Buffer(np.zeros((), dtype=np.int64))
        self.fc = nn.Linear(4, 3)
        self.heads = [nn.Linear(3, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2, bias=False))]
        self.pair = (nn.BatchNorm2d(2), nn.ReLU())
        self.not_a_module = [1, 2]                     # plain data: ignored
        self.config = {"fc": "ignored too"}

    def forward(self, x):
        return self.heads[1](self.heads[0](self.fc(x) * self.scale))


# ---- discovery -----------------------------------------------------------------------------------

def test_named_parameters_follow_definition_order_through_lists_and_tuples():
    names = [n for n, _ in Block().named_parameters()]
    assert names == ["scale", "fc.weight", "fc.bias", "heads.0.weight", "heads.0.bias",
                     "heads.1.1.weight", "pair.0.weight", "pair.0.bias"]


def test_buffers_are_not_parameters_and_parameters_are_not_buffers():
    block = Block()
    assert [n for n, _ in block.named_buffers()] == [
        "count", "pair.0.running_mean", "pair.0.running_var", "pair.0.num_batches_tracked"]
    params = {id(p) for p in block.parameters()}
    assert not params & {id(b) for b in block.buffers()}
    assert all(p.requires_grad for p in block.parameters())
    assert not any(b.requires_grad for b in block.buffers())


def test_children_and_named_modules_walk_the_tree():
    block = Block()
    assert [n for n, _ in block.named_children()] == ["fc", "heads.0", "heads.1", "pair.0",
                                                      "pair.1"]
    assert [n for n, _ in block.named_modules()] == ["", "fc", "heads.0", "heads.1", "heads.1.0",
                                                     "heads.1.1", "pair.0", "pair.1"]


def test_shared_parameter_is_listed_once():
    shared = nn.Linear(2, 2)
    net = nn.Sequential(shared, nn.ReLU(), shared)
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias"]
    assert net.num_parameters() == 6


def test_train_eval_reach_every_module_and_return_self():
    block = Block()
    assert block.eval() is block
    assert not any(m.training for m in block.modules())
    block.train()
    assert all(m.training for m in block.modules())


def test_zero_grad_and_requires_grad_cover_all_parameters():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = tc.Tensor(np.ones((5, 3), dtype=np.float32))
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net[0].requires_grad_(False)
    assert [p.requires_grad for p in net.parameters()] == [False, False, True, True]


def test_sequential_rejects_non_modules_and_slices_share_layers():
    with pytest.raises(TypeError, match="argument 1 is a function"):
        nn.Sequential(nn.ReLU(), F.relu)
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    assert net[1:][1] is net[2] and len(net[1:]) == 2


def test_repr_prints_tree_shapes_and_counts():
    text = repr(Block())
    assert text.startswith("Block(  # 34 parameters")
    assert "(fc): Linear(in_features=4, out_features=3)  # weight (3, 4), bias (3,): 15" in text
    assert "(heads.1): Sequential(  # 4 parameters" in text
    assert "  scale: (3,)" in text
    assert "(1): Linear(in_features=2, out_features=2, bias=False)  # weight (2, 2): 4" in text


# ---- state_dict ----------------------------------------------------------------------------------

def test_state_dict_has_dotted_names_parameters_then_buffers_per_module():
    keys = list(Block().state_dict())
    assert keys == ["scale", "count", "fc.weight", "fc.bias", "heads.0.weight", "heads.0.bias",
                    "heads.1.1.weight", "pair.0.weight", "pair.0.bias", "pair.0.running_mean",
                    "pair.0.running_var", "pair.0.num_batches_tracked"]


def test_state_dict_round_trip_copies_values_in_place():
    a, b = Block(), Block()
    a.pair[0].running_mean.data[:] = [1.5, -2.0]
    a.count.data[...] = 7
    weight_before = b.fc.weight
    b.load_state_dict(a.state_dict())
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(x, y, err_msg=name)
        assert x.dtype == y.dtype, name
    assert b.fc.weight is weight_before                 # an optimizer holding it stays valid
    assert b.fc.weight.data.dtype == np.float32 and b.fc.weight.data.flags.c_contiguous


def test_state_dict_is_a_snapshot_not_a_view():
    net = nn.Linear(2, 2)
    snapshot = net.state_dict()
    net.weight.data += 1.0
    assert not np.array_equal(snapshot["weight"], net.weight.data)


def test_load_state_dict_strict_lists_missing_unexpected_and_mismatched_keys():
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm2d(2))
    state = net.state_dict()
    before = net.state_dict()
    del state["1.running_var"]
    state["2.weight"] = np.zeros(3)
    state["0.weight"] = np.zeros((2, 4), dtype=np.float32)
    state["0.bias"] = np.full(2, 9.0, dtype=np.float32)
    with pytest.raises(nn.StateDictError) as err:
        net.load_state_dict(state)
    message = str(err.value)
    assert "missing keys: 1.running_var" in message
    assert "unexpected keys: 2.weight" in message
    assert "0.weight: file (2, 4), model (2, 3)" in message
    np.testing.assert_array_equal(net.state_dict()["0.bias"], before["0.bias"])  # nothing written


def test_load_state_dict_non_strict_reports_but_loads_the_rest():
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    state = {"0.bias": np.array([1.0, 2.0]), "extra": np.zeros(1)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert missing == ["0.weight", "1.weight", "1.bias"] and unexpected == ["extra"]
    np.testing.assert_array_equal(net[0].bias.data, np.array([1, 2], dtype=np.float32))
    assert net[0].bias.dtype == np.float32             # cast to the parameter's dtype


def test_astype_casts_float_state_but_not_counters():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm2d(2)).astype(np.float64)
    assert {p.dtype for p in net.parameters()} == {np.dtype(np.float64)}
    assert net[1].running_var.dtype == np.float64 and net[1].num_batches_tracked.dtype == np.int64


# ---- init ----------------------------------------------------------------------------------------

def test_default_init_bounds_are_one_over_sqrt_fan_in():
    conv = nn.Conv2d(8, 16, 3, rng=np.random.default_rng(0))
    bound = 1 / math.sqrt(8 * 9)
    assert np.abs(conv.weight.data).max() <= bound
    assert np.abs(conv.weight.data).max() > 0.95 * bound       # the whole range is used
    assert np.abs(conv.bias.data).max() <= bound
    # a uniform on [-b, b] has std b / sqrt(3)
    assert conv.weight.data.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_init_is_reproducible_from_the_generator():
    a = nn.Linear(5, 3, rng=np.random.default_rng(7))
    b = nn.Linear(5, 3, rng=np.random.default_rng(7))
    c = nn.Linear(5, 3, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert not np.array_equal(a.weight.data, c.weight.data)


@pytest.mark.parametrize("mode,fan", [("fan_in", 64 * 9), ("fan_out", 32 * 9)])
def test_kaiming_normal_std(mode, fan):
    w = nn.Parameter(np.zeros((32, 64, 3, 3), dtype=np.float32))
    init.kaiming_normal_(w, mode=mode, nonlinearity="relu", generator=np.random.default_rng(0))
    assert w.dtype == np.float32
    assert w.data.std() == pytest.approx(math.sqrt(2 / fan), rel=0.03)
    assert abs(w.data.mean()) < 0.003


def test_kaiming_uniform_bound_and_bad_mode():
    w = np.zeros((100, 50), dtype=np.float32)
    init.kaiming_uniform_(w, a=0.0, nonlinearity="relu", generator=np.random.default_rng(0))
    bound = math.sqrt(2) * math.sqrt(3 / 50)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    with pytest.raises(ValueError, match="mode must be"):
        init.kaiming_uniform_(w, mode="fan_avg")


def _correlated_images(rng, n=20, c=3, size=12):
    """Smooth, channel-correlated images: patches with a very uneven covariance, like photos."""
    x = rng.normal(size=(n, c, size + 2, size + 2))
    x = (x[:, :, :-2, :-2] + x[:, :, 1:-1, 1:-1] + x[:, :, 2:, 2:]) / 3      # blur
    return np.einsum("dc,nchw->ndhw", rng.normal(size=(c, c)) + 2.0, x)      # mix channels


def test_patch_whitening_gives_uncorrelated_unit_variance_outputs():
    rng = np.random.default_rng(0)
    images = _correlated_images(rng)
    weight = np.zeros((10, 3, 2, 2))
    init.patch_whitening_(weight, images, eps=0.0, chunk=7)        # chunks of 7 of the 20 images
    out = F.conv2d(tc.Tensor(images), tc.Tensor(weight)).data       # (20, 10, 11, 11)
    channels = out.transpose(1, 0, 2, 3).reshape(10, -1)
    covariance = np.cov(channels, bias=True)
    np.testing.assert_allclose(covariance[:5, :5], np.eye(5), atol=1e-8)
    np.testing.assert_allclose(channels[5:], -channels[:5])          # the +/- pairs
    # eps shrinks the faint components' variance to lambda / (lambda + eps), the largest barely
    init.patch_whitening_(weight, images, eps=0.1)
    out = F.conv2d(tc.Tensor(images), tc.Tensor(weight)).data
    variances = out.transpose(1, 0, 2, 3).reshape(10, -1)[:5].var(axis=1)
    assert np.all(np.diff(variances) < 0) and variances[0] > 0.99 and variances[-1] < 0.95


def test_patch_whitening_refuses_bad_shapes():
    images = np.zeros((4, 3, 8, 8))
    with pytest.raises(ValueError, match=r"same C.*\(6, 1, 3, 3\).*\(4, 3, 8, 8\)"):
        init.patch_whitening_(np.zeros((6, 1, 3, 3)), images)
    with pytest.raises(ValueError, match="C_out must be even"):
        init.patch_whitening_(np.zeros((5, 3, 3, 3)), images)
    with pytest.raises(ValueError, match="C_out must be even and at most 2 \\* 27"):
        init.patch_whitening_(np.zeros((56, 3, 3, 3)), images)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        init.patch_whitening_(np.zeros((6, 3, 3, 3)), np.zeros((4, 3, 2, 8)))


def test_patch_whitening_uncentred_whitens_the_second_moment_with_all_directions():
    """center=False (airbench): E[y y^T] over patches is the identity, mean not removed, and
    C_out = 2 * C*KH*KW keeps every direction and its negative."""
    rng = np.random.default_rng(1)
    images = _correlated_images(rng) + 3.0                          # a mean far from 0
    weight = np.zeros((24, 3, 2, 2))
    init.patch_whitening_(weight, images, eps=0.0, center=False)
    out = F.conv2d(tc.Tensor(images), tc.Tensor(weight)).data
    channels = out.transpose(1, 0, 2, 3).reshape(24, -1)
    second_moment = channels[:12] @ channels[:12].T / channels.shape[1]
    np.testing.assert_allclose(second_moment, np.eye(12), atol=1e-8)
    np.testing.assert_allclose(channels[12:], -channels[:12])
    centred = np.zeros((24, 3, 2, 2))
    init.patch_whitening_(centred, images, eps=0.0)                 # the default is unchanged
    assert not np.allclose(np.abs(centred), np.abs(weight), atol=1e-3)


@pytest.mark.parametrize("shape, groups", [((6, 3, 3, 3), 1), ((8, 2, 3, 5), 2),
                                           ((2, 5, 3, 3), 1), ((4, 4, 3), 1),
                                           ((6, 2, 3, 3, 3), 3), ((24, 4, 1, 2), 4)])
def test_dirac_matches_torch(shape, groups):
    torch = pytest.importorskip("torch")
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = torch.nn.init.dirac_(torch.from_numpy(w.copy()), groups=groups).numpy()
    assert init.dirac_(w, groups=groups) is w
    np.testing.assert_array_equal(w, expected)


def test_dirac_conv_copies_its_input_and_works_on_a_slice_of_filters(rng):
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False, rng=rng)
    init.dirac_(conv.weight.data[:3])                    # airbench: the first C_in filters only
    x = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    y = conv(tc.Tensor(x)).data
    np.testing.assert_array_equal(y[:, :3], x)
    assert np.abs(conv.weight.data[3:]).sum() > 0        # the other filters keep their init
    with pytest.raises(ValueError, match=r"divisible by groups \(2\)"):
        init.dirac_(np.zeros((3, 3, 3, 3)), groups=2)
    with pytest.raises(ValueError, match="1 to 3 spatial"):
        init.dirac_(np.zeros((3, 3)))


def test_calculate_gain_matches_torch():
    torch = pytest.importorskip("torch")
    for name, param in [("relu", None), ("tanh", None), ("leaky_relu", None),
                        ("leaky_relu", 0.2), ("linear", None), ("selu", None)]:
        assert init.calculate_gain(name, param) == pytest.approx(
            torch.nn.init.calculate_gain(name, param))


# ---- layers --------------------------------------------------------------------------------------

def test_batchnorm_buffers_and_counter_follow_torch_semantics(rng):
    bn = nn.BatchNorm2d(3)
    x = rng.standard_normal((4, 3, 5, 6)).astype(np.float32) * 2 + 1
    mean_before = bn.running_mean.data
    bn(tc.Tensor(x))
    assert bn.running_mean.data is mean_before                  # updated in place
    assert int(bn.num_batches_tracked.data) == 1
    np.testing.assert_allclose(bn.running_mean.data, 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(bn.running_var.data,
                               0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-5)
    bn.eval()
    bn(tc.Tensor(x))
    assert int(bn.num_batches_tracked.data) == 1                 # eval does not count


def test_batchnorm_momentum_none_is_a_cumulative_average(rng):
    bn = nn.BatchNorm2d(2, momentum=None)
    batches = [rng.standard_normal((3, 2, 4, 4)).astype(np.float32) + i for i in range(3)]
    for x in batches:
        bn(tc.Tensor(x))
    expected = np.mean([x.mean(axis=(0, 2, 3)) for x in batches], axis=0)
    np.testing.assert_allclose(bn.running_mean.data, expected, rtol=1e-5)


def test_ghost_batchnorm_trains_on_chunks_and_evaluates_with_running_stats(rng):
    bn = nn.BatchNorm2d(3, ghost_batch_size=2)
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32) * 3 + 1
    y = bn(tc.Tensor(x)).data
    # each pair is normalised by its own statistics
    np.testing.assert_allclose(y[:2].mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(y[2:].mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(y[:2].var(axis=(0, 2, 3)), 1, rtol=1e-3)
    np.testing.assert_allclose(y[2:].var(axis=(0, 2, 3)), 1, rtol=1e-3)
    assert not np.allclose(y, nn.BatchNorm2d(3)(tc.Tensor(x)).data, atol=1e-3)
    assert "ghost_batch_size=2" in repr(bn)
    bn.eval()
    np.testing.assert_allclose(bn(tc.Tensor(x)).data,
                               (x - bn.running_mean.data[:, None, None])
                               / np.sqrt(bn.running_var.data[:, None, None] + 1e-5), rtol=1e-4)


def test_batchnorm_without_weight_matches_airbench_torch_batchnorm(rng):
    """weight=False (airbench's BatchNorm: torch BatchNorm2d with weight.requires_grad=False),
    eps=1e-12, momentum 0.4 in torch's convention: forward, backward, running statistics,
    state_dict both ways; the weight stays 1 through an SGD step with weight decay."""
    torch = pytest.importorskip("torch")
    ours = nn.BatchNorm2d(3, eps=1e-12, momentum=0.4, weight=False)
    theirs = torch.nn.BatchNorm2d(3, eps=1e-12, momentum=0.4)
    theirs.weight.requires_grad = False
    with torch.no_grad():
        theirs.bias.normal_()
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    assert ours.weight.frozen and not ours.weight.requires_grad
    assert [n for n, _ in ours.named_parameters()] == ["weight", "bias"]
    for _ in range(2):
        x = rng.standard_normal((4, 3, 5, 6)).astype(np.float32) * 2 + 1
        x_ours, xt = tc.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        y, yt = ours(x_ours), theirs(xt)
        np.testing.assert_allclose(y.data, yt.detach().numpy(), rtol=1e-4, atol=1e-5)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        y.backward(dy)
        yt.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(x_ours.grad, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-4)
        assert ours.weight.grad is None and theirs.weight.grad is None
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[key], value.numpy(), rtol=1e-5, atol=1e-6)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    tc.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=0.5).step()
    np.testing.assert_array_equal(ours.weight.data, np.ones(3, dtype=np.float32))
    assert "weight=False" in repr(ours)


def test_batchnorm_affine_false_has_no_weight_or_bias_like_torch(rng):
    torch = pytest.importorskip("torch")
    ours, theirs = nn.BatchNorm2d(3, affine=False), torch.nn.BatchNorm2d(3, affine=False)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert list(ours.parameters()) == []
    x = rng.standard_normal((4, 3, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(ours(tc.Tensor(x)).data,
                               theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="affine=False there is no weight"):
        nn.BatchNorm2d(3, affine=False, weight=False)


def test_dropout_uses_its_generator_and_passes_through_in_eval():
    x = tc.Tensor(np.ones((20, 30), dtype=np.float32))
    a = nn.Dropout(0.3, rng=np.random.default_rng(1))(x).data
    b = nn.Dropout(0.3, rng=np.random.default_rng(1))(x).data
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0.0, np.float32(1 / 0.7)}
    drop = nn.Dropout(0.3).eval()
    np.testing.assert_array_equal(drop(x).data, x.data)
    with pytest.raises(ValueError, match="p must be in"):
        nn.Dropout(1.5)


def test_conv2d_rejects_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(6, 4, 3, groups=4)


def _torch_layer_pairs():
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    return torch, [
        (nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=1, bias=True),
         tnn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=1, bias=True), (2, 3, 9, 7)),
        (nn.Conv2d(4, 6, 3, dilation=2, groups=2, bias=False),
         tnn.Conv2d(4, 6, 3, dilation=2, groups=2, bias=False), (2, 4, 9, 10)),
        (nn.Linear(5, 3), tnn.Linear(5, 3), (4, 5)),
        (nn.BatchNorm2d(3), tnn.BatchNorm2d(3), (4, 3, 5, 6)),
        (nn.MaxPool2d(3, 2, 1), tnn.MaxPool2d(3, 2, 1), (2, 3, 9, 8)),
        (nn.AvgPool2d(2), tnn.AvgPool2d(2), (2, 3, 6, 8)),
        (nn.AdaptiveAvgPool2d(1), tnn.AdaptiveAvgPool2d(1), (2, 3, 5, 7)),
        (nn.AdaptiveMaxPool2d((2, 3)), tnn.AdaptiveMaxPool2d((2, 3)), (2, 3, 6, 9)),
        (nn.Flatten(), tnn.Flatten(), (2, 3, 4, 5)),
        (nn.ReLU(), tnn.ReLU(), (3, 4)),
    ]


@pytest.mark.parametrize("training", [True, False])
def test_layers_match_torch_forward_backward_and_state(training, rng):
    torch, pairs = _torch_layer_pairs()
    for ours, theirs, shape in pairs:
        name = type(ours).__name__
        theirs.load_state_dict({k: torch.from_numpy(v.copy())
                                for k, v in ours.state_dict().items()})
        ours.train(training), theirs.train(training)
        x = rng.standard_normal(shape).astype(np.float32)
        x_ours, xt = tc.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        y, yt = ours(x_ours), theirs(xt)
        np.testing.assert_allclose(y.data, yt.detach().numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=name)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        y.backward(dy)
        yt.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(x_ours.grad, xt.grad.numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=name)
        for pname, p in ours.named_parameters():
            np.testing.assert_allclose(p.grad, dict(theirs.named_parameters())[pname].grad.numpy(),
                                       rtol=1e-4, atol=1e-4, err_msg=f"{name}.{pname}")
        theirs_state = {k: v.numpy() for k, v in theirs.state_dict().items()}
        for key, value in ours.state_dict().items():      # running stats moved the same way
            np.testing.assert_allclose(value, theirs_state[key], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} {key}")


# ---- a whole conv block, float64 -----------------------------------------------------------------

def test_conv_bn_residual_block_gradient_directional(rng):
    """conv_bn -> Residual -> max pool, in training mode (batch statistics), every parameter and
    the input perturbed along one random direction."""
    block = nn.Sequential(nn.conv_bn(3, 4, rng), nn.Residual(4, rng), nn.MaxPool2d(2))
    block.astype(np.float64)
    x = rng.standard_normal((2, 3, 6, 5))
    params = [p.data.copy() for p in block.parameters()]
    check_grads_directional(lambda x_t, *param_ts: _run_with_params(block, param_ts, x_t),
                            x, *params, atol=1e-6, rtol=1e-5)


def _run_with_params(block, tensors, x):
    """Forward through `block` with its Parameters temporarily replaced by `tensors` (the
    gradient check's inputs, in parameters() order), restoring the real ones afterwards."""
    owners = [(m, name) for m in block.modules() for name, v in vars(m).items()
              if isinstance(v, nn.Parameter)]
    originals = [getattr(m, name) for m, name in owners]
    try:
        for (m, name), t in zip(owners, tensors):
            setattr(m, name, t)
        return block(x)
    finally:
        for (m, name), p in zip(owners, originals):
            setattr(m, name, p)
