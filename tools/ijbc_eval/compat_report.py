"""Backward-compatibility report: self- and cross-tests of several new models against one old
model on IJB-C (or IJB-B), in one table.

    python tools/ijbc_eval/compat_report.py --old OLD.pt --old-net r18 \\
        --new MixBCT=work_dirs/mixbct/model.pt:r50 L2=work_dirs/l2/model.pt:r50 \\
        --independent work_dirs/new_arcface/model.pt:r50 -d dataset -o results/compat

Rows: old/old, then new/new and new/old for each model (and for the independent model new*,
trained without any compatibility term). Metrics: TAR@FAR=1e-4 and 1e-5 (nearest ROC point,
the reference rule), 1:N top-1 and TPIR@FPIR=1e-2 (mean over the two galleries). Per model:
the empirical criterion M(new, old) > M(old, old) and the update gain
G = (M(new, old) - M(old, old)) / (M(new*, new*) - M(old, old)). Every model is embedded once
(the embedding cache is shared with ijbc_eval.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tools.ijbc_eval.embed import model_embeddings  # noqa: E402
from tools.ijbc_eval.evaluation import check_compatible_sizes, run_identification, run_verification  # noqa: E402
from tools.ijbc_eval.identification import FPIR_GRID  # noqa: E402
from tools.ijbc_eval.ijbc_eval import add_embedding_arguments, embedding_options  # noqa: E402
from tools.ijbc_eval.pooling import DEFAULT_VARIANT, Variant  # noqa: E402
from tools.ijbc_eval.protocol import load_identification_protocol, load_verification_protocol  # noqa: E402
from tools.ijbc_eval.report import markdown_table, write_json  # noqa: E402
from utils.artifacts import write_text_atomic  # noqa: E402

METRICS = ("TAR@FAR=1e-4", "TAR@FAR=1e-5", "1:N top-1", "TPIR@FPIR=1e-2")
INDEPENDENT = "new*"


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


def summary_metrics(protocol, identification, probe_model, gallery_model) -> dict:
    """The four table metrics (fractions) for probe_model against gallery_model."""
    variant = [Variant.parse(DEFAULT_VARIANT)]
    verification, _ = run_verification(protocol, probe_model, gallery_model, variant)
    result = verification[DEFAULT_VARIANT]
    by_far = dict(zip(result["far_targets"], result["tar_nearest_roc_point"]))
    ident = run_identification(protocol, identification, probe_model, gallery_model, variant)[DEFAULT_VARIANT]
    galleries = [key for key in ident if key not in ("mean_tpir", "merged")]
    fpir_row = int(np.argmin(np.abs(np.log10(FPIR_GRID) + 2)))
    return {"TAR@FAR=1e-4": by_far[1e-4], "TAR@FAR=1e-5": by_far[1e-5],
            "1:N top-1": float(np.mean([ident[g]["top_k"][1] for g in galleries])),
            "TPIR@FPIR=1e-2": float(ident["mean_tpir"][fpir_row])}


def compatibility(rows: dict, model: str) -> dict:
    """Per metric: criterion new/old > old/old, and the update gain against new*/new*."""
    old, cross = rows["old/old"], rows[f"{model} new/old"]
    independent = rows.get(f"{INDEPENDENT} new/new")
    summary = {}
    for metric in METRICS:
        gap = None if independent is None else independent[metric] - old[metric]
        summary[metric] = {"compatible": bool(cross[metric] > old[metric]),
                           "gain": None if not gap else (cross[metric] - old[metric]) / gap}
    return summary


def plot_report(rows: dict, path: Path) -> None:
    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 4.2), sharey=False)
    names = list(rows)
    for axis, metric in zip(axes, METRICS):
        values = [100 * rows[name][metric] for name in names]
        axis.barh(range(len(names)), values, color=["grey" if n == "old/old" else
                                                     "tab:blue" if n.endswith("new/old") else
                                                     "tab:orange" for n in names])
        axis.axvline(100 * rows["old/old"][metric], color="black", lw=0.8, ls="--")
        axis.set_yticks(range(len(names)), names if axis is axes[0] else [""] * len(names))
        axis.set_title(metric, fontsize="small")
        axis.set_xlabel("%", fontsize="small")
        axis.invert_yaxis()
    figure.tight_layout()
    temporary = path.with_name(path.stem + ".tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    temporary.replace(path)


def build_report(args) -> str:
    options = embedding_options(args)
    protocol = load_verification_protocol(args.data_path, args.subset)
    identification = load_identification_protocol(args.data_path, args.subset,
                                                  np.unique(protocol.image_templates))
    _, old_path, old_network = parse_model_spec(args.old, args.old_net, named=False)
    old = model_embeddings(old_path, old_network, protocol, options, label="old")
    rows = {"old/old": summary_metrics(protocol, identification, old, None)}
    specs = [parse_model_spec(text, args.new_net, named=True) for text in args.new]
    if args.independent:
        specs.append(parse_model_spec(args.independent, args.new_net, named=False))
    for name, path, network in specs:
        new = model_embeddings(path, network, protocol, options, label=name)
        check_compatible_sizes(old, new)
        rows[f"{name} new/new"] = summary_metrics(protocol, identification, new, None)
        rows[f"{name} new/old"] = summary_metrics(protocol, identification, new, old)
        print(f"{name}: done", flush=True)
        del new  # one new model in memory at a time
    models = [name for name, _, _ in specs if name != INDEPENDENT]
    criteria = {model: compatibility(rows, model) for model in models}
    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / "compat_report.json", {
        "old": {"path": str(old_path), "network": old_network}, "subset": args.subset,
        "models": {name: {"path": str(path), "network": network} for name, path, network in specs},
        "rules": {"TAR@FAR": "nearest ROC point (reference)", "1:N": "mean over galleries"},
        "rows": rows, "compatibility": criteria})
    plot_report(rows, args.output / "compat_report.png")
    table = markdown_table(["test"] + [f"{m} %" for m in METRICS],
                           [[name] + [100 * values[m] for m in METRICS] for name, values in rows.items()])
    verdicts = markdown_table(
        ["model"] + [f"{m}: new/old > old/old, gain G" for m in METRICS],
        [[model] + [f"{'yes' if c[m]['compatible'] else 'no'}, "
                    f"{'-' if c[m]['gain'] is None else format(c[m]['gain'], '.3f')}" for m in METRICS]
         for model, c in criteria.items()])
    text = (f"# Compatibility on {args.subset}, old model {old_path} ({old_network})\n\n"
            f"TAR@FAR: nearest ROC point (reference rule); 1:N: mean over the two galleries\n\n"
            f"{table}\n\n{verdicts}\n")
    write_text_atomic(args.output / "compat_report.md", text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
        text = build_report(args)
    except (ValueError, OSError) as error:
        print(f"compat_report: error: {error}", file=sys.stderr, flush=True)
        return 1
    print("\n" + text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
