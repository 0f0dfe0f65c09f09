"""Anomaly detection quality on the simulated company: rules, Isolation Forest, real time.

Simulates a company (``workbench.simulator.simulate``) into a temporary folder, loads its
Stripe events with ``workbench.ingest.ingest``, runs the rules and the Isolation Forest
over the warehouse and scores the findings against the simulator's labelled anomalies
(``truth/anomalies.parquet``):

* per anomaly type: precision and recall of the rules (goal for double billing and
  line-total mismatches: recall ≥ 0.95 at precision ≥ 0.9), and of the merged list;
* precision@k of the ranked list;
* the detector's lift over the rules alone: labelled anomalies among the top ``budget``
  invoices no rule flagged, against what a random pick of the same size would find; and
  the same with each invoice rule left out in turn (how much of a missing rule the
  detector makes up for);
* real time: ``check_invoice`` on a sample of invoices must give exactly the batch
  findings (same rule code), and ``check_invoice_payload`` on the simulator's own
  ``invoice.finalized`` payloads must flag every labelled duplicate before it is paid.

The baseline is "rules alone" (quality) and "one batch run over the warehouse" (time).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_anomalies.py [--small]`` (default: two
companies of 2,000 accounts × 24 months, seeds 7 and 8, pooled; ``--small``: one company of
300 × 12, recorded as ``anomalies_small``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from benchmarks.common import Result, median_time, peak_rss_mib, record
from workbench.anomalies import (
    check_invoice,
    check_invoice_payload,
    detect_rules,
    detect_unusual_invoices,
    evaluate,
    lift_over_rules,
    load_labels,
    rank_findings,
)
from workbench.anomalies.findings import utc_now

log = logging.getLogger("bench_anomalies")

GOAL_TYPES = ("duplicate_invoice", "duplicate_subscription", "line_total_mismatch")
GOAL = "recall ≥ 0.95 at precision ≥ 0.9"
INVOICE_RULES = ("duplicate_invoice", "amount_vs_price", "line_total_mismatch")
RULE_TYPE = {
    "duplicate_invoice": "duplicate_invoice",
    "amount_vs_price": "wrong_amount",
    "line_total_mismatch": "line_total_mismatch",
}


def prerequisites() -> tuple[Any, Any] | None:
    """``(simulate, ingest)`` when both packages are in place, else None."""
    try:
        simulate = importlib.import_module("workbench.simulator").simulate
        ingest = importlib.import_module("workbench.ingest").ingest
    except (ImportError, AttributeError) as exc:
        log.warning("simulator or ingestion not available (%s); nothing to evaluate", exc)
        return None
    return simulate, ingest


def build_company(
    root: Path, *, accounts: int, months: int, seed: int
) -> tuple[Path, Path, dict[str, float]]:
    """Simulate and ingest; return (simulator output folder, warehouse path, timings)."""
    simulate, ingest = prerequisites()  # type: ignore[misc]
    from workbench.config import load_settings

    out = root / "sim"
    t0 = time.perf_counter()
    summary = simulate(accounts=accounts, months=months, seed=seed, out=out, progress=False)
    t1 = time.perf_counter()
    settings = load_settings(
        Path(__file__).resolve().parents[1], overrides={"data_dir": str(root / "data")}
    )
    report = ingest(out / "landing" / "stripe", settings=settings, progress=False)
    t2 = time.perf_counter()
    log.info(
        "simulated %s invoices in %.1f s; %s", getattr(summary, "invoices", "?"), t1 - t0, report
    )
    return out, Path(settings.warehouse_path), {"simulate_s": t1 - t0, "ingest_s": t2 - t1}


def finalized_payloads(out: Path, invoice_ids: set[str]) -> dict[str, dict]:
    """The simulator's ``invoice.finalized`` payload of each invoice asked for."""
    found: dict[str, dict] = {}
    for path in sorted((out / "landing" / "stripe").glob("*.jsonl")):
        with path.open() as fh:
            for line in fh:
                if '"invoice.finalized"' not in line:
                    continue
                event = json.loads(line)
                obj = event.get("data", {}).get("object", {})
                if event.get("type") == "invoice.finalized" and obj.get("id") in invoice_ids:
                    found[obj["id"]] = event
    return found


