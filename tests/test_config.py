"""utils/common/config.py: merge over configs/base.py, unknown-key hints, path resolution, overrides."""
import json
import runpy
from pathlib import Path

import pytest

from utils.common.config import REPO_ROOT, load_config, parse_override, save_config

BASE = runpy.run_path(str(Path(__file__).resolve().parents[1] / "configs" / "base.py"))["config"]


def write_config(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text("from easydict import EasyDict as edict\nconfig = edict()\n" + body)
    return path


def test_merge_keeps_base_defaults_and_file_values(tmp_path):
    path = write_config(tmp_path, "my_run", "config.lr = 0.05\nconfig.network = 'r100'\n")
    cfg = load_config(path)
    assert cfg.lr == 0.05 and cfg.network == "r100"
    for key in ("momentum", "weight_decay", "batch_size", "margin_list", "poly_power"):
        assert cfg[key] == BASE[key]
    assert set(cfg) == set(BASE) | {"config_name"}
    assert cfg.config_name == "my_run"


def test_unknown_key_names_file_and_suggests(tmp_path):
    path = write_config(tmp_path, "typo", "config.lrr = 0.1\n")
    with pytest.raises(ValueError) as error:
        load_config(path)
    message = str(error.value)
    assert "unknown config key 'lrr'" in message and str(path) in message and "did you mean 'lr'" in message


def test_unknown_key_without_close_match_has_no_hint(tmp_path):
    path = write_config(tmp_path, "odd", "config.zzzzqqq = 1\n")
    with pytest.raises(ValueError, match="unknown config key 'zzzzqqq'") as error:
        load_config(path)
    assert "did you mean" not in str(error.value)


def test_relative_paths_resolve_against_repo_root_from_any_cwd(tmp_path, monkeypatch):
    path = write_config(tmp_path, "paths", "config.rec = 'dataset/x'\nconfig.old_features = '/abs/f.npy'\n"
                                           "config.credible_mask = 'feature_save/m.npy'\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path.name)  # relative config path, resolved against the cwd
    assert cfg.rec == str(REPO_ROOT / "dataset" / "x")
    assert cfg.old_features == "/abs/f.npy"
    assert cfg.credible_mask == str(REPO_ROOT / "feature_save" / "m.npy")
    assert cfg.output == str(REPO_ROOT / "work_dirs" / "paths")
    assert cfg.class_prototypes is None


def test_shipped_config_imports_shared_module_from_another_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO_ROOT / "configs" / "f128_r18_softmax_class30.py")
    assert (cfg.num_classes, cfg.num_image, cfg.embedding_size) == (28029, 1581241, 128)
    assert cfg.rec == str(REPO_ROOT / "dataset/ms1m-retinaface-t1/train_part_30_class")


def test_overrides_parse_literals_and_strings(tmp_path):
    path = write_config(tmp_path, "over", "config.lr = 0.05\n")
    cfg = load_config(path, ["lr=0.01", "val_targets=['lfw']", "network=r18", "fp16=True", "output=out/here"])
    assert cfg.lr == 0.01 and cfg.val_targets == ["lfw"] and cfg.network == "r18" and cfg.fp16 is True
    assert cfg.output == str(REPO_ROOT / "out" / "here")
    with pytest.raises(ValueError, match="unknown config key 'num_epochs'.*did you mean 'num_epoch'"):
        load_config(path, ["num_epochs=3"])
    assert parse_override("rec=a=b") == ("rec", "a=b")
    with pytest.raises(ValueError, match="key=value"):
        parse_override("lr")


def test_missing_file_and_missing_config_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_config(tmp_path / "nope.py")
    bad = tmp_path / "bad.py"
    bad.write_text("settings = {}\n")
    with pytest.raises(ValueError, match="does not define a dict named 'config'"):
        load_config(bad)


def test_save_config_writes_json_atomically(tmp_path):
    cfg = load_config(write_config(tmp_path, "saved", "config.margin_list = (1.0, 0.5, 0.0)\n"))
    target = tmp_path / "out" / "config.json"
    save_config(cfg, target)
    loaded = json.loads(target.read_text())
    assert loaded["margin_list"] == [1.0, 0.5, 0.0] and loaded["config_name"] == "saved"
    assert not list(target.parent.glob("*.tmp"))


@pytest.mark.parametrize("name", sorted(path.stem for path in (REPO_ROOT / "configs").glob("*.py")
                                        if path.stem not in ("base", "ms1mv3", "synthetic")))
def test_every_shipped_config_loads(name):
    cfg = load_config(REPO_ROOT / "configs" / f"{name}.py")
    parts = name.split("_")
    # synthetic_f128_<network>_<head>_<subset> (network names may hold "_") or f128_<network>_<head>_<subset>
    feature_size, network = (parts[1], "_".join(parts[2:-2])) if name.startswith("synthetic") else parts[:2]
    assert cfg.embedding_size == int(feature_size[1:]) and cfg.network == network
    assert cfg.head == ("softmax" if "_softmax_" in name else "partial_fc")
