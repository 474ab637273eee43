"""utils/training/engine.py end to end on a tiny rec: one in-process run, 2-process gloo runs of both
old-model scripts (torchrun and torch.distributed.launch), the non-finite-loss stop."""
import json
from pathlib import Path

import pytest
import torch

from backbones import load_backbone
from tests.extract_features_probe import PROBE_INDICES, ExtractFeaturesProbe
from tests.training_fixtures import run, single_thread, tiny_training_keys, torchrun_command, write_config
from utils.training.checkpoint import parameter_indices
from utils.common.config import load_config
from utils.training.distributed import init_distributed, remove_launcher_args
from utils.training.engine import Trainer, mean_over_micro_batches, random_flip, train
from utils.training.plain_methods import ArcFaceMethod


def loss_values(log_path: Path):
    """The `loss X` figures of the periodic lines of training.log, in order."""
    values = []
    for line in log_path.read_text().splitlines():
        words = line.split()
        if "loss" in words and "step" in words:
            values.append(float(words[words.index("loss") + 1]))
    return values


def test_single_process_run_learns_and_saves_plain_backbone(tmp_path, tiny_rec, one_thread, capsys):
    output = tmp_path / "arc"
    config = write_config(tmp_path / "tiny_arc.py", **tiny_training_keys(
        tiny_rec, output, num_epoch=5, val_targets=["lfw"], verbose=20, frequent=4, tensorboard=True))
    train(ArcFaceMethod, [str(config), "--set", "lr=0.1"])
    losses = loss_values(output / "training.log")
    assert len(losses) == 10  # 8 steps per epoch (32 images / batch 4), a line every 4 steps
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    model = load_backbone(output / "model.pt", "tiny", 32)
    state = torch.load(output / "model.pt", weights_only=True)
    assert set(state) == set(model.state_dict()) and not any(key.startswith("module.") for key in state)
    log = (output / "training.log").read_text()
    assert "[lfw] step 20 accuracy" in log and "[lfw] step 40 accuracy" in log
    assert (output / "config.json").is_file() and list((output / "tensorboard").iterdir())
    checkpoint = torch.load(output / "checkpoint.pt", weights_only=True)
    assert (checkpoint["step"], checkpoint["epoch"], checkpoint["micro_step_in_epoch"]) == (40, 5, 0)
    assert tuple(checkpoint["head"]["weight"].shape) == (4, 32)
    printed = capsys.readouterr().out
    assert "step 40/40" in printed and "eta" in printed


class NonFiniteAtStepTwo(ArcFaceMethod):
    name = "arcface"

    def loss(self, embeddings, batch, head, progress):
        loss, terms = super().loss(embeddings, batch, head, progress)
        if progress.step >= 2:
            loss = loss * float("nan")
            terms = {"classification": loss.detach()}
        return loss, terms


def test_non_finite_loss_stops_with_one_line_and_debug_state(tmp_path, tiny_rec, one_thread, capsys):
    output = tmp_path / "nan"
    config = write_config(tmp_path / "nan.py", **tiny_training_keys(tiny_rec, output))
    with pytest.raises(SystemExit) as stop:
        train(NonFiniteAtStepTwo, [str(config)])
    assert stop.value.code == 1
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert error_lines and "non-finite loss at step 2 (terms classification=nan)" in error_lines[0]
    debug = torch.load(output / "checkpoint_nonfinite.pt", weights_only=True)
    assert debug["step"] == 2 and tuple(debug["nonfinite"]["batch_index"].shape) == (4,)


class CountsMicroBatches(ArcFaceMethod):
    """Loss and a term equal to the 1-based number of the micro-batch (no gradient reaches the model)."""
    name = "arcface"

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        self.calls = 0

    def loss(self, embeddings, batch, head, progress):
        classification, _ = super().loss(embeddings, batch, head, progress)
        self.calls += 1
        return classification * 0.0 + self.calls, {"micro_batch": float(self.calls)}


def test_accumulated_step_logs_mean_over_its_micro_batches(tmp_path, tiny_rec, one_thread):
    output = tmp_path / "accumulated"
    config = write_config(tmp_path / "accumulated.py", **tiny_training_keys(
        tiny_rec, output, num_epoch=1, frequent=1, gradient_accumulation_steps=2))
    train(CountsMicroBatches, [str(config)])
    # 8 micro-batches, 2 per step: step s holds micro-batches 2s-1 and 2s, mean 2s - 0.5
    assert loss_values(output / "training.log") == [1.5, 3.5, 5.5, 7.5]
    assert (output / "training.log").read_text().count("micro_batch 1.5000") == 1


def test_mean_over_micro_batches_of_tensors_and_floats():
    loss, terms = mean_over_micro_batches(
        [torch.tensor(1.0), torch.tensor(4.0)],
        [{"classification": torch.tensor(2.0), "replaced": 3}, {"classification": torch.tensor(6.0), "replaced": 5}])
    assert float(loss) == 2.5 and float(terms["classification"]) == 4.0 and terms["replaced"] == 4.0


def test_bad_config_exits_with_one_line(tmp_path, capsys):
    config = tmp_path / "typo.py"
    config.write_text("from easydict import EasyDict as edict\nconfig = edict()\nconfig.netwrk = 'r18'\n")
    with pytest.raises(SystemExit) as stop:
        train(ArcFaceMethod, [str(config)])
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: unknown config key 'netwrk' in {config} (did you mean 'network'?)"]


