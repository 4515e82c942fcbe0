"""fastai's head layers: BatchNorm1d, AdaptiveConcatPool2d, create_head; gradients and torch.

GRAD_CASES is a case table (tests/gradcases.py): the layers are built from existing ops
(BatchNorm, AdaptiveMaxPool2d, AdaptiveAvgPool2d, Concat), so their cases are filed under those.
"""
import numpy as np
import pytest

from gradcases import GradCase, distinct, randn
from tinyconv import Tensor, no_grad
from tinyconv.nn import AdaptiveConcatPool2d, BatchNorm1d, Dropout, Linear, create_head
from tinyconv.nn import functional as F

try:
    import torch
except ImportError:                     # the suite runs without torch; the oracle tests skip
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch (the oracle) is not installed")


def _bn1d(x, w, b, training=True):
    """A fresh float64 BatchNorm1d with weight w and bias b applied to x."""
    bn = BatchNorm1d(x.shape[1]).astype(np.float64).train(training)
    bn.weight, bn.bias = w, b
    return bn(x)


GRAD_CASES = {
    "BatchNorm": [
        GradCase(_bn1d, (randn(6, 4), randn(4), randn(4))),                     # (N, C)
        GradCase(_bn1d, (randn(3, 2, 5), randn(2), randn(2))),                  # (N, C, L)
        GradCase(lambda x, w, b: _bn1d(x, w, b, training=False),
                 (randn(5, 3), randn(3), randn(3))),
    ],
    "Concat": [
        GradCase(lambda x: AdaptiveConcatPool2d()(x), (distinct(2, 3, 4, 5),)),
        GradCase(lambda x: AdaptiveConcatPool2d((2, 3))(x), (distinct(1, 2, 5, 7),)),
    ],
}


def test_adaptive_concat_pool_is_max_then_mean():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    y = AdaptiveConcatPool2d()(Tensor(x)).data
    assert y.shape == (2, 6, 1, 1) and y.dtype == np.float32
    np.testing.assert_allclose(y[:, :3, 0, 0], x.max(axis=(2, 3)))
    np.testing.assert_allclose(y[:, 3:, 0, 0], x.mean(axis=(2, 3)), rtol=1e-6)


def test_batchnorm1d_refuses_images_and_wrong_widths():
    with pytest.raises(ValueError, match=r"BatchNorm1d\(4\): expected an input \(N, 4\) or "
                                         r"\(N, 4, L\), got shape \(2, 4, 3, 3\)"):
        BatchNorm1d(4)(Tensor(np.zeros((2, 4, 3, 3), np.float32)))
    with pytest.raises(ValueError, match=r"got shape \(2, 5\)"):
        BatchNorm1d(4)(Tensor(np.zeros((2, 5), np.float32)))


def test_create_head_is_fastai_s_layout():
    head = create_head(512, 10)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["AdaptiveConcatPool2d", "Flatten", "BatchNorm1d", "Dropout", "Linear",
                     "ReLU", "BatchNorm1d", "Dropout", "Linear"]
    assert [m.p for m in head if isinstance(m, Dropout)] == [0.25, 0.5]
    assert [m.weight.shape for m in head if isinstance(m, Linear)] == [(512, 1024), (10, 512)]
    assert all(m.bias is None for m in head if isinstance(m, Linear))
    assert len(create_head(64, 3, lin_ftrs=[32, 16], ps=[0.1, 0.2, 0.3], concat_pool=False)) == 13
    with pytest.raises(ValueError, match="create_head: 2 dropout probabilities for 3 linear"):
        create_head(64, 3, lin_ftrs=[32, 16], ps=[0.1, 0.2])


@needs_torch
@pytest.mark.parametrize("shape", [(8, 5), (4, 5, 3)])
def test_batchnorm1d_matches_torch_train_and_eval(shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    ours, theirs = BatchNorm1d(5, momentum=0.3), torch.nn.BatchNorm1d(5, momentum=0.3)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5), theirs.bias.normal_()
    ours.weight.data[...] = theirs.weight.detach().numpy()
    ours.bias.data[...] = theirs.bias.detach().numpy()
    xt = torch.tensor(x, requires_grad=True)
    xo = Tensor(x, requires_grad=True)
    theirs(xt).backward(torch.tensor(dy))
    (ours(xo) * Tensor(dy)).sum().backward()
    np.testing.assert_allclose(xo.grad, xt.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.running_var.data, theirs.running_var.numpy(), rtol=1e-5)
    ours.eval(), theirs.eval()
    with no_grad(), torch.no_grad():
        np.testing.assert_allclose(ours(Tensor(x)).data, theirs(torch.tensor(x)).numpy(),
                                   atol=1e-5)


@needs_torch
def test_adaptive_concat_pool_matches_torch_forward_and_backward():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 7, 5)).astype(np.float32)
    dy = rng.standard_normal((2, 6, 2, 2)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.cat([torch.nn.functional.adaptive_max_pool2d(xt, 2),
                    torch.nn.functional.adaptive_avg_pool2d(xt, 2)], 1)
    yt.backward(torch.tensor(dy))
    xo = Tensor(x, requires_grad=True)
    yo = AdaptiveConcatPool2d(2)(xo)
    (yo * Tensor(dy)).sum().backward()
    np.testing.assert_allclose(yo.data, yt.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(xo.grad, xt.grad.numpy(), atol=1e-6)


@needs_torch
def test_create_head_matches_fastai_s_head_written_in_torch():
    tnn = torch.nn

    class ConcatPool(tnn.Module):                # fastai's AdaptiveConcatPool2d
        def forward(self, x):
            return torch.cat([tnn.functional.adaptive_max_pool2d(x, 1),
                              tnn.functional.adaptive_avg_pool2d(x, 1)], 1)

    ours = create_head(8, 3, ps=0.0, rng=np.random.default_rng(0))
    theirs = tnn.Sequential(ConcatPool(), tnn.Flatten(), tnn.BatchNorm1d(16),
                            tnn.Linear(16, 512, bias=False), tnn.ReLU(), tnn.BatchNorm1d(512),
                            tnn.Linear(512, 3, bias=False))
    ours_sd = list(ours.state_dict().values())
    with torch.no_grad():                        # same order of tensors, other indices
        for t, v in zip(theirs.state_dict().values(), ours_sd):
            t.copy_(torch.from_numpy(np.asarray(v)))
    x = np.random.default_rng(3).standard_normal((6, 8, 3, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    xo, xt = Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    F.cross_entropy(ours(xo), Tensor(y)).backward()                      # training mode
    torch.nn.functional.cross_entropy(theirs(xt), torch.from_numpy(y)).backward()
    np.testing.assert_allclose(xo.grad, xt.grad.numpy(), atol=1e-6)
    np.testing.assert_allclose(ours[3].weight.grad, theirs[3].weight.grad.numpy(), atol=1e-5)
    ours.eval(), theirs.eval()
    with no_grad(), torch.no_grad():
        np.testing.assert_allclose(ours(Tensor(x)).data, theirs(torch.tensor(x)).numpy(),
                                   atol=1e-5)
