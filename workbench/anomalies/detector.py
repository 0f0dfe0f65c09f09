"""A learned detector for what the rules miss: an Isolation Forest on invoice features.

Features are computed in SQL over the same :class:`~workbench.anomalies.rules.Relations`
as the rules (so one invoice can be scored as it arrives), then
:class:`InvoiceAnomalyDetector` (scikit-learn's ``IsolationForest``, behind this one
module) scores them. Each flagged invoice is explained by the features that sit
furthest from the population, measured as robust z-scores (distance from the median in
units of the scaled median absolute deviation) on the same transformed values the
forest sees.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest

from workbench.anomalies.findings import empty_findings, finding_id, utc_now
from workbench.anomalies.rules import Relations, period_relations
from workbench.timeutil import utc_time

log = logging.getLogger(__name__)

FEATURE_SQL = """
WITH scope AS (SELECT DISTINCT account_id FROM {target_invoices}),
inv AS (
    SELECT * FROM {invoices}
    WHERE account_id IN (SELECT account_id FROM scope)
      AND coalesce(status, 'open') NOT IN ('void', 'draft') AND total > 0
),
priced AS (
    SELECT l.*, NOT coalesce(l.proration, false) AND p.unit_amount IS NOT NULL
                AND coalesce(p.billing_scheme, 'per_unit') = 'per_unit' AND l.quantity IS NOT NULL
                AND l.amount <> 0 AND p.currency = l.currency AS is_priced,
           p.unit_amount, p.interval, p.interval_count, p.usage_type
    FROM {invoice_lines} l LEFT JOIN {prices} p ON p.price_id = l.price_id
    WHERE l.invoice_id IN (SELECT invoice_id FROM inv)
),
lines AS (
    SELECT invoice_id, count(*) AS n_lines, sum(amount) AS lines_amount,
           avg(CASE WHEN coalesce(proration, false) THEN 1.0 ELSE 0.0 END) AS proration_share,
           bool_and(coalesce(proration, false)) AS all_proration,
           min(period_start) AS ps, max(period_end) AS pe,
           sum(CASE WHEN is_priced THEN amount END) AS priced_amount,
           sum(CASE WHEN is_priced THEN unit_amount * quantity END) AS plan_amount,
           max(CASE WHEN NOT coalesce(proration, false) AND coalesce(usage_type, 'licensed') = 'licensed'
                    THEN CASE interval WHEN 'day' THEN 1 WHEN 'week' THEN 7 WHEN 'month' THEN 30.44
                                       WHEN 'year' THEN 365.25 END * coalesce(interval_count, 1) END)
               AS interval_days
    FROM priced GROUP BY 1
),
refunded AS ({invoice_refunds}),
base AS (
    SELECT i.invoice_id, i.account_id, coalesce(i.subscription_id, i.account_id) AS series,
           CASE WHEN coalesce(l.all_proration, false) OR i.billing_reason = 'subscription_update' THEN 'proration'
                WHEN i.billing_reason IN ('subscription_cycle', 'subscription_create') THEN 'cycle'
                ELSE coalesce(i.billing_reason, 'other') END AS kind,
           i.currency, i.created, i.total, coalesce(i.subtotal, l.lines_amount) AS subtotal,
           coalesce(i.total_discount, 0) AS discount, coalesce(i.tax, 0) AS tax,
           coalesce(i.amount_paid, 0) AS paid, coalesce(r.refunded, 0) AS refunded,
           coalesce(l.n_lines, 0) AS n_lines, l.lines_amount, coalesce(l.proration_share, 0) AS proration_share,
           l.priced_amount, l.plan_amount, l.interval_days,
           date_trunc('day', coalesce(l.ps, i.period_start) AT TIME ZONE 'UTC') AS ps_day,
           date_trunc('day', coalesce(l.pe, i.period_end) AT TIME ZONE 'UTC') AS pe_day,
           CASE WHEN coalesce(i.subtotal, l.lines_amount) - coalesce(i.total_discount, 0) > 0
                THEN coalesce(i.tax, 0) / (coalesce(i.subtotal, l.lines_amount) - coalesce(i.total_discount, 0))
           END AS tax_rate
    FROM inv i LEFT JOIN lines l USING (invoice_id) LEFT JOIN refunded r USING (invoice_id)
),
acct AS (
    SELECT account_id, median(tax_rate) AS median_tax_rate, median(total) AS median_total_all
    FROM base GROUP BY 1
),
series_kind AS (SELECT series, kind, median(total) AS median_total, count(*) AS n FROM base GROUP BY 1, 2),
prev AS (
    SELECT invoice_id,
           (epoch(created) - epoch(lag(created) OVER (PARTITION BY series, kind ORDER BY created, invoice_id))) / 86400.0
               AS days_since_previous
    FROM base
),
same_period AS (
    SELECT a.invoice_id, count(*) AS n
    FROM base a JOIN base b
      ON b.account_id = a.account_id AND b.ps_day = a.ps_day AND b.pe_day = a.pe_day
     AND b.invoice_id <> a.invoice_id
    GROUP BY 1
),
same_amount AS (
    SELECT a.invoice_id, count(*) AS n
    FROM base a JOIN base b
      ON b.account_id = a.account_id AND b.total = a.total AND b.invoice_id <> a.invoice_id
     AND abs(epoch(b.created) - epoch(a.created)) <= 20 * 86400
    GROUP BY 1
)
SELECT t.invoice_id, t.account_id, t.currency, t.created, t.kind, t.total,
       CASE WHEN sk.n >= 3 THEN 'the median ' || t.kind || ' invoice of its subscription'
            ELSE 'the account''s median invoice' END AS baseline,
       CASE WHEN sk.n >= 3 THEN sk.median_total ELSE acct.median_total_all END AS median_total,
       t.total / nullif(CASE WHEN sk.n >= 3 THEN sk.median_total ELSE acct.median_total_all END, 0)
           AS amount_vs_usual,
       t.priced_amount / nullif(t.plan_amount, 0) AS amount_vs_plan,
       t.n_lines::DOUBLE AS n_lines,
       CASE WHEN t.subtotal > 0 THEN t.discount / t.subtotal ELSE 0 END AS discount_share,
       t.tax_rate,
       t.tax_rate - acct.median_tax_rate AS tax_rate_vs_account,
       p.days_since_previous, p.days_since_previous / t.interval_days AS gap_vs_interval,
       coalesce(sp.n, 0)::DOUBLE AS same_period_invoices,
       coalesce(sa.n, 0)::DOUBLE AS same_amount_20d,
       t.proration_share,
       CASE WHEN t.lines_amount IS NULL THEN 0
            ELSE abs(t.total - (t.lines_amount - t.discount + t.tax)) / t.total END AS total_mismatch_share,
       CASE WHEN t.paid > 0 THEN t.refunded / t.paid ELSE 0 END AS refund_share,
       CASE WHEN a.currency IS NOT NULL AND lower(a.currency) <> lower(t.currency) THEN 1.0 ELSE 0.0 END
           AS currency_differs
