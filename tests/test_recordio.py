"""utils/data/recordio.py against files written by the real MXNet 1.9.1 (tests/data/mxnet_recordio)."""
import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from utils.data.recordio import (IRHeader, RecordIOError, RecordIOReader, RecordIOWriter, decode_rgb, pack, pack_img, unpack, unpack_img)

FIXTURES = Path(__file__).parent / "data" / "mxnet_recordio"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
SETS = ["train", "seq_layout", "multilabel", "multipart"]
ALL_RECORDS = [(name, record) for name in SETS for record in EXPECTED[name]["records"]]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_set(name: str) -> RecordIOReader:
    return RecordIOReader(FIXTURES / EXPECTED[name]["rec"], FIXTURES / EXPECTED[name]["idx"])


@pytest.mark.parametrize("name,expected", ALL_RECORDS,
                         ids=[f"{name}-key{record['key']}" for name, record in ALL_RECORDS])
def test_every_fixture_record(name, expected):
    reader = open_set(name)
    offset = reader.offset_of(expected["key"])
    assert offset == expected["offset"]
    record, parts, _ = reader.read_parts(offset)
    assert parts == expected["parts"]
    assert len(record) == expected["record_len"]
    assert sha256(record) == expected["record_sha256"]
    assert reader.read_idx(expected["key"]) == record
    if "record_hex" in expected:
        assert record.hex() == expected["record_hex"]
    if "flag" not in expected:
        return
    header, payload = unpack(record)
    assert header.flag == expected["flag"]
    assert (header.id, header.id2) == (expected["id"], expected["id2"])
    assert struct.unpack_from("<f", record, 4)[0] == expected["header_label_field"]
    if expected["label_is_array"]:
        assert isinstance(header.label, np.ndarray) and header.label.dtype == np.float32
        assert header.label.tolist() == expected["label"]
    else:
        assert isinstance(header.label, float) and [header.label] == expected["label"]
    assert len(payload) == expected["payload_len"]
    assert sha256(payload) == expected["payload_sha256"]
    if "payload_hex" in expected:
        assert payload.hex() == expected["payload_hex"]
    if "image" in expected:
        rgb = decode_rgb(payload)
        assert list(rgb.shape) == expected["image"]["shape"]
        assert sha256(np.ascontiguousarray(rgb).tobytes()) == expected["image"]["sha256"]["cv2_imdecode_rgb"]
        _, bgr = unpack_img(record)
        assert sha256(np.ascontiguousarray(bgr).tobytes()) == expected["image"]["sha256"]["cv2_imdecode_bgr"]


@pytest.mark.parametrize("name", SETS)
def test_key_order_file_order_and_eof(name):
    reader = open_set(name)
    assert reader.keys == EXPECTED[name]["idx_key_order"]
    key_at = dict(zip(reader.offset_array.tolist(), reader.keys))
    in_file = list(reader)
    assert [key_at[offset] for offset, _ in in_file] == EXPECTED[name]["file_order"]
    by_key = {record["key"]: record["record_sha256"] for record in EXPECTED[name]["records"]}
    assert [sha256(record) for _, record in in_file] == [by_key[key] for key in EXPECTED[name]["file_order"]]
    assert reader.read_parts(reader.file_size)[0] is None


def test_empty_record_is_empty_bytes_not_eof():
    reader = open_set("multipart")
    assert reader.read_idx(4) == b""
    assert sum(1 for _ in reader) == EXPECTED["multipart"]["num_records"]


def fixture_payload(name: str, key: int) -> bytes:
    expected = next(record for record in EXPECTED[name]["records"] if record["key"] == key)
    payload = unpack(open_set(name).read_idx(key))[1]
    assert sha256(payload) == expected["payload_sha256"]
    return payload


def written_files_match(tmp_path, name, records) -> None:
    rec_path, idx_path = tmp_path / f"{name}.rec", tmp_path / f"{name}.idx"
    with RecordIOWriter(rec_path, idx_path) as writer:
        for key, record in records:
            writer.write_idx(key, record)
    assert sha256(rec_path.read_bytes()) == EXPECTED["files"][f"{name}.rec"]["sha256"]
    assert sha256(idx_path.read_bytes()) == EXPECTED["files"][f"{name}.idx"]["sha256"]


