"""BTYD ("buy till you die") models: BG/NBD and its alternatives, Gamma-Gamma spend and customer lifetime value.

They are probabilistic models of the BTYD summary.

All public inputs are in days, as `features/` computes them (frequency = repeat purchase
days, recency = age at last purchase, T = age at cutoff, as ``lifetimes`` defines them).
Parameters are reported in ``time_unit_days`` (weeks by default, the unit of Fader,
Hardie & Lee 2005), which changes no prediction.

BG/NBD is fitted by its own vectorised log-likelihood with an analytic gradient on
compressed sufficient statistics, and reproduces ``lifetimes.BetaGeoFitter`` (same
objective, same time scaling, same penalizer, same optimiser and start). MBG/NBD and
Pareto/NBD minimise ``lifetimes``' own objectives with its start and optimiser, and keep
only their parameters, so every fitted model holds plain numbers and pickles.

When the data are thin (a young shop) the likelihood can have no interior optimum: the
drop-out parameters run off to a boundary (a -> 0: nobody has been seen to leave yet).
That is an answer, not an error. The fit then becomes, in this order, the no-drop-out
limit (the NBD: P(alive) = 1) when drop-out adds less than ``MEASURABLE_GAIN`` to the
log-likelihood; else the smallest penalizer in ``PENALIZER_LADDER`` with an interior
optimum; else the NBD anyway. ``fit_status_`` says which; Gamma-Gamma likewise falls back
to a penalizer, then to mean spend.

References
----------
Fader, Hardie & Lee (2005a), "Counting Your Customers the Easy Way: An Alternative to the
Pareto/NBD Model", Marketing Science 24 (2). [BG/NBD]
Batislam, Denizel & Filiztekin (2007); Wagner & Hoppe (2008). [MBG/NBD]
Schmittlein, Morrison & Colombo (1987); Fader & Hardie (2005), "A Note on Deriving the
Pareto/NBD Model and Related Expressions" (brucehardie.com/notes/009). [Pareto/NBD]
Fader, Hardie & Lee (2005b), "RFM and CLV", JMR 42; brucehardie.com/notes/025. [Gamma-Gamma]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize
from scipy.special import betainc, betaln, digamma, expit, gammaln, hyp2f1, roots_legendre

from features.common.errors import InputError
from training.i18n import N_, NC_, Language, language

__all__ = [
    "BTYDDataError",
    "BTYDFitError",
    "BTYDModel",
    "GammaGamma",
    "MIN_REPEAT_CUSTOMERS",
    "MODELS",
    "NotFittedError",
    "clv",
    "compress_rfm",
    "simulate_customers",
]

MODELS = ("bgnbd", "mbgnbd", "pareto")
PARAM_NAMES = {
    "bgnbd": ("r", "alpha", "a", "b"),
    "mbgnbd": ("r", "alpha", "a", "b"),
    "pareto": ("r", "alpha", "s", "beta"),
}
MODEL_TITLES = {"bgnbd": "BG/NBD", "mbgnbd": "MBG/NBD", "pareto": "Pareto/NBD"}
MIN_REPEAT_CUSTOMERS = 10
DAYS_PER_YEAR = 365.0

# Transaction-model parameters (time scaled so that max T = 1, as lifetimes fits) beyond
# 1e-5 or 1e5 have run off towards 0 or infinity: the likelihood has no interior optimum
# (e.g. no churn in the data at all) and the values are wherever the optimiser stopped.
_LOG_PARAM_LIMIT = math.log(1e5)
# Gamma-Gamma's v is in money units, so only absurd values count as runaway there.
_GAMMA_GAMMA_LOG_PARAM_LIMIT = 25.0
# Gradient norm (of the mean negative log-likelihood in log-parameters) accepted as converged
# when BFGS stops on "precision loss" at the optimum.
_GRADIENT_TOLERANCE = 1e-5

# What a fit that ran to a boundary becomes (``fit_status_``), tried in this order:
# 1. the no-drop-out limit (NBD: a = 0, or s = 0 for Pareto/NBD) when the drop-out parameters
#    add less than ``MEASURABLE_GAIN`` to the log-likelihood (a young log: nobody has been
#    seen to leave yet);
# 2. the lifetimes L2 penalizer, smallest first, until the optimum is interior;
# 3. the no-drop-out limit anyway, labelled as drop-out that the data cannot identify.
INTERIOR = "interior"
NO_DROPOUT = "boundary: no measurable drop-out yet"
DROPOUT_NOT_IDENTIFIED = "boundary: drop-out not identified, fitted without it"
MEAN_SPEND = "boundary: mean spend"  # Gamma-Gamma's last resort
PENALIZER_LADDER = (0.001, 0.01, 0.1)
# Half the 5% point of chi-square with 2 degrees of freedom (5.99): two drop-out parameters
# that gain less log-likelihood than this over "nobody drops out" measure nothing.
MEASURABLE_GAIN = 3.0
# The parameter that is 0 in the no-drop-out limit, and the one that then means nothing.
_DROPOUT_PARAMS = {"bgnbd": ("a", "b"), "mbgnbd": ("a", "b"), "pareto": ("s", "beta")}
FIT_STATUS_MEANING = {
    INTERIOR: N_("an interior optimum: the usual fit"),
    NO_DROPOUT: N_("no measurable drop-out yet: almost every customer is still buying, so P(alive) = 1 and purchase "
                   "rates alone (NBD) predict; drop-out becomes measurable as the log grows"),
    DROPOUT_NOT_IDENTIFIED: N_("drop-out is not identified by this data and no small penalty pins it down: fitted "
                               "without drop-out (NBD), P(alive) = 1"),
}
_QUADRATURE_NODES, _QUADRATURE_WEIGHTS = roots_legendre(48)
_QUADRATURE_CHUNK = 65536


class BTYDDataError(InputError):
    """The data cannot support the fit (bad values, too few repeat customers).

    ``why``: for too few repeat customers, the numbers (``customers``, ``repeat_customers``,
    ``needed``, ``model``) that :func:`thin_data_reason` says in the reader's language; else {}.
    """

    def __init__(self, message: str, why: dict | None = None):
        super().__init__(message)
        self.why = why or {}


class BTYDFitError(InputError):
    """The fit did not converge to an interior optimum."""


class NotFittedError(RuntimeError):
    """A prediction was asked of a model that has no ``params_`` yet."""


# ---------------------------------------------------------------------------------------
# Data: validation and compression to sufficient statistics


@dataclass(frozen=True)
class RFMTable:
    """Identical (frequency, recency, T) rows collapsed into weights, in days.

    ``x_values`` are the distinct frequencies with their total weight ``x_weight``;
    ``T_values`` the distinct ages with their weight ``T_weight`` and weighted frequency sum
    ``T_xweight``; repeat customers (frequency > 0) are kept as distinct rows, each
    pointing into ``x_values``, ``recency_values`` and ``T_values``. One-time buyers need no
    rows: their likelihood depends on T alone.
    """

    x_values: np.ndarray
    x_weight: np.ndarray
    T_values: np.ndarray
    T_weight: np.ndarray
    T_xweight: np.ndarray
    T_weight_one_time: np.ndarray
    recency_values: np.ndarray
    repeat_x: np.ndarray
    repeat_x_index: np.ndarray
    repeat_recency_index: np.ndarray
    repeat_T_index: np.ndarray
    repeat_weight: np.ndarray

    @property
    def n_customers(self) -> float:
        return float(self.x_weight.sum())

    @property
    def n_repeat_customers(self) -> float:
        return float(self.repeat_weight.sum())

    @property
    def n_distinct(self) -> int:
        return int(self.repeat_weight.size + np.count_nonzero(self.T_weight_one_time))

    def distinct_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(frequency, recency, T, weights) of the distinct rows, one-time buyers included."""
        one_time = np.flatnonzero(self.T_weight_one_time)
        frequency = np.concatenate([np.zeros(one_time.size), self.repeat_x])
        recency = np.concatenate([np.zeros(one_time.size), self.recency_values[self.repeat_recency_index]])
        T = np.concatenate([self.T_values[one_time], self.T_values[self.repeat_T_index]])
        weights = np.concatenate([self.T_weight_one_time[one_time], self.repeat_weight])
        return frequency, recency, T, weights


