"""The main job end to end at --quick size: every step is the real script, the report has every
model and bootstrap intervals, the premises are computed from the run's own files, a re-run skips
finished steps, and the same seed gives the same table. The seed aggregation is checked on
hand-written reports."""
import argparse
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools.demo import embed_ijbc
from tools.demo.seeds import parse_seeds, write_seed_report

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "tools" / "demo" / "run_demo.py"
METHODS = ("L2", "BCT", "UniBCT", "NCCL", "AdvBCT", "MixBCT")
HEADLINE = ("1:N top-1", "TAR@FAR=1e-2")


def run_demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEMO), "--quick", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    first, second = tmp_path_factory.mktemp("demo_a"), tmp_path_factory.mktemp("demo_b")
    results = [run_demo(first), run_demo(second)]
    for result in results:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return first, second, results


def report(out: Path) -> dict:
    return json.loads((out / "report" / "compat_report.json").read_text())


def premises(out: Path) -> dict:
    return json.loads((out / "report" / "premises.json").read_text())


def test_report_has_old_independent_and_every_method(two_runs):
    first, _, results = two_runs
    rows = report(first)["rows"]
    expected = {"old/old", "new* new/new", "new* new/old"}
    expected |= {f"{method} {test}" for method in METHODS for test in ("new/new", "new/old")}
    assert expected <= set(rows)
    for name, metrics in rows.items():
        for metric, value in metrics.items():
            assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0, (name, metric, value)
    assert set(METHODS) <= set(report(first)["compatibility"])
    assert (first / "report" / "compat_report.md").read_text() in results[0].stdout
    assert (first / "report" / "compat_report.png").stat().st_size > 0
    for method in METHODS:
        assert (first / "work_dirs" / f"{method}_f128_tiny_class70" / "model.pt").exists()


def test_every_row_has_a_bootstrap_interval_around_its_value(two_runs):
    first, _, _ = two_runs
    result = report(first)
    bootstrap = result["bootstrap"]
    assert set(bootstrap["intervals"]) == set(result["rows"])
    for row, intervals in bootstrap["intervals"].items():
        for metric in HEADLINE:
            low, high = intervals[metric]
            assert 0.0 <= low <= high <= 1.0
    for row, differences in bootstrap["differences_to_old"].items():
        for metric in HEADLINE:
            entry = differences[metric]
            assert entry["difference"] == pytest.approx(result["rows"][row][metric] - result["rows"]["old/old"][metric])
            low, high = entry["interval"]
            assert entry["verdict"] == ("above" if low > 0 else "below" if high < 0 else "within noise")


def poly_budget(lr, steps_per_epoch, epochs):
    total = steps_per_epoch * epochs
    return lr * sum((1 - step / total) ** 2 for step in range(total)) / steps_per_epoch


def step_budget(lr, steps_per_epoch, epochs, decay_epochs, rate=0.1):
    return lr * sum(rate ** sum(epoch >= d for d in decay_epochs) for epoch in range(epochs))


def test_premises_are_computed_from_the_run_and_printed(two_runs):
    first, _, results = two_runs
    result, checked = report(first), premises(first)
    rows, chance, counts = result["rows"], result["chance"], result["counts"]
    names = list(checked)
    assert len(names) == 5
    # each verdict recomputed here from the report
    gains = [rows["new* new/new"][m] - rows["old/old"][m] for m in HEADLINE]
    assert checked[names[1]]["met"] == all(gain >= 0.15 for gain in gains)
    assert checked[names[2]]["met"] == all(rows["new* new/old"][m] <= chance[m] + 0.05 for m in HEADLINE)
    mated = [g["mated_probes"] for g in counts["galleries"].values()]
    assert checked[names[4]]["met"] == (counts["genuine_pairs"] >= 2000 and min(mated) >= 300)
    # the learning-rate budgets: the poly and step schedules summed by formula
    budgets = checked[names[3]]["budgets"]
    assert set(budgets) == {"new*", *METHODS}
    for name, budget in budgets.items():
        steps, epochs = budget["steps_per_epoch"], budget["epochs"]
        expected = (step_budget(0.1, steps, epochs, budget["decay_epochs"]) if name == "UniBCT"
                    else poly_budget(0.1, steps, epochs))
        assert budget["budget"] == pytest.approx(expected), name
    values = [b["budget"] for b in budgets.values()]
    assert checked[names[3]]["met"] == (max(values) <= 1.05 * min(values))
    # the old model's loss per epoch, read from its training.log (one line per step at --quick)
    old_log = (first / "work_dirs" / "old_f128_tiny_softmax_class30" / "training.log").read_text()
    losses = [float(x) for x in re.findall(r"epoch \d+\s+step \d+/\d+\s.*?\bloss ([0-9.]+)", old_log)]
    assert checked[names[0]]["epoch_losses"] == pytest.approx(losses, abs=1e-4)
    for name, premise in checked.items():
        assert f"[{'MET' if premise['met'] else 'NOT MET'}] {name}" in results[0].stdout


def test_time_and_cpu_are_measured_per_step(two_runs):
    first, _, _ = two_runs
    timings = json.loads((first / "timings.json").read_text())
    steps = timings["steps"]
    assert len(steps) == 16 and all(step["cpu_seconds"] > 0 for step in steps.values())
    assert timings["cpu_seconds"] == pytest.approx(sum(step["cpu_seconds"] for step in steps.values()), abs=0.2)
    assert timings["busy_cores"] == pytest.approx(timings["cpu_seconds"] / timings["wall_seconds"], abs=0.01)


def test_same_seed_gives_the_same_table(two_runs):
    first, second, _ = two_runs
    assert report(first)["rows"] == report(second)["rows"]
    assert report(first)["bootstrap"] == report(second)["bootstrap"]
    assert premises(first) == premises(second)


