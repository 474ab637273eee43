"""The stages of tools/benchmark/scale_rehearsal.py, one function each, run in their own process.

Each `stage_<name>(*text_arguments)` does the stage's work with the library's own code and
returns its figures (a dict; `wall_s`/`cpu_s` when only part of the call is the stage, `disk_mb`
for what it wrote, `note`). The rehearsal adds peak RSS and the RSS after imports.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

RANKS = 8                                # processes per node the stages stand for
SD_NAME = "f512_r50_arc_class70"         # the feature artifacts' scenario name


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    seen, total = set(), 0
    for item in path.rglob("*"):
        if item.is_file():
            status = item.stat()
            if status.st_ino not in seen:      # hard-linked crops count once
                seen.add(status.st_ino)
                total += status.st_blocks * 512
    return total


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def anonymous_mb() -> float:
    """This process's anonymous memory (heap, arrays; not the pages of mapped files, which RSS also
    counts), the `Anonymous:` line of /proc/self/smaps_rollup."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) / 1024
    return 0.0


class AnonymousPeak:
    """The largest anonymous memory of this process while the block runs, sampled every 0.2 s by
    a thread (a peak shorter than that can be missed), minus the value at its start."""

    def __enter__(self):
        import threading
        self.start = anonymous_mb()
        self.peak, self._stop = self.start, threading.Event()

        def sample():
            while not self._stop.wait(0.2):
                self.peak = max(self.peak, anonymous_mb())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anonymous_mb())
        self.grown_mb = self.peak - self.start


class Clock:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self):
        self.start, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.start, time.process_time() - self.cpu


# ---- 1. split ----------------------------------------------------------------------------------
def stage_split(source, out):
    from tools.split_dataset.split_dataset_ms1mv3 import split_rec
    split_rec(Path(source), Path(out), 0.3, overwrite=True, progress_seconds=60)
    return {"disk_mb": folder_bytes(Path(out)) / 1e6}


# ---- 2. dataset start-up -----------------------------------------------------------------------
def stage_startup(location):
    from utils.data.datasets import FaceRecDataset
    dataset = FaceRecDataset(location, flip=False)
    fingerprint = dataset.fingerprint()
    return {"num_image": fingerprint["num_image"], "num_classes": fingerprint["num_classes"]}


# ---- 3. training -------------------------------------------------------------------------------
class StubBackbone(torch.nn.Module):
    """A fixed projection of each image's channel means: the backbone's compute is not measured."""

    def __init__(self, dim: int = 512):
        super().__init__()
        self.projection = torch.nn.Linear(3, dim)

    def forward(self, images):
        return self.projection(images.float().mean(dim=(2, 3)))


