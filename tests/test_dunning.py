"""The decision engine: each action path, and guardrails no model score can break."""

from __future__ import annotations

import math
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings

from workbench import approvals as ap
from workbench import audit
from workbench.config import load_settings
from workbench.dunning import (
    DECISION_COLUMNS,
    apply_decisions,
    decide,
    decide_daily,
    decisions_to_store,
    run_dunning,
)
from workbench.policy import AUTOMATIC_LEVELS, LEVELS, Policy, parse_policy

AS_OF = pd.Timestamp("2024-03-01T00:00:00", tz="UTC")
POLICY = parse_policy({"retries": {"max_auto_retries": 4}})  # a small cap the tests can reach


def frame(rows: list[dict]) -> pd.DataFrame:
    """Invoices with defaults for the columns a case does not care about."""
    base = {
        "account_id": "acct", "amount_due": 5_000, "currency": "usd", "amount_due_reporting": 5_000,
        "attempt_count": 1, "last_attempt_at": "2024-02-27T00:00:00", "decline_code": "insufficient_funds",
        "recovery_probability": np.nan, "uplift": np.nan, "model_versions": "recovery@champion:3",
    }  # fmt: skip
    df = pd.DataFrame([{**base, "invoice_id": f"in_{i}", **r} for i, r in enumerate(rows)])
    df["last_attempt_at"] = pd.to_datetime(df["last_attempt_at"], utc=True).astype(
        "datetime64[us, UTC]"
    )
    df["amount_due_reporting"] = df["amount_due_reporting"].astype("Int64")
    return df


def one(row: dict, policy: Policy = POLICY, **kw) -> pd.Series:
    return decide(frame([row]), as_of=AS_OF, policy=policy, **kw).iloc[0]


# --------------------------------------------------------------------------- each path


def test_output_contract() -> None:
    inv = frame([{"recovery_probability": 0.9}, {}])
    before = inv.copy()
    out = decide(inv, as_of=AS_OF, policy=POLICY)
    assert list(out.columns) == list(DECISION_COLUMNS)
    assert list(out["invoice_id"]) == ["in_0", "in_1"]
    assert str(out["scheduled_at"].dtype) == "datetime64[us, UTC]"
    assert (out["policy_version"] == POLICY.version).all()
    assert (out["model_versions"] == "recovery@champion:3").all()
    pd.testing.assert_frame_equal(inv, before)  # input untouched


def test_no_open_invoices_no_decisions() -> None:
    out = decide(frame([{}]).iloc[0:0], as_of=AS_OF, policy=POLICY)
    assert out.empty and list(out.columns) == list(DECISION_COLUMNS)
    assert out["reason"].dtype == object and out["requires_approval"].dtype == bool


def test_retry_now_with_expected_value_and_automation() -> None:
    d = one({"recovery_probability": 0.8, "amount_due_reporting": 5_000, "attempt_count": 2})
    assert d["action"] == "retry_now" and d["action_type"] == "retry_payment"
    assert d["scheduled_at"] == AS_OF
    assert d["expected_value"] == pytest.approx(4_000.0)
    assert d["automation_level"] == "automated_with_override"
    assert not d["requires_approval"] and d["executes_automatically"]
    assert "1 of 4 retries used" in d["reason"]


def test_retry_at_respects_the_minimum_spacing() -> None:
    d = one({"recovery_probability": 0.8, "last_attempt_at": "2024-02-29T18:30:00"})
    assert d["action"] == "retry_at"
    assert d["scheduled_at"] == pd.Timestamp(
        "2024-03-01T18:30:00", tz="UTC"
    )  # 24 h after the last attempt


@pytest.mark.parametrize("p", [0.59, np.nan, 1.5, -0.2, np.inf, -np.inf])
def test_no_retry_without_a_valid_score_above_the_threshold(p: float) -> None:
    d = one({"recovery_probability": p})
    assert d["action"] == "wait" and d["automation_level"] == "none"
    if not (isinstance(p, float) and 0 <= p <= 1):
        assert np.isnan(d["expected_value"]) and np.isnan(d["recovery_probability"])
        assert "no recovery score" in d["reason"] or "not a probability" in d["reason"]


