"""``simulate()``: run the simulated company and write it to a data directory.

Accounts are processed in chunks; each account draws from its own random generators
(derived from the seed and the account index with numpy's ``SeedSequence``), so the
content for one account does not depend on the chunk size or the number of worker
processes, and the same arguments always give the same bytes. Memory stays bounded
by one chunk per worker: each chunk's events go to their own file and its CSV rows
and truth rows are appended to the shared files at once.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from workbench.simulator import behaviour as bh
from workbench.simulator import output, truth
from workbench.simulator import stripe_objects as so
from workbench.simulator.catalog import CURRENCIES, build_catalog
from workbench.simulator.lifecycle import ANOMALY_RATES, Account, Context
from workbench.simulator.timeline import DAY, Timeline, iso, parse_start

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 1000


@dataclass
class SimulationSummary:
    """What one :func:`simulate` run produced.

    ``counts`` holds every counter (events, invoices, charges_failed, refunds, disputes,
    anomalies, churned_voluntary, …); the most used ones are also plain attributes.
    """

    accounts: int
    months: int
    seed: int
    start: str
    faults: bool
    regime_change: int | None
    out: str
    events: int = 0
    invoices: int = 0
    failed_payments: int = 0
    anomalies: int = 0
    churned: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    paths: dict[str, list[str]] = field(default_factory=dict)
    wall_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


# The shared context of the running simulation (set in this process and in each worker).
_CTX: Context | None = None
_STRIPE_DIR: Path | None = None


def _fx_rates(seed: int, timeline: Timeline) -> list[tuple[str, str, str]]:
    """Daily FX: a mean-reverting log random walk per currency, as ``(date, currency, rate)``."""
    rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(1, 0)))
    n = timeline.n_days
    rows: list[tuple[str, str, str]] = []
    levels = {"usd": None, "eur": 1.08, "gbp": 1.26}
    series: dict[str, np.ndarray] = {}
    for cur in CURRENCIES:
        if levels[cur] is None:
            series[cur] = np.ones(n)
            continue
        shocks = rng.normal(0.0, 0.0045, n)
        x = np.empty(n)
        level = math.log(levels[cur])
        v = level
        for i in range(n):
            v = v + 0.01 * (level - v) + shocks[i]
            x[i] = v
        series[cur] = np.exp(x)
    for d in range(n):
        for cur in CURRENCIES:
            rows.append((timeline.day_text[d], cur, f"{series[cur][d]:.6f}"))
    return rows


def _signup_cdf(months: int) -> tuple[float, ...]:
    weights = [1.03**m for m in range(months)]
    total = sum(weights)
    launch = 0.15
    probs = [(1 - launch) * w / total for w in weights]
    probs[0] += launch
    cdf, acc = [], 0.0
    for p in probs:
        acc += p
        cdf.append(acc)
    cdf[-1] = 1.0
    return tuple(cdf)


def _usage_text(timeline: Timeline, parts: list[tuple[str, list]]) -> tuple[str, int]:
    """Long-format usage CSV rows (api_calls then active_users per account-day)."""
    ids, days, calls, users = [], [], [], []
    for account_id, chunks in parts:
        for d, c, u in chunks:
            ids.append(np.full(len(d), account_id, dtype=object))
            days.append(d)
            calls.append(c)
            users.append(u)
    if not days:
        return "", 0
    d = np.concatenate(days)
    n = len(d)
    text_days = np.asarray(timeline.day_text, dtype=object)[d]
    acct = np.concatenate(ids)
    frame = pd.DataFrame(
        {
            "account_id": np.repeat(acct, 2),
            "date": np.repeat(text_days, 2),
            "metric": np.tile(np.array(["api_calls", "active_users"], dtype=object), n),
            "quantity": np.column_stack([np.concatenate(calls), np.concatenate(users)]).reshape(-1),
        }
    )
    return frame.to_csv(index=False, header=False, lineterminator="\n"), 2 * n


def _run_chunk(
    chunk: int, lo: int, hi: int, on_account: Callable[[int], object] | None = None
) -> dict[str, Any]:
    """Simulate accounts ``[lo, hi)``; write their events file; return rows for the rest.

    ``on_account`` (in-process runs only) is called with 1 after each account, for progress.
    """
    ctx, stripe_dir = _CTX, _STRIPE_DIR
    assert ctx is not None and stripe_dir is not None
    events: list[tuple[int, str, str]] = []
    usage: list[tuple[str, list]] = []
    tickets: list[tuple] = []
    crm: list[tuple] = []
    tables: dict[str, list] = {name: [] for name in truth.SCHEMAS}
    counts: dict[str, int] = {}
    for index in range(lo, hi):
        res = Account(ctx, index).run()
        acct = res.account[0]
        events.extend(res.events)
        usage.append((acct, res.usage))
        tickets.extend(res.tickets)
        crm.extend(res.crm)
        tables["churn_hazard"].extend(res.hazard)
        tables["churn_events"].extend(res.churn)
        tables["recovery"].extend(res.recovery)
        tables["anomalies"].extend(res.anomalies)
        tables["offers"].append(res.offer)
        tables["accounts"].append(res.account)
        for key, n in res.counts.items():
            counts[key] = counts.get(key, 0) + n
        if on_account is not None:
            on_account(1)
    events.sort(key=lambda e: (e[0], e[1]))
    path = stripe_dir / f"events-{chunk:05d}.jsonl"
    output.write_events(path, [e[2] for e in events])
    counts["events"] = len(events)
    usage_text, usage_rows = _usage_text(ctx.timeline, usage)
    day_text = ctx.timeline.day_text
    crm_rows = [(a, day_text[d], f"{s:.1f}", n, sp, su, tier) for a, d, s, n, sp, su, tier in crm]
    return {
        "chunk": chunk,
        "accounts": hi - lo,
        "reported": hi - lo if on_account is not None else 0,
        "path": str(path),
        "usage": (usage_text, usage_rows),
        "tickets": (output.csv_text(tickets), len(tickets)),
        "crm": (output.csv_text(crm_rows), len(crm_rows)),
        "truth": {name: truth.to_table(name, rows) for name, rows in tables.items()},
        "counts": counts,
    }


def _chunks(accounts: int, size: int) -> list[tuple[int, int, int]]:
    return [(i, lo, min(lo + size, accounts)) for i, lo in enumerate(range(0, accounts, size))]


def _init_worker(ctx: Context, stripe_dir: Path) -> None:
    global _CTX, _STRIPE_DIR
    _CTX, _STRIPE_DIR = ctx, stripe_dir


def _results(
    chunks: list[tuple[int, int, int]],
    workers: int,
    ctx: Context,
    stripe_dir: Path,
    on_account: Callable[[int], object],
) -> Iterator[dict[str, Any]]:
    """Chunk results in chunk order, computed here or by ``workers`` spawned processes.

    Workers are spawned (not forked), so a parent that already runs Arrow or BLAS
    thread pools (a notebook kernel, say) cannot deadlock them.
    """
    if workers <= 1 or len(chunks) <= 1:
        for c in chunks:
            yield _run_chunk(*c, on_account=on_account)
        return
    mp_ctx = mp.get_context("spawn")
    with mp_ctx.Pool(
        processes=workers, initializer=_init_worker, initargs=(ctx, stripe_dir)
    ) as pool:
        yield from pool.imap(_star, chunks)


def _star(args: tuple[int, int, int]) -> dict[str, Any]:
    return _run_chunk(*args)


def simulate(
    accounts: int = 3000,
    months: int = 36,
    seed: int = 0,
    start: str | date | datetime = "2023-01-01",
    faults: bool = False,
    regime_change: int | None = None,
    out: str | Path = "data",
    progress: bool = True,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    workers: int = 1,
) -> SimulationSummary:
    """Simulate a subscription company and write its Stripe events, CSV exports and truth.

    Args:
        accounts: number of customer accounts (each signs up at some point in the horizon).
        months: length of the horizon in calendar months.
        seed: the random seed; the same arguments always give the same bytes.
        start: first day of the horizon (UTC), e.g. ``"2023-01-01"``.
        faults: also inject ingestion faults into the landing files and write
            ``landing/faults_manifest.json`` (see :mod:`workbench.simulator.faults`).
        regime_change: 0-based month index from which behaviour shifts (payment processor
            outage then more declines, a pricing change that lowers usage and raises churn),
            or ``None``.
        out: the data directory; files go to ``out/landing/…`` and ``out/truth/…``.
        progress: show a progress bar over accounts on stderr.
        chunk_size: accounts per events file (and per unit of work).
        workers: processes to use (1 = in this process). Output does not depend on it.

    Returns:
        A :class:`SimulationSummary` with counts, written paths and wall time.
    """
    global _CTX, _STRIPE_DIR
    if accounts < 1 or months < 1:
        raise ValueError("accounts and months must be positive")
    if regime_change is not None and not 0 <= regime_change < months:
        raise ValueError(f"regime_change must be a month index in [0, {months})")
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    t0 = time.perf_counter()
    out = Path(out)
    stripe_dir = out / "landing" / "stripe"
    csv_dir = out / "landing" / "csv"
    truth_dir = out / "truth"
    for folder in (stripe_dir, csv_dir, truth_dir):
        folder.mkdir(parents=True, exist_ok=True)
    output.clean(out)

    start_dt = parse_start(start)
    timeline = Timeline(start_dt, months)
    catalog = build_catalog(seed=seed, created=timeline.start_ts - 7 * DAY)
    usage_mult = np.ones(timeline.n_days)
    if regime_change is not None:
        first_day = timeline.day_of(timeline.month_starts[regime_change])
        usage_mult[first_day:] = bh.REGIME["usage_multiplier"]
    ctx = Context(
        seed=seed,
        timeline=timeline,
        catalog=catalog,
        regime_month=regime_change,
        signup_cdf=_signup_cdf(months),
        usage_multiplier=usage_mult,
    )
    _CTX, _STRIPE_DIR = ctx, stripe_dir

    catalog_path = stripe_dir / "catalog.jsonl"
    output.write_events(catalog_path, [so.encode(e) for e in catalog.events])
    fx_rows = _fx_rates(seed, timeline)
    fx_path = csv_dir / "fx_rates.csv"
    output.write_text(fx_path, output.csv_text(fx_rows, output.FX_COLUMNS))

    usage = output.CsvSink(csv_dir / "usage.csv", output.USAGE_COLUMNS)
    tickets = output.CsvSink(csv_dir / "support_tickets.csv", output.TICKET_COLUMNS)
    crm = output.CsvSink(csv_dir / "crm_signals.csv", output.CRM_COLUMNS)
    sinks = {
        name: output.ParquetSink(truth_dir / f"{name}.parquet", name) for name in truth.SCHEMAS
    }
    counts: dict[str, int] = {"events": len(catalog.events)}
    event_files = [str(catalog_path)]
    chunks = _chunks(accounts, chunk_size)
    bar = tqdm(total=accounts, unit="acct", desc="simulate", disable=not progress)
    try:
        for res in _results(chunks, workers, ctx, stripe_dir, bar.update):
            event_files.append(res["path"])
            usage.write_text(*res["usage"])
            tickets.write_text(*res["tickets"])
            crm.write_text(*res["crm"])
            for name, table in res["truth"].items():
                sinks[name].write(table)
            for key, n in res["counts"].items():
                counts[key] = counts.get(key, 0) + n
            bar.update(res["accounts"] - res["reported"])
    finally:
        bar.close()
        _CTX = _STRIPE_DIR = None
    for sink in (usage, tickets, crm, *sinks.values()):
        sink.close()
    counts.update(
        usage_rows=usage.rows, tickets=tickets.rows, crm_rows=crm.rows, fx_rows=len(fx_rows)
    )
    counts["customers"] = accounts

    regime = {
        "regime_change_month": regime_change,
        "regime_change_date": iso(timeline.month_starts[regime_change])
        if regime_change is not None
        else None,
        "effects": dict(bh.REGIME) if regime_change is not None else {},
    }
    output.write_json(truth_dir / "regime.json", regime)
    params = {
        "accounts": accounts,
        "months": months,
        "seed": seed,
        "start": start_dt.date().isoformat(),
        "faults": faults,
        "regime_change": regime_change,
        "chunk_size": chunk_size,
        "anomaly_rates": ANOMALY_RATES,
        "retry_days": list(bh.RETRY_DAYS),
        "counts": {k: counts[k] for k in sorted(counts)},
    }
    paths = {
        "stripe": event_files,
        "csv": [str(csv_dir / n) for n in output.CSV_FILES],
        "truth": [str(truth_dir / n) for n in output.TRUTH_FILES],
    }
    if faults:
        from workbench.simulator.faults import inject_faults

        manifest = inject_faults(out, seed=seed)
        counts["faults"] = len(manifest["faults"])
        params["counts"]["faults"] = counts["faults"]
        paths["faults"] = [str(out / "landing" / "faults_manifest.json")]
    output.write_json(truth_dir / "parameters.json", params)

    summary = SimulationSummary(
        accounts=accounts,
        months=months,
        seed=seed,
        start=start_dt.date().isoformat(),
        faults=faults,
        regime_change=regime_change,
        out=str(out),
        events=counts.get("events", 0),
        invoices=counts.get("invoices", 0),
        failed_payments=counts.get("charges_failed", 0),
        anomalies=counts.get("anomalies", 0),
        churned=counts.get("churned_voluntary", 0) + counts.get("churned_involuntary", 0),
        counts={k: counts[k] for k in sorted(counts)},
        paths=paths,
        wall_time_s=round(time.perf_counter() - t0, 3),
    )
    logger.info(
        "simulated %d accounts x %d months: %d events in %.1f s",
        accounts,
        months,
        summary.events,
        summary.wall_time_s,
    )
    return summary
