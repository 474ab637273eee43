"""Every tool that writes files locks what it writes (issue 18, section 2): while another process
holds the lock of one of its output files, a second run is refused at once with one line naming
the holder, and writes nothing."""
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.training_fixtures import REPO_ROOT, write_config

HOLD = """
import sys, time
sys.path.insert(0, sys.argv[1])
from utils.common.output_lock import lock_files
locks = lock_files(sys.argv[2:])
print("held", flush=True)
time.sleep(120)
"""


def run_main(module: str, argv):
    """The tool's main(argv): its one-line refusal (raised, or printed with exit status 1)."""
    import importlib
    main = importlib.import_module(module).main
    try:
        status = main(argv)
    except ValueError as error:
        return str(error)
    assert status == 1, f"{module} was not refused"
    return None


def tool_cases(folder: Path):
    """(tool module, argv, the output file it locks first) for every writing tool."""
    from tools.ijbc_eval.ijbc_eval import parse_arguments, result_files, result_paths
    features = folder / "features"
    config = write_config(folder / "old.py", network="tiny", embedding_size=32, rec=None,
                          output=str(folder / "old_run"))
    ijbc_argv = ["-m", str(folder / "model.pt"), "-net", "tiny", "-d", str(folder / "ijbc"),
                 "-R", str(folder / "results")]
    ijbc_result = result_files(*result_paths(parse_arguments(ijbc_argv)), False)
    return [
        ("tools.get_feature.get_feature", [str(config), "--SD", "s_class70", "--out", str(features),
                                           "--data", str(folder / "rec")], features / "s_class70_feature.npy"),
        ("tools.get_feature.get_avg_feature", ["--SD", "s_class70", "--out", str(features)],
         features / "s_class70_avg_feature.npy"),
        ("tools.get_feature.get_class_meta", ["--SD", "s_class70", "--out", str(features)],
         features / "s_class70_class_meta.npz"),
        ("tools.denoising.denoise_credible", ["--T", "0.9", "--SD", "s_class70", "--out", str(features)],
         features / "s_class70_credible_0.9.npy"),
        ("tools.split_dataset.split_dataset_ms1mv3", ["--input", str(folder / "rec"), "--out", str(folder / "split"),
                                                      "--ratio", "0.3"], folder / "split" / "train_part_30_class"),
        ("tools.export_onnx", [str(folder / "model.pt"), "-net", "tiny", "-o", str(folder / "m.onnx")],
         folder / "m.onnx"),
        ("tools.ijbc_eval.ijbc_eval", ijbc_argv, ijbc_result[0]),
        ("tools.ijbc_eval.compat_report", ["--old", str(folder / "old.pt"), "--new", f"a={folder / 'new.pt'}",
                                           "-o", str(folder / "report")], folder / "report" / "compat_report.json"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_second_writer_of_a_tool_output_is_refused_naming_the_holder(tmp_path, capsys, case):
    module, argv, output = tool_cases(tmp_path)[case]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(REPO_ROOT), str(output)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
        started = time.time()
        line = run_main(module, argv)
        elapsed = time.time() - started
        if line is None:   # printed by the tool (ijbc_eval, compat_report)
            line = capsys.readouterr().err.strip()
            assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    finally:
        holder.kill()
        holder.wait()
    assert f"{output} is being written by another run (pid {holder.pid} on {socket.gethostname()}" in line, line
    assert elapsed < 10
    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == before   # nothing written


WRITE_AND_WAIT = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from utils.common.atomic_files import unique_temporary
descriptor, name = unique_temporary(sys.argv[2])
os.write(descriptor, bytes(1000))
print(name, flush=True)
time.sleep(120)
"""


def test_temporaries_of_a_killed_writer_are_removed_once_the_lock_is_held(tmp_path, capsys):
    """A writer killed with SIGKILL mid-write leaves its temporary: the next lock_files of that
    output (every writing tool takes it) removes it and says so; a live writer's temporary, another
    host's and any other file stay."""
    from utils.common.output_lock import lock_files
    output = tmp_path / "features" / "s_class70_feature.npy"
    inside = tmp_path / "split" / "train_part_30_class" / "train.rec"     # a file inside a locked folder
    for path in (output, inside):
        path.parent.mkdir(parents=True)
    writers = [subprocess.Popen([sys.executable, "-c", WRITE_AND_WAIT, str(REPO_ROOT), str(path)],
                                stdout=subprocess.PIPE, text=True) for path in (output, inside, output)]
    try:
        dead, dead_inside, live = (Path(writer.stdout.readline().strip()) for writer in writers)
        for writer in writers[:2]:
            writer.kill()
            writer.wait()
        foreign = output.with_name(f".{output.name}.{writers[0].pid}@another-host.abc123.tmp")
        foreign.write_bytes(b"x")
        unrelated = output.with_name(f".{output.name}.notes.tmp")
        unrelated.write_bytes(b"x")
        assert dead.is_file() and dead_inside.is_file() and live.is_file()
        capsys.readouterr()
        with lock_files([output, inside.parent], also=[inside]):
            printed = capsys.readouterr().out
        assert not dead.exists() and not dead_inside.exists()
        assert live.is_file() and foreign.is_file() and unrelated.is_file()
        assert printed.count("\n") == 1 and "removed 2 temporary file(s) (0.0 MB) left by a writer that is gone" in printed
        with lock_files([output]):
            assert capsys.readouterr().out == ""          # nothing left to remove, nothing said
    finally:
        writers[2].kill()
        writers[2].wait()
