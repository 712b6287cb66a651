"""The composite repurchase model: point-in-time features, BTYD, LightGBM and calibration.

How it learns (all temporal, never a random split over time)
-------------------------------------------------------------
Given orders and a training cutoff ``C`` with horizon ``H``, the model builds features and
labels at ``n_origins`` earlier origins ``c_1 < ... < c_k = C - H`` (``step_days`` apart),
whose labels ``(c, c + H]`` all end on or before ``C`` (or the last order, when the log ends
before ``C``). At each origin a BG/NBD model is
fitted on that origin's own BTYD summary (so no origin sees population information from
after it) and its answers (``btyd_p_alive``, ``btyd_p_repurchase``, ``btyd_expected_orders``)
join the features.

* Origins ``c_1 .. c_{k-1}`` train the LightGBM models; the latest origin ``c_k`` is held
  out: one half of its customers (by a hash of the id) drives early stopping, the other
  half fits the calibrator. Calibration is Platt scaling on the booster's log-odds, which
  keeps the ranking (AUC) of the booster and moves its level to what the latest origin saw.
* Features that are constant within every origin (the cutoff's month, days to the next
  sales day) only tell origins apart; with a handful of origins they would let the
  booster memorise each origin's base rate, so they are left out of the models.
* Seasons (``same_season``, on by default): the horizon to predict may hold a peak (11.11,
  6.18, a gift shop's Q4) that the latest origin's label window does not, or the other way
  round. When the history reaches it, the origin ``C - 364`` days (52 weeks, the same
  weekday; :func:`season_origin`) joins the stacked origins: its label window is the
  horizon's own season a year earlier. Its customers in the early-stopping half (by the same
  hash) train the boosters; the other half joins the latest origin's calibration half, so
  the Platt level is set by both the latest origin (today's customers) and last year's same
  season (a year-old population). No peak is detected and no date is hard-coded: any log
  with a year of history gets it; it matters most where the horizon and the latest origin's
  window differ in season (one holds a peak, or a quiet spell, the other not). Over ten
  synthetic splits the pooled calibrator missed the base rate by less than the latest
  origin alone in eight, and left calibration worse than before less often than the season
  origin alone (benchmarks/README.md, "Seasons"). The origin a year back carries no
  feature of its own: a feature constant within an origin is dropped (above).
  ``origin_calibration_`` keeps, per origin, its base rate against the calibrated model's
  mean probability, which the backtest reports as ``calibration_by_origin``.
* Timing: a classifier over (customer, h) pairs, h on a grid up to H, with a monotone
  constraint on h, gives F(h) = P(next order within h days). Its shape is kept and its
  level set by the calibrated horizon probability: F(h) = F_raw(h) / F_raw(H) x p_repurchase.
  Quantiles p10/p50/p90 are read off it by linear interpolation; a quantile the customer
  does not reach within the horizon is NaN ("not expected within the horizon"), never a
  made-up date.
* ``expected_orders``: LightGBM Poisson regression of the order count over the horizon.
  ``expected_revenue``: LightGBM Tweedie regression (variance power 1.5) of the revenue,
  fit for the many customers who spend nothing.
* ``clv``: BTYD CLV (BG/NBD x Gamma-Gamma, discounted) over ``clv_horizon_days``.
* ``churn_risk`` = 1 - ``p_repurchase``: the probability of no order within the horizon.
* ``p_alive``: the probability that the customer has not dropped out (:meth:`RepurchaseModel.p_alive`).
  MBG/NBD's P(alive | x, t_x, T) (Batislam et al. 2007), fitted at the training cutoff on
  the same compressed statistics as BG/NBD (``alive_model_``). BG/NBD cannot answer this
  question for one-time buyers: it lets a customer drop out only after a repeat purchase,
  so its P(alive) is 1 for everyone without one, however long ago the only order was (on
  CDNOW as of 1998-06-30, 12,054 customers; MBG/NBD gives them 0.29 on average). MBG/NBD
  lets every purchase, the first included, be the last, so a one-time buyer's p_alive
  falls as the order ages. It is closed-form: scoring a million customers costs
  milliseconds. ``p_alive`` is then raised to ``p_repurchase`` where that is higher (an
  order within the horizon needs a customer who is alive), so 1 - p_alive <= churn_risk;
  ``lifecycle_stage`` calls a customer churned only when p_alive < 0.5
  (``training.segments``). When MBG/NBD finds no measurable drop-out (a young log, fit
  status "boundary: no measurable drop-out yet") nobody has been seen to leave, p_alive
  is 1 for everyone and nobody is churned; the report, the CLI and MLflow say so. With
  ``btyd_model`` "mbgnbd" or "pareto" that model gives p_alive. BG/NBD's own P(alive)
  remains the model input ``btyd_p_alive``; models pickled before ``alive_model_`` existed
  fall back to it (one-time buyers then read 1 and are never churned; the report says so).
* ``rfm_r``, ``rfm_f``, ``rfm_m``: the RFM scores of ``training.segments`` (R and F on fixed
  scales, M against the training population's spend), which ``rfm_segment`` follows from.
  The population ranks ``rfm_rank_*`` are model inputs only.

At scoring time the BG/NBD and Gamma-Gamma fitted at the training cutoff ``C`` supply the
BTYD features, so one customer can be scored alone (online) exactly as in batch.

When the data are thin
----------------------
The origins adapt to the history (:func:`training_origins`): each needs
``MIN_ORIGIN_HISTORY_DAYS`` of orders before it and ``MIN_ORIGIN_REPEAT_BUYERS`` repeat
buyers; when the user's ``step_days`` leaves fewer than two, the step shrinks (down to
``MIN_STEP_DAYS``) to fit two in. With fewer than two usable origins the model is
*BTYD-only* (``btyd_only_``; ``btyd_only_reason_`` says what more data would unlock): the
same score contract from BG/NBD and Gamma-Gamma alone: ``p_repurchase`` is BG/NBD's
P(at least one order in (T, T+H]), ``expected_orders`` its expectation, the next-order
quantiles are read off its CDF P(an order within h days) on the same grid (NaN where not
reached within H), ``expected_revenue`` is expected orders x Gamma-Gamma's expected order
value (the customer's mean order value where Gamma-Gamma cannot be fitted).

Two more rules for thin data:

* Below ``small_data_rows`` training rows (``small_data_recency``) the calibrator is a
  logistic regression on the booster's raw score *and* log(1 + days since the last order),
  fitted on the same calibration half. On a young shop the trees learn from origins with
  a month or two of history, so days since the last order at the cutoff run past anything
  they saw, and BG/NBD's start carries no recency when it finds no drop-out yet; recency
  alone then out-ranked both. The log is scale-free, so its weight at the latest origin
  carries over to the longer history at the cutoff.
* ``check_latest_origin``: the trained model is compared with BG/NBD (fitted at that
  origin) on the latest origin's calibration half, the customers that neither trained nor
  early-stopped the boosters (``latest_origin_check_``). When it ranks no better there (AUC),
  the model is BTYD-only and ``btyd_only_reason_`` gives both AUCs. The calibrator was fitted
  on those customers, which flatters the model by its one recency weight at most.
"""

from __future__ import annotations

import datetime as dt
import weakref
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.common.errors import InputError
from features.orders import OPTIONAL_DEFAULTS
from features.pipeline import LABELS, build_features, build_training_frame, mix_values
from features.timecut import as_day, until
from training.boosting import (
    Estimator,
    fit_calibrated_booster,
    platt_probability,
    raw_score,
    train_booster,
)
from training.btyd import BTYDModel, MIN_REPEAT_CUSTOMERS, BTYDDataError, BTYDFitError, GammaGamma
from training.btyd import clv as btyd_clv
from training.contract import SCORE_COLUMNS, SCORE_DTYPES
from training.i18n import Language, language
from training.metrics import expected_calibration_error
from training.segments import lifecycle_stage, monetary_cut_points, rfm_scores, rfm_segment
from training.tiers import Tiers, default_tiers, macro_f1_weights, next_year_tier_probabilities, tier_columns
from training.uplift import DEFAULT_WINDOW_DAYS, LAST_CHANNEL, UpliftModel, uplift_frame, with_last_channel

