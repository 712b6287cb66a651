"""Product-level replenishment: pair features, shrinkage, quantiles, leakage, backtest and CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from features.replenish import NoCategoriesError, build_pair_features, build_pair_labels, pair_lines
from serving.cli import app
from training.replenish import (
    OUTPUT_COLUMNS,
    ReplenishmentModel,
    baseline_quantiles,
    cycle_cdf,
    cycle_model,
    truncated_quantiles,
)

runner = CliRunner()


def lines_of(rows) -> pd.DataFrame:
    """Order lines from (customer, day, category, quantity) tuples."""
    frame = pd.DataFrame(rows, columns=["customer_id", "order_ts", "category", "quantity"])
    frame["order_ts"] = pd.to_datetime(frame["order_ts"], format="mixed")
    frame["amount"] = 10.0 * frame["quantity"]
    return frame


def regular_buyers(n: int, cycle: float, start="2024-01-01", purchases: int = 6, category="filter", seed: int = 0):
    """``n`` customers buying one unit every ~``cycle`` days (lognormal noise), for a category prior."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        day = pd.Timestamp(start) + pd.Timedelta(days=int(rng.integers(0, 30)))
        own = cycle * rng.lognormal(0.0, 0.15)
        for _ in range(purchases):
            rows.append((f"{category}{i:04d}", day, category, 1.0))
            day += pd.Timedelta(days=max(1, round(own * rng.lognormal(0.0, 0.1))))
    return rows


# --------------------------------------------------------------------------- pair features


def test_pair_features_by_hand():
    lines = lines_of(
        [
            ("a", "2025-01-01 09:00", "coffee", 1),
            ("a", "2025-01-01 18:00", "coffee", 1),  # same day: one purchase day with 2 units
            ("a", "2025-02-10", "coffee", 1),
            ("a", "2025-03-02", "coffee", 3),
            ("a", "2025-03-05", "tea", 1),
            ("a", "2025-04-10", "coffee", 1),  # after the cutoff: invisible
            ("b", "2025-02-01", "coffee", 2),
        ]
    )
    pairs = build_pair_features(lines, "2025-03-31").set_index(["customer_id", "category"])
    coffee = pairs.loc[("a", "coffee")]
    assert coffee["n_purchases"] == 3
    assert coffee["units_total"] == 6
    assert coffee["last_units"] == 3
    assert coffee["days_since_last"] == 29
    assert coffee["tenure_days"] == 89
    assert coffee["n_gaps"] == 2
    assert coffee["last_gap"] == 20
    assert coffee["gap_mean"] == pytest.approx(30.0)
    # per-unit log gaps: 40 days after 2 units, 20 days after 1 unit
    assert coffee["log_rate_sum"] == pytest.approx(np.log(20.0) + np.log(20.0))
    assert coffee["log_rate_last"] == pytest.approx(np.log(20.0))
    assert pairs.loc[("a", "tea"), "n_purchases"] == 1 and np.isnan(pairs.loc[("a", "tea"), "last_gap"])
    assert pairs.loc[("b", "coffee"), "last_units"] == 2
    # the category's population cycle: gaps 40 and 20 days
    assert coffee["category_gaps"] == 2 and coffee["category_gap_p50"] == pytest.approx(30.0)


def test_labels_come_from_the_future_only():
    lines = lines_of([("a", "2025-03-01", "coffee", 1), ("a", "2025-03-20", "coffee", 1), ("a", "2025-05-01", "coffee", 1)])
    labels = build_pair_labels(lines, "2025-03-10", 30).set_index(["customer_id", "category"])
    assert labels.loc[("a", "coffee"), "label_days"] == 10  # 2025-03-20; 2025-05-01 is past the horizon


def test_features_at_a_cutoff_ignore_later_lines(synth_lines):
    cutoff = "2025-03-31"
    before = synth_lines[synth_lines["order_ts"] < pd.Timestamp(cutoff) + pd.Timedelta(days=1)]
    pd.testing.assert_frame_equal(build_pair_features(before, cutoff), build_pair_features(synth_lines, cutoff))


def test_a_log_without_categories_is_refused_in_one_line():
    lines = lines_of([("a", "2025-01-01", "x", 1)]).drop(columns="category")
    with pytest.raises(NoCategoriesError, match="no 'category' or 'product_id' column"):
        pair_lines(lines)


