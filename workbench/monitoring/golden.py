"""Golden cohorts: a fixed set of stable accounts, scored every run.

The cohort is chosen once, deterministically (a seeded hash of the account ids among the
accounts that paid the same MRR for the last ``stable_months`` months with no failed
payment), and stored in the warehouse table ``golden_accounts``. Every run scores them with
the current champion into ``golden_scores``; since these accounts did not change, their
scores should not either: a shift against the first scoring points at a silent change in
the model, the features or the data feeding them.
"""

from __future__ import annotations

import hashlib
import logging

import duckdb
import numpy as np
import pandas as pd

from workbench.config import Settings
from workbench.publishing import store_frame

log = logging.getLogger(__name__)

GOLDEN_TABLE = "golden_accounts"
SCORES_TABLE = "golden_scores"
SHIFT_COLUMNS = ["run_id", "scored_at", "model_version", "accounts", "mean_score",
                 "baseline_mean", "mean_shift", "max_shift"]  # fmt: skip


def _has_table(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    from workbench.engines import table_names

    return table.lower() in table_names(con)


def stable_accounts(con: duckdb.DuckDBPyConnection, *, stable_months: int = 6) -> pd.DataFrame:
    """Accounts paying the same MRR in each of the last ``stable_months`` complete months of
    the newest ``mrr_account_months`` run, with no failed payment in that time.

    Returns:
        ``account_id``, ``mrr`` (the steady value, minor units).
    """
    if not _has_table(con, "mrr_account_months"):
        raise ValueError("mrr_account_months is missing: run 02_revenue before choosing a cohort")
    return con.execute(
        """
        WITH run AS (SELECT run_id FROM mrr_account_months ORDER BY month DESC, run_id DESC LIMIT 1),
        am AS (SELECT * FROM mrr_account_months WHERE run_id = (SELECT run_id FROM run)),
        last_months AS (SELECT DISTINCT month FROM am ORDER BY month DESC LIMIT ? OFFSET 1),
        w AS (SELECT account_id, count(*) AS n, min(mrr) AS lo, max(mrr) AS hi
              FROM am WHERE month IN (SELECT month FROM last_months) GROUP BY 1),
        failed AS (SELECT DISTINCT account_id FROM payment_attempts
                   WHERE status = 'failed' AND created >= (SELECT min(month) FROM last_months))
        SELECT account_id, lo AS mrr FROM w
        WHERE n = ? AND lo = hi AND lo > 0 AND account_id NOT IN (SELECT account_id FROM failed)
        ORDER BY account_id
        """,
        [stable_months, stable_months],
    ).df()


def _rank(account_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}|{account_id}".encode()).hexdigest()


def choose_golden(
    con: duckdb.DuckDBPyConnection, *, n: int = 25, seed: int = 0, stable_months: int = 6
) -> pd.DataFrame:
    """Pick ``n`` stable accounts deterministically (same data and seed, same accounts).

    Raises:
        ValueError: No stable account (too little history): lower ``stable_months``.
    """
    pool = stable_accounts(con, stable_months=stable_months)
    if pool.empty:
        raise ValueError(
            f"no account paid a steady MRR for {stable_months} months: lower stable_months"
        )
    pool["rank"] = pool["account_id"].map(lambda a: _rank(a, seed))
    chosen = pool.sort_values("rank").head(n).drop(columns="rank")
    return chosen.sort_values("account_id").reset_index(drop=True)


def ensure_golden(
    settings: Settings,
    *,
    n: int = 25,
    seed: int = 0,
    stable_months: int = 6,
    now: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """The stored cohort; chosen and stored on first use only.

    Returns:
        ``account_id, mrr, chosen_at, seed``.
    """
    from workbench.lakehouse import open_warehouse

    with open_warehouse(settings).read(step="golden") as con:
        if _has_table(con, GOLDEN_TABLE):
            stored = con.execute(f"SELECT * FROM {GOLDEN_TABLE} ORDER BY account_id").df()
            if len(stored):
                return stored
        chosen = choose_golden(con, n=n, seed=seed, stable_months=stable_months)
    chosen = chosen.assign(chosen_at=now or pd.Timestamp.now(tz="UTC"), seed=seed)
    store_frame(chosen, table=GOLDEN_TABLE, settings=settings)
    log.info("golden cohort chosen: %d accounts", len(chosen))
    return chosen


def score_golden(
    settings: Settings,
    golden: pd.DataFrame,
    *,
    model: str,
    as_of,  # noqa: ANN001
    alias: str = "champion",
    run_id: str,
) -> pd.DataFrame:
    """Score the cohort with ``model``'s ``alias`` as of ``as_of`` and store the scores.

    Returns:
        ``run_id, account_id, model_name, model_version, as_of, score, scored_at``.
    """
    from workbench.lakehouse import open_warehouse
    from workbench.models.scoring import score_accounts

    with open_warehouse(settings).read(step="golden-score") as con:
        scores = score_accounts(con, as_of, models=(model,), alias=alias, settings=settings,
                                accounts=golden["account_id"].tolist(), write=False)  # fmt: skip
    out = scores[["entity_id", "model_name", "model_version", "as_of", "score", "scored_at"]]
    out = out.rename(columns={"entity_id": "account_id"}).assign(run_id=run_id)
    out = out[
        ["run_id", "account_id", "model_name", "model_version", "as_of", "score", "scored_at"]
    ]
    store_frame(out, table=SCORES_TABLE, settings=settings, replace_where={"run_id": run_id})
    return out


def golden_history(settings: Settings, *, model: str) -> pd.DataFrame:
    """Every stored golden scoring of ``model``, oldest run first."""
    from workbench.lakehouse import open_warehouse

    with open_warehouse(settings).read(step="golden") as con:
        if not _has_table(con, SCORES_TABLE):
            return pd.DataFrame(columns=["run_id", "account_id", "model_name", "model_version",
                                         "as_of", "score", "scored_at"])  # fmt: skip
        return con.execute(
            f"SELECT * FROM {SCORES_TABLE} WHERE model_name = ? ORDER BY scored_at, account_id",
            [model],
        ).df()


def golden_shift(history: pd.DataFrame) -> pd.DataFrame:
    """Per run: the cohort's mean score, and its mean and largest per-account shift against
    the first run (accounts missing from either run are left out).

    Returns:
        :data:`SHIFT_COLUMNS`, oldest run first (the first run's shifts are 0).
    """
    if history.empty:
        return pd.DataFrame(columns=SHIFT_COLUMNS)
    first_run = history.sort_values("scored_at")["run_id"].iloc[0]
    base = history[history["run_id"] == first_run].set_index("account_id")["score"]
    rows = []
    for run, part in history.groupby("run_id", sort=False):
        s = part.set_index("account_id")["score"]
        common = s.index.intersection(base.index)
        diff = (s[common] - base[common]).abs()
        rows.append({
            "run_id": run, "scored_at": part["scored_at"].max(),
            "model_version": ",".join(sorted(set(part["model_version"].astype(str)))),
            "accounts": len(common), "mean_score": float(s[common].mean()),
            "baseline_mean": float(base[common].mean()),
            "mean_shift": float(abs(s[common].mean() - base[common].mean())) if len(common) else np.nan,
            "max_shift": float(diff.max()) if len(common) else np.nan,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=SHIFT_COLUMNS).sort_values("scored_at").reset_index(drop=True)


def golden_metrics(shift: pd.DataFrame) -> dict[str, float]:
    """``golden_mean_shift`` and ``golden_max_shift`` of the newest run (for alert rules)."""
    if shift.empty:
        return {}
    last = shift.iloc[-1]
    return {
        "golden_mean_shift": float(last["mean_shift"]),
        "golden_max_shift": float(last["max_shift"]),
    }
