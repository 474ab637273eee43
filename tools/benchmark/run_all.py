"""Run every benchmark script and print one summary table (and write it as JSON).

Each benchmark prints its figures and, as its last JSON line, a dict of results. This runner
executes them one after another, each with its own time limit, inside one overall budget
(default 570 s), so one command on a GPU machine (or this CPU machine) reports every figure
within a 10-minute window. The GPU profile measures the real recipe: r50, fp16, batch 128,
the 93,431 MS1M-V3 classes at 512-d; the CPU profile a tiny network.

    python tools/benchmark/run_all.py                  # profile and device chosen from what is found
    python tools/benchmark/run_all.py --only data train_step
    python tools/benchmark/run_all.py --json bench_results.json
    python tools/benchmark/run_all.py --profile gpu --device cpu --smoke   # every GPU code path, tiny sizes, on the CPU
    python tools/benchmark/run_all.py --profile scale --scale-work /data/scale   # the CPU side at MS1M-V3 size

--profile scale runs tools/benchmark/scale_rehearsal.py (every CPU-side stage at MS1M-V3 and
IJB-C's real sizes; it builds ~40 GB of data under --scale-work once and takes tens of
minutes, so no time budget applies); with --smoke it runs at --fraction 0.01.

--smoke keeps a profile's flags (precision, device handling, which parts run) but shrinks every
size, so the tests can run the GPU profile's code paths on a CPU in seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from utils.common.cli import StrictArgumentParser  # noqa: E402
SCALE_SMOKE_FRACTION = 0.01    # the CI size of the scale rehearsal (issue 16; 18 s at load 1 on 2 cores, 2026-12-06)
BUDGET_SECONDS = 570      # the whole run, inside a 10-minute device window (start-up aside)

# name -> script, arguments per profile, time limit per profile (s), smoke-size overrides.
# Every script takes --device except model_table (CPU FLOP counts) and the synthetic generator.
BENCHMARKS = {
    "data": dict(script="bench_data.py", cpu=["--num-images", "3000"], gpu=["--num-images", "20000"],
                 limit={"cpu": 80, "gpu": 50}, smoke={"--num-images": "64", "--seconds": "0.2", "--workers": "1"}),
    "model_table": dict(script="model_table.py", cpu=[], gpu=["--throughput-steps", "0"],
                        limit={"cpu": 70, "gpu": 35}, smoke={"--networks": "tiny", "--throughput-steps": "1",
                                                              "--batch-size": "4"}),
    "synthetic_faces": dict(script="../synthetic/generate.py", cpu=["--benchmark", "2000"],
                            gpu=["--benchmark", "2000"], limit={"cpu": 40, "gpu": 30}, smoke={"--benchmark": "20"}),
    "train_step": dict(script="bench_train_step.py", device=True,
                       cpu=["--network", "tiny", "--batch-size", "64", "--num-classes", "1000"],
                       gpu=["--network", "r50", "--batch-size", "128", "--num-classes", "93431",
                            "--embedding-size", "512", "--precision", "fp16"],
                       limit={"cpu": 70, "gpu": 80},
                       smoke={"--network": "tiny", "--batch-size": "4", "--num-classes": "50", "--warmup": "1",
                              "--steps": "1"}),
    "engine": dict(script="bench_engine.py", device=True,
                   cpu=["--network", "tiny", "--batch-size", "64", "--steps", "12"],
                   gpu=["--network", "r50", "--batch-size", "128", "--num-classes", "93431", "--embedding-size",
                        "512", "--precision", "fp16", "--steps", "40", "--workers", "8", "--channels-last"],
                   limit={"cpu": 50, "gpu": 60},
                   smoke={"--network": "tiny", "--batch-size": "8", "--num-classes": "50", "--steps": "3",
                          "--workers": "1"}),
    "methods": dict(script="bench_methods.py", device=True,
                    cpu=["--network", "tiny", "--batch-size", "64"],
                    gpu=["--network", "r50", "--batch-size", "128", "--num-classes", "93431", "--embedding-size",
                         "512", "--precision", "fp16", "--images-per-class", "2", "--refine-scale", "0.5"],
                    limit={"cpu": 110, "gpu": 140},
                    smoke={"--network": "tiny", "--batch-size": "8", "--num-classes": "40", "--steps": "1",
                           "--rounds": "1", "--warmup": "1", "--refine-scale": "0.001"}),
    "feature_tools": dict(script="bench_feature_tools.py", cpu=["--scale", "0.25"], gpu=["--scale", "0.5"],
                          limit={"cpu": 80, "gpu": 80}, smoke={"--scale": "0.0005"}),
    "ijbc_protocol": dict(script="bench_ijbc_protocol.py", device=True, cpu=[], gpu=[],
                          limit={"cpu": 60, "gpu": 85}, smoke={"--scale": "0.001", "--embed-images": "8",
                                                                        "--embed-networks": "tiny"}),
}


def with_overrides(arguments: Sequence[str], overrides: Dict[str, str]) -> List[str]:
    """`arguments` with the value after each flag in `overrides` replaced (or the flag appended)."""
    result = list(arguments)
    for flag, value in overrides.items():
        if flag in result:
            result[result.index(flag) + 1] = value
        else:
            result += [flag, value]
    return result


def benchmark_command(name: str, profile: str, device: str, smoke: bool) -> List[str]:
    spec = BENCHMARKS[name]
    arguments = with_overrides(spec[profile], spec["smoke"]) if smoke else list(spec[profile])
    if spec.get("device"):
        arguments += ["--device", device]
    return [sys.executable, str(REPO_ROOT / "tools" / "benchmark" / spec["script"]), *arguments]


def last_json_line(text: str):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def run_scale_rehearsal(work: Path, smoke: bool) -> int:
    """The scale rehearsal in this process's terminal (its table and JSON under `work`)."""
    command = [sys.executable, str(REPO_ROOT / "tools" / "benchmark" / "scale_rehearsal.py"), "--work", str(work)]
    if smoke:
        command += ["--fraction", str(SCALE_SMOKE_FRACTION), "--train-steps", "5", "--decode-crops", "200"]
    print(f"== scale rehearsal: {' '.join(command[1:])}", flush=True)
    return subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode


