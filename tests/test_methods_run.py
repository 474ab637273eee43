"""Each of the six methods trains for real: 2 processes (torchrun, gloo, CPU), a few steps on a
tiny rec, with old-model artifacts computed by the tools' functions and guarded by manifests; then
a UniBCT resume that must restore the refined prototypes instead of refining again, and an NCCL
resume (set-up only) that must give each rank back its own class shard of the queue logits.

Starting Python with torch costs many seconds on a busy machine, so one torchrun launch runs all
trainings: this file is also the launched script (see the __main__ block), calling
utils.training.engine.train(MethodClass, [config]) for each method, exactly what each
BCT_methods/<Method>/train.py does. The scripts themselves are started by the last test.
"""
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.training_fixtures import run, tiny_training_keys, torchrun_command, write_config, write_tiny_rec  # noqa: E402

pytestmark = [pytest.mark.distributed]

EMBEDDING_SIZE = 32
STEPS_PER_EPOCH = 4   # 32 images / (batch 4 x 2 ranks)
METHOD_KEYS = {
    "L2": dict(l2_threshold=0.2),
    "BCT": dict(),
    "UniBCT": dict(unibct_start_epoch=1, unibct_refine_epochs=(1,), decay_epoch=[1], num_epoch=2),
    "NCCL": dict(nccl_queue_size=16, nccl_beta=0.5, nccl_logit_term_gradient=True),
    "AdvBCT": dict(),
    "MixBCT": dict(mix_ratio=0.5),
}
BEFORE_RESUME = "checkpoint_before_resume.pt"


def write_scenario(folder: Path) -> dict:
    """A 4-class, 32-image rec, every artifact of a (random) old model for it, and one config per method."""
    from tools.benchmark.bench_methods import write_random_artifacts
    from utils.data.datasets import FaceRecDataset
    rec = write_tiny_rec(folder / "rec", num_classes=4, per_class=8)
    paths = write_random_artifacts(folder, FaceRecDataset(rec, flip=False), EMBEDDING_SIZE)
    for method, keys in METHOD_KEYS.items():
        settings = tiny_training_keys(rec, folder / f"work_{method}", method=method,
                                      **{"num_epoch": 1, **paths, **keys})
        write_config(folder / f"{method}_config.py", **settings)
    return paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("methods_run")
    paths = write_scenario(folder)
    result = run(torchrun_command("tests/test_methods_run.py", [str(folder)], port=29611), timeout=300)
    assert result.returncode == 0, f"training failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return folder, paths


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("method", [m for m in METHOD_KEYS if m != "UniBCT"])
def test_method_trained_with_two_processes(trained, method):
    folder, _ = trained
    output = folder / f"work_{method}"
    state = checkpoint(output / "checkpoint.pt")
    assert state["world_size"] == 2 and state["step"] == STEPS_PER_EPOCH
    backbone = torch.load(output / "model.pt", map_location="cpu", weights_only=True)
    # model.pt is a plain backbone: no prototypes, discriminator or boundary inside
    assert not any(name.startswith(("discriminator", "boundary", "class_prototypes")) for name in backbone)
    assert set(backbone) == set(state["backbone"])
    log = (output / "training.log").read_text()
    if method == "AdvBCT":
        assert {"boundary.weight", "discriminator.0.weight"} <= set(state["extra"])
        assert "adversarial" in log and "point_to_set" in log
    if method == "NCCL":
        queue = state["method"]["queue"]
        # 4 steps x global batch 8 pushed into 16 slots: wrapped twice, every slot filled
        assert queue["pointer"] == (STEPS_PER_EPOCH * 8) % 16 and bool((queue["labels"] >= 0).all())
        assert "logit_term" in log
    if method == "MixBCT":
        assert "replaced" in log