def test_rerun_skips_finished_steps(two_runs):
    first, _, _ = two_runs
    timings = (first / "timings.json").read_text()
    again = run_demo(first)
    assert again.returncode == 0, again.stderr[-2000:]
    skipped = [line for line in again.stdout.splitlines() if "done earlier, skipped" in line]
    assert len(skipped) == 16
    assert (first / "timings.json").read_text() == timings   # the run that did the work keeps its figures


def test_embed_tool_finds_the_reports_embeddings_and_refuses_bad_input(two_runs, capsys):
    first, _, _ = two_runs
    data = first / "dataset" / "synthetic"
    cache = data / ".eval_cache"
    before = {path.name: path.stat().st_mtime_ns for path in cache.iterdir()}
    model = first / "work_dirs" / "L2_f128_tiny_class70" / "model.pt"
    assert embed_ijbc.main([f"{model}:tiny_s", "-d", str(data), "--workers", "0"]) == 0
    # the report's cache file is reused as it is: nothing new, nothing rewritten
    assert {path.name: path.stat().st_mtime_ns for path in cache.iterdir()} == before
    assert "images embedded or found in the cache" in capsys.readouterr().out
    assert embed_ijbc.main([f"{model}:tiny_xs", "-d", str(data), "--workers", "0"]) == 1
    assert embed_ijbc.main([str(model), "-d", str(data)]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("embed_ijbc: error: ") for line in errors)


def test_other_settings_in_the_same_folder_are_refused(two_runs):
    first, _, _ = two_runs
    refused = run_demo(first, "--scenario", "EXdata")
    assert refused.returncode != 0
    assert "other settings" in refused.stderr and "Traceback" not in refused.stderr


def write_run(folder: Path, old: float, cross: float, bootstrap_verdict: str) -> None:
    (folder / "report").mkdir(parents=True)
    metrics = {"1:N top-1": None, "TAR@FAR=1e-2": None, "TAR@FAR=1e-4": None}
    rows = {"old/old": dict.fromkeys(metrics, old), "M new/new": dict.fromkeys(metrics, 0.9),
            "M new/old": dict.fromkeys(metrics, cross), "new* new/new": dict.fromkeys(metrics, 0.9),
            "new* new/old": dict.fromkeys(metrics, 0.01)}
    differences = {"M new/old": {m: {"verdict": bootstrap_verdict} for m in HEADLINE}}
    (folder / "report" / "compat_report.json").write_text(json.dumps(
        {"rows": rows, "bootstrap": {"differences_to_old": differences}}))
    (folder / "report" / "premises.json").write_text(json.dumps({"a": {"met": True}, "b": {"met": False}}))
    (folder / "timings.json").write_text(json.dumps({"wall_seconds": 420.0, "cpu_seconds": 800.0, "busy_cores": 1.9,
                                                     "load_average_1min": {"start": 0.1, "end": 2.0}}))


def test_seed_report_mean_sd_and_verdicts(tmp_path):
    # differences new/old - old/old: 0.10, 0.20, 0.30 -> mean 0.2, sd 0.1: above old/old
    runs = []
    for seed, (old, cross) in enumerate([(0.5, 0.6), (0.4, 0.6), (0.3, 0.6)]):
        runs.append(tmp_path / f"seed_{seed}")
        write_run(runs[-1], old, cross, "above" if seed < 2 else "within noise")
    text = write_seed_report(tmp_path, runs, [0, 1, 2])
    summary = json.loads((tmp_path / "seeds_report.json").read_text())
    old_cell = summary["cells"]["old/old"]["1:N top-1"]
    assert old_cell["mean"] == pytest.approx(0.4) and old_cell["sd"] == pytest.approx(0.1)
    verdict = summary["verdicts"]["M"]["1:N top-1"]
    assert (verdict["mean"], verdict["sd"]) == (pytest.approx(0.2), pytest.approx(0.1))
    assert verdict["verdict"] == "above old/old" and verdict["seeds_above_by_bootstrap"] == 2
    assert set(summary["verdicts"]) == {"M"}              # new* is the reference, not judged
    assert summary["cells"]["new* new/old"]["1:N top-1"]["mean"] == pytest.approx(0.01)
    assert "| old/old | 40.0 +- 10.0 |" in text and "+20.0 +- 10.0: above old/old [2/3]" in text
    assert "seed 0: 1 of 2 met; not met: b" in text


def test_seed_verdict_within_spread_and_below(tmp_path):
    # differences -0.1, +0.1, 0.0: mean 0 -> within; -0.3, -0.2, -0.25: below
    for name, pairs, expected in (("within", [(0.5, 0.4), (0.5, 0.6), (0.5, 0.5)], "within the seed spread"),
                                  ("below", [(0.5, 0.2), (0.5, 0.3), (0.5, 0.25)], "below old/old")):
        runs = []
        for seed, (old, cross) in enumerate(pairs):
            runs.append(tmp_path / name / f"seed_{seed}")
            write_run(runs[-1], old, cross, "within noise")
        write_seed_report(tmp_path / name, runs, [0, 1, 2])
        summary = json.loads((tmp_path / name / "seeds_report.json").read_text())
        assert summary["verdicts"]["M"]["TAR@FAR=1e-2"]["verdict"] == expected


def test_seeds_argument():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    for bad in ("0,x", "1,1", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="comma-separated integers"):
            parse_seeds(bad)
    refused = subprocess.run([sys.executable, str(DEMO), "--seeds", "1,1"], capture_output=True, text=True)
    assert refused.returncode == 2 and "distinct comma-separated integers" in refused.stderr
    assert "Traceback" not in refused.stderr
