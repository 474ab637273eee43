"""A real single-node Slurm cluster for the tests, from Debian's packages (slurm-wlm, munge).

Everything lives in a temporary folder: munged with its own key and socket, a slurm.conf written
here (this machine as the one node with its CPUs and memory, no GPUs, select/cons_tres,
proctrack/linuxproc, no cgroups, no accounting, ports of its own), the controller's state and the
node's spool. SLURM_CONF points at it while the fixture is alive; nothing is written under /etc.
The daemons started here are stopped by their pids afterwards.

Import the fixture into a test module: `from tests.slurm_cluster import slurm_cluster`.
Without the binaries the tests are skipped, except in CI (CI=true), where that is a failure:
.ci/run installs the packages.
"""
from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import pytest

from tests.training_fixtures import free_port

DAEMONS = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd"}
CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
PARTITION = "debug"
START_SECONDS = 30


@dataclass
class SlurmCluster:
    folder: Path
    conf: Path
    node: str
    partition: str
    cpus: int

    def env(self) -> Dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def run(self, *command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster; fails the test with its output on error."""
        result = subprocess.run(list(command), env=self.env(), capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{' '.join(command)}: {result.stdout}{result.stderr}"
        return result

    def queue(self) -> str:
        return self.run("squeue", "--noheader", "--states=all", "--format=%i|%j|%T|%r|%N").stdout

    def wait_until_idle(self, timeout: float = 120) -> None:
        """Until no job is pending, running or completing (the cluster's queue drained)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.run("squeue", "--noheader", "--format=%i").stdout.strip():
                return
            time.sleep(0.2)
        raise AssertionError(f"Slurm jobs still queued after {timeout} s:\n{self.queue()}")

    def log_tails(self) -> str:
        return "\n".join(f"--- {name}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:])
                         for name in ("slurmctld.log", "slurmd.log", "munged.log")
                         if (path := self.folder / name).exists())


def _missing_binaries() -> list:
    missing = [path for path in DAEMONS.values() if not os.access(path, os.X_OK)]
    return missing + [name for name in CLIENTS if shutil.which(name) is None]


def _node_memory_mb() -> int:
    """The node's RealMemory: a little under the machine's total, which slurmd must not find short."""
    total_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:"))
    return int(total_kb / 1024 * 0.9)


def write_slurm_conf(folder: Path, node: str, cpus: int, user: str) -> Path:
    conf = folder / "slurm.conf"
    settings = [
        "ClusterName=bctxtest",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmUser={user}", f"SlurmdUser={user}",
        f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        "AuthType=auth/munge", f"AuthInfo=socket={folder / 'munge.socket'}", "CredType=cred/munge",
        f"StateSaveLocation={folder / 'state'}", f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}", f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}", f"SlurmdLogFile={folder / 'slurmd.log'}",
        # no cgroups anywhere: processes tracked by parent pid, no task binding, no accounting
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none", "MpiDefault=none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        "ReturnToService=2",
        # quick: cancelled jobs die 2 s after SIGTERM; the scheduler looks at the queue every 2 s
        "KillWait=2", "SchedulerParameters=sched_interval=2,bf_interval=1",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_node_memory_mb()} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    ]
    conf.write_text("\n".join(settings) + "\n")
    return conf


def _stop(pid_files) -> None:
    """SIGTERM the daemons whose pids the files hold; SIGKILL those still there after 10 s."""
    pids = []
    for pid_file in pid_files:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
            pids.append(pid)
    deadline = time.time() + 10
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            while time.time() < deadline:
                os.kill(pid, 0)
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def running_cluster(folder: Path):
    """Start munged, slurmctld and slurmd in `folder`; on exit cancel every job and stop them."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)   # munged refuses a key or socket folder others can write to
    (folder / "state").mkdir()
    (folder / "spool").mkdir()
    key = folder / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o600)
    node, cpus = socket.gethostname().split(".")[0], os.cpu_count() or 1
    conf = write_slurm_conf(folder, node, cpus, getpass.getuser())
    cluster = SlurmCluster(folder, conf, node, PARTITION, cpus)
    env = cluster.env()
    started = []
    try:
        subprocess.run([DAEMONS["munged"], "--force", f"--key-file={key}", f"--socket={folder / 'munge.socket'}",
                        f"--pid-file={folder / 'munged.pid'}", f"--log-file={folder / 'munged.log'}",
                        f"--seed-file={folder / 'munged.seed'}"], env=env, check=True, capture_output=True)
        started.append(folder / "munged.pid")
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([DAEMONS[daemon]], env=env, check=True, capture_output=True)
            started.append(folder / f"{daemon}.pid")
        deadline = time.time() + START_SECONDS
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "--noheader", "--format=%T"], env=env, capture_output=True, text=True)
            if state.stdout.strip() == "idle":
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the test Slurm node is not idle after {START_SECONDS} s:\n{cluster.log_tails()}")
        yield cluster
    finally:
        if started[1:]:
            subprocess.run(["scancel", "--full", f"--user={getpass.getuser()}"], env=env, capture_output=True)
            with contextlib.suppress(AssertionError, subprocess.SubprocessError):
                cluster.wait_until_idle(timeout=20)
        _stop(started[1:])   # slurmd and slurmctld, then munged (they authenticate through it to the end)
        _stop(started[:1])


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """The running test cluster; SLURM_CONF points at it for the session (restored afterwards)."""
    missing = _missing_binaries()
    if missing:
        reason = f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI: {reason} (.ci/run installs them)")
        pytest.skip(reason)
    previous = os.environ.get("SLURM_CONF")
    with running_cluster(tmp_path_factory.mktemp("slurm_cluster")) as cluster:
        os.environ["SLURM_CONF"] = str(cluster.conf)
        try:
            yield cluster
        finally:
            if previous is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = previous
