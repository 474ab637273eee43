"""Fault injection (issue 11, "safe by construction"): a malicious pickle for every entry point
that reads a file, two runs on one folder, an overwrite, a full disk, artifact lineage mix-ups, a
resume with changed keys, a swapped index, a stale evaluation cache, strict command lines and the
one-line errors of anticipated failures. Each test asserts the outcome: nothing executed, nothing
overwritten, a non-zero exit, one line and no traceback."""
import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.training_fixtures import REPO_ROOT, tiny_training_keys, write_config, write_tiny_rec
from utils.training.engine import train
from utils.training.plain_methods import ArcFaceMethod


class RunsCode:
    """Unpickling this runs `touch <marker>`: the test then checks the marker never appeared."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def run_training(config: Path, *extra: str) -> None:
    train(ArcFaceMethod, [str(config), *extra])


def refused(capsys, config: Path, *extra: str) -> str:
    """Run the training CLI in-process; it must exit 1 with one line and no traceback: that line."""
    with pytest.raises(SystemExit) as stop:
        run_training(config, *extra)
    assert stop.value.code == 1
    error = capsys.readouterr().err.strip()
    assert "Traceback" not in error and len(error.splitlines()) == 1, error
    return error


def folder_state(folder: Path) -> dict:
    """name -> bytes of every file under `folder` (what a refused run must leave unchanged)."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def finished_run(tmp_path, tiny_rec, one_thread):
    """A tiny finished training (1 epoch, 8 steps) and its config."""
    output = tmp_path / "run"
    config = write_config(tmp_path / "run.py", **tiny_training_keys(tiny_rec, output, num_epoch=1))
    run_training(config)
    return config, output


# ---- no code execution from any file the library reads ---------------------------------------
def test_malicious_checkpoint_is_refused_on_resume(finished_run, capsys):
    config, output = finished_run
    marker = output.parent / "executed"
    torch.save({"backbone": RunsCode(marker), "config": {}, "per_rank": []}, output / "checkpoint.pt")
    before = folder_state(output)
    error = refused(capsys, config, "--resume")
    assert "refusing checkpoint" in error and "system" in error
    assert not marker.exists()
    assert folder_state(output) == before  # no config.json, log or TensorBoard file written


def test_real_checkpoint_loads_weights_only(finished_run):
    _, output = finished_run
    state = torch.load(output / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 8 and state["config"]["batch_size"] == 4
    assert state["dataset"]["num_image"] == 32
    assert torch.is_tensor(state["per_rank"][0]["rng"]["numpy"]["keys"])


def test_malicious_model_file_is_refused(tmp_path, capsys):
    """model.pt as training scripts, feature tools and the IJB-C evaluation read it."""
    from backbones import load_backbone
    from tools.ijbc_eval.ijbc_eval import main as ijbc_main
    from tools.ijbc_eval.toy_protocol import write_toy_protocol
    marker, path = tmp_path / "executed", tmp_path / "model.pt"
    torch.save({"weight": RunsCode(marker)}, path)
    with pytest.raises(ValueError, match="not a readable torch state dict"):
        load_backbone(path, "tiny", 32)
    # a readable protocol, so the evaluation gets as far as reading the model (and refuses it there)
    write_toy_protocol(tmp_path / "data", "IJBC", num_subjects=2, templates_per_subject=2, images_per_template=1)
    capsys.readouterr()
    assert ijbc_main(["-m", str(path), "-net", "tiny", "-d", str(tmp_path / "data"),
                      "-R", str(tmp_path / "results"), "--workers", "0"]) == 1
    error = capsys.readouterr().err.strip()
    assert f"{path}" in error and "not a readable torch state dict" in error and len(error.splitlines()) == 1, error
    assert not marker.exists()


def test_malicious_verification_bin_is_refused(tmp_path):
    from utils.data.bin_sets import load_bin
    marker, path = tmp_path / "executed", tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps(([b"x", b"y"], RunsCode(marker))))
    with pytest.raises(ValueError, match=r"refusing verification set .*lfw\.bin: it asks for posix\.system"):
        load_bin(path)
    assert not marker.exists()


