"""The real-time path of ``workbench receive``: signed webhooks -> dunning decisions (#9) and
invoice checks before payment (#10)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sqlite3
import time
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings

from workbench import approvals, audit
from workbench.config import load_settings
from workbench.dunning import decide_invoice, decide_with_control
from workbench.dunning_realtime import (
    PinnedSqliteStore,
    RealtimeHandler,
    RowScorer,
    days_to_payday,
    hours_until,
)
from workbench.features import serving
from workbench.ingest import ingest
from workbench.models import registry, training
from workbench.policy import LEVELS, parse_policy
from workbench.simulator import simulate
from workbench.store import Warehouse
from workbench.webhooks import WebhookReceiver, compute_signature, landing_dir

REPO = Path(__file__).resolve().parents[1]
SECRET = "whsec_realtime_test"
CSV = {
    "usage.csv": "simulator_usage",
    "crm_signals.csv": "simulator_crm_signals",
    "support_tickets.csv": "simulator_support_tickets",
    "fx_rates.csv": None,
}


def synthetic_recovery(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    """A recovery modelling frame with the model's inputs (enough to train and register)."""
    rng = np.random.default_rng(seed)
    as_of = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.uniform(0, 420, n), unit="D")
    decline = rng.choice(["insufficient_funds", "do_not_honor", "expired_card"], n)
    health = rng.normal(50, 15, n)
    logit = -0.5 + 0.04 * (health - 50) - 0.8 * (decline == "expired_card")
    frame = pd.DataFrame({
        "invoice_id": [f"in_{i}" for i in range(n)], "account_id": [f"cus_{i % 300}" for i in range(n)],
        "as_of": as_of.astype("datetime64[us, UTC]"), "invoice_last_decline_code": decline,
        "invoice_attempt_number": rng.integers(1, 5, n), "invoice_hours_since_first_failure": rng.uniform(0, 500, n),
        "invoice_failure_day_of_month": rng.integers(1, 29, n).astype(float),
        "invoice_failure_days_to_payday": rng.integers(0, 13, n).astype(float),
        "invoice_hours_to_next_attempt": rng.uniform(24, 200, n),
        "invoice_amount_due": rng.uniform(1_000, 90_000, n), "invoice_currency": "usd",
        "failed_invoices_total": rng.integers(0, 4, n), "health_score": health,
        "usage_per_seat_7d": rng.uniform(0, 50, n), "usage_per_seat_30d": rng.uniform(0, 50, n),
        "plan_tier": rng.choice(["prod_a", "prod_b"], n),
    })  # fmt: skip
    frame["recovered_14d"] = pd.array(
        (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8), dtype="Int8"
    )
    frame["plan"] = frame["plan_tier"]
    return frame


@pytest.fixture(scope="module")
def company(tmp_path_factory):
    data = tmp_path_factory.mktemp("realtime") / "data"
    simulate(accounts=150, months=14, seed=3, out=data, progress=False)
    settings = load_settings(REPO, overrides={"data_dir": str(data)})
    ingest(data / "landing" / "stripe", source="stripe", settings=settings, progress=False)
    for name, mapping in CSV.items():
        ingest(
            data / "landing" / "csv" / name,
            source="csv",
            mapping=mapping,
            settings=settings,
            progress=False,
        )
    with Warehouse(settings).read(step="test") as con:
        horizon = pd.Timestamp(con.execute("SELECT max(created) FROM events").fetchone()[0])
        serving.publish_online(con, as_of=horizon, settings=settings)
    res = training.train_recovery(
        None, horizons=(14,), dataset=synthetic_recovery(), settings=settings,
        test_months=3, valid_months=3,
    )  # fmt: skip
    yield settings, data, horizon, res.runs["recovery_14d"]
    serving.reset_store_cache()


def signed(event: dict, *, t: int) -> tuple[bytes, str]:
    body = json.dumps(event).encode()
    return body, f"t={t},v1={compute_signature(SECRET, t, body)}"


