"""BTYD models: published CDNOW parameters, agreement with lifetimes, Monte Carlo checks of
the horizon probability, invariances, pickling and clear errors."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import check_grad

from training.btyd import (
    BTYDModel,
    INTERIOR,
    MEAN_SPEND,
    MIN_REPEAT_CUSTOMERS,
    NO_DROPOUT,
    PENALIZER_LADDER,
    BTYDDataError,
    GammaGamma,
    NotFittedError,
    bgnbd_negative_log_likelihood,
    clv,
    compress_rfm,
    fit_status_meaning,
    simulate_customers,
)

# Fader, Hardie & Lee (2005a), CDNOW 1/10 sample, calibration to 1997-09-30, per week.
PAPER_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PAPER_BGNBD_LOG_LIKELIHOOD = -9582.4
# Fader, Hardie & Lee (2005a) and Fader & Hardie's note 009 on the same data.
PAPER_PARETO = {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669}
PAPER_PARETO_LOG_LIKELIHOOD = -9595.0

WEEK = 7.0
KNOWN = {
    "bgnbd": {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426},
    "mbgnbd": {"r": 0.525, "alpha": 6.183, "a": 0.891, "b": 1.614},
    "pareto": {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669},
}


@pytest.fixture(scope="module")
def cdnow_calibration() -> pd.DataFrame:
    """BTYD summary (days) of the CDNOW sample's raw log at cutoff 1997-09-30."""
    from lifetimes.utils import summary_data_from_transaction_data

    from features.datasets import load_cdnow

    log = load_cdnow("cdnow-sample")
    calibration = log[log["order_ts"] <= "1997-09-30"]
    return summary_data_from_transaction_data(
        calibration,
        "customer_id",
        "order_ts",
        monetary_value_col="amount",
        observation_period_end="1997-09-30",
        freq="D",
    )


def _rfm(summary: pd.DataFrame):
    return summary["frequency"].to_numpy(), summary["recency"].to_numpy(), summary["T"].to_numpy()


@pytest.fixture(scope="module")
def fitted_on_cdnow(cdnow_calibration) -> BTYDModel:
    return BTYDModel().fit(*_rfm(cdnow_calibration))


def _simulated(model="bgnbd", n=2000, seed=0, horizon=0.0, resolution=None, params=None):
    """Customers simulated from known weekly parameters, ages 1 to 80 weeks, returned in days."""
    rng = np.random.default_rng(seed)
    T_weeks = rng.uniform(1.0, 80.0, n)
    if resolution is not None:
        T_weeks = np.round(T_weeks * WEEK) / WEEK
    data = simulate_customers(model, params or KNOWN[model], T_weeks, horizon=horizon, resolution=resolution, rng=rng)
    return {
        "frequency": data["frequency"],
        "recency": data["recency"] * WEEK,
        "T": data["T"] * WEEK,
        "future_orders": data["future_orders"],
    }


# --------------------------------------------------------------------------- reference values


def test_bgnbd_reproduces_the_published_cdnow_parameters(fitted_on_cdnow):
    # The paper prints three decimals; the fit must round to them.
    assert fitted_on_cdnow.params_ == pytest.approx(PAPER_BGNBD, abs=5e-4)
    assert fitted_on_cdnow.params_ == pytest.approx(PAPER_BGNBD, rel=2e-3)


def test_bgnbd_log_likelihood_is_the_papers_total_in_weeks(fitted_on_cdnow):
    # The paper's -9582.4 is the sum over customers with time in weeks (lifetimes reports the
    # mean with time scaled to max T = 1, which differs by sum(x) log(max T)).
    assert fitted_on_cdnow.log_likelihood_ == pytest.approx(PAPER_BGNBD_LOG_LIKELIHOOD, abs=0.05)
    assert fitted_on_cdnow.n_customers_ == 2357
    assert fitted_on_cdnow.n_distinct_ < fitted_on_cdnow.n_customers_


