"""Stripe events to version rows, as set-based SQL in DuckDB.

Each record's JSON is parsed once, by ``json_transform`` into one struct that holds
the event envelope and the union of the object fields the warehouse uses (customers,
prices and plans, subscriptions with items, invoices with lines, charges with their
refunds, refunds, disputes). Money, counts and times are extracted as raw JSON text
and converted with strict rules, so that ``12.5`` or ``"1500"`` where Stripe sends an
integer is reported as ``wrong_type`` instead of being rounded or cast silently.

Field names follow Stripe's API across versions: where a field moved (the 2025
shapes put the billing period on subscription items, the subscription of an invoice
under ``parent``, the price of a line under ``pricing``), both places are read.

Temporary tables used during one load (all prefixed ``wb_``): ``wb_raw`` (the
records, registered from Arrow), ``wb_stage`` (parsed), the view ``wb_new`` (the
records to project) and one ``wb_v_<version table>`` per projection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import duckdb
import pandas as pd

from ..engines import Engine

#: a DuckDB connection or an engine (:class:`~workbench.engines.SparkEngine`)
Connection = duckdb.DuckDBPyConnection | Engine

# ----------------------------------------------------------------------------- JSON spec

_PRICE = {
    "id": "VARCHAR",
    "object": "VARCHAR",
    "currency": "VARCHAR",
    "unit_amount": "JSON",
    "amount": "JSON",
    "billing_scheme": "VARCHAR",
    "interval": "VARCHAR",
    "interval_count": "JSON",
    "usage_type": "VARCHAR",
    "recurring": {"interval": "VARCHAR", "interval_count": "JSON", "usage_type": "VARCHAR"},
    "product": "VARCHAR",
    "nickname": "VARCHAR",
    "active": "BOOLEAN",
    "created": "JSON",
}
_COUPON = {
    "id": "VARCHAR",
    "percent_off": "JSON",
    "amount_off": "JSON",
    "duration": "VARCHAR",
    "duration_in_months": "JSON",
}
_ITEM = {
    "id": "VARCHAR",
    "created": "JSON",
    "quantity": "JSON",
    "current_period_start": "JSON",
    "current_period_end": "JSON",
    "price": _PRICE,
    "plan": _PRICE,
}
_LINE = {
    "id": "VARCHAR",
    "amount": "JSON",
    "currency": "VARCHAR",
    "quantity": "JSON",
    "proration": "BOOLEAN",
    "type": "VARCHAR",
    "subscription": "VARCHAR",
    "subscription_item": "VARCHAR",
    "period": {"start": "JSON", "end": "JSON"},
    "price": {"id": "VARCHAR"},
    "plan": {"id": "VARCHAR"},
    "pricing": {"price_details": {"price": "VARCHAR"}},
    "parent": {
        "type": "VARCHAR",
        "subscription_item_details": {
            "subscription": "VARCHAR",
            "subscription_item": "VARCHAR",
            "proration": "BOOLEAN",
        },
        "invoice_item_details": {"subscription": "VARCHAR", "proration": "BOOLEAN"},
    },
    "discount_amounts": [{"amount": "JSON"}],
}
_REFUND = {
    "id": "VARCHAR",
    "amount": "JSON",
    "charge": "VARCHAR",
    "created": "JSON",
    "currency": "VARCHAR",
    "reason": "VARCHAR",
    "status": "VARCHAR",
}
_CARD = {"brand": "VARCHAR", "last4": "VARCHAR", "exp_month": "JSON", "exp_year": "JSON"}
_OBJECT = {
    # every object
    "id": "VARCHAR",
    "object": "VARCHAR",
    "created": "JSON",
    "currency": "VARCHAR",
    "customer": "VARCHAR",
    "status": "VARCHAR",
    "metadata": "JSON",
    "deleted": "BOOLEAN",
    # customer
    "name": "VARCHAR",
    "email": "VARCHAR",
    "address": {"country": "VARCHAR"},
    "delinquent": "BOOLEAN",
    # price / plan
    **{k: v for k, v in _PRICE.items() if k not in ("id", "object", "currency", "created")},
    # subscription
    "start_date": "JSON",
    "current_period_start": "JSON",
    "current_period_end": "JSON",
    "trial_start": "JSON",
    "trial_end": "JSON",
    "cancel_at_period_end": "BOOLEAN",
    "cancel_at": "JSON",
    "canceled_at": "JSON",
    "ended_at": "JSON",
    "discount": {
        "coupon": _COUPON,
        "start": "JSON",
        "end": "JSON",
        "source": {"coupon": "VARCHAR"},
    },
    "items": {"data": "JSON"},  # parsed per subscription (see _unnested)
    # invoice
    "subscription": "VARCHAR",
    "parent": {"subscription_details": {"subscription": "VARCHAR"}},
    "billing_reason": "VARCHAR",
    "period_start": "JSON",
    "period_end": "JSON",
    "subtotal": "JSON",
    "total": "JSON",
    "tax": "JSON",
    "total_taxes": [{"amount": "JSON"}],
    "total_discount_amounts": [{"amount": "JSON"}],
    "amount_due": "JSON",
    "amount_paid": "JSON",
    "amount_remaining": "JSON",
    "attempt_count": "JSON",
    "next_payment_attempt": "JSON",
    "charge": "VARCHAR",
    "payment_intent": "VARCHAR",
    "status_transitions": {
        "finalized_at": "JSON",
        "paid_at": "JSON",
        "marked_uncollectible_at": "JSON",
        "voided_at": "JSON",
    },
    "lines": {"data": "JSON"},
    # charge
    "amount_refunded": "JSON",
    "invoice": "VARCHAR",
    "failure_code": "VARCHAR",
    "outcome": {"reason": "VARCHAR", "type": "VARCHAR"},
    "payment_method_details": {"card": _CARD},
    "source": _CARD,
    "disputed": "BOOLEAN",
    "paid": "BOOLEAN",
    "refunds": {"data": "JSON"},
    # refund, dispute
    "reason": "VARCHAR",
}
_ENVELOPE = {
    "id": "VARCHAR",
    "object": "VARCHAR",
    "type": "VARCHAR",
    "created": "JSON",
    "api_version": "VARCHAR",
    "data": {"object": _OBJECT},
}
SPEC = json.dumps(_ENVELOPE, separators=(",", ":"))
#: Lists are kept as JSON by the first parse (building nested lists of structs for every
#: record is slow) and parsed with these specs only for the objects that have them.
LIST_SPECS = {
    "items": json.dumps([_ITEM], separators=(",", ":")),
    "lines": json.dumps([_LINE], separators=(",", ":")),
    "refunds": json.dumps([_REFUND], separators=(",", ":")),
}

#: Earliest plausible event time (2000-01-01).
MIN_EPOCH = 946_684_800

_INT = "'-?[0-9]{1,18}'"
_SECONDS = "'[0-9]{1,10}'"  # unix seconds from 1970 up to the year 2286

MACROS = f"""
CREATE OR REPLACE TEMP MACRO wb_int(x) AS
  CASE WHEN regexp_full_match(x::VARCHAR, {_INT}) THEN CAST(x::VARCHAR AS BIGINT) END;
