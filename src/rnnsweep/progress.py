"""A progress line for a worker's log: what it trains, how far, how fast, and when it will be done."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """A progress line for log files: printed every `interval_s` and at the end, never with \\r."""

    def __init__(self, label: str, total: int, interval_s: float) -> None:
        self.label, self.total, self.interval_s = label, total, interval_s
        self.last = 0.0

    def update(self, step: int, ema: float, steps_per_s: float) -> None:
        now = time.monotonic()
        if step < self.total and now - self.last < self.interval_s:
            return
        self.last = now
        filled = int(20 * step / self.total)
        eta = (self.total - step) / max(steps_per_s, 1e-9)
        print(
            f"{self.label} [{'#' * filled}{'.' * (20 - filled)}] step {step}/{self.total} "
            f"ema {ema:.4f} {steps_per_s:.0f} steps/s ETA {eta:.0f}s",
            file=sys.stderr,
            flush=True,
        )
