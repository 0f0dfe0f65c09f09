"""CSV mapping: bundled mappings on real exports (RavenStack, a Stripe header), hand-written
edge cases, and the validation of mapping files."""

from __future__ import annotations

import csv
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from workbench.csv_mapping import (
    MappingError,
    available_mappings,
    currency_exponent,
    detect_mapping,
    load_mapping,
    map_csv,
    parse_mapping,
)
from workbench.redact import contains_pan
from workbench.schema import TABLES, create_all

EXTERNAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "external"
RAVEN = EXTERNAL / "saas" / "ravenstack"
STRIPE_HEADER = (EXTERNAL / "stripe" / "dashboard_payments_header.csv").read_text().strip()
PAN = "4000 0566 5566 5556"  # a Luhn-valid test card number


def raw_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def assert_canonical(mapped) -> None:
    """Every frame has exactly its canonical columns, with the documented dtypes."""
    for name, frame in mapped.tables.items():
        table = TABLES[name]
        assert list(frame.columns) == table.column_names, name
        for col in table.columns:
            dtype = str(frame[col.name].dtype)
            kind = col.type.upper()
            expected = {
                "VARCHAR": "string",
                "JSON": "string",
                "BIGINT": "Int64",
                "INTEGER": "Int32",
                "DOUBLE": "Float64",
                "BOOLEAN": "boolean",
                "TIMESTAMPTZ": "datetime64[us, UTC]",
                "DATE": "object",
            }.get(kind, "object")
            assert dtype == expected, (name, col.name, dtype)
            if kind == "DATE":
                assert all(isinstance(x, dt.date) for x in frame[col.name].dropna())


def conserved(mapped) -> None:
    assert mapped.error is None, mapped.error
    assert mapped.received == mapped.accepted + mapped.rejected
    assert mapped.rejected == (mapped.rejects["line"].nunique() if len(mapped.rejects) else 0)


# --------------------------------------------------------------------------- RavenStack


@pytest.fixture(scope="module")
def raven() -> dict:
    files = {
        "accounts": "ravenstack_accounts",
        "subscriptions": "ravenstack_subscriptions",
        "feature_usage": "ravenstack_feature_usage",
        "support_tickets": "ravenstack_support_tickets",
        "churn_events": "ravenstack_churn_events",
    }
    return {k: map_csv(RAVEN / f"ravenstack_{k}.csv", load_mapping(m)) for k, m in files.items()}


def test_every_ravenstack_file_maps_whole_and_conserves_rows(raven) -> None:
    for key, mapped in raven.items():
        rows = raw_rows(RAVEN / f"ravenstack_{key}.csv")
        conserved(mapped)
        assert mapped.received == len(rows), key
        # the dataset is clean: every row is accepted (a rejection would be a mapping bug)
        assert mapped.accepted == len(rows) and len(mapped.rejects) == 0, mapped.rejects.head()
        assert mapped.unused_headers == []
        assert_canonical(mapped)


def test_ravenstack_key_columns_are_filled(raven) -> None:
    t = {name: f for m in raven.values() for name, f in m.tables.items()}
    assert set(t) == {
        "accounts",
        "subscriptions",
        "subscription_items",
        "prices",
        "subscription_history",
        "usage",
        "support_tickets",
        "refunds",
    }
    for name, frame in t.items():
        for col in TABLES[name].columns:
            if not col.nullable:
                assert frame[col.name].notna().all(), (name, col.name)
    assert t["accounts"]["created"].notna().all() and t["accounts"]["country"].notna().all()
    assert len(t["accounts"]) == 500 and len(t["subscriptions"]) == 5000
    assert t["subscriptions"]["subscription_id"].is_unique


