"""Weight averaging: airbench's Lookahead and an EMA for evaluation, against the formula computed
here step by step (parameters and BN running statistics; integer buffers untouched), the final
net equal to the average, and no trace after lr_find; checkpoints resume bit-identically."""
import numpy as np
import pytest

from tinyconv import nn
from tinyconv.callbacks import EMA, Callback, CancelFit, Checkpoint, Lookahead, lookahead_decay
from tinyconv.learner import Learner
from tinyconv.optim import SGD

from test_learner import Loader


class LinearBN(nn.Module):
    """Linear 4 -> 3 -> BatchNorm over the 3 features (as (N, 3, 1, 1)) -> relu -> Linear 3 -> 2."""

    def __init__(self, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.l0 = nn.Linear(4, 3, rng=rng)
        self.bn = nn.BatchNorm2d(3, momentum=0.3)
        self.l1 = nn.Linear(3, 2, rng=rng)

    def forward(self, x):
        h = self.bn(self.l0(x).reshape(x.shape[0], 3, 1, 1)).reshape(x.shape[0], 3)
        return self.l1(h.relu())


def data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4))
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def make_learner(seed=0, **kwargs):
    model = LinearBN().astype(np.float64)             # float64: the formula is checked to 1e-12
    train = Loader(*data(12, 0), 4, shuffle=True, rng=np.random.default_rng(seed))   # 3 batches
    valid = Loader(*data(8, 1), 4)
    return Learner(model, train, valid, silent=True, lr=0.2,
                   opt_func=lambda groups, **kw: SGD(groups, momentum=0.9, **kw), **kwargs)


def float_state(learn):
    """Every float array of the model's state (what the average covers), copied, by name."""
    return {k: v.copy() for k, v in learn.model.state_dict().items()
            if np.issubdtype(v.dtype, np.floating)}


class Snap(Callback):
    """Copies the model's float state at `event`, in training (default) or validation."""

    def __init__(self, event, order, training=True):
        self.order, self.states, self.training = order, [], training
        setattr(self, event, self._snap)

    def _snap(self):
        if self.learn.training == self.training:
            self.states.append(float_state(self.learn))


def lerp(avg, net, decay):
    """The formula, written out: avg + (1 - decay) * (net - avg), array by array."""
    return {k: avg[k] + (1.0 - decay) * (net[k] - avg[k]) for k in avg}


def assert_state(got, expected, rtol=1e-12):
    assert got.keys() == expected.keys()
    for k in got:
        np.testing.assert_allclose(got[k], expected[k], rtol=rtol, atol=1e-15, err_msg=k)


# --- Lookahead: the formula step by step ---------------------------------------------------------

