"""The one int-pair validator of the package: kernel sizes, strides, paddings, dilations."""
import numpy as np

__all__ = ["pair"]


def pair(value, name: str, op: str, minimum: int) -> tuple:
    """An int or a pair of ints as (rows, cols), each >= minimum; errors name the op."""
    items = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(items) != 2 or not all(isinstance(v, (int, np.integer)) for v in items):
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return int(items[0]), int(items[1])
