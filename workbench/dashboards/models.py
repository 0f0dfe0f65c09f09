"""The models dashboard: registry and model cards, monitoring metrics over time, drift,
alerts, and promotion/rollback requests.

Reads the ``models`` snapshot (published by ``09_drift_review``) for everything it shows,
and the approvals store for what people do: acknowledging or resolving an alert, and
*requesting* a promotion or a rollback (queued as ``model_promotion`` / ``model_rollback``;
an approver approves it in the approvals dashboard, never here).

Who is acting comes from the server (:func:`workbench.approvals.resolve_identity`). Buttons a
role may not use are disabled as a courtesy only: each callback calls the same functions
as the CLI, which check the role in Python and audit denied attempts.

Stable hooks for browser tests: ``.wb-identity[data-role]``, tiles ``[data-kpi]``, registry
rows ``tr.wb-model-row[data-model][data-version][data-aliases]``, the card ``.wb-card``,
drift rows ``tr.wb-drift-row[data-drifted]``, alert rows ``.wb-alert-<id>`` with buttons
``wb-ack`` / ``wb-resolve`` and info ``[data-status]``, request buttons ``wb-promote`` /
``wb-rollback``, and outcomes in ``.wb-result[data-code]``.
"""

from __future__ import annotations

import html
import logging

import ipywidgets as widgets
import pandas as pd

from workbench.approvals import Identity, Role, RolesError, StoreError, resolve_identity
from workbench.approvals import open_store as open_approvals
from workbench.config import Settings
from workbench.dashboards.base import Dashboard, tile_html
from workbench.monitoring import alerts as al

log = logging.getLogger(__name__)

CSS = """
<style>
table.wb-table {border-collapse:collapse;font-size:12px}
table.wb-table td, table.wb-table th {border-bottom:1px solid #eee;padding:2px 8px;text-align:left}
tr.wb-drift-row[data-drifted=true] td {background:#fff4e5}
.wb-alert {border-bottom:1px solid #eee;padding:4px 0;align-items:center}
.wb-alert-info {font-size:13px;min-width:620px;max-width:820px}
.wb-sev-critical {color:#b00;font-weight:600}
.wb-result {padding:6px 10px;border-radius:4px;margin:4px 0}
.wb-result[data-ok=true] {background:#e6f6e6}
.wb-result[data-ok=false] {background:#fff0f0}
.wb-card {border:1px solid #ddd;padding:8px 14px;border-radius:6px;max-width:900px}
</style>
"""


def _table(frame: pd.DataFrame, *, row_class: str = "", attrs=None) -> str:  # noqa: ANN001
    """A small HTML table; ``attrs(row) -> dict`` adds ``data-*`` attributes per row."""
    if frame.empty:
        return '<div class="wb-empty">Nothing to show.</div>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for _, r in frame.iterrows():
        extra = " ".join(
            f'data-{k}="{html.escape(str(v))}"' for k, v in (attrs(r) if attrs else {}).items()
        )
        cells = "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values)
        rows.append(f'<tr class="{row_class}" {extra}>{cells}</tr>')
    return f'<table class="wb-table"><tr>{head}</tr>{"".join(rows)}</table>'


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _markdown(text: str) -> str:
    try:
        from markdown_it import MarkdownIt
    except ModuleNotFoundError:  # pragma: no cover - jupyter ships markdown-it-py
        return f"<pre>{html.escape(text)}</pre>"
    return MarkdownIt("commonmark").enable("table").render(text)


