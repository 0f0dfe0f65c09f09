"""Adapters between other shapes of subscription data and the engine.

- :func:`history_frame` / :func:`insert_history`: write ``subscription_history`` rows
  from a few hand-written dicts (tests, notebooks, "bring your own CSV").
- :func:`periods_to_history`: the dbt MRR playbook's ``subscription_periods``
  (subscription_id, customer_id, start_date, end_date exclusive, monthly_amount) as
  ``subscription_history`` rows, so the same engine runs the playbook.
- :func:`dbt_customer_month` / :func:`dbt_monthly_summary`: the engine's account-month
  table rendered in the playbook's own columns, to compare with its golden files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import duckdb
import pandas as pd

from workbench.schema import TABLES

HISTORY_COLUMNS: list[str] = TABLES["subscription_history"].column_names
_TS_COLUMNS = [c.name for c in TABLES["subscription_history"].columns if c.type == "TIMESTAMPTZ"]


def history_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Build ``subscription_history`` rows from partial dicts, filling the dull columns.

    Each record needs ``subscription_id``, ``account_id``, ``valid_from`` and usually
    ``unit_amount``/``interval``; defaults: status ``active``, currency ``usd``,
    interval_count 1, quantity 1, usage_type ``licensed``, ``item_id`` =
    ``<subscription_id>_item``, ``event_id`` = ``evt_<row number>``, ``valid_to`` null.
    Timestamps may be strings or datetimes; they come back as ``datetime64[us, UTC]``.

    Returns:
        A frame with exactly the columns of ``subscription_history``, in order.
    """
    rows = []
    for i, rec in enumerate(records):
        row: dict[str, Any] = {c: None for c in HISTORY_COLUMNS}
        row.update(
            status="active",
            currency="usd",
            interval="month",
            interval_count=1,
            quantity=1,
            usage_type="licensed",
            event_id=f"evt_{i:06d}",
        )
        row.update(rec)
        if row["item_id"] is None:
            row["item_id"] = f"{row['subscription_id']}_item"
        rows.append(row)
    frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    for col in _TS_COLUMNS:
        frame[col] = pd.to_datetime(frame[col], utc=True).astype("datetime64[us, UTC]")
    for col in ("quantity", "unit_amount", "discount_amount_off"):
        frame[col] = frame[col].astype("Int64")
    for col in ("interval_count", "discount_duration_in_months"):
        frame[col] = frame[col].astype("Int32")
    frame["discount_percent_off"] = frame["discount_percent_off"].astype("Float64")
    frame["cancel_at_period_end"] = frame["cancel_at_period_end"].astype("boolean")
    return frame


def insert_history(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame) -> int:
    """Append rows with the ``subscription_history`` columns; return how many were written."""
    name = "_rev_insert_history"
    con.register(name, frame[HISTORY_COLUMNS])
    try:
        con.execute(
            f"INSERT INTO subscription_history ({', '.join(HISTORY_COLUMNS)}) "
            f"SELECT {', '.join(HISTORY_COLUMNS)} FROM {name}"
        )
    finally:
        con.unregister(name)
    return len(frame)


def periods_to_history(periods: pd.DataFrame, *, currency: str = "usd") -> pd.DataFrame:
    """The dbt playbook's subscription periods as ``subscription_history`` rows.

    Needs columns ``subscription_id, customer_id, start_date, end_date, monthly_amount``
    (``end_date`` exclusive, amounts in major units). Each period becomes one active
    monthly version valid over ``[start_date, end_date)`` with
    ``unit_amount = monthly_amount * 100`` minor units and account ``str(customer_id)``.

    Returns:
        A frame with the columns of ``subscription_history``.
    """
    cents = (periods["monthly_amount"].astype(float) * 100).round().astype("int64")
    records = [
        {
            "subscription_id": f"dbt_sub_{sid}",
            "account_id": str(cid),
            "item_id": f"dbt_item_{sid}",
            "unit_amount": int(amount),
            "currency": currency,
            "valid_from": pd.Timestamp(start, tz="UTC"),
            "valid_to": pd.Timestamp(end, tz="UTC"),
            "current_period_start": pd.Timestamp(start, tz="UTC"),
            "current_period_end": pd.Timestamp(end, tz="UTC"),
            "event_id": f"dbt_period_{sid}",
        }
        for sid, cid, start, end, amount in zip(
            periods["subscription_id"],
            periods["customer_id"],
            periods["start_date"],
            periods["end_date"],
            cents,
            strict=True,
        )
    ]
    return history_frame(records)


