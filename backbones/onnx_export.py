"""ONNX export of a backbone, and onnxruntime inference of an exported file.

The exported graph takes `data`, float32 [B, 3, 112, 112] RGB normalised to [-1, 1] (as every
backbone here and insightface's models), B symbolic unless exported with a static batch, and
returns `embedding` [B, d]. The file's metadata records the network name, the embedding size
and the sha256 of the weights it came from, so the evaluation reads the network from the file.
The embedding size in force is the graph's: metadata that contradicts the graph's output is
refused, and a graph with a symbolic output width has every batch's width checked. A file
without that metadata (for example one written by insightface's torch2onnx.py) still runs.

onnx and onnxruntime are imported where used, so the backbones import without them.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch
from torch import nn

from utils.common.atomic_files import atomic_write
from utils.common.errors import one_line_reason

INPUT_NAME, OUTPUT_NAME = "data", "embedding"
DEFAULT_OPSET = 17
IMAGE_SHAPE = (3, 112, 112)
# metadata_props keys written by export_backbone
META_NETWORK, META_NUM_FEATURES, META_SOURCE_SHA256 = "network", "num_features", "source_sha256"


def export_backbone(model: nn.Module, network: str, num_features: int,
                    source_sha256: Optional[str] = None, static_batch: Optional[int] = None,
                    opset: int = DEFAULT_OPSET) -> bytes:
    """`model` (eval mode, fp32, on the CPU) as a serialised ONNX model checked by onnx, with the
    metadata above. The batch dimension is symbolic (any batch size, as insightface's
    torch2onnx.py marks it) unless `static_batch` fixes it for runtimes that need static shapes."""
    import onnx

    if static_batch is not None and int(static_batch) < 1:
        raise ValueError(f"static batch size must be >= 1, got {static_batch}")
    model = model.float().cpu().eval()
    example = torch.zeros(1 if static_batch is None else int(static_batch), *IMAGE_SHAPE)
    buffer = io.BytesIO()
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if static_batch is None else None
    with warnings.catch_warnings():
        # tracing warns about shape checks in the forward; the export itself is verified below
        warnings.simplefilter("ignore")
        # the TorchScript-based exporter: the dynamo one needs onnxscript, not a dependency here
        torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes,
                          opset_version=int(opset), do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    metadata = {META_NETWORK: network, META_NUM_FEATURES: str(int(num_features))}
    if source_sha256:
        metadata[META_SOURCE_SHA256] = source_sha256
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def write_onnx(path: Union[str, Path], serialised: bytes) -> Path:
    """Write a serialised model atomically (readers never see half a file)."""
    return atomic_write(path, lambda handle: handle.write(serialised))


def onnx_providers(device: Union[str, torch.device]) -> list:
    """onnxruntime execution providers for `device`: CUDA first when asked for and available."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxBackbone:
    """An exported backbone run by onnxruntime: float [B, 3, 112, 112] -> [B, d] float32 tensor
    on the CPU. `network` and `num_features` come from the file; a graph with a fixed batch size
    is run chunk by chunk (the last chunk padded)."""

    def __init__(self, path: Union[str, Path], device: Union[str, torch.device] = "cpu",
                 serialised: Optional[bytes] = None):
        """The model at `path`, or given as `serialised` bytes (then `path` only names it)."""
        import onnxruntime

        self.path = Path(path)
        if serialised is None and not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        try:
            self.session = onnxruntime.InferenceSession(
                serialised if serialised is not None else str(self.path), options,
                providers=onnx_providers(device))
        except Exception as error:   # onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: not a readable ONNX model ({one_line_reason(error)})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ValueError(f"{self.path}: expected one image input and an embedding output, "
                             f"got {len(inputs)} inputs and {len(outputs)} outputs")
        self.input_name = inputs[0].name
        shape = list(inputs[0].shape)
        if len(shape) != 4 or [d if isinstance(d, int) else None for d in shape[1:]] not in (
                list(IMAGE_SHAPE), [None, None, None]):
            raise ValueError(f"{self.path}: input {self.input_name} has shape {shape}, "
                             f"expected [batch, 3, 112, 112]")
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        metadata: Dict[str, str] = self.session.get_modelmeta().custom_metadata_map
        self.network = metadata.get(META_NETWORK, "onnx")
        self.source_sha256 = metadata.get(META_SOURCE_SHA256)
        output_width = outputs[0].shape[-1] if len(outputs[0].shape) == 2 else None
        declared = metadata.get(META_NUM_FEATURES)
        declared = int(declared) if declared is not None and declared.isdigit() else None
        # the graph decides what comes out: metadata that contradicts it is refused, not trusted
        if isinstance(output_width, int) and declared is not None and declared != output_width:
            raise ValueError(f"{self.path}: metadata {META_NUM_FEATURES}={declared} but the graph's output "
                             f"{outputs[0].name} has {output_width} features")
        if isinstance(output_width, int):
            self.num_features = output_width
        elif declared is not None:
            self.num_features = declared   # a symbolic width: checked on every batch (_run)
        else:
            raise ValueError(f"{self.path}: cannot read the embedding size (no {META_NUM_FEATURES} "
                             f"metadata, output shape {outputs[0].shape}); pass --num-features")

    def _run(self, images: np.ndarray) -> np.ndarray:
        outputs = self.session.run(None, {self.input_name: images})[0]
        if outputs.ndim != 2 or outputs.shape != (len(images), self.num_features):
            raise ValueError(f"{self.path}: the graph returned embeddings of shape {list(outputs.shape)} "
                             f"for {len(images)} images, expected [{len(images)}, {self.num_features}]")
        return outputs

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().float().cpu().numpy())
        if self.fixed_batch is None:
            outputs = self._run(array)
        else:
            chunks = []
            for start in range(0, len(array), self.fixed_batch):
                chunk = array[start:start + self.fixed_batch]
                padding = self.fixed_batch - len(chunk)
                if padding:   # eval mode: samples are independent, so padding rows change nothing
                    chunk = np.concatenate([chunk, np.zeros((padding, *chunk.shape[1:]), chunk.dtype)])
                chunks.append(self._run(chunk)[:len(chunk) - padding])
            outputs = np.concatenate(chunks)
        return torch.from_numpy(np.asarray(outputs, dtype=np.float32))
