"""Write the embedded synthetic face-identity data set: an MS1M-style training rec, .bin
verification sets and a mini IJB-C, all from drawn faces (tools/synthetic/faces.py).

    python tools/synthetic/generate.py --out dataset/synthetic            # CPU demo size, ~1 minute
    python tools/synthetic/generate.py --out /tmp/synthetic --quick       # test size, seconds

Writes into --out:
  train.rec, train.idx, property     identities 0..T-1, labels ascending, 112x112 JPEG q95 (BGR-encoded)
  lfw.bin, cfp_fp.bin, agedb_30.bin  pickles of (bins, issame_list), half genuine, held-out identities
                                     (cfp_fp: frontal vs strong-yaw profile; agedb_30: ageing, grey photos)
  IJBC/loose_crop/*.jpg, IJBC/meta/  a mini IJB-C in the real layout (1:1 pairs, 1:N G1/G2/probes)
  synthetic.json                     arguments, seed, identity ranges, counts, sizes, wall time
Identities of train, of each .bin set and of IJB-C are disjoint. Every identity and every image has
its own seeded generator, so any subset can be redrawn on its own and a seed gives identical bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tools.synthetic.faces import (NUISANCE_PRESETS, FaceModel, ImageConditions, build_face_model,  # noqa: E402
                                   image_quality, jitter_conditions, placement_matrix, render_face,
                                   sample_conditions, sample_identity)
from utils.artifacts.manifests import write_text_atomic  # noqa: E402
from utils.common.atomic_files import atomic_write  # noqa: E402
from utils.common.cli import StrictArgumentParser  # noqa: E402
from utils.data.face_rec import FaceRecWriter  # noqa: E402
from utils.common.progress import ProgressReporter, run_tool  # noqa: E402
from utils.data.recordio import encode_image  # noqa: E402

# Seed streams: every generator is seeded by [seed, stream, ...keys], so streams never collide.
STREAM_IDENTITY, STREAM_TRAIN_PLAN, STREAM_TRAIN_IMAGE = 0, 1, 2
STREAM_BIN_PLAN, STREAM_BIN_IMAGE = 3, 4
STREAM_IJBC_PLAN, STREAM_IJBC_MEDIA, STREAM_IJBC_FRAME = 5, 6, 7

# .bin set -> nuisance presets of the first and second image of each pair
BIN_SETS: Dict[str, Tuple[str, str]] = {
    "lfw": ("lfw", "lfw"),
    "cfp_fp": ("cfp_frontal", "cfp_profile"),
    "agedb_30": ("agedb_30", "agedb_30"),
}
JPEG_QUALITY = 95               # training rec and .bin sets, as insightface packs them
LOOSE_CROP_QUALITY = 90
LOOSE_CROP_SIDE = (150, 250)    # loose crop width and height range, pixels
LANDMARK_NOISE = 0.6            # detector noise on the listed IJB-C landmarks, in aligned-frame pixels
NON_MATED_FRACTION = 0.2        # IJB-C subjects in neither gallery (non-mated probes only)
VIDEO_MEDIA_PROBABILITY = 0.3   # a media is a multi-frame video rather than a still
# Templates per IJB-C subject and medias per template (inclusive ranges). Many small templates
# per subject give the 1:1 protocol many genuine pairs (k templates: k(k-1)/2 of them) and each
# gallery many mated probes (k - 1 per subject) for few images: with 340 subjects about 2,400
# genuine pairs and 400 mated probes per gallery, so a difference of a few points is resolved.
TEMPLATES_PER_SUBJECT = (2, 6)
MEDIAS_PER_TEMPLATE = (1, 2)
CSV_HEADER = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT"

SIZES = {   # flag -> (default, --quick, what it sets)
    "train_identities": (300, 30, "identities in train.rec"),
    "images_per_identity": (24, 8, "mean images per training identity (each has 1 .. 2*mean-1)"),
    "bin_identities": (60, 10, "held-out identities of each .bin set"),
    "bin_pairs": (600, 40, "pairs in each .bin set, half genuine"),
    "ijbc_identities": (340, 12, "IJB-C subjects (about 20%% in neither 1:N gallery)"),
    "ijbc_impostor_ratio": (40, 40, "IJB-C 1:1 impostor pairs per genuine pair"),
}
MINIMUM_SIZES = {"train_identities": 1, "images_per_identity": 1, "bin_identities": 2, "bin_pairs": 2,
                 "ijbc_identities": 3, "ijbc_impostor_ratio": 1}


def generator(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *keys])


def identity_model(seed: int, identity: int) -> FaceModel:
    """The face of global identity number `identity` (train 0..T-1, then .bin sets, then IJB-C)."""
    return build_face_model(sample_identity(generator(seed, STREAM_IDENTITY, identity)))


def encode_rgb(image_rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an RGB image, encoded from BGR like mxnet's pack_img."""
    return encode_image(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), quality)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


