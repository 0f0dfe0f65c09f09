"""Policy changes through the approvals queue: propose, approve, apply, roll back.

The dunning policy in force is a YAML file, ``settings.policy_file``: by default
``<data_dir>/policy.yaml``, created from the packaged ``workbench/policies/default.yaml``
on first use (:func:`~workbench.policy.policy_file_in_force`), so an approved change writes
the data folder, never the package's file. Changing it is a high-risk
action (``policy_change`` is one of :data:`~workbench.policy.HUMAN_ONLY_ACTION_TYPES`), so
it never happens by editing the file in place: :func:`propose_policy_change` validates the
proposed YAML, computes what it would change (:func:`~workbench.policy.policy_diff`) and
queues a ``policy_change`` item holding the proposed text, the diff and the SHA-256 of the
policy file it was proposed against. An approver other than the requester approves it in
the approvals dashboard; the queue then runs this module's executor, which

1. refuses if the file no longer has the hash it had when the change was proposed (someone
   edited it meanwhile: the item is stale; propose again against the current file),
2. keeps the current file under ``<data_dir>/policies/history/<sha256>.yaml``, and
3. writes the new file atomically (temporary file in the same folder, fsync,
   ``os.replace``), so a crash leaves the old file or the new one, never half of either.

A rollback (within the current policy's override window, from the dashboard) restores the
kept file, but only while the policy file is still the one this change wrote.

An approval whose process died before its outcome was recorded is told apart by the file's
hash when the queue recovers it: the proposal's hash (and the replaced file kept) means it
was written, so it is recorded as executed; the old hash means nothing was written. So is a
rollback: the old hash means the kept file was restored, so it is recorded as rolled back;
the proposal's hash means nothing was restored, so the change stays executed.

Importing this module registers the executor and the state provider (the approvals queue
imports it on first use of a ``policy_change`` item, see ``approvals._OWNERS``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock, Timeout

from workbench import approvals
from workbench.approvals import ActionItem, ExecutionContext, Identity, Outcome, StoreLike
from workbench.config import Settings
from workbench.policy import (
    PolicyError,
    load_policy,
    parse_policy_text,
    policy_diff,
    policy_file_in_force,
)
from workbench.store import atomic_write_bytes

log = logging.getLogger(__name__)

ACTION_TYPE = "policy_change"
#: The state scope of policy_change items: checked against the policy file on disk now.
STATE_SCOPE = ACTION_TYPE
LOCK_TIMEOUT_S = 30.0
STALE_MESSAGE = (
    "not approved: the policy file changed since this policy change was proposed, so its diff "
    "no longer describes what approving would do; nothing was written. Propose the change "
    "again against the current file (`workbench policy propose FILE --reason ...`)"
)


class PolicyChangeError(RuntimeError):
    """A policy change cannot be proposed, applied or rolled back; the message says why and
    what to do next."""


# --------------------------------------------------------------------------- files


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path | str) -> str | None:
    """Hex SHA-256 of a file's bytes, or ``None`` when it does not exist."""
    try:
        return sha256_bytes(Path(path).read_bytes())
    except FileNotFoundError:
        return None


def history_dir(settings: Settings) -> Path:
    """``<data_dir>/policies/history``: every policy file a change replaced, named by hash."""
    return Path(settings.data_dir) / "policies" / "history"


@contextlib.contextmanager
def _file_lock(policy_file: Path) -> Iterator[None]:
    """One policy change (or rollback) at a time on this policy file, whichever data folder
    the proposer used: two approvers approving two changes at once must not both pass the
    hash check. The lock file sits next to the policy file (``.<name>.lock``)."""
    lock = policy_file.with_name(f".{policy_file.name}.lock")
    try:
        with FileLock(str(lock), timeout=LOCK_TIMEOUT_S):
            yield
    except Timeout as exc:
        raise PolicyChangeError(
            f"another policy change held {lock} for {LOCK_TIMEOUT_S:.0f} s; nothing was "
            "written: try again"
        ) from exc


def _read_proposal(new_policy: Path | str) -> tuple[str, str]:
    """``(text, source)`` of a proposal given as a file (a ``Path``, or a one-line ``str``
    naming an existing file) or as YAML text."""
    if isinstance(new_policy, os.PathLike) or (
        "\n" not in new_policy and Path(new_policy).is_file()
    ):
        path = Path(new_policy)
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except FileNotFoundError:
            raise PolicyChangeError(
                f"no proposed policy file at {path}: give an existing YAML file"
            ) from None
        except UnicodeDecodeError as exc:
            raise PolicyError(str(path), [f"not UTF-8 text: {exc}"]) from exc
    return str(new_policy), "<proposed policy>"


