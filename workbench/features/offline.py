"""Point-in-time feature tables, computed as set-based SQL on the warehouse engine.

:func:`build_features` compiles the declarations in :mod:`workbench.features.definitions`
into one DuckDB query over a *spine* (entity ids and an ``as_of`` time per row):

* windowed aggregations (count, sum, avg, mean per day, daily slope) are range joins of
  the spine to the source on ``key = key AND t - window < ts <= t``, one join per
  (source, entity, offset) with conditional aggregates for every feature in it;
* ``latest`` / ``since_latest`` / ``until_latest`` are one ``ASOF LEFT JOIN`` per
  (source, entity, offset) on ``ts <= t``, after a window function carries each
  feature's last matching row forward (ties broken by the source's ``row_key``);
* ``since_earliest`` joins the first matching time per key and keeps it when ``<= t``;
* state aggregations are interval joins on ``ts <= t < valid_to`` (``state_argmax`` with a
  ``unit`` gives the time from ``t`` until the winning row's value, a time);
* derived features combine the finished columns.

Each source view is computed once per query, restricted to the spine's keys. Nothing is
evaluated row by row in Python. All times are handled as epoch microseconds (UTC), so the
session time zone and daylight saving never matter. The SQL is DuckDB's dialect (ASOF
JOIN, QUALIFY, FILTER, structs) and stays the one definition: every function here takes a
DuckDB connection or a :class:`~workbench.engines.Engine`, and on a
:class:`~workbench.engines.SparkEngine` the same SQL runs transpiled (see
:mod:`workbench.engines` for the rewrites).

Spines: :func:`churn_spine` (accounts paying at each period boundary),
:func:`recovery_spine` (failed invoices at their first failure, or at every failed
attempt) and :func:`snapshot_spine` (every entity at one time, for serving).
:func:`known_at` gives table relations truncated to what was known at a time: the
reference for the leakage checks.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from workbench.engines import Engine, as_engine
from workbench.features.definitions import (
    DERIVED_OPS,
    PAYING_FILTER,
    POINT,
    REGISTRY,
    SOURCES,
    UNITS_US,
    WINDOWED,
    Feature,
    Source,
    get_features,
)

log = logging.getLogger(__name__)

DAY_US = UNITS_US["days"]
AS_OF = "as_of"
FREQS = {"month": "MS", "week": "W-MON", "day": "D"}


# --------------------------------------------------------------------------- time helpers


def to_utc(values: Iterable | pd.Series | pd.Timestamp | datetime | str) -> pd.Series:
    """Parse times as UTC microseconds (``datetime64[us, UTC]``); naive times are taken as UTC."""
    if isinstance(values, str | datetime | np.datetime64):
        values = [values]
    s = pd.Series(pd.to_datetime(values, utc=True))
    return s.astype("datetime64[us, UTC]")


def to_us(values: pd.Series) -> np.ndarray:
    """Epoch microseconds (int64) of UTC times."""
    return pd.DatetimeIndex(to_utc(values)).asi8.astype(np.int64, copy=False)


@contextlib.contextmanager
def registered_rows(
    con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, **extra_us: np.ndarray
) -> Iterator[str]:
    """``frame``'s (``account_id``, ``as_of``) rows registered on ``con`` for a join: a table
    with ``_row`` (the row's position), ``account_id``, ``t_us`` (``as_of`` in epoch
    microseconds) and each of ``extra_us`` (int64 per row, e.g. a window's end); yields its
    name and unregisters it after."""
    name = f"_wb_rows_{uuid.uuid4().hex[:12]}"
    columns = {
        "_row": pa.array(np.arange(len(frame), dtype=np.int64)),
        "account_id": pa.array(frame["account_id"].astype(str).to_numpy(), type=pa.string()),
        "t_us": pa.array(to_us(frame["as_of"])),
        **{k: pa.array(np.asarray(v, dtype=np.int64)) for k, v in extra_us.items()},
    }
    con.register(name, pa.table(columns))
    try:
        yield name
    finally:
        con.unregister(name)


def ts_literal(t: pd.Timestamp | datetime | str) -> str:
    """A DuckDB ``TIMESTAMPTZ`` literal for ``t`` (UTC, microseconds)."""
    ts = to_utc([t]).iloc[0]
    return f"TIMESTAMPTZ '{ts.strftime('%Y-%m-%d %H:%M:%S.%f')}+00'"


# --------------------------------------------------------------------------- compiler


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _closure(features: Sequence[Feature]) -> list[Feature]:
    """The features plus the inputs of derived ones, inputs first, without duplicates."""
    out: dict[str, Feature] = {}
    for f in features:
        for name in f.inputs:
            out.setdefault(name, REGISTRY[name])
    for f in features:
        out.setdefault(f.name, f)
    return list(out.values())


def _cond(*parts: str | None) -> str:
    parts = tuple(p for p in parts if p)
    return " AND ".join(f"({p})" for p in parts) if parts else "TRUE"


def _filtered(agg: str, cond: str) -> str:
    return agg if cond == "TRUE" else f"{agg} FILTER (WHERE {cond})"


def compile_features_sql(
    features: Sequence[Feature],
    *,
    spine: str,
    entities: Iterable[str],
    relations: Mapping[str, str] | None = None,
    pushdown: bool = True,
) -> tuple[str, list[str]]:
    """Compile declarations into one SQL query over a registered spine.

    Args:
        features: Declarations to compute (derived ones pull in their inputs).
        spine: Name of a relation with ``_s_row`` (BIGINT, unique), ``as_of_us`` (BIGINT epoch
            µs) and one VARCHAR column per entity in ``entities``.
        entities: Entity columns present in the spine.
        relations: Canonical table name -> relation to read instead (e.g. :func:`known_at`).
        pushdown: Read only the rows of each table that can reach the spine's keys (see
            ``Source.pushdown``); off, every table is read whole (same values, slower).

    Returns:
        The SQL (one row per ``_s_row``, ordered by it, one column per requested feature)
        and the output column names.
    """
    entities = set(entities)
    wanted = [f for f in features if f.entity in entities]
    missing = {f.entity for f in features} - entities
    if missing:
        raise ValueError(f"the spine has no column for entity {sorted(missing)}")
    allf = _closure(wanted)
    base = [f for f in allf if f.aggregation != "derived"]

    projections: dict[tuple[str, int], str] = {}
    source_ctes: dict[str, str] = {}

    source_keys: dict[str, set[str]] = defaultdict(set)

    def source_cte(name: str, entity: str) -> str:
        """Each source is computed once per query (a materialized CTE), restricted to the
        spine's keys (every use joins on them), and shared."""
        source_keys[name].add(entity)
        if name not in source_ctes:
            source_ctes[name] = f"_src{len(source_ctes)}"
        return source_ctes[name]

    def proj(entity: str, offset_days: int) -> str:
        key = (entity, offset_days)
        if key not in projections:
            projections[key] = f"_q{len(projections)}"
        return projections[key]

    groups: dict[tuple, list[Feature]] = defaultdict(list)
    for f in base:
        if f.aggregation in WINDOWED:
            gk = ("win", f.source, f.entity, f.offset_days)
        elif f.aggregation == "since_earliest":
            gk = ("pt", f.source, f.entity, f.offset_days, f.filter or "", True)
        elif f.aggregation in POINT:
            gk = ("pt", f.source, f.entity, f.offset_days, "", False)
        else:
            gk = ("st", f.source, f.entity, f.offset_days)
        groups[gk].append(f)

    ctes: list[str] = []
    raw: dict[str, str] = {}  # feature name -> column in _base
    for gi, (gk, feats) in enumerate(groups.items()):
        kind, source_name, entity, offset = gk[0], gk[1], gk[2], gk[3]
        src = source_cte(source_name, entity)
        q = proj(entity, offset)
        g = f"_g{gi}"
        cols: list[str] = []
        if kind == "win":
            windows = [f.window_days for f in feats]
            lower = None if any(w is None for w in windows) else max(windows)
            on = f"e.{_q(entity)} = s._s_key AND e.ts_us <= s._s_t"
            if lower is not None:
                on += f" AND e.ts_us > s._s_t - {lower * DAY_US}"
            for f in feats:
                wcond = (
                    f"e.ts_us > s._s_t - {f.window_days * DAY_US}"
                    if f.window_days is not None and f.window_days != lower
                    else None
                )
                c = _cond(wcond, f.filter)
                col = f"{g}_{len(cols)}"
                if f.aggregation == "count":
                    cols.append(f"{_filtered('count(*)', c)} AS {col}")
                elif f.aggregation == "sum":
                    cols.append(f"{_filtered(f'sum({f.value})', c)} AS {col}")
                elif f.aggregation == "avg":
                    # summed exactly (a DECIMAL sum is integer arithmetic): a sum of doubles
                    # depends on the order DuckDB's threads add the rows in, so the same
                    # warehouse gave different values in their last bits from run to run
                    avg = f"avg(CAST({f.value} AS DECIMAL(38, 10)))"
                    cols.append(f"{_filtered(avg, c)} AS {col}")
                elif f.aggregation == "mean_per_day":
                    cols.append(
                        f"{_filtered(f'sum({f.value})', c)} / {float(f.window_days)} AS {col}"
                    )
                elif f.aggregation == "daily_slope":
                    w = f.window_days
                    sy = _filtered(f"sum({f.value})", c)
                    say = _filtered(f"sum((e.ts_us // {DAY_US}) * ({f.value}))", c)
                    sx, sxx = w * (w - 1) / 2, (w - 1) * w * (2 * w - 1) / 6
                    sxy = (
                        f"(({w - 1} - s._s_t // {DAY_US}) * coalesce({sy}, 0) + coalesce({say}, 0))"
                    )
                    cols.append(
                        f"({w} * {sxy} - {sx} * coalesce({sy}, 0)) / {w * sxx - sx * sx} AS {col}"
                    )
                raw[f.name] = col
            ctes.append(
                f"{g} AS (SELECT s._s_row, {', '.join(cols)}\n"
                f"  FROM {q} s JOIN {src} e ON {on}\n  GROUP BY s._s_row, s._s_t)"
            )
        elif kind == "pt" and not gk[5]:
            # one ASOF join per (source, entity, offset): each feature's latest matching row
            # is carried forward along the entity's history by a window function (a struct,
            # so a matching row with a NULL value still counts); only the last row of each
            # (key, ts) keeps its place (ties ordered by row_key), and the last history row
            # at or before t is joined.
            carried = []
            for f in feats:
                col = f"{g}_{len(cols)}"
                unit = float(UNITS_US[f.unit or "days"])
                c = f"_c{len(carried)}"
                cond = _cond(f.filter)
                if f.aggregation in ("latest", "until_latest"):
                    carried.append(
                        f"last_value(CASE WHEN {cond} THEN {{'v': ({f.value})}} END "
                        f"IGNORE NULLS) OVER _w AS {c}"
                    )
                    expr = (
                        f"(e.{c}).v"
                        if f.aggregation == "latest"
                        else f"((e.{c}).v - s._s_t) / {unit}"
                    )
                else:  # since_latest
                    carried.append(
                        f"last_value(CASE WHEN {cond} THEN ts_us END IGNORE NULLS) OVER _w AS {c}"
                    )
                    expr = f"(s._s_t - e.{c}) / {unit}"
                cols.append(f"{expr} AS {col}")
                raw[f.name] = col
            key = _q(entity)
            inner = (
                f"SELECT {key} AS _e_key, ts_us, {', '.join(carried)}\n"
                f"    FROM {src} x WHERE {key} IS NOT NULL AND ts_us IS NOT NULL\n"
                f"    WINDOW _w AS (PARTITION BY {key} ORDER BY ts_us, row_key\n"
                f"                  ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)\n"
                f"    QUALIFY lead(ts_us) OVER (PARTITION BY {key} ORDER BY ts_us, row_key) IS DISTINCT FROM ts_us"
            )
            ctes.append(
                f"{g} AS (SELECT s._s_row, {', '.join(cols)}\n"
                f"  FROM {q} s ASOF LEFT JOIN (\n    {inner}) e\n"
                f"  ON s._s_key = e._e_key AND s._s_t >= e.ts_us)"
            )
        elif kind == "pt":  # since_earliest
            filt = feats[0].filter
            for f in feats:
                col = f"{g}_{len(cols)}"
                unit = UNITS_US[f.unit or "days"]
                cols.append(f"(s._s_t - e._first) / {float(unit)} AS {col}")
                raw[f.name] = col
            inner = (
                f"SELECT {_q(entity)} AS _e_key, min(ts_us) AS _first FROM {src} x\n"
                f"    WHERE {_cond(filt, f'{_q(entity)} IS NOT NULL')} GROUP BY 1"
            )
            ctes.append(
                f"{g} AS (SELECT s._s_row, {', '.join(cols)}\n"
                f"  FROM {q} s JOIN ({inner}) e ON e._e_key = s._s_key AND e._first <= s._s_t)"
            )
        else:  # state
            for f in feats:
                col = f"{g}_{len(cols)}"
                c = _cond(f.filter)
                if f.aggregation == "state_sum":
                    cols.append(f"{_filtered(f'sum({f.value})', c)} AS {col}")
                elif f.aggregation == "state_count":
                    cols.append(f"{_filtered('count(*)', c)} AS {col}")
                elif f.aggregation == "state_count_distinct":
                    cols.append(f"{_filtered(f'count(DISTINCT {f.value})', c)} AS {col}")
                elif f.aggregation == "state_any":
                    cols.append(
                        f"CASE WHEN {_filtered('count(*)', c)} > 0 THEN 1 ELSE 0 END AS {col}"
                    )
                elif f.aggregation == "state_max":
                    cols.append(f"{_filtered(f'max({f.value})', c)} AS {col}")
                elif f.aggregation == "state_argmax":
                    c2 = _cond(f.filter, f"({f.value}) IS NOT NULL", f"({f.order_by}) IS NOT NULL")
                    agg = f"arg_max({f.value}, {{'o': {f.order_by}, 'k': row_key}})"
                    if f.unit is None:
                        cols.append(f"{_filtered(agg, c2)} AS {col}")
                    else:  # a time: how long from t until it
                        unit = float(UNITS_US[f.unit])
                        cols.append(f"({_filtered(agg, c2)} - s._s_t) / {unit} AS {col}")
                raw[f.name] = col
            on = (
                f"e.{_q(entity)} = s._s_key AND e.ts_us <= s._s_t "
                f"AND (e.valid_to_us IS NULL OR e.valid_to_us > s._s_t)"
            )
            ctes.append(
                f"{g} AS (SELECT s._s_row, {', '.join(cols)}\n"
                f"  FROM {q} s JOIN {src} e ON {on}\n  GROUP BY s._s_row, s._s_t)"
            )

    proj_ctes = [
        f"{name} AS (SELECT _s_row, {_q(entity)} AS _s_key, as_of_us - {offset * DAY_US} AS _s_t "
        f"FROM {spine} WHERE {_q(entity)} IS NOT NULL)"
        for (entity, offset), name in projections.items()
    ]
    joins = "".join(f"\n  LEFT JOIN _g{i} USING (_s_row)" for i in range(len(groups)))
    raw_cols = [f"{raw[f.name]}" for f in base]
    base_sql = f"SELECT sp._s_row{''.join(', ' + c for c in raw_cols)}\n  FROM {spine} sp{joins}"

    finals = [f"{_finish(f, raw[f.name])} AS {_q(f.name)}" for f in base]
    derived = [f"{_derive(f)} AS {_q(f.name)}" for f in allf if f.aggregation == "derived"]
    out_cols = [f.name for f in wanted]
    if pushdown:
        table_ctes, source_relations = _filtered_tables(source_ctes, source_keys, spine, relations)
    else:
        table_ctes, source_relations = [], {name: dict(relations or {}) for name in source_ctes}
    src_ctes = table_ctes + [
        f"{cte} AS MATERIALIZED (SELECT * FROM "
        f"({SOURCES[name].render(source_relations[name])})"
        " x WHERE "
        + " OR ".join(
            f"x.{_q(e)} IN (SELECT {_q(e)} FROM {spine})" for e in sorted(source_keys[name])
        )
        + ")"
        for name, cte in source_ctes.items()
    ]
    with_parts = ",\n".join(
        [
            *src_ctes,
            *proj_ctes,
            *ctes,
            f"_base AS ({base_sql})",
            f"_fin AS (SELECT _s_row, {', '.join(finals) or 'NULL AS _none'} FROM _base)",
        ]
    )
    sql = (
        f"WITH {with_parts}\n"
        f"SELECT _s_row{''.join(', ' + _q(c) for c in out_cols)} FROM (\n"
        f"  SELECT _fin.*{''.join(', ' + d for d in derived)} FROM _fin) t\n"
        f"ORDER BY _s_row"
    )
    return sql, out_cols


