"""The main job end to end on the embedded synthetic data set.

generate data -> split -> old model -> old-model artifacts -> independent new model and the six
compatible new models -> IJB-C self/cross tests 1:1 and 1:N -> compatibility report (with
bootstrap intervals) -> the premises of the scenario, checked and printed (tools/demo/premises.py).

Every step is a subprocess call of the same script a user runs on MS1M-V3 / IJB-C; this file
only chooses the paths and the sizes, and runs the plan with the experiment runner's local
backend (tools/experiment/local.py, as tools/run_experiment.py does on real data): finished
steps are skipped on a re-run (decided from their outputs), a training step that was killed
resumes from its last full-state checkpoint, each step's output goes to logs/<step>.log. Each
step's wall and CPU seconds are printed and written to timings.json.

    python tools/demo/run_demo.py                      # default size, Open-class scenario
    python tools/demo/run_demo.py --quick              # the size the test suite uses
    python tools/demo/run_demo.py --scenario EXdata --out demo_output/exdata
    python tools/demo/run_demo.py --seeds 0,1,2        # once per seed, then mean +- sd and a paired test

Exit status: 0 done (premises met, or --quick, which claims none); 3 done but a premise NOT MET
(the report's headline says which: its table does not show the paper's scenario); 1 a step
failed or the output folder cannot be written; 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tools.demo.premises import (check_premises, conclusion, describe, learning_rate_budget,  # noqa: E402
                                 with_headline)
from tools.demo.seeds import missing_seed_results, parse_seeds, write_seed_report  # noqa: E402
from tools.experiment.local import LocalBackend, failure_summary  # noqa: E402
from tools.experiment.plan import Step, attach_files  # noqa: E402
from tools.ijbc_eval.protocol import subset_paths  # noqa: E402
from tools.split_dataset.split_dataset_ms1mv3 import split_names  # noqa: E402
from tools.ijbc_eval.report import write_json  # noqa: E402
from utils.artifacts.manifests import artifact_paths, credible_path, write_text_atomic  # noqa: E402
from utils.common.cli import StrictArgumentParser  # noqa: E402
from utils.common.config import load_config  # noqa: E402
from utils.common.output_lock import OutputLock  # noqa: E402
from utils.data.face_rec import IDX_NAME, PROPERTY_NAME, REC_NAME, FaceRecIndex  # noqa: E402

METHODS = ("L2", "BCT", "UniBCT", "NCCL", "AdvBCT", "MixBCT")

# scenario -> (old model's subset, new model's subset); subsets are folders of the split output
SCENARIOS: Dict[str, tuple] = {
    "OPclass": ("class30", "class70"),
    "EXclass": ("class30", "class100"),
    "OPdata": ("data30", "data70"),
    "EXdata": ("data30", "data100"),
}
SUBSET_FOLDERS = {
    "class30": "train_part_30_class", "class70": "train_part_70_class",
    "data30": "train_part_30_data", "data70": "train_part_70_data",
    "class100": ".", "data100": ".",
}
OLD_CONFIG = REPO_ROOT / "configs" / "synthetic_f128_tiny_xs_softmax_class30.py"
NEW_CONFIG = REPO_ROOT / "configs" / "synthetic_f128_tiny_s_arc_class70.py"

# Sizes. "default" trains with the shipped synthetic configs as they are; "quick" (the test
# suite's size) overrides the epochs, scaling UniBCT's epoch-based schedule with them.
SIZES = {
    "default": {"generate": [], "old": {}, "new": {}, "unibct": {}},
    "quick": {
        "generate": ["--quick"],
        "old": {"num_epoch": 3, "frequent": 1}, "new": {"num_epoch": 3},   # frequent: a loss per epoch
        "unibct": {"unibct_start_epoch": 1, "unibct_refine_epochs": (1, 2), "decay_epoch": [1, 2]},
    },
}


@dataclass
class Training:
    """What the premises need of a new-model training: its script, config and overrides."""
    script: Path
    config: Path
    overrides: List[str]                  # "key=value" as the config loader takes them


def python_script(path: str, *args) -> List[str]:
    return [sys.executable, str(REPO_ROOT / path), *[str(a) for a in args]]


def overrides(**values) -> List[str]:
    """"key=value" overrides, values written as Python literals for the config loader."""
    return [f"{key}={value!r}" for key, value in values.items()]


def set_flags(settings: List[str]) -> List[str]:
    """The training scripts' `--set key=value` flags for `settings`."""
    return [text for setting in settings for text in ("--set", setting)]


