"""The approvals dashboard: server-side role checks at the comm level, and in a real browser.

The first tests drive the widgets in-process with the messages a browser (or a forger)
sends over the widget comm. The browser tests serve the notebook with Voila, as two
different server users, and click in headless Chromium.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
import pytest

from workbench import approvals as ap
from workbench import audit
from workbench.config import load_settings
from workbench.dashboards.approvals import ApprovalsDashboard, format_money, to_minor
from workbench.policy import Policy, load_policy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import chromium_page, voila_server  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "dashboards" / "approvals.ipynb"
ROLES = "roles:\n  alice: analyst\n  bob: approver\n  carol: viewer\n  dave: approver\n"


def seed(data_dir: Path) -> dict[str, str]:
    """A store with write-offs requested by alice and one requested by bob."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "roles.yaml").write_text(ROLES)
    store = ap.ApprovalStore(f"sqlite:///{data_dir / 'approvals' / 'approvals.sqlite'}")
    ids = {}
    for key, requester, subject, amount in [
        ("for_bob", "alice", "in_approve_me", 25_000),
        ("for_viewer", "alice", "in_viewer_tries", 30_000),
        ("bobs_own", "bob", "in_bobs_own", 40_000),
        ("retry_low", "alice", "in_retry_low", 2_000),
    ]:
        who = ap.Identity(requester, ap.Role.ANALYST)
        action = "retry_payment" if key == "retry_low" else "write_off"
        out = ap.request_action(
            store, who=who, action_type=action, subject_id=subject,
            state={"invoice_id": subject, "amount_due": amount, "recommendation": action}, policy=Policy(),
            amount_minor=amount, currency="usd", amount_reporting_minor=amount, account_id="acct_1",
            payload={"reason_code": "credit_loss", "reason": f"{subject}: idle 75 days, no recovery score",
                     "recovery_probability": 0.02, "expected_value": amount * 0.02, "model_versions": "recovery:3"},
        )  # fmt: skip
        ids[key] = out.item_id
    return ids


def forged_click(button) -> None:
    """Exactly what arrives from a browser when the button is clicked (or a forged message)."""
    button.comm.handle_msg({
        "content": {"comm_id": button.comm.comm_id, "data": {"method": "custom", "content": {"event": "click"}}},
        "buffers": [],
    })  # fmt: skip


def forged_update(widget, state: dict) -> None:
    widget.comm.handle_msg({
        "content": {"comm_id": widget.comm.comm_id, "data": {"method": "update", "state": state}}, "buffers": [],
    })  # fmt: skip


