"""A file's verified checksum, remembered against the file's identity, so the 7.4 GB old feature
file is hashed once and not again by every tool and training start that checks it.

The stamp `<file>.verified` records the checksum a reader found equal to the manifest's, with
the file's device, inode, size, mtime and ctime at that moment. Any write, truncation, rename
onto the path or copy changes one of them (ctime cannot be set back by a user: restoring mtime
with touch still changes ctime), and then the file is hashed again. A file changed within the
filesystem's timestamp granularity of the stamp could keep both times: as git does for "racily
clean" entries, no stamp is written while the file's last change is under RACY_SECONDS old.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from utils.common.atomic_files import atomic_write_text

STAMP_SUFFIX = ".verified"
RACY_SECONDS = 2.0


def stamp_path(path) -> Path:
    return Path(path).with_name(Path(path).name + STAMP_SUFFIX)


def _identity(path) -> dict:
    status = os.stat(path)
    return {"device": status.st_dev, "inode": status.st_ino, "size": status.st_size,
            "mtime_ns": status.st_mtime_ns, "ctime_ns": status.st_ctime_ns}


def is_stamped(path, checksum: str) -> bool:
    """True if `path` was verified to have `checksum` and has not changed since."""
    try:
        stamp = json.loads(stamp_path(path).read_text())
    except (OSError, ValueError):
        return False
    return stamp == {"content_sha256": checksum, **_identity(path)}


def stamp(path, checksum: str) -> None:
    """Remember that `path` was just verified to have `checksum` (best effort: a stamp that cannot
    be written, or a file changed too recently to be told apart, only means hashing next time)."""
    identity = _identity(path)
    if time.time_ns() - max(identity["mtime_ns"], identity["ctime_ns"]) < RACY_SECONDS * 1e9:
        return
    try:
        atomic_write_text(stamp_path(path), json.dumps({"content_sha256": checksum, **identity}) + "\n")
    except OSError:
        pass
