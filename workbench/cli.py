"""The ``workbench`` command line: what a scheduler or an operator types.

Every command exits non-zero on failure and says what to do next.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from workbench.config import (
    ConfigError,
    Settings,
    check_cell_timeout,
    check_lock_wait,
    load_settings,
)

if TYPE_CHECKING:
    from workbench.approvals import Identity


def _settings(ctx: click.Context):
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _identity(settings: Settings) -> Identity:
    """The user running the command, with their role from the roles file.

    Raises:
        click.ClickException: The roles file is malformed (which file, what is wrong).
    """
    from workbench.approvals import RolesError, resolve_identity

    try:
        return resolve_identity(settings)
    except RolesError as exc:
        raise click.ClickException(
            f"bad roles file {exc}. Fix it (`roles: {{user: role}}`, optionally `default_role`) "
            "or set WORKBENCH_ROLES_FILE to a good one, then run the command again"
        ) from exc


def _parse_params(pairs: tuple[str, ...], files: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for file in files:
        data = yaml.safe_load(Path(file).read_text()) or {}
        if not isinstance(data, dict):
            raise click.BadParameter(
                f"{file} must hold a mapping of parameter: value", param_hint="-f"
            )
        params.update(data)
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not name=value", param_hint="-p")
        key, value = pair.split("=", 1)
        params[key.strip()] = value
    return params


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.version_option(package_name="billing-workbench")
def main(verbose: bool) -> None:
    """Billing Workbench: subscription billing analytics from Jupyter."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("papermill", "traitlets", "numba", "matplotlib", "feast", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --------------------------------------------------------------------------- config


@main.command("config")
@click.pass_context
def config_cmd(ctx: click.Context) -> None:
    """Print the effective configuration and where each value came from."""
    settings = _settings(ctx)
    rows = settings.describe()
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        click.echo(f"{name:<{width}}  {value}  [{source}]")


# --------------------------------------------------------------------------- pipeline


@main.command("params")
@click.argument("step")
@click.pass_context
def params_cmd(ctx: click.Context, step: str) -> None:
    """Print a pipeline notebook's parameters with types, defaults and help."""
    from workbench.runner import RunnerError, notebook_parameters, resolve_steps

    settings = _settings(ctx)
    try:
        (notebook,) = resolve_steps(settings.root, [step])
        params = notebook_parameters(notebook)
    except RunnerError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Parameters of {notebook.relative_to(settings.root)}:")
    for p in params:
        click.echo(f"  {p.name}: {p.type} = {p.default}\n      {p.help}")


