"""Backbone registry. Every backbone is a pure feature extractor:
float [B, 3, 112, 112] (normalised to [-1, 1]) -> embeddings [B, num_features]; no method heads
inside, so a saved model.pt is always a plain backbone state dict."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Union

import torch
from torch import nn

from backbones.iresnet import IRESNET_LAYERS, iresnet
from backbones.mobilefacenet import MOBILEFACENET_SIZES, mobilefacenet
from backbones.tiny import tiny
from backbones.vit import VIT_ALIASES, VIT_SIZES, vision_transformer
from utils.common.errors import one_line_reason

_BUILDERS: Dict[str, Callable[..., nn.Module]] = {}
for _name in IRESNET_LAYERS:
    _BUILDERS[_name] = lambda name=_name, **kw: iresnet(name, **kw)
for _name in MOBILEFACENET_SIZES:
    _BUILDERS[_name] = lambda name=_name, **kw: mobilefacenet(name, **kw)
for _name in list(VIT_SIZES) + list(VIT_ALIASES):
    _BUILDERS[_name] = lambda name=_name, **kw: vision_transformer(name, **kw)
_BUILDERS["tiny"] = tiny
# narrower tiny networks: the synthetic demo's old model (r18's role) and new models (r50's)
_BUILDERS["tiny_xs"] = lambda **kw: tiny(widths=(16, 24, 48), **kw)
_BUILDERS["tiny_s"] = lambda **kw: tiny(widths=(16, 32, 64), **kw)

# One name per distinct network (insightface's names; tiny is ours). get_model also accepts
# insightface's ViT training variants (vit_t_dp005_mask0, ...) and the alias vit_l.
NETWORK_NAMES: List[str] = ["r18", "r34", "r50", "r100", "r200", "mbf", "mbf_large",
                            "vit_t", "vit_s", "vit_b", "vit_l_dp005_mask_005", "tiny"]
ACCEPTED_NETWORK_NAMES: List[str] = NETWORK_NAMES + sorted(set(_BUILDERS) - set(NETWORK_NAMES))


def get_model(name: str, num_features: int = 512, gradient_checkpointing: bool = False,
              **kw) -> nn.Module:
    """Build backbone `name` (one of ACCEPTED_NETWORK_NAMES) with `num_features`-d embeddings; extra
    keyword arguments go to the network (e.g. dropout for r*, mask_ratio for vit_*)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown network {name!r}; choose one of {', '.join(ACCEPTED_NETWORK_NAMES)}")
    if int(num_features) <= 0:
        raise ValueError(f"num_features must be positive, got {num_features}")
    return _BUILDERS[name](num_features=int(num_features),
                           gradient_checkpointing=gradient_checkpointing, **kw)


def _describe_mismatch(model: nn.Module, state_dict: Dict[str, torch.Tensor], limit: int = 5) -> str:
    """Missing keys, unexpected keys and shape mismatches (the first `limit` of each), or ''."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
                   for k, v in expected.items()
                   if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("size mismatches (file vs network)", wrong_shape)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


# where a full insightface arcface_torch training checkpoint (checkpoint_gpu_<rank>.pt) keeps
# the backbone beside the classifier, optimizer and scheduler states
INSIGHTFACE_BACKBONE_KEY = "state_dict_backbone"


def backbone_weights(loaded: object, path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The backbone state dict inside what torch.load returned for `path`: a plain state dict,
    one saved from a DistributedDataParallel wrapper (`module.` prefix), or a full insightface
    checkpoint dict holding it under `state_dict_backbone`."""
    if isinstance(loaded, dict) and INSIGHTFACE_BACKBONE_KEY in loaded:
        loaded = loaded[INSIGHTFACE_BACKBONE_KEY]
    if not isinstance(loaded, dict) or not all(torch.is_tensor(v) for v in loaded.values()):
        raise ValueError(f"{path}: expected a backbone state dict (name -> tensor) or an "
                         f"insightface checkpoint with {INSIGHTFACE_BACKBONE_KEY!r}, "
                         f"got {type(loaded).__name__}")
    if loaded and all(k.startswith("module.") for k in loaded):
        loaded = {k[len("module."):]: v for k, v in loaded.items()}
    return loaded


def read_backbone_weights(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The backbone state dict in the file at `path` (weights_only; any form `backbone_weights`
    accepts)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone file not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # one line: torch's weights-only refusal spans many
        raise ValueError(f"{path}: not a readable torch state dict ({one_line_reason(error)})") from None
    return backbone_weights(loaded, path)


def infer_num_features(state_dict: Dict[str, torch.Tensor], path: Union[str, Path]) -> int:
    """Embedding size = output size of the last weight or bias in the state dict (the final
    Linear or BatchNorm1d of every backbone here and in insightface)."""
    for name in reversed(list(state_dict)):
        value = state_dict[name]
        if value.ndim in (1, 2) and name.endswith((".weight", ".bias")):
            return int(value.shape[0])
    raise ValueError(f"{path}: cannot infer the embedding size (no weight or bias tensor); "
                     f"pass --num-features")


def load_backbone(path: Union[str, Path], name: str, num_features: int,
                  device: Union[str, torch.device] = "cpu", **kw) -> nn.Module:
    """Build `name` and load the backbone weights at `path` (weights_only; see
    `backbone_weights` for the accepted forms). A file written for another network or feature
    size raises ValueError naming the file and the keys."""
    return backbone_from_weights(read_backbone_weights(path), path, name, num_features, device, **kw)


def backbone_from_weights(state_dict: Dict[str, torch.Tensor], path: Union[str, Path], name: str,
                          num_features: int, device: Union[str, torch.device] = "cpu", **kw) -> nn.Module:
    """Build `name` with the weights `read_backbone_weights(path)` returned (for a caller that
    already read them); a mismatch raises ValueError naming `path` and the keys."""
    model = get_model(name, num_features, **kw)
    mismatch = _describe_mismatch(model, state_dict)
    if mismatch:
        raise ValueError(f"{path} does not fit network {name!r} with num_features={num_features}: "
                         f"{mismatch}")
    model.load_state_dict(state_dict)
    return model.to(device)
