"""Warehouse engines: one SQL definition per computation, run on DuckDB or Apache Spark.

The warehouse computations (MRR engine, bridge, ...) are generated as DuckDB SQL, which
stays the single definition. :class:`DuckDBEngine` runs it as is on a DuckDB connection;
:class:`SparkEngine` transpiles it with SQLGlot (:func:`to_spark_sql`) plus a few
precise AST rewrites so Spark computes the same integers:

* ``HUGEINT`` becomes ``DECIMAL(38, 0)`` (exact up to 10^38; the engine stays far below).
* ``a // b`` (integer division) becomes an exact decimal division
  ``CAST((A - A % B) / B AS DECIMAL(38, 0))`` with ``A, B`` cast to ``DECIMAL(38, 0)``:
  Spark's ``DIV`` returns a BIGINT and would overflow, ``/`` on BIGINTs is floating point.
* ``sign(x)`` becomes a ``CASE`` (Spark's ``sign`` returns DOUBLE).
* ``timezone('UTC', ts)`` becomes ``ts``: the Spark session runs in UTC, so a Spark
  ``TIMESTAMP`` already reads as DuckDB's ``timezone('UTC', timestamptz)``; plain
  ``TIMESTAMP`` casts stay session-local (UTC) timestamps instead of ``TIMESTAMP_NTZ``.
* ``to_months(n)``, ``to_years(n)``, ``to_weeks(n)``, ``to_days(n)``, ``to_hours(n)`` become
  ``make_interval(...)``.
* ``CROSS JOIN LATERAL (SELECT CAST(unnest(generate_series(a, b, step)) AS DATE) AS c) m``
  becomes ``LATERAL VIEW explode(sequence(CAST(a AS DATE), CAST(b AS DATE), step)) m AS c``.

For the point-in-time feature SQL (:mod:`workbench.features.offline`):

* ``a / b`` becomes ``CAST(a AS DOUBLE) / CAST(b AS DOUBLE)``: DuckDB's ``/`` is always
  floating point, Spark's ``/`` on decimals (``x / 86400000000.0``, ``12.0 / 52``) is a
  decimal division rounded to 6 places.
* ``avg(x)`` becomes ``avg(CAST(x AS DOUBLE))`` (DuckDB's ``avg`` is DOUBLE, Spark's
  ``avg`` of a decimal is a decimal rounded to a few places).
* ``epoch_us(ts)`` becomes ``unix_micros(ts)``; ``date_diff('microsecond', a, b)`` becomes
  ``unix_micros(b) - unix_micros(a)`` (exact; Spark's ``datediff`` counts days).
* ``L s ASOF [LEFT] JOIN R e ON s.k = e.k AND s.t >= e.t`` (or ``>``, or written the other
  way round) becomes a union of both sides, one sort per key and a window that carries
  each key's latest ``R`` row forward: ``last_value(struct(e.*) IGNORE NULLS) OVER
  (PARTITION BY k ORDER BY t, side)``, the ``R`` rows sorting first at equal times for
  ``>=`` and last for ``>``. The join's result is a relation of two struct columns named
  after the aliases, so ``s.x`` and ``e.y`` (which must be qualified) read their fields.
  Linear in the rows (no range join); NULL keys or times never match. As in DuckDB, which of
  several ``R`` rows with the same key and time is taken is unspecified (the feature SQL
  keeps one row per key and time).
* ``WITH x AS MATERIALIZED (...)`` loses ``MATERIALIZED`` in the transpiled text; the Spark
  engine computes such CTEs once beforehand (see Statements below). CTEs nested inside
  subqueries get unique names, because the Spark generator hoists them to the top level,
  where two ``ok`` CTEs would clash.
* ``SELECT * REPLACE (e AS c) FROM t``, ``t.* EXCLUDE (c)``, and any star of a SELECT with
  ``QUALIFY``, list ``t``'s columns (the Spark engine looks them up in its catalog; used by
  ``known_at``'s truncated tables and the ingestion's derived tables). SQLGlot's
  ``eliminate_qualify`` would otherwise pass its helper column through ``SELECT *``.
* A window aggregate with ``FILTER (WHERE c)`` becomes the aggregate of
  ``CASE WHEN c THEN x END`` (Spark has no FILTER on window functions).
* SQLGlot's own mappings cover the rest: ``QUALIFY`` becomes a filtered subquery
  (``eliminate_qualify``), struct literals ``{'v': x}`` become ``STRUCT(x AS v)``,
  ``arg_max(x, s)`` becomes ``max_by(x, s)``, ``make_timestamp(us)`` becomes
  ``timestamp_micros(us)``; ``FILTER (WHERE ...)``, ``IGNORE NULLS``, named ``WINDOW`` clauses,
  ``IS DISTINCT FROM`` and ``(s).field`` are Spark SQL as written.

For the Stripe event parsing (:mod:`workbench.ingest.stripe_events`):

* ``json_transform(x, '<spec>')`` becomes ``from_json`` (:func:`spark_json_transform`):
  every leaf parsed as text, plus two probe parses (leaves as DOUBLE, as BOOLEAN) that tell
  which JSON token a leaf held, so ``JSON`` leaves read as DuckDB's JSON text (strings
  quoted and escaped) and ``BOOLEAN`` leaves follow DuckDB's casts; text that is not JSON
  gives NULL (``try(...)`` is dropped). The session sets
  ``spark.sql.json.enablePartialResults`` so a wrongly shaped value nulls only itself.
* ``CREATE TEMP MACRO m(x) AS body`` is remembered by the engine and inlined into later
  statements; ``regexp_full_match(s, p)`` becomes ``s RLIKE '^(?:p)$'``, ``to_timestamp(s)``
  ``timestamp_seconds(s)``, ``list_sum`` an ``aggregate`` that skips NULLs, ``hash(x)``
  ``xxhash64(x)`` (an identifier only: its values differ from DuckDB's);
  ``SET TimeZone = 'UTC'`` is a no-op (the session runs in UTC).

Statements: ``CREATE [OR REPLACE] TEMP TABLE t AS q`` materialises ``q`` (local
checkpoint, so later stages do not recompute it) as temp view ``t``; ``DROP TABLE IF
EXISTS t`` drops that view; everything else is a query whose rows are fetched lazily. A
query's ``WITH x AS MATERIALIZED (q)`` CTEs are computed first, once each, into local
checkpoints (:func:`split_materialized`), as DuckDB computes them once.

DML on temp views (the ingestion's derived tables): each statement computes the table's
new rows and materialises them as the view, so a pipeline of statements runs as written.

* ``CREATE [OR REPLACE] TEMP TABLE t (c TYPE, ...)``: an empty view with those columns.
* ``DELETE FROM t [WHERE c]``: ``t`` becomes ``SELECT * FROM t WHERE (c) IS NOT TRUE``.
* ``INSERT INTO t [BY NAME] q`` (or ``VALUES``): ``t`` plus ``q``'s rows, matched to ``t``'s
  columns by name or position, missing ones NULL, cast to ``t``'s types.
* ``INSERT OR REPLACE INTO t ... q``: as INSERT, after dropping ``t``'s rows whose primary
  key (from :mod:`workbench.schema` / :mod:`workbench.ingest.tables`, or
  :attr:`SparkEngine.keys`) is among ``q``'s; as in DuckDB, a replaced row keeps its values
  in the columns ``q`` does not give, and of several rows of ``q`` with one key the first
  (in ``q``'s order) is taken.
* ``INSERT INTO t ... ON CONFLICT DO NOTHING``: as INSERT, without ``q``'s rows whose primary
  key ``t`` already has (or that an earlier row of ``q`` has).
* Primary keys as DuckDB's: a NULL key fails, and so does a plain ``INSERT`` that gives a key
  DuckDB enforces (:meth:`SparkEngine.enforced_keys`) to two rows; both raise
  ``duckdb.ConstraintException`` (checked inside the job that writes ``t``, which stays as
  it was).
* ``UPDATE t [AS a] SET c = e, ... [FROM r [AS b]] [WHERE w]``: each row of ``t`` that some
  ``r`` row matches takes the values ``e`` computed from one of them (which one is
  unspecified when several match); the other rows stay as they were.

For the loader replayed on Spark (:func:`workbench.ingest.rebuild.build_on_engine`):
``CREATE [OR REPLACE] TEMP VIEW v AS q`` is materialised like a temp table (a Spark temp
view binds to the plan of the tables it reads, DuckDB's view to their names);
``DESCRIBE t`` gives ``column_name``, ``column_type``; ``execute(sql, params)`` binds the
``?`` placeholders as SQL literals; results also have ``to_arrow_table()``, and
``fetchall()`` keeps integers of a column with NULLs as ``int``.

Both engines answer ``execute(sql)`` with an object that has ``fetchone()``,
``fetchall()``, ``fetchnumpy()`` and ``df()``, like a DuckDB result, and take tables with
``register(name, pandas or Arrow)`` / ``unregister(name)``, so code written against a
DuckDB connection runs unchanged on either engine.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import duckdb
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from .config import Settings

#: canonical tables the revenue engine and metrics read
REVENUE_TABLES = ("subscription_history", "prices", "accounts", "fx_rates")

_CREATE = re.compile(
    r"^\s*CREATE\s+(OR\s+REPLACE\s+)?(TEMP(?:ORARY)?\s+)?(?:TABLE|VIEW)\s+(IF\s+NOT\s+EXISTS\s+)?"
    r"([A-Za-z_][A-Za-z0-9_]*)\s+AS\s+(.*)$",
    re.IGNORECASE | re.DOTALL,
)
_DROP = re.compile(
    r"^\s*DROP\s+(?:TABLE|VIEW)\s+(?:IF\s+EXISTS\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*;?\s*$",
    re.IGNORECASE,
)
_MACRO = re.compile(
    r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?TEMP(?:ORARY)?\s+MACRO\s+([A-Za-z_][A-Za-z0-9_]*)\s*"
    r"\(([^)]*)\)\s+AS\s+(.*?);?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_DESCRIBE = re.compile(r"^\s*DESCRIBE\s+([A-Za-z_][A-Za-z0-9_]*)\s*;?\s*$", re.IGNORECASE)
_SET_UTC = re.compile(r"^\s*SET\s+TimeZone\s*=\s*'UTC'\s*;?\s*$", re.IGNORECASE)
_DML = re.compile(
    r"^\s*(?:INSERT\s|DELETE\s|UPDATE\s|CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMP(?:ORARY)?\s+)?TABLE\s+"
    r"(?:IF\s+NOT\s+EXISTS\s+)?[A-Za-z_][A-Za-z0-9_]*\s*\()",
    re.IGNORECASE,
)


class EngineError(RuntimeError):
    """The chosen engine cannot run: the message says what to install or configure."""


class Result(Protocol):
    """What ``execute`` returns: the rows of a statement, like a DuckDB result."""

    def fetchone(self) -> tuple[Any, ...] | None:
        """The first row, or None."""

    def fetchall(self) -> list[tuple[Any, ...]]:
        """All rows."""

    def df(self) -> pd.DataFrame:
        """All rows as a pandas frame."""

    def fetchnumpy(self) -> dict[str, Any]:
        """All rows as one numpy array per column."""


class Engine(Protocol):
    """A SQL warehouse engine running the workbench's (DuckDB-dialect) SQL."""

    name: str

    def execute(self, sql: str, params: list[Any] | None = None) -> Result:
        """Run one statement written in DuckDB SQL (``?`` placeholders bound to ``params``)."""

    def register(self, name: str, frame: pd.DataFrame | pa.Table) -> None:
        """Expose a pandas frame or an Arrow table as a (temporary) table ``name``."""

    def unregister(self, name: str) -> None:
        """Remove a table exposed by :meth:`register`."""

    def fetch_df(self, sql: str) -> pd.DataFrame:
        """Run a query and return its rows as pandas."""


