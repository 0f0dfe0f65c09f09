"""The action queue: requests, approvals, executions, roles and maker-checker.

Everything lives in one transactional store (``settings.approvals_url``): SQLite in
WAL mode by default (stdlib ``sqlite3``), PostgreSQL by URL (through SQLAlchemy; a
driver such as psycopg must be installed). The SQL is plain and portable.

Tables:

- ``actions``: the queue. One row per requested action with the hash of the state it
  was requested in; its ``status`` moves ``pending -> approved -> executed`` (or
  ``rejected``, ``stale``, ``superseded``, ``failed``, ``rolled_back``) only through
  conditional updates (``... WHERE status = 'pending'``), so two approvers racing, or a
  double click, execute once.
- ``executions``: append-only entries, one per execution and one per rollback (a
  write-off is a new entry with its reason code, never an edit).
- ``subject_states``: the latest known state per subject and scope, which the default
  state provider compares against the state an item was requested in.
- ``automation_switches``: persistent pause switches per action type (``*`` = all).
- ``audit_log``: the hash-chained log (:mod:`workbench.audit`).

Who may do what is decided here, in Python, for every call, from an :class:`Identity`
that the caller resolves on the server (:func:`resolve_identity`): never from anything
the browser sends. Denied attempts are written to the audit log.
"""

from __future__ import annotations

import contextlib
import copy
import getpass
import hashlib
import importlib
import json
import logging
import os
import sqlite3
import threading
import tomllib
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from workbench import audit
from workbench.config import Settings
from workbench.policy import ACTION_TYPES, AUTOMATIC_LEVELS, WRITE_OFF_REASON_CODES, Policy
from workbench.timeutil import utc_time_or_now

log = logging.getLogger(__name__)

STATUSES = (
    "pending", "approved", "rejected", "executed", "failed", "stale", "superseded",
    "rolled_back", "rollback_failed",
)  # fmt: skip
OPEN_STATUSES = ("pending",)

# --------------------------------------------------------------------------- roles and identity


class Role(IntEnum):
    """Roles, each allowed everything the ones below it are."""

    VIEWER = 0  # sees the queue and the audit trail
    ANALYST = 1  # may request actions
    APPROVER = 2  # may approve, reject, bulk-approve and roll back (never their own requests)
    ADMIN = 3  # may also pause and resume automation

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[str(name).upper()]
        except KeyError:
            raise ValueError(
                f"unknown role {name!r}; roles are {', '.join(r.label for r in cls)}"
            ) from None


