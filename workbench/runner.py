"""The pipeline runner: execute the numbered notebooks with papermill and keep a record.

Each run gets a ``run_id`` (passed into every notebook that declares it), and leaves
``reports/<run_id>/`` with the executed notebooks, an HTML rendering of each without
code cells, and ``manifest.json`` (parameters, package versions, git commit, start,
end, duration and status per step, outputs written). ``reports/index.html`` lists
every run, newest first.

A failing cell stops the run: papermill still writes the failed notebook with the
error marked at the top, the manifest records the failure, and :class:`StepFailed`
is raised (the CLI exits non-zero). A step that stops any other way (its kernel dies,
a timeout) is recorded and raised the same way; Ctrl-C is recorded as a failed step,
then re-raised. Unknown parameters are an error, not a warning.

Each cell may run at most ``cell_timeout_s`` seconds (a setting, one hour by default; see
:func:`workbench.config.check_cell_timeout`), so a cell stuck on a lock or a network call
fails its step instead of hanging a scheduled run. The executed notebook is saved as each
cell starts and ends (and every 30 s within a long cell), so a step that stops leaves the
notebook as far as it ran; a timed-out cell is marked in it.
"""

from __future__ import annotations

import ast
import html
import json
import logging
import os
import platform
import re
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

import nbformat

from workbench.config import (
    ENV_PREFIX,
    SETTING_NAMES,
    ConfigError,
    Settings,
    check_cell_timeout,
    check_lock_wait,
    load_settings,
    settings_environment,
)

log = logging.getLogger(__name__)

PIPELINE_DIR = "notebooks"
KEY_PACKAGES = (
    "billing-workbench",
    "pandas",
    "numpy",
    "duckdb",
    "pyarrow",
    "statsforecast",
    "lightgbm",
    "scikit-learn",
    "shap",
    "evidently",
    "altair",
    "ipywidgets",
    "voila",
    "papermill",
    "mlflow",
    "feast",
    "pandera",
)


class RunnerError(RuntimeError):
    """The run cannot start: an unknown step or parameter, or a malformed notebook."""


class StepBlocked(RuntimeError):
    """A step is paused by a live schema-change alert; nothing was run from it on."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"step {step} is {message}")
        self.step = step


class StepFailed(RuntimeError):
    """A notebook failed; the executed notebook with the error is in the run folder."""

    def __init__(
        self,
        step: str,
        output: Path,
        message: str,
        *,
        where: str | None = None,
        rerun: str | None = None,
    ) -> None:
        text = f"step {step} failed: {message}\n" + (
            where or f"The failed notebook, with the error at the top, is {output}"
        )
        if rerun:
            text += f"\nFix the cause, then re-run the step: {rerun}"
        super().__init__(text)
        self.step = step
        self.output = output


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Parameter:
    """One parameter of a notebook's tagged ``parameters`` cell."""

    name: str
    type: str  # the annotation as written, e.g. "int"
    default: str  # the default as written
    help: str  # the trailing comment

    def coerce(self, raw: Any) -> Any:
        """Convert a value to this parameter's type.

        Text (from ``-p``) is parsed; other values (from a YAML file, or papermill's own
        parsing) are checked, and converted only where nothing is lost: an integer for a
        float, an integral float for an int, an integer or a date for text.

        Raises:
            RunnerError: The value does not fit the type.
        """
        kind = self.type.replace(" ", "")
        if not isinstance(raw, str):
            return self._check(raw, kind)
        try:
            if kind == "int":
                return int(raw)
            if kind == "float":
                return float(raw)
            if kind == "bool":
                lowered = raw.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(raw)
            if kind in ("str", "str|None", "Optional[str]"):
                return raw
            if kind.startswith(("list", "dict", "tuple")) or kind.startswith("int|None"):
                return ast.literal_eval(raw)
        except (ValueError, SyntaxError) as exc:
            raise RunnerError(f"parameter {self.name} is {self.type}; {raw!r} is not one") from exc
        return raw

    def _check(self, raw: Any, kind: str) -> Any:
        integral = isinstance(raw, int) and not isinstance(raw, bool)
        if kind == "int":
            if integral:
                return raw
            if isinstance(raw, float) and raw.is_integer():
                return int(raw)
        elif kind == "float":
            if isinstance(raw, float) or (integral and float(raw) == raw):
                return float(raw)
        elif kind == "bool":
            if isinstance(raw, bool):
                return raw
        elif kind in ("str", "str|None", "Optional[str]"):
            if raw is None and kind != "str":
                return None
            if integral:
                return str(raw)
            if isinstance(raw, date):  # a YAML date or timestamp
                return raw.isoformat()
        elif kind.startswith(("list", "dict", "tuple", "int|None")):
            if kind.startswith("int|None") and (raw is None or integral):
                return raw
            if kind.startswith("list") and isinstance(raw, list):
                return raw
            if kind.startswith("dict") and isinstance(raw, dict):
                return raw
            if kind.startswith("tuple") and isinstance(raw, list | tuple):
                return tuple(raw)
        else:
            return raw  # a type this check does not know
        hint = " (quote it to pass it as text)" if kind.startswith("str") else ""
        raise RunnerError(
            f"parameter {self.name} is {self.type}; {raw!r} ({type(raw).__name__}) is not one"
            + hint
        )


