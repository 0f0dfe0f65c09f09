"""Real-time dunning decisions: ``invoice.payment_failed`` -> scored, decided and stored.

On an ingested simulated company (``--data``; default: simulate the default company) the
Feast online store is published, the recovery model is trained and registered (challenger)
unless one is registered already, and a :class:`workbench.dunning_realtime.RealtimeHandler`
is built once (model, Feast store, policy, approvals store, retry curve cached). Then
>= 1000 signed ``invoice.payment_failed`` events (built from the company's own, one per
failed invoice, cycling) go through the receive path one at a time
(``WebhookReceiver.handle`` + ``notify``: verify, redact, fsynced landing, then the
decision). We report p50/p99 of the decision latency (score with online features +
decide + store), per step, and of the whole receive path, against the issue's goal (50 ms at
p99); the CPU time per decision (the machine is shared: wall time includes waiting for a
core); and the cost of an fsync per commit: the approvals store commits with
``synchronous=NORMAL`` in WAL mode (no fsync per commit), measured here against ``FULL``.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_dunning_realtime.py [--data DIR] [--events N]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import Result, record
from workbench import audit
from workbench.config import load_settings
from workbench.dunning import decide_invoice, decide_with_control
from workbench.dunning_realtime import RECOVERY_MODEL, PinnedSqliteStore, RealtimeHandler
from workbench.features import serving
from workbench.ingest import ingest
from workbench.models import registry, training
from workbench.simulator import simulate
from workbench.store import Warehouse
from workbench.webhooks import WebhookReceiver, compute_signature

REPO = Path(__file__).resolve().parents[1]
SECRET = "whsec_bench_dunning"
CSV = {
    "usage.csv": "simulator_usage",
    "crm_signals.csv": "simulator_crm_signals",
    "support_tickets.csv": "simulator_support_tickets",
    "fx_rates.csv": None,
}


def _company(data: Path | None) -> Path:
    if data is not None and (data / "warehouse").exists():
        return data
    data = data or Path(tempfile.mkdtemp(prefix="bench-dunning-rt-")) / "data"
    simulate(accounts=3000, months=36, seed=0, out=data, progress=True)
    settings = load_settings(REPO, overrides={"data_dir": str(data)})
    ingest(data / "landing" / "stripe", source="stripe", settings=settings, progress=True)
    for name, mapping in CSV.items():
        ingest(data / "landing" / "csv" / name, source="csv", mapping=mapping, settings=settings)
    return data


def _events(data: Path, n: int, now: int) -> list[tuple[dict, dict]]:
    failed = []
    for path in sorted((data / "landing" / "stripe").glob("events-*.jsonl")):
        for line in path.read_text().splitlines():
            if '"invoice.payment_failed"' in line:
                failed.append(json.loads(line))
    out = []
    for i in range(n):
        ev = copy.deepcopy(failed[i % len(failed)])
        inv = ev["data"]["object"]
        inv["id"] = f"{inv['id']}_b{i}"
        ev.update(id=f"evt_bench_dunning_{i:06d}", created=now)
        charge = {
            "id": f"evt_bench_charge_{i:06d}", "object": "event", "type": "charge.failed",
            "created": now,
            "data": {"object": {"id": f"ch_b{i}", "object": "charge", "invoice": inv["id"],
                                "failure_code": "card_declined",
                                "outcome": {"reason": ["insufficient_funds", "do_not_honor", "generic_decline", "stolen_card"][i % 4]}}},
        }  # fmt: skip
        out.append((charge, ev))
    return out


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


#: the previous run (pandas one-row frames, a new SQLite connection per transaction,
#: synchronous=FULL): benchmarks/results/dunning_realtime.json of 2026-11-25 17:50 UTC
BEFORE = {
    "p50_ms": 92.27, "p99_ms": 233.0, "load_avg_1m": 4.61,
    "breakdown_p50_ms": {"feast_ms": 1.28, "model_ms": 14.96, "curve_ms": 20.13, "decide_ms": 23.44, "store_ms": 25.34},
    "breakdown_p99_ms": {"feast_ms": 6.14, "model_ms": 34.4, "curve_ms": 44.22, "decide_ms": 66.69, "store_ms": 122.31},
}  # fmt: skip


def _commit_cost(where: Path, n: int = 300) -> dict[str, dict[str, float]]:
    """p50/p99 ms of one decision-sized audit commit on the kept-open connection, with
    ``synchronous=NORMAL`` (no fsync per commit in WAL mode) and ``FULL`` (fsync per
    commit), and of a bare fsync of a 1 KiB write in the same directory."""
    store = PinnedSqliteStore(f"sqlite:///{where / 'fsync-probe.sqlite'}")
    details = {"invoice_id": "in_probe", "action": "retry_at", "reason": "x" * 300}
    out: dict[str, dict[str, float]] = {}
    for mode in ("NORMAL", "FULL"):
        store._conn.execute(f"PRAGMA synchronous = {mode}")
        ms = []
        for _ in range(n):
            t = time.perf_counter()
            with store.transaction() as tx:
                audit.append(tx, actor="bench", event="probe", details=details)
            ms.append((time.perf_counter() - t) * 1e3)
        out[f"commit synchronous={mode}"] = {
            "p50_ms": round(_pct(ms, 50), 3),
            "p99_ms": round(_pct(ms, 99), 3),
        }
    store.close()
    ms = []
    with open(where / "fsync-probe.bin", "ab") as fh:
        for _ in range(n):
            fh.write(b"x" * 1024)
            fh.flush()
            t = time.perf_counter()
            os.fsync(fh.fileno())
            ms.append((time.perf_counter() - t) * 1e3)
    out["bare fsync (1 KiB)"] = {"p50_ms": round(_pct(ms, 50), 3), "p99_ms": round(_pct(ms, 99), 3)}
    return out


def _agree(handler: RealtimeHandler, events: list[tuple[dict, dict]], k: int = 300) -> bool:
    """The fast path (``decide_invoice``) against the frame path (``decide_with_control``
    on a one-row frame, as before) on the handler's own inputs for ``k`` events."""
    for _, ev in events[:k]:
        invoice, now, first = handler.invoice_record(ev)
        p, versions, _ = handler.score(invoice, first, now)
        preferred, p_curve = handler._timing(invoice)
        if not np.isfinite(p) and handler.curve is not None:
            p, versions = p_curve, handler.curve.version
        invoice.update(
            recovery_probability=p, model_versions=versions, preferred_retry_at=preferred
        )
        fast = decide_invoice(invoice, as_of=now, policy=handler.policy)
        frame = pd.DataFrame([invoice])
        frame["amount_due_reporting"] = frame["amount_due_reporting"].astype("Int64")
        for col in ("last_attempt_at", "preferred_retry_at"):
            frame[col] = pd.to_datetime(frame[col], utc=True).astype("datetime64[us, UTC]")
        row = decide_with_control(frame, as_of=now, policy=handler.policy).iloc[0]
        for col, value in row.items():
            a, b = fast[col], value
            if (a is None or pd.isna(a) is True) and pd.isna(b) is True:
                continue
            if a != b:
                print(f"DISAGREE on {invoice['invoice_id']} {col}: fast {a!r}, frame {b!r}")
                return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--events", type=int, default=1200)
    args = ap.parse_args()
    data = _company(args.data)
    settings = load_settings(REPO, overrides={"data_dir": str(data)})
    t = time.perf_counter()
    with Warehouse(settings).read(step="bench") as con:
        horizon = pd.Timestamp(con.execute("SELECT max(created) FROM events").fetchone()[0])
        serving.publish_online(con, as_of=horizon, settings=settings)
        if registry.alias_version(RECOVERY_MODEL, "champion", settings=settings) is None and (
            registry.alias_version(RECOVERY_MODEL, "challenger", settings=settings) is None
        ):
            training.train_recovery(con, horizons=(14,), settings=settings)
    prep_s = time.perf_counter() - t
    t = time.perf_counter()
    handler = RealtimeHandler(settings)
    load_s = time.perf_counter() - t
    receiver = WebhookReceiver(
        Path(tempfile.mkdtemp(prefix="bench-landing-")), secrets=[SECRET], on_event=handler,
        tolerance=None,
    )  # fmt: skip
    now = int(time.time())
    events = _events(data, args.events, now)
    load_before = os.getloadavg()[0]
    decide_ms, cpu_ms, path_ms, actions, stored = [], [], [], {}, {}
    breakdown: dict[str, list[float]] = {}
    for charge, ev in events:
        handler(charge)
        body = json.dumps(ev).encode()
        header = f"t={now},v1={compute_signature(SECRET, now, body)}"
        t0 = time.perf_counter()
        outcome = receiver.handle(body, header, remote="127.0.0.1")
        t1, c1 = time.perf_counter(), time.process_time()
        decision = handler(outcome.event, outcome.path)  # what notify() runs
        t2, c2 = time.perf_counter(), time.process_time()
        cpu_ms.append((c2 - c1) * 1e3)
        path_ms.append((t2 - t0) * 1e3)
        decide_ms.append((t2 - t1) * 1e3)
        actions[decision.action] = actions.get(decision.action, 0) + 1
        stored[decision.stored] = stored.get(decision.stored, 0) + 1
        for k, v in decision.timings_ms.items():
            breakdown.setdefault(k, []).append(v)
    p50, p99 = _pct(decide_ms, 50), _pct(decide_ms, 99)
    load_after = os.getloadavg()[0]
    agree = _agree(handler, events)
    commit_cost = _commit_cost(Path(tempfile.mkdtemp(prefix="bench-fsync-", dir=data)))
    info = handler.model_info or {}
    extra = {
        "events": len(events),
        "p50_ms": round(p50, 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(max(decide_ms), 2),
        "cpu_ms_per_decision": {
            "mean": round(statistics.fmean(cpu_ms), 2),
            "p50": round(_pct(cpu_ms, 50), 2),
            "p99": round(_pct(cpu_ms, 99), 2),
        },
        "receive_path_p50_ms": round(_pct(path_ms, 50), 2),
        "receive_path_p99_ms": round(_pct(path_ms, 99), 2),
        "breakdown_p50_ms": {k: round(statistics.median(v), 2) for k, v in breakdown.items()},
        "breakdown_p99_ms": {k: round(_pct(v, 99), 2) for k, v in breakdown.items()},
        "model": f"{info.get('name')}@{handler.model_alias}:{info.get('version')}",
        "online_account_features": handler.account_features,
        "actions": actions,
        "stored": stored,
        "policy_version": handler.policy.version,
        "shadow": handler.policy.shadow,
        "one_time_load_s": round(load_s, 2),
        "prep_s (publish Feast, train model if none)": round(prep_s, 1),
        "load_avg_1m": round(load_after, 2),
        "load_avg_1m_at_start": round(load_before, 2),
        "store": "approvals SQLite, one kept-open connection, WAL, synchronous=NORMAL, one transaction per decision",
        "commit_cost": commit_cost,
        "before": BEFORE,
    }
    rows = [
        Result(
            benchmark="dunning_realtime",
            workload=f"{len(events):,} invoice.payment_failed through the receive path, one at a "
            "time: Feast online account features + recovery model + engine + approvals store",
            ours_s=round(p99 / 1e3, 4),
            baseline="issue goal: 50 ms at p99",
            baseline_s=0.05,
            ratio=round(p99 / 50.0, 3),
            goal="decision p99 <= 50 ms",
            met=bool(p99 <= 50.0),
            agree=agree,
            extra=extra,
        )
    ]
    path = record(rows, name="dunning_realtime")
    print(json.dumps(extra, indent=2, default=str))
    print("written", path)


if __name__ == "__main__":
    main()
