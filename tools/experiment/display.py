"""What the runner shows: in a terminal one live line per running step (redrawn in place) above
which finished steps' one-line results scroll; elsewhere (nohup, a log) plain lines, the running
steps once every `period` seconds. Progress comes from the tail of each step's own log."""
from __future__ import annotations

import os
import re
import shutil
import sys
import time
from typing import List, Optional

from utils.common.logging_utils import format_duration

TRAINING_LINE = re.compile(r"step (\d+)/(\d+)")
SPEED = re.compile(r"speed ([0-9.]+) img/s")
ETA = re.compile(r"\beta (\S+)")


def log_tail(path, lines: int = 5, max_bytes: int = 16384) -> List[str]:
    """The last `lines` non-empty lines of a log (carriage-return progress bars split too)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    found = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    return found[-lines:]


def progress_of(path) -> str:
    """A training's position, speed and ETA from its last progress line, else the log's last line."""
    tail = log_tail(path, 40)
    for line in reversed(tail):
        match = TRAINING_LINE.search(line)
        if match:
            done, total = int(match.group(1)), int(match.group(2))
            parts = [f"step {done}/{total} ({100 * done / max(total, 1):.0f}%)"]
            speed, eta = SPEED.search(line), ETA.search(line)
            if speed:
                parts.append(f"{speed.group(1)} img/s")
            if eta:
                parts.append(f"eta {eta.group(1)}")
            return ", ".join(parts)
    output = [line for line in tail if not line.startswith(("$ ", "# "))]   # not the runner's header
    return output[-1] if output else "starting"


def running_line(name: str, gpus: List[int], started: float, log: str, now: Optional[float] = None) -> str:
    where = f"GPU {','.join(map(str, gpus))}" if gpus else "CPU"
    elapsed = format_duration((now or time.time()) - started)
    return f"  {name} [{where}, {elapsed}] {progress_of(log)}"


class Display:
    def __init__(self, terminal: Optional[bool] = None, period: float = 60.0, stream=None):
        self.stream = stream or sys.stdout
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.period, self.last_periodic, self.drawn = period, 0.0, 0

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _clear_live(self) -> None:
        if self.terminal and self.drawn:
            self._write(f"\x1b[{self.drawn}F\x1b[J")   # to the first live line, clear to the end
            self.drawn = 0

    def event(self, line: str) -> None:
        """A line that stays (a step started, finished, failed, skipped)."""
        self._clear_live()
        self._write(line + "\n")

    def update(self, live: List[str], force: bool = False) -> None:
        """The running steps' lines: redrawn in a terminal, printed every `period` s otherwise."""
        if self.terminal:
            self._clear_live()
            width = shutil.get_terminal_size((120, 20)).columns - 1
            if live:
                self._write("".join(line[:width] + "\n" for line in live))
            self.drawn = len(live)
            return
        now = time.time()
        if live and (force or now - self.last_periodic >= self.period):
            self.last_periodic = now
            stamp = time.strftime("%H:%M:%S")
            self._write("".join(f"{stamp} running:{line}\n" for line in live))

    def close(self) -> None:
        self._clear_live()