def _as_float_array(name: str, values) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise BTYDDataError(f"{name}: values are not numbers ({error})") from None
    if array.ndim != 1:
        array = array.reshape(-1)
    return array


def check_rfm(frequency, recency, T, weights=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate a BTYD summary given in days and return it as float arrays plus weights.

    Raises
    ------
    BTYDDataError
        With one line naming the column and what is wrong with it.
    """
    frequency = _as_float_array("frequency", frequency)
    recency = _as_float_array("recency", recency)
    T = _as_float_array("T", T)
    weights = np.ones_like(frequency) if weights is None else _as_float_array("weights", weights)
    sizes = {"frequency": frequency.size, "recency": recency.size, "T": T.size, "weights": weights.size}
    if len(set(sizes.values())) != 1:
        raise BTYDDataError(f"frequency, recency, T and weights differ in length: {sizes}")
    if frequency.size == 0:
        raise BTYDDataError("no customers: frequency, recency and T are empty")
    for name, array in (("frequency", frequency), ("recency", recency), ("T", T), ("weights", weights)):
        bad = ~np.isfinite(array)
        if bad.any():
            raise BTYDDataError(f"{name}: {bad.sum()} missing or infinite values (first at row {np.argmax(bad)})")
        bad = array < 0
        if bad.any():
            first = np.argmax(bad)
            raise BTYDDataError(f"{name}: {bad.sum()} negative values (first at row {first}: {array[first]:g})")
    bad = frequency != np.round(frequency)
    if bad.any():
        raise BTYDDataError(
            f"frequency: {bad.sum()} non-integer values (first at row {np.argmax(bad)}: {frequency[bad][0]:g}); "
            "frequency counts repeat purchase days"
        )
    bad = recency > T
    if bad.any():
        row = np.argmax(bad)
        raise BTYDDataError(
            f"recency > T in {bad.sum()} rows (first at row {row}: recency {recency[row]:g} > T {T[row]:g})"
        )
    bad = (frequency == 0) & (recency != 0)
    if bad.any():
        raise BTYDDataError(
            f"recency must be 0 where frequency is 0, but is not in {bad.sum()} rows (first at row {np.argmax(bad)})"
        )
    if T.max() <= 0:
        raise BTYDDataError("T is 0 for every customer: the cutoff is the day of every first order")
    return frequency, recency, T, weights


def compress_rfm(frequency, recency, T, weights=None) -> RFMTable:
    """Collapse identical (frequency, recency, T) rows into weights (inputs in any one unit)."""
    frequency, recency, T, weights = check_rfm(frequency, recency, T, weights)
    x_codes, x_values = pd.factorize(frequency)
    T_codes, T_values = pd.factorize(T)
    n_x, n_T = x_values.size, T_values.size
    x_weight = np.bincount(x_codes, weights=weights, minlength=n_x)
    T_weight = np.bincount(T_codes, weights=weights, minlength=n_T)
    T_xweight = np.bincount(T_codes, weights=weights * frequency, minlength=n_T)
    repeat = frequency > 0
    one_time = ~repeat
    T_weight_one_time = np.bincount(T_codes[one_time], weights=weights[one_time], minlength=n_T)
    recency_codes, recency_values = pd.factorize(recency[repeat])
    n_recency = max(recency_values.size, 1)
    key = (x_codes[repeat].astype(np.int64) * n_recency + recency_codes) * n_T + T_codes[repeat]
    row_codes, row_keys = pd.factorize(key)
    row_keys = np.asarray(row_keys, dtype=np.int64)
    repeat_x_index = row_keys // (n_recency * n_T)
    return RFMTable(
        x_values=np.asarray(x_values, dtype=float),
        x_weight=x_weight,
        T_values=np.asarray(T_values, dtype=float),
        T_weight=T_weight,
        T_xweight=T_xweight,
        T_weight_one_time=T_weight_one_time,
        recency_values=np.asarray(recency_values, dtype=float),
        repeat_x=np.asarray(x_values, dtype=float)[repeat_x_index],
        repeat_x_index=repeat_x_index,
        repeat_recency_index=(row_keys // n_T) % n_recency,
        repeat_T_index=row_keys % n_T,
        repeat_weight=np.bincount(row_codes, weights=weights[repeat], minlength=row_keys.size),
    )


def _check_supports_fit(table: RFMTable, title: str) -> None:
    n, n_repeat = table.n_customers, table.n_repeat_customers
    if n_repeat < MIN_REPEAT_CUSTOMERS:
        why = {"customers": int(round(n)), "repeat_customers": int(round(n_repeat)), "needed": MIN_REPEAT_CUSTOMERS,
               "model": title}
        raise BTYDDataError(thin_data_reason(why), why)


def thin_data_reason(why: dict, lang: Language | str | None = "en") -> str:
    """Why a BTYD model cannot be fitted (:class:`BTYDDataError`'s ``why``), in ``lang`` (English by default)."""
    lang = language(lang)
    _ = lang.gettext
    if why["repeat_customers"] == 0:
        return _("all {customers} customers are one-time buyers, so {model} cannot estimate repeat buying or churn: "
                 "use a later cutoff or a longer order history").format(customers=why["customers"], model=why["model"])
    return _("only {repeat} of {customers} customers made a repeat purchase; {model} needs at least {needed}: use a "
             "later cutoff or a longer order history").format(repeat=why["repeat_customers"], customers=why["customers"],
                                                             model=why["model"], needed=why["needed"])


# ---------------------------------------------------------------------------------------
# BG/NBD log-likelihood (Fader, Hardie & Lee 2005a, eq. 6, in the form of section 7)


def _nbd_log_likelihood(r: float, alpha: float, table: RFMTable, T: np.ndarray):
    """The purchase-rate part every BTYD likelihood shares, summed over customers.

    sum over customers of log Gamma(r + x) - log Gamma(r) + r log(alpha) - (r + x) log(alpha + T):
    the whole log-likelihood of the NBD (nobody drops out; FHL 2005a, eq. 6 with a = 0),
    summed per distinct x and per distinct T. Returns it, its gradient in (r, alpha), and
    log(alpha + T) and 1 / (alpha + T) for the caller's per-row terms.
    """
    x = table.x_values
    W_x = table.x_weight
    W = W_x.sum()
    log_alpha = math.log(alpha)
    log_alpha_T = np.log(alpha + T)
    inv_alpha_T = 1.0 / (alpha + T)
    T_coef = r * table.T_weight + table.T_xweight
    ll = W_x @ (gammaln(r + x) - gammaln(r)) + W * r * log_alpha - T_coef @ log_alpha_T
    grad = np.array(
        [
            W_x @ (digamma(r + x) - digamma(r)) + W * log_alpha - table.T_weight @ log_alpha_T,
            W * r / alpha - T_coef @ inv_alpha_T,
        ]
    )
    return ll, grad, log_alpha_T, inv_alpha_T


def nbd_negative_log_likelihood(log_params: np.ndarray, table: RFMTable, time_scale: float) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood of the NBD (BG/NBD's a = 0 limit) and its gradient in log (r, alpha)."""
    params = np.exp(log_params)
    ll, grad, _, _ = _nbd_log_likelihood(params[0], params[1], table, table.T_values * time_scale)
    W = table.n_customers
    return float(-ll / W), -grad / W * params


def bgnbd_negative_log_likelihood(
    log_params: np.ndarray, table: RFMTable, time_scale: float, penalizer_coef: float = 0.0
) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood and its gradient in log-parameters.

    The objective of ``lifetimes.BetaGeoFitter``: time multiplied by ``time_scale``
    (lifetimes uses 1 / max T), the mean over customers, plus ``penalizer_coef`` times the
    squared parameters. Per customer,

        LL = A1 + A2 + A3 + log(1 + [x > 0] exp(A4 - A3)),

    where A1 and A2 depend on x alone and A3 on (x, T); they are summed per distinct value,
    and only repeat customers' rows carry the per-row term, whose derivative is the
    probability of being dead, expit(A4 - A3).
    """
    params = np.exp(log_params)
    r, alpha, a, b = params
    x = table.x_values
    W_x = table.x_weight
    W = W_x.sum()
    T = table.T_values * time_scale
    recency = table.recency_values * time_scale

    nbd_ll, nbd_grad, log_alpha_T, inv_alpha_T = _nbd_log_likelihood(r, alpha, table, T)
    digamma_ab = digamma(a + b) - digamma(a + b + x)
    digamma_b = digamma(b + x) - digamma(b)
    ll = nbd_ll + W_x @ (gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x))
    grad = np.concatenate([nbd_grad, [W_x @ digamma_ab, W_x @ (digamma_ab + digamma_b)]])

    if table.repeat_weight.size:
        w = table.repeat_weight
        ix, ir, it = table.repeat_x_index, table.repeat_recency_index, table.repeat_T_index
        inv_b_x = 1.0 / (b + np.maximum(x, 1.0) - 1.0)
        log_odds_x = math.log(a) + np.log(inv_b_x)
        r_x = r + table.repeat_x
        span = log_alpha_T[it] - np.log(alpha + recency)[ir]
        log_odds_dead = log_odds_x[ix] + r_x * span
        # log(1 + e^z) and its derivative expit(z) from one exp; long dot products by
        # einsum, since a threaded BLAS dot stalls badly on a busy machine.
        small = np.exp(-np.abs(log_odds_dead))
        softplus = np.maximum(log_odds_dead, 0.0) + np.log1p(small)
        w_dead = w * np.where(log_odds_dead >= 0.0, 1.0, small) / (1.0 + small)
        ll += np.einsum("i,i->", w, softplus)
        grad[0] += np.einsum("i,i->", w_dead, span)
        grad[1] += np.einsum("i,i,i->", w_dead, r_x, inv_alpha_T[it] - (1.0 / (alpha + recency))[ir])
        grad[2] += w_dead.sum() / a
        grad[3] -= np.bincount(ix, weights=w_dead, minlength=x.size) @ inv_b_x

    value = -ll / W + penalizer_coef * (params @ params)
    gradient = (-grad / W + 2.0 * penalizer_coef * params) * params
    return float(value), gradient


@dataclass(frozen=True)
class _Attempt:
    """One optimisation: where it stopped, in the reported units, and why that is no optimum (None if it is)."""

    params: dict
    log_likelihood: float
    problem: str | None


def _bfgs(objective, x0, args) -> tuple[np.ndarray, str | None]:
    """BFGS from lifetimes' start with its tolerance (gtol = 1e-7), so both land on one optimum."""
    result = optimize.minimize(objective, x0, args=args, jac=True, method="BFGS", tol=1e-7)
    if not np.all(np.isfinite(result.x)) or not np.isfinite(result.fun):
        return result.x, "the likelihood became NaN"
    gradient_norm = float(np.max(np.abs(result.jac)))
    if not result.success and gradient_norm > _GRADIENT_TOLERANCE:
        return result.x, f"did not converge ({result.message.strip()}; gradient {gradient_norm:.1e})"
    return result.x, None


def _runaway(scaled_params: dict, log_param_limit: float = _LOG_PARAM_LIMIT) -> str | None:
    """Which parameter ran off towards 0 or infinity (the data cannot pin it down), if any."""
    for name, value in scaled_params.items():
        if not (np.isfinite(value) and value > 0 and abs(math.log(value)) <= log_param_limit):
            return f"{name} ran off to {value:.3g}"
    return None


def fit_status_meaning(status: str, lang: Language | str | None = "en") -> str:
    """What a ``fit_status_`` means, in a sentence for the report and the CLI, in ``lang`` (English by default)."""
    lang = language(lang)
    _ = lang.gettext
    if status in FIT_STATUS_MEANING:
        return _(FIT_STATUS_MEANING[status])
    if status.startswith("penalized "):
        return _("penalized {penalty}: the likelihood has no interior optimum (for BG/NBD: drop-out is measurable, its "
                 "spread across customers is not), so a small L2 penalty on the parameters, as lifetimes applies it, picks "
                 "the fit").format(penalty=status.removeprefix("penalized "))
    if status == MEAN_SPEND:
        return _("mean spend: Gamma-Gamma has no optimum on this data, so each repeat customer's own mean order value, "
                 "and the mean over repeat customers for one-time buyers")
    return status


GAMMA_GAMMA_NOT_FITTED = "not fitted: too few repeat buyers"
# Fit statuses as a reader of another language sees them (English: the status itself); literal,
# so that pybabel extracts them, and equal to the constants above (tests/test_i18n.py checks).
FIT_STATUS_LABELS = (NC_("fit_status", "interior"), NC_("fit_status", "boundary: no measurable drop-out yet"),
                     NC_("fit_status", "boundary: drop-out not identified, fitted without it"),
                     NC_("fit_status", "boundary: mean spend"), NC_("fit_status", "not fitted: too few repeat buyers"))


def fit_status_label(status: str, lang: Language | str | None = "en") -> str:
    """A ``fit_status_`` as a table shows it in ``lang``: the status itself in English."""
    lang = language(lang)
    if lang.is_default:
        return status
    if status.startswith("penalized "):
        return lang.gettext("penalized {penalty}").format(penalty=status.removeprefix("penalized "))
    return lang.pgettext("fit_status", status)


# ---------------------------------------------------------------------------------------
# Predictions in model time units (scalar parameters, broadcast arrays)


def _hyp2f1(a, b, c, z):
    """Gauss's 2F1, stepping around scipy's NaN/inf when c - a - b is an integer.

    scipy 1.17's hyp2f1 returns NaN or inf for z near 1 when c - a - b is an integer (e.g. r = a,
    or integer parameters); moving c by one part in 1e13 gives the value to ~1e-12.
    """
    value = hyp2f1(a, b, c, z)
    broken = ~np.isfinite(value)
    if np.any(broken):
        value = np.where(broken, hyp2f1(a, b, np.multiply(c, 1.0 + 1e-13), z), value)
    return value


def _float(value) -> float:
    return math.nan if value is None else float(value)


def _no_dropout(model: str, params: dict) -> bool:
    """The no-drop-out limit (a = 0, or s = 0): P(alive) = 1 and the model is the NBD."""
    return params[_DROPOUT_PARAMS[model][0]] == 0.0


def _log_ratio(T, recency, alpha):
    """log((alpha + T) / (alpha + recency)), accurate when recency is close to T."""
    return np.log1p((T - recency) / (alpha + recency))


def _p_alive(model: str, params: dict, x, recency, T):
    if _no_dropout(model, params):
        return np.ones(np.broadcast(x, recency, T).shape)
    if model == "pareto":
        return expit(-_pareto_log_odds_dead(params, x, recency, T))
    r, alpha, a, b = (params[k] for k in PARAM_NAMES[model])
    if model == "bgnbd":
        # No death before the first repeat purchase: x = 0 means alive.
        log_odds_dead = np.log(a) - np.log(b + np.maximum(x, 1.0) - 1.0) + (r + x) * _log_ratio(T, recency, alpha)
        return np.where(x == 0, 1.0, expit(-log_odds_dead))
    log_odds_dead = np.log(a) - np.log(b + x) + (r + x) * _log_ratio(T, recency, alpha)
    return expit(-log_odds_dead)


def _expected_orders(model: str, params: dict, t, x, recency, T):
    if _no_dropout(model, params):
        # NBD: lambda ~ Gamma(r + x, alpha + T) a posteriori, E[Y(t)] = t E[lambda].
        r, alpha = params["r"], params["alpha"]
        return np.broadcast_to(t * (r + x) / (alpha + T), np.broadcast(t, x, recency, T).shape).copy()
    p_alive = _p_alive(model, params, x, recency, T)
    if model == "pareto":
        # E[Y(t) | alive] = E[lambda] E[(1 - exp(-mu t)) / mu] with lambda ~ Gamma(r+x, alpha+T)
        # and mu ~ Gamma(s, beta+T) a posteriori (note 009, eq. 41).
        r, alpha, s, beta = (params[k] for k in PARAM_NAMES[model])
        log_growth = np.log1p(t / (beta + T))
        if abs(s - 1.0) < 1e-9:
            integral = log_growth
        else:
            integral = -np.expm1(-(s - 1.0) * log_growth) / (s - 1.0)
        return p_alive * (r + x) / (alpha + T) * (beta + T) * integral
    r, alpha, a, b = (params[k] for k in PARAM_NAMES[model])
    z = t / (alpha + T + t)
    # FHL (2005a) eq. 10 (Wagner & Hoppe 2008 for MBG/NBD) after Euler's transformation
    # 2F1(a, b; c; z) = (1-z)^(c-a-b) 2F1(c-a, c-b; c; z): the factor (1-z)^(r+x) cancels
    # and no argument grows with x, so nothing overflows.
    if model == "bgnbd":
        # c = 0 (a + b = 1, x = 0) is a pole of 2F1 that c (1 - ...) cancels: step beside it.
        c = np.where(a + b + x == 1.0, 1e-12, a + b + x - 1.0)
        tail = _hyp2f1(a + b - 1.0 - r, a - 1.0, c, z)
    else:
        c = a + b + x
        tail = _hyp2f1(a + b - r, a - 1.0, c, z)
    log_survival = (a - 1.0) * np.log1p(-z)
    with np.errstate(invalid="ignore", divide="ignore"):
        # 2F1 turns negative only when c < 0 (a + b < 1, x = 0), where expm1 cannot help.
        still = np.where(tail > 0, -np.expm1(log_survival + np.log(tail)), 1.0 - np.exp(log_survival) * tail)
    return p_alive * c / (a - 1.0) * still


def _p_repurchase(model: str, params: dict, t, x, recency, T):
    p_alive = _p_alive(model, params, x, recency, T)
    if model == "pareto" and not _no_dropout(model, params):
        return p_alive * _pareto_p_buy_if_alive(params, t, x, T)
    # Alive at T, one stays alive until the next purchase and lambda ~ Gamma(r + x, alpha + T),
    # so P(no purchase in t | alive) = E[exp(-lambda t)] = ((alpha + T) / (alpha + T + t)) ** (r + x).
    r, alpha = params["r"], params["alpha"]
    return p_alive * -np.expm1(-(r + x) * np.log1p(t / (alpha + T)))


def _decaying_integral(upper, log_h, *columns, extra_cut=0.0):
    """int_0^upper exp(-v + log_h(v, *columns)) dv, elementwise over broadcast arrays.

    For h bounded by exp(extra_cut): 48-point Gauss-Legendre, cut at v = 40 + extra_cut
    (beyond which nothing is left to add), in chunks so that a million customers do not
    need a million-by-48 array at once.
    """
    arrays = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (upper, extra_cut, *columns)))
    shape = arrays[0].shape
    flat = [a.reshape(-1) for a in arrays]
    out = np.empty(flat[0].size)
    half_nodes = (_QUADRATURE_NODES + 1.0) / 2.0
    for start in range(0, out.size, _QUADRATURE_CHUNK):
        top, cut, *chunk = (a[start : start + _QUADRATURE_CHUNK, None] for a in flat)
        top = np.minimum(top, 40.0 + cut)
        v = top * half_nodes
        out[start : start + _QUADRATURE_CHUNK] = top[:, 0] * (np.exp(-v + log_h(v, *chunk)) @ _QUADRATURE_WEIGHTS) / 2.0
    return out.reshape(shape)


def _pareto_log_odds_dead(params: dict, x, recency, T):
    """log P(dead at T | x, t_x, T) / P(alive at T | x, t_x, T) under Pareto/NBD.

    The odds are s int_{t_x}^T ((alpha+T)/(alpha+u))^(r+x) ((beta+T)/(beta+u))^s du/(beta+u)
    (the "died in (t_x, T]" part of the likelihood over the "alive" part; note 009's A_0,
    eqs. 18-20). With v = (r+x) log((alpha+u)/(alpha+t_x)) this is
    s e^W int_0^W e^(-v) h(v) dv, W = (r+x) log((alpha+T)/(alpha+t_x)): logs throughout and
    no 2F1, whose scipy 1.17 implementation returns NaN or inf when c - a - b is an integer.
    """
    r, alpha, s, beta = (params[k] for k in PARAM_NAMES["pareto"])
    upper = (r + x) * _log_ratio(T, recency, alpha)

    def log_h(v, x, recency, T):
        u = (alpha + recency) * np.exp(v / (r + x)) - alpha
        return s * np.log((beta + T) / (beta + u)) + np.log((alpha + u) / (beta + u)) - np.log(r + x)

    with np.errstate(divide="ignore"):
        return math.log(s) + upper + np.log(_decaying_integral(upper, log_h, x, recency, T))


def _pareto_p_buy_if_alive(params: dict, t, x, T):
    """P(a purchase in (T, T+t] | alive at T) under Pareto/NBD.

    With lambda ~ Gamma(r+x, alpha+T) and mu ~ Gamma(s, beta+T) independent a posteriori,
    P = int_0^t f(u) S(u) du, where f(u) = (r+x)/(alpha+T+u) ((alpha+T)/(alpha+T+u))^(r+x) is
    the density of the next purchase if immortal and S(u) = ((beta+T)/(beta+T+u))^s the
    survival. Whichever hazard is faster at u = 0 becomes the variable of integration, so the
    sharp factor is exactly e^(-v) and what is left is smooth:
    v = (r+x) log(1 + u/(alpha+T)) gives int e^(-v) S(u(v)) dv;
    w = s log(1 + u/(beta+T)) gives int e^(-w) (r+x)/s (beta+T+u)/(alpha+T+u) (1 - F(u(w))) dw.
    """
    r, alpha, s, beta = (params[k] for k in PARAM_NAMES["pareto"])
    t, x, T = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (t, x, T)))
    shape_buy = r + x
    by_survival = s / (beta + T) > shape_buy / (alpha + T)
    out = np.empty(t.shape)

    def log_survival_given_purchase_time(v, shape_buy, T):
        u = (alpha + T) * np.expm1(np.minimum(v / shape_buy, 700.0))
        return -s * np.log1p(u / (beta + T))

    def log_purchase_density_over_hazard(w, shape_buy, T):
        u = (beta + T) * np.expm1(np.minimum(w / s, 700.0))
        return np.log(shape_buy / s * (beta + T + u) / (alpha + T + u)) - shape_buy * np.log1p(u / (alpha + T))

    a = ~by_survival
    out[a] = _decaying_integral(
        shape_buy[a] * np.log1p(t[a] / (alpha + T[a])), log_survival_given_purchase_time, shape_buy[a], T[a]
    )
    b = by_survival
    out[b] = _decaying_integral(
        s * np.log1p(t[b] / (beta + T[b])), log_purchase_density_over_hazard, shape_buy[b], T[b],
        extra_cut=np.log(np.maximum(shape_buy[b] / s, 1.0)),
    )
    return out


