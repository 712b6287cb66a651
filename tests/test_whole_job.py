"""The whole job on the logs real shops have: young, messy, scored on a day after the last order."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from serving.cli import app


@pytest.mark.slow
def test_the_whole_job_on_a_young_messy_shop_and_a_day_after_its_last_order(tmp_path, monkeypatch, mlflow_store):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    made = runner.invoke(app, ["synth", "--customers", "1500", "--months", "7", "--messy", "--seed", "4",
                               "--out", "shop.parquet"])
    assert made.exit_code == 0, made.output

    done = runner.invoke(app, ["quickstart", "--orders", "shop.parquet", "--out", "out"])
    assert done.exit_code == 0, done.output
    out = tmp_path / "out"
    for name in ("scores.parquet", "scores.features.parquet", "backtest.json", "report.html", "replenishment.parquet"):
        assert (out / name).exists(), name
    backtest = json.loads((out / "backtest.json").read_text())
    assert backtest["bgnbd"]["auc"] is not None  # BG/NBD is always reported
    assert backtest["model"]["auc"] is not None or backtest.get("model_note")  # the model, or why not
    assert (out / "audiences" / "summary.csv").exists()
    assert any((out / "send").glob("*.csv"))
    scores = pd.read_parquet(out / "scores.parquet")
    assert scores["p_repurchase"].between(0, 1).all() and scores["p_alive"].between(0, 1).all()

    # the daily run on an export that ends earlier: an as-of date after the last order
    last = pd.read_parquet("shop.parquet")["order_ts"].max().normalize()
    later = (last + pd.Timedelta(days=12)).date().isoformat()
    scored = runner.invoke(app, ["score", "--orders", "shop.parquet", "--as-of", later, "--out", "later/scores.parquet"])
    assert scored.exit_code == 0, scored.output
    assert (pd.read_parquet(tmp_path / "later" / "scores.parquet")["as_of"] == pd.Timestamp(later)).all()
    targeted = runner.invoke(app, ["target", "--scores", "later/scores.parquet", "--out", "later/audiences"])
    assert targeted.exit_code == 0, targeted.output
    replenished = runner.invoke(app, ["replenish", "--orders", "shop.parquet", "--as-of", later,
                                      "--out", "later/replenishment.parquet"])
    assert replenished.exit_code == 0, replenished.output
