"""The per-retry recovery framing: retry history, the fitted schedule and per-retry odds,
P(recovered within h) over the schedule, and ``train_recovery(framing="per_retry")``.

Data: a seeded generator of failed invoices whose retries follow a known dunning schedule
(3, 7, 14 and 21 days after the first failure, jittered by up to 18 hours) and succeed with
known log-odds (decline code, attempt number, paydays for insufficient funds, amount, the
account's usage), laid out as the recovery frame (one row per failed attempt).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from workbench.config import load_settings
from workbench.models import evaluation, explain, registry, retry_schedule, scoring, training
from workbench.models.registry import _load_bundle

DAY = 86_400
START = pd.Timestamp("2024-01-01", tz="UTC")
BASE = {"insufficient_funds": -0.4, "generic_decline": -0.6, "stolen_card": -4.0}
RETRY_DAYS = (3, 7, 14, 21)


def _payday(ts: pd.Timestamp) -> bool:
    return ts.day in (1, 2, 15, 16) or ts.day >= ts.days_in_month - 1


def true_p(decline: str, j: int, when: pd.Timestamp, first: pd.Timestamp, usage: float, amount: float) -> float:  # fmt: skip
    logit = BASE[decline] - 0.3 * (j - 2)
    if decline == "insufficient_funds":
        logit += 0.06 * (when - first).total_seconds() / DAY + (1.2 if _payday(when) else 0.0)
    logit += 0.8 * math.log(usage) - 0.3 * math.log1p(amount / 100)
    return 1 / (1 + math.exp(-logit))


def recovery_frame(n: int = 1500, *, seed: int = 0, months: int = 18) -> pd.DataFrame:
    """Failed attempts (the recovery frame's layout) with ``recovered_<h>d`` labels and, per
    row, ``p_true_<h>d`` (the truth, for checks only)."""
    rng = np.random.default_rng(seed)
    end = START + pd.DateOffset(months=months)
    span = (end - START).total_seconds() - 40 * DAY
    rows = []
    for i in range(n):
        first = START + pd.Timedelta(seconds=int(rng.random() * span))
        decline = rng.choice(list(BASE), p=(0.55, 0.4, 0.05))
        usage = float(np.exp(rng.normal(0, 0.6)))
        amount = float(rng.choice((900, 4900, 19900)))
        when = [
            first + pd.Timedelta(seconds=int(d * DAY + (rng.random() - 0.5) * 36 * 3600))
            for d in RETRY_DAYS
        ]
        probs = [true_p(decline, j, w, first, usage, amount) for j, w in enumerate(when, start=2)]
        paid = None
        attempts = [first]
        for w, p in zip(when, probs, strict=True):
            if rng.random() < p:
                paid = w
                break
            attempts.append(w)
        for k, t in enumerate(attempts, start=1):
            row = {
                "invoice_id": f"in_{i}",
                "account_id": f"cus_{i}",
                "as_of": t,
                "paid_at_effective": paid,
                "invoice_last_decline_code": decline,
                "invoice_attempt_number": k,
                "invoice_hours_since_first_failure": (t - first).total_seconds() / 3600,
                "invoice_amount_due": amount,
                "invoice_currency": "usd",
                "failed_invoices_total": 1,
                "health_score": 50.0,
                "usage_per_seat_7d": usage,
                "usage_per_seat_30d": usage,
                "plan_tier": "prod_team",
                "sub_status": "past_due",
                # the next retry the invoice announced at this failure (none after the last)
                "invoice_hours_to_next_attempt": (when[k - 1] - t).total_seconds() / 3600
                if k <= len(when)
                else np.nan,
            }
            for h in (7, 14, 30):
                miss = 1.0
                for w, p, j in zip(when, probs, range(2, 6), strict=True):
                    if j > k and t < w <= t + pd.Timedelta(days=h):
                        miss *= 1 - p
                row[f"p_true_{h}d"] = 1 - miss
                label = paid is not None and t < paid <= t + pd.Timedelta(days=h)
                row[f"recovered_{h}d"] = int(label) if t + pd.Timedelta(days=h) <= end else None
            rows.append(row)
    frame = pd.DataFrame(rows)
    frame["as_of"] = pd.to_datetime(frame["as_of"], utc=True).astype("datetime64[us, UTC]")
    frame["paid_at_effective"] = pd.to_datetime(frame["paid_at_effective"], utc=True)
    for h in (7, 14, 30):
        frame[f"recovered_{h}d"] = frame[f"recovered_{h}d"].astype("Int8")
    return frame


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return recovery_frame()


def test_is_payday_marks_the_1st_2nd_15th_16th_and_the_last_two_days() -> None:
    days = pd.to_datetime(
        ["2024-02-01", "2024-02-02", "2024-02-03", "2024-02-15", "2024-02-16", "2024-02-17",
         "2024-02-27", "2024-02-28", "2024-02-29", "2023-02-27", "2024-04-29", "2024-04-30"],
        utc=True,
    )  # fmt: skip
    seconds = (days.as_unit("s").asi8).astype(float) + 13 * 3600  # midday
    got = retry_schedule.is_payday(seconds)
    assert got.tolist() == [1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 1, 1]


def test_retry_history_pairs_each_failure_with_what_came_next() -> None:
    t0 = pd.Timestamp("2024-03-01 10:00", tz="UTC")
    f = pd.DataFrame(
        {
            "invoice_id": ["a", "a", "a", "b", "b", "c"],
            "as_of": [t0, t0 + pd.Timedelta(days=3), t0 + pd.Timedelta(days=7),
                      t0, t0 + pd.Timedelta(days=3), t0],
            "paid_at_effective": [t0 + pd.Timedelta(days=14)] * 3 + [None, None, None],
            "invoice_attempt_number": [1, 2, 3, 1, 2, 1],
            "invoice_hours_since_first_failure": [0.0, 72.0, 168.0, 0.0, 72.0, 0.0],
        }
    )  # fmt: skip
    f["paid_at_effective"] = pd.to_datetime(f["paid_at_effective"], utc=True)
    h = retry_schedule.retry_history(f, before=t0 + pd.Timedelta(days=30))
    # a: failed at 1, 2, 3 then paid at day 14 (retry 4); b: failed twice (one failed retry,
    # nothing after the second failure yet); c: nothing after its first failure
    assert sorted(zip(h["invoice_id"], h["retry_number"], h["succeeded"], strict=True)) == [
        ("a", 2, 0), ("a", 3, 0), ("a", 4, 1), ("b", 2, 0),
    ]  # fmt: skip
    a4 = h[(h["invoice_id"] == "a") & (h["retry_number"] == 4)].iloc[0]
    assert a4["retry_days"] == pytest.approx(14.0)
    # the cut-off: only retries made before it (the day-14 payment is not known on day 10)
    early = retry_schedule.retry_history(f, before=t0 + pd.Timedelta(days=10))
    assert sorted(zip(early["invoice_id"], early["retry_number"], strict=True)) == [
        ("a", 2), ("a", 3), ("b", 2),
    ]  # fmt: skip


def test_the_model_learns_the_schedule_and_the_odds_of_a_retry(frame) -> None:
    cut = START + pd.DateOffset(months=12)
    hist = retry_schedule.retry_history(frame, before=cut)
    m = retry_schedule.fit_retry_model(
        hist, name="recovery_14d", target="recovered_14d", horizon_days=14
    )
    medians = m.meta["schedule_median_days"]
    for j, d in zip(range(2, 6), RETRY_DAYS, strict=True):
        assert medians[f"0:{j}"] == pytest.approx(d, abs=0.3)
    assert m.coef["payday*insufficient_funds"] > 0.5  # paydays help insufficient funds
    assert m.coef["retry_number"] < 0  # each failed retry makes the next less likely
    assert m.coef["log_usage_per_seat_7d"] + m.coef["log_usage_per_seat_30d"] > 0.4
    # on later invoices: close to the truth's ranking, calibrated, monotone in the horizon
    test = frame[frame["as_of"] >= cut + pd.Timedelta(days=30)]
    p = {h: m.predict_horizon(test, h) for h in (7, 14, 30)}
    assert ((p[7] <= p[14] + 1e-12) & (p[14] <= p[30] + 1e-12)).all()
    # (the truth knows each retry's drawn time: whether the day-7 retry, jittered by up to
    # 18 hours, lands inside a 7-day window and on a payday is a coin flip for the model)
    for h, slack, corr in ((7, 0.05, 0.85), (14, 0.02, 0.95), (30, 0.01, 0.98)):
        y = test[f"recovered_{h}d"].astype("float64").to_numpy()
        ok = np.isfinite(y)
        truth = test[f"p_true_{h}d"].to_numpy()
        assert evaluation.roc_auc(y[ok], p[h][ok]) > evaluation.roc_auc(y[ok], truth[ok]) - slack
        assert abs(p[h][ok].mean() - truth[ok].mean()) < 0.02
        assert np.corrcoef(p[h][ok], truth[ok])[0, 1] > corr
    # a stolen card is (almost) never recovered; an invoice past its last retry never is
    stolen = test[test["invoice_last_decline_code"] == "stolen_card"]
    assert (m.predict_horizon(stolen, 30) < 0.1).all()
    last = test[test["invoice_attempt_number"] == 5]
    assert len(last) and (m.predict_horizon(last, 30) == 0).all()


def test_fitting_never_sees_a_retry_after_the_cut_off(frame) -> None:
    cut = START + pd.DateOffset(months=12)
    before = retry_schedule.fit_retry_model(
        retry_schedule.retry_history(frame, before=cut),
        name="r", target="recovered_7d", horizon_days=7,
    )  # fmt: skip
    # rewrite the future: every invoice paid after the cut-off is now never paid, and every
    # attempt after it disappears; the model fitted at the cut-off must not change
    changed = frame[frame["as_of"] < cut].copy()
    late = changed["paid_at_effective"] >= cut
    changed.loc[late, "paid_at_effective"] = pd.NaT
    after = retry_schedule.fit_retry_model(
        retry_schedule.retry_history(changed, before=cut),
        name="r", target="recovered_7d", horizon_days=7,
    )  # fmt: skip
    assert late.any()
    assert before.coef == after.coef and before.schedule == after.schedule


def test_train_recovery_per_retry_end_to_end(frame, tmp_path) -> None:
    res = training.train_recovery(
        None,
        dataset=frame,
        framing="per_retry",
        test_months=3,
        valid_months=3,
        track=False,
        register=False,
    )
    assert set(res.runs) == {"recovery_7d", "recovery_14d", "recovery_30d"}
    for h, run in ((7, res.runs["recovery_7d"]), (30, res.runs["recovery_30d"])):
        model = run.model
        assert model.meta["framing"] == "per_retry" and run.card["framing"] == "per_retry"
        assert model.calibrator.method == "none"
        # refitted on every retry made before the test period, and on nothing later
        hist = retry_schedule.retry_history(frame, before=run.split.test_start)
        assert model.meta["retry_rows"] == len(hist)
        assert 0.5 < model.meta["valid_auc_raw"] <= 1
        test = run.test
        assert test["p_model"].between(0, 1).all()
        truth = frame.loc[test.index, f"p_true_{h}d"]
        assert np.corrcoef(test["p_model"], truth)[0, 1] > (0.85 if h == 7 else 0.95)
        assert run.metrics["test_roc_auc"] > 0.7
        # explanations: per-feature log-odds of the next retry, summing to its log-odds
        rows = frame.loc[test.index[:50]]
        contrib = explain.contributions(model, rows)
        assert list(contrib.columns) == [*model.features, explain.BIAS]
        s = rows["invoice_hours_since_first_failure"].to_numpy() / 24
        nxt = s + rows["invoice_hours_to_next_attempt"].to_numpy() / 24  # announced
        first_s = rows["as_of"].astype("int64").to_numpy() / 1e6 - s * DAY
        ok = np.isfinite(nxt)
        p_next = model.retry_probability(
            rows[ok], number=rows["invoice_attempt_number"].to_numpy()[ok] + 1,
            when_s=first_s[ok] + nxt[ok] * DAY,
        )  # fmt: skip
        logit = contrib[ok].sum(axis=1).to_numpy()
        assert np.allclose(1 / (1 + np.exp(-logit)), p_next, atol=1e-9)
        # saved as plain files and loaded back (also through the registry's loader)
        model.save(tmp_path / run.name)
        again = _load_bundle(tmp_path / run.name)
        assert isinstance(again, retry_schedule.RetryScheduleModel)
        assert np.allclose(again.predict(rows), model.predict(rows))
    # the direct framing still works on the same frame, and rejects inputs it cannot use
    with pytest.raises(ValueError, match="framing"):
        training.train_recovery(None, dataset=frame, framing="weekly", track=False)
    with pytest.raises(ValueError, match="fixed inputs"):
        training.train_recovery(
            None, dataset=frame, framing="per_retry", features=["invoice_amount_due"],
            track=False,
        )  # fmt: skip


def test_a_per_retry_model_is_tracked_registered_loaded_and_scores(frame, tmp_path) -> None:
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    settings = load_settings(repo, overrides={"data_dir": str(tmp_path / "data")})
    res = training.train_recovery(
        None, dataset=frame, framing="per_retry", horizons=(14,), test_months=3,
        valid_months=3, settings=settings, track=True, register=True,
    )  # fmt: skip
    run = res.runs["recovery_14d"]
    assert run.run_id and run.version
    model, info = registry.load_model("recovery_14d", str(run.version), settings=settings)
    assert isinstance(model, retry_schedule.RetryScheduleModel)
    assert info["feature_set_version"] == run.model.feature_set_version
    rows = frame[frame["invoice_attempt_number"] < 5].tail(20)
    scores = scoring.score_frame(
        model, rows, info=info, entity_type="invoice", entity_col="invoice_id"
    )
    np.testing.assert_allclose(scores["score"].to_numpy(), run.model.predict(rows))
    assert scores["reason_1"].notna().all()


def test_the_announced_next_retry_decides_whether_it_falls_in_the_window(frame) -> None:
    res = training.train_recovery(
        None, dataset=frame, framing="per_retry", test_months=3, valid_months=3,
        track=False, register=False,
    )  # fmt: skip
    run = res.runs["recovery_7d"]
    rows = frame.loc[run.test.index]
    truth = rows["p_true_7d"].to_numpy()
    known = run.model.predict_raw(rows)
    unknown = run.model.predict_raw(rows.assign(invoice_hours_to_next_attempt=np.nan))
    # the third attempt's 7-day window ends near the day-14 retry: only the announcement
    # tells whether it is inside
    third = rows["invoice_attempt_number"].to_numpy() == 3
    r_known = np.corrcoef(known[third], truth[third])[0, 1]
    r_unknown = np.corrcoef(unknown[third], truth[third])[0, 1]
    assert r_known > 0.95 and r_known > r_unknown + 0.1
    # a retry announced past the window adds nothing (and no later retry can be inside)
    row = rows[third].iloc[[0]]
    late = run.model.predict_raw(row.assign(invoice_hours_to_next_attempt=7 * 24 + 1.0))
    early = run.model.predict_raw(row.assign(invoice_hours_to_next_attempt=7 * 24 - 1.0))
    assert late[0] == 0.0 and early[0] > 0.05
