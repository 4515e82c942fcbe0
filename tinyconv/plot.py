"""Every training figure, drawn with matplotlib and saved as PNG.

    plot_lr_find(lrs, losses, suggestions)      loss against lr, log x axis, suggestions marked
    plot_loss(recorder)                         train loss per batch (raw, smoothed), valid loss
    plot_sched(recorder)                        lr and momentum of every parameter group, per batch
    plot_schedule(policy, ...)                  preview a policy ("one_cycle", "sgdr", ...) before
                                                training: the exact schedules fit_* would run
    plot_confusion_matrix(cm, classes)          counts (or row fractions), actual x predicted
    plot_top_losses(images, titles)             a grid of images with their captions
    show_batch, plot_augmentations              pictures of the data (from plot_data.py)

Each function returns a matplotlib Figure and, given `path`, writes it as a PNG. Figures are made
with matplotlib.figure.Figure, not pyplot: no window, no global state, no backend to choose, so it
works the same headless (it renders with Agg) as on a desktop; Jupyter displays a returned Figure.
matplotlib is imported with this module (and plot_data), not with tinyconv.
"""
from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from .plot_data import _grid, plot_augmentations, show_batch

__all__ = ["plot_lr_find", "plot_loss", "plot_sched", "plot_schedule", "plot_confusion_matrix",
           "plot_top_losses", "show_batch", "plot_augmentations"]


