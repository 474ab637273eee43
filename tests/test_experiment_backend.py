"""The local backend on trivial steps (python -c ... writing its output): GPUs never shared, CPU
steps capped and kept off the GPUs, a failing step stops only its dependents, done-ness from the
outputs (deleted or changed -> runs again, with everything after it)."""
import io
import json
import os
from pathlib import Path

import pytest

from tools.experiment.display import Display
from tools.experiment.local import STATUS_FILE, LocalBackend, failure_summary
from tools.experiment.plan import Step, attach_files, done_steps, record_done, step_done

# writes (CUDA_VISIBLE_DEVICES, start, end) to its output after sleeping argv[2] seconds
RECORD = ("import json, os, sys, time; start = time.time(); time.sleep(float(sys.argv[2])); "
          "json.dump([os.environ['CUDA_VISIBLE_DEVICES'], start, time.time()], open(sys.argv[1], 'w'))")
FAIL = "import sys; [print(f'line {n}') for n in range(9)]; sys.exit(3)"


def step(out: Path, name: str, needs=(), kind="tool", gpus=0, seconds=0.3) -> Step:
    output = out / f"{name}.out"
    return Step(name, ["python", "-c", RECORD, str(output), str(seconds)], list(needs), [str(output)], kind, gpus=gpus)


def backend(out: Path, steps, gpus=(), max_parallel=1) -> LocalBackend:
    return LocalBackend(attach_files(steps, out), out, list(gpus), max_parallel, Display(False, stream=io.StringIO()))


def test_gpus_are_never_given_to_two_steps_and_cpu_steps_see_none(tmp_path):
    steps = [step(tmp_path, "train_a", kind="training", gpus=2), step(tmp_path, "train_b", kind="training", gpus=2),
             *[step(tmp_path, f"eval_{n}", needs=["train_a"], kind="evaluation", gpus=1) for n in range(4)],
             *[step(tmp_path, f"tool_{n}") for n in range(4)]]
    runner = backend(tmp_path, steps, gpus=[0, 1, 2], max_parallel=2)
    outcome = runner.run()
    assert outcome.ok and len(outcome.times) == len(steps)
    runs = {s.name: json.loads(Path(s.outputs[0]).read_text()) for s in steps}
    gpus = {name: set(filter(None, run[0].split(","))) for name, run in runs.items()}
    assert all(len(gpus[f"train_{x}"]) == 2 for x in "ab") and all(len(gpus[f"eval_{n}"]) == 1 for n in range(4))
    assert all(gpus[f"tool_{n}"] == set() for n in range(4))          # CUDA_VISIBLE_DEVICES="" for CPU steps
    names = list(runs)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            overlap = runs[first][1] < runs[second][2] and runs[second][1] < runs[first][2]
            assert not (overlap and gpus[first] & gpus[second]), (first, second)
    for name in names:   # at most 2 CPU steps at a time
        at = runs[name][1] + 0.01
        assert sum(1 for n in names if not gpus[n] and runs[n][1] <= at < runs[n][2]) <= 2


@pytest.fixture(params=["pidfd", "thread per child"])
def child_watching(request, monkeypatch):
    """Both ways the runner waits for its children: pidfds polled by one thread (Linux), and the
    fallback of a thread per child where os.pidfd_open is missing or refused."""
    if request.param == "thread per child":
        def refused(pid, flags=0):
            raise OSError(38, "Function not implemented")
        monkeypatch.setattr(os, "pidfd_open", refused, raising=False)
    elif not hasattr(os, "pidfd_open"):
        pytest.skip("no os.pidfd_open on this platform")
    return request.param


def test_a_failing_step_stops_only_its_dependents(tmp_path, child_watching):
    failing = Step("bad", ["python", "-c", FAIL], ["first"], [str(tmp_path / "bad.out")], "tool")
    steps = [step(tmp_path, "first", seconds=0), failing, step(tmp_path, "after_bad", needs=["bad"], seconds=0),
             step(tmp_path, "later", needs=["after_bad"], seconds=0), step(tmp_path, "other", needs=["first"], seconds=0)]
    runner = backend(tmp_path, steps)
    outcome = runner.run()
    assert outcome.failed == ["bad"] and outcome.blocked == ["after_bad", "later"]
    assert {"first", "other"} <= set(outcome.times)
    summary = failure_summary(runner, outcome).splitlines()
    assert summary[0] == f"failed: bad (exit 3); log {tmp_path / 'logs' / 'bad.log'}"
    assert summary[1:6] == [f"    line {n}" for n in range(4, 9)]
    assert summary[6] == "not run (they need a failed step): after_bad, later"
    status = {e["name"]: e["state"] for e in json.loads((tmp_path / STATUS_FILE).read_text())["steps"]}
    assert status == {"first": "done", "bad": "failed", "after_bad": "blocked", "later": "blocked", "other": "done"}


def test_done_from_outputs_deleted_or_changed_runs_again_with_what_follows(tmp_path):
    steps = attach_files([step(tmp_path, "a", seconds=0), step(tmp_path, "b", needs=["a"], seconds=0),
                          step(tmp_path, "c", seconds=0)], tmp_path)
    assert backend(tmp_path, steps).run().ok
    assert done_steps(steps) == {"a", "b", "c"}
    output = Path(steps[0].outputs[0])
    os.utime(output, ns=(1, 1))                      # touched, same content: still done
    assert step_done(steps[0])
    output.write_text(output.read_text().replace("[", "[ "))   # changed content
    assert not step_done(steps[0]) and done_steps(steps) == {"c"}   # b read a's old output
    output.unlink()
    assert done_steps(steps) == {"c"}
    stamp_only = Step("d", ["python", "-c", "pass"], [], [str(tmp_path / "never")], "tool")
    attach_files([stamp_only], tmp_path)
    try:
        record_done(stamp_only)
    except ValueError as error:
        assert "finished without writing" in str(error)
    else:
        raise AssertionError("a step without its output was recorded as done")
    changed_command = Step("c", ["python", "-c", "pass"], [], steps[2].outputs, "tool")
    attach_files([changed_command], tmp_path)
    assert not step_done(changed_command)            # another command: its output is not this step's


def test_runner_benchmark_reports_every_plan_and_its_json(capsys):
    """bench_runner at a tiny size: a line per plan with the target's verdict, then the JSON, whose
    idle times are the runner's records (ready <= started) and whose fan-out counts only the
    steps that waited (not the first, which had no need)."""
    from tools.benchmark.bench_runner import TARGET_SECONDS, main
    results = main(["--steps", "3", "--fan-out", "2", "--output-mib", "0.01"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == json.loads(json.dumps(results))
    assert lines[0].startswith("chain      3 steps") and lines[1].startswith("fan-out 2  3 steps")
    for name in ("chain", "fan-out 2"):
        plan = results[name]
        assert 0 <= plan["idle_mean"] <= plan["idle_max"] < plan["wall"]
        assert plan["met"] == (plan["idle_max"] <= TARGET_SECONDS and (plan["overhead_per_step"] is None
                                                                        or plan["overhead_per_step"] <= TARGET_SECONDS))
    assert results["chain"]["overhead_per_step"] is not None and results["fan-out 2"]["overhead_per_step"] is None
