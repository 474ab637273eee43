"""Old-model artifacts: the per-class math against plain per-class loops, and the tools end to
end (split -> get_feature -> prototypes / credible mask / class meta) on a tiny rec."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from backbones import get_model
from tools.denoising.denoise_credible import main as denoise_main
from tools.get_feature.get_avg_feature import main as avg_main
from tools.get_feature.get_class_meta import main as meta_main
from tools.get_feature.get_feature import main as feature_main
from tools.split_dataset.split_dataset_ms1mv3 import main as split_main
from utils.artifacts.manifests import (CLASS_PROTOTYPES, CREDIBLE_MASK, OLD_FEATURES, ArtifactMismatch, check_artifact, read_manifest)
from utils.data.datasets import FaceRecDataset
from utils.data.face_rec import FaceRecIndex, FaceRecWriter
from utils.artifacts.class_statistics import class_meta, class_prototypes, credible_mask
from utils.data.recordio import unpack

REPO = Path(__file__).resolve().parents[1]


# ---- the math, against straightforward loops ------------------------------------------------
def random_features(seed=0, sizes=(1, 2, 3, 4, 5, 9, 12, 20)):
    """Shuffled labels (classes not contiguous), one far outlier in the last class, a duplicate."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    features = rng.normal(size=(len(labels), 6)) + 3 * rng.normal(size=(len(sizes), 6))[labels]
    last = np.flatnonzero(labels == len(sizes) - 1)
    features[last[0]] = -40 * features[last[0]]
    eight = np.flatnonzero(labels == 6)
    features[eight[1]] = features[eight[0]]  # an exact tie inside one class
    return features.astype(np.float32), labels


def unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_prototypes_match_loop():
    features, labels = random_features()
    num_classes = labels.max() + 1
    expected = np.stack([features[labels == c].astype(np.float64).mean(axis=0)
                         for c in range(num_classes)])
    expected = unit_rows(expected)
    found = class_prototypes(features, labels, num_classes, chunk_rows=7)
    assert found.dtype == np.float32 and found.shape == expected.shape
    np.testing.assert_allclose(found, expected, atol=1e-6)
    with pytest.raises(ValueError, match="classes have no image"):
        class_prototypes(features, labels, num_classes + 1)


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.7, 0.9, 1.0])
def test_credible_mask_matches_loop(threshold):
    features, labels = random_features(seed=1)
    x = unit_rows(features.astype(np.float64))
    x = x / np.linalg.norm(x, axis=0, keepdims=True)
    expected = np.zeros(len(labels), dtype=np.uint8)
    for c in range(labels.max() + 1):
        members = np.flatnonzero(labels == c)   # ascending dataset index
        distances = np.linalg.norm(x[members] - x[members].mean(axis=0), axis=1)
        nearest = members[np.argsort(distances, kind="stable")[:math.ceil(threshold * len(members))]]
        expected[nearest] = 1
    found = credible_mask(features, labels, threshold, labels.max() + 1, chunk_rows=5)
    assert found.dtype == np.uint8
    np.testing.assert_array_equal(found, expected)


def test_credible_mask_tie_keeps_lower_index():
    features = np.array([[1, 0], [0, 1], [0, 1], [1, 0], [1, 0]], dtype=np.float32)
    labels = np.array([0, 0, 0, 0, 0])
    # after column normalisation rows 0, 3, 4 lie at 0.365 from the mean, rows 1, 2 at 0.548:
    # keeping ceil(0.4 * 5) = 2 takes the two lowest indices of the tied nearest rows
    assert credible_mask(features, labels, 0.4, 1).tolist() == [1, 0, 0, 1, 0]
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        credible_mask(features, labels, 1.5, 1)


def test_class_meta_matches_loop():
    features, labels = random_features(seed=2)
    num_classes = labels.max() + 2     # the last class has no image
    x = unit_rows(features.astype(np.float64))
    found = class_meta(features, labels, num_classes, chunk_rows=6)
    for c in range(num_classes):
        members = x[labels == c]
        if len(members) == 0:
            assert found["kept_count"][c] == 0 and not found["valid"][c]
            continue
        center = members.mean(axis=0)
        radii = sorted(np.linalg.norm(members - center, axis=1))
        n = len(radii)
        kept = radii
        if n >= 4:
            q1, q3 = radii[int(n / 4)], radii[int(3 * n / 4)]
            iqr = q3 - q1
            kept = [r for r in radii if q1 - 1.5 * iqr <= r <= q3 + 1.5 * iqr]
        np.testing.assert_allclose(found["center"][c], center, atol=1e-6)
        assert found["radius"][c] == pytest.approx(max(kept), abs=1e-6)
        assert found["kept_count"][c] == len(kept)
        assert found["valid"][c] == (len(kept) > 1)
    # the far outlier of the last populated class was dropped
    last = labels.max()
    assert found["kept_count"][last] < np.sum(labels == last)
    assert found["center"].dtype == np.float32 and found["kept_count"].dtype == np.int64


