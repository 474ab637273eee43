"""Writing a file so that readers never see half of it and a failed write leaves nothing behind.

Every writer gets its own temporary name next to the target (two runs writing the same file
never share one): `.<name>.<pid>@<host>.<random>.tmp`, so that one left by a writer killed with
SIGKILL can be told from a live writer's and removed (`remove_stale_temporaries`). The data is
flushed to disk, then renamed over the target. A failed write
(disk full, permission, read-only file system) removes its temporary file and raises
WriteError, a ValueError whose one line says what happened and to which file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, List, Optional

from utils.common.processes import is_alive

# mkstemp creates files readable by their owner only; published files get the usual umask mode
_UMASK = os.umask(0)
os.umask(_UMASK)


class WriteError(ValueError):
    """A file could not be written (the message is one line naming the file)."""


def describe_os_error(error: OSError, path, action: str = "writing") -> str:
    """One line for a failed file operation: 'no space left on device while writing PATH'."""
    reasons = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EROFS: "read-only file system"}
    reason = reasons.get(error.errno, error.strerror or type(error).__name__)
    return f"{reason} while {action} {path}"


def user_cache_dir(name: str) -> Path:
    """This library's per-user cache folder `name` ($XDG_CACHE_HOME or ~/.cache, then mixbct/name),
    for caches a read-only data folder cannot hold beside it. Not created here."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mixbct" / name


TEMPORARY_SUFFIX = ".tmp"


def _writer_tag() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def unique_temporary(path) -> tuple[int, Path]:
    """(open descriptor, name) of a new temporary file next to `path`, unique to this writer and
    naming it: .<name>.<pid>@<host>.<random>.tmp."""
    path = Path(path)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.{_writer_tag()}.", suffix=TEMPORARY_SUFFIX,
                                        dir=path.parent)
    os.fchmod(descriptor, 0o666 & ~_UMASK)
    return descriptor, Path(name)


def _temporary_writer(temporary: Path, target: Path):
    """(pid, host) of the writer a temporary of `target` names, or None for any other file."""
    prefix = f".{target.name}."
    name = temporary.name
    if not (name.startswith(prefix) and name.endswith(TEMPORARY_SUFFIX)):
        return None
    tag = name[len(prefix):-len(TEMPORARY_SUFFIX)].rpartition(".")[0]   # drop mkstemp's random part
    pid, separator, host = tag.partition("@")
    return (int(pid), host) if separator and pid.isdigit() and host else None


def stale_temporaries(path) -> List[Path]:
    """The temporaries of `path` (unique_temporary) left by writers on this host that are gone."""
    path = Path(path)
    host, found = socket.gethostname(), []
    with contextlib.suppress(OSError):
        for candidate in path.parent.glob(f".{path.name}.*{TEMPORARY_SUFFIX}"):
            writer = _temporary_writer(candidate, path)
            if writer is not None and writer[1] == host and not is_alive(writer[0]) and candidate.is_file():
                found.append(candidate)
    return sorted(found)


def remove_stale_temporaries(paths: Iterable, sizes: Optional[List[int]] = None) -> List[Path]:
    """Remove the stale temporaries of each of `paths` (a writer killed mid-write, e.g. by SIGKILL,
    cannot); a live writer's, another host's and any other file stay. Returns the removed ones;
    with `sizes`, appends each removed file's size in bytes to it."""
    removed = []
    for path in paths:
        for temporary in stale_temporaries(path):
            with contextlib.suppress(FileNotFoundError):
                size = temporary.stat().st_size if sizes is not None else 0
                temporary.unlink()
                removed.append(temporary)
                if sizes is not None:
                    sizes.append(size)
    return removed


class _RecordingHandle:
    """A binary file handle that remembers the OSError of a failed write: some writers (torch.save)
    turn it into their own error without the reason."""

    def __init__(self, handle: BinaryIO):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str):
        return getattr(self.handle, name)


@contextlib.contextmanager
def _removed_on_failure(temporary: Path, path):
    """Remove `temporary` when the block fails; an OSError becomes a one-line WriteError on `path`."""
    try:
        yield
    except BaseException as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        if isinstance(error, OSError):
            raise WriteError(describe_os_error(error, path)) from None
        raise


def write_temporary(path, write: Callable[[BinaryIO], object]) -> Path:
    """Call write(binary handle) on a unique temporary file beside `path` and sync it; returns the
    temporary's name (the caller renames it into place, or removes it). Nothing is left on failure."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = unique_temporary(path)
    except OSError as error:
        raise WriteError(describe_os_error(error, path)) from None
    with _removed_on_failure(temporary, path):
        with os.fdopen(descriptor, "wb") as handle:
            recording = _RecordingHandle(handle)
            try:
                write(recording)
            except Exception:
                if recording.error is not None:
                    raise recording.error from None
                raise
            handle.flush()
            os.fsync(handle.fileno())
    return temporary


def atomic_write(path, write: Callable[[BinaryIO], object]) -> Path:
    """Call write(binary handle) on a unique temporary file beside `path`, sync, rename onto `path`."""
    temporary = write_temporary(path, write)
    with _removed_on_failure(temporary, path):
        os.replace(temporary, path)
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
