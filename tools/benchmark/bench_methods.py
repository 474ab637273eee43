"""Step time of each compatible-training method against the plain ArcFace step, and the time of
one UniBCT prototype refinement at Open-class scale.

Every method runs the same backbone, head, batch and device on random device tensors (images,
labels, old features), single process: forward, method loss, backward, optimiser step. The
artifacts the methods read at start-up (old features, prototypes, credible mask, class meta) are
small random arrays with manifests in a temporary folder. The refinement runs the UniBCT solve
(refine_class_prototypes, chunk by chunk as in training) on random features with MS1M-V3 class70
statistics (65,402 classes, 3,598,269 images, d = 128); --refine-scale shrinks both counts.

    python tools/benchmark/bench_methods.py --network tiny --batch-size 64
    python tools/benchmark/bench_methods.py --network r50 --batch-size 128 --precision fp16
Prints a table and, last, one JSON line.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.common.cli import StrictArgumentParser  # noqa: E402

from BCT_methods.AdvBCT.train import AdvBCTMethod  # noqa: E402
from BCT_methods.BCT.train import BCTMethod  # noqa: E402
from BCT_methods.L2.train import L2Method  # noqa: E402
from BCT_methods.MixBCT.train import MixBCTMethod  # noqa: E402
from BCT_methods.NCCL.train import NCCLMethod  # noqa: E402
from BCT_methods.UniBCT.train import (REFINE_CHUNK_IMAGES, UniBCTMethod, image_chunks,  # noqa: E402
                                      refine_class_prototypes)
from backbones import get_model  # noqa: E402
from utils.artifacts.manifests import derived_manifest_fields, save_array_atomic, save_npz_atomic  # noqa: E402
from utils.common.config import load_config  # noqa: E402
from utils.data.datasets import SyntheticDataset  # noqa: E402
from utils.training.method import Progress, TrainEnv  # noqa: E402
from utils.training.plain_methods import ArcFaceMethod  # noqa: E402
from tools.benchmark.devices import DEVICE_CHOICES, device_name, resolve_device, synchronise  # noqa: E402
from utils.artifacts.class_statistics import class_meta, class_prototypes, credible_mask  # noqa: E402

METHODS = {"arcface": ArcFaceMethod, "L2": L2Method, "BCT": BCTMethod, "UniBCT": UniBCTMethod,
           "NCCL": NCCLMethod, "AdvBCT": AdvBCTMethod, "MixBCT": MixBCTMethod}
CLASS70_CLASSES, CLASS70_IMAGES = 65402, 3598269


def parse_args(argv=None) -> argparse.Namespace:
    parser = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="tiny", help="backbone name (see backbones.get_model)")
    parser.add_argument("--embedding-size", type=int, default=128, help="old and new feature size")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument("--num-classes", type=int, default=1000, help="classes of the head")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="autocast precision (fp16 only on CUDA)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method and round (>= 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (the fastest is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS),
                        help="methods to time (arcface, the baseline, is always included)")
    parser.add_argument("--refine-scale", type=float, default=None,
                        help="fraction of the class70 class/image counts for the refinement timing "
                             "(default 1.0 on CUDA, 0.02 on the CPU); 0 skips it")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                        help="where to run (auto: cuda when available); fp16 on the CPU emulates the CUDA path")
    parser.add_argument("--images-per-class", type=int, default=4,
                        help="rows of the random old-feature artifacts per class (>= 2 for AdvBCT's class meta)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--steps and --rounds must be >= 1, --warmup >= 0")
    return args


def write_random_artifacts(folder: Path, dataset, embedding_size: int, seed: int = 0,
                           credible_threshold: float = 0.9) -> dict:
    """Random old features for `dataset` and the artifacts derived from them by the tools' functions,
    each with its manifest; returns {config key: path}. Also used by the method tests."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(len(dataset), embedding_size)).astype(np.float32)
    labels, fields = dataset.labels, dict(tool="bench_methods", args={}, dataset=dataset.fingerprint())
    paths = {key: folder / f"{key}.npy" for key in ("old_features", "class_prototypes", "credible_mask")}
    paths["class_meta"] = folder / "class_meta.npz"
    feature_manifest = save_array_atomic(paths["old_features"], features, kind="old_features", **fields)

    def derived(kind: str) -> dict:  # the lineage the methods check: computed from these features
        return derived_manifest_fields(kind, "bench_methods", {}, paths["old_features"], feature_manifest)
    save_array_atomic(paths["class_prototypes"], class_prototypes(features, labels, dataset.num_classes),
                      **derived("class_prototypes"))
    save_array_atomic(paths["credible_mask"], credible_mask(features, labels, credible_threshold, dataset.num_classes),
                      **derived("credible_mask"))
    save_npz_atomic(paths["class_meta"], class_meta(features, labels, dataset.num_classes), main_array="center",
                    **derived("class_meta"))
    return {key: str(path) for key, path in paths.items()}


def build_config(args, method_name: str, paths: dict, config_file: Path):
    config_file.write_text("from easydict import EasyDict as edict\nconfig = edict()\n")
    overrides = [f"method={method_name!r}", f"network={args.network!r}", f"embedding_size={args.embedding_size}",
                 f"batch_size={args.batch_size}", f"num_classes={args.num_classes}",
                 f"fp16={args.precision == 'fp16'}", f"bf16={args.precision == 'bf16'}",
                 f"nccl_queue_size={max(8192, args.batch_size)}"]
    overrides += [f"{key}={value!r}" for key, value in paths.items()]
    return load_config(config_file, overrides)


