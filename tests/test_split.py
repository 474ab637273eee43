"""tools/split_dataset: class and data split rules, byte-exact payloads, label-order errors."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tools.split_dataset.split_dataset_ms1mv3 import main as split_main
from utils.data.face_rec import FaceRecIndex, FaceRecWriter, read_property
from utils.data.recordio import IRHeader, MAGIC_BYTES, RecordIOWriter, pack, unpack

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "split_dataset" / "split_dataset_ms1mv3.py"
# per-identity image counts: n = 1 (both data parts), 2, 3, 5 (round(1.5) = 2),
# 15 (round(4.5) = 4), 25 (round(7.5) = 8), and a few more
IDENTITY_SIZES = [1, 2, 3, 5, 15, 25, 1, 4, 7, 10, 6]


def make_payload(label: int, number: int) -> bytes:
    rng = np.random.default_rng(1000 * label + number)
    body = rng.integers(0, 256, size=int(rng.integers(5, 60)), dtype=np.uint8).tobytes()
    # some payloads hold the RecordIO magic at an aligned offset, so they are framed in parts
    return (MAGIC_BYTES + body) if number % 3 == 0 else body


@pytest.fixture(scope="module")
def source_rec(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    payloads = []
    with FaceRecWriter(folder, image_size=(112, 96)) as writer:
        for label, size in enumerate(IDENTITY_SIZES):
            for number in range(size):
                payload = make_payload(label, number)
                writer.add(label, payload)
                payloads.append((label, payload))
    return folder, payloads


def read_subset(folder):
    index = FaceRecIndex(folder, labels_from="images")
    records = [unpack(index.reader.read_at(offset)) for offset in index.image_offsets.tolist()]
    return [(int(header.label), payload) for header, payload in records], index


def expected_subsets(payloads, ratio):
    """The split rules written out per identity, independently of the tool."""
    num_classes = len(IDENTITY_SIZES)
    first_classes = round(num_classes * ratio)
    expected = {"class_first": [], "class_second": [], "data_first": [], "data_second": []}
    by_label = {}
    for label, payload in payloads:
        by_label.setdefault(label, []).append(payload)
    for label in range(num_classes):
        images = by_label[label]
        for payload in images:
            if label < first_classes:
                expected["class_first"].append((label, payload))
            else:
                expected["class_second"].append((label - first_classes, payload))
        if len(images) == 1:
            expected["data_first"].append((label, images[0]))
            expected["data_second"].append((label, images[0]))
            continue
        keep = max(1, round(ratio * len(images)))
        expected["data_first"] += [(label, payload) for payload in images[:keep]]
        expected["data_second"] += [(label, payload) for payload in images[keep:]]
    return expected


def test_split_counts_labels_and_payloads(source_rec, tmp_path):
    folder, payloads = source_rec
    split_main(["--input", str(folder), "--out", str(tmp_path), "--ratio", "0.3"])
    expected = expected_subsets(payloads, 0.3)
    names = {"class_first": "train_part_30_class", "class_second": "train_part_70_class",
             "data_first": "train_part_30_data", "data_second": "train_part_70_data"}
    for part, name in names.items():
        found, index = read_subset(tmp_path / name)
        assert found == expected[part], name
        num_classes = max(label for label, _ in expected[part]) + 1
        assert read_property(tmp_path / name) == (num_classes, 112, 96)
        assert index.layout == "header"
        # identity records agree with the image labels
        np.testing.assert_array_equal(FaceRecIndex(tmp_path / name).labels, index.labels)
    # spot-check the rounding cases: n = 5 -> 2, n = 15 -> 4, n = 25 -> 8 images in data30
    data_first_labels = np.array([label for label, _ in expected["data_first"]])
    assert np.bincount(data_first_labels)[[3, 4, 5]].tolist() == [2, 4, 8]
    first_labels = [label for label, _ in read_subset(tmp_path / "train_part_30_data")[0]]
    assert np.bincount(first_labels)[[0, 3, 4, 5]].tolist() == [1, 2, 4, 8]


def test_split_other_ratio_names_and_refuses_overwrite(source_rec, tmp_path):
    folder, payloads = source_rec
    split_main(["--input", str(folder), "--out", str(tmp_path), "--ratio", "0.4"])
    expected = expected_subsets(payloads, 0.4)
    assert read_subset(tmp_path / "train_part_40_data")[0] == expected["data_first"]
    assert read_subset(tmp_path / "train_part_60_data")[0] == expected["data_second"]
    assert read_subset(tmp_path / "train_part_40_class")[0] == expected["class_first"]
    with pytest.raises(ValueError, match="already holds"):
        split_main(["--input", str(folder), "--out", str(tmp_path), "--ratio", "0.4"])
    with pytest.raises(ValueError, match="names both parts"):
        split_main(["--input", str(folder), "--out", str(tmp_path), "--ratio", "0.5"])


def write_sequential_rec(folder: Path, labels):
    folder.mkdir()
    with RecordIOWriter(folder / "train.rec", folder / "train.idx") as writer:
        for key, label in enumerate(labels):
            writer.write_idx(key, pack(IRHeader(0, float(label), key, 0), b"payload"))
    (folder / "property").write_text(f"{max(labels) + 1},112,112\n")


@pytest.mark.parametrize("labels, bad_key", [([0, 0, 1, 0, 1], 3), ([0, 0, 2, 2], 2), ([1, 1, 2], 0)])
def test_labels_out_of_order_name_the_record(tmp_path, labels, bad_key):
    write_sequential_rec(tmp_path / "bad", labels)
    with pytest.raises(ValueError, match=f"record key {bad_key} "):
        split_main(["--input", str(tmp_path / "bad"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "train_part_30_class" / "train.rec").exists()


def test_script_exits_with_one_line(tmp_path):
    write_sequential_rec(tmp_path / "bad", [0, 1, 0])
    result = subprocess.run([sys.executable, str(SCRIPT), "--input", str(tmp_path / "bad")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "record key 2" in result.stderr


SUBSET_FILES = [f"train_part_{part}/{name}" for part in ("30_class", "70_class", "30_data", "70_data")
                for name in ("train.rec", "train.idx", "property")]


def subset_checksums(root: Path) -> dict:
    import hashlib
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in SUBSET_FILES}


def test_a_split_that_died_between_subsets_is_finished_by_the_same_command(source_rec, tmp_path, monkeypatch):
    """Killed after two of the four subsets were published: the in-progress record stays, the same
    command writes the four subsets again (bytes equal to an uninterrupted split) and removes it;
    the same leftovers without the record, or with the record of another input, are refused."""
    folder, _ = source_rec
    split_main(["--input", str(folder), "--out", str(tmp_path / "whole")])
    expected = subset_checksums(tmp_path / "whole")
    marker = tmp_path / "out" / ".split_30_70.in_progress.json"

    real_close, closed = FaceRecWriter.close, []

    def close_then_die_at_the_third(writer):
        if len(closed) == 2:
            raise KeyboardInterrupt          # stands in for the kill: nothing after this point runs
        real_close(writer)
        closed.append(writer.out_dir.name)

    monkeypatch.setattr(FaceRecWriter, "close", close_then_die_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        split_main(["--input", str(folder), "--out", str(tmp_path / "out")])
    monkeypatch.setattr(FaceRecWriter, "close", real_close)
    assert closed == ["train_part_30_class", "train_part_70_class"] and marker.is_file()
    assert not (tmp_path / "out" / "train_part_30_data" / "train.rec").exists()

    # the record of another input (here: another ratio's files would differ; emulate by its mtime)
    recorded = marker.read_text()
    other = json.loads(recorded)
    other["rec"]["mtime_ns"] += 1
    marker.write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"\.split_30_70\.in_progress\.json: records an interrupted split of .* not of"):
        split_main(["--input", str(folder), "--out", str(tmp_path / "out")])
    marker.unlink()
    with pytest.raises(ValueError, match="train_part_30_class already holds a train.rec"):
        split_main(["--input", str(folder), "--out", str(tmp_path / "out")])
    marker.write_text(recorded)
    split_main(["--input", str(folder), "--out", str(tmp_path / "out")])
    assert subset_checksums(tmp_path / "out") == expected and not marker.exists()
    # a complete split leaves no record, so running it again is refused as before
    with pytest.raises(ValueError, match="already holds"):
        split_main(["--input", str(folder), "--out", str(tmp_path / "out")])


def test_kill_9_at_any_moment_then_the_same_command_gives_the_uninterrupted_subsets(tmp_path):
    """The tool as a process, killed with SIGKILL at spread-out moments of its run, then run again:
    the four subsets equal an uninterrupted split's, byte for byte, every round."""
    import os
    import signal
    import time
    source = tmp_path / "source"
    rng = np.random.default_rng(0)
    with FaceRecWriter(source) as writer:
        for label in range(400):
            for _ in range(int(rng.integers(1, 120))):
                writer.add(label, rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    argv = [sys.executable, str(SCRIPT), "--input", str(source)]
    start = time.perf_counter()
    whole = subprocess.run(argv + ["--out", str(tmp_path / "whole")], capture_output=True, text=True)
    wall = time.perf_counter() - start
    assert whole.returncode == 0, whole.stderr
    expected = subset_checksums(tmp_path / "whole")
    mid_split = temporaries = 0
    for round_number, fraction in enumerate((0.3, 0.5, 0.65, 0.8, 0.9, 0.97)):
        out = tmp_path / f"round{round_number}"
        process = subprocess.Popen(argv + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(fraction * wall)
        process.send_signal(signal.SIGKILL)
        process.wait()
        if not (out / ".split_30_70.in_progress.json").exists():
            # the kill came before the record was written, or after the split was complete
            assert process.returncode == 0 or not (out / "train_part_30_class").exists() or \
                subset_checksums(out) == expected, round_number
            if (out / "train_part_70_data" / "property").exists():
                continue
        else:
            mid_split += 1
        again = subprocess.run(argv + ["--out", str(out)], capture_output=True, text=True)
        assert again.returncode == 0, (round_number, again.stderr)
        assert subset_checksums(out) == expected, round_number
        assert not (out / ".split_30_70.in_progress.json").exists()
        left = [str(path.relative_to(out)) for path in out.rglob(".*")]
        assert not left, (round_number, left)      # no temporary, lock or record of the killed run stays
        temporaries += again.stdout.count("left by a writer that is gone")
    assert mid_split >= 2, f"only {mid_split} of 6 kills landed while the split was writing"
    assert temporaries >= 2                         # and the re-runs said they removed its temporaries
