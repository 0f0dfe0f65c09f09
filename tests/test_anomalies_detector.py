"""The Isolation Forest detector: features, scores, explanations, findings."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from test_anomalies_helpers import NOW, T0, clean_books, months

from workbench.anomalies import detect
from workbench.anomalies.detector import FEATURE_NAMES, InvoiceAnomalyDetector, invoice_features
from workbench.anomalies.findings import FINDING_COLUMNS


@pytest.fixture(scope="module")
def books():  # noqa: ANN201
    b = clean_books(n_accounts=25, n_months=12)
    # a duplicate two hours after the original, and a tenfold invoice that no price explains
    b.cycle_invoice("in_dup", "cus_1", "sub_1", "price_seat", 1_000, 3, months(T0, 3))
    b.con.execute(
        "UPDATE invoices SET created = created + INTERVAL 2 HOUR WHERE invoice_id = 'in_dup'"
    )
    b.invoice(
        "in_manual_big",
        "cus_4",
        created=months(T0, 5) + timedelta(days=3),
        billing_reason="manual",
        lines=[dict(amount=60_000, quantity=1)],
    )
    return b


def test_features_describe_each_invoice(books) -> None:  # noqa: ANN001
    f = invoice_features(books.con).set_index("invoice_id")
    assert set(FEATURE_NAMES) <= set(f.columns)
    assert (
        len(f) == books.con.execute("SELECT count(*) FROM invoices WHERE total > 0").fetchone()[0]
    )
    assert (
        f.loc["in_dup", "same_period_invoices"] == 1
        and f.loc["in_1_3", "same_period_invoices"] == 1
    )
    assert f.loc["in_dup", "days_since_previous"] == pytest.approx(2 / 24)
    assert f.loc["in_1_4", "days_since_previous"] == pytest.approx(30 - 2 / 24)
    assert np.isnan(f.loc["in_1_0", "days_since_previous"])
    assert f.loc["in_manual_big", "amount_vs_usual"] == pytest.approx(66_000 / 6_600)
    assert np.isnan(f.loc["in_manual_big", "amount_vs_plan"])  # no price on the line
    assert f.loc["in_trial_1", "discount_share"] == pytest.approx(300 / 3_240)
    assert f.loc["in_trial_1", "n_lines"] == 2
    assert f.loc["in_0_upgrade", "proration_share"] == 1.0
    assert f.loc["in_1_2", "refund_share"] == pytest.approx(3_300 / 3_300)
    assert f.loc["in_year", "tax_rate"] == 0.0 and f.loc["in_0_0", "tax_rate"] == pytest.approx(0.1)


def test_window_features_look_back_at_history(books) -> None:  # noqa: ANN001
    f = invoice_features(books.con, start=months(T0, 3), end=months(T0, 4)).set_index("invoice_id")
    assert "in_1_2" not in f.index and "in_dup" in f.index
    assert f.loc["in_1_3", "days_since_previous"] == pytest.approx(31)  # March has 31 days


def test_detector_ranks_the_planted_invoices_first_and_explains_them(books) -> None:  # noqa: ANN001
    feats = invoice_features(books.con)
    det = InvoiceAnomalyDetector(contamination=0.02, random_state=0).fit(feats)
    scores = det.score(feats).sort_values("score", ascending=False)
    top = list(scores["invoice_id"].head(6))
    assert "in_dup" in top and "in_manual_big" in top
    assert scores["score"].between(0, 1).all()
    exp = det.explain(feats[feats["invoice_id"].isin(["in_dup", "in_manual_big"])])
    first = exp[exp["rank"] == 1].set_index("invoice_id")
    assert first.loc["in_manual_big", "feature"] == "amount_vs_usual"
    assert (
        "total 66,000 is 10.00× the account's median invoice (6,600"
        in first.loc["in_manual_big", "text"]
    )
    dup_feats = set(exp.loc[exp["invoice_id"] == "in_dup", "feature"])
    assert {"same_period_invoices", "days_since_previous"} <= dup_feats
    assert (exp.groupby("invoice_id")["rank"].max() <= det.top).all()


def test_detector_is_deterministic_and_findings_follow_the_contract(books) -> None:  # noqa: ANN001
    feats = invoice_features(books.con)
    a = InvoiceAnomalyDetector(contamination=0.02, random_state=3).fit(feats)
    b = InvoiceAnomalyDetector(contamination=0.02, random_state=3).fit(feats)
    pd.testing.assert_frame_equal(a.score(feats), b.score(feats))
    f = a.findings(feats, detected_at=NOW)
    assert tuple(f.columns) == FINDING_COLUMNS
    assert (f["rule"] == "isolation_forest").all() and (f["suggested_action"] == "review").all()
    assert len(f) == int(a.score(feats)["is_outlier"].sum())
    big = f.set_index("object_id").loc["in_manual_big"]
    assert big["amount_at_stake"] == 66_000 - 6_600
    assert big["explanation"].startswith("invoice in_manual_big is unusual (score ")


def test_detect_merges_rules_and_model_without_repeating_objects(books) -> None:  # noqa: ANN001
    result = detect(books.con, contamination=0.02, detected_at=NOW)
    assert "in_dup" in set(result.rule_findings["object_id"])
    assert "in_dup" in set(result.model_findings["object_id"])
    merged = result.findings
    assert merged.loc[merged["object_id"] == "in_dup", "rule"].tolist() == ["duplicate_invoice"]
    assert "in_manual_big" in set(merged.loc[merged["rule"] == "isolation_forest", "object_id"])
    assert merged["finding_id"].is_unique
    assert len(result.scores) == len(invoice_features(books.con))
    assert result.scores.loc[result.scores["invoice_id"] == "in_dup", "is_outlier"].item()
    why = result.detector.explain(result.scores[result.scores["invoice_id"] == "in_manual_big"])
    assert why.iloc[0]["feature"] == "amount_vs_usual"


def test_fit_needs_data() -> None:
    with pytest.raises(ValueError):
        InvoiceAnomalyDetector().fit(
            invoice_features(clean_books(n_accounts=0, n_months=0).con).head(1)
        )
    with pytest.raises(ValueError):
        InvoiceAnomalyDetector(features=["no_such_feature"])
