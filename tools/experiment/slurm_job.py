"""What a Slurm job of the experiment runs around its step's command (called by the job script).

    python tools/experiment/slurm_job.py start STEP.json   # prints the flags a training adds now
    python tools/experiment/slurm_job.py done STEP.json --seconds S --gpus G

`start` notes the command a training starts with and prints `--resume` when its checkpoint was
left by this very command (plan.resume_flags); `done` writes the step's manifest from its outputs
(plan.record_done), which is what marks the step done for every later run. STEP.json is the step
as the backend submitted it (`<out>/slurm/<step>.step.json`, written by tools/experiment/slurm.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.experiment.plan import Step, record_done, record_started, resume_flags  # noqa: E402
from utils.common.cli import StrictArgumentParser  # noqa: E402
from utils.common.progress import run_tool  # noqa: E402

STEP_FIELDS = {item.name for item in dataclasses.fields(Step)}


def step_json(step: Step) -> str:
    return json.dumps(dataclasses.asdict(step), indent=1) + "\n"


def read_step_values(values, source) -> Step:
    """A Step from its step_json fields; anything else is refused with one line naming `source`."""
    if not isinstance(values, dict) or not {"name", "argv", "needs", "outputs", "kind"} <= set(values):
        raise ValueError(f"{source}: not a step (name, argv, needs, outputs, kind)")
    unknown = sorted(set(values) - STEP_FIELDS)
    if unknown:
        raise ValueError(f"{source}: unknown step field(s) {', '.join(unknown)}")
    return Step(**values)


def read_step(path) -> Step:
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the step file {path}: {error}") from None
    return read_step_values(values, path)


def main(argv=None) -> None:
    parser = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "done"))
    parser.add_argument("step_file", type=Path)
    parser.add_argument("--seconds", type=float, default=0.0, help="done: the command's wall seconds")
    parser.add_argument("--gpus", type=int, default=0, help="done: the GPUs the job held")
    args = parser.parse_args(argv)
    step = read_step(args.step_file)
    if args.action == "start":
        record_started(step)
        print(" ".join(resume_flags(step)))
        return
    record_done(step, seconds=round(args.seconds, 1), gpus=args.gpus,
                gpu_hours=round(args.seconds * args.gpus / 3600, 3),
                slurm_job=os.environ.get("SLURM_JOB_ID", ""), nodes=os.environ.get("SLURM_JOB_NODELIST", ""))


if __name__ == "__main__":
    run_tool(main)