def test_ravenstack_ids_link(raven) -> None:
    accounts = set(raven["accounts"].tables["accounts"]["account_id"])
    subs = raven["subscriptions"].tables
    assert set(subs["subscriptions"]["account_id"]) <= accounts
    assert set(subs["subscription_history"]["account_id"]) <= accounts
    assert set(subs["subscription_items"]["subscription_id"]) == set(
        subs["subscriptions"]["subscription_id"]
    )
    assert set(subs["subscription_items"]["price_id"]) <= set(subs["prices"]["price_id"])
    assert set(raven["feature_usage"].tables["usage"]["account_id"]) <= accounts
    assert set(raven["support_tickets"].tables["support_tickets"]["account_id"]) <= accounts
    assert set(raven["churn_events"].tables["refunds"]["account_id"]) <= accounts


def test_ravenstack_subscriptions_reproduce_the_published_mrr(raven) -> None:
    """Each history version's unit amount x seats, normalised to a month, is the row's
    mrr_amount (in cents); trials carry 0 and are marked trialing."""
    rows = {r["subscription_id"]: r for r in raw_rows(RAVEN / "ravenstack_subscriptions.csv")}
    hist = raven["subscriptions"].tables["subscription_history"]
    assert len(hist) == len(rows) and hist["valid_from"].notna().all()
    monthly = hist["unit_amount"] * hist["quantity"]
    monthly = monthly.where(hist["interval"] == "month", monthly / 12)
    for sub_id, mrr, status, interval, valid_to in zip(
        hist["subscription_id"],
        monthly,
        hist["status"],
        hist["interval"],
        hist["valid_to"],
        strict=True,
    ):
        raw = rows[sub_id]
        assert mrr == int(raw["mrr_amount"]) * 100, sub_id
        assert status == ("trialing" if raw["is_trial"] == "TRUE" else "active")
        assert interval == {"monthly": "month", "annual": "year"}[raw["billing_frequency"]]
        assert (pd.isna(valid_to) and raw["end_date"] == "") or valid_to.date().isoformat() == raw[
            "end_date"
        ]
    prices = raven["subscriptions"].tables["prices"].set_index("price_id")["unit_amount"]
    assert prices.to_dict() == {
        "ravenstack-basic-month": 1900,
        "ravenstack-pro-month": 4900,
        "ravenstack-enterprise-month": 19900,
        "ravenstack-basic-year": 22800,
        "ravenstack-pro-year": 58800,
        "ravenstack-enterprise-year": 238800,
    }
    status = raven["subscriptions"].tables["subscriptions"]["status"].value_counts().to_dict()
    assert status["canceled"] == sum(r["end_date"] != "" for r in rows.values())


def test_ravenstack_usage_sums_per_account_day_feature(raven) -> None:
    raw = raw_rows(RAVEN / "ravenstack_feature_usage.csv")
    owner = {
        r["subscription_id"]: r["account_id"]
        for r in raw_rows(RAVEN / "ravenstack_subscriptions.csv")
    }
    expected: dict[tuple, int] = {}
    for r in raw:
        key = (owner[r["subscription_id"]], r["usage_date"], r["feature_name"])
        expected[key] = expected.get(key, 0) + int(r["usage_count"])
    usage = raven["feature_usage"].tables["usage"]
    got = {
        (a, d.isoformat(), m): q
        for a, d, m, q in usage[["account_id", "date", "metric", "quantity"]].itertuples(
            index=False
        )
    }
    assert got == expected
    assert len(usage) < len(raw)  # some accounts used a feature twice a day on two subscriptions


def test_ravenstack_refunds_are_exact_cents(raven) -> None:
    raw = raw_rows(RAVEN / "ravenstack_churn_events.csv")
    refunds = raven["churn_events"].tables["refunds"]
    expected = {
        r["churn_event_id"] + "-refund": int(Decimal(r["refund_amount_usd"]) * 100)
        for r in raw
        if Decimal(r["refund_amount_usd"]) > 0
    }
    assert dict(zip(refunds["refund_id"], refunds["amount"], strict=True)) == expected
    assert (refunds["currency"] == "usd").all()


