"""Our own multiply-accumulate counter: forward hooks on the layers that cost arithmetic, plus
the attention products of torch.nn.functional.scaled_dot_product_attention.

Counted (MACs per forward): Conv2d out_elements * in_channels/groups * kh*kw; Linear
rows * in*out; BatchNorm / LayerNorm one per output element (the affine x*a+b); PReLU one per
element; attention L*S*E (q k^T) + L*S*Ev (weights @ v) per batch and head. Bias additions,
activations without parameters, softmax and residual additions are not counted (insightface's
"GFLOPs" table counts the same way and reports MACs).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

_ELEMENTWISE = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.PReLU)


def _module_macs(module: nn.Module, inputs, output) -> int:
    if isinstance(module, nn.Conv2d):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        return output.numel() * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, _ELEMENTWISE):
        return output.numel()
    return 0


@contextlib.contextmanager
def _count_attention(counter: List[int]) -> Iterator[None]:
    """Temporarily wrap F.scaled_dot_product_attention to add its two matmuls to `counter`."""
    original = F.scaled_dot_product_attention

    def counting(query, key, value, *args, **kwargs):
        batch = math.prod(query.shape[:-2])
        length, source = query.shape[-2], key.shape[-2]
        counter[0] += batch * length * source * (query.shape[-1] + value.shape[-1])
        return original(query, key, value, *args, **kwargs)

    F.scaled_dot_product_attention = counting
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: Sequence[int] = (1, 3, 112, 112)) -> int:
    """Multiply-accumulates of one eval-mode forward pass on a zero input of `input_shape`."""
    counter = [0]

    def hook(module, inputs, output):
        counter[0] += _module_macs(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear) + _ELEMENTWISE)]
    was_training = model.training
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    model.eval()
    try:
        with _count_attention(counter):
            model(torch.zeros(tuple(input_shape), device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return counter[0]


def count_flops(model: nn.Module, input_shape: Sequence[int] = (1, 3, 112, 112)) -> int:
    """Floating-point operations of one forward pass: multiply-accumulates x 2."""
    return 2 * count_macs(model, input_shape)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all of them, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
