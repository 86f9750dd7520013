"""Handing a finished step's memory back to the operating system.

A step that loads a model (edit, evaluate) frees it when it returns, but glibc keeps freed heap
pages for reuse, and tensors between its mmap threshold (which it raises after each large free)
and a page land on that heap: a worker process that runs refresh after refresh then holds the high
water mark of every step it ever ran. `release_freed_memory` collects garbage and asks glibc to
return its free pages (`malloc_trim`), so what a process holds between steps is what it uses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from functools import cache, wraps
from typing import Callable, ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def resident_mb(pid: int | str = "self") -> float:
    """A process's resident memory now, in MB (this one by default; 0 where /proc is missing or the
    process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def release_freed_memory() -> float:
    """Collect garbage and return glibc's free heap pages to the system; returns the MB released
    (0 on a C library without `malloc_trim`, e.g. musl or macOS, where this only collects)."""
    before = resident_mb()
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    released = max(0.0, before - resident_mb())
    log.debug("released %.0f MB of freed memory", released)
    return released


def releases_memory(step: Callable[P, R]) -> Callable[P, R]:
    """Decorator for a step that loads a model: once it returns (or raises) and its locals are
    gone, the memory they held goes back to the system (`release_freed_memory`)."""

    @wraps(step)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return step(*args, **kwargs)
        finally:
            release_freed_memory()

    return run