@pytest.mark.parametrize("time_unit_days", [1.0, 7.0])
def test_bgnbd_equals_lifetimes_beta_geo_fitter(cdnow_calibration, time_unit_days):
    from lifetimes import BetaGeoFitter

    frequency, recency, T = _rfm(cdnow_calibration)
    ours = BTYDModel(time_unit_days=time_unit_days).fit(frequency, recency, T)
    theirs = BetaGeoFitter().fit(frequency, recency / time_unit_days, T / time_unit_days)
    assert ours.params_ == pytest.approx(theirs.params_.to_dict(), rel=1e-4)


def test_bgnbd_equals_lifetimes_with_a_penalizer(cdnow_calibration):
    from lifetimes import BetaGeoFitter

    frequency, recency, T = _rfm(cdnow_calibration)
    ours = BTYDModel(penalizer_coef=0.01).fit(frequency, recency, T)
    theirs = BetaGeoFitter(penalizer_coef=0.01).fit(frequency, recency / WEEK, T / WEEK)
    assert ours.params_ == pytest.approx(theirs.params_.to_dict(), rel=1e-4)


def test_pareto_nbd_reproduces_the_published_cdnow_parameters(cdnow_calibration):
    model = BTYDModel(model="pareto").fit(*_rfm(cdnow_calibration))
    assert model.params_ == pytest.approx(PAPER_PARETO, rel=2e-3)
    assert model.log_likelihood_ == pytest.approx(PAPER_PARETO_LOG_LIKELIHOOD, abs=0.1)


def test_mbgnbd_equals_lifetimes_modified_beta_geo_fitter(cdnow_calibration):
    from lifetimes import ModifiedBetaGeoFitter

    frequency, recency, T = _rfm(cdnow_calibration)
    ours = BTYDModel(model="mbgnbd").fit(frequency, recency, T)
    theirs = ModifiedBetaGeoFitter().fit(frequency, recency / WEEK, T / WEEK)
    assert ours.params_ == pytest.approx(theirs.params_.to_dict(), rel=1e-4)
    assert ours.log_likelihood_ > PAPER_BGNBD_LOG_LIKELIHOOD - 5


def test_gamma_gamma_equals_lifetimes_gamma_gamma_fitter(cdnow_calibration):
    from lifetimes import GammaGammaFitter

    frequency = cdnow_calibration["frequency"].to_numpy()
    spend = cdnow_calibration["monetary_value"].to_numpy()
    ours = GammaGamma().fit(frequency, spend)
    repeat = frequency > 0
    theirs = GammaGammaFitter().fit(frequency[repeat], spend[repeat])
    assert ours.params_ == pytest.approx(theirs.params_.to_dict(), rel=1e-4)
    assert ours.n_customers_ == repeat.sum()
    np.testing.assert_allclose(
        ours.expected_order_value(frequency, spend),
        theirs.conditional_expected_average_profit(frequency, spend),
        rtol=1e-4,
    )


def test_clv_equals_lifetimes_customer_lifetime_value(cdnow_calibration):
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    summary = cdnow_calibration
    frequency, recency, T = _rfm(summary)
    spend = summary["monetary_value"].to_numpy()
    transactions = BTYDModel().fit(frequency, recency, T)
    spend_model = GammaGamma().fit(frequency, spend)
    repeat = frequency > 0
    their_transactions = BetaGeoFitter().fit(frequency, recency, T)  # days, as freq="D" expects
    their_spend = GammaGammaFitter().fit(frequency[repeat], spend[repeat])
    monthly_rate = 0.01
    theirs = their_spend.customer_lifetime_value(
        their_transactions, summary["frequency"], summary["recency"], summary["T"], summary["monetary_value"],
        time=12, discount_rate=monthly_rate, freq="D",
    )
    ours = clv(
        transactions, spend_model, frequency, recency, T, spend,
        horizon_days=360, discount_rate_annual=(1 + monthly_rate) ** (365 / 30) - 1, step_days=30,
    )
    np.testing.assert_allclose(ours, theirs.to_numpy(), rtol=1e-4)


