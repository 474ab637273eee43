"""Class prototypes for BCT / UniBCT: per class, the mean of its raw old features, L2-normalised.

Reads <SD>_feature.npy and <SD>_label.npy (written by get_feature.py, checked through their
manifests) from the scenario folder and writes <SD>_avg_feature.npy ([C, d] float32, row = class
id) with its manifest.

    python tools/get_feature/get_avg_feature.py --SD f128_r18_softmax_class70

The reference wiki also gives `get_avg_feature.py CONFIG --SD NAME` as the step that gets the
features; that line stops with the command that does it (tools/get_feature/get_feature.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.artifacts.manifests import CLASS_PROTOTYPES, derive_artifact, scenario_parser  # noqa: E402
from utils.artifacts.class_statistics import class_prototypes  # noqa: E402
from utils.common.progress import run_tool  # noqa: E402

TOOL = "tools/get_feature/get_avg_feature.py"


def compute_prototypes(features, labels, num_classes: int, args):
    prototypes = class_prototypes(features, labels, num_classes, chunk_rows=args.chunk_rows)
    return prototypes, None, f"class prototypes {list(prototypes.shape)}"


def refuse_feature_step(parser, argv) -> None:
    """The wiki's "get the features" line passes the old model's config to this tool; features
    are dumped by get_feature.py, so name that command (with the user's values) in one line."""
    known, extra = parser.parse_known_args(argv)
    configs = [value for value in extra if value.endswith(".py") and not value.startswith("-")]
    if configs:
        out = f" --out {known.out}" if known.out else ""
        raise ValueError(f"a config is not an argument here: this tool averages features already "
                         f"dumped. To get the features run: python tools/get_feature/get_feature.py "
                         f"{configs[0]} --SD {known.SD}{out} (then: python {TOOL} --SD {known.SD}{out})")


def main(argv=None) -> Path:
    parser = scenario_parser(__doc__)
    refuse_feature_step(parser, sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    return derive_artifact(args, CLASS_PROTOTYPES, TOOL, compute_prototypes)


if __name__ == "__main__":
    run_tool(main)
