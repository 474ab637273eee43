"""Data split by the MixBCT reference tool (real MXNet, tests/data/reference_split) is used as
is: prefix files, header [N+1, C], no identity records, no property. The dataset, training
start-up, get_feature.py, the artifact manifests and our split tool work on that layout, and
each subset reads as insightface's MXFaceDataset reads it (expected.json)."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from backbones import get_model
from tests.training_fixtures import single_thread, tiny_training_keys, write_config
from tools.get_feature.get_avg_feature import main as avg_main
from tools.get_feature.get_feature import main as feature_main
from tools.split_dataset.split_dataset_ms1mv3 import main as split_main
from utils.artifacts.manifests import CLASS_PROTOTYPES, OLD_FEATURES, ArtifactMismatch, check_artifact, read_manifest
from utils.common.config import load_config
from utils.data.datasets import FaceRecDataset
from utils.data.build import build_dataset
from utils.training.engine import train
from utils.data.face_rec import FaceRecIndex
from utils.training.plain_methods import SoftmaxMethod
from utils.data.recordio import IRHeader, RecordIOWriter, pack, unpack

FIXTURE = Path(__file__).parent / "data" / "reference_split"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
SUBSETS = sorted(EXPECTED)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A copy of the fixture folder: tools may write beside the data (caches, subsets)."""
    root = tmp_path_factory.mktemp("reference") / "ms1m-like"
    shutil.copytree(FIXTURE / "ms1m-like", root)
    return root


def read_as_insightface(index: FaceRecIndex):
    """[label, sha256 of the payload] per image in dataset order, as expected.json lists them."""
    return [[int(label), hashlib.sha256(unpack(index.reader.read_at(offset))[1]).hexdigest()]
            for label, offset in zip(index.labels, index.image_offsets.tolist())]


@pytest.mark.parametrize("subset", SUBSETS)
def test_prefix_subset_reads_as_insightface_reads_it(data_root, subset):
    expected = EXPECTED[subset]
    for spelling in (data_root / subset, data_root / f"{subset}.rec"):
        dataset = FaceRecDataset(spelling, flip=False)
        assert len(dataset) == expected["num_images"]
        assert dataset.num_classes == expected["num_classes"]
        assert dataset.property_path is None and dataset.rec_path == data_root / f"{subset}.rec"
    index = FaceRecIndex(data_root / subset)
    assert index.layout == "header" and not index.has_identity_records
    assert index.labels_source == "images"
    assert index.header_label == tuple(int(v) for v in expected["header_label"])
    assert index.declared_num_classes == expected["num_classes"]
    assert read_as_insightface(index) == expected["images"]
    image, label, position = dataset[len(dataset) - 1]
    assert image.dtype == torch.uint8 and image.shape == (3, 112, 112)
    assert (label, position) == (expected["images"][-1][0], len(dataset) - 1)


def test_full_set_folder_still_reads_its_identity_records(data_root):
    index = FaceRecIndex(data_root)
    assert index.has_identity_records and index.labels_source == "identities"
    assert len(index) == 101 and index.num_classes == 20
    np.testing.assert_array_equal(index.labels, FaceRecIndex(data_root, labels_from="images").labels)


def test_fingerprints_name_the_subset_and_hash_its_index(data_root):
    fingerprint = FaceRecDataset(data_root / "train_part_30_class", flip=False).fingerprint()
    idx_bytes = (data_root / "train_part_30_class.idx").read_bytes()
    labels = np.asarray([label for label, _ in EXPECTED["train_part_30_class"]["images"]], dtype="<i8")
    assert fingerprint == {"name": "train_part_30_class", "num_image": 22, "num_classes": 6,
                           "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
                           "index_sha256": hashlib.sha256(idx_bytes).hexdigest()}


def test_build_dataset_and_errors_name_the_path(data_root, tmp_path):
    cfg = load_config(write_config(tmp_path / "c.py", rec=str(data_root / "train_part_70_data"),
                                   num_classes=20, num_image=70))
    dataset = build_dataset(cfg, flip=False)
    assert len(dataset) == 70 and dataset.num_classes == 20
    cfg.rec = str(data_root / "train_part_50_class")
    with pytest.raises(ValueError, match=r"train_part_50_class: neither a folder nor a prefix"):
        build_dataset(cfg)
    lone = tmp_path / "lone"
    shutil.copy(data_root / "train_part_30_class.rec", tmp_path / "lone.rec")
    with pytest.raises(ValueError, match=r"lone\.rec: its index lone\.idx is missing"):
        FaceRecDataset(lone)



def test_a_missing_index_is_named_wherever_the_set_is_opened(data_root, tmp_path):
    """build_dataset gives the rec's own reason, not "neither a folder nor a prefix"."""
    shutil.copy(data_root / "train_part_30_class.rec", tmp_path / "lone.rec")
    cfg = load_config(write_config(tmp_path / "c.py", rec=str(tmp_path / "lone")))
    with pytest.raises(ValueError, match=r"lone\.rec: its index lone\.idx is missing"):
        build_dataset(cfg)
    (tmp_path / "folder").mkdir()
    shutil.copy(data_root / "train.rec", tmp_path / "folder" / "train.rec")
    cfg.rec = str(tmp_path / "folder")
    with pytest.raises(ValueError, match=r"folder/train\.rec: its index train\.idx is missing"):
        build_dataset(cfg)
    shutil.copy(data_root / "train_part_30_class.idx", tmp_path / "orphan.idx")
    cfg.rec = str(tmp_path / "orphan")
    with pytest.raises(ValueError, match=r"orphan\.idx: its records orphan\.rec are missing"):
        build_dataset(cfg)


