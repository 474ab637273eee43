"""A run killed with SIGKILL and resumed with --resume ends with exactly the weights of an
uninterrupted run (CPU, deterministic mode), with and without loader workers."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.training_fixtures import (REPO_ROOT, run, single_thread, subprocess_env, tiny_training_keys, write_config,
                                     write_tiny_rec)
from utils.engine import train
from utils.plain_methods import ArcFaceMethod

TOTAL_STEPS = 24  # 32 images / batch 4 = 8 steps per epoch, 3 epochs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (in this process, one thread like the subprocesses)."""
    directory = tmp_path_factory.mktemp("resume")
    rec = write_tiny_rec(directory / "rec")
    keys = tiny_training_keys(rec, directory / "reference", num_epoch=3, deterministic=True, save_every_steps=3)
    with single_thread():
        train(ArcFaceMethod, [str(write_config(directory / "reference.py", **keys))])
    return directory, keys, torch.load(directory / "reference" / "model.pt", weights_only=True)


def kill_after_first_checkpoint(config, checkpoint, log_path):
    """Start a run, SIGKILL it as soon as checkpoint.pt appears; returns the step it holds."""
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, str(REPO_ROOT / "train_old_arc.py"), str(config)],
                                   env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT))
        deadline = time.time() + 180
        while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, log_path.read_text()[-2000:]
    return torch.load(checkpoint, weights_only=False)["step"]


@pytest.mark.parametrize("killed_workers, resumed_workers", [
    (0, 2),
    pytest.param(2, 0, marks=pytest.mark.heavy),
    pytest.param(0, 0, marks=pytest.mark.heavy),
])
def test_killed_and_resumed_run_matches_uninterrupted_run(reference, killed_workers, resumed_workers):
    directory, keys, expected = reference
    name = f"killed_{killed_workers}_{resumed_workers}"
    output = directory / name
    config = write_config(directory / f"{name}.py", **dict(keys, output=str(output), num_workers=killed_workers))
    step = kill_after_first_checkpoint(config, output / "checkpoint.pt", directory / f"{name}.log")
    assert 0 < step < TOTAL_STEPS, f"the run was not killed mid-training (checkpoint at step {step})"
    resumed = run([sys.executable, str(REPO_ROOT / "train_old_arc.py"), str(config), "--resume",
                   "--set", f"num_workers={resumed_workers}"], timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {output / 'checkpoint.pt'}: epoch" in resumed.stdout
    weights = torch.load(output / "model.pt", weights_only=True)
    assert set(weights) == set(expected)
    different = [name for name in expected if not torch.equal(weights[name], expected[name])]
    assert not different, f"resumed from step {step}; tensors differ: {different[:5]}"
