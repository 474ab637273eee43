"""The reference repository's published command lines, pasted as written: each works, or stops
with one line that gives the command that works."""
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backbones import get_model
from tests.training_fixtures import REPO_ROOT, free_port, run, tiny_training_keys, write_config
from tools.denoising.denoise_credible import main as denoise_main
from tools.get_feature.get_avg_feature import main as avg_main
from tools.get_feature.get_feature import main as feature_main
from tools.ijbc_eval import ijbc_eval

REFERENCE_SPLIT = Path(__file__).parent / "data" / "reference_split" / "ms1m-like"


@pytest.fixture(scope="module")
def old_model(tmp_path_factory):
    """An old tiny model and its config pointing at a reference-split prefix (as the wiki's
    configs point at ./dataset/ms1m-retinaface-t1/train_part_30_class)."""
    root = tmp_path_factory.mktemp("wiki")
    shutil.copytree(REFERENCE_SPLIT, root / "ms1m-like")
    torch.manual_seed(0)
    (root / "work").mkdir()
    torch.save(get_model("tiny", num_features=8).state_dict(), root / "work" / "model.pt")
    config = write_config(root / "f8_tiny_softmax_class30.py", network="tiny", embedding_size=8,
                          rec=str(root / "ms1m-like" / "train_part_30_class"),
                          output=str(root / "work"))
    return root, config


def test_get_avg_feature_with_a_config_names_the_feature_command_that_works(old_model):
    root, config = old_model
    out = root / "OPclass"
    wiki_line = [str(config), "--SD", "f8_tiny_softmax_class70", "--out", str(out)]
    with pytest.raises(ValueError) as refused:
        avg_main(wiki_line)
    message = str(refused.value)
    assert "\n" not in message
    suggested = message.split("To get the features run: ")[1].split(" (then: ")[0]
    assert suggested == (f"python tools/get_feature/get_feature.py {config} --SD f8_tiny_softmax_class70 "
                         f"--out {out}")
    # the suggested command, then the prototype step it names, both work
    python, script, *arguments = shlex.split(suggested)
    assert (python, script) == ("python", "tools/get_feature/get_feature.py")
    feature_main([*arguments, "--num-workers", "0"])
    then = shlex.split(message.split(" (then: ")[1].rstrip(")"))
    assert then[1] == "tools/get_feature/get_avg_feature.py"
    prototypes = np.load(avg_main(then[2:]))
    assert prototypes.shape == (14, 8)       # the 14 identities of train_part_70_class


def test_get_avg_feature_wiki_line_exits_with_one_line(old_model):
    root, config = old_model
    result = run([sys.executable, "tools/get_feature/get_avg_feature.py", str(config),
                  "--SD", "f8_tiny_softmax_class70"], timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "python tools/get_feature/get_feature.py" in lines[0]


def test_denoise_credible_at_the_wiki_path_runs_the_denoising_tool(old_model):
    root, config = old_model
    out = root / "denoise"
    feature_main([str(config), "--SD", "f8_tiny_softmax_class70", "--out", str(out), "--num-workers", "0"])
    result = run([sys.executable, "tools/get_feature/denoise_credible.py", "--T", "0.9",
                  "--SD", "f8_tiny_softmax_class70", "--out", str(out)], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tools/denoising/denoise_credible.py" in result.stderr.splitlines()[0]
    wiki_mask = np.load(out / "f8_tiny_softmax_class70_credible_0.9.npy")
    (out / "again").mkdir()
    for name in ("feature.npy", "label.npy", "feature.npy.json", "label.npy.json"):
        shutil.copy(out / f"f8_tiny_softmax_class70_{name}", out / "again")
    denoise_main(["--T", "0.9", "--SD", "f8_tiny_softmax_class70", "--out", str(out / "again")])
    np.testing.assert_array_equal(np.load(out / "again" / "f8_tiny_softmax_class70_credible_0.9.npy"),
                                  wiki_mask)


def test_ijbc_eval_reference_spelling_with_equals_signs():
    arguments = ijbc_eval.parse_arguments(["-m=work_dirs/new/model.pt", "-net=r50",
                                           "-m_old=work_dirs/old/model.pt", "-old_net=r18", "-N"])
    assert (arguments.model, arguments.network, arguments.model_old, arguments.old_network,
            arguments.is_one_2_N) == (Path("work_dirs/new/model.pt"), "r50",
                                      Path("work_dirs/old/model.pt"), "r18", True)


def wiki_launch(processes: int, script: str, config) -> list:
    """The wiki's launcher line, flag for flag (the port is a free one: 22222 may be taken)."""
    return [sys.executable, "-m", "torch.distributed.launch", f"--nproc_per_node={processes}",
            "--nnodes=1", f"--master_port={free_port()}", script, str(config)]


@pytest.mark.distributed
def test_wiki_launcher_line_from_a_method_folder_reaches_the_training_cli():
    """`cd BCT_Methods/MixBCT/` then the launcher line with `train.py configs/...`: the real
    config resolves from that folder; without MS1M-V3 on disk the run stops with one line."""
    method_dir = REPO_ROOT / "BCT_Methods" / "MixBCT"
    config = "configs/OPclass_ms1mv3_r18_to_r50_MixBCT_softmax_to_arc_f128.py"
    assert (method_dir / config).is_file()
    result = run(wiki_launch(1, "train.py", config), timeout=180, cwd=method_dir)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "ms1m-retinaface-t1/train_part_70_class: neither a folder nor a prefix" in errors[0]
    # the launcher prints its own ChildFailedError traceback; none comes from our code
    frames = [line for line in result.stderr.splitlines() if line.lstrip().startswith("File ")]
    assert not [frame for frame in frames if str(REPO_ROOT) in frame], result.stderr[-2000:]


@pytest.mark.distributed
def test_wiki_launcher_line_trains_an_old_model_on_two_processes(tmp_path):
    output = tmp_path / "old"
    keys = tiny_training_keys("", output, method="softmax", num_epoch=1, synthetic=True,
                              num_image=16, num_classes=4, embedding_size=16)
    config = write_config(tmp_path / "f16_tiny_softmax_synthetic.py", **keys)
    result = run(wiki_launch(2, "train_old_softmax.py", config), timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    log = (output / "training.log").read_text()
    assert "world size 2" in log and "step 2/2" in log      # 16 images / (2 ranks x batch 4)
    assert set(torch.load(output / "model.pt", weights_only=True)) == set(get_model("tiny", 16).state_dict())
