"""Policy files: validation with clear errors, defaults, content versioning."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from workbench.config import load_settings
from workbench.policy import Policy, PolicyError, load_policy, parse_policy, policy_diff

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "workbench" / "policies" / "default.yaml"


def test_default_file_spells_out_the_code_defaults() -> None:
    policy = load_policy(DEFAULT)
    assert policy == Policy(label="default")
    assert policy.retries.min_recovery_probability == 0.6
    assert policy.approval.amount_above_minor == 1_000_000  # 10,000.00 usd
    assert policy.automation.levels["write_off"] == "assisted"
    assert policy.shadow is False


def test_version_ignores_comments_order_and_defaults_but_not_values(tmp_path: Path) -> None:
    base = load_policy(DEFAULT)
    raw = yaml.safe_load(DEFAULT.read_text())
    reordered = dict(reversed(list(raw.items())))
    (tmp_path / "a.yaml").write_text(
        "# a different comment\n" + yaml.safe_dump(reordered, sort_keys=False)
    )
    assert load_policy(tmp_path / "a.yaml").version == base.version
    minimal = {"label": "default"}  # everything else defaults to the same values
    assert parse_policy(minimal).version == base.version
    changed = {**raw, "retries": {**raw["retries"], "max_auto_retries": 3}}
    assert parse_policy(changed).version != base.version
    assert base.version.startswith("pol-") and len(base.version) == 16


def test_every_problem_is_reported_with_its_key() -> None:
    raw = {
        "retires": {},
        "retries": {
            "max_auto_retries": "four",
            "min_recovery_probability": 1.5,
            "min_hours_between": -1,
        },
        "approval": {"amount_above_minor": 10000.5},
        "shadow": "yes",
        "write_off": {"reason_code": "bad_luck"},
        "automation": {"levels": {"write_of": "assisted", "refund": "fully_automatic"}},
        "bulk_approval": {"action_types": ["retry_payment", "launch_rockets"]},
    }
    with pytest.raises(PolicyError) as info:
        parse_policy(raw, source="p.yaml")
    problems = info.value.problems
    text = str(info.value)
    assert "p.yaml" in text
    expected_keys = [
        "retires", "retries.max_auto_retries", "retries.min_recovery_probability", "retries.min_hours_between",
        "approval.amount_above_minor", "shadow", "write_off.reason_code", "automation.levels.write_of",
        "automation.levels.refund", "bulk_approval.action_types",
    ]  # fmt: skip
    for key in expected_keys:
        assert any(p.startswith(key + ":") for p in problems), f"{key} not reported in {problems}"
    assert any("did you mean 'retries'" in p for p in problems)
    assert any("did you mean 'write_off'" in p for p in problems)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"currency": "USD"}, "currency"),
        ({"retries": {"min_hours_between": float("nan")}}, "retries.min_hours_between"),
        ({"retries": {"min_hours_between": float("inf")}}, "retries.min_hours_between"),
        ({"retries": {"max_auto_retries": True}}, "retries.max_auto_retries"),
        ({"retention": {"offer_cost_fraction": 2}}, "retention.offer_cost_fraction"),
        ({"retries": {"no_retry_decline_codes": "stolen_card"}}, "retries.no_retry_decline_codes"),
        ({"retries": []}, "retries"),
        ({"bulk_approval": {"max_amount_minor": 2_000_000}}, "bulk_approval.max_amount_minor"),
    ],
)
def test_single_bad_values(raw: dict, key: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(raw)
    assert any(p.startswith(key + ":") for p in info.value.problems), info.value.problems


def test_policy_currency_must_be_the_reporting_currency(
    tmp_path: Path, isolated_env: Path, monkeypatch
) -> None:
    path = tmp_path / "jpy.yaml"
    path.write_text("currency: usd\n")
    monkeypatch.setenv("WORKBENCH_POLICY_FILE", str(path))
    monkeypatch.setenv("WORKBENCH_REPORTING_CURRENCY", "jpy")
    with pytest.raises(PolicyError, match="reporting currency is 'jpy'"):
        load_policy(settings=load_settings())
    monkeypatch.setenv("WORKBENCH_REPORTING_CURRENCY", "usd")
    assert load_policy(settings=load_settings()).currency == "usd"


def test_settings_default_policy_file_is_the_packaged_one(isolated_env: Path) -> None:
    assert load_policy(settings=load_settings()) == load_policy(DEFAULT)


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="file not found"):
        load_policy(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("retries: [unclosed\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(tmp_path / "bad.yaml")


def test_guardrail_helpers() -> None:
    p = Policy()
    # assisted always needs a human; automatic levels only above the amount or when unknown
    assert p.needs_human(amount_reporting_minor=1, level="assisted")
    assert not p.needs_human(amount_reporting_minor=1_000_000, level="autonomous")
    assert p.needs_human(amount_reporting_minor=1_000_001, level="autonomous")
    assert p.needs_human(amount_reporting_minor=None, level="automated_with_override")
    assert not p.needs_human(amount_reporting_minor=10**12, level="insight")
    assert p.level("retry_payment") == "automated_with_override"
    assert p.level("retry_payment", paused={"retry_payment"}) == "insight"
    assert p.level("write_off", paused={"*"}) == "insight"
    assert p.level("write_off", paused={"retry_payment"}) == "assisted"
    assert [p.risk(a) for a in (0, 50_000, 50_001, 1_000_000, 1_000_001, None)] == [
        "low", "low", "medium", "medium", "high", "high",
    ]  # fmt: skip
    assert p.bulk_approvable(action_type="retry_payment", risk="low", amount_reporting_minor=100)
    assert not p.bulk_approvable(action_type="write_off", risk="low", amount_reporting_minor=100)
    assert not p.bulk_approvable(
        action_type="retry_payment", risk="low", amount_reporting_minor=None
    )


def test_policy_diff_lists_changed_keys() -> None:
    old = Policy()
    new = parse_policy(
        {"retries": {"max_auto_retries": 2}, "automation": {"levels": {"refund": "insight"}}}
    )
    assert policy_diff(old, new) == [
        ("automation.levels.refund", "assisted", "insight"),
        ("retries.max_auto_retries", 8, 2),
    ]


@pytest.mark.parametrize("action", ["write_off", "model_promotion", "policy_change"])
@pytest.mark.parametrize("level", ["automated_with_override", "autonomous"])
def test_high_risk_actions_can_never_be_made_automatic(action: str, level: str) -> None:
    from workbench.policy import Automation

    with pytest.raises(PolicyError) as info:
        parse_policy({"automation": {"levels": {action: level}}}, source="p.yaml")
    assert any(
        p.startswith(f"automation.levels.{action}:") and "human approval" in p
        for p in info.value.problems
    )
    # nor by building the policy in code
    with pytest.raises(ValueError, match="assisted or insight"):
        Automation(levels={action: level})
    assert parse_policy({"automation": {"levels": {action: "insight"}}}).level(action) == "insight"


# --------------------------------------------------------------------------- the file in force


def test_the_default_policy_file_is_seeded_in_the_data_folder_once(
    isolated_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An existing data folder without policy.yaml gets the packaged default on first use
    (so it keeps the policy it had), logged; later uses never overwrite it."""
    data = isolated_env / "data"
    (data / "warehouse").mkdir(parents=True)  # a data folder from before policy.yaml
    settings = load_settings()
    in_force = data / "policy.yaml"
    assert settings.policy_file == in_force and not in_force.exists()
    shipped = DEFAULT.read_bytes()
    with caplog.at_level("INFO", logger="workbench.policy"):
        assert load_policy(settings=settings) == load_policy(DEFAULT)
    assert in_force.read_bytes() == shipped
    assert [r for r in caplog.records if "policy.yaml" in r.getMessage()], caplog.text
    assert not list(data.glob(".policy.yaml.*.tmp"))  # no temporary file left behind

    edited = shipped.replace(b'label: "default"', b'label: "ours"')
    in_force.write_bytes(edited)
    caplog.clear()
    with caplog.at_level("INFO", logger="workbench.policy"):
        assert load_policy(settings=load_settings()).label == "ours"
        assert load_policy().label == "ours"  # the settings it loads itself
    assert in_force.read_bytes() == edited and not caplog.records
    assert DEFAULT.read_bytes() == shipped


