"""One training run per output folder (its lock: utils/common/output_lock.py), and no finished run
overwritten by accident. `refuse_overwrite` stops a fresh run in a folder
that holds a trained model or checkpoint unless the run resumes or starts over on purpose;
`clear_previous_run` is what starting over removes: only what a run wrote, never through a link,
and nothing at all when the folder holds something in the run's places it cannot account for.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List

from utils.common.atomic_files import describe_os_error
from utils.common.output_lock import OutputLock
from utils.training.checkpoint import CHECKPOINT_FILE, DEBUG_CHECKPOINT_FILE, MODEL_FILE

CONFIG_FILE = "config.json"   # the resolved config the run was started with
TRAINED_FILES = (MODEL_FILE, CHECKPOINT_FILE)   # what a fresh run must not overwrite
TORCH_FILES = TRAINED_FILES + (DEBUG_CHECKPOINT_FILE,)   # written by torch.save (a zip archive)
RUN_FILES = TORCH_FILES + (CONFIG_FILE,)
TENSORBOARD_FOLDER = "tensorboard"   # SummaryWriter's event files, nothing else
EVENT_FILE_PREFIX = "events.out.tfevents."
# keys every config.json a run saves holds (utils/common/config.load_config sets config_name)
SAVED_CONFIG_KEYS = ("config_name", "method", "network", "output")
ZIP_MAGIC = b"PK\x03\x04"   # torch.save's archive format


def refuse_overwrite(folder) -> None:
    """A fresh run must not replace the model or checkpoint of an earlier run in `folder`."""
    found = [name for name in TRAINED_FILES if os.path.lexists(Path(folder) / name)]
    if found:
        raise ValueError(f"{folder} already holds {' and '.join(found)} of an earlier run: pass --resume to "
                         f"continue it, --start-over to train again from scratch (removes them), or "
                         f"choose another output")


def _unaccounted(path: Path, why: str) -> ValueError:
    return ValueError(f"--start-over: {path} {why}, so nothing was removed: move it out of the "
                      f"output folder yourself, or choose another output")


def _regular_file(path: Path) -> None:
    """`path` itself (never what a link points to) is a plain file."""
    if path.is_symlink():
        raise _unaccounted(path, "is a symbolic link")
    if not path.is_file():
        raise _unaccounted(path, "is not a regular file")


def _check_torch_file(path: Path) -> None:
    _regular_file(path)
    with open(path, "rb") as handle:
        if handle.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            raise _unaccounted(path, "is not a file torch.save wrote")


def _check_saved_config(path: Path) -> None:
    _regular_file(path)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        saved = None
    if not isinstance(saved, dict) or not all(key in saved for key in SAVED_CONFIG_KEYS):
        raise _unaccounted(path, f"is not a config saved by a training run (a JSON object with "
                                 f"{', '.join(SAVED_CONFIG_KEYS)})")


def _tensorboard_files(folder: Path) -> List[Path]:
    """The event files in `folder` (then the folder itself); anything else there is refused."""
    if folder.is_symlink():
        raise _unaccounted(folder, "is a symbolic link")
    if not folder.is_dir():
        raise _unaccounted(folder, "is not a folder")
    found = []
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        if not (entry.name.startswith(EVENT_FILE_PREFIX) and entry.is_file(follow_symlinks=False)):
            raise _unaccounted(Path(entry.path), "was not written by a training run (TensorBoard event "
                                                 f"files {EVENT_FILE_PREFIX}* only)")
        found.append(Path(entry.path))
    return found + [folder]


def previous_run_files(folder) -> List[Path]:
    """What --start-over removes from `folder`: the model, checkpoints and config.json an earlier
    run wrote and its TensorBoard event files (then tensorboard/ itself); training.log is kept
    (appended) and anything else in the folder is left alone. Raises a one-line ValueError naming
    the path when one of those places holds what a run does not write (a link, a folder, a file
    that is no torch archive or saved config, a foreign file in tensorboard/)."""
    folder = Path(folder)
    found = []
    try:
        for name in TORCH_FILES:
            if os.path.lexists(folder / name):
                _check_torch_file(folder / name)
                found.append(folder / name)
        if os.path.lexists(folder / CONFIG_FILE):
            _check_saved_config(folder / CONFIG_FILE)
            found.append(folder / CONFIG_FILE)
        if os.path.lexists(folder / TENSORBOARD_FOLDER):
            found += _tensorboard_files(folder / TENSORBOARD_FOLDER)
    except OSError as error:
        raise ValueError(describe_os_error(error, error.filename or folder, "reading")) from None
    return found


def clear_previous_run(folder) -> list:
    """Remove what an earlier run left (previous_run_files; all checked before the first removal).
    Returns the removed names relative to `folder`, folders with a trailing '/'."""
    folder = Path(folder)
    removed = []
    for path in previous_run_files(folder):
        is_folder = path.is_dir() and not path.is_symlink()
        try:
            path.rmdir() if is_folder else path.unlink()
        except OSError as error:
            raise ValueError(describe_os_error(error, path, "removing")) from None
        removed.append(str(path.relative_to(folder)) + ("/" if is_folder else ""))
    return removed


def claim_output_folder(folder) -> OutputLock:
    """Rank 0 takes the folder's lock; every rank raises the same one-line error when it cannot
    (collective: call on every rank)."""
    from utils.training.distributed import check_on_rank0
    lock = OutputLock(folder)
    check_on_rank0(lock.acquire)
    return lock