def test_guardrails_beat_a_perfect_score() -> None:
    stolen = one({"recovery_probability": 1.0, "decline_code": "stolen_card"})
    assert stolen["action"] == "wait" and "stolen_card forbids retries" in stolen["reason"]
    capped = one({"recovery_probability": 1.0, "attempt_count": 5})
    assert capped["action"] == "wait" and "retry cap reached (4 of 4" in capped["reason"]
    assert one({"recovery_probability": 1.0, "attempt_count": 4})["action"] == "retry_now"


def test_amount_above_the_limit_or_unknown_needs_a_human() -> None:
    limit = POLICY.approval.amount_above_minor
    at_limit = one({"recovery_probability": 0.9, "amount_due_reporting": limit})
    above = one({"recovery_probability": 0.9, "amount_due_reporting": limit + 1})
    unknown = one({"recovery_probability": 0.9, "amount_due_reporting": pd.NA})
    assert at_limit["executes_automatically"] and not at_limit["requires_approval"]
    for d in (above, unknown):
        assert (
            d["action"] == "retry_now"
            and d["requires_approval"]
            and not d["executes_automatically"]
        )
        assert d["risk"] == "high"


def test_escalation_write_off_and_offers() -> None:
    idle_30 = "2024-01-31T00:00:00"
    idle_70 = "2023-12-22T00:00:00"
    esc = one(
        {"recovery_probability": 0.3, "last_attempt_at": idle_30, "amount_due_reporting": 9_000}
    )
    assert (
        esc["action"] == "escalate_collections" and esc["requires_approval"]
    )  # assisted by default
    small = one(
        {"recovery_probability": 0.3, "last_attempt_at": idle_30, "amount_due_reporting": 4_999}
    )
    assert small["action"] == "wait"
    wo = one({"recovery_probability": 0.01, "last_attempt_at": idle_70, "attempt_count": 5})
    assert (
        wo["action"] == "propose_write_off"
        and wo["action_type"] == "write_off"
        and "credit_loss" in wo["reason"]
    )
    no_score = one({"last_attempt_at": idle_70})
    assert no_score["action"] == "propose_write_off"
    offer = one({"recovery_probability": 0.3, "uplift": 0.2})
    assert offer["action"] == "send_retention_offer" and offer["offer_cost_minor"] == 1_000
    assert one({"recovery_probability": 0.3, "uplift": 0.01})["action"] == "wait"


def test_offers_stay_within_the_budget_best_first() -> None:
    policy = parse_policy({"retention": {"offer_budget_minor": 3_100, "offer_cost_fraction": 0.1}})
    inv = frame([
        {"recovery_probability": 0.1, "uplift": 0.10, "amount_due_reporting": 20_000},  # value 2000, cost 2000
        {"recovery_probability": 0.1, "uplift": 0.30, "amount_due_reporting": 10_000},  # value 3000, cost 1000
        {"recovery_probability": 0.1, "uplift": 0.06, "amount_due_reporting": 25_000},  # value 1500, cost 2500
        {"recovery_probability": 0.1, "uplift": 0.50, "amount_due_reporting": 1_000},  # value  500, cost  100
    ])  # fmt: skip
    out = decide(inv, as_of=AS_OF, policy=policy)
    assert list(out["action"]) == [
        "send_retention_offer",
        "send_retention_offer",
        "wait",
        "send_retention_offer",
    ]
    # best value first (in_1, in_0); in_2 does not fit what is left, the smaller in_3 does
    assert out["offer_cost_minor"].tolist() == [2_000, 1_000, 0, 100]
    assert "budget is spent" in out.loc[2, "reason"]


