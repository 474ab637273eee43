"""Run the paper's experiment on MS1M-V3 and IJB-C as one restartable job.

One scenario and one setting of the reference grid: split -> old model -> old-model artifacts ->
the independent new model (new*) and one new model per method -> IJB-C embeddings of every model
-> the compatibility table (self/cross tests, 1:1 and 1:N, old/old included). Every step is the
script and shipped config of README's command list (`--set` only for paths, and for the batch
split that keeps the global batch on another GPU count). Steps run as soon as their inputs exist:
trainings on groups of GPUs under torchrun, features and IJB-C embeddings one per free GPU,
CPU-only steps beside them; without GPUs everything runs on the CPU (gloo).

    python tools/run_experiment.py --data dataset/ms1m-retinaface-t1 --ijbc dataset \\
        --scenario OPclass --setting softmax_to_arc_f128 --out results/OPclass_f128
    python tools/run_experiment.py ... --dry-run > plan.sh    # the exact commands, before the data is there
    python tools/run_experiment.py --status --out results/OPclass_f128   # from another shell
    python tools/run_experiment.py ... --backend slurm --partition gpu --nodes 1 --gpus-per-node 8

Run the same command again after a crash or kill: finished steps are skipped (decided from their
outputs), an interrupted training resumes from its checkpoint. See docs/experiment.md. With
`--backend slurm` the same plan is submitted to Slurm, one sbatch job per step with afterok
dependencies (docs/slurm.md); re-running it submits only what is missing.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.experiment.display import Display  # noqa: E402
from tools.experiment.local import LocalBackend, failure_summary  # noqa: E402
from tools.experiment.ms1mv3 import (SELECTABLE_METHODS, METHODS, Ms1mv3Plan, default_workers,  # noqa: E402
                                     reference_grid)
from tools.experiment import slurm  # noqa: E402
from tools.experiment.plan import done_steps  # noqa: E402
from tools.experiment.status import status_lines  # noqa: E402
from utils.common.cli import StrictArgumentParser  # noqa: E402
from utils.common.config import REPO_ROOT  # noqa: E402
from utils.common.output_lock import OutputLock  # noqa: E402

PROGRAM = "run_experiment"


def visible_gpus() -> List[int]:
    """The GPU ids this machine shows (CUDA_VISIBLE_DEVICES, when set, names them)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [int(item) for item in listed.split(",") if item.strip().isdigit()]
    import torch   # only here: the rest of the runner never needs it
    return list(range(torch.cuda.device_count()))


def parse_gpus(text: str, available: List[int]) -> List[int]:
    """'all', 'none', '0-7', '0,2,5' -> GPU ids, each one that exists."""
    if text == "all":
        return list(available)
    if text == "none":
        return []
    ids = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"--gpus {text!r}: expected all, none, or ids like 0-7 or 0,2,5")
        ids += list(range(int(low), int(high) + 1)) if high else [int(low)]
    missing = [gpu for gpu in ids if gpu not in available]
    if missing:
        raise ValueError(f"--gpus {text}: GPU {missing[0]} does not exist on this machine "
                         f"(visible: {','.join(map(str, available)) or 'none'})")
    if len(set(ids)) != len(ids):
        raise ValueError(f"--gpus {text}: a GPU is named twice")
    return ids