def test_lookahead_average_follows_the_formula_step_by_step_bn_stats_included():
    def decay(pos):
        return 0.5 + 0.4 * pos
    learn = make_learner()
    la = Lookahead(every=2, decay=decay, start_epoch=1)
    before = Snap("after_step", 29)                   # the net right after the optimizer step
    after = Snap("after_step", 31)                    # ... and after Lookahead had its turn
    starts = Snap("before_batch", 31)                 # what each training batch starts from
    ends = Snap("after_train", 31)                    # the net at the end of each epoch
    learn.fit(3, cbs=[la, before, after, starts, ends])          # 3 epochs x 3 batches = 9 steps
    avg, updates = None, 0
    for s in range(1, 10):                            # step s is the s-th optimizer step
        pre, post = before.states[s - 1], after.states[s - 1]
        if (s - 1) // 3 >= 1 and s % 2 == 0:          # epoch >= 1, every 2nd step: 4, 6, 8
            if avg is None:                           # the average starts as a copy of the net
                avg = pre
            else:
                avg = lerp(avg, pre, decay(s / 9))
                updates += 1
                assert not np.allclose(pre["l0.weight"], post["l0.weight"])
            assert_state(post, avg)                   # the net is the average now
        else:
            assert_state(post, pre, rtol=0)           # no averaging step: the net is untouched
        if s % 3 == 0 and avg is not None:            # epoch end: the net becomes the average
            assert_state(ends.states[s // 3 - 1], avg)
        if s < 9:                                     # training goes on from where the net is
            assert_state(starts.states[s], ends.states[s // 3 - 1] if s % 3 == 0 else post,
                         rtol=0)
    assert updates == 2
    assert_state(float_state(learn), avg)             # the final net is the average
    # the running statistics moved and are averaged like the weights; the counter is not
    assert not np.allclose(avg["bn.running_mean"], 0)
    assert int(learn.model.bn.num_batches_tracked.data) == 9


def test_steps_since_the_last_update_are_dropped_at_the_end_of_each_epoch():
    learn = make_learner()
    before, ends = Snap("after_step", 29), Snap("after_train", 31)
    learn.fit(2, cbs=[Lookahead(every=2, decay=0.0), before, ends])
    # step 2 started the average; epoch 0 ends after step 3: the net goes back to step 2's
    assert_state(ends.states[0], before.states[1], rtol=0)
    assert not np.allclose(before.states[2]["l0.weight"], before.states[1]["l0.weight"])
    # decay 0: the average becomes the net at each update (a lerp by 1): step 6 ends epoch 1
    assert_state(ends.states[1], before.states[5])


def test_decay_is_asked_at_step_over_total_steps():
    seen = []
    learn = make_learner()
    learn.fit(2, cbs=[Lookahead(every=2, decay=lambda pos: seen.append(pos) or 0.5,
                                total_steps=10)])
    assert seen == [4 / 10, 6 / 10]                   # step 2 starts the average
    seen.clear()
    learn.fit(2, cbs=[Lookahead(every=2, decay=lambda pos: seen.append(pos) or 0.5)])
    assert seen == [4 / 6, 6 / 6]                     # default: the fit's 6 steps


def test_default_decay_is_airbench_schedule():
    f = lookahead_decay()
    assert f(0.5) == pytest.approx(0.95 ** 5 * 0.125, rel=1e-15)
    assert Lookahead(every=5).decay(0.8) == pytest.approx(0.95 ** 5 * 0.8 ** 3, rel=1e-15)
    assert Lookahead(every=3).decay(1.0) == pytest.approx(0.95 ** 3, rel=1e-15)
    with pytest.raises(ValueError, match="total_steps must be an int >= 1"):
        EMA(total_steps=0)
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        Lookahead(every=0)
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\]"):
        Lookahead(decay=1.5)


# --- EMA: an average for evaluation ---------------------------------------------------------------

def test_ema_leaves_training_alone_validates_on_the_average_and_ends_as_it():
    plain = make_learner()
    plain_steps = Snap("after_step", 29)
    plain.fit(2, cbs=[plain_steps])

    learn = make_learner()
    ema = EMA(decay=0.8)
    after = Snap("after_step", 31)
    valid = Snap("after_pred", 31, training=False)    # the net each validation batch runs with
    restarts = Snap("before_batch", 31)
    learn.fit(2, cbs=[ema, after, valid, restarts])
    avg, epoch_avgs = None, []
    for s, net in enumerate(after.states, start=1):
        # the training trajectory is the one without the EMA, bit for bit
        assert_state(net, plain_steps.states[s - 1], rtol=0)
        avg = net if avg is None else lerp(avg, net, 0.8)   # starts as a copy at step 1
        if s % 3 == 0:
            epoch_avgs.append(avg)
    assert len(valid.states) == 4                     # 2 validation batches per epoch
    for i, state in enumerate(valid.states):
        assert_state(state, epoch_avgs[i // 2])       # validation ran on the average
    # after validation, training went on from the training weights, not the average
    assert not np.allclose(epoch_avgs[0]["l0.weight"], after.states[2]["l0.weight"])
    assert_state(restarts.states[3], after.states[2], rtol=0)
    assert_state(float_state(learn), avg)             # at the end the net is the average
    assert learn.recorder.values[-1][1] == pytest.approx(learn.validate()[0], rel=1e-12)


# --- lr_find and checkpoints ---------------------------------------------------------------------

def test_lr_find_leaves_no_trace_with_a_lookahead_kept_on_the_learner():
    la = Lookahead(every=2, decay=0.5)
    swept = make_learner(cbs=[la])
    swept.lr_find(num_it=15)
    assert la.avg is None                              # it did nothing during the sweep
    swept.fit(2)
    plain = make_learner(cbs=[Lookahead(every=2, decay=0.5)])
    plain.fit(2)
    assert_state(float_state(swept), float_state(plain), rtol=0)


def test_a_lookahead_given_to_fit_lives_for_that_fit_only():
    learn = make_learner()
    la = Lookahead(every=2)
    learn.fit(1, cbs=[la])
    assert la not in learn.cbs
    learn.lr_find(num_it=15)                            # and lr_find still leaves no trace
    assert la.learn is learn and not la._on


class Crash(Callback):
    order = 65                                         # after the checkpoint is written

    def after_epoch(self):
        if self.learn.epoch == 1:
            raise CancelFit


@pytest.mark.parametrize("make_avg", [
    lambda: Lookahead(every=2, decay=lookahead_decay(0.9, 2, 2.0), start_epoch=1),
    lambda: Lookahead(every=2, decay=0.6, sync_each_epoch=False),
    lambda: EMA(decay=0.7),
], ids=["lookahead", "lookahead-no-sync", "ema"])
def test_resume_from_a_checkpoint_with_an_average_is_bit_identical(tmp_path, make_avg):
    full = make_learner(seed=3)
    full.fit_one_cycle(4, 0.2, cbs=[make_avg()])
    ckpt = tmp_path / "ckpt.npz"
    interrupted = make_learner(seed=3)
    interrupted.fit_one_cycle(4, 0.2, cbs=[make_avg(), Checkpoint(ckpt), Crash()])
    resumed = make_learner(seed=3).load(ckpt)
    assert resumed.checkpoint_epoch == 2 and list(resumed.cb_states) == [
        type(make_avg()).__name__]
    resumed.fit_one_cycle(4, 0.2, cbs=[make_avg()], start_epoch=resumed.checkpoint_epoch)
    assert resumed.cb_states == {}                     # taken by the resumed Lookahead
    assert_state(float_state(resumed), float_state(full), rtol=0)


def test_airbench_style_setup_bn_bias_kind_lookahead_lr_find_and_resume(tmp_path):
    """BN biases at 64x lr / 1/64 wd, Nesterov SGD with coupled decay, one-cycle, a Lookahead
    kept on the Learner: lr_find leaves no trace, and a checkpoint resumes bit-identically."""
    from tinyconv.optim import bn_bias_kind

    def learner():
        learn = make_learner(seed=5, wd=5e-3 / 0.2, param_kinds=[bn_bias_kind(64, 1 / 64)],
                             cbs=[Lookahead(every=2, decay=lookahead_decay(0.9, 2, 3.0))])
        learn.opt_func = lambda groups, **kw: SGD(groups, momentum=0.85, nesterov=True, **kw)
        return learn

    full = learner()
    full.fit_one_cycle(4, 0.2)
    swept = learner()
    swept.create_opt()
    lrs = [g["lr"] for g in swept.opt.param_groups]
    assert lrs == [0.2, 0.2 * 64]
    swept.lr_find(num_it=15)
    assert [g["lr"] for g in swept.opt.param_groups] == lrs
    swept.fit_one_cycle(4, 0.2)
    assert_state(float_state(swept), float_state(full), rtol=0)
    ckpt = tmp_path / "ckpt.npz"
    interrupted = learner()
    interrupted.fit_one_cycle(4, 0.2, cbs=[Checkpoint(ckpt), Crash()])
    resumed = learner().load(ckpt)
    resumed.fit_one_cycle(4, 0.2, start_epoch=resumed.checkpoint_epoch)
    assert_state(float_state(resumed), float_state(full), rtol=0)
    assert [g["kind"] for g in resumed.opt.param_groups] == ["default", "bn_bias"]