def test_unibct_refines_then_resume_restores_prototypes(trained):
    folder, paths = trained
    before = checkpoint(folder / BEFORE_RESUME)
    assert before["epoch"] == 2 and before["method"]["refined_epochs"] == [1]
    artifact_prototypes = torch.from_numpy(np.load(paths["class_prototypes"]))
    assert not torch.allclose(before["method"]["class_prototypes"], artifact_prototypes)
    after = checkpoint(folder / "work_UniBCT" / "checkpoint.pt")
    assert after["epoch"] == 3 and after["step"] == 3 * STEPS_PER_EPOCH
    # resumed at epoch 2 (no refinement epoch): the restored prototypes carry on unchanged
    assert after["method"]["refined_epochs"] == [1]
    assert torch.equal(after["method"]["class_prototypes"], before["method"]["class_prototypes"])
    log = (folder / "work_UniBCT" / "training.log").read_text()
    assert log.count("UniBCT: refined 4 class prototypes at the start of epoch 1") == 1
    assert "resumed from" in log


@pytest.mark.parametrize("rank", [0, 1])
def test_nccl_resume_restores_each_ranks_logit_shard(trained, rank):
    folder, _ = trained
    saved = checkpoint(folder / "work_NCCL" / "checkpoint.pt")
    # rank 0's method state is the top-level one; the other ranks' logit shards differ from it
    saved_state = saved["method"] if rank == 0 else saved["per_rank"][rank]["method"]
    restored = torch.load(folder / f"nccl_restored_rank{rank}.pt", weights_only=True)
    assert tuple(saved_state["class_shard"]) == restored["class_shard"] == (2 * rank, 2)  # 4 classes, 2 ranks
    assert bool(restored["logits"].abs().sum(1).gt(0).all()), "every slot holds logits of a pushed sample"
    assert torch.equal(restored["logits"], saved_state["queue"]["logits"])
    assert not any("restarts from zeros" in message for message in restored["warnings"])
    if rank == 1:
        assert not torch.equal(restored["logits"], saved["method"]["queue"]["logits"])


def test_script_refuses_feature_size_mismatch_with_one_line(trained):
    folder, paths = trained
    settings = tiny_training_keys(folder / "rec", folder / "work_mismatch", method="MixBCT", embedding_size=64, **paths)
    config = write_config(folder / "mismatch_config.py", **settings)
    result = run([sys.executable, "BCT_methods/MixBCT/train.py", str(config)], timeout=120)
    assert result.returncode == 1
    assert "features of size 32 but the config expects 64" in result.stderr
    assert "Traceback" not in result.stderr


def train_every_method(folder: Path) -> None:
    """Run under torchrun by the `trained` fixture: every method, then a UniBCT resume."""
    from BCT_methods.AdvBCT.train import AdvBCTMethod
    from BCT_methods.BCT.train import BCTMethod
    from BCT_methods.L2.train import L2Method
    from BCT_methods.MixBCT.train import MixBCTMethod
    from BCT_methods.NCCL.train import NCCLMethod
    from BCT_methods.UniBCT.train import UniBCTMethod
    from utils.training import engine
    from utils.training.distributed import barrier, cleanup
    # one process group for all runs: a re-initialised group would need a fresh torchrun store
    engine.cleanup = lambda: None
    train = engine.train
    classes = {"L2": L2Method, "BCT": BCTMethod, "UniBCT": UniBCTMethod, "NCCL": NCCLMethod,
               "AdvBCT": AdvBCTMethod, "MixBCT": MixBCTMethod}
    for method, method_class in classes.items():
        train(method_class, [str(folder / f"{method}_config.py")])
    if os.environ.get("RANK", "0") == "0":
        shutil.copy(folder / "work_UniBCT" / "checkpoint.pt", folder / BEFORE_RESUME)
    barrier()
    train(UniBCTMethod, [str(folder / "UniBCT_config.py"), "--resume", "--set", "num_epoch=3"])
    save_restored_nccl_queue(folder, NCCLMethod)
    cleanup()


def save_restored_nccl_queue(folder: Path, method_class) -> None:
    """Set up (no step) a resume of the NCCL run on every rank; save what this rank's queue holds."""
    from utils.common.config import load_config
    from utils.training.engine import Trainer
    config = folder / "NCCL_config.py"
    cfg = load_config(config)
    cfg.resume = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(cfg, method_class, [str(config)])
    trainer.monitor.close()
    restored = {"class_shard": trainer.method.class_shard, "logits": trainer.method.queue.logits.cpu(),
                "warnings": [str(warning.message) for warning in caught]}
    torch.save(restored, folder / f"nccl_restored_rank{trainer.rank}.pt")


if __name__ == "__main__":
    train_every_method(Path(sys.argv[1]))
