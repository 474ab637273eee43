"""The experiment plan: steps, when a step is done, and how it is launched.

A plan is an ordered list of `Step`s (topological order). Each step is the command a user would
type (relative to the repository root, without a launcher); backends (tools/experiment/local.py,
and a Slurm backend) decide where and when it runs. Whether a step is done is decided from its
outputs: `Step` itself is defined in tools/experiment/step.py (so the plans that build steps
need not import this module). When a step succeeds the backend calls `record_done`, which writes the step's manifest
(`<out>/.steps/<name>.json`: its command and every output's size, mtime and content checksum);
`step_done` then holds only while every output is still there with the recorded content, so a
step whose output was deleted or changed runs again.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

from tools.experiment.step import STATE_FOLDER, Step, attach_files  # noqa: F401  (re-exported: the plan interface)
from utils.common.atomic_files import atomic_write_text
from utils.common.checksums import content_sha256

__all__ = ["Step", "attach_files", "record_done", "step_done", "done_steps", "read_step_manifest",
           "launcher_argv", "record_started", "resume_flags"]

def _manifest_path(step: Step) -> Path:
    if step.manifest:
        return Path(step.manifest)
    return Path(step.log).parent.parent / STATE_FOLDER / f"{step.name}.json"


def read_step_manifest(step: Step) -> Optional[dict]:
    try:
        manifest = json.loads(_manifest_path(step).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _file_record(path: str) -> dict:
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": content_sha256(path)}


def record_done(step: Step, **facts) -> None:
    """Write the step's manifest after it succeeded: its command, each output's size, mtime and
    content checksum, and `facts` (wall seconds, CPU seconds, GPUs...). A missing output is an
    error: the step did not do what the plan says it does."""
    missing = [path for path in step.outputs if not os.path.isfile(path)]
    if missing:
        raise ValueError(f"step {step.name} finished without writing {missing[0]}")
    manifest = {"step": step.name, "argv": step.argv,
                "outputs": {path: _file_record(path) for path in step.outputs}, **facts}
    path = _manifest_path(step)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")


def step_done(step: Step) -> bool:
    """True when the step's manifest records this very command and every output still has the
    recorded content (same size and mtime, or else the same checksum)."""
    manifest = read_step_manifest(step)
    if manifest is None or manifest.get("argv") != step.argv:
        return False
    recorded = manifest.get("outputs", {})
    if sorted(recorded) != sorted(step.outputs):
        return False
    for path, record in recorded.items():
        try:
            stat = os.stat(path)
        except OSError:
            return False
        if stat.st_size != record.get("size"):
            return False
        if stat.st_mtime_ns != record.get("mtime_ns") and content_sha256(path) != record.get("sha256"):
            return False
    return True


def done_steps(steps: List[Step]) -> set:
    """Names of the steps that are done and whose needs are all done: a step that must run again
    makes every step that reads its outputs run again too."""
    done = set()
    for step in steps:   # topological order
        if all(need in done for need in step.needs) and step_done(step):
            done.add(step.name)
    return done


def launcher_argv(step: Step, nproc_per_node: int, nnodes: int = 1, rdzv_endpoint: Optional[str] = None,
                  node_rank: Optional[int] = None) -> List[str]:
    """The command that runs `step`: torchrun with `nproc_per_node` processes (on one node a
    standalone rendezvous on a free port, so trainings side by side never collide; on several,
    c10d at `rdzv_endpoint`) for distributed steps, else the step's own command."""
    if not step.distributed:
        return list(step.argv)
    argv = ["torchrun", f"--nproc_per_node={nproc_per_node}"]
    if nnodes == 1 and rdzv_endpoint is None:
        argv.append("--standalone")
    else:
        if rdzv_endpoint is None:
            raise ValueError(f"step {step.name}: {nnodes} nodes need a rendezvous endpoint HOST:PORT")
        argv += [f"--nnodes={nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}",
                 f"--rdzv_id={step.name}"]
        if node_rank is not None:
            argv.append(f"--node_rank={node_rank}")
    return argv + list(step.argv[1:])


def _started_path(step: Step) -> Path:
    return _manifest_path(step).with_suffix(".started.json")


def record_started(step: Step) -> None:
    """Note the command a training is started with: its checkpoint continues only that command."""
    if step.training_output:
        path = _started_path(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"argv": step.argv}) + "\n")


def resume_flags(step: Step) -> List[str]:
    """What a training step adds to its command now: --resume when the checkpoint there was
    written by this very command (an interrupted run continues), --start-over when the folder
    holds a model or checkpoint of another command (or of an unknown one), nothing when fresh."""
    if not step.training_output:
        return []
    output = Path(step.training_output)
    checkpoint, model = (output / "checkpoint.pt").is_file(), (output / "model.pt").is_file()
    if not checkpoint and not model:
        return []
    try:
        started = json.loads(_started_path(step).read_text()).get("argv")
    except (OSError, ValueError, AttributeError):
        started = None
    return ["--resume"] if checkpoint and started == step.argv else ["--start-over"]

