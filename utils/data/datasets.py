"""Training sets: items are (uint8 RGB image [3, H, W], label, dataset index).

Images are decoded in the loader workers. `flip=True` mirrors them there at random (p = 0.5);
the training engine builds its datasets with `flip=False` and flips on the device instead
(utils.training.engine.random_flip: a hash of seed, epoch and index, so a resumed run flips exactly the
same images whatever the worker count). Normalisation happens on the device
(utils.data.loader.to_device). Files are opened lazily in each process (a forked worker reopens them).
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from utils.common.checksums import file_sha256
from utils.data.face_rec import FaceRecIndex, image_record_label, read_property
from utils.data.recordio import RecordIOError, decode_bgr, unpack

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def labels_sha256(labels: np.ndarray) -> str:
    """sha256 of the labels as int64 little-endian bytes (the manifests' label checksum)."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def check_contiguous_labels(labels: np.ndarray, where) -> int:
    """Every class 0..C-1 has at least one image; returns C."""
    if len(labels) == 0:
        raise ValueError(f"{where}: the data set has no images")
    if labels.min() < 0:
        raise ValueError(f"{where}: negative label {int(labels.min())}")
    counts = np.bincount(labels)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(f"{where}: labels are not contiguous from 0: class {int(empty[0])} of "
                         f"0..{len(counts) - 1} has no image ({empty.size} such classes)")
    return len(counts)


def bgr_to_item(image_bgr: np.ndarray, flip: bool) -> torch.Tensor:
    """HxWx3 BGR uint8 -> [3, H, W] RGB uint8 tensor (a view of one new array), mirrored if `flip`."""
    rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    if flip:
        rgb = cv2.flip(rgb, 1)
    return torch.from_numpy(rgb).permute(2, 0, 1)


class FaceRecDataset(Dataset):
    """insightface face set (header or sequential layout): a train.rec/train.idx/property folder,
    or the reference split tool's prefix files (P.rec / P.idx, labels from the image records).
    `rec_dir` is the location as given (folder or prefix); `rec_path`, `idx_path` and
    `property_path` (None when absent) are the files."""

    def __init__(self, rec_dir, flip: bool = True):
        self.rec_dir = Path(rec_dir)
        self.flip = flip
        self._fingerprint = None
        index = FaceRecIndex(self.rec_dir)
        self.location = index.location
        self.rec_path, self.idx_path = index.location.rec_path, index.location.idx_path
        self.property_path = index.location.property_path
        self.reader = index.reader
        self._index_sha256 = index.index_sha256    # hashed once when the labels cache needed it
        self.image_keys = index.image_keys
        self.image_offsets = index.image_offsets
        self.labels = index.labels
        self.num_classes = check_contiguous_labels(self.labels, self.rec_path)
        self._ids_are_keys = self._image_ids_are_keys()
        if self.property_path is not None:
            declared_classes, where = read_property(self.property_path)[0], self.property_path
        else:
            declared_classes, where = index.declared_num_classes, f"{self.rec_path} header record 0"
        if declared_classes is not None and declared_classes != self.num_classes:
            raise ValueError(f"{where}: says {declared_classes} classes, "
                             f"{self.rec_path.name} has {self.num_classes}")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, int]:
        offset = int(self.image_offsets[index])
        try:
            header, payload = unpack(self.reader.read_at(offset))
            image_bgr = decode_bgr(payload)
        except (RecordIOError, ValueError) as error:
            raise RecordIOError(f"{self.reader.rec_path}: key {int(self.image_keys[index])} "
                                f"(offset {offset}): {error}") from None
        self._check_record_header(header, index, offset)
        return bgr_to_item(image_bgr, self.flip and random.random() < 0.5), int(self.labels[index]), index

    def _image_ids_are_keys(self) -> bool:
        """Whether this file's image record ids are their .idx keys, decided by the first, middle
        and last image records (one slot may be the swapped one)."""
        if not len(self.image_keys):
            return False
        samples = sorted({0, len(self.image_keys) // 2, len(self.image_keys) - 1})
        matches = sum(int(self.reader.read_header_at(int(self.image_offsets[position])).id)
                      == int(self.image_keys[position]) for position in samples)
        return 2 * matches > len(samples)

    def _check_record_header(self, header, index: int, offset: int) -> None:
        """The record read must be the one the .idx slot promises (its own label, and its id where
        this file's image ids are their keys): a stale or swapped index is refused, not trained on."""
        key, label = int(self.image_keys[index]), int(self.labels[index])
        stated = image_record_label(header)
        if stated != label or (self._ids_are_keys and int(header.id) != key):
            raise RecordIOError(f"{self.reader.rec_path}: the .idx slot of key {key} (offset {offset}) holds record "
                                f"id {int(header.id)} label {stated:g} where key {key} label {label} is due: "
                                f"{self.idx_path.name} is stale or swapped (rebuild it)")

    def fingerprint(self) -> Dict:
        if self._fingerprint is None:   # hashing a 100 MB .idx once is enough
            self._fingerprint = {"name": self.location.name, "num_image": len(self),
                                 "num_classes": self.num_classes, "labels_sha256": labels_sha256(self.labels),
                                 "index_sha256": self._index_sha256 or file_sha256(self.idx_path)}
        return dict(self._fingerprint)


class ImageFolderDataset(Dataset):
    """root/<class name>/*.jpg|*.jpeg|*.png; classes in sorted name order, files sorted in a class."""

    def __init__(self, root, flip: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"{self.root}: image folder not found")
        self.flip = flip
        class_dirs = sorted(path for path in self.root.iterdir() if path.is_dir())
        if not class_dirs:
            raise ValueError(f"{self.root}: no class sub-folders")
        self.class_names = [path.name for path in class_dirs]
        files: List[str] = []
        labels: List[int] = []
        for label, class_dir in enumerate(class_dirs):
            names = sorted(path.name for path in class_dir.iterdir()
                           if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file())
            if not names:
                raise ValueError(f"{class_dir}: class folder has no .jpg/.jpeg/.png image")
            files += [f"{class_dir.name}/{name}" for name in names]
            labels += [label] * len(names)
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = check_contiguous_labels(self.labels, self.root)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, int]:
        path = self.root / self.files[index]
        try:
            image_bgr = decode_bgr(path.read_bytes())
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None
        return bgr_to_item(image_bgr, self.flip and random.random() < 0.5), int(self.labels[index]), index

    def fingerprint(self) -> Dict:
        listing = "".join(f"{name}\n" for name in self.files).encode()
        return {"name": self.root.resolve().name, "num_image": len(self), "num_classes": self.num_classes,
                "labels_sha256": labels_sha256(self.labels), "index_sha256": hashlib.sha256(listing).hexdigest()}


class SyntheticDataset(Dataset):
    """Random uint8 images (throughput tests); labels spread evenly and in order over the classes."""

    def __init__(self, num_image: int, num_classes: int, size: int = 112):
        if num_image < num_classes or num_classes < 1:
            raise ValueError(f"synthetic data needs num_image >= num_classes >= 1, got {num_image} and {num_classes}")
        self.num_image, self.num_classes, self.size = int(num_image), int(num_classes), int(size)
        self.labels = np.arange(self.num_image, dtype=np.int64) * self.num_classes // self.num_image

    def __len__(self) -> int:
        return self.num_image

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, int]:
        image = torch.randint(0, 256, (3, self.size, self.size), dtype=torch.uint8)
        return image, int(self.labels[index]), index

    def fingerprint(self) -> Dict:
        description = f"synthetic:{self.num_image}:{self.num_classes}:{self.size}".encode()
        return {"name": "synthetic", "num_image": self.num_image, "num_classes": self.num_classes,
                "labels_sha256": labels_sha256(self.labels), "index_sha256": hashlib.sha256(description).hexdigest()}


def check_dataset(dataset, num_classes, num_image, path) -> None:
    """Config numbers (None = unchecked) against the data; the error names both."""
    if num_classes is not None and int(num_classes) != dataset.num_classes:
        raise ValueError(f"{path}: config num_classes = {num_classes} but the data has {dataset.num_classes} classes")
    if num_image is not None and int(num_image) != len(dataset):
        raise ValueError(f"{path}: config num_image = {num_image} but the data has {len(dataset)} images")
