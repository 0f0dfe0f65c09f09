"""Effective configuration: defaults, then ``workbench.toml``, then environment variables.

Every setting records where its value came from, so ``workbench config`` can
say why a path is what it is. Relative paths are resolved against the project
root (the folder holding ``workbench.toml`` or this project's ``pyproject.toml``).

Environment variables are ``WORKBENCH_<NAME>`` in upper case, e.g.
``WORKBENCH_DATA_DIR=/srv/billing``. ``WORKBENCH_CONFIG`` names another toml file
and ``WORKBENCH_HOME`` names the project root.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "WORKBENCH_"


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message says which and how to fix it."""


def find_root(start: Path | None = None) -> Path:
    """Return the project root: ``$WORKBENCH_HOME``, else the nearest folder upwards from
    ``start`` (default: the current directory) holding ``workbench.toml`` or this project's
    ``pyproject.toml``, else ``start`` itself."""
    if os.environ.get("WORKBENCH_HOME"):
        return Path(os.environ["WORKBENCH_HOME"]).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "workbench.toml").is_file():
            return folder
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and 'name = "billing-workbench"' in pyproject.read_text():
            return folder
    # Outside the project (e.g. papermill started elsewhere): the checkout this package is in.
    package_root = Path(__file__).resolve().parents[1]
    if (package_root / "pyproject.toml").is_file():
        return package_root
    return here


@dataclass(frozen=True)
class Settings:
    """The workbench's settings. Paths are absolute once loaded through :func:`load_settings`."""

    data_dir: Path = Path("data")
    warehouse_path: Path = Path("data/warehouse/warehouse.duckdb")
    snapshot_dir: Path = Path("data/snapshots")
    reports_dir: Path = Path("reports")
    approvals_url: str = "sqlite:///data/approvals/approvals.sqlite"
    mlflow_tracking_uri: str = "sqlite:///data/mlflow/mlflow.db"
    engine: str = "duckdb"  # duckdb | spark
    spark_master: str = "local[2]"
    # where the Spark warehouse's Parquet tables live: a folder or a URL (s3a://, hdfs://)
    spark_warehouse: str = "data/spark-warehouse"
    # the dunning policy in force: data, changed through the approvals queue; created from
    # the packaged workbench/policies/default.yaml on first use (workbench.policy)
    policy_file: Path = Path("data/policy.yaml")
    reporting_currency: str = "usd"
    lock_timeout_s: float = 600.0  # how long a second writer waits for the lock
    # how long one notebook cell of `workbench run` may run before the step fails (0: no
    # limit); `workbench run` needs it above lock_timeout_s
    cell_timeout_s: int = 3600
    root: Path = Path(".")
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def describe(self) -> list[tuple[str, str, str]]:
        """Rows of (setting, value, where it came from) for display."""
        rows = []
        for f in fields(self):
            if f.name == "sources":
                continue
            source = self.sources.get(f.name, "default")
            if f.name == "policy_file" and source == "default" and not self.policy_file.exists():
                source = "default; created from workbench/policies/default.yaml on first use"
            rows.append((f.name, str(getattr(self, f.name)), source))
        return rows


#: The names of the settings (``WORKBENCH_<NAME>`` in the environment).
SETTING_NAMES = tuple(f.name for f in fields(Settings) if f.name not in ("root", "sources"))


def settings_environment(settings: Settings) -> dict[str, str]:
    """The environment variables that make :func:`load_settings` in another process (a
    notebook kernel, a subprocess) give the values of ``settings`` that were set: one
    ``WORKBENCH_<NAME>`` per setting in ``settings.sources`` (toml, environment or an
    override), with its resolved value (absolute paths and database URLs). Settings left
    at their defaults are not included: the other process derives them as ``settings``
    did (paths under the data folder) when it is given the same data folder."""
    return {
        ENV_PREFIX + name.upper(): str(getattr(settings, name))
        for name in SETTING_NAMES
        if name in settings.sources
    }


_PATH_FIELDS = {"data_dir", "warehouse_path", "snapshot_dir", "reports_dir", "policy_file"}
_SQLITE_URL_FIELDS = {"approvals_url", "mlflow_tracking_uri"}


def _coerce(name: str, raw: Any, target: Any) -> Any:
    try:
        if isinstance(target, Path):
            return Path(str(raw))
        if isinstance(target, float):
            return float(raw)
        if isinstance(target, int) and not isinstance(target, bool):
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)  # int() would turn 1.5 into 1 and true into 1
            return int(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"setting {name!r} has value {raw!r}, which is not a {type(target).__name__}"
        ) from exc


def check_cell_timeout(seconds: Any, *, name: str = "cell_timeout_s") -> int:
    """Return a per-cell timeout for ``workbench run`` as whole seconds, 0 meaning no limit.

    The default, 3600 s (one hour per cell), is far above any cell of the pipeline on the
    demo company (the whole pipeline, simulation included, takes about three minutes) and
    leaves room for production volumes, yet a cell stuck on a lock or a network call still
    fails the scheduled run within the hour instead of hanging it for good. It is above
    ``lock_timeout_s`` (600 s), so a step waiting for the warehouse's writer lock fails
    with the lock's own message (naming the holder) first; ``workbench run`` refuses a lock
    wait that is not below the cell timeout it runs with (:func:`check_lock_wait`).

    Args:
        seconds: Whole seconds (text from an environment variable or a flag is parsed).
        name: How the value was given (a setting or a flag), for the message.

    Raises:
        ConfigError: Not a whole number of seconds, or negative.
    """
    try:
        value = _coerce(name, seconds, 0)
    except ConfigError:
        value = None
    if value is None or value < 0:
        raise ConfigError(
            f"{name} must be a whole number of seconds per cell, 0 for no limit; {seconds!r} is not"
        )
    return value