def test_writer_reproduces_multipart_byte_for_byte(tmp_path):
    by_key = {record["key"]: bytes.fromhex(record["record_hex"]) for record in EXPECTED["multipart"]["records"]}
    written_files_match(tmp_path, "multipart", [(key, by_key[key]) for key in EXPECTED["multipart"]["file_order"]])


def test_writer_reproduces_multilabel_byte_for_byte(tmp_path):
    records = {
        0: pack(IRHeader(0, [1.0, 2.5, -3.0, 1e6], 7, 8), fixture_payload("multilabel", 0)),
        1: pack(IRHeader(0, [42.0], 1, 0), fixture_payload("multilabel", 1)),
        2: pack(IRHeader(0, np.arange(10) * 0.25, 2, 0), b""),
        3: pack(IRHeader(0, 3.5, 3, 2 ** 40), b"hello"),
        4: pack(IRHeader(5, -1.25, 2 ** 64 - 1, 12345), b"abcdefgh"),
    }
    written_files_match(tmp_path, "multilabel", [(key, records[key]) for key in EXPECTED["multilabel"]["file_order"]])


def test_pack_scalar_versus_one_element_list():
    scalar, array = pack(IRHeader(9, 7.0, 1, 2), b"xy"), pack(IRHeader(0, [7.0], 1, 2), b"xy")
    assert scalar == struct.pack("<IfQQ", 0, 7.0, 1, 2) + b"xy"
    assert array == struct.pack("<IfQQ", 1, 0.0, 1, 2) + struct.pack("<f", 7.0) + b"xy"
    header, payload = unpack(array)
    assert header.label.tolist() == [7.0] and payload == b"xy"


def test_pack_img_round_trip_png_is_exact():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    header, decoded = unpack_img(pack_img(IRHeader(0, 2.0, 5, 0), image, quality=3, img_fmt=".png"))
    assert header == IRHeader(0, 2.0, 5, 0)
    np.testing.assert_array_equal(decoded, image)
    np.testing.assert_array_equal(decode_rgb(unpack(pack_img(header, image, img_fmt=".png"))[1]), image[:, :, ::-1])


def test_magic_split_round_trip_and_unaligned_magic(tmp_path):
    magic = bytes.fromhex("0a23d7ce")
    records = [magic * 3, b"ab" + magic + b"cd", b"1234" + magic + magic[:2], b"", magic + b"x" * 9]
    with RecordIOWriter(tmp_path / "a.rec", tmp_path / "a.idx") as writer:
        for key, record in enumerate(records):
            writer.write_idx(key, record)
    reader = RecordIOReader(tmp_path / "a.rec", tmp_path / "a.idx")
    assert [reader.read_idx(key) for key in range(len(records))] == records
    assert [cflag for _, cflag, _ in reader.read_parts(reader.offset_of(0))[1]] == [1, 2, 2, 3]
    assert len(reader.read_parts(reader.offset_of(1))[1]) == 1


# ---- atomic writing ------------------------------------------------------------------------------
def test_writer_renames_on_close_and_aborts_on_error(tmp_path):
    writer = RecordIOWriter(tmp_path / "a.rec", tmp_path / "a.idx")
    writer.write_idx(1, b"abc")
    # until close() the records are in temporaries unique to this writer
    assert not (tmp_path / "a.rec").exists()
    assert [path.name.startswith((".a.rec.", ".a.idx.")) and path.name.endswith(".tmp")
            for path in tmp_path.iterdir()] == [True, True]
    writer.close()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.idx", "a.rec"]
    with pytest.raises(KeyError):
        with RecordIOWriter(tmp_path / "b.rec", tmp_path / "b.idx") as failing:
            failing.write_idx(1, b"abc")
            raise KeyError("interrupted")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.idx", "a.rec"]


# ---- corrupt input -------------------------------------------------------------------------------
@pytest.fixture
def multipart_copy(tmp_path):
    shutil.copy(FIXTURES / "multipart.rec", tmp_path / "m.rec")
    shutil.copy(FIXTURES / "multipart.idx", tmp_path / "m.idx")
    return tmp_path / "m.rec", tmp_path / "m.idx"