def stage_training(location, steps):
    from utils.data.datasets import FaceRecDataset
    from utils.data.loader import build_loader, to_device
    steps = int(steps)
    with Clock() as startup:
        dataset = FaceRecDataset(location, flip=False)
        loader, sampler = build_loader(dataset, 128, rank=0, world_size=RANKS, seed=0, num_workers=2)
        if len(loader) < 2:
            raise ValueError(f"{location}: {len(dataset)} images give rank 0 of {RANKS} {len(loader)} batch(es) of "
                             f"128: too few to time a step (use a larger --fraction)")
        # one epoch of rank 0: step 1 and at most len(loader) - 1 timed steps (a small --fraction has fewer)
        steps = min(steps, len(loader) - 1)
        backbone = StubBackbone()
        batches = iter(loader)
        batch = to_device(next(batches), "cpu")
        backbone(batch["image"])
    meta_backbone = StubBackbone().to("meta")
    overhead, cpu_path, waits, pin_copies = [], [], [], []
    for _ in range(steps):
        wait = time.perf_counter()
        batch = next(batches)
        waits.append(time.perf_counter() - wait)
        # the GPU path: the loader's pin-memory thread copies the batch (a clone stands in: pinning
        # needs CUDA); to_device's copy and uint8 -> float run on the device, so on the CPU only
        # their dispatch remains: measured on the meta device (same ops, no data), as are the loss
        # and the logging line's reduction (its .item() is a wait for the device, not CPU work)
        # thread_time: the calling thread's CPU only (process_time would also count idle intra-op
        # threads spinning after a parallel copy, which is not work)
        cpu = time.thread_time()
        pinned = {name: value.clone() for name, value in batch.items() if torch.is_tensor(value)}
        pin_copies.append(time.thread_time() - cpu)
        cpu = time.thread_time()
        on_device = to_device(pinned, "meta")
        transfer = time.thread_time() - cpu
        embeddings = meta_backbone(on_device["image"])          # the backbone: not counted
        cpu = time.thread_time()
        embeddings.square().mean().detach()
        overhead.append(transfer + time.thread_time() - cpu)
        # the CPU path (training without a GPU): the same batch normalised by the CPU
        cpu = time.process_time()
        moved = to_device(batch, "cpu")
        cpu_conversion = time.process_time() - cpu
        embeddings = backbone(moved["image"])                   # the backbone: not counted
        cpu = time.process_time()
        float(embeddings.square().mean().detach())
        cpu_path.append(cpu_conversion + time.process_time() - cpu)
    overhead_ms, cpu_path_ms = 1000 * float(np.median(overhead)), 1000 * float(np.median(cpu_path))
    pin_ms = 1000 * float(np.median(pin_copies))
    return {"startup_to_step1_s": startup.wall, "step_overhead_ms": overhead_ms, "cpu_path_step_overhead_ms": cpu_path_ms,
            "loader_wait_ms": 1000 * float(np.median(waits)), "sampler_samples": len(sampler),
            "pin_copy_ms": pin_ms,
            "note": f"start-up to step 1 {startup.wall:.1f} s; training-thread CPU per step on the GPU path "
                    f"{overhead_ms:.2f} ms (median of {steps}: dispatch of to_device, loss and logging reduction, "
                    f"measured on the meta device; CUDA launch latency not included) + the pin-memory thread's "
                    f"copy {pin_ms:.2f} ms (a clone stands in, off the training thread); on the "
                    f"CPU path (uint8 -> float on the CPU) {cpu_path_ms:.2f} ms; waiting for 2 decode workers "
                    f"{1000 * np.median(waits):.0f} ms/step on this 2-core machine; consensus (an all-reduce) "
                    f"needs 8 ranks: not measured"}


def stage_partial_fc(num_classes):
    from losses.partial_fc import shard_range
    num_classes = int(num_classes)
    _, rows = max((shard_range(num_classes, rank, RANKS) for rank in range(RANKS)), key=lambda shard: shard[1])
    warm_up = torch.nn.Parameter(torch.randn(8, 512))   # torch's kernels load on first use: not the shard's memory
    (torch.randn(16, 512) @ warm_up.t()).logsumexp(dim=1).mean().backward()
    before = rss_mb()
    weight = torch.nn.Parameter(torch.randn(rows, 512) * 0.01)
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    embeddings = torch.nn.functional.normalize(torch.randn(128 * RANKS, 512))
    logits = embeddings @ torch.nn.functional.normalize(weight).t()
    logits.logsumexp(dim=1).mean().backward()
    optimizer.step()
    grown = rss_mb() - before
    return {"rows_per_rank": rows, "rank_memory_mb": grown,
            "note": f"{rows:,} rows per rank: weight + grad + momentum + one step's logits = {grown:.0f} MB"}


def stage_checkpoint(folder, num_classes):
    from backbones import get_model
    from utils.training.checkpoint import atomic_torch_save, load_checkpoint
    backbone = get_model("r50", 512)
    head = torch.randn(int(num_classes), 512)
    state = {"backbone": backbone.state_dict(), "head": {"weight": head},
             "optimizer": {"state": {0: {"momentum_buffer": head.clone()}},
                           "backbone_momentum": {name: value.clone() for name, value in backbone.state_dict().items()}},
             "epoch": 1, "step": 1000, "config": {"network": "r50", "embedding_size": 512},
             "per_rank": [{"rng": None, "method": None}] * RANKS}
    path = Path(folder) / "checkpoint.pt"
    with Clock() as save:
        atomic_torch_save(state, path)
    disk = path.stat().st_size / 1e6
    with Clock() as load:
        loaded = load_checkpoint(path)
    assert torch.equal(loaded["head"]["weight"], head)
    path.unlink()
    return {"wall_s": save.wall + load.wall, "cpu_s": save.cpu + load.cpu, "save_s": save.wall, "load_s": load.wall,
            "disk_mb": disk, "note": f"save {save.wall:.1f} s, load {load.wall:.1f} s (weights_only)"}


