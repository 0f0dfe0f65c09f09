"""Feast round trip: generate, apply, materialize, look up; online equals offline as of T."""

from __future__ import annotations

import math
import runpy

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml

from workbench.config import load_settings
from workbench.features import serving as ol
from workbench.features.definitions import get_features
from workbench.features.offline import build_features, snapshot_spine
from workbench.features.synthetic import random_warehouse


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("wb")
    settings = load_settings(root, overrides={"data_dir": str(root / "data")})
    con = duckdb.connect()
    random_warehouse(con, n_accounts=20, start="2023-06-01", end="2024-03-01", seed=21)
    # a time with invoices in dunning, so every entity has rows
    t = pd.Timestamp(
        con.execute(
            "SELECT created FROM payment_attempts WHERE status = 'failed' "
            "AND created > TIMESTAMPTZ '2023-11-01 00:00:00+00' ORDER BY created LIMIT 1"
        ).fetchall()[0][0]
    ).tz_convert("UTC") + pd.Timedelta(hours=1)
    counts = ol.publish_online(con, as_of=t, settings=settings)
    yield con, settings, t, counts
    ol.reset_store_cache()


def _same(a, b) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)) or a is pd.NA:
        return b is None or (isinstance(b, float) and math.isnan(b)) or b is pd.NA
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-12)
    return a == b


@pytest.mark.parametrize("entity", ["account_id", "subscription_id", "invoice_id"])
def test_online_values_equal_offline_values_at_materialization_time(published, entity) -> None:
    con, settings, t, counts = published
    assert counts[entity] > 0
    spine = snapshot_spine(con, entity=entity, as_of=t)
    names = [f.name for f in get_features(entity=entity)]
    offline = build_features(con, spine, features=names)
    got = ol.online(
        spine[entity].tolist(), names, settings=settings, now=t + pd.Timedelta(minutes=30)
    )
    assert got.values[entity].tolist() == spine[entity].tolist()
    mismatches = [
        (row, name, offline[name].iloc[row], got.values[name].iloc[row])
        for name in names
        for row in range(len(spine))
        if not _same(offline[name].iloc[row], got.values[name].iloc[row])
    ]
    assert not mismatches, mismatches[:10]
    assert got.all_fresh
    assert (got.freshness.event_timestamp == t.floor("s")).all()


def test_freshness_flags_stale_and_missing(published) -> None:
    con, settings, t, _ = published
    ids = snapshot_spine(con, entity="account_id", as_of=t).account_id.tolist()[:3]
    names = ["failed_payments_30d", "health_score", "usage_avg_daily_30d"]  # TTL 24h, 168h, 48h
    later = ol.online([*ids, "cus_unknown"], names, settings=settings, now=t + pd.Timedelta(days=3))
    fr = later.freshness.set_index(["account_id", "feature"])
    assert fr.loc[(ids[0], "failed_payments_30d"), "stale"]
    assert fr.loc[(ids[0], "usage_avg_daily_30d"), "stale"]
    assert not fr.loc[(ids[0], "health_score"), "stale"]
    assert fr.loc[(ids[0], "health_score"), "age_hours"] == pytest.approx(
        72 + (t - t.floor("s")).total_seconds() / 3600
    )
    assert not fr.loc[("cus_unknown", "health_score"), "found"]
    assert fr.loc[("cus_unknown", "health_score"), "stale"]
    assert pd.isna(later.values.set_index("account_id").loc["cus_unknown", "failed_payments_30d"])
    nulled = ol.online(ids, names, settings=settings, now=t + pd.Timedelta(days=3), on_stale="null")
    assert nulled.values.failed_payments_30d.isna().all()
    assert nulled.values.health_score.tolist() == later.values.health_score.iloc[
        :3
    ].tolist() or nulled.values.health_score.isna().equals(
        later.values.health_score.iloc[:3].isna()
    )
    with pytest.raises(ol.StaleFeatures):
        ol.online(ids, names, settings=settings, now=t + pd.Timedelta(days=3), on_stale="raise")
    with pytest.raises(ValueError, match="one entity"):
        ol.online(ids, ["mrr", "invoice_amount_due"], settings=settings)


