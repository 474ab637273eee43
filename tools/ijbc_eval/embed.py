"""Raw IJB embeddings of one model: aligned faces from DataLoader workers, batched forward of
each image and its horizontal flip, and the per-model cache (tools/ijbc_eval/cache.py).

The forward runs on an inference copy of the backbone: BatchNorm folded into the convolution
before it and channels_last memory layout (oneDNN and cuDNN convolutions are faster in it);
embeddings agree with the plain backbone to float32 rounding (~1e-6 relative)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import cv2
import numpy as np
import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse as fuse_conv_batchnorm
from torch.utils.data import DataLoader, Dataset

from backbones import load_backbone
from tools.ijbc_eval.alignment import similarity_transforms, warp_face
from tools.ijbc_eval.cache import (cache_file, embedding_cache_key, image_fingerprint,
                                   load_cached_embeddings, save_cached_embeddings)
from tools.ijbc_eval.protocol import VerificationProtocol
from utils.artifacts import file_sha256
from utils.loader import to_device
from utils.progress import ProgressReporter


@dataclass
class EmbeddingOptions:
    batch_size: int = 128
    device: str = "cpu"
    amp: bool = False
    workers: int = 2
    cache_dir: Optional[Path] = None   # None: no cache
    force_reload: bool = False


@dataclass
class ModelEmbeddings:
    path: Path
    network: str
    num_features: int
    model_sha256: str
    embeddings: np.ndarray        # [N, d] float32, f(img)
    flip_embeddings: np.ndarray   # [N, d] float32, f(horizontal flip of img)
    from_cache: bool


def read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a readable torch state dict ({error})") from None
    if not isinstance(state_dict, dict) or not state_dict:
        raise ValueError(f"{path}: expected a backbone state dict (name -> tensor)")
    return state_dict


def infer_num_features(state_dict: Dict[str, torch.Tensor], path: Path) -> int:
    """Embedding size = output size of the last weight or bias in the state dict (the final
    Linear or BatchNorm1d of every backbone in backbones/)."""
    for name in reversed(list(state_dict)):
        value = state_dict[name]
        if torch.is_tensor(value) and value.ndim in (1, 2) and name.endswith((".weight", ".bias")):
            return int(value.shape[0])
    raise ValueError(f"{path}: cannot infer the embedding size (no weight or bias tensor); "
                     f"pass --num-features")


class AlignedFaceDataset(Dataset):
    """Item i: {'image': uint8 [3, 112, 112] RGB aligned face of image i}."""

    def __init__(self, image_dir: Path, image_names: np.ndarray, landmarks: np.ndarray):
        self.image_dir = Path(image_dir)
        self.image_names = image_names
        try:
            self.transforms = similarity_transforms(landmarks)
        except ValueError as error:
            raise ValueError(f"{image_dir}: {error}") from None

    def __len__(self) -> int:
        return len(self.image_names)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        path = self.image_dir / str(self.image_names[index])
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot decode image {path}")
        aligned = warp_face(image, self.transforms[index])
        return {"image": torch.from_numpy(np.ascontiguousarray(aligned.transpose(2, 0, 1)))}


def _single_threaded_opencv(_worker_id: int) -> None:
    cv2.setNumThreads(1)  # workers already run in parallel; OpenCV threads would oversubscribe


def inference_model(model: nn.Module) -> nn.Module:
    """Eval-mode copy of `model` for fast inference: each BatchNorm that only follows a
    convolution is folded into its weights (needs an fx trace; a model whose forward has
    data-dependent control flow, e.g. the ViTs, is copied unfused), in channels_last layout."""
    model = model.eval()
    try:
        fused = fuse_conv_batchnorm(model)
    except fx.proxy.TraceError:
        fused = copy.deepcopy(model)
    return fused.to(memory_format=torch.channels_last)


@torch.inference_mode()
def embed_faces(model: nn.Module, dataset: Dataset, options: EmbeddingOptions,
                description: str = "embedding"):
    """(f(img), f(flip(img))) float32 [N, d] for every item of `dataset`, in order."""
    device = torch.device(options.device)
    loader = DataLoader(dataset, batch_size=options.batch_size, shuffle=False,
                        num_workers=options.workers, pin_memory=device.type == "cuda",
                        worker_init_fn=_single_threaded_opencv if options.workers else None)
    model = inference_model(model)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    progress = ProgressReporter(len(dataset), description, unit="img")
    embeddings, flip_embeddings = [], []
    for batch in loader:
        images = to_device(batch, device, channels_last=True)["image"]
        # one forward for both views: eval-mode layers treat samples independently
        with torch.autocast(device.type, dtype=amp_dtype, enabled=options.amp):
            outputs = model(torch.cat([images, torch.flip(images, dims=[3])])).float()
        embeddings.append(outputs[:len(images)].cpu())
        flip_embeddings.append(outputs[len(images):].cpu())
        progress.update(len(images))
    progress.close()
    return torch.cat(embeddings).numpy(), torch.cat(flip_embeddings).numpy()


def model_embeddings(model_path, network: str, protocol: VerificationProtocol,
                     options: EmbeddingOptions, num_features: Optional[int] = None,
                     label: str = "model") -> ModelEmbeddings:
    """Raw embeddings of `model_path` on the protocol's images, from the cache when it holds
    them for exactly this model file, network, feature size, image list and settings."""
    model_path = Path(model_path)
    state_dict = read_state_dict(model_path)
    if num_features is None:
        num_features = infer_num_features(state_dict, model_path)
    del state_dict
    sha256 = file_sha256(model_path)
    key = embedding_cache_key(sha256, network, num_features, protocol.subset,
                              protocol.image_list_sha256, protocol.num_images, options.amp,
                              image_fingerprint(protocol.image_dir, protocol.image_names))
    path = cache_file(options.cache_dir, key) if options.cache_dir is not None else None
    if path is not None and not options.force_reload:
        cached, reason = load_cached_embeddings(path, key)
        if cached is not None:
            print(f"{label}: embeddings of {model_path} from cache {path}", flush=True)
            return ModelEmbeddings(model_path, network, num_features, sha256, *cached, from_cache=True)
        print(f"{label}: {reason}; embedding {protocol.num_images} images", flush=True)
    model = load_backbone(model_path, network, num_features, device=options.device)
    dataset = AlignedFaceDataset(protocol.image_dir, protocol.image_names, protocol.landmarks)
    embeddings, flip_embeddings = embed_faces(model, dataset, options,
                                              description=f"{label} {network} embedding")
    if path is not None:
        save_cached_embeddings(path, key, embeddings, flip_embeddings)
        print(f"{label}: embeddings cached in {path}", flush=True)
    return ModelEmbeddings(model_path, network, num_features, sha256, embeddings, flip_embeddings,
                           from_cache=False)
