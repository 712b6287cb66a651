"""Backtest metrics: how well scores rank, how honest their probabilities are, what they are worth to a campaign.

Pure functions over arrays, each checked by hand in the tests.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

PROBABILITY_EPS = 1e-6


def _checked(y_true, score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=float)
    s = np.asarray(score, dtype=float)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in shape: {y.shape} vs {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return y, s


def calibration_bins(y_true, p, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean predicted probability, observed rate and size of ``n_bins`` equal-count bins.

    Customers sorted by ``p`` (stable) are cut into ``n_bins`` runs whose sizes differ by at
    most one; ties may fall in neighbouring bins. Equal-count bins, not equal-width ones,
    because repurchase probabilities pile up near zero; each bin then holds enough customers
    for its rate to mean something. Not ``sklearn.calibration.calibration_curve(...,
    strategy="quantile")``: its bins are cut at quantiles of ``p``, so tied probabilities
    (which Platt scaling of tied log-odds produces) share a bin and the sizes drift apart,
    which changes the ECE (on 6,000 customers with probabilities rounded to 0.01:
    0.00577 here, 0.00686 with quantile edges; on 105 untied ones 0.0610 against 0.0668).
    Used by :func:`expected_calibration_error` and the calibration plot, so both show the
    same bins.
    """
    y, p = _checked(y_true, p)
    order = np.argsort(p, kind="stable")
    bins = [b for b in np.array_split(order, min(n_bins, len(p))) if len(b)]
    return (np.array([p[b].mean() for b in bins]), np.array([y[b].mean() for b in bins]),
            np.array([len(b) for b in bins]))


def expected_calibration_error(y_true, p, n_bins: int = 10) -> float:
    """ECE over equal-count bins (:func:`calibration_bins`): sum over bins of (bin share) x |mean p - observed rate|."""
    predicted, observed, sizes = calibration_bins(y_true, p, n_bins)
    return float(sum(size / sizes.sum() * abs(mean_p - rate) for mean_p, rate, size in zip(predicted, observed, sizes)))


def top_fraction_mask(score, fraction: float) -> np.ndarray:
    """The top ``fraction`` of rows by score (ties broken by position, so the size is exact)."""
    s = np.asarray(score, dtype=float)
    k = max(1, int(round(fraction * len(s))))
    top = np.zeros(len(s), dtype=bool)
    top[np.argsort(-s, kind="stable")[:k]] = True
    return top


def lift_and_capture(y_true, score, fraction: float = 0.1) -> tuple[float, float]:
    """Lift (rate in the top fraction / base rate) and capture (share of positives in it)."""
    y, s = _checked(y_true, score)
    top = top_fraction_mask(s, fraction)
    positives = y.sum()
    if positives == 0:
        return float("nan"), float("nan")
    return float(y[top].mean() / y.mean()), float(y[top].sum() / positives)


def classification_metrics(y_true, p, *, probabilities: bool = True) -> dict:
    """AUC, PR-AUC, lift and capture at 10%; with probabilities also Brier, log loss and ECE."""
    y, p = _checked(y_true, p)
    out = {"n": int(len(y)), "base_rate": float(y.mean())}
    both_classes = 0 < y.sum() < len(y)
    out["auc"] = float(roc_auc_score(y, p)) if both_classes else float("nan")
    out["pr_auc"] = float(average_precision_score(y, p)) if both_classes else float("nan")
    out["lift_top10"], out["capture_top10"] = lift_and_capture(y, p, 0.1)
    if probabilities:
        clipped = np.clip(p, PROBABILITY_EPS, 1 - PROBABILITY_EPS)
        out["brier"] = float(brier_score_loss(y, p))
        out["log_loss"] = float(log_loss(y, clipped, labels=[0, 1]))
        out["ece"] = expected_calibration_error(y, p)
    return out


def normalized_gini(actual, predicted) -> float:
    """Gini of ``predicted``'s ordering of ``actual``, divided by the best possible (1 = perfect)."""

    def gini(a, p):
        order = np.lexsort((np.arange(len(p)), -p))
        cumulative = np.cumsum(a[order]) / a.sum()
        return cumulative.sum() / len(a) - (len(a) + 1) / (2 * len(a))

    a, p = _checked(actual, predicted)
    if a.sum() <= 0:
        return float("nan")
    return float(gini(a, p) / gini(a, a))


def decile_mape(actual, predicted, n_bins: int = 10) -> float:
    """Mean absolute percentage error of the summed prediction per predicted decile.

    Deciles with no actual value are left out (their percentage error is undefined).
    """
    a, p = _checked(actual, predicted)
    order = np.argsort(-p, kind="stable")
    errors = []
    for part in np.array_split(order, n_bins):
        total = a[part].sum()
        if len(part) and total > 0:
            errors.append(abs(p[part].sum() - total) / total)
    return float(np.mean(errors)) if errors else float("nan")


def regression_metrics(actual, predicted) -> dict:
    """For money and counts: normalized Gini, Spearman, decile MAPE, MAE and the totals."""
    a, p = _checked(actual, predicted)
    rho = spearmanr(a, p).statistic if np.ptp(a) > 0 and np.ptp(p) > 0 else float("nan")
    return {
        "gini": normalized_gini(a, p),
        "spearman": float(rho),
        "decile_mape": decile_mape(a, p),
        "mae": float(np.abs(a - p).mean()),
        "total_actual": float(a.sum()),
        "total_predicted": float(p.sum()),
    }


