"""Seasons: the training origin a year before the cutoff, calibration on it, and the
calibration-by-origin table in the backtest JSON and the report."""

from __future__ import annotations

import datetime as dt
import json
import pickle

import numpy as np
import pandas as pd
import pytest

from training.backtest import run_backtest, write_report
from training.model import (
    MIN_ORIGIN_HISTORY_DAYS,
    SEASON_DAYS,
    RepurchaseModel,
    season_origin,
    training_origins,
)

FIRST = dt.date(2024, 1, 1)
# A horizon that holds 11.11 (Singles' Day) on the synthetic log, while the latest training
# origin's label window (October) holds no peak.
PEAK_CUTOFF, PEAK_HORIZON = "2025-10-31", 30


@pytest.fixture(scope="module")
def peak_orders():
    """5,000 synthetic customers over 2023-2025 (orders, lines merged)."""
    from features.orders import merge_order_lines
    from features.synth import generate_order_log

    return merge_order_lines(generate_order_log(5000, seed=3))


# --------------------------------------------------------------------------- the origin


@pytest.mark.parametrize("horizon_days", [30, 90, 180])
def test_the_season_origin_joins_exactly_when_the_history_reaches_it(horizon_days):
    reaches = FIRST + dt.timedelta(days=MIN_ORIGIN_HISTORY_DAYS + SEASON_DAYS)  # first cutoff with room for it
    for cutoff, expected in ((reaches - dt.timedelta(days=1), None), (reaches, FIRST + dt.timedelta(days=30)),
                             (reaches + dt.timedelta(days=100), FIRST + dt.timedelta(days=130))):
        assert season_origin(FIRST, cutoff, horizon_days) == expected
        plain = training_origins(FIRST, cutoff, horizon_days)
        seasonal = training_origins(FIRST, cutoff, horizon_days, same_season=True)
        assert seasonal == sorted({*plain, *([expected] if expected else [])})
        if expected is not None:
            assert (cutoff - expected).days == SEASON_DAYS and expected.weekday() == cutoff.weekday()
        for origin in seasonal:  # no label window reaches past the cutoff: nothing leaks
            assert origin + dt.timedelta(days=horizon_days) <= cutoff
            assert origin >= FIRST + dt.timedelta(days=MIN_ORIGIN_HISTORY_DAYS)


def test_the_season_origin_never_reaches_past_the_cutoff_or_the_log():
    cutoff = dt.date(2026, 6, 30)
    assert season_origin(FIRST, cutoff, SEASON_DAYS) == cutoff - dt.timedelta(days=SEASON_DAYS)  # labels end at C
    assert season_origin(FIRST, cutoff, SEASON_DAYS + 1) is None  # they would end after it
    # A stale export: labels must end by the last order, not only by the cutoff.
    labels_end = cutoff - dt.timedelta(days=SEASON_DAYS - 60)
    assert season_origin(FIRST, cutoff, 60, labels_until=labels_end - dt.timedelta(days=1)) is None
    assert season_origin(FIRST, cutoff, 60, labels_until=labels_end) == cutoff - dt.timedelta(days=SEASON_DAYS)
    # Already among the regular origins (a step that lands on it): listed once.
    step = (SEASON_DAYS - 90) // 2
    origins = training_origins(FIRST, cutoff, 90, n_origins=3, step_days=step, same_season=True)
    assert origins == training_origins(FIRST, cutoff, 90, n_origins=3, step_days=step)
    assert cutoff - dt.timedelta(days=SEASON_DAYS) in origins and len(origins) == 3


# --------------------------------------------------------------------------- the model and its backtest


@pytest.fixture(scope="module")
def peak_backtests(peak_orders):
    """The same 11.11 split, with the season origin and without it."""
    return {
        same_season: run_backtest(peak_orders, PEAK_CUTOFF, PEAK_HORIZON,
                                  model_params={"n_origins": 4, "same_season": same_season})
        for same_season in (True, False)
    }


def test_the_model_learns_from_the_season_origin_and_not_after_the_cutoff(peak_backtests, peak_orders):
    model = peak_backtests[True].model
    season = (pd.Timestamp(PEAK_CUTOFF) - pd.Timedelta(days=SEASON_DAYS)).date().isoformat()
    assert model.season_origin_ == season and model.spec_.origins[0] == season
    assert len(model.spec_.origins) == 5  # four regular origins and the season one
    for origin in model.spec_.origins:  # every label window ends by the cutoff
        assert pd.Timestamp(origin) + pd.Timedelta(days=PEAK_HORIZON) <= pd.Timestamp(PEAK_CUTOFF)
    assert peak_backtests[False].model.season_origin_ is None and len(peak_backtests[False].model.spec_.origins) == 4
    # Orders after the cutoff change nothing (the season origin's labels end a year before it).
    later = peak_orders[peak_orders["order_ts"] <= pd.Timestamp(PEAK_CUTOFF) + pd.Timedelta(days=1)]
    again = RepurchaseModel(horizon_days=PEAK_HORIZON, n_origins=4).fit(later, PEAK_CUTOFF)
    features = model.point_in_time_features(peak_orders, PEAK_CUTOFF)
    np.testing.assert_allclose(again.score_features(features, PEAK_CUTOFF)["p_repurchase"],
                               model.score_features(features, PEAK_CUTOFF)["p_repurchase"])


