"""End to end: ijbc_eval.py (self/cross x 1:1/1:N, -B, -P), the embedding cache, bad-input
errors and compat_report.py, on a tiny random protocol with tiny random backbones. Expected
values come from an independent pipeline written here (skimage alignment, separate forward
passes, loops over templates)."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from matplotlib.container import ErrorbarContainer
from sklearn.metrics import roc_curve as sklearn_roc_curve

from backbones import get_model, load_backbone
from tests.test_ijbc_metrics import reference_style_one_to_n
from tests.test_ijbc_pooling import naive_templates, skimage_similarity
from tools.ijbc_eval import compat_report, ijbc_eval
from tools.ijbc_eval.embed import EmbeddingOptions, inference_model, model_embeddings
from tools.ijbc_eval.evaluation import run_identification, run_verification
from tools.ijbc_eval.pooling import Variant
from tools.ijbc_eval.protocol import load_identification_protocol, load_verification_protocol
from tools.ijbc_eval.toy_protocol import write_toy_protocol

REPO = Path(__file__).resolve().parents[1]
DEFAULT = Variant.parse("N0D1F1")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ijb")
    truth = write_toy_protocol(root / "data", "IJBC", num_subjects=6, templates_per_subject=3,
                               images_per_template=2, image_size=48, seed=3)
    for seed, name, size in ((0, "new", 128), (1, "old", 128), (2, "indep", 128), (3, "small", 64)):
        torch.manual_seed(seed)
        model = get_model("tiny", size)
        # random BatchNorm statistics so that the untrained nets give spread-out embeddings
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.1, 0.1)
        torch.save(model.state_dict(), root / f"{name}.pt")
    return root, truth


def cli(root, *arguments):
    common = ["-d", str(root / "data"), "--workers", "0", "--device", "cpu", "-b", "16"]
    return ijbc_eval.main([*arguments, *common])


def independent_embeddings(model_path, root, num_features=128, pixel_scale=127.5):
    """f(img) and f(flip) with skimage's similarity fit and a forward pass per view, the network
    input (x - 127.5) / pixel_scale."""
    protocol = load_verification_protocol(root / "data", "IJBC")
    model = load_backbone(model_path, "tiny", num_features).eval()
    faces = []
    for name, points in zip(protocol.image_names, protocol.landmarks):
        image = cv2.imread(str(protocol.image_dir / name))
        transform = skimage_similarity(points.astype(np.float64))
        faces.append(cv2.cvtColor(cv2.warpAffine(image, transform, (112, 112), borderValue=0.0),
                                  cv2.COLOR_BGR2RGB))
    batch = (torch.tensor(np.stack(faces)).permute(0, 3, 1, 2).float() - 127.5) / pixel_scale
    with torch.no_grad():
        return model(batch).numpy(), model(batch.flip(3)).numpy(), protocol


def naive_pair_scores(first_templates, second_templates, protocol):
    return np.array([first_templates[a] @ second_templates[b] for a, b in protocol.pair_templates])


@pytest.fixture(scope="module")
def expected(workspace):
    root, _ = workspace
    result = {}
    for name in ("new", "old"):
        embeddings, flips, protocol = independent_embeddings(root / f"{name}.pt", root)
        result[name] = naive_templates(embeddings, flips, protocol.faceness, DEFAULT,
                                       protocol.image_templates, protocol.image_medias)
    result["protocol"] = protocol
    return result


def load_result(folder, stem):
    with np.load(folder / f"{stem}.npz") as saved:
        arrays = {key: saved[key] for key in saved.files}
    return arrays, json.loads((folder / f"{stem}.json").read_text())


def test_self_and_cross_one_to_one(workspace, expected):
    root, _ = workspace
    protocol = expected["protocol"]
    assert cli(root, "-m", str(root / "new.pt"), "-net", "tiny", "-R", str(root / "self")) == 0
    arrays, report = load_result(root / "self", "new_IJBC_11")
    np.testing.assert_allclose(arrays["scores"][0], naive_pair_scores(expected["new"], expected["new"], protocol),
                               atol=2e-4)
    assert arrays["label"].tolist() == protocol.pair_labels.tolist()
    assert report["settings"]["test"] == "self" and (root / "self" / "new_IJBC_11_roc.png").is_file()

    assert cli(root, "-m", str(root / "new.pt"), "-net", "tiny", "-m_old", str(root / "old.pt"),
               "-old_net", "tiny", "-R", str(root / "cross")) == 0
    arrays, report = load_result(root / "cross", "new_vs_old_IJBC_11")
    np.testing.assert_allclose(arrays["scores"][0], naive_pair_scores(expected["old"], expected["new"], protocol),
                               atol=2e-4)
    metrics = report["verification"]["new_vs_old_IJBC_11"]
    assert metrics["num_genuine"] == int(protocol.pair_labels.sum())
    assert 0.0 <= metrics["auc"] <= 1.0


def naive_identification(gallery_templates, probe_templates, root, truth):
    identification = load_identification_protocol(root / "data", "IJBC", truth["template_ids"])
    probes = identification.probes
    probe_features = np.stack([probe_templates[t] for t in probes.template_ids])
    results = {}
    for name, gallery in identification.galleries.items():
        gallery_features = np.stack([gallery_templates[t] for t in gallery.template_ids])
        results[name] = reference_style_one_to_n(probe_features @ gallery_features.T, probes.subject_ids,
                                                 gallery.subject_ids, [1e-2, 1.0])
    return results


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_one_to_n(workspace, expected, cross):
    root, truth = workspace
    arguments = ["-m", str(root / "new.pt"), "-net", "tiny", "-N", "-R", str(root / "one_to_n")]
    if cross:
        arguments += ["-m_old", str(root / "old.pt"), "-old_net", "tiny"]
    assert cli(root, *arguments) == 0
    stem = "new_vs_old_IJBC_1N" if cross else "new_IJBC_1N"
    arrays, report = load_result(root / "one_to_n", stem)
    result = report["identification"][stem]
    naive = naive_identification(expected["old" if cross else "new"], expected["new"], root, truth)
    for gallery, (top1, top5, tpir) in naive.items():
        assert result[gallery]["top_k"]["1"] == pytest.approx(top1)
        assert result[gallery]["top_k"]["5"] == pytest.approx(top5)
        grid = np.asarray(result[gallery]["fpir"])
        for fpir, value in zip([1e-2, 1.0], tpir):
            assert result[gallery]["tpir"][int(np.argmin(abs(grid - fpir)))] == pytest.approx(value)
    assert arrays["scores"].shape == (1, 2, 101)
    assert (root / "one_to_n" / f"{stem}_tpir.png").is_file()


def test_bunch_and_plot_only(workspace, expected):
    root, _ = workspace
    assert cli(root, "-m", str(root / "new.pt"), "-net", "tiny", "-B", "-E", "-R", str(root / "bunch")) == 0
    arrays, _ = load_result(root / "bunch", "new_IJBC_11")
    names = arrays["names"].tolist()
    assert len(names) == 8 and names[0] == "new_IJBC_11_N1D1F1"
    protocol = expected["protocol"]
    np.testing.assert_allclose(arrays["scores"][names.index("new_IJBC_11_N0D1F1")],
                               naive_pair_scores(expected["new"], expected["new"], protocol), atol=2e-4)
    variant = Variant.parse("N1D0F0")
    plain = naive_templates(arrays["embs"].astype(np.float64), arrays["embs_f"], protocol.faceness, variant,
                            protocol.image_templates, protocol.image_medias)
    np.testing.assert_allclose(arrays["scores"][names.index("new_IJBC_11_N1D0F0")],
                               naive_pair_scores(plain, plain, protocol), atol=2e-4)
    assert cli(root, "-m", str(root / "new.pt"), "-net", "tiny", "-N", "-R", str(root / "bunch")) == 0
    files = [str(root / "bunch" / "new_IJBC_11.npz"), str(root / "bunch" / "new_IJBC_1N.npz")]
    assert ijbc_eval.main(["-P", *files, "-R", str(root / "replot")]) == 0
    assert (root / "replot" / "replot_roc.png").is_file() and (root / "replot" / "replot_tpir.png").is_file()


def test_cache_reuse_and_key_mismatch(workspace, tmp_path, capsys):
    root, _ = workspace
    protocol = load_verification_protocol(root / "data", "IJBC")
    options = EmbeddingOptions(batch_size=16, workers=0, cache_dir=tmp_path / "cache")
    first = model_embeddings(root / "new.pt", "tiny", protocol, options)
    second = model_embeddings(root / "new.pt", "tiny", protocol, options)
    assert not first.from_cache and second.from_cache
    np.testing.assert_array_equal(first.embeddings, second.embeddings)
    # a different image list (one landmark moved) must not reuse the embeddings
    moved = dataclasses.replace(protocol, image_list_sha256="0" * 64)
    assert not model_embeddings(root / "new.pt", "tiny", moved, options).from_cache
    assert "built for other settings (image_list_sha256" in capsys.readouterr().out
    assert model_embeddings(root / "new.pt", "tiny", moved, options).from_cache
    forced = dataclasses.replace(options, force_reload=True)
    assert not model_embeddings(root / "new.pt", "tiny", moved, forced).from_cache
    assert len(list((tmp_path / "cache").iterdir())) == 1  # replaced in place, no temporary left


def test_reference_normalisation_switch(workspace, tmp_path):
    """--input-normalisation reference feeds (x - 127.5) / 128 (the reference script's input), is
    part of the cache key and has a cache file of its own beside the training normalisation's."""
    root, _ = workspace
    protocol = load_verification_protocol(root / "data", "IJBC")
    training = EmbeddingOptions(batch_size=16, workers=0, cache_dir=tmp_path / "cache")
    reference = dataclasses.replace(training, input_normalisation="reference")
    by_training = model_embeddings(root / "new.pt", "tiny", protocol, training)
    by_reference = model_embeddings(root / "new.pt", "tiny", protocol, reference)
    assert not by_reference.from_cache   # the training-normalised cache is not taken for it
    expected = {scale: independent_embeddings(root / "new.pt", root, pixel_scale=scale)[:2] for scale in (128.0, 127.5)}
    for result, scale in ((by_reference, 128.0), (by_training, 127.5)):
        np.testing.assert_allclose(result.embeddings, expected[scale][0], rtol=1e-3, atol=2e-4)
        np.testing.assert_allclose(result.flip_embeddings, expected[scale][1], rtol=1e-3, atol=2e-4)
    # the tolerance tells the two inputs apart
    assert not np.allclose(by_reference.embeddings, expected[127.5][0], rtol=1e-3, atol=2e-4)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert model_embeddings(root / "new.pt", "tiny", protocol, reference).from_cache
    assert model_embeddings(root / "new.pt", "tiny", protocol, training).from_cache
    assert cli(root, "-m", str(root / "new.pt"), "-net", "tiny", "--input-normalisation", "reference",
               "--cache-dir", str(tmp_path / "cache"), "-R", str(tmp_path / "result")) == 0
    _, report = load_result(tmp_path / "result", "new_IJBC_11")
    assert report["settings"]["input_normalisation"] == "(x - 127.5) / 128"


@pytest.mark.parametrize("network", ["tiny", "vit_t"])
def test_inference_model_gives_the_backbone_embeddings(network):
    torch.manual_seed(0)
    model = get_model(network, 64).eval()
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    images = torch.randn(3, 3, 112, 112)
    fast = inference_model(model)
    with torch.no_grad():
        expected = model(images)
        embeddings = fast(images.contiguous(memory_format=torch.channels_last))
    np.testing.assert_allclose(embeddings.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(value, state[name]) for name, value in model.state_dict().items())  # a copy
    def batchnorms(module):
        return sum(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in module.modules())
    if network == "tiny":  # 8 of its 11 BatchNorms follow a convolution or the final Linear
        assert (batchnorms(model), batchnorms(fast)) == (11, 3)
    else:  # the ViT's forward cannot be traced: used unfused
        assert batchnorms(fast) == batchnorms(model)


def test_self_test_equals_cross_test_with_the_same_model(workspace):
    root, truth = workspace
    protocol = load_verification_protocol(root / "data", "IJBC")
    identification = load_identification_protocol(root / "data", "IJBC", truth["template_ids"])
    options = EmbeddingOptions(batch_size=16, workers=0, cache_dir=root / "data" / ".eval_cache")
    new = model_embeddings(root / "new.pt", "tiny", protocol, options)
    twin = dataclasses.replace(new, model_sha256="twin", embeddings=new.embeddings.copy())
    self_metrics, self_scores = run_verification(protocol, new, None, [DEFAULT])
    cross_metrics, cross_scores = run_verification(protocol, new, twin, [DEFAULT])
    np.testing.assert_allclose(cross_scores["N0D1F1"], self_scores["N0D1F1"], atol=1e-6)
    assert cross_metrics["N0D1F1"]["tar_threshold"] == self_metrics["N0D1F1"]["tar_threshold"]
    self_one_to_n = run_identification(protocol, identification, new, None, [DEFAULT])["N0D1F1"]
    cross_one_to_n = run_identification(protocol, identification, new, twin, [DEFAULT])["N0D1F1"]
    assert cross_one_to_n["G1"]["top_k"] == self_one_to_n["G1"]["top_k"]
    np.testing.assert_allclose(cross_one_to_n["mean_tpir"], self_one_to_n["mean_tpir"])


def test_model_and_size_errors_are_one_line(workspace, capsys):
    root, _ = workspace
    assert cli(root, "-m", str(root / "new.pt"), "-net", "tiny", "--num-features", "64", "-F",
               "-R", str(root / "err")) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("ijbc_eval: error:") and "does not fit network 'tiny'" in error
    assert len(error.splitlines()) == 1
    assert cli(root, "-m", str(root / "new.pt"), "-net", "tiny", "-m_old", str(root / "small.pt"),
               "-old_net", "tiny", "-R", str(root / "err")) == 1
    assert "cross-test needs equal feature sizes" in capsys.readouterr().err


def test_reference_spelling_with_equals_signs(workspace):
    root, _ = workspace
    arguments = ijbc_eval.parse_arguments(["-m=NEW.pt", "-net=r50", "-m_old=OLD.pt", "-old_net=r18", "-N"])
    assert (arguments.model, arguments.network, arguments.model_old, arguments.old_network,
            arguments.is_one_2_N) == (Path("NEW.pt"), "r50", Path("OLD.pt"), "r18", True)
    results = {}
    for spelling, flags in (("equals", [f"-m={root / 'new.pt'}", "-net=tiny", f"-m_old={root / 'old.pt'}",
                                        "-old_net=tiny"]),
                            ("spaces", ["-m", str(root / "new.pt"), "-net", "tiny", "-m_old", str(root / "old.pt"),
                                        "-old_net", "tiny"])):
        assert cli(root, *flags, "-N", "-R", str(root / spelling)) == 0
        results[spelling] = load_result(root / spelling, "new_vs_old_IJBC_1N")[1]
    assert results["equals"]["settings"]["test"] == "cross"
    assert results["equals"]["identification"] == results["spaces"]["identification"]


@pytest.mark.heavy  # a fresh interpreter importing torch: ~5-15 s; main() is tested in-process above
def test_script_exits_non_zero_with_one_line(tmp_path):
    completed = subprocess.run([sys.executable, str(REPO / "tools/ijbc_eval/ijbc_eval.py"), "-m", "x.pt",
                                "-net", "tiny", "-d", str(tmp_path)], capture_output=True, text=True,
                               cwd=tmp_path)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [
        f"ijbc_eval: error: IJBC landmarks file not found: {tmp_path}/IJBC/meta/ijbc_name_5pts_score.txt"]


def test_compatibility_report(workspace, expected, capsys, monkeypatch):
    root, _ = workspace
    output = root / "compat"
    figures = []
    save_figure = compat_report.save_figure
    monkeypatch.setattr(compat_report, "save_figure", lambda figure, path: (figures.append(figure),
                                                                             save_figure(figure, path)))
    assert compat_report.main(["--old", f"{root / 'old.pt'}:tiny",
                               "--new", f"A={root / 'new.pt'}:tiny", "--new", f"B={root / 'indep.pt'}",
                               "--new-net", "tiny",
                               "--independent", str(root / "indep.pt"), "-d", str(root / "data"),
                               "-o", str(output), "--workers", "0", "--device", "cpu"]) == 0
    report = json.loads((output / "compat_report.json").read_text())
    rows = report["rows"]
    assert list(rows) == ["old/old", "A new/new", "A new/old", "B new/new", "B new/old",
                          "new* new/new", "new* new/old"]
    assert rows["B new/old"] == rows["new* new/old"]  # B is the independent model
    protocol = expected["protocol"]
    fpr, tpr, _ = sklearn_roc_curve(protocol.pair_labels,
                                    naive_pair_scores(expected["new"], expected["new"], protocol))
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    assert rows["A new/new"]["TAR@FAR=1e-4"] == pytest.approx(tpr[np.argmin(abs(fpr - 1e-4))])
    for metric, verdict in report["compatibility"]["A"].items():
        old, cross, independent = rows["old/old"][metric], rows["A new/old"][metric], rows["new* new/new"][metric]
        assert verdict["compatible"] == (cross > old)
        if independent > old:
            assert verdict["gain"] == pytest.approx((cross - old) / (independent - old))
        else:  # no update gain to share: G undefined
            assert verdict["gain"] is None
    assert (output / "compat_report.png").is_file() and (output / "compat_report.md").is_file()
    assert "| A new/old |" in capsys.readouterr().out
    # counts, from the toy protocol's ground truth
    _, truth = workspace
    counts = report["counts"]
    labels = protocol.pair_labels
    assert (counts["genuine_pairs"], counts["impostor_pairs"]) == (int(labels.sum()), int((labels == 0).sum()))
    subject_of = dict(zip(truth["template_ids"].tolist(), truth["template_subjects"].tolist()))
    probe_subjects = [subject_of[t] for t in truth["probes"].tolist()]
    assert counts["probes"] == len(probe_subjects)
    for name, templates in truth["galleries"].items():
        in_gallery = {subject_of[t] for t in templates.tolist()}
        nonmated = sum(subject not in in_gallery for subject in probe_subjects)
        assert counts["galleries"][name] == {"templates": len(templates), "nonmated_probes": nonmated,
                                             "mated_probes": len(probe_subjects) - nonmated}
    # the added columns, against sklearn and the reference-style loops
    assert rows["A new/new"]["TAR@FAR=1e-2"] == pytest.approx(tpr[np.argmin(abs(fpr - 1e-2))])
    naive = naive_identification(expected["new"], expected["new"], root, truth)
    assert rows["A new/new"]["1:N top-5"] == pytest.approx(np.mean([top5 for _, top5, _ in naive.values()]))
    assert rows["A new/new"]["1:N top-1"] == pytest.approx(np.mean([top1 for top1, _, _ in naive.values()]))
    # 12 genuine / 60 impostor pairs: no FAR <= 1e-2 is resolvable (0.6 false accepts); 6 non-mated
    # probes per gallery: neither is FPIR 1e-2
    assert report["resolvable"] == {metric: metric.startswith("1:N") for metric in compat_report.METRICS}
    markdown = (output / "compat_report.md").read_text()
    header = [cell.strip() for cell in markdown.splitlines()[4].strip("|").split("|")]
    cells = [cell.strip() for cell in next(line for line in markdown.splitlines()
                                           if line.startswith("| A new/old |")).strip("|").split("|")]
    marked = dict(zip(header, cells))
    for far in ("1e-5", "1e-4", "1e-3", "1e-2"):
        assert marked[f"TAR@FAR={far} %"] == f"{100 * rows['A new/old'][f'TAR@FAR={far}']:.4f}\u2020"
    assert marked["TPIR@FPIR=1e-2 %"].endswith("\u2021")
    assert marked["1:N top-1 %"] == f"{100 * rows['A new/old']['1:N top-1']:.4f}"
    assert "below 1 / 60 impostor pairs" in markdown and "non-mated probes: G1 6, G2 6)" in markdown
    assert "top-1 = 1 / gallery size (3 and 3) = 33.3333" in markdown
    # compat_report.png: every bar of the interval metrics carries its bootstrap interval as an
    # error bar spanning exactly [low, high]
    (figure,) = figures
    models = ["A", "B", "new*"]
    for metric in compat_report.INTERVAL_METRICS:
        (axis,) = [axis for axis in figure.axes if axis.get_title().split(" (")[0] == metric]
        drawn = []
        for container in axis.containers:
            if isinstance(container, ErrorbarContainer):
                for segment in container.lines[2][0].get_segments():
                    drawn.append((round(segment[0][1], 6), round(segment[1][1], 6)))
        wanted = [tuple(round(100 * value, 6) for value in report["bootstrap"]["intervals"][row][metric])
                  for test in compat_report.TESTS for row in
                  (["old/old"] * len(models) if test == "old/old" else [f"{m} {test}" for m in models])]
        assert sorted(drawn) == sorted(wanted), metric


def test_report_marks_only_unresolvable_cells():
    counts = {"genuine_pairs": 40, "impostor_pairs": 5000, "probes": 90,
              "galleries": {"G1": {"templates": 8, "mated_probes": 40, "nonmated_probes": 150},
                            "G2": {"templates": 10, "mated_probes": 50, "nonmated_probes": 200}}}
    values = {metric: 0.125 for metric in compat_report.METRICS}
    rows = {"old/old": values, "A new/new": values, "A new/old": values}
    criteria = {"A": compat_report.compatibility(rows, "A")}
    markdown = compat_report.report_markdown("title", rows, criteria, counts)
    lines = markdown.splitlines()
    header = [cell.strip() for cell in lines[4].strip("|").split("|")]
    cells = dict(zip(header, [cell.strip() for cell in lines[8].strip("|").split("|")]))
    assert cells["test"] == "A new/old"
    # 5000 impostors: 0.05 and 0.5 false accepts allowed at 1e-5 and 1e-4, 5 and 50 at 1e-3, 1e-2
    assert [cells[f"TAR@FAR={far} %"] for far in ("1e-5", "1e-4", "1e-3", "1e-2")] == [
        "12.5000\u2020", "12.5000\u2020", "12.5000", "12.5000"]
    assert cells["TPIR@FPIR=1e-2 %"] == "12.5000"  # 150 and 200 non-mated probes: 1.5 and 2 allowed
    assert "\u2021" not in markdown
    assert "TAR@FAR (1e-5: 0, 1e-4: 0, 1e-3: 5, 1e-2: 50)" in markdown
    assert "5000 impostor pairs = 2.00e-04" in markdown and "TAR@FAR=1e-5, TAR@FAR=1e-4;" in markdown
    verdict = next(line for line in lines if line.startswith("| A |"))
    assert verdict.count("\u2020") == 2


def test_an_undecodable_image_in_a_loader_worker_is_one_line(workspace, tmp_path, capsys):
    import shutil
    root, _ = workspace
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    protocol = load_verification_protocol(data, "IJBC")
    broken = protocol.image_dir / str(protocol.image_names[2])
    broken.write_bytes(b"not an image")
    assert ijbc_eval.main(["-m", str(root / "new.pt"), "-net", "tiny", "-d", str(data), "--workers", "1",
                           "--device", "cpu", "-b", "4", "-R", str(tmp_path / "result")]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    assert error == f"ijbc_eval: error: cannot decode image {broken}"


@pytest.fixture
def read_only_data(workspace, tmp_path, monkeypatch):
    """A copy of the toy data on a 'read-only file system' (every mkdir or file creation under it
    fails with EROFS, as for root on a read-only mount), and an empty user cache folder."""
    import errno
    import os
    import shutil
    root, _ = workspace
    data = tmp_path / "data"
    shutil.copytree(root / "data", data, ignore=shutil.ignore_patterns(".eval_cache"))
    real_open, real_mkdir = os.open, os.mkdir

    def refused(path):
        return str(os.path.abspath(path)).startswith(str(data) + os.sep)

    def guarded_open(path, flags, *rest, **keywords):
        if flags & os.O_CREAT and refused(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *rest, **keywords)

    def guarded_mkdir(path, *rest, **keywords):
        if refused(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *rest, **keywords)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))
    return root, data, tmp_path


