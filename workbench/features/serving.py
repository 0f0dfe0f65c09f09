"""The one Feast adapter: a generated feature repository, materialization, online lookups.

Every Feast call in the workbench lives here and uses keyword arguments. The repository
is generated from :mod:`workbench.features.definitions` (one entity per entity column,
one feature view per entity, over the Parquet file the offline builder
writes for that entity), applied, and materialized into an embedded SQLite online store
under ``data/``:

.. code-block:: text

    data/feature_repo/feature_store.yaml   project, file offline store, sqlite online store
    data/feature_repo/repo.py              generated definitions (``feast`` CLI compatible)
    data/feature_repo/registry.db          Feast registry
    data/feature_repo/online.db            SQLite online store
    data/features/serving/<entity>.parquet latest serving snapshot per entity

:func:`publish_online` builds the snapshot of every entity as of a time with the offline
builder, writes it, applies the repository and materializes it; :func:`online` reads the
latest values back and checks each value's age against its feature's TTL.

Feast's online path does not enforce TTLs (it returns whatever was materialized), and
its local ``get_historical_features`` silently drops entity rows that fall outside a
view's TTL or precede its data; training sets therefore come from the offline builder,
never from Feast.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.config import Settings, load_settings
from workbench.features.definitions import ENTITIES, Feature, fingerprint, get_features
from workbench.features.offline import AS_OF, build_features, snapshot_spine, to_utc

log = logging.getLogger(__name__)

PROJECT = "billing_workbench"
OWNER = "billing-workbench/features"
EVENT_TS = "event_timestamp"
CREATED_TS = "created_timestamp"
ENTITY_NAMES = {"account_id": "account", "subscription_id": "subscription", "invoice_id": "invoice"}
_ARROW = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}
_FEAST_TYPE = {"int64": "Int64", "float64": "Float64", "string": "String"}


class StaleFeatures(RuntimeError):
    """An online lookup returned values older than their TTL (or none at all)."""


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class FeatureRepo:
    """Where the generated Feast repository and its data live."""

    repo_dir: Path
    parquet_dir: Path

    @property
    def yaml_path(self) -> Path:
        return self.repo_dir / "feature_store.yaml"

    @property
    def definitions_path(self) -> Path:
        return self.repo_dir / "repo.py"

    @property
    def registry_path(self) -> Path:
        return self.repo_dir / "registry.db"

    @property
    def online_path(self) -> Path:
        return self.repo_dir / "online.db"

    def parquet_path(self, entity: str) -> Path:
        return self.parquet_dir / f"{entity}.parquet"


def feature_repo(settings: Settings | None = None) -> FeatureRepo:
    """The repository under the configured data directory (``data/feature_repo``)."""
    data_dir = (settings or load_settings()).data_dir
    return FeatureRepo(
        repo_dir=data_dir / "feature_repo", parquet_dir=data_dir / "features" / "serving"
    )


@dataclass(frozen=True)
class ViewSpec:
    """One generated feature view: an entity's features of one domain."""

    name: str
    entity: str
    features: tuple[Feature, ...]
    ttl_hours: int


def view_specs(features: Iterable[Feature] | None = None) -> list[ViewSpec]:
    """One feature view per entity (``account_features``, ...); its TTL is the longest of
    its features'. Per-feature TTLs are checked by :func:`online` itself, and each field
    carries its domain, owner, version and fingerprint as tags.

    One view per entity, not one per domain: an online lookup reads one SQLite row set per
    view, and six views cost about three times the latency of one.
    """
    groups: dict[str, list[Feature]] = {}
    for f in features if features is not None else get_features():
        groups.setdefault(f.entity, []).append(f)
    specs = []
    for entity in sorted(groups, key=ENTITIES.index):
        feats = groups[entity]
        name = f"{ENTITY_NAMES[entity]}_features"
        specs.append(
            ViewSpec(
                name=name,
                entity=entity,
                features=tuple(feats),
                ttl_hours=max(f.ttl_hours for f in feats),
            )
        )
    return specs


def feature_refs(features: Iterable[Feature] | None = None) -> dict[str, str]:
    """Feature name -> Feast reference ``"view:feature"``."""
    return {f.name: f"{s.name}:{f.name}" for s in view_specs(features) for f in s.features}


# --------------------------------------------------------------------------- generation


