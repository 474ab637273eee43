"""Raw IJB embeddings of one model: aligned faces from DataLoader workers, batched forward of
each image and its horizontal flip, and the per-model cache (tools/ijbc_eval/cache.py).

A .pt model runs on an inference copy of the backbone: BatchNorm folded into the convolution
before it and channels_last memory layout (oneDNN and cuDNN convolutions are faster in it);
embeddings agree with the plain backbone to float32 rounding (~1e-6 relative). A .onnx model
(tools/export_onnx.py) runs in onnxruntime, its network and embedding size read from the file,
so the deployed artefact is the one measured."""
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
from torch.utils.data import Dataset

from backbones import backbone_from_weights, infer_num_features, read_backbone_weights
from backbones.onnx_export import OnnxBackbone
from tools.ijbc_eval.alignment import similarity_transforms, warp_face
from tools.ijbc_eval.cache import (TRAINING_NORMALISATION, cache_file, embedding_cache_key,
                                   image_fingerprint, load_cached_embeddings, save_cached_embeddings)
from tools.ijbc_eval.protocol import VerificationProtocol
from utils.common.checksums import file_sha256
from utils.data.loader import PIXEL_SCALE, OneLineErrorLoader, to_device
from utils.common.progress import ProgressReporter


# network input normalisations: name -> (formula, divisor of x - 127.5). "training" is the one
# every model here is trained with; "reference" is the reference's IJB-C evaluation script's
INPUT_NORMALISATIONS = {"training": (TRAINING_NORMALISATION, PIXEL_SCALE),
                        "reference": ("(x - 127.5) / 128", 128.0)}


@dataclass
class EmbeddingOptions:
    batch_size: int = 128
    device: str = "cpu"
    amp: bool = False
    workers: int = 2
    cache_dir: Optional[Path] = None   # None: no cache
    force_reload: bool = False
    input_normalisation: str = "training"   # a key of INPUT_NORMALISATIONS


@dataclass
class ModelEmbeddings:
    path: Path
    network: str
    num_features: int
    model_sha256: str
    embeddings: np.ndarray        # [N, d] float32, f(img)
    flip_embeddings: np.ndarray   # [N, d] float32, f(horizontal flip of img)
    from_cache: bool


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


def is_onnx_file(path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


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
    """(f(img), f(flip(img))) float32 [N, d] for every item of `dataset`, in order. `model` is a
    backbone or an `OnnxBackbone` (which runs in fp32: `options.amp` does not apply)."""
    device = torch.device(options.device)
    # an undecodable image in a worker ends as that worker's one line, not its traceback
    loader = OneLineErrorLoader(dataset, batch_size=options.batch_size, shuffle=False,
                                num_workers=options.workers, pin_memory=device.type == "cuda",
                                worker_init_fn=_single_threaded_opencv if options.workers else None)
    is_torch = isinstance(model, nn.Module)
    forward = inference_model(model) if is_torch else model
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    _, pixel_scale = INPUT_NORMALISATIONS[options.input_normalisation]
    progress = ProgressReporter(len(dataset), description, unit="img")
    embeddings, flip_embeddings = [], []
    for batch in loader:
        images = to_device(batch, device if is_torch else torch.device("cpu"),
                           channels_last=is_torch, pixel_scale=pixel_scale)["image"]
        # one forward for both views: eval-mode layers treat samples independently
        with torch.autocast(device.type, dtype=amp_dtype, enabled=options.amp and is_torch):
            outputs = forward(torch.cat([images, torch.flip(images, dims=[3])])).float()
        embeddings.append(outputs[:len(images)].cpu())
        flip_embeddings.append(outputs[len(images):].cpu())
        progress.update(len(images))
    progress.close()
    return torch.cat(embeddings).numpy(), torch.cat(flip_embeddings).numpy()


def model_embeddings(model_path, network: str, protocol: VerificationProtocol,
                     options: EmbeddingOptions, num_features: Optional[int] = None,
                     label: str = "model") -> ModelEmbeddings:
    """Raw embeddings of `model_path` on the protocol's images, from the cache when it holds
    them for exactly this model file, network, feature size, image list and settings. For a
    .onnx file `network` and `num_features` are read from the file."""
    model_path = Path(model_path)
    onnx_model, weights, amp = None, None, options.amp
    if is_onnx_file(model_path):
        onnx_model = OnnxBackbone(model_path, options.device)
        if num_features is not None and int(num_features) != onnx_model.num_features:
            raise ValueError(f"{model_path}: the file's embeddings have {onnx_model.num_features} "
                             f"features, --num-features says {num_features}")
        if network != onnx_model.network:
            print(f"{label}: network {onnx_model.network} (read from {model_path.name})", flush=True)
        network, num_features, amp = onnx_model.network, onnx_model.num_features, False
    elif num_features is None:
        weights = read_backbone_weights(model_path)   # kept: a cache miss builds the model from it
        num_features = infer_num_features(weights, model_path)
    sha256 = file_sha256(model_path)
    key = embedding_cache_key(sha256, network, num_features, protocol.subset,
                              protocol.image_list_sha256, protocol.num_images, amp,
                              image_fingerprint(protocol.image_dir, protocol.image_names),
                              INPUT_NORMALISATIONS[options.input_normalisation][0])
    path = cache_file(options.cache_dir, key) if options.cache_dir is not None else None
    if path is not None and not options.force_reload:
        cached, reason = load_cached_embeddings(path, key)
        if cached is not None:
            print(f"{label}: embeddings of {model_path} from cache {path}", flush=True)
            return ModelEmbeddings(model_path, network, num_features, sha256, *cached, from_cache=True)
        print(f"{label}: {reason}; embedding {protocol.num_images} images", flush=True)
    if onnx_model is not None:
        model = onnx_model
    else:
        weights = weights if weights is not None else read_backbone_weights(model_path)
        model = backbone_from_weights(weights, model_path, network, num_features, device=options.device)
        del weights
    dataset = AlignedFaceDataset(protocol.image_dir, protocol.image_names, protocol.landmarks)
    embeddings, flip_embeddings = embed_faces(model, dataset, options,
                                              description=f"{label} {network} embedding")
    if path is not None:
        save_cached_embeddings(path, key, embeddings, flip_embeddings)
        print(f"{label}: embeddings cached in {path}", flush=True)
    return ModelEmbeddings(model_path, network, num_features, sha256, embeddings, flip_embeddings,
                           from_cache=False)
