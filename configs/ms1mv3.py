"""MS1M-V3 (ms1m-retinaface-t1) and its splits: rec folders and counts, shared by the configs.

Not a config itself. The split subsets are sub-folders of the full rec folder (see
tools/split_dataset); the .bin verification sets sit in the full folder.
"""
from easydict import EasyDict

ROOT = "dataset/ms1m-retinaface-t1"
VAL_TARGETS = ["lfw", "cfp_fp", "agedb_30"]

# subset -> (rec folder, identities, images). data70 = every image not in data30 plus the
# single-image identities (in both halves); that count is not published: None = read from the data.
SUBSETS = {
    "class30": (f"{ROOT}/train_part_30_class", 28029, 1581241),
    "class70": (f"{ROOT}/train_part_70_class", 65402, 3598269),
    "class100": (ROOT, 93431, 5179510),
    "data30": (f"{ROOT}/train_part_30_data", 93431, 1554138),
    "data70": (f"{ROOT}/train_part_70_data", 93431, None),
    "data100": (ROOT, 93431, 5179510),
}

# the reference recipe for old and new models (the rest is configs/base.py: SGD lr 0.1,
# momentum 0.9, weight decay 5e-4, batch 128 per GPU, poly schedule, clip 5)
RECIPE = {"num_epoch": 35, "warmup_epoch": 0, "fp16": True, "val_targets": VAL_TARGETS, "verbose": 2000}


# the head each plain training method uses
HEADS = {"softmax": "softmax", "arcface": "partial_fc"}


def training_data(subset: str) -> dict:
    """rec / num_classes / num_image keys of one MS1M-V3 subset."""
    rec, num_classes, num_image = SUBSETS[subset]
    return {"rec": rec, "num_classes": num_classes, "num_image": num_image}


def grid_config(subset: str, method: str, network: str, embedding_size: int) -> EasyDict:
    """One config of the reference grid: the recipe on `subset` with a plain `method` head."""
    return EasyDict(RECIPE, **training_data(subset), method=method, head=HEADS[method], network=network,
                    embedding_size=embedding_size)
