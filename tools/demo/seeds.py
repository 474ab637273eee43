"""The demo over several seeds: mean +- sd of every report cell, and per method a paired test of
whether the cross-test differs from old/old.

Test per method and metric, with d_s = new/old - old/old of seed s (paired: both rows of one
seed share its data, old model and IJB-C draw): a two-sided one-sample t-test of mean(d) = 0
over the n seeds, t = mean(d) / (sd(d) / sqrt(n)) with n - 1 degrees of freedom (sd with n - 1),
its p-value and the 95 % t-interval of mean(d). Verdict: "above old/old" when p < ALPHA and the
mean is positive, "below old/old" when p < ALPHA and it is negative, else "not shown different
from old/old". Each seed trains every model and draws its own data, so the seed-to-seed spread of
d holds the training noise and the sampling of subjects alike; the test needs at least two seeds
(with one there is no spread, and no verdict). The table also counts the seeds whose own
bootstrap interval puts the difference above 0 (a description of the seeds, not the test).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import List, Optional, Sequence

from scipy import stats

from tools.demo.premises import HEADLINE, conclusion
from tools.ijbc_eval.report import write_json
from utils.artifacts.manifests import write_text_atomic

ALPHA = 0.05
MIN_SEEDS = 2
TEST_NAME = "two-sided paired t-test over the seeds (one-sample t on d = new/old - old/old, n - 1 df)"
# what write_seed_report reads from each seed's run folder
SEED_RESULTS = ("report/compat_report.json", "report/premises.json", "timings.json")


def parse_seeds(text: str) -> List[int]:
    """'0,1,2' -> [0, 1, 2] (distinct integers, at least MIN_SEEDS: one seed has no spread to test
    a difference against); an argparse type, so its message reaches the user."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct comma-separated integers, e.g. 0,1,2")
    if len(seeds) < MIN_SEEDS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: one seed gives no verdict over seeds (no spread to test against); give at least "
            f"{MIN_SEEDS}, e.g. 0,1,2, or run one seed with --seed {seeds[0]}")
    return seeds


def mean_sd(values: Sequence[float]) -> tuple:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd


def paired_test(differences: Sequence[float], alpha: float = ALPHA) -> dict:
    """The t-test above on the per-seed differences: mean, sd, t, df, p, the 95 % interval of the
    mean and the verdict (None, with no p, for fewer than MIN_SEEDS seeds)."""
    n = len(differences)
    mean, sd = mean_sd(differences)
    result = {"n": n, "mean": mean, "sd": sd, "t": None, "df": n - 1, "p": None, "interval": None}
    if n < MIN_SEEDS:
        return {**result, "verdict": None}
    standard_error = sd / math.sqrt(n)
    if standard_error > 0:
        t = mean / standard_error
        p = float(2 * stats.t.sf(abs(t), n - 1))
        half_width = float(stats.t.ppf(1 - alpha / 2, n - 1)) * standard_error
    else:   # every seed gave the same difference: no spread, t unbounded, p 0 unless it is 0
        t, p, half_width = None, (0.0 if mean else 1.0), 0.0
    if p < alpha:
        verdict = "above old/old" if mean > 0 else "below old/old"
    else:
        verdict = "not shown different from old/old"
    return {**result, "t": t, "p": p, "interval": (mean - half_width, mean + half_width), "verdict": verdict}


def seed_summary(reports: List[dict]) -> dict:
    """Cells (mean, sd, values) of every row and metric, and the per-method tests."""
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
            above = [r.get("bootstrap", {}).get("differences_to_old", {}).get(f"{model} new/old", {})
                     .get(metric, {}).get("verdict") == "above" for r in reports]
            verdicts[model][metric] = {**paired_test(differences), "differences": differences,
                                       "seeds_above_by_bootstrap": sum(above) if metric in HEADLINE else None}
    return {"test": TEST_NAME, "alpha": ALPHA, "metrics": metrics, "cells": cells, "verdicts": verdicts}


def missing_seed_results(runs: Sequence[Path]) -> Optional[Path]:
    """The first file write_seed_report needs that a run lacks (None when all are there)."""
    for run in runs:
        for name in SEED_RESULTS:
            if not (run / name).is_file():
                return run / name
    return None


def verdict_cell(entry: dict) -> str:
    """'+3.2 [-1.0, 7.4], p = 0.083: not shown different from old/old [2/3]' (points)."""
    if entry["verdict"] is None:
        return f"{100 * entry['mean']:+.1f}: no verdict (one seed)"
    low, high = entry["interval"]
    return (f"{100 * entry['mean']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}], p = {entry['p']:.3f}: "
            f"{entry['verdict']}")


def premises_headline(seeds: Sequence[int], premises: List[dict], claims_premises: bool) -> str:
    """The seeds report's headline: the premises of every seed, as each run's conclusion."""
    conclusions = [conclusion(run, claims_premises) for run in premises]
    if not claims_premises:
        return conclusions[0][1]
    failed = [str(seed) for seed, (status, _) in zip(seeds, conclusions) if status != 0]
    if failed:
        return (f"PREMISES NOT MET on seed(s) {', '.join(failed)} (below): the verdicts do not rest on "
                f"the paper's scenario; read no comparison of the methods from them.")
    return f"All premises met on every seed ({len(seeds)} seeds)."


def write_seed_report(out: Path, runs: List[Path], seeds: Sequence[int], claims_premises: bool = True) -> str:
    """seeds_report.{md,json} in `out` from the runs' reports, premises and timings."""
    reports = [json.loads((run / "report" / "compat_report.json").read_text()) for run in runs]
    premises = [json.loads((run / "report" / "premises.json").read_text()) for run in runs]
    timings = [json.loads((run / "timings.json").read_text()) for run in runs]
    summary = seed_summary(reports)
    metrics = summary["metrics"]
    headline = premises_headline(seeds, premises, claims_premises)
    lines = [f"# The demo over seeds {', '.join(map(str, seeds))}", "", f"> **{headline}**", "",
             "Cells: mean +- sd over the seeds, %.", "",
             "| test | " + " | ".join(f"{m} %" for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for row, cells in summary["cells"].items():
        lines.append(f"| {row} | " + " | ".join(f"{100 * cells[m]['mean']:.1f} +- {100 * cells[m]['sd']:.1f}"
                                                 for m in metrics) + " |")
    lines += ["", f"Verdict per method: d = new/old - old/old per seed, points: mean [95 % t-interval], "
              f"p of the {TEST_NAME}; 'above' / 'below old/old' when p < {ALPHA}, else 'not shown "
              f"different from old/old'. [k/n]: seeds whose own 95 % bootstrap interval of d lies above 0 "
              f"(descriptive, not the test).", "",
              "| method | " + " | ".join(HEADLINE) + " | other metrics above old/old |", "|---|" + "---|" * (len(HEADLINE) + 1)]
    for model, by_metric in summary["verdicts"].items():
        cells = [f"{verdict_cell(by_metric[metric])} [{by_metric[metric]['seeds_above_by_bootstrap']}/{len(seeds)}]"
                 for metric in HEADLINE]
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
    write_json(out / "seeds_report.json", {"seeds": list(seeds), "headline": headline, **summary,
                                           "premises": premises, "timings": timings})
    write_text_atomic(out / "seeds_report.md", text)
    return text
