"""Re-mapping a CSV file that was loaded under a wrong mapping (``ingest(..., remap=True)``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_ingest_csv import rows
from test_ingest_stripe import customer, event, write

from workbench.config import load_settings
from workbench.ingest import IngestError, csv_files, ingest, rebuild, table_checksums, verify
from workbench.ingest.lake import Lake

T0 = 1_700_000_000

# A billing system's export: amounts in cents, days as dd/mm/yyyy.
EXPORT = """Customer ID,Name,Email,Country,Charge ID,Created,Amount,Currency,Status,Day,Calls
cus_1,Ann Smith,ann@example.com,GB,ch_1,2024-01-05 10:00:00,2900,usd,paid,31/01/2024,10
cus_2,Bob Jones,bob@example.com,DE,ch_2,2024-01-06 10:00:00,150,eur,failed,06/01/2024,7
cus_3,Cy Young,cy@example.com,FR,ch_3,2024-01-07 10:00:00,-5,usd,paid,07/01/2024,1
cus_4,Dee Park,dee@example.com,US,ch_4,2024-01-08 10:00:00,500,usd,paid,02/03/2024,4
"""

MAPPING = """name: billing_x
timezone: UTC
currency: {{column: currency}}
money_units: {units}
defaults: {{source: billing-x}}
columns:
  customer: {{headers: [Customer ID], required: true}}
  name: {{headers: [{name}]}}
  email: {{headers: [{email}]}}
  country: {{headers: [Country]}}
  charge: {{headers: [Charge ID], required: true}}
  created: {{headers: [Created], type: timestamp, required: true}}
  amount: {{headers: [Amount], type: money, required: true, min: 0}}
  currency: {{headers: [Currency], type: currency, required: true}}
  status: {{headers: [Status], map: {{paid: succeeded, failed: failed}}}}
  day: {{headers: [Day], type: date, formats: ["{day}"], required: true}}
  calls: {{headers: [Calls], type: number, required: true, min: 0}}
tables:
  accounts:
    columns: {{account_id: customer, name: name, email: email, country: country,
               currency: currency}}
  payment_attempts:
    columns: {{attempt_id: charge, account_id: customer, created: created, amount: amount,
               currency: currency, status: status}}
  usage:
    columns: {{account_id: customer, date: day, quantity: calls, metric: {{const: api_calls}}}}
