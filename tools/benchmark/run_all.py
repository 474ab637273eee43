"""Run every benchmark script and print one summary table (and write it as JSON).

Each benchmark prints its figures and, as its last JSON line, a dict of results. This runner
executes them one after another with a time limit each, so one command on a GPU machine (or
this CPU machine) reports all speed figures at once within a 10-minute window.

    python tools/benchmark/run_all.py                  # sizes chosen for the device found
    python tools/benchmark/run_all.py --only data train_step
    python tools/benchmark/run_all.py --json bench_results.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# name -> (script, CPU arguments, GPU arguments, time limit in seconds)
BENCHMARKS = {
    "data": ("bench_data.py", ["--num-images", "3000"], ["--num-images", "20000"], 120),
    "model_table": ("model_table.py", [], [], 120),
    "synthetic_faces": ("../synthetic/generate.py", ["--benchmark", "2000"], ["--benchmark", "2000"], 90),
    "train_step": ("bench_train_step.py", ["--network", "tiny", "--batch-size", "64", "--num-classes", "1000"],
                   ["--network", "r50", "--batch-size", "128", "--num-classes", "93431", "--precision", "fp16"], 180),
    "methods": ("bench_methods.py", ["--network", "tiny", "--batch-size", "64"],
                ["--network", "r50", "--batch-size", "128", "--precision", "fp16"], 240),
    "feature_tools": ("bench_feature_tools.py", ["--scale", "0.25"], [], 240),
    "ijbc_protocol": ("bench_ijbc_protocol.py", [], [], 240),
}


def last_json_line(text: str):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                        help="which argument set to use (auto: gpu when CUDA is available)")
    parser.add_argument("--json", type=Path, default=Path("bench_results.json"), help="where to write all results")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every time limit")
    args = parser.parse_args(argv)

    device = args.device
    if device == "auto":
        import torch
        device = "gpu" if torch.cuda.is_available() else "cpu"
    results, rows = {}, []
    for name in args.only or list(BENCHMARKS):
        script, cpu_args, gpu_args, limit = BENCHMARKS[name]
        command = [sys.executable, str(REPO_ROOT / "tools" / "benchmark" / script),
                   *(gpu_args if device == "gpu" else cpu_args)]
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        start = time.time()
        try:
            done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=limit * args.timeout_scale, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            output, status = done.stdout + done.stderr, ("ok" if done.returncode == 0 else f"exit {done.returncode}")
        except subprocess.TimeoutExpired as expired:
            output = (expired.stdout or b"").decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
            status = f"timeout {limit * args.timeout_scale:.0f}s"
        seconds = time.time() - start
        print(output.rstrip(), flush=True)
        figures = last_json_line(output)
        results[name] = {"status": status, "seconds": round(seconds, 1), "results": figures}
        rows.append((name, status, seconds, figures))

    print("\n| benchmark | status | wall s | figures |\n|---|---|---|---|")
    for name, status, seconds, figures in rows:
        shown = ", ".join(f"{k}={v}" for k, v in (figures or {}).items()
                          if isinstance(v, (int, float, str)))[:300]
        print(f"| {name} | {status} | {seconds:.1f} | {shown} |")
    tmp = args.json.with_suffix(args.json.suffix + ".tmp")
    tmp.write_text(json.dumps({"device": device, "benchmarks": results}, indent=1) + "\n")
    os.replace(tmp, args.json)
    print(f"results written to {args.json}")
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
