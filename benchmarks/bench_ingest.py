"""Ingestion benchmark: 1,000,000 simulated Stripe events end to end vs DuckDB's read_json.

Ours: ``workbench.ingest.ingest`` of the event files into a fresh data folder: card-number
redaction, the raw lake (written and fsynced), parsing, duplicate and conflict checks,
contracts (pandera), versions, current-state tables and the commit.

Baseline (the ceiling): DuckDB's own ``read_json`` of the same files into a table of a
database on the same disk (``CREATE TABLE raw AS SELECT * FROM read_json(...)``), with its
schema detection, i.e. only reading and storing the JSON.

Both run side by side in this process; they must agree on the number of events (ours:
accepted + quarantined; the simulator's clean output has a handful of refunds larger than
their charge, which the contracts quarantine). Goal: under 60 s on 2 cores
and within 2x of the baseline.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_ingest.py [--small] [--repeat N]``.
The generated events are cached under ``data/bench/ingest-<n>/`` and reused.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Result, median_time, peak_rss_mib, record  # noqa: E402
from workbench.config import load_settings  # noqa: E402
from workbench.ingest import ingest  # noqa: E402
from workbench.ingest.sample_events import sample_events, write_jsonl  # noqa: E402

log = logging.getLogger("bench_ingest")
ROOT = Path(__file__).resolve().parents[1]


def generate(target: int, folder: Path, *, generator: str) -> list[Path]:
    """Event files holding about ``target`` events (cached in ``folder``)."""
    done = folder / "DONE"
    if done.exists():
        return sorted((folder / "landing" / "stripe").glob("*.jsonl"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    if generator == "simulator":
        from workbench.simulator import simulate

        # about 30 events per account over 12 months (invoices, charges, updates...)
        months = 12
        accounts = max(50, round(target / 30.5))
        simulate(
            accounts=accounts,
            months=months,
            seed=7,
            out=folder,
            faults=False,
            progress=True,
            workers=2,
            chunk_size=max(500, accounts // 32),
        )
    else:
        per_account = 40  # events per account over 12 months
        accounts = max(10, target // per_account)
        out = folder / "landing" / "stripe"
        batch = 2000
        for i, start in enumerate(range(0, accounts, batch)):
            events = sample_events(accounts=min(batch, accounts - start), months=12, seed=1000 + i)
            write_jsonl(events, out / f"events-{i:05d}.jsonl")
    done.write_text(f"{time.perf_counter() - started:.0f} s\n")
    return sorted((folder / "landing" / "stripe").glob("*.jsonl"))


def count_lines(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        with open(p, "rb") as fh:
            total += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 24), b""))
    return total


def run_ours(paths: list[Path], work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    settings = load_settings(root=ROOT, overrides={"data_dir": str(work)})
    report = ingest(paths, settings=settings, progress=False)
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        events = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
    finally:
        con.close()
    return {"report": report, "events": events}


def run_baseline(paths: list[Path], work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    con = duckdb.connect(str(work / "raw.duckdb"))
    try:
        files = ", ".join(f"'{p}'" for p in paths)
        con.execute(
            f"CREATE TABLE raw AS SELECT * FROM read_json([{files}], format = 'newline_delimited')"
        )
        rows, distinct = con.execute("SELECT count(*), count(DISTINCT id) FROM raw").fetchall()[0]
    finally:
        con.close()
    return {"rows": rows, "distinct": distinct}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="20,000 events, for a quick smoke run")
    parser.add_argument(
        "--events", type=int, default=None, help="events to generate (default 1,000,000)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each side; the median is reported"
    )
    parser.add_argument("--generator", choices=("simulator", "sample"), default="simulator")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    target = args.events or (20_000 if args.small else 1_000_000)
    folder = ROOT / "data" / "bench" / f"ingest-{args.generator}-{target}"
    paths = generate(target, folder, generator=args.generator)
    events = count_lines(paths)
    size_gb = sum(p.stat().st_size for p in paths) / 1e9
    log.info("%d events in %d files (%.2f GB)", events, len(paths), size_gb)
    work = ROOT / "data" / "bench" / "work"

    ours_s, ours = median_time(lambda: run_ours(paths, work / "ours"), repeat=args.repeat)
    rss_ours = peak_rss_mib()
    base_s, base = median_time(lambda: run_baseline(paths, work / "baseline"), repeat=args.repeat)
    shutil.rmtree(work, ignore_errors=True)

    report = ours["report"]
    t = report.totals()
    # Every line is read by both; the events table holds what ours accepted, and the events
    # ours quarantined (the simulator has a few refunds larger than their charge) are the rest.
    agree = (
        t["received"] == base["rows"] == events
        and ours["events"] == t["accepted"]
        and base["distinct"] == t["accepted"] + t["quarantined"] + t["duplicates"]
    )
    ratio = ours_s / base_s
    goal_met = ours_s < 60 and ratio <= 2
    log.info(
        "ours %.1f s (%s), baseline %.1f s, ratio %.2f, agree %s",
        ours_s,
        ", ".join(f"{k} {v:.1f}" for k, v in sorted(report.timings.items(), key=lambda kv: -kv[1])),
        base_s,
        ratio,
        agree,
    )
    result = Result(
        benchmark="ingest",
        workload=f"{events:,} simulated Stripe events ({args.generator}), {len(paths)} JSON-lines files, "
        f"{size_gb:.2f} GB, end to end into a fresh lake + warehouse",
        ours_s=round(ours_s, 2),
        baseline="DuckDB read_json of the same files into an on-disk table",
        baseline_s=round(base_s, 2),
        ratio=round(ratio, 3),
        goal="< 60 s on 2 cores and <= 2x DuckDB read_json",
        met=goal_met,
        agree=agree,
        extra={
            "events_per_s": round(events / ours_s),
            "accepted": t["accepted"],
            "quarantined": t["quarantined"],
            "steps_s_last_run": {k: round(v, 2) for k, v in report.timings.items()},
            "peak_rss_mib": round(rss_ours),
            "repeat": args.repeat,
            # other work on the machine during the run (1, 5, 15 minute load averages)
            "load_average_after": [round(x, 1) for x in os.getloadavg()],
        },
    )
    if args.small:
        log.info("smoke run, not recorded: %s", result)
    else:
        log.info("recorded %s", record([result], name="ingest"))
    if not agree:
        sys.exit("ours and the baseline disagree on the number of events")


if __name__ == "__main__":
    main()