# ---------------------------------------------------------------------------------------
# Estimators


class BTYDModel:
    """A buy-till-you-die transaction model on the BTYD summary, as an estimator: BG/NBD
    (the default), MBG/NBD or Pareto/NBD, chosen by ``model``.

    Parameters
    ----------
    model : {"bgnbd", "mbgnbd", "pareto"}
        The transaction model. BG/NBD is fitted by this module's vectorised likelihood and
        reproduces ``lifetimes.BetaGeoFitter``; the others delegate to ``lifetimes``.
    penalizer_coef : float
        L2 penalty on the parameters, as ``lifetimes`` applies it (time scaled so that the
        oldest customer's T is 1), so it too is independent of the time unit.
    time_unit_days : float
        Days per unit of the reported parameters (7: per week, as in the paper).

    Attributes
    ----------
    params_ : dict
        {"r", "alpha", "a", "b"} ({"r", "alpha", "s", "beta"} for Pareto/NBD), alpha and
        beta in ``time_unit_days``.
        In the no-drop-out limit a (s) is 0 and b (beta), which then means nothing, NaN.
    log_likelihood_ : float
        Total log-likelihood over customers in ``time_unit_days`` (the paper's -9582.4).
    fit_status_ : str
        ``"interior"`` (the fit asked for, with ``penalizer_coef``, has an interior optimum);
        ``"boundary: no measurable drop-out yet"`` (the NBD limit);
        ``"penalized 0.001"`` (the smallest penalizer in ``PENALIZER_LADDER`` that gives an
        interior optimum); or ``"boundary: drop-out not identified, fitted without it"``.
        :func:`fit_status_meaning` says it in words.
    fit_detail_ : str
        Where a boundary fit ran to and why the fallback was chosen ("" for an interior fit).
    n_customers_, n_distinct_ : int
        Customers fitted, and distinct (frequency, recency, T) rows they collapse to.
    """

    def __init__(self, *, model: str = "bgnbd", penalizer_coef: float = 0.0, time_unit_days: float = 7.0):
        self.model = model
        self.penalizer_coef = penalizer_coef
        self.time_unit_days = time_unit_days

    @classmethod
    def from_params(cls, params: dict, *, model: str = "bgnbd", time_unit_days: float = 7.0) -> BTYDModel:
        """A model with known parameters (in ``time_unit_days``), e.g. to score or simulate."""
        estimator = cls(model=model, time_unit_days=time_unit_days)
        estimator._check_hyperparameters()
        # JSON null is NaN: the drop-out parameter that the no-drop-out limit leaves undefined.
        estimator.params_ = {name: _float(params[name]) for name in PARAM_NAMES[model]}
        estimator.fit_status_ = NO_DROPOUT if _no_dropout(model, estimator.params_) else "given"
        return estimator

    def __repr__(self) -> str:
        fitted = getattr(self, "params_", None)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in fitted.items()) if fitted else "not fitted"
        return f"BTYDModel(model={self.model!r}, time_unit_days={self.time_unit_days:g}; {shown})"

    def _check_hyperparameters(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, not {self.model!r}")
        if not (self.time_unit_days > 0):
            raise ValueError(f"time_unit_days must be positive, not {self.time_unit_days!r}")
        if not (self.penalizer_coef >= 0):
            raise ValueError(f"penalizer_coef must be >= 0, not {self.penalizer_coef!r}")

    def fit(self, frequency, recency, T, weights=None) -> BTYDModel:
        """Fit on a BTYD summary in days; identical rows are collapsed into weights first.

        A likelihood without an interior optimum is not an error: the fit becomes the
        no-drop-out limit, or a penalized fit, and says so in ``fit_status_`` (see the
        module's ``INTERIOR``, ``NO_DROPOUT``, ``PENALIZER_LADDER``).

        Raises
        ------
        BTYDDataError
            Invalid values, or too few repeat customers to estimate the model.
        BTYDFitError
            Not even the no-drop-out limit (NBD) has an optimum: every customer buys at one rate.
        """
        self._check_hyperparameters()
        table = compress_rfm(frequency, recency, T, weights)
        _check_supports_fit(table, MODEL_TITLES[self.model])
        attempt = self._attempt(table, self.penalizer_coef)
        if attempt.problem is None:
            status, detail = INTERIOR, ""
        else:
            attempt, status, detail = self._resolve_boundary(table, attempt)
        self.params_ = attempt.params
        self.log_likelihood_ = float(attempt.log_likelihood)
        self.fit_status_ = status
        self.fit_detail_ = detail
        self.n_customers_ = int(round(table.n_customers))
        self.n_distinct_ = table.n_distinct
        return self

    def _resolve_boundary(self, table: RFMTable, boundary: _Attempt) -> tuple[_Attempt, str, str]:
        """The answer when the fit runs to a boundary: NBD, else the smallest penalty that works, else NBD."""
        title = MODEL_TITLES[self.model]
        nbd = self._fit_nbd(table)
        gain = boundary.log_likelihood - nbd.log_likelihood
        if nbd.problem is None and np.isfinite(gain) and gain < MEASURABLE_GAIN:
            detail = (f"{boundary.problem}; drop-out adds {max(gain, 0.0):.2f} to the log-likelihood "
                      f"(< {MEASURABLE_GAIN:g}): fitted as NBD, P(alive) = 1")
            return nbd, NO_DROPOUT, detail
        for penalizer in PENALIZER_LADDER:
            if penalizer > self.penalizer_coef:
                penalized = self._attempt(table, penalizer)
                if penalized.problem is None:
                    return penalized, f"penalized {penalizer:g}", f"{boundary.problem}; penalizer_coef {penalizer:g} gives an interior optimum"
        if nbd.problem is not None:
            raise BTYDFitError(
                f"{title} fit has no interior optimum ({boundary.problem}), nor has its no-drop-out limit NBD "
                f"({nbd.problem}: every customer seems to buy at one rate); use a longer order history or more customers"
            )
        return nbd, DROPOUT_NOT_IDENTIFIED, f"{boundary.problem}; no penalizer up to {PENALIZER_LADDER[-1]:g} helps"

    def _attempt(self, table: RFMTable, penalizer_coef: float) -> _Attempt:
        """One fit of the transaction model with this penalizer, wherever it stops."""
        names = PARAM_NAMES[self.model]
        max_T_units = table.T_values.max() / self.time_unit_days
        if self.model != "bgnbd":
            return self._attempt_with_lifetimes(table, penalizer_coef)
        # lifetimes fits in time scaled to max T = 1; doing the same makes the fit (and
        # the penalizer) identical to BetaGeoFitter's and independent of the time unit.
        time_scale = 1.0 / table.T_values.max()
        log_params, problem = _bfgs(bgnbd_negative_log_likelihood, np.full(4, 0.1), (table, time_scale, penalizer_coef))
        scaled = dict(zip(names, np.exp(log_params)))
        problem = problem or _runaway(scaled)
        unpenalized, _ = bgnbd_negative_log_likelihood(log_params, table, time_scale, 0.0)
        params = {name: float(scaled[name]) for name in names}
        params["alpha"] = float(params["alpha"] * max_T_units)
        return _Attempt(params, self._in_units(-unpenalized * table.n_customers, table), problem)

    def _in_units(self, scaled_log_likelihood: float, table: RFMTable) -> float:
        """A total log-likelihood with time scaled to max T = 1, in ``time_unit_days`` instead.

        The likelihood is a density of x purchase times: rescaling time by k shifts it by -x log k.
        """
        max_T_units = table.T_values.max() / self.time_unit_days
        return float(scaled_log_likelihood - (table.x_weight @ table.x_values) * math.log(max_T_units))

    def _fit_nbd(self, table: RFMTable) -> _Attempt:
        """The no-drop-out limit shared by all three models: NBD purchase rates, drop-out parameter 0."""
        time_scale = 1.0 / table.T_values.max()
        log_params, problem = _bfgs(nbd_negative_log_likelihood, np.full(2, 0.1), (table, time_scale))
        r, alpha = np.exp(log_params)
        problem = problem or _runaway({"r": r, "alpha": alpha})
        value, _ = nbd_negative_log_likelihood(log_params, table, time_scale)
        rate, dropout = PARAM_NAMES[self.model][:2], _DROPOUT_PARAMS[self.model]
        params = {rate[0]: float(r), rate[1]: float(alpha * table.T_values.max() / self.time_unit_days),
                  dropout[0]: 0.0, dropout[1]: math.nan}
        return _Attempt(params, self._in_units(-value * table.n_customers, table), problem)

    def _attempt_with_lifetimes(self, table: RFMTable, penalizer_coef: float) -> _Attempt:
        """MBG/NBD and Pareto/NBD: lifetimes' own objective, start, optimiser and tolerance.

        Minimised here rather than through the fitter's ``fit`` so that a fit that stops at a
        boundary still says where it stopped (lifetimes raises, or keeps it silently).
        """
        from autograd import value_and_grad
        from lifetimes import ModifiedBetaGeoFitter, ParetoNBDFitter

        frequency, recency, T, weights = table.distinct_rows()
        unit_per_day = 1.0 / self.time_unit_days
        recency, T = recency * unit_per_day, T * unit_per_day
        scale = 1.0 / T.max()
        args = (frequency.astype(int), recency * scale, T * scale, weights, penalizer_coef)
        names = PARAM_NAMES[self.model]
        with np.errstate(all="ignore"):
            if self.model == "mbgnbd":
                result = optimize.minimize(value_and_grad(ModifiedBetaGeoFitter._negative_log_likelihood), np.ones(4),
                                           args=args, jac=True, tol=1e-7, options={"disp": False})
                scaled = np.exp(result.x)
                problem = None if result.success else f"did not converge ({result.message.strip()})"
            else:
                result = optimize.minimize(ParetoNBDFitter._negative_log_likelihood, np.ones(4), args=args,
                                           method="Nelder-Mead", tol=1e-4, options={"disp": False, "maxiter": 2000})
                scaled = np.asarray(result.x, dtype=float)
                problem = None
            if not np.all(np.isfinite(scaled)) or not np.isfinite(result.fun):
                problem = "the likelihood became NaN"
            problem = problem or _runaway(dict(zip(names, scaled)))
            params = {name: float(value / (scale if name in ("alpha", "beta") else 1.0)) for name, value in zip(names, scaled)}
            values = np.array([params[name] for name in names])
            if self.model == "mbgnbd":
                per_customer = -ModifiedBetaGeoFitter._negative_log_likelihood(np.log(values), frequency, recency, T, weights, 0.0)
                log_likelihood = per_customer * weights.sum()
            else:
                log_likelihood = weights @ ParetoNBDFitter._conditional_log_likelihood(values, frequency, recency, T)
        if not np.isfinite(log_likelihood):
            problem = problem or "the log-likelihood is not finite"
        return _Attempt(params, float(log_likelihood), problem)

    def _prepare(self, frequency, *times_in_days):
        """Broadcast inputs; frequency is a count, the rest are days turned into model units."""
        if not getattr(self, "params_", None):
            raise NotFittedError("this BTYD model is not fitted yet: call fit(frequency, recency, T) first")
        arrays = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (frequency, *times_in_days)))
        return [arrays[0]] + [a / self.time_unit_days for a in arrays[1:]]

    def p_alive(self, frequency, recency, T) -> np.ndarray:
        """P(alive at T | frequency, recency, T), inputs in days."""
        x, recency, T = self._prepare(frequency, recency, T)
        return np.asarray(_p_alive(self.model, self.params_, x, recency, T), dtype=float)

    def expected_orders(self, t_days, frequency, recency, T) -> np.ndarray:
        """Expected number of repeat purchases in (T, T + t_days], given the history."""
        x, t, recency, T = self._prepare(frequency, t_days, recency, T)
        return np.asarray(_expected_orders(self.model, self.params_, t, x, recency, T), dtype=float)

    def p_repurchase(self, t_days, frequency, recency, T) -> np.ndarray:
        """P(at least one purchase in (T, T + t_days] | frequency, recency, T).

        BG/NBD and MBG/NBD: P(none) = (1 - P(alive)) + P(alive) ((alpha+T)/(alpha+T+t))^(r+x).
        Pareto/NBD: death can come before the next purchase, so P(alive) times a
        one-dimensional integral (see ``_pareto_p_buy_if_alive``).
        """
        x, t, recency, T = self._prepare(frequency, t_days, recency, T)
        return np.asarray(_p_repurchase(self.model, self.params_, t, x, recency, T), dtype=float)

    def orders_distribution(self, t_days, frequency, recency, T, max_orders: int) -> np.ndarray:
        """P(N = n orders in (T, T + t_days] | frequency, recency, T) for n = 0 .. max_orders (columns).

        Alive at T, a BG/NBD customer has lambda ~ Gamma(r + x, alpha + T) and drop-out
        probability p ~ Beta(a, b + x) a posteriori, independent (the "alive" term of the
        likelihood, FHL 2005a eq. 3, is lambda^x e^(-lambda T) (1 - p)^x; MBG/NBD's has
        (1 - p)^(x + 1)). The purchases K in t are then negative binomial and the customer
        stops after a geometric number G of them, so N = min(K, G):
        P(N = n) = P(K = n) E[(1 - p)^n] + P(K >= n) E[p (1 - p)^(n - 1)] (n >= 1), both beta
        moments in closed form; a customer not alive at T makes none. Its mean is
        :meth:`expected_orders` (tested). The last column holds P(N >= max_orders), so each
        row sums to 1. Pareto/NBD is approximated by no further drop-out within t (an upper
        bound on the orders of those alive).
        """
        x, t, recency, T = (a.reshape(-1, 1) for a in self._prepare(frequency, t_days, recency, T))
        params = self.params_
        n = np.arange(max_orders + 1, dtype=float).reshape(1, -1)
        p_alive = np.asarray(_p_alive(self.model, params, x, recency, T), dtype=float)
        shape, alpha_T = params["r"] + x, params["alpha"] + T
        # Negative binomial P(K = k): Gamma(r + x, alpha + T) mixing of Poisson(lambda t).
        k_pmf = np.exp(gammaln(shape + n) - gammaln(shape) - gammaln(n + 1.0)
                       - shape * np.log1p(t / alpha_T) + n * (np.log(t) - np.log(alpha_T + t)))
        k_at_least = np.clip(1.0 - np.cumsum(k_pmf, axis=1) + k_pmf, 0.0, 1.0)
        if _no_dropout(self.model, params) or self.model == "pareto":
            alive = k_pmf
        else:
            a = params["a"]
            b = params["b"] + x + (1.0 if self.model == "mbgnbd" else 0.0)
            survive = np.exp(betaln(a, b + n) - betaln(a, b))
            stop_at_n = np.where(n >= 1, np.exp(betaln(a + 1.0, b + np.maximum(n - 1.0, 0.0)) - betaln(a, b)), 0.0)
            alive = k_pmf * survive + k_at_least * stop_at_n
        pmf = p_alive * alive
        pmf[:, :1] += 1.0 - p_alive
        pmf[:, -1] = np.maximum(1.0 - pmf[:, :-1].sum(axis=1), 0.0)
        return pmf


