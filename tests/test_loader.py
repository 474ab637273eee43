"""utils/data/loader.py (sampler, loader, to_device) and utils/data/feature_store.py (ArrayStore)."""
import pickle

import numpy as np
import pytest
import torch

from utils.data.datasets import FaceRecDataset
from utils.data.face_rec import FaceRecWriter
from utils.data.feature_store import ArrayStore
from utils.data.loader import ResumableDistributedSampler, build_loader, to_device


# ---- sampler ------------------------------------------------------------------------------------
def test_ranks_take_disjoint_strided_slices_of_one_permutation():
    n, world = 103, 2
    samplers = [ResumableDistributedSampler(n, world, rank, seed=5) for rank in range(world)]
    shares = [list(sampler) for sampler in samplers]
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(5)).tolist()
    assert shares[0] == permutation[0:102:2] and shares[1] == permutation[1:102:2]
    assert len(shares[0]) == len(shares[1]) == len(samplers[0]) == 51
    assert set(shares[0]).isdisjoint(shares[1])


def test_permutation_depends_on_seed_and_epoch_only():
    first, again = ResumableDistributedSampler(50, 1, 0, seed=1), ResumableDistributedSampler(50, 1, 0, seed=1)
    first.set_epoch(3)
    again.set_epoch(3)
    assert list(first) == list(again) and sorted(first) == list(range(50))
    again.set_epoch(4)
    assert list(first) != list(again)


def test_without_drop_last_ranks_are_padded_to_equal_length():
    shares = [list(ResumableDistributedSampler(5, 2, rank, seed=0, shuffle=False, drop_last=False))
              for rank in range(2)]
    assert shares == [[0, 2, 4], [1, 3, 0]]


def test_set_start_skips_the_head_for_this_epoch_only():
    sampler = ResumableDistributedSampler(40, 2, 1, seed=9)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_start(7)
    assert list(sampler) == full[7:] and len(sampler) == 13
    sampler.set_epoch(3)
    assert len(list(sampler)) == 20 and len(sampler) == 20
    with pytest.raises(ValueError, match=r"start 21 is outside 0\.\.20"):
        sampler.set_start(21)


