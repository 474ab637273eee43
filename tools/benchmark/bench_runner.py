"""The experiment runner's own cost (tools/experiment/local.py), on steps that do almost nothing.

    python tools/benchmark/bench_runner.py [--steps 40] [--output-mib 64] [--fan-out 8 40]

Plans of steps that are each a `python -c` writing one output file of `--output-mib` MiB:
- a chain of `--steps` (each step needs the one before; `--max-parallel` slots);
- for each `--fan-out` width W, one first step and W steps that need only it, with W slots, so
  none waits for a free slot: all W become ready together and the idle time is the runner's own
  (8 = the evaluations of a node's 8 GPUs; 40 = more than any plan makes ready at once).
Printed, per plan:
- idle time per step: from the moment its last need finished (its inputs exist) to its start;
- runner overhead per step in the chain: (wall of the plan - the steps' own wall) / steps,
  i.e. the start-up checks, recording each output's checksum, scheduling and the launch;
- the restart check: step_done over every finished step (what a re-run does before starting).
Target: <= 1 s for both per step. The last line is the results as JSON (run_all.py's convention).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.experiment.display import Display  # noqa: E402
from tools.experiment.local import STATUS_FILE, LocalBackend  # noqa: E402
from tools.experiment.plan import Step, attach_files, done_steps  # noqa: E402
from utils.common.cli import StrictArgumentParser  # noqa: E402

TARGET_SECONDS = 1.0     # issue 15: runner overhead and idle time per step
WRITE = "import sys; open(sys.argv[1], 'wb').write(bytes(int(sys.argv[2])))"


def trivial_plan(out: Path, steps: int, output_bytes: int, chain: bool) -> list:
    """`steps` steps: a chain, or a first step and steps - 1 that need only it."""
    plan = []
    for number in range(steps):
        output = out / "outputs" / f"step{number}.bin"
        needs = ([f"step{number - 1}"] if chain else ["step0"]) if number else []
        plan.append(Step(f"step{number}", ["python", "-c", WRITE, str(output), str(output_bytes)], needs,
                         [str(output)], "tool"))
    (out / "outputs").mkdir(parents=True, exist_ok=True)
    return attach_files(plan, out)


def measure(out: Path, steps: int, output_bytes: int, chain: bool, max_parallel: int) -> dict:
    plan = trivial_plan(out, steps, output_bytes, chain)
    backend = LocalBackend(plan, out, gpus=[], max_parallel=max_parallel, display=Display(False, stream=io.StringIO()))
    start = time.time()
    outcome = backend.run()
    wall = time.time() - start
    assert outcome.ok, outcome.failed
    states = {entry["name"]: entry for entry in json.loads((out / STATUS_FILE).read_text())["steps"]}
    waited = plan if chain else plan[1:]           # a fan-out's first step has no need to wait for
    idle = [states[s.name]["started"] - states[s.name]["ready"] for s in waited]
    own = sum(states[s.name]["ended"] - states[s.name]["started"] for s in plan)
    record = [states[s.name]["recorded"] - states[s.name]["ended"] for s in plan]
    check_start = time.time()
    assert len(done_steps(plan)) == steps
    return {"wall": wall, "idle_mean": statistics.mean(idle), "idle_max": max(idle),
            "record_mean": statistics.mean(record),
            "overhead_per_step": (wall - own) / steps if chain else None,
            "restart_check_per_step": (time.time() - check_start) / steps}


def main(argv=None) -> dict:
    parser = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="steps of the chain")
    parser.add_argument("--fan-out", type=int, nargs="+", default=[8, 40],
                        help="widths of the fan-out plans (steps ready at once)")
    parser.add_argument("--output-mib", type=float, default=64.0, help="size of each step's output (checksummed)")
    parser.add_argument("--max-parallel", type=int, default=2, help="slots of the chain")
    args = parser.parse_args(argv)
    output_bytes = int(args.output_mib * 2 ** 20)
    results = {"cpus": os.cpu_count(), "load_average_before": os.getloadavg()[0], "target_s": TARGET_SECONDS}
    plans = [("chain", args.steps, True, args.max_parallel)] + \
            [(f"fan-out {width}", width + 1, False, width) for width in args.fan_out]
    with tempfile.TemporaryDirectory() as folder:
        for name, steps, chain, slots in plans:
            result = measure(Path(folder) / name.replace(" ", "_"), steps, output_bytes, chain, slots)
            result["met"] = result["idle_max"] <= TARGET_SECONDS and (
                result["overhead_per_step"] is None or result["overhead_per_step"] <= TARGET_SECONDS)
            results[name] = {key: round(value, 4) if isinstance(value, float) else value
                             for key, value in result.items()}
            overhead = (f"runner overhead {result['overhead_per_step']:.3f} s/step, " if chain else "")
            print(f"{name:10s} {steps} steps, {args.output_mib:g} MiB output each: wall {result['wall']:.1f} s; "
                  f"{overhead}idle after inputs exist mean {result['idle_mean']:.3f} s, max {result['idle_max']:.3f} s; "
                  f"recording outputs {result['record_mean']:.3f} s/step; "
                  f"restart check {result['restart_check_per_step']:.3f} s/step; "
                  f"target <= {TARGET_SECONDS:g} s {'met' if result['met'] else 'MISSED'}", flush=True)
    results["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(results), flush=True)
    return results


if __name__ == "__main__":
    main()