def receive(receiver: WebhookReceiver, event: dict, *, t: int):
    body, header = signed(event, t=t)
    outcome = receiver.handle(body, header, remote="127.0.0.1")
    assert outcome.status == 200
    receiver.notify(outcome)
    return outcome


def landed_events(data: Path, kind: str) -> list[dict]:
    out = []
    for path in sorted((data / "landing" / "stripe").glob("events-*.jsonl")):
        for line in path.read_text().splitlines():
            ev = json.loads(line)
            if ev["type"] == kind:
                out.append(ev)
    return out


def failed_invoice_event(data: Path, horizon: pd.Timestamp, *, eid: str, amount: int | None = None,
                         attempt: int = 1) -> tuple[dict, dict]:  # fmt: skip
    """A fresh ``invoice.payment_failed`` (and its ``charge.failed``) built from a real one."""
    ev = copy.deepcopy(landed_events(data, "invoice.payment_failed")[-1])
    t = int(horizon.timestamp()) + 60
    inv = ev["data"]["object"]
    inv.update(id=f"in_rt_{eid}", attempt_count=attempt, currency="usd",
               next_payment_attempt=t + 3 * 86_400)  # fmt: skip
    if amount is not None:
        inv.update(amount_due=amount, amount_remaining=amount, total=amount)
    ev.update(id=f"evt_rt_{eid}", created=t)
    charge = {
        "id": f"evt_ch_{eid}", "object": "event", "type": "charge.failed", "created": t - 1,
        "data": {"object": {"id": f"ch_{eid}", "object": "charge", "invoice": inv["id"],
                            "failure_code": "card_declined", "outcome": {"reason": "insufficient_funds"}}},
    }  # fmt: skip
    return charge, ev


def test_days_to_payday() -> None:
    assert days_to_payday(pd.Timestamp("2024-03-15", tz="UTC")) == 0
    assert days_to_payday(pd.Timestamp("2024-03-10", tz="UTC")) == 5
    assert days_to_payday(pd.Timestamp("2024-02-20", tz="UTC")) == 8  # Feb 28th (leap year)


def test_the_announced_next_retry_reaches_the_model_as_hours() -> None:
    now = pd.Timestamp("2024-03-10 12:00", tz="UTC")
    assert hours_until(int(now.timestamp()) + 36 * 3600, now) == 36.0
    assert math.isnan(hours_until(None, now))


def test_signed_payment_failed_is_decided_and_stored_with_versions(company) -> None:
    settings, data, horizon, run = company
    handler = RealtimeHandler(settings)
    assert handler.model_alias == "challenger" and handler.model_info["name"] == "recovery_14d"
    assert handler.account_features  # online features come from Feast
    receiver = WebhookReceiver(
        landing_dir(settings), secrets=[SECRET], on_event=handler, tolerance=None
    )
    charge, ev = failed_invoice_event(data, horizon, eid="a", amount=5_000)
    receive(receiver, charge, t=int(time.time()))
    assert handler.declines["in_rt_a"] == "insufficient_funds"
    decision = handler.decide_event(ev)
    assert decision.policy_version == handler.policy.version
    assert decision.model_versions == f"recovery_14d@challenger:{run.version}"
    assert 0 <= decision.recovery_probability <= 1
    assert decision.latency_ms < 1_000  # the 50 ms p99 goal is measured by the benchmark
    # through the receive path: stored as an audit entry with both versions
    receive(receiver, {**ev, "id": "evt_rt_a2"}, t=int(time.time()))
    entries = [e for e in audit.iter_entries(handler.store) if e.event == "decision.realtime"]
    assert len(entries) == 2
    details = (
        json.loads(entries[-1].details)
        if isinstance(entries[-1].details, str)
        else entries[-1].details
    )
    assert details["invoice_id"] == "in_rt_a"
    assert details["model_versions"] == decision.model_versions
    assert details["policy_version"] == handler.policy.version
    # a replayed delivery (same event id) decides nothing again
    receive(receiver, {**ev, "id": "evt_rt_a2"}, t=int(time.time()))
    assert (
        len([e for e in audit.iter_entries(handler.store) if e.event == "decision.realtime"]) == 2
    )