# --------------------------------------------------------------------------- the fast fit


def test_analytic_gradient_matches_finite_differences():
    data = _simulated(n=1500, seed=3)
    table = compress_rfm(data["frequency"], data["recency"], data["T"])
    scale = 1.0 / table.T_values.max()
    for log_params in (np.full(4, 0.1), np.array([-1.2, -2.0, -0.3, 0.8])):
        for penalizer in (0.0, 0.05):
            error = check_grad(
                lambda z: bgnbd_negative_log_likelihood(z, table, scale, penalizer)[0],
                lambda z: bgnbd_negative_log_likelihood(z, table, scale, penalizer)[1],
                log_params,
            )
            assert error < 1e-5


def test_fit_on_compressed_rows_equals_fit_on_every_customer():
    data = _simulated(n=3000, seed=4, resolution=1.0 / WEEK)
    frequency, recency, T = data["frequency"], data["recency"], data["T"]
    whole = BTYDModel().fit(frequency, recency, T)
    table = compress_rfm(frequency, recency, T)
    distinct = table.distinct_rows()
    assert distinct[0].size == whole.n_distinct_ < frequency.size
    collapsed = BTYDModel().fit(*distinct)
    assert collapsed.params_ == pytest.approx(whole.params_, rel=1e-8)
    assert collapsed.log_likelihood_ == pytest.approx(whole.log_likelihood_, rel=1e-10)
    assert collapsed.n_customers_ == whole.n_customers_ == frequency.size


def test_fit_recovers_simulated_parameters():
    data = _simulated(n=20000, seed=5)
    model = BTYDModel().fit(data["frequency"], data["recency"], data["T"])
    assert model.params_ == pytest.approx(KNOWN["bgnbd"], rel=0.15)


# --------------------------------------------------------------------------- Monte Carlo


@pytest.mark.parametrize("model_name", ["bgnbd", "mbgnbd", "pareto"])
def test_p_repurchase_and_expected_orders_agree_with_simulation(model_name):
    """Customers drawn from the prior with known parameters: predictions conditional on
    each one's history must match, bin by bin, what the simulated customers then do."""
    horizon_weeks = 13.0
    data = _simulated(model_name, n=40000, seed=11, horizon=horizon_weeks)
    model = BTYDModel.from_params(KNOWN[model_name], model=model_name)
    args = (data["frequency"], data["recency"], data["T"])
    predicted = model.p_repurchase(horizon_weeks * WEEK, *args)
    bought = data["future_orders"] > 0
    expected = model.expected_orders(horizon_weeks * WEEK, *args)

    for group in np.array_split(np.argsort(predicted, kind="stable"), 10):
        standard_error = np.sqrt(max(bought[group].mean() * (1 - bought[group].mean()), 1e-4) / group.size)
        assert predicted[group].mean() == pytest.approx(bought[group].mean(), abs=4 * standard_error + 0.003)
    standard_error = data["future_orders"].std() / np.sqrt(data["future_orders"].size)
    assert expected.mean() == pytest.approx(data["future_orders"].mean(), abs=4 * standard_error)


# --------------------------------------------------------------------------- predictions