def test_ravenstack_tables_load_into_duckdb(raven) -> None:
    con = duckdb.connect()
    create_all(con)
    for mapped in raven.values():
        for name, frame in mapped.tables.items():
            con.register("frame", frame)
            con.execute(f"INSERT INTO {name} SELECT * FROM frame").fetchall()
            con.unregister("frame")
            assert con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0] == len(frame)
    total = con.execute("SELECT sum(quantity), typeof(min(date)) FROM usage").fetchall()[0]
    assert total == (raven["feature_usage"].tables["usage"]["quantity"].sum(), "DATE")
    assert (
        con.execute("SELECT typeof(created) FROM accounts LIMIT 1").fetchall()[0][0]
        == "TIMESTAMP WITH TIME ZONE"
    )


def test_usage_lookup_can_be_given_when_the_sibling_file_is_absent(tmp_path) -> None:
    text = "usage_id,subscription_id,usage_date,feature_name,usage_count,usage_duration_secs,error_count,is_beta_feature\n"
    text += (
        "U-1,S-aa,2024-01-02,feature_1,3,10,0,False\nU-2,S-bb,2024-01-02,feature_1,4,10,0,False\n"
    )
    text += "U-3,S-cc,2024-01-02,feature_1,5,10,0,False\n"
    path = write(tmp_path, "usage.csv", text)
    mapping = load_mapping("ravenstack_feature_usage")
    missing = map_csv(path, mapping)
    assert (
        missing.error
        and "lookups=" in missing.error
        and "ravenstack_subscriptions.csv" in missing.error
    )
    mapped = map_csv(
        path, mapping, lookups={"subscription_account": {"S-aa": "A-1", "S-bb": "A-1"}}
    )
    conserved(mapped)
    usage = mapped.tables["usage"]
    assert usage[["account_id", "quantity"]].values.tolist() == [["A-1", 7.0]]  # S-aa + S-bb summed
    (reject,) = mapped.rejects.itertuples(index=False)
    assert (reject.line, reject.rule, reject.value) == (4, "lookup_missing", "S-cc")


# --------------------------------------------------------------------------- schema changes


def test_dropped_required_column_fails_the_file_naming_it(tmp_path) -> None:
    rows = raw_rows(RAVEN / "ravenstack_subscriptions.csv")[:20]
    fields = [f for f in rows[0] if f != "seats"]
    path = tmp_path / "subs.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    mapped = map_csv(path, "ravenstack_subscriptions")
    assert mapped.error is not None
    assert "'seats'" in mapped.error and "missing required column" in mapped.error
    assert "Headers found (13): subscription_id, account_id" in mapped.error
    assert all(len(f) == 0 for f in mapped.tables.values())
    assert mapped.received == 20 and mapped.accepted == 0


def test_renamed_column_is_named_with_its_new_header(tmp_path) -> None:
    text = (RAVEN / "ravenstack_accounts.csv").read_text().replace("signup_date", "signup_dt", 1)
    mapped = map_csv(write(tmp_path, "accounts.csv", text), "ravenstack_accounts")
    assert "'signup_date'" in mapped.error and "renamed to 'signup_dt'?" in mapped.error


def test_a_whole_column_of_the_wrong_type_fails_the_file(tmp_path) -> None:
    rows = raw_rows(RAVEN / "ravenstack_subscriptions.csv")[:30]
    for r in rows:
        r["mrr_amount"] = "$" + r["mrr_amount"]  # e.g. someone exported formatted currency
    path = tmp_path / "subs.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    mapped = map_csv(path, "ravenstack_subscriptions")
    assert (
        "column 'mrr_amount'" in mapped.error
        and "none of its 30 values is an amount" in mapped.error
    )


# --------------------------------------------------------------------------- Stripe exports


def payments_csv(header: str, rows: list[dict[str, str]]) -> str:
    fields = next(csv.reader([header]))
    out = [header]
    for row in rows:
        out.append(",".join(_quote(row.get(f, "")) for f in fields))
    return "\n".join(out) + "\n"