@main.command("run")
@click.argument("steps", nargs=-1)
@click.option(
    "-p",
    "--param",
    "pairs",
    multiple=True,
    metavar="[STEP.]NAME=VALUE",
    help="A notebook parameter (repeatable). A name several selected steps declare "
    "needs its step: 02.start=2024-06-01.",
)
@click.option(
    "-f",
    "--params-file",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="YAML file of parameters.",
)
@click.option(
    "--run-id",
    default=None,
    help="Use this run id instead of a fresh one (letters, digits, . _ : + -); "
    "an earlier run's id adds the steps to that run.",
)
@click.option("--no-progress", is_flag=True, help="Hide the cell progress bar.")
@click.option(
    "--cell-timeout",
    "cell_timeout",
    default=None,
    metavar="SECONDS",
    callback=lambda ctx, param, value: _cell_timeout(value),
    help="Fail a step whose cell runs longer than this (0: no limit; default: the "
    "cell_timeout_s setting, 3600). Must be above lock_timeout_s unless 0.",
)
@click.pass_context
def run_cmd(
    ctx: click.Context,
    steps: tuple[str, ...],
    pairs,
    files,
    run_id,
    no_progress,
    cell_timeout: int | None = None,
) -> None:
    """Execute pipeline notebooks (default: all, in order) and write reports/<run_id>/."""
    from workbench.runner import RunnerError, StepBlocked, StepFailed, run_pipeline

    settings = _settings(ctx)
    if cell_timeout is not None:  # checked as the cell_timeout_s setting is
        try:
            check_lock_wait(
                settings.lock_timeout_s,
                cell_timeout,
                lock_source=settings.sources.get("lock_timeout_s", "default"),
                cell_source="--cell-timeout",
                cell_name="the cell timeout",
            )
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--cell-timeout") from exc
    try:
        manifest = run_pipeline(
            list(steps) or None,
            parameters=_parse_params(pairs, files),
            settings=settings,
            run_id=run_id,
            progress=not no_progress,
            cell_timeout_s=cell_timeout,
        )
    except RunnerError as exc:
        raise click.ClickException(str(exc)) from exc
    except (StepFailed, StepBlocked) as exc:
        click.echo(f"Run stopped. {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        notes = " ".join(getattr(exc, "__notes__", []))
        click.echo(f"Run interrupted. {notes}".strip(), err=True)
        sys.exit(130)
    run_dir = Path(settings.reports_dir) / manifest.run_id
    click.echo(f"Run {manifest.run_id} ok in {manifest.duration_s:.0f} s.")
    for step in manifest.steps:
        click.echo(f"  {step.step:<22} {step.status:<7} {step.duration_s:>7.1f} s")
    click.echo(f"Reports: {run_dir}  (index: {Path(settings.reports_dir) / 'index.html'})")


def _cell_timeout(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return check_cell_timeout(value, name="the value")
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--cell-timeout") from exc


def _demo_roles(settings) -> None:
    """Give the local user the admin role in a demo that has no roles file yet (approvals need
    an approver; in production the roles file is written by whoever runs the service)."""
    from workbench.approvals import local_user, roles_file

    path = roles_file(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"# who may do what (viewer, analyst, approver, admin)\nroles:\n  {local_user()}: admin\n"
        )
        click.echo(f"Wrote {path}: {local_user()} is admin for the demo.")


@main.command("demo")
@click.option(
    "--accounts", default=None, type=int, help="Simulated accounts (default: the notebook's)."
)
@click.option(
    "--months", default=None, type=int, help="Simulated months (default: the notebook's)."
)
@click.pass_context
def demo_cmd(ctx: click.Context, accounts: int | None, months: int | None) -> None:
    """Simulate a company and run the whole pipeline on it."""
    params = {k: v for k, v in {"accounts": accounts, "months": months}.items() if v is not None}
    _demo_roles(_settings(ctx))
    ctx.invoke(
        run_cmd,
        steps=(),
        pairs=tuple(f"{k}={v}" for k, v in params.items()),
        files=(),
        run_id=None,
        no_progress=False,
    )
    click.echo("Dashboards: `make serve`, then open the URL it prints.")


# --------------------------------------------------------------------------- simulate


@main.command("simulate")
@click.option("--accounts", default=3000, show_default=True, help="Number of accounts.")
@click.option("--months", default=36, show_default=True, help="Months of history.")
@click.option("--seed", default=0, show_default=True, help="Random seed (same seed, same bytes).")
@click.option("--start", default="2023-01-01", show_default=True, help="First day simulated.")
@click.option("--faults", is_flag=True, help="Inject ingestion faults (listed in a manifest).")
@click.option(
    "--regime-change", type=int, default=None, help="Month index from which behaviour shifts."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Data folder (default: the configured data_dir).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    help="Processes (output is identical for any number).",
)
@click.pass_context
def simulate_cmd(ctx, accounts, months, seed, start, faults, regime_change, out, workers) -> None:
    """Simulate a subscription company as Stripe events and CSV exports, with its ground truth."""
    from workbench.simulator import DataFolderConflict, simulate_data_folder

    settings = _settings(ctx)
    try:
        summary = simulate_data_folder(
            settings,
            accounts=accounts,
            months=months,
            seed=seed,
            start=start,
            faults=faults,
            regime_change=regime_change,
            out=out,
            progress=True,
            workers=workers,
        )
    except DataFolderConflict as exc:
        raise click.ClickException(str(exc)) from exc
    for key, value in summary.to_dict().items():
        if not isinstance(value, dict | list):
            click.echo(f"{key:<24} {value}")


# --------------------------------------------------------------------------- ingest


@main.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--source",
    type=click.Choice(["stripe", "webhook", "stripe-csv", "csv"]),
    default="stripe",
    show_default=True,
    help="What the files are.",
)
@click.option(
    "--mapping", default=None, help="CSV mapping: a bundled name or a YAML path (default: detect)."
)
@click.option(
    "--remap",
    is_flag=True,
    help="CSV files already loaded under another mapping: replace their rows and quarantine "
    "rows with what --mapping makes (one transaction; the earlier load is kept as superseded).",
)
@click.pass_context
def ingest_cmd(
    ctx: click.Context, paths: tuple[str, ...], source: str, mapping: str | None, remap: bool
) -> None:
    """Load files or folders into the warehouse (idempotent; bad records are quarantined)."""
    from workbench.ingest import IngestError, ingest

    try:
        report = ingest(
            list(paths),
            source=source,
            mapping=mapping,
            remap=remap,  # who asked: the local user (workbench.approvals.local_user)
            settings=_settings(ctx),
            progress=True,
        )
    except IngestError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(str(report))
    for f in report.files:
        if f.status == "ok" and f.message:  # e.g. a file already loaded under another mapping
            click.echo(f"{f.path}: {f.message}", err=True)
    frame = report.frame()
    if "status" in frame and (frame["status"] != "ok").any():
        click.echo(frame[frame["status"] != "ok"].to_string(index=False), err=True)
        sys.exit(1)


@main.command("rebuild")
@click.pass_context
def rebuild_cmd(ctx: click.Context) -> None:
    """Recreate the warehouse from the raw lake (identical tables)."""
    from workbench.ingest import rebuild

    click.echo(str(rebuild(_settings(ctx))))


@main.command("verify")
@click.pass_context
def verify_cmd(ctx: click.Context) -> None:
    """Check conservation, lake hashes, contracts and that no card number was stored."""
    from workbench.ingest import verify

    report = verify(_settings(ctx))
    click.echo(str(report))
    if not report.ok:
        sys.exit(1)


@main.command("erase")
@click.option("--customer", "customer_id", required=True, help="The customer (account) id.")
@click.option("--why", required=True, help="The reason, recorded with who erased.")
@click.pass_context
def erase_cmd(ctx: click.Context, customer_id: str, why: str) -> None:
    """Remove a customer's personal data everywhere, the raw lake included (recorded)."""
    from workbench.approvals import local_user
    from workbench.ingest import erase_customer

    click.echo(str(erase_customer(customer_id, who=local_user(), why=why, settings=_settings(ctx))))


# --------------------------------------------------------------------------- revenue


@main.group("revenue", invoke_without_command=True)
@click.option("--policy", default="stripe", show_default=True, help="MRR policy name.")
@click.option(
    "--currency",
    "reporting_currency",
    default=None,
    help="Reporting currency (default: configured).",
)
@click.option(
    "--out",
    type=click.Path(),
    default=None,
    help="Write account-month MRR and the bridge here (.csv or .parquet folder).",
)
@click.pass_context
def revenue_group(
    ctx: click.Context, policy: str, reporting_currency: str | None, out: str | None
) -> None:
    """MRR under a named policy; `revenue diff` reconciles two policies."""
    if ctx.invoked_subcommand is not None:
        return
    from workbench.lakehouse import open_warehouse
    from workbench.revenue import account_month_mrr
    from workbench.revenue.export import export
    from workbench.revenue.metrics import kpi_tiles

    settings = _settings(ctx)
    currency = reporting_currency or settings.reporting_currency
    with open_warehouse(settings).read(step="revenue") as con:
        if out:
            for name, path in export(
                con, policy=policy, out=out, reporting_currency=currency
            ).items():
                click.echo(f"wrote {name}: {path}")
            return
        tiles = kpi_tiles(account_month_mrr(con, policy=policy, reporting_currency=currency))
    for key, value in tiles.items():
        click.echo(f"{key:<26} {value}")


@revenue_group.command("diff")
@click.option(
    "--policy", "policies", multiple=True, required=True, help="Two policies (give --policy twice)."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the per account-month diff as CSV.",
)
@click.pass_context
def revenue_diff_cmd(ctx: click.Context, policies: tuple[str, ...], out: str | None) -> None:
    """Explain, per account-month, why two policies disagree and by how much."""
    from workbench.lakehouse import open_warehouse
    from workbench.revenue.diff import diff_policies, diff_summary

    if len(policies) != 2:
        raise click.UsageError("give exactly two policies: --policy a --policy b")
    settings = _settings(ctx)
    with open_warehouse(settings).read(step="revenue-diff") as con:
        diff = diff_policies(
            con, policies[0], policies[1], reporting_currency=settings.reporting_currency
        )
    click.echo(diff_summary(diff).to_string(index=False))
    if out:
        diff.to_csv(out, index=False)
        click.echo(f"wrote {len(diff):,} differing account-months to {out}")


# --------------------------------------------------------------------------- features


@main.group("features")
def features_group() -> None:
    """The feature registry."""


@features_group.command("list")
@click.option("--entity", default=None, help="account_id, subscription_id or invoice_id.")
def features_list_cmd(entity: str | None) -> None:
    """Print every declared feature with its entity, window, ttl and version."""
    from workbench.features import registry_frame

    frame = registry_frame()
    if entity:
        frame = frame[frame["entity"] == entity]
    cols = [
        "name",
        "entity",
        "domain",
        "aggregation",
        "window_days",
        "ttl_hours",
        "dtype",
        "version",
        "description",
    ]
    click.echo(frame[[c for c in cols if c in frame]].to_string(index=False, max_colwidth=60))
    click.echo(f"\n{len(frame)} features")


# --------------------------------------------------------------------------- models


@main.group("models")
def models_group() -> None:
    """The model registry (MLflow): versions, aliases, cards, promotion through approvals."""


@models_group.command("list")
@click.pass_context
def models_list_cmd(ctx: click.Context) -> None:
    """Every registered version with its aliases and headline metrics."""
    from workbench.models import list_models

    frame = list_models(settings=_settings(ctx))
    click.echo(
        "No model registered yet: run 05_churn / 06_recovery."
        if frame.empty
        else frame.to_string(index=False, max_colwidth=30)
    )


@models_group.command("card")
@click.argument("model")
@click.option("--version", default="champion", show_default=True, help="A version number or alias.")
@click.pass_context
def models_card_cmd(ctx: click.Context, model: str, version: str) -> None:
    """Print a registered version's model card (markdown)."""
    from workbench.models import model_card

    click.echo(model_card(model, version, settings=_settings(ctx)))


@models_group.command("promote")
@click.argument("model")
@click.argument("version")
@click.option("--reason", required=True, help="Why (shown to the approver, recorded).")
@click.pass_context
def models_promote_cmd(ctx: click.Context, model: str, version: str, reason: str) -> None:
    """Ask for VERSION of MODEL to become champion: queued for an approver (maker-checker)."""
    from workbench.models import request_promotion

    settings = _settings(ctx)
    outcome = request_promotion(
        model, version, who=_identity(settings), reason=reason, settings=settings
    )
    click.echo(outcome.message)
    if not outcome.ok:
        sys.exit(1)


@models_group.command("rollback")
@click.argument("model")
@click.option(
    "--to",
    "to_version",
    default=None,
    help="Version to return to (default: the previous champion).",
)
@click.option("--reason", required=True, help="Why (shown to the approver, recorded).")
@click.pass_context
def models_rollback_cmd(
    ctx: click.Context, model: str, to_version: str | None, reason: str
) -> None:
    """Ask for MODEL's champion to be rolled back: queued for an approver (maker-checker)."""
    from workbench.models.registry import RegistryError, request_rollback

    settings = _settings(ctx)
    try:
        outcome = request_rollback(
            model,
            who=_identity(settings),
            reason=reason,
            to_version=to_version,
            settings=settings,
        )
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(outcome.message)
    if not outcome.ok:
        sys.exit(1)


# --------------------------------------------------------------------------- policy


@main.group("policy")
def policy_group() -> None:
    """The dunning policy file: show it, propose changes (an approver approves them)."""


@policy_group.command("show")
@click.pass_context
def policy_show_cmd(ctx: click.Context) -> None:
    """The policy in force: file, content version and file hash."""
    from workbench.policy import PolicyError
    from workbench.policy_changes import current_policy

    try:
        info = current_policy(_settings(ctx))
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"file     {info.path}")
    click.echo(f"version  {info.version}")
    click.echo(f"sha256   {info.sha256}")
    click.echo(f"label    {info.label or '(none)'}")


