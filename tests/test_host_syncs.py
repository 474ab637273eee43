"""Host syncs on the training step path (issue 18, section 5). `torch.cuda.set_sync_debug_mode`
needs a GPU, so the CPU emulation counts, while one optimiser step runs (its micro-steps' forward
and backward and the step itself), every operation that makes the host wait for a GPU: reading a
value (`.item()`, `bool()`, `int()`, `float()`: aten._local_scalar_dense), an output whose size
depends on the data (nonzero, masked_select, unique, indexing with a boolean mask), and `.tolist()`
/ `.numpy()` (counted at the Python level: they copy to the host without a dispatched operation).
Device-to-host copies (`.cpu()`) cannot be told from CPU-to-CPU copies here and are not counted.
The engine is designed for exactly one host read per optimiser step (Trainer._agree_on_step).
The heads' label checks read the value at once on the CPU only (losses.margin.reads_on_host); the
count takes their accelerator branch (an asynchronous device assert), as a GPU run does."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.training_fixtures import single_thread, tiny_training_keys, write_config
from utils.common.config import load_config
from utils.training.engine import Trainer
from utils.training.plain_methods import ArcFaceMethod

DATA_DEPENDENT = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten._unique",
                  "aten._unique2", "aten.unique_dim", "aten.unique_consecutive", "aten.repeat_interleave"}


class HostSyncCounter(TorchDispatchMode):
    """Counts the host syncs of everything run inside it (see the module docstring), by name."""

    def __init__(self):
        super().__init__()
        self.syncs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket._qualified_op_name.replace("::", ".")
        if name in DATA_DEPENDENT:
            self.syncs.append(name)
        elif name in ("aten.index", "aten.index_put", "aten._index_put_impl_") and any(
                torch.is_tensor(index) and index.dtype in (torch.bool, torch.uint8)
                for index in (args[1] if len(args) > 1 else []) if index is not None):
            self.syncs.append(f"{name} (boolean mask)")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def counted_host_reads(monkeypatch):
    """`.tolist()` / `.numpy()` calls, counted while `active` is set."""
    state = {"active": False, "reads": []}
    for name in ("tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(tensor, *args, _name=name, _original=original, **kwargs):
            if state["active"]:
                state["reads"].append(f"Tensor.{_name}")
            return _original(tensor, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return state


def count_step_syncs(trainer: Trainer, counted_host_reads) -> list:
    """Run `trainer.fit()`; return, per optimiser step, the host syncs of its micro-steps and the step."""
    per_step, current = [], []
    counter = HostSyncCounter()
    micro_step, optimizer_step = trainer._micro_step, trainer._optimizer_step

    def counted(function, ends_step):
        def run(*args, **kwargs):
            counter.syncs, counted_host_reads["reads"] = [], []
            counted_host_reads["active"] = True
            try:
                with counter:
                    return function(*args, **kwargs)
            finally:
                counted_host_reads["active"] = False
                current.extend(counter.syncs + counted_host_reads["reads"])
                if ends_step:
                    per_step.append(list(current))
                    current.clear()
        return run
    trainer._micro_step = counted(micro_step, False)
    trainer._optimizer_step = counted(optimizer_step, True)
    trainer.fit()
    return per_step


@pytest.mark.parametrize("keys", [dict(), dict(gradient_accumulation_steps=2),
                                  dict(margin_list=(1.0, 0.5, 0.0), interclass_filtering_threshold=0.3)],
                         ids=["partial_fc", "accumulation", "interclass_filtering"])
def test_one_host_read_per_optimiser_step(tmp_path, tiny_rec, counted_host_reads, keys, monkeypatch):
    import losses.margin
    monkeypatch.setattr(losses.margin, "reads_on_host", lambda device: False)
    config = write_config(tmp_path / "c.py", **tiny_training_keys(tiny_rec, tmp_path / "out", num_epoch=1,
                                                                  frequent=1000, **keys))
    with single_thread():
        trainer = Trainer(load_config(str(config)), ArcFaceMethod)
        per_step = count_step_syncs(trainer, counted_host_reads)
    assert len(per_step) == trainer.total_steps > 1
    assert all(syncs == ["Tensor.tolist"] for syncs in per_step), per_step


def test_partial_fc_sampling_adds_no_host_sync_when_the_batch_cannot_fill_the_sample(tmp_path, counted_host_reads,
                                                                                    monkeypatch):
    """sample_rate < 1 with a global batch (4) below num_sample (20 of 40 classes): the sampled
    step keeps the one host read; a batch that can fill the sample takes torch.unique (counted)."""
    import losses.margin
    from tests.training_fixtures import write_tiny_rec
    monkeypatch.setattr(losses.margin, "reads_on_host", lambda device: False)
    rec = write_tiny_rec(tmp_path / "rec", num_classes=40, per_class=2)
    for batch_size, expected in ((4, ["Tensor.tolist"]), (24, None)):
        config = write_config(tmp_path / f"c{batch_size}.py", **tiny_training_keys(
            rec, tmp_path / f"out{batch_size}", num_epoch=1, frequent=1000, sample_rate=0.5, batch_size=batch_size))
        with single_thread():
            trainer = Trainer(load_config(str(config)), ArcFaceMethod)
            per_step = count_step_syncs(trainer, counted_host_reads)
        assert (trainer.head.sample_rate, trainer.head.num_sample) == (0.5, 20)
        if expected is not None:
            assert len(per_step) == trainer.total_steps > 1
            assert all(syncs == expected for syncs in per_step), per_step
        else:   # the counter sees the unique path: this test can fail
            assert all("aten._unique2" in syncs or "aten._unique" in syncs for syncs in per_step), per_step


def test_counter_sees_the_syncs_it_names():
    """The counter is not blind: each kind it names is counted once."""
    counter = HostSyncCounter()
    values = torch.randn(6, requires_grad=True)
    with counter:
        mask = values > 0
        values[mask].sum().backward()   # boolean-mask index forward, index_put in the backward
        torch.nonzero(mask)
        values.sum().item()
    assert counter.syncs == ["aten.index (boolean mask)", "aten.index_put (boolean mask)", "aten.nonzero",
                             "aten._local_scalar_dense"]