def _quote(value: str) -> str:
    return f'"{value}"' if any(c in value for c in ',"\n') else value


def payment(**kw: str) -> dict[str, str]:
    base = {
        "id": "ch_1",
        "Created (UTC)": "2024-03-01 10:20:30",
        "Amount": "19.99",
        "Amount Refunded": "0.00",
        "Currency": "usd",
        "Status": "Paid",
        "Customer ID": "cus_A",
        "Card Brand": "Visa",
        "Card Last4": "4242",
        "Card Exp Month": "12",
        "Card Exp Year": "2027",
        "Invoice ID": "in_1",
        "PaymentIntent ID": "pi_1",
        "Disputed Amount": "",
        "Dispute Status": "",
    }
    base.update(kw)
    return base


def test_stripe_payments_export_with_the_real_header(tmp_path) -> None:
    rows = [
        payment(),
        payment(id="ch_2", Amount="1,234.56", Status="Refunded", **{"Amount Refunded": "1,234.56"}),
        payment(
            id="ch_3",
            Amount="5000",
            Currency="JPY",
            Status="Failed",
            **{"Card Brand": "MasterCard"},
        ),
        payment(id="ch_4", Amount="12.345"),  # finer than a cent
        payment(id="ch_5", Amount="-5.00"),
        payment(id="ch_6", **{"Created (UTC)": "yesterday"}),
        payment(
            id="ch_7",
            Amount="1.234",
            Currency="kwd",
            **{"Disputed Amount": "1.234", "Dispute Status": "lost"},
        ),
        payment(
            id="ch_8",
            Description=f"card {PAN}",
            **{"Customer ID": f"cus {PAN}", "Card Exp Month": "13"},
        ),
    ]
    path = write(tmp_path, "payments.csv", payments_csv(STRIPE_HEADER, rows))
    assert detect_mapping(path) == "stripe_payments"
    mapped = map_csv(path, "stripe_payments")
    conserved(mapped)
    assert contains_pan(path.read_text()) and mapped.redacted == 2  # two in the input
    pa = mapped.tables["payment_attempts"].set_index("attempt_id")
    assert list(pa.index) == ["ch_1", "ch_2", "ch_3", "ch_7"]
    assert pa.loc["ch_1", "amount"] == 1999 and pa.loc["ch_1", "currency"] == "usd"
    assert pa.loc["ch_2", "amount"] == 123456 and pa.loc["ch_2", "amount_refunded"] == 123456
    assert pa.loc["ch_3", "amount"] == 5000 and pa.loc["ch_3", "currency"] == "jpy"  # zero-decimal
    assert pa.loc["ch_7", "amount"] == 1234 and bool(pa.loc["ch_7", "disputed"])  # three decimals
    assert list(pa["status"]) == ["succeeded", "succeeded", "failed", "succeeded"]
    assert pa.loc["ch_3", "card_brand"] == "mastercard" and pa.loc["ch_1", "card_brand"] == "visa"
    assert pa.loc["ch_1", "created"] == pd.Timestamp("2024-03-01 10:20:30", tz="UTC")
    assert pd.isna(pa.loc["ch_1", "disputed"])  # dispute columns empty: unknown, not False
    rules = {(r.line, r.rule) for r in mapped.rejects.itertuples()}
    assert rules == {
        (5, "sub_minor_unit"),
        (6, "not_negative"),
        (7, "not_timestamp"),
        (9, "above_max"),
    }
    assert not contains_pan(mapped.rejects.to_csv()) and not contains_pan(pa.to_csv())
    assert mapped.unused_headers and "Customer Email" in mapped.unused_headers
    assert_canonical(mapped)


