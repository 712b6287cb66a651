"""The composite model: leakage guard, timing quantiles, the score contract, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from features.pipeline import build_features, build_labels
from known_models import known_repurchase_model
from training.model import SCORE_COLUMNS, LeakageError, RepurchaseModel, assert_no_leakage, quantiles_from_cdf


def test_quantiles_from_cdf_by_hand():
    grid = np.array([10.0, 20.0, 30.0])
    cdf = np.array(
        [
            [0.2, 0.6, 0.95],  # p10 at 5, p50 at 17.5, p90 at 28.57
            [0.05, 0.1, 0.3],  # p10 exactly at 20, never reaches 0.5
            [0.0, 0.0, 0.0],  # never orders within the grid
        ]
    )
    q = quantiles_from_cdf(grid, cdf)
    np.testing.assert_allclose(q[0], [5.0, 17.5, 20 + 10 * (0.9 - 0.6) / 0.35])
    assert q[1, 0] == pytest.approx(20.0)
    assert np.isnan(q[1, 1]) and np.isnan(q[1, 2])
    assert np.isnan(q[2]).all()


def test_leaked_label_fails_the_guard(synth_orders):
    cutoff, horizon = pd.Timestamp("2025-03-31"), 60
    frame = build_features(synth_orders, cutoff).merge(build_labels(synth_orders, cutoff, horizon), on="customer_id")
    honest = ["frequency", "recency", "T", "days_since_last", "orders_90d"]
    assert_no_leakage(frame, honest)
    # A classic leak: a count taken at a later date than the cutoff.
    later = build_features(synth_orders, cutoff + pd.Timedelta(days=horizon))[["customer_id", "n_orders"]]
    frame = frame.merge(later.rename(columns={"n_orders": "n_orders_later"}), on="customer_id")
    frame["orders_since"] = frame["n_orders_later"] - frame["n_orders"]
    with pytest.raises(LeakageError, match="feature 'orders_since' alone predicts label_repurchase"):
        assert_no_leakage(frame, honest + ["orders_since"])
    with pytest.raises(LeakageError, match="features include label columns: label_orders"):
        assert_no_leakage(frame, honest + ["label_orders"])


def test_scores_follow_the_contract_and_hold_their_invariants(fitted_model, synth_orders):
    scores = fitted_model.score(synth_orders, "2025-09-30", model_version="7")
    assert list(scores.columns) == list(SCORE_COLUMNS)
    assert scores["customer_id"].is_unique
    for column in ("p_alive", "p_repurchase", "churn_risk"):
        assert scores[column].between(0, 1).all(), column
    np.testing.assert_allclose(scores["churn_risk"], 1 - scores["p_repurchase"])
    assert (scores[["expected_orders", "expected_revenue", "clv"]] >= 0).all().all()
    q = scores[["next_order_days_p10", "next_order_days_p50", "next_order_days_p90"]].to_numpy()
    both = np.isfinite(q[:, 0]) & np.isfinite(q[:, 1])
    assert (q[both, 0] <= q[both, 1]).all()
    # a quantile is given only when the horizon probability reaches it, and lies within the horizon
    assert (np.isnan(q[:, 1]) == (scores["p_repurchase"] < 0.5)).all()
    assert np.nanmax(q) <= 60
    assert (scores["model_version"] == "7").all()
    assert (scores["as_of"] == pd.Timestamp("2025-09-30")).all()
    assert set(scores["lifecycle_stage"]) <= {"new", "active", "at_risk", "lapsed", "churned"}


def test_customers_who_just_ordered_outrank_long_lapsed_ones(fitted_model, synth_orders):
    scores = fitted_model.score(synth_orders, "2025-09-30").set_index("customer_id")
    features = build_features(synth_orders, "2025-09-30").set_index("customer_id")
    recent = features.index[(features["days_since_last"] < 30) & (features["frequency"] >= 3)]
    lapsed = features.index[features["days_since_last"] > 400]
    assert scores.loc[recent, "p_repurchase"].mean() > 3 * scores.loc[lapsed, "p_repurchase"].mean()


def test_model_survives_pickling_with_identical_predictions(fitted_model, synth_orders):
    clone = pickle.loads(pickle.dumps(fitted_model))
    a = fitted_model.score(synth_orders, "2025-09-30")
    b = clone.score(synth_orders, "2025-09-30")
    pd.testing.assert_frame_equal(a, b)


def test_reason_codes_name_every_model_feature_largest_first(fitted_model, synth_orders):
    import re

    features = fitted_model.features(synth_orders, "2025-09-30").head(20)
    codes = fitted_model.reason_codes(features, top=len(fitted_model.spec_.model_features))
    assert len(codes) == 20
    for code in codes:
        parts = [re.fullmatch(r"(\w+)=(\S+) \(([+-]\d+\.\d\d)\)", part) for part in code.split("; ")]
        assert all(parts), code
        assert {p.group(1) for p in parts} == set(fitted_model.spec_.model_features)
        magnitudes = [abs(float(p.group(3))) for p in parts]
        assert magnitudes == sorted(magnitudes, reverse=True)


@pytest.mark.slow
def test_fit_reads_nothing_after_the_cutoff(synth_orders):
    from training.model import RepurchaseModel

    cutoff = pd.Timestamp("2025-03-31")
    later = synth_orders.copy()
    future = later[later["order_ts"] > cutoff + pd.Timedelta(days=1)].copy()
    future["amount"] = future["amount"] * 100  # wildly different future
    changed = pd.concat([synth_orders[synth_orders["order_ts"] < cutoff + pd.Timedelta(days=1)], future])
    params = dict(horizon_days=60, n_origins=3, step_days=30, max_rounds=50)
    a = RepurchaseModel(**params).fit(synth_orders, cutoff).score(synth_orders, cutoff)
    b = RepurchaseModel(**params).fit(changed, cutoff).score(changed, cutoff)
    pd.testing.assert_frame_equal(a, b)


def test_a_customer_scored_alone_gets_the_batch_scores(fitted_model, synth_orders):
    batch = fitted_model.score(synth_orders, "2025-09-30").set_index("customer_id")
    some = batch.index[[0, 7, 100, 1234]]
    for customer in some:
        alone = fitted_model.score(synth_orders[synth_orders["customer_id"] == customer], "2025-09-30")
        pd.testing.assert_frame_equal(alone.set_index("customer_id"), batch.loc[[customer]], check_exact=False, rtol=1e-12)


def test_reference_rfm_ranks_match_the_pipeline_on_the_training_population(fitted_model, synth_orders):
    """The model's RFM rank inputs at scoring time (against 1,001 quantiles of the training
    population) approximate the ranks it was trained on (exact percentiles within the
    population). Inputs only: the RFM scores the rows carry agree with the snapshot exactly
    (tests/test_agree.py)."""
    from training.model import rfm_ranks

    features = build_features(synth_orders, fitted_model.spec_.training_cutoff)
    ranks = rfm_ranks(features, fitted_model.spec_.rfm_reference)
    for letter in "rfm":
        agree = (ranks[letter] == features[f"rfm_rank_{letter}"].to_numpy()).mean()
        assert agree > 0.97, (letter, agree)  # 1,001 reference quantiles, not every customer


def test_the_booster_can_learn_without_the_btyd_start(synth_orders):
    model = known_repurchase_model(synth_orders, "2025-06-30", boost_from_btyd=False)
    scores = model.score(synth_orders, "2025-09-30")
    assert scores["p_repurchase"].between(0, 1).all() and scores["p_repurchase"].std() > 0.05
    assert (scores["expected_revenue"] >= 0).all()


def test_explained_scores_carry_reason_codes_into_the_audiences(fitted_model, synth_orders, tmp_path):
    from features.orders import load_order_log
    from serving.batch import score_log
    from serving.targeting import apply_rules, load_rules, write_audiences
    from training.contract import SCORE_COLUMNS

    source = tmp_path / "orders.parquet"
    synth_orders[synth_orders["customer_id"].isin(synth_orders["customer_id"].unique()[:300])].to_parquet(source, index=False)
    run = score_log(fitted_model, load_order_log(source), pd.Timestamp("2025-09-30"), tmp_path / "s.parquet", explain=True)
    scores = pd.read_parquet(run.scores_path)
    assert list(scores.columns) == [*SCORE_COLUMNS, "reason_codes"]
    features = pd.read_parquet(run.snapshot_path).drop(columns="as_of")
    assert scores["reason_codes"].tolist() == fitted_model.reason_codes(features)
    targeted = apply_rules(scores, load_rules(), features=features)
    write_audiences(targeted, tmp_path / "aud")
    acted = targeted[targeted["action"].notna()]
    first = pd.read_csv(tmp_path / "aud" / f"{acted['action'].iloc[0]}.csv")
    assert first["reason_codes"].str.contains(r"=\S+ \([+-]\d").all()


# --------------------------------------------------------------------------- the recipe


NEW_HYPERPARAMETERS = ("feature_fraction", "bagging_fraction", "bagging_freq", "lambda_l2", "max_bin",
                       "tweedie_variance_power", "num_threads", "min_origin_repeat_buyers", "min_gamma_gamma_customers")


def test_every_lightgbm_setting_comes_from_get_params(fitted_model):
    """The champion's recipe rebuilt from get_params is complete: each booster's settings are hyperparameters."""
    from sklearn.base import clone

    from training.boosting import available_threads

    params = fitted_model.get_params()
    assert set(NEW_HYPERPARAMETERS) <= set(params)
    boosters = (fitted_model.classifier_, fitted_model.orders_model_, fitted_model.revenue_model_, fitted_model.timing_model_)
    for booster in boosters:
        used = booster.params
        for name in ("num_leaves", "min_child_samples", "feature_fraction", "bagging_fraction",
                     "bagging_freq", "lambda_l2", "max_bin"):
            assert used[name] == params[name], name
        assert used["learning_rate"] == fitted_model.learning_rate_
        assert used["seed"] == params["random_state"]
        assert used["num_threads"] == available_threads()  # num_threads=None: the cores this process has
    assert fitted_model.revenue_model_.params["tweedie_variance_power"] == params["tweedie_variance_power"]
    assert fitted_model.learning_rate_ in (params["learning_rate"], params["small_data_learning_rate"])
    again = clone(fitted_model)
    assert again.get_params() == params and not hasattr(again, "classifier_")
    assert again.set_params(num_threads=1, lambda_l2=2.0).get_params()["lambda_l2"] == 2.0


def test_a_model_pickled_before_the_hyperparameters_loads_with_the_old_settings(fitted_model, synth_orders):
    """Older pickles lack the new hyperparameters: they load with the defaults (the old hard-coded values)."""
    from training.model import RepurchaseModel

    old = pickle.loads(pickle.dumps(fitted_model))
    for name in NEW_HYPERPARAMETERS:
        delattr(old, name)
    old = pickle.loads(pickle.dumps(old))
    defaults = RepurchaseModel().get_params()
    assert {name: old.get_params()[name] for name in NEW_HYPERPARAMETERS} == {n: defaults[n] for n in NEW_HYPERPARAMETERS}
    assert old.get_params()["feature_fraction"] == 0.8 and old.get_params()["tweedie_variance_power"] == 1.5
    pd.testing.assert_frame_equal(old.score(synth_orders, "2025-09-30"), fitted_model.score(synth_orders, "2025-09-30"))


def test_the_named_methods_take_a_frame_or_the_scoring_arrays_alike(fitted_model, synth_orders):
    """score_features passes the named methods arrays; given the with_btyd frame they answer the same."""
    features = fitted_model.point_in_time_features(synth_orders, "2025-09-30")
    frame, arrays = fitted_model.with_btyd(features), fitted_model._scoring_inputs(features)
    p = fitted_model.p_repurchase(frame)
    np.testing.assert_array_equal(fitted_model.p_repurchase(arrays), p)
    for method in ("expected_orders", "expected_revenue", "clv"):
        np.testing.assert_array_equal(getattr(fitted_model, method)(arrays), getattr(fitted_model, method)(frame), err_msg=method)
    np.testing.assert_array_equal(fitted_model.next_order_quantiles(arrays, p), fitted_model.next_order_quantiles(frame))
    np.testing.assert_array_equal(fitted_model.p_alive(arrays, p), fitted_model.p_alive(frame))
    cdf = fitted_model.next_order_cdf(frame, p)
    reachable = p >= 0.1
    np.testing.assert_array_equal(fitted_model.next_order_quantiles(frame, p)[reachable],
                                  quantiles_from_cdf(fitted_model.timing_grid_, cdf[reachable]))


@pytest.mark.slow
def test_the_model_gives_the_same_scores_at_one_thread_and_two(synth_orders):
    from training.model import RepurchaseModel

    params = dict(horizon_days=60, n_origins=3, max_rounds=60)
    one, two = (RepurchaseModel(**params, num_threads=t).fit(synth_orders, "2025-06-30") for t in (1, 2))
    assert one.classifier_.params["num_threads"] == 1 and two.classifier_.params["num_threads"] == 2
    pd.testing.assert_frame_equal(one.score(synth_orders, "2025-09-30"), two.score(synth_orders, "2025-09-30"), check_exact=True)


def test_small_training_frames_learn_in_smaller_steps():
    """A young shop's few thousand rows: a lower rate and a round cap raised by the same factor."""
    from training.model import boosting_pace

    assert boosting_pace(10_000, 0.1, 400, 50_000, 0.03) == (0.03, 1334)
    assert boosting_pace(50_000, 0.1, 400, 50_000, 0.03) == (0.1, 400)
    assert boosting_pace(10_000, 0.02, 400, 50_000, 0.03) == (0.02, 400)  # never speeds a slower rate up


def test_a_small_data_calibrator_weighs_recency_beside_the_booster(synth_orders):
    """Below small_data_rows the calibrator reads log(1 + days since the last order) too."""
    # what a real fit learns (the session's fitted_model has short boosters and no small-data settings)
    fitted_model = RepurchaseModel(horizon_days=60, n_origins=4, step_days=30).fit(synth_orders, "2025-06-30")
    assert fitted_model.recency_in_calibration_  # 3,000 customers: far below small_data_rows
    score_weight, recency_weight = fitted_model.calibrator_.coef_.ravel()
    assert score_weight > 0 and recency_weight < 0  # a higher score and a more recent order both raise p
    features = fitted_model.features(synth_orders, "2025-06-30").head(200)
    p = fitted_model.p_repurchase(features)
    # A model pickled before the recency term read the raw score alone: it still loads and scores.
    import pickle

    old = pickle.loads(pickle.dumps(fitted_model))
    del old.recency_in_calibration_
    old.calibrator_ = old.calibrator_.fit(np.column_stack([np.zeros(4), np.arange(4)])[:, :1], [0, 0, 1, 1])
    assert np.isfinite(old.p_repurchase(features)).all() and not np.allclose(old.p_repurchase(features), p)
