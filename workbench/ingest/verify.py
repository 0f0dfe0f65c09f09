"""Check that the warehouse and the lake still agree with everything ingestion promised.

Checks (each a row of the report):

* ``initialized``: the canonical tables exist (an empty file, from a load stopped before its
  first commit, is consistent: nothing was promised yet);

* ``conservation``: every file of every load has received = accepted + quarantined +
  duplicates;
* ``events_unique``: one row per event id;
* ``events_accepted``: the events table holds exactly the events the JSON loads accepted;
* ``lake_files``: every file a load used is in the lake with the content hash it was
  received with (or, after an erasure, the hash the erasure log recorded);
* ``lake_mappings``: every CSV mapping a load used is in the lake (``_mappings/``) with the
  hash it is named by, and so is every lookup file it is pinned to (with its ``sha256``, or,
  after an erasure rewrote the copy, the hash the erasure log recorded), so a rebuild maps
  every file the same way; mappings stored before lookup files were kept in the lake, which
  read them beside the original CSV, are counted in the detail;
* ``receipts``: every load has its receipt in the lake (so ``rebuild`` can replay it), except
  at most the newest, committed just before a stop (the next ingest or rebuild writes it);
* ``no_card_numbers``: no lake file and no quarantine value holds a Luhn-valid card number;
* ``personal_data``: names and e-mails only in ``accounts``; none in quarantine values;
  erased customers have none left;
* ``contracts``: every canonical table satisfies its pandera contract.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from workbench.config import Settings, load_settings
from workbench.engines import table_names
from workbench.ingest import contracts
from workbench.ingest.lake import Lake, sha256_file
from workbench.ingest.records import redact_cards
from workbench.ingest.tables import INTERNAL
from workbench.lakehouse import open_warehouse
from workbench.redact import contains_pan
from workbench.schema import TABLES

log = logging.getLogger(__name__)

_EMAIL_SQL = r"'[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}'"


@dataclass
class Check:
    """One verification."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class VerifyReport:
    """All checks; ``ok`` when every one passed."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([c.__dict__ for c in self.checks])

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def __str__(self) -> str:
        lines = [f"{'ok ' if c.ok else 'BAD'} {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


def _without(load_ids: list[str], text: str) -> str:
    """``text`` with these load ids taken out. Quarantine messages name loads, and ids made
    before they were joined by ``_`` (``<time>-<hex>``) read as a typed card number about
    one time in ten (:func:`workbench.ingest.loader.new_load_id`); a load id is the
    workbench's own, not a card number, whatever its digits."""
    for load_id in load_ids:
        text = text.replace(load_id, " ")
    return text


def _lake_checks(loads: pd.DataFrame, lake: Lake) -> list[Check]:
    expected = lake.expected_sha()
    missing, changed, cards = [], [], []
    for rel, sha in loads[["source_file", "file_sha256"]].drop_duplicates().itertuples(index=False):
        path = lake.path(rel)
        if not path.exists():
            missing.append(rel)
            continue
        want = expected.get(rel, sha)
        if sha256_file(path) != want:
            changed.append(rel)
        if redact_cards(path.read_bytes())[1]:
            cards.append(rel)
    mappings, lookup_copies = _mapping_check(loads, lake)
    for rel in lookup_copies:
        if redact_cards(lake.read(rel))[1]:
            cards.append(rel)
    out = [
        Check(
            "lake_files",
            not missing and not changed,
            f"{len(loads['source_file'].unique())} files; missing: {missing[:3]}; changed: {changed[:3]}"
            if missing or changed
            else f"{loads['source_file'].nunique()} files present with their hashes",
        ),
        Check(
            "no_card_numbers",
            not cards,
            f"card numbers in {cards[:3]}" if cards else "no card numbers in the lake files",
        ),
        mappings,
    ]
    return out


def _mapping_check(loads: pd.DataFrame, lake: Lake) -> tuple[Check, list[str]]:
    """The ``lake_mappings`` check, and the lake paths of the lookup copies it found."""
    missing, changed, copies = [], [], []
    outside = 0
    used = loads["mapping"].dropna().unique() if "mapping" in loads else []
    for rel in sorted(used):
        path = lake.path(rel)
        if not path.is_file():
            missing.append(rel)
            continue
        if sha256_file(path) != Path(rel).stem:
            changed.append(rel)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            lookups = dict(data.get("lookups") or {})
        except (yaml.YAMLError, UnicodeDecodeError, AttributeError, TypeError, ValueError):
            changed.append(rel)
            continue
        for spec in lookups.values():
            spec = spec if isinstance(spec, dict) else {}
            if spec.get("missing"):
                continue  # the file was missing when loaded; the load failed
            if not spec.get("sha256"):
                outside += 1
                continue
            copy = (Path(rel).parent / str(spec.get("file"))).as_posix()
            if not lake.path(copy).is_file():
                missing.append(copy)
            elif sha256_file(lake.path(copy)) != lake.current_sha(lake.path(copy), spec["sha256"]):
                changed.append(copy)
            else:
                copies.append(copy)
    ok = not missing and not changed
    detail = (
        f"{len(used)} mappings, {len(copies)} lookup copies"
        + ("" if ok else f"; missing: {missing[:3]}; changed: {changed[:3]}")
        + (
            f"; {outside} lookups of mappings stored before lookup files were kept in the lake "
            "are read beside the original CSV files (rebuild needs them there)"
            if outside
            else ""
        )
    )
    return Check("lake_mappings", ok, detail), sorted(set(copies))