def main(argv=None) -> int:
    parser = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--profile", choices=["auto", "cpu", "gpu", "scale"], default="auto",
                        help="which argument set and time limits (auto: gpu when CUDA is available); "
                             "scale: the scale rehearsal instead of the benchmarks")
    parser.add_argument("--scale-work", type=Path, default=Path(tempfile.gettempdir()) / "mixbct_scale_rehearsal",
                        help="--profile scale: data and results folder (outside the repository)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="device for the benchmarks that take one (auto: cuda for the gpu profile)")
    parser.add_argument("--smoke", action="store_true", help="the profile's code paths at tiny sizes (tests)")
    parser.add_argument("--json", type=Path, default=Path("bench_results.json"), help="where to write all results")
    parser.add_argument("--budget", type=float, default=BUDGET_SECONDS, help="seconds for the whole run")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every time limit")
    args = parser.parse_args(argv)
    if args.profile == "scale":
        return run_scale_rehearsal(args.scale_work, args.smoke)

    profile = args.profile
    if profile == "auto":
        import torch
        profile = "gpu" if torch.cuda.is_available() else "cpu"
    device = args.device if args.device != "auto" else ("cuda" if profile == "gpu" else "cpu")
    names = args.only or list(BENCHMARKS)
    planned = sum(BENCHMARKS[name]["limit"][profile] for name in names) * args.timeout_scale
    print(f"profile {profile}, device {device}{' (smoke sizes)' if args.smoke else ''}: {len(names)} benchmarks, "
          f"limits add up to {planned:.0f} s, budget {args.budget:.0f} s", flush=True)
    deadline = time.time() + args.budget
    results, rows = {}, []
    for name in names:
        command = benchmark_command(name, profile, device, args.smoke)
        limit = min(BENCHMARKS[name]["limit"][profile] * args.timeout_scale, deadline - time.time())
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        start = time.time()
        if limit <= 1:
            output, status = "", "skipped: budget spent"
        else:
            try:
                done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=limit,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"})
                output, status = done.stdout + done.stderr, ("ok" if done.returncode == 0 else f"exit {done.returncode}")
            except subprocess.TimeoutExpired as expired:
                output = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
                status = f"timeout {limit:.0f}s"
        seconds = time.time() - start
        print(output.rstrip(), flush=True)
        figures = last_json_line(output)
        results[name] = {"status": status, "seconds": round(seconds, 1), "command": command[1:], "results": figures}
        rows.append((name, status, seconds, figures))

    print("\n| benchmark | status | wall s | figures |\n|---|---|---|---|")
    for name, status, seconds, figures in rows:
        shown = ", ".join(f"{k}={v}" for k, v in (figures or {}).items()
                          if isinstance(v, (int, float, str)))[:300]
        print(f"| {name} | {status} | {seconds:.1f} | {shown} |")
    tmp = args.json.with_name(f".{args.json.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"profile": profile, "device": device, "smoke": args.smoke,
                               "benchmarks": results}, indent=1) + "\n")
    os.replace(tmp, args.json)
    print(f"results written to {args.json}")
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
