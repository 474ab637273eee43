"""Result files of the IJB evaluation: JSON with every number, reference-style .npz, ROC and
TPIR-vs-FPIR plots (PNG, matplotlib Agg) and markdown tables. Every file is written under a
temporary name and renamed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # files only: the tool runs under nohup, no window may open
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tools.ijbc_eval.identification import FPIR_SHOWN, shown_rows  # noqa: E402
from utils.artifacts.manifests import write_text_atomic  # noqa: E402
from utils.common.atomic_files import atomic_write  # noqa: E402

ROC_FARS_SHOWN = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def jsonable(value):
    """Metrics as plain JSON types; ROC arrays (kept for plots) are left out."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items() if k != "roc"}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)  # e.g. the threshold "-inf" when every pair is accepted; JSON has no inf
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, payload) -> None:
    write_text_atomic(path, json.dumps(jsonable(payload), indent=1) + "\n")


def save_figure(figure, path: Path) -> None:
    """Save as PNG under a temporary name of this writer, close the figure, rename onto `path`."""
    try:
        atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=120))
    finally:
        plt.close(figure)


def plot_roc(curves: Dict[str, Tuple[np.ndarray, np.ndarray, float]], path: Path, title: str) -> None:
    """ROC curves {name: (fpr, tpr, auc)} on a log FAR axis 1e-6 .. 1e-1."""
    figure, axis = plt.subplots(figsize=(6.4, 4.8))
    for name, (fpr, tpr, auc) in curves.items():
        axis.plot(fpr, tpr, lw=1, label=f"{name} (AUC = {auc * 100:.4f}%)")
    axis.set(xscale="log", xlim=(1e-6, 1e-1), ylim=(0.0, 1.0), title=title,
             xlabel="False Accept Rate", ylabel="True Accept Rate")
    axis.grid(linestyle="--", linewidth=0.5)
    axis.legend(loc="lower right", fontsize="x-small")
    figure.tight_layout()
    save_figure(figure, path)


def plot_tpir(curves: Dict[str, Tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    """TPIR against FPIR {name: (fpir, tpir)} on a log FPIR axis 1e-4 .. 1."""
    figure, axis = plt.subplots(figsize=(6.4, 4.8))
    for name, (fpir, tpir) in curves.items():
        axis.plot(fpir, tpir, lw=1, label=name)
    axis.set(xscale="log", xlim=(1e-4, 1.0), ylim=(0.0, 1.0), title=title,
             xlabel="False Positive Identification Rate",
             ylabel="True Positive Identification Rate")
    axis.grid(linestyle="--", linewidth=0.5)
    axis.legend(loc="lower right", fontsize="x-small")
    figure.tight_layout()
    save_figure(figure, path)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def verification_tables(metrics: Dict[str, dict]) -> str:
    """TAR@FAR by both rules (in %) and AUC, one row per curve name."""
    header = ["name"] + [f"{far:.0e}" for far in ROC_FARS_SHOWN] + ["AUC"]
    blocks = []
    for rule, title in (("tar_nearest_roc_point", "TAR@FAR, nearest ROC point (reference rule)"),
                        ("tar_threshold", "TAR@FAR, threshold rule (impostor-score quantile)")):
        rows = []
        for name, result in metrics.items():
            by_far = dict(zip(result["far_targets"], result[rule]))
            rows.append([name] + [100 * by_far[far] if far in by_far else "-" for far in ROC_FARS_SHOWN]
                        + [100 * result["auc"]])
        blocks.append(f"{title}, %\n\n{markdown_table(header, rows)}")
    return "\n\n".join(blocks)


def identification_tables(results: Dict[str, dict]) -> str:
    """Top-k per gallery and merged gallery, TPIR at the shown FPIRs per gallery and mean (%)."""
    rows_shown = shown_rows()
    top_rows, tpir_rows = [], []
    for name, result in results.items():
        galleries = [key for key in result if key not in ("mean_tpir", "merged")]
        for gallery in galleries:
            top_k = result[gallery]["top_k"]
            top_rows.append([name, gallery, result[gallery]["num_mated"]]
                            + [100 * top_k[k] for k in sorted(top_k)])
            tpir = np.asarray(result[gallery]["tpir"])
            tpir_rows.append([name, gallery] + [100 * float(v) for v in tpir[rows_shown]])
        merged = result["merged"]
        top_rows.append([name, merged["name"], merged["num_mated"]]
                        + [100 * merged["top_k"][k] for k in sorted(merged["top_k"])])
        tpir_rows.append([name, "mean"] + [100 * float(v) for v in np.asarray(result["mean_tpir"])[rows_shown]])
    ranks = sorted(next(iter(results.values()))["merged"]["top_k"])
    top_header = ["name", "gallery", "mated probes"] + [f"top-{k}" for k in ranks]
    tpir_header = ["name", "gallery"] + [f"FPIR={fpir:g}" for fpir in FPIR_SHOWN]
    return (f"1:N top-k over mated probes, %\n\n{markdown_table(top_header, top_rows)}\n\n"
            f"1:N TPIR@FPIR, %\n\n{markdown_table(tpir_header, tpir_rows)}")
