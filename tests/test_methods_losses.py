"""Unit tests of the six compatibility methods' computations against formulas written out here."""
import copy
import math
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from easydict import EasyDict

from BCT_methods.AdvBCT.train import (AdvBCTMethod, ElasticBoundary, adversarial_loss,
                                      point_to_set_loss, reversal_coefficient)
from BCT_methods.BCT.train import BCTMethod, influence_loss
from BCT_methods.L2.train import L2Method, thresholded_l2_loss
from BCT_methods.MixBCT.train import MixBCTMethod, mix_old_features
from BCT_methods.NCCL.train import NCCLMethod, NeighbourQueue, entropy_credible, neighbourhood_consensus_loss
from BCT_methods.UniBCT.train import (UniBCTMethod, classes_of_rank, image_chunks,
                                      refine_class_prototypes)
from losses.compatibility import gradient_reverse
from tools.benchmark.bench_methods import write_random_artifacts
from utils.artifacts.manifests import ArtifactMismatch
from utils.data.datasets import SyntheticDataset
from utils.training.method import Progress, TrainEnv

REPO_ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def unit_rows(tensor):
    return tensor / torch.sqrt((tensor ** 2).sum(dim=1, keepdim=True))


def base_config(**changes):
    config = EasyDict(copy.deepcopy(dict(runpy.run_path(str(REPO_ROOT / "configs" / "base.py"))["config"])))
    config.update(changes)
    return config


def environment(num_classes=5, num_image=12):
    return TrainEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"),
                    num_classes=num_classes, num_image=num_image)


# ---- L2 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [0.0, 0.2])
def test_thresholded_l2_matches_formula_and_gradient(threshold):
    generator = torch.Generator().manual_seed(0)
    new = torch.randn(8, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    old = torch.randn(8, 6, generator=generator, dtype=torch.float64)
    # rows 0/1: make the new feature nearly equal to the old one, so the hinge is inactive there
    with torch.no_grad():
        new[:2] = old[:2] * 3 + 0.01
    got = thresholded_l2_loss(new, old, threshold)
    got.backward()
    got_grad = new.grad.clone()
    new.grad = None
    distance = torch.sqrt(((unit_rows(old) - unit_rows(new)) ** 2).sum(dim=1))
    hinge = torch.where(distance - threshold > 0, distance - threshold, torch.zeros_like(distance))
    expected = hinge.sum() / 8
    expected.backward()
    assert torch.allclose(got.double(), expected, atol=1e-6)
    assert torch.allclose(got_grad, new.grad, atol=1e-6)
    if threshold > 0:
        assert torch.all(got_grad[:2] == 0)


# ---- BCT / UniBCT ---------------------------------------------------------------------------
def test_influence_loss_matches_cross_entropy_formula():
    generator = torch.Generator().manual_seed(1)
    new = torch.randn(6, 4, generator=generator, requires_grad=True)
    prototypes = unit_rows(torch.randn(5, 4, generator=generator))
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    got = influence_loss(new, prototypes, labels, scale=3.0)
    got.backward()
    got_grad = new.grad.clone()
    new.grad = None
    logits = 3.0 * unit_rows(new) @ prototypes.t()
    per_sample = torch.log(torch.exp(logits).sum(dim=1)) - logits[torch.arange(6), labels]
    expected = per_sample.mean()
    expected.backward()
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got_grad, new.grad, atol=1e-5)


def naive_unibct_prototype(old, new, tau, lam):
    """Eq. (9)-(10) as the reference writes it: explicit inverse, then mean of rows."""
    edges = new @ new.t() / tau
    edges = edges.masked_fill(torch.eye(len(new), dtype=torch.bool), -1e9)
    edges = torch.softmax(edges, dim=0)
    affinity = (1 - lam) * torch.inverse(torch.eye(len(new), dtype=new.dtype) - lam * edges)
    return (affinity @ old).mean(dim=0)


