"""CSV mappings with lookups: the lookup files are kept in the lake with the mapping, so a
rebuild, a re-map and an erasure read the copies the loads used, not the files beside the
original CSV (which may have been edited, moved or deleted since)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
import yaml
from test_ingest_csv import rows

from workbench.config import load_settings
from workbench.ingest import (
    IngestError,
    csv_files,
    erase_customer,
    ingest,
    rebuild,
    table_checksums,
    verify,
)
from workbench.ingest.lake import Lake

USAGE = (
    "usage_id,subscription_id,usage_date,feature_name,usage_count,usage_duration_secs,"
    "error_count,is_beta_feature\n"
    "U-1,S-aa,2024-01-02,feature_1,3,10,0,False\n"
    "U-2,S-bb,2024-01-02,feature_1,4,10,0,False\n"
    "U-3,S-cc,2024-01-03,feature_2,5,10,0,False\n"
)
SUBSCRIPTIONS = "subscription_id,account_id,plan_tier\nS-aa,A-1,Pro\nS-bb,A-1,Pro\nS-cc,A-2,Basic\n"
EDITED = "subscription_id,account_id,plan_tier\nS-aa,A-9,Pro\nS-bb,A-9,Pro\nS-cc,A-9,Basic\n"
USAGE_ROWS = [("A-1", "2024-01-02", "feature_1", 7), ("A-2", "2024-01-03", "feature_2", 5)]
USAGE_SQL = "SELECT account_id, CAST(date AS VARCHAR), metric, quantity FROM usage ORDER BY 1, 2"


@pytest.fixture()
def settings(tmp_path: Path):
    return load_settings(root=tmp_path, overrides={"data_dir": str(tmp_path / "data")})


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    """A usage export with its subscriptions file beside it (the bundled mapping's lookup)."""
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "ravenstack_subscriptions.csv").write_text(SUBSCRIPTIONS)
    path = folder / "usage.csv"
    path.write_text(USAGE)
    return path


def _load(settings, path: Path, mapping: str | Path = "ravenstack_feature_usage", **kw):
    report = ingest(path, source="csv", mapping=mapping, settings=settings, progress=False, **kw)
    (f,) = report.files
    return f


def _usage(settings) -> list[tuple]:
    return [(a, d, m, int(q)) for a, d, m, q in rows(settings, USAGE_SQL)]


def test_rebuild_maps_with_the_lookup_as_loaded_when_it_was_edited(settings, export):
    f = _load(settings, export)
    assert f.status == "ok" and (f.received, f.accepted) == (3, 3)
    assert _usage(settings) == USAGE_ROWS
    before = table_checksums(settings)
    (export.parent / "ravenstack_subscriptions.csv").write_text(EDITED)
    rebuild(settings)
    assert _usage(settings) == USAGE_ROWS  # not A-9: the lake's copy of the lookup
    assert table_checksums(settings) == before
    assert verify(settings).ok


def test_rebuild_works_when_the_lookup_file_is_gone(settings, export):
    _load(settings, export)
    before = table_checksums(settings)
    (export.parent / "ravenstack_subscriptions.csv").unlink()
    export.unlink()
    rebuild(settings)
    assert table_checksums(settings) == before
    assert _usage(settings) == USAGE_ROWS
    assert verify(settings).ok


def test_the_lookup_is_kept_once_and_a_rerun_is_a_no_op(settings, export):
    _load(settings, export)
    lake = Lake(settings.data_dir / "lake")
    kept = sorted(
        p.relative_to(lake.root).as_posix() for p in (lake.root / "_mappings").rglob("*.*")
    )
    lookup = (export.parent / "ravenstack_subscriptions.csv").read_bytes()
    sha = hashlib.sha256(lookup).hexdigest()
    assert f"_mappings/lookups/{sha}.csv" in kept
    assert lake.read(f"_mappings/lookups/{sha}.csv") == lookup  # the exact bytes
    (mapping,) = {r[0] for r in rows(settings, "SELECT mapping FROM loads")}
    stored = yaml.safe_load(lake.read(mapping))
    assert stored["lookups"]["subscription_account"]["sha256"] == sha
    again = _load(settings, export)
    assert (again.duplicates, again.message) == (3, None)  # the same mapping and lookup
    assert _usage(settings) == USAGE_ROWS
    assert (
        sorted(p.relative_to(lake.root).as_posix() for p in (lake.root / "_mappings").rglob("*.*"))
        == kept
    )


