"""Turning library errors into the one line a user reads."""
from __future__ import annotations


def one_line_reason(error: Exception) -> str:
    """The line of a multi-line torch error that names what went wrong (for weights-only
    refusals: the global it refused)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line or "WeightsUnpickler" in line]
    return (named or lines or [type(error).__name__])[0][:200]