def parse_args(argv=None) -> argparse.Namespace:
    parser = StrictArgumentParser(prog="run_experiment.py", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "dataset" / "ms1m-retinaface-t1",
                        help="insightface's ms1m-retinaface-t1 folder (train.rec/.idx/property and the .bin sets), "
                             "or that folder already split by our tool or the reference's (then no split step)")
    parser.add_argument("--ijbc", type=Path, default=REPO_ROOT / "dataset",
                        help="folder holding IJBC/loose_crop and IJBC/meta (default: dataset/)")
    parser.add_argument("--scenario", choices=("OPclass", "EXclass", "OPdata", "EXdata"), default="OPclass")
    parser.add_argument("--setting", default=None,
                        help="loss / feature size pair of the reference grid, e.g. softmax_to_arc_f128, "
                             "softmax_to_arc_f256, arc_to_arc_f512 (as in BCT_methods/*/configs/)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=SELECTABLE_METHODS,
                        help=f"compatible-training methods (default: {' '.join(METHODS)})")
    parser.add_argument("--out", type=Path, required=True, help="folder for everything the run writes")
    parser.add_argument("--gpus", default="all", help="GPU ids to use: all (default), none (CPU, gloo), 0-7, 0,2,5")
    parser.add_argument("--gpus-per-training", type=int, default=None, metavar="G",
                        help="GPUs per training (default: all given); on the CPU, gloo processes per training "
                             "(default 1). The global batch of the shipped configs (8 x 128) is kept.")
    parser.add_argument("--max-parallel", type=int, default=2,
                        help="CPU-only steps at a time (without GPUs: every step) (default 2)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="loader workers of the feature and IJB-C tools")
    for flag, who in (("--set", "every training"), ("--set-old", "the old model (and its feature tool)"),
                      ("--set-new", "new* and the methods' trainings")):
        parser.add_argument(flag, dest=flag[2:].replace("-", "_") if flag != "--set" else "set_all",
                            nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                            help=f"extra config overrides for {who} (e.g. smaller sizes for a trial run)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan as a bash script and exit (works before the data is there)")
    parser.add_argument("--status", action="store_true", help="print every step's state in --out and exit (read-only)")
    parser.add_argument("--backend", choices=("local", "slurm"), default="local",
                        help="local: this machine's GPUs / CPUs (default); slurm: one sbatch job per step (docs/slurm.md)")
    parser.add_argument("--cancel", action="store_true",
                        help="with --backend slurm: cancel every job this --out submitted, and exit")
    slurm.add_slurm_arguments(parser)
    parser.add_argument("--log-every", type=float, default=60.0, metavar="SECONDS",
                        help="outside a terminal (nohup): seconds between the running steps' progress lines")
    args = parser.parse_args(argv)
    if args.cancel and args.backend != "slurm":
        parser.error("--cancel goes with --backend slurm (a local run stops with Ctrl-C or kill)")
    if args.status or args.cancel:
        return args
    if args.setting is None:
        parser.error(f"--setting is required; for {args.scenario}: {', '.join(sorted(reference_grid()[args.scenario]))}")
    if args.max_parallel < 1 or args.workers < 0:
        parser.error("--max-parallel must be at least 1 and --workers non-negative")
    return args


def prepare_slurm(args):
    """(plan, steps, options) for the cluster: the batch split follows the job's GPUs (nodes x GPUs per node),
    or, on a cluster without GPUs, --gpus-per-training gloo processes per training."""
    options = slurm.options_from_args(args)
    if options.gpus_per_node:
        args.gpu_count = args.gpus_per_training = options.nodes * options.gpus_per_node
    else:
        args.gpu_count, args.gpus_per_training = 0, args.gpus_per_training or 1
    plan = Ms1mv3Plan(args)
    return plan, plan.steps(), options


def input_problems(plan, steps, dry_run: bool) -> list:
    """The plan's missing inputs and class-count mismatches: a warning line each on --dry-run (the
    plan can be read before the data is there), else the first one refuses the run."""
    problems = plan.missing_inputs() + plan.class_count_mismatches(steps)
    if dry_run:
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
    elif problems:
        more = f" (and {len(problems) - 1} more: --dry-run lists them)" if len(problems) > 1 else ""
        raise ValueError(f"{problems[0]}{more}")
    return problems


def run_slurm(args) -> int:
    """Submit (or dry-run) the plan to Slurm; the jobs run on without this process."""
    plan, steps, options = prepare_slurm(args)
    input_problems(plan, steps, args.dry_run)
    job_ids = slurm.submit(steps, plan.out, options, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"{PROGRAM}: {args.scenario} {args.setting}: {len(job_ids)} job(s) submitted; watch with: "
              f"python tools/run_experiment.py --status --backend slurm --out {plan.out}", flush=True)
    return 0


def prepare(args):
    """(plan, steps, GPU ids) after every start-up check; ValueError on bad input."""
    gpus = parse_gpus(args.gpus, visible_gpus() if args.gpus != "none" else [])
    if args.gpus_per_training is None:
        args.gpus_per_training = len(gpus) or 1
    if args.gpus_per_training < 1 or (gpus and args.gpus_per_training > len(gpus)):
        raise ValueError(f"--gpus-per-training {args.gpus_per_training}: between 1 and the {len(gpus)} GPU(s) given")
    args.gpu_count = len(gpus)
    plan = Ms1mv3Plan(args)
    steps = plan.steps()
    return plan, steps, gpus


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.backend == "slurm":
            if args.status:
                print(slurm.format_status(slurm.status(args.out.resolve())))
                return 0
            if args.cancel:
                slurm.cancel_all(args.out.resolve())
                return 0
            return run_slurm(args)
        if args.status:
            print("\n".join(status_lines(args.out.resolve())))
            return 0
        plan, steps, gpus = prepare(args)
        problems = input_problems(plan, steps, args.dry_run)
        backend = LocalBackend(steps, plan.out, gpus, args.max_parallel, Display(period=args.log_every))
        if args.dry_run:
            sys.stdout.write(backend.dry_run_script(done_steps(steps), problems))
            return 0
        lock = OutputLock(plan.out).acquire()   # one runner per --out
    except ValueError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr, flush=True)
        return 1
    where = f"GPUs {','.join(map(str, gpus))}" if gpus else "the CPU (gloo)"
    print(f"{PROGRAM}: {args.scenario} {args.setting}, {len(steps)} steps on {where}; logs in {plan.out / 'logs'}; "
          f"watch with: python tools/run_experiment.py --status --out {plan.out}", flush=True)
    try:
        outcome = backend.run()
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted; the same command continues where it stopped", file=sys.stderr, flush=True)
        return 130
    finally:
        lock.release()
    report = plan.out / "report" / "compat_report.md"
    if report.exists() and backend.states["report"]["state"] == "done":   # never an earlier run's table
        print(report.read_text(), flush=True)
    if not outcome.ok:
        print(failure_summary(backend, outcome), file=sys.stderr, flush=True)
        return 1
    print(f"{PROGRAM}: all {len(steps)} steps done; report in {plan.out / 'report'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