CREATE OR REPLACE TEMP MACRO wb_ts(x) AS
  CASE WHEN regexp_full_match(x::VARCHAR, {_SECONDS}) THEN to_timestamp(CAST(x::VARCHAR AS BIGINT)) END;
CREATE OR REPLACE TEMP MACRO wb_num(x) AS TRY_CAST(x::VARCHAR AS DOUBLE);
CREATE OR REPLACE TEMP MACRO wb_ref(x) AS
  CASE WHEN starts_with(x, '{{') THEN json_extract_string(x, '$.id') ELSE x END;
"""


def _statements(sql: str) -> list[str]:
    """The statements of a script of ours (no ``;`` inside literals)."""
    return [part.strip() for part in sql.split(";") if part.strip()]


def install_macros(con: Connection) -> None:
    """Create the SQL helpers used by the projections on this connection (or engine: the
    Spark engine inlines them into later statements)."""
    con.execute("SET TimeZone = 'UTC'")
    for statement in _statements(MACROS):
        con.execute(statement)


# ----------------------------------------------------------------------------- staging


def stage(con: Connection, *, received_epoch: int) -> None:
    """Parse ``wb_raw`` (file_idx, line, text, sha, problem, blank) into ``wb_stage``.

    ``wb_stage`` has one row per non-blank record: the envelope columns, ``o`` (the struct
    of ``data.object``), and ``rule``/``column_name``/``value`` saying why a record is not a
    usable event (``rule`` is null for usable ones). ``status`` and ``keep`` are filled
    later (duplicate detection, type registry).
    """
    latest = received_epoch + 86_400
    created_ok = f"wb_int(created_raw) BETWEEN {MIN_EPOCH} AND {latest}"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE wb_stage AS
        SELECT file_idx, line, sha, event_id, type, created_raw, api_version, o,
          -- which set of lines an invoice has (lines repeat unchanged across its events)
          CASE WHEN o.object = 'invoice' AND o.lines.data IS NOT NULL
               THEN hash(o.lines.data)::VARCHAR END AS lines_hash,
          CASE
            WHEN problem IS NOT NULL THEN problem
            WHEN NOT parsed THEN 'malformed_json'
            WHEN event_id IS NULL AND type IS NULL AND o.object IS NULL THEN 'not_an_event'
            WHEN event_id IS NULL OR event_id = '' OR type IS NULL OR type = ''
                 OR created_raw IS NULL THEN 'missing_required'
            WHEN wb_int(created_raw) IS NULL THEN 'wrong_type'
            WHEN NOT {created_ok} THEN 'out_of_range'
            WHEN o.object IS NULL AND o.id IS NULL THEN 'missing_required'
          END AS rule,
          CASE
            WHEN problem IS NOT NULL OR NOT parsed THEN NULL
            WHEN event_id IS NULL AND type IS NULL AND o.object IS NULL THEN NULL
            WHEN event_id IS NULL OR event_id = '' THEN 'id'
            WHEN type IS NULL OR type = '' THEN 'type'
            WHEN created_raw IS NULL OR NOT coalesce({created_ok}, false) THEN 'created'
            WHEN o.object IS NULL AND o.id IS NULL THEN 'data.object'
          END AS column_name,
          CASE WHEN parsed AND event_id IS NOT NULL AND type IS NOT NULL
                    AND NOT coalesce({created_ok}, false) THEN created_raw::VARCHAR END AS value,
          NULL::VARCHAR AS status,
          false AS keep
        FROM (
            SELECT file_idx, line, sha, problem, e IS NOT NULL AS parsed,
                   e.id AS event_id, e.type AS type, e.created AS created_raw,
                   e.api_version AS api_version, e.data.object AS o
            FROM (
                SELECT file_idx, line, sha, problem, try(json_transform(text, '{SPEC}')) AS e
                FROM wb_raw WHERE NOT blank
            )
        )
        """
    )