# --------------------------------------------------------------------------- DuckDB


@dataclass
class DuckDBEngine:
    """The default engine: a DuckDB connection, SQL run as written."""

    con: duckdb.DuckDBPyConnection
    name: str = "duckdb"

    def execute(self, sql: str, params: list[Any] | None = None) -> Result:
        """Run ``sql`` on the connection (``?`` placeholders bound to ``params``)."""
        return self.con.execute(sql, params)

    def register(self, name: str, frame: pd.DataFrame | pa.Table) -> None:
        """Register ``frame`` (pandas or Arrow) as view ``name`` (no copy)."""
        self.con.register(name, frame)

    def unregister(self, name: str) -> None:
        """Remove view ``name``."""
        self.con.unregister(name)

    def fetch_df(self, sql: str) -> pd.DataFrame:
        """Rows of ``sql`` as pandas."""
        return self.con.execute(sql).df()


# --------------------------------------------------------------------------- SQLGlot


def _dec38() -> Any:
    from sqlglot import exp

    return exp.DataType.build("DECIMAL(38, 0)")


def _rewrite_node(node: Any) -> Any:
    """One node of the DuckDB AST rewritten for Spark (see the module docstring)."""
    import sqlglot
    from sqlglot import exp

    if isinstance(node, exp.DataType):
        if node.this == exp.DataType.Type.INT128:
            return _dec38()
        if node.this == exp.DataType.Type.TIMESTAMPNTZ:
            return exp.DataType.build("TIMESTAMP", dialect="spark")
        return node
    if isinstance(node, exp.IntDiv):
        a = exp.Cast(this=exp.Paren(this=node.this.copy()), to=_dec38())
        b = exp.Cast(this=exp.Paren(this=node.expression.copy()), to=_dec38())
        exact = exp.Div(
            this=exp.Paren(this=exp.Sub(this=a, expression=exp.Mod(this=a.copy(), expression=b))),
            expression=b.copy(),
        )
        return exp.Paren(this=exp.Cast(this=exact, to=_dec38()))
    if isinstance(node, exp.Sign):
        x = node.this
        return exp.Paren(
            this=exp.Case(
                ifs=[
                    exp.If(
                        this=exp.GT(this=x.copy(), expression=exp.Literal.number(0)),
                        true=exp.Literal.number(1),
                    ),
                    exp.If(
                        this=exp.LT(this=x.copy(), expression=exp.Literal.number(0)),
                        true=exp.Literal.number(-1),
                    ),
                ],
                default=exp.Literal.number(0),
            )
        )
    if isinstance(node, exp.Explode) and isinstance(node.this, exp.GenerateSeries):
        # DuckDB's generate_series(a, b) is empty when a > b; Spark's sequence() throws
        series = node.this
        guard = exp.LTE(this=series.args["start"].copy(), expression=series.args["end"].copy())
        return exp.Explode(
            this=exp.If(this=guard, true=series.copy(), false=exp.Array(expressions=[]))
        )
    if isinstance(node, exp.Try):
        # try(json_transform(...)): the Spark parse gives NULL for text that is not JSON
        return node.this.copy()
    if isinstance(node, exp.RegexpFullMatch):
        pattern = node.expression
        if not (isinstance(pattern, exp.Literal) and pattern.is_string):
            raise EngineError("regexp_full_match on Spark needs a literal pattern")
        full = exp.Literal.string(f"^(?:{pattern.this})$")
        return exp.RegexpLike(this=node.this.copy(), expression=full)
    if isinstance(node, exp.UnixToTime) and not node.args.get("scale"):
        # to_timestamp(seconds): Spark's generator would format and re-parse a string
        return exp.Anonymous(this="timestamp_seconds", expressions=[node.this.copy()])
    if isinstance(node, exp.ToDays):
        return exp.Anonymous(this="make_interval", expressions=[*_zeros(3), node.this.copy()])
    if isinstance(node, exp.Anonymous):
        fname = str(node.this).lower()
        args = node.expressions
        if fname == "timezone" and len(args) == 2 and args[0].name.upper() == "UTC":
            return args[1].copy()
        if fname == "to_months" and len(args) == 1:
            return exp.Anonymous(this="make_interval", expressions=[*_zeros(1), args[0].copy()])
        if fname == "to_years" and len(args) == 1:
            return exp.Anonymous(this="make_interval", expressions=[args[0].copy()])
        if fname == "to_weeks" and len(args) == 1:
            return exp.Anonymous(this="make_interval", expressions=[*_zeros(2), args[0].copy()])
        if fname == "to_hours" and len(args) == 1:
            return exp.Anonymous(this="make_interval", expressions=[*_zeros(4), args[0].copy()])
        if fname == "epoch_us" and len(args) == 1:
            return exp.Anonymous(this="unix_micros", expressions=[args[0].copy()])
        if fname == "hash" and len(args) == 1:
            # an identifier of a value, not a portable number: Spark's own 64-bit hash
            return exp.Anonymous(this="xxhash64", expressions=[args[0].copy()])
        if fname == "list_sum" and len(args) == 1:
            # DuckDB's list_sum skips NULLs and is NULL for an empty list
            return sqlglot.parse_one(
                "aggregate(_wb_list, CAST(NULL AS DECIMAL(38, 0)), "
                "(_wb_a, _wb_v) -> CASE WHEN _wb_v IS NULL THEN _wb_a "
                "ELSE coalesce(_wb_a, 0) + _wb_v END)",
                read="spark",
            ).transform(
                lambda n: args[0].copy() if isinstance(n, exp.Column) and n.name == "_wb_list"
                else n
            )  # fmt: skip
    if isinstance(node, exp.Window) and isinstance(node.this, exp.Filter):
        # Spark has no FILTER on window aggregates: agg(x) FILTER (WHERE c) OVER w becomes
        # agg(CASE WHEN c THEN x END) OVER w (count(*): count(CASE WHEN c THEN 1 END))
        agg, cond = node.this.this, node.this.expression.this
        agg = agg.copy()
        arg = agg.this
        if isinstance(arg, exp.Star) or arg is None:
            arg = exp.Literal.number(1)
        agg.set("this", exp.Case(ifs=[exp.If(this=cond.copy(), true=arg.copy())]))
        window = node.copy()
        window.set("this", agg)
        return window
    if isinstance(node, exp.Avg) and not (
        isinstance(node.this, exp.Cast) and node.this.to.this == exp.DataType.Type.DOUBLE
    ):
        # DuckDB's avg is DOUBLE for every numeric input; Spark's avg(DECIMAL) is a DECIMAL
        return exp.Avg(this=exp.Cast(this=node.this.copy(), to=exp.DataType.build("DOUBLE")))
    if isinstance(node, exp.DateDiff) and node.text("unit").lower() in ("microsecond", "us"):
        # date_diff('microsecond', a, b) parses as DateDiff(this=b, expression=a)
        return exp.Paren(
            this=exp.Sub(
                this=exp.Anonymous(this="unix_micros", expressions=[node.this.copy()]),
                expression=exp.Anonymous(this="unix_micros", expressions=[node.expression.copy()]),
            )
        )
    return node