@dataclass(frozen=True)
class IdentityRanges:
    """Global identity numbers [start, end) of each part; the parts are disjoint."""
    train: Tuple[int, int]
    bins: Dict[str, Tuple[int, int]]
    ijbc: Tuple[int, int]


def identity_ranges(train_identities: int, bin_identities: int, ijbc_identities: int) -> IdentityRanges:
    bins, start = {}, train_identities
    for name in BIN_SETS:
        bins[name] = (start, start + bin_identities)
        start += bin_identities
    return IdentityRanges((0, train_identities), bins, (start, start + ijbc_identities))


# ---- training rec ---------------------------------------------------------------------------------
def train_image_counts(seed: int, identities: int, mean_images: int) -> np.ndarray:
    """Images per identity: uniform in 1 .. 2*mean-1 (mean `mean_images`), and 2% (at least one
    identity) with a single image, so the data-split rules for tiny classes get exercised."""
    rng = generator(seed, STREAM_TRAIN_PLAN)
    counts = rng.integers(1, 2 * mean_images, size=identities)
    counts[rng.choice(identities, max(1, identities // 50), replace=False)] = 1
    return counts


def render_train_image(model: FaceModel, seed: int, label: int, image_number: int) -> np.ndarray:
    conditions = sample_conditions(generator(seed, STREAM_TRAIN_IMAGE, label, image_number), NUISANCE_PRESETS["train"])
    return render_face(model, conditions)[0]


def write_train_rec(out_dir: Path, seed: int, counts: np.ndarray) -> Dict[str, int]:
    progress = ProgressReporter(int(counts.sum()), "train.rec", every_seconds=10.0)
    with FaceRecWriter(out_dir) as writer:
        for label, count in enumerate(counts.tolist()):
            model = identity_model(seed, label)
            for image_number in range(count):
                writer.add(label, encode_rgb(render_train_image(model, seed, label, image_number)))
            progress.update(count)
    progress.close()
    return {"identities": len(counts), "images": int(counts.sum()), "single_image_identities": int((counts == 1).sum()),
            "min_images": int(counts.min()), "max_images": int(counts.max())}


# ---- .bin verification sets -----------------------------------------------------------------------
def bin_pair_plan(seed: int, set_index: int, identities: Tuple[int, int], pairs: int
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first identity [N], second identity [N], issame [N] bool): pairs // 2 genuine, in random order."""
    rng = generator(seed, STREAM_BIN_PLAN, set_index)
    start, end = identities
    count = end - start
    genuine = pairs // 2
    first = rng.integers(0, count, size=pairs)
    # impostor partner: any other identity of the set
    second = np.where(np.arange(pairs) < genuine, first, (first + rng.integers(1, count, size=pairs)) % count)
    order = rng.permutation(pairs)
    return first[order] + start, second[order] + start, (first == second)[order]


def write_bin_set(path: Path, seed: int, set_index: int, identities: Tuple[int, int], pairs: int) -> Dict[str, int]:
    name = path.stem
    first_preset, second_preset = (NUISANCE_PRESETS[preset] for preset in BIN_SETS[name])
    first, second, issame = bin_pair_plan(seed, set_index, identities, pairs)
    models: Dict[int, FaceModel] = {}
    bins: List[bytes] = []
    progress = ProgressReporter(2 * pairs, path.name, every_seconds=10.0)
    for image_number, identity in enumerate(np.column_stack([first, second]).ravel().tolist()):
        if identity not in models:
            models[identity] = identity_model(seed, identity)
        preset = first_preset if image_number % 2 == 0 else second_preset
        conditions = sample_conditions(generator(seed, STREAM_BIN_IMAGE, set_index, image_number), preset)
        bins.append(encode_rgb(render_face(models[identity], conditions)[0]))
        progress.update(1)
    write_bytes_atomic(path, pickle.dumps((bins, [bool(same) for same in issame]), protocol=4))
    progress.close()
    return {"pairs": pairs, "genuine": int(issame.sum()), "identities": len(models)}


# ---- mini IJB-C -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class IjbcMedia:
    media_id: int
    template_id: int
    subject: int            # global identity number, also the SUBJECT_ID of the 1:N files
    frames: int
    first_image: int        # images are numbered in file order; image i is named f"{i + 1}.jpg"


@dataclass
class IjbcPlan:
    medias: List[IjbcMedia]
    template_subjects: Dict[int, int]
    galleries: Dict[str, List[int]]     # "G1"/"G2" -> subjects
    non_mated: List[int]
    num_images: int


def plan_ijbc(seed: int, identities: Tuple[int, int]) -> IjbcPlan:
    """Subjects -> TEMPLATES_PER_SUBJECT templates -> MEDIAS_PER_TEMPLATE medias -> 1 still or a
    2..4-frame video each."""
    rng = generator(seed, STREAM_IJBC_PLAN)
    subjects = np.arange(*identities)
    shuffled = rng.permutation(subjects).tolist()
    non_mated_count = max(1, int(round(NON_MATED_FRACTION * len(subjects))))
    mated = shuffled[non_mated_count:]
    galleries = {"G1": sorted(mated[: len(mated) // 2]), "G2": sorted(mated[len(mated) // 2:])}
    medias, template_subjects, image_count = [], {}, 0
    for subject in subjects.tolist():
        for _ in range(int(rng.integers(TEMPLATES_PER_SUBJECT[0], TEMPLATES_PER_SUBJECT[1] + 1))):
            template_id = len(template_subjects) + 1
            template_subjects[template_id] = subject
            for _ in range(int(rng.integers(MEDIAS_PER_TEMPLATE[0], MEDIAS_PER_TEMPLATE[1] + 1))):
                frames = int(rng.integers(2, 5)) if rng.random() < VIDEO_MEDIA_PROBABILITY else 1
                medias.append(IjbcMedia(len(medias) + 1, template_id, subject, frames, image_count))
                image_count += frames
    return IjbcPlan(medias, template_subjects, galleries, sorted(shuffled[:non_mated_count]), image_count)


@dataclass
class LooseCropView:
    conditions: ImageConditions
    canvas_hw: Tuple[int, int]
    placement_scale: float
    placement_centre: np.ndarray


def media_views(seed: int, media: IjbcMedia) -> List[LooseCropView]:
    """The frames of one media: one crop size and placement, shared light; pose jitters per frame."""
    rng = generator(seed, STREAM_IJBC_MEDIA, media.media_id)
    base = sample_conditions(rng, NUISANCE_PRESETS["ijbc"])
    height, width = (int(side) for side in rng.integers(LOOSE_CROP_SIDE[0], LOOSE_CROP_SIDE[1] + 1, size=2))
    # heavily degraded images are also small faces; otherwise the 112-px aligned frame spans
    # 0.6-1.0 of the crop's shorter side
    largest = min(height, width) / 125.0
    scale = float(rng.uniform(0.5, 0.75) if base.heavy else rng.uniform(0.7, 1.1) * largest)
    margin = 45.0 * scale
    centre = np.array([rng.uniform(margin, max(margin, width - margin)), rng.uniform(margin, max(margin, height - margin))])
    views = []
    for frame in range(media.frames):
        conditions = base if frame == 0 else jitter_conditions(base, generator(seed, STREAM_IJBC_FRAME, media.media_id, frame))
        views.append(LooseCropView(conditions, (height, width), scale, centre))
    return views


def face_box(view: LooseCropView) -> Tuple[int, int, int, int]:
    """(x, y, width, height) of the placed aligned frame's bounding box, clipped to the crop."""
    matrix = placement_matrix(view.conditions, view.placement_scale, view.placement_centre)
    corners = np.array([[0.0, 0.0], [112.0, 0.0], [0.0, 112.0], [112.0, 112.0]]) @ matrix[:, :2].T + matrix[:, 2]
    height, width = view.canvas_hw
    low = np.maximum(np.floor(corners.min(axis=0)), 0).astype(int)
    high = np.minimum(np.ceil(corners.max(axis=0)), [width, height]).astype(int)
    return int(low[0]), int(low[1]), int(high[0] - low[0]), int(high[1] - low[1])


def ijbc_pairs(seed: int, template_subjects: Dict[int, int], impostor_ratio: int) -> np.ndarray:
    """[P, 3] (tid1, tid2, label): every same-subject template pair, and impostor_ratio times as
    many different-subject pairs drawn without repetition (or all of them if there are fewer)."""
    template_ids = np.array(list(template_subjects))
    subjects = np.array(list(template_subjects.values()))
    first, second = np.triu_indices(len(template_ids), k=1)
    same = subjects[first] == subjects[second]
    impostor_rows = np.flatnonzero(~same)
    impostor_count = min(len(impostor_rows), impostor_ratio * int(same.sum()))
    chosen = generator(seed, STREAM_IJBC_PLAN, 1).choice(impostor_rows, impostor_count, replace=False)
    rows = np.sort(np.concatenate([np.flatnonzero(same), chosen]))
    return np.column_stack([template_ids[first[rows]], template_ids[second[rows]], same[rows].astype(np.int64)])


def _replace_folder(temporary: Path, final: Path) -> None:
    """Move a finished folder onto `final`; an older one is moved aside first and removed after."""
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(temporary, final)
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class IjbcRows:
    """The text rows of the IJB-C meta files, one per image, in file order."""
    templates: List[str]                 # ijbc_face_tid_mid.txt
    landmarks: List[str]                 # ijbc_name_5pts_score.txt
    csv_by_template: Dict[int, List[str]]  # 1:N CSV rows of each template


def render_ijbc_images(image_dir: Path, seed: int, plan: IjbcPlan) -> IjbcRows:
    """Draw and write every loose crop; returns the meta rows (true landmarks + detector noise)."""
    rows = IjbcRows([], [], {media.template_id: [] for media in plan.medias})
    progress = ProgressReporter(plan.num_images, "IJBC", every_seconds=10.0)
    model, model_subject = None, None
    for media in plan.medias:
        if media.subject != model_subject:
            model, model_subject = identity_model(seed, media.subject), media.subject
        for frame, view in enumerate(media_views(seed, media)):
            name = f"{media.first_image + frame + 1}.jpg"
            image, landmarks = render_face(model, view.conditions, view.canvas_hw, view.placement_scale,
                                           view.placement_centre)
            (image_dir / name).write_bytes(encode_rgb(image, LOOSE_CROP_QUALITY))
            noise_rng = generator(seed, STREAM_IJBC_FRAME, media.media_id, frame, 1)
            listed = landmarks + noise_rng.normal(0.0, LANDMARK_NOISE * view.placement_scale, landmarks.shape)
            faceness = noise_rng.uniform(0.1, 0.3) if view.conditions.heavy else \
                float(np.clip(image_quality(view.conditions) + noise_rng.normal(0.0, 0.03), 0.35, 1.0))
            rows.templates.append(f"{name} {media.template_id} {media.media_id}")
            rows.landmarks.append(f"{name} " + " ".join(f"{value:.3f}" for value in listed.ravel()) + f" {faceness:.4f}")
            box = ",".join(str(value) for value in face_box(view))
            rows.csv_by_template[media.template_id].append(
                f"{media.template_id},{media.subject},loose_crop/{name},{media.media_id},{box}")
        progress.update(media.frames)
    progress.close()
    return rows


def split_identification(plan: IjbcPlan) -> Dict[str, List[int]]:
    """1:N template lists: each gallery subject's first template is its gallery template (G1 or
    G2); every other template, and all templates of non-mated subjects, are probes."""
    first_template: Dict[int, int] = {}
    for template_id, subject in plan.template_subjects.items():
        first_template.setdefault(subject, template_id)
    sets = {f"gallery_{name}": [first_template[subject] for subject in subjects]
            for name, subjects in plan.galleries.items()}
    in_gallery = {template for templates in sets.values() for template in templates}
    sets["probe_mixed"] = [template for template in plan.template_subjects if template not in in_gallery]
    return sets


def write_ijbc(out_dir: Path, seed: int, identities: Tuple[int, int], impostor_ratio: int) -> Dict[str, int]:
    """Write out_dir/IJBC (built in a temporary folder, renamed into place when complete)."""
    plan = plan_ijbc(seed, identities)
    root = out_dir / f"IJBC.partial-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    meta = root / "meta"
    try:
        (root / "loose_crop").mkdir(parents=True)
        meta.mkdir()
        rows = render_ijbc_images(root / "loose_crop", seed, plan)
        (meta / "ijbc_face_tid_mid.txt").write_text("\n".join(rows.templates) + "\n")
        (meta / "ijbc_name_5pts_score.txt").write_text("\n".join(rows.landmarks) + "\n")
        pairs = ijbc_pairs(seed, plan.template_subjects, impostor_ratio)
        (meta / "ijbc_template_pair_label.txt").write_text("".join(f"{a} {b} {label}\n" for a, b, label in pairs.tolist()))
        template_sets = split_identification(plan)
        for name, templates in template_sets.items():
            lines = [CSV_HEADER] + [row for template in templates for row in rows.csv_by_template[template]]
            (meta / f"ijbc_1N_{name}.csv").write_text("\n".join(lines) + "\n")
        _replace_folder(root, out_dir / "IJBC")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    non_mated = set(plan.non_mated)
    return {"subjects": len(plan.galleries["G1"]) + len(plan.galleries["G2"]) + len(non_mated),
            "templates": len(plan.template_subjects), "medias": len(plan.medias), "images": plan.num_images,
            "genuine_pairs": int(pairs[:, 2].sum()), "impostor_pairs": int((pairs[:, 2] == 0).sum()),
            **{f"{name}_templates": len(templates) for name, templates in template_sets.items()},
            "non_mated_probe_templates": sum(plan.template_subjects[t] in non_mated for t in template_sets["probe_mixed"])}


# ---- command line ---------------------------------------------------------------------------------
def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def benchmark(images: int, seed: int, chunk: int = 200) -> Dict[str, float]:
    """Draw (not encode, not write) `images` training images of 20 identities on one core, in
    chunks; the best chunk is the figure least disturbed by other processes (as timeit's min)."""
    models = [identity_model(seed, identity) for identity in range(20)]
    chunk_rates, start_wall, start_cpu = [], time.perf_counter(), time.process_time()
    for first in range(0, images, chunk):
        chunk_start = time.process_time()
        for image_number in range(first, min(images, first + chunk)):
            render_train_image(models[image_number % 20], seed, image_number % 20, image_number)
        chunk_rates.append((min(images, first + chunk) - first) / max(time.process_time() - chunk_start, 1e-9))
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    return {"benchmark": "synthetic_faces_draw", "images": images, "images_per_second_wall": round(images / wall, 1),
            "images_per_second_cpu": round(images / cpu, 1),
            "images_per_second_cpu_best_chunk": round(max(chunk_rates), 1), "target_images_per_second": 1000}


def merge_with_earlier_parts(path: Path, manifest: Dict) -> Dict:
    """With --parts, keep the counts and sizes of the other parts from an earlier run of the same
    seed and sizes; any other earlier manifest is replaced (with a warning if parts are missing)."""
    def sizes_of(arguments: Dict) -> Dict:
        return {key: arguments.get(key) for key in ("seed", *SIZES)}

    try:
        earlier = json.loads(path.read_text())
        same_data = sizes_of(earlier["arguments"]) == sizes_of(manifest["arguments"])
    except (OSError, ValueError, KeyError, TypeError):
        earlier, same_data = None, False
    if same_data:
        return {**manifest, "counts": {**earlier["counts"], **manifest["counts"]},
                "sizes_bytes": {**earlier["sizes_bytes"], **manifest["sizes_bytes"]}}
    if len(manifest["arguments"]["parts"]) < 3:
        print(f"warning: {path} describes only the parts written now; other files in {path.parent} "
              f"come from a run with another seed or other sizes (or from none)", flush=True)
    return manifest


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "dataset" / "synthetic",
                        help="output folder (default: <repo>/dataset/synthetic)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every identity and image (default 0)")
    parser.add_argument("--quick", action="store_true",
                        help="much smaller sizes for tests and the quick demo (explicit size flags still win)")
    for key, (default, quick, meaning) in SIZES.items():
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=None,
                            help=f"{meaning} (default {default}, --quick {quick})")
    parser.add_argument("--parts", nargs="+", choices=("train", "bins", "ijbc"), default=["train", "bins", "ijbc"],
                        help="which parts to write (default: all); synthetic.json describes this run's parts")
    parser.add_argument("--benchmark", type=int, default=0, metavar="N",
                        help="only time drawing N training images (no files); prints a JSON line")
    args = parser.parse_args(argv)
    for key, (default, quick, _) in SIZES.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else default)
        if getattr(args, key) < MINIMUM_SIZES[key]:
            raise ValueError(f"--{key.replace('_', '-')} must be at least {MINIMUM_SIZES[key]}, got {getattr(args, key)}")
    if args.seed < 0:
        raise ValueError(f"--seed must be non-negative, got {args.seed}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    if args.benchmark:
        result = benchmark(args.benchmark, args.seed)
        print(f"drew {result['images']} images on one core: {result['images_per_second_wall']} img/s wall, "
              f"{result['images_per_second_cpu']} img/s of CPU time, best chunk "
              f"{result['images_per_second_cpu_best_chunk']} img/s (target 1000)")
        print(json.dumps(result))
        return result
    start = time.time()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    ranges = identity_ranges(args.train_identities, args.bin_identities, args.ijbc_identities)
    counts: Dict[str, object] = {}
    written: List[Path] = []
    if "train" in args.parts:
        print(f"train: {args.train_identities} identities, about {args.images_per_identity} images each", flush=True)
        counts["train"] = write_train_rec(out, args.seed, train_image_counts(args.seed, args.train_identities,
                                                                             args.images_per_identity))
        written += [out / "train.rec", out / "train.idx", out / "property"]
    if "bins" in args.parts:
        for set_index, name in enumerate(BIN_SETS):
            counts[name] = write_bin_set(out / f"{name}.bin", args.seed, set_index, ranges.bins[name], args.bin_pairs)
            written.append(out / f"{name}.bin")
    if "ijbc" in args.parts:
        print(f"IJBC: {args.ijbc_identities} subjects", flush=True)
        counts["IJBC"] = write_ijbc(out, args.seed, ranges.ijbc, args.ijbc_impostor_ratio)
        written.append(out / "IJBC")
    wall = time.time() - start
    sizes = {path.name: folder_size(path) for path in written}
    manifest = {
        "tool": "tools/synthetic/generate.py",
        "arguments": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "seed": args.seed,
        "identity_ranges": {"train": list(ranges.train), **{name: list(r) for name, r in ranges.bins.items()},
                            "IJBC": list(ranges.ijbc)},
        "counts": counts,
        "sizes_bytes": sizes,
        "wall_time_s": round(wall, 2),
    }
    write_text_atomic(out / "synthetic.json", json.dumps(merge_with_earlier_parts(out / "synthetic.json", manifest),
                                                         indent=1) + "\n")
    print(f"wrote {out}")
    for name, value in counts.items():
        print(f"  {name}: " + ", ".join(f"{key} {number}" for key, number in value.items()))
    for name, size in sizes.items():
        print(f"  {name}: {human_size(size)}")
    print(f"total {human_size(sum(sizes.values()))} in {wall:.1f} s", flush=True)
    return manifest


if __name__ == "__main__":
    run_tool(main)
