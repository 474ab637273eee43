"""Backward-compatibility report: self- and cross-tests of several new models against one old
model on IJB-C (or IJB-B), in one table.

    python tools/ijbc_eval/compat_report.py --old OLD.pt --old-net r18 \\
        --new MixBCT=work_dirs/mixbct/model.pt:r50 L2=work_dirs/l2/model.pt:r50 \\
        --independent work_dirs/new_arcface/model.pt:r50 -d dataset -o results/compat

Rows: old/old, then new/new and new/old for each model (and for the independent model new*,
trained without any compatibility term). Metrics: TAR@FAR=1e-5 ... 1e-2 (nearest ROC point,
the reference rule), 1:N top-1 and top-5 and TPIR@FPIR=1e-2 (means over the two galleries).
An operating point the protocol cannot resolve (FAR below 1 / impostor pairs, FPIR below
1 / non-mated probes: not one false accept allowed) is marked in the table; the footnotes give
the pair and probe counts and the chance level of every metric. Per model: the empirical
criterion M(new, old) > M(old, old) and the update gain
G = (M(new, old) - M(old, old)) / (M(new*, new*) - M(old, old)). Every model is embedded once
(the embedding cache is shared with ijbc_eval.py). Writes compat_report.{md,json,png}.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from tools.ijbc_eval.bootstrap import (REPLICATES, bootstrap_tar_at_far, bootstrap_top1,  # noqa: E402
                                       identification_subjects, interval, pair_subjects, subject_counts)
from tools.ijbc_eval.embed import INPUT_NORMALISATIONS, model_embeddings  # noqa: E402
from tools.ijbc_eval.evaluation import (_query_and_reference_templates, check_compatible_sizes,  # noqa: E402
                                        run_identification, run_verification)
from tools.ijbc_eval.identification import FPIR_GRID, _mated_scores  # noqa: E402
from tools.ijbc_eval.ijbc_eval import add_embedding_arguments, embedding_options  # noqa: E402
from tools.ijbc_eval.pooling import DEFAULT_VARIANT, Variant, template_rows  # noqa: E402
from tools.ijbc_eval.protocol import load_identification_protocol, load_verification_protocol  # noqa: E402
from tools.ijbc_eval.report import markdown_table, save_figure, write_json  # noqa: E402
from utils.artifacts.manifests import write_text_atomic  # noqa: E402
from utils.common.output_lock import lock_files  # noqa: E402
from utils.common.cli import StrictArgumentParser  # noqa: E402

# metric name -> operating point; TAR@FAR=1e-4 and 1e-5 are the published IJB-C columns
TAR_AT_FAR = {"TAR@FAR=1e-5": 1e-5, "TAR@FAR=1e-4": 1e-4, "TAR@FAR=1e-3": 1e-3, "TAR@FAR=1e-2": 1e-2}
TOP_K = {"1:N top-1": 1, "1:N top-5": 5}
TPIR_AT_FPIR = {"TPIR@FPIR=1e-2": 1e-2}
METRICS = (*TAR_AT_FAR, *TOP_K, *TPIR_AT_FPIR)
INDEPENDENT = "new*"
REPORT_FILES = ("compat_report.json", "compat_report.png", "compat_report.md")   # in the -o folder
TESTS = ("old/old", "new/new", "new/old")
# the metrics given 95 % bootstrap intervals over subjects (tools/ijbc_eval/bootstrap.py)
INTERVAL_METRICS = ("1:N top-1", "TAR@FAR=1e-2")
# the cell marks of operating points the protocol cannot resolve
UNRESOLVED_TAR_MARK, UNRESOLVED_TPIR_MARK = "\u2020", "\u2021"  # dagger, double dagger


def parse_model_spec(text: str, default_network: str, named: bool):
    """'NAME=PATH[:net]' (or 'PATH[:net]' when not named) -> (name, path, network)."""
    name = None
    if named:
        if "=" not in text:
            raise ValueError(f"--new {text!r}: expected NAME=PATH[:network]")
        name, text = text.split("=", 1)
    path, network = text, default_network
    if ":" in text and not Path(text).is_file():
        path, network = text.rsplit(":", 1)
    return name or INDEPENDENT, Path(path), network


def rank_one_hits(protocol, identification, probe_model, gallery_model) -> Tuple[dict, dict]:
    """Per gallery: the rank-1 hit of each mated probe and its subject id (the table's top-1 is
    the mean of the hits, averaged over the galleries)."""
    template_ids, probe_side, gallery_side = _query_and_reference_templates(
        protocol, probe_model, gallery_model, Variant.parse(DEFAULT_VARIANT))
    probes = identification.probes
    probe_features = probe_side[torch.from_numpy(template_rows(template_ids, probes.template_ids)).long()]
    hits, subjects = {}, {}
    for name, gallery in identification.galleries.items():
        gallery_features = gallery_side[torch.from_numpy(template_rows(template_ids, gallery.template_ids)).long()]
        is_mated, _, outranking = _mated_scores(probe_features @ gallery_features.T, probes.subject_ids,
                                                gallery.subject_ids)
        hits[name] = (outranking == 0).numpy()
        subjects[name] = np.asarray(probes.subject_ids)[is_mated]
    return hits, subjects


def summary_metrics(protocol, identification, probe_model, gallery_model) -> Tuple[dict, dict, dict]:
    """(the table metrics (fractions) for probe_model against gallery_model, the pair and
    probe counts they rest on, the per-pair scores and per-probe hits the bootstrap resamples)."""
    variant = [Variant.parse(DEFAULT_VARIANT)]
    verification, scores = run_verification(protocol, probe_model, gallery_model, variant)
    result = verification[DEFAULT_VARIANT]
    by_far = dict(zip(result["far_targets"], result["tar_nearest_roc_point"]))
    ident = run_identification(protocol, identification, probe_model, gallery_model, variant)[DEFAULT_VARIANT]
    galleries = [key for key in ident if key not in ("mean_tpir", "merged")]
    metrics = {name: by_far[far] for name, far in TAR_AT_FAR.items()}
    metrics.update({name: float(np.mean([ident[g]["top_k"][k] for g in galleries])) for name, k in TOP_K.items()})
    for name, fpir in TPIR_AT_FPIR.items():
        grid_row = int(np.argmin(np.abs(np.log10(FPIR_GRID) - np.log10(fpir))))
        metrics[name] = float(ident["mean_tpir"][grid_row])
    counts = {"genuine_pairs": result["num_genuine"], "impostor_pairs": result["num_impostor"],
              "probes": len(identification.probes.template_ids),
              "galleries": {g: {"templates": len(identification.galleries[g].template_ids),
                                "mated_probes": ident[g]["num_mated"],
                                "nonmated_probes": ident[g]["num_nonmated"]} for g in galleries}}
    hits, subjects = rank_one_hits(protocol, identification, probe_model, gallery_model)
    samples = {"scores": np.asarray(scores[DEFAULT_VARIANT], dtype=np.float64), "hits": hits, "subjects": subjects}
    return metrics, counts, samples


def bootstrap_intervals(protocol, identification, rows: dict, samples: dict,
                        replicates: int = REPLICATES) -> dict:
    """95 % intervals over subjects of INTERVAL_METRICS for every row, and of each row's
    difference to old/old (paired: every row is resampled with the same subject draws)."""
    sides, pair_subject_count = pair_subjects(protocol.pair_templates, protocol.pair_labels)
    pair_counts = subject_counts(pair_subject_count, replicates, seed=0)
    probe_columns = identification_subjects(identification.probes.subject_ids)
    probe_counts = subject_counts(len(probe_columns), replicates, seed=1)
    tar_metric = "TAR@FAR=1e-2"
    values = {row: {tar_metric: bootstrap_tar_at_far(sample["scores"], protocol.pair_labels, sides, pair_counts,
                                                     TAR_AT_FAR[tar_metric]),
                    "1:N top-1": bootstrap_top1(sample["hits"], sample["subjects"], probe_counts, probe_columns)}
              for row, sample in samples.items()}
    intervals = {row: {metric: interval(values[row][metric]) for metric in INTERVAL_METRICS} for row in values}
    differences = {}
    for row in values:
        if row == "old/old":
            continue
        differences[row] = {}
        for metric in INTERVAL_METRICS:
            low, high = interval(values[row][metric] - values["old/old"][metric])
            differences[row][metric] = {"difference": rows[row][metric] - rows["old/old"][metric],
                                        "interval": (low, high),
                                        "verdict": "above" if low > 0 else "below" if high < 0 else "within noise"}
    return {"replicates": replicates, "confidence": 0.95, "subjects_1to1": pair_subject_count,
            "subjects_1toN": len(probe_columns), "intervals": intervals, "differences_to_old": differences}


def resolvable_metrics(counts: dict) -> Dict[str, bool]:
    """Per metric: whether the protocol resolves its operating point, i.e. the target allows
    at least one false accept: floor(FAR * impostor pairs) >= 1, and floor(FPIR * non-mated
    probes) >= 1 in every gallery (the floors of both threshold rules)."""
    fewest_nonmated = min(gallery["nonmated_probes"] for gallery in counts["galleries"].values())
    resolvable = {name: math.floor(far * counts["impostor_pairs"]) >= 1 for name, far in TAR_AT_FAR.items()}
    resolvable.update({name: True for name in TOP_K})
    resolvable.update({name: math.floor(fpir * fewest_nonmated) >= 1 for name, fpir in TPIR_AT_FPIR.items()})
    return resolvable


def chance_levels(counts: dict) -> Dict[str, float]:
    """Expected value of each metric for random scores, mean over the galleries: TAR@FAR = FAR;
    top-k = k / gallery size; TPIR@FPIR = FPIR / gallery size (rank 1 with probability 1 / size,
    and then the mated score is the best of `size` random scores, so it passes the non-mated
    best-score quantile with probability FPIR)."""
    sizes = np.array([gallery["templates"] for gallery in counts["galleries"].values()], dtype=np.float64)
    chance = dict(TAR_AT_FAR)
    chance.update({name: float(np.mean(np.minimum(k, sizes) / sizes)) for name, k in TOP_K.items()})
    chance.update({name: float(np.mean(fpir / sizes)) for name, fpir in TPIR_AT_FPIR.items()})
    return chance


def compatibility(rows: dict, model: str) -> dict:
    """Per metric: criterion new/old > old/old, and the update gain against new*/new*."""
    old, cross = rows["old/old"], rows[f"{model} new/old"]
    independent = rows.get(f"{INDEPENDENT} new/new")
    summary = {}
    for metric in METRICS:
        gap = None if independent is None else independent[metric] - old[metric]
        # G is only defined when updating helps: new*/new* above old/old
        summary[metric] = {"compatible": bool(cross[metric] > old[metric]),
                           "gain": None if gap is None or gap <= 0 else (cross[metric] - old[metric]) / gap}
    return summary


def unresolved_marks(resolvable: Dict[str, bool]) -> Dict[str, str]:
    """Per metric: the mark its cells carry ('' when the protocol resolves it)."""
    return {metric: "" if resolvable[metric] else
            UNRESOLVED_TAR_MARK if metric in TAR_AT_FAR else UNRESOLVED_TPIR_MARK for metric in METRICS}


def footnotes(counts: dict, resolvable: Dict[str, bool], chance: Dict[str, float]) -> List[str]:
    """Counts, unresolvable operating points and chance levels, one markdown line each."""
    galleries = counts["galleries"]
    nonmated = ", ".join(f"{name} {g['nonmated_probes']}" for name, g in galleries.items())
    lines = [f"Counts: {counts['genuine_pairs']} genuine and {counts['impostor_pairs']} impostor pairs; "
             f"{counts['probes']} probe templates; galleries "
             + ", ".join(f"{name} {g['templates']} templates ({g['mated_probes']} mated / "
                         f"{g['nonmated_probes']} non-mated probes)" for name, g in galleries.items())
             + "."]
    allowed = ", ".join(f"{name[8:]}: {math.floor(far * counts['impostor_pairs'])}"
                        for name, far in TAR_AT_FAR.items())
    lines.append(f"False accepts allowed at each TAR@FAR ({allowed}).")
    unresolved_fars = [name for name in TAR_AT_FAR if not resolvable[name]]
    if unresolved_fars:
        lines.append(f"{UNRESOLVED_TAR_MARK} not resolvable (FAR below 1 / {counts['impostor_pairs']} impostor "
                     f"pairs = {1 / counts['impostor_pairs']:.2e}: not one false accept allowed): "
                     f"{', '.join(unresolved_fars)}; the nearest ROC point there has FAR 0 or "
                     f"1 / {counts['impostor_pairs']}.")
    unresolved_fpirs = [name for name in TPIR_AT_FPIR if not resolvable[name]]
    if unresolved_fpirs:
        lines.append(f"{UNRESOLVED_TPIR_MARK} not resolvable (FPIR below 1 / non-mated probes: {nonmated}): "
                     f"{', '.join(unresolved_fpirs)}; the threshold is the best non-mated score.")
    sizes = " and ".join(str(g["templates"]) for g in galleries.values())
    lines.append("Chance levels (random scores), %: TAR@FAR = FAR; "
                 + "; ".join(f"{name[4:]} = {k} / gallery size ({sizes}) = {100 * chance[name]:.4f}"
                             for name, k in TOP_K.items())
                 + "; " + "; ".join(f"{name} = FPIR / gallery size = {100 * chance[name]:.4f}"
                                    for name in TPIR_AT_FPIR) + ".")
    return lines


def interval_tables(bootstrap: dict) -> str:
    """The bootstrap section: every row's interval, and each row's difference to old/old."""
    def span(low_high) -> str:
        return f"[{100 * low_high[0]:.1f}, {100 * low_high[1]:.1f}]"
    intervals = markdown_table(["test"] + [f"{m} %, 95 % interval" for m in INTERVAL_METRICS],
                               [[row] + [span(values[m]) for m in INTERVAL_METRICS]
                                for row, values in bootstrap["intervals"].items()])
    differences = markdown_table(
        ["test"] + [f"{m}: minus old/old, points [95 % interval], verdict" for m in INTERVAL_METRICS],
        [[row] + [f"{100 * d[m]['difference']:+.1f} {span(d[m]['interval'])} {d[m]['verdict']}"
                  for m in INTERVAL_METRICS] for row, d in bootstrap["differences_to_old"].items()])
    return (f"## 95 % bootstrap intervals over subjects\n\n{bootstrap['replicates']} replicates; each draws "
            f"the subjects with replacement ({bootstrap['subjects_1to1']} in the 1:1 protocol, "
            f"{bootstrap['subjects_1toN']} among the 1:N probes); every row is resampled with the same "
            f"draws, so the interval of a difference is paired. A difference is 'above' or 'below' when "
            f"its interval excludes 0, else 'within noise'.\n\n{intervals}\n\n{differences}\n")


def report_markdown(title: str, rows: dict, criteria: dict, counts: dict, bootstrap: dict = None) -> str:
    """The metrics table (%), the per-model verdict table, the footnotes and (when given) the
    bootstrap intervals."""
    resolvable = resolvable_metrics(counts)
    marks = unresolved_marks(resolvable)
    table = markdown_table(["test"] + [f"{m} %" for m in METRICS],
                           [[name] + [f"{100 * values[m]:.4f}{marks[m]}" for m in METRICS]
                            for name, values in rows.items()])
    verdicts = markdown_table(
        ["model"] + [f"{m}: new/old > old/old, gain G" for m in METRICS],
        [[model] + [f"{'yes' if c[m]['compatible'] else 'no'}, "
                    f"{'-' if c[m]['gain'] is None else format(c[m]['gain'], '.3f')}{marks[m]}" for m in METRICS]
         for model, c in criteria.items()])
    notes = footnotes(counts, resolvable, chance_levels(counts))
    notes.append("gain G = (new/old - old/old) / (new*/new* - old/old); '-' where new*/new* is not "
                 "above old/old (no update gain to share) or no independent model was given")
    notes = "\n".join(f"- {line}" for line in notes)
    return (f"# {title}\n\nTAR@FAR: nearest ROC point (reference rule); 1:N: mean over the two "
            f"galleries\n\n{table}\n\n{verdicts}\n\n{notes}\n"
            + ("" if bootstrap is None else f"\n{interval_tables(bootstrap)}"))


def plot_report(rows: dict, models: List[str], counts: dict, path: Path, intervals: dict = None) -> None:
    """Small multiples, one panel per metric: for each model the bars old/old, new/new and
    new/old (%), the chance level dotted; unresolvable operating points hatched and titled so.
    `intervals` (row -> metric -> (low, high), the bootstrap's) are drawn as error bars spanning
    exactly the interval (a percentile interval need not be centred on the bar)."""
    resolvable, chance = resolvable_metrics(counts), chance_levels(counts)
    columns = 4
    panel_rows = math.ceil((len(METRICS) + 1) / columns)  # one spare panel holds the legend
    figure, axes = plt.subplots(panel_rows, columns, figsize=(4.2 * columns, 3.6 * panel_rows),
                                squeeze=False)
    axes = axes.reshape(-1)
    colours = {"old/old": "grey", "new/new": "tab:orange", "new/old": "tab:blue"}
    width = 0.8 / len(TESTS)
    positions = np.arange(len(models))
    for axis, metric in zip(axes, METRICS):
        for offset, test in enumerate(TESTS):
            values = [100 * rows["old/old" if test == "old/old" else f"{model} {test}"][metric]
                      for model in models]
            centres = positions + (offset - (len(TESTS) - 1) / 2) * width
            axis.bar(centres, values, width,
                     color=colours[test], hatch=None if resolvable[metric] else "//",
                     edgecolor="white" if resolvable[metric] else "black", linewidth=0.5)
            if intervals is not None and metric in INTERVAL_METRICS:
                spans = np.array([intervals["old/old" if test == "old/old" else f"{model} {test}"][metric]
                                  for model in models]) * 100
                axis.errorbar(centres, spans.mean(axis=1), yerr=(spans[:, 1] - spans[:, 0]) / 2, fmt="none",
                              ecolor="black", elinewidth=0.8, capsize=2)
        axis.axhline(100 * chance[metric], color="black", lw=0.8, ls=":")
        axis.set_xticks(positions, models, fontsize="small", rotation=30 if len(models) > 4 else 0)
        axis.set_title(metric if resolvable[metric] else f"{metric} (not resolvable)", fontsize="small")
        axis.set_ylabel("%", fontsize="small")
    handles = [Patch(facecolor=colours[test], label=test) for test in TESTS]
    handles += [Patch(facecolor="white", edgecolor="black", hatch="//", label="not resolvable"),
                Line2D([], [], color="black", lw=0.8, ls=":", label="chance")]
    if intervals is not None:
        handles.append(Line2D([], [], color="black", lw=0.8, marker="_", label="95 % bootstrap interval"))
    galleries = ", ".join(f"{name} {g['templates']}" for name, g in counts["galleries"].items())
    axes[len(METRICS)].legend(handles=handles, loc="center", fontsize="small",
                              title=f"{counts['genuine_pairs']} genuine / {counts['impostor_pairs']} impostor "
                                    f"pairs\n{counts['probes']} probes; galleries {galleries}")
    for axis in axes[len(METRICS):]:
        axis.axis("off")
    figure.tight_layout()
    save_figure(figure, path)


def build_report(args) -> str:
    options = embedding_options(args)
    protocol = load_verification_protocol(args.data_path, args.subset)
    identification = load_identification_protocol(args.data_path, args.subset,
                                                  np.unique(protocol.image_templates))
    _, old_path, old_network = parse_model_spec(args.old, args.old_net, named=False)
    old = model_embeddings(old_path, old_network, protocol, options, label="old")
    rows, samples = {}, {}
    rows["old/old"], counts, samples["old/old"] = summary_metrics(protocol, identification, old, None)
    specs = [parse_model_spec(text, args.new_net, named=True) for text in args.new]
    if args.independent:
        specs.append(parse_model_spec(args.independent, args.new_net, named=False))
    for name, path, network in specs:
        new = model_embeddings(path, network, protocol, options, label=name)
        check_compatible_sizes(old, new)
        for test, gallery_model in (("new/new", None), ("new/old", old)):
            rows[f"{name} {test}"], _, samples[f"{name} {test}"] = summary_metrics(
                protocol, identification, new, gallery_model)
        print(f"{name}: done", flush=True)
        del new  # one new model in memory at a time
    models = [name for name, _, _ in specs if name != INDEPENDENT]
    criteria = {model: compatibility(rows, model) for model in models}
    bootstrap = bootstrap_intervals(protocol, identification, rows, samples)
    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / REPORT_FILES[0], {
        "old": {"path": str(old_path), "network": old_network}, "subset": args.subset,
        "input_normalisation": INPUT_NORMALISATIONS[options.input_normalisation][0],
        "models": {name: {"path": str(path), "network": network} for name, path, network in specs},
        "rules": {"TAR@FAR": "nearest ROC point (reference)", "1:N": "mean over galleries",
                  "resolvable": "at least one false accept allowed: floor(FAR * impostor pairs) >= 1, "
                                "floor(FPIR * non-mated probes) >= 1 in every gallery",
                  "chance": "expected value for random scores"},
        "operating_points": {**TAR_AT_FAR, **TOP_K, **TPIR_AT_FPIR}, "counts": counts,
        "resolvable": resolvable_metrics(counts), "chance": chance_levels(counts),
        "rows": rows, "compatibility": criteria, "bootstrap": bootstrap})
    plot_report(rows, list(dict.fromkeys(name for name, _, _ in specs)), counts,
                args.output / REPORT_FILES[1], bootstrap["intervals"])
    normalisation = ("" if options.input_normalisation == "training" else
                     f", network input {INPUT_NORMALISATIONS[options.input_normalisation][0]}")
    text = report_markdown(f"Compatibility on {args.subset}, old model {old_path} ({old_network}){normalisation}",
                           rows, criteria, counts, bootstrap)
    write_text_atomic(args.output / REPORT_FILES[2], text)
    return text


def main(argv=None) -> int:
    parser = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, metavar="PATH[:net]",
                        help="old backbone state dict (network: the suffix, else --old-net)")
    parser.add_argument("--old-net", default="r18", help="network of --old when it names none")
    parser.add_argument("--new", nargs="+", action="extend", required=True, metavar="NAME=PATH[:net]",
                        help="new (compatible) models, repeatable; network defaults to --new-net")
    parser.add_argument("--new-net", default="r50", help="network of --new / --independent "
                                                         "entries that name none")
    parser.add_argument("--independent", default=None, metavar="PATH[:net]",
                        help="new model trained without compatibility (new*), for the update gain")
    parser.add_argument("-o", "--output", type=Path, required=True, help="report folder")
    add_embedding_arguments(parser)
    args = parser.parse_args(argv)
    try:
        # the report's own files are locked (not the folder): other results may share it
        with lock_files(args.output / name for name in REPORT_FILES):
            text = build_report(args)
    except (ValueError, OSError) as error:
        print(f"compat_report: error: {error}", file=sys.stderr, flush=True)
        return 1
    print("\n" + text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
