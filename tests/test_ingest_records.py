"""Files into numbered records; card numbers redacted before anything else."""

from __future__ import annotations

import hashlib
import json

import pytest

from workbench.ingest.records import read_records, redact_cards, wrap_snapshot
from workbench.redact import contains_pan


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ('{"d":"card 4242424242424242 now"}', 1),
        ('{"d":"card 4242 4242 4242 4242"}\n{"d":"and 3782-822463-10005"}', 2),
        ('{"created":1700000000,"amount":123456789012}', 0),  # 12 digits, not a card
        ('{"n":"4242424242424241"}', 0),  # fails Luhn
        ('{"id":"cus_00000000000000"}', 0),  # zero-padded ids are not card numbers
        ("no digits at all", 0),
    ],
)
def test_redact_cards(text, count):
    data = text.encode()
    out, n = redact_cards(data)
    assert n == count
    assert not contains_pan(out.decode())
    assert out.decode().count("[REDACTED PAN ****") == count
    if count == 0:
        assert out is data  # untouched bytes, not a copy


def test_redaction_keeps_other_lines_byte_exact():
    lines = [b'{"a": 1}', b'{"d": "pay with 5555 5555 5555 4444"}\r', b"", b'{"b": "\xc3\xa9"}']
    out, n = redact_cards(b"\n".join(lines))
    got = out.split(b"\n")
    assert n == 1 and got[0] == lines[0] and got[2:] == lines[2:]
    assert got[1] == b'{"d": "pay with [REDACTED PAN ****4444]"}\r'


def test_json_lines_with_blank_crlf_and_broken_lines():
    data = b'{"id":"evt_1","type":"t","created":1,"data":{"object":{}}}\r\n\n  \n{"id":"evt_2"\n{"id":"evt_3"}'
    rec = read_records(data, received_at=0)
    t = rec.table.to_pydict()
    assert rec.layout == "lines"
    assert t["line"] == [1, 2, 3, 4, 5]
    assert t["blank"] == [False, True, True, False, False]
    first = b'{"id":"evt_1","type":"t","created":1,"data":{"object":{}}}'
    assert t["sha"][0] == hashlib.sha256(first).hexdigest()  # the line's bytes, without CR LF
    assert rec.text_of(3) == '{"id":"evt_2"'


def test_document_layouts_keep_line_numbers():
    events = [
        {"id": f"evt_{i}", "object": "event", "type": "x.y", "created": 1, "data": {"object": {}}}
        for i in range(3)
    ]
    array = json.dumps(events, indent=2)
    rec = read_records(array.encode(), received_at=0)
    lines = array.splitlines()
    assert rec.layout == "document"
    for line, text in zip(
        rec.table["line"].to_pylist(), rec.table["text"].to_pylist(), strict=True
    ):
        assert lines[line - 1].strip() == "{"
        assert json.loads(text)["id"] in {"evt_0", "evt_1", "evt_2"}
    single = json.dumps(events[1], indent=2)
    rec = read_records(("\n\n" + single).encode(), received_at=0)
    assert rec.table["line"].to_pylist() == [3]
    listed = json.dumps({"object": "list", "data": events, "has_more": False}, indent=1)
    assert read_records(listed.encode(), received_at=0).table.num_rows == 3


def test_bare_objects_become_snapshots_with_content_ids():
    customer = {"id": "cus_1", "object": "customer", "created": 1_600_000_000, "name": "A"}
    undated = {"id": "price_1", "object": "price", "currency": "usd"}
    wrapped = wrap_snapshot(customer, received_at=5)
    assert wrapped["type"] == "customer.snapshot" and wrapped["created"] == 1_600_000_000
    assert wrap_snapshot(dict(customer), received_at=9)["id"] == wrapped["id"]
    assert wrap_snapshot(dict(customer, name="B"), received_at=5)["id"] != wrapped["id"]
    assert wrap_snapshot(undated, received_at=7)["created"] == 7
    # a mapping of names to objects (like Stripe's OpenAPI fixtures), and JSON lines of objects
    doc = json.dumps({"resources": {"customer": customer, "price": undated}}, indent=2)
    rec = read_records(doc.encode(), received_at=7)
    assert rec.wrapped == 2
    assert [json.loads(t)["type"] for t in rec.table["text"].to_pylist()] == [
        "customer.snapshot",
        "price.snapshot",
    ]
    lines = (json.dumps(customer) + "\n" + json.dumps(undated) + "\n").encode()
    rec = read_records(lines, received_at=7)
    assert rec.wrapped == 2 and rec.table["line"].to_pylist() == [1, 2]


def test_load_ids_never_read_as_card_numbers(monkeypatch):
    """A quarantine message names load ids (e.g. "the file loaded later, in load ..."), and
    verify fails on anything in quarantine that reads as a card number: no load id may."""
    import uuid
    from datetime import UTC, datetime

    from workbench.ingest.loader import new_load_id
    from workbench.redact import contains_pan

    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID("90a6f610" + "0" * 24))
    ids = [
        new_load_id(datetime(2026, 11, 27, 10, 58, 39, 409000 + us, tzinfo=UTC))
        for us in range(200)
    ]
    assert len(set(ids)) == 200 and ids == sorted(ids)
    assert not [i for i in ids if contains_pan(f"in load {i} (mapping ...)")]
