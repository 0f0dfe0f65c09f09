"""Frames for the features notebook: statistics, missingness, freshness, label balance,
leakage checks and a sample of rows. Pure functions over frames, except
:func:`leakage_report`, which queries the warehouse (read only)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import duckdb
import numpy as np
import pandas as pd

from workbench.features.definitions import REGISTRY, Feature
from workbench.features.labels import label_columns
from workbench.features.offline import AS_OF, build_features, known_at, to_utc


def _feature_columns(frame: pd.DataFrame, features: Iterable[str] | None) -> list[Feature]:
    names = list(features) if features is not None else [c for c in frame.columns if c in REGISTRY]
    return [REGISTRY[n] for n in names]


def feature_statistics(
    frame: pd.DataFrame, *, features: Iterable[str] | None = None
) -> pd.DataFrame:
    """Per-feature summary of a feature table.

    Args:
        frame: Output of ``build_features``.
        features: Columns to describe (default: every declared feature present).

    Returns:
        One row per feature: name, domain, dtype, rows, missing, missing_share, n_unique,
        mean, std, min, p50, max (numbers only), top (most frequent string).
    """
    rows = []
    for f in _feature_columns(frame, features):
        s = frame[f.name]
        row = {
            "name": f.name,
            "domain": f.domain,
            "dtype": f.dtype,
            "rows": len(s),
            "missing": int(s.isna().sum()),
            "missing_share": float(s.isna().mean()) if len(s) else np.nan,
            "n_unique": int(s.nunique(dropna=True)),
        }
        if f.dtype == "string":
            vc = s.dropna().value_counts()
            row["top"] = vc.index[0] if len(vc) else None
        else:
            x = pd.to_numeric(s, errors="coerce").astype(float)
            row |= {
                "mean": x.mean(),
                "std": x.std(),
                "min": x.min(),
                "p50": x.median(),
                "max": x.max(),
            }
        rows.append(row)
    cols = [
        "name",
        "domain",
        "dtype",
        "rows",
        "missing",
        "missing_share",
        "n_unique",
        "mean",
        "std",
        "min",
        "p50",
        "max",
        "top",
    ]
    return pd.DataFrame(rows).reindex(columns=cols)


def missingness_by_period(
    frame: pd.DataFrame, *, freq: str = "M", features: Iterable[str] | None = None
) -> pd.DataFrame:
    """Share of missing values per feature and ``as_of`` period (tidy, for a heatmap).

    Returns:
        Columns period (start of the period, UTC), feature, rows, missing_share.
    """
    feats = [f.name for f in _feature_columns(frame, features)]
    period = to_utc(frame[AS_OF]).dt.tz_localize(None).dt.to_period(freq).dt.start_time
    miss = frame[feats].isna()
    miss["period"] = period.to_numpy()
    g = miss.groupby("period")
    shares = (
        g.mean()
        .reset_index()
        .melt(id_vars="period", var_name="feature", value_name="missing_share")
    )
    counts = g.size().rename("rows").reset_index()
    out = shares.merge(counts, on="period")
    out["period"] = out["period"].dt.tz_localize("UTC")
    return (
        out[["period", "feature", "rows", "missing_share"]]
        .sort_values(["feature", "period"])
        .reset_index(drop=True)
    )


def freshness_summary(freshness: pd.DataFrame) -> pd.DataFrame:
    """Summarise an online lookup's freshness rows (``OnlineFeatures.freshness``) per feature.

    Returns:
        Columns feature, ttl_hours, lookups, found_share, stale_share, max_age_hours,
        oldest_event_timestamp.
    """
    g = freshness.groupby("feature", sort=False)
    return pd.DataFrame(
        {
            "ttl_hours": g["ttl_hours"].first(),
            "lookups": g.size(),
            "found_share": g["found"].mean(),
            "stale_share": g["stale"].mean(),
            "max_age_hours": g["age_hours"].max(),
            "oldest_event_timestamp": g["event_timestamp"].min(),
        }
    ).reset_index()


def label_balance(frame: pd.DataFrame, *, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Positives and coverage per label column (``churn_<h>d``, ``recovered_<h>d``).

    Returns:
        Columns label, horizon_days, rows, labelled, unlabelled (window not elapsed or row
        not eligible), positives, positive_rate (of labelled rows).
    """
    rows = []
    for c in labels if labels is not None else label_columns(frame):
        s = frame[c]
        labelled = int(s.notna().sum())
        pos = int((s == 1).sum())
        rows.append(
            {
                "label": c,
                "horizon_days": int(c.rsplit("_", 1)[1][:-1]),
                "rows": len(s),
                "labelled": labelled,
                "unlabelled": len(s) - labelled,
                "positives": pos,
                "positive_rate": pos / labelled if labelled else np.nan,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "label",
            "horizon_days",
            "rows",
            "labelled",
            "unlabelled",
            "positives",
            "positive_rate",
        ],
    )


