"""Ctrl-C during training: a request to stop at the next optimiser step with a checkpoint, not a
traceback in the middle of a step.

The first SIGINT only sets `StopRequest.requested` (and says so on stderr); the engine agrees on it
across ranks in the all-reduce it already makes once per step, saves checkpoint.pt and ends with
one line (TrainingInterrupted). A second SIGINT stops at once (KeyboardInterrupt, one line, the
previous checkpoint stays): it counts only after `repeat_grace_s`, because a launcher (torchrun)
forwards the terminal's SIGINT to every rank that has just received it from the terminal itself.
Loader workers ignore SIGINT (utils/data/loader.seed_worker): the main process decides when to stop.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Optional

REPEAT_GRACE_S = 2.0


class TrainingInterrupted(Exception):
    """Training stopped on Ctrl-C after saving a resumable checkpoint (the message is one line)."""


class StopRequest:
    """Context manager: SIGINT handling for the training loop (see the module docstring); the
    previous handler is restored on exit. Outside the main thread it installs nothing."""

    def __init__(self, repeat_grace_s: float = REPEAT_GRACE_S):
        self.repeat_grace_s = repeat_grace_s
        self.requested = False
        self._first_at: Optional[float] = None
        self._previous = None

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self._first_at is None:
            self._first_at, self.requested = now, True
            # os.write: safe wherever the handler interrupts the main thread (no stream lock)
            os.write(2, b"Ctrl-C: stopping after this step with a checkpoint (press Ctrl-C again to stop "
                        b"at once, without one)\n")
        elif now - self._first_at >= self.repeat_grace_s:
            signal.default_int_handler(signum, frame)   # raises KeyboardInterrupt

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
