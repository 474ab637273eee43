"""tools/run_experiment.py: the MS1M-V3 plan (OPclass, softmax_to_arc_f128) on the synthetic data in
the insightface layout, networks and epochs at the quick size, 2 gloo processes per training.

One uninterrupted run (its --dry-run taken first must equal what it ran); one run killed with
kill -9 of its whole process group during the second training (--status read while it runs),
then re-run: the same model checksums and report; a step made to fail stops only its
dependents (heavy; tests/test_experiment_backend.py checks the same on trivial steps). Bad input is refused with one line before anything starts."""
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm_cluster import slurm_cluster  # noqa: F401  (the fixture: a real one-node Slurm)
from tests.training_fixtures import subprocess_env
from tools import run_experiment
from tools.experiment.ms1mv3 import global_batch_split
from utils.common.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNNER = REPO_ROOT / "tools" / "run_experiment.py"
QUICK = ["--scenario", "OPclass", "--setting", "softmax_to_arc_f128", "--gpus", "none", "--gpus-per-training", "2",
         "--max-parallel", "1", "--workers", "0", "--log-every", "2",
         "--set", "num_classes=None", "num_image=None", "fp16=False", "val_targets=[]", "num_workers=0",
         "batch_size=4", "num_epoch=2", "frequent=1", "tensorboard=False", "save_every_steps=2",
         "--set-old", "network=tiny_xs", "--set-new", "network=tiny_s", "old_network=tiny_xs"]
MODELS = ("f128_r18_softmax_class30", "f128_r50_arc_class70", "OPclass_ms1mv3_r18_to_r50_L2_softmax_to_arc_f128")


def command(data: Path, out: Path, *extra: str, methods=("L2",)) -> list:
    return [sys.executable, str(RUNNER), "--data", str(data), "--ijbc", str(data), "--out", str(out),
            "--methods", *methods, *QUICK, *extra]


def run(argv, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=subprocess_env(), cwd=REPO_ROOT)


def checksums(out: Path) -> dict:
    return {name: hashlib.sha256((out / "work_dirs" / name / "model.pt").read_bytes()).hexdigest() for name in MODELS}


def table(out: Path) -> dict:
    report = json.loads((out / "report" / "compat_report.json").read_text())
    return {"rows": report["rows"], "bootstrap": report["bootstrap"]}


