"""The health outlook (next month's CRM health score) and the decision hazard that uses it."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
from test_models_uplift import billing_experiment, months_around_eligibility

from workbench.models import uplift
from workbench.models.outlook import OUTLOOK, HealthOutlook, next_health_scores


def test_next_health_scores_read_the_first_score_of_the_month_ahead() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE crm_signals (account_id VARCHAR, date DATE, health_score DOUBLE)")
    con.execute(
        """INSERT INTO crm_signals VALUES
        ('a', '2024-04-30', 10), ('a', '2024-05-15', 30), ('a', '2024-05-01', 20),
        ('b', '2024-06-01', 50),
        ('c', '2024-05-02', NULL), ('c', '2024-05-20', 40), ('c', '2024-06-02', 45)"""
    )
    t = pd.Timestamp("2024-05-01", tz="UTC")
    frame = pd.DataFrame(
        {
            "account_id": ["a", "b", "c", "d", "c"],
            "as_of": [t, t, t, t, t + pd.DateOffset(months=1)],
        }
    )
    got = next_health_scores(con, frame)
    # a: the row of the as-of day counts (known only at its end), the earlier one does not;
    # b: the next month's first day is outside; c: a row without a score is skipped;
    # d: no CRM rows; c a month later: its June row
    np.testing.assert_array_equal(got, [20.0, np.nan, 40.0, np.nan, 45.0])


def outlook_frame(n: int = 3000) -> tuple[pd.DataFrame, np.ndarray]:
    """Monthly rows whose next health score follows the current one (plus noise), a tenth
    of them without a next score (the account left)."""
    data = billing_experiment(n, seed=6)
    rng = np.random.default_rng(8)
    scores = 0.8 * data["health_score"].to_numpy() + 10 + rng.normal(0, 5, n)
    scores[rng.random(n) < 0.1] = np.nan
    frame = data.assign(
        as_of=pd.Timestamp("2023-01-01", tz="UTC") + pd.to_timedelta(np.arange(n) % 300, unit="D"),
        account_id=[f"cus_{i % 1000}" for i in range(n)],
    )
    return frame, scores


def test_the_outlook_learns_the_next_score_and_round_trips(tmp_path) -> None:
    frame, scores = outlook_frame()
    outlook = HealthOutlook.fit(frame, scores)
    assert outlook.meta["rows"] == int(np.isfinite(scores).sum())
    pred = outlook.predict(frame)
    ok = np.isfinite(scores)
    assert np.corrcoef(pred[ok], scores[ok])[0, 1] > 0.8
    assert OUTLOOK not in outlook.spec.names and "health_score" in outlook.spec.names
    again = HealthOutlook.load(outlook.save(tmp_path / "outlook"))
    np.testing.assert_array_equal(again.predict(frame), pred)
    with pytest.raises(ValueError, match="crm_signals"):
        HealthOutlook.fit(frame, np.full(len(frame), np.nan))


def test_the_decision_hazard_computes_its_outlook_and_keeps_it(tmp_path) -> None:
    frame, scores = outlook_frame()
    outlook = HealthOutlook.fit(frame, scores)
    rng = np.random.default_rng(3)
    pool = frame.assign(
        **{uplift.DECISION: (rng.random(len(frame)) < frame["true_hazard"]).astype("Int8")}
    ).drop(columns=["churn_90d"])
    model = uplift._fit_decision(pool, outlook=outlook)
    assert OUTLOOK in model.features and model.outlook is outlook
    # the trees read every feature and the outlook; the regression the outlook and who the
    # account is (the behavioural signals reach it through the outlook)
    assert "health_score" in model.features and "days_to_period_end" in model.features
    assert set(model.linear.spec.names) == set(uplift.REGRESSION_INPUTS) & set(frame.columns) | {
        OUTLOOK
    }
    assert "health_score" not in model.linear.spec.names and OUTLOOK in model.linear.spec.names
    # scored from the features alone: the outlook is computed, and recomputed over a stale column
    h = model.predict(frame)
    np.testing.assert_array_equal(model.predict(frame.assign(**{OUTLOOK: -1.0})), h)
    # and fitted the same way: a stale column in the pool is not what it learns from
    stale = uplift._fit_decision(pool.assign(**{OUTLOOK: -1.0}), outlook=outlook)
    np.testing.assert_array_equal(stale.predict(frame), h)
    assert np.corrcoef(h, frame["true_hazard"])[0, 1] > 0.5
    again = uplift.DecisionHazardModel.load(model.save(tmp_path / "decision"))
    assert again.outlook is not None
    np.testing.assert_array_equal(again.predict(frame), h)
    # out-of-fold hazards: every model has the outlook as an input, the same one or one
    # fitted without the accounts the model leaves out
    accounts = [f"cus_{i}" for i in range(300)]
    rows = frame.drop_duplicates("account_id").head(300)
    oof, full = uplift.out_of_fold_hazards(pool, accounts, rows, folds=3, outlook=outlook)
    assert np.isfinite(oof).all() and OUTLOOK in full.features and full.outlook is outlook
    left_out = []

    def outlook_for(held_out):
        left_out.append(sorted(held_out))
        keep = ~frame["account_id"].isin(set(held_out)).to_numpy()
        return HealthOutlook.fit(frame[keep], scores[keep])

    per_fold, full = uplift.out_of_fold_hazards(pool, accounts, rows, folds=3,
                                                outlook=outlook_for)  # fmt: skip
    _, groups = uplift._account_folds(accounts, rows, folds=3, seed=0)
    assert left_out == [[], *map(sorted, groups)]  # the full model's outlook saw everyone
    assert full.outlook.meta["rows"] == outlook.meta["rows"]
    assert np.isfinite(per_fold).all() and not np.array_equal(per_fold, oof)
    # a model saved before the outlook existed still loads and scores without it
    plain = uplift._fit_decision(pool)
    old = uplift.DecisionHazardModel.load(plain.save(tmp_path / "plain"))
    assert old.outlook is None and OUTLOOK not in old.features
    assert set(old.linear.spec.names) == set(old.features)  # no outlook: every feature
    np.testing.assert_array_equal(old.predict(frame), plain.predict(frame))


def test_the_outlook_learns_from_rows_no_offer_touched() -> None:
    frame, experiment = months_around_eligibility()
    # outside: every month; control: every month (before eligibility no offer, from it on
    # none ever); treated: only before eligibility
    assert uplift.outlook_rows(frame, experiment).tolist() == [
        True, True, True, True, True, True, True, False, False,
    ]  # fmt: skip


def test_two_threads_fit_the_same_outlook_and_decision_model_as_one() -> None:
    # training.MULTITHREAD_ROWS gives these fits both cores on the strength of it
    frame, scores = outlook_frame()
    fits = [HealthOutlook.fit(frame, scores, params={"num_threads": n}) for n in (1, 2)]
    np.testing.assert_array_equal(fits[0].predict(frame), fits[1].predict(frame))
    rng = np.random.default_rng(3)
    pool = frame.assign(
        **{uplift.DECISION: (rng.random(len(frame)) < frame["true_hazard"]).astype("Int8")}
    ).drop(columns=["churn_90d"])
    models = [
        uplift._fit_decision(pool, outlook=fits[0], params={"num_threads": n}) for n in (1, 2)
    ]
    np.testing.assert_array_equal(models[0].predict(frame), models[1].predict(frame))
