"""The simulated company: determinism, Stripe shapes, billing invariants, truth vs events.

One small company (300 accounts, 24 months, a regime change at month 12) is simulated
once per module and read back; the checks compare it with the real Stripe fixtures in
``shared/data/external/stripe`` and with its own ground truth.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from workbench.redact import contains_pan
from workbench.simulator import SimulationSummary, simulate
from workbench.simulator import behaviour as bh
from workbench.simulator.catalog import API_BLOCK

EXTERNAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "external"
STRIPE = EXTERNAL / "stripe"

ARGS = dict(accounts=300, months=24, seed=7, start="2023-01-01", regime_change=12, progress=False)
MONEY_KEYS = {
    "amount",
    "amount_due",
    "amount_paid",
    "amount_remaining",
    "amount_refunded",
    "amount_captured",
    "amount_received",
    "amount_capturable",
    "subtotal",
    "subtotal_excluding_tax",
    "total",
    "total_excluding_tax",
    "tax",
    "unit_amount",
    "amount_off",
    "amount_excluding_tax",
    "taxable_amount",
    "starting_balance",
    "balance",
}
TIME_KEYS = {
    "created",
    "current_period_start",
    "current_period_end",
    "start_date",
    "billing_cycle_anchor",
    "period_start",
    "period_end",
    "start",
    "end",
    "trial_start",
    "trial_end",
    "canceled_at",
    "ended_at",
    "cancel_at",
    "next_payment_attempt",
    "paid_at",
    "finalized_at",
    "voided_at",
    "marked_uncollectible_at",
    "due_by",
    "effective_at",
}
#: Real Stripe fields the fixtures happen not to show (their lists are empty there).
NOT_IN_FIXTURES = {
    ("invoice", "total_discount_amounts[]"): {"amount", "discount"},
    ("invoice", "total_tax_amounts[]"): {"taxability_reason", "taxable_amount"},
    ("line_item", "tax_amounts[]"): {"taxability_reason", "taxable_amount"},
}
#: The fields the workbench reads, per object type, with their JSON types.
REQUIRED = {
    "event": {
        "id": "str",
        "object": "str",
        "api_version": "str",
        "created": "int",
        "data": "dict",
        "livemode": "bool",
        "pending_webhooks": "int",
        "request": "dict",
        "type": "str",
    },
    "customer": {
        "id": "str",
        "name": "str",
        "email": "str",
        "currency": "str",
        "metadata": "dict",
        "created": "int",
        "delinquent": "bool",
    },
    "subscription": {
        "id": "str",
        "status": "str",
        "items": "dict",
        "cancel_at_period_end": "bool",
        "current_period_start": "int",
        "current_period_end": "int",
        "start_date": "int",
        "customer": "str",
        "currency": "str",
        "metadata": "dict",
        "created": "int",
    },
    "subscription_item": {"id": "str", "price": "dict", "created": "int"},
    "price": {
        "id": "str",
        "unit_amount": "int",
        "currency": "str",
        "recurring": "dict",
        "product": "str",
    },
    "invoice": {
        "id": "str",
        "lines": "dict",
        "subtotal": "int",
        "total": "int",
        "tax": "int",
        "total_discount_amounts": "list",
        "amount_due": "int",
        "amount_paid": "int",
        "amount_remaining": "int",
        "attempt_count": "int",
        "billing_reason": "str",
        "status": "str",
        "customer": "str",
        "period_start": "int",
        "period_end": "int",
        "currency": "str",
        "created": "int",
        "status_transitions": "dict",
    },
    "line_item": {
        "id": "str",
        "amount": "int",
        "period": "dict",
        "price": "dict",
        "quantity": "int",
        "proration": "bool",
        "type": "str",
        "currency": "str",
    },
    "charge": {
        "id": "str",
        "amount": "int",
        "currency": "str",
        "customer": "str",
        "invoice": "str",
        "status": "str",
        "outcome": "dict",
        "created": "int",
        "refunds": "dict",
        "amount_refunded": "int",
        "payment_intent": "str",
        "paid": "bool",
    },
    "payment_intent": {
        "id": "str",
        "amount": "int",
        "currency": "str",
        "status": "str",
        "invoice": "str",
    },
    "refund": {"id": "str", "amount": "int", "charge": "str", "currency": "str", "created": "int"},
    "dispute": {
        "id": "str",
        "amount": "int",
        "charge": "str",
        "status": "str",
        "reason": "str",
        "created": "int",
        "currency": "str",
    },
    "discount": {"id": "str", "coupon": "dict", "start": "int"},
    "coupon": {"id": "str", "duration": "str"},
}
PREFIX = {
    "customer": "cus_",
    "subscription": "sub_",
    "subscription_item": "si_",
    "price": "price_",
    "product": "prod_",
    "invoice": "in_",
    "line_item": "il_",
    "charge": "ch_",
    "payment_intent": "pi_",
    "refund": "re_",
    "dispute": "dp_",
    "discount": "di_",
    "tax_rate": "txr_",
    "event": "evt_",
}
LIVE = {"trialing", "active", "past_due"}


def _jtype(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "str"
    return "list" if isinstance(v, list) else "dict"


def _walk(v: Any, otype: str, path: str, visit) -> None:
    """Call ``visit(object_type, path_within_object, key, value)`` for every key of every dict."""
    if isinstance(v, dict):
        if isinstance(v.get("object"), str) and v["object"] != "list":
            otype, path = v["object"], ""
        for k, x in v.items():
            visit(otype, path, k, x)
            _walk(x, otype, f"{path}.{k}" if path else k, visit)
    elif isinstance(v, list):
        for x in v:
            _walk(x, otype, path + "[]", visit)


@pytest.fixture(scope="module")
def company(tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("company")
    summary = simulate(out=out, chunk_size=100, **ARGS)
    events: list[dict] = []
    files = sorted((out / "landing" / "stripe").glob("*.jsonl"))
    for path in files:
        events.extend(json.loads(line) for line in path.read_text().splitlines())
    truth = {
        name: pd.read_parquet(out / "truth" / f"{name}.parquet")
        for name in ("churn_hazard", "recovery", "offers", "anomalies", "accounts", "churn_events")
    }
    return {"out": out, "summary": summary, "events": events, "truth": truth, "files": files}


@pytest.fixture(scope="module")
def invoices(company) -> dict[str, list[dict]]:
    """Every snapshot of every invoice, in event order."""
    snaps: dict[str, list[dict]] = collections.defaultdict(list)
    for e in company["events"]:
        obj = e["data"]["object"]
        if obj["object"] == "invoice":
            snaps[obj["id"]].append(obj)
    return snaps


def _sample_by_type(events: list[dict], per_type: int = 400) -> list[dict]:
    """At most ``per_type`` events of each type (all of the rare ones)."""
    seen: collections.Counter = collections.Counter()
    sample = []
    for e in events:
        seen[e["type"]] += 1
        if seen[e["type"]] <= per_type:
            sample.append(e)
    return sample


def _file_digests(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------- determinism


def test_same_arguments_give_the_same_bytes(company, tmp_path):
    again = simulate(out=tmp_path, chunk_size=100, **ARGS)
    assert _file_digests(tmp_path) == _file_digests(company["out"])
    assert again.events == company["summary"].events


def test_rerun_in_place_replaces_previous_output(tmp_path):
    simulate(accounts=60, months=6, seed=1, out=tmp_path, progress=False, chunk_size=20)
    assert len(list((tmp_path / "landing" / "stripe").glob("events-*.jsonl"))) == 3
    (tmp_path / "landing" / "csv" / "mine.csv").write_text("kept\n")
    simulate(accounts=30, months=6, seed=1, out=tmp_path, progress=False, chunk_size=30)
    first = _file_digests(tmp_path)
    assert sorted(p.name for p in (tmp_path / "landing" / "stripe").glob("*.jsonl")) == [
        "catalog.jsonl",
        "events-00000.jsonl",
    ]
    assert (
        tmp_path / "landing" / "csv" / "mine.csv"
    ).read_text() == "kept\n"  # not ours: untouched
    assert not list(tmp_path.rglob("*.simtmp"))
    simulate(accounts=30, months=6, seed=1, out=tmp_path, progress=False, chunk_size=30)
    assert _file_digests(tmp_path) == first


def test_output_does_not_depend_on_chunking_or_workers(tmp_path):
    small = dict(accounts=90, months=12, seed=5, progress=False)
    a = tmp_path / "a"
    b = tmp_path / "b"
    c = tmp_path / "c"
    simulate(out=a, chunk_size=90, **small)
    simulate(out=b, chunk_size=25, **small)
    simulate(out=c, chunk_size=25, workers=2, **small)
    assert _file_digests(b) == _file_digests(c)

    def lines(out: Path) -> list[str]:
        return sorted(
            line
            for p in (out / "landing" / "stripe").glob("*.jsonl")
            for line in p.read_text().splitlines()
        )

    assert lines(a) == lines(b)
    for name in ("usage.csv", "support_tickets.csv", "crm_signals.csv", "fx_rates.csv"):
        assert (a / "landing" / "csv" / name).read_bytes() == (
            b / "landing" / "csv" / name
        ).read_bytes()
    for name in ("churn_hazard", "recovery", "offers", "anomalies", "accounts"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(a / "truth" / f"{name}.parquet"),
            pd.read_parquet(b / "truth" / f"{name}.parquet"),
        )


def test_a_different_seed_gives_a_different_company(tmp_path):
    small = dict(accounts=40, months=6, progress=False)
    simulate(out=tmp_path / "a", seed=1, **small)
    simulate(out=tmp_path / "b", seed=2, **small)
    for name in (
        "stripe/events-00000.jsonl",
        "csv/usage.csv",
        "csv/crm_signals.csv",
        "csv/fx_rates.csv",
    ):
        assert (tmp_path / "a" / "landing" / name).read_bytes() != (
            tmp_path / "b" / "landing" / name
        ).read_bytes()


def test_summary(company):
    s: SimulationSummary = company["summary"]
    d = s.to_dict()
    assert d["accounts"] == 300 and d["seed"] == 7 and d["regime_change"] == 12
    assert s.events == len(company["events"])
    assert s.invoices == len(
        {e["data"]["object"]["id"] for e in company["events"] if e["type"] == "invoice.created"}
    )
    assert s.failed_payments == sum(e["type"] == "charge.failed" for e in company["events"])
    assert s.anomalies == len(company["truth"]["anomalies"]) > 0
    assert all(Path(p).exists() for group in s.paths.values() for p in group)
    json.dumps(d)


# ---------------------------------------------------------------- Stripe shapes


@pytest.fixture(scope="module")
def fixture_keys() -> dict[tuple[str, str], dict[str, set[str]]]:
    """Keys and JSON types per (object type, path in object) across all Stripe fixtures."""
    known: dict[tuple[str, str], dict[str, set[str]]] = collections.defaultdict(dict)

    def visit(otype, path, k, v):
        known[(otype, path)].setdefault(k, set()).add(_jtype(v))

    for f in sorted(STRIPE.glob("webhook_events/*.json")) + sorted(STRIPE.glob("objects/*.json")):
        _walk(json.loads(f.read_text()), "root", "", visit)
    for name, obj in json.loads((STRIPE / "openapi_fixtures3.json").read_text())[
        "resources"
    ].items():
        _walk(obj, name, "", visit)
    return known


def test_every_field_exists_in_stripe_with_the_same_type(company, fixture_keys):
    problems: set[tuple] = set()

    def visit(otype, path, k, v):
        if (
            path.startswith("metadata")
            or ".metadata" in path
            or path.startswith("data.previous_attributes")
        ):
            return
        if k in NOT_IN_FIXTURES.get((otype, path), ()):
            return
        known = fixture_keys.get((otype, path), {})
        if k not in known:
            problems.add(("unknown field", otype, path, k))
            return
        ours, theirs = _jtype(v), known[k] - {"null"}
        if ours == "null" or not theirs:
            return
        if ours not in theirs and not (ours == "float" and "int" in theirs):
            problems.add(("type", otype, path, k, ours, tuple(sorted(theirs))))

    for e in _sample_by_type(company["events"]):
        _walk(e, "root", "", visit)
    assert not problems, sorted(problems)[:20]


def test_fields_the_workbench_reads_are_present_and_typed(company):
    seen = collections.Counter()
    bad = []

    def check(obj: dict):
        otype = obj["object"] if isinstance(obj.get("object"), str) else None
        if otype in REQUIRED:
            seen[otype] += 1
            for k, t in REQUIRED[otype].items():
                if k not in obj or _jtype(obj[k]) != t:
                    bad.append((otype, obj.get("id"), k, _jtype(obj.get(k))))
        if otype in PREFIX and "id" in obj and not obj["id"].startswith(PREFIX[otype]):
            bad.append((otype, obj["id"], "prefix"))
        for v in obj.values():
            for x in v if isinstance(v, list) else [v]:
                if isinstance(x, dict):
                    check(x)

    for e in company["events"]:
        check(e)
    assert not bad, bad[:20]
    assert set(REQUIRED) <= set(seen), set(REQUIRED) - set(seen)


def test_event_envelopes_and_types(company):
    stripe_types = set((STRIPE / "event_types_v1.txt").read_text().split())
    types = collections.Counter(e["type"] for e in company["events"])
    must = {
        "customer.created",
        "customer.updated",
        "product.created",
        "price.created",
        "coupon.created",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.trial_will_end",
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.payment_failed",
        "invoice.marked_uncollectible",
        "invoice.voided",
        "charge.succeeded",
        "charge.failed",
        "charge.refunded",
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "charge.dispute.created",
        "charge.dispute.closed",
    }
    assert must <= set(types), must - set(types)
    assert set(types) <= stripe_types
    ids = [e["id"] for e in company["events"]]
    assert len(ids) == len(set(ids))
    for e in company["events"]:
        assert (
            e["object"] == "event" and e["api_version"] == "2024-06-20" and e["livemode"] is False
        )
        prev = e["data"].get("previous_attributes")
        if prev is not None:
            assert e["type"].endswith(".updated") or e["type"] == "charge.refunded", e["type"]
            assert prev and set(prev) <= set(e["data"]["object"]), (e["type"], set(prev))
            for k, old in prev.items():
                assert old != e["data"]["object"][k] or k == "refunds"
        elif e["type"].endswith(".updated"):
            pytest.fail(f"{e['id']} is an update without previous_attributes")


def test_failed_charges_carry_stripe_decline_information(company):
    failed = [e["data"]["object"] for e in company["events"] if e["type"] == "charge.failed"]
    assert failed
    for ch in failed:
        assert ch["status"] == "failed" and ch["paid"] is False
        assert ch["failure_code"] in {"card_declined", "expired_card", "processing_error"}
        assert ch["outcome"]["reason"] in bh.DECLINES
        assert bh.DECLINES[ch["outcome"]["reason"]][0] == ch["failure_code"]
    codes = collections.Counter(ch["outcome"]["reason"] for ch in failed)
    assert len(codes) >= 5


def test_files_are_sorted_by_created_then_id(company):
    for path in company["files"]:
        keys = [(e["created"], e["id"]) for e in map(json.loads, path.read_text().splitlines())]
        assert keys == sorted(keys), path.name


# ---------------------------------------------------------------- invariants


def test_money_is_integer_minor_units_and_times_are_unix_seconds(company):
    bad = []

    def visit(otype, path, k, v):
        if path.startswith("data.previous_attributes"):
            return
        if k in MONEY_KEYS and v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            bad.append((otype, path, k, v))
        if (
            k in TIME_KEYS
            and v is not None
            and not (isinstance(v, int) and 1_500_000_000 < v < 2_000_000_000)
        ):
            bad.append((otype, path, k, v))
        if k == "currency" and v is not None and v not in {"usd", "eur", "gbp"}:
            bad.append((otype, path, k, v))

    for e in company["events"]:
        _walk(e, "root", "", visit)
    assert not bad, bad[:10]


def test_invoice_totals_add_up(company, invoices):
    labels = company["truth"]["anomalies"]
    mismatch = set(labels.loc[labels.anomaly_type == "line_total_mismatch", "object_id"])
    wrong = set(labels.loc[labels.anomaly_type == "wrong_amount", "object_id"])
    seen_mismatch, seen_wrong = set(), set()
    checked = 0
    for inv_id, snaps in invoices.items():
        for inv in snaps:
            lines = inv["lines"]["data"]
            discount = sum(d["amount"] for d in inv["total_discount_amounts"])
            assert inv["total"] == inv["subtotal"] - discount + inv["tax"], inv_id
            assert inv["tax"] == sum(t["amount"] for line in lines for t in line["tax_amounts"])
            assert discount == sum(d["amount"] for line in lines for d in line["discount_amounts"])
            assert inv["amount_due"] == inv["total"]
            if inv["status"] in ("open", "paid"):
                assert inv["amount_paid"] + inv["amount_remaining"] == inv["amount_due"]
            if inv["subtotal"] != sum(line["amount"] for line in lines):
                seen_mismatch.add(inv_id)
            for line in lines:
                assert line["currency"] == inv["currency"] == line["price"]["currency"]
                trial = line["amount"] == 0 and line["description"].startswith("Trial period")
                if (
                    not line["proration"]
                    and not trial
                    and line["amount"] != line["price"]["unit_amount"] * line["quantity"]
                ):
                    seen_wrong.add(inv_id)
            checked += 1
    assert checked > 1000
    assert seen_mismatch == mismatch
    assert seen_wrong == wrong


def test_subscription_is_never_live_after_its_deletion(company):
    deleted_at: dict[str, int] = {}
    statuses = set()
    for e in company["events"]:
        obj = e["data"]["object"]
        if obj["object"] != "subscription":
            continue
        statuses.add(obj["status"])
        if obj["id"] in deleted_at:
            assert obj["status"] not in LIVE, (e["type"], obj["id"])
            assert e["created"] >= deleted_at[obj["id"]]
        if e["type"] == "customer.subscription.deleted":
            assert obj["status"] == "canceled" and obj["ended_at"] is not None
            deleted_at[obj["id"]] = e["created"]
    assert {"trialing", "active", "past_due", "canceled", "incomplete"} <= statuses
    assert deleted_at


def test_proration_and_discounts_appear(invoices):
    last = [snaps[-1] for snaps in invoices.values()]
    assert any(line["proration"] for inv in last for line in inv["lines"]["data"])
    durations = {inv["discount"]["coupon"]["duration"] for inv in last if inv["discount"]}
    assert durations == {"once", "repeating", "forever"}
    kinds = {
        ("percent" if inv["discount"]["coupon"]["percent_off"] else "amount")
        for inv in last
        if inv["discount"]
    }
    assert kinds == {"percent", "amount"}
    assert {inv["billing_reason"] for inv in last} >= {
        "subscription_create",
        "subscription_cycle",
        "subscription_update",
    }


def test_metered_lines_bill_the_exported_usage(company, invoices):
    usage = pd.read_csv(company["out"] / "landing" / "csv" / "usage.csv")
    calls = usage[usage.metric == "api_calls"].copy()
    calls["day_start"] = pd.to_datetime(calls.date).astype("int64") // 10**9
    by_account = {a: g for a, g in calls.groupby("account_id")}
    total = matched = 0
    for snaps in invoices.values():
        inv = snaps[-1]
        if inv["billing_reason"] != "subscription_cycle":
            continue
        for line in inv["lines"]["data"]:
            if line["price"]["recurring"]["usage_type"] != "metered":
                continue
            g = by_account.get(inv["customer"])
            s, e = line["period"]["start"], line["period"]["end"]
            # a day belongs to the period its midnight falls in
            used = 0 if g is None else int(g.quantity[(g.day_start >= s) & (g.day_start < e)].sum())
            total += 1
            matched += line["quantity"] == -(-used // API_BLOCK)
    assert total > 100
    assert matched / total > 0.97, (matched, total)


# ---------------------------------------------------------------- truth vs events


def test_every_labelled_anomaly_exists_in_the_events(company, invoices):
    labels = company["truth"]["anomalies"]
    assert set(labels.anomaly_type) <= set(
        (
            "duplicate_invoice",
            "duplicate_subscription",
            "wrong_amount",
            "line_total_mismatch",
            "refund_exceeds_payment",
        )
    )
    assert len(set(labels.anomaly_type)) >= 4
    objects: dict[str, list[dict]] = collections.defaultdict(list)
    refunds: dict[str, tuple[dict, dict]] = {}
    for e in company["events"]:
        obj = e["data"]["object"]
        objects[obj["id"]].append(obj)
        if e["type"] == "charge.refunded":
            for r in obj["refunds"]["data"]:
                refunds[r["id"]] = (r, obj)
    subs_by_customer = collections.defaultdict(list)
    for e in company["events"]:
        if e["type"] == "customer.subscription.created":
            subs_by_customer[e["data"]["object"]["customer"]].append(e["data"]["object"])
    for row in labels.itertuples():
        details = json.loads(row.details)
        if row.anomaly_type == "refund_exceeds_payment":
            refund, charge = refunds[row.object_id]
            assert (
                refund["amount"] > charge["amount"] and charge["amount_refunded"] > charge["amount"]
            )
            continue
        assert row.object_id in objects, row
        obj = objects[row.object_id][-1]
        assert obj["customer"] == row.account_id
        if row.anomaly_type == "duplicate_invoice":
            orig = invoices[details["duplicate_of"]][-1]
            assert orig["id"] != obj["id"] and orig["subscription"] == obj["subscription"]
            assert (orig["period_start"], orig["period_end"], orig["total"]) == (
                obj["period_start"],
                obj["period_end"],
                obj["total"],
            )
        elif row.anomaly_type == "duplicate_subscription":
            twins = [
                s
                for s in subs_by_customer[obj["customer"]]
                if s["id"] != obj["id"]
                and s["items"]["data"][0]["price"]["id"] == obj["items"]["data"][0]["price"]["id"]
                and abs(s["created"] - obj["created"]) < 3600
            ]
            assert twins
        elif row.anomaly_type == "wrong_amount":
            line = obj["lines"]["data"][details["line_index"]]
            assert (
                line["amount"]
                == details["billed_amount"]
                != line["price"]["unit_amount"] * line["quantity"]
            )


def test_realised_voluntary_churn_tracks_the_true_hazard(company):
    h = company["truth"]["churn_hazard"]
    assert len(h) > 1500
    expected = h.hazard.sum()
    sd = math.sqrt((h.hazard * (1 - h.hazard)).sum())
    realised = (h.churn_type == "voluntary").sum()
    assert abs(realised - expected) < 4 * sd, (realised, expected, sd)
    # by hazard decile, too: the riskiest fifth churns several times more than the safest
    h = h.assign(q=pd.qcut(h.hazard, 5, labels=False))
    rates = h.groupby("q").apply(
        lambda g: (g.churn_type == "voluntary").mean(), include_groups=False
    )
    assert rates.iloc[-1] > 2.5 * rates.iloc[0]


def test_voluntary_decisions_show_up_as_cancellations(company):
    h = company["truth"]["churn_hazard"]
    decided = h[h.churn_type == "voluntary"]
    cancels = collections.defaultdict(list)
    for e in company["events"]:
        obj = e["data"]["object"]
        if obj["object"] != "subscription":
            continue
        requested = obj["cancellation_details"]["reason"] == "cancellation_requested"
        if requested and (
            e["type"] == "customer.subscription.deleted"
            or (
                e["type"] == "customer.subscription.updated"
                and "cancel_at_period_end" in e["data"]["previous_attributes"]
            )
        ):
            cancels[obj["customer"]].append(e["created"])
    hits = 0
    for row in decided.itertuples():
        start = row.month.timestamp()
        hits += any(start <= t < start + 32 * 86_400 for t in cancels[row.account_id])
    assert hits / len(decided) > 0.95


def test_observed_signals_carry_the_latent_health(company):
    h = company["truth"]["churn_hazard"][["account_id", "month", "health"]]
    crm = pd.read_csv(company["out"] / "landing" / "csv" / "crm_signals.csv")
    crm["month"] = pd.to_datetime(crm.date, utc=True)
    joined = h.merge(crm, on=["account_id", "month"])
    assert len(joined) > 0.9 * len(h)
    assert joined.health.corr(joined.health_score, method="spearman") > 0.6
    nps = joined.dropna(subset=["nps"])
    assert nps.health.corr(nps.nps, method="spearman") > 0.4
    assert (joined.seats_used <= joined.seats_purchased).all()


def test_recovery_truth_matches_the_payment_events(company, invoices):
    rec = company["truth"]["recovery"]
    assert len(rec) > 0 and set(rec.attempt) == {1, 2, 3, 4, 5}
    charges = collections.defaultdict(list)
    for e in company["events"]:
        if e["type"] in ("charge.failed", "charge.succeeded"):
            charges[e["data"]["object"]["invoice"]].append(e["data"]["object"])
    end = pd.Timestamp("2025-01-01", tz="UTC")
    complete, recovered, p_ever = 0, 0, 0.0
    for inv_id, g in rec.groupby("invoice_id"):
        g = g.sort_values("attempt")
        chs = sorted(charges[inv_id], key=lambda c: c["created"])
        assert g.attempted.sum() == len(chs), inv_id
        assert (
            chs[0]["status"] == "failed" and chs[0]["outcome"]["reason"] == g.decline_code.iloc[0]
        )
        ok = [c["status"] == "succeeded" for c in chs]
        assert list(g.succeeded[g.attempted]) == ok
        assert ((g.p_success > 0) & (g.p_success < 1)).all()
        r = g.iloc[0]
        assert r.p_recovered_7d <= r.p_recovered_14d <= r.p_recovered_30d <= r.p_recovered_ever
        final = invoices[inv_id][-1]["status"]
        assert final == ("paid" if any(ok) else final)
        if g.attempt_at.max() < end and final in ("paid", "uncollectible"):
            complete += 1
            recovered += any(ok)
            p_ever += r.p_recovered_ever
    assert complete > 50
    sd = math.sqrt(p_ever * (1 - p_ever / complete))
    assert abs(recovered - p_ever) < 4 * sd + 1, (recovered, p_ever)


def test_recovery_probability_responds_to_what_should_matter():
    base = dict(
        attempt=2,
        days_since_failure=3,
        day_of_month=10,
        days_in_month=30,
        amount_usd=100,
        health=0.0,
        prior_failed_invoices=0,
    )
    p = lambda **kw: bh.recovery_probability(**{**base, "decline_code": "insufficient_funds", **kw})  # noqa: E731
    assert p(day_of_month=15) > p()
    assert p(health=1.0) > p() > p(health=-1.0)
    assert p(amount_usd=5000) < p()
    assert p(prior_failed_invoices=3) < p()
    assert p(days_since_failure=14) > p()
    assert bh.recovery_probability(**{**base, "decline_code": "stolen_card"}) < 0.05 < p()


def test_offer_experiment_is_randomised_and_visible(company):
    offers = company["truth"]["offers"]
    assert len(offers) == 300 and offers.account_id.is_unique
    eligible = offers[offers.eligible]
    assert len(eligible) > 30
    n, k = len(eligible), eligible.assigned.sum()
    assert abs(k - n / 2) < 4 * math.sqrt(n / 4)
    assert not offers[~offers.eligible].assigned.any()
    retained = collections.defaultdict(list)
    for e in company["events"]:
        obj = e["data"]["object"]
        if (
            e["type"] == "customer.subscription.updated"
            and obj.get("discount")
            and obj["discount"]["coupon"]["id"] == "RETAIN30"
            and "discount" in e["data"]["previous_attributes"]
        ):
            retained[obj["customer"]].append(e["created"])
    offered = offers[offers.offered_at.notna()]
    assert set(retained) == set(offered.account_id)
    for row in offered.itertuples():
        assert (
            int(row.offered_at.timestamp()) in retained[row.account_id]
            or min(retained[row.account_id]) - row.offered_at.timestamp() < 5
        )
    assert set(offered.account_id) <= set(eligible.account_id[eligible.assigned])
    # heterogeneous: self-serve accounts respond more than sales accounts
    acc = company["truth"]["accounts"].merge(offers, on="account_id")
    by_channel = acc.groupby("channel").effect_relative.mean()
    assert by_channel["self-serve"] > by_channel["sales"] + 0.1
    assert acc.effect_relative.std() > 0.08


def test_regime_change_raises_failures_and_lowers_usage(company):
    regime = json.loads((company["out"] / "truth" / "regime.json").read_text())
    assert (
        regime["regime_change_month"] == 12
        and regime["regime_change_date"] == "2024-01-01T00:00:00Z"
    )
    cut = 1704067200
    first = {}
    for e in company["events"]:
        if e["type"] in ("charge.failed", "charge.succeeded"):
            first.setdefault(e["data"]["object"]["invoice"], e)
    before = [e["type"] == "charge.failed" for e in first.values() if e["created"] < cut]
    after = [
        e["type"] == "charge.failed"
        for e in first.values()
        if cut <= e["created"] < cut + 61 * 86400
    ]
    assert np.mean(after) > 1.5 * np.mean(before)
    usage = pd.read_csv(company["out"] / "landing" / "csv" / "usage.csv")
    crm = pd.read_csv(company["out"] / "landing" / "csv" / "crm_signals.csv")
    calls = usage[usage.metric == "api_calls"].groupby("date").quantity.sum()
    seats = crm.assign(m=crm.date.str[:7]).groupby("m").seats_purchased.sum()
    per_seat = calls.groupby(calls.index.str[:7]).sum() / seats
    assert per_seat["2024-01":"2024-06"].mean() < 0.9 * per_seat["2023-07":"2023-12"].mean()


# ---------------------------------------------------------------- CSV exports


def test_csv_exports_have_documented_headers_and_known_accounts(company):
    csv_dir = company["out"] / "landing" / "csv"
    customers = {
        e["data"]["object"]["id"] for e in company["events"] if e["type"] == "customer.created"
    }
    assert len(customers) == 300
    headers = {
        "usage.csv": ["account_id", "date", "metric", "quantity"],
        "support_tickets.csv": [
            "ticket_id",
            "account_id",
            "created_at",
            "severity",
            "category",
            "status",
            "resolved_at",
            "first_response_minutes",
            "subject",
            "body",
        ],
        "crm_signals.csv": [
            "account_id",
            "date",
            "health_score",
            "nps",
            "seats_purchased",
            "seats_used",
            "plan_tier",
        ],
        "fx_rates.csv": ["date", "currency", "rate_to_usd"],
    }
    for name, header in headers.items():
        frame = pd.read_csv(csv_dir / name, keep_default_na=False)
        assert list(frame.columns) == header, name
        assert len(frame) > 0
        if "account_id" in frame:
            assert set(frame.account_id) <= customers, name
    tickets = pd.read_csv(csv_dir / "support_tickets.csv", keep_default_na=False)
    assert set(tickets.severity) == {"low", "medium", "high", "urgent"}
    assert tickets.created_at.str.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$").all()
    assert tickets.ticket_id.is_unique
    fx = pd.read_csv(csv_dir / "fx_rates.csv")
    assert set(fx.currency) == {"usd", "eur", "gbp"} and len(fx) == 3 * fx.date.nunique()
    assert fx[fx.currency == "eur"].rate_to_usd.between(0.8, 1.4).all()
    usage = pd.read_csv(csv_dir / "usage.csv")
    assert set(usage.metric) == {"api_calls", "active_users"}
    assert not usage.duplicated(["account_id", "date", "metric"]).any()


def test_no_card_number_anywhere_without_faults(company):
    for path in sorted(company["out"].rglob("*")):
        if path.is_file() and path.suffix in (".jsonl", ".csv", ".json"):
            text = path.read_text()
            bad = (
                []
                if not contains_pan(text)
                else [line for line in text.splitlines() if contains_pan(line)]
            )
            assert not bad, (path.name, bad[:1])


# ---------------------------------------------------------------- faults


def test_fault_manifest_lists_exactly_what_was_injected(tmp_path):
    clean_dir, fault_dir = tmp_path / "clean", tmp_path / "faults"
    small = dict(accounts=120, months=12, seed=11, progress=False, chunk_size=60)
    simulate(out=clean_dir, **small)
    summary = simulate(out=fault_dir, faults=True, **small)
    manifest = json.loads((fault_dir / "landing" / "faults_manifest.json").read_text())
    faults = manifest["faults"]
    assert summary.counts["faults"] == len(faults)
    assert collections.Counter(f["kind"] for f in faults) == manifest["counts"]
    assert set(manifest["counts"]) == {
        "duplicate_delivery",
        "out_of_order",
        "malformed_json",
        "missing_required_field",
        "unknown_event_type",
        "card_number_in_text",
        "schema_change",
    }
    stripe_types = set((STRIPE / "event_types_v1.txt").read_text().split())
    landing = fault_dir / "landing"
    files = {}

    def line_of(f):
        if f["file"] not in files:
            files[f["file"]] = (landing / f["file"]).read_text().splitlines()
        return files[f["file"]][f["line"] - 1]

    faulted_lines = collections.defaultdict(set)
    for f in faults:
        text = line_of(f)
        faulted_lines[f["file"]].add(f["line"])
        kind = f["kind"]
        if f["file"].endswith(".csv"):
            assert kind == "card_number_in_text" and contains_pan(text) and f["ticket_id"] in text
            continue
        if kind == "malformed_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(text)
            assert f["event_id"] in text
            continue
        event = json.loads(text)
        if kind == "duplicate_delivery":
            assert (
                text == files[f["file"]][f["original_line"] - 1] and f["line"] > f["original_line"]
            )
            faulted_lines[f["file"]].add(f["original_line"])
        elif kind == "out_of_order":
            earlier = [
                json.loads(x)["created"]
                for x in files[f["file"]][: f["line"] - 1][-400:]
                if x.startswith("{") and x.endswith("}")
            ]
            assert event["id"] == f["event_id"] and max(earlier) > event["created"]
        elif kind == "missing_required_field":
            node = event
            parts = f["field"].split(".")
            for part in parts[:-1]:
                node = node[part]
            assert parts[-1] not in node
        elif kind == "unknown_event_type":
            assert event["type"] not in stripe_types and event["id"] == f["event_id"]
        elif kind == "card_number_in_text":
            assert contains_pan(text) and event["id"] == f["event_id"]
        elif kind == "schema_change":
            assert event["api_version"] == "2025-03-31.basil" and event["id"] == f["event_id"]
    # every line that is not listed is untouched: byte-identical to a clean run's line
    clean = {
        line
        for p in (clean_dir / "landing" / "stripe").glob("*.jsonl")
        for line in p.read_text().splitlines()
    }
    for name, lines in files.items():
        if name.endswith(".csv"):
            continue
        for number, text in enumerate(lines, start=1):
            if number not in faulted_lines[name]:
                assert text in clean, (name, number)
                assert not contains_pan(text)
    for path in (landing / "stripe").glob("events-*.jsonl"):
        rel = str(path.relative_to(landing))
        if rel not in files:
            files[rel] = path.read_text().splitlines()
        n_clean = len((clean_dir / "landing" / rel).read_text().splitlines())
        extra = sum(
            f["file"] == rel and f["kind"] in ("duplicate_delivery", "unknown_event_type")
            for f in faults
        )
        assert len(files[rel]) == n_clean + extra
    tickets = csv.reader((landing / "csv" / "support_tickets.csv").read_text().splitlines())
    pans = [i for i, row in enumerate(tickets, start=1) if contains_pan(",".join(row))]
    assert pans == sorted(f["line"] for f in faults if f["file"].endswith(".csv"))
