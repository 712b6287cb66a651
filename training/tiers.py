"""Member tiers (silver / gold / diamond) and who will reach or lose one in the next 12 months.

A tier is a band of trailing 365-day spend (``basis: spend``, the default) or order count
(``basis: orders``); thresholds come from a YAML file that operators edit
(``default_tiers.yaml`` ships silver 0, gold 100, diamond 300). The tier a year on is the
band of what the customer spends in the coming 365 days, so the prediction is a
distribution of next-year spend, not a rule of thumb:

* N, the customer's purchases in the next 365 days, has the closed-form conditional
  distribution of the BTYD model behind ``p_alive`` (MBG/NBD at the training cutoff, or
  BG/NBD when there is none: :meth:`training.btyd.BTYDModel.orders_distribution`). The
  LightGBM models predict at the model's horizon (90 days by default) only, and scaling a
  90-day answer to a year is not honest, so the BTYD models answer here.
* Given N = n, the spend is the sum of n order values under Gamma-Gamma with the
  customer's posterior spend rate (:meth:`training.btyd.GammaGamma.p_spend_at_least`), a
  compound that keeps Gamma-Gamma's spread; without a Gamma-Gamma fit, every order is
  worth the customer's mean order value.

Scores then carry ``member_tier`` (today's band), ``predicted_tier`` (the tier a year on
chosen for macro-F1, below), ``p_upgrade`` (P(next-year spend reaches the next tier up)),
``p_downgrade`` (P(it falls below today's tier)) and ``spend_to_next_tier`` (how much more
trailing spend reaches the next tier; NaN at the top; in orders with ``basis: orders``).
The decision rule. Tiers are judged by macro-F1 (each tier's F1 counts alike, so the few
who reach diamond weigh as much as the many silver ones). The most probable tier almost
never names a minority tier, and the median (the tier reached with probability >= 1/2)
still names too few: the F1-optimal threshold of a calibrated probability is well below
1/2 for a rare class (Lipton, Elkan and Naryanaswamy 2014: half the F1 attainable). So
``predicted_tier`` is ``argmax_k w_k P(tier k)`` with weights that maximise the expected
macro-F1 under the model's own probabilities (the decision-theoretic plug-in of Jansche
2007 and Nan et al. 2012: the expected F1 of tier k is about ``2 sum_{i named k} P_ik /
(#named k + sum_i P_ik)``), found by coordinate ascent (:func:`macro_f1_weights`). No
outcome is used: the weights come from the probabilities of a reference population, the
customers at the training cutoff (a sample of 2,000 kept with the model,
``FeatureSpec.tier_reference``), so a customer's predicted tier does not depend on who is
scored beside them, and batch, API and pyfunc agree. Models pickled before the reference
existed fall back to the median tier.

Tiers are a scoring-time option: thresholds change without retraining, and the model
carries none. Batch takes ``repurchase score --tiers FILE``, the service ``repurchase serve
--tiers FILE``, the MLflow pyfunc the param ``tiers`` (the tiers as text,
:func:`tiers_text`; Spark batch scoring passes it so), each with the shipped default
when none is given. With ``basis: orders`` N counts purchase days (the BTYD summary's
unit), the trailing count orders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from features.common.errors import InputError
from features.common.inputs import read_small_file
from training.contract import TIER_COLUMNS  # noqa: F401 - named here for readers of this module

BASES = {"spend": "spend_365d", "orders": "orders_365d"}
DEFAULT_TIERS = "default_tiers.yaml"
YEAR_DAYS = 365
MAX_CONFIG_BYTES = 100_000
# Customers per block of the spend distribution: (customers, orders, tiers) stays a few MB.
_CHUNK = 1024
_MAX_ORDERS = 2000
# Probabilities of an order count below this are left out of the spend distribution.
_NEGLIGIBLE = 1e-12


class TiersError(InputError):
    """A tiers file that cannot be used."""


@dataclass(frozen=True)
class Tiers:
    """Tier names and lower thresholds, ascending; the first threshold is 0."""

    names: tuple[str, ...]
    thresholds: tuple[float, ...]
    basis: str = "spend"
    source: str = "default"

    @property
    def column(self) -> str:
        """The feature column a tier is read from (``spend_365d`` or ``orders_365d``)."""
        return BASES[self.basis]

    def index_of(self, values) -> np.ndarray:
        """The tier index of each trailing value (0 = the lowest tier)."""
        values = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
        return np.clip(np.searchsorted(np.asarray(self.thresholds), values, side="right") - 1, 0, len(self.names) - 1)

    def names_of(self, index) -> np.ndarray:
        return np.asarray(self.names, dtype=object)[np.asarray(index, dtype=int)]

    def index_of_names(self, names) -> np.ndarray:
        """The tier index of each tier name."""
        position = {name: k for k, name in enumerate(self.names)}
        return np.array([position[name] for name in names], dtype=int)


def tiers_text(tiers: Tiers) -> str:
    """The tiers as one line of JSON (which is YAML too): what the pyfunc's ``tiers`` param carries."""
    import json

    return json.dumps({"basis": tiers.basis,
                       "tiers": [{"name": n, "min": t} for n, t in zip(tiers.names, tiers.thresholds)]})


