"""MXNet RecordIO (.rec/.idx) reading and writing without mxnet.

Two layers (docs: ../shared/docs/recordio.md):
- framing: a .rec file is a sequence of 4-aligned chunks `magic, lrecord, data, zero padding`;
  a logical record that holds the magic at a 4-aligned offset is split there (magic dropped,
  cflag 1/2/3) and re-joined on read with the magic put back;
- image records: a 24-byte `IRHeader` ('<IfQQ'), `flag` float32 labels, then the payload.

Files are read with `os.pread` on a raw descriptor, reopened when the process id changes, so one
reader can be shared with forked DataLoader workers.
"""
from __future__ import annotations

import numbers
import os
import re
import struct
from collections import deque, namedtuple
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import cv2
import numpy as np

from utils.common.atomic_files import WriteError, describe_os_error, unique_temporary

# Images are decoded in data-loader workers forked from the main process. An OpenCV thread
# pool started in the parent deadlocks those children, so OpenCV stays single-threaded everywhere.
cv2.setNumThreads(1)

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
CHUNK_HEADER = struct.Struct("<II")
IR_HEADER = struct.Struct("<IfQQ")
LENGTH_BITS = 29
MAX_CHUNK_LENGTH = (1 << LENGTH_BITS) - 1
# Record starts: cflag 0 (whole record) or 1 (first chunk); 2 = middle, 3 = last chunk.
CFLAG_WHOLE, CFLAG_FIRST, CFLAG_MIDDLE, CFLAG_LAST = 0, 1, 2, 3

IRHeader = namedtuple("IRHeader", ["flag", "label", "id", "id2"])

_IDX_LINE = re.compile(r"^[ \t]*(-?\d+)\t[ \t]*(\d+)[ \t\r]*$", re.MULTILINE)


HeaderTable = namedtuple("HeaderTable", ["flag", "label", "labels", "ok"])


def _fill_header_table(table: HeaderTable, positions: np.ndarray, words: np.ndarray) -> None:
    """Store the header fields of the records at `positions` from their first _HEAD_BYTES (as
    little-endian uint32 words: magic, lrecord, flag, label, id x2, id2 x2, two array labels)."""
    flags = words[:, 2]
    table.flag[positions] = flags
    table.label[positions] = words[:, 3].view("<f4")
    table.labels[positions] = words[:, 8:10].view("<f4")
    table.ok[positions] = ((words[:, 0] == MAGIC) & (words[:, 1] >> LENGTH_BITS == CFLAG_WHOLE)
                           & ((words[:, 1] & MAX_CHUNK_LENGTH).astype(np.int64)
                              >= IR_HEADER.size + 4 * flags.astype(np.int64)))


def increasing_unique(values: np.ndarray) -> np.ndarray:
    """np.unique(values) without its sort when `values` is already strictly increasing (every
    writer's .idx lists offsets in file order, so this is the usual case at millions of records)."""
    if len(values) < 2 or bool(np.all(values[1:] > values[:-1])):
        return values
    return np.unique(values)


class RecordIOError(ValueError):
    """A .rec/.idx file (or a record in it) is malformed; the message names the file and place."""


def _aligned(length: int) -> int:
    return (length + 3) & ~3


# ---- image-record layer -------------------------------------------------------------------------
def pack(header: IRHeader, payload: bytes) -> bytes:
    """IRHeader + payload -> record bytes, as mxnet's `pack`: the flag passed in is ignored.

    A numbers.Number label is stored in the header (flag 0); anything else becomes a float32
    array written after the header (flag = its size, in-struct label 0.0).
    """
    label = header.label
    if isinstance(label, numbers.Number):
        return IR_HEADER.pack(0, float(label), header.id, header.id2) + bytes(payload)
    labels = np.asarray(label, dtype="<f4")
    return IR_HEADER.pack(labels.size, 0.0, header.id, header.id2) + labels.tobytes() + bytes(payload)