@policy_group.command("propose")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--reason", required=True, help="Why (shown to the approver, recorded).")
@click.pass_context
def policy_propose_cmd(ctx: click.Context, file: str, reason: str) -> None:
    """Ask for FILE to become the policy: validated, diffed, queued for an approver."""
    from workbench.policy import PolicyError
    from workbench.policy_changes import PolicyChangeError, diff_rows, propose_policy_change

    settings = _settings(ctx)
    try:
        proposal = propose_policy_change(
            settings, Path(file), who=_identity(settings), reason=reason
        )
    except (PolicyError, PolicyChangeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{proposal.old_version} -> {proposal.new_version}:")
    rows = diff_rows(proposal.diff)
    width = max(len(key) for key, _, _ in rows)
    for key, old, new in rows:
        click.echo(f"  {key:<{width}}  {old} -> {new}")
    click.echo(
        proposal.outcome.message + (f" (item {proposal.item_id})" if proposal.item_id else "")
    )
    if not proposal.outcome.ok:
        sys.exit(1)
    click.echo("An approver other than you approves it in the approvals dashboard.")


# --------------------------------------------------------------------------- receive


@main.command("receive")
@click.option("--port", default=8787, show_default=True, help="Port to listen on.")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default)."
)
@click.option(
    "--realtime/--no-realtime",
    default=True,
    show_default=True,
    help="Decide dunning on invoice.payment_failed and check invoices on invoice.finalized.",
)
@click.pass_context
def receive_cmd(ctx: click.Context, port: int, host: str, realtime: bool) -> None:
    """Receive Stripe webhooks at POST /webhooks/stripe (secrets from $STRIPE_WEBHOOK_SECRET)."""
    from workbench.webhooks import secrets_from_env, serve

    settings = _settings(ctx)
    if not secrets_from_env():
        raise click.ClickException(
            "STRIPE_WEBHOOK_SECRET is not set: export the endpoint's signing secret(s), "
            "comma-separated during rotation (whsec_...)."
        )
    on_event = None
    if realtime:
        from workbench.dunning_realtime import make_handler

        on_event = make_handler(settings)
    click.echo(f"Receiving at http://{host}:{port}/webhooks/stripe  (Ctrl-C to stop)")
    serve(port, host=host, settings=settings, on_event=on_event)


