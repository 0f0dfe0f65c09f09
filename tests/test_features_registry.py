"""Feature declarations: coverage, validation, and versions guarded by the lock file."""

from __future__ import annotations

import dataclasses

import pytest

from workbench.features import definitions as d


def test_registry_covers_the_required_features() -> None:
    names = set(d.REGISTRY)
    assert len(d.FEATURES) >= 40
    required = {
        "failed_payments_30d",
        "failed_payments_60d",
        "failed_payments_90d",
        "days_since_last_successful_payment",
        "payment_lag_days_avg_90d",
        "decline_share_insufficient_funds_90d",
        "card_expiring_30d",
        "retries_on_open_invoices",
        "mrr",
        "mrr_change_90d",
        "plan_tier",
        "tenure_days",
        "billing_interval_months",
        "discount_active",
        "licensed_seats",
        "seats_used",
        "seat_utilization",
        "usage_avg_daily_30d",
        "usage_trend_90d",
        "usage_drop_pct_30d_vs_prior_60d",
        "tickets_30d",
        "high_severity_tickets_30d",
        "health_score",
        "health_score_change_90d",
        "nps",
        "nps_change_90d",
        "disputes_90d",
        "refunds_90d",
        "invoice_amount_due",
        "invoice_attempt_number",
        "invoice_last_decline_code",
        "invoice_hours_since_first_failure",
        "invoice_failure_day_of_month",
    }
    assert required <= names, required - names
    assert {f.entity for f in d.FEATURES} == set(d.ENTITIES)
    assert {7, 30, 60, 90} <= {f.window_days for f in d.FEATURES}
    for f in d.FEATURES:
        assert f.description and f.owner and f.ttl_hours > 0


def test_validate_registry_reports_every_bad_declaration() -> None:
    good = d.REGISTRY["failed_payments_30d"]
    bad = [
        dataclasses.replace(good, name="x1", source="nope"),
        dataclasses.replace(good, name="x2", aggregation="state_sum", value="amount"),
        dataclasses.replace(good, name="x3", entity="subscription_id"),
        dataclasses.replace(d.REGISTRY["mrr_change_90d"], name="x4", inputs=("mrr", "ghost")),
        dataclasses.replace(good, name="x5", dtype="int64", aggregation="avg", value="amount"),
    ]
    with pytest.raises(d.RegistryError) as err:
        d.validate_registry([*d.FEATURES, *bad])
    msg = str(err.value)
    for name in ("x1", "x2", "x3", "x4", "x5"):
        assert f"'{name}'" in msg


def test_checked_in_lock_matches_the_declarations() -> None:
    assert d.check_registry_lock() == []


def test_changed_definition_without_version_bump_is_caught() -> None:
    lock = d.load_registry_lock()
    changed = [
        dataclasses.replace(f, window_days=45) if f.name == "failed_payments_30d" else f
        for f in d.FEATURES
    ]
    problems = d.check_registry_lock(changed, lock)
    assert len(problems) == 1 and "failed_payments_30d" in problems[0]
    v = d.REGISTRY["failed_payments_30d"].version
    assert f"bump it to {v + 1}" in problems[0]
    # bumping the version turns it into a reminder to rewrite the lock
    bumped = [
        dataclasses.replace(f, version=v + 1) if f.name == "failed_payments_30d" else f
        for f in changed
    ]
    assert "run --write-lock" in d.check_registry_lock(bumped, lock)[0]
    assert d.check_registry_lock(bumped, d.registry_lock(bumped)) == []


def test_fingerprint_follows_semantics_not_prose() -> None:
    f = d.REGISTRY["mrr"]
    assert d.fingerprint(
        dataclasses.replace(f, description="other words", owner="x")
    ) == d.fingerprint(f)
    assert d.fingerprint(dataclasses.replace(f, filter="status = 'active'")) != d.fingerprint(f)
    # a change to a derived feature's input changes the derived feature's fingerprint
    reg = dict(d.REGISTRY)
    reg["mrr"] = dataclasses.replace(f, offset_days=1)
    assert d.fingerprint(d.REGISTRY["mrr_change_90d"], reg) != d.fingerprint(
        d.REGISTRY["mrr_change_90d"]
    )
    # so does a change to a source's SQL, but not to its layout
    src = d.SOURCES["subscription_items"]
    locked = d.load_registry_lock()["mrr"]["fingerprint"]
    try:
        d.SOURCES["subscription_items"] = dataclasses.replace(src, sql=src.sql.replace(" ", "  "))
        assert d.fingerprint(f) == locked
        d.SOURCES["subscription_items"] = dataclasses.replace(
            src, sql=src.sql.replace("12.0 / 52", "12.0 / 53")
        )
        assert d.fingerprint(f) != locked
    finally:
        d.SOURCES["subscription_items"] = src


def test_registry_frame_is_the_listing() -> None:
    frame = d.registry_frame()
    assert list(frame.columns) == [
        "name",
        "entity",
        "domain",
        "source",
        "aggregation",
        "window_days",
        "offset_days",
        "ttl_hours",
        "dtype",
        "version",
        "fingerprint",
        "owner",
        "description",
    ]
    assert len(frame) == len(d.FEATURES) and frame.name.is_unique
    row = frame.set_index("name").loc["usage_drop_pct_30d_vs_prior_60d"]
    assert row.aggregation == "derived:drop_pct" and "usage_avg_daily_30d" in row.source
    with pytest.raises(KeyError, match="unknown feature"):
        d.get_features(["mrr", "mrrr"])
    assert {f.entity for f in d.get_features(entity="invoice_id")} == {"invoice_id"}