def plan(args, seed: int, out: Path):
    """(the steps of one run, the new-model trainings by report name, the old model's output)."""
    size = SIZES["quick" if args.quick else "default"]
    data = out / "dataset" / "synthetic"
    old_subset, new_subset = SCENARIOS[args.scenario]
    old_rec = (data / SUBSET_FOLDERS[old_subset]).resolve()
    new_rec = (data / SUBSET_FOLDERS[new_subset]).resolve()
    artifacts = out / "feature_save" / args.scenario
    sd = f"f128_tiny_softmax_{new_subset}"   # the configs' OLD_ARTIFACTS_SD for class70
    old_output = out / "work_dirs" / f"old_f128_tiny_softmax_{old_subset}"
    embed_flags = ["-d", data, "--workers", args.workers]
    # concurrent steps run on cores/jobs threads whatever runs beside them, so their numbers do
    # not depend on the timing of the others (same seed and --jobs, same table)
    threads = str(max(1, (os.cpu_count() or 1) // args.jobs))
    side_by_side = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    def step(name, command, needs, outputs, kind="tool", training_output=None):
        return Step(name, command, list(needs), [str(path) for path in outputs], kind, env=dict(side_by_side),
                    training_output=str(training_output or ""))

    ijbc_files = [path for key, path in subset_paths(data, "IJBC").items() if key not in ("root", "images")]
    subsets = [data / folder / name for folder in split_names(0.3).values() for name in (REC_NAME, IDX_NAME, PROPERTY_NAME)]
    steps = [
        # train.rec and the .bin sets first (the trainings need both) on every core, IJB-C beside the trainings
        Step("generate", python_script("tools/synthetic/generate.py", "--out", data, "--seed", seed,
                                       "--parts", "train", "bins", *size["generate"]), [],
             [str(data / name) for name in ("train.rec", "train.idx", "property", "lfw.bin")], "tool",
             env={"OMP_NUM_THREADS": str(os.cpu_count() or 1)}),
        step("generate_ijbc", python_script("tools/synthetic/generate.py", "--out", data, "--seed", seed,
                                            "--parts", "ijbc", *size["generate"]), ["generate"], ijbc_files),
        step("split", python_script("tools/split_dataset/split_dataset_ms1mv3.py", "--input", data, "--ratio", 0.3),
             ["generate"], subsets),
        step("old_model", python_script(
            "train_old_softmax.py", OLD_CONFIG,
            *set_flags(overrides(rec=str(old_rec), output=str(old_output), seed=seed, **size["old"]))),
            ["split"], [old_output / "model.pt"], "training", old_output),
    ]
    old_network = load_config(OLD_CONFIG).network
    model_args = ["--data", new_rec, "--out", artifacts, "--model", old_output / "model.pt"]
    files = artifact_paths(sd, artifacts)
    steps += [
        step("old_features", python_script("tools/get_feature/get_feature.py", OLD_CONFIG,
                                           "--SD", sd, *model_args, "--num-workers", args.workers),
             ["old_model"], [files["old_features"], files["old_labels"]], "evaluation"),
        step("class_prototypes", python_script("tools/get_feature/get_avg_feature.py", "--SD", sd,
                                               "--data", new_rec, "--out", artifacts),
             ["old_features"], [files["class_prototypes"]]),
        step("credible_mask", python_script("tools/denoising/denoise_credible.py", "--T", 0.9, "--SD", sd,
                                            "--data", new_rec, "--out", artifacts),
             ["old_features"], [credible_path(sd, artifacts, "0.9")]),
        step("class_meta", python_script("tools/get_feature/get_class_meta.py", "--SD", sd,
                                         "--data", new_rec, "--out", artifacts),
             ["old_features"], [files["class_meta"]]),
    ]

    def embed_step(name, model, network, trained_by):
        record = out / "embeddings" / f"{name}.json"
        return step(f"embed_{name}", python_script("tools/demo/embed_ijbc.py", f"{model}:{network}", *embed_flags,
                                                   "--record", record),
                    [trained_by, "generate_ijbc"], [record], "evaluation")

    # default size: each model is embedded as soon as it exists, beside the other trainings (at
    # --quick the report embeds them: eight processes fewer for the test suite)
    embed = not args.quick
    if embed:
        steps.append(embed_step("old", old_output / "model.pt", old_network, "old_model"))
    new_training = dict(rec=str(new_rec), seed=seed, **size["new"])
    independent_output = out / "work_dirs" / f"independent_f128_tiny_arc_{new_subset}"
    trainings = {"new*": Training(REPO_ROOT / "train_old_arc.py", NEW_CONFIG,
                                  overrides(output=str(independent_output), **new_training))}
    outputs = {"new*": independent_output}
    artifact_settings = dict(
        old_features=str(files["old_features"]), old_labels=str(files["old_labels"]),
        class_prototypes=str(files["class_prototypes"]), credible_mask=str(credible_path(sd, artifacts, "0.9")),
        class_meta=str(files["class_meta"]),
    )
    for method in METHODS:
        output = out / "work_dirs" / f"{method}_f128_tiny_{new_subset}"
        extra = size["unibct"] if method == "UniBCT" else {}
        trainings[method] = Training(
            REPO_ROOT / "BCT_methods" / method / "train.py",
            REPO_ROOT / "BCT_methods" / method / "configs" / f"synthetic_OPclass_tiny_{method}_softmax_to_arc_f128.py",
            overrides(output=str(output), **new_training, **artifact_settings, **extra))
        outputs[method] = output
    new_network = load_config(NEW_CONFIG).network
    artifact_steps = ("old_features", "class_prototypes", "credible_mask", "class_meta")
    for name, training in trainings.items():
        name_of_step = "independent_new_model" if name == "new*" else f"new_model_{name}"
        steps.append(step(name_of_step, [sys.executable, str(training.script), str(training.config),
                                         *set_flags(training.overrides)],
                          ("split",) if name == "new*" else artifact_steps, [outputs[name] / "model.pt"],
                          "training", outputs[name]))
        if embed:
            steps.append(embed_step("independent" if name == "new*" else name, outputs[name] / "model.pt",
                                    new_network, name_of_step))

    report = ["--old", f"{old_output / 'model.pt'}:{old_network}",
              "--independent", f"{independent_output / 'model.pt'}:{new_network}"]
    for method in METHODS:
        report += ["--new", f"{method}={outputs[method] / 'model.pt'}:{new_network}"]
    steps.append(Step("evaluate_and_report", python_script(
        "tools/ijbc_eval/compat_report.py", *report, *embed_flags, "-o", out / "report"),
        ["generate_ijbc", *(s.name for s in steps if s.name.startswith(("embed_", "new_model_", "independent")))],
        [str(out / "report" / "compat_report.json")], "tool"))
    return attach_files(steps, out), trainings, old_output


def time_summary(times: Dict[str, dict], wall: float, load_before: float, load_after: float) -> dict:
    """Wall and CPU time of the run; busy cores = CPU seconds / wall seconds."""
    cpu = sum(timing["cpu_seconds"] for timing in times.values())
    return {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "busy_cores": round(cpu / wall, 2) if wall > 0 else None, "cores": os.cpu_count(),
            "load_average_1min": {"start": round(load_before, 2), "end": round(load_after, 2)},
            "steps": times}


def premises_of_run(args, out: Path, trainings: Dict[str, Training], old_output: Path) -> tuple:
    """Check and print the premises (tools/demo/premises.py); written to report/premises.json,
    their headline to the top of compat_report.md. Returns (premises, exit status)."""
    report_path = out / "report" / "compat_report.json"
    if not report_path.exists():
        return {}, 0
    new_rec = out / "dataset" / "synthetic" / SUBSET_FOLDERS[SCENARIOS[args.scenario][1]]
    num_images = len(FaceRecIndex(new_rec).labels)
    budgets = {name: learning_rate_budget(training.script, training.config,
                                          training.overrides, num_images)
               for name, training in trainings.items()}
    premises = check_premises(json.loads(report_path.read_text()), old_output / "training.log", budgets)
    lines = [describe(name, premise) for name, premise in premises.items()]
    write_json(out / "report" / "premises.json", premises)
    write_text_atomic(out / "report" / "premises.md", "".join(f"- {line}\n" for line in lines))
    status, headline = conclusion(premises, claims_premises=not args.quick)
    report_text = out / "report" / "compat_report.md"
    write_text_atomic(report_text, with_headline(report_text.read_text(), headline))
    print(report_text.read_text())
    print("demo: premises\n" + "\n".join(f"  {line}" for line in lines) + f"\ndemo: {headline}")
    return premises, status


def run_once(args, seed: int, out: Path) -> tuple:
    """The whole demo for one seed in `out`: steps, report, premises, timings. Returns
    (premises, exit status)."""
    steps, trainings, old_output = plan(args, seed, out)
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in steps})
        if unknown:
            raise SystemExit(f"demo: unknown step(s) {unknown}; steps are {[s.name for s in steps]}")
        # needs outside this run count as done: their outputs are already there
        steps = [replace(s, needs=[n for n in s.needs if n in args.only]) for s in steps if s.name in args.only]
    settings = {"scenario": args.scenario, "quick": args.quick, "seed": seed}
    settings_file = out / "demo_settings.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != settings:
        raise SystemExit(f"demo: {out} holds a run with other settings ({settings_file.read_text().strip()}); "
                         "use another --out")
    write_text_atomic(settings_file, json.dumps(settings) + "\n")

    load_before, start = os.getloadavg()[0], time.time()
    backend = LocalBackend(steps, out, gpus=[], max_parallel=args.jobs)
    outcome = backend.run()
    if not outcome.ok:
        print(failure_summary(backend, outcome), file=sys.stderr, flush=True)
        raise SystemExit(f"demo: {len(outcome.failed)} step(s) failed: {', '.join(outcome.failed)}")
    times = outcome.times
    summary = time_summary({name: timing for name, timing in times.items() if not timing["skipped"]},
                           time.time() - start, load_before, os.getloadavg()[0])
    if all(timing["skipped"] for timing in times.values()) and (out / "timings.json").exists():
        # nothing ran: the timings of the run that did the work stay
        summary = json.loads((out / "timings.json").read_text())
    else:
        write_json(out / "timings.json", summary)
    print(f"demo: all {len(steps)} steps finished in {summary['wall_seconds']:.1f} s "
          f"({summary['wall_seconds'] / 60:.1f} min), {summary['cpu_seconds']:.1f} CPU s: "
          f"{summary['busy_cores']} of {summary['cores']} cores busy on average (load average "
          f"{summary['load_average_1min']['start']} at the start, {summary['load_average_1min']['end']} "
          f"at the end: other processes share the cores when it is above {summary['busy_cores']}); "
          f"outputs in {out}")
    return premises_of_run(args, out, trainings, old_output)


