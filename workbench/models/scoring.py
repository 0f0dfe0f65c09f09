"""Scoring: champion (or any) model versions applied to accounts or failed invoices as of a time.

Every score is stored with the model's name and version, the feature-set version, the
MLflow run id and its top three reasons in plain words, in the warehouse table
``scores`` (declared here, created on first write), so each decision made from a
score can be traced back to the exact model and inputs. Re-scoring the same entity, time
and model version replaces the row (idempotent).

Reasons: churn scores list what raises the risk most; recovery scores list the
strongest drivers either way, marked "(raises)" or "(lowers)"; uplift scores list what
makes the offer work best for that account.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from workbench.config import Settings
from workbench.features import offline
from workbench.models import explain, training
from workbench.schema import Column, Table

log = logging.getLogger(__name__)

SCORES = Table(
    "scores",
    "Model scores, each with the model, version, feature set, run and reasons that produced it.",
    (
        Column("entity_type", "VARCHAR", False, "account | invoice"),
        Column("entity_id", "VARCHAR", False, "account_id or invoice_id"),
        Column("account_id", "VARCHAR", True, "the account the entity belongs to"),
        Column("as_of", "TIMESTAMPTZ", False, "features computed as of this time"),
        Column("model_name", "VARCHAR", False, "registered model, e.g. churn_90d"),
        Column("model_version", "VARCHAR", False, "registered version"),
        Column(
            "model_alias", "VARCHAR", True, "alias used to pick the version (champion, challenger)"
        ),
        Column("feature_set_version", "VARCHAR", False, "fs-… of the model's features"),
        Column("score", "DOUBLE", False, "calibrated probability, or predicted uplift"),
        Column("reason_1", "VARCHAR", True, "strongest reason, plain words"),
        Column("reason_2", "VARCHAR", True),
        Column("reason_3", "VARCHAR", True),
        Column("reason_features", "VARCHAR", True, "features behind the reasons, ';'-separated"),
        Column("run_id", "VARCHAR", True, "MLflow run that trained the model"),
        Column("scored_at", "TIMESTAMPTZ", False, "when the score was computed"),
    ),
    primary_key=("entity_type", "entity_id", "as_of", "model_name", "model_version"),
)
SCORE_COLUMNS: list[str] = SCORES.column_names
DIRECTIONS = {"churn": "up", "recovery": "abs", "uplift": "up"}


def ensure_scores_table(con: duckdb.DuckDBPyConnection) -> None:
    """Create ``scores`` if it does not exist."""
    con.execute(SCORES.ddl())


def write_scores(con: duckdb.DuckDBPyConnection, scores: pd.DataFrame) -> int:
    """Insert or replace score rows (same key: same entity, time, model and version).

    Args:
        con: A writable warehouse connection (hold the writer lock:
            ``Warehouse(settings).write(step="score")``).
        scores: Columns :data:`SCORE_COLUMNS`.

    Returns:
        Rows written.
    """
    if scores.empty:
        return 0
    ensure_scores_table(con)
    name = f"_wb_scores_{uuid.uuid4().hex[:12]}"
    con.register(name, pa.Table.from_pandas(scores[SCORE_COLUMNS], preserve_index=False))
    try:
        cols = ", ".join(SCORE_COLUMNS)
        con.execute(f"INSERT OR REPLACE INTO scores ({cols}) SELECT {cols} FROM {name}")
    finally:
        con.unregister(name)
    return len(scores)


def _task(model) -> str:  # noqa: ANN001
    from workbench.models.uplift import UpliftModel

    if isinstance(model, UpliftModel):
        return "uplift"
    return "recovery" if model.target.startswith("recovered_") else "churn"


def score_frame(
    model,  # noqa: ANN001 - BinaryModel | UpliftModel
    frame: pd.DataFrame,
    *,
    info: dict,
    entity_type: str,
    entity_col: str,
    alias: str | None = None,
    k: int = 3,
    scored_at: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Score rows that already carry the model's features, with reasons.

    Args:
        model: A loaded model.
        frame: ``as_of``, the entity column, ``account_id`` and the model's features.
        info: ``name``, ``version``, ``run_id``, ``feature_set_version`` (from
            :func:`workbench.models.registry.load_model`).
        entity_type: ``account`` or ``invoice``.

    Returns:
        Columns :data:`SCORE_COLUMNS`, one row per input row.

    Raises:
        workbench.models.training.FeatureSetChanged: A feature of the model is no longer
            defined as it was in training.
    """
    training.check_feature_set(model, name=f"{info['name']} v{info['version']}")
    task = _task(model)
    if len(frame) == 0:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    if task == "uplift":
        frame = model.with_inputs(frame)
    score = model.predict(frame)
    contrib = (
        model.contributions(frame) if task == "uplift" else explain.contributions(model, frame)
    )
    reasons = explain.top_reasons(
        frame,
        contrib,
        k=3,
        direction=DIRECTIONS[task],
        descriptions=training.feature_descriptions(model.features),
    )
    now = scored_at or pd.Timestamp.now(tz="UTC")
    out = pd.DataFrame(
        {
            "entity_type": entity_type,
            "entity_id": frame[entity_col].astype(str).to_numpy(),
            "account_id": frame["account_id"].astype(object).to_numpy()
            if "account_id" in frame
            else None,
            "as_of": offline.to_utc(frame["as_of"]).to_numpy(),
            "model_name": info["name"],
            "model_version": str(info["version"]),
            "model_alias": alias,
            "feature_set_version": model.feature_set_version,
            "score": np.asarray(score, dtype=np.float64),
            "reason_1": reasons["reason_1"].to_numpy(),
            "reason_2": reasons["reason_2"].to_numpy() if k >= 2 else None,
            "reason_3": reasons["reason_3"].to_numpy() if k >= 3 else None,
            "reason_features": reasons["reason_features"].to_numpy(),
            "run_id": info.get("run_id"),
            "scored_at": now,
        }
    )
    out["as_of"] = offline.to_utc(out["as_of"])
    out["scored_at"] = offline.to_utc(out["scored_at"])
    return out[SCORE_COLUMNS]


