"""Callbacks: small objects that hook into the Learner's training loop at named events.

The Learner's loop (learner.py) is plain Python that announces what it is doing:

    before_fit
      before_epoch
        before_train                      (model.train() has just been called)
          before_batch  after_pred  after_loss  before_backward  after_backward  after_step
          after_batch                     (one line per training batch)
        after_train
        before_validate                   (model.eval(), no_grad)
          before_batch  after_pred  after_loss  after_batch
        after_validate
      after_epoch
    after_fit

A callback defines methods named after the events it cares about (no arguments; it reaches the
learner through `self.learn`). Callbacks run in increasing `order`. Raising `CancelBatch`,
`CancelTrain`, `CancelValid`, `CancelEpoch` or `CancelFit` skips the rest of that stage: the loop
then calls `after_cancel_<stage>` and still calls `after_<stage>`.

What lives here:
    Recorder          per batch lr/momentum of every group, raw and smoothed loss; per epoch
                      train loss, valid loss, metrics, time                          (order 50)
    ParamScheduler    sets group["lr"], group["momentum"], ... = f(pos) before each batch (10)
    LRFinder          the LR sweep of `learn.lr_find` (60)
    TerminateOnNaN    stops at a non-finite loss, naming the epoch and batch (0)
    ProgressCallback  a live bar on a terminal, plain lines otherwise, one row per epoch (70)
    SaveBest, CycleSnapshots, Checkpoint, EarlyStopping    files and early stops (60, 60, 60, 80)
    GatherPreds       collects predictions for learn.get_preds (0)
    Lookahead, EMA    weight averaging: airbench's lookahead (the net jumps to the average every
                      k steps) and an average kept for evaluation only (30)
"""
from __future__ import annotations

import math
import os
import sys
import time
import warnings

import numpy as np

from .metrics import metric_name
from .optim import layer_group_values, n_layer_groups, set_hyper

__all__ = ["EVENTS", "Callback", "CancelBatch", "CancelTrain", "CancelValid", "CancelEpoch",
           "CancelFit", "Recorder", "ParamScheduler", "LRFinder", "TerminateOnNaN",
           "ProgressCallback", "SaveBest", "CycleSnapshots", "Checkpoint", "EarlyStopping",
           "GatherPreds", "Lookahead", "EMA", "lookahead_decay"]

EVENTS = ("before_fit", "before_epoch", "before_train", "before_batch", "after_pred",
          "after_loss", "before_backward", "after_backward", "after_step", "after_cancel_batch",
          "after_batch", "after_cancel_train", "after_train", "before_validate",
          "after_cancel_validate", "after_validate", "after_cancel_epoch", "after_epoch",
          "after_cancel_fit", "after_fit")


class CancelBatch(Exception):
    """Skip the rest of this batch (no backward/step if raised before them)."""


class CancelTrain(Exception):
    """Skip the rest of this epoch's training batches."""


class CancelValid(Exception):
    """Skip this epoch's validation."""


class CancelEpoch(Exception):
    """Skip the rest of this epoch."""


class CancelFit(Exception):
    """Stop training now (after_fit still runs)."""


class Callback:
    """Base class. Define methods named after events; `order` sorts callbacks (lower runs first).

    `learn` is set by the Learner when the callback is added.
    """

    order = 0
    learn = None

    def __repr__(self):
        return type(self).__name__


# --- recording -----------------------------------------------------------------------------------