# ---- loader -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def asymmetric_set(tmp_path_factory):
    """Two identities of a left/right-asymmetric PNG image (exact pixels after decoding)."""
    rec_dir = tmp_path_factory.mktemp("asym")
    image_rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    image_rgb[:, :3, 0] = 255
    image_rgb[2, :, 1] = np.arange(8) * 30
    with FaceRecWriter(rec_dir, image_size=(8, 8)) as writer:
        for number in range(64):
            writer.add_image(number * 2 // 64, image_rgb[:, :, ::-1], quality=1, img_fmt=".png")
    return rec_dir, torch.from_numpy(image_rgb).permute(2, 0, 1)


def test_batches_carry_per_sample_rows_looked_up_by_index(asymmetric_set, tmp_path):
    rec_dir, _ = asymmetric_set
    features = np.arange(64 * 3, dtype=np.float32).reshape(64, 3)
    np.save(tmp_path / "features.npy", features)
    mask = np.arange(64) % 3 == 0
    arrays = {"old_features": ArrayStore(tmp_path / "features.npy"), "mask": mask}
    dataset = FaceRecDataset(rec_dir)
    loader, sampler = build_loader(dataset, 8, rank=1, world_size=2, seed=3, num_workers=2, per_sample_arrays=arrays)
    batches = list(loader)
    assert len(batches) == 4
    seen = torch.cat([batch["index"] for batch in batches])
    assert seen.tolist() == list(sampler)
    for batch in batches:
        assert batch["image"].dtype == torch.uint8 and tuple(batch["image"].shape) == (8, 3, 8, 8)
        assert torch.equal(batch["old_features"], torch.from_numpy(features[batch["index"].numpy()]))
        assert torch.equal(batch["mask"], torch.from_numpy(mask[batch["index"].numpy()]))
        assert batch["label"].tolist() == [int(index) * 2 // 64 for index in batch["index"]]


def test_flip_happens_about_half_the_time_and_exactly(asymmetric_set):
    rec_dir, original = asymmetric_set
    loader, sampler = build_loader(FaceRecDataset(rec_dir), 16, rank=0, world_size=1, seed=0, num_workers=0)
    flips = 0
    for epoch in range(8):
        sampler.set_epoch(epoch)
        for batch in loader:
            mirrored = (batch["image"] == original.flip(2)).flatten(1).all(1)
            unchanged = (batch["image"] == original).flatten(1).all(1)
            assert bool((mirrored ^ unchanged).all())
            flips += int(mirrored.sum())
    # 512 fair coin flips: mean 256, standard deviation ~11.3; 196..316 is beyond 5 sigma.
    assert 196 <= flips <= 316


def test_resume_start_yields_the_tail(asymmetric_set):
    rec_dir, _ = asymmetric_set
    dataset = FaceRecDataset(rec_dir)
    full, sampler = build_loader(dataset, 4, rank=0, world_size=2, seed=11, num_workers=0)
    resumed, _ = build_loader(dataset, 4, rank=0, world_size=2, seed=11, num_workers=0, start=12)
    full_indices = torch.cat([batch["index"] for batch in full]).tolist()
    assert torch.cat([batch["index"] for batch in resumed]).tolist() == full_indices[12:]


@pytest.mark.parametrize("channels_last", [False, True])
def test_to_device_normalises(channels_last):
    values = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8)
    image = values.repeat(2, 3, 6, 1)
    batch = {"image": image, "label": torch.tensor([4, 5]), "index": torch.tensor([0, 1])}
    moved = to_device(batch, torch.device("cpu"), channels_last=channels_last)
    expected = (values.double() - 127.5) / 127.5
    assert moved["image"].dtype == torch.float32
    torch.testing.assert_close(moved["image"][1, 2, 3], expected.float(), rtol=0, atol=1e-7)
    assert moved["image"].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert moved["label"].tolist() == [4, 5]


# ---- ArrayStore ---------------------------------------------------------------------------------
def test_array_store_rows_pickle_and_dtypes(tmp_path):
    features = np.random.default_rng(0).standard_normal((300, 40)).astype(np.float16)
    np.save(tmp_path / "half.npy", features)
    store = ArrayStore(tmp_path / "half.npy")
    assert store.shape == (300, 40) and store.dtype == np.float16 and store._array is None
    rows = store[np.array([299, 0, 7, 7])]
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, features[[299, 0, 7, 7]].astype(np.float32))
    assert len(pickle.dumps(store)) < 1000 < features.nbytes
    assert pickle.loads(pickle.dumps(store))[np.array([3])].tolist() == features[[3]].astype(np.float32).tolist()
    np.save(tmp_path / "mask.npy", np.arange(300) % 2 == 0)
    mask_rows = ArrayStore(tmp_path / "mask.npy")[np.array([1, 2])]
    assert mask_rows.dtype == np.bool_ and mask_rows.tolist() == [False, True]


def test_array_store_normalises_rows(tmp_path):
    np.save(tmp_path / "f.npy", np.array([[3.0, 4.0], [0.0, 2.0], [0.0, 0.0]], dtype=np.float32))
    rows = ArrayStore(tmp_path / "f.npy", normalise_rows=True)[np.array([0, 1, 2])]
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 1.0], [0.0, 0.0]], rtol=1e-6)


def test_array_store_errors(tmp_path):
    with pytest.raises(ValueError, match=r"missing\.npy: array file not found"):
        ArrayStore(tmp_path / "missing.npy")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match=r"bad\.npy: not a readable \.npy file"):
        ArrayStore(tmp_path / "bad.npy")
    np.save(tmp_path / "labels.npy", np.arange(5))
    with pytest.raises(ValueError, match=r"labels\.npy: row normalisation needs a 2-D float array"):
        ArrayStore(tmp_path / "labels.npy", normalise_rows=True)


def test_per_sample_array_length_must_match(asymmetric_set):
    dataset = FaceRecDataset(asymmetric_set[0])
    with pytest.raises(ValueError, match=r"per-sample array 'old_features' has 63 rows, the data set has 64"):
        build_loader(dataset, 8, 0, 1, 0, 0, per_sample_arrays={"old_features": np.zeros((63, 2))})