def _account_frame(
    con: duckdb.DuckDBPyConnection, as_of, accounts: Sequence[str] | None
) -> pd.DataFrame:
    spine = offline.snapshot_spine(con, entity="account_id", as_of=as_of)
    if accounts is not None:
        spine = spine[spine["account_id"].isin(set(accounts))].reset_index(drop=True)
    return training._decorate(con, offline.build_features(con, spine))


def _invoice_frame(
    con: duckdb.DuckDBPyConnection, as_of, invoices: Sequence[str] | None
) -> pd.DataFrame:
    spine = offline.snapshot_spine(con, entity="invoice_id", as_of=as_of)
    if invoices is not None:
        spine = spine[spine["invoice_id"].isin(set(invoices))].reset_index(drop=True)
    ids = con.execute("SELECT invoice_id, account_id, subscription_id FROM invoices").df()
    spine = spine.merge(ids, on="invoice_id", how="left")[
        ["invoice_id", "account_id", "subscription_id", "as_of"]
    ]
    return training._decorate(con, offline.build_features(con, spine))


def _score(
    con: duckdb.DuckDBPyConnection,
    frame: pd.DataFrame,
    *,
    models: Sequence[str],
    alias: str,
    entity_type: str,
    entity_col: str,
    settings: Settings | None,
    write: bool,
) -> pd.DataFrame:
    from workbench.models import registry

    parts = []
    now = pd.Timestamp.now(tz="UTC")
    for name in models:
        model, info = registry.load_model(name, alias, settings=settings)
        rows = frame
        if entity_type == "account" and _task(model) == "churn":
            rows = frame[frame["mrr"] > 0]  # churn models are trained on paying accounts only
        parts.append(
            score_frame(
                model,
                rows,
                info=info,
                entity_type=entity_type,
                entity_col=entity_col,
                alias=alias,
                scored_at=now,
            )
        )
        log.info("scored %d %ss with %s v%s", len(rows), entity_type, name, info["version"])
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=SCORE_COLUMNS)
    if write:
        write_scores(con, out)
    return out


def score_accounts(
    con: duckdb.DuckDBPyConnection,
    as_of,
    *,
    models: Sequence[str] = ("churn_30d", "churn_90d", "churn_180d"),
    alias: str = "champion",
    settings: Settings | None = None,
    accounts: Sequence[str] | None = None,
    write: bool = True,
) -> pd.DataFrame:
    """Score accounts as of a time with registered models and store the scores.

    Churn models score the accounts paying at ``as_of`` (MRR > 0); ``retention_uplift``
    scores every account given (normally those eligible for an offer).

    Args:
        con: Warehouse connection; writable when ``write`` (hold the writer lock).
        as_of: The time the features are computed at.
        models: Registered model names.
        alias: ``champion`` (default) or ``challenger``, or a version number.
        accounts: Restrict to these account ids.
        write: Store the rows in ``scores``.

    Returns:
        Columns :data:`SCORE_COLUMNS`.

    Raises:
        workbench.models.registry.RegistryError: A model has no such alias or version.
    """
    frame = _account_frame(con, as_of, accounts)
    return _score(
        con,
        frame,
        models=models,
        alias=alias,
        entity_type="account",
        entity_col="account_id",
        settings=settings,
        write=write,
    )


def score_invoices(
    con: duckdb.DuckDBPyConnection,
    as_of,
    *,
    models: Sequence[str] = ("recovery_14d",),
    alias: str = "champion",
    settings: Settings | None = None,
    invoices: Sequence[str] | None = None,
    write: bool = True,
) -> pd.DataFrame:
    """Score the invoices in dunning at ``as_of`` (failed, not yet paid, voided or written off).

    Same arguments and result as :func:`score_accounts`; ``entity_type`` is ``invoice``.
    """
    frame = _invoice_frame(con, as_of, invoices)
    return _score(
        con,
        frame,
        models=models,
        alias=alias,
        entity_type="invoice",
        entity_col="invoice_id",
        settings=settings,
        write=write,
    )


def read_scores(
    con: duckdb.DuckDBPyConnection,
    *,
    model_name: str | None = None,
    entity_id: str | None = None,
    as_of=None,
) -> pd.DataFrame:
    """Stored scores, newest first, optionally filtered (empty when none were written yet)."""
    from workbench.engines import table_names

    if "scores" not in table_names(con):
        return pd.DataFrame(columns=SCORE_COLUMNS)
    where, params = [], []
    if model_name is not None:
        where.append("model_name = ?")
        params.append(model_name)
    if entity_id is not None:
        where.append("entity_id = ?")
        params.append(entity_id)
    if as_of is not None:
        where.append("as_of = ?")
        params.append(offline.to_utc([as_of]).iloc[0].to_pydatetime())
    sql = "SELECT * FROM scores" + (" WHERE " + " AND ".join(where) if where else "")
    return con.execute(sql + " ORDER BY scored_at DESC, entity_id", params).df()