class Recorder(Callback):
    """Remembers what happened, for the progress table, plots and callbacks that track a metric.

    Per training batch (lists with one entry per batch):
        lrs, moms         lr and momentum of the LAST layer group (the head)
        group_lrs, group_moms   tuples with the value of every layer group (the base values:
                          a ParamKind's optimizer groups run at these times its multiplier)
        raw_losses        the batch's loss;  losses: smoothed, avg = beta*avg + (1-beta)*loss,
                          debiased as avg / (1 - beta**count) (so the first value is the loss)
    Per epoch:
        values            [train_loss, valid_loss, *metrics]; train_loss is the mean loss of the
                          epoch's batches weighted by batch size (valid_loss likewise over the
                          validation set: exact); NaN where there was no validation
        times, iters      seconds per epoch; training batches done at the end of each epoch
        log               the last epoch as a dict {"epoch", "train_loss", "valid_loss", <metric>,
                          "time"} (what SaveBest / EarlyStopping read by name)
    `metric_names` = ["train_loss", "valid_loss", *metric function names].
    """

    order = 50

    def __init__(self, beta: float = 0.98):
        self.beta = beta
        self.metric_names = ["train_loss", "valid_loss"]
        self._reset()
        self.last_valid = None
        self.suggestions = None          # set by lr_find: {"valley": lr, ...}
        self.lr_find_num_it = None

    def _reset(self):
        self.lrs, self.moms, self.losses, self.raw_losses = [], [], [], []
        self.group_lrs, self.group_moms = [], []
        self.values, self.times, self.iters = [], [], []
        self.log = {}
        self._avg, self._count = 0.0, 0

    def before_fit(self):
        self._reset()
        self.suggestions = None
        self.metric_names = ["train_loss", "valid_loss"] + [metric_name(m)
                                                            for m in self.learn.metrics]

    def before_epoch(self):
        self._start = time.perf_counter()
        self._train_sum, self._train_n = 0.0, 0
        self.before_validate()       # also here: a callback may cancel before ours runs

    def before_validate(self):
        self._valid_loss, self._valid_n = 0.0, 0
        self._valid_mets = [0.0] * len(self.learn.metrics)
        self.last_valid = None

    def after_batch(self):
        learn = self.learn
        if learn.loss_value is None:                     # cancelled before its loss: nothing to log
            return
        n = len(learn.yb)
        if not learn.training:
            self._valid_loss += learn.loss_value * n
            for k, metric in enumerate(learn.metrics):
                self._valid_mets[k] += metric(learn.pred, learn.yb) * n
            self._valid_n += n
            return
        loss = learn.loss_value
        self._count += 1
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        learn.smooth_loss = self._avg / (1 - self.beta ** self._count)
        self.raw_losses.append(loss)
        self.losses.append(learn.smooth_loss)
        groups = learn.opt.param_groups
        self.group_lrs.append(tuple(layer_group_values(groups, "lr")))
        self.group_moms.append(tuple(layer_group_values(groups, "momentum", 0.0)))
        self.lrs.append(self.group_lrs[-1][-1])
        self.moms.append(self.group_moms[-1][-1])
        self._train_sum += loss * n
        self._train_n += n

    def after_validate(self):
        if self._valid_n:
            n = self._valid_n
            self.last_valid = [self._valid_loss / n] + [m / n for m in self._valid_mets]

    def after_epoch(self):
        train_loss = self._train_sum / self._train_n if self._train_n else math.nan
        valid = self.last_valid or [math.nan] * (1 + len(self.learn.metrics))
        self.values.append([train_loss] + valid)
        self.times.append(time.perf_counter() - self._start)
        self.iters.append(len(self.losses))
        self.log = {"epoch": self.learn.epoch, **dict(zip(self.metric_names, self.values[-1])),
                    "time": self.times[-1]}

    # plots (the drawing is in tinyconv/plot.py, which imports matplotlib only when needed)
    def plot_loss(self, path=None, skip_start: int = 5, with_valid: bool = True):
        """Training loss per batch (raw and smoothed) and validation loss per epoch."""
        from . import plot
        return plot.plot_loss(self, path=path, skip_start=skip_start, with_valid=with_valid)

    def plot_sched(self, path=None):
        """The lr and momentum of every parameter group, per batch."""
        from . import plot
        return plot.plot_sched(self, path=path)

    def plot_lr_find(self, path=None, skip_end: int = 5):
        """Smoothed loss against lr (log x axis) of the last lr_find, suggestions marked."""
        from . import plot
        return plot.plot_lr_find(self.lrs, self.losses, suggestions=self.suggestions,
                                 path=path, skip_end=skip_end)


