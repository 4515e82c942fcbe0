"""torchvision's ResNets: parameter counts, state_dict names, groups, sizes, and torch's logits."""
import numpy as np
import pytest

import tinyconv as tc
from tinyconv import models, nn
from tinyconv.resnets import ResNet

try:
    import torch
except ImportError:                      # the suite also runs without torch
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


@pytest.mark.parametrize("arch,count", [("resnet18", 11_689_512), ("resnet34", 21_797_672),
                                        ("resnet50", 25_557_032)])
def test_parameter_counts_match_torchvision(arch, count):
    assert getattr(models, arch)().num_parameters() == count


def test_num_classes_changes_only_fc():
    assert models.resnet18(num_classes=10).num_parameters() == 11_689_512 - 990 * 513
    assert models.resnet50(num_classes=2).fc.weight.shape == (2, 2048)


@needs_torch
@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_state_dict_names_shapes_and_order_are_torchvision_s(arch):
    from torch_resnets import resnet
    theirs = {k: tuple(v.shape) for k, v in resnet(arch, randomize_bn=False).state_dict().items()}
    ours = {k: v.shape for k, v in getattr(models, arch)().state_dict().items()}
    assert list(ours) == list(theirs)
    assert ours == theirs


def test_groups_partition_the_parameters_in_order():
    net = models.resnet18(num_classes=5)
    flat = [id(p) for g in net.groups() for p in tc.learner._params_of(g, "test")]
    assert flat == [id(p) for p in net.parameters()]
    assert len(net.groups()) == 3 and net.groups()[-1] == [net.fc]


@pytest.mark.parametrize("size,out", [((32, 32), (2, 7)), ((40, 57), (2, 7))])
def test_any_input_of_at_least_32_pixels(size, out):
    net = models.resnet18(num_classes=7, rng=np.random.default_rng(0)).eval()
    x = tc.Tensor(np.random.default_rng(1).standard_normal((2, 3, *size), dtype=np.float32))
    with tc.no_grad():
        y = net(x)
    assert y.shape == out and y.dtype == np.float32
    body = net.body()(x)
    assert body.shape == (2, 512, -(-size[0] // 32), -(-size[1] // 32))


def test_too_small_an_input_is_a_clear_error():
    net = models.resnet18(num_classes=3)
    with pytest.raises(ValueError, match=r"resnet18: expected images \(N, 3, H, W\) with H, W >= "
                                         r"32, got shape \(1, 3, 16, 40\)"):
        net(tc.Tensor(np.zeros((1, 3, 16, 40), np.float32)))


def test_save_and_load_rebuild_a_resnet(tmp_path):
    net = models.resnet18(num_classes=4, rng=np.random.default_rng(0))
    tc.save(net, tmp_path / "r18.npz")
    back = tc.load(tmp_path / "r18.npz")
    assert isinstance(back, ResNet) and back.arch_name == "resnet18"
    assert all(np.array_equal(a, b) for a, b in zip(net.state_dict().values(),
                                                    back.state_dict().values()))


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="unknown arch 'resnet7'"):
        ResNet("resnet7")


def test_bottleneck_keeps_the_stride_in_the_3x3():
    block = models.resnet50().layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2) and isinstance(block.downsample[1], nn.BatchNorm2d)
