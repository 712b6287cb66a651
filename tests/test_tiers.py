"""Member tiers: the next-year orders and spend distributions, tier columns, the tiers file, the backtest block."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.common.errors import InputError
from training.btyd import BTYDModel, GammaGamma
from training.tiers import (
    TIER_COLUMNS,
    Tiers,
    expected_macro_f1,
    load_tiers,
    macro_f1_weights,
    next_year_tier_probabilities,
    parse_tiers,
    tier_columns,
)

CDNOW_PARAMS = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}  # per week (FHL 2005)
GG_PARAMS = {"p": 6.25, "q": 3.74, "v": 15.44}  # CDNOW sample (lifetimes' docs)
HISTORY = {"frequency": np.array([0.0, 1.0, 4.0, 15.0, 2.0]),
           "recency": np.array([0.0, 30.0, 200.0, 250.0, 20.0]),
           "T": np.array([100.0, 200.0, 260.0, 260.0, 300.0])}


@pytest.mark.parametrize("model", ["bgnbd", "mbgnbd"])
@pytest.mark.parametrize("t_days", [30.0, 365.0])
def test_orders_distribution_agrees_with_the_models_own_mean_and_p_repurchase(model, t_days):
    btyd = BTYDModel.from_params(CDNOW_PARAMS, model=model)
    pmf = btyd.orders_distribution(t_days, *HISTORY.values(), max_orders=300)
    assert np.all(pmf >= 0)
    np.testing.assert_allclose(pmf.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(pmf @ np.arange(301), btyd.expected_orders(t_days, *HISTORY.values()), rtol=1e-6)
    np.testing.assert_allclose(1.0 - pmf[:, 0], btyd.p_repurchase(t_days, *HISTORY.values()), rtol=1e-9)


def test_orders_distribution_without_drop_out_is_the_negative_binomial():
    from scipy.stats import nbinom

    btyd = BTYDModel.from_params({"r": 0.5, "alpha": 10.0, "a": 0.0, "b": float("nan")})
    pmf = btyd.orders_distribution(70.0, [3.0], [50.0], [80.0], max_orders=60)
    # lambda ~ Gamma(r + x, alpha + T) in weeks: T = 80 / 7, t = 10 weeks.
    expected = nbinom.pmf(np.arange(60), 3.5, (10.0 + 80 / 7) / (10.0 + 80 / 7 + 10.0))
    np.testing.assert_allclose(pmf[0, :60], expected, rtol=1e-10)


def test_orders_distribution_matches_a_simulation_of_the_posterior():
    """Draw lambda, p from their posteriors given alive, simulate the next 52 weeks, compare with the PMF."""
    rng = np.random.default_rng(0)
    r, alpha, a, b = CDNOW_PARAMS.values()
    x, T, t = 4.0, 30.0, 52.0
    btyd = BTYDModel.from_params(CDNOW_PARAMS)
    p_alive = btyd.p_alive(x, 25.0 * 7, T * 7)
    n = 200_000
    lam = rng.gamma(r + x, 1.0 / (alpha + T), n)
    p = rng.beta(a, b + x, n)
    purchases = rng.poisson(lam * t)
    stops_after = rng.geometric(p)  # purchases until the one after which the customer leaves
    alive = rng.random(n) < p_alive
    counts = np.where(alive, np.minimum(purchases, stops_after), 0)
    pmf = btyd.orders_distribution(t * 7, x, 25.0 * 7, T * 7, max_orders=40)[0]
    simulated = np.bincount(counts, minlength=41)[:6] / n
    np.testing.assert_allclose(pmf[:6], simulated, atol=4e-3)


def test_spend_tail_matches_a_simulation_of_gamma_gamma():
    rng = np.random.default_rng(1)
    gg = GammaGamma.from_params(GG_PARAMS)
    p, q, v = GG_PARAMS.values()
    x, m, orders = 3.0, 40.0, 4
    nu = rng.gamma(q + p * x, 1.0 / (v + x * m), 200_000)
    spend = rng.gamma(p * orders, 1.0 / nu)
    amounts = np.array([50.0, 150.0, 300.0])
    tail = gg.p_spend_at_least(amounts, [0, orders], [x], [m])
    np.testing.assert_allclose(tail[0], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(tail[1], [(spend >= a).mean() for a in amounts], atol=4e-3)
    assert np.all(np.diff(tail[1]) < 0)  # a higher bar is reached less often


def test_expected_macro_f1_of_certain_probabilities_is_the_macro_f1():
    from sklearn.metrics import f1_score

    truth = np.array([0, 0, 0, 1, 1, 2, 0, 2])
    predicted = np.array([0, 1, 0, 1, 0, 2, 0, 0])
    certain = np.eye(3)[truth]
    assert expected_macro_f1(certain, predicted) == pytest.approx(f1_score(truth, predicted, average="macro"))


def test_macro_f1_weights_name_rare_tiers_and_earn_more_macro_f1_than_the_median():
    """Calibrated probabilities of a population with a rare top tier: tiers drawn from them are the truth."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(5)
    probabilities = rng.dirichlet([6.0, 1.0, 0.3], size=20_000)
    truth = np.array([rng.choice(3, p=row) for row in probabilities])
    weights = macro_f1_weights(probabilities[:2_000])  # a reference sample, as the model keeps one
    assert weights[0] == 1 and weights[2] > 1
    tiers = Tiers(("silver", "gold", "diamond"), (0.0, 100.0, 300.0))
    median = tiers.index_of_names(tier_columns(tiers, np.zeros(len(truth)), probabilities)["predicted_tier"])
    chosen = tiers.index_of_names(tier_columns(tiers, np.zeros(len(truth)), probabilities, weights)["predicted_tier"])
    assert (chosen == 2).sum() > (median == 2).sum()
    assert f1_score(truth, chosen, average="macro") > f1_score(truth, median, average="macro") + 0.01
    np.testing.assert_array_equal(macro_f1_weights(probabilities[:2_000]), weights)  # deterministic


