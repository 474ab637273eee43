"""One writer per output folder: `OutputLock` is a file `<output>/.lock` holding the owner's host,
pid and process start time, created atomically (O_EXCL) before anything else is written into the
folder and removed when the owner ends. A second writer refuses at once; a lock left by a process
that is gone (kill -9, power loss) on this host is reclaimed.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Optional

from utils.common.atomic_files import describe_os_error
from utils.common.processes import is_alive as _is_alive, process_start_time as _process_start_time

LOCK_NAME = ".lock"
_HELD_LOCKS: list = []   # this process's locks, released together when a run stops on an error or exits


class OutputLock:
    """Exclusive ownership of an output folder by this process (see the module docstring)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False
        self.created_folder = False
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(),
                      "start_time": _process_start_time(os.getpid())}

    def _read_owner(self) -> Optional[dict]:
        try:
            owner = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def _stale(self, owner: dict) -> bool:
        """True when the lock's process is known to be gone (same host only)."""
        if owner.get("host") != self.owner["host"] or not isinstance(owner.get("pid"), int):
            return False
        pid = owner["pid"]
        if not _is_alive(pid):
            return True
        started = owner.get("start_time")
        return started is not None and _process_start_time(pid) not in (None, started)

    def acquire(self) -> "OutputLock":
        try:
            self.created_folder = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(describe_os_error(error, self.folder, "creating the output folder")) from None
        for _ in range(3):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._read_owner()
                if owner is None:
                    continue  # released meanwhile
                same_process = owner.get("host") == self.owner["host"] and owner.get("pid") == os.getpid()
                if same_process or self._stale(owner):
                    # a lock of this very process (an earlier Trainer) or of a process that is gone
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                raise ValueError(f"{self.folder} is in use by another run (pid {owner.get('pid', '?')} on "
                                 f"{owner.get('host', '?')}, lock {self.path}); wait for it to end, or use "
                                 f"another output folder (delete the lock only if that run is gone)") from None
            except OSError as error:
                raise ValueError(describe_os_error(error, self.path, "creating the lock")) from None
            with os.fdopen(descriptor, "w") as handle:
                handle.write(json.dumps(self.owner) + "\n")
            self.held = True
            _HELD_LOCKS.append(self)
            return self
        raise ValueError(f"cannot take the lock {self.path}: other runs keep taking it")

    def release(self, remove_empty_folder: bool = False) -> None:
        if not self.held:
            return
        self.held = False
        if self in _HELD_LOCKS:
            _HELD_LOCKS.remove(self)
        owner = self._read_owner()
        if owner and owner.get("pid") == self.owner["pid"] and owner.get("host") == self.owner["host"]:
            with contextlib.suppress(OSError):
                self.path.unlink()
        if remove_empty_folder and self.created_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only when empty: a run refused at start-up leaves no trace


def release_held_locks() -> None:
    """Release every lock this process holds; a folder the run created and left empty goes too."""
    for lock in list(_HELD_LOCKS):
        lock.release(remove_empty_folder=True)


atexit.register(release_held_locks)  # a run that ends on an unexpected error or an interrupt
