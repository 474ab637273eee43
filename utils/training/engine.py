"""The one training loop: old models (train_old_arc.py / train_old_softmax.py) and all six methods.

A script is `train(MethodClass)`; what differs between methods lives in the Method subclass
(utils/training/method.py). The engine owns the process group, data, backbone (DDP), head, optimiser,
schedule, AMP, gradient accumulation and clipping, checkpoints (exact resume), logging and the
.bin verification.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import logging
import math
import os
import random
import sys
import types
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from backbones import get_model
from utils.training.checkpoint import (CHECKPOINT_FILE, DEBUG_CHECKPOINT_FILE, MODEL_FILE, atomic_torch_save, backbone_state_dict, full_head_optimizer_state, head_state, load_checkpoint, load_head_state, parameter_indices, rng_state, save_model, set_rng_state, sharded_head_optimizer_state, state_digest, unwrap)
from utils.common.atomic_files import remove_stale_temporaries
from utils.common.cli import StrictArgumentParser
from utils.common.config import (RESUME_FIXED_KEYS, RESUME_IGNORED_KEYS, comparable_config, config_differences, config_to_json, load_config, save_config)
from utils.training.distributed import (agree_on_failure, all_gather_no_grad, all_reduce_sum, average_gradients, broadcast_object, broadcast_parameters, check_on_rank0, cleanup, failure_line, gather_objects, init_distributed, remove_launcher_args)
from utils.data.datasets import FaceRecDataset
from utils.data.build import build_dataset
from utils.data.face_rec import read_property
from utils.data.loader import OneLineErrorLoader, build_loader, seed_worker, to_device
from utils.common.logging_utils import TrainingMonitor, setup_logger
from utils.training.method import Method, Progress, TrainEnv
from utils.training.run_folder import (CONFIG_FILE, RUN_FILES, claim_output_folder, clear_previous_run, previous_run_files,
                                       refuse_overwrite)
from utils.common.output_lock import release_held_locks
from utils.training.interrupt import StopRequest, TrainingInterrupted
from utils.training.schedulers import build_scheduler, training_lr_factor
from utils.training.verification import VerificationCallback


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; a debug checkpoint has been written."""


EXPECTED_ERRORS = (ValueError, OSError, NonFiniteLossError)
INTERRUPTED_EXIT_CODE = 130   # 128 + SIGINT, as a shell reports a run ended by Ctrl-C


def parse_args(argv: Sequence[str], method_class) -> argparse.Namespace:
    parser = StrictArgumentParser(
        description=f"Train a face-recognition backbone with the {method_class.name!r} method. "
                    "Single process: `python SCRIPT CONFIG`; several GPUs: "
                    "`torchrun --nproc_per_node=8 SCRIPT CONFIG` (or python -m torch.distributed.launch). "
                    "Writes model.pt (backbone weights), checkpoint.pt (full state), config.json, "
                    "training.log and tensorboard/ under the config's `output` (default work_dirs/<config name>).")
    parser.add_argument("config", help="config file (any path); keys not set there come from configs/base.py")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set lr=0.05 num_epoch=2 (values parsed as Python literals)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <output>/checkpoint.pt exactly where it stopped (same as resume=True)")
    parser.add_argument("--start-over", action="store_true",
                        help="train from scratch into an output folder that holds an earlier run's model.pt / "
                             "checkpoint.pt, removing them (without it such a run is refused)")
    _, remaining = remove_launcher_args(argv)
    return parser.parse_args(remaining)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible GEMMs
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def autocast_and_scaler(cfg, device: torch.device, logger):
    """(autocast context factory, GradScaler or None) for fp16 / bf16 / fp32.

    fp16 runs on CUDA; on the CPU it falls back to float32 unless `amp_on_cpu` is set, which runs
    the very same fp16 autocast + GradScaler path on the CPU (slow; it lets the tests exercise the
    AMP branch of the engine without a GPU)."""
    if cfg.fp16 and cfg.bf16:
        raise ValueError("config: fp16 and bf16 are mutually exclusive")
    if cfg.fp16 and device.type != "cuda" and not cfg.amp_on_cpu:
        logger.warning("fp16 autocast needs CUDA: training in float32 on the CPU (amp_on_cpu=True forces it)")
    elif cfg.fp16:
        return functools.partial(torch.autocast, device.type, dtype=torch.float16), torch.amp.GradScaler(device.type)
    if cfg.bf16:
        return functools.partial(torch.autocast, device.type, dtype=torch.bfloat16), None
    return contextlib.nullcontext, None


