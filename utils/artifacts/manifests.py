"""Artifacts computed from the old model (features, labels, prototypes, masks, class meta):
where they live, how they are written (atomically, each with a JSON manifest), and the guards
every consumer runs before trusting one. Misaligned old features must fail loudly.

A manifest sits next to its artifact as `<file>.json`:
    {kind, tool, args, created, dataset: <dataset.fingerprint()>, model: {path, sha256, network,
     embedding_size} or null, shape, dtype, content_sha256, source, extra}
`content_sha256` is the artifact file's own checksum (content_sha256(): a file edited or replaced
after it was written is refused). Artifacts form a lineage: old features record the old model's
checksum (`model`); prototypes, credible masks and class meta record the feature file they were
computed from (`source`: its path and content_sha256) and that file's model.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np

from utils.common.atomic_files import WriteError, atomic_write_text, describe_os_error, write_temporary
from utils.common.checksums import content_sha256, file_sha256
from utils.artifacts.errors import ArtifactMismatch, content_mismatch_error, missing_checksum_error
from utils.artifacts.verified_features import VerifiedFeatures
from utils.common.verified_stamp import is_stamped, stamp
from utils.common.cli import StrictArgumentParser
from utils.common.config import REPO_ROOT
from utils.common.output_lock import lock_files

FEATURE_ROOT = REPO_ROOT / "feature_save"

# artifact kinds; per-class artifacts have one row per class instead of one per image
OLD_FEATURES = "old_features"
OLD_LABELS = "old_labels"
CLASS_PROTOTYPES = "class_prototypes"
CREDIBLE_MASK = "credible_mask"
CLASS_META = "class_meta"
PER_CLASS_KINDS = frozenset({CLASS_PROTOTYPES, CLASS_META})

# --SD suffix -> (rec folder relative to the full set, scenario folder under feature_save/)
SUBSETS = {
    "class100": (".", "EXclass"),
    "data100": (".", "EXdata"),
    "class70": ("train_part_70_class", "OPclass"),
    "data70": ("train_part_70_data", "OPdata"),
    "class30": ("train_part_30_class", None),
    "data30": ("train_part_30_data", None),
}


# ---- naming -------------------------------------------------------------------------------
def subset_of(sd_name: str) -> str:
    """'f128_r18_softmax_class70' -> 'class70' (the subset the features were dumped for)."""
    subset = sd_name.split("_")[-1]
    if subset not in SUBSETS:
        raise ValueError(f"--SD {sd_name!r} must end in one of {', '.join(SUBSETS)} "
                         f"(e.g. f128_r18_softmax_class70)")
    return subset


def subset_rec_dir(sd_name: str, full_rec_dir) -> Path:
    """The rec folder of the --SD subset, given the full set's folder (parent of the 30/70 parts)."""
    relative, _ = SUBSETS[subset_of(sd_name)]
    return (Path(full_rec_dir) / relative).resolve()


def scenario_dir(sd_name: str, feature_root, out_dir=None) -> Path:
    """Folder holding the artifacts of --SD: `out_dir` if given, else feature_root/<scenario>."""
    if out_dir is not None:
        return Path(out_dir)
    subset = subset_of(sd_name)
    scenario = SUBSETS[subset][1]
    if scenario is None:
        raise ValueError(f"--SD {sd_name!r}: subset {subset} belongs to no training scenario; "
                         f"pass --out to say where its artifacts go")
    return Path(feature_root) / scenario


def artifact_paths(sd_name: str, folder) -> Dict[str, Path]:
    """The file of every artifact of one --SD in its folder (credible mask: see credible_path)."""
    folder = Path(folder)
    return {
        OLD_FEATURES: folder / f"{sd_name}_feature.npy",
        OLD_LABELS: folder / f"{sd_name}_label.npy",
        CLASS_PROTOTYPES: folder / f"{sd_name}_avg_feature.npy",
        CLASS_META: folder / f"{sd_name}_class_meta.npz",
    }


def credible_path(sd_name: str, folder, threshold_text: str) -> Path:
    """`<SD>_credible_<T>.npy` with T written as the user gave it (e.g. 0.9)."""
    return Path(folder) / f"{sd_name}_credible_{threshold_text}.npy"


# ---- files and manifests -------------------------------------------------------------------
def manifest_path(artifact_path) -> Path:
    artifact_path = Path(artifact_path)
    return artifact_path.with_name(artifact_path.name + ".json")