# --- schedules -----------------------------------------------------------------------------------

def _per_group(name, value, n_groups):
    """A schedule's value as one float per group: a number is shared, an array gives one each."""
    if np.ndim(value) == 0:
        return [float(value)] * n_groups
    values = [float(v) for v in np.ravel(value)]
    if len(values) != n_groups:
        raise ValueError(f"ParamScheduler: the schedule for {name!r} gives {len(values)} values, "
                         f"the optimizer has {n_groups} parameter groups")
    return values


class ParamScheduler(Callback):
    """Sets hyper-parameters from schedules before every training batch i: value = f(i / total).

    scheds: {"lr": f, "momentum": g, ...}; each f maps pos in [0, 1] to a number (every group
    gets it), to an array with one value per group, or is a list of functions, one per group.
    Groups are layer groups: each optimizer group gets its layer group's value times its
    multiplier (optim.set_hyper; a ParamKind's lr_mult / wd_mult).
    `hps` records what was set: {"lr": [[layer-group values] per batch], ...}.
    """

    order = 10

    def __init__(self, scheds: dict):
        if not isinstance(scheds, dict) or not scheds:
            raise TypeError(f"ParamScheduler: scheds must be a non-empty dict name -> schedule, "
                            f"got {scheds!r}")
        self.scheds = scheds
        self.hps = {name: [] for name in scheds}

    def before_fit(self):
        groups = self.learn.opt.param_groups
        for name in self.scheds:
            if name not in groups[0]:
                raise KeyError(f"ParamScheduler: the optimizer's groups have no {name!r} "
                               f"(they have {sorted(k for k in groups[0] if k != 'params')})")
        self.hps = {name: [] for name in self.scheds}

    def before_batch(self):
        if not self.learn.training:
            return
        pos = self.learn.train_iter / self.learn.total_iters
        groups = self.learn.opt.param_groups
        n = n_layer_groups(groups)
        for name, f in self.scheds.items():
            if isinstance(f, (list, tuple)):
                values = _per_group(name, [fi(pos) for fi in f], n)
            else:
                values = _per_group(name, f(pos), n)
            set_hyper(groups, name, values)
            self.hps[name].append(values)


class LRFinder(Callback):
    """The LR range test: lr_i = ramp(i / num_it) before training batch i, stop on divergence.

    ramp: exponential start -> end (linear if asked); start/end hold one value per group, so the
    groups keep their ratios. Stops after num_it batches, or (stop_div) as soon as the smoothed
    loss is non-finite or exceeds 4x the best so far. Validation is skipped. The Learner's
    lr_find restores the weights, the optimizer and the random state afterwards.
    """

    order = 60

    def __init__(self, start_lr, end_lr, num_it: int = 100, stop_div: bool = True,
                 linear: bool = False):
        from .sched import lr_find_ramp
        if num_it < 1:
            raise ValueError(f"lr_find: num_it must be >= 1, got {num_it}")
        self.ramp = lr_find_ramp(np.asarray(start_lr, dtype=np.float64),
                                 np.asarray(end_lr, dtype=np.float64), linear=linear)
        self.num_it, self.stop_div = num_it, stop_div

    def before_fit(self):
        self.best_loss = math.inf

    def before_batch(self):
        if not self.learn.training:
            return
        groups = self.learn.opt.param_groups
        values = _per_group("lr", self.ramp(self.learn.train_iter / self.num_it),
                            n_layer_groups(groups))
        set_hyper(groups, "lr", values)

    def after_batch(self):
        if not self.learn.training:
            return
        loss = self.learn.smooth_loss                    # set by the Recorder (order 50)
        if self.stop_div and (not math.isfinite(loss) or loss > 4 * self.best_loss):
            raise CancelFit
        self.best_loss = min(self.best_loss, loss)
        if self.learn.train_iter + 1 >= self.num_it:
            raise CancelFit

    def before_validate(self):
        raise CancelValid


