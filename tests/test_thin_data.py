"""Short, thin order histories: young shops, as-of dates after the last order, the paper's
39-week split. A model that cannot be fitted well is an answer to report, not a crash."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.orders import load_order_log, merge_order_lines
from training.contract import SCORE_COLUMNS
from training.model import (
    MIN_ORIGIN_HISTORY_DAYS,
    MIN_STEP_DAYS,
    RepurchaseModel,
    earliest_full_cutoff,
    training_origins,
)

runner = CliRunner()
LAST_DAY = "2025-12-31"


def young_lines(n_customers: int, months: int, seed: int = 3, end: str = LAST_DAY) -> pd.DataFrame:
    """Order lines of a synthetic shop that opened ``months`` months before ``end``."""
    from features.synth import generate_order_log

    start = (pd.Timestamp(end) - pd.DateOffset(months=months) + pd.Timedelta(days=1)).date().isoformat()
    return generate_order_log(n_customers, seed=seed, start=start, end=end)


@pytest.fixture(scope="module")
def four_month_orders() -> pd.DataFrame:
    return merge_order_lines(young_lines(1500, 4), has_order_id=True)


def assert_score_contract(scores: pd.DataFrame, horizon_days: int = 90) -> None:
    assert list(scores.columns) == list(SCORE_COLUMNS)
    assert scores["customer_id"].is_unique and len(scores) > 0
    for column in ("p_alive", "p_repurchase", "churn_risk"):
        assert scores[column].between(0, 1).all(), column
    np.testing.assert_allclose(scores["churn_risk"], 1 - scores["p_repurchase"])
    assert (scores[["expected_orders", "expected_revenue", "clv"]] >= 0).all().all()
    q = scores[["next_order_days_p10", "next_order_days_p50", "next_order_days_p90"]].to_numpy()
    assert np.isfinite(q[:, 0]).any()
    ordered = np.isfinite(q[:, 0]) & np.isfinite(q[:, 2])
    assert (q[ordered, 0] <= q[ordered, 2]).all() and np.nanmax(q) <= horizon_days
    assert (np.isnan(q[:, 1]) == (scores["p_repurchase"] < 0.5)).all()


# --------------------------------------------------------------------------- training origins


@pytest.mark.parametrize(
    "history_days, expected_count, expected_step",
    [
        (400, 6, 30),  # a year and more: the usual six origins, a month apart
        (200, 3, 30),  # seven months: as many as fit
        (MIN_ORIGIN_HISTORY_DAYS + 90 + 20, 2, 20),  # room for one step of 30: the step shrinks to fit two
        (MIN_ORIGIN_HISTORY_DAYS + 90 + MIN_STEP_DAYS, 2, MIN_STEP_DAYS),
        (MIN_ORIGIN_HISTORY_DAYS + 90 + MIN_STEP_DAYS - 1, 0, None),  # less: none, the model is BTYD-only
        (60, 0, None),
    ],
)
def test_training_origins_adapt_to_the_history(history_days, expected_count, expected_step):
    first = dt.date(2025, 1, 1)
    cutoff = first + dt.timedelta(days=history_days)
    origins = training_origins(first, cutoff, 90, n_origins=6, step_days=30)
    assert len(origins) == expected_count
    if origins:
        assert origins[-1] == cutoff - dt.timedelta(days=90)  # its labels end at the cutoff
        assert origins[0] >= first + dt.timedelta(days=MIN_ORIGIN_HISTORY_DAYS)
        assert {(b - a).days for a, b in zip(origins, origins[1:])} == {expected_step}
    assert (len(training_origins(first, earliest_full_cutoff(first, 90), 90)) == 2) and not training_origins(
        first, earliest_full_cutoff(first, 90) - dt.timedelta(days=1), 90
    )


# --------------------------------------------------------------------------- the BTYD-only model


def test_too_little_history_gives_a_btyd_only_model_that_keeps_the_score_contract(four_month_orders):
    cutoff = pd.Timestamp(LAST_DAY)
    model = RepurchaseModel().fit(four_month_orders, cutoff)
    assert model.btyd_only_ and model.is_btyd_only() and model.classifier_ is None
    assert model.btyd_only_reason_.startswith("BTYD-only: ")
    assert "would unlock it" in model.btyd_only_reason_ and str(earliest_full_cutoff(
        four_month_orders["order_ts"].min().date(), 90)) in model.btyd_only_reason_
    assert model.spec_.model_features == [] and model.spec_.origins == []

    features = model.point_in_time_features(four_month_orders, cutoff)
    scores = model.score_features(features, cutoff, model_version="3")
    assert_score_contract(scores)
    # Every answer is BG/NBD's (and Gamma-Gamma's): the closed forms, the same as the
    # frame-by-frame methods.
    f, r, T = (features[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T"))
    np.testing.assert_allclose(scores["p_repurchase"], model.bgnbd_.p_repurchase(90, f, r, T))
    np.testing.assert_allclose(scores["expected_orders"], model.bgnbd_.expected_orders(90, f, r, T))
    with_btyd = model.with_btyd(features)
    np.testing.assert_allclose(scores["p_repurchase"], model.p_repurchase(with_btyd))
    np.testing.assert_allclose(scores["expected_revenue"], model.expected_revenue(with_btyd))
    np.testing.assert_allclose(scores["next_order_days_p50"], model.next_order_quantiles(with_btyd)[:, 1])
    # the quantiles are BG/NBD's own: P(an order within p50 days) is one half
    p50 = scores["next_order_days_p50"].to_numpy()
    known = np.isfinite(p50)
    np.testing.assert_allclose(model.bgnbd_.p_repurchase(p50[known], f[known], r[known], T[known]), 0.5, atol=0.03)
    assert model.reason_codes(features.head(2))[0].startswith("BTYD-only: repeat purchase days=")


def test_a_btyd_only_model_scores_online_and_targets_like_any_other(four_month_orders):
    from serving.batch import add_reason_codes
    from serving.online import CustomerIn, apply_targeting, score_histories

    model = RepurchaseModel().fit(four_month_orders, LAST_DAY)
    assert model.is_btyd_only()
    batch = model.score(four_month_orders, LAST_DAY)
    some = four_month_orders[four_month_orders["customer_id"].isin(batch["customer_id"].head(3))]
    customers = [
        CustomerIn(customer_id=cid, orders=[{"order_ts": str(ts), "amount": float(a)} for ts, a in zip(g["order_ts"], g["amount"])])
        for cid, g in some.groupby("customer_id", sort=True)
    ]
    online, features = score_histories(model, customers, pd.Timestamp(LAST_DAY).date(), "1", with_features=True)
    expected = batch.set_index("customer_id").loc[online["customer_id"]]
    np.testing.assert_allclose(online["p_repurchase"], expected["p_repurchase"], rtol=1e-9)
    np.testing.assert_allclose(online["expected_revenue"], expected["expected_revenue"], rtol=1e-9)
    targeted = apply_targeting(model, batch, model.features(four_month_orders, LAST_DAY))
    assert targeted["action"].notna().any()
    explained = add_reason_codes(targeted, model, model.point_in_time_features(four_month_orders, LAST_DAY))
    assert explained["reason_codes"].str.startswith("BTYD-only: ").all()


def test_a_young_shop_trains_and_registers_a_labelled_btyd_only_model(mlflow_store, tmp_path):
    import mlflow

    from training.jobs import train_job
    from training.registry import load_scorer

    young_lines(1500, 3).to_parquet(tmp_path / "young.parquet")
    log = load_order_log(tmp_path / "young.parquet")
    result = train_job(log, pd.Timestamp(LAST_DAY), 90, register=True)
    assert result.model.is_btyd_only()
    # Three months leave no history before the backtest split: trained all the same, and said so.
    assert result.backtest.report["backtest_note"].startswith("no backtest at 2025-10-02")
    from training.backtest import backtest_note

    report = result.backtest.report
    assert backtest_note(report) == report["backtest_note"]
    assert backtest_note(report, "zh").startswith("没有做 2025-10-02 的回测（截止日前 90 天）：")
    assert "no backtest" not in backtest_note(report, "zh") and "one-time" not in backtest_note(report, "zh")
    assert result.logged.alias == "champion"
    client = mlflow.MlflowClient()
    tags = client.get_model_version("repurchase", result.logged.version).tags
    assert tags["model_kind"] == "btyd_only" and tags["bgnbd_fit_status"] == result.model.bgnbd_.fit_status_
    run = client.get_run(result.logged.run_id)
    assert run.data.params["model_kind"] == "btyd_only"
    assert run.data.tags["btyd_only_reason"] == result.model.btyd_only_reason_

    scorer, version = load_scorer()
    assert version == "1" and scorer.is_btyd_only()
    scores = scorer.score(log.orders, pd.Timestamp(LAST_DAY), model_version=version)
    assert_score_contract(scores)


def test_the_report_says_the_model_is_btyd_only_and_what_its_bgnbd_fit_means(four_month_orders, tmp_path):
    from serving.report import build_report_html, model_notes
    from training.backtest import run_backtest

    report = run_backtest(four_month_orders, "2025-11-05", 30).report
    assert report["model"]["auc"] is None and report["model_note"].startswith("BTYD-only")
    model = RepurchaseModel().fit(four_month_orders, LAST_DAY)
    scores = model.score(four_month_orders, LAST_DAY)
    notes = model_notes(model)
    assert notes[0].startswith("Scores come from BG/NBD and Gamma-Gamma alone (BTYD-only: ")
    page = build_report_html(report, {}, scores, None, model_notes=notes)
    assert "Scores come from BG/NBD and Gamma-Gamma alone" in page
    assert "The model column is empty. BTYD-only: " in page
    assert f"<td class=num>{report['bgnbd']['fit_status']}</td>" in page
    # in Chinese: the model's notes, the empty model column and the fit, said again from their numbers
    from rich.console import Console

    from english import english_words
    from serving.tables import print_backtest
    from training.i18n import Language

    chinese = model_notes(model, "zh")
    assert chinese[0].startswith("评分只来自 BG/NBD 和 Gamma-Gamma（只用 BTYD：")
    page = build_report_html(report, {}, scores, None, model_notes=chinese, lang="zh")
    for english in ("BTYD-only", "would unlock", "Scores come from", report["bgnbd"]["fit_status"]):
        assert english not in page, english
    console = Console(record=True, width=300)
    print_backtest(console, report, lang=Language("zh"))
    printed = console.export_text()
    assert "模型一栏为空：只用 BTYD" in printed and "BTYD-only" not in printed
    assert english_words(" ".join(chinese)) == [] and english_words(printed, kept={"auc", "brier", "ece"}) == []


def test_a_btyd_only_challenger_is_scored_by_what_it_answers():
    from training.registry import beats

    split = {"cutoff": "2025-10-02", "horizon_days": 90, "n_customers": 100}
    btyd_only = {**split, "model": {"auc": None, "brier": None}, "bgnbd": {"auc": 0.74, "brier": 0.20}}
    full = {**split, "model": {"auc": 0.78, "brier": 0.18}, "bgnbd": {"auc": 0.74, "brier": 0.20}}
    assert beats(full, btyd_only) and not beats(btyd_only, full)
    assert not beats({**split, "model": {}, "bgnbd": {}}, btyd_only)  # no backtest: nothing to win on


# --------------------------------------------------------------------------- as-of dates


@pytest.fixture(scope="module")
def small_log_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("orders") / "orders.csv"
    rows = [("a", "2025-01-05", 10.0), ("a", "2025-03-01", 12.0), ("b", "2025-02-10", 30.0),
            ("b", "2025-06-20", 25.0), ("c", "2025-06-29", 8.0), ("a", "2025-06-30", 11.0)]
    pd.DataFrame(rows, columns=["customer_id", "order_ts", "amount"]).to_csv(path, index=False)
    return path


def _stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_features_after_the_last_order_are_features_with_a_shorter_history(small_log_csv, tmp_path):
    out = tmp_path / "f.parquet"
    quiet_day = runner.invoke(_app(), ["features", "--orders", str(small_log_csv), "--cutoff", "2025-07-01", "--out", str(out)])
    assert quiet_day.exit_code == 0, quiet_day.output
    assert _stderr_lines(quiet_day) == []
    frame = pd.read_parquet(out)
    assert len(frame) == 3 and frame.set_index("customer_id").loc["a", "days_since_last"] == 1

    stale = runner.invoke(_app(), ["features", "--orders", str(small_log_csv), "--cutoff", "2025-12-31", "--out", str(out)])
    assert stale.exit_code == 0, stale.output
    assert _stderr_lines(stale) == [
        "warning: --cutoff 2025-12-31 is 184 days after the last order in "
        f"{small_log_csv.name} (2025-06-30), more than the 90-day horizon: is the export stale?"
    ]

    earlier = runner.invoke(_app(), ["features", "--orders", str(small_log_csv), "--cutoff", "2025-03-01", "--out", str(out)])
    assert earlier.exit_code == 0
    assert _stderr_lines(earlier) == ["warning: ignored 3 orders after --cutoff 2025-03-01"]
    assert set(pd.read_parquet(out)["customer_id"]) == {"a", "b"}


def test_replenish_after_the_last_order_warns_once_and_runs(tmp_path):
    lines = young_lines(600, 12, seed=5)
    path = tmp_path / "shop.parquet"
    lines.to_parquet(path)
    args = ["replenish", "--orders", str(path), "--as-of", "2026-06-30", "--out", str(tmp_path / "r.parquet")]
    result = runner.invoke(_app(), args, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"})
    assert result.exit_code == 0, result.output
    warnings = [line for line in _stderr_lines(result) if line.startswith("warning:")]
    assert warnings == ["warning: --as-of 2026-06-30 is 181 days after the last order in "
                        f"{path.name} (2025-12-31), more than the 90-day horizon: is the export stale?"]
    assert len(pd.read_parquet(tmp_path / "r.parquet")) > 0


def _app():
    from serving.cli import app

    return app


# --------------------------------------------------------------------------- the paper's split


def test_the_papers_split_reports_bgnbd_with_the_published_parameters_and_an_empty_model_column(tmp_path, mlflow_store):
    out = tmp_path / "bt.json"
    result = runner.invoke(_app(), ["backtest", "--orders", "cdnow-sample", "--cutoff", "1997-09-30",
                                    "--horizon-days", "273", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert (report["cutoff"], report["horizon_days"], report["n_customers"]) == ("1997-09-30", 273, 2357)
    # Fader, Hardie & Lee (2005a), per week: r 0.2426, alpha 4.4136, a 0.7929, b 2.4259.
    bgnbd = report["bgnbd"]
    assert bgnbd["params"] == pytest.approx({"r": 0.2426, "alpha": 4.4136, "a": 0.7929, "b": 2.4259}, abs=1e-4)
    assert bgnbd["time_unit"] == "week" and bgnbd["log_likelihood"] == pytest.approx(-9582.4, abs=0.05)
    assert bgnbd["fit_status"] == "interior" and 0.5 < bgnbd["auc"] < 1 and 0.5 < report["recency_only"]["auc"] < 1
    assert set(report["model"]) >= {"auc", "pr_auc", "brier", "log_loss", "ece"}
    assert all(value is None for value in report["model"].values())
    assert report["holdout_orders"]["model"] is None and report["holdout_orders"]["actual"] > 0
    assert report["model_note"].startswith("BTYD-only: 272 days of orders before 1997-09-30")
    assert "NaN" not in out.read_text()
    assert f"model column empty: {report['model_note'][:40]}" in " ".join(result.stdout.split())


# --------------------------------------------------------------------------- the latest-origin check


def test_the_latest_origin_check_ranks_the_model_and_bgnbd_on_the_same_customers():
    from training.model import latest_origin_check

    y = np.array([0, 0, 1, 1])
    check = latest_origin_check("2025-07-04", y, np.array([0.1, 0.2, 0.8, 0.9]), np.array([0.9, 0.2, 0.1, 0.8]))
    assert check == {"origin": "2025-07-04", "customers": 4, "model_auc": 1.0, "bgnbd_auc": 0.25}
    assert latest_origin_check("2025-07-04", np.ones(3), np.ones(3), np.ones(3))["model_auc"] is None


def test_a_model_that_does_not_beat_bgnbd_on_its_latest_origin_is_registered_btyd_only(synth_orders, monkeypatch):
    import training.model

    def losing(origin, y, model_p, bgnbd_p):
        return {"origin": origin, "customers": len(y), "model_auc": 0.70, "bgnbd_auc": 0.71}

    monkeypatch.setattr(training.model, "latest_origin_check", losing)
    model = RepurchaseModel(horizon_days=60, n_origins=3).fit(synth_orders, "2025-06-30")
    assert model.is_btyd_only() and model.classifier_ is None
    assert model.btyd_only_reason_.startswith("BTYD-only: on its latest training origin 2025-05-01")
    assert "AUC 0.700 against 0.710" in model.btyd_only_reason_
    scores = model.score(synth_orders, "2025-06-30")
    np.testing.assert_allclose(scores["p_repurchase"], model.features(synth_orders, "2025-06-30")["btyd_p_repurchase"])
    unchecked = RepurchaseModel(horizon_days=60, n_origins=3, check_latest_origin=False).fit(synth_orders, "2025-06-30")
    assert not unchecked.is_btyd_only()


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_a_seven_month_shop_trains_registers_and_scores_from_the_command_line(tmp_path, mlflow_store):
    """Seven months of a young shop (plus ten days past the cutoff): `train --register`, then `score`."""
    lines = young_lines(1500, 7, seed=11, end="2026-01-10")
    path = tmp_path / "young.parquet"
    lines.to_parquet(path)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store}
    exe = str(Path(sys.executable).with_name("repurchase"))
    train = subprocess.run([exe, "train", "--orders", str(path), "--cutoff", LAST_DAY, "--register"],
                           capture_output=True, text=True, cwd=tmp_path, env=env)
    assert train.returncode == 0, train.stderr[-2000:]
    later = int((lines.drop_duplicates("order_id")["order_ts"] >= "2026-01-01").sum())
    assert f"warning: ignored {later:,} orders after --cutoff {LAST_DAY}" in train.stderr
    stdout = " ".join(train.stdout.split())
    assert "model column empty: BTYD-only:" in stdout  # the split, 90 days earlier, is too young for LightGBM
    assert f"model at {LAST_DAY}: " in stdout and "registered version 1 as champion" in stdout
    assert "BG/NBD at 2025-10-02: no measurable drop-out yet" in stdout

    out = tmp_path / "scores.parquet"
    score = subprocess.run([exe, "score", "--orders", str(path), "--as-of", LAST_DAY, "--out", str(out)],
                           capture_output=True, text=True, cwd=tmp_path, env=env)
    assert score.returncode == 0, score.stderr[-2000:]
    scores = pd.read_parquet(out)
    assert_score_contract(scores)
    assert (scores["model_version"] == "1").all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlruns", "scores.features.parquet", "scores.parquet",
                                                          "young.parquet"]