def model_record(model_path, network: str, embedding_size: int) -> Dict[str, Any]:
    """The `model` field of a manifest: which checkpoint produced the artifact."""
    model_path = Path(model_path)
    return {"path": str(model_path.resolve()), "sha256": file_sha256(model_path),
            "network": network, "embedding_size": int(embedding_size)}


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


write_text_atomic = atomic_write_text  # the name the tools import: one writer, not a wrapper around it


def manifest_record(content_path, *, kind: str, tool: str, args, dataset: Optional[Mapping],
                    shape, dtype, model: Optional[Mapping] = None, source: Optional[Mapping] = None,
                    extra: Optional[Mapping] = None) -> Dict[str, Any]:
    """The manifest dict of an artifact whose bytes are the file `content_path` (its checksum is
    taken from that file: the writer's own temporary, before anything is published)."""
    if args is not None and not isinstance(args, Mapping):
        args = vars(args)
    return {
        "kind": kind,
        "tool": tool,
        "args": _jsonable(args or {}),
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "dataset": _jsonable(dataset) if dataset is not None else None,
        "model": _jsonable(model) if model is not None else None,
        "shape": [int(s) for s in shape],
        "dtype": str(np.dtype(dtype)),
        "content_sha256": content_sha256(content_path),
        "source": _jsonable(source) if source is not None else None,
        "extra": _jsonable(extra or {}),
    }


def _manifest_text(manifest: Mapping) -> str:
    return json.dumps(manifest, indent=1) + "\n"


def write_manifest(artifact_path, **fields) -> Dict[str, Any]:
    """Write `<artifact>.json` for an artifact already in place (fields as in manifest_record).
    Writers publish through publish_artifact, which checksums their own temporary instead."""
    manifest = manifest_record(artifact_path, **fields)
    write_text_atomic(manifest_path(artifact_path), _manifest_text(manifest))
    return manifest


