"""insightface face-set conventions on top of RecordIO: train.rec / train.idx / property.

Header layout (RecBuilder): images are keys 1..N (label = identity), identity records are keys
N+1..N+K (label [first, end) image keys, empty payload), header record 0 (label [N+1, N+K+1],
id2 = 1) is written last. Sequential layout (SeqRecBuilder): every .idx key is an image.

The MixBCT reference split tool writes each subset as prefix files beside train.rec
(`train_part_30_class.rec` / `.idx`, no property) whose header record 0 has label [N+1, C]
(C = class count, so the identity range is empty) and no identity records; image labels are
[class, original key]. `locate_rec` accepts both a folder (ours) and such a prefix; labels then
come from the image records.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np

from utils.common.atomic_files import atomic_write_text
from utils.common.checksums import file_sha256
from utils.data.label_cache import cached_labels
from utils.data.recordio import (IRHeader, PublishOnSuccess, RecordIOError, RecordIOReader, RecordIOWriter, encode_image, pack)

REC_NAME, IDX_NAME, PROPERTY_NAME = "train.rec", "train.idx", "property"
FLOAT32_EXACT_INTEGERS = 1 << 24    # identity and header records store keys as float32 labels


def read_property(path) -> Tuple[int, int, int]:
    """`property` file (or the folder holding it) -> (num_classes, height, width); first line only."""
    path = Path(path)
    if path.is_dir():
        path = path / PROPERTY_NAME
    try:
        with open(path) as handle:
            first_line = handle.readline().strip()
    except FileNotFoundError:
        raise ValueError(f"{path}: property file not found") from None
    fields = first_line.split(",")
    if len(fields) != 3 or not all(field.strip().isdigit() for field in fields):
        raise ValueError(f"{path} line 1: expected 'num_classes,height,width', got {first_line[:80]!r}")
    num_classes, height, width = (int(field) for field in fields)
    return num_classes, height, width


class RecLocation(NamedTuple):
    """Where a face set's files are. `property_path` is None when there is none (reference
    prefix files never have one); `name` is the folder or prefix name."""
    rec_path: Path
    idx_path: Path
    property_path: Optional[Path]
    name: str


def _prefix_files(path: Path) -> Tuple[Path, Path]:
    """P -> (P.rec, P.idx); P.rec or P.idx given directly name the same pair."""
    prefix = path.with_suffix("") if path.suffix in (".rec", ".idx") else path
    return prefix.with_name(prefix.name + ".rec"), prefix.with_name(prefix.name + ".idx")


def is_rec_location(rec: Union[str, Path]) -> bool:
    """True for a folder holding train.rec or a prefix with .rec and .idx files."""
    try:
        locate_rec(rec)
    except ValueError:
        return False
    return True


def names_rec_files(rec: Union[str, Path]) -> bool:
    """True when `rec` points at RecordIO files at all (a folder holding train.rec or train.idx,
    or P.rec / P.idx beside prefix P), usable or not: opening it gives locate_rec's own reason."""
    path = Path(rec)
    if path.is_dir() and any((path / name).exists() for name in (REC_NAME, IDX_NAME)):
        return True
    return any(file.exists() for file in _prefix_files(path))


def locate_rec(rec: Union[str, Path]) -> RecLocation:
    """`rec` as a folder with train.rec / train.idx [/ property] (ours, insightface's) or as the
    reference split tool's prefix P with P.rec and P.idx (P.rec itself is accepted too, and picks
    the prefix files where a folder P sits beside them: the bare P is then refused, not guessed)."""
    path = Path(rec)
    rec_path, idx_path = _prefix_files(path)
    if path.is_dir():
        if rec_path.exists() or idx_path.exists():
            raise ValueError(f"{path}: both a folder and the prefix of {rec_path.name} / {idx_path.suffix} "
                             f"beside it: pass {rec_path} for the prefix files, or move one of them away")
        if not (path / REC_NAME).is_file():
            raise ValueError(f"{path}: no {REC_NAME} in this folder")
        if not (path / IDX_NAME).is_file():
            raise ValueError(f"{path / REC_NAME}: its index {IDX_NAME} is missing")
        property_path = path / PROPERTY_NAME
        return RecLocation(path / REC_NAME, path / IDX_NAME,
                           property_path if property_path.is_file() else None, path.resolve().name)
    if rec_path.is_file() and idx_path.is_file():
        return RecLocation(rec_path, idx_path, None, rec_path.stem)
    if rec_path.is_file():
        raise ValueError(f"{rec_path}: its index {idx_path.name} is missing")
    if idx_path.is_file():
        raise ValueError(f"{idx_path}: its records {rec_path.name} are missing")
    raise ValueError(f"{path}: neither a folder with {REC_NAME} nor a prefix with "
                     f"{rec_path.name} and {idx_path.name} beside it")


