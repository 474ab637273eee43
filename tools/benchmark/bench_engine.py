"""The whole training engine on the device, end to end: utils.training.engine.Trainer with the ArcFace
method (Partial FC), the loader (random uint8 images from SyntheticDataset in worker processes),
flips and normalisation on the device, AMP with the GradScaler, clipping, the per-step skip
consensus, logging and the epoch-end checkpoint. This is the path a real run takes, so the first
GPU session checks it here; bench_train_step.py times the bare step instead.

    python tools/benchmark/bench_engine.py                                   # CPU: tiny network
    python tools/benchmark/bench_engine.py --network r50 --batch-size 128 --num-classes 93431 --precision fp16
Prints images/s over the timed steps, whether everything stayed finite and the final grad scale;
then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.common.cli import StrictArgumentParser  # noqa: E402

from tools.benchmark.devices import DEVICE_CHOICES, device_name, resolve_device, synchronise  # noqa: E402
from utils.common.config import BASE_CONFIG, load_config  # noqa: E402
from utils.training.engine import Trainer  # noqa: E402
from utils.training.plain_methods import ArcFaceMethod  # noqa: E402


class TimedArcFace(ArcFaceMethod):
    """ArcFace that notes when each step starts (the first `warmup` steps are not timed)."""

    warmup = 2

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        self.step_starts = []

    def loss(self, embeddings, batch, head, progress):
        if len(self.step_starts) == self.warmup:
            synchronise(embeddings.device)
        self.step_starts.append(time.perf_counter())
        return super().loss(embeddings, batch, head, progress)


def main(argv=None) -> int:
    parser = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="tiny")
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10, help="optimiser steps in all (2 of them warm-up)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                        help="auto: cuda when available; fp16 on the CPU emulates the CUDA path (amp_on_cpu)")
    args = parser.parse_args(argv)
    if args.steps <= TimedArcFace.warmup:
        parser.error(f"--steps must exceed the {TimedArcFace.warmup} warm-up steps")
    device = resolve_device(args.device)
    if device.type == "cpu" and torch.cuda.is_available():
        # the engine picks the rank's GPU by itself: hide it to keep this run on the CPU
        torch.cuda.is_available = lambda: False
    num_image = args.batch_size * args.steps
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as output:
        cfg = load_config(BASE_CONFIG, [
            "synthetic=True", f"num_image={max(num_image, args.num_classes)}", f"num_classes={args.num_classes}",
            f"network={args.network!r}", f"embedding_size={args.embedding_size}", f"batch_size={args.batch_size}",
            "num_epoch=1", f"fp16={args.precision == 'fp16'}", f"bf16={args.precision == 'bf16'}",
            f"amp_on_cpu={device.type == 'cpu'}", f"num_workers={args.workers}", f"channels_last={args.channels_last}",
            f"output={output!r}", "tensorboard=False", "frequent=5", "val_targets=[]"])
        trainer = Trainer(cfg, TimedArcFace)
        # only the first `steps` steps of the (larger when classes exceed images) epoch
        trainer.total_steps = trainer.steps_per_epoch = args.steps
        start = time.perf_counter()
        trainer.fit()
        synchronise(trainer.device)
        end = time.perf_counter()
        starts = trainer.method.step_starts
        timed = len(starts) - TimedArcFace.warmup
        seconds = end - starts[TimedArcFace.warmup]
        finite = all(bool(torch.isfinite(p).all()) for module in (trainer.backbone, trainer.head)
                     for p in module.parameters())
        saved = (Path(output) / "checkpoint.pt").is_file() and (Path(output) / "model.pt").is_file()
        result = {"benchmark": "engine", "device": device_name(trainer.device), "network": args.network,
                  "batch_size": args.batch_size, "num_classes": args.num_classes, "precision": args.precision,
                  "steps": trainer.step, "images_per_second": round(timed * args.batch_size / seconds, 2),
                  "wall_seconds": round(end - start, 2), "finite": finite, "checkpoint_written": saved,
                  "grad_scale": trainer.scaler.get_scale() if trainer.scaler is not None else None}
    print(f"engine, {args.network} batch {args.batch_size} {args.precision} on {result['device']}: "
          f"{result['images_per_second']:.1f} img/s over {timed} steps; finite {finite}; "
          f"grad scale {result['grad_scale']}", flush=True)
    print(json.dumps(result))
    return 0 if finite and saved and trainer.step == args.steps else 1


if __name__ == "__main__":
    sys.exit(main())