@pytest.mark.parametrize("model_name", ["bgnbd", "mbgnbd", "pareto"])
def test_predictions_equal_lifetimes_formulas(model_name):
    from lifetimes import BetaGeoFitter, ModifiedBetaGeoFitter, ParetoNBDFitter

    fitter = {"bgnbd": BetaGeoFitter, "mbgnbd": ModifiedBetaGeoFitter, "pareto": ParetoNBDFitter}[model_name]()
    fitter.params_ = pd.Series(KNOWN[model_name])
    model = BTYDModel.from_params(KNOWN[model_name], model=model_name)
    frequency = np.array([0.0, 1.0, 2.0, 5.0, 29.0, 3.0])
    recency = np.array([0.0, 30.0, 100.0, 200.0, 269.0, 272.0])
    T = np.array([272.0, 250.0, 180.0, 272.0, 272.0, 272.0])
    np.testing.assert_allclose(
        model.p_alive(frequency, recency, T),
        fitter.conditional_probability_alive(frequency, recency / WEEK, T / WEEK),
        rtol=1e-9,
    )
    np.testing.assert_allclose(
        model.expected_orders(90.0, frequency, recency, T),
        fitter.conditional_expected_number_of_purchases_up_to_time(90.0 / WEEK, frequency, recency / WEEK, T / WEEK),
        rtol=1e-8,
    )


def test_pareto_p_repurchase_equals_lifetimes_conditional_pmf_of_zero():
    from lifetimes import ParetoNBDFitter

    fitter = ParetoNBDFitter()
    fitter.params_ = pd.Series(KNOWN["pareto"])
    model = BTYDModel.from_params(KNOWN["pareto"], model="pareto")
    for x, t_x, T in [(0, 0, 272), (1, 30, 250), (5, 200, 272), (29, 269, 272), (3, 272, 272)]:
        p_none = fitter.conditional_probability_of_n_purchases_up_to_time(0, 90.0 / WEEK, x, t_x / WEEK, T / WEEK)
        assert model.p_repurchase(90.0, x, t_x, T)[()] == pytest.approx(1 - p_none, rel=1e-8)


def test_bgnbd_p_repurchase_is_the_designs_closed_form():
    r, alpha, a, b = KNOWN["bgnbd"].values()
    model = BTYDModel.from_params(KNOWN["bgnbd"])
    x, t_x, T, t = 4.0, 20.0, 38.0, 13.0  # weeks
    p_alive = model.p_alive(x, t_x * WEEK, T * WEEK)
    p_none = (1 - p_alive) + p_alive * ((alpha + T) / (alpha + T + t)) ** (r + x)
    assert model.p_repurchase(t * WEEK, x, t_x * WEEK, T * WEEK) == pytest.approx(1 - p_none, rel=1e-12)
    # A one-time buyer is alive for sure in BG/NBD, and his repeat rate has the prior's shape r.
    assert model.p_repurchase(t * WEEK, 0, 0, T * WEEK) == pytest.approx(1 - ((alpha + T) / (alpha + T + t)) ** r)


def test_predictions_broadcast_and_return_arrays():
    model = BTYDModel.from_params(KNOWN["bgnbd"])
    horizons = np.array([[30.0], [90.0], [365.0]])
    p = model.p_repurchase(horizons, [0, 2, 5], [0, 50, 200], 250)
    assert isinstance(p, np.ndarray) and p.shape == (3, 3)
    assert np.all(np.diff(p, axis=0) > 0)
    assert model.p_alive(2, 50, 250).shape == ()


def _model_params(draw, model_name):
    r = draw(st.floats(0.01, 5.0))
    alpha = draw(st.floats(0.1, 200.0))
    if model_name == "pareto":
        return {"r": r, "alpha": alpha, "s": draw(st.floats(0.05, 5.0)), "beta": draw(st.floats(0.1, 200.0))}
    return {"r": r, "alpha": alpha, "a": draw(st.floats(0.05, 5.0)), "b": draw(st.floats(0.05, 20.0))}


@st.composite
def scenarios(draw):
    model_name = draw(st.sampled_from(["bgnbd", "mbgnbd", "pareto"]))
    params = _model_params(draw, model_name)
    T = draw(st.floats(0.0, 2000.0))
    frequency = draw(st.integers(0, 400))
    recency = 0.0 if frequency == 0 else draw(st.floats(0.0, 1.0)) * T
    t = draw(st.floats(0.0, 730.0))
    return model_name, params, frequency, recency, T, t


