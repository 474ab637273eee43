"""The refusals of the artifact guards: one exception type and the lines both the manifest checks
and the verified feature reader raise (here so the two modules need not import each other)."""
from __future__ import annotations

from typing import Mapping


class ArtifactMismatch(ValueError):
    """An artifact does not belong to the data (or model) it is about to be used with."""


def missing_checksum_error(array_path, manifest: Mapping) -> ArtifactMismatch:
    return ArtifactMismatch(f"{array_path}: its manifest records no content checksum (written before "
                            f"checksums were kept): rebuild it with {manifest.get('tool') or 'its tool'}")


def content_mismatch_error(array_path, found: str, recorded: str) -> ArtifactMismatch:
    return ArtifactMismatch(f"{array_path} no longer matches its manifest (content sha256 {found[:12]}, "
                            f"manifest {str(recorded)[:12]}): it was modified or replaced after it was written")
