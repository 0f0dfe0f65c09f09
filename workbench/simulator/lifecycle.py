"""One account's life, simulated event by event.

An :class:`Account` owns its random generators (derived from the seed and the
account index only, so output does not depend on chunking), a small action queue
(signup, monthly ticks, renewals, payment retries, trial ends, cancellations,
refunds, disputes, tickets) and the Stripe objects it creates. Actions run in time
order; each emits Stripe events (serialised at once, so every event is a snapshot),
CSV rows and ground-truth rows into an :class:`AccountOutput`.

Per account, emitted ``created`` times never decrease and ids grow with emission
order, so sorting a file by ``(created, id)`` replays every object's history in order.
"""

from __future__ import annotations

import calendar
import heapq
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.simulator import behaviour as bh
from workbench.simulator import billing, signals
from workbench.simulator import stripe_objects as so
from workbench.simulator.catalog import API_BLOCK, RETENTION_COUPON, TIER_NAMES, TIERS, Catalog
from workbench.simulator.ids import IdFactory
from workbench.simulator.timeline import DAY, HOUR, Timeline, add_months, from_ts, iso

Obj = dict[str, Any]

#: Rough USD value of one unit of each currency, used only inside the latent model.
USD_PER_UNIT = {"usd": 1.0, "eur": 1.08, "gbp": 1.27}

#: Rates of injected invoice anomalies (per eligible invoice / charge / signup).
ANOMALY_RATES = {
    "duplicate_invoice": 0.0015,
    "wrong_amount": 0.002,
    "line_total_mismatch": 0.0015,
    "refund_exceeds_payment": 0.0008,
    "duplicate_subscription": 0.01,  # of non-trial first signups
}

TRIAL_DAYS = 14
REACTIVATION_WINDOW = 18  # months after churn during which a comeback is possible
FEEDBACK = (
    "too_expensive",
    "unused",
    "missing_features",
    "switched_service",
    "customer_service",
    "low_quality",
    "too_complex",
    "other",
)


@dataclass(frozen=True)
class Context:
    """What every account of one simulation shares (read-only)."""

    seed: int
    timeline: Timeline
    catalog: Catalog
    regime_month: int | None
    #: cumulative signup probability by month (length = months)
    signup_cdf: tuple[float, ...]
    #: usage multiplier per day (regime effect)
    usage_multiplier: np.ndarray


@dataclass
class AccountOutput:
    """Everything one account produced."""

    events: list[tuple[int, str, str]] = field(default_factory=list)
    usage: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    tickets: list[tuple] = field(default_factory=list)
    crm: list[tuple] = field(default_factory=list)
    hazard: list[list] = field(default_factory=list)
    recovery: list[list] = field(default_factory=list)
    churn: list[tuple] = field(default_factory=list)
    anomalies: list[tuple] = field(default_factory=list)
    offer: tuple | None = None
    account: tuple | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


class Sub:
    """A subscription and what the simulator needs to renew it."""

    __slots__ = (
        "obj",
        "kind",
        "interval",
        "anchor",
        "n_periods",
        "tier",
        "metered_calls",
        "once_used",
    )

    def __init__(self, obj: Obj, kind: str, interval: str, anchor: int, tier: str) -> None:
        self.obj = obj
        self.kind = kind  # main | addon | duplicate
        self.interval = interval
        self.anchor = anchor
        self.n_periods = 1
        self.tier = tier
        self.metered_calls = 0
        self.once_used = False

    @property
    def id(self) -> str:
        return self.obj["id"]

    @property
    def status(self) -> str:
        return self.obj["status"]

    @property
    def live(self) -> bool:
        return self.obj["status"] in ("trialing", "active", "past_due")

    @property
    def months_per_period(self) -> int:
        return 12 if self.interval == "year" else 1

    def items(self) -> list[Obj]:
        return self.obj["items"]["data"]

    def licensed(self) -> Obj:
        return self.obj["items"]["data"][0]

    def metered(self) -> Obj | None:
        data = self.obj["items"]["data"]
        return data[1] if len(data) > 1 else None


class Invoice:
    """An invoice being collected: its object, payment intent and dunning state."""

    __slots__ = (
        "obj",
        "pi",
        "sub",
        "force_success",
        "schedule",
        "probs",
        "decline",
        "truth_rows",
        "first_fail",
        "amount_usd",
        "health",
        "charge",
    )

    def __init__(self, obj: Obj, pi: Obj | None, sub: Sub | None, force_success: bool) -> None:
        self.obj = obj
        self.pi = pi
        self.sub = sub
        self.force_success = force_success
        self.schedule: list[int] = []
        self.probs: list[float] = []
        self.decline: str | None = None
        self.truth_rows: list[list] = []
        self.first_fail = 0
        self.amount_usd = 0.0
        self.health = 0.0
        self.charge: Obj | None = None

    @property
    def id(self) -> str:
        return self.obj["id"]


def _set(obj: Obj, **changes: Any) -> Obj:
    """Apply ``changes`` to ``obj``; return the old values of the keys that changed."""
    prev = {}
    for key, value in changes.items():
        old = obj.get(key)
        if old != value:
            prev[key] = old
            obj[key] = value
    return prev


