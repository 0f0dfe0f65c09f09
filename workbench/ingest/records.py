"""Turn a received JSON file into numbered records, after redacting card numbers.

Accepted layouts:

* JSON lines: one event per line (Stripe event exports, the simulator). Read
  without parsing in Python: the lines become an Arrow string column that points
  into the file's bytes, and DuckDB parses them.
* One JSON document: a single event (a webhook body), an array of events, a
  Stripe list (``{"object": "list", "data": [...]}``), or a mapping of names to
  objects (like Stripe's OpenAPI fixtures).

Objects that arrive without an event envelope (API exports, fixtures) are
wrapped as a pseudo-event ``<object>.snapshot`` whose id is derived from the
object's content, so the same object received twice is a duplicate.

Every record keeps the 1-based line of the file where it starts, and the SHA-256
of its text (the payload hash stored in ``events``): for JSON lines the line's
bytes, for documents the record's compact JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from workbench.redact import redact_pan_bytes

log = logging.getLogger(__name__)

_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_THIRTEEN = b"0" * 13
_WS = b" \t\r\n"


def redact_cards(data: bytes) -> tuple[bytes, int]:
    """Redact every Luhn-valid 13-19 digit run (see :mod:`workbench.redact`).

    A fast pre-filter (digits with spaces and dashes removed, looking for 13 in a
    row) skips files and lines that cannot hold one; only candidate lines go through
    the exact matcher.

    Returns:
        The bytes to keep (identical to ``data`` when nothing was redacted) and the
        number of runs redacted.
    """
    if data.translate(_DIGITS, b" -").find(_THIRTEEN) < 0:
        return data, 0
    parts = data.split(b"\n")
    total = 0
    for i, part in enumerate(parts):
        if part.translate(_DIGITS, b" -").find(_THIRTEEN) >= 0:
            new, n = redact_pan_bytes(part)
            if n:
                parts[i] = new
                total += n
    return (b"\n".join(parts) if total else data), total


def sha256_hex(data: bytes | memoryview) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class Records:
    """The records of one file.

    Attributes:
        table: Arrow table with ``line`` (int64, 1-based), ``text`` (the record's JSON),
            ``sha`` (hex SHA-256 of the record's bytes without its line break),
            ``problem`` (null, or e.g. ``invalid_utf8``) and ``blank`` (a blank line of a
            JSON-lines file: not a record; the staging query drops it).
        layout: ``"lines"`` or ``"document"``.
        wrapped: How many objects were wrapped as ``<object>.snapshot`` events.
        raw: For JSON lines read without copying: the file's bytes (``text`` points into
            them), with ``starts``/``ends`` the offsets of every line.
    """

    table: pa.Table
    layout: str
    wrapped: int = 0
    raw: bytes | None = None
    starts: np.ndarray | None = None
    ends: np.ndarray | None = None

    def raw_line(self, row: int) -> bytes | None:
        """The bytes of record ``row`` (JSON lines read without copying only)."""
        if self.raw is None:
            return None
        return self.raw[int(self.starts[row]) : int(self.ends[row])]

    def text_of(self, row: int) -> str:
        """Record ``row``'s text (invalid UTF-8 replaced)."""
        raw = self.raw_line(row)
        if raw is not None:
            return raw.decode("utf-8", errors="replace").rstrip("\r")
        return self.table.column("text")[row].as_py()


def is_event(value: Any) -> bool:
    """True for a dict shaped like a Stripe event (``object: event`` or ``type`` + ``data``)."""
    return isinstance(value, dict) and (
        value.get("object") == "event" or ("type" in value and "data" in value)
    )


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def wrap_snapshot(obj: dict, *, received_at: int) -> dict:
    """Wrap a bare Stripe object as a ``<object>.snapshot`` pseudo-event.

    The id is ``snap_`` + the first 24 hex digits of the SHA-256 of the object's
    compact JSON, so identical objects get identical ids. ``created`` is the object's
    own ``created`` when it is an integer, else the receipt time.
    """
    body = _compact(obj)
    created = obj.get("created")
    if not isinstance(created, int) or isinstance(created, bool):
        created = received_at
    return {
        "id": "snap_" + sha256_hex(body.encode("utf-8", "surrogatepass"))[:24],
        "object": "event",
        "type": f"{obj.get('object')}.snapshot",
        "created": created,
        "data": {"object": obj},
    }


def _maybe_wrap(value: Any, received_at: int) -> tuple[Any, bool]:
    if isinstance(value, dict) and not is_event(value) and isinstance(value.get("object"), str):
        return wrap_snapshot(value, received_at=received_at), True
    return value, False


# ----------------------------------------------------------------------------- JSON lines


def _line_bounds(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of every line (end excludes the newline)."""
    ends: list[int] = []
    find, append, pos = data.find, ends.append, 0
    while True:
        i = find(b"\n", pos)
        if i < 0:
            break
        append(i)
        pos = i + 1
    if pos < len(data):
        append(len(data))
    end = np.asarray(ends, dtype=np.int64)
    start = np.empty_like(end)
    if len(end):
        start[0] = 0
        start[1:] = end[:-1] + 1
    return start, end


def _hash_lines(data: bytes, start: np.ndarray, end: np.ndarray) -> list[str]:
    """SHA-256 of each line without its line break (a trailing CR is dropped too)."""
    mv = memoryview(data)
    sha = hashlib.sha256
    out = []
    for s, e in zip(start.tolist(), end.tolist(), strict=True):
        if e > s and data[e - 1] == 13:
            e -= 1
        out.append(sha(mv[s:e]).hexdigest())
    return out


def _lines_zero_copy(data: bytes) -> Records:
    """JSON lines as an Arrow string column pointing into ``data`` (no copy, no decoding:
    DuckDB's parser rejects a line that is not valid UTF-8 as it rejects bad JSON)."""
    start, end = _line_bounds(data)
    offsets = np.empty(len(end) + 1, dtype=np.int64)
    offsets[0] = 0
    offsets[1:] = end + 1
    if len(end):
        offsets[-1] = min(offsets[-1], len(data))
    text = pa.LargeStringArray.from_buffers(len(end), pa.py_buffer(offsets), pa.py_buffer(data))
    blank = (end - start) == 0
    for i in np.flatnonzero(((end - start) > 0) & ((end - start) <= 16)).tolist():
        blank[i] = not data[start[i] : end[i]].strip()
    table = pa.table(
        {
            "line": pa.array(np.arange(1, len(end) + 1, dtype=np.int64)),
            "text": text,
            "sha": pa.array(_hash_lines(data, start, end), type=pa.string()),
            "problem": pa.nulls(len(end), type=pa.string()),
            "blank": pa.array(blank, type=pa.bool_()),
        }
    )
    return Records(table=table, layout="lines", raw=data, starts=start, ends=end)


def _lines_python(data: bytes, received_at: int, *, wrap: bool) -> tuple[pa.Table, int]:
    """Line by line in Python: for files of bare objects (each is wrapped as a snapshot)."""
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    lines, texts, shas, problems, wrapped = [], [], [], [], 0
    for n, raw in enumerate(parts, start=1):
        problem = None
        try:
            text = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            text, problem = raw.decode("utf-8", errors="replace").rstrip("\r"), "invalid_utf8"
        if wrap and text and problem is None:
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            else:
                value, was = _maybe_wrap(value, received_at)
                if was:
                    text, wrapped = _compact(value), wrapped + 1
        lines.append(n)
        texts.append(text)
        shas.append(sha256_hex(text.encode("utf-8", "surrogatepass")) if text else "")
        problems.append(problem)
    return _table(lines, texts, shas, problems), wrapped


def _table(
    lines: list[int], texts: list[str], shas: list[str], problems: list[str | None]
) -> pa.Table:
    return pa.table(
        {
            "line": pa.array(lines, type=pa.int64()),
            "text": pa.array(texts, type=pa.large_string()),
            "sha": pa.array(shas, type=pa.string()),
            "problem": pa.array(problems, type=pa.string()),
            "blank": pa.array([not t.strip() for t in texts], type=pa.bool_()),
        }
    )


# ----------------------------------------------------------------------------- documents


class _Scanner:
    """Find where each element of a JSON container starts (for line numbers)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.decoder = json.JSONDecoder()
        self._pos = 0
        self._line = 1

    def line_of(self, index: int) -> int:
        if index < self._pos:
            self._pos, self._line = 0, 1
        self._line += self.text.count("\n", self._pos, index)
        self._pos = index
        return self._line

    def _skip(self, i: int) -> int:
        text = self.text
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def elements(self, i: int) -> list[tuple[int, str | None, Any]]:
        """Elements of the array or object starting at ``i``: (start index, key, value)."""
        text, out = self.text, []
        opener = text[i]
        closer = "]" if opener == "[" else "}"
        i = self._skip(i + 1)
        while i < len(text) and text[i] != closer:
            key = None
            if opener == "{":
                key, i = self.decoder.raw_decode(text, i)
                i = self._skip(i)
                i = self._skip(i + 1)  # the colon
            value, end = self.decoder.raw_decode(text, i)
            out.append((i, key, value))
            i = self._skip(end)
            if i < len(text) and text[i] == ",":
                i = self._skip(i + 1)
        return out


def _document_records(doc: Any, text: str) -> list[tuple[int, Any]]:
    """(line, record) pairs of a parsed document."""
    scanner = _Scanner(text)
    top = scanner._skip(0)
    if isinstance(doc, list):
        return [(scanner.line_of(i), v) for i, _, v in scanner.elements(top)]
    if not isinstance(doc, dict):
        return [(scanner.line_of(top), doc)]
    if is_event(doc) or (isinstance(doc.get("object"), str) and doc.get("object") != "list"):
        return [(scanner.line_of(top), doc)]
    # A Stripe list, or a mapping holding the records ({"resources": {...}}, {"data": [...]}).
    for key in ("data", "resources"):
        inner = doc.get(key)
        if isinstance(inner, list | dict) and inner:
            for i, k, _ in scanner.elements(top):
                if k == key:
                    return [(scanner.line_of(j), v) for j, _, v in scanner.elements(i)]
    if doc and all(isinstance(v, dict) for v in doc.values()):
        return [(scanner.line_of(j), v) for j, _, v in scanner.elements(top)]
    return [(scanner.line_of(top), doc)]


def _documents(doc: Any, text: str, received_at: int) -> tuple[pa.Table, int]:
    lines, texts, shas, wrapped = [], [], [], 0
    for line, value in _document_records(doc, text):
        value, was = _maybe_wrap(value, received_at)
        wrapped += was
        body = _compact(value)
        lines.append(line)
        texts.append(body)
        shas.append(sha256_hex(body.encode("utf-8", "surrogatepass")))
    return _table(lines, texts, shas, [None] * len(lines)), wrapped


# ----------------------------------------------------------------------------- entry point


def _first_line_value(data: bytes) -> tuple[bool, Any]:
    nl = data.find(b"\n")
    first = data if nl < 0 else data[:nl]
    try:
        return True, json.loads(first)
    except ValueError:
        return False, None


def read_records(data: bytes, *, received_at: int) -> Records:
    """Split a (redacted) JSON file into records.

    Args:
        data: The file's bytes, card numbers already redacted.
        received_at: Receipt time in unix seconds (the ``created`` of snapshots of
            objects that have none).

    Returns:
        The records with their lines and hashes.
    """
    block = data[:4096]
    start = len(block) - len(block.lstrip())
    head = data[start : start + 1]
    first_ok, first = _first_line_value(data[start : start + (1 << 24)])
    if head == b"[" or (head == b"{" and not first_ok):
        try:
            text = data.decode("utf-8")
            doc = json.loads(text)
        except ValueError:
            log.info("not one JSON document; reading it as JSON lines")
        else:
            table, wrapped = _documents(doc, text, received_at)
            return Records(table=table, layout="document", wrapped=wrapped)
    if first_ok and isinstance(first, dict) and not is_event(first):
        table, wrapped = _lines_python(data, received_at, wrap=True)
        return Records(table=table, layout="lines", wrapped=wrapped)
    return _lines_zero_copy(data)
