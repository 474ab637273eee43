"""Whether a process that left something behind (a lock, a temporary file) is still running."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def process_start_time(pid: int) -> Optional[str]:
    """Start time of `pid` in clock ticks since boot (Linux), telling a reused pid apart."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 else None


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