class RolesError(ValueError):
    """The roles file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class Identity:
    """Who is acting. Resolve it on the server with :func:`resolve_identity`."""

    user: str
    role: Role
    source: str = ""  # where the user name and role came from, for messages
    system: bool = False  # the engine, monitoring, automation: not a person


def system_identity(name: str) -> Identity:
    """An identity for an automated component (``system:<name>``), e.g. the dunning engine."""
    return Identity(user=f"system:{name}", role=Role.ADMIN, source="system", system=True)


ENGINE = system_identity("dunning")


@dataclass(frozen=True)
class RoleBook:
    """User -> role mapping from the roles file; unknown users get ``default``."""

    roles: Mapping[str, Role] = field(default_factory=dict)
    default: Role = Role.VIEWER
    path: Path | None = None

    def role_of(self, user: str) -> Role:
        return self.roles.get(user, self.default)


def local_user(environ: Mapping[str, str] | None = None) -> str:
    """The user the server runs for: ``$WORKBENCH_USER``, else ``$JUPYTERHUB_USER`` (set by
    JupyterHub for a user's own server), else the OS account. Never the URL or a widget."""
    env = os.environ if environ is None else environ
    for key in ("WORKBENCH_USER", "JUPYTERHUB_USER"):
        if env.get(key):
            return str(env[key])
    return getpass.getuser()


def roles_file(settings: Settings, environ: Mapping[str, str] | None = None) -> Path:
    """``$WORKBENCH_ROLES_FILE`` or ``<data_dir>/roles.yaml``."""
    env = os.environ if environ is None else environ
    if env.get("WORKBENCH_ROLES_FILE"):
        return Path(env["WORKBENCH_ROLES_FILE"])
    return settings.data_dir / "roles.yaml"


def load_roles(settings: Settings, environ: Mapping[str, str] | None = None) -> RoleBook:
    """Read the roles file (YAML, or TOML when it ends in ``.toml``).

    Format: ``roles: {alice: approver, bob: viewer}`` and optionally ``default_role``
    (``viewer`` unless set). A missing file gives everyone the default role (viewer).

    Raises:
        RolesError: Not UTF-8, not a mapping, an unknown role name, or a ``system:`` user
            name.
    """
    path = roles_file(settings, environ)
    if not path.is_file():
        log.warning("no roles file at %s: everyone is a viewer", path)
        return RoleBook(path=None)
    try:  # UTF-8 whatever the locale (user names may be non-ASCII)
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RolesError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except tomllib.TOMLDecodeError as exc:
        raise RolesError(f"{path}: cannot parse: {exc}") from exc
    except yaml.YAMLError as exc:  # one line: where, and what the parser expected
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RolesError(f"{path}: cannot parse{at}: {problem or exc}") from exc
    data = data or {}
    if not isinstance(data, Mapping) or not isinstance(data.get("roles", {}), Mapping):
        raise RolesError(f"{path}: expected a mapping with `roles: {{user: role}}`")
    problems, roles = [], {}
    for user, name in (data.get("roles") or {}).items():
        if str(user).startswith("system:"):
            problems.append(f"{user}: names starting with 'system:' are reserved")
            continue
        try:
            roles[str(user)] = Role.parse(name)
        except ValueError as exc:
            problems.append(f"{user}: {exc}")
    try:
        default = Role.parse(data.get("default_role", "viewer"))
    except ValueError as exc:
        problems.append(f"default_role: {exc}")
        default = Role.VIEWER
    if problems:
        raise RolesError(f"{path}: " + "; ".join(problems))
    return RoleBook(roles=roles, default=default, path=path)


def resolve_identity(settings: Settings, environ: Mapping[str, str] | None = None) -> Identity:
    """The current user (:func:`local_user`) with their role from the roles file."""
    book = load_roles(settings, environ)
    user = local_user(environ)
    source = f"roles file {book.path}" if book.path else "no roles file (default role)"
    return Identity(user=user, role=book.role_of(user), source=source)


# --------------------------------------------------------------------------- the store


class StoreError(RuntimeError):
    """The approvals store cannot be opened or used; the message says what to fix."""


class _SqliteTx:
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        return self.conn.execute(sql, dict(params or {})).rowcount

    def executemany(self, sql: str, rows: Iterable[Mapping[str, Any]]) -> int:
        return self.conn.executemany(sql, [dict(r) for r in rows]).rowcount

    def fetchone(self, sql: str, params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        row = self.conn.execute(sql, dict(params or {})).fetchone()
        return None if row is None else dict(row)

    def fetchall(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute(sql, dict(params or {})).fetchall()]


class _SqlAlchemyTx:
    def __init__(self, conn: Any, dialect: str) -> None:
        from sqlalchemy import text

        self.conn = conn
        self.dialect = dialect
        self._text = text

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        return self.conn.execute(self._text(sql), dict(params or {})).rowcount

    def executemany(self, sql: str, rows: Iterable[Mapping[str, Any]]) -> int:
        rows = [dict(r) for r in rows]
        return self.conn.execute(self._text(sql), rows).rowcount if rows else 0

    def fetchone(self, sql: str, params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        row = self.conn.execute(self._text(sql), dict(params or {})).mappings().first()
        return None if row is None else dict(row)

    def fetchall(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return [
            dict(r) for r in self.conn.execute(self._text(sql), dict(params or {})).mappings().all()
        ]


_TABLES = (
    """CREATE TABLE IF NOT EXISTS actions (
        item_id TEXT PRIMARY KEY,
        idempotency_key TEXT NOT NULL UNIQUE,
        action_type TEXT NOT NULL,
        subject_id TEXT NOT NULL,
        account_id TEXT,
        amount_minor BIGINT,
        currency TEXT,
        amount_reporting_minor BIGINT,
        risk TEXT NOT NULL,
        automation_level TEXT NOT NULL,
        policy_version TEXT,
        state_scope TEXT NOT NULL,
        state_hash TEXT NOT NULL,
        payload TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        status TEXT NOT NULL,
        decided_by TEXT,
        decided_at TEXT,
        decision_comment TEXT,
        executed_at TEXT,
        rollback_until TEXT,
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS actions_status ON actions (status, requested_at)",
    "CREATE INDEX IF NOT EXISTS actions_subject ON actions (subject_id, state_scope)",
    """CREATE TABLE IF NOT EXISTS executions (
        execution_id TEXT PRIMARY KEY,
        item_id TEXT NOT NULL REFERENCES actions (item_id),
        kind TEXT NOT NULL,
        action_type TEXT NOT NULL,
        subject_id TEXT NOT NULL,
        amount_minor BIGINT,
        currency TEXT,
        reason_code TEXT,
        actor TEXT NOT NULL,
        at TEXT NOT NULL,
        result TEXT NOT NULL,
        UNIQUE (item_id, kind)
    )""",
    """CREATE TABLE IF NOT EXISTS subject_states (
        subject_id TEXT NOT NULL,
        scope TEXT NOT NULL,
        state_hash TEXT NOT NULL,
        state TEXT NOT NULL,
        recorded_by TEXT NOT NULL,
        recorded_at TEXT NOT NULL,
        PRIMARY KEY (subject_id, scope)
    )""",
    """CREATE TABLE IF NOT EXISTS automation_switches (
        action_type TEXT PRIMARY KEY,
        paused INTEGER NOT NULL,
        changed_by TEXT NOT NULL,
        changed_at TEXT NOT NULL,
        reason TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit_log (
        seq BIGINT PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        event TEXT NOT NULL,
        item_id TEXT,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS audit_log_item ON audit_log (item_id)",
)
_APPEND_ONLY = ("audit_log", "executions")
_PG_WRITE_LOCK = 7245101  # advisory lock key held by every PostgreSQL write transaction


def _trigger_sql(dialect: str) -> list[str]:
    if dialect == "sqlite":
        return [
            f"CREATE TRIGGER IF NOT EXISTS {t}_no_{op.lower()} BEFORE {op} ON {t} "
            f"BEGIN SELECT RAISE(ABORT, '{t} is append-only'); END"
            for t in _APPEND_ONLY
            for op in ("UPDATE", "DELETE")
        ]
    return [
        "CREATE OR REPLACE FUNCTION workbench_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$",
        *(
            f"CREATE OR REPLACE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t} "
            "FOR EACH ROW EXECUTE FUNCTION workbench_append_only()"
            for t in _APPEND_ONLY
        ),
    ]


class ApprovalStore:
    """A connection factory with transactions over the approvals database.

    Args:
        url: ``sqlite:////abs/path.sqlite`` (WAL mode, created on first use) or a
            SQLAlchemy PostgreSQL URL such as ``postgresql+psycopg://user@host/db``.
        settings: The settings of the workbench using the store, passed on to executors
            (:attr:`ExecutionContext.settings`); :func:`open_store` sets them when it is
            given settings. ``None``: executors that need settings read the environment's.
    """

    def __init__(self, url: str, *, settings: Settings | None = None) -> None:
        self.url = url
        self.settings = settings
        self._local = threading.local()  # PostgreSQL: this thread's open transaction, if any
        if url.startswith("sqlite:///"):
            self.dialect = "sqlite"
            path = url[len("sqlite:///") :]
            if path in ("", ":memory:"):
                raise StoreError(
                    "the approvals store must be a file (sqlite:////path/approvals.sqlite), not in memory"
                )
            self.path: Path | None = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._engine = None
        elif url.startswith(("postgresql", "postgres")):
            self.dialect = "postgresql"
            self.path = None
            try:
                from sqlalchemy import create_engine

                self._engine = create_engine(
                    url.replace("postgres://", "postgresql://", 1), pool_pre_ping=True
                )
            except ModuleNotFoundError as exc:
                raise StoreError(
                    f"PostgreSQL approvals store needs a driver ({exc.name} is missing): install "
                    "psycopg (`pip install 'psycopg[binary]'`) and use a postgresql+psycopg:// URL"
                ) from exc
        else:
            raise StoreError(
                f"unsupported approvals_url {url!r}: use sqlite:///... or postgresql://..."
            )
        self._ensure_schema()

    def __repr__(self) -> str:
        return f"ApprovalStore({self.url!r})"

    def with_settings(self, settings: Settings) -> ApprovalStore:
        """This store as used by a workbench with ``settings``: the same database and
        connections (its schema is not checked again), with :attr:`settings` set, so the
        executors of what is approved through it act for that workbench."""
        bound = copy.copy(self)  # shares the engine and the thread's open transaction
        bound.settings = settings
        return bound

    def _sqlite_connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    @contextlib.contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[_SqliteTx | _SqlAlchemyTx]:
        """One transaction: committed when the block ends, rolled back on an exception.

        SQLite write transactions start with ``BEGIN IMMEDIATE`` (they hold the write lock
        from the start, so read-then-write sequences cannot interleave). PostgreSQL write
        transactions take the same role with a transaction-level advisory lock, and a
        transaction opened inside another one in the same thread is a SAVEPOINT on its
        connection (a second connection would wait on the first's locks forever).
        """
        if self.dialect == "sqlite":
            conn = self._sqlite_connect()
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield _SqliteTx(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                conn.close()
        else:
            outer = getattr(self._local, "tx", None)
            if outer is not None:  # nested in this thread: a savepoint on the same connection
                if write and not self._local.write:
                    outer.execute(f"SELECT pg_advisory_xact_lock({_PG_WRITE_LOCK})")
                    self._local.write = True
                with outer.conn.begin_nested():
                    yield outer
                return
            try:
                ctx = self._engine.begin()
                conn = ctx.__enter__()
            except ModuleNotFoundError as exc:
                raise StoreError(
                    f"PostgreSQL driver missing ({exc.name}): install psycopg and use postgresql+psycopg://"
                ) from exc
            tx = _SqlAlchemyTx(conn, self.dialect)
            self._local.tx, self._local.write = tx, write
            try:
                if write:  # writers queue up here, as SQLite's BEGIN IMMEDIATE makes them
                    tx.execute(f"SELECT pg_advisory_xact_lock({_PG_WRITE_LOCK})")
                yield tx
            except BaseException as exc:
                self._local.tx = None
                ctx.__exit__(type(exc), exc, exc.__traceback__)
                raise
            self._local.tx = None
            ctx.__exit__(None, None, None)

    def _ensure_schema(self) -> None:
        if self.dialect == "sqlite":
            conn = self._sqlite_connect()
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    log.warning("approvals store %s is not in WAL mode (%s)", self.path, mode)
            finally:
                conn.close()
        with self.transaction() as tx:
            if self.dialect == "postgresql":
                tx.execute(f"SELECT pg_advisory_xact_lock({_PG_WRITE_LOCK})")  # one schema creator
            for sql in _TABLES:
                tx.execute(sql)
            for sql in _trigger_sql(self.dialect):
                tx.execute(sql)


_STORES: dict[str, ApprovalStore] = {}
_STORES_LOCK = threading.Lock()

StoreLike = ApprovalStore | Settings | str


def open_store(where: StoreLike) -> ApprovalStore:
    """The store for settings (``approvals_url``), a URL, or a store (returned as is).

    Stores are cached per URL in this process (the schema is checked once). A store opened
    from settings carries them (:attr:`ApprovalStore.settings`, handed to executors as
    :attr:`ExecutionContext.settings`): it is the cached store bound to *these* settings
    (:meth:`ApprovalStore.with_settings`), so two workbenches in one process that share an
    approvals URL but not a policy file (or a data folder) each execute with their own
    settings, whichever opened the URL first. A store opened from a URL carries none.
    """
    if isinstance(where, ApprovalStore):
        return where
    url = where.approvals_url if isinstance(where, Settings) else str(where)
    with _STORES_LOCK:
        if url not in _STORES:
            _STORES[url] = ApprovalStore(url)
        store = _STORES[url]
    return store.with_settings(where) if isinstance(where, Settings) else store


# --------------------------------------------------------------------------- items


def state_hash(state: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a state mapping (key order does not matter)."""
    return hashlib.sha256(audit.canonical_json(state).encode()).hexdigest()


def _ts(text: str | None) -> pd.Timestamp | None:
    return None if text is None else pd.Timestamp(text).tz_convert("UTC")


@dataclass(frozen=True)
class ActionItem:
    """One queued action as stored."""

    item_id: str
    action_type: str
    subject_id: str
    account_id: str | None
    amount_minor: int | None
    currency: str | None
    amount_reporting_minor: int | None
    risk: str
    automation_level: str
    policy_version: str | None
    state_scope: str
    state_hash: str
    payload: dict[str, Any]
    requested_by: str
    requested_at: pd.Timestamp
    status: str
    decided_by: str | None = None
    decided_at: pd.Timestamp | None = None
    decision_comment: str | None = None
    executed_at: pd.Timestamp | None = None
    rollback_until: pd.Timestamp | None = None

    @property
    def reason(self) -> str:
        return str(self.payload.get("reason", ""))

    def age_hours(self, now: pd.Timestamp) -> float:
        return (utc_time_or_now(now) - self.requested_at).total_seconds() / 3600.0

    def can_roll_back(self, now: pd.Timestamp) -> bool:
        """Executed with an override window that is still open: run automatically under
        ``automated_with_override``, or approved with a window in its payload
        (``override_window_hours``: policy changes, model promotions and model rollbacks)."""
        return (
            self.status == "executed"
            and self.rollback_until is not None
            and utc_time_or_now(now) <= self.rollback_until
        )

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ActionItem:
        def opt_int(v: Any) -> int | None:
            return None if v is None else int(v)

        return cls(
            item_id=row["item_id"], action_type=row["action_type"], subject_id=row["subject_id"],
            account_id=row["account_id"], amount_minor=opt_int(row["amount_minor"]), currency=row["currency"],
            amount_reporting_minor=opt_int(row["amount_reporting_minor"]), risk=row["risk"],
            automation_level=row["automation_level"], policy_version=row["policy_version"],
            state_scope=row["state_scope"], state_hash=row["state_hash"], payload=json.loads(row["payload"]),
            requested_by=row["requested_by"], requested_at=_ts(row["requested_at"]), status=row["status"],
            decided_by=row["decided_by"], decided_at=_ts(row["decided_at"]),
            decision_comment=row["decision_comment"], executed_at=_ts(row["executed_at"]),
            rollback_until=_ts(row["rollback_until"]),
        )  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    """What a request, approval, rejection or rollback did.

    ``code`` is one of: ``queued``, ``duplicate``, ``executed``, ``rejected``,
    ``rolled_back``, ``paused``, ``denied``, ``stale``, ``not_pending``, ``not_found``,
    ``not_eligible``, ``window_closed``, ``failed``, ``recorded``.
    """

    ok: bool
    code: str
    message: str
    item_id: str | None = None


def get_item(store: StoreLike, item_id: str) -> ActionItem | None:
    """One item by id, or ``None``."""
    with open_store(store).transaction(write=False) as tx:
        row = tx.fetchone("SELECT * FROM actions WHERE item_id = :id", {"id": item_id})
    return None if row is None else ActionItem.from_row(row)


def list_items(
    store: StoreLike,
    *,
    statuses: Iterable[str] | None = None,
    action_types: Iterable[str] | None = None,
    subject_id: str | None = None,
    limit: int | None = None,
) -> list[ActionItem]:
    """Items, newest request first, optionally filtered."""
    where, params = [], {}
    for col, values in (("status", statuses), ("action_type", action_types)):
        if values is not None:
            values = list(values)
            if not values:
                return []
            names = [f"{col}{i}" for i in range(len(values))]
            where.append(f"{col} IN ({', '.join(':' + n for n in names)})")
            params.update(zip(names, values, strict=True))
    if subject_id is not None:
        where.append("subject_id = :subject_id")
        params["subject_id"] = subject_id
    sql = "SELECT * FROM actions" + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY requested_at DESC, item_id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    with open_store(store).transaction(write=False) as tx:
        rows = tx.fetchall(sql, params)
    return [ActionItem.from_row(r) for r in rows]


QUEUE_COLUMNS = (
    "item_id", "action_type", "subject_id", "account_id", "amount_minor", "currency",
    "amount_reporting_minor", "risk", "status", "automation_level", "requested_by",
    "requested_at", "age_hours", "reason", "recovery_probability", "uplift",
    "expected_value", "model_versions", "policy_version", "decided_by", "executed_at",
    "rollback_until", "can_roll_back",
)  # fmt: skip


def queue_frame(store: StoreLike, *, statuses: Iterable[str] | None = None, now: pd.Timestamp | None = None,
                limit: int | None = None) -> pd.DataFrame:  # fmt: skip
    """The queue as a tidy frame for tables, filters and the CLI.

    Returns:
        One row per item with :data:`QUEUE_COLUMNS` (scores and reasons come from the
        payload the requester stored; missing ones are NaN / empty).
    """
    now = utc_time_or_now(now)
    rows = []
    for item in list_items(store, statuses=statuses, limit=limit):
        p = item.payload
        rows.append({
            "item_id": item.item_id, "action_type": item.action_type, "subject_id": item.subject_id,
            "account_id": item.account_id, "amount_minor": item.amount_minor, "currency": item.currency,
            "amount_reporting_minor": item.amount_reporting_minor, "risk": item.risk, "status": item.status,
            "automation_level": item.automation_level, "requested_by": item.requested_by,
            "requested_at": item.requested_at, "age_hours": item.age_hours(now), "reason": item.reason,
            "recovery_probability": p.get("recovery_probability"), "uplift": p.get("uplift"),
            "expected_value": p.get("expected_value"), "model_versions": p.get("model_versions", ""),
            "policy_version": item.policy_version, "decided_by": item.decided_by,
            "executed_at": item.executed_at, "rollback_until": item.rollback_until,
            "can_roll_back": item.can_roll_back(now),
        })  # fmt: skip
    frame = pd.DataFrame(rows, columns=list(QUEUE_COLUMNS))
    for col in ("amount_minor", "amount_reporting_minor"):
        frame[col] = frame[col].astype("Int64")
    for col in ("recovery_probability", "uplift", "expected_value", "age_hours"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    for col in ("requested_at", "executed_at", "rollback_until"):
        frame[col] = pd.to_datetime(frame[col], utc=True).astype("datetime64[us, UTC]")
    return frame


def filter_queue(
    frame: pd.DataFrame,
    *,
    action_type: str | None = None,
    risk: str | None = None,
    min_amount_minor: int | None = None,
    max_amount_minor: int | None = None,
    min_age_hours: float | None = None,
    max_age_hours: float | None = None,
) -> pd.DataFrame:
    """Rows of a :func:`queue_frame` matching every given filter (``None`` = any).

    Amounts compare ``amount_reporting_minor``; items without one match only when no
    amount filter is set.
    """
    keep = pd.Series(True, index=frame.index)
    if action_type:
        keep &= frame["action_type"] == action_type
    if risk:
        keep &= frame["risk"] == risk
    amount = frame["amount_reporting_minor"]
    if min_amount_minor is not None:
        keep &= (amount >= min_amount_minor).fillna(False)
    if max_amount_minor is not None:
        keep &= (amount <= max_amount_minor).fillna(False)
    if min_age_hours is not None:
        keep &= frame["age_hours"] >= min_age_hours
    if max_age_hours is not None:
        keep &= frame["age_hours"] <= max_age_hours
    return frame[keep.astype(bool)]


def executions_frame(store: StoreLike, *, item_id: str | None = None) -> pd.DataFrame:
    """Execution and rollback entries (append-only), oldest first.

    Returns:
        Columns ``execution_id, item_id, kind, action_type, subject_id, amount_minor,
        currency, reason_code, actor, at, result``.
    """
    sql = (
        "SELECT * FROM executions"
        + (" WHERE item_id = :id" if item_id else "")
        + " ORDER BY at, execution_id"
    )
    with open_store(store).transaction(write=False) as tx:
        rows = tx.fetchall(sql, {"id": item_id} if item_id else {})
    cols = ["execution_id", "item_id", "kind", "action_type", "subject_id", "amount_minor", "currency",
            "reason_code", "actor", "at", "result"]  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------- executors


@dataclass(frozen=True)
class ExecutionContext:
    """Passed to executors: who triggered the execution and when, through which store (and,
    to a rollback executor, the reason they gave for the rollback)."""

    store: ApprovalStore
    actor: str
    now: pd.Timestamp
    reason: str = ""

    @property
    def settings(self) -> Settings | None:
        """The settings of the workbench executing: those its store was opened with
        (:func:`open_store` given settings, e.g. by the approvals dashboard), ``None`` for a
        store opened from a URL (an executor then reads the environment's,
        ``load_settings()``)."""
        return self.store.settings


ExecuteFn = Callable[[ActionItem, ExecutionContext], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Recovered:
    """What an action type's ``recover`` (or ``recover_rollback``) hook found out about an
    execution (or a rollback) whose process stopped before its outcome was recorded (see
    :func:`recover_interrupted`).

    ``took_effect``: the effect is there, or it is known not to be; ``None``: the hook
    cannot tell (a person checks, as without a hook). An execution that took effect is
    recorded as ``executed`` with ``result`` as its result (what the executor would have
    returned); one that did not is ``failed``. A rollback that took effect is recorded as
    rolled back with ``result`` as the rollback's result (what the rollback executor would
    have returned); one that did not leaves the item ``executed``, as
    :class:`RollbackRefused` does. ``note`` says how the hook knows (or what it found), for
    the audit entry.
    """

    took_effect: bool | None
    note: str
    result: Mapping[str, Any] = field(default_factory=dict)


#: Looks at the subject of an interrupted item; ``None`` when it cannot tell.
RecoverFn = Callable[[ActionItem, ExecutionContext], Recovered | None]


@dataclass(frozen=True)
class Executor:
    """What runs when an item of an action type is approved (and, optionally, rolled back).

    ``execute`` returns a mapping recorded in the execution entry and the audit log; it
    must not write to the approvals store itself. Raising marks the item ``failed``.
    """

    execute: ExecuteFn
    rollback: ExecuteFn | None = None
    recover: RecoverFn | None = None  # about an interrupted execution
    recover_rollback: RecoverFn | None = None  # about an interrupted rollback


def record_only(item: ActionItem, ctx: ExecutionContext) -> dict[str, Any]:
    """Default executor: the execution entry and its audit record are the whole effect
    (downstream systems act on the executions table)."""
    return {"recorded": True, "action_type": item.action_type, "subject_id": item.subject_id}


def execute_write_off(item: ActionItem, ctx: ExecutionContext) -> dict[str, Any]:
    """A write-off is a new entry with its amount and reason code, never an edit."""
    reason = item.payload.get("reason_code")
    if reason not in WRITE_OFF_REASON_CODES:
        raise ValueError(
            f"write-off {item.item_id} has reason code {reason!r}; need one of {WRITE_OFF_REASON_CODES}"
        )
    return {"reason_code": reason, "amount_minor": item.amount_minor, "currency": item.currency,
            "invoice_id": item.subject_id}  # fmt: skip


_EXECUTORS: dict[str, Executor] = {"write_off": Executor(execute_write_off)}
_EXECUTORS_LOCK = threading.Lock()
#: The module that registers the executor of an action type (or the state provider of a
#: state scope) it owns, imported on first use: a process that imports only this module
#: (the approvals dashboard's kernel) must still run a promotion, not just record it.
_OWNERS: dict[str, str] = {
    "model_promotion": "workbench.models.registry",
    "model_rollback": "workbench.models.registry",
    "model_registry": "workbench.models.registry",
    "policy_change": "workbench.policy_changes",
}


_INTERRUPTED_HINT = "check the payment processor or the ledger before approving it again"
_INTERRUPTED_HINTS: dict[str, str] = {}


def register_executor(
    action_type: str,
    execute: ExecuteFn,
    *,
    rollback: ExecuteFn | None = None,
    interrupted_hint: str | None = None,
    recover: RecoverFn | None = None,
    recover_rollback: RecoverFn | None = None,
) -> None:
    """Register (or replace) the executor run when an ``action_type`` item is approved.

    ``recover`` tells, where it can, whether an execution interrupted before its outcome was
    recorded took effect (:func:`recover_interrupted`), and ``recover_rollback`` the same of
    an interrupted ``rollback``; ``interrupted_hint`` says where a person checks when they
    cannot (default: the payment processor or the ledger).
    """
    if action_type not in ACTION_TYPES:
        raise ValueError(f"unknown action type {action_type!r}; known: {', '.join(ACTION_TYPES)}")
    with _EXECUTORS_LOCK:
        _EXECUTORS[action_type] = Executor(execute, rollback, recover, recover_rollback)
        if interrupted_hint is not None:
            _INTERRUPTED_HINTS[action_type] = interrupted_hint


def _load_owner(name: str, registered: Mapping[str, Any]) -> None:
    """Import the module owning ``name`` (see :data:`_OWNERS`) unless it is registered."""
    if name in _OWNERS and name not in registered:
        importlib.import_module(_OWNERS[name])
        if name not in registered:
            raise RuntimeError(f"{_OWNERS[name]} did not register {name!r}")


def executor_for(action_type: str) -> Executor:
    """The registered executor (its owning module imported if need be), or
    :func:`record_only` for action types nothing in the workbench carries out (downstream
    systems act on the executions table)."""
    _load_owner(action_type, _EXECUTORS)
    return _EXECUTORS.get(action_type, Executor(record_only))


# --------------------------------------------------------------------------- state


StateProvider = Callable[[ActionItem], Mapping[str, Any] | None]


def record_states(
    store: StoreLike,
    *,
    who: Identity,
    scope: str,
    states: Mapping[str, Mapping[str, Any]],
    close_missing: bool = False,
    policy_version: str | None = None,
    now: pd.Timestamp | None = None,
) -> int:
    """Record the latest state of subjects; supersede pending items that no longer match.

    Args:
        who: An analyst or above, or a system identity.
        scope: The state's kind, e.g. ``"dunning"`` for the engine's invoice decisions.
        states: ``subject_id -> state``.
        close_missing: ``states`` is complete for the scope: pending items whose
            subject is absent (e.g. the invoice was paid) are superseded too.
        policy_version: When given, pending items of the scope requested under another
            policy version are superseded too (the requester re-proposes them under
            this one, so the queue never holds two versions of one proposal).

    Returns:
        How many pending items were superseded (each audited).
    """
    store, now = open_store(store), utc_time_or_now(now)
    if who.role < Role.ANALYST:
        raise PermissionError(f"{who.user} ({who.role.label}) cannot record states")
    at = audit.utc_text(now)
    hashes = {sid: state_hash(s) for sid, s in states.items()}
    rows = [
        {"subject_id": sid, "scope": scope, "state_hash": hashes[sid], "state": audit.canonical_json(s),
         "by": who.user, "at": at}
        for sid, s in states.items()
    ]  # fmt: skip
    superseded = 0
    with store.transaction() as tx:
        if rows:
            tx.executemany(
                "INSERT INTO subject_states (subject_id, scope, state_hash, state, recorded_by, recorded_at) "
                "VALUES (:subject_id, :scope, :state_hash, :state, :by, :at) "
                "ON CONFLICT (subject_id, scope) DO UPDATE SET state_hash = excluded.state_hash, "
                "state = excluded.state, recorded_by = excluded.recorded_by, recorded_at = excluded.recorded_at",
                rows,
            )
        pending = tx.fetchall(
            "SELECT item_id, subject_id, state_hash, policy_version FROM actions "
            "WHERE status = 'pending' AND state_scope = :scope",
            {"scope": scope},
        )
        for row in pending:
            new = hashes.get(row["subject_id"])
            old_policy = policy_version is not None and row["policy_version"] != policy_version
            if (new == row["state_hash"] and not old_policy) or (new is None and not close_missing):
                continue
            reason = (
                "subject closed"
                if new is None
                else "state changed"
                if new != row["state_hash"]
                else "new policy"
            )
            n = tx.execute(
                "UPDATE actions SET status = 'superseded', updated_at = :at, "
                f"idempotency_key = {_RELEASED_KEY} WHERE item_id = :id AND status = 'pending'",
                {"at": at, "id": row["item_id"]},
            )
            if n:
                superseded += 1
                audit.append(tx, actor=who.user, event="action.superseded", item_id=row["item_id"], at=now,
                             details={"reason": reason, "old_state_hash": row["state_hash"],
                                      "new_state_hash": new, "policy_version": policy_version})  # fmt: skip
    return superseded


_STATE_PROVIDERS: dict[str, StateProvider] = {}
STALE_MESSAGE = (
    "not approved: the invoice or the recommendation changed since this was requested "
    "(or the subject no longer exists); it will be re-proposed if still needed"
)
_STALE_MESSAGES: dict[str, str] = {}


def register_state_provider(
    scope: str, provider: StateProvider, *, stale_message: str | None = None
) -> None:
    """Make ``provider`` the live state of items in ``scope`` (see :class:`CurrentState`).

    ``stale_message`` replaces :data:`STALE_MESSAGE` when an item of the scope is refused
    as stale (say what changed and what to do next for that kind of item).
    """
    with _EXECUTORS_LOCK:
        _STATE_PROVIDERS[scope] = provider
        if stale_message is not None:
            _STALE_MESSAGES[scope] = stale_message


class CurrentState:
    """The state an item is checked against when it is approved: the live state from the
    provider registered for its scope (the model registry for model promotions and
    rollbacks, the policy file on disk for policy changes), else the latest state recorded in the store (:class:`LatestStateProvider`;
    the dunning engine records it on every run)."""

    def __init__(self, store: StoreLike) -> None:
        self.latest = LatestStateProvider(store)

    def __call__(self, item: ActionItem) -> Mapping[str, Any] | None:
        _load_owner(item.state_scope, _STATE_PROVIDERS)
        provider = _STATE_PROVIDERS.get(item.state_scope)
        return provider(item) if provider is not None else self.latest(item)


class LatestStateProvider:
    """Default state provider: the latest state recorded for the item's subject and scope
    (by the requester, the decision engine, or anyone calling :func:`record_states`)."""

    def __init__(self, store: StoreLike) -> None:
        self.store = open_store(store)

    def __call__(self, item: ActionItem) -> Mapping[str, Any] | None:
        with self.store.transaction(write=False) as tx:
            row = tx.fetchone(
                "SELECT state FROM subject_states WHERE subject_id = :s AND scope = :scope",
                {"s": item.subject_id, "scope": item.state_scope},
            )
        return None if row is None else json.loads(row["state"])


# --------------------------------------------------------------------------- automation switches


def automation_switches(store: StoreLike) -> dict[str, bool]:
    """``action_type -> paused`` for every switch ever set (``*`` = all types)."""
    with open_store(store).transaction(write=False) as tx:
        rows = tx.fetchall("SELECT action_type, paused FROM automation_switches")
    return {r["action_type"]: bool(r["paused"]) for r in rows}


def _paused_in(tx: Any) -> frozenset[str]:
    rows = tx.fetchall("SELECT action_type FROM automation_switches WHERE paused = 1")
    return frozenset(r["action_type"] for r in rows)


def paused_action_types(store: StoreLike) -> frozenset[str]:
    """Action types whose automation is paused; contains ``*`` when everything is."""
    with open_store(store).transaction(write=False) as tx:
        return _paused_in(tx)


def set_automation_paused(
    store: StoreLike, *, who: Identity, paused: bool, action_type: str = "*", reason: str = "",
    now: pd.Timestamp | None = None,
) -> Outcome:  # fmt: skip
    """Pause (force ``insight``) or resume automation for one action type or all (``*``).

    Resuming one type while ``*`` is paused leaves it paused. Admins and system
    identities (e.g. monitoring's automatic rollback) only; every call is audited.
    """
    store, now = open_store(store), utc_time_or_now(now)
    if action_type != "*" and action_type not in ACTION_TYPES:
        raise ValueError(
            f"unknown action type {action_type!r}; known: *, {', '.join(ACTION_TYPES)}"
        )
    verb = "pause" if paused else "resume"
    if who.role < Role.ADMIN:
        _deny(store, who, None, f"automation.{verb}", f"role {who.role.label} cannot {verb} automation; admin needed",
              extra={"action_type": action_type}, now=now)  # fmt: skip
        return Outcome(
            False, "denied", f"{who.user} ({who.role.label}) cannot {verb} automation: admins only"
        )
    at = audit.utc_text(now)
    with store.transaction() as tx:
        before = tx.fetchone(
            "SELECT paused FROM automation_switches WHERE action_type = :t", {"t": action_type}
        )
        tx.execute(
            "INSERT INTO automation_switches (action_type, paused, changed_by, changed_at, reason) "
            "VALUES (:t, :p, :by, :at, :reason) ON CONFLICT (action_type) DO UPDATE SET paused = excluded.paused, "
            "changed_by = excluded.changed_by, changed_at = excluded.changed_at, reason = excluded.reason",
            {"t": action_type, "p": int(paused), "by": who.user, "at": at, "reason": reason},
        )
        audit.append(tx, actor=who.user, event="automation.paused" if paused else "automation.resumed", at=now,
                     details={"action_type": action_type, "reason": reason,
                              "was_paused": None if before is None else bool(before["paused"])})  # fmt: skip
    return Outcome(
        True, "recorded", f"automation {'paused' if paused else 'resumed'} for {action_type}"
    )


def pause_automation(store: StoreLike, *, who: Identity, action_type: str = "*", reason: str = "",
                     now: pd.Timestamp | None = None) -> Outcome:  # fmt: skip
    """``workbench automation pause``: force ``insight`` for an action type (or ``*``)."""
    return set_automation_paused(
        store, who=who, paused=True, action_type=action_type, reason=reason, now=now
    )


def resume_automation(store: StoreLike, *, who: Identity, action_type: str = "*", reason: str = "",
                      now: pd.Timestamp | None = None) -> Outcome:  # fmt: skip
    """``workbench automation resume``: lift a pause set with :func:`pause_automation`."""
    return set_automation_paused(
        store, who=who, paused=False, action_type=action_type, reason=reason, now=now
    )


# --------------------------------------------------------------------------- requests and decisions


def _deny(store: ApprovalStore, who: Identity, item_id: str | None, attempted: str, reason: str, *,
          extra: Mapping[str, Any] | None = None, now: pd.Timestamp | None = None) -> None:  # fmt: skip
    log.warning("denied %s by %s on %s: %s", attempted, who.user, item_id, reason)
    with store.transaction() as tx:
        audit.append(tx, actor=who.user, event="action.denied", item_id=item_id, at=now,
                     details={"attempted": attempted, "role": who.role.label, "reason": reason, **(extra or {})})  # fmt: skip


#: A superseded or stale item gives up its idempotency key (it keeps it, suffixed with its
#: own id), so the same proposal can be queued again when it is needed again (a policy
#: restored, a state that flips back). Rejected, executed and failed items keep theirs.
_RELEASED_KEY = "idempotency_key || ':released:' || item_id"


def idempotency_key(
    *, action_type: str, subject_id: str, policy_version: str | None, state_hash: str
) -> str:
    """The same action on the same subject, under the same policy, in the same state is one item."""
    return hashlib.sha256(
        f"{action_type}|{subject_id}|{policy_version or ''}|{state_hash}".encode()
    ).hexdigest()


def request_action(
    store: StoreLike,
    *,
    who: Identity,
    action_type: str,
    subject_id: str,
    state: Mapping[str, Any],
    policy: Policy,
    amount_minor: int | None = None,
    currency: str | None = None,
    amount_reporting_minor: int | None = None,
    account_id: str | None = None,
    payload: Mapping[str, Any] | None = None,
    state_scope: str | None = None,
    risk: str | None = None,
    auto_execute: bool = False,
    now: pd.Timestamp | None = None,
) -> Outcome:
    """Queue an action (idempotently), or run it at once when policy lets automation do it.

    Args:
        who: Analyst or above, or a system identity. Only system identities may
            ``auto_execute``, only at an automatic level up to the approval amount, and
            never under a shadow policy.
        state: The subject's state now (e.g. invoice fields and the recommendation); its
            hash is stored, and approval fails if the current state hashes differently.
        policy: Supplies the automation level, risk band, override window and version.
        payload: Reasons, scores, model versions... shown to approvers. A ``write_off``
            needs ``reason_code`` (``credit_loss`` or ``price_concession``).
        state_scope: Which recorded state the item is checked against (default: the
            action type; the decision engine uses ``"dunning"``).
        risk: ``low | medium | high``; default from the policy's amount bands.

    Returns:
        ``queued`` (new pending item), ``duplicate`` (same key already queued; nothing
        changed), ``executed`` / ``failed`` (automatic), ``paused`` or ``denied``.
    """
    store, now = open_store(store), utc_time_or_now(now)
    if action_type not in ACTION_TYPES:
        raise ValueError(f"unknown action type {action_type!r}; known: {', '.join(ACTION_TYPES)}")
    payload = dict(payload or {})
    for name, value in (
        ("amount_minor", amount_minor),
        ("amount_reporting_minor", amount_reporting_minor),
    ):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 0):
            raise ValueError(f"{name} must be a non-negative integer (minor units), got {value!r}")
    if currency is not None and currency != currency.lower():
        raise ValueError(f"currency must be a lowercase ISO code, got {currency!r}")
    if action_type == "write_off" and payload.get("reason_code") not in WRITE_OFF_REASON_CODES:
        raise ValueError(f"a write_off needs payload reason_code in {WRITE_OFF_REASON_CODES}")
    if who.role < Role.ANALYST:
        _deny(store, who, None, "request", f"role {who.role.label} cannot request actions; analyst or above needed",
              extra={"action_type": action_type, "subject_id": subject_id}, now=now)  # fmt: skip
        return Outcome(False, "denied", f"{who.user} ({who.role.label}) cannot request actions")
    amount_rep = None if amount_reporting_minor is None else int(amount_reporting_minor)
    level = policy.automation.levels[action_type]
    if auto_execute:
        if not who.system:
            raise ValueError(
                "only system identities may auto-execute; people's requests need a second person"
            )
        if level not in AUTOMATIC_LEVELS or policy.needs_human(
            amount_reporting_minor=amount_rep, level=level
        ):
            raise ValueError(
                f"policy {policy.version} does not let {action_type} run without approval here"
            )
        if policy.shadow:
            raise ValueError(
                f"policy {policy.version} is in shadow mode: nothing runs automatically"
            )
    risk = risk or policy.risk(amount_rep)
    if risk not in ("low", "medium", "high"):
        raise ValueError(f"risk must be low, medium or high, got {risk!r}")
    scope = state_scope or action_type
    s_hash = state_hash(state)
    key = idempotency_key(
        action_type=action_type,
        subject_id=subject_id,
        policy_version=policy.version,
        state_hash=s_hash,
    )
    item_id = uuid.uuid4().hex
    at = audit.utc_text(now)
    if auto_execute:
        payload.setdefault(
            "override_window_hours",
            policy.automation.override_window_hours if level == "automated_with_override" else None,
        )
    with store.transaction() as tx:
        if auto_execute:
            paused = _paused_in(tx)
            if "*" in paused or action_type in paused:
                return Outcome(
                    False, "paused", f"automation for {action_type} is paused; nothing was run"
                )
        n = tx.execute(
            "INSERT INTO actions (item_id, idempotency_key, action_type, subject_id, account_id, amount_minor, "
            "currency, amount_reporting_minor, risk, automation_level, policy_version, state_scope, state_hash, "
            "payload, requested_by, requested_at, status, decided_by, decided_at, updated_at) VALUES "
            "(:item_id, :key, :action_type, :subject_id, :account_id, :amount_minor, :currency, :amount_rep, :risk, "
            ":level, :policy_version, :scope, :state_hash, :payload, :by, :at, :status, :decided_by, :decided_at, :at) "
            "ON CONFLICT (idempotency_key) DO NOTHING",
            {"item_id": item_id, "key": key, "action_type": action_type, "subject_id": subject_id,
             "account_id": account_id, "amount_minor": None if amount_minor is None else int(amount_minor),
             "currency": currency, "amount_rep": amount_rep, "risk": risk, "level": level,
             "policy_version": policy.version, "scope": scope, "state_hash": s_hash,
             "payload": audit.canonical_json(payload), "by": who.user, "at": at,
             "status": "approved" if auto_execute else "pending",
             "decided_by": f"policy:{policy.version}" if auto_execute else None,
             "decided_at": at if auto_execute else None},
        )  # fmt: skip
        if n == 0:
            existing = tx.fetchone(
                "SELECT item_id, status FROM actions WHERE idempotency_key = :k", {"k": key}
            )
            return Outcome(
                True, "duplicate", f"already queued ({existing['status']})", existing["item_id"]
            )
        tx.execute(
            "INSERT INTO subject_states (subject_id, scope, state_hash, state, recorded_by, recorded_at) "
            "VALUES (:s, :scope, :h, :state, :by, :at) ON CONFLICT (subject_id, scope) DO UPDATE SET "
            "state_hash = excluded.state_hash, state = excluded.state, recorded_by = excluded.recorded_by, "
            "recorded_at = excluded.recorded_at",
            {
                "s": subject_id,
                "scope": scope,
                "h": s_hash,
                "state": audit.canonical_json(state),
                "by": who.user,
                "at": at,
            },
        )
        audit.append(tx, actor=who.user, event="action.automated" if auto_execute else "action.requested",
                     item_id=item_id, at=now,
                     details={"action_type": action_type, "subject_id": subject_id, "amount_minor": amount_minor,
                              "currency": currency, "amount_reporting_minor": amount_rep, "risk": risk,
                              "automation_level": level, "policy_version": policy.version,
                              "state_hash": s_hash, "payload": payload})  # fmt: skip
    if not auto_execute:
        return Outcome(True, "queued", f"queued {action_type} for {subject_id}", item_id)
    item = get_item(store, item_id)
    assert item is not None
    return _execute(store, item, actor=f"policy:{policy.version}", now=now)


def _execute(store: ApprovalStore, item: ActionItem, *, actor: str, now: pd.Timestamp) -> Outcome:
    """Run an approved item's executor once, then record the execution entry."""
    executor = executor_for(item.action_type)
    try:
        result = dict(
            executor.execute(item, ExecutionContext(store=store, actor=actor, now=now)) or {}
        )
    except Exception as exc:  # noqa: BLE001 - recorded as a failed execution
        log.exception("executor for %s failed on %s", item.action_type, item.item_id)
        with store.transaction() as tx:
            tx.execute(
                "UPDATE actions SET status = 'failed', updated_at = :at WHERE item_id = :id AND status = 'approved'",
                {"at": audit.utc_text(now), "id": item.item_id},
            )
            audit.append(tx, actor=actor, event="action.failed", item_id=item.item_id, at=now,
                         details={"error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
        return Outcome(
            False,
            "failed",
            f"approved, but execution failed: {type(exc).__name__}: {exc}",
            item.item_id,
        )
    with store.transaction() as tx:
        if not _record_execution(tx, item, result, actor=actor, now=now):
            raise StoreError(
                f"item {item.item_id} left 'approved' while executing; not recorded twice"
            )
    return Outcome(
        True, "executed", f"{item.action_type} for {item.subject_id} executed", item.item_id
    )


def _record_execution(
    tx: Any,
    item: ActionItem,
    result: Mapping[str, Any],
    *,
    actor: str,
    now: pd.Timestamp,
    executed_at: pd.Timestamp | None = None,
    recovered: Mapping[str, Any] | None = None,
) -> bool:
    """In ``tx``: mark an ``approved`` item executed, with its execution entry and its
    ``action.executed`` audit entry; ``False``, nothing written, if it is no longer approved.

    ``executed_at`` (default ``now``) is when the effect happened; the override window
    counts from it. ``recovered`` (who recorded it after an interruption, and how it was
    known) goes into the audit entry.
    """
    executed_at = now if executed_at is None else executed_at
    window = item.payload.get("override_window_hours")
    until = audit.utc_text(executed_at + pd.Timedelta(hours=float(window))) if window else None
    execution_id = uuid.uuid4().hex
    reason_code = result.get("reason_code") or item.payload.get("reason_code")
    n = tx.execute(
        "UPDATE actions SET status = 'executed', executed_at = :executed_at, rollback_until = :until, "
        "updated_at = :at WHERE item_id = :id AND status = 'approved'",
        {"executed_at": audit.utc_text(executed_at), "at": audit.utc_text(now), "until": until,
         "id": item.item_id},
    )  # fmt: skip
    if n != 1:
        return False
    tx.execute(
        "INSERT INTO executions (execution_id, item_id, kind, action_type, subject_id, amount_minor, currency, "
        "reason_code, actor, at, result) VALUES (:eid, :id, 'execute', :type, :subject, :amount, :currency, "
        ":reason, :actor, :at, :result)",
        {"eid": execution_id, "id": item.item_id, "type": item.action_type, "subject": item.subject_id,
         "amount": item.amount_minor, "currency": item.currency, "reason": reason_code, "actor": actor,
         "at": audit.utc_text(now), "result": audit.canonical_json(result)},
    )  # fmt: skip
    details = {"execution_id": execution_id, "action_type": item.action_type,
               "subject_id": item.subject_id, "amount_minor": item.amount_minor,
               "currency": item.currency, "reason_code": reason_code, "result": dict(result),
               "rollback_until": until}  # fmt: skip
    if recovered is not None:
        details["recovered"] = dict(recovered)
    audit.append(tx, actor=actor, event="action.executed", item_id=item.item_id, at=now,
                 details=details)  # fmt: skip
    return True


def approve(
    store: StoreLike,
    item_id: str,
    *,
    who: Identity,
    current_state: StateProvider,
    comment: str = "",
    now: pd.Timestamp | None = None,
    bulk: bool = False,
) -> Outcome:
    """Approve a pending item and run its executor, exactly once.

    Checks, in order: the role (approver or admin), maker-checker (the requester can
    never approve, admins included), that the item is still pending, and that
    ``current_state(item)`` hashes to the state it was requested in (else the item
    becomes ``stale``). The approval itself is a conditional update in one
    transaction, so concurrent approvals of one item execute it once. Denials are
    audited.
    """
    store, now = open_store(store), utc_time_or_now(now)
    item = get_item(store, item_id)
    if item is None:
        return Outcome(False, "not_found", f"no action {item_id}", item_id)
    if who.role < Role.APPROVER:
        reason = f"role {who.role.label} cannot approve; approver or admin needed"
        _deny(store, who, item_id, "approve", reason, now=now)
        return Outcome(False, "denied", f"{who.user}: {reason}", item_id)
    if who.user == item.requested_by:
        reason = "maker-checker: you requested this action, so another approver must approve it"
        _deny(store, who, item_id, "approve", reason, now=now)
        return Outcome(False, "denied", f"{who.user}: {reason}", item_id)
    if item.status != "pending":
        return Outcome(
            False, "not_pending", f"not approved: the item is already {item.status}", item_id
        )
    current = current_state(item)
    current_hash = None if current is None else state_hash(current)
    at = audit.utc_text(now)
    if current_hash != item.state_hash:
        with store.transaction() as tx:
            n = tx.execute(
                "UPDATE actions SET status = 'stale', updated_at = :at, "
                f"idempotency_key = {_RELEASED_KEY} WHERE item_id = :id AND status = 'pending'",
                {"at": at, "id": item_id},
            )
            if n:
                audit.append(tx, actor=who.user, event="action.stale", item_id=item_id, at=now,
                             details={"requested_state_hash": item.state_hash, "current_state_hash": current_hash,
                                      "attempted": "approve"})  # fmt: skip
        return Outcome(
            False, "stale", _STALE_MESSAGES.get(item.state_scope, STALE_MESSAGE), item_id
        )
    with store.transaction() as tx:
        n = tx.execute(
            "UPDATE actions SET status = 'approved', decided_by = :by, decided_at = :at, decision_comment = :c, "
            "updated_at = :at WHERE item_id = :id AND status = 'pending' AND requested_by <> :by",
            {"by": who.user, "at": at, "c": comment, "id": item_id},
        )
        if n == 1:
            audit.append(tx, actor=who.user, event="action.approved", item_id=item_id, at=now,
                         details={"comment": comment, "state_hash": current_hash, "bulk": bulk,
                                  "role": who.role.label})  # fmt: skip
    if n != 1:
        latest = get_item(store, item_id)
        return Outcome(
            False,
            "not_pending",
            f"not approved: already {latest.status if latest else 'gone'}",
            item_id,
        )
    return _execute(store, item, actor=who.user, now=now)


def reject(
    store: StoreLike, item_id: str, *, who: Identity, comment: str, now: pd.Timestamp | None = None
) -> Outcome:
    """Reject a pending item (approver or admin; a comment saying why is required)."""
    store, now = open_store(store), utc_time_or_now(now)
    item = get_item(store, item_id)
    if item is None:
        return Outcome(False, "not_found", f"no action {item_id}", item_id)
    if who.role < Role.APPROVER:
        reason = f"role {who.role.label} cannot reject; approver or admin needed"
        _deny(store, who, item_id, "reject", reason, now=now)
        return Outcome(False, "denied", f"{who.user}: {reason}", item_id)
    if not comment.strip():
        return Outcome(False, "denied", "a rejection needs a comment saying why", item_id)
    with store.transaction() as tx:
        n = tx.execute(
            "UPDATE actions SET status = 'rejected', decided_by = :by, decided_at = :at, decision_comment = :c, "
            "updated_at = :at WHERE item_id = :id AND status = 'pending'",
            {"by": who.user, "at": audit.utc_text(now), "c": comment, "id": item_id},
        )
        if n == 1:
            audit.append(tx, actor=who.user, event="action.rejected", item_id=item_id, at=now,
                         details={"comment": comment, "role": who.role.label})  # fmt: skip
    if n != 1:
        return Outcome(
            False, "not_pending", f"not rejected: the item is already {item.status}", item_id
        )
    return Outcome(True, "rejected", f"{item.action_type} for {item.subject_id} rejected", item_id)


def bulk_approve(
    store: StoreLike,
    item_ids: Iterable[str],
    *,
    who: Identity,
    policy: Policy,
    current_state: StateProvider,
    comment: str = "",
    now: pd.Timestamp | None = None,
) -> list[Outcome]:
    """Approve several items at once where the policy allows it (low risk, listed action
    types, at most ``bulk_approval.max_amount_minor``). Every item still goes through
    :func:`approve` (roles, maker-checker, state check, execute-once)."""
    store, now = open_store(store), utc_time_or_now(now)
    ids = list(item_ids)
    if who.role < Role.APPROVER:
        reason = f"role {who.role.label} cannot approve; approver or admin needed"
        _deny(store, who, None, "bulk_approve", reason, extra={"item_ids": ids}, now=now)
        return [Outcome(False, "denied", f"{who.user}: {reason}", i) for i in ids]
    if not policy.bulk_approval.enabled:
        return [
            Outcome(False, "not_eligible", "bulk approval is disabled by the policy", i)
            for i in ids
        ]
    out = []
    for item_id in ids:
        item = get_item(store, item_id)
        if item is None:
            out.append(Outcome(False, "not_found", f"no action {item_id}", item_id))
        elif not policy.bulk_approvable(action_type=item.action_type, risk=item.risk,
                                        amount_reporting_minor=item.amount_reporting_minor):  # fmt: skip
            out.append(
                Outcome(
                    False,
                    "not_eligible",
                    f"{item.action_type} ({item.risk} risk) needs a one-by-one approval",
                    item_id,
                )
            )
        else:
            out.append(
                approve(
                    store,
                    item_id,
                    who=who,
                    current_state=current_state,
                    comment=comment,
                    now=now,
                    bulk=True,
                )
            )
    return out


#: How long an item may sit claimed (approved, or rolled back) without its execution
#: entry before :func:`recover_interrupted` counts its process as gone.
INTERRUPTED_AFTER = pd.Timedelta(minutes=15)


def recover_interrupted(
    store: StoreLike,
    *,
    who: Identity,
    older_than: pd.Timedelta = INTERRUPTED_AFTER,
    now: pd.Timestamp | None = None,
) -> list[str]:
    """Close items whose process stopped between claiming them and recording the outcome.

    An item is claimed (``approved``, or ``rolled_back`` by a rollback) before its executor
    runs and gets its execution entry after; a process killed in between leaves it claimed
    for ever, neither re-approvable nor re-proposable. Items claimed longer than
    ``older_than`` ago without their execution entry become ``failed`` (or
    ``rollback_failed``) with an ``action.interrupted`` audit entry. Nothing is re-run: the
    effect may or may not have happened, so a person checks (the message says where),
    unless the action type's ``recover`` hook (:func:`register_executor`) can tell from
    the subject: an execution that took effect is then recorded as ``executed`` (its
    override window counted from the approval that ran it), one that did not is ``failed``
    with a note saying nothing changed. Likewise its ``recover_rollback`` hook for a
    rollback: one that took effect is recorded as a rollback records it (the entry and its
    ``action.rolled_back`` audit entry by whoever started it, with the reason they gave),
    one that did not leaves the item ``executed`` with a note saying nothing changed (as a
    refused rollback does: it can be rolled back again while its window is open). A
    closed ``failed`` item that a person had approved gives up its idempotency key, so the
    engine proposes it again for approval if it is still needed; one the policy ran
    automatically keeps it (no automatic second run; the invoice's next change brings a new
    proposal).

    Returns:
        The item ids closed.
    """
    store, now = open_store(store), utc_time_or_now(now)
    if who.role < Role.APPROVER and not who.system:
        raise PermissionError(f"{who.user} ({who.role.label}) cannot close interrupted items")
    cutoff = audit.utc_text(now - older_than)
    at = audit.utc_text(now)
    closed = []
    with store.transaction() as tx:
        rows = tx.fetchall(
            "SELECT a.* FROM actions a "
            "WHERE a.updated_at < :cutoff AND ("
            "(a.status = 'approved' AND NOT EXISTS (SELECT 1 FROM executions e "
            "  WHERE e.item_id = a.item_id AND e.kind = 'execute')) OR "
            "(a.status = 'rolled_back' AND NOT EXISTS (SELECT 1 FROM executions e "
            "  WHERE e.item_id = a.item_id AND e.kind = 'rollback')))",
            {"cutoff": cutoff},
        )
        for row in rows:
            item = ActionItem.from_row(row)
            rolling_back = item.status == "rolled_back"
            step = "was being rolled back" if rolling_back else "ran"
            ran = f"the process stopped while {item.action_type} for {item.subject_id} {step}"
            found = _recovered(item, ExecutionContext(store, who.user, now))
            known = found is not None and found.took_effect is not None
            if known and rolling_back:
                if _close_interrupted_rollback(tx, item, found, who=who, now=now, ran=ran):
                    closed.append(item.item_id)
                continue
            if known and found.took_effect:
                recorded = {"by": who.user, "after": "an interruption", "note": found.note}
                if not _record_execution(tx, item, found.result, now=now, recovered=recorded,
                                         actor=item.decided_by or who.user,
                                         executed_at=item.decided_at):  # fmt: skip
                    continue
                audit.append(tx, actor=who.user, event="action.interrupted", item_id=item.item_id, at=now,
                             details={"was": item.status, "now": "executed",
                                      "message": f"{ran}; it took effect ({found.note}): "
                                                 "recorded as executed"})  # fmt: skip
                closed.append(item.item_id)
                continue
            new = "failed" if row["status"] == "approved" else "rollback_failed"
            # a person's approval may be asked for again; an automatic run is not repeated
            # by itself (the invoice's next change brings a new proposal)
            by_person = not str(row["decided_by"] or "").startswith("policy:")
            release = (
                f", idempotency_key = {_RELEASED_KEY}" if new == "failed" and by_person else ""
            )
            n = tx.execute(
                f"UPDATE actions SET status = :new, updated_at = :at{release} "
                "WHERE item_id = :id AND status = :old",
                {"new": new, "at": at, "id": row["item_id"], "old": row["status"]},
            )
            if not n:
                continue
            if known:  # an execution known not to have taken effect
                message = f"{ran}; it did not take effect ({found.note}): nothing changed"
            else:
                _load_owner(row["action_type"], _EXECUTORS)
                hint = _INTERRUPTED_HINTS.get(row["action_type"], _INTERRUPTED_HINT)
                seen = f" ({found.note})" if found is not None else ""  # what the hook found
                message = f"{ran}; whether it took effect is unknown{seen}: {hint}"
            audit.append(tx, actor=who.user, event="action.interrupted", item_id=row["item_id"], at=now,
                         details={"was": row["status"], "now": new, "message": message})  # fmt: skip
            closed.append(row["item_id"])
    if closed:
        log.warning("closed %d interrupted action(s): %s", len(closed), ", ".join(closed))
    return closed


def _recovered(item: ActionItem, ctx: ExecutionContext) -> Recovered | None:
    """What the action type's ``recover`` hook says about an interrupted execution of
    ``item`` (its ``recover_rollback`` hook, about a rollback: ``item`` is ``rolled_back``);
    ``None`` without a hook, when it cannot tell, or when it fails (logged)."""
    executor = executor_for(item.action_type)
    recover = executor.recover_rollback if item.status == "rolled_back" else executor.recover
    if recover is None:
        return None
    try:
        return recover(item, ctx)
    except Exception:  # noqa: BLE001 - a person checks, as without a hook
        log.exception("recover hook for %s failed on %s", item.action_type, item.item_id)
        return None


def _close_interrupted_rollback(
    tx: Any, item: ActionItem, found: Recovered, *, who: Identity, now: pd.Timestamp, ran: str
) -> bool:
    """In :func:`recover_interrupted`'s ``tx``: close an interrupted rollback that the
    ``recover_rollback`` hook could tell about (``found.took_effect`` is not ``None``).

    Took effect: recorded as :func:`rollback` records it (:func:`_record_rollback`), by whoever
    started it (their ``action.rollback_started`` entry) with their reason. Did not: back to
    ``executed``, as after :class:`RollbackRefused` (its window unchanged). ``False``, nothing
    written, if the item is no longer ``rolled_back``.
    """
    at = audit.utc_text(now)
    new = "rolled_back" if found.took_effect else "executed"
    n = tx.execute(
        "UPDATE actions SET status = :new, updated_at = :at WHERE item_id = :id "
        "AND status = 'rolled_back'",
        {"new": new, "at": at, "id": item.item_id},
    )
    if n != 1:
        return False
    if found.took_effect:
        started = tx.fetchone(
            "SELECT actor, details FROM audit_log WHERE item_id = :id "
            "AND event = 'action.rollback_started' ORDER BY seq DESC LIMIT 1",
            {"id": item.item_id},
        )
        _record_rollback(tx, item, found.result, now=now,
                         actor=started["actor"] if started else who.user,
                         reason=json.loads(started["details"]).get("reason", "") if started else "",
                         recovered={"by": who.user, "after": "an interruption", "note": found.note})  # fmt: skip
        message = f"{ran}; it took effect ({found.note}): recorded as rolled back"
    else:
        again = (
            f"it can be rolled back again until {audit.utc_text(item.rollback_until)}"
            if item.rollback_until is not None and now <= item.rollback_until
            else "its override window has closed, so it cannot be rolled back again"
        )
        message = (
            f"{ran}; it did not take effect ({found.note}): nothing changed, the item is "
            f"executed again and {again}"
        )
    audit.append(tx, actor=who.user, event="action.interrupted", item_id=item.item_id, at=now,
                 details={"was": "rolled_back", "now": new, "message": message})  # fmt: skip
    return True


def _record_rollback(
    tx: Any,
    item: ActionItem,
    result: Mapping[str, Any],
    *,
    actor: str,
    reason: str,
    now: pd.Timestamp,
    recovered: Mapping[str, Any] | None = None,
) -> str:
    """In ``tx``: the rollback entry of a rolled-back item (its result with the ``reason``)
    and its ``action.rolled_back`` audit entry; returns the entry's id. ``recovered`` (who
    recorded it after an interruption, and how it was known) goes into the audit entry."""
    execution_id = uuid.uuid4().hex
    tx.execute(
        "INSERT INTO executions (execution_id, item_id, kind, action_type, subject_id, amount_minor, currency, "
        "reason_code, actor, at, result) VALUES (:eid, :id, 'rollback', :type, :subject, :amount, :currency, "
        "NULL, :actor, :at, :result)",
        {"eid": execution_id, "id": item.item_id, "type": item.action_type, "subject": item.subject_id,
         "amount": item.amount_minor, "currency": item.currency, "actor": actor,
         "at": audit.utc_text(now), "result": audit.canonical_json({"reason": reason, **result})},
    )  # fmt: skip
    details = {"execution_id": execution_id, "reason": reason, "result": dict(result)}
    if recovered is not None:
        details["recovered"] = dict(recovered)
    audit.append(tx, actor=actor, event="action.rolled_back", item_id=item.item_id, at=now,
                 details=details)  # fmt: skip
    return execution_id


class RollbackRefused(RuntimeError):
    """Raised by a rollback executor that refused *before changing anything* (the subject
    moved on since the action): the item stays ``executed``, so a later rollback can still
    run once the obstacle is gone. Any other exception marks the item ``rollback_failed``."""


def rollback(
    store: StoreLike, item_id: str, *, who: Identity, reason: str, now: pd.Timestamp | None = None
) -> Outcome:
    """Roll back an executed action within its override window (see
    :meth:`ActionItem.can_roll_back`).

    The rollback is a new execution entry (kind ``rollback``), never an edit; the
    action type's rollback executor runs if one is registered (given ``reason`` in its
    :class:`ExecutionContext`).
    """
    store, now = open_store(store), utc_time_or_now(now)
    item = get_item(store, item_id)
    if item is None:
        return Outcome(False, "not_found", f"no action {item_id}", item_id)
    if who.role < Role.APPROVER:
        msg = f"role {who.role.label} cannot roll back; approver or admin needed"
        _deny(store, who, item_id, "rollback", msg, now=now)
        return Outcome(False, "denied", f"{who.user}: {msg}", item_id)
    if not reason.strip():
        return Outcome(False, "denied", "a rollback needs a reason", item_id)
    if item.status != "executed":
        return Outcome(
            False, "not_pending", f"cannot roll back: the item is {item.status}", item_id
        )
    if not item.can_roll_back(now):
        return Outcome(
            False,
            "window_closed",
            "cannot roll back: no override window, or it has closed",
            item_id,
        )
    at = audit.utc_text(now)
    with store.transaction() as tx:
        n = tx.execute(
            "UPDATE actions SET status = 'rolled_back', updated_at = :at WHERE item_id = :id AND status = 'executed' "
            "AND rollback_until >= :at",
            {"at": at, "id": item_id},
        )
        if n == 1:  # who started it is on record even if the process dies while undoing
            audit.append(tx, actor=who.user, event="action.rollback_started", item_id=item_id,
                         at=now, details={"reason": reason})  # fmt: skip
    if n != 1:
        return Outcome(
            False,
            "not_pending",
            "cannot roll back: already rolled back or the window closed",
            item_id,
        )
    executor = executor_for(item.action_type)
    try:
        result = (
            dict(executor.rollback(item, ExecutionContext(store, who.user, now, reason)) or {})
            if executor.rollback
            else {"recorded": True}
        )
    except RollbackRefused as exc:
        with store.transaction() as tx:
            # not if another rollback (or a recovery) recorded one meanwhile: it stands
            tx.execute("UPDATE actions SET status = 'executed', updated_at = :at WHERE item_id = :id "
                       "AND status = 'rolled_back' AND NOT EXISTS (SELECT 1 FROM executions e "
                       "WHERE e.item_id = :id AND e.kind = 'rollback')",
                       {"at": at, "id": item_id})  # fmt: skip
            audit.append(tx, actor=who.user, event="action.rollback_refused", item_id=item_id, at=now,
                         details={"reason": reason, "refused": str(exc)})  # fmt: skip
        return Outcome(False, "refused", f"not rolled back, nothing changed: {exc}", item_id)
    except Exception as exc:  # noqa: BLE001 - recorded
        log.exception("rollback executor for %s failed on %s", item.action_type, item_id)
        with store.transaction() as tx:
            tx.execute("UPDATE actions SET status = 'rollback_failed', updated_at = :at WHERE item_id = :id "
                       "AND NOT EXISTS (SELECT 1 FROM executions e WHERE e.item_id = :id "
                       "AND e.kind = 'rollback')", {"at": at, "id": item_id})  # fmt: skip
            audit.append(tx, actor=who.user, event="action.rollback_failed", item_id=item_id, at=now,
                         details={"reason": reason, "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
        return Outcome(False, "failed", f"rollback failed: {type(exc).__name__}: {exc}", item_id)
    with store.transaction() as tx:
        note = _finish_rollback(tx, item, result, actor=who.user, reason=reason, now=now)
    return Outcome(
        True,
        "rolled_back",
        f"{item.action_type} for {item.subject_id} rolled back{note}",
        item_id,
    )


def _finish_rollback(
    tx: Any, item: ActionItem, result: Mapping[str, Any], *, actor: str, reason: str,
    now: pd.Timestamp,
) -> str:  # fmt: skip
    """In ``tx``: record a rollback whose executor finished, whatever a recovery did while
    it ran (a slow process counted as gone by :func:`recover_interrupted`). Recorded by the
    recovery already: nothing more. Set back to ``executed`` or ``rollback_failed`` by it:
    the rollback did happen, so the item is ``rolled_back`` again and the audit says why.
    Returns a note for the outcome's message ("" in the usual case)."""
    done = tx.fetchone(
        "SELECT 1 AS x FROM executions WHERE item_id = :id AND kind = 'rollback'",
        {"id": item.item_id},
    )
    if done is not None:
        return " (already recorded by the recovery of an interruption)"
    row = tx.fetchone("SELECT status FROM actions WHERE item_id = :id", {"id": item.item_id})
    status = row["status"] if row is not None else None
    note = ""
    if status != "rolled_back":
        tx.execute(
            "UPDATE actions SET status = 'rolled_back', updated_at = :at WHERE item_id = :id",
            {"at": audit.utc_text(now), "id": item.item_id},
        )
        note = (
            f" (a recovery had closed it as {status} while the rollback was still running; "
            "corrected: it took effect)"
        )
        audit.append(tx, actor=actor, event="action.interrupted", item_id=item.item_id, at=now,
                     details={"was": status, "now": "rolled_back",
                              "message": f"the rollback finished after a recovery closed it as "
                                         f"{status}: it took effect"})  # fmt: skip
    _record_rollback(tx, item, result, actor=actor, reason=reason, now=now)
    return note
