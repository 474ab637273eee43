"""`--status --out DIR`: every step of the run in DIR, read-only (works while the runner runs).

waiting / running (GPUs, pid, elapsed, the training's own ETA) / done (wall, GPU-hours) /
failed (log path) / blocked (by a failed step) / interrupted (the runner is gone)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from tools.experiment.display import progress_of
from tools.experiment.local import STATUS_FILE
from utils.common.logging_utils import format_duration
from utils.common.output_lock import LOCK_NAME, OutputLock


def runner_alive(out: Path) -> bool:
    """True while the runner that holds <out>/.lock lives (the lock file is only read)."""
    lock = OutputLock(out)
    owner = lock._read_owner()
    return bool(owner) and not lock._stale(owner)


def status_lines(out: Path) -> list:
    path = Path(out) / STATUS_FILE
    try:
        status = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{out}: no run here ({STATUS_FILE} not found)") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable ({error})") from None
    alive = runner_alive(out)
    runner = status["runner"]
    age = time.time() - runner["updated"]
    lines = [f"runner pid {runner['pid']}: {'running' if alive else 'not running'} "
             f"(state written {format_duration(age)} ago, GPUs {runner['gpus'] or 'none'}; lock {Path(out) / LOCK_NAME})"]
    now = time.time()
    for entry in status["steps"]:
        state, name = entry["state"], entry["name"]
        if state == "running" and not alive:
            state = "interrupted"
        if state == "running":
            where = f"GPU {','.join(map(str, entry['gpus']))}" if entry["gpus"] else "CPU"
            detail = (f"{where}, pid {entry['pid']}, {format_duration(now - entry['started'])}: "
                      f"{progress_of(entry['log'])}")
        elif state == "done":
            detail = (f"{entry.get('seconds', 0):.1f} s, {entry.get('gpu_hours', 0):.3f} GPU-hours"
                      + (" (done earlier)" if entry.get("skipped") else ""))
        elif state == "failed":
            detail = f"{entry.get('reason', '')}; log {entry['log']}"
        elif state == "blocked":
            detail = entry.get("reason", "")
        elif state == "interrupted":
            detail = f"log {entry['log']}; the same command resumes it"
        else:
            detail = f"needs {', '.join(entry['needs'])}" if entry["needs"] else ""
        lines.append(f"  {name:<24} {state:<11} {detail}".rstrip())
    return lines
