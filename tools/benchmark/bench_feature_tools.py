"""Time the old-feature tools at MS1M-V3 scale: class prototypes, credible mask, class meta.

Synthetic raw features (default 3,598,269 x 128 float32, 65,402 classes, labels grouped) are
written to a temporary .npy and memory-mapped, as the tools read them. Prints seconds and peak
RSS per step, then one JSON line.

    python tools/benchmark/bench_feature_tools.py                     # full MS1M-V3 size
    python tools/benchmark/bench_feature_tools.py --scale 0.25        # a quarter of the rows/classes
    python tools/benchmark/bench_feature_tools.py --num-image 100000 --num-classes 2000 --dim 64
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.common.cli import StrictArgumentParser  # noqa: E402

from utils.artifacts.class_statistics import DEFAULT_CHUNK_ROWS, class_meta, class_prototypes, credible_mask

MS1MV3_IMAGES, MS1MV3_CLASSES = 3_598_269, 65_402


def peak_rss_mib() -> float:
    """Peak resident set, including the pages of the memory-mapped feature file."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def anonymous_rss_mib() -> float:
    """Current resident memory not backed by a file (what the tools allocate), 0 if unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def write_synthetic_features(path: Path, num_image: int, num_classes: int, dim: int,
                             chunk_rows: int, seed: int) -> np.ndarray:
    """Grouped labels (every class present) and features = class centre + noise, written by chunk."""
    rng = np.random.default_rng(seed)
    labels = np.sort(np.concatenate([np.arange(num_classes),
                                     rng.integers(0, num_classes, num_image - num_classes)]))
    centres = rng.standard_normal((num_classes, dim), dtype=np.float32) * 2
    features = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(num_image, dim))
    for start in range(0, num_image, chunk_rows * 8):
        rows = slice(start, min(start + chunk_rows * 8, num_image))
        noise = rng.standard_normal((rows.stop - rows.start, dim), dtype=np.float32)
        features[rows] = centres[labels[rows]] + noise
    features.flush()
    del features
    return labels


def parse_args(argv=None) -> argparse.Namespace:
    parser = StrictArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-image", type=int, default=MS1MV3_IMAGES)
    parser.add_argument("--num-classes", type=int, default=MS1MV3_CLASSES)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply --num-image and --num-classes (e.g. 0.25 for a quick run)")
    parser.add_argument("--threshold", type=float, default=0.9, help="credible-mask T")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="where the temporary .npy goes (default: system temp)")
    args = parser.parse_args(argv)
    args.num_image = int(args.num_image * args.scale)
    args.num_classes = max(1, int(args.num_classes * args.scale))
    if args.num_image < args.num_classes:
        parser.error(f"--num-image {args.num_image} is smaller than --num-classes {args.num_classes}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    results = {"num_image": args.num_image, "num_classes": args.num_classes, "dim": args.dim}
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        path = Path(workdir) / "features.npy"
        start = time.time()
        labels = write_synthetic_features(path, args.num_image, args.num_classes, args.dim,
                                          args.chunk_rows, args.seed)
        print(f"synthetic features {args.num_image} x {args.dim} float32 "
              f"({path.stat().st_size / 2**30:.2f} GiB), {args.num_classes} classes: "
              f"{time.time() - start:.1f} s", flush=True)
        features = np.load(path, mmap_mode="r")
        steps = {
            "prototypes": lambda: class_prototypes(features, labels, args.num_classes, args.chunk_rows),
            "credible_mask": lambda: credible_mask(features, labels, args.threshold,
                                                   args.num_classes, args.chunk_rows),
            "class_meta": lambda: class_meta(features, labels, args.num_classes, args.chunk_rows),
        }
        for name, step in steps.items():
            start = time.time()
            output = step()
            seconds = time.time() - start
            results[f"{name}_seconds"] = round(seconds, 2)
            results[f"{name}_anon_rss_mib"] = round(anonymous_rss_mib())
            print(f"{name:14s} {seconds:8.1f} s   peak RSS so far {peak_rss_mib():8.0f} MiB   "
                  f"anonymous RSS with its output {anonymous_rss_mib():8.0f} MiB", flush=True)
            del output
    results["peak_rss_mib"] = round(peak_rss_mib())
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
