"""Product-level replenishment: when will each customer buy each category again?

The unit is a (customer, category) pair (:mod:`features.replenish`). Two layers:

1. **A cycle model with shrinkage** (closed form, empirical Bayes on a log scale). A
   pair's gaps are measured per unit bought at the start of the gap, ``g / u`` (two
   cartridges last twice as long), and modelled as log-normal:
   ``log(g / u) = m_pair + e``, ``e ~ N(0, sigma_c^2)``, with the pair's own log-cycle
   ``m_pair ~ N(mu_c, tau_c^2)`` across the category's customers. For each category,
   ``mu_c`` is the mean of the pairs' mean log-cycles, ``sigma_c^2`` the pooled
   within-pair variance and ``tau_c^2`` the between-pair variance left after the noise in
   the pairs' means (method of moments, floored at 0.01). A category with fewer than
   ``min_category_pairs`` pairs with a gap borrows these from all categories pooled. A pair
   with ``k`` gaps and mean log-cycle ``x`` then has the posterior

   ``w = (k / sigma^2) / (k / sigma^2 + 1 / tau^2)``,
   ``m = w x + (1 - w) mu``, ``v = 1 / (k / sigma^2 + 1 / tau^2)``,

   so one purchase (``k = 0``) gives the category's cycle and many regular purchases give
   the pair's own (``w -> 1``). The next gap is log-normal with location
   ``m + log(units bought last)`` and scale ``sqrt(sigma^2 + v)``; given that the customer
   has not bought in the ``s`` days since, ``F(h) = 1 - S(s + h) / S(s)``. ``basis`` says
   which side dominates: ``own`` when ``w >= 0.5``, else ``category``.

2. **A monotone CDF from LightGBM**, as the customer-level timing model: a classifier
   over (pair, h) rows, h on a grid up to the horizon, with the pair's features, the
   cycle model's ``F(h)``, and monotone constraints on ``h`` and ``F(h)``. It learns what
   the cycle model cannot: customers who switch away (silent for several cycles while
   buying other things), festival stock-ups, categories bought on impulse. Trained on
   pairs at earlier origins stacked (labels end on or before the training cutoff, never a
   random split), early-stopped on half of the latest origin's pairs and calibrated
   (Platt, on the log-odds of every grid point) on the other half.

Outputs, per pair: ``p_within_horizon = F(H)`` and the quantiles
``next_purchase_days_p10/p50/p90`` of the purchase day *given a purchase within the
horizon* (``F(h) / F(H)``), in days from the as-of date (0 = due now); ``remind_on``
``= as_of + max(p50 - lead_days, 0)``. :func:`replenishment_backtest` scores them against
two baselines on the same split: the pair's own last gap, and the category's median gap.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy.optimize import minimize
from scipy.special import log_ndtr, ndtri_exp

from features.common.errors import InputError
from features.replenish import build_pair_features, pair_lines
from features.timecut import as_day, until
from training.boosting import Estimator, fit_calibrated_booster, platt_probability, raw_score
from training.i18n import Language, language
from training.metrics import classification_metrics
from training.model import QUANTILES, earliest_full_cutoff, training_origins

OUTPUT_COLUMNS = (
    "customer_id",
    "category",
    "as_of",
    "horizon_days",
    "last_purchase",
    "next_purchase_days_p10",
    "next_purchase_days_p50",
    "next_purchase_days_p90",
    "p_within_horizon",
    "remind_on",
    "basis",
    "gap_days",
    "n_purchases",
    "last_units",
)
PAIR_FEATURES = (
    "n_purchases",
    "units_total",
    "last_units",
    "days_since_last",
    "tenure_days",
    "n_gaps",
    "gap_mean",
    "last_gap",
    "log_rate_last",
    "own_log_cycle",
    "own_log_sd",
    "category_gap_p10",
    "category_gap_p50",
    "category_gap_p90",
    "category_mu",
    "category_sigma",
    "category_tau",
    "shrink_weight",
    "cycle_days",
    "since_over_cycle",
    "z_since",
    "customer_days_since_any",
    "customer_categories",
    "customer_purchases",
)
TAU2_FLOOR = 0.01
SIGMA2_FLOOR = 0.0025
# Purchase days behind the timing calibration's two parameters, at the least.
MIN_TIMING_PAIRS = 20


class ReplenishmentDataError(InputError):
    """Too little history to learn replenishment from; ``why`` holds the numbers that
    :func:`replenishment_data_reason` says in the reader's language."""

    def __init__(self, message: str, why: dict | None = None):
        super().__init__(message)
        self.why = why or {}