def notebook_parameters(path: Path) -> list[Parameter]:
    """Read the typed parameters of a notebook's single cell tagged ``parameters``.

    Each line must read ``name: type = default  # help``.

    Raises:
        RunnerError: No tagged cell, more than one, or a line that is not a typed,
            commented assignment.
    """
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise RunnerError(
            f"{path}: expected exactly one cell tagged 'parameters', found {len(tagged)}"
        )
    params: list[Parameter] = []
    source = tagged[0].source
    tree = ast.parse(source)
    lines = source.splitlines()
    for node in tree.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            raise RunnerError(
                f"{path}: parameters cell line {node.lineno} is not a typed assignment "
                "(write `name: type = default  # help`)"
            )
        line = lines[node.lineno - 1]
        comment = line.split("#", 1)[1].strip() if "#" in line else ""
        if not comment:
            raise RunnerError(f"{path}: parameter {node.target.id} has no help comment")
        params.append(
            Parameter(
                name=node.target.id,
                type=ast.unparse(node.annotation),
                default=ast.unparse(node.value) if node.value is not None else "",
                help=comment,
            )
        )
    return params


def check_parameters(namespace: MutableMapping[str, Any]) -> dict[str, Any]:
    """Type a notebook's parameters in place, as its ``parameters`` cell declares them.

    papermill (run by hand, by cron or by Airflow) injects its ``-p`` values untyped in a cell
    after the parameters cell: ``-p faults false`` is the text ``"false"`` (true in an ``if``),
    ``-p horizons 30`` an int. Each pipeline notebook calls ``wb.check_parameters(globals())``
    in the cell after the parameters cell; the parameters cell's annotations are in the
    namespace's ``__annotations__``. Values are converted with the same rules as ``workbench
    run`` (:meth:`Parameter.coerce`).

    Returns:
        The typed values by name (also written back into ``namespace``).

    Raises:
        RunnerError: A value does not fit its declared type (the message names both), or the
            namespace has no annotated parameters.
    """
    declared = namespace.get("__annotations__") or {}
    if not declared:
        raise RunnerError(
            "no typed parameters in this namespace: call check_parameters(globals()) in a cell "
            "after the cell of typed parameters (`name: type = default  # help`)"
        )
    checked: dict[str, Any] = {}
    for name, annotation in declared.items():
        if name not in namespace:
            continue
        kind = annotation.__name__ if isinstance(annotation, type) else str(annotation)
        param = Parameter(name=name, type=kind, default="", help="")
        checked[name] = namespace[name] = param.coerce(namespace[name])
    return checked


def utc_timestamp(value: str | datetime) -> Any:
    """A time parameter as a UTC ``pandas.Timestamp``: an ISO-8601 date or time without a zone
    is read as UTC (``2025-06-01`` is midnight UTC); one with a zone is converted to UTC.

    Raises:
        RunnerError: The value is not an ISO-8601 date or time (or is NaT).
    """
    from workbench.timeutil import utc_time  # imports pandas: not at the runner's import

    try:
        return utc_time(value if isinstance(value, datetime) else datetime.fromisoformat(value))
    except (TypeError, ValueError) as exc:
        raise RunnerError(f"{value!r} is not an ISO-8601 date or time") from exc


