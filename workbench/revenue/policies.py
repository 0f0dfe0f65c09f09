"""MRR policies: every vendor's rules written down as data.

A :class:`Policy` is a small frozen dataclass. The engine (``engine.py``) turns it
into SQL; nothing else about a vendor lives in code. Each named policy cites the
public pages it was read from (``sources``); ``workbench/revenue/README.md`` explains
every field and why each vendor has the value it has.

Policies are versioned: ``get_policy("stripe")`` gives the current version,
``get_policy("stripe@1")`` pins one. Every output row carries ``policy`` and
``policy_version`` so a number can always be traced back to the rules that made it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

ChurnRecognition = Literal["cancel_request", "ended", "paid_through"]
MovementTiming = Literal["event", "snapshot"]
Snapshot = Literal["month_end", "month_start"]
SameMonth = Literal["count", "ignore"]
DURATIONS = ("once", "repeating", "forever")


class PolicyError(ValueError):
    """A policy is unknown or its fields contradict each other; the message says which."""


@dataclass(frozen=True)
class Policy:
    """The rules that turn subscription history into MRR and movements.

    Attributes:
        name: short name used to select the policy (``stripe``, ``chartmogul`` ...).
        version: version of these rules; bump it whenever a field changes.
        title: one line for people.
        sources: URLs (or file paths) the rules were read from.
        discount_durations: coupon durations whose discount reduces MRR while it
            applies (``once`` = the first billing period after the discount starts,
            ``repeating`` = until ``discount_end`` / ``duration_in_months``,
            ``forever`` = until removed).
        past_due_grace_days: how long a ``past_due`` subscription keeps counting,
            measured from the start of its past-due run. ``None`` = until the billing
            system moves it to ``unpaid``/``canceled``; ``0`` = never counts.
        trial_counts: whether a subscription in trial counts at its price.
        churn_recognition: ``cancel_request`` = MRR leaves when cancellation is
            scheduled (``cancel_at_period_end`` or ``canceled_at`` set);
            ``ended`` = when the billing system ends the subscription;
            ``paid_through`` = at the end of the last paid period, even after an
            immediate cancellation.
        free_is_churn: a paying account that moves to a free plan or a 100 % coupon
            churns (``True``) or stays an active customer with a contraction
            (``False``; moving back to paid is then an expansion).
        movement_timing: ``event`` = each MRR change is classified when it happens
            and summed per month (intra-month changes are visible); ``snapshot`` =
            each account's month is classified from its opening and closing MRR only.
        same_month_new_and_churn: with ``event`` timing, an account that starts and
            stops paying inside one calendar month is reported as new and churn
            (``count``) or left out of every movement (``ignore``).
        snapshot: the instant whose MRR is the month's MRR: ``month_end`` (last
            instant of the month) or ``month_start`` (first instant).
        history_start: ignore everything before this month when classifying: an
            account already paying then counts as new in that month.
        fx_rate_date: ``month_end`` = convert each month at the rate of its last day
            (the latest rate on or before it); an ISO date = one fixed rate date for
            every month (a constant-currency view).
        notes: free text for people (caveats, vendor options not modelled).
    """

    name: str
    version: str
    title: str
    sources: tuple[str, ...]
    discount_durations: frozenset[str] = frozenset(DURATIONS)
    past_due_grace_days: int | None = None
    trial_counts: bool = False
    churn_recognition: ChurnRecognition = "ended"
    free_is_churn: bool = True
    movement_timing: MovementTiming = "event"
    same_month_new_and_churn: SameMonth = "count"
    snapshot: Snapshot = "month_end"
    history_start: date | None = None
    fx_rate_date: str = "month_end"
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        unknown = set(self.discount_durations) - set(DURATIONS)
        if unknown:
            raise PolicyError(f"policy {self.name}: unknown coupon durations {sorted(unknown)}")
        if self.past_due_grace_days is not None and self.past_due_grace_days < 0:
            raise PolicyError(f"policy {self.name}: past_due_grace_days must be >= 0 or None")
        if self.churn_recognition not in ("cancel_request", "ended", "paid_through"):
            raise PolicyError(
                f"policy {self.name}: bad churn_recognition {self.churn_recognition!r}"
            )
        if self.movement_timing not in ("event", "snapshot"):
            raise PolicyError(f"policy {self.name}: bad movement_timing {self.movement_timing!r}")
        if self.snapshot not in ("month_end", "month_start"):
            raise PolicyError(f"policy {self.name}: bad snapshot {self.snapshot!r}")
        if self.movement_timing == "event" and self.snapshot != "month_end":
            raise PolicyError(
                f"policy {self.name}: event timing needs snapshot='month_end' "
                "(events of month m move MRR from the end of m-1 to the end of m)"
            )
        if self.movement_timing == "event" and self.history_start is not None:
            raise PolicyError(
                f"policy {self.name}: history_start is only supported with snapshot timing"
            )
        if self.same_month_new_and_churn not in ("count", "ignore"):
            raise PolicyError(f"policy {self.name}: bad same_month_new_and_churn")
        if self.fx_rate_date != "month_end":
            try:
                date.fromisoformat(self.fx_rate_date)
            except ValueError as exc:
                raise PolicyError(
                    f"policy {self.name}: fx_rate_date must be 'month_end' or an ISO date, "
                    f"not {self.fx_rate_date!r}"
                ) from exc

    @property
    def key(self) -> str:
        """``name@version``, the exact reference written into every output row."""
        return f"{self.name}@{self.version}"

    def replace(self, **changes: object) -> Policy:
        """A copy with some fields changed (validated again); keeps name unless given."""
        return dataclasses.replace(self, **changes)

    def differences(self, other: Policy) -> list[str]:
        """Names of the rule fields (not name/version/title/sources/notes) that differ."""
        skip = {"name", "version", "title", "sources", "notes"}
        return [
            f.name
            for f in dataclasses.fields(self)
            if f.name not in skip and getattr(self, f.name) != getattr(other, f.name)
        ]


RULE_FIELDS: tuple[str, ...] = (
    "discount_durations",
    "past_due_grace_days",
    "trial_counts",
    "churn_recognition",
    "free_is_churn",
    "movement_timing",
    "same_month_new_and_churn",
    "snapshot",
    "history_start",
    "fx_rate_date",
)

STRIPE = Policy(
    name="stripe",
    version="1",
    title="Stripe Billing analytics (default metric configuration)",
    sources=(
        "https://docs.stripe.com/billing/subscriptions/analytics/glossary",
        "https://support.stripe.com/questions/billing-analytics",
        "https://support.stripe.com/questions/impact-of-discounts-and-coupons-on-monthly-recurring-revenue-mrr-in-billing",
        "https://support.stripe.com/questions/metric-configurations",
        "https://learn.profitwell.com/article/gf9qqkyplu-profitwell-vs-stripe",
    ),
    discount_durations=frozenset({"forever"}),
    past_due_grace_days=None,
    trial_counts=False,
    churn_recognition="cancel_request",
    free_is_churn=True,
    movement_timing="event",
    same_month_new_and_churn="count",
    notes=(
        "MRR = monthly-normalized value of active and past_due subscriptions; trials, tax, "
        "free plans and metered prices excluded; canceled or unpaid = churn.",
        "Only forever coupons reduce MRR; once/repeating leave it unchanged.",
        "Churn when the subscription is canceled (ProfitWell's comparison page: 'MRR of a "
        "subscription is removed at the time of cancellation'); Stripe lets users switch "
        "to end-of-cycle churn in its metric configuration.",
        "Same-month signup and cancel is counted in both new and churn.",
    ),
)

CHARTMOGUL = Policy(
    name="chartmogul",
    version="1",
    title="ChartMogul subscription analytics (default data settings)",
    sources=(
        "https://help.chartmogul.com/hc/en-us/articles/201244842",
        "https://help.chartmogul.com/hc/en-us/articles/203299812",
        "https://help.chartmogul.com/article/303-handling-past-due-subscriptions",
        "https://help.chartmogul.com/article/242-churn-recognition",
        "https://help.chartmogul.com/hc/en-us/articles/15384089786524-Configuring-Subscription-Analytics-settings",
    ),
    discount_durations=frozenset(DURATIONS),
    past_due_grace_days=None,
    trial_counts=False,
    churn_recognition="ended",
    free_is_churn=False,
    movement_timing="event",
    same_month_new_and_churn="count",
    notes=(
        "MRR from invoiced amounts, so every discount is deducted while it applies "
        "(a once coupon: its first billing period).",
        "Past-due subscriptions keep contributing until cancelled (default; auto-churn "
        "after 1-90 days is an option: set past_due_grace_days).",
        "Churn when the subscription ends in the billing system (default setting).",
        "Paying customers moved to a free plan or a 100% discount stay Active (default "
        "since 2025): contraction, not churn.",
        "Refunds do not change MRR.",
    ),
)

PROFITWELL = Policy(
    name="profitwell",
    version="1",
    title="ProfitWell Metrics (Paddle)",
    sources=(
        "https://learn.profitwell.com/article/gf9qqkyplu-profitwell-vs-stripe",
        "https://paddle.com/help/profitwell-metrics/measure/subscription-retention/churn",
        "https://www.paddle.com/help/profitwell-metrics/measure/subscription-retention/are-cancellations-in-the-first-month-counted-as-churn",
        "https://learn.profitwell.com/article/ecb3zzxewx-refunds",
    ),
    discount_durations=frozenset(DURATIONS),
    past_due_grace_days=None,
    trial_counts=False,
    churn_recognition="paid_through",
    free_is_churn=True,
    movement_timing="event",
    same_month_new_and_churn="ignore",
    notes=(
        "Discounts and credits always subtracted, regardless of frequency.",
        "MRR kept until the end of the paid billing cycle after a cancellation.",
        "Sign-up and churn in the same calendar month: ignored entirely.",
        "Past-due users are active during their dunning window; delinquent churn when the "
        "billing system gives up (unpaid/canceled).",
        "Refunds ignored (the annual-plan early-churn exception is not modelled).",
        "ProfitWell says it rolls recurring metered billing into MRR; the workbench reports "
        "usage revenue separately for every policy.",
    ),
)

BAREMETRICS = Policy(
    name="baremetrics",
    version="1",
    title="Baremetrics",
    sources=(
        "https://help.baremetrics.com/en/articles/5380330-monthly-recurring-revenue",
        "https://changelog.baremetrics.com/",
    ),
    discount_durations=frozenset({"repeating", "forever"}),
    past_due_grace_days=30,
    trial_counts=False,
    churn_recognition="ended",
    free_is_churn=True,
    movement_timing="event",
    same_month_new_and_churn="count",
    notes=(
        "Lifetime (forever) coupons reduce MRR; a 100% coupon makes a free user, and "
        "applying one to a paying customer is churn.",
        "Customers delinquent for more than 30 days are churned.",
        "Upgrade from free = new customer; downgrade to free = cancellation.",
        "Repeating coupons reduce MRR while active and once coupons do not: our reading, "
        "the published page only shows the lifetime case.",
        "Sign-ups cancelled within the same window are included in churn (changelog).",
    ),
)

DBT_PLAYBOOK = Policy(
    name="dbt_playbook",
    version="1",
    title="dbt-labs/mrr-playbook (month-start snapshot, spine from 2018-01-01)",
    sources=(
        "https://github.com/dbt-labs/mrr-playbook",
        "shared/data/external/mrr/dbt_mrr_playbook/",
    ),
    discount_durations=frozenset(DURATIONS),
    past_due_grace_days=None,
    trial_counts=False,
    churn_recognition="ended",
    free_is_churn=True,
    movement_timing="snapshot",
    same_month_new_and_churn="ignore",
    snapshot="month_start",
    history_start=date(2018, 1, 1),
    notes=(
        "A period counts in month m when start_date <= m < end_date (month-start snapshot).",
        "The month spine starts 2018-01-01: a customer already active then is new.",
        "Gaps are zero-MRR months; the month after the last active month is churn.",
    ),
)

POLICIES: dict[str, Policy] = {
    p.name: p for p in (STRIPE, CHARTMOGUL, PROFITWELL, BAREMETRICS, DBT_PLAYBOOK)
}
# every version ever published, so "name@version" keeps resolving after a bump
_VERSIONS: dict[str, Policy] = {p.key: p for p in POLICIES.values()}


def get_policy(policy: str | Policy) -> Policy:
    """Return a policy by name (``"stripe"``) or pinned version (``"stripe@1"``).

    Args:
        policy: a name, ``name@version``, or a :class:`Policy` (returned as is).

    Raises:
        PolicyError: the name or version is unknown; the message lists the known ones.
    """
    if isinstance(policy, Policy):
        return policy
    if "@" in policy:
        if policy in _VERSIONS:
            return _VERSIONS[policy]
        raise PolicyError(f"unknown policy version {policy!r}; known: {sorted(_VERSIONS)}")
    if policy in POLICIES:
        return POLICIES[policy]
    raise PolicyError(f"unknown policy {policy!r}; known: {sorted(POLICIES)}")


def policy_table() -> list[dict[str, object]]:
    """One row per named policy with every rule field, for docs and dashboards."""
    rows = []
    for p in POLICIES.values():
        row: dict[str, object] = {"policy": p.name, "version": p.version}
        for name in RULE_FIELDS:
            value = getattr(p, name)
            row[name] = sorted(value) if isinstance(value, frozenset) else value
        rows.append(row)
    return rows
