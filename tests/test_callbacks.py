"""The event loop and its callbacks: event order, cancelling, ordering, recorder, progress output,
non-finite loss, SaveBest, EarlyStopping, SGDR snapshots."""
import io
import math

import numpy as np
import pytest

import tinyconv as tc
from tinyconv import nn
from tinyconv.callbacks import (EVENTS, Callback, CancelBatch, CancelFit, CancelValid,
                                CycleSnapshots, EarlyStopping, ParamScheduler, ProgressCallback,
                                SaveBest)
from tinyconv.learner import Learner
from tinyconv.metrics import accuracy
from tinyconv.nn import functional as F


class TwoLayer(nn.Module):
    """8 -> 16 -> 3 MLP with two layer groups."""

    def __init__(self, rng):
        super().__init__()
        self.body = nn.Linear(8, 16, rng=rng)
        self.head = nn.Linear(16, 3, rng=rng)

    def forward(self, x):
        return self.head(self.body(x).relu())

    def groups(self):
        return [self.body, self.head]


def batches(n_batches, bs=8, seed=0):
    """A list of (x (bs, 8) float32, y (bs,) int64) batches of a learnable 3-class problem."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, 3))
    out = []
    for _ in range(n_batches):
        x = rng.normal(size=(bs, 8)).astype(np.float32)
        out.append((x, (x @ w).argmax(1).astype(np.int64)))
    return out


def make_learner(n_train=4, n_valid=2, **kwargs):
    kwargs.setdefault("silent", True)
    model = TwoLayer(np.random.default_rng(1))
    return Learner(model, batches(n_train), batches(n_valid, seed=5), metrics=[accuracy], **kwargs)


class Record(Callback):
    """Writes down every event, with training/validation for batch events."""

    def __init__(self):
        self.events = []
        for name in EVENTS:
            setattr(self, name, self._recorder(name))

    def _recorder(self, name):
        def handler():
            self.events.append(name)
        return handler


def test_event_order_of_a_fit():
    learn = make_learner(n_train=2, n_valid=1)
    rec = Record()
    learn.fit(2, 0.1, cbs=[rec])
    train_batch = ["before_batch", "after_pred", "after_loss", "before_backward",
                   "after_backward", "after_step", "after_batch"]
    valid_batch = ["before_batch", "after_pred", "after_loss", "after_batch"]
    epoch = (["before_epoch", "before_train"] + train_batch * 2 + ["after_train",
             "before_validate"] + valid_batch + ["after_validate", "after_epoch"])
    assert rec.events == ["before_fit"] + epoch * 2 + ["after_fit"]


def test_cancel_batch_skips_the_update_and_still_runs_after_batch():
    learn = make_learner(n_train=3, n_valid=1)
    before = {k: v.copy() for k, v in learn.model.state_dict().items()}

    class SkipAll(Callback):
        def before_batch(self):
            if self.learn.training:
                raise CancelBatch

    rec = Record()
    rec.order = -1                                # sees before_batch before it is cancelled
    learn.fit(1, 0.1, cbs=[SkipAll(), rec])
    for k, v in learn.model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    first = rec.events.index("before_batch")
    assert rec.events[first:first + 3] == ["before_batch", "after_cancel_batch", "after_batch"]
    assert learn.train_iter == 3                  # the schedules' clock still counts the batch


def test_cancel_fit_in_an_epoch_runs_after_cancel_fit_then_after_fit():
    learn = make_learner()

    class StopAfterFirstEpoch(Callback):
        def after_epoch(self):
            raise CancelFit

    rec = Record()
    learn.fit(5, 0.1, cbs=[StopAfterFirstEpoch(), rec])
    assert rec.events.count("before_epoch") == 1
    assert rec.events[-2:] == ["after_cancel_fit", "after_fit"]


def test_cancel_valid_skips_validation_batches():
    learn = make_learner()

    class NoValid(Callback):
        def before_validate(self):
            raise CancelValid

    rec = Record()
    rec.order = -1
    learn.fit(1, 0.1, cbs=[NoValid(), rec])
    i = rec.events.index("before_validate")
    assert rec.events[i:i + 3] == ["before_validate", "after_cancel_validate", "after_validate"]
    assert math.isnan(learn.recorder.values[0][1])


def test_callbacks_run_in_order_of_their_order_attribute():
    calls = []

    def cb(name, order):
        c = type(name, (Callback,), {"order": order,
                                     "before_fit": lambda self: calls.append(name)})
        return c()

    learn = make_learner()
    learn.fit(1, 0.1, cbs=[cb("late", 90), cb("early", -5), cb("middle", 20)])
    assert calls == ["early", "middle", "late"]


def test_fit_callbacks_are_removed_afterwards_constructor_ones_kept():
    keep = Record()
    learn = make_learner(cbs=[keep])
    once = Record()
    learn.fit(1, 0.1, cbs=[once])
    assert once not in learn.cbs and keep in learn.cbs


def test_recorder_smoothed_loss_is_the_debiased_moving_average():
    learn = make_learner(n_train=6)
    learn.fit(2, 0.1)
    rec = learn.recorder
    avg, expected = 0.0, []
    for k, loss in enumerate(rec.raw_losses, start=1):
        avg = 0.98 * avg + 0.02 * loss
        expected.append(avg / (1 - 0.98 ** k))
    np.testing.assert_allclose(rec.losses, expected, rtol=1e-12)
    assert rec.losses[0] == rec.raw_losses[0]
    assert len(rec.raw_losses) == 12 and rec.iters == [6, 12]
    assert rec.metric_names == ["train_loss", "valid_loss", "accuracy"]


def test_recorder_epoch_values_are_exact_means_over_the_data():
    learn = make_learner(n_train=3, n_valid=2)
    rec_batches = []

    class Snoop(Callback):
        order = 55

        def after_batch(self):
            if not self.learn.training:
                rec_batches.append((self.learn.loss_value, accuracy(self.learn.pred,
                                                                    self.learn.yb)))

    learn.fit(1, 0.05, cbs=[Snoop()])
    train_loss, valid_loss, acc = learn.recorder.values[0]
    assert train_loss == pytest.approx(np.mean(learn.recorder.raw_losses), rel=1e-12)
    assert valid_loss == pytest.approx(np.mean([b[0] for b in rec_batches]), rel=1e-12)
    assert acc == pytest.approx(np.mean([b[1] for b in rec_batches]), rel=1e-12)
    # and it agrees with a separate validation pass on the trained model
    assert learn.validate() == pytest.approx([valid_loss, acc], rel=1e-6)


def test_recorder_keeps_lr_and_momentum_of_every_group():
    learn = make_learner(n_train=4)
    learn.fit_one_cycle(1, slice(1e-3, 1e-1))
    rec = learn.recorder
    assert len(rec.group_lrs) == 4 and all(len(g) == 2 for g in rec.group_lrs)
    assert rec.lrs == [g[-1] for g in rec.group_lrs]
    np.testing.assert_allclose([g[0] / g[1] for g in rec.group_lrs], 0.01, rtol=1e-12)
    assert rec.moms[0] == pytest.approx(0.95)


def test_param_scheduler_accepts_one_function_per_group_and_records_it():
    learn = make_learner(n_train=4)
    ps = ParamScheduler({"lr": [lambda pos: 0.1 * pos, lambda pos: 0.2 + pos]})
    learn.fit(1, cbs=[ps])
    expected = [[0.1 * i / 4, 0.2 + i / 4] for i in range(4)]
    np.testing.assert_allclose(ps.hps["lr"], expected, rtol=1e-12)
    np.testing.assert_allclose(learn.recorder.group_lrs, expected, rtol=1e-12)


def test_param_scheduler_rejects_wrong_group_count_and_unknown_names():
    learn = make_learner()
    with pytest.raises(ValueError, match="3 values.*2 parameter groups"):
        learn.fit(1, cbs=[ParamScheduler({"lr": lambda pos: np.array([0.1, 0.1, 0.1])})])
    with pytest.raises(KeyError, match="no 'betas'"):
        learn.fit(1, cbs=[ParamScheduler({"betas": lambda pos: 0.9})])


# --- non-finite loss ---------------------------------------------------------------------------

def test_nan_loss_stops_training_naming_epoch_and_batch():
    learn = make_learner(n_train=4)
    calls = {"n": 0}

    def loss_nan_at_call_7(pred, y, reduction="mean"):
        calls["n"] += 1
        loss = F.cross_entropy(pred, y, reduction=reduction)
        return loss * float("nan") if calls["n"] == 7 else loss

    learn.loss_func = loss_nan_at_call_7
    with pytest.warns(RuntimeWarning, match=r"loss became nan at epoch 1 batch 0"):
        learn.fit(5, 0.1)
    # epoch 0: 4 train + 2 valid calls; the 7th call is epoch 1, batch 0
    assert "epoch 1 batch 0" in learn.stop_reason
    assert len(learn.recorder.values) == 1              # epoch 1 never finished
    assert len(learn.recorder.raw_losses) == 4
    assert all(np.isfinite(p.data).all() for p in learn.model.parameters())


def test_infinite_loss_from_a_huge_lr_stops_too():
    learn = make_learner(n_train=4)
    with pytest.warns(RuntimeWarning, match="loss became"), np.errstate(all="ignore"):
        learn.fit(20, 1e30)
    assert learn.stop_reason is not None and len(learn.recorder.values) < 20


# --- progress ----------------------------------------------------------------------------------

def test_progress_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    learn = make_learner(n_train=3, cbs=[ProgressCallback(file=out, plain_every=0.0)])
    assert sum(isinstance(cb, ProgressCallback) for cb in learn.cbs) == 1
    learn.fit(2, 0.1)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert "\r" not in out.getvalue()
    assert any(line.startswith("epoch 0 train 3/3 loss") and "left" in line for line in lines)
    rows = [line.split() for line in lines if line.split()[0] in ("0", "1")]
    assert [r[0] for r in rows] == ["0", "1"]
    assert float(rows[1][1]) == pytest.approx(learn.recorder.values[1][0], abs=1e-6)


def test_progress_live_bar_redraws_in_place():
    out = io.StringIO()
    learn = make_learner(n_train=3)
    learn.remove_cbs(learn.progress)
    learn.add_cbs(ProgressCallback(file=out, live=True, refresh=0.0))
    learn.fit(1, 0.1)
    text = out.getvalue()
    assert "\r[" in text and "3/3" in text and "left" in text
    assert "\n" not in text.split("\r[")[1].split("\r")[0]     # a bar never ends a line


def test_progress_silent_prints_nothing(capsys):
    learn = make_learner(silent=True)
    learn.fit(1, 0.1)
    assert capsys.readouterr().out == ""
    learn.progress.silent = False
    learn.fit(1, 0.1)
    assert "train_loss" in capsys.readouterr().out


# --- files and early stopping --------------------------------------------------------------------

class HeadWeights(Callback):
    """Keeps a copy of the head's weight at the end of every epoch (before any file callback)."""

    order = 55

    def __init__(self):
        self.weights = []

    def after_epoch(self):
        self.weights.append(self.learn.model.head.weight.data.copy())