BGNBD = BTYDModel
"""The name :class:`BTYDModel` had before it was named for all three models it fits; registered
models pickled then refer to it, so it stays for them to load (new code uses ``BTYDModel``)."""


class GammaGamma:
    """Gamma-Gamma model of spend per order (Fader, Hardie & Lee 2005b; note 025).

    Fits ``lifetimes.GammaGammaFitter``'s objective (same start, optimiser and penalizer)
    by an analytic gradient, on customers with frequency > 0. When that has no interior
    optimum with q > 1, the smallest penalizer in ``PENALIZER_LADDER`` that gives one is
    used; failing that, mean spend (p -> infinity, the limit in which every customer always
    spends their own mean: each repeat customer's mean order value, and the mean repeat
    order value of all repeat customers for one-time buyers).

    Attributes
    ----------
    params_ : dict
        {"p", "q", "v"}; with mean spend, p is infinite and q, v NaN.
    fit_status_ : str
        ``"interior"``, ``"penalized 0.001"`` (and so on) or ``"boundary: mean spend"``.
    fit_detail_ : str
        Why the fallback was chosen ("" for an interior fit).
    mean_order_value_ : float
        Mean repeat order value over repeat customers (what mean spend gives one-time buyers).
    n_customers_ : int
        Repeat customers the fit used.
    """

    def __init__(self, *, penalizer_coef: float = 0.0):
        self.penalizer_coef = penalizer_coef

    @classmethod
    def from_params(cls, params: dict) -> GammaGamma:
        """A model with known parameters."""
        estimator = cls()
        estimator.params_ = {name: float(params[name]) for name in ("p", "q", "v")}
        estimator.fit_status_ = "given"
        return estimator

    def __repr__(self) -> str:
        fitted = getattr(self, "params_", None)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in fitted.items()) if fitted else "not fitted"
        return f"GammaGamma({shown})"

    def _attempt(self, x: np.ndarray, m: np.ndarray, penalizer_coef: float) -> tuple[dict, str | None]:
        log_params, problem = _bfgs(self.negative_log_likelihood, np.full(3, 0.1), (x, m, penalizer_coef))
        params = dict(zip(("p", "q", "v"), map(float, np.exp(log_params))))
        problem = problem or _runaway(params, _GAMMA_GAMMA_LOG_PARAM_LIMIT)
        if problem is None and params["q"] <= 1.0:
            problem = f"q = {params['q']:.3g} <= 1, so mean spend per order is undefined"
        return params, problem

    @staticmethod
    def negative_log_likelihood(log_params, frequency, monetary_value, penalizer_coef=0.0):
        """Mean negative log-likelihood (note 025, eq. 1a) and its gradient in log-parameters."""
        params = np.exp(log_params)
        p, q, v = params
        x, m = frequency, monetary_value
        px = p * x
        log_xm_v = np.log(x * m + v)
        ll = (
            gammaln(px + q) - gammaln(px) - gammaln(q) + q * math.log(v)
            + (px - 1.0) * np.log(m) + px * np.log(x) - (px + q) * log_xm_v
        )
        digamma_pxq = digamma(px + q)
        grad = np.array(
            [
                np.sum(x * (digamma_pxq - digamma(px) + np.log(m) + np.log(x) - log_xm_v)),
                np.sum(digamma_pxq - digamma(q) + math.log(v) - log_xm_v),
                np.sum(q / v - (px + q) / (x * m + v)),
            ]
        )
        n = x.size
        value = -ll.sum() / n + penalizer_coef * (params @ params)
        return float(value), (-grad / n + 2.0 * penalizer_coef * params) * params

    def fit(self, frequency, monetary_value) -> GammaGamma:
        """Fit on repeat customers' frequency and mean repeat order value.

        Raises
        ------
        BTYDDataError
            Fewer than ``MIN_REPEAT_CUSTOMERS`` repeat customers, or non-positive spend.
        """
        frequency = _as_float_array("frequency", frequency)
        monetary_value = _as_float_array("monetary_value", monetary_value)
        if frequency.size != monetary_value.size:
            sizes = f"frequency ({frequency.size}) and monetary_value ({monetary_value.size})"
            raise BTYDDataError(f"{sizes} differ in length")
        bad = ~np.isfinite(frequency) | ~np.isfinite(monetary_value)
        if bad.any():
            raise BTYDDataError(
                f"{bad.sum()} missing or infinite frequency or monetary_value values (first at row {np.argmax(bad)})"
            )
        repeat = frequency > 0
        n_repeat = int(repeat.sum())
        if n_repeat < MIN_REPEAT_CUSTOMERS:
            raise BTYDDataError(
                f"only {n_repeat} of {frequency.size} customers made a repeat purchase; Gamma-Gamma needs at least "
                f"{MIN_REPEAT_CUSTOMERS} to learn spend per order: use a later cutoff or a longer order history"
            )
        x, m = frequency[repeat], monetary_value[repeat]
        bad = m <= 0
        if bad.any():
            raise BTYDDataError(
                f"monetary_value: {bad.sum()} repeat customers have a mean order value <= 0 "
                f"(first: {m[bad][0]:g}); Gamma-Gamma needs positive spend: drop or net out returns first"
            )
        params, problem = self._attempt(x, m, self.penalizer_coef)
        status, detail = INTERIOR, ""
        if problem is not None:
            status, detail = MEAN_SPEND, f"{problem}; no penalizer up to {PENALIZER_LADDER[-1]:g} helps"
            for penalizer in PENALIZER_LADDER:
                if penalizer > self.penalizer_coef:
                    penalized, still = self._attempt(x, m, penalizer)
                    if still is None:
                        params, status = penalized, f"penalized {penalizer:g}"
                        detail = f"{problem}; penalizer_coef {penalizer:g} gives an interior optimum"
                        break
            if status == MEAN_SPEND:
                params = {"p": math.inf, "q": math.nan, "v": math.nan}
        self.params_ = params
        self.fit_status_ = status
        self.fit_detail_ = detail
        self.mean_order_value_ = float(x @ m / x.sum())
        self.n_customers_ = n_repeat
        return self

    def expected_order_value(self, frequency, monetary_value) -> np.ndarray:
        """E[spend per order | frequency, mean repeat order value] (note 025, eq. 5)."""
        if not getattr(self, "params_", None):
            raise NotFittedError("this GammaGamma model is not fitted yet: call fit(frequency, monetary_value) first")
        p, q, v = self.params_["p"], self.params_["q"], self.params_["v"]
        x, m = np.broadcast_arrays(np.asarray(frequency, dtype=float), np.asarray(monetary_value, dtype=float))
        if getattr(self, "fit_status_", INTERIOR) == MEAN_SPEND:
            return np.where(x > 0, m, self.mean_order_value_)
        individual_weight = p * x / (p * x + q - 1.0)
        population_mean = v * p / (q - 1.0)
        return (1.0 - individual_weight) * population_mean + individual_weight * m

    def p_spend_at_least(self, amounts, n_orders, frequency, monetary_value) -> np.ndarray:
        """P(the spend of ``n_orders`` future orders >= each of ``amounts`` | frequency, mean repeat order value).

        Order values are Gamma(p, nu) with nu ~ Gamma(q + p x, v + x m) a posteriori
        (note 025), so the sum of n of them is Gamma(p n, nu) and S / (S + v + x m) is
        Beta(p n, q + p x): the tail is a regularized incomplete beta. With mean spend
        (``fit_status_`` "boundary: mean spend") every order is worth the expected order
        value. ``n_orders``, ``frequency`` and ``monetary_value`` broadcast together (shape
        S); the answer has shape S + (len(amounts),).
        """
        if not getattr(self, "params_", None):
            raise NotFittedError("this GammaGamma model is not fitted yet: call fit(frequency, monetary_value) first")
        n, x, m = (a[..., None] for a in np.broadcast_arrays(
            *(np.asarray(a, dtype=float) for a in (n_orders, frequency, monetary_value))))
        amounts = np.asarray(amounts, dtype=float).reshape(-1)
        if getattr(self, "fit_status_", INTERIOR) == MEAN_SPEND:
            return (n * self.expected_order_value(x, m) >= amounts).astype(float)
        p, q, v = self.params_["p"], self.params_["q"], self.params_["v"]
        with np.errstate(invalid="ignore", divide="ignore"):
            below = betainc(np.maximum(p * n, 1e-300), q + p * x, amounts / (amounts + v + x * m))
        return np.where(amounts <= 0, 1.0, np.where(n > 0, 1.0 - below, 0.0))