def test_stripe_header_variants_give_the_same_rows(tmp_path) -> None:
    new = "id,Created date (UTC),Amount,Currency,Status,Customer ID,Card Brand"
    old = "id,Created,Amount,Currency,Status,Customer,Card Type"
    rows = [
        "ch_1,2023-05-01 08:00:00,10.00,usd,Paid,cus_1,Visa",
        "ch_2,2023-05-02 09:30:00,7.50,eur,Failed,cus_2,American Express",
    ]
    a = map_csv(write(tmp_path, "new.csv", "\n".join([new, *rows])), "stripe_payments")
    b = map_csv(write(tmp_path, "old.csv", "\n".join([old, *rows])), "stripe_payments")
    pd.testing.assert_frame_equal(a.tables["payment_attempts"], b.tables["payment_attempts"])
    assert a.tables["payment_attempts"]["card_brand"].tolist() == ["visa", "amex"]
    assert b.headers["created"] == "Created" and a.headers["created"] == "Created date (UTC)"
    # a local-time export says its zone in the header
    tz = "id,Created date (America/New_York),Amount,Currency\nch_1,2024-07-01 12:00:00,1.00,usd\n"
    c = map_csv(write(tmp_path, "tz.csv", tz), "stripe_payments")
    assert c.tables["payment_attempts"]["created"][0] == pd.Timestamp("2024-07-01 16:00", tz="UTC")


def test_stripe_subscriptions_export(tmp_path) -> None:
    header = (
        "id,Customer ID,Customer Email,Plan,Product,Quantity,Currency,Interval,Amount,Status,"
        "Created (UTC),Start Date (UTC),Current Period Start (UTC),Current Period End (UTC),"
        "Trial Start (UTC),Trial End (UTC),Canceled At (UTC),Cancel At Period End,Ended At (UTC)"
    )
    rows = [
        "sub_1,cus_1,a@x.io,price_pro,prod_1,3,usd,month,49.00,active,2024-01-01 00:00:00,2024-01-01 00:00:00,2024-03-01 00:00:00,2024-04-01 00:00:00,,,,false,",
        "sub_2,cus_2,b@x.io,price_pro,prod_1,1,usd,month,49.00,Past due,2024-01-05 00:00:00,2024-01-05 00:00:00,2024-03-05 00:00:00,2024-04-05 00:00:00,,,,true,",
        "sub_3,cus_3,c@x.io,price_team_y,prod_2,10,eur,year,1200.00,canceled,2023-06-01 00:00:00,2023-06-01 00:00:00,2023-06-01 00:00:00,2024-06-01 00:00:00,,,2023-12-01 00:00:00,false,2023-12-01 00:00:00",
        "sub_4,cus_4,d@x.io,price_pro,prod_1,2,usd,month,59.00,active,2024-02-01 00:00:00,2024-02-01 00:00:00,2024-03-01 00:00:00,2024-04-01 00:00:00,,,,false,",
        "sub_5,cus_5,e@x.io,,,,usd,,,incomplete,2024-02-02 00:00:00,,,,,,,,",
    ]
    mapped = map_csv(
        write(tmp_path, "subs.csv", "\n".join([header, *rows]) + "\n"), "stripe_subscriptions"
    )
    conserved(mapped)
    subs = mapped.tables["subscriptions"].set_index("subscription_id")
    # sub_4 says price_pro costs 59.00, sub_1 said 49.00: the later row is a conflict
    assert list(subs.index) == ["sub_1", "sub_2", "sub_3", "sub_5"]
    (conflict,) = mapped.rejects.itertuples(index=False)
    assert conflict.line == 5 and conflict.rule == "conflict" and "on line 2" in conflict.message
    assert subs.loc["sub_2", "status"] == "past_due" and subs.loc["sub_2", "cancel_at_period_end"]
    assert subs.loc["sub_3", "ended_at"] == pd.Timestamp("2023-12-01", tz="UTC")
    items = mapped.tables["subscription_items"]
    assert items["item_id"].tolist() == ["sub_1:price_pro", "sub_2:price_pro", "sub_3:price_team_y"]
    prices = mapped.tables["prices"].set_index("price_id")
    assert prices["unit_amount"].to_dict() == {"price_pro": 4900, "price_team_y": 120000}
    assert (
        prices.loc["price_team_y", "interval"] == "year"
        and prices.loc["price_team_y", "currency"] == "eur"
    )
    assert_canonical(mapped)