class TerminateOnNaN(Callback):
    """Stops training at the first non-finite training loss, before it reaches the weights.

    Checked right after the loss (before backward and step), so the model keeps the weights of the
    last good batch. Sets learn.stop_reason and emits a RuntimeWarning naming epoch and batch.
    """

    order = 0

    def after_loss(self):
        learn = self.learn
        if learn.training and not math.isfinite(learn.loss_value):
            learn.stop_reason = (
                f"training stopped: the loss became {learn.loss_value} at epoch {learn.epoch} "
                f"batch {learn.iter} (counting from 0; training iteration {learn.train_iter}, "
                f"lr {layer_group_values(learn.opt.param_groups, 'lr')[-1]:.3g}); the weights "
                f"are those before this batch. Try a lower learning rate.")
            warnings.warn(learn.stop_reason, RuntimeWarning, stacklevel=2)
            raise CancelFit


class GatherPreds(Callback):
    """Collects the probabilities (softmax of the outputs), targets and optionally per-item
    losses of every validation batch; `result()` concatenates them."""

    order = 0

    def __init__(self, with_loss: bool = False):
        self.with_loss = with_loss
        self.probs, self.targets, self.item_losses = [], [], []

    def after_loss(self):
        learn = self.learn
        if learn.training:
            return
        logits = learn.pred.data
        z = np.exp(logits - logits.max(axis=-1, keepdims=True))
        self.probs.append(z / z.sum(axis=-1, keepdims=True))
        self.targets.append(learn.yb.data)
        if self.with_loss:
            self.item_losses.append(learn.item_losses(learn.pred, learn.yb))

    def result(self):
        """(probs (N, K), targets (N,)[, losses (N,)]) as arrays."""
        if not self.probs:
            raise ValueError("get_preds: the data loader gave no batches")
        out = (np.concatenate(self.probs), np.concatenate(self.targets))
        return out + (np.concatenate(self.item_losses),) if self.with_loss else out


# --- weight averaging ----------------------------------------------------------------------------

def lookahead_decay(base: float = 0.95, every: int = 5, power: float = 3.0):
    """airbench's decay of the average as f(pos): base**every * pos**power, pos = step / total.

    Near 0 early (the average follows the net: move fast), base**every at the end (average
    strongly); base**every is `base` per step compounded over the `every` steps between updates.
    """
    def decay(pos):
        return base ** every * pos ** power
    return decay