def test_features_may_be_float16_memmap(tmp_path):
    features, labels = random_features(seed=3)
    np.save(tmp_path / "f.npy", features.astype(np.float16))
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
    expected = class_prototypes(features.astype(np.float16).astype(np.float32), labels, labels.max() + 1)
    np.testing.assert_allclose(class_prototypes(mapped, labels, labels.max() + 1, chunk_rows=4),
                               expected, atol=1e-6)


# ---- the tools end to end -------------------------------------------------------------------
IDENTITY_SIZES = [3, 2, 4, 1, 5, 6, 3]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    rng = np.random.default_rng(5)
    with FaceRecWriter(root / "full") as writer:
        for label, size in enumerate(IDENTITY_SIZES):
            for _ in range(size):
                writer.add_image(label, rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
    split_main(["--input", str(root / "full")])
    torch.manual_seed(0)
    network = get_model("tiny", num_features=8)
    (root / "work").mkdir()
    torch.save(network.state_dict(), root / "work" / "model.pt")
    config = root / "old_tiny_class30.py"
    config.write_text("from easydict import EasyDict as edict\nconfig = edict()\n"
                      "config.network = 'tiny'\nconfig.embedding_size = 8\n"
                      f"config.rec = {str(root / 'full' / 'train_part_30_class')!r}\n"
                      f"config.output = {str(root / 'work')!r}\n")
    out = root / "OPclass"
    feature_main([str(config), "--SD", "tiny_class70", "--out", str(out), "--batch-size", "4",
                  "--num-workers", "0"])
    return root, config, out, network.eval()


def test_get_feature_rows_are_dataset_indices(pipeline):
    root, _, out, network = pipeline
    subset = root / "full" / "train_part_70_class"
    index = FaceRecIndex(subset)
    images = [cv2.imdecode(np.frombuffer(unpack(index.reader.read_at(offset))[1], np.uint8),
                           cv2.IMREAD_COLOR)[:, :, ::-1] for offset in index.image_offsets.tolist()]
    batch = (torch.from_numpy(np.stack(images).copy()).permute(0, 3, 1, 2).float() - 127.5) / 127.5
    with torch.no_grad():
        expected = network(batch).numpy()
    features = np.load(out / "tiny_class70_feature.npy")
    assert features.dtype == np.float32 and features.shape == (sum(IDENTITY_SIZES[2:]), 8)
    np.testing.assert_allclose(features, expected, atol=1e-4)
    np.testing.assert_array_equal(np.load(out / "tiny_class70_label.npy"), index.labels)
    dataset_print = FaceRecDataset(subset, flip=False).fingerprint()
    manifest = check_artifact(out / "tiny_class70_feature.npy", OLD_FEATURES, dataset_print,
                              expected_dim=8)
    assert manifest["model"]["network"] == "tiny" and manifest["model"]["embedding_size"] == 8
    assert not list(out.glob("*partial*")) and not list(out.glob("*.tmp*"))
    # the same features against the data split: loud mismatch
    other = FaceRecDataset(root / "full" / "train_part_70_data", flip=False).fingerprint()
    with pytest.raises(ArtifactMismatch, match="images"):
        check_artifact(out / "tiny_class70_feature.npy", OLD_FEATURES, other)


def test_get_feature_half_storage_and_autocast(pipeline, tmp_path):
    _, config, out, _ = pipeline
    feature_main([str(config), "--SD", "tiny_class70", "--out", str(tmp_path), "--num-workers", "0",
                  "--dtype", "float16", "--amp", "bf16"])
    half = np.load(tmp_path / "tiny_class70_feature.npy")
    reference = np.load(out / "tiny_class70_feature.npy")
    assert half.dtype == np.float16 and read_manifest(tmp_path / "tiny_class70_feature.npy")["dtype"] == "float16"
    # bfloat16 keeps 8 significant bits: relative error per feature vector well under 5 %
    error = np.linalg.norm(half.astype(np.float32) - reference, axis=1) / np.linalg.norm(reference, axis=1)
    assert error.max() < 0.05


def test_derived_tools_write_what_the_functions_compute(pipeline):
    root, _, out, _ = pipeline
    features = np.load(out / "tiny_class70_feature.npy")
    labels = np.load(out / "tiny_class70_label.npy")
    num_classes = labels.max() + 1
    data = ["--out", str(out), "--data", str(root / "full" / "train_part_70_class")]
    avg_main(["--SD", "tiny_class70", *data, "--chunk-rows", "3"])
    prototypes = np.load(out / "tiny_class70_avg_feature.npy")
    np.testing.assert_allclose(prototypes, class_prototypes(features, labels, num_classes), atol=1e-7)
    assert check_artifact(out / "tiny_class70_avg_feature.npy", CLASS_PROTOTYPES, None,
                          expected_rows=num_classes)["model"]["network"] == "tiny"

    denoise_main(["--T", "0.9", "--SD", "tiny_class70", "--out", str(out)])
    mask = np.load(out / "tiny_class70_credible_0.9.npy")
    np.testing.assert_array_equal(mask, credible_mask(features, labels, 0.9, num_classes))
    manifest = read_manifest(out / "tiny_class70_credible_0.9.npy")
    assert manifest["kind"] == CREDIBLE_MASK and manifest["extra"]["T"] == 0.9
    assert manifest["extra"]["kept_fraction"] == pytest.approx(mask.mean())

    meta_main(["--SD", "tiny_class70", "--out", str(out)])
    with np.load(out / "tiny_class70_class_meta.npz") as stored:
        expected = class_meta(features, labels, num_classes)
        for name, value in expected.items():
            np.testing.assert_array_equal(stored[name], value)


def test_tool_errors_are_one_line(pipeline, tmp_path, capsys):
    _, config, out, _ = pipeline
    with pytest.raises(SystemExit) as exit_info:
        denoise_main(["--T", "1.5", "--SD", "tiny_class70", "--out", str(out)])
    assert exit_info.value.code == 2 and "must be in [0, 1]" in capsys.readouterr().err
    # run from another directory without PYTHONPATH: the script finds the repository itself
    env = {**os.environ, "PYTHONPATH": ""}
    missing = subprocess.run(
        [sys.executable, str(REPO / "tools/get_feature/get_avg_feature.py"), "--SD", "tiny_class70",
         "--out", str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "does not exist" in missing.stderr


@pytest.mark.heavy
@pytest.mark.distributed
def test_get_feature_under_torchrun_matches_single_process(pipeline, tmp_path):
    _, config, out, _ = pipeline
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_port=29641", str(REPO / "tools/get_feature/get_feature.py"), str(config),
               "--SD", "tiny_class70", "--out", str(tmp_path), "--num-workers", "1",
               "--batch-size", "3"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "tiny_class70_feature.npy"),
                               np.load(out / "tiny_class70_feature.npy"), atol=1e-5)
    manifest = json.loads((tmp_path / "tiny_class70_feature.npy.json").read_text())
    assert manifest["extra"]["world_size"] == 2


def test_a_corrupt_record_in_a_loader_worker_is_one_line(pipeline, tmp_path):
    """With decode workers the tool's error is the worker's one line naming the record, not the
    worker's traceback (the engine's OneLineErrorLoader, reused)."""
    import shutil
    root, config, _, _ = pipeline
    data = tmp_path / "train_part_70_class"
    shutil.copytree(root / "full" / "train_part_70_class", data)
    index = FaceRecIndex(data)
    key, offset = int(index.image_keys[3]), int(index.image_offsets[3])
    with open(data / "train.rec", "r+b") as handle:
        handle.seek(offset + 8 + 24)   # magic + length, then the 24-byte image header: the JPEG's first bytes
        handle.write(b"\x00\x00\x00\x00")
    with pytest.raises(ValueError) as error:
        feature_main([str(config), "--SD", "tiny_class70", "--out", str(tmp_path / "out"), "--data", str(data),
                      "--batch-size", "4", "--num-workers", "1"])
    message = str(error.value)
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert f"key {key}" in message and "not a decodable image" in message