def test_stripe_customers_export_keeps_metadata(tmp_path) -> None:
    text = (
        "id,Name,Email,Created (UTC),Currency,Delinquent,region (metadata),channel (metadata),plan (metadata)\n"
        "cus_1,Ada,ada@x.io,2024-01-01 12:00:00,USD,false,eu,Sales,pro\n"
        "cus_2,Bob,bob@x.io,2024-01-02 12:00:00,,true,,,\n"
    )
    mapped = map_csv(write(tmp_path, "customers.csv", text), "stripe_customers")
    conserved(mapped)
    acc = mapped.tables["accounts"].set_index("account_id")
    assert json.loads(acc.loc["cus_1", "metadata"]) == {
        "region": "eu",
        "channel": "Sales",
        "plan": "pro",
    }
    assert pd.isna(acc.loc["cus_2", "metadata"])
    assert (
        acc.loc["cus_1", "region"],
        acc.loc["cus_1", "channel"],
        acc.loc["cus_1", "currency"],
    ) == ("EU", "sales", "usd")
    assert (
        acc["delinquent"].tolist() == [False, True] and acc.loc["cus_1", "source"] == "stripe-csv"
    )


# --------------------------------------------------------------------------- row rules and reading


def test_currency_exponents_follow_stripe() -> None:
    assert [currency_exponent(c) for c in ("usd", "JPY", "kwd", "isk", "eur")] == [2, 0, 3, 2, 2]


def test_exact_money_and_row_rejections(tmp_path) -> None:
    mapping = parse_mapping(
        {
            "currency": {"column": "cur"},
            "columns": {
                "id": {"required": True},
                "cur": {"type": "currency", "required": True},
                "amt": {"type": "money", "required": True},
            },
            "tables": {"refunds": {"columns": {"refund_id": "id", "amount": "amt"}}},
        }
    )
    text = (
        "id,cur,amt\n"
        "r1,usd,19.99\n"  # 1999, exactly (19.99 * 100 in floats is 1998.9999…)
        'r2,jpy,"1,000"\n'  # 1000 yen
        "r3,jpy,10.5\n"  # half a yen does not exist
        "r4,usd,1e3\n"  # not an amount
        "r5,dollars,1.00\n"  # not a currency code
        "r6,usd,\n"  # required
        'r7,usd,"399,00"\n'  # a decimal comma is not a thousands separator
        "r8,usd,0.10\n"
    )
    mapped = map_csv(write(tmp_path, "r.csv", text), mapping)
    conserved(mapped)
    assert mapped.tables["refunds"][["refund_id", "amount"]].values.tolist() == [
        ["r1", 1999],
        ["r2", 1000],
        ["r8", 10],
    ]
    got = {(r.line, r.column_name, r.rule) for r in mapped.rejects.itertuples()}
    assert got == {
        (4, "amt", "sub_minor_unit"),
        (5, "amt", "not_money"),
        (6, "cur", "bad_currency"),
        (7, "amt", "missing_required"),
        (8, "amt", "not_money"),
    }
    assert mapped.rejects.set_index("line").loc[4, "value"] == "10.5"


