"""The point-in-time builder agrees with a brute-force pandas oracle on random warehouses.

The oracle below is written independently of the SQL: it reads the raw canonical tables
into pandas and computes every feature for every spine row with plain per-row filtering.
"""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from workbench.features import definitions as d
from workbench.features.offline import build_features
from workbench.features.synthetic import random_warehouse

DAY = 86_400_000_000
HOUR = 3_600_000_000
INF = np.iinfo(np.int64).max
START, END = pd.Timestamp("2023-01-01", tz="UTC"), pd.Timestamp("2024-03-01", tz="UTC")


def _us(s: pd.Series) -> np.ndarray:
    """Epoch µs of a (nullable) timestamp column; missing -> INF."""
    s = pd.to_datetime(s, utc=True)
    out = np.full(len(s), INF, dtype=np.int64)
    ok = s.notna().to_numpy()
    out[ok] = pd.DatetimeIndex(s[ok]).as_unit("us").asi8
    return out


def _map_us(keys: pd.Series, mapping: pd.Series) -> np.ndarray:
    """Look up epoch µs by key; missing -> INF (never through float, which would overflow)."""
    idx = pd.Index(mapping.index).get_indexer(keys)
    vals = mapping.to_numpy(dtype=np.int64)
    return np.where(idx >= 0, vals[np.maximum(idx, 0)] if len(vals) else INF, INF)


def _date_end_us(s: pd.Series) -> np.ndarray:
    return pd.DatetimeIndex(pd.to_datetime(s)).as_unit("us").asi8 + DAY