@pytest.fixture()
def seeded(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    data = isolated_env / "data"
    ids = seed(data)
    monkeypatch.setenv("WORKBENCH_ROLES_FILE", str(data / "roles.yaml"))
    return ids


def dashboard_as(user: str, monkeypatch: pytest.MonkeyPatch) -> ApprovalsDashboard:
    """Built the way the notebook builds it: identity from the server's environment."""
    monkeypatch.setenv("WORKBENCH_USER", user)
    monkeypatch.setenv("QUERY_STRING", "user=bob&role=admin")  # the URL is never believed
    dash = ApprovalsDashboard()
    assert dash.load()
    dash.build()
    return dash


def denied_entries(store, user: str) -> pd.DataFrame:
    frame = audit.audit_frame(store, event_prefix="action.denied")
    return frame[frame["actor"] == user]


def test_viewer_forging_a_click_approves_nothing_and_is_audited(seeded, monkeypatch) -> None:
    dash = dashboard_as("carol", monkeypatch)
    assert dash.identity.user == "carol" and dash.identity.role is ap.Role.VIEWER
    row = dash.rows[seeded["for_viewer"]]
    assert row.approve.disabled  # a courtesy only...
    forged_update(row.approve, {"disabled": False})  # ...that a forger can undo
    assert not row.approve.disabled
    forged_click(row.approve)
    forged_click(row.reject)
    row.approve._handle_custom_msg({"event": "click"}, [])
    row.approve.click()
    store = ap.open_store(load_settings())
    assert ap.get_item(store, seeded["for_viewer"]).status == "pending"
    assert ap.executions_frame(store).empty
    denied = denied_entries(store, "carol")
    assert len(denied) == 4 and set(denied["item_id"]) == {seeded["for_viewer"]}
    assert 'data-code="denied"' in dash.result.value
    assert audit.verify(store).ok


def test_viewer_bulk_approve_is_refused(seeded, monkeypatch) -> None:
    dash = dashboard_as("carol", monkeypatch)
    row = dash.rows[seeded["retry_low"]]
    forged_update(row.select, {"value": True, "disabled": False})
    forged_click(dash.bulk_button)
    store = ap.open_store(load_settings())
    assert ap.get_item(store, seeded["retry_low"]).status == "pending"
    assert len(denied_entries(store, "carol")) == 1


def test_requester_cannot_approve_their_own_request(seeded, monkeypatch) -> None:
    dash = dashboard_as("bob", monkeypatch)
    row = dash.rows[seeded["bobs_own"]]
    assert row.approve.disabled and "another approver" in row.approve.tooltip
    forged_update(row.approve, {"disabled": False})
    forged_click(row.approve)
    store = ap.open_store(load_settings())
    assert ap.get_item(store, seeded["bobs_own"]).status == "pending"
    assert "maker-checker" in dash.result.value
    assert len(denied_entries(store, "bob")) == 1


def test_approver_approves_with_a_comment_and_sees_the_audit_trail(seeded, monkeypatch) -> None:
    dash = dashboard_as("bob", monkeypatch)
    row = dash.rows[seeded["for_bob"]]
    forged_update(row.comment, {"value": "customer insolvent"})
    forged_click(row.approve)
    store = ap.open_store(load_settings())
    item = ap.get_item(store, seeded["for_bob"])
    assert (item.status, item.decided_by, item.decision_comment) == (
        "executed",
        "bob",
        "customer insolvent",
    )
    assert 'data-code="executed"' in dash.result.value
    assert seeded["for_bob"] not in dash.rows  # the pending view no longer lists it
    assert f'data-event="action.executed" data-item="{seeded["for_bob"]}"' in dash.audit_html.value
    forged_click(row.approve)  # a second click on the old button executes nothing more
    assert len(ap.executions_frame(store)) == 1


def test_a_comment_being_typed_survives_another_decision(seeded, monkeypatch) -> None:
    dash = dashboard_as("dave", monkeypatch)
    typing = dash.rows[seeded["for_viewer"]]
    forged_update(typing.comment, {"value": "half-typed"})
    forged_click(dash.rows[seeded["for_bob"]].approve)  # refreshes the queue
    assert 'data-code="executed"' in dash.result.value
    assert dash.rows[seeded["for_viewer"]] is typing and typing.comment.value == "half-typed"
    assert seeded["for_bob"] not in dash.rows


def test_bulk_approve_and_filters(seeded, monkeypatch) -> None:
    dash = dashboard_as("dave", monkeypatch)
    assert len(dash.rows) == 4
    dash.f_action.value = "retry_payment"
    assert list(dash.rows) == [seeded["retry_low"]]
    dash.f_action.value = "(all)"
    dash.f_min.value = 350.0  # usd, major units
    assert set(dash.rows) == {seeded["bobs_own"]}
    dash.f_min.value = 0
    dash.f_risk.value = "low"
    assert len(dash.rows) == 4
    dash.f_age.value = 24.0
    assert dash.rows == {} and 'data-count="0"' in dash.count_html.value
    dash.f_age.value = 0
    for row in dash.rows.values():
        row.select.value = not row.select.disabled
    outcomes = dash.on_bulk_approve()
    assert [o.code for o in outcomes] == ["executed"]  # only the low-risk retry is bulk-approvable
    assert ap.get_item(ap.open_store(load_settings()), seeded["retry_low"]).status == "executed"


def test_rollback_button_within_the_window(seeded, monkeypatch) -> None:
    store = ap.open_store(load_settings())
    now = pd.Timestamp.now(tz="UTC")
    auto = ap.request_action(store, who=ap.ENGINE, action_type="retry_payment", subject_id="in_auto",
                             state={"invoice_id": "in_auto"}, policy=Policy(), amount_minor=1_000, currency="usd",
                             amount_reporting_minor=1_000, auto_execute=True, now=now)  # fmt: skip
    dash = dashboard_as("bob", monkeypatch)
    dash.f_status.value = "executed"
    row = dash.rows[auto.item_id]
    assert not row.rollback.disabled and row.rollback in row.box.children
    forged_click(row.rollback)  # a rollback needs a reason, from the dashboard too
    assert ap.get_item(store, auto.item_id).status == "executed"
    assert "needs a reason" in dash.result.value
    forged_update(row.comment, {"value": "customer called: card replaced"})
    forged_click(row.rollback)
    assert ap.get_item(store, auto.item_id).status == "rolled_back"
    done = audit.audit_frame(store, event_prefix="action.rolled_back").iloc[-1]
    assert "card replaced" in done["details"]


def test_a_role_revoked_while_the_page_is_open_applies_to_the_next_click(
    seeded, monkeypatch, isolated_env
) -> None:
    dash = dashboard_as("bob", monkeypatch)
    (isolated_env / "data" / "roles.yaml").write_text(ROLES.replace("bob: approver", "bob: viewer"))
    forged_click(dash.rows[seeded["for_bob"]].approve)
    store = ap.open_store(load_settings())
    assert ap.get_item(store, seeded["for_bob"]).status == "pending"
    assert len(denied_entries(store, "bob")) == 1 and 'data-code="denied"' in dash.result.value
    assert 'data-role="viewer"' in dash.identity_html.value


def test_bulk_approve_is_refused_when_the_policy_changed_since_the_page_opened(
    seeded, monkeypatch, isolated_env
) -> None:
    policy = isolated_env / "policy.yaml"
    policy.write_text((REPO / "workbench" / "policies" / "default.yaml").read_text())
    monkeypatch.setenv("WORKBENCH_POLICY_FILE", str(policy))
    dash = dashboard_as("dave", monkeypatch)
    dash.rows[seeded["retry_low"]].select.value = True
    text = policy.read_text()
    assert "  enabled: true\n" in text
    policy.write_text(text.replace("  enabled: true\n", "  enabled: false\n", 1))
    outcomes = dash.on_bulk_approve()
    assert [o.code for o in outcomes] == [
        "policy_changed"
    ] and "reload the page" in dash.result.value
    assert ap.get_item(ap.open_store(load_settings()), seeded["retry_low"]).status == "pending"


def test_a_policy_change_shows_its_diff_and_approving_it_writes_the_policy(
    seeded, monkeypatch, isolated_env
) -> None:
    from workbench.policy_changes import propose_policy_change

    policy = isolated_env / "policy.yaml"
    shipped = (REPO / "workbench" / "policies" / "default.yaml").read_text()
    policy.write_text(shipped)
    monkeypatch.setenv("WORKBENCH_POLICY_FILE", str(policy))
    stricter = shipped.replace("min_recovery_probability: 0.6", "min_recovery_probability: 0.7")
    stricter = stricter.replace("    - stolen_card\n", "    - stolen_card\n    - expired_card\n")
    proposal = propose_policy_change(load_settings(), stricter, who=ap.Identity("alice", ap.Role.ANALYST),
                                     reason="fewer wasted retries")  # fmt: skip
    dash = dashboard_as("bob", monkeypatch)
    info = dash.rows[proposal.item_id].info.value
    assert 'class="wb-policy-diff"' in info
    assert (
        '<tr class="wb-diff-row" data-key="retries.min_recovery_probability">'
        "<td>retries.min_recovery_probability</td><td>0.6</td><td>0.7</td></tr>"
    ) in info
    assert "(added expired_card)" in info
    assert 'data-key="label"' not in info  # unchanged keys are not listed
    forged_click(dash.rows[proposal.item_id].approve)
    assert 'data-code="executed"' in dash.result.value
    assert policy.read_text() == stricter
    assert load_policy(settings=load_settings()).retries.min_recovery_probability == 0.7


def test_an_error_banner_clears_on_the_next_click(seeded, monkeypatch) -> None:
    dash = dashboard_as("bob", monkeypatch)
    broken = dash.guarded(lambda: 1 / 0)
    broken()
    assert (
        "Something went wrong" in dash.message.value and "Nothing was decided" in dash.message.value
    )
    ok = dash.guarded(lambda: dash.on_approve(seeded["for_bob"]))
    assert ok().code == "executed"
    assert dash.message.value == ""


def test_money_formatting() -> None:
    assert format_money(123456, "usd") == "1,234.56 usd"
    assert format_money(1234, "jpy") == "1,234 jpy"
    assert format_money(None, "usd") == "—"
    assert to_minor(12.34, "usd") == 1234 and to_minor(0, "usd") is None


# --------------------------------------------------------------------------- real browser


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, object]:
    """Seed a store; serve the notebook as bob (approver) and as carol (viewer) at once."""
    root = tmp_path_factory.mktemp("voila")
    data = root / "data"
    ids = seed(data)
    base_env = {
        "WORKBENCH_DATA_DIR": str(data), "WORKBENCH_ROLES_FILE": str(data / "roles.yaml"),
        "WORKBENCH_REPORTS_DIR": str(root / "reports"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }  # fmt: skip
    users = ("bob", "carol")
    servers = {
        u: voila_server(NOTEBOOK, env={**base_env, "WORKBENCH_USER": u}, cwd=REPO) for u in users
    }
    urls: dict[str, str] = {}
    with ExitStack() as stack:
        errors: list[BaseException] = []

        def start(user: str) -> None:
            try:
                urls[user] = servers[user].__enter__()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(u,)) for u in users]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for u in users:
            if u in urls:
                stack.push(servers[u].__exit__)
        if errors:
            raise errors[0]
        with chromium_page() as first_page:
            pages: dict[str, object] = {}

            def page_for(user: str):
                """One page (one kernel) per user, loaded once and shared by the tests."""
                if user not in pages:
                    page = (
                        first_page
                        if not pages
                        else first_page.context.browser.new_page(
                            viewport={"width": 1400, "height": 1000}
                        )
                    )
                    page.goto(urls[user])
                    pages[user] = page
                return pages[user]

            yield {"ids": ids, "page_for": page_for, "db": data / "approvals" / "approvals.sqlite"}


