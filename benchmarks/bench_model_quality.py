"""Model quality against the truth on the default simulated company.

Simulates the company (3,000 accounts x 36 months, seed 0; ``--small``: 600 x 24) unless
its data folder already holds a warehouse and the truth, ingests it, then trains and
evaluates on the test period:

* churn within 30 / 90 / 180 days (calibrated LightGBM, logistic baseline) against the
  oracle of :mod:`workbench.models.oracle` on exactly the same rows;
* recovery of failed invoices within 7 / 14 / 30 days (the per-retry framing of
  :mod:`workbench.models.retry_schedule`; the direct LightGBM framing is trained beside it
  and reported as ``direct_*``) against the simulator's true probabilities on every failed
  attempt;
* the retention-offer uplift (the default decision-hazard learner ``d``; the previous
  default, the S-learner on a voluntary-churn risk, is reported as ``s_learner_voluntary_*``)
  against the true effects: Qini coefficient of the model's cross-fitted scores and of the
  true effects on the same experiment rows, and the expected Qini (true effects as
  outcomes, free of outcome noise); the goal needs both ratios >= 0.9.

Goals (from the issue): churn-90d and recovery AUC within 0.02 of the oracle's, ECE below
0.02, uplift Qini within 10% of the oracle's. The ECE goal is judged on outcomes where their
chance ECE's 95th percentile is below 0.02; elsewhere on the ECE against the true
probabilities, if the oracle passes its self-check on all of the company's rows
(``evaluation.oracle_self_check``: it must be the outcomes' own probability). Rows are recorded in
``benchmarks/results/model_quality.json`` (``ours_s`` is the training time; ``ratio`` is
model / oracle AUC or Qini). ``--accounts`` / ``--months`` simulate a larger company (more
test rows: a lower ECE sampling floor), recorded in ``model_quality_<accounts>x<months>.json``.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_model_quality.py [--small] [--data DIR] [--track]
        [--accounts N --months M]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import Result, record
from workbench.config import load_settings
from workbench.models import evaluation, oracle, training, uplift
from workbench.store import Warehouse

log = logging.getLogger("bench_model_quality")


def prepare(data: Path, *, accounts: int, months: int, seed: int):  # noqa: ANN201 - Settings
    """Simulate and ingest into ``data`` unless a warehouse and the truth are there already."""
    settings = load_settings(overrides={"data_dir": str(data)})
    if (
        Path(settings.warehouse_path).is_file()
        and (data / "truth" / "churn_hazard.parquet").is_file()
    ):
        log.info("reusing %s", data)
        return settings
    from workbench.ingest import ingest_landing
    from workbench.simulator import simulate

    t = time.perf_counter()
    simulate(accounts=accounts, months=months, seed=seed, out=data, progress=False)
    ingest_landing(settings, progress=False)
    log.info("simulated and ingested %d x %d in %.0f s", accounts, months, time.perf_counter() - t)
    return settings


def _oracle_premise(
    frame: pd.DataFrame, truth: pd.DataFrame, names: dict[str, str], *, group: str
) -> dict:
    """Per model (``names``: model -> label column, whose oracle is ``oracle_<label>``): is
    the oracle the outcomes' own probability on all of the company's rows (one per
    ``group``: an invoice's attempts, an account's months share their outcome)?"""
    return {
        name: evaluation.oracle_self_check(
            frame[label], truth[f"oracle_{label}"].to_numpy(), groups=frame[group]
        )
        for name, label in names.items()
    }


def _binary_rows(  # noqa: ANN001
    result,
    comparison,
    *,
    goals: set[str],
    company: str,
    premise: dict,
    comparison_all=None,
    direct=None,
) -> list[Result]:
    """One row per model: the comparison on its headline subset, metrics on all test rows."""
    rows = []
    comparison_all = comparison if comparison_all is None else comparison_all
    for run in result.runs.values():
        cmp = comparison[comparison["model"] == run.name].iloc[0]
        m = run.metrics
        gap = float(cmp["auc_gap"])
        # calibration is judged on all test rows (a first-failure subset of ~200 rows gives
        # a noisy, upward-biased ECE; the oracle's own ECE on it is shown beside)
        ece = m["test_ece"]
        goal_applies = run.name in goals
        extra = {
            "subset": cmp["subset"],
            "model_auc": round(float(cmp["model_auc"]), 4),
            "oracle_auc": round(float(cmp["oracle_auc"]), 4),
            "auc_gap": round(gap, 4),
            "subset_rows": int(cmp["rows"]),
            "subset_model_ece": round(float(cmp["model_ece"]), 4),
            "subset_oracle_ece": round(float(cmp["oracle_ece"]), 4),
            "subset_model_ece_vs_truth": round(float(cmp["model_ece_vs_truth"]), 4),
            "subset_model_brier": round(float(cmp["model_brier"]), 4),
            "subset_oracle_brier": round(float(cmp["oracle_brier"]), 4),
            "test_rows": int(m["test_rows"]),
            "test_positives": int(m["test_positives"]),
            "test_auc": round(m["test_roc_auc"], 4),
            "test_pr_auc": round(m["test_pr_auc"], 4),
            "test_brier": round(m["test_brier"], 4),
            "test_log_loss": round(m["test_log_loss"], 4),
            "test_ece": round(ece, 4),
            "test_ece_quantile": round(m["test_ece_quantile"], 4),
            "test_top_decile_lift": round(m["test_top_decile_lift"], 2),
            "uncalibrated_ece": round(m["uncalibrated_ece"], 4),
            "baseline_logistic_auc": round(m["baseline_roc_auc"], 4),
            "baseline_logistic_ece": round(m["baseline_ece"], 4),
            "test_period": f"{run.split.test_start.date()}..{run.split.test_end.date()}",
        }
        if "oracle_at_t_auc" in cmp and cmp["oracle_at_t_auc"] == cmp["oracle_at_t_auc"]:
            extra["oracle_at_t_auc"] = round(float(cmp["oracle_at_t_auc"]), 4)
        # how much of the gap is sampling noise, and what ECE the truth itself shows here
        for k in (
            "auc_gap_low",
            "auc_gap_high",
            "auc_gap_at_t",
            "auc_gap_at_t_low",
            "auc_gap_at_t_high",
            "ece_floor",
            "ece_floor_p95",
            "model_ece_vs_truth_low",
            "model_ece_vs_truth_high",
        ):
            if k in cmp and cmp[k] == cmp[k]:
                extra[k] = round(float(cmp[k]), 4)
        if direct is not None:  # the other framing on the same subset, for comparison
            d = direct[(direct["model"] == run.name) & (direct["subset"] == cmp["subset"])]
            if len(d):
                d = d.iloc[0]
                extra["direct_model_auc"] = round(float(d["model_auc"]), 4)
                extra["direct_auc_gap"] = round(float(d["auc_gap"]), 4)
                extra["direct_auc_gap_low"] = round(float(d["auc_gap_low"]), 4)
                extra["direct_auc_gap_high"] = round(float(d["auc_gap_high"]), 4)
                extra["direct_model_ece"] = round(float(d["model_ece"]), 4)
        framing = run.model.meta.get("framing")
        if framing:
            extra["framing"] = framing
            extra["valid_auc"] = round(float(run.model.meta.get("valid_auc_raw", float("nan"))), 4)
        # Can "ECE < 0.02" be told from chance on these rows? Where it cannot, the goal is
        # judged by the ECE against the true probabilities (same calibration error, no
        # outcome noise; see evaluation.calibration_error_vs_truth), provided the oracle is
        # the outcomes' own probability (checked on all the company's rows).
        check = premise[run.name]
        extra["oracle_self_check_rows"] = int(check["rows"])
        extra["oracle_self_check_mean_outcome"] = round(check["mean_outcome"], 4)
        extra["oracle_self_check_mean_oracle"] = round(check["mean_oracle"], 4)
        extra["oracle_self_check_mean_z"] = round(check["mean_z"], 2)
        extra["oracle_self_check_ece"] = round(check["oracle_ece"], 4)
        extra["oracle_self_check_ece_p95"] = round(check["ece_floor_p95"], 4)
        extra["oracle_is_outcomes_probability"] = bool(check["calibrated"])
        measurable = bool(extra.get("ece_floor_p95", 0.0) < 0.02)
        extra["ece_goal_measurable"] = measurable
        ece_judged, extra["ece_judged_by"] = ece, "outcomes"
        if not measurable and check["calibrated"]:
            ece_judged = float(cmp["model_ece_vs_truth"])
            extra["ece_judged_by"] = "true probabilities"
        other = comparison_all[
            (comparison_all["model"] == run.name) & (comparison_all["subset"] != cmp["subset"])
        ]
        for _, o in other.iterrows():
            tag = "first_failures" if "first" in o["subset"] else "other"
            extra[f"{tag}_model_auc"] = round(float(o["model_auc"]), 4)
            extra[f"{tag}_oracle_auc"] = round(float(o["oracle_auc"]), 4)
            extra[f"{tag}_rows"] = int(o["rows"])
        rows.append(
            Result(
                benchmark="model_quality",
                workload=f"{run.name}: AUC vs oracle on {cmp['subset']} ({company})",
                ours_s=round(run.train_seconds, 2),
                baseline="oracle (true probabilities)",
                ratio=float(cmp["model_auc"]) / float(cmp["oracle_auc"]),
                goal="AUC within 0.02 of the oracle, ECE < 0.02" if goal_applies else "(reported)",
                met=(gap <= 0.02 and ece_judged < 0.02) if goal_applies else None,
                extra=extra,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--small",
        action="store_true",
        help="600 accounts x 24 months, shorter splits; not recorded",
    )
    parser.add_argument("--data", type=Path, default=None, help="data folder (simulated if empty)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--track", action="store_true", help="also log and register the runs in MLflow"
    )
    parser.add_argument("--accounts", type=int, default=None, help="simulated accounts")
    parser.add_argument("--months", type=int, default=None, help="simulated months")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("workbench.features", "workbench.ingest", "workbench.simulator"):
        logging.getLogger(name).setLevel(logging.WARNING)
    accounts, months = (600, 24) if args.small else (3000, 36)
    accounts, months = args.accounts or accounts, args.months or months
    default_company = (accounts, months) == (3000, 36)
    test_m, valid_m = (4, 4) if args.small else (6, 6)
    base = load_settings()
    data = (
        args.data
        or Path(base.data_dir) / "bench" / f"model_quality_{accounts}x{months}_seed{args.seed}"
    )
    settings = prepare(data, accounts=accounts, months=months, seed=args.seed)
    truth = data / "truth"
    company = f"{accounts} accounts x {months} months, seed {args.seed}"
    track = dict(track=args.track, register=args.track, settings=settings)
    results: list[Result] = []
    summary: dict[str, object] = {}
    with Warehouse(settings).read(step="bench_model_quality") as con:
        t = time.perf_counter()
        churn_data = training.churn_dataset(con)
        log.info("churn dataset %s in %.0f s", churn_data.shape, time.perf_counter() - t)
        churn = training.train_churn(
            con, dataset=churn_data, test_months=test_m, valid_months=valid_m, **track
        )
        cmp = oracle.evaluate_against_oracle(
            churn, con=con, truth_dir=truth, settings=settings, log_to_mlflow=args.track
        )
        churn_truth = oracle.churn_oracle(
            con, churn_data[["account_id", "as_of"]], truth_dir=truth, horizons=(30, 90, 180)
        )
        churn_premise = _oracle_premise(
            churn_data,
            churn_truth,
            {r.name: r.target for r in churn.runs.values()},
            group="account_id",
        )
        results += _binary_rows(
            churn, cmp, goals={"churn_90d"}, company=company, premise=churn_premise
        )
        summary["churn"] = cmp.to_dict(orient="records")

        t = time.perf_counter()
        rec_data = training.recovery_dataset(con)
        log.info("recovery dataset %s in %.0f s", rec_data.shape, time.perf_counter() - t)
        direct = training.train_recovery(
            con, dataset=rec_data, test_months=test_m, valid_months=valid_m, track=False,
            register=False, framing="direct",
        )  # fmt: skip
        dcmp = oracle.evaluate_against_oracle(
            direct, con=con, truth_dir=truth, settings=settings, log_to_mlflow=False
        )
        rec = training.train_recovery(
            con, dataset=rec_data, test_months=test_m, valid_months=valid_m,
            framing="per_retry", **track,
        )  # fmt: skip
        rcmp = oracle.evaluate_against_oracle(
            rec, con=con, truth_dir=truth, settings=settings, log_to_mlflow=args.track
        )
        headline = rcmp[rcmp["subset"] == "test, all failed attempts"]
        rec_truth = oracle.recovery_oracle(
            rec_data[["invoice_id", "as_of"]], truth_dir=truth, horizons=(7, 14, 30)
        )
        results += _binary_rows(
            rec,
            headline,
            goals={"recovery_7d", "recovery_14d", "recovery_30d"},
            comparison_all=rcmp,
            company=company,
            direct=dcmp,
            premise=_oracle_premise(
                rec_data,
                rec_truth,
                {r.name: r.target for r in rec.runs.values()},
                group="invoice_id",
            ),
        )
        summary["recovery"] = rcmp.to_dict(orient="records")
        summary["recovery_direct"] = dcmp.to_dict(orient="records")

        exp = oracle.experiment_from_truth(truth)
        updata = uplift.uplift_dataset(con, exp)
        # the previous default beside it: the S-learner on a voluntary-churn risk model
        xl = uplift.train_uplift(
            con, exp, churn_frame=churn_data, dataset=updata, learner="s",
            risk_label="voluntary", track=False, register=False,
        )  # fmt: skip
        xcmp = oracle.evaluate_against_oracle(
            xl, con=con, truth_dir=truth, settings=settings, log_to_mlflow=False
        ).iloc[0]
        up = uplift.train_uplift(con, exp, churn_frame=churn_data, dataset=updata, **track)
        ucmp = oracle.evaluate_against_oracle(
            up, con=con, truth_dir=truth, settings=settings, log_to_mlflow=args.track
        ).iloc[0]
        ratio = float(ucmp["qini_ratio"])
        expected = float(ucmp["expected_qini_ratio"])
        extra = {
            k: (round(float(v), 5) if isinstance(v, float) else v)
            for k, v in ucmp.items()
            if k not in ("model", "subset")
        }
        extra |= {
            "learner": up.model.learner,
            "risk_label": up.card["risk_model"]["label"] if up.card.get("risk_model") else None,
            "s_learner_voluntary_qini_ratio": round(float(xcmp["qini_ratio"]), 4),
            "s_learner_voluntary_qini_ratio_low": round(float(xcmp["qini_ratio_low"]), 4),
            "s_learner_voluntary_qini_ratio_high": round(float(xcmp["qini_ratio_high"]), 4),
            "s_learner_voluntary_expected_qini_ratio": round(float(xcmp["expected_qini_ratio"]), 4),
        }
        results.append(
            Result(
                benchmark="model_quality",
                workload=f"retention_uplift: Qini vs oracle (cross-fitted, {company})",
                ours_s=round(up.train_seconds, 2),
                baseline="oracle (true effects)",
                ratio=ratio,
                # the realized Qini ratio's 95% interval spans several units on a few hundred
                # rows: the goal also needs the noise-free expected Qini ratio
                goal="Qini within 10% of the oracle's (realized and expected)",
                met=ratio >= 0.9 and expected >= 0.9,
                extra=extra,
            )
        )
        summary["uplift"] = ucmp.to_dict()
    for r in results:
        print(
            f"{r.workload}: ratio {r.ratio:.3f} met {r.met} | " + json.dumps(r.extra, default=str)
        )
    if not args.small:
        name = "model_quality" if default_company else f"model_quality_{accounts}x{months}"
        record(results, name=name)


if __name__ == "__main__":
    main()