def verify(settings: Settings | None = None, *, check_lake: bool = True) -> VerifyReport:
    """Run every check (read-only).

    Args:
        settings: Where the data directory and the warehouse are.
        check_lake: Also hash every lake file (reads the whole lake).

    Returns:
        The checks with details; ``report.ok`` tells whether all passed.
    """
    settings = settings or load_settings()
    lake = Lake(Path(settings.data_dir) / "lake")
    report = VerifyReport()
    with open_warehouse(settings).read(step="verify") as con:
        present = table_names(con)
        if not present:
            # the file exists but no transaction ever committed (a load stopped before its
            # first commit): an empty store is consistent, and the next ingest starts it
            report.checks.append(Check("initialized", True, "empty warehouse: nothing committed"))
            return report
        missing = sorted(set(TABLES) - present)
        if missing:
            report.checks.append(
                Check(
                    "initialized",
                    False,
                    f"canonical tables missing: {missing[:5]}; run `workbench ingest` (it creates "
                    "them) or `workbench rebuild`",
                )
            )
            return report
        loads = con.execute("SELECT * FROM loads").df()
        missing_internal = sorted(set(INTERNAL) - present)
        if missing_internal:
            # ingestion creates its internal tables in its own transaction after the canonical
            # ones: a load killed between the two commits left no data, and the next ingest
            # creates them; once anything was loaded they must all be there
            ok = loads.empty and len(missing_internal) == len(INTERNAL)
            report.checks.append(
                Check(
                    "initialized",
                    ok,
                    "canonical tables created, nothing loaded yet"
                    if ok
                    else f"ingestion tables missing: {missing_internal[:5]}; run `workbench "
                    "rebuild` to recreate the warehouse from the lake",
                )
            )
            return report
        bad = loads[
            loads["received"] != loads["accepted"] + loads["quarantined"] + loads["duplicates"]
        ]
        report.checks.append(
            Check(
                "conservation",
                bad.empty,
                f"{len(loads)} file loads balanced"
                if bad.empty
                else f"unbalanced: {bad['source_file'].tolist()[:3]}",
            )
        )
        n, distinct = con.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM events"
        ).fetchall()[0]
        report.checks.append(
            Check("events_unique", n == distinct, f"{n} events, {distinct} distinct ids")
        )
        accepted = int(loads.loc[loads["source"].isin(["stripe", "webhook"]), "accepted"].sum())
        report.checks.append(
            Check(
                "events_accepted",
                accepted == n,
                f"loads accepted {accepted} events; the events table has {n}",
            )
        )
        receipts = lake.receipt_ids()
        lacking = sorted(set(loads["load_id"]) - receipts)
        # A load committed right before a crash has no receipt yet: every ingest and rebuild
        # first writes missing receipts from the `loads` rows (sync_receipts), so only the
        # newest load can be waiting for one. Any other missing receipt was lost or removed.
        pending = len(lacking) == 1 and lacking[0] == max(loads["load_id"])
        report.checks.append(
            Check(
                "receipts",
                not lacking or pending,
                f"{len(receipts)} receipts"
                if not lacking
                else f"{len(receipts)} receipts; the newest load ({lacking[0]}) was committed "
                "just before a stop: the next ingest or rebuild writes its receipt"
                if pending
                else f"no receipt for {lacking[:3]}",
            )
        )
        if check_lake:
            report.checks.extend(_lake_checks(loads, lake))
        q_values = con.execute(
            "SELECT value_redacted, message FROM quarantine "
            "WHERE regexp_matches(coalesce(value_redacted, '') || ' ' || message, '[0-9][0-9 -]{11,}[0-9]')"
        ).fetchall()
        dashed = [r[0] for r in con.execute(
            "SELECT DISTINCT load_id FROM loads WHERE load_id LIKE '%-%'"
        ).fetchall()]  # fmt: skip
        q_cards = sum(contains_pan(_without(dashed, f"{v or ''} {m}")) for v, m in q_values)
        q_mail = con.execute(
            f"SELECT count(*) FROM quarantine WHERE regexp_matches(value_redacted, {_EMAIL_SQL}) "
            f"OR regexp_matches(message, {_EMAIL_SQL})"
        ).fetchall()[0][0]
        personal_tables = [t.name for t in TABLES.values() if t.personal and t.name != "accounts"]
        erased = con.execute(
            "SELECT count(*) FROM accounts WHERE account_id IN (SELECT customer_id FROM erasures) "
            "AND (name IS NOT NULL OR email IS NOT NULL)"
        ).fetchall()[0][0]
        ok = not personal_tables and q_mail == 0 and erased == 0
        report.checks.append(
            Check(
                "personal_data",
                ok,
                f"personal columns outside accounts: {personal_tables}; e-mails in quarantine: {q_mail}; "
                f"erased accounts still holding personal data: {erased}",
            )
        )
        if q_cards:
            report.checks.append(
                Check(
                    "no_card_numbers_quarantine",
                    False,
                    f"{q_cards} quarantine values hold card numbers",
                )
            )
        failures = []
        for name in TABLES:
            if name in ("quarantine",):
                continue
            frame = (
                con.sql(f"SELECT * FROM {name}")
                .to_arrow_table()
                .to_pandas(types_mapper=pd.ArrowDtype)
            )
            fails = contracts.validate(frame, name)
            if len(fails):
                failures.append(
                    f"{name}: {fails['column_name'].iloc[0]} {fails['rule'].iloc[0]} ({len(fails)})"
                )
        report.checks.append(
            Check(
                "contracts",
                not failures,
                "; ".join(failures[:5])
                if failures
                else f"{len(TABLES)} tables satisfy their contracts",
            )
        )
    for c in report.failed():
        log.warning("verify: %s failed: %s", c.name, c.detail)
    return report