def test_timezones_and_dst(tmp_path) -> None:
    mapping = parse_mapping(
        {
            "timezone": "Europe/Paris",
            "columns": {
                "id": {"required": True},
                "acct": {},
                "at": {
                    "type": "timestamp",
                    "required": True,
                    "formats": ["%Y-%m-%d %H:%M", "ISO8601"],
                },
            },
            "tables": {
                "support_tickets": {
                    "columns": {"ticket_id": "id", "account_id": "acct", "created_at": "at"}
                }
            },
        }
    )
    text = (
        "id,acct,at\n"
        "t1,a,2024-07-01 12:00\n"  # CEST: 10:00 UTC
        "t2,a,2024-01-15 12:00\n"  # CET: 11:00 UTC
        "t3,a,2024-07-01T12:00:00+00:00\n"  # an explicit offset wins over the zone
        "t4,a,2024-03-31 02:30\n"
    )  # does not exist in Paris (clocks jump 2:00 -> 3:00)
    mapped = map_csv(write(tmp_path, "t.csv", text), mapping)
    conserved(mapped)
    assert mapped.tables["support_tickets"]["created_at"].tolist() == [
        pd.Timestamp("2024-07-01 10:00", tz="UTC"),
        pd.Timestamp("2024-01-15 11:00", tz="UTC"),
        pd.Timestamp("2024-07-01 12:00", tz="UTC"),
    ]
    (r,) = mapped.rejects.itertuples()
    assert r.line == 5 and r.rule == "not_timestamp" and "Europe/Paris" in r.message


def test_lines_malformed_rows_blank_lines_and_pans(tmp_path) -> None:
    mapping = parse_mapping(
        {
            "columns": {
                "id": {"required": True},
                "acct": {"required": True},
                "sev": {},
                "note": {},
            },
            "tables": {
                "support_tickets": {
                    "columns": {
                        "ticket_id": "id",
                        "account_id": "acct",
                        "created_at": {"const": "2024-01-01"},
                        "severity": "sev",
                    }
                }
            },
        }
    )
    text = (
        "id,acct,sev,note\n"
        't1,a,low,"two\nlines"\n'  # lines 2-3
        "\n"  # line 4: blank, not a row
        "t2,a,high,x,extra\n"  # line 5: one field too many
        f"t3,,low,{PAN}\n"  # line 6: missing acct; the PAN is redacted
        f"t4,{PAN},low,\n"
    )  # line 7: a PAN in a kept column
    mapped = map_csv(write(tmp_path, "m.csv", text), mapping)
    conserved(mapped)
    assert (mapped.received, mapped.accepted, mapped.blank_lines, mapped.redacted) == (4, 2, 1, 2)
    assert {(r.line, r.rule) for r in mapped.rejects.itertuples()} == {
        (5, "malformed_row"),
        (6, "missing_required"),
    }
    tickets = mapped.tables["support_tickets"]
    assert tickets["ticket_id"].tolist() == ["t1", "t4"]
    assert tickets["account_id"][1] == "[REDACTED PAN ****5556]"
    assert not contains_pan(mapped.rejects.to_csv())


def test_personal_values_are_masked_in_rejects(tmp_path) -> None:
    mapping = parse_mapping(
        {
            "columns": {"id": {"required": True}, "mail": {"pattern": r"[^@\s]+@[^@\s]+"}},
            "tables": {"accounts": {"columns": {"account_id": "id", "email": "mail"}}},
        }
    )
    mapped = map_csv(write(tmp_path, "a.csv", "id,mail\nc1,ada@x.io\nc2,ada at home\n"), mapping)
    (r,) = mapped.rejects.itertuples()
    assert (
        r.rule == "bad_format" and r.value == "[personal data]" and "ada at home" not in r.message
    )


def test_unreadable_and_ambiguous_files(tmp_path) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes(
        "id,Amount,Currency,Created\nch_1,1.00,eur,2024-01-01 caf\xe9\n".encode("latin-1")
    )
    assert "not utf-8-sig" in map_csv(latin, "stripe_payments").error
    dup = write(tmp_path, "dup.csv", "id,Amount,Amount,Currency,Created\nch_1,1,2,usd,2024-01-01\n")
    assert "appears 2 times" in map_csv(dup, "stripe_payments").error
    empty = write(tmp_path, "empty.csv", "")
    assert "empty" in map_csv(empty, "stripe_payments").error


# --------------------------------------------------------------------------- mapping validation


BASE = {
    "columns": {"id": {"required": True}, "acct": {}, "day": {"type": "date"}},
    "tables": {
        "support_tickets": {
            "columns": {"ticket_id": "id", "account_id": "acct", "created_at": "day"}
        }
    },
}