def render_feature_store_yaml(repo: FeatureRepo) -> str:
    """``feature_store.yaml``: file offline store, SQLite online store, registry under data/."""
    return (
        f"project: {PROJECT}\n"
        "provider: local\n"
        "registry:\n"
        "  registry_type: file\n"
        f"  path: {repo.registry_path}\n"
        "  cache_ttl_seconds: 0  # 0 = keep the registry cached; apply() refreshes it\n"
        "online_store:\n"
        "  type: sqlite\n"
        f"  path: {repo.online_path}\n"
        "offline_store:\n"
        "  type: file\n"
        "entity_key_serialization_version: 3\n"
    )


def render_repo_py(repo: FeatureRepo, features: Iterable[Feature] | None = None) -> str:
    """Python definitions equal to :func:`feast_objects` (so ``feast apply`` works too)."""
    specs = view_specs(features)
    lines = [
        '"""Generated by workbench.features.serving from workbench/features/definitions.py.',
        "",
        "Do not edit: change the declarations and run workbench.features.serving.apply_repo().",
        '"""',
        "",
        "from datetime import timedelta",
        "",
        "from feast import Entity, FeatureView, Field, FileSource, ValueType",
        "from feast.types import Float64, Int64, String",
        "",
    ]
    for entity in sorted({s.entity for s in specs}, key=ENTITIES.index):
        stem = ENTITY_NAMES[entity]
        lines.append(
            f"{stem} = Entity(name={stem!r}, join_keys=[{entity!r}], "
            f"value_type=ValueType.STRING, description={_entity_doc(entity)!r})"
        )
    lines.append("")
    for s in specs:
        stem = ENTITY_NAMES[s.entity]
        path = str(repo.parquet_path(s.entity))
        lines.append(
            f"{s.name}_source = FileSource(name={s.name + '_source'!r}, path={path!r}, "
            f"timestamp_field={EVENT_TS!r}, created_timestamp_column={CREATED_TS!r})"
        )
        lines.append(f"{s.name} = FeatureView(")
        lines.append(f"    name={s.name!r},")
        lines.append(f"    entities=[{stem}],")
        lines.append(f"    ttl=timedelta(hours={s.ttl_hours}),")
        lines.append("    schema=[")
        for f in s.features:
            lines.append(
                f"        Field(name={f.name!r}, dtype={_FEAST_TYPE[f.dtype]}, "
                f"description={f.description!r}, tags={_field_tags(f)!r}),"
            )
        lines.append("    ],")
        lines.append(f"    source={s.name}_source,")
        lines.append("    online=True,")
        lines.append(f"    owner={OWNER!r},")
        lines.append(f"    tags={_view_tags(s)!r},")
        lines.append(")")
        lines.append("")
    return "\n".join(lines)


def _entity_doc(entity: str) -> str:
    return f"{ENTITY_NAMES[entity].capitalize()} ({entity} in the canonical warehouse)"


def _field_tags(f: Feature) -> dict[str, str]:
    return {
        "domain": f.domain,
        "owner": f.owner,
        "version": str(f.version),
        "fingerprint": fingerprint(f),
        "ttl_hours": str(f.ttl_hours),
    }


def _view_tags(s: ViewSpec) -> dict[str, str]:
    return {"generated_by": "workbench.features", "entity": s.entity}


def _feast() -> Any:
    """Import Feast lazily (slow to import), with usage reporting off."""
    os.environ.setdefault("FEAST_USAGE", "False")
    import feast  # noqa: PLC0415

    return feast


def feast_objects(repo: FeatureRepo, features: Iterable[Feature] | None = None) -> list[Any]:
    """The Feast entities, file sources and feature views for the declarations."""
    feast = _feast()
    from feast import types as ft  # noqa: PLC0415

    specs = view_specs(features)
    entities = {
        e: feast.Entity(
            name=ENTITY_NAMES[e],
            join_keys=[e],
            value_type=feast.ValueType.STRING,
            description=_entity_doc(e),
        )
        for e in sorted({s.entity for s in specs}, key=ENTITIES.index)
    }
    objs: list[Any] = list(entities.values())
    for s in specs:
        src = feast.FileSource(
            name=f"{s.name}_source",
            path=str(repo.parquet_path(s.entity)),
            timestamp_field=EVENT_TS,
            created_timestamp_column=CREATED_TS,
        )
        view = feast.FeatureView(
            name=s.name,
            entities=[entities[s.entity]],
            ttl=timedelta(hours=s.ttl_hours),
            schema=[
                feast.Field(
                    name=f.name,
                    dtype=getattr(ft, _FEAST_TYPE[f.dtype]),
                    description=f.description,
                    tags=_field_tags(f),
                )
                for f in s.features
            ],
            source=src,
            online=True,
            owner=OWNER,
            tags=_view_tags(s),
        )
        objs += [src, view]
    return objs