def logged_commands(out: Path) -> dict:
    """step -> the command lines its log records (one per start)."""
    return {log.stem: [line[2:] for line in log.read_text().splitlines() if line.startswith("$ ")]
            for log in (out / "logs").glob("*.log")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ms1m_layout")
    result = run([sys.executable, "tools/synthetic/generate.py", "--out", str(folder), "--quick"])
    assert result.returncode == 0, result.stderr[-2000:]
    return folder


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_a") / "out"
    dry = run(command(data, out, "--dry-run"))
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert not out.exists()                       # a dry run writes nothing
    result = run(command(data, out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, dry.stdout, result


def test_the_plan_completes_with_every_model_and_the_report(uninterrupted):
    out, _, result = uninterrupted
    rows = table(out)["rows"]
    assert {"old/old", "new* new/new", "new* new/old", "L2 new/new", "L2 new/old"} <= set(rows)
    assert (out / "report" / "compat_report.md").read_text() in result.stdout
    for name in MODELS:
        assert (out / "work_dirs" / name / "model.pt").is_file()
    # each training keeps the global batch (8 x 4 = 32) on its 2 processes and says so in its log
    log = (out / "logs" / "train_old.log").read_text()
    assert "# global batch 32 kept on 2 processes: batch 4 per process x 4 accumulation steps" in log
    config = json.loads((out / "work_dirs" / MODELS[0] / "config.json").read_text())
    assert (config["batch_size"], config["gradient_accumulation_steps"]) == (4, 4)
    # every step's output went to its own log, not to the terminal
    assert "epoch 1" not in result.stdout and re.search(r"epoch 1\s+step", log)


def test_dry_run_equals_what_ran(uninterrupted):
    out, script, _ = uninterrupted
    planned = {}
    for line in script.splitlines():
        if line and not line.startswith("#") and " >> " in line:
            text, _, redirect = line.rpartition(" >> ")
            planned[Path(shlex.split(redirect)[0]).stem] = text
    ran = logged_commands(out)
    assert set(planned) == set(ran) and len(planned) == 9        # split included: the data was not split yet
    for step, text in planned.items():
        assert ran[step] == [text], step
    bash = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert bash.returncode == 0, bash.stderr


def test_kill_of_the_process_group_then_rerun_gives_the_same_models_and_report(data, uninterrupted, tmp_path):
    reference, _, _ = uninterrupted
    out = tmp_path / "out"
    runner = subprocess.Popen(command(data, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=subprocess_env(), cwd=REPO_ROOT, start_new_session=True)
    second = out / "work_dirs" / MODELS[1]
    status_seen = None
    try:
        deadline = time.time() + 300
        while not (second / "checkpoint.pt").exists():   # the second training has written its first checkpoint
            assert runner.poll() is None and time.time() < deadline, "the runner ended before the second training"
            time.sleep(0.05)
        status_seen = run([sys.executable, str(RUNNER), "--status", "--out", str(out)])
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
    assert status_seen.returncode == 0, status_seen.stderr
    assert "runner pid" in status_seen.stdout and ": running" in status_seen.stdout
    states = {line.split()[0]: line.split()[1] for line in status_seen.stdout.splitlines()[1:]}
    assert states["train_old"] == "done" and states["features_old"] == "done"
    assert states["train_independent"] == "running" and states["report"] == "waiting"
    assert not (out / ".steps" / "train_independent.json").exists()   # it had not finished

    after_kill = run([sys.executable, str(RUNNER), "--status", "--out", str(out)])
    assert "train_independent        interrupted" in after_kill.stdout and "not running" in after_kill.stdout
    again = run(command(data, out))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "train_old: done earlier, skipped" in again.stdout
    assert "train_independent: started (resuming from its checkpoint)" in again.stdout
    assert checksums(out) == checksums(reference)
    assert table(out) == table(reference)



@pytest.mark.heavy
def test_kill_9_again_and_again_then_the_same_models_and_report(data, uninterrupted, tmp_path):
    """kill -9 of the whole process group at moments spread over the plan (trainings, feature
    dumps, embeddings, the report), the same command after each kill, then once more to the end:
    the models and the report equal the uninterrupted run's."""
    reference, _, _ = uninterrupted
    out = tmp_path / "out"
    kills = []
    for delay in (4.0, 6.5, 9.0, 5.0, 11.0, 7.5, 13.0, 8.0):
        runner = subprocess.Popen(command(data, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=subprocess_env(), cwd=REPO_ROOT, start_new_session=True)
        time.sleep(delay)
        if runner.poll() is not None:
            break                                      # finished before this kill
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
        kills.append(sorted(path.stem for path in (out / ".steps").glob("*.json")) if (out / ".steps").exists() else [])
    assert len(kills) >= 4, kills                      # the kills landed while the plan ran
    final = run(command(data, out))
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    assert checksums(out) == checksums(reference)
    assert table(out) == table(reference)


@pytest.mark.heavy
def test_a_failing_step_stops_only_its_dependents(data, tmp_path):
    # the old model's training fails at start-up (unknown schedule): everything that reads the old
    # model is not run; new* (independent of it) is trained and embedded
    out = tmp_path / "out"
    result = run(command(data, out, "--set-old", "lr_schedule=bogus"))
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "failed: train_old (exit 1)" in result.stderr, result.stderr[-3000:]
    tail = result.stderr.split("failed: train_old")[1].splitlines()[1:]
    assert 1 <= len([line for line in tail if line.startswith("    ")]) <= 6   # the error line + the last 5
    assert "not run (they need a failed step): features_old, train_L2, embed_old, embed_L2, report" in result.stderr, \
        result.stderr[-3000:]
    for step in ("train_independent", "embed_independent"):
        assert (out / ".steps" / f"{step}.json").is_file(), step
    assert not (out / "report").exists()


def test_the_same_plan_on_slurm_survives_scancel_and_gives_the_local_models_and_report(
        data, uninterrupted, tmp_path, slurm_cluster, monkeypatch):
    """--backend slurm on a real one-node Slurm (no GPUs: 2 gloo processes per training): the
    second training is scancelled once it has checkpointed, the same command submits what is
    missing, and the end equals the local backend's run: model checksums and report."""
    from tools.experiment import slurm
    reference, _, _ = uninterrupted
    out = tmp_path / "out"
    argv = command(data, out, "--backend", "slurm", "--gpus-per-node", "0")
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env()["SLURM_CONF"])
    env = dict(subprocess_env(), SLURM_CONF=os.environ["SLURM_CONF"])

    def submit():
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=REPO_ROOT)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    def wait_for(condition, seconds, what):
        deadline = time.time() + seconds
        while not condition():
            assert time.time() < deadline, f"timed out waiting for {what}:\n{slurm_cluster.queue()}"
            time.sleep(0.2)

    def job_state(job_id):
        return next((job.state for jobs in slurm.queued_jobs(out).values() for job in jobs if job.job_id == job_id), "")

    assert "job(s) submitted" in submit()
    wait_for((out / "work_dirs" / MODELS[1] / "checkpoint.pt").exists, 400, "the second training's first checkpoint")
    cancelled = slurm.queued_jobs(out)["train_independent"][-1].job_id
    slurm_cluster.run("scancel", cancelled)
    wait_for(lambda: job_state(cancelled) not in ("RUNNING", "COMPLETING"), 60, "the cancelled training to stop")
    status = subprocess.run([sys.executable, str(RUNNER), "--status", "--backend", "slurm", "--out", str(out)],
                            capture_output=True, text=True, timeout=60, env=env, cwd=REPO_ROOT)
    assert status.returncode == 0, status.stderr
    assert re.search(r"train_independent\s+CANCELLED", status.stdout), status.stdout
    submit()                                          # the same command again: only what is missing
    wait_for(lambda: (out / ".steps" / "report.json").exists(), 500, "the report")
    slurm_cluster.wait_until_idle(timeout=60)
    assert "resumed from" in (out / "logs" / "train_independent.log").read_text()
    assert checksums(out) == checksums(reference)
    assert table(out) == table(reference)


def test_global_batch_is_kept_or_the_gpu_count_refused():
    cfg = load_config(REPO_ROOT / "configs" / "f128_r18_softmax_class30.py")
    assert global_batch_split(cfg, 8) == (128, 1)
    assert global_batch_split(cfg, 2) == (128, 4)
    assert global_batch_split(cfg, 1) == (128, 8)
    assert global_batch_split(cfg, 16) == (64, 1)
    for processes in (3, 6):
        with pytest.raises(ValueError, match="cannot keep the global batch 1024"):
            global_batch_split(cfg, processes)


def refused(capsys, argv) -> str:
    assert run_experiment.main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run_experiment: error: "), captured.err
    return lines[0]


def test_bad_input_is_refused_with_one_line_before_anything_starts(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    base = ["--ijbc", str(data), "--out", str(out), "--scenario", "OPclass", "--gpus", "none"]
    line = refused(capsys, ["--data", str(tmp_path / "nowhere"), "--setting", "softmax_to_arc_f128", *base])
    assert "training data: no train.rec" in line and "more: --dry-run lists them" in line
    assert "unknown setting 'softmax_to_arc_f64'" in refused(capsys, ["--data", str(data), "--setting",
                                                                      "softmax_to_arc_f64", *base])
    assert "GPU 7 does not exist" in refused(capsys, ["--data", str(data), "--setting", "softmax_to_arc_f128",
                                                      *base[:-2], "--gpus", "7"])
    assert "cannot keep the global batch" in refused(capsys, ["--data", str(data), "--setting", "softmax_to_arc_f128",
                                                              *base, "--gpus-per-training", "3"])
    # a read-only data set that still needs the split (root passes every access check: emulated)
    import tools.experiment.ms1mv3 as ms1mv3
    unsplit = tmp_path / "unsplit"
    unsplit.mkdir()
    for name in ("train.rec", "train.idx", "property"):
        (unsplit / name).write_bytes((data / name).read_bytes())
    real_access = os.access
    monkeypatch.setattr(ms1mv3.os, "access", lambda path, mode: Path(path) != unsplit and real_access(path, mode))
    line = refused(capsys, ["--data", str(unsplit), "--setting", "softmax_to_arc_f128", *base])
    assert f"training data: {unsplit} is not writable, and the split writes its four subsets" in line, line
    monkeypatch.undo()
    # the synthetic set's own counts against the MS1M-V3 configs' (no num_classes override)
    line = refused(capsys, ["--data", str(data), "--setting", "softmax_to_arc_f128", *base])
    assert "classes in its property file" in line
    assert not out.exists()


def test_dry_run_works_before_the_data_is_there(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_experiment.main(["--data", str(tmp_path / "ms1m"), "--ijbc", str(tmp_path / "ijb"), "--out", str(out),
                                "--scenario", "EXdata", "--setting", "arc_to_arc_f512", "--gpus", "none",
                                "--methods", "MixBCT", "weakenedL2", "--dry-run"]) == 0
    captured = capsys.readouterr()
    warnings = captured.err.strip().splitlines()
    assert all(line.startswith("warning: ") for line in warnings)
    assert any("training data" in line for line in warnings) and any("IJB-C pairs" in line for line in warnings)
    script = captured.out
    assert "configs/f512_r18_arc_data30.py" in script and "configs/f512_r50_arc_data100.py" in script
    assert "BCT_methods/L2/train.py BCT_methods/L2/configs/EXdata_ms1mv3_r18_to_r50_weakenedL2_arc_to_arc_f512.py" in script
    assert "denoise_credible.py --T 0.9 --SD f512_r18_arc_data100" in script
    assert "get_avg_feature" not in script and "get_class_meta" not in script   # no method here reads them
    assert script.count("embed_ijbc.py") == 4                                 # old, new*, two methods
    assert not out.exists()


def test_a_split_killed_in_the_data_folder_is_planned_again(data, uninterrupted, tmp_path, capsys):
    """Subsets beside the split's in-progress record are leftovers of a killed split (possibly
    partly written): the plan runs the split again (which rewrites them) and everything after it."""
    import shutil
    copy = tmp_path / "data"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns(".*lock"))
    argv = ["--data", str(copy), "--ijbc", str(copy), "--out", str(tmp_path / "out"), "--methods", "L2", *QUICK,
            "--dry-run"]
    assert run_experiment.main(argv) == 0
    assert "split_dataset_ms1mv3.py" not in capsys.readouterr().out       # split earlier: not planned
    (copy / ".split_30_70.in_progress.json").write_text("{}")
    assert run_experiment.main(argv) == 0
    script = capsys.readouterr().out
    assert f"tools/split_dataset/split_dataset_ms1mv3.py --input {copy} --ratio 0.3" in script
