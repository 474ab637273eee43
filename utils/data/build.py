"""The training set a config names: synthetic, a rec (folder or prefix) or an image folder, with the
decoded-image cache in front of small recs. Sits above datasets and image_cache, which it joins."""
from __future__ import annotations

from pathlib import Path

from utils.data.datasets import FaceRecDataset, ImageFolderDataset, SyntheticDataset, check_dataset
from utils.data.face_rec import names_rec_files
from utils.data.image_cache import with_image_cache


def build_dataset(cfg, flip: bool = True):
    """cfg.synthetic -> SyntheticDataset; cfg.rec a folder with train.rec or a prefix with .rec /
    .idx files -> FaceRecDataset; else an image folder."""
    if cfg.synthetic:
        if cfg.num_image is None or cfg.num_classes is None:
            raise ValueError("config: synthetic data needs num_image and num_classes")
        dataset = SyntheticDataset(cfg.num_image, cfg.num_classes)
        where = "synthetic data"
    else:
        if not cfg.rec:
            raise ValueError("config key 'rec' is not set (folder with train.rec, prefix of .rec/.idx "
                             "files, or an image folder)")
        rec_dir = Path(cfg.rec)
        if names_rec_files(rec_dir):   # usable or not: FaceRecDataset says what is wrong with it
            dataset = FaceRecDataset(rec_dir, flip)
        elif rec_dir.is_dir():
            dataset = ImageFolderDataset(rec_dir, flip)
        else:
            raise ValueError(f"config rec = {rec_dir}: neither a folder nor a prefix with "
                             f"{rec_dir.name}.rec and {rec_dir.name}.idx beside it")
        dataset = with_image_cache(dataset)   # small recs: decoded once, memory-mapped after
        where = rec_dir
    check_dataset(dataset, cfg.num_classes, cfg.num_image, where)
    return dataset