def write_repo(repo: FeatureRepo, features: Iterable[Feature] | None = None) -> None:
    """Write ``feature_store.yaml`` and ``repo.py`` (atomically each)."""
    repo.repo_dir.mkdir(parents=True, exist_ok=True)
    repo.parquet_dir.mkdir(parents=True, exist_ok=True)
    feats = list(features) if features is not None else None
    for path, text in (
        (repo.yaml_path, render_feature_store_yaml(repo)),
        (repo.definitions_path, render_repo_py(repo, feats)),
    ):
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


_STORES: dict[Path, Any] = {}


def open_store(repo: FeatureRepo) -> Any:
    """A cached ``feast.FeatureStore`` for the repository (created on first use)."""
    store = _STORES.get(repo.repo_dir)
    if store is None:
        feast = _feast()
        store = feast.FeatureStore(repo_path=str(repo.repo_dir))
        _STORES[repo.repo_dir] = store
    return store


@contextlib.contextmanager
def _feast_datetimes() -> Iterator[None]:
    """Feast's own sqlite3 datetime adapter, for the length of one online-store call.

    Feast's SQLite online store writes timestamps as epoch seconds through the process-wide
    ``sqlite3`` adapter it registers on import, and reads them back with ``int()``. A library
    imported later may register its own: ``nbformat.sign`` registers ISO text on import (and
    jupyter_server imports it), so Feast would write ``2024-02-29T20:03:56`` into the store and
    every later read, in any process, fails (``invalid literal for int()``). This puts Feast's
    adapter in place for the call and the other one back after it, so both libraries keep
    working in one process (not across threads calling both at once).
    """
    from feast.infra.online_stores import sqlite as feast_sqlite  # noqa: PLC0415

    key = (datetime, sqlite3.PrepareProtocol)
    before = sqlite3.adapters.get(key)
    if before is feast_sqlite.adapt_datetime_epoch:
        yield
        return
    sqlite3.register_adapter(datetime, feast_sqlite.adapt_datetime_epoch)
    try:
        yield
    finally:
        if before is None:
            sqlite3.adapters.pop(key, None)
        else:
            sqlite3.register_adapter(datetime, before)