def test_save_best_keeps_the_best_epoch_and_reloads_it(tmp_path):
    learn = make_learner(n_train=4)
    keep = HeadWeights()
    path = tmp_path / "best.npz"
    sb = SaveBest(path, monitor="accuracy")
    learn.fit(4, 0.5, cbs=[keep, sb])
    weights = keep.weights
    accs = [v[2] for v in learn.recorder.values]
    best = int(np.argmax(accs))                           # first best: later ties do not save
    assert sb.best_epoch == best and sb.best == accs[best]
    np.testing.assert_array_equal(learn.model.head.weight.data, weights[best])
    np.testing.assert_array_equal(tc.load(path, model=TwoLayer(None)).head.weight.data,
                                  weights[best])


def test_early_stopping_after_patience_epochs_without_improvement():
    learn = make_learner(n_train=2)
    # lr 0: nothing changes, so valid_loss never improves after epoch 0
    learn.fit(10, 0.0, cbs=[EarlyStopping(monitor="valid_loss", patience=2)])
    assert len(learn.recorder.values) == 3
    assert "early stopping after epoch 2" in learn.stop_reason


def test_monitoring_an_unknown_column_is_a_clear_error():
    learn = make_learner()
    with pytest.raises(KeyError, match="cannot monitor 'acuracy'"):
        learn.fit(1, 0.1, cbs=[EarlyStopping(monitor="acuracy")])


def test_sgdr_snapshots_at_the_end_of_each_cycle(tmp_path):
    learn = make_learner(n_train=2)
    keep = HeadWeights()
    learn.fit_sgdr(3, 1, 0.1, cycle_mult=2, snapshot_prefix=tmp_path / "snap", cbs=[keep])
    saved = keep.weights
    assert len(learn.recorder.values) == 7
    for k, epoch in enumerate([1, 3, 7], start=1):
        model = tc.load(tmp_path / f"snap_cycle{k}.npz", model=TwoLayer(None))
        np.testing.assert_array_equal(model.head.weight.data, saved[epoch - 1])
    assert not (tmp_path / "snap_cycle4.npz").exists()


def test_cycle_snapshots_callback_names_files_by_cycle(tmp_path):
    learn = make_learner(n_train=1)
    snaps = CycleSnapshots([2, 3], tmp_path / "c")
    learn.fit(3, 0.1, cbs=[snaps])
    assert snaps.paths == [f"{tmp_path / 'c'}_cycle1.npz", f"{tmp_path / 'c'}_cycle2.npz"]