def _pushed(
    src: Source, entities: set[str], spine: str, relations: Mapping[str, str] | None
) -> dict[str, str]:
    """Per table of ``src``, the condition its rows must meet to reach the spine's keys: a
    table is filtered when every entity using the source declares a predicate for it (see
    ``Source.pushdown``); predicates read the unfiltered relations."""
    base = {t: (relations or {}).get(t, t) for t in src.tables}
    by_table: dict[str, dict[str, str]] = defaultdict(dict)
    for entity, table, predicate in src.pushdown:
        by_table[table][entity] = predicate
    conds: dict[str, str] = {}
    for table, preds in by_table.items():
        if not entities <= preds.keys():
            continue
        conds[table] = " OR ".join(
            "(" + preds[e].format(keys=f"(SELECT {_q(e)} FROM {spine})", **base) + ")"
            for e in sorted(entities)
        )
    return conds


def _filtered_tables(
    sources: Mapping[str, str],
    source_keys: Mapping[str, set[str]],
    spine: str,
    relations: Mapping[str, str] | None,
) -> tuple[list[str], dict[str, dict[str, str]]]:
    """One filtered copy per canonical table, shared by every source that reads it.

    Each source's pushdown gives a condition per table; the table is read once, keeping the
    rows that meet any source's condition (a superset of what each source needs, and a
    source given a superset of its rows computes the same result: the contract of
    ``Source.pushdown``). A source without a condition for a table reads it whole.

    Returns:
        The CTEs (``_t<i> AS MATERIALIZED (...)``) and, per source, its table -> relation map.
    """
    conds = {name: _pushed(SOURCES[name], source_keys[name], spine, relations) for name in sources}
    wanted: dict[str, list[str]] = defaultdict(list)
    for per_table in conds.values():
        for table, cond in per_table.items():
            if cond not in wanted[table]:
                wanted[table].append(cond)
    names = {table: f"_t{i}" for i, table in enumerate(wanted)}
    ctes = [
        f"{names[table]} AS MATERIALIZED (SELECT * FROM {(relations or {}).get(table, table)} _p "
        f"WHERE {' OR '.join(f'({c})' for c in cs)})"
        for table, cs in wanted.items()
    ]
    rels: dict[str, dict[str, str]] = {}
    for name, per_table in conds.items():
        rel = dict(relations or {})
        rel.update({table: names[table] for table in per_table})
        rels[name] = rel
    return ctes, rels


