"""Reading and checking the IJB-B / IJB-C protocol files (layout in docs: evaluation.md).

`load_verification_protocol` reads the image list (names, 5 landmarks, faceness), the image ->
(template, media) table and the 1:1 pairs; `load_identification_protocol` reads the 1:N
gallery / probe CSVs. Every inconsistency is a ProtocolError naming the file and the row.
"""
from __future__ import annotations

import csv
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

# subset -> (file prefix, names of the two 1:N galleries)
SUBSETS = {"IJBC": ("ijbc", ("G1", "G2")), "IJBB": ("ijbb", ("S1", "S2"))}
SHOWN_NAMES = 5  # how many offending names an error message lists


class ProtocolError(ValueError):
    """A protocol file is missing, malformed or inconsistent with another one."""


@dataclass
class VerificationProtocol:
    subset: str
    image_dir: Path
    image_names: np.ndarray        # [N] str, row order of the landmark file
    landmarks: np.ndarray          # [N, 5, 2] float32, pixel coordinates in the loose crop
    faceness: np.ndarray           # [N] float32 detector scores
    image_templates: np.ndarray    # [N] int64 template id of each image
    image_medias: np.ndarray       # [N] int64 media id of each image
    pair_templates: np.ndarray     # [P, 2] int64 template ids of each pair
    pair_labels: np.ndarray        # [P] int8, 1 genuine, 0 impostor
    image_list_sha256: str         # checksum of the landmark file (names + points + scores)

    @property
    def num_images(self) -> int:
        return int(self.image_names.shape[0])


@dataclass
class TemplateSet:
    """Templates of a 1:N gallery or probe set, one subject per template."""
    name: str
    template_ids: np.ndarray       # [T] int64, sorted unique
    subject_ids: np.ndarray        # [T] int64


@dataclass
class IdentificationProtocol:
    galleries: Dict[str, TemplateSet]
    probes: TemplateSet


def subset_paths(data_path, subset: str) -> Dict[str, Path]:
    if subset not in SUBSETS:
        raise ProtocolError(f"unknown subset {subset!r}: expected one of {', '.join(SUBSETS)}")
    prefix, galleries = SUBSETS[subset]
    root = Path(data_path) / subset
    meta = root / "meta"
    paths = {
        "root": root,
        "images": root / "loose_crop",
        "landmarks": meta / f"{prefix}_name_5pts_score.txt",
        "templates": meta / f"{prefix}_face_tid_mid.txt",
        "pairs": meta / f"{prefix}_template_pair_label.txt",
        "probes": meta / f"{prefix}_1N_probe_mixed.csv",
    }
    for gallery in galleries:
        paths[gallery] = meta / f"{prefix}_1N_gallery_{gallery}.csv"
    return paths


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise ProtocolError(f"{what} not found: {path}")


def _first_bad_line(path: Path, columns: int, integer_columns: int) -> str:
    """Describe the first non-empty line without `columns` fields ending in integers."""
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if fields and (len(fields) != columns
                           or not all(_is_integer(f) for f in fields[columns - integer_columns:])):
                return f"line {number} is not {columns} fields ending in {integer_columns} integers: {line.strip()[:120]!r}"
    return ""


def read_integer_table(path: Path, columns: int) -> np.ndarray:
    """[rows, columns] int64 from a whitespace separated file of integers (fast for 15M rows)."""
    text = path.read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short parse is reported below with the bad line
        values = np.fromstring(text, dtype=np.int64, sep=" ")
    lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    if values.size != lines * columns:
        problem = _first_bad_line(path, columns, columns)
        if problem or values.size % columns:
            raise ProtocolError(f"{path}: {problem or 'truncated last line'}")
    return values.reshape(-1, columns)


