"""The feature store: declarations, point-in-time training sets, labels, Feast serving.

Typical use::

    import workbench.features as wf

    spine = wf.churn_spine(con, start="2023-01-01", end="2024-06-01")      # accounts x month
    train = wf.churn_labels(con, wf.build_features(con, spine))            # features + labels
    wf.publish_online(con, as_of=wf.data_horizon(con))                     # Feast online store
    wf.online(["cus_123"], ["mrr", "failed_payments_30d"]).values          # latest values

Feast is imported only by :mod:`workbench.features.serving`, and only when used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import duckdb
import pandas as pd

from workbench.engines import Engine
from workbench.features.definitions import (
    FEATURES,
    REGISTRY,
    SOURCES,
    Feature,
    check_registry_lock,
    get_features,
    registry_frame,
)
from workbench.features.labels import (
    CHURN_HORIZONS,
    RECOVERY_HORIZONS,
    churn_labels,
    label_columns,
    recovery_labels,
)
from workbench.features.offline import (
    build_features,
    churn_spine,
    data_horizon,
    known_at,
    period_grid,
    recovery_spine,
    snapshot_spine,
)
from workbench.features.quality import (
    feature_statistics,
    freshness_summary,
    label_balance,
    leakage_report,
    missingness_by_period,
    sample_rows,
)
from workbench.features.serving import (
    FeatureRepo,
    OnlineFeatures,
    StaleFeatures,
    feature_repo,
    online,
    publish_online,
)


def churn_training_set(
    con: duckdb.DuckDBPyConnection | Engine,
    *,
    start,
    end,
    freq: str = "month",
    features: Iterable[str] | None = None,
    horizons: Sequence[int] = CHURN_HORIZONS,
    observed_until=None,
) -> pd.DataFrame:
    """Accounts paying at each period boundary, their features as of then, churn labels.

    ``con`` is the warehouse's DuckDB connection or an engine (``SparkEngine``: the spine,
    features and labels are computed there, the result comes back as the same frame).

    Returns:
        ``account_id``, ``as_of``, features, ``paying_at_as_of``, ``churn_<h>d`` (Int8).
    """
    spine = churn_spine(con, start=start, end=end, freq=freq)
    frame = build_features(con, spine, features=features)
    return churn_labels(con, frame, horizons=horizons, observed_until=observed_until)


def recovery_training_set(
    con: duckdb.DuckDBPyConnection | Engine,
    *,
    start=None,
    end=None,
    each_attempt: bool = False,
    features: Iterable[str] | None = None,
    horizons: Sequence[int] = RECOVERY_HORIZONS,
    observed_until=None,
) -> pd.DataFrame:
    """Failed invoices at their first failure (or each failed attempt), invoice, account and
    subscription features as of then, recovery labels (``con``: DuckDB or an engine, as for
    :func:`churn_training_set`).

    Returns:
        ``invoice_id``, ``account_id``, ``subscription_id``, ``as_of``, features,
        ``paid_at_effective``, ``recovered_<h>d`` (Int8).
    """
    spine = recovery_spine(con, start=start, end=end, each_attempt=each_attempt)
    frame = build_features(con, spine, features=features)
    return recovery_labels(con, frame, horizons=horizons, observed_until=observed_until)


__all__ = [
    "CHURN_HORIZONS",
    "FEATURES",
    "RECOVERY_HORIZONS",
    "REGISTRY",
    "SOURCES",
    "Feature",
    "FeatureRepo",
    "OnlineFeatures",
    "StaleFeatures",
    "build_features",
    "check_registry_lock",
    "churn_labels",
    "churn_spine",
    "churn_training_set",
    "data_horizon",
    "feature_repo",
    "feature_statistics",
    "freshness_summary",
    "get_features",
    "known_at",
    "label_balance",
    "label_columns",
    "leakage_report",
    "missingness_by_period",
    "online",
    "period_grid",
    "publish_online",
    "recovery_labels",
    "recovery_spine",
    "recovery_training_set",
    "registry_frame",
    "sample_rows",
    "snapshot_spine",
]
