"""Altair charts for the anomalies notebook: pure functions from frames to charts."""

from __future__ import annotations

import altair as alt
import pandas as pd

from workbench.anomalies.findings import SEVERITIES

_SEVERITY_COLORS = alt.Scale(
    domain=list(SEVERITIES), range=["#7f0000", "#d7301f", "#fc8d59", "#fdcc8a"]
)


def findings_by_type_chart(findings: pd.DataFrame) -> alt.Chart:
    """Bar chart: number of findings per anomaly type, stacked by severity.

    Args:
        findings: A findings frame (``anomaly_type``, ``severity``).
    """
    counts = (
        findings.groupby(["anomaly_type", "severity"], as_index=False)
        .size()
        .rename(columns={"size": "findings"})
        if len(findings)
        else pd.DataFrame(
            {
                "anomaly_type": pd.Series(dtype=str),
                "severity": pd.Series(dtype=str),
                "findings": pd.Series(dtype=int),
            }
        )
    )
    return (
        alt.Chart(counts, title="Findings by type and severity")
        .mark_bar()
        .encode(
            y=alt.Y("anomaly_type:N", sort="-x", title=None),
            x=alt.X("findings:Q", title="findings"),
            color=alt.Color("severity:N", scale=_SEVERITY_COLORS, sort=list(SEVERITIES)),
            order=alt.Order("severity_rank:Q"),
            tooltip=["anomaly_type:N", "severity:N", "findings:Q"],
        )
        .transform_calculate(severity_rank=f"indexof({list(SEVERITIES)}, datum.severity)")
    )


def amount_at_stake_chart(findings: pd.DataFrame) -> alt.Chart:
    """Bar chart: money at stake per anomaly type and currency (major units).

    Args:
        findings: A findings frame (``anomaly_type``, ``currency``, ``amount_at_stake``).
    """
    sums = (
        findings.groupby(["anomaly_type", "currency"], as_index=False)["amount_at_stake"].sum()
        if len(findings)
        else pd.DataFrame(
            {
                "anomaly_type": pd.Series(dtype=str),
                "currency": pd.Series(dtype=str),
                "amount_at_stake": pd.Series(dtype=int),
            }
        )
    )
    sums = sums.assign(amount=sums["amount_at_stake"] / 100.0)
    return (
        alt.Chart(sums, title="Amount at stake (major units)")
        .mark_bar()
        .encode(
            y=alt.Y("anomaly_type:N", sort="-x", title=None),
            x=alt.X("amount:Q", title="amount at stake"),
            color=alt.Color("currency:N"),
            tooltip=["anomaly_type:N", "currency:N", alt.Tooltip("amount:Q", format=",.2f")],
        )
    )


def score_histogram(
    scores: pd.DataFrame, *, threshold: float | None = None
) -> alt.LayerChart | alt.Chart:
    """Histogram of Isolation Forest scores, with the flagging threshold as a rule.

    Args:
        scores: ``score`` per invoice (from :meth:`InvoiceAnomalyDetector.score`).
        threshold: Score at or above which invoices are flagged.
    """
    hist = (
        alt.Chart(scores[["score"]], title="Isolation Forest scores")
        .mark_bar()
        .encode(
            x=alt.X("score:Q", bin=alt.Bin(maxbins=50), title="score"),
            y=alt.Y("count():Q", title="invoices"),
        )
    )
    if threshold is None:
        return hist
    line = (
        alt.Chart(pd.DataFrame({"threshold": [threshold]}))
        .mark_rule(color="red")
        .encode(x="threshold:Q")
    )
    return hist + line


def explanation_chart(explanation: pd.DataFrame, invoice_id: str) -> alt.Chart:
    """Robust z-scores of the features that made one invoice unusual.

    Args:
        explanation: Output of :meth:`InvoiceAnomalyDetector.explain`.
        invoice_id: The invoice to show.
    """
    rows = explanation[explanation["invoice_id"] == invoice_id]
    return (
        alt.Chart(rows, title=f"Why {invoice_id} is unusual")
        .mark_bar()
        .encode(
            y=alt.Y("feature:N", sort=alt.EncodingSortField("rank"), title=None),
            x=alt.X("z:Q", title="robust z-score"),
            color=alt.condition("datum.z > 0", alt.value("#d7301f"), alt.value("#4575b4")),
            tooltip=[
                "feature:N",
                "value:Q",
                "typical:Q",
                alt.Tooltip("z:Q", format="+.1f"),
                "text:N",
            ],
        )
    )


def evaluation_chart(per_type: pd.DataFrame) -> alt.Chart:
    """Precision and recall per anomaly type (from :func:`~workbench.anomalies.evaluate.evaluate`).

    Args:
        per_type: ``Evaluation.per_type``.
    """
    long = per_type.melt(
        id_vars=["anomaly_type"],
        value_vars=["precision", "recall"],
        var_name="metric",
        value_name="value",
    ).dropna()
    return (
        alt.Chart(long, title="Precision and recall per anomaly type")
        .mark_bar()
        .encode(
            y=alt.Y("anomaly_type:N", title=None),
            yOffset="metric:N",
            x=alt.X("value:Q", scale=alt.Scale(domain=[0, 1]), title=None),
            color="metric:N",
            tooltip=["anomaly_type:N", "metric:N", alt.Tooltip("value:Q", format=".3f")],
        )
    )


def precision_at_k_chart(at_k: pd.DataFrame) -> alt.Chart:
    """Precision@k of the ranked list.

    Args:
        at_k: ``Evaluation.at_k``.
    """
    return (
        alt.Chart(at_k, title="Precision@k of the ranked findings")
        .mark_line(point=True)
        .encode(
            x=alt.X("k:Q", scale=alt.Scale(type="log"), title="k (objects reviewed)"),
            y=alt.Y("precision_at_k:Q", scale=alt.Scale(domain=[0, 1]), title="precision@k"),
            tooltip=["k:Q", "hits:Q", alt.Tooltip("precision_at_k:Q", format=".3f")],
        )
    )


def lift_chart(lift: pd.DataFrame) -> alt.Chart:
    """True anomalies the detector adds on top of the rules, per extra review budget.

    Args:
        lift: Output of :func:`~workbench.anomalies.evaluate.lift_over_rules`.
    """
    long = lift.melt(
        id_vars=["budget"],
        value_vars=["added_true_positives", "random_expected"],
        var_name="series",
        value_name="found",
    )
    return (
        alt.Chart(long, title="Labelled anomalies added beyond the rules")
        .mark_line(point=True)
        .encode(
            x=alt.X("budget:Q", title="extra invoices reviewed"),
            y=alt.Y("found:Q", title="labelled anomalies found"),
            color="series:N",
            tooltip=["budget:Q", "series:N", alt.Tooltip("found:Q", format=".1f")],
        )
    )