def clv(
    bgnbd: BTYDModel,
    gamma_gamma: GammaGamma,
    frequency,
    recency,
    T,
    monetary_value,
    horizon_days: float = 365,
    discount_rate_annual: float = 0.1,
    step_days: float = 30,
) -> np.ndarray:
    """BTYD customer lifetime value over ``horizon_days``, discounted, as lifetimes computes it.

    Sum over steps ending at d = step, 2 step, ..., horizon of (expected orders in the
    step) x (expected order value) / (1 + discount_rate_annual) ** (d / 365). With
    step_days = 30 and a monthly rate m, lifetimes' ``customer_lifetime_value`` is this with
    discount_rate_annual = (1 + m) ** (365 / 30) - 1.
    """
    if not (horizon_days > 0 and step_days > 0):
        raise ValueError(f"horizon_days and step_days must be positive, not {horizon_days!r} and {step_days!r}")
    if not (discount_rate_annual > -1):
        raise ValueError(f"discount_rate_annual must be > -1, not {discount_rate_annual!r}")
    n_steps = math.ceil(horizon_days / step_days - 1e-9)
    step_ends = np.minimum(step_days * np.arange(1, n_steps + 1), horizon_days)
    frequency, recency, T, monetary_value = np.broadcast_arrays(
        *(np.asarray(a, dtype=float) for a in (frequency, recency, T, monetary_value))
    )
    cumulative = bgnbd.expected_orders(step_ends.reshape((-1,) + (1,) * frequency.ndim), frequency, recency, T)
    per_step = np.diff(cumulative, axis=0, prepend=0.0)
    discount = (1.0 + discount_rate_annual) ** (-step_ends / DAYS_PER_YEAR)
    discounted_orders = np.tensordot(discount, per_step, axes=1)
    return discounted_orders * gamma_gamma.expected_order_value(frequency, monetary_value)


