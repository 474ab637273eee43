"""Run under `torchrun --nproc_per_node=2 tests/dist_partial_fc.py OUT_DIR` (gloo, CPU): one
Partial FC step on a fixed global batch, sharded over the ranks; rank 0 writes the loss, the
re-assembled gradients and logits, and every rank writes its weight shard, for
tests/test_partial_fc.py to compare against a single-process run."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from losses.margin import CombinedMarginLoss  # noqa: E402
from losses.partial_fc import PartialFC  # noqa: E402
from utils.training.distributed import all_gather_no_grad  # noqa: E402

GLOBAL_BATCH, EMBEDDING_SIZE, NUM_CLASSES = 8, 16, 11


def fixed_problem():
    """The global batch and full classifier both this script and the test use."""
    generator = torch.Generator().manual_seed(1234)
    embeddings = torch.randn(GLOBAL_BATCH, EMBEDDING_SIZE, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (GLOBAL_BATCH,), generator=generator)
    weight = torch.randn(NUM_CLASSES, EMBEDDING_SIZE, generator=generator) * 0.01
    return embeddings, labels, weight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path, help="folder for result.pt and shard_<rank>.pt")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    embeddings, labels, weight = fixed_problem()
    rows = GLOBAL_BATCH // world
    local_embeddings = embeddings[rank * rows:(rank + 1) * rows].clone().requires_grad_(True)
    local_labels = labels[rank * rows:(rank + 1) * rows]

    head = PartialFC(CombinedMarginLoss(64.0, 1.0, 0.5, 0.0), EMBEDDING_SIZE, NUM_CLASSES)
    head.load_full_state_dict({"weight": weight})
    loss = head(local_embeddings, local_labels)
    loss.backward()
    embedding_grad = all_gather_no_grad(local_embeddings.grad)
    weight_grad = head.gather_rows(head.weight.grad)
    margin_logits = head.gather_rows(head.logits(embeddings, labels).T).T
    plain_logits = head.gather_rows(head.logits(embeddings).T).T

    # an independently initialised head: its full state must re-assemble the per-rank shards
    torch.manual_seed(100 + rank)
    fresh = PartialFC(CombinedMarginLoss(), EMBEDDING_SIZE, NUM_CLASSES)
    full_state = fresh.state_dict()
    torch.save({"class_start": fresh.class_start, "weight": fresh.weight.detach().clone()},
               args.out_dir / f"shard_{rank}.pt")
    losses = all_gather_no_grad(loss.detach().reshape(1))
    if rank == 0:
        torch.save({"loss": loss.detach(), "losses": losses, "embedding_grad": embedding_grad,
                    "weight_grad": weight_grad, "margin_logits": margin_logits,
                    "plain_logits": plain_logits, "full_state": full_state,
                    "explicit_full_state": fresh.full_state_dict(), "world": world},
                   args.out_dir / "result.pt")
    else:
        fresh.full_state_dict()   # collective: every rank takes part
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
