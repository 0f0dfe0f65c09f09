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
* ``to_months(n)``, ``to_years(n)``, ``to_days(n)`` become ``make_interval(...)``.
* ``CROSS JOIN LATERAL (SELECT CAST(unnest(generate_series(a, b, step)) AS DATE) AS c) m``
  becomes ``LATERAL VIEW explode(sequence(CAST(a AS DATE), CAST(b AS DATE), step)) m AS c``.

Statements: ``CREATE [OR REPLACE] TEMP TABLE t AS q`` materialises ``q`` (local
checkpoint, so later stages do not recompute it) as temp view ``t``; ``DROP TABLE IF
EXISTS t`` drops that view; everything else is a query whose rows are fetched lazily.

Both engines answer ``execute(sql)`` with an object that has ``fetchone()``,
``fetchall()`` and ``df()``, like a DuckDB result, so code written against a DuckDB
connection runs unchanged on either engine.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterable
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
    r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?TEMP(?:ORARY)?\s+TABLE\s+([A-Za-z_][A-Za-z0-9_]*)\s+AS\s+(.*)$",
    re.IGNORECASE | re.DOTALL,
)
_DROP = re.compile(
    r"^\s*DROP\s+(?:TABLE|VIEW)\s+(?:IF\s+EXISTS\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*;?\s*$",
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


class Engine(Protocol):
    """A SQL warehouse engine running the workbench's (DuckDB-dialect) SQL."""

    name: str

    def execute(self, sql: str) -> Result:
        """Run one statement written in DuckDB SQL."""

    def register(self, name: str, frame: pd.DataFrame) -> None:
        """Expose a pandas frame as a (temporary) table ``name``."""

    def fetch_df(self, sql: str) -> pd.DataFrame:
        """Run a query and return its rows as pandas."""


# --------------------------------------------------------------------------- DuckDB


@dataclass
class DuckDBEngine:
    """The default engine: a DuckDB connection, SQL run as written."""

    con: duckdb.DuckDBPyConnection
    name: str = "duckdb"

    def execute(self, sql: str) -> Result:
        """Run ``sql`` on the connection."""
        return self.con.execute(sql)

    def register(self, name: str, frame: pd.DataFrame) -> None:
        """Register ``frame`` as view ``name`` (no copy)."""
        self.con.register(name, frame)

    def fetch_df(self, sql: str) -> pd.DataFrame:
        """Rows of ``sql`` as pandas."""
        return self.con.execute(sql).df()


# --------------------------------------------------------------------------- SQLGlot


def _dec38() -> Any:
    from sqlglot import exp

    return exp.DataType.build("DECIMAL(38, 0)")


def _rewrite_node(node: Any) -> Any:
    """One node of the DuckDB AST rewritten for Spark (see the module docstring)."""
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


def to_spark_sql(sql: str) -> str:
    """Transpile one DuckDB statement to Spark SQL (see the module docstring for the rules).

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
    for select in list(tree.find_all(exp.Select)):
        _lateral_series(select)
    # rewrites copy subtrees (a // b repeats its operands), so repeat until nothing changes
    for _ in range(8):
        before = tree.sql()
        tree = tree.transform(_rewrite_node)
        if tree.sql() == before:
            break
    return tree.sql(dialect="spark", identify=True)


# --------------------------------------------------------------------------- Spark


class SparkResult:
    """Rows of a Spark query, fetched on demand through Arrow (timestamps in UTC)."""

    def __init__(self, frame: DataFrame | None) -> None:
        self._frame = frame
        self._pdf: pd.DataFrame | None = None

    def df(self) -> pd.DataFrame:
        """All rows as pandas (dates as ``datetime.date``, timestamps naive UTC)."""
        if self._frame is None:
            return pd.DataFrame()
        if self._pdf is None:
            self._pdf = self._frame.toPandas()
        return self._pdf

    def fetchall(self) -> list[tuple[Any, ...]]:
        """All rows as tuples of Python values (NaN/NaT as None)."""
        pdf = self.df()
        rows = pdf.astype(object).where(pdf.notna(), None).itertuples(index=False, name=None)
        return [tuple(_py(v) for v in row) for row in rows]

    def fetchone(self) -> tuple[Any, ...] | None:
        """The first row, or None."""
        rows = self.fetchall()
        return rows[0] if rows else None


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

    def execute(self, sql: str) -> Result:
        """Run one DuckDB-dialect statement on Spark (CREATE TEMP TABLE materialises)."""
        drop = _DROP.match(sql)
        if drop:
            self.drop(drop.group(1))
            return SparkResult(None)
        create = _CREATE.match(sql)
        if create:
            name, query = create.group(1), create.group(2)
            frame = self.spark.sql(to_spark_sql(query)).localCheckpoint(eager=True)
            self.drop(name)
            frame.createOrReplaceTempView(name)
            self._materialised[name] = frame
            return SparkResult(None)
        return SparkResult(self.spark.sql(to_spark_sql(sql)))

    def drop(self, name: str) -> None:
        """Drop temp view ``name`` (and free its materialised rows) if it exists."""
        frame = self._materialised.pop(name, None)
        if frame is not None:
            frame.unpersist()
        self.spark.catalog.dropTempView(name)

    def register(self, name: str, frame: pd.DataFrame | DataFrame) -> None:
        """Expose a pandas or Spark frame as temp view ``name``."""
        if isinstance(frame, pd.DataFrame):
            frame = self.spark.createDataFrame(_spark_ready(frame))
        frame.createOrReplaceTempView(name)

    def register_arrow(self, name: str, table: pa.Table) -> None:
        """Expose an Arrow table as temp view ``name``, keeping its column types
        (JSON and other extension types become strings)."""
        import pyarrow as pa
        from pyspark.sql.pandas.types import from_arrow_schema

        fields = [
            pa.field(f.name, pa.string())
            if isinstance(f.type, pa.ExtensionType) or pa.types.is_large_string(f.type)
            else f
            for f in table.schema
        ]
        table = table.cast(pa.schema(fields))
        schema = from_arrow_schema(table.schema)
        frame = self.spark.createDataFrame(_spark_ready(table.to_pandas()), schema=schema)
        frame.createOrReplaceTempView(name)

    def fetch_df(self, sql: str) -> pd.DataFrame:
        """Rows of a DuckDB-dialect query as pandas."""
        return self.execute(sql).df()

    def register_parquet(self, name: str, path: str) -> None:
        """Expose Parquet files (a lake table on HDFS/S3/local disk) as temp view ``name``."""
        self.spark.read.parquet(path).createOrReplaceTempView(name)


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
