"""The Slurm backend of the experiment runner: a plan submitted with sbatch, one job per step.

Each step becomes `<out>/slurm/<step>.sbatch` (its #SBATCH lines, environment and exact command:
readable, and `sbatch <file>` runs it by hand), submitted with `--dependency=afterok:<jobs of its
needs>`. A training runs as `srun torchrun` over the job's nodes (one task per node, c10d
rendezvous on the job's first node) and resumes from its checkpoint.pt when an earlier job left
one; an evaluation or feature dump is a one-GPU job.

The job itself writes the step's manifest when the command succeeded (tools/experiment/slurm_job.py
done, i.e. plan.record_done), so re-running submits only what is missing: a step is done when
plan.done_steps says so (its outputs still match its manifest), and a step with a job still queued
or running (found by its job name `bctx-<hash of out>-<step>`) is not submitted twice. A failing step leaves its dependents PENDING with the reason
DependencyNeverSatisfied (`--kill-on-invalid-dep=no`, whatever the cluster's default); the next
run cancels those stale jobs and submits the failed step and its dependents again. Every sbatch
is recorded at once in `<out>/slurm/submitted.json` (written atomically), so an interrupted
submission leaves a record of what was submitted.

Called by tools/run_experiment.py --backend slurm: `submit(plan, out, options, dry_run)` and
`status(out)` / `format_status(rows)` (the plan of the last submission is kept in <out>/slurm/plan.json),
`cancel_all(out)`; `add_slurm_arguments(parser)` and
`options_from_args(args)` give the flags and the per-cluster config file (TOML).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from tools.experiment.plan import Step, attach_files, done_steps, launcher_argv
from tools.experiment.slurm_job import read_step_values, step_json
from utils.common.atomic_files import atomic_write_text
from utils.common.config import REPO_ROOT
from utils.common.output_lock import OutputLock

SLURM_FOLDER = "slurm"
RECORD_FILE = "submitted.json"
PLAN_FILE = "plan.json"                    # the steps of the last submission, in order (for --status)
JOB_HELPER = "tools/experiment/slurm_job.py"
JOB_PREFIX = "bctx"
# jobs that still hold or will hold resources: a step with one of these is not submitted again
LIVE_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED",
                         "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"})
NEVER_SATISFIED = "DependencyNeverSatisfied"
RENDEZVOUS = "${head_node}:${rdzv_port}"   # expanded by the job's shell on its first node


class SlurmError(ValueError):
    """Slurm refused or is missing (the message is one line, with Slurm's own reason)."""


# ---- options: flags and the per-cluster config file ----------------------------------------
@dataclass
class SlurmOptions:
    partition: Optional[str] = None
    account: Optional[str] = None
    time: Optional[str] = None           # Slurm's time format: "2-00:00:00", "12:00:00", minutes
    nodes: Optional[int] = None          # nodes per training (default: the step's)
    gpus_per_node: Optional[int] = None  # GPUs per training node (default: the step's); 0: no GPUs on the cluster
    cpus_per_gpu: Optional[int] = None   # CPUs per GPU (per process where there are no GPUs)
    extra_flags: List[str] = field(default_factory=list)   # more sbatch options, e.g. ["--qos=high"]


OPTION_TYPES = {"partition": str, "account": str, "time": str, "nodes": int, "gpus_per_node": int,
                "cpus_per_gpu": int, "extra_flags": list}
TYPE_NAMES = {str: "a string", int: "an integer", list: "a list of '--option=value' strings"}


def load_cluster_config(path) -> SlurmOptions:
    """A per-cluster TOML file with SlurmOptions' keys, e.g. `partition = "gpu"`, `gpus_per_node = 8`."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except OSError as error:
        raise SlurmError(f"cannot read the Slurm config {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SlurmError(f"the Slurm config {path} is not valid TOML: {error}") from None
    for key, value in values.items():
        if key not in OPTION_TYPES:
            raise SlurmError(f"{path}: unknown key {key!r} (keys are {', '.join(OPTION_TYPES)})")
        expected = OPTION_TYPES[key]
        if not isinstance(value, expected) or isinstance(value, bool) or (
                expected is list and not all(isinstance(flag, str) and flag.startswith("--") for flag in value)):
            raise SlurmError(f"{path}: {key} must be {TYPE_NAMES[expected]}, not {value!r}")
    return SlurmOptions(**values)


def add_slurm_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Slurm (--backend slurm)")
    group.add_argument("--slurm-config", type=Path, metavar="FILE",
                       help="per-cluster TOML file with partition, account, time, nodes, gpus_per_node, "
                            "cpus_per_gpu, extra_flags (flags below override it)")
    group.add_argument("--partition", help="sbatch --partition of every job")
    group.add_argument("--account", help="sbatch --account of every job")
    group.add_argument("--time", help="sbatch --time of every job (e.g. 2-00:00:00)")
    group.add_argument("--nodes", type=int, help="nodes per training (default 1)")
    group.add_argument("--gpus-per-node", type=int,
                       help="GPUs per training node; 0: the cluster has no GPUs (CPU processes, gloo)")
    group.add_argument("--cpus-per-gpu", type=int, help="CPUs per GPU (per process without GPUs)")


def options_from_args(args: argparse.Namespace) -> SlurmOptions:
    options = load_cluster_config(args.slurm_config) if args.slurm_config else SlurmOptions()
    for name in ("partition", "account", "time", "nodes", "gpus_per_node", "cpus_per_gpu"):
        if getattr(args, name) is not None:
            setattr(options, name, getattr(args, name))
    for name in ("nodes", "gpus_per_node", "cpus_per_gpu"):
        value = getattr(options, name)
        if value is not None and value < (0 if name == "gpus_per_node" else 1):
            raise SlurmError(f"--{name.replace('_', '-')} {value}: must be at least "
                             f"{0 if name == 'gpus_per_node' else 1}")
    return options


# ---- job scripts ---------------------------------------------------------------------------
def job_prefix(out) -> str:
    """`bctx-<hash>-`: the job names of one out folder (its absolute path, hashed)."""
    return f"{JOB_PREFIX}-{hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:10]}-"


def job_name(out, step: Step) -> str:
    return job_prefix(out) + step.name


def step_log(out, step: Step) -> Path:
    return Path(step.log) if step.log else Path(out) / "logs" / f"{step.name}.log"


def script_path(out, step: Step) -> Path:
    return Path(out) / SLURM_FOLDER / f"{step.name}.sbatch"


def step_file(out, step: Step) -> Path:
    return Path(out) / SLURM_FOLDER / f"{step.name}.step.json"


@dataclass
class Resources:
    nodes: int
    gpus_per_node: int       # requested from Slurm (0: none)
    processes_per_node: int  # torchrun's --nproc_per_node (distributed steps)
    cpus_per_task: Optional[int]


def resources(step: Step, options: SlurmOptions) -> Resources:
    """A training takes --nodes / --gpus-per-node where given, else the step's own; other steps
    keep the step's (an evaluation: one GPU). gpus_per_node 0 requests no GPU for any step, and a
    distributed step then runs the step's processes (gloo) per node."""
    training = step.kind == "training"
    nodes = options.nodes if training and options.nodes is not None else step.nodes
    gpus = options.gpus_per_node if training and options.gpus_per_node is not None else step.gpus
    if options.gpus_per_node == 0:
        gpus = 0
    processes = gpus if gpus > 0 else max(1, step.processes or 1)
    cpus = options.cpus_per_gpu * (processes if step.distributed else max(1, gpus)) if options.cpus_per_gpu else None
    return Resources(nodes, gpus, processes, cpus)


def resource_flags(step: Step, options: SlurmOptions) -> List[str]:
    """The #SBATCH options that decide where the job may run (what --test-only checks)."""
    need = resources(step, options)
    flags = [f"--nodes={need.nodes}", "--ntasks-per-node=1"]
    flags += [f"--gpus-per-node={need.gpus_per_node}"] if need.gpus_per_node else []
    flags += [f"--cpus-per-task={need.cpus_per_task}"] if need.cpus_per_task else []
    flags += [f"--{name}={getattr(options, name)}" for name in ("partition", "account", "time")
              if getattr(options, name)]
    return flags + list(options.extra_flags)


def shell_words(argv: Sequence[str]) -> str:
    """argv as shell text; the rendezvous endpoint stays a double-quoted variable expansion."""
    return " ".join(f'"{word}"' if RENDEZVOUS in word else shlex.quote(word) for word in argv)


def sbatch_script(step: Step, out, options: SlurmOptions) -> str:
    """The job script of `step`: #SBATCH lines, environment, the step's command (under srun
    torchrun when distributed), then the step's manifest written from its outputs."""
    out = Path(out)
    need = resources(step, options)
    header = [f"--job-name={job_name(out, step)}", f"--output={step_log(out, step)}", "--open-mode=append",
              f"--chdir={REPO_ROOT}", *resource_flags(step, options)]
    helper = f"python {JOB_HELPER} {{}} {shlex.quote(str(step_file(out, step)))}"
    lines = ["#!/bin/bash", *(f"#SBATCH {flag}" for flag in header),
             f"# step {step.name} ({step.kind}) of the experiment in {out}; by hand: sbatch this file",
             f"#   needs:   {', '.join(step.needs) or '-'}",
             *(f"#   output:  {output}" for output in step.outputs),
             "set -euo pipefail",
             f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:\"$PATH\"   # the runner's Python",
             "export PYTHONUNBUFFERED=1",
             *(f"export {name}={shlex.quote(value)}" for name, value in step.env.items()),
             f'echo "# $(date \'+%F %T\') job $SLURM_JOB_ID: step {step.name} on $SLURM_JOB_NODELIST"',
             *([f"echo {shlex.quote('# ' + step.note)}"] if step.note else []),
             "started=$SECONDS"]
    argv, flags = list(step.argv), ""
    if step.training_output:
        lines.append(f"flags=$({helper.format('start')})   # --resume: continue from the checkpoint it left")
        flags = " $flags"
    if step.distributed:
        lines += ["# c10d rendezvous on the job's first node, on a port of this job",
                  'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                  "rdzv_port=$((20000 + SLURM_JOB_ID % 20000))"]
        srun = ["srun", f"--nodes={need.nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
        srun += [f"--cpus-per-task={need.cpus_per_task}"] if need.cpus_per_task else []
        argv = srun + launcher_argv(step, need.processes_per_node, need.nodes, RENDEZVOUS)
    lines.append(shell_words(argv) + flags)
    lines.append(helper.format("done") + f" --seconds $((SECONDS - started)) --gpus {need.nodes * need.gpus_per_node}")
    return "\n".join(lines) + "\n"


# ---- Slurm commands ------------------------------------------------------------------------
def slurm_command(argv: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} is not on PATH: run on a Slurm login node (or load its module)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer in {timeout:.0f} s (is slurmctld up?)") from None


def slurm_reason(result: subprocess.CompletedProcess) -> str:
    """Slurm's own reason from a failed command's output: its last error line."""
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "failure" in line.lower()]
    reason = (errors or lines or [f"exit status {result.returncode}"])[-1]
    for prefix in ("sbatch: error: ", "squeue: error: ", "scancel: error: ", "sacct: error: "):
        reason = reason.removeprefix(prefix)
    return reason


@dataclass
class Job:
    job_id: str
    step: str
    state: str
    reason: str = ""
    nodes: str = ""
    elapsed: str = ""


def job_number(job_id: str) -> int:
    return int(job_id.split("_")[0].split(".")[0])


def queued_jobs(out) -> Dict[str, List[Job]]:
    """This user's jobs of `out` that Slurm still knows (queued, running, or recently ended), by
    step, oldest first."""
    prefix = job_prefix(out)
    result = slurm_command(["squeue", "--me", "--noheader", "--states=all", "--format=%i|%j|%T|%r|%N|%M"])
    if result.returncode != 0:
        raise SlurmError(f"squeue failed: {slurm_reason(result)}")
    jobs: Dict[str, List[Job]] = {}
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 6 and parts[1].startswith(prefix):
            job_id, name, state, reason, nodes, elapsed = parts
            jobs.setdefault(name[len(prefix):], []).append(Job(job_id, name[len(prefix):], state, reason,
                                                               nodes, elapsed))
    for step_jobs in jobs.values():
        step_jobs.sort(key=lambda job: job_number(job.job_id))
    return jobs


def accounted_jobs(job_ids: Sequence[str], prefix: str) -> Dict[str, Job]:
    """sacct's record of the jobs (where the cluster keeps accounting), by job id; {} without it."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    result = slurm_command(["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={','.join(job_ids)}",
                            "--format=JobID,JobName,State,NodeList,Elapsed"])
    if result.returncode != 0:
        return {}   # accounting disabled: squeue and the outputs tell what they can
    jobs = {}
    for line in result.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 5 and parts[1].startswith(prefix):
            job_id, name, state, nodes, elapsed = parts
            jobs[job_id] = Job(job_id, name[len(prefix):], state.split()[0], "", nodes, elapsed)
    return jobs


def cancel(job_ids: Sequence[str]) -> None:
    if job_ids:
        result = slurm_command(["scancel", *job_ids])
        if result.returncode != 0:
            raise SlurmError(f"scancel {' '.join(job_ids)} failed: {slurm_reason(result)}")


def cancel_all(out, say: Callable[[str], None] = print) -> List[str]:
    """scancel every queued or running job of `out` (found by its job names); returns their ids.
    Their steps resume with the next submission (a training from its checkpoint)."""
    out = Path(out).resolve()
    live = [job for jobs in queued_jobs(out).values() for job in jobs if job.state in LIVE_STATES]
    cancel([job.job_id for job in live])
    say(f"slurm: cancelled {len(live)} job(s) of {out}" +
        (": " + ", ".join(f"{job.step} ({job.job_id})" for job in live) if live else ""))
    return [job.job_id for job in live]


# ---- the record of submitted jobs ------------------------------------------------------------
def record_path(out) -> Path:
    return Path(out) / SLURM_FOLDER / RECORD_FILE


def read_record(out) -> dict:
    path = record_path(out)
    if not path.exists():
        return {"out": str(out), "job_prefix": job_prefix(out), "steps": {}}
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SlurmError(f"cannot read {path}: {error}") from None
    if not isinstance(record, dict) or not isinstance(record.get("steps"), dict):
        raise SlurmError(f"{path} is not a record of submitted jobs (no 'steps')")
    return record


def write_record(out, record: dict) -> None:
    atomic_write_text(record_path(out), json.dumps(record, indent=1) + "\n")


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


# ---- submission ------------------------------------------------------------------------------
@dataclass
class Decision:
    step: Step
    action: str                    # "done" | "queued" | "submit"
    job: Optional[Job] = None      # the live job kept, or the stale one to cancel
    stale: str = ""                # why the job is cancelled before the step is submitted again


def decide(plan: Sequence[Step], queued: Dict[str, List[Job]], say: Callable[[str], None]) -> List[Decision]:
    """What each step needs: nothing (done), its live job, or a new job (cancelling a stale one)."""
    decisions, resubmitted, done = [], set(), done_steps(list(plan))
    for step in plan:
        live = [job for job in queued.get(step.name, []) if job.state in LIVE_STATES]
        if step.name in done:
            decisions.append(Decision(step, "done"))
            continue
        job = live[-1] if live else None
        if len(live) > 1:
            say(f"slurm: step {step.name} has {len(live)} live jobs ({', '.join(j.job_id for j in live)}); "
                f"waiting on the newest, {job.job_id}")
        again = sorted(resubmitted.intersection(step.needs))
        if job is not None and job.state == "PENDING" and (job.reason == NEVER_SATISFIED or again):
            why = (f"it waits on the old job of {', '.join(again)}, submitted again" if again
                   else f"{NEVER_SATISFIED}: a job it waits on failed or was cancelled")
            decisions.append(Decision(step, "submit", job, stale=why))
        elif job is not None:
            if again:
                say(f"slurm: warning: step {step.name} is {job.state} (job {job.job_id}) while {', '.join(again)}, "
                    f"which it needs, is submitted again; its outputs may be stale")
            decisions.append(Decision(step, "queued", job))
            continue
        else:
            decisions.append(Decision(step, "submit"))
        resubmitted.add(step.name)
    return decisions


def dependency(step: Step, job_ids: Dict[str, str]) -> Optional[str]:
    waits = [job_ids[need] for need in step.needs if need in job_ids]
    return "afterok:" + ":".join(waits) if waits else None


def validate_requests(decisions: Sequence[Decision], out, options: SlurmOptions) -> None:
    """`sbatch --test-only` on each distinct request before anything is submitted: a request the
    cluster refuses (unknown partition or account, too many nodes or GPUs) stops the run at once."""
    checked = set()
    for decision in decisions:
        flags = tuple(resource_flags(decision.step, options))
        if decision.action != "submit" or flags in checked:
            continue
        checked.add(flags)
        result = slurm_command(["sbatch", "--test-only", str(script_path(out, decision.step))])
        if result.returncode != 0:
            raise SlurmError(f"the cluster refuses step {decision.step.name} ({' '.join(flags)}): "
                             f"{slurm_reason(result)}; nothing submitted")


def print_dry_run(decisions: Sequence[Decision], out, options: SlurmOptions, say: Callable[[str], None]) -> None:
    """The submission as a bash script: each job script written by a here-document, then sbatch'ed
    in order, a job's id kept in a variable its dependents wait on (running it submits the plan)."""
    to_submit = [d for d in decisions if d.action == "submit"]
    say(f"#!/bin/bash\n# Slurm plan for {out}: {len(to_submit)} job(s) to submit, "
        f"{sum(d.action == 'done' for d in decisions)} step(s) done, "
        f"{sum(d.action == 'queued' for d in decisions)} queued or running\nset -euo pipefail")
    variables = {d.step.name: "job_" + "".join(c if c.isalnum() else "_" for c in d.step.name) for d in to_submit}
    job_ids = {d.step.name: d.job.job_id for d in decisions if d.action == "queued"}
    job_ids.update({name: "${" + variable + "}" for name, variable in variables.items()})
    folders = sorted({str(script_path(out, d.step).parent) for d in to_submit} |
                     {str(step_log(out, d.step).parent) for d in to_submit})
    if folders:
        say("mkdir -p " + " ".join(shlex.quote(folder) for folder in folders))
    for decision in decisions:
        step = decision.step
        if decision.action != "submit":
            say(f"# {step.name}: " + ("done (outputs in place)" if decision.action == "done"
                                      else f"job {decision.job.job_id} {decision.job.state}, not submitted again"))
            continue
        if decision.stale:
            say(f"scancel {decision.job.job_id}   # the stale job of {step.name}: {decision.stale}")
        path, wait = script_path(out, step), dependency(step, job_ids)
        say(f"cat > {shlex.quote(str(step_file(out, step)))} <<'END_OF_STEP'\n{step_json(step)}END_OF_STEP")
        say(f"cat > {shlex.quote(str(path))} <<'END_OF_SBATCH_SCRIPT'\n"
            f"{sbatch_script(step, out, options)}END_OF_SBATCH_SCRIPT")
        say(f"{variables[step.name]}=$(sbatch --parsable --kill-on-invalid-dep=no"
            f"{' --dependency=' + wait if wait else ''} {shlex.quote(str(path))} | cut -d';' -f1)")
        say(f'echo "{step.name}: job ${{{variables[step.name]}}}"')


def submit(plan: Sequence[Step], out, options: SlurmOptions, dry_run: bool = False,
           say: Callable[[str], None] = print) -> Dict[str, str]:
    """Submit what the plan still lacks; returns {step: job id} of every step not done (new or queued).

    dry_run: print the scripts and the sbatch commands in submission order; nothing written or submitted."""
    out = Path(out).resolve()
    plan = attach_files(list(plan), out)   # logs and step manifests under out; names and order checked
    if dry_run:
        queued = queued_jobs(out) if shutil.which("squeue") else {}
        if not shutil.which("squeue"):
            say("# (squeue is not on PATH: queued jobs are not looked up)")
        print_dry_run(decide(plan, queued, say), out, options, say)
        return {}
    if shutil.which("sbatch") is None:
        raise SlurmError("sbatch is not on PATH: run on a Slurm login node (or load its module); nothing submitted")
    lock = OutputLock(out / SLURM_FOLDER).acquire()   # one submission per out folder at a time
    try:
        return _submit_locked(plan, out, options, say)
    finally:
        lock.release()


def _submit_locked(plan: Sequence[Step], out: Path, options: SlurmOptions, say: Callable[[str], None]) -> Dict[str, str]:
    decisions = decide(plan, queued_jobs(out), say)
    to_submit = [d for d in decisions if d.action == "submit"]
    atomic_write_text(out / SLURM_FOLDER / PLAN_FILE,
                      json.dumps({"steps": [json.loads(step_json(step)) for step in plan]}, indent=1) + "\n")
    for decision in to_submit:
        step_log(out, decision.step).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(step_file(out, decision.step), step_json(decision.step))
        atomic_write_text(script_path(out, decision.step), sbatch_script(decision.step, out, options))
    validate_requests(decisions, out, options)
    record = read_record(out)
    recorded = {entry["job_id"] for entries in record["steps"].values() for entry in entries}
    found = [d for d in decisions if d.job is not None and d.job.job_id not in recorded]
    for decision in found:   # submitted by a run whose record was lost: found by name, recorded now
        record["steps"].setdefault(decision.step.name, []).append(
            {"job_id": decision.job.job_id, "found": f"{now()}: by its job name in squeue, {decision.job.state}"})
    if found:
        write_record(out, record)
    stale = [d for d in to_submit if d.stale]
    if stale:
        cancel([d.job.job_id for d in stale])
        for decision in stale:
            for entry in record["steps"].get(decision.step.name, []):
                if entry["job_id"] == decision.job.job_id:
                    entry["cancelled"] = f"{now()}: {decision.stale}"
            say(f"slurm: cancelled job {decision.job.job_id} of {decision.step.name} ({decision.stale})")
        write_record(out, record)
    job_ids = {d.step.name: d.job.job_id for d in decisions if d.action == "queued"}
    for number, decision in enumerate(to_submit, 1):
        step, wait = decision.step, dependency(decision.step, job_ids)
        command = ["sbatch", "--parsable", "--kill-on-invalid-dep=no", *([f"--dependency={wait}"] if wait else []),
                   str(script_path(out, step))]
        result = slurm_command(command)
        if result.returncode != 0:
            done = [d.step.name for d in to_submit[:number - 1]]
            raise SlurmError(f"sbatch refused step {step.name}: {slurm_reason(result)}; "
                             + (f"submitted before it: {', '.join(done)} (recorded in {record_path(out)}); "
                                if done else "nothing submitted; ")
                             + "run the same command again to submit the rest")
        job_ids[step.name] = result.stdout.strip().split(";")[0]
        record["steps"].setdefault(step.name, []).append(
            {"job_id": job_ids[step.name], "submitted": now(), "dependency": wait,
             "script": str(script_path(out, step)), "log": str(step_log(out, step))})
        write_record(out, record)
        say(f"slurm: [{number}/{len(to_submit)}] {step.name}: job {job_ids[step.name]}"
            + (f" after {wait[len('afterok:'):].replace(':', ', ')}" if wait else ""))
    done = sum(d.action == "done" for d in decisions)
    say(f"slurm: {len(to_submit)} job(s) submitted, {len(decisions) - len(to_submit) - done} already queued or "
        f"running, {done} step(s) done; job names {job_prefix(out)}<step>; watch with --status")
    return job_ids


# ---- status ----------------------------------------------------------------------------------
@dataclass
class StepStatus:
    name: str
    state: str          # Slurm's (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...) or NOT SUBMITTED
    job_id: str = ""
    nodes: str = ""
    elapsed: str = ""
    note: str = ""


def submitted_plan(out) -> List[Step]:
    """The steps of the last submission in `out` (<out>/slurm/plan.json)."""
    path = Path(out) / SLURM_FOLDER / PLAN_FILE
    if not path.exists():
        raise SlurmError(f"{out}: nothing was submitted to Slurm from here ({path} not found)")
    try:
        steps = json.loads(path.read_text())["steps"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SlurmError(f"{path}: unreadable ({error})") from None
    return [read_step_values(values, path) for values in steps]


def status(out, plan: Optional[Sequence[Step]] = None) -> List[StepStatus]:
    """Each step's state: Slurm's for its newest job (squeue, else sacct where the cluster keeps
    accounting), and the outputs for steps Slurm no longer knows. `plan`: the last submitted one."""
    out = Path(out).resolve()
    plan = submitted_plan(out) if plan is None else attach_files(list(plan), out)
    queued = queued_jobs(out)
    record = read_record(out)
    newest = {}
    for step in plan:
        ids = [entry["job_id"] for entry in record["steps"].get(step.name, [])]
        ids += [job.job_id for job in queued.get(step.name, [])]
        if ids:
            newest[step.name] = max(ids, key=job_number)
    known = {job.job_id: job for jobs in queued.values() for job in jobs}
    accounted = accounted_jobs([job_id for job_id in newest.values() if job_id not in known], job_prefix(out))
    rows, done_names = [], done_steps(list(plan))
    for step in plan:
        job_id = newest.get(step.name, "")
        job = known.get(job_id) or accounted.get(job_id)
        done = step.name in done_names
        if job is not None:
            ended_badly = job.state not in LIVE_STATES | {"COMPLETED"}
            note = job.reason if job.reason not in ("", "None") and (job.state == "PENDING" or ended_badly) else ""
            if ended_badly:
                note = f"{note}; log {step_log(out, step)}".lstrip("; ")
            if job.state == "COMPLETED" and not done:
                note = "outputs missing or changed since: a re-run submits it again"
            rows.append(StepStatus(step.name, job.state, job_id, job.nodes, job.elapsed, note))
        elif done:
            rows.append(StepStatus(step.name, "COMPLETED", job_id, note="outputs in place"))
        elif job_id:
            rows.append(StepStatus(step.name, "FAILED", job_id, note=f"job {job_id} has left the queue and the "
                                   f"outputs are missing (failed or cancelled); log: {step_log(out, step)}"))
        else:
            rows.append(StepStatus(step.name, "NOT SUBMITTED"))
    return rows


def format_status(rows: Sequence[StepStatus]) -> str:
    header = StepStatus("step", "state", "job", "nodes", "elapsed", "")
    table = [header, *rows]
    widths = [max(len(getattr(row, name)) for row in table) for name in ("name", "state", "job_id", "nodes", "elapsed")]
    lines = []
    for row in table:
        cells = [getattr(row, name).ljust(width) for name, width in
                 zip(("name", "state", "job_id", "nodes", "elapsed"), widths)]
        lines.append("  ".join(cells + [row.note]).rstrip())
    return "\n".join(lines)