# ---------------------------------------------------------------------------------------
# Simulation (tests and benchmarks)


def simulate_customers(
    model: str,
    params: dict,
    T,
    *,
    horizon: float = 0.0,
    resolution: float | None = None,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Simulate customers of a BTYD model from their first purchase at time 0.

    Parameters
    ----------
    model, params
        As in ``BTYDModel``; time in the unit of ``params``'s alpha (and beta).
    T : array_like
        Age of each customer at the cutoff, in that unit.
    horizon : float
        Also count each customer's purchases in (T, T + horizon].
    resolution : float, optional
        Record purchases to this period (1 with days: day-resolution order dates):
        frequency counts distinct periods after the first, as lifetimes' summary does.

    Returns
    -------
    dict of arrays: ``frequency``, ``recency``, ``T``, ``future_orders``.
    """
    T = np.asarray(T, dtype=float)
    n = T.size
    r, alpha = params["r"], params["alpha"]
    rate = rng.gamma(r, 1.0 / alpha, n)
    if model == "pareto" and not _no_dropout(model, params):
        death = rng.exponential(1.0, n) / rng.gamma(params["s"], 1.0 / params["beta"], n)
        p_death = np.zeros(n)
    elif _no_dropout(model, params):
        death, p_death = np.full(n, np.inf), np.zeros(n)
    else:
        death = np.full(n, np.inf)
        p_death = rng.beta(params["a"], params["b"], n)
    frequency = np.zeros(n)
    recency = np.zeros(n)
    future_orders = np.zeros(n)
    clock = np.zeros(n)
    end = np.minimum(T + horizon, death)
    # MBG/NBD customers may also drop out right after the first purchase.
    active = np.flatnonzero(rng.random(n) >= p_death) if model == "mbgnbd" else np.arange(n)
    while active.size:
        clock[active] += rng.exponential(1.0, active.size) / rate[active]
        active = active[clock[active] <= end[active]]
        when = clock[active]
        before = when <= T[active]
        buyers = active[before]
        if resolution is None:
            frequency[buyers] += 1
            recency[buyers] = when[before]
        else:
            period = np.floor(when[before] / resolution) * resolution
            new = period > recency[buyers]
            frequency[buyers[new]] += 1
            recency[buyers[new]] = period[new]
        future_orders[active[~before]] += 1
        active = active[rng.random(active.size) >= p_death[active]]
    return {"frequency": frequency, "recency": recency, "T": T, "future_orders": future_orders}