BTYD_FEATURES = ("btyd_p_alive", "btyd_p_repurchase", "btyd_expected_orders", "btyd_expected_order_value")
# RFM ranks (features.pipeline) place a customer within the population at a cutoff. That is
# what the model learns from at every training origin (relative recency transfers across
# origins better than raw days), but a customer scored alone (online) has no population: at
# scoring time the ranks are recomputed against the training cutoff's population
# (``rfm_reference``), in batch and online alike, so both give the same answer.
RFM_RANK_COLUMNS = ("rfm_rank_r", "rfm_rank_f", "rfm_rank_m", "rfm_rank_sum", "rfm_rank_cell")
# Models trained before the ranks were renamed learned them as these names, which now name
# the score rows' RFM scores (training.segments): their boosters read the ranks under them.
LEGACY_RANK_NAMES = dict(zip(("rfm_r", "rfm_f", "rfm_m", "rfm_score", "rfm_cell"), RFM_RANK_COLUMNS))
# The RFM scores of the score rows and the feature snapshot (one formula: rfm_columns).
RFM_SCORE_COLUMNS = ("rfm_r", "rfm_f", "rfm_m")
NOT_FEATURES = frozenset({"customer_id", "cutoff", *LABELS})
RFM_BASIS = {"r": "days_since_last", "f": "n_orders", "m": "total_spend"}
REFERENCE_QUANTILES = np.linspace(0.0, 1.0, 1001)
TIMING_FRACTIONS = (1 / 12, 1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 5 / 6, 1.0)
QUANTILES = (0.1, 0.5, 0.9)
# What a training origin needs: history before it, repeat buyers for its own BTYD fit, and
# (when the step shrinks to fit two origins in) a week between origins at the least.
MIN_ORIGIN_HISTORY_DAYS = 30
MIN_ORIGIN_REPEAT_BUYERS = 20
MIN_STEP_DAYS = 7
# Customers per origin behind the calibration-by-origin summary (enough for a 10-bin ECE).
CALIBRATION_SUMMARY_ROWS = 50_000
# A year back to the same weekday: the season origin's labels cover last year's horizon.
SEASON_DAYS = 364
# What scoring reads besides the model's features: the BTYD summary, RFM bases, lifecycle.
_SCORING_INPUTS = ("frequency", "recency", "T", "monetary_value", *RFM_BASIS.values())


def quantiles_from_cdf(grid: np.ndarray, cdf: np.ndarray, quantiles=QUANTILES) -> np.ndarray:
    """Read quantiles off a CDF given on a grid of days (F(0) = 0), by linear interpolation.

    Returns one column per quantile; NaN where the CDF never reaches it within the grid
    (the customer is not expected to order by then).
    """
    grid = np.concatenate([[0.0], np.asarray(grid, dtype=float)])
    cdf = np.column_stack([np.zeros(len(cdf)), np.maximum.accumulate(np.asarray(cdf, dtype=float), axis=1)])
    rows = np.arange(len(cdf))
    out = np.full((len(cdf), len(quantiles)), np.nan)
    for j, q in enumerate(quantiles):
        k = np.clip(np.argmax(cdf >= q, axis=1), 1, len(grid) - 1)  # first grid point at or past q
        lo, hi = cdf[rows, k - 1], cdf[rows, k]
        step = hi - lo
        frac = np.clip(np.divide(q - lo, step, out=np.ones_like(step), where=step > 0), 0.0, 1.0)
        out[:, j] = np.where(cdf[:, -1] >= q, grid[k - 1] + frac * (grid[k] - grid[k - 1]), np.nan)
    return out


def _score_frame(values: dict, n: int) -> pd.DataFrame:
    """Score rows in the contract's column order and dtypes; scalars are repeated ``n`` times.

    Each column is built in its final dtype: the same frame as ``DataFrame(values)
    .astype(SCORE_DTYPES)``, without the ~7 ms that ``astype`` costs on one row.
    """
    columns = {}
    for name in SCORE_COLUMNS:
        value, dtype = values[name], SCORE_DTYPES[name]
        if dtype == "str":
            value = np.full(n, value, dtype=object) if np.ndim(value) == 0 else np.asarray(value, dtype=object)
            columns[name] = pd.array(value, dtype="str")
        elif dtype == "datetime64[ns]":
            columns[name] = np.full(n, pd.Timestamp(value).as_unit("ns").to_datetime64())
        else:
            columns[name] = np.broadcast_to(np.asarray(value, dtype=dtype), (n,)).copy()
    return pd.DataFrame(columns, copy=False)


