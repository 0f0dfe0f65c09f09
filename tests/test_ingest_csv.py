"""CSV exports through workbench.csv_mapping: persisted via the same lake, quarantine and loads."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from workbench.config import load_settings
from workbench.ingest import ingest, rebuild, table_checksums, verify
from workbench.ingest.lake import Lake
from workbench.redact import contains_pan

EXTERNAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "external"
RAVEN = EXTERNAL / "saas" / "ravenstack"


@pytest.fixture()
def settings(tmp_path: Path):
    return load_settings(root=tmp_path, overrides={"data_dir": str(tmp_path / "data")})


def rows(settings, sql: str) -> list[tuple]:
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


PAYMENTS = """id,Created (UTC),Amount,Amount Refunded,Currency,Status,Customer ID,Customer Email,Card Brand,Card Last4,Invoice ID
ch_1,2024-01-05 10:00:00,29.00,0.00,usd,Paid,cus_1,ann@example.com,Visa,4242,in_1
ch_2,2024-01-06 10:00:00,1234.50,0.00,eur,Failed,cus_2,bob@example.com,MasterCard,4444,in_2
ch_3,2024-01-07 10:00:00,-5.00,0.00,usd,Paid,cus_3,cy@example.com,Visa,1881,in_3
ch_4,2024-01-08 10:00:00,5000,0.00,jpy,Paid,cus_4,dee@example.com,Visa,0005,in_4
"""


def test_dashboard_payments_export(settings, tmp_path):
    path = tmp_path / "payments.csv"
    path.write_text(PAYMENTS)
    report = ingest(
        path, source="stripe-csv", mapping="stripe_payments", settings=settings, progress=False
    )
    (f,) = report.files
    assert (f.received, f.accepted, f.quarantined, f.duplicates) == (4, 3, 1, 0)
    assert rows(
        settings, "SELECT attempt_id, amount, currency, status FROM payment_attempts ORDER BY 1"
    ) == [
        ("ch_1", 2900, "usd", "succeeded"),
        ("ch_2", 123450, "eur", "failed"),
        ("ch_4", 5000, "jpy", "succeeded"),
    ]
    (line, rule, value) = rows(settings, "SELECT line, rule, value_redacted FROM quarantine")[0]
    assert line == 4 and rule and "-5" in value
    # the export's e-mail column is not kept anywhere in the warehouse
    assert rows(settings, "SELECT count(*) FROM accounts") == [(0,)]
    # same file again: nothing changes
    before = table_checksums(settings)
    again = ingest(
        path, source="stripe-csv", mapping="stripe_payments", settings=settings, progress=False
    )
    assert again.files[0].duplicates == 4
    assert {k: v for k, v in table_checksums(settings).items() if k != "loads"} == {
        k: v for k, v in before.items() if k != "loads"
    }


def test_real_dashboard_header_maps(settings, tmp_path):
    report = ingest(
        EXTERNAL / "stripe" / "dashboard_payments_header.csv",
        source="stripe-csv",
        mapping="stripe_payments",
        settings=settings,
        progress=False,
    )
    (f,) = report.files
    assert f.status == "ok" and f.received == 0


def test_a_file_whose_shape_changed_fails_alone(settings, tmp_path):
    good = tmp_path / "in" / "a_good.csv"
    broken = tmp_path / "in" / "b_broken.csv"
    good.parent.mkdir()
    good.write_text(PAYMENTS)
    # a newer export without the Amount column
    broken.write_text(
        "\n".join(
            ",".join(c for i, c in enumerate(line.split(",")) if i != 2)
            for line in PAYMENTS.splitlines()
        )
        + "\n"
    )
    report = ingest(
        good.parent,
        source="stripe-csv",
        mapping="stripe_payments",
        settings=settings,
        progress=False,
    )
    by_name = {Path(f.path).name: f for f in report.files}
    assert by_name["a_good.csv"].status == "ok" and by_name["a_good.csv"].accepted == 3
    failed = by_name["b_broken.csv"]
    assert failed.status == "failed" and "Amount" in failed.message
    assert (failed.received, failed.accepted, failed.quarantined) == (4, 0, 4)
    assert rows(
        settings, "SELECT status, message LIKE '%Amount%' FROM loads ORDER BY source_file"
    ) and sorted(r[0] for r in rows(settings, "SELECT status FROM loads")) == ["failed", "ok"]
    assert rows(settings, "SELECT rule FROM quarantine WHERE line IS NULL") == [("file_rejected",)]
    assert rows(settings, "SELECT count(*) FROM payment_attempts") == [(3,)]
    assert verify(settings).ok


def test_ravenstack_exports_and_rebuild(settings):
    for name in ("accounts", "subscriptions", "support_tickets"):
        report = ingest(
            RAVEN / f"ravenstack_{name}.csv",
            source="csv",
            mapping=f"ravenstack_{name}",
            settings=settings,
            progress=False,
        )
        assert report.ok and report.files[0].accepted == report.files[0].received > 0
    assert rows(settings, "SELECT count(*) FROM accounts") == [(500,)]
    assert rows(settings, "SELECT count(*) FROM subscriptions") == [(5000,)]
    # the mapping's own validity intervals are kept as given
    assert (
        rows(settings, "SELECT count(*), count(valid_to) FROM subscription_history")[0][0] == 5000
    )
    assert rows(settings, "SELECT count(*) FROM support_tickets") == [(2000,)]
    before = table_checksums(settings)
    rebuild(settings)
    assert table_checksums(settings) == before
    assert verify(settings).ok


def test_simulator_csvs_with_a_card_number(settings, tmp_path):
    tickets = tmp_path / "support_tickets.csv"
    tickets.write_text(
        "ticket_id,account_id,created_at,severity,category,status,resolved_at,first_response_minutes,subject,body\n"
        "T1,cus_1,2024-01-01T10:00:00Z,high,billing,closed,2024-01-02T10:00:00Z,30,Card,"
        '"My card is 4242-4242-4242-4242, exp 12/29."\n'
        "T2,cus_2,2024-01-03T10:00:00Z,low,other,open,,,Hello,fine\n"
    )
    report = ingest(
        tickets,
        source="csv",
        mapping="simulator_support_tickets",
        settings=settings,
        progress=False,
    )
    (f,) = report.files
    assert f.redactions == 1 and f.accepted == 2
    lake = Lake(Path(settings.data_dir) / "lake")
    assert not contains_pan(lake.read(f.lake_path).decode())
    assert rows(settings, "SELECT ticket_id, severity FROM support_tickets ORDER BY 1") == [
        ("T1", "high"),
        ("T2", "low"),
    ]


def test_one_key_twice_in_a_file_is_a_duplicate_or_a_conflict(settings, tmp_path):
    csv = tmp_path / "usage.csv"
    csv.write_text(
        "account_id,date,metric,quantity\n"
        "cus_A,2024-01-01,api_calls,10\n"
        "cus_A,2024-01-01,api_calls,999\n"  # same key, another value: the later line is refused
        "cus_B,2024-01-01,api_calls,5\n"
        "cus_B,2024-01-01,api_calls,5\n"  # the same record sent twice
    )
    f = ingest(csv, source="csv", mapping="simulator_usage", settings=settings, progress=False)
    f = f.files[0]
    assert (f.received, f.accepted, f.quarantined, f.duplicates) == (4, 2, 1, 1)
    assert rows(settings, "SELECT account_id, quantity FROM usage ORDER BY 1") == [
        ("cus_A", 10.0),
        ("cus_B", 5.0),
    ]
    ((line, rule, message),) = rows(settings, "SELECT line, rule, message FROM quarantine")
    assert (line, rule) == (3, "conflict") and "999.0 here but 10.0 on line 2" in message


def test_a_conflict_over_a_name_or_e_mail_keeps_them_out_of_quarantine(settings, tmp_path):
    from test_csv_remap import EXPORT, MAPPING, RIGHT

    export = tmp_path / "export.csv"  # cus_4 again, another e-mail and name
    export.write_text(
        EXPORT + "cus_4,Dee Parker,dee@work.example.com,US,ch_5,2024-01-09 10:00:00,500,usd,"
        "paid,03/03/2024,4\n"
    )
    mapping = tmp_path / "billing_x.yaml"
    mapping.write_text(MAPPING.format(**RIGHT))
    ingest(export, source="csv", mapping=mapping, settings=settings, progress=False)
    got = rows(settings, "SELECT line, rule, message, value_redacted FROM quarantine ORDER BY 1")
    assert [(r[0], r[1]) for r in got] == [(4, "not_negative"), (6, "conflict")]
    assert "name differs from line 5" in got[1][2]
    assert not [p for p in ("Dee Park", "dee@") if p in str(got)], got
    assert verify(settings).ok


def test_table_contract_rejects_keep_one_quarantine_row_per_line(settings, tmp_path):
    csv = tmp_path / "export.csv"
    csv.write_text(
        "Customer ID,Day,Calls\ncus_A,2024-01-01,-1\ncus_B,2024-01-01,-2\n"
        "cus_C,2024-01-01,-3\ncus_D,2024-01-01,4\n"
    )
    mapping = tmp_path / "m.yaml"
    mapping.write_text(
        "name: my_usage\ntimezone: UTC\ndefaults: {source: x}\ncolumns:\n"
        "  customer: {headers: [Customer ID], required: true}\n"
        "  day: {headers: [Day], type: date, required: true}\n"
        "  calls: {headers: [Calls], type: number, required: true}\n"
        "tables:\n  usage:\n"
        "    columns: {account_id: customer, date: day, quantity: calls, metric: {const: api_calls}}\n"
    )
    f = ingest(csv, source="csv", mapping=mapping, settings=settings, progress=False).files[0]
    assert (f.received, f.accepted, f.quarantined) == (4, 1, 3)
    got = rows(settings, "SELECT line, rule, value_redacted FROM quarantine ORDER BY line")
    assert got == [(2, "not_negative", "-1"), (3, "not_negative", "-2"), (4, "not_negative", "-3")]
    assert rows(settings, "SELECT account_id FROM usage") == [("cus_D",)]


def test_the_same_file_under_another_mapping_says_it_was_not_mapped_again(settings, tmp_path):
    csv = tmp_path / "export.csv"
    csv.write_text("Customer ID,Day,Calls\ncus_A,31/01/2024,10\ncus_B,01/02/2024,20\n")
    base = (
        "name: my_usage\ntimezone: UTC\ndefaults: {{source: x}}\ncolumns:\n"
        "  customer: {{headers: [Customer ID], required: true}}\n"
        '  day: {{headers: [Day], type: date, formats: ["{fmt}"], required: true}}\n'
        "  calls: {{headers: [Calls], type: number, required: true, min: 0}}\n"
        "tables:\n  usage:\n"
        "    columns: {{account_id: customer, date: day, quantity: calls, metric: {{const: api_calls}}}}\n"
    )
    wrong, right = tmp_path / "wrong.yaml", tmp_path / "right.yaml"
    wrong.write_text(base.format(fmt="%m/%d/%Y"))
    right.write_text(base.format(fmt="%d/%m/%Y"))
    first = ingest(csv, source="csv", mapping=wrong, settings=settings, progress=False).files[0]
    assert (first.accepted, first.quarantined, first.message) == (1, 1, None)
    again = ingest(csv, source="csv", mapping=wrong, settings=settings, progress=False).files[0]
    assert again.duplicates == 2 and again.message is None  # a plain repeat
    other = ingest(csv, source="csv", mapping=right, settings=settings, progress=False).files[0]
    assert other.duplicates == 2 and other.accepted == 0
    assert "another mapping" in other.message and "--remap" in other.message


def test_a_csv_file_with_a_malformed_row_loads_and_rebuilds(tmp_path) -> None:
    """A row with too few fields is a ``malformed_row`` reject whose column is pandas' NA:
    ``quarantine_id`` / ``_qrow`` asked ``NA != NA`` for a bool and the whole ingest (and
    every rebuild replaying the file) died with TypeError."""
    from workbench.ingest import ingest, rebuild, table_checksums, verify

    settings = load_settings(root=tmp_path, overrides={"data_dir": str(tmp_path / "data")})
    f = tmp_path / "customers.csv"
    f.write_text(
        "id,Description,Name,Email,Created (UTC),Currency\n"
        "cus_short,VIP\n"
        "cus_zz,,Zed Zulu,zed@example.com,2023-01-21 10:25,usd\n"
    )
    [report] = ingest(f, source="csv", settings=settings, progress=False).files
    assert (report.accepted, report.quarantined) == (1, 1)
    assert verify(settings).ok
    before = table_checksums(settings)
    rebuild(settings)
    assert table_checksums(settings) == before


def test_verify_does_not_read_an_old_load_id_in_quarantine_as_a_card_number(settings, tmp_path):
    """Load ids made before they were joined by ``_`` (``<time>-<hex>``) sometimes pass the
    Luhn check; a warehouse whose quarantine names such a load must still verify, and a real
    card number beside it must still be found."""
    from workbench.redact import contains_pan

    path = tmp_path / "payments.csv"
    path.write_text(PAYMENTS)
    ingest(path, source="stripe-csv", mapping="stripe_payments", settings=settings, progress=False)
    old = next(
        i
        for i in (f"20250301T101500123456-{n:08x}" for n in range(1000))
        if contains_pan(f"in load {i} (mapping x)")
    )

    def card_checks() -> list[str]:
        return [c.name for c in verify(settings).checks if "card" in c.name and not c.ok]

    con = duckdb.connect(str(settings.warehouse_path))
    try:
        con.execute("UPDATE loads SET load_id = ?", [old])
        con.execute("UPDATE quarantine SET load_id = ?, message = ?", [old, f"in load {old}"])
    finally:
        con.close()
    assert card_checks() == []
    con = duckdb.connect(str(settings.warehouse_path))
    try:
        con.execute("UPDATE quarantine SET message = message || ' card 4242 4242 4242 4242'")
    finally:
        con.close()
    assert card_checks() == ["no_card_numbers_quarantine"]