def read_manifest(artifact_path) -> Dict[str, Any]:
    path = manifest_path(artifact_path)
    if not path.is_file():
        raise ArtifactMismatch(f"{artifact_path} has no manifest {path.name}: rebuild it with the "
                               f"tools/ script that writes it")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ArtifactMismatch(f"manifest {path} is not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or "kind" not in manifest:
        raise ArtifactMismatch(f"manifest {path} has no 'kind' field")
    return manifest


def publish_artifact(temporary, path, **manifest_fields) -> Dict[str, Any]:
    """Publish this writer's finished temporary file as `path` together with its manifest (fields
    as in manifest_record) and return the manifest.

    The checksum is taken from the temporary, which no one else writes, so a manifest always
    describes the bytes of its own writer: a concurrent writer (the output lock prevents one, this
    holds even without it) can at worst leave its array beside the other's manifest, which the
    content check refuses, never an array accepted under a manifest naming another model. The
    manifest is written to its own temporary first; then the old manifest is dropped and the two
    are renamed into place back to back (a crash in between leaves an artifact without manifest,
    which is refused)."""
    temporary, path = Path(temporary), Path(path)
    manifest = manifest_record(temporary, **manifest_fields)
    manifest_temporary = write_temporary(manifest_path(path), lambda handle: handle.write(
        _manifest_text(manifest).encode("utf-8")))
    try:
        manifest_path(path).unlink(missing_ok=True)
        os.replace(temporary, path)
        os.replace(manifest_temporary, manifest_path(path))
    except OSError as error:
        raise WriteError(describe_os_error(error, path, "publishing")) from None
    finally:
        manifest_temporary.unlink(missing_ok=True)
    return manifest


def _save_published(path, write, **manifest_fields) -> Dict[str, Any]:
    """write(handle) into a temporary of this writer, then publish_artifact it with its manifest."""
    temporary = write_temporary(path, write)
    try:
        return publish_artifact(temporary, path, **manifest_fields)
    finally:
        temporary.unlink(missing_ok=True)   # left only when publishing failed


def save_array_atomic(path, array: np.ndarray, **manifest_fields) -> Dict[str, Any]:
    """np.save to a temporary name of this writer and publish it with its manifest (fields as in
    manifest_record, shape and dtype taken from the array)."""
    return _save_published(path, lambda handle: np.save(handle, array), shape=array.shape, dtype=array.dtype,
                           **manifest_fields)


def save_npz_atomic(path, arrays: Mapping[str, np.ndarray], main_array: str,
                    **manifest_fields) -> Dict[str, Any]:
    """Several arrays in one uncompressed .npz; the manifest records `main_array`'s shape and
    the shape of every member under extra['arrays']."""
    extra = dict(manifest_fields.pop("extra", None) or {})
    extra["arrays"] = {name: [int(s) for s in value.shape] for name, value in arrays.items()}
    return _save_published(path, lambda handle: np.savez(handle, **arrays), shape=arrays[main_array].shape,
                           dtype=arrays[main_array].dtype, extra=extra, **manifest_fields)


def load_artifact_array(path, mmap: bool = True) -> np.ndarray:
    """An .npy memory-mapped (or the first member of an .npz, loaded) for shape checks."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as members:
            return members[members.files[0]]
    return np.load(path, mmap_mode="r" if mmap else None)


# ---- guards --------------------------------------------------------------------------------
def _dataset_name(fingerprint: Optional[Mapping]) -> str:
    return str((fingerprint or {}).get("name", "?"))


def check_manifest(manifest: Mapping, artifact_path, kind: str,
                   dataset_fingerprint: Optional[Mapping]) -> None:
    """Compare a manifest with the data it is about to be used with; raise ArtifactMismatch."""
    if manifest.get("kind") != kind:
        raise ArtifactMismatch(f"{artifact_path} is a {manifest.get('kind')!r} artifact, "
                               f"expected {kind!r}")
    if dataset_fingerprint is None:
        return
    built_for = manifest.get("dataset") or {}
    ours, theirs = _dataset_name(dataset_fingerprint), _dataset_name(built_for)
    if built_for.get("num_image") != dataset_fingerprint.get("num_image"):
        raise ArtifactMismatch(
            f"{artifact_path} was computed on {built_for.get('num_image')} images (dataset "
            f"{theirs}) but the data has {dataset_fingerprint.get('num_image')} images ({ours})")
    if kind in PER_CLASS_KINDS and built_for.get("num_classes") != dataset_fingerprint.get("num_classes"):
        raise ArtifactMismatch(
            f"{artifact_path} was computed for {built_for.get('num_classes')} classes (dataset "
            f"{theirs}) but the data has {dataset_fingerprint.get('num_classes')} classes ({ours})")
    for field, meaning in (("labels_sha256", "labels (a different subset or image order)"),
                           ("index_sha256", "index file (a rewritten or different rec)")):
        expected, found = dataset_fingerprint.get(field), built_for.get(field)
        if expected is not None and found != expected:
            raise ArtifactMismatch(
                f"{artifact_path} was computed on other {meaning}: {field} {str(found)[:12]} "
                f"(dataset {theirs}) vs {str(expected)[:12]} ({ours})")


def check_labels_content(labels: np.ndarray, labels_path, dataset_fingerprint: Optional[Mapping]) -> None:
    """The labels stored in a file must be the labels the fingerprint was taken from."""
    from utils.data.datasets import labels_sha256
    expected = (dataset_fingerprint or {}).get("labels_sha256")
    found = labels_sha256(labels)
    if expected is not None and found != expected:
        raise ArtifactMismatch(f"{labels_path} holds labels with sha256 {found[:12]} but the data "
                               f"({_dataset_name(dataset_fingerprint)}) has {expected[:12]}")


def check_content(array_path, manifest: Mapping) -> None:
    """The file's bytes must be the ones its manifest was written for."""
    recorded = manifest.get("content_sha256")
    if not recorded:
        raise missing_checksum_error(array_path, manifest)
    if is_stamped(array_path, recorded):      # verified before and unchanged since
        return
    found = content_sha256(array_path)
    if found != recorded:
        raise content_mismatch_error(array_path, found, recorded)
    stamp(array_path, found)


def check_artifact(array_path, kind: str, dataset_fingerprint: Optional[Mapping],
                   expected_dim: Optional[int] = None, expected_rows: Optional[int] = None,
                   expected_network: Optional[str] = None, verify_content: bool = True) -> Dict[str, Any]:
    """Check an artifact file and its manifest against the data (feature size, old network) it
    is about to be used with, and (verify_content) its bytes against the manifest's checksum;
    return the manifest or raise ArtifactMismatch naming both sides."""
    array_path = Path(array_path)
    if not array_path.is_file():
        raise ArtifactMismatch(f"{kind} file {array_path} does not exist")
    manifest = read_manifest(array_path)
    check_manifest(manifest, array_path, kind, dataset_fingerprint)
    try:
        shape = tuple(load_artifact_array(array_path).shape)
    except (ValueError, OSError, EOFError) as error:
        raise ArtifactMismatch(f"{array_path} cannot be read as an array ({error})") from None
    if list(shape) != list(manifest.get("shape", [])):
        raise ArtifactMismatch(f"{array_path} holds an array of shape {list(shape)} but its "
                               f"manifest says {manifest.get('shape')} (file replaced or truncated)")
    if expected_rows is not None and shape[0] != expected_rows:
        raise ArtifactMismatch(f"{array_path} has {shape[0]} rows, expected {expected_rows}")
    if expected_dim is not None and (len(shape) < 2 or shape[1] != expected_dim):
        found = shape[1] if len(shape) > 1 else "no feature axis"
        raise ArtifactMismatch(f"{array_path} holds features of size {found} but the config "
                               f"expects {expected_dim}")
    network = (manifest.get("model") or {}).get("network")
    if expected_network is not None and network != expected_network:
        raise ArtifactMismatch(f"{array_path} was computed with old network {network!r} but the "
                               f"config says old_network = {expected_network!r}")
    if verify_content:
        check_content(array_path, manifest)
    return manifest


def _model_of(manifest: Mapping) -> Mapping:
    return manifest.get("model") or {}


def recorded_source(artifact_path, manifest: Mapping) -> Mapping:
    """The feature file a derived artifact's manifest says it was computed from."""
    source = manifest.get("source") or {}
    if not source.get("content_sha256"):
        raise ArtifactMismatch(f"{artifact_path}: its manifest does not record the feature file it was computed "
                               f"from: rebuild it with {manifest.get('tool') or 'its tool'}")
    return source


def check_lineage(artifact_path, manifest: Mapping, features_path, feature_manifest: Mapping) -> None:
    """An artifact derived from old features (prototypes, credible mask, class meta) must descend
    from exactly this feature file and its old model; raise ArtifactMismatch naming both."""
    source = recorded_source(artifact_path, manifest)
    if source["content_sha256"] != feature_manifest.get("content_sha256"):
        raise ArtifactMismatch(f"{artifact_path} was computed from other old features ({source.get('path')}, "
                               f"sha256 {str(source['content_sha256'])[:12]}) than {features_path} "
                               f"(sha256 {str(feature_manifest.get('content_sha256'))[:12]}): rebuild it from these")
    ours, theirs = _model_of(manifest), _model_of(feature_manifest)
    if ours.get("sha256") != theirs.get("sha256"):
        raise ArtifactMismatch(f"{artifact_path} records old model {ours.get('network')} "
                               f"{str(ours.get('sha256'))[:12]} but {features_path} comes from "
                               f"{theirs.get('network')} {str(theirs.get('sha256'))[:12]}")


# ---- the command line of the tools that write or read old features ------------------------
def add_sd_argument(parser: argparse.ArgumentParser) -> None:
    """--SD, the scenario detail that names one old model's set of artifacts."""
    parser.add_argument("--SD", required=True, metavar="NAME",
                        help="scenario detail, e.g. f128_r18_softmax_class70; its suffix "
                             "(class70, class100, data70, data100, class30, data30) picks the "
                             "subset and the folder feature_save/{OPclass,EXclass,OPdata,EXdata}")


def scenario_parser(description: str) -> argparse.ArgumentParser:
    """Argument parser of a tool that derives an artifact from old features: the tool's
    docstring as help, plus --SD, --out, --data and --chunk-rows."""
    parser = StrictArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sd_argument(parser)
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder holding <SD>_feature.npy / <SD>_label.npy and receiving the "
                             "output (default: the scenario folder under feature_save/)")
    parser.add_argument("--data", default=None, metavar="REC_DIR",
                        help="also check the features against this rec folder's fingerprint")
    parser.add_argument("--chunk-rows", type=int, default=None,
                        help="feature rows converted to float64 at a time (default 1024: memory stays "
                             "flat and the copy stays in the CPU cache)")
    return parser