def test_guardrails_still_win_in_real_time(company) -> None:
    settings, data, horizon, _ = company
    handler = RealtimeHandler(settings)
    handler.scorer = lambda values: 1.0  # a model that is always sure
    # a hard decline: never retried, whatever the score
    charge, ev = failed_invoice_event(data, horizon, eid="stolen")
    charge["data"]["object"]["outcome"]["reason"] = "stolen_card"
    handler(charge)
    d = handler(ev)
    assert d.recovery_probability == 1.0 and d.action not in ("retry_now", "retry_at")
    # the retry cap: attempt 10 with 8 automatic retries allowed (the default policy)
    charge, ev = failed_invoice_event(data, horizon, eid="capped", attempt=10)
    handler(charge)
    assert handler(ev).action not in ("retry_now", "retry_at")
    # above the approval amount: queued for a human, never executed
    charge, ev = failed_invoice_event(data, horizon, eid="big", amount=5_000_000)
    handler(charge)
    d = handler(ev)
    assert d.action in ("retry_now", "retry_at")  # a soft decline with a perfect score
    assert d.stored in ("queued", "shadow") and "needs approval" in d.reason
    if d.stored == "queued":
        items = approvals.list_items(handler.store, subject_id="in_rt_big")
        assert items and all(i.status != "executed" for i in items)


def _finalized(data: Path, *, new_id: str, eid: str, shift_days: int = 40) -> dict:
    """A real ``invoice.finalized`` moved ``shift_days`` later under a new id (a new period)."""
    events = [e for e in landed_events(data, "invoice.finalized")
              if e["data"]["object"].get("billing_reason") == "subscription_cycle"]  # fmt: skip
    ev = copy.deepcopy(max(events, key=lambda e: e["created"]))
    s = shift_days * 86_400
    inv = ev["data"]["object"]
    inv["id"] = new_id
    for key in ("created", "period_start", "period_end"):
        if inv.get(key) is not None:
            inv[key] += s
    for key, value in list((inv.get("status_transitions") or {}).items()):
        if value is not None:
            inv["status_transitions"][key] = value + s
    for i, line in enumerate(inv["lines"]["data"]):
        line["id"] = f"il_{new_id}_{i}"
        line["period"] = {k: v + s for k, v in line["period"].items()}
    ev.update(id=eid, created=ev["created"] + s)
    return ev


def test_double_bill_is_flagged_and_queued_once_before_payment(company) -> None:
    settings, data, _, _ = company
    handler = RealtimeHandler(settings, model="none", curve=False)
    receiver = WebhookReceiver(
        landing_dir(settings), secrets=[SECRET], on_event=handler, tolerance=None
    )
    first = _finalized(data, new_id="in_rt_first", eid="evt_fin_1")
    second = _finalized(data, new_id="in_rt_second", eid="evt_fin_2")
    second["data"]["object"]["created"] += 7200  # billed again two hours later
    assert handler.check_invoice_event(copy.deepcopy(first)).empty  # nothing wrong with the first
    receive(receiver, second, t=int(time.time()))

    def stored() -> pd.DataFrame:
        with Warehouse(settings).read(step="test") as con:
            return con.execute("SELECT * FROM anomaly_findings_realtime").df()

    found = stored()
    assert (
        list(found["object_id"]) == ["in_rt_second"]
        and found["rule"].iloc[0] == "duplicate_invoice"
    )
    items = approvals.list_items(handler.store, subject_id="in_rt_second")
    assert len(items) == 1 and items[0].action_type == "void_invoice"
    # replaying the same webhook changes nothing; a second delivery under another event id
    # stores the same finding once and queues nothing new
    receive(receiver, second, t=int(time.time()))
    receive(receiver, {**second, "id": "evt_fin_2b"}, t=int(time.time()))
    assert len(stored()) == 1
    assert len(approvals.list_items(handler.store, subject_id="in_rt_second")) == 1


