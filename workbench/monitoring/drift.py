"""Column drift between a reference and a current frame: Evidently, or a fast path.

:func:`drift_report` compares each column of ``current`` with the same column of
``reference`` and says which drifted. Two engines give the same answer:

* ``method="evidently"`` runs Evidently's ``DataDriftPreset`` (the adapter for
  Evidently 0.7 lives here and nowhere else), saves its HTML and JSON, and parses
  its per-column results.
* ``method="fast"`` is our own numpy/scipy path. It picks the test for each
  column exactly as Evidently's default does
  (``evidently.legacy.calculations.stattests.registry._get_default_stattest``),
  with the same thresholds, on the reference/current values with nulls and
  infinities dropped:

  ==================  =====================  ==================================  ===========
  reference rows      column                 test (``stat_test``)                drifted if
  ==================  =====================  ==================================  ===========
  ≤ 1000              numeric, > 5 values    two-sample Kolmogorov-Smirnov       p ≤ 0.05
  ≤ 1000              any, 3-5 values / cat  chi-square (``chisquare``)          p < 0.05
  ≤ 1000              any, ≤ 2 values        two-proportion Z-test (``z``)        p < 0.05
  > 1000              numeric, > 5 values    Wasserstein distance / std(ref)     ≥ 0.1
  > 1000              categorical or ≤ 5     Jensen-Shannon distance             ≥ 0.1
  ==================  =====================  ==================================  ===========

  ("values" counts distinct non-null values over both frames.) It skips Evidently's
  histograms, plots and HTML, so it is much faster and lighter on large frames.

``method="auto"`` uses Evidently below :data:`AUTO_MAX_CELLS` cells
(``(reference rows + current rows) × columns``) and the fast path above.

For prediction drift, include the score column in both frames. A column that is
entirely missing in either frame cannot be tested: it is reported with
``stat_test="not_tested"``, ``drifted=False`` and a ``note``, and left out of
``share_drifted``.
"""

from __future__ import annotations

import html
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

log = logging.getLogger(__name__)

AUTO_MAX_CELLS = 2_000_000
"""``method="auto"`` runs Evidently below this many cells, the fast path at or above it."""
SMALL_SAMPLE_ROWS = 1000
"""Evidently switches from p-value tests to distances above this many reference rows."""
P_VALUE_THRESHOLD = 0.05
DISTANCE_THRESHOLD = 0.1
INTEGER_CATEGORICAL_LIMIT = 10
"""Integer columns with at most this many distinct values are categorical (as in Evidently)."""
COLUMNS = ["column", "kind", "stat_test", "score", "threshold", "drifted", "note"]

# Evidently's display names of its default tests -> their registry names.
_EVIDENTLY_TESTS = {
    "K-S p_value": "ks",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
    "Wasserstein distance (normed)": "wasserstein",
    "Jensen-Shannon distance": "jensenshannon",
}