class Oracle:
    """Brute force: each feature for one (key, t) by filtering pandas frames."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        tb = {
            t: con.execute(f"SELECT * FROM {t}").df()
            for t in (
                "accounts",
                "prices",
                "subscription_history",
                "invoices",
                "payment_attempts",
                "refunds",
                "disputes",
                "usage",
                "crm_signals",
                "support_tickets",
                "invoice_versions",
            )
        }
        iv = tb["invoice_versions"].copy()
        iv["ts"] = _us(iv["version_at"])
        iv["nxt"] = _us(iv["next_payment_attempt"])
        iv["row_key"] = iv["event_id"] + ":" + iv["invoice_id"]
        self.iv = iv[["invoice_id", "ts", "nxt", "row_key"]]
        inv = tb["invoices"].copy()
        inv["created_us"] = _us(inv["created"])
        pa_ = tb["payment_attempts"].copy()
        pa_["ts"] = _us(pa_["created"])
        acc_of_inv = dict(zip(inv.invoice_id, inv.account_id, strict=True))
        pa_["acc"] = [
            a if isinstance(a, str) else acc_of_inv.get(i)
            for a, i in zip(pa_.account_id, pa_.invoice_id, strict=True)
        ]
        pa_["decl"] = [
            dc if isinstance(dc, str) else fc
            for dc, fc in zip(pa_.decline_code, pa_.failure_code, strict=True)
        ]

        def expiry(y, m):
            if pd.isna(y) or pd.isna(m) or not (1 <= m <= 12 and 1970 <= y <= 2200):
                return np.nan
            y2, m2 = (int(y) + 1, 1) if int(m) == 12 else (int(y), int(m) + 1)
            return float(pd.Timestamp(year=y2, month=m2, day=1, tz="UTC").value // 1000)

        pa_["exp"] = [
            expiry(y, m) for y, m in zip(pa_.card_exp_year, pa_.card_exp_month, strict=True)
        ]
        pa_["dom"] = pd.to_datetime(pa_["created"], utc=True).dt.day.astype(float)
        self.pa = pa_[["attempt_id", "invoice_id", "acc", "ts", "status", "decl", "exp", "dom"]]
        ok = pa_[pa_.status == "succeeded"].groupby("invoice_id")["ts"].min()
        failed_first = pa_[pa_.status == "failed"].groupby("invoice_id")["ts"].min()
        inv["ok_us"] = _map_us(inv.invoice_id, ok)
        inv["paid_us"] = np.minimum(_us(inv["paid_at"]), inv["ok_us"].to_numpy())
        inv["close_us"] = np.minimum.reduce(
            [inv["paid_us"].to_numpy(), _us(inv["voided_at"]), _us(inv["marked_uncollectible_at"])]
        )
        inv["first_fail_us"] = _map_us(inv.invoice_id, failed_first)
        inv = inv[
            [
                "invoice_id",
                "account_id",
                "created_us",
                "amount_due",
                "currency",
                "billing_reason",
                "paid_us",
                "close_us",
                "first_fail_us",
            ]
        ]
        self.inv = inv
        close_of = dict(zip(inv.invoice_id, inv.close_us, strict=True))
        fa = pa_[(pa_.status == "failed") & pa_.invoice_id.isin(inv.invoice_id)].copy()
        fa["valid_to"] = np.array([close_of[i] for i in fa.invoice_id], dtype=np.int64)
        self.failed_open = fa

        h = tb["subscription_history"].merge(
            tb["prices"][["price_id", "product_id"]], on="price_id", how="left"
        )
        h["from"] = _us(h["valid_from"])
        h["to"] = _us(h["valid_to"])
        h["licensed"] = h.usage_type.isna() | (h.usage_type == "licensed")
        factor = {"month": 1.0, "year": 12.0, "week": 12.0 / 52, "day": 12.0 / 365}
        h["im"] = [
            factor.get(i, np.nan) * (1 if pd.isna(c) else c)
            for i, c in zip(h.interval, h.interval_count, strict=True)
        ]
        h["qty"] = h.quantity.astype("float").fillna(1.0)
        h["monthly"] = np.where(
            h.licensed & (h.im > 0), h.unit_amount.astype(float) * h.qty / h.im, np.nan
        )
        h["product"] = h.product_id.where(h.product_id.notna(), h.price_id)
        h["key"] = h.event_id + ":" + h.subscription_id + ":" + h.item_id.fillna("")
        h["paying"] = h.status.isin(["active", "past_due"]) & h.licensed & (h.monthly > 0)
        h["period_end"] = _us(h["current_period_end"])
        h = h[
            [
                "account_id",
                "subscription_id",
                "key",
                "from",
                "to",
                "status",
                "licensed",
                "im",
                "qty",
                "monthly",
                "product",
                "paying",
                "cancel_at_period_end",
                "coupon_id",
                "discount_start",
                "discount_end",
                "period_end",
            ]
        ]
        self.h = h
        disc = h[h.coupon_id.notna()].copy()
        ds, de = _us(disc["discount_start"]), _us(disc["discount_end"])
        disc["from"] = np.where(ds == INF, disc["from"], np.maximum(disc["from"], ds))
        disc["to"] = np.minimum(disc["to"].to_numpy(), de)
        self.disc = disc

        acc = tb["accounts"]
        self.acc_created = dict(zip(acc.account_id, _us(acc["created"]), strict=True))
        u = tb["usage"].groupby(["account_id", "date"], as_index=False)["quantity"].sum()
        u["ts"] = _date_end_us(u["date"])
        self.usage = u
        c = tb["crm_signals"].copy()
        c["ts"] = _date_end_us(c["date"])
        c["key"] = c.account_id + ":" + c["date"].astype(str)
        self.crm = c
        tk = tb["support_tickets"].copy()
        tk["ts"], tk["to"] = _us(tk["created_at"]), _us(tk["resolved_at"])
        self.tickets = tk
        raw_acc = dict(zip(pa_.attempt_id, pa_.account_id, strict=True))
        dp = tb["disputes"].copy()
        dp["acc"] = [
            a if isinstance(a, str) else raw_acc.get(ch)
            for a, ch in zip(dp.account_id, dp.charge_id, strict=True)
        ]
        dp["ts"], dp["closed"] = _us(dp["created"]), _us(dp["closed_at"])
        self.disputes = dp
        rf = tb["refunds"].copy()
        rf["acc"] = [
            a
            if isinstance(a, str)
            else (raw_acc.get(ch) if isinstance(raw_acc.get(ch), str) else acc_of_inv.get(i))
            for a, ch, i in zip(rf.account_id, rf.charge_id, rf.invoice_id, strict=True)
        ]
        rf["ts"] = _us(rf["created"])
        self.refunds = rf
        pa_ = self.pa
        self.fr = {
            "pa_failed": pa_[pa_.status == "failed"],
            "pa_ok": pa_[pa_.status == "succeeded"],
            "pa_settled": pa_[pa_.status.isin(["failed", "succeeded"])],
            "pa_exp": pa_[pa_.exp.notna()],
            "h_paying": h[h.paying],
            "h_live": h[h.status.isin(["trialing", "active", "past_due"])],
            "h_trialing": h[h.status == "trialing"],
            "h_past_due": h[h.status == "past_due"],
            "h_cape": h[h.paying & h.cancel_at_period_end.fillna(False).astype(bool)],
            "disc_paying": disc[disc.status.isin(["active", "past_due"])],
            "u_pos": u[u.quantity > 0],
            "tk_high": tk[tk.severity.isin(d.HIGH_SEVERITIES)],
            "inv_paid": inv[inv.paid_us < INF].rename(columns={"paid_us": "ts"}),
            "dp_lost": dp[(dp.closed < INF) & (dp.status == "lost")]
            .drop(columns="ts")
            .rename(columns={"closed": "ts"}),
        } | {
            f"c_{col}": c[c[col].notna()]
            for col in ("health_score", "nps", "seats_purchased", "seats_used")
        }

    # ----------------------------------------------------------------- helpers
    _cache: dict

    def _by_key(self, df: pd.DataFrame, col: str, key) -> pd.DataFrame:
        """Rows of ``df`` with ``df[col] == key`` (grouped once per frame, for speed)."""
        if not hasattr(self, "_cache"):
            self._cache = {}
        ck = (id(df), col)
        if ck not in self._cache:
            self._cache[ck] = (df, {k: g for k, g in df.groupby(col, sort=False)})
        return self._cache[ck][1].get(key, df.iloc[:0])

    def window(self, df, col, key, t, w):
        df = self._by_key(df, col, key)
        m = df["ts"] <= t
        if w is not None:
            m &= df["ts"] > t - w * DAY
        return df[m]

    @staticmethod
    def last(df, tiebreak):
        if df.empty:
            return None
        return df.sort_values(["ts", tiebreak]).iloc[-1]

    def in_force(self, df, col, key, t, start="from", stop="to"):
        df = self._by_key(df, col, key)
        return df[(df[start] <= t) & (df[stop] > t)]

    def account(self, name: str, a: str, t: int):  # noqa: C901 - one branch per feature
        if name.startswith("failed_payments_"):
            w = int(name.split("_")[2][:-1])
            return len(self.window(self.fr["pa_failed"], "acc", a, t, w))
        if name == "successful_payments_90d":
            return len(self.window(self.fr["pa_ok"], "acc", a, t, 90))
        if name == "payment_failure_rate_90d":
            r = self.window(self.fr["pa_settled"], "acc", a, t, 90)
            return (r.status == "failed").mean() if len(r) else np.nan
        if name == "days_since_last_successful_payment":
            r = self.window(self.fr["pa_ok"], "acc", a, t, None)
            return (t - r.ts.max()) / DAY if len(r) else np.nan
        if name == "days_since_last_failed_payment":
            r = self.window(self.fr["pa_failed"], "acc", a, t, None)
            return (t - r.ts.max()) / DAY if len(r) else np.nan
        if name == "last_decline_code":
            r = self.last(self.window(self.fr["pa_failed"], "acc", a, t, None), "attempt_id")
            return None if r is None or pd.isna(r.decl) else r.decl
        if name in ("card_days_until_expiry", "card_expiring_30d"):
            r = self.last(self.window(self.fr["pa_exp"], "acc", a, t, None), "attempt_id")
            v = np.nan if r is None else (r.exp - t) / DAY
            if name == "card_days_until_expiry":
                return v
            return np.nan if np.isnan(v) else float(v <= 30)
        if name == "payment_lag_days_avg_90d":
            r = self.window(self.fr["inv_paid"], "account_id", a, t, 90)
            return ((r.ts - r.created_us) / DAY).mean() if len(r) else np.nan
        if name in ("dunning_invoices_open", "dunning_amount_open"):
            r = self._by_key(self.inv, "account_id", a)
            r = r[(r.first_fail_us <= t) & (r.close_us > t)]
            return len(r) if name == "dunning_invoices_open" else float(r.amount_due.sum())
        if name == "failed_invoices_total":
            r = self._by_key(self.inv, "account_id", a)
            return int((r.first_fail_us <= t).sum())
        if name == "retries_on_open_invoices":
            fo = self._by_key(self.failed_open, "acc", a)
            return int(((fo.ts <= t) & (fo.valid_to > t)).sum())
        if name.startswith("decline_share_"):
            group = name[len("decline_share_") : -4]
            r = self.window(self.fr["pa_failed"], "acc", a, t, 90)
            return r.decl.isin(d.DECLINE_GROUPS[group]).mean() if len(r) else np.nan
        # billing
        if name in ("mrr", "mrr_90d_ago", "mrr_change_90d", "mrr_change_pct_90d"):
            now = self.in_force(self.fr["h_paying"], "account_id", a, t).monthly.sum()
            ago = self.in_force(self.fr["h_paying"], "account_id", a, t - 90 * DAY).monthly.sum()
            return {
                "mrr": now,
                "mrr_90d_ago": ago,
                "mrr_change_90d": now - ago,
                "mrr_change_pct_90d": (now - ago) / ago if ago else np.nan,
            }[name]
        if name in ("plan_tier", "billing_interval_months"):
            r = self.in_force(self.fr["h_paying"], "account_id", a, t)
            col = "product" if name == "plan_tier" else "im"
            r = r[r[col].notna() & r.monthly.notna()]
            if r.empty:
                return None if name == "plan_tier" else np.nan
            return r.sort_values(["monthly", "key"]).iloc[-1][col]
        if name == "days_to_period_end":
            r = self.in_force(self.fr["h_paying"], "account_id", a, t)
            r = r[(r.period_end < INF) & r.monthly.notna()]
            if r.empty:
                return np.nan
            return (r.sort_values(["monthly", "key"]).iloc[-1].period_end - t) / DAY
        if name == "licensed_seats":
            return self.in_force(self.fr["h_paying"], "account_id", a, t).qty.sum()
        if name == "active_subscriptions":
            r = self.in_force(self.fr["h_live"], "account_id", a, t)
            return r.subscription_id.nunique()
        if name == "tenure_days":
            r = self._by_key(self.fr["h_live"], "account_id", a)
            first = r["from"].min() if len(r) else INF
            return (t - first) / DAY if first <= t else np.nan
        if name == "discount_active":
            r = self.in_force(self.fr["disc_paying"], "account_id", a, t)
            return int(len(r) > 0)
        if name in ("is_trialing", "is_past_due"):
            st_ = "trialing" if name == "is_trialing" else "past_due"
            return int(len(self.in_force(self.fr["h_" + st_], "account_id", a, t)) > 0)
        if name == "cancel_at_period_end":
            r = self.in_force(self.fr["h_cape"], "account_id", a, t)
            return int(len(r) > 0)
        if name == "account_age_days":
            c = self.acc_created.get(a, INF)
            return (t - c) / DAY if c <= t else np.nan
        # usage
        u = self.usage
        if name in ("usage_avg_daily_7d", "usage_avg_daily_30d"):
            w = 7 if "7d" in name else 30
            return self.window(u, "account_id", a, t, w).quantity.sum() / w
        if name in ("usage_per_seat_7d", "usage_per_seat_30d"):
            w = 7 if "7d" in name else 30
            seats = self.in_force(self.fr["h_paying"], "account_id", a, t).qty.sum()
            used = self.window(u, "account_id", a, t, w).quantity.sum() / w
            return used / seats if seats else np.nan
        if name in ("usage_avg_daily_prior_60d", "usage_drop_pct_30d_vs_prior_60d"):
            prior = self.window(u, "account_id", a, t - 30 * DAY, 60).quantity.sum() / 60
            if name == "usage_avg_daily_prior_60d":
                return prior
            last = self.window(u, "account_id", a, t, 30).quantity.sum() / 30
            return 1 - last / prior if prior else np.nan
        if name == "usage_trend_90d":
            r = self.window(u, "account_id", a, t, 90)
            y = np.zeros(90)
            for ts, q in zip(r.ts, r.quantity, strict=True):
                y[89 - (t - ts) // DAY] += q
            return float(np.polyfit(np.arange(90.0), y, 1)[0])
        if name == "usage_active_days_30d":
            return int((self.window(u, "account_id", a, t, 30).quantity > 0).sum())
        if name == "days_since_last_usage":
            r = self.window(self.fr["u_pos"], "account_id", a, t, None)
            return (t - r.ts.max()) / DAY if len(r) else np.nan
        # support
        tk = self.tickets
        if name.startswith("tickets_") or name.startswith("high_severity_tickets_"):
            w = int(name.rsplit("_", 1)[1][:-1])
            src = tk if name.startswith("tickets_") else self.fr["tk_high"]
            return len(self.window(src, "account_id", a, t, w))
        if name == "open_tickets":
            return len(self.in_force(tk, "account_id", a, t, start="ts"))
        if name == "days_since_last_ticket":
            r = self.window(tk, "account_id", a, t, None)
            return (t - r.ts.max()) / DAY if len(r) else np.nan
        # crm
        c = self.crm
        for col in ("health_score", "nps", "seats_purchased", "seats_used"):
            if name in (col, f"{col}_90d_ago", f"{col}_change_90d"):

                def latest(tt, col=col):
                    r = self.last(
                        self.window(self.fr["c_" + col], "account_id", a, tt, None), "key"
                    )
                    return np.nan if r is None else float(r[col])

                if name == col:
                    return latest(t)
                if name.endswith("_90d_ago"):
                    return latest(t - 90 * DAY)
                return latest(t) - latest(t - 90 * DAY)
        if name == "seat_utilization":
            used, bought = self.account("seats_used", a, t), self.account("seats_purchased", a, t)
            return used / bought if bought else np.nan
        # disputes and refunds
        dp, rf = self.disputes, self.refunds
        if name in ("disputes_90d", "disputes_365d"):
            return len(self.window(dp, "acc", a, t, int(name.split("_")[1][:-1])))
        if name == "dispute_amount_90d":
            return float(self.window(dp, "acc", a, t, 90).amount.sum())
        if name == "disputes_lost_365d":
            return len(self.window(self.fr["dp_lost"], "acc", a, t, 365))
        if name == "refunds_90d":
            return len(self.window(rf, "acc", a, t, 90))
        if name == "refund_amount_90d":
            return float(self.window(rf, "acc", a, t, 90).amount.sum())
        raise KeyError(name)

    def invoice(self, name: str, i: str, t: int):
        inv = self._by_key(self.inv, "invoice_id", i)
        inv = inv[inv.created_us <= t]
        all_pa = self._by_key(self.pa, "invoice_id", i)
        pa_ = all_pa[all_pa.ts <= t]
        failed = pa_[pa_.status == "failed"]
        lastf = self.last(failed, "attempt_id")
        row = None if inv.empty else inv.iloc[0]
        if name == "invoice_amount_due":
            return np.nan if row is None or pd.isna(row.amount_due) else float(row.amount_due)
        if name in ("invoice_currency", "invoice_billing_reason"):
            col = name.split("_", 1)[1]
            return None if row is None or pd.isna(row[col]) else row[col]
        if name == "invoice_days_since_created":
            return np.nan if row is None else (t - row.created_us) / DAY
        if name == "invoice_attempt_number":
            return len(pa_)
        if name == "invoice_failed_attempts":
            return len(failed)
        if name == "invoice_last_decline_code":
            return None if lastf is None or pd.isna(lastf.decl) else lastf.decl
        if name == "invoice_hours_since_first_failure":
            first = all_pa[all_pa.status == "failed"].ts.min()
            return (t - first) / HOUR if not math.isnan(first) and first <= t else np.nan
        if name == "invoice_hours_since_last_failure":
            return np.nan if lastf is None else (t - lastf.ts) / HOUR
        if name == "invoice_hours_to_next_attempt":
            v = self._by_key(self.iv, "invoice_id", i)
            v = self.last(v[v.ts <= t], "row_key")
            return np.nan if v is None or v.nxt == INF else (v.nxt - t) / HOUR
        if name == "invoice_failure_day_of_month":
            return np.nan if lastf is None else lastf.dom
        if name == "invoice_failure_days_to_payday":
            if lastf is None:
                return np.nan
            day = pd.Timestamp(int(lastf.ts), unit="us", tz="UTC")
            paydays = {1, 2, 15, 16, day.days_in_month - 1, day.days_in_month}
            return float(next(k for k in range(40) if (day + pd.Timedelta(days=k)).day in paydays))
        raise KeyError(name)

    def subscription(self, name: str, s: str, t: int):
        h = self.h
        r = self.in_force(h, "subscription_id", s, t)
        if name == "sub_mrr":
            return r[r.paying].monthly.sum()
        if name == "sub_status":
            return None if r.empty else r.status.max()
        if name == "sub_tenure_days":
            first = self._by_key(h, "subscription_id", s)["from"].min()
            return (t - first) / DAY if not math.isnan(first) and first <= t else np.nan
        if name == "sub_interval_months":
            q = r[r.licensed & r.im.notna() & r.monthly.notna()]
            return np.nan if q.empty else q.sort_values(["monthly", "key"]).iloc[-1].im
        if name == "sub_quantity":
            return r[r.licensed].qty.sum()
        if name == "sub_cancel_at_period_end":
            return int(r.cancel_at_period_end.fillna(False).astype(bool).any())
        raise KeyError(name)

    def value(self, f: d.Feature, row) -> object:
        t = int(pd.Timestamp(row.as_of).value // 1000)
        key = getattr(row, f.entity)
        return {
            "account_id": self.account,
            "invoice_id": self.invoice,
            "subscription_id": self.subscription,
        }[f.entity](f.name, key, t)


def _random_spine(con, rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Entities at times chosen to hit edges: on event times (of that entity, mostly), just
    before them, one hour or day after, and exactly a window length later; plus random
    entities (some unknown) at random times."""
    acc = con.execute("SELECT account_id FROM accounts ORDER BY 1").df().account_id.tolist()
    subs = (
        con.execute("SELECT DISTINCT subscription_id FROM subscription_history ORDER BY 1")
        .df()
        .subscription_id.tolist()
    )
    invs = con.execute("SELECT invoice_id FROM invoices ORDER BY 1").df().invoice_id.tolist()
    ev = con.execute(
        """
        SELECT coalesce(pa.account_id, i.account_id) AS a, i.subscription_id AS s,
               pa.invoice_id AS i, pa.created AS t
        FROM payment_attempts pa LEFT JOIN invoices i USING (invoice_id)
        UNION ALL SELECT account_id, subscription_id, NULL, valid_from FROM subscription_history
        UNION ALL SELECT account_id, NULL, NULL, created_at FROM support_tickets
        UNION ALL SELECT account_id, NULL, NULL, CAST(date AS TIMESTAMP) + INTERVAL 1 DAY FROM usage
        UNION ALL SELECT account_id, NULL, NULL, CAST(date AS TIMESTAMP) + INTERVAL 1 DAY
                  FROM crm_signals
        UNION ALL SELECT account_id, NULL, NULL, created FROM disputes WHERE account_id IS NOT NULL
        ORDER BY t, a, s, i
        """
    ).df()
    ev["t"] = pd.to_datetime(ev["t"], utc=True)
    shifts = [
        pd.Timedelta(0),
        pd.Timedelta(microseconds=-1),
        pd.Timedelta(hours=1),
        pd.Timedelta(days=2),
        pd.Timedelta(days=7),
        pd.Timedelta(days=30),
        pd.Timedelta(days=90),
        pd.Timedelta(days=120),
    ]

    def pick(ids):
        ids = [*ids, "missing_id"]
        return ids[int(rng.integers(len(ids)))]

    rows = []
    for _ in range(n):
        a, s, i = pick(acc), pick(subs), pick(invs)
        if rng.random() < 0.8 and len(ev):
            e = ev.iloc[int(rng.integers(len(ev)))]
            t = e.t + shifts[int(rng.integers(len(shifts)))]
            a = e.a if isinstance(e.a, str) else a
            s = e.s if isinstance(e.s, str) and rng.random() < 0.7 else s
            i = e.i if isinstance(e.i, str) and rng.random() < 0.9 else i
        else:
            t = START + pd.Timedelta(seconds=int(rng.integers(0, (END - START).total_seconds())))
        rows.append((a, s, i, t))
    spine = pd.DataFrame(rows, columns=["account_id", "subscription_id", "invoice_id", "as_of"])
    spine["as_of"] = spine["as_of"].astype("datetime64[us, UTC]")
    return spine