# --------------------------------------------------------------------------- the fast paths

AS_OF = pd.Timestamp("2024-03-01T00:00:00", tz="UTC")
decline_codes = st.sampled_from(
    [None, "insufficient_funds", "generic_decline", "stolen_card", "fraudulent", "expired_card"]
)
scores = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=1),
    st.sampled_from([0.0, 0.6, 1.0, 0.05, 0.5999999]),
)
invoices = st.fixed_dictionaries({
    "invoice_id": st.text("abcdef0123_", min_size=1, max_size=12).map(lambda s: f"in_{s}"),
    "account_id": st.one_of(st.none(), st.sampled_from(["cus_1", "cus_2"])),
    "amount_due": st.integers(0, 10**9),
    "currency": st.sampled_from(["usd", "eur"]),
    "amount_due_reporting": st.one_of(st.none(), st.integers(0, 10**9), st.sampled_from([1_000_000, 1_000_001, 50_000])),
    "attempt_count": st.integers(0, 12),
    "hours_since_last": st.one_of(st.none(), st.floats(0, 24 * 200)),
    "decline_code": decline_codes,
    "recovery_probability": scores,
    "uplift": scores,
    "model_versions": st.sampled_from(["", "recovery_14d@champion:3", "retry-curve:10rows"]),
    "preferred_in_hours": st.one_of(st.none(), st.floats(-48, 24 * 20)),
})  # fmt: skip
policies = st.builds(
    lambda retries, hours, threshold, amount, budget, share, levels, shadow: parse_policy({
        "shadow": shadow, "approval": {"amount_above_minor": amount},
        "bulk_approval": {"max_amount_minor": min(50_000, amount)},
        "retries": {"max_auto_retries": retries, "min_hours_between": hours,
                    "min_recovery_probability": threshold},
        "retention": {"offer_budget_minor": budget}, "control": {"share": share},
        "automation": {"levels": levels},
    }),
    st.integers(0, 6), st.floats(0, 96), st.floats(0, 1), st.integers(0, 2_000_000),
    st.integers(0, 200_000), st.sampled_from([0.0, 0.3, 0.5]),
    st.fixed_dictionaries({**{t: st.sampled_from(LEVELS) for t in
                              ("retry_payment", "retention_offer", "escalate_collections")},
                           "write_off": st.sampled_from(("insight", "assisted"))}),  # never automatic
    st.booleans(),
)  # fmt: skip


def _invoice(raw: dict, as_of: pd.Timestamp) -> dict:
    inv = {k: v for k, v in raw.items() if k not in ("hours_since_last", "preferred_in_hours")}
    hours, pref = raw["hours_since_last"], raw["preferred_in_hours"]
    inv["last_attempt_at"] = None if hours is None else as_of - pd.Timedelta(hours=hours)
    inv["preferred_retry_at"] = None if pref is None else as_of + pd.Timedelta(hours=pref)
    return inv


def _frame_of(inv: dict) -> pd.DataFrame:
    """The invoice as the batch engine gets it (as in tests/test_dunning.py)."""
    df = pd.DataFrame([inv])
    for col in ("last_attempt_at", "preferred_retry_at"):  # the same instants (ns)
        df[col] = pd.to_datetime(df[col], utc=True).astype("datetime64[ns, UTC]")
    df["amount_due_reporting"] = df["amount_due_reporting"].astype("Int64")
    return df


