"""glibc keeps a training process's freed blocks for reuse (``ponder.memory``)."""

import subprocess
import sys
from pathlib import Path

import pytest

import ponder.memory

# In a fresh interpreter (nothing has moved glibc's thresholds yet): load memory.py on its own,
# maybe call keep_freed_memory, allocate 16 MiB and count the blocks glibc mapped for it.
PROBE = """
import ctypes, ctypes.util, importlib.util, sys
spec = importlib.util.spec_from_file_location("memory", sys.argv[1])
memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory)
if sys.argv[2] == "keep":
    assert memory.keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in FIELDS.split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
before = libc.mallinfo2().hblks
block = libc.malloc(16 << 20)
print(libc.mallinfo2().hblks - before)
libc.free(ctypes.c_void_p(block))
"""


def _mapped_blocks(mode: str) -> int:
    path = Path(ponder.memory.__file__)
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), mode], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return int(out.stdout.strip())


def test_large_blocks_come_from_the_heap_once_freed_memory_is_kept():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    try:
        baseline = _mapped_blocks("default")
    except subprocess.CalledProcessError:
        pytest.skip("no mallinfo2 (glibc < 2.33 or not glibc)")
    assert baseline == 1  # glibc's default: a 16 MiB block is mapped on its own
    assert _mapped_blocks("keep") == 0