def test_paused_automation_forces_insight() -> None:
    d = one({"recovery_probability": 0.9}, paused={"retry_payment"})
    assert d["action"] == "retry_now" and d["automation_level"] == "insight"
    assert (
        not d["requires_approval"] and not d["executes_automatically"] and "paused" in d["reason"]
    )
    assert one({"recovery_probability": 0.9}, paused={"*"})["automation_level"] == "insight"
    assert one({"recovery_probability": 0.9}, paused={"write_off"})["executes_automatically"]


def test_shadow_mode_runs_nothing() -> None:
    d = one({"recovery_probability": 0.9}, policy=parse_policy({"shadow": True}))
    assert d["shadow"] and d["action"] == "retry_now" and not d["executes_automatically"]
    assert "shadow mode" in d["reason"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.drop(columns="uplift"), "missing columns"),
        (lambda df: pd.concat([df, df]), "more than once"),
        (lambda df: df.assign(amount_due=[12.5]), "non-negative integers"),
        (lambda df: df.assign(currency=["USD"]), "lowercase"),
        (
            lambda df: df.assign(last_attempt_at=df["last_attempt_at"].dt.tz_localize(None)),
            "timezone-aware",
        ),
        (lambda df: df.assign(attempt_count=[None]), "missing values"),
    ],
)
def test_bad_input_is_refused(change, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decide(change(frame([{}])), as_of=AS_OF, policy=POLICY)


# --------------------------------------------------------------------------- day by day (shadow replay)


def test_decide_daily_gives_one_block_of_decisions_per_day() -> None:
    day1, day2 = AS_OF, AS_OF + pd.Timedelta(days=1)
    late = {"recovery_probability": 0.8, "last_attempt_at": "2024-02-29T18:30:00"}
    history = pd.concat(
        [frame([late, {"recovery_probability": 0.1}]).assign(as_of=day2),  # out of day order
         frame([late]).assign(as_of=day1)],
        ignore_index=True,
    )  # fmt: skip
    out = decide_daily(history, policy=POLICY)
    assert list(out.columns) == [*DECISION_COLUMNS, "as_of"]
    assert out["as_of"].tolist() == [day1, day2, day2]  # day order, one block per day
    # the same invoice, decided at each day's time: too soon after its last attempt on
    # day 1 (scheduled 24 h after it), due on day 2
    assert out["action"].tolist() == ["retry_at", "retry_now", "wait"]
    assert out["scheduled_at"].iloc[0] == pd.Timestamp("2024-03-01T18:30:00", tz="UTC")
    assert out["scheduled_at"].iloc[1] == day2
    expected = decide(history[history["as_of"] == day2], as_of=day2, policy=POLICY)
    pd.testing.assert_frame_equal(
        out.iloc[1:].drop(columns="as_of").reset_index(drop=True), expected
    )


def test_decide_daily_without_invoices_or_days() -> None:
    empty = decide_daily(frame([{}]).iloc[0:0].assign(as_of=AS_OF), policy=POLICY)
    assert empty.empty and list(empty.columns) == [*DECISION_COLUMNS, "as_of"]
    with pytest.raises(ValueError, match="as_of"):
        decide_daily(frame([{}]), policy=POLICY)


def test_open_failed_invoices_daily_follows_each_invoice_over_the_period() -> None:
    import duckdb

    from workbench.failed_invoices import INPUT_COLUMNS, open_failed_invoices_daily
    from workbench.schema import create_all

    con = duckdb.connect()
    create_all(con)
    con.execute(
        "INSERT INTO invoices (invoice_id, account_id, currency, created, amount_due, paid_at) "
        "VALUES ('in_1', 'a1', 'usd', TIMESTAMPTZ '2024-02-01 00:00:00+00', 5000, "
        "TIMESTAMPTZ '2024-02-25 00:00:00+00'), "
        "('in_2', 'a2', 'usd', TIMESTAMPTZ '2024-02-10 00:00:00+00', 7000, NULL)"
    )
    con.execute(
        "INSERT INTO payment_attempts (attempt_id, invoice_id, created, amount, currency, status, "
        "decline_code) VALUES "
        "('ch_1', 'in_1', TIMESTAMPTZ '2024-02-20 00:00:00+00', 5000, 'usd', 'failed', 'insufficient_funds'), "
        "('ch_2', 'in_2', TIMESTAMPTZ '2024-02-23 00:00:00+00', 7000, 'usd', 'failed', 'insufficient_funds')"
    )  # fmt: skip
    con.execute("INSERT INTO fx_rates VALUES (DATE '2024-02-01', 'usd', 1)")
    history = open_failed_invoices_daily(
        con, until="2024-02-26T12:00:00+00:00", period_days=7, reporting_currency="usd"
    )
    assert list(history.columns) == [*INPUT_COLUMNS, "as_of"]
    # 2/19 has nothing open yet: no block; in_1 is open from its failure to its payment
    per_day = history.groupby("as_of")["invoice_id"].apply(list)
    assert [str(d.date()) for d in per_day.index] == [f"2024-02-{d}" for d in range(20, 27)]
    assert (per_day.index.hour == 12).all() and str(per_day.index.tz) == "UTC"
    assert per_day.tolist() == [["in_1"]] * 3 + [["in_1", "in_2"]] * 2 + [["in_2"]] * 2
    decided = decide_daily(history, policy=POLICY)
    assert len(decided) == len(history) and decided["as_of"].nunique() == 7
    before = open_failed_invoices_daily(con, until="2024-02-19", period_days=3)
    assert before.empty and list(before.columns) == [*INPUT_COLUMNS, "as_of"]


def test_open_failed_invoices_without_a_time_says_what_to_do() -> None:
    """An empty warehouse has no newest event: 07_dunning's default time is then None."""
    import duckdb

    from workbench.failed_invoices import open_failed_invoices, open_failed_invoices_daily
    from workbench.schema import create_all

    con = duckdb.connect()
    create_all(con)
    for missing in (None, pd.NaT):
        with pytest.raises(ValueError, match="no events yet.*01_ingest"):
            open_failed_invoices(con, as_of=missing)
        with pytest.raises(ValueError, match="no events yet.*01_ingest"):
            open_failed_invoices_daily(con, until=missing, period_days=3)


def test_decisions_to_store_names_the_run_and_types_every_text_column() -> None:
    import duckdb

    decisions = decide(frame([{}, {}]), as_of=AS_OF, policy=POLICY)  # both wait
    assert decisions["action_type"].isna().all() and decisions["action_type"].dtype == object
    before = decisions.copy()
    stored = decisions_to_store(
        decisions, run_id="r1", as_of=AS_OF, shadow=True, policy_version="p-test"
    )
    pd.testing.assert_frame_equal(decisions, before)  # input untouched
    assert list(stored.columns) == [*DECISION_COLUMNS, "run_id", "as_of"]
    assert (stored["run_id"] == "r1").all() and (stored["as_of"] == AS_OF).all()
    assert stored["shadow"].all() and (stored["policy_version"] == "p-test").all()
    assert "object" not in set(stored.dtypes.astype(str))
    assert stored["action_type"].dtype == "string" and stored["reason"].dtype == "string"
    assert stored["requires_approval"].dtype == bool  # non-text columns keep their types
    con = duckdb.connect()
    con.register("stored", stored)
    types = {r[0]: r[1] for r in con.execute("DESCRIBE SELECT * FROM stored").fetchall()}
    assert types["action_type"] == "VARCHAR" and types["run_id"] == "VARCHAR"
    assert types["as_of"].startswith("TIMESTAMP")


# --------------------------------------------------------------------------- invariants under any score


decline_codes = st.sampled_from(
    [None, "insufficient_funds", "generic_decline", "stolen_card", "fraudulent", "expired_card"]
)
scores = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=1),
    st.sampled_from([0.0, 0.6, 1.0, 0.05, 0.5999999]),
)
invoice_rows = st.fixed_dictionaries({
    "amount_due": st.integers(0, 10**9),
    "amount_due_reporting": st.one_of(st.none(), st.integers(0, 10**9), st.sampled_from([1_000_000, 1_000_001, 50_000])),
    "attempt_count": st.integers(0, 12),
    "hours_since_last": st.one_of(st.none(), st.floats(0, 24 * 200)),
    "decline_code": decline_codes,
    "recovery_probability": scores,
    "uplift": scores,
})  # fmt: skip
policies = st.builds(
    lambda retries, hours, threshold, amount, budget, levels, shadow: parse_policy(
        {
            "shadow": shadow,
            "approval": {"amount_above_minor": amount},
            "bulk_approval": {"max_amount_minor": min(50_000, amount)},
            "retries": {
                "max_auto_retries": retries,
                "min_hours_between": hours,
                "min_recovery_probability": threshold,
            },
            "retention": {"offer_budget_minor": budget},
            "automation": {"levels": levels},
        }
    ),  # fmt: skip
    st.integers(0, 6),
    st.floats(0, 96),
    st.floats(0, 1),
    st.integers(0, 2_000_000),
    st.integers(0, 200_000),
    st.fixed_dictionaries(
        {
            **{
                t: st.sampled_from(LEVELS)
                for t in ("retry_payment", "retention_offer", "escalate_collections")
            },
            "write_off": st.sampled_from(("insight", "assisted")),  # never automatic
        }
    ),  # fmt: skip
    st.booleans(),
)