@settings(max_examples=300, deadline=None, database=None)
@given(scenarios())
def test_probabilities_stay_in_unit_interval_and_expectations_are_finite(scenario):
    model_name, params, frequency, recency, T, t = scenario
    if model_name != "pareto" and abs(params["a"] - 1.0) < 1e-6:
        return  # E[orders] divides by a - 1
    model = BTYDModel.from_params(params, model=model_name)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p_alive = model.p_alive(frequency, recency, T)
        p_repurchase = model.p_repurchase(t, frequency, recency, T)
    assert 0.0 <= p_alive <= 1.0
    assert 0.0 <= p_repurchase <= p_alive + 1e-12
    # (Pareto/NBD's horizon probability is a quadrature, good to ~1e-6 in the far corners.)
    assert model.p_repurchase(t + 30.0, frequency, recency, T) >= p_repurchase * (1 - 1e-6) - 1e-12
    expected = model.expected_orders(t, frequency, recency, T)
    assert np.isfinite(expected) and expected >= -1e-9
    # At least one order expected whenever one is likely: E[N] >= P(N >= 1).
    assert expected >= p_repurchase * (1 - 1e-6) - 1e-9


@settings(max_examples=100, deadline=None, database=None)
@given(scenarios(), st.sampled_from([1.0, 7.0, 30.0, 365.25]))
def test_the_time_unit_of_the_parameters_changes_no_prediction(scenario, time_unit_days):
    model_name, params_per_day, frequency, recency, T, t = scenario
    if model_name != "pareto" and abs(params_per_day["a"] - 1.0) < 1e-6:
        return
    in_days = BTYDModel.from_params(params_per_day, model=model_name, time_unit_days=1.0)
    params = {k: v / time_unit_days if k in ("alpha", "beta") else v for k, v in params_per_day.items()}
    in_units = BTYDModel.from_params(params, model=model_name, time_unit_days=time_unit_days)
    for method in ("p_repurchase", "expected_orders"):
        assert getattr(in_units, method)(t, frequency, recency, T) == pytest.approx(
            getattr(in_days, method)(t, frequency, recency, T), rel=1e-7, abs=1e-12
        )
    assert in_units.p_alive(frequency, recency, T) == pytest.approx(
        in_days.p_alive(frequency, recency, T), rel=1e-7, abs=1e-12
    )


@pytest.mark.parametrize("model_name", ["bgnbd", "mbgnbd", "pareto"])
def test_fitting_in_days_or_weeks_gives_the_same_model(model_name):
    data = _simulated(model_name, n=3000 if model_name != "pareto" else 1000, seed=6)
    args = (data["frequency"], data["recency"], data["T"])
    weekly = BTYDModel(model=model_name, time_unit_days=7.0).fit(*args)
    daily = BTYDModel(model=model_name, time_unit_days=1.0).fit(*args)
    # lifetimes' Pareto/NBD fit stops at Nelder-Mead's tolerance of 1e-4.
    tolerance = 1e-3 if model_name == "pareto" else 1e-6
    for name, value in weekly.params_.items():
        per_day = daily.params_[name] / 7.0 if name in ("alpha", "beta") else daily.params_[name]
        assert value == pytest.approx(per_day, rel=tolerance)
    np.testing.assert_allclose(
        weekly.p_repurchase(90.0, *args), daily.p_repurchase(90.0, *args), rtol=tolerance, atol=1e-9
    )
    # The log-likelihood is a density of purchase times: a week is 7 days, so it gains sum(x) log 7.
    shift = data["frequency"].sum() * np.log(7.0)
    assert weekly.log_likelihood_ == pytest.approx(daily.log_likelihood_ + shift, rel=1e-6)