# --------------------------------------------------------------------------- approvals


@main.group("audit")
def audit_group() -> None:
    """The append-only, hash-chained audit log."""


@audit_group.command("verify")
@click.option(
    "--head-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="A head exported earlier (detects truncation).",
)
@click.pass_context
def audit_verify_cmd(ctx: click.Context, head_file: str | None) -> None:
    """Recompute the chain; exit 1 and name the first bad entry if anything was changed."""
    from workbench.audit import verify_audit

    result = verify_audit(_settings(ctx), head_file=head_file)
    click.echo(result.summary())
    if not result.ok:
        sys.exit(1)


@audit_group.command("export-head")
@click.argument("path", type=click.Path(dir_okay=False))
@click.pass_context
def audit_export_cmd(ctx: click.Context, path: str) -> None:
    """Write the current head hash to PATH (keep it outside the store)."""
    from workbench.audit import export_audit_head

    head = export_audit_head(_settings(ctx), path)
    click.echo(f"head written to {path}: {head}")


@main.command("approvals")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    default=("pending",),
    show_default=True,
    help="Statuses to list (repeatable).",
)
@click.option("--limit", default=50, show_default=True)
@click.pass_context
def approvals_cmd(ctx: click.Context, statuses: tuple[str, ...], limit: int) -> None:
    """List the action queue (approve and reject in the approvals dashboard)."""
    from workbench.approvals import open_store, queue_frame

    frame = queue_frame(open_store(_settings(ctx)), statuses=list(statuses), limit=limit)
    click.echo(
        "The queue is empty." if frame.empty else frame.to_string(index=False, max_colwidth=40)
    )