"""

RIGHT = {"units": "minor", "name": "Name", "email": "Email", "day": "%d/%m/%Y"}
# cents read as dollars, name and e-mail swapped, days read as mm/dd/yyyy
WRONG = {"units": "major", "name": "Email", "email": "Name", "day": "%m/%d/%Y"}

RIGHT_ACCOUNTS = [
    ("cus_1", "Ann Smith", "ann@example.com", "GB", "billing-x"),
    ("cus_2", "Bob Jones", "bob@example.com", "DE", "billing-x"),
    ("cus_4", "Dee Park", "dee@example.com", "US", "billing-x"),
    ("cus_9", "Ada Lovelace", "ada@example.com", "GB", "stripe"),
]
RIGHT_PAYMENTS = [
    ("ch_1", "cus_1", 2900, "usd", "succeeded"),
    ("ch_2", "cus_2", 150, "eur", "failed"),
    ("ch_4", "cus_4", 500, "usd", "succeeded"),
]
ACCOUNTS_SQL = "SELECT account_id, name, email, country, source FROM accounts ORDER BY 1"
PAYMENTS_SQL = (
    "SELECT attempt_id, account_id, amount, currency, status FROM payment_attempts ORDER BY 1"
)
USAGE_SQL = "SELECT account_id, date::VARCHAR, quantity, source FROM usage ORDER BY 1, 2"


@pytest.fixture()
def settings(tmp_path: Path):
    return load_settings(root=tmp_path, overrides={"data_dir": str(tmp_path / "data")})


@pytest.fixture()
def world(settings, tmp_path: Path) -> dict:
    """Stripe events, then the export under the WRONG mapping, then another usage file."""
    stripe = write(
        tmp_path / "stripe" / "events.jsonl",
        [
            event("evt_c2", "customer.created", T0, customer("cus_2")),
            event("evt_c9", "customer.created", T0, customer("cus_9")),
        ],
    )
    assert ingest(stripe, source="stripe", settings=settings, progress=False).ok
    export = tmp_path / "export.csv"
    export.write_text(EXPORT)
    wrong, right = tmp_path / "wrong.yaml", tmp_path / "right.yaml"
    wrong.write_text(MAPPING.format(**WRONG))
    right.write_text(MAPPING.format(**RIGHT))
    first = ingest(export, source="csv", mapping=wrong, settings=settings, progress=False)
    # line 2 (31/01 is no mm/dd day) and line 4 (a negative amount) are rejected
    assert (first.files[0].accepted, first.files[0].quarantined) == (2, 2)
    # another system's usage, loaded later, for a key the wrong mapping also wrote
    other = tmp_path / "usage.csv"
    other.write_text("account_id,date,metric,quantity\ncus_2,2024-06-01,api_calls,99\n")
    assert ingest(other, source="csv", mapping="simulator_usage", settings=settings, progress=False)
    return {"export": export, "wrong": wrong, "right": right, "first": first.load_id}


def remap(world: dict, settings, *, who: str = "ops@example.com"):
    report = ingest(
        world["export"],
        source="csv",
        mapping=world["right"],
        remap=True,
        who=who,
        settings=settings,
        progress=False,
    )
    return report, report.files[0]


def test_the_wrong_mapping_made_wrong_rows(world, settings):
    # the starting point the other tests correct
    assert rows(settings, PAYMENTS_SQL) == [
        ("ch_2", "cus_2", 15000, "eur", "failed"),
        ("ch_4", "cus_4", 50000, "usd", "succeeded"),
    ]
    assert ("cus_2", "bob@example.com", "Bob Jones", "DE", "billing-x") in rows(
        settings, ACCOUNTS_SQL
    )


def test_remap_gives_exactly_the_right_rows(world, settings):
    report, f = remap(world, settings)
    assert f.status == "ok" and (f.received, f.accepted, f.quarantined, f.duplicates) == (
        4,
        3,
        1,
        0,
    )
    assert f.message.startswith("remap asked by ops@example.com: replaces load " + world["first"])
    assert rows(settings, PAYMENTS_SQL) == RIGHT_PAYMENTS
    assert rows(settings, ACCOUNTS_SQL) == RIGHT_ACCOUNTS
    assert rows(settings, USAGE_SQL) == [
        ("cus_1", "2024-01-31", 10.0, "billing-x"),
        ("cus_2", "2024-01-06", 7.0, "billing-x"),
        # written by the other file after the wrong load: not this file's row, it stays
        ("cus_2", "2024-06-01", 99.0, "simulator"),
        ("cus_4", "2024-03-02", 4.0, "billing-x"),  # the wrong 2024-02-03 row is gone
    ]
    # derived tables follow: the subscription-free export still feeds invoices/history nothing
    assert rows(settings, "SELECT count(*) FROM refunds") == [(0,)]
    assert verify(settings).ok


def test_quarantine_of_the_old_load_is_replaced_by_the_new_loads(world, settings):
    lake_path = _export_lake_path(settings)
    q = f"SELECT line, load_id FROM quarantine WHERE source_file = '{lake_path}' ORDER BY line"
    assert rows(settings, q) == [(2, world["first"]), (4, world["first"])]
    report, _ = remap(world, settings)
    assert rows(settings, q) == [(4, report.load_id)]
    # the new version of line 4 says what the right mapping found: -5 cents
    got = f"SELECT rule, value_redacted FROM quarantine WHERE source_file = '{lake_path}'"
    assert [r[1] for r in rows(settings, got)] == ["-5"]


def test_the_earlier_load_is_kept_as_superseded(world, settings):
    report, _ = remap(world, settings, who="alice")
    got = rows(
        settings,
        "SELECT load_id, status, message, mapping, received, accepted, quarantined FROM loads "
        "WHERE source = 'csv' AND original_path LIKE '%export.csv' ORDER BY finished_at",
    )
    assert [(r[0], r[1]) for r in got] == [(world["first"], "superseded"), (report.load_id, "ok")]
    old, new = got
    assert (
        old[2] == f"superseded by load {report.load_id}: re-mapped by alice with mapping {new[3]}"
    )
    assert old[3] != new[3] and old[3].startswith("_mappings/")  # which mapping, each time
    assert old[4:] == (4, 2, 2) and new[4:] == (4, 3, 1)  # the old counts stay as they were
    lake = Lake(Path(settings.data_dir) / "lake")
    assert lake.read(old[3]) == world["wrong"].read_bytes()
    assert lake.read(new[3]) == world["right"].read_bytes()


def test_a_second_identical_remap_changes_nothing(world, settings):
    remap(world, settings)
    before = table_checksums(settings)
    report, f = remap(world, settings)
    assert (f.received, f.accepted, f.duplicates) == (4, 0, 4)
    assert "nothing to do" in f.message
    after = table_checksums(settings)
    assert {k: v for k, v in after.items() if k != "loads"} == {
        k: v for k, v in before.items() if k != "loads"
    }
    assert rows(settings, f"SELECT status FROM loads WHERE load_id = '{report.load_id}'") == [
        ("ok",)
    ]
    assert rows(settings, "SELECT count(*) FROM loads WHERE status = 'superseded'") == [(1,)]


def test_a_crash_mid_remap_leaves_the_old_rows(world, settings, monkeypatch):
    before = table_checksums(settings)
    seen = {}

    def crash(batch, inp, table, frame, *, version_at):
        # the old rows are already deleted inside the transaction when this runs
        seen["csv versions"] = batch.con.execute(
            "SELECT count(*) FROM charge_versions WHERE event_id LIKE 'csv:%'"
        ).fetchall()[0][0]
        raise RuntimeError("killed mid-remap")

    monkeypatch.setattr(csv_files, "_write_table", crash)
    with pytest.raises(RuntimeError, match="killed mid-remap"):
        remap(world, settings)
    assert seen == {"csv versions": 0}
    assert table_checksums(settings) == before
    monkeypatch.undo()
    _, f = remap(world, settings)  # and the remap still works afterwards
    assert f.accepted == 3 and rows(settings, PAYMENTS_SQL) == RIGHT_PAYMENTS


def test_rows_from_another_source_with_the_same_keys_survive(world, settings):
    remap(world, settings)
    # cus_2 came from Stripe too (and from both mappings): its Stripe version stays next to
    # the file's new one
    assert rows(
        settings, "SELECT event_id FROM account_versions WHERE account_id = 'cus_2' ORDER BY 1"
    ) == [(f"csv:{_export_sha(settings)[:16]}:cus_2",), ("evt_c2",)]
    assert rows(settings, "SELECT count(*) FROM account_versions WHERE event_id = 'evt_c9'") == [
        (1,)
    ]
    assert ("cus_2", "2024-06-01", 99.0, "simulator") in rows(settings, USAGE_SQL)


def _cus_1_then_swapped_names(settings, tmp_path: Path) -> tuple[Path, Path, Path]:
    """cus_1 from Stripe; the export and a mapping that reads the day as dd/mm (so cus_1
    loads) but swaps name and e-mail: ``(export, wrong mapping, right mapping path)``."""
    stripe = write(
        tmp_path / "events.jsonl", [event("evt_c1", "customer.created", T0, customer("cus_1"))]
    )
    ingest(stripe, source="stripe", settings=settings, progress=False)
    export = tmp_path / "export.csv"
    export.write_text(EXPORT)
    wrong, right = tmp_path / "wrong.yaml", tmp_path / "right.yaml"
    wrong.write_text(MAPPING.format(**{**RIGHT, "name": "Email", "email": "Name"}))
    return export, wrong, right


def test_the_wrong_mappings_personal_data_is_not_carried_over(settings, tmp_path):
    """Names and e-mails live only in ``accounts``: the swapped ones must not survive."""
    export, wrong, right = _cus_1_then_swapped_names(settings, tmp_path)
    right.write_text(MAPPING.format(**RIGHT))
    ingest(export, source="csv", mapping=wrong, settings=settings, progress=False)
    assert rows(settings, "SELECT name FROM accounts WHERE account_id = 'cus_1'") == [
        ("ann@example.com",)
    ]
    ingest(export, source="csv", mapping=right, remap=True, settings=settings, progress=False)
    assert rows(settings, "SELECT name, email FROM accounts WHERE account_id = 'cus_1'") == [
        ("Ann Smith", "ann@example.com")
    ]


def test_a_remap_that_writes_no_accounts_takes_the_files_accounts_out(settings, tmp_path):
    export, wrong, right = _cus_1_then_swapped_names(settings, tmp_path)
    text = MAPPING.format(**RIGHT)
    start, end = text.index("  accounts:"), text.index("  payment_attempts:")
    right.write_text(text[:start] + text[end:])  # the export's customers are not accounts
    ingest(export, source="csv", mapping=wrong, settings=settings, progress=False)
    assert len(rows(settings, ACCOUNTS_SQL)) == 3
    ingest(export, source="csv", mapping=right, remap=True, settings=settings, progress=False)
    # only the Stripe account is left, without the swapped name and e-mail of the file; its
    # earlier Stripe name is not restored either: personal data is kept only in `accounts`
    assert rows(settings, ACCOUNTS_SQL) == [("cus_1", None, None, "GB", "stripe")]
    assert rows(settings, PAYMENTS_SQL) == RIGHT_PAYMENTS


def test_rebuild_after_remap_equals_the_remapped_warehouse(world, settings):
    remap(world, settings)
    before = table_checksums(settings)
    rebuild(settings)
    assert table_checksums(settings) == before
    assert rows(settings, PAYMENTS_SQL) == RIGHT_PAYMENTS
    assert verify(settings).ok


def test_rebuild_after_a_crash_that_lost_the_remap_receipt(world, settings):
    """A remap committed but stopped before writing its receipt: the receipt is written
    from the ``loads`` rows (who asked included), so a rebuild still re-maps."""
    report, _ = remap(world, settings, who="bob")
    before = table_checksums(settings)
    lake = Lake(Path(settings.data_dir) / "lake")
    lake.receipt_path(report.load_id).unlink()
    rebuild(settings)
    assert table_checksums(settings) == before
    (receipt,) = [r for r in lake.receipts() if r.load_id == report.load_id]
    assert receipt.files[0].remap_by == "bob"


def test_without_the_flag_the_file_is_not_mapped_again_and_the_message_names_the_flag(
    world, settings
):
    before = table_checksums(settings)
    f = ingest(
        world["export"], source="csv", mapping=world["right"], settings=settings, progress=False
    ).files[0]
    assert (f.accepted, f.duplicates) == (0, 4)
    assert "another mapping" in f.message and "--remap" in f.message
    after = table_checksums(settings)
    assert {k: v for k, v in after.items() if k != "loads"} == {
        k: v for k, v in before.items() if k != "loads"
    }


def test_remap_of_a_file_never_loaded_loads_it(settings, tmp_path):
    export = tmp_path / "export.csv"
    export.write_text(EXPORT)
    right = tmp_path / "right.yaml"
    right.write_text(MAPPING.format(**RIGHT))
    f = ingest(export, source="csv", mapping=right, remap=True, settings=settings, progress=False)
    assert f.files[0].accepted == 3 and f.files[0].message is None
    assert rows(settings, PAYMENTS_SQL) == RIGHT_PAYMENTS


def test_remap_is_for_csv_sources_only(settings, tmp_path):
    path = write(tmp_path / "e.jsonl", [event("evt_1", "customer.created", T0, customer())])
    with pytest.raises(IngestError, match="CSV sources only"):
        ingest(path, source="stripe", remap=True, settings=settings, progress=False)


def test_cli_remap_flag(world, settings, monkeypatch):
    from click.testing import CliRunner

    from workbench.cli import main

    monkeypatch.setattr("workbench.cli._settings", lambda ctx: settings)
    monkeypatch.setenv("WORKBENCH_USER", "carol")
    args = ["ingest", str(world["export"]), "--source", "csv", "--mapping", str(world["right"])]
    plain = CliRunner().invoke(main, args)
    assert plain.exit_code == 0, plain.output
    assert "--remap" in plain.output
    result = CliRunner().invoke(main, [*args, "--remap"])
    assert result.exit_code == 0, result.output
    assert "remap asked by carol" in result.output
    assert rows(settings, PAYMENTS_SQL) == RIGHT_PAYMENTS


def _export_sha(settings) -> str:
    return rows(settings, "SELECT file_sha256 FROM loads WHERE original_path LIKE '%export.csv'")[
        0
    ][0]


def _export_lake_path(settings) -> str:
    return rows(settings, "SELECT source_file FROM loads WHERE original_path LIKE '%export.csv'")[
        0
    ][0]


def test_the_remapped_rows_keep_the_files_receipt_time(world, settings, tmp_path):
    """A Stripe update that came after the file still wins after the re-map."""
    import time

    time.sleep(1.1)  # so the update's whole-second time falls after the file's receipt
    later = write(
        tmp_path / "stripe" / "later.jsonl",
        [
            event(
                "evt_u2",
                "customer.updated",
                int(time.time()),
                customer("cus_2", name="Robert Jones", email="rob@example.com"),
            )
        ],
    )
    assert ingest(later, source="stripe", settings=settings, progress=False).ok
    assert rows(settings, "SELECT name FROM accounts WHERE account_id = 'cus_2'") == [
        ("Robert Jones",)
    ]
    time.sleep(1.1)  # and the re-map comes after the update
    remap(world, settings)
    assert rows(settings, "SELECT name, source FROM accounts WHERE account_id = 'cus_2'") == [
        ("Robert Jones", "stripe")
    ]
    first_at = rows(settings, f"SELECT started_at FROM loads WHERE load_id = '{world['first']}'")
    assert (
        rows(
            settings, "SELECT DISTINCT version_at FROM account_versions WHERE event_id LIKE 'csv:%'"
        )
        == first_at
    )


# ----------------------------------------------------------------------------- review fixes


def _files(tmp_path: Path) -> dict[str, Path]:
    out = {"export": tmp_path / "export.csv"}
    out["export"].write_text(EXPORT)
    for name, values in (("wrong", WRONG), ("right", RIGHT)):
        out[name] = tmp_path / f"{name}.yaml"
        out[name].write_text(MAPPING.format(**values))
    return out


def _load(path: Path, settings, **kw):
    kw.setdefault("source", "csv")
    return ingest(path, settings=settings, progress=False, **kw).files[0]


def test_a_key_a_later_file_wrote_keeps_that_files_value(settings, tmp_path):
    f = _files(tmp_path)
    later = tmp_path / "later.csv"  # the key the RIGHT mapping of the export also makes
    later.write_text("account_id,date,metric,quantity\ncus_2,2024-01-06,api_calls,99\n")
    _load(f["export"], settings, mapping=f["wrong"])
    _load(later, settings, mapping="simulator_usage")
    assert _load(f["export"], settings, mapping=f["right"], remap=True).status == "ok"
    sql = "SELECT date::VARCHAR, quantity, source FROM usage WHERE account_id = 'cus_2'"
    assert rows(settings, sql) == [("2024-01-06", 99.0, "simulator")]
    before = table_checksums(settings, internal=True)
    rebuild(settings=settings)
    assert table_checksums(settings, internal=True) == before


def test_a_row_another_file_wrote_later_with_equal_values_stays(settings, tmp_path):
    f = _files(tmp_path)
    text = MAPPING.format(**RIGHT)
    no_usage = tmp_path / "no_usage.yaml"
    no_usage.write_text(text[: text.index("  usage:")])
    twin = tmp_path / "twin.csv"  # the export's cus_4 line again, from another system
    twin.write_text(EXPORT.splitlines()[0] + "\n" + EXPORT.splitlines()[4] + "\n")
    _load(f["export"], settings, mapping=f["right"])
    _load(twin, settings, mapping=f["right"])
    assert _load(f["export"], settings, mapping=no_usage, remap=True).status == "ok"
    # the export's usage is gone, the twin's identical row (its own now) stays
    assert rows(settings, USAGE_SQL) == [("cus_4", "2024-03-02", 4.0, "billing-x")]


def test_the_same_bytes_loaded_under_another_source_are_not_remapped(settings, tmp_path):
    f = _files(tmp_path)
    other = tmp_path / "b" / "export.csv"
    other.parent.mkdir()
    other.write_text(EXPORT)
    _load(f["export"], settings, mapping=f["wrong"])
    _load(other, settings, mapping=f["right"], source="stripe-csv")
    before = table_checksums(settings, internal=True)
    report = _load(f["export"], settings, mapping=f["right"], remap=True)
    assert "same bytes were also loaded as stripe-csv/" in report.message
    assert "nothing changed" in report.message
    after = table_checksums(settings, internal=True)
    assert {k: v for k, v in after.items() if k != "loads"} == {
        k: v for k, v in before.items() if k != "loads"
    }


def test_an_erased_customer_stays_erased_after_a_remap_and_a_rebuild(settings, tmp_path):
    from workbench.ingest.erase import erase_customer

    f = _files(tmp_path)
    _load(f["export"], settings, mapping=f["wrong"])  # cus_1's line is quarantined
    erase_customer("cus_1", who="dpo", why="request", settings=settings)
    _load(f["export"], settings, mapping=f["right"], remap=True)  # now cus_1 loads
    sql = "SELECT account_id, name, email FROM accounts WHERE account_id = 'cus_1'"
    assert rows(settings, sql) == [("cus_1", None, None)]
    rebuild(settings=settings)
    assert rows(settings, sql) == [("cus_1", None, None)]
    assert verify(settings=settings).ok


def test_a_remap_whose_mapping_fails_changes_nothing(settings, tmp_path):
    f = _files(tmp_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text(MAPPING.format(**RIGHT).replace("headers: [Calls]", "headers: [Calls Made]"))
    _load(f["export"], settings, mapping=f["wrong"])
    before = table_checksums(settings)
    report = _load(f["export"], settings, mapping=broken, remap=True)
    assert report.status == "failed" and report.quarantined == 0
    assert "nothing changed" in report.message
    after = table_checksums(settings)
    assert {k: v for k, v in after.items() if k != "loads"} == {
        k: v for k, v in before.items() if k != "loads"
    }
    sql = "SELECT count(*) FROM quarantine WHERE rule = 'file_rejected'"
    assert rows(settings, sql) == [(0,)]


def test_a_warehouse_without_row_provenance_asks_for_a_rebuild_first(settings, tmp_path):
    import duckdb

    f = _files(tmp_path)
    _load(f["export"], settings, mapping=f["wrong"])
    con = duckdb.connect(str(settings.warehouse_path))  # as built before upsert_sources
    con.execute("DELETE FROM upsert_sources")
    con.close()
    wrong_payments = rows(settings, PAYMENTS_SQL)
    report = _load(f["export"], settings, mapping=f["right"], remap=True)
    assert "workbench rebuild" in report.message
    assert rows(settings, PAYMENTS_SQL) == wrong_payments != RIGHT_PAYMENTS
    rebuild(settings=settings)
    assert _load(f["export"], settings, mapping=f["right"], remap=True).status == "ok"
    assert rows(settings, PAYMENTS_SQL) == RIGHT_PAYMENTS


# ----------------------------------------------------------- a rejected file that loads later


def _broken(tmp_path: Path) -> Path:
    """A mapping that does not fit the export (a header it requires is not there)."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(MAPPING.format(**RIGHT).replace("headers: [Calls]", "headers: [Calls Made]"))
    return broken