def scaler_found_inf(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> List[torch.Tensor]:
    """The inf/NaN flags (one float tensor per device) that `scaler.unscale_(optimizer)` recorded
    and that `scaler.step` / `scaler.update` read. Writing into them changes the decision; the
    layout is GradScaler's (torch 2.4 to 2.14): checked, so a change fails loudly, not silently."""
    state = getattr(scaler, "_per_optimizer_states", {}).get(id(optimizer))
    if state is None or not isinstance(state.get("found_inf_per_device"), dict) or not state["found_inf_per_device"]:
        raise RuntimeError("GradScaler: no found_inf flags after unscale_ (unknown torch GradScaler layout)")
    return list(state["found_inf_per_device"].values())


def freeze_batchnorm(module: nn.Module) -> int:
    """Put every BatchNorm layer of `module` in evaluation mode for good: it normalises with its
    running statistics and never updates them, whatever train() is called later. Returns the count.
    (Batch statistics are per rank, so they are the one thing that makes W ranks x B differ from
    one process x W*B; frozen statistics also suit fine-tuning with small batches.)"""
    layers = [layer for layer in module.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.eval()
        layer.train = types.MethodType(_stay_in_eval_mode, layer)
    return len(layers)


def _stay_in_eval_mode(layer: nn.Module, mode: bool = True) -> nn.Module:
    return layer


def build_optimizer(cfg, modules: Sequence[nn.Module]) -> torch.optim.Optimizer:
    """One parameter group per module (backbone, head, extra), shared parameters listed once."""
    seen, groups = set(), []
    for module in modules:
        parameters = [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in parameters)
        if parameters:
            groups.append({"params": parameters})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=False)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"config: unknown optimizer {cfg.optimizer!r} (expected 'sgd' or 'adamw')")


def is_sharded(head: nn.Module) -> bool:
    """Partial FC keeps a different class shard on every rank (model parallel): no gradient averaging."""
    return bool(getattr(head, "sharded", False))


