"""Synthetic canonical tables for tests and benchmarks, generated in SQL.

:func:`generate_warehouse` fills ``accounts``, ``prices``, ``subscription_history``
and ``fx_rates`` with a seeded, deterministic (for a given DuckDB version) company:
monthly and annual plans in usd/eur/gbp, seats that go up and down, trials, forever
and repeating coupons, past-due episodes of varying length, cancellations at period
end and immediate ones, second subscriptions, and daily FX rates that drift. It is
built with set-based SQL, so 500,000 accounts take seconds.
"""

from __future__ import annotations

from datetime import date

import duckdb

from workbench.schema import create_all

PLANS = (
    # price_id, nickname, product, currency, unit_amount, interval
    ("price_basic_m_usd", "Basic", "prod_basic", "usd", 2_900, "month"),
    ("price_pro_m_usd", "Pro", "prod_pro", "usd", 9_900, "month"),
    ("price_team_m_usd", "Team", "prod_team", "usd", 29_900, "month"),
    ("price_pro_y_usd", "Pro", "prod_pro", "usd", 99_000, "year"),
    ("price_basic_m_eur", "Basic", "prod_basic", "eur", 2_700, "month"),
    ("price_pro_m_eur", "Pro", "prod_pro", "eur", 8_900, "month"),
    ("price_pro_y_eur", "Pro", "prod_pro", "eur", 89_000, "year"),
    ("price_basic_m_gbp", "Basic", "prod_basic", "gbp", 2_500, "month"),
    ("price_team_m_gbp", "Team", "prod_team", "gbp", 24_900, "month"),
    ("price_seats_q_usd", "Seats", "prod_seats", "usd", 3_000, "month"),
)


