"""Scale rehearsal: every CPU-side stage at MS1M-V3's and IJB-C's real sizes, measured.

    nice -n 10 python tools/benchmark/scale_rehearsal.py --work /work/scale_data          # full size
    python tools/benchmark/scale_rehearsal.py --work /tmp/scale_smoke --fraction 0.01      # smoke (what CI runs)

Data (built once under --work, reused by later runs; a --work holding a partial build, or one
built at another --fraction, is refused):
  ms1m/                   MS1M-V3-shaped rec in our layout: 5,179,510 images, 93,431 identities
                          (the first 28,029 hold 1,581,241 images = class30, the other 65,402 hold
                          3,598,269 = class70), identity records and header record 0
  prefix/train_part_70_class.rec/.idx   class70 as the reference split tool writes it (header
                          record 0 = [N+1, C], labels [class, original key], no identity records)
  big/train_part_70_class.rec/.idx      the same with ~8 KB payloads (~30 GB at full size: more
                          than the page cache holds), for the cold prefix start-up only
  ijbc/IJBC/              IJB-C-shaped protocol: 469,375 crops (hard links to a few 250 px JPEGs,
                          60,000 links a file),
                          23,124 templates, 15,658,489 pairs, galleries G1/G2 and probes
Identity sizes: a lognormal (sigma 0.8) per identity, clipped to [2, 12 x mean], then scaled and
rounded (largest remainders) so each part's total is exact. Payloads are valid 112x112 JPEGs of
a few hundred bytes, padded with a JPEG comment segment to one fixed length.

Every stage runs in its own process (or 8 at once, as 8 ranks do); wall and CPU seconds and
peak RSS come from the kernel (getrusage in each stage process, forked from a
fork server that has imported torch once), disk from the files the stage wrote. Cold = the files'
pages dropped with posix_fadvise(POSIX_FADV_DONTNEED) first. The backbone's compute is not
measured here (stub backbones): `python tools/benchmark/run_all.py` on a GPU measures it.
Prints one table and writes <work>/scale_rehearsal.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from tools.benchmark.scale_stages import RANKS, folder_bytes  # noqa: E402
from utils.common.atomic_files import atomic_write_text  # noqa: E402
from utils.common.cli import StrictArgumentParser  # noqa: E402

FULL = {"images": 5_179_510, "classes": 93_431, "class30_images": 1_581_241, "class30_classes": 28_029,
        "ijbc_images": 469_375, "ijbc_templates": 23_124, "ijbc_pairs": 15_658_489, "ijbc_genuine": 19_557,
        "ijbc_gallery_1": 1_772, "ijbc_gallery_2": 1_759, "ijbc_medias": 140_000}
SMALL_PAYLOAD, BIG_PAYLOAD = 480, 8192          # bytes of each JPEG payload (multiple of 4)
MARKER = "complete.json"
PART_MARKER = ".built"
PARTS = ("ms1m", "prefix", "big", "ijbc")
RESULT = "scale_rehearsal.json"
# the stage groups --stages picks from, in the order they run (artifact tools read get_feature's output)
STAGE_GROUPS = ("split", "startup", "training", "partial_fc", "checkpoint", "get_feature", "artifacts",
                "refinement", "feature_store", "ijbc_protocol", "ijbc_decode", "ijbc_eval")
GROUP_OF_PREFIX = {"split tool": "split", "start-up": "startup", "training": "training", "Partial FC": "partial_fc",
                   "checkpoint": "checkpoint", "get_feature.py": "get_feature", "avg_feature": "artifacts",
                   "credible": "artifacts", "class_meta": "artifacts", "UniBCT": "refinement",
                   "old-feature store": "feature_store", "IJB-C protocol": "ijbc_protocol",
                   "IJB-C decode": "ijbc_decode", "IJB-C evaluation": "ijbc_eval"}
FEATURES_DONE = "features.done"     # beside run/features: get_feature's output is complete and reusable
LINKS_PER_FILE = 60_000


# ---- sizes --------------------------------------------------------------------------------------
def shapes(fraction: float) -> dict:
    """Every count scaled by `fraction` (at least 2 of anything)."""
    scaled = {key: max(2, int(round(value * fraction))) for key, value in FULL.items()}
    scaled["class70_images"] = scaled["images"] - scaled["class30_images"]
    scaled["class70_classes"] = scaled["classes"] - scaled["class30_classes"]
    return scaled


def long_tail_sizes(num_classes: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """Identity sizes with a long tail summing to exactly `total` (see the module docstring)."""
    mean = total / num_classes
    raw = np.clip(rng.lognormal(0.0, 0.8, num_classes), 0, None)
    raw = np.clip(raw / raw.mean() * mean, min(2.0, mean), 12 * mean)
    scaled = raw * total / raw.sum()
    sizes = np.maximum(1, np.floor(scaled).astype(np.int64))
    missing = total - int(sizes.sum())
    by_remainder = np.argsort(-(scaled - np.floor(scaled)), kind="stable")
    if missing > 0:
        sizes[by_remainder[:missing]] += 1
    while missing < 0:                       # floors at 1 overshot: take from the largest
        largest = np.argsort(-sizes, kind="stable")[: -missing]
        sizes[largest] -= 1
        missing = total - int(sizes.sum())
    return sizes


# ---- record building ----------------------------------------------------------------------------
def jpeg_payloads(length: int, variants: int = 4) -> np.ndarray:
    """[variants, length] uint8: valid 112x112 JPEGs padded to `length` with a comment segment."""
    import cv2
    from utils.data.recordio import MAGIC
    payloads = []
    ramp = np.linspace(0, 255, 112, dtype=np.float32)
    for variant in range(variants):
        image = np.stack([np.add.outer(ramp, ramp * (variant + 1) / variants) / 2,
                          np.add.outer(ramp[::-1], ramp) / 2, np.full((112, 112), 40.0 * variant)], axis=2)
        ok, encoded = cv2.imencode(".jpg", image.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 10,
                                                                     cv2.IMWRITE_JPEG_OPTIMIZE, 1])
        encoded = encoded.tobytes()
        padding = length - len(encoded) - 4
        if padding < 0:
            raise ValueError(f"a {len(encoded)}-byte JPEG does not fit a {length}-byte payload")
        payload = encoded[:2] + b"\xff\xfe" + (padding + 2).to_bytes(2, "big") + bytes(padding) + encoded[2:]
        assert cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR).shape == (112, 112, 3)
        words = np.frombuffer(payload, dtype="<u4")
        assert not (words == MAGIC).any()         # no record is split at a magic: one chunk each
        payloads.append(np.frombuffer(payload, dtype=np.uint8))
    return np.stack(payloads)


def record_dtype(array_labels: int, payload: int) -> np.dtype:
    """One framed record: chunk header, IRHeader, float32 array labels, payload (no padding)."""
    fields = [("magic", "<u4"), ("lrecord", "<u4"), ("flag", "<u4"), ("label", "<f4"), ("id", "<u8"),
              ("id2", "<u8")]
    if array_labels:
        fields.append(("labels", "<f4", (array_labels,)))
    if payload:
        fields.append(("payload", "u1", (payload,)))
    return np.dtype(fields)


class RecBuilder:
    """Appends framed records to a .rec and their lines to a .idx, whole blocks at a time."""

    def __init__(self, prefix: Path):
        from utils.data.recordio import MAGIC
        self.magic, self.prefix = MAGIC, prefix
        self.rec = open(prefix.with_suffix(".rec"), "wb")
        self.idx = open(prefix.with_suffix(".idx"), "w")
        self.offset = 0

    def add(self, keys, labels, ids, id2=0, array_labels=None, payloads=None) -> None:
        from utils.data.recordio import LENGTH_BITS
        count = len(keys)
        width = 0 if array_labels is None else array_labels.shape[1]
        payload = 0 if payloads is None else payloads.shape[1]
        block = np.zeros(count, dtype=record_dtype(width, payload))
        block["magic"] = self.magic
        block["lrecord"] = (0 << LENGTH_BITS) | (24 + 4 * width + payload)
        block["flag"] = width
        block["label"] = 0.0 if width else labels
        block["id"], block["id2"] = ids, id2
        if width:
            block["labels"] = array_labels
        if payload:
            block["payload"] = payloads
        offsets = self.offset + np.arange(count, dtype=np.int64) * block.dtype.itemsize
        self.rec.write(block.tobytes())
        self.idx.write("".join(f"{key}\t{offset}\n" for key, offset in zip(np.asarray(keys).tolist(),
                                                                            offsets.tolist())))
        self.offset += count * block.dtype.itemsize

    def close(self) -> None:
        self.rec.close()
        self.idx.close()


def images_in_blocks(builder: RecBuilder, sizes: np.ndarray, payloads: np.ndarray, prefix_labels: bool,
                     first_original_key: int = 1, block_bytes: int = 1 << 26) -> None:
    """Image records keys 1..N, grouped by identity 0..C-1. Our layout: scalar label; the reference
    prefix layout: labels [class, original key]."""
    labels = np.repeat(np.arange(len(sizes), dtype=np.float32), sizes)
    block = max(1, block_bytes // (payloads.shape[1] + 48))
    for start in range(0, len(labels), block):
        keys = np.arange(start + 1, min(start + block, len(labels)) + 1, dtype=np.int64)
        variant = payloads[keys % len(payloads)]
        if prefix_labels:
            pairs = np.stack([labels[keys - 1], (keys - 1 + first_original_key).astype(np.float32)], axis=1)
            builder.add(keys, None, keys, array_labels=pairs, payloads=variant)
        else:
            builder.add(keys, labels[keys - 1], keys, payloads=variant)


def build_ms1m(folder: Path, sizes: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    builder = RecBuilder(folder / "train")
    images_in_blocks(builder, sizes, jpeg_payloads(SMALL_PAYLOAD), prefix_labels=False)
    num_image, num_classes = int(sizes.sum()), len(sizes)
    bounds = np.concatenate([[1], 1 + np.cumsum(sizes)]).astype(np.float32)
    identity_keys = np.arange(num_image + 1, num_image + num_classes + 1, dtype=np.int64)
    builder.add(identity_keys, None, identity_keys, array_labels=np.stack([bounds[:-1], bounds[1:]], axis=1))
    builder.add(np.array([0]), None, np.array([0]), id2=1,
                array_labels=np.array([[num_image + 1, num_image + num_classes + 1]], dtype=np.float32))
    builder.close()
    (folder / "property").write_text(f"{num_classes},112,112\n")


def build_prefix(folder: Path, sizes: np.ndarray, payload: int, first_original_key: int) -> None:
    """class70 as the reference split tool's prefix files: header record 0 [N+1, C] first."""
    folder.mkdir(parents=True, exist_ok=True)
    builder = RecBuilder(folder / "train_part_70_class")
    num_image = int(sizes.sum())
    builder.add(np.array([0]), None, np.array([0]),
                array_labels=np.array([[num_image + 1, len(sizes)]], dtype=np.float32))
    images_in_blocks(builder, sizes, jpeg_payloads(payload), prefix_labels=True,
                     first_original_key=first_original_key)
    builder.close()


