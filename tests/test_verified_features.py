"""The artifact tools verify the old feature file in the pass that reads it: the rows they see and
the checksum they compare are those of content_sha256 (tested independently in test_safety), an
edited file is refused with nothing written, and the statistics equal those of the plain array."""
import os

import numpy as np
import pytest

from tools.denoising.denoise_credible import main as denoise_main
from tools.get_feature.get_avg_feature import main as avg_main
from tools.get_feature.get_class_meta import main as meta_main
from utils.artifacts.class_statistics import class_meta, class_prototypes, credible_mask
from utils.artifacts.manifests import OLD_FEATURES, OLD_LABELS, ArtifactMismatch, write_manifest
from utils.artifacts.verified_features import VerifiedFeatures
from utils.common.checksums import content_sha256

SD = "tiny_class70"


def write_features(folder, rows=301, dim=12, seed=0, dtype=np.float32):
    """Old features with manifests, classes contiguous and one class split in two runs."""
    rng = np.random.default_rng(seed)
    labels = np.sort(rng.integers(0, 17, rows))
    labels[-5:] = 3                           # a class whose rows are not contiguous
    features = (rng.normal(size=(rows, dim)) + 2 * rng.normal(size=(17, dim))[labels]).astype(dtype)
    dataset = {"name": "synthetic", "num_image": rows, "num_classes": 17}
    for name, array, kind in (("feature", features, OLD_FEATURES), ("label", labels, OLD_LABELS)):
        path = folder / f"{SD}_{name}.npy"
        np.save(path, array)
        write_manifest(path, kind=kind, tool="test", args={}, dataset=dataset, shape=array.shape,
                       dtype=array.dtype, model={"network": "tiny", "sha256": "0" * 64})
    return features, labels, folder / f"{SD}_feature.npy"


@pytest.mark.parametrize("block_bytes", [100, 1000, 4096, 1 << 26])    # 100: the .npy header spans blocks
def test_verifying_pass_yields_every_row_once_and_checks_the_tree_hash(tmp_path, block_bytes):
    features, _, path = write_features(tmp_path)
    manifest = {"content_sha256": content_sha256(path, block_bytes=block_bytes)}
    reader = VerifiedFeatures(path, manifest, block_bytes=block_bytes)
    seen = [(rows, block.copy()) for rows, block in reader.row_blocks()]
    assert reader.verified
    assert [rows.start for rows, _ in seen] == sorted({rows.start for rows, _ in seen})
    np.testing.assert_array_equal(np.concatenate([block for _, block in seen]), features)
    assert seen[-1][0].stop == len(features)
    again = np.concatenate([block.copy() for _, block in reader.row_blocks()])   # a later pass: no hash
    np.testing.assert_array_equal(again, features)


def test_a_changed_byte_is_refused_at_the_end_of_the_pass(tmp_path):
    _, _, path = write_features(tmp_path)
    manifest = {"content_sha256": content_sha256(path, block_bytes=4096)}
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size - 3)
        handle.write(b"\x7f")
    reader = VerifiedFeatures(path, manifest, block_bytes=4096)
    with pytest.raises(ArtifactMismatch, match="modified or replaced after it was written"):
        for _ in reader.row_blocks():
            pass
    assert not reader.verified
    with pytest.raises(ArtifactMismatch, match="records no content checksum"):
        VerifiedFeatures(path, {"tool": "get_feature.py"})


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_statistics_through_the_verified_reader_equal_the_plain_array(tmp_path, dtype):
    features, labels, path = write_features(tmp_path, dtype=dtype)
    block_bytes = 1000                        # many blocks, rows straddling their boundaries
    manifest = {"content_sha256": content_sha256(path, block_bytes=block_bytes)}

    def reader():
        return VerifiedFeatures(path, manifest, block_bytes=block_bytes)

    np.testing.assert_array_equal(class_prototypes(reader(), labels, 17, chunk_rows=7),
                                  class_prototypes(features, labels, 17))
    np.testing.assert_array_equal(credible_mask(reader(), labels, 0.7, 17, chunk_rows=7),
                                  credible_mask(features, labels, 0.7, 17))
    found, expected = class_meta(reader(), labels, 17, chunk_rows=7), class_meta(features, labels, 17)
    for name in expected:
        np.testing.assert_array_equal(found[name], expected[name])


@pytest.mark.parametrize("tool, output", [(avg_main, f"{SD}_avg_feature.npy"),
                                          (meta_main, f"{SD}_class_meta.npz"),
                                          (lambda argv: denoise_main(["--T", "0.9", *argv]), f"{SD}_credible_0.9.npy")])
def test_tools_refuse_an_edited_feature_file_and_write_nothing(tmp_path, tool, output):
    features, _, path = write_features(tmp_path)
    tool(["--SD", SD, "--out", str(tmp_path)])
    assert (tmp_path / output).is_file()
    (tmp_path / output).unlink()
    (tmp_path / f"{output}.json").unlink()
    edited = np.load(path)
    edited[100, 3] += 1.0                     # same shape and dtype: only the bytes differ
    np.save(path, edited)
    with pytest.raises(ArtifactMismatch, match="modified or replaced"):
        tool(["--SD", SD, "--out", str(tmp_path)])
    assert sorted(item.name for item in tmp_path.iterdir()) == sorted(
        [f"{SD}_feature.npy", f"{SD}_feature.npy.json", f"{SD}_label.npy", f"{SD}_label.npy.json"])


def test_a_verified_file_is_not_hashed_again_until_it_changes(tmp_path, monkeypatch):
    from utils.artifacts import manifests
    from utils.common import verified_stamp
    _, _, path = write_features(tmp_path)
    monkeypatch.setattr(verified_stamp, "RACY_SECONDS", 0.0)      # the file was written just now
    recorded = manifests.read_manifest(path)
    hashed = []
    real_hash = manifests.content_sha256
    monkeypatch.setattr(manifests, "content_sha256", lambda *a, **k: hashed.append(a) or real_hash(*a, **k))
    manifests.check_content(path, recorded)
    manifests.check_content(path, recorded)
    assert len(hashed) == 1 and verified_stamp.stamp_path(path).is_file()
    assert VerifiedFeatures(path, recorded).verified                  # the tools' reader skips it too
    # an in-place edit with its mtime put back: the ctime still moves, so the file is hashed again
    status = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(status.st_size - 2)
        handle.write(b"\x01")
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert not VerifiedFeatures(path, recorded).verified
    with pytest.raises(ArtifactMismatch, match="modified or replaced"):
        manifests.check_content(path, recorded)
    assert len(hashed) == 2


def test_no_stamp_for_a_file_changed_within_the_racy_window(tmp_path):
    from utils.artifacts import manifests
    from utils.common import verified_stamp
    _, _, path = write_features(tmp_path)
    manifests.check_content(path, manifests.read_manifest(path))        # just written: racy
    assert not verified_stamp.stamp_path(path).exists()