def test_an_edited_lookup_is_another_mapping_and_a_remap_uses_it(settings, export):
    _load(settings, export)
    (export.parent / "ravenstack_subscriptions.csv").write_text(EDITED)
    again = _load(settings, export)
    assert again.duplicates == 3 and "another mapping" in again.message
    assert _usage(settings) == USAGE_ROWS
    remapped = _load(settings, export, remap=True, who="tester")
    assert remapped.accepted == 3
    assert _usage(settings) == [
        ("A-9", "2024-01-02", "feature_1", 7),
        ("A-9", "2024-01-03", "feature_2", 5),
    ]
    before = table_checksums(settings)
    (export.parent / "ravenstack_subscriptions.csv").unlink()
    rebuild(settings)  # both loads replayed, each with its own lookup
    assert table_checksums(settings) == before


def test_a_custom_mapping_with_a_lookup_survives_erase_after_both_are_gone(settings, tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "owners.csv").write_text("sub,owner\nS-aa,cus_1\nS-bb,cus_2\n")
    (folder / "usage.csv").write_text(
        "Sub,Day,Calls,Name\nS-aa,2024-01-31,3,Ann Smith\nS-bb,2024-02-01,4,Bob Jones\n"
    )
    mapping = tmp_path / "usage_x.yaml"
    mapping.write_text(
        "name: usage_x\n"
        "lookups:\n  owner: {file: owners.csv, key: sub, value: owner}\n"
        "columns:\n"
        "  sub: {headers: [Sub], required: true}\n"
        "  day: {headers: [Day], type: date, required: true}\n"
        "  calls: {headers: [Calls], type: number, required: true}\n"
        "  name: {headers: [Name]}\n"
        "tables:\n"
        "  accounts:\n"
        "    columns: {account_id: {lookup: owner, key: sub}, name: name}\n"
        "  usage:\n"
        "    columns: {account_id: {lookup: owner, key: sub}, date: day, quantity: calls,"
        " metric: {const: api_calls}}\n"
    )
    f = _load(settings, folder / "usage.csv", mapping=mapping)
    assert f.status == "ok" and f.accepted == 2
    (folder / "owners.csv").unlink()
    mapping.unlink()
    erase_customer("cus_1", who="tester", why="test", settings=settings)
    assert rows(settings, "SELECT account_id, name FROM accounts ORDER BY 1") == [
        ("cus_1", None),
        ("cus_2", "Bob Jones"),
    ]
    assert [r[0] for r in rows(settings, "SELECT account_id FROM usage ORDER BY 1")] == [
        "cus_1",
        "cus_2",
    ]
    assert verify(settings).ok


def test_a_missing_lookup_fails_the_file_naming_where_it_was_looked_for(settings, export):
    (export.parent / "ravenstack_subscriptions.csv").unlink()
    f = _load(settings, export)
    assert f.status == "failed"
    assert str(export.parent / "ravenstack_subscriptions.csv") in f.message
    before = table_checksums(settings)
    (export.parent / "ravenstack_subscriptions.csv").write_text(SUBSCRIPTIONS)
    rebuild(settings)  # the load failed then: it fails the same way now the file is there
    assert table_checksums(settings) == before
    again = _load(settings, export)  # loading it again with the file there maps it
    assert again.status == "ok" and again.accepted == 3
    assert _usage(settings) == USAGE_ROWS
    before = table_checksums(settings)
    rebuild(settings)
    assert table_checksums(settings) == before
    report = verify(settings)
    assert report.ok, [(c.name, c.detail) for c in report.failed()]


def test_verify_checks_the_lake_copy_of_a_lookup(settings, export):
    _load(settings, export)
    lake = Lake(settings.data_dir / "lake")
    (copy,) = (lake.root / "_mappings" / "lookups").iterdir()
    os.chmod(copy, copy.stat().st_mode | stat.S_IWUSR)
    copy.write_text(EDITED)
    report = verify(settings)
    assert not report.ok and [c.name for c in report.failed()] == ["lake_mappings"]
    with pytest.raises(Exception, match="lookup"):
        rebuild(settings)  # it would map differently: refused, the warehouse kept
    assert _usage(settings) == USAGE_ROWS


