"""The `repurchase` command: help texts, exit codes, and no traceback or partial output on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from serving.cli import app

COMMANDS = ["quickstart", "features", "train", "backtest", "score", "target", "replenish", "serve", "synth"]
runner = CliRunner()


def repurchase_executable() -> str:
    return str(Path(sys.executable).with_name("repurchase"))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage: repurchase" in result.output or "Usage: " in result.output
    assert len(result.output.splitlines()) > 5


def test_top_level_help_lists_all_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


def test_usage_errors_exit_2():
    result = runner.invoke(app, ["features", "--orders", "cdnow"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2


def test_bad_input_is_one_line_exit_2_no_traceback_no_output(tmp_path):
    bad = tmp_path / "orders.csv"
    bad.write_text("customer_id,order_ts,amount\nA,not-a-date,1\n")
    out = tmp_path / "features.parquet"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run(
        [repurchase_executable(), "features", "--orders", str(bad), "--cutoff", "2024-01-01", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "orders.csv: column 'order_ts' line 2: 'not-a-date' is not a date" in lines[0]
    assert list(tmp_path.iterdir()) == [bad]


def test_bad_cutoff_is_exit_2(tmp_path):
    # A date after the last order is a valid as-of date now (with a warning when stale);
    # one before the first order is still bad input.
    result = runner.invoke(app, ["features", "--orders", "cdnow-sample", "--cutoff", "1996-12-31", "--out", str(tmp_path / "f.parquet")])
    assert result.exit_code == 2
    assert "is before the first order in cdnow-sample (1997-01-01)" in result.output
    assert not (tmp_path / "f.parquet").exists()


LANG_COMMANDS = ["quickstart", "train", "backtest", "target", "replenish", "measure"]


@pytest.mark.parametrize("command", LANG_COMMANDS)
def test_commands_that_print_tables_or_write_the_report_take_lang(command):
    result = runner.invoke(app, [command, "--help"])
    assert "--lang" in result.output and "REPURCHASE_LANG" in result.output


def test_a_language_not_offered_is_bad_input_before_any_work(tmp_path, monkeypatch):
    out = tmp_path / "qs"
    result = runner.invoke(app, ["quickstart", "--out", str(out), "--lang", "fr"])
    assert result.exit_code == 2
    assert "--lang: 'fr' is not a language offered here; choose one of en, zh" in result.output
    assert not out.exists()
    monkeypatch.setenv("REPURCHASE_LANG", "klingon")
    json_path = tmp_path / "b.json"
    result = runner.invoke(app, ["backtest", "--orders", "cdnow-sample", "--cutoff", "1997-06-30", "--json",
                                 str(json_path)])
    assert result.exit_code == 2
    assert "REPURCHASE_LANG: 'klingon' is not a language offered here" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_quickstart_does_the_whole_job(tmp_path):
    import json

    import pandas as pd

    from training.contract import SCORE_COLUMNS

    out = tmp_path / "qs"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"}
    proc = subprocess.run([repurchase_executable(), "quickstart", "--out", str(out)], capture_output=True, text=True,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "23,570 customers" in proc.stdout and "registered repurchase version 1 as champion" in proc.stdout
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stdout + proc.stderr
    scores = pd.read_parquet(out / "scores.parquet")
    assert list(scores.columns) == list(SCORE_COLUMNS) and len(scores) == 23570
    report = json.loads((out / "backtest.json").read_text())
    assert report["cutoff"] == "1997-09-30" and report["n_customers"] == 23570
    assert report["model"]["auc"] > report["bgnbd"]["auc"] and report["model"]["brier"] < report["bgnbd"]["brier"]
    summary = pd.read_csv(out / "audiences" / "summary.csv")
    for action in summary["action"]:
        assert (out / "audiences" / f"{action}.csv").exists()
    assert "<section id=\"backtest\"" in (out / "report.html").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlruns", "qs"]