def new_records_sql(where: str = "s.keep") -> str:
    """The records to project (``wb_new``): the staged records ``where`` holds, with their
    version time and source (``wb_files``: file_idx, source)."""
    return f"""
            SELECT s.event_id, to_timestamp(wb_int(s.created_raw)) AS version_at, s.type,
                   f.source, s.o, s.lines_hash
            FROM wb_stage s JOIN wb_files f USING (file_idx)
            WHERE {where}
            """


# ----------------------------------------------------------------------------- projections


@dataclass(frozen=True)
class Col:
    """One projected column.

    ``kind``: ``s`` text, ``i`` integer from raw JSON, ``t`` unix seconds to timestamp,
    ``f`` number, ``b`` boolean, ``j`` JSON, ``r`` an id or an expanded object's id,
    ``x`` an SQL expression that is already typed (no type check). ``required``: the
    record is rejected (``missing_required``) when the field is absent or null, unless
    the object is a deletion stub and the column is not its ``key``.
    """

    name: str
    kind: str
    expr: str
    required: bool = False
    key: bool = False  # the object's own id: required even in a deletion stub

    def typed(self, ref: str) -> str:
        """The typed value, from the raw value in column ``ref``."""
        wrap = {"i": "wb_int({})", "t": "wb_ts({})", "f": "wb_num({})", "r": "wb_ref({})"}
        return wrap.get(self.kind, "{}").format(ref)

    def problems(self, ref: str) -> list[str]:
        """SQL struct literals (or NULL) describing what is wrong with the raw value in ``ref``."""
        out = []
        if self.required:
            # A deletion stub ({"id", "object", "deleted": true}) only needs its id.
            cond = f"{ref} IS NULL" if self.key else f"{ref} IS NULL AND NOT _stub"
            out.append(
                f"CASE WHEN {cond} THEN {{'c': '{self.name}', 'r': 'missing_required', 'v': NULL}} END"
            )
        text = f"{ref}::VARCHAR"
        if self.kind == "i":
            cond, rule = f"NOT regexp_full_match({text}, {_INT})", "'wrong_type'"
        elif self.kind == "t":
            cond = f"NOT regexp_full_match({text}, {_SECONDS})"
            rule = f"CASE WHEN regexp_full_match({text}, '-?[0-9]+') THEN 'out_of_range' ELSE 'wrong_type' END"
        elif self.kind == "f":
            cond, rule = f"wb_num({ref}) IS NULL", "'wrong_type'"
        else:
            return out
        out.append(
            f"CASE WHEN {ref} IS NOT NULL AND {cond} THEN {{'c': '{self.name}', 'r': {rule}, 'v': {text}}} END"
        )
        return out


