"""Pictures of the data: a batch with its labels, and many augmentations of one image.

Figures are built on matplotlib's Agg canvas directly (no pyplot, no global state, no display
needed) and returned; with `path` they are also saved as PNG.
"""
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tinyconv.augment import Compose, denormalize

__all__ = ["show_batch", "plot_augmentations"]


def _grid(tiles, titles, ncols, title=None, tile_inches=1.6):
    """A Figure showing uint8 (H, W, C) tiles in a grid, each with an optional title."""
    n = len(tiles)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(ncols * tile_inches, nrows * tile_inches + (0.4 if title else 0)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k >= n:
            continue
        img = tiles[k]
        if img.shape[2] == 1:
            ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(img, interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[k], fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _save(fig, path):
    if path is not None:
        fig.savefig(path, format="png", dpi=100)
    return fig


def show_batch(data, classes=None, n=16, ncols=8, mean=None, std=None, path=None, title=None):
    """Show n images with their labels; returns the Figure (saved as PNG when `path` is given).

    data: a DataLoader (its first batch, un-normalised with the loader's mean/std; augmented if
    the loader augments), a dataset with .images/.labels, or a pair (images, labels) where images
    are uint8 (N, H, W, C) or normalised float (N, C, H, W) (then give mean and std).
    """
    if hasattr(data, "one_batch"):
        x, labels = data.one_batch()
        images = denormalize(x, data.mean, data.std)
        classes = classes or data.classes
    elif hasattr(data, "images"):
        images, labels = data.images[:n], data.labels[:n]
        classes = classes or getattr(data, "classes", None)
    else:
        images, labels = data
        images = np.asarray(images)
        if images.dtype != np.uint8:
            if mean is None or std is None:
                raise ValueError("show_batch: float images need the mean and std they were "
                                 "normalised with")
            images = denormalize(images, mean, std)
    images, labels = images[:n], np.asarray(labels)[:n]
    titles = [classes[k] if classes is not None else str(k) for k in labels]
    return _save(_grid(list(images), titles, ncols, title), path)


def plot_augmentations(image, transform, n=11, ncols=4, rng=None, path=None,
                       title="variations of the same image"):
    """The original image and n random augmentations of it; returns the Figure.

    image: (H, W, C) uint8; transform: a Compose/Transform (or list) taking (images, rng).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"plot_augmentations: image must be (H, W, C) uint8, "
                         f"got {image.shape} {image.dtype}")
    if isinstance(transform, (list, tuple)):
        transform = Compose(transform)
    rng = rng if rng is not None else np.random.default_rng()
    variants = transform(np.repeat(image[None], n, axis=0), rng)   # one batch: n independent draws
    tiles = [image] + list(variants)
    titles = ["original"] + [f"#{k + 1}" for k in range(n)]
    return _save(_grid(tiles, titles, ncols, title), path)