def training_origins(
    first_order: dt.date,
    cutoff: dt.date,
    horizon_days: int,
    n_origins: int = 6,
    step_days: int = 30,
    *,
    same_season: bool = False,
) -> list[dt.date]:
    """Training origins for a cutoff, oldest first, adapted to the history the log has.

    The latest is ``cutoff - horizon_days`` (its labels end at the cutoff); the others go
    back ``step_days`` at a time, at most ``n_origins`` in all, none earlier than
    ``MIN_ORIGIN_HISTORY_DAYS`` after the first order. When ``step_days`` leaves room for
    only one, the step shrinks to fit two, down to ``MIN_STEP_DAYS``; with less room there
    are none (the model is then BTYD-only). With ``same_season``, the origin a year before
    (:func:`season_origin`) joins them when the history reaches it and they are not none.
    """
    latest = cutoff - dt.timedelta(days=horizon_days)
    earliest = first_order + dt.timedelta(days=MIN_ORIGIN_HISTORY_DAYS)
    room = (latest - earliest).days
    if room < min(step_days, MIN_STEP_DAYS):
        return []
    if room < step_days:
        n_origins, step_days = 2, room
    count = min(n_origins, room // step_days + 1)
    origins = [latest - dt.timedelta(days=step_days * k) for k in reversed(range(count))]
    season = season_origin(first_order, cutoff, horizon_days) if same_season else None
    return sorted({*origins, season}) if origins and season is not None else origins


def season_origin(first_order: dt.date, cutoff: dt.date, horizon_days: int, labels_until: dt.date | None = None):
    """The training origin whose label window is the horizon's season a year earlier, or None.

    ``cutoff - SEASON_DAYS`` (52 weeks: the same weekday, so weekly rhythms line up), when
    the history reaches it (``MIN_ORIGIN_HISTORY_DAYS`` of orders before it) and its labels
    ``(origin, origin + H]`` end on or before ``labels_until`` (default: the cutoff).
    """
    origin = cutoff - dt.timedelta(days=SEASON_DAYS)
    labels_end = origin + dt.timedelta(days=horizon_days)
    if origin < first_order + dt.timedelta(days=MIN_ORIGIN_HISTORY_DAYS) or labels_end > (labels_until or cutoff):
        return None
    return origin


def origin_calibration_row(origin: str, role: str, y, p) -> dict:
    """One row of the calibration-by-origin table: who, how many bought, what the model said."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    return {
        "origin": origin,
        "role": role,
        "customers": int(len(y)),
        "base_rate": float(y.mean()),
        "mean_p_repurchase": float(p.mean()),
        "calibration_gap": float(p.mean() - y.mean()),
        "ece": expected_calibration_error(y, p),
    }


def latest_origin_check(origin: str, y: np.ndarray, model_p: np.ndarray, bgnbd_p: np.ndarray) -> dict:
    """The model against BG/NBD on the latest origin's customers that neither trained nor early-stopped it.

    ``model_auc`` and ``bgnbd_auc`` are None when those customers are all buyers or all not.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    both = len(np.unique(y)) == 2
    return {
        "origin": origin,
        "customers": int(len(y)),
        "model_auc": float(roc_auc_score(y, model_p)) if both else None,
        "bgnbd_auc": float(roc_auc_score(y, bgnbd_p)) if both else None,
    }


def boosting_pace(n_rows: int, learning_rate: float, max_rounds: int, small_data_rows: int,
                  small_data_learning_rate: float) -> tuple[float, int]:
    """The boosters' learning rate and round cap for ``n_rows`` stacked training rows.

    Below ``small_data_rows`` the rate drops to ``small_data_learning_rate`` (when lower) and
    the cap rises by the same factor, so the boosters can go as far in smaller steps.
    """
    if n_rows >= small_data_rows or small_data_learning_rate >= learning_rate:
        return learning_rate, max_rounds
    return small_data_learning_rate, int(np.ceil(max_rounds * learning_rate / small_data_learning_rate))


def earliest_full_cutoff(first_order: dt.date, horizon_days: int) -> dt.date:
    """The first cutoff at which :func:`training_origins` gives two origins."""
    return first_order + dt.timedelta(days=MIN_ORIGIN_HISTORY_DAYS + MIN_STEP_DAYS + horizon_days)


def btyd_only_reason(why: dict, lang: Language | str | None = "en") -> str:
    """Why a model is BTYD-only and what more data would unlock the LightGBM model (``btyd_only_why_``),
    in one line in ``lang`` (English by default: ``btyd_only_reason_``, the line MLflow and backtest.json keep)."""
    lang = language(lang)
    _ = lang.gettext

    def day(iso: str) -> str:
        return lang.date(dt.date.fromisoformat(iso))

    if why["kind"] == "latest_origin":
        return _("BTYD-only: on its latest training origin {origin} ({customers} held-out customers) the LightGBM model "
                 "ranked no better than BG/NBD (AUC {model_auc} against {bgnbd_auc}); more history or more customers "
                 "would let it learn more").format(
            origin=day(why["origin"]), customers=lang.count(why["customers"]),
            model_auc=lang.decimal(why["model_auc"], 3), bgnbd_auc=lang.decimal(why["bgnbd_auc"], 3))
    if why["kind"] == "short_history":
        return _("BTYD-only: {days} days of orders before {cutoff}; the LightGBM model needs two training origins, each "
                 "with {history} days of history and a whole {horizon}-day label window before the cutoff; a cutoff from "
                 "{unlock} ({more} more days of orders) would unlock it").format(
            days=why["days"], cutoff=day(why["cutoff"]), history=why["history_days"], horizon=why["horizon_days"],
            unlock=day(why["unlock"]), more=why["more_days"])
    return _("BTYD-only: only {usable} of {origins} training origins ({first} to {last}) have {repeat} repeat buyers; "
             "more customers or a later cutoff would unlock the LightGBM model").format(
        usable=why["usable"], origins=why["origins"], first=day(why["first"]), last=day(why["last"]),
        repeat=why["repeat_buyers"])


def btyd_only_note(model, lang: Language | str | None = "en") -> str:
    """``model``'s BTYD-only reason in ``lang``; a model pickled before ``btyd_only_why_`` gives its English line."""
    why = getattr(model, "btyd_only_why_", None)
    return btyd_only_reason(why, lang) if why else model.btyd_only_reason_


class LeakageError(InputError):
    """A feature carries the label: the model would look perfect and be useless."""


@dataclass
class FeatureSpec:
    """What scoring needs to rebuild the training features exactly."""

    horizon_days: int
    model_features: list[str]
    channel_values: list[str] | None = None
    category_values: list[str] | None = None
    training_cutoff: str = ""
    origins: list[str] = field(default_factory=list)
    rfm_reference: dict[str, np.ndarray] = field(default_factory=dict)
    clv_reference: np.ndarray | None = None
    # A sample of the customers at the training cutoff (their BTYD summary), whose next-year
    # tier probabilities set the predicted tier's decision weights (training.tiers).
    tier_reference: dict[str, np.ndarray] | None = None


TIER_REFERENCE_COLUMNS = ("frequency", "recency", "T", "monetary_value", "avg_order_value")
TIER_REFERENCE_SIZE = 2_000
# Decision weights of the predicted tier per model and tiers (RepurchaseModel.tier_weights):
# a cache beside the model, so that pickling a model never carries it.
_TIER_WEIGHTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def tier_reference(features: pd.DataFrame, size: int = TIER_REFERENCE_SIZE) -> dict[str, np.ndarray]:
    """A sample of ``size`` customers' BTYD summary (fixed seed: the same sample for the same frame)."""
    rows = np.arange(len(features))
    if len(rows) > size:
        rows = np.sort(np.random.default_rng(0).choice(rows, size, replace=False))
    return {c: features[c].to_numpy(dtype=float)[rows] for c in TIER_REFERENCE_COLUMNS if c in features.columns}


def reference_quantiles(values) -> np.ndarray:
    """1,001 quantiles (lower interpolation, so real values) of a population, for ranking newcomers."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return np.quantile(values, REFERENCE_QUANTILES, method="lower") if len(values) else np.array([])


def rfm_ranks(features, reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """RFM ranks 1-5 against a reference population, as ``features.pipeline`` ranks within one.

    A customer's rank is 1 + floor(5 x the share of the reference ranked below them), capped
    at 5; recency ranks fewer days since the last order higher.
    """
    out = {}
    for letter, column in RFM_BASIS.items():
        grid = reference[letter]
        x = _values(features, column)
        if letter == "r":
            below = len(grid) - np.searchsorted(grid, x, side="right")
        else:
            below = np.searchsorted(grid, x, side="left")
        out[letter] = np.minimum(1 + np.floor(5 * below / max(len(grid) - 1, 1)), 5).astype(int)
    return out


def rfm_rank_columns(features, reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ``RFM_RANK_COLUMNS`` against a reference population (:func:`rfm_ranks`, summed and as a cell)."""
    rank = rfm_ranks(features, reference)
    r, f, m = rank["r"], rank["f"], rank["m"]
    return dict(zip(RFM_RANK_COLUMNS, (r, f, m, r + f + m, 100 * r + 10 * f + m)))


def rfm_columns(features, reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The score rows' ``rfm_r``, ``rfm_f``, ``rfm_m``: :func:`training.segments.rfm_scores`, the one
    RFM formula, with M against the reference population's spend (the same number as its M rank)."""
    rfm = rfm_scores(
        _values(features, "days_since_last"), _values(features, "n_orders"), _values(features, "total_spend"),
        monetary_cut_points(reference["m"]),
    )
    return dict(zip(RFM_SCORE_COLUMNS, (rfm["r"], rfm["f"], rfm["m"])))


def fit_gamma_gamma(features: pd.DataFrame, min_customers: int = MIN_REPEAT_CUSTOMERS) -> GammaGamma | None:
    """Gamma-Gamma on the repeat customers with positive spend; None when they are fewer than
    ``min_customers`` (then each customer's mean order value stands in for the expected one)."""
    repeat = (features["frequency"] > 0) & (features["monetary_value"] > 0)
    if repeat.sum() < min_customers:
        return None
    try:
        return GammaGamma().fit(
            features.loc[repeat, "frequency"].to_numpy(float), features.loc[repeat, "monetary_value"].to_numpy(float)
        )
    except BTYDDataError:
        return None


def _short(value: float) -> str:
    return "missing" if not np.isfinite(value) else f"{value:.3g}"


def _values(features, name: str) -> np.ndarray:
    """A column as float64, from a frame or from a mapping of arrays (the scoring path)."""
    return np.asarray(features[name], dtype=float)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def _stable_half(ids: pd.Series, seed: int) -> np.ndarray:
    """A reproducible 50/50 split of customers, by a hash of the id (not by time)."""
    salt = str(seed).encode()
    return np.fromiter((zlib.crc32(salt + str(i).encode()) & 1 for i in ids), dtype=bool, count=len(ids))


def assert_no_leakage(frame: pd.DataFrame, features: list[str], label: str = "label_repurchase") -> None:
    """Refuse features named as labels, or any single feature that predicts the label perfectly.

    A point-in-time feature cannot separate who reorders from who does not without error;
    one that does is the label in disguise (a join on the wrong date, a future order).
    """
    named = [f for f in features if f.startswith("label_") or f in LABELS]
    if named:
        raise LeakageError(f"features include label columns: {', '.join(named)}")
    y = frame[label].to_numpy()
    if y.min() == y.max():
        return
    from sklearn.metrics import roc_auc_score

    for name in features:
        x = frame[name].to_numpy(dtype=float)
        known = np.isfinite(x)
        if known.sum() < 0.9 * len(x) or np.ptp(x[known]) == 0:
            continue
        auc = roc_auc_score(y[known], x[known])
        if max(auc, 1 - auc) > 0.995:
            raise LeakageError(
                f"feature '{name}' alone predicts {label} with AUC {max(auc, 1 - auc):.3f}: "
                "it must be built from orders after the cutoff"
            )


class RepurchaseModel(Estimator):
    """Repurchase probability, timing, orders, revenue and CLV from an order log.

    Parameters
    ----------
    horizon_days : int
        The horizon H of every prediction.
    n_origins, step_days : int
        Stacked training origins, ``step_days`` apart, the latest at ``cutoff - H``.
    btyd_model : {"bgnbd", "mbgnbd", "pareto"}
        The BTYD model whose answers become features and give ``clv``; with "mbgnbd" or
        "pareto" it also gives ``p_alive`` (with "bgnbd", MBG/NBD does: see above).
    learning_rate, num_leaves, min_child_samples, max_rounds, early_stopping_rounds
        LightGBM settings shared by the boosters.
    small_data_rows, small_data_learning_rate : int, float
        Fewer stacked training rows than ``small_data_rows`` (a young or small shop) and the
        boosters learn at ``small_data_learning_rate`` instead, with ``max_rounds`` scaled up
        by the same factor: early stopping on a few thousand validation rows is noisy, and
        smaller steps keep a lucky round from deciding the model. Measured on young synth
        shops (5,000 customers, 5 to 12 months, about 3,000 to 20,000 rows): 0.03 against
        0.1 ranked better in 12 of 12 runs (``benchmarks/README.md``, "Young shops"); logs
        of 100,000 rows and more (CDNOW, synth 50k) are not affected.
    small_data_recency : bool
        Below ``small_data_rows`` the calibrator also weighs log(1 + days since the last
        order) (see "When the data are thin"). On 5-month synth shops (5,000 customers,
        seeds 0-3) it raised the model's AUC gain over BG/NBD from +0.002..+0.018 to
        +0.013..+0.018; at 12 months (about 20,000 rows) it did not help (one seed of four
        lost 0.005) (``benchmarks/README.md``, "Young shops").
    check_latest_origin : bool
        Register BTYD-only when the model ranks no better than BG/NBD on its latest
        origin's held-out half (see "When the data are thin").
    feature_fraction, bagging_fraction, bagging_freq, lambda_l2, max_bin
        LightGBM's column and row subsampling, L2 penalty on leaf values and histogram bins,
        shared by the boosters.
    tweedie_variance_power : float
        The Tweedie power of the revenue booster (between 1, Poisson, and 2, Gamma).
    num_threads : int or None
        LightGBM threads; None: the cores available to the process. Results do not depend on
        it (:mod:`training.boosting`).
    min_origin_repeat_buyers : int
        A training origin with fewer repeat buyers is skipped (too few for its own BG/NBD fit).
    min_gamma_gamma_customers : int
        Fewer repeat customers with spend at the training cutoff and Gamma-Gamma is not
        fitted: each customer's mean order value stands in for the expected one (Gamma-Gamma
        itself needs ``training.btyd.MIN_REPEAT_CUSTOMERS``).
    max_rows_per_origin : int
        Customers sampled per origin for training (the rest only cost time).
    clv_horizon_days, discount_rate_annual : float
        BTYD CLV settings.
    boost_from_btyd : bool
        Start every booster from the BTYD answer (``init_score``) so that it learns
        corrections to BG/NBD rather than everything from scratch.
    same_season : bool
        Add the origin a year before the cutoff (:func:`season_origin`) when the history
        reaches it, and calibrate on it as well as on the latest origin.
    max_timing_rows : int
        Cap on (customer, h) rows for the timing model (customers are sampled).
    random_state : int
        Seed for sampling and LightGBM.

    Models pickled before a hyperparameter existed load with its default, which is the value
    that version had hard-coded (``num_threads`` was 2: any value gives the same answers).

    Attributes
    ----------
    btyd_only_ : bool
        Too little history for two training origins: every answer comes from BG/NBD and
        Gamma-Gamma (see "When the data are thin" above); the boosters are None.
    btyd_only_reason_ : str
        One line: why, and what more data would unlock the LightGBM model ("" when not BTYD-only).
    btyd_only_why_ : dict
        The same as numbers, for :func:`btyd_only_reason` to say in the reader's language ({} when
        not BTYD-only; models pickled before it lack it).
    latest_origin_check_ : dict
        ``origin``, ``customers``, ``model_auc``, ``bgnbd_auc`` on the latest origin's held-out
        half (:func:`latest_origin_check`); set whenever the boosters were trained.
    recency_in_calibration_ : bool
        Whether the calibrator reads log(1 + days since the last order) beside the score.
    bgnbd_, gamma_gamma_ : BTYDModel, GammaGamma or None
        The BTYD fits at the training cutoff; their ``fit_status_`` says whether the fit was
        interior or ran to a boundary.
    alive_model_ : BTYDModel or None
        The model behind ``p_alive``: MBG/NBD fitted at the training cutoff (``bgnbd_`` itself
        when ``btyd_model`` is "mbgnbd" or "pareto"); None when it has no fit (BG/NBD answers).
    classifier_, calibrator_, orders_model_, revenue_model_, timing_model_
        The LightGBM boosters and the Platt calibrator.
    learning_rate_, max_rounds_ : float, int
        The pace the boosters were trained at (``small_data_*`` above).
    season_origin_ : str or None
        The season origin (ISO date) when it was used; None otherwise.
    origin_calibration_ : list of dict
        Per training origin: ``origin``, ``role`` (``training``, ``season``, ``latest``),
        ``customers``, ``base_rate``, ``mean_p_repurchase``, ``calibration_gap`` and ``ece``
        of the calibrated model there (empty when BTYD-only). Models pickled before it
        existed lack it (and ``season_origin_``); they load and score as before.
    spec_ : FeatureSpec
        What scoring needs to rebuild the features.
    uplift_ : UpliftModel or None
        The uplift part (:meth:`fit_uplift`, ``repurchase train --uplift``); None without
        one. With it, score rows gain ``uplift`` and ``uplift_<action>`` after the contract's
        columns; without it they have exactly the contract's columns.
    """

    def __init__(
        self,
        *,
        horizon_days: int = 90,
        n_origins: int = 6,
        step_days: int = 30,
        btyd_model: str = "bgnbd",
        learning_rate: float = 0.1,
        num_leaves: int = 15,
        min_child_samples: int = 100,
        max_rounds: int = 400,
        early_stopping_rounds: int = 30,
        small_data_rows: int = 50_000,
        small_data_learning_rate: float = 0.03,
        max_rows_per_origin: int = 200_000,
        clv_horizon_days: float = 365.0,
        discount_rate_annual: float = 0.1,
        boost_from_btyd: bool = True,
        same_season: bool = True,
        max_timing_rows: int = 400_000,
        feature_fraction: float = 0.8,
        bagging_fraction: float = 0.8,
        bagging_freq: int = 1,
        lambda_l2: float = 1.0,
        max_bin: int = 63,
        tweedie_variance_power: float = 1.5,
        num_threads: int | None = None,
        min_origin_repeat_buyers: int = MIN_ORIGIN_REPEAT_BUYERS,
        min_gamma_gamma_customers: int = MIN_REPEAT_CUSTOMERS,
        random_state: int = 0,
        small_data_recency: bool = True,
        check_latest_origin: bool = True,
    ):
        self.small_data_recency = small_data_recency
        self.check_latest_origin = check_latest_origin
        self.horizon_days = horizon_days
        self.n_origins = n_origins
        self.step_days = step_days
        self.btyd_model = btyd_model
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.max_rounds = max_rounds
        self.early_stopping_rounds = early_stopping_rounds
        self.small_data_rows = small_data_rows
        self.small_data_learning_rate = small_data_learning_rate
        self.max_rows_per_origin = max_rows_per_origin
        self.clv_horizon_days = clv_horizon_days
        self.discount_rate_annual = discount_rate_annual
        self.boost_from_btyd = boost_from_btyd
        self.same_season = same_season
        self.max_timing_rows = max_timing_rows
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.bagging_freq = bagging_freq
        self.lambda_l2 = lambda_l2
        self.max_bin = max_bin
        self.tweedie_variance_power = tweedie_variance_power
        self.num_threads = num_threads
        self.min_origin_repeat_buyers = min_origin_repeat_buyers
        self.min_gamma_gamma_customers = min_gamma_gamma_customers
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting

    def _lgb_params(self, objective: str, **extra) -> dict:
        return super()._lgb_params(objective, learning_rate=self.learning_rate_, **extra)

    def _train_booster(self, params: dict, train: tuple, valid: tuple):
        """A booster early-stopped on ``valid`` (both ``(X, y, init_score)``)."""
        return train_booster(params, train, valid, max_rounds=self.max_rounds_,
                             early_stopping_rounds=self.early_stopping_rounds)

    def _btyd_frame(self, features: pd.DataFrame, bgnbd: BTYDModel, gamma_gamma: GammaGamma | None) -> pd.DataFrame:
        return pd.DataFrame(self._btyd_columns(features, bgnbd, gamma_gamma), index=features.index)

    def _btyd_columns(self, features, bgnbd: BTYDModel, gamma_gamma: GammaGamma | None) -> dict[str, np.ndarray]:
        f, r, T = (_values(features, c) for c in ("frequency", "recency", "T"))
        out = {
            "btyd_p_alive": bgnbd.p_alive(f, r, T),
            "btyd_p_repurchase": bgnbd.p_repurchase(self.horizon_days, f, r, T),
            "btyd_expected_orders": bgnbd.expected_orders(self.horizon_days, f, r, T),
        }
        if gamma_gamma is not None:
            out["btyd_expected_order_value"] = gamma_gamma.expected_order_value(
                f, np.where(f > 0, _values(features, "monetary_value"), 0.0)
            )
        else:
            out["btyd_expected_order_value"] = _values(features, "avg_order_value")
        return out

    def _fit_btyd(self, features: pd.DataFrame) -> tuple[BTYDModel, GammaGamma | None]:
        bgnbd = BTYDModel(model=self.btyd_model).fit(
            features["frequency"].to_numpy(float), features["recency"].to_numpy(float), features["T"].to_numpy(float)
        )
        return bgnbd, fit_gamma_gamma(features, self.min_gamma_gamma_customers)

    def _fit_alive_model(self, features: pd.DataFrame) -> BTYDModel | None:
        """The BTYD model behind ``p_alive``: one that lets a customer drop out before a repeat purchase.

        BG/NBD (``bgnbd_``, whose answers the boosters learn from) cannot: P(alive) is 1 for
        every one-time buyer, however long ago the order. MBG/NBD lets each purchase, the
        first included, end the customer's life, so one-time buyers fade with time; it is
        closed-form (P(alive) = 1 / (1 + a / (b + x) ((alpha + T) / (alpha + t_x)) ** (r + x)))
        and fitted here on the same compressed statistics. With ``btyd_model`` "mbgnbd" or
        "pareto" the model already allows it and is reused. None when MBG/NBD has no fit at
        all (``p_alive`` then falls back to BG/NBD's).
        """
        if self.btyd_model != "bgnbd":
            return self.bgnbd_
        try:
            return BTYDModel(model="mbgnbd").fit(*(features[c].to_numpy(float) for c in ("frequency", "recency", "T")))
        except (BTYDDataError, BTYDFitError):
            return None

    def _origin_frame(self, orders: pd.DataFrame, origins: list[dt.date], channel_values, category_values) -> pd.DataFrame:
        """Features, labels and BTYD answers stacked over the origins that have enough repeat buyers."""
        if not origins:
            return pd.DataFrame()
        frame = build_training_frame(
            orders, origins, self.horizon_days, channel_values=channel_values, category_values=category_values
        )
        parts = []
        for origin, part in frame.groupby("cutoff", sort=True):
            part = part.reset_index(drop=True)
            if (part["frequency"] > 0).sum() < self.min_origin_repeat_buyers:
                continue  # too young to fit BTYD: skip the origin rather than invent numbers
            try:
                bgnbd, gamma_gamma = self._fit_btyd(part)
            except (BTYDDataError, BTYDFitError):
                continue
            part = pd.concat([part, self._btyd_frame(part, bgnbd, gamma_gamma)], axis=1)
            if len(part) > self.max_rows_per_origin:
                part = part.sample(self.max_rows_per_origin, random_state=self.random_state)
            parts.append(part)
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def _btyd_only_why(self, first_order: dt.date, cutoff: dt.date, origins: list[dt.date], n_usable: int) -> dict:
        """Why the LightGBM model cannot be trained, and what more data would unlock it, as numbers
        (:func:`btyd_only_reason` words them)."""
        if len(origins) < 2:
            unlock = earliest_full_cutoff(first_order, self.horizon_days)
            return {"kind": "short_history", "days": (cutoff - first_order).days, "cutoff": cutoff.isoformat(),
                    "history_days": MIN_ORIGIN_HISTORY_DAYS, "horizon_days": self.horizon_days,
                    "unlock": unlock.isoformat(), "more_days": (unlock - cutoff).days}
        return {"kind": "few_repeat_buyers", "usable": n_usable, "origins": len(origins), "first": origins[0].isoformat(),
                "last": origins[-1].isoformat(), "repeat_buyers": self.min_origin_repeat_buyers}

    def fit(self, orders: pd.DataFrame, cutoff) -> "RepurchaseModel":
        """Learn from ``orders`` up to ``cutoff`` (a date); nothing after it is read.

        With too little history for two training origins the model is BTYD-only
        (``btyd_only_``), not an error.
        """
        cutoff = as_day(cutoff)
        orders = until(orders, cutoff)
        self.uplift_ = None
        if orders.empty:
            raise InputError(f"no orders on or before the cutoff {cutoff}: nothing to learn from")
        channel_values = self._mix(orders, cutoff, "channel")
        category_values = self._mix(orders, cutoff, "category")
        first_order = orders["order_ts"].min().date()
        # Training origins are backtests: their label windows must lie within the log, which
        # may end before the cutoff (a quiet spell, a stale export).
        learn_until = min(cutoff, orders["order_ts"].max().date())
        origins = training_origins(first_order, learn_until, self.horizon_days, self.n_origins, self.step_days)
        season = season_origin(first_order, cutoff, self.horizon_days, learn_until) if self.same_season else None
        if origins and season is not None and season not in origins:
            origins = sorted([*origins, season])
        frame = self._origin_frame(orders, origins, channel_values, category_values)
        usable = [] if frame.empty else sorted(pd.Timestamp(c).date() for c in frame["cutoff"].unique())
        self.season_origin_ = season.isoformat() if season in usable else None
        self.timing_grid_ = np.unique(np.round(np.array(TIMING_FRACTIONS) * self.horizon_days)).astype(float)
        self.btyd_only_ = len(usable) < 2
        if self.btyd_only_:
            self.btyd_only_why_ = self._btyd_only_why(first_order, cutoff, origins, len(usable))
            self.btyd_only_reason_ = btyd_only_reason(self.btyd_only_why_)
            self.classifier_ = self.calibrator_ = self.orders_model_ = self.revenue_model_ = self.timing_model_ = None
            self.origin_calibration_ = []
            features = []
        else:
            self.btyd_only_why_ = {}
            self.btyd_only_reason_ = ""
            features = self._fit_boosters(frame, self.season_origin_)
            check = self.latest_origin_check_
            if self.check_latest_origin and check["model_auc"] is not None and check["model_auc"] <= check["bgnbd_auc"]:
                # The boosters did not out-rank BG/NBD where they were last tested: BTYD answers instead.
                self.btyd_only_ = True
                self.btyd_only_why_ = {"kind": "latest_origin", **check}
                self.btyd_only_reason_ = btyd_only_reason(self.btyd_only_why_)
                self.classifier_ = self.calibrator_ = self.orders_model_ = self.revenue_model_ = self.timing_model_ = None
                self.origin_calibration_ = []
                features = []
        self.timing_feature_names_ = features + ["horizon_h"] if features else []

        at_cutoff = build_features(
            orders,
            cutoff,
            channel_values=channel_values,
            category_values=category_values,
        )
        self.bgnbd_, self.gamma_gamma_ = self._fit_btyd(at_cutoff)
        self.alive_model_ = self._fit_alive_model(at_cutoff)
        rfm_reference = {letter: reference_quantiles(at_cutoff[column]) for letter, column in RFM_BASIS.items()}
        self.spec_ = FeatureSpec(
            horizon_days=self.horizon_days,
            model_features=features,
            channel_values=channel_values,
            category_values=category_values,
            training_cutoff=cutoff.isoformat(),
            origins=[c.isoformat() for c in usable],
            rfm_reference=rfm_reference,
        )
        self.spec_.clv_reference = reference_quantiles(self.clv(self.with_btyd(at_cutoff)))
        self.spec_.tier_reference = tier_reference(at_cutoff)
        return self

    def uplift_frame(self, orders: pd.DataFrame, contacts: pd.DataFrame, window_days: int = DEFAULT_WINDOW_DAYS) -> pd.DataFrame:
        """Past contacts with their features as of each contact's date, in this model's
        feature layout, and the window's outcome (:func:`training.uplift.uplift_frame`)."""
        return uplift_frame(orders, contacts, window_days, channel_values=self.spec_.channel_values,
                            category_values=self.spec_.category_values)

    def fit_uplift(self, frame: pd.DataFrame, **uplift_params) -> "RepurchaseModel":
        """Learn the uplift part from an :meth:`uplift_frame` (``uplift_``); fitting again replaces it."""
        self.uplift_ = UpliftModel(**uplift_params).fit(frame)
        return self

    def has_uplift(self) -> bool:
        """Whether scores carry ``uplift`` (models pickled before uplift existed have none)."""
        return getattr(self, "uplift_", None) is not None

    def score_columns(self) -> list[str]:
        """The columns of this model's score rows: the contract's, then the uplift columns if any."""
        return [*SCORE_COLUMNS, *(self.uplift_.columns() if self.has_uplift() else [])]

    def _fit_boosters(self, frame: pd.DataFrame, season: str | None = None) -> list[str]:
        """Train the LightGBM models and the calibrator on the stacked origins; returns the model features."""
        candidates = [c for c in frame.columns if c not in NOT_FEATURES]
        varies = frame.groupby("cutoff")[candidates].nunique(dropna=False).max() > 1
        features = [c for c in candidates if varies[c]]
        assert_no_leakage(frame, features)

        last = frame["cutoff"].max()
        train = frame[frame["cutoff"] < last]
        valid = frame[frame["cutoff"] == last]
        self.learning_rate_, self.max_rounds_ = boosting_pace(
            len(train), self.learning_rate, self.max_rounds, self.small_data_rows, self.small_data_learning_rate
        )
        half = _stable_half(valid["customer_id"], self.random_state)
        stop, calib = valid[half], valid[~half]
        if season is not None:
            # Last year's same season: its customers outside the early-stopping half (by the same
            # hash) leave training for the calibrator, which then sets the level between what the
            # latest origin saw and what the horizon's season saw a year earlier.
            is_season = train["cutoff"] == pd.Timestamp(season)
            season_part = train[is_season]
            held = ~_stable_half(season_part["customer_id"], self.random_state)
            train = pd.concat([train[~is_season], season_part[~held]])
            calib = pd.concat([calib, season_part[held]])

        def rows(part: pd.DataFrame, target: str, label: str) -> tuple:
            return part[features].to_numpy(dtype=np.float32), part[label], self._init_score(target, part)

        # Few rows: the trees, learnt on younger origins, rank recency poorly at the cutoff
        # (days since the last order run past anything they saw), while BG/NBD's start
        # ignores it when it finds no drop-out yet. The calibrator then weighs log days since the
        # last order beside the booster's score, on the calibration half that already sets
        # the level: a log is scale-free, so the weight carries over to a longer history.
        self.recency_in_calibration_ = bool(self.small_data_recency and len(train) < self.small_data_rows)
        self.classifier_, self.calibrator_ = fit_calibrated_booster(
            self._lgb_params("binary"),
            rows(train, "binary", "label_repurchase"),
            rows(stop, "binary", "label_repurchase"),
            rows(calib, "binary", "label_repurchase"),
            max_rounds=self.max_rounds_,
            early_stopping_rounds=self.early_stopping_rounds,
            calibration_inputs=lambda raw: self._calibration_inputs(raw, calib),
        )
        self.origin_calibration_ = self._calibration_by_origin(frame, features, last, season)
        held_out = valid[~half]
        X, y, init = rows(held_out, "binary", "label_repurchase")
        self.latest_origin_check_ = latest_origin_check(
            pd.Timestamp(last).date().isoformat(), y.to_numpy(),
            platt_probability(self.calibrator_, self._calibration_inputs(raw_score(self.classifier_, X, init), held_out)),
            held_out["btyd_p_repurchase"].to_numpy(dtype=float),
        )

        self.orders_model_ = self._train_booster(
            self._lgb_params("poisson"), rows(train, "orders", "label_orders"), rows(valid, "orders", "label_orders")
        )
        self.revenue_model_ = self._train_booster(
            self._lgb_params("tweedie", tweedie_variance_power=self.tweedie_variance_power),
            rows(train, "revenue", "label_revenue"),
            rows(valid, "revenue", "label_revenue"),
        )
        constraints = [0] * len(features) + [1]
        self.timing_model_ = self._train_booster(
            self._lgb_params("binary", monotone_constraints=constraints, monotone_constraints_method="intermediate"),
            self._timing_rows(train, features),
            self._timing_rows(stop, features),
        )
        return features

    def _calibration_by_origin(self, frame: pd.DataFrame, features: list[str], latest, season) -> list[dict]:
        """Per training origin: its customers, base rate, the calibrated model's mean probability and ECE.

        Shows how far apart the origins' levels are (a peak in one origin's label window, a
        quiet season in another) and which level the calibrator followed. The boosters were
        trained on the ``training`` origins and on half of the ``season`` one, so their errors
        there are flattering; the latest origin was only used to stop and calibrate.
        """
        rows = []
        for origin, part in frame.groupby("cutoff", sort=True):
            if len(part) > CALIBRATION_SUMMARY_ROWS:
                part = part.sample(CALIBRATION_SUMMARY_ROWS, random_state=self.random_state)
            X = part[features].to_numpy(dtype=np.float32)
            p = platt_probability(self.calibrator_,
                                  self._calibration_inputs(raw_score(self.classifier_, X, self._init_score("binary", part)), part))
            role = ("latest" if origin == latest
                    else "season" if season and origin == pd.Timestamp(season) else "training")
            rows.append(origin_calibration_row(pd.Timestamp(origin).date().isoformat(), role,
                                               part["label_repurchase"].to_numpy(), p))
        return rows

    def _init_score(self, target: str, features: pd.DataFrame) -> np.ndarray | None:
        """The BTYD answer on the booster's raw scale: boosting starts from BG/NBD and learns corrections.

        Where the training origins do not reach (customers older than any seen in training,
        say), the trees add little and the structural model's extrapolation stands.
        """
        if not self.boost_from_btyd:
            return None
        if target == "binary":
            return _logit(_values(features, "btyd_p_repurchase"))
        orders = np.clip(_values(features, "btyd_expected_orders"), 1e-6, None)
        if target == "orders":
            return np.log(orders)
        value = np.clip(_values(features, "btyd_expected_order_value"), 1e-6, None)
        return np.log(orders * value)

    @staticmethod
    def _mix(orders, cutoff, column) -> list[str] | None:
        if column not in orders.columns:
            return None
        return mix_values(orders, cutoff, column)

    def _timing_rows(self, part: pd.DataFrame, features: list[str]) -> tuple[np.ndarray, np.ndarray]:
        max_customers = max(1, self.max_timing_rows // len(self.timing_grid_))
        if len(part) > max_customers:
            part = part.sample(max_customers, random_state=self.random_state)
        X = part[features].to_numpy(dtype=np.float32)
        days = part["label_days_to_next"].to_numpy(dtype=float)
        reordered = part["label_censored"].to_numpy() == 0
        grid = self.timing_grid_
        rows = np.repeat(X, len(grid), axis=0)
        h = np.tile(grid, len(X)).astype(np.float32)
        y = (np.repeat(reordered, len(grid)) & (np.repeat(days, len(grid)) <= h)).astype(np.int8)
        return np.column_stack([rows, h]), y

    # ------------------------------------------------------------------ predicting

    def features(self, orders: pd.DataFrame, as_of) -> pd.DataFrame:
        """Point-in-time features as of ``as_of`` plus the BTYD answers, in the trained layout."""
        return self.with_btyd(self.point_in_time_features(orders, as_of))

    def missing_inputs(self, columns) -> dict[str, object]:
        """Optional order-log columns the model was trained with that ``columns`` lack.

        Returns each with the contract's default (quantity 1, category and channel
        ``"unknown"``), which is what scoring uses for them: a log without ``quantity`` is
        scored as one unit per order, not refused.
        """
        trained_with = {
            "quantity": any(name in self.spec_.model_features for name in ("total_quantity", "avg_quantity")),
            "category": self.spec_.category_values is not None,
            "channel": self.spec_.channel_values is not None,
        }
        return {name: OPTIONAL_DEFAULTS[name] for name, used in trained_with.items() if used and name not in columns}

    def point_in_time_features(self, orders: pd.DataFrame, as_of) -> pd.DataFrame:
        """The pipeline's features with the trained mix columns and the scores' RFM columns.

        Mix columns the model was trained without are left out of the input (they would only
        add unused columns), and optional columns it was trained with but the log lacks take
        the contract's defaults (:meth:`missing_inputs`). The RFM ranks and the scores' RFM
        columns are set against the training population (:func:`rfm_rank_columns`,
        :func:`rfm_columns`): what the boosters read and the score rows carry, so a feature
        snapshot agrees with its scores exactly. A model whose uplift part has a persuaded
        share per last channel also gets ``last_channel`` (the channel of each customer's
        latest order before ``as_of``, :func:`training.uplift.with_last_channel`), empty
        when the log has no ``channel``; an empty or absent ``last_channel`` (a log without
        channel, the Spark pipeline's features) scores with each action's share.
        """
        original = orders
        unused = [c for c, values in (("channel", self.spec_.channel_values), ("category", self.spec_.category_values))
                  if values is None and c in orders.columns]
        defaults = self.missing_inputs(orders.columns)
        if unused:
            orders = orders.drop(columns=unused)
        if defaults:
            orders = orders.assign(**defaults)
        features = build_features(
            orders,
            as_of,
            channel_values=self.spec_.channel_values,
            category_values=self.spec_.category_values,
        )
        # RFM ranks and scores against the training population: the snapshot carries what was scored.
        reference = self.spec_.rfm_reference
        features = features.assign(**rfm_rank_columns(features, reference), **rfm_columns(features, reference))
        if self.has_uplift() and getattr(self.uplift_, "channel_share_", None):
            # The uplift part's persuaded share depends on the last order's channel (from the
            # log as given: a defaulted "unknown" channel would only pick the action's share).
            # Without channel the column is empty, not absent: the logged signature lists it.
            features = (with_last_channel(features, original, as_of) if "channel" in original.columns
                        else features.assign(**{LAST_CHANNEL: pd.Series(None, index=features.index, dtype=object)}))
        return features

    def with_btyd(self, features: pd.DataFrame) -> pd.DataFrame:
        """Add the BTYD columns, and RFM ranks and scores against the training population (idempotent)."""
        features = features.drop(columns=[c for c in BTYD_FEATURES if c in features.columns])
        reference = self.spec_.rfm_reference
        features = features.assign(**rfm_rank_columns(features, reference), **rfm_columns(features, reference))
        return pd.concat([features, self._btyd_frame(features, self.bgnbd_, self.gamma_gamma_)], axis=1)

    def _input_names(self) -> list[str]:
        """The columns the boosters read, in order: the model features (ranks under their
        current names for models trained when they were called rfm_r, ..., rfm_cell)."""
        return [LEGACY_RANK_NAMES.get(name, name) for name in self.spec_.model_features]

    def _matrix(self, features) -> np.ndarray:
        """The boosters' input matrix (float32), from a feature frame or a :meth:`_scoring_inputs` mapping."""
        if isinstance(features, ScoringInputs):
            return features.matrix(self._input_names())
        names = self._input_names()
        missing = [c for c in names if c not in features.columns]
        if missing:
            raise InputError(f"feature frame lacks columns the model was trained on: {', '.join(missing[:5])}")
        return features[names].to_numpy(dtype=np.float32)

    # The question-named methods below are the scoring path: score_features composes them.
    # Each takes ``features``: a frame with the BTYD columns (:meth:`features`, :meth:`with_btyd`)
    # or, faster, the arrays of :meth:`_scoring_inputs` (what score_features passes).

    def p_alive(self, features, p_repurchase: np.ndarray | None = None) -> np.ndarray:
        """Probability that the customer has not dropped out: the score's ``p_alive``.

        MBG/NBD's P(alive | x, t_x, T) (``alive_model_``, see :meth:`_fit_alive_model`), raised
        to ``p_repurchase`` where that is higher: a customer who orders within the horizon is
        alive, so P(alive) >= P(an order within the horizon) and 1 - p_alive <= churn_risk.
        ``features`` needs frequency, recency and T (and what :meth:`p_repurchase` reads when
        ``p_repurchase`` is not given).
        """
        if p_repurchase is None:
            p_repurchase = self.p_repurchase(features)
        return np.maximum(self._alive_probability(features), np.asarray(p_repurchase, dtype=float))

    def _alive_probability(self, features) -> np.ndarray:
        f, r, T = (_values(features, c) for c in ("frequency", "recency", "T"))
        alive = getattr(self, "alive_model_", None)
        # Models pickled before alive_model_ existed (or whose MBG/NBD had no fit) answer with
        # BG/NBD's P(alive), which is 1 for one-time buyers; model_notes says so.
        return (alive or self.bgnbd_).p_alive(f, r, T)

    def is_btyd_only(self) -> bool:
        """Whether every answer comes from BG/NBD and Gamma-Gamma (too little history for LightGBM)."""
        return getattr(self, "btyd_only_", False)  # models pickled before BTYD-only existed are full

    def p_repurchase(self, features) -> np.ndarray:
        """Calibrated probability of at least one order within the horizon (BG/NBD's when BTYD-only)."""
        if self.is_btyd_only():
            return _values(features, "btyd_p_repurchase")
        raw = raw_score(self.classifier_, self._matrix(features), self._init_score("binary", features))
        return platt_probability(self.calibrator_, self._calibration_inputs(raw, features))

    def _calibration_inputs(self, raw: np.ndarray, features) -> np.ndarray:
        """What the calibrator reads: the classifier's raw score, and log(1 + days since the last
        order) when ``recency_in_calibration_`` (models pickled before it read the score alone)."""
        if not getattr(self, "recency_in_calibration_", False):
            return raw
        return np.column_stack([raw, np.log1p(_values(features, "days_since_last"))])

    def next_order_cdf(self, features, p_repurchase: np.ndarray | None = None) -> np.ndarray:
        """F(h) on ``timing_grid_``: P(next order within h days), one row per customer."""
        if p_repurchase is None and not self.is_btyd_only():
            p_repurchase = self.p_repurchase(features)
        return self._next_order_cdf(features, p_repurchase, slice(None))

    def _next_order_cdf(self, features, p_repurchase, rows) -> np.ndarray:
        """:meth:`next_order_cdf` of the customers ``rows`` selects."""
        if self.is_btyd_only():
            return self._btyd_cdf(*(_values(features, c)[rows] for c in ("frequency", "recency", "T")))
        return self._cdf(self._matrix(features)[rows], np.asarray(p_repurchase)[rows])

    def _btyd_cdf(self, frequency, recency, T) -> np.ndarray:
        """BG/NBD's P(an order within h days) on ``timing_grid_``: the timing distribution it implies."""
        return np.column_stack([self.bgnbd_.p_repurchase(h, frequency, recency, T) for h in self.timing_grid_])

    def _cdf(self, X: np.ndarray, p_repurchase: np.ndarray) -> np.ndarray:
        grid = self.timing_grid_
        rows = np.column_stack([np.repeat(X, len(grid), axis=0), np.tile(grid, len(X)).astype(np.float32)])
        raw = self.timing_model_.predict(rows).reshape(len(X), len(grid))
        raw = np.maximum.accumulate(np.clip(raw, 1e-9, 1.0), axis=1)
        return raw / raw[:, -1:] * np.asarray(p_repurchase).reshape(-1, 1)

    def next_order_quantiles(self, features, p_repurchase: np.ndarray | None = None) -> np.ndarray:
        """Days to the next order at p10, p50, p90 (columns); NaN where not reached within H."""
        if p_repurchase is None:
            p_repurchase = self.p_repurchase(features)
        p = np.asarray(p_repurchase, dtype=float)
        quantiles = np.full((len(p), len(QUANTILES)), np.nan)
        # The CDF tops out at p_repurchase, so no quantile exists below min(QUANTILES): the
        # CDF (for the boosters, one timing prediction per grid point) is computed only where one can.
        reachable = p >= min(QUANTILES)
        if reachable.any():
            quantiles[reachable] = quantiles_from_cdf(self.timing_grid_, self._next_order_cdf(features, p, reachable))
        return quantiles

    def expected_orders(self, features) -> np.ndarray:
        """Expected number of orders within the horizon."""
        if self.is_btyd_only():
            return _values(features, "btyd_expected_orders")
        return self._regress(self.orders_model_, "orders", features)

    def expected_revenue(self, features) -> np.ndarray:
        """Expected revenue within the horizon (BTYD-only: expected orders x expected order value)."""
        if self.is_btyd_only():
            return _values(features, "btyd_expected_orders") * _values(features, "btyd_expected_order_value")
        return self._regress(self.revenue_model_, "revenue", features)

    def _regress(self, booster, target: str, features) -> np.ndarray:
        """A log-link booster's answer (Poisson, Tweedie), from the BTYD start it was trained from."""
        return np.exp(raw_score(booster, self._matrix(features), self._init_score(target, features)))

    def clv(self, features) -> np.ndarray:
        """BTYD CLV over ``clv_horizon_days``: BG/NBD x Gamma-Gamma, discounted (expected orders x the
        customer's mean order value where Gamma-Gamma could not be fitted)."""
        f, r, T, m = (_values(features, c) for c in ("frequency", "recency", "T", "monetary_value"))
        if self.gamma_gamma_ is None:
            return self.bgnbd_.expected_orders(self.clv_horizon_days, f, r, T) * _values(features, "avg_order_value")
        return np.asarray(
            btyd_clv(self.bgnbd_, self.gamma_gamma_, f, r, T, np.where(f > 0, m, 0.0),
                     horizon_days=self.clv_horizon_days, discount_rate_annual=self.discount_rate_annual),
            dtype=float,
        )

    def reason_codes(self, features: pd.DataFrame, top: int = 3) -> list[str]:
        """Why each customer got their ``p_repurchase``: the ``top`` features that moved it most.

        From LightGBM's own ``pred_contrib`` (SHAP values of the classifier, in log-odds
        before calibration), largest magnitude first, each as ``name=value (+0.62)``: a
        positive number raised the chance of a repurchase, a negative one lowered it.
        A BTYD-only model has no booster to explain: it names the summary BG/NBD answers from.
        """
        features = self.with_btyd(features)
        if self.is_btyd_only():
            f, d = (_values(features, c) for c in ("frequency", "days_since_last"))
            p = self.p_alive(features)
            return [f"BTYD-only: repeat purchase days={_short(f[i])}; days_since_last={_short(d[i])}; "
                    f"p_alive={_short(p[i])}" for i in range(len(features))]
        X = self._matrix(features)
        contrib = self.classifier_.predict(X, pred_contrib=True)[:, :-1]
        names = self.spec_.model_features
        order = np.argsort(-np.abs(contrib), axis=1)[:, :top]
        out = []
        for i, idx in enumerate(order):
            out.append("; ".join(f"{names[j]}={_short(X[i, j])} ({contrib[i, j]:+.2f})" for j in idx))
        return out

    def tier_columns(self, features: pd.DataFrame, tiers: Tiers | None = None) -> dict[str, np.ndarray]:
        """Member tier today and a year on, P(upgrade), P(downgrade), spend to the next tier (``training.tiers``).

        Next-year purchases come from the model behind ``p_alive`` (MBG/NBD, else BG/NBD),
        their value from Gamma-Gamma; ``tiers`` defaults to the shipped tiers. The predicted
        tier's weights come from the training-cutoff reference (:meth:`tier_weights`).
        """
        tiers = tiers or default_tiers()
        if tiers.column not in features.columns:
            raise InputError(f"feature frame lacks {tiers.column}, which member tiers are read from")
        probabilities = self._tier_probabilities(tiers, {c: _values(features, c) for c in TIER_REFERENCE_COLUMNS
                                                         if c in features.columns})
        return tier_columns(tiers, _values(features, tiers.column), probabilities, self.tier_weights(tiers))

    def _tier_probabilities(self, tiers: Tiers, columns: dict[str, np.ndarray]) -> np.ndarray:
        monetary = columns["monetary_value"]
        value = columns.get("avg_order_value", monetary)
        return next_year_tier_probabilities(
            tiers, getattr(self, "alive_model_", None) or self.bgnbd_, self.gamma_gamma_,
            columns["frequency"], columns["recency"], columns["T"], monetary, value,
        )

    def tier_weights(self, tiers: Tiers) -> np.ndarray | None:
        """Decision weights of ``predicted_tier`` for these tiers (:func:`training.tiers.macro_f1_weights`).

        From the tier probabilities of the training-cutoff reference sample, computed once per
        tiers and kept beside the model (not in it: a cache, not something learned). None for
        a model pickled before the reference existed: the median tier then.
        """
        reference = getattr(self.spec_, "tier_reference", None)
        if not reference:
            return None
        cache = _TIER_WEIGHTS.setdefault(self, {})
        if tiers not in cache:
            cache[tiers] = macro_f1_weights(self._tier_probabilities(tiers, reference))
        return cache[tiers]

    def score_features(self, features: pd.DataFrame, as_of, model_version: str = "", tiers: Tiers | None = None) -> pd.DataFrame:
        """Score rows (the design's score contract) for a feature frame built as of ``as_of``.

        ``tiers`` (``training.tiers``; default the shipped silver / gold / diamond) sets the
        member-tier columns.

        The answers of :meth:`p_repurchase`, :meth:`p_alive`, :meth:`next_order_quantiles`,
        :meth:`expected_orders`, :meth:`expected_revenue` and :meth:`clv`, each given the
        frame's :meth:`_scoring_inputs` (arrays, not a frame per step: for one customer,
        online, frame operations would cost some 25 ms, the four boosters well under one).
        """
        if features.empty:
            return pd.DataFrame({c: pd.Series(dtype=SCORE_DTYPES.get(c, "float64")) for c in self.score_columns()})
        inputs = self._scoring_inputs(features)
        p = self.p_repurchase(inputs)
        p_alive = self.p_alive(inputs, p)
        quantiles = self.next_order_quantiles(inputs, p)
        scores = _score_frame(
            {
                "customer_id": features["customer_id"].astype("str").to_numpy(),
                "as_of": pd.Timestamp(as_of).normalize(),
                "horizon_days": self.horizon_days,
                "p_alive": p_alive,
                "p_repurchase": p,
                "expected_orders": self.expected_orders(inputs),
                "expected_revenue": self.expected_revenue(inputs),
                "clv": self.clv(inputs),
                "next_order_days_p10": quantiles[:, 0],
                "next_order_days_p50": quantiles[:, 1],
                "next_order_days_p90": quantiles[:, 2],
                "churn_risk": 1.0 - p,
                "rfm_r": inputs["rfm_r"],
                "rfm_f": inputs["rfm_f"],
                "rfm_m": inputs["rfm_m"],
                "rfm_segment": rfm_segment(inputs["rfm_r"], inputs["rfm_f"]),
                "lifecycle_stage": lifecycle_stage(features, p, p_alive, self.horizon_days),
                "model_version": str(model_version),
                **self.tier_columns(features, tiers),
            },
            len(features),
        )
        if self.has_uplift():
            for name, values in self.uplift_.score_columns(features).items():
                scores[name] = values
        return scores

    def _scoring_inputs(self, features: pd.DataFrame) -> "ScoringInputs":
        """The columns the named methods read, as arrays: what :meth:`with_btyd` would add, computed alike.

        ``features`` is a frame of :meth:`point_in_time_features` (with or without the BTYD columns).
        """
        added = {*BTYD_FEATURES, *RFM_RANK_COLUMNS, *RFM_SCORE_COLUMNS}
        names = self._input_names()
        missing = [c for c in names if c not in features.columns and c not in added]
        if missing:
            raise InputError(f"feature frame lacks columns the model was trained on: {', '.join(missing[:5])}")
        inputs = [*_SCORING_INPUTS, *(["avg_order_value"] if self.gamma_gamma_ is None else [])]
        read = [c for c in dict.fromkeys([*inputs, *names]) if c not in added]
        # One float64 matrix (int64 counts convert exactly) instead of a Series per column.
        matrix = features[read].to_numpy(dtype=float)
        columns = ScoringInputs({name: matrix[:, k] for k, name in enumerate(read)})
        columns.update(rfm_rank_columns(columns, self.spec_.rfm_reference))
        columns.update(rfm_columns(columns, self.spec_.rfm_reference))
        columns.update(self._btyd_columns(columns, self.bgnbd_, self.gamma_gamma_))
        return columns

    def score(self, orders: pd.DataFrame, as_of, model_version: str = "") -> pd.DataFrame:
        """Score every customer with an order on or before ``as_of``."""
        return self.score_features(self.point_in_time_features(orders, as_of), as_of, model_version)


class ScoringInputs(dict):
    """Column name -> array of one scoring batch (:meth:`RepurchaseModel._scoring_inputs`).

    The boosters' float32 matrix is built once and shared by the named methods that read it.
    """

    def matrix(self, names: list[str]) -> np.ndarray:
        """The columns ``names`` as one float32 matrix (built on the first call for these names)."""
        key = tuple(names)
        if getattr(self, "_matrix_names", None) != key:
            missing = [c for c in names if c not in self]
            if missing:
                raise InputError(f"feature frame lacks columns the model was trained on: {', '.join(missing[:5])}")
            self._matrix = np.column_stack([self[c] for c in names]).astype(np.float32)
            self._matrix_names = key
        return self._matrix
