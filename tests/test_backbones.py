"""Backbone shapes, parameter counts by formula, frozen embedding BN, gradient checkpointing,
load_backbone errors, and the FLOP counter on a hand-computed model."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backbones import NETWORK_NAMES, get_model, load_backbone
from tools.benchmark.flops import count_flops, count_macs, count_params


def iresnet_params(layers, d):
    """Parameter count of the insightface IResNet, written out block by block."""
    total = 27 * 64 + 2 * 64 + 64                        # stem conv, BN, PReLU
    in_channels = 64
    for depth, width in zip(layers, (64, 128, 256, 512)):
        for block in range(depth):
            c_in = in_channels if block == 0 else width
            total += 2 * c_in + 9 * c_in * width + 2 * width + width + 9 * width * width + 2 * width
            if block == 0:
                total += c_in * width + 2 * width         # 1x1 downsample conv + BN
        in_channels = width
    return total + 2 * 512 + (512 * 49 * d + d) + 2 * d   # bn2, fc, features BN1d


def vit_params(dim, depth, d, tokens=144, patch=9):
    """Parameter count of the insightface ViT (no qkv bias, ReLU6 MLP x4)."""
    block = 4 * dim + 3 * dim * dim + (dim * dim + dim) + (dim * 4 * dim + 4 * dim) + (4 * dim * dim + dim)
    stem = 3 * patch * patch * dim + dim + tokens * dim + dim   # patch conv, pos, mask token
    head = tokens * dim * dim + 2 * dim + dim * d + 2 * d
    return stem + depth * block + 2 * dim + head


@pytest.mark.parametrize("name,layers", [("r100", (3, 13, 30, 3)), ("r200", (6, 26, 60, 6)),
                                         ("r50", (3, 4, 14, 3))])
def test_large_iresnets_construct_with_formula_parameter_count(name, layers):
    with torch.device("meta"):
        model = get_model(name, num_features=512)
    assert count_params(model) == iresnet_params(layers, 512)


@pytest.mark.parametrize("name,dim,depth", [("vit_l", 768, 24), ("vit_b", 512, 24)])
def test_large_vits_construct_with_formula_parameter_count(name, dim, depth):
    with torch.device("meta"):
        model = get_model(name, num_features=256)
    assert count_params(model) == vit_params(dim, depth, 256)


@pytest.mark.parametrize("name", [n if n != "r200" else pytest.param(n, marks=pytest.mark.heavy)
                                  for n in NETWORK_NAMES])
def test_output_shape_of_every_network_in_train_and_eval_mode(name):
    with torch.device("meta"):    # shapes only, no arithmetic: every network, even r200 and vit_l
        model = get_model(name, num_features=96)
        images = torch.empty(2, 3, 112, 112)
    assert model.train()(images).shape == (2, 96)
    assert model.eval()(images).shape == (2, 96)


HEAVY = pytest.mark.heavy


@pytest.mark.parametrize("name,num_features", [
    ("r18", 128), ("mbf", 256), ("vit_t", 64), ("tiny", 512),
    pytest.param("r34", 512, marks=HEAVY), pytest.param("r50", 256, marks=HEAVY),
    pytest.param("vit_s", 512, marks=HEAVY), pytest.param("vit_b", 128, marks=HEAVY),
    pytest.param("r100", 512, marks=HEAVY), pytest.param("vit_l", 512, marks=HEAVY)])
def test_forward_computes_finite_embeddings(name, num_features):
    torch.manual_seed(0)
    # train mode: batch statistics keep an untrained deep network in range (eval mode on
    # fresh running statistics overflows r100, as in insightface)
    model = get_model(name, num_features=num_features).train()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, num_features) and torch.isfinite(out).all()
    assert (out[0] - out[1]).abs().max() > 0


def test_every_name_is_registered_and_unknown_names_fail():
    assert set(NETWORK_NAMES) == {"r18", "r34", "r50", "r100", "r200", "mbf", "mbf_large",
                                  "vit_t", "vit_s", "vit_b", "vit_l_dp005_mask_005", "tiny"}
    with pytest.raises(ValueError, match="r18"):
        get_model("r1000")


@pytest.mark.parametrize("name", ["r18", "tiny"])
def test_embedding_batchnorm_scale_is_frozen_at_one(name):
    torch.manual_seed(0)
    model = get_model(name, num_features=32)
    assert not model.features.weight.requires_grad
    if name == "tiny":   # one real SGD step with weight decay must leave it at 1
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5,
                                    weight_decay=0.1)
        model(torch.randn(4, 3, 112, 112)).pow(2).sum().backward()
        optimizer.step()
    assert torch.equal(model.features.weight.detach(), torch.ones(32))


def run_train_step(model, images, seed):
    torch.manual_seed(seed)
    images = images.clone().requires_grad_(True)
    out = model(images)
    (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), images.grad, grads


@pytest.mark.parametrize("name", ["tiny", "vit_t", pytest.param("mbf", marks=HEAVY),
                                  pytest.param("r18", marks=HEAVY)])
def test_gradient_checkpointing_gives_same_output_gradients_and_running_stats(name):
    torch.manual_seed(0)
    kw = {"depth": 2} if name == "vit_t" else {}
    plain = get_model(name, num_features=16, **kw)
    checkpointed = get_model(name, num_features=16, gradient_checkpointing=True, **kw)
    checkpointed.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 112, 112)
    out, image_grad, grads = run_train_step(plain, images, seed=7)
    out_ckpt, image_grad_ckpt, grads_ckpt = run_train_step(checkpointed, images, seed=7)
    assert torch.allclose(out, out_ckpt, atol=1e-5)
    assert torch.allclose(image_grad, image_grad_ckpt, atol=1e-6, rtol=1e-4)
    assert grads.keys() == grads_ckpt.keys()
    for key in grads:
        assert torch.allclose(grads[key], grads_ckpt[key], atol=1e-5, rtol=1e-4), key
    # BN running statistics updated exactly once, as without checkpointing
    for (key, value), value_ckpt in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        assert torch.allclose(value.float(), value_ckpt.float(), atol=1e-6), key


def test_load_backbone_round_trip_and_mismatch_messages(tmp_path):
    torch.manual_seed(0)
    model = get_model("tiny", num_features=64).eval()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    loaded = load_backbone(path, "tiny", 64).eval()
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))

    with pytest.raises(ValueError, match=r"model\.pt.*size mismatch.*fc\.weight \(64, 4704\) vs \(128, 4704\)"):
        load_backbone(path, "tiny", 128)
    with pytest.raises(ValueError, match=r"model\.pt.*'mbf'.*missing keys.*unexpected keys: stem\.0\.weight"):
        load_backbone(path, "mbf", 64)

    wrapped = tmp_path / "ddp.pt"   # keys saved from a DistributedDataParallel wrapper
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, wrapped)
    with torch.no_grad():
        assert torch.equal(load_backbone(wrapped, "tiny", 64).eval()(images), model(images))
    not_a_state_dict = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(ValueError, match=r"list\.pt.*state dict"):
        load_backbone(not_a_state_dict, "tiny", 64)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_backbone(tmp_path / "missing.pt", "tiny", 64)


class HandCountedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.depthwise = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.prelu = nn.PReLU(4)
        self.fc = nn.Linear(64, 12)
        self.norm = nn.LayerNorm(12)

    def forward(self, x):
        x = self.prelu(self.bn(self.depthwise(self.conv(x))))     # [1, 4, 4, 4]
        x = self.norm(self.fc(x.flatten(1))).reshape(1, 2, 2, 3)  # heads 2, tokens 2, dim 3
        return F.scaled_dot_product_attention(x, x, x)


def test_flop_counter_on_hand_computed_model():
    conv = 4 * 8 * 8 * 3 * 9          # out elements x in_channels x kernel
    depthwise = 4 * 4 * 4 * 1 * 9     # groups: one input channel per output
    bn = prelu = 4 * 4 * 4
    fc = 64 * 12
    layer_norm = 12
    attention = 2 * (2 * 2 * 3) * 2   # heads x (L x S x E) for q k^T and for weights @ v
    expected = conv + depthwise + bn + prelu + fc + layer_norm + attention
    model = HandCountedNet().train()
    assert count_macs(model, (1, 3, 8, 8)) == expected
    assert count_flops(model, (1, 3, 8, 8)) == 2 * expected
    assert model.training and F.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"
    assert count_params(model) == (3 * 4 * 9 + 4) + 4 * 9 + 8 + 4 + (64 * 12 + 12) + 24
    assert count_params(get_model("r18", 32), trainable_only=True) == iresnet_params((2, 2, 2, 2), 32) - 32


def test_r50_macs_match_published_figure():
    with torch.device("meta"):    # shapes only: counting needs no real arithmetic
        model = get_model("r50")
    # insightface lists r50 at 6.3 G (multiply-accumulates) for 112x112
    assert abs(count_macs(model) / 1e9 - 6.32) < 0.01