def test_a_rejected_file_that_loads_later_no_longer_stands_in_quarantine(settings, tmp_path):
    from workbench.ingest.health import ingest_health

    f = _files(tmp_path)
    first = ingest(
        f["export"], source="csv", mapping=_broken(tmp_path), settings=settings, progress=False
    )
    assert first.files[0].status == "failed" and first.files[0].quarantined == 4
    _load(f["export"], settings, mapping=_broken(tmp_path))  # the same failure again
    loaded = ingest(
        f["export"], source="csv", mapping=f["right"], settings=settings, progress=False
    )
    assert loaded.files[0].status == "ok" and loaded.files[0].accepted == 3
    # the rejection is kept, marked as resolved by the load that loaded the file
    ((load_id, message),) = rows(
        settings, "SELECT load_id, message FROM quarantine WHERE rule = 'file_rejected'"
    )
    assert load_id == first.load_id
    assert message.startswith(f"resolved: the file loaded later, in load {loaded.load_id} ")
    assert "Calls Made" in message  # what the rejection said
    # the failed loads are superseded by it, as a re-map supersedes the load it replaces
    got = rows(
        settings,
        "SELECT status, message FROM loads WHERE original_path LIKE '%export.csv' "
        "ORDER BY finished_at",
    )
    assert [r[0] for r in got] == ["superseded", "superseded", "ok"]
    assert all(
        m.startswith(f"failed; the file loaded later, in load {loaded.load_id} ")
        for _, m in got[:2]
    )
    health = ingest_health(settings)
    assert "file_rejected" not in set(health["quarantine_reasons"]["rule"])
    assert "file_rejected" not in set(health["quarantine_sample"]["rule"])
    assert len(health["quarantine_sample"]) == 1  # the negative amount still stands
    # loading it again changes nothing; a rebuild gives the same tables
    before = table_checksums(settings, internal=True)
    assert _load(f["export"], settings, mapping=f["right"]).duplicates == 4
    after = table_checksums(settings, internal=True)
    assert {k: v for k, v in after.items() if k != "loads"} == {
        k: v for k, v in before.items() if k != "loads"
    }
    rebuild(settings=settings)
    assert table_checksums(settings, internal=True) == after
    assert verify(settings=settings).ok