def _status(db: Path, item_id: str) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT status FROM actions WHERE item_id = ?", (item_id,)).fetchone()[
            0
        ]


def _denials(db: Path, user: str, item_id: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT count(*) FROM audit_log WHERE event = 'action.denied' AND actor = ? AND item_id = ?",
            (user, item_id),
        ).fetchone()[0]


def _open(served, user: str, item_id: str):
    """The user's page showing pending items; the item's approve button."""
    page = served["page_for"](user)
    status = page.locator(".wb-filter select").nth(2)
    status.wait_for(timeout=90_000)
    if status.input_value() != "pending":
        status.select_option("pending")
    button = page.locator(f".wb-item-{item_id} .wb-approve")
    button.wait_for(timeout=60_000)
    return page, button


def _force_click(page, button) -> None:
    """Undo the disabled attribute in the page and click: the browser then really sends
    the comm 'click' message, as a forger would."""
    button.evaluate("el => el.removeAttribute('disabled')")
    button.click()


@pytest.mark.browser
@pytest.mark.slow
def test_browser_viewer_cannot_approve(served) -> None:
    ids, db = served["ids"], served["db"]
    page, button = _open(served, "carol", ids["for_viewer"])
    assert page.locator('.wb-identity[data-role="viewer"]').count() == 1
    assert button.is_disabled()
    _force_click(page, button)
    page.locator('.wb-result[data-code="denied"]').wait_for(timeout=60_000)
    assert _status(db, ids["for_viewer"]) == "pending"
    assert _denials(db, "carol", ids["for_viewer"]) == 1


