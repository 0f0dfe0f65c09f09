"""The approvals dashboard: the action queue, decisions on it, and the audit trail.

Who is acting comes from the server (:func:`workbench.approvals.resolve_identity`:
``$WORKBENCH_USER`` / ``$JUPYTERHUB_USER`` / the OS user, with the role from the roles
file), never from the URL or the browser. Buttons a role may not use are disabled as a
courtesy only: every callback calls the same :mod:`workbench.approvals` functions the
CLI uses, which check the role, maker-checker and the current state in Python and audit
denied attempts. A forged widget "click" therefore changes nothing.

Stable hooks for browser tests: rows carry the classes ``wb-item`` and
``wb-item-<item id>``; buttons ``wb-approve``, ``wb-reject``, ``wb-rollback``,
``wb-select``, ``wb-bulk-approve``; the info block has ``data-item``/``data-status``;
outcomes appear in ``.wb-result[data-code]``; audit rows are ``tr.wb-audit-row[data-event]``;
a ``policy_change`` item shows its diff in ``table.wb-policy-diff`` (``tr.wb-diff-row[data-key]``).
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
import pandas as pd

from workbench.approvals import (
    ActionItem,
    CurrentState,
    Identity,
    Outcome,
    Role,
    RolesError,
    StateProvider,
    StoreError,
    approve,
    bulk_approve,
    filter_queue,
    get_item,
    queue_frame,
    reject,
    resolve_identity,
    rollback,
)
from workbench.approvals import open_store as open_approvals
from workbench.audit import audit_frame
from workbench.config import Settings
from workbench.dashboards.base import Dashboard
from workbench.policy import ACTION_TYPES, Policy, PolicyError, load_policy
from workbench.policy_changes import diff_rows
from workbench.revenue.engine import currency_exponent

log = logging.getLogger(__name__)

CSS = """
<style>
.wb-item {border-bottom:1px solid #eee;padding:6px 0;align-items:flex-start}
.wb-item-info {font-size:13px;line-height:1.5;min-width:560px;max-width:760px}
.wb-reason {color:#333}
.wb-scores {color:#666;font-size:12px}
.wb-status {padding:1px 6px;border-radius:8px;background:#eef;font-size:12px}
.wb-status[data-status=executed] {background:#e6f6e6}
.wb-status[data-status=rejected], .wb-status[data-status=stale] {background:#fbe9e9}
.wb-identity {color:#444;margin-bottom:6px}
.wb-result {padding:6px 10px;border-radius:4px;margin:4px 0}
.wb-result[data-ok=true] {background:#e6f6e6}
.wb-result[data-ok=false] {background:#fff0f0}
table.wb-audit {border-collapse:collapse;font-size:12px}
table.wb-audit td, table.wb-audit th {border-bottom:1px solid #eee;padding:2px 8px;text-align:left}
table.wb-policy-diff {border-collapse:collapse;font-size:12px;margin:4px 0}
table.wb-policy-diff td, table.wb-policy-diff th {border-bottom:1px solid #eee;padding:2px 8px;text-align:left}
table.wb-policy-diff caption {text-align:left;color:#666}
</style>
"""

ALL = "(all)"
STATUS_VIEWS = {
    "pending": ("pending",),
    "executed": ("executed",),
    "decided": (
        "approved",
        "rejected",
        "executed",
        "failed",
        "stale",
        "superseded",
        "rolled_back",
        "rollback_failed",
    ),
    "all": None,
}


def format_money(amount_minor: int | None, currency: str | None) -> str:
    """``123456, "usd"`` -> ``"1,234.56 usd"``; unknown amounts show as a dash."""
    if amount_minor is None or pd.isna(amount_minor) or not currency:
        return "—"
    exp = currency_exponent(currency)
    major = int(amount_minor) / (10**exp)
    return f"{major:,.{exp}f} {currency}"


def to_minor(major: float | None, currency: str) -> int | None:
    """A filter value typed in major units, in minor units (``None`` or 0 = no filter)."""
    if not major:
        return None
    return round(float(major) * 10 ** currency_exponent(currency))


def _fmt_score(x: object) -> str:
    return "—" if x is None or pd.isna(x) else f"{float(x):.2f}"


def policy_diff_html(payload: Mapping[str, Any]) -> str:
    """A ``policy_change`` item's diff as a small table (key, old, new), from its payload."""
    rows = "".join(
        f'<tr class="wb-diff-row" data-key="{html.escape(key)}"><td>{html.escape(key)}</td>'
        f"<td>{html.escape(old)}</td><td>{html.escape(new)}</td></tr>"
        for key, old, new in diff_rows(payload.get("diff") or [])
    )
    versions = f"{payload.get('old_version', '?')} → {payload.get('new_version', '?')}"
    return (
        f'<table class="wb-policy-diff"><caption>policy {html.escape(versions)}</caption>'
        "<tr><th>key</th><th>old</th><th>new</th></tr>" + rows + "</table>"
    )


@dataclass
class _Row:
    box: widgets.HBox
    info: widgets.HTML
    select: widgets.Checkbox
    comment: widgets.Text
    approve: widgets.Button
    reject: widgets.Button
    rollback: widgets.Button


class ApprovalsDashboard(Dashboard):
    """Queue, approve/reject with a comment, bulk-approve, roll back, audit trail.

    Args:
        settings: Workbench settings (store URL, policy file, data dir for roles).
        identity: Only for tests; the notebook never passes it (the server decides).
        policy: Defaults to the configured policy file.
        state_provider: What "the current state" is when approving; defaults to
            :class:`~workbench.approvals.CurrentState` (the registry now for model items,
            the latest recorded state for the rest).
        clock: Returns "now" (UTC); for tests.
        page_size: Most rows shown at once.
    """

    title = "Approvals"
    advice = (
        "Nothing was decided by this click. Reload the page and try again; if it happens "
        "again, ask the data team (details are in the server log)."
    )

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        identity: Identity | None = None,
        policy: Policy | None = None,
        state_provider: StateProvider | None = None,
        clock: Callable[[], pd.Timestamp] | None = None,
        page_size: int = 100,
    ) -> None:
        super().__init__(settings)
        self._identity_override = identity
        self._policy_override = policy
        self._state_override = state_provider
        self.clock = clock or (lambda: pd.Timestamp.now(tz="UTC"))
        self.page_size = page_size
        self.rows: dict[str, _Row] = {}
        # Rows are reused while an item's status is unchanged, so a comment being typed
        # or a bulk selection survives a refresh.
        self._row_cache: dict[str, tuple[tuple[str, bool], _Row]] = {}
        self.last_outcomes: list[Outcome] = []

    def show(self) -> None:  # type: ignore[override]
        """Build and display the dashboard (the notebook's only call).

        Returns ``None`` (the root stays at ``self.root``): a returned widget would be
        displayed a second time as the cell's result.
        """
        super().show()

    # ----------------------------------------------------------------- data

    def load(self) -> bool:
        """Resolve who is acting, open the store and read the policy; show why not if not."""
        try:
            self.identity = self._identity_override or resolve_identity(self.settings)
            self.store = open_approvals(self.settings)
            self.policy = self._policy_override or load_policy(settings=self.settings)
        except (RolesError, PolicyError, StoreError) as exc:
            self.show_message("error", "Cannot open the approvals queue", str(exc))
            return False
        self.state_provider = self._state_override or CurrentState(self.store)
        return True

    @property
    def can_decide(self) -> bool:
        return self.identity.role >= Role.APPROVER

    # ----------------------------------------------------------------- layout

    def _identity_banner(self) -> str:
        who = self.identity
        return (
            CSS
            + f'<div class="wb-identity" data-user="{html.escape(who.user)}" data-role="{who.role.label}">'
            f"Signed in as <b>{html.escape(who.user)}</b> ({who.role.label}; {html.escape(who.source)})."
            + ("" if self.can_decide else " Read-only: approving needs the approver role.")
            + f" Policy {html.escape(self.policy.version)}.</div>"
        )

    def build(self) -> None:
        self.identity_html = widgets.HTML(self._identity_banner())
        cur = self.settings.reporting_currency
        self.f_action = widgets.Dropdown(
            options=[ALL, *ACTION_TYPES], value=ALL, description="Action"
        )
        self.f_risk = widgets.Dropdown(
            options=[ALL, "low", "medium", "high"], value=ALL, description="Risk"
        )
        self.f_status = widgets.Dropdown(
            options=list(STATUS_VIEWS), value="pending", description="Status"
        )
        self.f_min = widgets.FloatText(value=0, description=f"Min amount ({cur})")
        self.f_max = widgets.FloatText(value=0, description=f"Max amount ({cur})")
        self.f_age = widgets.FloatText(value=0, description="Older than (hours)")
        for w in (self.f_action, self.f_risk, self.f_status, self.f_min, self.f_max, self.f_age):
            w.style.description_width = "initial"
            w.observe(lambda _change: self.guarded(self.refresh)(), names="value")
            w.add_class("wb-filter")
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.refresh_button.add_class("wb-refresh")
        self.refresh_button.on_click(lambda _b: self.guarded(self.refresh)())
        self.bulk_comment = widgets.Text(placeholder="comment for the bulk approval")
        self.bulk_button = widgets.Button(
            description="Approve selected (low risk)", button_style="success", disabled=not self.can_decide,
            tooltip="Policy-eligible low-risk items only; each is still checked",
            layout=widgets.Layout(width="auto"),
        )  # fmt: skip
        self.bulk_button.add_class("wb-bulk-approve")
        self.bulk_button.on_click(lambda _b: self.guarded(self.on_bulk_approve)())
        self.result = widgets.HTML()
        self.queue_box = widgets.VBox()
        self.queue_box.add_class("wb-queue")
        self.count_html = widgets.HTML()
        self.audit_html = widgets.HTML()
        self.content.children = [
            self.identity_html,
            widgets.HBox([self.f_action, self.f_risk, self.f_status]),
            widgets.HBox([self.f_min, self.f_max, self.f_age, self.refresh_button]),
            widgets.HBox([self.bulk_button, self.bulk_comment]),
            self.result,
            self.count_html,
            self.queue_box,
            widgets.HTML("<h3>Audit trail</h3>"),
            self.audit_html,
        ]
        self.refresh()

    def filtered_queue(self) -> pd.DataFrame:
        """The queue with the filters applied (what the table shows)."""
        now = self.clock()
        cur = self.settings.reporting_currency
        frame = queue_frame(self.store, statuses=STATUS_VIEWS[self.f_status.value], now=now)
        return filter_queue(
            frame,
            action_type=None if self.f_action.value == ALL else self.f_action.value,
            risk=None if self.f_risk.value == ALL else self.f_risk.value,
            min_amount_minor=to_minor(self.f_min.value, cur),
            max_amount_minor=to_minor(self.f_max.value, cur),
            min_age_hours=self.f_age.value or None,
        )

    def refresh(self) -> None:
        """Redraw the queue and the audit trail from the store."""
        frame = self.filtered_queue()
        now = self.clock()
        self.rows = {}
        shown = frame.head(self.page_size)
        for item_id in shown["item_id"]:
            item = get_item(self.store, item_id)
            if item is not None:
                self.rows[item_id] = self._row(item, now)
        self.queue_box.children = [r.box for r in self.rows.values()]
        more = f" (showing {len(shown)})" if len(frame) > len(shown) else ""
        self.count_html.value = (
            f'<div class="wb-count" data-count="{len(frame)}">{len(frame)} item(s){more}</div>'
            if len(frame)
            else '<div class="wb-empty wb-count" data-count="0">No items match: nothing is waiting for a '
            "decision with these filters.</div>"
        )
        self._draw_audit()

    def _row(self, item: ActionItem, now: pd.Timestamp) -> _Row:
        key = (item.status, item.can_roll_back(now))
        cached = self._row_cache.get(item.item_id)
        if cached is not None and cached[0] == key:
            cached[1].info.value = self._info_html(item, now)
            return cached[1]
        row = self._new_row(item, now)
        self._row_cache[item.item_id] = (key, row)
        return row

    def _info_html(self, item: ActionItem, now: pd.Timestamp) -> str:
        p = item.payload
        return (
            f'<div class="wb-item-info" data-item="{item.item_id}" data-status="{item.status}" '
            f'data-action="{item.action_type}">'
            f"<b>{html.escape(item.action_type)}</b> · {html.escape(item.subject_id)} · "
            f"{format_money(item.amount_minor, item.currency)}"
            + (
                f" ({format_money(item.amount_reporting_minor, self.settings.reporting_currency)})"
                if item.currency != self.settings.reporting_currency and item.amount_reporting_minor is not None
                else ""
            )
            + f" · risk {item.risk} · <span class=\"wb-status\" data-status=\"{item.status}\">{item.status}</span>"
            f" · {item.age_hours(now):.1f} h old · requested by {html.escape(item.requested_by)}"
            + (f" · decided by {html.escape(item.decided_by)}" if item.decided_by else "")
            + f'<div class="wb-reason">{html.escape(item.reason or "(no reason given)")}</div>'
            + (policy_diff_html(p) if item.action_type == "policy_change" else "")
            + f'<div class="wb-scores">recovery p {_fmt_score(p.get("recovery_probability"))} · '
            f'uplift {_fmt_score(p.get("uplift"))} · expected value '
            f"{format_money(None if p.get('expected_value') is None else round(p['expected_value']), self.settings.reporting_currency)}"
            f" · models {html.escape(str(p.get('model_versions') or '—'))} · policy {html.escape(item.policy_version or '—')}"
            f" · {html.escape(item.automation_level)}"
            + (f" · roll back until {item.rollback_until:%Y-%m-%d %H:%M} UTC" if item.can_roll_back(now) else "")
            + "</div></div>"
        )  # fmt: skip

    def _new_row(self, item: ActionItem, now: pd.Timestamp) -> _Row:
        pending = item.status == "pending"
        own = item.requested_by == self.identity.user
        info = widgets.HTML(self._info_html(item, now))
        bulk_ok = pending and self.policy.bulk_approvable(
            action_type=item.action_type,
            risk=item.risk,
            amount_reporting_minor=item.amount_reporting_minor,
        )
        select = widgets.Checkbox(value=False, indent=False, disabled=not (bulk_ok and self.can_decide and not own),
                                  layout=widgets.Layout(width="28px"))  # fmt: skip
        select.add_class("wb-select")
        comment = widgets.Text(placeholder="comment", layout=widgets.Layout(width="200px"))
        comment.add_class("wb-comment")
        approve_b = widgets.Button(description="Approve", button_style="success",
                                   disabled=not (pending and self.can_decide and not own),
                                   tooltip="You requested this; another approver must approve it" if own else "")  # fmt: skip
        approve_b.add_class("wb-approve")
        reject_b = widgets.Button(
            description="Reject", button_style="danger", disabled=not (pending and self.can_decide)
        )
        reject_b.add_class("wb-reject")
        rollback_b = widgets.Button(description="Roll back", button_style="warning",
                                    disabled=not (item.can_roll_back(now) and self.can_decide))  # fmt: skip
        rollback_b.add_class("wb-rollback")
        approve_b.on_click(lambda _b, i=item.item_id: self.guarded(self.on_approve)(i))
        reject_b.on_click(lambda _b, i=item.item_id: self.guarded(self.on_reject)(i))
        rollback_b.on_click(lambda _b, i=item.item_id: self.guarded(self.on_rollback)(i))
        buttons = [approve_b, reject_b] if pending else []
        if item.can_roll_back(now):
            buttons.append(rollback_b)
        box = widgets.HBox(
            [select, info, comment, *buttons] if (pending or buttons) else [select, info]
        )
        box.add_class("wb-item")
        box.add_class(f"wb-item-{item.item_id}")
        return _Row(box, info, select, comment, approve_b, reject_b, rollback_b)

    def _draw_audit(self, limit: int = 50) -> None:
        frame = audit_frame(self.store, limit=limit)
        rows = []
        for r in frame.itertuples(index=False):
            details = json.loads(r.details)
            summary = ", ".join(
                f"{k}={details[k]}" for k in ("action_type", "reason", "comment", "attempted", "reason_code", "error")
                if details.get(k) not in (None, "")
            )  # fmt: skip
            rows.append(
                f'<tr class="wb-audit-row" data-event="{html.escape(r.event)}" data-item="{html.escape(r.item_id or "")}" '
                f'data-actor="{html.escape(r.actor)}"><td>{r.seq}</td><td>{html.escape(r.at)}</td>'
                f"<td>{html.escape(r.actor)}</td><td>{html.escape(r.event)}</td>"
                f"<td>{html.escape((r.item_id or '')[:12])}</td><td>{html.escape(summary)}</td></tr>"
            )
        self.audit_html.value = (
            '<table class="wb-audit"><tr><th>#</th><th>at (UTC)</th><th>actor</th><th>event</th><th>item</th>'
            "<th>details</th></tr>" + "".join(rows) + "</table>"
            if rows
            else '<div class="wb-empty">The audit log is empty.</div>'
        )

    # ----------------------------------------------------------------- callbacks

    def _report(self, outcomes: list[Outcome]) -> None:
        self.last_outcomes = outcomes
        ok = all(o.ok for o in outcomes) and bool(outcomes)
        code = outcomes[0].code if len(outcomes) == 1 else ("bulk" if outcomes else "none")
        text = "<br>".join(html.escape(o.message) for o in outcomes) or "Nothing selected."
        self.refresh()  # rows first: when the result shows, the queue is already current
        self.result.value = (
            f'<div class="wb-result" data-ok="{str(ok).lower()}" data-code="{code}">{text}</div>'
        )

    def _comment(self, item_id: str) -> str:
        row = self.rows.get(item_id)
        return row.comment.value if row else ""

    def _acting(self) -> Identity:
        """Who decides, resolved again for every click: a role changed in the roles file
        while the page is open applies to the next decision (the banner follows)."""
        who = self._identity_override or resolve_identity(self.settings)
        if who != self.identity:
            self.identity = who
            self.identity_html.value = self._identity_banner()
        return who

    def on_approve(self, item_id: str) -> Outcome:
        """Approve button: every check happens in :func:`workbench.approvals.approve`."""
        outcome = approve(self.store, item_id, who=self._acting(), current_state=self.state_provider,
                          comment=self._comment(item_id), now=self.clock())  # fmt: skip
        self._report([outcome])
        return outcome

    def on_reject(self, item_id: str) -> Outcome:
        outcome = reject(
            self.store,
            item_id,
            who=self._acting(),
            comment=self._comment(item_id),
            now=self.clock(),
        )
        self._report([outcome])
        return outcome

    def on_rollback(self, item_id: str) -> Outcome:
        """Roll back button: the row's comment is the reason (required, like everywhere)."""
        outcome = rollback(self.store, item_id, who=self._acting(), reason=self._comment(item_id),
                           now=self.clock())  # fmt: skip
        self._report([outcome])
        return outcome

    def on_bulk_approve(self) -> list[Outcome]:
        """Bulk approve: refused when the policy file changed since the page was opened
        (the selection was made under the old rules; the reloaded page shows the new ones)."""
        who = self._acting()
        current = self._policy_override or load_policy(settings=self.settings)
        if current.version != self.policy.version:
            outcomes = [Outcome(False, "policy_changed",
                                f"not approved: the policy changed since this page was opened "
                                f"({self.policy.version} -> {current.version}); reload the page "
                                "to see what it allows", "")]  # fmt: skip
            self._report(outcomes)
            return outcomes
        selected = [i for i, r in self.rows.items() if r.select.value]
        outcomes = bulk_approve(self.store, selected, who=who, policy=current,
                                current_state=self.state_provider, comment=self.bulk_comment.value,
                                now=self.clock())  # fmt: skip
        self._report(outcomes)
        return outcomes
