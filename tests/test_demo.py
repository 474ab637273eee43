"""The main job end to end at --quick size: every step is the real script, the report has every
model and bootstrap intervals, the premises are computed from the run's own files, a re-run skips
finished steps, and the same seed gives the same table. The seed aggregation is checked on
hand-written reports."""
import argparse
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.demo import embed_ijbc
from tools.demo.premises import (PREMISES_NOT_MET_EXIT, RUN_START, conclusion, epoch_losses,
                                 with_headline)
from tools.demo.seeds import paired_test, parse_seeds, write_seed_report

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


def t_two_sided_p_df2(t):
    """Two-sided p of Student's t with 2 degrees of freedom, in closed form: 1 - |t| / sqrt(2 + t^2)."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


T_975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)   # closed-form quantile of t with 2 df: 4.3027


def test_seed_report_mean_sd_and_paired_test(tmp_path):
    # differences new/old - old/old: 0.10, 0.20, 0.30 -> mean 0.2, sd 0.1, t = 2 sqrt(3), p = 0.074:
    # the mean - sd > 0 rule called this "above"; the t-test over 3 seeds does not
    runs = []
    for seed, (old, cross) in enumerate([(0.5, 0.6), (0.4, 0.6), (0.3, 0.6)]):
        runs.append(tmp_path / f"seed_{seed}")
        write_run(runs[-1], old, cross, "above" if seed < 2 else "within noise")
    text = write_seed_report(tmp_path, runs, [0, 1, 2])
    summary = json.loads((tmp_path / "seeds_report.json").read_text())
    old_cell = summary["cells"]["old/old"]["1:N top-1"]
    assert old_cell["mean"] == pytest.approx(0.4) and old_cell["sd"] == pytest.approx(0.1)
    verdict = summary["verdicts"]["M"]["1:N top-1"]
    assert (verdict["mean"], verdict["sd"], verdict["df"]) == (pytest.approx(0.2), pytest.approx(0.1), 2)
    assert verdict["t"] == pytest.approx(2 * math.sqrt(3))
    assert verdict["p"] == pytest.approx(t_two_sided_p_df2(2 * math.sqrt(3)))
    half = T_975_DF2 * 0.1 / math.sqrt(3)
    assert verdict["interval"] == pytest.approx([0.2 - half, 0.2 + half])
    assert verdict["verdict"] == "not shown different from old/old" and verdict["seeds_above_by_bootstrap"] == 2
    assert set(summary["verdicts"]) == {"M"}              # new* is the reference, not judged
    assert summary["cells"]["new* new/old"]["1:N top-1"]["mean"] == pytest.approx(0.01)
    assert "| old/old | 40.0 +- 10.0 |" in text
    assert (f"+20.0 [{100 * (0.2 - half):+.1f}, {100 * (0.2 + half):+.1f}], p = 0.074: not shown different "
            f"from old/old [2/3]") in text
    assert "paired t-test" in text and "seed 0: 1 of 2 met; not met: b" in text
    # premise b is not met on every seed: the report's headline says so before any number
    assert text.splitlines()[2].startswith("> **PREMISES NOT MET on seed(s) 0, 1, 2")
    quick = write_seed_report(tmp_path, runs, [0, 1, 2], claims_premises=False)
    assert "claims no premises" in quick.splitlines()[2]


def test_seed_verdicts_above_below_and_not_shown(tmp_path):
    cases = (("above", [(0.5, 0.69), (0.5, 0.70), (0.5, 0.71)], 0.2, 0.01, "above old/old"),
             ("below", [(0.5, 0.2), (0.5, 0.3), (0.5, 0.25)], -0.25, 0.05, "below old/old"),
             ("within", [(0.5, 0.4), (0.5, 0.6), (0.5, 0.5)], 0.0, 0.1, "not shown different from old/old"))
    for name, pairs, mean, sd, expected in cases:
        runs = []
        for seed, (old, cross) in enumerate(pairs):
            runs.append(tmp_path / name / f"seed_{seed}")
            write_run(runs[-1], old, cross, "within noise")
        write_seed_report(tmp_path / name, runs, [0, 1, 2])
        verdict = json.loads((tmp_path / name / "seeds_report.json").read_text())["verdicts"]["M"]["TAR@FAR=1e-2"]
        assert verdict["verdict"] == expected, name
        assert verdict["p"] == pytest.approx(t_two_sided_p_df2(mean / (sd / math.sqrt(3))), abs=1e-9), name


def test_one_seed_has_no_verdict():
    assert paired_test([0.3])["verdict"] is None and paired_test([0.3])["p"] is None
    # two seeds: a verdict with 1 degree of freedom, p = 1 - 2 atan(|t|) / pi
    two = paired_test([0.1, 0.3])
    assert two["df"] == 1 and two["p"] == pytest.approx(1 - 2 * math.atan(0.2 / (math.sqrt(0.02) / math.sqrt(2))) / math.pi)


def test_seeds_argument():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    for bad in ("0,x", "1,1", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="comma-separated integers"):
            parse_seeds(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="one seed gives no verdict"):
        parse_seeds("5")
    for text, message in (("1,1", "distinct comma-separated integers"), ("5", "--seed 5")):
        refused = subprocess.run([sys.executable, str(DEMO), "--seeds", text], capture_output=True, text=True)
        assert refused.returncode == 2 and message in refused.stderr
        assert "Traceback" not in refused.stderr


def test_seeds_with_only_and_an_unwritable_output_give_one_line(tmp_path):
    # only the first step of each seed (a few seconds at --quick): no seed has a report to summarise
    only = run_demo(tmp_path / "out", "--seeds", "0,1", "--only", "generate")
    assert only.returncode == 0, only.stderr[-2000:]
    assert "Traceback" not in only.stderr
    assert f"demo: no seeds report: {tmp_path / 'out' / 'seed_0' / 'report' / 'compat_report.json'} is missing" in only.stdout
    (tmp_path / "a_file").write_text("")
    unwritable = run_demo(tmp_path / "a_file" / "out")
    assert unwritable.returncode == 1 and "Traceback" not in unwritable.stderr
    assert unwritable.stderr.strip().splitlines() == [
        f"demo: cannot write to --out {tmp_path / 'a_file' / 'out'}: Not a directory"]


def test_convergence_reads_only_the_current_run(tmp_path):
    """A --start-over appends to training.log: only the last run from step 0 (with its resumes)
    counts. The log lines are the engine's (the demo's own log is checked below)."""
    def losses(epoch_values, first_step=1, total=6):
        lines, step = [], first_step
        for epoch, values in epoch_values:
            for value in values:
                lines.append(f"2026-01-01 00:00:00 epoch {epoch}  step {step}/{total}  speed 1.0 img/s  lr 0.1  "
                             f"loss {value:.4f}  eta 0s")
                step += 1
        return lines
    start = "2026-01-01 00:00:00 training 6 steps (2 per epoch, 3 epochs) from step {}"
    # the earlier run trained 4 epochs: its last epoch's steps are not overwritten by the new run's
    log = [start.format(0).replace("6 steps", "8 steps").replace("3 epochs", "4 epochs"),
           *losses([(0, [9.0, 9.0]), (1, [8.0, 8.0]), (2, [7.9, 7.9]), (3, [7.8, 7.8])], total=8),
           "2026-01-01 00:00:00 --start-over: removed model.pt of the earlier run in out",
           start.format(0), *losses([(0, [3.0, 3.0]), (1, [1.0, 1.0])]),
           start.format(4), *losses([(2, [0.5, 0.7])], first_step=5)]   # a resume: same run
    (tmp_path / "training.log").write_text("\n".join(log) + "\n")
    assert epoch_losses(tmp_path / "training.log") == pytest.approx([3.0, 1.0, 0.6])


def test_conclusion_and_headline():
    met, missed = {"met": True}, {"met": False}
    assert conclusion({"a": met, "b": met}, True) == (0, "All 2 premises of the scenario met (report/premises.md).")
    status, headline = conclusion({"a": met, "b": missed}, True)
    assert status == PREMISES_NOT_MET_EXIT == 3 and headline.startswith("PREMISES NOT MET (1 of 2 premises met): b.")
    status, headline = conclusion({"a": met, "b": missed}, False)
    assert status == 0 and "claims no premises" in headline and "1 of 2 premises met" in headline
    report = "# Compatibility\n\n| test | x |\n"
    once = with_headline(report, "first")
    assert once == "# Compatibility\n\n<!-- premises -->\n> **first**\n<!-- /premises -->\n\n| test | x |\n"
    assert with_headline(with_headline(once, "second"), "second") == once.replace("first", "second")


def test_quick_run_says_up_front_that_it_claims_no_premises(two_runs):
    first, _, results = two_runs
    stdout = results[0].stdout
    claim = stdout.index("demo: --quick: the test suite's size; this run claims no premises")
    assert claim < stdout.index("[1/16]")
    report_lines = (first / "report" / "compat_report.md").read_text().splitlines()
    assert report_lines[2:5] == ["<!-- premises -->", report_lines[3], "<!-- /premises -->"]
    assert report_lines[3].startswith("> **Quick size (the test suite's): this run claims no premises")
    # the engine writes exactly one run start into the old model's log, the line the premise looks for
    old_log = (first / "work_dirs" / "old_f128_tiny_softmax_class30" / "training.log").read_text()
    assert sum(bool(RUN_START.search(line)) for line in old_log.splitlines()) == 1


def test_premises_not_met_set_the_exit_status_and_the_headline(two_runs, tmp_path):
    """The quick run's files, taken as a default-size run's: only the report step runs again (its
    command is the same at both sizes; the embeddings come from the cache), then the premises,
    which are not met: the demo exits 3 and the report's headline says so."""
    first, _, _ = two_runs
    out = tmp_path / "run"
    shutil.copytree(first, out, symlinks=True)
    settings = json.loads((out / "demo_settings.json").read_text())
    (out / "demo_settings.json").write_text(json.dumps({**settings, "quick": False}) + "\n")
    result = subprocess.run([sys.executable, str(DEMO), "--out", str(out), "--only", "evaluate_and_report"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == PREMISES_NOT_MET_EXIT, result.stdout[-2000:] + result.stderr[-2000:]
    report_lines = (out / "report" / "compat_report.md").read_text().splitlines()
    assert report_lines[3].startswith("> **PREMISES NOT MET (")
    assert report_lines[3] in {line.replace("demo: ", "> **", 1) + "**" for line in result.stdout.splitlines()
                               if line.startswith("demo: PREMISES NOT MET")}
    assert "claims no premises" not in result.stdout
