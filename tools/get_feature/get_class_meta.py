"""AdvBCT class meta: per class, the centre of its L2-normalised old features and the radius of
the class (largest member distance to the centre after dropping 1.5-IQR outliers).

Writes <SD>_class_meta.npz with center [C, d] float32, radius [C] float32, kept_count [C] int64
and valid [C] bool (False: at most one radius kept, no boundary loss for that class).

    python tools/get_feature/get_class_meta.py --SD f128_r18_softmax_class70
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.artifacts.manifests import CLASS_META, derive_artifact, scenario_parser  # noqa: E402
from utils.artifacts.class_statistics import class_meta  # noqa: E402
from utils.common.progress import run_tool  # noqa: E402

TOOL = "tools/get_feature/get_class_meta.py"


def compute_class_meta(features, labels, num_classes: int, args):
    meta = class_meta(features, labels, num_classes, chunk_rows=args.chunk_rows)
    valid = meta["valid"]
    extra = {"valid_classes": int(valid.sum()),
             "median_radius": float(np.median(meta["radius"][valid])) if valid.any() else None}
    summary = (f"class meta for {num_classes} classes ({extra['valid_classes']} with a boundary, "
               f"median radius {extra['median_radius']})")
    return meta, extra, summary


def main(argv=None) -> Path:
    args = scenario_parser(__doc__).parse_args(argv)
    return derive_artifact(args, CLASS_META, TOOL, compute_class_meta, main_array="center")


if __name__ == "__main__":
    run_tool(main)
