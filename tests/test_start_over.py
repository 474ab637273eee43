"""--start-over removes only what a training run wrote into its folder (model, checkpoints, its
config.json, TensorBoard event files), never follows a link, and refuses - before removing
anything - what it cannot account for, with one line naming the path."""
import json
import os

import pytest
import torch

from tests.training_fixtures import tiny_training_keys, write_config
from utils.common.config import save_config
from utils.training.engine import train
from utils.training.plain_methods import ArcFaceMethod
from utils.training.run_folder import clear_previous_run

EVENTS = "events.out.tfevents.1733490000.host.4242.0"


def earlier_run(folder):
    """A folder as a finished run leaves it, plus the user's own notes beside it."""
    folder.mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, folder / "model.pt")
    torch.save({"backbone": {}, "config": {}}, folder / "checkpoint.pt")
    save_config({"config_name": "run", "method": "arcface", "network": "tiny", "output": str(folder),
                 "rec": "/data"}, folder / "config.json")
    (folder / "tensorboard").mkdir()
    (folder / "tensorboard" / EVENTS).write_bytes(b"\x00" * 64)
    (folder / "training.log").write_text("earlier run\n")
    (folder / "notes.txt").write_text("mine\n")
    return folder


def names(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def refused_start_over(folder, expected):
    before = names(folder)
    with pytest.raises(ValueError) as error:
        clear_previous_run(folder)
    message = str(error.value)
    assert len(message.splitlines()) == 1 and expected in message, message
    assert names(folder) == before   # checked before anything was removed
    return message


def test_removes_what_the_run_wrote_and_nothing_else(tmp_path):
    folder = earlier_run(tmp_path / "run")
    removed = clear_previous_run(folder)
    assert sorted(removed) == sorted(["checkpoint.pt", "config.json", "model.pt", f"tensorboard/{EVENTS}",
                                      "tensorboard/"])
    assert names(folder) == ["notes.txt", "training.log"]


def test_tensorboard_as_a_symbolic_link_is_refused_and_not_followed(tmp_path):
    folder = earlier_run(tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    (folder / "tensorboard").rename(elsewhere)
    (folder / "tensorboard").symlink_to(elsewhere, target_is_directory=True)
    message = refused_start_over(folder, f"{folder / 'tensorboard'} is a symbolic link")
    assert "--start-over" in message
    assert (elsewhere / EVENTS).is_file()


def test_a_file_in_tensorboard_the_run_did_not_write_is_refused(tmp_path):
    folder = earlier_run(tmp_path / "run")
    (folder / "tensorboard" / "plots.png").write_bytes(b"png")
    refused_start_over(folder, f"{folder / 'tensorboard' / 'plots.png'} was not written by a training run")
    (folder / "tensorboard" / "plots.png").unlink()
    (folder / "tensorboard" / "sub").mkdir()
    refused_start_over(folder, f"{folder / 'tensorboard' / 'sub'} was not written by a training run")


def test_a_config_json_that_is_not_a_saved_config_is_refused(tmp_path):
    folder = earlier_run(tmp_path / "run")
    for content in ('{"learning_rate": 0.1}', "not json", "[1, 2]"):
        (folder / "config.json").write_text(content)
        refused_start_over(folder, f"{folder / 'config.json'} is not a config saved by a training run")


def test_model_or_checkpoint_that_is_a_link_or_not_a_torch_file_is_refused(tmp_path):
    folder = earlier_run(tmp_path / "run")
    precious = tmp_path / "precious.pt"
    torch.save({"w": torch.ones(2)}, precious)
    (folder / "model.pt").unlink()
    (folder / "model.pt").symlink_to(precious)
    refused_start_over(folder, f"{folder / 'model.pt'} is a symbolic link")
    assert precious.is_file()
    (folder / "model.pt").unlink()
    (folder / "model.pt").write_text("my own text\n")
    refused_start_over(folder, f"{folder / 'model.pt'} is not a file torch.save wrote")
    (folder / "model.pt").unlink()
    (folder / "model.pt").mkdir()
    refused_start_over(folder, f"{folder / 'model.pt'} is not a regular file")


def test_the_training_cli_refuses_with_one_line_before_training(tmp_path, tiny_rec, capsys, one_thread):
    folder = earlier_run(tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    (folder / "tensorboard").rename(elsewhere)
    os.symlink(elsewhere, folder / "tensorboard")
    config = write_config(tmp_path / "c.py", **tiny_training_keys(tiny_rec, folder, num_epoch=1))
    before = names(folder)
    with pytest.raises(SystemExit) as stop:
        train(ArcFaceMethod, [str(config), "--start-over"])
    assert stop.value.code == 1
    error = capsys.readouterr().err.strip()
    assert "Traceback" not in error and len(error.splitlines()) == 1 and "is a symbolic link" in error, error
    assert names(folder) == before and json.loads((folder / "config.json").read_text())["config_name"] == "run"


# ---- temporaries of writers killed mid-write -----------------------------------------------------------
KILLED_WRITER = """
import sys, time
sys.path.insert(0, sys.argv[2])
from utils.common.atomic_files import atomic_write
def write(handle):
    handle.write(b"PK" + bytes(4096))
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)
atomic_write(sys.argv[1], write)
"""


def killed_mid_write(target):
    """A process SIGKILLed while atomic_write writes `target`: the temporary it leaves."""
    import subprocess
    import sys
    from tests.training_fixtures import REPO_ROOT
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), str(REPO_ROOT)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    process.kill()
    process.wait()
    left = [path for path in target.parent.iterdir() if path.name.startswith(f".{target.name}.")]
    assert len(left) == 1 and not target.exists()
    return left[0]


def test_a_run_removes_the_temporaries_of_checkpoint_writers_that_were_killed(tmp_path, tiny_rec, one_thread):
    """Each SIGKILL during a checkpoint write leaves a hidden temporary; the next run in the folder
    removes those of writers that are gone, and keeps a live writer's and unrelated files."""
    output = tmp_path / "run"
    output.mkdir()
    stale = [killed_mid_write(output / "checkpoint.pt"), killed_mid_write(output / "model.pt")]
    live = output / f".checkpoint.pt.{os.getpid()}@{__import__('socket').gethostname()}.abc123.tmp"
    live.write_bytes(b"a live writer's")
    foreign = output / ".checkpoint.pt.notes.tmp"
    foreign.write_bytes(b"not a temporary of ours")
    dead_pid = stale[0].name.split(".")[3].split("@")[0]
    other_host = output / f".checkpoint.pt.{dead_pid}@another-host.example.x1y2.tmp"   # cannot be checked here
    other_host.write_bytes(b"")
    config = write_config(tmp_path / "c.py", **tiny_training_keys(tiny_rec, output, num_epoch=1))
    train(ArcFaceMethod, [str(config)])
    assert not any(path.exists() for path in stale)
    assert live.exists() and foreign.exists() and other_host.exists()
    log = (output / "training.log").read_text()
    assert f"removed 2 temporary files left by writers that are gone: {stale[0].name}, {stale[1].name}" in log