def _zeros(n: int) -> list[Any]:
    from sqlglot import exp

    return [exp.Literal.number(0) for _ in range(n)]


def _lateral_series(select: Any) -> None:
    """Turn ``CROSS JOIN LATERAL (SELECT CAST(unnest(generate_series(..)) AS DATE) AS c) m``
    into Spark's ``LATERAL VIEW explode(sequence(..)) m AS c`` on the same SELECT."""
    from sqlglot import exp

    for join in list(select.args.get("joins") or []):
        lat = join.this
        if not isinstance(lat, exp.Lateral) or not isinstance(lat.this, exp.Subquery):
            continue
        inner = lat.this.this
        if not isinstance(inner, exp.Select) or len(inner.expressions) != 1:
            continue
        col = inner.expressions[0]
        cast = col.this if isinstance(col, exp.Alias) else None
        if not (isinstance(cast, exp.Cast) and isinstance(cast.this, exp.Explode)):
            continue
        series = cast.this.this
        if not isinstance(series, exp.GenerateSeries) or inner.args.get("from_"):
            continue
        to = cast.to
        seq = exp.GenerateSeries(
            start=exp.Cast(this=series.args["start"].copy(), to=to.copy()),
            end=exp.Cast(this=series.args["end"].copy(), to=to.copy()),
            step=series.args["step"].copy(),
        )
        view = exp.Lateral(
            this=exp.Explode(this=seq),
            view=True,
            alias=exp.TableAlias(
                this=exp.to_identifier(lat.alias), columns=[exp.to_identifier(col.alias)]
            ),
        )
        join.pop()
        select.append("laterals", view)


def _double_division(tree: Any) -> None:
    """``a / b`` as DuckDB computes it: in DOUBLE (Spark divides decimals as decimals)."""
    from sqlglot import exp

    double = exp.DataType.build("DOUBLE")
    for div in list(tree.find_all(exp.Div)):
        for arg in ("this", "expression"):
            operand = div.args[arg]
            if not (isinstance(operand, exp.Cast) and operand.to.this == double.this):
                div.set(arg, exp.Cast(this=exp.Paren(this=operand.copy()), to=double.copy()))


def _asof_join(select: Any, n: int) -> None:
    """Replace ``FROM L s ASOF [LEFT] JOIN R e ON <equalities> AND s.t >= e.t`` on
    ``select`` by a union of both sides carrying each key's latest ``R`` row forward (see
    the module docstring). The result has two struct columns, ``s`` and ``e``."""
    import sqlglot
    from sqlglot import exp

    joins = select.args.get("joins") or []
    asof = [j for j in joins if (j.args.get("method") or "").upper() == "ASOF"]
    if not asof:
        return
    join = asof[0]
    if len(asof) > 1 or joins[0] is not join or not select.args.get("from_"):
        raise EngineError("ASOF JOIN on Spark: only one, directly after FROM, is supported")
    left, right = select.args["from_"].this, join.this
    la, ra = left.alias, right.alias
    if not la or not ra or la == ra:
        raise EngineError("ASOF JOIN on Spark: both sides need (distinct) aliases")
    on = join.args.get("on")
    conds = list(on.flatten()) if isinstance(on, exp.And) else [on]

    def side(e: Any) -> str | None:
        tables = {c.table for c in e.find_all(exp.Column)}
        return tables.pop() if len(tables) == 1 and tables <= {la, ra} else None

    keys: list[tuple[Any, Any]] = []
    times: list[tuple[Any, Any, bool]] = []  # (left time, right time, strict)
    for c in conds:
        a, b = c.this if c else None, c.expression if c else None
        sa, sb = (side(a), side(b)) if c else (None, None)
        if sa is None or sb is None or sa == sb:
            raise EngineError(f"ASOF JOIN on Spark: cannot split condition {c}")
        if sa == ra:  # put the left side first
            a, b = b, a
            flipped = True
        else:
            flipped = False
        if isinstance(c, exp.EQ):
            keys.append((a, b))
        elif isinstance(c, exp.GTE | exp.GT | exp.LTE | exp.LT):
            op = type(c)
            if flipped:
                op = {exp.GTE: exp.LTE, exp.GT: exp.LT, exp.LTE: exp.GTE, exp.LT: exp.GT}[op]
            if op not in (exp.GTE, exp.GT):
                raise EngineError("ASOF JOIN on Spark: only 'left time >= right time' (or >)")
            times.append((a, b, op is exp.GT))
        else:
            raise EngineError(f"ASOF JOIN on Spark: unsupported condition {c}")
    if len(times) != 1:
        raise EngineError("ASOF JOIN on Spark: exactly one inequality is needed")
    lt, rt, strict = times[0]
    # at equal times the R row comes first for >=, after the probe for >
    l_side, r_side = (0, 1) if strict else (1, 0)
    kcols = [f"_aj_k{i}" for i in range(len(keys))]
    lsel = ", ".join(f"{a.sql('duckdb')} AS {k}" for (a, _), k in zip(keys, kcols, strict=True))
    rsel = ", ".join(f"{b.sql('duckdb')} AS {k}" for (_, b), k in zip(keys, kcols, strict=True))
    rok = " AND ".join(f"{k} IS NOT NULL" for k in [*(b.sql("duckdb") for _, b in keys),
                                                    rt.sql("duckdb")])  # fmt: skip
    lok = " AND ".join(f"{k} IS NOT NULL" for k in [*kcols, "_aj_t"])
    inner = "" if join.args.get("side") else " AND _aj_m IS NOT NULL"
    skeleton = sqlglot.parse_one(
        f"""
SELECT _aj_l AS _aj_sl, _aj_m AS _aj_sr FROM (
  SELECT _aj_side, _aj_l, CASE WHEN {lok} THEN last_value(_aj_r IGNORE NULLS) OVER (
      PARTITION BY {", ".join(kcols)} ORDER BY _aj_t, _aj_side
      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) END AS _aj_m
  FROM (
    SELECT {lsel}, {lt.sql("duckdb")} AS _aj_t, {l_side} AS _aj_side,
           _aj_struct_l() AS _aj_l, NULL AS _aj_r FROM _aj_left
    UNION ALL
    SELECT {rsel}, {rt.sql("duckdb")} AS _aj_t, {r_side} AS _aj_side,
           NULL AS _aj_l, CASE WHEN {rok} THEN _aj_struct_r() END AS _aj_r FROM _aj_right
  ) _aj_u
) _aj_w WHERE _aj_side = {l_side}{inner}""",
        read="duckdb",
    )
    # the two struct columns are named after the join's aliases
    outs = skeleton.expressions
    outs[0].set("alias", exp.to_identifier(la))
    outs[1].set("alias", exp.to_identifier(ra))

    def fill(node: Any) -> Any:
        if isinstance(node, exp.Table) and node.name in ("_aj_left", "_aj_right"):
            return (left if node.name == "_aj_left" else right).copy()
        if isinstance(node, exp.Anonymous) and str(node.this) in ("_aj_struct_l", "_aj_struct_r"):
            alias = la if str(node.this) == "_aj_struct_l" else ra
            return exp.Struct(
                expressions=[exp.Column(this=exp.Star(), table=exp.to_identifier(alias))]
            )
        return node

    skeleton = skeleton.transform(fill)
    select.set("from_", exp.From(this=exp.Subquery(this=skeleton, alias=exp.TableAlias(
        this=exp.to_identifier(f"_asof{n}")))))  # fmt: skip
    join.pop()


