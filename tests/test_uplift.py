"""Uplift: the metrics by hand and against scikit-uplift's numbers, a training frame that cannot
leak, the split by time, uplift in scores / pyfunc / API, rules and the budget by uplift,
bad contacts for `train --uplift`, and (slow) the ranking against p_repurchase and random."""

from __future__ import annotations

import asyncio
import json
import pickle

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.contacts import validate_contacts
from features.common.errors import InputError
from features.pipeline import build_features
from score_rows import score_row, scores_frame
from serving.cli import app
from serving.targeting import RuleSet, RulesError, apply_rules
from training.contract import SCORE_COLUMNS, UPLIFT
from training.metrics import qini_auc, qini_curve, uplift_at_k
from training.uplift import (
    LAST_CHANNEL,
    RFM_SCORE_COLUMNS,
    SHRINK_CHANNEL_NON_BUYERS,
    SHRINK_NON_BUYERS,
    UpliftDataError,
    UpliftModel,
    campaign_split,
    channel_shares,
    feature_columns,
    persuaded_shares,
    uplift_frame,
    with_last_channel,
)

runner = CliRunner()
CUTOFF = "2025-06-30"  # the fitted_model fixture's training cutoff


# --------------------------------------------------------------------------- metrics


def test_uplift_at_k_and_the_qini_curve_by_hand():
    y = [1, 0, 1, 0, 1, 0]
    treated = [1, 1, 0, 0, 1, 0]
    score = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    # top half: two treated (1 buyer of 2) and one held out (1 of 1)
    assert uplift_at_k(y, treated, score, 0.5) == pytest.approx(0.5 - 1.0)
    # everyone: treated 2 of 3, held out 1 of 3
    assert uplift_at_k(y, treated, score, 1.0) == pytest.approx(2 / 3 - 1 / 3)
    assert uplift_at_k(y, treated, score, 0.3) is None  # the top two rows hold no held-out customer
    n, q = qini_curve(y, treated, score)
    # Y_t(n) - Y_h(n) N_t(n) / N_h(n) after each row (0 while nobody held out is in)
    assert n.tolist() == [0, 1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(q, [0, 1, 1, 1 - 2, 1 - 1, 2 - 1.5, 2 - 1])
    # tied scores enter together: one point at the end of the tie
    n_tied, q_tied = qini_curve(y, treated, [1, 1, 1, 0, 0, 0])
    assert n_tied.tolist() == [0, 3, 6] and q_tied.tolist() == [0, -1, 1]


def test_qini_is_one_for_the_perfect_ranking_and_zero_without_one():
    y = np.array([1, 0, 1, 0, 1, 0, 0, 1])
    treated = np.array([1, 1, 0, 0, 1, 0, 1, 0])
    perfect = np.where(treated == 1, y, -y)  # treated buyers first, held-out buyers last
    assert qini_auc(y, treated, perfect) == pytest.approx(1.0)
    assert qini_auc(y, treated, np.zeros(len(y))) == pytest.approx(0.0)  # one tie: the random line
    assert qini_auc(y, np.ones(len(y)), perfect) is None  # nobody held out: nothing to compare with


def test_metrics_equal_scikit_uplifts():
    """sklift 0.5.1 (``uplift_at_k(strategy="overall")``, ``qini_auc_score``) computed these on the same data."""
    rng = np.random.default_rng(0)
    n = 1000
    treated = (rng.random(n) < 0.7).astype(int)
    score = rng.random(n)
    y = (rng.random(n) < 0.2 + 0.3 * score * treated).astype(int)
    assert uplift_at_k(y, treated, score, 0.3) == pytest.approx(0.23961391113985772, abs=1e-12)
    assert qini_auc(y, treated, score) == pytest.approx(0.11402927788055316, abs=1e-12)
    assert qini_auc(y, treated, np.round(score, 1)) == pytest.approx(0.10895211590924128, abs=1e-12)  # with ties


# --------------------------------------------------------------------------- the frame cannot leak


ORDERS = pd.DataFrame(
    {
        "customer_id": ["a", "a", "a", "a", "a", "b", "b", "c"],
        "order_ts": pd.to_datetime(["2025-01-05 10:00", "2025-02-01 09:00", "2025-03-10 23:30",  # a: last on the day
                                    "2025-03-11 08:00", "2025-04-09 20:00",  # a: first and last day of the window
                                    "2025-02-20 12:00", "2025-04-10 09:00",  # b: the day after the window
                                    "2025-03-12 12:00"]),  # c: only after the contact
        "amount": [10.0, 20.0, 30.0, 40.0, 50.0, 15.0, 25.0, 5.0],
    }
)
CONTACTS = validate_contacts(pd.DataFrame({
    "customer_id": ["a", "b", "c"], "action": "win_back", "contacted_at": "2025-03-10",
    "group": ["treatment", "holdout", "treatment"],
}))


def test_features_are_those_of_the_log_cut_at_the_contact_and_outcomes_those_of_the_window():
    frame = uplift_frame(ORDERS, CONTACTS, window_days=30).set_index("customer_id")
    assert list(frame.index) == ["a", "b"] and frame.attrs["without_history"] == 1  # c had no order by then
    expected = build_features(ORDERS[ORDERS["order_ts"] < "2025-03-11"], "2025-03-10").set_index("customer_id")
    for column in expected.columns:
        assert frame[column].to_list() == pytest.approx(expected[column].to_list(), nan_ok=True), column
    assert frame.loc["a", "n_orders"] == 3  # the order late on the contact day is history, not outcome
    assert frame.loc["a", "total_spend"] == 60.0
    assert frame.loc[["a", "b"], "treated"].to_list() == [1, 0]
    # the window is the days 1 to 30 after the contact: both ends for a, the day after for b
    assert frame.loc["a", "orders"] == 2 and frame.loc["a", "bought"] == 1
    assert frame.loc["b", "orders"] == 0 and frame.loc["b", "bought"] == 0


def test_orders_after_the_contact_change_outcomes_never_features():
    later = pd.DataFrame({"customer_id": ["a", "b", "b"], "amount": [1e6, 1e6, 7.0],
                          "order_ts": pd.to_datetime(["2025-03-11 00:00", "2025-03-25 10:00", "2026-01-01 00:00"])})
    before = uplift_frame(ORDERS, CONTACTS, 30).set_index("customer_id")
    after = uplift_frame(pd.concat([ORDERS, later], ignore_index=True), CONTACTS, 30).set_index("customer_id")
    features = [c for c in before.columns if c not in ("treated", "bought", "orders")]
    pd.testing.assert_frame_equal(before[features], after[features])
    assert after.loc["b", "bought"] == 1 and after.loc["a", "orders"] == 3


def test_the_model_never_sees_population_ranks_nor_the_calendar():
    frame = uplift_frame(ORDERS, CONTACTS, 30)
    columns = feature_columns(pd.concat([frame, frame.assign(contacted_at=pd.Timestamp("2025-04-10"))]))
    assert not set(columns) & set(RFM_SCORE_COLUMNS)
    assert not {"cutoff_month", "cutoff_weekday", "days_to_next_sales_day"} & set(columns)
    assert {"n_orders", "days_since_last", "total_spend"} <= set(columns)


# --------------------------------------------------------------------------- the split by time


def contacts_frame(counts: dict[str, int], holdout_every: int = 4) -> pd.DataFrame:
    rows = []
    for day, n in counts.items():
        for i in range(n):
            rows.append({"customer_id": f"{day}-{i}", "action": "win_back", "contacted_at": pd.Timestamp(day),
                         "treated": int(i % holdout_every != 0), "bought": i % 3 == 0, "orders": i % 3 == 0})
    return pd.DataFrame(rows)


def test_the_latest_campaigns_are_held_out_and_nothing_learned_from_reaches_them():
    frame = contacts_frame({"2025-01-01": 400, "2025-02-01": 300, "2025-03-01": 200, "2025-03-20": 150, "2025-04-20": 250})
    learn, held_out = campaign_split(frame, window_days=30, eval_share=0.3)
    # from the latest back until at least 30% of 1,300: 250 (19%) is not enough, 250 + 150 (31%) is
    assert sorted(frame.loc[held_out, "contacted_at"].dt.strftime("%m-%d").unique()) == ["03-20", "04-20"]
    assert not (learn & held_out).any()
    first_held = frame.loc[held_out, "contacted_at"].min()
    assert (frame.loc[learn, "contacted_at"] + pd.Timedelta(days=30) <= first_held).all()
    assert sorted(frame.loc[learn, "contacted_at"].dt.strftime("%m-%d").unique()) == ["01-01", "02-01"]  # 03-01's window is not over


def test_a_split_needs_two_campaigns_and_enough_of_both_groups():
    with pytest.raises(UpliftDataError, match="1 campaign date; evaluating an uplift model needs two or more"):
        campaign_split(contacts_frame({"2025-01-01": 500}), 30)
    with pytest.raises(UpliftDataError, match="499 treated and 1 held-out customers; an uplift model needs 30 of each"):
        campaign_split(contacts_frame({"2025-01-01": 500, "2025-03-01": 500}, holdout_every=10**6), 30)


# --------------------------------------------------------------------------- the learner


def test_the_persuaded_share_by_hand_and_shrunk_towards_the_pooled_one():
    actions = np.array(["a"] * 4 + ["b"] * 2)
    no_order_if_sent = np.array([0.9, 0.9, 0.6, 0.6, 0.5, 0.5])  # 1 - mu1 of each held-out contact
    no_order = np.array([1, 1, 1, 1, 1, 0])
    pooled = 4.0 / 5.0
    k = SHRINK_NON_BUYERS
    shares = persuaded_shares(actions, no_order_if_sent, no_order)
    assert shares["a"] == pytest.approx(1 - (3.0 + k * pooled) / (4 + k))
    assert shares["b"] == pytest.approx(1 - (1.0 + k * pooled) / (1 + k))
    # with many held-out contacts an action's own ratio wins: 1 - 0.7 / 1 = 0.3
    many = persuaded_shares(np.array(["a"] * 10_000), np.full(10_000, 0.7), np.ones(10_000))
    assert many["a"] == pytest.approx(0.3, abs=1e-3)
    # nobody held out failed to order: no evidence of persuasion, a share of at most 0
    assert persuaded_shares(np.array(["a", "a"]), np.array([0.2, 0.3]), np.zeros(2))["a"] <= 0


def simulated_frame(n: int, shares: dict[str, float], seed: int = 0) -> pd.DataFrame:
    """Contacts whose chance of ordering without a contact is sigmoid(x), and whose contact
    persuades a share of the non-buyers that depends on the action only."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.5, n)
    actions = np.array(list(shares))[rng.integers(0, len(shares), n)]
    treated = rng.random(n) >= 0.1
    without = rng.random(n) < 1 / (1 + np.exp(-x))
    persuaded = rng.random(n) < np.array([shares[a] for a in actions])
    bought = without | (treated & persuaded)
    return pd.DataFrame({"customer_id": [f"c{i}" for i in range(n)], "action": actions,
                         "contacted_at": pd.Timestamp("2025-03-01") + pd.to_timedelta(rng.integers(0, 3, n) * 28, "D"),
                         "group": np.where(treated, "treatment", "holdout"), "treated": treated.astype(np.int8),
                         "bought": bought.astype(np.int8), "orders": bought.astype(np.int64), "x": x})


def test_the_learner_recovers_each_actions_persuaded_share_and_ranks_by_it():
    shares = {"churn_warning": 0.05, "replenishment_reminder": 0.3}
    model = UpliftModel().fit(simulated_frame(40_000, shares))
    assert model.features_ == ["x", "action=churn_warning", "action=replenishment_reminder"]
    for action, share in shares.items():
        assert model.persuaded_share_[action] == pytest.approx(share, abs=0.04), action
    grid = pd.DataFrame({"x": np.linspace(-3, 3, 13)})
    low, high = model.uplift(grid, "churn_warning"), model.uplift(grid, "replenishment_reminder")
    true_high = shares["replenishment_reminder"] * (1 - 1 / (1 + np.exp(-grid["x"].to_numpy())))
    np.testing.assert_allclose(high, true_high, atol=0.05)
    assert (high > low).all() and high[0] > high[-1]  # those unlikely to order anyway gain the most
    scores = model.score_columns(grid)
    np.testing.assert_array_equal(scores["uplift"], np.maximum(low, high))


def test_the_boosted_holdout_model_and_models_pickled_before_the_share_still_score():
    frame = simulated_frame(5_000, {"win_back": 0.1})
    boosted = UpliftModel(holdout_model="boosted").fit(frame)
    assert boosted.persuaded_share_ is None and boosted.holdout_correction_ is not None
    assert np.isfinite(boosted.uplift(frame.head(50), "win_back")).all()
    state = {k: v for k, v in boosted.__dict__.items() if k not in ("holdout_model", "persuaded_share_")}
    old = pickle.loads(pickle.dumps(boosted))
    old.__dict__.clear()
    old.__setstate__(state)  # as a model pickled before the persuaded share existed
    assert old.holdout_model == "boosted"
    np.testing.assert_array_equal(old.uplift(frame.head(50), "win_back"), boosted.uplift(frame.head(50), "win_back"))
    with pytest.raises(InputError, match="holdout_model must be one of persuaded_share, boosted, got 'nope'"):
        UpliftModel(holdout_model="nope").fit(frame)


def test_the_last_channel_is_that_of_the_last_order_before_the_contact_and_later_orders_never_change_it():
    channels = ORDERS.assign(channel=["web", "app", "shop", "app", "app", "app", "web", "web"])
    frame = uplift_frame(channels, CONTACTS, 30).set_index("customer_id")
    # a: "shop" came on the contact's day itself (it may answer the contact), so "app" before it
    assert frame[LAST_CHANNEL].to_dict() == {"a": "app", "b": "app"}
    assert LAST_CHANNEL not in feature_columns(frame.reset_index())  # it picks a share, it is no model input
    later = pd.DataFrame({"customer_id": ["a", "b"], "amount": [9.0, 9.0], "channel": ["shop", "shop"],
                          "order_ts": pd.to_datetime(["2025-03-11 00:00", "2025-03-20 10:00"])})
    again = uplift_frame(pd.concat([channels, later], ignore_index=True), CONTACTS, 30).set_index("customer_id")
    assert again[LAST_CHANNEL].to_dict() == {"a": "app", "b": "app"}
    # scoring: the same cut, before the scoring date (a's two orders on 03-11 do not count)
    features = pd.DataFrame({"customer_id": ["a", "b", "c"]})
    scored = with_last_channel(features, pd.concat([channels, later], ignore_index=True), "2025-03-11")
    assert scored[LAST_CHANNEL].tolist()[:2] == ["shop", "app"] and pd.isna(scored[LAST_CHANNEL].iloc[2])
    assert LAST_CHANNEL not in uplift_frame(ORDERS, CONTACTS, 30).columns  # a log without channel: no column
    assert with_last_channel(features, ORDERS, "2025-03-11") is features


def test_the_share_per_action_and_channel_by_hand_shrunk_towards_the_actions():
    actions = np.array(["a"] * 5)
    channels = np.array(["x", "x", "y", "y", None], dtype=object)
    no_order_if_sent = np.array([0.9, 0.7, 0.6, 0.6, 0.5])
    no_order = np.array([1, 1, 1, 0, 1])
    k = 10.0
    cells = channel_shares(actions, channels, no_order_if_sent, no_order, {"a": 0.2}, k)
    assert set(cells["a"]) == {"x", "y"}  # a contact without a channel forms no cell
    assert cells["a"]["x"] == pytest.approx(1 - (1.6 + k * 0.8) / (2 + k))
    assert cells["a"]["y"] == pytest.approx(1 - (1.2 + k * 0.8) / (1 + k))
    # with no prior a cell is its own moments; a huge prior gives the action's share
    assert channel_shares(actions, channels, no_order_if_sent, no_order, {"a": 0.2}, 0)["a"]["x"] == pytest.approx(0.2)
    assert channel_shares(actions, channels, no_order_if_sent, no_order, {"a": 0.2}, 1e9)["a"]["y"] == pytest.approx(0.2)


def test_the_learner_uses_the_last_channel_and_a_log_without_it_scores_as_before():
    rng = np.random.default_rng(1)
    n = 40_000
    channel = np.where(rng.random(n) < 0.5, "community", "storefront")
    frame = simulated_frame(n, {"replenishment_reminder": 0.0}, seed=1).assign(**{LAST_CHANNEL: channel})
    # persuade by channel: 45% of the community's would-be non-buyers, 15% of the storefront's
    persuaded = rng.random(n) < np.where(channel == "community", 0.45, 0.15)
    frame["bought"] = (frame["bought"].astype(bool) | (frame["treated"].astype(bool) & persuaded)).astype(np.int8)
    model = UpliftModel().fit(frame)
    assert model.channel_prior == SHRINK_CHANNEL_NON_BUYERS
    cells = model.channel_share_["replenishment_reminder"]
    assert cells["community"] == pytest.approx(0.45, abs=0.05) and cells["storefront"] == pytest.approx(0.15, abs=0.05)
    grid = pd.DataFrame({"x": [0.0] * 4, LAST_CHANNEL: ["community", "storefront", None, "never_seen"]})
    lift = model.uplift(grid, "replenishment_reminder")
    assert lift[0] > 2 * lift[1] > 0
    action_only = model.uplift(grid.drop(columns=[LAST_CHANNEL]), "replenishment_reminder")
    np.testing.assert_allclose(lift[2:], action_only[2:])  # no or an unknown channel: the action's share
    # a log without channel: no column, hence exactly the one-share-per-action learner
    without = UpliftModel().fit(frame.drop(columns=[LAST_CHANNEL]))
    before = UpliftModel(channel_prior=None).fit(frame)
    assert without.channel_share_ is None and before.channel_share_ is None
    np.testing.assert_array_equal(without.uplift(frame.head(500), "replenishment_reminder"),
                                  before.uplift(frame.head(500), "replenishment_reminder"))
    # a model pickled before the channel share scores as it did
    state = {k: v for k, v in before.__dict__.items() if k not in ("channel_share_", "channel_prior")}
    old = pickle.loads(pickle.dumps(before))
    old.__dict__.clear()
    old.__setstate__(state)
    np.testing.assert_array_equal(old.uplift(frame.head(500), "replenishment_reminder"),
                                  before.uplift(frame.head(500), "replenishment_reminder"))


def test_scores_read_the_last_channel_from_the_log_before_the_scoring_date(uplift_model, synth_orders):
    assert uplift_model.uplift_.channel_share_  # the synthetic log has channels
    ids = synth_orders["customer_id"].unique()[:200]
    orders = synth_orders[synth_orders["customer_id"].isin(ids)]
    features = uplift_model.point_in_time_features(orders, CUTOFF)
    past = orders[orders["order_ts"] < pd.Timestamp(CUTOFF)]  # strictly before the scoring date
    expected = past.sort_values("order_ts", kind="mergesort").groupby("customer_id")["channel"].last()
    assert features[LAST_CHANNEL].tolist() == expected.reindex(features["customer_id"]).tolist()
    # a later order in another channel changes nothing as of the same date
    later = orders.groupby("customer_id").head(1).assign(order_ts=pd.Timestamp("2025-08-01"), channel="elsewhere")
    again = uplift_model.point_in_time_features(pd.concat([orders, later], ignore_index=True), CUTOFF)
    assert again[LAST_CHANNEL].tolist() == features[LAST_CHANNEL].tolist()
    action_only = pickle.loads(pickle.dumps(uplift_model.uplift_))
    action_only.channel_share_ = None  # the learner before the channel: one share per action
    scores = uplift_model.score_features(features, CUTOFF)["uplift_win_back"].to_numpy()
    assert not np.allclose(scores, action_only.uplift(features, "win_back"))  # the channel's share is used
    # the same log without channel: an empty column (the pyfunc's signature lists it), the
    # action's share (what scores were before the channel)
    plain = uplift_model.point_in_time_features(orders.drop(columns=["channel"]), CUTOFF)
    assert plain[LAST_CHANNEL].isna().all()
    np.testing.assert_array_equal(uplift_model.score_features(plain, CUTOFF)["uplift_win_back"],
                                  action_only.uplift(plain, "win_back"))


# --------------------------------------------------------------------------- uplift in the scores


def test_scores_carry_uplift_only_when_the_model_has_it(fitted_model, uplift_model, synth_orders):
    features = fitted_model.features(synth_orders, CUTOFF).head(300)
    plain = fitted_model.score_features(features, CUTOFF)
    assert not fitted_model.has_uplift() and list(plain.columns) == list(SCORE_COLUMNS)  # absent, not NaN
    scored = uplift_model.score_features(features, CUTOFF)
    assert list(scored.columns) == [*SCORE_COLUMNS, "uplift", "uplift_churn_warning", "uplift_win_back"]
    pd.testing.assert_frame_equal(scored[list(SCORE_COLUMNS)], plain)  # the contract's numbers are unchanged
    per_action = scored[["uplift_churn_warning", "uplift_win_back"]].to_numpy()
    assert np.isfinite(per_action).all() and (np.abs(per_action) <= 1).all()
    np.testing.assert_array_equal(scored[UPLIFT], per_action.max(axis=1))
    np.testing.assert_allclose(scored["uplift_win_back"], uplift_model.uplift_.uplift(features, "win_back"))
    one = uplift_model.score_features(features.iloc[[7]], CUTOFF)  # one customer alone: same answer
    np.testing.assert_allclose(one[UPLIFT], scored[UPLIFT].iloc[[7]])
    assert uplift_model.score_features(features.iloc[:0], CUTOFF).columns.tolist() == scored.columns.tolist()


def test_batch_scores_the_pyfunc_and_the_service_carry_uplift(uplift_model, synth_orders, tmp_path, mlflow_store,
                                                              monkeypatch):
    import mlflow

    from features.orders import load_order_log
    from serving.batch import score_log
    from training.registry import log_run

    path = tmp_path / "orders.parquet"
    synth_orders[synth_orders["customer_id"].isin(synth_orders["customer_id"].unique()[:200])].to_parquet(path)
    run = score_log(uplift_model, load_order_log(str(path)), pd.Timestamp(CUTOFF), tmp_path / "scores.parquet")
    written = pd.read_parquet(run.scores_path)
    assert list(written.columns) == uplift_model.score_columns() and written[UPLIFT].notna().all()

    features = uplift_model.features(synth_orders, CUTOFF).head(5)
    report = {"cutoff": CUTOFF, "horizon_days": 60, "n_customers": 3000, "model": {"auc": 0.7, "brier": 0.2}}
    logged = log_run(uplift_model, report, params={"test": 1}, example_features=features, register=True,
                     uplift_report={"rankings": {"uplift": {"uplift_at_30": 0.1, "qini_auc": None}}, "ratio_at_30": 1.7})
    loaded = mlflow.pyfunc.load_model(logged.model_uri)
    out = loaded.predict(features, params={"as_of": CUTOFF})
    np.testing.assert_allclose(out[UPLIFT], uplift_model.score_features(features, CUTOFF)[UPLIFT])
    assert [c.name for c in loaded.metadata.get_output_schema().inputs][-3:] == ["uplift", "uplift_churn_warning",
                                                                                   "uplift_win_back"]
    run_data = mlflow.get_run(logged.run_id).data
    assert run_data.metrics["uplift.uplift.uplift_at_30"] == 0.1 and run_data.metrics["uplift.ratio_at_30"] == 1.7
    assert run_data.tags["uplift_actions"] == "churn_warning,win_back"

    # the service on the registered model: /score and /target rows carry uplift
    from serving.online import ScoreRequest
    from serving.service import RepurchaseService

    monkeypatch.setenv("REPURCHASE_MODEL_URI", "models:/repurchase@champion")
    monkeypatch.delenv("REPURCHASE_SNAPSHOT", raising=False)
    service = RepurchaseService()
    assert service.wait_loaded(300), service.load_error
    customer = str(synth_orders["customer_id"].iloc[0])
    mine = synth_orders[(synth_orders["customer_id"] == customer) & (synth_orders["order_ts"] < "2025-07-01")]
    body = {"customers": [{"customer_id": customer, "orders": [{"order_ts": ts.isoformat(), "amount": float(a)}
                                                               for ts, a in zip(mine["order_ts"], mine["amount"])]}],
            "as_of": CUTOFF}
    for endpoint in (service.score, service.target):
        answer = json.loads(json.dumps(asyncio.run(endpoint(ScoreRequest.model_validate_json(json.dumps(body))))))
        row = answer["scores"][0]
        assert isinstance(row["uplift"], float) and {"uplift_win_back", "uplift_churn_warning"} <= set(row)


def test_online_rows_have_uplift_only_when_the_model_has_it(uplift_model, fitted_model, synth_orders):
    from serving.online import CustomerIn, apply_targeting, json_rows, score_histories

    ids = synth_orders["customer_id"].unique()[:3]
    customers = [CustomerIn.model_validate({"customer_id": str(c), "orders": [
        {"order_ts": ts.isoformat(), "amount": float(a)}
        for ts, a in synth_orders.loc[(synth_orders["customer_id"] == c) & (synth_orders["order_ts"] < "2025-07-01"),
                                      ["order_ts", "amount"]].itertuples(index=False)]}) for c in ids]
    day = pd.Timestamp(CUTOFF).date()
    scores, features = score_histories(uplift_model, customers, day, "1", with_features=True)
    rows = json_rows(scores)
    assert all(isinstance(row["uplift"], float) and "uplift_win_back" in row for row in rows)
    json.dumps(rows, allow_nan=False)
    targeted = json_rows(apply_targeting(uplift_model, scores, features))
    assert all("uplift" in row and "action" in row for row in targeted)
    plain, _ = score_histories(fitted_model, customers, day, "1")
    assert all("uplift" not in row for row in json_rows(plain))  # no uplift part: no key at all


# --------------------------------------------------------------------------- rules and the budget


def score_frame(rows: list[dict]) -> pd.DataFrame:
    """Lapsed customers worth 100, as likely as not to buy, unless a row says otherwise."""
    base = {"as_of": pd.Timestamp(CUTOFF), "p_alive": 0.5, "p_repurchase": 0.5, "expected_orders": 1.0,
            "expected_revenue": 100.0, "clv": 100.0, "rfm_segment": "loyal", "lifecycle_stage": "lapsed",
            "model_version": "1"}
    return scores_frame([score_row(**{**base, **row}) for row in rows])


def rules(rule_list: list[dict], **extra) -> RuleSet:
    return RuleSet.model_validate({"rules": rule_list, **extra})


SCORES = [
    # sure things: likely to buy anyway, a contact adds little
    {"customer_id": "sure", "p_repurchase": 0.95, "uplift_win_back": 0.01, "uplift_churn_warning": 0.00},
    {"customer_id": "keen", "p_repurchase": 0.90, "uplift_win_back": 0.02, "uplift_churn_warning": 0.01},
    # persuadable: unlikely to buy on their own, a contact changes that
    {"customer_id": "swing", "p_repurchase": 0.20, "uplift_win_back": 0.30, "uplift_churn_warning": 0.05},
    {"customer_id": "maybe", "p_repurchase": 0.30, "uplift_win_back": 0.15, "uplift_churn_warning": 0.20},
    # put off by a contact
    {"customer_id": "annoyed", "p_repurchase": 0.50, "uplift_win_back": -0.05, "uplift_churn_warning": -0.10},
]


def test_the_budget_ranked_by_uplift_keeps_the_highest_incremental_value():
    scores = score_frame([{**row, UPLIFT: max(row["uplift_win_back"], row["uplift_churn_warning"])} for row in SCORES])
    rule = {"name": "all", "when": "clv > 0", "action": "win_back", "reason": "adds {uplift:.0%}"}
    by_value = apply_rules(scores, rules([rule], budget={"max_contacts": 2, "contact_cost": 1.0})).set_index("customer_id")
    assert sorted(by_value.index[by_value["action"].notna()]) == ["keen", "sure"]  # they would have bought anyway
    by_uplift = apply_rules(scores, rules([rule], budget={"max_contacts": 2, "contact_cost": 1.0, "rank_by": "uplift"}))
    by_uplift = by_uplift.set_index("customer_id")
    assert sorted(by_uplift.index[by_uplift["action"].notna()]) == ["maybe", "swing"]
    # expected incremental value = the action's uplift x expected order value (100) - contact cost
    assert by_uplift.loc["swing", "incremental_value"] == pytest.approx(0.30 * 100 - 1)
    assert by_uplift.loc["maybe", "uplift"] == pytest.approx(0.15)  # win_back's, not the best action's (0.20)
    assert by_uplift.loc["swing", "reason"] == "adds 30%"
    uncapped = apply_rules(scores, rules([rule], budget={"contact_cost": 2.0, "rank_by": "uplift"}))
    assert sorted(uncapped.loc[uncapped["action"].notna(), "customer_id"]) == ["maybe", "swing"]  # 0.02 x 100 - 2 = 0


def test_uplift_in_a_rule_is_that_rules_action():
    scores = score_frame(SCORES)
    rule_list = [
        {"name": "wb", "when": "uplift >= 0.25", "action": "win_back", "reason": "win-back adds {uplift:.0%}"},
        {"name": "cw", "when": "uplift >= 0.1", "action": "churn_warning", "reason": "warning adds {uplift:.0%}"},
        {"name": "vip", "when": "uplift > -1", "action": "vip_care", "reason": "no uplift learned"},
    ]
    targeted = apply_rules(scores, rules(rule_list))
    assert list(targeted.columns[:len(SCORE_COLUMNS) + 2]) == [*SCORE_COLUMNS, "uplift_win_back", "uplift_churn_warning"]
    out = targeted.set_index("customer_id")
    assert out.loc["swing", "action"] == "win_back" and out.loc["swing", "reason"] == "win-back adds 30%"
    assert out.loc["maybe", "action"] == "churn_warning" and out.loc["maybe", "reason"] == "warning adds 20%"
    assert out["action"].isna().sum() == 3  # vip_care has no learned uplift: NaN matches nobody


def test_without_uplift_a_rule_on_it_matches_nobody_and_the_budget_says_what_is_missing():
    scores = score_frame([{k: v for k, v in row.items() if not k.startswith("uplift")} for row in SCORES])
    out = apply_rules(scores, rules([{"name": "u", "when": "uplift > 0", "action": "win_back", "reason": "x"}]))
    assert out["action"].isna().all() and out["uplift"].isna().all()
    rule = {"name": "all", "when": "clv > 0", "action": "win_back", "reason": "x"}
    with pytest.raises(RulesError, match="rank_by: uplift needs scores with an uplift column; score with a model "
                                         "trained with `repurchase train --uplift --contacts FILE`"):
        apply_rules(scores, rules([rule], budget={"rank_by": "uplift"}))
    with pytest.raises(Exception, match="rank_by"):
        rules([rule], budget={"rank_by": "p_repurchase"})


# --------------------------------------------------------------------------- train --uplift: bad contacts


@pytest.fixture()
def shop(tmp_path, monkeypatch):
    from features.synth import generate_order_log

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    path = tmp_path / "orders.parquet"
    generate_order_log(300, seed=3, start="2024-01-01", end="2025-06-30").to_parquet(path, index=False)
    return path


@pytest.mark.parametrize(
    ("contacts", "flags", "message"),
    [
        (None, ["--uplift"], "--uplift needs --contacts FILE"),
        ("customer_id,action,contacted_at,group\nc1,win_back,2025-01-01,treatment\n", [],
         "--contacts is read by --uplift only"),
        ("nope", ["--uplift"], "no such contacts file"),
        ("customer_id,action,contacted_at\nc1,win_back,2025-01-01\n", ["--uplift"], "missing column(s) group"),
        ("customer_id,action,contacted_at,group\nc1,win_back,2025-01-01,control\n", ["--uplift"],
         "line 2: group: 'control' is not a group"),
        ("customer_id,action,contacted_at,group\nc1,win_back,2025-06-20,treatment\n", ["--uplift"],
         "no contact's 30-day window ends by 2025-06-30"),
        ("customer_id,action,contacted_at,group\nnobody,win_back,2025-01-01,treatment\n", ["--uplift"],
         "none of the 1 contacted customers has an order"),
        ("customer_id,action,contacted_at,group\nc1,win_back,2025-01-01,treatment\nc2,win_back,2025-01-01,holdout\n",
         ["--uplift"], "1 campaign date; evaluating an uplift model needs two or more"),
    ],
)
def test_bad_contacts_for_train_uplift_exit_2_in_one_line_before_training(shop, tmp_path, contacts, flags, message):
    args = ["train", "--orders", str(shop), "--cutoff", "2025-06-30", *flags]
    if contacts is not None:
        path = tmp_path / "contacts.csv"
        if contacts != "nope":
            path.write_text(contacts.replace("c1", "c0000021").replace("c2", "c0000135"))
        args += ["--contacts", str(path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "mlruns").exists()  # nothing trained, no MLflow run


# --------------------------------------------------------------------------- the ranking (slow)


@pytest.mark.slow
def test_on_held_out_campaigns_the_uplift_ranking_beats_p_repurchase_and_random(tmp_path):
    """Simulated campaigns with a 50% holdout (less noise than 10%, so a smaller shop will do).

    The simulation knows each contact's outcome without the contact and the chances that the
    contact persuades or puts off (by action and last channel), so each ranking's expected
    incremental buyers in its top 30% are known; the bar is on those, not on the measured
    difference, whose holdout noise at this size is as large as the gaps. (The realised
    effects, persuaded or not, add a coin flip per contact: about 1 point of noise on the
    top 30% of 1,900 contacts, as much as the margin tested.)"""
    from features.campaigns import ACTIONS, simulate_campaigns
    from features.orders import load_order_log
    from training.jobs import evaluate_uplift_job, prepare_uplift
    from training.metrics import top_fraction_mask

    simulated = simulate_campaigns(10_000, seed=0, holdout_share=0.5)
    path = tmp_path / "log.parquet"
    simulated.lines.to_parquet(path, index=False)
    log = load_order_log(str(path))
    data = prepare_uplift(log, simulated.contacts, pd.Timestamp("2025-12-31"), simulated.window_days)
    cheap = {"n_origins": 2, "max_rounds": 50, "max_timing_rows": 20_000, "max_rows_per_origin": 5_000}
    report, held_out = evaluate_uplift_job(data, log.orders, 90, model_params=cheap)
    assert report["held_out"]["contacts"] > 1_500 and report["learn"]["last"] < report["held_out"]["first"]

    keys = ["customer_id", "action", "contacted_at"]
    units = simulated.units
    without = units["bought_without"].to_numpy(dtype=float)
    persuaded = np.array([ACTIONS[a].persuadable[c] for a, c in zip(units["action"], units["channel"])])
    put_off = np.array([ACTIONS[a].put_off[c] for a, c in zip(units["action"], units["channel"])])
    units = units.assign(effect=persuaded * (1 - without) - put_off * without)
    truth = held_out[keys].merge(units[[*keys, "effect"]], on=keys, how="left")["effect"].to_numpy()
    true_at_30 = {name: truth[top_fraction_mask(held_out[name].to_numpy(dtype=float), 0.3)].mean()
                  for name in ("uplift", "p_repurchase")}
    assert true_at_30["uplift"] > 1.5 * true_at_30["p_repurchase"], true_at_30
    assert true_at_30["uplift"] > 1.2 * truth.mean(), (true_at_30, truth.mean())
    rankings = report["rankings"]
    assert rankings["uplift"]["uplift_at_30"] > rankings["p_repurchase"]["uplift_at_30"]
    assert rankings["uplift"]["qini_auc"] > 0