# --------------------------------------------------------------------------- steps


def pipeline_notebooks(root: Path) -> list[Path]:
    """The pipeline notebooks in run order (``notebooks/NN_*.ipynb``)."""
    return sorted(p for p in (root / PIPELINE_DIR).glob("[0-9][0-9]_*.ipynb"))


def resolve_steps(root: Path, steps: Sequence[str] | None) -> list[Path]:
    """Map step names (``01``, ``ingest``, ``01_ingest``, or a path) to notebooks, in run order.

    Raises:
        RunnerError: A step matches no notebook; the message lists the known steps.
    """
    available = pipeline_notebooks(root)
    if not steps:
        return available
    chosen: list[Path] = []
    for step in steps:
        candidate = Path(step)
        if candidate.suffix == ".ipynb" and candidate.exists():
            chosen.append(candidate.resolve())
            continue
        matches = [
            p for p in available if step in (p.stem, p.stem[:2], p.stem[3:]) or p.name == step
        ]
        if len(matches) != 1:
            known = ", ".join(p.stem for p in available)
            raise RunnerError(f"unknown step {step!r}; known steps: {known}")
        chosen.append(matches[0])
    order = {p: i for i, p in enumerate(available)}
    return sorted(dict.fromkeys(chosen), key=lambda p: order.get(p, len(order)))


def _is_step(notebook: Path, prefix: str) -> bool:
    """Whether ``prefix`` names this notebook: its number, its name or its stem."""
    return prefix in (notebook.stem, notebook.stem[:2], notebook.stem[3:])


def bind_parameters(
    notebooks: Sequence[Path], given: Mapping[str, Any]
) -> dict[Path, dict[str, Any]]:
    """Give each notebook the parameters it declares, typed.

    A name is either bare (``start``), for the one selected notebook that declares it, or
    scoped to a step (``02.start``, ``02_revenue.start`` or ``revenue.start``). A scoped
    value wins over a bare one for its step.

    Raises:
        RunnerError: A given parameter is declared by none of the notebooks; a scoped one
            names a step that is not selected; a bare one is declared by more than one of
            the selected notebooks (the message shows the scoped form).
    """
    declared = {nb: {p.name: p for p in notebook_parameters(nb)} for nb in notebooks}
    bare: list[tuple[Path, str, Any]] = []
    scoped: list[tuple[Path, str, Any]] = []
    unknown: list[str] = []
    ambiguous: dict[str, list[Path]] = {}
    for key, value in given.items():
        if "." in key:
            prefix, name = key.split(".", 1)
            steps = [nb for nb in notebooks if _is_step(nb, prefix)]
            if not steps:
                raise RunnerError(
                    f"parameter {key}: {prefix} is not a step of this run "
                    f"({', '.join(nb.stem for nb in notebooks)}); put a selected step's number "
                    f"or name before the dot"
                )
            if name in declared[steps[0]]:
                scoped.append((steps[0], name, value))
            else:
                unknown.append(key)
            continue
        owners = [nb for nb, params in declared.items() if key in params]
        if not owners:
            unknown.append(key)
        elif len(owners) > 1:
            ambiguous[key] = owners
        else:
            bare.append((owners[0], key, value))
    if unknown:
        listing = "; ".join(
            f"{nb.stem}: {', '.join(ps) or '(none)'}" for nb, ps in declared.items()
        )
        raise RunnerError(
            f"unknown parameter(s) {', '.join(sorted(unknown))}. Parameters by step: {listing}"
        )
    if ambiguous:
        raise RunnerError(
            " ".join(
                f"parameter {name} is declared by {', '.join(nb.stem for nb in owners)}: say which step "
                f"it is for, e.g. -p {owners[0].stem[:2]}.{name}={given[name]} "
                f"(a step's number or name, a dot, the parameter; repeat for each step)."
                for name, owners in ambiguous.items()
            )
        )
    bound: dict[Path, dict[str, Any]] = {nb: {} for nb in notebooks}
    for nb, name, value in bare + scoped:
        bound[nb][name] = declared[nb][name].coerce(value)
    return bound