def tiers_from_text(text: str, origin: str = "tiers") -> Tiers:
    """Tiers from YAML or JSON text (a tiers file's content, or :func:`tiers_text`); one-line errors."""
    return parse_tiers(yaml_mapping(text, origin, "a mapping with 'tiers'", error=TiersError), origin)


def read_yaml_mapping(path: Path | str, what: str) -> dict:
    """A small YAML file read as a mapping, or one line naming the file and what is wrong."""
    origin = str(path)
    raw = read_small_file(path, what, MAX_CONFIG_BYTES,
                          too_large=f"larger than {MAX_CONFIG_BYTES // 1000} kB; a {what} file is a few lines")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{origin}: is not UTF-8 text") from None
    return yaml_mapping(text, origin, f"a mapping at the top of the {what} file")


def yaml_mapping(text: str, origin: str, expected: str, error: type[InputError] = InputError) -> dict:
    """YAML text parsed as a mapping, or ``error`` in one line: ``origin``, where the YAML breaks,
    or that the top is not the ``expected`` mapping."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise error(f"{origin}: not valid YAML ({where}{getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise error(f"{origin}: expected {expected}, got {'nothing' if data is None else type(data).__name__}")
    return data


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def parse_tiers(data: dict, origin: str = "tiers") -> Tiers:
    """Check a tiers mapping (``basis``, ``tiers: [{name, min}, ...]``) and build :class:`Tiers`."""
    unknown = sorted(set(data) - {"basis", "tiers"})
    if unknown:
        raise TiersError(f"{origin}: unknown key {unknown[0]!r}; a tiers file has 'basis' and 'tiers'")
    basis = data.get("basis", "spend")
    if basis not in BASES:
        raise TiersError(f"{origin}: basis {basis!r} is not one of {', '.join(BASES)}")
    entries = data.get("tiers")
    if not isinstance(entries, list) or len(entries) < 2:
        raise TiersError(f"{origin}: 'tiers' must be a list of at least two tiers, each with 'name' and 'min'")
    names, thresholds = [], []
    for k, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or set(entry) != {"name", "min"}:
            raise TiersError(f"{origin}: tier {k}: expected exactly 'name' and 'min', got {entry!r}")
        name, low = entry["name"], _number(entry["min"])
        if not isinstance(name, str) or not name.strip():
            raise TiersError(f"{origin}: tier {k}: 'name' must be a non-empty text")
        if name in names:
            raise TiersError(f"{origin}: tier {k}: name {name!r} is used twice")
        if low is None or low < 0:
            raise TiersError(f"{origin}: tier {k} {name!r}: 'min' must be a number >= 0, not {entry['min']!r}")
        if thresholds and low <= thresholds[-1]:
            raise TiersError(f"{origin}: tier {k} {name!r}: 'min' {low:g} must be above the tier before it "
                             f"({thresholds[-1]:g}); list tiers from lowest to highest")
        names.append(name)
        thresholds.append(low)
    if thresholds[0] != 0:
        raise TiersError(f"{origin}: the first tier {names[0]!r} must start at 'min: 0' so that every customer has a tier")
    return Tiers(tuple(names), tuple(thresholds), basis, origin)


@lru_cache(maxsize=1)
def default_tiers() -> Tiers:
    """The shipped default tiers (read once)."""
    text = resources.files("training").joinpath(DEFAULT_TIERS).read_text(encoding="utf-8")
    return parse_tiers(yaml.safe_load(text), "default tiers")


def load_tiers(path: Path | str | None = None) -> Tiers:
    """The tiers in ``path``, or the shipped default (``training/default_tiers.yaml``) when None."""
    if path is None:
        return default_tiers()
    return parse_tiers(read_yaml_mapping(path, "tiers"), str(path))


def next_year_tier_probabilities(
    tiers: Tiers, orders_model, gamma_gamma, frequency, recency, T, monetary_value, order_value
) -> np.ndarray:
    """P(the tier a year on = k) for each customer (rows) and tier (columns).

    ``orders_model`` is a fitted :class:`training.btyd.BTYDModel` (any of its models),
    ``gamma_gamma`` a fitted :class:`training.btyd.GammaGamma` or None, in which case
    every order is worth ``order_value`` (the customer's mean order value).
    """
    frequency, recency, T, monetary_value, order_value = (
        np.asarray(a, dtype=float).reshape(-1) for a in np.broadcast_arrays(frequency, recency, T, monetary_value, order_value)
    )
    thresholds = np.asarray(tiers.thresholds)
    at_least = np.ones((frequency.size, thresholds.size))
    # Blocks of customers with similar expected orders, so that each block's longest tail
    # (most orders worth counting) fits its customers, not the shop's heaviest buyer.
    expected_all = orders_model.expected_orders(YEAR_DAYS, frequency, recency, T)
    by_expected = np.argsort(np.nan_to_num(expected_all, nan=0.0), kind="stable")
    for start in range(0, frequency.size, _CHUNK):
        part = by_expected[start:start + _CHUNK]
        f, r, t, m, value = frequency[part], recency[part], T[part], monetary_value[part], order_value[part]
        expected = expected_all[part]
        most = int(np.clip(np.ceil(4.0 * np.nanmax(expected, initial=0.0) + 20.0), 20, _MAX_ORDERS))
        if tiers.basis == "orders":
            most = max(most, int(math.ceil(thresholds[-1])))
        pmf = orders_model.orders_distribution(YEAR_DAYS, f, r, t, most)
        n = np.arange(most + 1)
        if tiers.basis == "orders":
            reaches = (n.reshape(-1, 1) >= np.ceil(thresholds).reshape(1, -1)).astype(float)
            at_least[part] = pmf @ reaches
            continue
        # Only the (customer, n) pairs with probability worth adding (the spend tail is the costly part).
        rows, counts = np.nonzero(pmf > _NEGLIGIBLE)
        if gamma_gamma is not None:
            tail = gamma_gamma.p_spend_at_least(thresholds, counts, f[rows], np.where(f > 0, m, 0.0)[rows])
        else:
            tail = (counts[:, None] * value[rows, None] >= thresholds).astype(float)
        weighted = pmf[rows, counts][:, None] * tail
        at_least[part] = np.column_stack(
            [np.bincount(rows, weights=weighted[:, k], minlength=len(part)) for k in range(thresholds.size)]
        )
    at_least = np.clip(np.minimum.accumulate(at_least, axis=1), 0.0, 1.0)
    return at_least - np.append(at_least[:, 1:], np.zeros((at_least.shape[0], 1)), axis=1)


def expected_macro_f1(probabilities: np.ndarray, predicted: np.ndarray) -> float:
    """The macro-F1 that tier predictions are expected to earn if the tier probabilities are right.

    Tier k's F1 is ``2 TP / (#predicted k + #truly k)``; its expectation is approximated by
    the ratio of expectations, ``2 sum_{i predicted k} P_ik / (#predicted k + sum_i P_ik)``
    (Jansche 2007; Nan et al. 2012, "Optimizing F-measures: a tale of two approaches").
    """
    probabilities = np.asarray(probabilities, dtype=float)
    named = np.zeros_like(probabilities, dtype=bool)
    named[np.arange(len(predicted)), predicted] = True
    hits = (probabilities * named).sum(axis=0)
    denominator = named.sum(axis=0) + probabilities.sum(axis=0)
    return float(np.mean(np.divide(2.0 * hits, denominator, out=np.zeros(len(hits)), where=denominator > 0)))


# Candidate weights of a tier against the lowest one: 1/50 to 50, log-spaced, 1 among them.
_WEIGHT_GRID = np.geomspace(0.02, 50.0, 41)


def macro_f1_weights(probabilities: np.ndarray, sweeps: int = 4) -> np.ndarray:
    """Tier weights ``w`` (``w[0] = 1``) for which ``argmax_k w_k P_ik`` maximises :func:`expected_macro_f1`.

    Coordinate ascent over a log-spaced grid, from ``w = 1`` (the most probable tier); a
    weight moves only when the expected macro-F1 rises, so the result is deterministic.
    ``probabilities``: tier probabilities of a reference population (rows: customers).
    """
    probabilities = np.asarray(probabilities, dtype=float)
    weights = np.ones(probabilities.shape[1])
    if len(probabilities) == 0:
        return weights
    best = expected_macro_f1(probabilities, np.argmax(probabilities * weights, axis=1))
    for _ in range(sweeps):
        moved = False
        for k in range(1, len(weights)):
            for value in _WEIGHT_GRID:
                trial = weights.copy()
                trial[k] = value
                score = expected_macro_f1(probabilities, np.argmax(probabilities * trial, axis=1))
                if score > best + 1e-12:
                    best, weights, moved = score, trial, True
        if not moved:
            break
    return weights


def tier_columns(tiers: Tiers, current, probabilities: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The score's tier columns from trailing values (``spend_365d``) and next-year tier probabilities.

    ``weights`` (:func:`macro_f1_weights`) choose ``predicted_tier`` as ``argmax_k w_k P_ik``;
    without them it is the median tier (the highest one reached with probability >= 1/2).
    """
    current = np.nan_to_num(np.asarray(current, dtype=float), nan=0.0)
    index = tiers.index_of(current)
    top = len(tiers.names) - 1
    at_least = np.cumsum(probabilities[:, ::-1], axis=1)[:, ::-1]  # P(tier a year on >= k)
    rows = np.arange(len(index))
    upper = np.minimum(index + 1, top)
    thresholds = np.asarray(tiers.thresholds)
    if weights is None:
        predicted = (at_least >= 0.5).sum(axis=1) - 1
    else:
        predicted = np.argmax(probabilities * np.asarray(weights, dtype=float), axis=1)
    return {
        "member_tier": tiers.names_of(index),
        "predicted_tier": tiers.names_of(predicted),
        "p_upgrade": np.where(index < top, at_least[rows, upper], 0.0),
        "p_downgrade": np.where(index > 0, np.clip(1.0 - at_least[rows, index], 0.0, 1.0), 0.0),
        "spend_to_next_tier": np.where(index < top, thresholds[upper] - current, np.nan),
    }


def tier_metrics(truth, predicted, names) -> dict:
    """Accuracy and macro-F1 (over every tier name) of predicted tiers against the true ones."""
    from sklearn.metrics import accuracy_score, f1_score

    truth, predicted = np.asarray(truth, dtype=object), np.asarray(predicted, dtype=object)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=list(names), average="macro", zero_division=0)),
    }