def test_bad_magic_names_file_and_offset(multipart_copy):
    rec_path, idx_path = multipart_copy
    data = bytearray(rec_path.read_bytes())
    data[28:32] = b"\xff\xff\xff\xff"   # second chunk of key 1
    rec_path.write_bytes(bytes(data))
    with pytest.raises(RecordIOError, match=r"m\.rec.*bad magic 0xFFFFFFFF at offset 28.*key 1"):
        RecordIOReader(rec_path, idx_path).read_idx(1)


def test_truncated_header_and_chunk(multipart_copy):
    rec_path, idx_path = multipart_copy
    full = rec_path.read_bytes()
    rec_path.write_bytes(full[:52])   # key 1's last chunk header is at 48..56
    with pytest.raises(RecordIOError, match=r"m\.rec: truncated chunk header at offset 48 \(4 of 8 bytes\)"):
        list(RecordIOReader(rec_path))
    rec_path.write_bytes(full[:26])   # key 1's first chunk holds 4 data bytes at 24..28
    with pytest.raises(RecordIOError, match=r"truncated chunk at offset 16: needs 4 data bytes, the file has 2"):
        list(RecordIOReader(rec_path))


def test_offset_past_end(multipart_copy):
    rec_path, idx_path = multipart_copy
    reader = RecordIOReader(rec_path, idx_path)
    with pytest.raises(RecordIOError, match=r"offset 500 is past the end of the file \(172 bytes\)"):
        reader.read_at(500)
    idx_path.write_text(idx_path.read_text() + "7\t900\n")
    with pytest.raises(RecordIOError, match=r"m\.idx line 8: offset 900 of key 7 is past the end"):
        RecordIOReader(rec_path, idx_path)


def test_chunk_that_cannot_start_a_record(multipart_copy):
    rec_path, idx_path = multipart_copy
    with pytest.raises(RecordIOError, match=r"chunk with cflag 2 at offset 28 cannot start a record"):
        RecordIOReader(rec_path, idx_path).read_at(28)


@pytest.mark.parametrize("text,line", [("0\t0\n1 16\n", 2), ("0\t0\n\n", 2), ("0\t0\nx\t4\n", 2), ("5\n", 1)])
def test_idx_line_that_does_not_parse(multipart_copy, text, line):
    rec_path, idx_path = multipart_copy
    idx_path.write_text(text)
    with pytest.raises(RecordIOError, match=rf"m\.idx line {line}: expected"):
        RecordIOReader(rec_path, idx_path)


def test_duplicate_missing_idx_and_unknown_key(multipart_copy):
    rec_path, idx_path = multipart_copy
    reader = RecordIOReader(rec_path, idx_path)
    with pytest.raises(RecordIOError, match=r"m\.idx: unknown key 99"):
        reader.read_idx(99)
    with pytest.raises(RecordIOError, match=r"nothere\.idx: index file not found"):
        RecordIOReader(rec_path, rec_path.parent / "nothere.idx")
    idx_path.write_text("0\t0\n1\t16\n0\t60\n")
    with pytest.raises(RecordIOError, match=r"m\.idx line 3: key 0 appears more than once"):
        RecordIOReader(rec_path, idx_path)


def test_short_record_cannot_unpack():
    with pytest.raises(RecordIOError, match="shorter than the 24-byte IRHeader"):
        unpack(b"\0" * 10)
    with pytest.raises(RecordIOError, match="cannot hold the 3 labels"):
        unpack(struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\0" * 4)


def test_records_longer_than_the_first_read(tmp_path):
    magic = bytes.fromhex("0a23d7ce")
    rng = np.random.default_rng(2)
    big = bytearray(rng.integers(0, 256, 40000, dtype=np.uint8).tobytes())
    big[20000:20004] = magic    # split in the middle, beyond the 16 KiB unindexed first read
    records = [bytes(big), b"tail"]
    with RecordIOWriter(tmp_path / "b.rec", tmp_path / "b.idx") as writer:
        for key, record in enumerate(records):
            writer.write_idx(key, record)
    assert [record for _, record in RecordIOReader(tmp_path / "b.rec")] == records
    indexed = RecordIOReader(tmp_path / "b.rec", tmp_path / "b.idx")
    assert [indexed.read_idx(key) for key in (0, 1)] == records
    assert [part[1:] for part in indexed.read_parts(0)[1]] == [[1, 20000], [3, 19996]]
