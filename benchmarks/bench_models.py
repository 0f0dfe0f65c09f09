"""Model training and explanation speed against the libraries called directly.

1. Training: our ``fit_binary_model`` (feature spec and design matrix from a tidy frame,
   LightGBM with early stopping on a validation part, isotonic calibration) against
   ``lightgbm.train`` on the same design matrix with the same parameters and early
   stopping. Goal: within 1.10x. They agree when both boosters have the same number of
   trees and the same raw predictions.
2. Explanations: our ``explain.contributions`` (exact TreeSHAP from per-leaf tables,
   :mod:`workbench.models.treeshap`; the tables are rebuilt in every timed call) against
   ``shap.TreeExplainer(booster).shap_values`` on the same rows (explainer set-up
   included; for LightGBM it calls ``pred_contrib``), for a 15-leaf model (as the churn
   models) and a 31-leaf one. Goal: at least 1.3x faster with identical values (max abs
   difference below 1e-9). Plain-words reasons for the same rows are timed too.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_models.py [--small]
"""

from __future__ import annotations

import argparse
import logging
import os

import lightgbm as lgb
import numpy as np
import pandas as pd

from benchmarks.common import Result, median_time, peak_rss_mib, record
from workbench.models import explain, training

PARAMS = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 10.0,
    "verbose": -1,
    "num_threads": 2,
    "deterministic": True,
    "force_col_wise": True,
    "seed": 0,
}
ROUNDS = 300
EARLY = 30