@main.group("automation")
def automation_group() -> None:
    """Pause or resume automated actions (they fall back to insight only)."""


def _automation(ctx: click.Context, *, pause: bool, action_type: str, reason: str) -> None:
    from workbench.approvals import open_store, pause_automation, resume_automation

    settings = _settings(ctx)
    fn = pause_automation if pause else resume_automation
    outcome = fn(
        open_store(settings), who=_identity(settings), action_type=action_type, reason=reason
    )
    click.echo(outcome.message)
    if not outcome.ok:
        sys.exit(1)


@automation_group.command("pause")
@click.option(
    "--action", "action_type", default="*", show_default=True, help="Action type, or * for all."
)
@click.option("--reason", required=True, help="Why (recorded in the audit log).")
@click.pass_context
def automation_pause_cmd(ctx: click.Context, action_type: str, reason: str) -> None:
    """Force insight-only for an action type (admins)."""
    _automation(ctx, pause=True, action_type=action_type, reason=reason)


@automation_group.command("resume")
@click.option(
    "--action", "action_type", default="*", show_default=True, help="Action type, or * for all."
)
@click.option("--reason", required=True, help="Why (recorded in the audit log).")
@click.pass_context
def automation_resume_cmd(ctx: click.Context, action_type: str, reason: str) -> None:
    """Lift a pause (admins)."""
    _automation(ctx, pause=False, action_type=action_type, reason=reason)