@dataclass
class SeedRun:
    """What one simulated company gave (ids already prefixed with the seed)."""

    seed: int
    n_invoices: int
    labels: pd.DataFrame
    rule_findings: pd.DataFrame
    model_findings: pd.DataFrame
    scores: pd.DataFrame
    rules_s: float
    model_s: float
    check_s: list[float]
    payload_s: list[float]
    checked: int
    mismatches: list[str]
    duplicates: int
    payloads_found: int
    caught: int
    labelled_refunds_loaded: int
    quarantined_refund_exceeds: int
    threshold: float
    build: dict[str, float]


def _prefix(frame: pd.DataFrame, seed: int, *cols: str) -> pd.DataFrame:
    out = frame.copy()
    for c in cols:
        out[c] = f"s{seed}:" + out[c].astype(str)
    return out


def run_seed(
    root: Path, *, accounts: int, months: int, seed: int, contamination: float, sample: int
) -> SeedRun:
    """Simulate, ingest, detect and check one company."""
    out, warehouse, build_times = build_company(root, accounts=accounts, months=months, seed=seed)
    labels = load_labels(out)
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        n_invoices = con.execute("SELECT count(*) FROM invoices").fetchall()[0][0]
        now = utc_now()
        rules_s, rule_findings = median_time(lambda: detect_rules(con, detected_at=now), repeat=3)
        model_s, (model_findings, scores, detector) = median_time(
            lambda: detect_unusual_invoices(con, contamination=contamination, detected_at=now),
            repeat=3,
        )
        refund_labels = labels.loc[
            labels["anomaly_type"] == "refund_exceeds_payment", "object_id"
        ].tolist()
        loaded = (
            con.execute(
                "SELECT count(*) FROM refunds WHERE list_contains($ids, refund_id)",
                {"ids": refund_labels},
            ).fetchall()[0][0]
            if refund_labels
            else 0
        )
        quarantined = con.execute(
            "SELECT count(*) FROM quarantine WHERE rule = 'refund_exceeds_amount'"
        ).fetchall()[0][0]

        # real time: the same findings one invoice at a time ...
        rng = random.Random(seed)
        all_ids = [
            r[0]
            for r in con.execute("SELECT invoice_id FROM invoices ORDER BY invoice_id").fetchall()
        ]
        inv_labels = set(labels.loc[labels["object_type"] == "invoice", "object_id"])
        flagged = set(rule_findings.loc[rule_findings["object_type"] == "invoice", "object_id"])
        chosen = sorted(inv_labels | flagged | set(rng.sample(all_ids, min(sample, len(all_ids)))))
        cols = ["finding_id", "severity", "amount_at_stake", "explanation", "suggested_action"]
        check_s, mismatches = [], []
        for iid in chosen:
            t0 = time.perf_counter()
            one = check_invoice(con, iid, detected_at=now)
            check_s.append(time.perf_counter() - t0)
            one = one[one["object_type"] == "invoice"][cols].reset_index(drop=True)
            batch = rule_findings[
                (rule_findings["object_type"] == "invoice") & (rule_findings["object_id"] == iid)
            ]
            if not one.equals(batch[cols].reset_index(drop=True)):
                mismatches.append(iid)
        # ... and every labelled duplicate flagged from its invoice.finalized payload, before payment
        dups = set(labels.loc[labels["anomaly_type"] == "duplicate_invoice", "object_id"])
        payloads = finalized_payloads(out, dups)
        caught, payload_s = 0, []
        for iid, event in payloads.items():
            t0 = time.perf_counter()
            f = check_invoice_payload(event, con, detected_at=now)
            payload_s.append(time.perf_counter() - t0)
            hit = f[(f["rule"] == "duplicate_invoice") & (f["object_id"] == iid)]
            caught += int(len(hit) == 1 and hit.iloc[0]["suggested_action"] == "void")
    finally:
        con.close()
    return SeedRun(
        seed=seed,
        n_invoices=n_invoices,
        labels=_prefix(labels, seed, "object_id"),
        rule_findings=_prefix(rule_findings, seed, "object_id", "finding_id"),
        model_findings=_prefix(model_findings, seed, "object_id", "finding_id"),
        scores=_prefix(scores[["invoice_id", "score"]], seed, "invoice_id"),
        rules_s=rules_s,
        model_s=model_s,
        check_s=check_s,
        payload_s=payload_s,
        checked=len(chosen),
        mismatches=mismatches,
        duplicates=len(dups),
        payloads_found=len(payloads),
        caught=caught,
        labelled_refunds_loaded=int(loaded),
        quarantined_refund_exceeds=int(quarantined),
        threshold=float(detector.threshold_),
        build=build_times,
    )


