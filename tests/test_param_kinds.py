"""Parameter kinds: a named subset of parameters (BN biases) with its own lr and weight-decay
multipliers, composed with layer groups and discriminative lrs, honoured by every schedule, the LR
finder and checkpoints; the SGD update against a hand-computed formula and torch."""
import math

import numpy as np
import pytest

from tinyconv import nn
from tinyconv.callbacks import Callback
from tinyconv.learner import Learner
from tinyconv.optim import SGD, ParamKind, bn_bias_kind, kind_groups, layer_group_values, set_hyper


class ConvBN(nn.Module):
    """linear 8 -> 3 ("conv": a 1x1 conv over a flattened 2x2x2 input, without the conv
    kernels' compile time) -> BN (scale pinned at 1) -> relu -> linear 3 -> 2;
    layer groups [conv + bn, head]."""

    def __init__(self, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.conv = nn.Linear(8, 3, rng=rng)
        self.norm = nn.BatchNorm2d(3, weight=False)
        self.head = nn.Linear(3, 2, rng=rng)

    def forward(self, x):
        n = x.shape[0]
        h = self.norm(self.conv(x.reshape(n, 8)).reshape(n, 3, 1, 1)).reshape(n, 3)
        return self.head(h.relu())

    def groups(self):
        return [[self.conv, self.norm], self.head]


class Loader:
    def __init__(self, n=12, bs=4, seed=0):
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((n, 2, 2, 2)).astype(np.float32)
        self.y = (self.x.sum(axis=(1, 2, 3)) > 0).astype(np.int64)
        self.bs = bs

    def __len__(self):
        return -(-len(self.x) // self.bs)

    def __iter__(self):
        for b in range(len(self)):
            yield self.x[b * self.bs:(b + 1) * self.bs], self.y[b * self.bs:(b + 1) * self.bs]


def make_learner(**kwargs):
    kwargs.setdefault("param_kinds", [bn_bias_kind(lr_mult=64, wd_mult=1 / 64)])
    return Learner(ConvBN(), Loader(), Loader(8, seed=1), silent=True, **kwargs)


class GroupSpy(Callback):
    """After every step: (layer_group, kind, lr, weight_decay) of every optimizer group."""

    def __init__(self):
        self.seen = []

    def after_step(self):
        self.seen.append([(g["layer_group"], g["kind"], g["lr"], g["weight_decay"])
                          for g in self.learn.opt.param_groups])


# --- the split ----------------------------------------------------------------------------------

def test_each_layer_group_splits_into_default_and_the_kinds_it_holds():
    learn = make_learner(wd=0.1)
    learn.create_opt()
    m = learn.model
    got = [(g["layer_group"], g["kind"], [id(p) for p in g["params"]], g["lr_mult"], g["wd_mult"])
           for g in learn.opt.param_groups]
    assert got == [(0, "default", [id(m.conv.weight), id(m.conv.bias), id(m.norm.weight)], 1, 1),
                   (0, "bn_bias", [id(m.norm.bias)], 64, 1 / 64),
                   (1, "default", [id(m.head.weight), id(m.head.bias)], 1, 1)]
    # the weight decay of the kind is the base times wd_mult; lr likewise
    assert [g["weight_decay"] for g in learn.opt.param_groups] == [0.1, 0.1 / 64, 0.1]
    assert [g["lr"] for g in learn.opt.param_groups] == [1e-3, 1e-3 * 64, 1e-3]


def test_a_parameter_goes_to_the_first_kind_that_selects_it():
    model = ConvBN()
    conv_w = ParamKind("conv_w", lambda name, p, mod: name == "conv.weight", lr_mult=2)
    weights = ParamKind("weights", lambda name, p, mod: name.endswith("weight"), lr_mult=3)
    groups = kind_groups(model, [list(model.parameters())], [conv_w, weights])
    assert [(g["kind"], len(g["params"])) for g in groups] == \
        [("default", 3), ("conv_w", 1), ("weights", 2)]


def test_no_kinds_is_one_optimizer_group_per_layer_group_as_before():
    learn = make_learner(param_kinds=None, lr=slice(1e-3, 1e-2))
    learn.create_opt()
    assert [g["layer_group"] for g in learn.opt.param_groups] == [0, 1]
    assert [g["lr"] for g in learn.opt.param_groups] == pytest.approx([1e-3, 1e-2])


def test_kind_errors_are_clear():
    with pytest.raises(ValueError, match="select no parameter of the ConvBN"):
        make_learner(param_kinds=[ParamKind("x", lambda n, p, m: False)])
    with pytest.raises(ValueError, match="lr_mult must be a finite number > 0"):
        ParamKind("x", lambda n, p, m: True, lr_mult=0)
    with pytest.raises(ValueError, match="wd_mult must be a finite number >= 0"):
        ParamKind("x", lambda n, p, m: True, wd_mult=math.nan)
    with pytest.raises(ValueError, match="other than 'default'"):
        ParamKind("default", lambda n, p, m: True)
    with pytest.raises(TypeError, match="select must be a function"):
        ParamKind("x", "bias")
    with pytest.raises(ValueError, match="must differ"):
        make_learner(param_kinds=[bn_bias_kind(), bn_bias_kind()])
    with pytest.raises(TypeError, match="ParamKind objects"):
        make_learner(param_kinds=["bn_bias"])


def test_set_hyper_on_hand_built_groups_maps_each_group_to_itself():
    # an optimizer built without the Learner has no layer_group: group i is layer group i
    groups = [{"lr": 0.0, "lr_mult": 4.0}, {"lr": 0.0}]
    set_hyper(groups, "lr", [0.5, 0.25])
    set_hyper(groups, "momentum", [0.9, 0.8])
    assert [(g["lr"], g["momentum"]) for g in groups] == [(2.0, 0.9), (0.25, 0.8)]
    assert layer_group_values(groups, "lr") == [0.5, 0.25]


# --- every schedule scales the base lr of each layer group ----------------------------------------

def _fastai_one_cycle(lr_max, pos, pct=0.25, div=25.0, div_final=1e5):
    """fastai's one-cycle, written out: cosine lr_max/div -> lr_max -> lr_max/div_final."""
    def cos(a, b, t):
        return a + (1 + math.cos(math.pi * (1 - t))) * (b - a) / 2
    if pos < pct:
        return cos(lr_max / div, lr_max, pos / pct)
    return cos(lr_max, lr_max / div_final, (pos - pct) / (1 - pct))


def test_one_cycle_with_a_slice_gives_each_group_base_times_lr_mult_at_every_step():
    learn = make_learner(wd=5e-3)
    spy = GroupSpy()
    learn.fit_one_cycle(2, slice(1e-3, 1e-1), cbs=[spy])       # 3 batches x 2 epochs
    assert len(spy.seen) == 6
    lo, hi = 1e-3, 1e-1                                          # two layer groups: lo and hi
    for i, groups in enumerate(spy.seen):
        base = [_fastai_one_cycle(lo, i / 6), _fastai_one_cycle(hi, i / 6)]
        expected = [(0, "default", base[0], 5e-3), (0, "bn_bias", base[0] * 64, 5e-3 / 64),
                    (1, "default", base[1], 5e-3)]
        for (k, kind, lr, wd), (ek, ekind, elr, ewd) in zip(groups, expected):
            assert (k, kind) == (ek, ekind)
            assert lr == pytest.approx(elr, rel=1e-12) and wd == pytest.approx(ewd, rel=1e-12)
        # the recorder keeps the base lr of each layer group, not the 64x one
        assert learn.recorder.group_lrs[i] == pytest.approx(base, rel=1e-12)


def test_fit_set_hyper_and_lr_find_honour_the_multipliers():
    learn = make_learner()
    learn.fit(1, lr=[0.01, 0.02], wd=0.3)
    assert [(g["lr"], g["weight_decay"]) for g in learn.opt.param_groups] == \
        [(0.01, 0.3), (0.01 * 64, 0.3 / 64), (0.02, 0.3)]
    spy = GroupSpy()
    learn.add_cbs([spy])
    learn.lr_find(start_lr=1e-4, end_lr=1e-2, num_it=12)
    learn.remove_cbs([spy])
    for groups in spy.seen:                                     # the sweep scales the kinds too
        assert groups[1][2] == pytest.approx(64 * groups[0][2], rel=1e-12)
        assert groups[2][2] == pytest.approx(groups[0][2], rel=1e-12)
    # and lr_find leaves the lrs as they were
    assert [g["lr"] for g in learn.opt.param_groups] == [0.01, 0.01 * 64, 0.02]


# --- the update --------------------------------------------------------------------------------

def test_sgd_step_with_multipliers_matches_the_hand_computed_formula():
    lr, wd, mom = 0.05, 2e-3, 0.85
    learn = make_learner(opt_func=lambda groups, **kw: SGD(groups, momentum=mom, nesterov=True,
                                                           **kw), lr=lr, wd=wd)
    learn.create_opt()
    params = [p for g in learn.opt.param_groups for p in g["params"]]
    mults = [(g["lr_mult"], g["wd_mult"]) for g in learn.opt.param_groups for _ in g["params"]]
    rng = np.random.default_rng(3)
    start = [p.data.astype(np.float64) for p in params]
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(2)]
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = None if getattr(p, "frozen", False) else g.astype(np.float32)
        learn.opt.step()
    for p, p0, (lr_mult, wd_mult), g1, g2 in zip(params, start, mults, *grads):
        if getattr(p, "frozen", False):                         # the BN scale: never moved
            np.testing.assert_array_equal(p.data, p0)
            continue
        # torch's coupled decay and Nesterov momentum, by hand, at lr*lr_mult and wd*wd_mult
        a, d = lr * lr_mult, wd * wd_mult
        d1 = g1 + d * p0
        buf = d1
        p1 = p0 - a * (d1 + mom * buf)
        d2 = g2 + d * p1
        buf = mom * buf + d2
        p2 = p1 - a * (d2 + mom * buf)
        np.testing.assert_allclose(p.data, p2, rtol=1e-5, atol=1e-6)


def test_frozen_parameters_are_not_moved_by_lr_mult_weight_decay_or_momentum():
    learn = make_learner(wd=0.5, lr=0.1, train_bn=False,
                         opt_func=lambda groups, **kw: SGD(groups, momentum=0.9, **kw))
    model = learn.model
    learn.freeze()                                   # layer group 0 (conv + BN) frozen
    frozen = {n: p.data.copy() for n, p in model.named_parameters() if not n.startswith("head")}
    head = model.head.weight.data.copy()
    learn.fit(2)
    for name, p in model.named_parameters():
        if name in frozen:
            np.testing.assert_array_equal(p.data, frozen[name], err_msg=name)
    assert not np.array_equal(model.head.weight.data, head)
    learn.unfreeze()
    bias = model.norm.bias.data.copy()
    learn.fit(1)
    # unfrozen, the BN bias trains; the pinned BN scale (a frozen Parameter) never does
    assert not np.array_equal(model.norm.bias.data, bias)
    np.testing.assert_array_equal(model.norm.weight.data, np.ones(3, np.float32))


def test_matches_torch_sgd_with_airbench_style_groups():
    torch = pytest.importorskip("torch")
    lr, wd, mom, bias_scaler = 0.02, 5e-4, 0.85, 64.0
    # airbench: lr_biases = 64 lr, weight_decay = wd / lr per group (coupled, torch SGD)
    learn = make_learner(param_kinds=[bn_bias_kind(bias_scaler, 1 / bias_scaler)],
                         opt_func=lambda groups, **kw: SGD(groups, momentum=mom, nesterov=True,
                                                           **kw), lr=lr, wd=wd / lr)
    learn.create_opt()
    groups = learn.opt.param_groups
    tparams = [[torch.tensor(p.data.astype(np.float64), requires_grad=True)
                for p in g["params"]] for g in groups]
    topt = torch.optim.SGD(
        [dict(params=tparams[0], lr=lr, weight_decay=wd / lr),
         dict(params=tparams[1], lr=lr * bias_scaler, weight_decay=wd / (lr * bias_scaler)),
         dict(params=tparams[2], lr=lr, weight_decay=wd / lr)], momentum=mom, nesterov=True)
    rng = np.random.default_rng(5)
    for p in learn.model.parameters():
        p.data = p.data.astype(np.float64)
    for _ in range(3):
        for g, tg in zip(groups, tparams):
            for p, tp in zip(g["params"], tg):
                grad = rng.standard_normal(p.shape)
                p.grad = None if p.frozen else grad
                tp.grad = None if p.frozen else torch.tensor(grad)
        learn.opt.step()
        topt.step()
    for g, tg in zip(groups, tparams):
        for p, tp in zip(g["params"], tg):
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


# --- checkpoints ---------------------------------------------------------------------------------

def test_save_load_restores_the_kind_groups_and_refuses_a_different_split(tmp_path):
    learn = make_learner(opt_func=lambda groups, **kw: SGD(groups, momentum=0.9, **kw))
    learn.fit(1, lr=0.03, wd=0.2)
    path = learn.save(tmp_path / "ck.npz")
    saved = [(g["lr"], g["weight_decay"], g["kind"]) for g in learn.opt.param_groups]
    bufs = [learn.opt.state[id(p)]["momentum_buffer"].copy()
            for g in learn.opt.param_groups for p in g["params"] if id(p) in learn.opt.state]
    other = make_learner(opt_func=lambda groups, **kw: SGD(groups, momentum=0.9, **kw))
    other.load(path)
    assert [(g["lr"], g["weight_decay"], g["kind"]) for g in other.opt.param_groups] == saved
    got = [other.opt.state[id(p)]["momentum_buffer"]
           for g in other.opt.param_groups for p in g["params"] if id(p) in other.opt.state]
    assert len(got) == len(bufs) > 0
    for a, b in zip(got, bufs):
        np.testing.assert_array_equal(a, b)
    # groups of the same sizes but another kind (the conv bias instead of the BN bias)
    conv_bias = ParamKind("conv_bias", lambda name, p, m: name == "conv.bias", lr_mult=64)
    wrong = make_learner(param_kinds=[conv_bias])
    with pytest.raises(ValueError, match="param group 1 has kind 'bn_bias' in the saved"):
        wrong.load(path)