@pytest.mark.parametrize("lam", [0.9, 0.5])
def test_unibct_refinement_matches_naive_per_image_loop(lam):
    generator = torch.Generator().manual_seed(2)
    sizes = {0: 1, 1: 4, 2: 4, 3: 7, 4: 2, 6: 4}   # class 5 has no image; equal sizes share a solve
    labels = torch.cat([torch.full((n,), c) for c, n in sizes.items()])
    labels = labels[torch.randperm(len(labels), generator=generator)]
    new = torch.randn(len(labels), 5, generator=generator, dtype=torch.float64) * 0.3
    old = torch.randn(len(labels), 5, generator=generator, dtype=torch.float64)
    class_ids, prototypes = refine_class_prototypes(old, new, labels, tau=0.05, lam=lam)
    assert class_ids.tolist() == sorted(sizes)
    expected = {}
    for image in range(len(labels)):   # the reference's loop: once per image, same class again and again
        members = torch.nonzero(labels == labels[image]).squeeze(1)
        expected[int(labels[image])] = naive_unibct_prototype(old[members], new[members], 0.05, lam)
    for row, class_id in enumerate(class_ids.tolist()):
        assert torch.allclose(prototypes[row], expected[class_id], atol=1e-9), class_id
    single = torch.nonzero(labels == 0).squeeze(1)
    assert torch.allclose(prototypes[0], old[single[0]])   # one image: A = 1


def test_class_partition_over_ranks_is_disjoint_and_complete():
    sizes = np.array([5, 0, 3, 9, 1, 1, 4, 2, 0, 7])
    owned = [classes_of_rank(sizes, rank, 3) for rank in range(3)]
    assert np.array_equal(np.sum(owned, axis=0), (sizes > 0).astype(int))
    loads = [sizes[mask].sum() for mask in owned]
    assert max(loads) - min(loads) <= sizes.max()
    chunks = image_chunks(np.array([0, 2, 3, 6, 9]), sizes, limit=8)
    assert np.array_equal(np.concatenate(chunks), [0, 2, 3, 6, 9])


def write_artifacts(folder, num_classes=5, num_image=12, dim=8):
    """A 12-image, 5-class dataset with random old features and every artifact (with manifests)."""
    dataset = SyntheticDataset(num_image=num_image, num_classes=num_classes)
    paths = write_random_artifacts(Path(folder), dataset, dim)
    return dataset, np.load(paths["old_features"]), dataset.labels, paths


class FeatureTrainer:
    """Stands in for the engine: extract_features(indices) returns fixed 'new' features."""

    def __init__(self, features):
        self.features, self.calls = features, 0

    def extract_features(self, indices, batch_size=None):
        self.calls += 1
        return self.features[indices]


