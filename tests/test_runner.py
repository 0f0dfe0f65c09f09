"""The pipeline runner on tiny fixture notebooks in a throwaway project."""

from __future__ import annotations

import json
import os
import re
from datetime import date
from pathlib import Path

import nbformat
import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.config import load_settings
from workbench.runner import (
    Parameter,
    RunnerError,
    StepFailed,
    bind_parameters,
    current_run_id,
    notebook_parameters,
    resolve_steps,
    run_pipeline,
)


def _notebook(path: Path, params: str, *body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Title"),
        cell,
        *(nbformat.v4.new_code_cell(b) for b in body),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture()
def project(tmp_path: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "proj"
    (root / "notebooks").mkdir(parents=True)
    (root / "workbench.toml").write_text("[workbench]\n")
    monkeypatch.setenv("WORKBENCH_HOME", str(root))
    monkeypatch.setenv("WORKBENCH_REPORTS_DIR", str(root / "reports"))
    _notebook(
        root / "notebooks" / "01_first.ipynb",
        'run_id: str = ""  # pipeline run id\nn: int = 2  # how many\nlabel: str = "x"  # a label',
        "result = n * 10\nprint('SECRET-CODE-MARKER', result, label, run_id)",
    )
    _notebook(
        root / "notebooks" / "02_second.ipynb",
        "fail: bool = False  # raise on purpose",
        "if fail:\n    raise ValueError('boom on purpose')",
        "print('second done')",
    )
    _notebook(root / "notebooks" / "03_third.ipynb", "k: float = 0.5  # a rate", "print(k)")
    return root


def test_parameters_are_read_typed_and_commented(project: Path) -> None:
    params = notebook_parameters(project / "notebooks" / "01_first.ipynb")
    assert [(p.name, p.type, p.default, p.help) for p in params] == [
        ("run_id", "str", "''", "pipeline run id"),
        ("n", "int", "2", "how many"),
        ("label", "str", "'x'", "a label"),
    ]
    bad = _notebook(project / "bad.ipynb", "n = 2  # untyped")
    with pytest.raises(RunnerError, match="typed assignment"):
        notebook_parameters(bad)
    bad = _notebook(project / "bad2.ipynb", "n: int = 2")
    with pytest.raises(RunnerError, match="no help comment"):
        notebook_parameters(bad)


def test_steps_resolve_by_number_name_or_stem(project: Path) -> None:
    names = [p.stem for p in resolve_steps(project, ["third", "01", "02_second"])]
    assert names == ["01_first", "02_second", "03_third"]  # always run order
    with pytest.raises(RunnerError, match="known steps: 01_first, 02_second, 03_third"):
        resolve_steps(project, ["ingest"])


def test_successful_run_writes_reports_manifest_and_index(project: Path) -> None:
    settings = load_settings(project)
    manifest = run_pipeline(["01", "03"], parameters={"n": "7"}, settings=settings, progress=False)
    run_dir = settings.reports_dir / manifest.run_id
    assert manifest.status == "ok"
    assert [s.status for s in manifest.steps] == ["ok", "ok"]
    executed = nbformat.read(run_dir / "01_first.ipynb", as_version=4)
    text = json.dumps(executed)
    assert "SECRET-CODE-MARKER 70 x " + manifest.run_id in text  # typed int, run id injected
    html = (run_dir / "01_first.html").read_text()
    assert "SECRET-CODE-MARKER 70" in html  # outputs kept
    assert (
        "print(&#39;SECRET-CODE-MARKER&#39;" not in html and "print('SECRET" not in html
    )  # code hidden
    saved = json.loads((run_dir / "manifest.json").read_text())
    assert saved["status"] == "ok" and saved["parameters"] == {"n": "7"}
    assert saved["steps"][0]["parameters"] == {"n": 7, "run_id": manifest.run_id}
    assert saved["steps"][1]["parameters"] == {}  # 03 declares neither n nor run_id
    assert saved["packages"]["papermill"] != "not installed"
    assert all(s["duration_s"] is not None and s["outputs"] for s in saved["steps"])
    index = (settings.reports_dir / "index.html").read_text()
    assert manifest.run_id in index and "01_first.html" in index


def test_failing_cell_stops_the_run_and_keeps_the_notebook(project: Path) -> None:
    settings = load_settings(project)
    with pytest.raises(StepFailed, match="boom on purpose") as info:
        run_pipeline(parameters={"fail": "true"}, settings=settings, progress=False)
    failed = nbformat.read(info.value.output, as_version=4)
    top = json.dumps(failed.cells[0])
    assert "An Exception was encountered" in top  # papermill's error banner at the top
    run_dir = info.value.output.parent
    saved = json.loads((run_dir / "manifest.json").read_text())
    assert saved["status"] == "failed"
    assert [s["status"] for s in saved["steps"]] == ["ok", "failed", "skipped"]
    assert "ValueError: boom on purpose" in saved["steps"][1]["error"]


def test_unknown_or_mistyped_parameters_are_errors(project: Path) -> None:
    settings = load_settings(project)
    with pytest.raises(RunnerError, match="unknown parameter.*horizon"):
        run_pipeline(parameters={"horizon": "3"}, settings=settings, progress=False)
    with pytest.raises(RunnerError, match="n is int"):
        run_pipeline(["01"], parameters={"n": "many"}, settings=settings, progress=False)
    assert not list((settings.reports_dir).glob("*/manifest.json"))  # nothing ran


def test_cli_exit_codes_and_params(project: Path) -> None:
    cli = CliRunner()
    result = cli.invoke(main, ["params", "01"])
    assert result.exit_code == 0, result.output
    assert "n: int = 2" in result.output and "how many" in result.output
    result = cli.invoke(main, ["run", "02", "-p", "fail=yes", "--no-progress"])
    assert result.exit_code == 1
    result = cli.invoke(main, ["run", "01", "-p", "bogus=1"])
    assert result.exit_code != 0 and "unknown parameter" in result.output
    params_file = project / "p.yaml"
    params_file.write_text("n: 3\nlabel: hello\n")
    result = cli.invoke(main, ["run", "01", "-f", str(params_file), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Run " in result.output and "01_first" in result.output


def _index_row(settings, run_id: str) -> str:
    index = (settings.reports_dir / "index.html").read_text()
    return next(row for row in index.split("<tr>") if f"<td>{run_id}</td>" in row)


def test_a_dead_kernel_marks_the_step_and_the_run_failed(project: Path) -> None:
    _notebook(
        project / "notebooks" / "02_second.ipynb",
        "fail: bool = False  # raise on purpose",
        "import os\nos._exit(1)",
    )
    settings = load_settings(project)
    with pytest.raises(StepFailed, match="DeadKernelError") as info:
        run_pipeline(settings=settings, run_id="dead-kernel", progress=False)
    assert "workbench run 02_second --run-id dead-kernel" in str(info.value)
    assert "The notebook as far as it ran is" in str(info.value)  # saved as each cell ran
    assert info.value.output.exists() and info.value.output.with_suffix(".html").exists()
    saved = json.loads((settings.reports_dir / "dead-kernel" / "manifest.json").read_text())
    assert saved["status"] == "failed"
    assert [s["status"] for s in saved["steps"]] == ["ok", "failed", "skipped"]
    assert "DeadKernelError" in saved["steps"][1]["error"]
    assert "<td>failed</td>" in _index_row(settings, "dead-kernel")


def test_an_interrupted_run_is_recorded_failed_and_re_raised(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import papermill

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    settings = load_settings(project)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(["01", "03"], settings=settings, run_id="stopped", progress=False)
    saved = json.loads((settings.reports_dir / "stopped" / "manifest.json").read_text())
    assert saved["status"] == "failed"
    assert [s["status"] for s in saved["steps"]] == ["failed", "skipped"]
    assert saved["steps"][0]["error"].startswith("KeyboardInterrupt")
    assert "<td>failed</td>" in _index_row(settings, "stopped")
    result = CliRunner().invoke(main, ["run", "01", "--run-id", "stopped-cli", "--no-progress"])
    assert result.exit_code == 130
    assert "interrupted" in result.output and "workbench run 01_first" in result.output


def test_a_name_several_steps_declare_must_be_scoped_to_one(project: Path) -> None:
    _notebook(project / "notebooks" / "04_fourth.ipynb", "n: int = 1  # another n", "print(n)")
    both = resolve_steps(project, ["01", "04"])
    with pytest.raises(RunnerError, match=r"n is declared by 01_first, 04_fourth.*-p 01\.n=5"):
        bind_parameters(both, {"n": "5"})
    bound = bind_parameters(both, {"01.n": "5", "04_fourth.n": "6", "label": "y"})
    assert [bound[nb] for nb in both] == [{"n": 5, "label": "y"}, {"n": 6}]
    assert bind_parameters(both, {"fourth.n": "7", "01_first.n": "8"})[both[1]] == {"n": 7}
    # one selected step declaring the name: the bare name is enough
    (fourth,) = resolve_steps(project, ["04"])
    assert bind_parameters([fourth], {"n": "8"}) == {fourth: {"n": 8}}
    with pytest.raises(RunnerError, match=r"01\.n: 01 is not a step of this run"):
        bind_parameters([fourth], {"01.n": "8"})
    with pytest.raises(RunnerError, match=r"unknown parameter\(s\) 04\.label"):
        bind_parameters(both, {"04.label": "z"})
    # through the CLI, as README shows it
    result = CliRunner().invoke(main, ["run", "01", "04", "-p", "n=3", "--no-progress"])
    assert result.exit_code != 0 and "-p 01.n=3" in result.output


def test_the_pipeline_notebooks_shared_names_need_a_step(repo_root: Path) -> None:
    from test_pipeline_notebooks import TINY

    notebooks = resolve_steps(repo_root, None)
    with pytest.raises(RunnerError, match=r"00_simulate, 02_revenue, 03_features, 08_anomalies"):
        bind_parameters(notebooks, {"start": "2024-06-01"})
    bound = bind_parameters(notebooks, {"02.start": "2024-06-01"})
    assert [nb.stem for nb in notebooks if "start" in bound[nb]] == ["02_revenue"]
    bound = bind_parameters(notebooks, TINY)  # the pipeline test's parameters
    assert {nb.stem[:2]: bound[nb]["seed"] for nb in notebooks if "seed" in bound[nb]} == {
        "00": 3,
        "05": 3,
        "06": 3,
    }


def test_values_that_are_not_text_are_checked_against_the_declared_type(project: Path) -> None:
    def param(kind: str) -> Parameter:
        return Parameter(name="x", type=kind, default="", help="a parameter")

    assert param("str").coerce(95) == "95"  # levels: 95 in a YAML file
    assert param("str").coerce(date(2024, 6, 1)) == "2024-06-01"  # start: 2024-06-01
    assert param("str | None").coerce(None) is None
    assert param("int").coerce(12.0) == 12 and isinstance(param("int").coerce(12.0), int)
    assert param("float").coerce(3) == 3.0 and isinstance(param("float").coerce(3), float)
    assert param("bool").coerce(False) is False
    for kind, value in [
        ("int", 12.7),
        ("int", True),
        ("int", None),
        ("float", False),
        ("bool", 1),
        ("bool", "maybe"),
        ("str", True),  # YAML's yes/no
        ("str", 1.10),  # a version number YAML read as 1.1
        ("str", None),
        ("str", [80, 95]),
    ]:
        with pytest.raises(RunnerError, match=rf"parameter x is {kind}; "):
            param(kind).coerce(value)
    cli = CliRunner()
    params_file = project / "p.yaml"
    params_file.write_text("n: 12.7\n")
    result = cli.invoke(main, ["run", "01", "-f", str(params_file), "--no-progress"])
    assert result.exit_code != 0 and "parameter n is int; 12.7" in result.output
    params_file.write_text("n: 3\nlabel: 95\n")
    result = cli.invoke(main, ["run", "01", "-f", str(params_file), "--run-id", "yaml-typed"])
    assert result.exit_code == 0, result.output
    saved = json.loads((project / "reports" / "yaml-typed" / "manifest.json").read_text())
    assert saved["steps"][0]["parameters"] == {"n": 3, "label": "95", "run_id": "yaml-typed"}


@pytest.fixture()
def finance_snapshot(tmp_path: Path, isolated_env: Path):
    """A small synthetic company's ``finance`` snapshot: what 04_forecast reads."""
    import duckdb

    from workbench.publishing import publish_tables
    from workbench.revenue import account_month_mrr
    from workbench.revenue.synthetic import generate_warehouse

    con = duckdb.connect()
    generate_warehouse(con, accounts=120, months=14, seed=5)
    settings = load_settings(Path(__file__).resolve().parents[1])
    account_months = account_month_mrr(con, policy="stripe")
    publish_tables("finance", {"account_months": account_months}, settings=settings,
                   metadata={"run_id": "fixture"}, merge=False)  # fmt: skip
    return settings


def test_forecast_draws_its_fan_chart_at_the_levels_asked_for(finance_snapshot) -> None:
    settings = finance_snapshot
    quick = {"horizon": "2", "models": "SeasonalNaive", "n_windows": "1", "segments": "region",
             "reconciler": "bottom_up"}  # fmt: skip
    manifest = run_pipeline(["04"], parameters={**quick, "levels": "95"}, settings=settings,
                            run_id="levels-95", progress=False)  # fmt: skip
    assert manifest.status == "ok"
    from workbench.dashboards.finance import FinanceDashboard
    from workbench.store import read_snapshot

    dash = FinanceDashboard(settings)  # the dashboard draws the published forecast too
    dash.tables, dash.info = read_snapshot("finance", settings=settings), {}
    assert "Forecast-lo-95" in dash.tables["forecast"]
    assert "Forecast-lo-80" not in dash.tables["forecast"]
    dash.build()  # draws the fan chart; raised before


def test_plain_papermill_values_are_typed_as_declared(tmp_path: Path) -> None:
    """papermill -p injects "false" as text and 30 as an int, whatever the declared type: the
    notebook's own check types them (or stops) before anything uses them."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    nb = _notebook(
        tmp_path / "typed.ipynb",
        "faults: bool = False  # inject faults\n"
        "act: bool = True  # act on alerts\n"
        'horizons: str = "30,90"  # days ahead, comma-separated\n'
        "rate: float = 0.5  # a rate\n"
        "n: int = 2  # how many",
        "import workbench as wb\n\nwb.check_parameters(globals())",
        "print('TYPED', repr(faults), repr(act), repr(horizons), repr(rate), repr(n))",
    )
    out = tmp_path / "out.ipynb"
    # what `papermill ... -p faults false -p act false -p horizons 30 -p rate 1 -p n 3` injects
    given = {"faults": "false", "act": "false", "horizons": 30, "rate": 1, "n": 3}
    pm.execute_notebook(str(nb), str(out), parameters=given, progress_bar=False, cwd=str(tmp_path))
    assert "TYPED False False '30' 1.0 3" in json.dumps(nbformat.read(out, as_version=4))
    with pytest.raises(PapermillExecutionError, match="parameter faults is bool; 'maybe'"):
        pm.execute_notebook(str(nb), str(out), parameters={"faults": "maybe"},
                            progress_bar=False, cwd=str(tmp_path))  # fmt: skip
    with pytest.raises(PapermillExecutionError, match=r"parameter n is int; 2\.5"):
        pm.execute_notebook(str(nb), str(out), parameters={"n": 2.5},
                            progress_bar=False, cwd=str(tmp_path))  # fmt: skip


def test_a_re_used_run_id_adds_its_steps_to_that_run(project: Path) -> None:
    settings = load_settings(project)
    first = run_pipeline(["01", "03"], parameters={"n": "7"}, settings=settings, run_id="again",
                         progress=False)  # fmt: skip
    run_pipeline(["02"], settings=settings, run_id="again", progress=False)
    manifest = run_pipeline(["03"], parameters={"k": "0.2"}, settings=settings, run_id="again",
                            progress=False)  # fmt: skip
    saved = json.loads((settings.reports_dir / "again" / "manifest.json").read_text())
    assert [s["step"] for s in saved["steps"]] == ["01_first", "02_second", "03_third"]
    assert [s.step for s in manifest.steps] == ["01_first", "02_second", "03_third"]
    assert saved["status"] == "ok" and [s["status"] for s in saved["steps"]] == ["ok"] * 3
    assert saved["steps"][0]["parameters"] == {"n": 7, "run_id": "again"}  # kept
    assert saved["steps"][2]["parameters"] == {"k": 0.2}  # the re-run replaced its record
    assert saved["parameters"] == {"n": "7", "k": "0.2"}
    assert saved["started_at"] == first.started_at
    row = _index_row(settings, "again")
    assert all(f"again/{stem}.html" in row for stem in ("01_first", "02_second", "03_third"))
    # a re-run that fails marks the run failed and keeps the other steps' records
    with pytest.raises(StepFailed):
        run_pipeline(["02"], parameters={"fail": "yes"}, settings=settings, run_id="again",
                     progress=False)  # fmt: skip
    saved = json.loads((settings.reports_dir / "again" / "manifest.json").read_text())
    assert saved["status"] == "failed"
    assert [s["status"] for s in saved["steps"]] == ["ok", "failed", "ok"]
    assert "<td>failed</td>" in _index_row(settings, "again")


@pytest.mark.parametrize("bad", ["../../escaped", "2024/01/01", ".hidden", "a b", "x\\y", "é"])
def test_a_run_id_is_a_plain_folder_name(project: Path, bad: str) -> None:
    settings = load_settings(project)
    with pytest.raises(RunnerError, match="run id"):
        run_pipeline(["03"], settings=settings, run_id=bad, progress=False)
    assert not list(project.parent.rglob("manifest.json"))  # nothing written anywhere
    result = CliRunner().invoke(main, ["run", "03", "--run-id", bad, "--no-progress"])
    assert result.exit_code != 0 and "run id" in result.output
    with pytest.raises(RunnerError, match="run id"):
        current_run_id(bad)  # what the notebooks record (papermill -p run_id ...)
    from workbench.monitoring.review import run_monitoring

    with pytest.raises(RunnerError, match="run id"):
        run_monitoring(settings, run_id=bad, progress=False)  # writes reports/<run_id>/monitoring


def test_scheduler_run_ids_are_accepted(project: Path) -> None:
    settings = load_settings(project)
    airflow = "scheduled__2024-01-01T00:00:00+00:00"  # Airflow's own run ids
    manifest = run_pipeline(["03"], settings=settings, run_id=airflow, progress=False)
    assert (settings.reports_dir / airflow / "manifest.json").exists()
    assert airflow in (settings.reports_dir / "index.html").read_text() and manifest.status == "ok"
    assert current_run_id("20240101T000000") == "20240101T000000"


def test_the_index_links_only_reports_that_exist(project: Path) -> None:
    from urllib.parse import unquote, urlsplit

    settings = load_settings(project)
    with pytest.raises(StepFailed):
        run_pipeline(parameters={"fail": "true"}, settings=settings, run_id="a:1+b",
                     progress=False)  # fmt: skip
    row = _index_row(settings, "a:1+b")
    assert "01_first.html" in row and "02_second.html" in row  # ok, and failed with its error
    assert "03_third.html" not in row and "03_third (skipped)" in row  # never ran: no report
    index = (settings.reports_dir / "index.html").read_text()
    hrefs = re.findall(r'href="([^"]+)"', index)
    assert len(hrefs) == 3  # two reports and the manifest
    for href in hrefs:
        assert not urlsplit(href).scheme, href  # "a:1+b/..." would read as a URL scheme
        assert (settings.reports_dir / unquote(href)).is_file(), href


def _slow_second_step(project: Path, seconds: int) -> None:
    _notebook(
        project / "notebooks" / "02_second.ipynb",
        "fail: bool = False  # raise on purpose",
        "print('before the wait')",
        f"import time\n\ntime.sleep({seconds})  # a blocked lock, a network call",
        "print('never reached')",
    )


def test_a_cell_over_the_timeout_fails_its_step_and_blocks_the_rest(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    _slow_second_step(project, 30)
    monkeypatch.setenv("WORKBENCH_CELL_TIMEOUT_S", "2")  # the setting, as cron would set it
    monkeypatch.setenv("WORKBENCH_LOCK_TIMEOUT_S", "1")  # the lock wait must end before it
    settings = load_settings(project)
    assert settings.cell_timeout_s == 2
    t0 = time.perf_counter()
    with pytest.raises(StepFailed, match="2 s cell timeout") as info:
        run_pipeline(settings=settings, run_id="slow", progress=False)
    assert time.perf_counter() - t0 < 25  # two kernel starts and the 2 s limit, not the 30 s
    message = str(info.value)
    assert "step 02_second failed" in message and "time.sleep(30)" in message
    assert "--cell-timeout" in message and "cell_timeout_s" in message
    assert "workbench run 02_second --run-id slow" in message
    run_dir = settings.reports_dir / "slow"
    saved = json.loads((run_dir / "manifest.json").read_text())
    assert saved["status"] == "failed"
    assert [s["status"] for s in saved["steps"]] == ["ok", "failed", "skipped"]
    error = saved["steps"][1]["error"]
    assert error.startswith("CellTimeoutError: cell In [")  # which cell, as Jupyter numbers it
    assert "time.sleep(30)" in error and "2 s cell timeout" in error
    assert str(run_dir / "02_second.html") in error  # where to look
    assert saved["steps"][1]["outputs"] == ["slow/02_second.ipynb", "slow/02_second.html"]
    # the notebook as far as it ran, the timed-out cell marked
    executed = nbformat.read(run_dir / "02_second.ipynb", as_version=4)
    assert "cell timeout" in executed.cells[0].source
    text = json.dumps(executed)
    assert "before the wait" in text and "never reached" in text  # source kept...
    assert sum("never reached" in json.dumps(c.get("outputs", [])) for c in executed.cells) == 0
    (timed_out,) = (c for c in executed.cells if c.cell_type == "code" and "sleep" in c.source)
    assert timed_out.outputs[-1]["ename"] == "CellTimeoutError"
    assert "cell timeout" in (run_dir / "02_second.html").read_text()
    assert "<td>failed</td>" in _index_row(settings, "slow")


def test_cell_timeout_option_wins_over_the_setting(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _slow_second_step(project, 3)
    cli = CliRunner()
    monkeypatch.setenv("WORKBENCH_CELL_TIMEOUT_S", "1")
    monkeypatch.setenv("WORKBENCH_LOCK_TIMEOUT_S", "0.5")  # below the setting and --cell-timeout 1
    result = cli.invoke(main, ["run", "02", "--cell-timeout", "0", "--run-id", "no-limit",
                               "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output  # 0: no limit
    monkeypatch.setenv("WORKBENCH_CELL_TIMEOUT_S", "0")
    result = cli.invoke(main, ["run", "--cell-timeout", "1", "--run-id", "limited",
                               "--no-progress"])  # fmt: skip
    assert result.exit_code == 1
    assert "Run stopped. step 02_second failed" in result.output
    assert "1 s cell timeout" in result.output and "time.sleep(3)" in result.output
    saved = json.loads((project / "reports" / "limited" / "manifest.json").read_text())
    assert [s["status"] for s in saved["steps"]] == ["ok", "failed", "skipped"]


def test_a_cell_timeout_option_not_above_the_lock_wait_is_refused(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flag is checked as the setting is: a step waiting for the warehouse lock must get
    the lock's own message (naming the holder), not be stopped by the cell timeout first."""
    cli = CliRunner()
    result = cli.invoke(main, ["run", "03", "--cell-timeout", "600", "--no-progress"])
    assert result.exit_code == 2, result.output  # a usage error: nothing ran
    assert "--cell-timeout" in result.output
    assert (
        "lock_timeout_s (600 s, default) must be below the cell timeout (600 s, --cell-timeout)"
        in result.output
    )
    assert not (project / "reports").exists()
    monkeypatch.setenv("WORKBENCH_LOCK_TIMEOUT_S", "30")
    result = cli.invoke(main, ["run", "03", "--cell-timeout", "10", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "lock_timeout_s (30 s, $WORKBENCH_LOCK_TIMEOUT_S) must be below" in result.output
    assert "(10 s, --cell-timeout)" in result.output
    assert not (project / "reports").exists()
    result = cli.invoke(main, ["run", "03", "--cell-timeout", "31", "--run-id", "above",
                               "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output  # above the lock wait: runs


def test_a_cell_timeout_setting_not_above_the_lock_wait_stops_a_run_not_other_commands(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings' pair is checked by the run (its message names both and where they were
    set); other commands load such settings, and ``--cell-timeout 0`` lifts the limit."""
    monkeypatch.setenv("WORKBENCH_LOCK_TIMEOUT_S", "4000")  # above the default 3600 s
    cli = CliRunner()
    assert cli.invoke(main, ["config"]).exit_code == 0
    result = cli.invoke(main, ["run", "01", "--no-progress"])
    assert result.exit_code == 1, result.output
    assert (
        "lock_timeout_s (4000 s, $WORKBENCH_LOCK_TIMEOUT_S) must be below cell_timeout_s "
        "(3600 s, default)" in result.output
    )
    assert not (project / "reports").exists()
    with pytest.raises(RunnerError, match=r"below the cell timeout \(60 s, argument\)"):
        run_pipeline(["01"], settings=load_settings(project), cell_timeout_s=60, progress=False)
    result = cli.invoke(main, ["run", "01", "--cell-timeout", "0", "--run-id", "nolimit",
                               "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("bad", ["-5", "1.5", "soon"])
def test_a_cell_timeout_that_is_not_whole_seconds_is_refused(project: Path, bad: str) -> None:
    result = CliRunner().invoke(main, ["run", "03", "--cell-timeout", bad, "--no-progress"])
    assert result.exit_code == 2  # a usage error: nothing ran
    assert "--cell-timeout" in result.output
    assert "whole number of seconds per cell, 0 for no limit" in result.output
    assert not (project / "reports").exists()
    settings = load_settings(project)
    with pytest.raises(RunnerError, match="whole number of seconds per cell"):
        run_pipeline(["03"], settings=settings, cell_timeout_s=-1, progress=False)
    assert not (project / "reports").exists()


def test_nbclients_output_timeout_is_not_blamed_on_the_cell_timeout(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nbclient raises the same CellTimeoutError when output keeps arriving after a cell
    finished (papermill turns that check on); the message must not say the cell ran too
    long, least of all with no cell limit set."""
    import papermill
    from nbclient.exceptions import CellTimeoutError

    def flooded(*args, **kwargs):
        raise CellTimeoutError("Timeout waiting for IOPub output")

    monkeypatch.setattr(papermill, "execute_notebook", flooded)
    settings = load_settings(project)
    with pytest.raises(StepFailed) as info:
        run_pipeline(["01"], settings=settings, cell_timeout_s=0, run_id="flood", progress=False)
    message = str(info.value)
    assert "not the cell timeout" in message and "print less" in message
    assert "still running after" not in message


def test_the_steps_wait_for_the_lock_as_long_as_the_checked_setting(
    tmp_path, isolated_env, monkeypatch
):
    """run_pipeline checks ``settings.lock_timeout_s`` against the cell timeout, but the
    kernels load their settings from the environment: a value given as an override is
    checked and not used (here the kernels wait 600 s under a 60 s cell timeout)."""
    import json

    from workbench.runner import run_pipeline

    root = tmp_path / "proj"
    (root / "notebooks").mkdir(parents=True)
    (root / "workbench.toml").write_text("[workbench]\n")
    monkeypatch.setenv("WORKBENCH_HOME", str(root))
    _notebook(root / "notebooks" / "01_lock.ipynb", 'run_id: str = ""  # run id',
              "from workbench.config import load_settings\n"
              "print('LOCK-WAIT', load_settings().lock_timeout_s)")  # fmt: skip
    settings = load_settings(root, overrides={"lock_timeout_s": 5})
    run_pipeline(settings=settings, run_id="lock", progress=False, cell_timeout_s=60)
    out = json.dumps(json.loads((settings.reports_dir / "lock" / "01_lock.ipynb").read_text()))
    assert "LOCK-WAIT 5.0" in out


def test_the_steps_use_the_policy_file_of_the_settings_given(tmp_path, isolated_env, monkeypatch):
    """A ``policy_file`` given as an override (not in the environment or the toml file)
    is the policy the steps decide under, not ``<data_dir>/policy.yaml``."""
    import json

    from workbench.runner import run_pipeline

    root = tmp_path / "proj"
    (root / "notebooks").mkdir(parents=True)
    (root / "workbench.toml").write_text("[workbench]\n")
    monkeypatch.setenv("WORKBENCH_HOME", str(root))
    policy = tmp_path / "ops" / "dunning.yaml"
    policy.parent.mkdir()
    shipped = Path(__file__).resolve().parents[1] / "workbench" / "policies" / "default.yaml"
    policy.write_text(shipped.read_text().replace('label: "default"', 'label: "ops-policy"'))
    _notebook(root / "notebooks" / "01_policy.ipynb", 'run_id: str = ""  # run id',
              "from workbench.config import load_settings\n"
              "from workbench.policy import load_policy\n"
              "s = load_settings()\n"
              "print('POLICY', s.policy_file, load_policy(settings=s).label)")  # fmt: skip
    settings = load_settings(root, overrides={"policy_file": str(policy), "lock_timeout_s": 5})
    run_pipeline(settings=settings, run_id="pol", progress=False, cell_timeout_s=60)
    out = json.dumps(json.loads((settings.reports_dir / "pol" / "01_policy.ipynb").read_text()))
    assert f"POLICY {policy} ops-policy" in out
    assert not (settings.data_dir / "policy.yaml").exists()  # the default was not seeded


def test_the_steps_use_the_default_policy_file_when_the_settings_given_do(project, monkeypatch):
    """Settings whose policy file is the default ``<data_dir>/policy.yaml``: a
    ``$WORKBENCH_POLICY_FILE`` set after they were loaded does not reach the kernels (they
    follow the settings given), and the environment is put back after the run."""
    import papermill

    seen = []
    monkeypatch.setattr(papermill, "execute_notebook",
                        lambda *a, **k: seen.append(os.environ.get("WORKBENCH_POLICY_FILE")))  # fmt: skip
    settings = load_settings(project)
    assert "policy_file" not in settings.sources
    monkeypatch.setenv("WORKBENCH_POLICY_FILE", str(project / "stale.yaml"))
    run_pipeline(["01"], settings=settings, run_id="dflt", progress=False)
    assert seen == [None]
    assert os.environ["WORKBENCH_POLICY_FILE"] == str(project / "stale.yaml")


def test_every_setting_given_reaches_the_kernels(project, monkeypatch):
    """Settings given as overrides from Python (not in the environment or the toml file)
    reach the kernels as the values ``load_settings`` there must rebuild; a setting left at
    its default is not passed (the kernels derive it from the data folder), even if its
    variable was set after the settings were loaded."""
    import papermill

    seen = []
    monkeypatch.setattr(papermill, "execute_notebook",
                        lambda *a, **k: seen.append(load_settings(project)))  # fmt: skip
    elsewhere = project / "elsewhere"
    settings = load_settings(project, overrides={
        "data_dir": str(project / "billing"), "reporting_currency": "EUR",
        "warehouse_path": str(elsewhere / "wh.duckdb"),
        "mlflow_tracking_uri": f"sqlite:///{elsewhere / 'mlflow.db'}",
    })  # fmt: skip
    monkeypatch.setenv("WORKBENCH_SNAPSHOT_DIR", str(project / "stale"))
    run_pipeline(["01"], settings=settings, run_id="envs", progress=False)
    (kernel,) = seen
    for name in ("data_dir", "reporting_currency", "warehouse_path", "mlflow_tracking_uri",
                 "snapshot_dir", "approvals_url", "policy_file"):  # fmt: skip
        assert getattr(kernel, name) == getattr(settings, name), name
    assert kernel.snapshot_dir == project / "billing" / "snapshots"
    assert os.environ["WORKBENCH_SNAPSHOT_DIR"] == str(project / "stale")  # put back