# --------------------------------------------------------------------------- monitoring


@main.command("monitor")
@click.option("--model", default="churn_90d", show_default=True, help="Registered model to watch.")
@click.option(
    "--reference", default="", help="Reference window START,END (default: 6 months before current)."
)
@click.option("--current", default="", help="Current window START,END (default: last 3 months).")
@click.option(
    "--run-id", default=None, help="Run id to tag alerts and reports with (default: new)."
)
@click.option(
    "--no-act", is_flag=True, help="Compute only: no alerts, rollback, pauses or self-healing."
)
@click.pass_context
def monitor_cmd(ctx: click.Context, model: str, reference: str, current: str, run_id: str | None,
                no_act: bool) -> None:  # fmt: skip
    """Run the monitors once: drift, calibration, business metrics, golden cohort, alerts,
    automatic rollback and self-healing (what 09_drift_review does, without the notebook)."""
    from workbench.monitoring.alerts import AlertRulesError
    from workbench.monitoring.review import run_monitoring
    from workbench.runner import RunnerError, new_run_id

    settings = _settings(ctx)
    try:
        res = run_monitoring(settings, run_id=run_id or new_run_id(), model=model,
                             reference=reference, current=current, act=not no_act,
                             heal=not no_act)  # fmt: skip
    except (AlertRulesError, RunnerError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"run {res.run_id}: {model} {res.alias or 'not registered'} v{res.version} {res.windows}"
    )
    click.echo(res.summary().to_string(index=False) if res.metrics else "no metrics computed")
    for note in res.notes:
        click.echo(f"note: {note}")
    if res.rollback is not None and res.rollback.status != "healthy":
        click.echo(f"rollback: {res.rollback.message}")
    frame = res.alerts_frame()
    click.echo("no alert fired" if frame.empty else frame.to_string(index=False, max_colwidth=60))