def _by_budget(frame: pd.DataFrame, col: str, digits: int | None = None) -> dict[int, float]:
    return {
        int(r["budget"]): (round(float(r[col]), digits) if digits else int(r[col]))
        for r in frame.to_dict("records")
    }


def summarize(
    runs: list[SeedRun], *, accounts: int, months: int, contamination: float
) -> list[Result]:
    """Pool the seeds' findings and labels and turn them into benchmark rows."""
    labels = pd.concat([r.labels for r in runs], ignore_index=True)
    rule_findings = rank_findings(*[r.rule_findings for r in runs])
    model_findings = pd.concat([r.model_findings for r in runs], ignore_index=True)
    scores = pd.concat([r.scores for r in runs], ignore_index=True)
    merged = rank_findings(rule_findings, model_findings)
    ev_rules, ev_all = evaluate(rule_findings, labels), evaluate(merged, labels)
    n_invoices = sum(r.n_invoices for r in runs)
    seeds = ", ".join(str(r.seed) for r in runs)
    workload = (
        f"{accounts} accounts × {months} months, seeds {seeds} "
        f"({n_invoices:,} invoices, {len(labels)} labelled anomalies)"
    )
    rules_s = statistics.median(r.rules_s for r in runs)
    model_s = statistics.median(r.model_s for r in runs)
    results: list[Result] = []

    per = ev_rules.per_type.set_index("anomaly_type")
    goal_met = []
    for t in sorted(set(labels["anomaly_type"])):
        row = per.loc[t]
        is_goal = t in GOAL_TYPES
        met = bool(row["recall"] >= 0.95 and row["precision"] >= 0.9) if is_goal else None
        if is_goal:
            goal_met.append(met)
        extra: dict[str, Any] = {
            "labelled": int(row["labelled"]),
            "flagged": int(row["flagged"]),
            "true_positives": int(row["true_positives"]),
            "precision": float(row["precision"]),
            "recall": float(row["recall"]),
        }
        if t == "refund_exceeds_payment":
            extra["labelled_refunds_in_warehouse"] = sum(r.labelled_refunds_loaded for r in runs)
            extra["events_quarantined_by_ingest_refund_exceeds_amount"] = sum(
                r.quarantined_refund_exceeds for r in runs
            )
        results.append(
            Result(
                benchmark="anomalies",
                workload=f"{t}, rules (batch over the warehouse): {workload}",
                ours_s=rules_s,
                goal=GOAL if is_goal else "",
                met=met,
                extra=extra,
            )
        )

    at_k = {f"p@{int(r['k'])}": float(r["precision_at_k"]) for r in ev_all.at_k.to_dict("records")}
    unlabelled = ev_rules.per_type[ev_rules.per_type["labelled"] == 0]
    results.append(
        Result(
            benchmark="anomalies",
            workload=f"ranked list, rules + isolation forest (contamination {contamination}): {workload}",
            ours_s=rules_s + model_s,
            baseline="rules alone",
            baseline_s=rules_s,
            ratio=(rules_s + model_s) / rules_s,
            goal=f"{GOAL} for {', '.join(GOAL_TYPES)}",
            met=all(goal_met) if goal_met else None,
            extra={
                **at_k,
                "precision (any label, merged list)": ev_all.overall["precision"],
                "recall (any label, merged list)": ev_all.overall["recall"],
                "precision (rules alone)": ev_rules.overall["precision"],
                "recall (rules alone)": ev_rules.overall["recall"],
                "rule findings": len(rule_findings),
                "isolation forest findings": len(model_findings),
                "findings of rule types the simulator does not label": {
                    r["anomaly_type"]: int(r["flagged"]) for r in unlabelled.to_dict("records")
                },
                "median simulate_s": statistics.median(r.build["simulate_s"] for r in runs),
                "median ingest_s": statistics.median(r.build["ingest_s"] for r in runs),
            },
        )
    )

    budgets = (25, 50, 125, 250) if n_invoices > 4_000 else (10, 25, 50)
    lift = lift_over_rules(rule_findings, scores, labels, budgets=budgets)
    loo: dict[str, Any] = {}
    for rule in INVOICE_RULES:
        lab_t = labels[labels["anomaly_type"] == RULE_TYPE[rule]]
        lo = lift_over_rules(
            rule_findings[rule_findings["rule"] != rule], scores, lab_t, budgets=budgets
        )
        loo[f"without rule {rule}: {RULE_TYPE[rule]} found of {len(lab_t)} by budget"] = _by_budget(
            lo, "added_true_positives"
        )
        loo[f"without rule {rule}: random pick expects"] = _by_budget(lo, "random_expected", 2)
    results.append(
        Result(
            benchmark="anomalies",
            workload=f"isolation forest lift over the rules (budgets: extra invoices reviewed over the pooled seeds): {workload}",
            ours_s=model_s,
            baseline="rules alone",
            baseline_s=rules_s,
            goal="report the labelled anomalies the detector adds per extra review budget",
            extra={
                "added true positives by budget": _by_budget(lift, "added_true_positives"),
                "random pick expects": _by_budget(lift, "random_expected", 2),
                "recall (rules alone)": float(lift["rules_recall"].iloc[0]),
                "detector alone: share of labelled invoices in its top budget": _by_budget(
                    lift, "detector_alone_recall_invoices", 3
                ),
                **loo,
                "thresholds": [round(r.threshold, 3) for r in runs],
            },
        )
    )

    check_s = [t for r in runs for t in r.check_s]
    payload_s = [t for r in runs for t in r.payload_s]
    mismatches = [m for r in runs for m in r.mismatches]
    dups = sum(r.duplicates for r in runs)
    caught = sum(r.caught for r in runs)
    results.append(
        Result(
            benchmark="anomalies",
            workload=f"real time: check_invoice per invoice vs one batch run: {workload}",
            ours_s=statistics.median(check_s),
            baseline="batch rules over the whole warehouse",
            baseline_s=rules_s,
            ratio=statistics.median(check_s) / rules_s,
            goal="same findings as the batch run; every labelled duplicate flagged (void) at invoice.finalized",
            met=not mismatches and caught == dups,
            agree=not mismatches,
            extra={
                "invoices checked one by one": sum(r.checked for r in runs),
                "invoices whose findings differ from the batch run": mismatches[:10],
                "labelled duplicates": dups,
                "invoice.finalized payloads found": sum(r.payloads_found for r in runs),
                "duplicates flagged from the payload, action void": caught,
                "median check_invoice_payload s": statistics.median(payload_s)
                if payload_s
                else None,
                "peak_rss_mib": peak_rss_mib(),
            },
        )
    )
    for r in results:
        log.info("%s | %.3f s | met=%s | %s", r.workload, r.ours_s or 0.0, r.met, r.extra)
    return results


