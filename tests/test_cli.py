"""The `repurchase` command: help texts, exit codes, and no traceback or partial output on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from serving.cli import app

COMMANDS = ["quickstart", "features", "train", "backtest", "score", "target", "replenish", "serve", "synth", "economics"]
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
def test_quickstart_does_the_whole_job(tmp_path, mlflow_store):
    import json

    import pandas as pd

    from training.contract import SCORE_COLUMNS

    out = tmp_path / "qs"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store}
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
    page = (out / "report.html").read_text()
    assert "<section id=\"backtest\"" in page
    # Member tiers scored; economics written, and without channels it says what LTV:CAC needs.
    assert set(scores["member_tier"]) == {"silver", "gold", "diamond"} and scores["p_upgrade"].between(0, 1).all()
    economics = json.loads((out / "economics.json").read_text())
    assert economics["ltv_cac"] is None and "no channel column" in economics["ltv_cac_note"]
    assert economics["repurchase_by_month"][0]["month"] == "1997-01" and (out / "economics.cohorts.png").exists()
    assert '<section id="tiers"' in page and '<section id="economics"' in page and "no channel column" in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlruns", "qs"]


@pytest.mark.slow
@pytest.mark.browser
def test_quickstart_in_chinese_writes_a_chinese_report_and_reasons_with_english_machine_names(tmp_path, mlflow_store):
    import re

    import pandas as pd

    from devtools import Chromium
    from training.i18n import cjk_font_family

    chromium = Path("/usr/bin/chromium")
    for ready, message in ((chromium.exists(), "Chromium not installed (apt-get install chromium)"),
                           (cjk_font_family() is not None, "no CJK font installed (apt-get install fonts-noto-cjk)")):
        if not ready:
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
    out = tmp_path / "qs"
    # wide lines: a path folded across lines would leave fragments that read as words
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "COLUMNS": "1000"}
    env.pop("REPURCHASE_LANG", None)
    proc = subprocess.run([repurchase_executable(), "quickstart", "--orders", "cdnow-sample", "--out", str(out),
                           "--lang", "zh"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cjk = re.compile(r"[\u4e00-\u9fff]")
    assert "圈选人群" in proc.stdout and "Traceback" not in proc.stderr
    from english import english_words

    # every line a person reads is Chinese: table metrics, the model's alias, a column name and the YAML example stay
    assert "订单日志 cdnow-sample：2,357 位客户" in proc.stdout
    assert english_words(proc.stdout + proc.stderr, kept={"auc", "brier", "ece", "repurchase", "champion", "challenger",
                                                          "channel", "FILE", "CHANNEL", "VALUE", "cac", "economics",
                                                          "run"}) == []
    summary = pd.read_csv(out / "audiences" / "summary.csv")
    assert set(summary["action"]) <= {"vip_care", "replenishment_reminder", "churn_warning", "win_back",
                                      "new_customer_nurture", "tier_upgrade_nudge", "tier_retention"}
    for action in summary["action"]:
        audience = pd.read_csv(out / "audiences" / f"{action}.csv")
        assert (audience["action"] == action).all()
        assert set(audience["lifecycle_stage"]) <= {"new", "active", "at_risk", "lapsed", "churned"}
        assert audience["reason"].str.contains(cjk).all()
    page = (out / "report.html").read_text(encoding="utf-8")
    assert '<html lang="zh">' in page
    with Chromium(chromium, tmp_path / "profile") as browser:
        session = browser.open((out / "report.html").resolve().as_uri())
        for selector in ("section#summary h2", "section#reasons table.reasons td"):
            text = browser.text_of(session, selector)
            fonts = browser.fonts_of(session, selector)
            assert cjk.search(text), (selector, text)
            assert any("CJK" in f["familyName"] for f in fonts), (selector, fonts)
        loaded = browser.call("Runtime.evaluate", {"expression": "document.body.dataset.imagesLoaded === "
                                                   "document.body.dataset.imagesTotal", "returnByValue": True},
                              session=session)["result"]["value"]
        assert loaded is True
