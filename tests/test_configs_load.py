"""Every shipped config (configs/ and BCT_methods/*/configs/) loads, trains on the published MS1M-V3
counts of its subset, and a method config names the old-model artifacts its method reads."""
import re

import pytest

from configs.ms1mv3 import compatible_config
from utils.common.config import REPO_ROOT, load_config

# the published MS1M-V3 (ms1m-retinaface-t1) split counts: (identities, images); None = read
# from the data (data70 is not published; the synthetic set is whatever tools/synthetic made)
EXPECTED_COUNTS = {
    "class30": (28029, 1581241),
    "class70": (65402, 3598269),
    "class100": (93431, 5179510),
    "data30": (93431, 1554138),
    "data70": (93431, None),
    "data100": (93431, 5179510),
}
SCENARIO_SUBSET = {"OPclass": "class70", "EXclass": "class100", "OPdata": "data70", "EXdata": "data100"}
# artifact config key -> its file name after the --SD name
ARTIFACT_SUFFIX = {"old_features": "_feature.npy", "class_prototypes": "_avg_feature.npy",
                   "credible_mask": "_credible_0.9.npy", "class_meta": "_class_meta.npz"}
# what each method's train.py checks and reads at start-up
METHOD_READS = {
    "L2": ("old_features",),
    "BCT": ("class_prototypes",),
    "UniBCT": ("old_features", "class_prototypes"),
    "NCCL": ("old_features",),
    "AdvBCT": ("old_features", "class_meta"),
    "MixBCT": ("old_features", "credible_mask"),
}
HELPER_MODULES = ("base", "ms1mv3", "synthetic")
OLD_MODEL_CONFIGS = sorted(path for path in (REPO_ROOT / "configs").glob("*.py")
                           if path.stem not in HELPER_MODULES)
METHOD_CONFIGS = sorted((REPO_ROOT / "BCT_methods").glob("*/configs/*.py"))
GRID_NAME = re.compile(r"^(OPclass|EXclass|OPdata|EXdata)_ms1mv3_r18_to_r50_"
                       r"(\w+?)_(softmax|arc)_to_arc_f(\d+)$")
SYNTHETIC_NAME = re.compile(r"^synthetic_OPclass_tiny_(\w+?)_softmax_to_arc_f128$")


def relative(path) -> str:
    return str(path.relative_to(REPO_ROOT))


def test_every_config_is_found():
    assert len(OLD_MODEL_CONFIGS) >= 12
    # six methods (L2 twice: plain and weakened), nine grid cells and one synthetic config each
    assert len(METHOD_CONFIGS) == 7 * 10


@pytest.mark.parametrize("path", OLD_MODEL_CONFIGS, ids=relative)
def test_old_model_config_loads_with_published_counts(path):
    cfg = load_config(path)
    if path.stem.startswith("synthetic"):
        assert (cfg.num_classes, cfg.num_image) == (None, None)
        assert cfg.rec.startswith(str(REPO_ROOT / "dataset" / "synthetic"))
    else:
        subset = path.stem.split("_")[-1]
        assert (cfg.num_classes, cfg.num_image) == EXPECTED_COUNTS[subset]
        assert cfg.rec.startswith(str(REPO_ROOT / "dataset" / "ms1m-retinaface-t1"))


@pytest.mark.parametrize("path", METHOD_CONFIGS, ids=relative)
def test_method_config_loads_and_names_what_its_method_reads(path):
    cfg = load_config(path)
    method_folder = path.parents[1].name
    grid, synthetic = GRID_NAME.match(path.stem), SYNTHETIC_NAME.match(path.stem)
    assert grid or synthetic, f"unexpected config name {path.name}"
    if grid:
        scenario, _, old_head, size = grid.groups()
        subset = SCENARIO_SUBSET[scenario]
        sd_name = f"f{size}_r18_{old_head}_{subset}"
        artifact_folder = REPO_ROOT / "feature_save" / scenario
        assert (cfg.num_classes, cfg.num_image) == EXPECTED_COUNTS[subset]
        assert (cfg.network, cfg.embedding_size) == ("r50", int(size))
        assert (cfg.old_network, cfg.old_embedding_size) == ("r18", int(size))
        assert (cfg.fp16, cfg.num_epoch) == (True, 35)
    else:
        sd_name = "f128_tiny_softmax_class70"
        artifact_folder = REPO_ROOT / "feature_save" / "synthetic" / "OPclass"
        assert cfg.rec == str(REPO_ROOT / "dataset" / "synthetic" / "train_part_70_class")
        assert (cfg.network, cfg.embedding_size) == ("tiny_s", 128)
        assert (cfg.old_network, cfg.old_embedding_size) == ("tiny_xs", 128)
    assert cfg.method == method_folder and cfg.head == "partial_fc"
    for key in METHOD_READS[cfg.method]:
        assert cfg[key] == str(artifact_folder / (sd_name + ARTIFACT_SUFFIX[key])), key
    if cfg.method == "L2":
        assert cfg.l2_threshold == (0.2 if "_weakenedL2_" in path.stem else 0.0)


def test_compatible_config_rejects_unknown_scenario_and_head():
    with pytest.raises(ValueError, match="unknown scenario 'OPclas'.*OPclass"):
        compatible_config("L2", "OPclas", old_head="arc", embedding_size=512)
    with pytest.raises(ValueError, match="unknown old head 'arcface'.*softmax, arc"):
        compatible_config("L2", "OPclass", old_head="arcface", embedding_size=512)