def test_the_season_origin_brings_the_level_of_a_peak_horizon_closer(peak_backtests):
    """The latest origin's window (October) has no peak; the horizon (November) holds 11.11.
    Calibrated on last year's November as well, the mean probability comes nearer the truth."""
    gaps = {}
    for same_season, backtest in peak_backtests.items():
        frame = backtest.frame
        gaps[same_season] = abs(frame["model_p_repurchase"].mean() - frame["label_repurchase"].mean())
    assert gaps[True] < gaps[False] - 0.01, gaps  # measured: 0.031 without, 0.010 with
    eces = {same_season: backtest.report["model"]["ece"] for same_season, backtest in peak_backtests.items()}
    assert eces[True] < eces[False], eces
    aucs = [backtest.report["model"]["auc"] for backtest in peak_backtests.values()]
    assert abs(aucs[0] - aucs[1]) < 0.01  # the ranking is the booster's, about the same either way


def test_the_backtest_json_shows_calibration_by_origin(peak_backtests, tmp_path):
    backtest = peak_backtests[True]
    path = write_report(backtest.report, tmp_path / "backtest.json")
    rows = json.loads(path.read_text())["calibration_by_origin"]
    model = backtest.model
    assert [r["origin"] for r in rows] == [*model.spec_.origins, PEAK_CUTOFF]
    assert [r["role"] for r in rows] == ["season", "training", "training", "training", "latest", "backtest"]
    for row in rows:
        assert row["customers"] > 1000
        assert 0 < row["base_rate"] < 1 and 0 < row["mean_p_repurchase"] < 1 and 0 <= row["ece"] < 0.2
        assert row["calibration_gap"] == pytest.approx(row["mean_p_repurchase"] - row["base_rate"])
    last = rows[-1]
    frame = backtest.frame
    assert last["customers"] == backtest.report["n_customers"]
    assert last["base_rate"] == pytest.approx(backtest.report["base_rate"])
    assert last["ece"] == pytest.approx(backtest.report["model"]["ece"])
    assert last["mean_p_repurchase"] == pytest.approx(frame["model_p_repurchase"].mean())
    # The season origin's window held last year's 11.11: more bought again there than at the latest origin.
    by_role = {r["role"]: r for r in rows}
    assert by_role["season"]["base_rate"] > by_role["latest"]["base_rate"] + 0.02
    assert backtest.report["model"]["training"]["season_origin"] == by_role["season"]["origin"]


def test_a_split_without_a_year_of_history_has_no_season_row(peak_orders):
    backtest = run_backtest(peak_orders, "2023-12-31", 60, model_params={"n_origins": 3})
    rows = backtest.report["calibration_by_origin"]
    assert backtest.model.season_origin_ is None and "season" not in {r["role"] for r in rows}
    assert [r["role"] for r in rows] == ["training", "training", "latest", "backtest"]
    baselines_only = run_backtest(peak_orders, "2023-12-31", 60, with_model=False)
    assert baselines_only.report["calibration_by_origin"] is None


def test_a_model_pickled_before_seasons_still_loads_scores_and_backtests(peak_backtests, peak_orders):
    model = pickle.loads(pickle.dumps(peak_backtests[False].model))
    for name in ("same_season", "season_origin_", "origin_calibration_"):  # what older models lack
        delattr(model, name)
    old = pickle.loads(pickle.dumps(model))
    scores = old.score(peak_orders, PEAK_CUTOFF)
    assert scores["p_repurchase"].between(0, 1).all()
    assert old.get_params()["same_season"] is True  # retrained with today's default
    report = run_backtest(peak_orders, PEAK_CUTOFF, PEAK_HORIZON, fitted_model=old).report
    assert [r["role"] for r in report["calibration_by_origin"]] == ["backtest"]
    assert report["model"]["training"]["season_origin"] is None


def test_the_report_shows_calibration_by_origin(peak_backtests, peak_orders, tmp_path):
    from serving.report import render_report

    backtest = peak_backtests[True]
    scores = backtest.model.score(peak_orders, PEAK_CUTOFF)
    html = render_report(backtest.report, {}, scores, None, tmp_path / "report.html").read_text()
    assert "Calibration by origin" in html
    for row in backtest.report["calibration_by_origin"]:
        assert row["origin"] in html
    assert "same season a year earlier" in html and "backtest (the truth)" in html
