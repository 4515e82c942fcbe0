"""Permanently frozen parameters (Parameter.frozen): no gradient, no update, and they stay frozen
through Module.requires_grad_, Learner.freeze / unfreeze / freeze_to and the optimizer."""
import numpy as np

import tinyconv as tc
from tinyconv import nn
from test_learner import Loader, changed, make_learner, snapshot


def test_frozen_parameter_gets_no_gradient_and_can_be_thawed():
    p = nn.Parameter(np.ones(3, dtype=np.float32))
    p.grad = np.ones(3, dtype=np.float32)
    p.frozen = True
    assert not p.requires_grad and p.grad is None and "frozen" in repr(p)
    q = nn.Parameter(np.full(3, 2.0, dtype=np.float32))
    (p * q).sum().backward()
    assert p.grad is None and q.grad is not None
    p.frozen = False
    assert p.requires_grad
    assert not nn.Parameter(np.ones(2, dtype=np.float32), requires_grad=False).requires_grad
    assert not nn.Parameter(np.ones(2, dtype=np.float32), frozen=True).requires_grad


def test_module_requires_grad_leaves_frozen_parameters_frozen():
    layer = nn.Linear(3, 2)
    layer.bias.frozen = True
    layer.requires_grad_(False)
    layer.requires_grad_(True)
    assert layer.weight.requires_grad and not layer.bias.requires_grad


def test_sgd_skips_a_frozen_parameter_even_with_a_stale_gradient():
    p = nn.Parameter(np.ones(3, dtype=np.float32))
    opt = tc.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1)
    p.frozen = True
    p.grad = np.ones(3, dtype=np.float32)          # set behind the flag's back
    opt.step()
    np.testing.assert_array_equal(p.data, np.ones(3, dtype=np.float32))


def test_frozen_parameter_survives_freeze_unfreeze_and_freeze_to():
    learn = make_learner(opt_func=lambda groups, lr: tc.optim.SGD(groups, lr, momentum=0.9,
                                                                   weight_decay=0.1))
    learn.model.l2.bias.frozen = True               # in the head, which freeze() trains
    learn.model.l0.weight.frozen = True             # in the body, which unfreeze() trains
    for change in (learn.freeze, learn.unfreeze, lambda: learn.freeze_to(1)):
        change()
        assert not learn.model.l2.bias.requires_grad and not learn.model.l0.weight.requires_grad
        before = snapshot(learn.model)
        learn.fit(1, 0.1)
        assert {"l2.bias", "l0.weight"}.isdisjoint(changed(before, learn.model))
    assert "l2.weight" in changed(before, learn.model)


class BNNet(nn.Module):
    """conv -> BN with a pinned scale (airbench's) -> pool -> linear; groups [conv+BN, linear]."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False, rng=rng)
        self.bn = nn.BatchNorm2d(4, eps=1e-12, momentum=0.4, weight=False)
        self.fc = nn.Linear(4, 3, rng=rng)

    def forward(self, x):
        x = tc.nn.functional.adaptive_avg_pool2d(self.bn(self.conv(x)).relu(), 1)
        return self.fc(x.reshape(x.shape[0], 4))

    def groups(self):
        return [[self.conv, self.bn], self.fc]


def test_batchnorm_weight_false_stays_one_when_train_bn_unfreezes_batchnorms():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=32)
    learn = tc.Learner(BNNet(), Loader(x, y, 8), Loader(x[:8], y[:8], 8), silent=True)
    learn.freeze()                                  # train_bn: the BN of the frozen body trains
    learn.fit(1, 0.1)
    learn.unfreeze()
    learn.fit(1, 0.1)
    np.testing.assert_array_equal(learn.model.bn.weight.data, np.ones(4, dtype=np.float32))
    assert not np.array_equal(learn.model.bn.bias.data, np.zeros(4, dtype=np.float32))