def test_product_id_stands_in_for_a_missing_category():
    lines = lines_of([("a", "2025-01-01", "x", 1), ("a", "2025-01-21", "x", 1)]).drop(columns="category")
    lines["product_id"] = ["sku-1", "sku-1"]
    pairs = build_pair_features(lines, "2025-02-01")
    assert pairs["category"].tolist() == ["sku-1"] and pairs["last_gap"].tolist() == [20.0]


# --------------------------------------------------------------------------- shrinkage


@pytest.fixture(scope="module")
def shrinkage_pairs():
    rows = regular_buyers(200, cycle=30.0)
    # one purchase only: should get the category's cycle
    rows.append(("once", pd.Timestamp("2024-06-01"), "filter", 1.0))
    # twelve very regular purchases every 60 days: should keep its own cycle
    rows += [("steady", pd.Timestamp("2023-01-01") + pd.Timedelta(days=60 * k), "filter", 1.0) for k in range(12)]
    # the same history as "steady" but two units on the last purchase
    rows += [("double", pd.Timestamp("2023-01-01") + pd.Timedelta(days=60 * k), "filter", 2.0 if k == 11 else 1.0)
             for k in range(12)]
    pairs = build_pair_features(lines_of(rows), "2024-12-31")
    return pd.concat([pairs, cycle_model(pairs)], axis=1).set_index("customer_id")


def test_one_purchase_gets_the_category_cycle(shrinkage_pairs):
    once = shrinkage_pairs.loc["once"]
    assert once["shrink_weight"] == 0.0
    assert once["cycle_location"] == pytest.approx(once["category_mu"])
    assert 25 < once["cycle_days"] < 36  # the category's buyers cycle every ~30 days


def test_many_regular_purchases_keep_their_own_cycle(shrinkage_pairs):
    steady = shrinkage_pairs.loc["steady"]
    assert steady["shrink_weight"] > 0.9
    assert 55 < steady["cycle_days"] < 61  # own 60 days, barely pulled toward the category's 30


def test_units_bought_last_stretch_the_cycle(shrinkage_pairs):
    steady, double = shrinkage_pairs.loc["steady"], shrinkage_pairs.loc["double"]
    assert double["cycle_days"] == pytest.approx(2 * steady["cycle_days"], rel=1e-9)


def test_more_purchases_move_the_estimate_toward_the_own_cycle():
    rows = regular_buyers(200, cycle=30.0)
    weights = []
    for n in (2, 4, 8):
        rows_n = rows + [(f"own{n}", pd.Timestamp("2022-01-01") + pd.Timedelta(days=60 * k), "filter", 1.0) for k in range(n)]
        pairs = build_pair_features(lines_of(rows_n), "2024-12-31")
        pairs = pd.concat([pairs, cycle_model(pairs)], axis=1).set_index("customer_id")
        weights.append(pairs.loc[f"own{n}", "shrink_weight"])
    assert weights[0] < weights[1] < weights[2]


# --------------------------------------------------------------------------- distributions


@settings(max_examples=200, deadline=None)
@given(
    location=st.floats(1.0, 6.0),
    scale=st.floats(0.05, 1.5),
    since=st.floats(0.0, 500.0),
    horizon=st.integers(7, 365),
)
def test_quantiles_are_ordered_within_the_horizon_and_match_the_cdf(location, scale, since, horizon):
    q = truncated_quantiles(np.array([location]), np.array([scale]), np.array([since]), horizon)[0]
    assert 0.0 <= q[0] <= q[1] <= q[2] <= horizon
    within = cycle_cdf(location, scale, since, horizon)[0, 0]
    if within > 1e-6:
        at = cycle_cdf(location, scale, since, q)[0] / within
        np.testing.assert_allclose(at, [0.1, 0.5, 0.9], atol=2e-3)


def test_cycle_cdf_is_monotone_and_conditions_on_the_days_since():
    grid = np.arange(1, 91)
    fresh = cycle_cdf(np.log(30.0), 0.2, 0.0, grid)[0]
    assert np.all(np.diff(fresh) >= 0) and 0.4 < fresh[29] < 0.6
    due = cycle_cdf(np.log(30.0), 0.2, 25.0, grid)[0]
    assert due[9] > fresh[9]  # 25 days in, the next 10 days hold most of the mass