def build_ijbc(root: Path, counts: dict, rng: np.random.Generator) -> None:
    """Protocol files with IJB-C's counts; every crop is a hard link to one of a few 250 px JPEGs."""
    import cv2
    from tools.ijbc_eval.alignment import REFERENCE_POINTS
    from tools.ijbc_eval.protocol import SUBSETS, subset_paths
    paths = subset_paths(root, "IJBC")
    paths["images"].mkdir(parents=True, exist_ok=True)
    paths["landmarks"].parent.mkdir(parents=True, exist_ok=True)
    num_images, num_templates = counts["ijbc_images"], counts["ijbc_templates"]
    num_gallery = counts["ijbc_gallery_1"] + counts["ijbc_gallery_2"]
    sources = []
    for variant in range(max(4, -(-num_images // LINKS_PER_FILE))):     # ext4 allows 65,000 links a file
        if variant < 4:
            noise = rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)
            face = cv2.GaussianBlur(noise, (0, 0), 3 + variant)
            encoded = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        else:
            encoded = sources[variant % 4].read_bytes()
        source = paths["root"] / f"source_{variant}.jpg"
        source.write_bytes(encoded)
        sources.append(source)
    names = [f"{index + 1}.jpg" for index in range(num_images)]
    for index, name in enumerate(names):
        os.link(sources[index % len(sources)], paths["images"] / name)
    template_of_image = np.sort(np.r_[np.arange(num_templates),
                                      rng.integers(0, num_templates, num_images - num_templates)])
    media_of_image = np.sort(rng.integers(0, counts["ijbc_medias"], num_images))
    landmarks = REFERENCE_POINTS[None] * (250 / 112) + rng.normal(0, 2.0, (num_images, 5, 2))
    scores = rng.uniform(0.3, 1.0, num_images)
    with open(paths["landmarks"], "w") as handle:
        for start in range(0, num_images, 100_000):
            rows = range(start, min(start + 100_000, num_images))
            handle.write("".join(f"{names[i]} {' '.join(f'{v:.2f}' for v in landmarks[i].ravel())} {scores[i]:.3f}\n"
                                 for i in rows))
    with open(paths["templates"], "w") as handle:
        handle.write("".join(f"{name} {t} {m}\n" for name, t, m in
                             zip(names, template_of_image.tolist(), media_of_image.tolist())))
    subjects = np.arange(num_templates) % num_gallery
    pair_first = rng.integers(0, num_gallery, counts["ijbc_pairs"])
    pair_second = rng.integers(num_gallery, num_templates, counts["ijbc_pairs"])
    labels = (subjects[pair_first] == subjects[pair_second]).astype(np.int64)
    with open(paths["pairs"], "w") as handle:
        for start in range(0, len(pair_first), 1_000_000):
            part = slice(start, start + 1_000_000)
            handle.write("".join(f"{a} {b} {y}\n" for a, b, y in zip(pair_first[part].tolist(),
                                                                    pair_second[part].tolist(),
                                                                    labels[part].tolist())))
    gallery_names = SUBSETS["IJBC"][1]
    sets = {gallery_names[0]: np.arange(counts["ijbc_gallery_1"]),
            gallery_names[1]: np.arange(counts["ijbc_gallery_1"], num_gallery),
            "probes": np.arange(num_gallery, num_templates)}
    first_image = np.searchsorted(template_of_image, np.arange(num_templates))
    for key, templates in sets.items():
        with open(paths[key], "w") as handle:
            handle.write("TEMPLATE_ID,SUBJECT_ID,FILENAME\n")
            handle.write("".join(f"{t},{subjects[t]},{names[first_image[t]]}\n" for t in templates.tolist()))


def identity_sizes(counts: dict):
    """(class30 sizes, class70 sizes, the generator after them): seed 0, so every build and any
    part added later draws the same identities; the IJB-C build continues from that generator."""
    rng = np.random.default_rng(0)
    sizes30 = long_tail_sizes(counts["class30_classes"], counts["class30_images"], rng)
    sizes70 = long_tail_sizes(counts["class70_classes"], counts["class70_images"], rng)
    return sizes30, sizes70, rng


def build_part(work: Path, name: str, step) -> float:
    """Build part `name` with step() unless it is there whole (its PART_MARKER); its build seconds.
    A folder without the marker is an interrupted build of this part: removed first."""
    if (work / name / PART_MARKER).is_file():
        seconds = json.loads((work / name / PART_MARKER).read_text())["seconds"]
        print(f"reusing {name} (built in {seconds:.0f} s)", flush=True)
        return seconds
    if (work / name).exists():
        shutil.rmtree(work / name)
    start = time.perf_counter()
    step()
    seconds = round(time.perf_counter() - start, 1)
    (work / name / PART_MARKER).write_text(json.dumps({"seconds": seconds}))
    print(f"built {name}: {folder_bytes(work / name) / 1e9:.2f} GB in {seconds:.0f} s", flush=True)
    return seconds


def write_build_marker(work: Path, built: dict) -> None:
    atomic_write_text(work / MARKER, json.dumps(built, indent=1))


def add_big_part(work: Path, built: dict) -> dict:
    """Add the large-payload rec to a complete build made without it (`--no-big`, or removed to free
    disk): the same class70 identity sizes, drawn again from the same seed."""
    counts = built["counts"]
    sizes70 = identity_sizes(counts)[1]
    seconds = build_part(work, "big", lambda: build_prefix(work / "big", sizes70, BIG_PAYLOAD,
                                                           counts["class30_images"] + 1))
    built = dict(built, big_payload_rec=True, build_seconds=dict(built["build_seconds"], big=seconds),
                 disk_gb=round(folder_bytes(work) / 1e9, 2))
    built["seconds"] = sum(built["build_seconds"].values())
    write_build_marker(work, built)
    return built


def build_data(work: Path, fraction: float, big: bool) -> dict:
    """Build every data set under `work` unless a complete build of this fraction is there."""
    marker = work / MARKER
    if marker.is_file():
        built = json.loads(marker.read_text())
        if built["fraction"] != fraction:
            raise ValueError(f"{work} holds a build at --fraction {built['fraction']}, not {fraction}: "
                             f"pass another --work")
        print(f"reusing the data built in {work} ({built['disk_gb']:.1f} GB, built in {built['seconds']:.0f} s)",
              flush=True)
        if big and not built["big_payload_rec"]:
            built = add_big_part(work, built)
        return built
    # parts finished by an interrupted build are kept (each has its PART_MARKER); anything else is refused
    unknown = [entry.name for entry in work.iterdir()
               if not (entry.name in PARTS and (entry / PART_MARKER).is_file())] if work.exists() else []
    if unknown:
        raise ValueError(f"{work} holds {unknown[0]} but no {MARKER}: a partial or foreign build; "
                         f"remove it or pass another --work")
    work.mkdir(parents=True, exist_ok=True)
    counts = shapes(fraction)
    sizes30, sizes70, rng = identity_sizes(counts)
    sizes = np.concatenate([sizes30, sizes70])
    timings = {}
    for name, step in [("ms1m", lambda: build_ms1m(work / "ms1m", sizes)),
                       ("prefix", lambda: build_prefix(work / "prefix", sizes70, SMALL_PAYLOAD, counts["class30_images"] + 1)),
                       ("big", lambda: build_prefix(work / "big", sizes70, BIG_PAYLOAD, counts["class30_images"] + 1)),
                       ("ijbc", lambda: build_ijbc(work / "ijbc", counts, rng))]:
        if name == "big" and not big:
            continue
        timings[name] = build_part(work, name, step)
    built = {"fraction": fraction, "counts": counts, "seconds": sum(timings.values()), "build_seconds": timings,
             "disk_gb": round(folder_bytes(work) / 1e9, 2), "max_identity_size": int(sizes.max()),
             "min_identity_size": int(sizes.min()), "median_identity_size": float(np.median(sizes)),
             "big_payload_rec": big}
    write_build_marker(work, built)
    print(f"data: {built['disk_gb']:.1f} GB in {built['seconds']:.0f} s; identity sizes "
          f"{built['min_identity_size']}..{built['max_identity_size']}, median {built['median_identity_size']}",
          flush=True)
    return built


# ---- measuring ----------------------------------------------------------------------------------
def drop_from_page_cache(paths) -> None:
    """posix_fadvise(POSIX_FADV_DONTNEED) on every file under `paths` (what "cold" means here)."""
    for path in paths:
        files = [path] if path.is_file() else [item for item in path.rglob("*") if item.is_file()]
        for item in files:
            descriptor = os.open(item, os.O_RDONLY)
            try:
                os.fdatasync(descriptor)
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


def _stage_process(stage: str, options, connection) -> None:
    """A forked stage process: run the stage, send its figures (or its one-line error) back."""
    try:
        from tools.benchmark import scale_stages
        rss_imports = scale_stages.rss_mb()      # the imports are the fork server's, already loaded
        start, cpu = time.perf_counter(), time.process_time()
        figures = getattr(scale_stages, f"stage_{stage}")(*options)
        figures.setdefault("wall_s", time.perf_counter() - start)
        figures.setdefault("cpu_s", time.process_time() - cpu)
        figures["rss_imports_mb"] = rss_imports
        figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        connection.send(json.loads(json.dumps(figures, default=float)))
    except BaseException as error:   # the rehearsal names the stage and stops
        connection.send({"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"})
    finally:
        connection.close()


_CONTEXT = None


def stage_context():
    """A fork server that imported torch and the stages once: every stage process is forked from it,
    so a stage's figures do not include a 3 s import, and its RSS "above imports" is what it added."""
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["tools.benchmark.scale_stages"])
    return _CONTEXT


def run_children(arguments, copies: int = 1) -> list:
    """Run stage `arguments[0]` in `copies` processes at once; -> each one's figures."""
    context = stage_context()
    started = []
    for _ in range(copies):
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_stage_process, args=(arguments[0], list(arguments[1:]), sender))
        process.start()
        sender.close()
        started.append((process, receiver))
    measured = []
    for process, receiver in started:
        try:
            report = receiver.recv()
        except EOFError:
            report = {"error": "the stage process died without a report"}
        process.join()
        if "error" in report:
            raise RuntimeError(f"stage {' '.join(arguments)}: {report['error']}")
        measured.append(report)
    return measured


