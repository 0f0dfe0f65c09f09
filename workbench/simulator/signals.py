"""Observable non-billing signals: daily usage, support tickets, CRM fields, names.

Usage is generated vectorised per stretch of days; tickets and names are drawn from
small fixed word lists (no third-party faker, so bytes never change with a library).
Every free-text field is one line of plain text (no newlines), so CSV line numbers
equal row numbers + 1.
"""

from __future__ import annotations

import math

import numpy as np

#: Expected API calls per seat per weekday, by tier.
CALLS_PER_SEAT = {"starter": 60.0, "team": 140.0, "business": 260.0, "enterprise": 420.0}
WEEKDAY_FACTOR = np.array([1.0, 1.05, 1.05, 1.0, 0.9, 0.35, 0.3])

SEVERITIES = ("low", "medium", "high", "urgent")
CATEGORIES = ("how_to", "bug", "billing", "feature_request", "performance", "account")

_SUBJECTS = {
    "how_to": (
        "How do I export a report",
        "Question about seat management",
        "Setting up SSO",
        "Where is the API key",
    ),
    "bug": (
        "Dashboard shows an error",
        "Export fails with a timeout",
        "Charts do not load",
        "Webhook not firing",
    ),
    "billing": (
        "Question about my invoice",
        "Card was declined",
        "Please update billing email",
        "Charged twice?",
    ),
    "feature_request": (
        "Feature request: custom roles",
        "Can you add a dark mode",
        "Request: more API filters",
    ),
    "performance": (
        "App is very slow today",
        "API latency is high",
        "Reports take minutes to load",
    ),
    "account": ("Add a new admin", "Change company name", "Remove a former employee"),
}
_BODIES = {
    "how_to": "Hi team, we could not find this in the docs. Could you point us to the right page? Thanks.",
    "bug": "Since this morning we see an error when we open the page. Steps: log in, open reports, click export.",
    "billing": "Hello, our finance team has a question about the last charge on our account. Please advise.",
    "feature_request": "It would help our team a lot if this were possible. Happy to talk about our use case.",
    "performance": "Everything is much slower than usual for several users in our team. Is there an incident?",
    "account": "Please make this change on our account when you can. Let me know if you need anything else.",
}
_FRUSTRATED = " This is getting frustrating and we are evaluating alternatives."

_PREFIXES = (
    "Acme",
    "Blue",
    "Cedar",
    "Delta",
    "Ember",
    "Falcon",
    "Granite",
    "Harbor",
    "Iris",
    "Juniper",
    "Kite",
    "Lumen",
    "Maple",
    "Nova",
    "Orbit",
    "Pioneer",
    "Quartz",
    "River",
    "Summit",
    "Tidal",
    "Umber",
    "Vertex",
    "Willow",
    "Xenon",
    "Yonder",
    "Zephyr",
)
_SUFFIXES = (
    "Labs",
    "Systems",
    "Analytics",
    "Works",
    "Group",
    "Health",
    "Digital",
    "Partners",
    "Studio",
    "Logistics",
)
_FIRST = (
    "Alex",
    "Sam",
    "Maria",
    "Chen",
    "Priya",
    "Jonas",
    "Lea",
    "Omar",
    "Yuki",
    "Ana",
    "Noah",
    "Ivy",
    "Luca",
    "Mei",
)
_LAST = (
    "Smith",
    "Garcia",
    "Müller",
    "Kim",
    "Patel",
    "Rossi",
    "Novak",
    "Silva",
    "Tanaka",
    "Dubois",
    "Larsen",
    "Okafor",
)


def company_name(index: int, pick: tuple[float, float]) -> tuple[str, str]:
    """A deterministic fake company name and its slug for account ``index``."""
    name = f"{_PREFIXES[int(pick[0] * len(_PREFIXES))]} {_SUFFIXES[int(pick[1] * len(_SUFFIXES))]}"
    slug = name.lower().replace(" ", "") + str(index)
    return f"{name} {index}", slug


def contact_email(slug: str, pick: tuple[float, float]) -> str:
    """A fake billing contact e-mail on the reserved ``.example`` domain."""
    first = _FIRST[int(pick[0] * len(_FIRST))].lower()
    last = _LAST[int(pick[1] * len(_LAST))].lower().replace("ü", "ue")
    return f"{first}.{last}@{slug}.example"


def ticket_text(category: str, variant: float, frustrated: bool) -> tuple[str, str]:
    """Subject and body of a support ticket (one line each)."""
    subjects = _SUBJECTS[category]
    body = _BODIES[category] + (_FRUSTRATED if frustrated else "")
    return subjects[int(variant * len(subjects))], body


def ticket_severity_weights(health: float) -> tuple[float, ...]:
    """Relative weights of ``SEVERITIES``: unhealthy accounts file more severe tickets."""
    worse = math.exp(-0.6 * health)
    return (0.35, 0.4, 0.18 * worse, 0.07 * worse * worse)


def ticket_category_weights(health: float) -> tuple[float, ...]:
    """Relative weights of ``CATEGORIES``."""
    worse = math.exp(-0.5 * health)
    return (0.3, 0.22 * worse, 0.1, 0.15, 0.12 * worse, 0.11)


def daily_usage(
    rng: np.random.Generator,
    *,
    days: np.ndarray,
    health: np.ndarray,
    weekday: np.ndarray,
    seats: int,
    tier: str,
    usage_multiplier: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """API calls and active users for a stretch of days of one account.

    Args:
        rng: the account's numpy generator.
        days: day indices (only their count matters here).
        health: latent health per day (interpolated between months).
        weekday: 0 = Monday per day.
        seats: purchased seats (active users never exceed them).
        tier: plan tier, which sets calls per seat.
        usage_multiplier: regime effect per day (1.0 before a regime change).

    Returns:
        ``(api_calls, active_users)`` as int64 arrays of ``len(days)``.
    """
    n = len(days)
    wk = WEEKDAY_FACTOR[weekday]
    noise = rng.normal(0.0, 0.25, n)
    lam = (
        seats * CALLS_PER_SEAT[tier] * wk * usage_multiplier * np.exp(0.45 * health + noise - 0.03)
    )
    calls = rng.poisson(lam).astype(np.int64)
    share = 1.0 / (1.0 + np.exp(-(0.2 + 0.9 * health)))
    share = share * np.minimum(1.0, wk * 1.1)
    users = rng.binomial(seats, np.clip(share, 0.0, 1.0)).astype(np.int64)
    return calls, users
