"""Argument types for the command line: each value is checked while parsing.

A nonsense value (`--epochs 0`, `--lr nan`, `--valid-pct 1.5`) then fails before any data is read
or any training starts, as one line naming the option:

    tinyconv train: error: argument --epochs: must be an integer >= 1, got '0'

argparse calls `type(text)` and turns an `ArgumentTypeError` into exactly that line.
"""
import argparse
import math

__all__ = ["int_at_least", "finite_float"]


def int_at_least(low: int, high=None):
    """An argparse type: an integer >= `low` (and <= `high` if given: a loop or a picture whose
    size the number sets must stay finite)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, "
                                             f"got {text!r}")
        return value
    parse.__name__ = f"integer >= {low}" if high is None else f"integer in {low}..{high}"
    return parse


def finite_float(low=None, high=None, low_open=False, high_open=False):
    """An argparse type: a finite float in [low, high]; `*_open` excludes that end.

    nan and inf are refused: nan compares false with every bound, so without this check it
    would slip through each `low <= value` test and poison the run silently.
    """
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    where = f"in {left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    if high is None and low == 0:
        where = "positive" if low_open else "zero or positive"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            raise argparse.ArgumentTypeError(f"must be {where}, got {text!r}")
        return value
    parse.__name__ = f"number {where}"
    return parse
