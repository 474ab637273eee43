"""MS1M-V3 (ms1m-retinaface-t1) and its splits: rec folders and counts, shared by the configs,
and the compatible-training settings (old model, its artifacts) the method configs start from.

Not a config itself. The split subsets are sub-folders of the full rec folder (see
tools/split_dataset); the .bin verification sets sit in the full folder.
"""
from easydict import EasyDict

from utils.artifacts.manifests import SUBSETS as ARTIFACT_SUBSETS, artifact_paths, credible_path, scenario_dir

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


# compatible-training scenario -> the subset the new model trains on (and the old features cover)
SCENARIO_SUBSETS = {scenario: subset for subset, (_, scenario) in ARTIFACT_SUBSETS.items() if scenario}
OLD_HEADS = ("softmax", "arc")      # as the --SD names spell the old model's head
CREDIBLE_THRESHOLD = "0.9"          # MixBCT's denoising T, as tools/denoising writes it in file names


def old_model_settings(sd_name: str, feature_root: str, old_network: str, old_embedding_size: int) -> dict:
    """old_network / old_embedding_size and the path of every artifact tools/ derive for --SD
    `sd_name` under feature_root/<scenario>/ (each method reads the ones it needs)."""
    folder = scenario_dir(sd_name, feature_root)
    paths = {kind: str(path) for kind, path in artifact_paths(sd_name, folder).items()}
    return {"old_network": old_network, "old_embedding_size": old_embedding_size, **paths,
            "credible_mask": str(credible_path(sd_name, folder, CREDIBLE_THRESHOLD))}


def compatible_config(method: str, scenario: str, old_head: str, embedding_size: int,
                      old_network: str = "r18", network: str = "r50") -> EasyDict:
    """One compatible training of the reference grid: a new `network` ArcFace model on the
    scenario's subset, trained by `method` against the old `old_network` model (head `old_head`,
    same feature size), whose artifacts are feature_save/<scenario>/<SD>_* with
    SD = f<embedding_size>_<old_network>_<old_head>_<subset>."""
    if scenario not in SCENARIO_SUBSETS:
        raise ValueError(f"unknown scenario {scenario!r}: expected one of {', '.join(SCENARIO_SUBSETS)}")
    if old_head not in OLD_HEADS:
        raise ValueError(f"unknown old head {old_head!r}: expected one of {', '.join(OLD_HEADS)}")
    subset = SCENARIO_SUBSETS[scenario]
    config = grid_config(subset, method="arcface", network=network, embedding_size=embedding_size)
    sd_name = f"f{embedding_size}_{old_network}_{old_head}_{subset}"
    config.update(method=method, **old_model_settings(sd_name, "feature_save", old_network, embedding_size))
    return config