# --------------------------------------------------------------------------- records


@dataclass
class StepRecord:
    """What happened to one step of a run."""

    step: str
    notebook: str
    status: str = "pending"  # pending | ok | failed | skipped
    parameters: dict[str, Any] = field(default_factory=dict)
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    outputs: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class RunManifest:
    """The record of one pipeline run (written as ``manifest.json``)."""

    run_id: str
    status: str
    parameters: dict[str, Any]
    started_at: str
    finished_at: str | None = None
    duration_s: float | None = None
    git_commit: str | None = None
    python: str = field(default_factory=platform.python_version)
    packages: dict[str, str] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def read_manifest(path: Path) -> RunManifest | None:
    """The manifest written at ``path``; None when there is none (or it cannot be read)."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("%s is not valid JSON: a new manifest replaces it", path)
        return None
    names = {f.name for f in fields(RunManifest)}
    step_names = {f.name for f in fields(StepRecord)}
    manifest = RunManifest(**{k: v for k, v in raw.items() if k in names and k != "steps"})
    manifest.steps = [
        StepRecord(**{k: v for k, v in step.items() if k in step_names})
        for step in raw.get("steps", [])
    ]
    return manifest


RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9_:+-][A-Za-z0-9._:+-]*")


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` if it can name a folder directly under ``reports/``.

    Letters, digits and ``. _ : + -``, not starting with a dot (Airflow's
    ``scheduled__2024-01-01T00:00:00+00:00`` is fine).

    Raises:
        RunnerError: Anything else: a slash would write outside ``reports/`` or nest folders
            the index does not list.
    """
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise RunnerError(
            f"run id {run_id!r} cannot name a run folder: use letters, digits and . _ : + - "
            "(no slash, space or leading dot), e.g. 2024-06-01T02:00:00+00:00"
        )
    return run_id


def new_run_id() -> str:
    """A sortable, unique run id such as ``20261125T134501Z-3f9a1c``."""
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


def package_versions(names: Iterable[str] = KEY_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape results."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(root: Path) -> str | None:
    """The checked-out commit, with ``-dirty`` when the work tree has changes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def render_html(notebook: Path, target: Path) -> Path:
    """Render an executed notebook to HTML without code cells (a report, not code)."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
    )
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    target.write_text(body)
    return target


def _href(path: str) -> str:
    """A link relative to the reports folder (``./`` and quoted: a run id may hold ``:``)."""
    return html.escape("./" + quote(path))


def write_index(reports_dir: Path) -> Path:
    """Write ``reports/index.html`` listing every run, newest first."""
    rows = []
    for manifest_path in sorted(reports_dir.glob("*/manifest.json"), reverse=True):
        try:
            m = json.loads(manifest_path.read_text())
        except ValueError:
            continue
        run_dir = manifest_path.parent.name
        steps = []
        for s in m.get("steps", []):
            # a step that never ran (blocked, skipped) has no report: its name, unlinked
            report = next((o for o in s.get("outputs", []) if o.endswith(".html")), None)
            name = html.escape(s["step"])
            if report and (reports_dir / report).is_file():
                name = f'<a href="{_href(report)}">{name}</a>'
            steps.append(name + ("" if s["status"] == "ok" else f" ({html.escape(s['status'])})"))
        rows.append(
            f"<tr><td>{html.escape(m['run_id'])}</td><td>{html.escape(m['status'])}</td>"
            f"<td>{html.escape(m['started_at'])}</td><td>{m.get('duration_s') or ''}</td>"
            f"<td>{' '.join(steps)}</td>"
            f'<td><a href="{_href(f"{run_dir}/manifest.json")}">manifest</a></td></tr>'
        )
    page = (
        "<!doctype html><meta charset='utf-8'><title>Billing Workbench runs</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em .8em;text-align:left}"
        "tr:nth-child(even){background:#f4f4f4}</style>"
        "<h1>Billing Workbench: pipeline runs</h1><table><tr><th>run</th><th>status</th>"
        "<th>started (UTC)</th><th>seconds</th><th>reports</th><th></th></tr>"
        + "".join(rows)
        + "</table>"
    )
    index = reports_dir / "index.html"
    index.write_text(page)
    return index