def stage_entry(stage, figures, target, met, note, extra=None) -> dict:
    entry = {"stage": stage, "wall_s": round(float(figures["wall_s"]), 2), "cpu_s": round(float(figures["cpu_s"]), 2),
             "peak_rss_mb": round(float(figures["peak_rss_mb"]), 1), "disk_mb": round(float(figures.get("disk_mb", 0.0)), 1),
             "target": target, "met": met, "note": note}
    entry.update(extra or {})
    return entry


def group_of(entry: dict) -> str:
    """The --stages group of a JSON entry (entries written before groups were recorded: by name)."""
    if "group" in entry:
        return entry["group"]
    return next((group for prefix, group in GROUP_OF_PREFIX.items() if entry["stage"].startswith(prefix)), "")


def rehearse(work: Path, built: dict, args, selected=STAGE_GROUPS) -> list:
    """The stages of issue 16 section 2 in `selected` groups, in order; -> JSON stage entries."""
    counts = built["counts"]
    entries = []
    scratch = work / "run"
    features = scratch / "features"
    readers = {"artifacts", "refinement", "feature_store"} & set(selected)
    keep = features if "get_feature" not in selected and (scratch / FEATURES_DONE).is_file() else None
    if readers and "get_feature" not in selected and keep is None:
        raise ValueError(f"--stages {','.join(sorted(readers))} reads get_feature's output and {scratch} holds "
                         f"none: add get_feature to --stages (and --keep-features to keep it for later runs)")
    for item in (scratch.iterdir() if scratch.is_dir() else ()):
        if keep is None or item not in (keep, scratch / FEATURES_DONE):
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    scratch.mkdir(exist_ok=True)
    group = ""

    def one(stage, arguments, target, check, note, copies=1, cold=()):
        if cold:
            drop_from_page_cache(cold)
        print(f"-- {stage}", flush=True)
        children = run_children(arguments, copies)
        worst = max(children, key=lambda child: child["wall_s"])
        figures = {"wall_s": worst["wall_s"], "cpu_s": sum(child["cpu_s"] for child in children),
                   "peak_rss_mb": max(child["peak_rss_mb"] for child in children),
                   "disk_mb": sum(child.get("disk_mb", 0.0) for child in children)}
        above = max(child["peak_rss_mb"] - child["rss_imports_mb"] for child in children)
        extra = {key: value for key, value in worst.items()
                 if key not in ("wall_s", "cpu_s", "peak_rss_mb", "disk_mb", "note", "rows")}
        extra["rss_above_imports_mb"] = round(above, 1)
        extra["group"] = group
        met = check(worst, above) if check else None
        text = note + (f"; {worst['note']}" if worst.get("note") else "")
        if copies > 1:
            text = f"{copies} processes at once: wall of the slowest, CPU and disk summed; " + text
        entries.append(stage_entry(stage, figures, target, met, text, extra))
        for row in worst.get("rows", []):
            entries.append(stage_entry(row["stage"], {**figures, **row}, row["target"], row["met"], row["note"],
                                       {"group": group}))
        return worst

    # 1. the split tool
    group = "split"
    if group in selected:
        one("split tool (4 subsets)", ["split", str(work / "ms1m"), str(scratch / "split")], "none set (159 s by hand)",
            None, "our layout in, our layout out")
        shutil.rmtree(scratch / "split", ignore_errors=True)

    # 2. dataset start-up, both layouts, 1 and 8 processes, warm and cold
    folder, prefix = work / "ms1m", work / "prefix" / "train_part_70_class"

    def startup_check(limit):
        return lambda worst, above: bool(worst["wall_s"] <= limit and above <= 300)

    group = "startup"
    if group in selected:
        for copies in (1, RANKS):
            for temperature in ("warm", "cold"):
                cold = [folder] if temperature == "cold" else ()
                one(f"start-up folder {counts['images']:,} rec, {copies} proc, {temperature}", ["startup", str(folder)],
                    "<= 10 s/process, <= 300 MB above imports", startup_check(10), "index + labels + checks + fingerprint",
                    copies, cold)
        for label_cache in sorted(work.glob("prefix/.*labels*")) + sorted(work.glob("big/.*labels*")):
            label_cache.unlink()
        one(f"start-up prefix {counts['class70_images']:,} rec, {RANKS} proc, first start (no label cache), warm",
            ["startup", str(prefix)], "<= 30 s/process, <= 300 MB above imports", startup_check(30),
            "one process reads the labels in file order, 7 wait on its lock", RANKS)
        for copies in (1, RANKS):
            for temperature in ("warm", "cold"):
                cold = [work / "prefix"] if temperature == "cold" else ()
                one(f"start-up prefix {counts['class70_images']:,} rec, {copies} proc, {temperature}", ["startup", str(prefix)],
                    "<= 30 s/process, <= 300 MB above imports", startup_check(30), "label cache present", copies, cold)
        if built.get("big_payload_rec"):
            big = work / "big" / "train_part_70_class"
            size_gb = folder_bytes(work / "big") / 1e9
            one(f"start-up prefix, {size_gb:.1f} GB rec (8 KB payloads), {RANKS} proc, cold, first start",
                ["startup", str(big)], "<= 30 s/process", startup_check(30),
                "one process reads the headers in file order, 4 spans of 8 MiB in flight; the others wait", RANKS, [work / "big"])
            one(f"start-up prefix, {size_gb:.1f} GB rec, {RANKS} proc, cold, label cache present",
                ["startup", str(big)], "<= 30 s/process", startup_check(30), "no rec read beyond 3 headers", RANKS,
                [work / "big"])

    # 3. training: start-up to step 1, per-step overhead, Partial FC shard, checkpoint
    group = "training"
    if group in selected:
        one("training start-up to step 1 + per-step overhead (batch 128, rank 0 of 8)",
            ["training", str(folder), str(args.train_steps)], "<= 5 ms/step outside backbone and head",
            lambda worst, above: bool(worst["step_overhead_ms"] <= 5), "stub backbone; 2 loader workers")
    group = "partial_fc"
    if group in selected:
        one(f"Partial FC {counts['classes']:,} x 512 sharded on 8 ranks", ["partial_fc", str(counts["classes"])],
            "none set", None, "largest shard with SGD momentum, one step")
    group = "checkpoint"
    if group in selected:
        one("checkpoint save + load, r50 + 93,431 x 512 head", ["checkpoint", str(scratch), str(counts["classes"])],
            "<= 10 s each", lambda worst, above: bool(worst["save_s"] <= 10 and worst["load_s"] <= 10),
            "wall = save + load")

    # 4. get_feature write path; 5. artifact tools on what it wrote
    group = "get_feature"
    if group in selected:
        (scratch / FEATURES_DONE).unlink(missing_ok=True)
        one(f"get_feature.py write path {counts['class70_images']:,} x 512", ["get_feature", str(prefix), str(features)],
            "memory flat in N (anonymous memory <= 300 MB + labels)",
            lambda worst, above: bool(worst["anonymous_peak_mb"] <= 300 + worst.get("labels_mb", 0)),
            "stub backbone (no decode); real open_memmap/fallocate/publish/manifest code")
        (scratch / FEATURES_DONE).write_text("get_feature stage complete\n")
    group = "artifacts"
    if group in selected:
        for tool in ("avg_feature", "credible", "class_meta"):
            one(f"{tool} at {counts['class70_classes']:,} classes x 512", ["artifact", tool, str(features)],
                "<= 10 s, peak RSS <= 2x input", lambda worst, above: bool(worst["wall_s"] <= 10 and worst["within_memory"]),
                "the tool's main(), integrity checks included")
    group = "refinement"
    if group in selected:
        one("UniBCT prototype refinement (all classes)", ["refinement", str(features)], "<= 10 s",
            lambda worst, above: bool(worst["wall_s"] <= 10), "all 8 ranks' work in one process")
    group = "feature_store"
    if group in selected:
        one("old-feature store (open + 1,000 batches of 128)", ["feature_store", str(features)], "none set", None,
            "ArrayStore with row normalisation, random rows")
    if not args.keep_features and (readers or "get_feature" in selected):
        shutil.rmtree(features, ignore_errors=True)
        (scratch / FEATURES_DONE).unlink(missing_ok=True)

    # 6. IJB-C
    group = "ijbc_protocol"
    if group in selected:
        one("IJB-C protocol load + image fingerprint", ["ijbc_protocol", str(work / "ijbc")], "none set", None,
            f"{counts['ijbc_images']:,} crops stat-ed")
    group = "ijbc_decode"
    if group in selected:
        one("IJB-C decode + alignment", ["ijbc_decode", str(work / "ijbc"), str(args.decode_crops)],
            ">= 1,000 crops/s per core", lambda worst, above: bool(worst["crops_per_s"] >= 1000),
            "one thread; read + decode + align + flip + normalise, network stubbed")
    group = "ijbc_eval"
    if group in selected:
        one("IJB-C evaluation after embedding", ["ijbc_eval", str(args.fraction)], "<= 10 s each",
            lambda worst, above: bool(worst["max_part_s"] <= 10), "self and cross rows follow")
    return entries


