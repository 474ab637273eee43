"""ONNX export (tools/export_onnx.py): the file runs in onnxruntime and gives PyTorch's
embeddings (r18, mbf, vit_t, tiny; insightface's mbf fixture), carries its network and size,
and ijbc_eval.py measures the .onnx with the same numbers as the .pt it came from."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from backbones import get_model
from backbones.onnx_export import OnnxBackbone
from tools import export_onnx
from tools.ijbc_eval import ijbc_eval
from tools.ijbc_eval.toy_protocol import write_toy_protocol
from utils.common.checksums import file_sha256

DATA = Path(__file__).parent / "data"


def calibrated(name, num_features, seed=0):
    """A random network whose BatchNorm statistics are those of random faces (train-mode passes,
    cumulative average), so eval-mode embeddings have a realistic scale (~1-10)."""
    torch.manual_seed(seed)
    model = get_model(name, num_features).train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    with torch.no_grad():
        model(torch.rand(4, 3, 112, 112) * 2 - 1)
    return model.eval()


def random_faces(count=8, seed=1):
    return torch.rand(count, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def assert_parity(reference, exported):
    assert (reference - exported).abs().max() < 1e-4
    assert F.cosine_similarity(reference.double(), exported.double(), dim=1).min() > 0.99999


@pytest.mark.parametrize("name,num_features", [("r18", 512), ("mbf", 128), ("vit_t", 512), ("tiny", 64)])
def test_export_runs_in_onnxruntime_with_pytorch_embeddings(tmp_path, name, num_features):
    model = calibrated(name, num_features)
    weights = tmp_path / "model.pt"
    torch.save(model.state_dict(), weights)
    output = export_onnx.main([str(weights), "-net", name])
    assert output == tmp_path / "model.onnx"           # insightface's default name beside it
    exported = OnnxBackbone(output)
    assert (exported.network, exported.num_features, exported.fixed_batch) == (name, num_features, None)
    assert exported.source_sha256 == file_sha256(weights)
    faces = random_faces()
    with torch.no_grad():
        reference = model(faces)
    assert 1.0 < reference.abs().max() < 100.0          # a realistic scale, so 1e-4 means something
    assert_parity(reference, exported(faces))


def test_fixed_batch_export_is_run_chunk_by_chunk(tmp_path):
    model = calibrated("tiny", 32)
    weights = tmp_path / "tiny.pt"
    torch.save({"state_dict_backbone": model.state_dict()}, weights)   # an insightface checkpoint
    output = export_onnx.main([str(weights), "-net", "tiny", "--static-batch", "2",
                               "-o", str(tmp_path / "out" / "t.onnx")])
    exported = OnnxBackbone(output)
    assert exported.fixed_batch == 2 and exported.num_features == 32
    faces = random_faces(3)   # two chunks, the last one padded
    with torch.no_grad():
        assert_parity(model(faces), exported(faces))


def test_batch_dimension_is_symbolic_by_default(tmp_path):
    import onnx
    torch.save(calibrated("tiny", 16).state_dict(), tmp_path / "tiny.pt")
    for flags, name in (([], "default.onnx"), (["--dynamic-batch"], "dynamic.onnx")):
        output = export_onnx.main([str(tmp_path / "tiny.pt"), "-net", "tiny", "-o", str(tmp_path / name), *flags])
        graph_input = onnx.load(str(output)).graph.input[0]
        assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"   # read from the file itself
        assert OnnxBackbone(output).fixed_batch is None
    for flags in (["--static-batch", "0"], ["--static-batch", "2", "--dynamic-batch"]):
        with pytest.raises(SystemExit) as exit_info:
            export_onnx.main([str(tmp_path / "tiny.pt"), "-net", "tiny", "-o", str(tmp_path / "x.onnx"), *flags])
        assert exit_info.value.code == 2
    assert not (tmp_path / "x.onnx").exists()


def test_metadata_size_that_contradicts_the_graph_is_refused(tmp_path):
    import onnx
    torch.save(calibrated("tiny", 16).state_dict(), tmp_path / "tiny.pt")
    proto = onnx.load(str(export_onnx.main([str(tmp_path / "tiny.pt"), "-net", "tiny"])))
    onnx.helper.set_model_props(proto, {"network": "tiny", "num_features": "64"})
    onnx.save(proto, str(tmp_path / "lying.onnx"))
    with pytest.raises(ValueError, match=r"lying\.onnx: metadata num_features=64 but the graph's output "
                                         r"embedding has 16 features"):
        OnnxBackbone(tmp_path / "lying.onnx")
    # the graph's true output is checked on every batch too (for a width onnxruntime cannot
    # infer, the metadata's size stands until then): a run returning another width is refused
    honest = OnnxBackbone(tmp_path / "tiny.onnx")
    session = honest.session
    honest.session = SimpleNamespace(run=lambda names, feeds: [session.run(names, feeds)[0][:, :8]])
    with pytest.raises(ValueError, match=r"tiny\.onnx: the graph returned embeddings of shape \[2, 8\] "
                                         r"for 2 images, expected \[2, 16\]"):
        honest(random_faces(2))


def test_insightface_mbf_exports_to_insightface_embeddings(tmp_path):
    fixture = torch.load(DATA / "insightface_backbones" / "mbf_512.pt", weights_only=True)
    torch.save(fixture["state_dict"], tmp_path / "mbf.pt")
    exported = OnnxBackbone(export_onnx.main([str(tmp_path / "mbf.pt"), "-net", "mbf"]))
    assert (exported(fixture["input"]) - fixture["output"]).abs().max() < 1e-4


def test_export_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    torch.save(get_model("tiny", 16).state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match=r"tiny\.pt does not fit network 'mbf'"):
        export_onnx.main([str(tmp_path / "tiny.pt"), "-net", "mbf"])
    with pytest.raises(ValueError, match="would overwrite"):
        export_onnx.main([str(tmp_path / "tiny.pt"), "-net", "tiny", "-o", str(tmp_path / "tiny.pt")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match=r"broken\.onnx: not a readable ONNX model"):
        OnnxBackbone(tmp_path / "broken.onnx")


@pytest.fixture(scope="module")
def exported_pair(tmp_path_factory):
    """A toy IJB-C protocol and two tiny models (new, old), each as .pt and as .onnx."""
    root = tmp_path_factory.mktemp("onnx_ijb")
    write_toy_protocol(root / "data", "IJBC", num_subjects=6, templates_per_subject=3,
                       images_per_template=2, image_size=48, seed=5)
    for seed, name in ((0, "new"), (1, "old")):
        torch.save(calibrated("tiny", 64, seed).state_dict(), root / f"{name}.pt")
        export_onnx.main([str(root / f"{name}.pt"), "-net", "tiny"])
    return root


def evaluate(root, folder, *arguments):
    common = ["-d", str(root / "data"), "--workers", "0", "--device", "cpu", "-b", "16",
              "--cache-dir", str(root / "cache"), "-R", str(root / folder)]
    assert ijbc_eval.main([*arguments, *common]) == 0
    (report,) = (root / folder).glob("*.json")
    return json.loads(report.read_text())


def leaves(tree, path=""):
    """(path, value) of every number or string in a JSON tree, dict keys in sorted order."""
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in leaves(tree[key], f"{path}/{key}")]
    if isinstance(tree, list):
        return [leaf for i, item in enumerate(tree) for leaf in leaves(item, f"{path}[{i}]")]
    return [(path, tree)]


def assert_same_metrics(pt_metrics, onnx_metrics):
    """Rates, counts, AUC and ranks identical; score thresholds equal to float32 rounding."""
    pt_leaves, onnx_leaves = leaves(list(pt_metrics.values())), leaves(list(onnx_metrics.values()))
    assert [path for path, _ in pt_leaves] == [path for path, _ in onnx_leaves]
    for (path, pt_value), (_, onnx_value) in zip(pt_leaves, onnx_leaves):
        if "threshold" in path:
            assert onnx_value == pytest.approx(pt_value, rel=1e-5, abs=1e-6), path
        else:
            assert onnx_value == pt_value, path


@pytest.mark.parametrize("one_to_n", [False, True], ids=["1:1", "1:N"])
def test_ijbc_eval_measures_the_onnx_file_as_the_pt(exported_pair, one_to_n):
    root = exported_pair
    extra = ["-N"] if one_to_n else []
    key = "identification" if one_to_n else "verification"
    # the wiki's spelling; the network of an .onnx comes from the file, not from -net
    self_pt = evaluate(root, f"self_pt{one_to_n}", f"-m={root / 'new.pt'}", "-net=tiny", *extra)
    self_onnx = evaluate(root, f"self_onnx{one_to_n}", f"-m={root / 'new.onnx'}", *extra)
    cross_pt = evaluate(root, f"cross_pt{one_to_n}", "-m", str(root / "new.pt"), "-net", "tiny",
                        "-m_old", str(root / "old.pt"), "-old_net", "tiny", *extra)
    cross_onnx = evaluate(root, f"cross_onnx{one_to_n}", "-m", str(root / "new.onnx"),
                          "-m_old", str(root / "old.onnx"), *extra)
    assert self_onnx["settings"]["new_model"]["network"] == "tiny"
    assert cross_onnx["settings"]["old_model"]["network"] == "tiny"
    assert cross_onnx["settings"]["test"] == "cross"
    for pt_report, onnx_report in ((self_pt, self_onnx), (cross_pt, cross_onnx)):
        assert_same_metrics(pt_report[key], onnx_report[key])
    # self and cross numbers differ, so the comparison above can tell the models apart
    assert leaves(list(self_pt[key].values())) != leaves(list(cross_pt[key].values()))
