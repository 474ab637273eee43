"""Data-parallel training takes the step of one process: 2 gloo ranks x B images equal 1 process
x 2B images, for plain ArcFace, softmax and each of the six methods (docs/methods.md, "Data
parallel gradients").

What is compared is what a user relies on: the parameters after the optimiser step and the step
itself (SGD's momentum buffer after the first step is exactly the applied gradient, weight decay
included) for the backbone, the classifier head (Partial FC: all classes, gathered) and the
methods' extra modules; UniBCT also its refined prototypes. Same initialisation (the classifier is
drawn from the config seed, whatever the world size), same global batch (the sampler's rank
shares of one permutation), BatchNorm with frozen statistics (`freeze_batchnorm`: per-rank batch
statistics are the one legitimate difference), no gradient clipping (it would rescale a wrong
gradient to the same norm; one case keeps it). The two-rank runs go through one torchrun launch
of this file (see __main__), the one-process runs through the same engine in-process. A last
test runs the real CLI (train_old_arc.py) for two whole epochs under torchrun and in one process.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.training_fixtures import (run, single_thread, tiny_training_keys,  # noqa: E402
                                     torchrun_command, write_config, write_tiny_rec, written_and_launched)

pytestmark = [pytest.mark.distributed]

EMBEDDING_SIZE = 32
GLOBAL_BATCH = 32            # the whole 32-image rec: one optimiser step per epoch
WORLD = 2
# case -> (script method name, keys for both runs, keys for the two-rank run only, for the one-process run only)
CASES = {
    "arcface": ("arcface", dict(), {}, {}),
    # clipping on (the recipe's norm 5): a deterministic function of the full gradient, but it
    # hides a wrong gradient scale whenever the norm exceeds 5, so the other cases run without it
    "arcface_clipped": ("arcface", dict(clip_grad_norm=5.0), {}, {}),
    "softmax": ("softmax", dict(head="softmax"), {}, {}),
    "L2": ("L2", dict(l2_threshold=0.0), {}, {}),
    "weakened_L2": ("L2", dict(l2_threshold=0.2), {}, {}),
    "BCT": ("BCT", dict(bct_scale=16.0), {}, {}),
    # influence term and refinement from epoch 0: the refinement's collectives run before the step
    "UniBCT": ("UniBCT", dict(unibct_start_epoch=0, unibct_refine_epochs=(0,), bct_scale=16.0,
                              lr_schedule="step", decay_epoch=[5]), {}, {}),
    "NCCL": ("NCCL", dict(nccl_queue_size=64, nccl_beta=0.5, nccl_logit_term_gradient=True), {}, {}),
    # the reference's l1 gradient carries the factor W: on 2 ranks it trains like alpha = 2 on one
    "NCCL_reference": ("NCCL", dict(nccl_queue_size=64, nccl_beta=0.5),
                       dict(nccl_reference_world_size_factor=True), dict(nccl_alpha=2.0)),
    # two steps: at step 0 the gradient-reversal coefficient is 0, at step 1 it is not
    "AdvBCT": ("AdvBCT", dict(num_epoch=2), {}, {}),
    # 8 credible images of 32 (2 per class): every credible row of a batch is replaced on either
    # side (k = 8 per rank, 16 in one process), so the mixing is the same whatever the RNG
    "MixBCT": ("MixBCT", dict(mix_ratio=0.5), {}, {}),
}


def method_classes():
    from BCT_methods.AdvBCT.train import AdvBCTMethod
    from BCT_methods.BCT.train import BCTMethod
    from BCT_methods.L2.train import L2Method
    from BCT_methods.MixBCT.train import MixBCTMethod
    from BCT_methods.NCCL.train import NCCLMethod
    from BCT_methods.UniBCT.train import UniBCTMethod
    from utils.training.plain_methods import ArcFaceMethod, SoftmaxMethod
    return {"arcface": ArcFaceMethod, "softmax": SoftmaxMethod, "L2": L2Method, "BCT": BCTMethod,
            "UniBCT": UniBCTMethod, "NCCL": NCCLMethod, "AdvBCT": AdvBCTMethod, "MixBCT": MixBCTMethod}


def write_cases(folder: Path) -> None:
    from tools.benchmark.bench_methods import write_random_artifacts
    from utils.data.datasets import FaceRecDataset
    rec = write_tiny_rec(folder / "rec", num_classes=4, per_class=8)
    # T = 0.25: ceil(0.25 * 8) = 2 credible images per class
    paths = write_random_artifacts(folder, FaceRecDataset(rec, flip=False), EMBEDDING_SIZE, credible_threshold=0.25)
    for case, (method, shared, two_ranks, one_process) in CASES.items():
        for side, batch, own in (("ddp", GLOBAL_BATCH // WORLD, two_ranks), ("single", GLOBAL_BATCH, one_process)):
            keys = tiny_training_keys(rec, folder / f"work_{case}_{side}", **{
                "method": method, "batch_size": batch, "num_epoch": 1, "lr": 0.1, "freeze_batchnorm": True,
                "clip_grad_norm": 0.0, "frequent": 1, **paths, **shared, **own})
            write_config(folder / f"{case}_{side}.py", **keys)


def train_cases(folder: Path, side: str) -> None:
    """Every case's `side` config through utils.training.engine.train, exactly what the scripts call."""
    from utils.training import engine
    classes = method_classes()
    cleanup = engine.cleanup
    engine.cleanup = lambda: None      # one process group for every run of a torchrun launch
    try:
        for case, (method, _, _, _) in CASES.items():
            engine.train(classes[method], [str(folder / f"{case}_{side}.py")])
    finally:
        engine.cleanup = cleanup
    cleanup()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = written_and_launched(tmp_path_factory, "ddp_step", write_cases, "tests/test_ddp_step.py", 29641)
    with single_thread():
        train_cases(folder, "single")
    return folder


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


BATCHNORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def step_buffers(state: dict) -> dict:
    """name -> SGD momentum buffer of every trainable tensor (backbone, head with all its classes,
    extra modules), matched by position: the optimiser holds one parameter group per module, in
    state-dict order without the BatchNorm buffers."""
    from backbones import get_model
    frozen = {name for name, parameter in get_model("tiny", EMBEDDING_SIZE).named_parameters()
              if not parameter.requires_grad}     # e.g. the last BatchNorm's fixed scale
    optimizer = state["optimizer"]
    indices = iter(index for group in optimizer["param_groups"] for index in group["params"])
    buffers = {}
    for part in ("backbone", "head", "extra"):
        for name in state[part]:
            if name.endswith(BATCHNORM_BUFFERS) or (part == "backbone" and name in frozen):
                continue
            index = next(indices)
            entry = state["head_optimizer"][index] if part == "head" and state["head_optimizer"] else \
                optimizer["state"][index]
            buffers[f"{part}.{name}"] = entry["momentum_buffer"]
    assert next(indices, None) is None, "every optimised tensor is matched"
    return buffers


def assert_close(name: str, distributed: torch.Tensor, single: torch.Tensor, rtol: float = 2e-4) -> None:
    distributed, single = distributed.double(), single.double()
    scale = single.abs().max().clamp(min=1e-12)
    difference = (distributed - single).abs().max()
    assert difference <= rtol * scale + 1e-9, (f"{name}: two ranks differ from one process by {float(difference):.3g} "
                                               f"(largest value {float(scale):.3g})")


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_take_the_step_of_one_process(trained, case):
    ddp = load(trained / f"work_{case}_ddp" / "checkpoint.pt")
    single = load(trained / f"work_{case}_single" / "checkpoint.pt")
    assert ddp["world_size"] == WORLD and single["world_size"] == 1
    assert ddp["step"] == single["step"] == (2 if case == "AdvBCT" else 1)
    ddp_steps, single_steps = step_buffers(ddp), step_buffers(single)
    assert set(ddp_steps) == set(single_steps)
    assert any(name.startswith("head.") for name in single_steps)
    for name, single_step in single_steps.items():
        assert single_step.abs().max() > 0 or name.startswith("extra.boundary"), f"{name}: no step taken"
        assert_close(f"step of {name}", ddp_steps[name], single_step)
    for part in ("backbone", "head", "extra"):
        for name, value in single[part].items():
            if value.is_floating_point():
                assert_close(f"{part}.{name}", ddp[part][name], value)
    if case == "UniBCT":
        refined = single["method"]["class_prototypes"]
        assert_close("refined prototypes", ddp["method"]["class_prototypes"], refined)
    if case == "MixBCT":
        assert "replaced 8.0000" in (trained / "work_MixBCT_single" / "training.log").read_text()


def test_backbone_step_is_not_divided_by_the_world_size(trained):
    """The bug this file guards against moved the backbone half as far on 2 ranks: the ratio of the
    step norms is 1, not 1 / W."""
    ddp = step_buffers(load(trained / "work_arcface_ddp" / "checkpoint.pt"))
    single = step_buffers(load(trained / "work_arcface_single" / "checkpoint.pt"))
    norm = lambda steps: torch.sqrt(sum((v.double() ** 2).sum() for k, v in steps.items() if k.startswith("backbone")))
    assert float(norm(ddp) / norm(single)) == pytest.approx(1.0, abs=1e-3)


def test_whole_epochs_through_the_cli_under_torchrun(tmp_path):
    """train_old_arc.py for 2 epochs of 4 steps: torchrun x 2 ranks x 4 images = python x 8 images."""
    rec = write_tiny_rec(tmp_path / "rec", num_classes=4, per_class=8)
    outputs = {}
    for side, batch in (("ddp", 4), ("single", 8)):
        outputs[side] = tmp_path / f"work_{side}"
        write_config(tmp_path / f"{side}.py", **tiny_training_keys(rec, outputs[side], batch_size=batch, num_epoch=2,
                                                                 freeze_batchnorm=True, clip_grad_norm=0.0))
    result = run(torchrun_command("train_old_arc.py", [str(tmp_path / "ddp.py")], port=29657), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run([sys.executable, "train_old_arc.py", str(tmp_path / "single.py")], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp, single = (load(outputs[side] / "checkpoint.pt") for side in ("ddp", "single"))
    assert ddp["step"] == single["step"] == 8
    for name, value in single["backbone"].items():
        if value.is_floating_point():
            assert_close(f"backbone.{name}", ddp["backbone"][name], value, rtol=1e-3)
    assert_close("head.weight", ddp["head"]["weight"], single["head"]["weight"], rtol=1e-3)
    model = load(outputs["ddp"] / "model.pt")
    assert set(model) == set(single["backbone"])
    log = (outputs["single"] / "training.log").read_text()
    assert "step 8/8" in log


if __name__ == "__main__":
    torch.set_num_threads(1)
    train_cases(Path(sys.argv[1]), "ddp")
