"""Print the backbone table (parameters, multiply-accumulates and FLOPs of one 112x112 image
with d = 512, counted by tools/benchmark/flops.py) and the CPU training throughput of one small network.

    python tools/benchmark/model_table.py                    # table + tiny train throughput
    python tools/benchmark/model_table.py --throughput-steps 0 --embedding-size 256

Networks are built on the meta device, so the table costs no arithmetic and no memory even
for r200 and vit_l. "GFLOPs" = 2 x GMACs; insightface's tables call the GMACs figure "GFLOPs".
The last line of output is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.common.cli import StrictArgumentParser  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from backbones import NETWORK_NAMES, get_model  # noqa: E402
from tools.benchmark.flops import count_macs, count_params  # noqa: E402


def model_rows(names, embedding_size):
    rows = []
    for name in names:
        with torch.device("meta"):
            model = get_model(name, num_features=embedding_size)
        macs = count_macs(model, (1, 3, 112, 112))
        rows.append({"network": name, "params_m": round(count_params(model) / 1e6, 2),
                     "gmacs": round(macs / 1e9, 3), "gflops": round(2 * macs / 1e9, 3)})
    return rows


def train_throughput(name, embedding_size, batch_size, num_classes, steps, warmup=3):
    """(wall, cpu) images per second of forward + backward + SGD step (backbone and a linear
    softmax head); the cpu figure is images per process CPU-second x threads, i.e. what the run
    reaches with its cores to itself (the wall figure drops when other jobs share the cores)."""
    torch.manual_seed(0)
    model = get_model(name, num_features=embedding_size).train()
    head = torch.nn.Linear(embedding_size, num_classes)
    optimizer = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.1, momentum=0.9)
    images = torch.randn(batch_size, 3, 112, 112)
    labels = torch.randint(0, num_classes, (batch_size,))
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(warmup + steps):
        if step == warmup:
            start, cpu_start = time.perf_counter(), time.process_time()
        loss = F.cross_entropy(head(model(images)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup and not sys.stdout.isatty():
            print(f"  throughput step {step - warmup + 1}/{steps}", flush=True)
    images = batch_size * steps
    return (images / (time.perf_counter() - start),
            images / (time.process_time() - cpu_start) * torch.get_num_threads())


def main(argv=None) -> int:
    parser = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="*", default=NETWORK_NAMES, choices=NETWORK_NAMES,
                        help="networks to list (default: all)")
    parser.add_argument("--embedding-size", type=int, default=512, help="feature size d (default 512)")
    parser.add_argument("--throughput-network", default="tiny", choices=NETWORK_NAMES,
                        help="network whose CPU training throughput is measured (default tiny)")
    parser.add_argument("--batch-size", type=int, default=64, help="throughput batch size (default 64)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classes of the throughput head")
    parser.add_argument("--throughput-steps", type=int, default=10,
                        help="timed training steps after 3 warm-up steps; 0 skips the measurement")
    args = parser.parse_args(argv)
    if args.embedding_size <= 0 or args.batch_size <= 1 or args.throughput_steps < 0:
        print("error: --embedding-size must be > 0, --batch-size > 1, --throughput-steps >= 0", file=sys.stderr)
        return 2

    rows = model_rows(args.networks, args.embedding_size)
    print(f"| network | params (M) | GMACs | GFLOPs |   (112x112, d={args.embedding_size})")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['network']} | {row['params_m']:.2f} | {row['gmacs']:.3f} | {row['gflops']:.3f} |")
    summary = {"benchmark": "model_table", "embedding_size": args.embedding_size, "models": rows}

    if args.throughput_steps:
        threads = torch.get_num_threads()
        print(f"\ntraining throughput of {args.throughput_network} on CPU ({threads} threads, "
              f"batch {args.batch_size}, {args.num_classes}-class softmax head):", flush=True)
        images_per_second, cpu_images_per_second = train_throughput(
            args.throughput_network, args.embedding_size, args.batch_size, args.num_classes,
            args.throughput_steps)
        load = os.getloadavg()[0]
        print(f"{images_per_second:.0f} images/s wall (1-minute load average {load:.1f} on "
              f"{os.cpu_count()} cores); {cpu_images_per_second:.0f} images/s by CPU time x {threads} threads")
        summary.update({"throughput_network": args.throughput_network, "cpu_threads": threads,
                        "batch_size": args.batch_size,
                        "train_images_per_second": round(images_per_second, 1),
                        "train_images_per_second_cpu_time": round(cpu_images_per_second, 1),
                        "load_average": round(load, 2)})
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