def _finish(f: Feature, col: str) -> str:
    if f.dtype == "int64":
        return f"CAST(coalesce({col}, 0) AS BIGINT)"
    if f.aggregation in ("sum", "state_sum", "mean_per_day", "daily_slope"):
        return f"CAST(coalesce({col}, 0) AS DOUBLE)"
    if f.dtype == "string":
        return f"CAST({col} AS VARCHAR)"
    return f"CAST({col} AS DOUBLE)"


def _derive(f: Feature) -> str:
    a = _q(f.inputs[0])
    b = _q(f.inputs[1]) if len(f.inputs) > 1 else None
    if f.op == "diff":
        return f"CAST({a} - {b} AS DOUBLE)"
    if f.op == "ratio":
        return f"CAST({a} / nullif({b}, 0) AS DOUBLE)"
    if f.op == "pct_change":
        return f"CAST(({a} - {b}) / nullif({b}, 0) AS DOUBLE)"
    if f.op == "drop_pct":
        return f"CAST(1 - {a} / nullif({b}, 0) AS DOUBLE)"
    if f.op == "le":
        return f"CASE WHEN {a} IS NULL THEN NULL WHEN {a} <= {f.constant} THEN 1.0 ELSE 0.0 END"
    raise ValueError(f"unknown op {f.op!r}; known: {DERIVED_OPS}")


