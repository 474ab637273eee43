"""utils/training/verification.py: .bin loading (py3 and py2 pickles), flip-sum embedding, and the 10-fold
accuracy against a naive loop implementation written here."""
import pickle
import struct

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from utils.training.verification import embed_images, kfold_accuracy, ordered_folds
from utils.data.bin_sets import find_bin, load_bin


def random_rgb_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 112, 112, 3), dtype=np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))[1].tobytes()


def python2_pickle(bins, issame) -> bytes:
    """What Python 2 writes for (list of str, list of bool) with protocol 2 (BINSTRING opcodes)."""
    out = b"\x80\x02]("
    for payload in bins:
        out += b"T" + struct.pack("<i", len(payload)) + payload
    out += b"e]("
    out += b"".join(b"\x88" if same else b"\x89" for same in issame)
    return out + b"e\x86."


def naive_accuracy(embeddings1, embeddings2, issame, folds=10):
    """Loop version of the insightface protocol: best threshold on 9 folds, accuracy on the 10th."""
    thresholds = [step / 100 for step in range(400)]
    count = len(issame)
    distances = [float(np.sum((embeddings1[i] - embeddings2[i]) ** 2)) for i in range(count)]
    fold_sizes = [count // folds + (1 if k < count % folds else 0) for k in range(folds)]
    accuracies, start = [], 0
    for size in fold_sizes:
        test = list(range(start, start + size))
        train = [i for i in range(count) if i not in test]
        start += size
        best_threshold, best_accuracy = None, -1.0
        for threshold in thresholds:
            accuracy = sum((distances[i] < threshold) == issame[i] for i in train) / len(train)
            if accuracy > best_accuracy:
                best_threshold, best_accuracy = threshold, accuracy
        accuracies.append(sum((distances[i] < best_threshold) == issame[i] for i in test) / len(test))
    return np.array(accuracies)


def test_load_bin_python3_bytes_and_uint8_arrays(tmp_path):
    images = random_rgb_images(6)
    issame = [True, False, True]
    encoded = [png_bytes(image) for image in images]
    as_arrays = [np.frombuffer(payload, dtype=np.uint8) for payload in encoded]
    for name, bins in (("bytes", encoded), ("arrays", as_arrays)):
        path = tmp_path / f"{name}.bin"
        path.write_bytes(pickle.dumps((bins, issame), protocol=4))
        loaded, loaded_issame = load_bin(path)
        assert loaded.dtype == torch.uint8 and tuple(loaded.shape) == (6, 3, 112, 112)
        np.testing.assert_array_equal(loaded.numpy(), images.transpose(0, 3, 1, 2))
        assert loaded_issame.tolist() == issame


def test_load_bin_python2_pickle_needs_bytes_encoding(tmp_path):
    images = random_rgb_images(4, seed=1)
    path = tmp_path / "old.bin"
    path.write_bytes(python2_pickle([png_bytes(image) for image in images], [False, True]))
    loaded, issame = load_bin(path)
    np.testing.assert_array_equal(loaded.numpy(), images.transpose(0, 3, 1, 2))
    assert issame.tolist() == [False, True]


def test_load_bin_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        load_bin(tmp_path / "missing.bin")
    path = tmp_path / "short.bin"
    path.write_bytes(pickle.dumps(([png_bytes(random_rgb_images(1)[0])], [True])))
    with pytest.raises(ValueError, match="short.bin: 1 images for 1 pairs"):
        load_bin(path)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(pickle.dumps(([b"not an image", b"nor this"], [True])))
    with pytest.raises(ValueError, match="garbage.bin: image 0 cannot be decoded"):
        load_bin(garbage)


def test_find_bin_looks_in_rec_then_parent(tmp_path):
    subset = tmp_path / "train_part_30_class"
    subset.mkdir()
    (tmp_path / "lfw.bin").write_bytes(b"x")
    assert find_bin(str(subset), "lfw") == tmp_path / "lfw.bin"
    (subset / "lfw.bin").write_bytes(b"y")
    assert find_bin(str(subset), "lfw") == subset / "lfw.bin"
    with pytest.raises(FileNotFoundError, match="cfp_fp"):
        find_bin(str(subset), "cfp_fp")


def test_embedding_is_normalised_sum_of_image_and_flip():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(3 * 14 * 14, 8))
    images = torch.from_numpy(random_rgb_images(5, seed=2).transpose(0, 3, 1, 2).copy())
    embeddings = embed_images(backbone, images, torch.device("cpu"), batch_size=2)
    floats = (images.float() - 127.5) / 127.5
    with torch.no_grad():
        summed = backbone(floats) + backbone(floats.flip(3))
    expected = summed / summed.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(embeddings, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_kfold_accuracy_matches_naive_loops():
    rng = np.random.default_rng(3)
    count = 203  # not a multiple of 10: unequal folds, as sklearn KFold makes them
    issame = rng.random(count) < 0.5
    base = rng.normal(size=(count, 16))
    noise = rng.normal(size=(count, 16))
    embeddings1 = base / np.linalg.norm(base, axis=1, keepdims=True)
    other = np.where(issame[:, None], base + 0.9 * noise, noise)
    embeddings2 = other / np.linalg.norm(other, axis=1, keepdims=True)
    accuracies, thresholds = kfold_accuracy(embeddings1, embeddings2, issame)
    np.testing.assert_allclose(accuracies, naive_accuracy(embeddings1, embeddings2, issame.tolist()))
    assert thresholds.shape == (10,) and 0.0 < accuracies.mean() < 1.0


def test_folds_are_sklearn_kfold_without_shuffle():
    from sklearn.model_selection import KFold
    for count in (10, 203, 6000):
        expected = [test for _, test in KFold(n_splits=10, shuffle=False).split(np.zeros(count))]
        for ours, theirs in zip(ordered_folds(count, 10), expected):
            np.testing.assert_array_equal(ours, theirs)
