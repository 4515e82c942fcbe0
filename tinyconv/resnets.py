"""torchvision's ResNets (He et al. 2015, "v1.5"): torchvision's structure and state_dict names.

    resnet18(num_classes=1000)    BasicBlock  [2, 2, 2, 2]    11,689,512 parameters
    resnet34(num_classes=1000)    BasicBlock  [3, 4, 6, 3]    21,797,672 parameters
    resnet50(num_classes=1000)    Bottleneck  [3, 4, 6, 3]    25,557,032 parameters

(N, 3, H, W) -> (N, num_classes) logits, any H, W >= 32 (the stem and the four stages divide the
size by 32; the adaptive average pool takes whatever is left). The layout:

    conv1 7x7/2 (64) -> bn1 -> relu -> maxpool 3x3/2        H/4
    layer1  (64 * e)   stride 1                              H/4
    layer2 (128 * e)   stride 2                              H/8
    layer3 (256 * e)   stride 2                              H/16
    layer4 (512 * e)   stride 2                              H/32
    avgpool (adaptive, 1x1) -> flatten -> fc                 (N, num_classes)

e (`expansion`) is 1 for BasicBlock and 4 for Bottleneck. "v1.5" puts a stage's stride 2 in the
3x3 convolution of its first block (the original paper put it in the first 1x1 of a Bottleneck,
which skips three quarters of the input); the shortcut of that block is a 1x1 convolution with
the same stride and a BatchNorm (`downsample.0`, `downsample.1`). The names are torchvision's
("layer2.0.downsample.0.weight", "layer4.1.bn2.running_var", "fc.bias"), so a torchvision
state_dict, read with tc.load_state_dict_file, loads as it is.

`weights=` takes a file (a torch .pth or a .safetensors) to load after building the net.
"""
from __future__ import annotations

from .nn import init
from .nn.layers import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU
from .nn.module import Module, Sequential

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50",
           "RESNET_CONFIGS"]

MIN_SIZE = 32


def _conv3x3(c_in: int, c_out: int, stride: int = 1, rng=None) -> Conv2d:
    return Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, rng=rng)


def _conv1x1(c_in: int, c_out: int, stride: int = 1, rng=None) -> Conv2d:
    return Conv2d(c_in, c_out, 1, stride=stride, bias=False, rng=rng)