def generate_warehouse(
    con: duckdb.DuckDBPyConnection,
    *,
    accounts: int,
    months: int = 36,
    start: date = date(2022, 1, 1),
    seed: int = 0,
) -> dict[str, int]:
    """Create the canonical tables (if missing) and fill them with a synthetic company.

    Args:
        accounts: number of accounts (each gets one subscription, 30 % a second one).
        months: length of the history; subscriptions start within it.
        start: first day of the history (UTC).
        seed: changes every random draw.

    Returns:
        Row counts written per table.
    """
    create_all(con)
    s = int(seed)
    start_sql = f"TIMESTAMP '{start.isoformat()} 00:00:00'"
    days = months * 30
    plan_rows = ", ".join(
        f"({i}, '{pid}', '{nick}', '{prod}', '{cur}', {amt}, '{iv}')"
        for i, (pid, nick, prod, cur, amt, iv) in enumerate(PLANS)
    )
    con.execute(f"""
INSERT INTO prices (price_id, product_id, nickname, currency, unit_amount, billing_scheme,
                    usage_type, interval, interval_count, active)
SELECT price_id, product, nickname, currency, unit_amount, 'per_unit', 'licensed', interval,
  CASE WHEN price_id = 'price_seats_q_usd' THEN 3 ELSE 1 END, TRUE
FROM (VALUES {plan_rows}) t(i, price_id, nickname, product, currency, unit_amount, interval)
WHERE price_id NOT IN (SELECT price_id FROM prices)
""")
    con.execute(f"""
INSERT INTO accounts (account_id, currency, country, region, channel, industry, size, created, source)
SELECT 'acct_' || lpad(CAST(i AS VARCHAR), 7, '0'),
  ['usd', 'usd', 'usd', 'eur', 'eur', 'gbp'][1 + CAST(hash({s}, i, 1) % 6 AS INTEGER)],
  ['US', 'CA', 'DE', 'FR', 'GB', 'AU'][1 + CAST(hash({s}, i, 2) % 6 AS INTEGER)],
  ['NA', 'EU', 'APAC'][1 + CAST(hash({s}, i, 3) % 3 AS INTEGER)],
  ['self-serve', 'sales'][1 + CAST(hash({s}, i, 4) % 2 AS INTEGER)],
  ['software', 'retail', 'health', 'finance'][1 + CAST(hash({s}, i, 5) % 4 AS INTEGER)],
  ['small', 'medium', 'large'][1 + CAST(hash({s}, i, 6) % 3 AS INTEGER)],
  {start_sql}, 'synthetic'
FROM range({int(accounts)}) r(i)
""")
    # one row per subscription with all its random draws; then up to 7 versions each
    con.execute(f"""
CREATE OR REPLACE TEMP TABLE _syn_subs AS
WITH subs AS (
  SELECT i, k, 'acct_' || lpad(CAST(i AS VARCHAR), 7, '0') AS account_id,
    'sub_' || lpad(CAST(i AS VARCHAR), 7, '0') || '_' || k AS subscription_id,
    a.currency
  FROM range({int(accounts)}) r(i), range(2) q(k),
       LATERAL (SELECT ['usd', 'usd', 'usd', 'eur', 'eur', 'gbp'][1 + CAST(hash({s}, i, 1) % 6 AS INTEGER)] AS currency) a
  WHERE k = 0 OR hash({s}, i, 7) % 10 < 3
),
draw AS (
  SELECT *, CAST(hash({s}, i, k, 10) % 1000000 AS BIGINT) AS u0,
    CAST(hash({s}, i, k, 11) % 1000000 AS BIGINT) AS u1,
    CAST(hash({s}, i, k, 12) % 1000000 AS BIGINT) AS u2,
    CAST(hash({s}, i, k, 13) % 1000000 AS BIGINT) AS u3,
    CAST(hash({s}, i, k, 14) % 1000000 AS BIGINT) AS u4,
    CAST(hash({s}, i, k, 15) % 1000000 AS BIGINT) AS u5,
    CAST(hash({s}, i, k, 16) % 1000000 AS BIGINT) AS u6
  FROM subs
)
SELECT d.*,
  CASE d.currency
    WHEN 'usd' THEN ['price_basic_m_usd', 'price_pro_m_usd', 'price_team_m_usd', 'price_pro_y_usd', 'price_seats_q_usd'][1 + u0 % 5]
    WHEN 'eur' THEN ['price_basic_m_eur', 'price_pro_m_eur', 'price_pro_y_eur'][1 + u0 % 3]
    ELSE ['price_basic_m_gbp', 'price_team_m_gbp'][1 + u0 % 2] END AS price_id,
  {start_sql} + to_microseconds(CAST(u1 % ({days} * 86400) AS BIGINT) * 1000000) AS t_start,
  u2 % 100 < 25 AS has_trial,
  1 + u3 % 5 AS qty1,
  CASE WHEN u3 % 7 < 3 THEN 1 + u4 % 8 ELSE 1 + u3 % 5 END AS qty2,
  u4 % 100 < 12 AS has_discount,
  CASE WHEN u4 % 3 = 0 THEN 'repeating' ELSE 'forever' END AS discount_duration,
  [10, 20, 25, 50][1 + u5 % 4] AS percent_off,
  u5 % 100 < 8 AS has_past_due,
  5 + u6 % 45 AS past_due_days,
  u6 % 100 < 35 AS cancels,
  u2 % 2 = 0 AS at_period_end,
  20 + u1 % 400 AS days_to_change,
  10 + u0 % 300 AS days_to_past_due,
  30 + u2 % 500 AS days_to_cancel
FROM draw d
""")
    con.execute("""
CREATE OR REPLACE TEMP TABLE _syn_times AS
SELECT *,
  t_start + CASE WHEN has_trial THEN INTERVAL 14 DAY ELSE INTERVAL 0 DAY END AS t_paid,
  t_start + CASE WHEN has_trial THEN INTERVAL 14 DAY ELSE INTERVAL 0 DAY END + to_days(days_to_change) AS t_change,
  t_start + CASE WHEN has_trial THEN INTERVAL 14 DAY ELSE INTERVAL 0 DAY END + to_days(days_to_change + days_to_past_due) AS t_pd,
  t_start + CASE WHEN has_trial THEN INTERVAL 14 DAY ELSE INTERVAL 0 DAY END
    + to_days(days_to_change + days_to_past_due + CASE WHEN has_past_due THEN past_due_days ELSE 0 END) AS t_pd_end,
  t_start + CASE WHEN has_trial THEN INTERVAL 14 DAY ELSE INTERVAL 0 DAY END
    + to_days(days_to_change + days_to_past_due + CASE WHEN has_past_due THEN past_due_days ELSE 0 END + days_to_cancel) AS t_req
FROM _syn_subs
""")
    # versions: (n, status, from, to, qty, cancel flag); zero-length ones are dropped
    con.execute("""
CREATE OR REPLACE TEMP TABLE _syn_versions AS
WITH v AS (
  SELECT t.*, x.n, x.status, x.vf, x.vt, x.qty, x.cape
  FROM _syn_times t,
  LATERAL (VALUES
    (1, 'trialing', t.t_start, t.t_paid, t.qty1, FALSE),
    (2, 'active', t.t_paid, t.t_change, t.qty1, FALSE),
    (3, 'active', t.t_change, t.t_pd, t.qty2, FALSE),
    (4, 'past_due', t.t_pd, t.t_pd_end, t.qty2, FALSE),
    (5, 'active', t.t_pd_end, CASE WHEN t.cancels THEN t.t_req END, t.qty2, FALSE),
    (6, 'active', t.t_req, CASE WHEN t.cancels AND t.at_period_end THEN t.t_req + INTERVAL 12 DAY END, t.qty2, TRUE),
    (7, 'canceled', CASE WHEN t.at_period_end THEN t.t_req + INTERVAL 12 DAY ELSE t.t_req END, NULL, t.qty2, FALSE)
  ) x(n, status, vf, vt, qty, cape)
)
SELECT * FROM v
WHERE (vt IS NULL OR vt > vf)
  AND NOT (n = 6 AND NOT (cancels AND at_period_end))
  AND NOT (n = 7 AND NOT cancels)
""")
    con.execute("""
INSERT INTO subscription_history
SELECT v.subscription_id, v.account_id, v.subscription_id || '_si', v.price_id, v.qty,
  p.unit_amount, p.currency, p.interval, p.interval_count, p.usage_type, v.status,
  CASE WHEN v.has_trial THEN v.t_start END, CASE WHEN v.has_trial THEN v.t_paid END,
  v.cape,
  NULL, CASE WHEN v.n = 7 THEN v.t_req + INTERVAL 12 DAY END,
  CASE WHEN v.n >= 6 THEN v.t_req END,
  CASE WHEN v.n = 7 THEN v.vf END,
  CASE WHEN v.has_discount THEN 'coupon_' || v.percent_off END,
  CASE WHEN v.has_discount THEN CAST(v.percent_off AS DOUBLE) END,
  NULL,
  CASE WHEN v.has_discount THEN v.discount_duration END,
  CASE WHEN v.has_discount AND v.discount_duration = 'repeating' THEN 3 END,
  CASE WHEN v.has_discount THEN v.t_paid END,
  NULL,
  v.vf, v.vt, v.subscription_id || '_v' || v.n
FROM _syn_versions v JOIN prices p ON p.price_id = v.price_id
""")
    con.execute(f"""
INSERT INTO fx_rates (date, currency, rate_to_usd)
SELECT CAST({start_sql} + to_days(CAST(d AS INTEGER)) AS DATE), c.currency,
  CAST(c.base * (1 + 0.06 * sin(d / 97.0 + c.phase)) AS DECIMAL(18, 9))
FROM range(-40, {days + 400}) r(d),
  (VALUES ('eur', 1.08, 0.3), ('gbp', 1.26, 1.1)) c(currency, base, phase)
WHERE NOT EXISTS (SELECT 1 FROM fx_rates f WHERE f.currency = c.currency)
""")
    counts = {
        t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("accounts", "prices", "subscription_history", "fx_rates")
    }
    for t in ("_syn_subs", "_syn_times", "_syn_versions"):
        con.execute(f"DROP TABLE IF EXISTS {t}")
    return counts