def test_a_remap_after_a_rejected_first_load_keeps_the_time_the_file_was_mapped(settings, tmp_path):
    f = _files(tmp_path)
    _load(f["export"], settings, mapping=_broken(tmp_path))
    wrong = ingest(f["export"], source="csv", mapping=f["wrong"], settings=settings, progress=False)
    assert _load(f["export"], settings, mapping=f["right"], remap=True).status == "ok"
    assert rows(settings, PAYMENTS_SQL) == RIGHT_PAYMENTS
    mapped_at = rows(settings, f"SELECT started_at FROM loads WHERE load_id = '{wrong.load_id}'")
    sql = "SELECT DISTINCT version_at FROM charge_versions WHERE event_id LIKE 'csv:%'"
    assert rows(settings, sql) == mapped_at
    assert rows(settings, "SELECT count(*) FROM quarantine WHERE rule = 'file_rejected'") == [(1,)]
    before = table_checksums(settings, internal=True)
    rebuild(settings=settings)
    assert table_checksums(settings, internal=True) == before


def test_a_crash_after_the_rejection_was_resolved_leaves_it_standing(
    settings, tmp_path, monkeypatch
):
    f = _files(tmp_path)
    _load(f["export"], settings, mapping=_broken(tmp_path))
    before = table_checksums(settings, internal=True)
    resolve = csv_files._resolve_rejections

    def crash(batch, inp):
        resolve(batch, inp)
        raise RuntimeError("killed after resolving")

    monkeypatch.setattr(csv_files, "_resolve_rejections", crash)
    with pytest.raises(RuntimeError, match="killed after resolving"):
        _load(f["export"], settings, mapping=f["right"])
    assert table_checksums(settings, internal=True) == before
    monkeypatch.undo()
    assert _load(f["export"], settings, mapping=f["right"]).status == "ok"
    assert rows(settings, "SELECT status FROM loads ORDER BY finished_at") == [
        ("superseded",),
        ("ok",),
    ]