class FaceRecWriter(PublishOnSuccess):
    """Write a face set in RecBuilder's layout; add images grouped by label 0, 1, 2, ... in order."""

    def __init__(self, out_dir, image_size: Tuple[int, int] = (112, 112)):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.image_size = tuple(image_size)
        self._writer = RecordIOWriter(self.out_dir / REC_NAME, self.out_dir / IDX_NAME)
        self._class_first_key = []       # first image key of each identity
        self._num_image = 0
        self.closed = False

    def add(self, label: int, payload: bytes) -> int:
        """Append one encoded image of identity `label`; returns its key."""
        label = int(label)
        current = len(self._class_first_key) - 1
        allowed = (current, current + 1) if current >= 0 else (0,)
        if label not in allowed:
            self.abort()
            raise ValueError(f"{self.out_dir}: image {self._num_image} has label {label}, expected "
                             f"{' or '.join(map(str, allowed))}: labels start at 0 and grow by at most 1")
        key = self._num_image + 1
        if label == current + 1:
            self._class_first_key.append(key)
        self._writer.write_idx(key, pack(IRHeader(0, float(label), key, 0), payload))
        self._num_image += 1
        return key

    def add_image(self, label: int, image_bgr: np.ndarray, quality: int = 95, img_fmt: str = ".jpg") -> int:
        """Encode a BGR image with cv2 (pack_img) and add it."""
        return self.add(label, encode_image(image_bgr, quality, img_fmt))

    @property
    def num_image(self) -> int:
        return self._num_image

    @property
    def num_classes(self) -> int:
        return len(self._class_first_key)

    def close(self) -> None:
        """Identity records, then header record 0, then `property`; files appear only now."""
        if self.closed:
            return
        num_image, num_classes = self._num_image, self.num_classes
        if num_image + num_classes + 1 > FLOAT32_EXACT_INTEGERS:
            self.abort()
            raise ValueError(f"{self.out_dir}: {num_image} images + {num_classes} identity records need keys above "
                             f"{FLOAT32_EXACT_INTEGERS:,}, which the float32 labels of this layout cannot hold exactly")
        self.closed = True
        bounds = self._class_first_key + [num_image + 1]
        for identity in range(num_classes):
            key = num_image + 1 + identity
            self._writer.write_idx(key, pack(IRHeader(0, [bounds[identity], bounds[identity + 1]], key, 0), b""))
        header_label = [num_image + 1, num_image + num_classes + 1]
        self._writer.write_idx(0, pack(IRHeader(0, header_label, 0, 1), b""))
        self._writer.close()
        height, width = self.image_size
        atomic_write_text(self.out_dir / PROPERTY_NAME, f"{num_classes},{height},{width}\n")

    def abort(self) -> None:
        self.closed = True
        self._writer.abort()


def image_record_label(header: IRHeader) -> float:
    """The class an image record's own header states (a scalar label, or the first of several)."""
    return header.label if header.flag == 0 else header.label[0]


