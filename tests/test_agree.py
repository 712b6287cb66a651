"""The scores agree with each other: p_alive, churn risk and lifecycle stage; the RFM scores of
the score rows, the feature snapshot, the API and the pyfunc; segments as operators name them."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.orders import load_order_log
from training.model import RFM_BASIS, reference_quantiles, rfm_columns
from training.segments import rfm_segment

AS_OF = "2025-09-30"
RFM = ("rfm_r", "rfm_f", "rfm_m")


def assert_alive_agrees_with_stage_and_risk(scores: pd.DataFrame) -> None:
    churned = scores["lifecycle_stage"] == "churned"
    assert churned.any()
    assert (scores.loc[churned, "p_alive"] < 0.5).all(), scores.loc[churned, "p_alive"].max()
    # ordering within the horizon needs a customer who is alive: P(no order) >= P(dropped out)
    assert (scores["churn_risk"] >= 1.0 - scores["p_alive"] - 1e-12).all()


@pytest.fixture(scope="module")
def synth_scores(fitted_model, synth_orders) -> pd.DataFrame:
    return fitted_model.score(synth_orders, AS_OF)


# --------------------------------------------------------------------------- p_alive


def test_no_churned_customer_reads_more_than_half_alive_on_synth(synth_scores):
    assert_alive_agrees_with_stage_and_risk(synth_scores)


def test_no_churned_customer_reads_more_than_half_alive_on_the_cdnow_sample():
    """The composite model fitted on the CDNOW sample (half of its customers bought once) at its last day.

    Its BTYD parts are real fits (p_alive comes from MBG/NBD); the boosters are kept short."""
    from known_models import FAST_SETTINGS
    from training.model import RepurchaseModel

    log = load_order_log("cdnow-sample")
    as_of = log.last_order_date
    model = RepurchaseModel(horizon_days=90, max_rounds=30, **{**FAST_SETTINGS, "step_days": 60}).fit(log.orders, as_of)
    scores = model.score(log.orders, as_of)
    assert_alive_agrees_with_stage_and_risk(scores)
    one_time = model.point_in_time_features(log.orders, as_of)["frequency"].to_numpy() == 0
    assert one_time.mean() > 0.4 and scores.loc[one_time, "p_alive"].max() < 0.9  # none pinned at 1


@pytest.mark.slow
def test_no_churned_customer_reads_more_than_half_alive_on_cdnow_and_champions_are_recent():
    """What the quickstart scores: every CDNOW customer as of its last day, by a model trained then."""
    from training.model import RepurchaseModel

    log = load_order_log("cdnow")
    as_of = log.last_order_date
    model = RepurchaseModel(horizon_days=90).fit(log.orders, as_of)
    features = model.point_in_time_features(log.orders, as_of)
    scores = model.score_features(features, as_of)
    assert_alive_agrees_with_stage_and_risk(scores)
    assert (scores["p_alive"] == 1.0).sum() == 0
    champions = scores["rfm_segment"] == "champions"
    assert champions.mean() < 0.10
    assert (features.loc[champions, "days_since_last"] <= 30).all() and (features.loc[champions, "n_orders"] >= 5).all()


def test_one_time_buyers_fade_as_their_only_order_ages(fitted_model):
    """One order each, placed 0 to 700 days before the as-of date: p_alive falls with the age."""
    days = np.arange(0, 701, 10)
    as_of = pd.Timestamp(AS_OF)
    orders = pd.DataFrame({
        "customer_id": [f"once{d:04d}" for d in days],
        "order_ts": as_of - pd.to_timedelta(days, unit="D"),
        "amount": 30.0,
    })
    scores = fitted_model.score(orders, as_of).set_index("customer_id").loc[orders["customer_id"]]
    p_alive = scores["p_alive"].to_numpy()
    assert (np.diff(p_alive) < 0).all(), p_alive
    assert p_alive[-1] < 0.5 < p_alive[0]


@settings(max_examples=200, deadline=None)
@given(
    r=st.floats(0.05, 5), alpha=st.floats(0.5, 200), a=st.floats(0.01, 5), b=st.floats(0.01, 20),
    ages=st.lists(st.integers(0, 2000), min_size=2, max_size=20, unique=True),
)
def test_mbgnbd_one_time_buyers_p_alive_decreases_with_age(r, alpha, a, b, ages):
    """MBG/NBD, which gives p_alive: P(alive | x = 0, t_x = 0, T) = 1 / (1 + a/b ((alpha + T)/alpha)^r) falls in T."""
    from training.btyd import BTYDModel

    model = BTYDModel.from_params({"r": r, "alpha": alpha, "a": a, "b": b}, model="mbgnbd", time_unit_days=1.0)
    T = np.sort(np.array(ages, dtype=float))  # days
    p = model.p_alive(np.zeros_like(T), np.zeros_like(T), T)
    assert ((p > 0) & (p < 1)).all()
    assert (np.diff(p) <= 0).all() and p[-1] < p[0]


def test_a_model_pickled_before_p_alive_came_from_mbgnbd_still_scores(fitted_model, synth_orders, synth_scores):
    """No alive_model_, RFM ranks under their old names: the same boosters' answers, BG/NBD's P(alive)."""
    from training.model import LEGACY_RANK_NAMES

    old = pickle.loads(pickle.dumps(fitted_model))
    del old.alive_model_
    renamed = {new: legacy for legacy, new in LEGACY_RANK_NAMES.items()}
    old.spec_.model_features = [renamed.get(name, name) for name in old.spec_.model_features]
    assert "rfm_r" in old.spec_.model_features
    scores = old.score(synth_orders, AS_OF)
    pd.testing.assert_series_equal(scores["p_repurchase"], synth_scores["p_repurchase"])
    features = old.with_btyd(old.point_in_time_features(synth_orders, AS_OF))
    np.testing.assert_allclose(scores["p_alive"], np.maximum(features["btyd_p_alive"], scores["p_repurchase"]))
    assert_alive_agrees_with_stage_and_risk(scores)


# --------------------------------------------------------------------------- one RFM formula


@pytest.fixture(scope="module")
def batch_run(fitted_model, synth_orders, tmp_path_factory):
    from features.orders import OrderLog
    from serving.batch import score_log

    out = tmp_path_factory.mktemp("agree") / "scores.parquet"
    run = score_log(fitted_model, OrderLog(lines=synth_orders, source="synth"), pd.Timestamp(AS_OF), out,
                    model_version="5", chunk_rows=700)
    return {"run": run, "scores": pd.read_parquet(run.scores_path), "snapshot": pd.read_parquet(run.snapshot_path)}


def test_the_snapshot_carries_exactly_the_scores_rfm_and_the_segment_follows_from_it(batch_run):
    scores, snapshot = batch_run["scores"], batch_run["snapshot"]
    assert scores["customer_id"].tolist() == snapshot["customer_id"].tolist()
    for column in RFM:
        np.testing.assert_array_equal(snapshot[column].to_numpy(), scores[column].to_numpy(), err_msg=column)
        assert scores[column].between(1, 5).all() and scores[column].dtype == "int64"
    assert (scores["rfm_segment"].to_numpy() == rfm_segment(snapshot["rfm_r"], snapshot["rfm_f"])).all()


def test_api_and_pyfunc_rows_carry_the_scores_rfm(fitted_model, batch_run, synth_orders, mlflow_store):
    import mlflow

    from serving.online import CustomerIn, Snapshot, json_rows, score_histories
    from training.registry import log_run

    scores = batch_run["scores"].set_index("customer_id")
    by_id = Snapshot.load(batch_run["run"].snapshot_path)
    by_id.score_all(fitted_model, "5")
    rows = pd.DataFrame(by_id.score_rows(fitted_model, np.arange(len(by_id)), "5")).set_index("customer_id")

    some = scores.index[[0, 5, 50, 500, 1500]]
    customers = [
        CustomerIn(customer_id=c, orders=[{"order_ts": t.isoformat(), "amount": a}
                                          for t, a in synth_orders.loc[synth_orders["customer_id"] == c,
                                                                       ["order_ts", "amount"]].itertuples(index=False)])
        for c in some
    ]
    histories, _ = score_histories(fitted_model, customers, pd.Timestamp(AS_OF).date(), "5")
    by_history = pd.DataFrame(json_rows(histories)).set_index("customer_id")

    logged = log_run(fitted_model, {"cutoff": "2025-06-30", "horizon_days": 60}, params={"job": "test"},
                     example_features=fitted_model.features(synth_orders, "2025-06-30").head(3))
    pyfunc = mlflow.pyfunc.load_model(logged.model_uri)
    inputs = fitted_model.with_btyd(batch_run["snapshot"].drop(columns=["as_of"]))  # the logged signature's columns
    predicted = pyfunc.predict(inputs, params={"as_of": AS_OF, "model_version": "5"})
    predicted = predicted.set_index("customer_id")

    for column in (*RFM, "p_alive", "rfm_segment", "lifecycle_stage"):
        assert (rows[column].to_numpy() == scores[column].to_numpy()).all(), column
        assert (by_history[column].to_numpy() == scores.loc[some, column].to_numpy()).all(), column
        assert (predicted[column].to_numpy() == scores[column].to_numpy()).all(), column
    assert all(isinstance(rows[c].iloc[0], (int, np.integer)) for c in RFM)


def test_audiences_and_reasons_use_the_scores_columns(fitted_model, batch_run):
    from serving.targeting import apply_rules, load_rules

    scores, snapshot = batch_run["scores"], batch_run["snapshot"]
    targeted = apply_rules(scores, load_rules(None), features=snapshot, clv_reference=fitted_model.spec_.clv_reference)
    for column in (*RFM, "p_alive", "rfm_segment", "lifecycle_stage"):
        assert (targeted[column].to_numpy() == scores[column].to_numpy()).all(), column
    said = targeted["reason"].astype("string").str.extract(r"chance still active (\d+)%")[0].dropna()
    assert len(said) > 0
    assert (said.astype(int).to_numpy() == (targeted.loc[said.index, "p_alive"] * 100).round().astype(int).to_numpy()).all()
    assert (targeted.loc[targeted["action"] == "churn_warning", "p_alive"] < 0.6).all()


# --------------------------------------------------------------------------- segments as operators name them


def one_time_heavy_population() -> pd.DataFrame:
    """Customers named by what they did: 80% bought once, mostly long ago (as CDNOW at its end)."""
    named = {
        "once_10d": (10, 1), "once_60d": (60, 1), "once_120d": (120, 1), "once_300d": (300, 1), "once_500d": (500, 1),
        "twice_20d": (20, 2), "three_150d": (150, 3), "five_20d": (20, 5), "five_100d": (100, 5),
        "twelve_10d": (10, 12), "twelve_200d": (200, 12), "four_250d": (250, 4), "twice_400d": (400, 2),
    }
    rng = np.random.default_rng(1)
    filler_days = rng.integers(300, 540, 400)  # one-time buyers from long ago
    rows = [(name, days, orders) for name, (days, orders) in named.items()]
    rows += [(f"filler{i}", int(d), 1) for i, d in enumerate(filler_days)]
    rows += [(f"repeat{i}", int(d), int(n)) for i, (d, n) in enumerate(zip(rng.integers(0, 540, 90), rng.integers(2, 4, 90)))]
    frame = pd.DataFrame(rows, columns=["customer_id", "days_since_last", "n_orders"])
    return frame.assign(total_spend=frame["n_orders"] * 40.0)


def test_segments_mean_what_operators_mean_on_a_one_time_buyer_heavy_population():
    population = one_time_heavy_population()
    assert (population["n_orders"] == 1).mean() > 0.75
    reference = {letter: reference_quantiles(population[column]) for letter, column in RFM_BASIS.items()}
    rfm = rfm_columns(population, reference)
    segment = pd.Series(rfm_segment(rfm["rfm_r"], rfm["rfm_f"]), index=population["customer_id"])
    assert segment[["once_10d", "once_60d", "once_120d", "once_300d", "once_500d"]].tolist() == [
        "new", "promising", "about_to_sleep", "hibernating", "lost"]
    assert segment["once_300d"] != "champions"  # one order 300 days ago
    assert segment["twice_20d"] == "potential_loyalist"  # a second order is not a champion yet
    assert segment["three_150d"] == "need_attention"
    assert segment[["five_20d", "twelve_10d"]].tolist() == ["champions", "champions"]
    assert segment["five_100d"] == "loyal"
    assert segment["four_250d"] == "at_risk"
    assert segment["twelve_200d"] == "cannot_lose"
    assert segment["twice_400d"] == "lost"
    one_time = population["n_orders"].to_numpy() == 1
    assert not np.isin(segment.to_numpy()[one_time], ["champions", "loyal", "potential_loyalist", "at_risk",
                                                       "cannot_lose", "need_attention"]).any()
    champions = segment.to_numpy() == "champions"
    assert (population.loc[champions, "days_since_last"] <= 30).all() and (population.loc[champions, "n_orders"] >= 5).all()


def test_the_report_explains_every_segment_and_stage_in_one_line(synth_scores, tmp_path):
    from serving.report import render_report
    from training.segments import LIFECYCLE_STAGES, RFM_SEGMENTS, SEGMENT_MEANINGS, stage_meanings

    page = render_report({}, {}, synth_scores, None, tmp_path / "report.html").read_text()
    segments = page.split('<section id="segments">')[1].split("</section>")[0]
    stages = page.split('<section id="lifecycle">')[1].split("</section>")[0]
    for name in RFM_SEGMENTS:
        meaning = SEGMENT_MEANINGS[name]
        assert meaning and "\n" not in meaning
        assert f"<td>{name.replace('_', ' ')}</td><td>{meaning}</td>" in segments.replace("&#x27;", "'"), name
    meanings = stage_meanings(60)
    for name in LIFECYCLE_STAGES:
        assert f"<td>{name.replace('_', ' ')}</td><td>{meanings[name]}</td>" in stages, name
    assert "under 50%" in meanings["churned"] and "p_alive" in meanings["churned"]
