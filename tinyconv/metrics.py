"""Metrics: how good are the predictions? Plain functions of (predictions, targets) -> float.

    accuracy(logits, targets)               fraction of rows whose largest score is the target
    error_rate(logits, targets)             1 - accuracy
    top_k_accuracy(logits, targets, k=5)    fraction of rows with the target among the k largest

Predictions are scores (N, K) (logits or probabilities: only their order matters), targets are
class indices (N,). Both may be Tensors or arrays. The Learner averages a metric over the batches of
the validation set weighted by batch size, which gives the exact value over the whole set.
A metric's column name is its function name (`metric_name` also reads through functools.partial).
"""
from functools import partial

import numpy as np

__all__ = ["accuracy", "error_rate", "top_k_accuracy", "metric_name"]


def _scores_and_targets(name, inp, targ, axis):
    """The underlying arrays, with the shapes checked: scores (N, K), targets (N,)."""
    scores = np.asarray(getattr(inp, "data", inp))
    targets = np.asarray(getattr(targ, "data", targ))
    ax = axis % max(scores.ndim, 1)
    expected = scores.shape[:ax] + scores.shape[ax + 1:]
    if scores.ndim < 1 or targets.shape != expected:
        raise ValueError(f"{name}: predictions {scores.shape} need targets of shape {expected} "
                         f"(the predictions without the class axis {axis}), got {targets.shape}")
    return scores, targets


def accuracy(inp, targ, axis: int = -1) -> float:
    """Fraction of rows where argmax(inp) == targ. inp (N, K) scores, targ (N,) int -> float."""
    scores, targets = _scores_and_targets("accuracy", inp, targ, axis)
    return float(np.mean(scores.argmax(axis=axis) == targets))


def error_rate(inp, targ, axis: int = -1) -> float:
    """1 - accuracy. inp (N, K) scores, targ (N,) int -> float."""
    return 1.0 - accuracy(inp, targ, axis=axis)


def top_k_accuracy(inp, targ, k: int = 5, axis: int = -1) -> float:
    """Fraction of rows whose target is among the k largest scores. inp (N, K), targ (N,) -> float.

    A tie at the k-th place counts the target as in (it scored as high as a top-k class), so the
    result does not depend on how a sort happens to break ties.
    """
    scores, targets = _scores_and_targets("top_k_accuracy", inp, targ, axis)
    n_classes = scores.shape[axis]
    if not 1 <= k <= n_classes:
        raise ValueError(f"top_k_accuracy: k must be in [1, {n_classes}] (the number of classes), "
                         f"got {k}")
    scores = np.moveaxis(scores, axis, -1)
    target_score = np.take_along_axis(scores, targets[..., None].astype(np.intp), axis=-1)
    # the target is in the top k iff fewer than k classes score strictly higher
    n_higher = (scores > target_score).sum(axis=-1)
    return float(np.mean(n_higher < k))


def metric_name(metric) -> str:
    """The column name of a metric: its function name ("accuracy"), also through a partial
    (top_k_accuracy with k=3 is "top_3_accuracy")."""
    if isinstance(metric, partial):
        if metric.func is top_k_accuracy and "k" in metric.keywords:
            return f"top_{metric.keywords['k']}_accuracy"
        return metric_name(metric.func)
    return getattr(metric, "__name__", type(metric).__name__)