# --------------------------------------------------------------------------- run


def run_pipeline(
    steps: Sequence[str] | None = None,
    *,
    parameters: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
    run_id: str | None = None,
    progress: bool = True,
    kernel_name: str = "python3",
    cell_timeout_s: int | None = None,
) -> RunManifest:
    """Execute pipeline notebooks in order and write the run's reports.

    Args:
        steps: Step names (``"01"``, ``"ingest"``, ``"01_ingest"``); all when empty.
        parameters: Values by parameter name; each notebook gets those it declares, typed.
        settings: Paths (reports folder, data folder, policy file) and the lock wait the
            steps use (the kernels get them through the environment); the environment's
            when omitted.
        run_id: Defaults to a fresh sortable id. The id of an earlier run adds these steps
            to it: a step run again replaces its record, the others keep theirs.
        progress: Show papermill's cell progress bar.
        kernel_name: The Jupyter kernel to run in.
        cell_timeout_s: How long one cell may run, in whole seconds (0: no limit); the
            ``cell_timeout_s`` setting when omitted. A cell that runs longer fails its step.

    Returns:
        The manifest, also written to ``reports/<run_id>/manifest.json``.

    Raises:
        RunnerError: Unknown step or parameter, a negative cell timeout, or a cell timeout
            not above ``lock_timeout_s`` (nothing was run).
        StepFailed: A notebook failed or a cell timed out (the manifest and the failed
            notebook are written).
    """
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError
    from papermill.exceptions import PapermillExecutionError

    from workbench.kernels import KernelManager

    settings = settings or load_settings()
    try:
        cell_limit = check_cell_timeout(
            settings.cell_timeout_s if cell_timeout_s is None else cell_timeout_s,
            name="cell timeout" if cell_timeout_s is not None else "cell_timeout_s",
        )
        check_lock_wait(
            settings.lock_timeout_s,
            cell_limit,
            lock_source=settings.sources.get("lock_timeout_s", "default"),
            cell_source=(
                settings.sources.get("cell_timeout_s", "default")
                if cell_timeout_s is None
                else "argument"
            ),
            cell_name="cell_timeout_s" if cell_timeout_s is None else "the cell timeout",
        )
    except ConfigError as exc:
        raise RunnerError(str(exc)) from exc
    root = settings.root
    notebooks = resolve_steps(root, steps)
    if not notebooks:
        raise RunnerError(f"no pipeline notebooks under {root / PIPELINE_DIR}")
    given = dict(parameters or {})
    run_id = validate_run_id(str(run_id or given.pop("run_id", None) or new_run_id()))
    bound = bind_parameters(notebooks, given)
    # run_id is a builtin: every notebook that declares it gets it.
    for nb in notebooks:
        if "run_id" in {p.name for p in notebook_parameters(nb)}:
            bound[nb]["run_id"] = run_id

    run_dir = Path(settings.reports_dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = run_dir / "manifest.json"
    # A re-used run id adds to its run: a re-run step replaces its own record, the others stay.
    previous = read_manifest(manifest_path)
    records = {
        nb: StepRecord(
            step=nb.stem,
            notebook=str(nb.relative_to(root)) if nb.is_relative_to(root) else str(nb),
        )
        for nb in notebooks
    }
    kept = (
        [s for s in previous.steps if s.step not in {nb.stem for nb in notebooks}]
        if previous
        else []
    )
    order = {p.stem: i for i, p in enumerate(pipeline_notebooks(root))}
    manifest = RunManifest(
        run_id=run_id,
        status="running",
        parameters={**(previous.parameters if previous else {}), **given},
        started_at=previous.started_at if previous else _now(),
        git_commit=git_commit(root),
        packages=package_versions(),
        steps=sorted(
            [*kept, *records.values()], key=lambda s: (order.get(s.step, len(order)), s.step)
        ),
    )
    manifest_path.write_text(manifest.to_json())
    # Settings reach the kernels through the environment (they inherit it): every setting
    # that was set (toml, environment, or an override from Python) is passed as set; one left
    # at its default is removed, so the kernels derive it as these settings did (paths under
    # WORKBENCH_DATA_DIR) even if the variable was set after they were loaded
    env_backup = dict(os.environ)
    os.environ.update(settings_environment(settings))
    for name in SETTING_NAMES:
        if name not in settings.sources and name != "data_dir":
            os.environ.pop(ENV_PREFIX + name.upper(), None)
    os.environ.update(
        {
            "WORKBENCH_HOME": str(root),
            "WORKBENCH_DATA_DIR": str(settings.data_dir),
            "WORKBENCH_REPORTS_DIR": str(settings.reports_dir),
            "WORKBENCH_RUN_ID": run_id,
            # the lock wait checked against the cell timeout above is the one the steps use
            "WORKBENCH_LOCK_TIMEOUT_S": repr(float(settings.lock_timeout_s)),
        }
    )
    t_run = time.perf_counter()
    failure: StepFailed | StepBlocked | None = None
    interrupted: BaseException | None = None  # Ctrl-C or an exit: re-raised as it is
    blocked = _blocked_steps(settings)
    try:
        for nb in notebooks:
            record = records[nb]
            record.parameters = bound[nb]
            if nb.stem in blocked:
                record.status = "blocked"
                record.error = blocked[nb.stem]
                failure = StepBlocked(nb.stem, blocked[nb.stem])
                for later in manifest.steps:
                    if later.status == "pending":
                        later.status = "skipped"
                break
            record.started_at = _now()
            out = run_dir / nb.name
            log.info("run %s: step %s", run_id, nb.stem)
            t0 = time.perf_counter()
            rerun = f"workbench run {nb.stem} --run-id {run_id}"
            try:
                pm.execute_notebook(
                    str(nb),
                    str(out),
                    parameters=bound[nb],
                    kernel_name=kernel_name,
                    cwd=str(root),
                    progress_bar=progress,
                    # saved as each cell starts and ends: a step that stops (a timeout, a
                    # dead kernel) leaves its notebook as far as it ran
                    request_save_on_cell_execute=True,
                    log_output=False,
                    execution_timeout=cell_limit or None,  # papermill: None is no limit
                    # a reply the kernel already sent is read within a poll slice, not after
                    # the cell timeout (workbench.kernels)
                    kernel_manager_class=KernelManager,
                )
                record.status = "ok"
            except PapermillExecutionError as exc:
                record.status = "failed"
                record.error = f"{exc.ename}: {exc.evalue}"
                failure = StepFailed(nb.stem, out, record.error, rerun=rerun)
            except CellTimeoutError as exc:
                record.status = "failed"
                if "IOPub" in str(exc) or not cell_limit:
                    # nbclient's other timeout: output still arriving after a cell finished
                    record.error = (
                        f"CellTimeoutError: {exc} (output kept arriving after a cell finished; "
                        "this is not the cell timeout): print less from the notebook, then "
                        "run the step again"
                    )
                    failure = StepFailed(nb.stem, out, record.error, rerun=rerun)
                else:
                    cell = _mark_timed_out_cell(out, cell_limit) if out.exists() else None
                    record.error = (
                        f"CellTimeoutError: {cell or 'a cell'} was still running after the "
                        f"{cell_limit} s cell timeout. If it is only slow, raise the limit: "
                        f"`workbench run --cell-timeout SECONDS` or the cell_timeout_s setting "
                        f"(0: no limit); if it hangs (a lock, a network call), "
                        + (
                            f"the executed notebook {out.with_suffix('.html')} shows how far it got"
                            if out.exists()
                            else "run the notebook by hand to see where"
                        )
                    )
                    failure = StepFailed(
                        nb.stem,
                        out,
                        record.error,
                        where=(
                            f"The notebook as far as it ran, the timed-out cell marked, is {out}"
                            if out.exists()
                            else "No executed notebook was written."
                        ),
                        rerun=rerun,
                    )
                failure.__cause__ = exc
            except BaseException as exc:
                # A dead kernel, a timeout, Ctrl-C: the step did not finish either.
                record.status = "failed"
                record.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
                if isinstance(exc, Exception):
                    failure = StepFailed(
                        nb.stem,
                        out,
                        f"{record.error} (the step stopped before its notebook finished)",
                        where=(
                            f"The notebook as far as it ran is {out}"
                            if out.exists()
                            else "No executed notebook was written."
                        ),
                        rerun=rerun,
                    )
                    failure.__cause__ = exc
                else:
                    exc.add_note(
                        f"run {run_id}: step {nb.stem} was stopped and is marked failed in "
                        f"{manifest_path}; re-run it with `{rerun}`"
                    )
                    interrupted = exc
            finally:
                record.duration_s = round(time.perf_counter() - t0, 2)
                record.finished_at = _now()
                if out.exists():
                    record.outputs.append(str(out.relative_to(settings.reports_dir)))
                    html_path = render_html(out, out.with_suffix(".html"))
                    record.outputs.append(str(html_path.relative_to(settings.reports_dir)))
                manifest_path.write_text(manifest.to_json())
            if failure or interrupted:
                for later in manifest.steps:
                    if later.status == "pending":
                        later.status = "skipped"
                break
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
        manifest.status = "ok" if all(s.status == "ok" for s in manifest.steps) else "failed"
        manifest.finished_at = _now()
        earlier = (previous.duration_s or 0.0) if previous else 0.0
        manifest.duration_s = round(earlier + time.perf_counter() - t_run, 2)
        manifest_path.write_text(manifest.to_json())
        write_index(Path(settings.reports_dir))
    if interrupted is not None:
        raise interrupted
    if failure:
        raise failure
    return manifest


def _mark_timed_out_cell(path: Path, limit: int) -> str | None:
    """Mark the cell that timed out in an executed notebook, as papermill marks a failed one.

    The timed-out cell is the last one papermill started. It gets an error output and a
    failed status, and a banner at the top of the notebook points to it (tagged like
    papermill's own, so a later papermill run of this notebook removes it).

    Returns:
        The cell as a reader finds it (``cell In [4] (`import time; time.sleep(30)`)``),
        or None when no cell had started.
    """
    nb = nbformat.read(path, as_version=4)
    started = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and c.get("metadata", {}).get("papermill", {}).get("start_time")
    ]
    if not started:
        return None
    cell = nb.cells[started[-1]]
    count = cell.get("execution_count")
    preview = "; ".join(ln.strip() for ln in cell.source.splitlines() if ln.strip())
    preview = preview if len(preview) <= 80 else preview[:77] + "..."
    name = f"cell In [{count}]" if count else f"cell {started[-1] + 1}"
    label = f"{name} (`{preview}`)" if preview else name
    message = f"stopped after the {limit} s cell timeout (the traceback above shows where it was)"
    cell.outputs.append(
        nbformat.v4.new_output(
            "error",
            ename="CellTimeoutError",
            evalue=message,
            traceback=[f"CellTimeoutError: {message}"],
        )
    )
    cell.metadata.setdefault("papermill", {}).update(status="failed", exception=True)
    nb.metadata.setdefault("papermill", {})["exception"] = True
    banner = nbformat.v4.new_markdown_cell(
        f"**This step stopped: {html.escape(label)} ran longer than the {limit} s cell "
        "timeout.** Its output so far is kept below."
    )
    banner.metadata["tags"] = ["papermill-error-cell-tag"]
    nb.cells.insert(0, banner)
    nbformat.write(nb, path)
    return label


def _blocked_steps(settings: Settings) -> dict[str, str]:
    """Steps paused by monitoring's schema guard (none when no approvals store exists yet)."""
    url = settings.approvals_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return {}
    from workbench.monitoring.rollback import blocked_steps

    return blocked_steps(settings)


def current_run_id(given: str = "") -> str:
    """The run id a notebook should record: the one given, else ``$WORKBENCH_RUN_ID``, else an
    ad-hoc id (a notebook run with plain papermill or by hand)."""
    return validate_run_id(given or os.environ.get("WORKBENCH_RUN_ID") or f"adhoc-{new_run_id()}")