def test_generated_repository(published) -> None:
    _, settings, _, _ = published
    repo = ol.feature_repo(settings)
    conf = yaml.safe_load(repo.yaml_path.read_text())
    assert conf["online_store"] == {"type": "sqlite", "path": str(repo.online_path)}
    assert conf["offline_store"] == {"type": "file"}
    assert conf["entity_key_serialization_version"] == 3
    assert str(repo.registry_path).startswith(str(settings.data_dir))
    # repo.py defines exactly the objects that were applied
    ns = runpy.run_path(str(repo.definitions_path))
    ours = {o.name: o for o in ol.feast_objects(repo)}
    generated = {
        v.name: v
        for v in ns.values()
        if type(v).__name__ in ("Entity", "FeatureView", "FileSource")
    }
    assert set(generated) == set(ours)
    for name, obj in ours.items():
        assert generated[name] == obj, name
    views = ol.feature_view_frame(repo)
    assert set(views.feature) == {f.name for f in get_features()}
    want = {f.name: str(f.version) for f in get_features()}
    assert views.set_index("feature").version.to_dict() == want


def test_republish_moves_online_values_forward(published) -> None:
    con, settings, t, _ = published
    t2 = t + pd.Timedelta(days=20)
    ol.publish_online(con, as_of=t2, settings=settings)
    ids = snapshot_spine(con, entity="account_id", as_of=t2).account_id.tolist()
    got = ol.online(ids, ["mrr", "tenure_days"], settings=settings, now=t2)
    want = build_features(
        con, snapshot_spine(con, entity="account_id", as_of=t2), features=["mrr", "tenure_days"]
    )
    np.testing.assert_allclose(got.values.mrr, want.mrr)
    np.testing.assert_allclose(got.values.tenure_days, want.tenure_days)
    assert (got.freshness.event_timestamp == t2.floor("s")).all()
    assert ol.published_as_of(ol.feature_repo(settings)) == t2.floor("s")
    # an invoice in dunning at t and not at t2 (paid, written off) is no longer served
    gone = sorted(
        set(snapshot_spine(con, entity="invoice_id", as_of=t).invoice_id)
        - set(snapshot_spine(con, entity="invoice_id", as_of=t2).invoice_id)
    )
    assert gone
    left = ol.online(gone, ["invoice_failed_attempts"], settings=settings, now=t2)
    assert not left.found.any() and left.values.invoice_failed_attempts.isna().all()
    with pytest.raises(ol.StaleFeatures):
        ol.online(gone, ["invoice_failed_attempts"], settings=settings, now=t2, on_stale="raise")
    # nothing asked, nothing found (no invoice in dunning right now)
    none = ol.online([], ["invoice_failed_attempts"], settings=settings, now=t2)
    assert (
        none.all_fresh
        and none.values.empty
        and list(none.values.columns)
        == [
            "invoice_id",
            "invoice_failed_attempts",
        ]
    )


def test_another_librarys_sqlite_datetime_adapter_does_not_break_the_store(
    published, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nbformat.sign (imported by jupyter_server) registers ISO text as sqlite3's datetime
    adapter on import; Feast's store writes epoch seconds and reads them with int(). A publish
    and a read after it still work, and the other library's adapter is left in place."""
    import sqlite3
    from datetime import datetime

    con, settings, t, _ = published
    key = (datetime, sqlite3.PrepareProtocol)
    monkeypatch.setitem(sqlite3.adapters, key, sqlite3.adapters.get(key))  # restored after

    def iso(value: datetime) -> str:  # what nbformat.sign registers
        return value.isoformat()

    sqlite3.register_adapter(datetime, iso)
    t3 = t + pd.Timedelta(days=40)
    ol.publish_online(con, as_of=t3, settings=settings)
    ids = snapshot_spine(con, entity="account_id", as_of=t3).account_id.tolist()
    got = ol.online(ids, ["mrr"], settings=settings, now=t3)
    assert got.found.all() and (got.freshness.event_timestamp == t3.floor("s")).all()
    assert sqlite3.adapters[key] is iso