def load_old_features(sd_name: str, folder, dataset_fingerprint: Optional[Mapping] = None,
                      verify_content: bool = True):
    """Memory-map <SD>_feature.npy and load <SD>_label.npy after checking both manifests against
    each other (and against `dataset_fingerprint` when given). verify_content=False leaves the
    feature file's checksum to the caller (derive_artifact verifies it while computing).

    Returns (features [N, d] memmap, labels [N] int64, feature manifest, num_classes)."""
    paths = artifact_paths(sd_name, folder)
    feature_manifest = check_artifact(paths[OLD_FEATURES], OLD_FEATURES, dataset_fingerprint,
                                      verify_content=verify_content)
    fingerprint = dataset_fingerprint or feature_manifest.get("dataset")
    rows = feature_manifest["shape"][0]
    check_artifact(paths[OLD_LABELS], OLD_LABELS, fingerprint, expected_rows=rows)
    features = np.load(paths[OLD_FEATURES], mmap_mode="r")
    labels = np.load(paths[OLD_LABELS]).astype(np.int64, copy=False)
    check_labels_content(labels, paths[OLD_LABELS], fingerprint)
    num_classes = (fingerprint or {}).get("num_classes") or int(labels.max()) + 1
    return features, labels, feature_manifest, int(num_classes)