# --------------------------------------------------------------------------- builder


def _spine_arrow(spine: pd.DataFrame, entities: Sequence[str]) -> pa.Table:
    if AS_OF not in spine.columns:
        raise ValueError(f"the spine needs an {AS_OF!r} column (UTC times)")
    cols = {
        "_s_row": pa.array(np.arange(len(spine), dtype=np.int64)),
        "as_of_us": pa.array(to_us(spine[AS_OF])),
    }
    for e in entities:
        cols[e] = pa.array(spine[e].astype("string").to_numpy(na_value=None), type=pa.string())
    return pa.table(cols)


def build_features(
    con: duckdb.DuckDBPyConnection | Engine,
    spine: pd.DataFrame,
    *,
    features: Iterable[str] | None = None,
    relations: Mapping[str, str] | None = None,
    pushdown: bool = True,
) -> pd.DataFrame:
    """Compute features as of each spine row's time, with one set-based query.

    Args:
        con: A DuckDB connection holding the canonical tables (read only is fine), or an
            engine (:func:`workbench.engines.get_engine`) that has them.
        spine: Needs ``as_of`` (UTC times) and one column per entity of the requested
            features (``account_id``, ``subscription_id``, ``invoice_id``); other columns are
            carried through untouched.
        features: Names to compute; default: every feature whose entity is a spine column.
        relations: Table name -> relation override (see :func:`known_at`).
        pushdown: See :func:`compile_features_sql` (a switch for checks; leave it on).

    Returns:
        The spine's columns (``as_of`` as ``datetime64[us, UTC]``) followed by one column
        per feature, same row order. Counts and flags are ``int64``; other numbers
        ``float64`` (NaN when undefined); categories are ``object`` strings or None.
    """
    present = [e for e in ("account_id", "subscription_id", "invoice_id") if e in spine.columns]
    if features is None:
        feats = [f for f in get_features() if f.entity in present]
    else:
        feats = get_features(features)
    name = f"_wb_spine_{uuid.uuid4().hex[:12]}"
    engine = as_engine(con)
    used = {t for f in feats if f.source for t in SOURCES[f.source].tables}
    relations = with_optional_tables(engine, relations, used)
    engine.register(name, _spine_arrow(spine, present))
    try:
        sql, out_cols = compile_features_sql(
            feats, spine=name, entities=present, relations=relations, pushdown=pushdown
        )
        log.debug("feature SQL:\n%s", sql)
        result = engine.execute(sql).df()
    finally:
        engine.unregister(name)
    out = spine.reset_index(drop=True).copy()
    out[AS_OF] = to_utc(out[AS_OF])
    for c in out_cols:
        out[c] = result[c].to_numpy()
    for f in feats:
        if f.dtype == "string":
            out[f.name] = out[f.name].astype(object).where(out[f.name].notna(), None)
        elif f.dtype == "int64":
            out[f.name] = out[f.name].astype(np.int64)
        else:
            out[f.name] = out[f.name].astype(np.float64)
    return out