def _compare(built: pd.DataFrame, oracle: Oracle, spine: pd.DataFrame) -> list[str]:
    bad = []
    for f in d.FEATURES:
        for i, row in enumerate(spine.itertuples(index=False)):
            want, got = oracle.value(f, row), built[f.name].iloc[i]
            if f.dtype == "string":
                ok = (want is None and got is None) or want == got
            else:
                w, g = float(want), float(got)
                ok = (math.isnan(w) and math.isnan(g)) or math.isclose(
                    w, g, rel_tol=1e-9, abs_tol=1e-6
                )
            if not ok:
                bad.append(
                    f"{f.name} row {i} ({getattr(row, f.entity)} @ {row.as_of}): "
                    f"builder {got!r} oracle {want!r}"
                )
    return bad


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)  # seeds do not shrink usefully
@given(seed=st.integers(0, 100_000), n_accounts=st.integers(2, 9), micro=st.booleans())
def test_builder_matches_bruteforce_oracle(seed: int, n_accounts: int, micro: bool) -> None:
    con = duckdb.connect()
    random_warehouse(
        con,
        n_accounts=n_accounts,
        start=START,
        end=END,
        seed=seed,
        usage_day_prob=0.4,
        crm_day_prob=0.1,
        tickets_per_month=0.8,
        change_every_days=25,
        resolution_us=1 if micro else 1_000_000,
    )
    spine = _random_spine(con, np.random.default_rng(seed), 30)
    built = build_features(con, spine)
    bad = _compare(built, Oracle(con), spine)
    assert not bad, "\n".join(bad[:20])