class Lookahead(Callback):
    """Weight averaging as airbench does it (a lookahead with a scheduled decay), or an EMA.

    Averaged: every floating-point array of the model's state, parameters AND batch-norm
    running statistics (integer buffers such as num_batches_tracked are left alone). Every
    `every` optimizer steps (step s = 1, 2, ... counted over the whole schedule, s % every == 0):

        avg = avg + (1 - decay) * (net - avg)        (a lerp of the average toward the net)
        net = avg                                    (copy_back: training goes on from there)

    decay: a number, or f(pos) -> number with pos = s / total_steps (default: the fit's
    learn.total_iters; give it when training stops early, e.g. airbench's 9.9 epochs); None is
    airbench's lookahead_decay(0.95, every, 3). The average starts as a copy of the net at the first
    averaging step of epoch `start_epoch` (airbench: epoch 3 of 10). copy_back=True (airbench)
    also makes the net the average at the end of every training epoch (sync_each_epoch; an update
    with decay 1: the steps since the last update are dropped) and of the fit, so validation and
    the final model use the average. copy_back=False (EMA): the training weights are never
    touched; the average is swapped in for validation (and for get_preds/tta inside a fit) and
    becomes the net at the end of the fit.

    Nothing happens during lr_find. With learn.save(with_opt=True) (Checkpoint) the average is
    saved too, and a fit resumed from such a checkpoint continues with it.
    """

    order = 30

    def __init__(self, every: int = 5, decay=None, start_epoch: int = 0, copy_back: bool = True,
                 sync_each_epoch: bool = True, total_steps=None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"{type(self).__name__}: every must be an int >= 1, got {every!r}")
        if decay is None:
            decay = lookahead_decay(0.95, every, 3.0)
        elif not callable(decay) and not 0 <= decay <= 1:
            raise ValueError(f"{type(self).__name__}: decay must be in [0, 1] or a function of "
                             f"the training position, got {decay!r}")
        self.every, self.decay, self.start_epoch = every, decay, start_epoch
        self.copy_back, self.sync_each_epoch = copy_back, sync_each_epoch
        if total_steps is not None and (isinstance(total_steps, bool) or
                                        not isinstance(total_steps, int) or total_steps < 1):
            raise ValueError(f"{type(self).__name__}: total_steps must be an int >= 1 or None, "
                             f"got {total_steps!r}")
        self.total_steps = total_steps
        self.avg = None                 # the averaged arrays, one per tensor in self._tensors
        self._on, self._saved = False, None

    # the averaged state: every float parameter and buffer, as (tensor, average) pairs
    def _float_tensors(self):
        model = self.learn.model
        tensors = [t for _, t in model.named_parameters()] + [t for _, t in model.named_buffers()]
        return [t for t in tensors if np.issubdtype(t.data.dtype, np.floating)]

    def _start(self):
        self._tensors = self._float_tensors()
        self.avg = [t.data.copy() for t in self._tensors]

    def update(self, decay: float) -> None:
        """avg += (1 - decay) * (net - avg); then, with copy_back, net = avg (in place)."""
        weight = 1.0 - float(decay)
        for t, avg in zip(self._tensors, self.avg):
            if weight != 0.0:
                avg += weight * (t.data - avg)
            if self.copy_back:
                t.data[...] = avg

    def _copy_avg_into_net(self):
        for t, avg in zip(self._tensors, self.avg):
            t.data[...] = avg

    def _decay_at(self, pos):
        return float(self.decay(pos)) if callable(self.decay) else float(self.decay)

    # events
    def before_fit(self):
        learn = self.learn
        self._on = not learn.lr_finding
        self._saved = None
        if not self._on:
            return
        self.avg = None
        state = learn.cb_states.pop(type(self).__name__, None) if learn.train_iter else None
        if state is not None:                          # resuming a checkpoint that holds it
            self._start()
            self.load_state_dict(state)

    def after_step(self):
        learn = self.learn
        step = learn.train_iter + 1
        if not self._on or learn.epoch < self.start_epoch or step % self.every:
            return
        if self.avg is None:
            self._start()
        else:
            total = self.total_steps or learn.total_iters
            self.update(self._decay_at(step / total))

    def after_train(self):
        if self._on and self.avg is not None and self.copy_back and self.sync_each_epoch:
            self._copy_avg_into_net()

    def before_validate(self):
        if self._on and self.avg is not None and not self.copy_back and self._saved is None:
            self._saved = [t.data.copy() for t in self._tensors]
            self._copy_avg_into_net()

    def after_validate(self):
        if self._saved is not None:                    # back to the training weights
            for t, saved in zip(self._tensors, self._saved):
                t.data[...] = saved
            self._saved = None

    def after_fit(self):
        if self._on and self.avg is not None:
            self._saved = None                        # a fit cancelled mid-validation
            self._copy_avg_into_net()
        self._on = False

    # checkpoints (Learner.save / load with_opt)
    def state_dict(self) -> dict:
        """{"avg/<i>": array} of the running average ({} before it starts)."""
        if not self._on or self.avg is None:
            return {}
        return {f"avg/{i}": a.copy() for i, a in enumerate(self.avg)}

    def load_state_dict(self, state: dict) -> None:
        """Restore the average saved by state_dict (the model must have the same state)."""
        if len(state) != len(self.avg):
            raise ValueError(f"{type(self).__name__}: the checkpoint holds {len(state)} averaged "
                             f"arrays, the model has {len(self.avg)} float arrays")
        for i, avg in enumerate(self.avg):
            saved = np.asarray(state[f"avg/{i}"])
            if saved.shape != avg.shape:
                raise ValueError(f"{type(self).__name__}: averaged array {i} has shape "
                                 f"{saved.shape} in the checkpoint, {avg.shape} in the model")
            avg[...] = saved


