"""Settings shared by the synthetic demo configs (not a config itself): a tiny network that
trains on two CPU cores in minutes; counts come from the data (num_classes / num_image None)."""
from easydict import EasyDict

from configs.ms1mv3 import HEADS, VAL_TARGETS, old_model_settings

SYNTHETIC_RECIPE = {
    "network": "tiny", "embedding_size": 128, "num_classes": None, "num_image": None,
    "batch_size": 64, "lr": 0.1, "num_workers": 2, "fp16": False, "channels_last": True,
    "val_targets": VAL_TARGETS, "verbose": 500, "frequent": 20, "save_every_steps": 200,
}
# Old and new models train for the same number of epochs on their own data, as in the reference
# recipe (35 and 35); 5 epochs keep the whole demo (old model + 7 new models + evaluation) under
# 10 minutes on two CPU cores.
NUM_EPOCHS = 5


def synthetic_config(subset_folder: str, method: str, num_epoch: int = NUM_EPOCHS) -> EasyDict:
    """The demo recipe on dataset/synthetic/<subset_folder> ('' = the full set) with a plain head."""
    rec = f"dataset/synthetic/{subset_folder}".rstrip("/")
    return EasyDict(SYNTHETIC_RECIPE, rec=rec, method=method, head=HEADS[method], num_epoch=num_epoch)


def synthetic_compatible_config(method: str) -> EasyDict:
    """The demo's compatible training (Open-class): a new tiny ArcFace f128 model on class70
    trained by `method` against the old tiny softmax f128 model of class30, whose artifacts are
    feature_save/synthetic/OPclass/f128_tiny_softmax_class70_*."""
    config = synthetic_config("train_part_70_class", method="arcface")
    config.update(method=method, **old_model_settings("f128_tiny_softmax_class70", "feature_save/synthetic",
                                                      "tiny", config.embedding_size))
    return config