@dataclass
class DriftResult:
    """Outcome of :func:`drift_report`.

    Attributes:
        columns: One row per column: ``column``, ``kind`` ("num"/"cat"), ``stat_test``
            (Evidently's test name: ks, chisquare, z, wasserstein, jensenshannon, or
            not_tested), ``score`` (p-value for ks/chisquare/z, distance otherwise),
            ``threshold``, ``drifted`` (bool) and ``note`` (why a column was not tested).
        share_drifted: Drifted columns / tested columns.
        dataset_drift: ``share_drifted >= share_threshold``.
        method: "evidently" or "fast" (the engine that actually ran).
        html_path: The HTML report, when ``out_dir`` was given.
        json_path: The JSON report, when ``out_dir`` was given.
        seconds: Wall time of the comparison including writing the files.
        share_threshold: The share of drifted columns that means dataset drift.
        n_reference: Reference rows compared (after sampling).
        n_current: Current rows compared (after sampling).
    """

    columns: pd.DataFrame
    share_drifted: float
    dataset_drift: bool
    method: str
    html_path: Path | None = None
    json_path: Path | None = None
    seconds: float = 0.0
    share_threshold: float = 0.5
    n_reference: int = 0
    n_current: int = 0

    @property
    def drifted_columns(self) -> list[str]:
        """Names of the columns flagged as drifted."""
        return self.columns.loc[self.columns["drifted"], "column"].tolist()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: the scalar fields and ``columns`` as a list of records."""
        records = self.columns.astype(object).where(self.columns.notna(), None)
        return {
            "method": self.method,
            "share_drifted": float(self.share_drifted),
            "dataset_drift": bool(self.dataset_drift),
            "share_threshold": float(self.share_threshold),
            "n_reference": int(self.n_reference),
            "n_current": int(self.n_current),
            "seconds": float(self.seconds),
            "html_path": str(self.html_path) if self.html_path else None,
            "json_path": str(self.json_path) if self.json_path else None,
            "columns": [
                {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
                for row in records.to_dict(orient="records")
            ],
        }


@dataclass
class _Prepared:
    reference: pd.DataFrame
    current: pd.DataFrame
    kinds: dict[str, str]
    untested: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tested(self) -> list[str]:
        return list(self.kinds)


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    columns: list[str] | None = None,
    categorical: list[str] | None = None,
    method: str = "auto",
    share_threshold: float = 0.5,
    out_dir: Path | None = None,
    name: str = "drift",
    sample: int | None = None,
    seed: int = 0,
) -> DriftResult:
    """Compare each column of ``current`` with ``reference`` and flag the drifted ones.

    Args:
        reference: The frame the model was trained or last validated on.
        current: The recent frame to check (e.g. this month's features and scores).
        columns: Columns to compare; default: every column in both frames except
            datetimes and id-like text (named ``id``/``*_id``, or more distinct strings
            than half the rows).
        categorical: Columns to treat as categorical; others are inferred as Evidently
            does (bool, string, object, category and integers with ≤ 10 values are
            categorical, other numbers numeric).
        method: "evidently", "fast" or "auto" (Evidently below :data:`AUTO_MAX_CELLS`).
        share_threshold: Share of drifted columns at which the dataset has drifted.
        out_dir: Where to write ``<name>.html`` and ``<name>.json``; nothing is written
            when None.
        name: File stem of the reports.
        sample: Compare at most this many rows of each frame (a seeded random sample).
        seed: Seed of the sample.

    Returns:
        The per-column results and the dataset verdict.

    Raises:
        ValueError: Empty frames, unknown method, missing columns or no testable column.
    """
    if method not in ("auto", "evidently", "fast"):
        raise ValueError(f"method must be 'auto', 'evidently' or 'fast', not {method!r}")
    if not 0 < share_threshold <= 1:
        raise ValueError(f"share_threshold must be in (0, 1], not {share_threshold}")
    start = time.perf_counter()
    prep = _prepare(reference, current, columns=columns, categorical=categorical)
    if sample is not None:
        prep.reference = _sample(prep.reference, sample, seed)
        prep.current = _sample(prep.current, sample, seed + 1)
    engine = _choose_engine(method, prep)
    html_path = json_path = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        html_path, json_path = out_dir / f"{name}.html", out_dir / f"{name}.json"
    if engine == "evidently":
        rows = _evidently_rows(prep, html_path=html_path, json_path=json_path)
    else:
        rows = _fast_rows(prep)
    frame = _result_frame(rows, prep)
    tested = frame[frame["stat_test"] != "not_tested"]
    share = float(tested["drifted"].mean())
    result = DriftResult(
        columns=frame,
        share_drifted=share,
        dataset_drift=share >= share_threshold,
        method=engine,
        html_path=html_path,
        json_path=json_path,
        share_threshold=share_threshold,
        n_reference=len(prep.reference),
        n_current=len(prep.current),
    )
    if engine == "fast" and out_dir is not None:
        _write_fast_files(result, name=name)
    result.seconds = time.perf_counter() - start
    log.info(
        "drift (%s): %d/%d columns drifted in %.2fs",
        engine,
        int(tested["drifted"].sum()),
        len(tested),
        result.seconds,
    )
    return result


# --- inputs -------------------------------------------------------------------------------


def _prepare(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    columns: list[str] | None,
    categorical: list[str] | None,
) -> _Prepared:
    """Check the frames, pick and type the columns, set aside the untestable ones."""
    for label, frame in (("reference", reference), ("current", current)):
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"{label} must be a pandas DataFrame, not {type(frame).__name__}")
        if frame.empty:
            raise ValueError(
                f"the {label} frame has no rows; pass at least one row in each frame "
                "(e.g. widen the reference window or wait for current data)"
            )
    categorical = list(categorical or [])
    if columns is None:
        columns = _default_columns(reference, current, categorical)
    else:
        columns = list(dict.fromkeys(columns))
        for label, frame in (("reference", reference), ("current", current)):
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise ValueError(
                    f"columns {missing} are not in the {label} frame; it has "
                    f"{list(frame.columns)[:20]}{'...' if frame.shape[1] > 20 else ''}"
                )
    unknown = [c for c in categorical if c not in columns]
    if unknown:
        raise ValueError(f"categorical columns {unknown} are not among the compared columns")
    if not columns:
        raise ValueError("no columns to compare; pass columns=[...] with names in both frames")
    kinds: dict[str, str] = {}
    untested: list[dict[str, Any]] = []
    ref_out: dict[str, pd.Series] = {}
    cur_out: dict[str, pd.Series] = {}
    for col in columns:
        kind = "cat" if col in categorical else _infer_kind(reference[col], current[col], col)
        ref, cur = _normalise(reference[col], kind), _normalise(current[col], kind)
        note = _untestable(ref, cur)
        if note:
            untested.append({"column": col, "kind": kind, "note": note})
            log.warning("drift: column %r not tested: %s", col, note)
            continue
        kinds[col] = kind
        ref_out[col], cur_out[col] = ref, cur
    if not kinds:
        raise ValueError(
            "no column can be tested: every selected column is entirely missing in the "
            f"reference or current frame ({[u['column'] for u in untested]})"
        )
    return _Prepared(
        reference=pd.DataFrame(ref_out, index=reference.index),
        current=pd.DataFrame(cur_out, index=current.index),
        kinds=kinds,
        untested=untested,
    )


def _default_columns(
    reference: pd.DataFrame, current: pd.DataFrame, categorical: list[str]
) -> list[str]:
    """Columns in both frames, without datetimes and id-like text."""
    shared = [c for c in reference.columns if c in set(current.columns)]
    only = sorted(set(reference.columns).symmetric_difference(current.columns), key=str)
    if only:
        log.warning("drift: columns in only one frame are skipped: %s", only)
    keep = []
    for col in shared:
        series = reference[col]
        if col not in categorical and (
            pd.api.types.is_datetime64_any_dtype(series)
            or pd.api.types.is_timedelta64_dtype(series)
        ):
            continue
        if col not in categorical and _is_text(series) and _id_like(col, series):
            log.info("drift: skipping id-like column %r (pass columns=[...] to include it)", col)
            continue
        keep.append(col)
    return keep


def _id_like(col: object, series: pd.Series) -> bool:
    """Identifier or free text: named ``id``/``*_id``, or more distinct values than half the rows."""
    name = str(col).lower()
    if name == "id" or name.endswith("_id"):
        return True
    return series.count() > 20 and series.nunique() > 0.5 * series.count()


def _is_text(series: pd.Series) -> bool:
    return pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)


def _infer_kind(reference: pd.Series, current: pd.Series, col: str) -> str:
    """ "num" or "cat" by dtype, as Evidently infers it."""
    dtype = reference.dtype
    if pd.api.types.is_bool_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
        return "cat"
    if pd.api.types.is_integer_dtype(dtype):
        return "cat" if reference.nunique() <= INTEGER_CATEGORICAL_LIMIT else "num"
    if pd.api.types.is_numeric_dtype(dtype):
        return "num"
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        raise ValueError(
            f"column {col!r} holds datetimes; drift is tested on numbers and categories, "
            "so convert it first (e.g. to days since an anchor) or drop it from columns"
        )
    if _is_text(reference) and pd.api.types.is_numeric_dtype(current.dtype):
        return "num" if reference.isna().all() else "cat"
    return "cat"


def _normalise(series: pd.Series, kind: str) -> pd.Series:
    """Numbers as float64 with NaN for missing/infinite; categories as objects with None."""
    if kind == "num":
        values = pd.to_numeric(series, errors="coerce").astype("float64")
        return values.replace([np.inf, -np.inf], np.nan)
    if pd.api.types.is_object_dtype(series.dtype):
        return series
    out = series.astype(object)
    return out.where(series.notna(), None)


def _untestable(reference: pd.Series, current: pd.Series) -> str:
    """Why a column cannot be tested, or "" when it can."""
    if reference.notna().sum() == 0:
        return "all values missing in the reference frame"
    if current.notna().sum() == 0:
        return "all values missing in the current frame"
    return ""


def _sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if n <= 0:
        raise ValueError(f"sample must be a positive number of rows, not {n}")
    return frame if len(frame) <= n else frame.sample(n=n, random_state=seed)


def _choose_engine(method: str, prep: _Prepared) -> str:
    if method != "auto":
        return method
    cells = (len(prep.reference) + len(prep.current)) * len(prep.kinds)
    if cells >= AUTO_MAX_CELLS:
        return "fast"
    try:
        import evidently  # noqa: F401
    except ImportError:
        log.warning("evidently is not installed; using the fast drift path")
        return "fast"
    return "evidently"


def _result_frame(rows: list[dict[str, Any]], prep: _Prepared) -> pd.DataFrame:
    skipped = [
        {**u, "stat_test": "not_tested", "score": np.nan, "threshold": np.nan, "drifted": False}
        for u in prep.untested
    ]
    frame = pd.DataFrame(rows + skipped)
    frame["note"] = frame.get("note", pd.Series(index=frame.index, dtype=object)).fillna("")
    frame["drifted"] = frame["drifted"].astype(bool)
    frame["score"] = frame["score"].astype(float)
    frame["threshold"] = frame["threshold"].astype(float)
    return frame[COLUMNS].reset_index(drop=True)


# --- fast path ----------------------------------------------------------------------------


def _fast_rows(prep: _Prepared) -> list[dict[str, Any]]:
    """Evidently's default test for each column, computed with numpy/scipy."""
    rows = []
    for col, kind in prep.kinds.items():
        test, score, threshold, drifted = column_drift(
            prep.reference[col], prep.current[col], kind=kind
        )
        rows.append(
            {
                "column": col,
                "kind": kind,
                "stat_test": test,
                "score": score,
                "threshold": threshold,
                "drifted": drifted,
                "note": "",
            }
        )
    return rows


def column_drift(
    reference: pd.Series | np.ndarray, current: pd.Series | np.ndarray, *, kind: str
) -> tuple[str, float, float, bool]:
    """Evidently's default drift test for one column; nulls (and infinities) are dropped.

    Args:
        reference: Reference values.
        current: Current values.
        kind: "num" or "cat".

    Returns:
        ``(stat_test, score, threshold, drifted)``.

    Raises:
        ValueError: When either side has no value left.
    """
    if kind == "num":
        ref = np.asarray(reference, dtype="float64")
        cur = np.asarray(current, dtype="float64")
        ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
        _check_not_empty(len(ref), len(cur))
        return _numeric_drift(ref, cur)
    if kind != "cat":
        raise ValueError(f"kind must be 'num' or 'cat', not {kind!r}")
    both = pd.concat([pd.Series(reference), pd.Series(current)], ignore_index=True)
    codes, uniques = pd.factorize(both)
    ref_codes, cur_codes = codes[: len(reference)], codes[len(reference) :]
    ref_codes, cur_codes = ref_codes[ref_codes >= 0], cur_codes[cur_codes >= 0]
    _check_not_empty(len(ref_codes), len(cur_codes))
    return _count_drift(ref_codes, cur_codes, len(uniques))


def _check_not_empty(n_ref: int, n_cur: int) -> None:
    if n_ref == 0 or n_cur == 0:
        side = "reference" if n_ref == 0 else "current"
        raise ValueError(f"no non-missing value in the {side} data; this column cannot be tested")


def _numeric_drift(ref: np.ndarray, cur: np.ndarray) -> tuple[str, float, float, bool]:
    """KS / Wasserstein on > 5 distinct values, else the count tests; one sort of both sides."""
    n_ref, n_cur = len(ref), len(cur)
    values = np.concatenate([ref, cur])
    order = np.argsort(values)
    ordered = values[order]
    step = np.diff(ordered)
    first = np.concatenate([[True], step != 0])
    n_values = int(first.sum())
    if n_values <= 5:
        codes = np.empty(len(values), dtype=np.int64)
        codes[order] = np.cumsum(first) - 1
        return _count_drift(codes[:n_ref], codes[n_ref:], n_values)
    if n_ref <= SMALL_SAMPLE_ROWS:
        p = float(stats.ks_2samp(ref, cur)[1])
        return "ks", p, P_VALUE_THRESHOLD, p <= P_VALUE_THRESHOLD
    # Wasserstein-1 = integral of |F_ref - F_cur|: both empirical CDFs from one sort.
    from_ref = order < n_ref
    ref_cdf = np.cumsum(from_ref)[:-1] / n_ref
    cur_cdf = np.cumsum(~from_ref)[:-1] / n_cur
    distance_1 = float(np.dot(np.abs(ref_cdf - cur_cdf), step))
    d = distance_1 / max(float(np.std(ref)), 0.001)
    return "wasserstein", d, DISTANCE_THRESHOLD, d >= DISTANCE_THRESHOLD


def _count_drift(
    ref_codes: np.ndarray, cur_codes: np.ndarray, n_values: int
) -> tuple[str, float, float, bool]:
    """Chi-square / Z-test (≤ 1000 reference rows) or Jensen-Shannon on value counts."""
    ref_counts = np.bincount(ref_codes, minlength=n_values).astype(float)
    cur_counts = np.bincount(cur_codes, minlength=n_values).astype(float)
    seen = (ref_counts + cur_counts) > 0
    ref_counts, cur_counts = ref_counts[seen], cur_counts[seen]
    if len(ref_codes) <= SMALL_SAMPLE_ROWS:
        if len(ref_counts) > 2:
            p = _chi_square_p(ref_counts, cur_counts)
            return "chisquare", p, P_VALUE_THRESHOLD, p < P_VALUE_THRESHOLD
        p = _z_test_p(ref_counts, cur_counts)
        return "z", p, P_VALUE_THRESHOLD, p < P_VALUE_THRESHOLD
    d = float(distance.jensenshannon(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()))
    return "jensenshannon", d, DISTANCE_THRESHOLD, d >= DISTANCE_THRESHOLD


def _chi_square_p(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Chi-square goodness of fit of current counts to reference shares (Evidently's form)."""
    expected = ref_counts * (cur_counts.sum() / ref_counts.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = (cur_counts - expected) ** 2 / expected
    terms = np.where((cur_counts == expected), 0.0, terms)
    statistic = float(terms.sum())
    return float(stats.chi2.sf(statistic, len(ref_counts) - 1))


def _z_test_p(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Two-sided two-proportion Z-test p-value (1.0 when both frames hold one same value)."""
    if len(ref_counts) == 1:
        return 1.0
    n1, n2 = ref_counts.sum(), cur_counts.sum()
    p1, p2 = ref_counts[1] / n1, cur_counts[1] / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return float(2 * (1 - stats.norm.cdf(abs(z))))


def _write_fast_files(result: DriftResult, *, name: str) -> None:
    """The fast path's JSON (``to_dict``) and a small HTML table."""
    assert result.json_path is not None and result.html_path is not None
    result.json_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    table = result.columns.copy()
    table["score"] = table["score"].map(lambda v: f"{v:.4g}")
    style = (
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{padding:4px 8px;border:1px solid #ccc}tr.drift{background:#fde0dc}</style>"
    )
    header = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join(
        f"<tr class={'drift' if row.drifted else 'ok'}>"
        + "".join(f"<td>{html.escape(str(v))}</td>" for v in row)
        + "</tr>"
        for row in table.itertuples(index=False)
    )
    verdict = "drift detected" if result.dataset_drift else "no dataset drift"
    result.html_path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}</title>"
        f"{style}</head><body><h1>Drift report: {html.escape(name)}</h1>"
        f"<p>{verdict}: {result.share_drifted:.0%} of tested columns drifted "
        f"(threshold {result.share_threshold:.0%}); {result.n_reference:,} reference vs "
        f"{result.n_current:,} current rows; fast path (Evidently's default tests).</p>"
        f"<table><tr>{header}</tr>{body}</table></body></html>\n"
    )


# --- Evidently adapter ----------------------------------------------------------------------


def _evidently_rows(
    prep: _Prepared, *, html_path: Path | None, json_path: Path | None
) -> list[dict[str, Any]]:
    """Run Evidently's ``DataDriftPreset``, save its files, parse its per-column results."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(
        numerical_columns=[c for c, k in prep.kinds.items() if k == "num"],
        categorical_columns=[c for c, k in prep.kinds.items() if k == "cat"],
    )
    report = Report([DataDriftPreset(columns=prep.tested)], include_tests=True)
    with warnings.catch_warnings():
        # Evidently 0.7 trips pandas' downcasting FutureWarning once per column, and
        # scipy's chisquare warns on categories missing from the reference (p = 0 then).
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(
            current_data=Dataset.from_pandas(prep.current, data_definition=definition),
            reference_data=Dataset.from_pandas(prep.reference, data_definition=definition),
        )
        if html_path is not None:
            snapshot.save_html(str(html_path))
        if json_path is not None:
            snapshot.save_json(str(json_path))
    return parse_evidently(snapshot.dict(), prep.kinds)


def parse_evidently(snapshot: dict[str, Any], kinds: dict[str, str]) -> list[dict[str, Any]]:
    """Per-column rows from an Evidently 0.7 snapshot dict (``Snapshot.dict()``).

    Each ``ValueDrift`` metric gives the column, test, threshold and score; its test
    (present when the report ran with ``include_tests=True``) says whether it drifted.

    Args:
        snapshot: ``Snapshot.dict()`` of a report with ``DataDriftPreset``.
        kinds: Column -> "num"/"cat".

    Returns:
        One dict per column with the :data:`COLUMNS` keys.
    """
    status = {
        t["metric_config"]["metric_id"]: t["status"]
        for t in snapshot.get("tests", [])
        if t.get("id") == "drift"
    }
    rows = []
    for metric in snapshot["metrics"]:
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith("ValueDrift"):
            continue
        col = config["column"]
        test = _EVIDENTLY_TESTS.get(config.get("method"), str(config.get("method")))
        if metric["id"] not in status:
            raise RuntimeError(
                f"Evidently returned no drift test for column {col!r}; run the report with "
                "include_tests=True (Evidently's API may have changed: check its version)"
            )
        rows.append(
            {
                "column": col,
                "kind": kinds.get(col, ""),
                "stat_test": test,
                "score": float(metric["value"]),
                "threshold": float(config["threshold"]),
                "drifted": status[metric["id"]] == "FAIL",
                "note": "",
            }
        )
    return rows
