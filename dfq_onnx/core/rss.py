"""Peak resident memory of one stretch of the compile (a pass), for the per-pass log line and the report.

The process's high-water mark (`getrusage` ru_maxrss, what `/usr/bin/time -v` reports) only grows, so
it tells a pass's peak exactly when the pass raised it; a pass that stays under an earlier peak would
read that earlier one. A daemon thread therefore also samples the current RSS (/proc/self/statm) every
SAMPLE_SECONDS while the pass runs. The pass's peak is the larger of the two: exact when the pass set
the process's high-water mark, else the sampled maximum (a short spike between two samples may be
missed). Where neither source exists (no /proc, no `resource`), the peak is None. Only memory is read:
no value of the compile depends on it.
"""

from __future__ import annotations

import os
import threading

SAMPLE_SECONDS = 0.02
_STATM = "/proc/self/statm"


def current_rss() -> int | None:
    """Resident bytes now (Linux /proc), else None."""
    try:
        with open(_STATM) as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def high_water() -> int | None:
    """The process's peak resident bytes so far (ru_maxrss: kB on Linux), else None."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMeter:
    """`with PeakMeter() as m: ...` then `m.peak`: the stretch's peak resident bytes (module docstring)."""

    def __init__(self, interval: float = SAMPLE_SECONDS):
        self.interval = interval
        self.peak: int | None = None
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while True:
            now = current_rss()
            if now is not None:
                self._sampled = max(self._sampled, now)
            if now is None or self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakMeter":
        self._before = high_water()
        if current_rss() is not None:
            self._thread = threading.Thread(target=self._sample, name="dfq-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sampled = max(self._sampled, current_rss() or 0)
        after = high_water()
        raised = after if after is not None and self._before is not None and after > self._before else 0
        self.peak = max(self._sampled, raised) or None
