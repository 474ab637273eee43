"""The library's shared code, one sub-package per role (imports go one way: docs/internals.md):
common (plumbing) <- data (files to batches) <- artifacts (old-model outputs) | training (the engine)."""