def test_oracle_covers_every_feature_and_data_is_not_trivial() -> None:
    """Guard against a vacuous comparison: most features take non-default values somewhere."""
    con = duckdb.connect()
    random_warehouse(
        con,
        n_accounts=25,
        start=START,
        end=END,
        seed=7,
        tickets_per_month=0.8,
        change_every_days=25,
        dispute_rate=0.05,
        refund_rate=0.05,
        trial_prob=0.6,
    )
    spine = _random_spine(con, np.random.default_rng(7), 90)
    # plus a day into each of the first subscriptions, to see trials
    starts = con.execute(
        "SELECT account_id, subscription_id, min(valid_from) + INTERVAL 1 DAY AS as_of "
        "FROM subscription_history GROUP BY ALL ORDER BY 2 LIMIT 12"
    ).df()
    starts["invoice_id"] = spine.invoice_id.iloc[: len(starts)].to_numpy()
    spine = pd.concat(
        [spine, starts[spine.columns].astype({"as_of": "datetime64[us, UTC]"})], ignore_index=True
    )
    built = build_features(con, spine)
    assert set(d.REGISTRY) <= set(built.columns)
    constant = [f.name for f in d.FEATURES if built[f.name].dropna().nunique() < 2]
    assert not constant
    bad = _compare(built, Oracle(con), spine)
    assert not bad, "\n".join(bad[:20])


@pytest.mark.parametrize("tz", ["America/New_York", "Asia/Kolkata"])
def test_session_time_zone_does_not_matter(tz: str) -> None:
    con = duckdb.connect()
    random_warehouse(con, n_accounts=6, start=START, end=END, seed=3)
    spine = _random_spine(con, np.random.default_rng(3), 30)
    utc = build_features(con, spine)
    con.execute(f"SET TimeZone = '{tz}'")
    other = build_features(con, spine)
    pd.testing.assert_frame_equal(utc, other)