def test_the_model_keeps_a_reference_for_the_weights_and_old_models_use_the_median(fitted_model, synth_orders):
    features = fitted_model.point_in_time_features(synth_orders, "2025-06-30")
    reference = fitted_model.spec_.tier_reference
    assert 0 < len(reference["frequency"]) <= 2_000
    weights = fitted_model.tier_weights(load_tiers())
    assert weights is fitted_model.tier_weights(load_tiers())  # computed once per tiers
    alone = fitted_model.score_features(features.head(1), "2025-06-30")
    together = fitted_model.score_features(features, "2025-06-30")
    assert alone["predicted_tier"].iloc[0] == together["predicted_tier"].iloc[0]
    import copy
    import dataclasses

    old = copy.copy(fitted_model)
    old.spec_ = dataclasses.replace(fitted_model.spec_, tier_reference=None)
    assert old.tier_weights(load_tiers()) is None
    median = old.tier_columns(features)["predicted_tier"]
    assert (median != together["predicted_tier"].to_numpy()).any()  # the weights name other tiers than the median
    assert (together["predicted_tier"] != "silver").sum() > (median != "silver").sum()


def test_tier_columns_from_known_probabilities():
    tiers = Tiers(("silver", "gold", "diamond"), (0.0, 100.0, 300.0))
    current = np.array([50.0, 150.0, 400.0, 0.0])
    probabilities = np.array([
        [0.7, 0.2, 0.1],   # silver: up with 0.3; median silver
        [0.3, 0.3, 0.4],   # gold: P(>= diamond) 0.4, P(< gold) 0.3; median gold (P(>= gold) = 0.7)
        [0.1, 0.45, 0.45],  # diamond: down with 0.55; median gold (P(>= diamond) = 0.45 < 0.5)
        [0.2, 0.2, 0.6],   # silver now, diamond most likely and median
    ])
    out = tier_columns(tiers, current, probabilities)
    assert list(out["member_tier"]) == ["silver", "gold", "diamond", "silver"]
    assert list(out["predicted_tier"]) == ["silver", "gold", "gold", "diamond"]
    np.testing.assert_allclose(out["p_upgrade"], [0.3, 0.4, 0.0, 0.8])
    np.testing.assert_allclose(out["p_downgrade"], [0.0, 0.3, 0.55, 0.0])
    np.testing.assert_allclose(out["spend_to_next_tier"], [50.0, 150.0, np.nan, 100.0])


