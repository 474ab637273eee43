"""Margin logits, softmax head and build_head against formulas written out here."""
import math

import pytest
import torch
from easydict import EasyDict

from configs.base import config as base_config
from losses import PartialFC, SoftmaxHead, build_head
from losses.margin import CombinedMarginLoss
from utils.training.method import TrainEnv


def naive_margin_logits(cosine, labels, s, m1, m2, m3):
    """float64 reference: theta = arccos(cos), target cos(m1*theta + m2) - m3, the ArcFace
    fallback cos - m2*sin(pi - m2) where theta + m2 >= pi (m1 = 1), everything times s."""
    cosine = cosine.double()
    out = cosine.clone()
    rows = torch.nonzero(labels >= 0).squeeze(1)
    cols = labels[rows]
    target = cosine[rows, cols]
    theta = torch.arccos(target)
    margin = torch.cos(m1 * theta + m2)
    if m1 == 1.0 and m2 > 0:
        margin = torch.where(theta + m2 >= math.pi, target - m2 * math.sin(math.pi - m2), margin)
    out = out.index_put((rows, cols), margin - m3)
    return out * s


def values_and_grad(fn, cosine, upstream):
    cosine = cosine.clone().requires_grad_(True)
    logits = fn(cosine)
    (logits * upstream).sum().backward()
    return logits.detach().double(), cosine.grad.double()


@pytest.mark.parametrize("m1,m2,m3", [(1.0, 0.5, 0.0), (1.0, 0.0, 0.35), (1.35, 0.2, 0.1)])
def test_margin_values_and_gradients_match_naive_arccos(m1, m2, m3):
    generator = torch.Generator().manual_seed(0)
    cosine = torch.rand(12, 7, generator=generator, dtype=torch.float64) * 1.9 - 0.95
    labels = torch.randint(0, 7, (12,), generator=generator)
    labels[[2, 9]] = -1                       # targets that live on another shard
    cosine[0, labels[0]] = -0.93              # theta + 0.5 > pi: fallback region
    upstream = torch.randn(12, 7, generator=generator, dtype=torch.float64)
    margin = CombinedMarginLoss(64.0, m1, m2, m3)
    ours, our_grad = values_and_grad(lambda c: margin(c.float(), labels), cosine.float(), upstream.float())
    expected, expected_grad = values_and_grad(
        lambda c: naive_margin_logits(c, labels, 64.0, m1, m2, m3), cosine, upstream)
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-3)
    assert torch.allclose(our_grad, expected_grad, rtol=1e-4, atol=2e-3)


def test_arcface_fallback_region_is_linear_with_unit_slope():
    m = 0.5
    margin = CombinedMarginLoss(s=2.0, m1=1.0, m2=m, m3=0.0)
    threshold = math.cos(math.pi - m)          # -0.8776: theta = pi - m
    cosine = torch.tensor([[threshold - 0.05, 0.3], [threshold + 0.05, 0.1]], requires_grad=True)
    labels = torch.tensor([0, 0])
    logits = margin(cosine, labels)
    logits[:, 0].sum().backward()
    # below the threshold: cos - sin(pi - m) * m, slope 1 (times s)
    assert logits[0, 0].item() == pytest.approx(2.0 * (threshold - 0.05 - math.sin(math.pi - m) * m), abs=1e-6)
    assert cosine.grad[0, 0].item() == pytest.approx(2.0, abs=1e-6)
    # above it: cos(theta + m) with slope sin(theta + m) / sin(theta)
    theta = math.acos(threshold + 0.05)
    assert logits[1, 0].item() == pytest.approx(2.0 * math.cos(theta + m), abs=1e-5)
    assert cosine.grad[1, 0].item() == pytest.approx(2.0 * math.sin(theta + m) / math.sin(theta), rel=1e-4)
    # non-target logits are only scaled
    assert logits[0, 1].item() == pytest.approx(0.6, abs=1e-6)


def test_arcface_gradient_stays_finite_at_cosine_one():
    margin = CombinedMarginLoss(64.0, 1.0, 0.5, 0.0)
    cosine = torch.tensor([[1.0, 0.2]], requires_grad=True)
    logits = margin(cosine, torch.tensor([0]))
    logits.sum().backward()
    assert logits[0, 0].item() == pytest.approx(64.0 * math.cos(0.5), abs=1e-3)
    assert torch.isfinite(cosine.grad).all()


