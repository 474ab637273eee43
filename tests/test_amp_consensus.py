"""fp16 training with a GradScaler decides each step once for all ranks (CPU emulation of the CUDA
path: fp16 autocast and torch.amp.GradScaler('cpu') through `amp_on_cpu`, 2 gloo ranks).

An inf is forced into ONE rank's gradient of one module at step 1 of 3: the Partial FC head's
shard (sharded: no rank ever sees the other's gradient), the softmax head's cls_fc (replicated,
averaged by the engine) and AdvBCT's discriminator (an extra module, averaged). Every rank must
skip that step, back off its scale once, and keep a backbone identical to the other rank's; the
other steps must move the weights, and everything stays finite. Before the fix, the rank that
saw the inf skipped alone (replicas diverged for good) or, for averaged modules, the inf reached
a rank that had already decided to step (weights went non-finite).
"""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.training_fixtures import (single_thread, tiny_training_keys,  # noqa: E402
                                     write_config, write_tiny_rec, written_and_launched)

pytestmark = [pytest.mark.distributed]

EMBEDDING_SIZE = 32
INJECTED_STEP, INJECTED_RANK = 1, 1
INITIAL_SCALE = 256.0
CASES = {"partial_fc": "arcface", "softmax": "softmax", "advbct": "AdvBCT"}


def injected_parameter(case: str, head, extra) -> torch.nn.Parameter:
    if case == "partial_fc":
        return head.weight
    if case == "softmax":
        return head.cls_fc.weight
    return extra["discriminator"][0].weight


def backbone_digest(backbone) -> float:
    return float(sum(p.detach().double().abs().sum() for p in backbone.parameters()))


def probing(method_class, case: str):
    """method_class that records a digest of the backbone before every step and forces an inf into
    one rank's gradient of one module at INJECTED_STEP."""
    class Probe(method_class):
        def __init__(self, cfg, env):
            super().__init__(cfg, env)
            self.digests, self.hooked, self.backbone = [], False, None

        def on_epoch_start(self, epoch, trainer):
            super().on_epoch_start(epoch, trainer)
            self.backbone, self.trainer = trainer.backbone, trainer

        def loss(self, embeddings, batch, head, progress):
            self.digests.append(backbone_digest(self.backbone))
            if not self.hooked:
                parameter = injected_parameter(case, head, self.trainer.extra)
                trainer = self.trainer

                def inject(grad):
                    if trainer.step == INJECTED_STEP and self.env.rank == INJECTED_RANK:
                        grad = grad.clone()
                        grad.view(-1)[0] = float("inf")
                    return grad
                parameter.register_hook(inject)
                self.hooked = True
            return super().loss(embeddings, batch, head, progress)
    Probe.name = method_class.name
    return Probe


def write_cases(folder: Path) -> None:
    from tools.benchmark.bench_methods import write_random_artifacts
    from utils.data.datasets import FaceRecDataset
    rec = write_tiny_rec(folder / "rec", num_classes=4, per_class=8)
    paths = write_random_artifacts(folder, FaceRecDataset(rec, flip=False), EMBEDDING_SIZE)
    for case, method in CASES.items():
        keys = tiny_training_keys(rec, folder / f"work_{case}", **{
            "method": method, "batch_size": 4, "num_epoch": 1, "fp16": True, "amp_on_cpu": True,
            "frequent": 1, **(paths if method == "AdvBCT" else {}), **({"head": "softmax"} if case == "softmax" else {})})
        write_config(folder / f"{case}.py", **keys)


def train_cases(folder: Path) -> None:
    """Under torchrun: each case for one epoch (4 steps of 2 ranks x 4 images) through the engine."""
    from BCT_methods.AdvBCT.train import AdvBCTMethod
    from utils.common.config import load_config
    from utils.training.distributed import cleanup
    from utils.training.engine import Trainer
    from utils.training.plain_methods import ArcFaceMethod, SoftmaxMethod
    classes = {"partial_fc": ArcFaceMethod, "softmax": SoftmaxMethod, "advbct": AdvBCTMethod}
    for case in CASES:
        config = folder / f"{case}.py"
        trainer = Trainer(load_config(config), probing(classes[case], case), [str(config)])
        # a modest scale: at the default 2**16 this tiny net's fp16 gradients overflow by themselves
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=INITIAL_SCALE)
        trainer.fit()
        finite = all(bool(torch.isfinite(p).all()) for module in (trainer.backbone, trainer.head, trainer.extra)
                     for p in module.parameters())
        report = {"digests": trainer.method.digests + [backbone_digest(trainer.backbone)],
                  "scale": trainer.scaler.get_scale(), "finite": finite, "step": trainer.step}
        (folder / f"{case}_rank{trainer.rank}.json").write_text(json.dumps(report))
        parameters = {name: value.detach() for name, value in trainer.backbone.named_parameters()}
        torch.save(parameters, folder / f"{case}_backbone_rank{trainer.rank}.pt")
    cleanup()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return written_and_launched(tmp_path_factory, "amp_consensus", write_cases, "tests/test_amp_consensus.py", 29673)


@pytest.mark.parametrize("case", list(CASES))
def test_every_rank_skips_the_step_one_rank_overflowed(trained, case):
    reports = [json.loads((trained / f"{case}_rank{rank}.json").read_text()) for rank in (0, 1)]
    backbones = [torch.load(trained / f"{case}_backbone_rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    for report in reports:
        assert report["finite"] and report["step"] == 4
        # one back-off (x0.5) on every rank: the scale stays the same everywhere
        assert report["scale"] == INITIAL_SCALE * 0.5
        before = report["digests"]      # backbone before steps 0, 1, 2, 3 and at the end
        assert before[1] != before[0] and before[3] != before[2] and before[4] != before[3], "other steps move"
        assert before[2] == before[1], "the overflowed step is skipped"
    # the replicas never part: bit-identical backbone parameters on both ranks (BatchNorm running
    # statistics are per rank by design)
    for name, value in backbones[0].items():
        assert torch.equal(value, backbones[1][name]), name


def test_bf16_and_fp16_steps_run_on_the_cpu(tmp_path):
    """The autocast branches of the engine, in one process: bf16 (no scaler) and fp16 + GradScaler."""
    from utils.training.engine import train
    from utils.training.plain_methods import ArcFaceMethod
    rec = write_tiny_rec(tmp_path / "rec", num_classes=4, per_class=4)
    for precision in ("bf16", "fp16"):
        output = tmp_path / precision
        config = write_config(tmp_path / f"{precision}.py", **tiny_training_keys(
            rec, output, num_epoch=1, frequent=1, amp_on_cpu=True, **{precision: True}))
        with single_thread():
            train(ArcFaceMethod, [str(config)])
        state = torch.load(output / "checkpoint.pt", weights_only=True)
        assert state["step"] == 4
        assert (state["scaler"] is not None) == (precision == "fp16")
        assert all(bool(torch.isfinite(v).all()) for v in state["backbone"].values() if v.is_floating_point())
        log = (output / "training.log").read_text()
        assert ("grad_scale" in log) == (precision == "fp16")


if __name__ == "__main__":
    torch.set_num_threads(1)
    train_cases(Path(sys.argv[1]))
