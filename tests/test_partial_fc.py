"""Partial FC against a plain ArcFace written out here, on 1 process and on 2 gloo ranks."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from losses.margin import CombinedMarginLoss
from losses.partial_fc import PartialFC, shard_range
from tests.dist_partial_fc import EMBEDDING_SIZE, NUM_CLASSES, fixed_problem
from tests.test_heads import naive_margin_logits
from tests.training_fixtures import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]


def plain_arcface(embeddings, weight, labels, s=64.0, m=0.5):
    """float64 ArcFace: normalised Linear, margin logits written out in test_heads, mean CE."""
    cosine = F.normalize(embeddings.double()) @ F.normalize(weight.double()).T
    logits = naive_margin_logits(cosine, labels, s, 1.0, m, 0.0)
    rows = torch.arange(len(labels))
    loss = (torch.logsumexp(logits, dim=1) - logits[rows, labels]).mean()
    return loss, logits


def plain_arcface_with_grads(embeddings, weight, labels):
    embeddings = embeddings.double().clone().requires_grad_(True)
    weight = weight.double().clone().requires_grad_(True)
    loss, logits = plain_arcface(embeddings, weight, labels)
    loss.backward()
    return loss.detach(), embeddings.grad, weight.grad, logits.detach()


def single_process_head(weight):
    head = PartialFC(CombinedMarginLoss(64.0, 1.0, 0.5, 0.0), weight.shape[1], weight.shape[0])
    head.load_full_state_dict({"weight": weight})
    return head


def test_shard_range_splits_remainder_over_first_ranks():
    assert [shard_range(10, r, 3) for r in range(3)] == [(0, 4), (4, 3), (7, 3)]
    assert shard_range(11, 1, 2) == (6, 5)


def test_single_rank_equals_plain_arcface_in_loss_and_gradients():
    embeddings, labels, weight = fixed_problem()
    head = single_process_head(weight)
    local_embeddings = embeddings.clone().requires_grad_(True)
    loss = head(local_embeddings, labels)
    loss.backward()
    expected_loss, expected_embedding_grad, expected_weight_grad, expected_logits = \
        plain_arcface_with_grads(embeddings, weight, labels)
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)
    assert torch.allclose(local_embeddings.grad.double(), expected_embedding_grad, rtol=1e-3, atol=1e-6)
    assert torch.allclose(head.weight.grad.double(), expected_weight_grad, rtol=1e-3, atol=1e-5)
    assert torch.allclose(head.logits(embeddings, labels).double(), expected_logits, atol=1e-3)
    plain = 64.0 * F.normalize(embeddings.double()) @ F.normalize(weight.double()).T
    assert torch.allclose(head.logits(embeddings).double(), plain, atol=1e-3)


def test_sampling_keeps_every_positive_and_matches_arcface_on_the_sample():
    torch.manual_seed(0)
    num_classes, dim = 20, 8
    head = PartialFC(CombinedMarginLoss(), dim, num_classes, sample_rate=0.25)
    assert head.num_sample == 5
    labels = torch.tensor([3, 17, 3, 9, 12, 9])
    torch.manual_seed(5)
    selected, remapped = head.sample_classes(head.shard_labels(labels))
    assert len(selected) == 5 and torch.equal(selected, selected.sort().values)
    assert {3, 9, 12, 17} <= set(selected.tolist())
    assert torch.equal(selected[remapped], labels)
    embeddings = torch.randn(6, dim)
    torch.manual_seed(5)                       # the forward draws the same negatives
    loss = head(embeddings, labels)
    expected, _ = plain_arcface(embeddings, head.weight.detach()[selected], remapped)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # more positives than the sample size: all positives, nothing else
    many = torch.arange(0, 14)
    selected, remapped = head.sample_classes(head.shard_labels(many))
    assert torch.equal(selected, many) and torch.equal(remapped, many)


def test_state_dict_holds_full_weight_and_rejects_other_sizes():
    torch.manual_seed(0)
    head = PartialFC(CombinedMarginLoss(), 6, 9)
    state = head.state_dict()
    assert list(state) == ["weight"] and torch.equal(state["weight"], head.weight.detach())
    other = PartialFC(CombinedMarginLoss(), 6, 9)
    other.load_state_dict(state)
    assert torch.equal(other.weight, head.weight)
    with pytest.raises(RuntimeError, match=r"\(9, 6\)"):
        other.load_state_dict({"weight": torch.zeros(10, 6)})
    with pytest.raises(ValueError, match=r"\[N, 6\]"):
        head(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 9\).*0\.\.9"):
        head(torch.randn(2, 6), torch.tensor([0, 9]))


@pytest.mark.distributed
def test_two_gloo_ranks_equal_single_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}",
               str(REPO_ROOT / "tests" / "dist_partial_fc.py"), str(tmp_path)]
    finished = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = torch.load(tmp_path / "result.pt", weights_only=True)
    assert result["world"] == 2

    embeddings, labels, weight = fixed_problem()
    expected_loss, expected_embedding_grad, expected_weight_grad, expected_logits = \
        plain_arcface_with_grads(embeddings, weight, labels)
    assert torch.allclose(result["losses"], result["loss"])      # same loss on both ranks
    assert result["loss"].item() == pytest.approx(expected_loss.item(), rel=1e-5)
    # each rank's rows carry W x the gradient of the global loss: DDP's mean over ranks undoes the W
    world = result["world"]
    assert torch.allclose(result["embedding_grad"].double(), world * expected_embedding_grad, rtol=1e-3, atol=1e-6)
    assert torch.allclose(result["weight_grad"].double(), expected_weight_grad, rtol=1e-3, atol=1e-5)
    assert torch.allclose(result["margin_logits"].double(), expected_logits, atol=1e-3)
    plain = 64.0 * F.normalize(embeddings.double()) @ F.normalize(weight.double()).T
    assert torch.allclose(result["plain_logits"].double(), plain, atol=1e-3)

    # full state from 2 ranks = the shards in class order, and it loads into 1 process
    shards = [torch.load(tmp_path / f"shard_{rank}.pt", weights_only=True) for rank in range(2)]
    assert [s["class_start"] for s in shards] == [0, 6]
    full_weight = torch.cat([s["weight"] for s in shards])
    assert full_weight.shape == (NUM_CLASSES, EMBEDDING_SIZE)
    assert torch.equal(result["full_state"]["weight"], full_weight)
    assert torch.equal(result["explicit_full_state"]["weight"], full_weight)
    single = PartialFC(CombinedMarginLoss(), EMBEDDING_SIZE, NUM_CLASSES)
    single.load_full_state_dict(result["full_state"])
    assert torch.equal(single.weight.detach(), full_weight)


def nonzero_backward(probabilities, shard_labels, grad_loss):
    """ShardedCrossEntropy's gradient as it was written with torch.nonzero (the expectation)."""
    grad = probabilities.clone()
    rows = torch.nonzero(shard_labels >= 0).squeeze(1)
    grad[rows, shard_labels[rows]] -= 1.0
    return grad.mul_(grad_loss / probabilities.shape[0])


