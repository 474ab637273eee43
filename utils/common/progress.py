"""Plumbing shared by the command-line tools (dataset split, feature dump, artifact tools):
progress that reads well in a terminal (tqdm) and in a nohup log (periodic plain lines with rate
and ETA), and expected errors reported as one line with a non-zero exit status."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Optional

from utils.common.logging_utils import format_duration, stdout_is_terminal


class ProgressReporter:
    """`update(n)` after each unit of work; `close()` prints the final rate."""

    def __init__(self, total: int, description: str, unit: str = "img",
                 every_seconds: float = 30.0, enabled: bool = True):
        self.total, self.description, self.unit = total, description, unit
        self.every_seconds, self.enabled = every_seconds, enabled
        self.done = 0
        self.start = self.last_report = time.time()
        self.bar = None
        if enabled and stdout_is_terminal():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=description, unit=unit, unit_scale=True,
                            dynamic_ncols=True)

    def rate(self) -> float:
        return self.done / max(time.time() - self.start, 1e-9)

    def update(self, count: int) -> None:
        self.done += count
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(count)
        elif time.time() - self.last_report >= self.every_seconds:
            self.last_report = time.time()
            self._line()

    def _line(self, final: bool = False) -> None:
        rate = self.rate()
        eta = "" if final else f"  eta {format_duration((self.total - self.done) / max(rate, 1e-9))}"
        print(f"{self.description}: {self.done}/{self.total} {self.unit}  "
              f"{rate:.1f} {self.unit}/s{eta}", flush=True)

    def close(self, message: Optional[str] = None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self._line(final=True)
        if message:
            print(message, file=sys.stdout, flush=True)


def run_tool(main: Callable[[], object]) -> None:
    """Call a tool's main(); bad input (ValueError, OSError) exits 1 with one line, no traceback."""
    try:
        main()
    except (ValueError, OSError) as error:
        sys.exit(f"{Path(sys.argv[0]).name}: error: {error}")
