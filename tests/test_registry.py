"""MLflow: runs, the pyfunc, the registry's champion/challenger rule, identical reloads."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from training.registry import (
    CHAMPION,
    REGISTERED_MODEL,
    RepurchasePyfunc,
    beats,
    champion_version,
    load_scorer,
    log_run,
    takes_tiers,
)
from training.tiers import TiersError, parse_tiers, tiers_text

STRICT_TIERS = parse_tiers({"basis": "spend", "tiers": [{"name": "basic", "min": 0}, {"name": "plus", "min": 500},
                                                        {"name": "elite", "min": 2500}]})


def report(auc: float, brier: float) -> dict:
    return {"cutoff": "2025-06-30", "horizon_days": 60, "n_customers": 100, "base_rate": 0.3,
            "model": {"auc": auc, "brier": brier}, "bgnbd": {"auc": 0.7}}


def test_promotion_rule():
    assert beats(report(0.80, 0.10), report(0.79, 0.10))
    assert not beats(report(0.80, 0.12), report(0.79, 0.10))  # better ranking, worse probabilities
    assert not beats(report(0.79, 0.10), report(0.79, 0.10))  # a tie keeps the champion
    other_split = {**report(0.9, 0.1), "cutoff": "2025-05-31"}
    with pytest.raises(ValueError, match="same backtest split"):
        beats(other_split, report(0.79, 0.10))


def test_the_pyfunc_scores_the_tiers_it_is_given_as_batch_does(fitted_model, synth_orders):
    pyfunc = RepurchasePyfunc()
    pyfunc.model = fitted_model
    features = fitted_model.features(synth_orders, "2025-09-30").head(300)
    given = pyfunc.predict(None, features, params={"as_of": "2025-09-30", "model_version": "7",
                                                   "tiers": tiers_text(STRICT_TIERS)})
    expected = fitted_model.score_features(features, "2025-09-30", "7", tiers=STRICT_TIERS)
    pd.testing.assert_frame_equal(given, expected)
    assert set(given["member_tier"]) <= set(STRICT_TIERS.names) and given["member_tier"].nunique() > 1
    shipped = pyfunc.predict(None, features, params={"as_of": "2025-09-30", "model_version": "7", "tiers": ""})
    pd.testing.assert_frame_equal(shipped, fitted_model.score_features(features, "2025-09-30", "7"))
    with pytest.raises(TiersError, match=r"^params.tiers: tier 2 'plus': 'min' 0 must be above"):
        pyfunc.predict(None, features, params={"tiers": "tiers: [{name: basic, min: 0}, {name: plus, min: 0}]"})


@pytest.mark.slow
def test_register_champion_then_challenger_and_reload_identically(mlflow_store, fitted_model, synth_orders, tmp_path):
    example = fitted_model.features(synth_orders, "2025-06-30").head(5)
    first = log_run(fitted_model, report(0.80, 0.10), params={"job": "test"}, example_features=example, register=True)
    assert (first.version, first.alias) == ("1", CHAMPION)
    second = log_run(fitted_model, report(0.79, 0.11), params={"job": "test"}, example_features=example,
                     register=True, champion_report=report(0.80, 0.10))
    assert (second.version, second.alias) == ("2", "challenger")
    assert champion_version() == "1"
    third = log_run(fitted_model, report(0.82, 0.09), params={"job": "test"}, example_features=example,
                    register=True, champion_report=report(0.80, 0.10))
    assert third.alias == CHAMPION and champion_version() == "3"

    model, version = load_scorer(f"models:/{REGISTERED_MODEL}@{CHAMPION}")
    assert version == "3"
    expected = fitted_model.score(synth_orders, "2025-09-30", model_version="3")
    pd.testing.assert_frame_equal(model.score(synth_orders, "2025-09-30", model_version=version), expected)

    pyfunc = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}@{CHAMPION}")
    features = fitted_model.features(synth_orders, "2025-09-30")
    served = pyfunc.predict(features, params={"as_of": "2025-09-30", "model_version": "3"})
    pd.testing.assert_frame_equal(served.reset_index(drop=True), expected)
    assert pyfunc.metadata.get_input_schema() is not None and pyfunc.metadata.get_output_schema() is not None
    # Member tiers travel as the pyfunc's param, through MLflow's params schema.
    assert takes_tiers(f"models:/{REGISTERED_MODEL}@{CHAMPION}")
    tiered = pyfunc.predict(features, params={"as_of": "2025-09-30", "model_version": "3", "tiers": tiers_text(STRICT_TIERS)})
    pd.testing.assert_frame_equal(tiered.reset_index(drop=True),
                                  fitted_model.score_features(features, "2025-09-30", "3", tiers=STRICT_TIERS))
    unsigned = log_run(fitted_model, report(0.5, 0.2), params={"job": "test"})  # no example: no params schema
    assert not takes_tiers(unsigned.model_uri)
    assert not (tmp_path.parent / "mlruns").exists() or tmp_path.parent == tmp_path


def test_missing_champion_is_a_clear_input_error(mlflow_store):
    from features.common.errors import InputError

    with pytest.raises(InputError, match=r"cannot be loaded.*repurchase train --orders SRC --cutoff DATE --register"):
        load_scorer()