@main.group("alerts")
def alerts_group() -> None:
    """Monitoring alerts: list, acknowledge, resolve (rules: workbench/monitoring/alerts.yaml)."""


@alerts_group.command("list")
@click.option("--status", default="live", show_default=True,
              help="open | acknowledged | resolved | live (open or acknowledged) | all")  # fmt: skip
@click.option("--limit", default=50, show_default=True)
@click.pass_context
def alerts_list_cmd(ctx: click.Context, status: str, limit: int) -> None:
    """List alerts, most recently seen first."""
    from workbench.monitoring.alerts import list_alerts

    frame = list_alerts(_settings(ctx), status=None if status == "all" else status, limit=limit)
    cols = ["alert_id", "rule", "subject", "severity", "status", "value", "count", "last_seen"]
    click.echo("No alerts." if frame.empty else frame[cols].to_string(index=False, max_colwidth=40))


def _alert_change(ctx: click.Context, alert_id: str, comment: str, *, resolve: bool) -> None:
    from workbench.monitoring import alerts

    settings = _settings(ctx)
    fn = alerts.resolve if resolve else alerts.acknowledge
    try:
        alert = fn(settings, alert_id, who=_identity(settings), comment=comment)
    except (alerts.AlertError, PermissionError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"alert {alert.alert_id} ({alert.rule}) is {alert.status}")


@alerts_group.command("ack")
@click.argument("alert_id")
@click.option("--comment", default="", help="Recorded in the audit log.")
@click.pass_context
def alerts_ack_cmd(ctx: click.Context, alert_id: str, comment: str) -> None:
    """Acknowledge an open alert (analysts and above)."""
    _alert_change(ctx, alert_id, comment, resolve=False)


@alerts_group.command("resolve")
@click.argument("alert_id")
@click.option("--comment", default="", help="Recorded in the audit log.")
@click.pass_context
def alerts_resolve_cmd(ctx: click.Context, alert_id: str, comment: str) -> None:
    """Resolve an open or acknowledged alert (approvers and above)."""
    _alert_change(ctx, alert_id, comment, resolve=True)


# --------------------------------------------------------------------------- serve


@main.command("serve")
@click.option("--port", default=8866, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--pool-size",
    default=1,
    show_default=True,
    help="Pre-heated kernels kept ready for the finance dashboard (0: none).",
)
@click.pass_context
def serve_cmd(ctx: click.Context, port: int, host: str, pool_size: int) -> None:
    """Serve the Voila dashboards in notebooks/dashboards/.

    The finance dashboard's notebook runs ahead of its visitor in a pre-heated kernel, and
    checks when the visitor arrives that no newer snapshot was published meanwhile.
    """
    import subprocess

    from workbench.dashboards.startup import kernel_address, preheat_options
    from workbench.kernels import voila_options

    settings = _settings(ctx)
    folder = settings.root / "notebooks" / "dashboards"
    click.echo(f"Dashboards: http://{host}:{port}/  (Ctrl-C to stop)")
    cmd = [
        sys.executable,
        "-m",
        "voila",
        str(folder),
        f"--port={port}",
        f"--Voila.ip={host}",
        "--no-browser",
        "--Voila.tornado_settings={'headers': {'Content-Security-Policy': \"frame-ancestors 'self'\"}}",
        *preheat_options(pool_size),
        *voila_options(),
    ]
    env = {"VOILA_APP_IP": kernel_address(host), **os.environ}
    raise SystemExit(subprocess.call(cmd, cwd=settings.root, env=env))


if __name__ == "__main__":  # pragma: no cover
    main()