def test_baselines_by_hand():
    pairs = pd.DataFrame(
        {
            "last_gap": [20.0, np.nan],
            "days_since_last": [5.0, 10.0],
            "category_gap_p10": [10.0, 10.0],
            "category_gap_p50": [30.0, 30.0],
            "category_gap_p90": [60.0, 60.0],
        }
    )
    own, _ = baseline_quantiles(pairs, 90, own=True)
    np.testing.assert_allclose(own, [[20 / 3 - 5, 15.0, 35.0], [0.0, 20.0, 50.0]])
    category, score = baseline_quantiles(pairs, 90, own=False)
    np.testing.assert_allclose(category[:, 1], [25.0, 20.0])
    assert score.shape == (2,)


# --------------------------------------------------------------------------- the model


@pytest.fixture(scope="session")
def synth_lines():
    from features.synth import generate_order_log

    return generate_order_log(3000, seed=7)


@pytest.fixture(scope="session")
def replenishment_model(synth_lines):
    past = synth_lines[synth_lines["order_ts"] < pd.Timestamp("2025-07-01")]
    return ReplenishmentModel(horizon_days=60, max_rounds=150).fit(past, "2025-06-30")


def test_predictions_follow_the_contract(replenishment_model, synth_lines):
    out = replenishment_model.predict(synth_lines[synth_lines["order_ts"] < pd.Timestamp("2025-07-01")], "2025-06-30")
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    q = out[["next_purchase_days_p10", "next_purchase_days_p50", "next_purchase_days_p90"]].to_numpy()
    assert np.all(q[:, 0] <= q[:, 1]) and np.all(q[:, 1] <= q[:, 2]) and q.min() >= 0 and q.max() <= 60
    assert out["p_within_horizon"].between(0, 1).all()
    assert set(out["basis"]) == {"own", "category"}
    assert (out["remind_on"] >= out["as_of"]).all()
    lead = (out["as_of"] + pd.to_timedelta(np.maximum(np.round(out["next_purchase_days_p50"]) - 7, 0), unit="D"))
    assert (out["remind_on"] == lead).all()
    assert (out["last_purchase"] <= out["as_of"]).all()


def test_later_lines_change_nothing(replenishment_model, synth_lines):
    past = synth_lines[synth_lines["order_ts"] < pd.Timestamp("2025-07-01")]
    refit = ReplenishmentModel(horizon_days=60, max_rounds=150).fit(synth_lines, "2025-06-30")
    pd.testing.assert_frame_equal(replenishment_model.predict(past, "2025-06-30"), refit.predict(synth_lines, "2025-06-30"))


def test_cdf_is_monotone_and_tops_out_at_p_within(replenishment_model, synth_lines):
    from training.replenish import pair_frame

    pairs = pair_frame(synth_lines, "2025-06-30").head(500)
    cdf = replenishment_model.purchase_cdf(pairs, np.arange(1, 61))
    assert np.all(np.diff(cdf, axis=1) >= -1e-12)
    np.testing.assert_allclose(cdf[:, -1], replenishment_model.p_within_horizon(pairs), rtol=1e-9)


def test_a_model_pickled_when_random_state_was_seed_loads_and_predicts_alike(replenishment_model, synth_lines):
    """Older pickles call the seed ``seed`` and lack the hyperparameters that were hard-coded: they load."""
    import pickle

    old = pickle.loads(pickle.dumps(replenishment_model))
    old.seed = old.random_state + 5
    for name in ("random_state", "min_child_samples", "feature_fraction", "max_bin", "num_threads", "min_timing_pairs"):
        delattr(old, name)
    old = pickle.loads(pickle.dumps(old))
    params = old.get_params()
    assert params["random_state"] == replenishment_model.random_state + 5 and not hasattr(old, "seed")
    assert (params["min_child_samples"], params["feature_fraction"], params["max_bin"]) == (50, 0.9, 63)
    assert replenishment_model.booster_.params["min_child_samples"] == params["min_child_samples"]
    past = synth_lines[synth_lines["order_ts"] < pd.Timestamp("2025-07-01")]
    pd.testing.assert_frame_equal(old.predict(past, "2025-06-30"), replenishment_model.predict(past, "2025-06-30"))


def test_too_little_history_is_a_clear_error(synth_lines):
    from training.replenish import ReplenishmentDataError

    with pytest.raises(ReplenishmentDataError, match="too few .customer, category. pairs to learn replenishment from"):
        ReplenishmentModel(horizon_days=90).fit(synth_lines, "2023-03-01")