@pytest.mark.parametrize("folder_holds", ["a rec", "images"])
def test_a_folder_beside_same_named_prefix_files_is_refused(data_root, tmp_path, folder_holds):
    """X/ and X.rec + X.idx side by side: which one is meant is not guessed; X.rec picks the prefix files."""
    subset = tmp_path / "train_part_30_class"
    if folder_holds == "a rec":
        shutil.copytree(data_root, subset, ignore=shutil.ignore_patterns("train_part_*"))
    else:
        (subset / "0").mkdir(parents=True)
    for suffix in (".rec", ".idx"):
        shutil.copy(data_root / f"train_part_30_class{suffix}", tmp_path / f"train_part_30_class{suffix}")
    expected = (rf"{subset}: both a folder and the prefix of train_part_30_class\.rec / \.idx beside it: "
                rf"pass {subset}\.rec for the prefix files, or move one of them away")
    with pytest.raises(ValueError, match=expected):
        FaceRecDataset(subset)
    cfg = load_config(write_config(tmp_path / "c.py", rec=str(subset)))
    with pytest.raises(ValueError, match=expected):
        build_dataset(cfg)
    chosen = FaceRecDataset(tmp_path / "train_part_30_class.rec", flip=False)
    assert chosen.rec_path == tmp_path / "train_part_30_class.rec" and len(chosen) == 22

def test_reference_header_class_count_is_checked_against_the_labels(tmp_path):
    writer = RecordIOWriter(tmp_path / "bad.rec", tmp_path / "bad.idx")
    writer.write_idx(0, pack(IRHeader(2, [3.0, 1.0], 0, 0), b""))   # [N+1, C] claiming 1 class
    for key, label in ((1, 0), (2, 1)):
        writer.write_idx(key, pack(IRHeader(2, [float(label), float(key)], key, 0), b""))
    writer.close()
    with pytest.raises(ValueError, match=r"bad\.rec header record 0: says 1 classes, bad\.rec has 2"):
        FaceRecDataset(tmp_path / "bad")


def test_training_starts_on_a_reference_prefix(data_root, tmp_path):
    output = tmp_path / "softmax"
    keys = tiny_training_keys(data_root / "train_part_30_class", output, method="softmax",
                              num_epoch=1, num_classes=6, num_image=22)
    config = write_config(tmp_path / "tiny_softmax.py", **keys)
    with single_thread():
        train(SoftmaxMethod, [str(config)])
    checkpoint = torch.load(output / "checkpoint.pt", weights_only=True)
    head = checkpoint["head"]
    assert next(iter(head.values())).shape[0] == 6     # one classifier row per class of the subset
    assert checkpoint["step"] == 22 // 4                 # every image of the subset, batch 4
    assert (output / "model.pt").is_file()


def test_get_feature_and_derived_artifacts_on_reference_prefixes(data_root, tmp_path):
    torch.manual_seed(0)
    network = get_model("tiny", num_features=8).eval()
    (tmp_path / "work").mkdir()
    torch.save(network.state_dict(), tmp_path / "work" / "model.pt")
    # the reference configs point rec at the prefix of the old model's subset
    config = write_config(tmp_path / "old.py", network="tiny", embedding_size=8,
                          rec=str(data_root / "train_part_30_class"), output=str(tmp_path / "work"))
    out = tmp_path / "OPclass"
    feature_main([str(config), "--SD", "tiny_class70", "--out", str(out), "--batch-size", "16",
                  "--num-workers", "0"])
    subset = data_root / "train_part_70_class"
    expected_labels = [label for label, _ in EXPECTED["train_part_70_class"]["images"]]
    np.testing.assert_array_equal(np.load(out / "tiny_class70_label.npy"), expected_labels)
    features = np.load(out / "tiny_class70_feature.npy")
    dataset = FaceRecDataset(subset, flip=False)
    batch = torch.stack([dataset[i][0] for i in (0, 78)]).float().sub(127.5).div(127.5)
    with torch.no_grad():
        np.testing.assert_allclose(features[[0, 78]], network(batch).numpy(), atol=1e-4)
    manifest = check_artifact(out / "tiny_class70_feature.npy", OLD_FEATURES, dataset.fingerprint(),
                              expected_dim=8)
    assert manifest["dataset"]["name"] == "train_part_70_class"
    with pytest.raises(ArtifactMismatch):
        check_artifact(out / "tiny_class70_feature.npy", OLD_FEATURES,
                       FaceRecDataset(data_root / "train_part_70_data", flip=False).fingerprint())
    avg_main(["--SD", "tiny_class70", "--out", str(out), "--data", str(subset)])
    prototypes = check_artifact(out / "tiny_class70_avg_feature.npy", CLASS_PROTOTYPES, None,
                                expected_rows=14)
    assert read_manifest(out / "tiny_class70_avg_feature.npy")["dataset"] == manifest["dataset"]
    assert prototypes["model"]["network"] == "tiny"


def test_our_split_of_the_full_set_equals_the_reference_split(data_root, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"train_part_30_class\.rec \(a subset written by the reference"):
        split_main(["--input", str(data_root)])      # our folders would shadow its prefix files
    split_main(["--input", str(data_root), "--out", str(tmp_path / "ours")])
    for subset in SUBSETS:
        assert read_as_insightface(FaceRecIndex(tmp_path / "ours" / subset)) == EXPECTED[subset]["images"]
    # a reference prefix is also a valid input: its subset re-split
    summary = split_main(["--input", str(data_root / "train_part_70_class"), "--out",
                          str(tmp_path / "again")])
    labels = np.asarray([label for label, _ in EXPECTED["train_part_70_class"]["images"]])
    first_classes = round(14 * 0.3)
    assert summary["train_part_30_class"] == (int((labels < first_classes).sum()), first_classes)
    assert summary["train_part_70_class"] == (int((labels >= first_classes).sum()), 14 - first_classes)
