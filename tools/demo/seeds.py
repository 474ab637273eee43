"""The demo over several seeds: mean +- sd of every report cell, and per method whether the
compatibility gap new/old - old/old exceeds its spread over the seeds.

Verdict per method and metric, with d_s = new/old - old/old of seed s (paired: both rows of one
seed share the data and the old model): "above old/old" when mean(d) - sd(d) > 0, "below
old/old" when mean(d) + sd(d) < 0, else "within the seed spread" (sd with n - 1). The table
also counts the seeds whose own bootstrap interval puts the difference above 0.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import List, Sequence

from tools.demo.premises import HEADLINE
from tools.ijbc_eval.report import write_json
from utils.artifacts.manifests import write_text_atomic


def parse_seeds(text: str) -> List[int]:
    """'0,1,2' -> [0, 1, 2] (distinct integers); an argparse type, so its message reaches the user."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct comma-separated integers, e.g. 0,1,2")
    return seeds


def mean_sd(values: Sequence[float]) -> tuple:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd


def verdict(mean: float, sd: float) -> str:
    """The verdict on a difference of mean +- sd over the seeds."""
    if mean - sd > 0:
        return "above old/old"
    if mean + sd < 0:
        return "below old/old"
    return "within the seed spread"


def seed_summary(reports: List[dict]) -> dict:
    """Cells (mean, sd, values) of every row and metric, and the per-method verdicts."""
    rows = list(reports[0]["rows"])
    metrics = list(reports[0]["rows"]["old/old"])
    cells = {row: {metric: dict(zip(("mean", "sd"), mean_sd([r["rows"][row][metric] for r in reports])),
                                values=[r["rows"][row][metric] for r in reports]) for metric in metrics}
             for row in rows}
    # new* is the reference (no compatibility term), not a method to judge
    models = [row[: -len(" new/old")] for row in rows if row.endswith(" new/old") and not row.startswith("new* ")]
    verdicts = {}
    for model in models:
        verdicts[model] = {}
        for metric in metrics:
            differences = [r["rows"][f"{model} new/old"][metric] - r["rows"]["old/old"][metric] for r in reports]
            mean, sd = mean_sd(differences)
            above = [r.get("bootstrap", {}).get("differences_to_old", {}).get(f"{model} new/old", {})
                     .get(metric, {}).get("verdict") == "above" for r in reports]
            verdicts[model][metric] = {"mean": mean, "sd": sd, "differences": differences,
                                       "verdict": verdict(mean, sd),
                                       "seeds_above_by_bootstrap": sum(above) if metric in HEADLINE else None}
    return {"metrics": metrics, "cells": cells, "verdicts": verdicts}


def write_seed_report(out: Path, runs: List[Path], seeds: Sequence[int]) -> str:
    """seeds_report.{md,json} in `out` from the runs' reports, premises and timings."""
    reports = [json.loads((run / "report" / "compat_report.json").read_text()) for run in runs]
    premises = [json.loads((run / "report" / "premises.json").read_text()) for run in runs]
    timings = [json.loads((run / "timings.json").read_text()) for run in runs]
    summary = seed_summary(reports)
    metrics = summary["metrics"]
    lines = [f"# The demo over seeds {', '.join(map(str, seeds))}", "",
             "Cells: mean +- sd over the seeds, %.", "",
             "| test | " + " | ".join(f"{m} %" for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for row, cells in summary["cells"].items():
        lines.append(f"| {row} | " + " | ".join(f"{100 * cells[m]['mean']:.1f} +- {100 * cells[m]['sd']:.1f}"
                                                 for m in metrics) + " |")
    lines += ["", "Verdict per method: d = new/old - old/old per seed, points, mean +- sd; 'above old/old' "
              "when mean - sd > 0, 'below old/old' when mean + sd < 0, else 'within the seed spread'. "
              "[k/n]: seeds whose own 95 % bootstrap interval of d lies above 0.", "",
              "| method | " + " | ".join(HEADLINE) + " | other metrics above old/old |", "|---|" + "---|" * (len(HEADLINE) + 1)]
    for model, by_metric in summary["verdicts"].items():
        cells = []
        for metric in HEADLINE:
            entry = by_metric[metric]
            cells.append(f"{100 * entry['mean']:+.1f} +- {100 * entry['sd']:.1f}: {entry['verdict']} "
                         f"[{entry['seeds_above_by_bootstrap']}/{len(seeds)}]")
        others = [m for m in metrics if m not in HEADLINE and by_metric[m]["verdict"] == "above old/old"]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {', '.join(others) or 'none'} |")
    lines += ["", "Premises per seed:"]
    for seed, run_premises in zip(seeds, premises):
        met = [name for name, premise in run_premises.items() if premise["met"]]
        failed = [name for name, premise in run_premises.items() if not premise["met"]]
        lines.append(f"- seed {seed}: {len(met)} of {len(run_premises)} met"
                     + (f"; not met: {'; '.join(failed)}" if failed else ""))
    lines += ["", "Time per seed: " + "; ".join(
        f"seed {seed} {t['wall_seconds'] / 60:.1f} min wall, {t['cpu_seconds']:.0f} CPU s, {t['busy_cores']} cores busy, "
        f"load average {t['load_average_1min']['start']} -> {t['load_average_1min']['end']}"
        for seed, t in zip(seeds, timings)) + "."]
    text = "\n".join(lines) + "\n"
    write_json(out / "seeds_report.json", {"seeds": list(seeds), **summary, "premises": premises, "timings": timings})
    write_text_atomic(out / "seeds_report.md", text)
    return text