def open_scenario(args: argparse.Namespace, verify_content: bool = True):
    """Resolve the folder of --SD and load its features: (folder, features, labels, manifest,
    num_classes), checking against --data when given (verify_content: as load_old_features)."""
    folder = scenario_dir(args.SD, FEATURE_ROOT, args.out)
    fingerprint = None
    if args.data is not None:
        from utils.data.datasets import FaceRecDataset
        fingerprint = FaceRecDataset(args.data, flip=False).fingerprint()
    features, labels, manifest, num_classes = load_old_features(args.SD, folder, fingerprint, verify_content)
    print(f"{args.SD}: {features.shape[0]} old features of size {features.shape[1]} "
          f"({features.dtype}), {num_classes} classes, from {folder}", flush=True)
    return folder, features, labels, manifest, num_classes


def derived_manifest_fields(kind: str, tool: str, args, features_path, feature_manifest: Mapping,
                            extra: Optional[Mapping] = None) -> Dict[str, Any]:
    """Manifest fields of an artifact computed from old features: same dataset and model, and the
    feature file itself as its source (the lineage check_lineage verifies)."""
    source = {"kind": OLD_FEATURES, "path": str(Path(features_path).resolve()),
              "content_sha256": feature_manifest.get("content_sha256")}
    return {"kind": kind, "tool": tool, "args": args, "dataset": feature_manifest.get("dataset"),
            "model": feature_manifest.get("model"), "source": source, "extra": extra}


def derive_artifact(args: argparse.Namespace, kind: str, tool: str, compute: Callable,
                    output_path: Optional[Callable[[Path], Path]] = None,
                    main_array: Optional[str] = None) -> Path:
    """The body of a tool that derives one artifact from the old features of --SD (args from
    scenario_parser): load and check them, compute, write the result with its manifest, report.

    `compute(features, labels, num_classes, args)` returns (array, or dict of arrays written as an
    .npz whose manifest shape is `main_array`'s, by default the first member's, the one
    load_artifact_array checks; extra manifest fields or None; a summary to print). The file is
    `output_path(folder)`, by default the kind's name from artifact_paths."""
    folder = scenario_dir(args.SD, FEATURE_ROOT, args.out)
    output = output_path(folder) if output_path is not None else artifact_paths(args.SD, folder)[kind]
    # the output file is locked (not the folder): another tool may write another artifact beside it
    with lock_files([output]):
        return _derive_into(args, kind, tool, compute, output, main_array)


def _derive_into(args, kind: str, tool: str, compute: Callable, output: Path, main_array: Optional[str]) -> Path:
    folder, _, labels, feature_manifest, num_classes = open_scenario(args, verify_content=False)
    # the feature file's checksum is verified by the first pass compute() makes over its rows
    features = VerifiedFeatures(artifact_paths(args.SD, folder)[OLD_FEATURES], feature_manifest)
    start = time.time()
    result, extra, summary = compute(features, labels, num_classes, args)
    if not features.verified:
        raise RuntimeError(f"{tool}: computed without reading every row of {features.path}: "
                           f"its content was not verified, nothing written")
    fields = derived_manifest_fields(kind, tool, args, artifact_paths(args.SD, folder)[OLD_FEATURES],
                                     feature_manifest, extra)
    if isinstance(result, Mapping):
        save_npz_atomic(output, result, main_array=main_array or next(iter(result)), **fields)
    else:
        save_array_atomic(output, result, **fields)
    print(f"{summary} written to {output} ({time.time() - start:.1f} s)", flush=True)
    return output
