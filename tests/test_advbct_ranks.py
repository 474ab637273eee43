"""AdvBCT's point-to-set term over 2 gloo ranks whose batches hold DIFFERENT numbers of violating
samples (1 and 3): its value must be the mean over the 4 violators of the global batch, and each
rank's gradient, after DDP's average over ranks, that of one process holding the whole batch. A
mean per rank (averaged by DDP) gives (e0 + (e1 + e2 + e3) / 3) / 2 instead, and fails."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.training_fixtures import free_port

pytestmark = [pytest.mark.distributed]

WORLD = 2
# class 0's radius is far outside every sample (never violates), class 1's is 0 (always violates)
RADIUS = torch.tensor([10.0, 0.0])
VALID = torch.tensor([True, True])
LABELS = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0])   # rank 0: rows 0-3 (1 violator), rank 1: rows 4-7 (3)
ROWS = LABELS.shape[0] // WORLD


def problem():
    generator = torch.Generator().manual_seed(11)
    centers = torch.nn.functional.normalize(torch.randn(2, 5, generator=generator), dim=1)
    embeddings = torch.randn(len(LABELS), 5, generator=generator, dtype=torch.float32)
    return centers, embeddings


def _rank(rank: int, port: int, results) -> None:
    from BCT_methods.AdvBCT.train import point_to_set_loss
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        centers, embeddings = problem()
        mine = slice(rank * ROWS, (rank + 1) * ROWS)
        local = embeddings[mine].clone().requires_grad_(True)
        loss = point_to_set_loss(local, LABELS[mine], centers, RADIUS[LABELS[mine]], VALID)
        loss.backward()
        # DDP averages the backbone gradients J_r^T g_r over ranks: g_r / W is what this rank's rows
        # contribute, to be compared with the whole batch's gradient rows in one process
        results[rank] = (float(loss), (local.grad / WORLD).tolist())
    finally:
        dist.destroy_process_group()


def test_point_to_set_count_is_summed_over_ranks_with_unequal_violators():
    from BCT_methods.AdvBCT.train import point_to_set_loss
    centers, embeddings = problem()
    whole = embeddings.clone().requires_grad_(True)
    expected = point_to_set_loss(whole, LABELS, centers, RADIUS[LABELS], VALID)   # one process, whole batch
    expected.backward()
    excess = (torch.nn.functional.normalize(embeddings, dim=1) - centers[LABELS]).norm(dim=1)
    violators = LABELS == 1
    assert [int(violators[:ROWS].sum()), int(violators[ROWS:].sum())] == [1, 3]
    assert torch.allclose(expected, excess[violators].mean())
    per_rank_mean = (excess[:ROWS][violators[:ROWS]].mean() + excess[ROWS:][violators[ROWS:]].mean()) / 2
    assert abs(float(per_rank_mean) - float(expected)) > 1e-3   # the data tell the two apart

    results = mp.Manager().dict()
    mp.start_processes(_rank, args=(free_port(), results), nprocs=WORLD, start_method="spawn", join=True)
    for rank in range(WORLD):
        value, gradient = results[rank]
        assert value == pytest.approx(float(expected), rel=1e-6)
        assert torch.allclose(torch.tensor(gradient), whole.grad[rank * ROWS:(rank + 1) * ROWS], atol=1e-6)