# --------------------------------------------------------------------------- spines


def period_grid(*, start, end, freq: str = "month") -> pd.Series:
    """Period boundaries in ``[start, end]``: month starts (00:00 UTC on the 1st, i.e. the end
    of the previous month), Monday 00:00 for weeks, midnights for days."""
    if freq not in FREQS:
        raise ValueError(f"freq must be one of {tuple(FREQS)}, not {freq!r}")
    s, e = to_utc([start]).iloc[0], to_utc([end]).iloc[0]
    return to_utc(pd.date_range(s, e, freq=FREQS[freq]))


def _paying_sql(relations: Mapping[str, str] | None, grid: str) -> str:
    src = SOURCES["subscription_items"].render(relations)
    return (
        f"SELECT DISTINCT e.account_id, g.t_us FROM {grid} g JOIN ({src}) e "
        f"ON e.ts_us <= g.t_us AND (e.valid_to_us IS NULL OR e.valid_to_us > g.t_us) "
        f"WHERE {PAYING_FILTER}"
    )


def churn_spine(
    con: duckdb.DuckDBPyConnection | Engine,
    *,
    start,
    end,
    freq: str = "month",
    relations: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Every account paying (MRR > 0) at each period boundary in ``[start, end]``.

    "Paying" is :data:`~workbench.features.definitions.PAYING_FILTER` on a subscription
    item version in force at ``t`` (the same rule the ``mrr`` feature sums).

    Returns:
        Columns ``account_id``, ``as_of``, sorted by ``as_of`` then ``account_id``.
    """
    grid = period_grid(start=start, end=end, freq=freq)
    name = f"_wb_grid_{uuid.uuid4().hex[:12]}"
    engine = as_engine(con)
    engine.register(name, pa.table({"t_us": pa.array(to_us(grid), type=pa.int64())}))
    try:
        df = engine.execute(_paying_sql(relations, name) + " ORDER BY 2, 1").df()
    finally:
        engine.unregister(name)
    return pd.DataFrame(
        {
            "account_id": df["account_id"].astype(object),
            AS_OF: to_utc(pd.to_datetime(df["t_us"].to_numpy(), unit="us", utc=True)),
        }
    )


#: How long after a failed attempt the invoice version reporting it may be recorded.
ANNOUNCE_WINDOW_S = 600

#: Tables a warehouse may lack (ingestion's invoice history is written from Stripe events
#: only; a warehouse assembled elsewhere may have none): read as empty when absent.
OPTIONAL_TABLES: dict[str, str] = {
    "charge_versions": (
        "(SELECT CAST(NULL AS VARCHAR) AS event_id, CAST(NULL AS TIMESTAMPTZ) AS version_at, "
        "CAST(NULL AS VARCHAR) AS attempt_id, CAST(NULL AS VARCHAR) AS account_id, "
        "CAST(NULL AS VARCHAR) AS invoice_id, CAST(NULL AS VARCHAR) AS status WHERE 1 = 0)"
    ),
    "invoice_versions": (
        "(SELECT CAST(NULL AS VARCHAR) AS event_id, CAST(NULL AS TIMESTAMPTZ) AS version_at, "
        "CAST(NULL AS VARCHAR) AS invoice_id, CAST(NULL AS VARCHAR) AS account_id, "
        "CAST(NULL AS TIMESTAMPTZ) AS next_payment_attempt, CAST(NULL AS VARCHAR) AS status, "
        "CAST(NULL AS BIGINT) AS amount_due WHERE 1 = 0)"
    ),
}


def with_optional_tables(
    engine: Engine, relations: Mapping[str, str] | None, used: Iterable[str]
) -> dict[str, str]:
    """``relations`` with an empty stand-in for each of :data:`OPTIONAL_TABLES` in ``used``
    that the warehouse does not have (an override of it, e.g. :func:`known_at`'s, would
    read the missing table: the stand-in replaces it too)."""
    from workbench.engines import table_names

    out = dict(relations or {})
    wanted = [t for t in OPTIONAL_TABLES if t in set(used)]
    if wanted:
        have = table_names(engine)
        out |= {t: OPTIONAL_TABLES[t] for t in wanted if t not in have}
    return out


def recovery_spine(
    con: duckdb.DuckDBPyConnection | Engine,
    *,
    start=None,
    end=None,
    each_attempt: bool = False,
    relations: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Failed invoices at the time of their first failure (or at every failed attempt).

    The time of a failure is when the invoice reported it: the first invoice version
    recorded within :data:`ANNOUNCE_WINDOW_S` after the failed attempt that leaves the
    invoice open (Stripe's
    ``invoice.payment_failed``, the event the real-time dunning scores on; it carries the
    next retry time, ``invoice_hours_to_next_attempt``), or the attempt's own time when
    the warehouse has no such version (CSV sources). A row exists only while the invoice is
    still open at that time (not paid, voided or marked uncollectible at or before it).

    Args:
        con: Warehouse connection or engine.
        start: Keep rows with ``as_of >= start`` (optional).
        end: Keep rows with ``as_of <= end`` (optional).
        each_attempt: One row per failed attempt instead of one per invoice.
        relations: Table overrides.

    Returns:
        Columns ``invoice_id``, ``account_id``, ``subscription_id``, ``as_of``, sorted by
        ``as_of`` then ``invoice_id``.
    """
    relations = with_optional_tables(
        as_engine(con), relations, {"invoice_versions", "charge_versions"}
    )
    src = SOURCES["dunning_attempts" if each_attempt else "dunning_invoices"].render(relations)
    inv = relations.get("invoices", "invoices")
    versions = relations.get("invoice_versions", "invoice_versions")
    # a failure is scored when the invoice reports it: its first version recorded within
    # ANNOUNCE_WINDOW_S of the failed attempt that leaves it open (Stripe's
    # invoice.payment_failed, which carries the next retry time; a payment right after is
    # not a report of the failure) or, without invoice versions, the attempt itself
    announce = (
        f"SELECT d.invoice_id, d.account_id, d.ts_us, d.valid_to_us, "
        f"coalesce(min(epoch_us(v.version_at)), d.ts_us) AS at_us "
        f"FROM ({src}) d LEFT JOIN {versions} v ON v.invoice_id = d.invoice_id "
        f"AND coalesce(v.status, 'open') = 'open' "
        f"AND epoch_us(v.version_at) >= d.ts_us "
        f"AND epoch_us(v.version_at) <= d.ts_us + {ANNOUNCE_WINDOW_S * 1_000_000} "
        f"GROUP BY d.invoice_id, d.account_id, d.ts_us, d.valid_to_us"
    )
    where = ["(d.valid_to_us IS NULL OR d.valid_to_us > d.at_us)"]
    if start is not None:
        where.append(f"d.at_us >= {int(to_us(to_utc([start]))[0])}")
    if end is not None:
        where.append(f"d.at_us <= {int(to_us(to_utc([end]))[0])}")
    sql = (
        f"SELECT DISTINCT d.invoice_id, d.account_id, i.subscription_id, d.at_us AS ts_us "
        f"FROM ({announce}) d LEFT JOIN {inv} i ON i.invoice_id = d.invoice_id "
        f"WHERE {' AND '.join(where)} ORDER BY ts_us, d.invoice_id"
    )
    df = as_engine(con).execute(sql).df()
    return pd.DataFrame(
        {
            "invoice_id": df["invoice_id"].astype(object),
            "account_id": df["account_id"].astype(object),
            "subscription_id": df["subscription_id"].astype(object),
            AS_OF: to_utc(pd.to_datetime(df["ts_us"].to_numpy(), unit="us", utc=True)),
        }
    )


def snapshot_spine(
    con: duckdb.DuckDBPyConnection | Engine,
    *,
    entity: str,
    as_of,
    relations: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Every entity that exists at ``as_of``, for serving snapshots.

    Accounts: created or with a subscription version at or before ``as_of``.
    Subscriptions: with a version at or before ``as_of``. Invoices: in dunning at
    ``as_of`` (a failed attempt, not yet paid, voided or written off).

    Returns:
        Columns ``<entity>`` and ``as_of`` (the same time on every row).
    """
    t = int(to_us(to_utc([as_of]))[0])
    r = with_optional_tables(as_engine(con), relations, {"charge_versions", "invoice_versions"})
    if entity == "account_id":
        sql = (
            f"SELECT account_id FROM ({SOURCES['account_facts'].render(r)}) WHERE ts_us <= {t} "
            f"UNION SELECT account_id FROM ({SOURCES['subscription_items'].render(r)}) "
            f"WHERE ts_us <= {t}"
        )
    elif entity == "subscription_id":
        sql = (
            f"SELECT DISTINCT subscription_id FROM "
            f"({SOURCES['subscription_items'].render(r)}) WHERE ts_us <= {t}"
        )
    elif entity == "invoice_id":
        sql = (
            f"SELECT DISTINCT invoice_id FROM ({SOURCES['dunning_invoices'].render(r)}) "
            f"WHERE ts_us <= {t} AND (valid_to_us IS NULL OR valid_to_us > {t})"
        )
    else:
        raise ValueError(f"unknown entity {entity!r}")
    ids = as_engine(con).execute(sql + " ORDER BY 1").df().iloc[:, 0].astype(object)
    return pd.DataFrame(
        {
            entity: ids,
            AS_OF: to_utc([as_of] * len(ids))
            if len(ids)
            else to_utc(pd.Series([], dtype="datetime64[us, UTC]")),
        }
    )


# --------------------------------------------------------------------------- known at t


def known_at(t, *, tables: Iterable[str] | None = None) -> dict[str, str]:
    """Relations holding only what was known at ``t``: the reference for leakage checks.

    Rows created after ``t`` are dropped; times after ``t`` inside kept rows (paid_at,
    valid_to, resolved_at, closed_at, ...) become NULL; fields that only describe the
    current state (invoice status and amounts paid, ticket and refund status, an open
    dispute's status) become NULL, so a feature that read them would differ.

    Returns:
        ``{table: "(SELECT ...)"}`` for :func:`build_features`'s ``relations``.
    """
    lit = ts_literal(t)
    day_end = (
        f"CAST(date AS TIMESTAMP) + INTERVAL 1 DAY <= CAST({lit} AT TIME ZONE 'UTC' AS TIMESTAMP)"
    )

    def masked(col: str) -> str:
        return f"CASE WHEN {col} <= {lit} THEN {col} END AS {col}"

    rel = {
        # a charge's status as of t: its latest version by t (a charge first recorded as
        # pending is still pending); without versions by t, the status it has
        "payment_attempts": (
            "(SELECT pa.* REPLACE (coalesce(k.status_then, pa.status) AS status) "
            "FROM payment_attempts pa LEFT JOIN (SELECT attempt_id, status AS status_then FROM ("
            "SELECT attempt_id, status, row_number() OVER (PARTITION BY attempt_id "
            "ORDER BY version_at DESC, event_id DESC) AS rn FROM charge_versions "
            f"WHERE version_at <= {lit}) WHERE rn = 1) k ON k.attempt_id = pa.attempt_id "
            f"WHERE pa.created <= {lit})"
        ),
        "charge_versions": f"(SELECT * FROM charge_versions WHERE version_at <= {lit})",
        "invoices": (
            "(SELECT * REPLACE ("
            + ", ".join(
                masked(c)
                for c in ("paid_at", "voided_at", "marked_uncollectible_at", "finalized_at")
            )
            + ", NULL AS status, NULL AS amount_paid, NULL AS amount_remaining, "
            "NULL AS attempt_count, NULL AS next_payment_attempt, NULL AS updated_at) "
            f"FROM invoices WHERE created <= {lit})"
        ),
        "invoice_versions": f"(SELECT * FROM invoice_versions WHERE version_at <= {lit})",
        "subscription_history": (
            f"(SELECT * REPLACE ({masked('valid_to')}) FROM subscription_history "
            f"WHERE valid_from <= {lit})"
        ),
        "accounts": f"(SELECT * FROM accounts WHERE created <= {lit})",
        "prices": "(SELECT * FROM prices)",
        "usage": f"(SELECT * FROM usage WHERE {day_end})",
        "crm_signals": f"(SELECT * FROM crm_signals WHERE {day_end})",
        "support_tickets": (
            f"(SELECT * REPLACE ({masked('resolved_at')}, NULL AS status) FROM support_tickets "
            f"WHERE created_at <= {lit})"
        ),
        "disputes": (
            f"(SELECT * REPLACE ({masked('closed_at')}, "
            f"CASE WHEN closed_at <= {lit} THEN status END AS status) "
            f"FROM disputes WHERE created <= {lit})"
        ),
        "refunds": f"(SELECT * REPLACE (NULL AS status) FROM refunds WHERE created <= {lit})",
    }
    if tables is not None:
        rel = {k: v for k, v in rel.items() if k in set(tables)}
    return rel


def data_horizon(con: duckdb.DuckDBPyConnection | Engine) -> pd.Timestamp | None:
    """The latest time the warehouse has seen (max of event and fact times), or None if empty.

    Labels are only defined where ``as_of + horizon <= data_horizon``. (The newest event
    alone is :func:`workbench.monitoring.business.newest_event_time`.)
    """
    row = (
        as_engine(con)
        .execute(
            """
        SELECT greatest(
          (SELECT max(created) FROM events),
          (SELECT max(valid_from) FROM subscription_history),
          (SELECT max(created) FROM payment_attempts),
          (SELECT max(created) FROM invoices),
          (SELECT max(paid_at) FROM invoices))
        """
        )
        .fetchall()[0]
    )
    return None if row[0] is None else to_utc([row[0]]).iloc[0]


__all__ = [
    "AS_OF",
    "build_features",
    "churn_spine",
    "compile_features_sql",
    "data_horizon",
    "known_at",
    "period_grid",
    "recovery_spine",
    "snapshot_spine",
    "to_utc",
]