def check_lock_wait(
    lock_s: float,
    cell_s: int,
    *,
    lock_source: str,
    cell_source: str,
    cell_name: str = "cell_timeout_s",
) -> None:
    """Refuse a lock wait that does not end before a per-cell timeout (0: no cell limit).

    A step waiting for the warehouse lock must fail with the lock's message naming its
    holder, not be stopped by the cell timeout first. Checked where the timeout applies, by
    :func:`workbench.runner.run_pipeline` (and ``workbench run --cell-timeout`` as a usage
    error), not by :func:`load_settings`: every other command works with any pair, and the
    flag can lift a setting that conflicts (``--cell-timeout 0``).

    Args:
        lock_s, cell_s: ``lock_timeout_s`` and the cell timeout, in seconds.
        lock_source, cell_source: Where each value came from, for the message.
        cell_name: What the message calls the cell timeout.

    Raises:
        ConfigError: ``cell_s`` is not 0 and ``lock_s`` is not below it (a negative or NaN
            ``lock_s`` waits for ever, so it is not below any limit).
    """
    if cell_s and not 0 <= lock_s < cell_s:  # negative or NaN: filelock waits for ever
        raise ConfigError(
            f"lock_timeout_s ({lock_s:g} s, {lock_source}) must be below {cell_name} "
            f"({cell_s} s, {cell_source}): a step waiting for the warehouse lock would be "
            "stopped by the cell timeout before the lock wait says who holds the lock; lower "
            f"lock_timeout_s or raise {cell_name} (0: no cell limit)"
        )


def _absolute_sqlite(url: str, root: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str((root / url[len(prefix) :]).resolve())
    return url


def load_settings(root: Path | None = None, *, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the effective settings.

    Args:
        root: The project root; found with :func:`find_root` when omitted.
        overrides: Values that win over everything else (e.g. from a test or a CLI flag).

    Returns:
        Settings with absolute paths and a ``sources`` map naming each value's origin.

    Raises:
        ConfigError: An unknown key in the toml file or a value of the wrong type.
    """
    root = (root or find_root()).resolve()
    defaults = Settings()
    known = {f.name: f for f in fields(Settings) if f.name not in ("root", "sources")}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    toml_path = (
        Path(os.environ["WORKBENCH_CONFIG"])
        if os.environ.get("WORKBENCH_CONFIG")
        else root / "workbench.toml"
    )
    if toml_path.is_file():
        try:
            data = tomllib.loads(toml_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{toml_path} is not valid TOML: {exc}") from exc
        section = data.get("workbench", data)
        for key, raw in section.items():
            if key not in known:
                raise ConfigError(
                    f"{toml_path}: unknown setting {key!r}; known settings: {', '.join(sorted(known))}"
                )
            values[key] = _coerce(key, raw, getattr(defaults, key))
            sources[key] = str(toml_path)

    for key in known:
        env = ENV_PREFIX + key.upper()
        if env in os.environ:
            values[key] = _coerce(key, os.environ[env], getattr(defaults, key))
            sources[key] = f"${env}"

    for key, raw in (overrides or {}).items():
        if key not in known:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = _coerce(key, raw, getattr(defaults, key))
        sources[key] = "override"

    # Paths under the data directory follow it unless set on their own.
    data_dir = Path(values.get("data_dir", defaults.data_dir))
    data_dir = data_dir if data_dir.is_absolute() else root / data_dir
    for key, rel in (
        ("warehouse_path", "warehouse/warehouse.duckdb"),
        ("snapshot_dir", "snapshots"),
        ("policy_file", "policy.yaml"),
    ):
        if key not in values:
            values[key] = data_dir / rel
    for key, rel in (
        ("approvals_url", "approvals/approvals.sqlite"),
        ("mlflow_tracking_uri", "mlflow/mlflow.db"),
    ):
        if key not in values:
            values[key] = f"sqlite:///{data_dir / rel}"
    if "spark_warehouse" not in values:
        values["spark_warehouse"] = str(data_dir / "spark-warehouse")
    elif "://" not in str(values["spark_warehouse"]):
        path = Path(str(values["spark_warehouse"]))
        values["spark_warehouse"] = str((path if path.is_absolute() else root / path).resolve())
    values["data_dir"] = data_dir

    for key in _PATH_FIELDS:
        path = Path(values.get(key, getattr(defaults, key)))
        values[key] = (path if path.is_absolute() else root / path).resolve()
    for key in _SQLITE_URL_FIELDS:
        values[key] = _absolute_sqlite(str(values.get(key, getattr(defaults, key))), root)
    if "cell_timeout_s" in values:
        values["cell_timeout_s"] = check_cell_timeout(
            values["cell_timeout_s"], name=f"cell_timeout_s ({sources['cell_timeout_s']})"
        )
    if values.get("engine", defaults.engine) not in ("duckdb", "spark"):
        raise ConfigError(f"engine must be 'duckdb' or 'spark', not {values['engine']!r}")
    values["reporting_currency"] = str(
        values.get("reporting_currency", defaults.reporting_currency)
    ).lower()
    return Settings(**values, root=root, sources=sources)
