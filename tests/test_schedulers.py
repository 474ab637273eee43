"""utils/training/schedulers.py against the formulas written out here."""
import pytest
import torch
from easydict import EasyDict

from utils.training.schedulers import PolyFactor, StepDecayFactor, build_lr_factor, build_scheduler


def learning_rates(factor, base_lr: float, steps: int):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = build_scheduler(optimizer, factor)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_poly_with_warmup_matches_formula():
    base, total, warmup = 0.1, 50, 10
    rates = learning_rates(PolyFactor(total, warmup, 2.0), base, total)
    for step, rate in enumerate(rates):
        expected = base * step / warmup if step < warmup else base * (1 - (step - warmup) / (total - warmup)) ** 2
        assert rate == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert rates[0] == 0.0 and rates[warmup] == pytest.approx(base)


def test_poly_without_warmup_and_past_the_end():
    factor = PolyFactor(100, 0, 2.0)
    assert factor(0) == 1.0 and factor(50) == pytest.approx(0.25) and factor(100) == 0.0 and factor(150) == 0.0


def test_step_decay_after_each_decay_epoch():
    factor = StepDecayFactor(steps_per_epoch=5, decay_epochs=[4, 2], decay_rate=0.1)
    expected = [1.0] * 10 + [0.1] * 10 + [0.01] * 10
    assert [factor(step) for step in range(30)] == pytest.approx(expected)


def test_build_from_config():
    cfg = EasyDict(lr_schedule="poly", warmup_epoch=1, poly_power=2.0, decay_epoch=[], decay_rate=0.1,
                   reference_negative_warmup=True)
    factor = build_lr_factor(cfg, steps_per_epoch=10, total_steps=40)
    assert factor(5) == pytest.approx(0.5) and factor(25) == pytest.approx((1 - 15 / 30) ** 2)
    cfg.update(lr_schedule="step", decay_epoch=[1])
    assert build_lr_factor(cfg, 10, 40)(10) == pytest.approx(0.1)
    cfg.lr_schedule = "cosine"
    with pytest.raises(ValueError, match="unknown lr_schedule 'cosine'"):
        build_lr_factor(cfg, 10, 40)
    with pytest.raises(ValueError, match="warm-up"):
        PolyFactor(10, 10)


def test_negative_warmup_reproduces_the_reference_bct_schedule():
    """The reference's BCT / UniBCT configs set warmup_epoch = -1: with S steps per epoch and T steps
    in all, its scheduler gives ((T - t) / (T + S))^2 (docs/methods.md)."""
    steps_per_epoch, epochs = 100, 35
    total = steps_per_epoch * epochs
    cfg = EasyDict(lr_schedule="poly", warmup_epoch=-1, poly_power=2.0, decay_epoch=[], decay_rate=0.1,
                   reference_negative_warmup=True)
    factor = build_lr_factor(cfg, steps_per_epoch, total)
    for step in (0, 1, 1750, total - 1):
        assert factor(step) == pytest.approx(((total - step) / (total + steps_per_epoch)) ** 2)
    assert factor(0) == pytest.approx((35 / 36) ** 2) and round(factor(0), 3) == 0.945
    assert factor(total - 1) > 0
    # a one-epoch run: warmup_steps = -S = -T is still the reference's formula
    one_epoch = build_lr_factor(cfg, total, total)
    assert one_epoch(0) == pytest.approx((total / (2 * total)) ** 2)
    cfg.reference_negative_warmup = False
    with pytest.raises(ValueError, match="reference_negative_warmup=True"):
        build_lr_factor(cfg, steps_per_epoch, total)


def test_reference_bct_and_unibct_configs_use_the_negative_warmup():
    from utils.common.config import load_config
    from utils.common.config import REPO_ROOT
    for method in ("BCT", "UniBCT"):
        for path in sorted((REPO_ROOT / "BCT_methods" / method / "configs").glob("*ms1mv3*.py")):
            cfg = load_config(path)
            assert cfg.warmup_epoch == -1 and cfg.reference_negative_warmup, path.name
