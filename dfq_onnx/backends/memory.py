"""Give a stage's freed memory back to the system before the next stage runs.

A stage that ran many ORT sessions and numpy temporaries (the activation decision: 2 S probe
sessions, the prefix cache, per-evaluation outputs) frees them when it returns, but glibc's allocator
keeps most of the freed heap: its mmap threshold grows to the largest block freed, so later blocks of
that size come from the heap, and a heap is only returned to the system from its top. The process
then carries the stage's peak into the next one (PP-OCRv4 rec: 0.62 GB after the decision against
0.24 GB before it). `release` collects reference cycles and asks glibc to return every free page
(`malloc_trim(0)`); elsewhere (no glibc) it only collects. It changes no value, only RSS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release() -> None:
    """Collect garbage and return free heap pages to the system (module docstring)."""
    gc.collect()
    trim = _trim()
    if trim is not None:
        trim(0)
