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


def test_build_by_name_and_errors():
    net = models.build("resnet9", num_classes=5, width=4)
    assert (net.arch_name, net.arch_args) == ("resnet9", {"num_classes": 5, "width": 4})
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        models.build("vgg")
    with pytest.raises(ValueError, match="bad arguments"):
        models.build("mnist_cnn", width=3)


# ---- the same nets written in torch -------------------------------------------------------------

def _torch_nets(torch):
    tnn = torch.nn

    def conv_bn(c_in, c_out):
        return tnn.Sequential(tnn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                              tnn.BatchNorm2d(c_out), tnn.ReLU())

    class Residual(tnn.Module):
        def __init__(self, c):
            super().__init__()
            self.res1, self.res2 = conv_bn(c, c), conv_bn(c, c)

        def forward(self, x):
            return x + self.res2(self.res1(x))

    def mnist_cnn():
        return tnn.Sequential(conv_bn(1, 32), tnn.MaxPool2d(2), conv_bn(32, 64), tnn.MaxPool2d(2),
                              tnn.Flatten(), tnn.Linear(3136, 128), tnn.ReLU(),
                              tnn.Linear(128, 10))

    def resnet9(width):
        c0, c1, c2, c3 = width, 2 * width, 4 * width, 8 * width
        return tnn.Sequential(conv_bn(3, c0), conv_bn(c0, c1), tnn.MaxPool2d(2), Residual(c1),
                              conv_bn(c1, c2), tnn.MaxPool2d(2), conv_bn(c2, c3), tnn.MaxPool2d(2),
                              Residual(c3), tnn.MaxPool2d(4), tnn.Flatten(),
                              tnn.Linear(c3, 10, bias=False))
    return mnist_cnn, resnet9


@pytest.mark.parametrize("name", ["mnist_cnn", "resnet9"])
def test_torch_state_dict_loads_and_gives_the_same_outputs(name, rng):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    torch_mnist, torch_resnet9 = _torch_nets(torch)
    if name == "mnist_cnn":
        theirs, ours, shape = torch_mnist(), models.mnist_cnn(), (4, 1, 28, 28)
    else:
        theirs, ours, shape = torch_resnet9(8), models.resnet9(width=8), (4, 3, 32, 32)
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
