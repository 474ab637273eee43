"""Two-node training: two launcher processes on localhost as 2 nodes x 1 process (--nnodes=2,
--node_rank=0/1, c10d rendezvous, the commands plan.launcher_argv builds and docs/experiment.md
shows) train the same weights as 1 node x 2 processes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training_fixtures import free_port, subprocess_env, tiny_training_keys, write_config, write_tiny_rec
from tools.experiment.plan import Step, launcher_argv

REPO_ROOT = Path(__file__).resolve().parents[1]


def training_step(config: Path) -> Step:
    return Step("train", ["python", "train_old_arc.py", str(config)], [], [], "training", distributed=True)


def launch(argv, env):
    return subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.heavy   # two torchrun launches of two processes: about 25 s on two cores
def test_two_nodes_of_one_process_train_the_weights_of_one_node_of_two(tmp_path):
    rec = write_tiny_rec(tmp_path / "rec", num_classes=4, per_class=8)
    env = dict(subprocess_env(), PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    outputs = {side: tmp_path / f"work_{side}" for side in ("one_node", "two_nodes")}
    steps = {}
    for side, output in outputs.items():
        config = write_config(tmp_path / f"{side}.py", **tiny_training_keys(rec, output, batch_size=4, num_epoch=1,
                                                                         clip_grad_norm=0.0))
        steps[side] = training_step(config)

    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [launch(launcher_argv(steps["two_nodes"], 1, nnodes=2, rdzv_endpoint=endpoint, node_rank=rank), env)
             for rank in (0, 1)]
    single = launch(launcher_argv(steps["one_node"], 2), env)
    for process in (*nodes, single):
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]

    assert launcher_argv(steps["two_nodes"], 1, nnodes=2, rdzv_endpoint=endpoint, node_rank=1)[:7] == [
        "torchrun", "--nproc_per_node=1", "--nnodes=2", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}",
        "--rdzv_id=train", "--node_rank=1"]
    weights = {side: torch.load(output / "model.pt", map_location="cpu", weights_only=True)
               for side, output in outputs.items()}
    assert set(weights["one_node"]) == set(weights["two_nodes"])
    for name, value in weights["one_node"].items():
        assert torch.equal(value, weights["two_nodes"][name]), name
    for output in outputs.values():   # both ran as two ranks
        assert torch.load(output / "checkpoint.pt", map_location="cpu", weights_only=True)["world_size"] == 2
