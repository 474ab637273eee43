"""Tiny on-disk training sets and configs for the engine tests (written here, read by the engine)."""
from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import contextlib

import cv2
import numpy as np
import torch

from utils.data.face_rec import FaceRecWriter

REPO_ROOT = Path(__file__).resolve().parents[1]


def class_images(num_classes: int, per_class: int, seed: int = 0) -> List[np.ndarray]:
    """BGR 112x112 images: one random pattern per class plus per-image noise (learnable classes)."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, (num_classes, 14, 14, 3)).astype(np.float32)
    images = []
    for label in range(num_classes):
        big = cv2.resize(patterns[label], (112, 112), interpolation=cv2.INTER_NEAREST)
        for _ in range(per_class):
            noisy = big + rng.normal(0, 20, big.shape)
            images.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return images


def write_tiny_rec(out_dir: Path, num_classes: int = 4, per_class: int = 8, seed: int = 0) -> Path:
    """An insightface rec folder (train.rec/.idx/property) plus an lfw.bin of pairs from it."""
    images = class_images(num_classes, per_class, seed)
    with FaceRecWriter(out_dir) as writer:
        for position, image in enumerate(images):
            writer.add(position // per_class, cv2.imencode(".jpg", image)[1].tobytes())
    pairs, issame = [], []
    for pair in range(len(images) // 2):
        first, second = pair, (pair + (1 if pair % 2 == 0 else per_class)) % len(images)
        pairs += [images[first], images[second]]
        issame.append(first // per_class == second // per_class)
    bins = [cv2.imencode(".jpg", image)[1].tobytes() for image in pairs]
    (Path(out_dir) / "lfw.bin").write_bytes(pickle.dumps((bins, issame)))
    return Path(out_dir)


def write_config(path: Path, **keys) -> Path:
    lines = ["from easydict import EasyDict as edict", "config = edict()"]
    lines += [f"config.{key} = {value!r}" for key, value in keys.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_training_keys(rec: Path, output: Path, **overrides) -> Dict:
    keys = dict(network="tiny", embedding_size=32, rec=str(rec), output=str(output), batch_size=4,
                num_epoch=2, lr=0.05, num_workers=0, frequent=2, verbose=1000, val_targets=[],
                tensorboard=False, fp16=False, seed=7)
    keys.update(overrides)
    return keys


def subprocess_env() -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None), env.pop("RANK", None), env.pop("LOCAL_RANK", None)
    return env


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on right now (for a launcher's master port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_command(script: str, args: Sequence[str], processes: int = 2, launcher: str = "torchrun",
                     port: int = 29561) -> List[str]:
    """torchrun (or the older python -m torch.distributed.launch) on this machine."""
    module = "torch.distributed.run" if launcher == "torchrun" else "torch.distributed.launch"
    return [sys.executable, "-m", module, f"--nproc_per_node={processes}", f"--master_port={port}",
            str(REPO_ROOT / script), *args]


def run(command: Sequence[str], timeout: int = 120, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), env=subprocess_env(), capture_output=True, text=True, timeout=timeout,
                          cwd=str(cwd))


def launch_with_torchrun(script: str, folder: Path, port: int, timeout: int = 400) -> None:
    """Run `script FOLDER` under torchrun with 2 gloo processes; fail the test with its output's tail."""
    result = run(torchrun_command(script, [str(folder)], port=port), timeout=timeout)
    assert result.returncode == 0, f"{script} under torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def written_and_launched(tmp_path_factory, name: str, write_cases, script: str, port: int) -> Path:
    """A fresh folder, `write_cases(folder)`, then `script folder` under torchrun (2 gloo processes)."""
    folder = tmp_path_factory.mktemp(name)
    write_cases(folder)
    launch_with_torchrun(script, folder, port)
    return folder


@contextlib.contextmanager
def single_thread():
    """In-process training runs: one thread (like the subprocesses), global determinism flag restored."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
