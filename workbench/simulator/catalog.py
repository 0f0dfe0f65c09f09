"""The simulated company's price book: products, prices, coupons and tax rates.

Four per-seat plan tiers (monthly and annual, in USD, EUR and GBP), a metered API
price billed in arrears per 1,000 calls, a flat analytics add-on, coupons of every
kind Stripe has (once / repeating / forever; percent and amount off) including the
retention-offer coupon, and one exclusive tax rate per jurisdiction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.simulator import stripe_objects as so
from workbench.simulator.ids import CATALOG_ACCOUNT, IdFactory

Obj = so.Obj

CURRENCIES = ("usd", "eur", "gbp")
TIERS = ("starter", "team", "business", "enterprise")
TIER_NAMES = {
    "starter": "Starter",
    "team": "Team",
    "business": "Business",
    "enterprise": "Enterprise",
}

#: Monthly per-seat unit amounts in minor units; annual prices are ten months' worth.
SEAT_PRICES = {
    "usd": {"starter": 1500, "team": 3000, "business": 6000, "enterprise": 12000},
    "eur": {"starter": 1400, "team": 2800, "business": 5500, "enterprise": 11000},
    "gbp": {"starter": 1200, "team": 2400, "business": 4800, "enterprise": 9500},
}
#: Metered API price per block of 1,000 calls.
API_PRICES = {"usd": 50, "eur": 45, "gbp": 40}
API_BLOCK = 1000
#: Flat monthly analytics add-on.
ADDON_PRICES = {"usd": 4900, "eur": 4500, "gbp": 3900}

#: Tax per jurisdiction: (display name, basis points, jurisdiction, country).
TAX = {
    "US": ("Sales tax", 725, "US", "US"),
    "EU": ("VAT", 2000, "EU", "DE"),
    "GB": ("VAT", 2000, "GB", "GB"),
    "APAC": ("GST", 1000, "APAC", "AU"),
}

#: Coupons: id -> (name, duration, percent_off, amount_off, duration_in_months, currency).
COUPONS: dict[str, tuple[str, str, float | None, int | None, int | None, str | None]] = {
    "WELCOME20": ("20% off the first invoice", "once", 20.0, None, None, None),
    "LAUNCH3M": ("25% off for 3 months", "repeating", 25.0, None, 3, None),
    "PARTNER10": ("10% off forever (partner)", "forever", 10.0, None, None, None),
    "SAVE50USD": ("$50 off once", "once", None, 5000, None, "usd"),
    "SAVE50EUR": ("€50 off once", "once", None, 5000, None, "eur"),
    "SAVE50GBP": ("£50 off once", "once", None, 5000, None, "gbp"),
    "LOYAL15": ("15 off every month", "forever", None, 1500, None, "usd"),
    "RETAIN30": ("Retention offer: 30% off for 3 months", "repeating", 30.0, None, 3, None),
}
RETENTION_COUPON = "RETAIN30"


@dataclass
class Catalog:
    """Every catalogue object by role, and the events that created them."""

    products: dict[str, Obj] = field(default_factory=dict)
    #: (tier, currency, interval) -> price
    seat_prices: dict[tuple[str, str, str], Obj] = field(default_factory=dict)
    api_prices: dict[str, Obj] = field(default_factory=dict)
    addon_prices: dict[str, Obj] = field(default_factory=dict)
    coupons: dict[str, Obj] = field(default_factory=dict)
    tax_rates: dict[str, Obj] = field(default_factory=dict)
    tax_bp: dict[str, int] = field(default_factory=dict)
    events: list[Obj] = field(default_factory=list)

    def seat_price(self, tier: str, currency: str, interval: str) -> Obj:
        return self.seat_prices[(tier, currency, interval)]


def build_catalog(*, seed: int, created: int) -> Catalog:
    """Build the price book and its ``*.created`` events, all at ``created`` + a few seconds.

    Args:
        seed: the simulation seed (only salts the ids).
        created: unix seconds of the first catalogue event (before the simulation starts).

    Returns:
        The :class:`Catalog`, with ``events`` in creation order.
    """
    ids = IdFactory(seed=seed, account=CATALOG_ACCOUNT)
    cat = Catalog()
    t = created

    def emit(type_: str, obj: Obj) -> None:
        nonlocal t
        cat.events.append(so.event(event_id=ids.make("evt"), type_=type_, obj=obj, created=t))
        t += 1

    for key, (name, bp, jurisdiction, country) in TAX.items():
        obj = so.tax_rate(
            tax_rate_id=ids.make("txr"),
            display_name=name,
            percentage=bp / 100,
            jurisdiction=jurisdiction,
            country=country,
            created=t,
        )
        cat.tax_rates[key] = obj
        cat.tax_bp[key] = bp
        emit("tax_rate.created", obj)

    def add_product(key: str, name: str, description: str) -> str:
        obj = so.product(
            product_id=ids.make("prod"),
            name=name,
            description=description,
            created=t,
            metadata={"key": key},
        )
        cat.products[key] = obj
        emit("product.created", obj)
        return obj["id"]

    def add_price(
        product_id: str,
        currency: str,
        amount: int,
        interval: str,
        usage: str,
        nickname: str,
        key: str,
    ) -> Obj:
        obj = so.price(
            price_id=ids.make("price"),
            product_id=product_id,
            currency=currency,
            unit_amount=amount,
            interval=interval,
            usage_type=usage,
            created=t,
            nickname=nickname,
            lookup_key=key,
            metadata={},
        )
        emit("price.created", obj)
        return obj

    for tier in TIERS:
        pid = add_product(tier, TIER_NAMES[tier], f"{TIER_NAMES[tier]} plan, billed per seat")
        for currency in CURRENCIES:
            monthly = SEAT_PRICES[currency][tier]
            for interval, amount in (("month", monthly), ("year", monthly * 10)):
                key = f"{tier}_{currency}_{interval}"
                cat.seat_prices[(tier, currency, interval)] = add_price(
                    pid,
                    currency,
                    amount,
                    interval,
                    "licensed",
                    f"{TIER_NAMES[tier]} {interval}ly",
                    key,
                )
    pid = add_product("api", "API calls", "Metered API usage, per 1,000 calls")
    for currency in CURRENCIES:
        cat.api_prices[currency] = add_price(
            pid,
            currency,
            API_PRICES[currency],
            "month",
            "metered",
            "API per 1k calls",
            f"api_{currency}",
        )
    pid = add_product("analytics", "Analytics add-on", "Advanced analytics, flat monthly fee")
    for currency in CURRENCIES:
        cat.addon_prices[currency] = add_price(
            pid,
            currency,
            ADDON_PRICES[currency],
            "month",
            "licensed",
            "Analytics add-on",
            f"analytics_{currency}",
        )
    for coupon_id, (name, duration, pct, amount_off, months, currency) in COUPONS.items():
        obj = so.coupon(
            coupon_id=coupon_id,
            name=name,
            created=t,
            duration=duration,
            percent_off=pct,
            amount_off=amount_off,
            currency=currency,
            duration_in_months=months,
        )
        cat.coupons[coupon_id] = obj
        emit("coupon.created", obj)
    return cat