def test_loads_made_before_lookups_were_kept_read_the_file_beside_the_csv(
    settings, export, monkeypatch
):
    """A lake whose loads predate this: the stored mapping names the file, not a lake copy."""
    monkeypatch.setattr(csv_files, "_pin_lookups", lambda batch, inp, mapping: mapping)
    _load(settings, export)
    monkeypatch.undo()
    (mapping,) = {r[0] for r in rows(settings, "SELECT mapping FROM loads")}
    assert (
        "sha256"
        not in yaml.safe_load(Lake(settings.data_dir / "lake").read(mapping))["lookups"][
            "subscription_account"
        ]
    )
    before = table_checksums(settings)
    rebuild(settings)  # the file is still beside the CSV: as before
    assert table_checksums(settings) == before
    lookup = export.parent / "ravenstack_subscriptions.csv"
    lookup.unlink()
    with pytest.raises(IngestError, match=str(lookup)) as err:
        rebuild(settings)
    assert "put" in str(err.value).lower() and "back" in str(err.value).lower()
    assert table_checksums(settings) == before  # the warehouse was kept


EMAILS = "account,email\ncus_1,ann@example.com\ncus_2,bob@example.com\n"
ACCTS = "Account,Plan\ncus_1,pro\ncus_2,basic\n"
EMAIL_MAPPING = (
    "name: accts_x\n"
    "lookups:\n  email_of: {file: emails.csv, key: account, value: email}\n"
    "columns:\n"
    "  account: {headers: [Account], required: true}\n"
    "  plan: {headers: [Plan]}\n"
    "tables:\n"
    "  accounts:\n"
    "    columns: {account_id: account, email: {lookup: email_of, key: account}}\n"
)


@pytest.fixture()
def csv_settings(tmp_path: Path):
    return load_settings(root=tmp_path, overrides={"data_dir": str(tmp_path / "data")})


def test_erase_removes_a_customers_email_kept_in_a_lookup_copy(csv_settings, tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "emails.csv").write_text(EMAILS)
    (folder / "accts.csv").write_text(ACCTS)
    mapping = tmp_path / "accts_x.yaml"
    mapping.write_text(EMAIL_MAPPING)
    report = ingest(
        folder / "accts.csv", source="csv", mapping=mapping, settings=csv_settings, progress=False
    )
    assert report.files[0].status == "ok", report.files[0].message
    assert ("cus_1", "ann@example.com") in rows(
        csv_settings, "SELECT account_id, email FROM accounts"
    )
    (folder / "emails.csv").unlink()
    erase_customer("cus_1", who="tester", why="test", settings=csv_settings)
    lake = Lake(csv_settings.data_dir / "lake")
    holding = [
        p.relative_to(lake.root).as_posix()
        for p in lake.root.rglob("*")
        if p.is_file() and b"ann@example.com" in p.read_bytes()
    ]
    emails = dict(rows(csv_settings, "SELECT account_id, email FROM accounts"))
    assert emails.get("cus_1") in (None, "", "[erased]"), emails
    assert holding == []


def _email_load(settings, tmp_path: Path, emails: str = EMAILS, accts: str = ACCTS) -> Path:
    """Load ``accts`` with a mapping that reads each account's e-mail from ``emails`` (a
    lookup); returns the folder holding both files."""
    folder = tmp_path / "x"
    folder.mkdir(exist_ok=True)
    (folder / "emails.csv").write_text(emails)
    (folder / "accts.csv").write_text(accts)
    (tmp_path / "accts_x.yaml").write_text(EMAIL_MAPPING)
    f = _load_accts(settings, folder / "accts.csv", tmp_path)
    assert f.status == "ok", f.message
    return folder


def _load_accts(settings, csv: Path, tmp_path: Path):  # noqa: ANN202 - a FileReport
    """Load ``csv`` with the e-mail lookup mapping ``_email_load`` wrote; its file report."""
    mapping = tmp_path / "accts_x.yaml"
    (f,) = ingest(csv, source="csv", mapping=mapping, settings=settings, progress=False).files
    return f


