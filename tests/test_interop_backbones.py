"""insightface arcface_torch weights load both ways: state-dict keys, shapes and dtypes of every
backbone insightface also has (fixture written by insightface's own code), insightface's mbf
embeddings reproduced, the file forms insightface users have, and the ViT forward against a
functional reference written from the public description."""
import gzip
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from backbones import ACCEPTED_NETWORK_NAMES, NETWORK_NAMES, get_model, load_backbone

DATA = Path(__file__).parent / "data" / "insightface_backbones"


def insightface_keys():
    with gzip.open(DATA / "state_dict_keys.json.gz", "rt") as handle:
        return json.load(handle)


KEYS = insightface_keys()


@pytest.mark.parametrize("entry", sorted(KEYS))
def test_state_dict_keys_shapes_and_dtypes_equal_insightface(entry):
    name, num_features = entry.split("/")
    with torch.device("meta"):    # shapes only: even r200 and vit_l build instantly
        model = get_model(name, int(num_features))
    ours = [[key, list(value.shape), str(value.dtype).replace("torch.", "")]
            for key, value in model.state_dict().items()]
    assert ours == KEYS[entry]


def test_every_insightface_name_of_the_fixture_is_ours_and_vit_l_is_an_alias():
    assert {entry.split("/")[0] for entry in KEYS} <= set(NETWORK_NAMES)
    assert "vit_l" in ACCEPTED_NETWORK_NAMES and "vit_l" not in NETWORK_NAMES
    with torch.device("meta"):
        alias, insightface = get_model("vit_l", 512), get_model("vit_l_dp005_mask_005", 512)
    assert ([(k, v.shape) for k, v in alias.state_dict().items()]
            == [(k, v.shape) for k, v in insightface.state_dict().items()])
    # insightface's vit_l_dp005_mask_005 settings: stochastic depth 0.05, 5% token masking
    assert alias.mask_ratio == insightface.mask_ratio == 0.05
    assert alias.blocks[-1].drop_path.rate == pytest.approx(0.05)


@pytest.fixture(scope="module")
def insightface_mbf():
    return torch.load(DATA / "mbf_512.pt", map_location="cpu", weights_only=True)


def embed(model, images):
    with torch.no_grad():
        return model.eval()(images)


def test_mbf_reproduces_insightface_embeddings_and_exports_its_state_dict(insightface_mbf):
    model = get_model("mbf", 512)
    model.load_state_dict(insightface_mbf["state_dict"], strict=True)
    out = embed(model, insightface_mbf["input"])
    assert (out - insightface_mbf["output"]).abs().max() < 1e-5
    # the reverse: what we save is insightface's state dict, tensor for tensor
    exported = model.state_dict()
    assert list(exported) == list(insightface_mbf["state_dict"])
    assert all(torch.equal(exported[k], v) for k, v in insightface_mbf["state_dict"].items())
    # the comparison can fail: a block without its residual connection is 30x the tolerance
    # off (the fixture's random weights make embeddings depend weakly on the input)
    model.layers[3].layers[0].residual = False
    assert (embed(model, insightface_mbf["input"]) - insightface_mbf["output"]).abs().max() > 1e-4


def test_gradient_checkpointing_adds_no_parameter_names(insightface_mbf):
    model = get_model("mbf", 512, gradient_checkpointing=True)
    model.load_state_dict(insightface_mbf["state_dict"], strict=True)
    assert (embed(model, insightface_mbf["input"]) - insightface_mbf["output"]).abs().max() < 1e-5


