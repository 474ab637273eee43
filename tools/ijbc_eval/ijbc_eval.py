"""IJB-C / IJB-B 1:1 verification and 1:N identification of a backbone, alone (self-test) or
against an old backbone (cross-test: old gallery / first pair template, new probe / second).

    python tools/ijbc_eval/ijbc_eval.py -m NEW.pt -net r50 -d dataset                # 1:1
    python tools/ijbc_eval/ijbc_eval.py -m NEW.pt -net r50 -d dataset -N             # 1:N
    python tools/ijbc_eval/ijbc_eval.py -m NEW.pt -net r50 -m_old OLD.pt -old_net r18 [-N]
    python tools/ijbc_eval/ijbc_eval.py -m NEW.onnx -m_old OLD.onnx [-N]          # exported models
    python tools/ijbc_eval/ijbc_eval.py -P results/x/*.npz                          # re-plot

Pipeline N0D1F1 (docs: evaluation.md): 5-point similarity alignment to 112x112, network input
(x - 127.5) / 127.5 as in training (--input-normalisation reference: the reference script's
(x - 127.5) / 128), embedding f(img) + f(flip), not normalised, times faceness; media average,
template sum, L2; dot product.
Raw embeddings are cached per model file under --cache-dir. Results (JSON with every number,
.npz of scores, PNG plots) go to -R; the markdown tables are printed at the end.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tools.ijbc_eval.cache import choose_cache_dir, write_npz_atomic  # noqa: E402
from utils.common.output_lock import lock_files  # noqa: E402
from tools.ijbc_eval.embed import INPUT_NORMALISATIONS, EmbeddingOptions, model_embeddings  # noqa: E402
from tools.ijbc_eval.evaluation import (check_compatible_sizes, run_identification,  # noqa: E402
                                        run_verification)
from tools.ijbc_eval.identification import FPIR_SHOWN, shown_rows  # noqa: E402
from tools.ijbc_eval.pooling import DEFAULT_VARIANT, Variant, all_variants  # noqa: E402
from tools.ijbc_eval.protocol import (SUBSETS, load_identification_protocol,  # noqa: E402
                                      load_verification_protocol)
from tools.ijbc_eval.report import (identification_tables, markdown_table, plot_roc,  # noqa: E402
                                    plot_tpir, verification_tables, write_json)
from tools.ijbc_eval.verification import verification_metrics  # noqa: E402
from utils.common.cli import StrictArgumentParser  # noqa: E402
from utils.common.config import REPO_ROOT  # noqa: E402

GENERIC_MODEL_STEMS = {"model", "backbone", "checkpoint"}


def model_name(path: Path) -> str:
    """work_dirs/run7/model.pt -> run7; r50_new.pt -> r50_new."""
    path = Path(path)
    return path.parent.name if path.stem in GENERIC_MODEL_STEMS and path.parent.name else path.stem


def add_embedding_arguments(parser: argparse.ArgumentParser) -> None:
    """Data, cache and embedding flags shared with compat_report.py."""
    parser.add_argument("-d", "--data_path", type=Path, default=REPO_ROOT / "dataset",
                        help="folder holding IJBC/ and/or IJBB/ (default: <repo>/dataset)")
    parser.add_argument("-s", "--subset", default="IJBC", choices=sorted(SUBSETS), help="benchmark")
    parser.add_argument("-b", "--batch_size", type=int, default=128, help="images per forward")
    parser.add_argument("-F", "--force_reload", action="store_true",
                        help="ignore cached embeddings (recompute and replace them)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="embedding cache folder (default: <data_path>/.eval_cache, or when that cannot be "
                             "written $XDG_CACHE_HOME or ~/.cache: mixbct/eval_cache/<data folder>-<hash>)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="DataLoader workers reading and aligning images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device for the forward passes (default: cuda when available)")
    parser.add_argument("--amp", action="store_true",
                        help="autocast forward passes (fp16 on GPU, bf16 on CPU); cached separately")
    parser.add_argument("--input-normalisation", choices=sorted(INPUT_NORMALISATIONS), default="training",
                        help="network input: 'training' (default) = (x - 127.5) / 127.5, as every model "
                             "here is trained; 'reference' = (x - 127.5) / 128, as the reference's IJB-C "
                             "script, to reproduce its numbers exactly (cached separately)")


def embedding_options(args) -> EmbeddingOptions:
    if args.batch_size <= 0 or args.workers < 0:
        raise ValueError(f"--batch_size must be positive and --workers >= 0, got "
                         f"{args.batch_size} and {args.workers}")
    # checked now, before any image is embedded: a read-only data folder falls back to the user cache
    cache_dir = choose_cache_dir(Path(args.data_path), args.cache_dir)
    return EmbeddingOptions(batch_size=args.batch_size, device=args.device, amp=args.amp,
                            workers=args.workers, cache_dir=cache_dir,
                            force_reload=args.force_reload, input_normalisation=args.input_normalisation)


def parse_arguments(argv=None) -> argparse.Namespace:
    # strict: no option is taken for a prefix of another (`-o DIR` is not `-old_net DIR`)
    parser = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", type=Path,
                        help="new backbone: state dict (model.pt) or ONNX file from "
                             "tools/export_onnx.py (model.onnx: network read from the file)")
    parser.add_argument("-net", "--network", default="r50", help="network of -m (backbones.get_model)")
    parser.add_argument("-m_old", "--model_old", type=Path, default=None,
                        help="old backbone state dict: turns the run into a cross-test")
    parser.add_argument("-old_net", "--old_network", default="r18", help="network of -m_old")
    parser.add_argument("--num-features", type=int, default=None,
                        help="embedding size of -m (default: read from the state dict)")
    parser.add_argument("--old-num-features", type=int, default=None,
                        help="embedding size of -m_old (default: read from the state dict)")
    parser.add_argument("-N", "--is_one_2_N", action="store_true",
                        help="1:N identification instead of 1:1 verification")
    parser.add_argument("-B", "--is_bunch", action="store_true",
                        help="all eight variants N{0,1}D{0,1}F{0,1} instead of N0D1F1 only")
    parser.add_argument("-R", "--save_result", type=Path, default=None,
                        help="result folder (default: <repo>/results/<model>[_vs_<old model>])")
    parser.add_argument("-E", "--save_embeddings", action="store_true",
                        help="also store the raw embeddings in the result .npz")
    parser.add_argument("-P", "--plot_only", nargs="+", default=None, metavar="FILE",
                        help="re-plot saved result .npz files (globs allowed) instead of evaluating")
    add_embedding_arguments(parser)
    args = parser.parse_args(argv)
    if args.plot_only is None and args.model is None:
        parser.error("give -m MODEL (or -P FILES to re-plot saved results)")
    return args


def result_paths(args) -> tuple:
    """(result folder, result file stem)."""
    name = model_name(args.model)
    if args.model_old is not None:
        name = f"{name}_vs_{model_name(args.model_old)}"
    folder = args.save_result if args.save_result is not None else REPO_ROOT / "results" / name
    return Path(folder), f"{name}_{args.subset}_{'1N' if args.is_one_2_N else '11'}"


def write_verification(folder: Path, stem: str, metrics: dict, scores: dict, labels: np.ndarray,
                       extra_arrays: dict, settings: dict) -> str:
    curve_names = {variant: stem if len(metrics) == 1 else f"{stem}_{variant}" for variant in metrics}
    named = {curve_names[variant]: result for variant, result in metrics.items()}
    write_npz_atomic(folder / f"{stem}.npz", {
        "kind": np.array("1:1"), "names": np.array(list(named)), "label": labels,
        "scores": np.stack([scores[variant] for variant in metrics]), **extra_arrays})
    write_json(folder / f"{stem}.json", {"settings": settings, "verification": named})
    plot_roc({name: (*result["roc"], result["auc"]) for name, result in named.items()},
             folder / f"{stem}_roc.png", f"ROC on {settings['subset']}")
    return verification_tables(named)


def write_identification(folder: Path, stem: str, results: dict, extra_arrays: dict,
                         settings: dict) -> str:
    named = {stem if len(results) == 1 else f"{stem}_{variant}": result
             for variant, result in results.items()}
    first = next(iter(named.values()))
    galleries = [key for key in first if key not in ("mean_tpir", "merged")]
    fpir = np.asarray(first[galleries[0]]["fpir"])
    write_npz_atomic(folder / f"{stem}.npz", {
        "kind": np.array("1:N"), "names": np.array(list(named)), "fpir": fpir,
        "scores": np.stack([np.stack([fpir, np.asarray(r["mean_tpir"])]) for r in named.values()]),
        **{f"tpir_{g}": np.stack([np.asarray(r[g]["tpir"]) for r in named.values()]) for g in galleries},
        **extra_arrays})
    write_json(folder / f"{stem}.json", {"settings": settings, "identification": named})
    plot_tpir({name: (fpir, np.asarray(result["mean_tpir"])) for name, result in named.items()},
              folder / f"{stem}_tpir.png", f"TPIR vs FPIR on {settings['subset']} (mean of galleries)")
    return identification_tables(named)


def result_files(folder: Path, stem: str, one_to_n: bool) -> list:
    """The files one evaluation writes into its result folder (what it locks)."""
    return [folder / f"{stem}.npz", folder / f"{stem}.json", folder / f"{stem}_{'tpir' if one_to_n else 'roc'}.png"]


def evaluate(args) -> None:
    folder, stem = result_paths(args)
    # the result files of this evaluation, locked before the long embedding: a second run writing
    # the same files is refused at once; evaluations of other models or subsets share the folder
    with lock_files(result_files(folder, stem, args.is_one_2_N)):
        _evaluate(args, folder, stem)


def _evaluate(args, folder: Path, stem: str) -> None:
    started = time.time()
    options = embedding_options(args)
    print(f"reading the {args.subset} protocol under {args.data_path}", flush=True)
    protocol = load_verification_protocol(args.data_path, args.subset)
    print(f"{args.subset}: {protocol.num_images} images, "
          f"{len(np.unique(protocol.image_templates))} templates, "
          f"{len(protocol.pair_labels)} pairs ({int(protocol.pair_labels.sum())} genuine)", flush=True)
    identification = None
    if args.is_one_2_N:
        identification = load_identification_protocol(args.data_path, args.subset,
                                                      np.unique(protocol.image_templates))
    new = model_embeddings(args.model, args.network, protocol, options, args.num_features, "new")
    old = None
    same_model = (args.model_old is not None and args.old_network == args.network
                  and Path(args.model_old).resolve() == Path(args.model).resolve())
    if same_model:
        old = new  # cross-test of a model with itself: embed once
    elif args.model_old is not None:
        old = model_embeddings(args.model_old, args.old_network, protocol, options,
                               args.old_num_features, "old")
        check_compatible_sizes(old, new)
    variants = all_variants() if args.is_bunch else [Variant.parse(DEFAULT_VARIANT)]
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "test": "cross" if old is not None else "self", "subset": args.subset,
        "protocol": "1:N" if args.is_one_2_N else "1:1", "data_path": str(args.data_path),
        "variants": [v.name for v in variants], "amp": args.amp,
        "input_normalisation": INPUT_NORMALISATIONS[args.input_normalisation][0],
        "new_model": {"path": str(args.model), "network": new.network,
                      "num_features": new.num_features, "sha256": new.model_sha256},
        "old_model": None if old is None else {"path": str(args.model_old), "network": old.network,
                                               "num_features": old.num_features, "sha256": old.model_sha256}}
    extra_arrays = {}
    if args.save_embeddings:
        extra_arrays = {"embs": new.embeddings, "embs_f": new.flip_embeddings}
        if old is not None:
            extra_arrays.update({"embs_old": old.embeddings, "embs_f_old": old.flip_embeddings})
    scoring_started = time.time()
    if args.is_one_2_N:
        results = run_identification(protocol, identification, new, old, variants)
        tables = write_identification(folder, stem, results, extra_arrays, settings)
    else:
        metrics, scores = run_verification(protocol, new, old, variants)
        tables = write_verification(folder, stem, metrics, scores, protocol.pair_labels,
                                    extra_arrays, settings)
    print(f"scoring {time.time() - scoring_started:.1f}s, total {time.time() - started:.1f}s; "
          f"results in {folder}", flush=True)
    print(f"\n## {stem} ({settings['test']}-test)\n\n{tables}", flush=True)


def expand_result_files(patterns) -> list:
    files = []
    for pattern in patterns:
        for part in filter(None, (p.strip() for p in pattern.split(","))):
            matches = sorted(glob.glob(part))
            if not matches:
                raise FileNotFoundError(f"-P: no result file matches {part}")
            files.extend(matches)
    return files


def replot(args) -> None:
    """Plot (and tabulate) saved result .npz files together."""
    roc_curves, roc_metrics, tpir_curves = {}, {}, {}
    files = expand_result_files(args.plot_only)
    for file in files:
        try:
            with np.load(file) as saved:
                kind, names, scores = str(saved["kind"]), list(saved["names"]), saved["scores"]
                labels = saved["label"] if kind == "1:1" else None
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"-P: {file} is not a result file of this tool ({error})") from None
        for name, score in zip(names, scores):
            if kind == "1:1":
                roc_metrics[name] = verification_metrics(labels, score)
                fpr, tpr = roc_metrics[name]["roc"]
                roc_curves[name] = (fpr, tpr, roc_metrics[name]["auc"])
            else:
                tpir_curves[name] = (score[0], score[1])
    folder = Path(args.save_result) if args.save_result is not None else Path(files[0]).parent
    with lock_files([folder / "replot_roc.png", folder / "replot_tpir.png"]):
        write_replot(folder, roc_curves, roc_metrics, tpir_curves)


def write_replot(folder: Path, roc_curves: dict, roc_metrics: dict, tpir_curves: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if roc_curves:
        plot_roc(roc_curves, folder / "replot_roc.png", "ROC")
        print(verification_tables(roc_metrics))
    if tpir_curves:
        plot_tpir(tpir_curves, folder / "replot_tpir.png", "TPIR vs FPIR (mean of galleries)")
        rows = [[name] + [100 * float(v) for v in tpir[shown_rows(fpir)]]
                for name, (fpir, tpir) in tpir_curves.items()]
        print(markdown_table(["name"] + [f"FPIR={f:g}" for f in FPIR_SHOWN], rows))
    print(f"plots written to {folder}", flush=True)


def main(argv=None) -> int:
    args = parse_arguments(argv)
    try:
        replot(args) if args.plot_only is not None else evaluate(args)
    except (ValueError, OSError) as error:
        print(f"ijbc_eval: error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