@pytest.fixture(scope="module")
def backtest_report(tmp_path_factory, synth_lines):
    """``repurchase backtest`` as a job on a log with categories: the JSON it writes."""
    import json

    from features.orders import load_order_log
    from training.jobs import backtest_job

    folder = tmp_path_factory.mktemp("backtest")
    synth_lines.to_parquet(folder / "lines.parquet", index=False)
    log = load_order_log(folder / "lines.parquet")
    backtest_job(log, pd.Timestamp("2025-06-30"), 60, folder / "bt.json", model_params={"max_rounds": 40},
                 log_to_mlflow=False)
    return json.loads((folder / "bt.json").read_text())


def test_backtest_json_has_the_replenishment_block(backtest_report):
    block = backtest_report["replenishment"]
    assert block["cutoff"] == "2025-06-30" and block["horizon_days"] == 60
    for name in ("model", "own_last_gap", "category_median"):
        assert {"auc", "p50_mae_days", "coverage_p10_p90"} <= set(block[name])


def test_backtest_beats_both_baselines(backtest_report):
    block = backtest_report["replenishment"]
    model, own, category = block["model"], block["own_last_gap"], block["category_median"]
    assert block["n_pairs"] > 5000 and 0.05 < block["base_rate"] < 0.5
    assert model["p50_mae_days"] < 0.85 * min(own["p50_mae_days"], category["p50_mae_days"])
    assert model["auc"] > max(own["auc"], category["auc"])
    assert 0.65 < model["coverage_p10_p90"] < 0.95
    assert block["p50_mae_vs_best_baseline"] < -0.15


# --------------------------------------------------------------------------- CLI


def test_replenish_command_writes_the_contract(tmp_path, synth_lines, mlflow_store):
    source = tmp_path / "lines.parquet"
    synth_lines.to_parquet(source, index=False)
    out = tmp_path / "replenishment.parquet"
    result = runner.invoke(app, ["replenish", "--orders", str(source), "--as-of", "2025-06-30", "--horizon-days", "60",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert list(frame.columns) == list(OUTPUT_COLUMNS)
    assert "ignored" in result.output  # lines after --as-of are counted
    import mlflow

    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.data.params["job"] == "replenish" and run.data.params["horizon_days"] == "60"
    assert run.data.metrics["pairs"] == len(frame) and run.data.metrics["timing_scale"] > 0

    scores = tmp_path / "scores.parquet"
    _scores_for(frame).to_parquet(scores, index=False)
    target = runner.invoke(app, ["target", "--scores", str(scores), "--replenishment", str(out), "--out", str(tmp_path / "aud")])
    assert target.exit_code == 0, target.output
    reminders = pd.read_csv(tmp_path / "aud" / "replenishment_reminder.csv")
    assert len(reminders) > 0 and reminders["reason"].str.match(r"bought \S+ every \d+ days; last \d+ days ago").all()


def _scores_for(replenishment: pd.DataFrame) -> pd.DataFrame:
    """A plain score file for the customers in a replenishment frame (nobody VIP, all active)."""
    from training.contract import SCORE_COLUMNS, SCORE_DTYPES

    ids = replenishment["customer_id"].unique()
    n = len(ids)
    frame = pd.DataFrame(
        {
            "customer_id": ids,
            "as_of": replenishment["as_of"].iloc[0],
            "horizon_days": 60,
            "p_alive": 0.9,
            "p_repurchase": 0.5,
            "expected_orders": 1.0,
            "expected_revenue": 50.0,
            "clv": np.linspace(1, 100, n),
            "next_order_days_p10": 5.0,
            "next_order_days_p50": 30.0,
            "next_order_days_p90": 55.0,
            "churn_risk": 0.5,
            "rfm_r": 4,
            "rfm_f": 4,
            "rfm_m": 3,
            "rfm_segment": "loyal",
            "lifecycle_stage": "active",
            "model_version": "test",
        }
    )
    return frame[list(SCORE_COLUMNS)].astype(SCORE_DTYPES)


def test_replenish_on_a_log_without_categories_exits_2(tmp_path, mlflow_store):
    result = runner.invoke(app, ["replenish", "--orders", "cdnow-sample", "--as-of", "1997-09-30", "--out", str(tmp_path / "r.parquet")])
    assert result.exit_code == 2
    assert "no 'category' or 'product_id'" in result.output
    assert not (tmp_path / "r.parquet").exists()