def merged_stages(previous_path: Path, fraction: float, measured: list, selected) -> list:
    """The rows of a previous report at this fraction that were not re-measured (other groups, or
    a row of a re-measured group this run did not produce, e.g. data no longer under --work), with
    the new rows, in stage order (a row keeps the date and load average it was measured at)."""
    kept, measured_names = [], {entry["stage"] for entry in measured}
    if previous_path.is_file() and set(selected) != set(STAGE_GROUPS):
        previous = json.loads(previous_path.read_text())
        if previous.get("fraction") == fraction:
            for entry in previous["stages"]:
                entry.setdefault("date", previous.get("date"))
                entry.setdefault("load_average", previous.get("load_average"))
                if group_of(entry) not in selected or entry["stage"] not in measured_names:
                    kept.append(entry)
    order = {group: index for index, group in enumerate(STAGE_GROUPS)}
    # within a re-measured group its new rows come first, then the earlier rows it did not produce
    rows = [(entry, 0) for entry in measured] + [(entry, 1) for entry in kept]
    return [entry for entry, _ in sorted(rows, key=lambda row: (order.get(group_of(row[0]), len(order)), row[1]))]


def print_table(report: dict) -> None:
    print(f"\nscale rehearsal at --fraction {report['fraction']} on {report['machine']}")
    print("| stage | wall s | CPU s | peak RSS MB | disk MB | target | met | note |\n|---|---|---|---|---|---|---|---|")
    for entry in report["stages"]:
        met = {True: "yes", False: "NO", None: "-"}[entry["met"]]
        print(f"| {entry['stage']} | {entry['wall_s']:.2f} | {entry['cpu_s']:.2f} | {entry['peak_rss_mb']:.0f} | "
              f"{entry['disk_mb']:.0f} | {entry['target']} | {met} | {entry['note']} |")