@dataclass(frozen=True)
class Projection:
    """Rows of one version table from the records in ``wb_new``.

    Built in two steps: :meth:`raw_sql` picks the raw values out of the parsed records
    (``source`` and ``where`` over alias ``n``), :meth:`typed_sql` converts them and lists
    the problems; keeping the expressions small keeps DuckDB's planning fast.
    """

    table: str  # version table
    canonical: str  # canonical table whose contract applies
    source: str  # FROM clause (alias n: event_id, version_at, type, source, o)
    where: str
    columns: tuple[Col, ...]
    distinct_on: tuple[str, ...] = ()

    def raw_sql(self) -> str:
        cols = ",\n  ".join(f"{c.expr} AS {c.name}" for c in self.columns)
        return (
            f"SELECT n.event_id, n.version_at, coalesce(n.o.deleted, false) AS _stub,\n  {cols}\n"
            f"FROM {self.source}\nWHERE {self.where}"
        )

    def typed_sql(self, raw: str) -> str:
        """Typed rows from table ``raw``, with ``_problems``: a list of {c, r, v} structs."""
        cols = ",\n  ".join(f"{c.typed(c.name)} AS {c.name}" for c in self.columns)
        checks = [p for c in self.columns for p in c.problems(c.name)]
        problems = (
            f"list_filter([{', '.join(checks)}], lambda x: x IS NOT NULL)"
            if checks
            else "[]::STRUCT(c VARCHAR, r VARCHAR, v VARCHAR)[]"
        )
        return f"SELECT event_id, version_at,\n  {cols},\n  {problems} AS _problems\nFROM {raw}"


def _price_cols(p: str, *, required: bool = False) -> tuple[Col, ...]:
    return (
        Col("unit_amount", "i", f"coalesce({p}.unit_amount, {p}.amount)"),
        Col("currency", "s", f"{p}.currency", required=required),
        Col("interval", "s", f"coalesce({p}.recurring.interval, {p}.interval)"),
        Col("interval_count", "i", f"coalesce({p}.recurring.interval_count, {p}.interval_count)"),
        Col("usage_type", "s", f"coalesce({p}.recurring.usage_type, {p}.usage_type)"),
    )


def _price_projection(
    name: str, source: str, where: str, p: str, *, top: bool = False
) -> Projection:
    return Projection(
        name,
        "prices",
        source,
        where,
        (
            Col("price_id", "s", f"{p}.id", required=True, key=True),
            Col("product_id", "r", f"{p}.product"),
            Col("nickname", "s", f"{p}.nickname"),
            *_price_cols(p, required=True),
            Col("billing_scheme", "s", f"{p}.billing_scheme"),
            Col("active", "b", f"{p}.active"),
            Col("created", "t", f"{p}.created"),
            Col(
                "deleted",
                "x",
                "n.type IN ('price.deleted', 'plan.deleted') OR coalesce(n.o.deleted, false)"
                if top
                else "false",
            ),
        ),
        distinct_on=("price_id",),
    )


_ITEM_PRICE = "CASE WHEN it.price.id IS NOT NULL THEN it.price ELSE it.plan END"


def _unnested(list_name: str, alias: str, where: str) -> str:
    """The FROM clause over ``wb_<list>`` (one row per element, see :func:`project`)."""
    del alias, where  # documented by the call site; the table is built once per load
    return f"wb_{list_name} n"


#: list name -> (element alias, parent object type)
LISTS = {"items": ("it", "subscription"), "lines": ("ln", "invoice"), "refunds": ("rf", "charge")}


