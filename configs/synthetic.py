"""Settings shared by the synthetic demo configs (not a config itself): a tiny network that
trains on two CPU cores in minutes; counts come from the data (num_classes / num_image None)."""
from easydict import EasyDict

from configs.ms1mv3 import HEADS, VAL_TARGETS

SYNTHETIC_RECIPE = {
    "network": "tiny", "embedding_size": 128, "num_classes": None, "num_image": None,
    "batch_size": 64, "lr": 0.1, "num_epoch": 12, "num_workers": 2, "fp16": False,
    "val_targets": VAL_TARGETS, "verbose": 500, "frequent": 20, "save_every_steps": 200,
}


def synthetic_config(subset_folder: str, method: str) -> EasyDict:
    """The demo recipe on dataset/synthetic/<subset_folder> ('' = the full set) with a plain head."""
    rec = f"dataset/synthetic/{subset_folder}".rstrip("/")
    return EasyDict(SYNTHETIC_RECIPE, rec=rec, method=method, head=HEADS[method])
