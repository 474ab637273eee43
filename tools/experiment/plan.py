"""The experiment plan: steps, when a step is done, and how it is launched.

A plan is an ordered list of `Step`s (topological order). Each step is the command a user would
type (relative to the repository root, without a launcher); backends (tools/experiment/local.py,
and a Slurm backend) decide where and when it runs. Whether a step is done is decided from its
outputs: when a step succeeds the backend calls `record_done`, which writes the step's manifest
(`<out>/.steps/<name>.json`: its command and every output's size, mtime and content checksum);
`step_done` then holds only while every output is still there with the recorded content, so a
step whose output was deleted or changed runs again.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from utils.common.checksums import content_sha256
from utils.common.atomic_files import atomic_write_text

STEP_KINDS = ("training", "evaluation", "tool")
STEP_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
STATE_FOLDER = ".steps"      # <out>/.steps/<name>.json: the manifests of finished steps
LOG_FOLDER = "logs"          # <out>/logs/<name>.log


@dataclass
class Step:
    name: str                 # unique, [A-Za-z0-9_.-]
    argv: List[str]           # the script a user would run, without a launcher, relative to the repo root
    needs: List[str]          # names of steps that must finish first
    outputs: List[str]        # absolute paths that exist when the step is done
    kind: str                 # "training" | "evaluation" | "tool"
    gpus: int = 0             # 0: CPU-only step; 1: one-GPU step; G: a training on G GPUs
    nodes: int = 1            # trainings may span nodes (Slurm backend)
    env: Dict[str, str] = field(default_factory=dict)   # extra environment for the step
    log: str = ""             # <out>/logs/<name>.log
    distributed: bool = False  # True: run under torchrun (the backend builds the launcher)
    # added for the local backend: a training's output folder (resumed from its checkpoint.pt)
    training_output: str = ""
    manifest: str = ""        # <out>/.steps/<name>.json, written by record_done
    processes: int = 0        # processes per node of a distributed step (default: gpus; CPU trainings: gloo processes)
    note: str = ""            # a line the backend writes at the top of the step's log (e.g. the batch split)


def attach_files(steps: List[Step], out: Path) -> List[Step]:
    """Fill each step's log and manifest paths under `out`; check names, kinds and needs."""
    names = set()
    for step in steps:
        if not STEP_NAME.match(step.name) or step.name in names:
            raise ValueError(f"step name {step.name!r} is not unique or not [A-Za-z0-9_.-]")
        if step.kind not in STEP_KINDS:
            raise ValueError(f"step {step.name}: kind {step.kind!r} is not one of {', '.join(STEP_KINDS)}")
        missing = [need for need in step.needs if need not in names]
        if missing:
            raise ValueError(f"step {step.name} needs {missing}, which do not come before it")
        names.add(step.name)
        step.log = step.log or str(out / LOG_FOLDER / f"{step.name}.log")
        step.manifest = step.manifest or str(out / STATE_FOLDER / f"{step.name}.json")
    return steps


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


def build_plan(args) -> List[Step]:
    """The MS1M-V3 / IJB-C plan of one scenario and setting (tools/experiment/ms1mv3.py)."""
    from tools.experiment.ms1mv3 import ms1mv3_plan   # it builds Steps: imported here, not at the top
    return ms1mv3_plan(args)