def _expand_stars(tree: Any, columns: Callable[[str], list[str]] | None) -> None:
    """``SELECT * REPLACE (e AS c) / * EXCLUDE (c) FROM t`` with ``t``'s columns listed."""
    from sqlglot import exp

    for star in list(tree.find_all(exp.Star)):
        replace, exclude = star.args.get("replace"), star.args.get("except_")
        item = star.parent if isinstance(star.parent, exp.Column) else star  # t.* or *
        select = item.parent
        if not isinstance(select, exp.Select) or item not in select.expressions:
            continue
        # with QUALIFY, a star is listed too: SQLGlot's eliminate_qualify would otherwise
        # let its helper column (``_w``) through ``SELECT *``
        qualify = select.args.get("qualify") is not None
        if not (replace or exclude or qualify):
            continue
        qualifier = item.table if item is not star else None
        source = select.args.get("from_")
        tables = [source.this] if source else []
        tables += [j.this for j in select.args.get("joins") or []]
        if qualifier:
            tables = [t for t in tables if t.alias_or_name == qualifier]
        table = tables[0] if len(tables) == 1 else None
        if not isinstance(table, exp.Table) or columns is None:
            if not (replace or exclude):
                continue  # a plain star under QUALIFY over a subquery: left to SQLGlot
            raise EngineError(
                f"'{item.sql('duckdb')}' on Spark needs one table (or a qualifier naming one) "
                "and the table's columns"
            )
        repl = {a.alias.lower(): a for a in replace or []}
        drop = {c.name.lower() for c in exclude or []}
        expanded = [
            repl[c.lower()].copy()
            if c.lower() in repl
            else exp.column(c, table=qualifier, quoted=True)
            for c in columns(table.name)
            if c.lower() not in drop
        ]
        position = select.expressions.index(item)
        select.set(
            "expressions",
            [*select.expressions[:position], *expanded, *select.expressions[position + 1 :]],
        )


def _has_asof(select: Any) -> bool:
    return any(
        (j.args.get("method") or "").upper() == "ASOF" for j in select.args.get("joins") or []
    )


def _spark_ctes(tree: Any) -> None:
    """Drop ``MATERIALIZED`` from CTEs; give CTEs nested in subqueries unique names (the
    Spark generator moves them to the top level)."""
    from sqlglot import exp

    for cte in tree.find_all(exp.CTE):
        cte.set("materialized", None)
    nested = [w for w in tree.find_all(exp.With) if w.parent is not tree]
    nested.sort(key=lambda w: -w.depth)  # innermost first: they shadow outer names
    for i, with_ in enumerate(nested):
        scope = with_.parent
        for cte in with_.expressions:
            old, new = cte.alias, f"_cte{i}_{cte.alias}"
            for table in list(scope.find_all(exp.Table)):
                if table.name == old and not table.args.get("db"):
                    if not table.alias:
                        table.set("alias", exp.TableAlias(this=exp.to_identifier(old)))
                    table.set("this", exp.to_identifier(new))
            cte.set("alias", exp.TableAlias(this=exp.to_identifier(new)))


def split_materialized(sql: str, *, prefix: str = "_wb_cte_") -> tuple[list[tuple[str, str]], str]:
    """Split the top-level ``WITH x AS MATERIALIZED (q)`` CTEs off a DuckDB query.

    Returns:
        ``[(view, q), ...]`` in order, each ``q`` a DuckDB query reading earlier views (and
        the plain CTEs it needs), and the rest of the query reading the views instead of
        the CTEs. Running each ``q`` once into temp view ``view`` gives DuckDB's meaning of
        ``MATERIALIZED``: computed once, whatever the number of references.
    """
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="duckdb")
    with_ = tree.args.get("with_")
    ctes = list(with_.expressions) if with_ else []
    if not any(c.args.get("materialized") for c in ctes):
        return [], sql
    tag = prefix + uuid.uuid4().hex[:8] + "_"
    views = {c.alias: tag + c.alias for c in ctes if c.args.get("materialized")}

    def shadowed(table: Any) -> bool:
        node = table.parent
        while node is not None and node is not tree:
            inner = node.args.get("with_") if isinstance(node, exp.Query) else None
            if inner is not None and any(c.alias == table.name for c in inner.expressions):
                return True
            node = node.parent
        return False

    def to_views(node: Any) -> None:
        for table in list(node.find_all(exp.Table)):
            if table.name in views and not table.args.get("db") and not shadowed(table):
                if not table.alias:
                    table.set("alias", exp.TableAlias(this=exp.to_identifier(table.name)))
                table.set("this", exp.to_identifier(views[table.name]))

    steps: list[tuple[str, str]] = []
    plain: list[Any] = []
    for cte in ctes:
        to_views(cte.this)
        if cte.args.get("materialized"):
            query = cte.this.copy()
            if plain:
                own = query.args.get("with_")
                query.set("with_", exp.With(expressions=[
                    *(c.copy() for c in plain), *(own.expressions if own else [])]))  # fmt: skip
            steps.append((views[cte.alias], query.sql(dialect="duckdb")))
        else:
            plain.append(cte)
    body = tree.copy()
    body.set("with_", None)
    to_views(body)
    if plain:
        body.set("with_", exp.With(expressions=[c.copy() for c in plain]))
    return steps, body.sql(dialect="duckdb")


def _expand_macros(tree: Any, macros: dict[str, tuple[list[str], str]]) -> Any:
    """Inline calls of DuckDB ``TEMP MACRO``s (name -> (parameters, body in DuckDB SQL))."""
    import sqlglot
    from sqlglot import exp

    def inline(node: Any) -> Any:
        if not isinstance(node, exp.Anonymous) or str(node.this).lower() not in macros:
            return node
        params, body = macros[str(node.this).lower()]
        if len(node.expressions) != len(params):
            raise EngineError(f"macro {node.this} takes {len(params)} argument(s)")
        args = dict(zip(params, node.expressions, strict=True))
        expr = sqlglot.parse_one(body, read="duckdb")
        return exp.Paren(this=expr.transform(
            lambda n: args[n.name].copy()
            if isinstance(n, exp.Column) and not n.table and n.name in args else n))  # fmt: skip

    for _ in range(8):  # macros calling macros
        before = tree.sql()
        tree = tree.transform(inline)
        if tree.sql() == before:
            break
    return tree


def _json_transforms(tree: Any) -> Any:
    """``json_transform(x, '<spec>')`` as Spark's ``from_json`` (:func:`spark_json_transform`)."""
    import json

    import sqlglot
    from sqlglot import exp

    def rewrite(node: Any) -> Any:
        if not (isinstance(node, exp.Anonymous) and str(node.this).lower() == "json_transform"):
            return node
        x, spec = node.expressions
        if not (isinstance(spec, exp.Literal) and spec.is_string):
            raise EngineError("json_transform on Spark needs a literal spec")
        expr = sqlglot.parse_one(
            spark_json_transform("_wb_json_arg", json.loads(spec.this)), read="spark"
        )
        return expr.transform(
            lambda n: x.copy() if isinstance(n, exp.Column) and n.name == "_wb_json_arg" else n
        )

    return tree.transform(rewrite)


def to_spark_sql(
    sql: str,
    *,
    columns: Callable[[str], list[str]] | None = None,
    macros: dict[str, tuple[list[str], str]] | None = None,
) -> str:
    """Transpile one DuckDB statement to Spark SQL (see the module docstring for the rules).

    Args:
        sql: One DuckDB statement.
        columns: Table name -> its column names, for ``* REPLACE (...)`` / ``* EXCLUDE``.
        macros: DuckDB macros to inline: name (lower case) -> (parameters, body).

    Raises:
        EngineError: SQLGlot is not installed.
    """
    try:
        import sqlglot
        from sqlglot import exp
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise EngineError(
            "the Spark engine needs sqlglot: pip install 'billing-workbench[spark]'"
        ) from e
    tree = sqlglot.parse_one(sql, read="duckdb")
    if macros:
        tree = _expand_macros(tree, macros)
    tree = _json_transforms(tree)
    _expand_stars(tree, columns)
    _double_division(tree)
    for select in list(tree.find_all(exp.Select)):
        _lateral_series(select)
    for n, select in enumerate(s for s in list(tree.find_all(exp.Select)) if _has_asof(s)):
        _asof_join(select, n)
    _spark_ctes(tree)
    # rewrites copy subtrees (a // b repeats its operands), so repeat until nothing changes
    for _ in range(8):
        before = tree.sql()
        tree = tree.transform(_rewrite_node)
        if tree.sql() == before:
            break
    return tree.sql(dialect="spark", identify=True)


# --------------------------------------------------------------------------- JSON


def _json_schema(spec: Any, leaf: Callable[[str], str | None]) -> str | None:
    """Spark DDL type of a DuckDB ``json_transform`` spec, leaves typed by ``leaf``
    (None drops the leaf); None when nothing is left."""
    if isinstance(spec, dict):
        fields = [(k, _json_schema(v, leaf)) for k, v in spec.items()]
        kept = [f"`{k}`: {t}" for k, t in fields if t is not None]
        return f"STRUCT<{', '.join(kept)}>" if kept else None
    if isinstance(spec, list):
        inner = _json_schema(spec[0], leaf)
        return f"ARRAY<{inner}>" if inner is not None else None
    return leaf(spec.upper())


