"""tinyconv._memory: freed activations are reused, not handed back to the OS between steps."""
import ctypes.util
import subprocess
import sys

import pytest

from tinyconv import _memory


def test_freed_arrays_are_reused_instead_of_returned_to_the_os():
    # tinyconv's import raised glibc's mmap threshold: a freed 64 MB array's memory is handed
    # to the next one of the same size instead of coming back as fresh (page-faulting) pages
    if ctypes.util.find_library("c") is None or not _memory.keep_freed_memory():
        pytest.skip("no glibc mallopt here")
    probe = ("import numpy as np\n"
             "{setup}\n"
             "a = np.ones(1 << 24, np.float32); address = a.ctypes.data; del a\n"
             "b = np.empty(1 << 24, np.float32); print(b.ctypes.data == address, b[0] == 1)")
    kept = subprocess.run([sys.executable, "-c", probe.format(setup="import tinyconv")],
                          capture_output=True, text=True, check=True).stdout.split()
    assert kept == ["True", "True"]          # the same block, its old contents still there
    plain = subprocess.run([sys.executable, "-c", probe.format(setup="")],
                           capture_output=True, text=True, check=True).stdout.split()
    assert plain[1] == "False"               # without it: fresh zeroed pages from the OS
