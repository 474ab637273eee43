"""Training configs: a config file sets what differs from configs/base.py; nothing else is allowed.

A config file is executed from its path (it may live anywhere, e.g. BCT_methods/MixBCT/configs/)
and must define `config`. Unknown keys are errors with a "did you mean" hint, relative paths
resolve against the repository root, and `output` defaults to work_dirs/<config file stem>.
"""
from __future__ import annotations

import ast
import difflib
import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any, Iterable

from easydict import EasyDict

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO_ROOT / "configs" / "base.py"
PATH_KEYS = ("rec", "output", "old_features", "old_labels", "class_prototypes", "credible_mask",
             "class_meta")


def _exec_config(path: Path) -> dict:
    """Run a config file by path and return its `config` as a plain dict."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    # config files may import from the repository (e.g. `from configs.base import config`)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    try:
        namespace = runpy.run_path(str(path))
    except Exception as error:
        raise ValueError(f"cannot execute config file {path}: {type(error).__name__}: {error}") from error
    if "config" not in namespace or not isinstance(namespace["config"], dict):
        raise ValueError(f"config file {path} does not define a dict named 'config'")
    return dict(namespace["config"])


def _unknown_key_error(key: str, known: Iterable[str], where: str) -> ValueError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown config key {key!r} in {where}{hint}")


def parse_override(text: str) -> tuple[str, Any]:
    """'key=value' -> (key, value); the value is a Python literal when it parses as one, else a string."""
    key, separator, raw_value = text.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ValueError(f"bad override {text!r}: expected key=value")
    try:
        value = ast.literal_eval(raw_value.strip())
    except (ValueError, SyntaxError):
        value = raw_value.strip()
    return key, value


def resolve_path(value: Any) -> Any:
    """Relative paths resolve against the repository root, whatever the working directory."""
    if value is None or value == "":
        return value
    expanded = Path(os.path.expanduser(str(value)))
    return str(expanded if expanded.is_absolute() else (REPO_ROOT / expanded).resolve())


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> EasyDict:
    """configs/base.py, then the file at `path`, then `key=value` overrides, with paths resolved."""
    config_path = Path(path).expanduser().resolve()
    merged = _exec_config(BASE_CONFIG)
    for key, value in _exec_config(config_path).items():
        if key not in merged:
            raise _unknown_key_error(key, merged, str(config_path))
        merged[key] = value
    for text in overrides:
        key, value = parse_override(text)
        if key not in merged:
            raise _unknown_key_error(key, merged, f"override {text!r}")
        merged[key] = value
    if merged.get("output") in (None, ""):
        merged["output"] = str(Path("work_dirs") / config_path.stem)
    for key in PATH_KEYS:
        merged[key] = resolve_path(merged[key])
    merged["config_name"] = config_path.stem
    return EasyDict(merged)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def config_to_json(cfg: dict) -> str:
    return json.dumps(_jsonable(cfg), indent=2, sort_keys=True)


def save_config(cfg: dict, path: str | os.PathLike) -> None:
    """Write the resolved config as JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(config_to_json(cfg) + "\n")
    os.replace(temporary, path)
