import re
from pathlib import Path

import pytest

from workbench.config import ConfigError, load_settings


def test_defaults_are_under_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (
        "WORKBENCH_DATA_DIR",
        "WORKBENCH_REPORTS_DIR",
        "WORKBENCH_CONFIG",
        "WORKBENCH_HOME",
    ):
        monkeypatch.delenv(key, raising=False)
    s = load_settings(tmp_path)
    assert s.data_dir == tmp_path / "data"
    assert s.warehouse_path == tmp_path / "data" / "warehouse" / "warehouse.duckdb"
    assert s.approvals_url == f"sqlite:///{tmp_path}/data/approvals/approvals.sqlite"
    assert s.sources == {}


def test_toml_then_env_then_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (
        "WORKBENCH_DATA_DIR",
        "WORKBENCH_REPORTS_DIR",
        "WORKBENCH_CONFIG",
        "WORKBENCH_HOME",
    ):
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "workbench.toml").write_text(
        '[workbench]\ndata_dir = "lake"\nreporting_currency = "EUR"\nengine = "duckdb"\n'
    )
    s = load_settings(tmp_path)
    assert s.data_dir == tmp_path / "lake"
    assert s.warehouse_path == tmp_path / "lake" / "warehouse" / "warehouse.duckdb"
    assert s.reporting_currency == "eur"
    assert s.sources["data_dir"] == str(tmp_path / "workbench.toml")

    monkeypatch.setenv("WORKBENCH_DATA_DIR", "/srv/billing")
    s = load_settings(tmp_path)
    assert s.data_dir == Path("/srv/billing")
    assert s.sources["data_dir"] == "$WORKBENCH_DATA_DIR"

    s = load_settings(tmp_path, overrides={"data_dir": tmp_path / "x"})
    assert s.data_dir == tmp_path / "x" and s.sources["data_dir"] == "override"


def test_bad_config_says_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKBENCH_CONFIG", raising=False)
    (tmp_path / "workbench.toml").write_text('[workbench]\ndata_dri = "x"\n')
    with pytest.raises(ConfigError, match="unknown setting 'data_dri'"):
        load_settings(tmp_path)
    (tmp_path / "workbench.toml").write_text('[workbench]\nengine = "oracle"\n')
    with pytest.raises(ConfigError, match="engine must be"):
        load_settings(tmp_path)
    (tmp_path / "workbench.toml").write_text('[workbench]\nlock_timeout_s = "soon"\n')
    with pytest.raises(ConfigError, match="lock_timeout_s"):
        load_settings(tmp_path)


