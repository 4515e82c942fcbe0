"""One small pool of threads for the heavy kernels, and BLAS kept out of its way.

Why this exists (measured on a 2-core machine, float32 GEMMs of convolution size):

- OpenBLAS on 2 threads reaches ~85 GFLOP/s on a (256 x 2304) @ (2304 x 256) product, because
  every call pays a fork/join. Two Python threads, each calling *single-threaded* OpenBLAS on its
  own half of the batch, reach ~2 x 125 GFLOP/s: the GIL is released inside np.matmul and inside
  our `nogil` Numba kernels, so the two threads really run in parallel.
- OpenBLAS's idle workers busy-wait for ~2^28 CPU cycles (~0.1 s) after each call; on 2 cores
  they steal time from whatever runs next. OPENBLAS_THREAD_TIMEOUT shortens that spin.
- OpenBLAS (0.3.31) does not recognise AMD Zen 5 and falls back to its AVX2 "Haswell" kernels:
  ~120 GFLOP/s per core, against ~210 with its AVX-512 "SkylakeX" kernels on the same core. On an
  AMD CPU with AVX-512 we ask for those (OPENBLAS_CORETYPE=SkylakeX).

Both variables are only read when OpenBLAS is loaded, so they must be set before NumPy is first
imported: import this module first (tinyconv/__init__.py does). A value already in the
environment is kept; TINYCONV_BLAS_TUNING=0 leaves both alone.

So convolution, pooling and batch norm split their work into tasks (a few images, a range of
channels) and `parallel_for` runs them on `num_threads()` threads - the calling thread plus a
persistent pool - with BLAS switched to one thread for the duration. There are never more busy
threads than cores, and nothing spins.

Environment: TINYCONV_NUM_THREADS (default: the CPUs this process may use).
"""
import os


def _cpu_has_avx512_amd() -> bool:
    """True on an AMD CPU with the AVX-512 subsets OpenBLAS's SkylakeX kernels use (Linux only)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read(1 << 16)
    except OSError:
        return False
    first = info.split("\n\n", 1)[0]
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    flags = set(fields.get("flags\t\t", fields.get("flags", "")).split())
    vendor = fields.get("vendor_id\t", fields.get("vendor_id", "")).strip()
    return vendor == "AuthenticAMD" and {"avx512f", "avx512dq", "avx512cd", "avx512bw",
                                         "avx512vl"} <= flags


# Must run before NumPy loads OpenBLAS; setdefault keeps a value the user chose.
if os.environ.get("TINYCONV_BLAS_TUNING", "1") != "0":
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")   # log2 of the spin in cycles (min 4)
    if _cpu_has_avx512_amd():
        os.environ.setdefault("OPENBLAS_CORETYPE", "SkylakeX")

import contextlib  # noqa: E402
import ctypes  # noqa: E402
import itertools  # noqa: E402
import threading  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

__all__ = ["num_threads", "parallel_for", "single_threaded_blas", "scratch", "blas_info"]

_pool = None
_pool_lock = threading.Lock()
_in_worker = threading.local()
_blas = None                      # (set_num_threads, get_num_threads) or () when not found
_blas_previous = 1
_scratch = threading.local()      # per thread: {(name, dtype): flat ndarray}, grown on demand


def num_threads() -> int:
    """Threads used by the kernels: TINYCONV_NUM_THREADS, else the CPUs available to us."""
    value = os.environ.get("TINYCONV_NUM_THREADS")
    if value:
        n = int(value)
        if n < 1:
            raise ValueError(f"TINYCONV_NUM_THREADS must be >= 1, got {value!r}")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                                    # macOS, Windows
        return os.cpu_count() or 1


def _find_openblas():
    """OpenBLAS's (set_num_threads, get_num_threads), located among the loaded libraries.

    NumPy wheels ship OpenBLAS under prefixed names (scipy_openblas_*64_); a system build uses the
    plain names. Returns () when no OpenBLAS is loaded (MKL, Accelerate): then BLAS keeps its own
    threads and the pool still works, only less efficiently.
    """
    import numpy  # noqa: F401  (loads OpenBLAS)
    names = [("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
             ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
             ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
             ("openblas_set_num_threads", "openblas_get_num_threads")]
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return ()
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in names:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                setter, getter = getattr(lib, set_name), getattr(lib, get_name)
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                return setter, getter
    return ()


def blas_info() -> str:
    """OpenBLAS's name for the kernels it runs (e.g. 'SkylakeX'), or 'unknown'."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower()})
    except OSError:
        return "unknown"
    for path in paths:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                     "openblas_get_corename64_", "openblas_get_corename"):
            if hasattr(lib, name):
                fn = getattr(lib, name)
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return "unknown"


_blas_users = 0                   # parallel regions running now (callers may be several threads)


@contextlib.contextmanager
def single_threaded_blas():
    """Inside the block, BLAS uses one thread (our pool supplies the parallelism).

    Nested and concurrent blocks are counted: the first one in switches BLAS to one thread, the
    last one out restores the previous setting.
    """
    global _blas, _blas_users, _blas_previous
    with _pool_lock:
        if _blas is None:
            _blas = _find_openblas()
        if _blas and _blas_users == 0:
            _blas_previous = _blas[1]()
            if _blas_previous != 1:
                _blas[0](1)
        _blas_users += 1
    try:
        yield
    finally:
        with _pool_lock:
            _blas_users -= 1
            if _blas and _blas_users == 0 and _blas_previous != 1:
                _blas[0](_blas_previous)


def _get_pool(n_workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < n_workers:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="tinyconv")
        return _pool


def parallel_for(task, n_tasks: int) -> None:
    """Run task(i, worker) for every i in range(n_tasks), spread over num_threads() threads.

    Tasks are handed out one at a time (a shared counter), so a thread slowed by another process
    simply takes fewer. `worker` is in range(num_threads()) and is unique among the threads running
    at the same time: use it to keep per-worker partial sums. The calling
    thread is worker 0. Exceptions from any task are re-raised after all threads have stopped.
    Per-thread scratch memory: `scratch()`.
    """
    n_workers = min(num_threads(), n_tasks)
    if n_workers <= 1 or getattr(_in_worker, "active", False):
        for i in range(n_tasks):
            task(i, 0)
        return
    counter = itertools.count()
    failed = []

    def run(worker):
        _in_worker.active = True
        try:
            for i in iter(counter.__next__, None):   # next() on a count is atomic under the GIL
                if i >= n_tasks or failed:
                    return
                task(i, worker)
        except BaseException as error:                # noqa: BLE001  re-raised below
            failed.append(error)
        finally:
            _in_worker.active = False

    with single_threaded_blas():
        pool = _get_pool(n_workers - 1)
        futures = [pool.submit(run, w) for w in range(1, n_workers)]
        run(0)
        for future in futures:
            future.result()
    if failed:
        raise failed[0]


def scratch(name: str, shape: tuple, dtype):
    """A scratch array of `shape` private to the calling thread, reused between calls (not zeroed).

    Allocating a fresh multi-megabyte buffer per tile costs page faults; these stay warm in cache.
    Per thread, not per worker index, so that two threads running kernels at once never share one.
    """
    import numpy as np
    dtype = np.dtype(dtype)
    size = 1
    for n in shape:
        size *= int(n)
    buffers = _scratch.__dict__.setdefault("buffers", {})
    flat = buffers.get((name, dtype.str))
    if flat is None or flat.size < size:
        flat = np.empty(max(size, 1), dtype=dtype)
        buffers[(name, dtype.str)] = flat
    return flat[:size].reshape(shape)
