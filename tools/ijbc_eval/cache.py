"""Per-model cache of the raw IJB embeddings f(img) and f(flip(img)).

One .npz per (subset, network, feature size, model file, precision); the key stored inside
also pins the image list (landmark file checksum) and the alignment settings. A file whose key
differs from the one asked for is refused: the embeddings are recomputed and the file replaced.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from tools.ijbc_eval.alignment import ALIGNED_SIZE, REFERENCE_POINTS

CACHE_FORMAT = 1


def embedding_cache_key(model_sha256: str, network: str, num_features: int, subset: str,
                        image_list_sha256: str, num_images: int, amp: bool) -> Dict[str, object]:
    return {
        "format": CACHE_FORMAT,
        "model_sha256": model_sha256, "network": network, "num_features": int(num_features),
        "subset": subset, "image_list_sha256": image_list_sha256, "num_images": int(num_images),
        "alignment": {"method": "umeyama-similarity", "size": ALIGNED_SIZE, "border": 0,
                      "reference_points": REFERENCE_POINTS.round(4).tolist(), "colour": "RGB"},
        "input_normalisation": "(x - 127.5) / 127.5",
        "amp": bool(amp),
        "arrays": ["embeddings = f(img)", "flip_embeddings = f(horizontal flip of img)"],
    }


def cache_file(cache_dir, key: Dict[str, object]) -> Path:
    precision = "amp" if key["amp"] else "fp32"
    return Path(cache_dir) / (f"{key['subset']}_{key['network']}_f{key['num_features']}_"
                              f"{str(key['model_sha256'])[:16]}_{precision}.npz")


def _differences(stored: Dict[str, object], wanted: Dict[str, object]) -> str:
    fields = sorted(set(stored) | set(wanted))
    return ", ".join(f"{field}: {str(stored.get(field))[:16]} vs {str(wanted.get(field))[:16]}"
                     for field in fields if stored.get(field) != wanted.get(field))


def load_cached_embeddings(path: Path, key: Dict[str, object]
                           ) -> Tuple[Optional[Tuple[np.ndarray, np.ndarray]], str]:
    """((embeddings, flip_embeddings), '') on a hit, or (None, why it was not used)."""
    if not path.is_file():
        return None, f"no cache at {path}"
    try:
        with np.load(path) as stored:
            stored_key = json.loads(str(stored["key"]))
            if stored_key != key:
                return None, f"cache {path.name} was built for other settings ({_differences(stored_key, key)})"
            embeddings, flip_embeddings = stored["embeddings"], stored["flip_embeddings"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        return None, f"cache {path} is unreadable ({error})"
    expected_shape = (key["num_images"], key["num_features"])
    if embeddings.shape != expected_shape or flip_embeddings.shape != expected_shape:
        return None, f"cache {path.name} holds arrays of shape {embeddings.shape}, expected {expected_shape}"
    return (embeddings, flip_embeddings), ""


def write_npz_atomic(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """np.savez to a temporary name in the same folder, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.stem}.tmp-{os.getpid()}.npz")
    np.savez(temporary, **arrays)
    os.replace(temporary, path)


def save_cached_embeddings(path: Path, key: Dict[str, object], embeddings: np.ndarray,
                           flip_embeddings: np.ndarray) -> None:
    write_npz_atomic(path, {"key": np.array(json.dumps(key, sort_keys=True)),
                            "embeddings": embeddings, "flip_embeddings": flip_embeddings})