def _same(fast: object, frame: object) -> bool:
    if fast is None or frame is None or pd.isna(frame) is True:
        return (fast is None or pd.isna(fast) is True) and (frame is None or pd.isna(frame) is True)
    if isinstance(fast, float):
        return fast == frame or (math.isnan(fast) and math.isnan(frame))
    return fast == frame


@hyp_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=invoices,
    policy=policies,
    paused=st.frozensets(
        st.sampled_from(["*", "retry_payment", "write_off", "retention_offer"]), max_size=2
    ),
    as_of_ns=st.integers(0, 10**9),
)
def test_single_invoice_fast_path_decides_exactly_like_the_frame_path(
    raw: dict, policy, paused: frozenset[str], as_of_ns: int
) -> None:
    as_of = AS_OF + pd.Timedelta(as_of_ns, unit="ns")
    inv = _invoice(raw, as_of)
    frame = decide_with_control(_frame_of(inv), as_of=as_of, policy=policy, paused=paused)
    fast = decide_invoice(inv, as_of=as_of, policy=policy, paused=paused)
    row = frame.iloc[0].to_dict()
    assert list(fast) == list(row)
    different = {k: (fast[k], row[k]) for k in row if not _same(fast[k], row[k])}
    assert not different


def test_fast_path_refuses_what_the_frame_path_refuses() -> None:
    inv = _invoice(
        {"invoice_id": "in_x", "account_id": None, "amount_due": 100, "currency": "usd",
         "amount_due_reporting": 100, "attempt_count": 1, "hours_since_last": 1.0,
         "decline_code": None, "recovery_probability": 0.9, "uplift": np.nan,
         "model_versions": "", "preferred_in_hours": None},
        AS_OF,
    )  # fmt: skip
    policy = parse_policy({})
    for change, message in (
        ({"currency": "USD"}, "lowercase"),
        ({"amount_due": 12.5}, "non-negative integers"),
        ({"attempt_count": None}, "missing values"),
        ({"last_attempt_at": pd.Timestamp("2024-02-29")}, "timezone-aware"),
    ):
        with pytest.raises(ValueError, match=message):
            decide_invoice({**inv, **change}, as_of=AS_OF, policy=policy)
    with pytest.raises(ValueError, match="missing fields"):
        decide_invoice({k: v for k, v in inv.items() if k != "uplift"}, as_of=AS_OF, policy=policy)


def test_row_scorer_equals_the_model_on_frames(company) -> None:
    settings, *_ = company
    model, _ = registry.load_model("recovery_14d", "challenger", settings=settings)
    scorer = RowScorer(model)
    rng = np.random.default_rng(7)
    levels = {c: list(v) for c, v in model.spec.categorical.items()}
    rows = []
    for i in range(60):
        values: dict = {}
        for f in model.spec.numeric:
            values[f] = None if i % 7 == 0 else float(rng.normal(10, 20))
        for c, lv in levels.items():
            values[c] = [None, "never_seen", *lv][i % (len(lv) + 2)]
        rows.append(values)
    frame_p = model.predict(pd.DataFrame([{f: r.get(f) for f in model.features} for r in rows]))
    fast_p = np.array([scorer(r) for r in rows])
    np.testing.assert_array_equal(fast_p, frame_p)
    assert len(set(np.round(fast_p, 6))) > 5  # the rows are really scored differently


