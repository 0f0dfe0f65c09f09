"""Notebook frames: statistics, missingness, label balance, leakage report, training sets."""

from __future__ import annotations

import dataclasses

import duckdb
import numpy as np
import pandas as pd
import pytest

import workbench.features as wf
from workbench.features import definitions as d
from workbench.features.synthetic import random_warehouse


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    random_warehouse(c, n_accounts=40, start="2023-01-01", end="2024-06-01", seed=4)
    return c


@pytest.fixture(scope="module")
def churn(con) -> pd.DataFrame:
    return wf.churn_training_set(con, start="2023-03-01", end="2024-05-01")


def test_churn_training_set_shape(churn) -> None:
    assert {"account_id", "as_of", "mrr", "churn_30d", "churn_90d", "churn_180d"} <= set(
        churn.columns
    )
    assert churn.paying_at_as_of.all() and (churn.mrr > 0).all()
    # the last months cannot have a 180-day label yet
    last = churn[churn.as_of == churn.as_of.max()]
    assert last.churn_180d.isna().all() and last.churn_30d.notna().all()


def test_feature_statistics(churn) -> None:
    stats = wf.feature_statistics(churn).set_index("name")
    assert set(stats.index) == {f.name for f in d.get_features(entity="account_id")}
    assert stats.loc["health_score", "missing"] == churn.health_score.isna().sum()
    assert stats.loc["mrr", "min"] == churn.mrr.min() > 0
    assert stats.loc["plan_tier", "top"] == churn.plan_tier.value_counts().index[0]
    assert np.isnan(stats.loc["plan_tier", "mean"])


def test_missingness_by_period(churn) -> None:
    miss = wf.missingness_by_period(churn)
    assert set(miss.columns) == {"period", "feature", "rows", "missing_share"}
    first = miss[(miss.feature == "mrr_change_pct_90d")].iloc[0]
    rows = churn[
        churn.as_of.dt.tz_localize(None).dt.to_period("M").dt.start_time
        == first.period.tz_localize(None)
    ]
    assert first.rows == len(rows)
    assert first.missing_share == pytest.approx(rows.mrr_change_pct_90d.isna().mean())


def test_label_balance(churn) -> None:
    bal = wf.label_balance(churn).set_index("label")
    assert list(bal.horizon_days) == [30, 90, 180]
    assert bal.loc["churn_90d", "positives"] == int((churn.churn_90d == 1).sum())
    assert bal.loc["churn_90d", "labelled"] + bal.loc["churn_90d", "unlabelled"] == len(churn)
    assert 0 < bal.loc["churn_180d", "positive_rate"] < 1
    # churn means "not paying at t + h", so a comeback can undo a 30-day churn; in aggregate
    # longer horizons still see more of it
    assert bal.loc["churn_180d", "positive_rate"] > bal.loc["churn_30d", "positive_rate"]


def test_recovery_training_set(con) -> None:
    rec = wf.recovery_training_set(con, end="2024-05-01")
    assert {"invoice_amount_due", "failed_payments_90d", "sub_status", "recovered_7d"} <= set(
        rec.columns
    )
    assert (rec.invoice_failed_attempts >= 1).all()
    both = rec.dropna(subset=["recovered_7d", "recovered_30d"])
    assert (both.recovered_30d >= both.recovered_7d).all()
    bal = wf.label_balance(rec).set_index("label")
    assert 0 < bal.loc["recovered_7d", "positive_rate"] < 1


def test_leakage_report_passes_and_catches_a_leak(con, churn, monkeypatch) -> None:
    spine = churn[["account_id", "as_of"]]
    names = ["dunning_invoices_open", "mrr", "failed_payments_30d", "health_score"]
    report = wf.leakage_report(con, spine, features=names)
    assert len(report) == 3 * len(names) and report.passed.all()
    assert (report.rows_checked > 0).all()
    # a definition that reads the invoice's current status leaks, and the report says so
    src = d.SOURCES["dunning_invoices"]
    leaky = dataclasses.replace(
        src,
        sql=src.sql.replace(
            "epoch_us(least(i.paid_at, ok.succeeded_at, i.voided_at, i.marked_uncollectible_at))",
            "CASE WHEN i.status = 'paid' THEN epoch_us(f.first_failed_at) END",
        ),
    )
    monkeypatch.setitem(d.SOURCES, "dunning_invoices", leaky)
    bad = wf.leakage_report(con, spine, features=names).set_index(["cutoff", "feature"])
    assert not bad.xs("dunning_invoices_open", level="feature").passed.all()
    assert bad.xs("mrr", level="feature").passed.all()


def test_sample_rows_is_reproducible(churn) -> None:
    a, b = wf.sample_rows(churn, n=5, seed=1), wf.sample_rows(churn, n=5, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 5 and a.as_of.is_monotonic_increasing