def _frame_from(rows: list[dict]) -> pd.DataFrame:
    return frame([
        {
            "amount_due": r["amount_due"], "amount_due_reporting": r["amount_due_reporting"],
            "attempt_count": r["attempt_count"],
            "last_attempt_at": None if r["hours_since_last"] is None else AS_OF - pd.Timedelta(hours=r["hours_since_last"]),
            "decline_code": r["decline_code"], "recovery_probability": r["recovery_probability"], "uplift": r["uplift"],
        }
        for r in rows
    ])  # fmt: skip


def check_invariants(
    inv: pd.DataFrame, out: pd.DataFrame, policy: Policy, paused: frozenset[str]
) -> None:
    r = policy.retries
    limit = policy.approval.amount_above_minor
    assert len(out) == len(inv) and list(out["invoice_id"]) == list(inv["invoice_id"])
    for i, d in zip(inv.to_dict("records"), out.to_dict("records"), strict=True):
        p = i["recovery_probability"]
        rep = i["amount_due_reporting"]
        if d["action"] in ("retry_now", "retry_at"):
            # caps, hard declines, thresholds and spacing
            assert i["decline_code"] not in r.no_retry_decline_codes
            assert max(i["attempt_count"] - 1, 0) < r.max_auto_retries
            assert (
                isinstance(p, float) and math.isfinite(p) and r.min_recovery_probability <= p <= 1
            )
            assert d["scheduled_at"] >= AS_OF
            if not pd.isna(i["last_attempt_at"]):
                assert d["scheduled_at"] >= i["last_attempt_at"] + pd.Timedelta(
                    hours=r.min_hours_between
                )
        if d["action"] == "wait":
            assert (
                d["action_type"] is None
                and not d["requires_approval"]
                and not d["executes_automatically"]
            )
            continue
        level = policy.automation.levels[d["action_type"]]
        if "*" in paused or d["action_type"] in paused:
            assert d["automation_level"] == "insight"
        else:
            assert d["automation_level"] == level
        # no model output skips a required approval
        if d["executes_automatically"]:
            assert not policy.shadow
            assert d["automation_level"] in AUTOMATIC_LEVELS
            assert not pd.isna(rep) and rep <= limit
            assert not d["requires_approval"]
        if d["automation_level"] == "assisted":
            assert d["requires_approval"]
        if d["automation_level"] in AUTOMATIC_LEVELS and (pd.isna(rep) or rep > limit):
            assert d["requires_approval"] and not d["executes_automatically"]
        if d["automation_level"] == "insight":
            assert not d["requires_approval"] and not d["executes_automatically"]
    assert (
        out.loc[out["action"] == "send_retention_offer", "offer_cost_minor"].sum()
        <= policy.retention.offer_budget_minor
    )
    assert (out.loc[out["action"] != "send_retention_offer", "offer_cost_minor"] == 0).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(invoice_rows, min_size=1, max_size=12),
    policy=policies,
    paused=st.frozensets(
        st.sampled_from(["*", "retry_payment", "write_off", "retention_offer"]), max_size=2
    ),
)
def test_no_score_can_break_a_guardrail(
    rows: list[dict], policy: Policy, paused: frozenset[str]
) -> None:
    inv = _frame_from(rows)
    out = decide(inv, as_of=AS_OF, policy=policy, paused=paused)
    check_invariants(inv, out, policy, paused)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(invoice_rows, min_size=1, max_size=8), data=st.data())