def make_frame(rows: int, *, numeric: int, categorical: int, seed: int) -> pd.DataFrame:
    """A tidy frame like a feature table: numeric columns (some missing) and string columns,
    with a logistic outcome ``y`` driven by a few of them."""
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {}
    for i in range(numeric):
        x = rng.normal(0, 1, rows)
        if i % 5 == 4:
            x[rng.uniform(0, 1, rows) < 0.1] = np.nan
        cols[f"x{i:02d}"] = x
    for j in range(categorical):
        cols[f"c{j}"] = rng.choice(
            np.array([f"level_{k}" for k in range(6 + 3 * j)], dtype=object), rows
        )
    frame = pd.DataFrame(cols)
    logit = (
        -2.0
        + 0.8 * cols["x00"]
        - 0.6 * cols["x01"]
        + 0.4 * np.nan_to_num(cols["x04"])
        + 0.3 * cols["x02"] * cols["x03"]
    )
    if categorical:
        logit = logit + 0.5 * (frame["c0"] == "level_1")
    frame["y"] = (rng.uniform(0, 1, rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return frame


def bench_training(rows: int, repeat: int) -> Result:
    frame = make_frame(rows + rows // 4, numeric=37, categorical=3, seed=0)
    train, valid = frame.iloc[:rows], frame.iloc[rows:]
    features = [c for c in frame.columns if c != "y"]
    spec = training.FeatureSpec.infer(train, features)
    X_train, X_valid = spec.matrix(train), spec.matrix(valid)

    def ours() -> training.BinaryModel:
        return training.fit_binary_model(
            train,
            valid,
            target="y",
            features=features,
            params=PARAMS,
            num_boost_round=ROUNDS,
            early_stopping_rounds=EARLY,
            seed=0,
        )

    params = {**training.DEFAULT_PARAMS, **PARAMS}  # exactly what fit_binary_model passes

    def direct() -> lgb.Booster:
        d_train = lgb.Dataset(X_train, label=train["y"].to_numpy(np.float64))
        d_valid = lgb.Dataset(X_valid, label=valid["y"].to_numpy(np.float64), reference=d_train)
        return lgb.train(
            params,
            d_train,
            num_boost_round=ROUNDS,
            valid_sets=[d_valid],
            callbacks=[lgb.early_stopping(EARLY, verbose=False)],
        )

    ours()  # warm-up (imports, thread pools)
    t_base, booster = median_time(direct, repeat=repeat)
    t_ours, model = median_time(ours, repeat=repeat)
    ours_raw = model.predict_raw(valid)
    base_raw = booster.predict(X_valid, num_iteration=booster.best_iteration)
    agree = bool(
        model.best_iteration == booster.best_iteration
        and np.allclose(ours_raw, base_raw, atol=1e-12)
    )
    ratio = t_ours / t_base
    return Result(
        benchmark="models",
        workload=f"train {rows:,} rows x 40 features (37 numeric, 3 categorical), early stopping",
        ours_s=t_ours,
        baseline="lightgbm.train on the same matrix",
        baseline_s=t_base,
        ratio=ratio,
        goal="<= 1.10x",
        met=ratio <= 1.10,
        agree=agree,
        extra={
            "trees": int(model.best_iteration),
            "valid_rows": len(valid),
            "ours_includes": "spec + matrix + early stopping + isotonic calibration",
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        },
    )


def bench_explanations(rows: int, repeat: int, *, num_leaves: int, reasons: bool) -> list[Result]:
    import shap

    frame = make_frame(200_000 + rows, numeric=40, categorical=0, seed=1)
    fit, explain_rows = frame.iloc[:200_000], frame.iloc[200_000:]
    features = [c for c in frame.columns if c != "y"]
    model = training.fit_binary_model(
        fit.iloc[:160_000],
        fit.iloc[160_000:],
        target="y",
        features=features,
        params={**PARAMS, "num_leaves": num_leaves},
        num_boost_round=ROUNDS,
        early_stopping_rounds=EARLY,
    )
    X = model.matrix(explain_rows)
    booster = model.booster

    def ours() -> pd.DataFrame:
        model.__dict__.pop("_treeshap", None)  # cold: the per-model tables are built every call
        return explain.contributions(model, explain_rows)

    def theirs() -> np.ndarray:
        values = shap.TreeExplainer(booster).shap_values(X)
        return values[1] if isinstance(values, list) else values

    ours()  # warm-up: numba compiles (or loads its on-disk cache) once per process
    t_base, base = median_time(theirs, repeat=repeat)
    t_ours, mine = median_time(ours, repeat=repeat)
    t_warm, _ = median_time(lambda: explain.contributions(model, explain_rows), repeat=repeat)
    diff = float(np.max(np.abs(mine.drop(columns="bias").to_numpy() - base)))
    ratio = t_base / t_ours  # speed-up
    out = [
        Result(
            benchmark="models",
            workload=(
                f"SHAP values for {rows:,} rows x 40 features "
                f"({int(model.best_iteration)} trees, {num_leaves} leaves)"
            ),
            ours_s=t_ours,
            baseline="shap.TreeExplainer(booster).shap_values",
            baseline_s=t_base,
            ratio=ratio,
            goal=">= 1.3x faster (ratio = baseline / ours), identical values",
            met=ratio >= 1.3 and diff < 1e-9,
            agree=diff < 1e-9,
            extra={
                "max_abs_diff": diff,
                "ours_includes": "building the per-leaf tables (cold)",
                "ours_warm_s": round(t_warm, 3),
                "shap_version": shap.__version__,
                "load_avg_1m": round(os.getloadavg()[0], 2),
            },
        )
    ]
    if reasons:
        t_reasons, _ = median_time(
            lambda: explain.top_reasons(explain_rows, mine, k=3), repeat=repeat
        )
        out.append(
            Result(
                benchmark="models",
                workload=f"top-3 plain-words reasons for {rows:,} rows (from the SHAP values)",
                ours_s=t_reasons,
                goal="(informational)",
                extra={"rows_per_s": round(rows / t_reasons)},
            )
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--small", action="store_true", help="30k training rows, 5k explained rows, 1 repeat"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    train_rows, explain_rows, repeat = (30_000, 5_000, 1) if args.small else (300_000, 50_000, 3)
    results = [
        bench_training(train_rows, repeat),
        *bench_explanations(explain_rows, repeat, num_leaves=15, reasons=False),
        *bench_explanations(explain_rows, repeat, num_leaves=31, reasons=True),
    ]
    for r in results:
        print(
            f"{r.workload}: ours {r.ours_s:.3f}s"
            + (
                f", {r.baseline} {r.baseline_s:.3f}s, ratio {r.ratio:.3f}, "
                f"met {r.met}, agree {r.agree}"
                if r.baseline
                else ""
            )
        )
    if not args.small:
        record(results, name="models")


if __name__ == "__main__":
    main()