def read_template_table(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(image names [N], [N, 2] int64 template and media ids) from `name template media` lines."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    try:
        if any(len(fields) != 3 for fields in rows):
            raise ValueError
        ids = np.array([fields[1:] for fields in rows], dtype=np.int64).reshape(-1, 2)
    except ValueError:
        raise ProtocolError(f"{path}: {_first_bad_line(path, 3, 2)}") from None
    return np.array([fields[0] for fields in rows]), ids


def read_landmark_file(path: Path) -> Tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(names [N], landmarks [N, 5, 2], faceness [N], sha256 of the file)."""
    _require_file(path, "landmark file")
    raw = path.read_bytes()
    rows = [line.split() for line in raw.decode().splitlines() if line.strip()]
    bad = next((number for number, fields in enumerate(rows, start=1) if len(fields) != 12), None)
    if bad is not None:
        raise ProtocolError(f"{path}: record {bad} has {len(rows[bad - 1])} fields, expected 12 "
                            f"(name x1 y1 ... x5 y5 faceness)")
    if not rows:
        raise ProtocolError(f"{path}: no images listed")
    names = np.array([fields[0] for fields in rows])
    try:
        numbers = np.array([fields[1:] for fields in rows], dtype=np.float32)
    except ValueError:
        bad = next(number for number, fields in enumerate(rows, start=1)
                   if not all(_is_float(field) for field in fields[1:]))
        raise ProtocolError(f"{path}: record {bad} ({rows[bad - 1][0]}) has a non-numeric "
                            f"landmark or score") from None
    return names, numbers[:, :10].reshape(-1, 5, 2), numbers[:, 10], hashlib.sha256(raw).hexdigest()


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _is_integer(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def check_images_exist(image_dir: Path, image_names: Sequence[str]) -> None:
    if not image_dir.is_dir():
        raise ProtocolError(f"image folder not found: {image_dir}")
    present = set(os.listdir(image_dir))
    missing = [name for name in image_names
               if name not in present and not (image_dir / name).is_file()]
    if missing:
        raise ProtocolError(f"{len(missing)} of {len(image_names)} images missing under "
                            f"{image_dir}: {', '.join(missing[:SHOWN_NAMES])}"
                            f"{' ...' if len(missing) > SHOWN_NAMES else ''}")


def _check_known_templates(path: Path, used: np.ndarray, known: np.ndarray, what: str) -> None:
    unknown = np.setdiff1d(used, known)
    if unknown.size:
        listed = ", ".join(str(t) for t in unknown[:SHOWN_NAMES])
        raise ProtocolError(f"{path}: {unknown.size} {what} not in the image/template table: "
                            f"{listed}{' ...' if unknown.size > SHOWN_NAMES else ''}")


def load_verification_protocol(data_path, subset: str = "IJBC",
                               check_images: bool = True) -> VerificationProtocol:
    paths = subset_paths(data_path, subset)
    for key in ("landmarks", "templates", "pairs"):
        _require_file(paths[key], f"{subset} {key} file")
    names, landmarks, faceness, checksum = read_landmark_file(paths["landmarks"])

    template_names, template_rows = read_template_table(paths["templates"])
    if len(template_names) != len(names):
        raise ProtocolError(f"{paths['landmarks']} lists {len(names)} images but "
                            f"{paths['templates']} lists {len(template_names)}")
    mismatch = np.flatnonzero(template_names != names)
    if mismatch.size:
        row = int(mismatch[0])
        raise ProtocolError(f"{paths['landmarks']} and {paths['templates']} disagree on row "
                            f"{row + 1}: {names[row]} vs {template_names[row]} ({mismatch.size} "
                            f"rows differ; both files must list the images in the same order)")

    pairs = read_integer_table(paths["pairs"], columns=3)
    if pairs.shape[0] == 0:
        raise ProtocolError(f"{paths['pairs']}: no pairs")
    labels = pairs[:, 2]
    if not np.isin(labels, (0, 1)).all():
        row = int(np.flatnonzero(~np.isin(labels, (0, 1)))[0])
        raise ProtocolError(f"{paths['pairs']}: line {row + 1} has label {labels[row]}, "
                            f"expected 0 or 1")
    _check_known_templates(paths["pairs"], np.unique(pairs[:, :2]), np.unique(template_rows[:, 0]),
                           "pair templates")
    if check_images:
        check_images_exist(paths["images"], names)
    return VerificationProtocol(
        subset=subset, image_dir=paths["images"], image_names=names, landmarks=landmarks,
        faceness=faceness, image_templates=template_rows[:, 0], image_medias=template_rows[:, 1],
        pair_templates=np.ascontiguousarray(pairs[:, :2]), pair_labels=labels.astype(np.int8),
        image_list_sha256=checksum)


def read_template_csv(path: Path, name: str) -> TemplateSet:
    """One 1:N CSV (header row; column 0 TEMPLATE_ID, column 1 SUBJECT_ID, one row per image)
    reduced to its templates, each with the subject of its first row."""
    _require_file(path, f"1:N {name} file")
    with open(path, newline="") as handle:
        rows: List[List[str]] = list(csv.reader(handle))
    header = [column.strip().upper() for column in rows[0]] if rows else []
    if header[:2] != ["TEMPLATE_ID", "SUBJECT_ID"]:
        raise ProtocolError(f"{path}: expected a header starting TEMPLATE_ID,SUBJECT_ID, "
                            f"found {','.join(rows[0]) if rows else 'an empty file'}")
    body = rows[1:]
    try:
        ids = np.array([[int(row[0]), int(row[1])] for row in body], dtype=np.int64).reshape(-1, 2)
    except (ValueError, IndexError):
        bad = next(number for number, row in enumerate(body, start=2)
                   if len(row) < 2 or not (_is_integer(row[0].strip()) and _is_integer(row[1].strip())))
        raise ProtocolError(f"{path}: line {bad} has no integer TEMPLATE_ID,SUBJECT_ID: "
                            f"{','.join(body[bad - 2])[:120]!r}") from None
    if ids.shape[0] == 0:
        raise ProtocolError(f"{path}: no templates listed")
    template_ids, first_rows = np.unique(ids[:, 0], return_index=True)
    return TemplateSet(name=name, template_ids=template_ids, subject_ids=ids[first_rows, 1])


def load_identification_protocol(data_path, subset: str,
                                 known_templates: np.ndarray) -> IdentificationProtocol:
    """Galleries and probes; their templates must all appear in the image/template table."""
    paths = subset_paths(data_path, subset)
    galleries = {}
    for gallery in SUBSETS[subset][1]:
        galleries[gallery] = read_template_csv(paths[gallery], gallery)
    probes = read_template_csv(paths["probes"], "probe")
    for key, template_set in [*galleries.items(), ("probes", probes)]:
        _check_known_templates(paths[key], template_set.template_ids, known_templates, "templates")
    return IdentificationProtocol(galleries=galleries, probes=probes)
