"""Policy as code: the guardrails the decision engine and the approval queue obey.

A policy is a YAML file. The one in force is ``settings.policy_file``: by default
``<data_dir>/policy.yaml``, created from the packaged default
(``workbench/policies/default.yaml``, :data:`PACKAGED_POLICY`) the first time it is used
(:func:`policy_file_in_force`) and from then on changed only through the approvals queue
(``workbench.policy_changes``), so the packaged file stays as shipped. A ``policy_file`` set
in ``workbench.toml``, ``$WORKBENCH_POLICY_FILE`` or an override is used as given.
Loading validates every field and collects *all* problems
into one :class:`PolicyError`, each naming the offending key and what is allowed.
Missing keys take the defaults below, so a policy file only needs what it changes.

A policy is versioned by content: :attr:`Policy.version` is a hash of the validated,
normalized content (defaults filled in, comments and key order ignored). Every decision
and every queued action carries the version it was made under.

Money in a policy is integer minor units of the policy's ``currency``, which must be
the reporting currency (a policy written in usd cents must not be read as yen).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from workbench.config import Settings

log = logging.getLogger(__name__)

#: The policy the package ships: what a data folder's policy file starts as.
PACKAGED_POLICY = Path(__file__).resolve().parent / "policies" / "default.yaml"
#: The default policy file's name inside the data folder.
POLICY_FILE_NAME = "policy.yaml"

#: Action types the approval queue knows. The decision engine produces the first four.
ACTION_TYPES: tuple[str, ...] = (
    "retry_payment",
    "retention_offer",
    "escalate_collections",
    "write_off",
    "credit_note",
    "refund",
    "void_invoice",
    "model_promotion",
    "policy_change",
    "model_rollback",
)

#: Automation levels, least to most automatic.
#: ``insight``: shown only, nothing is queued or run. ``assisted``: queued for one-click
#: human approval. ``automated_with_override``: runs without approval and can be rolled
#: back within the override window. ``autonomous``: runs without approval.
LEVELS: tuple[str, ...] = ("insight", "assisted", "automated_with_override", "autonomous")
AUTOMATIC_LEVELS: frozenset[str] = frozenset({"automated_with_override", "autonomous"})

#: High-risk action types that always wait for a person: no policy may make them automatic.
HUMAN_ONLY_ACTION_TYPES: tuple[str, ...] = ("write_off", "model_promotion", "policy_change")

#: Reason codes a write-off entry must carry.
WRITE_OFF_REASON_CODES: tuple[str, ...] = ("credit_loss", "price_concession")

#: Stripe decline codes after which a card must not be retried (Stripe's guidance for
#: hard declines: the issuer says no, or the card is lost, stolen or restricted).
DEFAULT_NO_RETRY_DECLINE_CODES: tuple[str, ...] = (
    "do_not_try_again",
    "fraudulent",
    "invalid_account",
    "lost_card",
    "merchant_blacklist",
    "pickup_card",
    "restricted_card",
    "revocation_of_all_authorizations",
    "revocation_of_authorization",
    "security_violation",
    "stolen_card",
    "stop_payment_order",
)


class PolicyError(ValueError):
    """A policy file is invalid; ``problems`` lists every problem found, one per key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid policy {source}: {len(problems)} problem(s)\n{lines}")


@dataclass(frozen=True)
class Retries:
    """When the engine may retry a failed payment on its own."""

    max_auto_retries: int = 8  # retries after the first attempt: attempt_count - 1 <= this
    min_hours_between: float = 24.0  # minimum spacing between two attempts
    min_recovery_probability: float = 0.6  # retry only when the model says at least this
    no_retry_decline_codes: tuple[str, ...] = DEFAULT_NO_RETRY_DECLINE_CODES
    # retry timing: retries are planned on the predicted recovery curve within this many
    # days of the first failure (the times that maximise the chance the invoice is paid)
    window_days: float = 30.0


