"""A random but internally consistent billing warehouse, for feature tests and benchmarks.

:func:`random_warehouse` fills the canonical tables (accounts, prices,
subscription_history, invoices, payment_attempts, refunds, disputes, usage,
crm_signals, support_tickets) of a DuckDB connection with a seeded company. Accounts
carry a latent risk that raises payment failures and cancellations and lowers usage and
health, so the features carry some signal. Everything is cut at ``end``: nothing
happens after it, and times after it (payments, resolutions, closures) are missing,
as in a warehouse loaded up to ``end``.

This is not the project's business simulator; it exists so that the point-in-time
builder can be checked on many random warehouses and timed on a large one.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from workbench.schema import create_all
from workbench.timeutil import utc_time

log = logging.getLogger(__name__)

DAY_US = 86_400_000_000
PRICES = pd.DataFrame(
    [
        ("price_basic_m", "prod_basic", "Basic monthly", 2_900, "month", 1, "licensed"),
        ("price_basic_y", "prod_basic", "Basic yearly", 29_000, "year", 1, "licensed"),
        ("price_pro_m", "prod_pro", "Pro monthly", 9_900, "month", 1, "licensed"),
        ("price_pro_y", "prod_pro", "Pro yearly", 99_000, "year", 1, "licensed"),
        ("price_ent_m", "prod_enterprise", "Enterprise monthly", 49_900, "month", 1, "licensed"),
        ("price_team_w", "prod_team", "Team weekly", 700, "week", 2, "licensed"),
        ("price_free", "prod_free", "Free", 0, "month", 1, "licensed"),
        ("price_api", "prod_api", "API metered", 1, "month", 1, "metered"),
    ],
    columns=[
        "price_id",
        "product_id",
        "nickname",
        "unit_amount",
        "interval",
        "interval_count",
        "usage_type",
    ],
)
_LICENSED = PRICES[PRICES.usage_type == "licensed"].reset_index(drop=True)
_LIC_ROWS = list(_LICENSED.itertuples(index=False))
_METERED_ROW = next(PRICES[PRICES.usage_type == "metered"].itertuples(index=False))
_PLAN_P = np.array([0.22, 0.08, 0.3, 0.1, 0.1, 0.1, 0.1])
_INTERVAL_MONTHS = {"month": 1.0, "year": 12.0, "week": 12.0 / 52, "day": 12.0 / 365}
DECLINES = np.array(
    [
        "insufficient_funds",
        "generic_decline",
        "do_not_honor",
        "expired_card",
        "card_declined",
        "lost_card",
        "fraudulent",
        "try_again_later",
        None,
    ],
    dtype=object,
)
_DECLINE_P = np.array([0.33, 0.13, 0.1, 0.1, 0.08, 0.07, 0.07, 0.07, 0.05])


@dataclass(frozen=True)
class WarehouseSize:
    """Row counts written by :func:`random_warehouse`."""

    accounts: int
    subscription_history: int
    invoices: int
    payment_attempts: int
    refunds: int
    disputes: int
    usage: int
    crm_signals: int
    support_tickets: int

    @property
    def events(self) -> int:
        """All event-like rows (everything but accounts)."""
        return (
            self.subscription_history
            + self.invoices
            + self.payment_attempts
            + self.refunds
            + self.disputes
            + self.usage
            + self.crm_signals
            + self.support_tickets
        )


def _ts(us: np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(np.asarray(us, dtype=np.int64), unit="us", utc=True)).astype(
        "datetime64[us, UTC]"
    )


def _ts_or_null(us: np.ndarray, ok: np.ndarray) -> pd.Series:
    s = _ts(np.where(ok, us, 0))
    return s.where(ok)


def _insert(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    if frame.empty:
        return
    name = f"_wb_syn_{table}"
    con.register(name, frame)
    try:
        cols = ", ".join(frame.columns)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {name}")
    finally:
        con.unregister(name)


def _epoch_us(t) -> int:
    return int(utc_time(t).value // 1000)


def _round(us: np.ndarray, resolution_us: int) -> np.ndarray:
    return (np.asarray(us, dtype=np.int64) // resolution_us) * resolution_us


def _charge_versions(
    attempts: pd.DataFrame, pending_share: float, seed: int, resolution_us: int, t_end: int
) -> pd.DataFrame:
    """Ingestion's charge history for ``attempts``: one version at creation with the
    outcome, or for ``pending_share`` of them (drawn from their own stream, so the rest of
    the warehouse does not move) a ``pending`` version at creation and the outcome 1 to 72
    hours later (not recorded when that is after ``t_end``: still pending then)."""
    base = attempts.drop(columns=["attempt_number"])
    first = base.assign(event_id="evt_" + base["attempt_id"], version_at=base["created"])
    if pending_share <= 0:
        return first
    rng = np.random.default_rng([seed, 71])
    pending = rng.random(len(base)) < pending_share
    lag_us = rng.integers(3_600, 72 * 3_600, size=len(base)) * 1_000_000
    since = base["created"] - pd.Timestamp(0, tz="UTC")
    created_us = (since // pd.Timedelta(microseconds=1)).to_numpy(dtype=np.int64)
    done_us = _round(created_us + lag_us, resolution_us)
    first.loc[pending, ["status", "failure_code", "decline_code"]] = ["pending", None, None]
    known = pending & (done_us <= t_end)
    later = base[known].copy()
    later["event_id"] = "evt_" + later["attempt_id"] + "_outcome"
    later["version_at"] = _ts(done_us[known]).set_axis(later.index)
    still = pending & (done_us > t_end)
    attempts.loc[still, ["status", "failure_code", "decline_code"]] = ["pending", None, None]
    return pd.concat([first, later], ignore_index=True)


def random_warehouse(
    con: duckdb.DuckDBPyConnection,
    *,
    n_accounts: int,
    start,
    end,
    seed: int = 0,
    usage_day_prob: float = 0.5,
    crm_day_prob: float = 1 / 14,
    tickets_per_month: float = 0.3,
    change_every_days: float = 60.0,
    refund_rate: float = 0.02,
    dispute_rate: float = 0.006,
    trial_prob: float = 0.2,
    resolution_us: int = 1_000_000,
    pending_share: float = 0.0,
) -> WarehouseSize:
    """Fill the canonical tables with a random company observed from ``start`` to ``end``.

    Args:
        con: DuckDB connection; missing tables are created.
        n_accounts: Number of customers.
        start: Accounts are created from ``start - 120 days`` onwards.
        end: The data horizon: nothing is recorded after it.
        seed: Random seed (same seed, same warehouse).
        usage_day_prob: Chance that an account records usage on a day it is subscribed.
        crm_day_prob: Chance of a CRM signal row on a day.
        tickets_per_month: Mean support tickets per account-month.
        change_every_days: Mean days between subscription changes.
        refund_rate: Share of succeeded payments refunded later.
        dispute_rate: Base share of succeeded payments disputed later (raised by risk).
        trial_prob: Share of subscriptions starting with a 14-day trial.
        resolution_us: Times are rounded down to this (1 s like Stripe; 1 for µs).
        pending_share: Share of payment attempts first recorded as ``pending`` (bank
            debits), their outcome recorded 1 to 72 hours later (``charge_versions``;
            every other charge has one version, at its creation, with its outcome).

    Returns:
        The row counts written.
    """
    rng = np.random.default_rng(seed)
    create_all(con)
    # ingestion's invoice history, which announces each failed invoice's next attempt
    from workbench.ingest.tables import INTERNAL  # here: the ingest package loads pandera

    con.execute(INTERNAL["invoice_versions"].ddl())
    con.execute(INTERNAL["charge_versions"].ddl())
    t_start, t_end = _epoch_us(start), _epoch_us(end)
    n = n_accounts
    acc_ids = np.array([f"cus_{seed % 1000:03d}{i:07d}" for i in range(n)], dtype=object)
    risk = rng.beta(1.2, 4.0, size=n)
    acc_created = _round(
        t_start - 120 * DAY_US + rng.integers(0, t_end - t_start + 90 * DAY_US, size=n),
        resolution_us,
    )
    acc_created = np.minimum(acc_created, t_end - DAY_US)
    accounts = pd.DataFrame(
        {
            "account_id": acc_ids,
            "currency": rng.choice(["usd", "eur", "gbp"], size=n, p=[0.7, 0.2, 0.1]),
            "region": rng.choice(["NA", "EU", "APAC"], size=n),
            "channel": rng.choice(["self-serve", "sales"], size=n, p=[0.8, 0.2]),
            "created": _ts(acc_created),
            "source": "synthetic",
        }
    )
    prices = PRICES.assign(
        currency="usd",
        billing_scheme="per_unit",
        active=True,
        created=_ts(np.full(len(PRICES), t_start - 400 * DAY_US)),
    )
    exp_month = rng.integers(1, 13, size=n)
    t0_year = pd.Timestamp(t_start, unit="us").year
    exp_year = rng.integers(t0_year - 1, t0_year + 4, size=n)

    # ---------------------------------------------------------------- subscriptions
    hist: dict[str, list] = {
        k: []
        for k in (
            "subscription_id",
            "account_id",
            "item_id",
            "price_id",
            "quantity",
            "unit_amount",
            "currency",
            "interval",
            "interval_count",
            "usage_type",
            "status",
            "cancel_at_period_end",
            "coupon_id",
            "discount_percent_off",
            "discount_start",
            "discount_end",
            "valid_from",
            "valid_to",
            "event_id",
            "ended_at",
            "canceled_at",
            "current_period_end",
        )
    }
    inv_plan: list[
        tuple
    ] = []  # (sub_id, account idx, bill_start, bill_end, unit_amount, qty, interval months)
    ev = 0
    sub_no = 0
    n_subs = 1 + (rng.random(n) < 0.3)
    r = random.Random(seed)  # scalar draws in the loop: much faster than numpy's
    n_plans = len(_LICENSED)
    plan_w = _PLAN_P.tolist()
    res = resolution_us
    for a in range(n):
        risk_a = float(risk[a])
        for k in range(n_subs[a]):
            s_start = (
                int(acc_created[a]) + r.randrange(30 * DAY_US) + k * r.randrange(30, 200) * DAY_US
            )
            s_start -= s_start % res
            if s_start >= t_end:
                continue
            sub_id = f"sub_{seed % 1000:03d}{sub_no:07d}"
            sub_no += 1
            plan = r.choices(range(n_plans), weights=plan_w)[0]
            qty = r.randrange(1, 20) if r.random() < 0.5 else 1
            metered = r.random() < 0.3
            status = "trialing" if r.random() < trial_prob else "active"
            coupon: tuple | None = None
            cape = False
            t = s_start
            versions: list[tuple] = [(t, status, plan, qty, coupon, cape)]
            while True:
                if status == "trialing":
                    t += 14 * DAY_US
                    t -= t % res
                    status = "canceled" if r.random() < 0.25 + 0.5 * risk_a else "active"
                elif status == "past_due":
                    t += r.randrange(2, 25) * DAY_US + r.randrange(DAY_US)
                    t -= t % res
                    u = r.random()
                    status = (
                        "canceled"
                        if u < 0.4 + 0.4 * risk_a
                        else "unpaid"
                        if r.random() < 0.1
                        else "active"
                    )
                else:
                    t += int(r.expovariate(1.0 / change_every_days) * DAY_US) + res
                    t -= t % res
                    u = r.random()
                    if u < 0.04 + 0.12 * risk_a:
                        status = "canceled"
                    elif u < 0.12 + 0.3 * risk_a:
                        status = "past_due"
                    elif u < 0.45:
                        qty = max(1, qty + r.randrange(-3, 5))
                    elif u < 0.6:
                        plan = r.choices(range(n_plans), weights=plan_w)[0]
                    elif u < 0.75:
                        coupon = (
                            None
                            if coupon
                            else (
                                f"co_{r.randrange(5)}",
                                float(r.choice((10, 20, 50))),
                                t,
                                t + r.randrange(30, 200) * DAY_US if r.random() < 0.7 else None,
                            )
                        )
                    else:
                        cape = not cape
                if t > t_end:
                    break
                versions.append((t, status, plan, qty, coupon, cape))
                if status in ("canceled", "unpaid"):
                    break
            for vi, (vt, vstatus, vplan, vqty, vcoupon, vcape) in enumerate(versions):
                vto = versions[vi + 1][0] if vi + 1 < len(versions) else None
                ev += 1
                # billing periods of ~30 days x the plan's months from the start (no draws)
                lic = _LIC_ROWS[vplan]
                period = int(_INTERVAL_MONTHS[lic.interval] * int(lic.interval_count) * 30 * DAY_US)
                cpe = s_start + ((vt - s_start) // period + 1) * period
                items = [("lic", lic, vqty)]
                if metered:
                    items.append(("met", _METERED_ROW, None))
                for tag, price, q in items:
                    hist["subscription_id"].append(sub_id)
                    hist["account_id"].append(acc_ids[a])
                    hist["item_id"].append(f"si_{sub_id[4:]}_{tag}")
                    hist["price_id"].append(price.price_id)
                    hist["quantity"].append(q)
                    hist["unit_amount"].append(int(price.unit_amount))
                    hist["currency"].append("usd")
                    hist["interval"].append(price.interval)
                    hist["interval_count"].append(int(price.interval_count))
                    hist["usage_type"].append(price.usage_type)
                    hist["status"].append(vstatus)
                    hist["cancel_at_period_end"].append(vcape)
                    hist["coupon_id"].append(vcoupon[0] if vcoupon else None)
                    hist["discount_percent_off"].append(vcoupon[1] if vcoupon else None)
                    hist["discount_start"].append(vcoupon[2] if vcoupon else None)
                    hist["discount_end"].append(vcoupon[3] if vcoupon else None)
                    hist["valid_from"].append(vt)
                    hist["valid_to"].append(vto)
                    hist["event_id"].append(f"evt_{seed % 1000:03d}{ev:08d}")
                    hist["ended_at"].append(vt if vstatus in ("canceled", "unpaid") else None)
                    hist["canceled_at"].append(vt if vstatus == "canceled" else None)
                    hist["current_period_end"].append(cpe)
                # invoices are issued while the version is active or past due
                if vstatus in ("active", "past_due"):
                    price = _LIC_ROWS[vplan]
                    inv_plan.append(
                        (
                            sub_id,
                            a,
                            vt,
                            vto if vto is not None else t_end,
                            int(price.unit_amount) * vqty,
                            _INTERVAL_MONTHS[price.interval] * int(price.interval_count),
                        )
                    )
    h = pd.DataFrame(hist)
    for c in (
        "valid_from",
        "valid_to",
        "discount_start",
        "discount_end",
        "ended_at",
        "canceled_at",
        "current_period_end",
    ):
        vals = h[c].to_numpy(dtype=object)
        ok = np.array([v is not None and v == v for v in vals], dtype=bool)
        num = np.array([int(v) if ok[i] else 0 for i, v in enumerate(vals)], dtype=np.int64)
        h[c] = _ts_or_null(num, ok)
    h["quantity"] = h["quantity"].astype("Int64")

    # ---------------------------------------------------------------- invoices
    ip = pd.DataFrame(inv_plan, columns=["sub", "acc", "from_us", "to_us", "amount", "months"])
    period_us = (ip["months"].to_numpy() * 30.4375 * DAY_US).astype(np.int64)
    span = ip["to_us"].to_numpy() - ip["from_us"].to_numpy()
    k = np.maximum(1, np.ceil(span / np.maximum(period_us, 1)).astype(np.int64))
    k = np.minimum(k, 400)
    rep = np.repeat(np.arange(len(ip)), k)
    within = np.arange(len(rep)) - np.repeat(np.cumsum(k) - k, k)
    inv_t = ip["from_us"].to_numpy()[rep] + within * period_us[rep]
    keep = (
        (inv_t < ip["to_us"].to_numpy()[rep])
        & (inv_t <= t_end)
        & (ip["amount"].to_numpy()[rep] > 0)
    )
    rep, inv_t, within = rep[keep], _round(inv_t[keep], resolution_us), within[keep]
    m = len(rep)
    inv_acc = ip["acc"].to_numpy()[rep]
    inv_ids = np.array([f"in_{seed % 1000:03d}{i:08d}" for i in range(m)], dtype=object)
    amount = ip["amount"].to_numpy()[rep].astype(np.int64)

    # ---------------------------------------------------------------- payment attempts
    p_fail = 0.04 + 0.35 * risk[inv_acc]
    fails = np.zeros(m, dtype=np.int64)
    alive = np.ones(m, dtype=bool)
    for _ in range(4):
        f = alive & (rng.random(m) < p_fail + 0.15 * (fails > 0))
        fails += f
        alive = f
    succeeded = fails < 4
    n_att = fails + succeeded
    retry_gap = np.array([0, 3, 5, 7, 9]) * DAY_US
    arep = np.repeat(np.arange(m), n_att)
    anum = np.arange(len(arep)) - np.repeat(np.cumsum(n_att) - n_att, n_att)
    a_t = _round(
        inv_t[arep]
        + rng.integers(60_000_000, 3 * 3_600_000_000, size=len(arep))
        + np.cumsum(retry_gap)[anum],
        resolution_us,
    )
    a_status = np.where(anum < fails[arep], "failed", "succeeded").astype(object)
    # each failure is reported by an invoice version a few seconds later that announces the
    # next attempt (none after the last), as Stripe's invoice.payment_failed does
    has_next = np.append(arep[1:] == arep[:-1], False)
    v_sel = (a_status == "failed") & (a_t + 5_000_000 <= t_end)
    v_rng = np.random.default_rng([seed, 1])  # its own stream: the rest stays as it was
    v_t = _round(a_t + v_rng.integers(1, 6, size=len(a_t)) * 1_000_000, resolution_us)[v_sel]
    v_next = np.append(a_t[1:], 0)[v_sel]
    v_has_next = has_next[v_sel]
    a_keep = a_t <= t_end
    arep_all, anum_all = arep, anum
    arep, anum, a_t, a_status = arep[a_keep], anum[a_keep], a_t[a_keep], a_status[a_keep]
    na = len(arep)
    decl = DECLINES[rng.choice(len(DECLINES), size=na, p=_DECLINE_P)]
    failed_mask = a_status == "failed"
    acc_of_att = inv_acc[arep]
    attempts = pd.DataFrame(
        {
            "attempt_id": np.array(
                [f"ch_{seed % 1000:03d}{i:08d}" for i in range(na)], dtype=object
            ),
            "invoice_id": inv_ids[arep],
            "account_id": np.where(rng.random(na) < 0.95, acc_ids[acc_of_att], None),
            "created": _ts(a_t),
            "amount": amount[arep],
            "currency": "usd",
            "status": a_status,
            "failure_code": np.where(failed_mask, "card_declined", None),
            "decline_code": np.where(failed_mask, decl, None),
            "attempt_number": (anum + 1).astype(np.int32),
            "card_brand": "visa",
            "card_last4": "4242",
            "card_exp_month": exp_month[acc_of_att].astype(np.int32),
            "card_exp_year": exp_year[acc_of_att].astype(np.int32),
        }
    )
    # invoice outcome: paid at the success; after 4 failures voided / written off / left open
    first_ok = pd.Series(a_t[~failed_mask]).groupby(arep[~failed_mask]).min()
    paid_us = np.zeros(m, dtype=np.int64)
    paid_ok = np.zeros(m, dtype=bool)
    paid_us[first_ok.index.to_numpy()] = first_ok.to_numpy()
    paid_ok[first_ok.index.to_numpy()] = True
    oob = (~paid_ok) & (rng.random(m) < 0.1)  # paid out of band, later
    oob_t = inv_t + rng.integers(10, 60, size=m) * DAY_US
    oob &= oob_t <= t_end
    paid_us = np.where(oob, oob_t, paid_us)
    paid_ok |= oob
    gave_up = (~paid_ok) & (fails >= 4)
    close_t = inv_t + rng.integers(25, 45, size=m) * DAY_US
    u = rng.random(m)
    voided = gave_up & (u < 0.3) & (close_t <= t_end)
    uncollectible = gave_up & (u >= 0.3) & (u < 0.6) & (close_t <= t_end)
    status = np.where(
        paid_ok, "paid", np.where(voided, "void", np.where(uncollectible, "uncollectible", "open"))
    ).astype(object)
    versions = pd.DataFrame(
        {
            "event_id": np.array(
                [f"evt_{seed % 1000:03d}{i:08d}" for i in range(len(v_t))], dtype=object
            ),
            "version_at": _ts(v_t),
            "invoice_id": inv_ids[arep_all[v_sel]],
            "account_id": acc_ids[inv_acc][arep_all[v_sel]],
            "currency": accounts["currency"].to_numpy()[inv_acc][arep_all[v_sel]],
            "status": "open",
            "attempt_count": (anum_all[v_sel] + 1).astype(np.int32),
            "next_payment_attempt": _ts_or_null(v_next, v_has_next),
        }
    )
    invoices = pd.DataFrame(
        {
            "invoice_id": inv_ids,
            "account_id": acc_ids[inv_acc],
            "subscription_id": ip["sub"].to_numpy()[rep],
            "status": status,
            "billing_reason": np.where(within == 0, "subscription_create", "subscription_cycle"),
            "currency": accounts["currency"].to_numpy()[inv_acc],
            "created": _ts(inv_t),
            "total": amount,
            "amount_due": amount,
            "amount_paid": np.where(paid_ok, amount, 0),
            "amount_remaining": np.where(paid_ok, 0, amount),
            "attempt_count": n_att.astype(np.int32),
            "finalized_at": _ts(inv_t),
            "paid_at": _ts_or_null(paid_us, paid_ok & (rng.random(m) < 0.9)),
            "voided_at": _ts_or_null(close_t, voided),
            "marked_uncollectible_at": _ts_or_null(close_t, uncollectible),
        }
    )
    # an out-of-band payment has paid_at but no attempt; keep paid_at for those
    invoices.loc[oob, "paid_at"] = _ts(paid_us[oob]).to_numpy()

    # ---------------------------------------------------------------- refunds, disputes
    ok_idx = np.flatnonzero(~failed_mask)
    r_idx = ok_idx[rng.random(len(ok_idx)) < refund_rate]
    r_t = _round(a_t[r_idx] + rng.integers(1, 20, size=len(r_idx)) * DAY_US, resolution_us)
    rk = r_t <= t_end
    r_idx, r_t = r_idx[rk], r_t[rk]
    refunds = pd.DataFrame(
        {
            "refund_id": np.array(
                [f"re_{seed % 1000:03d}{i:08d}" for i in range(len(r_idx))], dtype=object
            ),
            "charge_id": attempts["attempt_id"].to_numpy()[r_idx],
            "invoice_id": attempts["invoice_id"].to_numpy()[r_idx],
            "account_id": np.where(rng.random(len(r_idx)) < 0.5, acc_ids[acc_of_att[r_idx]], None),
            "amount": (amount[arep[r_idx]] * rng.uniform(0.1, 1.0, size=len(r_idx))).astype(
                np.int64
            ),
            "currency": "usd",
            "created": _ts(r_t),
            "status": "succeeded",
        }
    )
    d_idx = ok_idx[rng.random(len(ok_idx)) < dispute_rate * (1 + 3 * risk[acc_of_att[ok_idx]])]
    d_t = _round(a_t[d_idx] + rng.integers(5, 60, size=len(d_idx)) * DAY_US, resolution_us)
    dk = d_t <= t_end
    d_idx, d_t = d_idx[dk], d_t[dk]
    closed = _round(d_t + rng.integers(10, 75, size=len(d_idx)) * DAY_US, resolution_us)
    is_closed = closed <= t_end
    disputes = pd.DataFrame(
        {
            "dispute_id": np.array(
                [f"dp_{seed % 1000:03d}{i:08d}" for i in range(len(d_idx))], dtype=object
            ),
            "charge_id": attempts["attempt_id"].to_numpy()[d_idx],
            "account_id": np.where(rng.random(len(d_idx)) < 0.5, acc_ids[acc_of_att[d_idx]], None),
            "amount": amount[arep[d_idx]],
            "currency": "usd",
            "reason": "fraudulent",
            "status": np.where(
                is_closed, np.where(rng.random(len(d_idx)) < 0.5, "won", "lost"), "needs_response"
            ).astype(object),
            "created": _ts(d_t),
            "closed_at": _ts_or_null(closed, is_closed),
        }
    )

    # ---------------------------------------------------------------- daily usage and CRM
    sub_span = h.groupby("account_id").agg(first=("valid_from", "min"))
    first_day = np.full(n, t_end, dtype=np.int64)
    idx = pd.Index(acc_ids).get_indexer(sub_span.index)
    first_day[idx] = pd.DatetimeIndex(sub_span["first"]).as_unit("us").asi8
    day0 = first_day // DAY_US
    last_day = t_end // DAY_US - 1  # the day must be over by t_end
    days_alive = np.maximum(0, last_day - day0 + 1)

    def daily(prob: float) -> tuple[np.ndarray, np.ndarray]:
        cnt = rng.binomial(days_alive, min(prob, 1.0))
        acc = np.repeat(np.arange(n), cnt)
        off = (rng.random(len(acc)) * np.repeat(days_alive, cnt)).astype(np.int64)
        day = day0[acc] + off
        key = np.unique(acc.astype(np.int64) * 10_000_000 + (day - day0.min()))
        acc = key // 10_000_000
        return acc, key % 10_000_000 + day0.min()

    u_acc, u_day = daily(usage_day_prob)
    metric = rng.random(len(u_acc)) < 0.8
    decline = 1.0 - 0.8 * risk[u_acc] * (u_day - day0[u_acc]) / np.maximum(days_alive[u_acc], 1)
    usage = pd.DataFrame(
        {
            "account_id": acc_ids[u_acc],
            "date": pd.to_datetime(u_day, unit="D").date,
            "metric": np.where(metric, "api_calls", "active_seats"),
            "quantity": np.round(rng.lognormal(3.0, 1.0, size=len(u_acc)) * decline, 3),
            "source": "synthetic",
        }
    )
    c_acc, c_day = daily(crm_day_prob)
    nc = len(c_acc)
    seats = rng.integers(1, 50, size=nc)
    crm = pd.DataFrame(
        {
            "account_id": acc_ids[c_acc],
            "date": pd.to_datetime(c_day, unit="D").date,
            "health_score": np.where(
                rng.random(nc) < 0.9,
                np.round(100 * (1 - risk[c_acc]) * rng.uniform(0.6, 1.0, nc), 1),
                np.nan,
            ),
            "nps": pd.array(
                np.where(rng.random(nc) < 0.4, rng.integers(-100, 101, size=nc), -999),
                dtype="Int64",
            ),
            "seats_purchased": seats.astype(np.int64),
            "seats_used": (seats * rng.uniform(0.2, 1.1, size=nc)).astype(np.int64),
            "source": "synthetic",
        }
    )
    crm.loc[crm["nps"] == -999, "nps"] = pd.NA

    # ---------------------------------------------------------------- support tickets
    months_alive = days_alive / 30.4375
    tcnt = rng.poisson(tickets_per_month * months_alive * (0.5 + 2 * risk))
    t_acc = np.repeat(np.arange(n), tcnt)
    t_t = _round(
        first_day[t_acc] + (rng.random(len(t_acc)) * (t_end - first_day[t_acc])).astype(np.int64),
        resolution_us,
    )
    res_t = _round(
        t_t + (rng.exponential(3.0, size=len(t_acc)) * DAY_US).astype(np.int64), resolution_us
    )
    resolved = (res_t <= t_end) & (rng.random(len(t_acc)) < 0.9)
    tickets = pd.DataFrame(
        {
            "ticket_id": np.array(
                [f"tk_{seed % 1000:03d}{i:08d}" for i in range(len(t_acc))], dtype=object
            ),
            "account_id": acc_ids[t_acc],
            "created_at": _ts(t_t),
            "severity": rng.choice(
                ["low", "medium", "high", "urgent"], size=len(t_acc), p=[0.4, 0.35, 0.18, 0.07]
            ),
            "status": np.where(resolved, "resolved", "open"),
            "resolved_at": _ts_or_null(res_t, resolved),
            "source": "synthetic",
        }
    )

    charge_versions = _charge_versions(attempts, pending_share, seed, resolution_us, t_end)
    for table, frame in (
        ("charge_versions", charge_versions),
        ("accounts", accounts),
        ("prices", prices),
        ("subscription_history", h),
        ("invoices", invoices),
        ("payment_attempts", attempts),
        ("invoice_versions", versions),
        ("refunds", refunds),
        ("disputes", disputes),
        ("usage", usage),
        ("crm_signals", crm),
        ("support_tickets", tickets),
    ):
        _insert(con, table, frame)
    size = WarehouseSize(
        len(accounts),
        len(h),
        len(invoices),
        len(attempts),
        len(refunds),
        len(disputes),
        len(usage),
        len(crm),
        len(tickets),
    )
    log.info("random warehouse: %s", size)
    return size