class BasicBlock(Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), two 3x3 convolutions:
    (N, c_in, H, W) -> (N, planes, H/stride, W/stride)."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample=None, rng=None):
        super().__init__()
        self.conv1 = _conv3x3(c_in, planes, stride, rng)
        self.bn1 = BatchNorm2d(planes)
        self.relu = ReLU()
        self.conv2 = _conv3x3(planes, planes, rng=rng)
        self.bn2 = BatchNorm2d(planes)
        self.downsample = downsample          # None, or Sequential(conv 1x1/stride, BatchNorm)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(Module):
    """1x1 (planes) -> 3x3 (planes, stride) -> 1x1 (4 * planes), plus the shortcut, then relu:
    (N, c_in, H, W) -> (N, 4 * planes, H/stride, W/stride)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample=None, rng=None):
        super().__init__()
        self.conv1 = _conv1x1(c_in, planes, rng=rng)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, rng)       # v1.5: the stride is here
        self.bn2 = BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion, rng=rng)
        self.bn3 = BatchNorm2d(planes * self.expansion)
        self.relu = ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


RESNET_CONFIGS = {"resnet18": (BasicBlock, (2, 2, 2, 2)),
                  "resnet34": (BasicBlock, (3, 4, 6, 3)),
                  "resnet50": (Bottleneck, (3, 4, 6, 3))}


class ResNet(Module):
    """A torchvision ResNet: (N, 3, H >= 32, W >= 32) -> (N, num_classes) logits.

    arch: "resnet18", "resnet34" or "resnet50". Initialisation is torchvision's: convolutions
    He-normal (fan_out, relu), batch norms weight 1 and bias 0, the classifier torch's default.
    """

    def __init__(self, arch: str = "resnet18", num_classes: int = 1000, rng=None):
        super().__init__()
        if arch not in RESNET_CONFIGS:
            raise ValueError(f"ResNet: unknown arch {arch!r}; known: {', '.join(RESNET_CONFIGS)}")
        block, counts = RESNET_CONFIGS[arch]
        self.arch_name, self.arch_args = arch, {"num_classes": num_classes}
        self.c_in = 64                       # channels entering the next stage, as torchvision
        self.conv1 = Conv2d(3, 64, 7, stride=2, padding=3, bias=False, rng=rng)
        self.bn1 = BatchNorm2d(64)
        self.relu = ReLU()
        self.maxpool = MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(block, 64, counts[0], 1, rng)
        self.layer2 = self._stage(block, 128, counts[1], 2, rng)
        self.layer3 = self._stage(block, 256, counts[2], 2, rng)
        self.layer4 = self._stage(block, 512, counts[3], 2, rng)
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.flatten = Flatten()
        self.fc = Linear(512 * block.expansion, num_classes, rng=rng)
        self.num_features = 512 * block.expansion
        for m in self.modules():
            if isinstance(m, Conv2d):
                init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=rng)

    def _stage(self, block, planes: int, count: int, stride: int, rng) -> Sequential:
        """`count` blocks; the first changes the width (and the size, with stride 2)."""
        downsample = None
        if stride != 1 or self.c_in != planes * block.expansion:
            downsample = Sequential(_conv1x1(self.c_in, planes * block.expansion, stride, rng),
                                    BatchNorm2d(planes * block.expansion))
        blocks = [block(self.c_in, planes, stride, downsample, rng)]
        self.c_in = planes * block.expansion
        blocks += [block(self.c_in, planes, rng=rng) for _ in range(1, count)]
        return Sequential(*blocks)

    def body(self) -> Sequential:
        """The convolutional body, cut before the pooling (shares this net's modules):
        (N, 3, H, W) -> (N, num_features, H/32, W/32)."""
        return Sequential(self.conv1, self.bn1, self.relu, self.maxpool,
                          self.layer1, self.layer2, self.layer3, self.layer4)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != 3 or min(x.shape[2:]) < MIN_SIZE:
            raise ValueError(f"{self.arch_name}: expected images (N, 3, H, W) with H, W >= "
                             f"{MIN_SIZE}, got shape {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))

    def groups(self) -> list:
        """Layer groups [stem + layer1 + layer2, layer3 + layer4, fc] (fastai's cut of a ResNet
        into two body halves and a head), for freezing and discriminative learning rates."""
        return [[self.conv1, self.bn1, self.layer1, self.layer2], [self.layer3, self.layer4],
                [self.fc]]

    def extra_repr(self) -> str:
        return f"{self.arch_name}, num_classes={self.arch_args['num_classes']}"


def _build(arch: str, num_classes: int, weights, rng) -> ResNet:
    net = ResNet(arch, num_classes, rng=rng)
    if weights is not None:
        from .torch_weights import load_state_dict_file
        load_state_dict_file(net, weights)
    return net


def resnet18(num_classes: int = 1000, weights=None, rng=None) -> ResNet:
    """torchvision's ResNet-18 (11,689,512 parameters for 1000 classes); weights: a file."""
    return _build("resnet18", num_classes, weights, rng)


def resnet34(num_classes: int = 1000, weights=None, rng=None) -> ResNet:
    """torchvision's ResNet-34 (21,797,672 parameters for 1000 classes); weights: a file."""
    return _build("resnet34", num_classes, weights, rng)


def resnet50(num_classes: int = 1000, weights=None, rng=None) -> ResNet:
    """torchvision's ResNet-50 (25,557,032 parameters for 1000 classes); weights: a file."""
    return _build("resnet50", num_classes, weights, rng)