def machine_description() -> str:
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return (f"{platform.node()}: {os.cpu_count()} cores, {memory_gib:.0f} GiB RAM, {platform.platform()}, "
            f"Python {platform.python_version()}")


def main(argv=None) -> int:
    parser = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="data and results folder (outside the repository)")
    parser.add_argument("--fraction", type=float, default=1.0, help="every count times this (CI: 0.01)")
    parser.add_argument("--no-big", action="store_true", help="skip the ~30 GB large-payload rec (cold prefix case)")
    parser.add_argument("--train-steps", type=int, default=50, help="steps timed for the per-step overhead")
    parser.add_argument("--decode-crops", type=int, default=2000, help="crops decoded for the throughput")
    parser.add_argument("--stages", default=",".join(STAGE_GROUPS),
                        help=f"comma-separated stage groups to (re-)measure, of: {', '.join(STAGE_GROUPS)} "
                             f"(default all); the other rows of an existing {RESULT} are kept")
    parser.add_argument("--keep-features", action="store_true",
                        help="keep get_feature's 3.6M x 512 output under <work>/run for later --stages runs")
    args = parser.parse_args(argv)
    if not 0 < args.fraction <= 1:
        parser.error("--fraction must be in (0, 1]")
    selected = tuple(group for group in STAGE_GROUPS if group in args.stages.split(","))
    unknown = sorted(set(args.stages.split(",")) - set(STAGE_GROUPS))
    if unknown or not selected:
        parser.error(f"--stages {args.stages!r}: unknown group {unknown[0] if unknown else '(none given)'}; "
                     f"choose from {', '.join(STAGE_GROUPS)}")
    work = args.work.resolve()
    built = build_data(work, args.fraction, big=not args.no_big)
    load_before = os.getloadavg()
    start = time.perf_counter()
    stages = rehearse(work, built, args, selected)
    date = time.strftime("%Y-%m-%d %H:%M %Z")
    load = {"before": load_before, "after": os.getloadavg()}
    for entry in stages:
        entry.update(date=date, load_average=load)
    report = {"fraction": args.fraction, "machine": machine_description(), "date": date, "load_average": load,
              "build": built, "seconds": round(time.perf_counter() - start, 1),
              "stages": merged_stages(work / RESULT, args.fraction, stages, selected)}
    print_table(report)
    atomic_write_text(work / RESULT, json.dumps(report, indent=1) + "\n")
    print(f"written {work / RESULT}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (ValueError, RuntimeError, OSError) as error:
        print(f"scale_rehearsal: {error}", file=sys.stderr)
        raise SystemExit(1)
