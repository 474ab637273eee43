"""Training logs that read well in a terminal (tqdm bar) and in a nohup log (plain periodic lines).

Rank 0 writes INFO lines to stdout and <output>/training.log, plus TensorBoard scalars under
<output>/tensorboard; other ranks only report warnings and errors, prefixed with their rank.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional

if TYPE_CHECKING:  # torch is imported where it is used: the data tools load this module without it
    import torch

LOGGER_NAME = "bct"


class _TqdmHandler(logging.StreamHandler):
    """Writes through tqdm so a live progress bar is not torn by log lines."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm
        tqdm.write(self.format(record), file=sys.stdout)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def setup_logger(output: Optional[str], rank: int) -> logging.Logger:
    """The library logger: rank 0 to stdout + training.log, other ranks warnings to stderr."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = False
    if rank != 0:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        return logger
    formatter = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = _TqdmHandler() if stdout_is_terminal() else logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if output:
        Path(output).mkdir(parents=True, exist_ok=True)
        log_file = logging.FileHandler(Path(output) / "training.log")
        log_file.setFormatter(formatter)
        logger.addHandler(log_file)
    logger.setLevel(logging.INFO)
    return logger


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, remainder = divmod(seconds, 3600)
    return f"{hours}h{remainder // 60:02d}m{remainder % 60:02d}s"


class TrainingMonitor:
    """Averages loss and terms between log points and reports speed, LR, ETA every `frequent` steps."""

    def __init__(self, cfg, logger: logging.Logger, rank: int, total_steps: int, start_step: int,
                 images_per_step: int):
        self.logger, self.enabled = logger, rank == 0
        self.frequent = max(1, int(cfg.frequent))
        self.total_steps, self.images_per_step = total_steps, images_per_step
        self.writer = None
        if self.enabled and cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(Path(cfg.output) / "tensorboard"))
        self.bar = None
        if self.enabled and stdout_is_terminal():
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self._reset(start_step)

    def _reset(self, step: int) -> None:
        self.sums: Dict[str, torch.Tensor | float] = {}
        self.count = 0
        self.window_start_time, self.window_start_step = time.time(), step

    def update(self, step: int, epoch: int, loss: torch.Tensor, terms: Dict[str, torch.Tensor | float],
               lr: float, scaler=None) -> None:
        """Record the step just finished (`step` = optimiser steps done, 1-based); `scaler` is the
        fp16 GradScaler, read only on log steps (reading its scale syncs the device)."""
        if not self.enabled:
            return
        import torch
        # running sums stay on the device: one host sync per log line, not per step
        for name, value in {"loss": loss.detach(), **terms}.items():
            value = value.detach().float() if torch.is_tensor(value) else float(value)
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
        if step % self.frequent == 0 or step == self.total_steps:
            self._report(step, epoch, lr, scaler.get_scale() if scaler is not None else None)

    def _report(self, step: int, epoch: int, lr: float, grad_scale: Optional[float]) -> None:
        elapsed = max(time.time() - self.window_start_time, 1e-9)
        steps_done = max(step - self.window_start_step, 1)
        speed = steps_done * self.images_per_step / elapsed
        eta = (self.total_steps - step) * elapsed / steps_done
        averages = {name: float(value) / self.count for name, value in self.sums.items()}
        parts = [f"epoch {epoch}", f"step {step}/{self.total_steps}", f"speed {speed:.1f} img/s",
                 f"lr {lr:.6f}"]
        parts += [f"{name} {value:.4f}" for name, value in averages.items()]
        if grad_scale is not None:
            parts.append(f"grad_scale {grad_scale:g}")
        parts.append(f"eta {format_duration(eta)}")
        self.logger.info("  ".join(parts))
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{averages['loss']:.3f}", lr=f"{lr:.4g}")
        if self.writer is not None:
            for name, value in averages.items():
                self.writer.add_scalar(f"train/{name}", value, step)
            self.writer.add_scalar("train/lr", lr, step)
            self.writer.add_scalar("train/images_per_second", speed, step)
            if grad_scale is not None:
                self.writer.add_scalar("train/grad_scale", grad_scale, step)
        self._reset(step)

    def add_scalar(self, name: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
