"""CLI commands that need the user's role: a bad roles file is a one-line error.

(Kept apart from ``test_approvals.py``: running these imports the modules that register
executors, which that file's executor-restoring fixture would then drop.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from workbench.cli import main

DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "workbench" / "policies" / "default.yaml"


@pytest.mark.parametrize(
    ("args", "text", "says"),
    [
        (["policy", "propose", str(DEFAULT_POLICY), "--reason", "x"], "roles:\n  alice: aprover\n",
         "alice: unknown role 'aprover'; roles are viewer, analyst, approver, admin"),
        (["policy", "propose", str(DEFAULT_POLICY), "--reason", "x"], "roles: {a: 1\n",
         "cannot parse at line 2, column 1"),
        (["policy", "propose", str(DEFAULT_POLICY), "--reason", "x"], "roles: [alice]\n",
         "expected a mapping"),
        (["models", "promote", "churn_90d", "3", "--reason", "x"], "roles:\n  alice: aprover\n",
         "unknown role 'aprover'"),
        (["models", "rollback", "churn_90d", "--reason", "x"], "roles:\n  alice: aprover\n",
         "unknown role 'aprover'"),
        (["automation", "pause", "--reason", "x"], "roles:\n  'system:x': admin\n",
         "reserved"),
        (["alerts", "ack", "a1"], "roles:\n  alice: aprover\n", "unknown role 'aprover'"),
    ],
)  # fmt: skip
def test_cli_commands_say_what_is_wrong_with_a_bad_roles_file(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], text: str, says: str
) -> None:
    """A one-line error naming the file, what is wrong and what to do; no traceback."""
    path = isolated_env / "roles.yaml"
    path.write_text(text)
    monkeypatch.setenv("WORKBENCH_ROLES_FILE", str(path))
    monkeypatch.setenv("WORKBENCH_USER", "alice")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"Error: bad roles file {path}: ") and says in line
    assert "WORKBENCH_ROLES_FILE" in line and "Traceback" not in result.output
