"""Run a plan on this machine: every step as soon as the steps it needs are done and its
resources are free, each step's whole output in its own log file.

Resources: with GPUs, a training takes `step.gpus` GPUs and a one-GPU step (features, IJB-C
embeddings) one GPU, given by CUDA_VISIBLE_DEVICES and never to two steps at once; CPU-only steps
run at most `max_parallel` at a time (beside them) and see no GPU. Without GPUs every step is a
CPU step (`max_parallel` at a time) and trainings run under torchrun with gloo.

Restart: steps already done (plan.step_done, with their needs done) are skipped; a training that
was interrupted continues from its checkpoint (plan.resume_flags). A failing step stops only the
steps that need it. The state of the run is written to <out>/runner_status.json (read by --status).
"""
from __future__ import annotations

import json
import os
import queue
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from tools.experiment.display import Display, log_tail, running_line
from tools.experiment.plan import (Step, done_steps, launcher_argv, read_step_manifest, record_done,
                                   record_started, resume_flags)
from utils.common.atomic_files import atomic_write_text
from utils.common.config import REPO_ROOT

STATUS_FILE = "runner_status.json"
REFRESH_SECONDS = 1.0


def command_line(argv: List[str], env: Dict[str, str]) -> str:
    """The step as one shell line: `env K=V ... command` (what --dry-run prints and logs record)."""
    return shlex.join(["env", *(f"{key}={value}" for key, value in sorted(env.items())), *argv])


@dataclass
class Running:
    step: Step
    process: subprocess.Popen
    gpus: List[int]
    started: float
    ready: float                 # when its last need finished (or the run started)
    command: str


@dataclass
class Outcome:
    times: Dict[str, dict] = field(default_factory=dict)    # step -> seconds, cpu_seconds, skipped
    failed: List[str] = field(default_factory=list)
    blocked: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


class ChildWatcher:
    """Puts (name, exit code, CPU seconds, end time) on `events` as soon as a watched child ends.

    One thread waits for every child through Linux pidfds (`os.pidfd_open`, polled together), so
    starting a step costs no thread start: with many steps starting at once, each new thread had to
    wait for the cores the children already started hold (measured: half of a step's start in a
    fan-out of 40 on 2 cores). Where pidfds are missing, a thread per child waits instead. Either
    way `os.wait4` on the child's own pid gives its exit status and the resources of that child
    alone; no other child of the runner is reaped."""

    def __init__(self, events: "queue.Queue"):
        self.events = events
        self._pending: "queue.SimpleQueue" = queue.SimpleQueue()
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def watch(self, name: str, pid: int) -> None:
        try:
            descriptor = os.pidfd_open(pid)
        except (AttributeError, OSError):      # not Linux >= 5.3, or pidfds refused here
            threading.Thread(target=self._reap, args=(name, pid), daemon=True).start()
            return
        self._pending.put((name, pid, descriptor))
        os.write(self._wake_write, b"+")

    def close(self) -> None:
        """Stop the polling thread (children still watched by it are no longer reported)."""
        self._pending.put(None)
        os.write(self._wake_write, b"+")
        self._thread.join()
        os.close(self._wake_write)

    def _reap(self, name: str, pid: int) -> None:
        _, status, usage = os.wait4(pid, 0)
        self.events.put((name, os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, time.time()))

    def _poll(self) -> None:
        poller, watched = select.poll(), {}
        poller.register(self._wake_read, select.POLLIN)
        while True:
            for descriptor, _ in poller.poll():
                if descriptor != self._wake_read:
                    name, pid = watched.pop(descriptor)
                    poller.unregister(descriptor)
                    os.close(descriptor)
                    self._reap(name, pid)            # the child has ended: wait4 returns at once
                    continue
                os.read(self._wake_read, 4096)
                while True:
                    try:
                        item = self._pending.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        for left in watched:
                            os.close(left)
                        os.close(self._wake_read)
                        return
                    name, pid, pidfd = item
                    watched[pidfd] = (name, pid)
                    poller.register(pidfd, select.POLLIN)