def replenishment_data_reason(why: dict, lang: Language | str | None = "en") -> str:
    """Why replenishment cannot be learned (:class:`ReplenishmentDataError`'s ``why``) in ``lang``."""
    lang = language(lang)
    _ = lang.gettext
    if why["kind"] == "log_too_young":
        return _("too few (customer, category) pairs to learn replenishment from before {cutoff}: the log starts "
                 "{first}, and learning needs a {days}-day horizon after a month of purchases; use a date from "
                 "{earliest} on").format(cutoff=why["cutoff"], first=why["first"], days=why["horizon_days"],
                                         earliest=why["earliest"])
    return _("too few (customer, category) pairs to learn replenishment from: it trains at {first} to {last} (a "
             "{days}-day horizon before {cutoff}, then {steps} steps of {step_days} days back) and the log has too "
             "little before those dates; use a later date or a shorter horizon").format(
        first=why["first_origin"], last=why["last_origin"], days=why["horizon_days"], cutoff=why["cutoff"],
        steps=why["steps"], step_days=why["step_days"])


def _stable_fraction(pairs: pd.DataFrame, seed: int) -> np.ndarray:
    """A number in [0, 1) per (customer, category) from a hash: reproducible samples and halves, not by time."""
    keys = pairs["customer_id"].astype("str") + "\x1f" + pairs["category"].astype("str")
    hashed = pd.util.hash_pandas_object(keys, index=False, hash_key=f"replenish{seed:07d}"[:16])
    return (hashed.to_numpy() >> np.uint64(11)).astype(float) / 2.0**53


def _category_priors(pairs: pd.DataFrame, min_category_pairs: int) -> pd.DataFrame:
    """mu, sigma^2, tau^2 per category (method of moments on log per-unit gaps); see the module docstring."""
    has = pairs["log_rate_n"] > 0
    k = pairs.loc[has, "log_rate_n"]
    mean = pairs.loc[has, "log_rate_sum"] / k
    within = (pairs.loc[has, "log_rate_sq_sum"] - k * mean**2).clip(lower=0.0)
    stats = pd.DataFrame({"category": pairs.loc[has, "category"], "k": k, "mean": mean, "within": within})
    stats["dof"] = stats["k"] - 1

    def moments(group: pd.DataFrame) -> pd.Series:
        dof = group["dof"].sum()
        sigma2 = max(group["within"].sum() / dof, SIGMA2_FLOOR) if dof > 0 else 0.25
        tau2 = max(group["mean"].var(ddof=1) - (sigma2 / group["k"]).mean(), TAU2_FLOOR) if len(group) > 1 else 0.25
        return pd.Series({"mu": group["mean"].mean(), "sigma2": sigma2, "tau2": tau2, "pairs": float(len(group))})

    pooled = moments(stats) if len(stats) else pd.Series({"mu": np.log(30.0), "sigma2": 0.25, "tau2": 0.25, "pairs": 0.0})
    per = stats.groupby("category", sort=True)[["k", "mean", "within", "dof"]].apply(moments)
    if per.empty:
        per = pd.DataFrame(columns=["mu", "sigma2", "tau2", "pairs"], dtype=float)
    categories = pd.Index(pairs["category"].unique(), name="category")
    per = per.reindex(categories)
    thin = per["pairs"].fillna(0) < min_category_pairs
    for column in ("mu", "sigma2", "tau2"):
        per.loc[thin, column] = pooled[column]
    return per[["mu", "sigma2", "tau2"]]