def _copies(settings) -> dict[str, bytes]:
    folder = Path(settings.data_dir) / "lake" / "_mappings" / "lookups"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_verify_passes_after_erasing_a_lookup_copy_kept_under_its_name(csv_settings, tmp_path):
    _email_load(csv_settings, tmp_path)
    lake = Lake(csv_settings.data_dir / "lake")
    ((name, before),) = _copies(csv_settings).items()
    (mapping,) = {r[0] for r in rows(csv_settings, "SELECT mapping FROM loads")}
    pinned = lake.read(mapping)
    report = erase_customer("cus_1", who="tester", why="test", settings=csv_settings)
    assert report.files_rewritten == 1
    ((same_name, after),) = _copies(csv_settings).items()
    # rewritten in place: the name and the pinned mapping keep the hash it was stored with
    assert same_name == name and after != before
    assert lake.read(mapping) == pinned
    (entry,) = [e for e in lake.erasures() if e.get("lake_file")]
    assert entry["lake_file"] == f"_mappings/lookups/{name}"
    assert (entry["old_sha256"], entry["new_sha256"]) == (
        hashlib.sha256(before).hexdigest(),
        hashlib.sha256(after).hexdigest(),
    )
    report = verify(csv_settings)
    assert report.ok, str(report)
    assert "1 lookup copies" in {c.name: c.detail for c in report.checks}["lake_mappings"]
    assert rows(csv_settings, "SELECT lake_file FROM erasures WHERE lake_file IS NOT NULL") == [
        (f"_mappings/lookups/{name}",)
    ]


def test_rebuild_after_erase_maps_the_customers_email_to_the_erased_marker(csv_settings, tmp_path):
    from workbench.csv_mapping import load_mapping, map_csv

    folder = _email_load(csv_settings, tmp_path)
    (folder / "emails.csv").unlink()
    erase_customer("cus_1", who="tester", why="test", settings=csv_settings)
    lake = Lake(csv_settings.data_dir / "lake")
    ((data, mapping),) = rows(csv_settings, "SELECT source_file, mapping FROM loads")
    before = table_checksums(csv_settings)
    rebuild(csv_settings)
    assert table_checksums(csv_settings) == before
    # the rebuild mapped the rewritten copy: cus_1's e-mail is the marker, so the row loads
    # (accounts keeps an erased customer's e-mail empty); the other customer keeps theirs
    assert rows(csv_settings, "SELECT account_id, email FROM accounts ORDER BY 1") == [
        ("cus_1", None),
        ("cus_2", "bob@example.com"),
    ]
    assert rows(csv_settings, "SELECT count(*) FROM quarantine") == [(0,)]
    assert rows(csv_settings, "SELECT accepted, quarantined FROM loads") == [(2, 0)]
    stored = load_mapping(lake.path(mapping))
    # the stored mapping alone refuses the copy (its pin names the hash it was stored with);
    # given the hash the erasure log recorded, as the loader gives it, it maps the marker
    refused = map_csv(lake.path(data), stored).error
    assert refused is not None and "changed" in refused
    pin = stored.lookups["email_of"]
    hashes = {"email_of": lake.current_sha(lake.path(mapping).parent / pin.file, pin.sha256)}
    assert hashes["email_of"] != pin.sha256
    mapped = map_csv(lake.path(data), stored, lookup_hashes=hashes)
    assert mapped.error is None
    assert mapped.tables["accounts"][["account_id", "email"]].values.tolist() == [
        ["cus_1", "[erased]"],
        ["cus_2", "bob@example.com"],
    ]
    assert verify(csv_settings).ok


def test_erase_keeps_other_customers_lookup_values_and_the_csv_quoting(csv_settings, tmp_path):
    emails = (
        "account,email,note\n"
        'cus_2,bob@example.com,"Jones, Bob"\n'
        'cus_1,ann@example.com,"Smith, Ann\nVIP"\n'
        "cus_3,cy@example.com,plain\n"
    )
    _email_load(csv_settings, tmp_path, emails=emails, accts=ACCTS + "cus_3,basic\n")
    ((name, before),) = _copies(csv_settings).items()
    erase_customer("cus_1", who="tester", why="test", settings=csv_settings)
    ((_, after),) = _copies(csv_settings).items()
    # cus_1's record (two physical lines) is rewritten, the others keep their bytes
    assert after == before.replace(b"ann@example.com", b"[erased]")
    assert after.decode().splitlines()[:2] == before.decode().splitlines()[:2]
    assert rows(csv_settings, "SELECT account_id, email FROM accounts ORDER BY 1") == [
        ("cus_1", None),
        ("cus_2", "bob@example.com"),
        ("cus_3", "cy@example.com"),
    ]
    assert verify(csv_settings).ok


