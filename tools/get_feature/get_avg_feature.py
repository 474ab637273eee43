"""Class prototypes for BCT / UniBCT: per class, the mean of its raw old features, L2-normalised.

Reads <SD>_feature.npy and <SD>_label.npy (written by get_feature.py, checked through their
manifests) from the scenario folder and writes <SD>_avg_feature.npy ([C, d] float32, row = class
id) with its manifest.

    python tools/get_feature/get_avg_feature.py --SD f128_r18_softmax_class70
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.artifacts import (CLASS_PROTOTYPES, artifact_paths, scenario_parser,  # noqa: E402
                             derived_manifest_fields, open_scenario, save_array_atomic)
from utils.old_artifacts import class_prototypes  # noqa: E402
from utils.progress import run_tool  # noqa: E402

TOOL = "tools/get_feature/get_avg_feature.py"


def main(argv=None) -> Path:
    args = scenario_parser(__doc__).parse_args(argv)
    folder, features, labels, feature_manifest, num_classes = open_scenario(args)
    start = time.time()
    prototypes = class_prototypes(features, labels, num_classes, chunk_rows=args.chunk_rows)
    output = artifact_paths(args.SD, folder)[CLASS_PROTOTYPES]
    save_array_atomic(output, prototypes,
                      **derived_manifest_fields(CLASS_PROTOTYPES, TOOL, args, feature_manifest))
    print(f"class prototypes {list(prototypes.shape)} written to {output} "
          f"({time.time() - start:.1f} s)", flush=True)
    return output


if __name__ == "__main__":
    run_tool(main)
