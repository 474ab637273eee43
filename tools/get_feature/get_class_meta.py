"""AdvBCT class meta: per class, the centre of its L2-normalised old features and the radius of
the class (largest member distance to the centre after dropping 1.5-IQR outliers).

Writes <SD>_class_meta.npz with center [C, d] float32, radius [C] float32, kept_count [C] int64
and valid [C] bool (False: at most one radius kept, no boundary loss for that class).

    python tools/get_feature/get_class_meta.py --SD f128_r18_softmax_class70
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.artifacts import (CLASS_META, artifact_paths, scenario_parser,  # noqa: E402
                             derived_manifest_fields, open_scenario, save_npz_atomic)
from utils.old_artifacts import class_meta  # noqa: E402
from utils.progress import run_tool  # noqa: E402

TOOL = "tools/get_feature/get_class_meta.py"


def main(argv=None) -> Path:
    args = scenario_parser(__doc__).parse_args(argv)
    folder, features, labels, feature_manifest, num_classes = open_scenario(args)
    start = time.time()
    meta = class_meta(features, labels, num_classes, chunk_rows=args.chunk_rows)
    valid = meta["valid"]
    extra = {"valid_classes": int(valid.sum()),
             "median_radius": float(np.median(meta["radius"][valid])) if valid.any() else None}
    output = artifact_paths(args.SD, folder)[CLASS_META]
    save_npz_atomic(output, meta, main_array="center",
                    **derived_manifest_fields(CLASS_META, TOOL, args, feature_manifest, extra))
    print(f"class meta for {num_classes} classes ({extra['valid_classes']} with a boundary, "
          f"median radius {extra['median_radius']}) written to {output} "
          f"({time.time() - start:.1f} s)", flush=True)
    return output


if __name__ == "__main__":
    run_tool(main)