class Account:
    """Simulate one account from signup to the end of the horizon."""

    def __init__(self, ctx: Context, index: int) -> None:
        self.ctx = ctx
        self.tl = ctx.timeline
        self.cat = ctx.catalog
        self.index = index
        ss = np.random.SeedSequence(entropy=ctx.seed, spawn_key=(0, index))
        state = ss.generate_state(4, dtype=np.uint64)
        self.r = random.Random(int(state[0]) << 64 | int(state[1]))
        self.npr = np.random.default_rng(
            np.random.SeedSequence(entropy=[int(state[2]), int(state[3])])
        )
        self.ids = IdFactory(seed=ctx.seed, account=index)
        self.out = AccountOutput()
        self.heap: list[tuple[int, int, str, Any]] = []
        self._seq = 0
        self.clock = 0
        self.subs: list[Sub] = []
        self.main: Sub | None = None
        self.open_invoices: dict[str, Invoice] = {}
        self.usage_day = 0
        self.month_max_users = 0
        self.state = "new"
        self.paying_since: int | None = None
        self.churned_month: int | None = None
        self.prior_failed = 0
        self.hazard_rows: dict[int, list] = {}
        self.offer_state: dict[str, Any] = {"eligible": False}
        self.last_score = 100.0
        self.last_main_charge: tuple[Obj, str, int, int] | None = None
        self.dup_charges: dict[str, list[tuple[Obj, str]]] = {}
        self.anomalous: set[str] = set()
        self._draw_attributes()

    # ----------------------------------------------------------------- random helpers
    def _u(self) -> float:
        return self.r.random()

    def _bern(self, p: float) -> bool:
        return self.r.random() < p

    def _pick(self, options: tuple | list, weights: tuple | list) -> Any:
        total = sum(weights)
        x = self.r.random() * total
        acc = 0.0
        for option, w in zip(options, weights, strict=True):
            acc += w
            if x < acc:
                return option
        return options[-1]

    def _normal(self, mu: float = 0.0, sd: float = 1.0) -> float:
        return self.r.gauss(mu, sd)

    def _poisson(self, lam: float) -> int:
        limit, k, p = math.exp(-lam), 0, self.r.random()
        while p > limit:
            k += 1
            p *= self.r.random()
        return k

    def _uuid(self) -> str:
        """A UUID-like idempotency key; every group starts with a letter (no long digit runs)."""
        h = f"{self.r.getrandbits(128):032x}"
        g = "abcdef"
        return f"{g[int(h[0], 16) % 6]}{h[1:8]}-{g[int(h[8], 16) % 6]}{h[9:12]}-4{h[13:16]}-a{h[17:20]}-{g[int(h[20], 16) % 6]}{h[21:]}"

    # ----------------------------------------------------------------- set-up
    def _draw_attributes(self) -> None:
        r = self._pick
        tl = self.tl
        self.region = r(bh.REGIONS, (0.5, 0.32, 0.18))
        if self.region == "NA":
            self.currency, self.tax_key = "usd", "US"
            self.country = r(("US", "CA"), (0.85, 0.15))
        elif self.region == "EU":
            self.currency = r(("eur", "gbp"), (0.72, 0.28))
            self.tax_key = "EU" if self.currency == "eur" else "GB"
            self.country = (
                "GB"
                if self.currency == "gbp"
                else r(("DE", "FR", "NL", "ES", "IE"), (3, 2, 1, 1, 1))
            )
        else:
            self.currency, self.tax_key = "usd", "APAC"
            self.country = r(("AU", "SG", "JP", "IN"), (3, 2, 2, 1))
        self.channel = r(bh.CHANNELS, (0.7, 0.3))
        self.industry = r(bh.INDUSTRIES, (0.24, 0.16, 0.12, 0.1, 0.1, 0.1, 0.1, 0.08))
        if self.channel == "self-serve":
            self.size = r(bh.SIZES, (0.65, 0.3, 0.05))
        else:
            self.size = r(bh.SIZES, (0.15, 0.5, 0.35))
        lo, hi = {"small": (1, 5), "medium": (6, 25), "large": (26, 150)}[self.size]
        self.seats0 = int(round(math.exp(math.log(lo) + self._u() * (math.log(hi) - math.log(lo)))))
        tier_w = {
            "small": (0.6, 0.35, 0.05, 0.0),
            "medium": (0.15, 0.5, 0.3, 0.05),
            "large": (0.0, 0.15, 0.45, 0.4),
        }[self.size]
        self.tier0 = r(TIERS, tier_w)
        self.interval0 = (
            "year" if self._bern(0.15 if self.channel == "self-serve" else 0.5) else "month"
        )
        self.trial = self._bern(0.8 if self.channel == "self-serve" else 0.1)
        # coupon at signup
        self.coupon0: str | None = None
        if self.channel == "self-serve" and self._bern(0.25):
            self.coupon0 = r(
                ("WELCOME20", "LAUNCH3M", "SAVE50" + self.currency.upper()), (0.4, 0.35, 0.25)
            )
        elif self.channel == "sales" and self._bern(0.2):
            self.coupon0 = "LOYAL15" if self.currency == "usd" and self._bern(0.3) else "PARTNER10"
        # signup time
        u = self._u()
        month = next(
            m
            for m, c in enumerate(self.ctx.signup_cdf)
            if u < c or m == len(self.ctx.signup_cdf) - 1
        )
        self.signup_month = month
        self.signup_ts = tl.month_starts[month] + int(
            self._u() * (tl.month_length(month) - 2 * DAY)
        )
        # latent health path, one value per month start (0..months)
        self.health_mean = bh.health_mean(
            channel=self.channel, size=self.size, industry=self.industry
        )
        h = [0.0] * (tl.months + 1)
        h[month] = self._normal(self.health_mean, 0.9)
        for m in range(month, tl.months):
            shock = 0.0
            u = self._u()
            if u < 0.03:
                shock = -1.2
            elif u < 0.05:
                shock = 0.8
            h[m + 1] = h[m] + 0.12 * (self.health_mean - h[m]) + self._normal(0.0, 0.3) + shock
        self.health = h
        self.tau = bh.offer_effect(
            channel=self.channel,
            size=self.size,
            industry=self.industry,
            noise=self._normal(0.0, 0.08),
        )
        # card on file
        self.card = self._new_card(self.signup_ts)
        self.company, slug = signals.company_name(self.index, (self._u(), self._u()))
        self.email = signals.contact_email(slug, (self._u(), self._u()))

    def _new_card(self, t: int) -> Obj:
        dt = from_ts(t)
        months_valid = 3 + int(self._u() * 48)
        idx = dt.year * 12 + dt.month - 1 + months_valid
        brand = self._pick(("visa", "mastercard", "amex"), (0.55, 0.32, 0.13))
        return {
            "id": self.ids.make("pm"),
            "brand": brand,
            "last4": f"{self.r.getrandbits(14) % 10000:04d}",
            "exp_month": idx % 12 + 1,
            "exp_year": idx // 12,
            "country": self.country,
            "funding": self._pick(("credit", "debit"), (0.7, 0.3)),
            "fingerprint": self.ids.make("fp")[3:19],
        }

    @staticmethod
    def _card_expired(card: Obj, t: int) -> bool:
        dt = from_ts(t)
        return (dt.year, dt.month) > (card["exp_year"], card["exp_month"])

    # ----------------------------------------------------------------- plumbing
    def _schedule(self, t: int, kind: str, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (t, self._seq, kind, payload))

    def emit(
        self, type_: str, obj: Obj, t: int, prev: Obj | None = None, requested: bool = False
    ) -> int:
        """Serialise one event now (a snapshot of ``obj``); return its ``created``."""
        created = max(t, self.clock)
        self.clock = created
        evt_id = self.ids.make("evt")
        req_id = self.ids.make("req") if requested else None
        key = self._uuid() if requested else None
        evt = so.event(
            event_id=evt_id,
            type_=type_,
            obj=obj,
            created=created,
            previous_attributes=prev,
            request_id=req_id,
            idempotency_key=key,
        )
        self.out.events.append((created, evt_id, so.encode(evt)))
        return created

    def month_of(self, t: int) -> int:
        return self.tl.month_of(t)

    def h_at(self, t: int) -> float:
        return self.health[self.month_of(t)]

    def regime_active(self, month: int) -> bool:
        return self.ctx.regime_month is not None and month >= self.ctx.regime_month

    def live_subs(self) -> list[Sub]:
        return [s for s in self.subs if s.live]

    def is_live(self) -> bool:
        return any(s.live and s.kind != "duplicate" for s in self.subs)

    def anomaly(self, object_id: str, object_type: str, kind: str, t: int, details: Obj) -> None:
        self.anomalous.add(object_id)
        self.out.anomalies.append(
            (
                object_id,
                object_type,
                kind,
                self.customer["id"],
                t,
                json.dumps(details, sort_keys=True),
            )
        )
        self.out.count("anomalies")

    # ----------------------------------------------------------------- main loop
    def run(self) -> AccountOutput:
        """Run every action up to the end of the horizon and return the output."""
        end = self.tl.end_ts
        self._schedule(self.signup_ts, "signup")
        if self.signup_month + 1 < self.tl.months:
            self._schedule(
                self.tl.month_starts[self.signup_month + 1], "tick", self.signup_month + 1
            )
        while self.heap:
            t, _, kind, payload = heapq.heappop(self.heap)
            if t >= end:
                break
            t = max(t, self.clock)
            self._advance_usage(t)
            getattr(self, "_on_" + kind)(t, payload)
        self._advance_usage(end)
        self._finish()
        return self.out

    def _finish(self) -> None:
        o = self.offer_state
        self.out.offer = (
            self.customer["id"],
            bool(o.get("eligible")),
            o.get("month_ts"),
            bool(o.get("assigned", False)),
            o.get("offered_at"),
            RETENTION_COUPON if o.get("offered_at") else None,
            self.tau,
            o.get("hazard"),
            o["hazard"] * self.tau if o.get("hazard") is not None else None,
        )
        self.out.account = (
            self.customer["id"],
            self.signup_ts,
            self.region,
            self.country,
            self.currency,
            self.channel,
            self.industry,
            self.size,
            self.trial,
            self.health[self.signup_month],
            self.health_mean,
            self.tau,
            self.state,
        )

    # ----------------------------------------------------------------- usage
    def _advance_usage(self, t: int) -> None:
        """Generate daily usage for whole days that started before ``t``."""
        d_end = min(self.tl.n_days, max(0, (t - self.tl.start_ts + DAY - 1) // DAY))
        if d_end <= self.usage_day:
            return
        d0, self.usage_day = self.usage_day, d_end
        if not self.is_live() or self.main is None:
            return
        tl = self.tl
        days = np.arange(d0, d_end, dtype=np.int64)
        months = tl.day_month[d0:d_end]
        h = np.asarray(self.health, dtype=float)
        health = (
            h[months] + (h[np.minimum(months + 1, tl.months)] - h[months]) * tl.day_frac[d0:d_end]
        )
        seats = self.main.licensed().get("quantity", 1)
        calls, users = signals.daily_usage(
            self.npr,
            days=days,
            health=health,
            weekday=tl.day_weekday[d0:d_end],
            seats=seats,
            tier=self.main.tier,
            usage_multiplier=self.ctx.usage_multiplier[d0:d_end],
        )
        self.out.usage.append((days, calls, users))
        self.month_max_users = max(self.month_max_users, int(users.max()))
        if self.main.metered() is not None and self.main.live:
            self.main.metered_calls += int(calls.sum())

    # ----------------------------------------------------------------- signup
    def _on_signup(self, t: int, _: Any) -> None:
        meta = {
            "region": self.region,
            "channel": self.channel,
            "industry": self.industry,
            "size": self.size,
        }
        self.customer = so.customer(
            customer_id=self.ids.make("cus"),
            created=t,
            name=self.company,
            email=self.email,
            currency=self.currency,
            description=f"{self.company}: {self.industry} company, {self.size}, signed up via {self.channel}",
            country=self.country,
            invoice_prefix=self.ids.make("ip")[-8:].upper(),
            payment_method=self.card["id"],
            metadata=meta,
        )
        self.emit("customer.created", self.customer, t, requested=True)
        self.state = "trialing" if self.trial else "pending"
        sub = self._create_subscription(
            t + 1,
            kind="main",
            tier=self.tier0,
            seats=self.seats0,
            interval=self.interval0,
            trial=self.trial,
            coupon_id=self.coupon0,
        )
        if not self.trial and sub.live and self._bern(ANOMALY_RATES["duplicate_subscription"]):
            dup = self._create_subscription(
                t + 60 + int(self._u() * 900),
                kind="duplicate",
                tier=self.tier0,
                seats=self.seats0,
                interval=self.interval0,
                trial=False,
                coupon_id=None,
            )
            self.anomaly(
                dup.id,
                "subscription",
                "duplicate_subscription",
                dup.obj["created"],
                {"duplicate_of": sub.id, "price": dup.licensed()["price"]["id"]},
            )
            self._schedule(t + int((25 + 45 * self._u()) * DAY), "dup_cancel", dup)

    def _price_for(self, tier: str, interval: str) -> Obj:
        return self.cat.seat_price(tier, self.currency, interval)

    def _create_subscription(
        self,
        t: int,
        *,
        kind: str,
        tier: str,
        seats: int,
        interval: str,
        trial: bool,
        coupon_id: str | None,
    ) -> Sub:
        sub_id = self.ids.make("sub")
        items: list[Obj] = []
        if kind == "addon":
            items.append(
                so.subscription_item(
                    item_id=self.ids.make("si"),
                    price_obj=self.cat.addon_prices[self.currency],
                    quantity=1,
                    subscription_id=sub_id,
                    created=t,
                )
            )
        else:
            items.append(
                so.subscription_item(
                    item_id=self.ids.make("si"),
                    price_obj=self._price_for(tier, interval),
                    quantity=seats,
                    subscription_id=sub_id,
                    created=t,
                )
            )
            if interval == "month" and tier != "starter" and kind == "main":
                items.append(
                    so.subscription_item(
                        item_id=self.ids.make("si"),
                        price_obj=self.cat.api_prices[self.currency],
                        quantity=None,
                        subscription_id=sub_id,
                        created=t,
                    )
                )
        months = 12 if interval == "year" else 1
        if trial:
            p_start, p_end = t, t + TRIAL_DAYS * DAY
            status, trial_start, trial_end = "trialing", t, t + TRIAL_DAYS * DAY
        else:
            p_start, p_end = t, add_months(t, months)
            status, trial_start, trial_end = "incomplete", None, None
        obj = so.subscription(
            subscription_id=sub_id,
            customer_id=self.customer["id"],
            currency=self.currency,
            created=t,
            items=items,
            status=status,
            period_start=p_start,
            period_end=p_end,
            trial_start=trial_start,
            trial_end=trial_end,
            tax_rate_obj=self.cat.tax_rates[self.tax_key],
            metadata={"plan_tier": tier if kind != "addon" else "analytics"},
        )
        sub = Sub(obj, kind, "month" if kind == "addon" else interval, trial_end or t, tier)
        if coupon_id:
            coupon = self.cat.coupons[coupon_id]
            end = (
                add_months(t, coupon["duration_in_months"])
                if coupon["duration"] == "repeating"
                else None
            )
            obj["discount"] = so.discount(
                discount_id=self.ids.make("di"),
                coupon_obj=coupon,
                customer_id=self.customer["id"],
                subscription_id=sub_id,
                start=t,
                end=end,
            )
            obj["discounts"] = [obj["discount"]["id"]]
        self.subs.append(sub)
        if kind == "main":
            self.main = sub
        if trial:
            self.emit("customer.subscription.created", obj, t, requested=True)
            line = dict(
                price=items[0]["price"],
                quantity=seats,
                amount=0,
                description=f"Trial period for {TIER_NAMES[tier]}",
                period=(p_start, p_end),
                proration=False,
                type="subscription",
                item=items[0]["id"],
            )
            inv = self._build_invoice(
                t + 1, sub, "subscription_create", [line], (t, t), anomalies=False
            )
            obj["latest_invoice"] = inv.id
            self._collect(inv, t + 1)
            self._schedule(trial_end - 3 * DAY, "trial_will_end", sub)
            self._schedule(trial_end, "trial_end", sub)
            return sub
        # paid start: the first invoice is charged at once; the subscription is active if it succeeds
        specs = self._cycle_lines(sub, p_start, p_end, metered_period=None)
        inv = self._build_invoice(t, sub, "subscription_create", specs, (t, t), anomalies=False)
        obj["latest_invoice"] = inv.id
        ok = inv.force_success or kind == "duplicate" or not self._bern(self._p_fail(inv, t))
        obj["status"] = "active" if ok else "incomplete"
        self.emit("customer.subscription.created", obj, t, requested=True)
        self._collect(inv, t, first_outcome=ok)
        if ok:
            self._start_paying(sub, t)
            self._schedule(p_end, "renew", sub)
        return sub

    def _start_paying(self, sub: Sub, t: int) -> None:
        if sub.kind != "main":
            return
        if self.state != "paying":
            self.state = "paying"
            self.paying_since = self.month_of(t)
            if self.churned_month is not None:
                self.out.count("reactivations")
                self.churned_month = None

    # ----------------------------------------------------------------- invoices
    def _cycle_lines(
        self, sub: Sub, p_start: int, p_end: int, metered_period: tuple[int, int] | None
    ) -> list[Obj]:
        lic = sub.licensed()
        qty = lic.get("quantity", 1)
        price = lic["price"]
        product = "Analytics add-on" if sub.kind == "addon" else TIER_NAMES[sub.tier]
        specs = [
            dict(
                price=price,
                quantity=qty,
                amount=price["unit_amount"] * qty,
                description=f"{qty} × {product} (at {price['unit_amount']} / {price['recurring']['interval']})",
                period=(p_start, p_end),
                proration=False,
                type="subscription",
                item=lic["id"],
            )
        ]
        met = sub.metered()
        if met is not None and metered_period is not None:
            blocks = -(-sub.metered_calls // API_BLOCK)
            specs.append(
                dict(
                    price=met["price"],
                    quantity=blocks,
                    amount=met["price"]["unit_amount"] * blocks,
                    description=f"{blocks} × API calls (per 1,000)",
                    period=metered_period,
                    proration=False,
                    type="subscription",
                    item=met["id"],
                )
            )
            sub.metered_calls = 0
        return specs

    def _active_discount(self, sub: Sub, t: int) -> Obj | None:
        disc = sub.obj.get("discount")
        if not disc:
            return None
        coupon = disc["coupon"]
        if coupon["duration"] == "once" and sub.once_used:
            return None
        if disc["end"] is not None and t >= disc["end"]:
            return None
        if coupon["amount_off"] is not None and coupon["currency"] != self.currency:
            return None
        return disc

    def _build_invoice(
        self,
        t: int,
        sub: Sub | None,
        reason: str,
        specs: list[Obj],
        period: tuple[int, int],
        *,
        anomalies: bool,
        discount: Obj | None | str = "auto",
    ) -> Invoice:
        inv_id = self.ids.make("in")
        amounts = [s["amount"] for s in specs]
        if anomalies and self._bern(ANOMALY_RATES["wrong_amount"]):
            i = 0
            expected = amounts[i]
            unit = specs[i]["price"]["unit_amount"]
            kind = self._pick(
                ("extra_seat", "double", "old_price", "tenfold"), (0.4, 0.25, 0.25, 0.1)
            )
            wrong = {
                "extra_seat": expected + unit,
                "double": 2 * expected,
                "old_price": int(round(expected * 0.85)),
                "tenfold": 10 * expected,
            }[kind]
            if wrong == expected:
                wrong = expected + unit
            amounts[i] = wrong
            self.anomaly(
                inv_id,
                "invoice",
                "wrong_amount",
                t,
                {
                    "line_index": i,
                    "expected_amount": expected,
                    "billed_amount": wrong,
                    "error": kind,
                    "unit_amount": unit,
                    "quantity": specs[i]["quantity"],
                },
            )
        if discount == "auto":
            disc = self._active_discount(sub, t) if sub is not None else None
        else:
            disc = discount  # type: ignore[assignment]
        net = sum(amounts)
        disc_total = 0
        if disc is not None:
            c = disc["coupon"]
            disc_total = billing.discount_total(
                net=net, percent_off=c["percent_off"], amount_off=c["amount_off"]
            )
            if c["duration"] == "once" and sub is not None and net > 0 and discount == "auto":
                sub.once_used = True
        disc_parts = billing.allocate(disc_total, amounts) if disc_total else [0] * len(amounts)
        bp = self.cat.tax_bp[self.tax_key]
        txr = self.cat.tax_rates[self.tax_key]["id"]
        line_taxes = [
            billing.tax_amount(a - d, rate_bp=bp) for a, d in zip(amounts, disc_parts, strict=True)
        ]
        lines = []
        for spec, amount, d, tax in zip(specs, amounts, disc_parts, line_taxes, strict=True):
            ii = self.ids.make("ii") if spec["type"] == "invoiceitem" else None
            lines.append(
                so.invoice_line(
                    line_id=self.ids.make("il"),
                    invoice_id=inv_id,
                    amount=amount,
                    currency=self.currency,
                    description=spec["description"],
                    period_start=spec["period"][0],
                    period_end=spec["period"][1],
                    price_obj=spec["price"],
                    quantity=spec["quantity"],
                    proration=spec["proration"],
                    line_type=spec["type"],
                    subscription_id=sub.id if sub else None,
                    subscription_item_id=spec["item"] if spec["type"] == "subscription" else None,
                    invoice_item_id=ii,
                    discount_amounts=[{"amount": d, "discount": disc["id"]}]
                    if disc is not None
                    else [],
                    tax_amounts=[
                        {
                            "amount": tax,
                            "inclusive": False,
                            "tax_rate": txr,
                            "taxability_reason": None,
                            "taxable_amount": amount - d,
                        }
                    ],
                )
            )
        subtotal = sum(amounts)
        tax = sum(line_taxes)
        total = subtotal - disc_total + tax
        if anomalies and self._bern(ANOMALY_RATES["line_total_mismatch"]):
            delta = self._pick((1, -1), (0.6, 0.4)) * max(
                1, int(subtotal * (0.05 + 0.3 * self._u()))
            )
            self.anomaly(
                inv_id,
                "invoice",
                "line_total_mismatch",
                t,
                {"sum_of_lines": subtotal, "subtotal": subtotal + delta, "delta": delta},
            )
            subtotal += delta
            total += delta
        seq = self.customer["next_invoice_sequence"]
        self.customer["next_invoice_sequence"] = seq + 1
        obj = so.invoice(
            invoice_id=inv_id,
            customer_obj=self.customer,
            subscription_id=sub.id if sub else None,
            created=t,
            currency=self.currency,
            billing_reason=reason,
            lines=lines,
            period_start=period[0],
            period_end=period[1],
            subtotal=subtotal,
            total_discount_amounts=[{"amount": disc_total, "discount": disc["id"]}]
            if disc is not None
            else [],
            tax=tax,
            total_tax_amounts=[
                {
                    "amount": tax,
                    "inclusive": False,
                    "tax_rate": txr,
                    "taxability_reason": None,
                    "taxable_amount": subtotal - disc_total,
                }
            ],
            total=total,
            discount_obj=disc,
            number=f"{self.customer['invoice_prefix']}-{seq:04d}",
            payment_intent_id=None,
        )
        force = sub is not None and sub.kind == "duplicate"
        inv = Invoice(obj, None, sub, force)
        inv.amount_usd = max(total, 0) * USD_PER_UNIT[self.currency] / 100.0
        self.out.count("invoices")
        return inv

    def _p_fail(self, inv: Invoice, t: int) -> float:
        if inv.force_success:
            return 0.0
        m = self.month_of(t)
        return bh.first_attempt_failure(
            health=self.health[m],
            amount_usd=inv.amount_usd,
            regime_logit=bh.regime_failure_logit(m, self.ctx.regime_month),
        )

    def _collect(self, inv: Invoice, t: int, first_outcome: bool | None = None) -> None:
        """Emit created and finalized, then make the first payment attempt."""
        obj = inv.obj
        self.emit("invoice.created", obj, t)
        # renewals finalise an hour after creation, as Stripe does (but never past the horizon)
        hour = obj["billing_reason"] == "subscription_cycle" and t + HOUR + 60 < self.tl.end_ts
        fin = t + (HOUR if hour else 1)
        obj["status"] = "open"
        obj["status_transitions"]["finalized_at"] = fin
        obj["effective_at"] = fin
        obj["auto_advance"] = obj["total"] > 0
        if obj["total"] <= 0:
            obj["ending_balance"] = 0
            self.emit("invoice.finalized", obj, fin)
            obj.update(status="paid", paid=True, attempted=True, amount_remaining=0, amount_paid=0)
            obj["status_transitions"]["paid_at"] = fin
            self.emit("invoice.paid", obj, fin + 1)
            self.emit("invoice.payment_succeeded", obj, fin + 1)
            return
        pi = so.payment_intent(
            payment_intent_id=self.ids.make("pi"),
            customer_id=self.customer["id"],
            invoice_id=inv.id,
            amount=obj["total"],
            currency=self.currency,
            created=fin,
            description=self._describe(obj),
        )
        inv.pi = pi
        obj["payment_intent"] = pi["id"]
        obj["ending_balance"] = 0
        self.emit("invoice.finalized", obj, fin)
        self.open_invoices[inv.id] = inv
        self._attempt(inv, fin + 1, 1, first_outcome)

    @staticmethod
    def _describe(obj: Obj) -> str:
        return {
            "subscription_create": "Subscription creation",
            "subscription_cycle": "Subscription update",
            "subscription_update": "Subscription update",
        }.get(obj["billing_reason"], "Invoice")

    def _attempt(self, inv: Invoice, t: int, k: int, outcome: bool | None = None) -> None:
        """Payment attempt ``k`` (1 = first charge) of an open invoice."""
        obj, pi = inv.obj, inv.pi
        card = self.card
        decline: str | None = None
        if outcome is None:
            if k == 1:
                if not inv.force_success and self._card_expired(card, t):
                    if self._bern(0.5):
                        decline = "expired_card"
                    else:  # the card account updater found the new expiry
                        self.card = card = self._refresh_card(card, t, same_number=True)
                if decline is None:
                    p = self._p_fail(inv, t)
                    ok = not self._bern(p)
                else:
                    ok = False
            else:
                ok = self._bern(inv.probs[k - 2])
        else:
            ok = outcome
        if not ok and decline is None:
            if k == 1 or inv.decline is None:
                h = self.h_at(t)
                outage = (
                    bh.regime_failure_logit(self.month_of(t), self.ctx.regime_month)
                    >= bh.REGIME["failure_logit_outage"]
                )
                w = bh.decline_weights(health=h, outage=outage)
                decline = self._pick(tuple(w), tuple(w.values()))
            else:
                decline = inv.decline
        charge_id = self.ids.make("ch")
        if ok:
            failure_code = failure_message = None
            outcome_obj = {
                "network_status": "approved_by_network",
                "reason": None,
                "risk_level": "normal",
                "risk_score": 5 + int(self._u() * 40),
                "seller_message": "Payment complete.",
                "type": "authorized",
            }
        else:
            failure_code, failure_message = bh.DECLINES[decline]
            blocked = decline == "fraudulent" and self._bern(0.5)
            outcome_obj = {
                "network_status": "not_sent_to_network" if blocked else "declined_by_network",
                "reason": decline,
                "risk_level": "elevated" if blocked else "normal",
                "risk_score": 60 + int(self._u() * 35) if blocked else 10 + int(self._u() * 40),
                "seller_message": f"The bank returned the decline code `{decline}`.",
                "type": "blocked" if blocked else "issuer_declined",
            }
        ch = so.charge(
            charge_id=charge_id,
            customer_obj=self.customer,
            invoice_id=inv.id,
            payment_intent_id=pi["id"],
            amount=obj["total"],
            currency=self.currency,
            created=t,
            card=card,
            succeeded=ok,
            failure_code=failure_code,
            failure_message=failure_message,
            outcome=outcome_obj,
            balance_transaction="txn_" + charge_id[3:] if ok else None,
            description=self._describe(obj),
        )
        obj["attempt_count"] = k
        obj["attempted"] = True
        obj["charge"] = charge_id
        pi["latest_charge"] = charge_id
        pi["payment_method"] = card["id"]
        if ok:
            self.emit("charge.succeeded", ch, t)
            pi.update(status="succeeded", amount_received=pi["amount"], last_payment_error=None)
            self.emit("payment_intent.succeeded", pi, t)
            obj.update(
                status="paid",
                paid=True,
                amount_paid=obj["total"],
                amount_remaining=0,
                next_payment_attempt=None,
            )
            obj["status_transitions"]["paid_at"] = t + 1
            self.emit("invoice.paid", obj, t + 1)
            self.emit("invoice.payment_succeeded", obj, t + 1)
            self.open_invoices.pop(inv.id, None)
            inv.charge = ch
            self.out.count("charges_succeeded")
            if k > 1:
                self._mark_truth(inv, k, True)
                self.out.count("invoices_recovered")
            self._after_payment(inv, ch, t + 2)
            return
        # failure
        self.out.count("charges_failed")
        self.emit("charge.failed", ch, t)
        pi.update(
            status="requires_payment_method",
            last_payment_error={
                "charge": charge_id,
                "code": failure_code,
                "decline_code": decline if failure_code == "card_declined" else None,
                "message": failure_message,
                "type": "card_error",
            },
        )
        self.emit("payment_intent.payment_failed", pi, t)
        if k > 1:
            self._mark_truth(inv, k, False)
        if (
            obj["billing_reason"] == "subscription_create"
            and inv.sub is not None
            and inv.sub.status == "incomplete"
        ):
            obj["next_payment_attempt"] = None
            self.emit("invoice.payment_failed", obj, t + 1)
            if k == 1:  # the customer may fix the card within the 23 hours Stripe allows
                if self._bern(0.45):
                    self._schedule(t + int((1 + 18 * self._u()) * HOUR), "incomplete_retry", inv)
                else:
                    self._schedule(t + 23 * HOUR, "incomplete_expire", inv)
            else:
                self._schedule(t + 2, "incomplete_expire", inv)
            return
        if k == 1:
            self._start_dunning(inv, t, decline)
        nxt = inv.schedule[k - 1] if k - 1 < len(inv.schedule) else None
        obj["next_payment_attempt"] = nxt
        self.emit("invoice.payment_failed", obj, t + 1)
        if nxt is not None:
            self._schedule(nxt, "retry", (inv, k + 1))
        else:
            obj["status"] = "uncollectible"
            obj["status_transitions"]["marked_uncollectible_at"] = t + 2
            obj["auto_advance"] = False
            self.emit("invoice.marked_uncollectible", obj, t + 2)
            self.open_invoices.pop(inv.id, None)
            self.out.count("invoices_uncollectible")
            self._involuntary_churn(t + 3, inv)

    def _refresh_card(self, card: Obj, t: int, *, same_number: bool) -> Obj:
        new = self._new_card(t)
        if same_number:
            new.update(
                id=card["id"],
                brand=card["brand"],
                last4=card["last4"],
                fingerprint=card["fingerprint"],
            )
            dt = from_ts(t)
            years = 3 + int(self._u() * 3)
            new.update(exp_month=dt.month, exp_year=dt.year + years)
        return new

    def _start_dunning(self, inv: Invoice, t: int, decline: str) -> None:
        """First failure of an invoice: fix the retry schedule and every attempt's true odds."""
        inv.decline = decline
        inv.first_fail = t
        m = self.month_of(t)
        h = self.health[m]
        inv.health = h
        regime_logit = bh.regime_failure_logit(m, self.ctx.regime_month)
        sched = []
        last = t
        for days in bh.RETRY_DAYS:
            when = t + days * DAY + int((self._u() - 0.5) * 36 * HOUR)
            when = max(when, last + HOUR)
            sched.append(when)
            last = when
        inv.schedule = sched
        probs = []
        for k, when in enumerate(sched, start=2):
            dt = from_ts(when)
            probs.append(
                bh.recovery_probability(
                    decline_code=decline,
                    attempt=k,
                    days_since_failure=(when - t) / DAY,
                    day_of_month=dt.day,
                    days_in_month=calendar.monthrange(dt.year, dt.month)[1],
                    amount_usd=inv.amount_usd,
                    health=h,
                    prior_failed_invoices=self.prior_failed,
                    regime_logit=regime_logit,
                )
            )
        inv.probs = probs

        def recovered_within(days: int) -> float:
            miss = 1.0
            for when, p in zip(sched, probs, strict=True):
                if when - t <= days * DAY:
                    miss *= 1.0 - p
            return 1.0 - miss

        r7, r14, r30 = recovered_within(7), recovered_within(14), recovered_within(30)
        ever = recovered_within(10_000)
        p1 = (
            1.0 - self._p_fail(inv, t)
            if decline != "expired_card"
            else 0.5 * (1.0 - self._p_fail(inv, t))
        )
        base = [inv.id, self.customer["id"]]
        rows = [
            base
            + [
                1,
                t,
                decline,
                0.0,
                from_ts(t).day,
                inv.obj["total"],
                self.currency,
                inv.amount_usd,
                self.prior_failed,
                h,
                p1,
                True,
                False,
                r7,
                r14,
                r30,
                ever,
            ]
        ]
        for k, (when, p) in enumerate(zip(sched, probs, strict=True), start=2):
            rows.append(
                base
                + [
                    k,
                    when,
                    decline,
                    (when - t) / DAY,
                    from_ts(when).day,
                    inv.obj["total"],
                    self.currency,
                    inv.amount_usd,
                    self.prior_failed,
                    h,
                    p,
                    False,
                    None,
                    r7,
                    r14,
                    r30,
                    ever,
                ]
            )
        inv.truth_rows = rows
        self.out.recovery.extend(rows)
        self.prior_failed += 1
        self.out.count("invoices_failed")
        # the subscription goes past due, the customer delinquent
        sub = inv.sub
        if sub is not None and sub.status == "active":
            prev = _set(sub.obj, status="past_due")
            self.emit("customer.subscription.updated", sub.obj, t + 1, prev)
        if not self.customer["delinquent"]:
            prev = _set(self.customer, delinquent=True)
            self.emit("customer.updated", self.customer, t + 1, prev)
        if self._bern(0.2):
            self._ticket(t + int(self._u() * 2 * DAY), category="billing")

    def _mark_truth(self, inv: Invoice, k: int, ok: bool) -> None:
        if k - 1 < len(inv.truth_rows):
            row = inv.truth_rows[k - 1]
            row[-6] = True
            row[-5] = ok

    def _after_payment(self, inv: Invoice, ch: Obj, t: int) -> None:
        sub = inv.sub
        if inv.decline == "expired_card" or (inv.decline and self._bern(0.3)):
            # the customer put in a new card to pay
            old = self.customer["invoice_settings"]
            self.card = self._refresh_card(self.card, t, same_number=False)
            new_settings = dict(old, default_payment_method=self.card["id"])
            prev = _set(self.customer, invoice_settings=new_settings)
            self.emit("customer.updated", self.customer, t, prev, requested=True)
        if (
            sub is not None
            and sub.status == "past_due"
            and not any(i.sub is sub for i in self.open_invoices.values())
        ):
            prev = _set(sub.obj, status="active")
            self.emit("customer.subscription.updated", sub.obj, t, prev)
        if self.customer["delinquent"] and not any(i.decline for i in self.open_invoices.values()):
            prev = _set(self.customer, delinquent=False)
            self.emit("customer.updated", self.customer, t, prev)
        if sub is not None and sub.kind == "duplicate":
            self.dup_charges.setdefault(sub.id, []).append((ch, inv.pi["id"]))
            return
        if inv.force_success:  # an injected duplicate invoice
            return
        if (
            sub is not None
            and sub is self.main
            and inv.obj["billing_reason"] != "subscription_update"
        ):
            period = inv.obj["lines"]["data"][0]["period"]
            self.last_main_charge = (ch, inv.pi["id"], period["start"], period["end"])
        h = self.h_at(t)
        if self._bern(ANOMALY_RATES["refund_exceeds_payment"]):
            extra = 1 + int(self._u() * ch["amount"])
            self._schedule(
                t + int((1 + 10 * self._u()) * DAY),
                "refund",
                (
                    ch,
                    inv.pi["id"],
                    ch["amount"] + extra,
                    "requested_by_customer",
                    "refund_exceeds_payment",
                ),
            )
        elif self._bern(0.008):
            amount = (
                ch["amount"]
                if self._bern(0.4)
                else max(1, int(ch["amount"] * (0.1 + 0.4 * self._u())))
            )
            self._schedule(
                t + int((1 + 13 * self._u()) * DAY),
                "refund",
                (ch, inv.pi["id"], amount, "requested_by_customer", None),
            )
        if self._bern(0.0015 + (0.006 if h < -1.0 else 0.0)):
            self._schedule(t + int((7 + 50 * self._u()) * DAY), "dispute", (ch, inv.pi["id"]))
        if (
            inv.obj["billing_reason"] == "subscription_cycle"
            and sub is not None
            and inv.id not in self.anomalous
            and self._bern(ANOMALY_RATES["duplicate_invoice"])
        ):
            self._schedule(t + int(300 + 7200 * self._u()), "duplicate_invoice", inv)

    # ----------------------------------------------------------------- scheduled actions
    def _on_retry(self, t: int, payload: tuple[Invoice, int]) -> None:
        inv, k = payload
        if inv.obj["status"] != "open":
            return
        self._attempt(inv, t, k)

    def _on_incomplete_retry(self, t: int, inv: Invoice) -> None:
        if inv.obj["status"] != "open":
            return
        ok = self._bern(0.55)
        if ok:
            self.card = self._refresh_card(self.card, t, same_number=False)
            old = self.customer["invoice_settings"]
            prev = _set(
                self.customer, invoice_settings=dict(old, default_payment_method=self.card["id"])
            )
            self.emit("customer.updated", self.customer, t, prev, requested=True)
        self._attempt(inv, t + 1, 2, ok)
        if ok and inv.sub is not None:
            sub = inv.sub
            prev = _set(sub.obj, status="active")
            self.emit("customer.subscription.updated", sub.obj, t + 3, prev)
            self._start_paying(sub, t)
            self._schedule(sub.obj["current_period_end"], "renew", sub)

    def _on_incomplete_expire(self, t: int, inv: Invoice) -> None:
        if inv.obj["status"] != "open":
            return
        self._void(inv, t)
        sub = inv.sub
        if sub is not None and sub.status == "incomplete":
            prev = _set(sub.obj, status="incomplete_expired", ended_at=t)
            self.emit("customer.subscription.updated", sub.obj, t, prev)
            if sub.kind == "main" and self.state == "pending":
                self.state = "churned" if self.churned_month is not None else "lost"
        self.out.count("incomplete_expired")

    def _void(self, inv: Invoice, t: int) -> None:
        obj = inv.obj
        obj.update(status="void", next_payment_attempt=None, auto_advance=False, amount_remaining=0)
        obj["status_transitions"]["voided_at"] = t
        self.emit("invoice.voided", obj, t)
        self.open_invoices.pop(inv.id, None)

    def _on_trial_will_end(self, t: int, sub: Sub) -> None:
        if sub.status == "trialing":
            self.emit("customer.subscription.trial_will_end", sub.obj, t)

    def _on_trial_end(self, t: int, sub: Sub) -> None:
        if sub.status != "trialing":
            return
        h = self.h_at(t)
        if not self._bern(bh.trial_conversion(health=h, channel=self.channel, size=self.size)):
            self._end_sub(
                sub,
                t,
                reason="cancellation_requested",
                feedback=self._pick(
                    ("unused", "missing_features", "too_expensive", "too_complex"), (4, 2, 2, 1)
                ),
            )
            self.state = "lapsed"
            self.out.count("trials_lapsed")
            return
        months = sub.months_per_period
        p_end = add_months(t, months)
        sub.anchor = t
        sub.n_periods = 1
        prev = _set(sub.obj, status="active", current_period_start=t, current_period_end=p_end)
        sub.metered_calls = 0  # usage during the trial is free
        specs = self._cycle_lines(sub, t, p_end, metered_period=None)
        inv = self._build_invoice(
            t, sub, "subscription_cycle", specs, (sub.obj["trial_start"], t), anomalies=True
        )
        prev.update(_set(sub.obj, latest_invoice=inv.id))
        self.emit("customer.subscription.updated", sub.obj, t, prev)
        self._start_paying(sub, t)
        self.out.count("trials_converted")
        self._collect(inv, t)
        self._schedule(p_end, "renew", sub)

    def _on_renew(self, t: int, sub: Sub) -> None:
        if not sub.live or sub.obj["current_period_end"] > t:
            return
        if sub.obj["cancel_at_period_end"]:
            self._end_sub(sub, sub.obj["current_period_end"], reason=None, feedback=None)
            self._check_account_end(t, "voluntary")
            return
        old_start, old_end = sub.obj["current_period_start"], sub.obj["current_period_end"]
        sub.n_periods += 1
        new_end = add_months(sub.anchor, sub.n_periods * sub.months_per_period)
        changes: dict[str, Any] = {"current_period_start": old_end, "current_period_end": new_end}
        disc = sub.obj.get("discount")
        if disc is not None and (
            (disc["coupon"]["duration"] == "once" and sub.once_used)
            or (disc["end"] is not None and disc["end"] <= t)
        ):
            changes["discount"] = None
            changes["discounts"] = []
        specs = self._cycle_lines(sub, old_end, new_end, metered_period=(old_start, old_end))
        prev = _set(sub.obj, **changes)
        inv = self._build_invoice(
            t,
            sub,
            "subscription_cycle",
            specs,
            (old_start, old_end),
            anomalies=sub.kind != "duplicate",
        )
        prev.update(_set(sub.obj, latest_invoice=inv.id))
        self.emit("customer.subscription.updated", sub.obj, t, prev)
        self._collect(inv, t)
        self._schedule(new_end, "renew", sub)

    def _on_duplicate_invoice(self, t: int, orig: Invoice) -> None:
        sub = orig.sub
        if sub is None or not sub.live:
            return
        o = orig.obj
        specs = [
            dict(
                price=line["price"],
                quantity=line["quantity"],
                amount=line["amount"],
                description=line["description"],
                period=(line["period"]["start"], line["period"]["end"]),
                proration=line["proration"],
                type=line["type"],
                item=line["subscription_item"],
            )
            for line in o["lines"]["data"]
        ]
        inv = self._build_invoice(
            t,
            sub,
            o["billing_reason"],
            specs,
            (o["period_start"], o["period_end"]),
            anomalies=False,
            discount=o["discount"],
        )
        inv.force_success = True
        self.anomaly(
            inv.id,
            "invoice",
            "duplicate_invoice",
            t,
            {"duplicate_of": orig.id, "total": inv.obj["total"]},
        )
        self._collect(inv, t)
        if inv.charge is not None and self._bern(0.6):
            # the customer notices and gets the duplicate refunded
            self._schedule(
                t + int((2 + 12 * self._u()) * DAY),
                "refund",
                (inv.charge, inv.pi["id"], inv.charge["amount"], "duplicate", None),
            )

    def _on_dup_cancel(self, t: int, sub: Sub) -> None:
        if not sub.live:
            return
        self._end_sub(sub, t, reason="cancellation_requested", feedback="other")
        for ch, pi_id in self.dup_charges.get(sub.id, []):
            self._refund(t + 1, ch, pi_id, ch["amount"] - ch["amount_refunded"], "duplicate", None)

    def _on_refund(self, t: int, payload: tuple) -> None:
        ch, pi_id, amount, reason, anomaly = payload
        self._refund(t, ch, pi_id, amount, reason, anomaly)

    def _refund(
        self, t: int, ch: Obj, pi_id: str | None, amount: int, reason: str, anomaly: str | None
    ) -> None:
        if ch["disputed"] or amount <= 0:
            return
        if anomaly is None:
            amount = min(amount, ch["amount"] - ch["amount_refunded"])
            if amount <= 0:
                return
        ref = so.refund(
            refund_id=self.ids.make("re"),
            charge_id=ch["id"],
            payment_intent_id=pi_id,
            amount=amount,
            currency=ch["currency"],
            created=t,
            reason=reason,
        )
        refunds = ch["refunds"]
        prev = {
            "amount_refunded": ch["amount_refunded"],
            "refunds": {"data": list(refunds["data"]), "total_count": refunds["total_count"]},
        }
        new_refunds = dict(
            refunds, data=[ref, *refunds["data"]], total_count=refunds["total_count"] + 1
        )
        ch["refunds"] = new_refunds
        ch["amount_refunded"] = ch["amount_refunded"] + amount
        prev.update(_set(ch, refunded=ch["amount_refunded"] >= ch["amount"]))
        self.emit("charge.refunded", ch, t, prev, requested=True)
        self.out.count("refunds")
        if anomaly:
            self.anomaly(
                ref["id"],
                "refund",
                anomaly,
                t,
                {"charge": ch["id"], "charge_amount": ch["amount"], "refund_amount": amount},
            )

    def _on_dispute(self, t: int, payload: tuple[Obj, str]) -> None:
        ch, pi_id = payload
        amount = ch["amount"] - ch["amount_refunded"]
        if ch["disputed"] or amount <= 0:
            return
        reason = self._pick(
            (
                "fraudulent",
                "subscription_canceled",
                "product_unacceptable",
                "unrecognized",
                "general",
            ),
            (0.3, 0.25, 0.1, 0.2, 0.15),
        )
        dp = so.dispute(
            dispute_id=self.ids.make("dp"),
            charge_id=ch["id"],
            payment_intent_id=pi_id,
            amount=amount,
            currency=ch["currency"],
            created=t,
            reason=reason,
            due_by=t + 21 * DAY,
        )
        ch["disputed"] = True
        self.emit("charge.dispute.created", dp, t)
        self.out.count("disputes")
        p_win = {"fraudulent": 0.5, "subscription_canceled": 0.3}.get(reason, 0.45)
        self._schedule(
            t + int((30 + 45 * self._u()) * DAY), "dispute_close", (dp, self._bern(p_win))
        )

    def _on_dispute_close(self, t: int, payload: tuple[Obj, bool]) -> None:
        dp, won = payload
        dp["status"] = "won" if won else "lost"
        dp["evidence_details"] = dict(dp["evidence_details"], has_evidence=True, submission_count=1)
        txns = [self._dispute_txn(dp, -dp["amount"], "dispute")]
        if won:
            txns.append(self._dispute_txn(dp, dp["amount"], "dispute_reversal"))
        dp["balance_transactions"] = txns
        self.emit("charge.dispute.closed", dp, t)
        self.out.count("disputes_won" if won else "disputes_lost")

    def _dispute_txn(self, dp: Obj, amount: int, category: str) -> Obj:
        return {
            "id": self.ids.make("txn"),
            "object": "balance_transaction",
            "amount": amount,
            "currency": dp["currency"],
            "reporting_category": category,
            "type": "adjustment",
        }

    # ----------------------------------------------------------------- monthly decisions
    def _on_tick(self, t: int, m: int) -> None:
        if m + 1 < self.tl.months:
            self._schedule(self.tl.month_starts[m + 1], "tick", m + 1)
        month_len = self.tl.month_length(m)
        h = self.health[m]
        live = self.is_live()
        if live:
            self._signals(t, m, h, month_len)
        main = self.main
        paying = (
            self.state == "paying"
            and main is not None
            and main.status in ("active", "past_due")
            and not main.obj["cancel_at_period_end"]
        )
        if paying:
            self._paying_month(t, m, h, month_len)
        elif (
            self.state == "churned"
            and self.churned_month is not None
            and m - self.churned_month <= REACTIVATION_WINDOW
            and self._bern(0.024 * bh.sigmoid(h + 0.5))
        ):
            self._schedule(t + int(self._u() * (month_len - DAY)), "reactivate", None)

    def _signals(self, t: int, m: int, h: float, month_len: int) -> None:
        main = self.main
        seats = main.licensed().get("quantity", 1) if main else 0
        score = min(100.0, max(0.0, round(50 + 15 * h + self._normal(0, 8), 1)))
        nps = None
        if self._bern(0.2):
            nps = int(min(10, max(0, round(7.2 + 1.6 * h + self._normal(0, 1.6)))))
        self.out.crm.append(
            (
                self.customer["id"],
                self.tl.day_of(t),
                score,
                nps,
                seats,
                min(seats, self.month_max_users),
                main.tier if main else None,
            )
        )
        self.month_max_users = 0
        self.last_score = score
        lam = {"small": 0.25, "medium": 0.5, "large": 0.9}[self.size] * math.exp(-0.5 * h)
        for _ in range(self._poisson(lam)):
            self._schedule(t + int(self._u() * month_len), "ticket", None)

    def _paying_month(self, t: int, m: int, h: float, month_len: int) -> None:
        main = self.main
        assert main is not None
        tenure = m - (self.paying_since or m)
        base = bh.voluntary_hazard(
            health=h,
            tenure_months=tenure,
            channel=self.channel,
            size=self.size,
            annual=main.interval == "year",
            regime_active=self.regime_active(m),
        )
        o = self.offer_state
        offer_delay = 0
        if not o.get("evaluated") and tenure >= 2 and self.last_score <= 35.0:
            o.update(evaluated=True, eligible=True, month=m, month_ts=t, hazard=base)
            o["assigned"] = self._bern(0.5)
            self.out.count("offer_eligible")
            if o["assigned"]:
                offer_delay = int(self._u() * 3 * DAY)
                o["offered_at"] = t + offer_delay
                self._schedule(t + offer_delay, "offer", None)
        offer_active = bool(o.get("offered_at")) and o["month"] <= m < o["month"] + bh.OFFER_MONTHS
        hazard = base * (1.0 - self.tau) if offer_active else base
        churn = self._bern(hazard)
        row = [
            self.customer["id"],
            t,
            m,
            tenure,
            h,
            base,
            offer_active,
            hazard,
            churn,
            "voluntary" if churn else None,
        ]
        self.hazard_rows[m] = row
        self.out.hazard.append(row)
        if churn:
            when = t + offer_delay + 1 + int(self._u() * (month_len - offer_delay - 2 * HOUR))
            self._schedule(when, "cancel", m)
            return
        # expansion, contraction, add-ons
        u = self._u()
        p_up = 0.045 * bh.sigmoid(1.5 * h) * (1.5 if self.size == "large" else 1.0)
        p_down = 0.035 * bh.sigmoid(-1.5 * h)
        tier_i = TIERS.index(main.tier)
        p_upg = 0.012 if h > 0.3 and tier_i < 3 else 0.0
        p_dng = 0.015 if h < -0.4 and tier_i > 0 else 0.0
        change = None
        if u < p_up:
            change = "seats_up"
        elif u < p_up + p_down:
            change = "seats_down"
        elif u < p_up + p_down + p_upg:
            change = "upgrade"
        elif u < p_up + p_down + p_upg + p_dng:
            change = "downgrade"
        if change:
            self._schedule(t + int(self._u() * (month_len - HOUR)), "change", change)
        if (
            h > 0
            and tier_i >= 1
            and not any(s.kind == "addon" and s.live for s in self.subs)
            and self._bern(0.012)
        ):
            self._schedule(t + int(self._u() * (month_len - HOUR)), "addon", None)

    def _ticket(self, t: int, category: str | None = None) -> None:
        h = self.h_at(t)
        severity = self._pick(signals.SEVERITIES, signals.ticket_severity_weights(h))
        if category is None:
            category = self._pick(signals.CATEGORIES, signals.ticket_category_weights(h))
        subject, body = signals.ticket_text(
            category, self._u(), frustrated=h < -1.0 and self._bern(0.5)
        )
        hours = {"low": 30.0, "medium": 18.0, "high": 8.0, "urgent": 3.0}[severity] * (
            0.3 + 1.4 * self._u()
        )
        resolved = t + int(hours * HOUR * (1.5 if h < -1 else 1.0))
        first_response = int(hours * 60 * 0.15 * (0.5 + self._u()))
        if resolved >= self.tl.end_ts:
            status, resolved_txt = "open", ""
        else:
            status, resolved_txt = ("closed" if self._bern(0.7) else "solved"), iso(resolved)
        tid = "tkt_" + self.ids.make("tk")[3:]
        self.out.tickets.append(
            (
                tid,
                self.customer["id"],
                iso(t),
                severity,
                category,
                status,
                resolved_txt,
                first_response,
                subject,
                body,
            )
        )

    def _on_ticket(self, t: int, _: Any) -> None:
        if self.is_live():
            self._ticket(t)

    def _on_offer(self, t: int, _: Any) -> None:
        main = self.main
        if main is None or not main.live:
            return
        coupon = self.cat.coupons[RETENTION_COUPON]
        disc = so.discount(
            discount_id=self.ids.make("di"),
            coupon_obj=coupon,
            customer_id=self.customer["id"],
            subscription_id=main.id,
            start=t,
            end=add_months(t, coupon["duration_in_months"]),
        )
        prev = _set(main.obj, discount=disc, discounts=[disc["id"]])
        main.once_used = False
        self.emit("customer.subscription.updated", main.obj, t, prev, requested=True)
        self.out.count("offers_made")

    def _on_cancel(self, t: int, m: int) -> None:
        main = self.main
        if main is None or not main.live or main.obj["cancel_at_period_end"]:
            return
        h = self.h_at(t)
        fb_w = (
            2.0
            + (1.5 if self.industry in bh.PRICE_SENSITIVE else 0.0)
            + (1.0 if self.regime_active(m) else 0.0),
            1.5 + max(0.0, -h),
            1.2,
            1.0,
            0.5 + 0.5 * max(0.0, -h),
            0.6,
            0.5,
            0.7,
        )
        feedback = self._pick(FEEDBACK, fb_w)
        immediate = self._bern(0.1 if main.interval == "year" else 0.25)
        self.out.count("voluntary_cancellations")
        if immediate:
            for sub in self.live_subs():
                self._end_sub(sub, t, reason="cancellation_requested", feedback=feedback)
            last = self.last_main_charge
            if last is not None and last[3] > t and self._bern(0.5):
                ch, pi_id, p_start, p_end = last
                amount = billing.prorate(ch["amount"], remaining=p_end - t, period=p_end - p_start)
                self._refund(t + 2, ch, pi_id, amount, "requested_by_customer", None)
            self._check_account_end(t, "voluntary")
        else:
            for sub in self.live_subs():
                prev = _set(
                    sub.obj,
                    cancel_at_period_end=True,
                    cancel_at=sub.obj["current_period_end"],
                    canceled_at=t,
                    cancellation_details={
                        "comment": None,
                        "feedback": feedback,
                        "reason": "cancellation_requested",
                    },
                )
                self.emit("customer.subscription.updated", sub.obj, t, prev, requested=True)

    def _end_sub(self, sub: Sub, t: int, *, reason: str | None, feedback: str | None) -> None:
        """Cancel ``sub`` now: void its open invoices and emit ``customer.subscription.deleted``."""
        for inv in [i for i in self.open_invoices.values() if i.sub is sub]:
            self._void(inv, t)
        obj = sub.obj
        details = obj["cancellation_details"]
        if reason is not None:
            details = {"comment": None, "feedback": feedback, "reason": reason}
        obj.update(
            status="canceled",
            ended_at=t,
            canceled_at=obj["canceled_at"] or t,
            cancellation_details=details,
        )
        self.emit(
            "customer.subscription.deleted", obj, t, requested=reason == "cancellation_requested"
        )

    def _check_account_end(self, t: int, kind: str) -> None:
        """After a subscription ended: if nothing is live, the account churned."""
        if self.is_live() or self.state != "paying":
            return
        for sub in self.live_subs():  # duplicates die with the account
            self._end_sub(sub, t, reason="cancellation_requested", feedback="other")
        self.state = "churned"
        m = self.month_of(t)
        self.churned_month = m
        self.out.churn.append((self.customer["id"], t, m, kind))
        self.out.count("churned_" + kind)
        row = self.hazard_rows.get(m)
        if kind == "involuntary" and row is not None and not row[8]:
            row[8] = True
            row[9] = "involuntary"

    def _involuntary_churn(self, t: int, inv: Invoice) -> None:
        if self.state != "paying":
            for sub in [s for s in self.live_subs() if s is inv.sub]:
                self._end_sub(sub, t, reason="payment_failed", feedback=None)
            return
        for sub in self.live_subs():
            self._end_sub(sub, t, reason="payment_failed", feedback=None)
        self._check_account_end(t, "involuntary")

    def _on_change(self, t: int, change: str) -> None:
        main = self.main
        if main is None or main.status != "active" or main.obj["cancel_at_period_end"]:
            return
        lic = main.licensed()
        qty = lic["quantity"]
        tier = main.tier
        if change == "seats_up":
            new_qty, new_tier = qty + max(1, int(qty * (0.05 + 0.25 * self._u()))), tier
        elif change == "seats_down":
            if qty <= 1:
                return
            new_qty, new_tier = max(1, qty - max(1, int(qty * (0.05 + 0.25 * self._u())))), tier
        elif change == "upgrade":
            new_qty, new_tier = qty, TIERS[TIERS.index(tier) + 1]
        else:
            new_qty, new_tier = qty, TIERS[TIERS.index(tier) - 1]
        new_price = self._price_for(new_tier, main.interval)
        new_item = dict(lic, price=new_price, quantity=new_qty)
        items = [new_item, *main.items()[1:]]
        prev = _set(main.obj, items=so.item_list(items, main.id))
        main.tier = new_tier
        if new_tier != tier:
            prev.update(_set(main.obj, metadata={"plan_tier": new_tier}))
        self.out.count("plan_changes")
        increase = new_price["unit_amount"] * new_qty > lic["price"]["unit_amount"] * qty
        p_start, p_end = main.obj["current_period_start"], main.obj["current_period_end"]
        if not increase:  # decreases take effect without proration credit
            self.emit("customer.subscription.updated", main.obj, t, prev, requested=True)
            return
        period, remaining = p_end - p_start, p_end - t
        old_amt = billing.prorate(
            lic["price"]["unit_amount"] * qty, remaining=remaining, period=period
        )
        new_amt = billing.prorate(
            new_price["unit_amount"] * new_qty, remaining=remaining, period=period
        )
        date_txt = from_ts(t).strftime("%d %b %Y")
        specs = [
            dict(
                price=lic["price"],
                quantity=qty,
                amount=-old_amt,
                period=(t, p_end),
                proration=True,
                type="invoiceitem",
                item=lic["id"],
                description=f"Unused time on {qty} × {TIER_NAMES[tier]} after {date_txt}",
            ),
            dict(
                price=new_price,
                quantity=new_qty,
                amount=new_amt,
                period=(t, p_end),
                proration=True,
                type="invoiceitem",
                item=lic["id"],
                description=f"Remaining time on {new_qty} × {TIER_NAMES[new_tier]} after {date_txt}",
            ),
        ]
        inv = self._build_invoice(t, main, "subscription_update", specs, (t, t), anomalies=False)
        prev.update(_set(main.obj, latest_invoice=inv.id))
        self.emit("customer.subscription.updated", main.obj, t, prev, requested=True)
        self._collect(inv, t)

    def _on_addon(self, t: int, _: Any) -> None:
        if (
            self.state != "paying"
            or self.main is None
            or not self.main.live
            or self.main.obj["cancel_at_period_end"]
        ):
            return
        self._create_subscription(
            t,
            kind="addon",
            tier=self.main.tier,
            seats=1,
            interval="month",
            trial=False,
            coupon_id=None,
        )
        self.out.count("addons")

    def _on_reactivate(self, t: int, _: Any) -> None:
        if self.state != "churned":
            return
        m = self.month_of(t)
        bump = 0.8
        for i in range(m, len(self.health)):
            self.health[i] += bump
        self.state = "pending"
        old = self.main
        self._create_subscription(
            t,
            kind="main",
            tier=old.tier if old else self.tier0,
            seats=old.licensed().get("quantity", self.seats0) if old else self.seats0,
            interval=old.interval if old else self.interval0,
            trial=False,
            coupon_id=None,
        )