def test_seeding_never_overwrites_a_file_that_appears_meanwhile(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes starting at once: whoever creates the file first wins, the other keeps
    it (no rename over it)."""
    from workbench import policy as policy_mod

    settings = load_settings()
    in_force = Path(settings.policy_file)
    theirs = DEFAULT.read_text().replace('label: "default"', 'label: "theirs"')
    real_link = policy_mod.os.link

    def someone_else_first(src, dst):
        Path(dst).write_text(theirs)
        return real_link(src, dst)

    monkeypatch.setattr(policy_mod.os, "link", someone_else_first)
    assert load_policy(settings=settings).label == "theirs"
    assert in_force.read_text() == theirs
    assert [p.name for p in in_force.parent.iterdir()] == ["policy.yaml"]


def test_an_explicit_policy_file_is_used_as_given(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_policy = isolated_env / "data" / "policy.yaml"
    missing = isolated_env / "ops" / "dunning.yaml"
    monkeypatch.setenv("WORKBENCH_POLICY_FILE", str(missing))
    with pytest.raises(PolicyError, match="file not found"):
        load_policy(settings=load_settings())
    assert not missing.exists() and not data_policy.exists()  # nothing seeded anywhere

    missing.parent.mkdir()
    missing.write_text(DEFAULT.read_text().replace('label: "default"', 'label: "ops"'))
    assert load_policy(settings=load_settings()).label == "ops"
    monkeypatch.delenv("WORKBENCH_POLICY_FILE")
    # the notebook's policy_file parameter is an override
    override = load_settings(overrides={"policy_file": str(missing)})
    assert load_policy(settings=override).label == "ops"
    assert not data_policy.exists()


def test_a_data_folder_where_the_policy_cannot_be_created_is_a_policy_error(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workbench import store  # where the file is written (tests run as root: no chmod)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store, "open", read_only, raising=False)
    with pytest.raises(PolicyError, match="creating it from the packaged default"):
        load_policy(settings=load_settings())
    assert not (isolated_env / "data" / "policy.yaml").exists()