def broken(**changes) -> dict:
    data = json.loads(json.dumps(BASE))
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (broken(colums={}), "unknown key(s) 'colums' (did you mean 'columns'?)"),
        (
            broken(tables__support_ticket={"columns": {"x": "id"}}),
            "not a canonical table (did you mean 'support_tickets'?)",
        ),
        (
            broken(tables__support_tickets__columns__severty="acct"),
            "support_tickets has no column 'severty' (did you mean 'severity'?)",
        ),
        (
            broken(tables__support_tickets__columns__severity="sev"),
            "'sev' is not a declared source column",
        ),
        (
            broken(tables__support_tickets__columns__severity="day"),
            "is date, which cannot fill severity (VARCHAR)",
        ),
        (
            broken(columns__id={"requierd": True}),
            "unknown key(s) 'requierd' (did you mean 'required'?)",
        ),
        (broken(columns__id={"type": "money"}), "a money column needs a currency"),
        (broken(columns__day={"type": "datetime"}), "type 'datetime' is not one of"),
        (
            {
                "columns": {"id": {}},
                "tables": {"support_tickets": {"columns": {"ticket_id": "id"}}},
            },
            "NOT NULL column(s) account_id, created_at must be mapped",
        ),
        (
            {"columns": {"id": {}}, "tables": {"events": {"columns": {"event_id": "id"}}}},
            "written by the ingestion core",
        ),
        (
            broken(tables__support_tickets__columns__status={"const": 3}),
            "constant 3 does not fit status",
        ),
        (
            broken(tables__support_tickets__where={"column": "acct", "gt": 1}),
            "gt compares a numeric column",
        ),
    ],
)
def test_invalid_mappings_are_refused_with_a_clear_message(data: dict, message: str) -> None:
    with pytest.raises(MappingError) as err:
        parse_mapping(data, name="test")
    assert message in str(err.value)


def test_unknown_mapping_name_lists_the_bundled_ones() -> None:
    with pytest.raises(MappingError, match="stripe_payments"):
        load_mapping("no_such_mapping")


def test_every_bundled_mapping_loads() -> None:
    names = available_mappings()
    assert {
        "stripe_payments",
        "stripe_subscriptions",
        "stripe_customers",
        "ravenstack_accounts",
        "ravenstack_subscriptions",
        "ravenstack_feature_usage",
        "ravenstack_support_tickets",
        "ravenstack_churn_events",
        "simulator_usage",
        "simulator_support_tickets",
        "simulator_crm_signals",
        "simulator_fx_rates",
    } <= set(names)
    for name in names:
        assert load_mapping(name).tables


# --------------------------------------------------------------------------- the simulator's exports


def test_simulator_csv_exports_map_cleanly(tmp_path) -> None:
    simulator = pytest.importorskip("workbench.simulator")
    simulator.simulate(
        accounts=25, months=4, seed=1, start="2024-01-01", faults=False, out=tmp_path
    )
    folder = tmp_path / "landing" / "csv"
    for name, table in [
        ("usage", "usage"),
        ("support_tickets", "support_tickets"),
        ("crm_signals", "crm_signals"),
        ("fx_rates", "fx_rates"),
    ]:
        path = folder / f"{name}.csv"
        assert detect_mapping(path) == f"simulator_{name}"
        mapped = map_csv(path, f"simulator_{name}")
        conserved(mapped)
        assert mapped.received == len(raw_rows(path)) == mapped.accepted > 0, name
        assert len(mapped.tables[table]) == mapped.received
        assert_canonical(mapped)
    fx = map_csv(folder / "fx_rates.csv", "simulator_fx_rates").tables["fx_rates"]
    raw = raw_rows(folder / "fx_rates.csv")
    assert [Decimal(r["rate_to_usd"]) for r in raw] == fx["rate_to_usd"].tolist()
