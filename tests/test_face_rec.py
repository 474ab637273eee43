"""utils/data/face_rec.py: insightface layouts, read against MXNet/RecBuilder fixtures, written back."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from utils.data.face_rec import FaceRecIndex, FaceRecWriter, read_property
from utils.data.recordio import IRHeader, RecordIOError, RecordIOReader, RecordIOWriter, decode_rgb, pack, unpack

FIXTURES = Path(__file__).parent / "data" / "mxnet_recordio"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def test_read_property_first_line_only(tmp_path):
    (tmp_path / "property").write_text("85742,112,96\n5822653\n")
    assert read_property(tmp_path) == (85742, 112, 96)
    assert read_property(FIXTURES / "property") == (6, 112, 112)
    (tmp_path / "property").write_text("6;112;112\n")
    with pytest.raises(ValueError, match=r"property line 1: expected 'num_classes,height,width'"):
        read_property(tmp_path)
    with pytest.raises(ValueError, match="property file not found"):
        read_property(tmp_path / "missing")


@pytest.mark.parametrize("labels_from", ["auto", "images", "identities"])
def test_header_layout_matches_insightface_view(labels_from):
    view = EXPECTED["train"]["insightface_view"]
    index = FaceRecIndex(FIXTURES, labels_from=labels_from)
    assert index.layout == "header"
    assert list(index.header_label) == view["header0"]
    assert index.image_keys.tolist() == view["imgidx"]
    assert index.labels.tolist() == view["labels"] and index.labels.dtype == np.int64
    assert index.num_classes == view["num_classes"]
    offsets = {record["key"]: record["offset"] for record in EXPECTED["train"]["records"]}
    assert index.image_offsets.tolist() == [offsets[key] for key in view["imgidx"]]
    first_keys = [view["identity_records"][str(key)][0] for key in range(*view["header0"])]
    end_keys = [view["identity_records"][str(key)][1] for key in range(*view["header0"])]
    # dataset positions are image keys - 1 in this layout
    assert index.class_ranges.tolist() == [[first - 1, end - 1] for first, end in zip(first_keys, end_keys)]


def test_sequential_layout_matches_insightface_view():
    view = EXPECTED["seq_layout"]["insightface_view"]
    index = FaceRecIndex(FIXTURES / "seq_layout")
    assert index.layout == "sequential" and index.header_label is None
    assert index.image_keys.tolist() == view["imgidx"]
    assert index.labels.tolist() == view["labels"]
    with pytest.raises(RecordIOError, match="no header record 0"):
        FaceRecIndex(FIXTURES / "seq_layout", labels_from="identities")


def test_header_layout_labels_never_touch_image_records(tmp_path):
    # Break the magic of every image record: the identity records alone must give the labels.
    for name in ("train.rec", "train.idx", "property"):
        (tmp_path / name).write_bytes((FIXTURES / name).read_bytes())
    data = bytearray((tmp_path / "train.rec").read_bytes())
    for key in EXPECTED["train"]["insightface_view"]["imgidx"]:
        offset = next(record["offset"] for record in EXPECTED["train"]["records"] if record["key"] == key)
        data[offset:offset + 4] = b"\0" * 4
    (tmp_path / "train.rec").write_bytes(bytes(data))
    assert FaceRecIndex(tmp_path).labels.tolist() == EXPECTED["train"]["insightface_view"]["labels"]
    with pytest.raises(RecordIOError, match=r"train\.rec: bad magic 0x00000000 at offset 0"):
        FaceRecIndex(tmp_path, labels_from="images")


def test_writer_reproduces_recbuilder_fixture(tmp_path):
    reader = RecordIOReader(FIXTURES / "train.rec", FIXTURES / "train.idx")
    records = {record["key"]: record for record in EXPECTED["train"]["records"]}
    view = EXPECTED["train"]["insightface_view"]
    with FaceRecWriter(tmp_path, image_size=view["image_size"]) as writer:
        for key, label in zip(view["imgidx"], view["labels"]):
            payload = unpack(reader.read_idx(key))[1]
            assert hashlib.sha256(payload).hexdigest() == records[key]["payload_sha256"]
            assert writer.add(label, payload) == key
    for name in ("train.rec", "train.idx", "property"):
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == EXPECTED["files"][name]["sha256"], name
    assert sorted(path.name for path in tmp_path.iterdir()) == ["property", "train.idx", "train.rec"]


def test_writer_reader_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    labels = [0, 0, 0, 1, 2, 2]
    images = [rng.integers(0, 256, (8, 6, 3), dtype=np.uint8) for _ in labels]
    with FaceRecWriter(tmp_path, image_size=(8, 6)) as writer:
        for label, image in zip(labels, images):
            writer.add_image(label, image, quality=1, img_fmt=".png")
    assert read_property(tmp_path) == (3, 8, 6)
    index = FaceRecIndex(tmp_path)
    assert index.labels.tolist() == labels and index.header_label == (7, 10)
    assert index.class_ranges.tolist() == [[0, 3], [3, 4], [4, 6]]
    for position, image in enumerate(images):
        header, payload = unpack(index.reader.read_at(int(index.image_offsets[position])))
        assert header == IRHeader(0, float(labels[position]), position + 1, 0)
        np.testing.assert_array_equal(decode_rgb(payload), image[:, :, ::-1])
    header0 = unpack(index.reader.read_idx(0))[0]
    assert (header0.flag, header0.label.tolist(), header0.id, header0.id2) == (2, [7.0, 10.0], 0, 1)
    assert index.reader.keys[-1] == 0


@pytest.mark.parametrize("labels,message", [([1], "image 0 has label 1, expected 0:"),
                                            ([0, 2], "image 1 has label 2, expected 0 or 1:"),
                                            ([0, 1, 0], "image 2 has label 0, expected 1 or 2:")])
def test_writer_rejects_bad_label_order(tmp_path, labels, message):
    with pytest.raises(ValueError, match=message):
        with FaceRecWriter(tmp_path) as writer:
            for label in labels:
                writer.add(label, b"jpeg")
    assert list(tmp_path.iterdir()) == []


def test_broken_identity_ranges_are_named(tmp_path):
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        for key in (1, 2, 3):
            writer.write_idx(key, pack(IRHeader(0, 0.0, key, 0), b"x"))
        writer.write_idx(4, pack(IRHeader(0, [1, 2], 4, 0), b""))
        writer.write_idx(5, pack(IRHeader(0, [3, 4], 5, 0), b""))
        writer.write_idx(0, pack(IRHeader(0, [4, 6], 0, 1), b""))
    with pytest.raises(RecordIOError, match=r"identity record 5 range \[3, 4\) does not continue"):
        FaceRecIndex(tmp_path)


def test_writer_refuses_keys_float32_cannot_hold(tmp_path, monkeypatch):
    import utils.data.face_rec as face_rec
    monkeypatch.setattr(face_rec, "FLOAT32_EXACT_INTEGERS", 4)   # stands in for 2**24 (a 16.7M-image set)
    writer = FaceRecWriter(tmp_path)
    for label in (0, 0, 1):
        writer.add(label, b"jpeg")
    with pytest.raises(ValueError, match="3 images \\+ 2 identity records need keys above 4"):
        writer.close()
    assert list(tmp_path.iterdir()) == []