def timing_metrics(days_to_next, censored, p10, p50, p90, horizon_days: float | None = None) -> dict:
    """Accuracy and honesty of next-order quantiles.

    Quantiles are of the *unconditional* time to the next order, so a NaN quantile means
    "not reached within the horizon" (beyond it). ``p50_mae_days`` is over customers who
    did reorder and were given a p50. ``coverage_p10_p90`` is over all customers, censoring
    aware: a customer with no order within the horizon is inside the band when the band
    reaches past the horizon (p90 NaN); a NaN p10 means the whole band lies beyond the
    horizon. A calibrated model covers about 0.8.
    """
    days = np.asarray(days_to_next, dtype=float)
    cens = np.asarray(censored, dtype=bool)
    lo, mid, hi = (np.asarray(q, dtype=float) for q in (p10, p50, p90))
    lo_beyond, hi_beyond = np.isnan(lo), np.isnan(hi)
    inside_observed = (~lo_beyond) & (days >= lo) & (hi_beyond | (days <= hi))
    inside_censored = hi_beyond
    covered = np.where(cens, inside_censored, inside_observed)
    observed = ~cens
    with_mid = observed & np.isfinite(mid)
    return {
        "n_reordered": int(observed.sum()),
        "n_with_p50": int(with_mid.sum()),
        "p50_mae_days": float(np.abs(mid[with_mid] - days[with_mid]).mean()) if with_mid.any() else float("nan"),
        "coverage_p10_p90": float(covered.mean()) if len(days) else float("nan"),
        "coverage_p10_p90_reordered": float(covered[observed].mean()) if observed.any() else float("nan"),
    }


# --------------------------------------------------------------------------- uplift
#
# An uplift ranking is judged on randomised contacts: among the customers it ranks highest,
# how much more often did the contacted (treatment) ones order than the held-out ones?
# The definitions are scikit-uplift's (sklift.metrics 0.5.1: ``uplift_at_k`` with
# strategy "overall", ``qini_curve``, ``qini_auc_score`` with negative effects), written
# out here because that package is no longer maintained and its curves call a
# scikit-learn helper (``stable_cumsum``) that scikit-learn 1.10 removes, inside our pin.
# tests/test_uplift.py checks them by hand and against values sklift 0.5.1 computed.


def _uplift_inputs(outcome, treated, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, s = _checked(outcome, score)
    t = np.asarray(treated)
    if t.shape != y.shape:
        raise ValueError(f"outcomes and treatment flags differ in shape: {y.shape} vs {t.shape}")
    return y, t.astype(bool), s


def uplift_at_k(outcome, treated, score, k: float = 0.3) -> float | None:
    """Mean outcome of the treated minus that of the held-out among the top ``k`` share by score.

    With a 0/1 outcome (ordered in the window) it is the difference in order rates that
    contacting made among the customers the ranking would contact first; times the number
    of those customers it is the incremental buyers at that number of contacts. ``None``
    when the top share has no treated or no held-out customer. The top share is
    ``round(k x n)`` rows, ties broken by position (:func:`top_fraction_mask`).
    """
    y, t, s = _uplift_inputs(outcome, treated, score)
    if not len(y):
        return None
    top = top_fraction_mask(s, k)
    treated_top, holdout_top = top & t, top & ~t
    if not treated_top.any() or not holdout_top.any():
        return None
    return float(y[treated_top].mean() - y[holdout_top].mean())


def qini_curve(outcome, treated, score) -> tuple[np.ndarray, np.ndarray]:
    """Radcliffe's (2007) Qini curve: for the top ``n`` rows by score, the incremental outcomes
    ``Y_t(n) - Y_h(n) x N_t(n) / N_h(n)`` (treated outcomes minus the held-out ones scaled to
    the treated count; 0 while no held-out row is in).

    Points are taken where the score changes (tied rows enter together), starting at (0, 0).
    Returns ``(n, incremental)``.
    """
    y, t, s = _uplift_inputs(outcome, treated, score)
    order = np.argsort(s, kind="mergesort")[::-1]
    y, t, s = y[order], t[order], s[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.array([], dtype=int)
    n_treated = np.cumsum(t)[ends].astype(float)
    y_treated = np.cumsum(np.where(t, y, 0.0))[ends]
    y_holdout = np.cumsum(np.where(t, 0.0, y))[ends]
    n_all = (ends + 1).astype(float)
    n_holdout = n_all - n_treated
    scale = np.divide(n_treated, n_holdout, out=np.zeros_like(n_treated), where=n_holdout != 0)
    values = y_treated - y_holdout * scale
    return np.r_[0.0, n_all], np.r_[0.0, values]


def qini_auc(outcome, treated, score) -> float | None:
    """The Qini coefficient: area between the Qini curve and the random line (straight from
    (0, 0) to the curve's end), over the same area of the perfect ranking (treated buyers
    first, held-out buyers last). 0 = no better than random, 1 = perfect; ``None`` when the
    perfect ranking gains nothing (no outcome to rank)."""
    y, t, s = _uplift_inputs(outcome, treated, score)
    if not len(y) or t.all() or not t.any():
        return None
    n, actual = qini_curve(y, t, s)
    n_best, best = qini_curve(y, t, np.where(t, y, -y))
    random_area = 0.5 * n_best[-1] * best[-1]
    perfect = np.trapezoid(best, n_best) - random_area
    if perfect <= 0:
        return None
    return float((np.trapezoid(actual, n) - random_area) / perfect)
