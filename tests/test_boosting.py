"""The LightGBM helper the three models share: answers independent of threads, the estimator base."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from training.boosting import (
    Estimator,
    available_threads,
    booster_params,
    fit_calibrated_booster,
    platt_probability,
    raw_score,
    train_booster,
)

SETTINGS = dict(learning_rate=0.1, num_leaves=15, min_child_samples=20, feature_fraction=0.8, bagging_fraction=0.8,
                bagging_freq=1, lambda_l2=1.0, max_bin=63, random_state=0)


def _data(n: int = 6000, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 12)).astype(np.float32)
    logit = X[:, 0] - 0.5 * X[:, 1] + 0.3 * X[:, 2] * X[:, 3]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    counts = rng.poisson(np.exp(0.3 * X[:, 0]))
    return X, y, counts, logit


@pytest.mark.parametrize(
    "objective, extra",
    [("binary", {}), ("poisson", {}), ("tweedie", {"tweedie_variance_power": 1.5}),
     ("binary", {"monotone_constraints": [0] * 11 + [1], "monotone_constraints_method": "intermediate"})],
)
def test_one_thread_and_two_give_the_same_booster(objective, extra):
    """Subsampled rows and columns, a start score, early stopping: still the same trees at 1 and 2 threads."""
    X, y, counts, logit = _data()
    target = y if objective == "binary" else counts
    start = 0.5 * logit  # as the customer model starts from the BTYD answer
    train, valid = slice(0, 4000), slice(4000, None)
    boosters = [
        train_booster(booster_params(objective, num_threads=threads, **SETTINGS, **extra),
                      (X[train], target[train], start[train]), (X[valid], target[valid], start[valid]),
                      max_rounds=200, early_stopping_rounds=20)
        for threads in (1, 2)
    ]
    assert boosters[0].params["num_threads"] == 1 and boosters[1].params["num_threads"] == 2
    assert boosters[0].best_iteration == boosters[1].best_iteration > 1
    assert boosters[0].model_to_string().split("parameters:")[0] == boosters[1].model_to_string().split("parameters:")[0]
    np.testing.assert_array_equal(boosters[0].predict(X, raw_score=True), boosters[1].predict(X, raw_score=True))


def test_a_calibrated_booster_stops_on_one_half_and_calibrates_on_the_other():
    X, y, _, logit = _data()
    params = booster_params("binary", num_threads=None, **SETTINGS)
    assert params["num_threads"] == available_threads() >= 1
    start = 0.5 * logit
    booster, calibrator = fit_calibrated_booster(
        params, (X[:3000], y[:3000], start[:3000]), (X[3000:4500], y[3000:4500], start[3000:4500]),
        (X[4500:], y[4500:], start[4500:]), max_rounds=200, early_stopping_rounds=20,
    )
    raw = raw_score(booster, X[4500:], start[4500:])
    np.testing.assert_allclose(raw, booster.predict(X[4500:], raw_score=True, num_iteration=booster.best_iteration)
                               + start[4500:])
    p = platt_probability(calibrator, raw)
    assert ((p > 0) & (p < 1)).all()
    assert np.corrcoef(p, raw)[0, 1] > 0.99  # Platt keeps the ranking
    assert abs(p.mean() - y[4500:].mean()) < 0.01  # and fits the level of the set it saw


class _Old(Estimator):
    RENAMED = {"seed": "random_state"}

    def __init__(self, *, rounds: int = 10, num_threads: int | None = None, random_state: int = 0):
        self.rounds = rounds
        self.num_threads = num_threads
        self.random_state = random_state


def test_a_pickle_without_a_new_hyperparameter_loads_with_its_default_and_a_renamed_one_under_its_new_name():
    old = _Old(rounds=3)
    del old.num_threads, old.random_state
    old.seed, old.fitted_ = 7, "kept"
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.get_params() == {"rounds": 3, "num_threads": None, "random_state": 7}
    assert loaded.fitted_ == "kept" and not hasattr(loaded, "seed")
    assert loaded.set_params(num_threads=1).get_params()["num_threads"] == 1