@pytest.mark.browser
@pytest.mark.slow
def test_browser_requester_cannot_approve_own_request(served) -> None:
    ids, db = served["ids"], served["db"]
    page, button = _open(served, "bob", ids["bobs_own"])
    assert button.is_disabled()
    _force_click(page, button)
    result = page.locator('.wb-result[data-code="denied"]')
    result.wait_for(timeout=60_000)
    assert "maker-checker" in result.inner_text()
    assert _status(db, ids["bobs_own"]) == "pending"
    assert _denials(db, "bob", ids["bobs_own"]) == 1


@pytest.mark.browser
@pytest.mark.slow
def test_browser_approver_approves_write_off_and_sees_it_executed_and_audited(served) -> None:
    ids, db = served["ids"], served["db"]
    item = ids["for_bob"]
    page, button = _open(served, "bob", item)
    assert button.is_enabled()
    page.locator(f".wb-item-{item} .wb-comment input").fill("customer insolvent")
    page.locator(f".wb-item-{item} .wb-comment input").press("Enter")
    button.click()
    page.locator('.wb-result[data-code="executed"]').wait_for(timeout=60_000)
    page.locator(f'tr.wb-audit-row[data-event="action.executed"][data-item="{item}"]').wait_for(
        timeout=60_000
    )
    # switch the queue to executed items: it is listed with its new status
    page.locator(".wb-filter select").nth(2).select_option("executed")
    page.locator(f'.wb-item-{item} .wb-item-info[data-status="executed"]').wait_for(timeout=60_000)
    assert _status(db, item) == "executed"
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT kind, reason_code, actor FROM executions WHERE item_id = ?", (item,)
        ).fetchall()
        comment = conn.execute(
            "SELECT decision_comment FROM actions WHERE item_id = ?", (item,)
        ).fetchone()[0]
    assert rows == [("execute", "credit_loss", "bob")]
    assert comment == "customer insolvent"
