"""Time one training step of the engine's recipe on random device tensors: backbone forward,
ArcFace margin head through Partial FC, backward, gradient clipping, SGD step.

Single process, no data loading (see bench_data.py for that). Reports images/s, ms per step,
achieved TFLOP/s (forward FLOPs from tools.benchmark.flops.count_flops plus the head's matmul, x3 for
forward + backward) and, on an H100/H200, the fraction of the dense peak (989 TFLOP/s fp16/bf16,
67 TFLOP/s fp32 without TF32).

    python tools/benchmark/bench_train_step.py                      # CPU: tiny network
    python tools/benchmark/bench_train_step.py --network r50 --batch-size 128 --num-classes 93431 --precision fp16
Prints the figures and, last, one JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.common.cli import StrictArgumentParser  # noqa: E402

from backbones import get_model  # noqa: E402
from losses import build_head  # noqa: E402
from utils.common.config import BASE_CONFIG, load_config  # noqa: E402
from utils.training.engine import autocast_and_scaler, build_optimizer  # noqa: E402
from tools.benchmark.flops import count_flops  # noqa: E402
from utils.data.loader import to_device  # noqa: E402
from utils.training.method import TrainEnv  # noqa: E402
from tools.benchmark.devices import DEVICE_CHOICES, device_name, resolve_device, synchronise  # noqa: E402

# dense tensor-core peaks of the H100 SXM (the H200 has the same compute), TFLOP/s
H100_PEAK_TFLOPS = {"fp16": 989.0, "bf16": 989.0, "fp32": 67.0}


def parse_args(argv=None) -> argparse.Namespace:
    parser = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default=None, help="backbone (default: tiny on CPU, r50 on GPU)")
    parser.add_argument("--embedding-size", type=int, default=512, help="feature size")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default 32 CPU, 128 GPU)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classes of the Partial FC head")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="autocast precision; fp16 on the CPU runs the CUDA recipe's fp16 autocast + "
                             "GradScaler path there (an emulation for checks, not a speed figure)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                        help="where to run (auto: cuda when available)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    return parser.parse_args(argv)


def peak_tflops(device: torch.device, precision: str):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return H100_PEAK_TFLOPS[precision] if ("H100" in name or "H200" in name) else None


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    network = args.network or ("r50" if device.type == "cuda" else "tiny")
    batch_size = args.batch_size or (128 if device.type == "cuda" else 32)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg = load_config(BASE_CONFIG, [f"network={network!r}", f"embedding_size={args.embedding_size}",
                                    f"fp16={args.precision == 'fp16'}", f"bf16={args.precision == 'bf16'}",
                                    f"batch_size={batch_size}", f"num_classes={args.num_classes}",
                                    f"amp_on_cpu={device.type == 'cpu'}"])
    env = TrainEnv(0, 1, 0, device, args.num_classes, batch_size)
    backbone = get_model(network, args.embedding_size).to(device)
    forward_flops = count_flops(backbone, (1, 3, 112, 112)) + 2 * args.embedding_size * args.num_classes
    if args.channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    head = build_head(cfg, env)
    model = torch.compile(backbone) if args.compile else backbone
    optimizer = build_optimizer(cfg, [backbone, head])
    autocast, scaler = autocast_and_scaler(cfg, device, logging.getLogger("bct"))
    images = torch.randint(0, 256, (batch_size, 3, 112, 112), dtype=torch.uint8, device=device)
    labels = torch.randint(0, args.num_classes, (batch_size,), device=device)

    def train_step() -> None:
        # the engine's order (utils/training/engine.Trainer._optimizer_step): unscale, clip, step, update
        batch = to_device({"image": images}, device, args.channels_last)
        with autocast():
            loss = head(model(batch["image"]), labels)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(backbone.parameters(), float(cfg.clip_grad_norm))
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        train_step()
    synchronise(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    synchronise(device)
    step_seconds = (time.perf_counter() - start) / args.steps
    tflops = 3 * forward_flops * batch_size / step_seconds / 1e12
    peak = peak_tflops(device, args.precision)
    name = device_name(device)
    result = {"benchmark": "train_step", "device": name, "network": network, "batch_size": batch_size,
              "num_classes": args.num_classes, "embedding_size": args.embedding_size, "precision": args.precision,
              "channels_last": args.channels_last, "compile": args.compile,
              "images_per_second": round(batch_size / step_seconds, 2), "step_ms": round(step_seconds * 1e3, 3),
              "achieved_tflops": round(tflops, 4), "peak_tflops": peak,
              "peak_fraction": round(tflops / peak, 4) if peak else None}
    print(f"{network} batch {batch_size} {args.precision} on {name}: {result['step_ms']:.1f} ms/step, "
          f"{result['images_per_second']:.1f} img/s, {tflops:.3f} TFLOP/s"
          + (f" ({100 * tflops / peak:.1f}% of {peak:.0f})" if peak else ""))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
