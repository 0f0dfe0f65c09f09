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
