"""The demo's premises: what must hold for its table to show the paper's scenario at all.

- the old model has converged: its training loss has flattened;
- an update is worth making: the independent new model (new*) beats old/old by at least
  `MIN_UPDATE_GAIN` in 1:N top-1 and in TAR@FAR=1e-2;
- new* is not compatible by accident: its cross-test is near chance;
- every new model (new* and each method) gets the same learning-rate budget;
- the protocol resolves a few points: enough genuine pairs and mated probes per gallery.

Each check is computed from the run's own files (the old model's training.log, the report's
compat_report.json, the configs through the engine's own schedule code) and returned with the
figures it rests on, so the demo prints why a premise holds or fails.

A premise NOT MET is a result, not a footnote: `conclusion` turns the premises into the report's
headline (written at the top of compat_report.md) and the demo's exit status,
PREMISES_NOT_MET_EXIT. Only a run that claims no premises (the --quick size, which exists for the
test suite and says so up front) exits 0 with premises not met.
"""
from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Sequence

from utils.common.config import load_config
from utils.training.method import Method
from utils.training.schedulers import training_lr_factor

MIN_UPDATE_GAIN = 0.15          # new*/new* - old/old, both headline metrics
NEAR_CHANCE = 0.05              # new*/old at most chance + 5 points
FLAT_SHARE = 0.05               # loss drop over the last quarter of epochs <= 5 % of the total drop
BUDGET_TOLERANCE = 0.05         # largest / smallest learning-rate budget - 1
MIN_GENUINE_PAIRS = 2000
MIN_MATED_PROBES = 300
HEADLINE = ("1:N top-1", "TAR@FAR=1e-2")

# the demo's exit status when a premise is not met (1: a step failed or bad input; 2: usage)
PREMISES_NOT_MET_EXIT = 3

LOSS_LINE = re.compile(r"epoch (\d+)\s+step (\d+)/(\d+)\s.*?\bloss ([0-9.eE+-]+|nan|inf)")
# the engine's start line of a run from scratch (Trainer.fit); a resume logs "from step N > 0"
RUN_START = re.compile(r"\btraining \d+ steps \(.*\) from step 0$")
HEADLINE_START, HEADLINE_END = "<!-- premises -->", "<!-- /premises -->"


def current_run_lines(training_log: Path) -> List[str]:
    """The lines of the log's last run from scratch: the training log is appended to by a
    --start-over, so an earlier run's losses would otherwise mix in (its resumes stay in)."""
    lines = training_log.read_text().splitlines()
    starts = [number for number, line in enumerate(lines) if RUN_START.search(line)]
    return lines[starts[-1]:] if starts else lines


def epoch_losses(training_log: Path) -> List[float]:
    """Mean logged loss of each epoch of the current run (a resumed run logs some steps twice:
    the last wins)."""
    by_step: Dict[int, tuple] = {}
    for line in current_run_lines(training_log):
        match = LOSS_LINE.search(line)
        if match:
            epoch, step, _, loss = match.groups()
            by_step[int(step)] = (int(epoch), float(loss))
    epochs: Dict[int, List[float]] = {}
    for step in sorted(by_step):
        epoch, loss = by_step[step]
        epochs.setdefault(epoch, []).append(loss)
    return [sum(losses) / len(losses) for _, losses in sorted(epochs.items())]


