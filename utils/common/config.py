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
from typing import Any, Iterable, Mapping

from easydict import EasyDict

from utils.common.atomic_files import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[2]   # utils/common/config.py -> the repository
BASE_CONFIG = REPO_ROOT / "configs" / "base.py"
# numeric keys where None means "off"
NULLABLE_KEYS = ("clip_grad_norm",)
# keys a resume may not change: they decide the data order or the shape of the model and its state
# (the data set itself is compared by its fingerprint, so a moved but identical rec may resume)
RESUME_FIXED_KEYS = ("method", "synthetic", "num_image", "num_classes", "batch_size", "seed",
                     "gradient_accumulation_steps", "network", "embedding_size", "head", "optimizer",
                     "old_features", "old_labels", "class_prototypes", "credible_mask", "class_meta",
                     "old_network", "old_embedding_size", "advbct_hidden", "nccl_queue_size")
# keys a resume may change without a warning (where the run is, how it is named); any other change is logged
RESUME_IGNORED_KEYS = ("output", "resume", "config_name")
# the types of the keys whose default in configs/base.py is None (any other key: its default's type)
NONE_DEFAULT_TYPES = {"rec": str, "output": str, "num_classes": int, "num_image": int,
                      "old_network": str, "old_embedding_size": int, "old_features": str,
                      "old_labels": str, "class_prototypes": str, "credible_mask": str,
                      "class_meta": str, "nccl_entropy_filter": float}
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
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw_value.strip()
    return key, value


def typed_override(text: str, defaults: Mapping[str, Any]) -> tuple[str, Any]:
    """(key, value) of override `text` (key=value): the key must be one of `defaults` (configs/base.py),
    the value is taken as the type of the key's default there (check_value)."""
    key, value = parse_override(text)
    if key not in defaults:
        raise _unknown_key_error(key, defaults, f"override {text!r}")
    raw_value = text.partition("=")[2].strip()
    kind = _key_type(key, defaults[key])
    # on the command line a string key takes the text as written (network=50 is "50"; rec=None
    # stays None where None is allowed), and a bool key takes true / false in any case
    if kind is str and not isinstance(value, str) and not (value is None and defaults[key] is None):
        value = raw_value
    elif kind is bool and raw_value.lower() in ("true", "false"):
        value = raw_value.lower() == "true"
    return key, check_value(key, value, defaults[key], f"override {text!r}")


def _key_type(key: str, default: Any) -> type | None:
    """The type `key` takes: its default's in configs/base.py, NONE_DEFAULT_TYPES's where that is None."""
    return NONE_DEFAULT_TYPES.get(key) if default is None else type(default)


def _expected_type(key: str, default: Any) -> tuple[str, Any] | None:
    """(description, checker) of the values `key` takes; None where any value goes."""
    kind = _key_type(key, default)
    if kind is None:
        return None
    if kind is bool:
        return "True or False", lambda value: isinstance(value, bool)
    if kind is int:
        return "an integer", lambda value: isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return "a number", lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in (list, tuple):
        return "a list, e.g. ['lfw'] or (1.0, 0.5, 0.0)", lambda value: isinstance(value, (list, tuple))
    if kind is str:
        return "a string", lambda value: isinstance(value, (str, os.PathLike))
    return None


def check_value(key: str, value: Any, default: Any, where: str) -> Any:
    """`value` for `key` if it has the type of the key's default in configs/base.py (bools True / False
    only, integers an int, numbers an int or float (made float), lists a list or tuple, strings
    a string or path), else a one-line ValueError naming `where` and the key. None is taken where
    the default is None or the key is in NULLABLE_KEYS. The one type check for config files and
    --set alike."""
    if value is None and (default is None or key in NULLABLE_KEYS):
        return value
    expected = _expected_type(key, default)
    if expected is None:
        return value
    description, accepts = expected
    if not accepts(value):
        none_note = " or None" if default is None or key in NULLABLE_KEYS else ""
        raise ValueError(f"{where}: {key} takes {description}{none_note} (default {default!r}), "
                         f"got {value!r}")
    if _key_type(key, default) is float:
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


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
    defaults = dict(merged)  # the types --set values are checked against
    for key, value in _exec_config(config_path).items():
        if key not in merged:
            raise _unknown_key_error(key, merged, str(config_path))
        merged[key] = check_value(key, value, defaults[key], f"config file {config_path}")
    for text in overrides:
        key, value = typed_override(text, defaults)
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
    atomic_write_text(path, config_to_json(cfg) + "\n")


def comparable_config(cfg: dict) -> dict:
    """The config as its JSON form holds it (tuples as lists ...): what a checkpoint stores."""
    return json.loads(config_to_json(cfg))


def config_differences(stored: dict, current: dict, keys: Iterable[str]) -> list:
    """['key stored -> current', ...] for the `keys` whose values differ (both comparable_config)."""
    return [f"{key} {stored.get(key)!r} -> {current.get(key)!r}" for key in keys
            if stored.get(key) != current.get(key)]