def cycle_model(pairs: pd.DataFrame, min_category_pairs: int = 30) -> pd.DataFrame:
    """The shrinkage cycle model's columns for each pair (same row order); see the module docstring."""
    priors = _category_priors(pairs, min_category_pairs).reindex(pairs["category"].to_numpy())
    mu, sigma2, tau2 = (priors[c].to_numpy(dtype=float) for c in ("mu", "sigma2", "tau2"))
    k = pairs["log_rate_n"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        own = np.where(k > 0, pairs["log_rate_sum"].to_numpy(dtype=float) / np.maximum(k, 1), np.nan)
        own_var = np.where(
            k > 1, (pairs["log_rate_sq_sum"].to_numpy(dtype=float) - k * own**2) / np.maximum(k - 1, 1), np.nan
        )
    precision = k / sigma2 + 1.0 / tau2
    weight = (k / sigma2) / precision
    m = np.where(k > 0, weight * np.nan_to_num(own) + (1 - weight) * mu, mu)
    units = np.maximum(pairs["last_units"].to_numpy(dtype=float), 1e-3)
    location = m + np.log(units)
    scale = np.sqrt(sigma2 + 1.0 / precision)
    since = pairs["days_since_last"].to_numpy(dtype=float)
    return pd.DataFrame(
        {
            "own_log_cycle": own,
            "own_log_sd": np.sqrt(np.clip(own_var, 0, None)),
            "category_mu": mu,
            "category_sigma": np.sqrt(sigma2),
            "category_tau": np.sqrt(tau2),
            "shrink_weight": weight,
            "cycle_location": location,
            "cycle_scale": scale,
            "cycle_days": np.exp(location),
            "since_over_cycle": since / np.exp(location),
            "z_since": (np.log(since + 0.5) - location) / scale,
        },
        index=pairs.index,
    )


def cycle_cdf(location, scale, since, days) -> np.ndarray:
    """P(next purchase within h days | none in the ``since`` days since the last), log-normal gap.

    One row per pair and one column per h in ``days`` (a scalar gives one column).
    """
    location, scale, since = (np.asarray(a, dtype=float).reshape(-1, 1) for a in (location, scale, since))
    h = np.atleast_1d(np.asarray(days, dtype=float)).reshape(1, -1)
    return -np.expm1(_log_survival(since + h, location, scale) - _log_survival(since, location, scale))


def _log_survival(days: np.ndarray, location: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """log P(gap > days) for a log-normal gap (0 at days <= 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(days > 0, log_ndtr(-(np.log(np.maximum(days, 1e-12)) - location) / scale), 0.0)


def truncated_quantiles(location, scale, since, horizon_days: float, quantiles=QUANTILES) -> np.ndarray:
    """Quantiles of the days to the next purchase given it falls within ``(0, H]`` (closed form, no grid).

    The gap ``x`` is log-normal and exceeds ``since``; given ``since < x <= since + H``, the
    q-quantile solves ``S(x) = S(since) (1 - q F_H)`` with ``F_H = 1 - S(since + H) / S(since)``,
    computed on the log scale so that long-overdue pairs (``S(since)`` near 0) stay exact.
    Where ``F_H`` underflows (a purchase within H is all but impossible) the answer is H.
    """
    location, scale, since = (np.asarray(a, dtype=float) for a in (location, scale, since))
    log_s0 = _log_survival(since, location, scale)
    within = -np.expm1(_log_survival(since + horizon_days, location, scale) - log_s0)
    out = np.empty((len(since), len(quantiles)))
    for j, q in enumerate(quantiles):
        z = -ndtri_exp(log_s0 + np.log1p(-q * within))
        days = np.exp(location + scale * z) - since
        out[:, j] = np.where(within > 1e-12, np.clip(days, 0.0, horizon_days), horizon_days)
    return out


def fit_timing_calibration(pairs: pd.DataFrame, horizon_days: int, min_pairs: int = MIN_TIMING_PAIRS) -> tuple[float, float]:
    """Shift of the log-cycle and factor on its scale that best explain the purchase days seen.

    Maximum likelihood of each purchase day (1..H, taken at mid-day) under the cycle model
    truncated to ``(since, since + H]``, on the pairs that bought within the horizon at a
    held-out origin: it corrects the cycle model's level and spread together (coverage of
    the p10-p90 band follows from the spread). With fewer than ``min_pairs`` such pairs it
    leaves the cycle model as it is (``(0.0, 1.0)``).
    """
    days = pairs["label_days"].to_numpy(dtype=float)
    bought = np.isfinite(days)
    if bought.sum() < min_pairs:
        return 0.0, 1.0
    location = pairs["cycle_location"].to_numpy(dtype=float)[bought]
    scale = pairs["cycle_scale"].to_numpy(dtype=float)[bought]
    since = pairs["days_since_last"].to_numpy(dtype=float)[bought]
    gap = since + days[bought] - 0.5

    def negative_log_likelihood(theta):
        loc, sc = location + theta[0], scale * np.exp(theta[1])
        z = (np.log(gap) - loc) / sc
        log_density = -np.log(gap) - np.log(sc) - 0.5 * z**2
        log_s0 = _log_survival(since, loc, sc)
        log_window = log_s0 + np.log(np.maximum(-np.expm1(_log_survival(since + horizon_days, loc, sc) - log_s0), 1e-300))
        return -np.mean(log_density - log_window)

    result = minimize(negative_log_likelihood, x0=np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7})
    return float(result.x[0]), float(np.exp(result.x[1]))


def _with_customer_context(pairs: pd.DataFrame) -> pd.DataFrame:
    by_customer = pairs.groupby("customer_id", sort=False)
    return pairs.assign(
        customer_days_since_any=by_customer["days_since_last"].transform("min"),
        customer_categories=by_customer["category"].transform("size").astype(float),
        customer_purchases=by_customer["n_purchases"].transform("sum"),
    )


def pair_frame(lines, as_of, *, horizon_days: int | None = None, min_category_pairs: int = 30) -> pd.DataFrame:
    """Pair features plus the cycle model's columns as of ``as_of`` (labels with ``horizon_days``)."""
    pairs = build_pair_features(lines, as_of, horizon_days=horizon_days)
    pairs = pd.concat([pairs, cycle_model(pairs, min_category_pairs)], axis=1)
    return _with_customer_context(pairs)


class ReplenishmentModel(Estimator):
    """Per (customer, category) timing: p10/p50/p90 of the next purchase and P(within the horizon).

    Parameters
    ----------
    horizon_days : int
        The horizon H: ``p_within_horizon`` is P(a purchase of the category within H days).
    n_origins, step_days : int
        Training origins ``C - H - step * j`` for ``j = 0 .. n_origins - 1``.
    max_pairs_per_origin : int
        Pairs sampled (by a hash of the pair, reproducibly) at each origin for training.
    min_category_pairs : int
        Categories with fewer pairs that have a gap borrow the pooled cycle prior.
    lead_days : int
        ``remind_on`` is this many days before the p50 date (never before the as-of date).
    learning_rate, num_leaves, min_child_samples, max_rounds, early_stopping_rounds
        LightGBM settings of the booster (early-stopped on half the latest origin's pairs).
    feature_fraction, bagging_fraction, bagging_freq, lambda_l2, max_bin
        LightGBM's column and row subsampling, L2 penalty and histogram bins (defaults: none
        of the row subsampling and penalty the customer model uses).
    num_threads : int or None
        LightGBM threads; None: the cores available to the process (results do not depend on it).
    min_timing_pairs : int
        Fewer pairs that bought within the horizon at the latest origin and the cycle model's
        timing is not recalibrated (:func:`fit_timing_calibration`).
    random_state : int
        Seed of the pair samples and halves and of LightGBM (models pickled before it was
        named so kept it as ``seed``; they load).

    Attributes
    ----------
    booster_, calibrator_
        The LightGBM classifier of a purchase within the horizon and its Platt calibrator.
    timing_shift_, timing_scale_ : float
        The timing calibration of the cycle model (:func:`fit_timing_calibration`).
    origins_, training_cutoff_, n_training_pairs_, feature_names_
        What it learned from.
    """

    RENAMED = {"seed": "random_state"}

    def __init__(
        self,
        *,
        horizon_days: int = 90,
        n_origins: int = 4,
        step_days: int = 30,
        max_pairs_per_origin: int = 60_000,
        min_category_pairs: int = 30,
        lead_days: int = 7,
        learning_rate: float = 0.1,
        num_leaves: int = 15,
        min_child_samples: int = 50,
        max_rounds: int = 300,
        early_stopping_rounds: int = 30,
        feature_fraction: float = 0.9,
        bagging_fraction: float = 1.0,
        bagging_freq: int = 0,
        lambda_l2: float = 0.0,
        max_bin: int = 63,
        num_threads: int | None = None,
        min_timing_pairs: int = MIN_TIMING_PAIRS,
        random_state: int = 0,
    ):
        self.horizon_days = horizon_days
        self.n_origins = n_origins
        self.step_days = step_days
        self.max_pairs_per_origin = max_pairs_per_origin
        self.min_category_pairs = min_category_pairs
        self.lead_days = lead_days
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.max_rounds = max_rounds
        self.early_stopping_rounds = early_stopping_rounds
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.bagging_freq = bagging_freq
        self.lambda_l2 = lambda_l2
        self.max_bin = max_bin
        self.num_threads = num_threads
        self.min_timing_pairs = min_timing_pairs
        self.random_state = random_state

    # ------------------------------------------------------------------ training

    def origins(self, cutoff, first_purchase=None) -> list[dt.date]:
        """Training origins, oldest first; the last one's labels end on the cutoff.

        With the log's first purchase day, the origins adapt to the history as the customer
        model's do (:func:`training.model.training_origins`): none before there is a month of
        history, and a shorter step when the log is young.
        """
        if first_purchase is None:
            last = as_day(cutoff) - dt.timedelta(days=self.horizon_days)
            return [last - dt.timedelta(days=self.step_days * j) for j in range(self.n_origins - 1, -1, -1)]
        return training_origins(as_day(first_purchase), as_day(cutoff), self.horizon_days,
                                n_origins=self.n_origins, step_days=self.step_days)

    def _matrix(self, pairs: pd.DataFrame) -> np.ndarray:
        prior = cycle_cdf(pairs["cycle_location"], pairs["cycle_scale"], pairs["days_since_last"], self.horizon_days)
        return np.column_stack([pairs[list(PAIR_FEATURES)].to_numpy(dtype=np.float32), prior[:, 0]])

    def _sample(self, pairs: pd.DataFrame) -> pd.DataFrame:
        u = _stable_fraction(pairs, self.random_state)
        return pairs[u < self.max_pairs_per_origin / len(pairs)] if len(pairs) > self.max_pairs_per_origin else pairs

    def fit(self, lines, cutoff) -> "ReplenishmentModel":
        """Train on pairs at the origins before ``cutoff`` (orders after the cutoff are never read)."""
        table = lines if not isinstance(lines, pd.DataFrame) else pair_lines(lines)
        first = pc.min(table["order_ts"]).as_py() if isinstance(table, pa.Table) and table.num_rows else None
        origins = self.origins(cutoff, first)
        frames = [
            self._sample(pair_frame(table, origin, horizon_days=self.horizon_days, min_category_pairs=self.min_category_pairs))
            for origin in origins
        ]
        if not origins and first is not None:
            why = {"kind": "log_too_young", "cutoff": str(as_day(cutoff)), "first": str(as_day(first)),
                   "horizon_days": self.horizon_days,
                   "earliest": str(earliest_full_cutoff(as_day(first), self.horizon_days))}
            raise ReplenishmentDataError(replenishment_data_reason(why), why)
        if len(origins) < 2 or sum(len(f) for f in frames[:-1]) == 0 or len(frames[-1]) < 2:
            origins = origins or self.origins(cutoff)
            why = {"kind": "too_little_history", "first_origin": str(origins[0]), "last_origin": str(origins[-1]),
                   "horizon_days": self.horizon_days, "cutoff": str(as_day(cutoff)), "steps": self.n_origins - 1,
                   "step_days": self.step_days}
            raise ReplenishmentDataError(replenishment_data_reason(why), why)
        latest = frames[-1]
        train = pd.concat(frames[:-1])
        first_half = _stable_fraction(latest, self.random_state + 1) < 0.5
        stop, calib = latest[first_half], latest[~first_half]
        bought = lambda frame: np.isfinite(frame["label_days"].to_numpy(dtype=float)).astype(np.int8)  # noqa: E731
        params = self._lgb_params("binary")
        names = [*PAIR_FEATURES, "cycle_p_within_horizon"]
        self.booster_, self.calibrator_ = fit_calibrated_booster(
            params,
            (self._matrix(train), bought(train)),
            (self._matrix(stop), bought(stop)),
            (self._matrix(calib), bought(calib)),
            max_rounds=self.max_rounds,
            early_stopping_rounds=self.early_stopping_rounds,
            feature_name=names,
        )
        self.timing_shift_, self.timing_scale_ = fit_timing_calibration(calib, self.horizon_days, self.min_timing_pairs)
        self.feature_names_ = names
        self.origins_ = [o.isoformat() for o in origins]
        self.training_cutoff_ = as_day(cutoff).isoformat()
        self.n_training_pairs_ = int(len(train))
        return self

    # ------------------------------------------------------------------ prediction

    def p_within_horizon(self, pairs: pd.DataFrame) -> np.ndarray:
        """Calibrated P(a purchase of the category within the horizon), per pair."""
        return platt_probability(self.calibrator_, raw_score(self.booster_, self._matrix(pairs)))

    def _cycle(self, pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        location = pairs["cycle_location"].to_numpy(dtype=float) + self.timing_shift_
        scale = pairs["cycle_scale"].to_numpy(dtype=float) * self.timing_scale_
        return location, scale, pairs["days_since_last"].to_numpy(dtype=float)

    def purchase_cdf(self, pairs: pd.DataFrame, days, p_within: np.ndarray | None = None) -> np.ndarray:
        """F(h) = P(a purchase within h days) for each h in ``days`` (columns), h <= H.

        The level is the calibrated ``p_within_horizon``, the shape the calibrated cycle model's.
        """
        if p_within is None:
            p_within = self.p_within_horizon(pairs)
        location, scale, since = self._cycle(pairs)
        shape = cycle_cdf(location, scale, since, days) / np.maximum(cycle_cdf(location, scale, since, self.horizon_days), 1e-300)
        return np.clip(shape, 0.0, 1.0) * np.asarray(p_within).reshape(-1, 1)

    def next_purchase_quantiles(self, pairs: pd.DataFrame) -> np.ndarray:
        """Days from the as-of date to the next purchase at p10, p50, p90, given one within the horizon."""
        location, scale, since = self._cycle(pairs)
        return truncated_quantiles(location, scale, since, self.horizon_days, QUANTILES)

    def predict_pairs(self, pairs: pd.DataFrame, as_of) -> pd.DataFrame:
        """The replenishment output (``OUTPUT_COLUMNS``) for a :func:`pair_frame` built as of ``as_of``."""
        day = pd.Timestamp(as_day(as_of))
        within = self.p_within_horizon(pairs) if len(pairs) else np.zeros(0)
        q = self.next_purchase_quantiles(pairs) if len(pairs) else np.zeros((0, len(QUANTILES)))
        since = pairs["days_since_last"].to_numpy(dtype=float)
        p50 = q[:, 1]
        lead = np.maximum(np.round(p50) - self.lead_days, 0).astype("int64")
        return pd.DataFrame(
            {
                "customer_id": pairs["customer_id"].astype("str").to_numpy(),
                "category": pairs["category"].astype("str").to_numpy(),
                "as_of": day,
                "horizon_days": np.int64(self.horizon_days),
                "last_purchase": day - pd.to_timedelta(since, unit="D"),
                "next_purchase_days_p10": q[:, 0],
                "next_purchase_days_p50": p50,
                "next_purchase_days_p90": q[:, 2],
                "p_within_horizon": within,
                "remind_on": day + pd.to_timedelta(lead, unit="D"),
                "basis": np.where(pairs["shrink_weight"].to_numpy(dtype=float) >= 0.5, "own", "category"),
                "gap_days": np.round(pairs["cycle_days"].to_numpy(dtype=float), 1),
                "n_purchases": pairs["n_purchases"].to_numpy(dtype="int64"),
                "last_units": pairs["last_units"].to_numpy(dtype=float),
            }
        )[list(OUTPUT_COLUMNS)]

    def predict(self, lines, as_of) -> pd.DataFrame:
        """Replenishment rows for every (customer, category) bought on or before ``as_of``."""
        pairs = pair_frame(lines, as_of, min_category_pairs=self.min_category_pairs)
        return self.predict_pairs(pairs, as_of)


# ---------------------------------------------------------------------- evaluation


def baseline_quantiles(pairs: pd.DataFrame, horizon_days: int, *, own: bool) -> tuple[np.ndarray, np.ndarray]:
    """p10/p50/p90 days from the as-of date for a naive baseline (clipped to [0, H]), and its ranking score.

    The expected gap ``G`` is the pair's own last gap (``own=True``; the category's median
    gap for pairs bought once) or the category's median gap; p50 is ``G - days since``.
    The band scales ``G`` by the category's gap p10/p50 and p90/p50 ratios. The score
    ranks pairs by how far the due date ``G - days since`` lies outside the horizon
    window ``[0, H]``, in gaps (0 inside, ties broken toward the middle of the window).
    """
    median = pairs["category_gap_p50"].to_numpy(dtype=float)
    gap = median
    if own:
        last = pairs["last_gap"].to_numpy(dtype=float)
        gap = np.where(np.isfinite(last), last, median)
    since = pairs["days_since_last"].to_numpy(dtype=float)
    ratios = [pairs[f"category_gap_{p}"].to_numpy(dtype=float) / np.maximum(median, 1e-9) for p in ("p10", "p50", "p90")]
    quantiles = np.column_stack([np.clip(gap * r - since, 0, horizon_days) for r in ratios])
    due = gap - since
    outside = np.maximum.reduce([np.zeros_like(due), -due, due - horizon_days]) / np.maximum(gap, 1.0)
    score = -(outside + 1e-3 * np.abs(due - horizon_days / 2) / horizon_days)
    return quantiles, score


def _timing_block(days: np.ndarray, quantiles: np.ndarray, score: np.ndarray) -> dict:
    bought = np.isfinite(days)
    d = days[bought]
    q = quantiles[bought]
    block = classification_metrics(bought.astype(int), score, probabilities=False) if 0 < bought.sum() < len(days) else {}
    block = {"auc": block.get("auc"), "pr_auc": block.get("pr_auc")}
    block["p50_mae_days"] = float(np.mean(np.abs(q[:, 1] - d))) if len(d) else None
    block["coverage_p10_p90"] = float(np.mean((q[:, 0] <= d) & (d <= q[:, 2]))) if len(d) else None
    block["band_width_days"] = float(np.mean(q[:, 2] - q[:, 0])) if len(d) else None
    return block


def replenishment_backtest(lines, cutoff, horizon_days: int = 90, *, model_params: dict | None = None) -> dict:
    """Train at ``cutoff``, predict every pair, score against ``(cutoff, cutoff + H]`` with both baselines.

    Returns the backtest JSON's ``replenishment`` block: pair counts, then for ``model``,
    ``own_last_gap`` and ``category_median`` the AUC of P(a purchase within H) (the
    baselines rank by how far their due date lies outside the horizon window; see
    :func:`baseline_quantiles`), the p50 MAE in days and the p10-p90 coverage on the pairs
    that did buy again within the horizon.
    """
    table = lines if not isinstance(lines, pd.DataFrame) else pair_lines(lines)
    day = as_day(cutoff)
    # The model learns from the lines on or before the cutoff only, never the backtest's truth.
    model = ReplenishmentModel(horizon_days=horizon_days, **(model_params or {})).fit(until(table, day), day)
    pairs = pair_frame(table, day, horizon_days=horizon_days, min_category_pairs=model.min_category_pairs)
    predicted = model.predict_pairs(pairs, day)
    days = pairs["label_days"].to_numpy(dtype=float)
    q_model = predicted[["next_purchase_days_p10", "next_purchase_days_p50", "next_purchase_days_p90"]].to_numpy()
    block = {
        "cutoff": day.isoformat(),
        "horizon_days": int(horizon_days),
        "n_pairs": int(len(pairs)),
        "n_customers": int(pairs["customer_id"].nunique()),
        "n_categories": int(pairs["category"].nunique()),
        "base_rate": float(np.isfinite(days).mean()) if len(days) else None,
        "basis_own_share": float((predicted["basis"] == "own").mean()) if len(days) else None,
        "model": _timing_block(days, q_model, predicted["p_within_horizon"].to_numpy()),
    }
    bought = np.isfinite(days)
    if bought.any() and not bought.all():
        block["model"]["brier"] = float(np.mean((predicted["p_within_horizon"].to_numpy() - bought) ** 2))
    for name, own in (("own_last_gap", True), ("category_median", False)):
        q, score = baseline_quantiles(pairs, horizon_days, own=own)
        block[name] = _timing_block(days, q, score)
    best = min(block["own_last_gap"]["p50_mae_days"] or np.inf, block["category_median"]["p50_mae_days"] or np.inf)
    if np.isfinite(best) and block["model"]["p50_mae_days"] is not None:
        block["p50_mae_vs_best_baseline"] = float(block["model"]["p50_mae_days"] / best - 1.0)
    block["training"] = {
        "origins": list(model.origins_),
        "pairs": model.n_training_pairs_,
        "best_iteration": int(model.booster_.best_iteration),
        "timing_shift": model.timing_shift_,
        "timing_scale": model.timing_scale_,
    }
    return block
