"""The real-time path of ``workbench receive``: dunning decisions and invoice checks as
webhooks land.

:class:`RealtimeHandler` is the receiver's ``on_event`` callback (see
:func:`workbench.webhooks.serve`). Everything slow is loaded once per process and cached:
the approvals store, the recovery model (registry alias ``champion``, else ``challenger``,
else none: the policy's own rules), the Feast store, the recovery curve that times retries,
and FX rates. The policy is loaded at start and again when its file changes (an approved
``policy_change`` takes effect at the next event, no restart): each event costs one
``stat()`` of the policy file, the file is read only when that changed, and a file that is
missing or invalid leaves the last good policy deciding (logged as an error saying what to
do).

- ``charge.failed`` / ``payment_intent.payment_failed``: the decline code is remembered for
  the invoice (the invoice event itself does not carry it).
- ``invoice.payment_failed``: the invoice is scored (account features from the Feast online
  store, invoice features from the payload), decided by the engine under the policy (control
  group included, guardrails always win) and stored: an audit entry ``decision.realtime``
  with the action, scores, model and policy versions and the latency, and, unless in shadow
  mode, the queue item or automated execution the policy asks for. Goal: 50 ms at p99.
  Nothing on this path builds a pandas frame: the model scores one numpy row
  (:class:`RowScorer`), the retry curve plans on arrays with its grid prepared once
  (:meth:`workbench.retry_curve.RecoveryCurve.plan_arrays`), the engine decides one
  invoice with the batch engine's own rule code (:func:`workbench.dunning.decide_invoice`),
  and the store keeps one SQLite connection open (WAL, ``synchronous=NORMAL``, one
  transaction per decision: :class:`PinnedSqliteStore`).
- ``invoice.finalized`` (and ``invoice.created`` / ``invoice.updated``): the anomaly rules
  run on the payload laid over the warehouse *and* over the invoices this process has seen
  but the warehouse has not loaded yet (so a double bill is caught before it is paid);
  findings are stored in ``anomaly_findings_realtime`` and those that move money are queued
  for approval (idempotent: the same finding is stored and queued once).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench import audit
from workbench.approvals import (
    ENGINE,
    ApprovalStore,
    list_items,
    open_store,
    paused_action_types,
    record_states,
    rollback,
)
from workbench.config import Settings
from workbench.dunning import STATE_SCOPE, apply_decision, decide_invoice, invoice_state
from workbench.failed_invoices import to_reporting_minor
from workbench.policy import Policy, PolicyError, parse_policy_text, policy_file_in_force

log = logging.getLogger(__name__)

RECOVERY_MODEL = "recovery_14d"
ALIASES = ("champion", "challenger")
ANOMALY_EVENTS = frozenset({"invoice.finalized", "invoice.created", "invoice.updated"})
DECLINE_EVENTS = frozenset({"charge.failed", "payment_intent.payment_failed"})
_REMEMBERED = 100_000  # invoices whose last payment_failed event is kept for a late decline
RECENT_INVOICES = 5_000  # invoices kept in memory for the real-time anomaly checks
PAYDAYS = (1, 2, 15, 16)


def _obj(event: dict[str, Any]) -> dict[str, Any]:
    return (event.get("data") or {}).get("object") or {}


def hours_until(epoch_s: Any, now: pd.Timestamp) -> float:
    """Hours from ``now`` to a Stripe timestamp (unix seconds; NaN when there is none), as
    the feature ``invoice_hours_to_next_attempt`` measures the announced next retry."""
    if epoch_s is None or pd.isna(epoch_s):
        return math.nan
    return (float(epoch_s) - now.timestamp()) / 3600.0


def days_to_payday(ts: pd.Timestamp) -> float:
    """Days from ``ts``'s UTC day to the next common payday (1st-2nd, 15th-16th, last two
    days of the month; 0 on one), as the feature ``invoice_failure_days_to_payday``."""
    day, last = ts.day, ts.days_in_month
    if day in PAYDAYS or day >= last - 1:
        return 0.0
    nxt = 15 if day < 15 else last - 1
    return float(nxt - day)


@dataclass
class RealtimeDecision:
    """One real-time dunning decision."""

    invoice_id: str
    action: str
    recovery_probability: float
    model_versions: str
    policy_version: str
    control_group: bool
    scheduled_at: Any
    latency_ms: float
    stored: str
    reason: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)


def _file_stamp(path: Path) -> tuple[int, int, int, int] | None:
    """What tells that a file changed without reading it: ``(inode, size, mtime_ns,
    ctime_ns)`` from one ``stat()``, ``None`` when it cannot be stat'ed (missing). An atomic
    replace (how approved policy changes are written) always gives a new inode."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class RealtimeHandler:
    """``on_event`` for the webhook receiver (thread safe; resources cached per process).

    The policy in force (:attr:`policy`, from ``settings.policy_file``) is checked at every
    event (:meth:`current_policy`): a changed file is read again, so an approved policy
    change decides the next event; a file that is missing or does not parse keeps the last
    good policy deciding.

    Args:
        settings: Data directory, policy file, approvals store, MLflow registry.
        model: ``"registry"`` (champion, else challenger, else none) or ``"none"``.
        curve: Fit the retry-timing curve from the warehouse's history when possible.
        anomalies: Run the anomaly checks on invoice events.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        model: str = "registry",
        curve: bool = True,
        anomalies: bool = True,
    ) -> None:
        self.settings = settings
        self.policy_file = policy_file_in_force(settings)  # the default one created if missing
        self._policy_lock = threading.Lock()
        self._policy_stamp = _file_stamp(self.policy_file)  # taken before the read
        #: The last good policy, the one decisions use (see :meth:`current_policy`).
        self.policy: Policy = self._read_policy()
        self.store = pinned_store(settings)
        self.declines: dict[str, str] = {}
        self.first_failed: dict[str, pd.Timestamp] = {}
        # the latest invoice.payment_failed per invoice, to decide again when a decline code
        # arrives after it (Stripe does not promise the order of events)
        self.decided: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.anomalies = anomalies
        self._lock = threading.Lock()
        self._paused: tuple[float, frozenset[str]] = (0.0, frozenset())
        self.model, self.model_info, self.model_alias = self._load_model(model)
        self.scorer: Callable[[Mapping[str, Any]], float] | None = (
            RowScorer(self.model) if self.model is not None else None
        )
        self.account_features = (
            [f for f in self.model.features if f in _account_feature_names()]
            if self.model is not None
            else []
        )
        self.fx = self._load_fx()
        self.curve = self._load_curve() if curve else None
        if self.account_features:
            self._warm_feast()

    def close(self) -> None:
        """Close the approvals store's kept-open connection (if it has one)."""
        close = getattr(self.store, "close", None)
        if close is not None:
            close()

    # -- cached resources

    def _load_model(self, mode: str) -> tuple[Any, dict[str, Any] | None, str | None]:
        if mode == "none":
            return None, None, None
        from workbench.models import registry, training

        for alias in ALIASES:
            try:
                if registry.alias_version(RECOVERY_MODEL, alias, settings=self.settings) is None:
                    continue
                model, info = registry.load_model(RECOVERY_MODEL, alias, settings=self.settings)
                training.check_feature_set(
                    model, name=f"{RECOVERY_MODEL}@{alias} v{info['version']}"
                )
                log.info(
                    "real-time dunning scores with %s@%s v%s",
                    RECOVERY_MODEL,
                    alias,
                    info["version"],
                )
                return model, info, alias
            except training.FeatureSetChanged as exc:
                log.warning("not scoring with %s@%s: %s", RECOVERY_MODEL, alias, exc)
            except Exception as exc:  # noqa: BLE001 - no registry or no such model: rules only
                log.info("no %s@%s (%s)", RECOVERY_MODEL, alias, exc)
        log.info("no recovery model registered: the policy's own rules decide")
        return None, None, None

    def _warehouse(self):  # noqa: ANN202
        from workbench.lakehouse import open_warehouse

        return open_warehouse(self.settings).read(step="realtime")

    def _load_fx(self) -> dict[str, float]:
        try:
            with self._warehouse() as con:
                rows = con.execute(
                    "SELECT currency, arg_max(rate_to_usd, date) FROM fx_rates GROUP BY currency"
                ).fetchall()
            return {str(c).lower(): float(r) for c, r in rows}
        except Exception as exc:  # noqa: BLE001 - no warehouse yet: unknown amounts need a human
            log.info("no FX rates for real-time decisions (%s)", exc)
            return {}

    def _load_curve(self):  # noqa: ANN202
        from workbench.retry_curve import RecoveryCurve, load_history

        try:
            with self._warehouse() as con:
                return RecoveryCurve.fit(load_history(con))
        except Exception as exc:  # noqa: BLE001 - no history: retry as soon as allowed
            log.info("no recovery curve for retry timing (%s)", exc)
            return None

    def _warm_feast(self) -> None:
        from workbench.features import serving

        try:
            serving.online(["__warmup__"], self.account_features, settings=self.settings)
        except Exception as exc:  # noqa: BLE001
            log.warning("Feast online store not ready (%s): account features will be missing", exc)
            self.account_features = []

    # -- the policy in force

    def _read_policy(self) -> Policy:
        """Read and validate the policy file (one read: what is hashed is what is parsed).

        Raises:
            PolicyError: Missing, not YAML, or invalid.
        """
        try:
            data = self.policy_file.read_bytes()
        except FileNotFoundError:
            raise PolicyError(
                str(self.policy_file),
                ["file not found; set policy_file (WORKBENCH_POLICY_FILE) to a policy YAML"],
            ) from None
        return parse_policy_text(
            data, source=str(self.policy_file), reporting_currency=self.settings.reporting_currency
        )

    def current_policy(self) -> Policy:
        """The policy to decide an event with: :attr:`policy`, read again first if its file
        changed since it was read (one ``stat()`` per call; a re-read only on a change).

        A changed file that is missing or invalid is not used: the last good policy keeps
        deciding, and an error is logged once per change of the file, saying how to fix it.
        """
        stamp = _file_stamp(self.policy_file)
        if stamp == self._policy_stamp:
            return self.policy
        with self._policy_lock:
            stamp = _file_stamp(self.policy_file)  # another thread may have read it meanwhile
            if stamp == self._policy_stamp:
                return self.policy
            old = self.policy
            try:
                new = self._read_policy()
            except (PolicyError, OSError) as exc:
                from workbench.policy_changes import history_dir

                self._policy_stamp = stamp  # read once per change of the file, not per event
                log.error(
                    "the policy file %s changed but cannot be used, so real-time decisions "
                    "keep the last good policy, %s: put a valid policy back (`workbench policy "
                    "show` checks it; files replaced by approved changes are kept in %s) and "
                    "the next event picks it up, no restart needed. %s",
                    self.policy_file,
                    old.version,
                    history_dir(self.settings),
                    exc,
                )
                return old
            self.policy = new
            self._policy_stamp = stamp  # after the policy: a reader seeing it sees the policy
        if new.version != old.version:
            log.warning(
                "the policy file %s changed: real-time decisions now use policy %s (was %s)",
                self.policy_file,
                new.version,
                old.version,
            )
        return new

    def paused(self) -> frozenset[str]:
        """Paused action types, re-read at most once a second."""
        at, value = self._paused
        if time.monotonic() - at > 1.0:
            value = frozenset(paused_action_types(self.store))
            self._paused = (time.monotonic(), value)
        return value

    # -- dispatch

    def __call__(self, event: dict[str, Any], path: Path | None = None) -> Any:  # noqa: ARG002
        """Handle one landed event (the receiver calls this after answering 200)."""
        kind = event.get("type")
        if kind in DECLINE_EVENTS:
            return self.remember_decline(event)
        if kind == "invoice.payment_failed":
            return self.decide_event(event)
        if kind in ANOMALY_EVENTS and self.anomalies:
            return self.check_invoice_event(event)
        return None

    def remember_decline(self, event: dict[str, Any]) -> RealtimeDecision | None:
        """Keep the decline code of a failed charge for its invoice.

        When the invoice was already decided without it (its ``invoice.payment_failed``
        came first) and the code forbids retries, the invoice is decided again: the new
        decision supersedes what is pending, and an automated retry already run is rolled
        back (within its override window). Returns that new decision, else None.
        """
        obj = _obj(event)
        err = obj.get("last_payment_error") or {}
        code = (
            (obj.get("outcome") or {}).get("reason")
            or obj.get("failure_code")
            or err.get("decline_code")
            or err.get("code")
        )
        invoice = obj.get("invoice")
        if isinstance(invoice, dict):
            invoice = invoice.get("id")
        if not (invoice and code):
            return None
        with self._lock:
            changed = self.declines.get(str(invoice)) != str(code)
            self.declines[str(invoice)] = str(code)
            earlier = self.decided.get(str(invoice))
        hard = str(code) in self.current_policy().retries.no_retry_decline_codes
        if earlier is None or not changed or not hard:
            return None
        decision = self.decide_event(earlier)
        if decision.action == "wait":  # nothing queued: record the new state, so what is
            # pending for the old one is superseded
            record, _, _ = self.invoice_record(earlier)
            record_states(
                self.store,
                who=ENGINE,
                scope=STATE_SCOPE,
                states={str(invoice): invoice_state(record, action_type=None)},
            )
        self._withdraw_retries(
            str(invoice), reason=f"hard decline {code} learned after the decision"
        )
        return decision

    def _withdraw_retries(self, invoice_id: str, *, reason: str) -> None:
        """Roll back this invoice's automated retries that are still inside their window."""
        for item in list_items(self.store, subject_id=invoice_id, statuses=["executed"]):
            if item.action_type == "retry_payment" and item.can_roll_back(pd.Timestamp.now("UTC")):
                out = rollback(self.store, item.item_id, who=ENGINE, reason=reason)
                log.warning("retry %s of %s: %s", item.item_id, invoice_id, out.message)

    # -- dunning

    def invoice_record(
        self, event: dict[str, Any]
    ) -> tuple[dict[str, Any], pd.Timestamp, pd.Timestamp]:
        """The engine's input (one invoice, :func:`workbench.dunning.decide_invoice`), the
        event time and the invoice's first failure seen by this process."""
        obj = _obj(event)
        iid = str(obj["id"])
        now = pd.Timestamp(int(event.get("created") or time.time()), unit="s", tz="UTC")
        with self._lock:
            first = self.first_failed.setdefault(iid, now)
            decline = self.declines.get(iid)
        currency = str(obj.get("currency") or "").lower()
        amount = int(obj.get("amount_remaining") or obj.get("amount_due") or 0)
        rep = self.settings.reporting_currency
        if currency == rep:
            amount_rep: int | None = amount
        elif currency in self.fx and (rep == "usd" or rep in self.fx):
            amount_rep = to_reporting_minor(
                amount, currency, self.fx[currency], rep, 1.0 if rep == "usd" else self.fx[rep]
            )
        else:
            amount_rep = None
        customer = obj.get("customer")
        invoice = {
            "invoice_id": iid,
            "account_id": customer.get("id") if isinstance(customer, dict) else customer,
            "amount_due": amount,
            "currency": currency,
            "amount_due_reporting": amount_rep,
            "attempt_count": max(int(obj.get("attempt_count") or 1), 1),
            "last_attempt_at": now,
            "decline_code": decline,
            "recovery_probability": float("nan"),
            "uplift": float("nan"),
            "model_versions": "",
            "next_payment_attempt": obj.get("next_payment_attempt"),
        }
        return invoice, now, first

    def invoice_frame(self, event: dict[str, Any]) -> tuple[pd.DataFrame, pd.Timestamp]:
        """The same input as a one-row frame for :func:`workbench.dunning.decide_with_control`
        (the batch path; the handler itself uses :meth:`invoice_record`)."""
        invoice, now, first = self.invoice_record(event)
        frame = pd.DataFrame([{**invoice, "first_failed_at": first}])
        frame["amount_due_reporting"] = pd.array([invoice["amount_due_reporting"]], dtype="Int64")
        frame["last_attempt_at"] = frame["last_attempt_at"].astype("datetime64[us, UTC]")
        return frame, now

    def score(
        self, invoice: dict[str, Any], first: pd.Timestamp, now: pd.Timestamp
    ) -> tuple[float, str, dict[str, float]]:
        """Recovery probability and model version of the invoice (NaN, "" without a model)."""
        timings: dict[str, float] = {}
        if self.scorer is None:
            return float("nan"), "", timings
        from workbench.features import serving

        t = time.perf_counter()
        values: dict[str, Any] = {}
        if self.account_features:
            got = serving.online(
                [invoice["account_id"]], self.account_features, settings=self.settings, now=now
            )
            values.update(got.records()[0])
        timings["feast_ms"] = (time.perf_counter() - t) * 1e3
        values.update(
            {
                "invoice_last_decline_code": invoice["decline_code"],
                "invoice_attempt_number": int(invoice["attempt_count"]),
                "invoice_hours_since_first_failure": (now - first).total_seconds() / 3600.0,
                "invoice_failure_day_of_month": float(now.day),
                "invoice_failure_days_to_payday": days_to_payday(now),
                "invoice_amount_due": float(invoice["amount_due"]),
                "invoice_currency": invoice["currency"],
                "invoice_hours_to_next_attempt": hours_until(
                    invoice.get("next_payment_attempt"), now
                ),
            }
        )
        t = time.perf_counter()
        p = float(self.scorer(values))
        timings["model_ms"] = (time.perf_counter() - t) * 1e3
        info = self.model_info or {}
        return p, f"{info.get('name')}@{self.model_alias}:{info.get('version')}", timings

    def _timing(
        self, invoice: dict[str, Any], policy: Policy | None = None
    ) -> tuple[pd.Timestamp | None, float]:
        """Next retry time planned on the recovery curve under ``policy`` (default:
        :attr:`policy`), and the curve's recovery chance."""
        if self.curve is None:
            return None, float("nan")
        from workbench.retry_curve import remaining_recovery

        r = (self.policy if policy is None else policy).retries
        left = max(r.max_auto_retries - (int(invoice["attempt_count"]) - 1), 0)
        if left == 0:
            return None, 0.0
        last = invoice["last_attempt_at"]
        rep = invoice["amount_due_reporting"]
        times, probs = self.curve.plan_arrays(
            first_ns=np.array([last.value], dtype=np.int64),
            first_s=np.array([last.timestamp()]),
            decline=np.array([invoice["decline_code"] or "other"], dtype=object),
            amount_reporting=np.array([float(invoice["amount_due"] if rep is None else rep)]),
            prior_failed=np.zeros(1),
            retries=left,
            min_hours_between=r.min_hours_between,
            window_days=r.window_days,
            grid_hours=12.0,
        )
        p_all = float(remaining_recovery(probs)[0, 0])
        if not np.isfinite(times[0, 0]):
            return None, p_all
        return pd.Timestamp(times[0, 0], unit="s", tz="UTC"), p_all

    def decide_event(self, event: dict[str, Any]) -> RealtimeDecision:
        """Score, decide and store one ``invoice.payment_failed``."""
        started = time.perf_counter()
        policy = self.current_policy()  # one policy for the whole decision
        invoice, now, first = self.invoice_record(event)
        with self._lock:
            self.decided[str(invoice["invoice_id"])] = event
            if len(self.decided) > _REMEMBERED:
                self.decided.popitem(last=False)
        p, versions, timings = self.score(invoice, first, now)
        t = time.perf_counter()
        preferred, p_curve = self._timing(invoice, policy)
        timings["curve_ms"] = (time.perf_counter() - t) * 1e3
        if not np.isfinite(p) and self.curve is not None:
            p, versions = p_curve, self.curve.version  # no model: the curve's own estimate
        invoice.update(
            recovery_probability=p, model_versions=versions, preferred_retry_at=preferred
        )
        t = time.perf_counter()
        d = decide_invoice(invoice, as_of=now, policy=policy, paused=self.paused())
        timings["decide_ms"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        stored = self._store(d, invoice, now, started, policy)
        timings["store_ms"] = (time.perf_counter() - t) * 1e3
        latency = (time.perf_counter() - started) * 1e3
        return RealtimeDecision(
            invoice_id=str(d["invoice_id"]),
            action=str(d["action"]),
            recovery_probability=float(d["recovery_probability"]),
            model_versions=str(d["model_versions"]),
            policy_version=str(d["policy_version"]),
            control_group=bool(d["control_group"]),
            scheduled_at=d["scheduled_at"],
            latency_ms=latency,
            stored=stored,
            reason=str(d["reason"]),
            timings_ms=timings,
        )

    def _store(
        self,
        d: dict[str, Any],
        invoice: dict[str, Any],
        now: pd.Timestamp,
        started: float,
        policy: Policy | None = None,
    ) -> str:
        """The audit entry and (unless a wait) the queue item or execution of one decision
        taken under ``policy`` (default: :attr:`policy`), in one transaction."""
        policy = self.policy if policy is None else policy
        details = audit.jsonable(
            {
                "invoice_id": d["invoice_id"],
                "action": d["action"],
                "action_type": d["action_type"],
                "scheduled_at": d["scheduled_at"],
                "recovery_probability": d["recovery_probability"],
                "expected_value": d["expected_value"],
                "model_versions": d["model_versions"],
                "policy_version": d["policy_version"],
                "control_group": bool(d["control_group"]),
                "automation_level": d["automation_level"],
                "requires_approval": bool(d["requires_approval"]),
                "reason": d["reason"],
                "decided_in_ms": round((time.perf_counter() - started) * 1e3, 3),
            }
        )
        with self.store.transaction() as tx:
            audit.append(tx, actor=ENGINE.user, event="decision.realtime", at=now, details=details)
            if d["action_type"] is None:
                return "audit"
            summary = apply_decision(self.store, d, invoice, policy=policy, as_of=now)
        if summary.shadowed:
            return "shadow"
        if summary.executed:
            return "executed"
        if summary.queued or summary.duplicates:
            return "queued"
        return "audit"

    # -- anomalies (#10)

    def check_invoice_event(self, event: dict[str, Any]) -> pd.DataFrame:
        """Check an invoice event against the warehouse and the invoices seen so far; store
        and queue what is found (once)."""
        from workbench.anomalies.realtime import invoice_rows_from_stripe

        obj = _obj(event)
        if obj.get("object", "invoice") != "invoice" or not obj.get("id"):
            return pd.DataFrame()
        rows = invoice_rows_from_stripe(obj)
        with self._lock:
            self.recent[str(obj["id"])] = rows
            self.recent.move_to_end(str(obj["id"]))
            while len(self.recent) > RECENT_INVOICES:
                self.recent.popitem(last=False)
            recent = list(self.recent.values())
        with self._warehouse() as con:
            findings = check_with_recent(rows, recent, con)
        if len(findings):
            store_findings(findings, settings=self.settings)
        return findings


class RowScorer:
    """Calibrated recovery probability of one invoice, straight from the LightGBM booster.

    The same numbers as ``BinaryModel.predict`` on a one-row frame (a test checks this),
    without building a frame: numeric features become floats (missing -> NaN), categorical
    ones the booster's category codes (maps built once; unknown or missing -> NaN, as
    pandas categoricals become in LightGBM), one numpy row goes to ``Booster.predict``,
    and the model's calibration is applied.

    Args:
        model: A :class:`workbench.models.training.BinaryModel`.
    """

    def __init__(self, model: Any) -> None:
        spec = model.spec
        self.booster = model.booster
        self.calibrator = model.calibrator
        self.num_iteration = model.best_iteration
        self.numeric: tuple[str, ...] = tuple(spec.numeric)
        self.categorical: tuple[str, ...] = tuple(spec.categorical)
        trained = self.booster.pandas_categorical or [list(v) for v in spec.categorical.values()]
        if len(trained) != len(self.categorical):
            raise ValueError(
                f"model {model.name}: {len(self.categorical)} categorical features but the "
                f"booster knows {len(trained)}; retrain the model"
            )
        # value -> code: a level of the spec, at its position among the booster's levels
        codes = []
        for c, levels in zip(self.categorical, trained, strict=True):
            known = {str(v) for v in spec.categorical[c]}
            codes.append({str(v): float(k) for k, v in enumerate(levels) if str(v) in known})
        self.codes: tuple[dict[str, float], ...] = tuple(codes)

    def row(self, values: Mapping[str, Any]) -> np.ndarray:
        """The model's input row (1 x features, float64) from feature values."""
        out = np.empty((1, len(self.numeric) + len(self.categorical)), dtype=np.float64)
        for k, name in enumerate(self.numeric):
            v = values.get(name)
            out[0, k] = math.nan if v is None or pd.isna(v) else float(v)
        offset = len(self.numeric)
        for k, (name, codes) in enumerate(zip(self.categorical, self.codes, strict=True)):
            v = values.get(name)
            out[0, offset + k] = (
                math.nan if v is None or pd.isna(v) else codes.get(str(v), math.nan)
            )
        return out

    def __call__(self, values: Mapping[str, Any]) -> float:
        """Calibrated probability for one invoice's feature values."""
        raw = self.booster.predict(
            self.row(values), num_iteration=self.num_iteration, num_threads=1
        )
        return float(self.calibrator.apply(raw)[0])


class PinnedSqliteStore(ApprovalStore):
    """The approvals store over one SQLite connection kept open (the real-time path).

    WAL mode with ``synchronous=NORMAL``: a commit appends to the WAL without an fsync
    (the WAL is synced at checkpoints), so a committed decision survives a crash of this
    process (the WAL is in the OS's page cache); a power cut or OS crash can lose the last
    commits since the previous checkpoint, never the database's consistency. The
    connection's statement cache keeps every statement prepared after its first use.

    A transaction opened inside another one (``apply_decision`` inside the decision's
    audit transaction) is a SAVEPOINT: one ``BEGIN IMMEDIATE`` / ``COMMIT`` per decision,
    and an inner failure rolls back only its own part, as a separate transaction would.

    Args:
        url: ``sqlite:////abs/path.sqlite``.
        settings: The receiver's settings, handed to executors (see
            :class:`~workbench.approvals.ApprovalStore`).
    """

    def __init__(self, url: str, *, settings: Settings | None = None) -> None:
        path = url[len("sqlite:///") :]
        self._lock = threading.RLock()
        self._depth = 0
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            path, timeout=30.0, isolation_level=None, check_same_thread=False,
            cached_statements=256,
        )  # fmt: skip
        self._conn.row_factory = sqlite3.Row
        for pragma in (
            "PRAGMA busy_timeout = 30000",
            "PRAGMA foreign_keys = ON",
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = NORMAL",
        ):
            self._conn.execute(pragma)
        super().__init__(url, settings=settings)

    def with_settings(self, settings: Settings) -> ApprovalStore:
        """Not for this store: a copy would share the connection but not the nesting depth
        of its transactions. Give the settings when creating it."""
        if settings == self.settings:
            return self
        raise TypeError(
            "a PinnedSqliteStore cannot be bound to other settings; create one with "
            "PinnedSqliteStore(url, settings=...) (or pinned_store(settings))"
        )

    def close(self) -> None:
        """Close the connection (the store is unusable afterwards)."""
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Any]:
        """One transaction on the kept-open connection (a savepoint when nested)."""
        from workbench.approvals import _SqliteTx

        with self._lock:
            depth = self._depth
            if depth == 0:
                begin, done, undo = (
                    ("BEGIN IMMEDIATE" if write else "BEGIN"),
                    ["COMMIT"],
                    ["ROLLBACK"],
                )
            else:
                name = f"wb_sp{depth}"
                begin, done, undo = (
                    f"SAVEPOINT {name}",
                    [f"RELEASE {name}"],
                    [f"ROLLBACK TO {name}", f"RELEASE {name}"],
                )
            self._conn.execute(begin)
            self._depth = depth + 1
            try:
                yield _SqliteTx(self._conn)
            except BaseException:
                self._depth = depth
                for sql in undo:
                    self._conn.execute(sql)
                raise
            self._depth = depth
            for sql in done:
                self._conn.execute(sql)


