"""Rebuild from the lake gives the same warehouse; erasure removes a customer's personal data."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import pytest

from workbench.config import load_settings
from workbench.ingest import erase_customer, ingest, rebuild, table_checksums, verify
from workbench.ingest.lake import Lake
from workbench.ingest.sample_events import sample_events, write_jsonl


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A warehouse from three loads: events in two files, a re-delivery and a webhook body."""
    root = tmp_path_factory.mktemp("built")
    settings = load_settings(root=root, overrides={"data_dir": str(root / "data")})
    events = sample_events(accounts=12, months=6, seed=3)
    a = write_jsonl(events[: len(events) // 2], root / "in" / "a.jsonl")
    b = write_jsonl(events[len(events) // 2 :], root / "in" / "b.jsonl")
    ingest([a, b], settings=settings, progress=False)
    # a conflicting re-delivery and a malformed line: arrival order decides what stands
    changed = json.loads(json.dumps(events[5]))
    changed["data"]["object"]["description"] = "changed"
    c = root / "in" / "c.jsonl"
    c.write_text(json.dumps(changed) + "\n" + json.dumps(events[6])[:30] + "\n")
    ingest(c, settings=settings, progress=False)
    body = root / "in" / "hook.json"
    body.write_text(json.dumps(events[1], indent=2))
    ingest(body, source="webhook", settings=settings, progress=False)
    return root / "data", events


@pytest.fixture()
def loaded(built, tmp_path: Path):
    """A private copy of the built data folder (lake and warehouse)."""
    data, events = built
    shutil.copytree(data, tmp_path / "data")
    return load_settings(root=tmp_path, overrides={"data_dir": str(tmp_path / "data")}), events


def rows(settings, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def test_rebuild_recreates_identical_tables(loaded):
    settings, _ = loaded
    before = table_checksums(settings)
    assert int(before["quarantine"].split(":")[0]) == 2  # the conflict and the cut line
    report = rebuild(settings)
    assert report.loads == 3 and report.files == 4
    assert table_checksums(settings) == before  # every table, load ids and times included
    assert verify(settings).ok


def test_rebuild_from_the_lake_alone(loaded):
    settings, _ = loaded
    before = table_checksums(settings)
    Path(settings.warehouse_path).unlink()
    rebuild(settings)
    assert table_checksums(settings) == before


def test_erase_customer_everywhere(loaded, tmp_path):
    settings, events = loaded
    # "Customer 11": no other customer's name or e-mail contains it
    cid, name, email = rows(
        settings, "SELECT account_id, name, email FROM accounts WHERE name = 'Customer 11'"
    )[0]
    other = rows(
        settings,
        "SELECT account_id, name, email FROM accounts WHERE account_id <> ? LIMIT 1",
        [cid],
    )[0]
    lake = Lake(Path(settings.data_dir) / "lake")
    assert any(email.encode() in lake.read(rel) for rel in lake.objects())
    before = {t: v for t, v in table_checksums(settings).items()}

    report = erase_customer(cid, who="dpo@example.com", why="ticket GDPR-17", settings=settings)
    assert report.files_rewritten >= 1 and report.values_erased >= 2
    # nothing of them left in the lake or the warehouse
    for rel in lake.objects():
        data = lake.read(rel)
        assert email.encode() not in data and name.encode() not in data, rel
    assert rows(settings, "SELECT name, email FROM accounts WHERE account_id = ?", [cid]) == [
        (None, None)
    ]
    # everyone else untouched; the customer's non-personal facts remain
    assert rows(
        settings, "SELECT account_id, name, email FROM accounts WHERE account_id = ?", [other[0]]
    ) == [other]
    assert rows(settings, "SELECT count(*) FROM invoices WHERE account_id = ?", [cid])[0][0] > 0
    after = table_checksums(settings)
    for table in (
        "subscriptions",
        "subscription_history",
        "invoices",
        "invoice_lines",
        "payment_attempts",
        "prices",
        "loads",
    ):
        assert after[table] == before[table], table
    # who and why are recorded, in the lake and in the warehouse
    log = [json.loads(line) for line in lake.erasure_log.read_text().splitlines()]
    assert {(e["who"], e["why"], e["customer_id"]) for e in log} == {
        ("dpo@example.com", "ticket GDPR-17", cid)
    }
    assert all(e["old_sha256"] != e["new_sha256"] for e in log if e["lake_file"])
    assert rows(settings, "SELECT DISTINCT who, why FROM erasures") == [
        ("dpo@example.com", "ticket GDPR-17")
    ]
    check = verify(settings)
    assert check.ok, str(check)
    # the lake still rebuilds the same (erased) warehouse, and a second erasure changes nothing
    snapshot = table_checksums(settings)
    again = erase_customer(cid, who="dpo@example.com", why="ticket GDPR-17", settings=settings)
    assert again.files_rewritten == 0
    assert {k: v for k, v in table_checksums(settings).items() if k != "erasures"} == {
        k: v for k, v in snapshot.items() if k != "erasures"
    }


def test_erase_needs_who_and_why(loaded):
    settings, _ = loaded
    with pytest.raises(ValueError, match="who"):
        erase_customer("cus_x", who=" ", why="because", settings=settings)


def test_tampered_lake_fails_verification(loaded, tmp_path):
    settings, _ = loaded
    lake = Lake(Path(settings.data_dir) / "lake")
    rel = lake.objects()[0]
    target = lake.path(rel)
    target.chmod(0o644)
    target.write_bytes(target.read_bytes() + b"\n")
    report = verify(settings)
    assert not report.ok and [c.name for c in report.failed()] == ["lake_files"]
    shutil.rmtree(lake.root / "_receipts")
    assert "receipts" in [c.name for c in verify(settings, check_lake=False).failed()]


def test_only_the_newest_load_may_wait_for_its_receipt(tmp_path):
    """A crash between a load's commit and its receipt leaves the newest load without one:
    verify calls that pending (the next ingest writes it); any other gap is a failure."""
    settings = load_settings(overrides={"data_dir": str(tmp_path / "data")})
    events = sample_events(accounts=4, months=3, seed=5)
    for i, part in enumerate((events[: len(events) // 2], events[len(events) // 2 :])):
        ingest(write_jsonl(part, tmp_path / f"in{i}.jsonl"), settings=settings, progress=False)
    lake = Lake(Path(settings.data_dir) / "lake")
    oldest, newest = sorted(lake.receipt_ids())
    newest_path = lake.receipt_path(newest)
    saved = newest_path.read_bytes()
    newest_path.unlink()
    check = {c.name: c for c in verify(settings, check_lake=False).checks}["receipts"]
    assert check.ok and "committed just before a stop" in check.detail
    newest_path.write_bytes(saved)
    lake.receipt_path(oldest).unlink()
    assert "receipts" in [c.name for c in verify(settings, check_lake=False).failed()]


def test_erase_covers_csv_rows_that_never_reached_accounts(tmp_path):
    """A customer's CSV lines that were quarantined (a negative amount; a second line whose
    name differs; a file that failed): their names and e-mails are erased from the lake and
    the quarantine too."""
    from test_csv_remap import EXPORT, MAPPING, RIGHT

    settings = load_settings(root=tmp_path, overrides={"data_dir": str(tmp_path / "data")})
    export = tmp_path / "export.csv"
    # cus_3's only line has a negative amount; cus_4's second line gives another name
    export.write_text(
        EXPORT + "cus_4,Dee Parker,dee@work.example.com,US,ch_5,2024-01-09 10:00:00,500,usd,"
        "paid,03/03/2024,4\n"
    )
    mapping = tmp_path / "billing_x.yaml"
    mapping.write_text(MAPPING.format(**RIGHT))
    f = ingest(export, source="csv", mapping=mapping, settings=settings, progress=False).files[0]
    assert (f.accepted, f.quarantined) == (3, 2)
    failed = tmp_path / "failed.csv"  # cus_3's line again, in a file its mapping does not fit
    failed.write_text("\n".join(EXPORT.splitlines()[0:4:3]) + "\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text(mapping.read_text().replace("headers: [Calls]", "headers: [Calls Made]"))
    report = ingest(failed, source="csv", mapping=broken, settings=settings, progress=False)
    assert report.files[0].status == "failed"
    quarantine = "SELECT line, rule, message, value_redacted FROM quarantine ORDER BY line"
    assert [r[:2] for r in rows(settings, quarantine)] == [
        (4, "not_negative"),
        (6, "conflict"),
        (None, "file_rejected"),
    ]

    personal = ("Cy Young", "cy@example.com", "Dee Park", "dee@example.com", "dee@work.example")
    for cid in ("cus_3", "cus_4"):
        erase_customer(cid, who="dpo@example.com", why="ticket GDPR-18", settings=settings)
    lake = Lake(Path(settings.data_dir) / "lake")
    for rel in lake.objects():
        data = lake.read(rel).decode()
        assert not [p for p in personal if p in data], rel
    got = str(rows(settings, quarantine))
    assert not [p for p in personal if p in got], got
    assert "'-5'" in got  # cus_3's line is still quarantined for its amount
    # the other customers keep theirs; the erased ones keep their non-personal rows
    assert rows(settings, "SELECT account_id, name, email FROM accounts ORDER BY 1") == [
        ("cus_1", "Ann Smith", "ann@example.com"),
        ("cus_2", "Bob Jones", "bob@example.com"),
        ("cus_4", None, None),
    ]
    # cus_4's second line differed only by its name: without it, it is no conflict and loads
    assert rows(settings, "SELECT attempt_id FROM payment_attempts ORDER BY 1") == [
        ("ch_1",),
        ("ch_2",),
        ("ch_4",),
        ("ch_5",),
    ]
    assert verify(settings).ok
    before = table_checksums(settings)
    rebuild(settings)
    assert table_checksums(settings) == before


def test_erase_keeps_a_csv_account_whose_mapping_requires_a_name(tmp_path):
    """RavenStack's mapping requires the account name: an empty one would quarantine the
    erased account's line on the rebuild, and its account would be gone."""
    from test_ingest_csv import RAVEN

    settings = load_settings(root=tmp_path, overrides={"data_dir": str(tmp_path / "data")})
    accounts = RAVEN / "ravenstack_accounts.csv"
    ingest(accounts, source="csv", mapping="ravenstack_accounts", settings=settings, progress=False)
    (cid, name, country), *_ = rows(
        settings, "SELECT account_id, name, country FROM accounts ORDER BY 1"
    )
    erase_customer(cid, who="dpo@example.com", why="ticket GDPR-19", settings=settings)
    got = "SELECT name, country FROM accounts WHERE account_id = ?"
    assert rows(settings, got, [cid]) == [(None, country)]
    assert rows(settings, "SELECT count(*) FROM quarantine") == [(0,)]
    lake = Lake(Path(settings.data_dir) / "lake")
    assert not [rel for rel in lake.objects() if f"{cid},{name},".encode() in lake.read(rel)]
    assert verify(settings).ok


def test_erase_covers_the_landing_zone(tmp_path):
    """``data/landing/`` is the inbox that ``ingest_landing`` (``01_ingest``, every nightly run)
    reads again each time: webhook bodies, Stripe exports, CSV exports stay there after they
    are loaded. Erase rewrites them as it rewrites the lake (the same scrubber; a copy already
    loaded becomes its erased lake object), logs each rewrite, and the next ingest knows the
    rewritten files as the ones it loaded: nothing new is stored, nothing counted twice."""
    from workbench.ingest import ingest_landing
    from workbench.ingest.lake import sha256_file
    from workbench.webhooks import compute_signature, make_server

    settings = load_settings(root=tmp_path, overrides={"data_dir": str(tmp_path / "data")})
    data = Path(settings.data_dir)
    landing = data / "landing"
    events = sample_events(accounts=4, months=3, seed=7)
    customer = next(
        e["data"]["object"]
        for e in events
        if e["type"] == "customer.created" and "1" in e["data"]["object"]["name"]
    )
    cid, name, email = customer["id"], customer["name"], customer["email"]
    theirs = [e for e in events if cid in json.dumps(e)]
    assert name == "Customer 1" and len(theirs) > 3
    # a Stripe export of everything, and a card number in a line that is not about them
    other = next(e for e in events if cid not in json.dumps(e))
    with_card = json.loads(json.dumps(other))
    with_card["id"] = "evt_card_in_text"
    with_card["data"]["object"]["metadata"] = {"note": "card 4242 4242 4242 4242"}
    export = write_jsonl(events, landing / "stripe" / "events.jsonl")
    cards = write_jsonl([with_card], landing / "stripe" / "cards.jsonl")
    # a customers export (its mapping is detected from the header)
    customers = landing / "csv" / "customers.csv"
    customers.parent.mkdir(parents=True)
    customers.write_text(
        f"id,Name,Email,Created (UTC),Currency\n{cid},{name},{email},2023-01-20 10:25,usd\n"
        "cus_zz,Zed Zulu,zed@example.com,2023-01-21 10:25,usd\n"
    )
    # their events received as webhooks, through the receiver
    server = make_server(0, settings=settings, secrets=["whsec_x"], tolerance=None)
    server.server_close()
    rx = server.receiver

    def deliver(event: dict):
        body = json.dumps(event).encode()
        header = f"t=1700000000,v1={compute_signature('whsec_x', 1700000000, body)}"
        return rx.handle(body, header, remote="127.0.0.1")

    for event in theirs[:-1]:
        assert deliver(event).status == 200
    ingest_landing(settings, progress=False)
    # the last one lands after the ingest: not loaded yet when the erasure comes
    late = deliver(theirs[-1]).path
    before = {p: p.read_bytes() for p in landing.rglob("*") if p.is_file()}
    assert sum(email.encode() in b for b in before.values()) >= 4
    lake = Lake(data / "lake")
    lake_objects = set(lake.objects())

    report = erase_customer(cid, who="dpo@example.com", why="ticket GDPR-20", settings=settings)
    after = {p: p.read_bytes() for p in landing.rglob("*") if p.is_file()}
    assert set(after) == set(before)  # nothing added or removed
    left = [p for p, b in after.items() if email.encode() in b or name.encode() in b]
    assert not left, left
    # lines not about them keep their bytes, card numbers included (not the erasure's business)
    assert after[cards] == before[cards]
    kept = [ln for ln in before[export].split(b"\n") if cid.encode() not in ln]
    assert [ln for ln in after[export].split(b"\n") if cid.encode() not in ln] == kept
    # every rewrite is in the erasure log, with the hashes before and after
    logged = {e["landing_file"]: e for e in lake.erasures() if e.get("landing_file")}
    rewritten = {str(p.relative_to(data)) for p in after if after[p] != before[p]}
    assert set(logged) == rewritten and len(rewritten) == report.landing_files_rewritten
    assert {str(late.relative_to(data)), "landing/stripe/events.jsonl"} <= rewritten
    assert "landing/csv/customers.csv" in rewritten
    for rel, entry in logged.items():
        assert entry["old_sha256"] == hashlib.sha256(before[data / rel]).hexdigest()
        assert entry["new_sha256"] == sha256_file(data / rel)
        assert (entry["who"], entry["why"], entry["customer_id"]) == (
            "dpo@example.com",
            "ticket GDPR-20",
            cid,
        )
    assert verify(settings).ok
    # a second erasure changes nothing
    assert (
        erase_customer(cid, who="dpo", why="again", settings=settings).landing_files_rewritten == 0
    )
    assert {p: p.read_bytes() for p in landing.rglob("*") if p.is_file()} == after

    # the next ingest knows every rewritten copy as the file it loaded: only the late body is new
    reports = ingest_landing(settings, progress=False)
    assert set(lake.objects()) - lake_objects == {
        f.lake_path for _, r in reports for f in r.files if f.path == str(late)
    }
    for _, r in reports:
        for f in r.files:
            if f.path != str(late):
                assert (f.accepted, f.quarantined, f.duplicates) == (0, 0, f.received), f
    assert not [rel for rel in lake.objects() if email.encode() in lake.read(rel)]
    # Stripe delivering one of their events again does not bring the data back into landing
    again = deliver(theirs[0])
    assert again.status == 200 and again.body["duplicate"]
    assert {p: p.read_bytes() for p in landing.rglob("*") if p.is_file()} == after
    assert rows(settings, "SELECT name, email FROM accounts WHERE account_id = ?", [cid]) == [
        (None, None)
    ]
    assert verify(settings).ok
    before = table_checksums(settings)
    rebuild(settings)
    assert table_checksums(settings) == before


def test_an_erasure_stopped_in_the_landing_zone_is_finished_by_a_rerun(tmp_path, monkeypatch):
    """Killed after the first landing file was rewritten: the store is consistent (the lake
    erased and logged, the warehouse not rebuilt yet) and a rerun finishes the landing zone."""
    from workbench.ingest import erase as erase_module
    from workbench.ingest import ingest_landing

    settings = load_settings(root=tmp_path, overrides={"data_dir": str(tmp_path / "data")})
    landing = Path(settings.data_dir) / "landing"
    events = sample_events(accounts=4, months=3, seed=7)
    write_jsonl(events[0::2], landing / "stripe" / "a.jsonl")
    write_jsonl(events[1::2], landing / "stripe" / "b.jsonl")
    ingest_landing(settings, progress=False)
    ((cid, email),) = rows(
        settings, "SELECT account_id, email FROM accounts WHERE name = 'Customer 1'"
    )
    files = sorted(landing.rglob("*.jsonl"))
    assert all(email.encode() in p.read_bytes() for p in files)
    real = erase_module.atomic_write_bytes
    written = []

    def stop_after_one(path, data):
        if written:
            raise OSError("killed")
        written.append(path)
        real(path, data)

    monkeypatch.setattr(erase_module, "atomic_write_bytes", stop_after_one)
    with pytest.raises(OSError, match="killed"):
        erase_customer(cid, who="dpo@example.com", why="ticket GDPR-21", settings=settings)
    monkeypatch.undo()
    assert [email.encode() in p.read_bytes() for p in files] == [False, True]
    assert verify(settings).ok
    report = erase_customer(cid, who="dpo@example.com", why="ticket GDPR-21", settings=settings)
    assert (report.files_rewritten, report.landing_files_rewritten) == (0, 1)
    assert not [p for p in files if email.encode() in p.read_bytes()]
    assert verify(settings).ok
    for _, r in ingest_landing(settings, progress=False):
        assert len(r.files) == 2 and all(f.duplicates == f.received > 0 for f in r.files)


def test_erase_covers_a_csv_row_with_a_quoted_line_break(tmp_path) -> None:
    """A Stripe customers export whose Description holds a line break (valid CSV, which the
    mapping reads as one row): the name and e-mail sit on the row's second physical line,
    which does not hold the customer's id, so the line-by-line scrub never looks at them."""
    from workbench.ingest import erase_customer, ingest_landing, verify
    from workbench.ingest.lake import Lake

    settings = load_settings(root=tmp_path, overrides={"data_dir": str(tmp_path / "data")})
    landing = Path(settings.data_dir) / "landing" / "csv"
    landing.mkdir(parents=True)
    export = landing / "customers.csv"
    export.write_text(
        "id,Description,Name,Email,Created (UTC),Currency\n"
        'cus_ml1,"VIP\nsince 2020",Jane Roe,jane@roe.example.com,2023-01-20 10:25,usd\n'
        "cus_zz,,Zed Zulu,zed@example.com,2023-01-21 10:25,usd\n"
    )
    [(_, report)] = ingest_landing(settings, progress=False)
    assert report.files[0].accepted == 2, report.files[0]
    erase_customer("cus_ml1", who="dpo@example.com", why="ticket R14", settings=settings)
    lake = Lake(Path(settings.data_dir) / "lake")
    left = [rel for rel in lake.objects() if b"Jane Roe" in lake.read(rel)]
    left += [str(export)] if b"Jane Roe" in export.read_bytes() else []
    assert not left, left
    assert verify(settings).ok
