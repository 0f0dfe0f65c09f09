"""Map CSV exports (Stripe Dashboard, other billing systems, our simulator) onto canonical tables.

Pure: a file goes in, frames come out; nothing is written anywhere. The ingestion
core persists what :func:`map_csv` returns.

A *mapping* is a YAML file (bundled ones live in ``workbench/mappings/``) that says:

* ``columns``: the source columns, each under a name used in the rest of the file, with
  the headers it may appear under (aliases; ``re:<pattern>`` for a regular expression,
  whose named group ``tz`` gives the column's time zone, as in ``Created (UTC)``), its
  type (``string``, ``integer``, ``number``, ``decimal``, ``money``, ``boolean``,
  ``date``, ``timestamp``, ``currency``, ``json``), whether it is ``required``,
  date/time ``formats`` and ``timezone``, value ``map`` (``unmapped: keep|null|reject``),
  ``case``, ``min``/``max``, ``pattern`` and ``not_before`` (another column).
* ``tables``: for each canonical table (see :mod:`workbench.schema`), its ``columns`` as
  expressions over source columns (a name; ``{const: v}``; ``{template: "{a}-{b}"}``;
  ``{divide: [a, b]}``; ``{cases: [{if: cond, then: expr}], else: expr}``;
  ``{json: [a, b]}``; ``{json_headers: "re:…"}``; ``{lookup: name, key: a}``), and
  optionally ``where`` (a condition choosing the rows that go into that table),
  ``distinct: true`` (one row per primary key, conflicting rows rejected) or
  ``aggregate: {sum: [col]}`` (rows sharing a primary key summed).
* ``currency`` (fixed, e.g. ``usd``, or ``{column: name}``), ``money_units`` (``major``:
  amounts like ``12.34``, converted to minor units exactly with :class:`~decimal.Decimal`
  and the currency's exponent: 0 for JPY and Stripe's other zero-decimal currencies, 3
  for BHD/JOD/KWD/OMR/TND; ``minor``: integers already), ``defaults`` (constants for
  canonical columns left unmapped, e.g. ``source``), ``lookups`` (a key → value table
  from a second CSV), ``timezone``, ``encoding``, ``delimiter``, ``null_values``,
  ``decimal_separator``/``thousands_separator`` and ``strict_headers``.

A condition is ``{column: a, equals: v}`` (or ``in``, ``present``, ``gt``, ``ge``,
``lt``, ``le``), or ``{all: [...]}``, ``{any: [...]}``, ``{not: cond}``.

Every cell is PAN-redacted (:func:`workbench.redact.redact_pan`) before anything else,
so neither the tables nor the rejects can hold a card number. Bad rows are rejected
with a line number, column, rule and message; the good rows are returned. A file whose
shape no longer fits the mapping (a required column missing, a whole column of the
wrong type) fails as a whole with a message saying what changed.

Example:
    >>> mapping = load_mapping("ravenstack_accounts")
    >>> mapped = map_csv("ravenstack_accounts.csv", mapping)
    >>> mapped.error, mapped.received, mapped.accepted, len(mapped.rejects)
    (None, 500, 500, 0)
    >>> mapped.tables["accounts"].dtypes["created"]
    datetime64[us, UTC]
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import logging
import re
import string
from collections.abc import Iterable, Iterator
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import yaml

from workbench.redact import redact_pan
from workbench.schema import TABLES, Column, Table

log = logging.getLogger(__name__)

MAPPINGS_DIR = Path(__file__).resolve().parent / "mappings"
REJECT_COLUMNS = ["line", "column_name", "rule", "message", "value"]
# Tables the ingestion core writes itself: never a mapping target.
INGESTION_OWNED = frozenset({"events", "quarantine", "loads"})

# Stripe's minor-unit conventions (https://docs.stripe.com/currencies).
ZERO_DECIMAL_CURRENCIES = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
THREE_DECIMAL_CURRENCIES = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])

SOURCE_TYPES = (
    "string",
    "integer",
    "number",
    "decimal",
    "money",
    "boolean",
    "date",
    "timestamp",
    "currency",
    "json",
)
_TRUE = ("true", "t", "yes", "y", "1")
_FALSE = ("false", "f", "no", "n", "0")
_MAX_VALUE_CHARS = 200
_PERSONAL_MASK = "[personal data]"


def currency_exponent(currency: str) -> int:
    """Digits after the decimal point in ``currency``'s minor unit, as Stripe counts them."""
    code = currency.lower()
    if code in ZERO_DECIMAL_CURRENCIES:
        return 0
    if code in THREE_DECIMAL_CURRENCIES:
        return 3
    return 2


class MappingError(ValueError):
    """A mapping file is invalid; the message names the file, the place and the fix."""


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class SourceColumn:
    """One source column of a mapping (see the module docstring for the keys)."""

    name: str
    headers: tuple[str, ...]
    type: str = "string"
    required: bool = False
    header_required: bool = False
    formats: tuple[str, ...] = ()
    timezone: str | None = None
    units: str | None = None
    currency: str | None = None  # fixed code, or "column:<name>"
    map: dict[str, Any] | None = None
    unmapped: str = "keep"
    case: str | None = None
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    not_before: str | None = None
    true_values: tuple[str, ...] = _TRUE
    false_values: tuple[str, ...] = _FALSE


@dataclass(frozen=True)
class Lookup:
    """A key → value table read from another CSV (e.g. subscription id → account id).

    ``file`` is read beside the CSV being mapped (or is an absolute path). A lookup with a
    ``sha256`` is pinned: ``file`` is relative to the mapping file itself and must have that
    hash. The lake stores mappings that way (:func:`pin_lookups`), with copies of the
    lookup files the load read, so a rebuild maps with the same lookup tables; ``missing``
    marks a lookup whose file was not there when the mapping was stored, so mapping with it
    fails as it did then (even if a file is there now).
    """

    name: str
    file: str
    key: str
    value: str
    sha256: str | None = None
    missing: bool = False


@dataclass(frozen=True)
class TableSpec:
    """How one canonical table is filled: column expressions and row options."""

    name: str
    columns: dict[str, Any]  # canonical column -> parsed expression
    where: Any = None
    distinct: bool = False
    aggregate_sum: tuple[str, ...] = ()


@dataclass(frozen=True)
class Mapping:
    """A validated mapping. Build it with :func:`load_mapping` or :func:`parse_mapping`."""

    name: str
    description: str
    columns: dict[str, SourceColumn]
    tables: dict[str, TableSpec]
    currency: str | None = None  # fixed currency
    currency_column: str | None = None  # or a source column
    money_units: str = "major"
    defaults: dict[str, Any] = field(default_factory=dict)
    lookups: dict[str, Lookup] = field(default_factory=dict)
    timezone: str = "UTC"
    encoding: str = "utf-8-sig"
    delimiter: str = ","
    null_values: tuple[str, ...] = ("",)
    decimal_separator: str = "."
    thousands_separator: str = ","
    strict_headers: bool = False
    path: Path | None = None

    @property
    def required_columns(self) -> list[SourceColumn]:
        """Source columns whose header must be in the file."""
        return [c for c in self.columns.values() if c.header_required]


