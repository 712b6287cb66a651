"""What the LightGBM models share: the estimator base, the booster settings, early stopping, Platt.

The customer model (:class:`training.model.RepurchaseModel`), the replenishment model
(:class:`training.replenish.ReplenishmentModel`) and the uplift model
(:class:`training.uplift.UpliftModel`) train their boosters through :func:`booster_params`
and :func:`train_booster`; the first two calibrate a classifier with
:func:`fit_calibrated_booster`: early stopping on one set, Platt scaling on another.

Results do not depend on ``num_threads``: every booster is trained with
``deterministic=True`` and ``force_col_wise=True`` (column-wise histograms are summed one
feature per thread, in row order), so 1 thread and 8 give the same trees
(``tests/test_model.py`` checks 1 against 2).
"""

from __future__ import annotations

import inspect
import os

import lightgbm as lgb
import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression

# Platt scaling is a two-parameter fit on thousands of rows: no regularisation wanted.
PLATT_C = 1e6


def available_threads() -> int:
    """The cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


class Estimator(BaseEstimator):
    """scikit-learn's ``get_params`` / ``set_params`` over the keyword hyperparameters of ``__init__``,
    and loading of models pickled before a hyperparameter existed.

    ``RENAMED`` maps an old attribute name to the hyperparameter that replaced it (``seed`` ->
    ``random_state``); a hyperparameter an old pickle lacks takes its default, which is the
    setting the old code had hard-coded.
    """

    RENAMED: dict[str, str] = {}

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        for old, new in self.RENAMED.items():
            if old in state and new not in state:
                state[new] = state.pop(old)
        for name, parameter in inspect.signature(type(self).__init__).parameters.items():
            if name != "self" and parameter.default is not inspect.Parameter.empty:
                state.setdefault(name, parameter.default)
        super().__setstate__(state)

    def _lgb_params(self, objective: str, **overrides) -> dict:
        """:func:`booster_params` from this estimator's hyperparameters of the same names;
        ``overrides`` replace some of them or add objective-specific settings."""
        settings = {name: getattr(self, name) for name in BOOSTER_SETTINGS}
        return booster_params(objective, **{**settings, **overrides})


BOOSTER_SETTINGS = ("learning_rate", "num_leaves", "min_child_samples", "feature_fraction", "bagging_fraction",
                    "bagging_freq", "lambda_l2", "max_bin", "num_threads", "random_state")
"""The hyperparameters every booster reads (:meth:`Estimator._lgb_params`)."""


def booster_params(
    objective: str,
    *,
    learning_rate: float,
    num_leaves: int,
    min_child_samples: int,
    feature_fraction: float,
    bagging_fraction: float,
    bagging_freq: int,
    lambda_l2: float,
    max_bin: int,
    num_threads: int | None,
    random_state: int,
    **extra,
) -> dict:
    """LightGBM parameters from an estimator's hyperparameters (``num_threads=None``: :func:`available_threads`).

    ``extra`` adds objective-specific settings (``tweedie_variance_power``, monotone constraints).
    """
    params = {
        "objective": objective,
        "learning_rate": learning_rate,
        "num_leaves": num_leaves,
        "min_child_samples": min_child_samples,
        "feature_fraction": feature_fraction,
        "bagging_fraction": bagging_fraction,
        "bagging_freq": bagging_freq,
        "lambda_l2": lambda_l2,
        "max_bin": max_bin,
        "num_threads": available_threads() if num_threads is None else int(num_threads),
        "seed": random_state,
        "deterministic": True,
        "force_col_wise": True,
        "verbose": -1,
    }
    params.update(extra)
    return params


def train_booster(
    params: dict,
    train: tuple,
    valid: tuple | None = None,
    *,
    max_rounds: int,
    early_stopping_rounds: int | None = None,
    feature_name="auto",
) -> lgb.Booster:
    """A booster on ``train = (X, y[, init_score])``; with ``valid``, early-stopped on it.

    ``init_score`` is the raw score boosting starts from (None: LightGBM's own start).
    Without ``valid`` the booster runs ``max_rounds`` rounds.
    """
    X, y, init = (*train, None)[:3]
    train_set = lgb.Dataset(X, y, init_score=init, feature_name=feature_name, free_raw_data=True)
    if valid is None:
        return lgb.train(params, train_set, num_boost_round=max_rounds)
    Xv, yv, init_v = (*valid, None)[:3]
    valid_set = lgb.Dataset(Xv, yv, init_score=init_v, reference=train_set)
    return lgb.train(
        params,
        train_set,
        num_boost_round=max_rounds,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)],
    )


def raw_score(booster: lgb.Booster, X: np.ndarray, init_score: np.ndarray | None = None) -> np.ndarray:
    """The booster's raw score (at its best iteration when it stopped early), plus the start it boosted from."""
    raw = booster.predict(X, raw_score=True)
    return raw if init_score is None else raw + init_score


def _as_columns(raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw)
    return raw.reshape(-1, 1) if raw.ndim == 1 else raw


def fit_platt(raw: np.ndarray, y) -> LogisticRegression:
    """Platt scaling: a logistic regression on the raw score, which keeps the ranking and moves the level.

    ``raw`` may be a matrix whose first column is the raw score and the others further
    inputs weighed beside it (which then do move the ranking).
    """
    return LogisticRegression(C=PLATT_C).fit(_as_columns(raw), y)


def platt_probability(calibrator: LogisticRegression, raw: np.ndarray) -> np.ndarray:
    """The calibrated probability for raw scores, or the matrix it was fitted on (:func:`fit_platt`)."""
    return calibrator.predict_proba(_as_columns(raw))[:, 1]


def fit_calibrated_booster(
    params: dict,
    train: tuple,
    stop: tuple,
    calibrate: tuple,
    *,
    max_rounds: int,
    early_stopping_rounds: int,
    feature_name="auto",
    calibration_inputs=None,
) -> tuple[lgb.Booster, LogisticRegression]:
    """A classifier early-stopped on ``stop`` and Platt-calibrated on ``calibrate`` (each ``(X, y[, init_score])``).

    Both models pass disjoint halves of their latest training origin (by a hash of the
    customer or pair): the half that chose the number of rounds does not also set the level.
    ``calibration_inputs`` turns the raw scores of ``calibrate`` into what the calibrator reads
    (a matrix with more columns); by default the raw score alone.
    """
    booster = train_booster(params, train, stop, max_rounds=max_rounds, early_stopping_rounds=early_stopping_rounds,
                            feature_name=feature_name)
    X, y, init = (*calibrate, None)[:3]
    raw = raw_score(booster, X, init)
    return booster, fit_platt(raw if calibration_inputs is None else calibration_inputs(raw), y)
