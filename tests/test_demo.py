"""The main job end to end at --quick size: every step is the real script, the report has every
model, a re-run skips finished steps, and the same seed gives the same table."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "tools" / "demo" / "run_demo.py"
METHODS = ("L2", "BCT", "UniBCT", "NCCL", "AdvBCT", "MixBCT")


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


def report_rows(out: Path) -> dict:
    return json.loads((out / "report" / "compat_report.json").read_text())["rows"]


def test_report_has_old_independent_and_every_method(two_runs):
    first, _, results = two_runs
    rows = report_rows(first)
    expected = {"old/old", "new* new/new", "new* new/old"}
    expected |= {f"{method} {test}" for method in METHODS for test in ("new/new", "new/old")}
    assert expected <= set(rows)
    for name, metrics in rows.items():
        for metric, value in metrics.items():
            assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0, (name, metric, value)
    compatibility = json.loads((first / "report" / "compat_report.json").read_text())["compatibility"]
    assert set(METHODS) <= set(compatibility)
    assert (first / "report" / "compat_report.md").read_text() in results[0].stdout
    assert (first / "report" / "compat_report.png").stat().st_size > 0
    # every model the report names is a plain backbone written by the training scripts
    for method in METHODS:
        assert (first / "work_dirs" / f"{method}_f128_tiny_class70" / "model.pt").exists()


def test_same_seed_gives_the_same_table(two_runs):
    first, second, _ = two_runs
    assert report_rows(first) == report_rows(second)


def test_rerun_skips_finished_steps(two_runs):
    first, _, _ = two_runs
    again = run_demo(first)
    assert again.returncode == 0, again.stderr[-2000:]
    skipped = [line for line in again.stdout.splitlines() if "done earlier, skipped" in line]
    assert len(skipped) == 15


def test_other_settings_in_the_same_folder_are_refused(two_runs):
    first, _, _ = two_runs
    refused = run_demo(first, "--scenario", "EXdata")
    assert refused.returncode != 0
    assert "other settings" in refused.stderr and "Traceback" not in refused.stderr