def test_a_lookup_copy_without_the_customer_is_not_rewritten(csv_settings, tmp_path):
    _email_load(csv_settings, tmp_path)
    others = tmp_path / "y"
    others.mkdir()
    (others / "emails.csv").write_text("account,email\ncus_7,gil@example.com\n")
    (others / "accts.csv").write_text("Account,Plan\ncus_7,pro\n")
    f = _load_accts(csv_settings, others / "accts.csv", tmp_path)
    assert f.status == "ok", f.message
    before = _copies(csv_settings)
    assert len(before) == 2
    erase_customer("cus_1", who="tester", why="test", settings=csv_settings)
    after = _copies(csv_settings)
    changed = sorted(n for n in before if before[n] != after[n])
    assert len(changed) == 1 and b"ann@example.com" in before[changed[0]]
    lake = Lake(csv_settings.data_dir / "lake")
    assert [e["lake_file"] for e in lake.erasures() if e.get("lake_file")] == [
        f"_mappings/lookups/{changed[0]}"
    ]
    assert verify(csv_settings).ok


def test_a_second_erase_of_the_customer_rewrites_no_lookup_copy(csv_settings, tmp_path):
    _email_load(csv_settings, tmp_path)
    erase_customer("cus_1", who="tester", why="test", settings=csv_settings)
    erased = _copies(csv_settings)
    before = table_checksums(csv_settings)
    again = erase_customer("cus_1", who="tester", why="again", settings=csv_settings)
    assert (again.files_rewritten, again.values_erased) == (0, 0)
    assert _copies(csv_settings) == erased
    after = table_checksums(csv_settings)
    # the second request is recorded (a summary row in erasures); nothing else changed
    assert int(after.pop("erasures").split(":")[0]) == int(before.pop("erasures").split(":")[0]) + 1
    assert after == before
    assert verify(csv_settings).ok


def test_loading_the_file_again_beside_the_original_lookup_after_erase(csv_settings, tmp_path):
    """The lookup file beside the CSV still has the erased e-mail: its bytes are the erased
    copy's as stored, so the mapping is the same one and the file's rows are duplicates; the
    copy stays erased."""
    folder = _email_load(csv_settings, tmp_path)
    erase_customer("cus_1", who="tester", why="test", settings=csv_settings)
    erased = _copies(csv_settings)
    again = _load_accts(csv_settings, folder / "accts.csv", tmp_path)
    assert (again.status, again.duplicates, again.message) == ("ok", 2, None)
    assert _copies(csv_settings) == erased
    assert rows(csv_settings, "SELECT account_id, email FROM accounts ORDER BY 1") == [
        ("cus_1", None),
        ("cus_2", "bob@example.com"),
    ]
    assert verify(csv_settings).ok


def test_an_erasure_stopped_before_rewriting_a_lookup_copy_is_finished_by_a_rerun(
    csv_settings, tmp_path, monkeypatch
):
    """Killed after logging the copy's rewrite, before making it: verify reports the copy,
    a rebuild refuses to map with it (saying to rerun the erasure) and keeps the warehouse,
    and rerunning the erasure finishes it."""
    _email_load(csv_settings, tmp_path)
    ((name, before),) = _copies(csv_settings).items()

    def killed(self, rel, data):
        raise OSError("killed")

    monkeypatch.setattr(Lake, "replace", killed)
    with pytest.raises(OSError, match="killed"):
        erase_customer("cus_1", who="tester", why="test", settings=csv_settings)
    monkeypatch.undo()
    assert _copies(csv_settings) == {name: before}
    lake = Lake(csv_settings.data_dir / "lake")
    assert [e["lake_file"] for e in lake.erasures()] == [f"_mappings/lookups/{name}"]
    assert [c.name for c in verify(csv_settings).failed()] == ["lake_mappings"]
    kept = table_checksums(csv_settings)
    with pytest.raises(IngestError, match="erase` again"):
        rebuild(csv_settings)
    assert table_checksums(csv_settings) == kept
    erase_customer("cus_1", who="tester", why="test", settings=csv_settings)
    assert b"ann@example.com" not in _copies(csv_settings)[name]
    assert verify(csv_settings).ok
    assert rows(csv_settings, "SELECT account_id, email FROM accounts ORDER BY 1") == [
        ("cus_1", None),
        ("cus_2", "bob@example.com"),
    ]