# --------------------------------------------------------------------------- current policy


@dataclass(frozen=True)
class PolicyFileInfo:
    """The policy file in force: where it is, its bytes' hash and its content version."""

    path: Path
    sha256: str
    version: str
    label: str


def current_policy(settings: Settings) -> PolicyFileInfo:
    """The configured policy file, validated (``workbench policy show``).

    Raises:
        PolicyError: The file is missing or invalid.
    """
    path = policy_file_in_force(settings)  # the default one is created on first use
    if not path.is_file():
        load_policy(path, settings=settings)  # raises PolicyError saying how to set it
    data = path.read_bytes()  # hashed and parsed from one read
    policy = parse_policy_text(
        data, source=str(path), reporting_currency=settings.reporting_currency
    )
    return PolicyFileInfo(
        path=path, sha256=sha256_bytes(data), version=policy.version, label=policy.label
    )


def _subject(settings: Settings) -> str:
    path = Path(settings.policy_file)
    with contextlib.suppress(ValueError):
        path = path.relative_to(settings.root)
    return f"policy:{path}"


# --------------------------------------------------------------------------- diffs for people


def _text(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(map(_text, value)) or "(none)"
    return str(value)


def diff_rows(diff: Iterable[tuple[str, Any, Any]]) -> list[tuple[str, str, str]]:
    """A :func:`~workbench.policy.policy_diff` (or a payload's ``diff`` entries) as text:
    ``(key, old, new)``, values written as in the YAML file; for lists the new value ends
    with what was added and removed, e.g. ``a, b, c (added c)``."""
    rows = []
    for entry in diff:
        key, old, new = (
            (entry["key"], entry["old"], entry["new"]) if isinstance(entry, Mapping) else entry
        )
        new_text = _text(new)
        if isinstance(old, list | tuple) and isinstance(new, list | tuple):
            notes = [
                f"{verb} {_text(names)}"
                for verb, names in (
                    ("added", [x for x in new if x not in old]),
                    ("removed", [x for x in old if x not in new]),
                )
                if names
            ]
            new_text += f" ({'; '.join(notes)})" if notes else ""
        rows.append((str(key), _text(old), new_text))
    return rows


# --------------------------------------------------------------------------- propose


@dataclass(frozen=True)
class PolicyProposal:
    """What :func:`propose_policy_change` did.

    ``outcome`` is the queue's (``queued``, ``duplicate``, ``denied``); ``diff`` lists
    ``(dotted.key, old, new)`` for every value the change would alter.
    """

    outcome: Outcome
    diff: list[tuple[str, Any, Any]]
    old_version: str
    new_version: str
    old_sha256: str
    new_sha256: str

    @property
    def item_id(self) -> str | None:
        return self.outcome.item_id


def _attempt(store: approvals.ApprovalStore, subject: str, *, old_sha: str, new_sha: str) -> int:
    """Which proposal of this text against this file a new request is.

    The queue's idempotency key covers the state an item was requested in, and rejected,
    failed or rolled-back items keep theirs; without this number, the same text proposed
    again after a rejection, a failed write or a rollback would be answered "duplicate" by
    the closed item. A pending proposal of the same text is answered with its own number,
    so it stays the one item.
    """
    same = [
        i
        for i in approvals.list_items(store, action_types=[ACTION_TYPE], subject_id=subject)
        if i.payload.get("old_sha256") == old_sha and i.payload.get("new_sha256") == new_sha
    ]
    pending = [i for i in same if i.status == "pending"]
    return int(pending[0].payload.get("attempt", 0)) if pending else len(same)


def propose_policy_change(
    settings: Settings,
    new_policy_path_or_text: Path | str,
    *,
    who: Identity,
    reason: str,
    store: StoreLike | None = None,
    now: pd.Timestamp | None = None,
) -> PolicyProposal:
    """Queue "replace the policy file with this one" for an approver.

    Args:
        settings: Supplies the policy file, the reporting currency, the data folder (for
            the history of replaced files) and the approvals store.
        new_policy_path_or_text: The proposed policy: a file (a ``Path``, or a one-line
            ``str`` naming an existing file) or the YAML text itself. It is written to the
            policy file byte for byte on approval.
        who: The requester (analyst or above); someone else must approve.
        reason: Why, shown to the approver and recorded.
        store: The approvals store; default ``settings.approvals_url``.

    Returns:
        The queue's outcome and the diff. Proposing the same text against the same policy
        file while it is pending queues nothing (``duplicate``, with the pending item's
        id); after it was rejected, failed or rolled back, it is queued again.

    Raises:
        PolicyError: The proposal is not YAML or not a valid policy (every problem listed),
            or the current policy file is missing or invalid. Nothing is queued.
        PolicyChangeError: The proposal changes nothing, or no reason was given.
    """
    if not reason.strip():
        raise PolicyChangeError("a policy change needs a reason (shown to the approver)")
    text, source = _read_proposal(new_policy_path_or_text)
    new = parse_policy_text(text, source=source, reporting_currency=settings.reporting_currency)
    path = policy_file_in_force(settings)  # the default one is created on first use
    if not path.is_file():
        load_policy(path, settings=settings)  # raises PolicyError saying how to set it
    old_bytes = path.read_bytes()  # hashed and parsed from one read
    old = parse_policy_text(old_bytes, source=str(path),
                            reporting_currency=settings.reporting_currency)  # fmt: skip
    diff = policy_diff(old, new)
    if not diff:
        raise PolicyChangeError(
            f"the proposed policy is the same as the current one ({old.version}, {path}): no "
            "value would change (comments, key order and keys left at their defaults do not "
            "count), so nothing was queued"
        )
    old_sha, new_sha = sha256_bytes(old_bytes), sha256_bytes(text.encode("utf-8"))
    store = approvals.open_store(store if store is not None else settings)
    subject = _subject(settings)
    attempt = _attempt(store, subject, old_sha=old_sha, new_sha=new_sha)
    state = {"policy_file": str(path), "sha256": old_sha, "proposed_sha256": new_sha,
             "attempt": attempt}  # fmt: skip
    payload = {
        "reason": reason,
        "policy_file": str(path),
        "history_dir": str(history_dir(settings)),
        "reporting_currency": settings.reporting_currency,
        "old_sha256": old_sha,
        "old_version": old.version,
        "new_sha256": new_sha,
        "new_version": new.version,
        "new_label": new.label,
        "diff": [{"key": k, "old": a, "new": b} for k, a, b in diff],
        "proposed_yaml": text,
        "attempt": attempt,
        # an approved change can be rolled back from the dashboard within the window the
        # policy in force gives automated actions; later, propose the kept file again
        "override_window_hours": old.automation.override_window_hours,
    }
    outcome = approvals.request_action(
        store,
        who=who,
        action_type=ACTION_TYPE,
        subject_id=subject,
        state=state,
        policy=old,
        payload=payload,
        state_scope=STATE_SCOPE,
        risk="high",
        now=now,
    )
    log.info("policy change %s -> %s: %s", old.version, new.version, outcome.message)
    return PolicyProposal(outcome, diff, old.version, new.version, old_sha, new_sha)


# --------------------------------------------------------------------------- the queue's side


def current_state(item: ActionItem) -> dict[str, Any] | None:
    """The approvals queue's state provider for policy changes: the policy file's hash now
    (``None`` when the file is gone), next to what the item proposes. It hashes like the
    state the item was requested in only while the file is unchanged."""
    p = item.payload
    try:
        path = p["policy_file"]
        return {
            "policy_file": path,
            "sha256": file_sha256(path),
            "proposed_sha256": p["new_sha256"],
            "attempt": p.get("attempt", 0),
        }
    except KeyError:
        return None


def _execute(item: ActionItem, ctx: ExecutionContext) -> dict[str, Any]:
    """Replace the policy file with the approved text (see the module docstring).

    "This workbench" is the one executing: the settings its approvals store was opened with
    (``ctx.settings``: ``approvals.open_store(settings)``, as the approvals dashboard and
    :func:`propose_policy_change` open it), else, for a store opened from a URL, the
    environment's (``load_settings()``).

    Raises:
        PolicyChangeError: The file changed since the proposal (stale), the item does not
            hold what a proposal holds, or it was proposed for another policy file than the
            one this workbench uses (a proposer with other settings sharing the approvals
            store). Nothing is written then.
    """
    from workbench.config import load_settings

    p = item.payload
    path, keep_dir = Path(p["policy_file"]), Path(p["history_dir"])
    mine = ctx.settings if ctx.settings is not None else load_settings()
    in_force = Path(mine.policy_file)
    if in_force.resolve() != path.resolve():
        where = mine.sources.get("policy_file", "the default, <data_dir>/policy.yaml")
        raise PolicyChangeError(
            f"{item.item_id} was proposed for {path}, but this workbench's policy file is "
            f"{in_force} ({where}); nothing was written: propose the change where that policy "
            "is used, or set policy_file / WORKBENCH_POLICY_FILE (or data_dir, for the "
            "default) so both name the same file"
        )
    text = p["proposed_yaml"]
    new_bytes = text.encode("utf-8")
    if sha256_bytes(new_bytes) != p["new_sha256"]:
        raise PolicyChangeError(
            f"{item.item_id}: the proposed text does not hash to the recorded {p['new_sha256'][:12]}; "
            "nothing was written: propose the change again"
        )
    new = parse_policy_text(text, source=f"policy change {item.item_id}",
                            reporting_currency=p.get("reporting_currency"))  # fmt: skip
    with _file_lock(path):
        old_bytes = path.read_bytes() if path.is_file() else None
        now_sha = None if old_bytes is None else sha256_bytes(old_bytes)
        if now_sha != p["old_sha256"]:
            raise PolicyChangeError(
                f"{path} changed since this policy change was proposed (it had "
                f"{p['old_sha256'][:12]}, now {(now_sha or 'no file')[:12]}); nothing was written: "
                "propose the change again against the current file"
            )
        # the file being replaced must be a policy (a forged payload cannot point elsewhere)
        old = parse_policy_text(old_bytes, source=str(path),
                                reporting_currency=p.get("reporting_currency"))  # fmt: skip
        kept = keep_dir / f"{now_sha}.yaml"
        if file_sha256(kept) != now_sha:
            keep_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(kept, old_bytes)
        atomic_write_bytes(path, new_bytes)
    log.warning("policy %s -> %s written to %s (approvals item %s, by %s)",
                old.version, new.version, path, item.item_id, ctx.actor)  # fmt: skip
    return _executed(p, path, kept, old_version=old.version, version=new.version)


def _executed(
    p: Mapping[str, Any], path: Path, kept: Path, *, old_version: str, version: str
) -> dict[str, Any]:
    """The result an executed policy change records (payload ``p``)."""
    return {
        "policy_file": str(path),
        "old_sha256": p["old_sha256"],
        "new_sha256": p["new_sha256"],
        "old_version": old_version,
        "version": version,
        "history_file": str(kept),
    }


def _recover(item: ActionItem, ctx: ExecutionContext) -> approvals.Recovered | None:
    """Whether an approval interrupted before its outcome was recorded wrote the policy file
    (:func:`approvals.recover_interrupted`), told by the file's hash now.

    The proposal's hash: the change took effect, if the file it replaced is kept in the
    history (written before the replace) and no other item wrote the same text; recorded as
    executed with the result :func:`_execute` returns. The hash it was proposed against:
    nothing was written, unless another change approved since this one was proposed wrote
    that text (it may have put back what this one wrote). Anything else (``None``): a person
    checks.
    """
    p = item.payload
    path, keep_dir = Path(p["policy_file"]), Path(p["history_dir"])
    now_sha = file_sha256(path)
    if now_sha == p["old_sha256"]:
        # written and then put back by a later change (the replaced text proposed again)
        # looks the same as never written: only without such a change does it tell
        others = _others_that_wrote(item, ctx, now_sha, since=item.requested_at)
        if others:
            return approvals.Recovered(
                None,
                f"{path} has the hash it was proposed against, {now_sha[:12]}, which "
                f"{', '.join(others)} also wrote after this change was proposed",
            )
        return approvals.Recovered(
            False, f"{path} still has the hash it was proposed against, {now_sha[:12]}"
        )
    kept = keep_dir / f"{p['old_sha256']}.yaml"
    if now_sha != p["new_sha256"] or file_sha256(kept) != p["old_sha256"]:
        return None
    if _others_that_wrote(item, ctx, now_sha):  # the same text proposed again and approved:
        return None  # either may have written it
    return approvals.Recovered(
        True,
        f"{path} has the approved text's hash, {now_sha[:12]}, and the file it replaced is kept "
        f"at {kept}",
        _executed(p, path, kept, old_version=p["old_version"], version=p["new_version"]),
    )


def _others_that_wrote(
    item: ActionItem, ctx: ExecutionContext, sha: str, *, since: pd.Timestamp | None = None
) -> list[str]:
    """Ids of other policy changes of ``item``'s policy file that wrote the text hashing to
    ``sha`` (approved, whatever happened next), only those approved at or after ``since``
    when given."""
    same_subject = approvals.list_items(
        ctx.store, action_types=[ACTION_TYPE], subject_id=item.subject_id
    )
    return [
        i.item_id
        for i in same_subject
        if i.item_id != item.item_id
        and i.payload.get("new_sha256") == sha
        and i.status in ("approved", "executed", "rolled_back", "rollback_failed")
        and (since is None or (i.decided_at is not None and i.decided_at >= since))
    ]


def _rollback(item: ActionItem, ctx: ExecutionContext) -> dict[str, Any]:
    """Put back the file an executed change replaced, if the policy file is still the one
    the change wrote.

    Raises:
        approvals.RollbackRefused: The file changed after the change (restoring would discard that
            later change), or the kept copy is missing or altered. Nothing is written then.
    """
    p = item.payload
    path, keep_dir = Path(p["policy_file"]), Path(p["history_dir"])
    kept = keep_dir / f"{p['old_sha256']}.yaml"
    with _file_lock(path):
        now_sha = file_sha256(path)
        if now_sha != p["new_sha256"]:
            raise approvals.RollbackRefused(
                f"{path} is no longer the file this change wrote (it wrote {p['new_sha256'][:12]}, "
                f"now {(now_sha or 'no file')[:12]}); nothing was restored: to go back, propose "
                f"{kept} as a new policy change"
            )
        try:
            old_bytes = kept.read_bytes()
        except FileNotFoundError:
            raise approvals.RollbackRefused(
                f"the kept copy {kept} is missing; nothing was restored"
            ) from None
        if sha256_bytes(old_bytes) != p["old_sha256"]:
            raise approvals.RollbackRefused(
                f"the kept copy {kept} was altered; nothing was restored"
            )
        atomic_write_bytes(path, old_bytes)
    log.warning("policy change %s rolled back: %s restored to %s by %s",
                item.item_id, p["old_version"], path, ctx.actor)  # fmt: skip
    return _rolled_back(p, path, kept)


def _rolled_back(p: Mapping[str, Any], path: Path, kept: Path) -> dict[str, Any]:
    """The result a rolled-back policy change records (payload ``p``): the file went from
    the text the change wrote back to the one it replaced, restored from ``kept``."""
    return {
        "policy_file": str(path),
        "old_sha256": p["new_sha256"],
        "new_sha256": p["old_sha256"],
        "version": p["old_version"],
        "restored_from": str(kept),
    }


def _recover_rollback(item: ActionItem, ctx: ExecutionContext) -> approvals.Recovered:
    """Whether a rollback interrupted before its outcome was recorded restored the file the
    change replaced (:func:`approvals.recover_interrupted`), told by the file's hash now.

    A rollback writes only the kept file, and only while the policy file is the one the
    change wrote, so the hash the change was proposed against means it restored it (recorded
    as rolled back, with the result :func:`_rollback` returns) and the hash of the text the
    change wrote means nothing was restored (the change stays executed). Either tells only
    if no other change approved since this one was proposed wrote that text (either may have
    written it then); otherwise, or with any other hash, the hook cannot tell
    (``took_effect`` ``None``) and says what it found.
    """
    p = item.payload
    path, keep_dir = Path(p["policy_file"]), Path(p["history_dir"])
    kept = keep_dir / f"{p['old_sha256']}.yaml"
    now_sha = file_sha256(path)
    if now_sha not in (p["old_sha256"], p["new_sha256"]):
        found = f"has the hash {now_sha[:12]}" if now_sha else "is missing"
        return approvals.Recovered(
            None,
            f"{path} {found}: neither the text this change wrote ({p['new_sha256'][:12]}) nor "
            f"the file it replaced ({p['old_sha256'][:12]})",
        )
    others = _others_that_wrote(item, ctx, now_sha, since=item.requested_at)
    if others:
        return approvals.Recovered(
            None,
            f"{path} has the hash {now_sha[:12]}, which {', '.join(others)} also wrote after this "
            "change was proposed",
        )
    if now_sha == p["old_sha256"]:
        return approvals.Recovered(
            True,
            f"{path} has the hash of the file the change replaced, {now_sha[:12]}, restored "
            f"from {kept}",
            _rolled_back(p, path, kept),
        )
    return approvals.Recovered(
        False, f"{path} still has the hash of the text this change wrote, {now_sha[:12]}"
    )


def register_approval_executors() -> None:
    """Make the approvals queue carry out approved ``policy_change`` items and check them
    against the policy file on disk (idempotent; done when this module is imported)."""
    approvals.register_executor(
        ACTION_TYPE,
        _execute,
        rollback=_rollback,
        recover=_recover,
        recover_rollback=_recover_rollback,
        interrupted_hint=(
            "run `workbench policy show`: if its sha256 is the item's new_sha256 the new policy "
            "is in force (to go back, propose the kept file data/policies/history/<old_sha256>"
            ".yaml); if it is the old_sha256, nothing was written"
        ),
    )
    approvals.register_state_provider(STATE_SCOPE, current_state, stale_message=STALE_MESSAGE)


register_approval_executors()