_DBT_CATEGORY = {
    "new": "new",
    "churn": "churn",
    "reactivation": "reactivation",
    "expansion": "upgrade",
    "contraction": "downgrade",
}


def dbt_customer_month(account_months: pd.DataFrame) -> pd.DataFrame:
    """Render the account-month table in the columns of the playbook's ``mrr`` model.

    Needs ``month, account_id, mrr, opening_mrr, movement`` (minor units of a
    two-decimal currency).

    Returns:
        ``date_month, customer_id, mrr, is_active, first_active_month,
        last_active_month, is_first_month, is_last_month, previous_month_is_active,
        previous_month_mrr, mrr_change, change_category, renewal_amount`` with money
        in major units and flags as 0/1, sorted by customer and month.
    """
    df = account_months.sort_values(["account_id", "month"]).copy()
    out = pd.DataFrame(
        {
            "date_month": pd.to_datetime(df["month"]).dt.strftime("%Y-%m-%d"),
            "customer_id": pd.to_numeric(df["account_id"]),
            "mrr": df["mrr"] / 100,
            "is_active": (df["mrr"] > 0).astype(int),
            "previous_month_mrr": df["opening_mrr"] / 100,
            "previous_month_is_active": (df["opening_mrr"] > 0).astype(int),
        }
    )
    months = pd.to_datetime(df["month"])
    grouped = months.where(df["mrr"] > 0).groupby(df["account_id"].to_numpy())
    out["first_active_month"] = grouped.transform("min").dt.strftime("%Y-%m-%d").to_numpy()
    out["last_active_month"] = grouped.transform("max").dt.strftime("%Y-%m-%d").to_numpy()
    out["is_first_month"] = (out["date_month"] == out["first_active_month"]).astype(int)
    out["is_last_month"] = (out["date_month"] == out["last_active_month"]).astype(int)
    out["mrr_change"] = out["mrr"] - out["previous_month_mrr"]
    out["change_category"] = df["movement"].map(_DBT_CATEGORY).to_numpy()
    out["renewal_amount"] = out[["mrr", "previous_month_mrr"]].min(axis=1)
    cols = [
        "date_month", "customer_id", "mrr", "is_active", "first_active_month",
        "last_active_month", "is_first_month", "is_last_month", "previous_month_is_active",
        "previous_month_mrr", "mrr_change", "change_category", "renewal_amount",
    ]  # fmt: skip
    return out[cols].sort_values(["customer_id", "date_month"]).reset_index(drop=True)


def dbt_monthly_summary(account_months: pd.DataFrame) -> pd.DataFrame:
    """The playbook's monthly summary from the account-month table.

    Needs the columns of :data:`~workbench.revenue.engine.ACCOUNT_MONTH_COLUMNS`.

    Returns:
        ``date_month, total_mrr, n_new, n_churn, n_react, n_up, n_down, new_mrr,
        react_mrr, expansion_mrr, contraction_mrr, churn_mrr`` (major units).
    """
    df = account_months.copy()
    df["date_month"] = pd.to_datetime(df["month"]).dt.strftime("%Y-%m-%d")
    g = df.groupby("date_month")
    out = pd.DataFrame(
        {
            "total_mrr": g["mrr"].sum() / 100,
            "n_new": g["movement"].apply(lambda s: int((s == "new").sum())),
            "n_churn": g["movement"].apply(lambda s: int((s == "churn").sum())),
            "n_react": g["movement"].apply(lambda s: int((s == "reactivation").sum())),
            "n_up": g["movement"].apply(lambda s: int((s == "expansion").sum())),
            "n_down": g["movement"].apply(lambda s: int((s == "contraction").sum())),
            "new_mrr": g["new_mrr"].sum() / 100,
            "react_mrr": g["reactivation_mrr"].sum() / 100,
            "expansion_mrr": g["expansion_mrr"].sum() / 100,
            "contraction_mrr": g["contraction_mrr"].sum() / 100,
            "churn_mrr": g["churn_mrr"].sum() / 100,
        }
    )
    return out.reset_index()