def test_bin_with_an_empty_image_is_one_line(tmp_path):
    """OpenCV raises (not returns None) on an empty byte string: still the .bin's one-line refusal."""
    from utils.data.bin_sets import load_bin
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps(([b"", b""], [True])))
    with pytest.raises(ValueError, match=r"lfw\.bin: image 0 cannot be decoded"):
        load_bin(path)


def test_genuine_bin_layouts_still_load(tmp_path):
    """What insightface .bin files hold: bytes and booleans (a list or a numpy array), also as a
    protocol-2 pickle whose bytes go through _codecs.encode."""
    from utils.data.bin_sets import load_bin
    image = cv2.imencode(".jpg", np.full((112, 112, 3), 80, np.uint8))[1].tobytes()
    for issame, protocol in (([True], 4), (np.array([False]), 2)):
        path = tmp_path / f"set{protocol}.bin"
        path.write_bytes(pickle.dumps(([image, image], issame), protocol=protocol))
        images, loaded = load_bin(path)
        assert images.shape == (2, 3, 112, 112) and loaded.tolist() == list(np.asarray(issame))


def object_array_file(path: Path, marker: Path, npz: bool) -> Path:
    """An .npy / .npz whose array is pickled Python objects (what allow_pickle would run)."""
    evil = np.array([RunsCode(marker)], dtype=object)
    with open(path, "wb") as handle:
        if npz:
            np.savez(handle, key=evil, embeddings=evil)
        else:
            np.save(handle, evil, allow_pickle=True)
    return path


def test_object_arrays_never_unpickled(tmp_path):
    """Every numpy entry point: artifacts (.npy and .npz), the loader's feature store, the IJB-C
    cache and the re-plot of result files."""
    from tools.ijbc_eval.cache import load_cached_embeddings
    from tools.ijbc_eval.ijbc_eval import main as ijbc_main
    from utils.artifacts.manifests import ArtifactMismatch, check_artifact, write_manifest
    from utils.data.feature_store import ArrayStore
    marker = tmp_path / "executed"
    features = object_array_file(tmp_path / "f_feature.npy", marker, npz=False)
    write_manifest(features, kind="old_features", tool="t", args={}, dataset=None, shape=(1,), dtype="float32")
    with pytest.raises(ArtifactMismatch, match="cannot be read as an array"):
        check_artifact(features, "old_features", None)
    meta = object_array_file(tmp_path / "meta.npz", marker, npz=True)
    write_manifest(meta, kind="class_meta", tool="t", args={}, dataset=None, shape=(1,), dtype="float32")
    with pytest.raises(ArtifactMismatch, match="cannot be read as an array"):
        check_artifact(meta, "class_meta", None)
    with pytest.raises(ValueError):
        ArrayStore(features)[np.array([0])]
    cached, reason = load_cached_embeddings(meta, {"num_images": 1, "num_features": 1})
    assert cached is None and "unreadable" in reason
    assert ijbc_main(["-P", str(meta), "-R", str(tmp_path / "plots")]) == 1
    assert not marker.exists()


# ---- no lost or clobbered runs -------------------------------------------------------------------
def test_second_run_on_a_locked_folder_refuses_at_once(tmp_path, tiny_rec, capsys, one_thread):
    output = tmp_path / "locked"
    output.mkdir()
    config = write_config(tmp_path / "c.py", **tiny_training_keys(tiny_rec, output, num_epoch=1))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        import socket
        (output / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid,
                                                  "start_time": None}))
        started = time.time()
        error = refused(capsys, config)
        assert f"in use by another run (pid {holder.pid}" in error and time.time() - started < 10
        assert sorted(path.name for path in output.iterdir()) == [".lock"]  # nothing else written
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and reclaimed, the run proceeds and releases it at the end
    run_training(config)
    assert (output / "model.pt").is_file() and not (output / ".lock").exists()