class EMA(Lookahead):
    """An exponential moving average of the weights for evaluation: Lookahead(copy_back=False).

    Every `every` steps avg = decay * avg + (1 - decay) * net (BN statistics included); the
    training weights are left alone; validation runs on the average, and the net becomes the
    average at the end of the fit. decay: a number or f(pos).
    """

    def __init__(self, decay=0.999, every: int = 1, start_epoch: int = 0, total_steps=None):
        super().__init__(every=every, decay=decay, start_epoch=start_epoch, copy_back=False,
                         total_steps=total_steps)


# --- progress ------------------------------------------------------------------------------------

def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class ProgressCallback(Callback):
    """Shows progress: a live bar on a terminal (batch, loss, time left) redrawn in place, or plain
    lines when the output is not a terminal (CI logs); and one table row per epoch.

    silent=True prints nothing. file: where to write (default sys.stdout). live: force the bar on
    or off (default: file.isatty()). The bar is redrawn at most every `refresh` seconds and a plain
    progress line written at most every `plain_every` seconds, so the cost per batch is a clock
    read.
    """

    order = 70

    def __init__(self, silent: bool = False, file=None, live=None, refresh: float = 0.2,
                 plain_every: float = 30.0, width: int = 30):
        self.silent, self.file, self.live = silent, file, live
        self.refresh, self.plain_every, self.width = refresh, plain_every, width

    def _out(self):
        return self.file if self.file is not None else sys.stdout

    def _is_live(self):
        if self.live is not None:
            return self.live
        isatty = getattr(self._out(), "isatty", None)
        return bool(isatty and isatty())

    def _write(self, text):
        out = self._out()
        out.write(text)
        out.flush()

    def before_fit(self):
        if self.silent or self.learn.lr_finding:
            return
        self._columns = ["epoch"] + self.learn.recorder.metric_names + ["time"]
        self._write("  ".join(f"{c:>10}" for c in self._columns) + "\n")

    def before_train(self):
        self._start_phase("train")

    def before_validate(self):
        self._start_phase("valid")

    def _start_phase(self, phase):
        self._phase, self._t0 = phase, time.perf_counter()
        self._n = len(self.learn.dl)
        self._last_draw = self._t0
        self._drawn = False

    def after_batch(self):
        if self.silent:
            return
        now = time.perf_counter()
        live = self._is_live()
        if now - self._last_draw < (self.refresh if live else self.plain_every):
            return
        self._last_draw = now
        done = self.learn.iter + 1
        eta = (now - self._t0) / done * (self._n - done)
        loss = self.learn.smooth_loss if self.learn.training else self.learn.loss_value
        loss = math.nan if loss is None else loss
        text = (f"epoch {self.learn.epoch} {self._phase} {done}/{self._n} loss {loss:.4f} "
                f"elapsed {_fmt_time(now - self._t0)} left {_fmt_time(eta)}")
        if live:
            filled = int(self.width * done / max(self._n, 1))
            self._write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {text}\033[K")
            self._drawn = True
        else:
            self._write(text + "\n")

    def _clear(self):
        if self._drawn:
            self._write("\r\033[K")
            self._drawn = False

    def after_train(self):
        self._clear()

    def after_validate(self):
        self._clear()

    def after_epoch(self):
        if self.silent or self.learn.lr_finding:
            return
        log = self.learn.recorder.log
        cells = [f"{log['epoch']:>10d}"] + [f"{log[c]:>10.6f}" for c in self._columns[1:-1]]
        self._write("  ".join(cells + [f"{_fmt_time(log['time']):>10}"]) + "\n")

    def after_fit(self):
        if not self.silent and self.learn.lr_finding:
            self._clear()


# --- files and early stopping --------------------------------------------------------------------

def _better(monitor, mode):
    """(is_better(new, best) for `mode`, the worst starting value). auto: min for losses/errors."""
    if mode == "auto":
        mode = "min" if ("loss" in monitor or "error" in monitor) else "max"
    if mode == "min":
        return (lambda new, best, delta: new < best - delta), math.inf
    if mode == "max":
        return (lambda new, best, delta: new > best + delta), -math.inf
    raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")


class _Tracker(Callback):
    """Follows one column of the per-epoch log ("valid_loss", "accuracy", ...)."""

    def __init__(self, monitor: str = "valid_loss", mode: str = "auto", min_delta: float = 0.0):
        self.monitor, self.min_delta = monitor, min_delta
        self._is_better, self._worst = _better(monitor, mode)

    def before_fit(self):
        self.best, self.best_epoch = self._worst, None
        names = self.learn.recorder.metric_names
        if self.monitor not in names:
            raise KeyError(f"{type(self).__name__}: cannot monitor {self.monitor!r}; the recorder "
                           f"logs {names}")

    def _improved(self) -> bool:
        value = self.learn.recorder.log[self.monitor]
        if math.isfinite(value) and self._is_better(value, self.best, self.min_delta):
            self.best, self.best_epoch = value, self.learn.epoch
            return True
        return False


class SaveBest(_Tracker):
    """Saves the model whenever `monitor` improves (end of epoch); reloads the best at the end.

    path: the .npz file (a tc.load-able model file; with_opt adds the optimizer state).
    """

    order = 60

    def __init__(self, path, monitor: str = "valid_loss", mode: str = "auto",
                 min_delta: float = 0.0, with_opt: bool = False, load_best: bool = True):
        super().__init__(monitor, mode, min_delta)
        self.path, self.with_opt, self.load_best = os.fspath(path), with_opt, load_best

    def after_epoch(self):
        if self._improved():
            self.learn.save(self.path, with_opt=self.with_opt, epoch=self.learn.epoch + 1)

    def after_fit(self):
        if self.load_best and self.best_epoch is not None:
            self.learn.load(self.path, with_opt=False)


class EarlyStopping(_Tracker):
    """Stops training when `monitor` has not improved for `patience` epochs.

    Runs after the progress table (order 80), so the last epoch's row is still printed.
    """

    order = 80

    def __init__(self, monitor: str = "valid_loss", mode: str = "auto", min_delta: float = 0.0,
                 patience: int = 1):
        super().__init__(monitor, mode, min_delta)
        self.patience = patience

    def before_fit(self):
        super().before_fit()
        self.wait = 0

    def after_epoch(self):
        if self._improved():
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.learn.stop_reason = (
                f"early stopping after epoch {self.learn.epoch}: {self.monitor} has not improved "
                f"on {self.best:.6g} (epoch {self.best_epoch}) for {self.wait} epochs")
            raise CancelFit


class CycleSnapshots(Callback):
    """Saves the model at the end of each SGDR cycle: `{prefix}_cycle{k}.npz`, k = 1, 2, ...

    cycle_ends: the epoch counts (from 1) that end a cycle, e.g. [1, 3, 7]. `paths` lists the files
    written (snapshot ensembles average their predictions).
    """

    order = 60

    def __init__(self, cycle_ends, prefix):
        self.cycle_ends, self.prefix = list(cycle_ends), os.fspath(prefix)
        self.paths = []

    def after_epoch(self):
        done = self.learn.epoch + 1
        if done in self.cycle_ends:
            path = f"{self.prefix}_cycle{self.cycle_ends.index(done) + 1}.npz"
            self.learn.save(path, with_opt=False, epoch=done)
            self.paths.append(path)


class Checkpoint(Callback):
    """Saves model + optimizer + schedule position (+ random state) every `every` epochs, to
    resume an interrupted run:  learn.load(path); learn.fit_one_cycle(n, lr,
    start_epoch=learn.checkpoint_epoch)  continues exactly where it stopped."""

    order = 60

    def __init__(self, path, every: int = 1):
        self.path, self.every = os.fspath(path), every

    def after_epoch(self):
        done = self.learn.epoch + 1
        if done % self.every == 0 or done == self.learn.n_epoch:
            self.learn.save(self.path, with_opt=True, epoch=done)
