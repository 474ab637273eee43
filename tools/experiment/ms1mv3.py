"""The paper's experiment on MS1M-V3 and IJB-C as a plan: one scenario, one setting of the
reference grid, every step the script and shipped config a user would run (README's command
list), with `--set` only for paths (plus the batch split that keeps the global batch, and any
`--set*` the caller adds).

    split -> old model -> old features -> prototypes / credible mask / class meta
          -> new* (independent) and one training per method
          -> IJB-C embeddings of every model (one GPU each) -> compatibility report (self/cross, 1:1/1:N)
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from configs.ms1mv3 import CREDIBLE_THRESHOLD, SCENARIO_SUBSETS, SUBSETS as MS1MV3_SUBSETS
from tools.experiment.step import Step, attach_files
from tools.split_dataset.split_dataset_ms1mv3 import in_progress_path, split_names
from utils.artifacts.manifests import SUBSETS as ARTIFACT_SUBSETS, artifact_paths, credible_path
from utils.common.config import REPO_ROOT, load_config
from utils.data.face_rec import IDX_NAME, PROPERTY_NAME, REC_NAME, is_rec_location, read_property

METHODS = ("L2", "BCT", "UniBCT", "NCCL", "AdvBCT", "MixBCT")
SELECTABLE_METHODS = METHODS + ("weakenedL2",)
METHOD_FOLDER = {"weakenedL2": "L2"}
# the artifact config keys each method reads (besides old_features / old_labels, which every
# method's start-up check is given); the step that writes each one has the key's name
METHOD_ARTIFACTS = {"BCT": ("class_prototypes",), "UniBCT": ("class_prototypes",),
                    "AdvBCT": ("class_meta",), "MixBCT": ("credible_mask",)}
SPLIT_RATIO = 0.3                # the paper's 30 / 70 subsets
OLD_SUBSET = {"OPclass": "class30", "EXclass": "class30", "OPdata": "data30", "EXdata": "data30"}
# the reference ran every training on 8 GPUs x batch_size: the global batch any GPU count keeps
REFERENCE_PROCESSES = 8
SETTING = re.compile(r"^(softmax|arc)_to_arc_f(\d+)$")
GRID_CONFIG = re.compile(r"^(OPclass|EXclass|OPdata|EXdata)_ms1mv3_r18_to_r50_(\w+?)_((?:softmax|arc)_to_arc_f\d+)$")
IJBC_SUBSET = "IJBC"


def reference_grid() -> Dict[str, Dict[str, Path]]:
    """scenario -> setting -> {method: its shipped config}, read from BCT_methods/*/configs/."""
    grid: Dict[str, Dict[str, Dict[str, Path]]] = {}
    for path in sorted((REPO_ROOT / "BCT_methods").glob("*/configs/*.py")):
        match = GRID_CONFIG.match(path.stem)
        if match:
            scenario, method, setting = match.groups()
            grid.setdefault(scenario, {}).setdefault(setting, {})[method] = path
    return grid


def relative(path: Path) -> str:
    path = Path(path)
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def override_texts(values: Dict[str, object]) -> List[str]:
    """KEY=VALUE texts as a user types them: strings (paths) as they are (the config loader takes
    text that is no Python literal as a string), other values as Python literals."""
    return [f"{key}={value}" if isinstance(value, str) else f"{key}={value!r}" for key, value in values.items()]


def set_flags(values: Dict[str, object], extra: Sequence[str] = ()) -> List[str]:
    """`--set KEY=VALUE ...` of `values`, then the caller's own KEY=VALUE texts."""
    texts = override_texts(values) + list(extra)
    return ["--set", *texts] if texts else []


def subset_location(data: Path, subset: str) -> Path:
    """The rec of an MS1M-V3 subset inside --data: the full folder, or the split tool's folder
    train_part_*, which is also the reference split tool's prefix (train_part_*.rec / .idx)."""
    relative_rec, _ = ARTIFACT_SUBSETS[subset]
    return data if relative_rec == "." else data / relative_rec


def global_batch_split(cfg, processes: int) -> Tuple[int, int]:
    """(per-process batch, accumulation steps) that keep the reference's global batch
    (REFERENCE_PROCESSES x batch_size x accumulation of the config) on `processes` processes;
    the per-process batch never grows. ValueError when no split keeps it."""
    global_batch = REFERENCE_PROCESSES * int(cfg.batch_size) * int(cfg.gradient_accumulation_steps)
    if processes <= 0 or global_batch % processes:
        raise ValueError(f"{processes} processes per training cannot keep the global batch {global_batch} "
                         f"({REFERENCE_PROCESSES} x {cfg.batch_size} x {cfg.gradient_accumulation_steps}): "
                         f"use a divisor of {global_batch} (1, 2, 4, 8, 16...)")
    share = global_batch // processes
    batch = max(b for b in range(1, min(int(cfg.batch_size), share) + 1) if share % b == 0)
    return batch, share // batch


class Ms1mv3Plan:
    """Paths, configs and steps of one scenario / setting (built from the CLI's arguments)."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.data = Path(args.data).resolve()
        self.ijbc = Path(args.ijbc).resolve()
        grid = reference_grid()
        if args.scenario not in grid:
            raise ValueError(f"unknown scenario {args.scenario!r}: expected one of {', '.join(sorted(grid))}")
        if args.setting not in grid[args.scenario]:
            raise ValueError(f"unknown setting {args.setting!r} for {args.scenario}: expected one of "
                             f"{', '.join(sorted(grid[args.scenario]))}")
        self.method_configs = grid[args.scenario][args.setting]
        unknown = [m for m in args.methods if m not in self.method_configs]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}: expected some of "
                             f"{', '.join(sorted(self.method_configs))}")
        old_head, dimension = SETTING.match(args.setting).groups()
        self.old_subset, self.new_subset = OLD_SUBSET[args.scenario], SCENARIO_SUBSETS[args.scenario]
        self.old_config = REPO_ROOT / "configs" / f"f{dimension}_r18_{old_head}_{self.old_subset}.py"
        independent_subset = {"class100": "data100"}.get(self.new_subset, self.new_subset)   # the same full set
        self.independent_config = REPO_ROOT / "configs" / f"f{dimension}_r50_arc_{independent_subset}.py"
        for config in (self.old_config, self.independent_config):
            if not config.is_file():
                raise ValueError(f"setting {args.setting} of {args.scenario} needs {relative(config)}, "
                                 f"which is not shipped")
        self.sd_name = f"f{dimension}_r18_{old_head}_{self.new_subset}"
        self.artifact_folder = self.out / "feature_save" / args.scenario
        self.old_rec = subset_location(self.data, self.old_subset)
        self.new_rec = subset_location(self.data, self.new_subset)
        self.old_output = self.out / "work_dirs" / self.old_config.stem
        self.old_cfg = load_config(self.old_config, self._overrides("old"))

    # ---- overrides --------------------------------------------------------------------------
    def _overrides(self, role: str) -> List[str]:
        """The caller's KEY=VALUE texts for the old model (role 'old') or the new models ('new')."""
        return list(self.args.set_all) + list(self.args.set_old if role == "old" else self.args.set_new)

    def _training_flags(self, config: Path, role: str, paths: Dict[str, object]) -> Tuple[List[str], str, object]:
        """The --set flags of one training (paths, batch split, caller's), its log note and config."""
        cfg = load_config(config, override_texts(paths) + self._overrides(role))
        processes = self.args.gpus_per_training
        batch, accumulation = global_batch_split(cfg, processes)
        split = {}
        if (batch, accumulation) != (cfg.batch_size, cfg.gradient_accumulation_steps):
            split = {"batch_size": batch, "gradient_accumulation_steps": accumulation}
        note = (f"global batch {processes * batch * accumulation} kept on {processes} "
                f"{'GPUs' if self.args.gpu_count else 'processes'}: batch {batch} per process x "
                f"{accumulation} accumulation step{'s' if accumulation > 1 else ''}")
        # the caller's overrides, then the batch split derived from them
        return set_flags(paths, self._overrides(role) + override_texts(split)), note, cfg

    # ---- steps ------------------------------------------------------------------------------
    def needs_split(self) -> bool:
        """A split runs when a subset of the scenario is missing, or when a split was killed there
        (its in-progress record: the subsets beside it may be partly written)."""
        return (in_progress_path(self.data, SPLIT_RATIO).exists()
                or not all(is_rec_location(subset_location(self.data, s)) for s in (self.old_subset, self.new_subset)))

    def training(self, name: str, script: str, config: Path, role: str, paths: Dict[str, object],
                 needs: List[str]) -> Tuple[Step, object]:
        output = Path(paths["output"])
        flags, note, cfg = self._training_flags(config, role, paths)
        gpus = self.args.gpus_per_training if self.args.gpu_count else 0
        return Step(name, ["python", script, relative(config), *flags], needs, [str(output / "model.pt")],
                    "training", gpus=gpus, distributed=True, training_output=str(output), note=note,
                    processes=self.args.gpus_per_training), cfg

    def steps(self) -> List[Step]:
        args, steps = self.args, []
        one_gpu = 1 if args.gpu_count else 0
        split_needed = self.needs_split()
        if split_needed:
            outputs = [str(self.data / folder / name) for folder in split_names(SPLIT_RATIO).values()
                       for name in (REC_NAME, IDX_NAME, PROPERTY_NAME)]
            steps.append(Step("split", ["python", "tools/split_dataset/split_dataset_ms1mv3.py", "--input",
                                        str(self.data), "--ratio", str(SPLIT_RATIO)], [], outputs, "tool"))
        after_split = ["split"] if split_needed else []
        old_step, old_cfg = self.training("train_old", "train_old_softmax.py" if "softmax" in self.old_config.stem
                                          else "train_old_arc.py", self.old_config, "old",
                                          {"rec": str(self.old_rec), "output": str(self.old_output)}, after_split)
        steps.append(old_step)
        old_model = self.old_output / "model.pt"
        artifacts = artifact_paths(self.sd_name, self.artifact_folder)
        wanted = {key for method in args.methods for key in METHOD_ARTIFACTS.get(METHOD_FOLDER.get(method, method), ())}
        feature_files = {"old_features": str(artifacts["old_features"]), "old_labels": str(artifacts["old_labels"])}
        steps.append(Step("features_old", ["python", "tools/get_feature/get_feature.py", relative(self.old_config),
                                           "--SD", self.sd_name, "--data", str(self.new_rec),
                                           "--out", str(self.artifact_folder), "--model", str(old_model),
                                           "--num-workers", str(args.workers), *set_flags({}, self._overrides("old"))],
                          ["train_old", *after_split], list(feature_files.values()), "evaluation", gpus=one_gpu))
        artifact_files = {"class_prototypes": str(artifacts["class_prototypes"]), "class_meta": str(artifacts["class_meta"]),
                          "credible_mask": str(credible_path(self.sd_name, self.artifact_folder, CREDIBLE_THRESHOLD))}
        tools = {"class_prototypes": ["python", "tools/get_feature/get_avg_feature.py"],
                 "credible_mask": ["python", "tools/denoising/denoise_credible.py", "--T", CREDIBLE_THRESHOLD],
                 "class_meta": ["python", "tools/get_feature/get_class_meta.py"]}
        for key in ("class_prototypes", "credible_mask", "class_meta"):
            if key in wanted:
                steps.append(Step(key, [*tools[key], "--SD", self.sd_name, "--data", str(self.new_rec),
                                        "--out", str(self.artifact_folder)],
                                  ["features_old"], [artifact_files[key]], "tool"))

        models = {"old": (old_model, old_cfg, "train_old")}
        independent_output = self.out / "work_dirs" / self.independent_config.stem
        step, cfg = self.training("train_independent", "train_old_arc.py", self.independent_config, "new",
                                  {"rec": str(self.new_rec), "output": str(independent_output)}, after_split)
        steps.append(step)
        models["new*"] = (independent_output / "model.pt", cfg, step.name)
        for method in args.methods:
            config = self.method_configs[method]
            output = self.out / "work_dirs" / config.stem
            artifacts = METHOD_ARTIFACTS.get(METHOD_FOLDER.get(method, method), ())
            keys = ("old_features", "old_labels", *artifacts)
            paths = {"rec": str(self.new_rec), "output": str(output),
                     **{key: {**feature_files, **artifact_files}[key] for key in keys}}
            needs = ["features_old", *artifacts]
            script = f"BCT_methods/{METHOD_FOLDER.get(method, method)}/train.py"
            step, cfg = self.training(f"train_{method}", script, config, "new", paths, needs)
            steps.append(step)
            models[method] = (output / "model.pt", cfg, step.name)

        cache, report = self.out / "eval_cache", self.out / "report"
        embed_flags = ["-d", str(self.ijbc), "-s", IJBC_SUBSET, "--cache-dir", str(cache), "--workers", str(args.workers)]
        specs = {}
        for name, (model, cfg, trained_by) in models.items():
            label = {"old": "old", "new*": "independent"}.get(name, name)
            specs[name] = f"{model}:{cfg.network}"
            steps.append(Step(f"embed_{label}", ["python", "tools/demo/embed_ijbc.py", specs[name], *embed_flags,
                                                 "--record", str(self.out / "embeddings" / f"{label}.json")],
                              [trained_by], [str(self.out / "embeddings" / f"{label}.json")], "evaluation",
                              gpus=one_gpu))
        report_argv = ["python", "tools/ijbc_eval/compat_report.py", "--old", specs["old"],
                       "--independent", specs["new*"]]
        for method in args.methods:
            report_argv += ["--new", f"{method}={specs[method]}"]
        steps.append(Step("report", [*report_argv, *embed_flags, "-o", str(report)],
                          [s.name for s in steps if s.name.startswith("embed_")],
                          [str(report / "compat_report.json"), str(report / "compat_report.md")], "tool"))
        return attach_files(steps, self.out)

    # ---- inputs -----------------------------------------------------------------------------
    def missing_inputs(self) -> List[str]:
        """One line per input the plan reads that is not there (data, .bin sets, IJB-C files)."""
        missing = []
        if self.needs_split():
            if not is_rec_location(self.data):
                missing.append(f"training data: no train.rec / train.idx in {self.data}")
            elif not os.access(self.data, os.W_OK | os.X_OK):
                # a shared, read-only copy of the data set: the split could not write beside it
                missing.append(f"training data: {self.data} is not writable, and the split writes its four "
                               f"subsets (train_part_*) there: split once into a folder you can write "
                               f"(tools/split_dataset/split_dataset_ms1mv3.py --input {self.data} --out DIR), "
                               f"put the .bin sets beside them, and pass --data DIR")
        else:
            for subset in (self.old_subset, self.new_subset):
                if not is_rec_location(subset_location(self.data, subset)):
                    missing.append(f"training data: no {subset} rec at {subset_location(self.data, subset)}")
        for name in self.old_cfg.val_targets or []:
            if not (self.data / f"{name}.bin").is_file():
                missing.append(f"verification set: {self.data / f'{name}.bin'} not found")
        from tools.ijbc_eval.protocol import subset_paths   # light, but only the input check needs it
        for key, path in subset_paths(self.ijbc, IJBC_SUBSET).items():
            if key == "root":
                continue
            if not (path.is_dir() if key == "images" else path.is_file()):
                missing.append(f"IJB-C {key}: {path} not found")
        return missing

    def class_count_mismatches(self, steps: List[Step]) -> List[str]:
        """Trainings whose config's num_classes differs from the class count in the data's property file."""
        problems, counted = [], False
        for step in steps:
            if step.kind != "training":
                continue
            cfg = load_config(REPO_ROOT / step.argv[2], parse_set_flags(step.argv[3:]))
            rec = Path(cfg.rec)
            counted = counted or cfg.num_classes is not None
            if cfg.num_classes is None or not (rec / "property").is_file():
                continue   # counts read from the data, or a subset not split yet / a reference prefix
            found = read_property(rec)[0]
            if found != cfg.num_classes:
                problems.append(f"{rec}: {found} classes in its property file, but {relative(REPO_ROOT / step.argv[2])} "
                                f"trains on {cfg.num_classes} (is --data insightface's ms1m-retinaface-t1?)")
        full_count = MS1MV3_SUBSETS["data100"][1]
        if counted and self.needs_split() and (self.data / "property").is_file():
            # not split yet: the full set must be the one the configs' subset counts come from
            found = read_property(self.data)[0]
            if found != full_count:
                problems.append(f"{self.data}: {found} classes in its property file, but the shipped configs' "
                                f"subsets come from MS1M-V3's {full_count} (is --data insightface's ms1m-retinaface-t1?)")
        return problems


def parse_set_flags(argv: Sequence[str]) -> List[str]:
    """The KEY=VALUE texts after each --set in a training's argv."""
    texts, taking = [], False
    for token in argv:
        if token == "--set":
            taking = True
        elif token.startswith("--"):
            taking = False
        elif taking:
            texts.append(token)
    return texts


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)
