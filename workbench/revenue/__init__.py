"""MRR engine: named, versioned vendor policies over the canonical warehouse.

``build_account_months`` / ``account_month_mrr`` compute MRR and movements per
account-month; ``metrics`` turns them into bridges, KPIs and cohorts; ``daily`` gives
the day grain; ``diff`` explains why two policies disagree; ``export`` writes the
tables out; ``charts`` (imported on its own, it needs Altair) draws them.
See ``workbench/revenue/README.md`` for the rules and their sources.
"""

from .daily import account_day_mrr, daily_mrr
from .diff import diff_policies, diff_summary
from .engine import (
    ACCOUNT_MONTH_COLUMNS,
    MrrRun,
    RevenueError,
    account_month_mrr,
    build_account_months,
)
from .export import export
from .metrics import (
    cohort_retention,
    cohort_table,
    filter_account_months,
    kpi_tiles,
    kpis,
    monthly_bridge,
    mrr_by_segment,
    top_movers,
)
from .policies import POLICIES, Policy, PolicyError, get_policy

__all__ = [
    "ACCOUNT_MONTH_COLUMNS",
    "POLICIES",
    "MrrRun",
    "Policy",
    "PolicyError",
    "RevenueError",
    "account_day_mrr",
    "account_month_mrr",
    "build_account_months",
    "cohort_retention",
    "cohort_table",
    "daily_mrr",
    "diff_policies",
    "diff_summary",
    "export",
    "filter_account_months",
    "get_policy",
    "kpi_tiles",
    "kpis",
    "monthly_bridge",
    "mrr_by_segment",
    "top_movers",
]
