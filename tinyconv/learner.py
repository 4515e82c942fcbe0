"""The Learner: a model, its data, a loss and an optimizer, and fast.ai's training loop.

    learn = Learner(model, train_dl, valid_dl, metrics=[accuracy])
    learn.lr_find()                         # -> SuggestedLRs(valley=..., slide=..., ...)
    learn.fit_one_cycle(5, 1e-2)            # or fit / fit_sgdr / fit_cyclic / fit_flat_cos
    learn.freeze(); learn.fit_sgdr(3, 1, 1e-2)         # train the head, then everything with
    learn.unfreeze(); learn.fit_one_cycle(3, slice(1e-4, 1e-2))   # discriminative LRs
    probs, targets = learn.tta()

The loop is plain Python that calls events (see callbacks.py for the list and order); everything
else -- recording, schedules, the LR finder, progress, checkpoints, early stopping -- is a
callback. A training policy is only a set of schedules handed to a ParamScheduler: `fit_one_cycle`
is `fit` with {"lr": one_cycle(lr_max), "momentum": one_cycle_mom()}. `sched.policy` builds them
by name, so `plot.plot_schedule` previews exactly what `fit_*` will run.

Layer groups (the model's `groups()`, or a `splitter`) become the optimizer's parameter groups:
they carry discriminative learning rates (`lr` as a number, a list, or `slice(lo, hi)`) and are the
unit of freezing. State the Learner keeps during a fit: epoch, n_epoch, iter, n_iter, train_iter
(training batches since the start of the fit, the schedules' clock), total_iters, training, dl,
xb, yb, pred, loss, loss_value (the loss as a float), smooth_loss.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import types
from functools import partial

import numpy as np

from . import augment, optim, sched, serialize
from .autograd import no_grad
from .callbacks import (EVENTS, Callback, CancelBatch, CancelEpoch, CancelFit, CancelTrain,
                        CancelValid, CycleSnapshots, GatherPreds, LRFinder, ParamScheduler,
                        ProgressCallback, Recorder, TerminateOnNaN)
from .nn import functional as F
from .nn.module import Module, Parameter
from .tensor import Tensor

__all__ = ["Learner", "policy_scheds", "POLICIES"]

# the policies by name live beside the schedules; kept here for older callers
POLICIES = sched.POLICIES
policy_scheds = sched.policy


def _as_list(cbs) -> list:
    """Callbacks given as None, one callback, or a list/tuple of them -> a new list."""
    if cbs is None:
        return []
    return list(cbs) if isinstance(cbs, (list, tuple)) else [cbs]


# --- layer groups ---------------------------------------------------------------------------------

def _params_of(item, where: str) -> list:
    """The Parameters of a layer-group entry: a Module, a Parameter, or a list of those."""
    if isinstance(item, Parameter):
        return [item]
    if isinstance(item, Module):
        return list(item.parameters())
    if isinstance(item, (list, tuple)):
        return [p for x in item for p in _params_of(x, where)]
    raise TypeError(f"{where}: a layer group holds Modules or Parameters, "
                    f"got {type(item).__name__}")


def _batchnorms_of(item) -> list:
    """Batch-norm layers (any module keeping running statistics) inside a layer-group entry."""
    if isinstance(item, Module):
        return [m for m in item.modules() if hasattr(m, "running_mean")]
    if isinstance(item, (list, tuple)):
        return [m for x in item for m in _batchnorms_of(x)]
    return []


# --- random state ---------------------------------------------------------------------------------

# machinery whose insides hold no generator of ours (threads, queues, plots)
_NOT_WALKED = {"threading", "queue", "_thread", "concurrent", "multiprocessing", "logging", "io",
               "_io", "socket", "subprocess", "asyncio", "matplotlib", "numba", "numpy", "builtins"}


def _generators(roots) -> list:
    """Every np.random.Generator reachable from `roots`, each once, in a fixed order.

    Walked: lists, tuples, dicts, functools.partial, closures of functions, and the attributes of
    objects (modules, callbacks, data loaders, transforms; not threads, queues and the like).
    This is how lr_find and checkpoints find the generators behind shuffling, augmentation and
    dropout.
    """
    found, seen, stack = [], set(), list(reversed(roots))
    skip = (np.ndarray, Tensor, str, bytes, int, float, type, types.ModuleType, Learner)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.random.Generator):
            found.append(obj)
            continue
        if isinstance(obj, dict):
            children = list(obj.values())
        elif isinstance(obj, (list, tuple)):
            children = list(obj)
        elif isinstance(obj, partial):
            children = [obj.func, *obj.args, *obj.keywords.values()]
        elif isinstance(obj, types.FunctionType):
            children = [c.cell_contents for c in (obj.__closure__ or ())]
        elif isinstance(obj, types.MethodType):
            children = [obj.__self__]
        elif hasattr(obj, "__dict__") and \
                type(obj).__module__.partition(".")[0] not in _NOT_WALKED:
            children = list(vars(obj).values())
        else:
            continue
        stack.extend(reversed([c for c in children if not isinstance(c, (int, float, str))]))
    return found


def _jsonable_state(state):
    """A bit generator's state dict as JSON-safe data (ints of any size are fine in JSON)."""
    return json.loads(json.dumps(state, default=lambda v: v.tolist()))


