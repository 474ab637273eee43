"""Split an insightface rec (MS1M-V3) into the four training subsets of the scenarios.

    python tools/split_dataset/split_dataset_ms1mv3.py [--input dataset/ms1m-retinaface-t1] [--ratio 0.3]

--input is a rec folder (train.rec, train.idx, property) or a prefix P with P.rec / P.idx files
(the reference split tool's layout: no property, labels in the image records). Writes, as
sub-folders of the input folder (of a prefix's folder, or of --out), four valid insightface recs:
  train_part_30_class  identities y < N30 = round(C * ratio), labels kept
  train_part_70_class  the other identities, relabelled y - N30
  train_part_30_data   per identity the first k = max(1, round(ratio * n)) images in record order
  train_part_70_data   the remaining images (an identity with one image goes to both data subsets)
(30/70 follow --ratio). Deterministic, no RNG. Image payloads are copied byte for byte, streaming
record by record, so memory stays flat for millions of images.

Restartable: before writing anything the tool records what it is splitting (input files, sizes,
mtimes, ratio) in `.split_<30>_<70>.in_progress.json` beside the subsets, and removes that record
after the fourth subset is published. A split killed at any moment leaves the record behind, so the
same command again rewrites the subsets (the same bytes) instead of refusing them; subsets found
without that record (or with one of another input) are refused unless --overwrite.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.data.face_rec import (IDX_NAME, PROPERTY_NAME, REC_NAME, FaceRecIndex, FaceRecWriter,  # noqa: E402
                                 image_record_label, is_rec_location, locate_rec, read_property)
from utils.common.atomic_files import atomic_write_text  # noqa: E402
from utils.common.cli import StrictArgumentParser  # noqa: E402
from utils.common.output_lock import lock_files  # noqa: E402
from utils.common.progress import ProgressReporter, run_tool  # noqa: E402
from utils.data.recordio import decode_bgr, unpack  # noqa: E402


def check_grouped_labels(labels: np.ndarray, image_keys: np.ndarray, where) -> None:
    """Labels must start at 0 and step by 0 or 1 in record order; name the first record that breaks it."""
    if len(labels) == 0:
        raise ValueError(f"{where}: no images")
    if labels[0] != 0:
        raise ValueError(f"{where}: record key {int(image_keys[0])} is the first image but has "
                         f"label {int(labels[0])}, expected 0")
    steps = np.diff(labels)
    broken = np.flatnonzero((steps != 0) & (steps != 1))
    if broken.size:
        at = int(broken[0]) + 1
        raise ValueError(f"{where}: record key {int(image_keys[at])} has label {int(labels[at])} "
                         f"after label {int(labels[at - 1])}: labels must be contiguous and "
                         f"ascending in record order")


def class_split(labels: np.ndarray, ratio: float):
    """(N30, first-part mask): identities below N30 = round(C * ratio) form the first part."""
    num_classes = int(labels.max()) + 1
    first_classes = int(round(num_classes * ratio))
    return first_classes, labels < first_classes


def data_split(labels: np.ndarray, ratio: float):
    """(first-part mask, second-part mask) per image: per identity the first max(1, round(ratio*n))
    images go to the first part, the rest to the second; single-image identities go to both."""
    counts = np.bincount(labels)
    class_starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    position_in_class = np.arange(len(labels)) - class_starts[labels]
    # np.rint rounds half to even, as Python's round does, on the same float64 product
    first_count = np.maximum(1, np.rint(ratio * counts.astype(np.float64)).astype(np.int64))
    in_first = position_in_class < first_count[labels]
    single = counts[labels] == 1
    return in_first, ~in_first | single


def split_names(ratio: float):
    first = int(round(ratio * 100))
    second = 100 - first
    if first == second:
        raise ValueError(f"--ratio {ratio} names both parts train_part_{first}_*: pick another ratio")
    return {"first_class": f"train_part_{first}_class", "second_class": f"train_part_{second}_class",
            "first_data": f"train_part_{first}_data", "second_data": f"train_part_{second}_data"}


def in_progress_path(output_root, ratio: float) -> Path:
    """The record a split into `output_root` keeps while it runs (left behind when it is killed)."""
    names = split_names(ratio)
    first, second = (name.split("_")[2] for name in (names["first_class"], names["second_class"]))
    return Path(output_root) / f".split_{first}_{second}.in_progress.json"


def split_identity(input_dir, ratio: float) -> dict:
    """What a split is of: the input's files (resolved), their sizes and mtimes, and the ratio."""
    location = locate_rec(input_dir)
    identity = {"ratio": ratio}
    for role, path in (("rec", location.rec_path), ("idx", location.idx_path)):
        stat = path.stat()
        identity[role] = {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return identity


def interrupted_split(marker: Path) -> Optional[dict]:
    """The identity an interrupted split recorded in `marker`, or None when there is none."""
    try:
        text = marker.read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise ValueError(f"{marker}: not the JSON record of an interrupted split (written atomically, so "
                         f"not ours): remove it and the subsets beside it, or pass --overwrite") from None


def split_rec(input_dir, output_root, ratio: float, overwrite: bool = False,
              progress_seconds: float = 30.0):
    """Write the four subsets; return {subset folder name: (num_image, num_classes)}."""
    input_dir, output_root = Path(input_dir), Path(output_root)
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"--ratio must be strictly between 0 and 1, got {ratio}")
    names = split_names(ratio)
    identity = split_identity(input_dir, ratio)
    marker = in_progress_path(output_root, ratio)
    interrupted = None if overwrite else interrupted_split(marker)
    existing = [name for name in names.values() if (output_root / name / REC_NAME).exists()]
    if interrupted is not None and interrupted != identity:
        raise ValueError(f"{marker}: records an interrupted split of {interrupted.get('rec', {}).get('path', '?')} "
                         f"(ratio {interrupted.get('ratio', '?')}), not of {identity['rec']['path']} as it is now "
                         f"(ratio {ratio}): remove it and the subsets beside it, or pass --overwrite")
    if existing and interrupted is None and not overwrite:
        raise ValueError(f"{output_root / existing[0]} already holds a {REC_NAME} "
                         f"(pass --overwrite to replace it)")
    if existing and interrupted is not None:
        print(f"{marker}: an interrupted split of this input; writing its four subsets again", flush=True)
    # a folder named like the reference tool's prefix files would silently take their place
    shadowed = [name for name in names.values() if (output_root / f"{name}.rec").exists()]
    if shadowed:
        raise ValueError(f"{output_root / shadowed[0]}.rec (a subset written by the reference split "
                         f"tool) is already there: train on it as is, or pass --out elsewhere")

    # labels from the image records themselves, so a disorder is named by its record key
    index = FaceRecIndex(input_dir, labels_from="images")
    rec_path = index.location.rec_path
    labels, image_keys = index.labels, index.image_keys
    check_grouped_labels(labels, image_keys, rec_path)
    if index.location.property_path is not None:
        _, height, width = read_property(index.location.property_path)
    else:   # reference prefix files have no property: the first image gives the size
        height, width = decode_bgr(unpack(index.reader.read_at(int(index.image_offsets[0])))[1]).shape[:2]
    first_classes, in_first_class = class_split(labels, ratio)
    in_first_data, in_second_data = data_split(labels, ratio)
    print(f"{input_dir}: {len(labels)} images, {int(labels[-1]) + 1} identities; "
          f"class split at identity {first_classes}", flush=True)

    output_root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps(identity, indent=1) + "\n")     # before the first subset file
    writers = {key: FaceRecWriter(output_root / name, image_size=(height, width))
               for key, name in names.items()}
    progress = ProgressReporter(len(labels), "split", "img", every_seconds=progress_seconds)
    reader = index.reader
    try:
        for position, (key, offset) in enumerate(zip(image_keys.tolist(), index.image_offsets.tolist())):
            header, payload = unpack(reader.read_at(offset))
            label = int(labels[position])
            stated = int(image_record_label(header))
            if stated != label:
                raise ValueError(f"{rec_path}: record key {key} changed while reading "
                                 f"(label {stated}, indexed as {label})")
            if in_first_class[position]:
                writers["first_class"].add(label, payload)
            else:
                writers["second_class"].add(label - first_classes, payload)
            if in_first_data[position]:
                writers["first_data"].add(label, payload)
            if in_second_data[position]:
                writers["second_data"].add(label, payload)
            progress.update(1)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    summary = {}
    for key, writer in writers.items():
        writer.close()
        summary[names[key]] = (writer.num_image, writer.num_classes)
    marker.unlink()                  # all four published: the split is complete
    progress.close()
    return summary


