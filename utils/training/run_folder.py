"""One training run per output folder (its lock: utils/common/output_lock.py), and no finished run
overwritten by accident. `refuse_overwrite` stops a fresh run in a folder
that holds a trained model or checkpoint unless the run resumes or starts over on purpose;
`clear_previous_run` is what starting over removes.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from utils.common.output_lock import OutputLock
from utils.training.checkpoint import CHECKPOINT_FILE, DEBUG_CHECKPOINT_FILE, MODEL_FILE

CONFIG_FILE = "config.json"   # the resolved config the run was started with
TRAINED_FILES = (MODEL_FILE, CHECKPOINT_FILE)   # what a fresh run must not overwrite
RUN_FILES = TRAINED_FILES + (DEBUG_CHECKPOINT_FILE, CONFIG_FILE)
RUN_FOLDERS = ("tensorboard",)


def refuse_overwrite(folder) -> None:
    """A fresh run must not replace the model or checkpoint of an earlier run in `folder`."""
    found = [name for name in TRAINED_FILES if (Path(folder) / name).exists()]
    if found:
        raise ValueError(f"{folder} already holds {' and '.join(found)} of an earlier run: pass --resume to "
                         f"continue it, --start-over to train again from scratch (removes them), or "
                         f"choose another output")


def clear_previous_run(folder) -> list:
    """Remove what an earlier run left (model, checkpoints, config, TensorBoard); training.log is kept
    (appended). Returns the removed names."""
    removed = []
    for name in RUN_FILES:
        path = Path(folder) / name
        if path.exists():
            path.unlink()
            removed.append(name)
    for name in RUN_FOLDERS:
        path = Path(folder) / name
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(name + "/")
    return removed


def claim_output_folder(folder) -> OutputLock:
    """Rank 0 takes the folder's lock; every rank raises the same one-line error when it cannot
    (collective: call on every rank)."""
    from utils.training.distributed import check_on_rank0
    lock = OutputLock(folder)
    check_on_rank0(lock.acquire)
    return lock