def test_unibct_refines_once_restores_state_and_decays_lr(tmp_path):
    dataset, features, labels, paths = write_artifacts(tmp_path)
    config = base_config(embedding_size=8, old_features=paths["old_features"],
                         class_prototypes=paths["class_prototypes"], unibct_refine_epochs=(1, 2),
                         unibct_start_epoch=1, decay_epoch=[2, 3])
    method = UniBCTMethod(config, environment())
    method.validate_inputs(dataset)
    initial = method.class_prototypes.clone()
    new_features = torch.randn(len(labels), 8, generator=torch.Generator().manual_seed(3))
    trainer = FeatureTrainer(new_features)
    method.on_epoch_start(0, trainer)
    assert trainer.calls == 0 and torch.equal(method.class_prototypes, initial)
    method.on_epoch_start(1, trainer)
    assert trainer.calls == 1
    for c in range(5):
        members = np.nonzero(labels == c)[0]
        expected = naive_unibct_prototype(torch.from_numpy(features[members]).double(),
                                          new_features[members].double(), 0.05, 0.9)
        assert torch.allclose(method.class_prototypes[c].double(), expected, atol=1e-4)
    state = method.extra_state()
    resumed = UniBCTMethod(config, environment())
    resumed.validate_inputs(dataset)
    resumed.load_extra_state(state)
    resumed.on_epoch_start(1, trainer)   # the engine re-runs the hook after a resume: no re-refinement
    assert trainer.calls == 1
    assert torch.equal(resumed.class_prototypes, method.class_prototypes)
    progress = Progress(step=0, total_steps=10, epoch=0, num_epochs=4)
    assert resumed.influence_weight(progress) == 0.0
    assert resumed.influence_weight(Progress(step=5, total_steps=10, epoch=1, num_epochs=4)) == 1.0
    factor = resumed.lr_lambda(steps_per_epoch=10, total_steps=40)
    assert [factor(s) for s in (0, 19, 20, 29, 30, 39)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


# ---- NCCL -----------------------------------------------------------------------------------
def test_queue_is_a_fifo_with_wrap_around():
    queue = NeighbourQueue(size=5, embedding_size=2, num_local_classes=3, device="cpu")
    pointer, next_value = 0, 1.0
    slots = [(0.0, -1)] * 5   # (value, label) per slot, written one at a time below
    for count in (2, 3, 4, 7, 1):
        values = torch.arange(next_value, next_value + count)
        labels = torch.arange(count) + int(next_value)
        queue.push(values[:, None].repeat(1, 2), values[:, None].repeat(1, 3), labels)
        for value, label in zip(values.tolist(), labels.tolist()):   # one slot at a time, as the reference
            slots[pointer] = (value, label)
            pointer = (pointer + 1) % 5
        next_value += count
        assert queue.pointer == pointer
        assert queue.embeddings[:, 0].tolist() == [v for v, _ in slots]
        assert queue.logits[:, 2].float().tolist() == [v for v, _ in slots]
        assert queue.labels.tolist() == [label for _, label in slots]
    assert queue.logits.dtype == torch.float16
    restored = NeighbourQueue(size=5, embedding_size=2, num_local_classes=3, device="cpu")
    restored.load_state_dict(queue.state_dict())
    assert restored.pointer == queue.pointer and torch.equal(restored.labels, queue.labels)
    with pytest.raises(ValueError, match="shape"):
        NeighbourQueue(size=6, embedding_size=2, num_local_classes=3, device="cpu").load_state_dict(queue.state_dict())


def explicit_consensus_loss(similarities, positives, weights, temperature):
    scaled = similarities / temperature
    log_probabilities = scaled - torch.log(torch.exp(scaled).sum(dim=1, keepdim=True))
    per_anchor = (positives.double() * weights * log_probabilities).sum(1) / positives.double().sum(1)
    return -per_anchor.mean()


def test_consensus_loss_matches_formula_and_gradient():
    generator = torch.Generator().manual_seed(4)
    similarities = torch.randn(4, 9, generator=generator, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(4, 9, generator=generator, dtype=torch.float64)
    positives = torch.rand(4, 9, generator=generator) < 0.4
    positives[:, 0] = True
    got = neighbourhood_consensus_loss(similarities, positives, weights, temperature=0.5)
    got.backward()
    got_grad = similarities.grad.clone()
    similarities.grad = None
    expected = explicit_consensus_loss(similarities, positives, weights, 0.5)
    expected.backward()
    assert torch.allclose(got, expected, atol=1e-10)
    assert torch.allclose(got_grad, similarities.grad, atol=1e-10)


class CosineHead(torch.nn.Module):
    """A one-shard stand-in for Partial FC: forward -> CE of s*cos, logits -> s*cos."""

    def __init__(self, num_classes, dim, scale=2.0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(5)))
        self.scale, self.num_local = scale, num_classes

    def logits(self, embeddings, labels=None):
        return self.scale * unit_rows(embeddings) @ unit_rows(self.weight).t()

    def forward(self, embeddings, labels):
        return torch.nn.functional.cross_entropy(self.logits(embeddings), labels)


@pytest.mark.parametrize("logit_gradient", [False, True])
def test_nccl_loss_pushes_before_loss_and_matches_formula(tmp_path, logit_gradient):
    dataset, features, labels, paths = write_artifacts(tmp_path)
    config = base_config(embedding_size=8, old_features=paths["old_features"], nccl_queue_size=16,
                         batch_size=4, nccl_logit_term_gradient=logit_gradient, nccl_beta=0.5)
    method = NCCLMethod(config, environment())
    method.validate_inputs(dataset)
    head = CosineHead(5, 8)
    method.queue = NeighbourQueue(16, 8, head.num_local, "cpu")
    old_unit = unit_rows(torch.from_numpy(features))
    generator = torch.Generator().manual_seed(6)
    progress = Progress(step=0, total_steps=10, epoch=0, num_epochs=1)
    history = []
    for step, rows in enumerate((np.arange(0, 4), np.arange(4, 8), np.arange(8, 12))):
        new = torch.randn(4, 8, generator=generator, requires_grad=True)
        batch = {"label": torch.from_numpy(labels[rows]), "old_features": old_unit[rows]}
        total, terms = method.loss(new, batch, head, progress)
        history.extend(rows.tolist())
        # independent expectation: the queue holds every sample pushed so far, zeros/-1 elsewhere
        queue_e = torch.zeros(16, 8)
        queue_e[:len(history)] = old_unit[history]
        queue_y = torch.full((16,), -1)
        queue_y[:len(history)] = torch.from_numpy(labels[history])
        queue_z = torch.zeros(16, 5)
        queue_z[:len(history)] = head.logits(old_unit[history]).detach().half().float()
        positives = batch["label"][:, None] == queue_y[None, :]
        weights = 0.5 * (old_unit[rows] @ queue_e.t() + 1)
        l1 = explicit_consensus_loss(unit_rows(new) @ queue_e.t(), positives, weights, 1.0)
        l2 = explicit_consensus_loss(head.logits(new) @ queue_z.t(), positives, weights, 1.0)
        ce = head(new, batch["label"])
        assert torch.allclose(terms["embedding_term"], l1.float(), atol=1e-5)
        assert torch.allclose(terms["logit_term"], l2.float(), atol=1e-4)
        assert torch.allclose(total, (ce + l1 + 0.5 * l2).float(), atol=1e-4)
        assert torch.all(positives.sum(1) >= 1)   # pushed before the loss: itself a positive
        grad_total = torch.autograd.grad(total, new)[0]
        expected_total = ce + l1 + 0.5 * (l2 if logit_gradient else l2.detach())
        assert torch.allclose(grad_total, torch.autograd.grad(expected_total, new)[0], atol=1e-4)


def test_nccl_rejects_small_queue_and_softmax_head(tmp_path):
    dataset, _, _, paths = write_artifacts(tmp_path)
    with pytest.raises(ValueError, match="nccl_queue_size"):
        NCCLMethod(base_config(embedding_size=8, old_features=paths["old_features"], nccl_queue_size=8,
                               batch_size=16), environment()).validate_inputs(dataset)
    with pytest.raises(ValueError, match="partial_fc"):
        NCCLMethod(base_config(embedding_size=8, old_features=paths["old_features"], head="softmax"),
                   environment()).validate_inputs(dataset)


# ---- AdvBCT ---------------------------------------------------------------------------------
def test_gradient_reversal_sign_and_scale():
    tensor = torch.randn(3, 4, requires_grad=True)
    upstream = torch.randn(3, 4)
    output = gradient_reverse(tensor, 0.7)
    assert torch.equal(output, tensor)
    (output * upstream).sum().backward()
    assert torch.allclose(tensor.grad, -0.7 * upstream)
    assert reversal_coefficient(0.0) == 0.0
    assert reversal_coefficient(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)


def test_elastic_radius_and_point_to_set_loss_match_reference_loop():
    generator = torch.Generator().manual_seed(7)
    boundary = ElasticBoundary(4)
    centers = unit_rows(torch.randn(4, 6, generator=generator)) * 0.8
    radius = torch.tensor([0.2, 0.6, 0.3, 0.9])
    valid = torch.tensor([True, True, False, True])
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    new = torch.randn(6, 6, generator=generator, requires_grad=True)
    elastic = boundary(radius[labels], labels, 0.4)
    got = point_to_set_loss(new, labels, centers, elastic, valid)
    total, count = 0.0, 0
    for i, c in enumerate(labels.tolist()):   # the reference's per-sample loop
        b = abs(radius[c].item() - 0.4) * torch.sigmoid(boundary.weight[c])
        r = radius[c] + b if radius[c] < 0.4 else radius[c] - b
        excess = torch.sqrt(((unit_rows(new[i:i + 1])[0] - centers[c]) ** 2).sum()) - r
        if valid[c] and excess > 0:
            total, count = total + excess, count + 1
    expected = total / count
    assert count > 0 and torch.allclose(got, expected, atol=1e-6)
    got_grad = torch.autograd.grad(got, [new, boundary.weight])
    expected_grad = torch.autograd.grad(expected, [new, boundary.weight])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got_grad, expected_grad))
    none_violating = point_to_set_loss(new, labels, centers, torch.full((6,), 10.0), valid)
    assert none_violating.item() == 0.0