def test_rescoring_never_removes_a_required_approval(rows: list[dict], data: st.DataObject) -> None:
    """Same invoices, any other scores: whenever the chosen action would need a human for
    its amount, it still does; and retry guardrails hold for the new scores too."""
    inv = _frame_from(rows)
    rescored = inv.assign(
        recovery_probability=data.draw(st.lists(scores, min_size=len(inv), max_size=len(inv))),
        uplift=data.draw(st.lists(scores, min_size=len(inv), max_size=len(inv))),
    )
    for df in (inv, rescored):
        check_invariants(df, decide(df, as_of=AS_OF, policy=POLICY), POLICY, frozenset())


# --------------------------------------------------------------------------- applying to the store


@pytest.fixture()
def store(tmp_path: Path) -> ap.ApprovalStore:
    return ap.ApprovalStore(f"sqlite:///{tmp_path / 'approvals.sqlite'}")


def test_apply_queues_executes_and_is_idempotent(store) -> None:
    inv = frame([
        {"recovery_probability": 0.9},  # automated retry
        {"recovery_probability": 0.9, "amount_due_reporting": 2_000_000, "amount_due": 2_000_000},  # needs approval
        {"recovery_probability": 0.01, "last_attempt_at": "2023-12-01T00:00:00"},  # write-off proposal
        {"recovery_probability": 0.3},  # wait
    ])  # fmt: skip
    out = decide(inv, as_of=AS_OF, policy=POLICY)
    first = apply_decisions(store, out, inv, policy=POLICY, as_of=AS_OF)
    assert (first.executed, first.queued, first.duplicates) == (1, 2, 0)
    second = apply_decisions(store, out, inv, policy=POLICY, as_of=AS_OF)
    assert (second.executed, second.queued, second.duplicates) == (0, 0, 3)
    items = {i.subject_id: i for i in ap.list_items(store)}
    assert items["in_0"].status == "executed" and items["in_0"].requested_by == "system:dunning"
    assert items["in_1"].status == "pending" and items["in_1"].risk == "high"
    assert (
        items["in_2"].status == "pending" and items["in_2"].payload["reason_code"] == "credit_loss"
    )
    assert items["in_2"].payload["model_versions"] == "recovery@champion:3"
    assert items["in_2"].policy_version == POLICY.version
    assert "in_3" not in items
    assert len(ap.executions_frame(store)) == 1
    # the engine is the requester: an approver can approve, the recorded state matches
    provider = ap.LatestStateProvider(store)
    outcome = ap.approve(store, items["in_2"].item_id, who=ap.Identity("bob", ap.Role.APPROVER),
                         current_state=provider, now=AS_OF)  # fmt: skip
    assert outcome.code == "executed"
    assert audit.verify(store).ok