def _json_quote(s: str) -> str:
    """Spark SQL: the JSON text of string ``s`` as DuckDB writes it (quoted, escaped)."""
    out = s
    for char, esc in ((92, "chr(92), chr(92)"), (34, "chr(92), chr(34)"),
                      (10, "chr(92), 'n'"), (13, "chr(92), 'r'"), (9, "chr(92), 't'")):  # fmt: skip
        out = f"replace({out}, chr({char}), concat({esc}))"
    return f"concat(chr(34), {out}, chr(34))"


def _json_build(spec: Any, e: str, num: str | None, boo: str | None, depth: int = 0) -> str:
    """Spark SQL rebuilding DuckDB's ``json_transform`` value from the parses ``e`` (every
    leaf as text), ``num`` (JSON and BOOLEAN leaves as DOUBLE: non-null for numbers) and
    ``boo`` (JSON leaves as BOOLEAN: non-null for true/false)."""
    if isinstance(spec, dict):
        parts = []
        for k, v in spec.items():
            sub_num = f"{num}.`{k}`" if num and _json_schema(v, _num_leaf) else None
            sub_boo = f"{boo}.`{k}`" if boo and _json_schema(v, _boo_leaf) else None
            parts.append(f"'{k}', {_json_build(v, f'{e}.`{k}`', sub_num, sub_boo, depth)}")
        return f"CASE WHEN {e} IS NULL THEN NULL ELSE named_struct({', '.join(parts)}) END"
    if isinstance(spec, list):
        x, i = f"_wb_x{depth}", f"_wb_i{depth}"
        sub_num = f"{num}[{i}]" if num else None
        sub_boo = f"{boo}[{i}]" if boo else None
        body = _json_build(spec[0], x, sub_num, sub_boo, depth + 1)
        return f"transform({e}, ({x}, {i}) -> {body})"
    kind = spec.upper()
    if kind == "JSON":
        return (
            f"CASE WHEN {e} IS NULL THEN NULL WHEN {num} IS NOT NULL OR {boo} IS NOT NULL "
            f"OR left({e}, 1) IN ('{{', '[') THEN {e} ELSE {_json_quote(e)} END"
        )
    if kind == "BOOLEAN":
        return (
            f"CASE WHEN {num} IS NOT NULL THEN {num} <> 0 "
            f"WHEN lower({e}) IN ('true', 't', 'yes', 'y', '1') THEN true "
            f"WHEN lower({e}) IN ('false', 'f', 'no', 'n', '0') THEN false END"
        )
    if kind == "VARCHAR":
        return e
    raise EngineError(f"json_transform on Spark: type {spec!r} is not supported")


def _text_leaf(kind: str) -> str:
    return "STRING"


def _num_leaf(kind: str) -> str | None:
    return "DOUBLE" if kind in ("JSON", "BOOLEAN") else None


def _boo_leaf(kind: str) -> str | None:
    return "BOOLEAN" if kind == "JSON" else None


_JSON_OPTS = "map('allowNonNumericNumbers', 'false', 'mode', 'PERMISSIVE')"


def spark_json_transform(x: str, spec: Any) -> str:
    """Spark SQL for DuckDB's ``json_transform(x, spec)`` (``spec`` decoded from its JSON).

    ``x`` is parsed by ``from_json`` three times: once with every leaf as text, and twice
    as probes (leaves as DOUBLE, as BOOLEAN) that say which JSON token a leaf held, so a
    ``JSON`` leaf reads as DuckDB's JSON text (numbers as written back by the parser,
    strings quoted and escaped, objects and arrays compact) and a ``BOOLEAN`` leaf follows
    DuckDB's casts (numbers: non-zero; strings: true/t/yes/y/1, false/f/no/n/0). Text that
    is not JSON (or is ``null``) gives NULL, as ``try(json_transform(...))``. The parses are
    bound once per row through a one-element ``transform``.
    """
    text = _json_schema(spec, _text_leaf)
    num = _json_schema(spec, _num_leaf)
    boo = _json_schema(spec, _boo_leaf)
    parses = [f"'e', from_json({x}, '{text}', {_JSON_OPTS})"]
    if num:
        parses.append(f"'n', from_json({x}, '{num}', {_JSON_OPTS})")
    if boo:
        parses.append(f"'b', from_json({x}, '{boo}', {_JSON_OPTS})")
    body = _json_build(spec, "_wb_p.e", "_wb_p.n" if num else None, "_wb_p.b" if boo else None)
    return (
        f"CASE WHEN get_json_object({x}, '$') IS NULL THEN NULL ELSE "
        f"transform(array(named_struct({', '.join(parses)})), _wb_p -> {body})[0] END"
    )


# --------------------------------------------------------------------------- Spark


def _bind(sql: str, params: list[Any] | dict[str, Any]) -> str:
    """``sql`` with its placeholders replaced by ``params`` as SQL literals: ``?`` by a list's
    values in order, ``$name`` by a dict's (as DuckDB binds them)."""
    import sqlglot
    from sqlglot import exp

    values = iter(params) if isinstance(params, list | tuple) else None

    def literal(node: Any) -> Any:
        if not isinstance(node, exp.Placeholder):
            return node
        if values is not None:
            return exp.convert(next(values))
        name = node.args.get("this")
        if name is None or name not in params:
            raise EngineError(f"no value for parameter ${name} in {sorted(params)}")
        return exp.convert(params[name])

    return sqlglot.parse_one(sql, read="duckdb").transform(literal).sql("duckdb")


class SparkResult:
    """Rows of a Spark query, fetched on demand through Arrow (timestamps in UTC)."""

    def __init__(self, frame: DataFrame | None, *, owns: Iterable[DataFrame] = ()) -> None:
        self._frame = frame
        self._pdf: pd.DataFrame | None = None
        #: materialised inputs only this query reads: freed once its rows are fetched
        self._owns = list(owns)

    @property
    def description(self) -> list[tuple[Any, ...]] | None:
        """DB-API column descriptions (name, type name, then five Nones), as DuckDB's."""
        if self._frame is None:
            return None
        return [
            (f.name, f.dataType.simpleString(), None, None, None, None, None)
            for f in self._frame.schema.fields
        ]

    def _rows(self) -> pd.DataFrame:
        """All rows as Spark's ``toPandas`` gives them (dates as ``datetime.date``)."""
        if self._frame is None:
            return pd.DataFrame()
        if self._pdf is None:
            try:
                self._pdf = self._frame.toPandas()
            finally:
                for frame in self._owns:
                    _release(frame)
                self._owns = []
        return self._pdf

    def df(self) -> pd.DataFrame:
        """All rows as pandas, typed as DuckDB's ``df()`` types them: dates as
        ``datetime64[us]`` (Spark gives ``datetime.date`` objects), timestamps naive UTC."""
        pdf = self._rows()
        if self._frame is None:
            return pdf
        from pyspark.sql.types import DateType

        dates = [f.name for f in self._frame.schema.fields if isinstance(f.dataType, DateType)]
        if not dates or len(set(pdf.columns)) != len(pdf.columns):
            return pdf
        return pdf.assign(**{c: pd.to_datetime(pdf[c]).astype("datetime64[us]") for c in dates})

    def fetchdf(self) -> pd.DataFrame:
        """Same as :meth:`df` (DuckDB's other name for it)."""
        return self.df()

    def arrow(self) -> pa.Table:
        """Same as :meth:`to_arrow_table` (DuckDB's other name for it)."""
        return self.to_arrow_table()

    def to_arrow_table(self) -> pa.Table:
        """All rows as an Arrow table (timestamps in UTC), like DuckDB's."""
        import pyarrow as pa

        if self._frame is None:
            return pa.table({})
        try:
            batches = self._frame._collect_as_arrow()
        finally:
            for frame in self._owns:
                _release(frame)
            self._owns = []
        schema = None
        if not batches:
            from pyspark.sql.pandas.types import to_arrow_schema

            schema = to_arrow_schema(self._frame.schema)
        return pa.Table.from_batches(batches, schema=schema)

    def fetchall(self) -> list[tuple[Any, ...]]:
        """All rows as tuples of Python values (NaN/NaT as None; integers stay integers
        in a column with NULLs, which pandas would hold as floats; dates as
        ``datetime.date`` and timestamps as UTC-aware ``datetime``, as DuckDB gives them
        for ``DATE`` and ``TIMESTAMPTZ``)."""
        pdf = self._rows()
        if self._frame is not None:
            from pyspark.sql.types import IntegralType, TimestampType

            fields = self._frame.schema.fields
            ints = [f.name for f in fields if isinstance(f.dataType, IntegralType)]
            stamps = [f.name for f in fields if isinstance(f.dataType, TimestampType)]
            if (ints or stamps) and len(set(pdf.columns)) == len(pdf.columns):
                pdf = pdf.astype({c: "Int64" for c in ints if pdf[c].dtype.kind == "f"})
                # Spark's TIMESTAMP is an instant (DuckDB's TIMESTAMPTZ): aware, in UTC
                pdf = pdf.assign(
                    **{c: pd.to_datetime(pdf[c]).dt.tz_localize("UTC") for c in stamps}
                )
        rows = pdf.astype(object).where(pdf.notna(), None).itertuples(index=False, name=None)
        return [tuple(_py(v) for v in row) for row in rows]

    def fetchone(self) -> tuple[Any, ...] | None:
        """The first row, or None."""
        rows = self.fetchall()
        return rows[0] if rows else None

    def fetchnumpy(self) -> dict[str, Any]:
        """All rows as one numpy array per column."""
        pdf = self.df()
        return {c: pdf[c].to_numpy() for c in pdf.columns}