def _unnest_sql(list_name: str) -> str:
    """One row per element of a list of the objects in ``wb_new``.

    The list's JSON is parsed here, once per load and only for the objects that have it,
    and unnested in the SELECT list (fast in DuckDB, unlike a lateral join); only the
    parent's id, currency, object type and deletion flag are carried along.

    Invoice lines repeat unchanged in every event about an invoice (created, finalized,
    paid ...), so only each distinct set of lines of an invoice (by ``lines_hash``) that
    is not stored yet is parsed (``wb_lines_src``, see :func:`project`).
    """
    alias, parent = LISTS[list_name]
    spec = LIST_SPECS[list_name]
    parent_struct = (
        "struct_pack(id := n.o.id, currency := n.o.currency, object := n.o.object, "
        "deleted := n.o.deleted) AS o"
    )
    if list_name == "lines":
        return (
            f"SELECT n.event_id, n.version_at, n.type, n.source, n.o, n.lines_hash, "
            f"unnest(json_transform(n.lines, '{spec}')) AS {alias} FROM wb_lines_src n"
        )
    return (
        f"SELECT n.event_id, n.version_at, n.type, n.source, {parent_struct}, "
        f"unnest(json_transform(n.o.{list_name}.data, '{spec}')) AS {alias} "
        f"FROM wb_new n WHERE n.o.object = '{parent}'"
    )


#: The distinct line sets of the invoices in ``wb_new`` that no stored version has yet.
LINES_SQL = """
CREATE OR REPLACE TEMP TABLE wb_lines_map AS
SELECT n.event_id, n.o.id AS invoice_id, n.lines_hash
FROM wb_new n WHERE n.lines_hash IS NOT NULL;
CREATE OR REPLACE TEMP TABLE wb_lines_first AS
SELECT invoice_id, lines_hash, min(event_id) AS event_id FROM wb_lines_map m
WHERE NOT EXISTS (
    SELECT 1 FROM invoice_line_versions v WHERE v.invoice_id = m.invoice_id AND v.lines_hash = m.lines_hash
)
GROUP BY ALL;
CREATE OR REPLACE TEMP TABLE wb_lines_src AS
SELECT n.event_id, n.version_at, n.type, n.source,
       struct_pack(id := n.o.id, currency := n.o.currency, object := n.o.object,
                   deleted := n.o.deleted) AS o,
       n.lines_hash, n.o.lines.data AS lines
FROM wb_new n SEMI JOIN wb_lines_first f USING (event_id);
"""


