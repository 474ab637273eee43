"""Learning-rate factors per optimiser step (used through torch.optim.lr_scheduler.LambdaLR).

poly: linear warm-up from 0 over `warmup_steps`, then (1 - progress)^power (the reference
PolyScheduler, power 2). step: multiply by `decay_rate` once for every decay epoch reached.

Reference quirk: every BCT and UniBCT config of the reference sets warmup_epoch = -1. Its
scheduler then has warmup_steps = -S (S = steps per epoch) and the poly factor becomes
((T - t) / (T + S))^power: x0.945 at the start of a 35-epoch run, not quite 0 at the end. With
`reference_negative_warmup` (default) a negative warmup_epoch reproduces that; without it, a
negative warm-up is refused.
"""
from __future__ import annotations

import bisect
from typing import Callable, Sequence

import torch


class PolyFactor:
    """step -> LR factor of the poly schedule with linear warm-up."""

    def __init__(self, total_steps: int, warmup_steps: int = 0, power: float = 2.0,
                 negative_warmup: bool = False):
        if total_steps <= 0:
            raise ValueError(f"poly schedule needs total_steps > 0, got {total_steps}")
        # ((T - t) / (T - w))^power stays in [0, 1] for any negative w: no lower bound is needed
        if warmup_steps >= total_steps or (warmup_steps < 0 and not negative_warmup):
            raise ValueError(f"warm-up steps {warmup_steps} must lie in [0, total_steps={total_steps})"
                             + ("" if negative_warmup else
                                " (a negative warmup_epoch reproduces the reference's BCT/UniBCT schedule "
                                "only with reference_negative_warmup=True)"))
        self.total_steps, self.warmup_steps, self.power = total_steps, warmup_steps, power

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return max(0.0, 1.0 - progress) ** self.power


class StepDecayFactor:
    """step -> decay_rate ** (number of decay epochs <= the step's epoch)."""

    def __init__(self, steps_per_epoch: int, decay_epochs: Sequence[int], decay_rate: float = 0.1):
        if steps_per_epoch <= 0:
            raise ValueError(f"step schedule needs steps_per_epoch > 0, got {steps_per_epoch}")
        self.steps_per_epoch, self.decay_rate = steps_per_epoch, decay_rate
        self.decay_epochs = sorted(int(epoch) for epoch in decay_epochs)

    def __call__(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        return self.decay_rate ** bisect.bisect_right(self.decay_epochs, epoch)


def build_lr_factor(cfg, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """The config's schedule (`lr_schedule` poly | step) as a step -> factor callable."""
    if cfg.lr_schedule == "poly":
        return PolyFactor(total_steps, int(cfg.warmup_epoch * steps_per_epoch), cfg.poly_power,
                          negative_warmup=bool(cfg.reference_negative_warmup))
    if cfg.lr_schedule == "step":
        return StepDecayFactor(steps_per_epoch, cfg.decay_epoch, cfg.decay_rate)
    raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r} (expected 'poly' or 'step')")


def training_lr_factor(method_lr_lambda: Callable, cfg, steps_per_epoch: int,
                       total_steps: int) -> Callable[[int], float]:
    """The LR factor a training runs with: the method's own schedule (`Method.lr_lambda`, e.g.
    UniBCT's step decay) when it has one, else the config's (build_lr_factor)."""
    return (method_lr_lambda(steps_per_epoch, total_steps)
            or build_lr_factor(cfg, steps_per_epoch, total_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, factor: Callable[[int], float]):
    """LambdaLR stepping once per optimiser step; the LR at step s is base_lr * factor(s)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
