"""A composite model built from known parameters in about 2 s, for the tests that are not about fitting.

A real :class:`training.model.RepurchaseModel` fit on the 3,000-customer synthetic log costs
about 12 s of CPU: five training origins (the season origin included), a BG/NBD and a
Gamma-Gamma fit at each and at the cutoff, an MBG/NBD fit, and boosters of up to 1,334 rounds
at the small-data learning rate. This one costs about 1.9 s, mostly the features of its two
origins and the cutoff. Tests of scoring, serving, targeting, the registry, the pyfunc and uplift only
need a model with the whole fitted state and sane answers. :func:`known_repurchase_model` gives
them one:

* every BTYD part (BG/NBD at each origin and at the cutoff, the MBG/NBD behind ``p_alive``,
  Gamma-Gamma) is set from the known parameters below instead of fitted;
* the boosters, the calibrator and the feature spec are learned by the model's own ``fit`` on
  two origins, for a few rounds at the ordinary learning rate.

It is a plain ``RepurchaseModel`` (it pickles, logs to MLflow and serves like any other); only
its hyperparameters and the BTYD parameters differ from a real fit's. Tests about fitting itself
(BTYD recovery of published parameters, backtest metrics, thin data, seasons, the whole job,
the notebooks) fit for real.
"""

from __future__ import annotations

from unittest import mock

from training.btyd import BTYDModel, GammaGamma
from training.model import RepurchaseModel

# BG/NBD, MBG/NBD (per week) and Gamma-Gamma as fitted on ``generate_order_log(3000, seed=7)``
# (lines merged) at 2025-06-30, the session fixtures' log and cutoff; every fit interior.
SYNTH_BGNBD = {"r": 0.7779, "alpha": 4.958, "a": 0.7282, "b": 10.73}
SYNTH_MBGNBD = {"r": 1.534, "alpha": 8.523, "a": 0.4688, "b": 3.657}
SYNTH_GAMMA_GAMMA = {"p": 1.455, "q": 5.709, "v": 564.1}

# Two origins (the fewest that train the boosters), no season origin, and a fixed number of
# rounds at LightGBM's ordinary rate: the boosters cost a fraction of a second.
FAST_SETTINGS = dict(n_origins=2, step_days=30, same_season=False, small_data_rows=0)


def known_repurchase_model(
    orders,
    cutoff,
    *,
    horizon_days: int = 60,
    rounds: int = 30,
    bgnbd: dict = SYNTH_BGNBD,
    mbgnbd: dict = SYNTH_MBGNBD,
    gamma_gamma: dict = SYNTH_GAMMA_GAMMA,
    **params,
) -> RepurchaseModel:
    """A ``RepurchaseModel`` trained at ``cutoff`` whose BTYD parts have the given parameters.

    Parameters
    ----------
    orders : pandas.DataFrame
        Merged orders; nothing after ``cutoff`` is read.
    cutoff : date-like
        The training cutoff.
    horizon_days : int
        The model's horizon.
    rounds : int
        Boosting rounds of each booster (early stopping may end one sooner).
    bgnbd, mbgnbd, gamma_gamma : dict
        BG/NBD (``r``, ``alpha``, ``a``, ``b`` per week: at every origin and at the cutoff),
        MBG/NBD (behind ``p_alive``) and Gamma-Gamma (``p``, ``q``, ``v``) parameters.
    **params
        Other ``RepurchaseModel`` hyperparameters (``boost_from_btyd``, ``num_threads``, ...).
    """
    def given_btyd(self, features):
        return BTYDModel.from_params(bgnbd), GammaGamma.from_params(gamma_gamma)

    def given_alive_model(self, features):
        return BTYDModel.from_params(mbgnbd, model="mbgnbd")

    model = RepurchaseModel(horizon_days=horizon_days, max_rounds=rounds, early_stopping_rounds=rounds,
                            **{**FAST_SETTINGS, **params})
    # The patches live only while fitting (the fitted model holds no reference to them);
    # patch.object refuses a name the model no longer has, so a rename cannot go unnoticed.
    with mock.patch.object(RepurchaseModel, "_fit_btyd", given_btyd), \
            mock.patch.object(RepurchaseModel, "_fit_alive_model", given_alive_model):
        return model.fit(orders, cutoff)