def test_a_file_loaded_before_lookups_were_kept_is_a_duplicate_when_loaded_again(
    csv_settings, tmp_path, monkeypatch
):
    from workbench.ingest import csv_files

    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "ravenstack_subscriptions.csv").write_text(
        "subscription_id,account_id,plan_tier\nS-aa,A-1,Pro\n"
    )
    (folder / "usage.csv").write_text(
        "usage_id,subscription_id,usage_date,feature_name,usage_count,usage_duration_secs,"
        "error_count,is_beta_feature\nU-1,S-aa,2024-01-02,feature_1,3,10,0,False\n"
    )
    monkeypatch.setattr(csv_files, "_pin_lookups", lambda batch, inp, mapping: mapping)
    (first,) = ingest(folder / "usage.csv", source="csv", settings=csv_settings,
                      progress=False).files  # fmt: skip
    assert (first.status, first.accepted) == ("ok", 1)
    monkeypatch.undo()
    (again,) = ingest(folder / "usage.csv", source="csv", settings=csv_settings,
                      progress=False).files  # fmt: skip
    assert (again.status, again.duplicates) == ("ok", 1)
    assert again.message is None, again.message


SUB_MAPPING = (
    "name: accts_sub\n"
    "lookups:\n  email_of: {file: emails.csv, key: subscription, value: email}\n"
    "columns:\n"
    "  account: {headers: [Account], required: true}\n"
    "  subscription: {headers: [Subscription]}\n"
    "tables:\n"
    "  accounts:\n"
    "    columns: {account_id: account, email: {lookup: email_of, key: subscription}}\n"
)


def _sub_load(settings, tmp_path: Path, accts: str) -> None:
    """Load ``accts`` with a mapping that reads each account's e-mail from a lookup keyed by
    subscription id (no customer id in the lookup file)."""
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "emails.csv").write_text(
        "subscription,email\nsub_1,ann@example.com\nsub_2,bob@example.com\n"
        "team_a,team@example.com\n"
    )
    (folder / "accts.csv").write_text(accts)
    (tmp_path / "accts_sub.yaml").write_text(SUB_MAPPING)
    (f,) = ingest(folder / "accts.csv", source="csv", mapping=tmp_path / "accts_sub.yaml",
                  settings=settings, progress=False).files  # fmt: skip
    assert f.status == "ok", f.message


def test_erase_reaches_a_lookup_keyed_by_the_customers_subscription(csv_settings, tmp_path):
    _sub_load(csv_settings, tmp_path, "Account,Subscription\ncus_1,sub_1\ncus_2,sub_2\n")
    ((name, before),) = _copies(csv_settings).items()
    assert b"ann@example.com" in before
    erase_customer("cus_1", who="tester", why="test", settings=csv_settings)
    after = _copies(csv_settings)[name]
    assert b"ann@example.com" not in after and b"sub_1,[erased]" in after
    assert b"sub_2,bob@example.com" in after  # someone else's row keeps its bytes
    assert verify(csv_settings).ok
    emails = dict(rows(csv_settings, "SELECT account_id, email FROM accounts"))
    assert emails["cus_2"] == "bob@example.com" and emails["cus_1"] in (None, "")


def test_erase_leaves_a_lookup_key_that_other_customers_rows_use_too(csv_settings, tmp_path):
    _sub_load(csv_settings, tmp_path, "Account,Subscription\ncus_1,team_a\ncus_3,team_a\n")
    ((name, before),) = _copies(csv_settings).items()
    erase_customer("cus_1", who="tester", why="test", settings=csv_settings)
    assert _copies(csv_settings)[name] == before  # team_a is cus_3's entry too
    assert dict(rows(csv_settings, "SELECT account_id, email FROM accounts"))["cus_3"] == (
        "team@example.com"
    )