def _figure(nrows: int = 1, ncols: int = 1, figsize=(6.4, 4.4)):
    """A Figure and its axes as a 2-D array (rows, cols)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _finish(fig, path):
    fig.tight_layout()
    if path is not None:
        fig.savefig(os.fspath(path), dpi=100, format="png")
    return fig


def plot_lr_find(lrs, losses, suggestions=None, path=None, skip_end: int = 5):
    """The LR finder's curve: smoothed loss against lr on a log x axis.

    suggestions: {"valley": lr, ...} (learn.lr_find's result as a dict, or its namedtuple); each
    is marked on the curve and named, with its value, in the legend. skip_end drops the last
    points, where the loss usually shoots up and would squash the plot.
    """
    from .sched import loss_at
    lrs, losses = np.asarray(lrs, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if lrs.shape != losses.shape or lrs.ndim != 1 or len(lrs) == 0:
        raise ValueError(f"plot_lr_find: need lrs and losses of the same length, got "
                         f"{lrs.shape} and {losses.shape}")
    if len(lrs) > skip_end + 1 and skip_end > 0:
        lrs, losses = lrs[:-skip_end], losses[:-skip_end]
    keep = np.isfinite(losses)
    fig, axes = _figure()
    ax = axes[0, 0]
    ax.plot(lrs[keep], losses[keep], color="C0", label="smoothed loss")
    ax.set_xscale("log")
    ax.set_xlabel("Learning rate")
    ax.set_ylabel("Loss")
    ax.set_title("LR finder")
    if suggestions:
        items = suggestions._asdict().items() if hasattr(suggestions, "_asdict") \
            else suggestions.items()
        markers = "ovsD^*"
        for k, (name, lr) in enumerate(items):
            if lr is None or not np.isfinite(lr):
                continue
            ax.plot([lr], [loss_at(lrs[keep], losses[keep], lr)], linestyle="none",
                    marker=markers[k % len(markers)], markersize=8, color=f"C{k + 1}",
                    label=f"{name}: {lr:.2e}")
    ax.legend()
    return _finish(fig, path)


def plot_loss(recorder, path=None, skip_start: int = 5, with_valid: bool = True):
    """Training loss per batch (raw and smoothed) and validation loss at the end of each epoch,
    against the batch count. recorder: learn.recorder (raw_losses, losses, values, iters)."""
    raw, smooth = np.asarray(recorder.raw_losses), np.asarray(recorder.losses)
    start = min(skip_start, max(len(raw) - 1, 0))
    x = np.arange(start, len(raw))
    fig, axes = _figure()
    ax = axes[0, 0]
    ax.plot(x, raw[start:], color="C0", alpha=0.3, label="train (per batch)")
    ax.plot(x, smooth[start:], color="C0", label="train (smoothed)")
    if with_valid and recorder.values:
        valid = np.array([v[1] for v in recorder.values], dtype=np.float64)
        ax.plot(np.asarray(recorder.iters) - 1, valid, color="C1", marker="o",
                label="valid (per epoch)")
    ax.set_xlabel("Batch")
    ax.set_ylabel("Loss")
    ax.set_title("Losses")
    ax.legend()
    return _finish(fig, path)


def _plot_hypers(axes, series: dict, xlabel: str, boundaries=()):
    """One subplot per hyper-parameter; series: name -> (steps, groups) array."""
    for ax, (name, values) in zip(axes, series.items()):
        values = np.atleast_2d(np.asarray(values, dtype=np.float64).T).T
        for g in range(values.shape[1]):
            ax.plot(values[:, g], label=f"group {g}" if values.shape[1] > 1 else None)
        for b in boundaries:
            ax.axvline(b, color="grey", linewidth=0.5, linestyle=":")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
        ax.set_title(name)
        if values.shape[1] > 1:
            ax.legend()


def plot_sched(recorder, path=None):
    """The lr and momentum of every parameter group at each training batch of the last fit."""
    if not recorder.group_lrs:
        raise ValueError("plot_sched: nothing recorded yet (fit first)")
    fig, axes = _figure(1, 2, figsize=(10, 4))
    _plot_hypers(axes[0], {"lr": recorder.group_lrs, "momentum": recorder.group_moms}, "Batch",
                 boundaries=recorder.iters[:-1])
    return _finish(fig, path)


def plot_schedule(policy, n_epoch: int = 1, n_iter: int = 100, path=None, **kwargs):
    """Preview a training policy before training: the values it will set at each batch.

    policy: a name from sched.POLICIES with its arguments, e.g.
    plot_schedule("one_cycle", n_epoch=5, n_iter=469, lr_max=0.1) or
    plot_schedule("sgdr", n_iter=100, lr_max=0.1, n_cycles=3, cycle_len=1), the exact schedules of
    the matching learn.fit_* method; or a function f(pos); or a dict {"lr": f, "momentum": g}.
    n_iter: batches per epoch. Epoch boundaries are dotted lines.
    """
    from .sched import policy as policy_scheds
    if isinstance(policy, str):
        scheds, n_epoch = policy_scheds(policy, n_epoch=n_epoch, n_iter=n_iter, **kwargs)
        title = policy
    elif callable(policy):
        scheds, title = {"lr": policy}, getattr(policy, "__name__", "schedule")
    elif isinstance(policy, dict):
        scheds, title = policy, "schedule"
    else:
        raise TypeError(f"plot_schedule: policy must be a name, a function or a dict, "
                        f"got {type(policy).__name__}")
    total = n_epoch * n_iter
    series = {name: [np.ravel(f(i / total)) for i in range(total)] for name, f in scheds.items()}
    fig, axes = _figure(1, len(series), figsize=(5 * len(series), 4))
    _plot_hypers(axes[0], series, "Batch", boundaries=[e * n_iter for e in range(1, n_epoch)])
    fig.suptitle(f"{title}: {n_epoch} epochs x {n_iter} batches")
    return _finish(fig, path)


def plot_confusion_matrix(cm, classes, normalize: bool = False, path=None,
                          title: str = "Confusion matrix"):
    """cm (K, K) counts, rows actual, columns predicted; normalize shows each row's fractions.
    Cells are annotated when there are at most 20 classes."""
    cm = np.asarray(cm)
    K = len(classes)
    if cm.shape != (K, K):
        raise ValueError(f"plot_confusion_matrix: cm {cm.shape} does not match {K} classes")
    values = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    size = max(4.0, 0.5 * K + 2)
    fig, axes = _figure(figsize=(size, size))
    ax = axes[0, 0]
    image = ax.imshow(values, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(K), labels=classes, rotation=90)
    ax.set_yticks(range(K), labels=classes)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("Actual")
    ax.set_title(title)
    if K <= 20:
        threshold = values.max() / 2 if values.size else 0
        for i in range(K):
            for j in range(K):
                text = f"{values[i, j]:.2f}" if normalize else f"{int(values[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if values[i, j] > threshold else "black")
    return _finish(fig, path)


def plot_top_losses(images, titles, path=None, ncols: int = 3):
    """A grid of images (k, H, W, C) uint8 (C = 1 or 3) with one caption each."""
    images = np.asarray(images)
    if images.ndim != 4 or len(titles) != len(images):
        raise ValueError(f"plot_top_losses: need images (k, H, W, C) and k titles, got "
                         f"{images.shape} and {len(titles)} titles")
    fig = _grid(images, titles, ncols, tile_inches=3.0)   # the same grid as show_batch
    return _finish(fig, path)