class FaceRecIndex:
    """Which .idx keys are images, where they are, and their labels; reads record headers only.

    Attributes: `location` (`RecLocation`), `reader`, `layout` ("header" or "sequential"),
    `header_label` ((first identity key, end) or None), `has_identity_records`,
    `declared_num_classes` (the reference header's C, else None), `image_keys`, `image_offsets`,
    `labels` (int64, dataset order), `labels_source` ("identities" or "images"), `num_classes`,
    `class_ranges` ([C, 2] dataset positions [start, end) when labels are grouped, else None).
    `rec` is a folder or a reference prefix (`locate_rec`). `labels_from`: "auto" (identity
    records when the header layout has them, else the image records), "images", "identities".
    With `cache_labels`, labels that come from the image records under "auto" are read once per
    index and kept beside it (utils.data.label_cache); `index_sha256` is then the .idx checksum,
    else None. "images" always reads the records (the split tool checks them).
    """

    def __init__(self, rec, labels_from: str = "auto", cache_labels: bool = True):
        if labels_from not in ("auto", "images", "identities"):
            raise ValueError(f"labels_from must be auto, images or identities, got {labels_from!r}")
        self.location = locate_rec(rec)
        self.index_sha256 = None
        self.reader = RecordIOReader(self.location.rec_path, self.location.idx_path)
        keys = self.reader.key_array
        header = self.reader.read_header_at(self.reader.offset_of(0)) if 0 in self.reader else None
        self.has_identity_records, self.declared_num_classes = False, None
        if header is not None and header.flag > 0:
            self.layout = "header"
            first_identity, identity_end = (int(value) for value in header.label[:2])
            self.header_label = (first_identity, identity_end)
            self.image_keys = np.arange(1, first_identity, dtype=np.int64)
            # the reference split's [N+1, C] leaves the identity range empty
            self.has_identity_records = identity_end > first_identity and first_identity in self.reader
            if identity_end < first_identity:
                self.declared_num_classes = identity_end
        else:
            self.layout, self.header_label = "sequential", None
            self.image_keys = keys.copy()
        self.image_offsets = self.reader.offsets_of(self.image_keys)
        if labels_from == "identities" or (labels_from == "auto" and self.has_identity_records):
            if not self.has_identity_records:
                raise RecordIOError(f"{self.reader.idx_path}: no header record 0 with identity ranges")
            self.labels, self.labels_source = self._labels_from_identities(), "identities"
        elif labels_from == "auto" and cache_labels:
            self.index_sha256 = file_sha256(self.reader.idx_path)
            self.labels = cached_labels(self.reader.idx_path, self.reader.file_size, len(self.image_keys),
                                        self._labels_from_images, self.index_sha256)
            self.labels_source = "images"
        else:
            self.labels, self.labels_source = self._labels_from_images(), "images"
        self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.class_ranges = self._class_ranges()

    def _labels_from_images(self) -> np.ndarray:
        headers = self.reader.read_headers(self.image_offsets)     # one pass in file order
        labels = np.where(headers.flag == 0, headers.label, headers.labels[:, 0]).astype(np.float64)
        for position in np.flatnonzero(~headers.ok).tolist():      # split or damaged: read (and named) one by one
            labels[position] = image_record_label(self.reader.read_header_at(int(self.image_offsets[position])))
        not_integer = np.flatnonzero((labels != np.round(labels)) | (labels < 0))
        if not_integer.size:
            bad = int(not_integer[0])
            raise RecordIOError(f"{self.reader.rec_path}: key {int(self.image_keys[bad])} has label {labels[bad]}, "
                                f"not a non-negative integer")
        return labels.astype(np.int64)

    def _labels_from_identities(self) -> np.ndarray:
        first_identity, identity_end = self.header_label
        identity_keys = np.arange(first_identity, identity_end, dtype=np.int64)
        headers = self.reader.read_headers(self.reader.offsets_of(identity_keys))
        pairs = headers.labels.astype(np.float64)
        for position in np.flatnonzero(~headers.ok | (headers.flag < 2)).tolist():
            key = int(identity_keys[position])
            header = self.reader.read_header_at(self.reader.offset_of(key))
            if header.flag < 2:
                raise RecordIOError(f"{self.reader.rec_path}: identity record {key} has no [first, end) label pair")
            pairs[position] = header.label[:2]
        ranges = pairs.astype(np.int64).reshape(-1, 2)
        starts, ends = ranges[:, 0], ranges[:, 1]
        broken = (starts != np.concatenate([[1], ends[:-1]])) | (ends <= starts)
        if len(ranges) and ends[-1] != first_identity:
            broken[-1] = True
        if broken.any():
            bad = int(np.flatnonzero(broken)[0])
            raise RecordIOError(f"{self.reader.rec_path}: identity record {first_identity + bad} range "
                                f"[{starts[bad]}, {ends[bad]}) does not continue the image keys 1..{first_identity - 1}")
        return np.repeat(np.arange(len(ranges), dtype=np.int64), ends - starts)

    def _class_ranges(self) -> Optional[np.ndarray]:
        if len(self.labels) == 0 or np.any(np.diff(self.labels) < 0):
            return None
        classes = np.arange(self.num_classes)
        return np.stack([np.searchsorted(self.labels, classes, side="left"),
                         np.searchsorted(self.labels, classes, side="right")], axis=1).astype(np.int64)

    def __len__(self) -> int:
        return len(self.image_keys)
