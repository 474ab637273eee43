"""Data-loading throughput: RecordIO read + JPEG decode + flip + collate, in images per second.

Measures the loader with 0 workers (the per-core figure) and with N workers (total and per
worker), then the same set served from the decoded-image cache (utils/data/image_cache.py, what
training uses for small sets) with 0 workers: the cost left per image once nothing is decoded. Without a rec folder it first writes a temporary one of random-content 112x112 JPEGs
(quality 95). Target: 1,500 images/s per CPU core for 112x112 JPEGs.

    python tools/benchmark/bench_data.py                      # temporary 3000-image set
    python tools/benchmark/bench_data.py /data/faces_emore --workers 8 --seconds 20
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from utils.data.datasets import FaceRecDataset  # noqa: E402
from utils.data.face_rec import FaceRecWriter  # noqa: E402
from utils.data.image_cache import DecodedFaceRecDataset, with_image_cache  # noqa: E402
from utils.data.loader import build_loader  # noqa: E402

TARGET_PER_CORE = 1500.0


def write_random_rec(out_dir: Path, num_images: int, num_classes: int, size: int, seed: int) -> None:
    """Random-content images (smoothed noise, so JPEG sizes resemble faces more than white noise)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_images) * num_classes // num_images
    with FaceRecWriter(out_dir, image_size=(size, size)) as writer:
        for number, label in enumerate(labels.tolist()):
            coarse = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
            image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR)
            image = cv2.add(image, rng.integers(0, 8, image.shape, dtype=np.uint8))
            writer.add_image(label, image, quality=95)
            if (number + 1) % 1000 == 0:
                print(f"  wrote {number + 1}/{num_images} images", flush=True)


def measure(dataset, workers: int, batch_size: int, seconds: float, warmup_batches: int):
    """(images per wall second, images per CPU second of this process) over repeated epochs after a
    warm-up, timed for at least `seconds`. With 0 workers the second figure is the per-core rate,
    unaffected by other processes sharing the machine."""
    loader, sampler = build_loader(dataset, batch_size, rank=0, world_size=1, seed=0, num_workers=workers)
    epoch, images, seen_batches, start, cpu_start = 0, 0, 0, None, None
    while True:
        sampler.set_epoch(epoch)
        for batch in loader:
            seen_batches += 1
            if seen_batches == warmup_batches:
                start, cpu_start = time.perf_counter(), time.process_time()
            elif start is not None:
                images += batch["image"].shape[0]
                if time.perf_counter() - start >= seconds:
                    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
                    return images / wall, images / max(cpu, 1e-9)
        epoch += 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rec_dir", nargs="?", type=Path,
                        help="folder with train.rec/train.idx (default: write a temporary random set)")
    parser.add_argument("--num-images", type=int, default=3000, help="images in the temporary set")
    parser.add_argument("--num-classes", type=int, default=100, help="classes in the temporary set")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers for the parallel run")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per measurement")
    parser.add_argument("--no-flip", action="store_true", help="measure without the random flip")
    args = parser.parse_args(argv)
    if args.rec_dir is not None and not (args.rec_dir / "train.rec").is_file():
        print(f"error: {args.rec_dir}: no train.rec in this folder", file=sys.stderr)
        return 2
    # One thread each, as in the loader workers: intra-op threads only spin on 112x112 batches.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench_data_") as scratch:
        rec_dir = args.rec_dir
        if rec_dir is None:
            rec_dir = Path(scratch)
            print(f"writing {args.num_images} random 112x112 quality-95 JPEGs to {rec_dir}", flush=True)
            write_random_rec(rec_dir, args.num_images, min(args.num_classes, args.num_images), 112, seed=0)
        dataset = FaceRecDataset(rec_dir, flip=not args.no_flip)
        mean_bytes = (rec_dir / "train.rec").stat().st_size / len(dataset)
        print(f"data: {rec_dir} ({len(dataset)} images, {mean_bytes:.0f} bytes/record, "
              f"{dataset.num_classes} classes)", flush=True)
        batch_size = min(args.batch_size, len(dataset))
        warmup = 2
        single, single_cpu = measure(dataset, 0, batch_size, args.seconds, warmup)
        print(f"  0 workers: {single:,.0f} images/s wall, {single_cpu:,.0f} images per CPU second", flush=True)
        parallel, _ = measure(dataset, args.workers, batch_size, args.seconds, warmup + args.workers)
        print(f"  {args.workers} workers: {parallel:,.0f} images/s", flush=True)
        cached_dataset = with_image_cache(FaceRecDataset(rec_dir, flip=not args.no_flip))
        cached = cached_cpu = None
        if isinstance(cached_dataset, DecodedFaceRecDataset):
            cached, cached_cpu = measure(cached_dataset, 0, batch_size, args.seconds, warmup)
            print(f"  decoded-image cache, 0 workers: {cached:,.0f} images/s wall, "
                  f"{cached_cpu:,.0f} images per CPU second", flush=True)

    per_worker = parallel / max(args.workers, 1)
    print("\n| setting | images/s (wall) | per core / worker |\n|---|---|---|")
    print(f"| 0 workers (main process) | {single:,.0f} | {single_cpu:,.0f} per CPU second |")
    print(f"| {args.workers} workers | {parallel:,.0f} | {per_worker:,.0f} per worker |")
    if cached is not None:
        print(f"| decoded-image cache, 0 workers | {cached:,.0f} | {cached_cpu:,.0f} per CPU second |")
    print(f"target {TARGET_PER_CORE:,.0f} images/s per core: {'met' if single_cpu >= TARGET_PER_CORE else 'NOT met'} "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(json.dumps({"images_per_s_0_workers": round(single, 1), "images_per_cpu_s_0_workers": round(single_cpu, 1),
                      "workers": args.workers, "images_per_s_workers": round(parallel, 1),
                      "images_per_s_per_worker": round(per_worker, 1), "num_images": len(dataset),
                      "mean_record_bytes": round(mean_bytes), "batch_size": batch_size, "flip": not args.no_flip,
                      "cached_images_per_s_0_workers": None if cached is None else round(cached, 1),
                      "cached_images_per_cpu_s_0_workers": None if cached_cpu is None else round(cached_cpu, 1),
                      "target_per_core": TARGET_PER_CORE, "target_met": single_cpu >= TARGET_PER_CORE,
                      "load_average": round(os.getloadavg()[0], 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