def test_load_backbone_accepts_plain_ddp_and_full_insightface_checkpoint(tmp_path, insightface_mbf):
    state_dict = insightface_mbf["state_dict"]
    head = torch.randn(10, 512)
    forms = {
        "plain.pt": state_dict,
        "ddp.pt": {f"module.{k}": v for k, v in state_dict.items()},
        # what arcface_torch's train.py writes as checkpoint_gpu_<rank>.pt
        "checkpoint_gpu_0.pt": {
            "epoch": 3, "global_step": 1200,
            "state_dict_backbone": state_dict,
            "state_dict_softmax_fc": {"weight": head},
            "state_optimizer": torch.optim.SGD([torch.nn.Parameter(head)], lr=0.1).state_dict(),
            "state_lr_scheduler": {"base_lrs": [0.1], "last_epoch": 1200, "power": 2.0},
        },
        "ddp_checkpoint.pt": {"state_dict_backbone": {f"module.{k}": v for k, v in state_dict.items()}},
    }
    for file_name, content in forms.items():
        torch.save(content, tmp_path / file_name)
        out = embed(load_backbone(tmp_path / file_name, "mbf", 512), insightface_mbf["input"])
        assert (out - insightface_mbf["output"]).abs().max() < 1e-5, file_name

    torch.save({"state_dict_softmax_fc": {"weight": head}}, tmp_path / "no_backbone.pt")
    with pytest.raises(ValueError, match=r"no_backbone\.pt.*state_dict_backbone"):
        load_backbone(tmp_path / "no_backbone.pt", "mbf", 512)
    with pytest.raises(ValueError, match=r"plain\.pt.*'mbf_large'.*size mismatch"):
        load_backbone(tmp_path / "plain.pt", "mbf_large", 512)


def reference_vit(state, images, depth, num_heads, eps=1e-5, bn_eps=2e-5):
    """insightface's face ViT in eval mode, written with functional ops from its description:
    9x9 patch conv + position embedding; per block x + proj(softmax(q k^T / sqrt(d_head)) v)
    on LN(x), then x + fc2(relu6(fc1(LN(x)))); final LN; flatten; Linear-BN-Linear-BN."""
    def layer_norm(x, prefix):
        return F.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps)

    def batch_norm(x, prefix):
        return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                            state[f"{prefix}.weight"], state[f"{prefix}.bias"], False, 0.0, bn_eps)

    x = F.conv2d(images, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=9)
    x = x.flatten(2).transpose(1, 2) + state["pos_embed"]
    batch, tokens, dim = x.shape
    head_dim = dim // num_heads
    for i in range(depth):
        p = f"blocks.{i}"
        qkv = F.linear(layer_norm(x, f"{p}.norm1"), state[f"{p}.attn.qkv.weight"])
        q, k, v = qkv.reshape(batch, tokens, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) * head_dim ** -0.5, dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
        x = x + F.linear(attended, state[f"{p}.attn.proj.weight"], state[f"{p}.attn.proj.bias"])
        hidden = F.relu6(F.linear(layer_norm(x, f"{p}.norm2"), state[f"{p}.mlp.fc1.weight"],
                                  state[f"{p}.mlp.fc1.bias"]))
        x = x + F.linear(hidden, state[f"{p}.mlp.fc2.weight"], state[f"{p}.mlp.fc2.bias"])
    x = layer_norm(x, "norm").reshape(batch, tokens * dim)
    x = batch_norm(F.linear(x, state["feature.0.weight"]), "feature.1")
    return batch_norm(F.linear(x, state["feature.2.weight"]), "feature.3")


def test_vit_eval_forward_matches_functional_reference():
    torch.manual_seed(0)
    model = get_model("vit_t", 32, depth=2)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():   # non-trivial norms and statistics so eval mode is exercised
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                noise = torch.randn(value.shape, generator=generator) * 0.05
                value.copy_(value.abs() + 0.5 if "running_var" in key else value + noise)
    images = torch.rand(3, 3, 112, 112, generator=generator) * 2 - 1
    expected = reference_vit(model.state_dict(), images, depth=2, num_heads=8)
    # embeddings here are of size ~10: fp32 rounding of the two summation orders, relative
    assert torch.allclose(embed(model, images), expected, rtol=1e-5, atol=1e-5)