def test_the_override_window_starts_when_the_action_runs_not_at_as_of(store) -> None:
    # decisions made as of the newest warehouse event, two days before they are applied
    inv = frame([{"recovery_probability": 0.9}])  # an automated retry
    applied_at = AS_OF + pd.Timedelta(days=2)
    out = decide(inv, as_of=AS_OF, policy=POLICY)
    assert (
        apply_decisions(store, out, inv, policy=POLICY, as_of=AS_OF, now=applied_at).executed == 1
    )
    (item,) = ap.list_items(store)
    assert item.executed_at == applied_at
    assert item.rollback_until == applied_at + pd.Timedelta(hours=24)
    assert pd.Timestamp(item.payload["as_of"]) == AS_OF  # the decision still says what it saw
    later = applied_at + pd.Timedelta(hours=1)
    bob = ap.Identity("bob", ap.Role.APPROVER)
    undo = ap.rollback(store, item.item_id, who=bob, reason="card updated", now=later)
    assert undo.code == "rolled_back"
    # by default "now" is the wall clock
    other = frame([{"recovery_probability": 0.9, "invoice_id": "in_9"}])
    before = pd.Timestamp.now("UTC")
    apply_decisions(
        store, decide(other, as_of=AS_OF, policy=POLICY), other, policy=POLICY, as_of=AS_OF
    )
    (nine,) = [i for i in ap.list_items(store) if i.subject_id == "in_9"]
    assert nine.executed_at >= before.floor("s")