LOCK_RACE = """
import sys, time
sys.path.insert(0, sys.argv[3])
from utils.common.output_lock import OutputLock
lock = OutputLock(sys.argv[1])
while time.time() < float(sys.argv[2]):
    pass
try:
    lock.acquire()
    print("acquired", flush=True)
    time.sleep(2)
except ValueError as error:
    print("refused:", error, flush=True)
"""


def test_two_processes_racing_for_one_folder(tmp_path):
    start = f"{time.time() + 1.5}"
    processes = [subprocess.Popen([sys.executable, "-c", LOCK_RACE, str(tmp_path / "out"), start, str(REPO_ROOT)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = sorted(process.communicate(timeout=60)[0].strip() for process in processes)
    assert outputs[0] == "acquired" and outputs[1].startswith("refused:") and "in use by another run" in outputs[1]


def test_finished_run_is_not_overwritten_without_start_over(finished_run, capsys):
    config, output = finished_run
    before = folder_state(output)
    error = refused(capsys, config)
    assert "already holds model.pt and checkpoint.pt" in error and "--start-over" in error
    assert folder_state(output) == before
    run_training(config, "--start-over", "--set", "seed=8")
    assert (output / "model.pt").read_bytes() != before["model.pt"]
    assert "--start-over: removed model.pt" in (output / "training.log").read_text()


def test_failed_validation_writes_nothing(tmp_path, tiny_rec, capsys, one_thread):
    output = tmp_path / "fresh"
    config = write_config(tmp_path / "c.py", **tiny_training_keys(tiny_rec, output, num_classes=5))
    assert "config num_classes = 5" in refused(capsys, config)
    assert not output.exists()  # created for the lock, removed again: no config.json, log or tensorboard


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (root and mount available) - else None and the test simulates ENOSPC."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)], capture_output=True).returncode:
        yield None
        return
    try:
        yield mount_point
    finally:
        import logging
        from utils.common.logging_utils import LOGGER_NAME
        for handler in list(logging.getLogger(LOGGER_NAME).handlers):  # training.log is open on the disk
            logging.getLogger(LOGGER_NAME).removeHandler(handler)
            handler.close()
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_disk_full_ends_with_one_line_and_no_temporary(tmp_path, tiny_rec, small_disk, capsys, monkeypatch,
                                                       one_thread):
    if small_disk is None:  # no tmpfs here: every fsync of a write fails as a full disk would
        def full_disk(_descriptor):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr("utils.common.atomic_files.os.fsync", full_disk)
        output = tmp_path / "out"
    else:
        output = small_disk / "out"  # room for the log and config.json, not for a 1.3 MB model.pt
    config = write_config(tmp_path / "c.py", **tiny_training_keys(tiny_rec, output, num_epoch=1))
    error = refused(capsys, config)
    assert error.startswith("error: no space left on device while writing ") and str(output) in error
    assert not [path.name for path in output.rglob("*") if ".tmp" in path.name]


# ---- no silent mix-ups ------------------------------------------------------------------------------
class DatasetStub:
    def __init__(self, fingerprint, labels, num_classes):
        self._fingerprint, self.labels, self.num_classes = fingerprint, labels, num_classes

    def fingerprint(self):
        return dict(self._fingerprint)


@pytest.fixture
def two_feature_files(tmp_path):
    """Two old models' features for one data set, each with its credible mask (written by the tool's code)."""
    from easydict import EasyDict
    from utils.artifacts.manifests import derived_manifest_fields, model_record, save_array_atomic
    from utils.data.datasets import labels_sha256
    from utils.artifacts.class_statistics import credible_mask
    labels = np.repeat(np.arange(3), 4)
    fingerprint = {"name": "d", "num_image": 12, "num_classes": 3, "labels_sha256": labels_sha256(labels),
                   "index_sha256": "ab" * 32}
    paths = {}
    for name, network in (("a", "r18"), ("b", "r34")):
        model = tmp_path / f"{name}.pt"
        model.write_bytes(name.encode() * 100)
        features = np.random.default_rng(len(name) + ord(name)).normal(size=(12, 8)).astype(np.float32)
        feature_path = tmp_path / f"{name}_feature.npy"
        manifest = save_array_atomic(feature_path, features, kind="old_features", tool="t", args={},
                                     dataset=fingerprint, model=model_record(model, network, 8))
        mask_path = tmp_path / f"{name}_credible_0.9.npy"
        save_array_atomic(mask_path, credible_mask(features, labels, 0.9, 3),
                          **derived_manifest_fields("credible_mask", "t", {}, feature_path, manifest))
        paths[name] = (feature_path, mask_path)
    dataset = DatasetStub(fingerprint, labels, 3)

    def config(features, mask, **keys):
        return EasyDict({"old_features": str(features), "credible_mask": str(mask), "embedding_size": 8,
                         "old_network": None, **keys})
    return paths, dataset, config


def check_mixbct_inputs(cfg, dataset):
    from losses.compatibility import check_method_artifact
    check_method_artifact(cfg, "old_features", "old_features", dataset, "MixBCT", expected_dim=8)
    check_method_artifact(cfg, "credible_mask", "credible_mask", dataset, "MixBCT")


def test_lineage_mix_ups_are_refused(two_feature_files):
    from utils.artifacts.manifests import ArtifactMismatch
    paths, dataset, config = two_feature_files
    check_mixbct_inputs(config(*paths["a"]), dataset)  # one feature file, its own mask: accepted
    with pytest.raises(ArtifactMismatch, match=r"a_feature\.npy, sha256 .* than .*b_feature\.npy"):
        check_mixbct_inputs(config(paths["b"][0], paths["a"][1]), dataset)
    with pytest.raises(ArtifactMismatch, match="old network 'r18' but the config says old_network = 'r34'"):
        check_mixbct_inputs(config(*paths["a"], old_network="r34"), dataset)


def test_feature_file_edited_after_its_manifest_is_refused(two_feature_files):
    from utils.artifacts.manifests import ArtifactMismatch
    paths, dataset, config = two_feature_files
    features = np.load(paths["a"][0])
    features[3, 2] += 1.0  # same shape and dtype: only the content tells
    with open(paths["a"][0], "wb") as handle:
        np.save(handle, features)
    with pytest.raises(ArtifactMismatch, match="no longer matches its manifest"):
        check_mixbct_inputs(config(*paths["a"]), dataset)


def test_content_checksum_is_a_block_tree_hash(tmp_path):
    """content_sha256 = sha256(header, sha256 of each block ...), computed here independently."""
    import hashlib
    from utils.common.checksums import content_sha256
    data = np.random.default_rng(1).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    (tmp_path / "blob").write_bytes(data)
    top = hashlib.sha256(b"sha256-blocks:4096:10000:")
    for start in range(0, len(data), 4096):
        top.update(hashlib.sha256(data[start:start + 4096]).digest())
    assert content_sha256(tmp_path / "blob", block_bytes=4096, threads=3) == top.hexdigest()


@pytest.mark.parametrize("override, difference", [
    ("batch_size=8", "batch_size 4 -> 8"), ("seed=1", "seed 7 -> 1"), ("embedding_size=64", "embedding_size 32 -> 64"),
    ("network='r18'", "network 'tiny' -> 'r18'")])
def test_resume_with_changed_keys_is_refused(finished_run, capsys, override, difference):
    config, output = finished_run
    before = folder_state(output)
    error = refused(capsys, config, "--resume", "--set", override)
    assert f"cannot resume {output / 'checkpoint.pt'}: {difference}" in error
    assert folder_state(output) == before


def test_resume_with_another_head_is_refused(tmp_path, tiny_rec, capsys, one_thread):
    """A softmax-head run resumed by the ArcFace (Partial FC) script."""
    from utils.training.plain_methods import SoftmaxMethod
    output = tmp_path / "softmax"
    config = write_config(tmp_path / "s.py", **tiny_training_keys(tiny_rec, output, num_epoch=1, head="softmax",
                                                                  method="softmax"))
    train(SoftmaxMethod, [str(config)])
    before = folder_state(output)
    error = refused(capsys, config, "--resume")
    assert "cannot resume" in error and "head 'softmax' -> 'partial_fc'" in error
    assert folder_state(output) == before


def test_resume_on_other_data_is_refused(finished_run, tmp_path, capsys):
    config, output = finished_run
    other = write_tiny_rec(tmp_path / "other_rec", seed=3)  # same size and labels, other images and index
    error = refused(capsys, config, "--resume", "--set", f"rec='{other}'")
    assert "cannot resume" in error and "data set tiny_rec" in error and "-> other_rec (32 images" in error


def test_resume_with_a_harmless_change_continues(finished_run, capsys):
    config, output = finished_run
    run_training(config, "--resume", "--set", "num_epoch=2", "lr=0.02")
    log = (output / "training.log").read_text()
    assert "resuming with changed lr 0.05 -> 0.02, num_epoch 1 -> 2" in log
    assert torch.load(output / "checkpoint.pt", weights_only=True)["step"] == 16


def swap_index_slots(rec: Path, first_key: int, second_key: int) -> None:
    """Exchange the offsets of two keys in train.idx (a stale or hand-edited index)."""
    lines = (rec / "train.idx").read_text().splitlines()
    table = dict(line.split("\t") for line in lines)
    table[str(first_key)], table[str(second_key)] = table[str(second_key)], table[str(first_key)]
    (rec / "train.idx").write_text("".join(f"{key}\t{table[key]}\n" for key in (line.split("\t")[0] for line in lines)))


def test_swapped_index_is_refused_by_the_training_reader(tmp_path, capsys, one_thread):
    from utils.data.datasets import FaceRecDataset
    from utils.data.recordio import RecordIOError
    rec = write_tiny_rec(tmp_path / "rec")
    swap_index_slots(rec, 1, 2)  # two images of class 0: labels agree, the record ids do not
    dataset = FaceRecDataset(rec, flip=False)
    with pytest.raises(RecordIOError, match=r"slot of key 1 .* holds record id 2 .* stale or swapped"):
        dataset[0]
    swap_index_slots(rec, 1, 2)
    swap_index_slots(rec, 3, 12)  # class 0 and class 1
    with pytest.raises(RecordIOError, match="label 1 where key 3 label 0 is due"):
        FaceRecDataset(rec, flip=False)[2]
    # in training, read in a loader worker: one line from the main process
    config = write_config(tmp_path / "c.py", **tiny_training_keys(rec, tmp_path / "out", num_workers=1,
                                                                  num_epoch=1, batch_size=32))
    error = refused(capsys, config)
    assert "stale or swapped" in error and "DataLoader worker" not in error


def test_corrupt_record_in_a_loader_worker_is_one_line(tmp_path, capsys, one_thread):
    rec = write_tiny_rec(tmp_path / "rec")
    data = bytearray((rec / "train.rec").read_bytes())
    jpeg_start = data.find(b"\xff\xd8\xff", 4096)  # an image record well inside the file
    data[jpeg_start:jpeg_start + 64] = b"\x00" * 64
    (rec / "train.rec").write_bytes(bytes(data))
    config = write_config(tmp_path / "c.py", **tiny_training_keys(rec, tmp_path / "out", num_workers=1,
                                                                  num_epoch=1))
    error = refused(capsys, config)
    assert "train.rec: key" in error and "Caught" not in error


def test_stale_evaluation_cache_is_not_reused(tmp_path):
    from tools.ijbc_eval.cache import (FINGERPRINT_SAMPLE, embedding_cache_key, image_fingerprint,
                                       load_cached_embeddings, save_cached_embeddings)
    images = tmp_path / "loose_crops"
    images.mkdir()
    names = [f"{index}.jpg" for index in range(2 * FINGERPRINT_SAMPLE)]
    for index, name in enumerate(names):
        (images / name).write_bytes(bytes([index % 251]) * 40)

    def key():
        return embedding_cache_key("m" * 64, "tiny", 2, "IJBC", "l" * 64, len(names), False,
                                   image_fingerprint(images, names))
    cache = tmp_path / "cache.npz"
    stored = np.ones((len(names), 2), np.float32)
    save_cached_embeddings(cache, key(), stored, stored)
    assert load_cached_embeddings(cache, key())[0] is not None
    # a sampled crop re-encoded in place, its size and modification time put back
    status = os.stat(images / names[0])
    (images / names[0]).write_bytes(b"\x07" * 40)
    os.utime(images / names[0], ns=(status.st_atime_ns, status.st_mtime_ns))
    cached, reason = load_cached_embeddings(cache, key())
    assert cached is None and "image_content_sha256" in reason
    # a crop outside the sample replaced: its modification time tells
    save_cached_embeddings(cache, key(), stored, stored)
    (images / names[1]).write_bytes(b"\x09" * 40)
    os.utime(images / names[1], ns=(status.st_atime_ns, status.st_mtime_ns + 10 ** 9))
    assert load_cached_embeddings(cache, key())[0] is None


# ---- strict command lines and typed overrides --------------------------------------------------------
def test_ijbc_eval_never_takes_an_option_prefix(capsys):
    from tools.ijbc_eval.ijbc_eval import parse_arguments
    with pytest.raises(SystemExit) as stop:
        parse_arguments(["-m", "new.pt", "-o", "results"])
    assert stop.value.code == 2
    assert "unknown option '-o'" in capsys.readouterr().err
    for prefix in (["-old", "r34"], ["--old_net", "r34"], ["--model_o", "x.pt"]):
        with pytest.raises(SystemExit):
            parse_arguments(["-m", "new.pt", *prefix])
    spelled = parse_arguments(["-m", "new.pt", "-old_net", "r34", "--old_network=r50", "-b16"])
    assert spelled.old_network == "r50" and spelled.batch_size == 16


def test_training_cli_is_strict(finished_run, capsys):
    config, _ = finished_run
    with pytest.raises(SystemExit) as stop:
        run_training(config, "--res")  # not --resume
    assert stop.value.code == 2
    capsys.readouterr()
    for override, expected in (("tensorboard=no", "tensorboard takes True or False"),
                               ("lr=abc", "lr takes a number (default 0.1), got 'abc'"),
                               ("num_epoch=2.5", "num_epoch takes an integer")):
        assert expected in refused(capsys, config, "--resume", "--set", override)


def test_typed_override_values():
    from utils.common.config import load_config
    base = REPO_ROOT / "configs" / "base.py"
    cfg = load_config(base, ["tensorboard=false", "lr=1", "clip_grad_norm=None", "network=50",
                             "margin_list=(1.0, 0.5, 0.0)"])
    assert cfg.tensorboard is False and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.clip_grad_norm is None and cfg.network == "50" and cfg.margin_list == (1.0, 0.5, 0.0)



def test_config_file_values_are_type_checked_like_overrides(tmp_path, tiny_rec, capsys):
    """A config file's value goes through the same type check as --set: one line naming the file and key."""
    for key, value, expected in (("lr", "abc", "lr takes a number (default 0.1), got 'abc'"),
                                 ("tensorboard", "no", "tensorboard takes True or False"),
                                 ("num_epoch", 1.5, "num_epoch takes an integer (default 20), got 1.5"),
                                 ("margin_list", 0.5, "margin_list takes a list"),
                                 ("num_classes", "10", "num_classes takes an integer or None"),
                                 ("rec", 7, "rec takes a string or None")):
        keys = tiny_training_keys(tiny_rec, tmp_path / "out")
        keys[key] = value
        config = write_config(tmp_path / f"bad_{key}.py", **keys)
        error = refused(capsys, config)
        assert f"config file {config}:" in error and expected in error, error
        assert not (tmp_path / "out").exists()


def test_config_file_values_take_their_keys_types():
    from utils.common.config import check_value
    assert check_value("lr", 1, 0.1, "here") == 1.0 and isinstance(check_value("lr", 1, 0.1, "here"), float)
    assert check_value("clip_grad_norm", None, 5.0, "here") is None
    assert check_value("rec", Path("/data/x"), None, "here") == "/data/x"
    assert check_value("nccl_entropy_filter", 1, None, "here") == 1.0
    assert check_value("decay_epoch", (1, 2), [], "here") == (1, 2)
    with pytest.raises(ValueError, match="here: fp16 takes True or False"):
        check_value("fp16", 1, False, "here")
    with pytest.raises(ValueError, match="here: batch_size takes an integer"):
        check_value("batch_size", True, 128, "here")

# ---- other anticipated failures: one line --------------------------------------------------------
def test_unwritable_output_folder(tmp_path, tiny_rec, capsys, one_thread):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    config = write_config(tmp_path / "c.py", **tiny_training_keys(tiny_rec, blocker / "out"))
    assert "while creating the output folder" in refused(capsys, config)


def test_image_size_other_than_property(tmp_path, capsys, one_thread):
    rec = write_tiny_rec(tmp_path / "rec")
    (rec / "property").write_text("4,96,96\n")
    config = write_config(tmp_path / "c.py", **tiny_training_keys(rec, tmp_path / "out"))
    assert "declares 96x96 images but the first image" in refused(capsys, config)


# ---- RNG: the rank's own device only ---------------------------------------------------------------------
def test_rng_state_stores_and_restores_only_the_ranks_device(monkeypatch):
    """The CUDA branch, on any machine: the state of this rank's device is read and written, never
    every visible GPU's (a resume may see another number of them)."""
    import random
    from utils.training.checkpoint import rng_state, set_rng_state
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", str(device)))
                        or torch.full((16,), 3, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", str(device),
                                                                                       int(state[0]))))

    def everything(*_):
        raise AssertionError("all visible devices touched")
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", everything)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", everything)
    state = rng_state(torch.device("cuda", 3))
    expected = (random.random(), np.random.random(), torch.rand(2))
    set_rng_state(state, torch.device("cuda", 1))
    assert (random.random(), np.random.random()) == expected[:2] and torch.equal(torch.rand(2), expected[2])
    assert calls == [("get", "cuda:3"), ("set", "cuda:1", 3)]
    cpu_state = rng_state(torch.device("cpu"))
    assert cpu_state["cuda"] is None
    set_rng_state(state, torch.device("cpu"))  # a GPU checkpoint resumed on the CPU: CUDA state ignored
    assert len(calls) == 2


def test_rec_writer_on_a_full_disk_leaves_nothing(tmp_path, small_disk, monkeypatch):
    """The RecordIO writer behind the split tool and the synthetic data: one line, no temporary."""
    from utils.common.atomic_files import WriteError
    from utils.data.face_rec import FaceRecWriter
    if small_disk is None:
        def full_disk(_descriptor):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr("utils.data.recordio.os.fsync", full_disk)
        output = tmp_path / "rec"
    else:
        output = small_disk / "rec"
    payload = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8))[1]
    with pytest.raises(WriteError, match=r"no space left on device while writing .*train\.rec"):
        with FaceRecWriter(output) as writer:
            for _ in range(40):  # 40 x ~38 KB: more than the 512 KiB disk
                writer.add(0, payload.tobytes())
    assert list(output.iterdir()) == []