def test_clv_without_discount_is_expected_orders_times_order_value():
    transactions = BTYDModel.from_params(KNOWN["bgnbd"])
    spend = GammaGamma.from_params({"p": 6.25, "q": 3.74, "v": 15.44})
    frequency, recency, T = np.array([0, 2, 7]), np.array([0, 40, 200]), np.array([100, 150, 250])
    value = np.array([0, 20, 35])
    total = clv(
        transactions, spend, frequency, recency, T, value, horizon_days=365, discount_rate_annual=0.0, step_days=30
    )
    expected = transactions.expected_orders(365, frequency, recency, T) * spend.expected_order_value(frequency, value)
    np.testing.assert_allclose(total, expected, rtol=1e-10)
    discounted = clv(transactions, spend, frequency, recency, T, value, horizon_days=365, discount_rate_annual=0.1)
    assert np.all(discounted < total) and np.all(discounted > total / 1.1)


# --------------------------------------------------------------------------- persistence


def test_fitted_models_pickle_to_identical_predictions():
    data = _simulated(n=2000, seed=7)
    args = (data["frequency"], data["recency"], data["T"])
    noise = np.random.default_rng(0).gamma(5, 0.2, 2000)
    spend_values = np.where(data["frequency"] > 0, 20.0 + data["frequency"], 0.0) * noise
    for model_name in ("bgnbd", "mbgnbd"):
        model = BTYDModel(model=model_name).fit(*args)
        spend = GammaGamma().fit(data["frequency"], spend_values)
        for fitted in (model, spend):
            assert all(isinstance(v, (str, int, float, dict)) for v in vars(fitted).values())
        restored_model, restored_spend = pickle.loads(pickle.dumps((model, spend)))
        assert restored_model.params_ == model.params_
        for method in ("p_repurchase", "expected_orders"):
            np.testing.assert_array_equal(getattr(restored_model, method)(90, *args), getattr(model, method)(90, *args))
        np.testing.assert_array_equal(
            clv(restored_model, restored_spend, *args, spend_values), clv(model, spend, *args, spend_values)
        )


def test_refitting_replaces_the_fit():
    model = BTYDModel()
    first = _simulated(n=1500, seed=8)
    second = _simulated(n=1000, seed=9)
    model.fit(first["frequency"], first["recency"], first["T"])
    params_first = dict(model.params_)
    model.fit(second["frequency"], second["recency"], second["T"])
    assert model.n_customers_ == 1000 and model.params_ != params_first


# --------------------------------------------------------------------------- errors


def test_all_one_time_buyers_is_a_data_error():
    T = np.linspace(10, 300, 50)
    with pytest.raises(BTYDDataError, match="all 50 customers are one-time buyers"):
        BTYDModel().fit(np.zeros(50), np.zeros(50), T)


def test_too_few_repeat_customers_is_a_data_error():
    n_repeat = MIN_REPEAT_CUSTOMERS - 1
    frequency = np.r_[np.zeros(100), np.ones(n_repeat)]
    recency = np.r_[np.zeros(100), np.full(n_repeat, 20.0)]
    with pytest.raises(BTYDDataError, match=f"only {n_repeat} of {100 + n_repeat} customers made a repeat purchase"):
        BTYDModel().fit(frequency, recency, np.full(frequency.size, 200.0))


@pytest.mark.parametrize(
    ("frequency", "recency", "T", "message"),
    [
        ([1, 2], [10, 400], [100, 300], r"recency > T in 1 rows \(first at row 1"),
        ([0, 2], [5, 40], [100, 300], "recency must be 0 where frequency is 0"),
        ([-1, 2], [0, 40], [100, 300], "frequency: 1 negative values"),
        ([1.5, 2], [10, 40], [100, 300], "frequency: 1 non-integer values"),
        ([1, 2], [np.nan, 40], [100, 300], "recency: 1 missing or infinite values"),
        ([1, 2], [10, 40], [100], "differ in length"),
        ([], [], [], "no customers"),
    ],
)
def test_invalid_summaries_are_data_errors(frequency, recency, T, message):
    with pytest.raises(BTYDDataError, match=message):
        BTYDModel().fit(frequency, recency, T)


DROPOUT_PARAMS = {"bgnbd": ("a", "b"), "mbgnbd": ("a", "b"), "pareto": ("s", "beta")}


