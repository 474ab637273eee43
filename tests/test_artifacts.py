"""utils/artifacts/manifests.py: manifests, atomic saves, naming of scenario files, and every guard."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from utils.artifacts.manifests import (CLASS_META, CLASS_PROTOTYPES, CREDIBLE_MASK, OLD_FEATURES, OLD_LABELS, ArtifactMismatch, artifact_paths, check_artifact, credible_path, load_old_features, manifest_path, model_record, publish_artifact, read_manifest, save_array_atomic, save_npz_atomic, scenario_dir, subset_of, subset_rec_dir)
from utils.common.checksums import file_sha256
from utils.data.datasets import labels_sha256

LABELS = np.array([0, 0, 1, 2, 2, 2], dtype=np.int64)


def fingerprint(labels=LABELS, name="train_part_70_class", num_classes=3, index="ab" * 32):
    return {"name": name, "num_image": len(labels), "num_classes": num_classes,
            "labels_sha256": labels_sha256(labels), "index_sha256": index}


def save_features(folder: Path, rows=6, dim=4, kind=OLD_FEATURES, dataset=None, name="x_feature.npy"):
    path = folder / name
    array = np.arange(rows * dim, dtype=np.float32).reshape(rows, dim)
    save_array_atomic(path, array, kind=kind, tool="test", args={"SD": "x"},
                      dataset=dataset or fingerprint(), model=None, extra={"note": 1})
    return path, array


def test_manifest_fields_and_atomic_save(tmp_path):
    model_file = tmp_path / "model.pt"
    model_file.write_bytes(b"weights" * 1000)
    model = model_record(model_file, "r18", 128)
    path = tmp_path / "f_feature.npy"
    array = np.ones((6, 4), dtype=np.float16)
    save_array_atomic(path, array, kind=OLD_FEATURES, tool="tools/x.py", args={"T": "0.9"},
                      dataset=fingerprint(), model=model)
    manifest = json.loads(manifest_path(path).read_text())
    assert manifest_path(path).name == "f_feature.npy.json"
    assert manifest["kind"] == OLD_FEATURES and manifest["tool"] == "tools/x.py"
    assert manifest["args"] == {"T": "0.9"} and manifest["created"]
    assert manifest["shape"] == [6, 4] and manifest["dtype"] == "float16"
    assert manifest["dataset"] == fingerprint()
    assert manifest["model"]["sha256"] == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert manifest["model"]["network"] == "r18" and manifest["model"]["embedding_size"] == 128
    assert read_manifest(path) == manifest
    np.testing.assert_array_equal(np.load(path), array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f_feature.npy", "f_feature.npy.json", "model.pt"]


def test_file_sha256_chunked(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    (tmp_path / "blob").write_bytes(data)
    assert file_sha256(tmp_path / "blob", chunk_bytes=333) == hashlib.sha256(data).hexdigest()


def test_check_passes_and_returns_manifest(tmp_path):
    path, _ = save_features(tmp_path)
    manifest = check_artifact(path, OLD_FEATURES, fingerprint(), expected_dim=4, expected_rows=6)
    assert manifest["extra"] == {"note": 1}


def test_missing_file_and_missing_manifest(tmp_path):
    with pytest.raises(ArtifactMismatch, match="does not exist"):
        check_artifact(tmp_path / "none.npy", OLD_FEATURES, fingerprint())
    np.save(tmp_path / "bare.npy", np.zeros((6, 4)))
    with pytest.raises(ArtifactMismatch, match="has no manifest bare.npy.json"):
        check_artifact(tmp_path / "bare.npy", OLD_FEATURES, fingerprint())


def test_wrong_kind(tmp_path):
    path, _ = save_features(tmp_path, kind=CLASS_PROTOTYPES)
    with pytest.raises(ArtifactMismatch, match="'class_prototypes' artifact, expected 'old_features'"):
        check_artifact(path, OLD_FEATURES, fingerprint())


def test_num_image_differs_names_both_datasets(tmp_path):
    path, _ = save_features(tmp_path)
    other = fingerprint(labels=np.zeros(7, dtype=np.int64), name="train_part_70_data")
    with pytest.raises(ArtifactMismatch, match=r"6 images \(dataset train_part_70_class\).*7 images "
                                               r"\(train_part_70_data\)"):
        check_artifact(path, OLD_FEATURES, other)


def test_labels_checksum_differs(tmp_path):
    path, _ = save_features(tmp_path)
    reordered = fingerprint(labels=LABELS[::-1].copy())
    with pytest.raises(ArtifactMismatch, match="other labels"):
        check_artifact(path, OLD_FEATURES, reordered)


def test_index_checksum_differs(tmp_path):
    path, _ = save_features(tmp_path)
    with pytest.raises(ArtifactMismatch, match="index_sha256"):
        check_artifact(path, OLD_FEATURES, fingerprint(index="cd" * 32))


def test_num_classes_checked_for_per_class_artifacts_only(tmp_path):
    prototypes, _ = save_features(tmp_path, rows=3, kind=CLASS_PROTOTYPES, name="p.npy")
    more_classes = fingerprint(num_classes=4)
    with pytest.raises(ArtifactMismatch, match="3 classes .* 4 classes"):
        check_artifact(prototypes, CLASS_PROTOTYPES, more_classes)
    features, _ = save_features(tmp_path)
    check_artifact(features, OLD_FEATURES, more_classes)


def test_feature_size_and_rows(tmp_path):
    path, _ = save_features(tmp_path)
    with pytest.raises(ArtifactMismatch, match="features of size 4 but the config expects 128"):
        check_artifact(path, OLD_FEATURES, fingerprint(), expected_dim=128)
    with pytest.raises(ArtifactMismatch, match="has 6 rows, expected 5"):
        check_artifact(path, OLD_FEATURES, fingerprint(), expected_rows=5)
    # the array replaced behind the manifest's back
    np.save(path, np.zeros((5, 4), dtype=np.float32))
    with pytest.raises(ArtifactMismatch, match=r"shape \[5, 4\] but its manifest says \[6, 4\]"):
        check_artifact(path, OLD_FEATURES, fingerprint())


def test_old_network_differs(tmp_path):
    model_file = tmp_path / "model.pt"
    model_file.write_bytes(b"w")
    path = tmp_path / "f.npy"
    save_array_atomic(path, np.zeros((6, 4), np.float32), kind=OLD_FEATURES, tool="t", args={},
                      dataset=fingerprint(), model=model_record(model_file, "r18", 4))
    check_artifact(path, OLD_FEATURES, fingerprint(), expected_network="r18")
    with pytest.raises(ArtifactMismatch, match="old network 'r18' but the config says old_network = 'r50'"):
        check_artifact(path, OLD_FEATURES, fingerprint(), expected_network="r50")


def test_corrupt_manifest(tmp_path):
    path, _ = save_features(tmp_path)
    manifest_path(path).write_text("{not json")
    with pytest.raises(ArtifactMismatch, match="not valid JSON"):
        check_artifact(path, OLD_FEATURES, fingerprint())


def test_publish_replaces_artifact_and_manifest_together(tmp_path):
    path, _ = save_features(tmp_path)
    replacement = tmp_path / "new.npy"
    np.save(replacement, np.zeros((6, 4), dtype=np.float32))
    manifest = publish_artifact(replacement, path, kind=OLD_FEATURES, tool="t2", args={}, dataset=fingerprint(),
                                shape=(6, 4), dtype="float32")
    assert not replacement.exists() and read_manifest(path) == manifest and manifest["tool"] == "t2"
    check_artifact(path, OLD_FEATURES, fingerprint())
    assert np.array_equal(np.load(path), np.zeros((6, 4)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_feature.npy", "x_feature.npy.json"]


@pytest.mark.parametrize("interleave_at", ["checksum", "rename"])
def test_concurrent_writer_never_leaves_its_array_under_the_other_manifest(tmp_path, monkeypatch, interleave_at):
    """Writer B runs from start to end while writer A is at its checksum (or at the rename of its
    array into place): whatever pair is left, a reader that accepts it reads the array of the
    model its manifest names."""
    import os as os_module
    import utils.artifacts.manifests as manifests
    path = tmp_path / "s_class70_feature.npy"
    arrays, models = {}, {}
    for name, fill in (("A", 1.0), ("B", 2.0)):
        models[name] = tmp_path / f"{name}.pt"
        models[name].write_bytes(name.encode() * 64)
        arrays[name] = np.full((6, 4), fill, np.float32)

    def save(name):
        save_array_atomic(path, arrays[name], kind=OLD_FEATURES, tool="t", args={}, dataset=fingerprint(),
                          model=model_record(models[name], "r18", 4))

    interleaved = []

    def writer_b_once():
        if not interleaved:
            interleaved.append(True)
            save("B")

    real_checksum, real_replace = manifests.content_sha256, os_module.replace

    def checksum(file, *args, **kwargs):
        writer_b_once()
        return real_checksum(file, *args, **kwargs)

    def replace(source, destination, *args, **kwargs):
        result = real_replace(source, destination, *args, **kwargs)
        if Path(destination) == path:
            writer_b_once()
        return result

    if interleave_at == "checksum":
        monkeypatch.setattr(manifests, "content_sha256", checksum)
    else:
        monkeypatch.setattr(os_module, "replace", replace)
    save("A")
    monkeypatch.undo()
    assert interleaved
    try:
        manifest = check_artifact(path, OLD_FEATURES, fingerprint())
    except ArtifactMismatch as refusal:
        assert "no longer matches its manifest" in str(refusal)
        return
    named = next(name for name in models if manifest["model"]["sha256"] == file_sha256(models[name]))
    assert np.array_equal(np.load(path), arrays[named]), f"model {named}'s manifest over another model's array"


def test_npz_artifact(tmp_path):
    meta = {"center": np.zeros((3, 4), np.float32), "radius": np.ones(3, np.float32),
            "kept_count": np.arange(3), "valid": np.array([True, False, True])}
    path = tmp_path / "m_class_meta.npz"
    save_npz_atomic(path, meta, main_array="center", kind=CLASS_META, tool="t", args={},
                    dataset=fingerprint(), extra={"valid_classes": 2})
    manifest = check_artifact(path, CLASS_META, fingerprint(), expected_dim=4, expected_rows=3)
    assert manifest["extra"]["arrays"]["radius"] == [3] and manifest["extra"]["valid_classes"] == 2
    with pytest.raises(ArtifactMismatch, match="expects 8"):
        check_artifact(path, CLASS_META, fingerprint(), expected_dim=8)


def test_load_old_features_checks_labels_file(tmp_path):
    features_path, features = save_features(tmp_path, name="s_class70_feature.npy")
    save_array_atomic(tmp_path / "s_class70_label.npy", LABELS, kind=OLD_LABELS, tool="t",
                      args={}, dataset=fingerprint())
    loaded, labels, manifest, num_classes = load_old_features("s_class70", tmp_path)
    np.testing.assert_array_equal(loaded, features)
    np.testing.assert_array_equal(labels, LABELS)
    assert num_classes == 3 and manifest["kind"] == OLD_FEATURES
    # a labels file whose content is not the fingerprinted labels
    save_array_atomic(tmp_path / "s_class70_label.npy", LABELS[::-1].copy(), kind=OLD_LABELS,
                      tool="t", args={}, dataset=fingerprint())
    with pytest.raises(ArtifactMismatch, match="holds labels with sha256"):
        load_old_features("s_class70", tmp_path)
    # the features checked against another data set
    with pytest.raises(ArtifactMismatch, match="other labels"):
        load_old_features("s_class70", tmp_path, fingerprint(labels=np.array([0, 1, 1, 1, 2, 2])))


def test_scenario_naming(tmp_path):
    assert subset_of("f128_r18_softmax_class70") == "class70"
    with pytest.raises(ValueError, match="must end in one of"):
        subset_of("f128_r18_softmax_class50")
    assert scenario_dir("f512_r18_arc_data100", tmp_path) == tmp_path / "EXdata"
    assert scenario_dir("f512_r18_arc_class100", tmp_path) == tmp_path / "EXclass"
    assert scenario_dir("f512_r18_arc_data70", tmp_path) == tmp_path / "OPdata"
    assert scenario_dir("f512_r18_arc_class70", tmp_path) == tmp_path / "OPclass"
    assert scenario_dir("f512_r18_arc_class30", tmp_path, out_dir=tmp_path / "o") == tmp_path / "o"
    with pytest.raises(ValueError, match="pass --out"):
        scenario_dir("f512_r18_arc_class30", tmp_path)
    assert subset_rec_dir("a_class70", tmp_path) == (tmp_path / "train_part_70_class").resolve()
    assert subset_rec_dir("a_data30", tmp_path) == (tmp_path / "train_part_30_data").resolve()
    assert subset_rec_dir("a_data100", tmp_path) == tmp_path.resolve()
    paths = artifact_paths("f128_r18_softmax_class70", tmp_path)
    assert {kind: path.name for kind, path in paths.items()} == {
        OLD_FEATURES: "f128_r18_softmax_class70_feature.npy",
        OLD_LABELS: "f128_r18_softmax_class70_label.npy",
        CLASS_PROTOTYPES: "f128_r18_softmax_class70_avg_feature.npy",
        CLASS_META: "f128_r18_softmax_class70_class_meta.npz"}
    assert credible_path("s_class70", tmp_path, "0.9").name == "s_class70_credible_0.9.npy"
    assert CREDIBLE_MASK == "credible_mask"
