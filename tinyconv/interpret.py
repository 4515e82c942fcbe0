"""What did the classifier get wrong? Confusion matrix, most confused pairs, top losses.

    interp = ClassificationInterpretation.from_learner(learn)
    interp.confusion_matrix()            # (K, K) counts, rows actual, columns predicted
    interp.most_confused(min_val=2)      # [("cat", "dog", 14), ...]
    interp.top_losses(9)                 # (losses, indices) of the worst predictions
    interp.plot_confusion_matrix("cm.png"); interp.plot_top_losses(9, "top.png")
"""
from __future__ import annotations

import numpy as np


__all__ = ["ClassificationInterpretation"]


class ClassificationInterpretation:
    """Predictions over a dataset, held for analysis.

    probs (N, K), targets (N,) int, losses (N,) per item; classes: K names (default "0".."K-1");
    images (N, H, W, C) uint8, optional: the items, in the same order, for plot_top_losses.
    """

    def __init__(self, probs, targets, losses, classes=None, images=None):
        self.probs = np.asarray(probs)
        self.targets = np.asarray(targets).astype(np.int64)
        self.losses = np.asarray(losses)
        N, K = self.probs.shape
        if self.targets.shape != (N,) or self.losses.shape != (N,):
            raise ValueError(f"ClassificationInterpretation: probs {self.probs.shape} need "
                             f"targets and losses of shape ({N},), got {self.targets.shape} and "
                             f"{self.losses.shape}")
        self.classes = [str(c) for c in classes] if classes is not None else \
            [str(k) for k in range(K)]
        if len(self.classes) != K:
            raise ValueError(f"ClassificationInterpretation: {len(self.classes)} class names for "
                             f"{K} predicted classes")
        if images is not None and len(images) != N:
            raise ValueError(f"ClassificationInterpretation: {len(images)} images for {N} "
                             f"predictions")
        self.images = images
        self.preds = self.probs.argmax(axis=1)

    @classmethod
    def from_learner(cls, learn, dl=None) -> "ClassificationInterpretation":
        """Predictions of learn.model on dl (default: the validation loader), with the class
        names and images of its dataset when it has them (`.classes`, `.images`)."""
        dl = learn.valid_dl if dl is None else dl
        if getattr(dl, "shuffle", False):
            raise ValueError("ClassificationInterpretation: the loader shuffles, so predictions "
                             "could not be matched to its dataset's items; use one with "
                             "shuffle=False")
        probs, targets, losses = learn.get_preds(dl, with_loss=True)
        dataset = getattr(dl, "dataset", None)
        images = getattr(dataset, "images", None)
        if images is not None and len(images) != len(targets):
            images = None                     # e.g. drop_last: no longer one image per row
        return cls(probs, targets, losses, getattr(dataset, "classes", None), images)

    def confusion_matrix(self) -> np.ndarray:
        """(K, K) int64 counts: entry [a, p] = items of actual class a predicted as p."""
        K = len(self.classes)
        return np.bincount(self.targets * K + self.preds, minlength=K * K).reshape(K, K)

    def most_confused(self, min_val: int = 1) -> list:
        """Off-diagonal cells with at least min_val items, largest first:
        [(actual name, predicted name, count), ...]."""
        cm = self.confusion_matrix()
        np.fill_diagonal(cm, 0)
        actual, predicted = np.nonzero(cm >= max(min_val, 1))
        pairs = [(self.classes[a], self.classes[p], int(cm[a, p]))
                 for a, p in zip(actual, predicted)]
        return sorted(pairs, key=lambda t: -t[2])       # stable: ties stay in class order

    def top_losses(self, k=None, largest: bool = True):
        """(losses (k,), indices (k,)) of the k items with the largest (or smallest) loss."""
        order = np.argsort(-self.losses if largest else self.losses, kind="stable")
        order = order[:k] if k is not None else order
        return self.losses[order], order

    def plot_confusion_matrix(self, path=None, normalize: bool = False):
        """The confusion matrix as a figure (saved as PNG when path is given)."""
        from . import plot     # matplotlib loads only when a picture is drawn
        return plot.plot_confusion_matrix(self.confusion_matrix(), self.classes,
                                          normalize=normalize, path=path)

    def plot_top_losses(self, k: int = 9, path=None, ncols: int = 3):
        """The k worst items, captioned "predicted / actual / loss / probability of actual"."""
        if self.images is None:
            raise ValueError("plot_top_losses: no images (the loader's dataset has no .images); "
                             "pass images= to ClassificationInterpretation")
        losses, idxs = self.top_losses(k)
        titles = [f"{self.classes[self.preds[i]]} / {self.classes[self.targets[i]]} / "
                  f"{losses[n]:.2f} / {self.probs[i, self.targets[i]]:.2f}"
                  for n, i in enumerate(idxs)]
        from . import plot
        return plot.plot_top_losses(np.asarray(self.images)[idxs], titles, path=path,
                                    ncols=ncols)
