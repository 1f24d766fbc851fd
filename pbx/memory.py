"""Handing freed memory back to the operating system after big one-off work.

Loading a config of 100,000 users, or the bindings they left in SQLite,
makes and frees many temporary objects. Python's small-object allocator
returns a 1 MiB arena only when it is entirely free, and glibc's `malloc`
keeps the larger blocks it freed (dict tables, lists, parser buffers) in
its heap for reuse: the process stays that much bigger for good, although
nothing uses the memory (13 MB of 119 MB resident after loading such a
config, measured). ``malloc_trim(0)`` asks glibc to release free pages
anywhere in its heap. It costs a walk of the heap, a few milliseconds,
so it is called after start-up and after a reload, never per request.

On a C library without ``malloc_trim`` (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
import time
from collections.abc import Callable

_malloc_trim: Callable[[int], int] | None = None
_looked_up = False


def give_back_free_memory() -> bool:
    """Return free heap pages to the kernel; True when the C library could do it."""
    global _malloc_trim, _looked_up
    if not _looked_up:
        _looked_up = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _malloc_trim = libc.malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = None
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


def leave_tls_unloaded() -> bool:
    """Keep pyOpenSSL and cryptography out of a process that serves no TLS.

    Twisted's reactor imports pyOpenSSL whenever it is installed, for a
    `listenSSL` that a PBX without TLS or WSS listeners never calls; with
    cryptography behind it that is 12 MB resident in every such process
    (measured: 52 -> 40 MB for the imports of the service). Called with the
    config in hand, before the reactor is imported (`pbx.tap`), it marks
    pyOpenSSL unavailable, which Twisted takes as TLS not installed. A TLS
    listener cannot appear later: one added by a reload is refused, the log
    saying to restart (`pbx.listening.Binder`). False when it is too late
    (already imported).
    """
    if "OpenSSL" in sys.modules or "twisted.internet.reactor" in sys.modules:
        return False
    sys.modules["OpenSSL"] = None  # type: ignore[assignment]
    return True


GC_PAUSE_REPORTED_S = 0.05
"""A collection pass this long or longer is logged: the PBX's budget for a pause.

Every request waits while the collector runs; 50 ms is a small share of
SIP's first retransmission interval (T1, 500 ms), and what issue 20 set as
the most a flood may cost (bench/flood.py counts the lines)."""


class CollectionPauses:
    """Times the cyclic garbage collector's passes and reports the long ones.

    A full collection walks every tracked object: with hundreds of thousands
    of transactions waiting out Timer J it can hold the reactor for long
    enough that phones retransmit. Each pass of at least ``threshold_s`` is
    handed to ``report(generation, seconds, collected)``; `install` hooks it
    into `gc.callbacks`, `uninstall` takes it out.
    """

    def __init__(self, report: Callable[[int, float, int], None], *,
                 threshold_s: float = GC_PAUSE_REPORTED_S,
                 clock: Callable[[], float] | None = None) -> None:
        self.report = report
        self.threshold_s = threshold_s
        self.clock = clock if clock is not None else time.perf_counter
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = self.clock()
            return
        elapsed = self.clock() - self._started
        if elapsed >= self.threshold_s:
            self.report(info.get("generation", -1), elapsed, info.get("collected", 0))

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
