"""learn.lr_find: the sweep (exponential, linear, per-group ratios), when it stops, the suggestions,
and that it leaves no trace: training after lr_find is bit-identical to training without it."""
import copy
import random

import numpy as np
import pytest

from tinyconv import optim, sched
from tinyconv.callbacks import TerminateOnNaN
from tinyconv.learner import Learner
from tinyconv.metrics import accuracy
from tinyconv.nn import functional as F

from test_learner import MLP, Loader, data, real_learner


class NoisyMLP(MLP):
    """An MLP that adds noise to its hidden layer while training, from its own generator (as
    dropout does): lr_find must restore model-held random state too."""

    def __init__(self):
        super().__init__()
        self.rng = np.random.default_rng(11)

    def forward(self, x):
        h = self.l0(x).relu()
        if self.training:
            h = h + self.rng.normal(scale=0.1, size=h.shape).astype(np.float32)
        return self.l2(self.l1(h).relu())


def jitter(x, rng):
    """A stand-in augmentation that draws from the loader's generator."""
    return x + rng.normal(scale=0.05, size=x.shape).astype(np.float32)


def learner(model=None, loss_func=F.cross_entropy, valid=None, **kwargs):
    kwargs.setdefault("silent", True)
    train = Loader(*data(40), 8, shuffle=True, transform=jitter, rng=np.random.default_rng(2))
    valid = Loader(*data(16, seed=3), 8) if valid is None else valid
    return Learner(model or NoisyMLP(), train, valid, loss_func=loss_func, metrics=[accuracy],
                   **kwargs)


def weights(learn):
    return {k: v.copy() for k, v in learn.model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_training_after_lr_find_is_bit_identical_to_training_without_it():
    plain = learner()
    plain.fit_one_cycle(2, 0.05)

    swept = learner()
    swept.lr_find(num_it=23)                  # several epochs, stopped mid-epoch
    assert len(swept.recorder.lrs) == 23
    swept.fit_one_cycle(2, 0.05)
    assert_same(weights(plain), weights(swept))
    np.testing.assert_array_equal(plain.recorder.values, swept.recorder.values)


def test_no_trace_with_the_real_loader_its_thread_and_augmentation():
    plain = real_learner(seed=3)
    plain.fit_one_cycle(2, 0.1)
    swept = real_learner(seed=3)
    swept.lr_find(num_it=9)                   # stops mid-epoch, with the worker thread running
    swept.fit_one_cycle(2, 0.1)
    assert_same(weights(plain), weights(swept))


def test_lr_find_restores_weights_optimizer_and_every_random_state():
    learn = learner(opt_func=lambda g, lr: optim.SGD(g, lr, momentum=0.9))
    learn.fit(1, 0.05)                        # an optimizer with momentum buffers exists
    before_w, before_opt = weights(learn), copy.deepcopy(learn.opt.state_dict())
    gens = [learn.rng, learn.model.rng, learn.train_dl.rng]
    before_rng = [copy.deepcopy(g.bit_generator.state) for g in gens]
    np_state, py_state = np.random.get_state(), random.getstate()
    learn.lr_find(num_it=12, stop_div=False)
    assert_same(before_w, weights(learn))
    after_opt = learn.opt.state_dict()
    assert after_opt["param_groups"] == before_opt["param_groups"]
    for i, s in before_opt["state"].items():
        np.testing.assert_array_equal(s["momentum_buffer"],
                                      after_opt["state"][i]["momentum_buffer"])
    assert [g.bit_generator.state for g in gens] == before_rng
    assert random.getstate() == py_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))
    assert all(p.grad is None for p in learn.model.parameters())


def test_exponential_sweep_sets_lr_before_each_batch():
    learn = learner()
    learn.lr_find(start_lr=1e-5, end_lr=1.0, num_it=20, stop_div=False)
    expected = [1e-5 * (1.0 / 1e-5) ** (i / 20) for i in range(20)]
    np.testing.assert_allclose(learn.recorder.lrs, expected, rtol=1e-12)