def test_random_flip_depends_only_on_seed_epoch_index():
    images = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4).repeat(50, 1, 1, 1)
    indices = torch.arange(100)
    flipped = random_flip(images, indices, seed=7, epoch=0)
    mirrored = (flipped == images.flip(3)).flatten(1).all(1)
    kept = (flipped == images).flatten(1).all(1)
    assert bool((mirrored ^ kept).all()) and 30 < int(mirrored.sum()) < 70
    again = random_flip(images.flip(0), indices.flip(0), seed=7, epoch=0)
    assert torch.equal(again, flipped.flip(0))  # a sample's flip ignores its batch position
    assert not torch.equal(random_flip(images, indices, seed=7, epoch=1), flipped)


@pytest.mark.distributed
@pytest.mark.parametrize("script, method, launcher", [
    ("train_old_arc.py", "arcface", "torchrun"),
    ("train_old_softmax.py", "softmax", "launch"),
    pytest.param("train_old_arc.py", "arcface", "launch", marks=pytest.mark.heavy),
    pytest.param("train_old_softmax.py", "softmax", "torchrun", marks=pytest.mark.heavy),
])
def test_two_process_gloo_run(tmp_path, tiny_rec, script, method, launcher):
    output = tmp_path / "out"
    config = write_config(tmp_path / f"{method}.py", **tiny_training_keys(
        tiny_rec, output, method=method, num_epoch=1, val_targets=["lfw"]))
    port = 29500 + (hash((script, launcher, str(tmp_path))) % 400)
    result = run(torchrun_command(script, [str(config)], launcher=launcher, port=port), timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (output / "training.log").read_text()
    assert "world size 2" in log and "step 4/4" in log and "[lfw] step 4 accuracy" in log
    state = torch.load(output / "model.pt", weights_only=True)
    model = load_backbone(output / "model.pt", "tiny", 32)
    assert set(state) == set(model.state_dict())
    checkpoint = torch.load(output / "checkpoint.pt", weights_only=True)
    head_weight = "weight" if method == "arcface" else next(iter(checkpoint["head"]))
    assert checkpoint["head"][head_weight].shape[0] == 4  # the full head: every class, both shards
    assert len(checkpoint["per_rank"]) == 2
    assert "Traceback" not in result.stderr
    if method == "arcface":
        assert_head_momentum_resumes_on_one_rank(config, checkpoint)


def assert_head_momentum_resumes_on_one_rank(config: Path, checkpoint: dict) -> None:
    """The Partial FC momentum of a 2-rank run, stored for all 4 classes, is kept by a 1-rank resume."""
    (full_momentum,) = [entry["momentum_buffer"] for entry in checkpoint["head_optimizer"].values()]
    assert tuple(full_momentum.shape) == (4, 32) and bool(full_momentum.abs().sum(1).gt(0).all())
    cfg = load_config(config)
    cfg.resume = True
    with single_thread():
        trainer = Trainer(cfg, ArcFaceMethod, [str(config)])
    (head_index,) = parameter_indices(trainer.optimizer, list(trainer.head.parameters()))
    assert list(checkpoint["head_optimizer"]) == [head_index]
    assert torch.equal(trainer.optimizer.state[trainer.head.weight]["momentum_buffer"], full_momentum)
    trainer.monitor.close()


def probe_reports(output: Path, ranks: int):
    return [json.loads((output / f"probe_rank{rank}.json").read_text()) for rank in range(ranks)]


def test_extract_features_in_order_single_process(tmp_path, tiny_rec, one_thread):
    output = tmp_path / "probe"
    config = write_config(tmp_path / "probe.py", **tiny_training_keys(tiny_rec, output, num_epoch=1))
    train(ExtractFeaturesProbe, [str(config)])
    (report,) = probe_reports(output, 1)
    assert report["shape"] == [len(PROBE_INDICES), 32] and report["dtype"] == "torch.float32"
    assert report["max_difference"] < 1e-4


@pytest.mark.distributed
@pytest.mark.heavy
def test_extract_features_spread_over_two_ranks(tmp_path, tiny_rec):
    output = tmp_path / "probe2"
    config = write_config(tmp_path / "probe2.py", **tiny_training_keys(tiny_rec, output, num_epoch=1))
    result = run(torchrun_command("tests/extract_features_probe.py", [str(config)], port=29960), timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for report in probe_reports(output, 2):
        assert report["shape"] == [len(PROBE_INDICES), 32] and report["max_difference"] < 1e-4


@pytest.mark.parametrize("argv, local_rank, remaining", [
    (["cfg.py", "--local-rank=1"], 1, ["cfg.py"]),
    (["--local_rank=0", "cfg.py", "--resume"], 0, ["cfg.py", "--resume"]),
    (["cfg.py", "--local_rank", "3", "--set", "lr=0.1"], 3, ["cfg.py", "--set", "lr=0.1"]),
    (["cfg.py"], None, ["cfg.py"]),
])
def test_launcher_arguments_are_recognised_and_removed(argv, local_rank, remaining):
    assert remove_launcher_args(argv) == (local_rank, remaining)


def test_plain_process_is_single_rank_without_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    rank, local_rank, world_size, device = init_distributed(["cfg.py"])
    assert (rank, local_rank, world_size) == (0, 0, 1) and not torch.distributed.is_initialized()
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="local rank must be an integer"):
        remove_launcher_args(["--local-rank=x"])