def test_masked_backward_equals_the_nonzero_one_exactly():
    from losses.partial_fc import ShardedCrossEntropy
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(9, 7, generator=generator, dtype=torch.float32, requires_grad=True)
    shard_labels = torch.tensor([0, -1, 6, 3, -1, -1, 2, 6, 1])   # -1: target on another rank
    loss = ShardedCrossEntropy.apply(logits, shard_labels)
    loss.backward(torch.tensor(0.7))
    shifted = logits.detach() - logits.detach().max(dim=1, keepdim=True).values   # as the forward computes them
    probabilities = shifted.exp()
    probabilities.div_(probabilities.sum(dim=1, keepdim=True))
    assert torch.equal(logits.grad, nonzero_backward(probabilities, shard_labels, torch.tensor(0.7)))


def test_sampling_without_host_sync_picks_the_rows_of_the_unique_path():
    """Fewer labels than num_sample: the scatter path gives, draw for draw, the rows and labels of
    the torch.unique path written out here (other shards' labels included), for many batches."""
    torch.manual_seed(0)
    head = PartialFC(CombinedMarginLoss(), 8, 300, sample_rate=0.2)
    assert head.num_sample == 60
    for trial in range(200):
        generator = torch.Generator().manual_seed(trial)
        labels = torch.randint(-1, 300, (int(torch.randint(1, 60, (1,), generator=generator)),), generator=generator)
        torch.manual_seed(trial)
        selected, remapped = head.sample_classes(labels)
        torch.manual_seed(trial)
        scores = torch.rand(300)
        scores[torch.unique(labels[labels >= 0])] = 2.0
        expected = scores.topk(60).indices.sort().values
        assert torch.equal(selected, expected), trial
        assert torch.equal(torch.where(labels >= 0, selected[remapped.clamp_min(0)], labels), labels), trial
