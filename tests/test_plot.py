"""Plots are produced, saved as PNG, and carry the right axes: log-scaled x on the LR finder with
every suggestion marked and named, losses and schedules per batch, policy previews."""
import numpy as np
import pytest

from tinyconv import plot, sched
from tinyconv.learner import Learner

from test_learner import MLP, Loader, data

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


@pytest.fixture
def trained():
    learn = Learner(MLP(), Loader(*data(40), 8), Loader(*data(16, seed=3), 8), silent=True)
    learn.fit_one_cycle(2, slice(1e-3, 1e-1))
    return learn


def test_plot_lr_find_has_a_log_x_axis_and_names_each_suggestion(tmp_path):
    lrs = np.logspace(-6, 1, 100)
    losses = 2.0 - np.tanh(np.log10(lrs) + 3) + np.where(lrs > 1, 10 * (lrs - 1), 0)
    sugg = sched.suggest_lrs(lrs, losses, 100)
    fig = plot.plot_lr_find(lrs, losses, suggestions=sugg, path=tmp_path / "lr.png")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "Learning rate" and ax.get_ylabel() == "Loss"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    for name, lr in sugg._asdict().items():
        assert f"{name}: {lr:.2e}" in labels
    # each marker sits at its lr, on the curve
    markers = {line.get_label().split(":")[0]: line for line in ax.get_lines()[1:]}
    x, y = markers["minimum"].get_data()
    assert x[0] == sugg.minimum
    assert y[0] == pytest.approx(np.interp(np.log10(sugg.minimum), np.log10(lrs), losses))
    # the last 5 points are skipped
    assert len(ax.get_lines()[0].get_xdata()) == 95
    assert is_png(tmp_path / "lr.png")


def test_recorder_plot_lr_find_after_a_sweep(tmp_path):
    learn = Learner(MLP(), Loader(*data(40), 8), None, silent=True)
    learn.lr_find(num_it=30)
    fig = learn.recorder.plot_lr_find(path=tmp_path / "lr.png")
    assert fig.axes[0].get_xscale() == "log" and len(fig.axes[0].get_lines()) == 5
    assert is_png(tmp_path / "lr.png")


def test_plot_loss_draws_train_per_batch_and_valid_per_epoch(trained, tmp_path):
    fig = trained.recorder.plot_loss(path=tmp_path / "loss.png", skip_start=0)
    ax = fig.axes[0]
    raw, smooth, valid = ax.get_lines()
    assert raw.get_label() == "train (per batch)" and valid.get_label() == "valid (per epoch)"
    np.testing.assert_array_equal(raw.get_ydata(), trained.recorder.raw_losses)
    np.testing.assert_array_equal(smooth.get_ydata(), trained.recorder.losses)
    np.testing.assert_array_equal(valid.get_xdata(), [4, 9])        # last batch of each epoch
    np.testing.assert_array_equal(valid.get_ydata(), [v[1] for v in trained.recorder.values])
    assert ax.get_xlabel() == "Batch" and ax.get_ylabel() == "Loss"
    assert is_png(tmp_path / "loss.png")


def test_plot_sched_shows_lr_and_momentum_of_every_group(trained, tmp_path):
    fig = trained.recorder.plot_sched(path=tmp_path / "sched.png")
    lr_ax, mom_ax = fig.axes[:2]
    assert lr_ax.get_ylabel() == "lr" and mom_ax.get_ylabel() == "momentum"
    lines = lr_ax.get_lines()[:3]
    assert [line.get_label() for line in lines] == ["group 0", "group 1", "group 2"]
    np.testing.assert_array_equal(lines[2].get_ydata(), trained.recorder.lrs)
    np.testing.assert_allclose(lines[0].get_ydata(), np.array(trained.recorder.lrs) / 100,
                               rtol=1e-12)
    assert is_png(tmp_path / "sched.png")


@pytest.mark.parametrize("policy, kwargs, n_epoch", [
    ("one_cycle", dict(lr_max=0.1), 3),
    ("sgdr", dict(lr_max=0.1, n_cycles=3, cycle_len=1, cycle_mult=2), 7),
    ("cyclic", dict(base_lr=0.01, max_lr=0.1, step_size=10), 3),
    ("flat_cos", dict(lr=0.1), 3),
    ("constant", dict(lr=0.1), 3),
])
def test_plot_schedule_previews_every_policy(policy, kwargs, n_epoch, tmp_path):
    fig = plot.plot_schedule(policy, n_epoch=3, n_iter=20, path=tmp_path / "s.png", **kwargs)
    lr_ax = fig.axes[0]
    assert lr_ax.get_ylabel() == "lr" and lr_ax.get_xlabel() == "Batch"
    y = lr_ax.get_lines()[0].get_ydata()
    assert len(y) == n_epoch * 20
    assert max(y) == pytest.approx(0.1)
    assert is_png(tmp_path / "s.png")
    if policy in ("one_cycle", "cyclic"):
        assert fig.axes[1].get_ylabel() == "momentum"


def test_plot_schedule_of_a_function_matches_it():
    f = sched.one_cycle(1.0)
    fig = plot.plot_schedule(f, n_iter=50)
    np.testing.assert_array_equal(fig.axes[0].get_lines()[0].get_ydata(),
                                  [f(i / 50) for i in range(50)])


def test_plot_confusion_matrix_axes_and_cells(tmp_path):
    cm = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 9]])
    fig = plot.plot_confusion_matrix(cm, ["a", "b", "c"], path=tmp_path / "cm.png")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Predicted" and ax.get_ylabel() == "Actual"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    texts = {(t.get_position(), t.get_text()) for t in ax.texts}
    assert ((0, 1), "2") in texts and ((2, 2), "9") in texts     # (x=predicted, y=actual)
    np.testing.assert_array_equal(ax.get_images()[0].get_array(), cm)
    fig = plot.plot_confusion_matrix(cm, ["a", "b", "c"], normalize=True)
    np.testing.assert_allclose(fig.axes[0].get_images()[0].get_array()[1], [0.2, 0.7, 0.1])
    assert is_png(tmp_path / "cm.png")


def test_plot_top_losses_grid(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, size=(4, 8, 8, 1), dtype=np.uint8)
    fig = plot.plot_top_losses(images, ["a", "b", "c", "d"], path=tmp_path / "t.png", ncols=3)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titled == ["a", "b", "c", "d"] and len(fig.axes) == 6
    assert is_png(tmp_path / "t.png")
    with pytest.raises(ValueError, match="k titles"):
        plot.plot_top_losses(images, ["a"])