def test_spark_warehouse_follows_data_dir_or_keeps_a_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("WORKBENCH_DATA_DIR", "WORKBENCH_CONFIG", "WORKBENCH_HOME",
                "WORKBENCH_SPARK_WAREHOUSE"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    moved = load_settings(tmp_path, overrides={"data_dir": "elsewhere"})
    assert moved.spark_warehouse == str(tmp_path / "elsewhere" / "spark-warehouse")
    relative = load_settings(tmp_path, overrides={"spark_warehouse": "lakehouse"})
    assert relative.spark_warehouse == str(tmp_path / "lakehouse")
    monkeypatch.setenv("WORKBENCH_SPARK_WAREHOUSE", "s3a://billing/workbench")
    assert load_settings(tmp_path).spark_warehouse == "s3a://billing/workbench"


def test_cell_timeout_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from workbench.cli import main

    for key in ("WORKBENCH_CONFIG", "WORKBENCH_HOME", "WORKBENCH_CELL_TIMEOUT_S"):
        monkeypatch.delenv(key, raising=False)
    assert load_settings(tmp_path).cell_timeout_s == 3600  # generous, but finite
    monkeypatch.setenv("WORKBENCH_CELL_TIMEOUT_S", "0")  # no limit
    assert load_settings(tmp_path).cell_timeout_s == 0
    monkeypatch.setenv("WORKBENCH_CELL_TIMEOUT_S", "-30")
    with pytest.raises(ConfigError, match=r"cell_timeout_s \(\$WORKBENCH_CELL_TIMEOUT_S\) must"):
        load_settings(tmp_path)
    monkeypatch.delenv("WORKBENCH_CELL_TIMEOUT_S")
    for bad in ("-1", "1.5", "true"):
        (tmp_path / "workbench.toml").write_text(f"[workbench]\ncell_timeout_s = {bad}\n")
        with pytest.raises(ConfigError, match="cell_timeout_s"):
            load_settings(tmp_path)
    (tmp_path / "workbench.toml").write_text("[workbench]\ncell_timeout_s = 7200\n")
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0, result.output
    assert re.search(r"cell_timeout_s\s+7200\s+\[.*workbench.toml\]", result.output)


def test_the_lock_wait_must_end_before_the_cell_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cell waiting for the warehouse lock must get the lock's own message (naming the
    holder), not be stopped by the cell timeout first. ``workbench run`` checks it
    (tests/test_runner.py); loading settings does not, so every other command works with any
    pair and ``--cell-timeout 0`` can lift a conflicting setting."""
    from workbench.config import check_lock_wait

    for key in ("WORKBENCH_CONFIG", "WORKBENCH_HOME", "WORKBENCH_CELL_TIMEOUT_S",
                "WORKBENCH_LOCK_TIMEOUT_S"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    toml = tmp_path / "workbench.toml"
    toml.write_text("[workbench]\ncell_timeout_s = 600\n")  # the default lock wait is 600 s
    settings = load_settings(tmp_path)  # loads: only a run needs the pair in order
    assert (settings.lock_timeout_s, settings.cell_timeout_s) == (600, 600)
    with pytest.raises(ConfigError) as info:
        check_lock_wait(600, 600, lock_source="default", cell_source=str(toml))
    message = str(info.value)
    assert (
        f"lock_timeout_s (600 s, default) must be below cell_timeout_s (600 s, {toml})" in message
    )
    assert "lower lock_timeout_s or raise cell_timeout_s" in message
    check_lock_wait(599.5, 600, lock_source="x", cell_source="y")  # below: fine
    check_lock_wait(4000, 0, lock_source="x", cell_source="y")  # no cell limit: any lock wait
    toml.unlink()
    defaults = load_settings(tmp_path)  # 600 s below 3600 s
    assert (defaults.lock_timeout_s, defaults.cell_timeout_s) == (600, 3600)


def test_policy_file_lives_in_the_data_folder_unless_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy in force is data, not the packaged file: it follows data_dir, and a
    policy_file set anywhere (toml, environment, override) is used as given."""
    from click.testing import CliRunner

    from workbench.cli import main

    for key in ("WORKBENCH_DATA_DIR", "WORKBENCH_CONFIG", "WORKBENCH_HOME",
                "WORKBENCH_POLICY_FILE"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    s = load_settings(tmp_path)
    assert s.policy_file == tmp_path / "data" / "policy.yaml"
    assert "policy_file" not in s.sources
    moved = load_settings(tmp_path, overrides={"data_dir": "elsewhere"})
    assert moved.policy_file == tmp_path / "elsewhere" / "policy.yaml"
    (tmp_path / "workbench.toml").write_text('[workbench]\npolicy_file = "ops/dunning.yaml"\n')
    assert load_settings(tmp_path).policy_file == tmp_path / "ops" / "dunning.yaml"
    monkeypatch.setenv("WORKBENCH_POLICY_FILE", "/srv/policy/dunning.yaml")
    assert load_settings(tmp_path).policy_file == Path("/srv/policy/dunning.yaml")
    given = load_settings(tmp_path, overrides={"policy_file": "mine.yaml", "data_dir": "x"})
    assert (
        given.policy_file == tmp_path / "mine.yaml" and given.sources["policy_file"] == "override"
    )

    # `workbench config` says where the default comes from, and creates nothing
    monkeypatch.delenv("WORKBENCH_POLICY_FILE")
    (tmp_path / "workbench.toml").unlink()
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    out = CliRunner().invoke(main, ["config"])
    assert out.exit_code == 0, out.output
    [line] = [row for row in out.output.splitlines() if row.startswith("policy_file")]
    assert str(tmp_path / "data" / "policy.yaml") in line and "policies/default.yaml" in line
    assert not (tmp_path / "data" / "policy.yaml").exists()


@pytest.mark.parametrize("lock_s", [-1.0, float("nan")])
def test_a_lock_wait_without_end_is_refused_under_a_cell_timeout(lock_s):
    """filelock waits for ever for a negative timeout (and for NaN, which never compares
    above the time waited): the lock's message would never come, the cell timeout kills
    the step instead, which is what the check exists to prevent."""
    from filelock import FileLock

    from workbench.config import ConfigError, check_lock_wait

    assert FileLock("x").timeout == -1  # filelock's own "wait for ever"
    with pytest.raises(ConfigError, match="lock_timeout_s"):
        check_lock_wait(lock_s, 3600, lock_source="x", cell_source="y")
    check_lock_wait(lock_s, 0, lock_source="x", cell_source="y")  # no cell limit: fine
