"""A run killed with SIGKILL and resumed with --resume ends with exactly the weights of an
uninterrupted run (CPU, deterministic mode), with and without loader workers; the pieces of a
checkpoint that make a resume world-size independent or per rank."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import losses.partial_fc as partial_fc
from losses.margin import CombinedMarginLoss
from losses.partial_fc import PartialFC
from tests.training_fixtures import (REPO_ROOT, run, single_thread, subprocess_env, tiny_training_keys, write_config,
                                     write_tiny_rec)
from utils.training.checkpoint import full_head_optimizer_state, sharded_head_optimizer_state, state_digest
from utils.training.engine import train
from utils.training.plain_methods import ArcFaceMethod

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
    return torch.load(checkpoint, weights_only=True)["step"]


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


def partial_fc_with_momentum(num_classes: int, rank: int = 0, world_size: int = 1, monkeypatch=None):
    """A Partial FC head as `rank` of `world_size` would build it, and an SGD step's momentum."""
    if monkeypatch is not None:
        monkeypatch.setattr(partial_fc, "get_rank", lambda: rank)
        monkeypatch.setattr(partial_fc, "get_world_size", lambda: world_size)
    head = PartialFC(CombinedMarginLoss(64.0, 1.0, 0.5, 0.0), 8, num_classes)
    backbone_weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([{"params": [backbone_weight]}, {"params": list(head.parameters())}],
                                lr=0.1, momentum=0.9)
    for parameter in (backbone_weight, head.weight):
        parameter.grad = torch.randn_like(parameter)
    optimizer.step()
    return head, optimizer


def test_head_momentum_is_stored_for_all_classes_and_resharded_for_any_rank(monkeypatch):
    head, optimizer = partial_fc_with_momentum(10)
    full = full_head_optimizer_state(optimizer, head)
    momentum = optimizer.state[head.weight]["momentum_buffer"]
    assert list(full) == [1] and torch.equal(full[1]["momentum_buffer"], momentum)  # index 1: after the backbone
    # rank 1 of 3 holds classes 4, 5, 6 (the first 10 % 3 ranks take one extra class)
    other_head, other_optimizer = partial_fc_with_momentum(10, rank=1, world_size=3, monkeypatch=monkeypatch)
    sharded = sharded_head_optimizer_state(full, other_optimizer, other_head)
    assert torch.equal(sharded[1]["momentum_buffer"], momentum[4:7])
    other_optimizer.load_state_dict({**other_optimizer.state_dict(),
                                     "state": {**other_optimizer.state_dict()["state"], **sharded}})
    assert torch.equal(other_optimizer.state[other_head.weight]["momentum_buffer"], momentum[4:7])


def test_state_digest_tells_method_states_apart():
    def queue_state(first_logit: float, class_shard=(0, 2)):
        logits = torch.zeros(4, 2, dtype=torch.float16)
        logits[0, 0] = first_logit
        return {"queue": {"logits": logits, "labels": torch.tensor([0, 1, -1, -1]), "pointer": 2},
                "class_shard": class_shard}
    assert state_digest(queue_state(1.0)) == state_digest(queue_state(1.0))
    assert state_digest(queue_state(1.0)) != state_digest(queue_state(2.0))
    assert state_digest(queue_state(1.0)) != state_digest(queue_state(1.0, class_shard=(2, 2)))
    assert state_digest(torch.tensor([1.0])) != state_digest(torch.tensor([1]))
    assert state_digest({}) == state_digest({}) != state_digest([])


def test_resume_keeps_the_best_verification_accuracy(tmp_path, tiny_rec, one_thread):
    """The best accuracies a checkpoint records survive a resume into the next checkpoint (the run
    has no verification sets, so nothing can replace them)."""
    output = tmp_path / "run"
    config = write_config(tmp_path / "run.py", **tiny_training_keys(tiny_rec, output, num_epoch=1))
    train(ArcFaceMethod, [str(config)])
    state = torch.load(output / "checkpoint.pt", weights_only=True)
    assert state["best_accuracy"] == {}
    state["best_accuracy"] = {"lfw": 0.75, "cfp_fp": 0.5}
    torch.save(state, output / "checkpoint.pt")
    train(ArcFaceMethod, [str(config), "--resume", "--set", "num_epoch=2"])
    resumed = torch.load(output / "checkpoint.pt", weights_only=True)
    assert resumed["step"] == 16 and resumed["best_accuracy"] == {"lfw": 0.75, "cfp_fp": 0.5}


def ctrl_c_after_step_1(command, output):
    """Start a training in its own session, send SIGINT to the whole group (as a terminal's Ctrl-C
    does) once its log shows step 1; returns (process, stdout, stderr) after it ends."""
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=str(REPO_ROOT), start_new_session=True)
    log = Path(output) / "training.log"
    deadline = time.time() + 180
    while process.poll() is None and time.time() < deadline and "step 1/" not in (
            log.read_text() if log.exists() else ""):
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    return process, stdout, stderr