def unpack(record: bytes) -> Tuple[IRHeader, bytes]:
    """Record bytes -> (IRHeader, payload); label is a float (flag 0) or float32 array (flag > 0)."""
    if len(record) < IR_HEADER.size:
        raise RecordIOError(f"record of {len(record)} bytes is shorter than the {IR_HEADER.size}-byte IRHeader")
    flag, label, image_id, image_id2 = IR_HEADER.unpack_from(record)
    payload_start = IR_HEADER.size + 4 * flag
    if flag > 0:
        if len(record) < payload_start:
            raise RecordIOError(f"record of {len(record)} bytes cannot hold the {flag} labels its header announces")
        label = np.frombuffer(record, dtype="<f4", count=flag, offset=IR_HEADER.size).astype(np.float32)
    return IRHeader(flag, label, image_id, image_id2), record[payload_start:]


def encode_image(img_bgr: np.ndarray, quality: int = 95, img_fmt: str = ".jpg") -> bytes:
    """Encode a BGR (cv2 order) image with cv2; quality = JPEG quality or PNG compression level."""
    fmt = img_fmt.lower()
    if fmt in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif fmt == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(quality)]
    else:
        params = []
    ok, encoded = cv2.imencode(img_fmt, img_bgr, params)
    if not ok:
        raise ValueError(f"cv2.imencode could not encode a {img_bgr.shape} image as {img_fmt}")
    return encoded.tobytes()


def pack_img(header: IRHeader, img_bgr: np.ndarray, quality: int = 95, img_fmt: str = ".jpg") -> bytes:
    """mxnet's `pack_img`: encode a BGR image with cv2, then `pack`."""
    return pack(header, encode_image(img_bgr, quality, img_fmt))


def unpack_img(record: bytes, iscolor: int = -1) -> Tuple[IRHeader, np.ndarray]:
    """Record -> (IRHeader, image decoded by cv2 in BGR order, as mxnet's `unpack_img`)."""
    header, payload = unpack(record)
    image = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), iscolor)
    if image is None:
        raise RecordIOError(f"payload of {len(payload)} bytes is not a decodable image")
    return header, image


def decode_bgr(payload) -> np.ndarray:
    """Encoded image bytes -> HxWx3 uint8 BGR (cv2.IMREAD_COLOR: grey images get 3 channels)."""
    image = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"payload of {len(payload)} bytes is not a decodable image")
    return image


def decode_rgb(payload) -> np.ndarray:
    """Encoded image bytes -> HxWx3 uint8 RGB, the pixels mx.image.imdecode returns."""
    return cv2.cvtColor(decode_bgr(payload), cv2.COLOR_BGR2RGB)


