"""The warehouse on Apache Spark: Parquet tables under one root, versioned by a manifest.

With ``engine = "spark"`` the pipeline's warehouse is not a DuckDB file but a folder (or a
URL a Spark cluster reads: ``s3a://``, ``hdfs://``, ``abfss://``) of Parquet tables,
``settings.spark_warehouse``::

    <root>/<table>/<version>/part-*.parquet     one folder per written version of a table
    <root>/_manifest/<seq>.json                  which version of each table is current

:class:`SparkWarehouse` has the same two doors as the DuckDB :class:`~workbench.store.Warehouse`:
``read()`` and ``write()`` yield a :class:`~workbench.engines.SparkEngine` on which every
current table is a temp view, so the warehouse computations (revenue, features, labels,
training sets, the loader) run on it unchanged. At the end of a ``write()`` block, the
tables the block created or changed (not its temporary ones) are written out as new
version folders, then one new manifest naming them is added: the commit. A block that
fails, or a process killed half-way, adds no manifest, so readers keep seeing the previous
complete version (the half-written folders are unreferenced and pruned by a later commit).

Steps on one driver machine are serialised by the same writer lock as the DuckDB warehouse
(a lock file under ``data/warehouse/``); several drivers writing one root need their
scheduler to run them one at a time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from workbench.config import Settings, load_settings
from workbench.engines import SparkEngine, spark_session, table_names, temp_views
from workbench.store import WriterLock

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

MANIFEST_DIR = "_manifest"
#: the name of a table version folder (what :meth:`SparkWarehouse._prune` may delete)
_VERSION = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{8}$")
#: manifests kept after a commit (older table versions are deleted)
KEEP_MANIFESTS = 2


class SparkWarehouse:
    """The warehouse as versioned Parquet tables, opened through a Spark engine.

    Example:
        >>> wh = SparkWarehouse(load_settings())        # engine = "spark"
        >>> with wh.write(step="revenue") as engine:
        ...     build_account_months(engine, policy="stripe", into="mrr_account_month")

    Attributes:
        session_conf: Spark SQL settings every warehouse session of this process gets
            (before those given to the constructor).
    """

    session_conf: ClassVar[dict[str, str]] = {}

    def __init__(
        self, settings: Settings | None = None, *, conf: dict[str, str] | None = None
    ) -> None:
        """Args:
        settings: ``spark_warehouse`` (the root), ``spark_master``, ``data_dir`` (the lock).
        conf: Spark SQL settings for this warehouse's session (e.g.
            ``{"spark.sql.shuffle.partitions": "64"}``); cluster-wide ones go where Spark
            reads them (``spark-defaults.conf``).
        """
        self.settings = settings or load_settings()
        self.conf = {**self.session_conf, **(conf or {})}
        self.root = str(self.settings.spark_warehouse).rstrip("/")
        self.lock = WriterLock(
            Path(self.settings.data_dir) / "warehouse" / "spark",
            timeout_s=self.settings.lock_timeout_s,
        )
        self._spark: SparkSession | None = None

    # ------------------------------------------------------------------ storage

    @property
    def spark(self) -> SparkSession:
        """A session of its own (own temp views and SQL settings, the process's one
        SparkContext), so opening the warehouse leaves other sessions' views alone."""
        if self._spark is None:
            self._spark = spark_session(self.settings.spark_master).newSession()
            for key, value in self.conf.items():
                self._spark.conf.set(key, value)
        return self._spark

    def _fs(self) -> tuple[Any, Any]:
        """Hadoop's FileSystem for the root (local disk, S3, HDFS, ... alike) and the JVM."""
        jvm = self.spark._jvm
        conf = self.spark._jsc.hadoopConfiguration()
        return jvm.org.apache.hadoop.fs.Path(self.root).getFileSystem(conf), jvm

    def _path(self, *parts: str) -> Any:
        return self.spark._jvm.org.apache.hadoop.fs.Path("/".join((self.root, *parts)))

    def _manifests(self) -> list[str]:
        """Manifest file names, oldest first."""
        fs, _ = self._fs()
        folder = self._path(MANIFEST_DIR)
        if not fs.exists(folder):
            return []
        names = [s.getPath().getName() for s in fs.listStatus(folder)]
        return sorted(n for n in names if n.endswith(".json") and not n.startswith("."))

    def _read_manifest(self, name: str) -> dict[str, Any]:
        fs, jvm = self._fs()
        stream = fs.open(self._path(MANIFEST_DIR, name))
        try:
            text = jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
        finally:
            stream.close()
        return json.loads(text)

    def manifest(self) -> dict[str, Any]:
        """The current manifest: ``{"seq", "committed_at", "step", "tables": {name: path}}``
        (empty tables before the first commit)."""
        names = self._manifests()
        if not names:
            return {"seq": 0, "tables": {}}
        return self._read_manifest(names[-1])

    def tables(self) -> dict[str, str]:
        """Table name -> the folder of its current version."""
        return dict(self.manifest()["tables"])

    def exists(self) -> bool:
        """Whether anything has been committed yet."""
        return bool(self._manifests())

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        """Add manifest ``seq`` atomically: written beside, then renamed into place (a
        rename on one file system; on object stores the object appears whole)."""
        fs, _ = self._fs()
        name = f"{manifest['seq']:012d}.json"
        final = self._path(MANIFEST_DIR, name)
        if fs.exists(final):
            raise RuntimeError(f"manifest {name} already exists: another writer committed")
        tmp = self._path(MANIFEST_DIR, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        out = fs.create(tmp, False)
        try:
            out.write(bytearray(json.dumps(manifest, indent=1, sort_keys=True).encode()))
        finally:
            out.close()
        if not fs.rename(tmp, final):
            fs.delete(tmp, False)
            raise RuntimeError(f"could not commit manifest {name} under {self.root}")

    def _prune(self) -> None:
        """Delete manifests beyond the newest :data:`KEEP_MANIFESTS` and table versions that
        none of the kept ones names (including folders of failed commits). Only folders
        named like the versions this class writes are touched: anything else under the
        root is left alone."""
        fs, _ = self._fs()
        names = self._manifests()
        keep = names[-KEEP_MANIFESTS:]
        wanted = {p for n in keep for p in self._read_manifest(n)["tables"].values()}
        for name in names[:-KEEP_MANIFESTS]:
            fs.delete(self._path(MANIFEST_DIR, name), False)
        for status in fs.listStatus(self._path()):
            table = status.getPath().getName()
            if not status.isDirectory() or table == MANIFEST_DIR:
                continue
            for version in fs.listStatus(status.getPath()):
                name = version.getPath().getName()
                path = f"{self.root}/{table}/{name}"
                if version.isDirectory() and _VERSION.match(name) and path not in wanted:
                    fs.delete(version.getPath(), True)

    # ------------------------------------------------------------------ opening

    def _open(self, *, empty: bool = False) -> SparkEngine:
        """An engine whose temp views are exactly the current tables (none with ``empty``;
        views a previous block left in this session are dropped first)."""
        spark = self.spark
        for view in temp_views(spark):
            spark.catalog.dropTempView(view)
        engine = SparkEngine(spark)
        for name, path in ({} if empty else self.tables()).items():
            spark.read.parquet(path).createOrReplaceTempView(name)
        engine.reset_changes()
        return engine

    def _close(self, engine: SparkEngine) -> None:
        for name in list(engine._materialised):
            engine.drop(name)
        for view in temp_views(engine.spark):
            engine.spark.catalog.dropTempView(view)

    @contextlib.contextmanager
    def read(self, *, step: str = "read") -> Iterator[SparkEngine]:
        """Open the current tables for reading, under the lock."""
        with self.lock.hold(step=step):
            if not self.exists():
                raise FileNotFoundError(
                    f"No Spark warehouse at {self.root} yet. Run `workbench ingest` "
                    "(or `make demo`) with engine = 'spark' first."
                )
            with self.read_locked() as engine:
                yield engine

    @contextlib.contextmanager
    def write(self, *, step: str = "write", transaction: bool = True) -> Iterator[SparkEngine]:
        """Open the warehouse for writing, under the lock, with every canonical table there
        (created empty if missing). The tables the block creates or changes are committed
        together at its end; an exception commits nothing.

        ``transaction`` is accepted for symmetry with the DuckDB warehouse: a Spark block
        always commits as one unit.
        """
        from workbench.schema import TABLES

        del transaction
        with self.lock.hold(step=step):
            engine = self._open()
            try:
                present = table_names(engine)
                for table in TABLES.values():
                    if table.name.lower() not in present:
                        engine.execute(table.ddl())
                yield engine
                self.commit(engine, step=step)
            finally:
                self._close(engine)

    def commit(
        self,
        engine: SparkEngine,
        *,
        step: str = "write",
        tables: list[str] | None = None,
        replace: bool = False,
    ) -> list[str]:
        """Write the tables ``engine`` created or changed (or ``tables``) as new versions
        and add a manifest naming them, with the unchanged ones (none with ``replace``: the
        new manifest names only what is written now). Returns the tables written."""
        changed = sorted(engine.persistent if tables is None else {t.lower() for t in tables})
        if not changed and not engine.dropped and not replace:
            return []
        current = self.manifest()
        tables_now = {} if replace else current["tables"]
        tables = {k: v for k, v in tables_now.items() if k not in engine.dropped}
        version = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        for name in changed:
            path = f"{self.root}/{name}/{version}"
            engine.spark.table(name).write.parquet(path)
            tables[name] = path
        self._write_manifest(
            {
                "seq": int(current["seq"]) + 1,
                "committed_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "step": step,
                "tables": tables,
            }
        )
        engine.reset_changes()
        self._prune()
        log.info("committed %d table(s) to %s: %s", len(changed), self.root, ", ".join(changed))
        return changed

    @contextlib.contextmanager
    def read_locked(self) -> Iterator[SparkEngine]:
        """Open the current tables for a caller that already holds :attr:`lock`."""
        engine = self._open()
        try:
            yield engine
        finally:
            self._close(engine)

    def rebuild(self) -> Any:
        """Recreate the warehouse from the raw lake on Spark (``workbench rebuild`` with
        ``engine = "spark"``), under the lock: see :meth:`rebuild_locked`."""
        from workbench.ingest.lake import Lake

        with self.lock.hold(step="rebuild"):
            return self.rebuild_locked(Lake(Path(self.settings.data_dir) / "lake"))

    def rebuild_locked(self, lake: Any) -> Any:
        """Rebuild while the caller holds the lock: every receipt of ``lake`` replayed by
        :func:`~workbench.ingest.rebuild.build_on_engine`, the erasure log copied, then one
        manifest naming exactly the rebuilt tables (as the DuckDB rebuild makes a new file:
        result tables such as ``scores`` are not carried over). Until that manifest is
        added, readers see the old tables; a failed rebuild leaves them.

        Returns:
            A :class:`~workbench.ingest.rebuild.RebuildReport`.
        """
        from workbench.ingest.loader import prepare_connection, sync_receipts
        from workbench.ingest.rebuild import build_on_engine
        from workbench.ingest.tables import INTERNAL
        from workbench.schema import TABLES

        if self.exists():  # receipts of loads committed just before a stop come first
            with self.read_locked() as engine:
                prepare_connection(engine)
                sync_receipts(engine, lake)
        engine = self._open(empty=True)
        try:
            report = build_on_engine(engine, lake)  # the erasure log included
            self.commit(engine, step="rebuild", tables=[*TABLES, *INTERNAL], replace=True)
        finally:
            self._close(engine)
        return report


def open_warehouse(settings: Settings | None = None) -> Any:
    """The warehouse the settings choose: :class:`SparkWarehouse` when ``engine = "spark"``,
    else the DuckDB :class:`~workbench.store.Warehouse`. Both have ``read()`` and
    ``write()``; blocks get a DuckDB connection or a Spark engine."""
    from workbench.store import Warehouse

    settings = settings or load_settings()
    if settings.engine == "spark":
        return SparkWarehouse(settings)
    return Warehouse(settings)