def test_interclass_filtering_zeroes_close_negatives_only():
    margin = CombinedMarginLoss(1.0, 1.0, 0.0, 0.0, interclass_filtering_threshold=0.5)
    cosine = torch.tensor([[0.9, 0.7, 0.2], [0.6, 0.1, 0.8]])
    labels = torch.tensor([0, -1])
    expected = torch.tensor([[0.9, 0.0, 0.2], [0.0, 0.1, 0.0]])
    assert torch.allclose(margin(cosine, labels), expected)


def test_margin_rejects_bad_input():
    with pytest.raises(ValueError, match="m2"):
        CombinedMarginLoss(64.0, 1.0, 4.0, 0.0)
    margin = CombinedMarginLoss()
    with pytest.raises(ValueError, match="out of range"):
        margin(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="labels"):
        margin(torch.zeros(2, 3), torch.tensor([0, 1, 2]))


def test_softmax_head_is_linear_with_bias_and_cross_entropy():
    torch.manual_seed(0)
    head = SoftmaxHead(embedding_size=6, num_classes=4)
    embeddings = torch.randn(5, 6, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1, 1, 2])
    weight = head.cls_fc.weight.detach().double()
    bias = head.cls_fc.bias.detach().double()
    logits = embeddings @ weight.T + bias
    expected = (torch.logsumexp(logits, dim=1) - logits[torch.arange(5), labels]).mean()
    loss = head(embeddings.float(), labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(head.logits(embeddings.float()).double(), logits, atol=1e-5)
    assert set(head.state_dict()) == {"cls_fc.weight", "cls_fc.bias"}
    with pytest.raises(ValueError, match=r"\[N, 6\]"):
        head(torch.randn(5, 7), labels)


def make_config(**overrides):
    cfg = EasyDict(dict(base_config))
    cfg.update(overrides)
    return cfg


def make_env(num_classes):
    return TrainEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"),
                    num_classes=num_classes, num_image=100)


def test_build_head_follows_config():
    cfg = make_config(head="partial_fc", embedding_size=32, margin_list=(1.0, 0.4, 0.1), scale=30.0,
                      sample_rate=0.5)
    head = build_head(cfg, make_env(10))
    assert isinstance(head, PartialFC)
    assert (head.weight.shape, head.sample_rate) == ((10, 32), 0.5)
    assert (head.margin_loss.s, head.margin_loss.m1, head.margin_loss.m2, head.margin_loss.m3) == (30.0, 1.0, 0.4, 0.1)
    softmax = build_head(make_config(head="softmax", embedding_size=16), make_env(7))
    assert isinstance(softmax, SoftmaxHead) and softmax.cls_fc.weight.shape == (7, 16)
    with pytest.raises(ValueError, match="head"):
        build_head(make_config(head="arcface_fc"), make_env(7))


def nonzero_margin(margin, cosine, labels):
    """The margin logits as they were written with torch.nonzero (the expectation)."""
    cosine = cosine.float()
    rows = torch.nonzero(labels >= 0).squeeze(1)
    cols = labels[rows].long()
    if margin.interclass_filtering_threshold > 0:
        with torch.no_grad():
            suspicious = cosine > margin.interclass_filtering_threshold
            suspicious[rows, cols] = False
        cosine = cosine.masked_fill(suspicious, 0.0)
    return cosine.index_put((rows, cols), margin.target_logit(cosine[rows, cols])) * margin.s


@pytest.mark.parametrize("threshold", [0.0, 0.2])
def test_masked_margin_equals_the_nonzero_one_exactly(threshold):
    margin = CombinedMarginLoss(64.0, 1.0, 0.5, 0.0, interclass_filtering_threshold=threshold)
    base = torch.rand(8, 5, generator=torch.Generator().manual_seed(1)) * 2 - 1
    labels = torch.tensor([4, -1, 0, 2, -1, 1, 4, 3])
    results = []
    for function in (margin, lambda c, l: nonzero_margin(margin, c, l)):
        cosine = base.clone().requires_grad_(True)
        logits = function(cosine, labels)
        (logits * torch.arange(40.0).view(8, 5)).sum().backward()
        results.append((logits.detach(), cosine.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
