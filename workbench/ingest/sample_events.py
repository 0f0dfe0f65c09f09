"""Stripe-shaped sample events for tests and the ingestion benchmark.

A small, deterministic generator of the events a subscription business receives from
Stripe: customers, prices, subscriptions with items (created, updated, deleted),
invoices with lines, charges (succeeded and failed, with retries), refunds, disputes,
payment intents (an ignored type) and the odd unknown type. Objects carry Stripe's
real field names and nesting (API version 2020-08-27 by default; ``new_shapes=True``
makes some objects use the 2025 shapes: periods on items, invoice ``parent``).

This is not the simulator (``workbench.simulator``), which models a whole company
with ground truth; it exists so that ingestion can be tested and benchmarked on its
own with varied, realistic payloads.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
DAY = 86_400

_CATALOG = (
    # price id, product, unit amount, currency, interval, interval_count, usage_type
    ("price_1NBasicMonthlyUSDxxxxxx", "prod_NBasicxxxxxxx", 2900, "usd", "month", 1, "licensed"),
    ("price_1NProMonthlyUSDxxxxxxxx", "prod_NProxxxxxxxxx", 9900, "usd", "month", 1, "licensed"),
    ("price_1NProAnnualUSDxxxxxxxxx", "prod_NProxxxxxxxxx", 99000, "usd", "year", 1, "licensed"),
    ("price_1NTeamMonthlyEURxxxxxxx", "prod_NTeamxxxxxxxx", 4900, "eur", "month", 1, "licensed"),
    ("price_1NSeatsQuarterlyGBPxxxx", "prod_NSeatsxxxxxxx", 1500, "gbp", "month", 3, "licensed"),
    ("price_1NApiCallsMeteredUSDxxx", "prod_NApixxxxxxxxx", 2, "usd", "month", 1, "metered"),
)


class _Ids:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.n = 0

    def make(self, prefix: str, length: int = 24) -> str:
        # Letters first and a counter in base 52 keep long digit runs (card-number lookalikes) out.
        self.n += 1
        n, head = self.n, []
        while n:
            n, r = divmod(n, 52)
            head.append(_ALNUM[r])
        body = "".join(reversed(head)) + "".join(self.rng.choices(_ALNUM, k=length))
        return f"{prefix}_1{body[:length]}"


def _price(entry: tuple, created: int) -> dict:
    pid, prod, amount, cur, interval, count, usage = entry
    return {
        "id": pid,
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": created,
        "currency": cur,
        "livemode": False,
        "lookup_key": None,
        "metadata": {},
        "nickname": None,
        "product": prod,
        "recurring": {
            "aggregate_usage": "sum" if usage == "metered" else None,
            "interval": interval,
            "interval_count": count,
            "trial_period_days": None,
            "usage_type": usage,
        },
        "tax_behavior": "unspecified",
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "recurring",
        "unit_amount": amount,
        "unit_amount_decimal": str(amount),
    }


def _plan(entry: tuple, created: int) -> dict:
    pid, prod, amount, cur, interval, count, usage = entry
    return {
        "id": pid,
        "object": "plan",
        "active": True,
        "aggregate_usage": "sum" if usage == "metered" else None,
        "amount": amount,
        "amount_decimal": str(amount),
        "billing_scheme": "per_unit",
        "created": created,
        "currency": cur,
        "interval": interval,
        "interval_count": count,
        "livemode": False,
        "metadata": {},
        "nickname": None,
        "product": prod,
        "tiers_mode": None,
        "transform_usage": None,
        "trial_period_days": None,
        "usage_type": usage,
    }


class _Company:
    """Generates events account by account, in creation order per object."""

    def __init__(self, *, seed: int, start: int, months: int, new_shapes: bool) -> None:
        self.rng = random.Random(seed)
        self.ids = _Ids(self.rng)
        self.start = start
        self.end = start + months * 30 * DAY
        self.new_shapes = new_shapes

    # ------------------------------------------------------------------ envelope
    def event(self, type_: str, obj: dict, created: int, previous: dict | None = None) -> dict:
        data: dict = {"object": obj}
        if previous is not None:
            data["previous_attributes"] = previous
        return {
            "id": self.ids.make("evt"),
            "object": "event",
            "api_version": "2025-03-31.basil" if self.new_shapes else "2020-08-27",
            "created": created,
            "data": data,
            "livemode": False,
            "pending_webhooks": self.rng.randint(0, 2),
            "request": {"id": self.ids.make("req", 14), "idempotency_key": None},
            "type": type_,
        }

    def catalog(self) -> Iterator[dict]:
        for entry in _CATALOG:
            yield self.event(
                "price.created", _price(entry, self.start - 30 * DAY), self.start - 30 * DAY
            )
            yield self.event(
                "plan.created", _plan(entry, self.start - 30 * DAY), self.start - 30 * DAY
            )

    # ------------------------------------------------------------------ objects
    def customer(self, cid: str, created: int, n: int) -> dict:
        return {
            "id": cid,
            "object": "customer",
            "address": {
                "city": "Springfield",
                "country": self.rng.choice(["US", "DE", "GB", "FR"]),
                "line1": f"{n} Main St",
                "line2": None,
                "postal_code": "12345",
                "state": None,
            },
            "balance": 0,
            "created": created,
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "discount": None,
            "email": f"customer{n}@example.com",
            "invoice_prefix": "ABCD" + f"{n % 9999:04d}",
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
            },
            "livemode": False,
            "metadata": {
                "region": self.rng.choice(["NA", "EU", "APAC"]),
                "channel": self.rng.choice(["self-serve", "sales"]),
                "industry": self.rng.choice(["saas", "retail", "health"]),
                "size": self.rng.choice(["smb", "mid", "ent"]),
            },
            "name": f"Customer {n}",
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
        }

    def subscription(self, s: dict, now: int) -> dict:
        items = []
        for it in s["items"]:
            entry = it["entry"]
            item = {
                "id": it["id"],
                "object": "subscription_item",
                "billing_thresholds": None,
                "created": s["created"],
                "metadata": {},
                "plan": _plan(entry, self.start - 30 * DAY),
                "price": _price(entry, self.start - 30 * DAY),
                "quantity": None if entry[6] == "metered" else it["quantity"],
                "subscription": s["id"],
                "tax_rates": [],
            }
            if self.new_shapes:
                item["current_period_start"] = s["period_start"]
                item["current_period_end"] = s["period_end"]
            items.append(item)
        obj = {
            "id": s["id"],
            "object": "subscription",
            "application_fee_percent": None,
            "billing_cycle_anchor": s["created"],
            "billing_thresholds": None,
            "cancel_at": None,
            "cancel_at_period_end": False,
            "canceled_at": s.get("canceled_at"),
            "collection_method": "charge_automatically",
            "created": s["created"],
            "currency": s["currency"],
            "customer": s["customer"],
            "days_until_due": None,
            "default_payment_method": None,
            "default_tax_rates": [],
            "discount": s.get("discount"),
            "ended_at": s.get("ended_at"),
            "items": {
                "object": "list",
                "data": items,
                "has_more": False,
                "total_count": len(items),
                "url": f"/v1/subscription_items?subscription={s['id']}",
            },
            "latest_invoice": s.get("latest_invoice"),
            "livemode": False,
            "metadata": {},
            "pause_collection": None,
            "quantity": items[0]["quantity"] if len(items) == 1 else None,
            "schedule": None,
            "start_date": s["created"],
            "status": s["status"],
            "trial_end": s.get("trial_end"),
            "trial_start": s.get("trial_start"),
        }
        if not self.new_shapes:
            obj["current_period_start"] = s["period_start"]
            obj["current_period_end"] = s["period_end"]
            obj["plan"] = items[0]["plan"] if len(items) == 1 else None
        return obj

    def invoice(self, inv: dict) -> dict:
        lines = []
        for ln in inv["lines"]:
            line = {
                "id": ln["id"],
                "object": "line_item",
                "amount": ln["amount"],
                "currency": inv["currency"],
                "description": None,
                "discount_amounts": [{"amount": ln["discount"], "discount": "di_x"}]
                if ln["discount"]
                else [],
                "discountable": True,
                "livemode": False,
                "metadata": {},
                "period": {"end": inv["period_end"], "start": inv["period_start"]},
                "quantity": ln["quantity"],
            }
            if self.new_shapes:
                line["parent"] = {
                    "type": "subscription_item_details",
                    "subscription_item_details": {
                        "invoice_item": None,
                        "proration": False,
                        "subscription": inv["subscription"],
                        "subscription_item": ln["item"],
                    },
                }
                line["pricing"] = {
                    "type": "price_details",
                    "price_details": {"price": ln["price"], "product": "prod_x"},
                    "unit_amount_decimal": str(ln["unit"]),
                }
            else:
                line.update(
                    {
                        "plan": None,
                        "price": _price(ln["entry"], self.start - 30 * DAY),
                        "proration": False,
                        "subscription": inv["subscription"],
                        "subscription_item": ln["item"],
                        "type": "subscription",
                    }
                )
            lines.append(line)
        subtotal = sum(ln["amount"] for ln in inv["lines"])
        discount = sum(ln["discount"] for ln in inv["lines"])
        total = subtotal - discount
        paid = inv["status"] == "paid"
        obj = {
            "id": inv["id"],
            "object": "invoice",
            "account_country": "US",
            "account_name": "Sample Co",
            "amount_due": total,
            "amount_paid": total if paid else 0,
            "amount_remaining": 0 if paid else total,
            "attempt_count": inv["attempts"],
            "attempted": inv["attempts"] > 0,
            "auto_advance": not paid,
            "billing_reason": inv["reason"],
            "collection_method": "charge_automatically",
            "created": inv["created"],
            "currency": inv["currency"],
            "customer": inv["customer"],
            "customer_email": inv["email"],
            "customer_name": inv["name"],
            "description": None,
            "discount": None,
            "due_date": None,
            "ending_balance": 0,
            "hosted_invoice_url": None,
            "lines": {
                "object": "list",
                "data": lines,
                "has_more": False,
                "total_count": len(lines),
                "url": f"/v1/invoices/{inv['id']}/lines",
            },
            "livemode": False,
            "metadata": {},
            "next_payment_attempt": inv.get("next_attempt"),
            "number": inv["number"],
            "paid": paid,
            "period_end": inv["period_end"],
            "period_start": inv["period_start"],
            "status": inv["status"],
            "status_transitions": {
                "finalized_at": inv.get("finalized_at"),
                "marked_uncollectible_at": None,
                "paid_at": inv.get("paid_at"),
                "voided_at": None,
            },
            "subtotal": subtotal,
            "tax": 0,
            "total": total,
            "total_discount_amounts": [{"amount": discount, "discount": "di_x"}]
            if discount
            else [],
        }
        if self.new_shapes:
            obj["parent"] = {
                "type": "subscription_details",
                "subscription_details": {"subscription": inv["subscription"], "metadata": {}},
            }
        else:
            obj["subscription"] = inv["subscription"]
            obj["charge"] = inv.get("charge")
            obj["payment_intent"] = inv.get("payment_intent")
        return obj

    def charge(self, ch: dict) -> dict:
        failed = ch["status"] == "failed"
        return {
            "id": ch["id"],
            "object": "charge",
            "amount": ch["amount"],
            "amount_captured": 0 if failed else ch["amount"],
            "amount_refunded": ch.get("refunded", 0),
            "balance_transaction": None if failed else self.ids.make("txn"),
            "billing_details": {
                "address": {
                    "city": None,
                    "country": None,
                    "line1": None,
                    "line2": None,
                    "postal_code": "12345",
                    "state": None,
                },
                "email": ch["email"],
                "name": ch["name"],
                "phone": None,
            },
            "captured": not failed,
            "created": ch["created"],
            "currency": ch["currency"],
            "customer": ch["customer"],
            "description": "Subscription update",
            "disputed": ch.get("disputed", False),
            "failure_code": ch.get("failure_code"),
            "failure_message": "Your card was declined." if failed else None,
            "invoice": ch["invoice"],
            "livemode": False,
            "metadata": {},
            "outcome": {
                "network_status": "declined_by_network" if failed else "approved_by_network",
                "reason": ch.get("decline_code"),
                "risk_level": "normal",
                "risk_score": 20,
                "seller_message": "The bank did not return any further details with this decline."
                if failed
                else "Payment complete.",
                "type": "issuer_declined" if failed else "authorized",
            },
            "paid": not failed,
            "payment_intent": ch["payment_intent"],
            "payment_method": ch["pm"],
            "payment_method_details": {
                "card": {
                    "brand": ch["brand"],
                    "checks": {"cvc_check": "pass"},
                    "country": "US",
                    "exp_month": ch["exp_month"],
                    "exp_year": ch["exp_year"],
                    "fingerprint": "Xt5EWLLDS7FJjR1c",
                    "funding": "credit",
                    "last4": ch["last4"],
                    "network": ch["brand"],
                    "three_d_secure": None,
                    "wallet": None,
                },
                "type": "card",
            },
            "receipt_email": ch["email"],
            "refunded": ch.get("refunded", 0) >= ch["amount"],
            "refunds": {
                "object": "list",
                "data": ch.get("refunds", []),
                "has_more": False,
                "total_count": len(ch.get("refunds", [])),
                "url": f"/v1/charges/{ch['id']}/refunds",
            },
            "status": ch["status"],
        }

    # ------------------------------------------------------------------ story
    def account(self, n: int) -> Iterator[dict]:
        rng = self.rng
        created = self.start + rng.randrange(0, max(1, (self.end - self.start) // 2))
        cid = self.ids.make("cus", 14)
        cust = self.customer(cid, created, n)
        yield self.event("customer.created", cust, created)
        entries = rng.sample(_CATALOG[:5], k=rng.choice([1, 1, 1, 2]))
        currency = entries[0][3]
        entries = [e for e in entries if e[3] == currency]
        if rng.random() < 0.2:
            entries.append(_CATALOG[5] if currency == "usd" else entries[0])
        entries = list(dict.fromkeys(entries))
        interval_days = {"month": 30, "year": 365}
        step = interval_days[entries[0][4]] * entries[0][5]
        trial = rng.random() < 0.3
        s = {
            "id": self.ids.make("sub"),
            "customer": cid,
            "currency": currency,
            "created": created + 5,
            "status": "trialing" if trial else "active",
            "trial_start": created + 5 if trial else None,
            "trial_end": created + 5 + 14 * DAY if trial else None,
            "period_start": created + 5,
            "period_end": created + 5 + (14 * DAY if trial else step * DAY),
            "items": [
                {"id": self.ids.make("si", 14), "entry": e, "quantity": rng.randint(1, 20)}
                for e in entries
            ],
        }
        if rng.random() < 0.15:
            s["discount"] = {
                "object": "discount",
                "coupon": {
                    "id": "SPRING25",
                    "object": "coupon",
                    "amount_off": None,
                    "currency": None,
                    "duration": "repeating",
                    "duration_in_months": 3,
                    "percent_off": 25.0,
                    "valid": True,
                },
                "customer": cid,
                "end": created + 90 * DAY,
                "start": created + 5,
                "subscription": s["id"],
            }
        yield self.event(
            "customer.subscription.created", self.subscription(s, created + 5), created + 5
        )
        if rng.random() < 0.1:
            yield self.event(
                "unknown.future_type", {"id": self.ids.make("obj"), "object": "future"}, created + 6
            )
        number = 0
        now = s["period_end"] if trial else s["period_start"]
        pm = self.ids.make("pm")
        brand, last4 = rng.choice([("visa", "4242"), ("mastercard", "4444"), ("amex", "0005")])
        churn_at = self.end if rng.random() < 0.7 else now + rng.randrange(30, 400) * DAY
        while now < min(self.end, churn_at):
            if s["status"] == "trialing":
                s["status"] = "active"
            s["period_start"], s["period_end"] = now, now + step * DAY
            if rng.random() < 0.08:  # upgrade or downgrade
                it = rng.choice(s["items"])
                old = it["quantity"]
                it["quantity"] = max(1, old + rng.choice([-3, -1, 1, 2, 5]))
                yield self.event(
                    "customer.subscription.updated",
                    self.subscription(s, now),
                    now,
                    {"quantity": old},
                )
            number += 1
            inv = {
                "id": self.ids.make("in"),
                "customer": cid,
                "subscription": s["id"],
                "currency": currency,
                "created": now + 60,
                "period_start": now - step * DAY,
                "period_end": now,
                "status": "draft",
                "attempts": 0,
                "reason": "subscription_cycle" if number > 1 else "subscription_create",
                "number": f"ABCD-{number:04d}",
                "email": cust["email"],
                "name": cust["name"],
                "lines": [],
            }
            for it in s["items"]:
                e = it["entry"]
                qty = rng.randint(0, 5000) if e[6] == "metered" else it["quantity"]
                amount = e[2] * qty
                disc = amount // 4 if s.get("discount") and number <= 3 else 0
                inv["lines"].append(
                    {
                        "id": self.ids.make("il"),
                        "amount": amount,
                        "discount": disc,
                        "quantity": qty,
                        "item": it["id"],
                        "price": e[0],
                        "entry": e,
                        "unit": e[2],
                    }
                )
            yield self.event("invoice.created", self.invoice(inv), now + 60)
            inv["status"], inv["finalized_at"] = "open", now + 3600
            yield self.event("invoice.finalized", self.invoice(inv), now + 3600)
            pi = self.ids.make("pi")
            inv["payment_intent"] = pi
            total = sum(ln["amount"] - ln["discount"] for ln in inv["lines"])
            t = now + 3700
            paid = False
            for attempt in range(4):
                inv["attempts"] = attempt + 1
                fail = rng.random() < (0.12 if attempt == 0 else 0.45)
                exp_year = 2030
                ch = {
                    "id": self.ids.make("ch"),
                    "amount": total,
                    "currency": currency,
                    "customer": cid,
                    "created": t,
                    "invoice": inv["id"],
                    "payment_intent": pi,
                    "pm": pm,
                    "brand": brand,
                    "last4": last4,
                    "exp_month": rng.randint(1, 12),
                    "exp_year": exp_year,
                    "status": "failed" if fail else "succeeded",
                    "email": cust["email"],
                    "name": cust["name"],
                }
                if fail:
                    ch["failure_code"] = "card_declined"
                    ch["decline_code"] = rng.choice(
                        ["insufficient_funds", "generic_decline", "do_not_honor"]
                    )
                    yield self.event("charge.failed", self.charge(ch), t)
                    inv["next_attempt"] = t + 3 * DAY
                    yield self.event("invoice.payment_failed", self.invoice(inv), t + 1)
                    t += 3 * DAY
                    continue
                yield self.event("charge.succeeded", self.charge(ch), t)
                yield self.event(
                    "payment_intent.succeeded",
                    {
                        "id": pi,
                        "object": "payment_intent",
                        "amount": total,
                        "currency": currency,
                        "customer": cid,
                        "invoice": inv["id"],
                        "status": "succeeded",
                        "latest_charge": ch["id"],
                        "created": now + 3600,
                    },
                    t + 1,
                )
                inv["status"], inv["paid_at"], inv["charge"], inv["next_attempt"] = (
                    "paid",
                    t,
                    ch["id"],
                    None,
                )
                yield self.event("invoice.paid", self.invoice(inv), t + 2)
                yield self.event("invoice.payment_succeeded", self.invoice(inv), t + 2)
                paid = True
                if rng.random() < 0.03 and total > 0:
                    rid = self.ids.make("re")
                    refund = {
                        "id": rid,
                        "object": "refund",
                        "amount": total // 2,
                        "charge": ch["id"],
                        "created": t + 5 * DAY,
                        "currency": currency,
                        "payment_intent": pi,
                        "reason": "requested_by_customer",
                        "status": "succeeded",
                        "metadata": {},
                    }
                    ch["refunded"], ch["refunds"] = total // 2, [refund]
                    yield self.event("charge.refunded", self.charge(ch), t + 5 * DAY)
                if rng.random() < 0.01 and total > 0:
                    dp = {
                        "id": self.ids.make("dp"),
                        "object": "dispute",
                        "amount": total,
                        "charge": ch["id"],
                        "created": t + 9 * DAY,
                        "currency": currency,
                        "reason": "fraudulent",
                        "status": "needs_response",
                        "is_charge_refundable": False,
                        "metadata": {},
                        "evidence_details": {
                            "due_by": t + 20 * DAY,
                            "has_evidence": False,
                            "past_due": False,
                            "submission_count": 0,
                        },
                    }
                    yield self.event("charge.dispute.created", dp, t + 9 * DAY)
                    dp = dict(dp, status=rng.choice(["won", "lost"]))
                    yield self.event("charge.dispute.closed", dp, t + 30 * DAY)
                break
            if not paid:
                s["status"] = "past_due"
                inv["status"] = "uncollectible"
                yield self.event("invoice.marked_uncollectible", self.invoice(inv), t)
                yield self.event(
                    "customer.subscription.updated",
                    self.subscription(s, t),
                    t,
                    {"status": "active"},
                )
                churn_at = min(churn_at, t + DAY)
            s["latest_invoice"] = inv["id"]
            if rng.random() < 0.05:
                cust = dict(cust, email=f"billing{n}@example.org")
                yield self.event("customer.updated", cust, now + 7200, {"email": "old"})
            now += step * DAY
        if churn_at < self.end:
            end = max(churn_at, s["created"] + 60)
            s["status"], s["canceled_at"], s["ended_at"] = "canceled", end, end
            yield self.event("customer.subscription.deleted", self.subscription(s, end), end)


def sample_events(
    *,
    accounts: int = 20,
    months: int = 12,
    seed: int = 0,
    start: int = 1_672_531_200,
    new_shapes: bool = False,
) -> list[dict]:
    """Stripe-shaped events of a small subscription company, in creation order per account.

    Args:
        accounts: Customers to simulate.
        months: Length of the story in (30-day) months.
        seed: Random seed; the same seed gives the same events.
        start: Unix seconds of the first day.
        new_shapes: Use the 2025 object shapes for every object (periods on items,
            invoice ``parent``, line ``pricing``) instead of the 2020-08-27 ones.

    Returns:
        Event dicts (``id``, ``type``, ``created``, ``data.object`` ...).
    """
    company = _Company(seed=seed, start=start, months=months, new_shapes=new_shapes)
    events = list(company.catalog())
    for n in range(accounts):
        events.extend(company.account(n))
    return events


def write_jsonl(events: list[dict], path: Path) -> Path:
    """Write events as compact JSON lines (one event per line) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for event in events:
            fh.write(json.dumps(event, separators=(",", ":")))
            fh.write("\n")
    return path
