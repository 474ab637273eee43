"""Process-group set-up for torchrun, torch.distributed.launch and plain single-process runs,
plus the collectives the heads and methods share."""
from __future__ import annotations

import itertools
import os
import re
from datetime import timedelta
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

_LOCAL_RANK_FLAG = re.compile(r"^--local[-_]rank(?:=(.*))?$")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def remove_launcher_args(argv: Sequence[str]) -> Tuple[Optional[int], List[str]]:
    """Strip `--local-rank=N`, `--local_rank=N`, `--local_rank N` (torch.distributed.launch) from argv.

    Returns (the local rank given, or None; the remaining arguments in order).
    """
    local_rank, remaining, position = None, [], 0
    argv = list(argv)
    while position < len(argv):
        match = _LOCAL_RANK_FLAG.match(argv[position])
        if match is None:
            remaining.append(argv[position])
            position += 1
            continue
        value = match.group(1)
        if value is None:
            if position + 1 >= len(argv):
                raise ValueError(f"{argv[position]} needs a value")
            value, position = argv[position + 1], position + 1
        try:
            local_rank = int(value)
        except ValueError:
            raise ValueError(f"{argv[position]}: local rank must be an integer, got {value!r}") from None
        position += 1
    return local_rank, remaining


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_distributed(argv: Sequence[str] = ()) -> Tuple[int, int, int, torch.device]:
    """Join the process group set up by torchrun / torch.distributed.launch, or run alone.

    torchrun and launch export RANK and WORLD_SIZE (and MASTER_ADDR/PORT); launch also passes
    --local-rank=N, which wins over LOCAL_RANK. Without WORLD_SIZE > 1 this is a single process
    with no process group. NCCL on GPU, gloo on CPU. Use remove_launcher_args(argv) for the rest.
    """
    argument_local_rank, _ = remove_launcher_args(argv)
    world_size = _env_int("WORLD_SIZE") or 1
    rank = _env_int("RANK") or 0
    local_rank = argument_local_rank if argument_local_rank is not None else (_env_int("LOCAL_RANK") or 0)
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not is_distributed():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank,
                                world_size=world_size, timeout=timedelta(minutes=60))
    return rank, local_rank, world_size, device


def cleanup() -> None:
    """Leave the process group (no-op for a single process)."""
    if is_distributed():
        dist.destroy_process_group()


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of replicated (non-DDP) parameters over ranks; missing grads count as 0."""
    world = get_world_size()
    if world == 1:
        return
    trainable = [parameter for parameter in parameters if parameter.requires_grad]
    if not trainable:
        return
    for parameter in trainable:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    flat = torch.cat([parameter.grad.reshape(-1) for parameter in trainable])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world)
    offset = 0
    for parameter in trainable:
        count = parameter.grad.numel()
        parameter.grad.copy_(flat[offset:offset + count].view_as(parameter.grad))
        offset += count


@torch.no_grad()
def broadcast_parameters(module: torch.nn.Module, source: int = 0) -> None:
    """Copy rank `source`'s parameters and buffers into every rank's replica of `module`."""
    if get_world_size() == 1:
        return
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        dist.broadcast(tensor.data, src=source)


def gather_objects(obj) -> Optional[list]:
    """Every rank's picklable `obj` on rank 0 (in rank order); None on the other ranks."""
    if get_world_size() == 1:
        return [obj]
    gathered = [None] * get_world_size() if get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def broadcast_object(obj, source: int = 0):
    """Rank `source`'s picklable object on every rank."""
    if get_world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=source)
    return holder[0]


class RankFailure(ValueError):
    """Another rank's failure, raised on this rank with that failure's one line: every rank of a
    run stops on the same line (docs/conventions.md, "Errors")."""


def failure_line(error: BaseException) -> str:
    """The one line every rank reports for `error`: the message of bad input (ValueError, OSError,
    whose messages name the file / record), the type and message of anything else."""
    if isinstance(error, (ValueError, OSError)):
        return str(error)
    return f"{type(error).__name__}: {error}"


def check_on_rank0(check: Callable[[], object]) -> None:
    """Run `check` on rank 0 only (a file hash, a lock, a write); whatever it raises reaches every
    rank: rank 0 raises its own error, every other rank a RankFailure with the same one line
    (collective: call on every rank; it ends with a barrier after `check`)."""
    failure = None
    if get_rank() == 0:
        try:
            check()
        except Exception as error:   # any failure: a rank left waiting would die on a transport error
            failure = error
    line = broadcast_object(None if failure is None else failure_line(failure))
    # a broadcast lets its source run ahead: a rank that leaves the group (the run's end, or this
    # failure) while another still receives makes that one abort in the transport
    barrier()
    if failure is not None:
        raise failure
    if line is not None:
        raise RankFailure(line)


def agree_on_failure(own_line: Optional[str]) -> None:
    """Each rank passes its own failure line or None; when any rank failed, every rank raises
    RankFailure with the lowest failed rank's line (collective: call on every rank)."""
    if get_world_size() == 1:
        if own_line is not None:
            raise RankFailure(own_line)
        return
    lines = [None] * get_world_size()
    dist.all_gather_object(lines, own_line)
    failed = [rank for rank, line in enumerate(lines) if line is not None]
    if failed:
        barrier()   # no rank leaves while another still receives (see check_on_rank0)
        raise RankFailure(lines[failed[0]])


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients of every rank, keeps this rank's slice and
    multiplies it by `gradient_scale`."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, gradient_scale: float):
        # per-rank batches are equal by construction (the sampler drops the remainder), so no
        # size exchange here: it would cost a collective and a host sync on every step
        parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.rows, ctx.gradient_scale = get_rank(), tensor.shape[0], gradient_scale
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        mine = grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]
        return (mine * ctx.gradient_scale if ctx.gradient_scale != 1 else mine), None


def all_gather_with_grad(tensor: torch.Tensor, global_loss: bool = False) -> torch.Tensor:
    """Concatenate `tensor` over ranks (rank order) keeping the autograd graph; identity on 1 rank.

    Backward: each rank receives the sum over ranks of the gradients w.r.t. its own rows, i.e. the
    gradient of the sum of every rank's loss. That is right for a per-rank loss (a mean over the
    local batch, whose DDP average is the global mean). With `global_loss=True` the loss is the
    same global-batch loss on every rank (Partial FC): the sum is then the full gradient, and DDP's
    division of the backbone gradients by the world size W is undone by multiplying by W here, so
    W ranks x B images take exactly the step of one process x W*B (docs/methods.md, "Data parallel
    gradients").
    """
    world = get_world_size()
    if world == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor, float(world) if global_loss else 1.0)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no autograd); identity on 1 rank."""
    if get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor with the same shape on every rank, in rank order, without autograd."""
    if get_world_size() == 1:
        return tensor
    parts: List[torch.Tensor] = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)