def test_tier_probabilities_are_a_distribution_and_move_with_the_thresholds():
    btyd, gg = BTYDModel.from_params(CDNOW_PARAMS, model="mbgnbd"), GammaGamma.from_params(GG_PARAMS)
    monetary = np.array([0.0, 30.0, 45.0, 60.0, 25.0])
    args = (*HISTORY.values(), monetary, np.full(5, 35.0))
    low = next_year_tier_probabilities(Tiers(("a", "b"), (0.0, 100.0)), btyd, gg, *args)
    high = next_year_tier_probabilities(Tiers(("a", "b"), (0.0, 500.0)), btyd, gg, *args)
    np.testing.assert_allclose(low.sum(axis=1), 1.0)
    assert np.all(low >= 0) and np.all(high[:, 1] <= low[:, 1] + 1e-12)
    # The customer with 15 repeat purchases is far likelier to spend 100 than the one-time buyer.
    assert low[3, 1] > 0.8 > 0.2 > low[0, 1]
    # Without Gamma-Gamma every order is worth the given order value: >= 100 means >= 3 orders of 35.
    orders = next_year_tier_probabilities(Tiers(("a", "b"), (0.0, 3.0), basis="orders"), btyd, None, *args)
    by_value = next_year_tier_probabilities(Tiers(("a", "b"), (0.0, 100.0)), btyd, None, *args)
    np.testing.assert_allclose(orders, by_value, atol=1e-12)


def test_scores_carry_the_tier_columns(fitted_model, synth_orders):
    scores = fitted_model.score(synth_orders, "2025-06-30")
    assert list(scores.columns[-len(TIER_COLUMNS):]) == list(TIER_COLUMNS)
    default = load_tiers()
    assert set(scores["member_tier"]) <= set(default.names) and set(scores["predicted_tier"]) <= set(default.names)
    for column in ("p_upgrade", "p_downgrade"):
        assert scores[column].between(0.0, 1.0).all()
    top = scores["member_tier"] == default.names[-1]
    assert (scores.loc[top, "p_upgrade"] == 0).all() and scores.loc[top, "spend_to_next_tier"].isna().all()
    assert (scores.loc[scores["member_tier"] == default.names[0], "p_downgrade"] == 0).all()
    assert (scores.loc[~top, "spend_to_next_tier"] > 0).all()
    # A scoring-time option: higher thresholds, the same model, fewer members at the top.
    strict = parse_tiers({"tiers": [{"name": "silver", "min": 0}, {"name": "gold", "min": 1000},
                                    {"name": "diamond", "min": 5000}]})
    features = fitted_model.point_in_time_features(synth_orders, "2025-06-30")
    again = fitted_model.score_features(features, "2025-06-30", tiers=strict)
    assert (again["member_tier"] == "diamond").sum() < (scores["member_tier"] == "diamond").sum()
    pd.testing.assert_series_equal(again["p_repurchase"], scores["p_repurchase"])


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tiers.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, match",
    [
        ("tiers: [{name: silver, min: 0}]", "at least two tiers"),
        ("tiers: [{name: silver, min: 10}, {name: gold, min: 100}]", "must start at 'min: 0'"),
        ("tiers: [{name: silver, min: 0}, {name: gold, min: 0}]", "must be above the tier before it"),
        ("tiers: [{name: silver, min: 0}, {name: silver, min: 5}]", "used twice"),
        ("tiers: [{name: silver, min: 0}, {name: gold, min: lots}]", "'min' must be a number >= 0"),
        ("tiers: [{name: silver, min: 0}, {name: gold}]", "exactly 'name' and 'min'"),
        ("basis: visits\ntiers: [{name: a, min: 0}, {name: b, min: 1}]", "basis 'visits' is not one of"),
        ("levels: []", "unknown key 'levels'"),
        ("tiers: [{name: a, min: 0}, {name: b, min: 1}", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("", "got nothing"),
    ],
)
def test_bad_tiers_files_are_one_clear_error(tmp_path, text, match):
    with pytest.raises(InputError, match=match) as caught:
        load_tiers(write(tmp_path, text))
    assert "\n" not in str(caught.value) and str(caught.value).startswith(str(tmp_path / "tiers.yaml"))


