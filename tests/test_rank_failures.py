"""One failure, every rank stops at once with the same line (issue 18, section 1). Two gloo ranks
under torchrun, each rank's stderr in its own file: a hostile .bin verification set (read by rank 0
only), an artifact whose content rank 0 cannot read (rank 0's check only), and a bad record that
only rank 1's loader reads. Every rank stops within REFUSAL_SECONDS of the failure (the launch exits non-zero),
printing the same one line (after its `[rank N] ` prefix) and no traceback."""
import json
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from tests.test_safety import RunsCode
from tests.training_fixtures import (REPO_ROOT, class_images, free_port, subprocess_env, tiny_training_keys,
                                     write_config, write_tiny_rec)
from utils.data.face_rec import FaceRecWriter

pytestmark = [pytest.mark.distributed]

REFUSAL_SECONDS = 10
WORLD = 2
MEASURED = {}   # case -> seconds from the first rank's failure to the last rank's exit (printed at the end)


def launch(folder: Path, method: str, config: Path, *extra: str):
    """torchrun with 2 processes, each rank's stderr in <folder>/logs; -> (exit status, {rank: stderr})."""
    logs = folder / "logs"
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}",
               f"--master_port={free_port()}", "--redirects", "2", "--log-dir", str(logs),
               str(REPO_ROOT / "tests" / "rank_failure_probe.py"), str(folder), method, str(config), *extra]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300,
                            cwd=str(REPO_ROOT))
    stderr = {}
    for rank in range(WORLD):
        files = list(logs.glob(f"*/attempt_0/{rank}/stderr.log"))
        assert len(files) == 1, f"no stderr of rank {rank}:\n{result.stderr[-3000:]}"
        stderr[rank] = files[0].read_text()
    return result.returncode, stderr


def refusal_seconds(folder: Path) -> float:
    times = [json.loads((folder / f"times_{rank}.json").read_text()) for rank in range(WORLD)]
    failures = [entry["failed_at"] for entry in times if entry["failed_at"] is not None]
    assert failures, "no rank met the failure"
    return max(entry["stopped_at"] for entry in times) - min(failures)


def assert_same_line_on_every_rank(status: int, stderr: dict, expected: str) -> str:
    assert status != 0
    lines = {}
    for rank, text in stderr.items():
        assert "Traceback" not in text, f"rank {rank} printed a traceback:\n{text[-3000:]}"
        errors = [line for line in text.splitlines() if line.strip()]
        assert len(errors) == 1, f"rank {rank} printed {len(errors)} lines:\n{text[-3000:]}"
        match = re.fullmatch(rf"\[rank {rank}\] error: (.*)", errors[0])
        assert match, errors[0]
        lines[rank] = match.group(1)
    assert len(set(lines.values())) == 1, lines
    assert re.search(expected, lines[0]), lines[0]
    return lines[0]


def finish(case: str, folder: Path) -> None:
    MEASURED[case] = refusal_seconds(folder)
    print(f"\n{case}: every rank stopped (printed its line) {MEASURED[case]:.2f} s after the failure")
    assert MEASURED[case] < REFUSAL_SECONDS


def test_hostile_verification_set_stops_every_rank(tmp_path):
    rec = write_tiny_rec(tmp_path / "rec")
    marker = tmp_path / "executed"
    (rec / "lfw.bin").write_bytes(pickle.dumps(([b"x", b"y"], RunsCode(marker))))
    config = write_config(tmp_path / "c.py", **tiny_training_keys(rec, tmp_path / "out", val_targets=["lfw"],
                                                                  num_epoch=1))
    status, stderr = launch(tmp_path, "arcface", config)
    assert_same_line_on_every_rank(status, stderr, r"refusing verification set .*lfw\.bin: it asks for posix\.system")
    assert not marker.exists()
    finish("hostile .bin", tmp_path)


def test_unreadable_artifact_on_rank0_stops_every_rank(tmp_path):
    from tools.benchmark.bench_methods import write_random_artifacts
    from utils.data.datasets import FaceRecDataset
    rec = write_tiny_rec(tmp_path / "rec")
    paths = write_random_artifacts(tmp_path, FaceRecDataset(rec, flip=False), 32, credible_threshold=0.25)
    config = write_config(tmp_path / "c.py", **tiny_training_keys(rec, tmp_path / "out", method="L2", num_epoch=1,
                                                                  **paths))
    status, stderr = launch(tmp_path, "L2", config, "unreadable-on-rank0")
    assert_same_line_on_every_rank(status, stderr, rf"Permission denied: '{re.escape(paths['old_features'])}'")
    finish("unreadable artifact", tmp_path)


def write_rec_with_bad_record(folder: Path, bad_index: int) -> Path:
    """The tiny rec (4 classes x 8 images) whose image at dataset index `bad_index` is not an image."""
    with FaceRecWriter(folder) as writer:
        for position, image in enumerate(class_images(4, 8)):
            payload = b"\x00" * 64 if position == bad_index else cv2.imencode(".jpg", image)[1].tobytes()
            writer.add(position // 8, payload)
    return folder


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.heavy)])
def test_bad_record_read_by_rank1_only_stops_every_rank(tmp_path, workers):
    from utils.data.loader import ResumableDistributedSampler
    keys = tiny_training_keys(tmp_path / "rec", tmp_path / "out", num_epoch=1, num_workers=workers)
    shares = [ResumableDistributedSampler(32, WORLD, rank, keys["seed"]).rank_indices().tolist() for rank in range(WORLD)]
    bad = shares[1][keys["batch_size"] + 1]   # in rank 1's second batch: the first step has run on every rank
    assert bad not in shares[0] and bad != 0
    write_rec_with_bad_record(tmp_path / "rec", bad)
    config = write_config(tmp_path / "c.py", **keys)
    status, stderr = launch(tmp_path, "arcface", config)
    assert_same_line_on_every_rank(status, stderr, r"train\.rec: key")
    assert not (tmp_path / "out" / "model.pt").exists()
    finish(f"bad record on rank 1 ({workers} workers)", tmp_path)
    assert json.loads((tmp_path / "times_0.json").read_text())["failed_at"] is None   # rank 0 never read it
