"""Speed and memory of the IJB-C evaluation after embedding, at the real protocol size.

Builds an in-memory protocol of IJB-C's size (469,375 image embeddings and their flips at
512-d, 23,124 templates, 15,658,489 pairs with 19,557 genuine; 1:N galleries of 1,772 and
1,759 templates and 19,593 probes), then times template pooling, 1:1 scoring, TAR@FAR + AUC
and 1:N with the code of tools/ijbc_eval/. Target on 2 CPU cores: <= 8 s and <= 8 GiB.
Also measures embedding throughput (aligned images per second, alignment in DataLoader workers
included) of the tiny net and r50 on a few images. Prints figures, then one JSON line.

    python tools/benchmark/bench_ijbc_protocol.py                 # full size
    python tools/benchmark/bench_ijbc_protocol.py --scale 0.1     # a tenth of every count
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.common.cli import StrictArgumentParser  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backbones import get_model  # noqa: E402
from tools.ijbc_eval.embed import AlignedFaceDataset, EmbeddingOptions, embed_faces  # noqa: E402
from tools.ijbc_eval.identification import identification_metrics  # noqa: E402
from tools.ijbc_eval.pooling import (DEFAULT_VARIANT, Variant, template_features,  # noqa: E402
                                     template_rows)
from tools.ijbc_eval.toy_protocol import write_toy_protocol  # noqa: E402
from tools.ijbc_eval.protocol import load_verification_protocol  # noqa: E402
from tools.ijbc_eval.verification import pair_scores, verification_metrics  # noqa: E402
from tools.benchmark.devices import DEVICE_CHOICES, device_name, resolve_device  # noqa: E402

IJBC_SIZES = {"images": 469_375, "templates": 23_124, "pairs": 15_658_489, "genuine": 19_557,
              "gallery_1": 1_772, "gallery_2": 1_759, "probes": 19_593, "medias": 140_000}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # ru_maxrss is KiB on Linux


def synthetic_protocol(scale: float, dim: int, seed: int = 0) -> dict:
    """Random embeddings with IJB-C's counts; pairs join gallery and probe templates as in
    IJB-C (first template from the 3,531 gallery templates, second from the probes)."""
    rng = np.random.default_rng(seed)
    sizes = {key: max(2, int(round(value * scale))) for key, value in IJBC_SIZES.items()}
    num_gallery = sizes["gallery_1"] + sizes["gallery_2"]
    num_templates = num_gallery + sizes["probes"]
    image_templates = np.sort(np.r_[np.arange(num_templates),
                                    rng.integers(0, num_templates, sizes["images"] - num_templates)])
    image_medias = rng.integers(0, sizes["medias"], sizes["images"])
    embeddings = rng.standard_normal((sizes["images"], dim), dtype=np.float32)
    flip_embeddings = rng.standard_normal((sizes["images"], dim), dtype=np.float32)
    faceness = rng.uniform(0.1, 1.0, sizes["images"]).astype(np.float32)
    pair_first = rng.integers(0, num_gallery, sizes["pairs"])
    pair_second = rng.integers(num_gallery, num_templates, sizes["pairs"])
    labels = np.zeros(sizes["pairs"], dtype=np.int8)
    labels[rng.choice(sizes["pairs"], sizes["genuine"], replace=False)] = 1
    gallery_subjects = np.arange(num_gallery)
    probe_subjects = rng.integers(0, num_gallery, sizes["probes"])
    return {"sizes": sizes, "image_templates": image_templates, "image_medias": image_medias,
            "embeddings": embeddings, "flip_embeddings": flip_embeddings, "faceness": faceness,
            "pair_first": pair_first, "pair_second": pair_second, "labels": labels,
            "gallery_subjects": gallery_subjects, "probe_subjects": probe_subjects}


class Stopwatch:
    """Wall and process CPU seconds per named stage (CPU time is the fairer figure on a
    machine shared with other jobs)."""

    def __init__(self):
        self.figures = {}

    def stage(self, name: str):
        watch = self

        class _Stage:
            def __enter__(self):
                self.wall, self.cpu = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                watch.figures[f"{name}_s"] = time.perf_counter() - self.wall
                watch.figures[f"{name}_cpu_s"] = time.process_time() - self.cpu
        return _Stage()


def time_scoring(data: dict) -> dict:
    """Seconds per stage of the post-embedding pipeline (N0D1F1)."""
    watch = Stopwatch()
    with watch.stage("pooling"):
        template_ids, templates = template_features(
            data["embeddings"], data["flip_embeddings"], data["faceness"], Variant.parse(DEFAULT_VARIANT),
            data["image_templates"], data["image_medias"])
    with watch.stage("pair_scores"):
        first_rows = template_rows(template_ids, data["pair_first"])
        second_rows = template_rows(template_ids, data["pair_second"])
        scores = pair_scores(templates, templates, first_rows, second_rows)
    with watch.stage("tar_at_far"):
        metrics = verification_metrics(data["labels"], scores)
    with watch.stage("one_to_n"):
        sizes = data["sizes"]
        num_gallery_1 = sizes["gallery_1"]
        num_gallery = num_gallery_1 + sizes["gallery_2"]
        galleries = {"G1": (templates[:num_gallery_1], data["gallery_subjects"][:num_gallery_1]),
                     "G2": (templates[num_gallery_1:num_gallery], data["gallery_subjects"][num_gallery_1:])}
        identification = identification_metrics(templates[num_gallery:], data["probe_subjects"], galleries)
    figures = watch.figures
    figures["total_s"] = sum(v for k, v in list(figures.items()) if not k.endswith("cpu_s"))
    figures["total_cpu_s"] = sum(v for k, v in list(figures.items()) if k.endswith("cpu_s"))
    figures["auc"] = metrics["auc"]
    figures["top1_G1"] = identification["G1"]["top_k"][1]
    return figures


def embedding_throughput(network: str, num_images: int, batch_size: int, workers: int,
                         device: torch.device) -> float:
    """Aligned images per second (reading, alignment and both forward passes) on `device`."""
    with tempfile.TemporaryDirectory() as folder:
        subjects = max(2, num_images // 4)
        write_toy_protocol(folder, num_subjects=subjects, templates_per_subject=2,
                           images_per_template=max(1, num_images // (2 * subjects)), image_size=250)
        protocol = load_verification_protocol(folder, "IJBC")
        dataset = AlignedFaceDataset(protocol.image_dir, protocol.image_names, protocol.landmarks)
        model = get_model(network, 512).to(device).eval()   # the model lives where the images go
        options = EmbeddingOptions(batch_size=batch_size, device=str(device), workers=workers)
        embed_faces(model, torch.utils.data.Subset(dataset, range(min(batch_size, len(dataset)))),
                    options, description=f"{network} warm-up")
        start = time.perf_counter()
        embed_faces(model, dataset, options, description=f"{network} embedding")
        return len(dataset) / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = StrictArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the IJB-C counts")
    parser.add_argument("--dim", type=int, default=512, help="embedding size")
    parser.add_argument("--embed-images", type=int, default=512,
                        help="images for the tiny-net throughput (r50 uses a quarter; 0 skips)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for embedding")
    parser.add_argument("--embed-networks", nargs="+", default=["tiny", "r50"], choices=["tiny", "r50"],
                        help="networks whose embedding throughput is measured")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                        help="where the embedding throughput is measured (auto: cuda when available)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.scale <= 0 or args.dim <= 0:
        parser.error("--scale and --dim must be positive")

    data = synthetic_protocol(args.scale, args.dim)
    input_gib = peak_rss_gib()
    print(f"protocol: {data['sizes']} at {args.dim}-d; peak RSS after building inputs "
          f"{input_gib:.2f} GiB", flush=True)
    timings = time_scoring(data)
    del data
    results = {"scale": args.scale, "dim": args.dim, **{k: round(v, 4) for k, v in timings.items()},
               "peak_rss_gib": round(peak_rss_gib(), 3), "input_rss_gib": round(input_gib, 3),
               "threads": torch.get_num_threads()}
    for stage in ("pooling", "pair_scores", "tar_at_far", "one_to_n", "total"):
        print(f"{stage:>12}: {timings[f'{stage}_s']:6.2f} s wall  {timings[f'{stage}_cpu_s']:6.2f} s CPU",
              flush=True)
    print(f"peak RSS {results['peak_rss_gib']:.2f} GiB (inputs {input_gib:.2f} GiB); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    results["load_average"] = round(os.getloadavg()[0], 2)
    if args.embed_images > 0:
        for network, count, batch in (("tiny", args.embed_images, 128),
                                      ("r50", max(4, args.embed_images // 4), 32)):
            if network not in args.embed_networks:
                continue
            rate = embedding_throughput(network, count, batch, args.workers, device)
            results[f"embed_{network}_images_per_s"] = round(rate, 2)
            print(f"embedding {network}: {rate:.1f} aligned images/s ({device_name(device)}, image + flip)",
                  flush=True)
        results["embed_device"] = device_name(device)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
