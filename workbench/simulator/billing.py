"""Exact money arithmetic for simulated invoices (integer minor units only).

The invariants every simulated invoice keeps (unless an anomaly is injected on purpose):
``subtotal == sum(line.amount)``, ``total == subtotal - sum(total_discount_amounts) + tax``,
``tax == sum(line tax amounts)``, and for non-proration lines
``amount == price.unit_amount * quantity``.
"""

from __future__ import annotations


def round_half_up(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded half away from zero, in integers."""
    sign = -1 if (numerator < 0) != (denominator < 0) else 1
    n, d = abs(numerator), abs(denominator)
    return sign * ((2 * n + d) // (2 * d))


def prorate(amount: int, *, remaining: int, period: int) -> int:
    """The share of ``amount`` for ``remaining`` of ``period`` seconds, rounded half up."""
    if period <= 0:
        raise ValueError("period must be positive")
    return round_half_up(amount * max(0, min(remaining, period)), period)


def discount_total(*, net: int, percent_off: float | None, amount_off: int | None) -> int:
    """The discount a coupon gives on a net amount; never more than the net, never negative."""
    if net <= 0:
        return 0
    if percent_off is not None:
        # percent_off may have one decimal (e.g. 12.5): work in tenths of a percent.
        return min(net, round_half_up(net * round(percent_off * 10), 1000))
    if amount_off is not None:
        return min(net, amount_off)
    return 0


def allocate(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` over positive ``weights`` proportionally (largest remainder, stable).

    Non-positive weights get nothing. The parts always sum to ``total``.
    """
    positive = [max(w, 0) for w in weights]
    denom = sum(positive)
    if total == 0 or denom == 0:
        return [0] * len(weights)
    raw = [total * w for w in positive]
    parts = [r // denom for r in raw]
    remainders = sorted(range(len(weights)), key=lambda i: (-(raw[i] % denom), i))
    for i in remainders[: total - sum(parts)]:
        parts[i] += 1
    return parts


def tax_amount(taxable: int, *, rate_bp: int) -> int:
    """Exclusive tax on ``taxable`` at ``rate_bp`` basis points (725 = 7.25 %), half up."""
    return round_half_up(taxable * rate_bp, 10_000)
