"""A tiny progress bar for the long-running commands (`tune`, `bench`), without a dependency.

On a terminal it redraws one line on stderr; otherwise (a pipe, a log file, CI) it prints a plain line
at most every `interval` seconds and at the end, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """progress = Progress(total, "bench"); progress.update(done, "what now"); progress.close()."""

    def __init__(self, total: float, label: str, *, stream: TextIO | None = None,
                 width: int = 28, interval: float = 15.0, enabled: bool = True) -> None:
        self.total = max(float(total), 1e-9)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.interval = interval
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._last_print = -1e9
        self._last_len = 0
        self.done = 0.0

    def update(self, done: float, note: str = "") -> None:
        self.done = min(max(float(done), 0.0), self.total)
        if not self.enabled:
            return
        now = time.perf_counter()
        if not self.tty and now - self._last_print < self.interval:
            return
        self._last_print = now
        self._write(self._line(note))

    def close(self, note: str = "done") -> None:
        if not self.enabled:
            return
        self.done = self.total
        self._write(self._line(note))
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()

    def _line(self, note: str) -> str:
        frac = self.done / self.total
        filled = round(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        return f"{self.label} [{bar}] {frac * 100:3.0f}% {elapsed:5.0f}s {note}"

    def _write(self, line: str) -> None:
        if self.tty:
            pad = max(self._last_len - len(line), 0)
            self.stream.write("\r" + line + " " * pad)
            self._last_len = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
