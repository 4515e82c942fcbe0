"""Kernels: arrays in, arrays out. Two implementations with the same names and signatures.

    reference       plain NumPy, written to be read: the specification
    numba_kernels   Numba loops + BLAS, tiled and threaded: the fast path

The ops ask `backend()` for the active one at every call. It is chosen once from the environment
variable TINYCONV_KERNELS=numba|numpy (default numba) and can be switched for a block:

    with kernels.use_backend("numpy"):
        y = F.conv2d(x, w)          # runs the reference
"""
import contextlib
import os

from . import numba_kernels, reference

__all__ = ["backend", "backend_name", "set_backend", "use_backend", "BACKENDS"]

BACKENDS = {"numba": numba_kernels, "numpy": reference}


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"tinyconv kernels: unknown backend {name!r} (from TINYCONV_KERNELS or "
                         f"set_backend); choose one of {sorted(BACKENDS)}")
    return name


_active = _check(os.environ.get("TINYCONV_KERNELS", "numba").strip().lower() or "numba")


def backend():
    """The active kernel module (reference or numba_kernels)."""
    return BACKENDS[_active]


def backend_name() -> str:
    """'numba' or 'numpy'."""
    return _active


def set_backend(name: str) -> None:
    """Switch the kernels used from now on: 'numba' or 'numpy'."""
    global _active
    _active = _check(name)


@contextlib.contextmanager
def use_backend(name: str):
    """Run a block with the given kernels, then restore the previous choice."""
    previous = _active
    set_backend(name)
    try:
        yield BACKENDS[name]
    finally:
        set_backend(previous)