# ---- 4. get_feature write path -----------------------------------------------------------------
class StubImages(torch.utils.data.Dataset):
    """The real data set's labels and fingerprint; items are 4x4 images tinted by class (no decode)."""

    def __init__(self, dataset):
        self.dataset, self.labels = dataset, dataset.labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        label = int(self.labels[index])
        image = torch.full((3, 4, 4), label % 251, dtype=torch.uint8)
        image[0] = (label // 251) % 256
        image[2, 0, 0] = index % 7
        return image, label, index

    def fingerprint(self):
        return self.dataset.fingerprint()


def stage_get_feature(location, out):
    from tools.get_feature import get_feature
    from utils.artifacts.manifests import artifact_paths
    from utils.data.datasets import FaceRecDataset
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = StubImages(FaceRecDataset(location, flip=False))
    backbone = StubBackbone().eval()
    model_path = out / "model.pt"
    torch.save(backbone.state_dict(), model_path)
    args = argparse.Namespace(config="stub_r50_config.py", SD=SD_NAME, data=location, out=str(out),
                              model=str(model_path), batch_size=1000, num_workers=0, dtype="float32", amp="none",
                              progress_seconds=600.0)
    cfg = argparse.Namespace(network="r50", embedding_size=512)
    paths = artifact_paths(SD_NAME, out)
    partial = out / f".partial-{os.getpid()}.npy"
    with Clock() as clock, AnonymousPeak() as anonymous:
        get_feature._embed_and_publish(args, cfg, 0, 1, torch.device("cpu"), Path(location), out, model_path,
                                       dataset, backbone, paths, partial)
    model_path.unlink()
    return {"wall_s": clock.wall, "cpu_s": clock.cpu, "disk_mb": folder_bytes(out) / 1e6,
            "labels_mb": dataset.labels.nbytes / 1e6, "anonymous_peak_mb": anonymous.grown_mb,
            "note": f"{len(dataset):,} rows through the DataLoader, batch 1000; anonymous memory (smaps_rollup "
                    f"Anonymous, sampled every 0.2 s) grew by at most {anonymous.grown_mb:.0f} MB during the write "
                    f"path: peak RSS also counts the pages of the memory-mapped output file, which the kernel "
                    f"writes back and drops"}


# ---- 5. artifact tools -------------------------------------------------------------------------
def stage_artifact(tool, folder):
    from utils.common.verified_stamp import stamp_path
    folder = Path(folder)
    features = folder / f"{SD_NAME}_feature.npy"
    if tool == "avg_feature":       # the first tool after get_feature: it verifies (and stamps) the file
        stamp_path(features).unlink(missing_ok=True)
    verification = ("checksum verified in the pass that reads the file (no stamp yet)" if not stamp_path(features).exists()
                    else "checksum stamp of the earlier verification valid: no re-hash")
    rss_before = rss_mb()
    before = {path.name for path in folder.iterdir()}
    if tool == "avg_feature":
        from tools.get_feature.get_avg_feature import main
        argv = ["--SD", SD_NAME, "--out", str(folder)]
    elif tool == "credible":
        from tools.denoising.denoise_credible import main
        argv = ["--T", "0.9", "--SD", SD_NAME, "--out", str(folder)]
    else:
        from tools.get_feature.get_class_meta import main
        argv = ["--SD", SD_NAME, "--out", str(folder)]
    with Clock() as clock:
        main(argv)
    written = [path for path in folder.iterdir() if path.name not in before and path != stamp_path(features)]
    features_bytes = (folder / f"{SD_NAME}_feature.npy").stat().st_size
    from resource import RUSAGE_SELF, getrusage
    peak = getrusage(RUSAGE_SELF).ru_maxrss * 1024 - rss_before * 2 ** 20
    return {"wall_s": clock.wall, "cpu_s": clock.cpu, "disk_mb": sum(path.stat().st_size for path in written) / 1e6,
            "within_memory": bool(peak <= 2 * features_bytes),
            "note": f"input {features_bytes / 1e9:.2f} GB read with pread (no mapped pages); {verification}; "
                    f"peak RSS above the start {peak / 1e9:.2f} GB"}


def stage_refinement(folder):
    """What refined_prototypes does on the CPU for all 8 ranks' classes: read each chunk's old
    features and refine; the new features (the network's extraction, on the GPU in training) are
    made outside the clock as the old ones plus noise."""
    from BCT_methods.UniBCT.train import image_chunks, refine_class_prototypes
    from utils.artifacts.manifests import load_old_features
    features, labels, _, num_classes = load_old_features(SD_NAME, Path(folder), verify_content=False)
    sizes = np.bincount(labels, minlength=num_classes)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    generator = torch.Generator().manual_seed(0)
    wall = cpu = read_wall = 0.0
    done = 0
    for chunk in image_chunks(np.arange(num_classes), sizes, 1 << 18):
        rows = slice(int(starts[chunk[0]]), int(starts[chunk[-1] + 1]))
        with Clock() as reading:
            old = torch.from_numpy(np.array(features[rows], dtype=np.float32))
        new = torch.nn.functional.normalize(old + 0.1 * torch.randn(old.shape, generator=generator), dim=1)
        with Clock() as refining:
            class_ids, _ = refine_class_prototypes(old, new, torch.from_numpy(labels[rows]), tau=0.05, lam=0.9)
        wall, cpu = wall + reading.wall + refining.wall, cpu + reading.cpu + refining.cpu
        read_wall += reading.wall
        done += len(class_ids)
    assert done == int((sizes > 0).sum())
    return {"wall_s": wall, "cpu_s": cpu,
            "read_s": read_wall, "refine_s": wall - read_wall,
            "note": f"{done:,} classes; reading the old features from the memory-mapped file {read_wall:.1f} s "
                    f"+ refinement {wall - read_wall:.1f} s (the stand-in new features are not timed); "
                    f"per rank about 1/{RANKS} of it"}


def stage_feature_store(folder):
    from utils.artifacts.manifests import artifact_paths, OLD_FEATURES
    from utils.data.feature_store import ArrayStore
    rng = np.random.default_rng(0)
    with Clock() as clock:
        store = ArrayStore(artifact_paths(SD_NAME, Path(folder))[OLD_FEATURES], normalise_rows=True)
        for _ in range(1000):
            store[np.sort(rng.integers(0, len(store), 128))]
    return {"wall_s": clock.wall, "cpu_s": clock.cpu, "note": f"{clock.wall:.2f} ms per batch of 128"}


# ---- 6. IJB-C ----------------------------------------------------------------------------------
def stage_ijbc_protocol(root):
    from tools.ijbc_eval.cache import image_fingerprint
    from tools.ijbc_eval.protocol import load_identification_protocol, load_verification_protocol
    with Clock() as load:
        protocol = load_verification_protocol(root, "IJBC")
        load_identification_protocol(root, "IJBC", np.unique(protocol.image_templates))
    with Clock() as fingerprint:
        image_fingerprint(protocol.image_dir, protocol.image_names)
    return {"wall_s": load.wall + fingerprint.wall, "cpu_s": load.cpu + fingerprint.cpu,
            "protocol_s": load.wall, "fingerprint_s": fingerprint.wall,
            "note": f"protocol load {load.wall:.1f} s (with the image existence check), "
                    f"fingerprint {fingerprint.wall:.1f} s; {len(protocol.pair_labels):,} pairs"}


def stage_ijbc_decode(root, crops):
    import cv2
    from tools.ijbc_eval.embed import AlignedFaceDataset
    from tools.ijbc_eval.protocol import load_verification_protocol
    torch.set_num_threads(1)
    protocol = load_verification_protocol(root, "IJBC", check_images=False)
    count = min(int(crops), len(protocol.image_names))
    dataset = AlignedFaceDataset(protocol.image_dir, protocol.image_names[:count], protocol.landmarks[:count])
    with Clock() as clock:
        for index in range(count):
            image = dataset[index]["image"].unsqueeze(0).float()
            both = torch.cat([image, torch.flip(image, dims=[3])]).sub_(127.5).div_(127.5)
    del both
    # reduced-scale decoding: speed and what it changes in the aligned 112x112 face (not adopted)
    from tools.ijbc_eval.alignment import warp_face
    transform = dataset.transforms[0]
    path = str(protocol.image_dir / str(protocol.image_names[0]))
    full = warp_face(cv2.imread(path, cv2.IMREAD_COLOR), transform)
    half_transform = transform.copy()
    half_transform[:, :2] *= 2.0        # the half-size image: source coordinates halve
    start = time.perf_counter()
    for _ in range(200):
        half = warp_face(cv2.imread(path, cv2.IMREAD_REDUCED_COLOR_2), half_transform)
    half_rate = 200 / (time.perf_counter() - start)
    difference = float(np.abs(full.astype(np.float32) - half.astype(np.float32)).mean())
    height, width = cv2.imread(path).shape[:2]
    rate = count / clock.wall
    return {"wall_s": clock.wall, "cpu_s": clock.cpu, "crops_per_s": rate, "reduced_decode_crops_per_s": half_rate,
            "reduced_decode_mean_abs_pixel_diff": difference,
            "note": f"{rate:.0f} crops/s on {width}x{height} px crops; decoding at half scale: {half_rate:.0f} "
                    f"crops/s, aligned pixels differ by {difference:.1f}/255 on average (not adopted)"}


def stage_ijbc_eval(fraction):
    from tools.benchmark.bench_ijbc_protocol import synthetic_protocol
    from tools.ijbc_eval.identification import identification_metrics
    from tools.ijbc_eval.pooling import DEFAULT_VARIANT, Variant, template_features, template_rows
    from tools.ijbc_eval.verification import pair_scores, verification_metrics
    data = synthetic_protocol(float(fraction), 512)
    rng = np.random.default_rng(1)
    old_embeddings = data["embeddings"] + 0.5 * rng.standard_normal(data["embeddings"].shape, dtype=np.float32)
    sizes = data["sizes"]
    num_gallery_1, num_gallery = sizes["gallery_1"], sizes["gallery_1"] + sizes["gallery_2"]
    rows = []

    def pooled(embeddings):
        return template_features(embeddings, data["flip_embeddings"], data["faceness"],
                                 Variant.parse(DEFAULT_VARIANT), data["image_templates"], data["image_medias"])

    template_ids, new_templates = pooled(data["embeddings"])
    with Clock() as pooling:
        _, old_templates = pooled(old_embeddings)
    first_rows = template_rows(template_ids, data["pair_first"])
    second_rows = template_rows(template_ids, data["pair_second"])
    for name, query, reference in (("self", new_templates, new_templates), ("cross", new_templates, old_templates)):
        with Clock() as verification:
            scores = pair_scores(query, reference, first_rows, second_rows)
            verification_metrics(data["labels"], scores)
        del scores
        with Clock() as identification:
            galleries = {"G1": (reference[:num_gallery_1], data["gallery_subjects"][:num_gallery_1]),
                         "G2": (reference[num_gallery_1:num_gallery], data["gallery_subjects"][num_gallery_1:])}
            identification_metrics(query[num_gallery:], data["probe_subjects"], galleries)
        for kind, clock in (("1:1", verification), ("1:N", identification)):
            total = clock.wall + pooling.wall
            rows.append({"stage": f"IJB-C evaluation {name} {kind}", "wall_s": total, "cpu_s": clock.cpu + pooling.cpu,
                         "target": "<= 10 s", "met": bool(total <= 10),
                         "note": f"template pooling {pooling.wall:.1f} s + {'pair scores + TAR@FAR' if kind == '1:1' else 'rank-k + FPIR'} "
                                 f"{clock.wall:.1f} s; {sizes['pairs']:,} pairs; peak RSS is the whole evaluation's"})
    return {"max_part_s": max(row["wall_s"] for row in rows), "rows": rows,
            "note": f"{sizes['images']:,} image embeddings + flips at 512-d, {sizes['templates']:,} templates"}
