"""The Slurm backend (tools/experiment/slurm.py) against a real single-node Slurm cluster
(tests/cluster.py): plans of small real steps submitted with sbatch, re-runs that submit only
what is missing, a failing step and its dependents, scancel and resume of a distributed training,
refused requests; and the job scripts themselves (no cluster needed)."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from tests.slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)
from tests.training_fixtures import REPO_ROOT, run, tiny_training_keys, write_config, write_tiny_rec
from tools.experiment import slurm
from tools.experiment.plan import Step, launcher_argv

CPU_CLUSTER = slurm.SlurmOptions(gpus_per_node=0)


@pytest.fixture
def cluster(slurm_cluster):
    """The session's cluster, its queue emptied after each test (a failed test leaves no job behind)."""
    yield slurm_cluster
    subprocess.run(["scancel", "--full", "--me"], env=slurm_cluster.env(), capture_output=True)
    slurm_cluster.wait_until_idle(timeout=30)


def shell_step(name, out, script, needs=(), outputs=()):
    """A step running `bash -c script` in `out` (outputs: names inside `out`)."""
    return Step(name, ["bash", "-c", f"cd {out} && {script}"], list(needs), [str(out / o) for o in outputs], "tool")


def wait_for(condition, timeout=60, what="the condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def states(out):
    return {row.name: row for row in slurm.status(out)}


def record(out):
    return json.loads((out / "slurm" / "submitted.json").read_text())["steps"]


def job_ids_of(out):
    return {name: [entry["job_id"] for entry in entries] for name, entries in record(out).items()}


# ---- the cluster itself --------------------------------------------------------------------
def test_cluster_is_idle_and_runs_sbatch_and_srun_within_seconds(cluster, tmp_path):
    assert cluster.run("sinfo", "--noheader", "--format=%T %N").stdout.split() == ["idle", cluster.node]
    start = time.time()
    assert cluster.run("srun", "--nodes=1", "hostname").stdout.strip() == socket.gethostname()
    output = tmp_path / "wrap.out"
    job = cluster.run("sbatch", "--parsable", f"--output={output}", "--wrap", "echo wrapped").stdout.strip()
    wait_for(lambda: output.exists() and output.read_text() == "wrapped\n", 10, f"job {job}")
    assert time.time() - start < 3


# ---- plans of shell steps ------------------------------------------------------------------
def test_plan_runs_in_dependency_order_and_a_rerun_submits_nothing(cluster, tmp_path):
    out = tmp_path / "out"
    plan = [shell_step("first", out, "echo 1 > first.txt", outputs=["first.txt"]),
            shell_step("second", out, "cat first.txt > second.txt && echo 2 >> second.txt",
                       needs=["first"], outputs=["second.txt"]),
            shell_step("third", out, "cat second.txt > third.txt && echo 3 >> third.txt",
                       needs=["second"], outputs=["third.txt"])]
    submitted = slurm.submit(plan, out, CPU_CLUSTER)
    assert list(submitted) == ["first", "second", "third"]
    assert record(out)["third"][0]["dependency"] == f"afterok:{submitted['second']}"
    cluster.wait_until_idle()
    assert (out / "third.txt").read_text() == "1\n2\n3\n"
    assert {row.state for row in slurm.status(out)} == {"COMPLETED"}
    assert states(out)["first"].nodes == cluster.node
    # each step's script holds its exact command and runs by hand with sbatch
    script = (out / "slurm" / "second.sbatch").read_text()
    assert f"bash -c 'cd {out} && cat first.txt > second.txt && echo 2 >> second.txt'" in script
    assert f"job {submitted['first']}: step first on {cluster.node}" in (out / "logs" / "first.log").read_text()
    before = record(out)
    assert slurm.submit(plan, out, CPU_CLUSTER) == {}
    assert record(out) == before
    (out / "third.txt").unlink()   # a deleted output: only that step runs again
    again = slurm.submit(plan, out, CPU_CLUSTER)
    assert list(again) == ["third"] and record(out)["third"][1]["dependency"] is None
    cluster.wait_until_idle()
    assert (out / "third.txt").read_text() == "1\n2\n3\n"
    (out / "first.txt").write_text("by hand\n")
    cluster.run("sbatch", "--wait", str(out / "slurm" / "second.sbatch"), timeout=30)
    assert (out / "second.txt").read_text() == "by hand\n2\n"


def test_queued_or_running_jobs_are_not_submitted_twice_and_a_cancelled_one_is(cluster, tmp_path):
    out = tmp_path / "out"
    plan = [shell_step("sleeper", out, "[ -f go ] || sleep 60; touch slept", outputs=["slept"]),
            shell_step("after", out, "touch after", needs=["sleeper"], outputs=["after"])]
    first = slurm.submit(plan, out, CPU_CLUSTER)
    wait_for(lambda: states(out)["sleeper"].state == "RUNNING", 20, "the sleeper to run")
    assert slurm.submit(plan, out, CPU_CLUSTER) == first   # found by job name, nothing new
    assert job_ids_of(out) == {"sleeper": [first["sleeper"]], "after": [first["after"]]}
    # the record lost (a login shell died before writing it): still found by name
    (out / "slurm" / "submitted.json").unlink()
    assert slurm.submit(plan, out, CPU_CLUSTER) == first
    assert job_ids_of(out) == {"sleeper": [first["sleeper"]], "after": [first["after"]]}   # recorded again
    rows = states(out)
    assert (rows["sleeper"].state, rows["sleeper"].job_id, rows["sleeper"].nodes) == (
        "RUNNING", first["sleeper"], cluster.node)
    assert (rows["after"].state, rows["after"].note) == ("PENDING", "Dependency")
    cluster.run("scancel", first["sleeper"])
    wait_for(lambda: states(out)["sleeper"].state == "CANCELLED", 20, "the cancellation")
    assert states(out)["after"].note == slurm.NEVER_SATISFIED
    (out / "go").touch()
    again = slurm.submit(plan, out, CPU_CLUSTER)
    assert set(again) == {"sleeper", "after"} and not set(again.values()) & set(first.values())
    cluster.wait_until_idle()
    assert (out / "after").exists() and {row.state for row in slurm.status(out)} == {"COMPLETED"}
    assert "cancelled" in record(out)["after"][0]   # the stale dependent was cancelled, and recorded so


def test_cancel_all_cancels_every_job_of_the_out_folder_and_no_other(cluster, tmp_path):
    out, other = tmp_path / "out", tmp_path / "other"
    plan = [shell_step("sleeper", out, "sleep 60", outputs=["slept"]),
            shell_step("after", out, "touch after", needs=["sleeper"], outputs=["after"])]
    submitted = slurm.submit(plan, out, CPU_CLUSTER)
    kept = slurm.submit([shell_step("sleeper", other, "sleep 60", outputs=["slept"])], other, CPU_CLUSTER)
    assert sorted(slurm.cancel_all(out), key=int) == sorted(submitted.values(), key=int)
    wait_for(lambda: {row.state for row in slurm.status(out)} == {"CANCELLED"}, 20, "the cancellations")
    assert states(other)["sleeper"].state in ("PENDING", "RUNNING")
    assert slurm.cancel_all(other) == [kept["sleeper"]]
    cluster.wait_until_idle()


def test_a_failing_step_leaves_its_dependents_pending_and_a_fixed_rerun_submits_them_once(cluster, tmp_path):
    out = tmp_path / "out"
    plan = [shell_step("flaky", out, "test -f fixed && touch flaky", outputs=["flaky"]),
            shell_step("other", out, "touch other", outputs=["other"]),
            shell_step("after", out, "touch after", needs=["flaky", "other"], outputs=["after"]),
            shell_step("last", out, "touch last", needs=["after"], outputs=["last"])]
    first = slurm.submit(plan, out, CPU_CLUSTER)
    wait_for(lambda: states(out)["after"].note == slurm.NEVER_SATISFIED and states(out)["other"].state == "COMPLETED",
             30, "DependencyNeverSatisfied")
    rows = states(out)
    assert {name: row.state for name, row in rows.items()} == {
        "flaky": "FAILED", "other": "COMPLETED", "after": "PENDING", "last": "PENDING"}
    assert rows["flaky"].note == f"NonZeroExitCode; log {out}/logs/flaky.log"
    table = slurm.format_status(rows.values())
    assert "flaky  FAILED" in table and slurm.NEVER_SATISFIED in table
    (out / "fixed").touch()
    messages = []
    again = slurm.submit(plan, out, CPU_CLUSTER, say=messages.append)
    assert set(again) == {"flaky", "after", "last"}
    assert sum("cancelled job" in message for message in messages) == 2   # the stale after and last
    cluster.wait_until_idle()
    assert {row.state for row in slurm.status(out)} == {"COMPLETED"}
    assert job_ids_of(out) == {"flaky": [first["flaky"], again["flaky"]], "other": [first["other"]],
                               "after": [first["after"], again["after"]], "last": [first["last"], again["last"]]}
    assert record(out)["after"][1]["dependency"] == f"afterok:{again['flaky']}"   # other is done: no wait on it


def test_dry_run_prints_a_script_that_submits_the_plan(cluster, tmp_path):
    out = tmp_path / "out"
    plan = [shell_step("one", out, "echo one > one.txt", outputs=["one.txt"]),
            shell_step("two", out, "cat one.txt > two.txt", needs=["one"], outputs=["two.txt"])]
    lines = []
    assert slurm.submit(plan, out, CPU_CLUSTER, dry_run=True, say=lines.append) == {}
    assert not out.exists() and cluster.run("squeue", "--noheader").stdout == ""
    text = "\n".join(lines) + "\n"
    assert text.index("one.sbatch") < text.index("two.sbatch")
    assert "--dependency=afterok:${job_one}" in text
    result = subprocess.run(["bash", "-c", text], capture_output=True, text=True, env=cluster.env())
    assert result.returncode == 0, result.stderr
    cluster.wait_until_idle()
    assert (out / "two.txt").read_text() == "one\n"
    assert (out / "slurm" / "two.sbatch").read_text() == slurm.sbatch_script(plan[1], out.resolve(), CPU_CLUSTER)


# ---- refused input ---------------------------------------------------------------------------
def test_a_request_the_cluster_refuses_is_one_line_with_slurms_reason_and_nothing_is_submitted(cluster, tmp_path):
    out = tmp_path / "out"
    plan = [shell_step("a", out, "touch a", outputs=["a"])]
    with pytest.raises(slurm.SlurmError, match="Invalid partition name specified; nothing submitted"):
        slurm.submit(plan, out, slurm.SlurmOptions(gpus_per_node=0, partition="nosuch"))
    training = Step("train", ["python", "train_old_arc.py", "c.py"], [], [str(out / "model.pt")], "training",
                    distributed=True, processes=2)
    with pytest.raises(slurm.SlurmError, match="Requested node configuration is not available") as refused:
        slurm.submit(plan + [training], out, slurm.SlurmOptions(gpus_per_node=0, nodes=3))
    assert "\n" not in str(refused.value)
    assert not (out / "slurm" / "submitted.json").exists()
    assert cluster.run("squeue", "--noheader").stdout == ""


def test_a_submission_refused_midway_records_what_was_submitted_and_a_rerun_submits_the_rest(
        cluster, tmp_path, monkeypatch):
    out = tmp_path / "out"
    plan = [shell_step("a", out, "touch a", outputs=["a"]),
            shell_step("b", out, "touch b", needs=["a"], outputs=["b"]),
            shell_step("c", out, "touch c", needs=["b"], outputs=["c"])]
    # an sbatch that refuses the second real submission, as a QOS limit on submitted jobs would
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(
        "#!/bin/bash\n"
        f'if [ "$1" != --test-only ] && [ -f {fake}/once ]; then\n'
        '  echo "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy" >&2; exit 1\n'
        "fi\n"
        f'[ "$1" = --test-only ] || touch {fake}/once\n'
        f'exec {subprocess.run(["which", "sbatch"], capture_output=True, text=True).stdout.strip()} "$@"\n')
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    with pytest.raises(slurm.SlurmError) as refused:
        slurm.submit(plan, out, CPU_CLUSTER)
    assert str(refused.value).startswith("sbatch refused step b: Batch job submission failed: Job violates")
    assert "submitted before it: a" in str(refused.value)
    assert list(job_ids_of(out)) == ["a"]
    monkeypatch.undo()
    messages = []
    rest = slurm.submit(plan, out, CPU_CLUSTER, say=messages.append)
    assert messages[-1].startswith("slurm: 2 job(s) submitted, 1 already queued or running")
    assert rest["a"] == job_ids_of(out)["a"][0] and record(out)["b"][0]["dependency"] in (None, f"afterok:{rest['a']}")
    cluster.wait_until_idle()
    assert (out / "c").exists() and [len(ids) for ids in job_ids_of(out).values()] == [1, 1, 1]


def test_no_sbatch_on_path_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(slurm.SlurmError, match="^sbatch is not on PATH: .*nothing submitted$"):
        slurm.submit([shell_step("a", tmp_path / "out", "true")], tmp_path / "out", CPU_CLUSTER)
    assert not (tmp_path / "out").exists()


# ---- a distributed training: srun torchrun, scancel, resume ----------------------------------
@pytest.mark.distributed
def test_a_cancelled_training_resumes_and_ends_with_the_weights_of_an_uninterrupted_run(cluster, tmp_path):
    rec = write_tiny_rec(tmp_path / "rec")
    keys = tiny_training_keys(rec, tmp_path / "local", num_epoch=10, deterministic=True, save_every_steps=3)

    def training(name):
        output = tmp_path / name
        config = write_config(tmp_path / f"{name}.py", **dict(keys, output=str(output)))
        return Step(f"train_{name}", ["python", "train_old_arc.py", str(config)], [], [str(output / "model.pt")],
                    "training", env={"OMP_NUM_THREADS": "1"}, distributed=True, training_output=str(output),
                    processes=2)

    # the uninterrupted run: the launcher the local backend uses, on this machine
    local = training("local")
    result = run([sys.executable, "-m", "torch.distributed.run", *launcher_argv(local, 2)[1:]], timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    expected = torch.load(tmp_path / "local" / "model.pt", weights_only=True)

    out, step = tmp_path / "out", training("slurm")
    checkpoint = tmp_path / "slurm" / "checkpoint.pt"
    first = slurm.submit([step], out, CPU_CLUSTER)["train_slurm"]
    script = (out / "slurm" / "train_slurm.sbatch").read_text()
    assert "srun --nodes=1 --ntasks-per-node=1 --kill-on-bad-exit=1 torchrun --nproc_per_node=2 --nnodes=1 " \
           '--rdzv_backend=c10d "--rdzv_endpoint=${head_node}:${rdzv_port}" --rdzv_id=train_slurm train_old_arc.py' \
           in script
    wait_for(checkpoint.exists, 120, "the first checkpoint")
    cluster.run("scancel", first)
    wait_for(lambda: states(out)["train_slurm"].state == "CANCELLED", 30, "the cancellation")
    cluster.wait_until_idle()
    stopped_at = torch.load(checkpoint, weights_only=True)["step"]
    assert 0 < stopped_at < 40 and "finished:" not in (out / "logs" / "train_slurm.log").read_text(), stopped_at
    second = slurm.submit([step], out, CPU_CLUSTER)["train_slurm"]
    cluster.wait_until_idle(timeout=180)
    log = (out / "logs" / "train_slurm.log").read_text()
    assert f"resumed from {checkpoint}: epoch" in log, log[-3000:]
    assert states(out)["train_slurm"].state == "COMPLETED" and second != first
    weights = torch.load(tmp_path / "slurm" / "model.pt", weights_only=True)
    assert set(weights) == set(expected)
    different = [name for name in expected if not torch.equal(weights[name], expected[name])]
    assert not different, f"cancelled at step {stopped_at}; tensors differ: {different[:5]}"


# ---- job scripts (no cluster) ------------------------------------------------------------------
def test_a_two_node_gpu_training_script_runs_srun_torchrun_with_rendezvous_on_the_first_node(tmp_path):
    out = tmp_path / "out"
    step = Step("train_MixBCT", ["python", "BCT_methods/MixBCT/train.py", "cfg.py", "--set", "output='/w d/x'"],
                ["old_features"], ["/w d/x/model.pt"], "training", gpus=8, env={"NCCL_DEBUG": "WARN"},
                distributed=True, training_output="/w d/x", note="batch 128 x 8 GPUs x 2 nodes")
    options = slurm.SlurmOptions(partition="gpu", account="proj", time="2-00:00:00", nodes=2, gpus_per_node=4,
                                 cpus_per_gpu=6, extra_flags=["--qos=high"])
    script = slurm.sbatch_script(step, out, options)
    header = [line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH")]
    assert header == [f"--job-name={slurm.job_name(out, step)}", f"--output={out}/logs/train_MixBCT.log",
                      "--open-mode=append", f"--chdir={REPO_ROOT}", "--nodes=2", "--ntasks-per-node=1",
                      "--gpus-per-node=4", "--cpus-per-task=24", "--partition=gpu", "--account=proj",
                      "--time=2-00:00:00", "--qos=high"]
    lines = script.splitlines()
    helper = f"python tools/experiment/slurm_job.py {{}} {out}/slurm/train_MixBCT.step.json"
    assert lines[-4:] == [
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "rdzv_port=$((20000 + SLURM_JOB_ID % 20000))",
        "srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 --cpus-per-task=24 torchrun --nproc_per_node=4 "
        '--nnodes=2 --rdzv_backend=c10d "--rdzv_endpoint=${head_node}:${rdzv_port}" --rdzv_id=train_MixBCT '
        "BCT_methods/MixBCT/train.py cfg.py --set 'output='\"'\"'/w d/x'\"'\"'' $flags",
        helper.format("done") + " --seconds $((SECONDS - started)) --gpus 8"]
    assert helper.format("start") in script and "export NCCL_DEBUG=WARN" in script
    assert "echo '# batch 128 x 8 GPUs x 2 nodes'" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    # an evaluation is a one-GPU job on one node, its command as it is
    evaluation = Step("eval_MixBCT_cross", ["python", "tools/ijbc_eval/ijbc_eval.py", "-o", "r"], [], [], "evaluation",
                      gpus=1)
    script = slurm.sbatch_script(evaluation, out, options)
    assert "#SBATCH --gpus-per-node=1\n#SBATCH --cpus-per-task=6\n" in script and "#SBATCH --nodes=1\n" in script
    assert script.splitlines()[-2] == "python tools/ijbc_eval/ijbc_eval.py -o r" and "srun" not in script
    assert "flags=" not in script and script.splitlines()[-1].endswith("--gpus 1")
    assert "gpus-per-node" not in slurm.sbatch_script(evaluation, out, slurm.SlurmOptions(gpus_per_node=0))


def test_job_names_tell_out_folders_apart(tmp_path):
    step = Step("train_old", ["true"], [], [], "tool")
    names = {slurm.job_name(tmp_path / folder, step) for folder in ("a", "b", "a/../a")}
    assert len(names) == 2 and all(name.startswith("bctx-") and name.endswith("-train_old") for name in names)


def test_cluster_config_file_and_flags(tmp_path):
    import argparse
    config = tmp_path / "cluster.toml"
    config.write_text('partition = "gpu"\ngpus_per_node = 8\nextra_flags = ["--qos=normal"]\n')
    parser = argparse.ArgumentParser()
    slurm.add_slurm_arguments(parser)
    options = slurm.options_from_args(parser.parse_args(["--slurm-config", str(config), "--partition", "long"]))
    assert (options.partition, options.gpus_per_node, options.extra_flags) == ("long", 8, ["--qos=normal"])
    config.write_text('partiton = "gpu"\n')
    with pytest.raises(slurm.SlurmError, match=f"^{config}: unknown key 'partiton'"):
        slurm.load_cluster_config(config)
    config.write_text('nodes = "2"\n')
    with pytest.raises(slurm.SlurmError, match="nodes must be an integer, not '2'"):
        slurm.load_cluster_config(config)
    with pytest.raises(slurm.SlurmError, match="--gpus-per-node -1: must be at least 0"):
        slurm.options_from_args(parser.parse_args(["--gpus-per-node", "-1"]))


def test_sacct_records_are_read_where_the_cluster_keeps_accounting(tmp_path, monkeypatch):
    """The test cluster keeps no accounting, so sacct is stood in for by a script printing what
    Slurm 22.05's `sacct --noheader --parsable2 --allocations --format=JobID,JobName,State,NodeList,Elapsed`
    prints (hand-written lines: a cancelled job's state carries "by UID"); a cluster without
    accounting (sacct exits 1) gives no records, and squeue and the outputs decide."""
    prefix = slurm.job_prefix(tmp_path / "out")
    fake = tmp_path / "bin"
    fake.mkdir()
    lines = [f"4101|{prefix}train_old|COMPLETED|node[01-02]|01:02:03",
             f"4102|{prefix}features_old|CANCELLED by 1000|node03|00:00:41",
             "4103|someone_else|FAILED|node04|00:00:01",
             f"4104|{prefix}report|OUT_OF_MEMORY|node05|00:10:00"]
    (fake / "sacct").write_text("#!/bin/bash\necho \"$@\" > " + str(fake / "argv") + "\n" +
                                "".join(f"echo '{line}'\n" for line in lines))
    (fake / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    jobs = slurm.accounted_jobs(["4101", "4102", "4103", "4104"], prefix)
    assert "--jobs=4101,4102,4103,4104" in (fake / "argv").read_text()
    assert jobs == {"4101": slurm.Job("4101", "train_old", "COMPLETED", "", "node[01-02]", "01:02:03"),
                    "4102": slurm.Job("4102", "features_old", "CANCELLED", "", "node03", "00:00:41"),
                    "4104": slurm.Job("4104", "report", "OUT_OF_MEMORY", "", "node05", "00:10:00")}
    (fake / "sacct").write_text("#!/bin/bash\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n")
    assert slurm.accounted_jobs(["4101"], prefix) == {}
    # --status of jobs that have left the queue (squeue knows none of them): sacct's state, nodes
    # and elapsed time, and the outputs for the step that has them
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.pt").write_bytes(b"model")
    plan = [shell_step("train_old", out, "true", outputs=["old.pt"]),
            shell_step("features_old", out, "true", needs=["train_old"], outputs=["features.npy"]),
            shell_step("report", out, "true", needs=["features_old"], outputs=["report.json"])]
    from tools.experiment.plan import attach_files, record_done
    attached = attach_files(list(plan), out)
    record_done(attached[0], seconds=1.0)                 # train_old's output is in place and recorded
    slurm.write_record(out, {"out": str(out), "job_prefix": prefix,
                             "steps": {"train_old": [{"job_id": "4101"}], "features_old": [{"job_id": "4102"}],
                                       "report": [{"job_id": "4104"}]}})
    (fake / "sacct").write_text("#!/bin/bash\n" + "".join(f"echo '{line}'\n" for line in lines))
    (fake / "squeue").write_text("#!/bin/bash\nexit 0\n")
    (fake / "squeue").chmod(0o755)
    rows = {row.name: row for row in slurm.status(out, plan)}
    assert (rows["train_old"].state, rows["train_old"].nodes, rows["train_old"].elapsed) == (
        "COMPLETED", "node[01-02]", "01:02:03")
    assert (rows["features_old"].state, rows["features_old"].job_id, rows["features_old"].nodes) == (
        "CANCELLED", "4102", "node03")
    assert rows["features_old"].note.startswith("log ")
    assert rows["report"].state == "OUT_OF_MEMORY" and rows["report"].elapsed == "00:10:00"