def test_adversarial_loss_value_and_reversed_gradient():
    torch.manual_seed(8)
    discriminator = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.LogSoftmax(dim=1))
    new = torch.randn(5, 4, requires_grad=True)
    old = torch.randn(5, 4)
    got = adversarial_loss(discriminator, new, old, coefficient=0.3)
    new_scores, old_scores = discriminator(unit_rows(new)), discriminator(unit_rows(old))
    expected = -new_scores[:, 0].mean() - old_scores[:, 1].mean()
    assert torch.allclose(got, expected, atol=1e-6)
    reversed_grad = torch.autograd.grad(got, new)[0]
    plain_grad = torch.autograd.grad(expected, new)[0]
    assert torch.allclose(reversed_grad, -0.3 * plain_grad, atol=1e-6)


def test_advbct_loss_weights_adversarial_term_by_epoch(tmp_path):
    dataset, features, labels, paths = write_artifacts(tmp_path)
    config = base_config(embedding_size=8, old_features=paths["old_features"], class_meta=paths["class_meta"])
    method = AdvBCTMethod(config, environment())
    method.validate_inputs(dataset)
    method.trainable_modules.eval()   # BatchNorm on running statistics: both calls comparable
    head = CosineHead(5, 8)
    new = torch.randn(6, 8)
    batch = {"label": torch.from_numpy(labels[:6]), "old_features": torch.from_numpy(features[:6])}
    _, first = method.loss(new, batch, head, Progress(step=0, total_steps=10, epoch=0, num_epochs=4))
    _, last = method.loss(new, batch, head, Progress(step=9, total_steps=10, epoch=3, num_epochs=4))
    raw = adversarial_loss(method.trainable_modules["discriminator"], new, batch["old_features"], 0.0)
    assert torch.allclose(first["adversarial"], 4.0 * (4 - 0 + 1) / 4 * raw, atol=1e-5)
    assert torch.allclose(last["adversarial"], 4.0 * (4 - 3 + 1) / 4 * raw, atol=1e-5)
    assert set(method.extra_modules()) == {"discriminator", "boundary"}
    assert method.extra_modules()["boundary"].weight.shape == (5,)