@dataclass
class MappedFile:
    """What :func:`map_csv` returns.

    Attributes:
        tables: Canonical table name -> frame with exactly that table's columns, in schema
            order and dtypes (money ``Int64`` minor units, timestamps ``datetime64[us, UTC]``,
            dates as ``datetime.date`` objects, ``DECIMAL`` as ``decimal.Decimal`` objects,
            text as ``string``). Empty frames when ``error`` is set.
        rejects: One row per problem: ``line`` (1-based file line, the header is line 1),
            ``column_name`` (the file's header, or ``table.column`` for derived values),
            ``rule``, ``message``, ``value`` (PAN-redacted; personal data masked).
        error: Whole-file failure, or None.
        received: Data rows read (blank lines not counted).
        accepted: Rows that passed; ``received == accepted + rejected``.
        rejected: Distinct rows with at least one problem.
        mapping: The mapping's name.
        headers: Source column name -> the header it was found under.
        unused_headers: Headers in the file that the mapping does not read.
        redacted: Card numbers redacted in the file.
        blank_lines: Blank lines skipped.
        duplicates: Rows dropped as exact repeats of an earlier row of the file (same key,
            same values, in a table that is not ``distinct``); ``received == accepted +
            rejected + duplicates``.
        table_lines: Table name -> the file line of each row of ``tables[name]`` (the first
            line, for rows that several lines produced), so a later rejection can name it.
    """

    tables: dict[str, pd.DataFrame]
    rejects: pd.DataFrame
    error: str | None
    received: int
    accepted: int = 0
    rejected: int = 0
    mapping: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    unused_headers: list[str] = field(default_factory=list)
    redacted: int = 0
    blank_lines: int = 0
    duplicates: int = 0
    table_lines: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the file as a whole mapped (rows may still have been rejected)."""
        return self.error is None


# --------------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Ref:
    column: str


@dataclass(frozen=True)
class Const:
    value: Any


@dataclass(frozen=True)
class Template:
    text: str
    fields: tuple[str, ...]


@dataclass(frozen=True)
class Divide:
    numerator: str
    denominator: str


@dataclass(frozen=True)
class Cases:
    branches: tuple[tuple[Any, Any], ...]  # (condition, expression)
    otherwise: Any


@dataclass(frozen=True)
class JsonOf:
    items: tuple[tuple[str, str], ...]  # (key, source column)


@dataclass(frozen=True)
class JsonHeaders:
    pattern: str


@dataclass(frozen=True)
class LookupOf:
    lookup: str
    key: str


@dataclass(frozen=True)
class Cond:
    op: str  # equals in present gt ge lt le all any not
    column: str | None = None
    value: Any = None
    parts: tuple[Cond, ...] = ()


# --------------------------------------------------------------------------- loading


def available_mappings() -> list[str]:
    """Names of the bundled mappings."""
    return sorted(p.stem for p in MAPPINGS_DIR.glob("*.yaml"))


def load_mapping(name_or_path: str | Path) -> Mapping:
    """Load and validate a mapping.

    Args:
        name_or_path: A bundled mapping's name (``workbench/mappings/<name>.yaml``) or a
            path to a YAML file.

    Returns:
        The validated mapping.

    Raises:
        MappingError: Not found, not YAML, or invalid (the message says where and why).
    """
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        path = candidate
    else:
        path = MAPPINGS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise MappingError(
            f"No mapping {str(name_or_path)!r}: not a file, and not one of the bundled mappings "
            f"({', '.join(available_mappings())})."
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise MappingError(f"{path}: not valid YAML: {exc}") from exc
    return parse_mapping(data, name=path.stem, path=path)


def pin_lookups(
    text: bytes, pinned: MappingABC[str, tuple[str, str] | None], *, name: str, origin: str
) -> bytes:
    """The YAML of a mapping whose lookups read fixed copies instead of files beside the CSV.

    Args:
        text: The mapping's YAML.
        pinned: Lookup name -> (the copy's path relative to where the new YAML is kept, the
            copy's SHA-256), or None for a lookup whose file is missing (``missing: true``);
            see :class:`Lookup`.
        name: The mapping's name (kept, so a YAML without ``name:`` keeps its file's stem).
        origin: Where the YAML came from, for the comment heading the new one.

    Returns:
        The new YAML (comments of the original are not kept; ``origin`` should say where
        it is).
    """
    data = yaml.safe_load(text.decode("utf-8"))
    data.setdefault("name", name)
    lookups = data.get("lookups") or {}
    for key, spec in lookups.items():
        if str(key) not in pinned:
            continue
        got = pinned[str(key)]
        if got is None:
            lookups[key] = {**spec, "missing": True}
        else:
            lookups[key] = {**spec, "file": got[0], "sha256": got[1]}
    head = (
        f"# The mapping {origin}, its lookups pinned to copies of their files kept beside it\n"
        "# (workbench.csv_mapping.Lookup: a lookup with sha256 reads file beside this mapping).\n"
    )
    return (head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)).encode("utf-8")


_TOP_KEYS = {
    "name",
    "description",
    "columns",
    "tables",
    "currency",
    "money_units",
    "defaults",
    "lookups",
    "timezone",
    "encoding",
    "delimiter",
    "null_values",
    "decimal_separator",
    "thousands_separator",
    "strict_headers",
}
_COLUMN_KEYS = {
    "headers",
    "type",
    "required",
    "header_required",
    "formats",
    "timezone",
    "units",
    "currency",
    "map",
    "unmapped",
    "case",
    "min",
    "max",
    "pattern",
    "not_before",
    "true_values",
    "false_values",
    "description",
}
_TABLE_KEYS = {"columns", "where", "distinct", "aggregate", "description"}
_EXPR_KEYS = {"column", "const", "template", "divide", "cases", "json", "json_headers", "lookup"}
_COND_OPS = ("equals", "in", "present", "gt", "ge", "lt", "le")


class _Validator:
    """Turns raw YAML into a :class:`Mapping`, collecting precise error messages."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, place: str, message: str) -> MappingError:
        return MappingError(f"{self.where}: {place}: {message}")

    def keys(self, data: Any, allowed: set[str], place: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(place, f"expected a mapping of keys, got {type(data).__name__}")
        unknown = sorted(set(map(str, data)) - allowed)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise self.fail(
                place, f"unknown key(s) {', '.join(hints)}; known: {', '.join(sorted(allowed))}"
            )
        return data

    def zone(self, value: Any, place: str) -> str:
        try:
            ZoneInfo(str(value))
        except (ZoneInfoNotFoundError, ValueError):
            raise self.fail(place, f"unknown time zone {value!r}") from None
        return str(value)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def parse_mapping(data: Any, *, name: str = "mapping", path: Path | None = None) -> Mapping:
    """Validate a mapping given as a dict (what the YAML file holds).

    Raises:
        MappingError: Unknown keys, unknown canonical tables or columns, references to
            undeclared source columns, types that cannot fill their canonical column,
            NOT NULL canonical columns left unmapped, and the like.
    """
    v = _Validator(str(path) if path else name)
    top = v.keys(data, _TOP_KEYS, "top level")
    name = str(top.get("name") or name)
    timezone = v.zone(top.get("timezone", "UTC"), "timezone")
    money_units = top.get("money_units", "major")
    if money_units not in ("major", "minor"):
        raise v.fail("money_units", f"must be 'major' or 'minor', not {money_units!r}")

    raw_columns = top.get("columns") or {}
    if not isinstance(raw_columns, dict) or not raw_columns:
        raise v.fail("columns", "declare at least one source column")
    strict = bool(top.get("strict_headers", False))
    columns: dict[str, SourceColumn] = {}
    for col_name, spec in raw_columns.items():
        columns[str(col_name)] = _parse_source_column(v, str(col_name), spec or {}, strict=strict)

    currency = currency_column = None
    raw_currency = top.get("currency")
    if isinstance(raw_currency, dict):
        v.keys(raw_currency, {"column"}, "currency")
        currency_column = str(raw_currency["column"])
        if currency_column not in columns:
            raise v.fail("currency", f"column {currency_column!r} is not declared under columns")
        if columns[currency_column].type != "currency":
            raise v.fail("currency", f"column {currency_column!r} must have type: currency")
    elif raw_currency is not None:
        currency = _check_currency_code(v, raw_currency, "currency")

    for col in columns.values():
        place = f"columns.{col.name}"
        if col.not_before and col.not_before not in columns:
            raise v.fail(place, f"not_before names undeclared column {col.not_before!r}")
        if col.not_before and {col.type, columns[col.not_before].type} - {"date", "timestamp"}:
            raise v.fail(place, "not_before compares dates or timestamps only")
        if col.type == "money":
            if col.currency and col.currency.startswith("column:"):
                ref = col.currency.split(":", 1)[1]
                if ref not in columns or columns[ref].type != "currency":
                    raise v.fail(
                        place, f"currency column {ref!r} must be declared with type: currency"
                    )
            elif not col.currency and not currency and not currency_column:
                raise v.fail(
                    place,
                    "a money column needs a currency: set top-level currency (fixed or {column: …})",
                )

    lookups: dict[str, Lookup] = {}
    for lookup_name, spec in (top.get("lookups") or {}).items():
        spec = v.keys(spec, {"file", "key", "value", "sha256", "missing"}, f"lookups.{lookup_name}")
        missing = {"file", "key", "value"} - set(spec)
        if missing:
            raise v.fail(f"lookups.{lookup_name}", f"needs {', '.join(sorted(missing))}")
        sha = spec.get("sha256")
        if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", str(sha)):
            raise v.fail(f"lookups.{lookup_name}", "sha256 must be 64 lowercase hex digits")
        lookups[str(lookup_name)] = Lookup(
            str(lookup_name),
            str(spec["file"]),
            str(spec["key"]),
            str(spec["value"]),
            None if sha is None else str(sha),
            bool(spec.get("missing", False)),
        )

    defaults = dict(top.get("defaults") or {})
    target_columns = {
        c for t in (top.get("tables") or {}) if t in TABLES for c in TABLES[t].column_names
    }
    for key in defaults:
        if key not in target_columns:
            raise v.fail("defaults", f"{key!r} is not a column of any table this mapping fills")
    raw_tables = top.get("tables") or {}
    if not isinstance(raw_tables, dict) or not raw_tables:
        raise v.fail("tables", "declare at least one canonical table to fill")
    ctx = _ParseContext(v, columns, lookups)
    tables: dict[str, TableSpec] = {}
    for table_name, spec in raw_tables.items():
        table_name = str(table_name)
        if table_name in INGESTION_OWNED:
            raise v.fail(
                f"tables.{table_name}",
                "this table is written by the ingestion core, not by mappings",
            )
        if table_name not in TABLES:
            close = difflib.get_close_matches(table_name, sorted(TABLES), n=1)
            raise v.fail(
                f"tables.{table_name}",
                "not a canonical table"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; canonical tables: {', '.join(sorted(set(TABLES) - INGESTION_OWNED))}",
            )
        tables[table_name] = _parse_table(
            ctx,
            TABLES[table_name],
            spec,
            defaults=defaults,
            currency=currency,
            currency_column=currency_column,
        )

    return Mapping(
        name=name,
        description=str(top.get("description", "")).strip(),
        columns=columns,
        tables=tables,
        currency=currency,
        currency_column=currency_column,
        money_units=money_units,
        defaults=defaults,
        lookups=lookups,
        timezone=timezone,
        encoding=str(top.get("encoding", "utf-8-sig")),
        delimiter=str(top.get("delimiter", ",")),
        null_values=tuple(str(x) for x in _as_list(top.get("null_values", [""]))),
        decimal_separator=str(top.get("decimal_separator", ".")),
        thousands_separator=str(top.get("thousands_separator", ",")),
        strict_headers=strict,
        path=path,
    )


def _check_currency_code(v: _Validator, value: Any, place: str) -> str:
    code = str(value).strip().lower()
    if not re.fullmatch(r"[a-z]{3}", code):
        raise v.fail(place, f"{value!r} is not a three-letter ISO currency code")
    return code


def _parse_source_column(v: _Validator, name: str, spec: Any, *, strict: bool) -> SourceColumn:
    place = f"columns.{name}"
    if isinstance(spec, str):  # shorthand: the header
        spec = {"headers": [spec]}
    spec = v.keys(spec, _COLUMN_KEYS, place)
    type_ = spec.get("type", "string")
    if type_ not in SOURCE_TYPES:
        raise v.fail(place, f"type {type_!r} is not one of {', '.join(SOURCE_TYPES)}")
    headers = tuple(str(h) for h in _as_list(spec.get("headers", name)))
    if not headers:
        raise v.fail(place, "headers must name at least one header")
    for h in headers:
        if h.startswith("re:"):
            try:
                re.compile(h[3:])
            except re.error as exc:
                raise v.fail(place, f"bad regular expression {h!r}: {exc}") from None
    required = bool(spec.get("required", False))
    header_required = bool(spec.get("header_required", required or strict))
    if required and not header_required:
        raise v.fail(place, "a required column's header is required too")
    unmapped = spec.get("unmapped", "keep")
    if unmapped not in ("keep", "null", "reject"):
        raise v.fail(place, f"unmapped must be keep, null or reject, not {unmapped!r}")
    case = spec.get("case")
    if case not in (None, "lower", "upper", "snake"):
        raise v.fail(place, f"case must be lower, upper or snake, not {case!r}")
    value_map = spec.get("map")
    if value_map is not None:
        if not isinstance(value_map, dict):
            raise v.fail(place, "map must be a mapping of source value: value")
        if type_ not in ("string", "boolean", "currency"):
            raise v.fail(place, "map applies to string, boolean and currency columns")
        for key, val in value_map.items():
            # YAML reads unquoted yes/no/on/off/true/false as booleans
            if isinstance(key, bool):
                raise v.fail(place, f"map key {key!r} was read as a YAML boolean; quote it ('Yes')")
            if type_ != "boolean" and isinstance(val, bool):
                raise v.fail(place, f"map value {val!r} for {key!r} is a YAML boolean; quote it")
        if type_ == "boolean" and not all(isinstance(x, bool) for x in value_map.values()):
            raise v.fail(place, "a boolean column's map gives true or false")
        value_map = {
            str(k).strip().casefold(): (val if val is None or isinstance(val, bool) else str(val))
            for k, val in value_map.items()
        }
    units = spec.get("units")
    if units is not None and (type_ != "money" or units not in ("major", "minor")):
        raise v.fail(place, "units (major|minor) applies to money columns")
    currency = spec.get("currency")
    if currency is not None:
        if type_ != "money":
            raise v.fail(place, "currency applies to money columns")
        if isinstance(currency, dict):
            v.keys(currency, {"column"}, f"{place}.currency")
            currency = f"column:{currency['column']}"
        else:
            currency = _check_currency_code(v, currency, f"{place}.currency")
    for bound in ("min", "max"):
        if spec.get(bound) is not None:
            if type_ not in ("integer", "number", "decimal", "money"):
                raise v.fail(place, f"{bound} applies to numeric columns")
            if not isinstance(spec[bound], int | float) or isinstance(spec[bound], bool):
                raise v.fail(place, f"{bound} must be a number")
    pattern = spec.get("pattern")
    if pattern is not None:
        try:
            re.compile(str(pattern))
        except re.error as exc:
            raise v.fail(place, f"bad pattern: {exc}") from None
    formats = tuple(str(f) for f in _as_list(spec.get("formats")))
    if formats and type_ not in ("date", "timestamp"):
        raise v.fail(place, "formats apply to date and timestamp columns")
    timezone = v.zone(spec["timezone"], f"{place}.timezone") if spec.get("timezone") else None
    return SourceColumn(
        name=name,
        headers=headers,
        type=type_,
        required=required,
        header_required=header_required,
        formats=formats,
        timezone=timezone,
        units=units,
        currency=currency,
        map=value_map,
        unmapped=unmapped,
        case=case,
        min=spec.get("min"),
        max=spec.get("max"),
        pattern=str(pattern) if pattern is not None else None,
        not_before=str(spec["not_before"]) if spec.get("not_before") else None,
        true_values=tuple(
            str(x).casefold() for x in _as_list(spec.get("true_values", list(_TRUE)))
        ),
        false_values=tuple(
            str(x).casefold() for x in _as_list(spec.get("false_values", list(_FALSE)))
        ),
    )


# Canonical type families and the source kinds that may fill them.
def _family(col: Column) -> str:
    t = col.type.upper()
    if t.startswith("DECIMAL"):
        return "decimal"
    return {
        "VARCHAR": "text",
        "JSON": "json",
        "BIGINT": "int",
        "INTEGER": "int",
        "DOUBLE": "float",
        "BOOLEAN": "bool",
        "TIMESTAMPTZ": "ts",
        "DATE": "date",
    }[t]


_COMPATIBLE = {
    "string": {"text"},
    "currency": {"text"},
    "json": {"json", "text"},
    "integer": {"int", "float", "decimal"},
    "number": {"float"},
    "decimal": {"decimal", "float"},
    "money": {"int"},
    "boolean": {"bool"},
    "date": {"date", "ts"},
    "timestamp": {"ts", "date"},
}


@dataclass
class _ParseContext:
    v: _Validator
    columns: dict[str, SourceColumn]
    lookups: dict[str, Lookup]

    def column(self, name: Any, place: str) -> SourceColumn:
        if not isinstance(name, str) or name not in self.columns:
            close = difflib.get_close_matches(str(name), sorted(self.columns), n=1)
            raise self.v.fail(
                place,
                f"{name!r} is not a declared source column"
                + (f" (did you mean {close[0]!r}?)" if close else ""),
            )
        return self.columns[name]


def _parse_table(
    ctx: _ParseContext,
    table: Table,
    spec: Any,
    *,
    defaults: dict[str, Any],
    currency: str | None,
    currency_column: str | None,
) -> TableSpec:
    v = ctx.v
    place = f"tables.{table.name}"
    spec = v.keys(spec, _TABLE_KEYS, place)
    raw_cols = spec.get("columns") or {}
    if not isinstance(raw_cols, dict) or not raw_cols:
        raise v.fail(place, "needs columns: canonical column -> expression")
    by_name = {c.name: c for c in table.columns}
    exprs: dict[str, Any] = {}
    for col_name, raw in raw_cols.items():
        if col_name not in by_name:
            close = difflib.get_close_matches(str(col_name), list(by_name), n=1)
            raise v.fail(
                f"{place}.columns.{col_name}",
                f"{table.name} has no column {col_name!r}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; its columns: {', '.join(by_name)}",
            )
        exprs[col_name] = _parse_expr(ctx, raw, by_name[col_name], f"{place}.columns.{col_name}")
    # Fill what the table has and the mapping did not say, from defaults and the currency.
    for col in table.columns:
        if col.name in exprs:
            continue
        if col.name in defaults:
            exprs[col.name] = _parse_expr(
                ctx, {"const": defaults[col.name]}, col, f"defaults.{col.name}"
            )
        elif col.name == "currency" and currency:
            exprs[col.name] = Const(currency)
        elif col.name == "currency" and currency_column:
            exprs[col.name] = Ref(currency_column)
    unmapped_required = [c.name for c in table.columns if not c.nullable and c.name not in exprs]
    if unmapped_required:
        raise v.fail(place, f"NOT NULL column(s) {', '.join(unmapped_required)} must be mapped")
    where = (
        _parse_cond(ctx, spec["where"], f"{place}.where") if spec.get("where") is not None else None
    )
    distinct = bool(spec.get("distinct", False))
    aggregate_sum: tuple[str, ...] = ()
    if spec.get("aggregate") is not None:
        agg = v.keys(spec["aggregate"], {"sum"}, f"{place}.aggregate")
        aggregate_sum = tuple(str(c) for c in _as_list(agg.get("sum")))
        for c in aggregate_sum:
            if c not in by_name or _family(by_name[c]) not in ("int", "float", "decimal"):
                raise v.fail(f"{place}.aggregate", f"{c!r} is not a numeric column of {table.name}")
            if c in table.primary_key:
                raise v.fail(f"{place}.aggregate", f"{c!r} is part of the primary key")
    if (distinct or aggregate_sum) and not table.primary_key:
        raise v.fail(place, "distinct/aggregate need a table with a primary key")
    if distinct and aggregate_sum:
        raise v.fail(place, "use distinct or aggregate, not both")
    return TableSpec(table.name, exprs, where=where, distinct=distinct, aggregate_sum=aggregate_sum)


def _parse_expr(ctx: _ParseContext, raw: Any, col: Column, place: str) -> Any:
    v = ctx.v
    family = _family(col)
    if isinstance(raw, str):
        raw = {"column": raw}
    if not isinstance(raw, dict):
        raise v.fail(
            place, "expected a source column name or {const|template|divide|cases|json|lookup: …}"
        )
    if "lookup" in raw:
        spec = v.keys(raw, {"lookup", "key"}, place)
        if spec["lookup"] not in ctx.lookups:
            raise v.fail(place, f"lookup {spec['lookup']!r} is not declared under lookups")
        key = ctx.column(spec.get("key"), place)
        if key.type not in ("string", "integer"):
            raise v.fail(place, "a lookup key must be a string or integer column")
        if family != "text":
            raise v.fail(place, f"a lookup gives text; {col.name} is {col.type}")
        return LookupOf(spec["lookup"], key.name)
    kinds = [k for k in raw if k in _EXPR_KEYS]
    if len(kinds) != 1:
        raise v.fail(
            place, f"give exactly one of {', '.join(sorted(_EXPR_KEYS))}, got {sorted(raw)}"
        )
    kind = kinds[0]
    allowed = {kind, "else"} if kind == "cases" else {kind}
    v.keys(raw, allowed, place)
    if kind == "column":
        src = ctx.column(raw["column"], place)
        if family not in _COMPATIBLE[src.type]:
            raise v.fail(
                place,
                f"source column {src.name!r} is {src.type}, which cannot fill {col.name} ({col.type})",
            )
        return Ref(src.name)
    if kind == "const":
        return Const(_coerce_const(v, raw["const"], col, place))
    if kind == "template":
        text = str(raw["template"])
        try:
            fields = tuple(f for _, f, _, _ in string.Formatter().parse(text) if f is not None)
        except ValueError as exc:
            raise v.fail(place, f"bad template {text!r}: {exc}") from None
        if not fields:
            raise v.fail(place, "a template names at least one {column}; use const for fixed text")
        for f in fields:
            src = ctx.column(f, place)
            if src.type not in ("string", "integer", "currency", "boolean"):
                raise v.fail(
                    place, f"template fields must be string/integer columns, {f!r} is {src.type}"
                )
        if family not in ("text", "json"):
            raise v.fail(place, f"a template gives text; {col.name} is {col.type}")
        return Template(text, fields)
    if kind == "divide":
        parts = _as_list(raw["divide"])
        if len(parts) != 2:
            raise v.fail(place, "divide takes [numerator, denominator]")
        num, den = (ctx.column(p, place) for p in parts)
        if num.type not in ("money", "integer", "number", "decimal") or den.type not in (
            "integer",
            "number",
            "decimal",
        ):
            raise v.fail(
                place, "divide needs a numeric (or money) numerator and a numeric denominator"
            )
        if num.type == "money" and family != "int":
            raise v.fail(place, f"money divided gives minor units; {col.name} is {col.type}")
        if family not in ("int", "float", "decimal"):
            raise v.fail(place, f"{col.name} ({col.type}) is not numeric")
        return Divide(num.name, den.name)
    if kind == "cases":
        branches = []
        for i, branch in enumerate(_as_list(raw["cases"])):
            b = v.keys(branch, {"if", "then"}, f"{place}.cases[{i}]")
            if "if" not in b or "then" not in b:
                raise v.fail(f"{place}.cases[{i}]", "each case needs if and then")
            branches.append(
                (
                    _parse_cond(ctx, b["if"], f"{place}.cases[{i}].if"),
                    _parse_expr(ctx, _const_shorthand(b["then"]), col, f"{place}.cases[{i}].then"),
                )
            )
        if not branches:
            raise v.fail(place, "cases needs at least one {if, then}")
        otherwise = _parse_expr(ctx, _const_shorthand(raw.get("else")), col, f"{place}.else")
        return Cases(tuple(branches), otherwise)
    if kind == "json":
        if family not in ("json", "text"):
            raise v.fail(place, f"json gives a JSON text; {col.name} is {col.type}")
        items = raw["json"]
        pairs = (
            [(str(k), str(c)) for k, c in items.items()]
            if isinstance(items, dict)
            else [(str(c), str(c)) for c in _as_list(items)]
        )
        for _, c in pairs:
            ctx.column(c, place)
        return JsonOf(tuple(pairs))
    if kind == "json_headers":
        pattern = str(raw["json_headers"])
        pattern = pattern[3:] if pattern.startswith("re:") else pattern
        try:
            re.compile(pattern)
        except re.error as exc:
            raise v.fail(place, f"bad pattern: {exc}") from None
        if family not in ("json", "text"):
            raise v.fail(place, f"json_headers gives a JSON text; {col.name} is {col.type}")
        return JsonHeaders(pattern)
    raise v.fail(place, f"unsupported expression {raw!r}")  # pragma: no cover


def _const_shorthand(raw: Any) -> Any:
    """In ``cases``, ``then``/``else`` may be a plain value (a const) or an expression."""
    if isinstance(raw, dict):
        return raw
    return {"const": raw}


def _coerce_const(v: _Validator, value: Any, col: Column, place: str) -> Any:
    if value is None:
        if not col.nullable:
            raise v.fail(place, f"{col.name} is NOT NULL; a null constant cannot fill it")
        return None
    family = _family(col)
    try:
        if family in ("text", "json"):
            if isinstance(value, bool | int | float):
                raise TypeError
            return (
                json.dumps(value) if family == "json" and not isinstance(value, str) else str(value)
            )
        if family == "bool":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if family == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError
            return value
        if family == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if family == "decimal":
            return Decimal(str(value))
        if family == "ts":
            stamp = pd.Timestamp(value)
            return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        if family == "date":
            return pd.Timestamp(value).date()
    except (TypeError, ValueError, InvalidOperation):
        pass
    raise v.fail(place, f"constant {value!r} does not fit {col.name} ({col.type})")


def _parse_cond(ctx: _ParseContext, raw: Any, place: str) -> Cond:
    v = ctx.v
    if not isinstance(raw, dict):
        raise v.fail(place, "a condition is a mapping like {column: x, equals: v}")
    for combo in ("all", "any"):
        if combo in raw:
            v.keys(raw, {combo}, place)
            parts = tuple(
                _parse_cond(ctx, p, f"{place}.{combo}[{i}]")
                for i, p in enumerate(_as_list(raw[combo]))
            )
            if not parts:
                raise v.fail(place, f"{combo} needs at least one condition")
            return Cond(combo, parts=parts)
    if "not" in raw:
        v.keys(raw, {"not"}, place)
        return Cond("not", parts=(_parse_cond(ctx, raw["not"], f"{place}.not"),))
    v.keys(raw, {"column", *_COND_OPS}, place)
    ops = [op for op in _COND_OPS if op in raw]
    if "column" not in raw or len(ops) != 1:
        raise v.fail(place, f"a condition is {{column: x, <one of {', '.join(_COND_OPS)}>: value}}")
    src = ctx.column(raw["column"], place)
    op = ops[0]
    value = raw[op]
    if op == "present" and not isinstance(value, bool):
        raise v.fail(place, "present takes true or false")
    if op in ("gt", "ge", "lt", "le") and (
        src.type not in ("integer", "number", "decimal", "money")
        or isinstance(value, bool)
        or not isinstance(value, int | float)
    ):
        raise v.fail(place, f"{op} compares a numeric column with a number")
    if op in ("equals", "in"):
        values = _as_list(value) if op == "in" else [value]
        if src.type == "boolean" and not all(isinstance(x, bool) for x in values):
            raise v.fail(place, f"{src.name} is boolean: compare with true or false")
        if op == "in":
            value = tuple(values)
    return Cond(op, column=src.name, value=value)


# --------------------------------------------------------------------------- reading


@dataclass
class _Raw:
    headers: list[str]
    rows: list[list[str]]
    lines: list[int]
    malformed: list[tuple[int, int, str]]  # (line, fields found, redacted raw text)
    blank_lines: int
    redacted: int


def _read_csv(path: Path, mapping: Mapping) -> _Raw:
    data = path.read_bytes()
    try:
        text = data.decode(mapping.encoding)
    except UnicodeDecodeError as exc:
        raise _FileError(
            f"the file is not {mapping.encoding} (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "re-save it as UTF-8 or set encoding: in the mapping"
        ) from None
    except LookupError:
        raise _FileError(f"unknown encoding {mapping.encoding!r} in the mapping") from None
    redacted = text
    n_redacted = 0
    if mapping.delimiter not in (" ", "-"):
        # A card number cannot straddle a delimiter, so the whole text can be redacted at once.
        redacted = redact_pan(text)
        if redacted != text:
            n_redacted = redacted.count("[REDACTED PAN ****") - text.count("[REDACTED PAN ****")
    reader = csv.reader(io.StringIO(redacted, newline=""), delimiter=mapping.delimiter)
    headers: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    malformed: list[tuple[int, int, str]] = []
    blank = 0
    previous_end = 0
    try:
        for record in reader:
            start = previous_end + 1
            previous_end = reader.line_num
            if headers is None:
                headers = record
                continue
            if not record or not "".join(record).strip():
                blank += 1
                continue
            if mapping.delimiter in (" ", "-"):
                before = list(record)
                record = [redact_pan(cell) for cell in record]
                n_redacted += sum(a != b for a, b in zip(before, record, strict=True))
            if len(record) != len(headers):
                malformed.append((start, len(record), mapping.delimiter.join(record)))
                continue
            rows.append(record)
            lines.append(start)
    except csv.Error as exc:
        raise _FileError(f"not readable as CSV near line {reader.line_num}: {exc}") from None
    if headers is None:
        raise _FileError("the file is empty (no header line)")
    return _Raw(headers, rows, lines, malformed, blank, n_redacted)


class _FileError(Exception):
    """A whole-file failure, turned into ``MappedFile.error``."""


def _norm_header(h: str) -> str:
    return " ".join(h.replace("\ufeff", "").split()).casefold()


@dataclass
class _Resolved:
    positions: dict[str, int]  # source column -> header position
    zones: dict[str, str]  # source column -> time zone taken from its header
    found: dict[str, str]  # source column -> header text
    used: set[int]


def _resolve_headers(headers: list[str], mapping: Mapping) -> _Resolved:
    normalized = [_norm_header(h) for h in headers]
    positions: dict[str, int] = {}
    zones: dict[str, str] = {}
    missing: list[SourceColumn] = []
    for col in mapping.columns.values():
        hit: list[int] = []
        zone = None
        for alias in col.headers:
            if alias.startswith("re:"):
                rx = re.compile(alias[3:], re.IGNORECASE)
                matches = [(i, rx.fullmatch(h.strip())) for i, h in enumerate(headers)]
                hit = [i for i, m in matches if m]
                if hit:
                    groups = dict(next(m for _, m in matches if m).groupdict())
                    zone = groups.get("tz")
            else:
                hit = [i for i, h in enumerate(normalized) if h == _norm_header(alias)]
            if hit:
                break
        if not hit:
            if col.header_required:
                missing.append(col)
            continue
        if len(hit) > 1:
            raise _FileError(
                f"column {col.name!r}: header {headers[hit[0]]!r} appears {len(hit)} times "
                f"(positions {', '.join(str(i + 1) for i in hit)}); cannot tell which to use"
            )
        positions[col.name] = hit[0]
        if zone:
            if zone.upper() == "UTC":
                zone = "UTC"
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise _FileError(
                    f"header {headers[hit[0]]!r} names time zone {zone!r}, which is unknown"
                ) from None
            zones[col.name] = zone
    used = set(positions.values())
    pattern_exprs = [
        e
        for t in mapping.tables.values()
        for e in _walk(t.columns.values())
        if isinstance(e, JsonHeaders)
    ]
    for e in pattern_exprs:
        used |= {
            i for i, h in enumerate(headers) if re.fullmatch(e.pattern, h.strip(), re.IGNORECASE)
        }
    if missing:
        unused = [h for i, h in enumerate(headers) if i not in used]
        parts = []
        for col in missing:
            accepted = ", ".join(repr(h) for h in col.headers)
            close = difflib.get_close_matches(
                _norm_header(col.headers[0].removeprefix("re:")),
                [_norm_header(h) for h in unused],
                n=1,
                cutoff=0.6,
            )
            hint = ""
            if close:
                original = next(h for h in unused if _norm_header(h) == close[0])
                hint = f"; renamed to {original!r}?"
            parts.append(f"{col.name!r} (accepted headers: {accepted}{hint})")
        raise _FileError(
            f"missing required column(s) {'; '.join(parts)}. "
            f"Headers found ({len(headers)}): {', '.join(headers)}. "
            f"Not used by mapping {mapping.name!r}: {', '.join(unused) or 'none'}. "
            "The export's columns changed, or this is not the file the mapping is for."
        )
    found = {name: headers[i] for name, i in positions.items()}
    return _Resolved(positions, zones, found, used)


def _walk(exprs: Iterable[Any]) -> Iterable[Any]:
    for e in exprs:
        yield e
        if isinstance(e, Cases):
            yield from _walk([x for _, x in e.branches] + [e.otherwise])


# --------------------------------------------------------------------------- parsing values


class _Errors:
    """Collects row problems as small frames: row position, column, rule, message, value."""

    def __init__(self) -> None:
        self.frames: list[pd.DataFrame] = []

    def add(
        self,
        mask: np.ndarray | pd.Series,
        *,
        column: str,
        rule: str | pd.Series,
        message: str | pd.Series,
        values: pd.Series | None,
    ) -> None:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        rows = np.flatnonzero(mask)
        msg = message[mask].to_numpy() if isinstance(message, pd.Series) else message
        rule = rule[mask].to_numpy() if isinstance(rule, pd.Series) else rule
        vals = values[mask].astype("object").to_numpy() if values is not None else None
        self.frames.append(
            pd.DataFrame(
                {"row": rows, "column_name": column, "rule": rule, "message": msg, "value": vals}
            )
        )

    def rows(self, *, since: int = 0) -> np.ndarray:
        """Row positions with a problem (recorded after the first ``since`` frames)."""
        frames = self.frames[since:]
        if not frames:
            return np.array([], dtype=np.int64)
        return np.unique(np.concatenate([f["row"].to_numpy() for f in frames]))


def _null_mask(stripped: pd.Series, null_values: tuple[str, ...]) -> pd.Series:
    return stripped.isin(null_values) | (stripped == "")


def _number_regex(mapping: Mapping, *, integer: bool) -> re.Pattern[str]:
    thou = re.escape(mapping.thousands_separator)
    dec = re.escape(mapping.decimal_separator)
    body = rf"(?:\d{{1,3}}(?:{thou}\d{{3}})+|\d+)" if mapping.thousands_separator else r"\d+"
    frac = rf"(?:{dec}0*)?" if integer else rf"(?:{dec}\d*)?"
    return re.compile(rf"[+-]?{body}{frac}")


def _normalize_number(text: str, mapping: Mapping) -> str:
    if mapping.thousands_separator:
        text = text.replace(mapping.thousands_separator, "")
    return text.replace(mapping.decimal_separator, ".")


def _parse_unique(values: pd.Series, fn: Any) -> pd.Series:
    """Apply ``fn`` to each distinct value once (exports repeat values a lot)."""
    uniques = pd.unique(values.to_numpy(dtype=object))
    table = {u: fn(u) for u in uniques}
    return values.map(table)


@dataclass
class _Parsed:
    values: dict[str, pd.Series]
    raw: dict[str, pd.Series]  # stripped text, None when null
    zones: dict[str, str]


def _parse_columns(
    frame: pd.DataFrame, mapping: Mapping, resolved: _Resolved, errors: _Errors, headers: list[str]
) -> _Parsed:
    n = len(frame)
    values: dict[str, pd.Series] = {}
    raws: dict[str, pd.Series] = {}
    zones: dict[str, str] = {}
    # currency columns first: money needs them
    order = sorted(mapping.columns.values(), key=lambda c: c.type != "currency")
    for col in order:
        zone = resolved.zones.get(col.name) or col.timezone or mapping.timezone
        zones[col.name] = zone
        if col.name not in resolved.positions:
            raws[col.name] = pd.Series([None] * n, dtype=object)
            values[col.name] = _empty_values(col, n)
            continue
        header = headers[resolved.positions[col.name]]
        raw = frame.iloc[:, resolved.positions[col.name]]
        stripped = raw.str.strip()
        is_null = _null_mask(stripped, mapping.null_values)
        stripped = stripped.where(~is_null, None)
        raws[col.name] = stripped
        if col.required:
            errors.add(
                is_null,
                column=header,
                rule="missing_required",
                message=f"{header!r} is required and empty",
                values=None,
            )
        parsed, bad, rule, what = _parse_one(col, stripped, ~is_null, mapping, zone, values, raws)
        present = int((~is_null).sum())
        n_bad = int(bad.sum())
        if n_bad and n_bad == present and present >= 2:
            if isinstance(what, pd.Series):
                what = what[bad.to_numpy(dtype=bool)].mode().iloc[0]
            examples = ", ".join(
                repr(x) for x in pd.unique(stripped[bad].to_numpy(dtype=object))[:3]
            )
            raise _FileError(
                f"column {header!r} ({col.name}): none of its {present} values is {what} "
                f"(e.g. {examples}); the export's format changed or the mapping needs updating"
            )
        errors.add(
            bad,
            column=header,
            rule=rule,
            message=f"{header!r} is not "
            + (what if isinstance(what, pd.Series) else pd.Series([what] * len(stripped)))
            + ": "
            + stripped.astype("string").fillna(""),
            values=stripped,
        )
        parsed = parsed.where(~bad, None) if parsed.dtype == object else parsed.mask(bad)
        _check_bounds(col, parsed, header, stripped, errors, values, mapping)
        values[col.name] = parsed
    # order checks need every column parsed
    for col in mapping.columns.values():
        if (
            col.not_before
            and col.name in resolved.positions
            and col.not_before in resolved.positions
        ):
            a = _as_utc(values[col.name], col, zones[col.name])
            b = _as_utc(
                values[col.not_before], mapping.columns[col.not_before], zones[col.not_before]
            )
            bad = (a < b).fillna(False).to_numpy(dtype=bool)
            header = headers[resolved.positions[col.name]]
            other = headers[resolved.positions[col.not_before]]
            errors.add(
                bad,
                column=header,
                rule="out_of_order",
                message=f"{header!r} "
                + raws[col.name].astype("string").fillna("")
                + f" is before {other!r} "
                + raws[col.not_before].astype("string").fillna(""),
                values=raws[col.name],
            )
    return _Parsed(values, raws, zones)


def _empty_values(col: SourceColumn, n: int) -> pd.Series:
    if col.type in ("integer", "money"):
        return pd.Series(pd.array([None] * n, dtype="Int64"))
    if col.type == "number":
        return pd.Series(pd.array([None] * n, dtype="Float64"))
    if col.type == "boolean":
        return pd.Series(pd.array([None] * n, dtype="boolean"))
    if col.type == "date":
        return pd.Series(pd.NaT, index=range(n), dtype="datetime64[us]")
    if col.type == "timestamp":
        return pd.Series(pd.NaT, index=range(n), dtype="datetime64[us, UTC]")
    return pd.Series([None] * n, dtype=object)


_TYPE_WORDS = {
    "integer": "an integer",
    "number": "a number",
    "decimal": "a decimal number",
    "money": "an amount",
    "boolean": "a boolean",
    "date": "a date",
    "timestamp": "a timestamp",
    "currency": "a currency code",
    "json": "JSON",
}


def _parse_one(
    col: SourceColumn,
    text: pd.Series,
    present: pd.Series,
    mapping: Mapping,
    zone: str,
    parsed_so_far: dict[str, pd.Series],
    raw_so_far: dict[str, pd.Series] | None = None,
) -> tuple[pd.Series, pd.Series, str | pd.Series, str | pd.Series]:
    """Parse one column. Returns (values, bad mask, rule, words for messages); rule and
    words are per row when a column can fail in several ways."""
    present = present.to_numpy(dtype=bool)
    t = col.type
    if t in ("string", "currency"):
        if col.map is None and not col.case and not col.pattern and t == "string":
            return text.astype(object), pd.Series(np.zeros(len(text), dtype=bool)), "", ""
        rx = re.compile(col.pattern) if col.pattern else None
        words = {
            "unknown_value": "one of " + ", ".join(repr(k) for k in list(col.map or {})[:8]),
            "bad_currency": "a three-letter currency code",
            "bad_format": f"in the format {col.pattern!r}",
        }

        def convert(x: Any) -> tuple[Any, str | None]:
            if not isinstance(x, str):
                return None, None
            value: Any = x
            if col.map is not None:
                key = x.casefold()
                if key in col.map:
                    value = col.map[key]
                elif col.unmapped == "null":
                    value = None
                elif col.unmapped == "reject":
                    return None, "unknown_value"
            if isinstance(value, str):
                if col.case:
                    value = _apply_case(value, col.case)
                if t == "currency":
                    value = value.lower()
                    if not re.fullmatch(r"[a-z]{3}", value):
                        return None, "bad_currency"
                if rx is not None and not rx.fullmatch(value):
                    return None, "bad_format"
            return value, None

        results = _parse_unique(text, convert)
        out = results.map(lambda r: r[0])
        rule = results.map(lambda r: r[1])
        bad = present & rule.notna().to_numpy()
        return out.astype(object), pd.Series(bad), rule.fillna(""), rule.map(words).fillna("")
    if t == "integer":
        rx = _number_regex(mapping, integer=True)

        def to_int(x: Any) -> Any:
            if not isinstance(x, str) or not rx.fullmatch(x):
                return None
            value = int(Decimal(_normalize_number(x, mapping)))
            return value if -(2**63) <= value < 2**63 else None

        parsed = _parse_unique(text, to_int)
        bad = present & parsed.isna().to_numpy()
        return (
            pd.Series(pd.array(parsed.tolist(), dtype="Int64")),
            pd.Series(bad),
            "not_integer",
            _TYPE_WORDS[t],
        )
    if t in ("number", "decimal"):
        rx = _number_regex(mapping, integer=False)

        def to_dec(x: Any) -> Any:
            if not isinstance(x, str) or not rx.fullmatch(x):
                return None
            return Decimal(_normalize_number(x, mapping))

        parsed = _parse_unique(text, to_dec)
        bad = present & parsed.isna().to_numpy()
        if t == "number":
            floats = pd.array(
                [float(x) if x is not None and not pd.isna(x) else None for x in parsed],
                dtype="Float64",
            )
            return pd.Series(floats), pd.Series(bad), "not_number", _TYPE_WORDS[t]
        return (
            parsed.astype(object).where(~bad, None),
            pd.Series(bad),
            "not_decimal",
            _TYPE_WORDS[t],
        )
    if t == "money":
        return _parse_money(col, text, present, mapping, parsed_so_far, raw_so_far)
    if t == "boolean":
        truthy, falsy = set(col.true_values), set(col.false_values)
        if col.map is not None:
            truthy |= {k for k, val in col.map.items() if val is True}
            falsy |= {k for k, val in col.map.items() if val is False}

        def to_bool(x: Any) -> Any:
            if not isinstance(x, str):
                return None
            key = x.casefold()
            return True if key in truthy else False if key in falsy else None

        parsed = _parse_unique(text, to_bool)
        bad = present & parsed.isna().to_numpy()
        return (
            pd.Series(pd.array(parsed.tolist(), dtype="boolean")),
            pd.Series(bad),
            "not_boolean",
            _TYPE_WORDS[t],
        )
    if t in ("date", "timestamp"):
        return _parse_time(col, text, present, zone)
    if t == "json":

        def to_json(x: Any) -> Any:
            if not isinstance(x, str):
                return None
            try:
                return json.dumps(json.loads(x), sort_keys=True, separators=(",", ":"))
            except json.JSONDecodeError:
                return None

        parsed = _parse_unique(text, to_json)
        bad = present & parsed.isna().to_numpy()
        return parsed.astype(object), pd.Series(bad), "not_json", _TYPE_WORDS[t]
    raise AssertionError(t)  # pragma: no cover


def _apply_case(x: str, case: str) -> str:
    if case == "lower":
        return x.lower()
    if case == "upper":
        return x.upper()
    return re.sub(r"[\s\-]+", "_", x.strip().lower())


def _money_currency(
    col: SourceColumn, mapping: Mapping, parsed_so_far: dict[str, pd.Series], n: int
) -> pd.Series:
    """The currency of each row of money column ``col``."""
    if col.currency and col.currency.startswith("column:"):
        return parsed_so_far[col.currency.split(":", 1)[1]]
    if col.currency:
        return pd.Series([col.currency] * n, dtype=object)
    if mapping.currency_column:
        return parsed_so_far[mapping.currency_column]
    return pd.Series([mapping.currency] * n, dtype=object)


def _parse_money(
    col: SourceColumn,
    text: pd.Series,
    present: np.ndarray,
    mapping: Mapping,
    parsed_so_far: dict[str, pd.Series],
    raw_so_far: dict[str, pd.Series] | None = None,
) -> tuple[pd.Series, pd.Series, pd.Series, pd.Series]:
    currency = _money_currency(col, mapping, parsed_so_far, len(text))
    units = col.units or mapping.money_units
    rx = _number_regex(mapping, integer=False)

    def to_minor(pair: tuple[Any, Any]) -> Any:
        x, cur = pair
        if not isinstance(x, str):
            return None
        if not isinstance(cur, str):
            return "no_currency"
        if not rx.fullmatch(x):
            return "not_money"
        amount = Decimal(_normalize_number(x, mapping))
        scaled = amount.scaleb(currency_exponent(cur)) if units == "major" else amount
        if scaled != scaled.to_integral_value():
            return "sub_minor_unit"
        value = int(scaled)
        return value if -(2**63) <= value < 2**63 else "not_money"

    keys = pd.Series(list(zip(text.tolist(), currency.tolist(), strict=True)), dtype=object)
    parsed = _parse_unique(keys, to_minor)
    problem = parsed.map(lambda x: x if isinstance(x, str) else None)
    # a currency that was given but invalid is reported on the currency column already
    given = _money_currency(col, mapping, raw_so_far, len(text)) if raw_so_far else None
    if given is not None:
        problem = problem.where(~((problem == "no_currency") & given.notna()), None)
    bad = present & problem.notna().to_numpy()
    minor = parsed.where(parsed.map(lambda x: not isinstance(x, str)), None)
    out = pd.Series(pd.array(minor.tolist(), dtype="Int64"))
    words = {
        "sub_minor_unit": "a whole number of minor units of its currency",
        "no_currency": "convertible: its row has no currency",
        "not_money": _TYPE_WORDS["money"],
    }
    rule = problem.fillna("not_money")
    return out, pd.Series(bad), rule, rule.map(words)


_OFFSET = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$", re.IGNORECASE)


def _parse_time(
    col: SourceColumn, text: pd.Series, present: np.ndarray, zone: str
) -> tuple[pd.Series, pd.Series, str, str]:
    n = len(text)
    is_date = col.type == "date"
    formats = col.formats or (("%Y-%m-%d",) if is_date else ("ISO8601",))
    epoch_us = np.zeros(n, dtype=np.int64)
    ambiguous = np.zeros(n, dtype=bool)
    todo = present.copy()
    s = text.astype(object)

    def take(positions: np.ndarray, stamps: pd.Series) -> None:
        epoch_us[positions] = stamps.astype("datetime64[us, UTC]").astype("int64").to_numpy()
        todo[positions] = False

    for fmt in formats:
        if not todo.any():
            break
        idx = np.flatnonzero(todo)
        sub = s.iloc[idx]
        if fmt == "unix":
            nums = pd.to_numeric(sub, errors="coerce")
            ok = (nums.notna() & nums.between(-(2**40), 2**40)).to_numpy()
            if ok.any():
                take(idx[ok], pd.to_datetime(nums[ok].astype("int64"), unit="s", utc=True))
            continue
        aware = sub.map(lambda x: bool(_OFFSET.search(x))).to_numpy(dtype=bool)
        for has_offset in (True, False):
            part = sub[aware == has_offset]
            if part.empty:
                continue
            pidx = idx[aware == has_offset]
            parsed = pd.to_datetime(part, format=fmt, errors="coerce", utc=has_offset)
            if is_date:
                # a date is a calendar day: keep its wall-clock value (tagged UTC only to
                # share the arithmetic below); an explicit offset is read in the zone first
                if getattr(parsed.dt, "tz", None) is not None:
                    parsed = parsed.dt.tz_convert(zone).dt.tz_localize(None)
                parsed = parsed.dt.tz_localize("UTC")
            elif not has_offset:
                if getattr(parsed.dt, "tz", None) is not None:  # a %z format
                    parsed = parsed.dt.tz_convert("UTC")
                else:
                    local = parsed.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
                    ambiguous[pidx[(parsed.notna() & local.isna()).to_numpy()]] = True
                    parsed = local.dt.tz_convert("UTC")
            ok = parsed.notna().to_numpy()
            if ok.any():
                take(pidx[ok], parsed[ok])
    result = pd.Series(pd.to_datetime(epoch_us, unit="us", utc=True)).astype("datetime64[us, UTC]")
    result[todo | ~present] = pd.NaT
    bad = todo & present
    if is_date:
        # naive midnights; the zone is applied when a date fills a timestamp column
        local = result.dt.tz_localize(None).dt.normalize()
        out = local.astype("datetime64[us]")
        return out, pd.Series(bad), "not_date", f"a date ({' or '.join(formats)})"
    word = "a timestamp" + (f" ({' or '.join(formats)})" if col.formats else "")
    if ambiguous.any() and (bad == ambiguous).all():
        word = f"an unambiguous local time in {zone}"
    return result, pd.Series(bad), "not_timestamp", word


def _as_utc(values: pd.Series, col: SourceColumn, zone: str) -> pd.Series:
    if col.type == "date":
        return values.dt.tz_localize(
            zone, ambiguous="NaT", nonexistent="shift_forward"
        ).dt.tz_convert("UTC")
    return values


def _check_bounds(
    col: SourceColumn,
    parsed: pd.Series,
    header: str,
    raw: pd.Series,
    errors: _Errors,
    values: dict[str, pd.Series],
    mapping: Mapping,
) -> None:
    if col.min is None and col.max is None:
        return
    if col.type == "money":
        # bounds are in major units; the parsed values are minor units of each row's currency
        currency = _money_currency(col, mapping, values, len(parsed))
        scale = _parse_unique(
            currency, lambda c: 10.0 ** currency_exponent(c) if isinstance(c, str) else np.nan
        ).to_numpy(dtype=float)
        numbers = parsed.astype("Float64").astype(float).to_numpy() / scale
    elif col.type == "decimal":
        numbers = np.array([float(x) if x is not None else np.nan for x in parsed], dtype=float)
    else:
        numbers = parsed.astype("Float64").astype(float).to_numpy()
    if col.min is not None:
        low = numbers < col.min
        rule = "not_negative" if col.min == 0 else "below_min"
        errors.add(
            low,
            column=header,
            rule=rule,
            message=f"{header!r} must be at least {col.min}: " + raw.astype("string").fillna(""),
            values=raw,
        )
    if col.max is not None:
        high = numbers > col.max
        errors.add(
            high,
            column=header,
            rule="above_max",
            message=f"{header!r} must be at most {col.max}: " + raw.astype("string").fillna(""),
            values=raw,
        )


# --------------------------------------------------------------------------- evaluating


def _canonical_dtype(col: Column) -> Any:
    family = _family(col)
    return {
        "text": "string",
        "json": "string",
        "int": "Int32" if col.type.upper() == "INTEGER" else "Int64",
        "float": "Float64",
        "bool": "boolean",
        "ts": "datetime64[us, UTC]",
        "date": object,
        "decimal": object,
    }[family]


def _decimal_scale(col: Column) -> int:
    m = re.search(r"DECIMAL\(\s*\d+\s*,\s*(\d+)\s*\)", col.type, re.IGNORECASE)
    return int(m.group(1)) if m else 9


def _empty_column(col: Column, n: int) -> pd.Series:
    dtype = _canonical_dtype(col)
    if dtype is object:
        return pd.Series([None] * n, dtype=object)
    if str(dtype).startswith("datetime64"):
        return pd.Series(pd.NaT, index=range(n), dtype=dtype)
    return pd.Series(pd.array([None] * n, dtype=dtype))


def empty_table(name: str) -> pd.DataFrame:
    """An empty frame with canonical table ``name``'s columns and dtypes."""
    table = TABLES[name]
    return pd.DataFrame({c.name: _empty_column(c, 0) for c in table.columns})


def _to_canonical(values: pd.Series, kind: str, col: Column, zone: str) -> pd.Series:
    """Convert parsed source values of ``kind`` to ``col``'s canonical dtype."""
    family = _family(col)
    n = len(values)
    if kind in ("string", "currency", "json", "text"):
        return pd.Series(pd.array(values.tolist(), dtype="string"))
    if kind in ("integer", "money"):
        if family == "int":
            return values.astype(_canonical_dtype(col))
        if family == "float":
            return values.astype("Float64")
        if family == "decimal":
            return pd.Series(
                [Decimal(int(x)) if x is not pd.NA else None for x in values], dtype=object
            )
    if kind == "number":
        return values.astype("Float64")
    if kind == "decimal":
        if family == "float":
            return pd.Series(
                pd.array([float(x) if x is not None else None for x in values], dtype="Float64")
            )
        quantum = Decimal(1).scaleb(-_decimal_scale(col))
        return pd.Series(
            [
                x.quantize(quantum, rounding=ROUND_HALF_EVEN) if x is not None else None
                for x in values
            ],
            dtype=object,
        )
    if kind == "boolean":
        return values.astype("boolean")
    if kind == "date":
        if family == "date":
            return pd.Series([x.date() if not pd.isna(x) else None for x in values], dtype=object)
        local = values.dt.tz_localize(zone, ambiguous="NaT", nonexistent="shift_forward")
        return local.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    if kind == "timestamp":
        if family == "ts":
            return values.astype("datetime64[us, UTC]")
        local = values.dt.tz_convert(zone)
        return pd.Series([x.date() if not pd.isna(x) else None for x in local], dtype=object)
    raise AssertionError((kind, family, n))  # pragma: no cover


@dataclass
class _Context:
    mapping: Mapping
    parsed: _Parsed
    frame: pd.DataFrame
    headers: list[str]
    lookups: dict[str, dict[str, str]]
    errors: _Errors
    n: int


def _const_series(value: Any, col: Column, n: int) -> pd.Series:
    dtype = _canonical_dtype(col)
    if dtype is object:
        return pd.Series([value] * n, dtype=object)
    if str(dtype).startswith("datetime64"):
        return (
            pd.Series([value] * n, index=range(n), dtype=dtype)
            if value is not None
            else _empty_column(col, n)
        )
    return pd.Series(pd.array([value] * n, dtype=dtype))


def _evaluate(expr: Any, col: Column, ctx: _Context, table: str) -> pd.Series:
    n = ctx.n
    mapping = ctx.mapping
    if isinstance(expr, Ref):
        src = mapping.columns[expr.column]
        return _to_canonical(
            ctx.parsed.values[expr.column], src.type, col, ctx.parsed.zones[expr.column]
        )
    if isinstance(expr, Const):
        return _const_series(expr.value, col, n)
    if isinstance(expr, Template):
        out = pd.Series([""] * n, dtype=object)
        missing = np.zeros(n, dtype=bool)
        for literal, field_name, _, _ in string.Formatter().parse(expr.text):
            out = out + literal
            if field_name is not None:
                value = ctx.parsed.values[field_name]
                missing |= pd.isna(value).to_numpy(dtype=bool)
                out = out + value.astype(object).map(
                    lambda x: "" if x is None or x is pd.NA else str(x)
                )
        return pd.Series(pd.array(out.where(~missing, None).tolist(), dtype="string"))
    if isinstance(expr, Divide):
        num_col = mapping.columns[expr.numerator]
        num = ctx.parsed.values[expr.numerator]
        den = ctx.parsed.values[expr.denominator]
        num_d = pd.Series([_to_decimal(x) for x in num], dtype=object)
        den_d = pd.Series([_to_decimal(x) for x in den], dtype=object)
        both = (num_d.notna() & den_d.notna()).to_numpy(dtype=bool)
        zero = both & den_d.map(lambda x: x == 0 if x is not None else False).to_numpy(dtype=bool)
        name = f"{table}.{col.name}"
        ctx.errors.add(
            zero,
            column=name,
            rule="division_by_zero",
            message=f"{name} = {expr.numerator} / {expr.denominator}, and {expr.denominator} is 0",
            values=None,
        )
        ok = both & ~zero
        quotient = pd.Series([None] * n, dtype=object)
        quotient[ok] = [a / b for a, b in zip(num_d[ok], den_d[ok], strict=True)]
        family = _family(col)
        if family == "int":
            inexact = ok & quotient.map(
                lambda q: q is not None and q != q.to_integral_value()
            ).to_numpy(dtype=bool)
            ctx.errors.add(
                inexact,
                column=name,
                rule="inexact_division",
                message=f"{name} = {expr.numerator} / {expr.denominator} is not a whole number"
                + (" of minor units" if num_col.type == "money" else "")
                + ": "
                + num.astype("string").fillna("")
                + " / "
                + den.astype("string").fillna(""),
                values=num.astype(object),
            )
            whole = quotient.where(~pd.Series(inexact), None)
            return pd.Series(
                pd.array(
                    [int(q) if q is not None else None for q in whole], dtype=_canonical_dtype(col)
                )
            )
        if family == "float":
            return pd.Series(
                pd.array([float(q) if q is not None else None for q in quotient], dtype="Float64")
            )
        quantum = Decimal(1).scaleb(-_decimal_scale(col))
        return pd.Series(
            [q.quantize(quantum) if q is not None else None for q in quotient], dtype=object
        )
    if isinstance(expr, Cases):
        result = _evaluate(expr.otherwise, col, ctx, table)
        for cond, branch in reversed(expr.branches):
            mask = _condition(cond, ctx)
            value = _evaluate(branch, col, ctx, table)
            if result.dtype == object:
                result = value.where(mask, result)
            else:
                result = result.mask(mask, value)
        return result
    if isinstance(expr, JsonOf):
        series = {key: ctx.parsed.values[c] for key, c in expr.items}
        dates = {key for key, c in expr.items if mapping.columns[c].type == "date"}
        records = []
        for i in range(n):
            record = {}
            for key, s in series.items():
                value = _jsonable(s.iloc[i])
                if key in dates and value is not None:
                    value = value[:10]  # the day, not a midnight timestamp
                if value is not None:
                    record[key] = value
            records.append(json.dumps(record, sort_keys=True) if record else None)
        return pd.Series(pd.array(records, dtype="string"))
    if isinstance(expr, JsonHeaders):
        rx = re.compile(expr.pattern, re.IGNORECASE)
        picked = []
        for i, h in enumerate(ctx.headers):
            m = rx.fullmatch(h.strip())
            if m:
                key = m.groupdict().get("key") or h.strip()
                picked.append((key, ctx.frame.iloc[:, i].str.strip().tolist()))
        records = []
        for i in range(n):
            record = {k: s[i] for k, s in picked if s[i] and s[i] not in ctx.mapping.null_values}
            records.append(json.dumps(record, sort_keys=True) if record else None)
        return pd.Series(pd.array(records, dtype="string"))
    if isinstance(expr, LookupOf):
        table_values = ctx.lookups[expr.lookup]
        keys = (
            ctx.parsed.values[expr.key]
            .astype(object)
            .map(lambda x: None if x is None or x is pd.NA else str(x))
        )
        found = keys.map(table_values)
        name = f"{table}.{col.name}"
        missing = (keys.notna() & found.isna()).to_numpy(dtype=bool)
        ctx.errors.add(
            missing,
            column=name,
            rule="lookup_missing",
            message=f"{name}: no {expr.lookup} entry for {expr.key} "
            + keys.astype("string").fillna(""),
            values=keys,
        )
        return pd.Series(pd.array(found.where(found.notna(), None).tolist(), dtype="string"))
    raise AssertionError(expr)  # pragma: no cover


def _to_decimal(x: Any) -> Decimal | None:
    if x is None or x is pd.NA or (isinstance(x, float) and np.isnan(x)):
        return None
    if isinstance(x, Decimal):
        return x
    return Decimal(str(x)) if isinstance(x, float) else Decimal(int(x))


def _jsonable(x: Any) -> Any:
    if x is None or x is pd.NA or (isinstance(x, float) and np.isnan(x)) or x is pd.NaT:
        return None
    if isinstance(x, pd.Timestamp):
        return x.isoformat()
    if isinstance(x, Decimal):
        return str(x)
    if isinstance(x, np.generic):
        return x.item()
    return x


def _condition(cond: Cond, ctx: _Context) -> np.ndarray:
    n = ctx.n
    if cond.op == "all":
        out = np.ones(n, dtype=bool)
        for p in cond.parts:
            out &= _condition(p, ctx)
        return out
    if cond.op == "any":
        out = np.zeros(n, dtype=bool)
        for p in cond.parts:
            out |= _condition(p, ctx)
        return out
    if cond.op == "not":
        return ~_condition(cond.parts[0], ctx)
    values = ctx.parsed.values[cond.column]
    present = values.notna().to_numpy(dtype=bool)
    if cond.op == "present":
        return present if cond.value else ~present
    if cond.op in ("equals", "in"):
        options = list(cond.value) if cond.op == "in" else [cond.value]
        hit = values.astype(object).isin(options).to_numpy(dtype=bool)
        return hit & present
    # numeric comparisons; money compares minor units (gt: 0 reads the same either way)
    numbers = pd.Series([float(d) if (d := _to_decimal(x)) is not None else np.nan for x in values])
    op = {"gt": np.greater, "ge": np.greater_equal, "lt": np.less, "le": np.less_equal}[cond.op]
    return (op(numbers.to_numpy(), float(cond.value)) & present).astype(bool)


# --------------------------------------------------------------------------- mapping a file


def _load_lookups(
    mapping: Mapping,
    base: Path,
    given: MappingABC[str, Any] | None,
    hashes: MappingABC[str, str] | None = None,
) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, spec in mapping.lookups.items():
        if given and name in given:
            value = given[name]
            if isinstance(value, MappingABC):
                out[name] = {str(k): str(v) for k, v in value.items()}
                continue
            path = Path(value)
        elif spec.sha256 is not None:
            out[name] = _pinned_lookup(mapping, spec, (hashes or {}).get(name, spec.sha256))
            continue
        else:
            path = Path(spec.file) if Path(spec.file).is_absolute() else base / spec.file
        if spec.missing or not path.is_file():
            raise _FileError(
                f"lookup {name!r} needs {path.name} (looked for {path}); put it beside the CSV "
                f"file (map_csv: or pass lookups={{{name!r}: path or dict}})"
            )
        out[name] = _read_lookup(mapping, spec, path)
    return out


def _pinned_lookup(mapping: Mapping, spec: Lookup, want: str) -> dict[str, str]:
    """A pinned lookup's table: its file beside the mapping, checked against ``want`` (its
    pinned hash, or the one an erasure rewrote the copy to)."""
    if mapping.path is None:
        raise _FileError(
            f"lookup {spec.name!r} is pinned to a file beside the mapping, which has no path"
        )
    path = Path(mapping.path).parent / spec.file
    if not path.is_file():
        raise _FileError(f"lookup {spec.name!r}: its copy {path} (sha256 {spec.sha256}) is missing")
    if hashlib.sha256(path.read_bytes()).hexdigest() != want:
        erased = "" if want == spec.sha256 else f", as an erasure rewrote it (pinned {spec.sha256})"
        raise _FileError(
            f"lookup {spec.name!r}: its copy {path} no longer has sha256 {want}{erased} "
            "(it was changed)"
        )
    return _read_lookup(mapping, spec, path)


def _read_lookup(mapping: Mapping, spec: Lookup, path: Path) -> dict[str, str]:
    name = spec.name
    sub = Mapping(
        name=f"{mapping.name}:{name}",
        description="",
        columns={},
        tables={},
        encoding=mapping.encoding,
        delimiter=mapping.delimiter,
    )
    raw = _read_csv(path, sub)
    normalized = [_norm_header(h) for h in raw.headers]
    try:
        ki = normalized.index(_norm_header(spec.key))
        vi = normalized.index(_norm_header(spec.value))
    except ValueError:
        raise _FileError(
            f"lookup {name!r}: {path.name} needs headers {spec.key!r} and {spec.value!r}; "
            f"found {', '.join(raw.headers)}"
        ) from None
    table: dict[str, str] = {}
    for row in raw.rows:
        key, value = row[ki].strip(), row[vi].strip()
        if not key or not value:
            continue
        if table.setdefault(key, value) != value:
            raise _FileError(
                f"lookup {name!r}: {spec.key} {key!r} maps to both {table[key]!r} and {value!r} in {path.name}"
            )
    return table


def _empty_result(
    mapping: Mapping, *, error: str | None, received: int = 0, **extra: Any
) -> MappedFile:
    return MappedFile(
        tables={name: empty_table(name) for name in mapping.tables},
        rejects=pd.DataFrame(
            {c: pd.Series(dtype="Int64" if c == "line" else "string") for c in REJECT_COLUMNS}
        ),
        error=error,
        received=received,
        mapping=mapping.name,
        **extra,
    )


def map_csv(
    path: str | Path,
    mapping: Mapping | str,
    *,
    lookups: MappingABC[str, MappingABC[str, str] | str | Path] | None = None,
    lookup_hashes: MappingABC[str, str] | None = None,
) -> MappedFile:
    """Read one CSV file and map it onto canonical tables.

    Args:
        path: The CSV file.
        mapping: A :class:`Mapping` or a name/path for :func:`load_mapping`.
        lookups: For mappings with ``lookups``: name -> a ``{key: value}`` dict or the path of
            the CSV to read it from (default: the mapping's file name, beside ``path``; a
            pinned lookup, as the lake stores them, reads its copy beside the mapping).
        lookup_hashes: For pinned lookups: name -> the SHA-256 their copy must have instead
            of the pinned one (the copy keeps its name and pin when ``workbench erase``
            rewrites it; the lake's erasure log records the new hash).

    Returns:
        A :class:`MappedFile`: frames for every table of the mapping with exactly the
        canonical columns, the rejected rows with reasons, or a whole-file ``error``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        MappingError: ``mapping`` names no valid mapping.
    """
    if not isinstance(mapping, Mapping):
        mapping = load_mapping(mapping)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no CSV file at {path}")
    try:
        raw = _read_csv(path, mapping)
    except _FileError as exc:
        return _empty_result(mapping, error=f"{path.name}: {exc}")
    received = len(raw.rows) + len(raw.malformed)
    extra = {"redacted": raw.redacted, "blank_lines": raw.blank_lines}
    try:
        resolved = _resolve_headers(raw.headers, mapping)
        lookup_tables = _load_lookups(mapping, path.parent, lookups, lookup_hashes)
        result = _map_rows(raw, mapping, resolved, lookup_tables)
    except _FileError as exc:
        log.warning("%s: %s", path.name, exc)
        return _empty_result(mapping, error=f"{path.name}: {exc}", received=received, **extra)
    tables, rejects, accepted, duplicates, table_lines = result
    if raw.malformed:
        width = len(raw.headers)
        malformed = pd.DataFrame(
            {
                "line": [m[0] for m in raw.malformed],
                "column_name": None,
                "rule": "malformed_row",
                "message": [f"expected {width} fields, found {m[1]}" for m in raw.malformed],
                "value": [m[2][:_MAX_VALUE_CHARS] for m in raw.malformed],
            }
        )
        rejects = pd.concat([malformed, rejects], ignore_index=True) if len(rejects) else malformed
        rejects = rejects.sort_values(["line"], kind="stable").reset_index(drop=True)
    rejects = rejects.astype({"line": "Int64"})
    for c in REJECT_COLUMNS[1:]:
        rejects[c] = rejects[c].astype("string")
    rejected = int(rejects["line"].nunique()) if len(rejects) else 0
    if rejected:
        log.info(
            "%s: %d of %d rows rejected (%s)",
            path.name,
            rejected,
            received,
            ", ".join(f"{k}: {v}" for k, v in rejects["rule"].value_counts().items()),
        )
    return MappedFile(
        tables=tables,
        rejects=rejects,
        error=None,
        received=received,
        accepted=accepted,
        rejected=rejected,
        duplicates=duplicates,
        table_lines=table_lines,
        mapping=mapping.name,
        headers=resolved.found,
        unused_headers=[h for i, h in enumerate(raw.headers) if i not in resolved.used],
        **extra,
    )


def _map_rows(
    raw: _Raw, mapping: Mapping, resolved: _Resolved, lookup_tables: dict[str, dict[str, str]]
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, int, int, dict[str, np.ndarray]]:
    n = len(raw.rows)
    width = len(raw.headers)
    frame = (
        pd.DataFrame(raw.rows, columns=range(width), dtype=object)
        if n
        else pd.DataFrame(columns=range(width), dtype=object)
    )
    frame = frame.astype(object)
    lines = np.asarray(raw.lines, dtype=np.int64)
    errors = _Errors()
    parsed = _parse_columns(frame, mapping, resolved, errors, raw.headers)
    source_bad = np.zeros(n, dtype=bool)
    source_bad[errors.rows()] = True
    ctx = _Context(mapping, parsed, frame, raw.headers, lookup_tables, errors, n)

    built: dict[str, pd.DataFrame] = {}
    included: dict[str, np.ndarray] = {}
    for name, spec in mapping.tables.items():
        table = TABLES[name]
        mask = _condition(spec.where, ctx) if spec.where is not None else np.ones(n, dtype=bool)
        data = {}
        for col in table.columns:
            before = len(errors.frames)
            if col.name in spec.columns:
                data[col.name] = _evaluate(spec.columns[col.name], col, ctx, name).reset_index(
                    drop=True
                )
            else:
                data[col.name] = _empty_column(col, n)
            if not col.nullable:
                already = source_bad.copy()
                already[errors.rows(since=before)] = True
                null = pd.isna(data[col.name]).to_numpy(dtype=bool) & mask & ~already
                errors.add(
                    null,
                    column=f"{name}.{col.name}",
                    rule="missing_required",
                    message=f"{name}.{col.name} is NOT NULL but came out empty",
                    values=None,
                )
        built[name] = pd.DataFrame(data)
        included[name] = mask

    bad = np.zeros(n, dtype=bool)
    bad[errors.rows()] = True
    # rows that share a key but not their values reject the later rows, in every keyed
    # table (in a plain table two lines with one key are one record sent twice)
    for name in mapping.tables:
        if not TABLES[name].primary_key:
            continue
        keep = included[name] & ~bad
        conflict_rows = _conflicts(built[name], TABLES[name], keep, lines, spec, errors)
        bad[conflict_rows] = True

    tables: dict[str, pd.DataFrame] = {}
    table_lines: dict[str, np.ndarray] = {}
    good = ~bad
    repeated = np.zeros(n, dtype=bool)
    for name, spec in mapping.tables.items():
        table = TABLES[name]
        rows = good & included[name]
        df = built[name][rows].reset_index(drop=True)
        df["__line"] = lines[rows]
        if spec.aggregate_sum:
            df = _aggregate(df, table, spec)
        elif table.primary_key:
            again = df.duplicated(subset=list(table.primary_key), keep="first").to_numpy()
            if not spec.distinct:  # an exact repeat of an earlier line of the file
                repeated[np.flatnonzero(rows)[again]] = True
            df = df[~again].reset_index(drop=True)
        table_lines[name] = df["__line"].to_numpy(dtype=np.int64)
        tables[name] = df[table.column_names]

    rejects = _rejects_frame(errors, lines, mapping, resolved, raw.headers)
    return tables, rejects, int((good & ~repeated).sum()), int(repeated.sum()), table_lines


def _conflicts(
    df: pd.DataFrame,
    table: Table,
    keep: np.ndarray,
    lines: np.ndarray,
    spec: TableSpec,
    errors: _Errors,
) -> np.ndarray:
    """Rows whose non-key, non-summed values differ from the first row with the same key."""
    positions = np.flatnonzero(keep)
    if len(positions) == 0:
        return positions
    sub = df.iloc[positions].reset_index(drop=True)
    keys = list(table.primary_key)
    group = sub.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()
    first_of_group: dict[int, int] = {}
    first = np.array([first_of_group.setdefault(g, i) for i, g in enumerate(group)])
    conflict = np.zeros(len(sub), dtype=bool)
    where_col: list[str | None] = [None] * len(sub)
    for col in table.column_names:
        if col in keys or col in spec.aggregate_sum:
            continue
        here = sub[col]
        ref = here.iloc[first].reset_index(drop=True)
        both_null = here.isna().to_numpy() & ref.isna().to_numpy()
        equal = pd.Series(here == ref).fillna(False).to_numpy(dtype=bool)
        differs = ~(equal | both_null) & ~conflict
        for i in np.flatnonzero(differs):
            where_col[i] = col
        conflict |= differs
    rows = positions[conflict]
    if len(rows):
        messages = []
        values_here = []
        for i in np.flatnonzero(conflict):
            key = ", ".join(f"{k}={sub[k].iloc[i]}" for k in keys)
            col = where_col[i]
            if col in table.personal:  # a name or e-mail: say where, not what
                messages.append(
                    f"{table.name} {key}: {col} differs from line "
                    f"{lines[positions[first[i]]]} (personal data, not shown)"
                )
                values_here.append(_PERSONAL_MASK)
                continue
            messages.append(
                f"{table.name} {key}: {col} is {_native(sub[col].iloc[i])!r} here but "
                f"{_native(sub[col].iloc[first[i]])!r} on line {lines[positions[first[i]]]}"
            )
            values_here.append(str(sub[col].iloc[i]))
        mask = np.zeros(len(keep), dtype=bool)
        mask[rows] = True
        message = pd.Series([None] * len(keep), dtype=object)
        message[rows] = messages
        values = pd.Series([None] * len(keep), dtype=object)
        values[rows] = values_here
        errors.add(mask, column=f"{table.name}", rule="conflict", message=message, values=values)
    return rows


def _native(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (for messages people read)."""
    return value.item() if isinstance(value, np.generic) else value


def _aggregate(df: pd.DataFrame, table: Table, spec: TableSpec) -> pd.DataFrame:
    if df.empty:
        return df
    keys = list(table.primary_key)
    grouped = df.groupby(keys, sort=False, dropna=False)
    out = (
        grouped.first().reset_index()
        if len(df.columns) > len(keys)
        else grouped.size().reset_index()[keys]
    )
    for col in spec.aggregate_sum:
        sums = grouped[col].sum(min_count=1).reset_index(drop=True)
        out[col] = sums.to_numpy()
    for col in table.columns:
        out[col.name] = out[col.name].astype(df[col.name].dtype)
    return out


def _rejects_frame(
    errors: _Errors, lines: np.ndarray, mapping: Mapping, resolved: _Resolved, headers: list[str]
) -> pd.DataFrame:
    if not errors.frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in REJECT_COLUMNS})
    df = pd.concat(errors.frames, ignore_index=True)
    df["line"] = lines[df["row"].to_numpy()]
    # Every cell was PAN-redacted when the file was read, so values and messages (built from
    # cells) hold none; personal data (names, e-mails) is masked here.
    personal = _personal_headers(mapping, resolved, headers)
    value = df["value"].astype("string").str.slice(0, _MAX_VALUE_CHARS)
    is_personal = df["column_name"].isin(personal)
    df["value"] = value.where(~is_personal | value.isna(), _PERSONAL_MASK)
    df.loc[is_personal, "message"] = df.loc[is_personal, "message"].map(
        lambda m: m.split(":")[0] + ": " + _PERSONAL_MASK if isinstance(m, str) and ":" in m else m
    )
    df = df.sort_values(["line", "column_name"], kind="stable").reset_index(drop=True)
    return df[REJECT_COLUMNS]


def _personal_headers(mapping: Mapping, resolved: _Resolved, headers: list[str]) -> set[str]:
    """Headers of source columns that feed personal canonical columns (names, e-mails)."""
    return {
        headers[resolved.positions[ref.column]]
        for ref in _personal_refs(mapping)
        if ref.column in resolved.positions
    }


def _personal_nodes(mapping: Mapping, kind: type) -> Iterator[Any]:
    """The expression nodes of type ``kind`` in ``mapping``'s personal canonical columns
    (names, e-mails)."""
    for table_name, spec in mapping.tables.items():
        personal = set(TABLES[table_name].personal)
        for col_name, expr in spec.columns.items():
            if col_name in personal:
                yield from (e for e in _walk([expr]) if isinstance(e, kind))


def _personal_refs(mapping: Mapping) -> Iterator[Ref]:
    """The source-column references of ``mapping`` that feed personal canonical columns."""
    return _personal_nodes(mapping, Ref)


def personal_positions(mapping: Mapping, headers: list[str]) -> dict[int, bool]:
    """Positions of ``headers`` whose column feeds a personal canonical column (names,
    e-mails) under ``mapping``, each with whether the mapping requires a value there; also
    for a file the mapping does not fit (erasure reads the files that failed too)."""
    out: dict[int, bool] = {}
    for ref in _personal_refs(mapping):
        col = mapping.columns.get(ref.column)
        out.update({i: out.get(i, False) or col.required for i in _header_hits(col, headers)})
    return out


def _header_hits(col: SourceColumn | None, headers: list[str]) -> set[int]:
    """Positions of ``headers`` that source column ``col`` reads: those of its first header
    alias found (a ``re:`` alias matches the stripped header in full, ignoring case)."""
    normalized = [_norm_header(h) for h in headers]
    for alias in col.headers if col else ():
        if alias.startswith("re:"):
            rx = re.compile(alias[3:], re.IGNORECASE)
            hit = {i for i, h in enumerate(headers) if rx.fullmatch(h.strip())}
        else:
            hit = {i for i, h in enumerate(normalized) if h == _norm_header(alias)}
        if hit:
            return hit
    return set()


def _personal_lookups(mapping: Mapping) -> Iterator[LookupOf]:
    """The lookups ``mapping`` reads a personal canonical column (names, e-mails) through."""
    return _personal_nodes(mapping, LookupOf)


def reads_personal_lookups(mapping: Mapping) -> bool:
    """Whether ``mapping`` reads a name or e-mail through a lookup."""
    return next(_personal_lookups(mapping), None) is not None


def personal_lookup_keys(mapping: Mapping, headers: list[str]) -> dict[str, set[int]]:
    """Per lookup that ``mapping`` reads a name or e-mail through, the positions of
    ``headers`` (of a file mapped with it) holding the key it is looked up with (e.g. a
    subscription id): on a customer's rows, the keys of their entries in the lookup file,
    which need not hold the customer's id (erasure reads them, :mod:`workbench.ingest.erase`)."""
    out: dict[str, set[int]] = {}
    for e in _personal_lookups(mapping):
        out.setdefault(e.lookup, set()).update(_header_hits(mapping.columns.get(e.key), headers))
    return out


def personal_lookup_positions(mapping: Mapping, lookup: str, headers: list[str]) -> dict[int, bool]:
    """Positions of ``headers`` (of the file that ``mapping``'s lookup ``lookup`` reads) whose
    values feed a personal canonical column (names, e-mails): the lookup's value column, when
    the mapping reads a name or e-mail through the lookup. Each requires a value (like
    :func:`personal_positions`, which it complements): a lookup row without one is no entry,
    and the rows that look it up are rejected."""
    spec = mapping.lookups.get(lookup)
    if spec is None or lookup not in {e.lookup for e in _personal_lookups(mapping)}:
        return {}
    want = _norm_header(spec.value)
    return {i: True for i, h in enumerate(headers) if _norm_header(h) == want}


def lookup_key_position(mapping: Mapping, lookup: str, headers: list[str]) -> int | None:
    """The position of ``headers`` (of the file ``mapping``'s lookup ``lookup`` reads) that
    holds the lookup's key, or ``None``."""
    spec = mapping.lookups.get(lookup)
    want = _norm_header(spec.key) if spec else None
    return next((i for i, h in enumerate(headers) if _norm_header(h) == want), None)


def detect_mapping(path: str | Path, candidates: Iterable[str] | None = None) -> str | None:
    """The bundled mapping that fits a CSV's header best, or None.

    A mapping fits when every column it requires is present; among those, the one reading
    the most of the file's headers wins.
    """
    path = Path(path)
    best: tuple[int, str] | None = None
    for name in candidates or available_mappings():
        mapping = load_mapping(name)
        try:
            with path.open(encoding=mapping.encoding, newline="") as fh:
                headers = next(csv.reader(fh, delimiter=mapping.delimiter), [])
            resolved = _resolve_headers(headers, mapping)
        except (_FileError, UnicodeDecodeError, StopIteration):
            continue
        score = len(resolved.positions)
        if best is None or score > best[0]:
            best = (score, name)
    return best[1] if best else None
