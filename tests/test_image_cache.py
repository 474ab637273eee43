"""The decoded-image cache serves exactly the decoding dataset's items, from one file that later
datasets and loader workers reuse; large or mixed-size sets and other datasets are left alone."""
import os
import random

import cv2
import numpy as np
import pytest
import torch

from utils.data.datasets import FaceRecDataset
from utils.data.face_rec import FaceRecWriter
from utils.data.image_cache import CACHE_FOLDER, DecodedFaceRecDataset, with_image_cache
from utils.data.loader import build_loader


def write_rec(folder, sizes):
    rng = np.random.default_rng(0)
    with FaceRecWriter(folder, image_size=sizes[0]) as writer:
        for number, (height, width) in enumerate(sizes):
            writer.add_image(number * 3 // len(sizes), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def rec(tmp_path):
    write_rec(tmp_path, [(20, 24)] * 9)
    return tmp_path


def test_items_equal_the_decoding_dataset_and_the_file_is_reused(rec):
    plain = FaceRecDataset(rec, flip=False)
    cached = with_image_cache(FaceRecDataset(rec, flip=False), min_images=1)
    assert isinstance(cached, DecodedFaceRecDataset)
    files = list((rec / CACHE_FOLDER).glob("*.npy"))
    assert len(files) == 1 and cached.images_path == files[0]
    for index in range(len(plain)):
        image, label, position = cached[index]
        expected = plain[index]
        assert image.dtype == torch.uint8 and torch.equal(image, expected[0])
        assert (label, position) == (expected[1], expected[2])
    assert cached.fingerprint() == plain.fingerprint()
    stamp = os.stat(files[0]).st_mtime_ns
    again = with_image_cache(FaceRecDataset(rec, flip=False), min_images=1)
    assert again.images_path == files[0] and os.stat(files[0]).st_mtime_ns == stamp  # mapped, not rewritten
    assert torch.equal(again[4][0], plain[4][0])


def test_flip_draws_and_mirrors_like_the_decoding_dataset(rec):
    plain = FaceRecDataset(rec, flip=True)
    cached = with_image_cache(FaceRecDataset(rec, flip=True), min_images=1)
    unflipped = FaceRecDataset(rec, flip=False)
    mirrored = 0
    for index in range(len(plain)):
        random.seed(index)
        expected = plain[index][0]
        random.seed(index)
        image = cached[index][0]
        assert torch.equal(image, expected)
        # mirrored along the width, the last axis of [3, H, W]
        mirrored += not torch.equal(image, unflipped[index][0])
        assert torch.equal(image, unflipped[index][0]) or torch.equal(image, unflipped[index][0].flip(-1))
    assert 0 < mirrored < len(plain)


def test_loader_workers_read_the_mapped_file(rec):
    cached = with_image_cache(FaceRecDataset(rec, flip=False), min_images=1)
    loader, sampler = build_loader(cached, 4, rank=0, world_size=1, seed=0, num_workers=2)
    sampler.set_epoch(0)
    seen = {}
    for batch in loader:
        for image, index in zip(batch["image"], batch["index"].tolist()):
            seen[index] = image
    plain = FaceRecDataset(rec, flip=False)
    assert len(seen) == 8 and set(seen) <= set(range(len(plain)))   # the sampler drops the last partial batch
    assert all(torch.equal(seen[i], plain[i][0]) for i in seen)


def test_large_small_or_mixed_size_sets_keep_decoding(tmp_path, rec):
    assert type(with_image_cache(FaceRecDataset(rec, flip=False), limit_bytes=9 * 20 * 24 * 3 - 1,
                                 min_images=1)) is FaceRecDataset
    # fewer images than min_images (the default 1000 here): decoded as before, nothing written
    assert type(with_image_cache(FaceRecDataset(rec, flip=False))) is FaceRecDataset
    assert not (rec / CACHE_FOLDER).exists()
    mixed = tmp_path / "mixed"
    write_rec(mixed, [(20, 24), (20, 24), (22, 24)])
    assert type(with_image_cache(FaceRecDataset(mixed, flip=False), min_images=1)) is FaceRecDataset
    assert not (mixed / CACHE_FOLDER).exists() or not list((mixed / CACHE_FOLDER).glob("*.npy"))


def test_a_rewritten_rec_gets_a_new_cache(rec):
    first = with_image_cache(FaceRecDataset(rec, flip=False), min_images=1)
    write_rec(rec, [(20, 24)] * 5)
    second = with_image_cache(FaceRecDataset(rec, flip=False), min_images=1)
    assert second.images_path != first.images_path and len(second) == 5
    assert torch.equal(second[2][0], FaceRecDataset(rec, flip=False)[2][0])


def test_a_same_size_in_place_edit_with_the_mtime_restored_gets_a_new_cache(tmp_path):
    """The key is the rec's content: an edit that keeps the size and the modification time (BMP
    records: same dimensions, same bytes) still means decoding again, never the old pixels."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(10)]
    with FaceRecWriter(tmp_path, image_size=(20, 24)) as writer:
        for number, image in enumerate(images):
            writer.add_image(number // 5, image, img_fmt=".bmp")
    first = with_image_cache(FaceRecDataset(tmp_path, flip=False), min_images=1)
    rec_path = tmp_path / "train.rec"
    status = os.stat(rec_path)
    content = rec_path.read_bytes()
    replacement = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    old_bytes, new_bytes = (cv2.imencode(".bmp", image)[1].tobytes() for image in (images[7], replacement))
    assert len(old_bytes) == len(new_bytes) and content.count(old_bytes) == 1
    with open(rec_path, "r+b") as handle:   # in place: same file, same size
        handle.seek(content.index(old_bytes))
        handle.write(new_bytes)
    os.utime(rec_path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert os.stat(rec_path).st_size == status.st_size and os.stat(rec_path).st_mtime_ns == status.st_mtime_ns
    second = with_image_cache(FaceRecDataset(tmp_path, flip=False), min_images=1)
    assert second.images_path != first.images_path
    expected = torch.from_numpy(cv2.cvtColor(replacement, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)
    assert torch.equal(second[7][0], expected)
    assert torch.equal(second[6][0], first[6][0])


def test_a_touch_without_a_change_reuses_the_cache(rec):
    first = with_image_cache(FaceRecDataset(rec, flip=False), min_images=1)
    os.utime(rec / "train.rec", ns=(1, 10 ** 18))
    again = with_image_cache(FaceRecDataset(rec, flip=False), min_images=1)
    assert again.images_path == first.images_path
