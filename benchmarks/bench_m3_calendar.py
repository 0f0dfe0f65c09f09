"""Check: how much does calendar overlap between M3 series flatter the global model?

M3's splits are per series (the last 18 months of each), and the series end in different
calendar months. The global model (``workbench.forecast_global``), trained on every
series' training part, therefore also learns from other series' months that lie after a
series' own forecast origin on the calendar: months that may share the shocks of the
hold-out. The statistical models fit each series alone and are not affected.

This check retrains the global model *calendar-strict* for the series whose training part
ends in 1985-1993 (972 of the 1,428; most of the others are undated or early and share few
months): the series are grouped by the calendar half-year in which their training part
ends, and each group's model learns from the group's own series (up to their own ends)
and every other series cut at the start of that half-year. The hold-out scores of
``M3_GLOBAL``'s configuration (the benchmark's choice: since session 15 0.4 x the global
model + 0.6 x the median of four statistical models) are reported with the per-series global model and with
the strict one, one LightGBM seed for both. Information only: the reported configuration
is not re-chosen by it.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_m3_calendar.py     # ~45 CPU minutes (BaggedETS: 20 AutoETS fits a series)
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_m3 import SEASON, H, load_m3, score  # noqa: E402
from benchmarks.common import Result, record  # noqa: E402
from workbench.forecast import M3_GLOBAL, combine, make_model  # noqa: E402
from workbench.forecast_global import GLOBAL_MODEL, GlobalLightGBM, blend  # noqa: E402

logger = logging.getLogger("bench_m3_calendar")
YEARS = (1985, 1993)


def strict_global(train: pd.DataFrame, ends: pd.Series) -> pd.DataFrame:
    """The global model's hold-out forecasts for the series in ``ends`` (their last
    training month), each from a model that saw no other series after the start of the
    calendar half-year in which the series' training part ends."""
    half = ends.dt.year * 2 + (ends.dt.month > 6).astype(int)
    parts = []
    for key, ids in half.groupby(half):
        start = pd.Timestamp(year=key // 2, month=1 if key % 2 == 0 else 7, day=1)
        own = set(ids.index)
        history = train[train["unique_id"].isin(own) | (train["ds"] < start)]
        sizes = history.groupby("unique_id").size()
        history = history[history["unique_id"].isin(sizes[sizes >= 13].index)]
        t = time.perf_counter()
        fc = GlobalLightGBM(h=H, n_seeds=1).fit(history).predict()
        parts.append(fc[fc["unique_id"].isin(own)])
        logger.info(
            "half-year %s: %d series, %.0f s", start.date(), len(own), time.perf_counter() - t
        )
    return pd.concat(parts, ignore_index=True)


def ours(frame: pd.DataFrame, global_col: str, members: list[str]) -> pd.Series:
    """``M3_GLOBAL``'s combination of the statistical ``members`` and the global model's
    column ``global_col``: a blend or an ensemble of all, as the preset says."""
    if M3_GLOBAL["ensemble"] == "blend":
        out = blend(frame, global_col=global_col, members=members,
                    how=M3_GLOBAL["blend_base"], weight=M3_GLOBAL["blend_weight"])  # fmt: skip
        return out["Ensemble"]
    cols = [*members, global_col]
    return combine(frame[cols], members=cols, how=M3_GLOBAL["ensemble"])["Ensemble"]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train, test = load_m3()
    members = [m for m in M3_GLOBAL["ensemble_members"] if m != GLOBAL_MODEL]
    from statsforecast import StatsForecast

    sf = StatsForecast(
        models=[make_model(m, season_length=SEASON) for m in members], freq="MS", n_jobs=2
    )
    stat = sf.forecast(df=train, h=H)
    per_series = GlobalLightGBM(h=H, n_seeds=1).fit(train).predict()
    ends = train.groupby("unique_id")["ds"].max()
    ends = ends[ends.dt.year.between(*YEARS)]
    strict = strict_global(train, ends)
    frame = (
        test.merge(stat, on=["unique_id", "ds"])
        .merge(
            per_series.rename(columns={GLOBAL_MODEL: "global_per_series"}), on=["unique_id", "ds"]
        )
        .merge(
            strict.rename(columns={GLOBAL_MODEL: "global_strict"}),
            on=["unique_id", "ds"],
            how="left",
        )
    )
    assert frame["global_strict"].notna().sum() == len(ends) * H
    frame["global_strict"] = frame["global_strict"].fillna(frame["global_per_series"])
    for name, col in (("ours_per_series", "global_per_series"), ("ours_strict", "global_strict")):
        frame[name] = ours(frame, col, members)
    cols = ["ours_per_series", "ours_strict", "global_per_series", "global_strict"]
    rows = []
    for label, part in (
        ("all 1,428 series", frame),
        (
            f"the {len(ends)} series ending {YEARS[0]}-{YEARS[1]}",
            frame[frame["unique_id"].isin(ends.index)],
        ),
    ):
        sc = score(part, train=train, models=cols)
        logger.info("%s:\n%s", label, sc.round(4).to_string())
        rows.append(
            Result(
                benchmark="m3_calendar",
                workload=f"M3 monthly hold-out, {label}: M3_GLOBAL with the global model "
                "trained per series vs calendar-strict (1 seed)",
                ours_s=None,
                goal="information (not a selection)",
                extra={  # formatted here: the report rounds numbers to 3 digits
                    f"{c} (sMAPE / MASE)": f"{sc.loc[c, 'smape']:.3f} / {sc.loc[c, 'mase']:.4f}"
                    for c in cols
                },
            )
        )
    record(rows, name="m3_calendar")


if __name__ == "__main__":
    main()