def test_a_changed_invoice_supersedes_its_pending_item(store) -> None:
    inv = frame(
        [
            {"recovery_probability": 0.01, "last_attempt_at": "2023-12-01T00:00:00"},
            {"recovery_probability": 0.01, "last_attempt_at": "2023-12-01T00:00:00"},
        ]
    )
    apply_decisions(store, decide(inv, as_of=AS_OF, policy=POLICY), inv, policy=POLICY, as_of=AS_OF)
    old = {i.subject_id: i for i in ap.list_items(store)}
    # a new attempt happened on in_0, and in_1 was paid (no longer open)
    later = AS_OF + pd.Timedelta(days=1)
    inv2 = frame(
        [
            {
                "recovery_probability": 0.01,
                "attempt_count": 2,
                "last_attempt_at": "2024-03-01T12:00:00",
            }
        ]
    )
    summary = apply_decisions(
        store,
        decide(inv2, as_of=later, policy=POLICY),
        inv2,
        policy=POLICY,
        as_of=later,
        complete=True,
    )
    assert summary.superseded == 2
    assert {ap.get_item(store, i.item_id).status for i in old.values()} == {"superseded"}
    bob = ap.Identity("bob", ap.Role.APPROVER)
    assert (
        ap.approve(
            store, old["in_0"].item_id, who=bob, current_state=ap.LatestStateProvider(store)
        ).code
        == "not_pending"
    )
    assert "action.superseded" in set(audit.audit_frame(store)["event"])


def test_a_new_policy_re_proposes_instead_of_duplicating(store) -> None:
    inv = frame([{"recovery_probability": 0.01, "last_attempt_at": "2023-12-01T00:00:00"}])
    apply_decisions(store, decide(inv, as_of=AS_OF, policy=POLICY), inv, policy=POLICY, as_of=AS_OF)
    v2 = parse_policy({"label": "v2"})
    summary = apply_decisions(
        store, decide(inv, as_of=AS_OF, policy=v2), inv, policy=v2, as_of=AS_OF
    )
    assert (summary.superseded, summary.queued) == (1, 1)
    pending = ap.list_items(store, statuses=["pending"])
    assert [(i.subject_id, i.policy_version) for i in pending] == [("in_0", v2.version)]


