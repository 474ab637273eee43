"""Dump the old model's features of a training subset: row i = the image the training loader
returns as dataset index i (eval mode, no flip, no shuffle). Raw features, not normalised.

    python tools/get_feature/get_feature.py configs/f128_r18_softmax_class30.py --SD f128_r18_softmax_class70
    torchrun --nproc_per_node=8 tools/get_feature/get_feature.py OLD_CONFIG --SD NAME

The --SD suffix picks the subset (class70 -> train_part_70_class next to the old config's rec
folder, class100/data100 -> their parent, the full set) and the scenario folder
(feature_save/OPclass, EXclass, OPdata, EXdata). Writes <SD>_feature.npy [N, d] and
<SD>_label.npy [N] int64, each with a JSON manifest (dataset fingerprint, model checksum).
Under torchrun every rank embeds a contiguous slice into one shared temporary .npy (all ranks
must see the same file system); rank 0 renames it into place when every slice is written.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from backbones import load_backbone  # noqa: E402
from utils.artifacts.manifests import (FEATURE_ROOT, OLD_FEATURES, OLD_LABELS, artifact_paths, add_sd_argument, model_record, publish_artifact, save_array_atomic, scenario_dir, subset_rec_dir)  # noqa: E402
from utils.common.atomic_files import WriteError, describe_os_error  # noqa: E402
from utils.common.cli import StrictArgumentParser  # noqa: E402
from utils.common.config import load_config  # noqa: E402
from utils.data.datasets import FaceRecDataset  # noqa: E402
from utils.common.output_lock import lock_files  # noqa: E402
from utils.training.distributed import (agree_on_failure, broadcast_object, check_on_rank0, cleanup,  # noqa: E402
                                        failure_line, init_distributed, remove_launcher_args)
from utils.data.loader import BatchCollator, OneLineErrorLoader, seed_worker, to_device  # noqa: E402
from utils.common.progress import ProgressReporter, run_tool  # noqa: E402

TOOL = "tools/get_feature/get_feature.py"
AMP_DTYPES = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the OLD model's config file (network, embedding_size, "
                                       "rec, output holding model.pt)")
    add_sd_argument(parser)
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override keys of the old model's config, as for its training (e.g. a network "
                             "trained with --set network=...)")
    parser.add_argument("--data", default=None, metavar="REC_DIR",
                        help="rec folder to embed (default: derived from the config's rec and --SD)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: feature_save/<scenario>; needed for class30/data30)")
    parser.add_argument("--model", default=None, metavar="MODEL_PT",
                        help="backbone weights (default: <config output>/model.pt)")
    parser.add_argument("--batch-size", type=int, default=200, help="images per forward pass per process")
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader decode workers per process")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="storage type of the features (default float32)")
    parser.add_argument("--amp", choices=tuple(AMP_DTYPES), default="none",
                        help="autocast precision of the forward pass (default none)")
    parser.add_argument("--progress-seconds", type=float, default=30.0,
                        help="seconds between progress lines when stdout is not a terminal")
    _, argv = remove_launcher_args(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.batch_size <= 0 or args.num_workers < 0:
        parser.error("--batch-size must be positive and --num-workers non-negative")
    return args


def resolve_data_dir(args, cfg) -> Path:
    if args.data is not None:
        return Path(args.data)
    if not cfg.rec:
        raise ValueError(f"{args.config}: config has no rec; pass --data")
    # the old model's rec is one part (e.g. train_part_30_class) of the full set: its parent
    return subset_rec_dir(args.SD, Path(cfg.rec).parent)


def rank_rows(num_image: int, rank: int, world_size: int) -> range:
    """The contiguous slice of dataset indices this rank embeds."""
    return range(num_image * rank // world_size, num_image * (rank + 1) // world_size)


@torch.no_grad()
def embed_rows(backbone, dataset, rows: range, features_out: np.ndarray, args, device,
               progress: ProgressReporter) -> None:
    """Embed dataset indices `rows` in order into features_out[rows] (a memory map)."""
    # a corrupt record in a worker ends as that worker's one line, not its traceback
    loader = OneLineErrorLoader(dataset, batch_size=args.batch_size, sampler=rows, shuffle=False,
                                num_workers=args.num_workers, collate_fn=BatchCollator(),
                                worker_init_fn=seed_worker, pin_memory=device.type == "cuda",
                                drop_last=False)
    amp_dtype = AMP_DTYPES[args.amp]
    autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype
                else nullcontext())
    next_row = rows.start
    for batch in loader:
        indices = batch["index"].numpy()
        expected = np.arange(next_row, next_row + len(indices))
        if not np.array_equal(indices, expected):
            raise ValueError(f"loader returned dataset indices {indices[:4]}... where "
                             f"{expected[:4]}... were due: features would be misaligned")
        if not np.array_equal(batch["label"].numpy(), dataset.labels[indices]):
            raise ValueError(f"labels of dataset indices {next_row}..{indices[-1]} differ from the index")
        with autocast:
            embeddings = backbone(to_device(batch, device)["image"])
        embeddings = embeddings.float().cpu().numpy()
        if not np.isfinite(embeddings).all():
            raise ValueError(f"non-finite features for dataset indices {next_row}..{indices[-1]} "
                             f"(try --amp none)")
        features_out[next_row:next_row + len(indices)] = embeddings.astype(features_out.dtype)
        next_row += len(indices)
        progress.update(len(indices))
    if next_row != rows.stop:
        raise ValueError(f"loader stopped at dataset index {next_row}, expected {rows.stop}")


def main(argv=None) -> Path:
    args = parse_args(argv)
    rank, _, world_size, device = init_distributed(sys.argv[1:] if argv is None else argv)
    cfg = load_config(args.config, args.overrides)
    data_dir = resolve_data_dir(args, cfg)
    folder = scenario_dir(args.SD, FEATURE_ROOT, args.out)
    paths = artifact_paths(args.SD, folder)
    # rank 0 locks the two files of this --SD (other --SD in the folder are written side by side);
    # a second run writing them is refused at once, on every rank
    held = []
    check_on_rank0(lambda: held.append(lock_files([paths[OLD_FEATURES], paths[OLD_LABELS]])))
    try:
        return _run_locked(args, cfg, rank, world_size, device, data_dir, folder, paths)
    finally:
        for locks in held:
            locks.release()


def _run_locked(args, cfg, rank, world_size, device, data_dir, folder, paths) -> Path:
    model_path = Path(args.model) if args.model else Path(cfg.output) / "model.pt"
    dataset = FaceRecDataset(data_dir, flip=False)
    backbone = load_backbone(model_path, cfg.network, cfg.embedding_size, device=device).eval()
    # one shared temporary per run (rank 0's pid): two runs writing the same --SD never share it
    run_token = broadcast_object(f"{os.getpid()}")
    partial = paths[OLD_FEATURES].with_name(f".{paths[OLD_FEATURES].name}.partial-{run_token}.npy")
    try:
        return _embed_and_publish(args, cfg, rank, world_size, device, data_dir, folder, model_path, dataset,
                                  backbone, paths, partial)
    finally:
        if rank == 0:
            with contextlib.suppress(OSError):
                partial.unlink()  # a failed run leaves no temporary behind (renamed away on success)


def _embed_and_publish(args, cfg, rank, world_size, device, data_dir, folder, model_path, dataset, backbone,
                       paths, partial) -> Path:
    num_image, dimension = len(dataset), int(cfg.embedding_size)

    def reserve() -> None:
        print(f"old model {cfg.network} ({model_path}) -> {num_image} images of {data_dir} "
              f"-> {folder} on {world_size} process(es)", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            np.lib.format.open_memmap(partial, mode="w+", dtype=np.dtype(args.dtype),
                                      shape=(num_image, dimension)).flush()
            # reserve the blocks now: a full disk is one error here, not a SIGBUS while writing the map
            with open(partial, "r+b") as handle:
                os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as error:
            raise WriteError(describe_os_error(error, paths[OLD_FEATURES])) from None
    check_on_rank0(reserve)   # rank 0 creates the shared file; its failure stops every rank

    rows = rank_rows(num_image, rank, world_size)
    features_out = np.lib.format.open_memmap(partial, mode="r+")
    progress = ProgressReporter(len(rows), f"features (rank 0 of {world_size})", "img",
                                every_seconds=args.progress_seconds, enabled=rank == 0)
    failure = None
    try:
        embed_rows(backbone, dataset, rows, features_out, args, device, progress)
    except (ValueError, OSError) as error:   # a bad record in this rank's slice stops every rank on its line
        failure = failure_line(error)
    features_out.flush()
    del features_out
    progress.close()
    agree_on_failure(failure)

    def publish() -> None:
        fields = {"tool": TOOL, "args": args, "dataset": dataset.fingerprint(),
                  "model": model_record(model_path, cfg.network, dimension),
                  "extra": {"config": str(Path(args.config).resolve()), "data": str(data_dir.resolve()),
                            "world_size": world_size, "amp": args.amp, "normalised": False}}
        publish_artifact(partial, paths[OLD_FEATURES], kind=OLD_FEATURES, shape=(num_image, dimension),
                         dtype=args.dtype, **fields)
        save_array_atomic(paths[OLD_LABELS], dataset.labels.astype(np.int64), kind=OLD_LABELS, **fields)
        print(f"wrote {paths[OLD_FEATURES]} [{num_image}, {dimension}] {args.dtype} and "
              f"{paths[OLD_LABELS].name}", flush=True)
    check_on_rank0(publish)
    cleanup()
    return paths[OLD_FEATURES]


if __name__ == "__main__":
    run_tool(main)
