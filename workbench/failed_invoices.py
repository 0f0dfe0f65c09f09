"""The dunning engine's input: every open failed invoice as of a time, from the warehouse.

One row per invoice that is still open at ``as_of`` and whose payment has failed at least
once, with the amount in its own and in the reporting currency (at the latest FX rate on or
before ``as_of``), how many attempts were made, the last attempt's time and decline code.
Scores (recovery probability, uplift) are joined on by the caller when a model exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import duckdb
import numpy as np
import pandas as pd

from workbench.revenue.engine import currency_exponent
from workbench.timeutil import utc_time

INPUT_COLUMNS = [
    "invoice_id",
    "account_id",
    "amount_due",
    "currency",
    "amount_due_reporting",
    "attempt_count",
    "last_attempt_at",
    "decline_code",
    "recovery_probability",
    "uplift",
    "model_versions",
]


def to_reporting_minor(
    amount: int, currency: str, rate_to_usd: float, reporting: str, reporting_rate_to_usd: float
) -> int | None:
    """An amount in ``currency``'s minor units, in ``reporting``'s minor units.

    ``fx_rates.rate_to_usd`` is per whole unit (1 JPY = 0.0067 USD), so the minor units'
    exponents (JPY 0, USD 2, KWD 3) enter the conversion: 2,000,000 JPY at 0.0067 is
    1,340,000 US cents. None when a rate is missing.
    """
    if rate_to_usd is None or reporting_rate_to_usd is None:
        return None
    if pd.isna(rate_to_usd) or pd.isna(reporting_rate_to_usd) or pd.isna(amount):
        return None
    shift = currency_exponent(reporting) - currency_exponent(currency)
    return int(
        round(float(amount) * float(rate_to_usd) * 10.0**shift / float(reporting_rate_to_usd))
    )


def _decision_time(value: datetime | pd.Timestamp | str | None) -> pd.Timestamp:
    """``value`` in UTC (a time without a zone is UTC); a clear error when there is none."""
    return utc_time(
        value,
        what="decision time",
        hint="the warehouse has no events yet (its newest event is the default). Load some "
        "first (`workbench run 01_ingest`, or `workbench ingest`), or pass the time",
    )


def open_failed_invoices(
    con: duckdb.DuckDBPyConnection,
    *,
    as_of: datetime | pd.Timestamp | str,
    reporting_currency: str = "usd",
) -> pd.DataFrame:
    """Open invoices with at least one failed payment attempt at or before ``as_of``.

    Needs the canonical ``invoices``, ``payment_attempts`` and ``fx_rates`` tables.

    Returns:
        :data:`INPUT_COLUMNS`; ``recovery_probability`` and ``uplift`` are NaN and
        ``model_versions`` empty (no model has scored them yet); ``amount_due_reporting``
        is null when no FX rate is known for the invoice's currency.
    """
    as_of = _decision_time(as_of)
    frame = con.execute(
        """
        WITH attempts AS (
            SELECT invoice_id, count(*) AS attempt_count,
                   count(*) FILTER (WHERE status = 'failed') AS failed,
                   count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
                   max(created) AS last_attempt_at,
                   arg_max(coalesce(decline_code, failure_code), created) AS decline_code
            FROM payment_attempts
            WHERE invoice_id IS NOT NULL AND created <= $as_of
            GROUP BY invoice_id
        ),
        rates AS (
            SELECT currency, arg_max(rate_to_usd, date) AS rate
            FROM fx_rates WHERE date <= CAST($as_of AS DATE) GROUP BY currency
        )
        SELECT i.invoice_id, i.account_id, i.amount_due,
               i.currency, a.attempt_count, a.last_attempt_at, a.decline_code,
               CAST(r.rate AS DOUBLE) AS rate, CAST(rr.rate AS DOUBLE) AS reporting_rate
        FROM invoices i
        JOIN attempts a USING (invoice_id)
        LEFT JOIN rates r ON r.currency = i.currency
        LEFT JOIN rates rr ON rr.currency = $reporting
        WHERE a.failed > 0 AND a.succeeded = 0
          AND i.created <= $as_of
          AND coalesce(i.paid_at, TIMESTAMPTZ '9999-01-01') > $as_of
          AND coalesce(i.voided_at, TIMESTAMPTZ '9999-01-01') > $as_of
          AND coalesce(i.marked_uncollectible_at, TIMESTAMPTZ '9999-01-01') > $as_of
          AND i.amount_due > 0
        ORDER BY a.last_attempt_at, i.invoice_id
        """,
        {"as_of": as_of.to_pydatetime(), "reporting": reporting_currency.lower()},
    ).df()
    same = frame["currency"].str.lower() == reporting_currency.lower()
    usd_rate = np.where(reporting_currency.lower() == "usd", 1.0, frame["reporting_rate"])
    rates = frame["rate"].where(frame["currency"] != "usd", 1.0)
    frame["amount_due_reporting"] = pd.array(
        [
            int(amount)
            if is_same
            else to_reporting_minor(amount, currency, rate, reporting_currency, rep_rate)
            for amount, currency, rate, rep_rate, is_same in zip(
                frame["amount_due"], frame["currency"], rates, usd_rate, same, strict=True
            )
        ],
        dtype="Int64",
    )
    frame["recovery_probability"] = np.nan
    frame["uplift"] = np.nan
    frame["model_versions"] = ""
    frame["last_attempt_at"] = pd.to_datetime(frame["last_attempt_at"], utc=True)
    return frame[INPUT_COLUMNS]


def open_failed_invoices_on(
    con: duckdb.DuckDBPyConnection,
    *,
    days: Iterable[datetime | pd.Timestamp | str],
    reporting_currency: str = "usd",
) -> pd.DataFrame:
    """:func:`open_failed_invoices` as of each of ``days``, stacked: the dunning engine's
    input for a replay of the policy (:func:`workbench.dunning.decide_daily`).

    Returns:
        :data:`INPUT_COLUMNS` plus ``as_of`` (the day's time, UTC), one block of rows per day
        that had open failed invoices, in the order of ``days`` (an invoice open on several
        days appears once per day); empty, with those columns, when no day had any.
    """
    parts = []
    for day in days:
        as_of = utc_time(day, what="day")
        invoices = open_failed_invoices(con, as_of=as_of, reporting_currency=reporting_currency)
        if len(invoices):
            parts.append(invoices.assign(as_of=as_of))
    if not parts:
        return pd.DataFrame(columns=[*INPUT_COLUMNS, "as_of"])
    return pd.concat(parts, ignore_index=True)


def open_failed_invoices_daily(
    con: duckdb.DuckDBPyConnection,
    *,
    until: datetime | pd.Timestamp | str,
    period_days: int,
    reporting_currency: str = "usd",
) -> pd.DataFrame:
    """:func:`open_failed_invoices_on` every day of a period: the input of a day-by-day
    (shadow) replay of the policy.

    The days are ``until - period_days``, the next day at the same time of day, and so on
    up to ``until``: ``period_days + 1`` snapshots.

    Returns:
        :data:`INPUT_COLUMNS` plus ``as_of`` (the day's time, UTC), one block of rows per day
        that had open failed invoices, in day order (an invoice open on several days appears
        once per day); empty, with those columns, when no day had any.
    """
    end = _decision_time(until)
    days = pd.date_range(end - pd.Timedelta(days=period_days), end, freq="D")
    return open_failed_invoices_on(con, days=days, reporting_currency=reporting_currency)