class MethodSteps:
    """One method's backbone, head, extra modules and optimiser on a fixed random device batch."""

    def __init__(self, args, method_class, cfg, dataset, device):
        env = TrainEnv(rank=0, world_size=1, local_rank=0, device=device, num_classes=args.num_classes,
                       num_image=len(dataset))
        self.method = method_class(cfg, env)
        self.method.validate_inputs(dataset)
        self.backbone = get_model(args.network, args.embedding_size).to(device)
        self.head = self.method.build_head().to(device)
        extra = self.method.extra_modules().to(device)
        modules = (self.backbone, self.head, extra)
        parameters = [p for module in modules for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(parameters, lr=0.01, momentum=0.9)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.precision)
        self.autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
        generator = torch.Generator(device="cpu").manual_seed(1)
        size, dim = args.batch_size, args.embedding_size
        self.batch = {
            "image": torch.randn(size, 3, 112, 112, generator=generator).to(device),
            "label": torch.randint(0, args.num_classes, (size,), generator=generator).to(device),
            "index": torch.arange(size, device=device),
            "old_features": torch.nn.functional.normalize(torch.randn(size, dim, generator=generator), dim=1).to(device),
            "credible_mask": (torch.rand(size, generator=generator) < 0.9).to(torch.uint8).to(device)}
        self.device, self.step = device, 0

    def seconds_per_step(self, steps: int) -> float:
        """Forward, method loss, backward, optimiser step, `steps` times; mean seconds."""
        synchronise(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            with self.autocast():
                embeddings = self.backbone(self.batch["image"])
                loss, _ = self.method.loss(embeddings, self.batch, self.head, Progress(self.step, 1000, 0, 1))
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
        synchronise(self.device)
        return (time.perf_counter() - start) / steps


def class70_like_sizes(num_classes: int, num_images: int, rng: np.random.Generator) -> np.ndarray:
    """Heavy-tailed class sizes (at least 1) adding up to num_images, like MS1M-V3 identities."""
    weights = rng.lognormal(mean=0.0, sigma=0.7, size=num_classes)
    sizes = 1 + np.floor(weights / weights.sum() * (num_images - num_classes)).astype(np.int64)
    sizes[np.argsort(-weights)[:num_images - sizes.sum()]] += 1
    return sizes


def time_refinement(scale: float, embedding_size: int, device: torch.device) -> dict:
    """Seconds of the UniBCT refinement solve over all classes (feature extraction excluded)."""
    rng = np.random.default_rng(0)
    num_classes = max(1, int(CLASS70_CLASSES * scale))
    num_images = max(num_classes, int(CLASS70_IMAGES * scale))
    sizes = class70_like_sizes(num_classes, num_images, rng)
    labels = np.repeat(np.arange(num_classes), sizes)
    generator = torch.Generator(device="cpu").manual_seed(2)
    seconds = 0.0
    for chunk in image_chunks(np.arange(num_classes), sizes, REFINE_CHUNK_IMAGES):
        in_chunk = np.zeros(num_classes, dtype=bool)
        in_chunk[chunk] = True
        rows = np.nonzero(in_chunk[labels])[0]
        new = torch.nn.functional.normalize(torch.randn(len(rows), embedding_size, generator=generator), dim=1)
        old = torch.randn(len(rows), embedding_size, generator=generator)
        new, old, chunk_labels = new.to(device), old.to(device), torch.from_numpy(labels[rows]).to(device)
        synchronise(device)
        start = time.perf_counter()
        refine_class_prototypes(old, new, chunk_labels, tau=0.05, lam=0.9)
        synchronise(device)
        seconds += time.perf_counter() - start
    return {"refine_classes": num_classes, "refine_images": int(num_images), "refine_seconds": seconds,
            "refine_seconds_class70_estimate": seconds / scale, "refine_max_class_size": int(sizes.max())}


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    methods = ["arcface"] + [name for name in args.methods if name != "arcface"]
    # a few images per class: enough for prototypes, masks and class meta (only their rows are read)
    dataset = SyntheticDataset(num_image=args.images_per_class * args.num_classes, num_classes=args.num_classes)
    results = {"device": device_name(device),
               "network": args.network, "batch_size": args.batch_size, "precision": args.precision,
               "num_classes": args.num_classes, "step_ms": {}, "ratio_to_arcface": {}}
    with tempfile.TemporaryDirectory() as folder:
        paths = write_random_artifacts(Path(folder), dataset, args.embedding_size)
        runs = {name: MethodSteps(args, METHODS[name], build_config(args, name, paths, Path(folder) / f"bench_{name}.py"),
                                  dataset, device) for name in methods}
    if args.warmup > 0:
        for run in runs.values():
            run.seconds_per_step(args.warmup)
    # interleaved rounds, best round per method: on a shared machine other jobs only add time
    rounds = {name: [] for name in methods}
    for round_index in range(args.rounds):
        for name, run in runs.items():
            rounds[name].append(run.seconds_per_step(args.steps))
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"{name} {rounds[name][-1] * 1000:.1f} ms" for name in methods), flush=True)
    baseline = min(rounds["arcface"])
    for name in methods:
        seconds = min(rounds[name])
        results["step_ms"][name] = round(seconds * 1000, 2)
        results["ratio_to_arcface"][name] = round(seconds / baseline, 3)
        print(f"{name:>8}: {seconds * 1000:9.2f} ms/step   x{seconds / baseline:.3f} of ArcFace", flush=True)
    scale = args.refine_scale if args.refine_scale is not None else (1.0 if device.type == "cuda" else 0.02)
    if scale > 0:
        refinement = time_refinement(scale, args.embedding_size, device)
        results.update(refinement)
        print(f"UniBCT refinement: {refinement['refine_classes']} classes, {refinement['refine_images']} images, "
              f"d={args.embedding_size}: {refinement['refine_seconds']:.1f} s "
              f"(linear extrapolation to class70: {refinement['refine_seconds_class70_estimate']:.1f} s)", flush=True)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
