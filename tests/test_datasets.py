"""utils/data/datasets.py: items, fingerprints and start-up checks."""
import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from easydict import EasyDict

from utils.data.datasets import FaceRecDataset, ImageFolderDataset, SyntheticDataset, check_dataset
from utils.data.build import build_dataset
from utils.data.recordio import IRHeader, RecordIOWriter, pack_img

FIXTURES = Path(__file__).parent / "data" / "mxnet_recordio"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def pixel_sha256(image: torch.Tensor) -> str:
    """sha256 of the HxWx3 array, the form expected.json hashes."""
    return hashlib.sha256(image.permute(1, 2, 0).contiguous().numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("name", ["train", "seq_layout"])
def test_items_are_rgb_chw_uint8_with_label_and_index(name):
    dataset = FaceRecDataset(FIXTURES / ("" if name == "train" else name), flip=False)
    view = EXPECTED[name]["insightface_view"]
    records = {record["key"]: record for record in EXPECTED[name]["records"]}
    assert len(dataset) == view["len"] and dataset.labels.tolist() == view["labels"]
    for position, key in enumerate(view["imgidx"]):
        image, label, index = dataset[position]
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 112, 112)
        assert (label, index) == (view["labels"][position], position)
        assert pixel_sha256(image) == records[key]["image"]["sha256"]["mxnet_imdecode_rgb"]


def test_flip_gives_original_or_exact_mirror():
    plain, flipping = FaceRecDataset(FIXTURES, flip=False), FaceRecDataset(FIXTURES, flip=True)
    original = plain[5][0]
    outcomes = {("same" if torch.equal(image, original) else "mirror" if torch.equal(image, original.flip(2)) else "other")
                for image in (flipping[5][0] for _ in range(40))}
    assert outcomes == {"same", "mirror"}


def test_fingerprint():
    labels = EXPECTED["train"]["insightface_view"]["labels"]
    assert FaceRecDataset(FIXTURES).fingerprint() == {
        "name": "mxnet_recordio", "num_image": 24, "num_classes": 6,
        "labels_sha256": hashlib.sha256(b"".join(int(v).to_bytes(8, "little") for v in labels)).hexdigest(),
        "index_sha256": EXPECTED["files"]["train.idx"]["sha256"]}


def copy_fixture_set(destination: Path) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    for name in ("train.rec", "train.idx", "property"):
        shutil.copy(FIXTURES / name, destination / name)
    return destination


def test_property_class_count_must_match(tmp_path):
    rec_dir = copy_fixture_set(tmp_path / "faces")
    (rec_dir / "property").write_text("7,112,112\n")
    with pytest.raises(ValueError, match=r"property: says 7 classes, train\.rec has 6"):
        FaceRecDataset(rec_dir)


def test_labels_must_be_contiguous(tmp_path):
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        for key, label in enumerate([0, 0, 2, 3]):
            writer.write_idx(key, pack_img(IRHeader(0, float(label), key, 0), image, img_fmt=".png"))
    with pytest.raises(ValueError, match=r"train\.rec: labels are not contiguous from 0: class 1 of 0\.\.3 has no image"):
        FaceRecDataset(tmp_path)


def test_check_dataset_names_both_numbers():
    dataset = SyntheticDataset(20, 4, size=8)
    check_dataset(dataset, 4, 20, "somewhere")
    check_dataset(dataset, None, None, "somewhere")
    with pytest.raises(ValueError, match=r"somewhere: config num_classes = 5 but the data has 4 classes"):
        check_dataset(dataset, 5, 20, "somewhere")
    with pytest.raises(ValueError, match=r"somewhere: config num_image = 19 but the data has 20 images"):
        check_dataset(dataset, 4, 19, "somewhere")


def make_image_folder(root: Path, counts) -> dict:
    """Class folders given out of order; returns {relative path: HxWx3 RGB image}."""
    rng = np.random.default_rng(3)
    written = {}
    for class_name, count in counts.items():
        (root / class_name).mkdir(parents=True)
        for number in range(count):
            rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            relative = f"{class_name}/img{number}.png"
            cv2.imwrite(str(root / relative), rgb[:, :, ::-1])
            written[relative] = rgb
    (root / "notes.txt").write_text("not a class")
    return written


def test_image_folder_dataset(tmp_path):
    written = make_image_folder(tmp_path, {"zed": 1, "alice": 2, "bob": 1})
    dataset = ImageFolderDataset(tmp_path, flip=False)
    assert dataset.class_names == ["alice", "bob", "zed"]
    assert dataset.files == ["alice/img0.png", "alice/img1.png", "bob/img0.png", "zed/img0.png"]
    assert dataset.labels.tolist() == [0, 0, 1, 2] and dataset.num_classes == 3
    for position, relative in enumerate(dataset.files):
        image, label, index = dataset[position]
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), written[relative])
        assert (label, index) == (dataset.labels[position], position)
    listing = "alice/img0.png\nalice/img1.png\nbob/img0.png\nzed/img0.png\n".encode()
    assert dataset.fingerprint()["index_sha256"] == hashlib.sha256(listing).hexdigest()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: class folder has no \.jpg/\.jpeg/\.png image"):
        ImageFolderDataset(tmp_path)


def test_synthetic_dataset():
    dataset = SyntheticDataset(10, 3, size=16)
    image, label, index = dataset[4]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 16, 16) and index == 4
    assert dataset.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2] and label == 1
    with pytest.raises(ValueError, match="num_image >= num_classes"):
        SyntheticDataset(2, 3)


def test_build_dataset_picks_the_source(tmp_path):
    synthetic = build_dataset(EasyDict(synthetic=True, rec=None, num_classes=3, num_image=12))
    assert isinstance(synthetic, SyntheticDataset) and len(synthetic) == 12
    rec = build_dataset(EasyDict(synthetic=False, rec=str(FIXTURES), num_classes=6, num_image=24))
    assert isinstance(rec, FaceRecDataset)
    make_image_folder(tmp_path / "folder", {"a": 1, "b": 2})
    folder = build_dataset(EasyDict(synthetic=False, rec=str(tmp_path / "folder"), num_classes=2, num_image=3))
    assert isinstance(folder, ImageFolderDataset)
    with pytest.raises(ValueError, match=r"mxnet_recordio: config num_classes = 7 but the data has 6 classes"):
        build_dataset(EasyDict(synthetic=False, rec=str(FIXTURES), num_classes=7, num_image=24))
    with pytest.raises(ValueError, match="config key 'rec' is not set"):
        build_dataset(EasyDict(synthetic=False, rec=None, num_classes=7, num_image=24))