def _equal(a: pd.Series, b: pd.Series) -> np.ndarray:
    both_na = a.isna().to_numpy() & b.isna().to_numpy()
    if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
        x, y = a.to_numpy(dtype=float, na_value=np.nan), b.to_numpy(dtype=float, na_value=np.nan)
        close = np.isclose(x, y, rtol=1e-9, atol=1e-9)
        return both_na | np.where(np.isnan(x) | np.isnan(y), False, close)
    return both_na | (a.astype(object).to_numpy() == b.astype(object).to_numpy())


def leakage_report(
    con: duckdb.DuckDBPyConnection,
    spine: pd.DataFrame,
    *,
    cutoffs: Sequence | None = None,
    features: Iterable[str] | None = None,
    max_rows: int = 20_000,
) -> pd.DataFrame:
    """Check on the real warehouse that features as of ``t`` only use what was known at ``t``.

    For each cutoff ``c``, the spine rows with ``as_of <= c`` are built twice: on the full
    tables and on the tables as known at ``c`` (:func:`~workbench.features.offline.known_at`:
    later rows dropped, later times and current-state fields blanked). Any difference is
    leakage.

    Args:
        con: Warehouse connection.
        spine: A spine (as for ``build_features``).
        cutoffs: Times to cut at (default: the 25th, 50th and 75th percentile of ``as_of``).
        features: Features to check (default: all for the spine's entities).
        max_rows: Latest rows per cutoff to check (keeps the report quick).

    Returns:
        One row per (cutoff, feature): cutoff, feature, rows_checked, rows_different, passed.
    """
    as_of = to_utc(spine[AS_OF])
    if cutoffs is None:
        cutoffs = sorted(set(as_of.quantile([0.25, 0.5, 0.75], interpolation="lower")))
    out = []
    for c in cutoffs:
        c = to_utc([c]).iloc[0]
        rows = spine[(as_of <= c).to_numpy()]
        rows = rows.iloc[np.argsort(to_utc(rows[AS_OF]).to_numpy(), kind="stable")[-max_rows:]]
        full = build_features(con, rows, features=features)
        known = build_features(con, rows, features=features, relations=known_at(c))
        for name in [col for col in full.columns if col in REGISTRY and col not in rows.columns]:
            diff = int((~_equal(full[name], known[name])).sum())
            out.append(
                {
                    "cutoff": c,
                    "feature": name,
                    "rows_checked": len(rows),
                    "rows_different": diff,
                    "passed": diff == 0,
                }
            )
    return pd.DataFrame(
        out, columns=["cutoff", "feature", "rows_checked", "rows_different", "passed"]
    )


def sample_rows(frame: pd.DataFrame, *, n: int = 10, seed: int = 0) -> pd.DataFrame:
    """A reproducible random sample of rows, in time order."""
    k = min(n, len(frame))
    return frame.sample(n=k, random_state=seed).sort_values(AS_OF)