def test_ctrl_c_leaves_a_checkpoint_and_one_line_and_resume_continues(reference):
    """Ctrl-C (SIGINT to the run's process group, its loader workers included, as a terminal sends
    it) stops after the current step with checkpoint.pt and one line, exit 130, no traceback; the
    --resume then ends with exactly the weights of the uninterrupted run."""
    directory, keys, expected = reference
    output = directory / "ctrl_c"
    config = write_config(directory / "ctrl_c.py", **dict(keys, output=str(output), num_workers=2,
                                                          save_every_steps=0, frequent=1))
    process, stdout, stderr = ctrl_c_after_step_1([sys.executable, str(REPO_ROOT / "train_old_arc.py"), str(config)],
                                                  output)
    log = output / "training.log"
    assert process.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr[-3000:]
    assert stderr.strip().splitlines() == [
        "Ctrl-C: stopping after this step with a checkpoint (press Ctrl-C again to stop at once, without one)"]
    step = torch.load(output / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < step < TOTAL_STEPS, f"the run was not interrupted mid-training (checkpoint at step {step})"
    line = (f"interrupted at step {step}/{TOTAL_STEPS}: {output / 'checkpoint.pt'} holds this step; "
            f"continue with --resume")
    assert stdout.strip().splitlines()[-1].endswith(line) and line in log.read_text()
    assert not (output / ".lock").exists()
    resumed = run([sys.executable, str(REPO_ROOT / "train_old_arc.py"), str(config), "--resume"], timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {output / 'checkpoint.pt'}: epoch" in resumed.stdout and f"step {step}/" in resumed.stdout
    weights = torch.load(output / "model.pt", weights_only=True)
    different = [name for name in expected if not torch.equal(weights[name], expected[name])]
    assert not different, f"resumed from step {step}; tensors differ: {different[:5]}"


def test_stop_request_absorbs_a_forwarded_repeat_and_a_later_ctrl_c_stops_at_once(capfd):
    from utils.training.interrupt import StopRequest
    previous = signal.getsignal(signal.SIGINT)
    with StopRequest(repeat_grace_s=0.3) as request:
        assert not request.requested
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)   # a launcher forwarding the same Ctrl-C: absorbed
        assert request.requested
        time.sleep(0.35)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is previous
    assert capfd.readouterr().err.count("Ctrl-C: stopping after this step") == 1


def test_ctrl_c_under_torchrun_stops_both_ranks_at_one_step_and_resume_matches(tmp_path):
    """Ctrl-C in the terminal of `torchrun --nproc_per_node=2` (SIGINT to the whole group: the
    launcher, which forwards it again, both ranks and their loader workers): both ranks stop after
    the same step with one checkpoint, each says so once, rank 0 names the step; the only traceback
    is torchrun's own (its SignalException, the launcher's behaviour on SIGINT). A --resume under
    torchrun then ends with exactly the weights of an uninterrupted 2-rank run."""
    import re
    from tests.training_fixtures import free_port, torchrun_command
    rec = write_tiny_rec(tmp_path / "rec")
    keys = tiny_training_keys(rec, tmp_path / "whole", num_epoch=3, deterministic=True, save_every_steps=0,
                              frequent=1, num_workers=2)
    whole = run(torchrun_command("train_old_arc.py", [str(write_config(tmp_path / "whole.py", **keys))],
                                 port=free_port()), timeout=240)
    assert whole.returncode == 0, whole.stdout[-2000:] + whole.stderr[-2000:]
    output = tmp_path / "ctrl_c"
    config = write_config(tmp_path / "ctrl_c.py", **dict(keys, output=str(output)))
    _, stdout, stderr = ctrl_c_after_step_1(torchrun_command("train_old_arc.py", [str(config)], port=free_port()),
                                            output)
    total = 12                                               # 32 images / (2 ranks x 4) x 3 epochs
    step = torch.load(output / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < step < total, f"the run was not interrupted mid-training (checkpoint at step {step})"
    line = f"interrupted at step {step}/{total}: {output / 'checkpoint.pt'} holds this step; continue with --resume"
    assert stdout.strip().splitlines()[-1].endswith(line), stdout[-2000:]
    lines = stderr.splitlines()
    if "Traceback (most recent call last):" in lines:            # torchrun's own, on the SIGINT it received
        first = lines.index("Traceback (most recent call last):")
        last = next(n for n in range(first, len(lines)) if lines[n].startswith("torch.distributed.elastic")
                    and "SignalException: " in lines[n])
        assert any("torch/distributed/run.py" in text for text in lines[first:last]), stderr
        lines = lines[:first] + lines[last + 1:]
    ours = [text for text in lines if not re.match(r"^[WIE]\d{4} ", text)]   # torch elastic's log lines aside
    assert ours == ["Ctrl-C: stopping after this step with a checkpoint (press Ctrl-C again to stop at once, "
                    "without one)"] * 2, stderr[-3000:]
    assert not (output / ".lock").exists()
    resumed = run(torchrun_command("train_old_arc.py", [str(config), "--resume"], port=free_port()), timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"step {step}/" in resumed.stdout
    expected = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    weights = torch.load(output / "model.pt", weights_only=True)
    different = [name for name in expected if not torch.equal(weights[name], expected[name])]
    assert not different, f"resumed from step {step}; tensors differ: {different[:5]}"