def test_pinned_store_one_transaction_savepoints_and_wal(tmp_path: Path) -> None:
    store = PinnedSqliteStore(f"sqlite:///{tmp_path / 'approvals.sqlite'}")
    with store.transaction() as tx:
        assert tx.fetchone("PRAGMA journal_mode")["journal_mode"] == "wal"
        assert tx.fetchone("PRAGMA synchronous")["synchronous"] == 1  # NORMAL
    with store.transaction() as tx:
        audit.append(tx, actor="t", event="outer", at=AS_OF)
        with pytest.raises(RuntimeError), store.transaction() as inner:
            audit.append(inner, actor="t", event="inner", at=AS_OF)
            raise RuntimeError("inner fails")
        with store.transaction() as inner:  # a nested one that succeeds
            audit.append(inner, actor="t", event="inner ok", at=AS_OF)
        # nothing is visible to another connection before the outer commit
        other = sqlite3.connect(tmp_path / "approvals.sqlite")
        assert other.execute("SELECT count(*) FROM audit_log").fetchone()[0] == 0
    assert other.execute("SELECT count(*) FROM audit_log").fetchone()[0] == 2
    other.close()
    assert [e.event for e in audit.iter_entries(store)] == ["outer", "inner ok"]
    assert audit.verify(store).ok
    with pytest.raises(ValueError), store.transaction() as tx:
        audit.append(tx, actor="t", event="rolled back", at=AS_OF)
        raise ValueError("outer fails")
    assert len(list(audit.iter_entries(store))) == 2
    store.close()


def test_real_events_decide_like_the_batch_engine(company) -> None:
    """The handler's fast path on real events: same decision as the frame path on the
    handler's own inputs, one commit per decision, and an intact audit chain."""
    settings, data, horizon, _ = company
    handler = RealtimeHandler(settings)
    policy = dataclasses.replace(handler.policy)
    for k, amount in enumerate((5_000, 2_000_000, 90_000)):
        charge, ev = failed_invoice_event(data, horizon, eid=f"eq{k}", amount=amount, attempt=k + 1)
        handler(charge)
        invoice, now, first = handler.invoice_record(ev)
        p, versions, _ = handler.score(invoice, first, now)
        preferred, _ = handler._timing(invoice)
        invoice.update(
            recovery_probability=p, model_versions=versions, preferred_retry_at=preferred
        )
        fast = decide_invoice(invoice, as_of=now, policy=policy)
        frame = decide_with_control(_frame_of(invoice), as_of=now, policy=policy).iloc[0]
        assert all(_same(fast[c], frame[c]) for c in frame.index)
        d = handler(ev)
        assert (d.action, d.reason) == (fast["action"], fast["reason"])
    assert audit.verify(handler.store).ok
    handler.close()


def test_a_hard_decline_arriving_after_the_invoice_event_withdraws_the_retry(company) -> None:
    settings, _, _, _ = company
    handler = RealtimeHandler(settings, model="none", curve=False)
    handler.policy = parse_policy({"control": {"share": 0.0}})
    handler.scorer = lambda values: 0.9  # the model would retry
    t = int(time.time())
    invoice_failed = {
        "id": "evt_inv_late",
        "type": "invoice.payment_failed",
        "created": t,
        "data": {
            "object": {
                "object": "invoice",
                "id": "in_late",
                "customer": "cus_late",
                "currency": "usd",
                "amount_due": 5_000,
                "attempt_count": 1,
            }
        },
    }
    charge_failed = {"id": "evt_ch_late", "type": "charge.failed", "created": t,
                     "data": {"object": {"object": "charge", "id": "ch_late", "invoice": "in_late",
                                         "failure_code": "card_declined",
                                         "outcome": {"reason": "stolen_card"}}}}  # fmt: skip
    first = handler(invoice_failed)  # decided before the decline code is known
    assert first.action != "wait" and first.stored == "executed"
    again = handler(charge_failed)  # ... which now forbids retries: decided again
    assert again is not None and again.action == "wait"
    (item,) = approvals.list_items(handler.store, subject_id="in_late")
    assert item.status == "rolled_back"
    kinds = approvals.executions_frame(handler.store, item_id=item.item_id)["kind"].tolist()
    assert sorted(kinds) == ["execute", "rollback"]
    # a soft decline, or the same code again, decides nothing new
    assert handler({**charge_failed, "id": "evt_ch_late_2"}) is None
    assert audit.verify(handler.store).ok
    handler.close()


# --------------------------------------------------------------------------- the policy in force

