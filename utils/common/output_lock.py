"""One writer per output: `OutputLock` is a file holding the owner's host, pid and process start
time, created atomically (O_EXCL) before anything else is written and removed when the owner ends.
A second writer refuses at once, naming the holder.

Two scopes share the mechanism:
- a training run locks its whole output folder (`<output>/.lock`, `OutputLock(folder)`);
- a tool locks each file it writes (`<folder>/.<file name>.lock`, `lock_files(paths)`), so tools
  that write different files of one folder (the features of two --SD, a prototype file beside a
  class-meta file) run side by side, while two runs writing the same file cannot.

A lock left by a process that is gone (kill -9, power loss) on this host is stale and taken over.
The takeover is atomic: reading the lock, deciding it is stale, removing it and creating the new
one happen while holding an advisory `flock` on the folder (held for microseconds, released by the
kernel even if the holder is killed), so two starters that read the same stale owner cannot both
end up holding it. An empty or garbled lock is one being written by a starter that does not use
that guard (an older version, a file system without flock) or one whose writer died between
creating and filling it: it is refused while younger than WRITE_GRACE_SECONDS, stale after.

A writer killed mid-write also leaves its temporary file (atomic_files.unique_temporary: the
7 GB feature file of get_feature, a subset rec of the split). `lock_files(paths, also=...)`
removes, once the locks are held, the temporaries of those paths whose writer on this host is
gone, and says so in one line.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

from utils.common.atomic_files import describe_os_error, remove_stale_temporaries
from utils.common.processes import is_alive as _is_alive, process_start_time as _process_start_time

LOCK_NAME = ".lock"
WRITE_GRACE_SECONDS = 5.0   # an empty / garbled lock younger than this may still be being written
_HELD_LOCKS: list = []   # this process's locks, released together when a run stops on an error or exits
_FLOCK_UNSUPPORTED = {errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF}


@contextlib.contextmanager
def _folder_guard(folder: Path):
    """Exclusive advisory lock on the folder itself for the few system calls of a take-over. Where
    the file system has no flock (some network mounts) the guard is skipped: O_EXCL still keeps a
    free folder to one writer, only the stale-lock take-over is then not atomic."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError as error:
            if error.errno not in _FLOCK_UNSUPPORTED:
                raise
        yield
    finally:
        os.close(descriptor)   # releases the flock


class OutputLock:
    """Exclusive ownership of an output folder (or, with `name`, of one file in it) by this process."""

    def __init__(self, folder, name: str = LOCK_NAME, guarded: Optional[Path] = None):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.guarded = Path(guarded) if guarded is not None else None   # the file a per-file lock is for
        self.held = False
        self.created_folder = False
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(),
                      "start_time": _process_start_time(os.getpid())}

    @classmethod
    def for_file(cls, path) -> "OutputLock":
        """The lock of one output file: `.<name>.lock` beside it."""
        path = Path(path)
        return cls(path.parent, f".{path.name}.lock", guarded=path)

    def _read_owner(self) -> Optional[dict]:
        """The lock's owner; None when there is no lock; {} when it is empty or not an owner record."""
        try:
            owner = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else {}

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return 0.0

    def _stale(self, owner: dict) -> bool:
        """True when the lock's process is known to be gone (same host only), or when the lock is
        empty / garbled and older than WRITE_GRACE_SECONDS (its writer died before filling it)."""
        if not owner:
            return self._age() > WRITE_GRACE_SECONDS
        if owner.get("host") != self.owner["host"]:
            return False
        pid = owner["pid"]
        if not _is_alive(pid):
            return True
        started = owner.get("start_time")
        return started is not None and _process_start_time(pid) not in (None, started)

    def _refusal(self, owner: dict) -> ValueError:
        if not owner:
            return ValueError(f"the lock {self.path} is empty or unreadable and {self._age():.0f} s old: a run is "
                              f"being written into it right now (try again in a few seconds), or its writer died "
                              f"(it is taken over once older than {WRITE_GRACE_SECONDS:.0f} s)")
        holder = f"pid {owner.get('pid')} on {owner.get('host', '?')}, lock {self.path}"
        if self.guarded is not None:
            return ValueError(f"{self.guarded} is being written by another run ({holder}); wait for it to end, "
                              f"or write elsewhere (delete the lock only if that run is gone)")
        return ValueError(f"{self.folder} is in use by another run ({holder}); wait for it to end, or use "
                          f"another output folder (delete the lock only if that run is gone)")

    def _create(self) -> bool:
        """Create the lock with this process as owner; False when a lock exists."""
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as error:
            raise ValueError(describe_os_error(error, self.path, "creating the lock")) from None
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(self.owner) + "\n")
        return True

    def acquire(self) -> "OutputLock":
        try:
            self.created_folder = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(describe_os_error(error, self.folder, "creating the output folder")) from None
        with _folder_guard(self.folder):
            if not self._create():
                owner = self._read_owner()
                same_process = bool(owner) and (owner.get("host") == self.owner["host"]
                                                and owner.get("pid") == self.owner["pid"])
                # a lock of this very process (an earlier Trainer) or of a process that is gone
                if owner is not None and not same_process and not self._stale(owner):
                    raise self._refusal(owner)
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                if not self._create():   # only a starter outside the guard can get here first
                    raise self._refusal(self._read_owner() or {})
        self.held = True
        _HELD_LOCKS.append(self)
        return self

    def release(self, remove_empty_folder: bool = False) -> None:
        if not self.held:
            return
        self.held = False
        if self in _HELD_LOCKS:
            _HELD_LOCKS.remove(self)
        with _folder_guard(self.folder):
            owner = self._read_owner()
            if owner and owner.get("pid") == self.owner["pid"] and owner.get("host") == self.owner["host"]:
                with contextlib.suppress(OSError):
                    self.path.unlink()
        if remove_empty_folder and self.created_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only when empty: a run refused at start-up leaves no trace


class FileLocks:
    """The locks of the files one tool run writes, released together."""

    def __init__(self, locks: Sequence[OutputLock]):
        self.locks = list(locks)

    def release(self) -> None:
        for lock in reversed(self.locks):
            lock.release(remove_empty_folder=True)   # a run refused before writing leaves no folder

    def __enter__(self) -> "FileLocks":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def lock_files(paths: Iterable, also: Iterable = ()) -> FileLocks:
    """Take the lock of every file in `paths` (creating their folders), or none: the first one held
    by another run raises its one-line refusal and the ones taken so far are released. Once all are
    held, the temporaries that dead writers left of `paths` and of `also` (files written inside a
    locked folder) are removed, with one line naming how many and where."""
    taken: list = []
    paths = sorted({Path(path).resolve() for path in paths})
    try:
        for path in paths:
            taken.append(OutputLock.for_file(path).acquire())
    except BaseException:
        FileLocks(taken).release()
        raise
    sizes: list = []
    removed = remove_stale_temporaries([*paths, *(Path(path) for path in also)], sizes)
    if removed:
        print(f"removed {len(removed)} temporary file(s) ({sum(sizes) / 1e6:.1f} MB) left by a writer that is gone: "
              f"{', '.join(str(path) for path in removed[:3])}{' ...' if len(removed) > 3 else ''}", flush=True)
    return FileLocks(taken)


def release_held_locks() -> None:
    """Release every lock this process holds; a folder the run created and left empty goes too."""
    for lock in list(_HELD_LOCKS):
        lock.release(remove_empty_folder=True)


atexit.register(release_held_locks)  # a run that ends on an unexpected error or an interrupt
