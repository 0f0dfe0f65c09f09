"""The latent model of the simulated company: how hidden health drives what is observed.

Everything here is ground truth. Each account has a latent monthly *health* path
(mean-reverting with occasional shocks). Health drives, with noise, the observable
signals (daily usage, support tickets, NPS and the CRM health score, failed
payments) and the true monthly voluntary-churn hazard, so a model built on
observed features can approach the oracle. Payment recovery depends only on
things the business can observe (decline code, attempt number, days since the
first failure, day of month, amount, the account's failure history) plus health.

All functions are pure; random draws happen in :mod:`workbench.simulator.lifecycle`.
"""

from __future__ import annotations

import math

REGIONS = ("NA", "EU", "APAC")
CHANNELS = ("self-serve", "sales")
INDUSTRIES = (
    "software",
    "ecommerce",
    "fintech",
    "healthcare",
    "education",
    "media",
    "manufacturing",
    "nonprofit",
)
SIZES = ("small", "medium", "large")
PRICE_SENSITIVE = frozenset({"education", "nonprofit", "media"})

#: Decline codes (``outcome.reason``) with Stripe's ``failure_code`` and message.
DECLINES: dict[str, tuple[str, str]] = {
    "insufficient_funds": ("card_declined", "Your card has insufficient funds."),
    "do_not_honor": ("card_declined", "Your card was declined."),
    "generic_decline": ("card_declined", "Your card was declined."),
    "expired_card": ("expired_card", "Your card has expired."),
    "processing_error": (
        "processing_error",
        "An error occurred while processing your card. Try again in a little bit.",
    ),
    "fraudulent": ("card_declined", "Your card was declined."),
    "lost_card": ("card_declined", "Your card was declined."),
    "stolen_card": ("card_declined", "Your card was declined."),
}

#: Base retry log-odds per decline code: soft declines recover, hard ones almost never.
RETRY_BASE: dict[str, float] = {
    "insufficient_funds": -0.3,
    "do_not_honor": -0.8,
    "generic_decline": -0.5,
    "expired_card": -1.6,
    "processing_error": 1.2,
    "fraudulent": -5.0,
    "lost_card": -4.0,
    "stolen_card": -4.5,
}

#: Dunning schedule: retries this many days after the first failure (Stripe-like, ~3 weeks).
RETRY_DAYS = (3, 7, 14, 21)

#: Months during which a retention offer lowers the hazard after it is made.
OFFER_MONTHS = 6

#: Regime change effects (from the chosen month on).
REGIME = {
    "name": "processor_outage_and_pricing_change",
    "failure_logit_outage": 1.3,  # first two months: payment processor outage
    "failure_logit_after": 0.5,  # afterwards: the new processor declines more
    "outage_months": 2,
    "usage_multiplier": 0.75,  # a pricing change makes customers use the API less
    "hazard_logit": 0.3,  # and cancel a little more
}


def sigmoid(x: float) -> float:
    """The logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def health_mean(*, channel: str, size: str, industry: str) -> float:
    """The long-run mean of an account's latent health from its attributes."""
    mean = 0.0
    mean += 0.25 if channel == "sales" else 0.0
    mean += {"small": -0.15, "medium": 0.1, "large": 0.3}[size]
    mean -= 0.2 if industry in PRICE_SENSITIVE else 0.0
    return mean


def voluntary_hazard(
    *,
    health: float,
    tenure_months: int,
    channel: str,
    size: str,
    annual: bool,
    regime_active: bool,
) -> float:
    """True monthly probability that a paying account decides to cancel (before any offer)."""
    logit = -3.55 - 1.05 * health
    logit += 0.45 if tenure_months < 3 else (0.15 if tenure_months < 6 else 0.0)
    logit -= 0.35 if channel == "sales" else 0.0
    logit -= 0.3 if size == "large" else 0.0
    logit -= 0.3 if annual else 0.0
    logit += REGIME["hazard_logit"] if regime_active else 0.0
    return sigmoid(logit)


def offer_effect(*, channel: str, size: str, industry: str, noise: float) -> float:
    """True relative hazard reduction of the retention offer for one account (0..0.9).

    Heterogeneous: self-serve, small and price-sensitive accounts respond most; large
    accounts on sales contracts barely care about a discount.
    """
    effect = 0.3
    effect += 0.15 if channel == "self-serve" else -0.1
    effect += {"small": 0.1, "medium": 0.0, "large": -0.2}[size]
    effect += 0.15 if industry in PRICE_SENSITIVE else 0.0
    return min(0.9, max(0.0, effect + noise))


def trial_conversion(*, health: float, channel: str, size: str) -> float:
    """Probability that a trial converts to paid."""
    logit = (
        0.5
        + 1.0 * health
        + (0.4 if channel == "sales" else 0.0)
        + (0.2 if size != "small" else 0.0)
    )
    return sigmoid(logit)


def regime_failure_logit(month: int, regime_month: int | None) -> float:
    """Extra log-odds of a payment failure in ``month`` from the regime change."""
    if regime_month is None or month < regime_month:
        return 0.0
    if month < regime_month + REGIME["outage_months"]:
        return REGIME["failure_logit_outage"]
    return REGIME["failure_logit_after"]


def first_attempt_failure(*, health: float, amount_usd: float, regime_logit: float) -> float:
    """Probability that the first charge of an invoice fails (card not expired)."""
    logit = -3.4 - 0.45 * health + 0.18 * math.log1p(amount_usd / 100.0) + regime_logit
    return sigmoid(logit)


def decline_weights(*, health: float, outage: bool) -> dict[str, float]:
    """Relative frequency of decline codes for a failure on a card that has not expired."""
    return {
        "insufficient_funds": 0.42 * math.exp(-0.3 * health),
        "do_not_honor": 0.2,
        "generic_decline": 0.14,
        "processing_error": 0.5 if outage else 0.05,
        "fraudulent": 0.03,
        "lost_card": 0.03,
        "stolen_card": 0.015,
    }


def is_payday(day_of_month: int, days_in_month: int) -> bool:
    """Days when salaries land: the 1st, the 15th/16th and the last two days of a month."""
    return day_of_month in (1, 2, 15, 16) or day_of_month >= days_in_month - 1


def recovery_probability(
    *,
    decline_code: str,
    attempt: int,
    days_since_failure: float,
    day_of_month: int,
    days_in_month: int,
    amount_usd: float,
    health: float,
    prior_failed_invoices: int,
    regime_logit: float = 0.0,
) -> float:
    """True probability that retry ``attempt`` (2 = first retry) of a failed invoice succeeds.

    Depends on the decline code (soft declines recover, hard ones almost never), how many
    tries were already made, how long since the first failure (funds arrive, cards are
    updated), paydays (for insufficient funds especially), the amount, the account's
    history of failed invoices and its latent health.
    """
    logit = RETRY_BASE[decline_code]
    logit -= 0.3 * (attempt - 2)
    if decline_code in ("insufficient_funds", "expired_card"):
        logit += 0.06 * days_since_failure
    if is_payday(day_of_month, days_in_month):
        logit += 0.9 if decline_code == "insufficient_funds" else 0.2
    logit -= 0.25 * math.log1p(amount_usd / 100.0)
    logit -= 0.35 * min(prior_failed_invoices, 4)
    logit += 0.55 * health
    logit -= 0.5 * regime_logit
    return sigmoid(logit)