def random_flip(images: torch.Tensor, indices: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """Mirror each image with probability 1/2 decided by (seed, epoch, dataset index) alone, so the
    augmentation is identical whatever the worker count and across a resume."""
    modulus = 2 ** 31 - 1  # all products below stay under 2**62: no int64 overflow
    state = ((indices % modulus) * 1103515245 + ((seed * 1000003 + epoch) % modulus) * 12345 + 1) % modulus
    for _ in range(3):
        state = (state * 48271 + 11) % modulus
    flipped = (state > modulus // 2).view(-1, 1, 1, 1)
    return torch.where(flipped, images.flip(3), images)


def describe_terms(terms: Dict[str, object]) -> str:
    return ", ".join(f"{name}={float(value):.4g}" for name, value in terms.items())


def mean_over_micro_batches(losses: Sequence[torch.Tensor],
                            terms: Sequence[Dict[str, object]]) -> Tuple[torch.Tensor, Dict[str, object]]:
    """(mean loss, mean of each named term) over the micro-batches of one optimiser step."""
    def mean(values: Sequence[object]) -> object:
        if all(torch.is_tensor(value) for value in values):
            return torch.stack([value.detach().float().reshape(()) for value in values]).mean()
        return sum(float(value) for value in values) / len(values)
    names = dict.fromkeys(name for step_terms in terms for name in step_terms)  # first-seen order
    return mean(losses), {name: mean([step_terms[name] for step_terms in terms if name in step_terms])
                          for name in names}


def first_image_shape(dataset) -> Tuple[int, ...]:
    """[3, H, W] of the data set's first image; a rec's images must have the size its `property`
    file declares (checked on that image)."""
    shape = tuple(dataset[0][0].shape)
    if not isinstance(dataset, FaceRecDataset) or dataset.property_path is None:
        return shape
    _, height, width = read_property(dataset.property_path)
    if shape[1:] != (height, width):
        raise ValueError(f"{dataset.property_path} declares {height}x{width} images but the first "
                         f"image of {dataset.reader.rec_path} is {shape[1]}x{shape[2]}")
    return shape


class Trainer:
    """Everything one training run holds; also what Method.on_epoch_start(epoch, trainer) sees:
    cfg, rank, world_size, device, dataset, backbone (unwrapped), head, extra, optimizer, step,
    micro_step_in_epoch (> 0 when resuming mid-epoch) and extract_features(indices).
    """

    def __init__(self, cfg, method_class, argv: Sequence[str] = (), start_over: bool = False):
        self.cfg = cfg
        self.rank, self.local_rank, self.world_size, self.device = init_distributed(argv)
        # one run per output folder; nothing but the lock is written into it before every check below
        # has passed (_open_output): a refused run leaves the folder as it was
        self.output_lock = claim_output_folder(cfg.output)
        self.logger = setup_logger(None, self.rank)  # console only until then
        if cfg.resume and start_over:
            raise ValueError("--resume and --start-over contradict each other: give one")
        if not cfg.resume and not start_over:
            refuse_overwrite(cfg.output)
        if start_over:   # refused before anything is built or removed, on every rank at once
            check_on_rank0(lambda: previous_run_files(cfg.output))
        seed_everything(cfg.seed + self.rank)
        set_determinism(bool(cfg.deterministic))
        # flips happen on the device (random_flip): deterministic per sample, exact on resume
        self.dataset = build_dataset(cfg, flip=False)
        self.image_shape = first_image_shape(self.dataset)
        cfg.num_classes = int(self.dataset.num_classes) if cfg.num_classes is None else cfg.num_classes
        cfg.num_image = len(self.dataset) if cfg.num_image is None else cfg.num_image
        self.env = TrainEnv(self.rank, self.world_size, self.local_rank, self.device, cfg.num_classes, cfg.num_image)
        self.method: Method = method_class(cfg, self.env)
        if cfg.method.lower() != method_class.name.lower():
            self.logger.warning(f"config method {cfg.method!r} is trained with the {method_class.name!r} script")
        self.method.validate_inputs(self.dataset)
        self._build_data()
        self._build_model()
        self.autocast, self.scaler = autocast_and_scaler(cfg, self.device, self.logger)
        self.optimizer = build_optimizer(cfg, [self.backbone, self.head, self.extra])
        self.scheduler = build_scheduler(self.optimizer, training_lr_factor(
            self.method.lr_lambda, cfg, self.steps_per_epoch, self.total_steps))
        self.epoch, self.step, self.micro_step_in_epoch, self.pending_rng = 0, 0, 0, None
        self.nonfinite_losses = torch.zeros((), device=self.device)   # of the current optimiser step
        # 1 once this rank was asked to stop (Ctrl-C); summed over ranks with the step's other flags
        self.stop_flag = torch.zeros(1, device=self.device)
        self.stop_request: Optional[StopRequest] = None
        self.stop_agreed = False
        self.data_failure: Optional[str] = None   # this rank's loader failed (bad record): its one line
        self.data_failed_flag = torch.zeros(1, device=self.device)   # 1 once data_failure is set
        self.verification = VerificationCallback(cfg, self.rank, self.device, self.logger)
        resume_notes = self._restore(Path(cfg.output) / CHECKPOINT_FILE) if cfg.resume else []
        self.model = self._wrap(self.backbone)
        self._open_output(start_over, resume_notes)
        self.monitor = TrainingMonitor(cfg, self.logger, self.rank, self.total_steps, self.step,
                                       cfg.batch_size * self.world_size * self.accumulation)
        self.verification.monitor = self.monitor

    # ---- set-up ---------------------------------------------------------------------------
    def _open_output(self, start_over: bool, notes: Sequence[Tuple[int, str]]) -> None:
        """Every start-up check has passed: the run now writes into its folder (logs, config)."""
        cfg = self.cfg
        removed, stale = [], []

        def tidy() -> None:
            if start_over:
                removed.extend(clear_previous_run(cfg.output))
            # what a writer killed mid-write (SIGKILL during a checkpoint save) could not remove itself
            stale.extend(remove_stale_temporaries(Path(cfg.output) / name for name in RUN_FILES))
        check_on_rank0(tidy)   # rank 0 tidies the folder; a failure there stops every rank on its line
        self.logger = setup_logger(cfg.output, self.rank)
        if removed:
            self.logger.info(f"--start-over: removed {', '.join(removed)} of the earlier run in {cfg.output}")
        if stale:
            self.logger.info(f"removed {len(stale)} temporary files left by writers that are gone: "
                             f"{', '.join(sorted(path.name for path in stale))}")
        check_on_rank0(lambda: save_config(cfg, Path(cfg.output) / CONFIG_FILE))
        if self.rank == 0:
            self.logger.info(f"config {cfg.config_name} (world size {self.world_size}, device {self.device}):\n"
                             f"{config_to_json(cfg)}")
        for level, note in notes:
            self.logger.log(level, note)

    def _build_data(self) -> None:
        cfg = self.cfg
        self.loader, self.sampler = build_loader(self.dataset, cfg.batch_size, self.rank, self.world_size,
                                                 cfg.seed, cfg.num_workers, self.method.per_sample_arrays())
        self.accumulation = int(cfg.gradient_accumulation_steps)
        if self.accumulation < 1:
            raise ValueError(f"config: gradient_accumulation_steps must be >= 1, got {self.accumulation}")
        self.steps_per_epoch = len(self.loader) // self.accumulation
        if self.steps_per_epoch == 0:
            raise ValueError(f"{cfg.rec}: {len(self.dataset)} images are too few for batch_size {cfg.batch_size} x "
                             f"{self.world_size} ranks x {self.accumulation} accumulation steps")
        # equals num_image // (batch_size * world_size) * num_epoch without accumulation
        self.total_steps = self.steps_per_epoch * int(cfg.num_epoch)

    def _build_model(self) -> None:
        cfg = self.cfg
        self.backbone = get_model(cfg.network, cfg.embedding_size, cfg.gradient_checkpointing).to(self.device)
        if cfg.channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.head = self.method.build_head().to(self.device)
        self.extra = self.method.extra_modules().to(self.device)
        if cfg.freeze_batchnorm:
            frozen = freeze_batchnorm(self.backbone) + freeze_batchnorm(self.extra)
            self.logger.info(f"freeze_batchnorm: {frozen} BatchNorm layers use their running statistics")
        # replicated modules start from rank 0's initialisation (seeds differ per rank)
        broadcast_parameters(self.extra)
        if not is_sharded(self.head):
            broadcast_parameters(self.head)

    def _wrap(self, backbone: nn.Module) -> nn.Module:
        model = backbone
        if self.world_size > 1:
            with warnings.catch_warnings():
                # torch >= 2.14 renames broadcast_buffers; 2.11 only knows this spelling
                warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
                model = nn.parallel.DistributedDataParallel(
                    backbone, device_ids=[self.local_rank] if self.device.type == "cuda" else None,
                    find_unused_parameters=False, broadcast_buffers=False)
        if self.cfg.compile:
            model = torch.compile(model)
        return model

    # ---- checkpoints ----------------------------------------------------------------------
    def _state(self) -> Optional[dict]:
        """Full training state on rank 0 (None elsewhere); every rank must call (collectives)."""
        head_full = head_state(self.head)
        head_optimizer = full_head_optimizer_state(self.optimizer, self.head) if is_sharded(self.head) else {}
        method_state = self.method.extra_state()
        # a rank whose method state equals rank 0's (replicated prototypes) sends None: stored once
        digest = state_digest(method_state)
        same_as_rank0 = digest == broadcast_object(digest)
        per_rank = gather_objects({"rng": rng_state(self.device), "method": None if same_as_rank0 else method_state})
        if self.rank != 0:
            return None
        optimizer_state = self.optimizer.state_dict()
        for index in head_optimizer:  # stored gathered in "head_optimizer", not rank 0's shard here
            optimizer_state["state"].pop(index)
        return {"backbone": backbone_state_dict(self.backbone), "head": head_full,
                "extra": self.extra.state_dict(), "method": method_state, "head_optimizer": head_optimizer,
                "optimizer": optimizer_state, "scheduler": self._scheduler_position(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "epoch": self.epoch, "step": self.step, "micro_step_in_epoch": self.micro_step_in_epoch,
                "sampler_position": self.micro_step_in_epoch * self.cfg.batch_size,
                "world_size": self.world_size, "per_rank": per_rank, "config": comparable_config(self.cfg),
                "dataset": self.dataset.fingerprint(),
                "best_accuracy": dict(self.verification.best)}

    def _scheduler_position(self) -> dict:
        # the schedule itself is rebuilt from the config (a resume may change num_epoch): keep its position only
        state = self.scheduler.state_dict()
        state["lr_lambdas"] = [None] * len(state.get("lr_lambdas", []))
        return state

    def save_checkpoint(self, file_name: str = CHECKPOINT_FILE, extra: Optional[dict] = None) -> None:
        state = self._state()

        def write() -> None:
            state.update(extra or {})
            atomic_torch_save(state, Path(self.cfg.output) / file_name)
        check_on_rank0(write)   # a failed write (full disk) stops every rank with its line

    def _save_model(self) -> None:
        check_on_rank0(lambda: save_model(self.backbone, self.cfg.output))

    def _check_resumable(self, state: dict, path: Path) -> List[Tuple[int, str]]:
        """Refuse a checkpoint whose data order or model differs from this run's (one line listing
        every difference); returns the notes on keys that changed harmlessly (lr, num_epoch ...)."""
        stored, current = state["config"], comparable_config(self.cfg)
        differences = config_differences(stored, current, RESUME_FIXED_KEYS)
        stored_data, data = state.get("dataset"), self.dataset.fingerprint()
        if stored_data != data:
            def describe(fingerprint):
                fingerprint = fingerprint or {}
                return (f"{fingerprint.get('name')} ({fingerprint.get('num_image')} images, index "
                        f"{str(fingerprint.get('index_sha256'))[:12]})")
            differences.append(f"data set {describe(stored_data)} -> {describe(data)}")
        if differences:
            raise ValueError(f"cannot resume {path}: {'; '.join(differences)} (these decide the data order or the "
                             f"model); resume with the values it was written with, or pass --start-over")
        free_keys = sorted((set(stored) | set(current)) - set(RESUME_FIXED_KEYS) - set(RESUME_IGNORED_KEYS))
        changed = config_differences(stored, current, free_keys)
        return [(logging.WARNING, f"resuming with changed {', '.join(changed)}")] if changed else []

    def _restore(self, path: Path) -> List[Tuple[int, str]]:
        """Load checkpoint.pt into this run after _check_resumable; returns the (level, line)s to log."""
        state = load_checkpoint(path)
        notes = self._check_resumable(state, path)
        same_world = state["world_size"] == self.world_size
        if not same_world and state["micro_step_in_epoch"]:
            raise ValueError(f"{path}: written mid-epoch by {state['world_size']} ranks; resume it with "
                             f"{state['world_size']} ranks (this run has {self.world_size})")
        self.backbone.load_state_dict(state["backbone"])
        load_head_state(self.head, state["head"])
        self.extra.load_state_dict(state["extra"])
        own_method_state = state["per_rank"][self.rank].get("method") if same_world else None
        self.method.load_extra_state(state["method"] if own_method_state is None else own_method_state)
        optimizer_state = state["optimizer"]
        if is_sharded(self.head):
            for index in parameter_indices(self.optimizer, list(self.head.parameters())):
                optimizer_state["state"].pop(index, None)
            if "head_optimizer" in state:
                optimizer_state["state"].update(sharded_head_optimizer_state(state["head_optimizer"],
                                                                             self.optimizer, self.head))
            elif same_world:  # a checkpoint from before the gathered head state: this rank's own shard
                optimizer_state["state"].update(state["per_rank"][self.rank]["head_optimizer"])
        self.optimizer.load_state_dict(optimizer_state)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.micro_step_in_epoch = state["micro_step_in_epoch"]
        self.pending_rng = state["per_rank"][self.rank]["rng"] if same_world else None
        self.verification.best.update(state.get("best_accuracy", {}))
        if not same_world:
            notes.append((logging.WARNING, f"resuming with changed world size {state['world_size']} -> {self.world_size}: random "
                         "states restart and every rank starts from rank 0's method state"))
        return notes + [(logging.INFO, f"resumed from {path}: epoch {self.epoch}, step {self.step}/{self.total_steps}")]

    # ---- helpers for method hooks ---------------------------------------------------------
    @torch.no_grad()
    def extract_features(self, indices, batch_size: Optional[int] = None) -> torch.Tensor:
        """float32 [len(indices), d] backbone features (eval mode, no flip) on every rank, in order.

        Each rank embeds one contiguous slice of `indices`; the slices are gathered in rank order.
        """
        indices = torch.as_tensor(np.asarray(indices), dtype=torch.long).reshape(-1)
        per_rank = math.ceil(len(indices) / self.world_size)
        mine = indices[self.rank * per_rank:(self.rank + 1) * per_rank].tolist()
        features = torch.zeros(per_rank, self.cfg.embedding_size, dtype=torch.float32, device=self.device)
        loader = OneLineErrorLoader(torch.utils.data.Subset(self.dataset, mine),
                                    batch_size=batch_size or self.cfg.batch_size, shuffle=False,
                                    num_workers=self.cfg.num_workers, worker_init_fn=seed_worker)
        backbone = unwrap(self.backbone)
        was_training = backbone.training
        backbone.eval()
        row, failure = 0, None
        try:
            for images, _, _ in loader:
                with self.autocast():
                    batch_features = backbone(to_device({"image": images}, self.device,
                                                        self.cfg.channels_last)["image"])
                features[row:row + len(images)] = batch_features.float()
                row += len(images)
        except (ValueError, OSError) as error:   # bad input in this rank's slice: every rank stops on it
            failure = failure_line(error)
        backbone.train(was_training)
        agree_on_failure(failure)
        return all_gather_no_grad(features)[:len(indices)]

    # ---- the loop -------------------------------------------------------------------------
    def _micro_step(self, batch: dict, epoch: int, sync: bool):
        batch = to_device(batch, self.device, self.cfg.channels_last)
        batch["image"] = random_flip(batch["image"], batch["index"], int(self.cfg.seed), epoch)
        no_sync = (not sync and isinstance(unwrap_compiled(self.model), nn.parallel.DistributedDataParallel))
        with (unwrap_compiled(self.model).no_sync() if no_sync else contextlib.nullcontext()):
            with self.autocast():
                embeddings = self.model(batch["image"])
                progress = Progress(self.step, self.total_steps, epoch, int(self.cfg.num_epoch))
                loss, terms = self.method.loss(embeddings, batch, self.head, progress)
            # counted on the device, read once per optimiser step (_agree_on_step): no sync here
            self.nonfinite_losses = self.nonfinite_losses + (~torch.isfinite(loss.detach().float())).float()
            scaled = loss / self.accumulation
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss, terms

    def _agree_on_step(self) -> bool:
        """One all-reduce and one host read per optimiser step: (1) whether any rank saw a non-finite
        loss in this step (returned), (2) whether any rank was asked to stop (Ctrl-C; kept in
        self.stop_agreed, so every rank stops after the same step), (3) whether any rank's loader failed
        in this step (every rank then raises the lowest failed rank's line, before the step is
        applied), (4) with fp16, whether any rank's GradScaler found an inf/NaN gradient. The summed
        inf flag is written back into every rank's scaler, so all ranks skip the same steps and keep
        the same scale: a rank that skipped alone would leave its replica behind for good (DDP never
        re-syncs weights)."""
        if self.stop_request is not None and self.stop_request.requested:
            self.stop_flag.fill_(1.0)   # a kernel, not a host read: the flag travels in the all-reduce
        flags = [self.nonfinite_losses.reshape(1), self.stop_flag, self.data_failed_flag]
        found_inf = scaler_found_inf(self.scaler, self.optimizer) if self.scaler is not None else []
        if found_inf:
            flags.append(torch.stack([flag.reshape(()).to(self.device, torch.float32) for flag in found_inf]).sum()
                         .reshape(1))
        flags = all_reduce_sum(torch.cat(flags))
        for flag in found_inf:
            flag.copy_(flags[-1].reshape(flag.shape))
        values = flags.tolist()   # the one host read of the step
        if values[2] > 0:         # some rank's loader failed: every rank raises the lowest failed rank's line
            agree_on_failure(self.data_failure)
        self.stop_agreed = values[1] > 0
        return values[0] > 0

    def _stop_on_interrupt(self, checkpoint_saved: bool) -> None:
        """Ctrl-C agreed by every rank at a step boundary: leave a checkpoint a --resume continues
        from (even with save_all_states off), then end with one line."""
        if not checkpoint_saved:
            self.save_checkpoint()
        message = (f"interrupted at step {self.step}/{self.total_steps}: {Path(self.cfg.output) / CHECKPOINT_FILE} "
                   f"holds this step; continue with --resume")
        self.logger.info(message)
        raise TrainingInterrupted(message)

    def _next_batch(self, iterator) -> Optional[dict]:
        """The next micro-batch of this rank (None when the loader is exhausted). When this rank's
        loader meets bad input on a multi-rank run, the rank does not leave on its own (the others
        would wait in the step's collectives, or die on a transport error): it keeps the failure's
        line and feeds a stand-in batch until the step ends, where _agree_on_step stops every rank
        on that line before anything is applied."""
        if self.data_failure is None:
            try:
                return next(iterator)
            except StopIteration:
                return None
            except (ValueError, OSError) as error:
                if self.world_size == 1:
                    raise
                self.data_failure = failure_line(error)
                self.data_failed_flag.fill_(1.0)
        return self._stand_in_batch()

    def _stand_in_batch(self) -> dict:
        """A batch of the loader's shape (black images, valid indices and their labels) for a rank
        whose loader failed: its only use is to meet the other ranks' collectives."""
        labels = getattr(self.dataset, "labels", None)
        items = [(torch.zeros(self.image_shape, dtype=torch.uint8),
                  int(labels[index]) if labels is not None else 0, index) for index in range(self.cfg.batch_size)]
        return self.loader.collate_fn(items)

    def _stop_on_nonfinite_loss(self, terms: dict, indices: List[torch.Tensor]) -> None:
        message = f"non-finite loss at step {self.step} (terms {describe_terms(terms)})"
        self.save_checkpoint(DEBUG_CHECKPOINT_FILE, {"nonfinite": {"message": message,
                                                                   "batch_index": torch.cat(indices).cpu()}})
        raise NonFiniteLossError(f"{message}; debug state in {Path(self.cfg.output) / DEBUG_CHECKPOINT_FILE}")

    def _optimizer_step(self, terms: dict, indices: List[torch.Tensor]) -> None:
        # replicated modules: average the gradients while still scaled, before unscale_, so that an
        # overflow on any rank reaches every rank's found_inf (the scale is the same everywhere)
        if not is_sharded(self.head):
            average_gradients(self.head.parameters())
        average_gradients(self.extra.parameters())
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self._agree_on_step():
            self._stop_on_nonfinite_loss(terms, indices)
        self.nonfinite_losses.zero_()
        if self.cfg.clip_grad_norm:
            nn.utils.clip_grad_norm_(self.backbone.parameters(), float(self.cfg.clip_grad_norm))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)   # skipped on every rank together (see _agree_on_step)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    def _run_epoch(self, epoch: int) -> None:
        micro_steps = self.steps_per_epoch * self.accumulation
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(self.micro_step_in_epoch * self.cfg.batch_size)
        self.method.on_epoch_start(epoch, self)
        iterator = iter(self.loader)
        if self.pending_rng is not None:
            # after the iterator drew its seed: the resumed run continues the interrupted RNG streams
            set_rng_state(self.pending_rng, self.device)
            self.pending_rng = None
        # checkpoints fall on step boundaries: never resumed mid-step
        step_losses, step_terms, step_indices = [], [], []
        for _ in range(micro_steps - self.micro_step_in_epoch):
            batch = self._next_batch(iterator)
            if batch is None:
                break
            self.micro_step_in_epoch += 1
            sync = self.micro_step_in_epoch % self.accumulation == 0
            step_indices.append(batch["index"])
            loss, terms = self._micro_step(batch, epoch, sync)
            step_losses.append(loss.detach())
            step_terms.append(terms)
            if not sync:
                continue
            loss, terms = mean_over_micro_batches(step_losses, step_terms)
            self._optimizer_step(terms, step_indices)
            step_losses, step_terms, step_indices = [], [], []
            self.monitor.update(self.step, epoch, loss, terms, self.scheduler.get_last_lr()[0], self.scaler)
            epoch_done = self.micro_step_in_epoch == micro_steps
            if self.stop_agreed and not epoch_done:
                self._stop_on_interrupt(checkpoint_saved=False)
            if (self.cfg.save_every_steps and self.step % int(self.cfg.save_every_steps) == 0
                    and not epoch_done and self.cfg.save_all_states):
                self.save_checkpoint()
            if self.verification.due(self.step) and self.step != self.total_steps:
                self.verification(self.step, self.model)
        self.epoch, self.micro_step_in_epoch = epoch + 1, 0
        self._save_model()
        if self.cfg.save_all_states:
            self.save_checkpoint()
        self.logger.info(f"epoch {epoch} done: {Path(self.cfg.output) / MODEL_FILE}")
        if self.stop_agreed:
            self._stop_on_interrupt(checkpoint_saved=bool(self.cfg.save_all_states))

    def fit(self) -> None:
        self.backbone.train()
        self.head.train()
        self.extra.train()
        self.logger.info(f"training {self.total_steps} steps ({self.steps_per_epoch} per epoch, "
                         f"{self.cfg.num_epoch} epochs) from step {self.step}")
        with StopRequest() as self.stop_request:
            for epoch in range(self.epoch, int(self.cfg.num_epoch)):
                self._run_epoch(epoch)
        self._save_model()
        self.verification(self.step, self.model)
        self.monitor.close()
        self.logger.info(f"finished: {Path(self.cfg.output) / MODEL_FILE}")
        self.output_lock.release()


def unwrap_compiled(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


def _stop(exit_code: int, line: Optional[str] = None) -> None:
    """Print `line` (prefixed with the rank when there are several), release the output lock,
    leave the process group, exit with `exit_code`."""
    if line is not None:
        rank = os.environ.get("RANK", "0")
        prefix = f"[rank {rank}] " if os.environ.get("WORLD_SIZE", "1") != "1" else ""
        print(f"{prefix}{line}", file=sys.stderr, flush=True)
    release_held_locks()
    leave_process_group()
    sys.exit(exit_code)


def leave_process_group() -> None:
    """Destroy the process group once nothing else holds it: the trainer (its DDP wrapper holds the
    group) and an error's traceback are collected first, so gloo's threads end while the interpreter
    is alive; a group left to interpreter exit aborts the process now and then ("terminate called
    without an active exception", measured: 1 run in 9 of a 2-rank gloo run before this)."""
    gc.collect()
    with contextlib.suppress(Exception):   # a peer that is gone must not turn the line into a traceback
        cleanup()


def train(method_class, argv: Optional[List[str]] = None) -> None:
    """CLI entry point of every training script: `train(MethodClass)`; exits non-zero on errors
    (1), and with 130 on Ctrl-C (utils/training/interrupt.py)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, method_class)
    try:
        cfg = load_config(args.config, args.overrides)
        cfg.resume = bool(cfg.resume or args.resume)
        Trainer(cfg, method_class, argv, start_over=args.start_over).fit()
    except EXPECTED_ERRORS as error:
        stop = (1, f"error: {error}")
    except TrainingInterrupted:   # its one line is in the log (rank 0), the checkpoint written
        stop = (INTERRUPTED_EXIT_CODE, None)
    except KeyboardInterrupt:     # before training started, or a second Ctrl-C: at once
        stop = (INTERRUPTED_EXIT_CODE, "interrupted: stopped at once without saving (a checkpoint.pt already in "
                                       "the output folder stays; --resume continues from it)")
    else:
        stop = None
    if stop is not None:   # outside the except blocks: the error's traceback (and the trainer) can go
        _stop(*stop)
    leave_process_group()
