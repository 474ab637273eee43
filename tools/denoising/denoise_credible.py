"""MixBCT denoising: mark as credible, per class, the ceil(T * n_c) old features nearest their
class mean (after normalising rows, then columns over the whole set, as the reference does).

Writes <SD>_credible_<T>.npy (uint8 [N], 1 = credible) with a manifest recording T, and prints
the kept fraction overall and per class.

    python tools/denoising/denoise_credible.py --T 0.9 --SD f128_r18_softmax_class70
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.artifacts.manifests import CREDIBLE_MASK, credible_path, derive_artifact, scenario_parser  # noqa: E402
from utils.artifacts.class_statistics import credible_mask  # noqa: E402
from utils.common.progress import run_tool  # noqa: E402

TOOL = "tools/denoising/denoise_credible.py"


def parse_args(argv=None) -> argparse.Namespace:
    parser = scenario_parser(__doc__)
    parser.add_argument("--T", type=str, default="0.9", metavar="T",
                        help="fraction of each class kept, in [0, 1] (default 0.9); written into "
                             "the file name as given")
    args = parser.parse_args(argv)
    try:
        args.threshold = float(args.T)
    except ValueError:
        parser.error(f"--T {args.T!r} is not a number")
    if not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--T {args.T} must be in [0, 1]")
    return args


def per_class_summary(mask: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    counts = np.bincount(labels, minlength=num_classes)
    kept = np.bincount(labels, weights=mask, minlength=num_classes)
    fractions = kept[counts > 0] / counts[counts > 0]
    return {"kept_fraction": float(mask.mean()), "class_kept_fraction_min": float(fractions.min()),
            "class_kept_fraction_median": float(np.median(fractions)),
            "class_kept_fraction_max": float(fractions.max())}


def compute_credible_mask(features, labels, num_classes: int, args):
    mask = credible_mask(features, labels, args.threshold, num_classes, chunk_rows=args.chunk_rows)
    summary = per_class_summary(mask, labels, num_classes)
    report = (f"credible: {int(mask.sum())}/{len(mask)} samples ({summary['kept_fraction']:.4f}); "
            f"per class min {summary['class_kept_fraction_min']:.3f} median "
            f"{summary['class_kept_fraction_median']:.3f} max {summary['class_kept_fraction_max']:.3f};")
    return mask, {"T": args.threshold, **summary}, report


def main(argv=None) -> Path:
    args = parse_args(argv)
    return derive_artifact(args, CREDIBLE_MASK, TOOL, compute_credible_mask,
                           output_path=lambda folder: credible_path(args.SD, folder, args.T))


if __name__ == "__main__":
    run_tool(main)
