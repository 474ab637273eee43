"""Per-model cache of the raw IJB embeddings f(img) and f(flip(img)).

One .npz per (subset, network, feature size, model file, precision, input normalisation); the
key stored inside also pins the image list (landmark file checksum), the images
(image_fingerprint: every crop's size and modification time plus the full bytes of a fixed
sample of crops; a same-size edit of an unsampled crop with its mtime restored is not seen) and
the alignment settings. A file whose key differs from the one asked for is refused: the
embeddings are recomputed and the file replaced.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from tools.ijbc_eval.alignment import ALIGNED_SIZE, REFERENCE_POINTS
from utils.common.checksums import file_sha256
from utils.common.atomic_files import atomic_write, describe_os_error, unique_temporary, user_cache_dir

CACHE_FORMAT = 2
TRAINING_NORMALISATION = "(x - 127.5) / 127.5"
FINGERPRINT_SAMPLE = 256   # crops whose whole bytes enter the fingerprint, spread over the list


def image_fingerprint(image_dir, image_names: Sequence[str], sample: int = FINGERPRINT_SAMPLE) -> str:
    """sha256 over (name, size, mtime) of every image and the bytes of `sample` images spread evenly
    over the list: a crop replaced, re-encoded or touched changes it. Stat-only for the rest keeps it
    at a few seconds for IJB-C's 469k crops on a warm file system (0.12 s per 20k crops measured)."""
    image_dir = Path(image_dir)
    digest = hashlib.sha256(f"images:{len(image_names)}:".encode())
    for name in image_names:
        try:
            status = os.stat(image_dir / str(name))
        except OSError as error:
            raise ValueError(f"image {image_dir / str(name)} of the protocol cannot be read "
                             f"({error.strerror or error})") from None
        digest.update(f"{name}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    count = len(image_names)
    for position in sorted({count * k // sample for k in range(min(sample, count))}):
        digest.update(bytes.fromhex(file_sha256(image_dir / str(image_names[position]))))
    return digest.hexdigest()


def embedding_cache_key(model_sha256: str, network: str, num_features: int, subset: str,
                        image_list_sha256: str, num_images: int, amp: bool,
                        image_content_sha256: str,
                        input_normalisation: str = TRAINING_NORMALISATION) -> Dict[str, object]:
    return {
        "format": CACHE_FORMAT,
        "model_sha256": model_sha256, "network": network, "num_features": int(num_features),
        "subset": subset, "image_list_sha256": image_list_sha256, "num_images": int(num_images),
        "image_content_sha256": image_content_sha256,
        "alignment": {"method": "umeyama-similarity", "size": ALIGNED_SIZE, "border": 0,
                      "reference_points": REFERENCE_POINTS.round(4).tolist(), "colour": "RGB"},
        "input_normalisation": input_normalisation,
        "amp": bool(amp),
        "arrays": ["embeddings = f(img)", "flip_embeddings = f(horizontal flip of img)"],
    }


def cache_file(cache_dir, key: Dict[str, object]) -> Path:
    precision = "amp" if key["amp"] else "fp32"
    # the reference's normalisation gets a file of its own, so both can be cached side by side
    normalisation = "" if key["input_normalisation"] == TRAINING_NORMALISATION else "_norm128"
    return Path(cache_dir) / (f"{key['subset']}_{key['network']}_f{key['num_features']}_"
                              f"{str(key['model_sha256'])[:16]}_{precision}{normalisation}.npz")


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
    """np.savez to a temporary name of this writer in the same folder, then rename over `path`."""
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def save_cached_embeddings(path: Path, key: Dict[str, object], embeddings: np.ndarray,
                           flip_embeddings: np.ndarray) -> None:
    write_npz_atomic(path, {"key": np.array(json.dumps(key, sort_keys=True)),
                            "embeddings": embeddings, "flip_embeddings": flip_embeddings})


DEFAULT_CACHE_NAME = ".eval_cache"   # inside the data folder


def user_cache_root() -> Path:
    """The per-user cache folder for embeddings of data folders that cannot hold their own cache."""
    return user_cache_dir("eval_cache")


def cache_write_problem(folder: Path, create_parents: bool = True) -> Optional[str]:
    """None when a file can be created in `folder` (created if missing), else the one-line reason."""
    action = "creating"
    try:
        if not folder.is_dir():
            folder.mkdir(parents=create_parents, exist_ok=True)
        action = "writing"
        descriptor, probe = unique_temporary(folder / "write-probe")
        os.close(descriptor)
        probe.unlink()
    except OSError as error:
        return describe_os_error(error, error.filename or folder, action)
    return None


def choose_cache_dir(data_path: Path, cache_dir: Optional[Path]) -> Path:
    """The embedding cache folder, checked writable before anything is embedded: an explicit
    `cache_dir` must be; the default <data_path>/.eval_cache falls back, with one line saying so, to a
    folder of this data path under the user cache (XDG_CACHE_HOME or ~/.cache: mixbct/eval_cache/)."""
    if cache_dir is not None:
        problem = cache_write_problem(Path(cache_dir))
        if problem:
            raise ValueError(f"--cache-dir {cache_dir} cannot be written ({problem}): choose a writable --cache-dir")
        return Path(cache_dir)
    default = Path(data_path) / DEFAULT_CACHE_NAME
    if not Path(data_path).is_dir():
        return default   # the protocol's own check names the missing data folder
    problem = cache_write_problem(default, create_parents=False)
    if problem is None:
        return default
    data_key = hashlib.sha256(str(Path(data_path).resolve()).encode()).hexdigest()[:16]
    fallback = user_cache_root() / f"{Path(data_path).resolve().name}-{data_key}"
    fallback_problem = cache_write_problem(fallback)
    if fallback_problem:
        raise ValueError(f"no writable embedding cache: {default} ({problem}) nor {fallback} ({fallback_problem}); "
                         f"pass --cache-dir")
    print(f"embedding cache: {default} cannot be written ({problem}); using {fallback}", flush=True)
    return fallback
