"""The benchmark runner: the GPU profile's code paths run end to end on the CPU (tiny sizes), its
time limits fit the 10-minute window, and it measures the real recipe's sizes on a GPU."""
import json
import sys

import pytest
import torch

from tests.training_fixtures import REPO_ROOT, run
from tools.benchmark.devices import resolve_device
from tools.benchmark.run_all import BENCHMARKS, BUDGET_SECONDS, benchmark_command, with_overrides


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_time_limits_fit_the_budget(profile):
    assert sum(spec["limit"][profile] for spec in BENCHMARKS.values()) <= BUDGET_SECONDS <= 600


def test_gpu_profile_measures_the_real_recipe():
    train_step = benchmark_command("train_step", "gpu", "cuda", smoke=False)
    methods = benchmark_command("methods", "gpu", "cuda", smoke=False)
    for command in (train_step, methods):
        arguments = dict(zip(command[2::2], command[3::2]))
        assert arguments["--network"] == "r50" and arguments["--num-classes"] == "93431"
        assert arguments["--embedding-size"] == "512" and arguments["--precision"] == "fp16"
        assert arguments["--batch-size"] == "128" and arguments["--device"] == "cuda"
    assert benchmark_command("ijbc_protocol", "gpu", "cuda", smoke=False)[-2:] == ["--device", "cuda"]


def test_overrides_replace_values_or_append_flags():
    assert with_overrides(["--a", "1", "--b", "2"], {"--b": "3", "--c": "4"}) == ["--a", "1", "--b", "3", "--c", "4"]


def test_cuda_without_a_gpu_is_an_error_not_a_silent_cpu_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cuda but no CUDA device is visible"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_gpu_profile_runs_every_benchmark_on_the_cpu(tmp_path):
    """What the first GPU session runs, with its flags (fp16, device handling, every part), at tiny
    sizes on the CPU: every benchmark must finish and report its figures."""
    output = tmp_path / "results.json"
    result = run([sys.executable, str(REPO_ROOT / "tools" / "benchmark" / "run_all.py"), "--profile", "gpu",
                  "--device", "cpu", "--smoke", "--json", str(output)], timeout=400)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads(output.read_text())
    assert report["profile"] == "gpu" and report["device"] == "cpu" and report["smoke"]
    benchmarks = report["benchmarks"]
    assert set(benchmarks) == set(BENCHMARKS)
    for name, entry in benchmarks.items():
        assert entry["status"] == "ok" and entry["results"], name
    assert benchmarks["train_step"]["results"]["precision"] == "fp16"
    assert benchmarks["train_step"]["results"]["images_per_second"] > 0
    engine = benchmarks["engine"]["results"]
    assert engine["finite"] and engine["checkpoint_written"] and engine["precision"] == "fp16"
    assert engine["grad_scale"] is not None and engine["images_per_second"] > 0
    methods = benchmarks["methods"]["results"]
    assert set(methods["ratio_to_arcface"]) == {"arcface", "L2", "BCT", "UniBCT", "NCCL", "AdvBCT", "MixBCT"}
    assert methods["precision"] == "fp16" and methods["refine_seconds"] > 0
    assert benchmarks["ijbc_protocol"]["results"]["embed_tiny_images_per_s"] > 0
    assert benchmarks["ijbc_protocol"]["results"]["embed_device"].startswith("cpu")