@dataclass(frozen=True)
class Collections:
    """When an invoice that will not be retried goes to collections."""

    after_days_idle: float = 21.0  # days since the last attempt
    min_amount_minor: int = 5_000  # smaller debts are not worth a collections case


@dataclass(frozen=True)
class Retention:
    """Who gets a retention offer, and how much offers may cost per decision run."""

    min_uplift: float = 0.05  # predicted increase in recovery probability from an offer
    offer_budget_minor: int = 500_000  # total offer cost per decision run
    offer_cost_fraction: float = 0.2  # an offer costs this share of the amount due


@dataclass(frozen=True)
class WriteOff:
    """When the engine proposes writing an invoice off."""

    after_days_idle: float = 60.0
    max_recovery_probability: float = 0.05  # or no score at all
    reason_code: str = "credit_loss"


@dataclass(frozen=True)
class Control:
    """The control group: a random share of failed invoices stays on the baseline schedule.

    Membership is a deterministic hash of the invoice id and ``salt`` (no state to keep), so
    the same invoice is in the same group on every run. Guardrails still apply to it (hard
    declines, the retry cap, approvals); only the score threshold and the timing are the
    baseline's.
    """

    share: float = 0.1  # 0 disables the control group
    salt: str = "dunning-control-v1"  # change it to draw a new control group
    baseline_retries: int = 8  # Stripe's default: 8 retries ...
    baseline_window_days: float = 14.0  # ... within 2 weeks (evenly spaced)


@dataclass(frozen=True)
class Approval:
    """Amounts a human must approve whatever the automation level says."""

    amount_above_minor: int = 1_000_000  # 10,000.00 in a two-decimal reporting currency


@dataclass(frozen=True)
class BulkApproval:
    """Which queued items an approver may approve together in one click."""

    enabled: bool = True
    max_amount_minor: int = 50_000  # items up to this amount are "low risk"
    action_types: tuple[str, ...] = ("retention_offer", "retry_payment")


def _default_levels() -> dict[str, str]:
    return {
        "retry_payment": "automated_with_override",
        "retention_offer": "assisted",
        "escalate_collections": "assisted",
        "write_off": "assisted",
        "credit_note": "assisted",
        "refund": "assisted",
        "void_invoice": "assisted",
        "model_promotion": "assisted",
        "policy_change": "assisted",
        "model_rollback": "assisted",
    }


@dataclass(frozen=True)
class Automation:
    """Per action type automation level and the override (rollback) window."""

    override_window_hours: float = 24.0
    levels: Mapping[str, str] = field(default_factory=_default_levels)

    def __post_init__(self) -> None:
        automatic = [
            a for a in HUMAN_ONLY_ACTION_TYPES if self.levels.get(a, "assisted") in AUTOMATIC_LEVELS
        ]
        if automatic:
            raise ValueError(
                f"{', '.join(automatic)} always need a human approval (high-risk); "
                "set their automation level to assisted or insight"
            )