def test_read_only_data_falls_back_to_the_user_cache_before_embedding(read_only_data, capsys):
    root, data, tmp_path = read_only_data
    arguments = ["-m", str(root / "new.pt"), "-net", "tiny", "-d", str(data), "--workers", "0", "--device", "cpu",
                 "-b", "16", "-R", str(tmp_path / "result")]
    assert ijbc_eval.main(arguments) == 0, capsys.readouterr().err
    output = capsys.readouterr().out
    notes = [line for line in output.splitlines() if line.startswith("embedding cache:")]
    assert len(notes) == 1 and f"{data / '.eval_cache'} cannot be written (read-only file system" in notes[0]
    cached = list((tmp_path / "user_cache").rglob("*.npz"))
    assert len(cached) == 1 and f"cached in {cached[0]}" in output
    assert not (data / ".eval_cache").exists()
    assert ijbc_eval.main(arguments) == 0
    assert f"from cache {cached[0]}" in capsys.readouterr().out   # the fallback is found again


def test_an_unwritable_cache_is_refused_before_embedding(read_only_data, capsys):
    root, data, tmp_path = read_only_data
    assert ijbc_eval.main(["-m", str(root / "new.pt"), "-net", "tiny", "-d", str(data), "--workers", "0",
                           "--cache-dir", str(data / "mine"), "-R", str(tmp_path / "result")]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == (f"ijbc_eval: error: --cache-dir {data / 'mine'} cannot be written "
                                    f"(read-only file system while creating {data / 'mine'}): choose a writable "
                                    f"--cache-dir")
    assert "embedding" not in captured.out