def pinned_store(settings: Settings) -> ApprovalStore:
    """A :class:`PinnedSqliteStore` for a SQLite ``approvals_url``; other stores (PostgreSQL)
    as :func:`workbench.approvals.open_store` gives them."""
    url = settings.approvals_url
    if url.startswith("sqlite:///") and url[len("sqlite:///") :] not in ("", ":memory:"):
        return PinnedSqliteStore(url, settings=settings)
    return open_store(settings)


def _account_feature_names() -> set[str]:
    from workbench.features.definitions import get_features

    return {f.name for f in get_features(entity="account_id")}


def check_with_recent(
    rows: tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], bool],
    recent: list[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], bool]],
    con: Any,
) -> pd.DataFrame:
    """The anomaly rules on one invoice (``rows`` from ``invoice_rows_from_stripe``), with
    the recently received invoices laid over the warehouse (the same queries as the batch
    run, as in :func:`workbench.anomalies.realtime.check_invoice_payload`)."""
    from workbench.anomalies.realtime import check, values_relation
    from workbench.anomalies.rules import RULES, Relations, sql_literal

    inv, _, _, complete = rows
    by_id = {r[0]["invoice_id"]: r for r in recent}
    by_id[inv["invoice_id"]] = rows
    ids = "(" + ", ".join(sql_literal(i) for i in by_id) + ")"
    invoices = [r[0] for r in by_id.values()]
    lines = [x for r in by_id.values() for x in r[1]]
    prices = list({p["price_id"]: p for r in by_id.values() for p in r[2]}.values())
    base = Relations(
        invoices=f"(SELECT * FROM invoices WHERE invoice_id NOT IN {ids} UNION ALL SELECT * FROM {values_relation(invoices, 'invoices')})",
        invoice_lines=(
            f"(SELECT * FROM invoice_lines WHERE invoice_id NOT IN {ids}"
            f" UNION ALL SELECT * FROM {values_relation(lines, 'invoice_lines')})"
        ),
        prices=(
            f"(SELECT * FROM prices UNION ALL SELECT * FROM {values_relation(prices, 'prices')}"
            " WHERE price_id NOT IN (SELECT price_id FROM prices))"
        ),
    )
    rules = None if complete else [r for r in RULES if r.name != "line_total_mismatch"]
    return check(con, invoice_ids=[inv["invoice_id"]], rules=rules, base=base)


def store_findings(findings: pd.DataFrame, *, settings: Settings) -> dict[str, int]:
    """Store real-time findings (one row per finding id, replaced when found again) in
    ``anomaly_findings_realtime`` and queue those that move money (idempotent)."""
    from workbench.anomalies.queue import queue_findings
    from workbench.publishing import store_frame

    frame = findings.copy()
    for c in frame.columns:
        if frame[c].dtype == object:
            frame[c] = frame[c].astype("string")
    for fid in frame["finding_id"].unique():
        store_frame(
            frame[frame["finding_id"] == fid],
            table="anomaly_findings_realtime",
            settings=settings,
            replace_where={"finding_id": str(fid)},
        )
    return queue_findings(findings, settings=settings)


def make_handler(settings: Settings, **kwargs: Any) -> RealtimeHandler:
    """The ``on_event`` callback ``workbench receive`` installs (see :class:`RealtimeHandler`)."""
    return RealtimeHandler(settings, **kwargs)
