"""The README's examples work as written."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from workbench.csv_mapping import map_csv, parse_mapping

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_csv_mapping_example_maps_a_file(tmp_path: Path) -> None:
    block = re.search(r"```yaml\n(# my_usage.yaml.*?)```", README, re.S).group(1)
    mapping = parse_mapping(yaml.safe_load(block))
    csv = tmp_path / "export.csv"
    csv.write_text("Customer ID,Day,Calls\ncus_1,31/01/2024,120\ncus_2,01/02/2024,-5\n")
    mapped = map_csv(csv, mapping)
    assert mapped.error is None and mapped.received == 2
    usage = mapped.tables["usage"]
    assert list(usage["account_id"]) == ["cus_1"] and list(usage["metric"]) == ["api_calls"]
    assert str(usage["date"].iloc[0]) == "2024-01-31" and usage["quantity"].iloc[0] == 120
    assert list(mapped.rejects["line"]) == [3]  # the negative count, with its reason


def test_readme_run_examples_bind_their_parameters() -> None:
    from workbench.runner import bind_parameters, resolve_steps

    root = Path(__file__).resolve().parents[1]
    docs = [README, *(p.read_text() for p in sorted((root / "docs").glob("*.md")))]
    commands = [
        line.split("#")[0].split("workbench run", 1)[1].split()
        for text in docs
        for line in text.splitlines()
        if "workbench run" in line and " -p " in line
    ]
    assert commands
    for words in commands:
        steps = [w for w in words if not w.startswith("-") and "=" not in w]
        given = dict(w.split("=", 1) for w in words if "=" in w)
        bind_parameters(resolve_steps(root, steps), given)  # raises on a wrong example
