"""Plumbing every other part uses: config, command lines, atomic files, checksums, locks, logs, progress."""