@dataclass(frozen=True)
class Policy:
    """A validated policy. Build it with :func:`load_policy` or :func:`parse_policy`."""

    currency: str = "usd"
    shadow: bool = False  # record what would be done without doing it
    approval: Approval = field(default_factory=Approval)
    retries: Retries = field(default_factory=Retries)
    collections: Collections = field(default_factory=Collections)
    retention: Retention = field(default_factory=Retention)
    write_off: WriteOff = field(default_factory=WriteOff)
    control: Control = field(default_factory=Control)
    bulk_approval: BulkApproval = field(default_factory=BulkApproval)
    automation: Automation = field(default_factory=Automation)
    label: str = ""  # optional human name, e.g. "2024-06 tightened write-offs"
    source: str = field(default="<defaults>", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The normalized content (what the version hashes), JSON-ready."""
        out = asdict(self)
        out.pop("source")
        out["automation"]["levels"] = dict(sorted(self.automation.levels.items()))
        return json.loads(json.dumps(out))  # tuples become lists

    @functools.cached_property
    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of :meth:`to_dict` (computed once: a policy is
        immutable, and the engine reads its version several times per decision)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def version(self) -> str:
        """Short content version, e.g. ``pol-3f2a9c0d1e4b``."""
        return "pol-" + self.content_hash[:12]

    def level(self, action_type: str, *, paused: frozenset[str] | set[str] = frozenset()) -> str:
        """Automation level of an action type; ``insight`` while its automation is paused."""
        if "*" in paused or action_type in paused:
            return "insight"
        return self.automation.levels[action_type]

    def needs_human(self, *, amount_reporting_minor: int | None, level: str) -> bool:
        """Whether an action at this level and amount must wait for a human approval.

        ``assisted`` always does; automatic levels do when the amount is above
        ``approval.amount_above_minor`` or unknown; ``insight`` never runs, so no.
        """
        if level == "assisted":
            return True
        if level in AUTOMATIC_LEVELS:
            return (
                amount_reporting_minor is None
                or amount_reporting_minor > self.approval.amount_above_minor
            )
        return False

    def risk(self, amount_reporting_minor: int | None) -> str:
        """``low`` up to the bulk-approval amount, ``high`` above the approval amount or
        when unknown, ``medium`` in between."""
        if (
            amount_reporting_minor is None
            or amount_reporting_minor > self.approval.amount_above_minor
        ):
            return "high"
        if amount_reporting_minor <= self.bulk_approval.max_amount_minor:
            return "low"
        return "medium"

    def bulk_approvable(
        self, *, action_type: str, risk: str, amount_reporting_minor: int | None
    ) -> bool:
        """Whether the policy allows approving this item in a bulk approval."""
        b = self.bulk_approval
        return (
            b.enabled
            and action_type in b.action_types
            and risk == "low"
            and amount_reporting_minor is not None
            and amount_reporting_minor <= b.max_amount_minor
            and amount_reporting_minor <= self.approval.amount_above_minor
        )


# --------------------------------------------------------------------------- validation


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{key}: {message}")


def _unknown_keys(
    raw: Mapping[str, Any], known: list[str], prefix: str, problems: _Problems
) -> None:
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = (
                f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(known)}"
            )
            problems.add(f"{prefix}{key}", f"unknown key{hint}")


def _int(raw: Any, key: str, problems: _Problems, *, minimum: int = 0) -> int | None:
    if isinstance(raw, bool) or not isinstance(raw, int):
        problems.add(
            key, f"must be a whole number >= {minimum} (minor units for money), got {raw!r}"
        )
        return None
    if raw < minimum:
        problems.add(key, f"must be >= {minimum}, got {raw}")
        return None
    return raw


def _float(
    raw: Any, key: str, problems: _Problems, *, minimum: float = 0.0, maximum: float | None = None
) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        problems.add(key, f"must be a finite number, got {raw!r}")
        return None
    value = float(raw)
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        problems.add(key, f"must be {bounds}, got {raw}")
        return None
    return value


def _bool(raw: Any, key: str, problems: _Problems) -> bool | None:
    if not isinstance(raw, bool):
        problems.add(key, f"must be true or false, got {raw!r}")
        return None
    return raw


def _str_list(
    raw: Any, key: str, problems: _Problems, *, allowed: tuple[str, ...] | None = None
) -> tuple[str, ...] | None:
    if not isinstance(raw, list | tuple) or not all(isinstance(x, str) and x for x in raw):
        problems.add(key, f"must be a list of names, got {raw!r}")
        return None
    if allowed is not None:
        bad = [x for x in raw if x not in allowed]
        if bad:
            problems.add(key, f"unknown name(s) {bad}; allowed: {', '.join(allowed)}")
            return None
    return tuple(sorted(set(raw)))


# section name -> (dataclass, {key: parser})
def _section_parsers() -> dict[str, tuple[type, dict[str, Any]]]:
    return {
        "approval": (Approval, {"amount_above_minor": lambda v, k, p: _int(v, k, p)}),
        "retries": (
            Retries,
            {
                "max_auto_retries": lambda v, k, p: _int(v, k, p),
                "min_hours_between": lambda v, k, p: _float(v, k, p),
                "min_recovery_probability": lambda v, k, p: _float(v, k, p, maximum=1.0),
                "no_retry_decline_codes": lambda v, k, p: _str_list(v, k, p),
                "window_days": lambda v, k, p: _float(v, k, p, minimum=1.0, maximum=120.0),
            },
        ),
        "collections": (
            Collections,
            {
                "after_days_idle": lambda v, k, p: _float(v, k, p),
                "min_amount_minor": lambda v, k, p: _int(v, k, p),
            },
        ),
        "retention": (
            Retention,
            {
                "min_uplift": lambda v, k, p: _float(v, k, p, maximum=1.0),
                "offer_budget_minor": lambda v, k, p: _int(v, k, p),
                "offer_cost_fraction": lambda v, k, p: _float(v, k, p, maximum=1.0),
            },
        ),
        "write_off": (
            WriteOff,
            {
                "after_days_idle": lambda v, k, p: _float(v, k, p),
                "max_recovery_probability": lambda v, k, p: _float(v, k, p, maximum=1.0),
                "reason_code": _reason_code,
            },
        ),
        "control": (
            Control,
            {
                "share": lambda v, k, p: _float(v, k, p, maximum=0.5),
                "salt": _salt,
                "baseline_retries": lambda v, k, p: _int(v, k, p, minimum=1),
                "baseline_window_days": lambda v, k, p: _float(v, k, p, minimum=0.04),
            },
        ),
        "bulk_approval": (
            BulkApproval,
            {
                "enabled": lambda v, k, p: _bool(v, k, p),
                "max_amount_minor": lambda v, k, p: _int(v, k, p),
                "action_types": lambda v, k, p: _str_list(v, k, p, allowed=ACTION_TYPES),
            },
        ),
    }


def _salt(raw: Any, key: str, problems: _Problems) -> str | None:
    if not isinstance(raw, str) or not raw.strip():
        problems.add(key, f"must be non-empty text (it seeds the control-group hash), got {raw!r}")
        return None
    return raw


def _reason_code(raw: Any, key: str, problems: _Problems) -> str | None:
    if raw not in WRITE_OFF_REASON_CODES:
        problems.add(key, f"must be one of {', '.join(WRITE_OFF_REASON_CODES)}, got {raw!r}")
        return None
    return str(raw)


def _parse_automation(raw: Any, problems: _Problems) -> Automation | None:
    if not isinstance(raw, Mapping):
        problems.add("automation", f"must be a mapping, got {type(raw).__name__}")
        return None
    _unknown_keys(raw, ["override_window_hours", "levels"], "automation.", problems)
    window = _float(
        raw.get("override_window_hours", Automation.override_window_hours),
        "automation.override_window_hours",
        problems,
    )
    levels = _default_levels()
    given = raw.get("levels", {})
    if not isinstance(given, Mapping):
        problems.add("automation.levels", f"must map action type to level, got {given!r}")
        return None
    for action, level in given.items():
        key = f"automation.levels.{action}"
        if action not in ACTION_TYPES:
            close = difflib.get_close_matches(str(action), ACTION_TYPES, n=1)
            hint = (
                f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(ACTION_TYPES)}"
            )
            problems.add(key, f"unknown action type{hint}")
        elif level not in LEVELS:
            problems.add(key, f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        elif action in HUMAN_ONLY_ACTION_TYPES and level in AUTOMATIC_LEVELS:
            problems.add(
                key,
                f"{action} always needs a human approval (high-risk); use assisted or insight, "
                f"got {level!r}",
            )
        else:
            levels[action] = level
    if window is None:
        return None
    return Automation(override_window_hours=window, levels=levels)


_TOP_KEYS = [
    "currency", "shadow", "label", "approval", "retries", "collections", "retention",
    "write_off", "control", "bulk_approval", "automation",
]  # fmt: skip


def parse_policy(
    raw: Mapping[str, Any] | None,
    *,
    source: str = "<policy>",
    reporting_currency: str | None = None,
) -> Policy:
    """Validate a policy mapping (e.g. parsed YAML); fill in defaults for missing keys.

    Args:
        raw: The mapping; ``None`` or empty gives the default policy.
        source: Where it came from, for messages.
        reporting_currency: When given, the policy's ``currency`` must equal it.

    Returns:
        The validated :class:`Policy`.

    Raises:
        PolicyError: Listing every invalid, unknown or inconsistent key.
    """
    raw = raw or {}
    problems = _Problems()
    if not isinstance(raw, Mapping):
        raise PolicyError(
            source, [f"top level must be a mapping of sections, got {type(raw).__name__}"]
        )
    _unknown_keys(raw, _TOP_KEYS, "", problems)
    values: dict[str, Any] = {}

    currency = raw.get("currency", "usd")
    if (
        not isinstance(currency, str)
        or len(currency) != 3
        or not currency.isalpha()
        or currency != currency.lower()
    ):
        problems.add("currency", f"must be a lowercase ISO 4217 code like 'usd', got {currency!r}")
    elif reporting_currency is not None and currency != reporting_currency.lower():
        problems.add(
            "currency",
            f"policy amounts are in {currency!r} but the reporting currency is {reporting_currency!r}; "
            "rewrite the amounts for the reporting currency and set currency accordingly",
        )
    else:
        values["currency"] = currency
    if "shadow" in raw:
        shadow = _bool(raw["shadow"], "shadow", problems)
        if shadow is not None:
            values["shadow"] = shadow
    if "label" in raw:
        if isinstance(raw["label"], str):
            values["label"] = raw["label"]
        else:
            problems.add("label", f"must be text, got {raw['label']!r}")

    for name, (cls, parsers) in _section_parsers().items():
        section = raw.get(name, {})
        if section is None:
            section = {}
        if not isinstance(section, Mapping):
            problems.add(name, f"must be a mapping, got {type(section).__name__}")
            continue
        _unknown_keys(section, list(parsers), f"{name}.", problems)
        kwargs = {}
        for key, parser in parsers.items():
            if key in section:
                value = parser(section[key], f"{name}.{key}", problems)
                if value is not None:
                    kwargs[key] = value
        values[name] = cls(**kwargs)
    automation = _parse_automation(raw.get("automation", {}) or {}, problems)
    if automation is not None:
        values["automation"] = automation

    if not problems.items:
        bulk, approval = values["bulk_approval"], values["approval"]
        if bulk.max_amount_minor > approval.amount_above_minor:
            problems.add(
                "bulk_approval.max_amount_minor",
                f"{bulk.max_amount_minor} is above approval.amount_above_minor "
                f"({approval.amount_above_minor}); bulk approval is for low-risk items only",
            )
    if problems.items:
        raise PolicyError(source, problems.items)
    return Policy(**values, source=source)


def _is_default_policy_file(settings: Settings) -> bool:
    """Whether ``settings.policy_file`` is the default ``<data_dir>/policy.yaml`` (not set
    in the toml file, the environment or an override)."""
    return "policy_file" not in settings.sources and Path(settings.policy_file) == (
        Path(settings.data_dir) / POLICY_FILE_NAME
    )


def seed_policy_file(path: Path | str, source: Path | str = PACKAGED_POLICY) -> bool:
    """Create ``path`` as a copy of ``source`` unless it exists; never overwrite it.

    Atomic: the copy is written to a temporary file in the same folder, fsynced and then
    hard-linked to ``path``, which fails if ``path`` exists (so a file another process
    created meanwhile is kept, and a reader never sees half a file). On a filesystem without
    hard links the file is created exclusively (``O_EXCL``) and written in place instead.

    Returns:
        Whether this call created the file.
    """
    path, source = Path(path), Path(source)
    if path.exists():
        return False
    from workbench.store import fsync_dir, fsynced_temp

    data = source.read_bytes()
    with fsynced_temp(path, data) as tmp:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here: create it exclusively instead
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
    fsync_dir(path.parent)  # the new name survives a power cut
    log.warning(
        "created the policy file in force, %s, from the packaged default %s; change it with "
        "`workbench policy propose FILE`",
        path,
        source,
    )
    return True


def policy_file_in_force(settings: Settings) -> Path:
    """``settings.policy_file``, created from :data:`PACKAGED_POLICY` first if it is the
    default ``<data_dir>/policy.yaml`` and does not exist yet (:func:`seed_policy_file`:
    once, never overwriting). A ``policy_file`` that was set is returned as given, whether
    or not it exists.

    Raises:
        PolicyError: The default file is missing and could not be created.
    """
    path = Path(settings.policy_file)
    if _is_default_policy_file(settings) and not path.exists():
        try:
            seed_policy_file(path)
        except OSError as exc:  # e.g. a read-only data folder
            raise PolicyError(
                str(path),
                [
                    f"file not found, and creating it from the packaged default "
                    f"{PACKAGED_POLICY} failed ({exc}); make the data folder writable, or set "
                    "policy_file (WORKBENCH_POLICY_FILE) to a policy YAML"
                ],
            ) from exc
    return path


def load_policy(path: Path | str | None = None, *, settings: Settings | None = None) -> Policy:
    """Read and validate a policy file.

    Args:
        path: The YAML file; defaults to the policy in force,
            :func:`policy_file_in_force` (``settings.policy_file``, the default one
            created from the packaged policy on first use).
        settings: Supplies the default path and the reporting currency the policy must use.

    Raises:
        PolicyError: The file is missing, not YAML, or invalid (every problem listed).
    """
    if path is None:
        if settings is None:
            from workbench.config import load_settings

            settings = load_settings()
        path = policy_file_in_force(settings)
    elif settings is not None and Path(path) == Path(settings.policy_file):
        path = policy_file_in_force(settings)
    path = Path(path)
    if not path.is_file():
        raise PolicyError(
            str(path), ["file not found; set policy_file (WORKBENCH_POLICY_FILE) to a policy YAML"]
        )
    policy = parse_policy_text(
        path.read_bytes(),
        source=str(path),
        reporting_currency=settings.reporting_currency if settings else None,
    )
    log.debug("loaded policy %s from %s", policy.version, path)
    return policy


def parse_policy_text(
    text: str | bytes, *, source: str, reporting_currency: str | None = None
) -> Policy:
    """Validate a policy given as YAML text (bytes are read as UTF-8, whatever the locale).

    Raises:
        PolicyError: Not UTF-8, not YAML, or an invalid policy (every problem listed).
    """
    try:
        raw = yaml.safe_load(text.decode("utf-8") if isinstance(text, bytes) else text)
    except UnicodeDecodeError as exc:
        raise PolicyError(source, [f"not UTF-8 text: {exc}"]) from exc
    except yaml.YAMLError as exc:
        raise PolicyError(source, [f"not valid YAML: {exc}"]) from exc
    return parse_policy(raw, source=source, reporting_currency=reporting_currency)


def policy_diff(old: Policy, new: Policy) -> list[tuple[str, Any, Any]]:
    """Keys whose values differ between two policies, as ``(dotted.key, old, new)``.

    Used to show a ``policy_change`` approval what it would change.
    """

    def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, Mapping):
                out.update(flatten(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