def parse_args(argv=None) -> argparse.Namespace:
    parser = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default="dataset/ms1m-retinaface-t1",
                        help="rec folder with train.rec, train.idx, property, or a prefix P with "
                             "P.rec and P.idx (default: dataset/ms1m-retinaface-t1, relative to "
                             "the repository)")
    parser.add_argument("--ratio", type=float, default=0.3,
                        help="fraction of identities (class split) and of each identity's images "
                             "(data split) that goes to the first part (default 0.3)")
    parser.add_argument("--out", default=None,
                        help="folder receiving the four subset folders (default: --input)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace subsets that already exist")
    parser.add_argument("--progress-seconds", type=float, default=30.0,
                        help="seconds between progress lines when stdout is not a terminal")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    repository = Path(__file__).resolve().parents[2]
    input_dir = Path(args.input)
    if not input_dir.is_absolute() and not input_dir.exists() and not is_rec_location(input_dir):
        input_dir = repository / input_dir
    output_root = Path(args.out) if args.out else (input_dir if input_dir.is_dir() else input_dir.parent)
    # each subset folder is locked (`.<folder>.lock` beside it): two splits into one --out cannot interleave
    subsets = [output_root / name for name in split_names(args.ratio).values()]
    # a split killed mid-write left its temporaries inside the subset folders: removed once locked
    with lock_files(subsets, also=[folder / name for folder in subsets for name in (REC_NAME, IDX_NAME, PROPERTY_NAME)]):
        summary = split_rec(input_dir, output_root, args.ratio, args.overwrite, args.progress_seconds)
    for name, (num_image, num_classes) in summary.items():
        print(f"{output_root / name}: {num_image} images, {num_classes} identities", flush=True)
    return summary


if __name__ == "__main__":
    run_tool(main)
