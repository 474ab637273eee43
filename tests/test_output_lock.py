"""The output lock (utils/common/output_lock.py): a stale lock is taken over by exactly one of
several starters released together, an empty or garbled lock is stale only once it is old, and a
lock per file lets tools that write different files of one folder run side by side."""
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest

from utils.common.output_lock import LOCK_NAME, OutputLock, WRITE_GRACE_SECONDS, lock_files

RACE_ROUNDS = 300
RACE_STARTERS = 4


def dead_pid() -> int:
    """The pid of a process that has ended (reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_stale_lock(path, pid: int) -> None:
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "start_time": "1"}) + "\n")


def _starter(folder, start, done, release, held_count):
    for _ in range(RACE_ROUNDS):
        start.wait()
        lock = OutputLock(folder)
        try:
            lock.acquire()
        except ValueError:
            pass
        if lock.held:
            with held_count.get_lock():
                held_count.value += 1
        done.wait()       # every starter has tried: the count is final
        release.wait()    # the parent has read it
        if lock.held:
            lock.release()


@pytest.mark.timeout(300)
def test_stale_lock_is_taken_over_by_exactly_one_starter(tmp_path):
    """RACE_STARTERS processes that all find the same stale lock, released together, RACE_ROUNDS times."""
    context = multiprocessing.get_context("fork")
    start, done, release = (context.Barrier(RACE_STARTERS + 1) for _ in range(3))
    held_count = context.Value("i", 0)
    folder = tmp_path / "out"
    folder.mkdir()
    stale = dead_pid()
    starters = [context.Process(target=_starter, args=(folder, start, done, release, held_count))
                for _ in range(RACE_STARTERS)]
    for process in starters:
        process.start()
    holders = []
    try:
        for _ in range(RACE_ROUNDS):
            write_stale_lock(folder / LOCK_NAME, stale)
            held_count.value = 0
            start.wait(timeout=60)
            done.wait(timeout=60)
            holders.append(held_count.value)
            release.wait(timeout=60)
    finally:
        for process in starters:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    assert holders == [1] * RACE_ROUNDS, f"rounds with other than one holder: {[h for h in holders if h != 1]}"


def test_empty_lock_being_written_is_refused_then_stale_when_old(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / LOCK_NAME).write_text("")
    with pytest.raises(ValueError) as refusal:
        OutputLock(folder).acquire()
    message = str(refusal.value)
    assert "pid ?" not in message and "being written" in message and str(folder / LOCK_NAME) in message
    old = time.time() - WRITE_GRACE_SECONDS - 1
    os.utime(folder / LOCK_NAME, (old, old))
    lock = OutputLock(folder).acquire()
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (folder / LOCK_NAME).exists()


def test_garbled_old_lock_is_stale(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / LOCK_NAME).write_text('{"host": "this-host", "pi')   # a writer killed mid-line
    old = time.time() - WRITE_GRACE_SECONDS - 1
    os.utime(folder / LOCK_NAME, (old, old))
    OutputLock(folder).acquire().release()


def test_live_lock_names_its_holder(tmp_path):
    folder = tmp_path / "out"
    holder = OutputLock(folder).acquire()
    try:
        with pytest.raises(ValueError, match=rf"in use by another run \(pid {os.getpid()} on "):
            # a second lock object of another process would be refused the same way; one of this
            # process is taken over on purpose (an earlier Trainer), so pretend another pid
            other = OutputLock(folder)
            other.owner = dict(other.owner, pid=os.getpid() + 1)
            other.acquire()
    finally:
        holder.release()


def test_file_locks_let_different_files_of_one_folder_be_written_side_by_side(tmp_path):
    """Per-file locks: another file of the folder can be written meanwhile, the same file cannot."""
    held = lock_files([tmp_path / "a_feature.npy", tmp_path / "a_label.npy"])
    try:
        lock_files([tmp_path / "a_avg_feature.npy"]).release()
        second = subprocess.run(
            [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[2]); "
             "from utils.common.output_lock import lock_files; lock_files([sys.argv[1]])",
             str(tmp_path / "a_label.npy"), os.getcwd()], capture_output=True, text=True, timeout=60)
    finally:
        held.release()
    assert second.returncode != 0
    assert (f"a_label.npy is being written by another run (pid {os.getpid()} on {socket.gethostname()}"
            in second.stderr), second.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == []   # every lock released