def run(
    *,
    accounts: int,
    months: int,
    seeds: list[int],
    contamination: float,
    sample: int,
    keep: Path | None,
) -> list[Result]:
    """Run every seed in its own folder and pool the results."""
    tmp = tempfile.TemporaryDirectory(prefix="bench_anomalies_") if keep is None else None
    root = Path(tmp.name) if tmp is not None else keep
    assert root is not None
    try:
        runs = []
        for seed in seeds:
            folder = root / f"seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            runs.append(
                run_seed(
                    folder,
                    accounts=accounts,
                    months=months,
                    seed=seed,
                    contamination=contamination,
                    sample=sample,
                )
            )
        return summarize(runs, accounts=accounts, months=months, contamination=contamination)
    finally:
        if tmp is not None:
            tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--small", action="store_true", help="quick smoke run: 300 accounts × 12 months"
    )
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument(
        "--seeds", type=str, default="7,8", help="comma-separated seeds, one company each"
    )
    parser.add_argument("--contamination", type=float, default=0.01)
    parser.add_argument(
        "--sample", type=int, default=300, help="extra random invoices checked one by one"
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep the simulated data in this folder"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if prerequisites() is None:
        print(
            "bench_anomalies: skipped, workbench.simulator.simulate or workbench.ingest.ingest is missing"
        )
        return 0
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    if args.small:
        accounts, months, sample, seeds = 300, 12, 50, seeds[:1]
    else:
        accounts, months, sample = args.accounts, args.months, args.sample
    results = run(
        accounts=accounts,
        months=months,
        seeds=seeds,
        contamination=args.contamination,
        sample=sample,
        keep=args.keep,
    )
    path = record(results, name="anomalies" if not args.small else "anomalies_small")
    print(f"recorded {len(results)} rows in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
