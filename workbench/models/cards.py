"""Model cards: one markdown page per registered model version.

:func:`render_card` is a pure function of the card data that training logs with every
run (``report/card.json``) plus the registry facts that
:func:`workbench.models.registry.card_data` adds (version, aliases, promotion tags).
Sections: intended use, whether it scores people's ability to pay (EU AI Act), training
window and data, features, metrics overall and by cohort, comparison with the oracle
when known, calibration, limitations, and the registry trail.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_METRIC_COLS = (
    "rows",
    "positives",
    "roc_auc",
    "pr_auc",
    "brier",
    "log_loss",
    "ece",
    "top_decile_lift",
)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if v == int(v) and abs(v) >= 10:
            return f"{int(v):,}"
        return f"{v:.{digits}f}"
    return str(v).replace("|", "\\|")


def _table(rows: Sequence[Mapping[str, Any]], cols: Iterable[str]) -> list[str]:
    cols = [c for c in cols if any(c in r for r in rows)]
    if not rows or not cols:
        return ["(none)"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return out


def render_card(data: Mapping[str, Any]) -> str:
    """The card as markdown.

    Args:
        data: Card data (see :func:`workbench.models.training._train_one` and
            :func:`workbench.models.uplift.train_uplift`), optionally with ``registry``
            (``version``, ``aliases``, ``run_id``, ``created``, ``tags``) and ``oracle``.
    """
    reg = data.get("registry", {})
    tags = reg.get("tags", {})
    title = f"# Model card: {data['name']}"
    if reg.get("version"):
        title += f" v{reg['version']}"
    lines = [title, ""]
    facts = [
        ("Task", data.get("task")),
        ("Target", f"{data.get('target')} (within {data.get('horizon_days')} days)"),
        ("Aliases", ", ".join(reg.get("aliases", [])) or "none"),
        ("Feature set", data.get("feature_set_version")),
        ("MLflow run", reg.get("run_id")),
        ("Registered", reg.get("created")),
    ]
    if tags.get("promoted_by"):
        facts.append(
            (
                "Promoted to champion",
                f"by {tags['promoted_by']} at {tags.get('promoted_at')} "
                f"via {tags.get('promoted_via')}",
            )
        )
    lines += [f"- **{k}**: {_fmt(v)}" for k, v in facts if v is not None]
    lines += ["", "## Intended use", "", data.get("intended_use", ""), ""]
    lines += [
        "## Does it score people's ability to pay? (EU AI Act)",
        "",
        f"**{'Yes' if data.get('assesses_ability_to_pay') else 'No'}.** {data.get('ability_to_pay', '')}",
        "",
    ]

    split = data.get("split", {})
    lines += ["## Training window and data", ""]
    if "train_start" in split:
        lines += [
            f"- Training: `as_of` in [{split['train_start']}, {split['train_end']})",
            f"- Validation (early stopping and calibration): [{split['valid_start']}, {split['valid_end']})",
            f"- Test: [{split['test_start']}, {split['test_end']})",
            f"- Embargo: {'yes: fitted rows have their label window closed before the next period starts' if split.get('embargo') in (True, 'True') else 'no'}",
        ]
    else:
        lines += [f"- {k.replace('_', ' ').capitalize()}: {v}" for k, v in split.items()]
    rows, pos = data.get("rows", {}), data.get("positives", {})
    lines += [
        "- Rows: "
        + ", ".join(
            f"{k} {_fmt(v)}" + (f" ({_fmt(pos.get(k))} positive)" if k in pos else "")
            for k, v in rows.items()
        ),
        "",
    ]

    feats = data.get("features", [])
    lines += [
        f"## Features ({len(feats)})",
        "",
        f"Feature-set version `{data.get('feature_set_version')}`.",
        "",
    ]
    imp = {r["feature"]: r for r in data.get("importance", [])}
    if imp:
        lines += ["Most important (mean |SHAP| on test rows):", ""]
        lines += _table(
            [
                {"feature": f, "share": r.get("share"), "mean_abs_shap": r.get("mean_abs_shap")}
                for f, r in imp.items()
            ],
            ["feature", "mean_abs_shap", "share"],
        )
        lines.append("")
    lines += ["<details><summary>All features</summary>", ""]
    lines += [f"- `{f['name']}`: {f['description']}" for f in feats]
    lines += ["", "</details>", ""]

    lines += ["## Metrics", ""]
    metrics = data.get("metrics", [])
    if data.get("task") == "uplift":
        lines += _table(
            metrics,
            [
                "rows",
                "treated",
                "churn_rate_control",
                "churn_rate_treated",
                "ate_observed",
                "qini",
                "auuc",
            ],
        )
        lines += [
            "",
            f"Cross-fitted ({data.get('folds')} folds) on the experiment; Qini and AUUC per account, "
            "see workbench.models.uplift for the definitions.",
            "",
        ]
    else:
        lines += [
            "Test period, calibrated LightGBM beside the logistic-regression baseline and the "
            "uncalibrated booster:",
            "",
        ]
        lines += _table(metrics, ["model", *_METRIC_COLS])
        lines.append("")
    oracle = data.get("oracle")
    if oracle:
        lines += ["### Against the oracle (true probabilities on the same rows)", ""]
        lines += _table([oracle], list(oracle))
        lines.append("")
    by_cohort = data.get("by_cohort", [])
    if by_cohort:
        lines += ["### By cohort (test period)", ""]
        lines += _table(
            by_cohort, ["cohort", "value", "rows", "positives", "roc_auc", "brier", "ece"]
        )
        lines.append("")

    cal = data.get("calibration")
    if cal:
        lines += [
            "## Calibration",
            "",
            f"Method: **{cal.get('method')}**, fitted on the {cal.get('fitted_on')}. "
            "Reliability on the test period (equal-width bins; ECE is the row-weighted mean |gap|):",
            "",
        ]
        rel = [r for r in cal.get("reliability", []) if r.get("model") in (None, "lightgbm")]
        lines += _table(rel, ["bin", "rows", "mean_predicted", "observed_rate", "gap"])
        lines.append("")

    lines += ["## Limitations", ""] + [f"- {x}" for x in data.get("limitations", [])] + [""]
    lines += [
        "## Traceability",
        "",
        "Every score written by `workbench.models.scoring` carries this model's name, version, "
        "feature-set version, MLflow run id and its top three reasons.",
        "",
    ]
    return "\n".join(lines)