PROJECTIONS: tuple[Projection, ...] = (
    Projection(
        "account_versions",
        "accounts",
        "wb_new n",
        "n.o.object = 'customer'",
        (
            Col("account_id", "s", "n.o.id", required=True, key=True),
            Col("currency", "s", "n.o.currency"),
            Col("country", "s", "n.o.address.country"),
            Col("region", "s", "json_extract_string(n.o.metadata, '$.region')"),
            Col("channel", "s", "json_extract_string(n.o.metadata, '$.channel')"),
            Col("industry", "s", "json_extract_string(n.o.metadata, '$.industry')"),
            Col("size", "s", "json_extract_string(n.o.metadata, '$.size')"),
            Col("created", "t", "n.o.created"),
            Col("delinquent", "b", "n.o.delinquent"),
            Col("deleted", "x", "coalesce(n.o.deleted, false) OR n.type = 'customer.deleted'"),
            Col("metadata", "j", "n.o.metadata"),
            Col("source", "x", "n.source"),
        ),
    ),
    _price_projection(
        "price_versions", "wb_new n", "n.o.object IN ('price', 'plan')", "n.o", top=True
    ),
    # Items carry their price and, in older shapes, the same price as a plan; a plan with
    # an id of its own is kept (and checked) as a price too. (Invoice lines only name their
    # price; its versions come from price events and subscription items.)
    _price_projection(
        "price_versions",
        _unnested("items", "it", "n.o.object = 'subscription'"),
        "it.price.id IS NOT NULL",
        "it.price",
    ),
    _price_projection(
        "price_versions",
        _unnested("items", "it", "n.o.object = 'subscription'"),
        "it.plan.id IS NOT NULL AND it.plan.id IS DISTINCT FROM it.price.id",
        "it.plan",
    ),
    Projection(
        "subscription_versions",
        "subscriptions",
        "wb_new n",
        "n.o.object = 'subscription'",
        (
            Col("subscription_id", "s", "n.o.id", required=True, key=True),
            Col("account_id", "r", "n.o.customer", required=True),
            Col(
                "status",
                "x",
                "CASE WHEN n.type = 'customer.subscription.deleted' THEN 'canceled' ELSE n.o.status END",
                required=True,
            ),
            Col(
                "currency",
                "s",
                "coalesce(n.o.currency, json_extract_string(n.o.items.data, '$[0].price.currency'), "
                "json_extract_string(n.o.items.data, '$[0].plan.currency'))",
            ),
            Col("created", "t", "n.o.created"),
            Col("start_date", "t", "n.o.start_date"),
            Col(
                "current_period_start",
                "t",
                "coalesce(n.o.current_period_start, json_extract(n.o.items.data, '$[0].current_period_start'))",
            ),
            Col(
                "current_period_end",
                "t",
                "coalesce(n.o.current_period_end, json_extract(n.o.items.data, '$[0].current_period_end'))",
            ),
            Col("trial_start", "t", "n.o.trial_start"),
            Col("trial_end", "t", "n.o.trial_end"),
            Col("cancel_at_period_end", "b", "n.o.cancel_at_period_end"),
            Col("cancel_at", "t", "n.o.cancel_at"),
            Col("canceled_at", "t", "n.o.canceled_at"),
            Col("ended_at", "t", "n.o.ended_at"),
            Col(
                "coupon_id",
                "s",
                "coalesce(n.o.discount.coupon.id, wb_ref(n.o.discount.source.coupon))",
            ),
            Col("discount_percent_off", "f", "n.o.discount.coupon.percent_off"),
            Col("discount_amount_off", "i", "n.o.discount.coupon.amount_off"),
            Col("discount_duration", "s", "n.o.discount.coupon.duration"),
            Col("discount_duration_in_months", "i", "n.o.discount.coupon.duration_in_months"),
            Col("discount_start", "t", "n.o.discount.start"),
            Col("discount_end", "t", 'n.o.discount."end"'),
            Col(
                "deleted",
                "x",
                "n.type = 'customer.subscription.deleted' OR coalesce(n.o.deleted, false)",
            ),
        ),
    ),
    Projection(
        "subscription_item_versions",
        "subscription_items",
        _unnested("items", "it", "n.o.object = 'subscription'"),
        "true",
        (
            Col("item_id", "s", "it.id", required=True, key=True),
            Col("subscription_id", "s", "n.o.id", required=True, key=True),
            Col("price_id", "s", f"({_ITEM_PRICE}).id", required=True),
            Col("quantity", "i", "it.quantity"),
            Col("created", "t", "it.created"),
            *_price_cols(f"({_ITEM_PRICE})"),
            Col("current_period_start", "t", "it.current_period_start"),
            Col("current_period_end", "t", "it.current_period_end"),
        ),
        distinct_on=("item_id",),
    ),
    Projection(
        "invoice_versions",
        "invoices",
        "wb_new n",
        "n.o.object = 'invoice'",
        (
            Col("invoice_id", "s", "n.o.id", required=True, key=True),
            Col("account_id", "r", "n.o.customer", required=True),
            Col(
                "subscription_id",
                "r",
                "coalesce(n.o.subscription, n.o.parent.subscription_details.subscription)",
            ),
            Col("status", "s", "n.o.status", required=True),
            Col("billing_reason", "s", "n.o.billing_reason"),
            Col("currency", "s", "n.o.currency", required=True),
            Col("created", "t", "n.o.created"),
            Col("period_start", "t", "n.o.period_start"),
            Col("period_end", "t", "n.o.period_end"),
            Col("subtotal", "i", "n.o.subtotal"),
            Col(
                "total_discount",
                "x",
                "coalesce(list_sum(list_transform(n.o.total_discount_amounts, lambda x: wb_int(x.amount))), 0)",
            ),
            Col(
                "tax",
                "x",
                "coalesce(wb_int(n.o.tax), list_sum(list_transform(n.o.total_taxes, lambda x: wb_int(x.amount))))",
            ),
            Col("total", "i", "n.o.total", required=True),
            Col("amount_due", "i", "n.o.amount_due"),
            Col("amount_paid", "i", "n.o.amount_paid"),
            Col("amount_remaining", "i", "n.o.amount_remaining"),
            Col("attempt_count", "i", "n.o.attempt_count"),
            Col("next_payment_attempt", "t", "n.o.next_payment_attempt"),
            Col("charge_id", "r", "n.o.charge"),
            Col("payment_intent_id", "r", "n.o.payment_intent"),
            Col("finalized_at", "t", "n.o.status_transitions.finalized_at"),
            Col("paid_at", "t", "n.o.status_transitions.paid_at"),
            Col("marked_uncollectible_at", "t", "n.o.status_transitions.marked_uncollectible_at"),
            Col("voided_at", "t", "n.o.status_transitions.voided_at"),
            Col("deleted", "x", "n.type = 'invoice.deleted' OR coalesce(n.o.deleted, false)"),
            Col("lines_hash", "x", "n.lines_hash"),
        ),
    ),
    Projection(
        "invoice_line_versions",
        "invoice_lines",
        _unnested("lines", "ln", "n.o.object = 'invoice'"),
        "true",
        (
            # Very old API versions reused the subscription (item) id as the line id.
            Col(
                "line_id",
                "x",
                "CASE WHEN starts_with(ln.id, 'sub_') OR starts_with(ln.id, 'si_') "
                "THEN n.o.id || ':' || ln.id ELSE ln.id END",
                required=True,
                key=True,
            ),
            Col("invoice_id", "s", "n.o.id", required=True, key=True),
            Col("lines_hash", "x", "n.lines_hash"),
            Col(
                "subscription_id",
                "r",
                "coalesce(ln.subscription, ln.parent.subscription_item_details.subscription, "
                "ln.parent.invoice_item_details.subscription)",
            ),
            Col(
                "subscription_item_id",
                "r",
                "coalesce(ln.subscription_item, ln.parent.subscription_item_details.subscription_item)",
            ),
            Col(
                "price_id", "s", "coalesce(ln.price.id, ln.plan.id, ln.pricing.price_details.price)"
            ),
            Col(
                "type",
                "s",
                "coalesce(ln.type, CASE ln.parent.type WHEN 'subscription_item_details' THEN "
                "'subscription' WHEN 'invoice_item_details' THEN 'invoiceitem' END)",
            ),
            Col("amount", "i", "ln.amount", required=True),
            Col(
                "discount_amount",
                "x",
                "coalesce(list_sum(list_transform(ln.discount_amounts, lambda x: wb_int(x.amount))), 0)",
            ),
            Col("currency", "s", "coalesce(ln.currency, n.o.currency)", required=True),
            Col("quantity", "i", "ln.quantity"),
            Col(
                "proration",
                "b",
                "coalesce(ln.proration, ln.parent.subscription_item_details.proration, "
                "ln.parent.invoice_item_details.proration)",
            ),
            Col("period_start", "t", "ln.period.start"),
            Col("period_end", "t", 'ln.period."end"'),
        ),
    ),
    Projection(
        "charge_versions",
        "payment_attempts",
        "wb_new n",
        "n.o.object = 'charge'",
        (
            Col("attempt_id", "s", "n.o.id", required=True, key=True),
            Col("invoice_id", "r", "n.o.invoice"),
            # A charge may have no customer (a one-off payment); its invoice can still tell.
            Col("account_id", "r", "n.o.customer"),
            Col("payment_intent_id", "r", "n.o.payment_intent"),
            Col("created", "t", "n.o.created"),
            Col("amount", "i", "n.o.amount", required=True),
            Col("currency", "s", "n.o.currency", required=True),
            # Before 2015 a charge had no status, only paid (and "paid" was a status once).
            Col(
                "status",
                "s",
                "CASE WHEN n.o.status = 'paid' THEN 'succeeded' ELSE coalesce(n.o.status, "
                "CASE WHEN n.o.paid THEN 'succeeded' WHEN NOT n.o.paid THEN 'failed' END) END",
                required=True,
            ),
            Col("failure_code", "s", "n.o.failure_code"),
            Col("decline_code", "s", "CASE WHEN n.o.status = 'failed' THEN n.o.outcome.reason END"),
            Col("outcome_type", "s", "n.o.outcome.type"),
            Col(
                "card_brand",
                "x",
                "lower(coalesce(n.o.payment_method_details.card.brand, n.o.source.brand))",
            ),
            Col(
                "card_last4",
                "s",
                "coalesce(n.o.payment_method_details.card.last4, n.o.source.last4)",
            ),
            Col(
                "card_exp_month",
                "i",
                "coalesce(n.o.payment_method_details.card.exp_month, n.o.source.exp_month)",
            ),
            Col(
                "card_exp_year",
                "i",
                "coalesce(n.o.payment_method_details.card.exp_year, n.o.source.exp_year)",
            ),
            Col("amount_refunded", "i", "n.o.amount_refunded"),
            Col("disputed", "b", "n.o.disputed"),
        ),
    ),
    Projection(
        "refund_versions",
        "refunds",
        "wb_new n",
        "n.o.object = 'refund'",
        (
            Col("refund_id", "s", "n.o.id", required=True, key=True),
            Col("charge_id", "r", "n.o.charge"),
            Col("amount", "i", "n.o.amount", required=True),
            Col("currency", "s", "n.o.currency", required=True),
            Col("created", "t", "n.o.created"),
            Col("reason", "s", "n.o.reason"),
            Col("status", "s", "n.o.status", required=True),
        ),
    ),
    Projection(
        "refund_versions",
        "refunds",
        _unnested("refunds", "rf", "n.o.object = 'charge'"),
        "rf.id IS NOT NULL",
        (
            Col("refund_id", "s", "rf.id", required=True, key=True),
            Col("charge_id", "r", "coalesce(rf.charge, n.o.id)"),
            Col("amount", "i", "rf.amount", required=True),
            Col("currency", "s", "coalesce(rf.currency, n.o.currency)", required=True),
            Col("created", "t", "rf.created"),
            Col("reason", "s", "rf.reason"),
            Col("status", "s", "rf.status"),
        ),
        distinct_on=("refund_id",),
    ),
    Projection(
        "dispute_versions",
        "disputes",
        "wb_new n",
        "n.o.object = 'dispute'",
        (
            Col("dispute_id", "s", "n.o.id", required=True, key=True),
            Col("charge_id", "r", "n.o.charge"),
            Col("amount", "i", "n.o.amount", required=True),
            Col("currency", "s", "n.o.currency", required=True),
            Col("reason", "s", "n.o.reason"),
            Col("status", "s", "n.o.status", required=True),
            Col("created", "t", "n.o.created"),
        ),
    ),
)