@pytest.mark.parametrize("model_name", ["bgnbd", "mbgnbd", "pareto"])
def test_a_likelihood_without_an_optimum_is_a_labelled_answer_not_an_error(model_name):
    # Everybody keeps buying right up to the cutoff: nobody drops out, so the drop-out
    # parameters run off to the boundary. The answer is the no-drop-out limit (the NBD),
    # said so in fit_status_ (this used to raise BTYDFitError and stop the job).
    rng = np.random.default_rng(1)
    T = rng.uniform(100, 700, 500).round()
    frequency = rng.integers(1, 10, 500)
    model = BTYDModel(model=model_name).fit(frequency, T, T)
    dropout, undefined = DROPOUT_PARAMS[model_name]
    assert model.fit_status_ == NO_DROPOUT
    assert "drop-out adds" in model.fit_detail_
    assert model.params_[dropout] == 0.0 and np.isnan(model.params_[undefined])
    assert model.params_["r"] > 0 and model.params_["alpha"] > 0 and np.isfinite(model.log_likelihood_)
    np.testing.assert_array_equal(model.p_alive(frequency, T, T), 1.0)
    # NBD: lambda ~ Gamma(r + x, alpha + T) a posteriori.
    r, alpha = model.params_["r"], model.params_["alpha"] * WEEK
    expected = -np.expm1(-(r + frequency) * np.log1p(30.0 / (alpha + T)))
    np.testing.assert_allclose(model.p_repurchase(30, frequency, T, T), expected, rtol=1e-12)
    np.testing.assert_allclose(model.expected_orders(30, frequency, T, T), 30.0 * (r + frequency) / (alpha + T), rtol=1e-12)


@pytest.mark.parametrize("model_name", ["bgnbd", "mbgnbd", "pareto"])
def test_the_no_dropout_limit_is_where_vanishing_dropout_leads(model_name):
    dropout, undefined = DROPOUT_PARAMS[model_name]
    limit = BTYDModel.from_params({"r": 0.8, "alpha": 5.0, dropout: 0.0, undefined: None}, model=model_name)
    near = BTYDModel.from_params({"r": 0.8, "alpha": 5.0, dropout: 1e-9, undefined: 2.0}, model=model_name)
    x, recency, T = np.array([0.0, 1, 3, 10]), np.array([0.0, 50, 200, 300]), np.array([100.0, 300, 300, 400])
    assert limit.fit_status_ == NO_DROPOUT
    np.testing.assert_allclose(limit.p_alive(x, recency, T), near.p_alive(x, recency, T), rtol=1e-7)
    for t in (7.0, 90.0):
        np.testing.assert_allclose(limit.p_repurchase(t, x, recency, T), near.p_repurchase(t, x, recency, T), rtol=1e-7)
        np.testing.assert_allclose(limit.expected_orders(t, x, recency, T), near.expected_orders(t, x, recency, T), rtol=1e-7)
    simulated = simulate_customers(model_name, limit.params_, np.full(20000, 20.0), horizon=4.0, rng=np.random.default_rng(0))
    predicted = limit.expected_orders(28.0, simulated["frequency"], simulated["recency"] * WEEK, 140.0)
    assert simulated["future_orders"].mean() == pytest.approx(predicted.mean(), rel=0.03)


def test_measurable_dropout_without_an_optimum_takes_the_smallest_penalizer_that_works():
    # One drop-out probability for everybody (a, b -> infinity at a fixed ratio): drop-out is
    # measurable, its spread is not, so no interior optimum; the penalizer ladder picks the fit.
    rng = np.random.default_rng(0)
    T = rng.uniform(4, 30, 1000)
    data = simulate_customers("bgnbd", {"r": 1.0, "alpha": 3.0, "a": 1e6, "b": 9e6}, T, rng=rng, resolution=1 / 7)
    args = (data["frequency"], data["recency"] * WEEK, data["T"] * WEEK)
    model = BTYDModel().fit(*args)
    assert model.fit_status_ == f"penalized {PENALIZER_LADDER[0]:g}"
    assert model.params_ == pytest.approx(BTYDModel(penalizer_coef=PENALIZER_LADDER[0]).fit(*args).params_, rel=1e-9)
    assert "penalized 0.001: the likelihood has no interior optimum" in fit_status_meaning(model.fit_status_)
    assert np.all((model.p_alive(*args) > 0) & (model.p_alive(*args) <= 1))