# ---- MixBCT ---------------------------------------------------------------------------------
@pytest.mark.parametrize("credible_count", [12, 3])
def test_mix_replaces_k_credible_rows_without_gradient(credible_count):
    generator = torch.Generator().manual_seed(9)
    new = torch.randn(16, 4, generator=generator, requires_grad=True)
    old = torch.randn(16, 4, generator=generator)
    credible = torch.zeros(16, dtype=torch.uint8)
    credible[torch.randperm(16, generator=generator)[:credible_count]] = 1
    mixed, replaced = mix_old_features(new, old, credible, mix_ratio=0.3, generator=generator)
    expected_count = min(int(16 * 0.3), credible_count)   # k = 4; fewer credible: all of them
    assert int(replaced.sum()) == expected_count
    assert torch.all(credible[replaced] == 1)
    assert torch.equal(mixed[replaced], old[replaced]) and torch.equal(mixed[~replaced], new[~replaced])
    mixed.sum().backward()
    assert torch.all(new.grad[replaced] == 0) and torch.all(new.grad[~replaced] == 1)
    draws = {tuple(mix_old_features(new, old, credible, 0.3, generator)[1].tolist()) for _ in range(20)}
    assert len(draws) > 1 or credible_count <= 4   # random choice among the credible rows


# ---- start-up validation --------------------------------------------------------------------
@pytest.mark.parametrize("method_class", [L2Method, MixBCTMethod, NCCLMethod, AdvBCTMethod, BCTMethod, UniBCTMethod])
def test_feature_size_mismatch_is_refused_before_training(tmp_path, method_class):
    dataset, _, _, paths = write_artifacts(tmp_path, dim=8)
    config = base_config(embedding_size=16, **paths)
    with pytest.raises(ArtifactMismatch, match="size 8 but the config expects 16"):
        method_class(config, environment()).validate_inputs(dataset)