FROM base t
JOIN acct USING (account_id)
JOIN series_kind sk ON sk.series = t.series AND sk.kind = t.kind
JOIN prev p USING (invoice_id)
LEFT JOIN same_period sp USING (invoice_id)
LEFT JOIN same_amount sa USING (invoice_id)
LEFT JOIN {accounts} a ON a.account_id = t.account_id
WHERE t.invoice_id IN (SELECT invoice_id FROM {target_invoices})
ORDER BY t.created, t.invoice_id
"""


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Feature:
    """One model feature: how the forest sees it and how people read it.

    Attributes:
        name: Column of :func:`invoice_features`.
        transform: ``log`` (ratios: log of the value), ``log1p`` (counts, days) or ``none``.
        describe: ``(value, typical, row) -> text`` with the numbers, for explanations.
    """

    name: str
    transform: str
    describe: Callable[[float, float, dict[str, Any]], str]


FEATURES: tuple[Feature, ...] = (
    Feature(
        "amount_vs_usual",
        "log",
        lambda v, t, r: (
            f"total {r['total']:,} is {v:.2f}× {r['baseline']} ({_num(r['median_total'])}; typical ratio {t:.2f})"
        ),
    ),
    Feature(
        "amount_vs_plan",
        "log",
        lambda v, t, r: f"priced lines bill {v:.2f}× their price × quantity (typical {t:.2f})",
    ),
    Feature("n_lines", "log1p", lambda v, t, r: f"{v:.0f} line(s) (typical {_num(t)})"),
    Feature(
        "discount_share",
        "none",
        lambda v, t, r: f"discount is {_pct(v)} of the subtotal (typical {_pct(t)})",
    ),
    Feature("tax_rate", "none", lambda v, t, r: f"tax rate {_pct(v)} (typical {_pct(t)})"),
    Feature(
        "tax_rate_vs_account",
        "none",
        lambda v, t, r: (
            f"tax rate differs from the account's usual rate by {100 * v:+.1f} points (typical {100 * t:+.1f})"
        ),
    ),
    Feature(
        "days_since_previous",
        "log1p",
        lambda v, t, r: (
            f"{_num(v)} days since the previous {r['kind']} invoice of the same subscription (typical {_num(t)})"
        ),
    ),
    Feature(
        "gap_vs_interval",
        "log",
        lambda v, t, r: (
            f"the gap since the previous {r['kind']} invoice is {v:.2f}× the billing interval (typical {t:.2f})"
        ),
    ),
    Feature(
        "same_period_invoices",
        "log1p",
        lambda v, t, r: (
            f"{v:.0f} other invoice(s) of the account for the same service period (typical {_num(t)})"
        ),
    ),
    Feature(
        "same_amount_20d",
        "log1p",
        lambda v, t, r: (
            f"{v:.0f} other invoice(s) of the account with the same total within 20 days (typical {_num(t)})"
        ),
    ),
    Feature(
        "total_mismatch_share",
        "none",
        lambda v, t, r: (
            f"total differs from lines − discounts + tax by {_pct(v)} of the total (typical {_pct(t)})"
        ),
    ),
    Feature(
        "refund_share",
        "none",
        lambda v, t, r: f"{_pct(v)} of the amount paid was refunded (typical {_pct(t)})",
    ),
    Feature(
        "currency_differs",
        "none",
        lambda v, t, r: (
            "currency differs from the account's" if v else "currency matches the account's"
        ),
    ),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
_BY_NAME = {f.name: f for f in FEATURES}


def invoice_features(
    con: Any, *, relations: Relations | None = None, start: Any = None, end: Any = None
) -> pd.DataFrame:
    """Model features of every invoice among the targets (non-void, total > 0).

    Args:
        con: A DuckDB connection with the canonical tables.
        relations: What to compute for, against what (default: the invoices created in
            ``[start, end)`` against the whole warehouse).
        start: Start of the window (ignored when ``relations`` is given).
        end: End of the window, exclusive (ignored when ``relations`` is given).

    Returns:
        One row per invoice: ``invoice_id``, ``account_id``, ``currency``, ``created``,
        ``kind`` (cycle, proration, manual, ...), ``total``, ``median_total`` (the median
        invoice of the same subscription and kind when it has three or more, else of the
        account; ``baseline`` says which), ``proration_share`` (not a model feature), and
        the columns in
        :data:`FEATURE_NAMES` (floats, NaN where undefined: first invoice, no priced line).
    """
    rel = relations or period_relations(start=start, end=end)
    frame = con.execute(rel.render(FEATURE_SQL)).fetchdf()
    for name in FEATURE_NAMES:
        frame[name] = frame[name].astype("float64")
    frame["total"] = frame["total"].astype("int64")
    frame["created"] = pd.to_datetime(frame["created"], utc=True).astype("datetime64[us, UTC]")
    return frame


def _transform(frame: pd.DataFrame, features: Sequence[str]) -> pd.DataFrame:
    out = pd.DataFrame(index=frame.index)
    for name in features:
        x = frame[name].astype("float64")
        kind = _BY_NAME[name].transform
        if kind == "log":
            x = np.log(x.where(x > 0))
        elif kind == "log1p":
            x = np.log1p(x.clip(lower=0))
        out[name] = x
    return out


#: Smallest scale per transform, so a near-constant feature does not turn a tiny
#: deviation into a huge z: 5 % for ratios, 0.1 on log1p counts, 1 point for shares.
_MIN_SCALE = {"log": 0.05, "log1p": 0.1, "none": 0.01}


def _robust_scale(x: np.ndarray, *, floor: float) -> tuple[float, float]:
    """Median and a robust scale: 1.4826·MAD, else 1.2533·mean absolute deviation, never below ``floor``."""
    x = x[~np.isnan(x)]
    if x.size == 0:
        return 0.0, floor
    med = float(np.median(x))
    dev = np.abs(x - med)
    scale = 1.4826 * float(np.median(dev))
    if scale <= 1e-12:
        scale = 1.2533 * float(np.mean(dev))
    return med, max(scale, floor)


class InvoiceAnomalyDetector:
    """Isolation Forest over :func:`invoice_features`, with per-invoice explanations.

    Args:
        contamination: Share of invoices flagged (sets the score threshold at fit time).
        n_estimators: Trees in the forest.
        max_samples: Rows per tree (at most the number of invoices). Larger than
            scikit-learn's 256 so that rare values of a feature that is constant in most
            invoices (amount vs price, totals vs lines) reach the trees: on the simulated
            company this moved line-total mismatches from a median rank of ~800 to ~40.
        random_state: Seed; the same data and seed give the same scores.
        features: Feature names to use (default :data:`FEATURE_NAMES`).
        min_z: Robust z a feature needs to be named in an explanation (the most deviant
            feature is always named).
        top: Features named per explanation at most.
    """

    def __init__(
        self,
        *,
        contamination: float = 0.01,
        n_estimators: int = 200,
        max_samples: int = 4096,
        random_state: int = 0,
        features: Sequence[str] | None = None,
        min_z: float = 2.0,
        top: int = 3,
    ) -> None:
        self.contamination = contamination
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state
        self.features = tuple(features or FEATURE_NAMES)
        unknown = set(self.features) - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}")
        self.min_z = min_z
        self.top = top

    def fit(self, features: pd.DataFrame) -> Self:
        """Learn medians, robust scales and the forest from a feature frame.

        Args:
            features: Output of :func:`invoice_features` (needs the feature columns).

        Returns:
            ``self``, with ``center_``, ``scale_``, ``typical_``, ``model_`` and
            ``threshold_`` (score at or above which an invoice is flagged).
        """
        if len(features) < 2:
            raise ValueError("need at least two invoices to fit the detector")
        x = _transform(features, self.features)
        self.center_: dict[str, float] = {}
        self.scale_: dict[str, float] = {}
        for name in self.features:
            floor = _MIN_SCALE[_BY_NAME[name].transform]
            self.center_[name], self.scale_[name] = _robust_scale(x[name].to_numpy(), floor=floor)
        self.typical_ = {
            n: float(features[n].median()) if features[n].notna().any() else 0.0
            for n in self.features
        }
        self.model_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(features)),
            contamination=self.contamination,
            random_state=self.random_state,
        ).fit(self._matrix(x))
        # sklearn flags score_samples < offset_; our score is its negation.
        self.threshold_ = float(-self.model_.offset_)
        log.info(
            "fitted isolation forest on %d invoices, threshold %.3f", len(features), self.threshold_
        )
        return self

    def _matrix(self, x: pd.DataFrame) -> np.ndarray:
        return x.fillna(pd.Series(self.center_)).to_numpy(dtype="float64")

    def robust_z(self, features: pd.DataFrame) -> pd.DataFrame:
        """Robust z-score of every feature (transformed), NaN where the feature is undefined.

        Args:
            features: A feature frame.

        Returns:
            A frame indexed like ``features`` with one column per feature.
        """
        x = _transform(features, self.features)
        return pd.DataFrame(
            {n: (x[n] - self.center_[n]) / self.scale_[n] for n in self.features},
            index=features.index,
        )

    def score(self, features: pd.DataFrame) -> pd.DataFrame:
        """Anomaly scores: higher is more unusual (in (0, 1], ``-score_samples``).

        Args:
            features: A feature frame.

        Returns:
            ``invoice_id``, ``account_id``, ``currency``, ``total``, ``score``,
            ``is_outlier`` (score ≥ ``threshold_``), in the order of ``features``.
        """
        x = _transform(features, self.features)
        score = (
            -self.model_.score_samples(self._matrix(x))
            if len(features)
            else np.array([], dtype=float)
        )
        out = features[["invoice_id", "account_id", "currency", "total"]].copy()
        out["score"] = score
        out["is_outlier"] = out["score"] >= self.threshold_
        return out.reset_index(drop=True)

    def explain(self, features: pd.DataFrame) -> pd.DataFrame:
        """The features that make each invoice unusual, most deviant first.

        Args:
            features: A feature frame.

        Returns:
            Long frame: ``invoice_id``, ``rank`` (1 = most deviant), ``feature``, ``value``,
            ``typical`` (population median), ``z`` (robust z-score), ``text`` (plain words
            with the numbers). Up to ``top`` rows per invoice, only those with
            ``|z| ≥ min_z`` except the first.
        """
        z = self.robust_z(features)
        rows = []
        records = features.to_dict("records")
        for i, (_, zrow) in enumerate(z.iterrows()):
            rec = records[i]
            ranked = zrow.dropna().abs().sort_values(ascending=False, kind="stable")
            for k, name in enumerate(ranked.index[: self.top]):
                zval = float(zrow[name])
                if k > 0 and abs(zval) < self.min_z:
                    break
                value = float(rec[name])
                typical = self.typical_[name]
                rows.append(
                    {
                        "invoice_id": rec["invoice_id"],
                        "rank": k + 1,
                        "feature": name,
                        "value": value,
                        "typical": typical,
                        "z": zval,
                        "text": _BY_NAME[name].describe(value, typical, rec) + f" (z {zval:+.1f})",
                    }
                )
        return pd.DataFrame(
            rows, columns=["invoice_id", "rank", "feature", "value", "typical", "z", "text"]
        )

    def findings(
        self,
        features: pd.DataFrame,
        *,
        detected_at: pd.Timestamp | None = None,
        only_outliers: bool = True,
        medium_score: float = 0.7,
    ) -> pd.DataFrame:
        """Findings for the invoices the forest flags.

        Args:
            features: A feature frame.
            detected_at: Stamp for ``detected_at`` (default: now).
            only_outliers: Keep only invoices at or above the threshold.
            medium_score: Score from which a finding is ``medium`` rather than ``low``.

        Returns:
            A findings frame (rule ``isolation_forest``, anomaly type ``unusual_invoice``,
            action ``review``); ``amount_at_stake`` is how far the total is from the
            usual invoice (``median_total``), capped at the total.
        """
        scores = self.score(features)
        keep = scores["is_outlier"] if only_outliers else pd.Series(True, index=scores.index)
        if not keep.any():
            return empty_findings()
        sub = features.reset_index(drop=True)[keep.to_numpy()]
        sc = scores[keep.to_numpy()]
        expl = self.explain(sub)
        texts = expl.groupby("invoice_id", sort=False)["text"].agg("; ".join)
        detected_at = detected_at if detected_at is not None else utc_now()
        out = []
        for rec, s in zip(sub.to_dict("records"), sc["score"], strict=True):
            med = rec["median_total"]
            # at most the whole invoice; less when it is close to what the account usually pays
            stake = (
                min(rec["total"], abs(rec["total"] - med))
                if med is not None and not math.isnan(med)
                else rec["total"]
            )
            out.append(
                {
                    "finding_id": finding_id("isolation_forest", "invoice", rec["invoice_id"]),
                    "rule": "isolation_forest",
                    "anomaly_type": "unusual_invoice",
                    "object_type": "invoice",
                    "object_id": rec["invoice_id"],
                    "account_id": rec["account_id"],
                    "severity": "medium" if s >= medium_score else "low",
                    "amount_at_stake": int(round(stake)),
                    "currency": rec["currency"],
                    "explanation": (
                        f"invoice {rec['invoice_id']} is unusual (score {s:.2f}, threshold {self.threshold_:.2f}): "
                        + texts.get(rec["invoice_id"], "")
                    ),
                    "suggested_action": "review",
                    "detected_at": detected_at,
                    "score": float(s),
                }
            )
        return pd.DataFrame(out)


def detect_unusual_invoices(
    con: Any,
    *,
    start: Any = None,
    end: Any = None,
    contamination: float = 0.01,
    max_samples: int = 4096,
    random_state: int = 0,
    detected_at: pd.Timestamp | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, InvoiceAnomalyDetector]:
    """Fit the detector on every invoice created before ``end`` and flag those in ``[start, end)``.

    Args:
        con: A DuckDB connection with the canonical tables.
        start: Start of the window whose invoices are flagged (None: from the beginning).
        end: End of the window, exclusive (None: everything).
        contamination: Share of the training invoices the threshold flags.
        max_samples: Rows per tree.
        random_state: Seed of the forest.
        detected_at: Stamp for ``detected_at``.

    Returns:
        ``(findings, scores, detector)``: the findings of the flagged invoices in the window;
        every invoice of the window with its features (:func:`invoice_features`) plus
        ``score`` and ``is_outlier`` (so ``detector.explain(scores)`` works on it); and the
        fitted detector (reuse it with :func:`workbench.anomalies.realtime.check_invoice`).
    """
    train = invoice_features(con, end=end)
    det = InvoiceAnomalyDetector(
        contamination=contamination, max_samples=max_samples, random_state=random_state
    ).fit(train)
    window = (
        train
        if start is None
        else train[train["created"] >= utc_time(start, what="start")].reset_index(drop=True)
    )
    scored = det.score(window)
    scores = window.assign(
        score=scored["score"].to_numpy(), is_outlier=scored["is_outlier"].to_numpy()
    )
    return det.findings(window, detected_at=detected_at), scores, det