def test_default_tiers_ship_in_the_training_package():
    tiers = load_tiers()
    assert tiers.names == ("silver", "gold", "diamond") and tiers.thresholds[0] == 0 and tiers.basis == "spend"
    assert (Path(__import__("training").__file__).parent / "default_tiers.yaml").is_file()


def test_score_with_a_bad_tiers_file_is_one_line_exit_2(tmp_path):
    tiers = write(tmp_path, "tiers: [{name: silver, min: 0}, {name: gold, min: -5}]")
    out = tmp_path / "scores.parquet"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("repurchase")), "score", "--orders", "cdnow-sample", "--as-of",
         "1997-06-30", "--out", str(out), "--tiers", str(tiers)],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "tier 2 'gold': 'min' must be a number >= 0" in lines[0]
    assert "Traceback" not in proc.stderr and not out.exists()


def test_serve_with_a_bad_tiers_file_is_one_line_exit_2_before_any_server(tmp_path):
    from typer.testing import CliRunner

    from serving.cli import app

    tiers = write(tmp_path, "tiers: [{name: silver, min: 0}, {name: gold, min: -5}]")
    result = CliRunner().invoke(app, ["serve", "--tiers", str(tiers), "--snapshot", str(tmp_path / "none.parquet")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "tier 2 'gold': 'min' must be a number >= 0" in lines[0]


def test_tiers_block_counts_against_the_year_ahead():
    from training.backtest import tiers_block

    tiers = Tiers(("silver", "gold"), (0.0, 100.0))
    cutoff = pd.Timestamp("2024-12-31")
    orders = pd.DataFrame({
        "customer_id": ["a", "a", "b", "c", "c"],
        "order_ts": pd.to_datetime(["2025-03-01", "2025-06-01", "2025-02-01", "2025-12-31", "2026-01-02"]),
        "amount": [60.0, 60.0, 20.0, 150.0, 500.0],  # c's second order is after the year
    })
    predicted = {"member_tier": np.array(["gold", "gold", "silver", "silver"], dtype=object),
                 "predicted_tier": np.array(["gold", "silver", "gold", "silver"], dtype=object),
                 "p_upgrade": np.zeros(4), "p_downgrade": np.zeros(4)}
    block = tiers_block(orders, cutoff, ["a", "b", "c", "d"], predicted, tiers)
    # Truth: a gold (120), b silver (20), c gold (150 within the year), d silver (no orders).
    assert block["accuracy"] == 1.0 and block["macro_f1"] == 1.0
    assert block["persistence_accuracy"] == 0.5 and block["persistence_macro_f1"] == 0.5  # F1 0.5 in each tier
    assert block["share"]["actual"] == {"silver": 0.5, "gold": 0.5}
    assert block["upgraded"] == 0.25 and block["downgraded"] == 0.25  # c up, b down


@pytest.mark.slow
def test_backtest_a_year_before_the_end_has_a_tiers_block(synth_orders):
    from known_models import FAST_SETTINGS
    from training.backtest import run_backtest

    short = {**FAST_SETTINGS, "max_rounds": 30, "early_stopping_rounds": 30}  # the block's shape, not the model's quality
    report = run_backtest(synth_orders, "2024-12-31", 90, model_params=short).report
    block = report["tiers"]
    assert set(block) >= {"accuracy", "macro_f1", "persistence_accuracy", "persistence_macro_f1"}
    assert 0 < block["macro_f1"] <= 1 and 0 < block["persistence_macro_f1"] <= 1
    assert "tiers" not in run_backtest(synth_orders, "2025-06-30", 90, with_model=False).report