def test_an_interior_fit_says_so(fitted_on_cdnow):
    assert fitted_on_cdnow.fit_status_ == INTERIOR and fitted_on_cdnow.fit_detail_ == ""


def test_gamma_gamma_without_an_optimum_falls_back_to_a_penalizer_then_to_mean_spend():
    # Every customer spends the same on every order: no spread for q and v to measure.
    frequency = np.arange(40.0) % 4 + 1
    model = GammaGamma().fit(frequency, np.full(40, 25.0))
    assert model.fit_status_ == "penalized 0.001" and model.params_["q"] > 1
    assert model.expected_order_value([0, 2], [0.0, 25.0]) == pytest.approx([25.0, 25.0], rel=0.15)
    # Heavy-tailed spend (a few huge orders): q <= 1 or no optimum at any small penalty.
    rng = np.random.default_rng(0)
    frequency = rng.integers(1, 6, 200).astype(float)
    spend = 10 / rng.uniform(0, 1, 200) ** 1.5
    model = GammaGamma().fit(frequency, spend)
    assert model.fit_status_ == MEAN_SPEND and "mean spend" in fit_status_meaning(MEAN_SPEND)
    assert model.mean_order_value_ == pytest.approx(frequency @ spend / frequency.sum())
    np.testing.assert_allclose(model.expected_order_value([0, 3], [0.0, 42.0]), [model.mean_order_value_, 42.0])
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.expected_order_value(frequency, spend), model.expected_order_value(frequency, spend))


def test_gamma_gamma_data_errors():
    with pytest.raises(BTYDDataError, match="only 3 of 5 customers made a repeat purchase; Gamma-Gamma"):
        GammaGamma().fit([0, 0, 1, 2, 3], [0, 0, 5.0, 6.0, 7.0])
    frequency = np.arange(1, 21)
    spend = np.linspace(5, 50, 20)
    spend[4] = 0.0
    with pytest.raises(BTYDDataError, match="monetary_value: 1 repeat customers have a mean order value <= 0"):
        GammaGamma().fit(frequency, spend)


def test_unfitted_models_and_bad_hyperparameters_say_so():
    with pytest.raises(NotFittedError, match="not fitted yet"):
        BTYDModel().p_alive(1, 10, 100)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        GammaGamma().expected_order_value(1, 10.0)
    data = _simulated(n=500, seed=10)
    with pytest.raises(ValueError, match="model must be one of bgnbd, mbgnbd, pareto"):
        BTYDModel(model="bgbb").fit(data["frequency"], data["recency"], data["T"])


# --------------------------------------------------------------------------- scale


@pytest.mark.slow
def test_fit_on_a_million_simulated_customers_equals_lifetimes():
    from lifetimes import BetaGeoFitter

    rng = np.random.default_rng(0)
    T = rng.integers(0, 730, 1_000_000).astype(float)
    data = simulate_customers("bgnbd", {"r": 0.25, "alpha": 28.0, "a": 0.8, "b": 2.5}, T, resolution=1.0, rng=rng)
    args = (data["frequency"], data["recency"], data["T"])
    ours = BTYDModel(time_unit_days=1.0).fit(*args)
    theirs = BetaGeoFitter().fit(*args)
    assert ours.params_ == pytest.approx(theirs.params_.to_dict(), rel=1e-4)
    assert ours.n_distinct_ < 0.5 * ours.n_customers_
