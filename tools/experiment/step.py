"""One step of an experiment plan (the data every plan builds and every backend runs)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

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