def test_shadow_apply_records_only(store) -> None:
    shadow = parse_policy({"shadow": True})
    inv = frame([{"recovery_probability": 0.9}, {"recovery_probability": 0.3}])
    summary = apply_decisions(
        store, decide(inv, as_of=AS_OF, policy=shadow), inv, policy=shadow, as_of=AS_OF
    )
    assert summary.shadowed == 1 and summary.executed == summary.queued == 0
    assert ap.list_items(store) == []
    entries = audit.audit_frame(store)
    assert list(entries["event"]) == ["decision.shadow"]
    assert '"action":"retry_now"' in entries["details"].iloc[0]


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(invoice_rows, min_size=1, max_size=6), policy=policies)
def test_applied_decisions_never_run_what_needs_a_human(tmp_path_factory, rows, policy) -> None:
    store = ap.ApprovalStore(f"sqlite:///{tmp_path_factory.mktemp('s') / 'a.sqlite'}")
    inv = _frame_from(rows)
    out = decide(inv, as_of=AS_OF, policy=policy)
    apply_decisions(store, out, inv, policy=policy, as_of=AS_OF)
    items = {i.subject_id: i for i in ap.list_items(store)}
    limit = policy.approval.amount_above_minor
    for _, d in out.iterrows():
        item = items.get(d["invoice_id"])
        if policy.shadow or not (d["requires_approval"] or d["executes_automatically"]):
            assert item is None
        elif d["requires_approval"]:
            assert item.status == "pending" and item.decided_by is None
        else:
            assert item.status == "executed"
            assert item.amount_reporting_minor is not None and item.amount_reporting_minor <= limit
    assert audit.verify(store).ok


def test_run_dunning_uses_configured_policy_and_pause_switches(isolated_env: Path) -> None:
    settings_ = load_settings()
    inv = frame([{"recovery_probability": 0.9}])
    run = run_dunning(settings_, inv, as_of=AS_OF)
    assert (
        run.summary.executed == 1 and run.policy_version == run.decisions["policy_version"].iloc[0]
    )
    store = ap.open_store(settings_)
    ap.pause_automation(store, who=ap.system_identity("monitoring"), action_type="retry_payment")
    inv2 = frame([{"recovery_probability": 0.9, "attempt_count": 2}])
    run2 = run_dunning(settings_, inv2, as_of=AS_OF + pd.Timedelta(days=2))
    assert run2.decisions["automation_level"].tolist() == ["insight"]
    assert run2.summary.executed == 0 and run2.summary.insight_only == 1


@pytest.mark.parametrize(
    ("currency", "amount", "rate", "reporting", "expected"),
    [
        ("jpy", 2_000_000, "0.0067", "usd", 1_340_000),  # zero-decimal: 13,400 USD
        ("kwd", 100_000, "3.26", "usd", 32_600),  # three decimals: 100.000 KWD = 326 USD
        ("jpy", 1_000, "0.0067", "kwd", 2_055),  # 6.70 USD = 2.055 KWD (3.26 USD each)
        ("usd", 5_000, "1", "usd", 5_000),
    ],
)
def test_failed_invoice_amounts_convert_between_minor_units(
    currency: str, amount: int, rate: str, reporting: str, expected: int
) -> None:
    import duckdb

    from workbench.failed_invoices import open_failed_invoices
    from workbench.schema import create_all

    con = duckdb.connect()
    create_all(con)
    con.execute(
        "INSERT INTO invoices (invoice_id, account_id, currency, created, amount_due) "
        "VALUES ('in_1', 'acct', ?, TIMESTAMPTZ '2024-02-01 00:00:00+00', ?)",
        [currency, amount],
    )
    con.execute(
        "INSERT INTO payment_attempts (attempt_id, invoice_id, created, amount, currency, status, "
        "decline_code) VALUES ('ch_1', 'in_1', TIMESTAMPTZ '2024-02-20 00:00:00+00', ?, ?, "
        "'failed', 'insufficient_funds')",
        [amount, currency],
    )
    con.execute(
        "INSERT INTO fx_rates VALUES (DATE '2024-02-01', ?, ?), (DATE '2024-02-01', 'kwd', 3.26)",
        [currency, rate] if currency != "kwd" else ["usd", "1"],
    )
    row = open_failed_invoices(con, as_of=AS_OF, reporting_currency=reporting).iloc[0]
    assert row["amount_due"] == amount and row["amount_due_reporting"] == expected
    if expected > POLICY.approval.amount_above_minor and reporting == "usd":
        # the converted amount is what puts a yen invoice in front of a person
        scored = open_failed_invoices(con, as_of=AS_OF, reporting_currency=reporting)
        scored["recovery_probability"] = 0.9
        assert bool(decide(scored, as_of=AS_OF, policy=POLICY).iloc[0]["requires_approval"])