class LocalBackend:
    def __init__(self, steps: List[Step], out: Path, gpus: List[int], max_parallel: int,
                 display: Optional[Display] = None):
        self.steps, self.out = steps, Path(out)
        self.by_name = {step.name: step for step in steps}
        self.index = {step.name: number for number, step in enumerate(steps, 1)}
        self.gpus, self.free_gpus = list(gpus), list(gpus)
        self.max_parallel = max(1, max_parallel)
        self.display = display or Display()
        self.events: "queue.Queue" = queue.Queue()
        self.states: Dict[str, dict] = {step.name: {"state": "waiting"} for step in steps}
        self.running: Dict[str, Running] = {}
        self.path_prefix = str(Path(sys.executable).parent)

    # ---- commands ---------------------------------------------------------------------------
    def gpus_of(self, step: Step) -> int:
        return step.gpus if self.gpus else 0

    def step_env(self, step: Step, gpu_ids: List[int]) -> Dict[str, str]:
        """What the step's environment adds to the runner's: its GPUs (none for CPU steps), one
        share of the cores per process on CPU, unbuffered output, the plan's own variables."""
        env = {"PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpu_ids))}
        if not self.gpus and "OMP_NUM_THREADS" not in step.env:
            processes = (step.processes or 1) if step.distributed else 1
            threads = str(max(1, (os.cpu_count() or 1) // (self.max_parallel * processes)))
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        env.update(step.env)
        return env

    def step_argv(self, step: Step, gpu_ids: List[int]) -> List[str]:
        processes = len(gpu_ids) if gpu_ids else (step.processes or 1)
        return launcher_argv(step, processes) + resume_flags(step)

    def dry_run_script(self, done: set, warnings: List[str]) -> str:
        """The plan as a bash script: the steps in order, with the commands and environment the
        runner would use now (GPUs as a run one step at a time would get them)."""
        lines = ["#!/usr/bin/env bash", "# written by tools/run_experiment.py --dry-run: the steps in order, "
                 "each with its log", "set -euo pipefail", f"cd {shlex.quote(str(REPO_ROOT))}",
                 f"export PATH={shlex.quote(self.path_prefix)}:\"$PATH\"",
                 f"mkdir -p {shlex.quote(str(self.out / 'logs'))}"]
        lines += [f"# warning: {warning}" for warning in warnings]
        for step in self.steps:
            number = f"[{self.index[step.name]}/{len(self.steps)}] {step.name} ({step.kind})"
            if step.name in done:
                lines.append(f"# {number}: done earlier, skipped")
                continue
            gpu_ids = self.gpus[:self.gpus_of(step)]
            lines.append(f"# {number}" + (f": {step.note}" if step.note else ""))
            lines.append(f"{command_line(self.step_argv(step, gpu_ids), self.step_env(step, gpu_ids))} "
                         f">> {shlex.quote(step.log)} 2>&1")
        return "\n".join(lines) + "\n"

    # ---- status -----------------------------------------------------------------------------
    def write_status(self) -> None:
        steps = []
        for step in self.steps:
            entry = {"name": step.name, "kind": step.kind, "needs": step.needs, "log": step.log,
                     **self.states[step.name]}
            steps.append(entry)
        status = {"runner": {"pid": os.getpid(), "updated": time.time(), "gpus": self.gpus,
                             "max_parallel": self.max_parallel}, "steps": steps}
        atomic_write_text(self.out / STATUS_FILE, json.dumps(status, indent=1) + "\n")

    # ---- running ----------------------------------------------------------------------------
    def _start(self, step: Step, gpu_ids: List[int], ready: float) -> None:
        argv, env = self.step_argv(step, gpu_ids), self.step_env(step, gpu_ids)
        line = command_line(argv, env)
        record_started(step)
        Path(step.log).parent.mkdir(parents=True, exist_ok=True)
        with open(step.log, "a") as log:
            log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} step {step.name} starts\n")
            if step.note:
                log.write(f"# {step.note}\n")
            log.write(f"$ {line}\n")
            log.flush()
            process = subprocess.Popen(argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT,
                                       env={**os.environ, "PATH": self.path_prefix + os.pathsep + os.environ.get("PATH", ""),
                                            **env})
        started = time.time()
        self.running[step.name] = Running(step, process, gpu_ids, started, ready, line)
        self.states[step.name] = {"state": "running", "pid": process.pid, "gpus": gpu_ids, "started": started,
                                  "ready": ready, "command": line}
        self.watcher.watch(step.name, process.pid)
        resumed = " (resuming from its checkpoint)" if "--resume" in argv else ""
        where = f" on GPU {','.join(map(str, gpu_ids))}" if gpu_ids else ""
        self.display.event(f"[{self.index[step.name]}/{len(self.steps)}] {step.name}: started{where}{resumed}; "
                           f"log {step.log}")

    def _startable(self, done: set) -> None:
        """Start every step whose needs are done while resources last (plan order; a training
        waiting for GPUs keeps later steps off the GPUs it needs)."""
        reserved = 0
        cpu_running = sum(1 for run in self.running.values() if not run.gpus)
        for step in self.steps:
            state = self.states[step.name]
            if state["state"] != "waiting" or not all(need in done for need in step.needs):
                continue
            ready = max([self.states[need].get("ended", self.run_started) for need in step.needs],
                        default=self.run_started)
            need = self.gpus_of(step)
            if need:
                if len(self.free_gpus) - reserved < need:
                    reserved += need if step.kind == "training" else 0
                    continue
                gpu_ids, self.free_gpus = self.free_gpus[:need], self.free_gpus[need:]
            else:
                if cpu_running >= self.max_parallel:
                    continue
                cpu_running, gpu_ids = cpu_running + 1, []
            self._start(step, gpu_ids, ready)

    def _dependents(self, name: str) -> List[str]:
        found, frontier = [], {name}
        for step in self.steps:
            if frontier & set(step.needs):
                frontier.add(step.name)
                found.append(step.name)
        return found

    def _finished(self, name: str, code: int, cpu: float, ended: float, done: set, outcome: Outcome) -> None:
        run = self.running.pop(name)
        run.process.returncode = code
        self.free_gpus = sorted(self.free_gpus + run.gpus)
        seconds = ended - run.started
        number = f"[{self.index[name]}/{len(self.steps)}] {name}"
        facts = {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "gpus": run.gpus,
                 "gpu_hours": round(seconds * len(run.gpus) / 3600, 3), "command": run.command}
        if code == 0:
            try:
                record_done(run.step, **facts)
            except (ValueError, OSError) as error:
                code, reason = 1, str(error)
        else:
            reason = f"exit {code}"
        timing = {"ready": run.ready, "started": run.started, "ended": ended, "recorded": time.time()}
        if code == 0:
            done.add(name)
            self.states[name] = {"state": "done", **facts, **timing}
            outcome.times[name] = {"seconds": facts["seconds"], "cpu_seconds": facts["cpu_seconds"], "skipped": False}
            self.display.event(f"{number}: finished in {seconds:.1f} s ({cpu:.1f} CPU s)")
            return
        self.states[name] = {"state": "failed", "reason": reason, **facts, **timing}
        outcome.failed.append(name)
        self.display.event(f"{number}: FAILED ({reason}); log {run.step.log}")
        for dependent in self._dependents(name):
            if self.states[dependent]["state"] == "waiting":
                self.states[dependent] = {"state": "blocked", "reason": f"{name} failed"}
                outcome.blocked.append(dependent)

    def _stop_children(self) -> None:
        for run in self.running.values():
            try:
                run.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def run(self) -> Outcome:
        """Run every step not done yet; returns the timings and the failed / blocked steps."""
        outcome, self.run_started = Outcome(), time.time()
        done = done_steps(self.steps)
        for step in self.steps:
            if step.name in done:
                recorded = read_step_manifest(step) or {}
                outcome.times[step.name] = {"seconds": recorded.get("seconds", 0.0),
                                            "cpu_seconds": recorded.get("cpu_seconds", 0.0), "skipped": True}
                self.states[step.name] = {"state": "done", "skipped": True,
                                          **{k: recorded[k] for k in ("seconds", "gpus", "gpu_hours") if k in recorded}}
                self.display.event(f"[{self.index[step.name]}/{len(self.steps)}] {step.name}: done earlier, skipped")
        previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
        self.watcher = ChildWatcher(self.events)    # before the first child: its thread starts on an idle box
        try:
            self._startable(done)
            self.write_status()
            while self.running:
                try:
                    event = self.events.get(timeout=REFRESH_SECONDS)
                except queue.Empty:
                    event = None
                while event is not None:
                    self._finished(*event, done, outcome)
                    try:
                        event = self.events.get_nowait()
                    except queue.Empty:
                        event = None
                self._startable(done)
                self.write_status()
                self.display.update([running_line(name, run.gpus, run.started, run.step.log)
                                     for name, run in self.running.items()])
        except KeyboardInterrupt:
            self._stop_children()
            self.display.close()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            self.watcher.close()
        self.display.close()
        return outcome


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def failure_summary(backend: LocalBackend, outcome: Outcome) -> str:
    """The failed steps with the last 5 lines of each log, and the steps they kept from running."""
    lines = []
    for name in outcome.failed:
        step = backend.by_name[name]
        lines.append(f"failed: {name} ({backend.states[name].get('reason', '')}); log {step.log}")
        recent = log_tail(step.log, 200)
        tail = recent[-5:]
        # a launcher's report can push the step's own one-line error out of the last lines
        errors = [line for line in recent if "error:" in line and line not in tail]
        lines += [f"    {line}" for line in errors[-1:] + tail]
    if outcome.blocked:
        lines.append(f"not run (they need a failed step): {', '.join(outcome.blocked)}")
    return "\n".join(lines)