class _GatherLogits(Callback):
    """The raw outputs (N, K) and targets of every validation batch: TTA averages logits."""

    order = 0

    def __init__(self):
        self.logits, self.targets = [], []

    def after_loss(self):
        if not self.learn.training:
            self.logits.append(np.array(self.learn.pred.data))
            self.targets.append(self.learn.yb.data)


# --- the Learner ----------------------------------------------------------------------------------

class Learner:
    """Trains `model` on `train_dl`, evaluates on `valid_dl`.

    model: a Module mapping x (N, C, H, W) float32 to logits (N, K). train_dl / valid_dl: iterables
    of (x, y) NumPy batches with a len() (valid_dl may be None). loss_func(pred, y) -> scalar
    Tensor (it must accept reduction="none" for per-item losses). opt_func(param_groups, lr=...,
    [weight_decay=wd]) -> optimizer; pass functools.partial(SGD, momentum=0.9, nesterov=True) to
    fix other settings. metrics: functions (pred, y) -> float, averaged over the validation set.
    cbs: extra callbacks kept for every fit. seed: seeds `learn.rng`, the generator of the
    learner's own draws (the augmentations of `tta`).

    Keyword-only: lr (the default learning rate), splitter (model -> layer groups; default
    model.groups() if it has one, else one group), wd (weight decay given to opt_func),
    moms (one-cycle momentum), train_bn (batch norm of frozen groups keeps training), silent
    (no progress output), param_kinds (a list of optim.ParamKind: named subsets of parameters,
    e.g. optim.bn_bias_kind(), with their own lr and weight-decay multipliers; each layer group
    becomes one optimizer group per kind it holds, and every lr or wd set per layer group --
    by fit, a schedule, lr_find -- reaches each of them times its multiplier).
    """

    def __init__(self, model, train_dl, valid_dl=None, loss_func=F.cross_entropy,
                 opt_func=optim.SGD, metrics=None, cbs=None, seed=None, *, lr=1e-3,
                 splitter=None, wd=None, moms=(0.95, 0.85, 0.95), train_bn: bool = True,
                 silent: bool = False, param_kinds=None):
        if not isinstance(model, Module):
            raise TypeError(f"Learner: model must be a tinyconv Module, got {type(model).__name__}")
        self.model, self.train_dl, self.valid_dl = model, train_dl, valid_dl
        self.loss_func, self.opt_func = loss_func, opt_func
        if metrics is None:
            metrics = []
        self.metrics = list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
        self.rng = np.random.default_rng(seed)
        self.lr, self.wd, self.moms, self.train_bn = lr, wd, moms, train_bn
        self.opt = None
        self.cbs, self._handlers = [], {}
        cbs = _as_list(cbs)
        # a ProgressCallback given in cbs (e.g. writing to a file) replaces the default one
        given = [cb for cb in cbs if isinstance(cb, ProgressCallback)]
        self.progress = given[0] if given else ProgressCallback(silent=silent)
        self.recorder = Recorder()
        self.add_cbs([self.recorder, TerminateOnNaN()] + ([] if given else [self.progress]) + cbs)
        self._set_layer_groups(splitter)
        self.param_kinds = list(param_kinds or [])
        for kind in self.param_kinds:
            if not isinstance(kind, optim.ParamKind):
                raise TypeError(f"Learner: param_kinds holds optim.ParamKind objects (e.g. "
                                f"optim.bn_bias_kind()), got {type(kind).__name__}")
        optim.kind_groups(self.model, self._group_params, self.param_kinds)   # check them now
        self.frozen_to = 0
        self.lr_finding = False
        self.stop_reason = None
        self.checkpoint_epoch = None
        self.cb_states = {}          # callback name -> arrays, loaded from a checkpoint (Lookahead)
        self.epoch, self.n_epoch, self.iter, self.n_iter = 0, 0, 0, 0
        self.train_iter, self.total_iters, self.training = 0, 0, False
        self.smooth_loss = math.nan

    # ---- callbacks ---------------------------------------------------------------------------
    def add_cbs(self, cbs) -> "Learner":
        """Add callbacks (instances, or classes to instantiate); they run in order of `order`."""
        for cb in _as_list(cbs):
            cb = cb() if isinstance(cb, type) else cb
            if not isinstance(cb, Callback):
                raise TypeError(f"Learner: callbacks must be Callback instances, got {cb!r}")
            cb.learn = self
            self.cbs.append(cb)
        self._sort_handlers()
        return self

    def remove_cbs(self, cbs) -> "Learner":
        for cb in _as_list(cbs):
            self.cbs.remove(cb)
        self._sort_handlers()
        return self

    @contextlib.contextmanager
    def added_cbs(self, cbs):
        """Callbacks for the duration of a `with` block (e.g. one fit)."""
        cbs = _as_list(cbs)
        self.add_cbs(cbs)
        try:
            yield
        finally:
            self.remove_cbs([cb for cb in self.cbs if cb in cbs])

    def _sort_handlers(self):
        # the bound methods of each event, looked up once (not with getattr at every batch)
        self.cbs.sort(key=lambda cb: cb.order)           # stable: equal orders keep insertion
        self._handlers = {e: [getattr(cb, e) for cb in self.cbs if callable(getattr(cb, e, None))]
                          for e in EVENTS}

    def __call__(self, event: str) -> None:
        """Run every callback's handler of `event`, in order."""
        for handler in self._handlers[event]:
            handler()

    def show_training_loop(self) -> str:
        """Print (and return) the events of a fit, in order, with the callbacks that handle each."""
        layout = [("Start Fit", 0), ("before_fit", 1), ("Start Epoch Loop", 1), ("before_epoch", 2),
                  ("Start Train", 2), ("before_train", 3), ("Start Batch Loop", 3),
                  ("before_batch", 4), ("after_pred", 4), ("after_loss", 4),
                  ("before_backward", 4), ("after_backward", 4), ("after_step", 4),
                  ("after_cancel_batch", 4), ("after_batch", 4), ("End Batch Loop", 3),
                  ("after_cancel_train", 3), ("after_train", 3), ("End Train", 2),
                  ("Start Valid", 2), ("before_validate", 3), ("Start Batch Loop", 3),
                  ("...same batch events, without backward and step...", 4),
                  ("End Batch Loop", 3), ("after_cancel_validate", 3), ("after_validate", 3),
                  ("End Valid", 2), ("after_cancel_epoch", 2), ("after_epoch", 2),
                  ("End Epoch Loop", 1), ("after_cancel_fit", 1), ("after_fit", 1),
                  ("End Fit", 0)]
        lines = []
        for name, depth in layout:
            if name in EVENTS:
                names = [type(h.__self__).__name__ for h in self._handlers[name]]
                lines.append(f"{'  ' * depth}- {name:<22}: [{', '.join(names)}]")
            else:
                lines.append(f"{'  ' * depth}{name}")
        text = "\n".join(lines)
        print(text)
        return text

    # ---- layer groups, optimizer, freezing ---------------------------------------------------
    def _set_layer_groups(self, splitter):
        if splitter is not None:
            groups = splitter(self.model)
        elif callable(getattr(self.model, "groups", None)):
            groups = self.model.groups()
        else:
            groups = [self.model]
        self.layer_groups = list(groups)
        self._group_params = [_params_of(g, "Learner splitter") for g in self.layer_groups]
        self._group_bns = [_batchnorms_of(g) for g in self.layer_groups]
        counts = {}
        for params in self._group_params:
            for p in params:
                counts[id(p)] = counts.get(id(p), 0) + 1
        names = dict((id(p), n) for n, p in self.model.named_parameters())
        missing = [n for pid, n in names.items() if pid not in counts]
        twice = [names.get(pid, "?") for pid, c in counts.items() if c > 1]
        foreign = len(set(counts) - set(names))
        if missing or twice or foreign:
            problems = [f"not in any group: {missing}" if missing else "",
                        f"in several groups: {twice}" if twice else "",
                        f"{foreign} parameters that are not the model's" if foreign else ""]
            raise ValueError("Learner: the layer groups must hold every model parameter exactly "
                             "once; " + "; ".join(p for p in problems if p))

    @property
    def n_groups(self) -> int:
        return len(self.layer_groups)

    def create_opt(self):
        """A fresh optimizer (no momentum state): one parameter group per layer group and kind
        (optim.kind_groups), lr and weight decay times each group's multipliers."""
        lrs = sched.spread_lr(self.lr, self.n_groups)
        kwargs = {} if self.wd is None else {"weight_decay": self.wd}
        groups = optim.kind_groups(self.model, self._group_params, self.param_kinds)
        self.opt = self.opt_func(groups, lr=lrs[-1], **kwargs)
        self.set_hyper("lr", lrs)
        wd = self.wd if self.wd is not None else getattr(self.opt, "defaults", {}).get(
            "weight_decay")
        if wd is not None and "weight_decay" in self.opt.param_groups[0]:
            self.set_hyper("weight_decay", wd)           # the kinds' wd_mult

    def set_hyper(self, name: str, value) -> None:
        """Set a hyper-parameter per layer group (a number, a list per group, or a slice); each
        optimizer group gets its layer group's value times its multiplier (lr_mult, wd_mult)."""
        if self.opt is None:
            self.create_opt()
        optim.set_hyper(self.opt.param_groups, name, sched.spread_lr(value, self.n_groups))

    def freeze_to(self, n: int) -> None:
        """Train only the layer groups from index n on; earlier ones are frozen (no gradients,
        no updates). With train_bn (default), batch-norm layers of frozen groups keep training
        (their weights and running statistics); with train_bn=False they are frozen and run in
        eval mode. n < 0 counts from the end: freeze_to(-1) trains only the last group.
        A parameter marked frozen (Parameter.frozen) is never made trainable."""
        frozen = n if n >= 0 else self.n_groups + n
        self.frozen_to = max(0, min(frozen, self.n_groups))
        for k, params in enumerate(self._group_params):
            bn_params = {id(p) for m in self._group_bns[k] for p in m.parameters()}
            for p in params:
                trainable = k >= self.frozen_to or (self.train_bn and id(p) in bn_params)
                trainable = trainable and not getattr(p, "frozen", False)
                p.requires_grad = trainable
                if not trainable:
                    p.grad = None
        if self.training:
            self._set_train_mode()

    def freeze(self) -> None:
        """Freeze every layer group but the last (the head)."""
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        """Train every layer group."""
        self.freeze_to(0)

    def _set_train_mode(self):
        self.model.train()
        if not self.train_bn:
            for bns in self._group_bns[:self.frozen_to]:
                for m in bns:
                    m.train(False)

    # ---- the loop ----------------------------------------------------------------------------
    def _with_events(self, f, stage: str, cancel: type) -> None:
        try:
            self(f"before_{stage}")
            f()
        except cancel:
            self(f"after_cancel_{stage}")
        self(f"after_{stage}")

    def fit(self, n_epoch: int, lr=None, wd=None, cbs=None, reset_opt: bool = False,
            start_epoch: int = 0) -> None:
        """Train for n_epoch epochs at a constant lr (a number, a list per group, or a slice;
        None keeps the optimizer's). cbs: callbacks for this fit only. start_epoch: skip the
        first epochs (resuming a checkpoint: the schedules continue where they were)."""
        if reset_opt or self.opt is None:
            self.create_opt()
        if lr is not None:
            self.set_hyper("lr", lr)
        if wd is not None:
            self.set_hyper("weight_decay", wd)
        if len(self.train_dl) == 0:
            raise ValueError("fit: the training data loader gives no batches")
        if not 0 <= start_epoch <= n_epoch:
            raise ValueError(f"fit: start_epoch {start_epoch} is outside [0, n_epoch={n_epoch}]")
        self.n_epoch, self.stop_reason = n_epoch, None
        self.total_iters = n_epoch * len(self.train_dl)
        self.train_iter = start_epoch * len(self.train_dl)
        self._start_epoch = start_epoch
        try:
            with self.added_cbs(cbs):
                self._with_events(self._do_fit, "fit", CancelFit)
        finally:
            self.training = False

    def _do_fit(self):
        for epoch in range(self._start_epoch, self.n_epoch):
            self.epoch = epoch
            self._with_events(self._do_epoch, "epoch", CancelEpoch)

    def _do_epoch(self):
        self.training, self.dl = True, self.train_dl
        set_epoch = getattr(self.train_dl, "set_epoch", None)
        if set_epoch is not None:      # per-epoch augmentation (alternating flip) follows fit
            set_epoch(self.epoch)
        self._set_train_mode()
        self._with_events(self._all_batches, "train", CancelTrain)
        if self.valid_dl is not None:
            self._do_validate(self.valid_dl)

    def _do_validate(self, dl):
        self.training, self.dl = False, dl
        self.model.eval()
        with no_grad():
            self._with_events(self._all_batches, "validate", CancelValid)

    def _all_batches(self):
        self.n_iter = len(self.dl)
        batches = iter(self.dl)
        try:
            for i, (x, y) in enumerate(batches):
                self.iter = i
                self._one_batch(x, y)
        finally:
            # stop a loader's background work now (lr_find restores the random state next)
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def _one_batch(self, x, y):
        self.xb, self.yb = Tensor(x), Tensor(y)
        self.pred = self.loss = self.loss_value = None     # a cancelled batch leaves no stale loss
        self._with_events(self._do_one_batch, "batch", CancelBatch)
        if self.training:
            self.train_iter += 1

    def _do_one_batch(self):
        self.pred = self.model(self.xb)
        self("after_pred")
        self.loss = self.loss_func(self.pred, self.yb)
        self.loss_value = float(self.loss.data)
        self("after_loss")
        if not self.training:
            return
        self("before_backward")
        self.loss.backward()
        self("after_backward")
        self.opt.step()
        self("after_step")
        self.opt.zero_grad()

    # ---- training policies -------------------------------------------------------------------
    def _lrs(self, lr):
        """lr (number, list, slice; None: the optimizer's current ones) as an array per group."""
        if lr is None:
            if self.opt is None:
                self.create_opt()
            return np.array(optim.layer_group_values(self.opt.param_groups, "lr"))
        return np.array(sched.spread_lr(lr, self.n_groups))

    def _fit_policy(self, policy, n_epoch, cbs, start_epoch, **kwargs):
        scheds, n_epoch = sched.policy(policy, n_epoch=n_epoch, n_iter=len(self.train_dl),
                                        **kwargs)
        extra = _as_list(cbs)
        self.fit(n_epoch, cbs=[ParamScheduler(scheds)] + extra, start_epoch=start_epoch)
        return scheds

    def fit_one_cycle(self, n_epoch: int, lr_max=None, div: float = 25.0, div_final: float = 1e5,
                      pct_start: float = 0.25, moms=None, cbs=None, start_epoch: int = 0):
        """One-cycle (fastai v2): lr cosine lr_max/div -> lr_max over pct_start of the batches,
        then cosine to lr_max/div_final; momentum moms[0] -> moms[1] -> moms[2] inversely."""
        self._fit_policy("one_cycle", n_epoch, cbs, start_epoch, lr_max=self._lrs(lr_max),
                         div=div, div_final=div_final, pct_start=pct_start,
                         moms=moms or self.moms)

    def fit_sgdr(self, n_cycles: int, cycle_len: int, lr_max=None, cycle_mult: int = 2,
                 eta_min: float = 0.0, warmup: bool = False, snapshot_prefix=None, cbs=None,
                 start_epoch: int = 0):
        """SGDR: n_cycles cosine annealings from lr_max to eta_min with warm restarts; cycle i
        lasts cycle_len * cycle_mult**i epochs. snapshot_prefix: save the model at the end of
        every cycle as {prefix}_cycle{k}.npz."""
        lr_max = self._lrs(lr_max)
        extra = _as_list(cbs)
        if snapshot_prefix is not None:
            f, _ = sched.sgdr(lr_max, n_cycles, cycle_len, cycle_mult, eta_min)
            extra.append(CycleSnapshots(f.cycle_ends, snapshot_prefix))
        self._fit_policy("sgdr", None, extra, start_epoch, lr_max=lr_max, n_cycles=n_cycles,
                         cycle_len=cycle_len, cycle_mult=cycle_mult, eta_min=eta_min,
                         warmup=warmup)

    def fit_cyclic(self, n_epoch: int, base_lr, max_lr, step_size: int, mode: str = "triangular",
                   gamma: float = 1.0, cycle_momentum: bool = True, base_momentum: float = 0.8,
                   max_momentum: float = 0.9, cbs=None, start_epoch: int = 0):
        """Cyclical LR (Smith 2015; torch CyclicLR) per iteration, step_size batches per half
        cycle; momentum cycles inversely (max_momentum at base_lr) unless cycle_momentum=False."""
        self._fit_policy("cyclic", n_epoch, cbs, start_epoch, base_lr=self._lrs(base_lr),
                         max_lr=self._lrs(max_lr), step_size=step_size, mode=mode, gamma=gamma,
                         cycle_momentum=cycle_momentum, base_momentum=base_momentum,
                         max_momentum=max_momentum)

    def fit_flat_cos(self, n_epoch: int, lr=None, div_final: float = 1e5,
                     pct_start: float = 0.75, cbs=None, start_epoch: int = 0):
        """Flat lr for pct_start of training, then cosine annealing to lr/div_final."""
        self._fit_policy("flat_cos", n_epoch, cbs, start_epoch, lr=self._lrs(lr),
                         div_final=div_final, pct_start=pct_start)

    def fit_airbench(self, n_epoch: int, lr=None, pct_start: float = 0.23, start: float = 0.2,
                     end: float = 0.07, cbs=None, start_epoch: int = 0):
        """airbench94's schedule: lr linear from lr*start to lr over pct_start of training,
        then linear to lr*end (sched.airbench)."""
        self._fit_policy("airbench", n_epoch, cbs, start_epoch, lr=self._lrs(lr),
                         pct_start=pct_start, start=start, end=end)

    def fit_policy(self, name: str, n_epoch: int, lr=None, **kwargs):
        """Train with the policy called `name` (one of POLICIES) through its method fit_<name>
        (fit for "constant"): fit_policy("one_cycle", 5, 0.1, pct_start=0.3) is
        fit_one_cycle(5, 0.1, pct_start=0.3). lr is the policy's peak lr (lr_max, lr, or
        cyclic's max_lr); for "sgdr" n_epoch is the number of cycles unless n_cycles is given."""
        if name not in POLICIES:
            raise ValueError(f"fit_policy: unknown policy {name!r}; known: {', '.join(POLICIES)}")
        if name == "sgdr":
            n_cycles = kwargs.pop("n_cycles", n_epoch)
            if lr is not None:
                kwargs["lr_max"] = lr
            return self.fit_sgdr(n_cycles, kwargs.pop("cycle_len", 1), **kwargs)
        if lr is not None:
            kwargs[{"one_cycle": "lr_max", "cyclic": "max_lr"}.get(name, "lr")] = lr
        method = self.fit if name == "constant" else getattr(self, f"fit_{name}")
        return method(n_epoch, **kwargs)

    # ---- LR finder -----------------------------------------------------------------------------
    def _generators(self) -> list:
        """The random generators a run draws from: the learner's, the model's (dropout), the
        loaders' (shuffling, augmentation) and the callbacks'."""
        return _generators([self.rng, self.model, self.train_dl, self.valid_dl, self.loss_func,
                            self.cbs])

    def _snapshot(self) -> dict:
        """Everything a trial run changes: weights, optimizer, random generators."""
        gens = self._generators()
        return {"model": self.model.state_dict(),
                "opt": None if self.opt is None else copy.deepcopy(self.opt.state_dict()),
                "gens": [(g, copy.deepcopy(g.bit_generator.state)) for g in gens],
                "np_random": np.random.get_state(), "random": random.getstate()}

    def _restore(self, snap: dict) -> None:
        self.model.load_state_dict(snap["model"])
        if snap["opt"] is None:
            self.opt = None
        else:
            self.opt.load_state_dict(copy.deepcopy(snap["opt"]))
        for p in self.model.parameters():
            p.grad = None
        for g, state in snap["gens"]:
            g.bit_generator.state = state
        np.random.set_state(snap["np_random"])
        random.setstate(snap["random"])

    def lr_find(self, start_lr=1e-7, end_lr=10.0, num_it: int = 100, stop_div: bool = True,
                linear: bool = False):
        """The LR range test (fastai v2): train num_it batches with the lr going from start_lr to
        end_lr (exponentially, or linearly), recording the smoothed loss; stop early when it
        diverges (> 4x the best) or is non-finite. Afterwards the weights, the optimizer state
        and the random state are restored: training after lr_find is as if it never ran.

        start_lr / end_lr may be lists or slices (one value per layer group). Returns
        SuggestedLRs(valley, slide, minimum, steep); `learn.recorder.plot_lr_find()` draws it.
        """
        starts = sched.spread_lr(start_lr, self.n_groups)
        ends = sched.spread_lr(end_lr, self.n_groups)
        finder = LRFinder(starts, ends, num_it, stop_div, linear)
        nan_guards = [cb for cb in self.cbs if isinstance(cb, TerminateOnNaN)]
        snap = self._snapshot()
        self.lr_finding = True
        try:
            self.remove_cbs(nan_guards)                  # divergence is what the sweep looks for
            self.fit(num_it // len(self.train_dl) + 1, cbs=[finder])
        finally:
            self.add_cbs(nan_guards)
            self.lr_finding = False
            self._restore(snap)
        rec = self.recorder
        try:
            suggestions = sched.suggest_lrs(rec.lrs, rec.losses, num_it)
        except ValueError as e:
            raise RuntimeError(f"lr_find: the sweep recorded {len(rec.losses)} points before it "
                               f"stopped, too few to suggest a learning rate ({e}); lower "
                               f"start_lr or raise num_it") from None
        rec.suggestions, rec.lr_find_num_it = suggestions._asdict(), num_it
        return suggestions

    # ---- evaluation --------------------------------------------------------------------------
    def validate(self, dl=None) -> list:
        """[valid_loss, *metrics] on dl (default: the validation loader)."""
        dl = self._eval_dl(dl, "validate")
        self._do_validate(dl)
        if self.recorder.last_valid is None:
            raise ValueError("validate: the data loader gave no batches")
        return list(self.recorder.last_valid)

    def _eval_dl(self, dl, name):
        dl = self.valid_dl if dl is None else dl
        if dl is None:
            raise ValueError(f"{name}: no data loader given and the Learner has no valid_dl")
        return dl

    def item_losses(self, pred, yb) -> np.ndarray:
        """Per-item losses (N,) of a batch: loss_func(pred, yb, reduction="none")."""
        try:
            return self.loss_func(pred, yb, reduction="none").data
        except TypeError as e:
            raise TypeError(f"per-item losses need a loss_func that takes reduction='none' "
                            f"({e})") from None

    def get_preds(self, dl=None, with_loss: bool = False):
        """(probs (N, K), targets (N,)) over dl (default: the validation loader), in the loader's
        order; with_loss adds the per-item losses (N,). The model is left in eval mode."""
        dl = self._eval_dl(dl, "get_preds")
        gather = GatherPreds(with_loss)
        with self.added_cbs([gather]):
            self._do_validate(dl)
        return gather.result()

    def predict(self, x):
        """(class index, probabilities (K,)) of ONE model input x, e.g. (C, H, W) float32 as the
        loaders yield it (normalised). For many inputs use get_preds."""
        self.model.eval()
        with no_grad():
            probs = F.softmax(self.model(Tensor(np.asarray(x, dtype=np.float32)[None])),
                              dim=-1).data[0]
        return int(probs.argmax()), probs

    def tta(self, dl=None, n: int = 4, beta: float = 0.25, transform=None, use_max: bool = False,
            mode: str = "aug"):
        """Test-time augmentation -> (probs (N, K), targets (N,)).

        mode="aug" (fastai v2, the default): predictions on n passes over the validation images
        with the training augmentations, averaged (or maxed), blended with the plain pass:
            probs = (1 - beta) * mean(augmented probs) + beta * plain probs.
        transform: the augmentation (default: the training loader's `transform`), drawing from
        `learn.rng`. use_max: the elementwise max of all passes instead. beta=None returns
        ((mean of augmented, plain), targets).

        mode="flip" / "shift" (airbench's tta_level 1 / 2; n, beta, transform, use_max unused):
        the model's logits on fixed views of each image (augment.tta_views), weighted and summed,
        then softmax. flip: the image and its mirror, 1/2 each. shift: half the flip average, a
        quarter each of the flip averages of the image shifted one pixel down-right and up-left
        (reflect padded): 6 passes."""
        if mode not in augment.TTA_MODES:
            raise ValueError(f"tta: mode must be one of {', '.join(augment.TTA_MODES)}, "
                             f"got {mode!r}")
        dl = self._eval_dl(dl, "tta")
        if getattr(dl, "shuffle", False):
            raise ValueError("tta: the loader shuffles, so its passes would not line up image by "
                             "image; use a loader with shuffle=False (e.g. the validation one)")
        if mode == "aug":
            transform = getattr(self.train_dl, "transform", None) if transform is None \
                else transform
            if transform is None:
                raise ValueError("tta: no augmentation: the training loader has no transform; "
                                 "pass transform=, or use mode='flip'")
        with_transform = getattr(dl, "with_transform", None)
        if with_transform is None:
            raise TypeError(f"tta: the loader ({type(dl).__name__}) has no with_transform("
                            f"transform, rng) to make an augmented copy; use a tc.data.DataLoader")
        if mode != "aug":
            logits, targets = 0.0, None
            for weight, view in augment.tta_views(mode):
                out, targets = self._logits(dl if view is None else with_transform(view))
                logits = logits + weight * out
            with no_grad():
                probs = F.softmax(Tensor(logits.astype(out.dtype)), dim=-1).data
            return probs, targets
        aug_dl = with_transform(transform, rng=self.rng)
        passes = [self.get_preds(aug_dl)[0] for _ in range(n)]
        plain, targets = self.get_preds(dl)
        if beta is None:
            return (np.mean(passes, axis=0), plain), targets
        if use_max:
            return np.maximum(np.max(passes, axis=0), plain), targets
        return augment.tta_combine(plain, passes, beta).astype(plain.dtype), targets

    def _logits(self, dl):
        """(raw outputs (N, K), targets (N,)) over dl, through the validation events (as
        get_preds: callbacks that swap weights for evaluation apply)."""
        gather = _GatherLogits()
        with self.added_cbs([gather]):
            self._do_validate(dl)
        if not gather.logits:
            raise ValueError("tta: the data loader gave no batches")
        return np.concatenate(gather.logits), np.concatenate(gather.targets)

    # ---- files -------------------------------------------------------------------------------
    def save(self, path, with_opt: bool = True, epoch=None, **meta) -> str:
        """Write the model (a tc.load-able model file) and, with_opt, the optimizer state, the
        random generators' state and `epoch` (training position) to resume from, atomically.

        The file's metadata holds the training loader's `classes`, `mean` and `std` when it has
        them (what prediction on new images needs), and any `meta` given."""
        path = os.fspath(path)
        state = self.model.state_dict()
        arrays = dict(state)
        learner = {"epoch": epoch}
        if with_opt and self.opt is not None:
            opt_state = self.opt.state_dict()
            learner["opt_groups"] = opt_state["param_groups"]
            learner["opt_state"] = {}
            for i, pstate in opt_state["state"].items():
                learner["opt_state"][str(i)] = {}
                for k, v in pstate.items():
                    if isinstance(v, np.ndarray):
                        arrays[f"__opt__/{i}/{k}"] = v
                        v = {"__array__": f"__opt__/{i}/{k}"}
                    learner["opt_state"][str(i)][k] = v
            gens = self._generators()
            learner["rng"] = [_jsonable_state(g.bit_generator.state) for g in gens]
            learner["cb_states"] = {}            # callbacks with a state to resume (Lookahead)
            for cb in self.cbs:
                cb_state = cb.state_dict() if callable(getattr(cb, "state_dict", None)) else {}
                for k, v in cb_state.items():
                    arrays[f"__cb__/{type(cb).__name__}/{k}"] = v
                if cb_state:
                    learner["cb_states"][type(cb).__name__] = sorted(cb_state)
        header = serialize.model_header(self.model, list(state), {**self._data_meta(), **meta})
        header["learner"] = learner
        serialize.write_model_file(path, arrays, header)
        return path

    def _data_meta(self) -> dict:
        """Class names and normalisation statistics of the training data, where known."""
        return {k: getattr(self.train_dl, k) for k in ("classes", "mean", "std")
                if getattr(self.train_dl, k, None) is not None}

    def load(self, path, with_opt: bool = True, strict: bool = True) -> "Learner":
        """Load a file written by `save` (or tc.save). with_opt: also restore the optimizer, the
        random state, callbacks' state (`learn.cb_states`: a Lookahead's average) and
        `learn.checkpoint_epoch` (pass it as start_epoch to resume)."""
        path = os.fspath(path)
        state, header = serialize.read_model_file(path)
        self.model.load_state_dict(state, strict=strict)
        learner = header.get("learner") or {}
        self.checkpoint_epoch = learner.get("epoch")
        if with_opt and "opt_groups" in learner:
            with np.load(path, allow_pickle=False) as npz:
                opt_state = {i: {k: npz[v["__array__"]] if isinstance(v, dict) else v
                                 for k, v in s.items()}
                             for i, s in learner["opt_state"].items()}
                # picked up by the callback of that name when the resumed fit starts
                self.cb_states = {name: {k: npz[f"__cb__/{name}/{k}"] for k in keys}
                                  for name, keys in learner.get("cb_states", {}).items()}
            if self.opt is None:
                self.create_opt()
            self.opt.load_state_dict({"state": opt_state, "param_groups": learner["opt_groups"]})
            gens = self._generators()
            if len(gens) != len(learner.get("rng", [])):
                raise ValueError(f"{path}: the checkpoint holds {len(learner.get('rng', []))} "
                                 f"random generators, this Learner has {len(gens)}; build it "
                                 f"the same way as the one that saved it")
            for g, s in zip(gens, learner["rng"]):
                g.bit_generator.state = s
        return self