class ModelsDashboard(Dashboard):
    """Model cards, monitoring metrics over time, drift, alerts, promotion/rollback requests.

    Args:
        settings: Workbench settings.
        identity: Only for tests; the notebook never passes it (the server decides).
    """

    title = "Models"
    snapshot = "models"

    def __init__(
        self, settings: Settings | None = None, *, identity: Identity | None = None
    ) -> None:
        super().__init__(settings)
        self._identity_override = identity
        self.alert_rows: dict[str, tuple[widgets.HTML, widgets.Button, widgets.Button]] = {}
        self.last_code = ""

    def load(self) -> bool:
        """The snapshot, who is acting, and the approvals store."""
        if not super().load():
            self.show_message(
                "empty", "No model monitoring published yet",
                "Run the pipeline through 09_drift_review (`workbench run`) to publish the models "
                "snapshot; this dashboard only reads what the pipeline published.",
            )  # fmt: skip
            return False
        try:
            self.identity = self._identity_override or resolve_identity(self.settings)
            self.store = open_approvals(self.settings)
        except (RolesError, StoreError) as exc:
            self.show_message("error", "Cannot open the approvals store", str(exc))
            return False
        return True

    def t(self, name: str) -> pd.DataFrame:
        """A snapshot table (empty when the snapshot does not have it)."""
        return self.tables.get(name, pd.DataFrame())

    # ----------------------------------------------------------------- layout

    def build(self) -> None:
        who = self.identity
        self.identity_html = widgets.HTML(
            CSS + f'<div class="wb-identity" data-user="{html.escape(who.user)}" data-role="{who.role.label}">'
            f"Signed in as <b>{html.escape(who.user)}</b> ({who.role.label}). Requests go to the "
            "approvals queue; an approver decides them in the approvals dashboard.</div>"
        )  # fmt: skip
        meta = self.info.get("metadata", {})
        registry = self.t("registry")
        champions = (
            registry[registry["aliases"].fillna("").str.contains("champion")]
            if len(registry)
            else registry
        )
        live = al.list_alerts(self.store, status="live")
        self.tiles = widgets.HTML(
            '<div style="display:flex">'
            + tile_html("Registered versions", str(len(registry)), key="versions")
            + tile_html("Champions", str(len(champions)), key="champions")
            + tile_html("Live alerts", str(len(live)), key="live_alerts")
            + tile_html("Monitoring run", str(meta.get("monitor_run_id", "—")), key="monitor_run")
            + "</div>"
        )  # fmt: skip
        self.result = widgets.HTML()
        self.registry_html = widgets.HTML(self._registry_html())
        options = self._card_options()
        cards, watched = self.t("model_cards"), meta.get("model")
        first = list(range(len(cards)))
        chosen = [i for i in first if cards["model"].iloc[i] == watched] or first or [-1]
        self.card_pick = widgets.Dropdown(
            options=options, value=chosen[0], description="Model card"
        )
        self.card_pick.add_class("wb-card-pick")
        self.card_html = widgets.HTML()
        self.card_pick.observe(lambda _c: self.guarded(self.show_card)(), names="value")
        self.metrics_out = widgets.Output()
        self.drift_html = widgets.HTML(self._drift_html())
        self.alerts_box = widgets.VBox()
        self.requests_box = self._requests_box()
        self.content.children = [
            self.identity_html, self.tiles, self.result,
            widgets.HTML("<h3>Registry</h3>"), self.registry_html, self.requests_box,
            widgets.HTML("<h3>Model card</h3>"), self.card_pick, self.card_html,
            widgets.HTML("<h3>Monitoring metrics over time</h3>"), self.metrics_out,
            widgets.HTML("<h3>Drift (latest monitoring run)</h3>"), self.drift_html,
            widgets.HTML("<h3>Alerts</h3>"), self.alerts_box,
        ]  # fmt: skip
        self.show_card()
        self._draw_metrics()
        self.refresh_alerts()

    def _registry_html(self) -> str:
        reg = self.t("registry")
        if reg.empty:
            return (
                '<div class="wb-empty">No model registered yet: run 05_churn / 06_recovery.</div>'
            )
        cols = [
            c
            for c in (
                "model",
                "version",
                "aliases",
                "test_roc_auc",
                "test_ece",
                "promoted_by",
                "promoted_at",
            )
            if c in reg
        ]
        return _table(reg[cols], row_class="wb-model-row",
                      attrs=lambda r: {"model": r["model"], "version": r["version"], "aliases": r.get("aliases") or ""})  # fmt: skip

    def _card_options(self) -> list[tuple[str, int]]:
        cards = self.t("model_cards")
        return [
            (f"{r.model} v{r.version} ({r.aliases})", i) for i, r in enumerate(cards.itertuples())
        ] or [("(none)", -1)]

    def show_card(self) -> None:
        """Render the chosen version's model card."""
        cards, i = self.t("model_cards"), self.card_pick.value
        if i is None or i < 0 or cards.empty:
            self.card_html.value = '<div class="wb-empty">No model card published.</div>'
            return
        row = cards.iloc[i]
        self.card_html.value = (
            f'<div class="wb-card" data-model="{html.escape(str(row["model"]))}" '
            f'data-version="{html.escape(str(row["version"]))}">{_markdown(str(row["card"]))}</div>'
        )

    def _draw_metrics(self) -> None:
        history = self.t("monitor_history")
        self.metrics_out.clear_output()
        with self.metrics_out:
            from IPython.display import display

            if history.empty:
                display(
                    widgets.HTML('<div class="wb-empty">No monitoring run published yet.</div>')
                )
                return
            import altair as alt

            data = history.assign(
                at=pd.to_datetime(history["measured_at"], utc=True, format="mixed")
            )
            data = data[pd.to_numeric(data["value"], errors="coerce").abs() < 1e6]
            chart = alt.Chart(data).mark_line(point=True).encode(
                x=alt.X("at:T", title="Monitoring run"), y=alt.Y("value:Q", title=None),
                color="model:N", tooltip=["model", "metric", "value", "run_id"],
            ).properties(width=180, height=110).facet(facet="metric:N", columns=4).resolve_scale(y="independent")  # fmt: skip
            display(chart)
            last = history[history["run_id"] == history["run_id"].iloc[-1]]
            display(widgets.HTML(_table(last[["model", "version", "metric", "value"]], row_class="wb-metric-row",
                                        attrs=lambda r: {"metric": r["metric"]})))  # fmt: skip

    def _drift_html(self) -> str:
        drift = self.t("monitor_drift")
        if drift.empty:
            return '<div class="wb-empty">No drift report published (no model scored yet).</div>'
        drift = drift.sort_values(["drifted", "score"], ascending=[False, True])
        cols = [
            c
            for c in (
                "kind_of_drift",
                "column",
                "kind",
                "stat_test",
                "score",
                "threshold",
                "drifted",
            )
            if c in drift
        ]
        n = int(drift["drifted"].astype(str).str.lower().eq("true").sum())
        return f'<div class="wb-drift-count" data-drifted="{n}">{n} of {len(drift)} columns drifted</div>' + _table(
            drift[cols].head(40), row_class="wb-drift-row",
            attrs=lambda r: {"drifted": str(r["drifted"]).lower(), "column": r["column"]},
        )  # fmt: skip

    # ----------------------------------------------------------------- alerts

    def refresh_alerts(self) -> None:
        """Redraw the alerts from the approvals store (live first, then recently resolved)."""
        frame = al.list_alerts(self.store, limit=100)
        frame = pd.concat(
            [frame[frame["status"] != "resolved"], frame[frame["status"] == "resolved"].head(10)]
        )
        rows, self.alert_rows = [], {}
        for r in frame.itertuples(index=False):
            info = widgets.HTML(
                f'<div class="wb-alert-info" data-alert="{r.alert_id}" data-status="{r.status}" data-rule="{html.escape(r.rule)}">'
                f'<span class="wb-sev-{r.severity}">{r.severity}</span> · <b>{html.escape(r.rule)}</b> · '
                f"{html.escape(r.subject)} · <b>{r.status}</b> · seen {r.count}× (last {html.escape(r.last_seen[:16])})"
                f"<br>{html.escape(r.message)}"
                + (f" · acknowledged by {html.escape(r.acknowledged_by)}" if r.acknowledged_by else "")
                + (f" · resolved by {html.escape(r.resolved_by)}" if r.resolved_by else "")
                + "</div>"
            )  # fmt: skip
            ack = widgets.Button(
                description="Acknowledge",
                disabled=r.status != "open" or self.identity.role < Role.ANALYST,
            )
            ack.add_class("wb-ack")
            res = widgets.Button(description="Resolve", button_style="success",
                                 disabled=r.status == "resolved" or self.identity.role < Role.APPROVER)  # fmt: skip
            res.add_class("wb-resolve")
            ack.on_click(lambda _b, i=r.alert_id: self.guarded(self.on_ack)(i))
            res.on_click(lambda _b, i=r.alert_id: self.guarded(self.on_resolve)(i))
            box = widgets.HBox([info, ack, res])
            box.add_class("wb-alert")
            box.add_class(f"wb-alert-{r.alert_id}")
            rows.append(box)
            self.alert_rows[r.alert_id] = (info, ack, res)
        self.alerts_box.children = rows or [widgets.HTML('<div class="wb-empty">No alerts.</div>')]

    def _report(self, ok: bool, code: str, text: str) -> None:
        self.last_code = code
        self.refresh_alerts()
        self.result.value = f'<div class="wb-result" data-ok="{str(ok).lower()}" data-code="{code}">{html.escape(text)}</div>'

    def _alert_change(self, alert_id: str, fn, verb: str) -> None:  # noqa: ANN001
        try:
            alert = fn(
                self.store,
                alert_id,
                who=self.identity,
                comment=f"from the models dashboard ({verb})",
            )
        except PermissionError as exc:
            self._report(False, "denied", str(exc))
        except al.AlertError as exc:
            self._report(False, "not_allowed", str(exc))
        else:
            self._report(
                True, alert.status, f"alert {alert.rule} on {alert.subject} is {alert.status}"
            )

    def on_ack(self, alert_id: str) -> None:
        """Acknowledge button: the role is checked in :func:`workbench.monitoring.alerts.acknowledge`."""
        self._alert_change(alert_id, al.acknowledge, "acknowledge")

    def on_resolve(self, alert_id: str) -> None:
        """Resolve button: the role is checked in :func:`workbench.monitoring.alerts.resolve`."""
        self._alert_change(alert_id, al.resolve, "resolve")

    # ----------------------------------------------------------------- requests

    def _requests_box(self) -> widgets.VBox:
        reg = self.t("registry")
        models = sorted(set(reg["model"])) if len(reg) else []
        can = self.identity.role >= Role.ANALYST
        self.req_model = widgets.Dropdown(options=models or ["(none)"], description="Model")
        self.req_version = widgets.Text(placeholder="version to promote", description="Version")
        self.req_reason = widgets.Text(placeholder="why (required)", description="Reason")
        self.promote_button = widgets.Button(
            description="Request promotion", disabled=not can or not models
        )
        self.promote_button.add_class("wb-promote")
        self.rollback_button = widgets.Button(description="Request rollback", button_style="warning",
                                              disabled=not can or not models)  # fmt: skip
        self.rollback_button.add_class("wb-rollback")
        self.promote_button.on_click(lambda _b: self.guarded(self.on_request_promotion)())
        self.rollback_button.on_click(lambda _b: self.guarded(self.on_request_rollback)())
        return widgets.VBox([
            widgets.HBox([self.req_model, self.req_version, self.req_reason]),
            widgets.HBox([self.promote_button, self.rollback_button]),
        ])  # fmt: skip

    def _request(self, fn, **kwargs) -> None:  # noqa: ANN001
        from workbench import audit
        from workbench.models.registry import RegistryError

        if self.identity.role < Role.ANALYST:  # checked here, whatever the browser sends
            with self.store.transaction() as tx:
                audit.append(tx, actor=self.identity.user, event="action.denied",
                             details={"attempted": "model request", "role": self.identity.role.label,
                                      "model": self.req_model.value})  # fmt: skip
            self._report(False, "denied", f"{self.identity.user} ({self.identity.role.label}) cannot "
                         "request promotions or rollbacks: analyst or above")  # fmt: skip
            return
        reason = self.req_reason.value.strip()
        if not reason:
            self._report(
                False,
                "missing_reason",
                "Give a reason: the approver sees it and the audit log keeps it.",
            )
            return
        try:
            outcome = fn(
                self.req_model.value,
                who=self.identity,
                reason=reason,
                settings=self.settings,
                **kwargs,
            )
        except RegistryError as exc:
            self._report(False, "not_found", str(exc))
            return
        self._report(outcome.ok, outcome.code, outcome.message)

    def on_request_promotion(self) -> None:
        """Queue a promotion (``request_promotion`` checks the role and audits denials)."""
        from workbench.models.registry import request_promotion

        version = self.req_version.value.strip()
        if not version:
            self._report(
                False, "missing_version", "Type the version to promote (see the registry table)."
            )
            return
        self._request(lambda m, **kw: request_promotion(m, version, **kw))

    def on_request_rollback(self) -> None:
        """Queue a rollback of the champion to the previous (or typed) version."""
        from workbench.models.registry import request_rollback

        self._request(request_rollback, to_version=self.req_version.value.strip() or None)