# ---- framing layer ------------------------------------------------------------------------------
def split_at_magic(record: bytes) -> List[bytes]:
    """Chunk data of one logical record: cut at every 4-aligned magic, dropping the magic."""
    aligned_words = np.frombuffer(record, dtype="<u4", count=len(record) // 4)
    cuts = (np.flatnonzero(aligned_words == MAGIC) * 4).tolist()
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(record[start:cut])
        start = cut + 4
    pieces.append(record[start:])
    return pieces


def frame_record(record: bytes) -> bytes:
    """Logical record -> the bytes dmlc's RecordIOWriter puts on disk (chunks + zero padding)."""
    pieces = split_at_magic(record)
    if any(len(piece) > MAX_CHUNK_LENGTH for piece in pieces):
        raise RecordIOError(f"record of {len(record)} bytes has a chunk longer than {MAX_CHUNK_LENGTH} bytes")
    last = len(pieces) - 1
    out = []
    for number, piece in enumerate(pieces):
        if last == 0:
            cflag = CFLAG_WHOLE
        else:
            cflag = CFLAG_FIRST if number == 0 else (CFLAG_LAST if number == last else CFLAG_MIDDLE)
        out.append(CHUNK_HEADER.pack(MAGIC, (cflag << LENGTH_BITS) | len(piece)))
        out.append(piece)
    out.append(b"\0" * (_aligned(len(record)) - len(record)))
    return b"".join(out)


# Byte classes of a canonical .idx line `-?\\d+\\t\\d+\\r?\\n`, and which class may follow which.
_DIGIT, _TAB, _NEWLINE, _RETURN, _MINUS, _OTHER = range(6)
_BYTE_CLASS = np.full(256, _OTHER, dtype=np.uint8)
_BYTE_CLASS[ord("0"):ord("9") + 1] = _DIGIT
_BYTE_CLASS[[ord("\t"), ord("\n"), ord("\r"), ord("-")]] = [_TAB, _NEWLINE, _RETURN, _MINUS]
_MAY_FOLLOW = np.zeros((6, 6), dtype=bool)
for _before, _after in [(_DIGIT, _DIGIT), (_DIGIT, _TAB), (_TAB, _DIGIT), (_DIGIT, _NEWLINE), (_DIGIT, _RETURN),
                        (_RETURN, _NEWLINE), (_NEWLINE, _DIGIT), (_NEWLINE, _MINUS), (_MINUS, _DIGIT)]:
    _MAY_FOLLOW[_before, _after] = True
_MAY_FOLLOW = _MAY_FOLLOW.ravel()
_CHECK_BLOCK_BYTES = 1 << 23
# First read of a record: up to the next indexed record, at most 1 MiB; 16 KiB (a face JPEG) without
# an index. More is read when the record turns out longer.
_MAX_FIRST_READ, _UNINDEXED_FIRST_READ = 1 << 20, 1 << 14
# read_header_at and the bulk header reads take this many array labels with the header (identity
# records have 2).
_HEADER_LABELS_READ = 2
# Bulk header reads: chunk header + IRHeader + the first two array labels, from spans of the file.
_HEAD_BYTES = CHUNK_HEADER.size + IR_HEADER.size + 4 * _HEADER_LABELS_READ
_SPAN_BYTES = 1 << 23
# Spans in flight at once: measured on this project's VM disk, 4 concurrent 8 MiB reads gave ~1.5x
# one reader's cold throughput (1.1 -> 1.8 GB/s); more gained nothing. The 29.7 GB rehearsal rec
# (3,598,269 records) cold, one process: 23.2 s with one span at a time, 13.7-15.1 s with 4 (2026-12-06).
_SPANS_IN_FLIGHT = 4
# Records at least this far apart on average are read header-only (one small pread each, many in
# flight, no read-ahead) instead of in spans. Break-even = span throughput / header reads per second:
# measured on the same rec cold (2026-12-06), ~2.0 GB/s in spans and 62.8k header reads/s (57.3 s
# for 3.6M) -> ~32 KB. A real MS1M-V3 record (~28 KB) is near it, the rehearsal's 8 KB one below.
_HEADER_ONLY_MIN_SPACING = 1 << 15
_HEADER_READS_IN_FLIGHT = 16
_HEADER_READS_PER_TASK = 4096


def _lines_are_canonical(block: bytes) -> bool:
    """True when every line of `block` (which ends with a newline) is exactly `-?\\d+\\t\\d+\\r?\\n`:
    every adjacent byte pair is allowed, and separators alternate tab, newline (one tab a line)."""
    classes = _BYTE_CLASS[np.frombuffer(block, dtype=np.uint8)]
    if classes[0] not in (_DIGIT, _MINUS) or not _MAY_FOLLOW[classes[:-1] * 6 + classes[1:]].all():
        return False
    separators = classes[classes <= _NEWLINE]
    separators = separators[separators != _DIGIT]
    return len(separators) % 2 == 0 and bool((separators[0::2] == _TAB).all() and (separators[1::2] == _NEWLINE).all())


def _first_bad_line(lines: List[str]) -> Optional[int]:
    return next((number for number, line in enumerate(lines, start=1) if not _IDX_LINE.match(line)), None)


def parse_idx(idx_path) -> Tuple[np.ndarray, np.ndarray]:
    """Read a .idx file -> (keys int64, offsets int64) in line order; bad lines are named."""
    idx_path = Path(idx_path)
    try:
        data = idx_path.read_bytes()
    except FileNotFoundError:
        raise RecordIOError(f"{idx_path}: index file not found") from None
    if data and not data.endswith(b"\n"):
        data += b"\n"
    # memoryview slices: the check reads the text in place instead of holding a second copy of it
    text_view, blocks, start = memoryview(data), [], 0
    while start < len(data):
        end = data.find(b"\n", min(start + _CHECK_BLOCK_BYTES, len(data) - 1)) + 1
        blocks.append(text_view[start:end])
        start = end
    num_lines = data.count(b"\n")
    canonical = all(_lines_are_canonical(block) for block in blocks)
    del blocks, text_view
    if canonical:
        table = np.fromstring(data, dtype=np.int64, sep=" ")   # text mode: every whitespace separates
        del data   # the text is not needed any more: free it before the columns are copied out
    else:
        try:
            text = data.decode()
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            raise RecordIOError(f"{idx_path} line {line}: not text ({error.reason})") from None
        lines = text.splitlines()
        bad = _first_bad_line(lines)
        if bad is not None:
            raise RecordIOError(f"{idx_path} line {bad}: expected '<key>\\t<offset>', got {lines[bad - 1][:80]!r}")
        table = np.array(_IDX_LINE.findall(text), dtype=np.int64)
    if table.size != 2 * num_lines:
        raise RecordIOError(f"{idx_path}: parsed {table.size} numbers from {num_lines} lines")
    keys = table[0::2].copy()
    offsets = table[1::2].copy()
    del table
    # stable sort = timsort here: linear on the (nearly) sorted keys every writer produces
    sorted_keys = np.sort(keys, kind="stable")
    repeated = sorted_keys[1:][sorted_keys[1:] == sorted_keys[:-1]]
    if repeated.size:
        line = int(np.flatnonzero(keys == repeated[0])[1]) + 1
        raise RecordIOError(f"{idx_path} line {line}: key {int(repeated[0])} appears more than once")
    return keys, offsets


def _in_flight(read, bounds: Iterator[Tuple[int, int]], depth: int):
    """(bound, read(*bound, slot)) for each bound, in order, with up to `depth` reads running at once
    on threads (os.pread releases the GIL; a deeper queue lets the disk serve several reads at a time).
    `slot` (0..depth) names a buffer no other read in flight, and no result the caller still holds,
    is using: a result is the caller's until it asks for the next one."""
    pending = deque()
    with ThreadPoolExecutor(depth) as pool:
        for index, bound in enumerate(bounds):
            pending.append((bound, pool.submit(read, *bound, index % (depth + 1))))
            if len(pending) >= depth:
                bound, future = pending.popleft()
                yield bound, future.result()
        while pending:
            bound, future = pending.popleft()
            yield bound, future.result()


def _pread_into(descriptor: int, view: memoryview, offset: int) -> int:
    """Fill `view` from the file at `offset` (short reads retried); returns the bytes read, fewer
    only at the end of the file."""
    done = 0
    while done < len(view):
        got = os.preadv(descriptor, [view[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


class RecordIOReader:
    """Random and sequential access to a .rec file, with its .idx when one is given.

    `keys` keeps the .idx line order; `read_idx(key)` seeks by the key's offset; iteration yields
    `(offset, record)` in file order. Empty records are b''; the end of the file ends iteration.
    """

    def __init__(self, rec_path, idx_path=None):
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise RecordIOError(f"{self.rec_path}: record file not found")
        self.file_size = self.rec_path.stat().st_size
        self.idx_path = Path(idx_path) if idx_path is not None else None
        self._fd, self._pid = None, None
        self._keys = np.zeros(0, dtype=np.int64)
        self._offsets = np.zeros(0, dtype=np.int64)
        if self.idx_path is not None:
            self._keys, self._offsets = parse_idx(self.idx_path)
            beyond = np.flatnonzero(self._offsets >= self.file_size)
            if beyond.size:
                line = int(beyond[0])
                raise RecordIOError(f"{self.idx_path} line {line + 1}: offset {int(self._offsets[line])} of key "
                                    f"{int(self._keys[line])} is past the end of {self.rec_path} "
                                    f"({self.file_size} bytes)")
        # Record starts in file order: a record is at most as long as the gap to the next one. The
        # offsets become a view of that array when they are already in file order (the usual case):
        # one 8-byte column per record instead of two.
        starts = np.empty(len(self._offsets) + 1, dtype=np.int64)
        starts[:-1], starts[-1] = self._offsets, self.file_size
        self._record_starts = increasing_unique(starts)
        if self._record_starts is starts:
            self._offsets = starts[:-1]
        del starts
        self._build_key_lookup()

    def _build_key_lookup(self) -> None:
        """Key -> .idx line. Keys that fill a range at least half densely (every writer numbers
        records 0..N) get a direct table: one int32 per key, a gather per lookup; others a sorted
        copy and its order (two int64 columns, a binary search per lookup)."""
        self._first_key, self._line_of_key = 0, None
        self._key_order = self._sorted_keys = None
        if len(self._keys):
            first, last = int(self._keys.min()), int(self._keys.max())
            if last - first + 1 <= 2 * len(self._keys) + 1024 and len(self._keys) < 2 ** 31 - 1:
                self._first_key = first
                self._line_of_key = np.full(last - first + 1, -1, dtype=np.int32)
                self._line_of_key[self._keys - first] = np.arange(len(self._keys), dtype=np.int32)
                return
        self._key_order = np.argsort(self._keys, kind="stable")
        self._sorted_keys = self._keys[self._key_order]

    def _lines_of(self, keys: np.ndarray) -> np.ndarray:
        """.idx line of each key (int array), -1 where the key is not in the index."""
        keys = np.asarray(keys, dtype=np.int64)
        if self._line_of_key is not None:
            relative = keys - self._first_key
            if not relative.size or (relative.min() >= 0 and relative.max() < len(self._line_of_key)):
                return self._line_of_key[relative]           # the usual case: no copy of the mask
            inside = (relative >= 0) & (relative < len(self._line_of_key))
            lines = np.full(keys.shape, -1, dtype=np.int64)
            lines[inside] = self._line_of_key[relative[inside]]
            return lines
        if not len(self._sorted_keys):
            return np.full(keys.shape, -1, dtype=np.int64)
        positions = np.minimum(np.searchsorted(self._sorted_keys, keys), len(self._sorted_keys) - 1)
        return np.where(self._sorted_keys[positions] == keys, self._key_order[positions], -1)

    # ---- file handle, reopened after a fork -----------------------------------------------------
    def _descriptor(self) -> int:
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0)), os.getpid()
        return self._fd

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = None, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fd"], state["_pid"] = None, None
        return state

    # ---- index ------------------------------------------------------------------------------------
    @property
    def keys(self) -> List[int]:
        return self._keys.tolist()

    @property
    def key_array(self) -> np.ndarray:
        return self._keys

    @property
    def offset_array(self) -> np.ndarray:
        return self._offsets

    def offset_of(self, key: int) -> int:
        if self.idx_path is None:
            raise RecordIOError(f"{self.rec_path}: no .idx file was given, cannot look up key {key}")
        line = int(self._lines_of(np.array([key]))[0])
        if line < 0:
            raise RecordIOError(f"{self.idx_path}: unknown key {key}")
        return int(self._offsets[line])

    def offsets_of(self, keys) -> np.ndarray:
        """Vectorised `offset_of` for an int array of keys (a read-only view of the index's offsets
        when the keys are consecutive lines of it, as the image keys 1..N are)."""
        lines = self._lines_of(keys)
        missing = np.flatnonzero(lines < 0)
        if missing.size:
            raise RecordIOError(f"{self.idx_path}: unknown key {int(np.asarray(keys).ravel()[missing[0]])}")
        if lines.ndim == 1 and len(lines) > 1 and lines[-1] - lines[0] == len(lines) - 1 \
                and bool(np.all(np.diff(lines) == 1)):
            view = self._offsets[lines[0]:lines[-1] + 1]
            view.flags.writeable = False
            return view
        return self._offsets[lines]

    def __contains__(self, key: int) -> bool:
        return bool(self._lines_of(np.array([key]))[0] >= 0)

    def __len__(self) -> int:
        return len(self._keys)

    # ---- records ---------------------------------------------------------------------------------
    def _size_hint(self, offset: int) -> int:
        if self.idx_path is None:
            return _UNINDEXED_FIRST_READ
        following = int(np.searchsorted(self._record_starts, offset, side="right"))
        return min(int(self._record_starts[following]) - offset, _MAX_FIRST_READ)

    def read_parts(self, offset: int, size_hint: Optional[int] = None) -> Tuple[Optional[bytes], list, int]:
        """One logical record at `offset` -> (record or None at EOF, [[offset, cflag, length]...], next offset)."""
        if offset < 0 or offset > self.file_size:
            raise RecordIOError(f"{self.rec_path}: offset {offset} is past the end of the file ({self.file_size} bytes)")
        if offset == self.file_size:
            return None, [], offset
        descriptor = self._descriptor()
        buffer = os.pread(descriptor, max(size_hint or self._size_hint(offset), CHUNK_HEADER.size), offset)
        position, parts, pieces = 0, [], []
        while True:
            chunk_offset = offset + position
            if len(buffer) - position < CHUNK_HEADER.size:
                buffer += os.pread(descriptor, CHUNK_HEADER.size, offset + len(buffer))
                if len(buffer) - position < CHUNK_HEADER.size:
                    raise RecordIOError(f"{self.rec_path}: truncated chunk header at offset {chunk_offset} "
                                        f"({len(buffer) - position} of {CHUNK_HEADER.size} bytes)")
            magic, lrecord = CHUNK_HEADER.unpack_from(buffer, position)
            if magic != MAGIC:
                raise RecordIOError(f"{self.rec_path}: bad magic 0x{magic:08X} at offset {chunk_offset} "
                                    f"(expected 0x{MAGIC:08X})")
            cflag, length = lrecord >> LENGTH_BITS, lrecord & MAX_CHUNK_LENGTH
            starts_record = not parts
            if starts_record != (cflag in (CFLAG_WHOLE, CFLAG_FIRST)):
                raise RecordIOError(f"{self.rec_path}: chunk with cflag {cflag} at offset {chunk_offset} "
                                    + ("cannot start a record" if starts_record else "inside a multi-part record"))
            data_start = position + CHUNK_HEADER.size
            needed = data_start + _aligned(length)
            if len(buffer) < needed:
                buffer += os.pread(descriptor, needed - len(buffer), offset + len(buffer))
                if len(buffer) < data_start + length:
                    raise RecordIOError(f"{self.rec_path}: truncated chunk at offset {chunk_offset}: needs {length} "
                                        f"data bytes, the file has {len(buffer) - data_start}")
            parts.append([chunk_offset, cflag, length])
            pieces.append(buffer[data_start:data_start + length])
            position = data_start + _aligned(length)
            if cflag in (CFLAG_WHOLE, CFLAG_LAST):
                record = pieces[0] if len(pieces) == 1 else MAGIC_BYTES.join(pieces)
                return record, parts, min(offset + position, self.file_size)

    def read_at(self, offset: int) -> bytes:
        """The logical record whose first chunk starts at byte `offset`."""
        if offset >= self.file_size:
            raise RecordIOError(f"{self.rec_path}: offset {offset} is past the end of the file ({self.file_size} bytes)")
        return self.read_parts(offset)[0]

    def read_idx(self, key: int) -> bytes:
        offset = self.offset_of(key)
        try:
            return self.read_at(offset)
        except RecordIOError as error:
            raise RecordIOError(f"{error} (key {key})") from None

    def read_header_at(self, offset: int) -> IRHeader:
        """The IRHeader of the record at `offset`, reading only its first bytes (32, plus the array
        labels) when the record is one whole chunk."""
        head = os.pread(self._descriptor(), _HEAD_BYTES, max(offset, 0))
        if len(head) >= CHUNK_HEADER.size + IR_HEADER.size and 0 <= offset < self.file_size:
            magic, lrecord = CHUNK_HEADER.unpack_from(head)
            length = lrecord & MAX_CHUNK_LENGTH
            flag = IR_HEADER.unpack_from(head, CHUNK_HEADER.size)[0]
            if magic == MAGIC and lrecord >> LENGTH_BITS == CFLAG_WHOLE and length >= IR_HEADER.size + 4 * flag:
                if CHUNK_HEADER.size + IR_HEADER.size + 4 * flag > len(head):   # many labels: read them
                    head = os.pread(self._descriptor(), CHUNK_HEADER.size + IR_HEADER.size + 4 * flag, offset)
                record = head[CHUNK_HEADER.size:CHUNK_HEADER.size + IR_HEADER.size + 4 * flag]
                if len(record) == IR_HEADER.size + 4 * flag:
                    return unpack(record)[0]
        # A split header or a corrupt chunk: the full read handles (and names) them.
        record = self.read_at(offset)
        try:
            return unpack(record)[0]
        except RecordIOError as error:
            raise RecordIOError(f"{self.rec_path}: record at offset {offset}: {error}") from None

    def read_headers(self, offsets) -> HeaderTable:
        """Header fields of the records at `offsets` (any order), read in file order: in large
        sequential spans (several in flight) when records are small, or only the first
        `_HEAD_BYTES` of each record (many small reads in flight, read-ahead off) when records are
        on average `_HEADER_ONLY_MIN_SPACING` or more apart, so a rec of real face JPEGs is not
        read whole. Both give the same table.

        Returns a HeaderTable of arrays in the order of `offsets`; `ok[i]` is False where the fast
        path cannot vouch for record i (split into chunks, corrupt, too short, or outside the file):
        callers read those with `read_header_at`, which handles or names them. `labels[i]` holds the
        first two array labels (flag >= 1; the second only when flag >= 2), `label` the in-struct one.
        Memory: 13 bytes per record plus the reads in flight.
        """
        offsets = np.asarray(offsets, dtype=np.int64)
        count = len(offsets)
        table = HeaderTable(flag=np.zeros(count, dtype=np.uint32), label=np.zeros(count, dtype=np.float32),
                            labels=np.zeros((count, 2), dtype=np.float32), ok=np.zeros(count, dtype=bool))
        order = np.argsort(offsets, kind="stable")
        sorted_offsets = offsets[order]
        # records whose first _HEAD_BYTES lie inside the file; the rest stay not ok (read_header_at names them)
        inside = (sorted_offsets >= 0) & (sorted_offsets + _HEAD_BYTES <= self.file_size)
        if not inside.all():
            order, sorted_offsets = order[inside], sorted_offsets[inside]
        del inside
        if not len(sorted_offsets):
            return table
        spacing = (int(sorted_offsets[-1]) - int(sorted_offsets[0]) + _HEAD_BYTES) / len(sorted_offsets)
        # a descriptor of its own: the access-pattern advice must not reach the reader's record reads
        descriptor = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            if spacing >= _HEADER_ONLY_MIN_SPACING:
                heads = self._heads_one_by_one(descriptor, sorted_offsets)
            else:
                heads = self._heads_from_spans(descriptor, sorted_offsets)
            for positions, words in heads:
                _fill_header_table(table, order[positions], words)
        finally:
            os.close(descriptor)
        return table

    def _heads_from_spans(self, descriptor: int, sorted_offsets: np.ndarray):
        """(positions, [n, _HEAD_BYTES / 4] uint32 words) per span of the file, in file order, with
        up to _SPANS_IN_FLIGHT spans being read at once (memory: that many spans)."""
        # one reusable buffer per slot: reads land in memory allocated once, not in fresh bytes
        # objects on each thread (glibc gives every thread its own heap, which kept them: +150 MB)
        buffers = [bytearray(_SPAN_BYTES) for _ in range(_SPANS_IN_FLIGHT + 1)]

        def read(first, last, slot):
            start = int(sorted_offsets[first])
            length = int(sorted_offsets[last - 1]) + _HEAD_BYTES - start   # <= _SPAN_BYTES (see spans)
            view = memoryview(buffers[slot])[:length]
            if _pread_into(descriptor, view, start) != length:
                raise RecordIOError(f"{self.rec_path}: short read between offsets {start} and {start + length} "
                                    f"(the file changed while it was read?)")
            return view

        def spans():
            first = 0
            while first < len(sorted_offsets):
                start = int(sorted_offsets[first])
                last = max(int(np.searchsorted(sorted_offsets, start + _SPAN_BYTES - _HEAD_BYTES, side="right")),
                           first + 1)
                yield first, last
                first = last

        for (first, last), span in _in_flight(read, spans(), _SPANS_IN_FLIGHT):
            relative = sorted_offsets[first:last] - sorted_offsets[first]
            rows = np.frombuffer(span, dtype=np.uint8)[relative[:, None] + np.arange(_HEAD_BYTES)]
            yield np.arange(first, last), rows.view("<u4")

    def _heads_one_by_one(self, descriptor: int, sorted_offsets: np.ndarray):
        """(positions, words) per batch of records, reading only each record's first _HEAD_BYTES."""
        if hasattr(os, "posix_fadvise"):
            # random: the kernel reads the page asked for, not a read-ahead window around it
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_RANDOM)

        def read(first, last, slot):
            heads = b"".join([os.pread(descriptor, _HEAD_BYTES, offset)
                              for offset in sorted_offsets[first:last].tolist()])
            if len(heads) != (last - first) * _HEAD_BYTES:
                raise RecordIOError(f"{self.rec_path}: short read of record headers between offsets "
                                    f"{int(sorted_offsets[first])} and {int(sorted_offsets[last - 1])} "
                                    f"(the file changed while it was read?)")
            return heads

        batches = ((first, min(first + _HEADER_READS_PER_TASK, len(sorted_offsets)))
                   for first in range(0, len(sorted_offsets), _HEADER_READS_PER_TASK))
        for (first, last), heads in _in_flight(read, batches, _HEADER_READS_IN_FLIGHT):
            yield np.arange(first, last), np.frombuffer(heads, dtype=np.uint8).reshape(-1, _HEAD_BYTES).view("<u4")

    def __iter__(self) -> Iterator[Tuple[int, bytes]]:
        offset = 0
        while True:
            record, _, next_offset = self.read_parts(offset)
            if record is None:
                return
            yield offset, record
            offset = next_offset


class PublishOnSuccess:
    """Context manager of an atomic writer: close() publishes the output when the block ends
    normally, abort() drops everything written when it raises."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class RecordIOWriter(PublishOnSuccess):
    """Appends records to temporaries beside the rec (and idx), unique to this writer; `close()`
    renames them into place. A failed write (disk full) removes them and raises one-line WriteError."""

    def __init__(self, rec_path, idx_path=None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else None
        self._rec_file = self._idx_file = self._rec_tmp = self._idx_tmp = None
        self._position = 0
        self.closed = False
        try:
            descriptor, self._rec_tmp = unique_temporary(self.rec_path)
            self._rec_file = os.fdopen(descriptor, "wb")
            if self.idx_path is not None:
                descriptor, self._idx_tmp = unique_temporary(self.idx_path)
                self._idx_file = os.fdopen(descriptor, "w", newline="\n")
        except OSError as error:
            self._fail(error)

    def _fail(self, error: OSError):
        """Remove the temporaries, then raise the one-line WriteError for `error`."""
        self.abort()
        raise WriteError(describe_os_error(error, self.rec_path)) from None

    def tell(self) -> int:
        return self._position

    def write(self, record: bytes) -> int:
        """Append one record; returns its offset."""
        if self.closed:
            raise RecordIOError(f"{self.rec_path}: writer is closed")
        offset = self._position
        framed = frame_record(bytes(record))
        try:
            self._rec_file.write(framed)
        except OSError as error:
            self._fail(error)
        self._position += len(framed)
        return offset

    def write_idx(self, key: int, record: bytes) -> int:
        if self._idx_file is None:
            raise RecordIOError(f"{self.rec_path}: write_idx needs an idx_path")
        offset = self.write(record)
        try:
            self._idx_file.write(f"{key}\t{offset}\n")
        except OSError as error:
            self._fail(error)
        return offset

    def close(self) -> None:
        """Flush and rename the temporary files into place."""
        if self.closed:
            return
        try:
            for handle in (self._rec_file, self._idx_file):
                if handle is not None:
                    handle.flush()
                    os.fsync(handle.fileno())
                    handle.close()
            os.replace(self._rec_tmp, self.rec_path)
            if self._idx_tmp is not None:
                os.replace(self._idx_tmp, self.idx_path)
        except OSError as error:
            self._fail(error)
        self.closed = True

    def abort(self) -> None:
        """Drop everything written so far (no output file appears)."""
        if self.closed:
            return
        self.closed = True
        for handle, path in ((self._rec_file, self._rec_tmp), (self._idx_file, self._idx_tmp)):
            if handle is not None:
                try:
                    handle.close()
                except OSError:
                    pass  # the buffered tail cannot be written (disk full): the file goes anyway
            if path is not None:
                path.unlink(missing_ok=True)