def _declared_key(create: Any) -> tuple[str, ...]:
    """The PRIMARY KEY a ``CREATE TABLE (...)`` declares (table or column constraint)."""
    from sqlglot import exp

    for e in create.this.expressions:
        if isinstance(e, exp.PrimaryKey):
            return tuple(c.name for c in e.expressions)
    return tuple(
        e.this.name
        for e in create.this.expressions
        if isinstance(e, exp.ColumnDef)
        and any(
            isinstance(c.args.get("kind"), exp.PrimaryKeyColumnConstraint) for c in e.constraints
        )
    )


def _release(frame: DataFrame) -> None:
    """Free the rows of a local checkpoint that nothing else reads any more (a
    ``MATERIALIZED`` CTE once its query has run): ``DataFrame.unpersist`` only uncaches
    ``cache()``d frames, a checkpoint's blocks belong to its RDD. Replaced temp tables are
    left to Spark's cleaner instead: a result fetched lazily may still read them."""
    try:
        frame._jdf.queryExecution().logical().rdd().unpersist(False)
    except Exception:  # noqa: BLE001 - not a checkpoint: nothing of ours to free
        frame.unpersist()


def _py(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value.item() if hasattr(value, "item") else value


class SparkEngine:
    """Apache Spark through a SparkSession: temp views for tables, SQL transpiled from DuckDB."""

    name = "spark"

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark
        self._materialised: dict[str, DataFrame] = {}
        #: tables (lower case) replaced, created or dropped since :meth:`reset_changes`, and
        #: those that are temporary (``CREATE TEMP``, registered frames)
        self.changed: set[str] = set()
        self.dropped: set[str] = set()
        self.temporary: set[str] = set()
        #: extra primary keys for ``INSERT OR REPLACE`` (table name in lower case -> key)
        self.keys: dict[str, tuple[str, ...]] = {}
        #: ``CREATE TEMP MACRO``s run on this engine, inlined into later statements
        self.macros: dict[str, tuple[list[str], str]] = {}
        # a JSON value of the wrong shape nulls only itself (as in DuckDB's json_transform),
        # not the whole enclosing object
        spark.conf.set("spark.sql.json.enablePartialResults", "true")

    def execute(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> Result:
        """Run one DuckDB-dialect statement on Spark (CREATE TEMP TABLE materialises);
        ``?`` (a list) or ``$name`` (a dict) placeholders are bound to ``params`` as SQL
        literals."""
        if params:
            sql = _bind(sql, params)
        macro = _MACRO.match(sql)
        if macro:
            params = [a.strip() for a in macro.group(2).split(",") if a.strip()]
            self.macros[macro.group(1).lower()] = (params, macro.group(3))
            return SparkResult(None)
        if _SET_UTC.match(sql):
            return SparkResult(None)  # the session always runs in UTC (spark_session)
        describe = _DESCRIBE.match(sql)
        if describe:  # column_name, column_type (Spark's type names)
            fields = self.spark.table(describe.group(1)).schema.fields
            rows = [(f.name, f.dataType.simpleString()) for f in fields]
            return SparkResult(
                self.spark.createDataFrame(rows, "column_name string, column_type string")
            )
        drop = _DROP.match(sql)
        if drop:
            self.drop_table(drop.group(1))
            return SparkResult(None)
        if _DML.match(sql):
            self._dml(sql)
            return SparkResult(None)
        create = _CREATE.match(sql)
        if create:
            replace, temp, if_not_exists, name, query = create.groups()
            if self._exists(name):
                if if_not_exists:
                    return SparkResult(None)
                if not replace and name.lower() not in self.temporary:
                    raise EngineError(f"table {name} already exists")
            self._replace(name, *self._plan(query))
            self._mark(name, temporary=bool(temp))
            return SparkResult(None)
        frame, inputs = self._plan(sql)
        return SparkResult(frame, owns=inputs)

    def sql(self, query: str) -> Result:
        """Rows of a DuckDB-dialect query, fetched lazily (as DuckDB's ``con.sql``)."""
        return self.execute(query)

    def _plan(self, sql: str) -> tuple[DataFrame, list[DataFrame]]:
        """The Spark frame of a DuckDB query, its ``MATERIALIZED`` CTEs computed first (once
        each, local checkpoints; see :func:`split_materialized`). Their temp views are only
        needed while the query is resolved; the checkpoints are returned for the caller to
        free once the query has run."""
        steps, sql = split_materialized(sql)
        inputs: list[DataFrame] = []
        try:
            for view, query in steps:
                cte = self.spark.sql(to_spark_sql(query, columns=self.columns, macros=self.macros))
                cte = cte.localCheckpoint(eager=True)
                cte.createOrReplaceTempView(view)
                inputs.append(cte)
            return self.spark.sql(
                to_spark_sql(sql, columns=self.columns, macros=self.macros)
            ), inputs
        except Exception:
            for f in inputs:
                _release(f)
            raise
        finally:
            for view, _ in steps:
                self.spark.catalog.dropTempView(view)

    def _dml(self, sql: str) -> None:
        """``CREATE TEMP TABLE t (col type, ...)``, ``DELETE FROM t [WHERE c]`` and ``INSERT
        [OR REPLACE] INTO t [BY NAME] <query | VALUES>`` on temp views: each computes the
        table's new rows and materialises them as ``t`` (see the module docstring)."""
        import sqlglot
        from pyspark.sql import functions as F
        from sqlglot import exp

        stmt = sqlglot.parse_one(sql, read="duckdb")
        if isinstance(stmt, exp.Update):
            self._update(stmt)
            return
        if isinstance(stmt, exp.Create):
            name = stmt.this.this.name
            key = _declared_key(stmt)
            if key and name.lower() not in self.primary_keys():
                self.keys[name.lower()] = key  # for INSERT OR REPLACE, as DuckDB knows it
            if stmt.args.get("exists") and self._exists(name):
                return  # CREATE TABLE IF NOT EXISTS
            temporary = any(
                isinstance(p, exp.TemporaryProperty)
                for p in (stmt.args.get("properties") or exp.Properties()).expressions
            )
            cols = [c for c in stmt.this.expressions if isinstance(c, exp.ColumnDef)]
            query = "SELECT " + ", ".join(
                f"CAST(NULL AS {c.args['kind'].sql('duckdb')}) AS {c.this.sql('duckdb')}"
                for c in cols
            )
            self._replace(name, self.spark.sql(to_spark_sql(query)).limit(0))
            self._mark(name, temporary=temporary)
            return
        target = stmt.this
        names = None
        if isinstance(target, exp.Schema):  # INSERT INTO t (a, b) ...
            names = [c.name for c in target.expressions]
            target = target.this
        table = target.name
        old = self.spark.table(table)
        if isinstance(stmt, exp.Delete):
            where = stmt.args.get("where")
            keep = f"({where.this.sql('duckdb')}) IS NOT TRUE" if where else "false"
            frame, inputs = self._plan(f"SELECT * FROM {table} WHERE {keep}")
            self._replace(table, frame, inputs)
            return
        source = stmt.expression
        query = source.sql("duckdb")
        if isinstance(source, exp.Values):
            query = f"SELECT * FROM ({query}) AS _values"
        new, inputs = self._plan(query)
        by_name = {c.lower(): c for c in new.columns}
        if stmt.args.get("by_name"):
            extra = set(by_name) - {c.lower() for c in old.columns}
            if extra:
                raise EngineError(f"INSERT INTO {table} BY NAME: no column(s) {sorted(extra)}")
        else:
            given = names or old.columns[: len(new.columns)]
            new = new.toDF(*[f"_c{i}" for i in range(len(new.columns))])  # names may repeat
            by_name = {g.lower(): c for g, c in zip(given, new.columns, strict=True)}
        rows = new.select(
            *[
                (
                    F.col(f"`{by_name[f.name.lower()]}`")
                    if f.name.lower() in by_name
                    else F.lit(None)
                )
                .cast(f.dataType)
                .alias(f.name)
                for f in old.schema.fields
            ]
        )
        replace = (stmt.args.get("alternative") or "").upper() == "REPLACE"
        conflict = stmt.args.get("conflict")
        if replace or conflict is not None:
            keys = self.primary_keys().get(table.lower())
            what = "OR REPLACE INTO" if replace else "INTO ... ON CONFLICT"
            if not keys:
                raise EngineError(f"INSERT {what} {table}: its primary key is unknown")
            rows = _first_per_key(rows, keys, table)
        if replace:
            missing = [c for c in old.columns if c.lower() not in by_name]
            if missing:  # as DuckDB: a replaced row keeps the columns the INSERT does not set
                prev = old.select(*keys, *[F.col(f"`{c}`").alias(f"_prev_{c}") for c in missing])
                rows = rows.join(prev, on=list(keys), how="left").select(
                    *[F.col(f"`_prev_{c}`" if c in missing else f"`{c}`").alias(c)
                      for c in old.columns]
                )  # fmt: skip
            kept = old.join(rows.select(*keys).distinct(), on=list(keys), how="left_anti")
            old = kept.select(*[f"`{c}`" for c in old.columns])  # the join put keys first
        if conflict is not None:
            action = conflict.args.get("action")
            if "NOTHING" not in (action.sql("duckdb") if action is not None else "").upper():
                raise EngineError(f"INSERT INTO {table} ON CONFLICT: only DO NOTHING is supported")
            rows = rows.join(old.select(*keys), on=list(keys), how="left_anti")
            rows = rows.select(*[f"`{c}`" for c in old.columns])
        table_rows = old.unionByName(rows)
        keys = self.enforced_keys().get(table.lower())
        if keys and not replace and conflict is None:  # the others are unique by construction
            table_rows = _check_key(table_rows, keys, table)
        try:
            self._replace(table, table_rows, inputs)
        except Exception as e:
            if _KEY_ERROR in str(e):
                import duckdb

                message = str(e)[str(e).index(_KEY_ERROR) + len(_KEY_ERROR) :]
                raise duckdb.ConstraintException(message.split("\n")[0].strip()) from None
            raise

    def _update(self, stmt: Any) -> None:
        """``UPDATE t [AS a] SET c = e, ... [FROM r [AS b], ...] [WHERE w]``: each row of ``t``
        that some row of ``r`` matches takes the values ``e`` computed from one such row
        (which one is unspecified when several match, as in DuckDB); the others stay."""
        from pyspark.sql import functions as F

        table = stmt.this.name
        alias = stmt.this.alias_or_name
        rid, hit = "_wb_rid", "_wb_hit"
        base = self.spark.table(table).withColumn(rid, F.monotonically_increasing_id())
        base = base.localCheckpoint(eager=True)  # the row ids must not be recomputed
        view = f"_wb_update_{uuid.uuid4().hex[:8]}"
        base.createOrReplaceTempView(view)
        sets = [(eq.this.name, eq.expression.sql("duckdb")) for eq in stmt.expressions]
        select = ", ".join(
            [f"{alias}.{rid}", f"true AS {hit}"]
            + [f"{e} AS _wb_set_{i}" for i, (_, e) in enumerate(sets)]
        )
        source = stmt.args.get("from_") or stmt.args.get("from")
        joins = f", {source.this.sql('duckdb')}" if source is not None else ""
        where = stmt.args.get("where")
        query = (
            f"SELECT {select} FROM {view} AS {alias}{joins} {where.sql('duckdb') if where else ''}"
        )
        try:
            matched, inputs = self._plan(query)
            matched = matched.groupBy(rid).agg(
                *[F.first(c).alias(c) for c in matched.columns if c != rid]
            )
            joined = base.join(matched, on=rid, how="left")
            assigned = {name.lower(): i for i, (name, _) in enumerate(sets)}
            fields = self.spark.table(table).schema.fields
            rows = joined.select(
                *[
                    F.when(
                        F.col(hit), F.col(f"_wb_set_{assigned[f.name.lower()]}").cast(f.dataType)
                    )
                    .otherwise(F.col(f"`{f.name}`"))
                    .alias(f.name)
                    if f.name.lower() in assigned
                    else F.col(f"`{f.name}`")
                    for f in fields
                ]
            )
        except Exception:
            _release(base)
            raise
        else:
            self._replace(table, rows, [*inputs, base])
        finally:
            self.spark.catalog.dropTempView(view)

    def _replace(
        self, name: str, frame: DataFrame, inputs: Iterable[DataFrame] = ()
    ) -> None:  # fmt: skip
        """Materialise ``frame`` as the new rows of temp view ``name``; free the old ones."""
        try:
            frame = frame.localCheckpoint(eager=True)
        finally:
            for f in inputs:
                _release(f)
        self.drop(name)
        frame.createOrReplaceTempView(name)
        self._materialised[name] = frame
        self.changed.add(name.lower())

    def _mark(self, name: str, *, temporary: bool) -> None:
        """Record whether table ``name`` is temporary (not one of :attr:`persistent`)."""
        if temporary:
            self.temporary.add(name.lower())
        else:
            self.temporary.discard(name.lower())

    def _exists(self, name: str) -> bool:
        return bool(self.spark.catalog.tableExists(name))

    @property
    def persistent(self) -> set[str]:
        """Tables (lower case) created or changed since :meth:`reset_changes` that are not
        temporary (``CREATE TEMP``, :meth:`register`): what a warehouse keeps (see
        :class:`workbench.lakehouse.SparkWarehouse`)."""
        return self.changed - self.temporary

    def reset_changes(self) -> None:
        """Forget which tables changed (the current ones are the baseline)."""
        self.changed.clear()
        self.dropped.clear()

    def primary_keys(self) -> dict[str, tuple[str, ...]]:
        """Table name (lower case) -> primary key, for ``INSERT OR REPLACE``: the canonical
        tables' and ingestion's tables' keys, plus :attr:`keys` set on the engine."""
        from .ingest.tables import INTERNAL
        from .schema import TABLES

        known = {n.lower(): t.primary_key for n, t in {**TABLES, **INTERNAL}.items()}
        return {**{k: v for k, v in known.items() if v}, **self.keys}

    def enforced_keys(self) -> dict[str, tuple[str, ...]]:
        """Table name (lower case) -> primary key DuckDB enforces (declared in its DDL: not
        for tables whose writer guarantees the key, ``enforce_key=False``), plus
        :attr:`keys`: a plain ``INSERT`` that would give two rows one key, or a NULL key,
        fails as on DuckDB."""
        from .ingest.tables import INTERNAL
        from .schema import TABLES

        known = {
            n.lower(): t.primary_key
            for n, t in {**TABLES, **INTERNAL}.items()
            if t.primary_key and getattr(t, "enforce_key", True)
        }
        return {**known, **self.keys}

    def columns(self, table: str) -> list[str]:
        """Column names of table or view ``table``."""
        return self.spark.table(table).columns

    def drop(self, name: str) -> None:
        """Drop temp view ``name`` (and free its materialised rows) if it exists."""
        frame = self._materialised.pop(name, None)
        if frame is not None:
            frame.unpersist()
        self.spark.catalog.dropTempView(name)

    def drop_table(self, name: str) -> None:
        """``DROP TABLE``: drop ``name`` and remember it (a warehouse forgets it too)."""
        self.drop(name)
        if name.lower() not in self.temporary:
            self.dropped.add(name.lower())
        self.changed.discard(name.lower())
        self.temporary.discard(name.lower())

    def register(self, name: str, frame: pd.DataFrame | pa.Table | DataFrame) -> None:
        """Expose a pandas frame, an Arrow table or a Spark frame as temp view ``name``."""
        import pyarrow as pa

        if isinstance(frame, pa.Table):
            self.register_arrow(name, frame)
            return
        if isinstance(frame, pd.DataFrame):
            if frame.empty:  # no rows to infer types from: Arrow's, with text for unknown
                self.register_arrow(name, pa.Table.from_pandas(frame, preserve_index=False))
                return
            frame = self.spark.createDataFrame(_spark_ready(frame))
        frame.createOrReplaceTempView(name)
        self._mark(name, temporary=True)

    def unregister(self, name: str) -> None:
        """Remove temp view ``name`` (same as :meth:`drop`)."""
        self.drop(name)

    def register_arrow(self, name: str, table: pa.Table) -> None:
        """Expose an Arrow table as temp view ``name``, keeping its column types
        (JSON and other extension types become strings)."""
        import pyarrow as pa
        from pyspark.sql.pandas.types import from_arrow_schema

        fields = [
            pa.field(f.name, pa.string())
            if isinstance(f.type, pa.ExtensionType)
            or pa.types.is_large_string(f.type)
            or pa.types.is_null(f.type)
            else f
            for f in table.schema
        ]
        table = table.cast(pa.schema(fields))
        schema = from_arrow_schema(table.schema)
        frame = self.spark.createDataFrame(_spark_ready(table.to_pandas()), schema=schema)
        frame.createOrReplaceTempView(name)
        self._mark(name, temporary=True)

    def fetch_df(self, sql: str) -> pd.DataFrame:
        """Rows of a DuckDB-dialect query as pandas."""
        return self.execute(sql).df()

    def register_parquet(self, name: str, path: str) -> None:
        """Expose Parquet files (a lake table on HDFS/S3/local disk) as temp view ``name``."""
        self.spark.read.parquet(path).createOrReplaceTempView(name)
        self._mark(name, temporary=True)


#: marks the errors :func:`_check_key` and :func:`_first_per_key` raise inside a Spark job
_KEY_ERROR = "wb-constraint: "


def _key_text(keys: Iterable[str]) -> Any:
    """DuckDB's rendering of a key in a constraint error: ``k1: v1, k2: v2``."""
    from pyspark.sql import functions as F

    return F.concat_ws(
        ", ", *[F.concat(F.lit(f"{k}: "), F.coalesce(F.col(f"`{k}`").cast("string"), F.lit("NULL")))
                for k in keys]
    )  # fmt: skip


def _null_key(keys: Iterable[str], table: str) -> Any:
    """A condition raising DuckDB's NOT NULL error when a key column of the row is NULL."""
    from pyspark.sql import functions as F

    check = None
    for k in keys:
        hit = F.when(
            F.col(f"`{k}`").isNull(),
            F.raise_error(F.lit(f"{_KEY_ERROR}Constraint Error: NOT NULL constraint failed: {table}.{k}")),
        )  # fmt: skip
        check = hit if check is None else F.coalesce(check, hit)
    return check


def _first_per_key(rows: DataFrame, keys: tuple[str, ...], table: str) -> DataFrame:
    """Of the rows sharing a primary key, the first in the query's order (DuckDB's ``INSERT OR
    REPLACE`` and ``ON CONFLICT DO NOTHING`` take the first and ignore the others); a NULL key
    fails as DuckDB's NOT NULL constraint does."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    seq, first = "_wb_seq", "_wb_first"
    cols = rows.columns
    rows = rows.withColumn(seq, F.monotonically_increasing_id())
    order = Window.partitionBy(*[F.col(f"`{k}`") for k in keys]).orderBy(seq)
    rows = rows.withColumn(first, F.row_number().over(order) == 1).filter(F.col(first))
    rows = rows.withColumn(first, _null_key(keys, table))
    return rows.filter(F.col(first).isNull()).select(*[f"`{c}`" for c in cols])


def _check_key(rows: DataFrame, keys: tuple[str, ...], table: str) -> DataFrame:
    """``rows``, failing (inside the job that materialises them) as DuckDB's primary key does:
    two rows with one key, or a NULL key."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cols, n, bad = rows.columns, "_wb_n", "_wb_bad"
    rows = rows.withColumn(
        n, F.count(F.lit(1)).over(Window.partitionBy(*[F.col(f"`{k}`") for k in keys]))
    )
    dup = F.when(
        F.col(n) > 1,
        F.raise_error(F.concat(F.lit(f'{_KEY_ERROR}Constraint Error: Duplicate key "'), _key_text(keys),
                               F.lit('" violates primary key constraint.'))),
    )  # fmt: skip
    rows = rows.withColumn(bad, F.coalesce(_null_key(keys, table), dup))
    return rows.filter(F.col(bad).isNull()).select(*[f"`{c}`" for c in cols])


def _spark_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy Spark's Arrow path accepts: JSON/objects of mixed types become strings."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            sample = out[col].dropna()
            if not sample.empty and isinstance(sample.iloc[0], dict | list):
                out[col] = out[col].map(lambda v: None if v is None else str(v))
    return out


def java_available() -> bool:
    """True when a Java runtime is on PATH or JAVA_HOME (Spark needs Java 17)."""
    home = os.environ.get("JAVA_HOME")
    return bool(
        shutil.which("java") or (home and os.path.exists(os.path.join(home, "bin", "java")))
    )


def spark_session(master: str = "local[2]", *, app_name: str = "billing-workbench",
                  conf: dict[str, str] | None = None) -> SparkSession:  # fmt: skip
    """Get or create the SparkSession the workbench uses (UTC session time zone).

    Args:
        master: a Spark master URL (``local[2]``, ``spark://host:7077``, ``yarn``,
            ``k8s://https://...``).
        app_name: the application name shown in the Spark UI.
        conf: extra Spark settings (e.g. ``{"spark.executor.memory": "8g"}``).

    Raises:
        EngineError: pyspark or Java is missing.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise EngineError(
            "engine = 'spark' needs pyspark: pip install 'billing-workbench[spark]' "
            "(and a Java 17 runtime, e.g. apt-get install openjdk-17-jre-headless)"
        ) from e
    if master.startswith("local") and not java_available():
        raise EngineError(
            "engine = 'spark' needs a Java 17 runtime on PATH or JAVA_HOME "
            "(Debian: apt-get install openjdk-17-jre-headless)"
        )
    if master.startswith("local"):
        # Python UDF workers (the distributed forecast) must use this interpreter's packages
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    settings = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.ansi.enabled": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": "8",
        "spark.ui.showConsoleProgress": "false",
        **(conf or {}),
    }
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def get_engine(
    settings: Settings | None = None, *, con: duckdb.DuckDBPyConnection | None = None
) -> Engine:
    """The engine chosen by configuration (``engine``, ``spark_master`` in Settings).

    Args:
        settings: effective settings (default: :func:`workbench.config.load_settings`).
        con: the DuckDB connection to wrap when the engine is DuckDB (default: the
            warehouse file named by the settings).
    """
    from .config import load_settings

    settings = settings or load_settings()
    if settings.engine == "spark":
        return SparkEngine(spark_session(settings.spark_master))
    if con is None:
        con = duckdb.connect(str(settings.warehouse_path))
    return DuckDBEngine(con)


def temp_views(spark: SparkSession) -> list[str]:
    """The temp views of a Spark session, in lower case (``SHOW TABLES``: the catalog's
    ``listTables`` fails on some sessions in PySpark 3.5)."""
    rows = spark.sql("SHOW TABLES").collect()
    return [r["tableName"].lower() for r in rows if r["isTemporary"]]


def table_names(con: duckdb.DuckDBPyConnection | Engine) -> set[str]:
    """The tables and views of a DuckDB connection, or an engine's temp views, in lower case."""
    if isinstance(con, SparkEngine):
        return set(temp_views(con.spark))
    if isinstance(con, DuckDBEngine):
        con = con.con
    rows = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    return {r[0].lower() for r in rows}


def column_types(con: duckdb.DuckDBPyConnection | Engine) -> dict[str, dict[str, str]]:
    """Table name -> column name -> type name (the engine's own type names)."""
    out: dict[str, dict[str, str]] = {}
    if isinstance(con, SparkEngine):
        for table in table_names(con):
            fields = con.spark.table(table).schema.fields
            out[table] = {f.name: f.dataType.simpleString() for f in fields}
        return out
    if isinstance(con, DuckDBEngine):
        con = con.con
    rows = con.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
    ).fetchall()
    for table, column, dtype in rows:
        out.setdefault(table, {})[column] = dtype
    return out


def stored_type(con: duckdb.DuckDBPyConnection | Engine, duckdb_type: str) -> str:
    """The type a column declared ``duckdb_type`` has on this engine: itself on DuckDB, the
    Spark type the transpiled declaration gives on Spark (``HUGEINT`` -> ``decimal(38,0)``,
    ``TIMESTAMPTZ`` -> ``timestamp``, ...)."""
    if not isinstance(con, SparkEngine):
        return duckdb_type
    query = to_spark_sql(f"SELECT CAST(NULL AS {duckdb_type}) AS c")
    return con.spark.sql(query).schema.fields[0].dataType.simpleString()


def as_engine(con: duckdb.DuckDBPyConnection | Engine) -> Engine:
    """Wrap a DuckDB connection; pass an engine through."""
    if isinstance(con, duckdb.DuckDBPyConnection):
        return DuckDBEngine(con)
    return con


def copy_tables(
    source: duckdb.DuckDBPyConnection, target: Engine, tables: Iterable[str] = REVENUE_TABLES
) -> None:
    """Copy DuckDB tables into another engine under the same names (tests, small pilots).

    A cluster reads the lake directly instead (:meth:`SparkEngine.register_parquet`).
    """
    for table in tables:
        rel = source.sql(f"SELECT * FROM {table}")
        if isinstance(target, SparkEngine):
            target.register_arrow(table, rel.to_arrow_table())
        else:
            target.register(table, rel.df())
