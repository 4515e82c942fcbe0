"""The model zoo: exact parameter counts, layer groups, names that line up with torch."""
import numpy as np
import pytest

import tinyconv as tc
from tinyconv import models, nn


@pytest.mark.parametrize("build,count", [
    (lambda: models.mnist_cnn(), 421_738),
    (lambda: models.resnet9(), 6_573_120),
    (lambda: models.resnet9(width=32), 1_646_112),
])
def test_parameter_counts_match_reference(build, count):
    assert build().num_parameters() == count


def test_num_classes_changes_only_the_head():
    assert models.mnist_cnn(num_classes=3).num_parameters() == 421_738 - 7 * 129
    assert models.resnet9(num_classes=100).num_parameters() == 6_573_120 + 90 * 512


@pytest.mark.parametrize("build", [models.mnist_cnn, lambda: models.resnet9(width=8)])
def test_groups_partition_the_parameters_in_order(build):
    net = build()
    groups = net.groups()
    assert len(groups) >= 3
    flat = [id(p) for g in groups for p in g.parameters()]
    assert flat == [id(p) for p in net.parameters()]          # every parameter once, in order
    assert all(any(True for _ in g.parameters()) for g in groups)
    assert isinstance(list(groups[-1].modules())[-1], nn.Linear)   # the head ends the net


def test_same_seed_same_weights():
    a = models.resnet9(width=4, rng=np.random.default_rng(3)).state_dict()
    b = models.resnet9(width=4, rng=np.random.default_rng(3)).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_forward_shapes_and_dtype(rng):
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    y = models.mnist_cnn()(tc.Tensor(x))
    assert y.shape == (2, 10) and y.dtype == np.float32
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = models.resnet9(num_classes=7, width=8)(tc.Tensor(x))
    assert y.shape == (2, 7) and y.dtype == np.float32


def test_logit_scale_multiplies_the_logits_and_survives_a_save(rng, tmp_path):
    plain = models.resnet9(width=4, rng=np.random.default_rng(1))
    scaled = models.resnet9(width=4, logit_scale=0.125, rng=np.random.default_rng(1))
    assert list(scaled.state_dict()) == list(plain.state_dict())    # Scale has no parameters
    plain.eval(), scaled.eval()
    x = tc.Tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    np.testing.assert_allclose(scaled(x).data, 0.125 * plain(x).data, rtol=1e-6, atol=1e-7)
    path = tc.save(scaled, tmp_path / "scaled.npz")
    again = tc.load(path)
    assert again.arch_args["logit_scale"] == 0.125
    np.testing.assert_array_equal(again(x).data, scaled(x).data)


def test_build_by_name_and_errors():
    net = models.build("resnet9", num_classes=5, width=4)
    assert (net.arch_name, net.arch_args) == ("resnet9", {"num_classes": 5, "width": 4})
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        models.build("vgg")
    with pytest.raises(ValueError, match="bad arguments"):
        models.build("mnist_cnn", width=3)


# ---- the same nets written in torch -------------------------------------------------------------

@pytest.mark.parametrize("name", ["mnist_cnn", "resnet9"])
def test_torch_state_dict_loads_and_gives_the_same_outputs(name, rng):
    torch = pytest.importorskip("torch")
    import torch_nets
    torch.manual_seed(0)
    if name == "mnist_cnn":
        theirs, ours, shape = torch_nets.mnist_cnn(), models.mnist_cnn(), (4, 1, 28, 28)
    else:
        theirs, ours, shape = torch_nets.resnet9(width=8), models.resnet9(width=8), (4, 3, 32, 32)
    # a few training-mode passes so the running statistics are not at their initial values
    with torch.no_grad():
        for _ in range(2):
            theirs(torch.randn(*shape) * 2 + 0.5)
    torch_state = theirs.state_dict()
    assert list(ours.state_dict()) == list(torch_state)                 # same names, same order
    ours.load_state_dict({k: v.numpy() for k, v in torch_state.items()})
    assert int(ours[0][1].num_batches_tracked.data) == 2
    x = rng.standard_normal(shape).astype(np.float32)
    for training in (False, True):
        theirs.train(training), ours.train(training)
        with torch.no_grad():
            expected = theirs(torch.from_numpy(x)).numpy()
        with tc.no_grad():
            got = ours(tc.Tensor(x)).data
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4,
                                   err_msg=f"{name} training={training}")
    # and the other way: our state_dict loads into torch's net
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