def _quiet(fn, **kwargs) -> Any:
    """Run a chatty Feast call with its stdout sent to the log instead."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(**kwargs)
    if buf.getvalue().strip():
        log.debug("feast: %s", buf.getvalue().strip())
    return out


def apply_repo(repo: FeatureRepo, features: Iterable[Feature] | None = None) -> list[str]:
    """Generate the repository and ``apply`` it; views no longer declared are deleted.

    Parquet files for every entity must exist (Feast validates sources): write them first
    with :func:`write_feature_parquet`, or call :func:`publish_online`.

    Returns:
        The feature view names applied.
    """
    feats = list(features) if features is not None else None
    write_repo(repo, feats)
    store = open_store(repo)
    objs = feast_objects(repo, feats)
    names = {o.name for o in objs if type(o).__name__ == "FeatureView"}
    stale = [v for v in store.list_feature_views() if v.name not in names]
    _quiet(store.apply, objects=objs, objects_to_delete=stale, partial=False)
    store.refresh_registry()
    return sorted(names)


def write_feature_parquet(
    frame: pd.DataFrame, *, repo: FeatureRepo, entity: str, created: pd.Timestamp | None = None
) -> Path:
    """Write an offline feature table as the Feast source for ``entity`` (atomically).

    Args:
        frame: Output of ``build_features``: ``entity``, ``as_of`` and feature columns.
        repo: Target repository.
        entity: ``account_id``, ``subscription_id`` or ``invoice_id``.
        created: Written as ``created_timestamp`` (default: now).

    Returns:
        The Parquet path; columns ``entity``, ``event_timestamp`` (= ``as_of``),
        ``created_timestamp`` and every declared feature of that entity present in ``frame``.
    """
    feats = [f for f in get_features(entity=entity) if f.name in frame.columns]
    created = to_utc([created or pd.Timestamp.now(tz="UTC")]).iloc[0]
    cols = {
        entity: pa.array(frame[entity].astype("string").to_numpy(na_value=None), type=pa.string()),
        EVENT_TS: pa.array(to_utc(frame[AS_OF]).to_numpy(), type=pa.timestamp("us", tz="UTC")),
        CREATED_TS: pa.array(
            np.full(len(frame), created.to_datetime64()).astype("datetime64[us]"),
            type=pa.timestamp("us", tz="UTC"),
        ),
    }
    for f in feats:
        values = frame[f.name]
        if f.dtype == "string":
            cols[f.name] = pa.array(
                values.astype(object).where(values.notna(), None).tolist(), type=pa.string()
            )
        else:
            cols[f.name] = pa.array(values.to_numpy(), type=_ARROW[f.dtype], from_pandas=True)
    path = repo.parquet_path(entity)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(pa.table(cols), tmp)
    os.replace(tmp, path)
    return path


def materialize(repo: FeatureRepo, *, start, end, views: Sequence[str] | None = None) -> None:
    """Load rows with ``start <= event_timestamp <= end`` into the online store (latest per
    entity wins)."""
    store = open_store(repo)
    s = to_utc([start]).iloc[0].to_pydatetime()
    e = (to_utc([end]).iloc[0] + pd.Timedelta(microseconds=1)).to_pydatetime()
    with _feast_datetimes():
        _quiet(
            store.materialize,
            start_date=s,
            end_date=e,
            feature_views=list(views) if views is not None else None,
        )


def publish_online(
    con: duckdb.DuckDBPyConnection,
    *,
    as_of,
    settings: Settings | None = None,
    repo: FeatureRepo | None = None,
) -> dict[str, int]:
    """Build every entity's features as of ``as_of``, write them, apply and materialize.

    Always publishes every declared feature: a feature view is rewritten as a whole, so
    every value of an entity carries the same snapshot time.

    Args:
        con: Warehouse connection (read only is fine).
        as_of: The snapshot time (usually the warehouse's data horizon or now).
        settings: Used for the repository location when ``repo`` is not given.
        repo: Repository to publish to.

    Returns:
        Rows written per entity.
    """
    repo = repo or feature_repo(settings)
    counts = {}
    started = time.perf_counter()
    for entity in ENTITIES:
        spine = snapshot_spine(con, entity=entity, as_of=as_of)
        frame = build_features(con, spine, features=[f.name for f in get_features(entity=entity)])
        write_feature_parquet(frame, repo=repo, entity=entity)
        counts[entity] = len(frame)
    apply_repo(repo)
    materialize(repo, start=as_of, end=as_of)
    _write_snapshot_mark(repo, as_of)
    log.info(
        "published features as of %s: %s in %.1fs", as_of, counts, time.perf_counter() - started
    )
    return counts


def _mark_path(repo: FeatureRepo) -> Path:
    return repo.repo_dir / "published.json"


def _write_snapshot_mark(repo: FeatureRepo, as_of) -> None:  # noqa: ANN001
    """Record the snapshot time of the latest publish (atomically)."""
    path = _mark_path(repo)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps({"as_of": to_utc([as_of]).iloc[0].isoformat()}))
    os.replace(tmp, path)


_MARKS: dict[Path, tuple[int, float]] = {}


def published_as_of(repo: FeatureRepo) -> pd.Timestamp | None:
    """The snapshot time of the latest :func:`publish_online` to ``repo`` (None before any)."""
    s = _snapshot_seconds(repo)
    return None if s is None else pd.Timestamp(s, unit="s", tz="UTC")


def _snapshot_seconds(repo: FeatureRepo) -> float | None:
    path = _mark_path(repo)
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    got = _MARKS.get(path)
    if got is None or got[0] != mtime:
        as_of = pd.Timestamp(json.loads(path.read_text())["as_of"])
        got = (mtime, float(np.floor(as_of.timestamp())))  # the online store keeps seconds
        _MARKS[path] = got
    return got[1]


# --------------------------------------------------------------------------- lookups


class OnlineFeatures:
    """Result of :func:`online`: values and freshness of the requested features.

    The checks run eagerly (``stale_mask``, ``all_fresh``, ``on_stale``); the frames are
    built on first access, so a hot path can use :meth:`records` without pandas costs.

    Attributes:
        entity: The entity column the ids belong to.
        ids: The requested ids, in request order.
        features: The requested feature names, in request order.
        stale_mask: Boolean array (features x ids): not found, or older than the TTL.
    """

    def __init__(
        self,
        *,
        entity: str,
        ids: list[str],
        features: list[Feature],
        columns: dict[str, list],
        event_s: np.ndarray,
        now_s: float,
    ) -> None:
        self.entity = entity
        self.ids = ids
        self.features = [f.name for f in features]
        self._feats = features
        self._columns = columns
        self._event_s = event_s
        self.found = event_s > 0
        self._ttl_h = np.array([f.ttl_hours for f in features], dtype=np.float64)[:, None]
        self._age_h = np.where(self.found, (now_s - event_s) / 3600.0, np.nan)
        self.stale_mask = ~self.found | (self._age_h > self._ttl_h)
        self._values: pd.DataFrame | None = None
        self._freshness: pd.DataFrame | None = None

    @property
    def all_fresh(self) -> bool:
        """True when every value was found and is within its TTL."""
        return not bool(self.stale_mask.any())

    def records(self) -> list[dict[str, Any]]:
        """One ``{feature: value}`` dict per id (floats NaN when missing); no pandas."""
        return [
            {name: self._columns[name][i] for name in self.features} for i in range(len(self.ids))
        ]

    @property
    def values(self) -> pd.DataFrame:
        """One row per id: the entity column, then one column per feature (float64 with NaN,
        nullable Int64, or object strings)."""
        if self._values is None:
            data: dict[str, Any] = {self.entity: np.array(self.ids, dtype=object)}
            for f in self._feats:
                col = self._columns[f.name]
                data[f.name] = (
                    pd.array(col, dtype="Int64")
                    if f.dtype == "int64"
                    else np.asarray(col, dtype=np.float64 if f.dtype == "float64" else object)
                )
            self._values = pd.DataFrame(data)
        return self._values

    @property
    def freshness(self) -> pd.DataFrame:
        """One row per (id, feature): ``event_timestamp`` (the snapshot time the value
        describes; NaT if not found), ``age_hours``, ``ttl_hours``, ``found``, ``stale``."""
        if self._freshness is None:
            k, n = self.stale_mask.shape
            found = self.found.ravel()
            self._freshness = pd.DataFrame(
                {
                    self.entity: np.tile(np.array(self.ids, dtype=object), k),
                    "feature": np.repeat(np.array(self.features, dtype=object), n),
                    EVENT_TS: pd.Series(
                        pd.to_datetime(
                            np.where(found, self._event_s.ravel(), 0), unit="s", utc=True
                        )
                    ).where(found),
                    "age_hours": self._age_h.ravel(),
                    "ttl_hours": np.repeat(self._ttl_h[:, 0], n),
                    "found": found,
                    "stale": self.stale_mask.ravel(),
                }
            )
        return self._freshness

    @property
    def stale(self) -> pd.DataFrame:
        """The freshness rows flagged stale."""
        return self.freshness[self.freshness["stale"]]


def online(
    entity_ids: Sequence[str],
    features: Sequence[str],
    *,
    settings: Settings | None = None,
    repo: FeatureRepo | None = None,
    now=None,
    on_stale: str = "flag",
) -> OnlineFeatures:
    """Latest feature values from the Feast online store, with freshness checks.

    Args:
        entity_ids: Ids of one entity kind (account, subscription or invoice ids).
        features: Feature names, all of the same entity.
        settings: Used for the repository location when ``repo`` is not given.
        repo: The repository to read.
        now: The time ages are measured against (default: now).
        on_stale: ``"flag"`` (mark only), ``"null"`` (also blank stale values) or
            ``"raise"`` (:class:`StaleFeatures`).

    Returns:
        :class:`OnlineFeatures`. A value from before the latest publish's snapshot belongs
        to an entity that was not in that snapshot (an invoice paid since, a closed
        account): it counts as not found, and its values are missing.
    """
    if on_stale not in ("flag", "null", "raise"):
        raise ValueError("on_stale must be 'flag', 'null' or 'raise'")
    names = tuple(features)
    feats, entity, refs = _resolve(names)
    repo = repo or feature_repo(settings)
    ids = [str(i) for i in entity_ids]
    if ids:
        store = open_store(repo)
        with _feast_datetimes():
            rows = [{entity: i} for i in ids]
            response = store.get_online_features(features=refs, entity_rows=rows)
        raw = response.to_dict(include_event_timestamps=True)
    else:  # Feast refuses an empty request
        raw = {k: [] for f in feats for k in (f.name, f.name + "__ts")}
    snapshot_s = _snapshot_seconds(repo)
    if now is None:
        now_s = time.time()
    elif isinstance(now, pd.Timestamp) and now.tzinfo is not None:
        now_s = now.timestamp()
    else:
        now_s = to_utc([now]).iloc[0].timestamp()
    nan = float("nan")
    columns: dict[str, list] = {}
    event_s = np.empty((len(feats), len(ids)), dtype=np.float64)
    for j, f in enumerate(feats):
        col = raw[f.name]
        event_s[j] = raw[f.name + "__ts"]
        if snapshot_s is not None:
            left = (event_s[j] > 0) & (event_s[j] < snapshot_s)
            if left.any():
                event_s[j, left] = 0
                col = [None if gone else v for v, gone in zip(col, left, strict=True)]
        if f.dtype == "float64":
            col = [nan if v is None else v for v in col]
        columns[f.name] = col
    result = OnlineFeatures(
        entity=entity, ids=ids, features=feats, columns=columns, event_s=event_s, now_s=now_s
    )
    if not result.all_fresh:
        if on_stale == "raise":
            bad = result.stale
            raise StaleFeatures(f"{len(bad)} stale or missing values, e.g. {bad.iloc[0].to_dict()}")
        if on_stale == "null":
            for j, f in enumerate(feats):
                blank = nan if f.dtype == "float64" else None
                columns[f.name] = [
                    blank if result.stale_mask[j, i] else v for i, v in enumerate(columns[f.name])
                ]
        log.debug("%d stale online values", int(result.stale_mask.sum()))
    return result


_RESOLVED: dict[tuple[str, ...], tuple[list[Feature], str, list[str]]] = {}


def _resolve(names: tuple[str, ...]) -> tuple[list[Feature], str, list[str]]:
    """Declarations, their single entity and Feast references for requested names (cached)."""
    got = _RESOLVED.get(names)
    if got is None:
        feats = get_features(names)
        entities = {f.entity for f in feats}
        if len(entities) != 1:
            raise ValueError(f"features must share one entity; got {sorted(entities)}")
        got = (feats, entities.pop(), _refs_for(names))
        _RESOLVED[names] = got
    return got


_REF_CACHE: dict[tuple[str, ...], list[str]] = {}


def _refs_for(names: tuple[str, ...]) -> list[str]:
    refs = _REF_CACHE.get(names)
    if refs is None:
        all_refs = feature_refs()
        refs = [all_refs[n] for n in names]
        _REF_CACHE[names] = refs
    return refs


def historical_features(
    repo: FeatureRepo, *, entity_df: pd.DataFrame, features: Sequence[str]
) -> pd.DataFrame:
    """Feast's own point-in-time join (``get_historical_features``) over the repository's
    Parquet sources, for comparisons. ``entity_df`` needs the entity column and
    ``event_timestamp``. Beware: Feast drops rows outside a view's TTL."""
    store = open_store(repo)
    refs = [feature_refs()[n] for n in features]
    job = store.get_historical_features(entity_df=entity_df, features=refs)
    return job.to_df()


def feature_view_frame(
    repo: FeatureRepo | None = None, *, settings: Settings | None = None
) -> pd.DataFrame:
    """The applied feature views as the registry reports them: view, entity, feature,
    version tag, ttl. Reads the Feast registry (after :func:`apply_repo`)."""
    repo = repo or feature_repo(settings)
    store = open_store(repo)
    rows = []
    for v in store.list_feature_views():
        for fld in v.features:
            rows.append(
                {
                    "view": v.name,
                    "entity": v.entities[0] if v.entities else None,
                    "feature": fld.name,
                    "version": fld.tags.get("version"),
                    "fingerprint": fld.tags.get("fingerprint"),
                    "ttl_hours": v.ttl.total_seconds() / 3600 if v.ttl else None,
                }
            )
    return pd.DataFrame(rows).sort_values(["view", "feature"]).reset_index(drop=True)


def reset_store_cache(repo: FeatureRepo | None = None) -> None:
    """Forget cached ``FeatureStore`` objects (all, or one repository's)."""
    if repo is None:
        _STORES.clear()
    else:
        _STORES.pop(repo.repo_dir, None)


__all__ = [
    "FeatureRepo",
    "OnlineFeatures",
    "StaleFeatures",
    "apply_repo",
    "feast_objects",
    "feature_repo",
    "feature_refs",
    "feature_view_frame",
    "historical_features",
    "materialize",
    "online",
    "publish_online",
    "render_repo_py",
    "view_specs",
    "write_feature_parquet",
    "write_repo",
]