#: Personal columns of customers: kept apart from versions, applied to ``accounts`` only.
PERSONAL_SQL = """
SELECT n.event_id, n.version_at, n.o.id AS account_id, n.o.name AS name, n.o.email AS email
FROM wb_new n WHERE n.o.object = 'customer' AND n.o.id IS NOT NULL
"""


def project(con: Connection) -> dict[str, str]:
    """Run every projection over ``wb_new`` into ``wb_v_<version table>`` temp tables.

    ``wb_new`` needs: ``event_id``, ``version_at`` (timestamp), ``type``, ``source`` and
    the object struct ``o``.

    Returns:
        Version table -> the temp table holding its new rows.
    """
    for statement in _statements(LINES_SQL):
        con.execute(statement)
    for name in LISTS:
        con.execute(f"CREATE OR REPLACE TEMP TABLE wb_{name} AS {_unnest_sql(name)}")
    by_table: dict[str, list[Projection]] = {}
    for p in PROJECTIONS:
        by_table.setdefault(p.table, []).append(p)
    out = {}
    for table, projections in by_table.items():
        same = len({tuple(c.name for c in p.columns) for p in projections}) == 1
        union = "\nUNION ALL\n" if same else "\nUNION ALL BY NAME\n"
        raw = union.join(p.raw_sql() for p in projections)
        if projections[0].distinct_on:
            keys = ", ".join(("event_id", *projections[0].distinct_on))
            raw = f"SELECT DISTINCT ON ({keys}) * FROM ({raw})"
        con.execute(f"CREATE OR REPLACE TEMP TABLE wb_r_{table} AS {raw}")
        temp = f"wb_v_{table}"
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {temp} AS {projections[0].typed_sql(f'wb_r_{table}')}"
        )
        con.execute(f"DROP TABLE wb_r_{table}")
        out[table] = temp
    con.execute(f"CREATE OR REPLACE TEMP TABLE wb_personal AS {PERSONAL_SQL}")
    for name in LISTS:
        con.execute(f"DROP TABLE wb_{name}")
    con.execute("DROP TABLE wb_lines_src")
    con.execute("DROP TABLE wb_lines_first")
    return out


def type_problems(con: Connection, versions: dict[str, str]) -> pd.DataFrame:
    """Values of the wrong JSON type, impossible times and missing required fields, as
    collected in the ``_problems`` column of each projection.

    Returns:
        ``event_id``, ``table_name``, ``column_name``, ``rule``, ``value``.
    """
    canonical = {p.table: p.canonical for p in PROJECTIONS}
    parts = [
        f"SELECT event_id, '{canonical[table]}' AS table_name, p.c AS column_name, p.r AS rule, "
        f"p.v AS value FROM (SELECT event_id, unnest(_problems) AS p FROM {temp} "
        f"WHERE array_length(_problems) > 0)"
        for table, temp in versions.items()
    ]
    return con.execute("\nUNION ALL\n".join(parts)).df()