def main(argv=None) -> int:
    parser = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "demo_output",
                        help="folder for everything the run writes (default: demo_output/)")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="OPclass",
                        help="which old/new data split to simulate (default: OPclass)")
    parser.add_argument("--quick", action="store_true", help="small sizes (used by the test suite)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of every training")
    parser.add_argument("--seeds", type=parse_seeds, default=None, metavar="S,S,...",
                        help="run the whole demo once per seed (in <out>/seed_<s>; at least 2 seeds) and "
                             "write the mean +- sd of every cell and a paired t-test per method to "
                             "<out>/seeds_report.md")
    parser.add_argument("--workers", type=int, default=2,
                        help="loader workers of the feature and IJB-C tools (the trainings read the "
                             "decoded-image cache in their own process)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="steps run side by side, each with cores/jobs threads "
                             "(default 2: on two cores, two 1-thread trainings beat one 2-thread one)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these steps (names as printed)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    try:
        writable_folder(out)
    except OSError as error:
        raise SystemExit(f"demo: cannot write to --out {out}: {error.strerror or error}") from None
    try:
        lock = OutputLock(out).acquire()   # one runner per output folder
    except ValueError as error:
        raise SystemExit(f"demo: {error}") from None
    if args.quick:
        print("demo: --quick: the test suite's size; this run claims no premises (the default size "
              "and --seeds do, and exit 3 when one is not met)", flush=True)
    if args.seeds is None:
        status = run_once(args, args.seed, out)[1]
        lock.release()
        return status
    statuses = []
    for seed in args.seeds:
        print(f"demo: seed {seed} ({args.seeds.index(seed) + 1} of {len(args.seeds)})", flush=True)
        statuses.append(run_once(args, seed, out / f"seed_{seed}")[1])
    runs = [out / f"seed_{seed}" for seed in args.seeds]
    missing = missing_seed_results(runs)
    if missing:
        lock.release()
        print(f"demo: no seeds report: {missing} is missing (--only ran part of each seed; a run "
              f"without --only finishes them)", flush=True)
        return 0 if args.only else 1
    text = write_seed_report(out, runs, args.seeds, claims_premises=not args.quick)
    lock.release()
    print(text)
    return max(statuses)


def writable_folder(folder: Path) -> None:
    """Create `folder` and check that a file can be written in it (OSError if not), before any
    step runs."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


if __name__ == "__main__":
    sys.exit(main())
