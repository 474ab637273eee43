"""Image labels read from record headers, read once per index and kept beside it.

The reference split tool's prefix files carry no identity records, so every image's label is in
its own record header: 3.6M header reads for class70, on every rank, at every start and resume,
and random reads of a file larger than the page cache once payloads are real. Here they are
read once, in file order (`RecordIOReader.read_headers`), by one process, and stored as
`.<idx name>.labels-<idx sha256[:20]>-<rec bytes>.npy` beside the .idx (or, when that folder is
read-only, under $XDG_CACHE_HOME/mixbct/labels/). The key is the index checksum plus the rec's
size, so an edited index or a rewritten rec is never served stale labels.

Eight ranks starting at once: the first to take the lock file's exclusive flock reads the
headers and publishes the array with an atomic rename; the others block on the lock and then
load the published file. A reader never sees a half-written cache. Sets under CACHE_MIN_IMAGES
images are read directly (well under a second), leaving no file beside them.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from utils.common.atomic_files import WriteError, atomic_write, user_cache_dir
from utils.common.checksums import file_sha256

# Below this many images the headers are read in well under a second: no file is left beside them.
CACHE_MIN_IMAGES = 100_000


def _writable_folder(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def label_cache_path(idx_path, rec_size: int, index_sha256: str) -> Path:
    """Where the labels of this index (checksum) and rec (size) are kept."""
    idx_path = Path(idx_path)
    name = f".{idx_path.name}.labels-{index_sha256[:20]}-{int(rec_size)}.npy"
    if _writable_folder(idx_path.parent):
        return idx_path.parent / name
    root = user_cache_dir("labels")
    root.mkdir(parents=True, exist_ok=True)
    return root / f"{idx_path.resolve().as_posix().strip('/').replace('/', '_')}{name}"


def _load(path: Path, count: int) -> Optional[np.ndarray]:
    """The cached labels when the file is there and holds `count` int64 labels, else None."""
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if labels.dtype != np.int64 or labels.shape != (count,):
        return None
    return labels


def cached_labels(idx_path, rec_size: int, count: int, read_labels: Callable[[], np.ndarray],
                  index_sha256: Optional[str] = None) -> np.ndarray:
    """The `count` int64 labels of this index: from the cache, else `read_labels()` once (under
    an exclusive lock, so concurrent ranks wait and reuse it), then published atomically.
    A cache that cannot be written (full disk, read-only home) only costs the read."""
    if count < CACHE_MIN_IMAGES:
        return read_labels()
    index_sha256 = index_sha256 or file_sha256(idx_path)
    try:
        path = label_cache_path(idx_path, rec_size, index_sha256)
    except OSError:
        return read_labels()
    labels = _load(path, count)
    if labels is not None:
        return labels
    try:
        lock = open(path.with_name(path.name + ".lock"), "a+b")
    except OSError:
        return read_labels()
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)   # released when the file closes
        labels = _load(path, count)                # another rank may have written it meanwhile
        if labels is not None:
            return labels
        labels = np.ascontiguousarray(read_labels(), dtype=np.int64)
        try:
            atomic_write(path, lambda handle: np.save(handle, labels, allow_pickle=False))
        except (OSError, WriteError):
            pass
        return labels