def test_missing_artifact_key_and_declared_size_mismatch(tmp_path):
    dataset, _, _, paths = write_artifacts(tmp_path)
    with pytest.raises(ValueError, match="needs config key 'credible_mask'"):
        MixBCTMethod(base_config(embedding_size=8, old_features=paths["old_features"]),
                     environment()).validate_inputs(dataset)
    with pytest.raises(ValueError, match="old_embedding_size 128 != embedding_size 8"):
        L2Method(base_config(embedding_size=8, old_embedding_size=128, **paths),
                 environment()).validate_inputs(dataset)
    other = dict(paths, old_features=str(tmp_path / "absent.npy"))
    with pytest.raises(ArtifactMismatch, match="absent.npy does not exist"):
        L2Method(base_config(embedding_size=8, **other), environment()).validate_inputs(dataset)


def test_nccl_state_restores_queue_and_restarts_a_foreign_logit_shard(tmp_path):
    dataset, _, _, paths = write_artifacts(tmp_path)
    config = base_config(embedding_size=8, old_features=paths["old_features"], nccl_queue_size=16)
    saved = NCCLMethod(config, environment())
    saved.queue, saved.class_shard = NeighbourQueue(16, 8, 3, "cpu"), (0, 3)
    saved.queue.push(torch.ones(5, 8), torch.full((5, 3), 2.0), torch.arange(5))
    state = saved.extra_state()
    same = NCCLMethod(config, environment())
    same.queue, same.class_shard = NeighbourQueue(16, 8, 3, "cpu"), (0, 3)
    same.load_extra_state(state)
    assert same.queue.pointer == 5 and torch.equal(same.queue.logits, saved.queue.logits)
    other = NCCLMethod(config, environment())
    other.queue, other.class_shard = NeighbourQueue(16, 8, 3, "cpu"), (3, 3)
    with pytest.warns(UserWarning, match="restarts from zeros"):
        other.load_extra_state(state)
    assert torch.equal(other.queue.labels, saved.queue.labels) and other.queue.logits.abs().sum() == 0


def test_entropy_filter_marks_uncertain_samples_as_nobodys_positive(tmp_path):
    dataset, features, labels, paths = write_artifacts(tmp_path)
    old_unit = unit_rows(torch.from_numpy(features))
    prototypes = torch.from_numpy(np.load(paths["class_prototypes"]))
    distances = torch.sqrt(((old_unit[:, None, :] - prototypes[None]) ** 2).sum(-1))
    variance = ((distances - distances.mean(1, keepdim=True)) ** 2).sum(1, keepdim=True) / (distances.shape[1] - 1)
    weights = torch.exp(-distances / (variance + 1e-10))
    probabilities = weights / weights.sum(1, keepdim=True)
    entropy = -(probabilities * torch.log(probabilities + 1e-10)).sum(1)
    ordered = entropy.sort().values
    threshold = float(ordered[5] + ordered[6]) / 2   # half the samples pass, none on the boundary
    assert torch.equal(entropy_credible(old_unit, prototypes, threshold), entropy <= threshold)
    config = base_config(embedding_size=8, nccl_queue_size=16, batch_size=12, nccl_entropy_filter=threshold, **paths)
    method = NCCLMethod(config, environment())
    method.validate_inputs(dataset)
    method.queue = NeighbourQueue(16, 8, 5, "cpu")
    batch = {"label": torch.from_numpy(labels), "old_features": old_unit}
    method.loss(torch.randn(12, 8), batch, CosineHead(5, 8), Progress(0, 1, 0, 1))
    expected = torch.where(entropy <= threshold, batch["label"], torch.full_like(batch["label"], -1))
    assert torch.equal(method.queue.labels[:12], expected) and 0 < int((expected >= 0).sum()) < 12