def loss_flattened(losses: Sequence[float]) -> dict:
    """Flattened when the drop over the last quarter of the epochs is at most FLAT_SHARE of the
    drop from the first epoch to the last."""
    if len(losses) < 2:
        return {"met": False, "epoch_losses": list(losses), "why": "fewer than two epochs logged"}
    quarter = max(1, len(losses) // 4)
    total_drop = losses[0] - losses[-1]
    late_drop = losses[-1 - quarter] - losses[-1]
    share = late_drop / total_drop if total_drop > 0 else float("inf")
    return {"met": bool(total_drop > 0 and share <= FLAT_SHARE), "epoch_losses": [round(x, 4) for x in losses],
            "last_epochs": quarter, "late_drop": late_drop, "total_drop": total_drop, "late_share": share}


def method_class(script: Path, method: str):
    """The Method subclass that training script `script` trains `method` with."""
    spec = importlib.util.spec_from_file_location(f"demo_premises_{script.parent.name}_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)   # the scripts train only under __main__
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, Method) and value.name.lower() == method.lower():
            return value
    raise ValueError(f"{script}: no Method class named {method!r}")


def learning_rate_budget(script: Path, config: Path, overrides: Sequence[str], num_images: int) -> dict:
    """Sum of the learning rate over the optimiser steps, in epochs at lr 1 (one process, the
    engine's drop_last batching), through the schedule code the training uses: the method's
    own lr_lambda (UniBCT's step decay) or the config's schedule."""
    cfg = load_config(config, list(overrides))
    steps_per_epoch = num_images // (int(cfg.batch_size) * int(cfg.gradient_accumulation_steps))
    total_steps = steps_per_epoch * int(cfg.num_epoch)
    # lr_lambda reads only the config: a namespace holding it stands in for the method object
    method_lr_lambda = functools.partial(method_class(script, cfg.method).lr_lambda, SimpleNamespace(cfg=cfg))
    factor = training_lr_factor(method_lr_lambda, cfg, steps_per_epoch, total_steps)
    integral = sum(factor(step) for step in range(total_steps)) / steps_per_epoch
    return {"lr": float(cfg.lr), "epochs": int(cfg.num_epoch), "steps_per_epoch": steps_per_epoch,
            "schedule": cfg.lr_schedule, "decay_epochs": list(cfg.decay_epoch), "budget": float(cfg.lr) * integral}


def check_premises(report: dict, old_training_log: Path, budgets: Dict[str, dict]) -> Dict[str, dict]:
    """Every premise with its figures; `report` is compat_report.json, `budgets` name -> budget."""
    rows, chance, counts = report["rows"], report["chance"], report["counts"]
    differences = report.get("bootstrap", {}).get("differences_to_old", {})
    premises = {"old model converged (loss flattened)": loss_flattened(epoch_losses(old_training_log))}
    gains = {metric: rows["new* new/new"][metric] - rows["old/old"][metric] for metric in HEADLINE}
    premises[f"new* self-test beats old/old by >= {100 * MIN_UPDATE_GAIN:.0f} points"] = {
        "met": all(gain >= MIN_UPDATE_GAIN for gain in gains.values()), "gain": gains,
        "interval": {metric: differences.get("new* new/new", {}).get(metric, {}).get("interval")
                     for metric in HEADLINE}}
    cross = {metric: rows["new* new/old"][metric] for metric in HEADLINE}
    premises[f"new* cross-test near chance (<= chance + {100 * NEAR_CHANCE:.0f} points)"] = {
        "met": all(cross[metric] <= chance[metric] + NEAR_CHANCE for metric in HEADLINE),
        "cross": cross, "chance": {metric: chance[metric] for metric in HEADLINE}}
    values = [budget["budget"] for budget in budgets.values()]
    premises["equal learning-rate budgets"] = {
        "met": bool(values) and max(values) <= (1 + BUDGET_TOLERANCE) * min(values), "budgets": budgets}
    mated = {name: gallery["mated_probes"] for name, gallery in counts["galleries"].items()}
    premises[f"resolution (>= {MIN_GENUINE_PAIRS} genuine pairs, >= {MIN_MATED_PROBES} mated probes per gallery)"] = {
        "met": counts["genuine_pairs"] >= MIN_GENUINE_PAIRS and min(mated.values()) >= MIN_MATED_PROBES,
        "genuine_pairs": counts["genuine_pairs"], "mated_probes": mated}
    return premises


def describe(name: str, premise: dict) -> str:
    """One line: MET / NOT MET, the premise and its figures."""
    def pct(value):
        return f"{100 * value:.1f}"
    if "epoch_losses" in premise:
        if "late_share" not in premise:
            detail = premise["why"]
        else:
            detail = (f"loss per epoch {premise['epoch_losses']}; the last {premise['last_epochs']} epoch(s) "
                      f"lowered it by {premise['late_drop']:.4f} = {100 * premise['late_share']:.1f} % of the "
                      f"total drop {premise['total_drop']:.4f} (flat: <= {100 * FLAT_SHARE:.0f} %)")
    elif "gain" in premise:
        detail = "; ".join(f"{metric} {100 * gain:+.1f} points" + (
            f" (95 % interval [{pct(premise['interval'][metric][0])}, {pct(premise['interval'][metric][1])}])"
            if premise["interval"].get(metric) else "") for metric, gain in premise["gain"].items())
    elif "cross" in premise:
        detail = "; ".join(f"{metric} {pct(value)} % (chance {pct(premise['chance'][metric])} %)"
                           for metric, value in premise["cross"].items())
    elif "budgets" in premise:
        detail = "; ".join(f"{name_} {budget['budget']:.4f} ({budget['schedule']}, {budget['epochs']} epochs)"
                           for name_, budget in premise["budgets"].items()) + " (sum of lr over the steps, in epochs)"
    else:
        detail = (f"{premise['genuine_pairs']} genuine pairs; mated probes "
                  + ", ".join(f"{gallery} {count}" for gallery, count in premise["mated_probes"].items()))
    return f"[{'MET' if premise['met'] else 'NOT MET'}] {name}: {detail}"


def conclusion(premises: Dict[str, dict], claims_premises: bool) -> tuple:
    """(exit status, headline) of a run from its premises. A run that claims premises and misses
    one exits PREMISES_NOT_MET_EXIT and is headlined so; a run that claims none (--quick) says
    that instead and exits 0."""
    failed = [name for name, premise in premises.items() if not premise["met"]]
    met = f"{len(premises) - len(failed)} of {len(premises)} premises met"
    if not claims_premises:
        return 0, (f"Quick size (the test suite's): this run claims no premises; its table checks the "
                   f"pipeline, not the methods ({met}, report/premises.md).")
    if failed:
        return PREMISES_NOT_MET_EXIT, (
            f"PREMISES NOT MET ({met}): {'; '.join(failed)}. This table does not show the paper's "
            f"scenario: read no comparison of the methods from it (report/premises.md).")
    return 0, f"All {len(premises)} premises of the scenario met (report/premises.md)."


def with_headline(report_text: str, headline: str) -> str:
    """The report with `headline` as a quoted block under its title, replacing an earlier one
    (a re-run of the demo headlines the same report again)."""
    lines = report_text.splitlines()
    if HEADLINE_START in lines:
        start = lines.index(HEADLINE_START)
        end = lines.index(HEADLINE_END, start)
        lines[start:end + 2] = []            # the block and the blank line after it
    title = 1 if lines and lines[0].startswith("# ") else 0
    block = ["", HEADLINE_START, f"> **{headline}**", HEADLINE_END]
    lines[title:title] = block if title else block[1:] + [""]
    return "\n".join(lines) + "\n"