def test_linear_sweep():
    learn = learner()
    learn.lr_find(start_lr=0.0, end_lr=0.5, num_it=10, stop_div=False, linear=True)
    np.testing.assert_allclose(learn.recorder.lrs, [0.05 * i for i in range(10)], atol=1e-15)


def test_several_groups_keep_their_ratios():
    learn = learner()
    learn.lr_find(start_lr=slice(1e-6, 1e-4), end_lr=slice(1e-2, 1.0), num_it=10, stop_div=False)
    g = np.array(learn.recorder.group_lrs)
    np.testing.assert_allclose(g[:, 1] / g[:, 0], 10.0, rtol=1e-10)
    np.testing.assert_allclose(g[:, 2] / g[:, 1], 10.0, rtol=1e-10)
    np.testing.assert_allclose(g[:, 2], [1e-4 * 1e4 ** (i / 10) for i in range(10)], rtol=1e-12)


def scripted_loss(values):
    """A loss_func that returns values[k] on its k-th training call (gradients stay those of the
    cross-entropy times 0, so nothing else changes)."""
    calls = {"k": 0}

    def loss(pred, y, reduction="mean"):
        ce = F.cross_entropy(pred, y, reduction=reduction)
        value = values[min(calls["k"], len(values) - 1)]
        calls["k"] += 1
        return ce * 0.0 + value

    return loss


def smoothed(values):
    avg, out = 0.0, []
    for k, v in enumerate(values, start=1):
        avg = 0.98 * avg + 0.02 * v
        out.append(avg / (1 - 0.98 ** k))
    return out


def test_stops_when_the_smoothed_loss_exceeds_four_times_the_best():
    values = [2.0 - 0.05 * i for i in range(20)] + [50.0 * 1.5 ** i for i in range(40)]
    learn = learner(loss_func=scripted_loss(values), valid=[])
    learn.lr_find(num_it=60)
    smooth = smoothed(np.float32(values).tolist())       # the losses are float32 tensors
    best, stop = np.inf, None
    for i, s in enumerate(smooth):
        if s > 4 * best:
            stop = i
            break
        best = min(best, s)
    assert stop is not None and stop < 59
    np.testing.assert_allclose(learn.recorder.losses, smooth[:stop + 1], rtol=1e-12)


def test_stops_at_a_non_finite_loss_unless_stop_div_is_off():
    values = [1.0] * 8 + [np.inf] + [1.0] * 20
    learn = learner(loss_func=scripted_loss(values), valid=[])
    learn.lr_find(num_it=25)
    assert len(learn.recorder.losses) == 9 and np.isinf(learn.recorder.losses[-1])
    learn = learner(loss_func=scripted_loss(values), valid=[])
    with np.errstate(invalid="ignore"):
        learn.lr_find(num_it=25, stop_div=False)
    assert len(learn.recorder.losses) == 25


def test_no_validation_and_no_nan_warning_during_the_sweep():
    class Exploding:
        def __len__(self):
            return 1

        def __iter__(self):
            raise AssertionError("lr_find must not validate")

    learn = learner(valid=Exploding())
    with np.errstate(all="ignore"):
        learn.lr_find(start_lr=1e-3, end_lr=1e12, num_it=40)   # diverges: no NaN warning
    assert any(isinstance(cb, TerminateOnNaN) for cb in learn.cbs)   # the guard is back
    assert learn.lr_finding is False


def test_suggestions_are_those_of_the_recorded_curve():
    learn = learner(model=MLP())
    sugg = learn.lr_find(start_lr=1e-4, end_lr=100, num_it=60)
    rec = learn.recorder
    assert sugg == sched.suggest_lrs(rec.lrs, rec.losses, 60)
    assert rec.suggestions == sugg._asdict()
    assert sugg._fields == ("valley", "slide", "minimum", "steep")
    assert all(1e-4 <= v <= 100 for v in sugg)


def test_a_sweep_too_short_to_suggest_is_a_clear_error():
    learn = learner(loss_func=scripted_loss([1.0, 1.0, 100.0]), valid=[])
    with pytest.raises(RuntimeError, match="recorded 3 points"):
        learn.lr_find(num_it=100)