DEFAULT_POLICY = (REPO / "workbench" / "policies" / "default.yaml").read_text()
STRICTER = DEFAULT_POLICY.replace(
    "min_recovery_probability: 0.6", "min_recovery_probability: 0.7"
).replace('label: "default"', 'label: "stricter"')


def _payment_failed(eid: str) -> dict:
    return {"id": f"evt_{eid}", "type": "invoice.payment_failed", "created": int(time.time()),
            "data": {"object": {"object": "invoice", "id": f"in_{eid}", "customer": "cus_1",
                                "currency": "usd", "amount_due": 5_000, "attempt_count": 1}}}  # fmt: skip


def _recorded_versions(handler: RealtimeHandler) -> list[str]:
    """``policy_version`` of every ``decision.realtime`` audit entry, oldest first."""
    out = []
    for e in audit.iter_entries(handler.store):
        if e.event == "decision.realtime":
            details = json.loads(e.details) if isinstance(e.details, str) else e.details
            out.append(details["policy_version"])
    return out


def test_an_approved_policy_change_decides_the_next_event_without_a_restart(
    isolated_env, caplog
) -> None:
    """The receiver loads the policy at start; an approved policy change, a broken file and
    its repair are each picked up at the next event: the broken file is not used (the last
    good policy decides, one error saying what to do), the repaired one is."""
    from workbench import policy_changes
    from workbench.approvals import Identity, Role

    settings = load_settings()
    handler = RealtimeHandler(settings, model="none", curve=False, anomalies=False)
    first = handler(_payment_failed("a")).policy_version
    proposal = policy_changes.propose_policy_change(
        settings, STRICTER, who=Identity("alice", Role.ANALYST), reason="stricter"
    )
    store = approvals.open_store(settings)
    out = approvals.approve(store, proposal.item_id, who=Identity("bob", Role.APPROVER),
                            current_state=approvals.CurrentState(store))  # fmt: skip
    assert out.code == "executed", out.message
    new = proposal.new_version
    assert new != first
    assert handler(_payment_failed("b")).policy_version == new
    assert handler.policy.label == "stricter"
    # a hand edit that breaks the file: the last good policy keeps deciding, one error
    Path(settings.policy_file).write_text("retries: [not, a mapping\n")
    with caplog.at_level("ERROR", logger="workbench.dunning_realtime"):
        assert handler(_payment_failed("c")).policy_version == new
        assert handler(_payment_failed("d")).policy_version == new
    [error] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert f"keep the last good policy, {new}" in error.getMessage()
    assert "put a valid policy back" in error.getMessage()
    assert "not valid YAML" in error.getMessage()
    # repaired (here: the shipped default put back): used from the next event on
    Path(settings.policy_file).write_text(DEFAULT_POLICY)
    assert handler(_payment_failed("e")).policy_version == first
    assert _recorded_versions(handler) == [first, new, new, new, first]
    handler.close()


def test_the_policy_file_is_read_again_only_when_it_changed(isolated_env, monkeypatch) -> None:
    """One ``stat()`` per event, no re-parse (the 50 ms p99 goal): the file is parsed again
    only after it was replaced, even by the same text."""
    import workbench.dunning_realtime as rt
    from workbench.store import atomic_write_bytes

    settings = load_settings()
    handler = RealtimeHandler(settings, model="none", curve=False, anomalies=False)
    parsed = []
    real = rt.parse_policy_text
    monkeypatch.setattr(rt, "parse_policy_text",
                        lambda *a, **k: parsed.append(1) or real(*a, **k))  # fmt: skip
    for eid in ("p1", "p2", "p3"):
        handler(_payment_failed(eid))
    assert parsed == []
    path = Path(settings.policy_file)
    atomic_write_bytes(path, path.read_bytes())  # replaced, same bytes (a new file)
    handler(_payment_failed("p4"))
    handler(_payment_failed("p5"))
    assert parsed == [1]
    handler.close()
